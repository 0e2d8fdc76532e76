//! Pure validation: names, labels, per-kind spec rules and immutable fields.
//!
//! Errors mirror apimachinery's `field.Error` so the apiserver can turn them into a 422
//! `Status` with one cause per error (`spec.idleTimeout: Invalid value: "5x": ...`).

use std::fmt;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::{LabelSelector, ObjectMeta};

use crate::ate::{ActorTemplateSpec, WorkerPoolSpec};
use crate::substrate::{ActorSpec, WorkerSpec};

/// What kind of problem a [`FieldError`] reports; spelled like apimachinery's `field.ErrorType`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorType {
    Required,
    Invalid,
    NotSupported,
    Duplicate,
    Forbidden,
    TooLong,
}

impl ErrorType {
    /// The `reason` of a `StatusCause`.
    pub fn cause_reason(self) -> &'static str {
        match self {
            Self::Required => "FieldValueRequired",
            Self::Invalid => "FieldValueInvalid",
            Self::NotSupported => "FieldValueNotSupported",
            Self::Duplicate => "FieldValueDuplicate",
            Self::Forbidden => "FieldValueForbidden",
            Self::TooLong => "FieldValueTooLong",
        }
    }

    fn text(self) -> &'static str {
        match self {
            Self::Required => "Required value",
            Self::Invalid => "Invalid value",
            Self::NotSupported => "Unsupported value",
            Self::Duplicate => "Duplicate value",
            Self::Forbidden => "Forbidden",
            Self::TooLong => "Too long",
        }
    }
}

/// One validation failure at a field path.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FieldError {
    pub kind: ErrorType,
    /// Dotted path, e.g. `spec.containers[0].name`.
    pub field: String,
    /// The offending value, rendered as JSON, when there is one to show.
    pub value: Option<String>,
    pub detail: String,
}

impl FieldError {
    pub fn invalid(
        field: impl Into<String>,
        value: impl fmt::Debug,
        detail: impl Into<String>,
    ) -> Self {
        Self {
            kind: ErrorType::Invalid,
            field: field.into(),
            value: Some(format!("{value:?}")),
            detail: detail.into(),
        }
    }
    pub fn required(field: impl Into<String>, detail: impl Into<String>) -> Self {
        Self {
            kind: ErrorType::Required,
            field: field.into(),
            value: None,
            detail: detail.into(),
        }
    }
    pub fn forbidden(field: impl Into<String>, detail: impl Into<String>) -> Self {
        Self {
            kind: ErrorType::Forbidden,
            field: field.into(),
            value: None,
            detail: detail.into(),
        }
    }
    pub fn duplicate(field: impl Into<String>, value: impl fmt::Debug) -> Self {
        Self {
            kind: ErrorType::Duplicate,
            field: field.into(),
            value: Some(format!("{value:?}")),
            detail: String::new(),
        }
    }
    pub fn not_supported(
        field: impl Into<String>,
        value: impl fmt::Debug,
        supported: &[&str],
    ) -> Self {
        let list: Vec<String> = supported.iter().map(|s| format!("{s:?}")).collect();
        Self {
            kind: ErrorType::NotSupported,
            field: field.into(),
            value: Some(format!("{value:?}")),
            detail: format!("supported values: {}", list.join(", ")),
        }
    }
    pub fn too_long(field: impl Into<String>, max: usize) -> Self {
        Self {
            kind: ErrorType::TooLong,
            field: field.into(),
            value: None,
            detail: format!("must have at most {max} bytes"),
        }
    }
    /// `field is immutable`, as Kubernetes says it.
    pub fn immutable(field: impl Into<String>, value: impl fmt::Debug) -> Self {
        Self::invalid(field, value, "field is immutable")
    }
}

/// A JSON value shown as JSON (`"a"`, `80`, `{"containerPort":80}`) where a [`FieldError`]
/// takes `Debug` (which would print `String("a")`).
pub struct Json<'a>(pub &'a serde_json::Value);

impl fmt::Debug for Json<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0)
    }
}

impl fmt::Display for FieldError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.field, self.kind.text())?;
        if let Some(v) = &self.value {
            write!(f, ": {v}")?;
        }
        if !self.detail.is_empty() {
            write!(f, ": {}", self.detail)?;
        }
        Ok(())
    }
}

