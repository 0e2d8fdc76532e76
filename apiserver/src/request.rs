//! What a request asks for: the resource path (`RequestInfo`, like apiserver's
//! RequestInfoFactory) and its query options.

use std::collections::HashMap;

use crds::resources::{self, ResourceInfo};

use crate::status::ApiError;

/// The Kubernetes verb of a resource request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verb {
    Get,
    List,
    Watch,
    Create,
    Update,
    Patch,
    Delete,
    DeleteCollection,
}

impl Verb {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Get => "get",
            Self::List => "list",
            Self::Watch => "watch",
            Self::Create => "create",
            Self::Update => "update",
            Self::Patch => "patch",
            Self::Delete => "delete",
            Self::DeleteCollection => "deletecollection",
        }
    }
}

/// A parsed request for one of our resources.
#[derive(Debug, Clone)]
pub struct ResourceRequest {
    pub res: &'static ResourceInfo,
    pub verb: Verb,
    /// The namespace segment (`None` for cluster-scoped paths and all-namespace lists).
    pub namespace: Option<String>,
    pub name: Option<String>,
    pub subresource: Option<String>,
}

/// What the path addresses.
#[derive(Debug, Clone)]
pub enum Target {
    Resource(ResourceRequest),
    /// `/api/v1/namespaces[/name]` (standalone: atespaces seen as namespaces).
    CoreNamespaces {
        name: Option<String>,
        verb: Verb,
    },
    /// Anything else: discovery, OpenAPI, health, version.
    NonResource,
}

/// What a resource path addresses, which decides the methods it allows.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Shape {
    /// `/apis/<g>/<v>/<plural>` of a namespaced resource: every namespace, list/watch only
    /// (deletecollection and create are namespaced, as in Kubernetes).
    AllNamespaces,
    /// The collection of a cluster-scoped resource, or of a namespaced one in a namespace.
    Collection,
    /// One object.
    Item,
    /// The `status` subresource.
    Status,
    /// An action subresource of actors (`resume`, `suspend`, `reset`).
    Action,
}

impl Shape {
    /// The `Allow` header of a 405 on this path.
    fn allow(self) -> &'static str {
        match self {
            Self::AllNamespaces => "GET",
            Self::Collection => "GET, POST, DELETE",
            Self::Item => "GET, PUT, PATCH, DELETE",
            Self::Status => "GET, PUT, PATCH",
            Self::Action => "POST",
        }
    }
}

/// The actions `POST .../actors/<name>/<action>` (served by the scheduler).
pub const ACTIONS: &[&str] = &["resume", "suspend", "reset"];

