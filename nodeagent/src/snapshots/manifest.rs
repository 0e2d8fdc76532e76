//! Snapshot keys, references, metadata and the manifest (the commit marker).

use std::collections::{BTreeMap, BTreeSet};

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use super::SnapshotError;

/// Name of the manifest object inside a snapshot prefix.
pub const MANIFEST_NAME: &str = "manifest.json";
/// The `kind` every manifest carries.
pub const MANIFEST_KIND: &str = "SnapshotManifest";
/// The manifest format version this build writes and reads.
pub const FORMAT_VERSION: u32 = 1;
/// Suffix of a checkpoint file's object name.
pub const OBJECT_SUFFIX: &str = ".zst";
/// A manifest larger than this is refused before it is read.
pub const MAX_MANIFEST_BYTES: u64 = 1 << 20;
/// Maximum number of files in one snapshot.
pub const MAX_FILES: usize = 1024;

/// Which snapshot: `<atespace>/<actor>/<id>` under the store's prefix.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct SnapshotKey {
    atespace: String,
    actor: String,
    id: String,
}

impl SnapshotKey {
    /// A key from its parts; atespace and actor must be DNS-1123 labels, the id 1–128
    /// characters of `[A-Za-z0-9._-]` not starting with `.`.
    pub fn new(
        atespace: impl Into<String>,
        actor: impl Into<String>,
        id: impl Into<String>,
    ) -> Result<Self, SnapshotError> {
        let key = Self {
            atespace: atespace.into(),
            actor: actor.into(),
            id: id.into(),
        };
        validate_label("atespace", &key.atespace)?;
        validate_label("actor", &key.actor)?;
        validate_id(&key.id)?;
        Ok(key)
    }

    /// A key with a fresh id that sorts by creation time: `<UTC yyyymmddThhmmssZ>-<8 hex>`.
    pub fn generate(
        atespace: impl Into<String>,
        actor: impl Into<String>,
    ) -> Result<Self, SnapshotError> {
        let now = jiff::Timestamp::now().strftime("%Y%m%dT%H%M%S%.3fZ");
        let rand = uuid::Uuid::new_v4().simple().to_string();
        Self::new(atespace, actor, format!("{now}-{}", &rand[..8]))
    }

    /// A key whose id names the actor that owns the snapshot: `s<unix ms>_<uid>` (the node
    /// agent's suspends). Garbage collection tells a deleted actor's snapshots from those of
    /// a newer actor of the same name by this uid (see [`SnapshotKey::owner_uid`]). A uid
    /// that is not `[A-Za-z0-9-]`, 1–64 characters, is left out (`s<unix ms>`).
    pub fn for_owner(
        atespace: impl Into<String>,
        actor: impl Into<String>,
        owner_uid: &str,
        at: jiff::Timestamp,
    ) -> Result<Self, SnapshotError> {
        Self::new(atespace, actor, owner_id(owner_uid, at))
    }

    /// The uid of the actor that wrote the snapshot, when its id records one (ids of the
    /// form `<anything>_<uid>`; older ids, `s<unix ms>`, record none).
    pub fn owner_uid(&self) -> Option<&str> {
        owner_uid_of(&self.id)
    }

    pub fn atespace(&self) -> &str {
        &self.atespace
    }

    pub fn actor(&self) -> &str {
        &self.actor
    }

    pub fn id(&self) -> &str {
        &self.id
    }
}

impl std::fmt::Display for SnapshotKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}/{}", self.atespace, self.actor, self.id)
    }
}

pub(crate) fn validate_label(field: &'static str, value: &str) -> Result<(), SnapshotError> {
    let errs = crds::validation::dns1123_label(value);
    if errs.is_empty() {
        Ok(())
    } else {
        Err(SnapshotError::InvalidKey {
            field,
            value: value.to_string(),
            reason: errs.join("; "),
        })
    }
}

fn is_safe_name(s: &str) -> bool {
    !s.is_empty()
        && !s.starts_with('.')
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'))
}

