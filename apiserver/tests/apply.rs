//! Server-side apply and managedFields through the real `kubectl` (and raw HTTP where kubectl
//! cannot express the request), against the real apiserver and Valkey.

mod support;

use serde_json::{Value, json};
use support::{World, assert_contains, assert_not_contains, path_str};

const AV: &str = "substrate.ate.dev/v1alpha1";

/// The object with its managedFields (`kubectl get -o json --show-managed-fields`).
fn full(w: &World, kind: &str, name: &str, ns: &str) -> Value {
    let mut args = vec!["get", kind, name, "-o", "json", "--show-managed-fields"];
    if !ns.is_empty() {
        args.extend(["-n", ns]);
    }
    serde_json::from_str(&w.ok(&args)).expect("kubectl -o json")
}

/// The managedFields entry of `manager` with `operation`.
fn entry(obj: &Value, manager: &str, operation: &str) -> Option<Value> {
    obj["metadata"]["managedFields"]
        .as_array()?
        .iter()
        .find(|e| e["manager"] == manager && e["operation"] == operation)
        .cloned()
}

fn managers(obj: &Value) -> Vec<String> {
    obj["metadata"]["managedFields"]
        .as_array()
        .map(|a| {
            a.iter()
                .map(|e| {
                    format!(
                        "{}/{}{}",
                        e["manager"].as_str().unwrap_or(""),
                        e["operation"].as_str().unwrap_or(""),
                        e["subresource"]
                            .as_str()
                            .map(|s| format!("/{s}"))
                            .unwrap_or_default()
                    )
                })
                .collect()
        })
        .unwrap_or_default()
}

const WEB: &str = "\
apiVersion: substrate.ate.dev/v1alpha1
kind: Actor
metadata:
  name: web
  namespace: team-a
  labels:
    app: web
spec:
  template:
    name: counter
  activation: Always
  idleTimeout: 5m
";

