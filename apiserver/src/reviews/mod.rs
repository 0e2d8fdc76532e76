//! `authorization.k8s.io/v1`: asking the authorizer a question, as kube-apiserver serves it.
//! Create-only, nothing stored; the answer is the request with `status` filled in.
//!
//! - `SelfSubjectAccessReview` (`kubectl auth can-i`): may *I* do this? Asked with the
//!   caller's own user, groups and extra. Any authenticated user may create one
//!   ([`crate::authz::SELF_REVIEW_RESOURCES`], kube's `system:basic-user`).
//! - `SubjectAccessReview`: may *this user* do this? Needs `create subjectaccessreviews`.
//! - `LocalSubjectAccessReview` (`namespaces/<ns>/localsubjectaccessreviews`): the same,
//!   limited to one namespace; needs `create localsubjectaccessreviews` there.
//! - `SelfSubjectRulesReview` (`kubectl auth can-i --list`): what may I do in a namespace,
//!   from [`crate::authz::Authorizer::rules_for`]; `incomplete` when an authorizer cannot
//!   list its rules.
//!
//! Answers as kube's: `status.allowed`, `status.denied` (an authorizer said no, rather than
//! nobody saying yes), `status.reason`, `status.evaluationError` (an authorizer failed);
//! the same validation errors (422) and decoding errors (400).
//!
//! `authentication.k8s.io/v1` `TokenReview` ([`token`]) is served the same way: who does
//! this bearer token name? Needs `create tokenreviews` (kube's `system:auth-delegator`).

pub mod proto;
pub mod token;

use k8s_openapi::api::authorization::v1 as authv1;
use serde::Serialize;
use serde::de::DeserializeOwned;
use serde_json::{Value, json};

use crate::auth::UserInfo;
use crate::authz::{self, Attributes, Decision};
use crate::status::ApiError;

/// The API group of the access reviews.
pub const GROUP: &str = "authorization.k8s.io";
/// The API group of `TokenReview`.
pub const AUTHENTICATION_GROUP: &str = "authentication.k8s.io";
/// The one version of either group.
pub const VERSION: &str = "v1";
/// The groups served here, in kube's discovery order.
pub const GROUPS: [&str; 2] = [AUTHENTICATION_GROUP, GROUP];

/// One kind of review.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ReviewKind {
    pub group: &'static str,
    pub plural: &'static str,
    pub singular: &'static str,
    pub kind: &'static str,
    pub namespaced: bool,
}

pub const SELF_SUBJECT_ACCESS_REVIEWS: ReviewKind = ReviewKind {
    group: GROUP,
    plural: "selfsubjectaccessreviews",
    singular: "selfsubjectaccessreview",
    kind: "SelfSubjectAccessReview",
    namespaced: false,
};
pub const SUBJECT_ACCESS_REVIEWS: ReviewKind = ReviewKind {
    group: GROUP,
    plural: "subjectaccessreviews",
    singular: "subjectaccessreview",
    kind: "SubjectAccessReview",
    namespaced: false,
};
pub const LOCAL_SUBJECT_ACCESS_REVIEWS: ReviewKind = ReviewKind {
    group: GROUP,
    plural: "localsubjectaccessreviews",
    singular: "localsubjectaccessreview",
    kind: "LocalSubjectAccessReview",
    namespaced: true,
};
pub const SELF_SUBJECT_RULES_REVIEWS: ReviewKind = ReviewKind {
    group: GROUP,
    plural: "selfsubjectrulesreviews",
    singular: "selfsubjectrulesreview",
    kind: "SelfSubjectRulesReview",
    namespaced: false,
};

pub const TOKEN_REVIEWS: ReviewKind = ReviewKind {
    group: AUTHENTICATION_GROUP,
    plural: "tokenreviews",
    singular: "tokenreview",
    kind: "TokenReview",
    namespaced: false,
};

