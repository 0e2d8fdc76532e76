//! Generic REST semantics over untyped JSON objects: create, get, list, update, patch,
//! server-side apply, delete, deletecollection — the rules of Kubernetes' generic registry
//! (system metadata, generation, status subresource, finalizers, dry-run, field validation,
//! no-op updates, managedFields through [`crate::apply`]) on top of the Valkey [`Store`].

use std::sync::Arc;
use std::time::Duration;

use serde_json::{Map, Value, json};

use crds::resources::{ATESPACES, Kind, ResourceInfo};
use crds::validation::{FieldError, Json};

use crate::apply::{self, ManagerId, Operation};
use crate::auth::UserInfo;
use crate::request::{FieldValidation, ListOptions, RvMatch, WriteOptions};
use crate::selector::{self, FieldSelector, LabelSelector};
use crate::status::ApiError;
use crate::storage::{ListRequest, ObjectKey, ResourceKey, StorageError, Store};

/// How many times a write retries after losing a compare-and-swap race it did not ask for.
const MAX_RETRIES: usize = 16;
/// Longest `generateName` prefix kept (63 minus the 5 random characters).
const MAX_GENERATED_PREFIX: usize = 58;

/// The storage key of a resource.
pub fn rkey(res: &ResourceInfo) -> ResourceKey {
    ResourceKey {
        group: res.group,
        resource: res.plural,
    }
}

/// The storage key of an object.
pub fn okey(namespace: Option<&str>, name: &str) -> ObjectKey {
    ObjectKey {
        namespace: namespace.unwrap_or("").to_string(),
        name: name.to_string(),
    }
}

/// `metadata.resourceVersion` as a number (0 when absent or malformed).
pub fn rv_of(obj: &Value) -> u64 {
    obj.pointer("/metadata/resourceVersion")
        .and_then(Value::as_str)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0)
}

fn meta_str<'a>(obj: &'a Value, field: &str) -> Option<&'a str> {
    obj.get("metadata")
        .and_then(|m| m.get(field))
        .and_then(Value::as_str)
}

fn meta_mut(obj: &mut Value) -> &mut Map<String, Value> {
    if !obj.get("metadata").is_some_and(Value::is_object) {
        obj["metadata"] = json!({});
    }
    match obj.get_mut("metadata") {
        Some(Value::Object(m)) => m,
        _ => unreachable!("metadata was just made an object"),
    }
}

/// RFC 3339 at second precision, as Kubernetes writes `metav1.Time`.
pub fn now_rfc3339() -> String {
    jiff::Timestamp::now()
        .strftime("%Y-%m-%dT%H:%M:%SZ")
        .to_string()
}

fn without_rv(obj: &Value) -> Value {
    let mut o = obj.clone();
    if let Some(m) = o.get_mut("metadata").and_then(Value::as_object_mut) {
        m.remove("resourceVersion");
    }
    o
}

fn finalizers(obj: &Value) -> Vec<String> {
    obj.pointer("/metadata/finalizers")
        .and_then(Value::as_array)
        .map(|a| {
            a.iter()
                .filter_map(|v| v.as_str().map(str::to_string))
                .collect()
        })
        .unwrap_or_default()
}

/// The result of a write.
#[derive(Debug)]
pub struct Written {
    pub object: Value,
    pub warnings: Vec<String>,
}

/// One page of a list.
#[derive(Debug)]
pub struct ListResult {
    pub items: Vec<Value>,
    pub rv: u64,
    pub continue_token: Option<String>,
}

/// Parsed selectors of a list, watch or deletecollection.
pub struct Selectors {
    pub label: LabelSelector,
    pub field: FieldSelector,
}

impl Selectors {
    pub fn parse(res: &ResourceInfo, opts: &ListOptions) -> Result<Self, ApiError> {
        let label = LabelSelector::parse(&opts.label_selector)
            .map_err(|e| ApiError::bad_request(e.to_string()))?;
        let field = FieldSelector::parse(&opts.field_selector, res)
            .map_err(|e| ApiError::bad_request(e.to_string()))?;
        Ok(Self { label, field })
    }
    pub fn matches(&self, obj: &Value) -> bool {
        self.label.matches_object(obj) && self.field.matches(obj)
    }
}

/// The resource a continue token belongs to (`<plural>.<group>`): resourceVersions are
/// counted per resource, so a token is only valid for the resource that issued it.
fn token_resource(res: &ResourceInfo) -> String {
    format!("{}.{}", res.plural, res.group)
}

/// Encodes a continue token (`{"v":"meta.k8s.io/v1","r":"<plural>.<group>","rv":N,
/// "start":"ns/name"}`, base64url): the next page of resource `r` is the state at `rv` after
/// the key `start`. `rv` `None` is Kubernetes' "inconsistent" token (`-1`): the remainder at
/// the latest state.
fn encode_continue(res: &ResourceInfo, rv: Option<u64>, key: &ObjectKey) -> String {
    use base64::Engine;
    let rv = rv.map_or(json!(-1), |rv| json!(rv));
    let raw = json!({"v": "meta.k8s.io/v1", "r": token_resource(res), "rv": rv,
        "start": format!("{}/{}", key.namespace, key.name)});
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(raw.to_string())
}

/// Decodes a continue token issued for `res` (400 for a malformed token or one of another
/// resource, whose resourceVersion means nothing here).
fn decode_continue(res: &ResourceInfo, token: &str) -> Result<(Option<u64>, ObjectKey), ApiError> {
    use base64::Engine;
    let bad = || {
        ApiError::bad_request(
            "continue key is not valid: the continue token is malformed; relist without it",
        )
    };
    let raw = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(token.trim_end_matches('='))
        .map_err(|_| bad())?;
    let v: Value = serde_json::from_slice(&raw).map_err(|_| bad())?;
    if v["v"] != "meta.k8s.io/v1" {
        return Err(bad());
    }
    if v["r"].as_str() != Some(token_resource(res).as_str()) {
        return Err(ApiError::bad_request(format!(
            "continue key is not valid: the continue token was issued for another resource than {}; relist without it",
            token_resource(res)
        )));
    }
    let rv = match v["rv"].as_i64() {
        Some(-1) => None,
        _ => Some(v["rv"].as_u64().filter(|rv| *rv > 0).ok_or_else(bad)?),
    };
    let start = v["start"].as_str().ok_or_else(bad)?;
    let (ns, name) = start.split_once('/').ok_or_else(bad)?;
    Ok((
        rv,
        ObjectKey {
            namespace: ns.into(),
            name: name.into(),
        },
    ))
}

/// How long a list waits for the watch cache to reach a resourceVersion a client asked for.
const WAIT_FOR_RV: Duration = Duration::from_secs(3);
/// How long a consistent list waits for the watch cache to reach Valkey's resourceVersion.
const WAIT_FOR_CONSISTENT: Duration = Duration::from_secs(10);

