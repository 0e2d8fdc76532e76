//! `kubectl apply -k config/default`: Substrate's install into a cluster (docs/install.md).
//!
//! - What `kubectl kustomize` renders for `config/default` and each overlay, object by object:
//!   the objects there are, their namespaces, identities, images, flags, probes, volumes and
//!   the names they refer to, the PodDisruptionBudget and NetworkPolicy selectors, the
//!   APIService without a caBundle, and the RBAC rules (a table of what each component may
//!   and may not do, evaluated on the rendered roles here and by a real kube-apiserver below).
//! - The Valkey pod's ACL script and command line, run against a real `valkey-server`.
//! - Against a real kube-apiserver (envtest): every CRD file applies and becomes
//!   Established; `kubectl apply -k config/default --dry-run=server` passes; a real apply
//!   passes, a second one leaves the caBundle the apiserver wrote alone; kube-apiserver's
//!   SubjectAccessReviews agree with the RBAC table.
//! - `hack/coredns-stub.sh` against a kubeadm-style `kube-system/coredns` ConfigMap.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use e2e::envtest::{Envtest, Options};
use e2e::{eventually, free_port, required};
use serde_json::{Value, json};

const NS: &str = "substrate-system";
const IMAGE: &str = "ghcr.io/ate-dev/substrate:v0.1.0";
const CA_DIR: &str = "/var/run/substrate/apiserver-ca";

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

fn kubectl_bin() -> String {
    std::env::var("SUBSTRATE_KUBECTL")
        .ok()
        .filter(|s| !s.is_empty())
        .unwrap_or_else(|| "kubectl".into())
}

/// `kubectl kustomize config/<dir>`, parsed: the objects `kubectl apply -k` would send.
fn render(dir: &str) -> Vec<Value> {
    let path = repo().join("config").join(dir);
    let out = Command::new(kubectl_bin())
        .arg("kustomize")
        .arg(&path)
        .output()
        .expect("kubectl (SUBSTRATE_KUBECTL or on PATH)");
    assert!(
        out.status.success(),
        "kubectl kustomize {}:\n{}",
        path.display(),
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8(out.stdout).expect("UTF-8");
    serde_saphyr::from_multiple::<Value>(&text).expect("kubectl kustomize prints YAML objects")
}

fn kind_name(o: &Value) -> (String, String) {
    (
        o["kind"].as_str().unwrap_or_default().to_string(),
        o["metadata"]["name"]
            .as_str()
            .unwrap_or_default()
            .to_string(),
    )
}

fn find<'a>(objs: &'a [Value], kind: &str, name: &str) -> &'a Value {
    objs.iter()
        .find(|o| o["kind"] == kind && o["metadata"]["name"] == name)
        .unwrap_or_else(|| panic!("no {kind} {name} rendered"))
}

/// The ConfigMap generated as `name` (kustomize appends a content hash).
fn generated<'a>(objs: &'a [Value], name: &str) -> &'a Value {
    let hashed = |o: &&Value| {
        o["kind"] == "ConfigMap"
            && o["metadata"]["name"]
                .as_str()
                .and_then(|n| n.strip_prefix(name))
                .and_then(|rest| rest.strip_prefix('-'))
                .is_some_and(|hash| hash.len() == 10 && !hash.contains('-'))
    };
    objs.iter()
        .find(hashed)
        .unwrap_or_else(|| panic!("no generated ConfigMap {name}-<hash>"))
}

fn pod_spec(workload: &Value) -> &Value {
    &workload["spec"]["template"]["spec"]
}

fn container<'a>(workload: &'a Value, name: &str) -> &'a Value {
    pod_spec(workload)["containers"]
        .as_array()
        .into_iter()
        .flatten()
        .find(|c| c["name"] == name)
        .unwrap_or_else(|| panic!("{:?} has no container {name}", kind_name(workload)))
}

fn strings(v: &Value) -> Vec<&str> {
    v.as_array()
        .into_iter()
        .flatten()
        .filter_map(Value::as_str)
        .collect()
}

fn args(c: &Value) -> Vec<&str> {
    strings(&c["args"])
}

fn volume<'a>(workload: &'a Value, name: &str) -> &'a Value {
    pod_spec(workload)["volumes"]
        .as_array()
        .into_iter()
        .flatten()
        .find(|v| v["name"] == name)
        .unwrap_or_else(|| panic!("{:?} has no volume {name}", kind_name(workload)))
}

/// The volume mounted at `path` in container `c` of `workload`.
fn mounted_at<'a>(workload: &'a Value, c: &Value, path: &str) -> &'a Value {
    let m = c["volumeMounts"]
        .as_array()
        .into_iter()
        .flatten()
        .find(|m| m["mountPath"] == path)
        .unwrap_or_else(|| panic!("container {} mounts nothing at {path}", c["name"]));
    volume(workload, m["name"].as_str().expect("mount name"))
}

fn env_var<'a>(c: &'a Value, name: &str) -> &'a Value {
    c["env"]
        .as_array()
        .into_iter()
        .flatten()
        .find(|e| e["name"] == name)
        .unwrap_or_else(|| panic!("container {} has no env {name}", c["name"]))
}

/// Whether `selector` (a LabelSelector's matchLabels) selects `labels`.
fn selects(selector: &Value, labels: &Value) -> bool {
    let sel = selector.as_object().expect("matchLabels");
    !sel.is_empty() && sel.iter().all(|(k, v)| labels[k] == *v)
}

/// The container port a Service or probe port (number or name) means.
fn container_port(c: &Value, port: &Value) -> i64 {
    match port {
        Value::Number(n) => n.as_i64().expect("port"),
        Value::String(name) => c["ports"]
            .as_array()
            .into_iter()
            .flatten()
            .find(|p| p["name"] == name.as_str())
            .and_then(|p| p["containerPort"].as_i64())
            .unwrap_or_else(|| panic!("container {} has no port named {name}", c["name"])),
        other => panic!("port {other}"),
    }
}

/// The workload a Service selects, and the container ports its ports reach: (port, protocol,
/// container port).
fn service_ports(objs: &[Value], svc: &Value) -> Vec<(i64, String, i64)> {
    let selector = &svc["spec"]["selector"];
    let workloads: Vec<&Value> = objs
        .iter()
        .filter(|o| o["spec"]["template"]["metadata"]["labels"].is_object())
        .filter(|o| selects(selector, &o["spec"]["template"]["metadata"]["labels"]))
        .collect();
    assert_eq!(
        workloads.len(),
        1,
        "Service {} selects one workload",
        svc["metadata"]["name"]
    );
    let c = &pod_spec(workloads[0])["containers"][0];
    svc["spec"]["ports"]
        .as_array()
        .expect("ports")
        .iter()
        .map(|p| {
            (
                p["port"].as_i64().expect("port"),
                p["protocol"].as_str().unwrap_or("TCP").to_string(),
                container_port(c, &p["targetPort"]),
            )
        })
        .collect()
}

const CLUSTER_SCOPED: &[&str] = &[
    "Namespace",
    "CustomResourceDefinition",
    "ClusterRole",
    "ClusterRoleBinding",
    "APIService",
];

const WORKLOADS: &[&str] = &["Deployment", "StatefulSet", "DaemonSet"];

