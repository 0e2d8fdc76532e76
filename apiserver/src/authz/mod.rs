//! Authorization, as kube-apiserver's `authorizer` package: every request becomes
//! [`Attributes`] (user, verb, API group, resource, subresource, namespace, name, or a
//! non-resource path), and an [`Authorizer`] answers allow, deny or no opinion.
//!
//! The chain ([`Chain`]) is what a server runs: paths always allowed (health), the
//! privileged group `system:masters` short-circuited, then the configured authorizers in
//! order, the first allow or deny wins (kube's union authorizer); no opinion from all of
//! them is a denial. A denial becomes a `403` worded exactly as kube-apiserver words it
//! ([`forbidden`]).
//!
//! Authorizers: standalone RBAC evaluated locally (`rbac`), delegated `SubjectAccessReview`
//! to the cluster's kube-apiserver with a decision cache (`webhook`).

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;

use crate::auth::UserInfo;
use crate::status::ApiError;

pub mod cache;
pub mod rbac;
pub mod webhook;

/// The group whose members may do anything (kube's `system:masters`).
pub const PRIVILEGED_GROUP: &str = "system:masters";

/// Paths answered without authorization (kube's `--authorization-always-allow-paths`
/// default for aggregated servers).
pub const ALWAYS_ALLOW_PATHS: &[&str] = &["/healthz", "/readyz", "/livez"];

/// One authorization question (kube's `authorizer.Attributes`).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Attributes {
    pub user: UserInfo,
    /// `get`, `list`, `watch`, `create`, `update`, `patch`, `delete`, `deletecollection`
    /// (resource requests), or the lower-case HTTP method (non-resource requests).
    pub verb: String,
    /// Whether this is a request for a resource (else a non-resource path).
    pub resource_request: bool,
    /// The request path (non-resource requests).
    pub path: String,
    pub group: String,
    pub version: String,
    pub resource: String,
    pub subresource: String,
    pub namespace: String,
    pub name: String,
}

impl Attributes {
    /// A resource request.
    #[allow(clippy::too_many_arguments)]
    pub fn resource(
        user: &UserInfo,
        verb: &str,
        group: &str,
        version: &str,
        resource: &str,
        subresource: Option<&str>,
        namespace: Option<&str>,
        name: Option<&str>,
    ) -> Self {
        Self {
            user: user.clone(),
            verb: verb.into(),
            resource_request: true,
            path: String::new(),
            group: group.into(),
            version: version.into(),
            resource: resource.into(),
            subresource: subresource.unwrap_or_default().into(),
            namespace: namespace.unwrap_or_default().into(),
            name: name.unwrap_or_default().into(),
        }
    }

    /// A non-resource request (`verb` is the lower-case HTTP method, as kube's).
    pub fn non_resource(user: &UserInfo, verb: &str, path: &str) -> Self {
        Self {
            user: user.clone(),
            verb: verb.into(),
            resource_request: false,
            path: path.into(),
            group: String::new(),
            version: String::new(),
            resource: String::new(),
            subresource: String::new(),
            namespace: String::new(),
            name: String::new(),
        }
    }
}

/// An authorizer's answer (kube's `authorizer.Decision`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Decision {
    Allow,
    Deny,
    NoOpinion,
}

/// A decision and its reason (kube's `(Decision, reason string, error)`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Answer {
    pub decision: Decision,
    /// Why, as the authorizer says it (empty for most RBAC denials); appended to the 403
    /// message after `": "` when not empty.
    pub reason: String,
}

impl Answer {
    pub fn allow(reason: impl Into<String>) -> Self {
        Self {
            decision: Decision::Allow,
            reason: reason.into(),
        }
    }
    pub fn deny(reason: impl Into<String>) -> Self {
        Self {
            decision: Decision::Deny,
            reason: reason.into(),
        }
    }
    pub fn no_opinion(reason: impl Into<String>) -> Self {
        Self {
            decision: Decision::NoOpinion,
            reason: reason.into(),
        }
    }
    pub fn allowed(&self) -> bool {
        self.decision == Decision::Allow
    }
}

