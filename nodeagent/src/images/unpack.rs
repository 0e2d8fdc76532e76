//! Applying OCI image layers (tar streams) to a directory.
//!
//! Semantics follow the OCI image spec's layer format (`image-spec/layer.md`):
//!
//! - Entries are applied in order; an entry replaces whatever was at its path, except that a
//!   directory entry over an existing directory keeps the directory's contents.
//! - `.wh.<name>` deletes `<name>` from the lower layers; `.wh..wh..opq` empties its directory of
//!   everything the lower layers put there. Neither affects entries of the same layer.
//! - Regular files, directories, symlinks and hard links are created with the entry's mode
//!   (including setuid/setgid/sticky bits), owner (when running as root) and, for files, mtime.
//!   Directory modes are applied at the end of each layer, so a read-only directory can still be
//!   filled. Device nodes and FIFOs are skipped (the sandbox provides `/dev`); extended attributes
//!   are not applied.
//!
//! Nothing is ever created outside the root: a `..` that would climb above the root is an error,
//! and symlinks met while resolving a parent directory are followed as if the root were `/`
//! (an absolute or climbing link target is clamped to the root, like `chroot` would), so a layer
//! shipping `etc -> /etc` followed by `etc/passwd` writes `<root>/etc/passwd`. The last component
//! of an entry is never followed: an existing symlink there is replaced, not written through.

use std::collections::HashSet;
use std::ffi::{OsStr, OsString};
use std::fs;
use std::io::{self, Read};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::{Component, Path, PathBuf};
use std::time::{Duration, UNIX_EPOCH};

use tar::EntryType;
use tracing::{debug, warn};

/// Symlinks followed while resolving one path before giving up (as Linux's `MAXSYMLINKS`).
const MAX_SYMLINK_HOPS: usize = 40;

const WHITEOUT_PREFIX: &str = ".wh.";
const OPAQUE_WHITEOUT: &str = ".wh..wh..opq";

/// Why a layer could not be applied.
#[derive(Debug, thiserror::Error)]
pub enum UnpackError {
    #[error("reading the layer: {0}")]
    Read(#[source] io::Error),
    #[error("tar entry {path:?} climbs out of the root with '..'")]
    PathEscapes { path: String },
    #[error("tar entry {path:?}: hard link target {target:?} climbs out of the root with '..'")]
    LinkEscapes { path: String, target: String },
    #[error("tar entry {path:?}: hard link target {target:?} does not exist or is a directory")]
    BadHardLink { path: String, target: String },
    #[error("tar entry {path:?}: parent {parent:?} is not a directory")]
    NotADirectory { path: String, parent: String },
    #[error("tar entry {path:?}: more than {MAX_SYMLINK_HOPS} symlinks while resolving it")]
    TooManySymlinks { path: String },
    #[error("tar entry {path:?}: invalid whiteout name")]
    BadWhiteout { path: String },
    #[error("tar entry {path:?}: {what}")]
    BadEntry { path: String, what: String },
    #[error("unpacked content over the limit of {limit} bytes")]
    TooManyBytes { limit: u64 },
    #[error("more than {limit} tar entries")]
    TooManyEntries { limit: u64 },
    #[error("tar entry {path:?}: {op} {target}: {source}")]
    Io {
        path: String,
        op: &'static str,
        target: PathBuf,
        #[source]
        source: io::Error,
    },
}

/// Limits shared by all layers of one image.
#[derive(Debug, Clone)]
pub struct Budget {
    bytes_left: u64,
    entries_left: u64,
    max_bytes: u64,
    max_entries: u64,
    /// Set after the first failed chown when not running as root.
    chown_unsupported: bool,
}

impl Budget {
    pub fn new(max_bytes: u64, max_entries: u64) -> Self {
        Budget {
            bytes_left: max_bytes,
            entries_left: max_entries,
            max_bytes,
            max_entries,
            chown_unsupported: false,
        }
    }
}

/// What one call to [`apply_layer`] did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct LayerStats {
    pub entries: u64,
    pub bytes: u64,
    pub whiteouts: u64,
    pub skipped: u64,
}

/// Splits an archive path into normal components, resolving `.` and `..` lexically.
/// `None` when `..` climbs above the root. The root itself is the empty vector.
fn clean_components(raw: &[u8]) -> Option<Vec<OsString>> {
    let mut out: Vec<OsString> = Vec::new();
    for c in Path::new(OsStr::from_bytes(raw)).components() {
        match c {
            Component::RootDir | Component::CurDir | Component::Prefix(_) => {}
            Component::ParentDir => {
                out.pop()?;
            }
            Component::Normal(n) => out.push(n.to_os_string()),
        }
    }
    Some(out)
}

