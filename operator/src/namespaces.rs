//! Atespace ↔ Namespace (cluster mode only): every Atespace has a Namespace of the same name,
//! so RoleBindings, quotas and network policies of the tenant have a home in the cluster.
//!
//! The **Atespace is the source of truth**:
//!
//! * For every Atespace the operator ensures a Namespace of the same name carrying the label
//!   [`crds::labels::ATESPACE`]`=<name>`. One it creates (`POST`, field manager
//!   `substrate-operator`) also carries [`crds::annotations::CREATED_BY`]`=substrate-operator`;
//!   a Namespace that exists already is *adopted*: the label is added by server-side apply,
//!   nothing else is touched. The Namespace's uid is recorded on the Atespace
//!   ([`crds::annotations::NAMESPACE`], `<atespace uid>/<namespace uid>`). System atespaces
//!   (`ate-*`, e.g. `ate-golden`) get one too.
//! * Deleting an Atespace: once it is gone (its actors deleted by Substrate's cascade), the
//!   operator deletes the Namespace **only if it created it** (uid precondition); an adopted
//!   Namespace loses the label (the operator's applied fields) and stays.
//! * Deleting a Namespace the Atespace has had (the recorded uid; Terminating or gone):
//!   Kubernetes' namespace controller deletes the actors in it (the aggregated resources are
//!   discovered), and the operator deletes the Atespace (uid precondition) — a deleted
//!   namespace means the tenant is gone; the operator does not fight the user by recreating
//!   it. Except a system atespace (`ate-*`, which Substrate keeps): its Namespace is created
//!   again.
//! * Reserved namespaces (`default`, `kube-*`) are never labelled, created or deleted by the
//!   operator, whatever their Atespace does (logged).
//!
//! Two kube-runtime [`Controller`](kube::runtime::Controller)s share [`decide`]: `namespaces`,
//! per Atespace (also triggered by the Namespace of its name), which acts while the Atespace
//! exists, and `namespace_cleanup`, per Namespace (also triggered by the Atespace of its
//! name), which acts once the Atespace is gone (a controller reconciles only objects its store
//! holds).

use std::sync::Arc;
use std::time::Duration;

use k8s_openapi::api::core::v1::Namespace;
use kube::api::{Api, DeleteParams, Patch, PatchParams, PostParams, Preconditions};
use kube::runtime::controller::Action;
use kube::runtime::reflector::ObjectRef;
use serde_json::json;

use crds::Atespace;
use crds::annotations::{CREATED_BY, CREATED_BY_OPERATOR, NAMESPACE};
use crds::labels::ATESPACE;

use crate::runner::Ctx;
use crate::{OperatorError, is_not_found};

/// The field manager of the operator's namespace writes.
pub const FIELD_MANAGER: &str = CREATED_BY_OPERATOR;

/// How soon a name is looked at again while its Namespace terminates or a write was refused.
pub const WAIT: Duration = Duration::from_secs(2);

/// What to do about the Atespace and the Namespace of one name.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum NamespaceAct {
    /// Both are as they should be (or neither concerns us).
    Nothing,
    /// A reserved namespace (`default`, `kube-*`): hands off.
    Reserved,
    /// The Namespace terminates and the Atespace is not (known to be) its: look again.
    Wait,
    /// Create the Namespace (labelled, annotated as ours).
    Create,
    /// Server-side apply the label (and the created-by annotation when `created`).
    Apply { created: bool },
    /// Record the Namespace on the Atespace (the annotation's value).
    Record { value: String },
    /// The Namespace the Atespace had is deleted: delete the Atespace (its uid).
    DeleteAtespace { uid: String },
    /// The Atespace is gone and the operator created the Namespace: delete it (its uid).
    DeleteNamespace { uid: String },
    /// The Atespace is gone and the Namespace was adopted: drop the operator's label.
    Release,
}

/// Namespaces whose lifecycle is Kubernetes' own.
pub fn is_reserved(name: &str) -> bool {
    name == "default" || name.starts_with("kube-")
}

fn is_system(name: &str) -> bool {
    crds::validation::is_reserved_atespace(name)
}

fn label_of<'a>(m: &'a kube::api::ObjectMeta, key: &str) -> Option<&'a str> {
    m.labels.as_ref()?.get(key).map(String::as_str)
}

fn annotation_of<'a>(m: &'a kube::api::ObjectMeta, key: &str) -> Option<&'a str> {
    m.annotations.as_ref()?.get(key).map(String::as_str)
}