/// The kinds of `authentication.k8s.io`.
pub const AUTHENTICATION_KINDS: [ReviewKind; 1] = [TOKEN_REVIEWS];

/// The kinds of a group served here (empty for any other group).
pub fn kinds_of(group: &str) -> &'static [ReviewKind] {
    match group {
        GROUP => &KINDS,
        AUTHENTICATION_GROUP => &AUTHENTICATION_KINDS,
        _ => &[],
    }
}

/// Every access review kind, in kube's discovery order.
pub const KINDS: [ReviewKind; 4] = [
    LOCAL_SUBJECT_ACCESS_REVIEWS,
    SELF_SUBJECT_ACCESS_REVIEWS,
    SELF_SUBJECT_RULES_REVIEWS,
    SUBJECT_ACCESS_REVIEWS,
];

/// A request for one review endpoint.
#[derive(Debug, Clone)]
pub struct ReviewRequest {
    pub kind: ReviewKind,
    /// The path's namespace (`LocalSubjectAccessReview`).
    pub namespace: Option<String>,
}

impl ReviewRequest {
    /// What creating this review needs (`create <plural>` in the path's namespace).
    pub fn attributes(&self, user: &UserInfo) -> Attributes {
        Attributes::resource(
            user,
            "create",
            self.kind.group,
            VERSION,
            self.kind.plural,
            None,
            self.namespace.as_deref(),
            None,
        )
    }
}

/// Parses a path under `/apis/authorization.k8s.io/v1/` or `/apis/authentication.k8s.io/v1/`:
/// `None` for any other path (and the groups' discovery documents), `Some(Err)` for an
/// unknown resource (404) or a method other than POST (405).
pub fn parse(method: &http::Method, path: &str) -> Option<Result<ReviewRequest, ApiError>> {
    let parts: Vec<&str> = path.trim_matches('/').split('/').collect();
    let (group, rest) = match parts.as_slice() {
        ["apis", g, v, rest @ ..] if GROUPS.contains(g) && *v == VERSION && !rest.is_empty() => {
            (*g, rest)
        }
        _ => return None,
    };
    let (namespace, plural) = match rest {
        [plural] => (None, *plural),
        ["namespaces", ns, plural] => (Some(ns.to_string()), *plural),
        _ => return Some(Err(ApiError::path_not_found())),
    };
    let Some(kind) = kinds_of(group).iter().find(|k| k.plural == plural).copied() else {
        return Some(Err(ApiError::path_not_found()));
    };
    if kind.namespaced != namespace.is_some() {
        return Some(Err(ApiError::path_not_found()));
    }
    if method != http::Method::POST {
        return Some(Err(ApiError::method_not_allowed(method.as_str(), "POST")));
    }
    Some(Ok(ReviewRequest { kind, namespace }))
}

fn decode<T: DeserializeOwned>(kind: &str, obj: Value) -> Result<T, ApiError> {
    serde_json::from_value(obj).map_err(|e| {
        ApiError::bad_request(format!(
            "{kind} in version \"{VERSION}\" cannot be handled as a {kind}: {e}"
        ))
    })
}

fn encode<T: Serialize>(v: &T) -> Value {
    let mut out = serde_json::to_value(v).unwrap_or(Value::Null);
    // As kube's encoder: an unset creationTimestamp is `null`, not absent.
    if let Some(meta) = out.get_mut("metadata").and_then(Value::as_object_mut) {
        meta.entry("creationTimestamp").or_insert(Value::Null);
    }
    out
}

/// One validation failure, rendered as apimachinery's `field.Error`.
struct Invalid {
    field: &'static str,
    value: String,
    detail: &'static str,
}