fn validate_id(id: &str) -> Result<(), SnapshotError> {
    if id.len() <= 128 && is_safe_name(id) {
        Ok(())
    } else {
        Err(SnapshotError::InvalidKey {
            field: "id",
            value: id.to_string(),
            reason: "must be 1-128 characters of [A-Za-z0-9._-] and must not start with '.'"
                .to_string(),
        })
    }
}

/// Separates the time part of a snapshot id from its owner's uid.
const OWNER_SEPARATOR: char = '_';

fn is_uid(s: &str) -> bool {
    (1..=64).contains(&s.len()) && s.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
}

/// A snapshot id for an actor with uid `owner_uid`, taken at `at`: `s<unix ms>_<uid>`
/// (`s<unix ms>` when the uid is not `[A-Za-z0-9-]{1,64}`).
pub fn owner_id(owner_uid: &str, at: jiff::Timestamp) -> String {
    let t = at.as_millisecond();
    if is_uid(owner_uid) {
        format!("s{t}{OWNER_SEPARATOR}{owner_uid}")
    } else {
        format!("s{t}")
    }
}

/// The owner uid an id records (see [`owner_id`]).
pub fn owner_uid_of(id: &str) -> Option<&str> {
    let (_, uid) = id.rsplit_once(OWNER_SEPARATOR)?;
    is_uid(uid).then_some(uid)
}

/// Whether `name` may be a checkpoint file name: 1–255 characters of `[A-Za-z0-9._-]`, not
/// starting with `.` (so no `..`, no hidden files, no path separators).
pub fn is_valid_file_name(name: &str) -> bool {
    name.len() <= 255 && is_safe_name(name)
}

/// A committed snapshot: what `upload` returns and `fetch` takes. Recorded in the actor's
/// status (see the conversions to and from [`crds::substrate::SnapshotRef`]).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct SnapshotRef {
    /// URI of the snapshot prefix: `<store url>/<atespace>/<actor>/<id>`.
    pub uri: String,
    /// `sha256:<hex>` of the manifest's bytes; `fetch` refuses any other manifest.
    pub manifest_digest: String,
    /// Total uncompressed bytes of the checkpoint files (0 when unknown).
    #[serde(default)]
    pub size: u64,
    /// Total bytes stored (compressed objects + manifest; 0 when unknown).
    #[serde(default)]
    pub compressed_size: u64,
    /// When the checkpoint was taken (from the manifest's metadata).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub created_at: Option<jiff::Timestamp>,
}

impl SnapshotRef {
    /// URI of the manifest object (`<uri>/manifest.json`).
    pub fn manifest_uri(&self) -> String {
        format!("{}/{MANIFEST_NAME}", self.uri)
    }
}

impl From<&SnapshotRef> for crds::substrate::SnapshotRef {
    fn from(r: &SnapshotRef) -> Self {
        Self {
            uri: r.manifest_uri(),
            digest: Some(r.manifest_digest.clone()),
            created_at: r
                .created_at
                .map(k8s_openapi::apimachinery::pkg::apis::meta::v1::Time),
            size_bytes: i64::try_from(r.compressed_size).ok(),
        }
    }
}

impl TryFrom<&crds::substrate::SnapshotRef> for SnapshotRef {
    type Error = SnapshotError;

    /// Accepts the manifest URI (`.../manifest.json`, what the status records) or the prefix.
    /// The uncompressed size is not recorded in the status: it comes back as 0.
    fn try_from(r: &crds::substrate::SnapshotRef) -> Result<Self, SnapshotError> {
        let digest = r.digest.clone().ok_or_else(|| SnapshotError::InvalidRef {
            uri: r.uri.clone(),
            reason: "no manifest digest recorded".to_string(),
        })?;
        let uri = r
            .uri
            .strip_suffix(&format!("/{MANIFEST_NAME}"))
            .unwrap_or(&r.uri)
            .to_string();
        Ok(Self {
            uri,
            manifest_digest: digest,
            size: 0,
            compressed_size: r
                .size_bytes
                .and_then(|s| u64::try_from(s).ok())
                .unwrap_or(0),
            created_at: r.created_at.as_ref().map(|t| t.0),
        })
    }
}

