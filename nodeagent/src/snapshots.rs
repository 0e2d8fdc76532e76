//! Snapshot store: moves `runsc checkpoint` image directories to and from object storage
//! (`file://`, `s3://`, `gs://`), with a verified node-local cache.
//!
//! # Storage format (version 1)
//!
//! A snapshot of actor `<actor>` in atespace `<atespace>` with id `<id>` lives under
//! `<store url>/<atespace>/<actor>/<id>/`:
//!
//! ```text
//! <file>.zst       one object per regular file of the checkpoint directory: a zstd stream
//!                  (one frame, content size and checksum included) of the file's bytes
//! manifest.json    written LAST: its presence commits the snapshot
//! ```
//!
//! `manifest.json` (see [`Manifest`]) is a JSON object:
//!
//! ```json
//! {
//!   "kind": "SnapshotManifest",
//!   "formatVersion": 1,
//!   "atespace": "team-a", "actor": "bot", "id": "20250101T120000.000Z-1a2b3c4d",
//!   "compression": "zstd",
//!   "files": [
//!     { "name": "checkpoint.img", "size": 123, "sha256": "sha256:…",
//!       "object": "checkpoint.img.zst", "compressedSize": 45, "compressedSha256": "sha256:…" }
//!   ],
//!   "meta": { "runscVersion": "…", "platform": "systrap", "createdAt": "…",
//!             "imageDigests": { "app": "sha256:…" }, "runscFlags": [ … ], "node": "…" }
//! }
//! ```
//!
//! Files are sorted by name; names are `[A-Za-z0-9._-]`, not starting with `.`. Readers
//! refuse any other `kind`, `formatVersion` or `compression`, and ignore unknown fields.
//!
//! A [`SnapshotRef`] (recorded in the actor's status) names the prefix and the `sha256` of
//! the manifest's exact bytes: a fetch refuses any other manifest, and the manifest pins the
//! sha256 of every file, compressed and uncompressed. So a ref pins the snapshot's content.
//!
//! # Guarantees
//!
//! - Upload streams every file (bounded buffers: ~1 MiB reads, a few 1 MiB chunks in flight,
//!   `part_size × upload_concurrency` in multipart parts) and writes the manifest only after
//!   every object is complete. A process killed mid-upload leaves no manifest: the snapshot
//!   is never visible ([`SnapshotError::NotCommitted`]) and GC removes the garbage after
//!   `gc_grace`. Snapshot ids are never reused ([`SnapshotError::AlreadyCommitted`]).
//! - Fetch verifies the manifest against the ref, decompresses with a hard cap at the
//!   declared size (and `max_file_bytes`), checks size and sha256 of every object and file
//!   into a temporary sibling of `dest`, and renames it to `dest` only when all match: `dest`
//!   never holds unverified data.
//! - Delete removes the manifest first, so a partly deleted snapshot is never committed.
//! - The node-local cache (see `cache.rs`) keeps uncompressed files of snapshots uploaded or
//!   fetched on this node; a fetch served from it reads nothing from the object store.
//!
//! Objects of multipart uploads killed midway (S3, GCS) are invisible to listing and cannot
//! be removed through `object_store`: give the bucket a lifecycle rule that aborts incomplete
//! multipart uploads (e.g. after one day).

mod cache;
mod codec;
mod config;
mod error;
mod manifest;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Instant;

use bytes::Bytes;
use futures::{StreamExt, TryStreamExt};
use object_store::path::Path as ObjPath;
use object_store::{
    GetResultPayload, ObjectMeta, ObjectStore, ObjectStoreExt, PutPayload, WriteMultipart,
};
use tokio::sync::mpsc;
use tracing::{debug, info, warn};

pub use config::{MIN_PART_SIZE, S3Options, SnapshotConfig};
pub use error::SnapshotError;
pub use manifest::{
    FORMAT_VERSION, MANIFEST_KIND, MANIFEST_NAME, Manifest, ManifestFile, OBJECT_SUFFIX,
    SnapshotKey, SnapshotMeta, SnapshotRef, is_valid_file_name, owner_id, owner_uid_of,
    sha256_digest,
};

use cache::Cache;
use codec::{Expected, Source, hash_file};
use manifest::{MAX_FILES, MAX_MANIFEST_BYTES, parse_digest, validate_label};

/// Compressed chunks buffered between the compressor and the uploader.
const UPLOAD_CHANNEL_CHUNKS: usize = 4;
/// Downloaded chunks buffered between the network and the decompressor.
const FETCH_CHANNEL_CHUNKS: usize = 64;

/// Where a fetch got its files.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FetchSource {
    /// The node-local cache: nothing was read from the object store.
    Cache,
    /// Downloaded from the object store (and then added to the cache).
    ObjectStore,
}

/// Result of [`SnapshotStore::fetch`].
#[derive(Debug, Clone)]
pub struct FetchOutcome {
    pub source: FetchSource,
    /// Uncompressed bytes placed in `dest`.
    pub bytes: u64,
    /// Compressed bytes read from the object store (0 on a cache hit).
    pub downloaded_bytes: u64,
    /// Number of files placed in `dest`.
    pub files: usize,
    /// The snapshot's metadata (runsc version, image digests, ...).
    pub meta: SnapshotMeta,
}

/// State of a listed snapshot.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SnapshotState {
    /// Has a valid manifest.
    Committed(SnapshotRef),
    /// Objects without a manifest: an upload in progress or an interrupted one.
    Uncommitted,
    /// Has a manifest this build cannot read (never deleted by GC).
    Unreadable { reason: String },
}

/// One snapshot found by [`SnapshotStore::list`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SnapshotEntry {
    pub key: SnapshotKey,
    pub state: SnapshotState,
    /// When the manifest was written (committed snapshots).
    pub committed_at: Option<jiff::Timestamp>,
    /// Newest modification among its objects.
    pub last_modified: jiff::Timestamp,
    /// Objects stored under its prefix.
    pub objects: usize,
    /// Bytes stored under its prefix.
    pub stored_bytes: u64,
}

/// What [`SnapshotStore::retain_latest`] did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct GcReport {
    /// Committed snapshots kept (oldest first).
    pub kept: Vec<String>,
    /// Committed snapshots deleted (older than the kept ones).
    pub deleted: Vec<String>,
    /// Uncommitted snapshots older than the grace period, removed.
    pub garbage: Vec<String>,
    /// Uncommitted snapshots younger than the grace period (maybe uploading), left alone.
    pub in_progress: Vec<String>,
    /// Snapshots with an unreadable manifest, left alone.
    pub unreadable: Vec<String>,
}

