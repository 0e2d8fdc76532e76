//! Schema-aware operations on JSON objects, after structured-merge-diff's `typed` package:
//! the field set of an object ([`to_field_set`]), the difference of two objects
//! ([`compare`]), the merge of an applied configuration into a live object ([`merge`]) and
//! the removal of nodes by path ([`remove`]).

use std::collections::BTreeSet;

use serde_json::{Map, Value};

use super::fieldpath::{Path, PathElement, Set};
use super::schema::{ListKind, Shape, list_kind};

/// What changed between two objects.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Comparison {
    pub added: Set,
    pub modified: Set,
    pub removed: Set,
}

impl Comparison {
    pub fn is_same(&self) -> bool {
        self.added.is_empty() && self.modified.is_empty() && self.removed.is_empty()
    }
}

/// The shape of `value` under `schema`, deduced from the value where the schema is silent.
fn shape<'a>(schema: &'a Value, value: &Value) -> Shape<'a> {
    match Shape::of(schema) {
        Shape::Deduced if value.is_object() => Shape::Deduced,
        Shape::Deduced => Shape::Leaf,
        Shape::Struct(_) | Shape::Map(_) if !value.is_object() => Shape::Leaf,
        Shape::List(_) if !value.is_array() => Shape::Leaf,
        s => s,
    }
}

static NONE: Value = Value::Null;

/// The children of a granular node: (path element, value, child schema, declared field).
fn children<'a, 's>(
    sh: Shape<'s>,
    value: &'a Value,
) -> Vec<(PathElement, &'a Value, &'s Value, bool)> {
    match (sh, value) {
        (Shape::Struct(s), Value::Object(m)) => m
            .iter()
            .filter_map(|(k, v)| {
                let declared = s.get("properties").and_then(|p| p.get(k));
                let child = declared.or_else(|| Shape::field(s, k))?;
                Some((PathElement::Field(k.clone()), v, child, declared.is_some()))
            })
            .collect(),
        (Shape::Map(elem), Value::Object(m)) => m
            .iter()
            .map(|(k, v)| (PathElement::Field(k.clone()), v, elem, false))
            .collect(),
        (Shape::Deduced, Value::Object(m)) => m
            .iter()
            .map(|(k, v)| (PathElement::Field(k.clone()), v, &NONE, false))
            .collect(),
        (Shape::List(s), Value::Array(items)) => {
            let item_schema = Shape::items(s);
            let kind = list_kind(s);
            let mut seen = BTreeSet::new();
            items
                .iter()
                .filter_map(|item| {
                    let pe = element_of(&kind, item);
                    seen.insert(pe.clone())
                        .then_some((pe, item, item_schema, false))
                })
                .collect()
        }
        _ => Vec::new(),
    }
}

fn element_of(kind: &ListKind, item: &Value) -> PathElement {
    match kind {
        ListKind::Map(keys) => PathElement::key_of(item, keys),
        _ => PathElement::value_of(item),
    }
}

/// The fields `value` sets (structured-merge-diff's `ToFieldSet`): every leaf, every list
/// item (`.`), map entries, and nulls and empty objects.
pub fn to_field_set(schema: &Value, value: &Value) -> Set {
    fn walk(schema: &Value, value: &Value, path: &mut Path, out: &mut Set) {
        let sh = shape(schema, value);
        if matches!(sh, Shape::Leaf) {
            if !path.is_empty() {
                out.insert(path.clone());
            }
            return;
        }
        let is_list = matches!(sh, Shape::List(_));
        for (pe, v, s, declared) in children(sh, value) {
            path.push(pe);
            walk(s, v, path, out);
            let empty_obj = v.as_object().is_some_and(Map::is_empty);
            if is_list || !declared || v.is_null() || empty_obj {
                out.insert(path.clone());
            }
            path.pop();
        }
    }
    let mut out = Set::new();
    walk(schema, value, &mut Vec::new(), &mut out);
    out
}

fn present(v: Option<&Value>) -> Option<&Value> {
    v.filter(|v| !v.is_null())
}

