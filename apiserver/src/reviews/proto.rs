//! The Kubernetes protobuf encoding of the review kinds, which client-go's typed
//! authorization client (`kubectl auth can-i`) sends: the `k8s\0` magic, a `runtime.Unknown`
//! envelope and the object's message (`k8s.io/api/authorization/v1/generated.proto`).
//! Requests are decoded into the JSON shape the handlers take; answers are JSON (which
//! client-go accepts beside protobuf) or protobuf when only protobuf is accepted.

use prost::Message;
use serde_json::{Map, Value, json};

use super::{GROUP, ReviewKind, VERSION};
use crate::status::ApiError;

/// Media type of the Kubernetes protobuf encoding.
pub const MEDIA_TYPE: &str = "application/vnd.kubernetes.protobuf";
/// Prefix of every protobuf-encoded object.
const MAGIC: &[u8] = b"k8s\0";

#[derive(Clone, PartialEq, Message)]
struct TypeMeta {
    #[prost(string, optional, tag = "1")]
    api_version: Option<String>,
    #[prost(string, optional, tag = "2")]
    kind: Option<String>,
}

/// `runtime.Unknown`: the envelope.
#[derive(Clone, PartialEq, Message)]
struct Unknown {
    #[prost(message, optional, tag = "1")]
    type_meta: Option<TypeMeta>,
    #[prost(bytes = "vec", optional, tag = "2")]
    raw: Option<Vec<u8>>,
    #[prost(string, optional, tag = "3")]
    content_encoding: Option<String>,
    #[prost(string, optional, tag = "4")]
    content_type: Option<String>,
}

/// The part of `ObjectMeta` a review uses.
#[derive(Clone, PartialEq, Message)]
struct ObjectMeta {
    #[prost(string, optional, tag = "1")]
    name: Option<String>,
    #[prost(string, optional, tag = "3")]
    namespace: Option<String>,
}

#[derive(Clone, PartialEq, Message)]
struct ResourceAttributes {
    #[prost(string, optional, tag = "1")]
    namespace: Option<String>,
    #[prost(string, optional, tag = "2")]
    verb: Option<String>,
    #[prost(string, optional, tag = "3")]
    group: Option<String>,
    #[prost(string, optional, tag = "4")]
    version: Option<String>,
    #[prost(string, optional, tag = "5")]
    resource: Option<String>,
    #[prost(string, optional, tag = "6")]
    subresource: Option<String>,
    #[prost(string, optional, tag = "7")]
    name: Option<String>,
}

#[derive(Clone, PartialEq, Message)]
struct NonResourceAttributes {
    #[prost(string, optional, tag = "1")]
    path: Option<String>,
    #[prost(string, optional, tag = "2")]
    verb: Option<String>,
}

#[derive(Clone, PartialEq, Message)]
struct ExtraValue {
    #[prost(string, repeated, tag = "1")]
    items: Vec<String>,
}

/// `SubjectAccessReviewSpec` (also `SelfSubjectAccessReviewSpec`, which has only the first
/// two fields).
#[derive(Clone, PartialEq, Message)]
struct AccessSpec {
    #[prost(message, optional, tag = "1")]
    resource_attributes: Option<ResourceAttributes>,
    #[prost(message, optional, tag = "2")]
    non_resource_attributes: Option<NonResourceAttributes>,
    #[prost(string, optional, tag = "3")]
    user: Option<String>,
    #[prost(string, repeated, tag = "4")]
    groups: Vec<String>,
    #[prost(btree_map = "string, message", tag = "5")]
    extra: std::collections::BTreeMap<String, ExtraValue>,
    #[prost(string, optional, tag = "6")]
    uid: Option<String>,
}

#[derive(Clone, PartialEq, Message)]
struct AccessStatus {
    #[prost(bool, optional, tag = "1")]
    allowed: Option<bool>,
    #[prost(string, optional, tag = "2")]
    reason: Option<String>,
    #[prost(string, optional, tag = "3")]
    evaluation_error: Option<String>,
    #[prost(bool, optional, tag = "4")]
    denied: Option<bool>,
}

/// Any of the three access review kinds.
#[derive(Clone, PartialEq, Message)]
struct AccessReview {
    #[prost(message, optional, tag = "1")]
    metadata: Option<ObjectMeta>,
    #[prost(message, optional, tag = "2")]
    spec: Option<AccessSpec>,
    #[prost(message, optional, tag = "3")]
    status: Option<AccessStatus>,
}

#[derive(Clone, PartialEq, Message)]
struct RulesSpec {
    #[prost(string, optional, tag = "1")]
    namespace: Option<String>,
}

#[derive(Clone, PartialEq, Message)]
struct ResourceRule {
    #[prost(string, repeated, tag = "1")]
    verbs: Vec<String>,
    #[prost(string, repeated, tag = "2")]
    api_groups: Vec<String>,
    #[prost(string, repeated, tag = "3")]
    resources: Vec<String>,
    #[prost(string, repeated, tag = "4")]
    resource_names: Vec<String>,
}