/// Kubernetes' answer to a continue token whose resourceVersion the history no longer holds.
const CONTINUE_EXPIRED: &str = "The provided continue parameter is too old to display a consistent list result. You can start a new list without the continue parameter, or use the continue token in this response to retrieve the remainder of the results. Continuing with the provided token results in an inconsistent list - objects that were created, modified, or deleted between the time the first chunk was returned and now may show up in the list.";

/// A check of a write by a user before it is stored, after decoding and defaulting (what
/// Kubernetes does in a resource's policy-based storage: RBAC's escalation prevention).
/// `old` is the stored object (`None` on create); `new` the normalized object to store.
pub trait WriteCheck: Send + Sync {
    fn check<'a>(
        &'a self,
        user: &'a UserInfo,
        res: &'static ResourceInfo,
        ns: Option<&'a str>,
        old: Option<&'a Value>,
        new: &'a Value,
    ) -> futures::future::BoxFuture<'a, Result<(), ApiError>>;
}

/// The generic registry.
#[derive(Clone)]
pub struct Registry {
    pub store: Store,
    checks: Vec<Arc<dyn WriteCheck>>,
    templates: crate::templates::Templates,
}

impl Registry {
    pub fn new(store: Store) -> Self {
        Self {
            store,
            checks: Vec::new(),
            templates: crate::templates::Templates::Local,
        }
    }

    /// This registry reading `ActorTemplate`s from `templates` (the cluster's CRDs in cluster
    /// mode) instead of its own store.
    pub fn with_templates(mut self, templates: crate::templates::Templates) -> Self {
        self.templates = templates;
        self
    }

    /// Whether `ate.dev` kinds are the cluster's CRDs (cluster mode): then this apiserver does
    /// not serve them.
    pub fn ate_kinds_in_cluster(&self) -> bool {
        self.templates.in_cluster()
    }

    /// The `ActorTemplate` `namespace/name`, from wherever templates live.
    pub async fn template(&self, namespace: &str, name: &str) -> Result<Option<Value>, ApiError> {
        match &self.templates {
            crate::templates::Templates::Local => {
                self.get_opt(&crds::resources::ACTOR_TEMPLATES, Some(namespace), name)
                    .await
            }
            crate::templates::Templates::Cluster(c) => c.get(namespace, name).await,
        }
    }

    /// This registry with `check` run on every user write (create, update, patch, apply).
    pub fn with_check(mut self, check: Arc<dyn WriteCheck>) -> Self {
        self.checks.push(check);
        self
    }

    async fn run_checks(
        &self,
        user: &UserInfo,
        res: &ResourceInfo,
        ns: Option<&str>,
        old: Option<&Value>,
        new: &Value,
    ) -> Result<(), ApiError> {
        if self.checks.is_empty() {
            return Ok(());
        }
        // The checks take the table's `'static` entry.
        let Some(res) = crds::resources::find(res.group, res.plural) else {
            return Ok(());
        };
        for c in &self.checks {
            c.check(user, res, ns, old, new).await?;
        }
        Ok(())
    }

    /// Consistent read of one object.
    pub async fn get(
        &self,
        res: &ResourceInfo,
        ns: Option<&str>,
        name: &str,
    ) -> Result<Value, ApiError> {
        self.store
            .get(rkey(res), &okey(ns, name))
            .await
            .map_err(|e| ApiError::from_storage(res, name, e))?
            .ok_or_else(|| ApiError::not_found(res, name))
    }

    pub(crate) async fn get_opt(
        &self,
        res: &ResourceInfo,
        ns: Option<&str>,
        name: &str,
    ) -> Result<Option<Value>, ApiError> {
        self.store
            .get(rkey(res), &okey(ns, name))
            .await
            .map_err(|e| ApiError::from_storage(res, name, e))
    }

    /// Lists objects, always from the watch cache; every page of a paginated list is a slice
    /// of one snapshot, and reports its resourceVersion (carried by the continue token).
    ///
    /// `resourceVersion` unset (and an inconsistent continue token): a consistent read, served
    /// once the cache has reached Valkey's current resourceVersion; `0` or `NotOlderThan`:
    /// the cache as it is (after reaching the given rv); `Exact`: the state at exactly that rv,
    /// rebuilt from the cache's history (410 when it no longer reaches back); a continue token:
    /// the state at the token's rv (410 `Expired` with an inconsistent token once it is too old,
    /// as Kubernetes answers).
    pub async fn list(
        &self,
        res: &ResourceInfo,
        ns: Option<&str>,
        opts: &ListOptions,
    ) -> Result<ListResult, ApiError> {
        let sel = Selectors::parse(res, opts)?;
        let ns = match (ns, sel.field.namespace()) {
            (Some(a), Some(b)) if a != b => {
                return Ok(ListResult {
                    items: vec![],
                    rv: self.current_rv(res).await?,
                    continue_token: None,
                });
            }
            (Some(a), _) => Some(a.to_string()),
            (None, b) => b.map(str::to_string),
        };
        // Cluster-scoped objects are stored under the namespace "".
        let ns = if res.namespaced {
            ns
        } else {
            Some(String::new())
        };
        if opts.continue_token.is_some() && opts.resource_version.is_some() {
            return Err(ApiError::bad_request(
                "specifying resource version is not allowed when using continue",
            ));
        }
        if opts.rv_match.is_some() && opts.resource_version.is_none() {
            return Err(ApiError::new(
                422,
                "Invalid",
                "resourceVersionMatch: Forbidden: resourceVersionMatch is forbidden unless resourceVersion is provided",
            ));
        }
        let requested_rv = match &opts.resource_version {
            None => None,
            Some(s) => Some(s.parse::<u64>().map_err(|_| {
                ApiError::bad_request(format!(
                    "resourceVersion: Invalid value: {s:?}: must be a decimal number"
                ))
            })?),
        };
        let cache = self.store.cache(rkey(res));
        let wait = |rv: u64, timeout: Duration| async move {
            cache
                .wait_for_rv(rv, timeout)
                .await
                .map_err(|e| ApiError::from_storage(res, "", e))
        };
        let (at, start_after) = match (&opts.continue_token, requested_rv, opts.rv_match) {
            (Some(token), _, _) => match decode_continue(res, token)? {
                (Some(rv), key) => {
                    wait(rv, WAIT_FOR_RV).await?;
                    (Some(rv), Some(key))
                }
                (None, key) => {
                    wait(self.current_rv(res).await?, WAIT_FOR_CONSISTENT).await?;
                    (None, Some(key))
                }
            },
            (None, None, _) => {
                wait(self.current_rv(res).await?, WAIT_FOR_CONSISTENT).await?;
                (None, None)
            }
            (None, Some(0), Some(RvMatch::Exact)) => {
                return Err(ApiError::new(
                    422,
                    "Invalid",
                    "resourceVersionMatch: Forbidden: resourceVersionMatch \"exact\" is forbidden for resourceVersion \"0\"",
                ));
            }
            (None, Some(rv), Some(RvMatch::Exact)) => {
                wait(rv, WAIT_FOR_RV).await?;
                (Some(rv), None)
            }
            (None, Some(rv), _) => {
                if rv > 0 {
                    wait(rv, WAIT_FOR_RV).await?;
                }
                (None, None)
            }
        };
        let req = ListRequest {
            namespace: ns,
            name: sel.field.name().map(str::to_string),
            start_after,
            limit: opts.limit,
            at,
        };
        let page = match cache.list(&req, &|o| sel.matches(o)) {
            Ok(page) => page,
            Err(StorageError::TooOld { .. }) if opts.continue_token.is_some() => {
                let mut e = ApiError::gone(CONTINUE_EXPIRED);
                e.continue_token = req
                    .start_after
                    .as_ref()
                    .map(|key| encode_continue(res, None, key));
                return Err(e);
            }
            Err(e) => return Err(ApiError::from_storage(res, "", e)),
        };
        Ok(ListResult {
            items: page.items.iter().map(|o| o.as_ref().clone()).collect(),
            rv: page.rv,
            continue_token: page
                .next
                .map(|key| encode_continue(res, Some(page.rv), &key)),
        })
    }

