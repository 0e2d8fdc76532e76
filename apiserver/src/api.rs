//! The HTTP front of the apiserver: authentication, routing of discovery/OpenAPI/health and
//! resource requests, body decoding, content negotiation and response encoding.

use std::convert::Infallible;
use std::sync::Arc;

use bytes::Bytes;
use http::{HeaderValue, Method, Request, Response, StatusCode, header};
use http_body_util::{BodyExt, Full, combinators::UnsyncBoxBody};
use hyper::body::Incoming;
use serde_json::{Value, json};

use crds::resources::{ATESPACES, ResourceInfo};

use crate::auth::{self, Authenticator, UserInfo};
use crate::authz::{self, Attributes};
use crate::negotiate::{self, Output, PatchType};
use crate::registry::{Registry, Selectors, Written};
use crate::request::{
    self, DeleteOptions, ListOptions, Query, ResourceRequest, Target, Verb, WriteOptions,
};
use crate::status::ApiError;
use crate::{discovery, openapi, table, watch};

/// Response body type.
pub type Body = UnsyncBoxBody<Bytes, Infallible>;

/// Shared state of all connections.
pub struct AppState {
    pub registry: Registry,
    pub scheduler: crate::scheduler::Scheduler,
    pub auth: Authenticator,
    /// Who may do what ([`authz::Chain`]).
    pub authz: authz::Chain,
    /// Largest accepted request body in bytes.
    pub max_body: usize,
}

/// The connection's peer, classified once per connection (and again after the
/// authentication bundles change).
pub type PeerChain = Arc<auth::Connection>;

fn full(bytes: impl Into<Bytes>) -> Body {
    Full::new(bytes.into())
        .map_err(|never| match never {})
        .boxed_unsync()
}

fn json_response(code: u16, v: &Value) -> Response<Body> {
    let body = serde_json::to_vec(v).unwrap_or_default();
    let mut r = Response::new(full(body));
    *r.status_mut() = StatusCode::from_u16(code).unwrap_or(StatusCode::OK);
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    r
}

fn encode(output: Output, code: u16, v: &Value) -> Response<Body> {
    if output == Output::Yaml {
        let text = serde_saphyr::to_string(v).unwrap_or_default();
        let mut r = Response::new(full(text));
        *r.status_mut() = StatusCode::from_u16(code).unwrap_or(StatusCode::OK);
        r.headers_mut().insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/yaml"),
        );
        return r;
    }
    json_response(code, v)
}

fn error_response(e: &ApiError) -> Response<Body> {
    let mut r = json_response(e.code, &e.to_status());
    if let Some(s) = e.retry_after
        && let Ok(v) = HeaderValue::from_str(&s.to_string())
    {
        r.headers_mut().insert(header::RETRY_AFTER, v);
    }
    if let Some(allow) = e.allow {
        r.headers_mut()
            .insert(header::ALLOW, HeaderValue::from_static(allow));
    }
    r
}

fn text(code: u16, body: &'static str) -> Response<Body> {
    let mut r = Response::new(full(body));
    *r.status_mut() = StatusCode::from_u16(code).unwrap_or(StatusCode::OK);
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    r
}

fn add_warnings(r: &mut Response<Body>, warnings: &[String]) {
    for w in warnings {
        let escaped = w.replace('\\', "\\\\").replace('"', "\\\"");
        if let Ok(v) = HeaderValue::from_str(&format!("299 - \"{escaped}\"")) {
            r.headers_mut().append(header::WARNING, v);
        }
    }
}

/// The longest request URI (path and query) served: what hyper's HTTP/1.1 parser accepts
/// (it answers longer ones with a bare 414 itself), so HTTP/2 behaves the same.
pub const MAX_URI_LEN: usize = u16::MAX as usize - 1;

