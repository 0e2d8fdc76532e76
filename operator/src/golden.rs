//! Golden snapshots (per `ActorTemplate`, triggered also by its golden actor): a template
//! without a golden snapshot for its current generation gets a golden actor
//! `<namespace>-<template>` in the `ate-golden` atespace, which is resumed (cold boot), then
//! suspended; its snapshot is recorded in the template's status (`Ready=True`). A failed boot
//! says `Stalled=True` and is retried with backoff.
//!
//! [`decide`] is pure; [`reconcile`] performs its plan.

use std::sync::Arc;

use jiff::Timestamp;
use kube::api::{Api, PostParams};
use kube::runtime::controller::Action;
use kube::runtime::reflector::ObjectRef;
use serde_json::{Value, json};

use crds::ate::ActorTemplate;
use crds::conditions::{READY, RECONCILING, STALLED, reasons};
use crds::substrate::{Actor, ActorPhase, SnapshotRef};

use crate::act::{self, Outcome};
use crate::lifecycle::{REFUSED_RETRY, Retry, retry_check, waiting};
use crate::runner::Ctx;
use crate::{OperatorError, is_not_found};

/// Annotation on a golden actor: the template generation it was booted for.
pub const GOLDEN_GENERATION: &str = "substrate.ate.dev/template-generation";

/// The golden actor's name for a template: `<namespace>-<name>`, shortened with a hash when
/// longer than a DNS label allows.
pub fn golden_name(namespace: &str, name: &str) -> String {
    use sha2::Digest;
    let full = format!("{namespace}-{name}");
    if full.len() <= 63 {
        return full;
    }
    let hash = sha2::Sha256::digest(full.as_bytes());
    let hex: String = hash.iter().take(4).map(|b| format!("{b:02x}")).collect();
    format!("{}-{hex}", full[..54].trim_end_matches('-'))
}

/// The template a golden actor belongs to (for triggering its reconcile).
pub(crate) fn template_of(a: &Actor) -> Option<ObjectRef<ActorTemplate>> {
    if a.metadata.namespace.as_deref() != Some(crds::GOLDEN_ATESPACE) {
        return None;
    }
    let ns = a.spec.template.namespace.as_deref()?;
    Some(ObjectRef::new(&a.spec.template.name).within(ns))
}

/// What to do about a template's golden actor.
#[derive(Debug, Clone, PartialEq)]
pub enum GoldenAct {
    Nothing,
    /// Create the golden actor for this generation.
    Create,
    /// Delete the golden actor of an older generation.
    Delete,
    Resume,
    Suspend,
    /// Record the golden actor's snapshot in the template (`Ready=True`).
    Record(Option<SnapshotRef>),
    /// The boot failed: say `Stalled` (when `stall` carries the message) and retry (`retry`:
    /// the new retry state when a resume is due now).
    Failed {
        stall: Option<String>,
        retry: Option<Retry>,
    },
}

/// The plan for one template.
#[derive(Debug, Clone, PartialEq)]
pub struct Plan {
    /// Say `Reconciling` (booting) in the template's status first.
    pub mark_reconciling: bool,
    pub act: GoldenAct,
    /// When to look again without an event (a retry's backoff).
    pub requeue_after: Option<std::time::Duration>,
}

fn has(t: &ActorTemplate, type_: &str) -> bool {
    let generation = t.metadata.generation.unwrap_or(0);
    t.status.as_ref().is_some_and(|s| {
        s.conditions.iter().any(|c| {
            c.type_ == type_ && c.status == "True" && c.observed_generation == Some(generation)
        })
    })
}

