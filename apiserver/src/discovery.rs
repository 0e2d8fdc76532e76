//! API discovery documents, built from the static resource table.
//!
//! Two formats, as kube-apiserver serves them:
//!
//! - legacy (`application/json`): `APIVersions` at `/api`, `APIResourceList` at `/api/v1` and
//!   `/apis/<group>/<version>`, `APIGroupList` at `/apis`, `APIGroup` at `/apis/<group>`;
//! - aggregated (`apidiscovery.k8s.io/v2` `APIGroupDiscoveryList`) at `/api` and `/apis`, chosen
//!   by the `Accept` header ([`negotiate_aggregated`]). client-go (kubectl 1.32) sends
//!   `application/json;g=apidiscovery.k8s.io;v=v2;as=APIGroupDiscoveryList,application/json;g=apidiscovery.k8s.io;v=v2beta1;as=APIGroupDiscoveryList,application/json`
//!   and recognises the aggregated answer by the `g`, `v` and `as` parameters of the response
//!   `Content-Type`.
//!
//! The core group only has `namespaces` (get, list): standalone, `/api/v1/namespaces/<name>`
//! is answered from atespaces so that `kubectl -n <atespace>` works without a cluster.

use crds::resources::{ALL, ResourceInfo};
use serde_json::{Value, json};

/// `Content-Type` of an aggregated discovery answer in `apidiscovery.k8s.io/v2`.
pub const AGGREGATED_V2: &str =
    "application/json;g=apidiscovery.k8s.io;v=v2;as=APIGroupDiscoveryList";
/// `Content-Type` of an aggregated discovery answer in `apidiscovery.k8s.io/v2beta1`.
pub const AGGREGATED_V2BETA1: &str =
    "application/json;g=apidiscovery.k8s.io;v=v2beta1;as=APIGroupDiscoveryList";

/// Verbs of a top-level resource.
const RESOURCE_VERBS: &[&str] = &[
    "create",
    "delete",
    "deletecollection",
    "get",
    "list",
    "patch",
    "update",
    "watch",
];
/// Verbs of the `status` subresource.
const STATUS_VERBS: &[&str] = &["get", "patch", "update"];
/// Verbs of the core `namespaces` resource (read-only view of atespaces).
const NAMESPACE_VERBS: &[&str] = &["get", "list"];

/// The groups served, in discovery order (each has one version).
fn groups() -> Vec<&'static str> {
    let mut out: Vec<&'static str> = Vec::new();
    for r in ALL {
        if !out.contains(&r.group) {
            out.push(r.group);
        }
    }
    out.extend(crate::reviews::GROUPS);
    out
}

fn resources_of(group: &str, version: &str) -> impl Iterator<Item = &'static ResourceInfo> {
    ALL.iter()
        .copied()
        .filter(move |r| r.group == group && r.version == version)
}

fn versions_of(group: &str) -> Vec<&'static str> {
    if crate::reviews::GROUPS.contains(&group) {
        return vec![crate::reviews::VERSION];
    }
    let mut out: Vec<&'static str> = Vec::new();
    for r in ALL.iter().filter(|r| r.group == group) {
        if !out.contains(&r.version) {
            out.push(r.version);
        }
    }
    out
}

/// `GET /api`: `APIVersions`.
pub fn api_versions() -> Value {
    json!({
        "kind": "APIVersions",
        "versions": ["v1"],
        "serverAddressByClientCIDRs": [{"clientCIDR": "0.0.0.0/0", "serverAddress": ""}],
    })
}

/// `GET /api/v1`: `APIResourceList` with `namespaces`.
pub fn core_v1_resources() -> Value {
    json!({
        "kind": "APIResourceList",
        "groupVersion": "v1",
        "resources": [{
            "name": "namespaces",
            "singularName": "namespace",
            "namespaced": false,
            "kind": "Namespace",
            "verbs": NAMESPACE_VERBS,
            "shortNames": ["ns"],
        }],
    })
}

fn group_version(group: &str, version: &str) -> Value {
    json!({"groupVersion": format!("{group}/{version}"), "version": version})
}

