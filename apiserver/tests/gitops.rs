//! What GitOps controllers do to the apiserver, replayed with the real `kubectl` and raw HTTP
//! over a kustomization (`kubectl apply -k`) of atespaces and actors: a first sync, a no-op
//! sync, a change, and a prune.
//!
//! - Flux's kustomize-controller, per object: a dry-run server-side apply with `force`
//!   (`fieldManager=kustomize-controller`), a comparison of the dry-run result with the live
//!   object (created / configured / unchanged), the real apply of what changed, then a wait
//!   until every object is `Current` by kstatus rules; objects that left the inventory are
//!   deleted (garbage collection) and waited for.
//! - Argo CD's cluster cache: discovery of the group, a list and a watch of every resource
//!   it finds, then a client-side `kubectl apply` preceded by a client dry-run; prune with
//!   `kubectl apply --prune`. The watches must see every change. (The cache first reads
//!   `/openapi/v2` as protobuf through client-go's `OpenAPISchema()`; `openapi.rs` tests that.)
//! - Argo CD's health script (`config/argocd/health.lua`) against objects in every state,
//!   when a Lua interpreter is installed.

mod support;

use std::collections::BTreeMap;
use std::path::Path;

use serde_json::{Value, json};
use support::{World, assert_contains, eventually};

const PART_OF: &str = "app.kubernetes.io/part-of=demo";

/// Writes a kustomization of `atespaces` and `actors` (`(atespace, name, activation)`).
fn kustomization(
    w: &World,
    dir: &str,
    atespaces: &[&str],
    actors: &[(&str, &str, &str)],
) -> String {
    let root = w.dir.path().join(dir);
    std::fs::create_dir_all(&root).expect("kustomization dir");
    let mut a = String::new();
    for ns in atespaces {
        a.push_str(&format!(
            "---\napiVersion: substrate.ate.dev/v1alpha1\nkind: Atespace\nmetadata:\n  name: {ns}\nspec:\n  displayName: {ns}\n"
        ));
    }
    let mut b = String::new();
    for (ns, name, activation) in actors {
        b.push_str(&format!(
            "---\napiVersion: substrate.ate.dev/v1alpha1\nkind: Actor\nmetadata:\n  name: {name}\n  namespace: {ns}\nspec:\n  template:\n    name: counter\n  activation: {activation}\n"
        ));
    }
    std::fs::write(root.join("atespaces.yaml"), a).expect("write");
    std::fs::write(root.join("actors.yaml"), b).expect("write");
    std::fs::write(
        root.join("kustomization.yaml"),
        "apiVersion: kustomize.config.k8s.io/v1beta1\nkind: Kustomization\nsortOptions:\n  order: fifo\nresources:\n- atespaces.yaml\n- actors.yaml\nlabels:\n- pairs:\n    app.kubernetes.io/part-of: demo\n  includeSelectors: true\n",
    )
    .expect("write");
    root.to_str().expect("utf-8").to_string()
}

/// The rendered objects of a kustomization (`kubectl kustomize`).
fn render(w: &World, dir: &str) -> Vec<Value> {
    let out = w.ok(&["kustomize", dir]);
    serde_saphyr::from_multiple::<Value>(&out).expect("kustomize output is YAML")
}

fn api_path(obj: &Value) -> String {
    let kind = obj["kind"].as_str().unwrap_or("");
    let name = obj["metadata"]["name"].as_str().unwrap_or("");
    match kind {
        "Atespace" => format!("/apis/substrate.ate.dev/v1alpha1/atespaces/{name}"),
        _ => format!(
            "/apis/substrate.ate.dev/v1alpha1/namespaces/{}/actors/{name}",
            obj["metadata"]["namespace"].as_str().unwrap_or("")
        ),
    }
}

/// kstatus' generic rules for an object.
#[derive(Debug, PartialEq, Eq)]
enum KStatus {
    Current,
    InProgress(String),
    Failed(String),
    Terminating,
}

