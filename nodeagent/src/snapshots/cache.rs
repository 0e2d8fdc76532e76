//! The node-local snapshot cache: uncompressed checkpoint files of recent snapshots, so a
//! resume on the node that suspended (or already fetched) a snapshot reads nothing remote.
//!
//! Layout under the cache directory:
//!
//! ```text
//! entries/<atespace>/<actor>/<id>/manifest.json   exact manifest bytes (digest = the ref's)
//! entries/<atespace>/<actor>/<id>/files/<name>    uncompressed checkpoint files
//! tmp/<random>/                                   entries being built (removed at start)
//! ```
//!
//! An entry appears by one `rename` of a complete directory, so a crash never leaves a
//! half-filled entry under `entries/`. The manifest's mtime is the entry's last use: eviction
//! removes least recently used entries until the total size fits the budget. Files enter and
//! leave the cache by hard link when source and destination share a filesystem (a copy
//! otherwise), so cache fills and hits do not copy data.
//!
//! All functions block: call them on the blocking pool.

use std::fs;
use std::io;
use std::path::{Path, PathBuf};
use std::time::SystemTime;

use sha2::{Digest, Sha256};
use tracing::{debug, warn};

use super::codec::hash_file;
use super::manifest::{MANIFEST_NAME, Manifest, SnapshotKey, format_digest};

pub(crate) struct Cache {
    root: PathBuf,
    pub max_bytes: u64,
    verify_digests: bool,
}

/// A verified cache entry.
pub(crate) struct Hit {
    pub dir: PathBuf,
    pub manifest: Manifest,
}

impl Cache {
    /// Opens the cache at `root`; a disabled cache (`max_bytes` 0) touches no file.
    pub fn open(root: &Path, max_bytes: u64, verify_digests: bool) -> io::Result<Self> {
        if max_bytes == 0 {
            return Ok(Self {
                root: root.to_path_buf(),
                max_bytes,
                verify_digests,
            });
        }
        fs::create_dir_all(root.join("entries"))?;
        let tmp = root.join("tmp");
        // Leftovers of fills interrupted by a crash.
        if tmp.exists() {
            fs::remove_dir_all(&tmp)?;
        }
        fs::create_dir_all(&tmp)?;
        Ok(Self {
            root: root.to_path_buf(),
            max_bytes,
            verify_digests,
        })
    }

    pub fn enabled(&self) -> bool {
        self.max_bytes > 0
    }

    fn entry_dir(&self, key: &SnapshotKey) -> PathBuf {
        self.root
            .join("entries")
            .join(key.atespace())
            .join(key.actor())
            .join(key.id())
    }

    /// The entry for `key` if its manifest has `digest` and its files are intact (sizes, and
    /// digests when configured). A damaged or stale entry is removed. A hit is marked used.
    pub fn lookup(
        &self,
        key: &SnapshotKey,
        digest: &str,
        max_file_bytes: u64,
    ) -> io::Result<Option<Hit>> {
        let dir = self.entry_dir(key);
        let manifest_path = dir.join(MANIFEST_NAME);
        let bytes = match fs::read(&manifest_path) {
            Ok(b) => b,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(e),
        };
        if format_digest(Sha256::digest(&bytes).into()) != digest {
            debug!(snapshot = %key, "cache entry holds another manifest");
            return Ok(None);
        }
        let manifest = match Manifest::parse(&bytes, "cache", key, max_file_bytes) {
            Ok(m) => m,
            Err(e) => {
                warn!(snapshot = %key, error = %e, "removing unreadable cache entry");
                self.remove(key)?;
                return Ok(None);
            }
        };
        for f in &manifest.files {
            let path = dir.join("files").join(&f.name);
            let ok = match fs::symlink_metadata(&path) {
                Ok(md) if md.is_file() && md.len() == f.size => {
                    !self.verify_digests || hash_file(&path)?.1 == f.sha256
                }
                Ok(_) => false,
                Err(e) if e.kind() == io::ErrorKind::NotFound => false,
                Err(e) => return Err(e),
            };
            if !ok {
                warn!(snapshot = %key, file = %f.name, "removing damaged cache entry");
                self.remove(key)?;
                return Ok(None);
            }
        }
        // Mark used (LRU by mtime).
        fs::File::open(&manifest_path)?.set_modified(SystemTime::now())?;
        Ok(Some(Hit { dir, manifest }))
    }