/// One snapshot found by [`SnapshotStore::inventory`] (from the listing alone: no manifest
/// is read).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredSnapshot {
    pub key: SnapshotKey,
    /// Its manifest exists (it was committed).
    pub committed: bool,
    /// Newest modification among its objects (for `file://`, staging files too).
    pub last_modified: jiff::Timestamp,
    /// Objects stored under its prefix.
    pub objects: usize,
    /// Bytes stored under its prefix.
    pub stored_bytes: u64,
}

/// What [`SnapshotStore::prune_cache`] removed.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct CachePruned {
    pub entries: usize,
    pub bytes: u64,
}

/// Snapshots in one object store, with a node-local cache. Cheap to share (`Arc`).
pub struct SnapshotStore {
    cfg: SnapshotConfig,
    store: Arc<dyn ObjectStore>,
    base: ObjPath,
    base_url: String,
    local_root: Option<PathBuf>,
    cache: Arc<Cache>,
}

impl std::fmt::Debug for SnapshotStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SnapshotStore")
            .field("url", &self.base_url)
            .field("cache_dir", &self.cfg.cache_dir)
            .finish_non_exhaustive()
    }
}

async fn blocking<T, F>(f: F) -> Result<T, SnapshotError>
where
    T: Send + 'static,
    F: FnOnce() -> Result<T, SnapshotError> + Send + 'static,
{
    tokio::task::spawn_blocking(f)
        .await
        .map_err(SnapshotError::Task)?
}

fn timestamp(meta: &ObjectMeta) -> jiff::Timestamp {
    jiff::Timestamp::from_millisecond(meta.last_modified.timestamp_millis())
        .unwrap_or(jiff::Timestamp::UNIX_EPOCH)
}

fn is_not_found(e: &object_store::Error) -> bool {
    matches!(e, object_store::Error::NotFound { .. })
}

impl SnapshotStore {
    /// Opens the store named by `config.url` and the cache directory.
    pub fn new(config: SnapshotConfig) -> Result<Self, SnapshotError> {
        config.validate()?;
        let backend = config::open(&config)?;
        Self::build(config, backend)
    }

    /// Uses `store` as the backend of `config.url` (e.g. wrapped for fault injection or
    /// metrics). Object paths are `<base>/<atespace>/<actor>/<id>/...` inside `store`. For a
    /// `file://` URL, `store` should be rooted at that directory (GC also sweeps it).
    pub fn with_object_store(
        config: SnapshotConfig,
        store: Arc<dyn ObjectStore>,
        base: ObjPath,
    ) -> Result<Self, SnapshotError> {
        config.validate()?;
        let url = config::normalize_url(&config.url)?;
        let local_root = (url.scheme() == "file")
            .then(|| url.to_file_path().ok())
            .flatten();
        let backend = config::Backend {
            store,
            base,
            base_url: config::base_url(&url),
            local_root,
        };
        Self::build(config, backend)
    }

    fn build(cfg: SnapshotConfig, b: config::Backend) -> Result<Self, SnapshotError> {
        let cache = Cache::open(
            &cfg.cache_dir,
            cfg.cache_max_bytes,
            cfg.verify_cache_digests,
        )
        .map_err(|e| SnapshotError::io("open snapshot cache", &cfg.cache_dir, e))?;
        Ok(Self {
            store: b.store,
            base: b.base,
            base_url: b.base_url,
            local_root: b.local_root,
            cache: Arc::new(cache),
            cfg,
        })
    }

    /// The store URL snapshot URIs start with (no trailing slash).
    pub fn url(&self) -> &str {
        &self.base_url
    }

    /// The underlying object store (for tooling and tests).
    pub fn object_store(&self) -> Arc<dyn ObjectStore> {
        self.store.clone()
    }

    /// Object path of the snapshot prefix of `key`.
    pub fn prefix(&self, key: &SnapshotKey) -> ObjPath {
        self.actor_prefix(key.atespace(), key.actor())
            .join(key.id())
    }

    fn actor_prefix(&self, atespace: &str, actor: &str) -> ObjPath {
        self.base.clone().join(atespace).join(actor)
    }

    /// URI of the snapshot prefix of `key`.
    pub fn uri(&self, key: &SnapshotKey) -> String {
        format!("{}/{key}", self.base_url)
    }

    /// The key a ref names, if it belongs to this store.
    pub fn key_of(&self, r: &SnapshotRef) -> Result<SnapshotKey, SnapshotError> {
        let invalid = |reason: String| SnapshotError::InvalidRef {
            uri: r.uri.clone(),
            reason,
        };
        let rest = r
            .uri
            .strip_prefix(&self.base_url)
            .and_then(|s| s.strip_prefix('/'))
            .ok_or_else(|| invalid(format!("not under this store ({})", self.base_url)))?;
        let parts: Vec<&str> = rest.split('/').collect();
        let [a, b, id] = parts[..] else {
            return Err(invalid(
                "expected <store url>/<atespace>/<actor>/<id>".to_string(),
            ));
        };
        if parse_digest(&r.manifest_digest).is_none() {
            return Err(invalid(format!(
                "manifest digest {:?} is not sha256:<64 hex>",
                r.manifest_digest
            )));
        }
        SnapshotKey::new(a, b, id)
    }