    pub async fn current_rv(&self, res: &ResourceInfo) -> Result<u64, ApiError> {
        self.store
            .current_rv(rkey(res))
            .await
            .map_err(|e| ApiError::from_storage(res, "", e))
    }

    /// Checks `apiVersion`/`kind` and unknown fields of a request body; returns warnings.
    fn check_body(
        &self,
        res: &ResourceInfo,
        body: &Value,
        wo: &WriteOptions,
    ) -> Result<Vec<String>, ApiError> {
        if !body.is_object() {
            return Err(ApiError::bad_request(format!(
                "the body of the request must be a JSON object of kind {}",
                res.kind
            )));
        }
        match body.get("kind").and_then(Value::as_str) {
            None | Some("") => {
                return Err(ApiError::bad_request(format!(
                    "Object 'Kind' is missing in '{}'",
                    truncate(&body.to_string(), 200)
                )));
            }
            Some(k) if k != res.kind => {
                return Err(ApiError::bad_request(format!(
                    "the kind in the data ({k}) does not match the expected kind ({})",
                    res.kind
                )));
            }
            _ => {}
        }
        let av = body.get("apiVersion").and_then(Value::as_str).unwrap_or("");
        if av != res.api_version() {
            return Err(ApiError::bad_request(format!(
                "the API version in the data ({av}) does not match the expected API version ({})",
                res.api_version()
            )));
        }
        if wo.field_validation == FieldValidation::Ignore {
            return Ok(Vec::new());
        }
        let unknown = res.unknown_fields(body);
        if unknown.is_empty() {
            return Ok(Vec::new());
        }
        let msgs: Vec<String> = unknown
            .iter()
            .map(|f| format!("unknown field \"{f}\""))
            .collect();
        match wo.field_validation {
            FieldValidation::Strict => Err(ApiError::bad_request(format!(
                "{} in version \"{}\" cannot be handled as a {}: strict decoding error: {}",
                res.kind,
                res.version,
                res.kind,
                msgs.join(", ")
            ))),
            _ => Ok(msgs),
        }
    }

    /// Checks that objects may be created in `ns` (standalone: namespaces are atespaces).
    async fn admit_namespace(
        &self,
        res: &ResourceInfo,
        ns: &str,
        name: &str,
    ) -> Result<(), ApiError> {
        let Some(ates) = self.get_opt(&ATESPACES, None, ns).await? else {
            return Err(ApiError::new(
                404,
                "NotFound",
                format!("atespaces.substrate.ate.dev \"{ns}\" not found"),
            )
            .with_kind_details(&ATESPACES, ns));
        };
        if ates.pointer("/metadata/deletionTimestamp").is_some() {
            return Err(ApiError::forbidden_msg(format!(
                "{} \"{name}\" is forbidden: unable to create new content in atespace {ns} because it is being terminated",
                res.qualified()
            ))
            .with_details(crate::status::details(res, name)));
        }
        Ok(())
    }

    fn normalize(&self, res: &ResourceInfo, obj: Value, name: &str) -> Result<Value, ApiError> {
        let mut obj = res
            .normalize(obj)
            .map_err(|errs| ApiError::invalid(res, name, &errs))?;
        // Like Go's `omitempty` on ObjectMeta: empty maps and lists are not stored.
        if let Some(meta) = obj.get_mut("metadata").and_then(Value::as_object_mut) {
            for f in [
                "labels",
                "annotations",
                "finalizers",
                "ownerReferences",
                "managedFields",
            ] {
                let empty = match meta.get(f) {
                    Some(Value::Object(m)) => m.is_empty(),
                    Some(Value::Array(a)) => a.is_empty(),
                    Some(Value::Null) => true,
                    _ => false,
                };
                if empty {
                    meta.shift_remove(f);
                }
            }
        }
        Ok(obj)
    }

    /// POST a new object.
    pub async fn create(
        &self,
        user: &UserInfo,
        res: &ResourceInfo,
        ns: Option<&str>,
        body: Value,
        wo: &WriteOptions,
    ) -> Result<Written, ApiError> {
        let warnings = self.check_body(res, &body, wo)?;
        self.create_inner(user, res, ns, body, wo, warnings, true)
            .await
    }