/// Entry point for every request.
pub async fn handle(
    state: Arc<AppState>,
    chain: PeerChain,
    req: Request<Incoming>,
) -> Result<Response<Body>, Infallible> {
    let started = std::time::Instant::now();
    let (parts, body) = req.into_parts();
    let body = RequestBody::new(body, &parts);
    let uri_len = parts.uri.path_and_query().map_or(0, |pq| pq.as_str().len());
    let (mut resp, user) = if uri_len > MAX_URI_LEN {
        (error_response(&ApiError::uri_too_long(MAX_URI_LEN)), None)
    } else {
        match route(&state, chain, &parts, &body).await {
            Ok((r, u)) => (r, u),
            Err((e, u)) => (error_response(&e), u),
        }
    };
    // Whatever the handler did not read is read and dropped before the answer, so the client
    // gets it instead of a reset connection (an error answered before the body was read).
    if !body.finish().await && parts.version < http::Version::HTTP_2 {
        resp.headers_mut()
            .insert(header::CONNECTION, HeaderValue::from_static("close"));
    }
    tracing::debug!(
        method = %parts.method,
        path = %parts.uri.path(),
        status = resp.status().as_u16(),
        user = user.as_deref().unwrap_or("-"),
        micros = started.elapsed().as_micros() as u64,
        "request"
    );
    Ok(resp)
}

/// How much of a request body the server reads and drops after answering without reading it
/// all (an error, or a 413): Go's net/http reads 256 KiB; an API client's body is at most a
/// few MiB (the limit), so reading up to this much lets it finish sending and read the
/// answer. Past this (or [`DRAIN_TIME`]) the connection is closed instead.
const DRAIN_BYTES: usize = 64 << 20;
/// How long draining a body may take.
const DRAIN_TIME: std::time::Duration = std::time::Duration::from_secs(10);

/// The request body, read at most once by a handler ([`read_body`]); what is left is drained
/// by [`RequestBody::finish`].
pub struct RequestBody {
    body: std::sync::Mutex<Option<Incoming>>,
    /// The client waits for `100 Continue` before sending the body: an unread body is then
    /// never sent, and draining it would ask for it.
    expects_continue: bool,
    /// A body partly read and then abandoned (over the limit) that could not be drained.
    undrained: std::sync::atomic::AtomicBool,
}

impl RequestBody {
    fn new(body: Incoming, parts: &http::request::Parts) -> Self {
        let expects_continue = parts
            .headers
            .get(header::EXPECT)
            .and_then(|v| v.to_str().ok())
            .is_some_and(|v| v.eq_ignore_ascii_case("100-continue"));
        Self {
            body: std::sync::Mutex::new(Some(body)),
            expects_continue,
            undrained: std::sync::atomic::AtomicBool::new(false),
        }
    }

    fn take(&self) -> Option<Incoming> {
        self.body.lock().ok().and_then(|mut b| b.take())
    }

    /// Reads the body, at most `limit` bytes: 413 past it (after draining the rest).
    async fn read(&self, limit: usize) -> Result<Bytes, ApiError> {
        let Some(mut body) = self.take() else {
            return Ok(Bytes::new());
        };
        let mut buf = bytes::BytesMut::new();
        while let Some(frame) = body.frame().await {
            let frame = frame
                .map_err(|e| ApiError::bad_request(format!("reading the request body: {e}")))?;
            if let Ok(data) = frame.into_data() {
                if buf.len() + data.len() > limit {
                    if !drain(&mut body, buf.len() + data.len()).await {
                        self.undrained
                            .store(true, std::sync::atomic::Ordering::Relaxed);
                    }
                    return Err(ApiError::too_large(limit));
                }
                buf.extend_from_slice(&data);
            }
        }
        Ok(buf.freeze())
    }

    /// Drains what no handler read; false when the connection should close instead (the body
    /// is too long or too slow, or was never sent because the client waits for `100
    /// Continue`).
    async fn finish(&self) -> bool {
        if self.undrained.load(std::sync::atomic::Ordering::Relaxed) {
            return false;
        }
        let Some(mut body) = self.take() else {
            return true;
        };
        if http_body::Body::is_end_stream(&body) {
            return true;
        }
        if self.expects_continue {
            return false;
        }
        drain(&mut body, 0).await
    }
}

/// Reads and drops the rest of `body` (`read` bytes of the request were read already), up to
/// [`DRAIN_BYTES`] in all and [`DRAIN_TIME`]; whether it reached the end.
async fn drain(body: &mut Incoming, read: usize) -> bool {
    let mut total = read;
    let all = async {
        while let Some(frame) = body.frame().await {
            let Ok(frame) = frame else { return false };
            if let Some(data) = frame.data_ref() {
                total += data.len();
                if total > DRAIN_BYTES {
                    return false;
                }
            }
        }
        true
    };
    tokio::time::timeout(DRAIN_TIME, all).await.unwrap_or(false)
}