    /// Uploads the checkpoint directory `dir` as snapshot `key` and commits it by writing
    /// the manifest last. The files stay in `dir`; they are also hard-linked into the
    /// node-local cache (so `dir`'s files must not be modified afterwards: give each
    /// checkpoint a fresh directory).
    pub async fn upload(
        &self,
        key: &SnapshotKey,
        dir: &Path,
        meta: SnapshotMeta,
    ) -> Result<SnapshotRef, SnapshotError> {
        let started = Instant::now();
        let uri = self.uri(key);
        let prefix = self.prefix(key);
        let files = {
            let (dir, max) = (dir.to_path_buf(), self.cfg.max_file_bytes);
            blocking(move || scan_checkpoint_dir(&dir, max)).await?
        };
        let manifest_path = prefix.clone().join(MANIFEST_NAME);
        match self.store.head(&manifest_path).await {
            Ok(_) => return Err(SnapshotError::AlreadyCommitted { uri }),
            Err(e) if is_not_found(&e) => {}
            Err(e) => return Err(SnapshotError::store("head", &manifest_path, e)),
        }
        let mut entries = Vec::with_capacity(files.len());
        for (name, len) in &files {
            let object = format!("{name}{OBJECT_SUFFIX}");
            let d = self
                .upload_file(dir.join(name), prefix.clone().join(object.as_str()), *len)
                .await?;
            debug!(snapshot = %key, file = %name, size = d.size, compressed = d.compressed_size, "snapshot file uploaded");
            entries.push(ManifestFile {
                name: name.clone(),
                size: d.size,
                sha256: d.sha256,
                object,
                compressed_size: d.compressed_size,
                compressed_sha256: d.compressed_sha256,
            });
        }
        let manifest = Manifest {
            kind: MANIFEST_KIND.to_string(),
            format_version: FORMAT_VERSION,
            atespace: key.atespace().to_string(),
            actor: key.actor().to_string(),
            id: key.id().to_string(),
            compression: "zstd".to_string(),
            files: entries,
            meta,
        };
        let manifest_bytes = Bytes::from(serde_json::to_vec_pretty(&manifest).map_err(|e| {
            SnapshotError::InvalidManifest {
                uri: uri.clone(),
                reason: format!("cannot encode: {e}"),
            }
        })?);
        let digest = sha256_digest(&manifest_bytes);
        // The commit point.
        self.store
            .put(&manifest_path, PutPayload::from(manifest_bytes.clone()))
            .await
            .map_err(|e| SnapshotError::store("put", &manifest_path, e))?;
        let r = SnapshotRef {
            uri,
            manifest_digest: digest,
            size: manifest.total_size(),
            compressed_size: manifest.total_compressed_size() + manifest_bytes.len() as u64,
            created_at: Some(manifest.meta.created_at),
        };
        let secs = started.elapsed().as_secs_f64();
        info!(
            atespace = key.atespace(),
            actor = key.actor(),
            snapshot = key.id(),
            files = manifest.files.len(),
            bytes = r.size,
            stored_bytes = r.compressed_size,
            seconds = secs,
            "snapshot uploaded"
        );
        if self.cache.enabled() {
            let (cache, k, dir) = (self.cache.clone(), key.clone(), dir.to_path_buf());
            let res = blocking(move || {
                cache
                    .insert(&k, &dir, &manifest, &manifest_bytes)
                    .map_err(|e| SnapshotError::io("fill snapshot cache from", &dir, e))
            })
            .await;
            if let Err(e) = res {
                warn!(snapshot = %key, error = %e, "snapshot not cached");
            }
            self.evict_quietly().await;
        }
        Ok(r)
    }

    /// The reference of snapshot `key` when it is already committed *from the checkpoint
    /// directory `dir`*: the stored manifest lists exactly `dir`'s files, with their sizes
    /// and sha256. This makes a suspend retried after its upload committed (its status write
    /// failed: apiserver or Valkey away) finish with the snapshot it uploaded, instead of
    /// failing forever on [`SnapshotError::AlreadyCommitted`]. Any other content under that id
    /// is still refused with `AlreadyCommitted`.
    pub async fn committed(
        &self,
        key: &SnapshotKey,
        dir: &Path,
    ) -> Result<SnapshotRef, SnapshotError> {
        let uri = self.uri(key);
        let (manifest_bytes, manifest) = self.read_manifest(key, None).await?;
        let same = {
            let (dir, max) = (dir.to_path_buf(), self.cfg.max_file_bytes);
            let listed: Vec<(String, u64, String)> = manifest
                .files
                .iter()
                .map(|f| (f.name.clone(), f.size, f.sha256.clone()))
                .collect();
            blocking(move || {
                let mut files = scan_checkpoint_dir(&dir, max)?;
                files.sort();
                let mut listed = listed;
                listed.sort();
                if files.len() != listed.len() {
                    return Ok(false);
                }
                for ((name, len), (lname, lsize, lsha)) in files.iter().zip(&listed) {
                    if name != lname || len != lsize {
                        return Ok(false);
                    }
                    let path = dir.join(name);
                    let (_, sha) =
                        hash_file(&path).map_err(|e| SnapshotError::io("read", &path, e))?;
                    if &sha != lsha {
                        return Ok(false);
                    }
                }
                Ok(true)
            })
            .await?
        };
        if !same {
            return Err(SnapshotError::AlreadyCommitted { uri });
        }
        Ok(SnapshotRef {
            uri,
            manifest_digest: sha256_digest(&manifest_bytes),
            size: manifest.total_size(),
            compressed_size: manifest.total_compressed_size() + manifest_bytes.len() as u64,
            created_at: Some(manifest.meta.created_at),
        })
    }

    async fn upload_file(
        &self,
        src: PathBuf,
        location: ObjPath,
        len: u64,
    ) -> Result<codec::Digests, SnapshotError> {
        let (tx, mut rx) = mpsc::channel::<Bytes>(UPLOAD_CHANNEL_CHUNKS);
        let level = self.cfg.zstd_level;
        let producer =
            tokio::task::spawn_blocking(move || codec::compress_file(&src, len, level, tx));
        let part_size = self.cfg.part_size;
        // Small objects go in one PUT; once the compressed stream reaches a part, multipart.
        let mut head: Vec<Bytes> = Vec::new();
        let mut head_len = 0usize;
        let mut multipart: Option<Multipart> = None;
        while let Some(chunk) = rx.recv().await {
            if let Some(mp) = multipart.as_mut() {
                mp.put(chunk)
                    .await
                    .map_err(|e| SnapshotError::store("upload part of", &location, e))?;
                continue;
            }
            head_len += chunk.len();
            head.push(chunk);
            if head_len >= part_size {
                let upload =
                    self.store.put_multipart(&location).await.map_err(|e| {
                        SnapshotError::store("start multipart upload of", &location, e)
                    })?;
                let mut mp = Multipart {
                    w: Some(WriteMultipart::new_with_chunk_size(upload, part_size)),
                    concurrency: self.cfg.upload_concurrency,
                };
                for c in head.drain(..) {
                    mp.put(c)
                        .await
                        .map_err(|e| SnapshotError::store("upload part of", &location, e))?;
                }
                multipart = Some(mp);
            }
        }
        // The compressor is done (or failed): only a complete stream becomes an object.
        let digests = producer.await.map_err(SnapshotError::Task)??;
        match multipart {
            Some(mp) => mp
                .finish()
                .await
                .map_err(|e| SnapshotError::store("complete multipart upload of", &location, e))?,
            None => {
                self.store
                    .put(&location, head.into_iter().collect::<PutPayload>())
                    .await
                    .map_err(|e| SnapshotError::store("put", &location, e))?;
            }
        }
        Ok(digests)
    }

