//! Server-side apply: `metadata.managedFields` and the apply algorithm of
//! `sigs.k8s.io/structured-merge-diff` (`merge/update.go`), over untyped JSON and the kind's
//! OpenAPI schema.
//!
//! - Every write records who changed what. An update (PUT, JSON/merge patch, create) gives
//!   the writing manager (`fieldManager`, else the User-Agent's product) an `Update` entry
//!   owning the fields it added or changed; other managers lose the fields it changed
//!   (taken over) or removed.
//! - An apply (`application/apply-patch+yaml`) merges the configuration into the live object
//!   ([`typed::merge`]); the applier's `Apply` entry then owns exactly the fields of its
//!   configuration. Changing a field another manager owns is a conflict (409) unless `force`
//!   is set, which moves the field to the applier. Fields the applier owned last time and no
//!   longer applies are removed from the object unless another manager still owns them.
//! - Entries are keyed by (manager, operation, subresource); `status` writes carry
//!   `subresource: status`.
//!
//! The module is pure: the registry reads the live object, calls [`apply`] or
//! [`record_update`], and writes the result with compare-and-swap.

pub mod fieldpath;
pub mod schema;
pub mod typed;

use std::collections::BTreeMap;

use serde_json::{Value, json};

use fieldpath::{Path, PathElement, Set, display};
use typed::Comparison;

/// The operation of a managedFields entry.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Operation {
    Apply,
    Update,
}

impl Operation {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Apply => "Apply",
            Self::Update => "Update",
        }
    }
}

/// Who owns a set: one entry of `managedFields` is identified by these.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ManagerId {
    pub manager: String,
    pub operation: Operation,
    /// `""` for the main resource, `status` for the status subresource.
    pub subresource: String,
}

impl ManagerId {
    pub fn new(manager: &str, operation: Operation, subresource: Option<&str>) -> Self {
        Self {
            manager: manager.to_string(),
            operation,
            subresource: subresource.unwrap_or("").to_string(),
        }
    }
}

/// One managedFields entry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    pub api_version: String,
    /// RFC 3339, as stored.
    pub time: Option<String>,
    pub set: Set,
}

/// Every manager of an object.
pub type Managers = BTreeMap<ManagerId, Entry>;

/// Why `metadata.managedFields` could not be read.
#[derive(Debug, thiserror::Error)]
pub enum ManagedFieldsError {
    #[error("metadata.managedFields must be a list")]
    NotAList,
    #[error(
        "metadata.managedFields[{index}].operation: Unsupported value: {value:?}: supported values: \"Apply\", \"Update\""
    )]
    Operation { index: usize, value: String },
    #[error(
        "metadata.managedFields[{index}].fieldsType: Unsupported value: {value:?}: supported values: \"FieldsV1\""
    )]
    FieldsType { index: usize, value: String },
    #[error("metadata.managedFields[{index}].fieldsV1: {source}")]
    Fields {
        index: usize,
        #[source]
        source: fieldpath::DecodeError,
    },
}

/// Reads `metadata.managedFields` of `obj` (absent: no managers).
pub fn decode(obj: &Value) -> Result<Managers, ManagedFieldsError> {
    let mut out = Managers::new();
    let Some(list) = obj.pointer("/metadata/managedFields") else {
        return Ok(out);
    };
    if list.is_null() {
        return Ok(out);
    }
    let list = list.as_array().ok_or(ManagedFieldsError::NotAList)?;
    for (index, e) in list.iter().enumerate() {
        let s = |k: &str| e.get(k).and_then(Value::as_str).unwrap_or("").to_string();
        let operation = match s("operation").as_str() {
            "Apply" => Operation::Apply,
            "Update" => Operation::Update,
            other => {
                return Err(ManagedFieldsError::Operation {
                    index,
                    value: other.to_string(),
                });
            }
        };
        let ft = s("fieldsType");
        if !ft.is_empty() && ft != "FieldsV1" {
            return Err(ManagedFieldsError::FieldsType { index, value: ft });
        }
        let set = match e.get("fieldsV1") {
            None | Some(Value::Null) => Set::new(),
            Some(v) => Set::from_fields_v1(v)
                .map_err(|source| ManagedFieldsError::Fields { index, source })?,
        };
        let id = ManagerId {
            manager: s("manager"),
            operation,
            subresource: s("subresource"),
        };
        let time = e.get("time").and_then(Value::as_str).map(str::to_string);
        match out.get_mut(&id) {
            Some(prev) => prev.set = prev.set.union(&set),
            None => {
                out.insert(
                    id,
                    Entry {
                        api_version: s("apiVersion"),
                        time,
                        set,
                    },
                );
            }
        }
    }
    Ok(out)
}

