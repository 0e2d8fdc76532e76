//! Building small single-layer OCI images from host files, without Docker, and pushing them.
//!
//! The image is fully determined by its inputs (file bytes, paths, modes, process config):
//!
//! - one layer: a GNU tar with the files and their parent directories (mode 0755), sorted by
//!   path, every entry owned by 0:0 with mtime 0 and no user/group names, gzip-compressed at
//!   level 9 with a zero gzip mtime and no file name;
//! - an OCI image config (`application/vnd.oci.image.config.v1+json`) for linux on this node's
//!   architecture, `created` fixed at the epoch, exposed ports in sorted order;
//! - an OCI image manifest (`application/vnd.oci.image.manifest.v1+json`).
//!
//! So pushing the same files twice gives the same manifest digest. Everything is held in memory:
//! this is for small images such as the `counter` demo, not for general image building.

use std::collections::{BTreeMap, BTreeSet};
use std::io::Write;
use std::os::unix::fs::PermissionsExt;
use std::path::PathBuf;
use std::str::FromStr;

use oci_client::Reference;
use oci_client::errors::OciDistributionError;
use serde::Serialize;
use tracing::{debug, info};

use super::{BasicAuth, RegistryFailure, classify, client_config, registry_auth, sha256_digest};

/// Media type of the layer this module builds.
pub const LAYER_MEDIA_TYPE: &str = oci_client::manifest::IMAGE_LAYER_GZIP_MEDIA_TYPE;
/// Media type of the image config.
pub const CONFIG_MEDIA_TYPE: &str = oci_client::manifest::IMAGE_CONFIG_MEDIA_TYPE;
/// Media type of the manifest.
pub const MANIFEST_MEDIA_TYPE: &str = oci_client::manifest::OCI_IMAGE_MEDIA_TYPE;

/// Errors while building an image.
#[derive(Debug, thiserror::Error)]
pub enum BuildError {
    #[error(
        "file spec {spec:?}: {reason} (expected <host-path>:<absolute-path-in-image>[:octal-mode])"
    )]
    BadFileSpec { spec: String, reason: String },
    #[error("path in image {path:?}: {reason}")]
    BadImagePath { path: String, reason: String },
    #[error("reading {path}: {source}")]
    ReadFile {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{path} is not a regular file")]
    NotAFile { path: PathBuf },
    #[error("env entry {entry:?} is not KEY=value with a non-empty KEY")]
    BadEnv { entry: String },
    #[error("port {port:?} is not <1-65535>[/tcp|/udp|/sctp]")]
    BadPort { port: String },
    #[error("writing the layer: {0}")]
    Archive(#[source] std::io::Error),
}

/// Errors while pushing an image.
#[derive(Debug, thiserror::Error)]
pub enum PushError {
    #[error("invalid image reference {reference:?}: {source}")]
    InvalidReference {
        reference: String,
        #[source]
        source: oci_client::ParseError,
    },
    #[error("image reference {reference:?}: push needs a tag, not a digest")]
    DigestReference { reference: String },
    #[error("registry {registry} rejected the credentials of user {username:?} (HTTP 401)")]
    CredentialsRejected { registry: String, username: String },
    #[error("registry {registry} requires authentication and no credentials were given")]
    AuthenticationRequired { registry: String },
    #[error("registry {registry} unreachable: {source}")]
    Unreachable {
        registry: String,
        #[source]
        source: OciDistributionError,
    },
    #[error("registry {registry}: {step} failed: {source}")]
    Registry {
        registry: String,
        step: &'static str,
        #[source]
        source: OciDistributionError,
    },
}

/// One file to put into the image: `<source>` on the host becomes `<dest>` in the image.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FileSpec {
    pub source: PathBuf,
    /// Absolute, normalized path in the image, e.g. `/counter`.
    pub dest: String,
    /// Permission bits (e.g. `0o755`); `None`: 0755 if the host file is executable by its owner,
    /// else 0644.
    pub mode: Option<u32>,
}

