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

/// Parses a resource path. `Err` for a path under `/apis/<our group>` that names no resource.
pub fn parse(method: &http::Method, path: &str, query: &Query) -> Result<Target, ApiError> {
    let parts: Vec<&str> = path
        .trim_matches('/')
        .split('/')
        .filter(|s| !s.is_empty())
        .collect();
    let watch_param = query.flag("watch");
    if parts.len() >= 3 && parts[0] == "api" && parts[1] == "v1" && parts[2] == "namespaces" {
        if parts.len() > 4 {
            return Ok(Target::NonResource);
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
    let watching = legacy_watch || watch_param;
    let verb = match (method.as_str(), name.is_some()) {
        ("GET", true) if watching => Verb::Watch,
        ("GET", true) => Verb::Get,
        ("GET", false) if watching => Verb::Watch,
        ("GET", false) => Verb::List,
        ("POST", false) => Verb::Create,
        ("POST", true) if subresource.is_some() => Verb::Create,
        ("PUT", true) => Verb::Update,
        ("PATCH", true) => Verb::Patch,
        ("DELETE", true) => Verb::Delete,
        ("DELETE", false) => Verb::DeleteCollection,
        (m, _) => return Err(ApiError::method_not_allowed(m)),
    };
    if verb == Verb::Watch && name.is_some() {
        // `/watch/.../name` is a watch of one object: express it as a field selector.
        return Ok(Target::Resource(ResourceRequest {
            res,
            verb,
            namespace,
            name,
            subresource,
        }));
    }
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
    pub fn flag(&self, key: &str) -> bool {
        matches!(self.get(key), Some("true") | Some("1") | Some("")) && self.map.contains_key(key)
    }
    fn bool_param(&self, key: &str) -> Result<Option<bool>, ApiError> {
        match self.get(key) {
            None => Ok(None),
            Some("true") | Some("1") => Ok(Some(true)),
            Some("false") | Some("0") | Some("") => Ok(Some(false)),
            Some(v) => Err(ApiError::bad_request(format!(
                "invalid value {v:?} for query parameter {key:?}: want true or false"
            ))),
        }
    }
    fn int_param(&self, key: &str) -> Result<Option<i64>, ApiError> {
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
    pub timeout_seconds: Option<u64>,
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
            allow_bookmarks: q.bool_param("allowWatchBookmarks")?.unwrap_or(false),
            send_initial_events: q.bool_param("sendInitialEvents")?,
            timeout_seconds: q
                .int_param("timeoutSeconds")?
                .filter(|t| *t > 0)
                .map(|t| t as u64),
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

impl WriteOptions {
    pub fn from_query(q: &Query) -> Result<Self, ApiError> {
        let mut dry_run = false;
        for v in q.all("dryRun") {
            match v.as_str() {
                "All" => dry_run = true,
                "" => {}
                other => {
                    return Err(ApiError::bad_request(format!(
                        "Invalid dryRun value {other:?}: supported values: \"All\""
                    )));
                }
            }
        }
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
            force: q.bool_param("force")?.unwrap_or(false),
        })
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
    fn write_options() {
        let o = WriteOptions::from_query(&Query::parse(Some(
            "dryRun=All&fieldValidation=Strict&fieldManager=kubectl",
        )))
        .unwrap();
        assert!(o.dry_run);
        assert_eq!(o.field_validation, FieldValidation::Strict);
        assert!(WriteOptions::from_query(&Query::parse(Some("dryRun=Some"))).is_err());
        assert!(WriteOptions::from_query(&Query::parse(Some("fieldValidation=Loud"))).is_err());
    }
}