/// Decides for template `t`, whose golden actor (from the cache) is `golden`; `retry` is the
/// golden actor's retry state.
pub fn decide(
    t: &ActorTemplate,
    golden: Option<&Actor>,
    retry: Option<Retry>,
    now: Timestamp,
) -> Plan {
    let mut plan = Plan {
        mark_reconciling: false,
        act: GoldenAct::Nothing,
        requeue_after: None,
    };
    if t.current_golden().is_some() {
        return plan;
    }
    let generation = t.metadata.generation.unwrap_or(0);
    // kstatus: the new generation is seen and being worked on (once per generation; a failed
    // boot says Stalled instead, until a retry succeeds).
    plan.mark_reconciling = !has(t, RECONCILING) && !has(t, STALLED);
    let Some(golden) = golden else {
        plan.act = GoldenAct::Create;
        return plan;
    };
    let booted_for = golden
        .metadata
        .annotations
        .as_ref()
        .and_then(|a| a.get(GOLDEN_GENERATION))
        .and_then(|g| g.parse::<i64>().ok());
    if booted_for != Some(generation) {
        // The template changed: boot a new golden actor.
        if golden.metadata.deletion_timestamp.is_none() {
            plan.act = GoldenAct::Delete;
        }
        return plan;
    }
    let gstatus = golden.status.clone().unwrap_or_default();
    plan.act = match gstatus.phase {
        None | Some(ActorPhase::Suspended) if gstatus.snapshot.is_none() => {
            if waiting(golden) {
                GoldenAct::Nothing
            } else {
                GoldenAct::Resume
            }
        }
        Some(ActorPhase::Running) => GoldenAct::Suspend,
        Some(ActorPhase::Suspended) => GoldenAct::Record(gstatus.snapshot.clone()),
        Some(ActorPhase::Failed) => {
            let msg = gstatus
                .conditions
                .iter()
                .find(|c| c.type_ == READY)
                .map(|c| c.message.clone())
                .unwrap_or_default();
            // Try again, with backoff: the failure left the golden actor without a worker,
            // and the cause (a missing image...) may last.
            let retry = match retry_check(retry, now) {
                Ok(next) => Some(next),
                Err(wait) => {
                    plan.requeue_after = Some(wait);
                    None
                }
            };
            GoldenAct::Failed {
                stall: (!has(t, STALLED)).then_some(msg),
                retry,
            }
        }
        _ => GoldenAct::Nothing,
    };
    plan
}

fn now_str() -> String {
    crate::fmt_time(crate::now())
}

/// A template's kstatus conditions: `Ready`, `Reconciling`, `Stalled`.
fn template_conditions(
    ready: bool,
    reason: &str,
    message: &str,
    reconciling: bool,
    stalled: bool,
    generation: i64,
) -> Value {
    let c = |t: &str, s: bool| {
        json!({"type": t, "status": if s { "True" } else { "False" }, "reason": reason,
            "message": message, "lastTransitionTime": now_str(), "observedGeneration": generation})
    };
    json!([
        c(READY, ready),
        c(RECONCILING, reconciling),
        c(STALLED, stalled)
    ])
}