impl FromStr for FileSpec {
    type Err = BuildError;

    /// `<host-path>:<path-in-image>[:mode]`, mode in octal. The host path may contain `:`.
    fn from_str(spec: &str) -> Result<Self, Self::Err> {
        let bad = |reason: &str| BuildError::BadFileSpec {
            spec: spec.to_string(),
            reason: reason.to_string(),
        };
        let parts: Vec<&str> = spec.split(':').collect();
        let (source_parts, dest, mode) = match parts.as_slice() {
            [] | [_] => return Err(bad("missing ':<path-in-image>'")),
            [.., dest, mode]
                if parts.len() >= 3
                    && !mode.is_empty()
                    && mode.bytes().all(|b| (b'0'..=b'7').contains(&b)) =>
            {
                let m = u32::from_str_radix(mode, 8).map_err(|_| bad("bad mode"))?;
                if m > 0o7777 {
                    return Err(bad("mode above 7777"));
                }
                (&parts[..parts.len() - 2], *dest, Some(m))
            }
            [.., dest] => (&parts[..parts.len() - 1], *dest, None),
        };
        let source = source_parts.join(":");
        if source.is_empty() {
            return Err(bad("empty host path"));
        }
        validate_image_path(dest)?;
        Ok(FileSpec {
            source: PathBuf::from(source),
            dest: dest.to_string(),
            mode,
        })
    }
}

/// Checks that `path` is absolute and normalized (no empty, `.` or `..` components) and not `/`.
fn validate_image_path(path: &str) -> Result<(), BuildError> {
    let bad = |reason: &str| BuildError::BadImagePath {
        path: path.to_string(),
        reason: reason.to_string(),
    };
    let Some(rest) = path.strip_prefix('/') else {
        return Err(bad("must be absolute"));
    };
    if rest.is_empty() {
        return Err(bad("must name a file, not the root"));
    }
    for c in rest.split('/') {
        match c {
            "" => return Err(bad("empty component (double or trailing '/')")),
            "." | ".." => return Err(bad("'.' and '..' are not allowed")),
            c if c.starts_with(".wh.") => return Err(bad("'.wh.' names are whiteouts")),
            _ => {}
        }
    }
    if path.contains('\0') {
        return Err(bad("NUL byte"));
    }
    Ok(())
}

/// What goes into an image.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ImageSpec {
    pub files: Vec<FileSpec>,
    pub entrypoint: Vec<String>,
    pub cmd: Vec<String>,
    /// `KEY=value`.
    pub env: Vec<String>,
    pub working_dir: Option<String>,
    /// `8080` or `8080/tcp`, `53/udp`.
    pub exposed_ports: Vec<String>,
    pub user: Option<String>,
}

/// A built image, ready to push.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BuiltImage {
    /// The gzip-compressed layer.
    pub layer: Vec<u8>,
    pub layer_digest: String,
    /// Digest of the uncompressed layer tar.
    pub diff_id: String,
    pub config: Vec<u8>,
    pub config_digest: String,
    pub manifest: Vec<u8>,
    pub manifest_digest: String,
}

#[derive(Serialize)]
struct ConfigJson<'a> {
    created: &'static str,
    architecture: &'static str,
    os: &'static str,
    config: ProcessJson<'a>,
    rootfs: RootfsJson,
    history: [HistoryJson; 1],
}

#[derive(Serialize)]
#[serde(rename_all = "PascalCase")]
struct ProcessJson<'a> {
    #[serde(skip_serializing_if = "Option::is_none")]
    user: Option<&'a str>,
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    exposed_ports: BTreeMap<String, BTreeMap<(), ()>>,
    #[serde(skip_serializing_if = "<[_]>::is_empty")]
    env: &'a [String],
    #[serde(skip_serializing_if = "<[_]>::is_empty")]
    entrypoint: &'a [String],
    #[serde(skip_serializing_if = "<[_]>::is_empty")]
    cmd: &'a [String],
    #[serde(skip_serializing_if = "Option::is_none")]
    working_dir: Option<&'a str>,
}