    /// Places the files of snapshot `r` in the new directory `dest` (which must not exist or
    /// be empty), from the node-local cache when it holds them intact, else from the object
    /// store, verified before `dest` appears.
    pub async fn fetch(&self, r: &SnapshotRef, dest: &Path) -> Result<FetchOutcome, SnapshotError> {
        let started = Instant::now();
        let key = self.key_of(r)?;
        {
            let dest = dest.to_path_buf();
            blocking(move || check_dest(&dest)).await?;
        }
        if self.cache.enabled() {
            match self.fetch_cached(&key, r, dest).await {
                Ok(Some(outcome)) => {
                    info!(
                        atespace = key.atespace(),
                        actor = key.actor(),
                        snapshot = key.id(),
                        bytes = outcome.bytes,
                        seconds = started.elapsed().as_secs_f64(),
                        "snapshot fetched from node cache"
                    );
                    return Ok(outcome);
                }
                Ok(None) => {}
                Err(e) => {
                    warn!(snapshot = %key, error = %e, "snapshot cache unusable, downloading")
                }
            }
        }
        let (manifest_bytes, manifest) = self.read_manifest(&key, Some(&r.manifest_digest)).await?;
        let uri = self.uri(&key);
        let prefix = self.prefix(&key);
        let tmp = {
            let dest = dest.to_path_buf();
            blocking(move || {
                let parent = cache::parent_of(&dest)
                    .map_err(|e| SnapshotError::io("create parent of", &dest, e))?;
                tempfile::Builder::new()
                    .prefix(".snapshot-fetch-")
                    .tempdir_in(parent)
                    .map_err(|e| SnapshotError::io("create temporary directory in", parent, e))
            })
            .await?
        };
        let mut downloaded = 0;
        for f in &manifest.files {
            let exp = Expected {
                object: format!("{uri}/{}", f.object),
                size: f.size,
                sha256: f.sha256.clone(),
                compressed_size: f.compressed_size,
                compressed_sha256: f.compressed_sha256.clone(),
                cap: f.size.min(self.cfg.max_file_bytes),
            };
            self.download_file(
                prefix.clone().join(f.object.as_str()),
                tmp.path().join(&f.name),
                exp,
            )
            .await?;
            downloaded += f.compressed_size;
        }
        {
            let dest = dest.to_path_buf();
            blocking(move || {
                cache::publish_dir(tmp, &dest)
                    .map_err(|e| SnapshotError::io("rename into", &dest, e))
            })
            .await?;
        }
        let outcome = FetchOutcome {
            source: FetchSource::ObjectStore,
            bytes: manifest.total_size(),
            downloaded_bytes: downloaded + manifest_bytes.len() as u64,
            files: manifest.files.len(),
            meta: manifest.meta.clone(),
        };
        info!(
            atespace = key.atespace(),
            actor = key.actor(),
            snapshot = key.id(),
            bytes = outcome.bytes,
            downloaded_bytes = outcome.downloaded_bytes,
            seconds = started.elapsed().as_secs_f64(),
            "snapshot fetched from object store"
        );
        if self.cache.enabled() {
            let (cache, k, dir) = (self.cache.clone(), key.clone(), dest.to_path_buf());
            let res = blocking(move || {
                cache
                    .insert(&k, &dir, &manifest, &manifest_bytes)
                    .map_err(|e| SnapshotError::io("fill snapshot cache from", &dir, e))
            })
            .await;
            if let Err(e) = res {
                warn!(snapshot = %key, error = %e, "snapshot not cached");
            }
            self.evict_quietly().await;
        }
        Ok(outcome)
    }

    async fn fetch_cached(
        &self,
        key: &SnapshotKey,
        r: &SnapshotRef,
        dest: &Path,
    ) -> Result<Option<FetchOutcome>, SnapshotError> {
        let (cache, key, digest, dest, max) = (
            self.cache.clone(),
            key.clone(),
            r.manifest_digest.clone(),
            dest.to_path_buf(),
            self.cfg.max_file_bytes,
        );
        blocking(move || {
            let hit = cache
                .lookup(&key, &digest, max)
                .map_err(|e| SnapshotError::io("read snapshot cache for", dest.clone(), e))?;
            let Some(hit) = hit else { return Ok(None) };
            let bytes = cache
                .materialize(&hit, &dest)
                .map_err(|e| SnapshotError::io("place cached snapshot in", dest.clone(), e))?;
            Ok(Some(FetchOutcome {
                source: FetchSource::Cache,
                bytes,
                downloaded_bytes: 0,
                files: hit.manifest.files.len(),
                meta: hit.manifest.meta,
            }))
        })
        .await
    }

    async fn download_file(
        &self,
        location: ObjPath,
        out: PathBuf,
        exp: Expected,
    ) -> Result<(), SnapshotError> {
        let get = match self.store.get(&location).await {
            Ok(g) => g,
            Err(e) if is_not_found(&e) => {
                return Err(SnapshotError::MissingObject { object: exp.object });
            }
            Err(e) => return Err(SnapshotError::store("get", &location, e)),
        };
        if get.meta.size != exp.compressed_size {
            return Err(SnapshotError::Corrupt {
                object: exp.object,
                what: "compressed size",
                expected: exp.compressed_size.to_string(),
                actual: get.meta.size.to_string(),
            });
        }
        match get.payload {
            GetResultPayload::File(file, _) => {
                blocking(move || codec::decompress_to_file(Source::File(file), &out, &exp)).await
            }
            GetResultPayload::Stream(mut stream) => {
                let (tx, rx) = mpsc::channel(FETCH_CHANNEL_CHUNKS);
                let worker = tokio::task::spawn_blocking(move || {
                    codec::decompress_to_file(Source::Channel(rx), &out, &exp)
                });
                let mut failed = None;
                while let Some(item) = stream.next().await {
                    match item {
                        // A closed channel means the decompressor stopped: its error says why.
                        Ok(chunk) => {
                            if tx.send(chunk).await.is_err() {
                                break;
                            }
                        }
                        Err(e) => {
                            failed = Some(SnapshotError::store("get", &location, e));
                            break;
                        }
                    }
                }
                drop(tx);
                let res = worker.await.map_err(SnapshotError::Task)?;
                match failed {
                    Some(e) => Err(e),
                    None => res,
                }
            }
        }
    }

