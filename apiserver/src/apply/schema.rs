//! The shape of every node of an object, read from the kind's OpenAPI v3 schema: which maps
//! are structs (named fields) or granular maps (labels), which lists are atomic, sets
//! (`x-kubernetes-list-type: set`) or associative (`map` with `x-kubernetes-list-map-keys`),
//! and what is atomic (`x-kubernetes-map-type: atomic`). Lists without a list type are
//! atomic, as for CRDs. Nodes the schema says nothing about (`x-kubernetes-preserve-unknown-
//! fields`, `{}`) are *deduced* from the value as structured-merge-diff does: objects are
//! granular maps, lists atomic.
//!
//! `metadata` is `ObjectMeta`, whose schema a CRD does not carry; it is described here:
//! labels and annotations granular, finalizers a set, ownerReferences a list map keyed by
//! `uid`.

use std::sync::OnceLock;

use serde_json::{Value, json};

use crds::resources::{ALL, ResourceInfo};

/// How a list's items are identified.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ListKind {
    /// Replaced as a whole.
    Atomic,
    /// Scalars identified by value.
    Set,
    /// Objects identified by these key fields.
    Map(Vec<String>),
}

/// The shape of one node.
#[derive(Debug, Clone, Copy)]
pub enum Shape<'a> {
    /// A leaf: scalars, atomic maps and atomic lists.
    Leaf,
    /// An object with named fields (`properties`).
    Struct(&'a Value),
    /// An object whose keys are data (`additionalProperties`); the element schema.
    Map(&'a Value),
    /// A granular list (set or map); the whole list schema.
    List(&'a Value),
    /// No schema: deduced from the value.
    Deduced,
}

static EMPTY: Value = Value::Null;

impl<'a> Shape<'a> {
    /// The shape `schema` gives a node.
    pub fn of(schema: &'a Value) -> Shape<'a> {
        if schema.is_null() || schema.as_object().is_some_and(|m| m.is_empty()) {
            return Shape::Deduced;
        }
        if schema.get("x-kubernetes-int-or-string") == Some(&Value::Bool(true)) {
            return Shape::Leaf;
        }
        let ty = schema.get("type").and_then(Value::as_str);
        let props = schema.get("properties").filter(|p| p.is_object());
        let additional = schema.get("additionalProperties").filter(|a| a.is_object());
        if ty == Some("object") || props.is_some() || additional.is_some() {
            if schema.get("x-kubernetes-map-type").and_then(Value::as_str) == Some("atomic") {
                return Shape::Leaf;
            }
            if props.is_some() {
                return Shape::Struct(schema);
            }
            if let Some(a) = additional {
                return Shape::Map(a);
            }
            return Shape::Deduced;
        }
        if ty == Some("array") {
            return match list_kind(schema) {
                ListKind::Atomic => Shape::Leaf,
                _ => Shape::List(schema),
            };
        }
        if ty.is_none() && schema.get("x-kubernetes-preserve-unknown-fields").is_some() {
            return Shape::Deduced;
        }
        Shape::Leaf
    }

    /// The schema of field `name` of a struct (`None`: the field is not declared).
    pub fn field(schema: &'a Value, name: &str) -> Option<&'a Value> {
        schema
            .get("properties")
            .and_then(|p| p.get(name))
            .or_else(|| schema.get("additionalProperties").filter(|a| a.is_object()))
    }

    /// The item schema of a list.
    pub fn items(schema: &'a Value) -> &'a Value {
        schema.get("items").unwrap_or(&EMPTY)
    }
}

/// The list type of an array schema.
pub fn list_kind(schema: &Value) -> ListKind {
    match schema.get("x-kubernetes-list-type").and_then(Value::as_str) {
        Some("set") => ListKind::Set,
        Some("map") => ListKind::Map(
            schema
                .get("x-kubernetes-list-map-keys")
                .and_then(Value::as_array)
                .map(|a| {
                    a.iter()
                        .filter_map(|k| k.as_str().map(str::to_string))
                        .collect()
                })
                .unwrap_or_default(),
        ),
        _ => ListKind::Atomic,
    }
}

fn object_meta() -> Value {
    let string = json!({"type": "string"});
    let string_map = json!({"type": "object", "additionalProperties": {"type": "string"}});
    json!({
        "type": "object",
        "properties": {
            "name": string, "generateName": string, "namespace": string, "selfLink": string,
            "uid": string, "resourceVersion": string, "generation": {"type": "integer"},
            "creationTimestamp": string, "deletionTimestamp": string,
            "deletionGracePeriodSeconds": {"type": "integer"},
            "labels": string_map, "annotations": string_map,
            "finalizers": {"type": "array", "items": string, "x-kubernetes-list-type": "set"},
            "ownerReferences": {
                "type": "array",
                "x-kubernetes-list-type": "map",
                "x-kubernetes-list-map-keys": ["uid"],
                "items": {"type": "object", "properties": {
                    "apiVersion": string, "kind": string, "name": string, "uid": string,
                    "controller": {"type": "boolean"}, "blockOwnerDeletion": {"type": "boolean"}
                }}
            },
            "managedFields": {"type": "array", "items": {"type": "object", "x-kubernetes-map-type": "atomic"}}
        }
    })
}

/// The schema of a whole object of `res`, `metadata` included (built once per kind).
pub fn root(res: &ResourceInfo) -> &'static Value {
    static ROOTS: OnceLock<Vec<Value>> = OnceLock::new();
    let roots = ROOTS.get_or_init(|| {
        ALL.iter()
            .map(|r| {
                let mut s = r.schema();
                if !s.is_object() {
                    s = json!({"type": "object", "properties": {}});
                }
                if s.get("properties").is_none_or(|p| !p.is_object()) {
                    s["properties"] = json!({});
                }
                s["properties"]["metadata"] = object_meta();
                s["properties"]["apiVersion"] = json!({"type": "string"});
                s["properties"]["kind"] = json!({"type": "string"});
                s
            })
            .collect()
    });
    ALL.iter()
        .position(|r| r.kind_id == res.kind_id)
        .map_or(&EMPTY, |i| &roots[i])
}

#[cfg(test)]
mod tests {
    use super::*;
    use crds::resources::{ACTOR_TEMPLATES, ACTORS};

    #[test]
    fn conditions_containers_and_metadata_have_list_types() {
        let actor = root(&ACTORS);
        let conds = &actor["properties"]["status"]["properties"]["conditions"];
        assert_eq!(list_kind(conds), ListKind::Map(vec!["type".into()]));
        let meta = &actor["properties"]["metadata"];
        assert_eq!(list_kind(&meta["properties"]["finalizers"]), ListKind::Set);
        assert!(matches!(
            Shape::of(&meta["properties"]["labels"]),
            Shape::Map(_)
        ));
        let tpl = root(&ACTOR_TEMPLATES);
        let containers = &tpl["properties"]["spec"]["properties"]["containers"];
        assert_eq!(list_kind(containers), ListKind::Map(vec!["name".into()]));
        let item = Shape::items(containers);
        assert_eq!(
            list_kind(&item["properties"]["ports"]),
            ListKind::Map(vec!["containerPort".into(), "protocol".into()])
        );
        assert!(matches!(
            Shape::of(&item["properties"]["command"]),
            Shape::Leaf
        ));
    }
}