/// Why an authorizer could not decide (a review call failed): kube answers such requests
/// 500 when no other authorizer allowed them; so do we.
#[derive(Debug, Clone, thiserror::Error)]
#[error("{0}")]
pub struct AuthzError(pub String);

/// A boxed future of an answer.
pub type AnswerFuture<'a> = Pin<Box<dyn Future<Output = Result<Answer, AuthzError>> + Send + 'a>>;

/// One rule about resources a user may use (kube's `authorizer.ResourceRuleInfo`, the
/// `resourceRules` of a `SelfSubjectRulesReview`). `*` means any.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ResourceRule {
    pub verbs: Vec<String>,
    pub api_groups: Vec<String>,
    /// Resources, `resource/subresource` for a subresource.
    pub resources: Vec<String>,
    /// Restricts the rule to these object names (empty: any).
    pub resource_names: Vec<String>,
}

/// One rule about non-resource paths (kube's `authorizer.NonResourceRuleInfo`); a path
/// ending in `*` is a prefix.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct NonResourceRule {
    pub verbs: Vec<String>,
    pub non_resource_urls: Vec<String>,
}

/// What a user may do in one namespace, as an authorizer can tell it (kube's
/// `RuleResolver.RulesFor`): the answer of a `SelfSubjectRulesReview`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Rules {
    pub resource_rules: Vec<ResourceRule>,
    pub non_resource_rules: Vec<NonResourceRule>,
    /// The authorizer could not list everything the user may do (a webhook, a policy that
    /// is not made of rules): the rules are a lower bound.
    pub incomplete: bool,
    /// Why the rules could not be evaluated completely (kube's `evaluationError`); empty
    /// when nothing went wrong.
    pub evaluation_error: String,
}

impl Rules {
    /// The default answer of an authorizer that cannot list rules.
    pub fn incomplete() -> Self {
        Self {
            incomplete: true,
            ..Self::default()
        }
    }

    /// Everything (`*` verbs on `*` groups and resources, and every path): what
    /// `system:masters` may do.
    pub fn everything() -> Self {
        let star = || vec!["*".to_string()];
        Self {
            resource_rules: vec![ResourceRule {
                verbs: star(),
                api_groups: star(),
                resources: star(),
                resource_names: Vec::new(),
            }],
            non_resource_rules: vec![NonResourceRule {
                verbs: star(),
                non_resource_urls: star(),
            }],
            incomplete: false,
            evaluation_error: String::new(),
        }
    }

    /// Adds another authorizer's rules (kube's union rule resolver: rules concatenated, any
    /// incomplete makes the whole incomplete, errors joined).
    pub fn extend(&mut self, other: Rules) {
        self.resource_rules.extend(other.resource_rules);
        self.non_resource_rules.extend(other.non_resource_rules);
        self.incomplete |= other.incomplete;
        if !other.evaluation_error.is_empty() {
            if !self.evaluation_error.is_empty() {
                self.evaluation_error.push_str(", ");
            }
            self.evaluation_error.push_str(&other.evaluation_error);
        }
    }
}

/// A boxed future of the rules of a user.
pub type RulesFuture<'a> = Pin<Box<dyn Future<Output = Rules> + Send + 'a>>;

/// Answers authorization questions.
pub trait Authorizer: Send + Sync {
    fn authorize<'a>(&'a self, attrs: &'a Attributes) -> AnswerFuture<'a>;

    /// The rules `user` has in `namespace` (cluster-wide rules included), for
    /// `SelfSubjectRulesReview` (`kubectl auth can-i --list`); kube's `RuleResolver`. The
    /// default says nothing and marks the answer incomplete, as kube's webhook authorizer
    /// does; an authorizer made of rules (RBAC) overrides it.
    fn rules_for<'a>(&'a self, user: &'a UserInfo, namespace: &'a str) -> RulesFuture<'a> {
        let _ = (user, namespace);
        Box::pin(async { Rules::incomplete() })
    }
}

/// What a server runs: always-allowed paths, the privileged group, then each authorizer in
/// order (first allow or deny wins; no opinion from all is a denial).
#[derive(Clone)]
pub struct Chain {
    always_allow_paths: Vec<String>,
    authorizers: Vec<Arc<dyn Authorizer>>,
}

