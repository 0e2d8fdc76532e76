//! The storage layer: objects live in Valkey, watches are served from memory.
//!
//! * [`Store`] is the only writer. Every write (create, update, delete) is ONE atomic Lua
//!   script that does compare-and-swap on the resourceVersion, writes the object, maintains
//!   the secondary indexes and appends the watch event to the resource's stream, so an event
//!   can never be lost or written without its object. The key layout (the on-disk format) is
//!   documented in `storage/valkey.rs`.
//! * Each resource type has a monotonic resourceVersion (RV) counter; the RV of an object is
//!   the counter value of the write that last touched it. Stored objects never contain
//!   `metadata.resourceVersion`; it is injected on every read as a decimal string.
//! * [`WatchCache`] holds, per resource, the current state and a bounded history of events.
//!   One background feed task per [`Store`] follows the Valkey streams and keeps the caches
//!   current; [`Watcher`]s read the history by cursor and never block the feed. Lists are
//!   served by [`WatchCache::list`], at the cache's rv or at an older one still in its
//!   history (so every page of a paginated list is a slice of one snapshot).
//! * [`Endpoint`] is where Valkey is and how to log in (ACL user, password, TLS CA).

mod cache;
mod endpoint;
mod valkey;

use std::cmp::Ordering;
use std::fmt;
use std::sync::Arc;

use serde_json::Value;

pub use cache::{WatchCache, Watcher};
pub use endpoint::{Endpoint, EndpointError, read_password_file, redact_url};
pub(crate) use valkey::AbortOnDrop;
pub use valkey::{Store, StoreOptions};

/// A resource type: API group and plural resource name, e.g. `("substrate.ate.dev", "actors")`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct ResourceKey {
    pub group: &'static str,
    pub resource: &'static str,
}

impl fmt::Display for ResourceKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.group.is_empty() {
            f.write_str(self.resource)
        } else {
            write!(f, "{}.{}", self.resource, self.group)
        }
    }
}

/// The identity of one object of a resource type. `namespace` is `""` for cluster-scoped objects.
///
/// Ordering is the byte order of `"<namespace>/<name>"`, the order lists are returned in (and
/// the order of the index sorted sets in Valkey), so pages from Valkey and snapshots from the
/// cache agree. Neither part may contain `/` (Kubernetes names and namespaces cannot).
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct ObjectKey {
    pub namespace: String,
    pub name: String,
}

impl ObjectKey {
    /// Builds a key.
    pub fn new(namespace: impl Into<String>, name: impl Into<String>) -> Self {
        Self {
            namespace: namespace.into(),
            name: name.into(),
        }
    }

    /// The index member form `"<namespace>/<name>"` (cluster-scoped: `"/<name>"`).
    pub fn member(&self) -> String {
        let mut s = String::with_capacity(self.namespace.len() + 1 + self.name.len());
        s.push_str(&self.namespace);
        s.push('/');
        s.push_str(&self.name);
        s
    }

    /// Parses the member form produced by [`ObjectKey::member`].
    pub fn from_member(member: &str) -> Option<Self> {
        let (ns, name) = member.split_once('/')?;
        Some(Self::new(ns, name))
    }

    fn member_bytes(&self) -> impl Iterator<Item = u8> + '_ {
        self.namespace
            .bytes()
            .chain(std::iter::once(b'/'))
            .chain(self.name.bytes())
    }
}

impl Ord for ObjectKey {
    fn cmp(&self, other: &Self) -> Ordering {
        self.member_bytes()
            .cmp(other.member_bytes())
            // Only reachable for keys containing '/', keeps Ord consistent with Eq.
            .then_with(|| self.namespace.cmp(&other.namespace))
    }
}

impl PartialOrd for ObjectKey {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}

impl fmt::Display for ObjectKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.namespace.is_empty() {
            f.write_str(&self.name)
        } else {
            write!(f, "{}/{}", self.namespace, self.name)
        }
    }
}

/// The type of a watch event.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum EventType {
    Added,
    Modified,
    Deleted,
}