/// Checks that hold for config/default and every overlay: namespaces, that every name a pod
/// refers to exists (rendered, created by the apiserver at run time, a cert-manager
/// Certificate's Secret, or one of `user_secrets`, which the user creates), mounts, `$(VAR)`
/// references and probes.
fn check_common(objs: &[Value], user_secrets: &[&str]) {
    // Objects the apiserver creates at its first start (config/apiserver/deployment.yaml).
    let mut elsewhere = vec![
        (
            "ConfigMap".to_string(),
            "substrate-apiserver-ca".to_string(),
        ),
        ("Secret".into(), "substrate-valkey-auth".into()),
    ];
    elsewhere.extend(
        objs.iter()
            .filter(|o| o["kind"] == "Certificate")
            .filter_map(|c| c["spec"]["secretName"].as_str())
            .chain(user_secrets.iter().copied())
            .map(|s| ("Secret".to_string(), s.to_string())),
    );
    for o in objs {
        let (kind, name) = kind_name(o);
        let ns = o["metadata"]["namespace"].as_str();
        if CLUSTER_SCOPED.contains(&kind.as_str()) {
            assert_eq!(ns, None, "{kind} {name} is cluster-scoped");
        } else if (kind.as_str(), name.as_str())
            == ("RoleBinding", "substrate-apiserver-authentication-reader")
        {
            assert_eq!(ns, Some("kube-system"), "{kind} {name}");
        } else {
            assert_eq!(ns, Some(NS), "{kind} {name}");
        }
        assert_eq!(
            o["metadata"]["labels"]["app.kubernetes.io/part-of"], "substrate",
            "{kind} {name}"
        );
        if !WORKLOADS.contains(&kind.as_str()) {
            continue;
        }
        let spec = pod_spec(o);
        let exists = |kind: &str, name: &str| {
            elsewhere.iter().any(|(k, n)| k == kind && n == name)
                || objs
                    .iter()
                    .any(|x| x["kind"] == kind && x["metadata"]["name"] == name)
        };
        let volumes: BTreeSet<&str> = spec["volumes"]
            .as_array()
            .into_iter()
            .flatten()
            .map(|v| {
                if let Some(cm) = v["configMap"]["name"].as_str() {
                    assert!(exists("ConfigMap", cm), "{name}: volume of ConfigMap {cm}");
                    assert!(v["secret"].is_null(), "{name}: volume {v} has two sources");
                }
                if let Some(s) = v["secret"]["secretName"].as_str() {
                    assert!(exists("Secret", s), "{name}: volume of Secret {s}");
                }
                v["name"].as_str().expect("volume name")
            })
            .collect();
        let claims: BTreeSet<&str> = o["spec"]["volumeClaimTemplates"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|t| t["metadata"]["name"].as_str())
            .collect();
        if let Some(sa) = spec["serviceAccountName"].as_str() {
            assert!(exists("ServiceAccount", sa), "{name}: ServiceAccount {sa}");
        }
        let containers = spec["containers"]
            .as_array()
            .into_iter()
            .chain(spec["initContainers"].as_array())
            .flatten();
        for c in containers {
            let cname = c["name"].as_str().expect("container name");
            for m in c["volumeMounts"].as_array().into_iter().flatten() {
                let v = m["name"].as_str().expect("mount name");
                assert!(
                    volumes.contains(v) || claims.contains(v),
                    "{name}/{cname} mounts unknown volume {v}"
                );
            }
            let mut defined: BTreeSet<String> = c["env"]
                .as_array()
                .into_iter()
                .flatten()
                .map(|e| {
                    if let Some(cm) = e["valueFrom"]["configMapKeyRef"]["name"].as_str() {
                        assert!(exists("ConfigMap", cm), "{name}/{cname}: env from {cm}");
                    }
                    e["name"].as_str().expect("env name").to_string()
                })
                .collect();
            for from in c["envFrom"].as_array().into_iter().flatten() {
                if let Some(s) = from["secretRef"]["name"].as_str() {
                    assert!(exists("Secret", s), "{name}/{cname}: envFrom Secret {s}");
                }
            }
            // Kubelet's service links: <SERVICE>_SERVICE_HOST for the namespace's Services.
            if spec["enableServiceLinks"] != false {
                for svc in objs.iter().filter(|x| x["kind"] == "Service") {
                    let n = svc["metadata"]["name"].as_str().expect("name");
                    defined.insert(format!(
                        "{}_SERVICE_HOST",
                        n.to_uppercase().replace('-', "_")
                    ));
                }
            }
            for a in strings(&c["command"]).into_iter().chain(args(c)) {
                let mut rest = a;
                while let Some(i) = rest.find("$(") {
                    let end = rest[i..].find(')').expect("closing )") + i;
                    let var = &rest[i + 2..end];
                    assert!(
                        defined.contains(var),
                        "{name}/{cname}: {a} refers to ${var}, which the container does not have"
                    );
                    rest = &rest[end..];
                }
            }
            for probe in ["readinessProbe", "livenessProbe"] {
                let port = &c[probe]["httpGet"]["port"];
                if !port.is_null() {
                    container_port(c, port);
                }
            }
        }
    }
}

/// Rendered RBAC: what `user`'s bindings allow, as kube's RBAC authorizer decides, ignoring
/// bindings to roles that are not rendered (kube's bootstrap roles).
fn rbac_allows(objs: &[Value], sa: &str, a: &Access) -> bool {
    let role = |kind: &str, name: &str, ns: Option<&str>| {
        objs.iter().find(|o| {
            o["kind"] == kind
                && o["metadata"]["name"] == name
                && o["metadata"]["namespace"].as_str() == ns
        })
    };
    let resource = match a.subresource {
        Some(s) => format!("{}/{s}", a.resource),
        None => a.resource.to_string(),
    };
    let rule_allows = |r: &Value| {
        let has =
            |field: &str, want: &str| strings(&r[field]).iter().any(|x| *x == want || *x == "*");
        let names = strings(&r["resourceNames"]);
        has("apiGroups", a.group)
            && has("resources", &resource)
            && has("verbs", a.verb)
            && (names.is_empty() || a.name.is_some_and(|n| names.contains(&n)))
    };
    objs.iter()
        .filter(|b| b["kind"] == "ClusterRoleBinding" || b["kind"] == "RoleBinding")
        .filter(|b| {
            b["subjects"]
                .as_array()
                .into_iter()
                .flatten()
                .any(|s| s["kind"] == "ServiceAccount" && s["name"] == sa && s["namespace"] == NS)
        })
        .filter(|b| {
            // A RoleBinding grants in its namespace only.
            b["kind"] == "ClusterRoleBinding" || b["metadata"]["namespace"].as_str() == a.namespace
        })
        .filter_map(|b| {
            let r = &b["roleRef"];
            let ns = (r["kind"] == "Role")
                .then(|| b["metadata"]["namespace"].as_str())
                .flatten();
            role(
                r["kind"].as_str().unwrap_or_default(),
                r["name"].as_str().unwrap_or_default(),
                ns,
            )
        })
        .flat_map(|role| role["rules"].as_array().cloned().unwrap_or_default())
        .any(|r| rule_allows(&r))
}

/// One question about a component's permissions.
#[derive(Debug, Clone, Copy)]
struct Access {
    sa: &'static str,
    verb: &'static str,
    group: &'static str,
    resource: &'static str,
    subresource: Option<&'static str>,
    namespace: Option<&'static str>,
    name: Option<&'static str>,
    allowed: bool,
    /// Decided by one of kube's bootstrap roles (system:auth-delegator,
    /// extension-apiserver-authentication-reader): only kube-apiserver can answer it.
    builtin: bool,
}

/// `access(sa, verb, "group resource[/subresource] [namespace|-] [name]", allowed)`; the
/// core group is written `core`, `-` is no namespace (cluster-wide).
fn access(sa: &'static str, verb: &'static str, what: &'static str, allowed: bool) -> Access {
    let parts: Vec<&'static str> = what.split_whitespace().collect();
    let (resource, subresource) = match parts[1].split_once('/') {
        Some((r, s)) => (r, Some(s)),
        None => (parts[1], None),
    };
    Access {
        sa,
        verb,
        group: if parts[0] == "core" { "" } else { parts[0] },
        resource,
        subresource,
        namespace: parts.get(2).copied().filter(|n| *n != "-"),
        name: parts.get(3).copied(),
        allowed,
        builtin: false,
    }
}

fn builtin(a: Access) -> Access {
    Access { builtin: true, ..a }
}