fn legacy_group(group: &str) -> Value {
    let versions = versions_of(group);
    let preferred = versions.first().copied().unwrap_or_default();
    json!({
        "name": group,
        "versions": versions.iter().map(|v| group_version(group, v)).collect::<Vec<_>>(),
        "preferredVersion": group_version(group, preferred),
    })
}

/// `GET /apis` (legacy): `APIGroupList` of every group.
pub fn api_group_list() -> Value {
    json!({
        "kind": "APIGroupList",
        "apiVersion": "v1",
        "groups": groups().into_iter().map(legacy_group).collect::<Vec<_>>(),
    })
}

/// `GET /apis/<group>`: `APIGroup`, or `None` for a group not served.
pub fn api_group(group: &str) -> Option<Value> {
    if !groups().contains(&group) {
        return None;
    }
    let mut g = legacy_group(group);
    let map = g.as_object_mut()?;
    map.insert("kind".into(), "APIGroup".into());
    map.insert("apiVersion".into(), "v1".into());
    Some(g)
}

/// `GET /apis/<group>/<version>`: `APIResourceList` with each resource and its `status`
/// subresource, or `None` for a group/version not served.
pub fn api_resource_list(group: &str, version: &str) -> Option<Value> {
    let mut resources = Vec::new();
    if crate::reviews::GROUPS.contains(&group) && version == crate::reviews::VERSION {
        resources = crate::reviews::api_resources(group);
    }
    for r in resources_of(group, version) {
        resources.push(json!({
            "name": r.plural,
            "singularName": r.singular,
            "namespaced": r.namespaced,
            "kind": r.kind,
            "verbs": RESOURCE_VERBS,
            "shortNames": r.short_names,
            "categories": r.categories,
        }));
        if r.has_status {
            resources.push(json!({
                "name": format!("{}/status", r.plural),
                "singularName": "",
                "namespaced": r.namespaced,
                "kind": r.kind,
                "verbs": STATUS_VERBS,
            }));
        }
        for sub in action_subresources(r) {
            resources.push(json!({
                "name": format!("{}/{sub}", r.plural),
                "singularName": "",
                "namespaced": r.namespaced,
                "kind": r.kind,
                "verbs": ["create"],
            }));
        }
    }
    if resources.is_empty() {
        return None;
    }
    Some(json!({
        "kind": "APIResourceList",
        "apiVersion": "v1",
        "groupVersion": format!("{group}/{version}"),
        "resources": resources,
    }))
}

fn scope(namespaced: bool) -> &'static str {
    if namespaced { "Namespaced" } else { "Cluster" }
}

/// One `APIResourceDiscovery`.
fn resource_discovery(r: &ResourceInfo) -> Value {
    let kind = json!({"group": r.group, "version": r.version, "kind": r.kind});
    let mut d = json!({
        "resource": r.plural,
        "responseKind": kind,
        "scope": scope(r.namespaced),
        "singularResource": r.singular,
        "verbs": RESOURCE_VERBS,
    });
    if !r.short_names.is_empty() {
        d["shortNames"] = json!(r.short_names);
    }
    if !r.categories.is_empty() {
        d["categories"] = json!(r.categories);
    }
    let mut subs = Vec::new();
    if r.has_status {
        subs.push(json!({
            "subresource": "status",
            "responseKind": kind,
            "verbs": STATUS_VERBS,
        }));
    }
    for sub in action_subresources(r) {
        subs.push(json!({"subresource": sub, "responseKind": kind, "verbs": ["create"]}));
    }
    if !subs.is_empty() {
        d["subresources"] = json!(subs);
    }
    d
}

/// Imperative actions served as POST subresources (the scheduler's resume, suspend, reset).
fn action_subresources(r: &ResourceInfo) -> &'static [&'static str] {
    if r.kind_id == crds::resources::ACTORS.kind_id {
        &["resume", "suspend", "reset"]
    } else {
        &[]
    }
}