    /// Reads, checks and parses the manifest of `key`; with `digest`, refuses any other.
    async fn read_manifest(
        &self,
        key: &SnapshotKey,
        digest: Option<&str>,
    ) -> Result<(Bytes, Manifest), SnapshotError> {
        let uri = self.uri(key);
        let path = self.prefix(key).join(MANIFEST_NAME);
        let get = match self.store.get(&path).await {
            Ok(g) => g,
            Err(e) if is_not_found(&e) => return Err(SnapshotError::NotCommitted { uri }),
            Err(e) => return Err(SnapshotError::store("get", &path, e)),
        };
        if get.meta.size > MAX_MANIFEST_BYTES {
            return Err(SnapshotError::InvalidManifest {
                uri,
                reason: format!(
                    "{} bytes is more than the {MAX_MANIFEST_BYTES}-byte limit",
                    get.meta.size
                ),
            });
        }
        let bytes = get
            .bytes()
            .await
            .map_err(|e| SnapshotError::store("get", &path, e))?;
        let actual = sha256_digest(&bytes);
        if let Some(expected) = digest
            && actual != expected
        {
            return Err(SnapshotError::ManifestDigestMismatch {
                uri,
                expected: expected.to_string(),
                actual,
            });
        }
        let manifest = Manifest::parse(&bytes, &uri, key, self.cfg.max_file_bytes)?;
        Ok((bytes, manifest))
    }

    /// Deletes snapshot `r`: manifest first (so it is never seen half-deleted as committed),
    /// then its objects and its cache entry. Deleting a missing snapshot succeeds.
    pub async fn delete(&self, r: &SnapshotRef) -> Result<(), SnapshotError> {
        let key = self.key_of(r)?;
        self.delete_key(&key).await
    }

    async fn delete_key(&self, key: &SnapshotKey) -> Result<(), SnapshotError> {
        let manifest_path = self.prefix(key).join(MANIFEST_NAME);
        match self.store.delete(&manifest_path).await {
            Ok(()) => {}
            Err(e) if is_not_found(&e) => {}
            Err(e) => return Err(SnapshotError::store("delete", &manifest_path, e)),
        }
        let removed = self.purge_prefix(key).await?;
        let (cache, k) = (self.cache.clone(), key.clone());
        blocking(move || {
            cache
                .remove(&k)
                .map_err(|e| SnapshotError::io("remove cache entry of", k.to_string(), e))
        })
        .await?;
        info!(
            atespace = key.atespace(),
            actor = key.actor(),
            snapshot = key.id(),
            objects = removed,
            "snapshot deleted"
        );
        Ok(())
    }

    /// Deletes every object under the snapshot prefix of `key` (and, for `file://`, the
    /// directory with any staging files of interrupted uploads). Returns objects deleted.
    async fn purge_prefix(&self, key: &SnapshotKey) -> Result<usize, SnapshotError> {
        let prefix = self.prefix(key);
        let locations = self
            .store
            .list(Some(&prefix))
            .map_ok(|m: ObjectMeta| m.location)
            .boxed();
        let mut deleted = self.store.delete_stream(locations);
        let mut n = 0;
        while let Some(res) = deleted.next().await {
            match res {
                Ok(_) => n += 1,
                Err(e) if is_not_found(&e) => {}
                Err(e) => return Err(SnapshotError::store("delete under", &prefix, e)),
            }
        }
        if let Some(root) = &self.local_root {
            let actor_dir = root.join(key.atespace()).join(key.actor());
            let dir = actor_dir.join(key.id());
            blocking(move || {
                match std::fs::remove_dir_all(&dir) {
                    Ok(()) => {}
                    Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                    Err(e) => return Err(SnapshotError::io("remove", &dir, e)),
                }
                // Drop the actor and atespace directories once empty.
                if std::fs::remove_dir(&actor_dir).is_ok()
                    && let Some(p) = actor_dir.parent()
                {
                    let _ = std::fs::remove_dir(p);
                }
                Ok(())
            })
            .await?;
        }
        Ok(n)
    }

    /// The snapshots of an actor, oldest first (committed ones by commit time).
    pub async fn list(
        &self,
        atespace: &str,
        actor: &str,
    ) -> Result<Vec<SnapshotEntry>, SnapshotError> {
        validate_label("atespace", atespace)?;
        validate_label("actor", actor)?;
        let actor_prefix = self.actor_prefix(atespace, actor);
        let objects: Vec<ObjectMeta> = self
            .store
            .list(Some(&actor_prefix))
            .try_collect()
            .await
            .map_err(|e| SnapshotError::store("list", &actor_prefix, e))?;
        #[derive(Default)]
        struct Group {
            objects: usize,
            bytes: u64,
            last_modified: Option<jiff::Timestamp>,
            manifest: Option<jiff::Timestamp>,
        }
        let mut groups: BTreeMap<String, Group> = BTreeMap::new();
        for o in &objects {
            let Some(parts) = o.location.prefix_match(&actor_prefix) else {
                continue;
            };
            let parts: Vec<_> = parts.collect();
            let [id, file] = &parts[..] else { continue };
            let g = groups.entry(id.as_ref().to_string()).or_default();
            let t = timestamp(o);
            g.objects += 1;
            g.bytes += o.size;
            g.last_modified = g.last_modified.max(Some(t));
            if file.as_ref() == MANIFEST_NAME {
                g.manifest = Some(t);
            }
        }
        // file:// stores: directories holding only staging files of killed uploads.
        if let Some(root) = &self.local_root {
            let dir = root.join(atespace).join(actor);
            let on_disk = blocking(move || local_snapshot_dirs(&dir)).await?;
            for (id, modified) in on_disk {
                let g = groups.entry(id).or_default();
                g.last_modified = g.last_modified.max(Some(modified));
            }
        }
        let mut out = Vec::with_capacity(groups.len());
        for (id, g) in groups {
            let Ok(key) = SnapshotKey::new(atespace, actor, id.as_str()) else {
                continue; // not ours
            };
            let state = if g.manifest.is_some() {
                match self.read_manifest(&key, None).await {
                    Ok((bytes, m)) => SnapshotState::Committed(SnapshotRef {
                        uri: self.uri(&key),
                        manifest_digest: sha256_digest(&bytes),
                        size: m.total_size(),
                        compressed_size: m.total_compressed_size() + bytes.len() as u64,
                        created_at: Some(m.meta.created_at),
                    }),
                    Err(e) if e.is_not_committed() => SnapshotState::Uncommitted,
                    Err(e)
                        if e.is_integrity() || matches!(e, SnapshotError::FileTooLarge { .. }) =>
                    {
                        SnapshotState::Unreadable {
                            reason: e.to_string(),
                        }
                    }
                    Err(e) => return Err(e),
                }
            } else {
                SnapshotState::Uncommitted
            };
            out.push(SnapshotEntry {
                key,
                state,
                committed_at: g.manifest,
                last_modified: g.last_modified.unwrap_or(jiff::Timestamp::UNIX_EPOCH),
                objects: g.objects,
                stored_bytes: g.bytes,
            });
        }
        out.sort_by(|a, b| {
            let ta = a.committed_at.unwrap_or(a.last_modified);
            let tb = b.committed_at.unwrap_or(b.last_modified);
            ta.cmp(&tb).then_with(|| a.key.cmp(&b.key))
        });
        Ok(out)
    }

