//! OCI images on a node: an on-disk, content-addressed image cache that turns an image reference
//! into an unpacked root filesystem, and the building and pushing of small images without Docker
//! (used for the `counter` demo by the `substrate-image` binary).
//!
//! # Disk format of the cache
//!
//! Everything lives under [`ImageConfig::cache_dir`]:
//!
//! ```text
//! <cache>/blobs/sha256/<hex>        a blob (layer or image config) whose sha256 is <hex>;
//!                                   written to tmp/ while its digest is verified, then renamed
//! <cache>/rootfs/<hex>/             one unpacked image, keyed by the manifest digest the
//!                                   reference resolved to (for a multi-platform index: the
//!                                   index digest); built in tmp/ and renamed in one step
//! <cache>/rootfs/<hex>/rootfs/      the root filesystem: what `Rootfs::path` points at
//! <cache>/rootfs/<hex>/image.json   `{"manifest_digest", "platform_manifest_digest",
//!                                   "layers": [...], "config": ImageRuntimeConfig}`, written
//!                                   (and fsynced) last inside the temporary directory
//! <cache>/tags/<sha256(ref)>.json   `{"reference", "digest"}`: last digest a tag resolved to
//! <cache>/tmp/<pid>.<n>/            work in progress of one `ImageCache` instance; removed
//!                                   on drop, or by `ImageCache::new` once <pid> is gone
//! ```
//!
//! A directory under `rootfs/` either exists complete or not at all (rename is atomic), so its
//! presence is the cache hit. Unpacked rootfs trees are shared by every sandbox of the image and
//! must be treated as read-only (runsc's `--overlay2=root:memory` keeps writes out of them).
//! Files are not fsynced one by one: after a power loss an entry may need to be deleted by hand.
//!
//! # Resolution
//!
//! - `repo@sha256:<hex>` whose rootfs is cached: answered from disk, no network request, no untar.
//! - `repo:tag`: one manifest `HEAD` to the registry resolves the digest every time (tags move).
//!   When the registry cannot be reached at all (connection refused, timeout, DNS) and the tag was
//!   resolved before by this cache and that rootfs is still cached, the recorded digest is used
//!   and a warning logged. Any answer from the registry (401, 404, ...) is authoritative and
//!   never falls back.
//! - Otherwise the manifest is fetched (an index is narrowed to linux on this architecture), the
//!   config and layers are downloaded into the blob store (skipping blobs already there; every
//!   blob is size-capped and its sha256 verified while streaming), and the layers are applied in
//!   order (uncompressed, gzip or zstd tar layers, OCI or Docker media types) into a fresh
//!   directory ([`unpack`]: whiteouts, opaque directories, symlinks, hard
//!   links, ownership and modes; paths can never leave the root), checking each layer's
//!   uncompressed digest against the config's `rootfs.diff_ids`.
//!
//! Concurrent [`ImageCache::ensure_rootfs`] calls for the same image (or blob) wait for one
//! another, so the work happens once.

use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::io::{self, Read, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, Weak};

use futures::{StreamExt, TryStreamExt};
use oci_client::Reference;
use oci_client::client::{ClientConfig, ClientProtocol};
use oci_client::errors::{DigestError, OciDistributionError, OciErrorCode};
use oci_client::secrets::RegistryAuth;
use serde::{Deserialize, Serialize};
use sha2::{Digest as _, Sha256};
use tokio::io::AsyncWriteExt;
use tracing::{debug, info, warn};

pub mod build;
pub mod testing;
pub mod unpack;

pub use build::{BuildError, BuiltImage, FileSpec, ImageSpec, PushError, PushOptions, push_image};

/// Manifest media types the cache accepts.
const MANIFEST_MEDIA_TYPES: &[&str] = &[
    oci_client::manifest::OCI_IMAGE_MEDIA_TYPE,
    oci_client::manifest::IMAGE_MANIFEST_MEDIA_TYPE,
    oci_client::manifest::OCI_IMAGE_INDEX_MEDIA_TYPE,
    oci_client::manifest::IMAGE_MANIFEST_LIST_MEDIA_TYPE,
];

/// Credentials for HTTP basic authentication against a registry (also used for the token flow
/// of registries that answer with a bearer challenge).
#[derive(Clone, PartialEq, Eq)]
pub struct BasicAuth {
    pub username: String,
    pub password: String,
}

impl BasicAuth {
    pub fn new(username: impl Into<String>, password: impl Into<String>) -> Self {
        BasicAuth {
            username: username.into(),
            password: password.into(),
        }
    }
}

/// Why a registry credentials file could not be used.
#[derive(Debug, thiserror::Error)]
pub enum CredentialsError {
    #[error("registry credentials: {0} is not a Docker config.json / .dockerconfigjson: {1}")]
    Json(String, serde_json::Error),
    #[error("registry credentials: {0}: entry {1:?}: {2}")]
    Entry(String, String, &'static str),
}

/// Reads registry credentials in the format of Docker's `config.json` and of Kubernetes'
/// `kubernetes.io/dockerconfigjson` secrets: `{"auths": {"<registry>": {"auth":
/// "<base64 user:password>"}}}` (or `"username"`/`"password"` fields). Registry keys may be
/// written as URLs (`https://host:port/v1/`); they are reduced to `host[:port]`. `source`
/// names the file in errors. Passwords never appear in errors.
pub fn credentials_from_docker_config(
    source: &str,
    json: &str,
) -> Result<BTreeMap<String, BasicAuth>, CredentialsError> {
    use base64::Engine as _;
    #[derive(serde::Deserialize)]
    struct File {
        #[serde(default)]
        auths: BTreeMap<String, Entry>,
    }
    #[derive(serde::Deserialize)]
    struct Entry {
        auth: Option<String>,
        username: Option<String>,
        password: Option<String>,
    }
    let file: File =
        serde_json::from_str(json).map_err(|e| CredentialsError::Json(source.into(), e))?;
    let mut out = BTreeMap::new();
    for (key, e) in file.auths {
        let host = key
            .trim_start_matches("https://")
            .trim_start_matches("http://")
            .split('/')
            .next()
            .unwrap_or_default()
            .to_string();
        let bad = |why| CredentialsError::Entry(source.into(), key.clone(), why);
        if host.is_empty() {
            return Err(bad("no registry host in the key"));
        }
        let auth = match (e.auth, e.username, e.password) {
            (_, Some(u), Some(p)) => BasicAuth::new(u, p),
            (Some(a), _, _) => {
                let raw = base64::engine::general_purpose::STANDARD
                    .decode(a.trim())
                    .map_err(|_| bad("\"auth\" is not base64"))?;
                let text = String::from_utf8(raw).map_err(|_| bad("\"auth\" is not UTF-8"))?;
                let (u, p) = text
                    .split_once(':')
                    .ok_or_else(|| bad("\"auth\" is not base64 of user:password"))?;
                BasicAuth::new(u, p)
            }
            _ => return Err(bad("neither \"auth\" nor \"username\" and \"password\"")),
        };
        out.insert(host, auth);
    }
    Ok(out)
}

impl fmt::Debug for BasicAuth {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("BasicAuth")
            .field("username", &self.username)
            .field("password", &"<redacted>")
            .finish()
    }
}

/// Size limits that protect the node from hostile or broken registries and images.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ImageLimits {
    /// Largest manifest or index accepted, in bytes.
    pub max_manifest_bytes: u64,
    /// Largest image config blob accepted, in bytes.
    pub max_config_bytes: u64,
    /// Largest single (compressed) layer blob accepted, in bytes.
    pub max_layer_bytes: u64,
    /// Largest number of layers in one image.
    pub max_layers: usize,
    /// Largest total size of the regular files unpacked from all layers of one image, in bytes
    /// (guards against decompression bombs).
    pub max_unpacked_bytes: u64,
    /// Largest number of tar entries in all layers of one image.
    pub max_entries: u64,
}

