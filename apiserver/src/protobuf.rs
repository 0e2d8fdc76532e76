//! Decoding of Kubernetes protobuf request bodies (`application/vnd.kubernetes.protobuf`)
//! of the built-in kinds the standalone apiserver serves: kubectl's typed commands (`kubectl
//! create role|clusterrole|rolebinding|clusterrolebinding`) send them so.
//!
//! The wire format (`k8s.io/apimachinery/pkg/runtime/serializer/protobuf`): the magic
//! `k8s\0`, then a `runtime.Unknown` message (1: `TypeMeta` {1: apiVersion, 2: kind},
//! 2: raw — the object's message from `k8s.io/api/.../generated.proto`, 3: contentEncoding,
//! 4: contentType). Objects are decoded into the same JSON a client would send; fields the
//! server sets itself (timestamps, managedFields) are skipped. Answers are always JSON (every
//! client that sends protobuf also accepts JSON).

use serde_json::{Map, Value, json};

use crds::resources::{Kind, ResourceInfo};

use crate::status::ApiError;

/// The protobuf media type.
pub const MEDIA_TYPE: &str = "application/vnd.kubernetes.protobuf";
const MAGIC: &[u8] = b"k8s\0";

fn bad(msg: &str) -> ApiError {
    ApiError::bad_request(format!("couldn't decode the protobuf request body: {msg}"))
}

/// One field of a message: its number and value.
enum Field<'a> {
    Varint(u64),
    Bytes(&'a [u8]),
}

/// Reads the fields of one message.
struct Reader<'a> {
    buf: &'a [u8],
}

impl<'a> Reader<'a> {
    fn varint(&mut self) -> Result<u64, ApiError> {
        let mut v: u64 = 0;
        for i in 0..10 {
            let (&b, rest) = self
                .buf
                .split_first()
                .ok_or_else(|| bad("truncated varint"))?;
            self.buf = rest;
            v |= u64::from(b & 0x7f) << (7 * i);
            if b & 0x80 == 0 {
                return Ok(v);
            }
        }
        Err(bad("varint too long"))
    }

    fn next(&mut self) -> Result<Option<(u64, Field<'a>)>, ApiError> {
        if self.buf.is_empty() {
            return Ok(None);
        }
        let key = self.varint()?;
        let (num, wire) = (key >> 3, key & 7);
        let field = match wire {
            0 => Field::Varint(self.varint()?),
            2 => {
                let len = usize::try_from(self.varint()?).map_err(|_| bad("length"))?;
                if len > self.buf.len() {
                    return Err(bad("truncated field"));
                }
                let (b, rest) = self.buf.split_at(len);
                self.buf = rest;
                Field::Bytes(b)
            }
            1 => {
                self.skip(8)?;
                Field::Varint(0)
            }
            5 => {
                self.skip(4)?;
                Field::Varint(0)
            }
            _ => return Err(bad("unsupported wire type")),
        };
        Ok(Some((num, field)))
    }

    fn skip(&mut self, n: usize) -> Result<(), ApiError> {
        if n > self.buf.len() {
            return Err(bad("truncated field"));
        }
        self.buf = &self.buf[n..];
        Ok(())
    }
}

fn fields(buf: &[u8]) -> Result<Vec<(u64, Field<'_>)>, ApiError> {
    let mut r = Reader { buf };
    let mut out = Vec::new();
    while let Some(f) = r.next()? {
        out.push(f);
    }
    Ok(out)
}

fn text(b: &[u8]) -> Result<String, ApiError> {
    String::from_utf8(b.to_vec()).map_err(|_| bad("a string is not UTF-8"))
}

/// Decodes a message whose fields are all strings (or repeated strings) into a JSON object:
/// `names[i] = (field number, JSON name, repeated)`.
fn strings(buf: &[u8], names: &[(u64, &str, bool)]) -> Result<Map<String, Value>, ApiError> {
    let mut m = Map::new();
    for (num, f) in fields(buf)? {
        let (Some(&(_, name, repeated)), Field::Bytes(b)) =
            (names.iter().find(|(n, _, _)| *n == num), f)
        else {
            continue;
        };
        let s = Value::String(text(b)?);
        if repeated {
            if let Some(a) = m.entry(name).or_insert_with(|| json!([])).as_array_mut() {
                a.push(s);
            }
        } else {
            m.insert(name.into(), s);
        }
    }
    Ok(m)
}

/// A `map<string, string>` entry (1: key, 2: value).
fn map_entry(buf: &[u8], into: &mut Map<String, Value>) -> Result<(), ApiError> {
    let e = strings(buf, &[(1, "k", false), (2, "v", false)])?;
    let k = e.get("k").and_then(Value::as_str).unwrap_or_default();
    into.insert(
        k.to_string(),
        e.get("v").cloned().unwrap_or_else(|| json!("")),
    );
    Ok(())
}