const DNS1123_LABEL_FMT: &str = "[a-z0-9]([-a-z0-9]*[a-z0-9])?";
const DNS1123_SUBDOMAIN_FMT: &str =
    "[a-z0-9]([-a-z0-9]*[a-z0-9])?(\\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*";

fn is_label_chars(s: &str) -> bool {
    let b = s.as_bytes();
    !b.is_empty()
        && b.iter()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || *c == b'-')
        && b[0] != b'-'
        && b[b.len() - 1] != b'-'
}

/// Problems with `name` as an RFC 1123 label (what atespaces and actors need: both are DNS
/// labels in `<actor>.<atespace>.actors...`).
pub fn dns1123_label(name: &str) -> Vec<String> {
    let mut errs = Vec::new();
    if name.len() > 63 {
        errs.push("must be no more than 63 characters".to_string());
    }
    if !is_label_chars(name) {
        errs.push(format!(
            "a lowercase RFC 1123 label must consist of lower case alphanumeric characters or '-', and must start and end with an alphanumeric character (e.g. 'my-name',  or '123-abc', regex used for validation is '{DNS1123_LABEL_FMT}')"
        ));
    }
    errs
}

/// Problems with `name` as an RFC 1123 subdomain.
pub fn dns1123_subdomain(name: &str) -> Vec<String> {
    let mut errs = Vec::new();
    if name.len() > 253 {
        errs.push("must be no more than 253 characters".to_string());
    }
    if name.is_empty() || !name.split('.').all(is_label_chars) {
        errs.push(format!(
            "a lowercase RFC 1123 subdomain must consist of lower case alphanumeric characters, '-' or '.', and must start and end with an alphanumeric character (e.g. 'example.com', regex used for validation is '{DNS1123_SUBDOMAIN_FMT}')"
        ));
    }
    errs
}

/// Whether an atespace name is reserved for the system.
pub fn is_reserved_atespace(name: &str) -> bool {
    name.starts_with(crate::RESERVED_PREFIX)
}

fn is_qualified_name_part(s: &str) -> bool {
    let b = s.as_bytes();
    !b.is_empty()
        && b.len() <= 63
        && b[0].is_ascii_alphanumeric()
        && b[b.len() - 1].is_ascii_alphanumeric()
        && b.iter()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, b'-' | b'_' | b'.'))
}

/// Problems with a label or annotation key (`[prefix/]name`).
pub fn qualified_name(key: &str) -> Vec<String> {
    let (prefix, name) = match key.split_once('/') {
        Some((p, n)) => (Some(p), n),
        None => (None, key),
    };
    let mut errs = Vec::new();
    if let Some(p) = prefix {
        if p.is_empty() {
            errs.push("prefix part must be non-empty".to_string());
        } else {
            errs.extend(
                dns1123_subdomain(p)
                    .into_iter()
                    .map(|e| format!("prefix part {e}")),
            );
        }
    }
    if !is_qualified_name_part(name) {
        errs.push("name part must consist of alphanumeric characters, '-', '_' or '.', and must start and end with an alphanumeric character (e.g. 'MyName',  or 'my.name',  or '123-abc', regex used for validation is '([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9]') and be at most 63 characters".to_string());
    }
    errs
}

/// Problems with a label value.
pub fn label_value(value: &str) -> Vec<String> {
    if value.is_empty() || is_qualified_name_part(value) {
        Vec::new()
    } else {
        vec!["a valid label must be an empty string or consist of alphanumeric characters, '-', '_' or '.', and must start and end with an alphanumeric character (e.g. 'MyValue',  or 'my_value',  or '12345', regex used for validation is '(([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9])?') and be at most 63 characters".to_string()]
    }
}

/// Total size limit of annotations, as in Kubernetes.
pub const ANNOTATIONS_MAX_BYTES: usize = 256 * 1024;

/// How an object's name must look.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NameRule {
    Label,
    Subdomain,
    /// Kubernetes' `path.IsValidPathSegmentName` (RBAC objects): not `.` or `..`, no `/`
    /// or `%`.
    PathSegment,
}

