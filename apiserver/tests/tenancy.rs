//! Tenancy through the real kubectl: access reviews (`kubectl auth can-i`, `--list`, raw
//! SelfSubjectAccessReview / SubjectAccessReview), atespace lists and watches filtered to what
//! a tenant may get, and ActorTemplates shared across atespaces.
//!
//! The policy is a small grant table ([`Grants`]) standing in for RBAC, which is built
//! elsewhere: these tests exercise what the apiserver does with the authorizer's answers.

mod support;

use std::sync::{Arc, Mutex};

use apiserver::auth::UserInfo;
use apiserver::authz::{
    Answer, AnswerFuture, Attributes, Authorizer, ResourceRule, Rules, RulesFuture,
};
use serde_json::{Value, json};
use support::*;

/// One grant: `subject` (a user or a group) may use `verbs` on `resources` of `group` in
/// `namespace` (`""`: everywhere).
#[derive(Clone)]
struct Grant {
    subject: &'static str,
    namespace: &'static str,
    group: &'static str,
    resources: &'static [&'static str],
    verbs: &'static [&'static str],
}

/// A changeable grant table standing in for RBAC.
#[derive(Clone, Default)]
struct Grants(Arc<Mutex<Vec<Grant>>>);

impl Grants {
    fn new(grants: Vec<Grant>) -> Self {
        Self(Arc::new(Mutex::new(grants)))
    }
    fn add(&self, g: Grant) {
        self.0.lock().unwrap().push(g);
    }
    fn revoke(&self, subject: &str, namespace: &str) {
        self.0
            .lock()
            .unwrap()
            .retain(|g| !(g.subject == subject && g.namespace == namespace));
    }
    fn applies(g: &Grant, user: &UserInfo) -> bool {
        g.subject == user.name || user.in_group(g.subject)
    }
}

impl Authorizer for Grants {
    fn authorize<'a>(&'a self, a: &'a Attributes) -> AnswerFuture<'a> {
        let resource = if a.subresource.is_empty() {
            a.resource.clone()
        } else {
            format!("{}/{}", a.resource, a.subresource)
        };
        let allowed = a.resource_request
            && self.0.lock().unwrap().iter().any(|g| {
                Self::applies(g, &a.user)
                    && (g.namespace.is_empty() || g.namespace == a.namespace)
                    && g.group == a.group
                    && g.resources.contains(&resource.as_str())
                    && g.verbs.contains(&a.verb.as_str())
            });
        let answer = if allowed {
            Answer::allow("")
        } else {
            Answer::no_opinion("")
        };
        Box::pin(async move { Ok(answer) })
    }

    fn rules_for<'a>(&'a self, user: &'a UserInfo, namespace: &'a str) -> RulesFuture<'a> {
        let resource_rules = self
            .0
            .lock()
            .unwrap()
            .iter()
            .filter(|g| {
                Self::applies(g, user) && (g.namespace.is_empty() || g.namespace == namespace)
            })
            .map(|g| ResourceRule {
                verbs: g.verbs.iter().map(|s| s.to_string()).collect(),
                api_groups: vec![g.group.to_string()],
                resources: g.resources.iter().map(|s| s.to_string()).collect(),
                resource_names: vec![],
            })
            .collect();
        Box::pin(async move {
            Rules {
                resource_rules,
                ..Rules::default()
            }
        })
    }
}

fn tenant_world(grants: &Grants) -> Option<World> {
    have_kubectl().then(|| World::start_with_authz(vec![Arc::new(grants.clone())]))
}

const SUBSTRATE: &str = "substrate.ate.dev";

/// kubectl as the user of `kubeconfig`.
fn as_user(w: &World, kubeconfig: &std::path::Path, args: &[&str]) -> Out {
    let flag = format!("--kubeconfig={}", kubeconfig.display());
    let mut all = vec![flag.as_str()];
    all.extend_from_slice(args);
    w.kubectl(&all)
}

fn post_json(w: &World, who: &str, path: &str, body: &Value) -> Http {
    w.http_as(
        &Identity::Cert(who.into()),
        "POST",
        path,
        Some(("application/json", body.to_string().as_bytes())),
        &[],
    )
}

