//! `authentication.k8s.io/v1` `TokenReview`: who does this bearer token name? Answered as
//! kube-apiserver's `tokenreview` REST storage answers: create only, cluster-scoped, nothing
//! stored, the request returned with `status` filled in (`201`).
//!
//! The answer is the apiserver's own bearer-token authentication
//! ([`crate::auth::Authenticator::authenticate_token`]): the `--token-auth-file`, and in
//! cluster mode the cluster's `TokenReview` (cached). A token nobody knows is
//! `authenticated: false`; a review that could not be made is `authenticated: false` with
//! `status.error` (as kube reports an authenticator's error). An empty `spec.token` is 400.
//!
//! Audiences: this apiserver has no API audiences of its own (no service-account issuer), and
//! its authenticators are audience-agnostic, so a review that names `spec.audiences` is
//! answered `authenticated: false`, as kube's audience-agnostic wrapper answers when the
//! requested audiences do not intersect the server's.
//!
//! Tokens are never logged.

use k8s_openapi::api::authentication::v1 as authnv1;
use serde_json::Value;

use super::{decode, encode};
use crate::auth::Authenticator;
use crate::auth::token::TokenError;
use crate::status::ApiError;

/// Answers one `TokenReview` (already authorized).
pub async fn review(authn: &Authenticator, obj: Value) -> Result<Value, ApiError> {
    let mut r: authnv1::TokenReview = decode("TokenReview", obj)?;
    if let Some(ns) = r.metadata.namespace.as_deref().filter(|n| !n.is_empty()) {
        return Err(ApiError::bad_request(format!(
            "namespace is not allowed on this type: {ns}"
        )));
    }
    let token = r.spec.token.clone().unwrap_or_default();
    if token.is_empty() {
        return Err(ApiError::bad_request(
            "token is required for TokenReview in authentication",
        ));
    }
    let mut status = authnv1::TokenReviewStatus {
        user: Some(Default::default()),
        ..Default::default()
    };
    if r.spec.audiences.as_ref().is_none_or(Vec::is_empty) {
        match authn.authenticate_token(&token).await {
            Ok(u) => {
                status.authenticated = Some(true);
                status.user = Some(authnv1::UserInfo {
                    username: Some(u.user.name),
                    uid: (!u.uid.is_empty()).then_some(u.uid),
                    groups: (!u.user.groups.is_empty()).then_some(u.user.groups),
                    extra: (!u.user.extra.is_empty()).then_some(u.user.extra),
                });
            }
            Err(TokenError::Refused(e)) | Err(TokenError::Failed(e)) => {
                status.authenticated = Some(false);
                status.error = (!e.is_empty()).then_some(e);
            }
        }
    } else {
        status.authenticated = Some(false);
    }
    r.status = Some(status);
    Ok(encode(&r))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::auth::token_file::StaticTokens;
    use serde_json::json;
    use std::sync::Arc;

    fn authn() -> Authenticator {
        let tokens =
            StaticTokens::parse("tokens.csv", "alice-token,alice,uid-1,\"team-a,devs\"\n").unwrap();
        Authenticator::from_bundles(Default::default())
            .unwrap()
            .with_static_tokens(Arc::new(tokens))
    }

    fn tr(spec: Value) -> Value {
        json!({"apiVersion": "authentication.k8s.io/v1", "kind": "TokenReview", "spec": spec})
    }

    #[tokio::test]
    async fn a_known_token_names_its_user() {
        let r = review(&authn(), tr(json!({"token": "alice-token"})))
            .await
            .unwrap();
        assert_eq!(
            r["status"],
            json!({"authenticated": true, "user": {"username": "alice", "uid": "uid-1",
                "groups": ["team-a", "devs", "system:authenticated"]}})
        );
        assert_eq!(r["spec"]["token"], "alice-token");
        assert_eq!(r["kind"], "TokenReview");
        assert_eq!(r["metadata"]["creationTimestamp"], Value::Null);
    }

    #[tokio::test]
    async fn unknown_tokens_audiences_and_bad_requests() {
        let a = authn();
        let r = review(&a, tr(json!({"token": "nope"}))).await.unwrap();
        assert_eq!(r["status"], json!({"authenticated": false, "user": {}}));
        let r = review(
            &a,
            tr(json!({"token": "alice-token", "audiences": ["https://elsewhere"]})),
        )
        .await
        .unwrap();
        assert_eq!(r["status"]["authenticated"], false);
        let e = review(&a, tr(json!({}))).await.unwrap_err();
        assert_eq!(
            (e.code, e.message.as_str()),
            (400, "token is required for TokenReview in authentication")
        );
        let mut ns = tr(json!({"token": "alice-token"}));
        ns["metadata"] = json!({"namespace": "team-a"});
        let e = review(&a, ns).await.unwrap_err();
        assert_eq!(e.message, "namespace is not allowed on this type: team-a");
        let e = review(&a, json!({"spec": "x"})).await.unwrap_err();
        assert_eq!(e.code, 400);
    }
}