impl EventType {
    /// The Kubernetes wire name (also the `t` field of stream entries).
    pub fn as_str(self) -> &'static str {
        match self {
            EventType::Added => "ADDED",
            EventType::Modified => "MODIFIED",
            EventType::Deleted => "DELETED",
        }
    }

    /// Parses [`EventType::as_str`].
    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "ADDED" => Some(EventType::Added),
            "MODIFIED" => Some(EventType::Modified),
            "DELETED" => Some(EventType::Deleted),
            _ => None,
        }
    }
}

/// One committed change.
#[derive(Debug)]
pub struct WatchEvent {
    pub rv: u64,
    pub kind: EventType,
    pub key: ObjectKey,
    /// The object with `metadata.resourceVersion = rv`; for `Deleted` the final state.
    pub object: Arc<Value>,
    /// The previous state of the object when known: always for events the feed observed live;
    /// `None` for `Added`, and for the first event of a key in history loaded at startup.
    pub prev: Option<Arc<Value>>,
    /// `object` as JSON, encoded by the first watcher that shows it as stored and reused by
    /// every other ([`WatchEvent::object_json`]).
    pub encoded: std::sync::OnceLock<bytes::Bytes>,
}

impl WatchEvent {
    pub fn new(
        rv: u64,
        kind: EventType,
        key: ObjectKey,
        object: Arc<Value>,
        prev: Option<Arc<Value>>,
    ) -> Self {
        WatchEvent {
            rv,
            kind,
            key,
            object,
            prev,
            encoded: std::sync::OnceLock::new(),
        }
    }

    /// The object as JSON, encoded once for all watchers of this event.
    pub fn object_json(&self) -> &bytes::Bytes {
        self.encoded.get_or_init(|| {
            bytes::Bytes::from(serde_json::to_vec(self.object.as_ref()).unwrap_or_default())
        })
    }
}