/// Problems with `name` as a path segment (`path.IsValidPathSegmentName`).
pub fn path_segment_name(name: &str) -> Vec<String> {
    for bad in [".", ".."] {
        if name == bad {
            return vec![format!("may not be '{bad}'")];
        }
    }
    ["/", "%"]
        .iter()
        .filter(|c| name.contains(*c))
        .map(|c| format!("may not contain '{c}'"))
        .collect()
}

/// Validates the user-settable parts of metadata (name, labels, annotations, finalizers).
pub fn validate_metadata(meta: &ObjectMeta, rule: NameRule) -> Vec<FieldError> {
    let mut errs = Vec::new();
    match meta.name.as_deref() {
        None | Some("") => errs.push(FieldError::required(
            "metadata.name",
            "name or generateName is required",
        )),
        Some(name) => {
            let problems = match rule {
                NameRule::Label => dns1123_label(name),
                NameRule::Subdomain => dns1123_subdomain(name),
                NameRule::PathSegment => path_segment_name(name),
            };
            for p in problems {
                errs.push(FieldError::invalid("metadata.name", name, p));
            }
        }
    }
    if let Some(labels) = &meta.labels {
        for (k, v) in labels {
            for p in qualified_name(k) {
                errs.push(FieldError::invalid("metadata.labels", k, p));
            }
            for p in label_value(v) {
                errs.push(FieldError::invalid(format!("metadata.labels[{k}]"), v, p));
            }
        }
    }
    if let Some(ann) = &meta.annotations {
        let mut total = 0;
        for (k, v) in ann {
            total += k.len() + v.len();
            for p in qualified_name(&k.to_ascii_lowercase()) {
                errs.push(FieldError::invalid("metadata.annotations", k, p));
            }
        }
        if total > ANNOTATIONS_MAX_BYTES {
            errs.push(FieldError::too_long(
                "metadata.annotations",
                ANNOTATIONS_MAX_BYTES,
            ));
        }
    }
    if let Some(fins) = &meta.finalizers {
        for (i, f) in fins.iter().enumerate() {
            for p in qualified_name(f) {
                errs.push(FieldError::invalid(
                    format!("metadata.finalizers[{i}]"),
                    f,
                    p,
                ));
            }
        }
    }
    errs
}

/// Validates a label selector (`spec.workerSelector`).
pub fn validate_label_selector(sel: &LabelSelector, path: &str) -> Vec<FieldError> {
    let mut errs = Vec::new();
    for (k, v) in sel.match_labels.iter().flatten() {
        for p in qualified_name(k) {
            errs.push(FieldError::invalid(format!("{path}.matchLabels"), k, p));
        }
        for p in label_value(v) {
            errs.push(FieldError::invalid(format!("{path}.matchLabels"), v, p));
        }
    }
    for (i, req) in sel.match_expressions.iter().flatten().enumerate() {
        let at = format!("{path}.matchExpressions[{i}]");
        for p in qualified_name(&req.key) {
            errs.push(FieldError::invalid(format!("{at}.key"), &req.key, p));
        }
        let n = req.values.as_ref().map_or(0, Vec::len);
        match req.operator.as_str() {
            "In" | "NotIn" if n == 0 => errs.push(FieldError::required(
                format!("{at}.values"),
                "must be specified when `operator` is 'In' or 'NotIn'",
            )),
            "Exists" | "DoesNotExist" if n > 0 => errs.push(FieldError::forbidden(
                format!("{at}.values"),
                "may not be specified when `operator` is 'Exists' or 'DoesNotExist'",
            )),
            "In" | "NotIn" | "Exists" | "DoesNotExist" => {}
            other => errs.push(FieldError::not_supported(
                format!("{at}.operator"),
                other,
                &["In", "NotIn", "Exists", "DoesNotExist"],
            )),
        }
    }
    errs
}