impl Default for ImageLimits {
    fn default() -> Self {
        ImageLimits {
            max_manifest_bytes: 4 << 20,
            max_config_bytes: 4 << 20,
            max_layer_bytes: 8 << 30,
            max_layers: 128,
            max_unpacked_bytes: 32 << 30,
            max_entries: 2_000_000,
        }
    }
}

/// Configuration of an [`ImageCache`].
#[derive(Debug, Clone)]
pub struct ImageConfig {
    /// Root of the cache (see the module documentation for the layout).
    pub cache_dir: PathBuf,
    /// Registries (`host[:port]`, exactly as in references) reached over plain HTTP.
    pub insecure_registries: Vec<String>,
    /// Basic-auth credentials per registry (`host[:port]`); registries not listed are anonymous.
    pub auth: BTreeMap<String, BasicAuth>,
    pub limits: ImageLimits,
}

impl ImageConfig {
    /// Anonymous HTTPS access, default limits.
    pub fn new(cache_dir: impl Into<PathBuf>) -> Self {
        ImageConfig {
            cache_dir: cache_dir.into(),
            insecure_registries: Vec::new(),
            auth: BTreeMap::new(),
            limits: ImageLimits::default(),
        }
    }

    /// The credentials used for `registry`, if any.
    pub fn auth_for(&self, registry: &str) -> Option<&BasicAuth> {
        self.auth.get(registry)
    }
}

/// What the executor needs from the image config to start the process.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ImageRuntimeConfig {
    pub entrypoint: Vec<String>,
    pub cmd: Vec<String>,
    /// `KEY=value` entries.
    pub env: Vec<String>,
    /// The working directory; `None` means `/`.
    pub working_dir: Option<String>,
    /// `port/proto` entries such as `8080/tcp`, sorted.
    pub exposed_ports: Vec<String>,
    /// `user[:group]` as in the image config, if set.
    pub user: Option<String>,
}

impl ImageRuntimeConfig {
    /// The process arguments a runtime starts: entrypoint followed by cmd.
    pub fn argv(&self) -> Vec<String> {
        self.entrypoint.iter().chain(&self.cmd).cloned().collect()
    }
}

/// An unpacked image, ready to be used as a container root.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Rootfs {
    /// The root filesystem directory (`<cache>/rootfs/<hex>/rootfs`). Treat as read-only.
    pub path: PathBuf,
    /// `sha256:<hex>` of the manifest (or index) the reference resolved to. Pinning the image
    /// as `repo@<manifest_digest>` makes later lookups local.
    pub manifest_digest: String,
    pub config: ImageRuntimeConfig,
}

/// Counters of the work an [`ImageCache`] did, for metrics and tests.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct CacheStats {
    /// Tag resolutions and manifest fetches sent to registries.
    pub manifest_requests: u64,
    /// Blobs downloaded (and verified) into the blob store.
    pub blobs_downloaded: u64,
    /// Root filesystems unpacked.
    pub rootfs_unpacked: u64,
    /// Tags answered from the recorded tag → digest mapping because the registry was unreachable.
    pub offline_tag_hits: u64,
}

/// Failures of the image cache. Each names the reference, registry or blob involved.
#[derive(Debug, thiserror::Error)]
pub enum ImageError {
    #[error("invalid image reference {reference:?}: {source}")]
    InvalidReference {
        reference: String,
        #[source]
        source: oci_client::ParseError,
    },
    #[error("image reference {reference:?}: digest {digest:?} is not sha256:<64 hex digits>")]
    UnsupportedDigest { reference: String, digest: String },
    #[error(
        "registry {registry} rejected the credentials of user {username:?} for {reference} (HTTP 401)"
    )]
    CredentialsRejected {
        registry: String,
        reference: String,
        username: String,
    },
    #[error(
        "registry {registry} requires authentication for {reference} and no credentials are configured for it"
    )]
    AuthenticationRequired { registry: String, reference: String },
    #[error("image {reference} not found in registry {registry}")]
    NotFound { registry: String, reference: String },
    #[error("registry {registry} unreachable while fetching {reference}: {source}")]
    Unreachable {
        registry: String,
        reference: String,
        #[source]
        source: OciDistributionError,
    },
    #[error("registry {registry} failed while fetching {reference}: {source}")]
    Registry {
        registry: String,
        reference: String,
        #[source]
        source: OciDistributionError,
    },
    #[error("{what} {digest}: content has digest {actual} (corrupted or tampered with)")]
    DigestMismatch {
        what: &'static str,
        digest: String,
        actual: String,
    },
    #[error("{what} {digest}: registry sent {actual} bytes, the descriptor says {expected}")]
    SizeMismatch {
        what: &'static str,
        digest: String,
        expected: u64,
        actual: u64,
    },
    #[error("{what} {digest} of {reference} is {size} bytes, over the limit of {limit}")]
    TooLarge {
        what: &'static str,
        reference: String,
        digest: String,
        size: u64,
        limit: u64,
    },
    #[error("image {reference} has {count} layers, over the limit of {limit}")]
    TooManyLayers {
        reference: String,
        count: usize,
        limit: usize,
    },
    #[error("image {reference}: unsupported media type {media_type:?} for {what}")]
    UnsupportedMediaType {
        reference: String,
        what: &'static str,
        media_type: String,
    },
    #[error("image {reference} is for {os}/{architecture}, this node runs linux/{expected}")]
    WrongPlatform {
        reference: String,
        os: String,
        architecture: String,
        expected: &'static str,
    },
    #[error("image index {reference} has no manifest for linux/{expected}")]
    NoMatchingPlatform {
        reference: String,
        expected: &'static str,
    },
    #[error("invalid manifest for {reference}: {reason}")]
    InvalidManifest { reference: String, reason: String },
    #[error("invalid image config {digest} of {reference}: {reason}")]
    InvalidConfig {
        reference: String,
        digest: String,
        reason: String,
    },
    #[error("layer {digest} of {reference}: {source}")]
    Unpack {
        reference: String,
        digest: String,
        #[source]
        source: unpack::UnpackError,
    },
    #[error(
        "layer {digest} of {reference}: uncompressed content has digest {actual}, the config says {expected}"
    )]
    DiffIdMismatch {
        reference: String,
        digest: String,
        expected: String,
        actual: String,
    },
    #[error("image cache: {op} {path}: {source}")]
    Io {
        op: &'static str,
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("downloading {digest} of {reference}: {source}")]
    Transfer {
        reference: String,
        digest: String,
        #[source]
        source: io::Error,
    },
    #[error("image cache: cached entry {path} is unreadable: {reason}")]
    CorruptCacheEntry { path: PathBuf, reason: String },
    #[error("image cache: creating the registry client: {0}")]
    Client(#[source] OciDistributionError),
    #[error("image cache: background task failed: {0}")]
    Task(String),
}

fn io_err(op: &'static str, path: impl Into<PathBuf>) -> impl FnOnce(io::Error) -> ImageError {
    let path = path.into();
    move |source| ImageError::Io { op, path, source }
}

/// The OCI architecture name of this node.
pub fn node_architecture() -> &'static str {
    match std::env::consts::ARCH {
        "x86_64" => "amd64",
        "aarch64" => "arm64",
        "x86" => "386",
        "powerpc64" => "ppc64le",
        other => other,
    }
}

/// Checks that `digest` is `sha256:<64 lowercase hex>` and returns the hex part.
pub fn sha256_hex(digest: &str) -> Option<&str> {
    let hex = digest.strip_prefix("sha256:")?;
    (hex.len() == 64
        && hex
            .bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b)))
    .then_some(hex)
}