/// What differs between `lhs` (before) and `rhs` (after): leaves added, changed, removed,
/// and granular nodes (maps, lists, list items) added or removed as a whole.
pub fn compare(schema: &Value, lhs: &Value, rhs: &Value) -> Comparison {
    fn walk(
        schema: &Value,
        lhs: Option<&Value>,
        rhs: Option<&Value>,
        path: &mut Path,
        out: &mut Comparison,
    ) {
        let (lhs, rhs) = (present(lhs), present(rhs));
        let (lsh, rsh) = (lhs.map(|v| shape(schema, v)), rhs.map(|v| shape(schema, v)));
        let leaf = matches!(lsh, Some(Shape::Leaf))
            || matches!(rsh, Some(Shape::Leaf))
            || (lhs.is_some() && rhs.is_some() && lhs.map(kind) != rhs.map(kind));
        if leaf {
            if path.is_empty() {
                return;
            }
            match (lhs, rhs) {
                (None, Some(_)) => out.added.insert(path.clone()),
                (Some(_), None) => out.removed.insert(path.clone()),
                (Some(a), Some(b)) if a != b => out.modified.insert(path.clone()),
                _ => {}
            }
            return;
        }
        let sh = rsh.or(lsh).unwrap_or(Shape::Leaf);
        let lc = lhs
            .map(|v| children(lsh.unwrap_or(sh), v))
            .unwrap_or_default();
        let rc = rhs.map(|v| children(sh, v)).unwrap_or_default();
        let mut keys: Vec<&PathElement> = lc.iter().map(|c| &c.0).collect();
        for c in &rc {
            if !lc.iter().any(|l| l.0 == c.0) {
                keys.push(&c.0);
            }
        }
        for pe in keys {
            let l = lc.iter().find(|c| &c.0 == pe);
            let r = rc.iter().find(|c| &c.0 == pe);
            let s = r.or(l).map_or(&NONE, |c| c.2);
            path.push(pe.clone());
            walk(s, l.map(|c| c.1), r.map(|c| c.1), path, out);
            path.pop();
        }
        if !path.is_empty() {
            match (lhs, rhs) {
                (None, Some(_)) => out.added.insert(path.clone()),
                (Some(_), None) => out.removed.insert(path.clone()),
                _ => {}
            }
        }
    }
    fn kind(v: &Value) -> u8 {
        match v {
            Value::Object(_) => 1,
            Value::Array(_) => 2,
            _ => 3,
        }
    }
    let mut out = Comparison::default();
    walk(schema, Some(lhs), Some(rhs), &mut Vec::new(), &mut out);
    out
}

/// Drops nulls from an applied value (a null in a configuration means "absent").
fn without_nulls(v: &Value) -> Value {
    match v {
        Value::Object(m) => Value::Object(
            m.iter()
                .filter(|(_, v)| !v.is_null())
                .map(|(k, v)| (k.clone(), without_nulls(v)))
                .collect(),
        ),
        Value::Array(a) => Value::Array(a.iter().map(without_nulls).collect()),
        other => other.clone(),
    }
}

/// Merges an applied configuration `rhs` into `lhs`: leaves and atomic nodes are replaced,
/// structs and maps merged field by field, list maps and sets item by item (the live order is
/// kept, new items are appended in the configuration's order). A null removes the field.
pub fn merge(schema: &Value, lhs: &Value, rhs: &Value) -> Value {
    let sh = shape(schema, rhs);
    match (sh, lhs, rhs) {
        (Shape::Struct(_) | Shape::Map(_) | Shape::Deduced, Value::Object(l), Value::Object(r)) => {
            let mut out = l.clone();
            let kids = children(sh, rhs);
            for (k, rv) in r {
                if rv.is_null() {
                    out.remove(k);
                    continue;
                }
                let child = kids
                    .iter()
                    .find(|c| matches!(&c.0, PathElement::Field(f) if f == k))
                    .map_or(&NONE, |c| c.2);
                let merged = match out.get(k) {
                    Some(lv) if !lv.is_null() => merge(child, lv, rv),
                    _ => without_nulls(rv),
                };
                out.insert(k.clone(), merged);
            }
            Value::Object(out)
        }
        (Shape::List(s), Value::Array(l), Value::Array(r)) => {
            let kind = list_kind(s);
            let items = Shape::items(s);
            let rc: Vec<(PathElement, &Value)> =
                r.iter().map(|v| (element_of(&kind, v), v)).collect();
            let mut out: Vec<Value> = Vec::with_capacity(l.len() + r.len());
            let mut seen = BTreeSet::new();
            for lv in l {
                let pe = element_of(&kind, lv);
                match rc.iter().find(|(p, _)| *p == pe) {
                    Some((_, rv)) => out.push(merge(items, lv, rv)),
                    None => out.push(lv.clone()),
                }
                seen.insert(pe);
            }
            for (pe, rv) in &rc {
                if seen.insert(pe.clone()) {
                    out.push(without_nulls(rv));
                }
            }
            Value::Array(out)
        }
        _ => without_nulls(rhs),
    }
}

/// The child of `v` named by `pe`, as (container index or key) for removal.
fn child_mut<'a>(v: &'a mut Value, pe: &PathElement) -> Option<&'a mut Value> {
    match (v, pe) {
        (Value::Object(m), PathElement::Field(f)) => m.get_mut(f),
        (Value::Array(a), pe) => {
            let i = position(a, pe)?;
            a.get_mut(i)
        }
        _ => None,
    }
}