/// kube's 422 for a review: `<Kind>.authorization.k8s.io "" is invalid: ...`.
fn invalid(kind: &str, errs: &[Invalid]) -> ApiError {
    let list: Vec<String> = errs
        .iter()
        .map(|e| format!("{}: Invalid value: {}: {}", e.field, e.value, e.detail))
        .collect();
    let summary = if list.len() == 1 {
        list[0].clone()
    } else {
        format!("[{}]", list.join(", "))
    };
    let causes: Vec<Value> = errs
        .iter()
        .map(|e| {
            json!({"reason": "FieldValueInvalid", "message": format!("Invalid value: {}: {}", e.value, e.detail), "field": e.field})
        })
        .collect();
    ApiError::new(
        422,
        "Invalid",
        format!("{kind}.{GROUP} \"\" is invalid: {summary}"),
    )
    .with_details(json!({"group": GROUP, "kind": kind, "causes": causes}))
}

/// Go's `%#v` of the internal `NonResourceAttributes`, as kube prints it in these errors.
fn go_non_resource(n: Option<&authv1::NonResourceAttributes>) -> String {
    match n {
        None => "\"null\"".into(),
        Some(n) => format!(
            "authorization.NonResourceAttributes{{Path:{:?}, Verb:{:?}}}",
            n.path.as_deref().unwrap_or_default(),
            n.verb.as_deref().unwrap_or_default()
        ),
    }
}

/// kube's `ValidateSelfSubjectAccessReviewSpec` (and the first half of
/// `ValidateSubjectAccessReviewSpec`): exactly one of the two attribute kinds.
fn validate_attributes(
    resource: Option<&authv1::ResourceAttributes>,
    non_resource: Option<&authv1::NonResourceAttributes>,
) -> Vec<Invalid> {
    let mut errs = Vec::new();
    if resource.is_some() && non_resource.is_some() {
        errs.push(Invalid {
            field: "spec.nonResourceAttributes",
            value: go_non_resource(non_resource),
            detail: "cannot be specified in combination with resourceAttributes",
        });
    }
    if resource.is_none() && non_resource.is_none() {
        errs.push(Invalid {
            field: "spec.resourceAttributes",
            value: go_non_resource(non_resource),
            detail: "exactly one of nonResourceAttributes or resourceAttributes must be specified",
        });
    }
    errs
}

/// The question a review asks (kube's `authorizationutil.ResourceAttributesFrom` and
/// `NonResourceAttributesFrom`).
fn question(
    user: &UserInfo,
    resource: Option<&authv1::ResourceAttributes>,
    non_resource: Option<&authv1::NonResourceAttributes>,
) -> Attributes {
    let s = |v: &Option<String>| v.clone().unwrap_or_default();
    match (resource, non_resource) {
        (Some(r), _) => Attributes {
            user: user.clone(),
            verb: s(&r.verb),
            resource_request: true,
            path: String::new(),
            group: s(&r.group),
            version: s(&r.version),
            resource: s(&r.resource),
            subresource: s(&r.subresource),
            namespace: s(&r.namespace),
            name: s(&r.name),
        },
        (None, Some(n)) => Attributes::non_resource(user, &s(&n.verb), &s(&n.path)),
        (None, None) => Attributes::non_resource(user, "", ""),
    }
}

/// Asks the chain; the review's status (an authorizer's failure is `evaluationError`).
async fn answer(chain: &authz::Chain, attrs: &Attributes) -> authv1::SubjectAccessReviewStatus {
    match chain.authorize(attrs).await {
        Ok(a) => authv1::SubjectAccessReviewStatus {
            allowed: a.decision == Decision::Allow,
            denied: (a.decision == Decision::Deny).then_some(true),
            reason: (!a.reason.is_empty()).then_some(a.reason),
            evaluation_error: None,
        },
        Err(e) => authv1::SubjectAccessReviewStatus {
            allowed: false,
            denied: None,
            reason: None,
            evaluation_error: Some(e.0),
        },
    }
}

fn user_of(spec: &authv1::SubjectAccessReviewSpec) -> UserInfo {
    UserInfo {
        name: spec.user.clone().unwrap_or_default(),
        groups: spec.groups.clone().unwrap_or_default(),
        extra: spec.extra.clone().unwrap_or_default(),
    }
}

