//! Unit and property tests of the apply algorithm (no I/O).

use super::*;
use crds::resources::ACTORS;
use serde_json::json;

const AV: &str = "substrate.ate.dev/v1alpha1";

fn schema() -> &'static Value {
    schema::root(&ACTORS)
}

fn id(m: &str) -> ManagerId {
    ManagerId::new(m, Operation::Apply, None)
}

fn run(
    live: &Value,
    cfg: &Value,
    managers: &mut Managers,
    m: &str,
    force: bool,
) -> Result<Value, Conflicts> {
    apply(
        schema(),
        live,
        cfg,
        managers,
        &id(m),
        AV,
        force,
        &ignored(None),
    )
}

fn owned(managers: &Managers, m: &str) -> Vec<String> {
    managers
        .get(&id(m))
        .map(|e| e.set.iter().map(|p| display(p)).collect())
        .unwrap_or_default()
}

fn actor(spec: Value) -> Value {
    json!({"apiVersion": AV, "kind": "Actor", "metadata": {"name": "a", "namespace": "ns"}, "spec": spec})
}

#[test]
fn apply_owns_its_configuration_and_is_idempotent() {
    let mut mgrs = Managers::new();
    let cfg = actor(json!({"template": {"name": "t"}, "activation": "Always"}));
    let live = json!({});
    let out = run(&live, &cfg, &mut mgrs, "a", false).unwrap();
    assert_eq!(out, cfg);
    assert_eq!(
        owned(&mgrs, "a"),
        [".spec.activation", ".spec.template.name"]
    );
    let again = run(&out, &cfg, &mut mgrs.clone(), "a", false).unwrap();
    assert_eq!(again, out);
}

#[test]
fn conflicts_shared_ownership_and_force() {
    let mut mgrs = Managers::new();
    let live = run(
        &json!({}),
        &actor(json!({"template": {"name": "t"}, "activation": "Always"})),
        &mut mgrs,
        "a",
        false,
    )
    .unwrap();
    // Same value: shared, no conflict.
    let shared = run(
        &live,
        &actor(json!({"activation": "Always"})),
        &mut mgrs,
        "b",
        false,
    )
    .unwrap();
    assert_eq!(owned(&mgrs, "b"), [".spec.activation"]);
    assert_eq!(owned(&mgrs, "a").len(), 2);
    // Different value: conflict with both owners... a first, then b's own is fine.
    let mut m2 = mgrs.clone();
    let err = run(
        &shared,
        &actor(json!({"activation": "Suspended", "idleTimeout": "1m"})),
        &mut m2,
        "c",
        false,
    )
    .unwrap_err();
    assert_eq!(
        err.message(),
        "Apply failed with 2 conflicts: conflicts with \"a\":\n- .spec.activation\nconflicts with \"b\":\n- .spec.activation"
    );
    assert_eq!(err.causes()[0]["reason"], "FieldManagerConflict");
    assert_eq!(err.causes()[0]["field"], ".spec.activation");
    let err = run(
        &shared,
        &actor(json!({"template": {"name": "u"}})),
        &mut mgrs.clone(),
        "b",
        false,
    )
    .unwrap_err();
    assert_eq!(
        err.message(),
        "Apply failed with 1 conflict: conflict with \"a\": .spec.template.name"
    );
    // Force: the field moves to the applier.
    let forced = run(
        &shared,
        &actor(json!({"activation": "Suspended"})),
        &mut mgrs,
        "c",
        true,
    )
    .unwrap();
    assert_eq!(forced["spec"]["activation"], "Suspended");
    assert_eq!(owned(&mgrs, "a"), [".spec.template.name"]);
    assert!(!mgrs.contains_key(&id("b")), "b owned nothing else");
    assert_eq!(owned(&mgrs, "c"), [".spec.activation"]);
}

#[test]
fn fields_no_longer_applied_are_removed_unless_owned_elsewhere() {
    let mut mgrs = Managers::new();
    let live = run(
        &json!({}),
        &actor(json!({"template": {"name": "t"}, "activation": "Always", "idleTimeout": "5m"})),
        &mut mgrs,
        "a",
        false,
    )
    .unwrap();
    let live = run(
        &live,
        &actor(json!({"idleTimeout": "5m"})),
        &mut mgrs,
        "b",
        false,
    )
    .unwrap();
    let out = run(
        &live,
        &actor(json!({"template": {"name": "t"}})),
        &mut mgrs,
        "a",
        false,
    )
    .unwrap();
    assert!(out["spec"].get("activation").is_none(), "{out}");
    assert_eq!(out["spec"]["idleTimeout"], "5m", "b still owns it");
    assert_eq!(owned(&mgrs, "a"), [".spec.template.name"]);
}

