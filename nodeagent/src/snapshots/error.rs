//! Errors of the snapshot store.

use std::path::PathBuf;

/// Everything that can go wrong storing, fetching or collecting snapshots.
#[derive(Debug, thiserror::Error)]
pub enum SnapshotError {
    /// The configuration cannot work (bad URL, out-of-range sizes or levels).
    #[error("invalid snapshot store configuration: {field}: {reason}")]
    InvalidConfig { field: &'static str, reason: String },

    /// The object store client could not be built for the URL.
    #[error("cannot open object store {url}")]
    OpenStore {
        url: String,
        #[source]
        source: object_store::Error,
    },

    /// A snapshot key part (atespace, actor, snapshot id) is not acceptable.
    #[error("invalid snapshot {field} {value:?}: {reason}")]
    InvalidKey {
        field: &'static str,
        value: String,
        reason: String,
    },

    /// A snapshot reference that cannot be used (foreign store, malformed digest).
    #[error("invalid snapshot reference {uri:?}: {reason}")]
    InvalidRef { uri: String, reason: String },

    /// The checkpoint directory to upload is not a flat directory of regular files.
    #[error("checkpoint directory {}: {reason}", dir.display())]
    InvalidCheckpointDir { dir: PathBuf, reason: String },

    /// A file is larger than `max_file_bytes`.
    #[error("{name}: {size} bytes exceeds the per-file limit of {limit} bytes")]
    FileTooLarge { name: String, size: u64, limit: u64 },

    /// The snapshot has no manifest: it was never committed (an interrupted upload) or was
    /// deleted.
    #[error("snapshot {uri} is not committed (no {manifest})", manifest = super::MANIFEST_NAME)]
    NotCommitted { uri: String },

    /// A manifest already exists for this snapshot id: ids are never reused.
    #[error("snapshot {uri} is already committed; snapshot ids are never reused")]
    AlreadyCommitted { uri: String },

    /// The manifest read from the store is not the one the reference names.
    #[error("manifest of snapshot {uri} has digest {actual}, the reference expects {expected}")]
    ManifestDigestMismatch {
        uri: String,
        expected: String,
        actual: String,
    },

    /// The manifest is not a valid manifest of this snapshot.
    #[error("invalid manifest of snapshot {uri}: {reason}")]
    InvalidManifest { uri: String, reason: String },

    /// A stored object does not match what the manifest declares.
    #[error("{object}: {what} mismatch: manifest declares {expected}, found {actual}")]
    Corrupt {
        object: String,
        what: &'static str,
        expected: String,
        actual: String,
    },

    /// A stored object decompresses to more than the manifest declares (or `max_file_bytes`).
    #[error("{object}: decompressed data exceeds the limit of {limit} bytes")]
    DecompressedTooLarge { object: String, limit: u64 },

    /// A stored object is not a valid zstd stream.
    #[error("{object}: zstd decompression failed")]
    Decompress {
        object: String,
        #[source]
        source: std::io::Error,
    },

    /// An object the manifest lists is missing from the store.
    #[error("{object}: object listed in the manifest is missing")]
    MissingObject { object: String },

    /// An object store operation failed.
    #[error("object store {op} {path} failed")]
    ObjectStore {
        op: &'static str,
        path: String,
        #[source]
        source: object_store::Error,
    },

    /// A local filesystem operation failed.
    #[error("{op} {}", path.display())]
    Io {
        op: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },

    /// The fetch destination already holds something.
    #[error("fetch destination {} already exists and is not an empty directory", path.display())]
    DestinationNotEmpty { path: PathBuf },

    /// A background (blocking) task panicked or was cancelled.
    #[error("snapshot background task failed")]
    Task(#[source] tokio::task::JoinError),
}

impl SnapshotError {
    /// Whether the snapshot content failed verification (hash or size mismatch, bad zstd
    /// stream, decompression bomb, manifest not matching its reference, missing object):
    /// the stored snapshot is unusable, retrying will not help.
    pub fn is_integrity(&self) -> bool {
        matches!(
            self,
            Self::ManifestDigestMismatch { .. }
                | Self::InvalidManifest { .. }
                | Self::Corrupt { .. }
                | Self::DecompressedTooLarge { .. }
                | Self::Decompress { .. }
                | Self::MissingObject { .. }
        )
    }

    /// Whether the snapshot does not exist as a committed snapshot.
    pub fn is_not_committed(&self) -> bool {
        matches!(self, Self::NotCommitted { .. })
    }

    pub(crate) fn io(op: &'static str, path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        Self::Io {
            op,
            path: path.into(),
            source,
        }
    }

    pub(crate) fn store(
        op: &'static str,
        path: &object_store::path::Path,
        source: object_store::Error,
    ) -> Self {
        Self::ObjectStore {
            op,
            path: path.to_string(),
            source,
        }
    }
}