/// What each component may and may not do (config/rbac/*.yaml).
fn rbac_table() -> Vec<Access> {
    let (api, op, agent, router) = (
        "substrate-apiserver",
        "substrate-operator",
        "substrate-nodeagent",
        "substrate-router",
    );
    vec![
        // apiserver
        access(api, "watch", "ate.dev actortemplates team-a", true),
        access(api, "list", "ate.dev workerpools -", true),
        access(api, "create", "ate.dev actortemplates team-a", false),
        access(api, "watch", "core namespaces", true),
        access(api, "delete", "core namespaces - team-a", false),
        access(
            api,
            "patch",
            "apiregistration.k8s.io apiservices - v1alpha1.substrate.ate.dev",
            true,
        ),
        access(
            api,
            "patch",
            "apiregistration.k8s.io apiservices - v1.apps",
            false,
        ),
        access(api, "create", "apiregistration.k8s.io apiservices", false),
        access(api, "create", "core secrets substrate-system", true),
        access(
            api,
            "get",
            "core secrets substrate-system substrate-apiserver-pki",
            true,
        ),
        access(
            api,
            "update",
            "core secrets substrate-system substrate-valkey-auth",
            true,
        ),
        access(
            api,
            "delete",
            "core secrets substrate-system substrate-valkey-auth",
            false,
        ),
        access(
            api,
            "get",
            "core secrets substrate-system substrate-s3",
            false,
        ),
        access(api, "list", "core secrets substrate-system", false),
        access(api, "create", "core secrets kube-system", false),
        access(
            api,
            "update",
            "core configmaps substrate-system substrate-apiserver-ca",
            true,
        ),
        access(
            api,
            "patch",
            "core configmaps substrate-system substrate-apiserver-ca",
            true,
        ),
        access(
            api,
            "update",
            "core configmaps substrate-system coredns",
            false,
        ),
        builtin(access(
            api,
            "create",
            "authentication.k8s.io tokenreviews",
            true,
        )),
        builtin(access(
            api,
            "create",
            "authorization.k8s.io subjectaccessreviews",
            true,
        )),
        builtin(access(
            api,
            "watch",
            "core configmaps kube-system extension-apiserver-authentication",
            true,
        )),
        builtin(access(
            api,
            "get",
            "core configmaps kube-system coredns",
            false,
        )),
        // operator
        access(op, "list", "substrate.ate.dev actors", true),
        access(op, "delete", "substrate.ate.dev actors team-a", true),
        access(op, "patch", "substrate.ate.dev actors/status team-a", true),
        access(op, "create", "substrate.ate.dev actors/resume team-a", true),
        access(
            op,
            "create",
            "substrate.ate.dev actors/suspend team-a",
            true,
        ),
        access(op, "create", "substrate.ate.dev actors/reset team-a", true),
        access(op, "create", "substrate.ate.dev workers", false),
        access(op, "delete", "substrate.ate.dev workers - w1", true),
        access(op, "update", "substrate.ate.dev workers/status - w1", true),
        access(op, "delete", "substrate.ate.dev atespaces - team-a", true),
        access(op, "patch", "substrate.ate.dev atespaces - team-a", true),
        access(op, "create", "substrate.ate.dev atespaces", false),
        access(op, "create", "ate.dev actortemplates team-a", false),
        access(op, "update", "ate.dev actortemplates/status team-a", true),
        access(op, "patch", "ate.dev workerpools/status team-a", true),
        access(op, "update", "ate.dev workerpools team-a", false),
        access(op, "create", "core namespaces", true),
        access(op, "delete", "core namespaces - team-a", true),
        access(op, "create", "core events team-a", true),
        access(op, "create", "events.k8s.io events team-a", true),
        access(
            op,
            "update",
            "coordination.k8s.io leases substrate-system substrate-operator",
            true,
        ),
        access(
            op,
            "create",
            "coordination.k8s.io leases kube-system",
            false,
        ),
        access(op, "get", "core secrets substrate-system", false),
        access(op, "watch", "core nodes", true),
        access(op, "get", "core nodes - node-1", true),
        access(op, "patch", "core nodes - node-1", false),
        access(op, "delete", "core nodes - node-1", false),
        access(op, "update", "substrate.ate.dev workers - w1", true),
        access(op, "create", "core pods team-a", false),
        access(op, "watch", "core pods substrate-system", true),
        access(op, "list", "core pods team-a", false),
        access(op, "delete", "core pods substrate-system", false),
        // node agent
        access(agent, "watch", "substrate.ate.dev actors", true),
        access(agent, "create", "substrate.ate.dev actors team-a", false),
        access(agent, "update", "substrate.ate.dev actors team-a", false),
        access(agent, "delete", "substrate.ate.dev actors team-a", false),
        access(
            agent,
            "patch",
            "substrate.ate.dev actors/status team-a",
            true,
        ),
        access(
            agent,
            "create",
            "substrate.ate.dev actors/resume team-a",
            false,
        ),
        access(agent, "create", "substrate.ate.dev workers", true),
        access(agent, "delete", "substrate.ate.dev workers - w1", true),
        access(
            agent,
            "update",
            "substrate.ate.dev workers/status - w1",
            true,
        ),
        access(agent, "list", "substrate.ate.dev atespaces", true),
        access(
            agent,
            "delete",
            "substrate.ate.dev atespaces - team-a",
            false,
        ),
        access(agent, "list", "ate.dev workerpools", true),
        access(agent, "update", "ate.dev workerpools/status team-a", false),
        access(agent, "get", "core secrets substrate-system", false),
        access(agent, "create", "authentication.k8s.io tokenreviews", true),
        access(
            agent,
            "create",
            "authorization.k8s.io subjectaccessreviews",
            false,
        ),
        // router
        access(router, "watch", "substrate.ate.dev actors", true),
        access(router, "delete", "substrate.ate.dev actors team-a", false),
        access(router, "create", "substrate.ate.dev actors team-a", false),
        access(router, "update", "substrate.ate.dev actors team-a", false),
        access(
            router,
            "create",
            "substrate.ate.dev actors/resume team-a",
            true,
        ),
        access(
            router,
            "create",
            "substrate.ate.dev actors/suspend team-a",
            false,
        ),
        access(
            router,
            "patch",
            "substrate.ate.dev actors/status team-a",
            true,
        ),
        access(router, "list", "substrate.ate.dev atespaces", true),
        access(router, "get", "ate.dev actortemplates team-a", true),
        access(router, "list", "ate.dev workerpools", false),
        access(router, "list", "substrate.ate.dev workers", false),
        builtin(access(
            router,
            "create",
            "authentication.k8s.io tokenreviews",
            true,
        )),
        builtin(access(
            router,
            "create",
            "authorization.k8s.io subjectaccessreviews",
            true,
        )),
    ]
}

fn describe(a: &Access) -> String {
    format!(
        "{} {} {}/{}{}{}{}",
        a.sa,
        a.verb,
        if a.group.is_empty() { "core" } else { a.group },
        a.resource,
        a.subresource.map(|s| format!("/{s}")).unwrap_or_default(),
        a.namespace.map(|n| format!(" in {n}")).unwrap_or_default(),
        a.name.map(|n| format!(" named {n}")).unwrap_or_default(),
    )
}

/// `v` with every number as an f64 (crdgen writes `65535.0` where kustomize prints `65535`).
fn numbers_as_f64(v: Value) -> Value {
    match v {
        Value::Number(n) => json!(n.as_f64().expect("number")),
        Value::Array(a) => Value::Array(a.into_iter().map(numbers_as_f64).collect()),
        Value::Object(o) => {
            Value::Object(o.into_iter().map(|(k, v)| (k, numbers_as_f64(v))).collect())
        }
        other => other,
    }
}