/// `sha256:<hex>` of `bytes`.
pub fn sha256_digest(bytes: &[u8]) -> String {
    format!("sha256:{:x}", Sha256::digest(bytes))
}

/// Builds the oci-client configuration shared by pulling and pushing.
pub(crate) fn client_config(insecure_registries: &[String]) -> ClientConfig {
    ClientConfig {
        protocol: if insecure_registries.is_empty() {
            ClientProtocol::Https
        } else {
            ClientProtocol::HttpsExcept(insecure_registries.to_vec())
        },
        platform_resolver: None,
        connect_timeout: Some(std::time::Duration::from_secs(10)),
        read_timeout: Some(std::time::Duration::from_secs(60)),
        ..ClientConfig::default()
    }
}

pub(crate) fn registry_auth(auth: Option<&BasicAuth>) -> RegistryAuth {
    match auth {
        Some(a) => RegistryAuth::Basic(a.username.clone(), a.password.clone()),
        None => RegistryAuth::Anonymous,
    }
}

/// How a registry call failed, independent of which call it was.
pub(crate) enum RegistryFailure {
    Unauthorized,
    NotFound,
    Unreachable,
    DigestMismatch { expected: String, actual: String },
    Other,
}

pub(crate) fn classify(e: &OciDistributionError) -> RegistryFailure {
    match e {
        OciDistributionError::UnauthorizedError { .. }
        | OciDistributionError::AuthenticationFailure(_) => RegistryFailure::Unauthorized,
        OciDistributionError::ServerError { code: 401, .. } => RegistryFailure::Unauthorized,
        OciDistributionError::ServerError { code: 404, .. }
        | OciDistributionError::ImageManifestNotFoundError(_) => RegistryFailure::NotFound,
        OciDistributionError::RegistryError { envelope, .. } => {
            if envelope
                .errors
                .iter()
                .any(|e| matches!(e.code, OciErrorCode::Unauthorized | OciErrorCode::Denied))
            {
                RegistryFailure::Unauthorized
            } else if envelope.errors.iter().any(|e| {
                matches!(
                    e.code,
                    OciErrorCode::ManifestUnknown
                        | OciErrorCode::NameUnknown
                        | OciErrorCode::BlobUnknown
                        | OciErrorCode::NotFound
                )
            }) {
                RegistryFailure::NotFound
            } else {
                RegistryFailure::Other
            }
        }
        OciDistributionError::RequestError(r) if r.is_connect() || r.is_timeout() => {
            RegistryFailure::Unreachable
        }
        OciDistributionError::RequestError(r) if r.status().is_some_and(|s| s.as_u16() == 401) => {
            RegistryFailure::Unauthorized
        }
        OciDistributionError::RequestError(r) if r.status().is_some_and(|s| s.as_u16() == 404) => {
            RegistryFailure::NotFound
        }
        OciDistributionError::DigestError(DigestError::VerificationError { expected, actual }) => {
            RegistryFailure::DigestMismatch {
                expected: expected.clone(),
                actual: actual.clone(),
            }
        }
        _ => RegistryFailure::Other,
    }
}

/// Per-key async mutexes: the work for one key (an image or blob digest) runs once at a time.
#[derive(Default)]
struct KeyedLocks {
    map: Mutex<HashMap<String, Weak<tokio::sync::Mutex<()>>>>,
}

impl KeyedLocks {
    async fn lock(&self, key: &str) -> tokio::sync::OwnedMutexGuard<()> {
        let lock = {
            // Invariant: the map is only touched in these few lines, which cannot panic.
            let mut map = self.map.lock().unwrap_or_else(|p| p.into_inner());
            match map.get(key).and_then(Weak::upgrade) {
                Some(l) => l,
                None => {
                    map.retain(|_, w| w.strong_count() > 0);
                    let l = Arc::new(tokio::sync::Mutex::new(()));
                    map.insert(key.to_string(), Arc::downgrade(&l));
                    l
                }
            }
        };
        lock.lock_owned().await
    }
}

#[derive(Default)]
struct Counters {
    manifest_requests: AtomicU64,
    blobs_downloaded: AtomicU64,
    rootfs_unpacked: AtomicU64,
    offline_tag_hits: AtomicU64,
}

struct Inner {
    config: ImageConfig,
    client: oci_client::Client,
    locks: KeyedLocks,
    counters: Counters,
    /// `<cache>/tmp/<pid>.<n>`: this instance's work area.
    tmp_dir: PathBuf,
}

impl Drop for Inner {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.tmp_dir);
    }
}

/// Distinguishes cache instances of one process in the names of their work areas.
static INSTANCE: AtomicU64 = AtomicU64::new(0);

/// Removes work areas under `tmp` left by processes that no longer run (`<pid>.<n>` whose
/// `/proc/<pid>` is gone) and anything else that does not follow that naming.
fn remove_stale_work(tmp: &Path) -> Result<(), ImageError> {
    let me = std::process::id();
    for entry in std::fs::read_dir(tmp).map_err(io_err("listing", tmp))? {
        let entry = entry.map_err(io_err("listing", tmp))?;
        let name = entry.file_name();
        let owner = name
            .to_str()
            .and_then(|n| n.split_once('.'))
            .and_then(|(pid, _)| pid.parse::<u32>().ok());
        let alive =
            owner.is_some_and(|pid| pid == me || Path::new(&format!("/proc/{pid}")).exists());
        if alive {
            continue;
        }
        let p = entry.path();
        let res = if entry.file_type().map(|t| t.is_dir()).unwrap_or(false) {
            std::fs::remove_dir_all(&p)
        } else {
            std::fs::remove_file(&p)
        };
        match res {
            Ok(()) => debug!(path = %p.display(), "removed stale work area"),
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => return Err(io_err("removing stale", &p)(e)),
        }
    }
    Ok(())
}

/// The node's image cache. Cheap to clone; clones share everything.
#[derive(Clone)]
pub struct ImageCache {
    inner: Arc<Inner>,
}

impl fmt::Debug for ImageCache {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ImageCache")
            .field("cache_dir", &self.inner.config.cache_dir)
            .finish_non_exhaustive()
    }
}

/// `image.json` inside a cached rootfs entry.
#[derive(Debug, Serialize, Deserialize)]
struct EntryMeta {
    manifest_digest: String,
    platform_manifest_digest: String,
    layers: Vec<String>,
    config: ImageRuntimeConfig,
}

/// `tags/<sha256(ref)>.json`.
#[derive(Debug, Serialize, Deserialize)]
struct TagRecord {
    reference: String,
    digest: String,
}