fn object_meta(buf: &[u8]) -> Result<Value, ApiError> {
    let mut m = Map::new();
    let mut labels = Map::new();
    let mut annotations = Map::new();
    let mut finalizers = Vec::new();
    let mut owners = Vec::new();
    for (num, f) in fields(buf)? {
        match (num, f) {
            (1, Field::Bytes(b)) => {
                m.insert("name".into(), json!(text(b)?));
            }
            (2, Field::Bytes(b)) => {
                m.insert("generateName".into(), json!(text(b)?));
            }
            (3, Field::Bytes(b)) => {
                m.insert("namespace".into(), json!(text(b)?));
            }
            (5, Field::Bytes(b)) => {
                m.insert("uid".into(), json!(text(b)?));
            }
            (6, Field::Bytes(b)) => {
                m.insert("resourceVersion".into(), json!(text(b)?));
            }
            (11, Field::Bytes(b)) => map_entry(b, &mut labels)?,
            (12, Field::Bytes(b)) => map_entry(b, &mut annotations)?,
            (13, Field::Bytes(b)) => {
                let mut o = strings(
                    b,
                    &[
                        (1, "kind", false),
                        (3, "name", false),
                        (4, "uid", false),
                        (5, "apiVersion", false),
                    ],
                )?;
                for (num, f) in fields(b)? {
                    if let (6 | 7, Field::Varint(v)) = (num, f) {
                        let k = if num == 6 {
                            "controller"
                        } else {
                            "blockOwnerDeletion"
                        };
                        o.insert(k.into(), json!(v != 0));
                    }
                }
                owners.push(Value::Object(o));
            }
            (14, Field::Bytes(b)) => finalizers.push(json!(text(b)?)),
            _ => {}
        }
    }
    if !labels.is_empty() {
        m.insert("labels".into(), Value::Object(labels));
    }
    if !annotations.is_empty() {
        m.insert("annotations".into(), Value::Object(annotations));
    }
    if !finalizers.is_empty() {
        m.insert("finalizers".into(), Value::Array(finalizers));
    }
    if !owners.is_empty() {
        m.insert("ownerReferences".into(), Value::Array(owners));
    }
    Ok(Value::Object(m))
}

fn policy_rule(buf: &[u8]) -> Result<Value, ApiError> {
    let mut m = strings(
        buf,
        &[
            (1, "verbs", true),
            (2, "apiGroups", true),
            (3, "resources", true),
            (4, "resourceNames", true),
            (5, "nonResourceURLs", true),
        ],
    )?;
    m.entry("verbs").or_insert_with(|| json!([]));
    Ok(Value::Object(m))
}

fn label_selector(buf: &[u8]) -> Result<Value, ApiError> {
    let mut labels = Map::new();
    let mut exprs = Vec::new();
    for (num, f) in fields(buf)? {
        match (num, f) {
            (1, Field::Bytes(b)) => map_entry(b, &mut labels)?,
            (2, Field::Bytes(b)) => exprs.push(Value::Object(strings(
                b,
                &[
                    (1, "key", false),
                    (2, "operator", false),
                    (3, "values", true),
                ],
            )?)),
            _ => {}
        }
    }
    let mut m = Map::new();
    if !labels.is_empty() {
        m.insert("matchLabels".into(), Value::Object(labels));
    }
    if !exprs.is_empty() {
        m.insert("matchExpressions".into(), Value::Array(exprs));
    }
    Ok(Value::Object(m))
}

/// The fields of an RBAC object's message (`k8s.io/api/rbac/v1/generated.proto`).
fn rbac_object(kind: Kind, buf: &[u8], obj: &mut Map<String, Value>) -> Result<(), ApiError> {
    let binding = matches!(kind, Kind::RoleBinding | Kind::ClusterRoleBinding);
    let mut rules = Vec::new();
    let mut subjects = Vec::new();
    for (num, f) in fields(buf)? {
        let Field::Bytes(b) = f else { continue };
        match (num, binding) {
            (1, _) => {
                obj.insert("metadata".into(), object_meta(b)?);
            }
            (2, false) => rules.push(policy_rule(b)?),
            (3, false) => {
                let mut selectors = Vec::new();
                for (n, f) in fields(b)? {
                    if let (1, Field::Bytes(s)) = (n, f) {
                        selectors.push(label_selector(s)?);
                    }
                }
                obj.insert(
                    "aggregationRule".into(),
                    json!({"clusterRoleSelectors": selectors}),
                );
            }
            (2, true) => subjects.push(Value::Object(strings(
                b,
                &[
                    (1, "kind", false),
                    (2, "apiGroup", false),
                    (3, "name", false),
                    (4, "namespace", false),
                ],
            )?)),
            (3, true) => {
                obj.insert(
                    "roleRef".into(),
                    Value::Object(strings(
                        b,
                        &[
                            (1, "apiGroup", false),
                            (2, "kind", false),
                            (3, "name", false),
                        ],
                    )?),
                );
            }
            _ => {}
        }
    }
    if !rules.is_empty() {
        obj.insert("rules".into(), Value::Array(rules));
    }
    if !subjects.is_empty() {
        obj.insert("subjects".into(), Value::Array(subjects));
    }
    Ok(())
}