fn kstatus(obj: &Value) -> KStatus {
    if obj["metadata"].get("deletionTimestamp").is_some() {
        return KStatus::Terminating;
    }
    let generation = obj["metadata"]["generation"].as_i64();
    if let (Some(g), Some(o)) = (generation, obj["status"]["observedGeneration"].as_i64())
        && o < g
    {
        return KStatus::InProgress(format!("observedGeneration {o} < generation {g}"));
    }
    let conds = obj["status"]["conditions"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    let cond = |t: &str| conds.iter().find(|c| c["type"] == t).cloned();
    if let Some(c) = cond("Stalled").filter(|c| c["status"] == "True") {
        return KStatus::Failed(c["message"].to_string());
    }
    if let Some(c) = cond("Reconciling").filter(|c| c["status"] == "True") {
        return KStatus::InProgress(c["message"].to_string());
    }
    // cli-utils' generic rules stop here: `Ready` is not looked at (a suspended `OnDemand`
    // actor, `Ready=False/Suspended`, is at rest: Current).
    KStatus::Current
}

/// The operator's part, played here (the apiserver tests run no operator; the real one is
/// `operator/tests/policy.rs`, `a_created_actor_is_in_progress_until_the_operator_settles_it`):
/// an actor it has not acted on yet gets `observedGeneration` = `generation`,
/// `Ready=False/Suspended` and `Reconciling=False`, as the operator settles a suspended actor
/// whose template exists. Returns whether it wrote.
fn operator_settles(w: &World, path: &str) -> bool {
    let r = w.http("GET", path, None);
    if r.code != 200 {
        return false;
    }
    let mut a = r.json();
    let generation = a["metadata"]["generation"].clone();
    let reconciling = a["status"]["conditions"].as_array().is_some_and(|cs| {
        cs.iter()
            .any(|c| c["type"] == "Reconciling" && c["status"] == "True")
    });
    if !reconciling && a["status"]["observedGeneration"] == generation {
        return false;
    }
    a["status"]["observedGeneration"] = generation;
    a["status"]["conditions"] = json!([
        {"type": "Ready", "status": "False", "reason": "Suspended", "message": "suspended; resumes on demand",
         "lastTransitionTime": "2026-01-01T00:00:00Z"},
        {"type": "Reconciling", "status": "False", "reason": "Suspended", "message": "suspended; resumes on demand",
         "lastTransitionTime": "2026-01-01T00:00:00Z"},
    ]);
    let body = a.to_string();
    let r = w.http(
        "PUT",
        &format!("{path}/status"),
        Some(("application/json", body.as_bytes())),
    );
    assert_eq!(r.code, 200, "{}", r.body);
    true
}

/// One sync of Flux's kustomize-controller; returns the action per object (`Kind/name`).
fn flux_sync(
    w: &World,
    objects: &[Value],
    inventory: &mut Vec<String>,
) -> BTreeMap<String, String> {
    let mut actions = BTreeMap::new();
    let mut ids = Vec::new();
    // Stage one is namespaces (here: atespaces), applied before everything else.
    let mut objects: Vec<&Value> = objects.iter().collect();
    objects.sort_by_key(|o| o["kind"] != "Atespace");
    for obj in objects {
        let path = api_path(obj);
        let id = format!(
            "{}/{}",
            obj["kind"].as_str().unwrap_or(""),
            obj["metadata"]["name"].as_str().unwrap_or("")
        );
        ids.push((id.clone(), path.clone()));
        let body = obj.to_string();
        let dry = w.http(
            "PATCH",
            &format!("{path}?fieldManager=kustomize-controller&force=true&dryRun=All"),
            Some(("application/apply-patch+yaml", body.as_bytes())),
        );
        assert!(
            dry.code == 200 || dry.code == 201,
            "dry-run apply of {id}: {}",
            dry.body
        );
        let live = w.http("GET", &path, None);
        let action = if live.code == 404 {
            "created"
        } else {
            let strip = |v: &Value| {
                let mut v = v.clone();
                if let Some(m) = v["metadata"].as_object_mut() {
                    m.remove("managedFields");
                    m.remove("resourceVersion");
                }
                v
            };
            if strip(&dry.json()) == strip(&live.json()) {
                "unchanged"
            } else {
                "configured"
            }
        };
        if action != "unchanged" {
            let r = w.http(
                "PATCH",
                &format!("{path}?fieldManager=kustomize-controller&force=true"),
                Some(("application/apply-patch+yaml", body.as_bytes())),
            );
            assert!(r.code == 200 || r.code == 201, "apply of {id}: {}", r.body);
        }
        actions.insert(id, action.to_string());
    }
    // Garbage collection: what left the inventory is deleted and waited for.
    let new_inventory: Vec<String> = ids.iter().map(|(_, p)| p.clone()).collect();
    for gone in inventory.iter().filter(|p| !new_inventory.contains(p)) {
        let r = w.http("DELETE", gone, None);
        assert!(r.code == 200 || r.code == 404, "{}", r.body);
        eventually(&format!("{gone} deleted"), || {
            (w.http("GET", gone, None).code == 404).then_some(())
        });
        actions.insert(gone.clone(), "deleted".into());
    }
    *inventory = new_inventory;
    // Health: every object Current by kstatus rules. An actor is not before the operator
    // has acted on it (the apiserver says `Reconciling=True` on create, or its
    // `observedGeneration` is behind after a change): a health check cannot pass on an
    // object no controller has seen.
    for (id, path) in &ids {
        if id.starts_with("Actor/") && actions[id] != "unchanged" {
            let r = w.http("GET", path, None);
            assert!(
                matches!(kstatus(&r.json()), KStatus::InProgress(_)),
                "{id} {} before the operator acted: {}",
                actions[id],
                r.body
            );
            assert!(operator_settles(w, path), "{id}");
        }
        eventually(&format!("{id} Current"), || {
            let r = w.http("GET", path, None);
            (r.code == 200 && kstatus(&r.json()) == KStatus::Current).then_some(())
        });
    }
    actions
}

#[test]
fn flux_kustomize_controller_sync_change_and_prune() {
    let Some(w) = support::world() else { return };
    let dir = kustomization(
        &w,
        "k1",
        &["flux-a", "flux-b"],
        &[
            ("flux-a", "one", "OnDemand"),
            ("flux-a", "two", "OnDemand"),
            ("flux-b", "three", "Always"),
        ],
    );
    let objects = render(&w, &dir);
    assert_eq!(objects.len(), 5);
    let mut inventory = Vec::new();
    let actions = flux_sync(&w, &objects, &mut inventory);
    assert!(actions.values().all(|a| a == "created"), "{actions:?}");
    let obj = w.get_json("actor", "one", "flux-a").unwrap();
    assert_eq!(
        obj["metadata"]["labels"]["app.kubernetes.io/part-of"],
        "demo"
    );

    // A second sync of the same revision changes nothing, not even a resourceVersion.
    let (rv_a, rv_x) = (w.atespaces_rv(), w.actors_rv());
    let actions = flux_sync(&w, &objects, &mut inventory);
    assert!(actions.values().all(|a| a == "unchanged"), "{actions:?}");
    assert_eq!((w.atespaces_rv(), w.actors_rv()), (rv_a, rv_x));

    // A change: one actor's activation and one atespace's display name.
    let dir = kustomization(
        &w,
        "k1",
        &["flux-a", "flux-b"],
        &[
            ("flux-a", "one", "Always"),
            ("flux-a", "two", "OnDemand"),
            ("flux-b", "three", "Always"),
        ],
    );
    std::fs::write(
        Path::new(&dir).join("atespaces.yaml"),
        "---\napiVersion: substrate.ate.dev/v1alpha1\nkind: Atespace\nmetadata:\n  name: flux-a\nspec:\n  displayName: Flux A\n---\napiVersion: substrate.ate.dev/v1alpha1\nkind: Atespace\nmetadata:\n  name: flux-b\nspec:\n  displayName: flux-b\n",
    )
    .unwrap();
    let actions = flux_sync(&w, &render(&w, &dir), &mut inventory);
    assert_eq!(actions["Actor/one"], "configured");
    assert_eq!(actions["Atespace/flux-a"], "configured");
    assert_eq!(actions["Actor/two"], "unchanged");
    assert_eq!(actions["Atespace/flux-b"], "unchanged");
    let a = w.get_json("atespace", "flux-a", "").unwrap();
    assert_eq!(a["metadata"]["generation"], 2);
    assert_eq!(
        a["status"]["observedGeneration"], 2,
        "kstatus waited for it"
    );
    assert_eq!(
        w.jsonpath("actor", "one", "flux-a", "{.spec.activation}"),
        "Always"
    );
    // `kubectl wait` agrees with kstatus.
    w.ok(&[
        "wait",
        "--for=condition=Ready",
        "atespace/flux-a",
        "--timeout=20s",
    ]);

    // Prune: actor two and atespace flux-b (with its actor three) leave the kustomization.
    let dir = kustomization(&w, "k1", &["flux-a"], &[("flux-a", "one", "Always")]);
    let actions = flux_sync(&w, &render(&w, &dir), &mut inventory);
    assert_eq!(
        actions.values().filter(|a| *a == "deleted").count(),
        3,
        "{actions:?}"
    );
    assert!(w.get_json("actor", "two", "flux-a").is_none());
    assert!(w.get_json("atespace", "flux-b", "").is_none());
    assert_eq!(w.names("actors", ""), ["one"]);
    let full: Value = serde_json::from_str(&w.ok(&[
        "get",
        "actor",
        "one",
        "-n",
        "flux-a",
        "-o",
        "json",
        "--show-managed-fields",
    ]))
    .unwrap();
    // kustomize-controller is the only manager of what it applied; the status is the
    // operator's (played here by `curl`).
    let managers = |status: bool| -> Vec<&str> {
        full["metadata"]["managedFields"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|e| (e["subresource"] == "status") == status)
            .filter_map(|e| e["manager"].as_str())
            .collect()
    };
    assert_eq!(managers(false), ["kustomize-controller"]);
    assert_eq!(managers(true), ["curl"]);
}

#[test]
fn argo_cd_cluster_cache_client_side_sync_change_and_prune() {
    let Some(w) = support::world() else { return };
    // Discovery: every listable, watchable resource of the group, then a watch of each.
    let found = w.ok(&[
        "api-resources",
        "--api-group=substrate.ate.dev",
        "--verbs=list,watch",
        "-o",
        "name",
    ]);
    let mut resources: Vec<&str> = found.lines().collect();
    resources.sort();
    assert_eq!(
        resources,
        [
            "actors.substrate.ate.dev",
            "atespaces.substrate.ate.dev",
            "workers.substrate.ate.dev"
        ]
    );
    // With --output-watch-events the columns read the event (`type`, `object`).
    let cols = "-o=custom-columns=EVENT:.type,NS:.object.metadata.namespace,NAME:.object.metadata.name,ACT:.object.spec.activation";
    let watches: Vec<_> = resources
        .iter()
        .map(|r| {
            w.ok(&["get", r, "-A", "-o", "name"]);
            w.spawn(&["get", r, "-A", "-w", "--output-watch-events", cols])
        })
        .collect();
    let mut iter = watches.into_iter();
    let mut actors_w = iter.next().expect("actors watch");
    let mut ates_w = iter.next().expect("atespaces watch");
    let _workers_w = iter.next().expect("workers watch");
    ates_w.expect_line("the default atespace", |l| l.contains("default"));

    let dir = kustomization(
        &w,
        "argo",
        &["argo-a"],
        &[("argo-a", "one", "OnDemand"), ("argo-a", "two", "OnDemand")],
    );
    // Argo CD runs a client dry-run first, then applies client-side.
    let out = w.ok(&["apply", "-k", &dir, "--dry-run=client"]);
    assert_contains(&out, "actor.substrate.ate.dev/one created (dry run)");
    assert!(w.get_json("atespace", "argo-a", "").is_none());
    let out = w.ok(&["apply", "-k", &dir]);
    assert_contains(&out, "atespace.substrate.ate.dev/argo-a created");
    assert_contains(&out, "actor.substrate.ate.dev/two created");
    ates_w.expect_line("ADDED argo-a", |l| {
        l.starts_with("ADDED") && l.contains("argo-a")
    });
    actors_w.expect_line("ADDED one", |l| {
        l.starts_with("ADDED") && l.contains(" one ")
    });
    actors_w.expect_line("ADDED two", |l| {
        l.starts_with("ADDED") && l.contains(" two ")
    });
    let obj = w.get_json("actor", "one", "argo-a").unwrap();
    assert_contains(
        &obj["metadata"]["annotations"].to_string(),
        "last-applied-configuration",
    );

    // A change, previewed with a dry-run, then applied: the watch sees it.
    let dir = kustomization(
        &w,
        "argo",
        &["argo-a"],
        &[
            ("argo-a", "one", "Suspended"),
            ("argo-a", "two", "OnDemand"),
        ],
    );
    let out = w.ok(&["apply", "-k", &dir, "--dry-run=client"]);
    assert_contains(&out, "actor.substrate.ate.dev/one configured (dry run)");
    let out = w.ok(&["apply", "-k", &dir]);
    assert_contains(&out, "actor.substrate.ate.dev/one configured");
    assert_contains(&out, "actor.substrate.ate.dev/two unchanged");
    actors_w.expect_line("MODIFIED one Suspended", |l| {
        l.starts_with("MODIFIED") && l.contains(" one ") && l.contains("Suspended")
    });

    // Prune: two leaves the kustomization.
    let dir = kustomization(&w, "argo", &["argo-a"], &[("argo-a", "one", "Suspended")]);
    let out = w.ok(&[
        "apply",
        "-k",
        &dir,
        "--prune",
        "-l",
        PART_OF,
        "--prune-allowlist=substrate.ate.dev/v1alpha1/Actor",
        "--prune-allowlist=substrate.ate.dev/v1alpha1/Atespace",
    ]);
    assert_contains(&out, "actor.substrate.ate.dev/two pruned");
    actors_w.expect_line("DELETED two", |l| {
        l.starts_with("DELETED") && l.contains(" two ")
    });
    assert_eq!(w.names("actors", "argo-a"), ["one"]);
}

/// Renders a JSON value as a Lua table constructor.
fn lua(v: &Value) -> String {
    match v {
        Value::Null => "nil".into(),
        Value::Bool(b) => b.to_string(),
        Value::Number(n) => n.to_string(),
        Value::String(s) => format!("{s:?}"),
        Value::Array(a) => format!("{{{}}}", a.iter().map(lua).collect::<Vec<_>>().join(", ")),
        Value::Object(m) => format!(
            "{{{}}}",
            m.iter()
                .map(|(k, v)| format!("[{k:?}] = {}", lua(v)))
                .collect::<Vec<_>>()
                .join(", ")
        ),
    }
}

#[test]
fn a_created_actor_says_it_waits_for_the_operator() {
    let Some(w) = support::world() else { return };
    w.apply_stdin(
        "apiVersion: substrate.ate.dev/v1alpha1\nkind: Atespace\nmetadata:\n  name: init\nspec: {}\n",
        &[],
    );
    w.apply_stdin(
        "apiVersion: ate.dev/v1alpha1\nkind: ActorTemplate\nmetadata:\n  name: t\n  namespace: init\nspec:\n  containers:\n  - name: c\n    image: 127.0.0.1:5000/x:1\n  workerPoolRef:\n    name: p\n",
        &[],
    );
    let path = "/apis/substrate.ate.dev/v1alpha1/namespaces/init/actors";
    let cond = |a: &Value, t: &str| -> (String, String) {
        let c = a["status"]["conditions"]
            .as_array()
            .and_then(|cs| cs.iter().find(|c| c["type"] == t).cloned())
            .unwrap_or_else(|| panic!("no {t} condition: {a}"));
        (
            c["status"].as_str().unwrap().into(),
            c["reason"].as_str().unwrap().into(),
        )
    };
    // A status in the create body is not taken: the apiserver writes the initial one.
    let body = json!({"apiVersion": "substrate.ate.dev/v1alpha1", "kind": "Actor",
        "metadata": {"name": "a"}, "spec": {"template": {"name": "t"}},
        "status": {"phase": "Running", "observedGeneration": 1,
            "conditions": [{"type": "Ready", "status": "True", "reason": "Running", "message": "",
                "lastTransitionTime": "2026-01-01T00:00:00Z"}]}})
    .to_string();
    let r = w.http("POST", path, Some(("application/json", body.as_bytes())));
    assert_eq!(r.code, 201, "{}", r.body);
    for a in [r.json(), w.http("GET", &format!("{path}/a"), None).json()] {
        assert_eq!(a["status"]["phase"], "Suspended");
        assert!(a["status"].get("observedGeneration").is_none(), "{a}");
        assert_eq!(cond(&a, "Ready"), ("False".into(), "Suspended".into()));
        assert_eq!(cond(&a, "Reconciling"), ("True".into(), "Created".into()));
        assert!(matches!(kstatus(&a), KStatus::InProgress(_)), "{a}");
    }
    // `kubectl wait` can tell: the operator sets Reconciling=False when it has acted.
    let out = w.kubectl(&[
        "wait",
        "--for=condition=Reconciling=False",
        "actor/a",
        "-n",
        "init",
        "--timeout=1s",
    ]);
    assert!(!out.success(), "{out}");
    // A missing template is no reason to refuse (GitOps applies in any order); it is said.
    let body = json!({"apiVersion": "substrate.ate.dev/v1alpha1", "kind": "Actor",
        "metadata": {"name": "b"}, "spec": {"template": {"name": "later"}}})
    .to_string();
    let r = w.http("POST", path, Some(("application/json", body.as_bytes())));
    assert_eq!(r.code, 201, "{}", r.body);
    let b = r.json();
    assert_eq!(
        cond(&b, "Ready"),
        ("False".into(), "TemplateNotFound".into())
    );
    assert_eq!(
        cond(&b, "Reconciling"),
        ("True".into(), "TemplateNotFound".into())
    );
    assert_contains(
        b["status"]["conditions"][0]["message"].as_str().unwrap(),
        "init/later",
    );
    // Server-side apply creates the same, and owns no status field.
    w.apply_stdin(
        "apiVersion: substrate.ate.dev/v1alpha1\nkind: Actor\nmetadata:\n  name: c\n  namespace: init\nspec:\n  template:\n    name: t\n",
        &["--server-side"],
    );
    let c = w.http("GET", &format!("{path}/c"), None).json();
    assert_eq!(cond(&c, "Reconciling"), ("True".into(), "Created".into()));
    let fields = c["metadata"]["managedFields"].to_string();
    assert!(!fields.contains("f:status"), "{fields}");
}

#[test]
fn argo_cd_health_script() {
    let Some(bin) = ["lua5.4", "lua5.3", "lua"].into_iter().find(|b| {
        std::process::Command::new(b)
            .arg("-v")
            .output()
            .is_ok_and(|o| o.status.success())
    }) else {
        // hack/test.sh installs lua5.4 and sets SUBSTRATE_LUA: then a missing one fails.
        assert!(
            std::env::var_os("SUBSTRATE_LUA").is_none(),
            "SUBSTRATE_LUA is set but no Lua interpreter runs"
        );
        eprintln!("skipping: no Lua interpreter (apt-get install lua5.4)");
        return;
    };
    let script = std::fs::read_to_string(
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../config/argocd/health.lua"),
    )
    .expect("config/argocd/health.lua");
    let health = |obj: Value| -> (String, String) {
        let program = format!(
            "local obj = {}\nlocal function check()\n{script}\nend\nlocal hs = check()\nprint(hs.status .. \"|\" .. hs.message)\n",
            lua(&obj)
        );
        let out = std::process::Command::new(bin)
            .args(["-e", &program])
            .output()
            .expect("lua");
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let s = String::from_utf8_lossy(&out.stdout).trim().to_string();
        let (a, b) = s.split_once('|').unwrap_or((&s, ""));
        (a.to_string(), b.to_string())
    };
    let ready = |s: &str| json!([{"type": "Ready", "status": s, "message": "m"}]);
    let actor = |activation: &str, status: Value| json!({"kind": "Actor", "metadata": {"generation": 1}, "spec": {"activation": activation}, "status": status});
    assert_eq!(
        health(actor("OnDemand", json!({"phase": "Suspended"}))).0,
        "Healthy"
    );
    assert_eq!(
        health(actor("Suspended", json!({"phase": "Suspended"}))).0,
        "Suspended"
    );
    assert_eq!(
        health(actor("Always", json!({"phase": "Suspended"}))).0,
        "Progressing"
    );
    assert_eq!(
        health(actor("Always", json!({"phase": "Resuming"}))).0,
        "Progressing"
    );
    assert_eq!(
        health(actor(
            "Always",
            json!({"phase": "Running", "conditions": ready("True")})
        ))
        .0,
        "Healthy"
    );
    assert_eq!(
        health(actor(
            "Always",
            json!({"phase": "Running", "conditions": ready("False")})
        ))
        .0,
        "Progressing"
    );
    assert_eq!(
        health(actor(
            "Always",
            json!({"phase": "Failed", "conditions": ready("False")})
        )),
        ("Degraded".into(), "m".into())
    );
    assert_eq!(
        health(actor(
            "OnDemand",
            json!({"phase": "Running", "observedGeneration": 0})
        ))
        .0,
        "Progressing"
    );
    assert_eq!(
        health(json!({"kind": "Actor", "metadata": {}})).0,
        "Progressing"
    );
    // Fresh from create (the apiserver's initial status), and waiting for its template.
    let created = |reason: &str| {
        json!({"phase": "Suspended", "conditions": [
        {"type": "Ready", "status": "False", "reason": reason, "message": "m"},
        {"type": "Reconciling", "status": "True", "reason": reason, "message": "waiting"}]})
    };
    assert_eq!(
        health(actor("OnDemand", created("Created"))),
        ("Progressing".into(), "waiting".into())
    );
    assert_eq!(
        health(actor("Suspended", created("TemplateNotFound"))).0,
        "Progressing"
    );
    // Settled by the operator.
    let settled = json!({"phase": "Suspended", "observedGeneration": 1, "conditions": [
        {"type": "Ready", "status": "False", "reason": "Suspended", "message": "m"},
        {"type": "Reconciling", "status": "False", "reason": "Suspended", "message": "m"}]});
    assert_eq!(health(actor("OnDemand", settled.clone())).0, "Healthy");
    assert_eq!(health(actor("Suspended", settled)).0, "Suspended");
    let ates = |phase: &str, st: &str| json!({"kind": "Atespace", "metadata": {"generation": 1}, "status": {"phase": phase, "observedGeneration": 1, "conditions": ready(st)}});
    assert_eq!(health(ates("Active", "True")).0, "Healthy");
    assert_eq!(health(ates("Terminating", "False")).0, "Progressing");
}