impl Chain {
    pub fn new(always_allow_paths: Vec<String>, authorizers: Vec<Arc<dyn Authorizer>>) -> Self {
        Self {
            always_allow_paths,
            authorizers,
        }
    }

    /// Whether `path` is answered without authorization (exact, or a `prefix*` entry).
    pub fn always_allowed(&self, path: &str) -> bool {
        self.always_allow_paths
            .iter()
            .any(|p| path_matches(p, path))
    }

    /// The chain's answer (kube's union authorizer after the privileged-group one).
    pub async fn authorize(&self, attrs: &Attributes) -> Result<Answer, AuthzError> {
        if !attrs.resource_request && self.always_allowed(&attrs.path) {
            return Ok(Answer::allow(""));
        }
        if attrs.user.in_group(PRIVILEGED_GROUP) {
            return Ok(Answer::allow(""));
        }
        let mut reasons: Vec<String> = Vec::new();
        let mut failures: Vec<String> = Vec::new();
        for a in &self.authorizers {
            match a.authorize(attrs).await {
                Ok(answer) => {
                    if !answer.reason.is_empty() {
                        reasons.push(answer.reason.clone());
                    }
                    match answer.decision {
                        Decision::Allow | Decision::Deny => {
                            return Ok(Answer {
                                decision: answer.decision,
                                reason: reasons.join("\n"),
                            });
                        }
                        Decision::NoOpinion => {}
                    }
                }
                Err(e) => failures.push(e.0),
            }
        }
        if !failures.is_empty() {
            return Err(AuthzError(failures.join("; ")));
        }
        Ok(Answer::no_opinion(reasons.join("\n")))
    }

    /// The rules of `user` in `namespace` from every authorizer (kube's union rule
    /// resolver); `system:masters` may do everything.
    pub async fn rules_for(&self, user: &UserInfo, namespace: &str) -> Rules {
        if user.in_group(PRIVILEGED_GROUP) {
            return Rules::everything();
        }
        let mut rules = Rules::default();
        for a in &self.authorizers {
            rules.extend(a.rules_for(user, namespace).await);
        }
        rules
    }

    /// Authorizes or fails with kube's 403 (denied) or 500 (no authorizer could decide).
    pub async fn check(&self, attrs: &Attributes) -> Result<(), ApiError> {
        match self.authorize(attrs).await {
            Ok(a) if a.allowed() => Ok(()),
            Ok(a) => Err(forbidden(attrs, &a.reason)),
            Err(e) => Err(failed(attrs, &e)),
        }
    }
}

/// The 500 of a request no authorizer could decide because one failed.
pub fn failed(attrs: &Attributes, e: &AuthzError) -> ApiError {
    tracing::warn!(user = %attrs.user.name, verb = %attrs.verb, resource = %attrs.resource, path = %attrs.path, error = %e, "authorization failed");
    ApiError::internal(format!("authorization failed: {e}"))
}

/// kube's `forbiddenMessage`: what the user could not do.
pub fn forbidden_message(a: &Attributes) -> String {
    let user = &a.user.name;
    if !a.resource_request {
        return format!("User {user:?} cannot {} path {:?}", a.verb, a.path);
    }
    let mut resource = a.resource.clone();
    if !a.subresource.is_empty() {
        resource = format!("{resource}/{}", a.subresource);
    }
    if !a.namespace.is_empty() {
        return format!(
            "User {user:?} cannot {} resource {resource:?} in API group {:?} in the namespace {:?}",
            a.verb, a.group, a.namespace
        );
    }
    format!(
        "User {user:?} cannot {} resource {resource:?} in API group {:?} at the cluster scope",
        a.verb, a.group
    )
}