/// Parses a resource path. `Err` for a path under `/apis/<our group>` that names no resource
/// (404) or a method the path does not allow (405 with `Allow`).
///
/// As kube-apiserver's `RequestInfoFactory`: `?watch` turns a GET of a collection into a
/// watch (a GET of one object stays a get); the legacy `/watch/` prefix watches a collection
/// or one object, never a subresource; DELETE of a collection is deletecollection, which
/// (like create) needs a namespace for a namespaced resource.
pub fn parse(method: &http::Method, path: &str, query: &Query) -> Result<Target, ApiError> {
    let parts: Vec<&str> = path
        .trim_matches('/')
        .split('/')
        .filter(|s| !s.is_empty())
        .collect();
    let watch_param = query.kube_bool("watch").unwrap_or(false);
    if parts.len() >= 3 && parts[0] == "api" && parts[1] == "v1" && parts[2] == "namespaces" {
        if parts.len() > 4 {
            return Ok(Target::NonResource);
        }
        if method != http::Method::GET {
            return Err(ApiError::method_not_allowed(method.as_str(), "GET"));
        }
        let name = parts.get(3).map(|s| s.to_string());
        let verb = match (name.is_some(), watch_param) {
            (true, _) => Verb::Get,
            (false, true) => Verb::Watch,
            (false, false) => Verb::List,
        };
        return Ok(Target::CoreNamespaces { name, verb });
    }
    if parts.len() < 4 || parts[0] != "apis" {
        return Ok(Target::NonResource);
    }
    let (group, version) = (parts[1], parts[2]);
    if resources::ALL
        .iter()
        .all(|r| r.group != group || r.version != version)
    {
        return Err(ApiError::path_not_found());
    }
    let mut rest = &parts[3..];
    let mut legacy_watch = false;
    if rest.first() == Some(&"watch") {
        legacy_watch = true;
        rest = &rest[1..];
    }
    let mut namespace = None;
    if rest.len() >= 3 && rest[0] == "namespaces" {
        namespace = Some(rest[1].to_string());
        rest = &rest[2..];
    }
    let Some(plural) = rest.first() else {
        return Err(ApiError::path_not_found());
    };
    let res = resources::find(group, plural).ok_or_else(ApiError::path_not_found)?;
    if namespace.is_some() && !res.namespaced {
        return Err(ApiError::path_not_found());
    }
    let name = rest.get(1).map(|s| s.to_string());
    let subresource = rest.get(2).map(|s| s.to_string());
    if rest.len() > 3 {
        return Err(ApiError::path_not_found());
    }
    if res.namespaced && namespace.is_none() && name.is_some() {
        // Namespaced objects are only addressable inside their namespace.
        return Err(ApiError::path_not_found());
    }
    let shape = match (name.is_some(), subresource.as_deref()) {
        (false, _) if res.namespaced && namespace.is_none() => Shape::AllNamespaces,
        (false, _) => Shape::Collection,
        (true, None) => Shape::Item,
        (true, Some("status")) if res.has_status => Shape::Status,
        (true, Some(a)) if ACTIONS.contains(&a) && res.kind_id == resources::ACTORS.kind_id => {
            Shape::Action
        }
        (true, Some(_)) => return Err(ApiError::path_not_found()),
    };
    if legacy_watch {
        // `/watch/...` serves collections and single objects; a subresource has no watch.
        if matches!(shape, Shape::Status | Shape::Action) {
            return Err(ApiError::path_not_found());
        }
        if method != http::Method::GET {
            return Err(ApiError::method_not_allowed(method.as_str(), "GET"));
        }
    }
    let verb = match (shape, method.as_str()) {
        (_, "GET") if legacy_watch => Verb::Watch,
        (Shape::AllNamespaces | Shape::Collection, "GET") if watch_param => Verb::Watch,
        (Shape::AllNamespaces | Shape::Collection, "GET") => Verb::List,
        (Shape::Collection, "POST") => Verb::Create,
        (Shape::Collection, "DELETE") => Verb::DeleteCollection,
        (Shape::Item | Shape::Status, "GET") => Verb::Get,
        (Shape::Item | Shape::Status, "PUT") => Verb::Update,
        (Shape::Item | Shape::Status, "PATCH") => Verb::Patch,
        (Shape::Item, "DELETE") => Verb::Delete,
        (Shape::Action, "POST") => Verb::Create,
        (_, m) => return Err(ApiError::method_not_allowed(m, shape.allow())),
    };
    Ok(Target::Resource(ResourceRequest {
        res,
        verb,
        namespace,
        name,
        subresource,
    }))
}

/// Decoded query parameters.
#[derive(Debug, Clone, Default)]
pub struct Query {
    map: HashMap<String, Vec<String>>,
}

impl Query {
    pub fn parse(raw: Option<&str>) -> Self {
        let mut map: HashMap<String, Vec<String>> = HashMap::new();
        if let Some(q) = raw {
            for (k, v) in form_urlencoded::parse(q.as_bytes()) {
                map.entry(k.into_owned()).or_default().push(v.into_owned());
            }
        }
        Self { map }
    }
    pub fn get(&self, key: &str) -> Option<&str> {
        self.map
            .get(key)
            .and_then(|v| v.first())
            .map(String::as_str)
    }
    pub fn all(&self, key: &str) -> &[String] {
        self.map.get(key).map(Vec::as_slice).unwrap_or(&[])
    }
    /// A boolean query parameter read as Kubernetes reads them (apimachinery's
    /// `Convert_Slice_string_To_bool`): `None` when absent; `0` and `false` (in any case) are
    /// false; any other value, the empty one included (`?watch`), is true.
    pub fn kube_bool(&self, key: &str) -> Option<bool> {
        self.get(key)
            .map(|v| !(v == "0" || v.eq_ignore_ascii_case("false")))
    }
    pub fn int_param(&self, key: &str) -> Result<Option<i64>, ApiError> {
        match self.get(key) {
            None | Some("") => Ok(None),
            Some(v) => v.parse().map(Some).map_err(|_| {
                ApiError::bad_request(format!(
                    "invalid value {v:?} for query parameter {key:?}: want an integer"
                ))
            }),
        }
    }
}

