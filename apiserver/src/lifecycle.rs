//! Atespace lifecycle: deleting an atespace cascades like deleting a namespace. The registry
//! marks it `Terminating` (deletionTimestamp set, new content refused); this controller deletes
//! everything in it, waits until it is empty (objects with finalizers included), then removes
//! the atespace once its own finalizers are gone. Level-triggered: it re-examines every
//! terminating atespace on each atespace event and on a short resync, so a restart converges.
//!
//! It also keeps every atespace's status kstatus-compatible ([`atespace_status`]):
//! `observedGeneration` follows `metadata.generation` (an atespace's spec is descriptive, so
//! it is observed as soon as it is written), `Active` has `Ready=True`, `Terminating` has
//! `Ready=False` and `Reconciling=True` (reason `Terminating`), so `kubectl wait
//! --for=condition=Ready`, Flux's health checks and Argo CD see an atespace become ready and
//! see its deletion progress.

use std::time::Duration;

use serde_json::{Value, json};

use crds::resources::{ALL, ATESPACES};

use crate::auth::UserInfo;
use crate::registry::{DeleteOptions, Registry, rkey};
use crate::request::ListOptions;
use crate::status::ApiError;

const RESYNC: Duration = Duration::from_secs(2);

/// Runs forever.
pub async fn run(registry: Registry) {
    let cache = registry.store.cache(rkey(&ATESPACES)).clone();
    loop {
        let (rv, objs) = cache.snapshot(None);
        for a in objs.iter() {
            if a.get("status") != Some(&atespace_status(a, &crate::registry::now_rfc3339())) {
                let name = a
                    .pointer("/metadata/name")
                    .and_then(Value::as_str)
                    .unwrap_or_default();
                let r = registry
                    .guaranteed_update(&ATESPACES, None, name, |cur| {
                        let mut new = cur.clone();
                        new["status"] = atespace_status(cur, &crate::registry::now_rfc3339());
                        Some(new)
                    })
                    .await;
                if let Err(e) = r {
                    tracing::warn!(atespace = name, error = %e, "atespace status update failed; will retry");
                }
            }
        }
        for a in objs
            .iter()
            .filter(|a| a.pointer("/metadata/deletionTimestamp").is_some())
        {
            let name = a
                .pointer("/metadata/name")
                .and_then(Value::as_str)
                .unwrap_or_default();
            if let Err(e) = finalize(&registry, name, a).await {
                tracing::warn!(atespace = name, error = %e, "atespace cleanup failed; will retry");
            }
        }
        // Wait for the next atespace change or the resync period.
        if let Ok(mut w) = cache.watch_from(rv) {
            let _ = tokio::time::timeout(RESYNC, w.next()).await;
        } else {
            tokio::time::sleep(RESYNC).await;
        }
    }
}

/// How long an atespace stays `Terminating` at least: a create that passed admission just
/// before the deletion started has landed by then, so the final emptiness check sees it.
const MIN_TERMINATING: Duration = Duration::from_secs(3);
/// Deletes in flight while emptying an atespace.
const DELETE_CONCURRENCY: usize = 32;

/// One pass over a terminating atespace: deletes its contents (listed from the watch cache,
/// so a big atespace does not stall Valkey), then removes it once a consistent read finds it
/// empty and it has been terminating for [`MIN_TERMINATING`].
async fn finalize(registry: &Registry, name: &str, ates: &Value) -> Result<(), ApiError> {
    use futures::StreamExt;
    let system = UserInfo::system();
    let mut deleted = 0usize;
    for res in ALL.iter().filter(|r| r.namespaced) {
        let (_, objs) = registry.store.cache(rkey(res)).snapshot(Some(name));
        let names: Vec<String> = objs
            .iter()
            .filter(|o| o.pointer("/metadata/deletionTimestamp").is_none())
            .filter_map(|o| o.pointer("/metadata/name").and_then(Value::as_str))
            .map(str::to_string)
            .collect();
        let results: Vec<Result<(), ApiError>> = futures::stream::iter(names)
            .map(|n| {
                let system = &system;
                async move {
                    match registry
                        .delete(system, res, Some(name), &n, &DeleteOptions::default(), false)
                        .await
                    {
                        Ok(_) => {
                            tracing::debug!(atespace = name, resource = %res.qualified(), name = %n, "deleted with its atespace");
                            Ok(())
                        }
                        Err(e) if e.code == 404 => Ok(()),
                        Err(e) => Err(e),
                    }
                }
            })
            .buffer_unordered(DELETE_CONCURRENCY)
            .collect()
            .await;
        deleted += results.iter().filter(|r| r.is_ok()).count();
        if let Some(Err(e)) = results.into_iter().find(Result::is_err) {
            return Err(e);
        }
    }
    if deleted > 0 {
        tracing::info!(
            atespace = name,
            deleted,
            "deleted the contents of a terminating atespace"
        );
    }
    let since = ates
        .pointer("/metadata/deletionTimestamp")
        .and_then(Value::as_str)
        .and_then(|t| t.parse::<jiff::Timestamp>().ok())
        .map(|t| jiff::Timestamp::now().duration_since(t));
    if since.is_none_or(|d| d < jiff::SignedDuration::try_from(MIN_TERMINATING).unwrap_or_default())
    {
        return Ok(());
    }
    // Consistent check (not the cache): is anything left?
    let one = ListOptions {
        limit: Some(1),
        ..ListOptions::default()
    };
    for res in ALL.iter().filter(|r| r.namespaced) {
        if !registry.list(res, Some(name), &one).await?.items.is_empty() {
            return Ok(());
        }
    }
    let has_finalizers = ates
        .pointer("/metadata/finalizers")
        .and_then(Value::as_array)
        .is_some_and(|f| !f.is_empty());
    if !has_finalizers {
        registry.remove(&ATESPACES, None, name).await?;
        tracing::info!(atespace = name, "atespace deleted");
    }
    Ok(())
}