#[test]
fn server_side_apply_create_update_noop_conflict_force_and_removal() {
    let Some(w) = support::world() else { return };
    // Create by apply, for a cluster-scoped and a namespaced kind.
    let out = w.apply_stdin(&support::atespace_yaml("team-a"), &["--server-side"]);
    assert_eq!(
        out.trim(),
        "atespace.substrate.ate.dev/team-a serverside-applied"
    );
    let f = w.file("web.yaml", WEB);
    let out = w.ok(&["apply", "--server-side", "-f", path_str(&f)]);
    assert_eq!(out.trim(), "actor.substrate.ate.dev/web serverside-applied");
    let obj = full(&w, "actor", "web", "team-a");
    assert_eq!(managers(&obj), ["kubectl/Apply"]);
    let e = entry(&obj, "kubectl", "Apply").unwrap();
    assert_eq!(e["apiVersion"], AV);
    assert_eq!(e["fieldsType"], "FieldsV1");
    assert_eq!(
        e["fieldsV1"],
        json!({"f:metadata": {"f:labels": {"f:app": {}}},
               "f:spec": {"f:activation": {}, "f:idleTimeout": {}, "f:template": {"f:name": {}}}})
    );
    assert!(e["time"].as_str().is_some_and(|t| t.ends_with('Z')));
    assert_eq!(obj["metadata"]["generation"], 1);
    assert_eq!(obj["status"]["phase"], "Suspended");

    // A second identical apply writes nothing: same resourceVersion, generation, times.
    let rv = w.actors_rv();
    let out = w.ok(&["apply", "--server-side", "-f", path_str(&f)]);
    assert_eq!(out.trim(), "actor.substrate.ate.dev/web serverside-applied");
    assert_eq!(w.actors_rv(), rv, "a no-op apply wrote nothing");
    let again = full(&w, "actor", "web", "team-a");
    assert_eq!(again["metadata"], obj["metadata"]);

    // Another manager takes spec.activation with --force-conflicts ...
    let other = w.file(
        "other.yaml",
        "apiVersion: substrate.ate.dev/v1alpha1\nkind: Actor\nmetadata:\n  name: web\n  namespace: team-a\nspec:\n  activation: Suspended\n",
    );
    let out = w.kubectl(&[
        "apply",
        "--server-side",
        "--field-manager=other-manager",
        "-f",
        path_str(&other),
    ]);
    assert!(!out.success(), "{out}");
    assert_contains(
        &out.stderr,
        "Apply failed with 1 conflict: conflict with \"kubectl\": .spec.activation",
    );
    w.ok(&[
        "apply",
        "--server-side",
        "--field-manager=other-manager",
        "--force-conflicts",
        "-f",
        path_str(&other),
    ]);
    let obj = full(&w, "actor", "web", "team-a");
    assert_eq!(obj["spec"]["activation"], "Suspended");
    assert_eq!(obj["metadata"]["generation"], 2);
    assert_eq!(
        entry(&obj, "other-manager", "Apply").unwrap()["fieldsV1"],
        json!({"f:spec": {"f:activation": {}}})
    );
    assert!(
        entry(&obj, "kubectl", "Apply").unwrap()["fieldsV1"]["f:spec"]
            .get("f:activation")
            .is_none(),
        "kubectl lost the field"
    );
    // ... so kubectl's own apply now conflicts, with the message kubectl prints.
    let rv = w.actors_rv();
    let out = w.kubectl(&["apply", "--server-side", "-f", path_str(&f)]);
    assert!(!out.success(), "{out}");
    assert_contains(
        &out.stderr,
        "Apply failed with 1 conflict: conflict with \"other-manager\": .spec.activation",
    );
    assert_eq!(w.actors_rv(), rv, "a conflicting apply wrote nothing");
    // --force-conflicts takes it back; other-manager owns nothing and disappears.
    w.ok(&[
        "apply",
        "--server-side",
        "--force-conflicts",
        "-f",
        path_str(&f),
    ]);
    let obj = full(&w, "actor", "web", "team-a");
    assert_eq!(obj["spec"]["activation"], "Always");
    assert_eq!(managers(&obj), ["kubectl/Apply"]);

    // Fields kubectl stops applying are removed (idleTimeout, the label); a field another
    // manager still owns stays.
    w.ok(&["label", "actor", "web", "-n", "team-a", "tier=gold"]);
    let obj = full(&w, "actor", "web", "team-a");
    assert_eq!(
        entry(&obj, "kubectl-label", "Update").unwrap()["fieldsV1"],
        json!({"f:metadata": {"f:labels": {"f:tier": {}}}})
    );
    let trimmed = w.file(
        "web2.yaml",
        &WEB.replace("  idleTimeout: 5m\n", "")
            .replace("  labels:\n    app: web\n", ""),
    );
    w.ok(&["apply", "--server-side", "-f", path_str(&trimmed)]);
    let obj = full(&w, "actor", "web", "team-a");
    assert!(obj["spec"].get("idleTimeout").is_none(), "{obj}");
    assert_eq!(obj["metadata"]["labels"], json!({"tier": "gold"}));
    assert_eq!(obj["spec"]["activation"], "Always");

    // Two conflicting fields: the plural message, one cause per field.
    let two = json!({"apiVersion": AV, "kind": "Actor",
        "metadata": {"name": "web", "namespace": "team-a", "labels": {"tier": "silver"}},
        "spec": {"activation": "OnDemand"}});
    let path = "/apis/substrate.ate.dev/v1alpha1/namespaces/team-a/actors/web";
    let r = w.http(
        "PATCH",
        &format!("{path}?fieldManager=third"),
        Some(("application/apply-patch+yaml", two.to_string().as_bytes())),
    );
    assert_eq!(r.code, 409, "{}", r.body);
    let s = r.json();
    assert_eq!(s["reason"], "Conflict");
    assert_eq!(
        s["message"],
        format!(
            "Apply failed with 2 conflicts: conflicts with \"kubectl\":\n- .spec.activation\nconflicts with \"kubectl-label\" using {AV}:\n- .metadata.labels.tier"
        )
    );
    let causes = s["details"]["causes"].as_array().unwrap();
    assert_eq!(causes.len(), 2);
    assert!(causes.iter().all(|c| c["reason"] == "FieldManagerConflict"));

    // fieldManager is required for apply; force only for apply; bad bodies are 400.
    let r = w.http(
        "PATCH",
        path,
        Some(("application/apply-patch+yaml", WEB.as_bytes())),
    );
    assert_eq!(r.code, 422, "{}", r.body);
    assert_eq!(
        r.message(),
        "PatchOptions.meta.k8s.io \"\" is invalid: fieldManager: Required value: is required for apply patch"
    );
    assert_eq!(r.json()["details"]["causes"][0]["field"], "fieldManager");
    let r = w.http(
        "PATCH",
        &format!("{path}?force=true"),
        Some(("application/merge-patch+json", b"{}")),
    );
    assert_eq!(r.code, 422, "{}", r.body);
    assert_contains(
        &r.message(),
        "force: Forbidden: may not be specified for non-apply patch",
    );
    for (body, want) in [
        ("a: [b", "error decoding YAML"),
        (
            "apiVersion: v1\nkind: Actor\nmetadata: {name: web}\n",
            "Incorrect version specified in apply patch. Specified patch version: v1, expected: substrate.ate.dev/v1alpha1",
        ),
        (
            "apiVersion: substrate.ate.dev/v1alpha1\nkind: Actor\nmetadata: {name: other}\n",
            "does not match the name on the URL",
        ),
        (
            "apiVersion: substrate.ate.dev/v1alpha1\nkind: Actor\nmetadata: {name: web, managedFields: [{manager: x}]}\n",
            "metadata.managedFields must be nil",
        ),
    ] {
        let rv = w.actors_rv();
        let r = w.http(
            "PATCH",
            &format!("{path}?fieldManager=x"),
            Some(("application/apply-patch+yaml", body.as_bytes())),
        );
        assert_eq!(r.code, 400, "{body}: {}", r.body);
        assert_contains(&r.message(), want);
        assert_eq!(w.actors_rv(), rv);
    }
    // An immutable field through apply: 422, nothing written.
    let r = w.http(
        "PATCH",
        &format!("{path}?fieldManager=kubectl&force=true"),
        Some((
            "application/apply-patch+yaml",
            WEB.replace("name: counter", "name: other").as_bytes(),
        )),
    );
    assert_eq!(r.code, 422, "{}", r.body);
    assert_contains(&r.message(), "spec.template: Invalid value");
    assert_contains(&r.message(), "field is immutable");
}