#[test]
fn updates_take_changed_fields_and_mark_new_maps() {
    let mut mgrs = Managers::new();
    let empty = json!({});
    let created = actor(json!({"template": {"name": "t"}}));
    let created = {
        let mut c = created;
        c["metadata"]["labels"] = json!({"x": "1"});
        c
    };
    let u = ManagerId::new("kubectl-create", Operation::Update, None);
    assert!(record_update(
        schema(),
        &empty,
        &created,
        &mut mgrs,
        &u,
        AV,
        "2026-01-01T00:00:00Z",
        &ignored(None)
    ));
    let fv1 = mgrs[&u].set.to_fields_v1();
    assert_eq!(
        fv1,
        json!({"f:metadata": {"f:labels": {".": {}, "f:x": {}}}, "f:spec": {".": {}, "f:template": {".": {}, "f:name": {}}}})
    );
    // A write that changes nothing takes nothing (and keeps the time).
    assert!(!record_update(
        schema(),
        &created,
        &created,
        &mut mgrs,
        &u,
        AV,
        "2030-01-01T00:00:00Z",
        &ignored(None)
    ));
    assert_eq!(mgrs[&u].time.as_deref(), Some("2026-01-01T00:00:00Z"));
    // An applier changing the label takes it over only with force; conflict names the
    // Update manager with its apiVersion.
    let err = run(
        &created,
        &json!({"apiVersion": AV, "kind": "Actor", "metadata": {"name": "a", "labels": {"x": "2"}}}),
        &mut mgrs.clone(),
        "kubectl",
        false,
    )
    .unwrap_err();
    assert_eq!(
        err.message(),
        format!(
            "Apply failed with 1 conflict: conflict with \"kubectl-create\" using {AV}: .metadata.labels.x"
        )
    );
}

#[test]
fn status_writes_own_only_status() {
    let mut mgrs = Managers::new();
    let live = actor(json!({"template": {"name": "t"}}));
    let mut new = live.clone();
    new["status"] =
        json!({"phase": "Running", "conditions": [{"type": "Ready", "status": "True"}]});
    let u = ManagerId::new("agent", Operation::Update, Some("status"));
    record_update(
        schema(),
        &live,
        &new,
        &mut mgrs,
        &u,
        AV,
        "t",
        &ignored(Some("status")),
    );
    let entry = encode(&mgrs);
    assert_eq!(entry[0]["subresource"], "status");
    assert_eq!(
        entry[0]["fieldsV1"],
        json!({"f:status": {".": {}, "f:conditions": {".": {}, "k:{\"type\":\"Ready\"}": {".": {}, "f:status": {}, "f:type": {}}}, "f:phase": {}}})
    );
    let back = decode(&json!({"metadata": {"managedFields": entry}})).unwrap();
    assert_eq!(back, mgrs);
}

mod props {
    use super::*;
    use proptest::prelude::*;

    /// A configuration over a small universe of fields.
    fn config() -> impl Strategy<Value = Value> {
        (
            prop::option::of(prop::sample::select(vec![
                "OnDemand",
                "Always",
                "Suspended",
            ])),
            prop::option::of(prop::sample::select(vec!["1m", "5m"])),
            prop::collection::btree_map(
                prop::sample::select(vec!["a", "b", "c"]),
                prop::sample::select(vec!["1", "2"]),
                0..3,
            ),
        )
            .prop_map(|(act, idle, labels)| {
                let mut spec = serde_json::Map::new();
                if let Some(a) = act {
                    spec.insert("activation".into(), json!(a));
                }
                if let Some(i) = idle {
                    spec.insert("idleTimeout".into(), json!(i));
                }
                let mut c = json!({"apiVersion": AV, "kind": "Actor", "metadata": {"name": "x"}});
                if !labels.is_empty() {
                    c["metadata"]["labels"] = json!(labels);
                }
                if !spec.is_empty() {
                    c["spec"] = Value::Object(spec);
                }
                c
            })
    }

    /// The leaves of the universe present in `obj`, with values.
    fn leaves(obj: &Value) -> Vec<(String, Value)> {
        let mut out = Vec::new();
        for f in ["activation", "idleTimeout"] {
            if let Some(v) = obj.pointer(&format!("/spec/{f}")) {
                out.push((format!(".spec.{f}"), v.clone()));
            }
        }
        if let Some(m) = obj.pointer("/metadata/labels").and_then(Value::as_object) {
            for (k, v) in m {
                out.push((format!(".metadata.labels.{k}"), v.clone()));
            }
        }
        out
    }