#[test]
fn default_renders_every_object_with_what_it_must_contain() {
    let objs = render("default");
    check_common(&objs, &[]);

    // The objects, exactly (plus the two generated ConfigMaps).
    let mut got: Vec<(String, String)> = objs
        .iter()
        .map(kind_name)
        .filter(|(k, _)| k != "ConfigMap")
        .collect();
    got.sort();
    let mut want: Vec<(String, String)> = [
        ("APIService", "v1alpha1.substrate.ate.dev"),
        ("ClusterRole", "substrate-actor-admin"),
        ("ClusterRole", "substrate-actor-edit"),
        ("ClusterRole", "substrate-actor-view"),
        ("ClusterRole", "substrate-apiserver"),
        ("ClusterRole", "substrate-nodeagent"),
        ("ClusterRole", "substrate-operator"),
        ("ClusterRole", "substrate-router"),
        ("ClusterRoleBinding", "substrate-apiserver"),
        (
            "ClusterRoleBinding",
            "substrate-apiserver:system:auth-delegator",
        ),
        ("ClusterRoleBinding", "substrate-nodeagent"),
        ("ClusterRoleBinding", "substrate-operator"),
        ("ClusterRoleBinding", "substrate-router"),
        (
            "ClusterRoleBinding",
            "substrate-router:system:auth-delegator",
        ),
        ("CustomResourceDefinition", "actortemplates.ate.dev"),
        ("CustomResourceDefinition", "workerpools.ate.dev"),
        ("DaemonSet", "substrate-nodeagent"),
        ("Deployment", "substrate-apiserver"),
        ("Deployment", "substrate-operator"),
        ("Deployment", "substrate-router"),
        ("Namespace", NS),
        ("NetworkPolicy", "substrate-valkey"),
        ("PodDisruptionBudget", "substrate-apiserver"),
        ("Role", "substrate-apiserver"),
        ("Role", "substrate-operator-leader-election"),
        ("RoleBinding", "substrate-apiserver"),
        ("RoleBinding", "substrate-apiserver-authentication-reader"),
        ("RoleBinding", "substrate-operator-leader-election"),
        ("Service", "substrate-apiserver"),
        ("Service", "substrate-dns"),
        ("Service", "substrate-router"),
        ("Service", "substrate-valkey"),
        ("ServiceAccount", "substrate-apiserver"),
        ("ServiceAccount", "substrate-nodeagent"),
        ("ServiceAccount", "substrate-operator"),
        ("ServiceAccount", "substrate-router"),
        ("StatefulSet", "substrate-valkey"),
    ]
    .iter()
    .map(|(k, n)| (k.to_string(), n.to_string()))
    .collect();
    want.sort();
    assert_eq!(got, want);
    assert_eq!(
        objs.iter().filter(|o| o["kind"] == "ConfigMap").count(),
        2,
        "substrate-snapshots and substrate-valkey"
    );

    // The CRDs are crdgen's.
    for crd in objs
        .iter()
        .filter(|o| o["kind"] == "CustomResourceDefinition")
    {
        let group = crd["spec"]["group"].as_str().expect("group");
        let plural = crd["spec"]["names"]["plural"].as_str().expect("plural");
        let file = repo().join(format!("crds/yaml/{group}_{plural}.yaml"));
        let committed: Value = serde_saphyr::from_multiple::<Value>(
            &std::fs::read_to_string(&file).expect("CRD file"),
        )
        .expect("YAML")
        .remove(0);
        let mut rendered = crd.clone();
        rendered["metadata"]["labels"]
            .as_object_mut()
            .expect("labels")
            .remove("app.kubernetes.io/part-of");
        if rendered["metadata"]["labels"]
            .as_object()
            .is_some_and(|l| l.is_empty())
        {
            rendered["metadata"]
                .as_object_mut()
                .expect("metadata")
                .remove("labels");
        }
        assert_eq!(
            numbers_as_f64(rendered),
            numbers_as_f64(committed),
            "{}",
            file.display()
        );
    }

    // Namespace: Pod Security lets the node agent's privileged pods in.
    let ns = find(&objs, "Namespace", NS);
    assert_eq!(
        ns["metadata"]["labels"]["pod-security.kubernetes.io/enforce"],
        "privileged"
    );

    // Identities and images.
    for (kind, name, sa, image) in [
        (
            "Deployment",
            "substrate-apiserver",
            "substrate-apiserver",
            IMAGE,
        ),
        (
            "Deployment",
            "substrate-operator",
            "substrate-operator",
            IMAGE,
        ),
        ("Deployment", "substrate-router", "substrate-router", IMAGE),
        (
            "DaemonSet",
            "substrate-nodeagent",
            "substrate-nodeagent",
            IMAGE,
        ),
    ] {
        let w = find(&objs, kind, name);
        assert_eq!(pod_spec(w)["serviceAccountName"], sa, "{name}");
        assert_eq!(pod_spec(w)["containers"][0]["image"], image, "{name}");
    }
    let valkey = find(&objs, "StatefulSet", "substrate-valkey");
    assert_eq!(pod_spec(valkey)["automountServiceAccountToken"], false);
    for c in pod_spec(valkey)["containers"]
        .as_array()
        .into_iter()
        .chain(pod_spec(valkey)["initContainers"].as_array())
        .flatten()
    {
        assert_eq!(c["image"], "valkey/valkey:8");
    }

    // apiserver: two replicas spread over nodes, a PDB, HTTPS probes, the flags.
    let api = find(&objs, "Deployment", "substrate-apiserver");
    let api_labels = &api["spec"]["template"]["metadata"]["labels"];
    assert_eq!(api["spec"]["replicas"], 2);
    let c = container(api, "apiserver");
    assert_eq!(
        args(c),
        [
            "--bind=0.0.0.0:8443",
            "--valkey-url=redis://substrate-valkey.substrate-system.svc:6379",
            "--valkey-username=substrate-apiserver",
            "--valkey-password-secret=substrate-valkey-auth",
            "--pki-secret=substrate-apiserver-pki",
            "--apiservice=v1alpha1.substrate.ate.dev",
            "--ca-configmap=substrate-apiserver-ca",
        ]
    );
    assert_eq!(strings(&c["command"]), ["substrate-apiserver"]);
    for (probe, path) in [("readinessProbe", "/readyz"), ("livenessProbe", "/livez")] {
        let get = &c[probe]["httpGet"];
        assert_eq!(
            (
                get["path"].as_str(),
                get["scheme"].as_str(),
                container_port(c, &get["port"])
            ),
            (Some(path), Some("HTTPS"), 8443),
            "{probe}"
        );
    }
    let anti = &pod_spec(api)["affinity"]["podAntiAffinity"]["preferredDuringSchedulingIgnoredDuringExecution"]
        [0]["podAffinityTerm"];
    assert_eq!(anti["topologyKey"], "kubernetes.io/hostname");
    assert!(selects(&anti["labelSelector"]["matchLabels"], api_labels));
    let pdb = find(&objs, "PodDisruptionBudget", "substrate-apiserver");
    assert_eq!(pdb["spec"]["minAvailable"], 1);
    assert!(selects(&pdb["spec"]["selector"]["matchLabels"], api_labels));
    let svc = find(&objs, "Service", "substrate-apiserver");
    assert_eq!(service_ports(&objs, svc), [(443, "TCP".to_string(), 8443)]);
    let apisvc = find(&objs, "APIService", "v1alpha1.substrate.ate.dev");
    assert_eq!(
        apisvc["spec"],
        json!({
            "group": "substrate.ate.dev", "version": "v1alpha1",
            "groupPriorityMinimum": 1000, "versionPriority": 100,
            "service": {"namespace": NS, "name": "substrate-apiserver", "port": 443},
        }),
        "no caBundle (the apiserver writes it), no insecureSkipTLSVerify"
    );

    // Valkey: one replica, AOF on a claimed volume, the shipped configuration, the password.
    assert_eq!(valkey["spec"]["replicas"], 1);
    let vc = container(valkey, "valkey");
    let data = &valkey["spec"]["volumeClaimTemplates"][0];
    assert_eq!(data["metadata"]["name"], "data");
    let data_mount = vc["volumeMounts"]
        .as_array()
        .expect("mounts")
        .iter()
        .find(|m| m["name"] == "data")
        .expect("data mounted");
    let a = args(vc);
    let flag = |name: &str| {
        let i = a.iter().position(|x| *x == name).unwrap_or_else(|| {
            panic!("valkey args {a:?} lack {name}");
        });
        a[i + 1]
    };
    assert_eq!(flag("--dir"), data_mount["mountPath"]);
    assert_eq!(flag("--port"), "6379");
    let conf = generated(&objs, "substrate-valkey");
    let shipped = std::fs::read_to_string(repo().join("config/valkey/valkey.conf")).expect("conf");
    assert_eq!(conf["data"]["valkey.conf"], shipped.as_str());
    assert!(shipped.contains("\nappendonly yes\n") && shipped.contains("\nappendfsync always\n"));
    let conf_volume = mounted_at(valkey, vc, a[0].rsplit_once('/').expect("conf path").0);
    assert_eq!(conf_volume["configMap"]["name"], conf["metadata"]["name"]);
    let auth = volume(valkey, "auth");
    assert_eq!(
        auth["secret"],
        json!({"secretName": "substrate-valkey-auth", "optional": false,
               "items": [{"key": "password", "path": "password"}]})
    );
    let init = &pod_spec(valkey)["initContainers"][0];
    for file in ["render-acl.sh", "users.acl.tmpl"] {
        let shipped = std::fs::read_to_string(repo().join("config/valkey").join(file)).expect(file);
        assert_eq!(conf["data"][file], shipped.as_str(), "{file}");
    }
    let acl_file = env_var(init, "SUBSTRATE_VALKEY_ACL_FILE")["value"]
        .as_str()
        .expect("ACL file");
    assert_eq!(flag("--aclfile"), acl_file);
    let acl_dir = acl_file.rsplit_once('/').expect("dir").0;
    assert_eq!(
        mounted_at(valkey, init, acl_dir)["name"],
        mounted_at(valkey, vc, acl_dir)["name"]
    );
    let svc = find(&objs, "Service", "substrate-valkey");
    assert_eq!(service_ports(&objs, svc), [(6379, "TCP".to_string(), 6379)]);

    // Only the apiserver's pods reach Valkey.
    let np = find(&objs, "NetworkPolicy", "substrate-valkey");
    let valkey_labels = &valkey["spec"]["template"]["metadata"]["labels"];
    assert!(selects(
        &np["spec"]["podSelector"]["matchLabels"],
        valkey_labels
    ));
    assert_eq!(np["spec"]["policyTypes"], json!(["Ingress"]));
    assert_eq!(
        np["spec"]["ingress"],
        json!([{
            "from": [{"podSelector": {"matchLabels": {"app.kubernetes.io/name": "substrate-apiserver"}}}],
            "ports": [{"port": 6379, "protocol": "TCP"}],
        }])
    );
    assert!(selects(
        &np["spec"]["ingress"][0]["from"][0]["podSelector"]["matchLabels"],
        api_labels
    ));
    for other in ["substrate-operator", "substrate-router"] {
        let labels = &find(&objs, "Deployment", other)["spec"]["template"]["metadata"]["labels"];
        assert!(!selects(
            &np["spec"]["ingress"][0]["from"][0]["podSelector"]["matchLabels"],
            labels
        ));
    }

    // The snapshot store, shared by the node agents and the operator.
    let snapshots = generated(&objs, "substrate-snapshots");
    assert_eq!(
        snapshots["data"]["url"],
        "file:///var/lib/substrate/snapshots"
    );
    let snapshot_env = |w: &Value| {
        let c = &pod_spec(w)["containers"][0];
        assert!(args(c).contains(&"--snapshot-url=$(SUBSTRATE_SNAPSHOT_URL)"));
        assert_eq!(
            env_var(c, "SUBSTRATE_SNAPSHOT_URL")["valueFrom"]["configMapKeyRef"],
            json!({"name": snapshots["metadata"]["name"], "key": "url"})
        );
    };

    // The components trust the CA the apiserver publishes.
    let trusts_apiserver = |w: &Value| {
        let c = &pod_spec(w)["containers"][0];
        assert!(
            args(c).contains(&format!("--substrate-ca-file={CA_DIR}/ca.crt").as_str()),
            "{:?}",
            kind_name(w)
        );
        let v = mounted_at(w, c, CA_DIR);
        assert_eq!(
            v["configMap"],
            json!({"name": "substrate-apiserver-ca", "optional": false})
        );
    };

    // operator: one replica under leader election in substrate-system; metrics and probes.
    let op = find(&objs, "Deployment", "substrate-operator");
    assert_eq!(op["spec"]["replicas"], 1);
    let c = container(op, "operator");
    assert_eq!(strings(&c["command"]), ["substrate-operator"]);
    for f in [
        "--mode=cluster",
        "--leader-elect=true",
        "--lease-namespace=substrate-system",
        "--metrics-addr=0.0.0.0:9092",
    ] {
        assert!(args(c).contains(&f), "operator lacks {f}");
    }
    assert_eq!(
        container_port(c, &c["readinessProbe"]["httpGet"]["port"]),
        9092
    );
    assert_eq!(
        env_var(c, "SUBSTRATE_OPERATOR_IDENTITY")["valueFrom"]["fieldRef"]["fieldPath"],
        "metadata.name"
    );
    snapshot_env(op);
    trusts_apiserver(op);
    assert_eq!(
        mounted_at(op, c, "/var/lib/substrate/snapshots")["hostPath"]["path"],
        "/var/lib/substrate/snapshots"
    );

    // node agent: privileged, on the host's network, its state on the host.
    let agent = find(&objs, "DaemonSet", "substrate-nodeagent");
    let c = container(agent, "nodeagent");
    assert_eq!(
        strings(&c["command"]),
        [
            "substrate-supervise",
            "--name=nodeagent",
            "--fail-fast-seconds=5",
            "--",
            "substrate-nodeagent"
        ]
    );
    for f in [
        "--mode=cluster",
        "--node=$(NODE_NAME)",
        "--pool-namespace=substrate-system",
        "--state-dir=/var/lib/substrate/node",
    ] {
        assert!(args(c).contains(&f), "node agent lacks {f}");
    }
    assert_eq!(
        env_var(c, "NODE_NAME")["valueFrom"]["fieldRef"]["fieldPath"],
        "spec.nodeName"
    );
    assert_eq!(c["securityContext"]["privileged"], true);
    assert_eq!(c["securityContext"]["runAsUser"], 0);
    assert_eq!(pod_spec(agent)["hostNetwork"], true);
    assert_eq!(pod_spec(agent)["dnsPolicy"], "ClusterFirstWithHostNet");
    assert_eq!(pod_spec(agent)["shareProcessNamespace"], true);
    assert!(
        c["resources"]["limits"].is_null(),
        "no limits: the sandboxes' memory counts against the pod"
    );
    assert_eq!(
        mounted_at(agent, c, "/var/lib/substrate")["hostPath"],
        json!({"path": "/var/lib/substrate", "type": "DirectoryOrCreate"})
    );
    snapshot_env(agent);
    trusts_apiserver(agent);
    // The worker gateway on the node's address (hostNetwork), which the agent advertises.
    assert!(
        args(c).contains(&"--gateway-listen=$(HOST_IP):7090"),
        "node agent lacks its worker gateway"
    );
    assert_eq!(
        env_var(c, "HOST_IP")["valueFrom"]["fieldRef"]["fieldPath"],
        "status.hostIP"
    );
    assert_eq!(container_port(c, &json!("gateway")), 7090);

    // router: two replicas; HTTP and DNS Services; DNS answers are the HTTP Service's IP.
    let router = find(&objs, "Deployment", "substrate-router");
    assert_eq!(router["spec"]["replicas"], 2);
    let c = container(router, "router");
    assert_eq!(strings(&c["command"]), ["substrate-router"]);
    for f in [
        "--mode=cluster",
        "--listen=0.0.0.0:8080",
        "--dns-listen=0.0.0.0:5353",
        "--dns-address=$(SUBSTRATE_ROUTER_SERVICE_HOST)",
        "--admin-listen=0.0.0.0:9091",
        "--worker-network=gateway",
        "--gateway-token-file=/var/run/substrate/gateway-token/token",
    ] {
        assert!(args(c).contains(&f), "router lacks {f}");
    }
    // Its gateway token: a projected ServiceAccount token of the gateways' audience.
    assert_eq!(
        mounted_at(router, c, "/var/run/substrate/gateway-token")["projected"]["sources"][0]["serviceAccountToken"],
        json!({"audience": nodeagent::gateway::DEFAULT_AUDIENCE, "expirationSeconds": 3600, "path": "token"})
    );
    assert_eq!(pod_spec(router)["enableServiceLinks"], true);
    assert_eq!(
        container_port(c, &c["readinessProbe"]["httpGet"]["port"]),
        9091
    );
    trusts_apiserver(router);
    assert_eq!(
        service_ports(&objs, find(&objs, "Service", "substrate-router")),
        [(80, "TCP".to_string(), 8080)]
    );
    assert_eq!(
        service_ports(&objs, find(&objs, "Service", "substrate-dns")),
        [(53, "UDP".to_string(), 5353), (53, "TCP".to_string(), 5353)]
    );

    // Least privilege, as the rendered roles say (kube-apiserver agrees: below).
    for a in rbac_table().iter().filter(|a| !a.builtin) {
        assert_eq!(
            rbac_allows(&objs, a.sa, a),
            a.allowed,
            "{} (rendered RBAC)",
            describe(a)
        );
    }
    // No wildcard anywhere in the components' roles.
    for r in objs
        .iter()
        .filter(|o| o["kind"] == "ClusterRole" || o["kind"] == "Role")
        .flat_map(|o| o["rules"].as_array().cloned().unwrap_or_default())
    {
        for field in ["apiGroups", "resources", "verbs"] {
            assert!(!strings(&r[field]).contains(&"*"), "wildcard in {r}");
        }
    }
}