/// What is known about a checkpoint besides its bytes; recorded in the manifest.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct SnapshotMeta {
    /// `runsc --version` of the runsc that took the checkpoint (restore needs a compatible one).
    pub runsc_version: String,
    /// runsc platform the sandbox ran on (`systrap`, `ptrace`, `kvm`).
    pub platform: String,
    /// runsc flags of the sandbox that matter to restore (e.g. `--overlay2=root:memory`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub runsc_flags: Vec<String>,
    /// Container name → image digest (`sha256:...`) the sandbox ran.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub image_digests: BTreeMap<String, String>,
    /// When the checkpoint was taken.
    pub created_at: jiff::Timestamp,
    /// Node that took it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub node: Option<String>,
    /// Worker that took it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub worker: Option<String>,
    /// ActorTemplate (`<namespace>/<name>`) the actor runs.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub template: Option<String>,
    /// Free-form extra facts.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub labels: BTreeMap<String, String>,
}

impl SnapshotMeta {
    /// Metadata stamped now, with the required facts.
    pub fn new(runsc_version: impl Into<String>, platform: impl Into<String>) -> Self {
        Self {
            runsc_version: runsc_version.into(),
            platform: platform.into(),
            runsc_flags: Vec::new(),
            image_digests: BTreeMap::new(),
            created_at: jiff::Timestamp::now(),
            node: None,
            worker: None,
            template: None,
            labels: BTreeMap::new(),
        }
    }
}

/// One checkpoint file in the manifest.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ManifestFile {
    /// File name inside the checkpoint directory.
    pub name: String,
    /// Uncompressed size in bytes.
    pub size: u64,
    /// `sha256:<hex>` of the uncompressed content.
    pub sha256: String,
    /// Object name inside the snapshot prefix (`<name>.zst`).
    pub object: String,
    /// Size of the stored (compressed) object.
    pub compressed_size: u64,
    /// `sha256:<hex>` of the stored (compressed) object.
    pub compressed_sha256: String,
}

/// The manifest: written last, its presence commits the snapshot.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Manifest {
    /// Always [`MANIFEST_KIND`].
    pub kind: String,
    /// [`FORMAT_VERSION`]; a reader refuses other versions.
    pub format_version: u32,
    pub atespace: String,
    pub actor: String,
    pub id: String,
    /// Compression of every object: `zstd`.
    pub compression: String,
    /// Checkpoint files, sorted by name.
    pub files: Vec<ManifestFile>,
    pub meta: SnapshotMeta,
}

impl Manifest {
    /// Total uncompressed bytes.
    pub fn total_size(&self) -> u64 {
        self.files.iter().map(|f| f.size).sum()
    }

    /// Total compressed bytes of the file objects.
    pub fn total_compressed_size(&self) -> u64 {
        self.files.iter().map(|f| f.compressed_size).sum()
    }