#[derive(Serialize)]
struct RootfsJson {
    #[serde(rename = "type")]
    kind: &'static str,
    diff_ids: [String; 1],
}

#[derive(Serialize)]
struct HistoryJson {
    created: &'static str,
    created_by: &'static str,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct ManifestJson {
    schema_version: u32,
    media_type: &'static str,
    config: DescriptorJson,
    layers: [DescriptorJson; 1],
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct DescriptorJson {
    media_type: &'static str,
    digest: String,
    size: u64,
}

fn normalize_port(port: &str) -> Result<String, BuildError> {
    let bad = || BuildError::BadPort {
        port: port.to_string(),
    };
    let (num, proto) = port.split_once('/').unwrap_or((port, "tcp"));
    let n: u16 = num.parse().map_err(|_| bad())?;
    if n == 0 || !matches!(proto, "tcp" | "udp" | "sctp") {
        return Err(bad());
    }
    Ok(format!("{n}/{proto}"))
}

/// Builds the image described by `spec`, reading the files from the host.
pub fn build_image(spec: &ImageSpec) -> Result<BuiltImage, BuildError> {
    for e in &spec.env {
        match e.split_once('=') {
            Some((k, _)) if !k.is_empty() => {}
            _ => return Err(BuildError::BadEnv { entry: e.clone() }),
        }
    }
    let ports = spec
        .exposed_ports
        .iter()
        .map(|p| normalize_port(p))
        .collect::<Result<BTreeSet<_>, _>>()?;
    if let Some(w) = &spec.working_dir {
        validate_image_path(w).or_else(|e| if w == "/" { Ok(()) } else { Err(e) })?;
    }

    // Entries by path in the image (without the leading '/'): None = directory.
    let mut entries: BTreeMap<String, Option<(Vec<u8>, u32)>> = BTreeMap::new();
    for f in &spec.files {
        validate_image_path(&f.dest)?;
        let meta = std::fs::metadata(&f.source).map_err(|source| BuildError::ReadFile {
            path: f.source.clone(),
            source,
        })?;
        if !meta.is_file() {
            return Err(BuildError::NotAFile {
                path: f.source.clone(),
            });
        }
        let data = std::fs::read(&f.source).map_err(|source| BuildError::ReadFile {
            path: f.source.clone(),
            source,
        })?;
        let mode = f.mode.unwrap_or(if meta.permissions().mode() & 0o100 != 0 {
            0o755
        } else {
            0o644
        });
        let rel = f.dest.trim_start_matches('/').to_string();
        let mut parent = String::new();
        let comps: Vec<&str> = rel.split('/').collect();
        for c in &comps[..comps.len() - 1] {
            if !parent.is_empty() {
                parent.push('/');
            }
            parent.push_str(c);
            if let Some(Some(_)) = entries.get(&parent) {
                return Err(BuildError::BadImagePath {
                    path: f.dest.clone(),
                    reason: format!("/{parent} is also a file"),
                });
            }
            entries.insert(parent.clone(), None);
        }
        match entries.get(&rel) {
            Some(Some(_)) => {
                return Err(BuildError::BadImagePath {
                    path: f.dest.clone(),
                    reason: "given twice".to_string(),
                });
            }
            Some(None) => {
                return Err(BuildError::BadImagePath {
                    path: f.dest.clone(),
                    reason: "is also a directory of another file".to_string(),
                });
            }
            None => {}
        }
        entries.insert(rel, Some((data, mode)));
    }

    let mut tar = tar::Builder::new(Vec::new());
    for (path, entry) in &entries {
        let mut h = tar::Header::new_gnu();
        h.set_uid(0);
        h.set_gid(0);
        h.set_mtime(0);
        match entry {
            None => {
                h.set_entry_type(tar::EntryType::Directory);
                h.set_mode(0o755);
                h.set_size(0);
                tar.append_data(&mut h, format!("{path}/"), std::io::empty())
            }
            Some((data, mode)) => {
                h.set_entry_type(tar::EntryType::Regular);
                h.set_mode(*mode);
                h.set_size(data.len() as u64);
                tar.append_data(&mut h, path, data.as_slice())
            }
        }
        .map_err(BuildError::Archive)?;
    }
    let tar = tar.into_inner().map_err(BuildError::Archive)?;
    let diff_id = sha256_digest(&tar);

    let mut gz = flate2::GzBuilder::new()
        .mtime(0)
        .write(Vec::new(), flate2::Compression::best());
    gz.write_all(&tar).map_err(BuildError::Archive)?;
    let layer = gz.finish().map_err(BuildError::Archive)?;
    let layer_digest = sha256_digest(&layer);

    let config = ConfigJson {
        created: "1970-01-01T00:00:00Z",
        architecture: super::node_architecture(),
        os: "linux",
        config: ProcessJson {
            user: spec.user.as_deref(),
            exposed_ports: ports.into_iter().map(|p| (p, BTreeMap::new())).collect(),
            env: &spec.env,
            entrypoint: &spec.entrypoint,
            cmd: &spec.cmd,
            working_dir: spec.working_dir.as_deref(),
        },
        rootfs: RootfsJson {
            kind: "layers",
            diff_ids: [diff_id.clone()],
        },
        history: [HistoryJson {
            created: "1970-01-01T00:00:00Z",
            created_by: "substrate-image push",
        }],
    };
    // Invariant: these plain structs always serialize.
    let config = serde_json::to_vec(&config).expect("image config serializes");
    let config_digest = sha256_digest(&config);
    let manifest = ManifestJson {
        schema_version: 2,
        media_type: MANIFEST_MEDIA_TYPE,
        config: DescriptorJson {
            media_type: CONFIG_MEDIA_TYPE,
            digest: config_digest.clone(),
            size: config.len() as u64,
        },
        layers: [DescriptorJson {
            media_type: LAYER_MEDIA_TYPE,
            digest: layer_digest.clone(),
            size: layer.len() as u64,
        }],
    };
    let manifest = serde_json::to_vec(&manifest).expect("image manifest serializes");
    let manifest_digest = sha256_digest(&manifest);
    debug!(
        manifest = %manifest_digest,
        layer = %layer_digest,
        layer_bytes = layer.len(),
        "image built"
    );
    Ok(BuiltImage {
        layer,
        layer_digest,
        diff_id,
        config,
        config_digest,
        manifest,
        manifest_digest,
    })
}

/// How to reach the registry when pushing.
#[derive(Debug, Clone, Default)]
pub struct PushOptions {
    /// Use plain HTTP for the reference's registry.
    pub insecure: bool,
    pub auth: Option<BasicAuth>,
}

/// Pushes `image` as `reference` (`registry/repository[:tag]`, tag `latest` by default) and
/// returns the manifest digest (`sha256:...`). Blobs the registry already has are not sent again.
pub async fn push_image(
    image: &BuiltImage,
    reference: &str,
    options: &PushOptions,
) -> Result<String, PushError> {
    let parsed: Reference = reference
        .parse()
        .map_err(|source| PushError::InvalidReference {
            reference: reference.to_string(),
            source,
        })?;
    if parsed.digest().is_some() {
        return Err(PushError::DigestReference {
            reference: reference.to_string(),
        });
    }
    let registry = parsed.registry().to_string();
    let insecure = if options.insecure {
        vec![parsed.resolve_registry().to_string()]
    } else {
        Vec::new()
    };
    let fail = |step: &'static str| {
        let registry = registry.clone();
        let auth = options.auth.clone();
        move |source: OciDistributionError| match classify(&source) {
            RegistryFailure::Unauthorized => match auth {
                Some(a) => PushError::CredentialsRejected {
                    registry,
                    username: a.username,
                },
                None => PushError::AuthenticationRequired { registry },
            },
            RegistryFailure::Unreachable => PushError::Unreachable { registry, source },
            _ => PushError::Registry {
                registry,
                step,
                source,
            },
        }
    };
    let client = oci_client::Client::try_from(client_config(&insecure))
        .map_err(fail("creating the client"))?;
    let auth = registry_auth(options.auth.as_ref());
    client
        .auth(&parsed, &auth, oci_client::RegistryOperation::Push)
        .await
        .map_err(fail("authenticating"))?;
    for (what, bytes, digest) in [
        ("layer", &image.layer, &image.layer_digest),
        ("config", &image.config, &image.config_digest),
    ] {
        if client
            .blob_exists(&parsed, digest)
            .await
            .map_err(fail("checking for a blob"))?
        {
            debug!(blob = %digest, what, "registry already has blob");
            continue;
        }
        client
            .push_blob(&parsed, bytes.clone(), digest)
            .await
            .map_err(fail("uploading a blob"))?;
        debug!(blob = %digest, what, bytes = bytes.len(), "blob pushed");
    }
    client
        .push_manifest_raw(
            &parsed,
            image.manifest.clone(),
            http::HeaderValue::from_static(MANIFEST_MEDIA_TYPE),
        )
        .await
        .map_err(fail("uploading the manifest"))?;
    info!(reference = %parsed.whole(), digest = %image.manifest_digest, "image pushed");
    Ok(image.manifest_digest.clone())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(s: &str) -> Result<FileSpec, BuildError> {
        s.parse()
    }