#[test]
fn status_apply_and_update_entries() {
    let Some(w) = support::world() else { return };
    w.atespace("team-a");
    w.create(&support::actor_yaml("team-a", "s", ""));
    let obj = full(&w, "actor", "s", "team-a");
    // kubectl create names itself; the whole object is its (Update) entry.
    let e = entry(&obj, "kubectl-create", "Update").unwrap();
    assert_eq!(
        e["fieldsV1"]["f:spec"],
        json!({".": {}, "f:activation": {}, "f:template": {".": {}, "f:name": {}}})
    );
    // Apply on the status subresource (YAML body): an entry with `subresource: status`, the
    // spec untouched and a Ready condition owned by its key.
    let path = "/apis/substrate.ate.dev/v1alpha1/namespaces/team-a/actors/s/status";
    let status = "apiVersion: substrate.ate.dev/v1alpha1\nkind: Actor\nmetadata:\n  name: s\nspec:\n  activation: Always\nstatus:\n  phase: Running\n  conditions:\n  - type: Ready\n    status: \"True\"\n    reason: Resumed\n    message: up\n    lastTransitionTime: \"2026-01-01T00:00:00Z\"\n";
    let r = w.http(
        "PATCH",
        &format!("{path}?fieldManager=agent"),
        Some(("application/apply-patch+yaml", status.as_bytes())),
    );
    assert_eq!(r.code, 200, "{}", r.body);
    let obj = full(&w, "actor", "s", "team-a");
    assert_eq!(obj["status"]["phase"], "Running");
    assert_eq!(
        obj["spec"]["activation"], "OnDemand",
        "status apply ignores spec"
    );
    let e = obj["metadata"]["managedFields"]
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["manager"] == "agent")
        .cloned()
        .unwrap();
    assert_eq!(e["operation"], "Apply");
    assert_eq!(e["subresource"], "status");
    assert_eq!(
        e["fieldsV1"]["f:status"]["f:conditions"]["k:{\"type\":\"Ready\"}"],
        json!({".": {}, "f:lastTransitionTime": {}, "f:message": {}, "f:reason": {}, "f:status": {}, "f:type": {}})
    );
    // A status write through PUT records an Update entry with the subresource.
    let mut cur = r.json();
    cur["status"]["phase"] = json!("Suspending");
    let r = w.http(
        "PUT",
        &format!("{path}?fieldManager=operator"),
        Some(("application/json", cur.to_string().as_bytes())),
    );
    assert_eq!(r.code, 200, "{}", r.body);
    let obj = full(&w, "actor", "s", "team-a");
    assert_eq!(
        managers(&obj),
        [
            "agent/Apply/status",
            "kubectl-create/Update",
            "operator/Update/status"
        ]
    );
    // The operator took status.phase from the agent (an update always wins).
    let agent = obj["metadata"]["managedFields"][0]["fieldsV1"]["f:status"].clone();
    assert!(agent.get("f:phase").is_none(), "{agent}");
    // Without fieldManager the User-Agent's product names the manager.
    let r = w.http(
        "PATCH",
        "/apis/substrate.ate.dev/v1alpha1/namespaces/team-a/actors/s",
        Some((
            "application/merge-patch+json",
            br#"{"metadata":{"annotations":{"a":"b"}}}"#,
        )),
    );
    assert_eq!(r.code, 200, "{}", r.body);
    assert!(
        managers(&r.json()).iter().any(|m| m == "curl/Update"),
        "{:?}",
        managers(&r.json())
    );
    // Apply on the status of a missing object is 404.
    let r = w.http(
        "PATCH",
        "/apis/substrate.ate.dev/v1alpha1/namespaces/team-a/actors/nope/status?fieldManager=a",
        Some((
            "application/apply-patch+yaml",
            status.replace("name: s", "name: nope").as_bytes(),
        )),
    );
    assert_eq!(r.code, 404, "{}", r.body);
    // kubectl's own status apply (`--subresource=status`).
    let f = w.file(
        "status.yaml",
        "apiVersion: substrate.ate.dev/v1alpha1\nkind: Actor\nmetadata:\n  name: s\n  namespace: team-a\nstatus:\n  phase: Failed\n",
    );
    let out = w.ok(&[
        "apply",
        "--server-side",
        "--subresource=status",
        "--field-manager=doctor",
        "--force-conflicts",
        "-f",
        support::path_str(&f),
    ]);
    assert_contains(&out, "actor.substrate.ate.dev/s serverside-applied");
    let obj = full(&w, "actor", "s", "team-a");
    assert_eq!(obj["status"]["phase"], "Failed");
    assert!(managers(&obj).iter().any(|m| m == "doctor/Apply/status"));
}