    /// GC for one actor: keeps the `keep` most recently committed snapshots, deletes older
    /// committed ones, and removes uncommitted leftovers older than `gc_grace`. Callers must
    /// keep the snapshot recorded in the actor's status (it is normally the newest).
    pub async fn retain_latest(
        &self,
        atespace: &str,
        actor: &str,
        keep: usize,
    ) -> Result<GcReport, SnapshotError> {
        let entries = self.list(atespace, actor).await?;
        let mut report = GcReport::default();
        let committed: Vec<&SnapshotEntry> = entries
            .iter()
            .filter(|e| matches!(e.state, SnapshotState::Committed(_)))
            .collect();
        let cut = committed.len().saturating_sub(keep);
        for e in &committed[..cut] {
            self.delete_key(&e.key).await?;
            report.deleted.push(e.key.id().to_string());
        }
        report.kept = committed[cut..]
            .iter()
            .map(|e| e.key.id().to_string())
            .collect();
        let grace =
            jiff::SignedDuration::try_from(self.cfg.gc_grace).unwrap_or(jiff::SignedDuration::MAX);
        let now = jiff::Timestamp::now();
        for e in &entries {
            match &e.state {
                SnapshotState::Committed(_) => {}
                SnapshotState::Unreadable { .. } => report.unreadable.push(e.key.id().to_string()),
                SnapshotState::Uncommitted => {
                    if now.duration_since(e.last_modified) >= grace {
                        self.purge_prefix(&e.key).await?;
                        report.garbage.push(e.key.id().to_string());
                    } else {
                        report.in_progress.push(e.key.id().to_string());
                    }
                }
            }
        }
        info!(
            atespace,
            actor,
            kept = report.kept.len(),
            deleted = report.deleted.len(),
            garbage = report.garbage.len(),
            in_progress = report.in_progress.len(),
            "snapshot GC done"
        );
        Ok(report)
    }

    /// Deletes every snapshot of an actor, committed or not, regardless of the grace period
    /// (for a deleted actor). Returns the ids removed.
    pub async fn purge_actor(
        &self,
        atespace: &str,
        actor: &str,
    ) -> Result<Vec<String>, SnapshotError> {
        let entries = self.list(atespace, actor).await?;
        let mut ids = Vec::with_capacity(entries.len());
        for e in entries {
            self.delete_key(&e.key).await?;
            ids.push(e.key.id().to_string());
        }
        Ok(ids)
    }

    /// Every snapshot in the store (`scope`: only those of one `(atespace, actor)`), from one
    /// listing, sorted by key. Paths that are not `<atespace>/<actor>/<id>/<file>` with valid
    /// labels are not snapshots and are skipped.
    pub async fn inventory(
        &self,
        scope: Option<(&str, &str)>,
    ) -> Result<Vec<StoredSnapshot>, SnapshotError> {
        let prefix = match scope {
            Some((a, b)) => {
                validate_label("atespace", a)?;
                validate_label("actor", b)?;
                self.actor_prefix(a, b)
            }
            None => self.base.clone(),
        };
        #[derive(Default)]
        struct Group {
            committed: bool,
            last_modified: Option<jiff::Timestamp>,
            objects: usize,
            bytes: u64,
        }
        let mut groups: BTreeMap<(String, String, String), Group> = BTreeMap::new();
        let mut listing = self.store.list(Some(&prefix));
        while let Some(o) = listing.next().await {
            let o = o.map_err(|e| SnapshotError::store("list", &prefix, e))?;
            let Some(parts) = o.location.prefix_match(&self.base) else {
                continue;
            };
            let parts: Vec<_> = parts.map(|p| p.as_ref().to_string()).collect();
            let [a, b, id, file] = &parts[..] else {
                continue;
            };
            let g = groups
                .entry((a.clone(), b.clone(), id.clone()))
                .or_default();
            g.objects += 1;
            g.bytes += o.size;
            g.last_modified = g.last_modified.max(Some(timestamp(&o)));
            g.committed |= file == MANIFEST_NAME;
        }
        drop(listing);
        // file:// stores: directories holding only staging files of killed uploads.
        if let Some(root) = &self.local_root {
            let (root, scope) = (
                root.clone(),
                scope.map(|(a, b)| (a.to_string(), b.to_string())),
            );
            let dirs = blocking(move || local_snapshot_tree(&root, scope)).await?;
            for (a, b, id, modified) in dirs {
                let g = groups.entry((a, b, id)).or_default();
                g.last_modified = g.last_modified.max(Some(modified));
            }
        }
        Ok(groups
            .into_iter()
            .filter_map(|((a, b, id), g)| {
                Some(StoredSnapshot {
                    key: SnapshotKey::new(a, b, id).ok()?,
                    committed: g.committed,
                    last_modified: g.last_modified.unwrap_or(jiff::Timestamp::UNIX_EPOCH),
                    objects: g.objects,
                    stored_bytes: g.bytes,
                })
            })
            .collect())
    }

    /// Deletes snapshot `key`, committed or not (manifest first), and its cache entry.
    /// Deleting a missing snapshot succeeds.
    pub async fn delete_snapshot(&self, key: &SnapshotKey) -> Result<(), SnapshotError> {
        self.delete_key(key).await
    }

    /// Drops node-local cache entries whose snapshot is no longer committed in the store
    /// (deleted by garbage collection: its actor is gone, or it was superseded), unless
    /// used within `grace` (an entry is added right after its manifest is written, so a
    /// listing taken just before may miss it). One store listing per cached actor.
    pub async fn prune_cache(
        &self,
        grace: std::time::Duration,
    ) -> Result<CachePruned, SnapshotError> {
        let mut pruned = CachePruned::default();
        if !self.cache.enabled() {
            return Ok(pruned);
        }
        let cache = self.cache.clone();
        let dir = self.cfg.cache_dir.clone();
        let entries = blocking(move || {
            cache
                .keys()
                .map_err(|e| SnapshotError::io("list snapshot cache", dir, e))
        })
        .await?;
        let mut by_actor: BTreeMap<(String, String), Vec<_>> = BTreeMap::new();
        for e in entries {
            by_actor
                .entry((e.key.atespace().to_string(), e.key.actor().to_string()))
                .or_default()
                .push(e);
        }
        let now = std::time::SystemTime::now();
        for ((a, b), entries) in by_actor {
            let stored = self.inventory(Some((&a, &b))).await?;
            for e in entries {
                let committed = stored.iter().any(|s| s.key == e.key && s.committed);
                let young = now.duration_since(e.used).map_or(true, |age| age < grace);
                if committed || young {
                    continue;
                }
                let (cache, k) = (self.cache.clone(), e.key.clone());
                blocking(move || {
                    cache.remove(&k).map_err(|err| {
                        SnapshotError::io("remove cache entry of", k.to_string(), err)
                    })
                })
                .await?;
                info!(atespace = %a, actor = %b, snapshot = e.key.id(), bytes = e.bytes,
                    "snapshot cache entry dropped: the snapshot is no longer in the store");
                pruned.entries += 1;
                pruned.bytes += e.bytes;
            }
        }
        Ok(pruned)
    }