#[test]
fn the_cert_manager_overlay_swaps_the_apiservers_pki_for_cert_managers() {
    let base = render("default");
    let objs = render("overlays/cert-manager");
    check_common(&objs, &[]);
    // Everything of config/default, plus cert-manager's objects.
    let names = |objs: &[Value]| objs.iter().map(kind_name).collect::<BTreeSet<_>>();
    let added: Vec<_> = names(&objs).difference(&names(&base)).cloned().collect();
    assert_eq!(
        added,
        [
            ("Certificate", "substrate-apiserver-root-ca"),
            ("Certificate", "substrate-apiserver-tls"),
            ("Issuer", "substrate-apiserver-ca"),
            ("Issuer", "substrate-selfsigned"),
        ]
        .map(|(k, n)| (k.to_string(), n.to_string()))
    );
    assert!(names(&base).is_subset(&names(&objs)));

    let root = find(&objs, "Certificate", "substrate-apiserver-root-ca");
    assert_eq!(root["spec"]["isCA"], true);
    assert_eq!(root["spec"]["issuerRef"]["name"], "substrate-selfsigned");
    assert_eq!(
        find(&objs, "Issuer", "substrate-selfsigned")["spec"],
        json!({"selfSigned": {}})
    );
    assert_eq!(
        find(&objs, "Issuer", "substrate-apiserver-ca")["spec"]["ca"]["secretName"],
        root["spec"]["secretName"]
    );
    let tls = find(&objs, "Certificate", "substrate-apiserver-tls");
    assert_eq!(tls["spec"]["issuerRef"]["name"], "substrate-apiserver-ca");
    assert_eq!(tls["spec"]["secretName"], "substrate-apiserver-tls");
    assert!(
        strings(&tls["spec"]["dnsNames"]).contains(&"substrate-apiserver.substrate-system.svc")
    );

    let apisvc = find(&objs, "APIService", "v1alpha1.substrate.ate.dev");
    assert_eq!(
        apisvc["metadata"]["annotations"]["cert-manager.io/inject-ca-from"],
        "substrate-system/substrate-apiserver-tls"
    );
    assert!(apisvc["spec"]["caBundle"].is_null());

    let api = find(&objs, "Deployment", "substrate-apiserver");
    let c = container(api, "apiserver");
    let a = args(c);
    for f in [
        "--tls-cert-file=/var/run/substrate/tls/tls.crt",
        "--tls-private-key-file=/var/run/substrate/tls/tls.key",
        "--valkey-password-secret=substrate-valkey-auth",
    ] {
        assert!(a.contains(&f), "{a:?} lacks {f}");
    }
    for gone in ["--pki-secret", "--apiservice", "--ca-configmap"] {
        assert!(!a.iter().any(|x| x.starts_with(gone)), "{a:?} has {gone}");
    }
    assert_eq!(
        mounted_at(api, c, "/var/run/substrate/tls")["secret"]["secretName"],
        "substrate-apiserver-tls"
    );
    for (kind, name) in [
        ("Deployment", "substrate-operator"),
        ("Deployment", "substrate-router"),
        ("DaemonSet", "substrate-nodeagent"),
    ] {
        let w = find(&objs, kind, name);
        let v = mounted_at(w, &pod_spec(w)["containers"][0], CA_DIR);
        assert!(v["configMap"].is_null(), "{name}: {v}");
        assert_eq!(
            v["secret"],
            json!({"secretName": "substrate-apiserver-tls", "optional": false,
                   "items": [{"key": "ca.crt", "path": "ca.crt"}]}),
            "{name}: only the CA certificate"
        );
    }
}

#[test]
fn the_s3_overlay_moves_snapshots_to_s3_with_credentials_from_a_secret() {
    let base = render("default");
    let objs = render("overlays/s3");
    check_common(&objs, &["substrate-s3"]);
    let names = |objs: &[Value]| {
        objs.iter()
            .filter(|o| o["kind"] != "ConfigMap")
            .map(kind_name)
            .collect::<BTreeSet<_>>()
    };
    assert_eq!(names(&objs), names(&base));
    let url = generated(&objs, "substrate-snapshots")["data"]["url"]
        .as_str()
        .expect("url");
    assert!(url.starts_with("s3://"), "{url}");
    for (kind, name) in [
        ("Deployment", "substrate-operator"),
        ("DaemonSet", "substrate-nodeagent"),
    ] {
        let c = &pod_spec(find(&objs, kind, name))["containers"][0];
        assert_eq!(
            c["envFrom"],
            json!([{"secretRef": {"name": "substrate-s3", "optional": false}}]),
            "{name}"
        );
    }
    // The operator leaves the node's disk alone and runs as a user.
    let op = find(&objs, "Deployment", "substrate-operator");
    assert!(
        !pod_spec(op)["volumes"]
            .as_array()
            .expect("volumes")
            .iter()
            .any(|v| !v["hostPath"].is_null()),
        "{}",
        pod_spec(op)["volumes"]
    );
    assert_eq!(pod_spec(op)["securityContext"]["runAsNonRoot"], true);
    // The node agents keep their state and caches on the host.
    let agent = find(&objs, "DaemonSet", "substrate-nodeagent");
    assert_eq!(
        volume(agent, "state")["hostPath"]["path"],
        "/var/lib/substrate"
    );
    // Nothing else changed (the Router, apiserver, Valkey are config/default's).
    for (kind, name) in [
        ("Deployment", "substrate-apiserver"),
        ("Deployment", "substrate-router"),
        ("StatefulSet", "substrate-valkey"),
    ] {
        assert_eq!(find(&objs, kind, name), find(&base, kind, name), "{name}");
    }
}

