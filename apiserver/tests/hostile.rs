//! Hostile and malformed requests against the real apiserver, through real HTTP/1.1 and
//! HTTP/2 clients (hyper over rustls with the admin's client certificate, and curl): every
//! one must be answered with a Kubernetes `Status` (never a dropped connection or stream),
//! and a request whose options cannot be read must change nothing.

mod support;

use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::{HeaderMap, Method, Request, StatusCode, header};
use http_body_util::{BodyExt, Full, StreamBody};
use hyper::body::Frame;
use hyper_util::rt::{TokioExecutor, TokioIo};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use serde_json::{Value, json};
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;

use support::World;

const ACTORS: &str = "/apis/substrate.ate.dev/v1alpha1";
/// Any single request here answers well within this (a watch that waits for a
/// resourceVersion waits 3 s).
const REQUEST_TIMEOUT: Duration = Duration::from_secs(30);

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Proto {
    H1,
    H2,
}

/// A whole response.
#[derive(Debug)]
struct Reply {
    status: StatusCode,
    headers: HeaderMap,
    body: Bytes,
}

impl Reply {
    fn json(&self) -> Value {
        serde_json::from_slice(&self.body).unwrap_or_else(|e| {
            panic!(
                "{} answer is not JSON ({e}): {:?}",
                self.status,
                String::from_utf8_lossy(&self.body)
            )
        })
    }

    /// Asserts a `Status` with `code` and `reason`; returns it.
    #[track_caller]
    fn status(&self, code: u16, reason: &str) -> Value {
        let s = self.json();
        assert_eq!(
            (self.status.as_u16(), s["kind"].as_str(), s["code"].as_u64()),
            (code, Some("Status"), Some(u64::from(code))),
            "{s}"
        );
        assert_eq!(s["reason"], reason, "{s}");
        s
    }

    fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }
}

/// A request body: all at once (with Content-Length), or streamed in chunks (HTTP/1.1
/// chunked, no length).
enum Payload {
    Full(Bytes),
    Chunked(Bytes),
}

type BoxBody = http_body_util::combinators::BoxBody<Bytes, std::io::Error>;

impl Payload {
    fn empty() -> Self {
        Self::Full(Bytes::new())
    }
    fn json(v: &Value) -> Self {
        Self::Full(Bytes::from(serde_json::to_vec(v).expect("json")))
    }
    fn into_body(self) -> BoxBody {
        match self {
            Self::Full(b) => Full::new(b).map_err(|never| match never {}).boxed(),
            Self::Chunked(b) => {
                let chunks: Vec<Result<Frame<Bytes>, std::io::Error>> = b
                    .chunks(64 << 10)
                    .map(|c| Ok(Frame::data(Bytes::copy_from_slice(c))))
                    .collect();
                StreamBody::new(futures::stream::iter(chunks)).boxed()
            }
        }
    }
}

/// TLS client configuration as `user` (its certificate from the PKI directory), offering
/// only `proto` in ALPN.
fn tls(pki: &Path, user: Option<&str>, proto: Proto) -> rustls::ClientConfig {
    let mut roots = rustls::RootCertStore::empty();
    let ca = std::fs::read(pki.join("ca.crt")).expect("ca.crt");
    for c in CertificateDer::pem_slice_iter(&ca) {
        roots.add(c.expect("CA PEM")).expect("CA certificate");
    }
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let builder = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .expect("TLS versions")
        .with_root_certificates(roots);
    let mut cfg = match user {
        Some(u) => {
            let crt = std::fs::read(pki.join(format!("{u}.crt"))).expect("client cert");
            let key = std::fs::read(pki.join(format!("{u}.key"))).expect("client key");
            let chain: Vec<CertificateDer<'static>> = CertificateDer::pem_slice_iter(&crt)
                .collect::<Result<_, _>>()
                .expect("client cert PEM");
            let key = PrivateKeyDer::from_pem_slice(&key).expect("client key PEM");
            builder
                .with_client_auth_cert(chain, key)
                .expect("client auth")
        }
        None => builder.with_no_client_auth(),
    };
    cfg.alpn_protocols = vec![match proto {
        Proto::H1 => b"http/1.1".to_vec(),
        Proto::H2 => b"h2".to_vec(),
    }];
    cfg
}