    /// Creates `body`; `track`: record the writer's `Update` entry in managedFields (an
    /// apply-create brings its own `Apply` entry).
    #[allow(clippy::too_many_arguments)] // who, what, where, body, how, and what to record
    async fn create_inner(
        &self,
        user: &UserInfo,
        res: &ResourceInfo,
        ns: Option<&str>,
        mut body: Value,
        wo: &WriteOptions,
        warnings: Vec<String>,
        track: bool,
    ) -> Result<Written, ApiError> {
        let meta = meta_mut(&mut body);
        if meta
            .get("resourceVersion")
            .and_then(Value::as_str)
            .is_some_and(|s| !s.is_empty())
        {
            return Err(ApiError::bad_request(
                "resourceVersion should not be set on objects to be created",
            ));
        }
        // Namespace.
        if res.namespaced {
            let path_ns = ns.unwrap_or("");
            match meta.get("namespace").and_then(Value::as_str) {
                None | Some("") => {
                    meta.insert("namespace".into(), json!(path_ns));
                }
                Some(body_ns) if body_ns != path_ns => {
                    return Err(ApiError::bad_request(
                        "the namespace of the provided object does not match the namespace sent on the request",
                    ));
                }
                _ => {}
            }
        } else {
            meta.remove("namespace");
        }
        // Name.
        let has_name = meta
            .get("name")
            .and_then(Value::as_str)
            .is_some_and(|s| !s.is_empty());
        if !has_name
            && let Some(prefix) = meta
                .get("generateName")
                .and_then(Value::as_str)
                .filter(|s| !s.is_empty())
        {
            // As kube-apiserver: the prefix is cut so the name stays within 63 characters.
            let cut = prefix
                .char_indices()
                .nth(MAX_GENERATED_PREFIX)
                .map_or(prefix.len(), |(i, _)| i);
            let name = format!("{}{}", &prefix[..cut], random_suffix());
            meta.insert("name".into(), json!(name));
        }
        // System fields.
        for f in [
            "uid",
            "creationTimestamp",
            "deletionTimestamp",
            "deletionGracePeriodSeconds",
            "generation",
            "selfLink",
        ] {
            meta.remove(f);
        }
        meta.insert("uid".into(), json!(uuid::Uuid::new_v4().to_string()));
        meta.insert("creationTimestamp".into(), json!(now_rfc3339()));
        if res.has_generation() {
            meta.insert("generation".into(), json!(1));
        }
        let name = meta
            .get("name")
            .and_then(Value::as_str)
            .unwrap_or("")
            .to_string();
        if res.has_status {
            if let Some(m) = body.as_object_mut() {
                m.remove("status");
            }
            if res.kind_id == Kind::Atespace {
                body["status"] = crate::lifecycle::atespace_status(&body, &now_rfc3339());
            } else if let Some(status) = initial_status(res) {
                body["status"] = status;
            }
            if res.kind_id == Kind::Actor {
                let (tns, tname) = crate::tenancy::template_ref(&body);
                // A lookup that fails leaves the verdict to the operator.
                let found = self.template(&tns, &tname).await.map(|t| t.is_some());
                initial_actor_conditions(&mut body, found.unwrap_or(true), &tns, &tname);
            }
        }
        let mut obj = self.normalize(res, body, &name)?;
        if track {
            record_managed(res, None, &mut obj, None, wo, &name)?;
        }
        // Admission.
        if res.kind_id == Kind::Atespace
            && crds::validation::is_reserved_atespace(&name)
            && !user.in_group(crds::SYSTEM_GROUP)
        {
            return Err(ApiError::forbidden_msg(format!(
                "atespaces.substrate.ate.dev \"{name}\" is forbidden: names starting with \"{}\" are reserved for the system",
                crds::RESERVED_PREFIX
            )));
        }
        if res.namespaced {
            self.admit_namespace(res, ns.unwrap_or(""), &name).await?;
        }
        self.run_checks(user, res, ns, None, &obj).await?;
        if res.kind_id == Kind::Actor {
            let errs = crate::tenancy::check_template_use(self, &obj).await?;
            if !errs.is_empty() {
                return Err(ApiError::invalid(res, &name, &errs));
            }
        }
        if wo.dry_run {
            if self.get_opt(res, ns, &name).await?.is_some() {
                return Err(ApiError::already_exists(res, &name));
            }
            return Ok(Written {
                object: obj,
                warnings,
            });
        }
        let terms = selector::object_terms(res, &obj);
        let stored = self
            .store
            .create(rkey(res), &okey(ns, &name), &obj, &terms)
            .await
            .map_err(|e| ApiError::from_storage(res, &name, e))?;
        tracing::info!(resource = %res.qualified(), namespace = ns.unwrap_or(""), name = %name, user = %user.name, "created");
        Ok(Written {
            object: stored,
            warnings,
        })
    }

    /// PUT a whole object (or its status).
    #[allow(clippy::too_many_arguments)] // mirrors the REST call: who, what, where, body, how
    pub async fn update(
        &self,
        user: &UserInfo,
        res: &ResourceInfo,
        ns: Option<&str>,
        name: &str,
        body: Value,
        subresource: Option<&str>,
        wo: &WriteOptions,
    ) -> Result<Written, ApiError> {
        let warnings = self.check_body(res, &body, wo)?;
        let body_name = meta_str(&body, "name").unwrap_or("");
        if body_name != name {
            return Err(ApiError::bad_request(format!(
                "the name of the object ({body_name}) does not match the name on the URL ({name})"
            )));
        }
        if res.namespaced
            && meta_str(&body, "namespace").is_some_and(|b| !b.is_empty() && Some(b) != ns)
        {
            return Err(ApiError::bad_request(
                "the namespace of the provided object does not match the namespace sent on the request",
            ));
        }
        let body_rv = match meta_str(&body, "resourceVersion") {
            None | Some("") => {
                return Err(ApiError::invalid(
                    res,
                    name,
                    &[FieldError::invalid(
                        "metadata.resourceVersion",
                        0,
                        "must be specified for an update",
                    )],
                ));
            }
            Some(s) => s.parse::<u64>().map_err(|_| {
                ApiError::invalid(
                    res,
                    name,
                    &[FieldError::invalid(
                        "metadata.resourceVersion",
                        s,
                        "must be a decimal number",
                    )],
                )
            })?,
        };
        let old = self.get(res, ns, name).await?;
        if let Some(uid) = meta_str(&body, "uid").filter(|u| !u.is_empty())
            && meta_str(&old, "uid") != Some(uid)
        {
            return Err(uid_precondition_failed(res, name, uid, &old));
        }
        if rv_of(&old) != body_rv {
            return Err(ApiError::conflict(res, name));
        }
        let new = merge_update(res, &old, body, subresource);
        let object = self
            .commit_update(user, res, ns, name, &old, new, subresource, wo)
            .await?;
        Ok(Written { object, warnings })
    }

    /// PATCH (JSON patch or JSON merge patch), retried on races the client did not ask about.
    #[allow(clippy::too_many_arguments)]
    #[allow(clippy::too_many_arguments)] // mirrors the REST call: who, what, where, body, how
    pub async fn patch(
        &self,
        user: &UserInfo,
        res: &ResourceInfo,
        ns: Option<&str>,
        name: &str,
        patch: &PatchBody,
        subresource: Option<&str>,
        wo: &WriteOptions,
    ) -> Result<Written, ApiError> {
        for _ in 0..MAX_RETRIES {
            let old = self.get(res, ns, name).await?;
            let mut patched = old.clone();
            match patch {
                PatchBody::Json(p) => json_patch::patch(&mut patched, p).map_err(|e| {
                    ApiError::new(
                        422,
                        "Invalid",
                        format!(
                            "the server rejected our request due to an error in our request: {e}"
                        ),
                    )
                })?,
                PatchBody::Merge(p) => json_patch::merge(&mut patched, p),
                PatchBody::Strategic(p) => crate::strategic::merge(&mut patched, p),
            }
            if !patched.is_object() {
                return Err(ApiError::bad_request("the patch must leave a JSON object"));
            }
            let precondition = meta_str(&patched, "resourceVersion").map(str::to_string);
            let precondition_set = precondition.as_deref() != meta_str(&old, "resourceVersion");
            if precondition_set {
                return Err(ApiError::conflict(res, name));
            }
            // A patch may not change the uid (the garbage collector sends the uid it expects:
            // a recreated object of the same name refuses its patch), as Kubernetes'
            // `ValidateObjectMetaUpdate`.
            if let Some(uid) = meta_str(&patched, "uid")
                && meta_str(&old, "uid") != Some(uid)
            {
                return Err(ApiError::invalid(
                    res,
                    name,
                    &[FieldError::immutable("metadata.uid", uid)],
                ));
            }
            // A patch must not change identity.
            if meta_str(&patched, "name") != Some(name) {
                return Err(ApiError::bad_request(
                    "metadata.name: the patch may not change the name of the object",
                ));
            }
            let warnings = self.check_body(res, &patched, wo)?;
            let new = merge_update(res, &old, patched, subresource);
            match self
                .commit_update(user, res, ns, name, &old, new, subresource, wo)
                .await
            {
                Ok(object) => return Ok(Written { object, warnings }),
                Err(e) if e.reason == "Conflict" => continue,
                Err(e) => return Err(e),
            }
        }
        Err(ApiError::conflict(res, name))
    }

