//! The tenant matrix of issue 13, table-driven so the same table runs against any apiserver:
//! kube-apiserver (with Substrate aggregated: `tests/tenancy_cluster.rs`) and Substrate's
//! standalone apiserver with its own RBAC.
//!
//! - [`TENANTS`]: who (alice in `team-a`, bob in `team-b`, the ServiceAccount `team-a/robot`).
//! - [`rbac_objects`]: the Roles and RoleBindings that say what they may do.
//! - [`ROWS`]: one request each (user, verb, resource, subresource, namespace, name) and whether
//!   those RBAC objects allow it, as Kubernetes RBAC decides.
//! - [`apply_rbac`] applies the objects through a kubeconfig; [`subject_access_reviews`] asks
//!   an apiserver a `SubjectAccessReview` per row (as an admin), [`self_subject_access_review`]
//!   asks as the user. Comparing two apiservers is comparing their [`Decision`]s row by row.
//! - [`Row::http`] is the HTTP request a row stands for, [`Row::success_code`] what an allowed
//!   one answers, [`Row::forbidden_message`] kube-apiserver's exact 403 message otherwise.

use serde_json::{Value, json};

use crate::envtest::Identity;

/// The API group and version of the tenants' resources.
pub const GROUP: &str = "substrate.ate.dev";
pub const VERSION: &str = "v1alpha1";

/// A tenant: the user name an apiserver sees and its groups (`system:authenticated` is added
/// by every authenticator, so it is listed).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Tenant {
    pub user: &'static str,
    pub groups: &'static [&'static str],
}

pub const ALICE: Tenant = Tenant {
    user: "alice",
    groups: &["team-a", "system:authenticated"],
};
pub const BOB: Tenant = Tenant {
    user: "bob",
    groups: &["team-b", "system:authenticated"],
};
/// The ServiceAccount `team-a/robot` (a token from the TokenRequest API).
pub const ROBOT: Tenant = Tenant {
    user: "system:serviceaccount:team-a:robot",
    groups: &[
        "system:serviceaccounts",
        "system:serviceaccounts:team-a",
        "system:authenticated",
    ],
};
pub const TENANTS: [Tenant; 3] = [ALICE, BOB, ROBOT];

/// The namespaces (atespaces) of the matrix and the actor that exists in each.
pub const NAMESPACES: [(&str, &str); 2] = [("team-a", "a1"), ("team-b", "b1")];

/// The ActorTemplate `counter` of namespace `ns` the matrix's actors use (no pool serves it:
/// a resume waits for a worker, `202`).
pub fn template(ns: &str) -> Value {
    json!({
        "apiVersion": "ate.dev/v1alpha1", "kind": "ActorTemplate",
        "metadata": {"name": "counter", "namespace": ns},
        "spec": {"containers": [{"name": "counter", "image": "example.invalid/counter:1"}],
                 "workerPoolRef": {"name": "none"}},
    })
}

/// The groups of a [`TENANTS`] user.
pub fn groups_of(user: &str) -> &'static [&'static str] {
    TENANTS
        .iter()
        .find(|t| t.user == user)
        .map(|t| t.groups)
        .unwrap_or_else(|| panic!("{user} is not a tenant of the matrix"))
}