fn discovery_list(items: Vec<Value>) -> Value {
    json!({
        "kind": "APIGroupDiscoveryList",
        "apiVersion": "apidiscovery.k8s.io/v2",
        "metadata": {},
        "items": items,
    })
}

/// `GET /apis` (aggregated): every group, version and resource in one
/// `apidiscovery.k8s.io/v2` `APIGroupDiscoveryList`.
pub fn aggregated_apis() -> Value {
    let items = groups()
        .into_iter()
        .map(|g| {
            let versions: Vec<Value> = versions_of(g)
                .into_iter()
                .map(|v| {
                    let resources: Vec<Value> = if crate::reviews::GROUPS.contains(&g) {
                        crate::reviews::resource_discoveries(g)
                    } else {
                        resources_of(g, v).map(resource_discovery).collect()
                    };
                    json!({
                        "version": v,
                        "resources": resources,
                        "freshness": "Current",
                    })
                })
                .collect();
            json!({"metadata": {"name": g, "creationTimestamp": null}, "versions": versions})
        })
        .collect();
    discovery_list(items)
}

/// `GET /api` (aggregated): the core group (named `""`) with `v1` `namespaces`.
pub fn aggregated_core() -> Value {
    discovery_list(vec![json!({
        "metadata": {"creationTimestamp": null},
        "versions": [{
            "version": "v1",
            "resources": [{
                "resource": "namespaces",
                "responseKind": {"group": "", "version": "v1", "kind": "Namespace"},
                "scope": "Cluster",
                "singularResource": "namespace",
                "verbs": NAMESPACE_VERBS,
                "shortNames": ["ns"],
            }],
            "freshness": "Current",
        }],
    })])
}

/// Sets `apiVersion` of an aggregated document to the version of `content_type` (one of
/// [`AGGREGATED_V2`], [`AGGREGATED_V2BETA1`]); both versions have the same shape.
pub fn set_aggregated_version(doc: &mut Value, content_type: &str) {
    let version = if content_type == AGGREGATED_V2BETA1 {
        "apidiscovery.k8s.io/v2beta1"
    } else {
        "apidiscovery.k8s.io/v2"
    };
    if let Some(map) = doc.as_object_mut() {
        map.insert("apiVersion".into(), version.into());
    }
}

/// Picks the aggregated discovery format the `Accept` header asks for: the `Content-Type` to
/// answer with ([`AGGREGATED_V2`] or [`AGGREGATED_V2BETA1`]), or `None` for the legacy
/// documents. Media ranges are tried by decreasing `q`, then in order; a plain JSON range
/// (`application/json`, `*/*`) ahead of the aggregated ones means legacy.
pub fn negotiate_aggregated(accept: &str) -> Option<&'static str> {
    let mut ranges: Vec<(f32, MediaRange<'_>)> = accept
        .split(',')
        .filter_map(MediaRange::parse)
        .map(|r| (r.q, r))
        .filter(|(q, _)| *q > 0.0)
        .collect();
    // Stable: equal weights keep the client's order.
    ranges.sort_by(|a, b| b.0.total_cmp(&a.0));
    for (_, r) in ranges {
        let json_like = matches!(
            r.essence.as_str(),
            "application/json" | "application/*" | "*/*"
        );
        if !json_like {
            continue;
        }
        match (r.param("g"), r.param("v"), r.param("as")) {
            (Some("apidiscovery.k8s.io"), Some("v2"), Some("APIGroupDiscoveryList")) => {
                return Some(AGGREGATED_V2);
            }
            (Some("apidiscovery.k8s.io"), Some("v2beta1"), Some("APIGroupDiscoveryList")) => {
                return Some(AGGREGATED_V2BETA1);
            }
            (None, None, None) => return None,
            // Another conversion target (Table, PartialObjectMetadata...): not for discovery.
            _ => continue,
        }
    }
    None
}

/// One media range of an `Accept` header.
struct MediaRange<'a> {
    essence: String,
    params: Vec<(String, &'a str)>,
    q: f32,
}

