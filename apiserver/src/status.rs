//! The one mapping from failures to Kubernetes `metav1.Status` responses.
//!
//! Every handler returns [`ApiError`]; the server renders it as a `Status` object with the code,
//! reason and message kubectl users know (`actors.substrate.ate.dev "x" not found`, 409
//! `the object has been modified; ...`, 422 with causes, 403, 401).

use serde_json::{Value, json};

use crds::resources::ResourceInfo;
use crds::validation::FieldError;

use crate::storage::StorageError;

/// An API failure, rendered as a `metav1.Status`.
#[derive(Debug, Clone, thiserror::Error)]
#[error("{code} {reason}: {message}")]
pub struct ApiError {
    pub code: u16,
    pub reason: &'static str,
    pub message: String,
    pub details: Option<Box<Value>>,
    /// Seconds a client should wait before retrying (`Retry-After`).
    pub retry_after: Option<u64>,
    /// `metadata.continue` of the Status (an expired list continue token's inconsistent
    /// replacement).
    pub continue_token: Option<String>,
    /// The methods the resource allows (the `Allow` header of a 405).
    pub allow: Option<&'static str>,
}

pub(crate) fn details(res: &ResourceInfo, name: &str) -> Value {
    json!({"name": name, "group": res.group, "kind": res.plural})
}

impl ApiError {
    pub fn new(code: u16, reason: &'static str, message: impl Into<String>) -> Self {
        Self {
            code,
            reason,
            message: message.into(),
            details: None,
            retry_after: None,
            continue_token: None,
            allow: None,
        }
    }
    pub(crate) fn with_details(mut self, d: Value) -> Self {
        self.details = Some(Box::new(d));
        self
    }
    pub fn bad_request(msg: impl Into<String>) -> Self {
        Self::new(400, "BadRequest", msg)
    }
    pub fn unauthorized() -> Self {
        Self::new(401, "Unauthorized", "Unauthorized")
    }
    pub fn forbidden_msg(msg: impl Into<String>) -> Self {
        Self::new(403, "Forbidden", msg)
    }
    pub fn not_found(res: &ResourceInfo, name: &str) -> Self {
        Self::new(
            404,
            "NotFound",
            format!("{} \"{name}\" not found", res.qualified()),
        )
        .with_details(details(res, name))
    }
    pub fn not_found_raw(qualified: &str, name: &str) -> Self {
        Self::new(404, "NotFound", format!("{qualified} \"{name}\" not found"))
            .with_details(json!({"name": name, "kind": qualified}))
    }
    pub fn path_not_found() -> Self {
        Self::new(
            404,
            "NotFound",
            "the server could not find the requested resource",
        )
    }
    pub fn already_exists(res: &ResourceInfo, name: &str) -> Self {
        Self::new(
            409,
            "AlreadyExists",
            format!("{} \"{name}\" already exists", res.qualified()),
        )
        .with_details(details(res, name))
    }
    pub fn conflict(res: &ResourceInfo, name: &str) -> Self {
        Self::new(
            409,
            "Conflict",
            format!(
                "Operation cannot be fulfilled on {} \"{name}\": the object has been modified; please apply your changes to the latest version and try again",
                res.qualified()
            ),
        )
        .with_details(details(res, name))
    }
    pub fn conflict_msg(res: &ResourceInfo, name: &str, msg: &str) -> Self {
        Self::new(
            409,
            "Conflict",
            format!(
                "Operation cannot be fulfilled on {} \"{name}\": {msg}",
                res.qualified()
            ),
        )
        .with_details(details(res, name))
    }
    pub fn invalid(res: &ResourceInfo, name: &str, errs: &[FieldError]) -> Self {
        let causes: Vec<Value> = errs
            .iter()
            .map(|e| json!({"reason": e.kind.cause_reason(), "message": e.to_string().strip_prefix(&format!("{}: ", e.field)).map_or_else(|| e.to_string(), str::to_string), "field": e.field}))
            .collect();
        let list: Vec<String> = errs.iter().map(ToString::to_string).collect();
        let summary = if list.len() == 1 {
            list[0].clone()
        } else {
            format!("[{}]", list.join(", "))
        };
        Self::new(
            422,
            "Invalid",
            format!(
                "{}.{} \"{name}\" is invalid: {summary}",
                res.kind, res.group
            ),
        )
        .with_details(json!({"name": name, "group": res.group, "kind": res.kind, "causes": causes}))
    }
    /// 405 for `method` on a path that allows only `allow` (e.g. `"GET, POST"`), which is
    /// sent as the `Allow` header, as kube-apiserver does.
    pub fn method_not_allowed(method: &str, allow: &'static str) -> Self {
        let mut e = Self::new(
            405,
            "MethodNotAllowed",
            format!("the server does not allow this method on the requested resource ({method})"),
        );
        e.allow = Some(allow);
        e
    }
    pub fn unsupported_media_type(got: &str, accepted: &[&str]) -> Self {
        Self::new(
            415,
            "UnsupportedMediaType",
            format!(
                "the body of the request was in an unknown format - accepted media types include: {} (got {got:?})",
                accepted.join(", ")
            ),
        )
    }
    pub fn not_acceptable(accepted: &[&str]) -> Self {
        Self::new(
            406,
            "NotAcceptable",
            format!(
                "only the following media types are accepted: {}",
                accepted.join(", ")
            ),
        )
    }
    pub fn too_large(limit: usize) -> Self {
        Self::new(
            413,
            "RequestEntityTooLarge",
            format!("Request entity too large: limit is {limit}"),
        )
    }
    pub fn gone(msg: impl Into<String>) -> Self {
        Self::new(410, "Expired", msg)
    }
    pub fn timeout(msg: impl Into<String>) -> Self {
        Self::new(504, "Timeout", msg)
    }
    /// A read or watch from a resourceVersion the cache did not reach within the wait: kube's
    /// `NewTooLargeResourceVersionError` (504 `Timeout`, cause `ResourceVersionTooLarge`,
    /// retry after 1 s).
    pub fn too_large_resource_version(rv: u64, current: u64) -> Self {
        let mut e = Self::new(
            504,
            "Timeout",
            format!("Timeout: Too large resource version: {rv}, current: {current}"),
        )
        .with_details(json!({
            "causes": [{"reason": "ResourceVersionTooLarge", "message": "Too large resource version"}],
        }));
        e.retry_after = Some(1);
        e
    }
    /// 422 about request options (`CreateOptions`, `DeleteOptions`, ...), worded as
    /// Kubernetes' `ValidateXOptions`: `<kind>.meta.k8s.io "" is invalid: <field>: <detail>`
    /// with one cause.
    pub fn options_invalid(kind: &str, field: &str, cause: &str, detail: &str) -> Self {
        Self::new(
            422,
            "Invalid",
            format!("{kind}.meta.k8s.io \"\" is invalid: {field}: {detail}"),
        )
        .with_details(json!({
            "group": "meta.k8s.io",
            "kind": kind,
            "causes": [{"reason": cause, "message": detail, "field": field}],
        }))
    }
    /// 414: the request URI is longer than the server reads.
    pub fn uri_too_long(limit: usize) -> Self {
        Self::new(
            414,
            "RequestURITooLong",
            format!("the request URI is too long: limit is {limit} bytes"),
        )
    }
    pub fn internal(msg: impl Into<String>) -> Self {
        Self::new(
            500,
            "InternalError",
            format!("Internal error occurred: {}", msg.into()),
        )
    }
    pub fn unavailable(msg: impl Into<String>) -> Self {
        let mut e = Self::new(503, "ServiceUnavailable", msg);
        e.retry_after = Some(1);
        e
    }