/// `resourceVersionMatch`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RvMatch {
    NotOlderThan,
    Exact,
}

/// Options of list and watch.
#[derive(Debug, Clone, Default)]
pub struct ListOptions {
    pub label_selector: String,
    pub field_selector: String,
    pub limit: Option<usize>,
    pub continue_token: Option<String>,
    pub resource_version: Option<String>,
    pub rv_match: Option<RvMatch>,
    pub allow_bookmarks: bool,
    pub send_initial_events: Option<bool>,
    /// `timeoutSeconds` as given: unset or 0 is the default watch length, a negative one ends
    /// a watch at once (kube-apiserver allows negative values: its timer fires immediately).
    pub timeout_seconds: Option<i64>,
}

impl ListOptions {
    pub fn from_query(q: &Query) -> Result<Self, ApiError> {
        let rv_match = match q.get("resourceVersionMatch") {
            None | Some("") => None,
            Some("NotOlderThan") => Some(RvMatch::NotOlderThan),
            Some("Exact") => Some(RvMatch::Exact),
            Some(other) => {
                return Err(ApiError::new(
                    422,
                    "Invalid",
                    format!(
                        "resourceVersionMatch: Unsupported value: {other:?}: supported values: \"Exact\", \"NotOlderThan\""
                    ),
                ));
            }
        };
        let limit = q.int_param("limit")?.filter(|l| *l > 0).map(|l| l as usize);
        Ok(Self {
            label_selector: q.get("labelSelector").unwrap_or("").to_string(),
            field_selector: q.get("fieldSelector").unwrap_or("").to_string(),
            limit,
            continue_token: q
                .get("continue")
                .filter(|c| !c.is_empty())
                .map(str::to_string),
            resource_version: q
                .get("resourceVersion")
                .filter(|c| !c.is_empty())
                .map(str::to_string),
            rv_match,
            allow_bookmarks: q.kube_bool("allowWatchBookmarks").unwrap_or(false),
            send_initial_events: q.kube_bool("sendInitialEvents"),
            timeout_seconds: q.int_param("timeoutSeconds")?,
        })
    }
}

/// `fieldValidation`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum FieldValidation {
    Ignore,
    Warn,
    #[default]
    Strict,
}

/// Options of writes.
#[derive(Debug, Clone, Default)]
pub struct WriteOptions {
    pub dry_run: bool,
    pub field_manager: Option<String>,
    pub field_validation: FieldValidation,
    pub force: bool,
}

/// `dryRun` values: `All` (or nothing) is all Kubernetes supports; anything else is a 422 of
/// the request's options kind (`CreateOptions`, `DeleteOptions`, ...), as kube's
/// `ValidateDryRun`. Returns whether the request is a dry run.
pub fn dry_run(values: &[String], kind: &str) -> Result<bool, ApiError> {
    if values.iter().any(|v| v != "All") {
        let shown = serde_json::to_string(values).unwrap_or_default();
        return Err(ApiError::options_invalid(
            kind,
            "dryRun",
            "FieldValueNotSupported",
            &format!("Unsupported value: {shown}: supported values: \"All\""),
        ));
    }
    Ok(!values.is_empty())
}