type Routed = Result<(Response<Body>, Option<String>), (ApiError, Option<String>)>;

async fn route(
    state: &AppState,
    chain: PeerChain,
    parts: &http::request::Parts,
    body: &RequestBody,
) -> Routed {
    let path = parts.uri.path();
    let query = Query::parse(parts.uri.query());
    // Health and version are public, as in Kubernetes.
    match path {
        "/healthz" | "/livez" => return Ok((text(200, "ok"), None)),
        "/readyz" => {
            return Ok((
                match state.registry.current_rv(&ATESPACES).await {
                    Ok(_) => text(200, "ok"),
                    Err(_) => text(
                        500,
                        "[-]storage failed: Valkey is not reachable\nreadyz check failed",
                    ),
                },
                None,
            ));
        }
        "/version" => return Ok((json_response(200, &version()), None)),
        _ => {}
    }
    // Certificate or front proxy, then a bearer token (a refused or unreviewable token is
    // 401, as kube answers; the token authenticator logs why).
    let Ok(Some(user)) = state
        .auth
        .authenticate_request(&state.auth.connection_peer(&chain).1, &parts.headers)
        .await
    else {
        return Err((ApiError::unauthorized(), None));
    };
    let uname = Some(user.name.clone());
    if let Some(review) = crate::reviews::parse(&parts.method, path) {
        let r = match review {
            Ok(review) => access_review(state, &user, &review, &query, parts, body).await,
            Err(e) => Err(e),
        };
        return r.map(|resp| (resp, uname.clone())).map_err(|e| (e, uname));
    }
    let target = request::parse(&parts.method, path, &query).map_err(|e| (e, uname.clone()))?;
    let r = match target {
        Target::NonResource => {
            let verb = parts.method.as_str().to_ascii_lowercase();
            match state
                .authz
                .check(&Attributes::non_resource(&user, &verb, path))
                .await
            {
                Ok(()) => non_resource(parts, path),
                Err(e) => Err(e),
            }
        }
        Target::CoreNamespaces { name, verb } => {
            core_namespaces(state, &user, name, verb, &query).await
        }
        Target::Resource(rr)
            if rr.res.group == crds::ATE_GROUP && state.registry.ate_kinds_in_cluster() =>
        {
            Err(ApiError::new(
                404,
                "NotFound",
                format!(
                    "{} are CustomResourceDefinitions of the cluster in cluster mode: use kube-apiserver",
                    rr.res.qualified()
                ),
            ))
        }
        Target::Resource(rr) => resource(state, &user, rr, &query, parts, body).await,
    };
    match r {
        Ok(resp) => Ok((resp, uname)),
        Err(e) => Err((e, uname)),
    }
}

/// `POST /apis/authorization.k8s.io/v1/...` and `/apis/authentication.k8s.io/v1/tokenreviews`:
/// a review, answered and not stored (201, as kube-apiserver answers a create).
async fn access_review(
    state: &AppState,
    user: &UserInfo,
    review: &crate::reviews::ReviewRequest,
    query: &Query,
    parts: &http::request::Parts,
    body: &RequestBody,
) -> Result<Response<Body>, ApiError> {
    state.authz.check(&review.attributes(user)).await?;
    let accept = parts
        .headers
        .get(header::ACCEPT)
        .and_then(|v| v.to_str().ok());
    use crate::reviews::proto;
    // client-go's typed client (kubectl auth can-i) sends protobuf and accepts JSON too; a
    // client that accepts only protobuf gets protobuf.
    let output = match negotiate::negotiate(accept, query) {
        Ok(o) => Some(output_for_write(o)),
        Err(_) if accept.is_some_and(|a| a.contains(proto::MEDIA_TYPE)) => None,
        Err(e) => return Err(e),
    };
    let bytes = read_body(state, parts, body).await?;
    let ct = content_type(parts);
    let token_review = review.kind == crate::reviews::TOKEN_REVIEWS;
    let obj = if proto::is_protobuf(ct) {
        if token_review {
            return Err(ApiError::unsupported_media_type(
                ct.unwrap_or_default(),
                &["application/json", "application/yaml"],
            ));
        }
        proto::decode(&review.kind, &bytes)?
    } else {
        crate::decode::object(negotiate::body_format(ct)?, &bytes)?
    };
    let answer = if token_review {
        crate::reviews::token::review(&state.auth, obj).await?
    } else {
        crate::reviews::review(&state.authz, user, review, obj).await?
    };
    Ok(match output {
        Some(output) => encode(output, 201, &answer),
        None => {
            let mut r = Response::new(full(proto::encode(&review.kind, &answer)));
            *r.status_mut() = StatusCode::CREATED;
            r.headers_mut().insert(
                header::CONTENT_TYPE,
                HeaderValue::from_static(proto::MEDIA_TYPE),
            );
            r
        }
    })
}