/// Semantic rules of an Actor's spec.
pub fn validate_actor_spec(spec: &ActorSpec) -> Vec<FieldError> {
    let mut errs = Vec::new();
    if spec.template.name.is_empty() {
        errs.push(FieldError::required(
            "spec.template.name",
            "the ActorTemplate to run",
        ));
    } else {
        for p in dns1123_subdomain(&spec.template.name) {
            errs.push(FieldError::invalid(
                "spec.template.name",
                &spec.template.name,
                p,
            ));
        }
    }
    if let Some(ns) = &spec.template.namespace {
        for p in dns1123_label(ns) {
            errs.push(FieldError::invalid("spec.template.namespace", ns, p));
        }
    }
    if let Some(t) = &spec.idle_timeout
        && let Err(e) = crate::duration::parse(t)
    {
        errs.push(FieldError::invalid("spec.idleTimeout", t, e.to_string()));
    }
    if let Some(sel) = &spec.worker_selector {
        errs.extend(validate_label_selector(sel, "spec.workerSelector"));
    }
    errs
}

/// Immutable parts of an Actor's spec.
pub fn validate_actor_update(old: &ActorSpec, new: &ActorSpec) -> Vec<FieldError> {
    let mut errs = Vec::new();
    if old.template != new.template {
        errs.push(FieldError::immutable(
            "spec.template",
            serde_json::to_string(&new.template).unwrap_or_default(),
        ));
    }
    errs
}

/// Semantic rules of a Worker's spec.
pub fn validate_worker_spec(spec: &WorkerSpec) -> Vec<FieldError> {
    let mut errs = Vec::new();
    if spec.pool.is_empty() {
        errs.push(FieldError::required(
            "spec.pool",
            "the WorkerPool of this worker",
        ));
    }
    if let Some(addr) = &spec.address
        && addr.parse::<std::net::IpAddr>().is_err()
    {
        errs.push(FieldError::invalid(
            "spec.address",
            addr,
            "must be an IP address",
        ));
    }
    errs
}

/// Immutable parts of a Worker's spec.
pub fn validate_worker_update(old: &WorkerSpec, new: &WorkerSpec) -> Vec<FieldError> {
    let mut errs = Vec::new();
    if old.pool != new.pool {
        errs.push(FieldError::immutable("spec.pool", &new.pool));
    }
    if old.node != new.node {
        errs.push(FieldError::immutable("spec.node", &new.node));
    }
    errs
}

/// Semantic rules of a WorkerPool's spec.
pub fn validate_worker_pool_spec(spec: &WorkerPoolSpec) -> Vec<FieldError> {
    let mut errs = Vec::new();
    if spec.replicas < 0 {
        errs.push(FieldError::invalid(
            "spec.replicas",
            spec.replicas,
            "must be greater than or equal to 0",
        ));
    }
    for (k, v) in &spec.worker_labels {
        for p in qualified_name(k) {
            errs.push(FieldError::invalid("spec.workerLabels", k, p));
        }
        for p in label_value(v) {
            errs.push(FieldError::invalid(format!("spec.workerLabels[{k}]"), v, p));
        }
    }
    errs
}