    #[test]
    fn parses_file_specs() {
        assert_eq!(
            spec("/tmp/counter:/counter").unwrap(),
            FileSpec {
                source: "/tmp/counter".into(),
                dest: "/counter".into(),
                mode: None
            }
        );
        assert_eq!(spec("a:/bin/x:0755").unwrap().mode, Some(0o755));
        assert_eq!(spec("a:/bin/x:4755").unwrap().mode, Some(0o4755));
        // A host path with a colon.
        let f = spec("dir:with:colon/f:/f:644").unwrap();
        assert_eq!(
            (f.source.to_str().unwrap(), f.mode),
            ("dir:with:colon/f", Some(0o644))
        );
        for bad in [
            "nocolon",
            ":/x",
            "a:relative",
            "a:/",
            "a:/x/../y",
            "a:/x//y",
            "a:/x:0999",
        ] {
            let e = spec(bad).unwrap_err();
            assert!(
                matches!(
                    e,
                    BuildError::BadFileSpec { .. } | BuildError::BadImagePath { .. }
                ),
                "{bad}: {e}"
            );
        }
        let e = spec("a:/x:17777").unwrap_err();
        assert!(e.to_string().contains("mode above 7777"), "{e}");
    }

    #[test]
    fn ports_are_normalized() {
        assert_eq!(normalize_port("8080").unwrap(), "8080/tcp");
        assert_eq!(normalize_port("53/udp").unwrap(), "53/udp");
        for bad in ["0", "70000", "80/icmp", "x"] {
            assert!(normalize_port(bad).is_err(), "{bad}");
        }
    }