/// kube's `ValidateSubjectAccessReviewSpec`.
fn validate_sar_spec(spec: &authv1::SubjectAccessReviewSpec) -> Vec<Invalid> {
    let mut errs = validate_attributes(
        spec.resource_attributes.as_ref(),
        spec.non_resource_attributes.as_ref(),
    );
    if spec.user.as_deref().unwrap_or_default().is_empty()
        && spec.groups.as_ref().is_none_or(Vec::is_empty)
    {
        errs.push(Invalid {
            field: "spec.user",
            value: format!("{:?}", spec.user.as_deref().unwrap_or_default()),
            detail: "at least one of user or group must be specified",
        });
    }
    errs
}

fn rules_status(rules: authz::Rules) -> authv1::SubjectRulesReviewStatus {
    let some = |v: Vec<String>| (!v.is_empty()).then_some(v);
    authv1::SubjectRulesReviewStatus {
        resource_rules: rules
            .resource_rules
            .into_iter()
            .map(|r| authv1::ResourceRule {
                verbs: r.verbs,
                api_groups: some(r.api_groups),
                resources: some(r.resources),
                resource_names: some(r.resource_names),
            })
            .collect(),
        non_resource_rules: rules
            .non_resource_rules
            .into_iter()
            .map(|r| authv1::NonResourceRule {
                verbs: r.verbs,
                non_resource_urls: some(r.non_resource_urls),
            })
            .collect(),
        incomplete: rules.incomplete,
        evaluation_error: (!rules.evaluation_error.is_empty()).then_some(rules.evaluation_error),
    }
}

/// Answers one review (already authorized): the object to return with `201 Created`.
pub async fn review(
    chain: &authz::Chain,
    user: &UserInfo,
    req: &ReviewRequest,
    obj: Value,
) -> Result<Value, ApiError> {
    let kind = req.kind.kind;
    match req.kind.plural {
        "selfsubjectaccessreviews" => {
            let mut r: authv1::SelfSubjectAccessReview = decode(kind, obj)?;
            let errs = validate_attributes(
                r.spec.resource_attributes.as_ref(),
                r.spec.non_resource_attributes.as_ref(),
            );
            if !errs.is_empty() {
                return Err(invalid(kind, &errs));
            }
            let attrs = question(
                user,
                r.spec.resource_attributes.as_ref(),
                r.spec.non_resource_attributes.as_ref(),
            );
            r.status = Some(answer(chain, &attrs).await);
            Ok(encode(&r))
        }
        "subjectaccessreviews" => {
            let mut r: authv1::SubjectAccessReview = decode(kind, obj)?;
            let errs = validate_sar_spec(&r.spec);
            if !errs.is_empty() {
                return Err(invalid(kind, &errs));
            }
            let attrs = question(
                &user_of(&r.spec),
                r.spec.resource_attributes.as_ref(),
                r.spec.non_resource_attributes.as_ref(),
            );
            r.status = Some(answer(chain, &attrs).await);
            Ok(encode(&r))
        }
        "localsubjectaccessreviews" => {
            let mut r: authv1::LocalSubjectAccessReview = decode(kind, obj)?;
            let ns = req.namespace.clone().unwrap_or_default();
            match r.metadata.namespace.as_deref() {
                None | Some("") => r.metadata.namespace = Some(ns.clone()),
                Some(other) if other != ns => {
                    return Err(ApiError::bad_request(
                        "the namespace of the provided object does not match the namespace sent on the request",
                    ));
                }
                Some(_) => {}
            }
            let mut errs = validate_sar_spec(&r.spec);
            if let Some(ra) = &r.spec.resource_attributes
                && ra.namespace.as_deref().unwrap_or_default() != ns
            {
                errs.push(Invalid {
                    field: "spec.resourceAttributes.namespace",
                    value: format!("{:?}", ra.namespace.as_deref().unwrap_or_default()),
                    detail: "must match metadata.namespace",
                });
            }
            if let Some(n) = &r.spec.non_resource_attributes {
                errs.push(Invalid {
                    field: "spec.nonResourceAttributes",
                    value: go_non_resource(Some(n)),
                    detail: "disallowed on this kind of request",
                });
            }
            if !errs.is_empty() {
                return Err(invalid(kind, &errs));
            }
            let attrs = question(&user_of(&r.spec), r.spec.resource_attributes.as_ref(), None);
            r.status = Some(answer(chain, &attrs).await);
            Ok(encode(&r))
        }
        _ => {
            let r: authv1::SelfSubjectRulesReview = decode(kind, obj)?;
            let ns = r.spec.namespace.clone().unwrap_or_default();
            if ns.is_empty() {
                return Err(ApiError::bad_request("no namespace on request"));
            }
            let rules = chain.rules_for(user, &ns).await;
            // As kube: the answer carries only the status.
            let out = authv1::SelfSubjectRulesReview {
                status: Some(rules_status(rules)),
                ..Default::default()
            };
            Ok(encode(&out))
        }
    }
}