/// Applies one uncompressed layer (a tar stream) onto `root`.
pub fn apply_layer(
    root: &Path,
    reader: &mut dyn Read,
    budget: &mut Budget,
) -> Result<LayerStats, UnpackError> {
    let mut archive = tar::Archive::new(reader);
    let mut stats = LayerStats::default();
    // Paths (relative, physical) this layer created, for whiteout/opaque semantics.
    let mut this_layer: HashSet<PathBuf> = HashSet::new();
    // Directories holding entries of this layer (possibly implicitly created or from below).
    let mut ancestors: HashSet<PathBuf> = HashSet::new();
    // Directory modes applied at the end of the layer.
    let mut dir_modes: Vec<(PathBuf, u32)> = Vec::new();

    for entry in archive.entries().map_err(UnpackError::Read)? {
        let mut entry = entry.map_err(UnpackError::Read)?;
        if budget.entries_left == 0 {
            return Err(UnpackError::TooManyEntries {
                limit: budget.max_entries,
            });
        }
        budget.entries_left -= 1;
        stats.entries += 1;

        let raw = entry.path_bytes().into_owned();
        let shown = String::from_utf8_lossy(&raw).into_owned();
        let kind = entry.header().entry_type();
        if matches!(
            kind,
            EntryType::XGlobalHeader
                | EntryType::XHeader
                | EntryType::GNULongName
                | EntryType::GNULongLink
        ) {
            continue;
        }
        let Some(mut comps) = clean_components(&raw) else {
            return Err(UnpackError::PathEscapes { path: shown });
        };
        let header = entry.header();
        let old = header.as_old();
        let mode = numeric(&old.mode, header.mode().map(u64::from))
            .map_err(|e| bad(&shown, "mode", e))? as u32
            & 0o7777;
        let uid = numeric(&old.uid, header.uid()).map_err(|e| bad(&shown, "uid", e))?;
        let gid = numeric(&old.gid, header.gid()).map_err(|e| bad(&shown, "gid", e))?;
        let mtime = header.mtime().unwrap_or(0);

        let Some(name) = comps.pop() else {
            // The root itself ("./"): only its mode and owner matter.
            if kind == EntryType::Directory {
                chown(root, uid, gid, budget, &shown)?;
                dir_modes.push((PathBuf::new(), mode));
            }
            continue;
        };
        let name_str = name.to_string_lossy();

        // Whiteouts.
        if name_str.starts_with(WHITEOUT_PREFIX) {
            stats.whiteouts += 1;
            let parent = resolve_dir(root, &comps, &shown, false)?;
            let Some(parent) = parent else {
                continue; // Parent does not exist: nothing to hide.
            };
            if name_str == OPAQUE_WHITEOUT {
                clear_lower(root, &parent, &this_layer, &ancestors, &shown)?;
            } else {
                let hidden = OsStr::from_bytes(&name.as_bytes()[WHITEOUT_PREFIX.len()..]);
                if hidden.is_empty() || hidden == "." || hidden == ".." {
                    return Err(UnpackError::BadWhiteout { path: shown });
                }
                let rel = parent.join(hidden);
                if !this_layer.contains(&rel) {
                    remove_any(&root.join(&rel), &shown)?;
                }
            }
            continue;
        }

        let parent = resolve_dir(root, &comps, &shown, true)?
            .expect("resolve_dir with create=true returns a directory");
        let rel = parent.join(&name);
        let target = root.join(&rel);

        match kind {
            EntryType::Directory => {
                match fs::symlink_metadata(&target) {
                    Ok(m) if m.is_dir() => {}
                    Ok(_) => {
                        remove_any(&target, &shown)?;
                        mkdir(&target, &shown)?;
                    }
                    Err(e) if e.kind() == io::ErrorKind::NotFound => mkdir(&target, &shown)?,
                    Err(e) => return Err(io_error(&shown, "inspecting", &target, e)),
                }
                chown(&target, uid, gid, budget, &shown)?;
                dir_modes.push((rel.clone(), mode));
            }
            EntryType::Regular | EntryType::Continuous | EntryType::GNUSparse => {
                let size = entry.size();
                if size > budget.bytes_left {
                    return Err(UnpackError::TooManyBytes {
                        limit: budget.max_bytes,
                    });
                }
                replace(&target, &shown)?;
                let mut file = fs::OpenOptions::new()
                    .write(true)
                    .create_new(true)
                    .mode(0o600)
                    .open(&target)
                    .map_err(|e| io_error(&shown, "creating", &target, e))?;
                // Read one byte past the budget so an entry lying about its size is caught.
                let copied = io::copy(&mut (&mut entry).take(budget.bytes_left + 1), &mut file)
                    .map_err(UnpackError::Read)?;
                if copied > budget.bytes_left {
                    return Err(UnpackError::TooManyBytes {
                        limit: budget.max_bytes,
                    });
                }
                budget.bytes_left -= copied;
                stats.bytes += copied;
                file.set_modified(UNIX_EPOCH + Duration::from_secs(mtime))
                    .map_err(|e| io_error(&shown, "setting mtime of", &target, e))?;
                drop(file);
                // chown clears setuid/setgid, so it goes first.
                chown(&target, uid, gid, budget, &shown)?;
                fs::set_permissions(&target, fs::Permissions::from_mode(mode))
                    .map_err(|e| io_error(&shown, "setting mode of", &target, e))?;
            }
            EntryType::Symlink => {
                let Some(link) = entry.link_name_bytes() else {
                    return Err(UnpackError::BadEntry {
                        path: shown,
                        what: "symlink without target".to_string(),
                    });
                };
                replace(&target, &shown)?;
                std::os::unix::fs::symlink(OsStr::from_bytes(&link), &target)
                    .map_err(|e| io_error(&shown, "creating symlink", &target, e))?;
                chown(&target, uid, gid, budget, &shown)?;
            }
            EntryType::Link => {
                let Some(link) = entry.link_name_bytes() else {
                    return Err(UnpackError::BadEntry {
                        path: shown,
                        what: "hard link without target".to_string(),
                    });
                };
                let link_display = String::from_utf8_lossy(&link).into_owned();
                let Some(mut lcomps) = clean_components(&link) else {
                    return Err(UnpackError::LinkEscapes {
                        path: shown,
                        target: link_display,
                    });
                };
                let bad_link = || UnpackError::BadHardLink {
                    path: shown.clone(),
                    target: link_display.clone(),
                };
                let lname = lcomps.pop().ok_or_else(bad_link)?;
                let lparent = resolve_dir(root, &lcomps, &shown, false)?.ok_or_else(bad_link)?;
                let source = root.join(lparent.join(&lname));
                match fs::symlink_metadata(&source) {
                    Ok(m) if !m.is_dir() => {}
                    _ => return Err(bad_link()),
                }
                if source == target {
                    // A link to itself: nothing to do.
                } else {
                    replace(&target, &shown)?;
                    fs::hard_link(&source, &target)
                        .map_err(|e| io_error(&shown, "creating hard link", &target, e))?;
                }
            }
            EntryType::Char | EntryType::Block | EntryType::Fifo => {
                stats.skipped += 1;
                debug!(path = %shown, kind = ?kind, "skipping device node or fifo");
                continue;
            }
            other => {
                stats.skipped += 1;
                warn!(path = %shown, kind = ?other, "skipping tar entry of unsupported type");
                continue;
            }
        }
        for ancestor in rel.ancestors().skip(1) {
            if !ancestors.insert(ancestor.to_path_buf()) {
                break;
            }
        }
        this_layer.insert(rel);
    }

    // Deepest first, so a read-only parent does not block its children.
    dir_modes.sort_by_key(|(p, _)| std::cmp::Reverse(p.components().count()));
    for (rel, mode) in dir_modes {
        let p = root.join(&rel);
        fs::set_permissions(&p, fs::Permissions::from_mode(mode))
            .map_err(|e| io_error(&rel.to_string_lossy(), "setting mode of", &p, e))?;
    }
    Ok(stats)
}