/// The 403 kube-apiserver answers a denied request with (`responsewriters.Forbidden` and
/// `apierrors.NewForbidden`): `<resource>.<group> "<name>" is forbidden: <message>[: reason]`.
pub fn forbidden(a: &Attributes, reason: &str) -> ApiError {
    let msg = forbidden_message(a);
    let err = if reason.is_empty() {
        msg
    } else {
        format!("{msg}: {reason}")
    };
    let qualified = match (a.resource.as_str(), a.group.as_str()) {
        ("", _) => String::new(),
        (r, "") => r.to_string(),
        (r, g) => format!("{r}.{g}"),
    };
    let message = if qualified.is_empty() {
        format!("forbidden: {err}")
    } else if a.name.is_empty() {
        format!("{qualified} is forbidden: {err}")
    } else {
        format!("{qualified} {:?} is forbidden: {err}", a.name)
    };
    ApiError::forbidden_msg(message).with_details(serde_json::json!({
        "name": a.name,
        "group": a.group,
        "kind": a.resource,
    }))
}

/// Every authenticated user may read discovery, OpenAPI and version (kube's
/// `system:discovery` and `system:public-info-viewer`). No opinion otherwise. (Standalone,
/// the RBAC bootstrap policy grants this, and Substrate's components' group
/// `substrate:system` is bound to `cluster-admin`; this authorizer is for servers without
/// local RBAC.)
pub struct SystemAuthorizer;

/// The non-resource paths any authenticated user may `get` (kube's `system:discovery`
/// ClusterRole).
pub const DISCOVERY_PATHS: &[&str] = &[
    "/api",
    "/api/*",
    "/apis",
    "/apis/*",
    "/healthz",
    "/livez",
    "/readyz",
    "/openapi",
    "/openapi/*",
    "/version",
    "/version/",
];

/// Whether `path` matches a non-resource URL rule (`*` at the end matches any suffix).
pub fn path_matches(rule: &str, path: &str) -> bool {
    if rule == "*" {
        return true;
    }
    match rule.strip_suffix('*') {
        Some(prefix) => path.starts_with(prefix),
        None => rule == path,
    }
}

/// The resources of `authorization.k8s.io` any authenticated user may `create` (kube's
/// `system:basic-user` ClusterRole): asking what oneself may do.
pub const SELF_REVIEW_RESOURCES: &[&str] = &["selfsubjectaccessreviews", "selfsubjectrulesreviews"];

impl Authorizer for SystemAuthorizer {
    fn authorize<'a>(&'a self, a: &'a Attributes) -> AnswerFuture<'a> {
        let authenticated = a.user.in_group("system:authenticated");
        let answer = if (!a.resource_request
            && a.verb == "get"
            && authenticated
            && DISCOVERY_PATHS.iter().any(|r| path_matches(r, &a.path)))
            || (a.resource_request
                && authenticated
                && a.verb == "create"
                && a.group == "authorization.k8s.io"
                && a.subresource.is_empty()
                && SELF_REVIEW_RESOURCES.contains(&a.resource.as_str()))
        {
            Answer::allow("")
        } else {
            Answer::no_opinion("")
        };
        Box::pin(async move { Ok(answer) })
    }

    fn rules_for<'a>(&'a self, user: &'a UserInfo, _namespace: &'a str) -> RulesFuture<'a> {
        let rules = if user.in_group("system:authenticated") {
            Rules {
                resource_rules: vec![ResourceRule {
                    verbs: vec!["create".into()],
                    api_groups: vec!["authorization.k8s.io".into()],
                    resources: SELF_REVIEW_RESOURCES
                        .iter()
                        .map(|r| r.to_string())
                        .collect(),
                    resource_names: Vec::new(),
                }],
                non_resource_rules: vec![NonResourceRule {
                    verbs: vec!["get".into()],
                    non_resource_urls: DISCOVERY_PATHS.iter().map(|p| p.to_string()).collect(),
                }],
                incomplete: false,
                evaluation_error: String::new(),
            }
        } else {
            Rules::default()
        };
        Box::pin(async move { rules })
    }
}

/// An authorizer that answers from a function (tests, fixed policies).
pub struct FnAuthorizer<F>(pub F);

