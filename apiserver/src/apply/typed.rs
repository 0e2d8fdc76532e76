//! Schema-aware operations on JSON objects, after structured-merge-diff's `typed` package:
//! the field set of an object ([`to_field_set`]), the difference of two objects
//! ([`compare`]), the merge of an applied configuration into a live object ([`merge`]) and
//! the removal of nodes by path ([`remove`]).

use std::collections::{BTreeMap, BTreeSet};

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

/// An item of a list map or set named twice in `value`: Kubernetes refuses such an applied
/// configuration ("duplicate entries for key"), as it cannot tell which of the two is meant.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Duplicate {
    /// The second item's field path as Kubernetes writes it: `metadata.finalizers[2]`, or
    /// `spec.containers[1].name` for a list keyed by one field.
    pub field: String,
    /// The repeated value, or key field value.
    pub value: Value,
}

/// The first [`Duplicate`] in `value`, depth first.
pub fn duplicate_item(schema: &Value, value: &Value) -> Option<Duplicate> {
    fn walk(schema: &Value, value: &Value, at: &str) -> Option<Duplicate> {
        let sh = shape(schema, value);
        let join = |k: &str| {
            if at.is_empty() {
                k.to_string()
            } else {
                format!("{at}.{k}")
            }
        };
        match (sh, value) {
            (Shape::List(s), Value::Array(items)) => {
                let kind = list_kind(s);
                let mut seen = BTreeSet::new();
                for (i, item) in items.iter().enumerate() {
                    let pe = element_of(&kind, item);
                    if !seen.insert(pe) {
                        return Some(match &kind {
                            ListKind::Map(keys) if keys.len() == 1 => Duplicate {
                                field: format!("{at}[{i}].{}", keys[0]),
                                value: item.get(&keys[0]).cloned().unwrap_or(Value::Null),
                            },
                            ListKind::Map(keys) => Duplicate {
                                field: format!("{at}[{i}]"),
                                value: Value::Object(
                                    keys.iter()
                                        .filter_map(|k| item.get(k).map(|v| (k.clone(), v.clone())))
                                        .collect(),
                                ),
                            },
                            _ => Duplicate {
                                field: format!("{at}[{i}]"),
                                value: item.clone(),
                            },
                        });
                    }
                }
                let item_schema = Shape::items(s);
                items
                    .iter()
                    .enumerate()
                    .find_map(|(i, item)| walk(item_schema, item, &format!("{at}[{i}]")))
            }
            (Shape::Leaf, _) => None,
            (_, Value::Object(_)) => {
                children(sh, value)
                    .into_iter()
                    .find_map(|(pe, v, s, _)| match pe {
                        PathElement::Field(k) => walk(s, v, &join(&k)),
                        _ => None,
                    })
            }
            _ => None,
        }
    }
    walk(schema, value, "")
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
/// structs and maps merged field by field, list maps and sets item by item in
/// structured-merge-diff's order (see [`merge_list`]). A null removes the field.
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
            Value::Array(merge_list(Shape::items(s), &list_kind(s), l, r))
        }
        _ => without_nulls(rhs),
    }
}