/// Whether bodies of `res` may be protobuf (the RBAC kinds).
pub fn supported(res: &ResourceInfo) -> bool {
    matches!(
        res.kind_id,
        Kind::Role | Kind::ClusterRole | Kind::RoleBinding | Kind::ClusterRoleBinding
    )
}

/// Decodes a protobuf body of `res` into the JSON object it stands for.
pub fn decode_object(res: &ResourceInfo, body: &[u8]) -> Result<Value, ApiError> {
    let rest = body
        .strip_prefix(MAGIC)
        .ok_or_else(|| bad("the body does not start with the Kubernetes protobuf prefix"))?;
    let mut obj = Map::new();
    let mut raw: &[u8] = &[];
    for (num, f) in fields(rest)? {
        match (num, f) {
            (1, Field::Bytes(b)) => {
                obj.extend(strings(b, &[(1, "apiVersion", false), (2, "kind", false)])?);
            }
            (2, Field::Bytes(b)) => raw = b,
            (3, Field::Bytes(b)) if !b.is_empty() => {
                return Err(bad("content encodings are not supported"));
            }
            _ => {}
        }
    }
    rbac_object(res.kind_id, raw, &mut obj)?;
    Ok(Value::Object(obj))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crds::resources::{CLUSTER_ROLES, ROLE_BINDINGS};

    fn field(num: u64, b: &[u8]) -> Vec<u8> {
        let mut out = vec![(num << 3 | 2) as u8, b.len() as u8];
        out.extend_from_slice(b);
        out
    }

    fn envelope(api_version: &str, kind: &str, raw: &[u8]) -> Vec<u8> {
        let mut tm = field(1, api_version.as_bytes());
        tm.extend(field(2, kind.as_bytes()));
        let mut out = MAGIC.to_vec();
        out.extend(field(1, &tm));
        out.extend(field(2, raw));
        out
    }

    #[test]
    fn rbac_objects_decode_from_kubectl_protobuf() {
        // RoleBinding{metadata{name, namespace, labels{a: b}}, subjects[{User, rbac, alice}],
        // roleRef{rbac, ClusterRole, edit}}.
        let mut meta = field(1, b"rb");
        meta.extend(field(3, b"team-a"));
        let mut entry = field(1, b"a");
        entry.extend(field(2, b"b"));
        meta.extend(field(11, &entry));
        let mut subject = field(1, b"User");
        subject.extend(field(2, b"rbac.authorization.k8s.io"));
        subject.extend(field(3, b"alice"));
        let mut role_ref = field(1, b"rbac.authorization.k8s.io");
        role_ref.extend(field(2, b"ClusterRole"));
        role_ref.extend(field(3, b"edit"));
        let mut raw = field(1, &meta);
        raw.extend(field(2, &subject));
        raw.extend(field(3, &role_ref));
        let body = envelope("rbac.authorization.k8s.io/v1", "RoleBinding", &raw);
        assert_eq!(
            decode_object(&ROLE_BINDINGS, &body).unwrap(),
            json!({"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "RoleBinding",
                   "metadata": {"name": "rb", "namespace": "team-a", "labels": {"a": "b"}},
                   "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": "edit"},
                   "subjects": [{"kind": "User", "apiGroup": "rbac.authorization.k8s.io", "name": "alice"}]})
        );
        // ClusterRole{metadata{name}, rules[{verbs[get, list], apiGroups[""], resources[pods]}],
        // aggregationRule{selectors[{matchLabels{x: y}}]}}.
        let mut rule = field(1, b"get");
        rule.extend(field(1, b"list"));
        rule.extend(field(2, b""));
        rule.extend(field(3, b"pods"));
        let mut entry = field(1, b"x");
        entry.extend(field(2, b"y"));
        let selector = field(1, &entry);
        let mut raw = field(1, &field(1, b"cr"));
        raw.extend(field(2, &rule));
        raw.extend(field(3, &field(1, &selector)));
        let body = envelope("rbac.authorization.k8s.io/v1", "ClusterRole", &raw);
        assert_eq!(
            decode_object(&CLUSTER_ROLES, &body).unwrap(),
            json!({"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "ClusterRole",
                   "metadata": {"name": "cr"},
                   "aggregationRule": {"clusterRoleSelectors": [{"matchLabels": {"x": "y"}}]},
                   "rules": [{"verbs": ["get", "list"], "apiGroups": [""], "resources": ["pods"]}]})
        );
        assert_eq!(decode_object(&CLUSTER_ROLES, b"{}").unwrap_err().code, 400);
        assert_eq!(
            decode_object(&CLUSTER_ROLES, b"k8s\0\x0a\xff")
                .unwrap_err()
                .code,
            400
        );
    }
}