    /// PATCH with `application/apply-patch+yaml`: server-side apply of `config` by
    /// `manager` (see [`crate::apply`]). Creates the object when it does not exist (main
    /// resource only). A `resourceVersion` in the configuration is a precondition. An apply
    /// that changes neither the object nor its managedFields writes nothing. Returns whether
    /// the object was created.
    #[allow(clippy::too_many_arguments)] // mirrors the REST call: who, what, where, body, how
    pub async fn apply(
        &self,
        user: &UserInfo,
        res: &ResourceInfo,
        ns: Option<&str>,
        name: &str,
        mut config: Value,
        subresource: Option<&str>,
        manager: &str,
        force: bool,
        wo: &WriteOptions,
    ) -> Result<(Written, bool), ApiError> {
        if !config.is_object() {
            return Err(ApiError::bad_request(
                "error decoding YAML: the apply configuration must be an object",
            ));
        }
        let av = config
            .get("apiVersion")
            .and_then(Value::as_str)
            .unwrap_or("");
        if av != res.api_version() {
            return Err(ApiError::bad_request(format!(
                "Incorrect version specified in apply patch. Specified patch version: {av}, expected: {}",
                res.api_version()
            )));
        }
        if config
            .pointer("/metadata/managedFields")
            .is_some_and(|v| !v.is_null())
        {
            return Err(ApiError::bad_request("metadata.managedFields must be nil"));
        }
        let body_name = meta_str(&config, "name").unwrap_or("");
        if body_name != name {
            return Err(ApiError::bad_request(format!(
                "the name of the object ({body_name}) does not match the name on the URL ({name})"
            )));
        }
        if res.namespaced
            && meta_str(&config, "namespace").is_some_and(|b| !b.is_empty() && Some(b) != ns)
        {
            return Err(ApiError::bad_request(
                "the namespace of the provided object does not match the namespace sent on the request",
            ));
        }
        let warnings = self.check_body(res, &config, wo)?;
        let precondition = meta_str(&config, "resourceVersion")
            .filter(|s| !s.is_empty())
            .map(str::to_string);
        {
            let m = meta_mut(&mut config);
            for f in [
                "uid",
                "creationTimestamp",
                "deletionTimestamp",
                "deletionGracePeriodSeconds",
                "generation",
                "selfLink",
                "resourceVersion",
                "managedFields",
            ] {
                m.shift_remove(f);
            }
            if let Some(ns) = ns.filter(|_| res.namespaced) {
                m.insert("namespace".into(), json!(ns));
            }
        }
        applied_part(res, &mut config, subresource);
        let id = ManagerId::new(manager, Operation::Apply, subresource);
        let schema = apply::schema::root(res);
        if let Some(d) = apply::typed::duplicate_item(schema, &config) {
            // Kubernetes: "duplicate entries for key"; which of the two would be meant?
            return Err(ApiError::invalid(
                res,
                name,
                &[FieldError::duplicate(d.field, Json(&d.value))],
            ));
        }
        let ignore = apply::ignored(subresource);
        for _ in 0..MAX_RETRIES {
            let Some(live) = self.get_opt(res, ns, name).await? else {
                if subresource.is_some() {
                    return Err(ApiError::not_found(res, name));
                }
                if precondition.is_some() {
                    return Err(ApiError::bad_request(
                        "resourceVersion should not be set on objects to be created",
                    ));
                }
                let mut managers = apply::Managers::new();
                let set = apply::typed::to_field_set(schema, &config).filter(|p| !ignore(p));
                if !set.is_empty() {
                    managers.insert(
                        id.clone(),
                        apply::Entry {
                            api_version: res.api_version(),
                            time: Some(now_rfc3339()),
                            set,
                        },
                    );
                }
                let mut body = config.clone();
                set_managed_fields(&mut body, &managers);
                match self
                    .create_inner(user, res, ns, body, wo, warnings.clone(), false)
                    .await
                {
                    Ok(w) => {
                        tracing::debug!(resource = %res.qualified(), name, manager, "applied (created)");
                        return Ok((w, true));
                    }
                    Err(e) if e.reason == "AlreadyExists" && !wo.dry_run => continue,
                    Err(e) => return Err(e),
                }
            };
            if let Some(rv) = &precondition
                && meta_str(&live, "resourceVersion") != Some(rv.as_str())
            {
                return Err(ApiError::conflict(res, name));
            }
            let mut managers = apply::decode(&live).unwrap_or_default();
            let before = managers.clone();
            let merged = apply::apply(
                schema,
                &live,
                &config,
                &mut managers,
                &id,
                &res.api_version(),
                force,
                &ignore,
            )
            .map_err(|c| {
                tracing::debug!(resource = %res.qualified(), name, manager, conflicts = c.0.len(), "apply conflict");
                apply_conflict(&c)
            })?;
            let new = merge_update(res, &live, merged, subresource);
            let mut new = self.normalize(res, new, name)?;
            let changed = !same_but_managed(&new, &live);
            if let Some(e) = managers.get_mut(&id)
                && (changed || e.time.is_none())
            {
                e.time = Some(now_rfc3339());
            }
            if !changed && managers == before {
                return Ok((
                    Written {
                        object: live,
                        warnings,
                    },
                    false,
                ));
            }
            set_managed_fields(&mut new, &managers);
            match self
                .commit_normalized(user, res, ns, name, &live, new, wo)
                .await
            {
                Ok(object) => {
                    tracing::debug!(resource = %res.qualified(), name, manager, "applied");
                    return Ok((Written { object, warnings }, false));
                }
                Err(e) if e.reason == "Conflict" && precondition.is_none() => continue,
                Err(e) => return Err(e),
            }
        }
        Err(ApiError::conflict(res, name))
    }

    /// Validates and writes `new` over `old` (CAS on `old`'s resourceVersion), recording the
    /// writer in managedFields.
    #[allow(clippy::too_many_arguments)]
    async fn commit_update(
        &self,
        user: &UserInfo,
        res: &ResourceInfo,
        ns: Option<&str>,
        name: &str,
        old: &Value,
        new: Value,
        subresource: Option<&str>,
        wo: &WriteOptions,
    ) -> Result<Value, ApiError> {
        let mut new = self.normalize(res, new, name)?;
        record_managed(res, Some(old), &mut new, subresource, wo, name)?;
        self.commit_normalized(user, res, ns, name, old, new, wo)
            .await
    }

