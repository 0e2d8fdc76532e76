//! The apiserver through the real `kubectl` (and `curl` where kubectl cannot say it): every
//! test starts its own Valkey and apiserver (see `support`), drives them as a user would, and
//! asserts exit codes, HTTP status codes, messages, and the stored state afterwards — in
//! particular that a failed write wrote nothing.
//!
//! Run with `cargo test -p apiserver --test kubectl` (hack/test.sh installs kubectl).

mod support;

use serde_json::{Value, json};

use support::{
    Identity, World, actor_yaml, assert_contains, assert_not_contains, atespace_yaml, eventually,
    path_str,
};

const GROUP: &str = "substrate.ate.dev";

fn ready_patch(status: &str) -> String {
    json!({"status": {"conditions": [{
        "type": "Ready", "status": status, "reason": "Test", "message": "ok",
        "lastTransitionTime": "2026-01-01T00:00:00Z"
    }]}})
    .to_string()
}

fn actor_json(ns: &str, name: &str) -> String {
    json!({"apiVersion": "substrate.ate.dev/v1alpha1", "kind": "Actor", "metadata": {"name": name, "namespace": ns}, "spec": {"template": {"name": "counter"}}}).to_string()
}

/// Rows of a kubectl table as whitespace-separated cells (header included).
fn rows(table: &str) -> Vec<Vec<String>> {
    table
        .lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| l.split_whitespace().map(str::to_string).collect())
        .collect()
}

fn first_cells(table: &str) -> Vec<String> {
    rows(table)
        .into_iter()
        .skip(1)
        .filter_map(|r| r.into_iter().next())
        .collect()
}

fn sorted(mut v: Vec<String>) -> Vec<String> {
    v.sort();
    v
}

fn strs(v: &[&str]) -> Vec<String> {
    v.iter().map(|s| s.to_string()).collect()
}

/// `kubectl get actors -n NS -l SELECTOR -o name`, sorted, without the kind prefix.
fn select(w: &World, ns: &str, flag: &str, selector: &str) -> Vec<String> {
    let out = w.ok(&["get", "actors", "-n", ns, flag, selector, "-o", "name"]);
    sorted(
        out.lines()
            .filter(|l| !l.is_empty())
            .map(|l| l.trim_start_matches("actor.substrate.ate.dev/").to_string())
            .collect(),
    )
}

#[test]
fn discovery_categories_and_explain() {
    let Some(w) = support::world() else { return };
    let out = w.ok(&["api-resources", "--api-group=substrate.ate.dev"]);
    let table = rows(&out);
    assert_eq!(
        table[0][..5],
        strs(&["NAME", "SHORTNAMES", "APIVERSION", "NAMESPACED", "KIND"]),
        "{out}"
    );
    let expect = [
        [
            "actors",
            "act",
            "substrate.ate.dev/v1alpha1",
            "true",
            "Actor",
        ],
        [
            "atespaces",
            "ates",
            "substrate.ate.dev/v1alpha1",
            "false",
            "Atespace",
        ],
        [
            "workers",
            "wkr",
            "substrate.ate.dev/v1alpha1",
            "false",
            "Worker",
        ],
    ];
    assert_eq!(
        table.len(),
        4,
        "exactly three resources in the group:\n{out}"
    );
    for row in expect {
        assert!(
            table.iter().any(|r| *r == strs(&row)),
            "missing row {row:?} in\n{out}"
        );
    }
    let out = w.ok(&["api-resources", "--api-group=ate.dev", "-o", "name"]);
    assert_eq!(
        sorted(out.lines().map(str::to_string).collect()),
        strs(&["actortemplates.ate.dev", "workerpools.ate.dev"])
    );

    // Short names and the category resolve through discovery.
    w.atespace("team-a");
    w.actor("team-a", "a1");
    assert_eq!(
        w.ok(&["get", "act", "-n", "team-a", "-o", "name"]).trim(),
        "actor.substrate.ate.dev/a1"
    );
    assert_contains(
        &w.ok(&["get", "ates", "-o", "name"]),
        "atespace.substrate.ate.dev/team-a",
    );
    let out = w.ok(&["get", "substrate", "-A"]);
    assert_contains(&out, "atespace.substrate.ate.dev/team-a");
    assert_contains(&out, "atespace.substrate.ate.dev/default");
    assert_contains(&out, "actor.substrate.ate.dev/a1");
    let out = w.ok(&["get", "substrate", "-A", "-o", "name"]);
    assert_contains(&out, "actor.substrate.ate.dev/a1");

    // explain reads the OpenAPI schema, doc comments included.
    let out = w.ok(&["explain", "actor.spec"]);
    assert_contains(&out, "KIND:       Actor");
    assert_contains(&out, "GROUP:      substrate.ate.dev");
    assert_contains(&out, "activation");
    assert_contains(&out, "When the actor runs");
    assert_contains(&out, "idleTimeout");
    assert_contains(&out, "template");
    assert_contains(&out, "-required-");
    let out = w.ok(&["explain", "actors.spec.template"]);
    assert_contains(&out, "FIELD: template <Object>");
    assert_contains(
        &out,
        "The ActorTemplate (`ate.dev`) this actor is created from",
    );
    assert_contains(&out, "Name of the ActorTemplate");
    assert_contains(&out, "defaults to the actor's atespace");
    let out = w.ok(&["explain", "atespace"]);
    assert_contains(&out, "Atespace is a tenant scope for actors");
}