#[derive(Clone, PartialEq, Message)]
struct NonResourceRule {
    #[prost(string, repeated, tag = "1")]
    verbs: Vec<String>,
    #[prost(string, repeated, tag = "2")]
    non_resource_urls: Vec<String>,
}

#[derive(Clone, PartialEq, Message)]
struct RulesStatus {
    #[prost(message, repeated, tag = "1")]
    resource_rules: Vec<ResourceRule>,
    #[prost(message, repeated, tag = "2")]
    non_resource_rules: Vec<NonResourceRule>,
    #[prost(bool, optional, tag = "3")]
    incomplete: Option<bool>,
    #[prost(string, optional, tag = "4")]
    evaluation_error: Option<String>,
}

#[derive(Clone, PartialEq, Message)]
struct RulesReview {
    #[prost(message, optional, tag = "1")]
    metadata: Option<ObjectMeta>,
    #[prost(message, optional, tag = "2")]
    spec: Option<RulesSpec>,
    #[prost(message, optional, tag = "3")]
    status: Option<RulesStatus>,
}

/// Whether a `Content-Type` is the protobuf encoding.
pub fn is_protobuf(content_type: Option<&str>) -> bool {
    content_type
        .and_then(|ct| ct.split(';').next())
        .is_some_and(|ct| ct.trim().eq_ignore_ascii_case(MEDIA_TYPE))
}

fn bad(kind: &str, why: impl std::fmt::Display) -> ApiError {
    ApiError::bad_request(format!(
        "{kind} in version \"{VERSION}\" cannot be handled as a {kind}: {why}"
    ))
}

fn put(m: &mut Map<String, Value>, key: &str, v: &Option<String>) {
    if let Some(v) = v {
        m.insert(key.into(), json!(v));
    }
}

fn meta_json(m: Option<&ObjectMeta>) -> Value {
    let mut out = Map::new();
    if let Some(m) = m {
        put(&mut out, "name", &m.name);
        put(&mut out, "namespace", &m.namespace);
    }
    Value::Object(out)
}

fn access_spec_json(s: &AccessSpec) -> Value {
    let mut out = Map::new();
    if let Some(r) = &s.resource_attributes {
        let mut a = Map::new();
        put(&mut a, "namespace", &r.namespace);
        put(&mut a, "verb", &r.verb);
        put(&mut a, "group", &r.group);
        put(&mut a, "version", &r.version);
        put(&mut a, "resource", &r.resource);
        put(&mut a, "subresource", &r.subresource);
        put(&mut a, "name", &r.name);
        out.insert("resourceAttributes".into(), Value::Object(a));
    }
    if let Some(n) = &s.non_resource_attributes {
        let mut a = Map::new();
        put(&mut a, "path", &n.path);
        put(&mut a, "verb", &n.verb);
        out.insert("nonResourceAttributes".into(), Value::Object(a));
    }
    put(&mut out, "user", &s.user);
    if !s.groups.is_empty() {
        out.insert("groups".into(), json!(s.groups));
    }
    if !s.extra.is_empty() {
        let extra: Map<String, Value> = s
            .extra
            .iter()
            .map(|(k, v)| (k.clone(), json!(v.items)))
            .collect();
        out.insert("extra".into(), Value::Object(extra));
    }
    put(&mut out, "uid", &s.uid);
    Value::Object(out)
}

/// Decodes a protobuf request body of `kind` into its JSON form.
pub fn decode(kind: &ReviewKind, body: &[u8]) -> Result<Value, ApiError> {
    let rest = body
        .strip_prefix(MAGIC)
        .ok_or_else(|| bad(kind.kind, "provided data does not appear to be a protobuf message, expected prefix [107 56 115 0]"))?;
    let env = Unknown::decode(rest).map_err(|e| bad(kind.kind, e))?;
    let tm = env.type_meta.unwrap_or_default();
    let api_version = tm.api_version.unwrap_or_default();
    let k = tm.kind.unwrap_or_default();
    if (!k.is_empty() && k != kind.kind)
        || (!api_version.is_empty() && api_version != format!("{GROUP}/{VERSION}"))
    {
        return Err(bad(
            kind.kind,
            format!("the object is a {api_version} {k}, not a {}", kind.kind),
        ));
    }
    let raw = env.raw.unwrap_or_default();
    let (metadata, spec) = if kind.plural == super::SELF_SUBJECT_RULES_REVIEWS.plural {
        let r = RulesReview::decode(raw.as_slice()).map_err(|e| bad(kind.kind, e))?;
        let mut spec = Map::new();
        if let Some(s) = &r.spec {
            put(&mut spec, "namespace", &s.namespace);
        }
        (meta_json(r.metadata.as_ref()), Value::Object(spec))
    } else {
        let r = AccessReview::decode(raw.as_slice()).map_err(|e| bad(kind.kind, e))?;
        (
            meta_json(r.metadata.as_ref()),
            r.spec.as_ref().map_or(json!({}), access_spec_json),
        )
    };
    Ok(json!({
        "apiVersion": format!("{GROUP}/{VERSION}"),
        "kind": kind.kind,
        "metadata": metadata,
        "spec": spec,
    }))
}