fn position(a: &[Value], pe: &PathElement) -> Option<usize> {
    match pe {
        PathElement::Key(k) => {
            let key: Value = serde_json::from_str(k).ok()?;
            let names: Vec<String> = key.as_object()?.keys().cloned().collect();
            a.iter()
                .position(|item| item.is_object() && PathElement::key_of(item, &names) == *pe)
        }
        PathElement::Value(_) => a.iter().position(|item| PathElement::value_of(item) == *pe),
        PathElement::Index(i) => (*i < a.len()).then_some(*i),
        PathElement::Field(_) => None,
    }
}

/// Removes every node named in `paths` (with its subtree); absent nodes are ignored.
pub fn remove(value: &mut Value, paths: &BTreeSet<Path>) {
    for p in paths {
        let Some((last, parent_path)) = p.split_last() else {
            continue;
        };
        let mut node = Some(&mut *value);
        for pe in parent_path {
            node = node.and_then(|n| child_mut(n, pe));
        }
        match (node, last) {
            (Some(Value::Object(m)), PathElement::Field(f)) => {
                m.shift_remove(f);
            }
            (Some(Value::Array(a)), pe) => {
                if let Some(i) = position(a, pe) {
                    a.remove(i);
                }
            }
            _ => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::apply::fieldpath::fields;
    use crate::apply::schema::root;
    use crds::resources::{ACTOR_TEMPLATES, ACTORS};
    use serde_json::json;

    fn names(s: &Set) -> Vec<String> {
        s.iter()
            .map(|p| crate::apply::fieldpath::display(p))
            .collect()
    }

    #[test]
    fn field_set_of_an_actor() {
        let obj = json!({
            "metadata": {"name": "a", "labels": {"app": "web"}, "finalizers": ["x"]},
            "spec": {"template": {"name": "counter"}, "workerSelector": {}},
            "status": {"conditions": [{"type": "Ready", "status": "True"}]}
        });
        let set = to_field_set(root(&ACTORS), &obj);
        assert_eq!(
            names(&set),
            [
                ".metadata.finalizers[=\"x\"]",
                ".metadata.labels.app",
                ".metadata.name",
                ".spec.template.name",
                ".spec.workerSelector",
                ".status.conditions[type=\"Ready\"]",
                ".status.conditions[type=\"Ready\"].status",
                ".status.conditions[type=\"Ready\"].type",
            ]
        );
    }

    #[test]
    fn compare_reports_nodes_and_leaves() {
        let a = json!({"metadata": {"name": "a"}, "spec": {"activation": "OnDemand", "idleTimeout": "5m"}});
        let b = json!({"metadata": {"name": "a", "labels": {"x": "1"}}, "spec": {"activation": "Always"}});
        let c = compare(root(&ACTORS), &a, &b);
        assert_eq!(names(&c.added), [".metadata.labels", ".metadata.labels.x"]);
        assert_eq!(names(&c.modified), [".spec.activation"]);
        assert_eq!(names(&c.removed), [".spec.idleTimeout"]);
        assert!(compare(root(&ACTORS), &a, &a).is_same());
    }

    #[test]
    fn merge_lists_by_key_and_atomic_lists_whole() {
        let schema = root(&ACTOR_TEMPLATES);
        let live = json!({"spec": {"containers": [
            {"name": "a", "image": "x", "command": ["1", "2"], "env": [{"name": "E", "value": "1"}]},
            {"name": "b", "image": "y"}
        ]}});
        let cfg = json!({"spec": {"containers": [
            {"name": "c", "image": "z"},
            {"name": "a", "command": ["3"], "env": [{"name": "F", "value": "2"}]}
        ]}});
        let out = merge(schema, &live, &cfg);
        assert_eq!(
            out,
            json!({"spec": {"containers": [
                {"name": "a", "image": "x", "command": ["3"], "env": [{"name": "E", "value": "1"}, {"name": "F", "value": "2"}]},
                {"name": "b", "image": "y"},
                {"name": "c", "image": "z"}
            ]}})
        );
        let mut pruned = out.clone();
        let mut p = fields(&["spec", "containers"]);
        p.push(PathElement::key_of(&json!({"name": "b"}), &["name".into()]));
        let mut q = fields(&["spec", "containers"]);
        q.push(PathElement::key_of(&json!({"name": "a"}), &["name".into()]));
        q.push(PathElement::Field("image".into()));
        remove(&mut pruned, &[p, q].into_iter().collect());
        assert_eq!(pruned["spec"]["containers"].as_array().unwrap().len(), 2);
        assert!(pruned["spec"]["containers"][0].get("image").is_none());
        // A null in the configuration removes the field.
        let out = merge(
            root(&ACTORS),
            &json!({"spec": {"idleTimeout": "5m", "activation": "Always"}}),
            &json!({"spec": {"idleTimeout": null}}),
        );
        assert_eq!(out, json!({"spec": {"activation": "Always"}}));
    }
}