    proptest! {
        #[test]
        fn two_managers_end_in_the_defined_state(
            steps in prop::collection::vec((prop::bool::ANY, config(), prop::bool::ANY), 1..12)
        ) {
            let mut live = json!({"apiVersion": AV, "kind": "Actor", "metadata": {"name": "x"}});
            let mut mgrs = Managers::new();
            for (who, cfg, force) in steps {
                let m = if who { "a" } else { "b" };
                let before = (live.clone(), mgrs.clone());
                match run(&live, &cfg, &mut mgrs, m, force) {
                    Ok(out) => {
                        // Every applied leaf has the applied value; the applier owns exactly
                        // its configuration.
                        for (p, v) in leaves(&cfg) {
                            prop_assert!(leaves(&out).contains(&(p.clone(), v)), "{p} not applied");
                        }
                        let mine: Vec<String> = owned(&mgrs, m);
                        let mut want: Vec<String> = leaves(&cfg).into_iter().map(|(p, _)| p).collect();
                        if cfg.pointer("/metadata/labels").is_none() && cfg.get("spec").is_none() {
                            want.clear();
                        }
                        want.sort();
                        let mut mine_leaves: Vec<String> = mine.into_iter().filter(|p| p.matches('.').count() >= 2).collect();
                        mine_leaves.sort();
                        prop_assert_eq!(mine_leaves, want);
                        // Present ⇔ owned: only appliers wrote, so nothing is left unowned
                        // and nothing owned is missing.
                        for (p, _) in leaves(&out) {
                            prop_assert!(mgrs.values().any(|e| e.set.iter().any(|q| display(q) == p)), "{p} unowned");
                        }
                        for e in mgrs.values() {
                            for q in e.set.iter() {
                                let q = display(q);
                                prop_assert!(leaves(&out).iter().any(|(p, _)| *p == q), "{q} owned but absent");
                            }
                        }
                        // Applying the same configuration again is a no-op.
                        let mut again = mgrs.clone();
                        let out2 = run(&out, &cfg, &mut again, m, false).unwrap();
                        prop_assert_eq!(&out2, &out);
                        prop_assert_eq!(&again, &mgrs);
                        live = out;
                    }
                    Err(c) => {
                        prop_assert!(!force);
                        // Nothing changed; every conflict is a field another manager owns
                        // with a different value.
                        prop_assert_eq!(&before.1, &mgrs);
                        for (other, _, p) in &c.0 {
                            prop_assert_ne!(&other.manager, m);
                            let p = display(p);
                            let cur = leaves(&live).into_iter().find(|(q, _)| *q == p).map(|x| x.1);
                            let want = leaves(&cfg).into_iter().find(|(q, _)| *q == p).map(|x| x.1);
                            prop_assert!(cur != want, "{p} conflicts without a change");
                        }
                    }
                }
            }
        }
    }
}

#[test]
fn encoded_entries_survive_normalization() {
    let mut mgrs = Managers::new();
    let cfg = actor(json!({"template": {"name": "t"}}));
    run(&json!({}), &cfg, &mut mgrs, "a", false).unwrap();
    mgrs.get_mut(&id("a")).unwrap().time = Some("2026-12-01T15:33:57Z".into());
    record_update(
        schema(),
        &cfg,
        &actor(json!({"template": {"name": "t"}, "activation": "Always"})),
        &mut mgrs,
        &ManagerId::new("kubectl-patch", Operation::Update, None),
        AV,
        "2026-12-01T15:33:58Z",
        &ignored(None),
    );
    let mut obj = cfg.clone();
    obj["metadata"]["managedFields"] = encode(&mgrs);
    let n = ACTORS.normalize(obj.clone()).unwrap();
    assert_eq!(
        n["metadata"]["managedFields"], obj["metadata"]["managedFields"],
        "{n}"
    );
}

#[test]
fn list_map_items_are_owned_by_key() {
    let schema = schema::root(&crds::resources::ACTOR_TEMPLATES);
    let tpl = |containers: Value| {
        json!({"apiVersion": "ate.dev/v1alpha1", "kind": "ActorTemplate",
               "metadata": {"name": "t"}, "spec": {"containers": containers}})
    };
    let go = |live: &Value, cfg: &Value, m: &mut Managers, who: &str| {
        apply(
            schema,
            live,
            cfg,
            m,
            &id(who),
            "ate.dev/v1alpha1",
            false,
            &ignored(None),
        )
    };
    let mut mgrs = Managers::new();
    let live = go(
        &json!({}),
        &tpl(json!([{"name": "app", "image": "a:1", "ports": [{"containerPort": 80, "protocol": "TCP"}]}])),
        &mut mgrs,
        "team",
    )
    .unwrap();
    let live = go(
        &live,
        &tpl(json!([{"name": "sidecar", "image": "s:1"}])),
        &mut mgrs,
        "mesh",
    )
    .unwrap();
    assert_eq!(live["spec"]["containers"].as_array().unwrap().len(), 2);
    let fv1 = mgrs[&id("team")].set.to_fields_v1();
    assert_eq!(
        fv1["f:spec"]["f:containers"]["k:{\"name\":\"app\"}"]["f:ports"]["k:{\"containerPort\":80,\"protocol\":\"TCP\"}"],
        json!({".": {}, "f:containerPort": {}, "f:protocol": {}})
    );
    // Changing the other manager's item conflicts on its leaf, with the key in the path.
    let err = go(
        &live,
        &tpl(json!([{"name": "sidecar", "image": "s:2"}])),
        &mut mgrs.clone(),
        "team",
    )
    .unwrap_err();
    assert_eq!(
        err.message(),
        "Apply failed with 1 conflict: conflict with \"mesh\": .spec.containers[name=\"sidecar\"].image"
    );
    // The mesh stops applying its sidecar: it goes; the team's container stays.
    let live = go(&live, &tpl(json!([])), &mut mgrs, "mesh").unwrap();
    assert_eq!(
        live["spec"]["containers"],
        json!([{"name": "app", "image": "a:1", "ports": [{"containerPort": 80, "protocol": "TCP"}]}])
    );
    assert!(!mgrs.contains_key(&id("mesh")));
}