/// Merges the items of a list map or set as structured-merge-diff's `visitListItems` does, so
/// that an applied list reads back in the order Kubernetes gives it: the configuration's items
/// in the configuration's order, and the live items it does not name kept, in their live
/// order, each before the applied item that followed it when that one's turn comes. Live
/// `[a, b]` with `[c, a]` applied gives `[c, a, b]`; with `[b, a]`, `[b, a]`; live `[a, m, b]`
/// with `[c, b, a]`, `[m, c, b, a]`. A GitOps tool that compares its manifest's list with the
/// live one, item by item, sees no difference after an apply.
///
/// Of items with equal keys only the first counts (the apiserver refuses an applied
/// configuration with duplicates before merging, see [`duplicate_item`]); a later live
/// duplicate of an applied item is dropped, one of an item not applied is kept.
fn merge_list(items: &Value, kind: &ListKind, l: &[Value], r: &[Value]) -> Vec<Value> {
    let lhs: Vec<PathElement> = l.iter().map(|v| element_of(kind, v)).collect();
    let mut live: BTreeMap<&PathElement, &Value> = BTreeMap::new();
    for (pe, v) in lhs.iter().zip(l) {
        live.entry(pe).or_insert(v);
    }
    let mut applied: BTreeMap<PathElement, &Value> = BTreeMap::new();
    let mut rhs: Vec<PathElement> = Vec::with_capacity(r.len());
    for v in r {
        let pe = element_of(kind, v);
        if !applied.contains_key(&pe) {
            applied.insert(pe.clone(), v);
            rhs.push(pe);
        }
    }
    // The items both sides have, in the configuration's order; `next` is the first of them
    // not written yet. A live item that is shared but not `next` waits for its turn.
    let mut shared = rhs.iter().filter(|pe| live.contains_key(pe));
    let mut next = shared.next();
    let mut written: BTreeSet<&PathElement> = BTreeSet::new();
    let mut out = Vec::with_capacity(l.len().max(r.len()));
    let (mut li, mut ri) = (0, 0);
    while li < lhs.len() || ri < rhs.len() {
        if li < lhs.len() && ri < rhs.len() {
            let pe = &lhs[li];
            if *pe == rhs[ri] {
                written.insert(pe);
                out.push(merge(items, live[pe], applied[pe]));
                li += 1;
                ri += 1;
                next = shared.next();
                continue;
            }
            if applied.contains_key(pe) && next.is_some_and(|n| n != pe) {
                li += 1;
                continue;
            }
        }
        if li < lhs.len() {
            let pe = &lhs[li];
            if !applied.contains_key(pe) {
                out.push(l[li].clone());
                li += 1;
                continue;
            }
            if written.contains(pe) || ri == rhs.len() {
                li += 1;
                continue;
            }
        }
        // `rhs` has each key once, so its items are written here or above, never both.
        let pe = &rhs[ri];
        written.insert(pe);
        let rv = applied[pe];
        out.push(match live.get(pe) {
            Some(lv) => merge(items, lv, rv),
            None => without_nulls(rv),
        });
        ri += 1;
        if next == Some(pe) {
            next = shared.next();
        }
    }
    out
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
    fn duplicate_items_of_sets_and_list_maps_are_found_with_their_path() {
        let dup = |schema: &Value, v: Value| duplicate_item(schema, &v);
        let actors = root(&ACTORS);
        assert_eq!(
            dup(actors, json!({"metadata": {"finalizers": ["a", "b", "a"]}})),
            Some(Duplicate {
                field: "metadata.finalizers[2]".into(),
                value: json!("a")
            })
        );
        assert_eq!(
            dup(
                root(&ACTOR_TEMPLATES),
                json!({"spec": {"containers": [
                    {"name": "a", "env": [{"name": "E"}, {"name": "E", "value": "2"}]}
                ]}})
            ),
            Some(Duplicate {
                field: "spec.containers[0].env[1].name".into(),
                value: json!("E")
            })
        );
        assert_eq!(
            dup(
                root(&ACTOR_TEMPLATES),
                json!({"spec": {"containers": [{"name": "a"}, {"name": "b"}, {"name": "a"}]}})
            ),
            Some(Duplicate {
                field: "spec.containers[2].name".into(),
                value: json!("a")
            })
        );
        // Atomic lists may repeat values; distinct items are no duplicates.
        assert_eq!(
            dup(
                root(&ACTOR_TEMPLATES),
                json!({"spec": {"containers": [{"name": "a", "command": ["x", "x"]}, {"name": "b"}]}})
            ),
            None
        );
        assert_eq!(
            dup(actors, json!({"metadata": {"finalizers": ["a", "b"]}})),
            None
        );
    }

    /// structured-merge-diff's list order, case by case (sets and list maps alike).
    #[test]
    fn merged_lists_read_back_in_kubernetes_order() {
        let schema = root(&ACTORS);
        let fin = |live: Value, applied: Value| {
            let out = merge(
                schema,
                &json!({"metadata": {"finalizers": live}}),
                &json!({"metadata": {"finalizers": applied}}),
            );
            out["metadata"]["finalizers"].clone()
        };
        // Reordered by the configuration.
        assert_eq!(fin(json!(["a", "b"]), json!(["b", "a"])), json!(["b", "a"]));
        assert_eq!(
            fin(json!(["a", "b", "c"]), json!(["c", "b", "a"])),
            json!(["c", "b", "a"])
        );
        // A new item goes where the configuration puts it, not at the end.
        assert_eq!(
            fin(json!(["a", "b"]), json!(["x", "a"])),
            json!(["x", "a", "b"])
        );
        assert_eq!(
            fin(json!(["a", "b"]), json!(["a", "x", "b"])),
            json!(["a", "x", "b"])
        );
        // Items the configuration does not name stay next to their neighbours.
        assert_eq!(
            fin(json!(["a", "m", "b"]), json!(["b", "a"])),
            json!(["m", "b", "a"])
        );
        assert_eq!(
            fin(json!(["m", "a", "n"]), json!(["a"])),
            json!(["m", "a", "n"])
        );
        assert_eq!(fin(json!(["a", "b"]), json!(["c"])), json!(["a", "b", "c"]));
        // Duplicates: one of an applied item is dropped, one of another item kept.
        assert_eq!(
            fin(json!(["a", "b", "a"]), json!(["b", "a"])),
            json!(["b", "a"])
        );
        assert_eq!(
            fin(json!(["m", "m", "a"]), json!(["a"])),
            json!(["m", "m", "a"])
        );
        assert_eq!(fin(json!(["a"]), json!(["b", "b"])), json!(["a", "b"]));
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
        // Kubernetes' order: the configuration's items as it orders them, `b` (not applied)
        // still after `a`.
        assert_eq!(
            out,
            json!({"spec": {"containers": [
                {"name": "c", "image": "z"},
                {"name": "a", "image": "x", "command": ["3"], "env": [{"name": "E", "value": "1"}, {"name": "F", "value": "2"}]},
                {"name": "b", "image": "y"}
            ]}})
        );
        let mut pruned = out.clone();
        let mut p = fields(&["spec", "containers"]);
        p.push(PathElement::key_of(&json!({"name": "b"}), &["name".into()]));
        let mut q = fields(&["spec", "containers"]);
        q.push(PathElement::key_of(&json!({"name": "a"}), &["name".into()]));
        q.push(PathElement::Field("image".into()));
        remove(&mut pruned, &[p, q].into_iter().collect());
        assert_eq!(
            pruned["spec"]["containers"],
            json!([{"name": "c", "image": "z"}, {"name": "a", "command": ["3"], "env": [{"name": "E", "value": "1"}, {"name": "F", "value": "2"}]}])
        );
        // A null in the configuration removes the field.
        let out = merge(
            root(&ACTORS),
            &json!({"spec": {"idleTimeout": "5m", "activation": "Always"}}),
            &json!({"spec": {"idleTimeout": null}}),
        );
        assert_eq!(out, json!({"spec": {"activation": "Always"}}));
    }
}