/// The parts of an image manifest (OCI or Docker v2) the cache uses.
#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
struct ManifestDoc {
    schema_version: u32,
    #[serde(default)]
    media_type: Option<String>,
    #[serde(default)]
    config: Option<Descriptor>,
    #[serde(default)]
    layers: Option<Vec<Descriptor>>,
    #[serde(default)]
    manifests: Option<Vec<IndexEntry>>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase")]
struct Descriptor {
    media_type: String,
    digest: String,
    size: i64,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
struct IndexEntry {
    digest: String,
    #[serde(default)]
    platform: Option<PlatformDoc>,
}

#[derive(Debug, Deserialize)]
struct PlatformDoc {
    architecture: String,
    os: String,
    #[serde(default)]
    variant: Option<String>,
}

/// The parts of an image config the cache uses.
#[derive(Debug, Deserialize)]
struct ConfigDoc {
    #[serde(default)]
    architecture: String,
    #[serde(default)]
    os: String,
    #[serde(default)]
    config: Option<ProcessDoc>,
    rootfs: RootfsDoc,
}

#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "PascalCase")]
struct ProcessDoc {
    #[serde(default)]
    entrypoint: Option<Vec<String>>,
    #[serde(default)]
    cmd: Option<Vec<String>>,
    #[serde(default)]
    env: Option<Vec<String>>,
    #[serde(default)]
    working_dir: Option<String>,
    #[serde(default)]
    exposed_ports: Option<BTreeMap<String, serde_json::Value>>,
    #[serde(default)]
    user: Option<String>,
}

#[derive(Debug, Deserialize)]
struct RootfsDoc {
    #[serde(rename = "type")]
    kind: String,
    diff_ids: Vec<String>,
}

/// How a layer blob is compressed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Compression {
    None,
    Gzip,
    Zstd,
}

fn layer_compression(media_type: &str) -> Option<Compression> {
    use oci_client::manifest::*;
    match media_type {
        IMAGE_LAYER_MEDIA_TYPE
        | IMAGE_DOCKER_LAYER_TAR_MEDIA_TYPE
        | IMAGE_LAYER_NONDISTRIBUTABLE_MEDIA_TYPE => Some(Compression::None),
        IMAGE_LAYER_GZIP_MEDIA_TYPE
        | IMAGE_DOCKER_LAYER_GZIP_MEDIA_TYPE
        | IMAGE_LAYER_NONDISTRIBUTABLE_GZIP_MEDIA_TYPE => Some(Compression::Gzip),
        "application/vnd.oci.image.layer.v1.tar+zstd" => Some(Compression::Zstd),
        _ => None,
    }
}

/// A reference split into what the cache needs.
struct Parsed {
    reference: Reference,
    /// `registry/repository[:tag|@digest]` as given (normalized), for messages.
    display: String,
}

impl ImageCache {
    /// Opens (creating if needed) the cache at `config.cache_dir`. Work left in `tmp/` by
    /// processes that died is removed. Several instances (in one or more processes) may share a
    /// directory: each works in its own `tmp/<pid>.<n>/` and publishes with atomic renames.
    pub fn new(config: ImageConfig) -> Result<Self, ImageError> {
        let dir = &config.cache_dir;
        for sub in ["blobs/sha256", "rootfs", "tags", "tmp"] {
            let p = dir.join(sub);
            std::fs::create_dir_all(&p).map_err(io_err("creating", &p))?;
        }
        remove_stale_work(&dir.join("tmp"))?;
        let tmp_dir = dir.join("tmp").join(format!(
            "{}.{}",
            std::process::id(),
            INSTANCE.fetch_add(1, Ordering::Relaxed)
        ));
        std::fs::create_dir_all(&tmp_dir).map_err(io_err("creating", &tmp_dir))?;
        let client = oci_client::Client::try_from(client_config(&config.insecure_registries))
            .map_err(ImageError::Client)?;
        Ok(ImageCache {
            inner: Arc::new(Inner {
                config,
                client,
                locks: KeyedLocks::default(),
                counters: Counters::default(),
                tmp_dir,
            }),
        })
    }

    pub fn config(&self) -> &ImageConfig {
        &self.inner.config
    }

    /// What the cache has done so far.
    pub fn stats(&self) -> CacheStats {
        let c = &self.inner.counters;
        CacheStats {
            manifest_requests: c.manifest_requests.load(Ordering::Relaxed),
            blobs_downloaded: c.blobs_downloaded.load(Ordering::Relaxed),
            rootfs_unpacked: c.rootfs_unpacked.load(Ordering::Relaxed),
            offline_tag_hits: c.offline_tag_hits.load(Ordering::Relaxed),
        }
    }

    /// Path of a blob in the store (present or not). `None` for a digest that is not sha256.
    pub fn blob_path(&self, digest: &str) -> Option<PathBuf> {
        sha256_hex(digest).map(|hex| self.inner.config.cache_dir.join("blobs/sha256").join(hex))
    }

    fn entry_dir(&self, hex: &str) -> PathBuf {
        self.inner.config.cache_dir.join("rootfs").join(hex)
    }

    fn tmp_dir(&self) -> PathBuf {
        self.inner.tmp_dir.clone()
    }

    fn tag_record_path(&self, reference: &Reference) -> PathBuf {
        let key = format!(
            "{}/{}:{}",
            reference.registry(),
            reference.repository(),
            reference.tag().unwrap_or("latest")
        );
        self.inner
            .config
            .cache_dir
            .join("tags")
            .join(format!("{:x}.json", Sha256::digest(key.as_bytes())))
    }

    /// The cached rootfs of a manifest digest, if present. Never touches the network.
    pub fn cached_rootfs(&self, manifest_digest: &str) -> Result<Option<Rootfs>, ImageError> {
        let Some(hex) = sha256_hex(manifest_digest) else {
            return Err(ImageError::UnsupportedDigest {
                reference: manifest_digest.to_string(),
                digest: manifest_digest.to_string(),
            });
        };
        let dir = self.entry_dir(hex);
        let meta_path = dir.join("image.json");
        let bytes = match std::fs::read(&meta_path) {
            Ok(b) => b,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(io_err("reading", &meta_path)(e)),
        };
        let meta: EntryMeta =
            serde_json::from_slice(&bytes).map_err(|e| ImageError::CorruptCacheEntry {
                path: meta_path.clone(),
                reason: e.to_string(),
            })?;
        if meta.manifest_digest != manifest_digest {
            return Err(ImageError::CorruptCacheEntry {
                path: meta_path,
                reason: format!(
                    "records manifest digest {} instead of {manifest_digest}",
                    meta.manifest_digest
                ),
            });
        }
        Ok(Some(Rootfs {
            path: dir.join("rootfs"),
            manifest_digest: meta.manifest_digest,
            config: meta.config,
        }))
    }

    fn parse(&self, reference: &str) -> Result<Parsed, ImageError> {
        let parsed: Reference =
            reference
                .parse()
                .map_err(|source| ImageError::InvalidReference {
                    reference: reference.to_string(),
                    source,
                })?;
        Ok(Parsed {
            display: parsed.whole(),
            reference: parsed,
        })
    }

    fn auth(&self, reference: &Reference) -> Option<&BasicAuth> {
        let cfg = &self.inner.config;
        cfg.auth_for(reference.registry())
            .or_else(|| cfg.auth_for(reference.resolve_registry()))
    }

    /// Maps an oci-client error to an [`ImageError`] naming the registry and reference.
    fn registry_error(&self, p: &Parsed, source: OciDistributionError) -> ImageError {
        let registry = p.reference.registry().to_string();
        let reference = p.display.clone();
        match classify(&source) {
            RegistryFailure::Unauthorized => match self.auth(&p.reference) {
                Some(a) => ImageError::CredentialsRejected {
                    registry,
                    reference,
                    username: a.username.clone(),
                },
                None => ImageError::AuthenticationRequired {
                    registry,
                    reference,
                },
            },
            RegistryFailure::NotFound => ImageError::NotFound {
                registry,
                reference,
            },
            RegistryFailure::Unreachable => ImageError::Unreachable {
                registry,
                reference,
                source,
            },
            RegistryFailure::DigestMismatch { expected, actual } => ImageError::DigestMismatch {
                what: "manifest",
                digest: expected,
                actual,
            },
            RegistryFailure::Other => ImageError::Registry {
                registry,
                reference,
                source,
            },
        }
    }