const V1: &str = "\
apiVersion: substrate.ate.dev/v1alpha1
kind: Actor
metadata:
  name: m
  namespace: team-a
  labels:
    app: m
spec:
  template:
    name: counter
  idleTimeout: 5m
";

#[test]
fn client_side_apply_migrates_to_server_side() {
    let Some(w) = support::world() else { return };
    w.atespace("team-a");
    let v1 = w.file("v1.yaml", V1);
    w.ok(&["apply", "-f", path_str(&v1)]);
    let obj = full(&w, "actor", "m", "team-a");
    assert_eq!(managers(&obj), ["kubectl-client-side-apply/Update"]);
    assert_contains(
        &obj["metadata"]["managedFields"][0]["fieldsV1"].to_string(),
        "f:kubectl.kubernetes.io/last-applied-configuration",
    );
    // kubectl moves the client-side-apply ownership to its server-side manager (a JSON patch
    // of managedFields), then applies.
    let out = w.ok(&["apply", "--server-side", "-f", path_str(&v1)]);
    assert_eq!(out.trim(), "actor.substrate.ate.dev/m serverside-applied");
    let obj = full(&w, "actor", "m", "team-a");
    // As against Kubernetes: the client-side manager is gone, kubectl's Apply entry owns its
    // fields and `kubectl-last-applied` keeps the last-applied annotation.
    assert_eq!(
        managers(&obj),
        ["kubectl/Apply", "kubectl-last-applied/Apply"],
        "{obj}"
    );
    assert_eq!(obj["metadata"]["generation"], 1);
    // The server-side manager now owns what client-side apply set: dropping a field from
    // the file removes it.
    let v2 = w.file("v2.yaml", &V1.replace("  idleTimeout: 5m\n", ""));
    w.ok(&["apply", "--server-side", "-f", path_str(&v2)]);
    let obj = full(&w, "actor", "m", "team-a");
    assert!(obj["spec"].get("idleTimeout").is_none(), "{obj}");
    assert_eq!(obj["metadata"]["labels"]["app"], "m");
}

