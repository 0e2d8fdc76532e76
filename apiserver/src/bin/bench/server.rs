//! The two kinds of server the benchmark loads with the same code: Substrate's apiserver
//! (Actors in atespaces, `substrate.ate.dev`) and a plain kube-apiserver + etcd serving an
//! equivalent CustomResourceDefinition, `actors.benchmark.ate.dev` (kind Actor, namespaced,
//! the schema of `substrate.ate.dev` Actor, in Namespaces). The group name has the length of
//! `substrate.ate.dev`, so request bodies are byte for byte the same size.

use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use bytes::Bytes;
use http::{Method, StatusCode};
use kube::CustomResourceExt as _;
use serde_json::{Value, json};

use crate::client::Client;

/// The CRD's group on kube-apiserver.
pub const KUBE_GROUP: &str = "benchmark.ate.dev";

/// Which server a run loads.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Server {
    Substrate,
    Kube,
}

impl Server {
    /// How tables name it.
    pub fn label(self) -> &'static str {
        match self {
            Server::Substrate => "substrate",
            Server::Kube => "kube-apiserver",
        }
    }

    /// The store behind it (the CPU columns).
    pub fn storage(self) -> &'static str {
        match self {
            Server::Substrate => "valkey",
            Server::Kube => "etcd",
        }
    }

    pub fn api_version(self) -> &'static str {
        match self {
            Server::Substrate => "substrate.ate.dev/v1alpha1",
            Server::Kube => "benchmark.ate.dev/v1alpha1",
        }
    }

    /// `/apis/<group>/<version>`.
    pub fn api(self) -> String {
        format!("/apis/{}", self.api_version())
    }

    /// The collection of the Actors of namespace (atespace) `ns`.
    pub fn actors_path(self, ns: &str) -> String {
        format!("{}/namespaces/{ns}/actors", self.api())
    }

    /// The collection of the namespaces the Actors live in: atespaces or Namespaces.
    pub fn namespaces_path(self) -> String {
        match self {
            Server::Substrate => format!("{}/atespaces", self.api()),
            Server::Kube => "/api/v1/namespaces".into(),
        }
    }

    /// A new atespace or Namespace `name`.
    pub fn namespace_body(self, name: &str) -> Value {
        match self {
            Server::Substrate => json!({
                "apiVersion": self.api_version(),
                "kind": "Atespace",
                "metadata": {"name": name, "labels": {"app": "bench"}},
                "spec": {},
            }),
            Server::Kube => json!({
                "apiVersion": "v1",
                "kind": "Namespace",
                "metadata": {"name": name, "labels": {"app": "bench"}},
            }),
        }
    }
}

/// The CRD kube-apiserver serves the benchmark's Actors with: `substrate.ate.dev`'s Actor
/// CRD (generated from the Rust type, as Substrate validates with it) in group
/// [`KUBE_GROUP`], without short names and categories (they would clash with nothing, but
/// are not the benchmark's to claim).
pub fn kube_crd() -> Value {
    let mut crd = serde_json::to_value(crds::Actor::crd()).unwrap_or(Value::Null);
    crd["metadata"] = json!({"name": format!("actors.{KUBE_GROUP}"), "labels": {"app": "bench"}});
    crd["spec"]["group"] = json!(KUBE_GROUP);
    if let Some(names) = crd["spec"]["names"].as_object_mut() {
        names.remove("shortNames");
        names.remove("categories");
    }
    crd
}

/// Creates the CRD of [`kube_crd`] unless it exists, then waits until kube-apiserver serves
/// its resource (Established, and in discovery).
pub async fn ensure_kube_crd(client: &Client, timeout: Duration) -> anyhow::Result<()> {
    let crd = kube_crd();
    let name = crd["metadata"]["name"]
        .as_str()
        .unwrap_or_default()
        .to_string();
    let path = "/apis/apiextensions.k8s.io/v1/customresourcedefinitions";
    let r = client
        .send(Method::GET, &format!("{path}/{name}"), None, Bytes::new())
        .await?;
    match r.status {
        StatusCode::OK => {}
        StatusCode::NOT_FOUND => {
            let r = client
                .send(
                    Method::POST,
                    path,
                    Some("application/json"),
                    Bytes::from(crd.to_string()),
                )
                .await?;
            if r.status != StatusCode::CREATED && r.status != StatusCode::CONFLICT {
                bail!(
                    "creating CRD {name}: HTTP {}: {}",
                    r.status,
                    String::from_utf8_lossy(&r.body)
                );
            }
            eprintln!("installed CRD {name} on kube-apiserver");
        }
        s => bail!(
            "reading CRD {name}: HTTP {s}: {}",
            String::from_utf8_lossy(&r.body)
        ),
    }
    let deadline = Instant::now() + timeout;
    let discovery = Server::Kube.api();
    loop {
        let r = client
            .send(Method::GET, &discovery, None, Bytes::new())
            .await?;
        let served = r.status == StatusCode::OK
            && serde_json::from_slice::<Value>(&r.body)
                .ok()
                .and_then(|v| v["resources"].as_array().cloned())
                .is_some_and(|rs| rs.iter().any(|r| r["name"] == "actors"));
        if served {
            return Ok(());
        }
        if Instant::now() >= deadline {
            return Err(anyhow::anyhow!(
                "kube-apiserver does not serve {discovery} actors {timeout:?} after the CRD was created"
            ))
            .context("installing the benchmark CRD");
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_kube_crd_is_actor_in_its_own_group() {
        let crd = kube_crd();
        assert_eq!(crd["metadata"]["name"], "actors.benchmark.ate.dev");
        assert_eq!(crd["spec"]["group"], KUBE_GROUP);
        assert_eq!(crd["spec"]["scope"], "Namespaced");
        assert_eq!(crd["spec"]["names"]["kind"], "Actor");
        assert!(crd["spec"]["names"].get("shortNames").is_none());
        let substrate = serde_json::to_value(crds::Actor::crd()).unwrap();
        assert_eq!(crd["spec"]["versions"], substrate["spec"]["versions"]);
    }

    #[test]
    fn bodies_have_the_same_size_on_both_servers() {
        assert_eq!(
            Server::Substrate.api_version().len(),
            Server::Kube.api_version().len()
        );
        assert_eq!(
            Server::Substrate.actors_path("bench-1").len(),
            Server::Kube.actors_path("bench-1").len()
        );
    }
}