/// Failures of the storage layer.
#[derive(Debug, thiserror::Error)]
pub enum StorageError {
    #[error("object {key} already exists")]
    AlreadyExists { key: ObjectKey },
    #[error("object {key} not found")]
    NotFound { key: ObjectKey },
    #[error("conflict on {key}: expected resourceVersion {expected}, current {current}")]
    Conflict {
        key: ObjectKey,
        expected: u64,
        current: u64,
    },
    /// `oldest` is the oldest rv a watch can still start from.
    #[error("too old resource version: {requested} ({oldest})")]
    TooOld { requested: u64, oldest: u64 },
    #[error("watch expired: the cache was reset")]
    Expired,
    #[error("timed out waiting for resourceVersion {rv} (cache at {current})")]
    Timeout { rv: u64, current: u64 },
    #[error("storage backend: {0}")]
    Backend(#[from] redis::RedisError),
    /// Valkey refused to log in: wrong user or password, a disabled user, or no password
    /// given to a Valkey that requires one.
    #[error("refused authentication: {reason}")]
    Unauthenticated { reason: String },
    /// The ACL user lacks a permission the store needs (a command or a key pattern).
    #[error("refused a command to ACL user {user}: {reason}")]
    Forbidden { user: String, reason: String },
    #[error(transparent)]
    Endpoint(#[from] EndpointError),
    #[error("corrupt stored value for {key}: {reason}")]
    Corrupt { key: String, reason: String },
}

/// A list query, served by [`WatchCache::list`]. Results are ordered by `"<namespace>/<name>"`.
#[derive(Clone, Debug, Default)]
pub struct ListRequest {
    /// Only objects of this namespace (`""` for cluster-scoped ones); `None` for all.
    pub namespace: Option<String>,
    /// Only the object of this name; used only together with `namespace` (a point lookup).
    pub name: Option<String>,
    /// Continue after this key (exclusive).
    pub start_after: Option<ObjectKey>,
    /// Page size: at most this many objects; `None` (or 0) for everything.
    pub limit: Option<usize>,
    /// The state at this resourceVersion; `None` for the cache's current one.
    pub at: Option<u64>,
}

/// One page of a list: a slice of the state at `rv`.
#[derive(Clone, Debug)]
pub struct ListPage {
    pub rv: u64,
    /// With their own `metadata.resourceVersion` (at most `rv`).
    pub items: Vec<Arc<Value>>,
    /// `Some(last returned key)` iff more matching objects remain.
    pub next: Option<ObjectKey>,
}

/// Returns `obj` with `metadata.resourceVersion` set to `rv` (as a decimal string).
pub(crate) fn with_rv(mut obj: Value, rv: u64) -> Value {
    set_rv(&mut obj, rv);
    obj
}

fn set_rv(obj: &mut Value, rv: u64) {
    if let Value::Object(map) = obj {
        let meta = map
            .entry("metadata")
            .or_insert_with(|| Value::Object(Default::default()));
        if let Value::Object(meta) = meta {
            meta.insert("resourceVersion".into(), Value::String(rv.to_string()));
        }
    }
}

/// Serializes `obj` without `metadata.resourceVersion` (the stored form).
pub(crate) fn stored_json(obj: &Value) -> String {
    let has_rv = obj
        .get("metadata")
        .and_then(|m| m.get("resourceVersion"))
        .is_some();
    if !has_rv {
        return obj.to_string();
    }
    let mut obj = obj.clone();
    if let Some(Value::Object(meta)) = obj.get_mut("metadata") {
        meta.shift_remove("resourceVersion");
    }
    obj.to_string()
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn object_key_orders_like_members() {
        let mut keys = [
            ObjectKey::new("team", "b"),
            ObjectKey::new("team-a", "a"),
            ObjectKey::new("", "z"),
            ObjectKey::new("team", "a"),
            ObjectKey::new("t", "zz"),
        ];
        keys.sort();
        let mut members: Vec<String> = keys.iter().map(ObjectKey::member).collect();
        let sorted = {
            let mut m = members.clone();
            m.sort();
            m
        };
        assert_eq!(members, sorted);
        members.dedup();
        assert_eq!(members.len(), 5);
        assert_eq!(keys[0], ObjectKey::new("", "z"));
        assert_eq!(keys[1], ObjectKey::new("t", "zz"));
        assert_eq!(keys[2], ObjectKey::new("team-a", "a"));
    }

    #[test]
    fn object_key_display_and_member_round_trip() {
        let k = ObjectKey::new("ns", "n");
        assert_eq!(k.to_string(), "ns/n");
        assert_eq!(ObjectKey::from_member(&k.member()), Some(k));
        let c = ObjectKey::new("", "n");
        assert_eq!(c.to_string(), "n");
        assert_eq!(c.member(), "/n");
        assert_eq!(ObjectKey::from_member("/n"), Some(c));
        assert_eq!(ObjectKey::from_member("nope"), None);
    }

    #[test]
    fn resource_key_display() {
        let r = ResourceKey {
            group: "substrate.ate.dev",
            resource: "actors",
        };
        assert_eq!(r.to_string(), "actors.substrate.ate.dev");
        let core = ResourceKey {
            group: "",
            resource: "namespaces",
        };
        assert_eq!(core.to_string(), "namespaces");
    }

    #[test]
    fn event_type_round_trip() {
        for t in [EventType::Added, EventType::Modified, EventType::Deleted] {
            assert_eq!(EventType::parse(t.as_str()), Some(t));
        }
        assert_eq!(EventType::parse("BOOKMARK"), None);
    }

    #[test]
    fn resource_version_is_stripped_and_injected() {
        let obj = json!({"metadata": {"name": "a", "resourceVersion": "7"}, "spec": {}});
        let stored = stored_json(&obj);
        assert_eq!(stored, r#"{"metadata":{"name":"a"},"spec":{}}"#);
        let back: Value = serde_json::from_str(&stored).expect("json");
        let back = with_rv(back, 9);
        assert_eq!(back["metadata"]["resourceVersion"], "9");
        assert_eq!(
            with_rv(json!({}), 3),
            json!({"metadata": {"resourceVersion": "3"}})
        );
        assert_eq!(stored_json(&json!({"a": 1})), r#"{"a":1}"#);
    }
}