/// A numeric header field; an empty one (all NUL or spaces) reads as 0, as Go's archive/tar
/// (which wrote most image layers) does.
fn numeric(raw: &[u8], parsed: io::Result<u64>) -> io::Result<u64> {
    match parsed {
        Ok(v) => Ok(v),
        Err(_) if raw.iter().all(|b| *b == 0 || *b == b' ') => Ok(0),
        Err(e) => Err(e),
    }
}

fn bad(path: &str, field: &str, e: io::Error) -> UnpackError {
    UnpackError::BadEntry {
        path: path.to_string(),
        what: format!("bad {field} field: {e}"),
    }
}

fn io_error(path: &str, op: &'static str, target: &Path, source: io::Error) -> UnpackError {
    UnpackError::Io {
        path: path.to_string(),
        op,
        target: target.to_path_buf(),
        source,
    }
}

fn mkdir(target: &Path, shown: &str) -> Result<(), UnpackError> {
    fs::create_dir(target).map_err(|e| io_error(shown, "creating directory", target, e))?;
    fs::set_permissions(target, fs::Permissions::from_mode(0o755))
        .map_err(|e| io_error(shown, "setting mode of", target, e))
}

/// Removes whatever is at `target` (file, symlink or whole directory); absent is fine.
fn remove_any(target: &Path, shown: &str) -> Result<(), UnpackError> {
    match fs::symlink_metadata(target) {
        Ok(m) if m.is_dir() => {
            fs::remove_dir_all(target).map_err(|e| io_error(shown, "removing directory", target, e))
        }
        Ok(_) => fs::remove_file(target).map_err(|e| io_error(shown, "removing", target, e)),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(io_error(shown, "inspecting", target, e)),
    }
}