/// The RBAC objects of the matrix (a `List`):
/// - team-a: Role `actors-edit` (actors: get, list, watch, create, patch; `actors/resume`:
///   create) bound to the *group* `team-a`; Role `actors-view` (get, list, watch) bound to
///   the ServiceAccount `robot`.
/// - team-b: Role `actors-view` bound to the *user* `bob`.
pub fn rbac_objects() -> Value {
    let rule = |resources: &[&str], verbs: &[&str]| json!({"apiGroups": [GROUP], "resources": resources, "verbs": verbs});
    let role = |ns: &str, name: &str, rules: Vec<Value>| {
        json!({
            "apiVersion": "rbac.authorization.k8s.io/v1", "kind": "Role",
            "metadata": {"name": name, "namespace": ns}, "rules": rules,
        })
    };
    let binding = |ns: &str, name: &str, role: &str, subject: Value| {
        json!({
            "apiVersion": "rbac.authorization.k8s.io/v1", "kind": "RoleBinding",
            "metadata": {"name": name, "namespace": ns},
            "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": role},
            "subjects": [subject],
        })
    };
    let view = || vec![rule(&["actors"], &["get", "list", "watch"])];
    json!({"apiVersion": "v1", "kind": "List", "items": [
        role("team-a", "actors-edit", vec![
            rule(&["actors"], &["get", "list", "watch", "create", "patch"]),
            rule(&["actors/resume"], &["create"]),
        ]),
        binding("team-a", "team-a-edit", "actors-edit",
            json!({"apiGroup": "rbac.authorization.k8s.io", "kind": "Group", "name": "team-a"})),
        role("team-a", "actors-view", view()),
        binding("team-a", "robot-view", "actors-view",
            json!({"kind": "ServiceAccount", "name": "robot", "namespace": "team-a"})),
        role("team-b", "actors-view", view()),
        binding("team-b", "bob-view", "actors-view",
            json!({"apiGroup": "rbac.authorization.k8s.io", "kind": "User", "name": "bob"})),
    ]})
}

/// One request of the matrix. `namespace` empty: all namespaces; `name` empty: a collection
/// (for `create`, the name of the new object).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Row {
    pub user: &'static str,
    pub verb: &'static str,
    pub resource: &'static str,
    pub subresource: &'static str,
    pub namespace: &'static str,
    pub name: &'static str,
    /// What Kubernetes RBAC decides for [`rbac_objects`].
    pub allowed: bool,
}

const fn row(
    user: &'static str,
    verb: &'static str,
    subresource: &'static str,
    namespace: &'static str,
    name: &'static str,
    allowed: bool,
) -> Row {
    Row {
        user,
        verb,
        resource: "actors",
        subresource,
        namespace,
        name,
        allowed,
    }
}

const A: &str = "alice";
const B: &str = "bob";
const R: &str = "system:serviceaccount:team-a:robot";

/// The matrix. Requests with side effects come after the reads of the same object; `create`
/// rows name new objects, so every row can run once against a fresh system in order.
pub const ROWS: &[Row] = &[
    // alice: team-a edit through her group.
    row(A, "get", "", "team-a", "a1", true),
    row(A, "list", "", "team-a", "", true),
    row(A, "watch", "", "team-a", "", true),
    row(A, "create", "", "team-a", "alice-new", true),
    row(A, "patch", "", "team-a", "a1", true),
    row(A, "create", "resume", "team-a", "a1", true),
    row(A, "delete", "", "team-a", "a1", false),
    row(A, "patch", "status", "team-a", "a1", false),
    row(A, "get", "", "team-b", "b1", false),
    row(A, "list", "", "team-b", "", false),
    row(A, "create", "", "team-b", "alice-new", false),
    row(A, "list", "", "", "", false),
    row(A, "watch", "", "", "", false),
    // bob: team-b view, as a user.
    row(B, "get", "", "team-b", "b1", true),
    row(B, "list", "", "team-b", "", true),
    row(B, "watch", "", "team-b", "", true),
    row(B, "create", "", "team-b", "bob-new", false),
    row(B, "patch", "", "team-b", "b1", false),
    row(B, "create", "resume", "team-b", "b1", false),
    row(B, "create", "suspend", "team-b", "b1", false),
    row(B, "delete", "", "team-b", "b1", false),
    row(B, "get", "", "team-a", "a1", false),
    row(B, "list", "", "", "", false),
    // the ServiceAccount team-a/robot: view in team-a.
    row(R, "get", "", "team-a", "a1", true),
    row(R, "list", "", "team-a", "", true),
    row(R, "create", "", "team-a", "robot-new", false),
    row(R, "create", "resume", "team-a", "a1", false),
    row(R, "get", "", "team-b", "b1", false),
];