    /// Maps a storage failure for `res`/`name`.
    pub fn from_storage(res: &ResourceInfo, name: &str, e: StorageError) -> Self {
        match e {
            StorageError::AlreadyExists { .. } => Self::already_exists(res, name),
            StorageError::NotFound { .. } => Self::not_found(res, name),
            StorageError::Conflict { .. } => Self::conflict(res, name),
            StorageError::TooOld { requested, oldest } => {
                Self::gone(format!("too old resource version: {requested} ({oldest})"))
            }
            StorageError::Expired => Self::gone("the watch cache was reset; relist"),
            StorageError::Timeout { rv, current } => Self::too_large_resource_version(rv, current),
            other => {
                tracing::error!(resource = %res.qualified(), name, error = %other, "storage failure");
                Self::unavailable(format!("storage is unavailable: {other}"))
            }
        }
    }

    /// The `metav1.Status` body.
    pub fn to_status(&self) -> Value {
        let mut s = json!({
            "kind": "Status",
            "apiVersion": "v1",
            "metadata": {},
            "status": "Failure",
            "message": self.message,
            "reason": self.reason,
            "code": self.code,
        });
        if let Some(d) = &self.details {
            s["details"] = (**d).clone();
        }
        if let Some(c) = &self.continue_token {
            s["metadata"] = json!({"continue": c});
        }
        if let Some(r) = self.retry_after {
            let d = s
                .as_object_mut()
                .map(|m| m.entry("details").or_insert_with(|| json!({})));
            if let Some(d) = d {
                d["retryAfterSeconds"] = json!(r);
            }
        }
        s
    }
}

/// A `Status` of success, as DELETE returns for some operations.
pub fn success_status(res: &ResourceInfo, name: &str, uid: Option<&str>) -> Value {
    let mut d = details(res, name);
    if let Some(uid) = uid {
        d["uid"] = json!(uid);
    }
    json!({"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Success", "details": d})
}

#[cfg(test)]
mod tests {
    use super::*;
    use crds::resources::ACTORS;

    #[test]
    fn not_found_reads_like_kubernetes() {
        let s = ApiError::not_found(&ACTORS, "x").to_status();
        assert_eq!(s["message"], "actors.substrate.ate.dev \"x\" not found");
        assert_eq!(s["code"], 404);
        assert_eq!(s["details"]["kind"], "actors");
    }

    #[test]
    fn too_large_resource_version_reads_like_kubernetes() {
        let e = ApiError::from_storage(&ACTORS, "", StorageError::Timeout { rv: 10, current: 4 });
        let s = e.to_status();
        assert_eq!(
            (s["code"].as_u64(), s["reason"].as_str()),
            (Some(504), Some("Timeout"))
        );
        assert_eq!(
            s["message"],
            "Timeout: Too large resource version: 10, current: 4"
        );
        assert_eq!(
            s["details"]["causes"][0]["reason"],
            "ResourceVersionTooLarge"
        );
        assert_eq!(s["details"]["retryAfterSeconds"], 1);
    }

    #[test]
    fn invalid_lists_causes() {
        let errs = [
            FieldError::required("spec.template.name", ""),
            FieldError::invalid("spec.idleTimeout", "x", "bad"),
        ];
        let s = ApiError::invalid(&ACTORS, "a", &errs).to_status();
        assert_eq!(s["code"], 422);
        assert_eq!(
            s["message"],
            "Actor.substrate.ate.dev \"a\" is invalid: [spec.template.name: Required value, spec.idleTimeout: Invalid value: \"x\": bad]"
        );
        assert_eq!(s["details"]["causes"][1]["field"], "spec.idleTimeout");
    }
}