    /// Evicts least recently used cache entries beyond the budget; returns (entries, bytes).
    pub async fn evict_cache(&self) -> Result<(usize, u64), SnapshotError> {
        let cache = self.cache.clone();
        let dir = self.cfg.cache_dir.clone();
        blocking(move || {
            cache
                .evict()
                .map_err(|e| SnapshotError::io("evict snapshot cache", dir, e))
        })
        .await
    }

    /// Bytes held by the node-local cache.
    pub async fn cache_bytes(&self) -> Result<u64, SnapshotError> {
        let cache = self.cache.clone();
        let dir = self.cfg.cache_dir.clone();
        blocking(move || {
            cache
                .total_bytes()
                .map_err(|e| SnapshotError::io("measure snapshot cache", dir, e))
        })
        .await
    }

    async fn evict_quietly(&self) {
        match self.evict_cache().await {
            Ok((0, _)) => {}
            Ok((n, bytes)) => info!(entries = n, bytes, "snapshot cache evicted"),
            Err(e) => warn!(error = %e, "snapshot cache eviction failed"),
        }
    }
}

/// A multipart upload that is aborted if dropped before `finish` (cancellation, errors).
struct Multipart {
    w: Option<WriteMultipart>,
    concurrency: usize,
}

impl Multipart {
    async fn put(&mut self, chunk: Bytes) -> Result<(), object_store::Error> {
        if let Some(w) = self.w.as_mut() {
            w.wait_for_capacity(self.concurrency).await?;
            w.put(chunk);
        }
        Ok(())
    }

    async fn finish(mut self) -> Result<(), object_store::Error> {
        if let Some(w) = self.w.take() {
            w.finish().await?;
        }
        Ok(())
    }
}

impl Drop for Multipart {
    fn drop(&mut self) {
        if let Some(w) = self.w.take()
            && let Ok(rt) = tokio::runtime::Handle::try_current()
        {
            rt.spawn(async move {
                if let Err(e) = w.abort().await {
                    debug!(error = %e, "aborting multipart upload failed");
                }
            });
        }
    }
}

/// The regular files of a checkpoint directory, sorted by name, with their sizes.
fn scan_checkpoint_dir(
    dir: &Path,
    max_file_bytes: u64,
) -> Result<Vec<(String, u64)>, SnapshotError> {
    let invalid = |reason: String| SnapshotError::InvalidCheckpointDir {
        dir: dir.to_path_buf(),
        reason,
    };
    let rd = std::fs::read_dir(dir).map_err(|e| SnapshotError::io("read directory", dir, e))?;
    let mut files = Vec::new();
    for entry in rd {
        let entry = entry.map_err(|e| SnapshotError::io("read directory", dir, e))?;
        let name = entry
            .file_name()
            .into_string()
            .map_err(|n| invalid(format!("file name {n:?} is not UTF-8")))?;
        let md = entry
            .metadata()
            .map_err(|e| SnapshotError::io("stat", entry.path(), e))?;
        if !md.is_file() {
            let kind = if md.is_dir() {
                "a directory"
            } else if md.is_symlink() {
                "a symbolic link"
            } else {
                "not a regular file"
            };
            return Err(invalid(format!(
                "{name:?} is {kind}; a checkpoint directory holds regular files only"
            )));
        }
        if !is_valid_file_name(&name) {
            return Err(invalid(format!(
                "file name {name:?} is not allowed (1-255 characters of [A-Za-z0-9._-], not starting with '.')"
            )));
        }
        if md.len() > max_file_bytes {
            return Err(SnapshotError::FileTooLarge {
                name: dir.join(&name).display().to_string(),
                size: md.len(),
                limit: max_file_bytes,
            });
        }
        files.push((name, md.len()));
    }
    if files.is_empty() {
        return Err(invalid("contains no files".to_string()));
    }
    if files.len() > MAX_FILES {
        return Err(invalid(format!(
            "{} files; a snapshot has at most {MAX_FILES}",
            files.len()
        )));
    }
    files.sort();
    Ok(files)
}

