//! Node agent pods (cluster mode): a node agent runs in a pod of the `substrate-nodeagent`
//! DaemonSet and its executors and gVisor sandboxes are processes of that pod, so when the pod
//! is deleted (DaemonSet rollout, the node removed, `kubectl delete pod`) or fails (evicted by
//! the kubelet) its sandboxes are gone with it. The operator watches those pods and releases
//! the actors bound to that node's workers at once (back to their last good snapshot), instead
//! of after the 30 s heartbeat timeout.
//!
//! Only positive evidence counts: a `DELETED` event of a pod whose containers are not running
//! (a force-deleted pod may still run: [`gone_node`]), or a pod seen in phase `Failed` or
//! `Succeeded`. A node without any agent pod in a relisted cache is not "lost" (a watch that
//! restarted reports no deletes; a wrong selector must not release every actor): the heartbeat
//! timeout stays the safety net. A worker is released only when its last heartbeat is older
//! than the loss, so a new agent pod that already took its workers over (heartbeating them)
//! keeps them.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use futures::channel::mpsc;
use futures::future::BoxFuture;
use futures::{FutureExt as _, StreamExt as _};
use jiff::Timestamp;
use k8s_openapi::api::core::v1::Pod;
use kube::api::Api;
use kube::runtime::{WatchStreamExt as _, watcher};

/// Where the node agents' pods are.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AgentPods {
    pub namespace: String,
    /// A label selector (`app.kubernetes.io/name=substrate-nodeagent` as `config/` labels them).
    pub selector: String,
}

/// The label selector of the node agents' pods in `config/`.
pub const DEFAULT_SELECTOR: &str = "app.kubernetes.io/name=substrate-nodeagent";

/// When each node's agent pod was last seen gone, by node name.
#[derive(Debug, Clone, Default)]
pub struct AgentLoss(Arc<Mutex<HashMap<String, Timestamp>>>);

impl AgentLoss {
    /// Records that `node`'s agent pod was seen gone at `at`.
    pub fn record(&self, node: &str, at: Timestamp) {
        if let Ok(mut m) = self.0.lock() {
            let e = m.entry(node.to_string()).or_insert(at);
            *e = (*e).max(at);
        }
    }

    /// When `node`'s agent pod was last seen gone.
    pub fn lost_at(&self, node: &str) -> Option<Timestamp> {
        self.0.lock().ok().and_then(|m| m.get(node).copied())
    }
}

/// The node whose agent this event says is gone: a pod in a terminal phase, or a deleted pod
/// none of whose containers its last status shows running. The kubelet deletes a pod's object
/// only after its containers stopped and it reported them terminated, so a deleted pod that
/// still shows a running container was force-deleted (`--grace-period=0 --force`, typically
/// on an unreachable node): its processes may still run, and only the heartbeat timeout (the
/// sandboxes fence themselves) makes releasing its actors safe.
pub fn gone_node(ev: &watcher::Event<Pod>) -> Option<(&str, &Pod)> {
    let (pod, deleted) = match ev {
        watcher::Event::Delete(p) => (p, true),
        watcher::Event::Apply(p) | watcher::Event::InitApply(p) => (p, false),
        watcher::Event::Init | watcher::Event::InitDone => return None,
    };
    let status = pod.status.as_ref();
    let terminal = status
        .and_then(|s| s.phase.as_deref())
        .is_some_and(|p| p == "Failed" || p == "Succeeded");
    let running = status
        .and_then(|s| s.container_statuses.as_ref())
        .into_iter()
        .flatten()
        .any(|c| c.state.as_ref().is_some_and(|st| st.running.is_some()));
    if !(terminal || deleted && !running) {
        return None;
    }
    let node = pod.spec.as_ref()?.node_name.as_deref()?;
    Some((node, pod))
}

/// The watch of the agents' pods: records losses in `loss` and hands each lost pod to `lost`
/// (the dead-worker controller maps it to the actors bound on its node).
pub(crate) fn watch(
    client: kube::Client,
    pods: &AgentPods,
    loss: AgentLoss,
    lost: mpsc::UnboundedSender<Pod>,
) -> BoxFuture<'static, ()> {
    let api: Api<Pod> = Api::namespaced(client, &pods.namespace);
    let cfg = watcher::Config::default().labels(&pods.selector);
    watcher(api, cfg)
        .default_backoff()
        .for_each(move |ev| {
            match &ev {
                Ok(ev) => {
                    if let Some((node, pod)) = gone_node(ev) {
                        let name = pod.metadata.name.as_deref().unwrap_or_default();
                        tracing::warn!(node, pod = name, "node agent pod gone: releasing the actors of its workers");
                        loss.record(node, crate::now());
                        let _ = lost.unbounded_send(pod.clone());
                    }
                }
                Err(e) => {
                    tracing::debug!(error = %e, "watch of the node agents' pods failed; retrying with backoff")
                }
            }
            futures::future::ready(())
        })
        .boxed()
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn pod(node: Option<&str>, phase: &str) -> Pod {
        with_container(node, phase, json!({}))
    }

    fn with_container(node: Option<&str>, phase: &str, state: serde_json::Value) -> Pod {
        serde_json::from_value(json!({
            "metadata": {"name": "substrate-nodeagent-x", "namespace": "substrate-system"},
            "spec": {"nodeName": node, "containers": []},
            "status": {"phase": phase, "containerStatuses": [{
                "name": "nodeagent", "image": "i", "imageID": "", "ready": false,
                "restartCount": 0, "state": state}]},
        }))
        .unwrap()
    }

    #[test]
    fn a_force_deleted_pod_still_running_is_no_proof() {
        let running = with_container(Some("n1"), "Running", json!({"running": {}}));
        assert_eq!(gone_node(&watcher::Event::Delete(running)), None);
        let stopped = with_container(
            Some("n1"),
            "Running",
            json!({"terminated": {"exitCode": 0}}),
        );
        assert_eq!(
            gone_node(&watcher::Event::Delete(stopped)).map(|(n, _)| n),
            Some("n1")
        );
    }

    #[test]
    fn deleted_or_terminal_pods_lose_their_node() {
        let running = pod(Some("n1"), "Running");
        assert_eq!(
            gone_node(&watcher::Event::Delete(running.clone())).map(|(n, _)| n),
            Some("n1")
        );
        assert_eq!(gone_node(&watcher::Event::Apply(running.clone())), None);
        assert_eq!(gone_node(&watcher::Event::InitApply(running)), None);
        let evicted = pod(Some("n2"), "Failed");
        assert_eq!(
            gone_node(&watcher::Event::Apply(evicted)).map(|(n, _)| n),
            Some("n2")
        );
        // Not scheduled anywhere: no node lost.
        assert_eq!(
            gone_node(&watcher::Event::Delete(pod(None, "Pending"))),
            None
        );
        assert_eq!(gone_node(&watcher::Event::<Pod>::InitDone), None);
    }

    #[test]
    fn the_latest_loss_of_a_node_counts() {
        let loss = AgentLoss::default();
        let (t1, t2): (Timestamp, Timestamp) = (
            "2026-01-01T00:00:10Z".parse().unwrap(),
            "2026-01-01T00:00:20Z".parse().unwrap(),
        );
        assert_eq!(loss.lost_at("n1"), None);
        loss.record("n1", t2);
        loss.record("n1", t1);
        assert_eq!(loss.lost_at("n1"), Some(t2));
        assert_eq!(loss.lost_at("n2"), None);
    }
}