/// Renders managers as `metadata.managedFields`, in Kubernetes' order (Apply before Update,
/// then oldest first, then by manager name).
pub fn encode(managers: &Managers) -> Value {
    let mut entries: Vec<(&ManagerId, &Entry)> = managers.iter().collect();
    entries.sort_by(|(a, ea), (b, eb)| {
        a.operation
            .cmp(&b.operation)
            .then_with(|| ea.time.cmp(&eb.time))
            .then_with(|| a.manager.cmp(&b.manager))
            .then_with(|| ea.api_version.cmp(&eb.api_version))
            .then_with(|| a.subresource.cmp(&b.subresource))
    });
    Value::Array(
        entries
            .into_iter()
            .map(|(id, e)| {
                // Field order as k8s-openapi serializes `ManagedFieldsEntry`, so a stored
                // object compares equal to its normalized form.
                let mut m = serde_json::Map::new();
                m.insert("apiVersion".into(), json!(e.api_version));
                m.insert("fieldsType".into(), json!("FieldsV1"));
                m.insert("fieldsV1".into(), e.set.to_fields_v1());
                m.insert("manager".into(), json!(id.manager));
                m.insert("operation".into(), json!(id.operation.as_str()));
                if !id.subresource.is_empty() {
                    m.insert("subresource".into(), json!(id.subresource));
                }
                if let Some(t) = &e.time {
                    m.insert("time".into(), json!(t));
                }
                Value::Object(m)
            })
            .collect(),
    )
}

/// Fields no manager owns: identity and system metadata, set by the server.
pub fn is_system_path(p: &[PathElement]) -> bool {
    match p {
        [PathElement::Field(f)] => f == "apiVersion" || f == "kind" || f == "metadata",
        [PathElement::Field(m), PathElement::Field(f), ..] if m == "metadata" => matches!(
            f.as_str(),
            "name"
                | "namespace"
                | "uid"
                | "resourceVersion"
                | "generation"
                | "creationTimestamp"
                | "deletionTimestamp"
                | "deletionGracePeriodSeconds"
                | "selfLink"
                | "managedFields"
                | "generateName"
        ),
        _ => false,
    }
}

/// Fields a write to `subresource` may not own: the main resource does not own `status`,
/// the status subresource owns nothing but `status`.
pub fn ignored(subresource: Option<&str>) -> impl Fn(&[PathElement]) -> bool {
    let status_only = subresource == Some("status");
    move |p: &[PathElement]| {
        if is_system_path(p) {
            return true;
        }
        let in_status = matches!(p.first(), Some(PathElement::Field(f)) if f == "status");
        if status_only { !in_status } else { in_status }
    }
}

fn filtered(c: Comparison, ignore: &dyn Fn(&[PathElement]) -> bool) -> Comparison {
    Comparison {
        added: c.added.filter(|p| !ignore(p)),
        modified: c.modified.filter(|p| !ignore(p)),
        removed: c.removed.filter(|p| !ignore(p)),
    }
}

/// Apply conflicts: fields another manager owns that the apply would change.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Conflicts(pub Vec<(ManagerId, String, Path)>);

impl Conflicts {
    /// How Kubernetes prints a manager in a conflict.
    pub fn manager_text(id: &ManagerId, api_version: &str) -> String {
        let mut s = format!("{:?}", id.manager);
        if !id.subresource.is_empty() {
            s = format!("{s} with subresource {:?}", id.subresource);
        }
        if id.operation == Operation::Update {
            s = format!("{s} using {api_version}");
        }
        s
    }

    /// The `Status` message (`Apply failed with 1 conflict: conflict with "m": .spec.x`).
    pub fn message(&self) -> String {
        if let [(id, av, p)] = self.0.as_slice() {
            return format!(
                "Apply failed with 1 conflict: conflict with {}: {}",
                Self::manager_text(id, av),
                display(p)
            );
        }
        let mut by: BTreeMap<String, Vec<String>> = BTreeMap::new();
        for (id, av, p) in &self.0 {
            by.entry(Self::manager_text(id, av))
                .or_default()
                .push(display(p));
        }
        let mut lines = Vec::new();
        for (m, paths) in by {
            lines.push(format!("conflicts with {m}:"));
            lines.extend(paths.into_iter().map(|p| format!("- {p}")));
        }
        format!(
            "Apply failed with {} conflicts: {}",
            self.0.len(),
            lines.join("\n")
        )
    }

    /// `details.causes`: one `FieldManagerConflict` per field.
    pub fn causes(&self) -> Vec<Value> {
        self.0
            .iter()
            .map(|(id, av, p)| {
                json!({
                    "reason": "FieldManagerConflict",
                    "message": format!("conflict with {}", Self::manager_text(id, av)),
                    "field": display(p),
                })
            })
            .collect()
    }
}