impl WriteOptions {
    /// The options of a write whose options kind is `kind` (`CreateOptions`,
    /// `UpdateOptions`, `PatchOptions`, `DeleteOptions`), from the query.
    pub fn from_query(q: &Query, kind: &str) -> Result<Self, ApiError> {
        // `?dryRun=` (empty) is no dry run, as an absent one.
        let values: Vec<String> = q
            .all("dryRun")
            .iter()
            .filter(|v| !v.is_empty())
            .cloned()
            .collect();
        let dry_run = dry_run(&values, kind)?;
        // Kubernetes defaults to Warn for requests that do not say; kubectl sends Strict.
        let field_validation = match q.get("fieldValidation") {
            None | Some("") | Some("Warn") => FieldValidation::Warn,
            Some("Strict") => FieldValidation::Strict,
            Some("Ignore") => FieldValidation::Ignore,
            Some(other) => {
                return Err(ApiError::bad_request(format!(
                    "fieldValidation: Unsupported value: {other:?}: supported values: \"Ignore\", \"Strict\", \"Warn\""
                )));
            }
        };
        let field_manager = q
            .get("fieldManager")
            .filter(|s| !s.is_empty())
            .map(str::to_string);
        if let Some(fm) = &field_manager
            && (fm.len() > 128 || fm.chars().any(|c| c.is_control()))
        {
            return Err(ApiError::bad_request(
                "fieldManager: Invalid value: must be a printable string of at most 128 characters",
            ));
        }
        Ok(Self {
            dry_run,
            field_manager,
            field_validation,
            force: q.kube_bool("force").unwrap_or(false),
        })
    }
}

/// `DeleteOptions`: from the request body when there is one (JSON or YAML, `kind`
/// `DeleteOptions` if given), else from the query (`dryRun`, `gracePeriodSeconds`,
/// `propagationPolicy`, `orphanDependents`). A body that does not decode as `DeleteOptions`
/// is a 400 and options Kubernetes would not accept a 422, so a delete whose options cannot be
/// read never happens. `dryRun=All` in the query counts even with a body (Kubernetes would
/// ignore the query then; a client that asked for a dry run anywhere gets one).
#[derive(Debug, Default, Clone)]
pub struct DeleteOptions {
    pub precondition_uid: Option<String>,
    pub precondition_rv: Option<String>,
    pub dry_run: bool,
}

/// The wire form of `meta.k8s.io/v1` `DeleteOptions` (unknown fields ignored, as Kubernetes'
/// decoder does for it).
#[derive(serde::Deserialize, Default)]
#[serde(rename_all = "camelCase")]
struct DeleteOptionsBody {
    kind: Option<String>,
    #[allow(dead_code)] // decoded for its type check only
    grace_period_seconds: Option<i64>,
    preconditions: Option<PreconditionsBody>,
    orphan_dependents: Option<bool>,
    propagation_policy: Option<String>,
    dry_run: Option<Vec<String>>,
}

#[derive(serde::Deserialize, Default)]
#[serde(rename_all = "camelCase")]
struct PreconditionsBody {
    uid: Option<String>,
    resource_version: Option<String>,
}

const PROPAGATION_POLICIES: &[&str] = &["Foreground", "Background", "Orphan"];

impl DeleteOptions {
    pub fn parse(query: &Query, content_type: Option<&str>, body: &[u8]) -> Result<Self, ApiError> {
        let query_dry_run = WriteOptions::from_query(query, "DeleteOptions")?.dry_run;
        let decoded = if body.iter().all(u8::is_ascii_whitespace) {
            let _ = query.int_param("gracePeriodSeconds")?;
            DeleteOptionsBody {
                orphan_dependents: query.kube_bool("orphanDependents"),
                propagation_policy: query.get("propagationPolicy").map(str::to_string),
                ..DeleteOptionsBody::default()
            }
        } else {
            Self::decode(content_type, body)?
        };
        let dry_run = dry_run(decoded.dry_run.as_deref().unwrap_or(&[]), "DeleteOptions")?;
        if let Some(p) = &decoded.propagation_policy {
            if decoded.orphan_dependents.is_some() {
                return Err(ApiError::options_invalid(
                    "DeleteOptions",
                    "propagationPolicy",
                    "FieldValueInvalid",
                    &format!(
                        "Invalid value: {p:?}: orphanDependents and deletionPropagation cannot be both set"
                    ),
                ));
            }
            if !PROPAGATION_POLICIES.contains(&p.as_str()) {
                return Err(ApiError::options_invalid(
                    "DeleteOptions",
                    "propagationPolicy",
                    "FieldValueNotSupported",
                    &format!(
                        "Unsupported value: {p:?}: supported values: \"Foreground\", \"Background\", \"Orphan\", \"nil\""
                    ),
                ));
            }
        }
        let pre = decoded.preconditions.unwrap_or_default();
        Ok(Self {
            precondition_uid: pre.uid,
            precondition_rv: pre.resource_version,
            dry_run: dry_run || query_dry_run,
        })
    }

