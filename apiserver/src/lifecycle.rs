//! Atespace lifecycle: deleting an atespace cascades like deleting a namespace. The registry
//! marks it `Terminating` (deletionTimestamp set, new content refused); this controller deletes
//! everything in it, waits until it is empty (objects with finalizers included), then removes
//! the atespace once its own finalizers are gone. Level-triggered: it re-examines every
//! terminating atespace on each atespace event and on a short resync, so a restart converges.

use std::time::Duration;

use serde_json::Value;

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

/// One pass over a terminating atespace.
async fn finalize(registry: &Registry, name: &str, ates: &Value) -> Result<(), ApiError> {
    let system = UserInfo::system();
    let mut remaining = 0usize;
    for res in ALL.iter().filter(|r| r.namespaced) {
        let listed = registry
            .list(res, Some(name), &ListOptions::default())
            .await?;
        remaining += listed.items.len();
        for obj in listed
            .items
            .iter()
            .filter(|o| o.pointer("/metadata/deletionTimestamp").is_none())
        {
            let n = obj
                .pointer("/metadata/name")
                .and_then(Value::as_str)
                .unwrap_or_default();
            match registry
                .delete(
                    &system,
                    res,
                    Some(name),
                    n,
                    &DeleteOptions::default(),
                    false,
                )
                .await
            {
                Ok(_) => {
                    tracing::info!(atespace = name, resource = %res.qualified(), name = n, "deleted with its atespace")
                }
                Err(e) if e.code == 404 => {}
                Err(e) => return Err(e),
            }
        }
    }
    if remaining > 0 {
        // Count again: objects without finalizers are gone already.
        remaining = 0;
        for res in ALL.iter().filter(|r| r.namespaced) {
            remaining += registry
                .list(res, Some(name), &ListOptions::default())
                .await?
                .items
                .len();
        }
    }
    let has_finalizers = ates
        .pointer("/metadata/finalizers")
        .and_then(Value::as_array)
        .is_some_and(|f| !f.is_empty());
    if remaining == 0 && !has_finalizers {
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