/// One connection to the apiserver, HTTP/1.1 or HTTP/2, as one user (`None`: anonymous).
struct Conn {
    rt: tokio::runtime::Runtime,
    h1: Option<hyper::client::conn::http1::SendRequest<BoxBody>>,
    h2: Option<hyper::client::conn::http2::SendRequest<BoxBody>>,
    addr: SocketAddr,
}

impl Conn {
    fn open(w: &World, proto: Proto, user: Option<&str>) -> Self {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("client runtime");
        let connector = TlsConnector::from(Arc::new(tls(&w.pki_dir, user, proto)));
        let addr = w.addr;
        let (h1, h2) = rt.block_on(async {
            let tcp = TcpStream::connect(addr).await.expect("connect");
            let name = ServerName::IpAddress(addr.ip().into());
            let stream = connector.connect(name, tcp).await.expect("TLS handshake");
            match proto {
                Proto::H1 => {
                    let (s, c) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
                        .await
                        .expect("HTTP/1.1 handshake");
                    tokio::spawn(async move {
                        let _ = c.await;
                    });
                    (Some(s), None)
                }
                Proto::H2 => {
                    assert_eq!(
                        stream.get_ref().1.alpn_protocol(),
                        Some(&b"h2"[..]),
                        "the server negotiates HTTP/2"
                    );
                    let (s, c) = hyper::client::conn::http2::Builder::new(TokioExecutor::new())
                        .handshake(TokioIo::new(stream))
                        .await
                        .expect("HTTP/2 handshake");
                    tokio::spawn(async move {
                        let _ = c.await;
                    });
                    (None, Some(s))
                }
            }
        });
        Self { rt, h1, h2, addr }
    }

    /// Sends a request and reads the whole answer; `Err` when the connection or stream
    /// failed instead (what these tests check never happens).
    fn try_send(
        &mut self,
        method: &str,
        path: &str,
        headers: &[(&str, &str)],
        body: Payload,
    ) -> Result<Reply, String> {
        let mut b = Request::builder()
            .method(Method::from_bytes(method.as_bytes()).expect("method"))
            .header(header::ACCEPT, "application/json");
        b = if self.h1.is_some() {
            b.uri(path).header(header::HOST, self.addr.to_string())
        } else {
            b.uri(format!("https://{}{path}", self.addr))
        };
        for (k, v) in headers {
            b = b.header(*k, *v);
        }
        let req = b.body(body.into_body()).expect("request");
        let (h1, h2) = (&mut self.h1, &mut self.h2);
        self.rt.block_on(async {
            let fut = async {
                let resp = match (h1, h2) {
                    (Some(s), _) => {
                        s.ready().await.map_err(|e| format!("not ready: {e}"))?;
                        s.send_request(req).await
                    }
                    (_, Some(s)) => {
                        s.ready().await.map_err(|e| format!("not ready: {e}"))?;
                        s.send_request(req).await
                    }
                    _ => unreachable!(),
                }
                .map_err(|e| format!("request failed: {e:?}"))?;
                let (parts, body) = resp.into_parts();
                let body = body
                    .collect()
                    .await
                    .map_err(|e| format!("reading the {} answer failed: {e:?}", parts.status))?
                    .to_bytes();
                Ok(Reply {
                    status: parts.status,
                    headers: parts.headers,
                    body,
                })
            };
            tokio::time::timeout(REQUEST_TIMEOUT, fut)
                .await
                .unwrap_or_else(|_| Err(format!("no answer within {REQUEST_TIMEOUT:?}")))
        })
    }

