//! Snapshot store configuration and the object store it opens.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use object_store::ObjectStore;
use object_store::path::Path as ObjPath;

use super::SnapshotError;

/// S3 connection options. Each unset field falls back to the standard `AWS_*` environment
/// variables (`AWS_ENDPOINT_URL`/`AWS_ENDPOINT`, `AWS_REGION`/`AWS_DEFAULT_REGION`,
/// `AWS_ALLOW_HTTP`, `AWS_ACCESS_KEY_ID`, `AWS_SECRET_ACCESS_KEY`, `AWS_SESSION_TOKEN`, ...),
/// then to the instance/web-identity credential providers of `object_store`.
#[derive(Clone, Default)]
pub struct S3Options {
    /// e.g. `http://127.0.0.1:9000` for an S3-compatible server (path-style requests).
    pub endpoint: Option<String>,
    pub region: Option<String>,
    /// Permit `http://` endpoints.
    pub allow_http: Option<bool>,
    pub access_key_id: Option<String>,
    pub secret_access_key: Option<String>,
    pub session_token: Option<String>,
}

impl std::fmt::Debug for S3Options {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("S3Options")
            .field("endpoint", &self.endpoint)
            .field("region", &self.region)
            .field("allow_http", &self.allow_http)
            .field("access_key_id", &self.access_key_id)
            .field(
                "secret_access_key",
                &self.secret_access_key.as_ref().map(|_| "<redacted>"),
            )
            .field(
                "session_token",
                &self.session_token.as_ref().map(|_| "<redacted>"),
            )
            .finish()
    }
}

/// Configuration of a [`super::SnapshotStore`].
#[derive(Debug, Clone)]
pub struct SnapshotConfig {
    /// Where snapshots live: `file:///var/lib/substrate/snapshots`, `s3://bucket/prefix`,
    /// `gs://bucket/prefix`, or `memory:///` (in-process, for tests of other components).
    pub url: String,
    /// Node-local cache of uncompressed snapshots. Put it on the filesystem where fetch
    /// destinations and checkpoint directories live: cache fills and hits are then hard links.
    /// One `SnapshotStore` per cache directory (opening one clears its `tmp/`).
    pub cache_dir: PathBuf,
    /// Cache budget; least recently used entries (by mtime) go beyond it. 0 disables caching.
    pub cache_max_bytes: u64,
    /// Largest checkpoint file accepted, on upload and on fetch (bounds decompression).
    pub max_file_bytes: u64,
    /// zstd level for uploads (default 3).
    pub zstd_level: i32,
    /// Multipart part size; objects whose compressed size reaches it are uploaded in parts.
    /// At least 5 MiB (S3's minimum).
    pub part_size: usize,
    /// Parts of one object uploaded concurrently.
    pub upload_concurrency: usize,
    /// Re-hash cached files on every cache hit (sizes are always checked).
    pub verify_cache_digests: bool,
    /// Uncommitted snapshots younger than this are left alone by GC (they may be uploads in
    /// progress).
    pub gc_grace: Duration,
    /// `file://` stores: fsync objects and directories before an upload returns.
    pub local_fsync: bool,
    pub s3: S3Options,
}

/// S3's smallest part size.
pub const MIN_PART_SIZE: usize = 5 * 1024 * 1024;

impl SnapshotConfig {
    /// Defaults: zstd level 3, 8 MiB parts × 4 in flight, 64 GiB per file, 10 GiB cache,
    /// 1 h GC grace, fsync on, S3 options from the environment.
    pub fn new(url: impl Into<String>, cache_dir: impl Into<PathBuf>) -> Self {
        Self {
            url: url.into(),
            cache_dir: cache_dir.into(),
            cache_max_bytes: 10 << 30,
            max_file_bytes: 64 << 30,
            zstd_level: 3,
            part_size: 8 << 20,
            upload_concurrency: 4,
            verify_cache_digests: false,
            gc_grace: Duration::from_secs(3600),
            local_fsync: true,
            s3: S3Options::default(),
        }
    }

    pub(crate) fn validate(&self) -> Result<(), SnapshotError> {
        let bad = |field, reason: String| Err(SnapshotError::InvalidConfig { field, reason });
        let levels = zstd::compression_level_range();
        if !levels.contains(&self.zstd_level) {
            return bad(
                "zstd_level",
                format!(
                    "{} is outside {}..={}",
                    self.zstd_level,
                    levels.start(),
                    levels.end()
                ),
            );
        }
        if self.part_size < MIN_PART_SIZE || self.part_size > (5 << 30) {
            return bad(
                "part_size",
                format!(
                    "{} bytes is outside {MIN_PART_SIZE}..=5 GiB",
                    self.part_size
                ),
            );
        }
        if self.upload_concurrency == 0 {
            return bad("upload_concurrency", "must be at least 1".to_string());
        }
        if self.max_file_bytes == 0 {
            return bad("max_file_bytes", "must be at least 1".to_string());
        }
        if self.cache_dir.as_os_str().is_empty() {
            return bad("cache_dir", "must not be empty".to_string());
        }
        Ok(())
    }
}

/// An opened store: the client, the path prefix inside it, and the canonical URL.
pub(crate) struct Backend {
    pub store: Arc<dyn ObjectStore>,
    pub base: ObjPath,
    pub base_url: String,
    /// For `file://`: the directory (GC also sweeps what `object_store` does not list).
    pub local_root: Option<PathBuf>,
}