fn version() -> Value {
    json!({
        "major": "1",
        "minor": "33",
        "gitVersion": concat!("v1.33.0+substrate-", env!("CARGO_PKG_VERSION")),
        "gitCommit": "",
        "gitTreeState": "clean",
        "buildDate": "1970-01-01T00:00:00Z",
        "goVersion": "rust",
        "compiler": "rustc",
        "platform": concat!("linux/", "amd64"),
    })
}

fn non_resource(parts: &http::request::Parts, path: &str) -> Result<Response<Body>, ApiError> {
    if parts.method != Method::GET {
        return Err(ApiError::method_not_allowed(parts.method.as_str(), "GET"));
    }
    let accept = parts
        .headers
        .get(header::ACCEPT)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    let trimmed = path.trim_end_matches('/');
    let aggregated = discovery::negotiate_aggregated(accept);
    let doc = match (trimmed, aggregated) {
        ("/api", Some(ct)) => {
            return Ok(with_type(
                json_response(200, &discovery::aggregated_core()),
                ct,
            ));
        }
        ("/apis", Some(ct)) => {
            return Ok(with_type(
                json_response(200, &discovery::aggregated_apis()),
                ct,
            ));
        }
        ("/api", None) => discovery::api_versions(),
        ("/api/v1", _) => discovery::core_v1_resources(),
        ("/apis", None) => discovery::api_group_list(),
        ("/openapi/v2", _) => return openapi_v2(parts, accept),
        ("/openapi/v3", _) => openapi::v3_index(),
        _ => {
            let parts: Vec<&str> = trimmed.trim_start_matches('/').split('/').collect();
            match parts.as_slice() {
                ["apis", g] => discovery::api_group(g).ok_or_else(ApiError::path_not_found)?,
                ["apis", g, v] => {
                    discovery::api_resource_list(g, v).ok_or_else(ApiError::path_not_found)?
                }
                ["openapi", "v3", rest @ ..] => {
                    openapi::v3_document(&rest.join("/")).ok_or_else(ApiError::path_not_found)?
                }
                _ => return Err(ApiError::path_not_found()),
            }
        }
    };
    Ok(json_response(200, &doc))
}

/// `GET /openapi/v2`: JSON, or gnostic protobuf for client-go's `OpenAPISchema()`; `ETag`
/// is the hash of the bytes served and a matching `If-None-Match` gets a 304, as in
/// kube-openapi's handler. Anything else in `Accept` is a 406.
fn openapi_v2(parts: &http::request::Parts, accept: &str) -> Result<Response<Body>, ApiError> {
    use crate::openapi_proto;
    let protobuf = openapi_proto::wants_protobuf(accept).ok_or_else(|| {
        ApiError::not_acceptable(&["application/json", openapi_proto::MEDIA_TYPE])
    })?;
    let ((bytes, hash), content_type) = if protobuf {
        (
            openapi::v2_protobuf().map_err(ApiError::internal)?,
            openapi_proto::MEDIA_TYPE,
        )
    } else {
        (openapi::v2_json(), "application/json")
    };
    let mut r = Response::new(full(Bytes::from_static(bytes)));
    r.headers_mut()
        .insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    let etag = format!("\"{hash}\"");
    let matches = parts
        .headers
        .get_all(header::IF_NONE_MATCH)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .any(|t| {
            let t = t.trim();
            t == "*" || t.strip_prefix("W/").unwrap_or(t) == etag
        });
    if matches {
        r = Response::new(full(Bytes::new()));
        *r.status_mut() = StatusCode::NOT_MODIFIED;
    }
    if let Ok(v) = HeaderValue::from_str(&etag) {
        r.headers_mut().insert(header::ETAG, v);
    }
    r.headers_mut()
        .insert(header::VARY, HeaderValue::from_static("Accept"));
    Ok(r)
}