    #[track_caller]
    fn send(&mut self, method: &str, path: &str, headers: &[(&str, &str)], body: Payload) -> Reply {
        self.try_send(method, path, headers, body)
            .unwrap_or_else(|e| panic!("{method} {}: {e}", truncate(path)))
    }

    #[track_caller]
    fn get(&mut self, path: &str) -> Reply {
        self.send("GET", path, &[], Payload::empty())
    }

    #[track_caller]
    fn post_json(&mut self, path: &str, v: &Value) -> Reply {
        self.send(
            "POST",
            path,
            &[("content-type", "application/json")],
            Payload::json(v),
        )
    }
}

fn truncate(s: &str) -> String {
    s.chars().take(120).collect()
}

fn start() -> World {
    World::start()
}

fn atespace(c: &mut Conn, name: &str) {
    let r = c.post_json(
        &format!("{ACTORS}/atespaces"),
        &json!({"apiVersion": "substrate.ate.dev/v1alpha1", "kind": "Atespace", "metadata": {"name": name}}),
    );
    assert_eq!(r.status, 201, "{}", String::from_utf8_lossy(&r.body));
}

fn actor(c: &mut Conn, ns: &str, name: &str) -> Value {
    let r = c.post_json(
        &format!("{ACTORS}/namespaces/{ns}/actors"),
        &json!({"apiVersion": "substrate.ate.dev/v1alpha1", "kind": "Actor",
                "metadata": {"name": name, "namespace": ns},
                "spec": {"template": {"name": "counter"}}}),
    );
    assert_eq!(r.status, 201, "{}", String::from_utf8_lossy(&r.body));
    r.json()
}

/// `namespace/name` of every actor.
fn actor_names(c: &mut Conn) -> Vec<String> {
    let r = c.get(&format!("{ACTORS}/actors"));
    assert_eq!(r.status, 200);
    let mut v: Vec<String> = r.json()["items"]
        .as_array()
        .expect("items")
        .iter()
        .map(|o| {
            format!(
                "{}/{}",
                o["metadata"]["namespace"].as_str().unwrap_or_default(),
                o["metadata"]["name"].as_str().unwrap_or_default()
            )
        })
        .collect();
    v.sort();
    v
}

#[test]
fn collection_writes_on_the_all_atespaces_path_are_405_and_change_nothing() {
    let w = start();
    let mut c = Conn::open(&w, Proto::H1, Some("admin"));
    atespace(&mut c, "team-a");
    atespace(&mut c, "team-b");
    actor(&mut c, "team-a", "a1");
    actor(&mut c, "team-b", "b1");
    let before = actor_names(&mut c);
    assert_eq!(before, ["team-a/a1", "team-b/b1"]);

    for path in [
        format!("{ACTORS}/actors"),
        format!("{ACTORS}/actors?dryRun=All"),
        format!("{ACTORS}/watch/actors"),
        "/apis/ate.dev/v1alpha1/actortemplates".to_string(),
        "/apis/ate.dev/v1alpha1/workerpools".to_string(),
    ] {
        for method in ["DELETE", "POST", "PUT", "PATCH"] {
            let r = c.send(
                method,
                &path,
                &[("content-type", "application/json")],
                Payload::json(&json!({})),
            );
            r.status(405, "MethodNotAllowed");
            assert_eq!(r.header("allow"), Some("GET"), "{method} {path}");
        }
    }
    assert_eq!(actor_names(&mut c), before, "nothing was deleted");

    // The namespaced collection still takes all of them.
    let r = c.send(
        "DELETE",
        &format!("{ACTORS}/namespaces/team-a/actors"),
        &[],
        Payload::empty(),
    );
    assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
    assert_eq!(actor_names(&mut c), ["team-b/b1"]);
}