/// The value of [`NAMESPACE`] recording namespace `ns_uid` on atespace `atespace_uid`.
pub fn record_value(atespace_uid: &str, ns_uid: &str) -> String {
    format!("{atespace_uid}/{ns_uid}")
}

/// The uid of the Namespace recorded on `a` (none when the record is another Atespace's).
pub fn recorded_namespace(a: &Atespace) -> Option<&str> {
    let (owner, ns) = annotation_of(&a.metadata, NAMESPACE)?.split_once('/')?;
    (Some(owner) == a.metadata.uid.as_deref() && !ns.is_empty()).then_some(ns)
}

fn deleting(a: &Atespace) -> bool {
    a.metadata.deletion_timestamp.is_some()
        || a.status.as_ref().and_then(|s| s.phase)
            == Some(crds::substrate::AtespacePhase::Terminating)
}

/// Decides about the Atespace and the Namespace named `name` (either may be absent).
pub fn decide(
    name: &str,
    atespace: Option<&Atespace>,
    namespace: Option<&Namespace>,
) -> NamespaceAct {
    if is_reserved(name) {
        return if atespace.is_some() || namespace.is_some_and(|n| ours(name, n)) {
            NamespaceAct::Reserved
        } else {
            NamespaceAct::Nothing
        };
    }
    let ns_uid = |n: &Namespace| n.metadata.uid.clone().unwrap_or_default();
    let terminating = |n: &Namespace| n.metadata.deletion_timestamp.is_some();
    let created =
        |n: &Namespace| annotation_of(&n.metadata, CREATED_BY) == Some(CREATED_BY_OPERATOR);
    match (atespace, namespace) {
        (None, None) => NamespaceAct::Nothing,
        (None, Some(n)) => {
            if !ours(name, n) || terminating(n) {
                NamespaceAct::Nothing
            } else if created(n) {
                NamespaceAct::DeleteNamespace { uid: ns_uid(n) }
            } else {
                NamespaceAct::Release
            }
        }
        // Its cascade runs: the Namespace goes once the Atespace is gone.
        (Some(a), _) if deleting(a) => NamespaceAct::Nothing,
        (Some(a), None) => match recorded_namespace(a) {
            Some(_) if !is_system(name) => NamespaceAct::DeleteAtespace {
                uid: a.metadata.uid.clone().unwrap_or_default(),
            },
            _ => NamespaceAct::Create,
        },
        (Some(a), Some(n)) if terminating(n) => {
            if recorded_namespace(a) == n.metadata.uid.as_deref() && !is_system(name) {
                NamespaceAct::DeleteAtespace {
                    uid: a.metadata.uid.clone().unwrap_or_default(),
                }
            } else {
                NamespaceAct::Wait
            }
        }
        (Some(a), Some(n)) => {
            if !ours(name, n) {
                NamespaceAct::Apply {
                    created: created(n),
                }
            } else if recorded_namespace(a) != n.metadata.uid.as_deref() {
                NamespaceAct::Record {
                    value: record_value(a.metadata.uid.as_deref().unwrap_or_default(), &ns_uid(n)),
                }
            } else {
                NamespaceAct::Nothing
            }
        }
    }
}

/// Whether `n` carries the operator's label for atespace `name`.
fn ours(name: &str, n: &Namespace) -> bool {
    label_of(&n.metadata, ATESPACE) == Some(name)
}

/// The Atespace of a Namespace's name (a trigger of the per-Atespace controller).
pub(crate) fn atespace_of(n: &Namespace) -> Option<ObjectRef<Atespace>> {
    n.metadata.name.as_deref().map(ObjectRef::new)
}

/// The Namespace of an Atespace's name (a trigger of the per-Namespace controller).
pub(crate) fn namespace_of(a: &Atespace) -> Option<ObjectRef<Namespace>> {
    a.metadata.name.as_deref().map(ObjectRef::new)
}

/// Reconciles the name of an Atespace (acts while the Atespace exists).
pub(crate) async fn reconcile_atespace(
    a: Arc<Atespace>,
    ctx: Arc<Ctx>,
) -> Result<Action, OperatorError> {
    let name = a.metadata.name.clone().unwrap_or_default();
    reconcile("namespaces", &name, &ctx).await
}