impl Row {
    /// The request's path on an apiserver (`?watch=1&timeoutSeconds=1` for watches).
    pub fn path(&self) -> String {
        let mut p = format!("/apis/{GROUP}/{VERSION}");
        if !self.namespace.is_empty() {
            p += &format!("/namespaces/{}", self.namespace);
        }
        p += &format!("/{}", self.resource);
        if (!self.name.is_empty() && self.verb != "create") || !self.subresource.is_empty() {
            p += &format!("/{}", self.name);
        }
        if !self.subresource.is_empty() {
            p += &format!("/{}", self.subresource);
        }
        if self.verb == "watch" {
            p += "?watch=1&timeoutSeconds=1";
        }
        p
    }

    /// (HTTP method, path, body) of the request.
    pub fn http(&self) -> (&'static str, String, Option<Value>) {
        let body = match (self.verb, self.subresource) {
            ("create", "") => Some(json!({
                "apiVersion": format!("{GROUP}/{VERSION}"), "kind": "Actor",
                "metadata": {"name": self.name, "namespace": self.namespace},
                "spec": {"template": {"name": "counter"}},
            })),
            ("create", _) => Some(json!({})),
            ("patch", "") => Some(json!({"metadata": {"labels": {"patched-by": "matrix"}}})),
            ("patch", _) => Some(json!({"status": {}})),
            _ => None,
        };
        let method = match self.verb {
            "get" | "list" | "watch" => "GET",
            "create" => "POST",
            "patch" => "PATCH",
            "update" => "PUT",
            "delete" | "deletecollection" => "DELETE",
            v => panic!("no HTTP method for verb {v}"),
        };
        (method, self.path(), body)
    }

    /// The status code of the allowed request on a system where the row's objects exist.
    /// (A resume finds no worker on a system without node agents: `202 Accepted`, waiting.)
    pub fn success_code(&self) -> u16 {
        match (self.verb, self.subresource) {
            ("create", "") => 201,
            ("create", "resume") => 202,
            _ => 200,
        }
    }

    /// kube-apiserver's message when RBAC forbids the row, e.g. `actors.substrate.ate.dev "b1"
    /// is forbidden: User "alice" cannot get resource "actors" in API group "substrate.ate.dev"
    /// in the namespace "team-b"`.
    pub fn forbidden_message(&self) -> String {
        let resource = if self.subresource.is_empty() {
            self.resource.to_string()
        } else {
            format!("{}/{}", self.resource, self.subresource)
        };
        let object = if self.name.is_empty() || self.verb == "create" && self.subresource.is_empty()
        {
            format!("{}.{GROUP}", self.resource)
        } else {
            format!("{}.{GROUP} \"{}\"", self.resource, self.name)
        };
        let scope = if self.namespace.is_empty() {
            "at the cluster scope".to_string()
        } else {
            format!("in the namespace \"{}\"", self.namespace)
        };
        format!(
            "{object} is forbidden: User \"{}\" cannot {} resource \"{resource}\" in API group \"{GROUP}\" {scope}",
            self.user, self.verb
        )
    }

    /// The `resourceAttributes` of a (Self)SubjectAccessReview for the row.
    pub fn resource_attributes(&self) -> Value {
        json!({
            "verb": self.verb, "group": GROUP, "version": VERSION, "resource": self.resource,
            "subresource": self.subresource, "namespace": self.namespace, "name": self.name,
        })
    }
}

/// An apiserver's answer to an access review.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Decision {
    pub allowed: bool,
    pub denied: bool,
    pub reason: String,
}

impl Decision {
    fn from_status(v: &Value) -> Decision {
        Decision {
            allowed: v["status"]["allowed"].as_bool().unwrap_or(false),
            denied: v["status"]["denied"].as_bool().unwrap_or(false),
            reason: v["status"]["reason"].as_str().unwrap_or_default().into(),
        }
    }
}

/// Applies [`rbac_objects`] through `admin`'s kubeconfig (any apiserver serving
/// `rbac.authorization.k8s.io/v1`).
pub fn apply_rbac(admin: &Identity) {
    admin.apply(&rbac_objects());
}