#[test]
fn diff_and_dry_run_match_real_writes() {
    let Some(w) = support::world() else { return };
    w.atespace("team-a");
    let f = w.file("web.yaml", WEB);
    // Server-side diff of an object that does not exist: a dry-run apply-create.
    let rv = w.actors_rv();
    let out = w.kubectl(&["diff", "--server-side", "-f", path_str(&f)]);
    assert_eq!(out.code(), Some(1), "{out}");
    assert_contains(&out.stdout, "+  name: web");
    assert_contains(&out.stdout, "+  activation: Always");
    assert_not_contains(&out.stdout, "managedFields");
    assert_eq!(w.actors_rv(), rv, "diff wrote nothing");
    assert!(w.get_json("actor", "web", "team-a").is_none());

    // A dry-run apply-create answers what the real one writes, with an empty
    // resourceVersion and the managedFields.
    let path = "/apis/substrate.ate.dev/v1alpha1/namespaces/team-a/actors/web";
    let dry = w.http(
        "PATCH",
        &format!("{path}?fieldManager=kubectl&dryRun=All"),
        Some(("application/apply-patch+yaml", WEB.as_bytes())),
    );
    assert_eq!(dry.code, 201, "{}", dry.body);
    let dry = dry.json();
    assert!(dry["metadata"].get("resourceVersion").is_none(), "{dry}");
    assert_eq!(w.actors_rv(), rv);
    let real = w.http(
        "PATCH",
        &format!("{path}?fieldManager=kubectl"),
        Some(("application/apply-patch+yaml", WEB.as_bytes())),
    );
    assert_eq!(real.code, 201, "{}", real.body);
    let real = real.json();
    let strip = |v: &Value| {
        let mut v = v.clone();
        for f in ["uid", "creationTimestamp", "resourceVersion"] {
            v["metadata"].as_object_mut().unwrap().remove(f);
        }
        for e in v["metadata"]["managedFields"].as_array_mut().unwrap() {
            e.as_object_mut().unwrap().remove("time");
        }
        v
    };
    assert_eq!(strip(&dry), strip(&real));
    // Dry-run create through POST: same rule.
    let r = w.http(
        "POST",
        "/apis/substrate.ate.dev/v1alpha1/namespaces/team-a/actors?dryRun=All&fieldManager=kubectl",
        Some((
            "application/json",
            json!({"apiVersion": AV, "kind": "Actor", "metadata": {"name": "d"}, "spec": {"template": {"name": "counter"}}}).to_string().as_bytes(),
        )),
    );
    assert_eq!(r.code, 201, "{}", r.body);
    assert!(r.json()["metadata"].get("resourceVersion").is_none());
    assert_eq!(
        r.json()["metadata"]["managedFields"][0]["manager"],
        "kubectl"
    );

    // Nothing to diff after the apply, both ways.
    let out = w.kubectl(&["diff", "--server-side", "-f", path_str(&f)]);
    assert_eq!(out.code(), Some(0), "{out}");
    assert_eq!(out.stdout.trim(), "");
    // A change shows as a diff; a dry-run apply of an existing object keeps its
    // resourceVersion and writes nothing.
    let f2 = w.file(
        "web2.yaml",
        &WEB.replace("activation: Always", "activation: Suspended"),
    );
    let rv = w.actors_rv();
    let out = w.kubectl(&["diff", "--server-side", "-f", path_str(&f2)]);
    assert_eq!(out.code(), Some(1), "{out}");
    assert_contains(&out.stdout, "-  activation: Always");
    assert_contains(&out.stdout, "+  activation: Suspended");
    assert_contains(&out.stdout, "+  generation: 2");
    assert_eq!(w.actors_rv(), rv);
    let out = w.kubectl(&["diff", "-f", path_str(&f2)]);
    assert_eq!(out.code(), Some(1), "{out}");
    assert_contains(&out.stdout, "+  activation: Suspended");
    assert_eq!(w.actors_rv(), rv);
}