    fn write(dir: &std::path::Path, name: &str, data: &[u8], mode: u32) -> PathBuf {
        let p = dir.join(name);
        std::fs::write(&p, data).unwrap();
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(mode)).unwrap();
        p
    }

    #[test]
    fn builds_reproducibly_and_correctly() {
        let dir = tempfile::tempdir().unwrap();
        let bin = write(dir.path(), "bin", b"\x7fELF fake", 0o700);
        let txt = write(dir.path(), "txt", b"hello", 0o600);
        let s = ImageSpec {
            files: vec![
                FileSpec {
                    source: txt.clone(),
                    dest: "/etc/app/greeting".into(),
                    mode: None,
                },
                FileSpec {
                    source: bin.clone(),
                    dest: "/counter".into(),
                    mode: None,
                },
            ],
            entrypoint: vec!["/counter".into()],
            env: vec!["PORT=8080".into()],
            exposed_ports: vec!["8080".into(), "9/udp".into()],
            ..ImageSpec::default()
        };
        let a = build_image(&s).unwrap();
        // Touching the files (mtime, owner-irrelevant bits) changes nothing.
        std::thread::sleep(std::time::Duration::from_millis(10));
        std::fs::write(&txt, b"hello").unwrap();
        let b = build_image(&s).unwrap();
        assert_eq!(a, b);
        assert_eq!(a.manifest_digest, sha256_digest(&a.manifest));

        // The layer holds the expected entries.
        let tar = flate2::read::GzDecoder::new(a.layer.as_slice());
        let mut archive = tar::Archive::new(tar);
        let mut seen = Vec::new();
        for e in archive.entries().unwrap() {
            let e = e.unwrap();
            let h = e.header();
            seen.push((
                e.path().unwrap().to_string_lossy().into_owned(),
                h.mode().unwrap(),
                h.uid().unwrap(),
                h.mtime().unwrap(),
            ));
        }
        assert_eq!(
            seen,
            vec![
                ("counter".to_string(), 0o755, 0, 0),
                ("etc/".to_string(), 0o755, 0, 0),
                ("etc/app/".to_string(), 0o755, 0, 0),
                ("etc/app/greeting".to_string(), 0o644, 0, 0),
            ]
        );
        let config: serde_json::Value = serde_json::from_slice(&a.config).unwrap();
        assert_eq!(
            config["config"]["Entrypoint"],
            serde_json::json!(["/counter"])
        );
        assert_eq!(
            config["config"]["ExposedPorts"],
            serde_json::json!({"8080/tcp": {}, "9/udp": {}})
        );
        assert_eq!(
            config["rootfs"]["diff_ids"][0],
            serde_json::json!(a.diff_id)
        );
        let manifest: serde_json::Value = serde_json::from_slice(&a.manifest).unwrap();
        assert_eq!(
            manifest["layers"][0]["digest"],
            serde_json::json!(a.layer_digest)
        );
        assert_eq!(
            manifest["config"]["size"],
            serde_json::json!(a.config.len())
        );

        // A different mode is a different image.
        let mut s2 = s.clone();
        s2.files[1].mode = Some(0o555);
        assert_ne!(build_image(&s2).unwrap().manifest_digest, a.manifest_digest);
    }

    #[test]
    fn rejects_bad_specs() {
        let dir = tempfile::tempdir().unwrap();
        let f = write(dir.path(), "f", b"x", 0o644);
        let file = |dest: &str| FileSpec {
            source: f.clone(),
            dest: dest.into(),
            mode: None,
        };
        let build = |files: Vec<FileSpec>| {
            build_image(&ImageSpec {
                files,
                ..ImageSpec::default()
            })
            .unwrap_err()
            .to_string()
        };
        assert!(build(vec![file("/a"), file("/a")]).contains("given twice"));
        assert!(build(vec![file("/a"), file("/a/b")]).contains("/a is also a file"));
        assert!(build(vec![file("/a/b"), file("/a")]).contains("also a directory"));
        let e = build(vec![FileSpec {
            source: dir.path().into(),
            dest: "/d".into(),
            mode: None,
        }]);
        assert!(e.contains("is not a regular file"), "{e}");
        let e = build(vec![FileSpec {
            source: dir.path().join("missing"),
            dest: "/d".into(),
            mode: None,
        }]);
        assert!(e.contains("missing"), "{e}");
        let e = build_image(&ImageSpec {
            env: vec!["=x".into()],
            ..ImageSpec::default()
        })
        .unwrap_err();
        assert!(matches!(e, BuildError::BadEnv { .. }), "{e}");
    }
}