    /// Makes sure the image named by `reference` is unpacked in the cache and returns it.
    ///
    /// See the module documentation for what is fetched when.
    pub async fn ensure_rootfs(&self, reference: &str) -> Result<Rootfs, ImageError> {
        let p = self.parse(reference)?;
        let digest = match p.reference.digest() {
            Some(d) => {
                if sha256_hex(d).is_none() {
                    return Err(ImageError::UnsupportedDigest {
                        reference: p.display.clone(),
                        digest: d.to_string(),
                    });
                }
                d.to_string()
            }
            None => match self.resolve_tag(&p).await {
                Ok(d) => d,
                Err(e @ ImageError::Unreachable { .. }) => match self.offline_tag(&p.reference)? {
                    Some(rootfs) => {
                        self.inner
                            .counters
                            .offline_tag_hits
                            .fetch_add(1, Ordering::Relaxed);
                        warn!(
                            reference = %p.display,
                            digest = %rootfs.manifest_digest,
                            error = %e,
                            "registry unreachable; using the digest this tag resolved to before"
                        );
                        return Ok(rootfs);
                    }
                    None => return Err(e),
                },
                Err(e) => return Err(e),
            },
        };
        if let Some(rootfs) = self.cached_rootfs(&digest)? {
            debug!(reference = %p.display, digest = %digest, "image cached");
            if p.reference.digest().is_none() {
                self.record_tag(&p.reference, &digest)?;
            }
            return Ok(rootfs);
        }
        let _guard = self.inner.locks.lock(&digest).await;
        let rootfs = match self.cached_rootfs(&digest)? {
            Some(r) => r,
            None => self.pull_and_unpack(&p, &digest).await?,
        };
        if p.reference.digest().is_none() {
            self.record_tag(&p.reference, &digest)?;
        }
        Ok(rootfs)
    }

    async fn resolve_tag(&self, p: &Parsed) -> Result<String, ImageError> {
        self.inner
            .counters
            .manifest_requests
            .fetch_add(1, Ordering::Relaxed);
        let auth = registry_auth(self.auth(&p.reference));
        let digest = self
            .inner
            .client
            .fetch_manifest_digest(&p.reference, &auth)
            .await
            .map_err(|e| self.registry_error(p, e))?;
        if sha256_hex(&digest).is_none() {
            return Err(ImageError::UnsupportedDigest {
                reference: p.display.clone(),
                digest,
            });
        }
        debug!(reference = %p.display, digest = %digest, "tag resolved");
        Ok(digest)
    }

    fn offline_tag(&self, reference: &Reference) -> Result<Option<Rootfs>, ImageError> {
        let path = self.tag_record_path(reference);
        let bytes = match std::fs::read(&path) {
            Ok(b) => b,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(io_err("reading", &path)(e)),
        };
        let Ok(record) = serde_json::from_slice::<TagRecord>(&bytes) else {
            warn!(path = %path.display(), "ignoring unreadable tag record");
            return Ok(None);
        };
        if sha256_hex(&record.digest).is_none() {
            return Ok(None);
        }
        self.cached_rootfs(&record.digest)
    }

    fn record_tag(&self, reference: &Reference, digest: &str) -> Result<(), ImageError> {
        let path = self.tag_record_path(reference);
        if let Ok(bytes) = std::fs::read(&path)
            && serde_json::from_slice::<TagRecord>(&bytes).is_ok_and(|r| r.digest == digest)
        {
            return Ok(());
        }
        let record = TagRecord {
            reference: reference.whole(),
            digest: digest.to_string(),
        };
        // Invariant: serializing two strings cannot fail.
        let bytes = serde_json::to_vec(&record).expect("tag record serializes");
        write_file_atomic(&self.tmp_dir(), &path, &bytes)
    }

    async fn pull_manifest(
        &self,
        p: &Parsed,
        reference: &Reference,
    ) -> Result<(ManifestDoc, Vec<u8>), ImageError> {
        self.inner
            .counters
            .manifest_requests
            .fetch_add(1, Ordering::Relaxed);
        let auth = registry_auth(self.auth(reference));
        let (bytes, digest) = self
            .inner
            .client
            .pull_manifest_raw(reference, &auth, MANIFEST_MEDIA_TYPES)
            .await
            .map_err(|e| self.registry_error(p, e))?;
        let limit = self.inner.config.limits.max_manifest_bytes;
        if bytes.len() as u64 > limit {
            return Err(ImageError::TooLarge {
                what: "manifest",
                reference: p.display.clone(),
                digest,
                size: bytes.len() as u64,
                limit,
            });
        }
        // oci-client compared the body with the digest in the reference; check again, the cache
        // is keyed by it.
        if let Some(expected) = reference.digest() {
            let actual = sha256_digest(&bytes);
            if actual != expected {
                return Err(ImageError::DigestMismatch {
                    what: "manifest",
                    digest: expected.to_string(),
                    actual,
                });
            }
        }
        let doc: ManifestDoc =
            serde_json::from_slice(&bytes).map_err(|e| ImageError::InvalidManifest {
                reference: p.display.clone(),
                reason: e.to_string(),
            })?;
        if doc.schema_version != 2 {
            return Err(ImageError::InvalidManifest {
                reference: p.display.clone(),
                reason: format!("schemaVersion {} (only 2 is supported)", doc.schema_version),
            });
        }
        Ok((doc, bytes.to_vec()))
    }