/// Reconciles the name of a Namespace (acts once its Atespace is gone).
pub(crate) async fn reconcile_namespace(
    n: Arc<Namespace>,
    ctx: Arc<Ctx>,
) -> Result<Action, OperatorError> {
    let name = n.metadata.name.clone().unwrap_or_default();
    let Some(atespaces) = ctx.caches.atespaces.as_ref() else {
        return Ok(Action::await_change());
    };
    if atespaces.get(&ObjectRef::new(&name)).is_some() {
        // The per-Atespace controller has it.
        return Ok(Action::requeue(ctx.cfg.resync));
    }
    reconcile("namespace_cleanup", &name, &ctx).await
}

async fn reconcile(
    controller: &'static str,
    name: &str,
    ctx: &Ctx,
) -> Result<Action, OperatorError> {
    let (Some(atespaces), Some(namespaces)) = (
        ctx.caches.atespaces.as_ref(),
        ctx.caches.namespaces.as_ref(),
    ) else {
        return Ok(Action::await_change());
    };
    let a = atespaces.get(&ObjectRef::new(name));
    let n = namespaces.get(&ObjectRef::new(name));
    let act = decide(name, a.as_deref(), n.as_deref());
    let later = Action::requeue(ctx.cfg.resync);
    let namespaces_api: Api<Namespace> = Api::all(ctx.clients.cluster.clone());
    let atespaces_api: Api<Atespace> = Api::all(ctx.clients.substrate.clone());
    match act {
        NamespaceAct::Nothing => Ok(later),
        NamespaceAct::Reserved => {
            tracing::info!(namespace = %name, "reserved namespace: its lifecycle is Kubernetes', not the atespace's");
            Ok(Action::await_change())
        }
        NamespaceAct::Wait => Ok(Action::requeue(WAIT)),
        NamespaceAct::Create => {
            let ns: Namespace = serde_json::from_value(json!({
                "apiVersion": "v1", "kind": "Namespace",
                "metadata": {"name": name, "labels": {ATESPACE: name},
                             "annotations": {CREATED_BY: CREATED_BY_OPERATOR}},
            }))?;
            let pp = PostParams {
                field_manager: Some(FIELD_MANAGER.into()),
                ..Default::default()
            };
            match namespaces_api.create(&pp, &ns).await {
                Ok(_) => {
                    tracing::info!(namespace = %name, "namespace created for its atespace");
                    Ok(later)
                }
                // There already (the cache is behind): adopted when the watch shows it.
                Err(kube::Error::Api(e)) if e.code == 409 => Ok(Action::requeue(WAIT)),
                Err(e) => Err(e.into()),
            }
        }
        NamespaceAct::Apply { created } => {
            let mut meta = json!({"name": name, "labels": {ATESPACE: name}});
            if created {
                meta["annotations"] = json!({CREATED_BY: CREATED_BY_OPERATOR});
            }
            let patch = json!({"apiVersion": "v1", "kind": "Namespace", "metadata": meta});
            match namespaces_api
                .patch(
                    name,
                    &PatchParams::apply(FIELD_MANAGER).force(),
                    &Patch::Apply(patch),
                )
                .await
            {
                Ok(_) => {
                    tracing::info!(namespace = %name, "namespace adopted by its atespace");
                    Ok(later)
                }
                Err(e) if is_not_found(&e) => Ok(Action::requeue(WAIT)),
                Err(e) => Err(e.into()),
            }
        }
        NamespaceAct::Record { value } => {
            let patch = json!({"metadata": {"annotations": {NAMESPACE: value}}});
            match atespaces_api
                .patch(name, &PatchParams::default(), &Patch::Merge(patch))
                .await
            {
                Ok(_) => Ok(later),
                Err(e) if is_not_found(&e) => Ok(ctx.gone(controller, name)),
                Err(e) => Err(e.into()),
            }
        }
        NamespaceAct::DeleteAtespace { uid } => {
            let dp = delete_if_uid(uid);
            match atespaces_api.delete(name, &dp).await {
                Ok(_) => {
                    tracing::info!(atespace = %name, "namespace deleted: atespace deleted");
                    Ok(later)
                }
                Err(e) if is_not_found(&e) => Ok(ctx.gone(controller, name)),
                // Another Atespace of that name meanwhile.
                Err(kube::Error::Api(e)) if e.code == 409 => Ok(Action::requeue(WAIT)),
                Err(e) => Err(e.into()),
            }
        }
        NamespaceAct::DeleteNamespace { uid } => {
            let dp = delete_if_uid(uid);
            match namespaces_api.delete(name, &dp).await {
                Ok(_) => {
                    tracing::info!(namespace = %name, "atespace deleted: the namespace created for it deleted");
                    Ok(later)
                }
                Err(e) if is_not_found(&e) => Ok(ctx.gone(controller, name)),
                Err(kube::Error::Api(e)) if e.code == 409 => Ok(Action::requeue(WAIT)),
                Err(e) => Err(e.into()),
            }
        }
        NamespaceAct::Release => {
            // Applying nothing drops every field the operator applied (the label).
            let patch =
                json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": name}});
            match namespaces_api
                .patch(
                    name,
                    &PatchParams::apply(FIELD_MANAGER).force(),
                    &Patch::Apply(patch),
                )
                .await
            {
                Ok(_) => {
                    tracing::info!(namespace = %name, "atespace deleted: adopted namespace released (kept)");
                    Ok(later)
                }
                Err(e) if is_not_found(&e) => Ok(ctx.gone(controller, name)),
                Err(e) => Err(e.into()),
            }
        }
    }
}

