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
    let api: Api<Actor> = Api::namespaced(client.clone(), ns);
    match api
        .create_subresource::<Value, Actor>(verb, name, &PostParams::default(), &json!({}))
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