#[test]
fn kubectl_auth_can_i_and_access_reviews_answer_from_the_authorizer() {
    let grants = Grants::new(vec![
        Grant {
            subject: "team-a",
            namespace: "team-a",
            group: SUBSTRATE,
            resources: &["actors"],
            verbs: &["get", "list", "watch", "create"],
        },
        Grant {
            subject: "alice",
            namespace: "team-a",
            group: SUBSTRATE,
            resources: &["actors/resume"],
            verbs: &["create"],
        },
    ]);
    let Some(w) = tenant_world(&grants) else {
        return;
    };
    w.atespace("team-a");
    w.atespace("team-b");
    let alice = w.issue_user("alice", &["team-a"]);
    let carol = w.issue_user("carol", &[]);

    // `kubectl auth can-i`: yes and exit 0, no and exit 1.
    let out = as_user(
        &w,
        &alice,
        &["auth", "can-i", "get", "actors", "-n", "team-a"],
    );
    assert_eq!(
        (out.code(), out.stdout.as_str()),
        (Some(0), "yes\n"),
        "{out}"
    );
    let out = as_user(
        &w,
        &alice,
        &["auth", "can-i", "get", "actors", "-n", "team-b"],
    );
    assert_eq!(
        (out.code(), out.stdout.as_str()),
        (Some(1), "no\n"),
        "{out}"
    );
    let out = as_user(
        &w,
        &alice,
        &["auth", "can-i", "delete", "actors", "-n", "team-a"],
    );
    assert_eq!(out.code(), Some(1), "{out}");
    let out = as_user(
        &w,
        &alice,
        &[
            "auth",
            "can-i",
            "create",
            "actors",
            "--subresource=resume",
            "-n",
            "team-a",
        ],
    );
    assert_eq!(
        (out.code(), out.stdout.as_str()),
        (Some(0), "yes\n"),
        "{out}"
    );
    let out = as_user(
        &w,
        &carol,
        &["auth", "can-i", "get", "actors", "-n", "team-a"],
    );
    assert_eq!(
        (out.code(), out.stdout.as_str()),
        (Some(1), "no\n"),
        "{out}"
    );
    // The admin (system:masters) may do anything.
    let out = w.kubectl(&["auth", "can-i", "delete", "actors", "-n", "team-b"]);
    assert_eq!(
        (out.code(), out.stdout.as_str()),
        (Some(0), "yes\n"),
        "{out}"
    );

    // `--list`: the rules of the caller in the namespace, complete.
    let out = as_user(&w, &alice, &["auth", "can-i", "--list", "-n", "team-a"]);
    assert!(out.success(), "{out}");
    assert_not_contains(&out.stderr, "incomplete");
    let actors = out
        .stdout
        .lines()
        .find(|l| l.starts_with("actors.substrate.ate.dev "))
        .unwrap_or_else(|| panic!("no actors row:\n{out}"));
    for verb in ["get", "list", "watch", "create"] {
        assert_contains(actors, verb);
    }
    assert_contains(&out.stdout, "actors.substrate.ate.dev/resume");
    assert_contains(&out.stdout, "selfsubjectaccessreviews.authorization.k8s.io");
    let out = as_user(&w, &alice, &["auth", "can-i", "--list", "-n", "team-b"]);
    assert!(out.success(), "{out}");
    assert_not_contains(&out.stdout, "actors.substrate.ate.dev");

    // A raw SelfSubjectAccessReview as alice: 201 with the answer.
    let ssar = |ns: &str| {
        json!({"apiVersion": "authorization.k8s.io/v1", "kind": "SelfSubjectAccessReview",
            "spec": {"resourceAttributes": {"namespace": ns, "verb": "list", "group": SUBSTRATE, "resource": "actors"}}})
    };
    let path = "/apis/authorization.k8s.io/v1/selfsubjectaccessreviews";
    let r = post_json(&w, "alice", path, &ssar("team-a"));
    assert_eq!(r.code, 201, "{}", r.body);
    assert_eq!(r.json()["status"], json!({"allowed": true}));
    assert_eq!(
        r.json()["spec"]["resourceAttributes"]["namespace"],
        "team-a"
    );
    let r = post_json(&w, "alice", path, &ssar("team-b"));
    assert_eq!(r.json()["status"], json!({"allowed": false}));
    let r = post_json(
        &w,
        "alice",
        path,
        &json!({"kind": "SelfSubjectAccessReview", "apiVersion": "authorization.k8s.io/v1", "spec": {}}),
    );
    assert_eq!(r.code, 422, "{}", r.body);
    assert_eq!(
        r.message(),
        "SelfSubjectAccessReview.authorization.k8s.io \"\" is invalid: spec.resourceAttributes: Invalid value: \"null\": exactly one of nonResourceAttributes or resourceAttributes must be specified"
    );
    let r = w.http_as(&Identity::Cert("alice".into()), "GET", path, None, &[]);
    assert_eq!(r.code, 405, "{}", r.body);
    // `kubectl create` of a review, found through discovery. (Without `--validate=false`
    // kubectl validates client-side, as reviews have no patch operation announcing
    // server-side validation, and wants the protobuf OpenAPI v2, which is not served.)
    let flag = format!("--kubeconfig={}", alice.display());
    let out = w.kubectl_with(
        &[&flag, "create", "--validate=false", "-o", "json", "-f", "-"],
        Some(&ssar("team-a").to_string()),
        &[],
    );
    assert!(out.success(), "{out}");
    let created: Value = serde_json::from_str(&out.stdout).expect("kubectl -o json");
    assert_eq!(created["status"]["allowed"], true, "{out}");

    // A SubjectAccessReview about someone else needs its own permission.
    let sar = |user: &str| {
        json!({"apiVersion": "authorization.k8s.io/v1", "kind": "SubjectAccessReview",
            "spec": {"user": user, "groups": ["team-a"], "resourceAttributes": {"namespace": "team-a", "verb": "get", "group": SUBSTRATE, "resource": "actors"}}})
    };
    let sar_path = "/apis/authorization.k8s.io/v1/subjectaccessreviews";
    let r = post_json(&w, "alice", sar_path, &sar("bob"));
    assert_eq!(r.code, 403, "{}", r.body);
    assert_eq!(
        r.message(),
        "subjectaccessreviews.authorization.k8s.io is forbidden: User \"alice\" cannot create resource \"subjectaccessreviews\" in API group \"authorization.k8s.io\" at the cluster scope"
    );
    let r = post_json(&w, "admin", sar_path, &sar("bob"));
    assert_eq!(r.code, 201, "{}", r.body);
    assert_eq!(
        r.json()["status"]["allowed"],
        true,
        "bob is in group team-a"
    );
    let nobody = json!({"spec": {"user": "dave", "resourceAttributes": {"namespace": "team-a", "verb": "get", "group": SUBSTRATE, "resource": "actors"}}});
    assert_eq!(
        post_json(&w, "admin", sar_path, &nobody).json()["status"],
        json!({"allowed": false})
    );
    // Local: in one namespace, which the question must name.
    let local = "/apis/authorization.k8s.io/v1/namespaces/team-a/localsubjectaccessreviews";
    let lsar = |user: &str| {
        let mut v = sar(user);
        v["kind"] = json!("LocalSubjectAccessReview");
        v
    };
    let r = post_json(&w, "admin", local, &lsar("carol"));
    assert_eq!(r.code, 201, "{}", r.body);
    assert_eq!(r.json()["metadata"]["namespace"], "team-a");
    assert_eq!(r.json()["status"]["allowed"], true);
    let r = post_json(
        &w,
        "admin",
        "/apis/authorization.k8s.io/v1/namespaces/team-b/localsubjectaccessreviews",
        &lsar("carol"),
    );
    assert_eq!(r.code, 422, "{}", r.body);
    assert_contains(
        &r.message(),
        "spec.resourceAttributes.namespace: Invalid value: \"team-a\": must match metadata.namespace",
    );

    // Discovery lists the group.
    let r = w.http("GET", "/apis/authorization.k8s.io/v1", None);
    assert_eq!(r.code, 200, "{}", r.body);
    let names: Vec<String> = r.json()["resources"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["name"].as_str().unwrap().to_string())
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
}

