//! Strategic merge patch (`application/strategic-merge-patch+json`) for the built-in kinds
//! the standalone apiserver serves (RBAC), which kubectl patches so (`kubectl apply`,
//! `kubectl set subject`, `kubectl label` of a known kind). Custom-resource-like kinds keep
//! refusing it with 415, as kube-apiserver does for CRDs.
//!
//! The semantics are JSON merge patch's with the parts of `strategicpatch` these kinds use:
//! lists without a patch strategy (`rules`, `subjects`, every RBAC list) are replaced;
//! `metadata.finalizers` merges as a set and `metadata.ownerReferences` by `uid` (their
//! `patchStrategy:"merge"`); the directives `$patch: replace|delete`, `$retainKeys`,
//! `$deleteFromPrimitiveList/<field>` are honoured and `$setElementOrder/<field>` is
//! accepted (order is kept as merged).

use serde_json::{Map, Value};

/// Applies `patch` to `target` (both JSON objects; the patch was checked to be one).
pub fn merge(target: &mut Value, patch: &Value) {
    merge_at(target, patch, "");
}

fn merge_at(target: &mut Value, patch: &Value, path: &str) {
    let Some(p) = patch.as_object() else {
        *target = patch.clone();
        return;
    };
    match p.get("$patch").and_then(Value::as_str) {
        Some("replace") => {
            let mut v = patch.clone();
            if let Some(m) = v.as_object_mut() {
                m.remove("$patch");
            }
            *target = v;
            return;
        }
        Some("delete") => {
            *target = Value::Object(Map::new());
            return;
        }
        _ => {}
    }
    if !target.is_object() {
        *target = Value::Object(Map::new());
    }
    let Some(t) = target.as_object_mut() else {
        return;
    };
    for (k, v) in p {
        if k == "$patch" || k == "$retainKeys" || k.starts_with("$setElementOrder/") {
            continue;
        }
        if let Some(field) = k.strip_prefix("$deleteFromPrimitiveList/") {
            if let (Some(Value::Array(items)), Some(remove)) = (t.get_mut(field), v.as_array()) {
                items.retain(|i| !remove.contains(i));
            }
            continue;
        }
        let child = format!("{path}/{k}");
        match v {
            Value::Null => {
                t.remove(k);
            }
            Value::Object(o) if o.get("$patch").and_then(Value::as_str) == Some("delete") => {
                t.remove(k);
            }
            Value::Object(_) => merge_at(t.entry(k.clone()).or_insert(Value::Null), v, &child),
            Value::Array(items) => match child.as_str() {
                "/metadata/finalizers" => {
                    let list = t.entry(k.clone()).or_insert_with(|| Value::Array(vec![]));
                    if let Some(have) = list.as_array_mut() {
                        for i in items {
                            if !have.contains(i) {
                                have.push(i.clone());
                            }
                        }
                    }
                }
                "/metadata/ownerReferences" => merge_by_uid(t, k, items),
                _ => {
                    t.insert(k.clone(), v.clone());
                }
            },
            _ => {
                t.insert(k.clone(), v.clone());
            }
        }
    }
    if let Some(keep) = p.get("$retainKeys").and_then(Value::as_array) {
        t.retain(|k, _| keep.iter().any(|x| x.as_str() == Some(k)));
    }
}

fn merge_by_uid(t: &mut Map<String, Value>, k: &str, items: &[Value]) {
    let list = t
        .entry(k.to_string())
        .or_insert_with(|| Value::Array(vec![]));
    let Some(have) = list.as_array_mut() else {
        return;
    };
    for i in items {
        let uid = i.get("uid");
        let pos = have.iter().position(|h| h.get("uid") == uid);
        let delete = i.get("$patch").and_then(Value::as_str) == Some("delete");
        match (pos, delete) {
            (Some(p), true) => {
                have.remove(p);
            }
            (Some(p), false) => merge_at(&mut have[p], i, "/ownerReference"),
            (None, false) => have.push(i.clone()),
            (None, true) => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn kubectl_apply_patches_merge_as_kubernetes_merges_them() {
        let mut role = json!({"metadata": {"name": "r", "labels": {"a": "1", "b": "2"}, "finalizers": ["x"]},
            "rules": [{"apiGroups": [""], "resources": ["pods"], "verbs": ["get"]}]});
        merge(
            &mut role,
            &json!({"metadata": {"annotations": {"k": "v"}, "labels": {"b": null}, "finalizers": ["y"]},
                    "rules": [{"apiGroups": ["g"], "resources": ["r"], "verbs": ["list"]}],
                    "$setElementOrder/rules": []}),
        );
        assert_eq!(
            role,
            json!({"metadata": {"name": "r", "labels": {"a": "1"}, "finalizers": ["x", "y"], "annotations": {"k": "v"}},
                   "rules": [{"apiGroups": ["g"], "resources": ["r"], "verbs": ["list"]}]})
        );
        merge(
            &mut role,
            &json!({"metadata": {"$deleteFromPrimitiveList/finalizers": ["x"], "labels": {"$patch": "replace", "z": "9"}}}),
        );
        assert_eq!(role["metadata"]["finalizers"], json!(["y"]));
        assert_eq!(role["metadata"]["labels"], json!({"z": "9"}));
        let mut o = json!({"metadata": {"ownerReferences": [{"uid": "1", "name": "a"}, {"uid": "2", "name": "b"}]}});
        merge(
            &mut o,
            &json!({"metadata": {"ownerReferences": [{"uid": "1", "$patch": "delete"}, {"uid": "3", "name": "c"}]}}),
        );
        assert_eq!(
            o["metadata"]["ownerReferences"],
            json!([{"uid": "2", "name": "b"}, {"uid": "3", "name": "c"}])
        );
    }
}