// ---- discovery ----

/// `APIResourceList` entries (legacy discovery of `/apis/<group>/v1`).
pub fn api_resources(group: &str) -> Vec<Value> {
    kinds_of(group)
        .iter()
        .map(|k| {
            json!({
                "name": k.plural,
                "singularName": k.singular,
                "namespaced": k.namespaced,
                "kind": k.kind,
                "verbs": ["create"],
            })
        })
        .collect()
}

/// `APIResourceDiscovery` entries (aggregated discovery).
pub fn resource_discoveries(group: &str) -> Vec<Value> {
    kinds_of(group)
        .iter()
        .map(|k| {
            json!({
                "resource": k.plural,
                "responseKind": {"group": k.group, "version": VERSION, "kind": k.kind},
                "scope": if k.namespaced { "Namespaced" } else { "Cluster" },
                "singularResource": k.singular,
                "verbs": ["create"],
            })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeMap;
    use std::sync::Arc;

    fn alice() -> UserInfo {
        UserInfo {
            name: "alice".into(),
            groups: vec!["team-a".into(), "system:authenticated".into()],
            extra: BTreeMap::new(),
        }
    }

    /// alice may get actors in team-a; bob is explicitly denied everything.
    fn chain() -> authz::Chain {
        let policy = authz::FnAuthorizer(|a: &Attributes| {
            if a.user.name == "bob" {
                authz::Answer::deny("bob is banned")
            } else if a.user.name == "alice"
                && a.verb == "get"
                && a.resource == "actors"
                && a.namespace == "team-a"
            {
                authz::Answer::allow("alice reads team-a")
            } else {
                authz::Answer::no_opinion("")
            }
        });
        authz::Chain::new(
            vec![],
            vec![Arc::new(authz::SystemAuthorizer), Arc::new(policy)],
        )
    }

    fn ssar(ns: &str) -> Value {
        json!({"apiVersion": "authorization.k8s.io/v1", "kind": "SelfSubjectAccessReview",
            "spec": {"resourceAttributes": {"namespace": ns, "verb": "get", "group": "substrate.ate.dev", "resource": "actors"}}})
    }

    fn post(plural: &str) -> ReviewRequest {
        let kind = KINDS.iter().find(|k| k.plural == plural).copied().unwrap();
        ReviewRequest {
            kind,
            namespace: None,
        }
    }

    #[tokio::test]
    async fn self_subject_access_reviews_answer_for_the_caller() {
        let c = chain();
        let r = review(
            &c,
            &alice(),
            &post("selfsubjectaccessreviews"),
            ssar("team-a"),
        )
        .await
        .unwrap();
        assert_eq!(
            r["status"],
            json!({"allowed": true, "reason": "alice reads team-a"})
        );
        assert_eq!(r["kind"], "SelfSubjectAccessReview");
        assert_eq!(r["spec"]["resourceAttributes"]["namespace"], "team-a");
        let r = review(
            &c,
            &alice(),
            &post("selfsubjectaccessreviews"),
            ssar("team-b"),
        )
        .await
        .unwrap();
        assert_eq!(r["status"], json!({"allowed": false}));
        let bob = UserInfo {
            name: "bob".into(),
            ..alice()
        };
        let r = review(&c, &bob, &post("selfsubjectaccessreviews"), ssar("team-a"))
            .await
            .unwrap();
        assert_eq!(
            r["status"],
            json!({"allowed": false, "denied": true, "reason": "bob is banned"})
        );
    }

    #[tokio::test]
    async fn reviews_are_validated_as_kubernetes_validates_them() {
        let c = chain();
        let e = review(
            &c,
            &alice(),
            &post("selfsubjectaccessreviews"),
            json!({"spec": {}}),
        )
        .await
        .unwrap_err();
        assert_eq!(e.code, 422);
        assert_eq!(
            e.message,
            "SelfSubjectAccessReview.authorization.k8s.io \"\" is invalid: spec.resourceAttributes: Invalid value: \"null\": exactly one of nonResourceAttributes or resourceAttributes must be specified"
        );
        let both = json!({"spec": {"resourceAttributes": {"verb": "get"}, "nonResourceAttributes": {"path": "/apis", "verb": "get"}}});
        let e = review(&c, &alice(), &post("selfsubjectaccessreviews"), both)
            .await
            .unwrap_err();
        assert_eq!(
            e.message,
            "SelfSubjectAccessReview.authorization.k8s.io \"\" is invalid: spec.nonResourceAttributes: Invalid value: authorization.NonResourceAttributes{Path:\"/apis\", Verb:\"get\"}: cannot be specified in combination with resourceAttributes"
        );
        let e = review(
            &c,
            &alice(),
            &post("subjectaccessreviews"),
            json!({"spec": {"resourceAttributes": {"verb": "get"}}}),
        )
        .await
        .unwrap_err();
        assert_eq!(
            e.message,
            "SubjectAccessReview.authorization.k8s.io \"\" is invalid: spec.user: Invalid value: \"\": at least one of user or group must be specified"
        );
        let e = review(
            &c,
            &alice(),
            &post("selfsubjectaccessreviews"),
            json!({"kind": "Pod", "spec": {}}),
        )
        .await
        .unwrap_err();
        assert_eq!(e.code, 400);
        assert!(e.message.starts_with("SelfSubjectAccessReview in version \"v1\" cannot be handled as a SelfSubjectAccessReview: "), "{}", e.message);
    }

    #[tokio::test]
    async fn subject_access_reviews_ask_about_another_user() {
        let c = chain();
        let sar = json!({"spec": {"user": "alice", "groups": ["team-a"], "resourceAttributes": {"namespace": "team-a", "verb": "get", "group": "substrate.ate.dev", "resource": "actors"}}});
        let admin = UserInfo {
            name: "root".into(),
            groups: vec!["system:masters".into()],
            extra: BTreeMap::new(),
        };
        let r = review(&c, &admin, &post("subjectaccessreviews"), sar)
            .await
            .unwrap();
        assert_eq!(r["status"]["allowed"], true);
        // Local: the path's namespace must be the question's.
        let local = ReviewRequest {
            kind: LOCAL_SUBJECT_ACCESS_REVIEWS,
            namespace: Some("team-b".into()),
        };
        let lsar = json!({"spec": {"user": "alice", "resourceAttributes": {"namespace": "team-a", "verb": "get", "resource": "actors"}}});
        let e = review(&c, &admin, &local, lsar).await.unwrap_err();
        assert_eq!(
            e.message,
            "LocalSubjectAccessReview.authorization.k8s.io \"\" is invalid: spec.resourceAttributes.namespace: Invalid value: \"team-a\": must match metadata.namespace"
        );
        let lsar = json!({"spec": {"user": "alice", "resourceAttributes": {"namespace": "team-b", "verb": "get", "group": "substrate.ate.dev", "resource": "actors"}}});
        let r = review(&c, &admin, &local, lsar).await.unwrap();
        assert_eq!(r["metadata"]["namespace"], "team-b");
        assert_eq!(r["status"], json!({"allowed": false}));
    }

    #[tokio::test]
    async fn rules_reviews_list_what_the_authorizers_can_tell() {
        let c = chain();
        let r = review(
            &c,
            &alice(),
            &post("selfsubjectrulesreviews"),
            json!({"spec": {"namespace": "team-a"}}),
        )
        .await
        .unwrap();
        // The system authorizer lists its rules; the function authorizer cannot.
        assert_eq!(r["status"]["incomplete"], true);
        assert_eq!(
            r["status"]["resourceRules"][0],
            json!({"verbs": ["create"], "apiGroups": ["authorization.k8s.io"], "resources": ["selfsubjectaccessreviews", "selfsubjectrulesreviews"]})
        );
        assert_eq!(r["status"]["nonResourceRules"][0]["verbs"], json!(["get"]));
        let e = review(
            &c,
            &alice(),
            &post("selfsubjectrulesreviews"),
            json!({"spec": {}}),
        )
        .await
        .unwrap_err();
        assert_eq!(
            (e.code, e.message.as_str()),
            (400, "no namespace on request")
        );
    }

    #[test]
    fn paths() {
        let post = http::Method::POST;
        assert!(parse(&post, "/apis/authorization.k8s.io/v1").is_none());
        assert!(parse(&post, "/apis/substrate.ate.dev/v1alpha1/actors").is_none());
        let r = parse(
            &post,
            "/apis/authorization.k8s.io/v1/selfsubjectaccessreviews",
        )
        .unwrap()
        .unwrap();
        assert_eq!(r.kind, SELF_SUBJECT_ACCESS_REVIEWS);
        let r = parse(
            &post,
            "/apis/authorization.k8s.io/v1/namespaces/team-a/localsubjectaccessreviews",
        )
        .unwrap()
        .unwrap();
        assert_eq!(r.namespace.as_deref(), Some("team-a"));
        let e = parse(
            &http::Method::GET,
            "/apis/authorization.k8s.io/v1/subjectaccessreviews",
        )
        .unwrap()
        .unwrap_err();
        assert_eq!(e.code, 405);
        let e = parse(
            &post,
            "/apis/authorization.k8s.io/v1/localsubjectaccessreviews",
        )
        .unwrap()
        .unwrap_err();
        assert_eq!(e.code, 404);
        let e = parse(&post, "/apis/authorization.k8s.io/v1/nope")
            .unwrap()
            .unwrap_err();
        assert_eq!(e.code, 404);
        let r = parse(&post, "/apis/authentication.k8s.io/v1/tokenreviews")
            .unwrap()
            .unwrap();
        assert_eq!(r.kind, TOKEN_REVIEWS);
        assert_eq!(r.attributes(&alice()).group, "authentication.k8s.io");
        assert_eq!(r.attributes(&alice()).resource, "tokenreviews");
        // Each group has its own kinds.
        let e = parse(&post, "/apis/authentication.k8s.io/v1/subjectaccessreviews")
            .unwrap()
            .unwrap_err();
        assert_eq!(e.code, 404);
        let e = parse(&post, "/apis/authorization.k8s.io/v1/tokenreviews")
            .unwrap()
            .unwrap_err();
        assert_eq!(e.code, 404);
        assert!(parse(&post, "/apis/authentication.k8s.io/v1").is_none());
    }
}