/// The atespaces that always exist: `default` (where kubectl points by default) and
/// `ate-golden` (golden snapshots of templates). Only `substrate:system` may delete them.
pub const BOOTSTRAP_ATESPACES: [&str; 2] = ["default", crds::GOLDEN_ATESPACE];

/// Creates the bootstrap atespaces that are missing (first start, or after data loss).
pub async fn ensure_bootstrap(registry: &Registry) -> Result<(), ApiError> {
    for name in BOOTSTRAP_ATESPACES {
        let obj = serde_json::json!({
            "apiVersion": format!("{}/{}", crds::SUBSTRATE_GROUP, crds::VERSION),
            "kind": "Atespace",
            "metadata": {"name": name},
            "spec": {},
        });
        registry.ensure_exists(&ATESPACES, obj).await?;
    }
    Ok(())
}

/// Runs forever: recreates a bootstrap atespace that disappeared (Valkey data loss, or a
/// system-initiated delete), checked on every atespace change and on the resync period.
pub async fn keep_bootstrap(registry: Registry) {
    let cache = registry.store.cache(rkey(&ATESPACES)).clone();
    loop {
        let (rv, objs) = cache.snapshot(None);
        let missing = BOOTSTRAP_ATESPACES.iter().any(|n| {
            !objs
                .iter()
                .any(|o| o.pointer("/metadata/name").and_then(Value::as_str) == Some(n))
        });
        if missing && let Err(e) = ensure_bootstrap(&registry).await {
            tracing::warn!(error = %e.message, "recreating bootstrap atespaces failed; will retry");
        }
        if let Ok(mut w) = cache.watch_from(rv) {
            let _ = tokio::time::timeout(RESYNC, w.next()).await;
        } else {
            tokio::time::sleep(RESYNC).await;
        }
    }
}

/// The status an atespace should have (kstatus-compatible): phase from `deletionTimestamp`,
/// `observedGeneration` = `metadata.generation`, a `Ready` condition (and `Reconciling` while
/// terminating). A condition keeps its `lastTransitionTime` while its status stays the same.
pub fn atespace_status(obj: &Value, now: &str) -> Value {
    let generation = obj
        .pointer("/metadata/generation")
        .and_then(Value::as_i64)
        .unwrap_or(1);
    let terminating = obj.pointer("/metadata/deletionTimestamp").is_some();
    let old = |ty: &str| {
        obj.pointer("/status/conditions")
            .and_then(Value::as_array)
            .and_then(|c| c.iter().find(|c| c["type"] == ty))
    };
    let condition = |ty: &str, status: &str, reason: &str, message: &str| {
        let since = old(ty)
            .filter(|c| c["status"] == status)
            .and_then(|c| c.get("lastTransitionTime"))
            .cloned()
            .unwrap_or_else(|| json!(now));
        json!({
            "lastTransitionTime": since,
            "message": message,
            "observedGeneration": generation,
            "reason": reason,
            "status": status,
            "type": ty,
        })
    };
    let conditions = if terminating {
        vec![
            condition(
                "Ready",
                "False",
                "Terminating",
                "the atespace is being deleted; its contents are being removed",
            ),
            condition(
                "Reconciling",
                "True",
                "Terminating",
                "deleting the contents of the atespace",
            ),
        ]
    } else {
        vec![condition(
            "Ready",
            "True",
            "Active",
            "the atespace accepts new content",
        )]
    };
    json!({
        "phase": if terminating { "Terminating" } else { "Active" },
        "observedGeneration": generation,
        "conditions": conditions,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn atespace_status_is_kstatus_compatible() {
        let a = json!({"metadata": {"name": "a", "generation": 3}});
        let s = atespace_status(&a, "2026-01-01T00:00:00Z");
        assert_eq!(s["phase"], "Active");
        assert_eq!(s["observedGeneration"], 3);
        assert_eq!(s["conditions"][0]["type"], "Ready");
        assert_eq!(s["conditions"][0]["status"], "True");
        // Stable: the same input gives the same status later.
        let b = json!({"metadata": {"name": "a", "generation": 3}, "status": s});
        assert_eq!(atespace_status(&b, "2027-01-01T00:00:00Z"), b["status"]);
        // Terminating: Ready=False with a new transition time, Reconciling=True.
        let mut t = b.clone();
        t["metadata"]["deletionTimestamp"] = json!("2027-01-01T00:00:00Z");
        let s = atespace_status(&t, "2027-01-01T00:00:01Z");
        assert_eq!(s["phase"], "Terminating");
        assert_eq!(s["conditions"][0]["status"], "False");
        assert_eq!(
            s["conditions"][0]["lastTransitionTime"],
            "2027-01-01T00:00:01Z"
        );
        assert_eq!(s["conditions"][1]["type"], "Reconciling");
    }
}