#[test]
fn every_405_says_what_the_path_allows() {
    let w = start();
    let mut c = Conn::open(&w, Proto::H2, Some("admin"));
    atespace(&mut c, "team-a");
    actor(&mut c, "team-a", "x");
    let ns = format!("{ACTORS}/namespaces/team-a");
    for (method, path, allow) in [
        ("PUT", format!("{ns}/actors"), "GET, POST, DELETE"),
        ("PUT", format!("{ACTORS}/atespaces"), "GET, POST, DELETE"),
        ("POST", format!("{ns}/actors/x"), "GET, PUT, PATCH, DELETE"),
        ("DELETE", format!("{ns}/actors/x/status"), "GET, PUT, PATCH"),
        ("POST", format!("{ns}/actors/x/status"), "GET, PUT, PATCH"),
        ("GET", format!("{ns}/actors/x/resume"), "POST"),
        ("DELETE", format!("{ns}/actors/x/suspend"), "POST"),
        (
            "POST",
            format!("{ACTORS}/watch/namespaces/team-a/actors"),
            "GET",
        ),
        ("POST", "/apis".to_string(), "GET"),
        ("DELETE", "/openapi/v2".to_string(), "GET"),
        ("POST", "/api/v1/namespaces".to_string(), "GET"),
        ("DELETE", "/api/v1/namespaces/team-a".to_string(), "GET"),
    ] {
        let r = c.send(method, &path, &[], Payload::empty());
        r.status(405, "MethodNotAllowed");
        assert_eq!(r.header("allow"), Some(allow), "{method} {path}");
    }
    // The namespace survived the DELETE on its core path.
    assert_eq!(c.get(&format!("{ACTORS}/atespaces/team-a")).status, 200);
}

/// The actor as it is now (its resourceVersion says whether anything was written).
fn read_actor(c: &mut Conn, ns: &str, name: &str) -> Option<Value> {
    let r = c.get(&format!("{ACTORS}/namespaces/{ns}/actors/{name}"));
    match r.status.as_u16() {
        200 => Some(r.json()),
        404 => None,
        other => panic!("reading actor {ns}/{name}: {other}"),
    }
}