    /// [`Registry::commit_update`] of an already normalized object whose managedFields are
    /// final.
    #[allow(clippy::too_many_arguments)]
    async fn commit_normalized(
        &self,
        user: &UserInfo,
        res: &ResourceInfo,
        ns: Option<&str>,
        name: &str,
        old: &Value,
        mut new: Value,
        wo: &WriteOptions,
    ) -> Result<Value, ApiError> {
        self.run_checks(user, res, ns, Some(old), &new).await?;
        let mut errs = res.validate_update(old, &new);
        let old_fin = finalizers(old);
        let new_fin = finalizers(&new);
        if old.pointer("/metadata/deletionTimestamp").is_some() {
            let added: Vec<&String> = new_fin.iter().filter(|f| !old_fin.contains(f)).collect();
            if !added.is_empty() {
                errs.push(FieldError::forbidden(
                    "metadata.finalizers",
                    format!("no new finalizers can be added if the object is being deleted, found new finalizers {added:?}"),
                ));
            }
        }
        if res.kind_id == Kind::Actor
            && old.pointer("/spec/template") != new.pointer("/spec/template")
        {
            errs.extend(crate::tenancy::check_template_use(self, &new).await?);
        }
        if !errs.is_empty() {
            return Err(ApiError::invalid(res, name, &errs));
        }
        let old_gen = old
            .pointer("/metadata/generation")
            .and_then(Value::as_i64)
            .unwrap_or(1);
        let spec_changed = old.get("spec") != new.get("spec");
        if res.has_generation() {
            meta_mut(&mut new).insert(
                "generation".into(),
                json!(if spec_changed { old_gen + 1 } else { old_gen }),
            );
        }
        let old_rv = rv_of(old);
        // Finalized: the last finalizer is gone from an object being deleted.
        if old.pointer("/metadata/deletionTimestamp").is_some()
            && new_fin.is_empty()
            && res.kind_id != Kind::Atespace
        {
            if wo.dry_run {
                return Ok(new);
            }
            let stored = self
                .store
                .delete(
                    rkey(res),
                    &okey(ns, name),
                    old_rv,
                    &new,
                    &selector::object_terms(res, old),
                )
                .await
                .map_err(|e| ApiError::from_storage(res, name, e))?;
            tracing::info!(resource = %res.qualified(), namespace = ns.unwrap_or(""), name, user = %user.name, "finalized and deleted");
            return Ok(stored);
        }
        if without_rv(&new) == without_rv(old) {
            return Ok(old.clone());
        }
        if wo.dry_run {
            meta_mut(&mut new).insert("resourceVersion".into(), json!(old_rv.to_string()));
            return Ok(new);
        }
        let stored = self
            .store
            .update(
                rkey(res),
                &okey(ns, name),
                old_rv,
                &new,
                &selector::object_terms(res, old),
                &selector::object_terms(res, &new),
            )
            .await
            .map_err(|e| ApiError::from_storage(res, name, e))?;
        tracing::debug!(resource = %res.qualified(), namespace = ns.unwrap_or(""), name, user = %user.name, "updated");
        Ok(stored)
    }

    /// Writes `f(current)` with compare-and-swap, retrying on races: for system components
    /// (the atespace lifecycle controller, later the scheduler).
    pub async fn guaranteed_update(
        &self,
        res: &ResourceInfo,
        ns: Option<&str>,
        name: &str,
        mut f: impl FnMut(&Value) -> Option<Value>,
    ) -> Result<Option<Value>, ApiError> {
        for _ in 0..MAX_RETRIES {
            let Some(old) = self.get_opt(res, ns, name).await? else {
                return Ok(None);
            };
            let Some(new) = f(&old) else {
                return Ok(Some(old));
            };
            let new = self.normalize(res, new, name)?;
            if without_rv(&new) == without_rv(&old) {
                return Ok(Some(old));
            }
            match self
                .store
                .update(
                    rkey(res),
                    &okey(ns, name),
                    rv_of(&old),
                    &new,
                    &selector::object_terms(res, &old),
                    &selector::object_terms(res, &new),
                )
                .await
            {
                Ok(v) => return Ok(Some(v)),
                Err(StorageError::Conflict { .. }) => continue,
                Err(StorageError::NotFound { .. }) => return Ok(None),
                Err(e) => return Err(ApiError::from_storage(res, name, e)),
            }
        }
        Err(ApiError::conflict(res, name))
    }

    /// DELETE one object: immediately, or by setting `deletionTimestamp` while finalizers
    /// (or, for atespaces, contents) remain.
    pub async fn delete(
        &self,
        user: &UserInfo,
        res: &ResourceInfo,
        ns: Option<&str>,
        name: &str,
        opts: &DeleteOptions,
        dry_run: bool,
    ) -> Result<Value, ApiError> {
        if res.kind_id == Kind::Atespace
            && (name == "default" || name.starts_with(crds::RESERVED_PREFIX))
            && !user.in_group(crds::SYSTEM_GROUP)
        {
            return Err(ApiError::forbidden_msg(format!(
                "{} \"{name}\" is forbidden: this atespace may not be deleted",
                res.qualified()
            ))
            .with_details(crate::status::details(res, name)));
        }
        for _ in 0..MAX_RETRIES {
            let old = self.get(res, ns, name).await?;
            if let Some(uid) = &opts.precondition_uid
                && meta_str(&old, "uid") != Some(uid.as_str())
            {
                return Err(ApiError::conflict_msg(
                    res,
                    name,
                    &format!(
                        "Precondition failed: UID in precondition: {uid}, UID in object meta: {}",
                        meta_str(&old, "uid").unwrap_or("")
                    ),
                ));
            }
            if let Some(rv) = &opts.precondition_rv
                && meta_str(&old, "resourceVersion") != Some(rv.as_str())
            {
                return Err(ApiError::conflict_msg(
                    res,
                    name,
                    &format!(
                        "Precondition failed: ResourceVersion in precondition: {rv}, ResourceVersion in object meta: {}",
                        meta_str(&old, "resourceVersion").unwrap_or("")
                    ),
                ));
            }
            let graceful = res.kind_id == Kind::Atespace || !finalizers(&old).is_empty();
            let old_rv = rv_of(&old);
            let result = if graceful {
                if old.pointer("/metadata/deletionTimestamp").is_some() {
                    return Ok(old);
                }
                let mut new = old.clone();
                let m = meta_mut(&mut new);
                m.insert("deletionTimestamp".into(), json!(now_rfc3339()));
                m.insert("deletionGracePeriodSeconds".into(), json!(0));
                if res.kind_id == Kind::Atespace {
                    new["status"] = crate::lifecycle::atespace_status(&new, &now_rfc3339());
                }
                if dry_run {
                    return Ok(new);
                }
                self.store
                    .update(
                        rkey(res),
                        &okey(ns, name),
                        old_rv,
                        &new,
                        &selector::object_terms(res, &old),
                        &selector::object_terms(res, &new),
                    )
                    .await
            } else {
                if dry_run {
                    return Ok(old);
                }
                self.store
                    .delete(
                        rkey(res),
                        &okey(ns, name),
                        old_rv,
                        &old,
                        &selector::object_terms(res, &old),
                    )
                    .await
            };
            match result {
                Ok(v) => {
                    tracing::info!(resource = %res.qualified(), namespace = ns.unwrap_or(""), name, user = %user.name, graceful, "deleted");
                    return Ok(v);
                }
                Err(StorageError::Conflict { .. }) => continue,
                Err(e) => return Err(ApiError::from_storage(res, name, e)),
            }
        }
        Err(ApiError::conflict(res, name))
    }

