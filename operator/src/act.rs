//! The thin I/O layer: the few requests the controllers make, each mapping "the object is
//! gone" to [`Outcome::Gone`] instead of an error.

use kube::api::{Api, Patch, PatchParams, PostParams};
use serde_json::{Value, json};

use crds::substrate::Actor;

use crate::{OperatorError, is_not_found};

/// What a request achieved.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Outcome {
    Done,
    /// The apiserver refused (409: e.g. the actor changed, or waits for a worker); the
    /// actor's conditions say why.
    Refused,
    /// The object is gone: nothing left to do.
    Gone,
}

/// `POST .../actors/<name>/<verb>` (`resume`, `suspend`).
pub(crate) async fn actor_action(
    client: &kube::Client,
    ns: &str,
    name: &str,
    verb: &str,
) -> Result<Outcome, OperatorError> {
    actor_action_with(client, ns, name, verb, json!({})).await
}

/// The body of the suspend of an idle actor: it names the activity it judged idle
/// (`preconditions.lastActiveTime`), so the apiserver refuses it (409, [`Outcome::Refused`])
/// when activity was recorded since, even if this operator's cache has not seen it yet (the
/// router records a request's activity before forwarding it when the recorded one is near
/// its deadline).
pub(crate) fn idle_suspend_options(a: &Actor) -> Value {
    match a.status.as_ref().and_then(|s| s.last_active_time.as_ref()) {
        Some(t) => json!({"preconditions": {"lastActiveTime": t}}),
        None => json!({}),
    }
}

/// `POST .../actors/<name>/<verb>` with `body` (the action's options).
pub(crate) async fn actor_action_with(
    client: &kube::Client,
    ns: &str,
    name: &str,
    verb: &str,
    body: Value,
) -> Result<Outcome, OperatorError> {
    let api: Api<Actor> = Api::namespaced(client.clone(), ns);
    match api
        .create_subresource::<Value, Actor>(verb, name, &PostParams::default(), &body)
        .await
    {
        Ok(_) => Ok(Outcome::Done),
        // The actor itself is gone (not, say, its template).
        Err(kube::Error::Api(e))
            if e.code == 404 && e.message.contains(&crds::resources::ACTORS.qualified()) =>
        {
            Ok(Outcome::Gone)
        }
        Err(kube::Error::Api(e)) if e.code == 409 || e.code == 404 => {
            tracing::debug!(atespace = %ns, actor = %name, verb, reason = %e.message, "action refused");
            Ok(Outcome::Refused)
        }
        Err(e) => Err(e.into()),
    }
}

/// A merge patch of the status of `name`.
pub(crate) async fn patch_status<K>(
    api: &Api<K>,
    name: &str,
    patch: Value,
) -> Result<Outcome, OperatorError>
where
    K: kube::Resource + Clone + serde::de::DeserializeOwned + std::fmt::Debug,
{
    match api
        .patch_status(name, &PatchParams::default(), &Patch::Merge(patch))
        .await
    {
        Ok(_) => Ok(Outcome::Done),
        Err(e) if is_not_found(&e) => Ok(Outcome::Gone),
        Err(e) => Err(e.into()),
    }
}

/// Conflicts in a row [`update_status`] and [`remove_finalizer`] retry before giving up.
const CONFLICT_RETRIES: usize = 5;

/// Read-modify-write of an object's status (an actor's, a worker's): `f(current)` is written
/// with the current resourceVersion as precondition (retried on conflicts); `None` from `f`
/// writes nothing.
pub(crate) async fn update_status<K>(
    api: &Api<K>,
    name: &str,
    f: impl Fn(&K) -> Option<K>,
) -> Result<Outcome, OperatorError>
where
    K: kube::Resource + Clone + serde::de::DeserializeOwned + serde::Serialize + std::fmt::Debug,
{
    for _ in 0..CONFLICT_RETRIES {
        let cur = match api.get(name).await {
            Ok(cur) => cur,
            Err(e) if is_not_found(&e) => return Ok(Outcome::Gone),
            Err(e) => return Err(e.into()),
        };
        let Some(new) = f(&cur) else {
            return Ok(Outcome::Done);
        };
        match api.replace_status(name, &PostParams::default(), &new).await {
            Ok(_) => return Ok(Outcome::Done),
            Err(kube::Error::Api(e)) if e.code == 409 => continue,
            Err(e) if is_not_found(&e) => return Ok(Outcome::Gone),
            Err(e) => return Err(e.into()),
        }
    }
    Ok(Outcome::Refused)
}

/// Removes `finalizer` from actor `name` when `ok(current)` holds, with the current
/// resourceVersion as precondition (retried on conflicts). Removing the last finalizer of
/// a deleted actor deletes it.
pub(crate) async fn remove_finalizer(
    api: &Api<Actor>,
    name: &str,
    finalizer: &str,
    ok: impl Fn(&Actor) -> bool,
) -> Result<Outcome, OperatorError> {
    for _ in 0..CONFLICT_RETRIES {
        let cur = match api.get(name).await {
            Ok(cur) => cur,
            Err(e) if is_not_found(&e) => return Ok(Outcome::Gone),
            Err(e) => return Err(e.into()),
        };
        let all = cur.metadata.finalizers.clone().unwrap_or_default();
        if !all.iter().any(|f| f == finalizer) || !ok(&cur) {
            return Ok(Outcome::Done);
        }
        let rest: Vec<&String> = all.iter().filter(|f| *f != finalizer).collect();
        let patch = json!({"metadata": {
            "resourceVersion": cur.metadata.resource_version,
            "finalizers": rest,
        }});
        match api
            .patch(name, &PatchParams::default(), &Patch::Merge(patch))
            .await
        {
            Ok(_) => return Ok(Outcome::Done),
            Err(kube::Error::Api(e)) if e.code == 409 => continue,
            Err(e) if is_not_found(&e) => return Ok(Outcome::Gone),
            Err(e) => return Err(e.into()),
        }
    }
    Ok(Outcome::Refused)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_idle_suspend_names_the_activity_it_judged() {
        let a: Actor = serde_json::from_value(json!({
            "apiVersion": "substrate.ate.dev/v1alpha1", "kind": "Actor",
            "metadata": {"name": "a", "namespace": "s"},
            "spec": {"template": {"name": "t"}},
            "status": {"phase": "Running", "lastActiveTime": "2026-01-01T00:00:05Z"}}))
        .unwrap();
        assert_eq!(
            idle_suspend_options(&a),
            json!({"preconditions": {"lastActiveTime": "2026-01-01T00:00:05Z"}})
        );
        let mut never = a;
        never.status = None;
        assert_eq!(idle_suspend_options(&never), json!({}));
    }
}