/// Makes room for a non-directory entry at `target`.
fn replace(target: &Path, shown: &str) -> Result<(), UnpackError> {
    remove_any(target, shown)
}

fn chown(
    target: &Path,
    uid: u64,
    gid: u64,
    budget: &mut Budget,
    shown: &str,
) -> Result<(), UnpackError> {
    if budget.chown_unsupported {
        return Ok(());
    }
    let (Ok(uid), Ok(gid)) = (u32::try_from(uid), u32::try_from(gid)) else {
        return Err(UnpackError::BadEntry {
            path: shown.to_string(),
            what: format!("owner {uid}:{gid} out of range"),
        });
    };
    // Skip the syscall when the owner is already right (the common case for root-owned files).
    if let Ok(m) = fs::symlink_metadata(target)
        && m.uid() == uid
        && m.gid() == gid
    {
        return Ok(());
    }
    match std::os::unix::fs::lchown(target, Some(uid), Some(gid)) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == io::ErrorKind::PermissionDenied => {
            warn!(path = %shown, "cannot change owners (not root?); keeping the current user");
            budget.chown_unsupported = true;
            Ok(())
        }
        Err(e) => Err(io_error(shown, "changing owner of", target, e)),
    }
}

/// Resolves the directory made of `comps` under `root`, following symlinks in it with `root` as
/// `/`. Returns its physical path relative to `root`. Missing directories are created when
/// `create` is set (tar streams may omit parents), else `Ok(None)` is returned.
fn resolve_dir(
    root: &Path,
    comps: &[OsString],
    shown: &str,
    create: bool,
) -> Result<Option<PathBuf>, UnpackError> {
    // Components still to walk, in reverse order (a stack).
    let mut todo: Vec<OsString> = comps.iter().rev().cloned().collect();
    let mut current: Vec<OsString> = Vec::new();
    let mut hops = 0;
    while let Some(c) = todo.pop() {
        if c == ".." {
            current.pop();
            continue;
        }
        if c == "." || c.is_empty() {
            continue;
        }
        let rel: PathBuf = current.iter().chain(std::iter::once(&c)).collect();
        let full = root.join(&rel);
        match fs::symlink_metadata(&full) {
            Ok(m) if m.is_dir() => current.push(c),
            Ok(m) if m.file_type().is_symlink() => {
                hops += 1;
                if hops > MAX_SYMLINK_HOPS {
                    return Err(UnpackError::TooManySymlinks {
                        path: shown.to_string(),
                    });
                }
                let link = fs::read_link(&full)
                    .map_err(|e| io_error(shown, "reading symlink", &full, e))?;
                if link.is_absolute() {
                    current.clear();
                }
                // Push the link's components so they are walked next, in order.
                for lc in link.components().rev() {
                    match lc {
                        Component::Normal(n) => todo.push(n.to_os_string()),
                        Component::ParentDir => todo.push(OsString::from("..")),
                        Component::RootDir | Component::CurDir | Component::Prefix(_) => {}
                    }
                }
            }
            Ok(_) => {
                return Err(UnpackError::NotADirectory {
                    path: shown.to_string(),
                    parent: rel.to_string_lossy().into_owned(),
                });
            }
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                if !create {
                    return Ok(None);
                }
                mkdir(&full, shown)?;
                current.push(c);
            }
            Err(e) => return Err(io_error(shown, "inspecting", &full, e)),
        }
    }
    Ok(Some(current.iter().collect()))
}