    /// Links (or copies) the entry's files into a new directory `dest` (made visible by one
    /// rename of a sibling temporary directory). Returns the bytes provided.
    pub fn materialize(&self, hit: &Hit, dest: &Path) -> io::Result<u64> {
        let parent = parent_of(dest)?;
        let tmp = tempfile::Builder::new()
            .prefix(".snapshot-fetch-")
            .tempdir_in(parent)?;
        let mut bytes = 0;
        for f in &hit.manifest.files {
            link_or_copy(
                &hit.dir.join("files").join(&f.name),
                &tmp.path().join(&f.name),
            )?;
            bytes += f.size;
        }
        publish_dir(tmp, dest)?;
        Ok(bytes)
    }

    /// Adds an entry from the verified files `src_dir/<name>` for every file of `manifest`
    /// (whose exact bytes are `manifest_bytes`). Replaces an existing entry for the key.
    pub fn insert(
        &self,
        key: &SnapshotKey,
        src_dir: &Path,
        manifest: &Manifest,
        manifest_bytes: &[u8],
    ) -> io::Result<()> {
        let tmp = tempfile::Builder::new()
            .prefix("fill-")
            .tempdir_in(self.root.join("tmp"))?;
        let files = tmp.path().join("files");
        fs::create_dir(&files)?;
        for f in &manifest.files {
            link_or_copy(&src_dir.join(&f.name), &files.join(&f.name))?;
        }
        fs::write(tmp.path().join(MANIFEST_NAME), manifest_bytes)?;
        let target = self.entry_dir(key);
        if let Some(p) = target.parent() {
            fs::create_dir_all(p)?;
        }
        if target.exists() {
            fs::remove_dir_all(&target)?;
        }
        let tmp = tmp.keep();
        if let Err(e) = fs::rename(&tmp, &target) {
            let _ = fs::remove_dir_all(&tmp);
            // A concurrent fill of the same snapshot won: fine.
            if !target.join(MANIFEST_NAME).exists() {
                return Err(e);
            }
        }
        Ok(())
    }