#[test]
fn create_get_describe_label_annotate_patch_replace_delete() {
    let Some(w) = support::world() else { return };
    w.atespace("team-a");
    let out = w.create(&actor_yaml("team-a", "x", ""));
    assert_eq!(out.trim(), "actor.substrate.ate.dev/x created");

    // Table, wide, yaml, json, name, jsonpath.
    let out = w.ok(&["get", "actor", "x", "-n", "team-a"]);
    let t = rows(&out);
    assert_eq!(t[0], strs(&["NAME", "PHASE", "WORKER", "AGE"]), "{out}");
    assert_eq!(t[1][..2], strs(&["x", "Suspended"]), "{out}");
    let out = w.ok(&["get", "actor", "x", "-n", "team-a", "-o", "wide"]);
    let header = out.lines().next().unwrap_or_default();
    for col in [
        "NAME",
        "PHASE",
        "WORKER",
        "AGE",
        "TEMPLATE",
        "ACTIVATION",
        "ADDRESS",
        "LAST ACTIVE",
        "IMAGE",
    ] {
        assert_contains(header, col);
    }
    assert_contains(&out, "counter");
    assert_contains(&out, "OnDemand");
    let yaml = w.ok(&["get", "actor", "x", "-n", "team-a", "-o", "yaml"]);
    for s in [
        "apiVersion: substrate.ate.dev/v1alpha1",
        "kind: Actor",
        "name: x",
        "namespace: team-a",
        "activation: OnDemand",
        "phase: Suspended",
        "uid:",
        "resourceVersion:",
        "generation: 1",
        "creationTimestamp:",
    ] {
        assert_contains(&yaml, s);
    }
    let obj = w.get_json("actor", "x", "team-a").expect("actor x");
    assert_eq!(
        obj["spec"],
        json!({"template": {"name": "counter"}, "activation": "OnDemand"})
    );
    assert_eq!(obj["status"]["phase"], "Suspended");
    assert_eq!(obj["metadata"]["generation"], 1);
    assert_eq!(
        w.ok(&["get", "actor", "x", "-n", "team-a", "-o", "name"])
            .trim(),
        "actor.substrate.ate.dev/x"
    );
    assert_eq!(
        w.jsonpath("actor", "x", "team-a", "{.spec.activation}"),
        "OnDemand"
    );
    assert_eq!(
        w.ok(&[
            "get",
            "actor",
            "x",
            "-n",
            "team-a",
            "-o",
            "jsonpath='{.spec.activation}'"
        ]),
        "'OnDemand'"
    );
    assert_eq!(
        w.ok(&[
            "get",
            "actor",
            "x",
            "-n",
            "team-a",
            "-o",
            "custom-columns=N:.metadata.name,T:.spec.template.name",
            "--no-headers"
        ])
        .split_whitespace()
        .collect::<Vec<_>>(),
        ["x", "counter"]
    );

    // Status columns, once the status says where the actor runs.
    w.ok(&[
        "patch",
        "actor",
        "x",
        "-n",
        "team-a",
        "--subresource=status",
        "--type=merge",
        "-p",
        r#"{"status":{"phase":"Running","worker":{"name":"w-1","address":"10.0.0.7"}}}"#,
    ]);
    let out = w.ok(&[
        "get",
        "actor",
        "x",
        "-n",
        "team-a",
        "-o",
        "wide",
        "--no-headers",
    ]);
    let cells = rows(&out).remove(0);
    assert_eq!(cells[..3], strs(&["x", "Running", "w-1"]), "{out}");
    assert!(cells.contains(&"10.0.0.7".to_string()), "{out}");
    assert_eq!(
        w.ok(&[
            "get",
            "actors.v1alpha1.substrate.ate.dev",
            "-n",
            "team-a",
            "-o",
            "name"
        ])
        .trim(),
        "actor.substrate.ate.dev/x"
    );
    assert_contains(&w.ok(&["api-versions"]), "substrate.ate.dev/v1alpha1");

    // describe (generic describer: unregistered kind).
    let out = w.ok(&["describe", "actor", "x", "-n", "team-a"]);
    for s in [
        "Name:",
        "Namespace:",
        "team-a",
        "API Version:  substrate.ate.dev/v1alpha1",
        "Kind:         Actor",
        "Template:",
        "counter",
        "Activation:",
        "OnDemand",
        "Phase:",
        "Running",
        "Worker:",
        "w-1",
    ] {
        assert_contains(&out, s);
    }
    assert_contains(
        &w.ok(&["describe", "actors", "-n", "team-a"]),
        "Name:         x",
    );

    // label / annotate, --show-labels, -L.
    assert_eq!(
        w.ok(&["label", "actor", "x", "-n", "team-a", "tier=gold"])
            .trim(),
        "actor.substrate.ate.dev/x labeled"
    );
    assert_contains(
        &w.ok(&["get", "actors", "-n", "team-a", "--show-labels"]),
        "tier=gold",
    );
    let out = w.ok(&["get", "actors", "-n", "team-a", "-L", "tier"]);
    assert_eq!(
        rows(&out)[0],
        strs(&["NAME", "PHASE", "WORKER", "AGE", "TIER"]),
        "{out}"
    );
    assert_eq!(
        rows(&out)[1].last().map(String::as_str),
        Some("gold"),
        "{out}"
    );
    assert_contains(
        &w.fail(&["label", "actor", "x", "-n", "team-a", "tier=silver"]),
        "'tier' already has a value (gold), and --overwrite is false",
    );
    w.ok(&[
        "label",
        "actor",
        "x",
        "-n",
        "team-a",
        "tier=silver",
        "--overwrite",
    ]);
    assert_eq!(
        w.jsonpath("actor", "x", "team-a", "{.metadata.labels.tier}"),
        "silver"
    );
    assert_eq!(
        w.ok(&["annotate", "actor", "x", "-n", "team-a", "note=hello world"])
            .trim(),
        "actor.substrate.ate.dev/x annotated"
    );
    assert_eq!(
        w.jsonpath("actor", "x", "team-a", "{.metadata.annotations.note}"),
        "hello world"
    );
    assert_eq!(
        w.ok(&["label", "actor", "x", "-n", "team-a", "tier-"])
            .trim(),
        "actor.substrate.ate.dev/x unlabeled"
    );
    assert_eq!(
        w.jsonpath("actor", "x", "team-a", "{.metadata.labels.tier}"),
        ""
    );
    // Labels and annotations are metadata: the generation stays.
    assert_eq!(
        w.jsonpath("actor", "x", "team-a", "{.metadata.generation}"),
        "1"
    );

    // patch: JSON patch, merge patch, and the default (strategic) which custom kinds refuse.
    let out = w.ok(&[
        "patch",
        "actor",
        "x",
        "-n",
        "team-a",
        "--type=json",
        "-p",
        r#"[{"op":"replace","path":"/spec/activation","value":"Always"}]"#,
    ]);
    assert_eq!(out.trim(), "actor.substrate.ate.dev/x patched");
    assert_eq!(
        w.jsonpath(
            "actor",
            "x",
            "team-a",
            "{.spec.activation} {.metadata.generation}"
        ),
        "Always 2"
    );
    w.ok(&[
        "patch",
        "actor",
        "x",
        "-n",
        "team-a",
        "--type=merge",
        "-p",
        r#"{"spec":{"idleTimeout":"10m"}}"#,
    ]);
    assert_eq!(
        w.jsonpath(
            "actor",
            "x",
            "team-a",
            "{.spec.idleTimeout} {.metadata.generation}"
        ),
        "10m 3"
    );
    let rv = w.actors_rv();
    let (code, err) = w.fail_http(
        &[
            "patch",
            "actor",
            "x",
            "-n",
            "team-a",
            "-p",
            r#"{"spec":{"activation":"Suspended"}}"#,
        ],
        None,
    );
    assert_eq!(code, Some(415), "{err}");
    // kubectl turns the 415 into its own explanation.
    assert_contains(
        &err,
        "error: application/strategic-merge-patch+json is not supported by substrate.ate.dev/v1alpha1, Kind=Actor",
    );
    assert_contains(
        &err,
        "accepted media types include: application/json-patch+json, application/merge-patch+json",
    );
    assert_eq!(w.actors_rv(), rv, "a refused patch wrote nothing");
    assert_eq!(
        w.jsonpath("actor", "x", "team-a", "{.spec.activation}"),
        "Always"
    );
    // A JSON patch whose test fails is refused whole.
    let (code, err) = w.fail_http(
        &["patch", "actor", "x", "-n", "team-a", "--type=json", "-p", r#"[{"op":"replace","path":"/spec/activation","value":"Suspended"},{"op":"test","path":"/spec/activation","value":"OnDemand"}]"#],
        None,
    );
    assert_eq!(code, Some(422), "{err}");
    assert_eq!(w.actors_rv(), rv, "a failed JSON patch wrote nothing");

    // replace (PUT) of an edited copy.
    let yaml = w.ok(&["get", "actor", "x", "-n", "team-a", "-o", "yaml"]);
    let edited = yaml.replace("activation: Always", "activation: Suspended");
    let out = w.stdin(&edited, &["replace"]);
    assert!(out.success(), "{out}");
    assert_eq!(out.stdout.trim(), "actor.substrate.ate.dev/x replaced");
    assert_eq!(
        w.jsonpath(
            "actor",
            "x",
            "team-a",
            "{.spec.activation} {.metadata.generation}"
        ),
        "Suspended 4"
    );

    // delete, then every read is a 404 with the Kubernetes wording.
    assert_eq!(
        w.ok(&["delete", "actor", "x", "-n", "team-a"]).trim(),
        "actor.substrate.ate.dev \"x\" deleted"
    );
    let (code, err) = w.fail_http(&["get", "actor", "x", "-n", "team-a"], None);
    assert_eq!(code, Some(404));
    assert_eq!(
        err.trim(),
        "Error from server (NotFound): actors.substrate.ate.dev \"x\" not found"
    );
    assert!(w.names("actors", "team-a").is_empty());
    assert_contains(
        &w.kubectl(&["get", "actors", "-n", "team-a"]).stderr,
        "No resources found in team-a namespace.",
    );
}

#[test]
fn edit_with_kube_editor() {
    let Some(w) = support::world() else { return };
    w.atespace("team-a");
    w.actor("team-a", "x");
    let editor = w.script("editor.sh", r#"sed -i -e 's/activation: OnDemand/activation: Always/' -e 's/^  name: x$/  name: x\n  labels:\n    edited: "yes"/' "$1""#);
    let out = w.kubectl_with(
        &["edit", "actor", "x", "-n", "team-a"],
        None,
        &[("KUBE_EDITOR", path_str(&editor))],
    );
    assert!(out.success(), "{out}");
    assert_eq!(out.stdout.trim(), "actor.substrate.ate.dev/x edited");
    assert_eq!(
        w.jsonpath(
            "actor",
            "x",
            "team-a",
            "{.spec.activation} {.metadata.labels.edited} {.metadata.generation}"
        ),
        "Always yes 2"
    );

    // An edit the server refuses (immutable template) is reported and nothing is written.
    let rv = w.actors_rv();
    let editor = w.script(
        "editor2.sh",
        r#"sed -i 's/name: counter/name: other/' "$1""#,
    );
    let out = w.kubectl_with(
        &["edit", "actor", "x", "-n", "team-a"],
        None,
        &[("KUBE_EDITOR", path_str(&editor))],
    );
    assert!(!out.success(), "{out}");
    assert_contains(
        &out.stderr,
        "error: actors.substrate.ate.dev \"x\" is invalid",
    );
    assert_contains(&out.stderr, "A copy of your changes has been stored");
    assert_eq!(w.actors_rv(), rv);
    assert_eq!(
        w.jsonpath("actor", "x", "team-a", "{.spec.template.name}"),
        "counter"
    );

    // An editor that changes nothing: "Edit cancelled, no changes made."
    let editor = w.script("noop.sh", "true");
    let out = w.kubectl_with(
        &["edit", "actor", "x", "-n", "team-a"],
        None,
        &[("KUBE_EDITOR", path_str(&editor))],
    );
    assert!(out.success(), "{out}");
    assert_contains(&out.stderr, "Edit cancelled, no changes made.");
    assert_eq!(w.actors_rv(), rv);
}

#[test]
fn list_selectors_sorting_and_chunking() {
    let Some(w) = support::world() else { return };
    w.atespace("team-a");
    w.atespace("team-b");
    let labelled = |name: &str, labels: &str| {
        let yaml = actor_yaml("team-a", name, "").replace(
            "  namespace: team-a\n",
            &format!("  namespace: team-a\n  labels: {labels}\n"),
        );
        w.create(&yaml);
    };
    labelled("a1", "{tier: gold, env: prod}");
    labelled("a2", "{tier: silver, env: prod}");
    labelled("a3", "{tier: bronze}");
    labelled("a4", "{}");
    labelled("a5", "{tier: gold}");
    w.actor("team-b", "a0");
    // a2 runs: status through the status subresource.
    w.ok(&[
        "patch",
        "actor",
        "a2",
        "-n",
        "team-a",
        "--subresource=status",
        "--type=merge",
        "-p",
        r#"{"status":{"phase":"Running"}}"#,
    ]);

    // -A: a NAMESPACE column, every atespace.
    let out = w.ok(&["get", "actors", "-A"]);
    let t = rows(&out);
    assert_eq!(
        t[0],
        strs(&["NAMESPACE", "NAME", "PHASE", "WORKER", "AGE"]),
        "{out}"
    );
    let pairs: Vec<(String, String)> = t[1..]
        .iter()
        .map(|r| (r[0].clone(), r[1].clone()))
        .collect();
    assert_eq!(pairs.len(), 6, "{out}");
    assert!(pairs.contains(&("team-b".into(), "a0".into())), "{out}");
    assert!(pairs.contains(&("team-a".into(), "a5".into())), "{out}");
    assert_eq!(
        t.iter().find(|r| r[1] == "a2").map(|r| r[2].as_str()),
        Some("Running"),
        "{out}"
    );

    // Label selectors: =, ==, !=, in, notin, exists, !exists, and a conjunction.
    assert_eq!(select(&w, "team-a", "-l", "tier=gold"), strs(&["a1", "a5"]));
    assert_eq!(
        select(&w, "team-a", "-l", "tier==gold"),
        strs(&["a1", "a5"])
    );
    assert_eq!(
        select(&w, "team-a", "-l", "tier!=gold"),
        strs(&["a2", "a3", "a4"])
    );
    assert_eq!(
        select(&w, "team-a", "-l", "tier in (gold,silver)"),
        strs(&["a1", "a2", "a5"])
    );
    assert_eq!(
        select(&w, "team-a", "-l", "tier notin (gold,silver)"),
        strs(&["a3", "a4"])
    );
    assert_eq!(
        select(&w, "team-a", "-l", "tier"),
        strs(&["a1", "a2", "a3", "a5"])
    );
    assert_eq!(select(&w, "team-a", "-l", "!tier"), strs(&["a4"]));
    assert_eq!(
        select(&w, "team-a", "-l", "env=prod,tier=gold"),
        strs(&["a1"])
    );
    assert!(select(&w, "team-a", "-l", "tier=platinum").is_empty());
    assert_contains(
        &w.kubectl(&["get", "actors", "-n", "team-a", "-l", "tier=platinum"])
            .stderr,
        "No resources found in team-a namespace.",
    );

    // Field selectors.
    assert_eq!(
        select(&w, "team-a", "--field-selector", "status.phase=Suspended"),
        strs(&["a1", "a3", "a4", "a5"])
    );
    assert_eq!(
        select(&w, "team-a", "--field-selector", "status.phase!=Suspended"),
        strs(&["a2"])
    );
    assert_eq!(
        select(&w, "team-a", "--field-selector", "metadata.name=a3"),
        strs(&["a3"])
    );
    assert_eq!(
        select(
            &w,
            "team-a",
            "--field-selector",
            "metadata.name=a3,status.phase=Running"
        ),
        Vec::<String>::new()
    );
    assert_eq!(
        select(
            &w,
            "team-a",
            "--field-selector",
            "spec.template.name=counter"
        )
        .len(),
        5
    );
    let out = w.ok(&[
        "get",
        "actors",
        "-A",
        "--field-selector",
        "metadata.namespace=team-b",
        "-o",
        "name",
    ]);
    assert_eq!(out.trim(), "actor.substrate.ate.dev/a0");
    // Both kinds at once.
    assert_eq!(
        sorted(
            w.ok(&[
                "get",
                "actors",
                "-n",
                "team-a",
                "-l",
                "tier",
                "--field-selector",
                "status.phase=Suspended",
                "-o",
                "name"
            ])
            .lines()
            .map(str::to_string)
            .collect()
        ),
        strs(&[
            "actor.substrate.ate.dev/a1",
            "actor.substrate.ate.dev/a3",
            "actor.substrate.ate.dev/a5"
        ])
    );

    // --show-labels, -L.
    let out = w.ok(&["get", "actors", "-n", "team-a", "--show-labels"]);
    assert_eq!(rows(&out)[0].last().map(String::as_str), Some("LABELS"));
    assert_contains(&out, "env=prod,tier=gold");
    let out = w.ok(&["get", "actors", "-n", "team-a", "-L", "tier,env"]);
    let t = rows(&out);
    assert_eq!(
        t[0],
        strs(&["NAME", "PHASE", "WORKER", "AGE", "TIER", "ENV"]),
        "{out}"
    );
    assert_eq!(
        t.iter()
            .find(|r| r[0] == "a2")
            .map(|r| r[r.len() - 2..].to_vec()),
        Some(strs(&["silver", "prod"])),
        "{out}"
    );

    // --sort-by: by name across atespaces puts team-b/a0 first; descending via a label.
    let out = w.ok(&[
        "get",
        "actors",
        "-A",
        "--sort-by=.metadata.name",
        "--no-headers",
    ]);
    let names: Vec<String> = rows(&out).into_iter().map(|r| r[1].clone()).collect();
    assert_eq!(names, strs(&["a0", "a1", "a2", "a3", "a4", "a5"]), "{out}");
    let tiers = w.ok(&[
        "get",
        "actors",
        "-n",
        "team-a",
        "-l",
        "tier",
        "--sort-by=.metadata.labels.tier",
        "-o",
        "jsonpath={.items[*].metadata.labels.tier}",
    ]);
    assert_eq!(tiers, "bronze gold gold silver");

    // --chunk-size=2 pages through 5 objects with limit/continue: three requests, all five rows.
    let out = w.kubectl(&["get", "actors", "-n", "team-a", "--chunk-size=2", "-v=6"]);
    assert!(out.success(), "{out}");
    assert_eq!(
        first_cells(&out.stdout),
        strs(&["a1", "a2", "a3", "a4", "a5"]),
        "{out}"
    );
    let pages = out
        .stderr
        .lines()
        .filter(|l| l.contains("/namespaces/team-a/actors?") && l.contains("limit=2"))
        .count();
    assert_eq!(pages, 3, "expected 3 pages of 2:\n{}", out.stderr);
    assert_eq!(
        out.stderr
            .lines()
            .filter(|l| l.contains("continue="))
            .count(),
        2,
        "{}",
        out.stderr
    );
    let out = w.ok(&["get", "actors", "-A", "--chunk-size=2", "-o", "name"]);
    assert_eq!(out.lines().count(), 6, "{out}");
}

#[test]
fn watch_sees_changes_made_by_another_kubectl() {
    let Some(w) = support::world() else { return };
    w.atespace("team-a");
    w.atespace("team-b");
    w.actor("team-a", "x");
    let mut watch = w.spawn(&["get", "actors", "-w", "-n", "team-a"]);
    watch.expect_line("the header", |l| l.starts_with("NAME"));
    watch.expect_line("the initial row of x", |l| {
        l.starts_with("x ") && l.contains("Suspended")
    });
    w.actor("team-a", "y");
    watch.expect_line("y being created", |l| l.starts_with("y "));
    w.ok(&[
        "patch",
        "actor",
        "x",
        "-n",
        "team-a",
        "--subresource=status",
        "--type=merge",
        "-p",
        r#"{"status":{"phase":"Running"}}"#,
    ]);
    watch.expect_line("x running", |l| {
        l.starts_with("x ") && l.contains("Running")
    });
    // Another atespace is not part of this watch; the next line is about team-a again.
    w.actor("team-b", "other");
    w.ok(&["label", "actor", "y", "-n", "team-a", "seen=yes"]);
    let line = watch.expect_line("the next event", |_| true);
    assert!(
        line.starts_with("y "),
        "an event from team-b leaked into a team-a watch: {line}\n{:?}",
        watch.seen()
    );

    // A label-selected watch reports objects entering (ADDED) and leaving (DELETED) it.
    let mut gold = w.spawn(&[
        "get",
        "actors",
        "-n",
        "team-a",
        "-w",
        "-l",
        "tier=gold",
        "--output-watch-events",
    ]);
    // (Nothing matches yet, so kubectl prints nothing, not even the header, until an event.)
    w.ok(&["label", "actor", "x", "-n", "team-a", "tier=gold"]);
    gold.expect_line("x entering the selection", |l| {
        l.split_whitespace().take(2).eq(["ADDED", "x"])
    });
    w.ok(&[
        "label",
        "actor",
        "x",
        "-n",
        "team-a",
        "tier=silver",
        "--overwrite",
    ]);
    gold.expect_line("x leaving the selection", |l| {
        l.split_whitespace().take(2).eq(["DELETED", "x"])
    });
    drop(gold);

    // A watch of one object sees only that object.
    let mut one = w.spawn(&["get", "actor", "x", "-n", "team-a", "-w", "-o", "name"]);
    one.expect_line("x", |l| l == "actor.substrate.ate.dev/x");
    w.ok(&["annotate", "actor", "y", "-n", "team-a", "ignored=1"]);
    w.ok(&["annotate", "actor", "x", "-n", "team-a", "seen=1"]);
    let line = one.expect_line("the next event", |_| true);
    assert_eq!(line, "actor.substrate.ate.dev/x", "{:?}", one.seen());

    // An all-atespace watch with event types, as JSON.
    let mut all = w.spawn(&[
        "get",
        "actors",
        "-A",
        "-w",
        "--output-watch-events",
        "-o",
        "json",
    ]);
    let mut events = Vec::new();
    let deleted = loop {
        // One compact JSON event per line.
        let line = all.expect_line("a JSON watch event", |l| l.starts_with('{'));
        let ev: Value = serde_json::from_str(&line).unwrap_or_else(|e| panic!("{e}: {line}"));
        events.push((
            ev["type"].as_str().unwrap_or_default().to_string(),
            ev["object"]["metadata"]["name"]
                .as_str()
                .unwrap_or_default()
                .to_string(),
        ));
        if events.len() == 3 {
            w.ok(&["delete", "actor", "other", "-n", "team-b"]);
        }
        if events.len() > 3 {
            break events.last().cloned();
        }
    };
    assert_eq!(
        sorted(
            events[..3]
                .iter()
                .map(|(t, n)| format!("{t} {n}"))
                .collect()
        ),
        strs(&["ADDED other", "ADDED x", "ADDED y"])
    );
    assert_eq!(deleted, Some(("DELETED".to_string(), "other".to_string())));
}

#[test]
fn wait_for_condition_and_for_delete() {
    let Some(w) = support::world() else { return };
    w.atespace("team-a");
    w.actor("team-a", "x");
    w.actor("team-a", "never");

    // A wait started before the condition is set returns once it is.
    let waiting = w.spawn(&[
        "wait",
        "--for=condition=Ready",
        "actor/x",
        "-n",
        "team-a",
        "--timeout=20s",
    ]);
    let out = w.ok(&[
        "patch",
        "actor",
        "x",
        "-n",
        "team-a",
        "--subresource=status",
        "--type=merge",
        "-p",
        &ready_patch("True"),
    ]);
    assert_eq!(out.trim(), "actor.substrate.ate.dev/x patched");
    let done = waiting.wait_exit();
    assert!(done.success(), "{done}");
    assert_eq!(
        done.stdout.trim(),
        "actor.substrate.ate.dev/x condition met"
    );
    // And one started after returns at once.
    assert_eq!(
        w.ok(&[
            "wait",
            "--for=condition=Ready",
            "actor/x",
            "-n",
            "team-a",
            "--timeout=20s"
        ])
        .trim(),
        "actor.substrate.ate.dev/x condition met"
    );
    assert_eq!(
        w.ok(&[
            "wait",
            "--for=jsonpath={.status.conditions[0].reason}=Test",
            "actor/x",
            "-n",
            "team-a",
            "--timeout=20s"
        ])
        .trim(),
        "actor.substrate.ate.dev/x condition met"
    );

    // Ready=False, or no condition at all: the wait times out with a non-zero exit.
    w.ok(&[
        "patch",
        "actor",
        "never",
        "-n",
        "team-a",
        "--subresource=status",
        "--type=merge",
        "-p",
        &ready_patch("False"),
    ]);
    let out = w.kubectl(&[
        "wait",
        "--for=condition=Ready",
        "actor/never",
        "-n",
        "team-a",
        "--timeout=2s",
    ]);
    assert!(!out.success(), "{out}");
    assert_contains(
        &out.stderr,
        "timed out waiting for the condition on actors/never",
    );
    w.actor("team-a", "bare");
    let out = w.kubectl(&[
        "wait",
        "--for=condition=Ready",
        "actor/bare",
        "-n",
        "team-a",
        "--timeout=1s",
    ]);
    assert!(!out.success(), "{out}");
    assert_contains(
        &out.stderr,
        "timed out waiting for the condition on actors/bare",
    );

    // --for=delete, across a finalizer.
    w.create(&actor_yaml("team-a", "held", "").replace(
        "  namespace: team-a\n",
        "  namespace: team-a\n  finalizers: [example.com/hold]\n",
    ));
    let waiting = w.spawn(&[
        "wait",
        "--for=delete",
        "actor/held",
        "-n",
        "team-a",
        "--timeout=20s",
    ]);
    w.ok(&["delete", "actor", "held", "-n", "team-a", "--wait=false"]);
    w.ok(&[
        "patch",
        "actor",
        "held",
        "-n",
        "team-a",
        "--type=merge",
        "-p",
        r#"{"metadata":{"finalizers":null}}"#,
    ]);
    let done = waiting.wait_exit();
    assert!(done.success(), "{done}");
    assert_eq!(
        done.stdout.trim(),
        "actor.substrate.ate.dev/held condition met"
    );
    // Waiting for the deletion of something already gone succeeds at once.
    let out = w.kubectl(&[
        "wait",
        "--for=delete",
        "actor/held",
        "-n",
        "team-a",
        "--timeout=5s",
    ]);
    assert!(out.success(), "{out}");
}

const APPLY_V1: &str = "apiVersion: substrate.ate.dev/v1alpha1
kind: Atespace
metadata:
  name: team-c
spec:
  displayName: Team C
---
apiVersion: substrate.ate.dev/v1alpha1
kind: Actor
metadata:
  name: a
  namespace: team-c
spec:
  template:
    name: counter
---
apiVersion: substrate.ate.dev/v1alpha1
kind: Actor
metadata:
  name: b
  namespace: team-c
  labels:
    app: b
spec:
  template:
    name: counter
  idleTimeout: 5m
";

#[test]
fn apply_and_diff() {
    let Some(w) = support::world() else { return };
    let v1 = w.file("v1.yaml", APPLY_V1);
    let out = w.ok(&["apply", "-f", path_str(&v1)]);
    assert_eq!(
        out.lines().collect::<Vec<_>>(),
        [
            "atespace.substrate.ate.dev/team-c created",
            "actor.substrate.ate.dev/a created",
            "actor.substrate.ate.dev/b created"
        ]
    );
    assert_eq!(
        w.jsonpath(
            "atespace",
            "team-c",
            "",
            "{.spec.displayName} {.status.phase}"
        ),
        "Team C Active"
    );
    assert_contains(
        &w.jsonpath("actor", "a", "team-c", "{.metadata.annotations}"),
        "kubectl.kubernetes.io/last-applied-configuration",
    );
    let rv_a = w.jsonpath("actor", "a", "team-c", "{.metadata.resourceVersion}");
    let rv_b = w.jsonpath("actor", "b", "team-c", "{.metadata.resourceVersion}");

    // Applying the same file again changes nothing, not even a resourceVersion.
    let out = w.ok(&["apply", "-f", path_str(&v1)]);
    assert_eq!(
        out.lines().collect::<Vec<_>>(),
        [
            "atespace.substrate.ate.dev/team-c unchanged",
            "actor.substrate.ate.dev/a unchanged",
            "actor.substrate.ate.dev/b unchanged"
        ]
    );
    assert_eq!(
        w.jsonpath("actor", "a", "team-c", "{.metadata.resourceVersion}"),
        rv_a
    );
    // Nothing to diff: exit 0, no output.
    let out = w.kubectl(&["diff", "-f", path_str(&v1)]);
    assert_eq!(out.code(), Some(0), "{out}");
    assert_eq!(out.stdout.trim(), "");

    // v2 changes a's spec and only b's labels.
    let v2 = w.file(
        "v2.yaml",
        &APPLY_V1
            .replace(
                "    name: counter\n---",
                "    name: counter\n  activation: Always\n---",
            )
            .replace("    app: b\n", "    app: b\n    tier: gold\n"),
    );
    let rv_before = w.actors_rv();
    let out = w.kubectl(&["diff", "-f", path_str(&v2)]);
    assert_eq!(
        out.code(),
        Some(1),
        "diff exits 1 when there are differences:\n{out}"
    );
    assert_contains(&out.stdout, "-  activation: OnDemand");
    assert_contains(&out.stdout, "+  activation: Always");
    assert_contains(&out.stdout, "+    tier: gold");
    assert_contains(&out.stdout, "-  generation: 1");
    assert_contains(&out.stdout, "+  generation: 2");
    assert_eq!(
        w.actors_rv(),
        rv_before,
        "kubectl diff (a server-side dry run) wrote nothing"
    );
    assert_eq!(
        w.jsonpath("actor", "a", "team-c", "{.spec.activation}"),
        "OnDemand"
    );

    let out = w.ok(&["apply", "-f", path_str(&v2)]);
    assert_eq!(
        out.lines().collect::<Vec<_>>(),
        [
            "atespace.substrate.ate.dev/team-c unchanged",
            "actor.substrate.ate.dev/a configured",
            "actor.substrate.ate.dev/b configured"
        ]
    );
    assert_eq!(
        w.jsonpath(
            "actor",
            "a",
            "team-c",
            "{.spec.activation} {.metadata.generation}"
        ),
        "Always 2"
    );
    assert_ne!(
        w.jsonpath("actor", "a", "team-c", "{.metadata.resourceVersion}"),
        rv_a
    );
    // b: metadata only, so the generation stays while the resourceVersion moves.
    assert_eq!(
        w.jsonpath(
            "actor",
            "b",
            "team-c",
            "{.metadata.labels.tier} {.metadata.generation}"
        ),
        "gold 1"
    );
    assert_ne!(
        w.jsonpath("actor", "b", "team-c", "{.metadata.resourceVersion}"),
        rv_b
    );
    let out = w.kubectl(&["diff", "-f", path_str(&v2)]);
    assert_eq!(out.code(), Some(0), "{out}");
    assert_eq!(out.stdout.trim(), "");

    // Removing a field from the file removes it from the object (three-way merge).
    let v3 = w.file("v3.yaml", &APPLY_V1.replace("  idleTimeout: 5m\n", ""));
    w.ok(&["apply", "-f", path_str(&v3)]);
    assert_eq!(
        w.jsonpath(
            "actor",
            "b",
            "team-c",
            "{.spec.idleTimeout}|{.metadata.labels.tier}|{.metadata.generation}"
        ),
        "||2"
    );
    assert_eq!(
        w.jsonpath("actor", "a", "team-c", "{.spec.activation}"),
        "OnDemand"
    );

    // diff of an object that does not exist yet: a server-side dry-run create.
    let rv = w.actors_rv();
    let fresh = w.file("fresh.yaml", &actor_yaml("team-c", "fresh", ""));
    let out = w.kubectl(&["diff", "-f", path_str(&fresh)]);
    assert_eq!(out.code(), Some(1), "{out}");
    assert_contains(&out.stdout, "+  name: fresh");
    assert_contains(&out.stdout, "+  activation: OnDemand");
    assert_eq!(w.actors_rv(), rv);
    assert!(w.get_json("actor", "fresh", "team-c").is_none());

    // Applying the template change of an existing actor is refused; nothing is written.
    let rv = w.actors_rv();
    let bad = w.file(
        "bad.yaml",
        &actor_yaml("team-c", "a", "").replace("name: counter", "name: other"),
    );
    let out = w.kubectl(&["apply", "-f", path_str(&bad)]);
    assert!(!out.success(), "{out}");
    assert_contains(&out.stderr, "field is immutable");
    assert_eq!(w.actors_rv(), rv);
}

#[test]
fn generation_and_resource_version_rules() {
    let Some(w) = support::world() else { return };
    w.atespace("team-a");
    w.actor("team-a", "g");
    let meta = |w: &World| -> (String, String) {
        let o = w.get_json("actor", "g", "team-a").expect("actor g");
        (
            o["metadata"]["generation"].to_string(),
            o["metadata"]["resourceVersion"]
                .as_str()
                .unwrap_or_default()
                .to_string(),
        )
    };
    let (gen0, rv0) = meta(&w);
    assert_eq!(gen0, "1");

    // Status writes bump the resourceVersion, never the generation, and ignore spec changes.
    w.ok(&[
        "patch",
        "actor",
        "g",
        "-n",
        "team-a",
        "--subresource=status",
        "--type=merge",
        "-p",
        r#"{"status":{"phase":"Running","observedGeneration":1},"spec":{"activation":"Always"}}"#,
    ]);
    let (gen1, rv1) = meta(&w);
    assert_eq!(gen1, "1");
    assert_ne!(rv1, rv0);
    assert_eq!(
        w.jsonpath("actor", "g", "team-a", "{.status.phase} {.spec.activation}"),
        "Running OnDemand"
    );
    // ...and the main resource ignores status.
    w.ok(&[
        "patch",
        "actor",
        "g",
        "-n",
        "team-a",
        "--type=merge",
        "-p",
        r#"{"status":{"phase":"Failed"}}"#,
    ]);
    assert_eq!(
        w.jsonpath("actor", "g", "team-a", "{.status.phase}"),
        "Running"
    );
    assert_eq!(
        meta(&w),
        (gen1.clone(), rv1.clone()),
        "a patch that only touches status on the main resource is a no-op"
    );

    // A no-op merge patch keeps the resourceVersion.
    let out = w.ok(&[
        "patch",
        "actor",
        "g",
        "-n",
        "team-a",
        "--type=merge",
        "-p",
        r#"{"spec":{"activation":"OnDemand"}}"#,
    ]);
    assert_eq!(out.trim(), "actor.substrate.ate.dev/g patched (no change)");
    assert_eq!(meta(&w), (gen1.clone(), rv1.clone()));
    // Metadata changes move the resourceVersion only.
    w.ok(&["annotate", "actor", "g", "-n", "team-a", "a=b"]);
    let (gen2, rv2) = meta(&w);
    assert_eq!(gen2, "1");
    assert_ne!(rv2, rv1);
    // Spec changes bump the generation by one.
    w.ok(&[
        "patch",
        "actor",
        "g",
        "-n",
        "team-a",
        "--type=merge",
        "-p",
        r#"{"spec":{"activation":"Always"}}"#,
    ]);
    let (gen3, rv3) = meta(&w);
    assert_eq!(gen3, "2");
    assert!(
        rv3.parse::<u64>().unwrap() > rv2.parse::<u64>().unwrap(),
        "{rv3} > {rv2}"
    );
    // System fields sent by a client are ignored; a different uid is refused (422, as
    // Kubernetes: the uid is immutable).
    w.ok(&[
        "patch",
        "actor",
        "g",
        "-n",
        "team-a",
        "--type=merge",
        "-p",
        r#"{"metadata":{"generation":40,"creationTimestamp":"2000-01-01T00:00:00Z"}}"#,
    ]);
    let (code, err) = w.fail_http(
        &[
            "patch",
            "actor",
            "g",
            "-n",
            "team-a",
            "--type=merge",
            "-p",
            r#"{"metadata":{"uid":"forged"}}"#,
        ],
        None,
    );
    assert_eq!(code, Some(422), "{err}");
    assert_contains(
        &err,
        "metadata.uid: Invalid value: \"forged\": field is immutable",
    );
    let o = w.get_json("actor", "g", "team-a").expect("g");
    assert_eq!(o["metadata"]["generation"], 2);
    assert_ne!(o["metadata"]["uid"], "forged");
    assert_ne!(o["metadata"]["creationTimestamp"], "2000-01-01T00:00:00Z");
    // A patch carrying a stale resourceVersion is a conflict.
    let (code, err) = w.fail_http(
        &["patch", "actor", "g", "-n", "team-a", "--type=merge", "-p", &format!(r#"{{"metadata":{{"resourceVersion":"{rv0}"}},"spec":{{"activation":"Suspended"}}}}"#)],
        None,
    );
    assert_eq!(code, Some(409), "{err}");
    assert_contains(
        &err,
        "the object has been modified; please apply your changes to the latest version and try again",
    );
    assert_eq!(
        w.jsonpath("actor", "g", "team-a", "{.spec.activation}"),
        "Always"
    );
}

#[test]
fn finalizers_hold_deletion_until_removed() {
    let Some(w) = support::world() else { return };
    w.atespace("team-a");
    w.create(&actor_yaml("team-a", "f", "").replace(
        "  namespace: team-a\n",
        "  namespace: team-a\n  finalizers: [example.com/hold]\n",
    ));
    let out = w.ok(&["delete", "actor", "f", "-n", "team-a", "--wait=false"]);
    assert_eq!(out.trim(), "actor.substrate.ate.dev \"f\" deleted");
    let o = w
        .get_json("actor", "f", "team-a")
        .expect("f is held by its finalizer");
    assert!(o["metadata"]["deletionTimestamp"].is_string(), "{o}");
    assert_eq!(o["metadata"]["finalizers"], json!(["example.com/hold"]));
    // Deleting again is harmless; adding a finalizer while terminating is refused.
    w.ok(&["delete", "actor", "f", "-n", "team-a", "--wait=false"]);
    let rv = w.actors_rv();
    let (code, err) = w.fail_http(
        &[
            "patch",
            "actor",
            "f",
            "-n",
            "team-a",
            "--type=json",
            "-p",
            r#"[{"op":"add","path":"/metadata/finalizers/-","value":"example.com/more"}]"#,
        ],
        None,
    );
    assert_eq!(code, Some(422), "{err}");
    assert_contains(
        &err,
        "no new finalizers can be added if the object is being deleted",
    );
    assert_eq!(w.actors_rv(), rv);
    // A plain `kubectl delete` (which waits) times out while the finalizer is there.
    let out = w.kubectl(&["delete", "actor", "f", "-n", "team-a", "--timeout=2s"]);
    assert!(!out.success(), "{out}");
    assert!(w.get_json("actor", "f", "team-a").is_some());

    let out = w.ok(&[
        "patch",
        "actor",
        "f",
        "-n",
        "team-a",
        "--type=merge",
        "-p",
        r#"{"metadata":{"finalizers":null}}"#,
    ]);
    assert_eq!(out.trim(), "actor.substrate.ate.dev/f patched");
    assert!(
        w.get_json("actor", "f", "team-a").is_none(),
        "removing the last finalizer deletes the object"
    );
    let (code, _) = w.fail_http(&["get", "actor", "f", "-n", "team-a"], None);
    assert_eq!(code, Some(404));
}

#[test]
fn atespace_deletion_cascades_and_refuses_new_content_while_terminating() {
    let Some(w) = support::world() else { return };
    // Cascade: kubectl waits until the atespace is gone; its actors go first.
    w.atespace("team-x");
    w.actor("team-x", "x1");
    w.actor("team-x", "x2");
    w.atespace("team-keep");
    w.actor("team-keep", "k1");
    let out = w.ok(&["delete", "atespace", "team-x", "--timeout=30s"]);
    assert_eq!(out.trim(), "atespace.substrate.ate.dev \"team-x\" deleted");
    assert!(w.get_json("atespace", "team-x", "").is_none());
    assert!(w.names("actors", "team-x").is_empty());
    assert_eq!(
        w.names("actors", "team-keep"),
        strs(&["k1"]),
        "other atespaces are untouched"
    );
    let (code, err) = w.fail_http(&["get", "atespace", "team-x"], None);
    assert_eq!(code, Some(404));
    assert_eq!(
        err.trim(),
        "Error from server (NotFound): atespaces.substrate.ate.dev \"team-x\" not found"
    );

    // Terminating: an actor with a finalizer holds the atespace.
    w.atespace("team-y");
    w.create(&actor_yaml("team-y", "h", "").replace(
        "  namespace: team-y\n",
        "  namespace: team-y\n  finalizers: [example.com/hold]\n",
    ));
    w.ok(&["delete", "atespace", "team-y", "--wait=false"]);
    assert_eq!(
        w.jsonpath("atespace", "team-y", "", "{.status.phase}"),
        "Terminating"
    );
    assert!(
        w.get_json("atespace", "team-y", "").expect("team-y")["metadata"]["deletionTimestamp"]
            .is_string()
    );
    let out = w.ok(&["get", "atespaces"]);
    let row = rows(&out)
        .into_iter()
        .find(|r| r[0] == "team-y")
        .expect("team-y row");
    assert_eq!(row[1], "Terminating", "{out}");
    // The controller deletes h (it stays while its finalizer does).
    eventually("h to get a deletionTimestamp", || {
        w.get_json("actor", "h", "team-y").and_then(|o| {
            o["metadata"]["deletionTimestamp"]
                .as_str()
                .map(str::to_string)
        })
    });
    let rv = w.actors_rv();
    let (code, err) = w.fail_http(
        &["create", "-f", "-"],
        Some(&actor_yaml("team-y", "new", "")),
    );
    assert_eq!(code, Some(403), "{err}");
    assert_contains(&err, "Error from server (Forbidden)");
    assert_contains(
        &err,
        "unable to create new content in atespace team-y because it is being terminated",
    );
    assert_eq!(w.actors_rv(), rv, "nothing was written");
    assert_eq!(w.names("actors", "team-y"), strs(&["h"]));
    // Deleting a terminating atespace again is fine; it stays Terminating.
    w.ok(&["delete", "atespace", "team-y", "--wait=false"]);
    assert_eq!(
        w.jsonpath("atespace", "team-y", "", "{.status.phase}"),
        "Terminating"
    );

    // Release: the actor goes, then the atespace.
    w.ok(&[
        "patch",
        "actor",
        "h",
        "-n",
        "team-y",
        "--type=merge",
        "-p",
        r#"{"metadata":{"finalizers":null}}"#,
    ]);
    let out = w.kubectl(&["wait", "--for=delete", "atespace/team-y", "--timeout=20s"]);
    assert!(out.success(), "{out}");
    assert!(w.get_json("atespace", "team-y", "").is_none());
    // The name can be used again.
    w.atespace("team-y");
    w.actor("team-y", "again");
    assert_eq!(
        w.jsonpath("atespace", "team-y", "", "{.status.phase}"),
        "Active"
    );
}

#[test]
fn delete_collections() {
    let Some(w) = support::world() else { return };
    w.atespace("team-a");
    w.atespace("team-b");
    for (name, group) in [
        ("d1", "one"),
        ("d2", "one"),
        ("d3", "two"),
        ("d4", ""),
        ("d5", "two"),
    ] {
        let labels = if group.is_empty() {
            String::new()
        } else {
            format!("  labels: {{group: {group}}}\n")
        };
        w.create(&actor_yaml("team-a", name, "").replace(
            "  namespace: team-a\n",
            &format!("  namespace: team-a\n{labels}"),
        ));
    }
    w.actor("team-b", "d1");

    let out = w.ok(&["delete", "actors", "-l", "group=one", "-n", "team-a"]);
    assert_eq!(
        sorted(out.lines().map(str::to_string).collect()),
        strs(&[
            "actor.substrate.ate.dev \"d1\" deleted",
            "actor.substrate.ate.dev \"d2\" deleted"
        ])
    );
    assert_eq!(w.names("actors", "team-a"), strs(&["d3", "d4", "d5"]));

    // DELETE on the collection (what client-go's DeleteCollection sends).
    let r = w.http(
        "DELETE",
        "/apis/substrate.ate.dev/v1alpha1/namespaces/team-a/actors?labelSelector=group%3Dtwo",
        None,
    );
    assert_eq!(r.code, 200, "{}", r.body);
    let deleted: Vec<String> = sorted(
        r.json()["items"]
            .as_array()
            .expect("items")
            .iter()
            .map(|o| {
                o["metadata"]["name"]
                    .as_str()
                    .unwrap_or_default()
                    .to_string()
            })
            .collect(),
    );
    assert_eq!(deleted, strs(&["d3", "d5"]));
    assert_eq!(w.names("actors", "team-a"), strs(&["d4"]));
    // dry-run deletes nothing.
    let rv = w.actors_rv();
    let r = w.http(
        "DELETE",
        "/apis/substrate.ate.dev/v1alpha1/namespaces/team-a/actors?dryRun=All",
        None,
    );
    assert_eq!(r.code, 200, "{}", r.body);
    assert_eq!(w.actors_rv(), rv);
    assert_eq!(w.names("actors", "team-a"), strs(&["d4"]));

    let out = w.ok(&["delete", "actors", "--all", "-n", "team-a"]);
    assert_eq!(out.trim(), "actor.substrate.ate.dev \"d4\" deleted");
    assert!(w.names("actors", "team-a").is_empty());
    assert_eq!(
        w.names("actors", "team-b"),
        strs(&["d1"]),
        "--all is scoped to the atespace"
    );
    let out = w.kubectl(&["delete", "actors", "--all", "-n", "team-a"]);
    assert!(out.success(), "{out}");
    assert_contains(&out.stdout, "No resources found");
}

#[test]
fn server_side_dry_run_writes_nothing() {
    let Some(w) = support::world() else { return };
    w.atespace("team-a");
    let rv = w.actors_rv();
    let out = w.stdin(
        &actor_yaml("team-a", "dry", ""),
        &["create", "--dry-run=server", "-o", "yaml"],
    );
    assert!(out.success(), "{out}");
    assert_contains(&out.stdout, "name: dry");
    assert_contains(&out.stdout, "activation: OnDemand");
    assert_contains(&out.stdout, "phase: Suspended");
    assert_contains(&out.stdout, "generation: 1");
    assert_not_contains(&out.stdout, "resourceVersion");
    assert!(w.get_json("actor", "dry", "team-a").is_none());
    assert_eq!(w.actors_rv(), rv);
    // Validation still runs in a dry run.
    let out = w.stdin(
        &actor_yaml("team-a", "dry", "  activation: Sometimes\n"),
        &["create", "--dry-run=server"],
    );
    assert!(!out.success(), "{out}");
    assert_contains(&out.stderr, "Unsupported value: \"Sometimes\"");

    // Dry-run patch, apply, delete of a real object change nothing.
    w.actor("team-a", "real");
    let rv = w.actors_rv();
    let out = w.ok(&[
        "patch",
        "actor",
        "real",
        "-n",
        "team-a",
        "--type=merge",
        "--dry-run=server",
        "-p",
        r#"{"spec":{"activation":"Always"}}"#,
        "-o",
        "jsonpath={.spec.activation}",
    ]);
    assert_eq!(out, "Always");
    let out = w.ok(&[
        "delete",
        "actor",
        "real",
        "-n",
        "team-a",
        "--dry-run=server",
    ]);
    assert_eq!(
        out.trim(),
        "actor.substrate.ate.dev \"real\" deleted (server dry run)"
    );
    w.apply_stdin(
        &actor_yaml("team-a", "real", "  activation: Suspended\n"),
        &["--dry-run=server"],
    );
    w.apply_stdin(&actor_yaml("team-a", "applied", ""), &["--dry-run=server"]);
    assert_eq!(w.actors_rv(), rv);
    assert_eq!(
        w.jsonpath("actor", "real", "team-a", "{.spec.activation}"),
        "OnDemand"
    );
    assert_eq!(w.names("actors", "team-a"), strs(&["real"]));
    // A dry-run create of an existing name is still a conflict.
    let (code, err) = w.fail_http(
        &["create", "--dry-run=server", "-f", "-"],
        Some(&actor_yaml("team-a", "real", "")),
    );
    assert_eq!(code, Some(409), "{err}");
    assert_contains(&err, "Error from server (AlreadyExists)");
}

/// Invalid input through kubectl: exact code, message, and no write.
#[test]
fn bad_input_through_kubectl() {
    let Some(w) = support::world() else { return };
    w.atespace("team-a");
    w.actor("team-a", "x");
    let actors_rv = w.actors_rv();
    let atespaces_rv = w.atespaces_rv();
    let create = |yaml: &str| w.fail_http(&["create", "-f", "-"], Some(yaml));
    let check_nothing_written = |what: &str| {
        assert_eq!(w.actors_rv(), actors_rv, "{what}: actors were written");
        assert_eq!(
            w.atespaces_rv(),
            atespaces_rv,
            "{what}: atespaces were written"
        );
    };

    // 1. Uppercase name.
    let (code, err) = create(&actor_yaml("team-a", "Bad", ""));
    assert_eq!(code, Some(422), "{err}");
    assert_contains(
        &err,
        "The Actor \"Bad\" is invalid: metadata.name: Invalid value: \"Bad\": a lowercase RFC 1123 label must consist of lower case alphanumeric characters or '-'",
    );
    check_nothing_written("uppercase");
    // 2. Too long.
    let long = "a".repeat(64);
    let (code, err) = create(&actor_yaml("team-a", &long, ""));
    assert_eq!(code, Some(422), "{err}");
    assert_contains(&err, "must be no more than 63 characters");
    check_nothing_written("too long");
    // 3. A dot: actors are DNS labels, not subdomains.
    let (code, err) = create(&actor_yaml("team-a", "a.b", ""));
    assert_eq!(code, Some(422), "{err}");
    assert_contains(
        &err,
        "metadata.name: Invalid value: \"a.b\": a lowercase RFC 1123 label",
    );
    check_nothing_written("dot");
    // ...and for an atespace.
    let (code, err) = create(&atespace_yaml("Team"));
    assert_eq!(code, Some(422), "{err}");
    assert_contains(&err, "The Atespace \"Team\" is invalid");
    check_nothing_written("uppercase atespace");
    // 4. Reserved prefix.
    let (code, err) = create(&atespace_yaml("ate-mine"));
    assert_eq!(code, Some(403), "{err}");
    assert_contains(&err, "Error from server (Forbidden)");
    assert_contains(
        &err,
        "atespaces.substrate.ate.dev \"ate-mine\" is forbidden: names starting with \"ate-\" are reserved for the system",
    );
    check_nothing_written("reserved");
    // 5. Unknown field, strict (kubectl's default).
    let (code, err) = create(&actor_yaml("team-a", "u", "  foo: bar\n"));
    assert_eq!(code, Some(400), "{err}");
    assert_contains(&err, "Error from server (BadRequest)");
    assert_contains(&err, "strict decoding error: unknown field \"spec.foo\"");
    check_nothing_written("unknown field");
    // 6. Bad enum.
    let (code, err) = create(&actor_yaml("team-a", "e", "  activation: Sometimes\n"));
    assert_eq!(code, Some(422), "{err}");
    assert_contains(
        &err,
        "The Actor \"e\" is invalid: spec.activation: Unsupported value: \"Sometimes\": supported values: \"OnDemand\", \"Always\", \"Suspended\"",
    );
    check_nothing_written("enum");
    // 7. Bad idleTimeout.
    let (code, err) = create(&actor_yaml("team-a", "t", "  idleTimeout: 5 parsecs\n"));
    assert_eq!(code, Some(422), "{err}");
    assert_contains(&err, "spec.idleTimeout: Invalid value: \"5 parsecs\"");
    check_nothing_written("idleTimeout");
    // 8. Template without a name; no spec at all.
    let (code, err) = create(
        &actor_yaml("team-a", "n", "").replace("    name: counter\n", "    namespace: team-a\n"),
    );
    assert_eq!(code, Some(422), "{err}");
    assert_contains(&err, "spec.template.name: Required value");
    check_nothing_written("template name");
    let (code, err) = create(
        "apiVersion: substrate.ate.dev/v1alpha1\nkind: Actor\nmetadata:\n  name: nospec\n  namespace: team-a\n",
    );
    assert_eq!(code, Some(422), "{err}");
    assert_contains(&err, "spec: Required value");
    check_nothing_written("no spec");
    // 9. Missing atespace.
    let (code, err) = create(&actor_yaml("nope", "x", ""));
    assert_eq!(code, Some(404), "{err}");
    assert_contains(&err, "Error from server (NotFound)");
    assert_contains(&err, "atespaces.substrate.ate.dev \"nope\" not found");
    check_nothing_written("missing atespace");
    // 10. Already exists.
    let (code, err) = create(&actor_yaml("team-a", "x", "  activation: Always\n"));
    assert_eq!(code, Some(409), "{err}");
    assert_contains(&err, "Error from server (AlreadyExists)");
    assert_contains(&err, "actors.substrate.ate.dev \"x\" already exists");
    check_nothing_written("already exists");
    assert_eq!(
        w.jsonpath("actor", "x", "team-a", "{.spec.activation}"),
        "OnDemand"
    );
    // 11. Stale resourceVersion on replace.
    let stale = w.ok(&["get", "actor", "x", "-n", "team-a", "-o", "yaml"]);
    w.ok(&["label", "actor", "x", "-n", "team-a", "bump=1"]);
    let actors_rv = w.actors_rv();
    let (code, err) = w.fail_http(
        &["replace", "-f", "-"],
        Some(&stale.replace("activation: OnDemand", "activation: Always")),
    );
    assert_eq!(code, Some(409), "{err}");
    assert_contains(&err, "Error from server (Conflict)");
    assert_contains(
        &err,
        "Operation cannot be fulfilled on actors.substrate.ate.dev \"x\": the object has been modified; please apply your changes to the latest version and try again",
    );
    assert_eq!(w.actors_rv(), actors_rv, "stale replace wrote nothing");
    // 12. Immutable template.
    let (code, err) = w.fail_http(
        &[
            "patch",
            "actor",
            "x",
            "-n",
            "team-a",
            "--type=merge",
            "-p",
            r#"{"spec":{"template":{"name":"other"}}}"#,
        ],
        None,
    );
    assert_eq!(code, Some(422), "{err}");
    assert_contains(
        &err,
        "The Actor \"x\" is invalid: spec.template: Invalid value:",
    );
    assert_contains(&err, "field is immutable");
    assert_eq!(w.actors_rv(), actors_rv);
    // 13. Missing actor.
    let (code, err) = w.fail_http(&["get", "actor", "missing", "-n", "team-a"], None);
    assert_eq!(code, Some(404), "{err}");
    assert_eq!(
        err.trim(),
        "Error from server (NotFound): actors.substrate.ate.dev \"missing\" not found"
    );
    let (code, err) = w.fail_http(&["delete", "actor", "missing", "-n", "team-a"], None);
    assert_eq!(code, Some(404), "{err}");
    assert_contains(&err, "actors.substrate.ate.dev \"missing\" not found");
    // 14. Bad label selector.
    let (code, err) = w.fail_http(
        &["get", "actors", "-n", "team-a", "-l", "tier in (gold"],
        None,
    );
    assert_eq!(code, Some(400), "{err}");
    assert_contains(&err, "Error from server (BadRequest)");
    assert_contains(&err, "unable to parse requirement");
    // 15. Unsupported field selector.
    let (code, err) = w.fail_http(
        &[
            "get",
            "actors",
            "-n",
            "team-a",
            "--field-selector",
            "spec.foo=bar",
        ],
        None,
    );
    assert_eq!(code, Some(400), "{err}");
    assert_contains(&err, "Error from server (BadRequest)");
    assert_contains(&err, "field label not supported: spec.foo");
    // 16. Strategic merge patch (kubectl patch's default).
    let (code, err) = w.fail_http(
        &[
            "patch",
            "actor",
            "x",
            "-n",
            "team-a",
            "-p",
            r#"{"metadata":{"labels":{"s":"1"}}}"#,
        ],
        None,
    );
    assert_eq!(code, Some(415), "{err}");
    assert_contains(
        &err,
        "application/strategic-merge-patch+json is not supported by substrate.ate.dev/v1alpha1, Kind=Actor",
    );
    // 17. Wrong kind for the endpoint... an Actor under the atespaces URL.
    let (code, err) = w.fail_http(
        &[
            "replace",
            "--raw",
            "/apis/substrate.ate.dev/v1alpha1/atespaces/team-a",
            "-f",
            "-",
        ],
        Some(&actor_json("team-a", "x")),
    );
    assert_eq!(code, Some(400), "{err}");
    assert_contains(
        &err,
        "the kind in the data (Actor) does not match the expected kind (Atespace)",
    );
    assert_eq!(w.actors_rv(), actors_rv);
    assert_eq!(w.atespaces_rv(), atespaces_rv);

    // Unknown fields with --validate=false are pruned, not stored.
    let out = w.stdin(
        &actor_yaml("team-a", "pruned", "  foo: bar\n"),
        &["create", "--validate=false"],
    );
    assert!(out.success(), "{out}");
    let o = w.get_json("actor", "pruned", "team-a").expect("pruned");
    assert!(o["spec"].get("foo").is_none(), "{o}");
    assert_eq!(o["spec"]["template"]["name"], "counter");
    // --validate=warn creates and warns.
    let out = w.stdin(
        &actor_yaml("team-a", "warned", "  foo: bar\n"),
        &["create", "--validate=warn"],
    );
    assert!(out.success(), "{out}");
    assert_contains(&out.stderr, "unknown field \"spec.foo\"");
    assert!(
        w.get_json("actor", "warned", "team-a").expect("warned")["spec"]
            .get("foo")
            .is_none()
    );
}

/// Invalid requests kubectl cannot send, through curl: exact code, message, and no write.
#[test]
fn bad_input_over_http() {
    let Some(w) = support::world() else { return };
    w.atespace("team-a");
    let actors = "/apis/substrate.ate.dev/v1alpha1/namespaces/team-a/actors";
    let rv = w.actors_rv();
    let good = json!({"apiVersion": "substrate.ate.dev/v1alpha1", "kind": "Actor", "metadata": {"name": "ok"}, "spec": {"template": {"name": "counter"}}});

    // Oversized body (> 3 MiB): 413 before decoding.
    let mut big = good.clone();
    big["metadata"]["name"] = json!("big");
    big["metadata"]["annotations"] = json!({"blob": "x".repeat(3 * 1024 * 1024 + 10)});
    let body = serde_json::to_vec(&big).unwrap();
    let r = w.http("POST", actors, Some(("application/json", &body)));
    assert_eq!(r.code, 413, "{}", &r.body[..r.body.len().min(500)]);
    assert_eq!(r.json()["reason"], "RequestEntityTooLarge");
    assert_contains(&r.message(), "Request entity too large: limit is 3145728");
    // Without a Content-Length (chunked), the limit applies while reading.
    let r = w.http_as(
        &Identity::Cert("admin".into()),
        "POST",
        actors,
        Some(("application/json", &body)),
        &["Transfer-Encoding: chunked"],
    );
    assert_eq!(r.code, 413, "{}", &r.body[..r.body.len().min(500)]);
    // kubectl (HTTP/2) gets the same answer.
    let big_file = w.file("big.json", &String::from_utf8(body.clone()).unwrap());
    let (code, err) = w.fail_http(&["create", "-n", "team-a", "-f", path_str(&big_file)], None);
    assert_eq!(code, Some(413), "{err}");
    assert_contains(
        &err,
        "Error from server (RequestEntityTooLarge): error when creating",
    );
    assert_contains(&err, "Request entity too large: limit is 3145728");
    // Malformed JSON.
    let r = w.http(
        "POST",
        actors,
        Some((
            "application/json",
            b"{\"apiVersion\": \"substrate.ate.dev/v1alpha1\", \"kind\": ",
        )),
    );
    assert_eq!(r.code, 400, "{}", r.body);
    assert_eq!(r.json()["reason"], "BadRequest");
    assert_contains(&r.message(), "couldn't decode the request body as JSON");
    // Wrong content type.
    let r = w.http(
        "POST",
        actors,
        Some(("text/plain", good.to_string().as_bytes())),
    );
    assert_eq!(r.code, 415, "{}", r.body);
    assert_eq!(r.json()["reason"], "UnsupportedMediaType");
    assert_contains(
        &r.message(),
        "the body of the request was in an unknown format",
    );
    assert_contains(&r.message(), "application/json");
    // Not an object; wrong apiVersion; kind missing.
    let r = w.http("POST", actors, Some(("application/json", b"[1,2]")));
    assert_eq!(r.code, 400, "{}", r.body);
    let mut wrong = good.clone();
    wrong["apiVersion"] = json!("substrate.ate.dev/v2");
    let r = w.http(
        "POST",
        actors,
        Some(("application/json", wrong.to_string().as_bytes())),
    );
    assert_eq!(r.code, 400, "{}", r.body);
    assert_contains(
        &r.message(),
        "the API version in the data (substrate.ate.dev/v2) does not match the expected API version (substrate.ate.dev/v1alpha1)",
    );
    let mut nokind = good.clone();
    nokind.as_object_mut().unwrap().remove("kind");
    let r = w.http(
        "POST",
        actors,
        Some(("application/json", nokind.to_string().as_bytes())),
    );
    assert_eq!(r.code, 400, "{}", r.body);
    assert_contains(&r.message(), "Object 'Kind' is missing");
    // A body namespace that contradicts the URL.
    let mut other_ns = good.clone();
    other_ns["metadata"]["namespace"] = json!("team-b");
    let r = w.http(
        "POST",
        actors,
        Some(("application/json", other_ns.to_string().as_bytes())),
    );
    assert_eq!(r.code, 400, "{}", r.body);
    assert_contains(
        &r.message(),
        "the namespace of the provided object does not match the namespace sent on the request",
    );
    // resourceVersion on create.
    let mut with_rv = good.clone();
    with_rv["metadata"]["resourceVersion"] = json!("5");
    let r = w.http(
        "POST",
        actors,
        Some(("application/json", with_rv.to_string().as_bytes())),
    );
    assert_eq!(r.code, 400, "{}", r.body);
    assert_contains(
        &r.message(),
        "resourceVersion should not be set on objects to be created",
    );
    assert_eq!(w.actors_rv(), rv, "nothing was written by the bad creates");
    assert!(w.names("actors", "team-a").is_empty());

    // Patches: strategic merge is refused (415); malformed patches are 400.
    let r = w.http(
        "POST",
        actors,
        Some(("application/json", good.to_string().as_bytes())),
    );
    assert_eq!(r.code, 201, "{}", r.body);
    assert_eq!(r.json()["metadata"]["generation"], 1);
    let rv = w.actors_rv();
    let one = format!("{actors}/ok");
    let r = w.http(
        "PATCH",
        &one,
        Some((
            "application/strategic-merge-patch+json",
            br#"{"spec":{"activation":"Always"}}"#,
        )),
    );
    assert_eq!(r.code, 415, "{}", r.body);
    assert_eq!(r.json()["reason"], "UnsupportedMediaType");
    assert_contains(&r.message(), "application/merge-patch+json");
    let r = w.http(
        "PATCH",
        &one,
        Some(("application/merge-patch+json", b"{not json")),
    );
    assert_eq!(r.code, 400, "{}", r.body);
    let r = w.http(
        "PATCH",
        &one,
        Some(("application/json-patch+json", br#"{"op":"replace"}"#)),
    );
    assert_eq!(r.code, 400, "{}", r.body);
    let r = w.http("PATCH", &one, Some(("text/plain", b"{}")));
    assert_eq!(r.code, 415, "{}", r.body);
    // PUT without a resourceVersion is 422, with a name mismatch 400.
    let r = w.http(
        "PUT",
        &one,
        Some(("application/json", good.to_string().as_bytes())),
    );
    assert_eq!(r.code, 422, "{}", r.body);
    assert_contains(&r.message(), "metadata.resourceVersion");
    let mut renamed = good.clone();
    renamed["metadata"]["name"] = json!("other");
    renamed["metadata"]["resourceVersion"] = json!(rv);
    let r = w.http(
        "PUT",
        &one,
        Some(("application/json", renamed.to_string().as_bytes())),
    );
    assert_eq!(r.code, 400, "{}", r.body);
    assert_contains(&r.message(), "does not match the name on the URL");
    assert_eq!(w.actors_rv(), rv, "nothing was written by the bad updates");

    // Unknown paths and methods.
    let r = w.http(
        "GET",
        "/apis/substrate.ate.dev/v1alpha1/namespaces/team-a/nopes",
        None,
    );
    assert_eq!(r.code, 404, "{}", r.body);
    let r = w.http(
        "GET",
        "/apis/substrate.ate.dev/v1alpha1/namespaces/team-a/actors/ok/bogus",
        None,
    );
    assert_eq!(r.code, 404, "{}", r.body);
    let r = w.http("POST", &one, Some(("application/json", b"{}")));
    assert_eq!(r.code, 405, "{}", r.body);
    // Bad query parameters.
    let r = w.http("GET", &format!("{actors}?labelSelector=a%20in%20(b"), None);
    assert_eq!(r.code, 400, "{}", r.body);
    let r = w.http(
        "GET",
        &format!("{actors}?fieldSelector=spec.foo%3Dbar"),
        None,
    );
    assert_eq!(r.code, 400, "{}", r.body);
    assert_eq!(r.message(), "field label not supported: spec.foo");
    let r = w.http("GET", &format!("{actors}?continue=garbage"), None);
    assert_eq!(r.code, 400, "{}", r.body);
    let r = w.http(
        "POST",
        &format!("{actors}?dryRun=Some"),
        Some(("application/json", good.to_string().as_bytes())),
    );
    // As kube-apiserver's ValidateCreateOptions: 422 CreateOptions.
    assert_eq!(r.code, 422, "{}", r.body);
    assert_eq!(r.json()["details"]["kind"], "CreateOptions");
    assert_eq!(w.actors_rv(), rv);
}

#[test]
fn authentication_and_authorization() {
    let Some(w) = support::world() else { return };
    w.atespace("team-a");
    w.actor("team-a", "x");
    let actors = "/apis/substrate.ate.dev/v1alpha1/namespaces/team-a/actors";
    let rv = w.actors_rv();

    // No client certificate: 401 (health stays public).
    let r = w.http_as(&Identity::Anonymous, "GET", actors, None, &[]);
    assert_eq!(r.code, 401, "{}", r.body);
    assert_eq!(r.json()["reason"], "Unauthorized");
    let r = w.http_as(
        &Identity::Anonymous,
        "POST",
        actors,
        Some((
            "application/json",
            actor_yaml("team-a", "anon", "").as_bytes(),
        )),
        &[],
    );
    assert_eq!(r.code, 401, "{}", r.body);
    assert_eq!(
        w.http_as(&Identity::Anonymous, "GET", "/livez", None, &[])
            .code,
        200
    );
    let anon = w.file(
        "kubeconfig-anon",
        &std::fs::read_to_string(&w.kubeconfig)
            .unwrap()
            .lines()
            .filter(|l| !l.contains("client-certificate-data") && !l.contains("client-key-data"))
            .map(|l| {
                if l.trim() == "user:" {
                    "  user: {token: not-accepted-here}"
                } else {
                    l
                }
            })
            .collect::<Vec<_>>()
            .join("\n"),
    );
    let out = w.kubectl(&[
        "--kubeconfig",
        path_str(&anon),
        "get",
        "actors",
        "-n",
        "team-a",
    ]);
    assert!(!out.success(), "{out}");
    assert_contains(&out.stderr, "You must be logged in to the server");

    // A user without rights: 403 naming the user, the verb and the resource.
    let alice = w.issue_user("alice", &["devs"]);
    let out = w.kubectl(&[
        "--kubeconfig",
        path_str(&alice),
        "get",
        "actors",
        "-n",
        "team-a",
    ]);
    assert!(!out.success(), "{out}");
    assert_eq!(
        out.stderr.trim(),
        "Error from server (Forbidden): actors.substrate.ate.dev is forbidden: User \"alice\" cannot list resource \"actors\" in API group \"substrate.ate.dev\" in the namespace \"team-a\""
    );
    let out = w.kubectl_with(
        &["--kubeconfig", path_str(&alice), "create", "-f", "-"],
        Some(&actor_yaml("team-a", "by-alice", "")),
        &[],
    );
    assert!(!out.success(), "{out}");
    assert_contains(
        &out.stderr,
        "User \"alice\" cannot create resource \"actors\" in API group \"substrate.ate.dev\" in the namespace \"team-a\"",
    );
    let out = w.kubectl(&[
        "--kubeconfig",
        path_str(&alice),
        "delete",
        "atespace",
        "team-a",
        "--wait=false",
    ]);
    assert!(!out.success(), "{out}");
    assert_contains(
        &out.stderr,
        // One atespace by name is authorized in its own namespace (as kube's namespaces).
        "User \"alice\" cannot delete resource \"atespaces\" in API group \"substrate.ate.dev\" in the namespace \"team-a\"",
    );
    let out = w.kubectl(&[
        "--kubeconfig",
        path_str(&alice),
        "patch",
        "actor",
        "x",
        "-n",
        "team-a",
        "--subresource=status",
        "--type=merge",
        "-p",
        r#"{"status":{"phase":"Running"}}"#,
    ]);
    assert!(!out.success(), "{out}");
    assert_contains(
        &out.stderr,
        "User \"alice\" cannot get resource \"actors/status\" in API group \"substrate.ate.dev\" in the namespace \"team-a\"",
    );
    let r = w.http_as(
        &Identity::Cert("alice".into()),
        "PATCH",
        "/apis/substrate.ate.dev/v1alpha1/namespaces/team-a/actors/x/status",
        Some((
            "application/merge-patch+json",
            br#"{"status":{"phase":"Running"}}"#,
        )),
        &[],
    );
    assert_eq!(r.code, 403, "{}", r.body);
    assert_contains(
        &r.message(),
        "User \"alice\" cannot patch resource \"actors/status\"",
    );
    // Discovery is open to every authenticated user.
    assert!(
        w.kubectl(&[
            "--kubeconfig",
            path_str(&alice),
            "api-resources",
            "--api-group=substrate.ate.dev"
        ])
        .success()
    );
    let r = w.http_as(&Identity::Cert("alice".into()), "GET", actors, None, &[]);
    assert_eq!(r.code, 403, "{}", r.body);
    assert_eq!(r.json()["reason"], "Forbidden");
    assert_contains(&r.message(), "cannot list resource \"actors\"");

    // Front proxy: identity from X-Remote-* only with the front-proxy certificate.
    let proxy = Identity::Cert("front-proxy-client".into());
    let r = w.http_as(
        &proxy,
        "GET",
        actors,
        None,
        &["X-Remote-User: bob", "X-Remote-Group: system:masters"],
    );
    assert_eq!(r.code, 200, "{}", r.body);
    assert_eq!(r.json()["items"][0]["metadata"]["name"], "x");
    let r = w.http_as(
        &proxy,
        "GET",
        actors,
        None,
        &[
            "X-Remote-User: bob",
            "X-Remote-Group: devs",
            "X-Remote-Group: qa",
        ],
    );
    assert_eq!(r.code, 403, "{}", r.body);
    assert_contains(&r.message(), "User \"bob\" cannot list resource \"actors\"");
    let r = w.http_as(&proxy, "GET", actors, None, &[]);
    assert_eq!(
        r.code, 401,
        "the front proxy without X-Remote-User is nobody: {}",
        r.body
    );
    // The same headers from the admin certificate are ignored: the request is the admin's.
    let r = w.http_as(
        &Identity::Cert("admin".into()),
        "GET",
        actors,
        None,
        &["X-Remote-User: mallory", "X-Remote-Group: devs"],
    );
    assert_eq!(r.code, 200, "{}", r.body);
    // And from an ordinary user's certificate they do not escalate.
    let r = w.http_as(
        &Identity::Cert("alice".into()),
        "GET",
        actors,
        None,
        &["X-Remote-User: root", "X-Remote-Group: system:masters"],
    );
    assert_eq!(r.code, 403, "{}", r.body);
    assert_contains(&r.message(), "User \"alice\"");
    // A front-proxy write is attributed and allowed for masters.
    let body = json!({"apiVersion": "substrate.ate.dev/v1alpha1", "kind": "Actor", "metadata": {"name": "via-proxy"}, "spec": {"template": {"name": "counter"}}});
    let r = w.http_as(
        &proxy,
        "POST",
        actors,
        Some(("application/json", body.to_string().as_bytes())),
        &["X-Remote-User: bob", "X-Remote-Group: devs"],
    );
    assert_eq!(r.code, 403, "{}", r.body);
    assert_eq!(w.actors_rv(), rv, "no refused request wrote anything");
    let r = w.http_as(
        &proxy,
        "POST",
        actors,
        Some(("application/json", body.to_string().as_bytes())),
        &["X-Remote-User: bob", "X-Remote-Group: system:masters"],
    );
    assert_eq!(r.code, 201, "{}", r.body);
    assert_eq!(w.names("actors", "team-a"), strs(&["via-proxy", "x"]));
}

#[test]
fn restart_keeps_objects_and_watches_work() {
    let Some(mut w) = support::world() else {
        return;
    };
    w.atespace("team-r");
    w.actor("team-r", "r1");
    w.create(
        &actor_yaml("team-r", "r2", "  activation: Always\n").replace(
            "  namespace: team-r\n",
            "  namespace: team-r\n  labels: {keep: \"yes\"}\n",
        ),
    );
    w.create("apiVersion: substrate.ate.dev/v1alpha1\nkind: Worker\nmetadata:\n  name: w-1\nspec:\n  pool: default\n  node: node-1\n");
    // An atespace left Terminating across the restart, held by a finalizer.
    w.atespace("team-t");
    w.create(&actor_yaml("team-t", "held", "").replace(
        "  namespace: team-t\n",
        "  namespace: team-t\n  finalizers: [example.com/hold]\n",
    ));
    w.ok(&["delete", "atespace", "team-t", "--wait=false"]);
    eventually("held to be marked deleted", || {
        w.get_json("actor", "held", "team-t").and_then(|o| {
            o["metadata"]["deletionTimestamp"]
                .as_str()
                .map(str::to_string)
        })
    });
    let before = w.ok(&["get", "substrate", "-A", "-o", "json"]);
    let before: Value = serde_json::from_str(&before).unwrap();
    let rv_before: u64 = w.actors_rv().parse().unwrap();
    let old_addr = w.addr;

    w.restart_apiserver();
    assert_ne!(w.addr, old_addr, "a new listener");
    let after: Value =
        serde_json::from_str(&w.ok(&["get", "substrate", "-A", "-o", "json"])).unwrap();
    assert_eq!(
        before["items"], after["items"],
        "every object, uid and resourceVersion survives the restart"
    );
    assert_eq!(
        w.jsonpath(
            "actor",
            "r2",
            "team-r",
            "{.spec.activation} {.metadata.labels.keep}"
        ),
        "Always yes"
    );
    assert_eq!(w.names("workers", ""), strs(&["w-1"]));
    assert_eq!(
        w.jsonpath("atespace", "team-t", "", "{.status.phase}"),
        "Terminating"
    );
    assert_eq!(
        w.actors_rv().parse::<u64>().unwrap(),
        rv_before,
        "the resourceVersion continues where it was"
    );

    // A watch started after the restart sees new changes.
    let mut watch = w.spawn(&["get", "actors", "-w", "-n", "team-r"]);
    watch.expect_line("the row of r1", |l| l.starts_with("r1 "));
    watch.expect_line("the row of r2", |l| l.starts_with("r2 "));
    w.actor("team-r", "r3");
    watch.expect_line("r3 being created", |l| l.starts_with("r3 "));
    assert!(w.actors_rv().parse::<u64>().unwrap() > rv_before);
    // The new incarnation's atespace controller finishes what the old one started.
    w.ok(&[
        "patch",
        "actor",
        "held",
        "-n",
        "team-t",
        "--type=merge",
        "-p",
        r#"{"metadata":{"finalizers":null}}"#,
    ]);
    let out = w.kubectl(&["wait", "--for=delete", "atespace/team-t", "--timeout=20s"]);
    assert!(out.success(), "{out}");
    // Creating still works and names stay unique.
    let (code, err) = w.fail_http(
        &["create", "-f", "-"],
        Some(&actor_yaml("team-r", "r1", "")),
    );
    assert_eq!(code, Some(409), "{err}");
}

#[test]
fn status_subresource_and_namespaces_view() {
    let Some(w) = support::world() else { return };
    w.atespace("team-a");
    w.actor("team-a", "s");
    // Replace on /status takes only the status.
    let mut o = w.get_json("actor", "s", "team-a").expect("s");
    o["status"]["phase"] = json!("Running");
    o["spec"]["activation"] = json!("Always");
    let out = w.stdin(&o.to_string(), &["replace", "--subresource=status"]);
    assert!(out.success(), "{out}");
    assert_eq!(
        w.jsonpath(
            "actor",
            "s",
            "team-a",
            "{.status.phase} {.spec.activation} {.metadata.generation}"
        ),
        "Running OnDemand 1"
    );
    // `kubectl get --subresource=status` shows the object.
    assert_contains(
        &w.ok(&[
            "get",
            "actor",
            "s",
            "-n",
            "team-a",
            "--subresource=status",
            "-o",
            "yaml",
        ]),
        "phase: Running",
    );
    // Atespaces are the namespaces kubectl sees.
    let out = w.ok(&["get", "namespaces", "-o", "name"]);
    assert_contains(&out, "namespace/team-a");
    assert_contains(&out, "namespace/default");
    let (code, err) = w.fail_http(&["get", "namespace", "nope"], None);
    assert_eq!(code, Some(404), "{err}");
    assert_contains(&err, "namespaces \"nope\" not found");
    // The context's default namespace is `default`, which exists from the start.
    w.create(&actor_yaml("default", "in-default", ""));
    assert_eq!(
        w.ok(&["get", "actors", "-o", "name"]).trim(),
        "actor.substrate.ate.dev/in-default"
    );
    // A resource group served here is reachable through raw paths too.
    let raw = w.ok(&[
        "get",
        "--raw",
        &format!("/apis/{GROUP}/v1alpha1/namespaces/team-a/actors/s"),
    ]);
    let v: Value = serde_json::from_str(&raw).unwrap();
    assert_eq!(v["metadata"]["name"], "s");
}

#[test]
fn workers_pools_and_templates() {
    let Some(w) = support::world() else { return };
    w.atespace("team-a");
    let worker = |name: &str, pool: &str| {
        format!(
            "apiVersion: substrate.ate.dev/v1alpha1\nkind: Worker\nmetadata:\n  name: \"{name}\"\nspec:\n  pool: {pool}\n  node: node-1\n  address: 10.0.0.9\n"
        )
    };
    // Workers are cluster-scoped and named like DNS subdomains (dots allowed).
    assert_eq!(
        w.create(&worker("w.1", "small")).trim(),
        "worker.substrate.ate.dev/w.1 created"
    );
    w.create(&worker("w-2", "large"));
    let out = w.ok(&["get", "wkr"]);
    assert_eq!(
        rows(&out)[0],
        strs(&["NAME", "POOL", "PHASE", "ACTOR", "AGE"]),
        "{out}"
    );
    let out = w.ok(&["get", "workers", "-o", "wide"]);
    for col in ["NODE", "ADDRESS", "ATESPACE", "HEARTBEAT", "UNSCHEDULABLE"] {
        assert_contains(out.lines().next().unwrap_or_default(), col);
    }
    // Cordoned by hand: spec.unschedulable is mutable (as a Node's), shown with -o wide, and
    // gone again (false is the default, not stored) when uncordoned.
    w.ok(&[
        "patch",
        "worker",
        "w.1",
        "--type=merge",
        "-p",
        r#"{"spec":{"unschedulable":true}}"#,
    ]);
    let out = w.ok(&["get", "worker", "w.1", "-o", "wide", "--no-headers"]);
    assert_eq!(
        rows(&out)[0].last().map(String::as_str),
        Some("true"),
        "{out}"
    );
    w.ok(&[
        "patch",
        "worker",
        "w.1",
        "--type=merge",
        "-p",
        r#"{"spec":{"unschedulable":false}}"#,
    ]);
    let v: Value = serde_json::from_str(&w.ok(&["get", "worker", "w.1", "-o", "json"])).unwrap();
    assert_eq!(
        v["spec"],
        json!({"pool": "small", "node": "node-1", "address": "10.0.0.9"}),
        "{v}"
    );
    assert_eq!(
        v["metadata"]["generation"], 3,
        "each cordon is a spec change: {v}"
    );
    assert_contains(&out, "10.0.0.9");
    assert_eq!(
        w.ok(&[
            "get",
            "workers",
            "--field-selector",
            "spec.pool=large",
            "-o",
            "name"
        ])
        .trim(),
        "worker.substrate.ate.dev/w-2"
    );
    // Binding shows up in the columns, through the status subresource.
    w.ok(&[
        "patch",
        "worker",
        "w-2",
        "--subresource=status",
        "--type=merge",
        "-p",
        r#"{"status":{"phase":"Bound","actor":{"namespace":"team-a","name":"x"}}}"#,
    ]);
    let out = w.ok(&["get", "worker", "w-2", "-o", "wide", "--no-headers"]);
    let cells = rows(&out).remove(0);
    assert_eq!(cells[..4], strs(&["w-2", "large", "Bound", "x"]), "{out}");
    assert!(cells.contains(&"team-a".to_string()), "{out}");
    assert_eq!(
        w.ok(&[
            "get",
            "workers",
            "--field-selector",
            "status.phase=Bound",
            "-o",
            "name"
        ])
        .trim(),
        "worker.substrate.ate.dev/w-2"
    );
    // spec.pool is immutable; the namespaced path does not exist for a cluster-scoped kind.
    let rv = w.list_rv(GROUP, "workers");
    let (code, err) = w.fail_http(
        &[
            "patch",
            "worker",
            "w-2",
            "--type=merge",
            "-p",
            r#"{"spec":{"pool":"small"}}"#,
        ],
        None,
    );
    assert_eq!(code, Some(422), "{err}");
    assert_contains(
        &err,
        "The Worker \"w-2\" is invalid: spec.pool: Invalid value:",
    );
    assert_contains(&err, "field is immutable");
    let (code, err) = w.fail_http(&["create", "-f", "-"], Some(&worker("W", "small")));
    assert_eq!(code, Some(422), "{err}");
    assert_contains(&err, "a lowercase RFC 1123 subdomain");
    let (code, err) = w.fail_http(&["create", "-f", "-"], Some("apiVersion: substrate.ate.dev/v1alpha1\nkind: Worker\nmetadata:\n  name: nopool\nspec: {}\n"));
    assert_eq!(code, Some(422), "{err}");
    assert_contains(&err, "spec.pool: Required value");
    assert_eq!(w.list_rv(GROUP, "workers"), rv, "nothing was written");
    let r = w.http(
        "GET",
        "/apis/substrate.ate.dev/v1alpha1/namespaces/team-a/workers",
        None,
    );
    assert_eq!(r.code, 404, "{}", r.body);

    // ate.dev: WorkerPool and ActorTemplate, namespaced, with their own columns and rules.
    let out = w.create(
        "apiVersion: ate.dev/v1alpha1\nkind: WorkerPool\nmetadata:\n  name: small\n  namespace: team-a\nspec:\n  replicas: 2\n  image: executor:1\n---\napiVersion: ate.dev/v1alpha1\nkind: ActorTemplate\nmetadata:\n  name: counter\n  namespace: team-a\nspec:\n  workerPoolRef: {name: small}\n  containers:\n  - name: app\n    image: counter:1\n    ports: [{containerPort: 8080}]\n",
    );
    assert_eq!(
        out.lines().collect::<Vec<_>>(),
        [
            "workerpool.ate.dev/small created",
            "actortemplate.ate.dev/counter created"
        ]
    );
    let out = w.ok(&["get", "wp", "-n", "team-a", "-o", "wide"]);
    assert_eq!(
        rows(&out)[0],
        strs(&["NAME", "REPLICAS", "READY", "FREE", "BOUND", "AGE", "IMAGE"]),
        "{out}"
    );
    assert_eq!(rows(&out)[1][..2], strs(&["small", "2"]), "{out}");
    let out = w.ok(&["get", "atpl", "-A"]);
    assert_eq!(
        rows(&out)[0],
        strs(&["NAMESPACE", "NAME", "POOL", "READY", "AGE"]),
        "{out}"
    );
    assert_eq!(
        rows(&out)[1][..3],
        strs(&["team-a", "counter", "small"]),
        "{out}"
    );
    w.ok(&[
        "patch",
        "atpl",
        "counter",
        "-n",
        "team-a",
        "--subresource=status",
        "--type=merge",
        "-p",
        &ready_patch("True"),
    ]);
    assert_eq!(
        rows(&w.ok(&["get", "atpl", "counter", "-n", "team-a"]))[1][..3],
        strs(&["counter", "small", "True"])
    );
    let out = w.ok(&["get", "substrate", "-n", "team-a", "-o", "name"]);
    assert_contains(&out, "workerpool.ate.dev/small");
    assert_contains(&out, "actortemplate.ate.dev/counter");
    let rv_wp = w.list_rv("ate.dev", "workerpools");
    let rv_tpl = w.list_rv("ate.dev", "actortemplates");
    let (code, err) = w.fail_http(
        &[
            "patch",
            "wp",
            "small",
            "-n",
            "team-a",
            "--type=merge",
            "-p",
            r#"{"spec":{"replicas":-1}}"#,
        ],
        None,
    );
    assert_eq!(code, Some(422), "{err}");
    assert_contains(
        &err,
        "The WorkerPool \"small\" is invalid: spec.replicas: Invalid value: -1: must be greater than or equal to 0",
    );
    let (code, err) = w.fail_http(&["create", "-f", "-"], Some("apiVersion: ate.dev/v1alpha1\nkind: ActorTemplate\nmetadata:\n  name: empty\n  namespace: team-a\nspec:\n  workerPoolRef: {name: small}\n  containers: []\n"));
    assert_eq!(code, Some(422), "{err}");
    assert_contains(&err, "spec.containers: Required value");
    let (code, err) = w.fail_http(&["create", "-f", "-"], Some("apiVersion: ate.dev/v1alpha1\nkind: ActorTemplate\nmetadata:\n  name: extra\n  namespace: team-a\nspec:\n  workerPoolRef: {name: small}\n  containers: [{name: a, image: b, bogus: 1}]\n"));
    assert_eq!(code, Some(400), "{err}");
    assert_contains(
        &err,
        "strict decoding error: unknown field \"spec.containers[0].bogus\"",
    );
    assert_eq!(w.list_rv("ate.dev", "workerpools"), rv_wp);
    assert_eq!(w.list_rv("ate.dev", "actortemplates"), rv_tpl);
    // They are atespace content: deleting the atespace takes them along.
    w.ok(&["delete", "atespace", "team-a", "--timeout=30s"]);
    assert!(w.names("workerpools.ate.dev", "team-a").is_empty());
    assert!(w.names("actortemplates.ate.dev", "team-a").is_empty());
}

#[test]
fn system_atespaces_cannot_be_deleted() {
    let Some(w) = support::world() else { return };
    let rv = w.atespaces_rv();
    // As kube-apiserver refuses to delete `default`: the context's namespace and the home of
    // golden actors must survive an admin's `kubectl delete`.
    for name in ["default", crds::GOLDEN_ATESPACE] {
        let (code, err) = w.fail_http(&["delete", "atespace", name, "--wait=false"], None);
        assert_eq!(code, Some(403), "deleting {name}: {err}");
        assert_contains(
            &err,
            &format!("atespaces.substrate.ate.dev \"{name}\" is forbidden"),
        );
    }
    assert_eq!(w.atespaces_rv(), rv, "nothing was written");
    assert_eq!(
        w.jsonpath("atespace", "default", "", "{.status.phase}"),
        "Active"
    );
}

/// All pages of a paged list carry the resourceVersion of the first page, so that a client
/// (client-go's pager and reflector, `kubectl get -w` over more than 500 objects) that
/// watches from the list's resourceVersion sees every change made while it was paging —
/// including the deletion of an object it already received on an earlier page.
#[test]
fn paged_lists_share_one_resource_version() {
    let Some(w) = support::world() else { return };
    w.atespace("pg");
    for i in 1..=4 {
        w.actor("pg", &format!("p{i}"));
    }
    let base = "/apis/substrate.ate.dev/v1alpha1/namespaces/pg/actors";
    let page1 = w.http("GET", &format!("{base}?limit=2"), None).json();
    let names = |l: &Value| -> Vec<String> {
        l["items"]
            .as_array()
            .unwrap()
            .iter()
            .map(|o| o["metadata"]["name"].as_str().unwrap().to_string())
            .collect()
    };
    assert_eq!(names(&page1), strs(&["p1", "p2"]));
    let rv1 = page1["metadata"]["resourceVersion"]
        .as_str()
        .unwrap()
        .to_string();
    let token = page1["metadata"]["continue"]
        .as_str()
        .expect("a continue token")
        .to_string();
    // Between the pages, p1 (already received) is deleted.
    w.ok(&["delete", "actor", "p1", "-n", "pg"]);
    let page2 = w
        .http("GET", &format!("{base}?limit=2&continue={token}"), None)
        .json();
    assert_eq!(names(&page2), strs(&["p3", "p4"]));
    assert!(
        page2["metadata"]
            .get("continue")
            .is_none_or(|c| c.as_str() == Some("")),
        "{page2}"
    );
    let rv2 = page2["metadata"]["resourceVersion"]
        .as_str()
        .unwrap()
        .to_string();
    assert_eq!(
        rv2, rv1,
        "every page of one list reports the first page's resourceVersion"
    );
    // A watch from the list's resourceVersion reports the deletion.
    let r = w.http(
        "GET",
        &format!("{base}?watch=1&resourceVersion={rv2}&timeoutSeconds=2"),
        None,
    );
    assert_eq!(r.code, 200, "{}", r.body);
    assert!(
        r.body
            .lines()
            .filter_map(|l| serde_json::from_str::<Value>(l).ok())
            .any(|e| e["type"] == "DELETED" && e["object"]["metadata"]["name"] == "p1"),
        "the watch from the list's resourceVersion must report p1's deletion:\n{}",
        r.body
    );
}

/// Valkey goes away and comes back (its AOF keeps every acknowledged write): requests fail with
/// 503 while it is gone, `/readyz` says why, and everything works again afterwards.
#[test]
fn valkey_outage_and_recovery() {
    let Some(mut w) = support::world() else {
        return;
    };
    w.atespace("team-v");
    w.actor("team-v", "v1");
    let mut watch = w.spawn(&["get", "actors", "-n", "team-v", "-w", "-o", "name"]);
    watch.expect_line("v1", |l| l == "actor.substrate.ate.dev/v1");

    w.valkey.kill();
    let r = w.http(
        "GET",
        "/apis/substrate.ate.dev/v1alpha1/namespaces/team-v/actors",
        None,
    );
    assert_eq!(r.code, 503, "{}", r.body);
    assert_eq!(r.json()["reason"], "ServiceUnavailable");
    assert_contains(&r.message(), "storage is unavailable");
    let r = w.http_as(&Identity::Anonymous, "GET", "/readyz", None, &[]);
    assert_eq!(r.code, 500, "{}", r.body);
    assert_contains(&r.body, "Valkey is not reachable");

    w.valkey.restart();
    eventually("the apiserver to serve again", || {
        (w.http_as(&Identity::Anonymous, "GET", "/readyz", None, &[])
            .code
            == 200)
            .then_some(())
    });
    eventually("lists to work again", || {
        let out = w.kubectl(&["get", "actors", "-n", "team-v", "-o", "name"]);
        (out.success() && out.stdout.trim() == "actor.substrate.ate.dev/v1").then_some(())
    });
    w.actor("team-v", "v2");
    assert_eq!(w.names("actors", "team-v"), strs(&["v1", "v2"]));
    // The watch from before the outage either continues or ends (kubectl then exits); a new
    // one sees new changes.
    let mut again = w.spawn(&["get", "actors", "-n", "team-v", "-w", "-o", "name"]);
    again.expect_line("v2", |l| l == "actor.substrate.ate.dev/v2");
    w.actor("team-v", "v3");
    again.expect_line("v3 being created", |l| l == "actor.substrate.ate.dev/v3");
    drop(watch);
}

/// `generateName` prefixes are cut so the name stays a valid 63-character label, and empty
/// label/annotation maps are not stored (as Go's `omitempty`).
#[test]
fn generate_name_is_cut_and_empty_maps_are_dropped() {
    let Some(w) = support::world() else { return };
    w.atespace("gen");
    let prefix = "a".repeat(70);
    let body = json!({
        "apiVersion": "substrate.ate.dev/v1alpha1", "kind": "Actor",
        "metadata": {"generateName": prefix, "labels": {}, "annotations": {}},
        "spec": {"template": {"name": "counter"}},
    });
    let r = w.http(
        "POST",
        "/apis/substrate.ate.dev/v1alpha1/namespaces/gen/actors",
        Some(("application/json", body.to_string().as_bytes())),
    );
    assert_eq!(r.code, 201, "{}", r.body);
    let obj = r.json();
    let name = obj["metadata"]["name"].as_str().unwrap();
    assert_eq!(name.len(), 63, "{name}");
    assert!(name.starts_with(&"a".repeat(58)), "{name}");
    assert!(obj["metadata"].get("labels").is_none(), "{obj}");
    assert!(obj["metadata"].get("annotations").is_none(), "{obj}");
}