/// Opaque whiteout: removes everything under `dir` (relative to `root`) that this layer did not
/// create, keeping directories that hold entries of this layer (emptied of the rest).
fn clear_lower(
    root: &Path,
    dir: &Path,
    this_layer: &HashSet<PathBuf>,
    ancestors: &HashSet<PathBuf>,
    shown: &str,
) -> Result<(), UnpackError> {
    let full = root.join(dir);
    let entries = fs::read_dir(&full).map_err(|e| io_error(shown, "listing", &full, e))?;
    for entry in entries {
        let entry = entry.map_err(|e| io_error(shown, "listing", &full, e))?;
        let rel = dir.join(entry.file_name());
        let is_dir = entry
            .file_type()
            .map_err(|e| io_error(shown, "inspecting", &entry.path(), e))?
            .is_dir();
        if is_dir && ancestors.contains(&rel) {
            clear_lower(root, &rel, this_layer, ancestors, shown)?;
        } else if !this_layer.contains(&rel) {
            remove_any(&root.join(&rel), shown)?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::MetadataExt;

    /// A hand-built tar entry; names are written raw (no validation), like a hostile layer.
    enum E<'a> {
        Dir(&'a str, u32),
        File(&'a str, &'a [u8], u32),
        Owned(&'a str, &'a [u8], u32, u64, u64),
        Symlink(&'a str, &'a str),
        Link(&'a str, &'a str),
        Fifo(&'a str),
    }

    fn tar_of(entries: &[E]) -> Vec<u8> {
        let mut b = tar::Builder::new(Vec::new());
        for e in entries {
            let mut h = tar::Header::new_gnu();
            let (name, data, kind, mode, uid, gid, link): (
                &str,
                &[u8],
                _,
                u32,
                u64,
                u64,
                Option<&str>,
            ) = match e {
                E::Dir(n, m) => (n, b"", EntryType::Directory, *m, 0, 0, None),
                E::File(n, d, m) => (n, d, EntryType::Regular, *m, 0, 0, None),
                E::Owned(n, d, m, u, g) => (n, d, EntryType::Regular, *m, *u, *g, None),
                E::Symlink(n, t) => (n, b"", EntryType::Symlink, 0o777, 0, 0, Some(t)),
                E::Link(n, t) => (n, b"", EntryType::Link, 0o644, 0, 0, Some(t)),
                E::Fifo(n) => (n, b"", EntryType::Fifo, 0o644, 0, 0, None),
            };
            let raw = &mut h.as_old_mut().name;
            raw.fill(0);
            raw[..name.len()].copy_from_slice(name.as_bytes());
            h.set_entry_type(kind);
            h.set_mode(mode);
            h.set_uid(uid);
            h.set_gid(gid);
            h.set_mtime(1_000_000);
            h.set_size(data.len() as u64);
            if let Some(t) = link {
                h.set_link_name_literal(t).unwrap();
            }
            h.set_cksum();
            b.append(&h, data).unwrap();
        }
        b.into_inner().unwrap()
    }

    struct Fixture {
        _dir: tempfile::TempDir,
        root: PathBuf,
        outside: PathBuf,
    }

    fn fixture() -> Fixture {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().join("root");
        let outside = dir.path().join("outside");
        fs::create_dir(&root).unwrap();
        fs::create_dir(&outside).unwrap();
        fs::write(outside.join("secret"), b"do not touch").unwrap();
        Fixture {
            _dir: dir,
            root,
            outside,
        }
    }

    fn apply(root: &Path, entries: &[E]) -> Result<LayerStats, UnpackError> {
        let tar = tar_of(entries);
        apply_layer(
            root,
            &mut tar.as_slice(),
            &mut Budget::new(1 << 30, 1 << 20),
        )
    }

    fn mode(p: &Path) -> u32 {
        fs::symlink_metadata(p).unwrap().permissions().mode() & 0o7777
    }

    fn assert_outside_untouched(f: &Fixture) {
        let names: Vec<_> = fs::read_dir(&f.outside)
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(names, vec![OsString::from("secret")]);
        assert_eq!(fs::read(f.outside.join("secret")).unwrap(), b"do not touch");
    }

    #[test]
    fn files_dirs_links_modes_and_owners() {
        let f = fixture();
        let stats = apply(
            &f.root,
            &[
                E::Dir("./", 0o755),
                E::Dir("bin/", 0o755),
                E::File("bin/tool", b"#!x", 0o4755),
                E::File("implicit/parent/file", b"data", 0o640),
                E::Symlink("bin/alias", "tool"),
                E::Symlink("abs", "/bin/tool"),
                E::Link("bin/hard", "bin/tool"),
                E::Owned("home/user/f", b"mine", 0o600, 1000, 1001),
                E::Dir("ro/", 0o555),
                E::File("ro/inside", b"x", 0o444),
                E::Fifo("dev-fifo"),
            ],
        )
        .unwrap();
        assert_eq!(stats.skipped, 1);
        let r = &f.root;
        assert_eq!(fs::read(r.join("bin/tool")).unwrap(), b"#!x");
        assert_eq!(mode(&r.join("bin/tool")), 0o4755);
        assert_eq!(mode(&r.join("implicit/parent/file")), 0o640);
        assert_eq!(mode(&r.join("implicit")), 0o755);
        assert_eq!(
            fs::read_link(r.join("bin/alias")).unwrap(),
            Path::new("tool")
        );
        assert_eq!(
            fs::read_link(r.join("abs")).unwrap(),
            Path::new("/bin/tool")
        );
        assert_eq!(
            fs::metadata(r.join("bin/hard")).unwrap().ino(),
            fs::metadata(r.join("bin/tool")).unwrap().ino()
        );
        let m = fs::metadata(r.join("home/user/f")).unwrap();
        assert_eq!((m.uid(), m.gid()), (1000, 1001), "run the tests as root");
        assert_eq!(m.mtime(), 1_000_000);
        // Directory modes are applied after the layer, so read-only dirs can be filled.
        assert_eq!(mode(&r.join("ro")), 0o555);
        assert_eq!(fs::read(r.join("ro/inside")).unwrap(), b"x");
        assert!(!r.join("dev-fifo").exists());
    }

    #[test]
    fn whiteouts_remove_lower_entries_only() {
        let f = fixture();
        let r = &f.root;
        apply(
            r,
            &[
                E::File("a/f1", b"1", 0o644),
                E::File("a/f2", b"2", 0o644),
                E::File("b/deep/x", b"x", 0o644),
            ],
        )
        .unwrap();
        let stats = apply(
            r,
            &[
                E::File("a/.wh.f1", b"", 0o644),
                E::File(".wh.b", b"", 0o644),
                E::File(".wh.never-existed", b"", 0o644),
                E::File("nodir/.wh.x", b"", 0o644),
                // Same-layer entries are not hidden by a whiteout.
                E::File("c", b"same layer", 0o644),
                E::File(".wh.c", b"", 0o644),
            ],
        )
        .unwrap();
        assert_eq!(stats.whiteouts, 5);
        assert!(!r.join("a/f1").exists());
        assert_eq!(fs::read(r.join("a/f2")).unwrap(), b"2");
        assert!(!r.join("b").exists());
        assert!(!r.join("nodir").exists());
        assert_eq!(fs::read(r.join("c")).unwrap(), b"same layer");
        assert!(!r.join("a/.wh.f1").exists() && !r.join(".wh.b").exists());
    }

    #[test]
    fn opaque_directories_hide_lower_content() {
        let f = fixture();
        let r = &f.root;
        apply(
            r,
            &[
                E::File("d/old", b"o", 0o644),
                E::File("d/sub/old2", b"o", 0o644),
                E::File("keep/x", b"k", 0o644),
            ],
        )
        .unwrap();
        apply(
            r,
            &[
                E::Dir("d/", 0o750),
                E::File("d/sub/new", b"n", 0o644),
                E::File("d/.wh..wh..opq", b"", 0o644),
                E::File("d/new2", b"n2", 0o644),
            ],
        )
        .unwrap();
        assert!(!r.join("d/old").exists());
        assert!(!r.join("d/sub/old2").exists());
        assert_eq!(fs::read(r.join("d/sub/new")).unwrap(), b"n");
        assert_eq!(fs::read(r.join("d/new2")).unwrap(), b"n2");
        assert_eq!(mode(&r.join("d")), 0o750);
        assert_eq!(fs::read(r.join("keep/x")).unwrap(), b"k");
        assert!(!r.join("d/.wh..wh..opq").exists());
    }

    #[test]
    fn entries_replace_each_other_across_layers() {
        let f = fixture();
        let r = &f.root;
        apply(
            r,
            &[E::File("x/f", b"1", 0o644), E::File("y", b"file", 0o644)],
        )
        .unwrap();
        apply(
            r,
            &[E::File("x", b"now a file", 0o644), E::Dir("y/", 0o700)],
        )
        .unwrap();
        assert_eq!(fs::read(r.join("x")).unwrap(), b"now a file");
        assert!(r.join("y").is_dir());
        assert_eq!(mode(&r.join("y")), 0o700);
    }

    #[test]
    fn dot_dot_escaping_the_root_is_refused() {
        let f = fixture();
        for name in [
            "../outside/pwned",
            "a/../../outside/pwned",
            "/../outside/pwned",
        ] {
            let e = apply(&f.root, &[E::File(name, b"x", 0o644)]).unwrap_err();
            assert!(matches!(e, UnpackError::PathEscapes { .. }), "{name}: {e}");
            assert!(e.to_string().contains(name), "{e}");
        }
        // `..` that stays inside is fine.
        apply(&f.root, &[E::File("a/../inside", b"x", 0o644)]).unwrap();
        assert!(f.root.join("inside").exists());
        assert_outside_untouched(&f);
    }

    #[test]
    fn symlinks_in_parents_stay_inside_the_root() {
        let f = fixture();
        let r = &f.root;
        let outside_abs = f.outside.to_str().unwrap();
        apply(
            r,
            &[
                E::Symlink("climb", "../../../../.."),
                E::File("climb/pwned1", b"1", 0o644),
                E::Symlink("abs", outside_abs),
                E::File("abs/pwned2", b"2", 0o644),
                E::Symlink("etc", "/usr/etc"),
                E::File("etc/passwd", b"root:x:0:0::/:/x\n", 0o644),
                // `self -> /self` is a loop once the root is `/`.
                E::Symlink("self", "/self"),
            ],
        )
        .unwrap();
        // Everything landed inside the root, as a chroot would see it.
        assert_eq!(fs::read(r.join("pwned1")).unwrap(), b"1");
        assert_eq!(
            fs::read(r.join(outside_abs.trim_start_matches('/')).join("pwned2")).unwrap(),
            b"2"
        );
        assert!(r.join("etc").is_symlink());
        assert_eq!(
            fs::read(r.join("usr/etc/passwd")).unwrap(),
            b"root:x:0:0::/:/x\n"
        );
        let e = apply(r, &[E::File("self/x", b"", 0o644)]).unwrap_err();
        assert!(matches!(e, UnpackError::TooManySymlinks { .. }), "{e}");
        assert_outside_untouched(&f);
    }

    #[test]
    fn a_symlink_at_the_final_component_is_replaced_not_followed() {
        let f = fixture();
        let r = &f.root;
        let secret = f.outside.join("secret");
        apply(r, &[E::Symlink("victim", secret.to_str().unwrap())]).unwrap();
        apply(r, &[E::File("victim", b"overwritten?", 0o644)]).unwrap();
        assert!(!r.join("victim").is_symlink());
        assert_eq!(fs::read(r.join("victim")).unwrap(), b"overwritten?");
        // A directory entry over a symlink replaces it too.
        apply(r, &[E::Symlink("dirlink", f.outside.to_str().unwrap())]).unwrap();
        apply(r, &[E::Dir("dirlink/", 0o700)]).unwrap();
        assert!(!r.join("dirlink").is_symlink() && r.join("dirlink").is_dir());
        assert_outside_untouched(&f);
    }

    #[test]
    fn hard_links_cannot_reach_outside() {
        let f = fixture();
        let r = &f.root;
        let e = apply(r, &[E::Link("l", "../outside/secret")]).unwrap_err();
        assert!(matches!(e, UnpackError::LinkEscapes { .. }), "{e}");
        // Through a symlinked directory pointing outside: resolved inside the root, where the
        // target does not exist.
        let e = apply(
            r,
            &[
                E::Symlink("out", f.outside.to_str().unwrap()),
                E::Link("l", "out/secret"),
            ],
        )
        .unwrap_err();
        assert!(matches!(e, UnpackError::BadHardLink { .. }), "{e}");
        let e = apply(r, &[E::Link("l2", "missing")]).unwrap_err();
        assert!(e.to_string().contains("\"missing\" does not exist"), "{e}");
        let e = apply(r, &[E::Dir("d/", 0o755), E::Link("l3", "d")]).unwrap_err();
        assert!(matches!(e, UnpackError::BadHardLink { .. }), "{e}");
        assert_outside_untouched(&f);
    }

    #[test]
    fn bad_names_and_shapes_are_refused() {
        let f = fixture();
        let r = &f.root;
        for name in ["a/.wh..", "a/.wh.", "a/.wh.."] {
            let e = apply(r, &[E::Dir("a/", 0o755), E::File(name, b"", 0o644)]).unwrap_err();
            assert!(matches!(e, UnpackError::BadWhiteout { .. }), "{name}: {e}");
        }
        let e = apply(
            r,
            &[E::File("f", b"x", 0o644), E::File("f/child", b"y", 0o644)],
        )
        .unwrap_err();
        assert!(matches!(e, UnpackError::NotADirectory { .. }), "{e}");
        let e = apply(
            r,
            &[E::Symlink("loop", "loop"), E::File("loop/x", b"", 0o644)],
        )
        .unwrap_err();
        assert!(matches!(e, UnpackError::TooManySymlinks { .. }), "{e}");
    }

    #[test]
    fn numeric_fields_empty_is_zero_garbage_is_an_error() {
        let f = fixture();
        let entry = |uid: &[u8; 8]| {
            let mut h = tar::Header::new_gnu();
            h.as_old_mut().name[..1].copy_from_slice(b"f");
            h.set_entry_type(EntryType::Regular);
            h.set_mode(0o644);
            h.set_size(0);
            h.as_old_mut().uid = *uid;
            h.set_cksum();
            let mut b = tar::Builder::new(Vec::new());
            b.append(&h, std::io::empty()).unwrap();
            b.into_inner().unwrap()
        };
        let mut budget = Budget::new(1 << 20, 100);
        apply_layer(&f.root, &mut entry(&[0; 8]).as_slice(), &mut budget).unwrap();
        assert_eq!(fs::metadata(f.root.join("f")).unwrap().uid(), 0);
        let e = apply_layer(
            &f.root,
            &mut entry(b"zz\0\0\0\0\0\0").as_slice(),
            &mut budget,
        )
        .unwrap_err();
        assert!(e.to_string().contains("bad uid field"), "{e}");
    }

    #[test]
    fn budgets_are_enforced() {
        let f = fixture();
        let tar = tar_of(&[
            E::File("a", &[0u8; 100], 0o644),
            E::File("b", &[0u8; 100], 0o644),
        ]);
        let e = apply_layer(&f.root, &mut tar.as_slice(), &mut Budget::new(150, 100)).unwrap_err();
        assert!(matches!(e, UnpackError::TooManyBytes { limit: 150 }), "{e}");
        let e = apply_layer(&f.root, &mut tar.as_slice(), &mut Budget::new(1000, 1)).unwrap_err();
        assert!(matches!(e, UnpackError::TooManyEntries { limit: 1 }), "{e}");
        // The budget spans layers.
        let mut budget = Budget::new(250, 100);
        apply_layer(&f.root, &mut tar.as_slice(), &mut budget).unwrap();
        let e = apply_layer(&f.root, &mut tar.as_slice(), &mut budget).unwrap_err();
        assert!(matches!(e, UnpackError::TooManyBytes { .. }), "{e}");
    }

    #[test]
    fn truncated_layers_fail() {
        let f = fixture();
        let tar = tar_of(&[E::File("a", &[7u8; 2000], 0o644)]);
        let e =
            apply_layer(&f.root, &mut &tar[..1000], &mut Budget::new(1 << 20, 100)).unwrap_err();
        assert!(matches!(e, UnpackError::Read(_)), "{e}");
    }

    #[test]
    fn clean_components_resolves_dots() {
        let c = |s: &str| {
            clean_components(s.as_bytes()).map(|v| {
                v.iter()
                    .map(|o| o.to_string_lossy().into_owned())
                    .collect::<Vec<_>>()
            })
        };
        assert_eq!(c("./a/b/"), Some(vec!["a".into(), "b".into()]));
        assert_eq!(c("/a/./b"), Some(vec!["a".into(), "b".into()]));
        assert_eq!(c("a/../b"), Some(vec!["b".into()]));
        assert_eq!(c("./"), Some(vec![]));
        assert_eq!(c("../x"), None);
        assert_eq!(c("a/../../x"), None);
    }
}