    /// Removes the entry for `key`, if any.
    pub fn remove(&self, key: &SnapshotKey) -> io::Result<()> {
        if !self.enabled() {
            return Ok(());
        }
        let dir = self.entry_dir(key);
        match fs::remove_dir_all(&dir) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => return Err(e),
        }
        // Drop empty actor/atespace directories.
        for p in [dir.parent(), dir.parent().and_then(Path::parent)]
            .into_iter()
            .flatten()
        {
            if fs::remove_dir(p).is_err() {
                break;
            }
        }
        Ok(())
    }

    /// Total bytes of all entries' files.
    pub fn total_bytes(&self) -> io::Result<u64> {
        Ok(self.entries()?.iter().map(|e| e.bytes).sum())
    }

    /// Every entry with its key, last use and size.
    pub fn keys(&self) -> io::Result<Vec<KeyedEntry>> {
        let mut out = Vec::new();
        for e in self.entries()? {
            let mut parts = e.dir.iter().rev().filter_map(|p| p.to_str());
            let (Some(id), Some(actor), Some(atespace)) =
                (parts.next(), parts.next(), parts.next())
            else {
                continue;
            };
            if let Ok(key) = SnapshotKey::new(atespace, actor, id) {
                out.push(KeyedEntry {
                    key,
                    used: e.used,
                    bytes: e.bytes,
                });
            }
        }
        Ok(out)
    }

    fn entries(&self) -> io::Result<Vec<EntryInfo>> {
        let mut out = Vec::new();
        for a in read_dirs(&self.root.join("entries"))? {
            for b in read_dirs(&a)? {
                for dir in read_dirs(&b)? {
                    let used = fs::metadata(dir.join(MANIFEST_NAME))
                        .and_then(|m| m.modified())
                        .unwrap_or(SystemTime::UNIX_EPOCH);
                    let mut bytes = 0;
                    if let Ok(rd) = fs::read_dir(dir.join("files")) {
                        for f in rd.flatten() {
                            bytes += f.metadata().map(|m| m.len()).unwrap_or(0);
                        }
                    }
                    out.push(EntryInfo { dir, used, bytes });
                }
            }
        }
        Ok(out)
    }

    /// Removes least recently used entries until the total fits `max_bytes`. Returns the
    /// number of entries and bytes removed.
    pub fn evict(&self) -> io::Result<(usize, u64)> {
        let mut entries = self.entries()?;
        let mut total: u64 = entries.iter().map(|e| e.bytes).sum();
        if total <= self.max_bytes {
            return Ok((0, 0));
        }
        entries.sort_by(|x, y| x.used.cmp(&y.used).then_with(|| x.dir.cmp(&y.dir)));
        let (mut n, mut freed) = (0, 0);
        for e in entries {
            if total <= self.max_bytes {
                break;
            }
            match fs::remove_dir_all(&e.dir) {
                Ok(()) => {}
                Err(err) if err.kind() == io::ErrorKind::NotFound => {}
                Err(err) => return Err(err),
            }
            debug!(entry = %e.dir.display(), bytes = e.bytes, "evicted snapshot cache entry");
            total -= e.bytes;
            freed += e.bytes;
            n += 1;
        }
        Ok((n, freed))
    }
}

/// A cache entry (see [`Cache::keys`]).
pub(crate) struct KeyedEntry {
    pub key: SnapshotKey,
    /// Last use (the manifest's mtime).
    pub used: SystemTime,
    pub bytes: u64,
}

struct EntryInfo {
    dir: PathBuf,
    used: SystemTime,
    bytes: u64,
}

fn read_dirs(p: &Path) -> io::Result<Vec<PathBuf>> {
    let rd = match fs::read_dir(p) {
        Ok(rd) => rd,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(e),
    };
    let mut out = Vec::new();
    for e in rd {
        let e = e?;
        if e.file_type()?.is_dir() {
            out.push(e.path());
        }
    }
    out.sort();
    Ok(out)
}

/// Hard-links `src` to `dst`, copying when a link is impossible (other filesystem, no link
/// support).
pub(crate) fn link_or_copy(src: &Path, dst: &Path) -> io::Result<()> {
    match fs::hard_link(src, dst) {
        Ok(()) => Ok(()),
        Err(e)
            if matches!(
                e.kind(),
                io::ErrorKind::CrossesDevices
                    | io::ErrorKind::PermissionDenied
                    | io::ErrorKind::Unsupported
                    | io::ErrorKind::TooManyLinks
            ) =>
        {
            fs::copy(src, dst).map(|_| ())
        }
        Err(e) => Err(e),
    }
}

/// The directory that will contain `dest` (created if missing).
pub(crate) fn parent_of(dest: &Path) -> io::Result<&Path> {
    let parent = match dest.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    };
    fs::create_dir_all(parent)?;
    Ok(parent)
}

/// Makes the temporary directory `tmp` visible as `dest` with one rename. `dest` may exist
/// only as an empty directory (it is replaced).
pub(crate) fn publish_dir(tmp: tempfile::TempDir, dest: &Path) -> io::Result<()> {
    match fs::remove_dir(dest) {
        Ok(()) => {}
        Err(e) if e.kind() == io::ErrorKind::NotFound => {}
        Err(e) => return Err(e),
    }
    let path = tmp.keep();
    fs::rename(&path, dest).inspect_err(|_| {
        let _ = fs::remove_dir_all(&path);
    })
}