    fn decode(content_type: Option<&str>, body: &[u8]) -> Result<DeleteOptionsBody, ApiError> {
        let bad = |e: &dyn std::fmt::Display| {
            ApiError::bad_request(format!("couldn't decode the body as DeleteOptions: {e}"))
        };
        let v: serde_json::Value = match crate::negotiate::body_format(content_type)? {
            crate::negotiate::BodyFormat::Json => {
                serde_json::from_slice(body).map_err(|e| bad(&e))?
            }
            crate::negotiate::BodyFormat::Yaml => {
                let text = std::str::from_utf8(body).map_err(|e| bad(&e))?;
                serde_saphyr::from_str(text).map_err(|e| bad(&e))?
            }
        };
        if !v.is_object() {
            return Err(bad(&"the body is not an object"));
        }
        let decoded: DeleteOptionsBody = serde_json::from_value(v).map_err(|e| bad(&e))?;
        if let Some(k) = decoded.kind.as_deref().filter(|k| *k != "DeleteOptions") {
            return Err(bad(&format!("kind {k:?} is not DeleteOptions")));
        }
        Ok(decoded)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(method: &str, path: &str, q: &str) -> Result<Target, ApiError> {
        parse(&method.parse().unwrap(), path, &Query::parse(Some(q)))
    }

    #[test]
    fn parses_resource_paths() {
        let Target::Resource(r) = p(
            "GET",
            "/apis/substrate.ate.dev/v1alpha1/namespaces/team-a/actors/x",
            "",
        )
        .unwrap() else {
            panic!()
        };
        assert_eq!(
            (
                r.res.plural,
                r.verb,
                r.namespace.as_deref(),
                r.name.as_deref()
            ),
            ("actors", Verb::Get, Some("team-a"), Some("x"))
        );
        let Target::Resource(r) =
            p("GET", "/apis/substrate.ate.dev/v1alpha1/actors", "watch=1").unwrap()
        else {
            panic!()
        };
        assert_eq!((r.verb, r.namespace), (Verb::Watch, None));
        let Target::Resource(r) = p(
            "PUT",
            "/apis/substrate.ate.dev/v1alpha1/atespaces/a/status",
            "",
        )
        .unwrap() else {
            panic!()
        };
        assert_eq!(
            (r.verb, r.subresource.as_deref()),
            (Verb::Update, Some("status"))
        );
        let Target::Resource(r) = p(
            "GET",
            "/apis/ate.dev/v1alpha1/watch/namespaces/d/workerpools",
            "",
        )
        .unwrap() else {
            panic!()
        };
        assert_eq!(r.verb, Verb::Watch);
        assert!(p("GET", "/apis/substrate.ate.dev/v1alpha1/nopes", "").is_err());
        assert!(
            p(
                "GET",
                "/apis/substrate.ate.dev/v1alpha1/namespaces/x/atespaces",
                ""
            )
            .is_err()
        );
        assert!(matches!(
            p("GET", "/apis", "").unwrap(),
            Target::NonResource
        ));
        assert!(matches!(
            p("GET", "/api/v1/namespaces/x", "").unwrap(),
            Target::CoreNamespaces { .. }
        ));
    }

    #[test]
    fn methods_by_path_shape() {
        let allow = |m: &str, path: &str| {
            let e = p(m, path, "").unwrap_err();
            assert_eq!(e.code, 405, "{m} {path}");
            e.allow
        };
        let g = "/apis/substrate.ate.dev/v1alpha1";
        // The all-atespaces path of a namespaced kind is read-only.
        assert_eq!(allow("DELETE", &format!("{g}/actors")), Some("GET"));
        assert_eq!(allow("POST", &format!("{g}/actors")), Some("GET"));
        assert_eq!(
            allow("DELETE", "/apis/ate.dev/v1alpha1/workerpools"),
            Some("GET")
        );
        // Cluster-scoped collections take deletecollection.
        let Target::Resource(r) = p("DELETE", &format!("{g}/atespaces"), "").unwrap() else {
            panic!()
        };
        assert_eq!(r.verb, Verb::DeleteCollection);
        assert_eq!(
            allow("DELETE", &format!("{g}/namespaces/a/actors/x/status")),
            Some("GET, PUT, PATCH")
        );
        assert_eq!(
            allow("GET", &format!("{g}/namespaces/a/actors/x/resume")),
            Some("POST")
        );
        assert!(p("GET", &format!("{g}/namespaces/a/actors/x/logs"), "").is_err());
        assert!(p("POST", &format!("{g}/namespaces/a/workers/x/resume"), "").is_err());
    }

    #[test]
    fn watch_only_on_collections() {
        let verb = |path: &str, q: &str| match p("GET", path, q).unwrap() {
            Target::Resource(r) => r.verb,
            other => panic!("{other:?}"),
        };
        let g = "/apis/substrate.ate.dev/v1alpha1";
        assert_eq!(verb(&format!("{g}/actors"), "watch=2"), Verb::Watch);
        assert_eq!(verb(&format!("{g}/actors"), "watch"), Verb::Watch);
        assert_eq!(verb(&format!("{g}/actors"), "watch=FALSE"), Verb::List);
        assert_eq!(verb(&format!("{g}/actors"), "watch=0"), Verb::List);
        let item = format!("{g}/namespaces/a/actors/x");
        assert_eq!(verb(&item, "watch=1"), Verb::Get);
        assert_eq!(verb(&format!("{item}/status"), "watch=1"), Verb::Get);
        assert_eq!(
            verb(&format!("{g}/watch/namespaces/a/actors/x"), ""),
            Verb::Watch
        );
        assert_eq!(
            p(
                "GET",
                &format!("{g}/watch/namespaces/a/actors/x/status"),
                ""
            )
            .unwrap_err()
            .code,
            404
        );
    }

    #[test]
    fn delete_options() {
        let parse = |q: &str, ct: Option<&str>, body: &str| {
            DeleteOptions::parse(&Query::parse(Some(q)), ct, body.as_bytes())
        };
        let json = Some("application/json");
        assert!(parse("", None, "").is_ok_and(|o| !o.dry_run));
        assert!(parse("dryRun=All", None, "").is_ok_and(|o| o.dry_run));
        assert!(parse("", json, r#"{"dryRun":["All"]}"#).is_ok_and(|o| o.dry_run));
        let o = parse(
            "",
            None,
            r#"{"preconditions":{"uid":"u","resourceVersion":"5"}}"#,
        )
        .unwrap();
        assert_eq!(
            (o.precondition_uid.as_deref(), o.precondition_rv.as_deref()),
            (Some("u"), Some("5"))
        );
        for bad in [
            r#"{"dryRun":"All"}"#,
            "0",
            "[]",
            "null",
            r#"{"kind":"Pod"}"#,
        ] {
            assert_eq!(parse("", json, bad).unwrap_err().code, 400, "{bad}");
        }
        assert_eq!(
            parse("", json, r#"{"dryRun":["Al"]}"#).unwrap_err().code,
            422
        );
        assert_eq!(
            parse("propagationPolicy=X", None, "").unwrap_err().code,
            422
        );
        assert_eq!(parse("", Some("text/plain"), "{}").unwrap_err().code, 415);
    }

    #[test]
    fn write_options() {
        let q = |s: &str| WriteOptions::from_query(&Query::parse(Some(s)), "CreateOptions");
        let o = q("dryRun=All&fieldValidation=Strict&fieldManager=kubectl").unwrap();
        assert!(o.dry_run);
        assert_eq!(o.field_validation, FieldValidation::Strict);
        let e = q("dryRun=Some").unwrap_err();
        assert_eq!(
            (e.code, e.message.as_str()),
            (
                422,
                "CreateOptions.meta.k8s.io \"\" is invalid: dryRun: Unsupported value: [\"Some\"]: supported values: \"All\""
            )
        );
        assert!(q("fieldValidation=Loud").is_err());
        assert!(!q("dryRun=").unwrap().dry_run);
    }
}