/// Reconciles one template.
pub(crate) async fn reconcile(
    t: Arc<ActorTemplate>,
    ctx: Arc<Ctx>,
) -> Result<Action, OperatorError> {
    let now = crate::now();
    let tns = t.metadata.namespace.clone().unwrap_or_default();
    let tname = t.metadata.name.clone().unwrap_or_default();
    let tuid = t.metadata.uid.clone().unwrap_or_default();
    let generation = t.metadata.generation.unwrap_or(0);
    let gname = golden_name(&tns, &tname);
    let golden = ctx
        .caches
        .actors
        .get(&ObjectRef::new(&gname).within(crds::GOLDEN_ATESPACE));
    let guid = golden
        .as_ref()
        .and_then(|g| g.metadata.uid.clone())
        .unwrap_or_default();
    let plan = decide(&t, golden.as_deref(), ctx.retry(&guid), now);
    let templates: Api<ActorTemplate> = Api::namespaced(ctx.clients.cluster.clone(), &tns);
    let actors: Api<Actor> = Api::namespaced(ctx.clients.substrate.clone(), crds::GOLDEN_ATESPACE);
    if plan.mark_reconciling {
        let msg = format!("booting the golden actor {}/{gname}", crds::GOLDEN_ATESPACE);
        let patch = json!({"status": {
            "observedGeneration": generation,
            "conditions": template_conditions(false, reasons::GOLDEN_BOOTING, &msg, true, false, generation),
        }});
        if act::patch_status(&templates, &tname, patch).await? == Outcome::Gone {
            return Ok(ctx.gone("golden", &tuid));
        }
    }
    let mut requeue = plan
        .requeue_after
        .unwrap_or(ctx.cfg.resync)
        .min(ctx.cfg.resync);
    match plan.act {
        GoldenAct::Nothing => {}
        GoldenAct::Create => {
            let obj: Actor = serde_json::from_value(json!({
                "apiVersion": "substrate.ate.dev/v1alpha1", "kind": "Actor",
                "metadata": {"name": gname, "namespace": crds::GOLDEN_ATESPACE,
                             "annotations": {GOLDEN_GENERATION: generation.to_string()},
                             "labels": {"substrate.ate.dev/golden": "true"}},
                "spec": {"template": {"namespace": tns, "name": tname}, "activation": "OnDemand", "idleTimeout": "87600h"},
            }))?;
            match actors.create(&PostParams::default(), &obj).await {
                Ok(_) => {
                    tracing::info!(template = %format!("{tns}/{tname}"), golden = %gname, "golden actor created")
                }
                Err(kube::Error::Api(e)) if e.code == 409 => {}
                Err(e) => return Err(e.into()),
            }
        }
        GoldenAct::Delete => match actors.delete(&gname, &Default::default()).await {
            Ok(_) => {}
            Err(e) if is_not_found(&e) => {}
            Err(e) => return Err(e.into()),
        },
        GoldenAct::Resume | GoldenAct::Suspend => {
            let verb = if plan.act == GoldenAct::Resume {
                "resume"
            } else {
                "suspend"
            };
            if act::actor_action(&ctx.clients.substrate, crds::GOLDEN_ATESPACE, &gname, verb)
                .await?
                == Outcome::Refused
            {
                requeue = requeue.min(REFUSED_RETRY);
            }
        }
        GoldenAct::Record(snapshot) => {
            let msg = format!(
                "golden snapshot taken from {}/{gname}",
                crds::GOLDEN_ATESPACE
            );
            let patch = json!({"status": {
                "snapshot": snapshot,
                "observedGeneration": generation,
                "conditions": template_conditions(true, reasons::GOLDEN_SNAPSHOT_READY, &msg, false, false, generation),
            }});
            if act::patch_status(&templates, &tname, patch).await? == Outcome::Gone {
                return Ok(ctx.gone("golden", &tuid));
            }
            tracing::info!(template = %format!("{tns}/{tname}"), "golden snapshot recorded");
        }
        GoldenAct::Failed { stall, retry } => {
            if let Some(msg) = stall {
                let patch = json!({"status": {
                    "observedGeneration": generation,
                    "conditions": template_conditions(false, reasons::GOLDEN_BOOT_FAILED, &msg, false, true, generation),
                }});
                if act::patch_status(&templates, &tname, patch).await? == Outcome::Gone {
                    return Ok(ctx.gone("golden", &tuid));
                }
            }
            if let Some(next) = retry {
                ctx.set_retry(&guid, Some(next));
                if act::actor_action(
                    &ctx.clients.substrate,
                    crds::GOLDEN_ATESPACE,
                    &gname,
                    "resume",
                )
                .await?
                    == Outcome::Refused
                {
                    requeue = requeue.min(REFUSED_RETRY);
                }
            }
        }
    }
    Ok(Action::requeue(requeue))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn golden_names_are_dns_labels() {
        assert_eq!(golden_name("team-a", "counter"), "team-a-counter");
        let long = golden_name(&"n".repeat(40), &"t".repeat(40));
        assert!(long.len() <= 63, "{long}");
        assert!(crds::validation::dns1123_label(&long).is_empty(), "{long}");
        // Distinct long names stay distinct.
        assert_ne!(long, golden_name(&"n".repeat(40), &"u".repeat(40)));
    }

    fn template(status: Value) -> ActorTemplate {
        serde_json::from_value(
            json!({"apiVersion": "ate.dev/v1alpha1", "kind": "ActorTemplate",
            "metadata": {"name": "t", "namespace": "team-a", "generation": 2},
            "spec": {"containers": [{"name": "c", "image": "i"}], "workerPoolRef": {"name": "p"}},
            "status": status}),
        )
        .unwrap()
    }

    fn golden(generation: i64, status: Value) -> Actor {
        serde_json::from_value(
            json!({"apiVersion": "substrate.ate.dev/v1alpha1", "kind": "Actor",
            "metadata": {"name": "team-a-t", "namespace": "ate-golden",
                "annotations": {GOLDEN_GENERATION: generation.to_string()}},
            "spec": {"template": {"namespace": "team-a", "name": "t"}}, "status": status}),
        )
        .unwrap()
    }

    fn cond(t: &str, status: &str, generation: i64) -> Value {
        json!({"type": t, "status": status, "reason": "r", "message": "m",
            "lastTransitionTime": "2026-01-01T00:00:00Z", "observedGeneration": generation})
    }

    #[test]
    fn the_golden_boot_goes_create_resume_suspend_record() {
        let now: Timestamp = "2026-01-01T00:00:00Z".parse().unwrap();
        let t = template(json!({}));
        let p = decide(&t, None, None, now);
        assert!(p.mark_reconciling);
        assert_eq!(p.act, GoldenAct::Create);
        let t = template(json!({"conditions": [cond("Reconciling", "True", 2)]}));
        let g = golden(2, json!({"phase": "Suspended"}));
        assert_eq!(
            decide(&t, Some(&g), None, now),
            Plan {
                mark_reconciling: false,
                act: GoldenAct::Resume,
                requeue_after: None
            }
        );
        let g = golden(2, json!({"phase": "Running"}));
        assert_eq!(decide(&t, Some(&g), None, now).act, GoldenAct::Suspend);
        let g = golden(
            2,
            json!({"phase": "Suspended", "snapshot": {"uri": "file:///g"}}),
        );
        let GoldenAct::Record(Some(s)) = decide(&t, Some(&g), None, now).act else {
            panic!()
        };
        assert_eq!(s.uri, "file:///g");
        // An older generation's golden actor is replaced.
        let g = golden(
            1,
            json!({"phase": "Suspended", "snapshot": {"uri": "file:///g"}}),
        );
        assert_eq!(decide(&t, Some(&g), None, now).act, GoldenAct::Delete);
        // Done: nothing more.
        let t = template(
            json!({"snapshot": {"uri": "file:///g"}, "conditions": [cond("Ready", "True", 2)]}),
        );
        assert_eq!(decide(&t, Some(&g), None, now).act, GoldenAct::Nothing);
    }

    #[test]
    fn a_failed_boot_stalls_once_and_retries_with_backoff() {
        let now: Timestamp = "2026-01-01T00:00:00Z".parse().unwrap();
        let t = template(json!({"conditions": [cond("Reconciling", "True", 2)]}));
        let g = golden(
            2,
            json!({"phase": "Failed", "conditions": [
            {"type": "Ready", "status": "False", "reason": "ResumeFailed", "message": "image not found",
             "lastTransitionTime": "2026-01-01T00:00:00Z"}]}),
        );
        let p = decide(&t, Some(&g), None, now);
        let GoldenAct::Failed {
            stall: Some(msg),
            retry: Some(r),
        } = p.act
        else {
            panic!("{p:?}")
        };
        assert_eq!(msg, "image not found");
        let t = template(json!({"conditions": [cond("Stalled", "True", 2)]}));
        let p = decide(&t, Some(&g), Some(r), now);
        assert!(!p.mark_reconciling);
        assert_eq!(
            p.act,
            GoldenAct::Failed {
                stall: None,
                retry: None
            }
        );
        assert_eq!(p.requeue_after, Some(crate::RETRY_BASE));
    }
}
