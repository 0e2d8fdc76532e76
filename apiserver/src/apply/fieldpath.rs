//! Field paths and field sets, and their `FieldsV1` wire format.
//!
//! A [`Path`] names one node of an object: a struct or map field (`f:name`), a list item by its
//! key fields (`k:{"type":"Ready"}`), a set item by its value (`v:"a"`) or, rarely, by its index
//! (`i:0`). A [`Set`] is a set of paths; it is what a manager owns. This is
//! `sigs.k8s.io/structured-merge-diff/fieldpath` with the set flattened to its member paths:
//! a `FieldsV1` node marked `.` (or a node without children) is a member, a node with children
//! only is structure.
//!
//! `FieldsV1` (as in `metadata.managedFields[].fieldsV1`):
//!
//! ```json
//! {"f:metadata": {"f:labels": {".": {}, "f:app": {}}},
//!  "f:status": {"f:conditions": {"k:{\"type\":\"Ready\"}": {".": {}, "f:status": {}}}}}
//! ```
//!
//! Children are written in structured-merge-diff's order (`.` first, then fields, keys,
//! values, indexes), so the output reads like Kubernetes'.

use std::collections::BTreeSet;
use std::fmt;

use serde_json::{Map, Value};

/// One step of a path. Keys and values hold canonical JSON (object keys sorted), so equal
/// keys compare equal and the order is stable.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum PathElement {
    /// A field of a struct or a key of a map: `f:<name>`.
    Field(String),
    /// An item of an associative list, by its key fields: `k:{"name":"a"}`.
    Key(String),
    /// An item of a set, by its value: `v:"a"`.
    Value(String),
    /// An item by position (only in sets decoded from clients; we never produce it).
    Index(usize),
}

/// A path from the root of an object.
pub type Path = Vec<PathElement>;

/// Why a `FieldsV1` document could not be read.
#[derive(Debug, thiserror::Error)]
pub enum DecodeError {
    #[error("fieldsV1 must be a JSON object at {0}")]
    NotAnObject(String),
    #[error("invalid path element {0:?}")]
    BadElement(String),
}

/// Canonical JSON of a value: objects with sorted keys.
pub fn canonical(v: &Value) -> String {
    fn sort(v: &Value) -> Value {
        match v {
            Value::Object(m) => {
                let mut keys: Vec<&String> = m.keys().collect();
                keys.sort();
                let mut out = Map::new();
                for k in keys {
                    out.insert(k.clone(), sort(&m[k]));
                }
                Value::Object(out)
            }
            Value::Array(a) => Value::Array(a.iter().map(sort).collect()),
            other => other.clone(),
        }
    }
    serde_json::to_string(&sort(v)).unwrap_or_default()
}

impl PathElement {
    /// The list-map key of `item` for `keys` (key fields absent from the item are left out).
    pub fn key_of(item: &Value, keys: &[String]) -> Self {
        let mut m = Map::new();
        let mut sorted: Vec<&String> = keys.iter().collect();
        sorted.sort();
        for k in sorted {
            if let Some(v) = item.get(k.as_str()) {
                m.insert(k.clone(), v.clone());
            }
        }
        Self::Key(canonical(&Value::Object(m)))
    }

    /// The set element naming `item`.
    pub fn value_of(item: &Value) -> Self {
        Self::Value(canonical(item))
    }

    /// The `FieldsV1` spelling.
    pub fn encode(&self) -> String {
        match self {
            Self::Field(f) => format!("f:{f}"),
            Self::Key(k) => format!("k:{k}"),
            Self::Value(v) => format!("v:{v}"),
            Self::Index(i) => format!("i:{i}"),
        }
    }

    /// Parses a `FieldsV1` key (not `.`).
    pub fn decode(s: &str) -> Result<Self, DecodeError> {
        let bad = || DecodeError::BadElement(s.to_string());
        let (tag, rest) = s.split_once(':').ok_or_else(bad)?;
        match tag {
            "f" => Ok(Self::Field(rest.to_string())),
            "k" => {
                let v: Value = serde_json::from_str(rest).map_err(|_| bad())?;
                if !v.is_object() {
                    return Err(bad());
                }
                Ok(Self::Key(canonical(&v)))
            }
            "v" => {
                let v: Value = serde_json::from_str(rest).map_err(|_| bad())?;
                Ok(Self::Value(canonical(&v)))
            }
            "i" => rest.parse().map(Self::Index).map_err(|_| bad()),
            _ => Err(bad()),
        }
    }
}

/// Renders a scalar as structured-merge-diff's `value.ToString` does (strings quoted).
fn render_value(v: &Value) -> String {
    match v {
        Value::String(s) => format!("{s:?}"),
        other => other.to_string(),
    }
}

impl fmt::Display for PathElement {
    /// `.name`, `[type="Ready"]`, `[containerPort=80,protocol="TCP"]`, `[="a"]`, `[0]`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Field(name) => write!(f, ".{name}"),
            Self::Key(k) => {
                let parsed: Value = serde_json::from_str(k).unwrap_or(Value::Null);
                let parts: Vec<String> = parsed
                    .as_object()
                    .map(|m| {
                        m.iter()
                            .map(|(k, v)| format!("{k}={}", render_value(v)))
                            .collect()
                    })
                    .unwrap_or_default();
                write!(f, "[{}]", parts.join(","))
            }
            Self::Value(v) => {
                let parsed: Value = serde_json::from_str(v).unwrap_or(Value::Null);
                write!(f, "[={}]", render_value(&parsed))
            }
            Self::Index(i) => write!(f, "[{i}]"),
        }
    }
}

/// Renders a path as Kubernetes prints it in conflicts: `.spec.containers[name="a"].image`.
pub fn display(path: &[PathElement]) -> String {
    path.iter().map(ToString::to_string).collect()
}