/// `valkey-server` and `valkey-cli` (or Redis'), or None (skip) when absent and not required.
fn valkey_binaries() -> Option<(PathBuf, PathBuf)> {
    let which = |env: &str, names: &[&str]| {
        std::env::var_os(env)
            .filter(|v| !v.is_empty())
            .map(PathBuf::from)
            .or_else(|| {
                let path = std::env::var_os("PATH")?;
                names.iter().find_map(|n| {
                    std::env::split_paths(&path)
                        .map(|d| d.join(n))
                        .find(|p| p.is_file())
                })
            })
    };
    let server = which(
        "SUBSTRATE_VALKEY_SERVER",
        &["valkey-server", "redis-server"],
    );
    let cli = which("SUBSTRATE_VALKEY_CLI", &["valkey-cli", "redis-cli"]);
    match (server, cli) {
        (Some(s), Some(c)) => Some((s, c)),
        _ => {
            let msg =
                "valkey-server and valkey-cli are needed; run hack/test.sh, which installs them";
            assert!(!required(), "{msg}");
            eprintln!("skipping: {msg}");
            None
        }
    }
}

fn sh(script: &str, env: &[(&str, &Path)]) -> (bool, String) {
    let mut c = Command::new("sh");
    c.args(["-c", script]);
    for (k, v) in env {
        c.env(k, v);
    }
    let out = c.output().expect("sh");
    (
        out.status.success(),
        format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ),
    )
}

/// Valkey as StatefulSet substrate-valkey runs it: the init container's ACL script, then
/// valkey-server with the pod's command line, its paths moved into a temporary directory and
/// loopback with a free port instead of the pod's addresses and 6379.
struct ValkeyPod {
    _server: e2e::KillOnDrop,
    port: String,
    cli: PathBuf,
    dir: tempfile::TempDir,
}

impl ValkeyPod {
    /// Renders the ACL from `password_file` (which must exist: the pod waits for its Secret)
    /// and starts the server.
    fn start(
        objs: &[Value],
        server: &Path,
        cli: &Path,
        password_file: &Path,
        port: u16,
    ) -> ValkeyPod {
        let sts = find(objs, "StatefulSet", "substrate-valkey");
        let conf = generated(objs, "substrate-valkey");
        let dir = tempfile::tempdir().expect("tempdir");
        let d = dir.path();
        for key in ["valkey.conf", "render-acl.sh", "users.acl.tmpl"] {
            std::fs::write(d.join(key), conf["data"][key].as_str().expect("data")).expect("write");
        }
        std::fs::create_dir(d.join("data")).expect("data dir");
        let init = &pod_spec(sts)["initContainers"][0];
        assert_eq!(
            strings(&init["command"]),
            ["sh", "/etc/valkey/render-acl.sh"]
        );
        let (ok, out) = ValkeyPod::render_acl(d, password_file);
        assert!(ok, "{out}");

        let port = port.to_string();
        let vc = container(sts, "valkey");
        let pod_args: Vec<String> = args(vc)
            .iter()
            .map(|a| match *a {
                "/etc/valkey/valkey.conf" => d.join("valkey.conf").display().to_string(),
                "/etc/valkey-acl/users.acl" => d.join("users.acl").display().to_string(),
                "/data" => d.join("data").display().to_string(),
                "6379" => port.clone(),
                "*" => "127.0.0.1".into(),
                "-::*" => "-::1".into(),
                other => other.to_string(),
            })
            .collect();
        assert_eq!(strings(&vc["command"]), ["valkey-server"]);
        let log = std::fs::File::create(d.join("valkey.log")).expect("log");
        let server = e2e::KillOnDrop(
            Command::new(server)
                .args(&pod_args)
                .stdout(log.try_clone().expect("log"))
                .stderr(log)
                .stdin(Stdio::null())
                .spawn()
                .expect("valkey-server"),
        );
        let pod = ValkeyPod {
            _server: server,
            port,
            cli: cli.to_path_buf(),
            dir,
        };
        eventually("valkey answers", || {
            pod.run(None, &["PING"]).contains("NOAUTH").then_some(())
        });
        pod
    }

    /// The init container's script with the pod's paths moved to `d`: (success, output).
    fn render_acl(d: &Path, password_file: &Path) -> (bool, String) {
        sh(
            &format!("sh {}", d.join("render-acl.sh").display()),
            &[
                ("SUBSTRATE_VALKEY_PASSWORD_FILE", password_file),
                ("SUBSTRATE_VALKEY_ACL_TEMPLATE", &d.join("users.acl.tmpl")),
                ("SUBSTRATE_VALKEY_ACL_FILE", &d.join("users.acl")),
            ],
        )
    }

    /// `valkey-cli` as `auth` (user, password); its output, trimmed.
    fn run(&self, auth: Option<(&str, &str)>, cmd: &[&str]) -> String {
        let mut c = Command::new(&self.cli);
        c.args(["-h", "127.0.0.1", "-p", &self.port, "--no-auth-warning"]);
        if let Some((user, pass)) = auth {
            c.args(["--user", user, "--pass", pass]);
        }
        let out = c.args(cmd).output().expect("valkey-cli");
        format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        )
        .trim()
        .to_string()
    }
}

#[test]
fn the_valkey_pod_requires_the_apiservers_password_with_a_real_valkey() {
    let Some((server, cli)) = valkey_binaries() else {
        return;
    };
    let objs = render("default");
    let vc = container(find(&objs, "StatefulSet", "substrate-valkey"), "valkey");
    let secret = tempfile::tempdir().expect("tempdir");
    let password = random_hex();
    // The password is the file's first line (a trailing newline is not part of it).
    let password_file = secret.path().join("password");
    std::fs::write(&password_file, format!("{password}\n")).expect("password");

    let valkey = ValkeyPod::start(&objs, &server, &cli, &password_file, free_port());
    // No Secret, no ACL file.
    let (ok, out) = ValkeyPod::render_acl(valkey.dir.path(), &secret.path().join("missing"));
    assert!(!ok && out.contains("substrate-valkey-auth"), "{out}");
    let acl = valkey.dir.path().join("users.acl");
    let acl_text = std::fs::read_to_string(&acl).expect("ACL file");
    assert!(!acl_text.contains(&password), "only the hash is stored");
    use std::os::unix::fs::PermissionsExt as _;
    assert_eq!(
        std::fs::metadata(&acl).expect("acl").permissions().mode() & 0o777,
        0o600
    );
    let run = |auth: Option<(&str, &str)>, cmd: &[&str]| valkey.run(auth, cmd);
    let port = valkey.port.clone();
    let d = valkey.dir.path();
    let me = Some(("substrate-apiserver", password.as_str()));
    assert_eq!(run(me, &["PING"]), "PONG");

    // Without the password, nothing.
    assert!(run(None, &["GET", "x"]).contains("NOAUTH"));
    assert!(run(Some(("default", "")), &["PING"]).contains("WRONGPASS"));
    assert!(run(Some(("substrate-apiserver", "wrong")), &["PING"]).contains("WRONGPASS"));
    // With it, what the apiserver does: its scripts (loaded, then called by SHA), streams
    // and plain keys, all under its key prefix.
    let sha = run(
        me,
        &[
            "SCRIPT",
            "LOAD",
            "redis.call('SET', KEYS[1], ARGV[1]); return redis.call('GET', KEYS[1])",
        ],
    );
    assert_eq!(sha.len(), 40, "{sha}");
    assert_eq!(run(me, &["EVALSHA", &sha, "1", "substrate:k", "v"]), "v");
    assert_eq!(run(me, &["GET", "substrate:k"]), "v");
    assert!(!run(me, &["XADD", "substrate:log", "*", "f", "v"]).contains("ERR"));
    assert!(
        run(
            me,
            &["XREAD", "COUNT", "1", "STREAMS", "substrate:log", "0"]
        )
        .contains("f")
    );
    assert!(run(me, &["GET", "elsewhere"]).contains("NOPERM"));
    // Not the server's administration.
    assert!(run(me, &["CONFIG", "SET", "appendonly", "no"]).contains("NOPERM"));
    assert!(run(me, &["FLUSHALL"]).contains("NOPERM"));

    // The probes, as kubelet runs them.
    for probe in ["readinessProbe", "livenessProbe"] {
        let cmd = strings(&vc[probe]["exec"]["command"]);
        assert_eq!(cmd[..2], ["sh", "-c"]);
        let script = cmd[2]
            .replace("-p 6379", &format!("-h 127.0.0.1 -p {port}"))
            .replace("valkey-cli", &cli.display().to_string());
        let with = |file: &Path| {
            sh(
                &script.replace(
                    "/etc/substrate-valkey-auth/password",
                    &file.display().to_string(),
                ),
                &[],
            )
        };
        let (ok, out) = with(&password_file);
        assert!(ok, "{probe}: {out}");
        std::fs::write(d.join("other"), "not-the-password").expect("write");
        let (ok, _) = with(&d.join("other"));
        assert!(!ok, "{probe} passes only with the password");
    }
}

/// 16 random bytes from the kernel, hex.
fn random_hex() -> String {
    use std::io::Read as _;
    let mut b = [0u8; 16];
    std::fs::File::open("/dev/urandom")
        .and_then(|mut f| f.read_exact(&mut b))
        .expect("/dev/urandom");
    b.iter().map(|x| format!("{x:02x}")).collect()
}

/// One control plane without kube-controller-manager (nothing here needs it).
fn control_plane() -> Option<Envtest> {
    Envtest::start_with(Options {
        controller_manager: false,
    })
}