fn with_type(mut r: Response<Body>, ct: &'static str) -> Response<Body> {
    r.headers_mut()
        .insert(header::CONTENT_TYPE, HeaderValue::from_static(ct));
    r.headers_mut()
        .insert(header::VARY, HeaderValue::from_static("Accept"));
    r
}

/// Reads the request body (413 past the limit; a declared length over it is refused before
/// reading).
async fn read_body(
    state: &AppState,
    parts: &http::request::Parts,
    body: &RequestBody,
) -> Result<Bytes, ApiError> {
    if let Some(len) = parts
        .headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<usize>().ok())
        && len > state.max_body
    {
        return Err(ApiError::too_large(state.max_body));
    }
    body.read(state.max_body).await
}

fn content_type(parts: &http::request::Parts) -> Option<&str> {
    parts
        .headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
}

fn list_object(res: &ResourceInfo, items: Vec<Value>, rv: u64, cont: Option<String>) -> Value {
    let mut meta = json!({"resourceVersion": rv.to_string()});
    if let Some(c) = cont {
        meta["continue"] = json!(c);
    }
    let mut list =
        json!({"apiVersion": res.api_version(), "kind": res.list_kind, "metadata": meta});
    // Moved, not copied: `json!` would deep-clone every item.
    list["items"] = Value::Array(items);
    list
}

fn render_one(res: &ResourceInfo, output: Output, obj: &Value) -> Value {
    match output {
        Output::Table(include) => table::table(
            res,
            &[obj],
            include,
            json!({"resourceVersion": obj.pointer("/metadata/resourceVersion").cloned().unwrap_or(json!(""))}),
            true,
            jiff::Timestamp::now(),
        ),
        Output::PartialMetadata => table::partial_object_metadata(obj),
        Output::Json | Output::Yaml => obj.clone(),
    }
}