impl<'a> MediaRange<'a> {
    fn parse(s: &'a str) -> Option<Self> {
        let mut parts = s.split(';');
        let essence = parts.next()?.trim().to_ascii_lowercase();
        if essence.is_empty() {
            return None;
        }
        let mut params = Vec::new();
        let mut q = 1.0;
        for p in parts {
            let Some((k, v)) = p.split_once('=') else {
                continue;
            };
            let k = k.trim().to_ascii_lowercase();
            let v = v.trim().trim_matches('"');
            if k == "q" {
                q = v.parse().unwrap_or(0.0);
            } else {
                params.push((k, v));
            }
        }
        Some(Self { essence, params, q })
    }

    fn param(&self, key: &str) -> Option<&'a str> {
        self.params.iter().find(|(k, _)| k == key).map(|(_, v)| *v)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// kubectl 1.32's `acceptDiscoveryFormats`.
    const KUBECTL_132: &str = "application/json;g=apidiscovery.k8s.io;v=v2;as=APIGroupDiscoveryList,application/json;g=apidiscovery.k8s.io;v=v2beta1;as=APIGroupDiscoveryList,application/json";

    #[test]
    fn negotiation() {
        assert_eq!(negotiate_aggregated(KUBECTL_132), Some(AGGREGATED_V2));
        // Newer client-go puts a `profile=nopeer` variant first.
        assert_eq!(
            negotiate_aggregated(&format!(
                "application/json;g=apidiscovery.k8s.io;v=v2;as=APIGroupDiscoveryList;profile=nopeer,{KUBECTL_132}"
            )),
            Some(AGGREGATED_V2)
        );
        assert_eq!(
            negotiate_aggregated(
                "application/json;g=apidiscovery.k8s.io;v=v2beta1;as=APIGroupDiscoveryList,application/json"
            ),
            Some(AGGREGATED_V2BETA1)
        );
        assert_eq!(
            negotiate_aggregated(
                "application/json; as=APIGroupDiscoveryList; v=v2; g=apidiscovery.k8s.io"
            ),
            Some(AGGREGATED_V2)
        );
        assert_eq!(negotiate_aggregated("application/json"), None);
        assert_eq!(negotiate_aggregated(""), None);
        assert_eq!(negotiate_aggregated("*/*"), None);
        assert_eq!(
            negotiate_aggregated(
                "application/json,application/json;g=apidiscovery.k8s.io;v=v2;as=APIGroupDiscoveryList"
            ),
            None
        );
        assert_eq!(
            negotiate_aggregated(
                "application/json;q=0.5,application/json;g=apidiscovery.k8s.io;v=v2;as=APIGroupDiscoveryList"
            ),
            Some(AGGREGATED_V2)
        );
        assert_eq!(
            negotiate_aggregated(
                "application/vnd.kubernetes.protobuf;g=apidiscovery.k8s.io;v=v2;as=APIGroupDiscoveryList,application/json"
            ),
            None
        );
        assert_eq!(
            negotiate_aggregated(
                "application/json;g=apidiscovery.k8s.io;v=v1;as=APIGroupDiscoveryList"
            ),
            None
        );
    }