#[test]
fn every_crd_file_becomes_established_in_a_real_kube_apiserver() {
    let Some(env) = control_plane() else { return };
    let k = env.kubectl();
    let crds = repo().join("crds/yaml");
    // Every file of crds/yaml/ (kubectl apply -f of the directory), then config/crd.
    let out = k.ok(&["apply", "-f", &crds.display().to_string()], None);
    let files = std::fs::read_dir(&crds).expect("crds/yaml").count();
    assert_eq!(out.lines().count(), files, "{out}");
    let out = k.ok(
        &[
            "apply",
            "-k",
            &repo().join("config/crd").display().to_string(),
        ],
        None,
    );
    assert!(
        out.lines().all(|l| l.ends_with(" unchanged")),
        "config/crd is crds/yaml: {out}"
    );
    let names: Vec<String> = render("crd")
        .iter()
        .map(|o| format!("crd/{}", o["metadata"]["name"].as_str().expect("name")))
        .collect();
    assert_eq!(names.len(), files);
    let mut wait = vec!["wait", "--for=condition=Established", "--timeout=60s"];
    wait.extend(names.iter().map(String::as_str));
    k.ok(&wait, None);
}

#[test]
fn default_applies_to_a_real_kube_apiserver_and_its_rbac_is_least_privilege() {
    let Some(env) = control_plane() else { return };
    let k = env.kubectl();
    let default = repo().join("config/default").display().to_string();
    let objs = render("default");

    // A server-side dry run validates every object against the real API (schemas, field
    // validation, admission) without creating it; namespaced objects need their namespace,
    // which only a real apply creates: create it first.
    let namespace = find(&objs, "Namespace", NS);
    k.ok(&["apply", "-f", "-"], Some(&namespace.to_string()));
    let out = k.ok(&["apply", "-k", &default, "--dry-run=server"], None);
    assert_eq!(
        out.lines()
            .filter(|l| l.ends_with("(server dry run)"))
            .count(),
        objs.len(),
        "{out}"
    );

    // For real, and again: idempotent, and the caBundle the apiserver writes at run time is
    // left alone by a later apply.
    k.ok(&["apply", "-k", &default], None);
    let ca = "LS0tLS1CRUdJTiBDRVJUSUZJQ0FURS0tLS0tCg=="; // any bytes do for the API
    k.ok(
        &[
            "patch",
            "apiservice",
            "v1alpha1.substrate.ate.dev",
            "--type=merge",
            "-p",
            &json!({"spec": {"caBundle": ca}}).to_string(),
        ],
        None,
    );
    // Nothing is written by the second apply: every object keeps its resourceVersion. (kubectl
    // still says "configured" for the PodDisruptionBudget, whose selector is patched by
    // replacement, and the StatefulSet, whose volumeClaimTemplates the server defaults: no-op
    // patches.)
    let versions = || -> BTreeMap<(String, String), Value> {
        let list: Value = serde_json::from_str(&k.ok(&["get", "-k", &default, "-o", "json"], None))
            .expect("JSON");
        list["items"]
            .as_array()
            .expect("items")
            .iter()
            .map(|o| (kind_name(o), o["metadata"]["resourceVersion"].clone()))
            .collect()
    };
    let before = versions();
    assert_eq!(before.len(), objs.len());
    k.ok(&["apply", "-k", &default], None);
    assert_eq!(versions(), before, "a second apply changed objects");
    let apisvc = k.get("apiservice", "v1alpha1.substrate.ate.dev", None);
    assert_eq!(apisvc["spec"]["caBundle"], ca);

    // Services got their ClusterIPs (what hack/coredns-stub.sh and the router's DNS use).
    for svc in ["substrate-dns", "substrate-router", "substrate-apiserver"] {
        let s = k.get("service", svc, Some(NS));
        assert!(
            s["spec"]["clusterIP"]
                .as_str()
                .is_some_and(|ip| ip.starts_with("127.74."))
        );
    }

    // kube-apiserver decides as the table says, for each component's ServiceAccount.
    let mut wrong = Vec::new();
    for a in rbac_table() {
        let user = format!("system:serviceaccount:{NS}:{}", a.sa);
        let (code, body) = env.admin.request(
            "POST",
            "/apis/authorization.k8s.io/v1/subjectaccessreviews",
            Some(&json!({
                "apiVersion": "authorization.k8s.io/v1", "kind": "SubjectAccessReview",
                "spec": {
                    "user": user,
                    "groups": ["system:serviceaccounts", format!("system:serviceaccounts:{NS}"), "system:authenticated"],
                    "resourceAttributes": {
                        "verb": a.verb, "group": a.group, "resource": a.resource,
                        "subresource": a.subresource.unwrap_or_default(),
                        "namespace": a.namespace.unwrap_or_default(),
                        "name": a.name.unwrap_or_default(),
                    },
                },
            })),
        );
        assert_eq!(code, 201, "{body}");
        if body["status"]["allowed"] != a.allowed {
            wrong.push(format!("{} -> {}", describe(&a), body["status"]));
        }
    }
    assert!(
        wrong.is_empty(),
        "kube-apiserver disagrees:\n{}",
        wrong.join("\n")
    );
}

#[test]
fn the_apiserver_bootstraps_the_install_as_its_service_account() {
    // What a fresh install does at its first start, with the real apiserver and Valkey: the
    // apiserver, as its ServiceAccount with config/rbac/apiserver.yaml only, creates its PKI
    // Secret and Valkey's password Secret, publishes its CA and fills in the APIService's
    // caBundle; Valkey (the StatefulSet's init script and command line) starts once the
    // password Secret exists, and the apiserver, restarted until Valkey answers (as kubelet
    // restarts a pod), stores objects in it through its ACL user.
    let Some((server, cli)) = valkey_binaries() else {
        return;
    };
    use base64::Engine as _;
    let Some(env) = control_plane() else { return };
    let k = env.kubectl();
    let objs = render("default");
    env.install_crds();
    k.ok(
        &["apply", "-f", "-"],
        Some(&find(&objs, "Namespace", NS).to_string()),
    );
    k.ok(
        &[
            "apply",
            "-f",
            &repo()
                .join("config/rbac/apiserver.yaml")
                .display()
                .to_string(),
        ],
        None,
    );
    let sa = env.service_account_identity(NS, "substrate-apiserver");
    let kc = sa.kubeconfig.display().to_string();

    // The pod's flags, with what differs outside a pod: the ServiceAccount's kubeconfig in
    // place of the in-cluster configuration, loopback, and the ACL user in the URL (TODO:
    // --valkey-username once it lands).
    let dir = tempfile::tempdir().expect("tempdir");
    let valkey_port = free_port();
    let pod = args(container(
        find(&objs, "Deployment", "substrate-apiserver"),
        "apiserver",
    ))
    .into_iter()
    .filter(|a| {
        !a.starts_with("--bind=")
            && !a.starts_with("--valkey-url=")
            && !a.starts_with("--valkey-username=")
    })
    .map(String::from);
    let argv: Vec<String> = [
        "substrate-apiserver".to_string(),
        "--bind=127.0.0.1:0".into(),
        format!("--valkey-url=redis://substrate-apiserver@127.0.0.1:{valkey_port}"),
        format!("--pki-dir={}", dir.path().join("pki").display()),
        format!("--kubeconfig={kc}"),
        format!("--authentication-kubeconfig={kc}"),
        format!("--authorization-kubeconfig={kc}"),
    ]
    .into_iter()
    .chain(pod)
    .collect();
    use clap::Parser as _;
    let apiserver_args = apiserver::config::Args::try_parse_from(&argv).expect("the pod's flags");
    let rt = tokio::runtime::Runtime::new().expect("runtime");

    // First start: Valkey is not there yet (its pod waits for the password Secret).
    let err = rt
        .block_on(apiserver::start(&apiserver_args))
        .err()
        .expect("no Valkey yet");
    assert!(
        err.to_string().contains("connecting to Valkey"),
        "the first start gets as far as Valkey: {err}"
    );
    let secret = |name: &str, key: &str| {
        let s = k.get("secret", name, Some(NS));
        let b = s["data"][key]
            .as_str()
            .unwrap_or_else(|| panic!("{name} has no {key}: {s}"));
        String::from_utf8(
            base64::engine::general_purpose::STANDARD
                .decode(b)
                .expect("base64"),
        )
        .expect("UTF-8")
    };
    let password = secret("substrate-valkey-auth", "password");
    assert!(!password.is_empty(), "{err}");
    let ca = secret("substrate-apiserver-pki", "ca.crt");
    let cm = k.get("configmap", "substrate-apiserver-ca", Some(NS));
    assert_eq!(cm["data"]["ca.crt"], ca.as_str());

    // Valkey's pod starts with the Secret mounted.
    let secret_dir = tempfile::tempdir().expect("tempdir");
    let password_file = secret_dir.path().join("password");
    std::fs::write(&password_file, &password).expect("password file");
    let valkey = ValkeyPod::start(&objs, &server, &cli, &password_file, valkey_port);

    // Restarted until it starts (the first try after Valkey is up should).
    let running = e2e::eventually("the apiserver starts once Valkey answers", || {
        rt.block_on(apiserver::start(&apiserver_args)).ok()
    });
    assert_eq!(
        secret("substrate-valkey-auth", "password"),
        password,
        "the restart kept the Secret"
    );
    assert_eq!(secret("substrate-apiserver-pki", "ca.crt"), ca);

    // Registered without a caBundle (as config/ ships the APIService), it fills it in, and
    // kube-apiserver reaches it through the aggregator.
    env.register_substrate_with(running.addr, None);
    let bundle = base64::engine::general_purpose::STANDARD.encode(&ca);
    eventually("the apiserver fills in the APIService's caBundle", || {
        let a = k.get("apiservice", "v1alpha1.substrate.ate.dev", None);
        (a["spec"]["caBundle"] == bundle.as_str()).then_some(())
    });
    eventually("kube-apiserver verifies the aggregated server", || {
        let (code, _) =
            env.admin
                .request("GET", "/apis/substrate.ate.dev/v1alpha1/atespaces", None);
        (code == 200).then_some(())
    });
    let (code, body) = env.admin.request(
        "POST",
        "/apis/substrate.ate.dev/v1alpha1/atespaces",
        Some(
            &json!({"apiVersion": "substrate.ate.dev/v1alpha1", "kind": "Atespace",
                     "metadata": {"name": "team-a"}, "spec": {}}),
        ),
    );
    assert_eq!(code, 201, "{body}");
    let (code, body) = env.admin.request(
        "GET",
        "/apis/substrate.ate.dev/v1alpha1/atespaces/team-a",
        None,
    );
    assert_eq!(
        (code, body["metadata"]["name"].as_str()),
        (200, Some("team-a")),
        "{body}"
    );
    // Stored in Valkey, through the ACL user.
    let keys = valkey.run(
        Some(("substrate-apiserver", password.as_str())),
        &["DBSIZE"],
    );
    assert!(keys.parse::<u64>().is_ok_and(|n| n > 0), "{keys}");

    rt.block_on(running.stop());
}