    /// Parses and checks a manifest read for `key`: kind, version, key, file names (safe,
    /// unique), digests well-formed, sizes within `max_file_bytes`.
    pub fn parse(
        bytes: &[u8],
        uri: &str,
        key: &SnapshotKey,
        max_file_bytes: u64,
    ) -> Result<Self, SnapshotError> {
        let invalid = |reason: String| SnapshotError::InvalidManifest {
            uri: uri.to_string(),
            reason,
        };
        let m: Manifest = serde_json::from_slice(bytes).map_err(|e| invalid(e.to_string()))?;
        if m.kind != MANIFEST_KIND {
            return Err(invalid(format!(
                "kind is {:?}, expected {MANIFEST_KIND:?}",
                m.kind
            )));
        }
        if m.format_version != FORMAT_VERSION {
            return Err(invalid(format!(
                "format version {} is not supported (this build reads {FORMAT_VERSION})",
                m.format_version
            )));
        }
        if m.compression != "zstd" {
            return Err(invalid(format!(
                "compression {:?} is not supported",
                m.compression
            )));
        }
        if (m.atespace.as_str(), m.actor.as_str(), m.id.as_str())
            != (key.atespace(), key.actor(), key.id())
        {
            return Err(invalid(format!(
                "manifest is for {}/{}/{}, not {key}",
                m.atespace, m.actor, m.id
            )));
        }
        if m.files.is_empty() || m.files.len() > MAX_FILES {
            return Err(invalid(format!(
                "{} files; a snapshot has 1 to {MAX_FILES}",
                m.files.len()
            )));
        }
        let mut names = BTreeSet::new();
        for f in &m.files {
            if !is_valid_file_name(&f.name) {
                return Err(invalid(format!("file name {:?} is not allowed", f.name)));
            }
            if !names.insert(f.name.as_str()) {
                return Err(invalid(format!("file {:?} is listed twice", f.name)));
            }
            if f.object != format!("{}{OBJECT_SUFFIX}", f.name) {
                return Err(invalid(format!(
                    "object of file {:?} is {:?}, expected {:?}",
                    f.name,
                    f.object,
                    format!("{}{OBJECT_SUFFIX}", f.name)
                )));
            }
            for d in [&f.sha256, &f.compressed_sha256] {
                if parse_digest(d).is_none() {
                    return Err(invalid(format!(
                        "digest {d:?} of file {:?} is not sha256:<64 hex>",
                        f.name
                    )));
                }
            }
            if f.size > max_file_bytes {
                return Err(SnapshotError::FileTooLarge {
                    name: format!("{uri}/{}", f.name),
                    size: f.size,
                    limit: max_file_bytes,
                });
            }
        }
        Ok(m)
    }
}

/// `sha256:<lowercase hex>` of `bytes`.
pub fn sha256_digest(bytes: &[u8]) -> String {
    format_digest(Sha256::digest(bytes).into())
}

pub(crate) fn format_digest(d: [u8; 32]) -> String {
    let mut s = String::with_capacity(71);
    s.push_str("sha256:");
    for b in d {
        s.push(char::from_digit(u32::from(b >> 4), 16).unwrap_or('0'));
        s.push(char::from_digit(u32::from(b & 0xf), 16).unwrap_or('0'));
    }
    s
}