/// `dest` must not exist or be an empty directory.
fn check_dest(dest: &Path) -> Result<(), SnapshotError> {
    match std::fs::read_dir(dest) {
        Ok(mut rd) => {
            if rd.next().is_some() {
                Err(SnapshotError::DestinationNotEmpty {
                    path: dest.to_path_buf(),
                })
            } else {
                Ok(())
            }
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::NotADirectory => {
            Err(SnapshotError::DestinationNotEmpty {
                path: dest.to_path_buf(),
            })
        }
        Err(e) => Err(SnapshotError::io("read directory", dest, e)),
    }
}

/// Snapshot directories `<atespace>/<actor>/<id>` of a `file://` store (`scope`: of one
/// actor) with their newest mtime, including staging-only ones `object_store` does not list.
fn local_snapshot_tree(
    root: &Path,
    scope: Option<(String, String)>,
) -> Result<Vec<(String, String, String, jiff::Timestamp)>, SnapshotError> {
    let names = |dir: &Path| -> Vec<String> {
        std::fs::read_dir(dir)
            .map(|rd| {
                rd.flatten()
                    .filter(|e| e.file_type().is_ok_and(|t| t.is_dir()))
                    .filter_map(|e| e.file_name().into_string().ok())
                    .collect()
            })
            .unwrap_or_default()
    };
    let pairs: Vec<(String, String)> = match scope {
        Some(p) => vec![p],
        None => names(root)
            .into_iter()
            .flat_map(|a| {
                names(&root.join(&a))
                    .into_iter()
                    .map(move |b| (a.clone(), b))
            })
            .collect(),
    };
    let mut out = Vec::new();
    for (a, b) in pairs {
        for (id, t) in local_snapshot_dirs(&root.join(&a).join(&b))? {
            out.push((a.clone(), b.clone(), id, t));
        }
    }
    Ok(out)
}

/// Snapshot directories of a `file://` actor directory with their newest mtime (including
/// staging files `object_store` does not list).
fn local_snapshot_dirs(actor_dir: &Path) -> Result<Vec<(String, jiff::Timestamp)>, SnapshotError> {
    let rd = match std::fs::read_dir(actor_dir) {
        Ok(rd) => rd,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(SnapshotError::io("read directory", actor_dir, e)),
    };
    let mut out = Vec::new();
    for entry in rd.flatten() {
        let Ok(id) = entry.file_name().into_string() else {
            continue;
        };
        if !entry.file_type().is_ok_and(|t| t.is_dir()) {
            continue;
        }
        let mut newest = entry.metadata().and_then(|m| m.modified()).ok();
        if let Ok(files) = std::fs::read_dir(entry.path()) {
            for f in files.flatten() {
                let m = f.metadata().and_then(|m| m.modified()).ok();
                newest = newest.max(m);
            }
        }
        let ts = newest
            .and_then(|t| jiff::Timestamp::try_from(t).ok())
            .unwrap_or(jiff::Timestamp::UNIX_EPOCH);
        out.push((id, ts));
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The node agent spawns these futures on a multi-threaded runtime.
    #[test]
    fn store_and_futures_are_send() {
        fn is_send<T: Send>(_: &T) {}
        fn is_sync<T: Send + Sync>() {}
        is_sync::<SnapshotStore>();
        let dir = tempfile::tempdir().unwrap();
        let s = SnapshotStore::new(SnapshotConfig::new("memory:///", dir.path())).unwrap();
        let k = SnapshotKey::new("a", "b", "c").unwrap();
        let r = SnapshotRef {
            uri: s.uri(&k),
            manifest_digest: sha256_digest(b""),
            size: 0,
            compressed_size: 0,
            created_at: None,
        };
        is_send(&s.upload(&k, dir.path(), SnapshotMeta::new("v", "systrap")));
        is_send(&s.fetch(&r, dir.path()));
        is_send(&s.delete(&r));
        is_send(&s.list("a", "b"));
        is_send(&s.retain_latest("a", "b", 1));
        is_send(&s.purge_actor("a", "b"));
    }

    #[tokio::test]
    async fn inventory_lists_every_snapshot_and_caches_follow_deletions() {
        use std::time::Duration;
        let work = tempfile::tempdir().unwrap();
        let url = format!("file://{}", work.path().join("store").display());
        let node =
            SnapshotStore::new(SnapshotConfig::new(&url, work.path().join("cache"))).unwrap();
        // The operator's view of the same store: no cache.
        let mut cfg = SnapshotConfig::new(&url, work.path().join("no-cache"));
        cfg.cache_max_bytes = 0;
        let gc = SnapshotStore::new(cfg).unwrap();
        assert!(
            !work.path().join("no-cache").exists(),
            "a disabled cache makes no directory"
        );
        let at = jiff::Timestamp::now();
        let mut keys = Vec::new();
        for (ns, actor, uid) in [("a", "x", "u1"), ("a", "y", "u2"), ("b", "x", "u3")] {
            let dir = work.path().join(format!("ckpt-{ns}-{actor}"));
            std::fs::create_dir_all(&dir).unwrap();
            std::fs::write(dir.join("pages.img"), b"memory").unwrap();
            let k = SnapshotKey::for_owner(ns, actor, uid, at).unwrap();
            node.upload(&k, &dir, SnapshotMeta::new("v", "systrap"))
                .await
                .unwrap();
            keys.push(k);
        }
        // An upload killed before its manifest: a directory with a staging file only.
        let staging = work.path().join("store/b/x/s1_u9");
        std::fs::create_dir_all(&staging).unwrap();
        std::fs::write(staging.join("#pages.img.zst.1"), b"part").unwrap();
        let all = gc.inventory(None).await.unwrap();
        let listed: Vec<(String, bool)> = all
            .iter()
            .map(|s| (s.key.to_string(), s.committed))
            .collect();
        assert_eq!(
            listed,
            vec![
                (keys[0].to_string(), true),
                (keys[1].to_string(), true),
                (keys[2].to_string(), true),
                ("b/x/s1_u9".to_string(), false),
            ]
        );
        assert_eq!(all[0].key.owner_uid(), Some("u1"));
        let one = gc.inventory(Some(("a", "y"))).await.unwrap();
        assert_eq!(one.len(), 1);
        assert_eq!(one[0].key, keys[1]);
        // The GC deletes two snapshots; the node's cache drops their entries, keeps the other.
        gc.delete_snapshot(&keys[0]).await.unwrap();
        gc.delete_snapshot(&all[3].key).await.unwrap();
        assert!(!staging.exists());
        let pruned = node.prune_cache(Duration::from_secs(3600)).await.unwrap();
        assert_eq!(pruned.entries, 0, "entries used within the grace are kept");
        let pruned = node.prune_cache(Duration::ZERO).await.unwrap();
        assert_eq!(pruned.entries, 1);
        assert!(!work.path().join("cache/entries/a/x").exists());
        assert!(work.path().join("cache/entries/a/y").exists());
        let left: Vec<SnapshotKey> = gc
            .inventory(None)
            .await
            .unwrap()
            .into_iter()
            .map(|s| s.key)
            .collect();
        assert_eq!(left, vec![keys[1].clone(), keys[2].clone()]);
    }

    /// The in-memory store (for other components' tests) behaves like the real ones.
    #[tokio::test]
    async fn memory_store_round_trip() {
        let work = tempfile::tempdir().unwrap();
        let s = SnapshotStore::new(SnapshotConfig::new(
            "memory:///snaps",
            work.path().join("cache"),
        ))
        .unwrap();
        let dir = work.path().join("ckpt");
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join("checkpoint.img"), b"state").unwrap();
        let k = SnapshotKey::generate("team-a", "bot").unwrap();
        let r = s
            .upload(&k, &dir, SnapshotMeta::new("v", "systrap"))
            .await
            .unwrap();
        assert_eq!(r.uri, format!("memory:///snaps/{k}"));
        assert_eq!(s.key_of(&r).unwrap(), k);
        // Drop the cache to force a download.
        std::fs::remove_dir_all(work.path().join("cache/entries/team-a")).unwrap();
        let dest = work.path().join("out");
        let out = s.fetch(&r, &dest).await.unwrap();
        assert_eq!(out.source, FetchSource::ObjectStore);
        assert_eq!(
            std::fs::read(dest.join("checkpoint.img")).unwrap(),
            b"state"
        );
    }
}