    async fn pull_and_unpack(&self, p: &Parsed, digest: &str) -> Result<Rootfs, ImageError> {
        let limits = self.inner.config.limits;
        let by_digest = p.reference.clone_with_digest(digest.to_string());
        let (mut doc, _) = self.pull_manifest(p, &by_digest).await?;
        let mut platform_digest = digest.to_string();
        if let Some(entries) = doc.manifests.take() {
            let arch = node_architecture();
            let chosen = entries
                .iter()
                .filter(|e| {
                    e.platform
                        .as_ref()
                        .is_some_and(|pl| pl.os == "linux" && pl.architecture == arch)
                })
                // Prefer an entry without variant or with the usual one (arm64 → v8).
                .min_by_key(|e| {
                    e.platform
                        .as_ref()
                        .and_then(|pl| pl.variant.as_deref())
                        .map_or(0, |v| if v == "v8" { 1 } else { 2 })
                })
                .ok_or(ImageError::NoMatchingPlatform {
                    reference: p.display.clone(),
                    expected: arch,
                })?;
            if sha256_hex(&chosen.digest).is_none() {
                return Err(ImageError::UnsupportedDigest {
                    reference: p.display.clone(),
                    digest: chosen.digest.clone(),
                });
            }
            platform_digest = chosen.digest.clone();
            let (inner, _) = self
                .pull_manifest(p, &p.reference.clone_with_digest(platform_digest.clone()))
                .await?;
            if inner.manifests.is_some() {
                return Err(ImageError::InvalidManifest {
                    reference: p.display.clone(),
                    reason: "an index entry points at another index".to_string(),
                });
            }
            doc = inner;
        }
        if let Some(mt) = &doc.media_type
            && !MANIFEST_MEDIA_TYPES.contains(&mt.as_str())
        {
            return Err(ImageError::UnsupportedMediaType {
                reference: p.display.clone(),
                what: "manifest",
                media_type: mt.clone(),
            });
        }
        let (Some(config_desc), Some(layers)) = (doc.config, doc.layers) else {
            return Err(ImageError::InvalidManifest {
                reference: p.display.clone(),
                reason: "image manifest without config or layers".to_string(),
            });
        };
        if layers.len() > limits.max_layers {
            return Err(ImageError::TooManyLayers {
                reference: p.display.clone(),
                count: layers.len(),
                limit: limits.max_layers,
            });
        }
        let mut compressions = Vec::with_capacity(layers.len());
        for l in &layers {
            let c = layer_compression(&l.media_type).ok_or_else(|| {
                ImageError::UnsupportedMediaType {
                    reference: p.display.clone(),
                    what: "layer",
                    media_type: l.media_type.clone(),
                }
            })?;
            compressions.push(c);
        }

        // Config.
        let config_path = self
            .ensure_blob(p, &config_desc, "config", limits.max_config_bytes)
            .await?;
        let config_bytes = tokio::fs::read(&config_path)
            .await
            .map_err(io_err("reading", &config_path))?;
        let (runtime, diff_ids) = parse_config(p, &config_desc.digest, &config_bytes)?;
        if diff_ids.len() != layers.len() {
            return Err(ImageError::InvalidConfig {
                reference: p.display.clone(),
                digest: config_desc.digest.clone(),
                reason: format!("{} diff_ids for {} layers", diff_ids.len(), layers.len()),
            });
        }

        // Layers, a few at a time.
        // (The futures are built before the stream: a closure inside it would make this future
        // fail `Send` for higher-ranked lifetimes.)
        let downloads: Vec<_> = layers
            .iter()
            .map(|l| self.ensure_blob(p, l, "layer", limits.max_layer_bytes))
            .collect();
        let layer_paths: Vec<PathBuf> = futures::stream::iter(downloads)
            .buffered(3)
            .try_collect()
            .await?;

        // Unpack into tmp/, then rename into place.
        let hex = sha256_hex(digest)
            .expect("caller passes a validated sha256 digest")
            .to_string();
        let tmp = tempfile::Builder::new()
            .prefix(&format!("rootfs-{}-", &hex[..12]))
            .tempdir_in(self.tmp_dir())
            .map_err(io_err("creating temporary directory in", self.tmp_dir()))?;
        let meta = EntryMeta {
            manifest_digest: digest.to_string(),
            platform_manifest_digest: platform_digest,
            layers: layers.iter().map(|l| l.digest.clone()).collect(),
            config: runtime,
        };
        let work = UnpackWork {
            dir: tmp.path().to_path_buf(),
            reference: p.display.clone(),
            layers: layers
                .iter()
                .zip(layer_paths)
                .zip(compressions)
                .zip(diff_ids)
                .map(|(((l, path), c), diff_id)| (l.digest.clone(), path, c, diff_id))
                .collect(),
            limits,
            meta,
        };
        info!(reference = %p.display, digest = %digest, layers = layers.len(), "unpacking image");
        tokio::task::spawn_blocking(move || work.run())
            .await
            .map_err(|e| ImageError::Task(e.to_string()))??;
        let target = self.entry_dir(&hex);
        let tmp_path = tmp.keep();
        match std::fs::rename(&tmp_path, &target) {
            Ok(()) => {}
            // Another process won the race: keep its copy.
            Err(_) if target.join("image.json").exists() => {
                let _ = std::fs::remove_dir_all(&tmp_path);
            }
            Err(e) => {
                let _ = std::fs::remove_dir_all(&tmp_path);
                return Err(io_err("renaming into", &target)(e));
            }
        }
        self.inner
            .counters
            .rootfs_unpacked
            .fetch_add(1, Ordering::Relaxed);
        info!(reference = %p.display, digest = %digest, path = %target.display(), "image unpacked");
        self.cached_rootfs(digest)?
            .ok_or_else(|| ImageError::CorruptCacheEntry {
                path: target,
                reason: "missing right after it was written".to_string(),
            })
    }

    /// Makes sure a blob is in the store, downloading and verifying it if needed.
    async fn ensure_blob(
        &self,
        p: &Parsed,
        desc: &Descriptor,
        what: &'static str,
        limit: u64,
    ) -> Result<PathBuf, ImageError> {
        let Some(path) = self.blob_path(&desc.digest) else {
            return Err(ImageError::UnsupportedDigest {
                reference: p.display.clone(),
                digest: desc.digest.clone(),
            });
        };
        let size = u64::try_from(desc.size).map_err(|_| ImageError::InvalidManifest {
            reference: p.display.clone(),
            reason: format!("{what} {} has negative size {}", desc.digest, desc.size),
        })?;
        if size > limit {
            return Err(ImageError::TooLarge {
                what,
                reference: p.display.clone(),
                digest: desc.digest.clone(),
                size,
                limit,
            });
        }
        if path.exists() {
            return Ok(path);
        }
        let _guard = self.inner.locks.lock(&desc.digest).await;
        if path.exists() {
            return Ok(path);
        }
        self.download_blob(p, desc, what, size, &path).await?;
        Ok(path)
    }

    async fn download_blob(
        &self,
        p: &Parsed,
        desc: &Descriptor,
        what: &'static str,
        size: u64,
        path: &Path,
    ) -> Result<(), ImageError> {
        let transfer = |source: io::Error| ImageError::Transfer {
            reference: p.display.clone(),
            digest: desc.digest.clone(),
            source,
        };
        let auth = registry_auth(self.auth(&p.reference));
        self.inner
            .client
            .store_auth_if_needed(p.reference.resolve_registry(), &auth)
            .await;
        let mut stream = self
            .inner
            .client
            .pull_blob_stream(&p.reference, desc.digest.as_str())
            .await
            .map_err(|e| self.registry_error(p, e))?;
        let tmp = tempfile::Builder::new()
            .prefix("blob-")
            .tempfile_in(self.tmp_dir())
            .map_err(io_err("creating temporary file in", self.tmp_dir()))?;
        let (std_file, tmp_path) = tmp.into_parts();
        let mut file = tokio::fs::File::from_std(std_file);
        let mut hasher = Sha256::new();
        let mut received: u64 = 0;
        let mut stream_error = None;
        while let Some(chunk) = stream.next().await {
            let chunk = match chunk {
                Ok(c) => c,
                Err(e) => {
                    stream_error = Some(e);
                    break;
                }
            };
            received += chunk.len() as u64;
            if received > size {
                return Err(ImageError::SizeMismatch {
                    what,
                    digest: desc.digest.clone(),
                    expected: size,
                    actual: received,
                });
            }
            hasher.update(&chunk);
            file.write_all(&chunk)
                .await
                .map_err(io_err("writing", &*tmp_path))?;
        }
        let actual = format!("sha256:{:x}", hasher.finalize());
        if let Some(e) = stream_error {
            // oci-client verifies the digest at the end of the stream too; report ours.
            let mismatch = e
                .get_ref()
                .and_then(|inner| inner.downcast_ref::<DigestError>())
                .is_some_and(|d| matches!(d, DigestError::VerificationError { .. }));
            if mismatch && received == size {
                return Err(ImageError::DigestMismatch {
                    what,
                    digest: desc.digest.clone(),
                    actual,
                });
            }
            if !mismatch {
                return Err(transfer(e));
            }
        }
        if received != size {
            return Err(ImageError::SizeMismatch {
                what,
                digest: desc.digest.clone(),
                expected: size,
                actual: received,
            });
        }
        if actual != desc.digest {
            return Err(ImageError::DigestMismatch {
                what,
                digest: desc.digest.clone(),
                actual,
            });
        }
        file.sync_all()
            .await
            .map_err(io_err("syncing", &*tmp_path))?;
        drop(file);
        tmp_path
            .persist(path)
            .map_err(|e| io_err("storing blob", path)(e.error))?;
        self.inner
            .counters
            .blobs_downloaded
            .fetch_add(1, Ordering::Relaxed);
        debug!(digest = %desc.digest, bytes = size, what, "blob downloaded");
        Ok(())
    }
}

fn parse_config(
    p: &Parsed,
    digest: &str,
    bytes: &[u8],
) -> Result<(ImageRuntimeConfig, Vec<String>), ImageError> {
    let invalid = |reason: String| ImageError::InvalidConfig {
        reference: p.display.clone(),
        digest: digest.to_string(),
        reason,
    };
    let doc: ConfigDoc = serde_json::from_slice(bytes).map_err(|e| invalid(e.to_string()))?;
    let arch = node_architecture();
    if doc.os != "linux" || doc.architecture != arch {
        return Err(ImageError::WrongPlatform {
            reference: p.display.clone(),
            os: doc.os,
            architecture: doc.architecture,
            expected: arch,
        });
    }
    if doc.rootfs.kind != "layers" {
        return Err(invalid(format!(
            "rootfs.type {:?} (expected \"layers\")",
            doc.rootfs.kind
        )));
    }
    for d in &doc.rootfs.diff_ids {
        if sha256_hex(d).is_none() {
            return Err(invalid(format!("diff_id {d:?} is not a sha256 digest")));
        }
    }
    let proc = doc.config.unwrap_or_default();
    let runtime = ImageRuntimeConfig {
        entrypoint: proc.entrypoint.unwrap_or_default(),
        cmd: proc.cmd.unwrap_or_default(),
        env: proc.env.unwrap_or_default(),
        working_dir: proc.working_dir.filter(|w| !w.is_empty()),
        exposed_ports: proc
            .exposed_ports
            .map(|m| m.into_keys().collect())
            .unwrap_or_default(),
        user: proc.user.filter(|u| !u.is_empty()),
    };
    Ok((runtime, doc.rootfs.diff_ids))
}

/// Writes `bytes` to `path` through a temporary file in `tmp_dir` (same filesystem) and a rename.
fn write_file_atomic(tmp_dir: &Path, path: &Path, bytes: &[u8]) -> Result<(), ImageError> {
    let mut tmp = tempfile::Builder::new()
        .prefix("file-")
        .tempfile_in(tmp_dir)
        .map_err(io_err("creating temporary file in", tmp_dir))?;
    tmp.write_all(bytes)
        .and_then(|()| tmp.as_file().sync_all())
        .map_err(io_err("writing", tmp.path()))?;
    tmp.persist(path)
        .map_err(|e| io_err("writing", path)(e.error))?;
    Ok(())
}

/// Reader that hashes what passes through it.
struct HashingReader<R> {
    inner: R,
    hasher: Sha256,
}

impl<R: Read> Read for HashingReader<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.hasher.update(&buf[..n]);
        Ok(n)
    }
}