/// The hex part of a well-formed `sha256:<64 lowercase hex>` digest.
pub(crate) fn parse_digest(d: &str) -> Option<&str> {
    let hex = d.strip_prefix("sha256:")?;
    (hex.len() == 64 && hex.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))).then_some(hex)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_record_their_owner_uid() {
        let at = jiff::Timestamp::from_millisecond(1_700_000_000_123).unwrap();
        let uid = "0b6c7c4e-9d8f-4a57-a3c2-5e7f9d1b2c3a";
        let k = SnapshotKey::for_owner("team-a", "bot", uid, at).unwrap();
        assert_eq!(k.id(), format!("s1700000000123_{uid}"));
        assert_eq!(k.owner_uid(), Some(uid));
        // Ids of earlier builds and generated ids record no owner.
        assert_eq!(SnapshotKey::new("a", "b", "s17").unwrap().owner_uid(), None);
        assert_eq!(SnapshotKey::generate("a", "b").unwrap().owner_uid(), None);
        // A uid that is not a plain token is left out rather than making a bad id.
        assert_eq!(owner_id("a/b", at), "s1700000000123");
        assert_eq!(owner_uid_of("s1_"), None);
    }

    fn manifest() -> Manifest {
        Manifest {
            kind: MANIFEST_KIND.into(),
            format_version: FORMAT_VERSION,
            atespace: "team-a".into(),
            actor: "bot".into(),
            id: "s1".into(),
            compression: "zstd".into(),
            files: vec![ManifestFile {
                name: "checkpoint.img".into(),
                size: 10,
                sha256: sha256_digest(b"0123456789"),
                object: "checkpoint.img.zst".into(),
                compressed_size: 20,
                compressed_sha256: sha256_digest(b"x"),
            }],
            meta: SnapshotMeta::new("runsc version release-20240729.0", "systrap"),
        }
    }

    fn key() -> SnapshotKey {
        SnapshotKey::new("team-a", "bot", "s1").unwrap()
    }

    #[test]
    fn digest_format() {
        assert_eq!(
            sha256_digest(b""),
            "sha256:e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"
        );
        assert!(parse_digest(&sha256_digest(b"a")).is_some());
        assert!(parse_digest("sha256:ABC").is_none());
        assert!(parse_digest("md5:00").is_none());
    }

    #[test]
    fn keys_are_validated() {
        assert!(SnapshotKey::new("team-a", "bot", "20250101T000000Z-ab").is_ok());
        for (a, b, c) in [
            ("Team", "bot", "s"),
            ("team", "bot_1", "s"),
            ("team", "bot", ""),
            ("team", "bot", ".."),
            ("team", "bot", "a/b"),
            ("team", "bot", ".hidden"),
        ] {
            let err = SnapshotKey::new(a, b, c).unwrap_err();
            assert!(matches!(err, SnapshotError::InvalidKey { .. }), "{err}");
        }
        let g = SnapshotKey::generate("team-a", "bot").unwrap();
        let g2 = SnapshotKey::generate("team-a", "bot").unwrap();
        assert_ne!(g.id(), g2.id());
    }

    #[test]
    fn manifest_round_trips_and_checks() {
        let m = manifest();
        let bytes = serde_json::to_vec(&m).unwrap();
        assert_eq!(Manifest::parse(&bytes, "u", &key(), 100).unwrap(), m);

        // Too large for this node.
        let err = Manifest::parse(&bytes, "u", &key(), 5).unwrap_err();
        assert!(matches!(err, SnapshotError::FileTooLarge { .. }), "{err}");
        // Other key.
        let other = SnapshotKey::new("team-a", "bot", "s2").unwrap();
        let err = Manifest::parse(&bytes, "u", &other, 100).unwrap_err();
        assert!(err.to_string().contains("not team-a/bot/s2"), "{err}");

        let bad = |f: &dyn Fn(&mut Manifest), want: &str| {
            let mut m = manifest();
            f(&mut m);
            let err =
                Manifest::parse(&serde_json::to_vec(&m).unwrap(), "u", &key(), 100).unwrap_err();
            assert!(err.to_string().contains(want), "{err} lacks {want:?}");
            assert!(err.is_integrity() || matches!(err, SnapshotError::FileTooLarge { .. }));
        };
        bad(&|m| m.format_version = 2, "format version 2");
        bad(&|m| m.kind = "Other".into(), "kind");
        bad(&|m| m.compression = "gzip".into(), "compression");
        bad(&|m| m.files[0].name = "../etc/passwd".into(), "not allowed");
        bad(
            &|m| m.files[0].object = "other.zst".into(),
            "object of file",
        );
        bad(&|m| m.files[0].sha256 = "sha256:zz".into(), "not sha256");
        bad(&|m| m.files.push(m.files[0].clone()), "listed twice");
        bad(&|m| m.files.clear(), "0 files");
        let err = Manifest::parse(b"{", "u", &key(), 100).unwrap_err();
        assert!(err.is_integrity(), "{err}");
    }

    #[test]
    fn ref_converts_to_and_from_actor_status() {
        let r = SnapshotRef {
            uri: "s3://b/p/team-a/bot/s1".into(),
            manifest_digest: sha256_digest(b"m"),
            size: 100,
            compressed_size: 40,
            created_at: Some(jiff::Timestamp::from_second(1_700_000_000).unwrap()),
        };
        let status = crds::substrate::SnapshotRef::from(&r);
        assert_eq!(status.uri, "s3://b/p/team-a/bot/s1/manifest.json");
        assert_eq!(status.size_bytes, Some(40));
        let back = SnapshotRef::try_from(&status).unwrap();
        assert_eq!(
            back,
            SnapshotRef {
                size: 0,
                ..r.clone()
            }
        );
        let json = serde_json::to_value(&r).unwrap();
        assert_eq!(json["manifestDigest"], r.manifest_digest);
        assert_eq!(serde_json::from_value::<SnapshotRef>(json).unwrap(), r);
        let no_digest = crds::substrate::SnapshotRef {
            digest: None,
            ..status
        };
        assert!(SnapshotRef::try_from(&no_digest).is_err());
    }
}