pub(crate) fn normalize_url(url: &str) -> Result<url::Url, SnapshotError> {
    let invalid = |reason: String| SnapshotError::InvalidConfig {
        field: "url",
        reason: format!("{url:?}: {reason}"),
    };
    let parsed = url::Url::parse(url).map_err(|e| invalid(e.to_string()))?;
    if parsed.query().is_some() || parsed.fragment().is_some() {
        return Err(invalid("must not have a query or fragment".to_string()));
    }
    Ok(parsed)
}

/// The URL without trailing slashes: snapshot URIs are `<base_url>/<atespace>/<actor>/<id>`.
pub(crate) fn base_url(url: &url::Url) -> String {
    url.as_str().trim_end_matches('/').to_string()
}

pub(crate) fn open(cfg: &SnapshotConfig) -> Result<Backend, SnapshotError> {
    let url = normalize_url(&cfg.url)?;
    let invalid = |reason: String| SnapshotError::InvalidConfig {
        field: "url",
        reason: format!("{:?}: {reason}", cfg.url),
    };
    let open_err = |source| SnapshotError::OpenStore {
        url: cfg.url.clone(),
        source,
    };
    let prefix =
        || ObjPath::from_url_path(url.path()).map_err(|e| invalid(format!("bad path: {e}")));
    let bucket = || match url.host_str() {
        Some(h) if !h.is_empty() => Ok(h.to_string()),
        _ => Err(invalid("no bucket name".to_string())),
    };
    match url.scheme() {
        "file" => {
            if url
                .host_str()
                .is_some_and(|h| !h.is_empty() && h != "localhost")
            {
                return Err(invalid("file URLs must not name a host".to_string()));
            }
            let dir = url
                .to_file_path()
                .map_err(|()| invalid("not an absolute local path".to_string()))?;
            std::fs::create_dir_all(&dir)
                .map_err(|e| SnapshotError::io("create snapshot directory", &dir, e))?;
            let store = object_store::local::LocalFileSystem::new_with_prefix(&dir)
                .map_err(open_err)?
                .with_automatic_cleanup(true)
                .with_fsync(cfg.local_fsync);
            Ok(Backend {
                store: Arc::new(store),
                base: ObjPath::default(),
                base_url: base_url(&url),
                local_root: Some(dir),
            })
        }
        "s3" | "s3a" => {
            let mut b = object_store::aws::AmazonS3Builder::from_env().with_bucket_name(bucket()?);
            let o = &cfg.s3;
            if let Some(v) = &o.endpoint {
                b = b.with_endpoint(v);
            }
            if let Some(v) = &o.region {
                b = b.with_region(v);
            }
            if let Some(v) = o.allow_http {
                b = b.with_allow_http(v);
            }
            if let Some(v) = &o.access_key_id {
                b = b.with_access_key_id(v);
            }
            if let Some(v) = &o.secret_access_key {
                b = b.with_secret_access_key(v);
            }
            if let Some(v) = &o.session_token {
                b = b.with_token(v);
            }
            Ok(Backend {
                store: Arc::new(b.build().map_err(open_err)?),
                base: prefix()?,
                base_url: base_url(&url),
                local_root: None,
            })
        }
        "gs" => {
            let b = object_store::gcp::GoogleCloudStorageBuilder::from_env()
                .with_bucket_name(bucket()?);
            Ok(Backend {
                store: Arc::new(b.build().map_err(open_err)?),
                base: prefix()?,
                base_url: base_url(&url),
                local_root: None,
            })
        }
        "memory" => Ok(Backend {
            store: Arc::new(object_store::memory::InMemory::new()),
            base: prefix()?,
            base_url: base_url(&url),
            local_root: None,
        }),
        other => Err(invalid(format!(
            "scheme {other:?} is not supported (file, s3, gs, memory)"
        ))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg(url: &str) -> SnapshotConfig {
        SnapshotConfig::new(url, "/tmp/unused-cache")
    }

    #[test]
    fn urls_are_parsed() {
        let b = open(&cfg("s3://bucket/some/prefix/")).unwrap();
        assert_eq!(b.base.as_ref(), "some/prefix");
        assert_eq!(b.base_url, "s3://bucket/some/prefix");
        let b = open(&cfg("memory:///p")).unwrap();
        assert_eq!(b.base.as_ref(), "p");
        let dir = tempfile::tempdir().unwrap();
        let url = format!("file://{}/snaps/", dir.path().display());
        let b = open(&cfg(&url)).unwrap();
        assert_eq!(b.base.as_ref(), "");
        assert_eq!(b.local_root.unwrap(), dir.path().join("snaps"));
        assert!(dir.path().join("snaps").is_dir());
        assert_eq!(b.base_url, url.trim_end_matches('/'));

        for (url, want) in [
            ("ftp://x/y", "scheme \"ftp\" is not supported"),
            ("s3:///prefix", "no bucket name"),
            ("file://host/x", "must not name a host"),
            ("not a url", "relative URL"),
            ("s3://b/p?x=1", "query"),
        ] {
            let err = open(&cfg(url)).err().unwrap();
            assert!(err.to_string().contains(want), "{url}: {err}");
        }
    }

    #[test]
    fn config_limits_are_checked() {
        let mut c = cfg("memory:///");
        assert!(c.validate().is_ok());
        c.zstd_level = 99;
        assert!(c.validate().unwrap_err().to_string().contains("zstd_level"));
        c = cfg("memory:///");
        c.part_size = 1024;
        assert!(c.validate().unwrap_err().to_string().contains("part_size"));
    }

    #[test]
    fn secrets_are_not_printed() {
        let o = S3Options {
            secret_access_key: Some("hunter2".into()),
            session_token: Some("tok".into()),
            ..Default::default()
        };
        let s = format!("{o:?}");
        assert!(!s.contains("hunter2") && !s.contains("tok\""), "{s}");
    }
}