/// structured-merge-diff's `Updater.update`: compares `live` and `new`; other managers owning
/// a changed field conflict (or, with `force`, lose it), and every manager loses removed
/// fields. Empty managers are dropped.
fn update_managers(
    schema: &Value,
    live: &Value,
    new: &Value,
    managers: &mut Managers,
    workflow: &ManagerId,
    force: bool,
    ignore: &dyn Fn(&[PathElement]) -> bool,
) -> Result<Comparison, Conflicts> {
    let cmp = filtered(typed::compare(schema, live, new), ignore);
    let changed = cmp.modified.union(&cmp.added);
    let mut conflicts = Vec::new();
    for (id, e) in managers.iter() {
        if id == workflow {
            continue;
        }
        for p in e.set.intersection(&changed).iter() {
            conflicts.push((id.clone(), e.api_version.clone(), p.clone()));
        }
    }
    if !force && !conflicts.is_empty() {
        return Err(Conflicts(conflicts));
    }
    for (id, e) in managers.iter_mut() {
        if id == workflow {
            continue;
        }
        e.set = e.set.difference(&changed).difference(&cmp.removed);
    }
    managers.retain(|_, e| !e.set.is_empty());
    Ok(cmp)
}

/// Records a non-apply write of `new` over `live` by `id` (operation Update). Returns whether
/// `id` took any field (then its entry's time is `now`).
#[allow(clippy::too_many_arguments)] // the fieldmanager's inputs, spelled out
pub fn record_update(
    schema: &Value,
    live: &Value,
    new: &Value,
    managers: &mut Managers,
    id: &ManagerId,
    api_version: &str,
    now: &str,
    ignore: &dyn Fn(&[PathElement]) -> bool,
) -> bool {
    // As Kubernetes: the write is computed as a temporary manager, then merged into `id`.
    let tmp = ManagerId::new("\u{0}current-operation", Operation::Update, None);
    let Ok(cmp) = update_managers(schema, live, new, managers, &tmp, true, ignore) else {
        return false;
    };
    let took = cmp.added.union(&cmp.modified);
    if took.is_empty() {
        return false;
    }
    let e = managers.entry(id.clone()).or_insert_with(|| Entry {
        api_version: api_version.to_string(),
        time: None,
        set: Set::new(),
    });
    e.set = e.set.union(&took);
    e.api_version = api_version.to_string();
    e.time = Some(now.to_string());
    true
}

/// Applies `config` over `live` as `id` (operation Apply). Returns the new object (before
/// defaulting) and updates `managers`; the caller sets the entry's time.
#[allow(clippy::too_many_arguments)] // the fieldmanager's inputs, spelled out
pub fn apply(
    schema: &Value,
    live: &Value,
    config: &Value,
    managers: &mut Managers,
    id: &ManagerId,
    api_version: &str,
    force: bool,
    ignore: &dyn Fn(&[PathElement]) -> bool,
) -> Result<Value, Conflicts> {
    let merged = typed::merge(schema, live, config);
    let last = managers.get(id).map(|e| e.set.clone()).unwrap_or_default();
    let applied = typed::to_field_set(schema, config).filter(|p| !ignore(p));
    update_managers(schema, live, &merged, managers, id, force, ignore)?;
    let time = managers.get(id).and_then(|e| e.time.clone());
    managers.insert(
        id.clone(),
        Entry {
            api_version: api_version.to_string(),
            time,
            set: applied,
        },
    );
    let (pruned, removed) = prune(merged, &last, managers, ignore);
    if removed {
        // Fields that went are taken from every other manager too.
        update_managers(schema, live, &pruned, managers, id, force, ignore)?;
    }
    if let Some(e) = managers.get(id)
        && e.set.is_empty()
    {
        managers.remove(id);
    }
    Ok(pruned)
}

/// Removes what the applier owned last time and no manager owns now (structured-merge-diff's
/// `prune` with `addBackOwnedItems`/`addBackDanglingItems`): a node goes when it was owned
/// (or was the ancestor of an owned node) by the applier's last configuration and nothing
/// owned by anyone is at or below it.
/// Returns the pruned object and whether anything was removed.
fn prune(
    mut merged: Value,
    last: &Set,
    managers: &Managers,
    ignore: &dyn Fn(&[PathElement]) -> bool,
) -> (Value, bool) {
    if last.is_empty() {
        return (merged, false);
    }
    let mut owned = Set::new();
    for e in managers.values() {
        owned = owned.union(&e.set);
    }
    let owned = owned.with_ancestors();
    let keep_top = |p: &[PathElement]| matches!(p, [PathElement::Field(f)] if f == "metadata" || f == "apiVersion" || f == "kind");
    let removal: std::collections::BTreeSet<Path> = last
        .with_ancestors()
        .into_iter()
        .filter(|p| !owned.contains(p) && !keep_top(p) && !ignore(p))
        .collect();
    if removal.is_empty() {
        return (merged, false);
    }
    let before = merged.clone();
    typed::remove(&mut merged, &removal);
    let removed = merged != before;
    (merged, removed)
}

#[cfg(test)]
mod tests;