fn names_of(out: &Out) -> Vec<String> {
    let mut v: Vec<String> = out
        .stdout
        .lines()
        .filter(|l| !l.is_empty())
        .map(str::to_string)
        .collect();
    v.sort();
    v
}

#[test]
fn tenants_list_and_watch_exactly_the_atespaces_they_may_get() {
    let view = |ns: &'static str| {
        [
            Grant {
                subject: "team-a",
                namespace: ns,
                group: SUBSTRATE,
                resources: &["atespaces"],
                verbs: &["get", "list", "watch"],
            },
            Grant {
                subject: "team-a",
                namespace: ns,
                group: "",
                resources: &["namespaces"],
                verbs: &["get", "list", "watch"],
            },
        ]
    };
    let grants = Grants::new(view("team-a").to_vec());
    let Some(w) = tenant_world(&grants) else {
        return;
    };
    for a in ["team-a", "team-b", "team-c"] {
        w.atespace(a);
    }
    let alice = w.issue_user("alice", &["team-a"]);
    let carol = w.issue_user("carol", &[]);

    let out = as_user(&w, &alice, &["get", "atespaces", "-o", "name"]);
    assert!(out.success(), "{out}");
    assert_eq!(names_of(&out), ["atespace.substrate.ate.dev/team-a"]);
    let out = as_user(&w, &alice, &["get", "atespaces"]);
    assert!(out.success(), "{out}");
    assert_contains(&out.stdout, "team-a");
    assert_not_contains(&out.stdout, "team-b");
    let out = as_user(&w, &alice, &["get", "ns", "-o", "name"]);
    assert!(out.success(), "{out}");
    assert_eq!(names_of(&out), ["namespace/team-a"]);

    // One atespace by name is authorized in its own namespace.
    let out = as_user(&w, &alice, &["get", "atespace", "team-a", "-o", "name"]);
    assert!(out.success(), "{out}");
    let out = as_user(&w, &alice, &["get", "ns", "team-a", "-o", "name"]);
    assert!(out.success(), "{out}");
    let out = as_user(&w, &alice, &["get", "atespace", "team-b"]);
    assert!(!out.success(), "{out}");
    assert_contains(
        &out.stderr,
        "atespaces.substrate.ate.dev \"team-b\" is forbidden: User \"alice\" cannot get resource \"atespaces\" in API group \"substrate.ate.dev\" in the namespace \"team-b\"",
    );
    let out = as_user(&w, &alice, &["get", "ns", "team-b"]);
    assert_contains(
        &out.stderr,
        "namespaces \"team-b\" is forbidden: User \"alice\" cannot get resource \"namespaces\" in API group \"\" in the namespace \"team-b\"",
    );

    // Nobody's atespaces: an empty list, not a 403 (as OpenShift's projects).
    let out = as_user(&w, &carol, &["get", "atespaces"]);
    assert!(out.success(), "{out}");
    assert_eq!(out.stdout, "");
    assert_contains(&out.stderr, "No resources found");
    let out = as_user(&w, &carol, &["get", "ns", "-o", "name"]);
    assert!(out.success(), "{out}");
    assert_eq!(out.stdout, "");
    // Whoever may list them all gets them all.
    let all = w.names("atespaces", "");
    for a in ["default", "team-a", "team-b", "team-c"] {
        assert!(all.contains(&a.to_string()), "{all:?}");
    }
    grants.add(Grant {
        subject: "carol",
        namespace: "",
        group: SUBSTRATE,
        resources: &["atespaces"],
        verbs: &["list"],
    });
    let out = as_user(&w, &carol, &["get", "atespaces", "-o", "name"]);
    assert_eq!(names_of(&out).len(), all.len(), "{out}");

    // The watch: filtered per event, visibility changes arrive as ADDED and DELETED.
    let flag = format!("--kubeconfig={}", alice.display());
    let mut watch = w.spawn(&[
        &flag,
        "get",
        "--raw",
        "/apis/substrate.ate.dev/v1alpha1/atespaces?watch=1",
    ]);
    let event = |line: &str| -> (String, String) {
        let v: Value = serde_json::from_str(line).unwrap_or(Value::Null);
        (
            v["type"].as_str().unwrap_or_default().to_string(),
            v["object"]["metadata"]["name"]
                .as_str()
                .unwrap_or_default()
                .to_string(),
        )
    };
    watch.expect_line("ADDED team-a", |l| {
        event(l) == ("ADDED".into(), "team-a".into())
    });
    w.ok(&["label", "atespace", "team-c", "x=1"]);
    for g in view("team-b") {
        grants.add(g);
    }
    w.ok(&["label", "atespace", "team-b", "x=1"]);
    watch.expect_line("ADDED team-b", |l| {
        event(l) == ("ADDED".into(), "team-b".into())
    });
    grants.revoke("team-a", "team-a");
    w.ok(&["label", "atespace", "team-a", "x=1", "--overwrite"]);
    watch.expect_line("DELETED team-a", |l| {
        event(l) == ("DELETED".into(), "team-a".into())
    });
    w.ok(&["label", "atespace", "team-b", "x=2", "--overwrite"]);
    watch.expect_line("MODIFIED team-b", |l| {
        event(l) == ("MODIFIED".into(), "team-b".into())
    });
    let seen = watch.seen().join("\n");
    assert_not_contains(&seen, "team-c");
    assert_eq!(
        watch
            .seen()
            .iter()
            .filter(|l| event(l).1 == "team-a")
            .count(),
        2,
        "one ADDED and one DELETED of team-a:\n{seen}"
    );
    // The namespaces watch is filtered the same way.
    let mut ns_watch = w.spawn(&[&flag, "get", "--raw", "/api/v1/namespaces?watch=1"]);
    ns_watch.expect_line("ADDED team-b", |l| {
        event(l) == ("ADDED".into(), "team-b".into())
    });
    w.ok(&["label", "atespace", "team-b", "x=3", "--overwrite"]);
    ns_watch.expect_line("MODIFIED team-b", |l| {
        event(l) == ("MODIFIED".into(), "team-b".into())
    });
    assert_eq!(ns_watch.seen().len(), 2, "{:?}", ns_watch.seen());

    // kubectl lists, then watches from the list's resourceVersion: what the list showed is
    // modified and deleted, not added again.
    let mut kw = w.spawn(&[
        &flag,
        "get",
        "atespaces",
        "-w",
        "--output-watch-events",
        "-o",
        "custom-columns=EVENT:.type,NAME:.object.metadata.name",
    ]);
    let row = |l: &str| l.split_whitespace().collect::<Vec<_>>().join(" ");
    kw.expect_line("ADDED team-b", |l| row(l) == "ADDED team-b");
    w.ok(&["label", "atespace", "team-b", "x=4", "--overwrite"]);
    kw.expect_line("MODIFIED team-b", |l| row(l) == "MODIFIED team-b");
    w.ok(&["delete", "atespace", "team-b"]);
    kw.expect_line("DELETED team-b", |l| row(l) == "DELETED team-b");
    let seen: Vec<String> = kw.seen().iter().map(|l| row(l)).collect();
    assert_eq!(
        seen.iter().filter(|l| l.as_str() == "ADDED team-b").count(),
        1,
        "{seen:?}"
    );
    assert!(
        seen.iter()
            .all(|l| !l.contains("team-a") && !l.contains("team-c")),
        "{seen:?}"
    );
}