/// Semantic rules of an ActorTemplate's spec.
pub fn validate_actor_template_spec(spec: &ActorTemplateSpec) -> Vec<FieldError> {
    let mut errs = Vec::new();
    if spec.containers.is_empty() {
        errs.push(FieldError::required(
            "spec.containers",
            "at least one container",
        ));
    }
    let mut seen = std::collections::BTreeSet::new();
    for (i, c) in spec.containers.iter().enumerate() {
        let at = format!("spec.containers[{i}]");
        if c.name.is_empty() {
            errs.push(FieldError::required(format!("{at}.name"), ""));
        } else {
            for p in dns1123_label(&c.name) {
                errs.push(FieldError::invalid(format!("{at}.name"), &c.name, p));
            }
            if !seen.insert(c.name.as_str()) {
                errs.push(FieldError::duplicate(format!("{at}.name"), &c.name));
            }
        }
        if c.image.trim().is_empty() {
            errs.push(FieldError::required(
                format!("{at}.image"),
                "an OCI image reference",
            ));
        }
        // `env` and `ports` are list maps in the published schema (keyed by name, and by
        // containerPort and protocol): one key twice is refused, as a CRD's would be.
        let mut names = std::collections::BTreeSet::new();
        for (j, e) in c.env.iter().enumerate() {
            if !names.insert(e.name.as_str()) {
                errs.push(FieldError::duplicate(
                    format!("{at}.env[{j}].name"),
                    &e.name,
                ));
            }
        }
        let mut keys = std::collections::BTreeSet::new();
        for (j, p) in c.ports.iter().enumerate() {
            let proto = p.protocol.as_deref().unwrap_or("TCP"); // Kubernetes' default
            if !keys.insert((p.container_port, proto)) {
                errs.push(FieldError::duplicate(
                    format!("{at}.ports[{j}]"),
                    Json(
                        &serde_json::json!({"containerPort": p.container_port, "protocol": proto}),
                    ),
                ));
            }
            if !(1..=65535).contains(&p.container_port) {
                errs.push(FieldError::invalid(
                    format!("{at}.ports[{j}].containerPort"),
                    p.container_port,
                    "must be between 1 and 65535, inclusive",
                ));
            }
            if let Some(proto) = &p.protocol
                && proto != "TCP"
                && proto != "UDP"
            {
                errs.push(FieldError::not_supported(
                    format!("{at}.ports[{j}].protocol"),
                    proto,
                    &["TCP", "UDP"],
                ));
            }
        }
    }
    if let Some(sharing) = &spec.sharing {
        let mut seen = std::collections::BTreeSet::new();
        for (i, a) in sharing.atespaces.iter().enumerate() {
            for p in dns1123_label(a) {
                errs.push(FieldError::invalid(
                    format!("spec.sharing.atespaces[{i}]"),
                    a,
                    p,
                ));
            }
            if !seen.insert(a.as_str()) {
                errs.push(FieldError::duplicate(
                    format!("spec.sharing.atespaces[{i}]"),
                    a,
                ));
            }
        }
        if let Some(sel) = &sharing.atespace_selector {
            errs.extend(validate_label_selector(
                sel,
                "spec.sharing.atespaceSelector",
            ));
        }
    }
    if spec.worker_pool_ref.name.is_empty() {
        errs.push(FieldError::required(
            "spec.workerPoolRef.name",
            "the WorkerPool to run on",
        ));
    }
    if let Some(rc) = &spec.runsc_config
        && let Some(p) = &rc.platform
        && !matches!(p.as_str(), "systrap" | "ptrace" | "kvm")
    {
        errs.push(FieldError::not_supported(
            "spec.runscConfig.platform",
            p,
            &["systrap", "ptrace", "kvm"],
        ));
    }
    if let Some(loc) = &spec.snapshot_location
        && !["file://", "s3://", "gs://"]
            .iter()
            .any(|s| loc.starts_with(s))
    {
        errs.push(FieldError::invalid(
            "spec.snapshotLocation",
            loc,
            "must be a file://, s3:// or gs:// URL",
        ));
    }
    if let Some(probe) = &spec.readiness_probe {
        if let Some(h) = &probe.http_get
            && !(1..=65535).contains(&h.port)
        {
            errs.push(FieldError::invalid(
                "spec.readinessProbe.httpGet.port",
                h.port,
                "must be between 1 and 65535, inclusive",
            ));
        }
        for (name, v) in [
            ("initialDelaySeconds", probe.initial_delay_seconds),
            ("periodSeconds", probe.period_seconds),
            ("timeoutSeconds", probe.timeout_seconds),
            ("failureThreshold", probe.failure_threshold),
        ] {
            if let Some(v) = v
                && v < 0
            {
                errs.push(FieldError::invalid(
                    format!("spec.readinessProbe.{name}"),
                    v,
                    "must be greater than or equal to 0",
                ));
            }
        }
    }
    errs
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn labels_and_subdomains() {
        assert!(dns1123_label("team-a").is_empty());
        assert!(!dns1123_label("Team_A").is_empty());
        assert!(!dns1123_label("-a").is_empty());
        assert!(!dns1123_label(&"a".repeat(64)).is_empty());
        assert!(!dns1123_label("a.b").is_empty());
        assert!(dns1123_subdomain("a.b-c.d").is_empty());
        assert!(!dns1123_subdomain("a..b").is_empty());
        assert!(qualified_name("app.kubernetes.io/name").is_empty());
        assert!(qualified_name("App_1").is_empty());
        assert!(!qualified_name("/x").is_empty());
        assert!(!qualified_name("a/b/c").is_empty());
        assert!(label_value("").is_empty());
        assert!(!label_value("a b").is_empty());
    }

    #[test]
    fn field_error_renders_like_apimachinery() {
        let e = FieldError::invalid("spec.idleTimeout", "5x", "bad");
        assert_eq!(
            e.to_string(),
            "spec.idleTimeout: Invalid value: \"5x\": bad"
        );
        let e = FieldError::required("spec.pool", "");
        assert_eq!(e.to_string(), "spec.pool: Required value");
    }

    #[test]
    fn actor_rules() {
        let spec: ActorSpec = serde_json::from_value(serde_json::json!({
            "template": {"name": "counter"}, "idleTimeout": "5x",
            "workerSelector": {"matchExpressions": [{"key": "a", "operator": "Bogus"}]}
        }))
        .unwrap();
        let errs = validate_actor_spec(&spec);
        let fields: Vec<_> = errs.iter().map(|e| e.field.as_str()).collect();
        assert_eq!(
            fields,
            [
                "spec.idleTimeout",
                "spec.workerSelector.matchExpressions[0].operator"
            ]
        );
        let mut new = spec.clone();
        new.template.name = "other".into();
        assert_eq!(
            validate_actor_update(&spec, &new)[0].detail,
            "field is immutable"
        );
    }

    #[test]
    fn template_rules() {
        let spec: ActorTemplateSpec = serde_json::from_value(serde_json::json!({
            "containers": [{"name": "a", "image": "x"}, {"name": "a", "image": ""}],
            "workerPoolRef": {"name": ""}
        }))
        .unwrap();
        let errs = validate_actor_template_spec(&spec);
        let fields: Vec<_> = errs.iter().map(|e| e.field.as_str()).collect();
        assert_eq!(
            fields,
            [
                "spec.containers[1].name",
                "spec.containers[1].image",
                "spec.workerPoolRef.name"
            ]
        );
        // env and ports are list maps: a key twice is refused; a port without a protocol
        // is TCP's.
        let spec: ActorTemplateSpec = serde_json::from_value(serde_json::json!({
            "containers": [{"name": "a", "image": "x",
                "env": [{"name": "E", "value": "1"}, {"name": "F"}, {"name": "E", "value": "2"}],
                "ports": [{"containerPort": 80}, {"containerPort": 80, "protocol": "UDP"},
                          {"containerPort": 80, "protocol": "TCP"}]}],
            "workerPoolRef": {"name": "p"}
        }))
        .unwrap();
        let errs: Vec<String> = validate_actor_template_spec(&spec)
            .iter()
            .map(ToString::to_string)
            .collect();
        assert_eq!(
            errs,
            [
                "spec.containers[0].env[2].name: Duplicate value: \"E\"",
                "spec.containers[0].ports[2]: Duplicate value: {\"containerPort\":80,\"protocol\":\"TCP\"}"
            ]
        );
        // Sharing: atespace names and the selector are checked.
        let spec: ActorTemplateSpec = serde_json::from_value(serde_json::json!({
            "containers": [{"name": "a", "image": "x"}],
            "workerPoolRef": {"name": "p"},
            "sharing": {"atespaces": ["team-a", "Team_B", "team-a"],
                "atespaceSelector": {"matchLabels": {"tier": "gold"},
                    "matchExpressions": [{"key": "tier", "operator": "Near", "values": ["x"]}]}}
        }))
        .unwrap();
        let errs: Vec<String> = validate_actor_template_spec(&spec)
            .iter()
            .map(ToString::to_string)
            .collect();
        assert_eq!(errs.len(), 3, "{errs:?}");
        assert!(
            errs[0].starts_with(
                "spec.sharing.atespaces[1]: Invalid value: \"Team_B\": a lowercase RFC 1123 label"
            ),
            "{errs:?}"
        );
        assert_eq!(
            errs[1],
            "spec.sharing.atespaces[2]: Duplicate value: \"team-a\""
        );
        assert_eq!(
            errs[2],
            "spec.sharing.atespaceSelector.matchExpressions[0].operator: Unsupported value: \"Near\": supported values: \"In\", \"NotIn\", \"Exists\", \"DoesNotExist\""
        );
    }
}