/// A `SubjectAccessReview` (asked by `admin`) per row: what the apiserver would decide for
/// the row's user and [`groups_of`] it.
pub fn subject_access_reviews(admin: &Identity, rows: &[Row]) -> Vec<Decision> {
    rows.iter()
        .map(|r| {
            let (code, v) = admin.request(
                "POST",
                "/apis/authorization.k8s.io/v1/subjectaccessreviews",
                Some(&json!({
                    "apiVersion": "authorization.k8s.io/v1", "kind": "SubjectAccessReview",
                    "spec": {"user": r.user, "groups": groups_of(r.user),
                             "resourceAttributes": r.resource_attributes()},
                })),
            );
            assert_eq!(code, 201, "SubjectAccessReview for {r:?}: {v}");
            Decision::from_status(&v)
        })
        .collect()
}

/// A `SelfSubjectAccessReview` of `row` asked by `identity` itself (`kubectl auth can-i`).
pub fn self_subject_access_review(identity: &Identity, row: &Row) -> Decision {
    let (code, v) = identity.request(
        "POST",
        "/apis/authorization.k8s.io/v1/selfsubjectaccessreviews",
        Some(&json!({
            "apiVersion": "authorization.k8s.io/v1", "kind": "SelfSubjectAccessReview",
            "spec": {"resourceAttributes": row.resource_attributes()},
        })),
    );
    assert_eq!(code, 201, "SelfSubjectAccessReview for {row:?}: {v}");
    Decision::from_status(&v)
}

/// Sends every row's request as `who(row.user)` and checks the answer: an allowed row its
/// [`Row::success_code`], a forbidden one `403` with exactly [`Row::forbidden_message`]. The
/// mismatches, each prefixed with `via`. Rows run in order (see [`ROWS`]).
pub fn check_requests(who: &dyn Fn(&str) -> Identity, rows: &[Row], via: &str) -> Vec<String> {
    let mut wrong = Vec::new();
    for r in rows {
        let (method, path, body) = r.http();
        let (code, answer) = who(r.user).request(method, &path, body.as_ref());
        if r.allowed {
            if code != r.success_code() {
                wrong.push(format!(
                    "{via}: {r:?}: want {}, got {code} {answer}",
                    r.success_code()
                ));
            }
        } else if code != 403 || answer["message"] != r.forbidden_message() {
            wrong.push(format!(
                "{via}: {r:?}: want 403 {:?}, got {code} {}",
                r.forbidden_message(),
                answer["message"]
            ));
        }
    }
    wrong
}

/// The rows where two apiservers' decisions differ (`a` and `b` from
/// [`subject_access_reviews`] or [`self_subject_access_review`] over the same `rows`).
pub fn differences(rows: &[Row], a: &[Decision], b: &[Decision]) -> Vec<String> {
    assert_eq!(
        (a.len(), b.len()),
        (rows.len(), rows.len()),
        "one decision per row"
    );
    rows.iter()
        .zip(a.iter().zip(b))
        .filter(|(_, (x, y))| x.allowed != y.allowed || x.denied != y.denied)
        .map(|(r, (x, y))| format!("{r:?}: {x:?} vs {y:?}"))
        .collect()
}

/// What kube-apiserver (envtest, no controller manager) decides for `rows` under
/// [`rbac_objects`]: a SubjectAccessReview per row. `None` when `KUBEBUILDER_ASSETS` is
/// unset (see [`crate::envtest::Assets::find`]). The reference another apiserver's decisions
/// are compared with ([`differences`]).
pub fn kube_decisions(rows: &[Row]) -> Option<Vec<Decision>> {
    let env = crate::envtest::Envtest::start_with(crate::envtest::Options {
        controller_manager: false,
    })?;
    for (ns, _) in NAMESPACES {
        env.ensure_namespace(ns);
    }
    apply_rbac(&env.admin);
    Some(subject_access_reviews(&env.admin, rows))
}