async fn resource(
    state: &AppState,
    user: &UserInfo,
    rr: ResourceRequest,
    query: &Query,
    parts: &http::request::Parts,
    req_body: &RequestBody,
) -> Result<Response<Body>, ApiError> {
    let res = rr.res;
    let ns = rr.namespace.as_deref();
    let name = rr.name.as_deref();
    // `request::parse` admits only `status` (kinds with status) and the actors' actions.
    let action = rr
        .subresource
        .as_deref()
        .is_some_and(|s| request::ACTIONS.contains(&s));
    let attrs = Attributes::resource(
        user,
        rr.verb.as_str(),
        res.group,
        res.version,
        res.plural,
        rr.subresource.as_deref(),
        crate::tenancy::authz_namespace(res, ns, name),
        name,
    );
    let filter = if res.kind_id == crds::resources::Kind::Atespace
        && matches!(rr.verb, Verb::List | Verb::Watch)
    {
        atespace_filter(state, &attrs, crate::tenancy::AtespaceFilter::atespaces).await?
    } else {
        state.authz.check(&attrs).await?;
        None
    };
    let accept = parts
        .headers
        .get(header::ACCEPT)
        .and_then(|v| v.to_str().ok())
        .map(str::to_string);
    let output = negotiate::negotiate(accept.as_deref(), query)?;
    let registry = &state.registry;
    if action {
        let (ns, name) = (ns.unwrap_or_default(), name.unwrap_or_default());
        return Ok(match rr.subresource.as_deref() {
            Some("resume") => match state.scheduler.resume(ns, name).await? {
                crate::scheduler::Resumed::Bound(a) => encode(output_for_write(output), 200, &a),
                crate::scheduler::Resumed::Waiting(a) => encode(output_for_write(output), 202, &a),
            },
            Some("reset") => encode(
                output_for_write(output),
                200,
                &state.scheduler.reset(ns, name).await?,
            ),
            _ => {
                let body = read_body(state, parts, req_body).await?;
                let options = crate::scheduler::SuspendOptions::decode(&body)?;
                encode(
                    output_for_write(output),
                    200,
                    &state.scheduler.suspend(ns, name, &options).await?,
                )
            }
        });
    }
    match rr.verb {
        Verb::Get => {
            let obj = registry.get(res, ns, name.unwrap_or_default()).await?;
            Ok(encode(output, 200, &render_one(res, output, &obj)))
        }
        Verb::List => {
            let opts = ListOptions::from_query(query)?;
            let mut out = registry.list(res, ns, &opts).await?;
            if let Some(f) = &filter {
                out.items = f.retain(std::mem::take(&mut out.items)).await;
            }
            let doc = match output {
                Output::Table(include) => {
                    let refs: Vec<&Value> = out.items.iter().collect();
                    let mut meta = json!({"resourceVersion": out.rv.to_string()});
                    if let Some(c) = &out.continue_token {
                        meta["continue"] = json!(c);
                    }
                    table::table(res, &refs, include, meta, true, jiff::Timestamp::now())
                }
                Output::PartialMetadata => {
                    let refs: Vec<&Value> = out.items.iter().collect();
                    let mut meta = json!({"resourceVersion": out.rv.to_string()});
                    if let Some(c) = &out.continue_token {
                        meta["continue"] = json!(c);
                    }
                    table::partial_object_metadata_list(&refs, meta)
                }
                _ => list_object(res, out.items, out.rv, out.continue_token),
            };
            Ok(encode(output, 200, &doc))
        }
        Verb::Watch => {
            let opts = ListOptions::from_query(query)?;
            let selectors = Selectors::parse(res, &opts)?;
            let body = watch::start(
                registry,
                watch::WatchRequest {
                    res,
                    namespace: rr.namespace.clone(),
                    name: rr.name.clone(),
                    selectors,
                    opts,
                    output,
                    view: watch::View::Native,
                    filter,
                },
            )
            .await?;
            Ok(watch_response(body))
        }
        Verb::Create => {
            let wo = with_manager(
                WriteOptions::from_query(query, "CreateOptions")?,
                &parts.headers,
            );
            let body = read_body(state, parts, req_body).await?;
            let obj = crate::decode::object_of(res, content_type(parts), &body)?;
            let Written { object, warnings } = registry.create(user, res, ns, obj, &wo).await?;
            let mut r = encode(output_for_write(output), 201, &object);
            add_warnings(&mut r, &warnings);
            Ok(r)
        }
        Verb::Update => {
            let wo = with_manager(
                WriteOptions::from_query(query, "UpdateOptions")?,
                &parts.headers,
            );
            let body = read_body(state, parts, req_body).await?;
            let obj = crate::decode::object_of(res, content_type(parts), &body)?;
            let Written { object, warnings } = registry
                .update(
                    user,
                    res,
                    ns,
                    name.unwrap_or_default(),
                    obj,
                    rr.subresource.as_deref(),
                    &wo,
                )
                .await?;
            let mut r = encode(output_for_write(output), 200, &object);
            add_warnings(&mut r, &warnings);
            Ok(r)
        }
        Verb::Patch => {
            let wo = WriteOptions::from_query(query, "PatchOptions")?;
            let body = read_body(state, parts, req_body).await?;
            let ptype = negotiate::patch_type(content_type(parts))?;
            if ptype == PatchType::Apply {
                return apply_patch(state, user, &rr, query, output, wo, &body).await;
            }
            if query.get("force").is_some() {
                return Err(patch_options_invalid(
                    "force",
                    "Forbidden",
                    "FieldValueForbidden",
                    "may not be specified for non-apply patch",
                ));
            }
            let wo = with_manager(wo, &parts.headers);
            let patch =
                crate::decode::patch_of(res, ptype, content_type(parts).unwrap_or(""), &body)?;
            let Written { object, warnings } = registry
                .patch(
                    user,
                    res,
                    ns,
                    name.unwrap_or_default(),
                    &patch,
                    rr.subresource.as_deref(),
                    &wo,
                )
                .await?;
            let mut r = encode(output_for_write(output), 200, &object);
            add_warnings(&mut r, &warnings);
            Ok(r)
        }
        Verb::Delete => {
            let body = read_body(state, parts, req_body).await?;
            let opts = DeleteOptions::parse(query, content_type(parts), &body)?;
            let obj = registry
                .delete(user, res, ns, name.unwrap_or_default(), &opts, opts.dry_run)
                .await?;
            Ok(encode(output_for_write(output), 200, &obj))
        }
        Verb::DeleteCollection => {
            let lo = ListOptions::from_query(query)?;
            let body = read_body(state, parts, req_body).await?;
            let opts = DeleteOptions::parse(query, content_type(parts), &body)?;
            let items = registry
                .delete_collection(user, res, ns, &lo, &opts, opts.dry_run)
                .await?;
            let rv = registry.current_rv(res).await?;
            Ok(encode(
                output_for_write(output),
                200,
                &list_object(res, items, rv, None),
            ))
        }
    }
}