/// A set of paths (what one manager owns).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Set(pub BTreeSet<Path>);

impl Set {
    pub fn new() -> Self {
        Self::default()
    }
    pub fn insert(&mut self, p: Path) {
        self.0.insert(p);
    }
    pub fn contains(&self, p: &[PathElement]) -> bool {
        self.0.contains(p)
    }
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
    pub fn len(&self) -> usize {
        self.0.len()
    }
    pub fn iter(&self) -> impl Iterator<Item = &Path> {
        self.0.iter()
    }
    pub fn union(&self, other: &Set) -> Set {
        Set(self.0.union(&other.0).cloned().collect())
    }
    pub fn intersection(&self, other: &Set) -> Set {
        Set(self.0.intersection(&other.0).cloned().collect())
    }
    pub fn difference(&self, other: &Set) -> Set {
        Set(self.0.difference(&other.0).cloned().collect())
    }
    /// Keeps the paths `keep` accepts.
    pub fn filter(self, keep: impl Fn(&[PathElement]) -> bool) -> Set {
        Set(self.0.into_iter().filter(|p| keep(p)).collect())
    }
    /// Every member and every (non-root) prefix of a member: the nodes this set "touches".
    /// A node in here is owned itself or has an owned descendant (structured-merge-diff's
    /// `EnsureNamedFieldsAreMembers` for our purposes).
    pub fn with_ancestors(&self) -> BTreeSet<Path> {
        let mut out = BTreeSet::new();
        for p in &self.0 {
            for n in 1..=p.len() {
                out.insert(p[..n].to_vec());
            }
        }
        out
    }

    /// The `FieldsV1` document of this set.
    pub fn to_fields_v1(&self) -> Value {
        #[derive(Default)]
        struct Node {
            member: bool,
            children: std::collections::BTreeMap<PathElement, Node>,
        }
        let mut root = Node::default();
        for p in &self.0 {
            let mut node = &mut root;
            for pe in p {
                node = node.children.entry(pe.clone()).or_default();
            }
            node.member = true;
        }
        fn emit(node: &Node) -> Value {
            let mut m = Map::new();
            if node.member && !node.children.is_empty() {
                m.insert(".".into(), Value::Object(Map::new()));
            }
            for (pe, child) in &node.children {
                m.insert(pe.encode(), emit(child));
            }
            Value::Object(m)
        }
        emit(&root)
    }

    /// Reads a `FieldsV1` document.
    pub fn from_fields_v1(v: &Value) -> Result<Set, DecodeError> {
        fn walk(v: &Value, path: &mut Path, out: &mut Set) -> Result<(), DecodeError> {
            let m = v
                .as_object()
                .ok_or_else(|| DecodeError::NotAnObject(display(path)))?;
            if !path.is_empty() && (m.is_empty() || m.contains_key(".")) {
                out.insert(path.clone());
            }
            for (k, child) in m {
                if k == "." {
                    continue;
                }
                path.push(PathElement::decode(k)?);
                walk(child, path, out)?;
                path.pop();
            }
            Ok(())
        }
        let mut out = Set::new();
        walk(v, &mut Vec::new(), &mut out)?;
        Ok(out)
    }
}

/// Shorthand for a path of field names (`p(&["spec", "activation"])`).
pub fn fields(names: &[&str]) -> Path {
    names
        .iter()
        .map(|n| PathElement::Field((*n).to_string()))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn fields_v1_roundtrip_and_shape() {
        let mut s = Set::new();
        s.insert(fields(&["metadata", "labels"]));
        s.insert(fields(&["metadata", "labels", "app"]));
        let mut cond = fields(&["status", "conditions"]);
        cond.push(PathElement::key_of(
            &json!({"type": "Ready", "status": "True"}),
            &["type".into()],
        ));
        s.insert(cond.clone());
        cond.push(PathElement::Field("status".into()));
        s.insert(cond);
        let mut fin = fields(&["metadata", "finalizers"]);
        fin.push(PathElement::value_of(&json!("a/b")));
        s.insert(fin);
        let v = s.to_fields_v1();
        assert_eq!(
            v.to_string(),
            r#"{"f:metadata":{"f:finalizers":{"v:\"a/b\"":{}},"f:labels":{".":{},"f:app":{}}},"f:status":{"f:conditions":{"k:{\"type\":\"Ready\"}":{".":{},"f:status":{}}}}}"#
        );
        assert_eq!(Set::from_fields_v1(&v).unwrap(), s);
        assert!(Set::from_fields_v1(&json!({"x:1": {}})).is_err());
        assert!(Set::from_fields_v1(&json!({"f:a": 1})).is_err());
    }

    #[test]
    fn paths_print_like_kubernetes() {
        let mut p = fields(&["spec", "containers"]);
        p.push(PathElement::key_of(
            &json!({"name": "web", "image": "x"}),
            &["name".into()],
        ));
        p.push(PathElement::Field("ports".into()));
        p.push(PathElement::key_of(
            &json!({"protocol": "TCP", "containerPort": 80}),
            &["containerPort".into(), "protocol".into()],
        ));
        assert_eq!(
            display(&p),
            r#".spec.containers[name="web"].ports[containerPort=80,protocol="TCP"]"#
        );
        assert_eq!(
            display(&[
                PathElement::Field("f".into()),
                PathElement::value_of(&json!("x"))
            ]),
            r#".f[="x"]"#
        );
        // Keys decoded from any key order are the same element.
        assert_eq!(
            PathElement::decode(r#"k:{"protocol":"TCP","containerPort":80}"#).unwrap(),
            PathElement::decode(r#"k:{"containerPort":80,"protocol":"TCP"}"#).unwrap()
        );
    }
}