#[test]
fn owner_references_by_merge_patch() {
    let Some(w) = support::world() else { return };
    w.atespace("team-a");
    w.actor("team-a", "child");
    let uid = w.jsonpath("atespace", "team-a", "", "{.metadata.uid}");
    let patch = json!({"metadata": {"ownerReferences": [
        {"apiVersion": AV, "kind": "Atespace", "name": "team-a", "uid": uid, "blockOwnerDeletion": true}
    ]}})
    .to_string();
    // Strategic merge patch (kubectl's default for this kind) is 415; merge patch works.
    let out = w.kubectl(&["patch", "actor", "child", "-n", "team-a", "-p", &patch]);
    assert!(!out.success(), "{out}");
    w.ok(&[
        "patch",
        "actor",
        "child",
        "-n",
        "team-a",
        "--type=merge",
        "-p",
        &patch,
    ]);
    let obj = full(&w, "actor", "child", "team-a");
    assert_eq!(obj["metadata"]["ownerReferences"][0]["uid"], uid.as_str());
    let e = entry(&obj, "kubectl-patch", "Update").unwrap();
    assert_eq!(
        e["fieldsV1"]["f:metadata"]["f:ownerReferences"][format!("k:{{\"uid\":\"{uid}\"}}")],
        json!({".": {}, "f:apiVersion": {}, "f:blockOwnerDeletion": {}, "f:kind": {}, "f:name": {}, "f:uid": {}})
    );
    // The garbage collector's metadata-only view and its removal patch (with a uid
    // precondition).
    let r = w.http_as(
        &support::Identity::Cert("admin".into()),
        "GET",
        "/apis/substrate.ate.dev/v1alpha1/namespaces/team-a/actors/child",
        None,
        &["Accept: application/json;as=PartialObjectMetadata;g=meta.k8s.io;v=v1"],
    );
    assert_eq!(r.code, 200, "{}", r.body);
    assert_eq!(r.json()["kind"], "PartialObjectMetadata");
    let child_uid = r.json()["metadata"]["uid"].as_str().unwrap().to_string();
    let path = "/apis/substrate.ate.dev/v1alpha1/namespaces/team-a/actors/child";
    let r = w.http(
        "PATCH",
        path,
        Some((
            "application/merge-patch+json",
            json!({"metadata": {"ownerReferences": [], "uid": "wrong"}})
                .to_string()
                .as_bytes(),
        )),
    );
    assert_eq!(r.code, 422, "{}", r.body);
    assert_contains(
        &r.message(),
        "metadata.uid: Invalid value: \"wrong\": field is immutable",
    );
    let r = w.http(
        "PATCH",
        path,
        Some((
            "application/merge-patch+json",
            json!({"metadata": {"ownerReferences": [], "uid": child_uid}})
                .to_string()
                .as_bytes(),
        )),
    );
    assert_eq!(r.code, 200, "{}", r.body);
    let obj = full(&w, "actor", "child", "team-a");
    assert!(obj["metadata"].get("ownerReferences").is_none(), "{obj}");
    assert!(
        entry(&obj, "kubectl-patch", "Update").is_none(),
        "the patcher owned only the removed reference: {:?}",
        managers(&obj)
    );
}