fn template_yaml(name: &str, sharing: &str) -> String {
    format!(
        "apiVersion: ate.dev/v1alpha1\nkind: ActorTemplate\nmetadata:\n  name: {name}\n  namespace: tpl-home\nspec:\n  workerPoolRef: {{name: small}}\n  containers:\n  - name: app\n    image: counter:1\n{sharing}"
    )
}

fn actor_of(ns: &str, name: &str, tns: &str, tname: &str) -> String {
    format!(
        "apiVersion: substrate.ate.dev/v1alpha1\nkind: Actor\nmetadata:\n  name: {name}\n  namespace: {ns}\nspec:\n  template:\n    namespace: {tns}\n    name: {tname}\n"
    )
}

fn not_shared(tname: &str, actor_ns: &str) -> String {
    format!(
        "spec.template.namespace: Forbidden: actortemplates.ate.dev \"{tname}\" in atespace \"tpl-home\" is not shared with atespace \"{actor_ns}\""
    )
}

#[test]
fn templates_are_used_across_atespaces_only_when_they_share_themselves() {
    let Some(w) = world() else {
        return;
    };
    w.atespace("tpl-home");
    w.create("apiVersion: substrate.ate.dev/v1alpha1\nkind: Atespace\nmetadata:\n  name: team-a\n  labels: {tier: gold}\n");
    w.create("apiVersion: substrate.ate.dev/v1alpha1\nkind: Atespace\nmetadata:\n  name: team-b\n  labels: {tier: free}\n");
    w.atespace("team-c");
    w.create(&template_yaml("private", ""));
    w.create(&template_yaml(
        "named",
        "  sharing:\n    atespaces: [team-a]\n",
    ));
    w.create(&template_yaml(
        "gold",
        "  sharing:\n    atespaceSelector:\n      matchLabels: {tier: gold}\n",
    ));
    // The selector is validated.
    let (code, err) = w.fail_http(
        &["create", "-f", "-"],
        Some(&template_yaml(
            "bad",
            "  sharing:\n    atespaceSelector:\n      matchExpressions: [{key: tier, operator: Near, values: [x]}]\n",
        )),
    );
    assert_eq!(code, Some(422), "{err}");
    assert_contains(
        &err,
        "spec.sharing.atespaceSelector.matchExpressions[0].operator: Unsupported value: \"Near\"",
    );

    // Not shared: refused, naming the template, its atespace and the actor's.
    let (code, err) = w.fail_http(
        &["create", "-f", "-"],
        Some(&actor_of("team-a", "x1", "tpl-home", "private")),
    );
    assert_eq!(code, Some(422), "{err}");
    assert_contains(
        &err,
        &format!(
            "The Actor \"x1\" is invalid: {}",
            not_shared("private", "team-a")
        ),
    );
    // Shared by name.
    w.create(&actor_of("team-a", "x2", "tpl-home", "named"));
    let (code, err) = w.fail_http(
        &["create", "-f", "-"],
        Some(&actor_of("team-b", "x3", "tpl-home", "named")),
    );
    assert_eq!(code, Some(422), "{err}");
    assert_contains(&err, &not_shared("named", "team-b"));
    // Shared by label selector, evaluated against the atespace's labels now.
    w.create(&actor_of("team-a", "x4", "tpl-home", "gold"));
    let (code, err) = w.fail_http(
        &["create", "-f", "-"],
        Some(&actor_of("team-b", "x5", "tpl-home", "gold")),
    );
    assert_eq!(code, Some(422), "{err}");
    assert_contains(&err, &not_shared("gold", "team-b"));
    w.ok(&["label", "atespace", "team-b", "tier=gold", "--overwrite"]);
    w.create(&actor_of("team-b", "x5", "tpl-home", "gold"));
    // The same atespace always may, with or without the namespace spelled out.
    w.create(&actor_of("tpl-home", "x6", "tpl-home", "private"));
    w.create(
        "apiVersion: substrate.ate.dev/v1alpha1\nkind: Actor\nmetadata:\n  name: x7\n  namespace: tpl-home\nspec:\n  template:\n    name: private\n",
    );
    // Server-side apply creates through the same check.
    let out = w.stdin(
        &actor_of("team-c", "x8", "tpl-home", "named"),
        &["apply", "--server-side"],
    );
    assert!(!out.success(), "{out}");
    assert_contains(&out.stderr, &not_shared("named", "team-c"));

    // Changing spec.template (immutable anyway) to a template not shared: refused with both.
    let (code, err) = w.fail_http(
        &[
            "patch",
            "actor",
            "x2",
            "-n",
            "team-a",
            "--type=merge",
            "-p",
            r#"{"spec":{"template":{"name":"private"}}}"#,
        ],
        None,
    );
    assert_eq!(code, Some(422), "{err}");
    assert_contains(&err, "spec.template: Invalid value");
    assert_contains(&err, &not_shared("private", "team-a"));
    assert_eq!(
        w.jsonpath("actor", "x2", "team-a", "{.spec.template.name}"),
        "named"
    );

    // A template created after the actor (GitOps order) is checked when the actor resumes,
    // and so is a template that stops sharing itself.
    w.create(&actor_of("team-c", "later", "tpl-home", "late"));
    w.create(&template_yaml("late", ""));
    let resume = |ns: &str, name: &str| {
        w.http(
            "POST",
            &format!("/apis/substrate.ate.dev/v1alpha1/namespaces/{ns}/actors/{name}/resume"),
            Some(("application/json", b"{}")),
        )
    };
    let r = resume("team-c", "later");
    assert_eq!(r.code, 403, "{}", r.body);
    assert_eq!(
        r.message(),
        "actors.substrate.ate.dev \"later\" is forbidden: cannot resume: actortemplates.ate.dev \"late\" in atespace \"tpl-home\" is not shared with atespace \"team-c\" (its spec.sharing must list \"team-c\" in atespaces or select it with atespaceSelector)"
    );
    w.ok(&[
        "patch",
        "actortemplate",
        "named",
        "-n",
        "tpl-home",
        "--type=merge",
        "-p",
        r#"{"spec":{"sharing":{"atespaces":["team-c"]}}}"#,
    ]);
    let r = resume("team-a", "x2");
    assert_eq!(r.code, 403, "{}", r.body);
    assert_contains(&r.message(), "is not shared with atespace \"team-a\"");
    // A shared template passes the check (and waits for a worker: none runs here).
    let r = resume("team-a", "x4");
    assert_ne!(r.code, 403, "{}", r.body);
    let r = resume("tpl-home", "x7");
    assert_ne!(r.code, 403, "{}", r.body);
}