/// Server-side apply (`application/apply-patch+yaml`, YAML or JSON): `fieldManager` is
/// required; 201 when the apply created the object.
#[allow(clippy::too_many_arguments)]
async fn apply_patch(
    state: &AppState,
    user: &UserInfo,
    rr: &ResourceRequest,
    query: &Query,
    output: Output,
    wo: WriteOptions,
    body: &[u8],
) -> Result<Response<Body>, ApiError> {
    let Some(manager) = wo.field_manager.clone() else {
        return Err(patch_options_invalid(
            "fieldManager",
            "Required value",
            "FieldValueRequired",
            "is required for apply patch",
        ));
    };
    let config = crate::decode::apply_config(body)?;
    let force = query.get("force").is_some_and(|v| v == "true" || v == "1");
    let (Written { object, warnings }, created) = state
        .registry
        .apply(
            user,
            rr.res,
            rr.namespace.as_deref(),
            rr.name.as_deref().unwrap_or_default(),
            config,
            rr.subresource.as_deref(),
            &manager,
            force,
            &wo,
        )
        .await?;
    let mut r = encode(
        output_for_write(output),
        if created { 201 } else { 200 },
        &object,
    );
    add_warnings(&mut r, &warnings);
    Ok(r)
}

/// A 422 about `PatchOptions`, worded as Kubernetes' `ValidatePatchOptions`.
fn patch_options_invalid(field: &str, kind: &str, reason: &str, detail: &str) -> ApiError {
    ApiError::options_invalid("PatchOptions", field, reason, &format!("{kind}: {detail}"))
}

/// Fills `fieldManager` from the User-Agent's product (`kubectl/v1.32.4 (...)` → `kubectl`)
/// when the client did not name one, as Kubernetes does for non-apply writes.
fn with_manager(mut wo: WriteOptions, headers: &http::HeaderMap) -> WriteOptions {
    if wo.field_manager.is_none() {
        let ua = headers
            .get(header::USER_AGENT)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("");
        let product = ua.split('/').next().unwrap_or("").trim();
        let product: String = product.chars().take(128).collect();
        wo.field_manager = Some(if product.is_empty() {
            "unknown".to_string()
        } else {
            product
        });
    }
    wo
}

fn output_for_write(o: Output) -> Output {
    match o {
        Output::Yaml => Output::Yaml,
        _ => Output::Json,
    }
}

/// Standalone: atespaces seen through the core `namespaces` resource, so kubectl's namespace
/// checks and messages behave as against Kubernetes.
async fn core_namespaces(
    state: &AppState,
    user: &UserInfo,
    name: Option<String>,
    verb: Verb,
    query: &Query,
) -> Result<Response<Body>, ApiError> {
    // As kube: a request about one namespace is in that namespace; the list and watch are
    // filtered for a user who may not list them all.
    let attrs = Attributes::resource(
        user,
        verb.as_str(),
        "",
        "v1",
        "namespaces",
        None,
        name.as_deref(),
        name.as_deref(),
    );
    let filter = if name.is_none() {
        atespace_filter(state, &attrs, crate::tenancy::AtespaceFilter::namespaces).await?
    } else {
        state.authz.check(&attrs).await?;
        None
    };
    match (verb, name) {
        (Verb::Get, Some(n)) => match state.registry.get(&ATESPACES, None, &n).await {
            Ok(a) => Ok(json_response(200, &as_namespace(&a))),
            Err(e) if e.code == 404 => Err(ApiError::not_found_raw("namespaces", &n)),
            Err(e) => Err(e),
        },
        (Verb::List, None) => {
            let out = state
                .registry
                .list(&ATESPACES, None, &ListOptions::from_query(query)?)
                .await?;
            let visible = match &filter {
                Some(f) => f.retain(out.items).await,
                None => out.items,
            };
            let items: Vec<Value> = visible.iter().map(as_namespace).collect();
            Ok(json_response(
                200,
                &json!({"apiVersion": "v1", "kind": "NamespaceList", "metadata": {"resourceVersion": out.rv.to_string()}, "items": items}),
            ))
        }
        (Verb::Watch, None) => {
            let opts = ListOptions::from_query(query)?;
            let selectors = Selectors::parse(&ATESPACES, &opts)?;
            let body = watch::start(
                &state.registry,
                watch::WatchRequest {
                    res: &ATESPACES,
                    namespace: None,
                    name: None,
                    selectors,
                    opts,
                    output: Output::Json,
                    view: watch::View::CoreNamespaces(as_namespace),
                    filter,
                },
            )
            .await?;
            Ok(watch_response(body))
        }
        // `parse` makes only get, list and watch of namespaces.
        (_, _) => Err(ApiError::method_not_allowed(verb.as_str(), "GET")),
    }
}