    /// DELETE a collection: every object matching the selectors.
    pub async fn delete_collection(
        &self,
        user: &UserInfo,
        res: &ResourceInfo,
        ns: Option<&str>,
        list_opts: &ListOptions,
        opts: &DeleteOptions,
        dry_run: bool,
    ) -> Result<Vec<Value>, ApiError> {
        let mut lo = list_opts.clone();
        lo.limit = None;
        lo.continue_token = None;
        let listed = self.list(res, ns, &lo).await?;
        let mut deleted = Vec::new();
        for obj in listed.items {
            let name = meta_str(&obj, "name").unwrap_or_default().to_string();
            let obj_ns = meta_str(&obj, "namespace").map(str::to_string);
            match self
                .delete(user, res, obj_ns.as_deref(), &name, opts, dry_run)
                .await
            {
                Ok(v) => deleted.push(v),
                Err(e) if e.code == 404 => {}
                Err(e) => return Err(e),
            }
        }
        Ok(deleted)
    }

    /// Hard-deletes an object regardless of finalizers (the atespace lifecycle's last step).
    pub async fn remove(
        &self,
        res: &ResourceInfo,
        ns: Option<&str>,
        name: &str,
    ) -> Result<(), ApiError> {
        for _ in 0..MAX_RETRIES {
            let Some(old) = self.get_opt(res, ns, name).await? else {
                return Ok(());
            };
            match self
                .store
                .delete(
                    rkey(res),
                    &okey(ns, name),
                    rv_of(&old),
                    &old,
                    &selector::object_terms(res, &old),
                )
                .await
            {
                Ok(_) => return Ok(()),
                Err(StorageError::Conflict { .. }) => continue,
                Err(StorageError::NotFound { .. }) => return Ok(()),
                Err(e) => return Err(ApiError::from_storage(res, name, e)),
            }
        }
        Err(ApiError::conflict(res, name))
    }

    /// Creates an object as the system if it does not exist (bootstrap: `default`, `ate-golden`).
    pub async fn ensure_exists(&self, res: &ResourceInfo, obj: Value) -> Result<(), ApiError> {
        match self
            .create(
                &UserInfo::system(),
                res,
                None,
                obj,
                &WriteOptions::default(),
            )
            .await
        {
            Ok(_) => Ok(()),
            Err(e) if e.reason == "AlreadyExists" => Ok(()),
            Err(e) => Err(e),
        }
    }
}

/// A decoded PATCH body.
pub enum PatchBody {
    Json(json_patch::Patch),
    Merge(Value),
    /// Strategic merge patch (built-in kinds only: [`crate::strategic`]).
    Strategic(Value),
}

/// `DeleteOptions` a client may send (decoded and validated by `request.rs`).
pub use crate::request::DeleteOptions;

impl ApiError {
    fn with_kind_details(mut self, res: &ResourceInfo, name: &str) -> Self {
        self.details = Some(Box::new(
            json!({"name": name, "group": res.group, "kind": res.plural}),
        ));
        self
    }
}

/// Records a non-apply write in `new`'s managedFields (Kubernetes' `FieldManager.Update`):
/// managedFields the client sent on the main resource replace the stored ones (that is how
/// kubectl migrates client-side-apply ownership), otherwise the stored ones are kept; then
/// the writer's `Update` entry takes what it added or changed. Writes without a field manager
/// (the apiserver's own controllers) keep managedFields as they are.
fn record_managed(
    res: &ResourceInfo,
    old: Option<&Value>,
    new: &mut Value,
    subresource: Option<&str>,
    wo: &WriteOptions,
    name: &str,
) -> Result<(), ApiError> {
    let Some(manager) = wo.field_manager.as_deref() else {
        return Ok(());
    };
    let sent = apply::decode(new).map_err(|e| {
        ApiError::invalid(
            res,
            name,
            &[FieldError::invalid(
                "metadata.managedFields",
                "",
                e.to_string(),
            )],
        )
    })?;
    let mut managers = if !sent.is_empty() && subresource.is_none() {
        sent
    } else {
        old.map(|o| apply::decode(o).unwrap_or_default())
            .unwrap_or_default()
    };
    let empty = json!({});
    apply::record_update(
        apply::schema::root(res),
        old.unwrap_or(&empty),
        new,
        &mut managers,
        &ManagerId::new(manager, Operation::Update, subresource),
        &res.api_version(),
        &now_rfc3339(),
        &apply::ignored(subresource),
    );
    set_managed_fields(new, &managers);
    Ok(())
}

fn set_managed_fields(obj: &mut Value, managers: &apply::Managers) {
    let m = meta_mut(obj);
    if managers.is_empty() {
        m.shift_remove("managedFields");
    } else {
        m.insert("managedFields".into(), apply::encode(managers));
    }
}

/// Whether `a` and `b` are equal except for `metadata.managedFields` and
/// `metadata.resourceVersion` (without copying them).
fn same_but_managed(a: &Value, b: &Value) -> bool {
    let (Some(ma), Some(mb)) = (a.as_object(), b.as_object()) else {
        return a == b;
    };
    let skip = |k: &str| k == "managedFields" || k == "resourceVersion";
    let meta_eq = |x: Option<&Value>, y: Option<&Value>| {
        let (x, y) = (x.and_then(Value::as_object), y.and_then(Value::as_object));
        match (x, y) {
            (Some(x), Some(y)) => {
                x.iter().filter(|(k, _)| !skip(k)).count()
                    == y.iter().filter(|(k, _)| !skip(k)).count()
                    && x.iter()
                        .filter(|(k, _)| !skip(k))
                        .all(|(k, v)| y.get(k) == Some(v))
            }
            (x, y) => x == y,
        }
    };
    ma.len() == mb.len()
        && ma.iter().all(|(k, v)| {
            if k == "metadata" {
                meta_eq(Some(v), mb.get(k))
            } else {
                mb.get(k) == Some(v)
            }
        })
}