    #[test]
    fn legacy_documents() {
        assert_eq!(api_versions()["versions"], json!(["v1"]));
        assert_eq!(core_v1_resources()["resources"][0]["name"], "namespaces");

        let list = api_group_list();
        let names: Vec<&str> = list["groups"]
            .as_array()
            .unwrap()
            .iter()
            .map(|g| g["name"].as_str().unwrap())
            .collect();
        assert_eq!(
            names,
            [
                "substrate.ate.dev",
                "ate.dev",
                "coordination.k8s.io",
                "rbac.authorization.k8s.io",
                "authentication.k8s.io",
                "authorization.k8s.io"
            ]
        );
        assert_eq!(
            list["groups"][0]["preferredVersion"],
            json!({"groupVersion": "substrate.ate.dev/v1alpha1", "version": "v1alpha1"})
        );

        let g = api_group("ate.dev").unwrap();
        assert_eq!(g["kind"], "APIGroup");
        assert_eq!(g["versions"][0]["groupVersion"], "ate.dev/v1alpha1");
        assert!(api_group("apps").is_none());

        let rl = api_resource_list("substrate.ate.dev", "v1alpha1").unwrap();
        assert_eq!(rl["groupVersion"], "substrate.ate.dev/v1alpha1");
        let names: Vec<&str> = rl["resources"]
            .as_array()
            .unwrap()
            .iter()
            .map(|r| r["name"].as_str().unwrap())
            .collect();
        assert_eq!(
            names,
            [
                "atespaces",
                "atespaces/status",
                "actors",
                "actors/status",
                "actors/resume",
                "actors/suspend",
                "actors/reset",
                "workers",
                "workers/status"
            ]
        );
        let actors = &rl["resources"][2];
        assert_eq!(actors["namespaced"], true);
        assert_eq!(actors["kind"], "Actor");
        assert_eq!(actors["singularName"], "actor");
        assert_eq!(actors["shortNames"], json!(["act"]));
        assert_eq!(actors["categories"], json!(["substrate"]));
        assert_eq!(actors["verbs"].as_array().unwrap().len(), 8);
        assert_eq!(
            rl["resources"][3]["verbs"],
            json!(["get", "patch", "update"])
        );
        assert!(api_resource_list("ate.dev", "v1").is_none());
        assert!(api_resource_list("ate.dev", "v1alpha1").is_some());
    }

    #[test]
    fn aggregated_documents() {
        let d = aggregated_apis();
        assert_eq!(d["kind"], "APIGroupDiscoveryList");
        assert_eq!(d["apiVersion"], "apidiscovery.k8s.io/v2");
        let mut count = 0;
        for item in d["items"].as_array().unwrap() {
            let group = item["metadata"]["name"].as_str().unwrap();
            if group == crate::reviews::GROUP {
                let names: Vec<&str> = item["versions"][0]["resources"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .map(|r| r["resource"].as_str().unwrap())
                    .collect();
                assert_eq!(
                    names,
                    [
                        "localsubjectaccessreviews",
                        "selfsubjectaccessreviews",
                        "selfsubjectrulesreviews",
                        "subjectaccessreviews"
                    ]
                );
                continue;
            }
            if group == crate::reviews::AUTHENTICATION_GROUP {
                let r = &item["versions"][0]["resources"];
                assert_eq!(r.as_array().unwrap().len(), 1);
                assert_eq!(r[0]["resource"], "tokenreviews");
                assert_eq!(r[0]["scope"], "Cluster");
                assert_eq!(r[0]["verbs"], json!(["create"]));
                assert_eq!(
                    r[0]["responseKind"],
                    json!({"group": "authentication.k8s.io", "version": "v1", "kind": "TokenReview"})
                );
                continue;
            }
            for v in item["versions"].as_array().unwrap() {
                assert_eq!(v["freshness"], "Current");
                for r in v["resources"].as_array().unwrap() {
                    count += 1;
                    let info =
                        crds::resources::find(group, r["resource"].as_str().unwrap()).unwrap();
                    assert_eq!(r["responseKind"]["kind"], info.kind);
                    assert_eq!(r["responseKind"]["group"], group);
                    assert_eq!(
                        r["scope"],
                        if info.namespaced {
                            "Namespaced"
                        } else {
                            "Cluster"
                        }
                    );
                    assert_eq!(r["singularResource"], info.singular);
                    if info.has_status {
                        assert_eq!(r["subresources"][0]["subresource"], "status");
                        assert_eq!(r["subresources"][0]["responseKind"]["kind"], info.kind);
                    }
                }
            }
        }
        assert_eq!(count, ALL.len());

        let core = aggregated_core();
        let ns = &core["items"][0]["versions"][0]["resources"][0];
        assert_eq!(
            ns["responseKind"],
            json!({"group": "", "version": "v1", "kind": "Namespace"})
        );
        assert_eq!(ns["scope"], "Cluster");

        let mut d = aggregated_apis();
        set_aggregated_version(&mut d, AGGREGATED_V2BETA1);
        assert_eq!(d["apiVersion"], "apidiscovery.k8s.io/v2beta1");
    }
}