/// A list applied in a new order reads back in that order, as from Kubernetes (a GitOps tool
/// comparing its manifest's list with the live one, item by item, then sees no drift); items
/// another manager owns stay next to their neighbours; a configuration naming one key twice
/// is refused with the field and nothing is written.
#[test]
fn applied_lists_keep_the_configurations_order_and_duplicates_are_refused() {
    let Some(w) = support::world() else { return };
    w.atespace("team-a");
    let template = |env: &str| {
        format!(
            "apiVersion: ate.dev/v1alpha1\nkind: ActorTemplate\nmetadata:\n  name: lists\n  namespace: team-a\nspec:\n  workerPoolRef: {{name: small}}\n  containers:\n  - name: app\n    image: counter:1\n    env: [{env}]\n"
        )
    };
    let env_names = |w: &World| {
        w.jsonpath(
            "actortemplates.ate.dev",
            "lists",
            "team-a",
            "{.spec.containers[0].env[*].name}",
        )
    };
    w.apply_stdin(
        &template("{name: A, value: '1'}, {name: B, value: '2'}"),
        &["--server-side"],
    );
    assert_eq!(env_names(&w), "A B");
    // Another manager adds M between A and B.
    let r = w.http(
        "PATCH",
        "/apis/ate.dev/v1alpha1/namespaces/team-a/actortemplates/lists?fieldManager=editor",
        Some((
            "application/json-patch+json",
            br#"[{"op": "add", "path": "/spec/containers/0/env/1", "value": {"name": "M", "value": "m"}}]"#,
        )),
    );
    assert_eq!(r.code, 200, "{}", r.body);
    assert_eq!(env_names(&w), "A M B");
    // kubectl's manifest now says C, B, A: its order wins, and M, which it does not name,
    // stays before B as it was (Kubernetes gives the same order).
    w.apply_stdin(
        &template("{name: C, value: '3'}, {name: B, value: '2'}, {name: A, value: '1'}"),
        &["--server-side"],
    );
    assert_eq!(env_names(&w), "M C B A");
    // B dropped from the manifest goes; the rest keep their order.
    w.apply_stdin(
        &template("{name: C, value: '3'}, {name: A, value: '1'}"),
        &["--server-side"],
    );
    assert_eq!(env_names(&w), "M C A");

    // One key twice: 422 with the second item's path, and the object is untouched.
    let rv = w.jsonpath(
        "actortemplates.ate.dev",
        "lists",
        "team-a",
        "{.metadata.resourceVersion}",
    );
    let out = w.stdin(
        &template("{name: C, value: '3'}, {name: C, value: '4'}"),
        &["apply", "--server-side"],
    );
    assert!(!out.success(), "{out}");
    assert_contains(
        &out.stderr,
        "spec.containers[0].env[1].name: Duplicate value: \"C\"",
    );
    let out = w.stdin(
        "apiVersion: substrate.ate.dev/v1alpha1\nkind: Actor\nmetadata:\n  name: fin\n  namespace: team-a\n  finalizers: [x.io/a, x.io/a]\nspec:\n  template: {name: counter}\n",
        &["apply", "--server-side"],
    );
    assert!(!out.success(), "{out}");
    assert_contains(
        &out.stderr,
        "metadata.finalizers[1]: Duplicate value: \"x.io/a\"",
    );
    assert!(
        w.get_json("actor", "fin", "team-a").is_none(),
        "nothing created"
    );
    assert_eq!(
        w.jsonpath(
            "actortemplates.ate.dev",
            "lists",
            "team-a",
            "{.metadata.resourceVersion}",
        ),
        rv,
        "nothing written"
    );
    // The same through create (no apply): env is a list map, a key twice is refused too.
    let out = w.stdin(
        &template("{name: D}, {name: D}").replace("name: lists", "name: other"),
        &["create"],
    );
    assert!(!out.success(), "{out}");
    assert_contains(
        &out.stderr,
        "spec.containers[0].env[1].name: Duplicate value: \"D\"",
    );
}
