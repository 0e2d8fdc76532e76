//! Where the apiserver reads `ActorTemplate`s (the scheduler's pool of an actor, the sharing
//! checks of actor writes and resumes).
//!
//! Standalone, `ate.dev` kinds are served by this apiserver from Valkey and read from there.
//! In a cluster they are CRDs of kube-apiserver (the APIService registers only
//! `substrate.ate.dev`), so they are read from the cluster through a watch (a kube-runtime
//! reflector over `actortemplates.ate.dev`, all namespaces): a resume costs no request to
//! kube-apiserver. Until the reflector's first list completes, a read goes to kube-apiserver
//! (a `GET`), so a resume right after a start never sees a template as missing because the
//! cache was still empty.

use std::sync::Arc;

use futures::StreamExt as _;
use kube::api::{Api, ApiResource, DynamicObject};
use kube::runtime::reflector::{self, ObjectRef, Store};
use kube::runtime::{WatchStreamExt as _, watcher};
use serde_json::Value;
use tokio::task::JoinHandle;

use crate::status::ApiError;

/// The source of templates.
#[derive(Clone, Default)]
pub enum Templates {
    /// This apiserver's own store (standalone).
    #[default]
    Local,
    /// The cluster's `actortemplates.ate.dev` CRD.
    Cluster(Arc<ClusterTemplates>),
}

impl std::fmt::Debug for Templates {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Templates::Local => f.write_str("Templates::Local"),
            Templates::Cluster(_) => f.write_str("Templates::Cluster"),
        }
    }
}

impl Templates {
    /// Whether `ate.dev` kinds live in the cluster (and are not served here).
    pub fn in_cluster(&self) -> bool {
        matches!(self, Templates::Cluster(_))
    }
}

/// The reflector of the cluster's templates.
pub struct ClusterTemplates {
    store: Store<DynamicObject>,
    api: ApiResource,
    client: kube::Client,
}

/// The `ActorTemplate` CRD's API resource (`ate.dev/v1alpha1`, `actortemplates`).
pub fn api_resource() -> ApiResource {
    ApiResource::erase::<crds::ate::ActorTemplate>(&())
}

impl ClusterTemplates {
    /// Starts watching the cluster's templates; the task runs until aborted (a failed watch is
    /// retried with backoff, logged at `warn`).
    pub fn start(client: kube::Client) -> (Arc<ClusterTemplates>, JoinHandle<()>) {
        let api = api_resource();
        let writer = reflector::store::Writer::new(api.clone());
        let store = writer.as_reader();
        let list: Api<DynamicObject> = Api::all_with(client.clone(), &api);
        let task = tokio::spawn(async move {
            watcher(list, watcher::Config::default())
                .default_backoff()
                .reflect(writer)
                .for_each(|ev| {
                    if let Err(e) = ev {
                        tracing::warn!(error = %e, "watch of the cluster's actortemplates.ate.dev failed; retrying");
                    }
                    futures::future::ready(())
                })
                .await;
        });
        (Arc::new(ClusterTemplates { store, api, client }), task)
    }

    /// The template `namespace/name` as JSON, `None` when the cluster has none.
    pub async fn get(&self, namespace: &str, name: &str) -> Result<Option<Value>, ApiError> {
        use futures::FutureExt as _;
        let synced = matches!(self.store.wait_until_ready().now_or_never(), Some(Ok(())));
        let obj = if synced {
            self.store
                .get(&ObjectRef::new_with(name, self.api.clone()).within(namespace))
                .map(|o| (*o).clone())
        } else {
            let api: Api<DynamicObject> =
                Api::namespaced_with(self.client.clone(), namespace, &self.api);
            api.get_opt(name).await.map_err(|e| {
                ApiError::new(
                    503,
                    "ServiceUnavailable",
                    format!(
                        "reading actortemplates.ate.dev {namespace}/{name} from the cluster: {e}"
                    ),
                )
            })?
        };
        obj.map(|o| serde_json::to_value(o).map_err(|e| ApiError::internal(e.to_string())))
            .transpose()
    }
}