/// Keeps the part of an apply configuration that `subresource` writes: the main resource
/// does not write `status`, the status subresource writes nothing else.
fn applied_part(res: &ResourceInfo, config: &mut Value, subresource: Option<&str>) {
    let Some(m) = config.as_object_mut() else {
        return;
    };
    if subresource == Some("status") {
        m.retain(|k, _| matches!(k.as_str(), "apiVersion" | "kind" | "metadata" | "status"));
        if let Some(meta) = m.get_mut("metadata").and_then(Value::as_object_mut) {
            meta.retain(|k, _| k == "name" || k == "namespace");
        }
    } else if res.has_status {
        m.shift_remove("status");
    }
}

fn uid_precondition_failed(res: &ResourceInfo, name: &str, uid: &str, old: &Value) -> ApiError {
    ApiError::conflict_msg(
        res,
        name,
        &format!(
            "Precondition failed: UID in precondition: {uid}, UID in object meta: {}",
            meta_str(old, "uid").unwrap_or("")
        ),
    )
}

/// The conflict `Status` of an apply (409, `FieldManagerConflict` causes).
fn apply_conflict(c: &apply::Conflicts) -> ApiError {
    ApiError::new(409, "Conflict", c.message()).with_details(json!({"causes": c.causes()}))
}

/// Combines a client's object with the stored one: system metadata always from `old`; for the
/// main resource the status stays `old`'s, for `/status` everything but the status does.
fn merge_update(
    res: &ResourceInfo,
    old: &Value,
    mut body: Value,
    subresource: Option<&str>,
) -> Value {
    if subresource == Some("status") {
        let mut new = old.clone();
        match body.get_mut("status").map(Value::take) {
            Some(s) if !s.is_null() => new["status"] = s,
            _ => {
                if let Some(m) = new.as_object_mut() {
                    m.remove("status");
                }
            }
        }
        return new;
    }
    {
        let old_meta = old.get("metadata").cloned().unwrap_or_else(|| json!({}));
        let m = meta_mut(&mut body);
        for f in [
            "uid",
            "creationTimestamp",
            "deletionTimestamp",
            "deletionGracePeriodSeconds",
            "generation",
            "namespace",
            "resourceVersion",
        ] {
            match old_meta.get(f) {
                Some(v) => {
                    m.insert(f.into(), v.clone());
                }
                None => {
                    m.remove(f);
                }
            }
        }
        m.remove("selfLink");
    }
    if res.has_status
        && let Some(b) = body.as_object_mut()
    {
        match old.get("status") {
            Some(s) => {
                b.insert("status".into(), s.clone());
            }
            None => {
                b.remove("status");
            }
        }
    }
    body
}

/// The status a new object starts with.
fn initial_status(res: &ResourceInfo) -> Option<Value> {
    match res.kind_id {
        Kind::Atespace => Some(json!({"phase": "Active"})),
        Kind::Actor => Some(json!({"phase": "Suspended"})),
        _ => None,
    }
}

/// The conditions of an actor fresh from create: `Reconciling=True` (reason `Created`, or
/// `TemplateNotFound` when its template does not exist yet) until the operator has seen it,
/// so kstatus (Flux), `kubectl wait` and Argo CD do not take it for settled; `Ready=False`
/// (`Suspended`, or `TemplateNotFound`). No `observedGeneration`: the operator writes it.
fn initial_actor_conditions(actor: &mut Value, template_found: bool, tns: &str, tname: &str) {
    use crds::conditions::{READY, RECONCILING, reasons};
    if template_found {
        let msg = "created; waiting for the operator";
        crate::scheduler::set_condition(actor, READY, "False", reasons::SUSPENDED, msg);
        crate::scheduler::set_condition(actor, RECONCILING, "True", reasons::CREATED, msg);
    } else {
        let msg = format!("ActorTemplate {tns}/{tname} does not exist (yet)");
        for (t, v) in [(READY, "False"), (RECONCILING, "True")] {
            crate::scheduler::set_condition(actor, t, v, reasons::TEMPLATE_NOT_FOUND, &msg);
        }
    }
}

fn random_suffix() -> String {
    use rand::Rng;
    const ALPHABET: &[u8] = b"bcdfghjklmnpqrstvwxz2456789";
    let mut rng = rand::rng();
    (0..5)
        .map(|_| ALPHABET[rng.random_range(0..ALPHABET.len())] as char)
        .collect()
}

fn truncate(s: &str, n: usize) -> String {
    if s.len() <= n {
        s.to_string()
    } else {
        format!("{}...", &s[..s.floor_char_boundary(n)])
    }
}

/// Shared handle.
pub type SharedRegistry = Arc<Registry>;

#[cfg(test)]
mod tests {
    use super::*;
    use crds::resources::{ACTORS, WORKER_POOLS};

    #[test]
    fn continue_tokens_roundtrip() {
        let k = ObjectKey {
            namespace: "team-a".into(),
            name: "x".into(),
        };
        let t = encode_continue(&ACTORS, Some(42), &k);
        assert_eq!(decode_continue(&ACTORS, &t).unwrap(), (Some(42), k.clone()));
        // resourceVersions are counted per resource: another resource's token is refused.
        let e = decode_continue(&WORKER_POOLS, &t).unwrap_err();
        assert_eq!(e.code, 400);
        assert!(e.message.contains("another resource"), "{}", e.message);
        let t = encode_continue(&ACTORS, None, &k);
        assert_eq!(decode_continue(&ACTORS, &t).unwrap(), (None, k));
        assert!(decode_continue(&ACTORS, "garbage!").is_err());
    }

    #[test]
    fn status_update_takes_only_status() {
        let old = json!({"metadata": {"name": "a", "labels": {"x": "1"}}, "spec": {"a": 1}, "status": {"phase": "Suspended"}});
        let body = json!({"metadata": {"name": "a", "labels": {"x": "2"}}, "spec": {"a": 2}, "status": {"phase": "Running"}});
        let new = merge_update(&crds::resources::ACTORS, &old, body, Some("status"));
        assert_eq!(new["spec"]["a"], 1);
        assert_eq!(new["metadata"]["labels"]["x"], "1");
        assert_eq!(new["status"]["phase"], "Running");
    }

    #[test]
    fn main_update_keeps_status_and_system_fields() {
        let old = json!({"metadata": {"name": "a", "uid": "u1", "generation": 3, "resourceVersion": "7"}, "spec": {"a": 1}, "status": {"phase": "Running"}});
        let body = json!({"metadata": {"name": "a", "uid": "evil", "generation": 99}, "spec": {"a": 2}, "status": {"phase": "Failed"}});
        let new = merge_update(&crds::resources::ACTORS, &old, body, None);
        assert_eq!(new["metadata"]["uid"], "u1");
        assert_eq!(new["metadata"]["generation"], 3);
        assert_eq!(new["status"]["phase"], "Running");
        assert_eq!(new["spec"]["a"], 2);
    }
}