/// kubeadm's Corefile (v1.25), as `kubeadm init` writes it into kube-system/coredns.
const KUBEADM_COREFILE: &str = ".:53 {
    errors
    health {
       lameduck 5s
    }
    ready
    kubernetes cluster.local in-addr.arpa ip6.arpa {
       pods insecure
       fallthrough in-addr.arpa ip6.arpa
       ttl 30
    }
    prometheus :9153
    forward . /etc/resolv.conf {
       max_concurrent 1000
    }
    cache 30
    loop
    reload
    loadbalance
}
";

fn stub_block(ip: &str) -> String {
    format!(
        "\n# BEGIN substrate: actors.resources.substrate.ate.dev -> Service substrate-system/substrate-dns (written by hack/coredns-stub.sh)
actors.resources.substrate.ate.dev:53 {{
    errors
    cache 5
    forward . {ip}
}}
# END substrate
"
    )
}

#[test]
fn the_coredns_step_forwards_the_actor_zone_to_the_dns_service() {
    let Some(env) = control_plane() else { return };
    let k = env.kubectl();
    let script = repo().join("hack/coredns-stub.sh");
    let stub = |args: &[&str]| {
        let out = Command::new(&script)
            .args(args)
            .env("KUBECONFIG", &k.kubeconfig)
            .env("HOME", &k.home)
            .env("KUBECTL", kubectl_bin())
            .output()
            .expect("hack/coredns-stub.sh");
        (
            out.status.success(),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    };
    let corefile = || {
        let cm = k.get("configmap", "coredns", Some("kube-system"));
        (
            cm["data"]["Corefile"]
                .as_str()
                .expect("Corefile")
                .to_string(),
            cm["metadata"]["resourceVersion"].clone(),
        )
    };

    // No CoreDNS ConfigMap (another DNS): a clear failure.
    let (ok, _, err) = stub(&[]);
    assert!(!ok && err.contains("kube-system/coredns"), "{err}");

    // As kubeadm made it, with another key beside the Corefile.
    k.ok(
        &["apply", "-f", "-"],
        Some(
            &json!({
                "apiVersion": "v1", "kind": "ConfigMap",
                "metadata": {"name": "coredns", "namespace": "kube-system"},
                "data": {"Corefile": KUBEADM_COREFILE, "other": "kept"},
            })
            .to_string(),
        ),
    );

    // Before Substrate is installed: the Service is missing.
    let (ok, _, err) = stub(&[]);
    assert!(
        !ok && err.contains("substrate-system/substrate-dns"),
        "{err}"
    );
    assert_eq!(corefile().0, KUBEADM_COREFILE, "unchanged after a failure");

    // The Service as config/default renders it.
    env.ensure_namespace(NS);
    let objs = render("default");
    let dns = find(&objs, "Service", "substrate-dns").clone();
    k.ok(&["apply", "-f", "-"], Some(&dns.to_string()));
    let ip = k.get("service", "substrate-dns", Some(NS))["spec"]["clusterIP"]
        .as_str()
        .expect("clusterIP")
        .to_string();

    let (ok, out, err) = stub(&[]);
    assert!(ok, "{out}{err}");
    assert!(out.contains(&ip), "{out}");
    let (text, rv) = corefile();
    assert_eq!(text, format!("{KUBEADM_COREFILE}{}", stub_block(&ip)));
    assert!(!err.contains("reload"), "kubeadm's Corefile reloads: {err}");
    let cm = k.get("configmap", "coredns", Some("kube-system"));
    assert_eq!(cm["data"]["other"], "kept");

    // Again: nothing to do, nothing written.
    let (ok, out, _) = stub(&[]);
    assert!(ok && out.contains("unchanged"), "{out}");
    assert_eq!(corefile().1, rv);

    // The Service re-created with another address: the block follows it, still one block.
    k.ok(&["delete", "service", "substrate-dns", "-n", NS], None);
    let other = if ip == "127.74.0.99" {
        "127.74.0.98"
    } else {
        "127.74.0.99"
    };
    let mut dns2 = dns.clone();
    dns2["spec"]["clusterIP"] = json!(other);
    k.ok(&["apply", "-f", "-"], Some(&dns2.to_string()));
    let (ok, out, err) = stub(&[]);
    assert!(ok, "{out}{err}");
    assert_eq!(
        corefile().0,
        format!("{KUBEADM_COREFILE}{}", stub_block(other))
    );

    // --restart restarts CoreDNS's Deployment (kubectl rollout restart).
    k.ok(&["apply", "-f", "-"], Some(&json!({
        "apiVersion": "apps/v1", "kind": "Deployment",
        "metadata": {"name": "coredns", "namespace": "kube-system"},
        "spec": {
            "selector": {"matchLabels": {"k8s-app": "kube-dns"}},
            "template": {
                "metadata": {"labels": {"k8s-app": "kube-dns"}},
                "spec": {"containers": [{"name": "coredns", "image": "registry.k8s.io/coredns/coredns:v1.9.3"}]},
            },
        },
    }).to_string()));
    let (ok, out, err) = stub(&["--restart"]);
    assert!(ok, "{out}{err}");
    let d = k.get("deployment", "coredns", Some("kube-system"));
    assert!(
        d["spec"]["template"]["metadata"]["annotations"]["kubectl.kubernetes.io/restartedAt"]
            .is_string(),
        "{d}"
    );

    // --remove gives kubeadm's Corefile back, byte for byte.
    let (ok, out, err) = stub(&["--remove"]);
    assert!(ok, "{out}{err}");
    assert_eq!(corefile().0, KUBEADM_COREFILE);
    let (ok, out, _) = stub(&["--remove"]);
    assert!(ok && out.contains("unchanged"), "{out}");

    // A Corefile without `reload`: the step says CoreDNS needs a restart.
    let no_reload = KUBEADM_COREFILE.replace("    reload\n", "");
    k.ok(
        &[
            "patch",
            "configmap",
            "coredns",
            "-n",
            "kube-system",
            "--type=merge",
            "-p",
            &json!({"data": {"Corefile": no_reload}}).to_string(),
        ],
        None,
    );
    let (ok, _, err) = stub(&[]);
    assert!(ok && err.contains("no 'reload' plugin"), "{err}");
}

#[test]
fn every_flag_the_manifests_give_exists_in_its_binary() {
    // Each container's command and args, with `--help` last: clap rejects an unknown flag
    // before it gets to the help.
    let objs = render("default");
    let mut overlays = render("overlays/cert-manager");
    overlays.extend(render("overlays/s3"));
    let mut seen = BTreeMap::new();
    for o in objs.iter().chain(&overlays) {
        if !WORKLOADS.contains(&o["kind"].as_str().unwrap_or_default()) {
            continue;
        }
        for c in pod_spec(o)["containers"].as_array().into_iter().flatten() {
            if c["image"] != IMAGE {
                continue;
            }
            let mut argv: Vec<String> = strings(&c["command"])
                .into_iter()
                .chain(args(c))
                .map(|a| {
                    a.replace("$(NODE_NAME)", "node-1")
                        .replace("$(SUBSTRATE_SNAPSHOT_URL)", "file:///tmp/snapshots")
                        .replace("$(SUBSTRATE_ROUTER_SERVICE_HOST)", "127.0.0.1")
                        .replace("$(HOST_IP)", "192.0.2.1")
                })
                .collect();
            argv.push("--help".into());
            seen.insert(argv.join(" "), argv);
        }
    }
    let failed: Vec<String> = seen
        .values()
        .filter_map(|argv| {
            let bin = e2e::workspace_bin(&argv[0]);
            // substrate-supervise finds substrate-nodeagent on PATH, as in the image.
            let path = std::env::join_paths(std::iter::once(e2e::bin_dir()).chain(
                std::env::split_paths(&std::env::var_os("PATH").unwrap_or_default()),
            ))
            .expect("PATH");
            let out = Command::new(bin)
                .args(&argv[1..])
                .env("PATH", path)
                .output()
                .expect("binary");
            (!out.status.success())
                .then(|| format!("{argv:?}:\n{}", String::from_utf8_lossy(&out.stderr)))
        })
        .collect();
    assert!(failed.is_empty(), "{}", failed.join("\n"));
}