/// A delete of the object only while it is the one with `uid` (not a namesake created since).
fn delete_if_uid(uid: String) -> DeleteParams {
    DeleteParams {
        preconditions: Some(Preconditions {
            uid: Some(uid),
            resource_version: None,
        }),
        ..Default::default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::Value;

    fn atespace(name: &str, uid: &str, annotation: Option<&str>, deleting: bool) -> Atespace {
        let mut meta = json!({"name": name, "uid": uid});
        if let Some(v) = annotation {
            meta["annotations"] = json!({NAMESPACE: v});
        }
        if deleting {
            meta["deletionTimestamp"] = json!("2026-01-01T00:00:00Z");
        }
        serde_json::from_value(json!({
            "apiVersion": "substrate.ate.dev/v1alpha1", "kind": "Atespace",
            "metadata": meta, "spec": {},
        }))
        .unwrap()
    }

    fn namespace(
        name: &str,
        uid: &str,
        labelled: bool,
        created: bool,
        terminating: bool,
    ) -> Namespace {
        let mut meta = json!({"name": name, "uid": uid});
        if labelled {
            meta["labels"] = json!({ATESPACE: name});
        }
        if created {
            meta["annotations"] = json!({CREATED_BY: CREATED_BY_OPERATOR});
        }
        if terminating {
            meta["deletionTimestamp"] = json!("2026-01-01T00:00:00Z");
        }
        let v: Value = json!({"apiVersion": "v1", "kind": "Namespace", "metadata": meta});
        serde_json::from_value(v).unwrap()
    }

    const A: &str = "a-uid";
    const N: &str = "n-uid";

    fn rec() -> String {
        record_value(A, N)
    }

    #[test]
    fn an_atespace_gets_a_namespace_created_then_recorded() {
        let a = atespace("team-a", A, None, false);
        assert_eq!(decide("team-a", Some(&a), None), NamespaceAct::Create);
        let n = namespace("team-a", N, true, true, false);
        assert_eq!(
            decide("team-a", Some(&a), Some(&n)),
            NamespaceAct::Record { value: rec() }
        );
        let a = atespace("team-a", A, Some(&rec()), false);
        assert_eq!(decide("team-a", Some(&a), Some(&n)), NamespaceAct::Nothing);
    }

    #[test]
    fn an_existing_namespace_is_adopted_not_claimed() {
        let a = atespace("team-a", A, None, false);
        let n = namespace("team-a", N, false, false, false);
        assert_eq!(
            decide("team-a", Some(&a), Some(&n)),
            NamespaceAct::Apply { created: false }
        );
        // Our label removed from one we created: put back, with the annotation kept.
        let n = namespace("team-a", N, false, true, false);
        assert_eq!(
            decide("team-a", Some(&a), Some(&n)),
            NamespaceAct::Apply { created: true }
        );
    }

    #[test]
    fn a_deleted_atespace_takes_only_the_namespace_we_created() {
        // Still terminating (its actors are being deleted): wait for it to be gone.
        let a = atespace("team-a", A, Some(&rec()), true);
        let n = namespace("team-a", N, true, true, false);
        assert_eq!(decide("team-a", Some(&a), Some(&n)), NamespaceAct::Nothing);
        assert_eq!(
            decide("team-a", None, Some(&n)),
            NamespaceAct::DeleteNamespace { uid: N.into() }
        );
        let adopted = namespace("team-a", N, true, false, false);
        assert_eq!(
            decide("team-a", None, Some(&adopted)),
            NamespaceAct::Release
        );
        // Not ours, or already going: nothing.
        let foreign = namespace("team-a", N, false, true, false);
        assert_eq!(
            decide("team-a", None, Some(&foreign)),
            NamespaceAct::Nothing
        );
        let going = namespace("team-a", N, true, true, true);
        assert_eq!(decide("team-a", None, Some(&going)), NamespaceAct::Nothing);
        assert_eq!(decide("team-a", None, None), NamespaceAct::Nothing);
    }

    #[test]
    fn a_deleted_namespace_takes_its_atespace() {
        let a = atespace("team-a", A, Some(&rec()), false);
        let going = namespace("team-a", N, true, true, true);
        let delete = NamespaceAct::DeleteAtespace { uid: A.into() };
        assert_eq!(decide("team-a", Some(&a), Some(&going)), delete);
        // Gone already (the operator was down meanwhile).
        assert_eq!(decide("team-a", Some(&a), None), delete);
        // Adopted ones too: the tenant is gone.
        let adopted_going = namespace("team-a", N, true, false, true);
        assert_eq!(decide("team-a", Some(&a), Some(&adopted_going)), delete);
    }

    #[test]
    fn a_new_atespace_waits_for_an_old_namespace_to_go() {
        // Another namespace of that name terminates (the previous atespace's): wait, then
        // create a new one.
        let a = atespace("team-a", A, None, false);
        let old = namespace("team-a", "old-ns", true, true, true);
        assert_eq!(decide("team-a", Some(&a), Some(&old)), NamespaceAct::Wait);
        let a = atespace("team-a", A, Some(&record_value(A, "other")), false);
        assert_eq!(decide("team-a", Some(&a), Some(&old)), NamespaceAct::Wait);
    }

    #[test]
    fn a_record_of_another_atespace_is_ignored() {
        // Restored from a backup with the annotation of its former self: a new uid.
        let a = atespace("team-a", "new-uid", Some(&rec()), false);
        assert_eq!(recorded_namespace(&a), None);
        assert_eq!(decide("team-a", Some(&a), None), NamespaceAct::Create);
        let a = atespace("team-a", A, Some("garbage"), false);
        assert_eq!(recorded_namespace(&a), None);
        let a = atespace("team-a", A, Some(&format!("{A}/")), false);
        assert_eq!(recorded_namespace(&a), None);
    }

    #[test]
    fn system_atespaces_get_their_namespace_back() {
        let a = atespace("ate-golden", A, Some(&rec()), false);
        assert_eq!(decide("ate-golden", Some(&a), None), NamespaceAct::Create);
        let going = namespace("ate-golden", N, true, true, true);
        assert_eq!(
            decide("ate-golden", Some(&a), Some(&going)),
            NamespaceAct::Wait
        );
        let a = atespace("ate-golden", A, None, false);
        assert_eq!(decide("ate-golden", Some(&a), None), NamespaceAct::Create);
    }

    #[test]
    fn reserved_namespaces_are_left_alone() {
        for name in ["default", "kube-system", "kube-public", "kube-node-lease"] {
            let a = atespace(name, A, None, false);
            let n = namespace(name, N, false, false, false);
            assert_eq!(
                decide(name, Some(&a), Some(&n)),
                NamespaceAct::Reserved,
                "{name}"
            );
            assert_eq!(
                decide(name, Some(&a), None),
                NamespaceAct::Reserved,
                "{name}"
            );
            // Even one labelled by hand, its atespace gone: not deleted.
            let labelled = namespace(name, N, true, true, false);
            assert_eq!(
                decide(name, None, Some(&labelled)),
                NamespaceAct::Reserved,
                "{name}"
            );
            assert_eq!(
                decide(name, None, Some(&n)),
                NamespaceAct::Nothing,
                "{name}"
            );
            let going = namespace(name, N, true, true, true);
            let a = atespace(name, A, Some(&rec()), false);
            assert_eq!(
                decide(name, Some(&a), Some(&going)),
                NamespaceAct::Reserved,
                "{name}"
            );
        }
        assert!(!is_reserved("kubernetes-team"), "only the kube- prefix");
        assert!(!is_reserved("defaults"));
    }
}