/// The blocking part of building a rootfs entry.
struct UnpackWork {
    dir: PathBuf,
    reference: String,
    /// (layer digest, blob path, compression, diff_id)
    layers: Vec<(String, PathBuf, Compression, String)>,
    limits: ImageLimits,
    meta: EntryMeta,
}

impl UnpackWork {
    fn run(self) -> Result<(), ImageError> {
        use std::os::unix::fs::PermissionsExt;
        let root = self.dir.join("rootfs");
        std::fs::create_dir(&root).map_err(io_err("creating", &root))?;
        for p in [&self.dir, &root] {
            std::fs::set_permissions(p, std::fs::Permissions::from_mode(0o755))
                .map_err(io_err("setting permissions of", p))?;
        }
        let mut budget =
            unpack::Budget::new(self.limits.max_unpacked_bytes, self.limits.max_entries);
        for (digest, path, compression, diff_id) in &self.layers {
            let file = std::fs::File::open(path).map_err(io_err("opening", path))?;
            let file = io::BufReader::with_capacity(256 * 1024, file);
            let decompressed: Box<dyn Read> = match compression {
                Compression::None => Box::new(file),
                Compression::Gzip => Box::new(flate2::read::MultiGzDecoder::new(file)),
                Compression::Zstd => Box::new(
                    zstd::stream::read::Decoder::with_buffer(file)
                        .map_err(io_err("starting zstd decompression of", path))?,
                ),
            };
            let mut reader = HashingReader {
                inner: decompressed,
                hasher: Sha256::new(),
            };
            let unpack_err = |source| ImageError::Unpack {
                reference: self.reference.clone(),
                digest: digest.clone(),
                source,
            };
            unpack::apply_layer(&root, &mut reader, &mut budget).map_err(unpack_err)?;
            // The tar end-of-archive blocks and any padding count towards the diff_id.
            io::copy(&mut reader, &mut io::sink())
                .map_err(|e| unpack_err(unpack::UnpackError::Read(e)))?;
            let actual = format!("sha256:{:x}", reader.hasher.finalize());
            if &actual != diff_id {
                return Err(ImageError::DiffIdMismatch {
                    reference: self.reference.clone(),
                    digest: digest.clone(),
                    expected: diff_id.clone(),
                    actual,
                });
            }
        }
        let meta_path = self.dir.join("image.json");
        // Invariant: EntryMeta holds only strings.
        let bytes = serde_json::to_vec_pretty(&self.meta).expect("entry metadata serializes");
        let mut f = std::fs::File::create(&meta_path).map_err(io_err("creating", &meta_path))?;
        f.write_all(&bytes)
            .and_then(|()| f.sync_all())
            .map_err(io_err("writing", &meta_path))?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn docker_config_credentials() {
        // "alice:s3:cret" in base64; a URL key; explicit fields.
        let json = r#"{"auths": {
            "registry.example:5000": {"auth": "YWxpY2U6czM6Y3JldA=="},
            "https://index.docker.io/v1/": {"username": "bob", "password": "pw"}
        }}"#;
        let m = credentials_from_docker_config("config.json", json).unwrap();
        assert_eq!(
            m["registry.example:5000"],
            BasicAuth::new("alice", "s3:cret")
        );
        assert_eq!(m["index.docker.io"], BasicAuth::new("bob", "pw"));
        assert!(
            credentials_from_docker_config("f", r#"{"auths": {}}"#)
                .unwrap()
                .is_empty()
        );
        let e = credentials_from_docker_config("f", r#"{"auths": {"r": {"auth": "!!"}}}"#)
            .unwrap_err()
            .to_string();
        assert!(e.contains("not base64") && e.contains("\"r\""), "{e}");
        let e =
            credentials_from_docker_config("f", r#"{"auths": {"r": {"auth": "bm9jb2xvbg=="}}}"#)
                .unwrap_err()
                .to_string();
        assert!(e.contains("user:password"), "{e}");
        let e = credentials_from_docker_config("f", r#"{"auths": {"r": {}}}"#)
            .unwrap_err()
            .to_string();
        assert!(e.contains("neither"), "{e}");
        let e = credentials_from_docker_config("f", "nope")
            .unwrap_err()
            .to_string();
        assert!(e.contains("not a Docker config.json"), "{e}");
    }

    #[test]
    fn sha256_hex_validates() {
        let ok = format!("sha256:{}", "a".repeat(64));
        assert_eq!(sha256_hex(&ok), Some("a".repeat(64).as_str()));
        assert_eq!(sha256_hex(&format!("sha256:{}", "A".repeat(64))), None);
        assert_eq!(sha256_hex(&format!("sha512:{}", "a".repeat(64))), None);
        assert_eq!(sha256_hex("sha256:abc"), None);
        assert_eq!(sha256_hex(&format!("sha256:{}/..", "a".repeat(61))), None);
    }

    #[test]
    fn layer_media_types() {
        assert_eq!(
            layer_compression("application/vnd.oci.image.layer.v1.tar+gzip"),
            Some(Compression::Gzip)
        );
        assert_eq!(
            layer_compression("application/vnd.docker.image.rootfs.diff.tar.gzip"),
            Some(Compression::Gzip)
        );
        assert_eq!(
            layer_compression("application/vnd.oci.image.layer.v1.tar"),
            Some(Compression::None)
        );
        assert_eq!(
            layer_compression("application/vnd.oci.image.layer.v1.tar+zstd"),
            Some(Compression::Zstd)
        );
        assert_eq!(
            layer_compression("application/vnd.oci.image.layer.v1.tar+lz4"),
            None
        );
    }

    #[test]
    fn parses_image_config() {
        let p = Parsed {
            reference: "r/x:1".parse().unwrap(),
            display: "r/x:1".into(),
        };
        let arch = node_architecture();
        let cfg = format!(
            r#"{{"architecture":"{arch}","os":"linux","config":{{"Entrypoint":["/counter"],"Cmd":["-v"],"Env":["A=1"],"WorkingDir":"/w","ExposedPorts":{{"9090/udp":{{}},"8080/tcp":{{}}}}}},"rootfs":{{"type":"layers","diff_ids":["sha256:{}"]}}}}"#,
            "b".repeat(64)
        );
        let (rt, diff_ids) = parse_config(&p, "d", cfg.as_bytes()).unwrap();
        assert_eq!(rt.argv(), vec!["/counter", "-v"]);
        assert_eq!(rt.env, vec!["A=1"]);
        assert_eq!(rt.working_dir.as_deref(), Some("/w"));
        assert_eq!(rt.exposed_ports, vec!["8080/tcp", "9090/udp"]);
        assert_eq!(diff_ids.len(), 1);

        let wrong =
            r#"{"architecture":"s390x","os":"linux","rootfs":{"type":"layers","diff_ids":[]}}"#;
        let e = parse_config(&p, "d", wrong.as_bytes()).unwrap_err();
        assert!(matches!(e, ImageError::WrongPlatform { .. }), "{e}");
        assert!(e.to_string().contains("linux/s390x"), "{e}");
        let bad = format!(
            r#"{{"architecture":"{arch}","os":"linux","rootfs":{{"type":"layers","diff_ids":["md5:x"]}}}}"#
        );
        let e = parse_config(&p, "d", bad.as_bytes()).unwrap_err();
        assert!(e.to_string().contains("diff_id \"md5:x\""), "{e}");
    }

    #[test]
    fn basic_auth_debug_hides_password() {
        let s = format!("{:?}", BasicAuth::new("alice", "s3cret"));
        assert!(s.contains("alice") && !s.contains("s3cret"), "{s}");
    }

    #[tokio::test]
    async fn keyed_locks_serialize_one_key_only() {
        let locks = Arc::new(KeyedLocks::default());
        let a = locks.lock("a").await;
        // Another key is free.
        let b = tokio::time::timeout(std::time::Duration::from_secs(5), locks.lock("b")).await;
        assert!(b.is_ok());
        // The same key waits until released.
        let l2 = Arc::clone(&locks);
        let waiter = tokio::spawn(async move {
            let _g = l2.lock("a").await;
        });
        tokio::task::yield_now().await;
        assert!(!waiter.is_finished());
        drop(a);
        waiter.await.unwrap();
    }

    #[tokio::test]
    async fn invalid_references_are_rejected_before_any_io() {
        let dir = tempfile::tempdir().unwrap();
        let cache = ImageCache::new(ImageConfig::new(dir.path())).unwrap();
        let e = cache.ensure_rootfs("Not A Reference!").await.unwrap_err();
        assert!(matches!(e, ImageError::InvalidReference { .. }), "{e}");
        assert!(e.to_string().contains("\"Not A Reference!\""), "{e}");
        let e = cache
            .ensure_rootfs(&format!("127.0.0.1:1/x@sha512:{}", "a".repeat(128)))
            .await
            .unwrap_err();
        assert!(matches!(e, ImageError::UnsupportedDigest { .. }), "{e}");
        assert_eq!(cache.stats(), CacheStats::default());
    }

    #[tokio::test]
    async fn new_removes_work_of_dead_processes_only() {
        let dir = tempfile::tempdir().unwrap();
        let tmp = dir.path().join("tmp");
        // pid_max is at most 2^22, so this pid cannot be running.
        std::fs::create_dir_all(tmp.join("99999999.0/rootfs-x/rootfs")).unwrap();
        std::fs::write(tmp.join("blob-legacy"), b"x").unwrap();
        // pid 1 is alive: its work area stays.
        std::fs::create_dir_all(tmp.join("1.0")).unwrap();
        let cache = ImageCache::new(ImageConfig::new(dir.path())).unwrap();
        let mut left: Vec<_> = std::fs::read_dir(&tmp)
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect();
        left.sort();
        let mine = cache
            .tmp_dir()
            .file_name()
            .unwrap()
            .to_str()
            .unwrap()
            .to_string();
        assert!(
            mine.starts_with(&format!("{}.", std::process::id())),
            "{mine}"
        );
        let mut expected = vec!["1.0".to_string(), mine];
        expected.sort();
        assert_eq!(left, expected);
        for d in ["blobs/sha256", "rootfs", "tags"] {
            assert!(dir.path().join(d).is_dir());
        }
        // A second instance over the same directory does not disturb the first.
        let second = ImageCache::new(ImageConfig::new(dir.path())).unwrap();
        assert!(cache.tmp_dir().is_dir() && second.tmp_dir().is_dir());
        assert_ne!(cache.tmp_dir(), second.tmp_dir());
        // Dropping an instance removes its work area.
        let second_tmp = second.tmp_dir();
        drop(second);
        assert!(!second_tmp.exists());
    }

    fn one_file_tar(name: &str, data: &[u8]) -> Vec<u8> {
        let mut b = tar::Builder::new(Vec::new());
        let mut h = tar::Header::new_gnu();
        h.set_mode(0o644);
        h.set_size(data.len() as u64);
        b.append_data(&mut h, name, data).unwrap();
        b.into_inner().unwrap()
    }

    #[test]
    fn unpack_work_decompresses_and_checks_diff_ids() {
        let dir = tempfile::tempdir().unwrap();
        let mut layers = Vec::new();
        for (i, compression) in [Compression::None, Compression::Gzip, Compression::Zstd]
            .into_iter()
            .enumerate()
        {
            let tar = one_file_tar(&format!("f{i}"), format!("layer {i}").as_bytes());
            let blob = match compression {
                Compression::None => tar.clone(),
                Compression::Gzip => {
                    let mut gz =
                        flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
                    gz.write_all(&tar).unwrap();
                    gz.finish().unwrap()
                }
                Compression::Zstd => zstd::encode_all(tar.as_slice(), 3).unwrap(),
            };
            let path = dir.path().join(format!("blob{i}"));
            std::fs::write(&path, &blob).unwrap();
            layers.push((format!("layer{i}"), path, compression, sha256_digest(&tar)));
        }
        let work = |out: &str, layers: Vec<(String, PathBuf, Compression, String)>| UnpackWork {
            dir: dir.path().join(out),
            reference: "r".into(),
            layers,
            limits: ImageLimits::default(),
            meta: EntryMeta {
                manifest_digest: "m".into(),
                platform_manifest_digest: "m".into(),
                layers: vec![],
                config: ImageRuntimeConfig::default(),
            },
        };
        std::fs::create_dir(dir.path().join("ok")).unwrap();
        work("ok", layers.clone()).run().unwrap();
        for i in 0..3 {
            assert_eq!(
                std::fs::read(dir.path().join(format!("ok/rootfs/f{i}"))).unwrap(),
                format!("layer {i}").as_bytes()
            );
        }
        assert!(dir.path().join("ok/image.json").is_file());

        let mut lying = layers;
        lying[2].3 = format!("sha256:{}", "0".repeat(64));
        std::fs::create_dir(dir.path().join("bad")).unwrap();
        let e = work("bad", lying).run().unwrap_err();
        assert!(matches!(e, ImageError::DiffIdMismatch { .. }), "{e}");
        assert!(e.to_string().contains("layer2"), "{e}");
        assert!(!dir.path().join("bad/image.json").exists());
    }
}