fn strs(v: &Value) -> Vec<String> {
    v.as_array()
        .map(|a| {
            a.iter()
                .filter_map(Value::as_str)
                .map(str::to_string)
                .collect()
        })
        .unwrap_or_default()
}

fn opt_str(v: &Value) -> Option<String> {
    v.as_str().map(str::to_string)
}

fn proto_meta(v: &Value) -> Option<ObjectMeta> {
    Some(ObjectMeta {
        name: opt_str(&v["name"]),
        namespace: opt_str(&v["namespace"]),
    })
}

/// Encodes an answer (the JSON a handler returned) of `kind` as protobuf.
pub fn encode(kind: &ReviewKind, answer: &Value) -> Vec<u8> {
    let raw = if kind.plural == super::SELF_SUBJECT_RULES_REVIEWS.plural {
        let st = &answer["status"];
        RulesReview {
            metadata: proto_meta(&answer["metadata"]),
            spec: Some(RulesSpec {
                namespace: opt_str(&answer["spec"]["namespace"]),
            }),
            status: Some(RulesStatus {
                resource_rules: st["resourceRules"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .map(|r| ResourceRule {
                        verbs: strs(&r["verbs"]),
                        api_groups: strs(&r["apiGroups"]),
                        resources: strs(&r["resources"]),
                        resource_names: strs(&r["resourceNames"]),
                    })
                    .collect(),
                non_resource_rules: st["nonResourceRules"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .map(|r| NonResourceRule {
                        verbs: strs(&r["verbs"]),
                        non_resource_urls: strs(&r["nonResourceURLs"]),
                    })
                    .collect(),
                incomplete: Some(st["incomplete"].as_bool().unwrap_or(false)),
                evaluation_error: opt_str(&st["evaluationError"]),
            }),
        }
        .encode_to_vec()
    } else {
        let spec = &answer["spec"];
        let ra = &spec["resourceAttributes"];
        let na = &spec["nonResourceAttributes"];
        let st = &answer["status"];
        AccessReview {
            metadata: proto_meta(&answer["metadata"]),
            spec: Some(AccessSpec {
                resource_attributes: ra.is_object().then(|| ResourceAttributes {
                    namespace: opt_str(&ra["namespace"]),
                    verb: opt_str(&ra["verb"]),
                    group: opt_str(&ra["group"]),
                    version: opt_str(&ra["version"]),
                    resource: opt_str(&ra["resource"]),
                    subresource: opt_str(&ra["subresource"]),
                    name: opt_str(&ra["name"]),
                }),
                non_resource_attributes: na.is_object().then(|| NonResourceAttributes {
                    path: opt_str(&na["path"]),
                    verb: opt_str(&na["verb"]),
                }),
                user: opt_str(&spec["user"]),
                groups: strs(&spec["groups"]),
                extra: spec["extra"]
                    .as_object()
                    .into_iter()
                    .flatten()
                    .map(|(k, v)| (k.clone(), ExtraValue { items: strs(v) }))
                    .collect(),
                uid: opt_str(&spec["uid"]),
            }),
            status: Some(AccessStatus {
                allowed: Some(st["allowed"].as_bool().unwrap_or(false)),
                reason: opt_str(&st["reason"]),
                evaluation_error: opt_str(&st["evaluationError"]),
                denied: st["denied"].as_bool(),
            }),
        }
        .encode_to_vec()
    };
    let env = Unknown {
        type_meta: Some(TypeMeta {
            api_version: Some(format!("{GROUP}/{VERSION}")),
            kind: Some(kind.kind.to_string()),
        }),
        raw: Some(raw),
        content_encoding: Some(String::new()),
        content_type: Some(String::new()),
    };
    let mut out = MAGIC.to_vec();
    out.extend(env.encode_to_vec());
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_protobuf_review_decodes_and_its_answer_roundtrips() {
        let kind = super::super::SELF_SUBJECT_ACCESS_REVIEWS;
        let answer = json!({
            "apiVersion": "authorization.k8s.io/v1", "kind": "SelfSubjectAccessReview",
            "metadata": {},
            "spec": {"resourceAttributes": {"namespace": "team-a", "verb": "get", "group": "substrate.ate.dev", "resource": "actors"}},
            "status": {"allowed": true},
        });
        let bytes = encode(&kind, &answer);
        let back = decode(&kind, &bytes).unwrap();
        assert_eq!(back["spec"], answer["spec"]);
        assert_eq!(back["kind"], "SelfSubjectAccessReview");
        let e = decode(&kind, b"{}").unwrap_err();
        assert_eq!(e.code, 400);
        let rules = super::super::SELF_SUBJECT_RULES_REVIEWS;
        let e = decode(&rules, &bytes).unwrap_err();
        assert!(
            e.message.contains("not a SelfSubjectRulesReview"),
            "{}",
            e.message
        );
    }
}