#[test]
fn delete_options_that_cannot_be_read_delete_nothing() {
    let w = start();
    let mut c = Conn::open(&w, Proto::H1, Some("admin"));
    atespace(&mut c, "team-a");
    let created = actor(&mut c, "team-a", "x");
    let item = format!("{ACTORS}/namespaces/team-a/actors/x");
    let collection = format!("{ACTORS}/namespaces/team-a/actors");
    let json_ct = [("content-type", "application/json")];

    // Bodies that are not DeleteOptions: 400.
    for body in [
        r#"{"dryRun":"All"}"#,
        "0",
        "[]",
        r#""All""#,
        "null",
        r#"{"preconditions":"x"}"#,
        r#"{"preconditions":{"uid":5}}"#,
        r#"{"gracePeriodSeconds":"soon"}"#,
        r#"{"kind":"Pod","apiVersion":"v1"}"#,
        "{not json",
    ] {
        for path in [&item, &collection] {
            let r = c.send(
                "DELETE",
                path,
                &json_ct,
                Payload::Full(Bytes::from(body.to_string())),
            );
            let s = r.status(400, "BadRequest");
            assert!(
                s["message"]
                    .as_str()
                    .is_some_and(|m| m.contains("DeleteOptions")),
                "{body}: {s}"
            );
        }
    }
    // Options Kubernetes refuses: 422 DeleteOptions, in the body or the query.
    for (query, body) in [
        ("", r#"{"dryRun":["Al"]}"#),
        ("", r#"{"dryRun":["All","Bogus"]}"#),
        ("", r#"{"propagationPolicy":"Sometimes"}"#),
        (
            "",
            r#"{"propagationPolicy":"Background","orphanDependents":true}"#,
        ),
        ("?dryRun=Al", ""),
        ("?dryRun=All&dryRun=Al", ""),
        ("?propagationPolicy=Sometimes", ""),
    ] {
        for path in [&item, &collection] {
            let r = c.send(
                "DELETE",
                &format!("{path}{query}"),
                &json_ct,
                Payload::Full(Bytes::from(body.to_string())),
            );
            let s = r.status(422, "Invalid");
            assert_eq!(s["details"]["kind"], "DeleteOptions", "{query} {body}: {s}");
        }
    }
    // A query value that is not an integer: 400.
    let r = c.send(
        "DELETE",
        &format!("{item}?gracePeriodSeconds=soon"),
        &[],
        Payload::empty(),
    );
    r.status(400, "BadRequest");
    // A body in a format the server does not read: 415.
    let r = c.send(
        "DELETE",
        &item,
        &[("content-type", "text/plain")],
        Payload::Full(Bytes::from_static(b"{}")),
    );
    r.status(415, "UnsupportedMediaType");

    let now = read_actor(&mut c, "team-a", "x").expect("the actor was not deleted");
    assert_eq!(
        now["metadata"]["resourceVersion"], created["metadata"]["resourceVersion"],
        "nothing was written"
    );

    // Well-formed options work: a dry run in the body deletes nothing, then a real delete.
    let r = c.send(
        "DELETE",
        &item,
        &json_ct,
        Payload::json(&json!({"kind": "DeleteOptions", "apiVersion": "v1", "dryRun": ["All"]})),
    );
    assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
    assert!(read_actor(&mut c, "team-a", "x").is_some());
    let r = c.send(
        "DELETE",
        &item,
        &[("content-type", "application/yaml")],
        Payload::Full(Bytes::from_static(
            b"kind: DeleteOptions\napiVersion: meta.k8s.io/v1\npropagationPolicy: Background\n",
        )),
    );
    assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
    assert!(read_actor(&mut c, "team-a", "x").is_none());
}

/// A body of `n` bytes of JSON-ish filler.
fn filler(n: usize) -> Bytes {
    let mut v = vec![b' '; n];
    v[0] = b'{';
    v[n - 1] = b'}';
    Bytes::from(v)
}

#[test]
fn errors_answered_before_the_body_is_read_reach_the_client() {
    let w = start();
    let mut admin = Conn::open(&w, Proto::H1, Some("admin"));
    atespace(&mut admin, "team-a");
    let coll = format!("{ACTORS}/namespaces/team-a/actors");
    for proto in [Proto::H1, Proto::H2] {
        for size in [20 << 10, 1 << 20, 3 << 20] {
            let cases: Vec<(Option<&str>, &str, String, u16, &str)> = vec![
                // The query is refused before the body is read.
                (
                    Some("admin"),
                    "POST",
                    format!("{coll}?fieldValidation=Loud"),
                    400,
                    "BadRequest",
                ),
                (
                    Some("admin"),
                    "POST",
                    format!("{coll}?dryRun=Maybe"),
                    422,
                    "Invalid",
                ),
                // Refused by path, method or authentication.
                (
                    Some("admin"),
                    "POST",
                    format!("{ACTORS}/nopes"),
                    404,
                    "NotFound",
                ),
                (Some("admin"), "PUT", coll.clone(), 405, "MethodNotAllowed"),
                (None, "POST", coll.clone(), 401, "Unauthorized"),
            ];
            for (user, method, path, code, reason) in cases {
                let mut c = Conn::open(&w, proto, user);
                for chunked in [false, true] {
                    let body = if chunked {
                        Payload::Chunked(filler(size))
                    } else {
                        Payload::Full(filler(size))
                    };
                    let r = c
                        .try_send(method, &path, &[("content-type", "application/json")], body)
                        .unwrap_or_else(|e| {
                            panic!("{proto:?} {method} {path} with {size} bytes (chunked: {chunked}): {e}")
                        });
                    r.status(code, reason);
                }
                // The connection is still usable.
                let r = c.get("/version");
                assert_eq!(r.status, 200, "{proto:?}: the connection survived");
            }
        }
    }
}

#[test]
fn bodies_over_the_limit_are_a_413_status() {
    let w = start();
    let mut admin = Conn::open(&w, Proto::H1, Some("admin"));
    atespace(&mut admin, "team-a");
    let coll = format!("{ACTORS}/namespaces/team-a/actors");
    for proto in [Proto::H1, Proto::H2] {
        for chunked in [false, true] {
            let mut c = Conn::open(&w, proto, Some("admin"));
            let body = filler(4 << 20);
            let body = if chunked {
                Payload::Chunked(body)
            } else {
                Payload::Full(body)
            };
            let r = c
                .try_send("POST", &coll, &[("content-type", "application/json")], body)
                .unwrap_or_else(|e| panic!("{proto:?} chunked={chunked}: {e}"));
            let s = r.status(413, "RequestEntityTooLarge");
            assert_eq!(s["message"], "Request entity too large: limit is 3145728");
        }
    }
}

/// `GET path` with curl over HTTP/1.1 or HTTP/2 (the `http` crate cannot build URIs over
/// 64 KiB); the status code and body, or `Err` when curl got no answer.
fn curl_get(w: &World, proto: Proto, path: &str) -> Result<(u16, String), String> {
    let out = std::process::Command::new("curl")
        .args([
            "-sS",
            "--max-time",
            "30",
            "-w",
            "\n%{http_code}",
            "--cacert",
        ])
        .arg(w.pki_dir.join("ca.crt"))
        .arg("--cert")
        .arg(w.pki_dir.join("admin.crt"))
        .arg("--key")
        .arg(w.pki_dir.join("admin.key"))
        .arg(match proto {
            Proto::H1 => "--http1.1",
            Proto::H2 => "--http2",
        })
        .arg(format!("{}{path}", w.base_url()))
        .output()
        .expect("running curl");
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    let (body, code) = stdout.rsplit_once('\n').unwrap_or(("", stdout.as_str()));
    match code.trim().parse::<u16>() {
        Ok(c) if c > 0 => Ok((c, body.to_string())),
        _ => Err(format!(
            "no answer: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        )),
    }
}

#[test]
fn long_uris_are_answered() {
    let w = start();
    // Long but under the limit (64 KiB): served over both protocols. Over HTTP/2 this was a
    // bare 431 or a dropped connection (h2's 16 KiB default header list limit).
    let long = format!(
        "{ACTORS}/actors?fieldSelector=metadata.name%3D{}",
        "c".repeat(60 << 10)
    );
    for proto in [Proto::H1, Proto::H2] {
        let mut c = Conn::open(&w, proto, Some("admin"));
        let r = c.get(&long);
        assert_eq!(
            (r.status.as_u16(), r.json()["kind"].as_str()),
            (200, Some("ActorList")),
            "{proto:?}"
        );
        assert_eq!(
            c.get("/version").status,
            200,
            "{proto:?}: the connection survived"
        );
    }
    // Over the limit, HTTP/1.1: hyper's parser answers 414 itself (no Status body). The
    // same URI over HTTP/2 is answered with a 414 Status by the apiserver, but neither
    // hyper's client (the `http` crate caps URIs at 64 KiB) nor curl's nghttp2 (64 KiB of
    // headers) can send it.
    let over = format!("{ACTORS}/actors?labelSelector={}", "a".repeat(100 << 10));
    let (code, _) = curl_get(&w, Proto::H1, &over).expect("HTTP/1.1");
    assert_eq!(code, 414);
}

#[test]
fn a_watch_from_a_future_resource_version_is_a_504_too_large() {
    let w = start();
    let mut c = Conn::open(&w, Proto::H2, Some("admin"));
    atespace(&mut c, "team-a");
    actor(&mut c, "team-a", "x");
    let r = c.get(&format!("{ACTORS}/actors"));
    let current: u64 = r.json()["metadata"]["resourceVersion"]
        .as_str()
        .and_then(|s| s.parse().ok())
        .expect("list resourceVersion");
    let future = current + 1000;
    for query in [
        format!("watch=1&resourceVersion={future}"),
        format!(
            "watch=1&resourceVersion={future}&sendInitialEvents=true&resourceVersionMatch=NotOlderThan&allowWatchBookmarks=true"
        ),
    ] {
        let r = c.get(&format!("{ACTORS}/namespaces/team-a/actors?{query}"));
        let s = r.status(504, "Timeout");
        assert_eq!(
            s["message"],
            format!("Timeout: Too large resource version: {future}, current: {current}")
        );
        assert_eq!(
            s["details"]["causes"][0]["reason"], "ResourceVersionTooLarge",
            "{s}"
        );
        assert_eq!(s["details"]["retryAfterSeconds"], 1);
        assert_eq!(r.header("retry-after"), Some("1"));
    }
    // The current resourceVersion is fine: a watch that ends by its timeout.
    let r = c.get(&format!(
        "{ACTORS}/namespaces/team-a/actors?watch=1&resourceVersion={current}&timeoutSeconds=1"
    ));
    assert_eq!(r.status, 200);
}

#[test]
fn a_negative_watch_timeout_ends_the_watch_at_once() {
    let w = start();
    let mut c = Conn::open(&w, Proto::H1, Some("admin"));
    atespace(&mut c, "team-a");
    actor(&mut c, "team-a", "x");
    for t in ["-1", "-9223372036854775808"] {
        let r = c.get(&format!(
            "{ACTORS}/namespaces/team-a/actors?watch=true&timeoutSeconds={t}"
        ));
        assert_eq!(r.status, 200);
        assert!(r.body.is_empty(), "{:?}", String::from_utf8_lossy(&r.body));
    }
    let r = c.get(&format!("{ACTORS}/actors?watch=true&timeoutSeconds=soon"));
    r.status(400, "BadRequest");
}

#[test]
fn watch_is_read_as_kubernetes_reads_it() {
    let w = start();
    let mut c = Conn::open(&w, Proto::H2, Some("admin"));
    atespace(&mut c, "team-a");
    actor(&mut c, "team-a", "x");
    let coll = format!("{ACTORS}/namespaces/team-a/actors");
    // Every value but 0/false (any case) is true, the empty one included.
    for v in ["2", "true", "True", "yes", "", "t"] {
        let r = c.get(&format!("{coll}?watch={v}&timeoutSeconds=1"));
        assert_eq!(r.status, 200, "watch={v}");
        let first = r.body.split(|b| *b == b'\n').next().unwrap_or_default();
        let ev: Value = serde_json::from_slice(first).expect("a watch event");
        assert_eq!(
            (
                ev["type"].as_str(),
                ev["object"]["metadata"]["name"].as_str()
            ),
            (Some("ADDED"), Some("x")),
            "watch={v} streams"
        );
    }
    for v in ["0", "false", "FALSE", "False"] {
        let r = c.get(&format!("{coll}?watch={v}"));
        assert_eq!(r.json()["kind"], "ActorList", "watch={v} lists");
    }
}

#[test]
fn a_watch_parameter_on_one_object_or_its_status_does_not_stream() {
    let w = start();
    let mut c = Conn::open(&w, Proto::H1, Some("admin"));
    atespace(&mut c, "team-a");
    actor(&mut c, "team-a", "x");
    let item = format!("{ACTORS}/namespaces/team-a/actors/x");
    // As in Kubernetes, `?watch` only turns a collection GET into a watch: these are gets.
    for path in [
        format!("{item}/status?watch=1"),
        format!("{item}/status?watch=true&resourceVersion=0"),
        format!("{item}?watch=1"),
    ] {
        let r = c.get(&path);
        assert_eq!(r.status, 200, "{path}");
        assert_eq!(
            r.json()["kind"],
            "Actor",
            "{path}: one object, not a stream"
        );
    }
    // The legacy watch path has no subresources.
    let r = c.get(&format!("{ACTORS}/watch/namespaces/team-a/actors/x/status"));
    r.status(404, "NotFound");
    // ... but watches one object.
    let r = c.get(&format!(
        "{ACTORS}/watch/namespaces/team-a/actors/x?timeoutSeconds=1"
    ));
    assert_eq!(r.status, 200);
    let ev: Value =
        serde_json::from_slice(r.body.split(|b| *b == b'\n').next().unwrap_or_default())
            .expect("a watch event");
    assert_eq!(ev["type"], "ADDED");
}

#[test]
fn namespaces_are_watched_as_kubernetes_watches_them() {
    // Found by Schemathesis: `GET /api/v1/namespaces?watch=<not 0/false>` answered 405,
    // while Kubernetes reads any such value as true and streams namespace events.
    let w = start();
    let mut c = Conn::open(&w, Proto::H1, Some("admin"));
    atespace(&mut c, "team-a");
    for q in [
        "watch=1&timeoutSeconds=1",
        "watch=%C2%B0%C2%8D%17&watch=false&=&timeoutSeconds=1",
        "watch=true&allowWatchBookmarks=true&sendInitialEvents=true&resourceVersionMatch=NotOlderThan&timeoutSeconds=1",
    ] {
        let r = c.get(&format!("/api/v1/namespaces?{q}"));
        assert_eq!(r.status, 200, "{q}: {}", String::from_utf8_lossy(&r.body));
        let events: Vec<Value> = r
            .body
            .split(|b| *b == b'\n')
            .filter(|l| !l.is_empty())
            .map(|l| serde_json::from_slice(l).expect("a watch event"))
            .collect();
        let added: Vec<(&str, &str)> = events
            .iter()
            .filter(|e| e["type"] == "ADDED")
            .map(|e| {
                (
                    e["object"]["kind"].as_str().unwrap_or_default(),
                    e["object"]["metadata"]["name"].as_str().unwrap_or_default(),
                )
            })
            .collect();
        assert!(added.contains(&("Namespace", "team-a")), "{q}: {added:?}");
        assert!(
            events.iter().all(|e| e["object"]["apiVersion"] == "v1"),
            "{q}: every event is a core v1 object: {events:?}"
        );
        if q.contains("sendInitialEvents") {
            let last = events.last().expect("events");
            assert_eq!(last["type"], "BOOKMARK", "{q}");
            assert_eq!(last["object"]["kind"], "Namespace", "{q}");
        }
    }
    // A deletion is seen by a watch from the current resourceVersion.
    let list = c.get("/api/v1/namespaces").json();
    let rv = list["metadata"]["resourceVersion"]
        .as_str()
        .expect("a list resourceVersion")
        .to_string();
    let r = c.send(
        "DELETE",
        &format!("{ACTORS}/atespaces/team-a"),
        &[],
        Payload::empty(),
    );
    assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
    let r = c.get(&format!(
        "/api/v1/namespaces?watch=1&resourceVersion={rv}&timeoutSeconds=1"
    ));
    let first: Value =
        serde_json::from_slice(r.body.split(|b| *b == b'\n').next().unwrap_or_default())
            .expect("a watch event");
    assert_eq!(first["object"]["kind"], "Namespace", "{first}");
    assert_eq!(first["object"]["metadata"]["name"], "team-a", "{first}");
    assert!(
        first["object"]["metadata"]["deletionTimestamp"].is_string() || first["type"] == "DELETED",
        "{first}"
    );
    // Namespaces stay read-only.
    let r = c.post_json("/api/v1/namespaces", &json!({"metadata": {"name": "x"}}));
    r.status(405, "MethodNotAllowed");
}