impl<F> Authorizer for FnAuthorizer<F>
where
    F: Fn(&Attributes) -> Answer + Send + Sync,
{
    fn authorize<'a>(&'a self, attrs: &'a Attributes) -> AnswerFuture<'a> {
        let answer = (self.0)(attrs);
        Box::pin(async move { Ok(answer) })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn user(name: &str, groups: &[&str]) -> UserInfo {
        UserInfo::new(name, groups)
    }

    #[test]
    fn forbidden_messages_are_worded_as_kubernetes_words_them() {
        let alice = user("alice", &["team-a"]);
        let get = Attributes::resource(
            &alice,
            "get",
            "substrate.ate.dev",
            "v1",
            "actors",
            None,
            Some("team-b"),
            Some("x"),
        );
        let e = forbidden(&get, "");
        assert_eq!(e.code, 403);
        assert_eq!(
            e.message,
            "actors.substrate.ate.dev \"x\" is forbidden: User \"alice\" cannot get resource \"actors\" in API group \"substrate.ate.dev\" in the namespace \"team-b\""
        );
        let list = Attributes::resource(
            &alice,
            "list",
            "substrate.ate.dev",
            "v1",
            "actors",
            None,
            None,
            None,
        );
        assert_eq!(
            forbidden(&list, "").message,
            "actors.substrate.ate.dev is forbidden: User \"alice\" cannot list resource \"actors\" in API group \"substrate.ate.dev\" at the cluster scope"
        );
        let resume = Attributes::resource(
            &alice,
            "create",
            "substrate.ate.dev",
            "v1",
            "actors",
            Some("resume"),
            Some("team-a"),
            Some("x"),
        );
        assert_eq!(
            forbidden(
                &resume,
                "RBAC: clusterrole.rbac.authorization.k8s.io \"gone\" not found"
            )
            .message,
            "actors.substrate.ate.dev \"x\" is forbidden: User \"alice\" cannot create resource \"actors/resume\" in API group \"substrate.ate.dev\" in the namespace \"team-a\": RBAC: clusterrole.rbac.authorization.k8s.io \"gone\" not found"
        );
        let ns = Attributes::resource(
            &alice,
            "get",
            "",
            "v1",
            "namespaces",
            None,
            None,
            Some("team-b"),
        );
        assert_eq!(
            forbidden(&ns, "").message,
            "namespaces \"team-b\" is forbidden: User \"alice\" cannot get resource \"namespaces\" in API group \"\" at the cluster scope"
        );
        let path = Attributes::non_resource(&alice, "get", "/apis");
        assert_eq!(
            forbidden(&path, "").message,
            "forbidden: User \"alice\" cannot get path \"/apis\""
        );
    }

    #[tokio::test]
    async fn the_chain_allows_health_and_masters_and_stops_at_the_first_decision() {
        let deny_all: Arc<dyn Authorizer> = Arc::new(FnAuthorizer(|_: &Attributes| {
            Answer::no_opinion("nobody said yes")
        }));
        let chain = Chain::new(
            ALWAYS_ALLOW_PATHS.iter().map(|s| s.to_string()).collect(),
            vec![deny_all.clone()],
        );
        let alice = user("alice", &["system:authenticated"]);
        assert!(
            chain
                .authorize(&Attributes::non_resource(&alice, "get", "/healthz"))
                .await
                .unwrap()
                .allowed()
        );
        let apis = Attributes::non_resource(&alice, "get", "/apis");
        let a = chain.authorize(&apis).await.unwrap();
        assert_eq!(a.decision, Decision::NoOpinion);
        assert_eq!(a.reason, "nobody said yes");
        assert_eq!(chain.check(&apis).await.unwrap_err().code, 403);
        let root = user("root", &[PRIVILEGED_GROUP]);
        assert!(
            chain
                .authorize(&Attributes::non_resource(&root, "get", "/apis"))
                .await
                .unwrap()
                .allowed()
        );
        // First decision wins: a deny before an allow denies.
        let deny: Arc<dyn Authorizer> = Arc::new(FnAuthorizer(|_: &Attributes| Answer::deny("no")));
        let allow: Arc<dyn Authorizer> = Arc::new(FnAuthorizer(|_: &Attributes| Answer::allow("")));
        let chain = Chain::new(vec![], vec![deny_all, deny, allow]);
        let a = chain.authorize(&apis).await.unwrap();
        assert_eq!(a.decision, Decision::Deny);
        assert_eq!(a.reason, "nobody said yes\nno");
    }
}