/// A list or watch of atespaces (or namespaces): everything for a user who may list them
/// all, else the filter of the ones they may get (never a 403: see [`crate::tenancy`]).
async fn atespace_filter(
    state: &AppState,
    attrs: &Attributes,
    filter: fn(&authz::Chain, &UserInfo) -> crate::tenancy::AtespaceFilter,
) -> Result<Option<crate::tenancy::AtespaceFilter>, ApiError> {
    match state.authz.authorize(attrs).await {
        Ok(a) if a.allowed() => Ok(None),
        Ok(_) => Ok(Some(filter(&state.authz, &attrs.user))),
        Err(e) => Err(authz::failed(attrs, &e)),
    }
}

/// A watch stream's response: newline-delimited JSON events, never cached.
fn watch_response(body: watch::WatchBody) -> Response<Body> {
    let mut r = Response::new(body.boxed_unsync());
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    r.headers_mut().insert(
        header::CACHE_CONTROL,
        HeaderValue::from_static("no-cache, private"),
    );
    r
}

fn as_namespace(a: &Value) -> Value {
    let name = a.pointer("/metadata/name").cloned().unwrap_or(Value::Null);
    let mut meta = json!({
        "name": name,
        "uid": a.pointer("/metadata/uid"),
        "resourceVersion": a.pointer("/metadata/resourceVersion"),
        "creationTimestamp": a.pointer("/metadata/creationTimestamp"),
        "labels": {"kubernetes.io/metadata.name": name},
    });
    if let Some(d) = a.pointer("/metadata/deletionTimestamp") {
        meta["deletionTimestamp"] = d.clone();
    }
    let phase = a
        .pointer("/status/phase")
        .cloned()
        .unwrap_or(json!("Active"));
    json!({"apiVersion": "v1", "kind": "Namespace", "metadata": meta, "spec": {"finalizers": ["kubernetes"]}, "status": {"phase": phase}})
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn field_manager_defaults_to_the_user_agent_product() {
        let mut h = http::HeaderMap::new();
        h.insert(
            header::USER_AGENT,
            HeaderValue::from_static("kubectl/v1.32.4 (linux/amd64) kubernetes/abc"),
        );
        let wo = with_manager(WriteOptions::default(), &h);
        assert_eq!(wo.field_manager.as_deref(), Some("kubectl"));
        let named = WriteOptions {
            field_manager: Some("kubectl-edit".into()),
            ..WriteOptions::default()
        };
        assert_eq!(
            with_manager(named, &h).field_manager.as_deref(),
            Some("kubectl-edit")
        );
        let wo = with_manager(WriteOptions::default(), &http::HeaderMap::new());
        assert_eq!(wo.field_manager.as_deref(), Some("unknown"));
    }

    #[test]
    fn patch_options_errors_read_like_kubernetes() {
        let e = patch_options_invalid(
            "fieldManager",
            "Required value",
            "FieldValueRequired",
            "is required for apply patch",
        );
        let s = e.to_status();
        assert_eq!(s["code"], 422);
        assert_eq!(
            s["message"],
            "PatchOptions.meta.k8s.io \"\" is invalid: fieldManager: Required value: is required for apply patch"
        );
        assert_eq!(s["details"]["kind"], "PatchOptions");
    }
}
