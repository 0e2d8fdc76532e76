//! A real Valkey + apiserver in-process, fake workers, a fake node agent (the test plays its
//! part through the status subresource), a local upstream HTTP server standing in for the
//! actors, and small HTTP/DNS clients.
#![allow(dead_code)]

use std::collections::HashSet;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use bytes::Bytes;
use futures::StreamExt;
use http::{HeaderMap, Request, Response, StatusCode};
use http_body_util::{BodyExt, Full, StreamBody};
use hyper::body::{Frame, Incoming};
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use kube::api::{Api, Patch, PatchParams, PostParams};
use kube::runtime::{WatchStreamExt, watcher};
use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;

use crds::substrate::{Actor, ActorPhase, Worker};

pub const SUFFIX: &str = "actors.resources.substrate.ate.dev";
pub const ATESPACE: &str = "team-a";

pub fn host(actor: &str) -> String {
    format!("{actor}.{ATESPACE}.{SUFFIX}")
}

pub struct World {
    pub client: kube::Client,
    pub apiserver: Option<apiserver::Running>,
    pub valkey: apiserver::testing::ValkeyServer,
    pub kubeconfig: std::path::PathBuf,
    pub upstream: SocketAddr,
    /// A port nothing listens on.
    pub dead_port: u16,
    /// Restores the fake node agent did.
    pub restores: Arc<AtomicUsize>,
    _dir: tempfile::TempDir,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl Drop for World {
    fn drop(&mut self) {
        for t in &self.tasks {
            t.abort();
        }
    }
}

fn now() -> String {
    jiff::Timestamp::now()
        .strftime("%Y-%m-%dT%H:%M:%SZ")
        .to_string()
}

/// Pools: `p` (4 workers on 127.0.0.1, the fake agent restores its actors), `stuck` (1
/// worker, never restored), `empty` (no workers), `failing` (1 worker, restores fail).
/// Templates in `team-a`: `t` (port = the upstream server), `dead` (a port with no listener,
/// pool `p`), `stuck`, `none` (pool `empty`), `broken` (pool `failing`).
pub async fn world() -> World {
    world_with_tokens(None).await
}

/// [`world`] with an apiserver that authenticates the static `tokens` (a
/// `--token-auth-file`'s CSV).
pub async fn world_with_tokens(tokens: Option<&str>) -> World {
    let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
    let valkey = apiserver::testing::ValkeyServer::start();
    let dir = tempfile::tempdir().expect("tempdir");
    let (mut args, kubeconfig) = apiserver::testing::apiserver_args(&valkey, dir.path());
    if let Some(t) = tokens {
        let file = dir.path().join("tokens.csv");
        std::fs::write(&file, t).expect("writing the token file");
        args.token_auth_file = Some(file);
    }
    let running = apiserver::start(&args).await.expect("apiserver starts");
    let kc = kube::config::Kubeconfig::read_from(&kubeconfig).expect("kubeconfig");
    let config = kube::Config::from_custom_kubeconfig(kc, &Default::default())
        .await
        .expect("config");
    let client = kube::Client::try_from(config).expect("client");

    let upstream = start_upstream().await;
    let dead_port = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().port()
    };

    create(
        &client,
        "/apis/substrate.ate.dev/v1alpha1/atespaces",
        json!({"apiVersion": "substrate.ate.dev/v1alpha1", "kind": "Atespace",
               "metadata": {"name": ATESPACE}, "spec": {}}),
    )
    .await;
    for (name, pool, port) in [
        ("t", "p", upstream.port()),
        ("dead", "p", dead_port),
        ("stuck", "stuck", upstream.port()),
        ("none", "empty", upstream.port()),
        ("broken", "failing", upstream.port()),
    ] {
        create(
            &client,
            &format!("/apis/ate.dev/v1alpha1/namespaces/{ATESPACE}/actortemplates"),
            json!({"apiVersion": "ate.dev/v1alpha1", "kind": "ActorTemplate",
                   "metadata": {"name": name},
                   "spec": {"containers": [{"name": "main", "image": "127.0.0.1:5000/x:1",
                                            "ports": [{"containerPort": port}]}],
                            "workerPoolRef": {"name": pool}}}),
        )
        .await;
    }
    let mut workers = vec![];
    for (name, pool) in [
        ("w0", "p"),
        ("w1", "p"),
        ("w2", "p"),
        ("w3", "p"),
        ("s0", "stuck"),
        ("f0", "failing"),
    ] {
        create(
            &client,
            "/apis/substrate.ate.dev/v1alpha1/workers",
            json!({"apiVersion": "substrate.ate.dev/v1alpha1", "kind": "Worker",
                   "metadata": {"name": name},
                   "spec": {"pool": pool, "node": "n1", "address": "127.0.0.1"}}),
        )
        .await;
        workers.push(name);
    }
    let wapi: Api<Worker> = Api::all(client.clone());
    for w in &workers {
        wapi.patch_status(
            w,
            &PatchParams::default(),
            &Patch::Merge(json!({"status": {"phase": "Free", "lastHeartbeatTime": now()}})),
        )
        .await
        .expect("worker free");
    }
    let hb = {
        let wapi = wapi.clone();
        tokio::spawn(async move {
            loop {
                tokio::time::sleep(Duration::from_secs(5)).await;
                for w in &workers {
                    let _ = wapi
                        .patch_status(
                            w,
                            &PatchParams::default(),
                            &Patch::Merge(json!({"status": {"lastHeartbeatTime": now()}})),
                        )
                        .await;
                }
            }
        })
    };
    let restores = Arc::new(AtomicUsize::new(0));
    let agent = tokio::spawn(fake_agent(client.clone(), restores.clone()));
    World {
        client,
        apiserver: Some(running),
        valkey,
        kubeconfig,
        upstream,
        dead_port,
        restores,
        _dir: dir,
        tasks: vec![hb, agent],
    }
}

pub async fn create(client: &kube::Client, path: &str, body: Value) {
    let req = Request::post(path)
        .header("content-type", "application/json")
        .body(serde_json::to_vec(&body).unwrap())
        .unwrap();
    let _: Value = client.request(req).await.expect("create");
}

/// Plays the node agent: an actor bound to a worker of pool `p` (phase `Resuming`) is
/// "restored" (counted) and, after a short delay, set `Running` with `Ready=True`.
async fn fake_agent(client: kube::Client, restores: Arc<AtomicUsize>) {
    let api: Api<Actor> = Api::all(client.clone());
    let mut seen: HashSet<(String, String)> = HashSet::new();
    let mut events = std::pin::pin!(
        watcher(api, Default::default())
            .default_backoff()
            .applied_objects()
    );
    while let Some(ev) = events.next().await {
        let Ok(a) = ev else { continue };
        let key = (
            a.metadata.namespace.clone().unwrap_or_default(),
            a.metadata.name.clone().unwrap_or_default(),
        );
        let st = a.status.clone().unwrap_or_default();
        match st.phase {
            Some(ActorPhase::Resuming)
                if st.worker.as_ref().and_then(|w| w.pool.as_deref()) == Some("p") =>
            {
                if !seen.insert(key.clone()) {
                    continue;
                }
                restores.fetch_add(1, Ordering::SeqCst);
                let api: Api<Actor> = Api::namespaced(client.clone(), &key.0);
                tokio::spawn(async move {
                    tokio::time::sleep(Duration::from_millis(300)).await;
                    let t = now();
                    let patch = json!({"status": {
                    "phase": "Running",
                    "lastActiveTime": "2020-01-01T00:00:00Z",
                    "conditions": [
                        {"type": "Ready", "status": "True", "reason": "Running", "message": "restored", "lastTransitionTime": t},
                        {"type": "Scheduled", "status": "True", "reason": "Bound", "message": "bound", "lastTransitionTime": t},
                    ]}});
                    api.patch_status(&key.1, &PatchParams::default(), &Patch::Merge(patch))
                        .await
                        .expect("fake agent: running");
                });
            }
            Some(ActorPhase::Resuming)
                if st.worker.as_ref().and_then(|w| w.pool.as_deref()) == Some("failing") =>
            {
                let worker = st.worker.clone().unwrap_or_default().name;
                let api: Api<Actor> = Api::namespaced(client.clone(), &key.0);
                let wapi: Api<Worker> = Api::all(client.clone());
                tokio::spawn(async move {
                    // As the node agent does: free the worker, then report the failure.
                    let _ = wapi
                        .patch_status(
                            &worker,
                            &PatchParams::default(),
                            &Patch::Merge(json!({"status": {"phase": "Free", "actor": null}})),
                        )
                        .await;
                    let t = now();
                    let patch = json!({"status": {
                    "phase": "Failed", "worker": null,
                    "conditions": [
                        {"type": "Ready", "status": "False", "reason": "RestoreFailed",
                         "message": "pulling image 127.0.0.1:5000/x:1: manifest unknown", "lastTransitionTime": t},
                    ]}});
                    api.patch_status(&key.1, &PatchParams::default(), &Patch::Merge(patch))
                        .await
                        .expect("fake agent: failed");
                });
            }
            Some(ActorPhase::Suspended) | None => {
                seen.remove(&key);
            }
            _ => {}
        }
    }
}

impl World {
    pub async fn actor(&self, name: &str, template: &str, activation: &str) {
        let api: Api<Actor> = Api::namespaced(self.client.clone(), ATESPACE);
        let a: Actor = serde_json::from_value(json!({
            "apiVersion": "substrate.ate.dev/v1alpha1", "kind": "Actor",
            "metadata": {"name": name},
            "spec": {"template": {"name": template}, "activation": activation},
        }))
        .unwrap();
        api.create(&PostParams::default(), &a)
            .await
            .expect("create actor");
    }

    pub async fn get_actor(&self, name: &str) -> Actor {
        Api::<Actor>::namespaced(self.client.clone(), ATESPACE)
            .get(name)
            .await
            .expect("get actor")
    }

    /// Starts an in-process router (DNS on a free port).
    pub async fn router(&self, wake_timeout: Duration) -> router::Running {
        self.router_via(self.client.clone(), wake_timeout).await
    }

    /// A client of this apiserver whose every answer (watch events too) arrives `delay` late:
    /// a TCP relay holds each chunk from the apiserver that long (TLS passes through).
    pub async fn slow_client(&self, delay: Duration) -> kube::Client {
        let kc = kube::config::Kubeconfig::read_from(&self.kubeconfig).expect("kubeconfig");
        let mut config = kube::Config::from_custom_kubeconfig(kc, &Default::default())
            .await
            .expect("config");
        let target = format!(
            "{}:{}",
            config.cluster_url.host().expect("apiserver host"),
            config.cluster_url.port_u16().expect("apiserver port")
        );
        let relay = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = relay.local_addr().unwrap().port();
        tokio::spawn(async move {
            while let Ok((down, _)) = relay.accept().await {
                let Ok(up) = tokio::net::TcpStream::connect(&target).await else {
                    continue;
                };
                let (mut down_r, mut down_w) = down.into_split();
                let (mut up_r, mut up_w) = up.into_split();
                tokio::spawn(async move {
                    let _ = tokio::io::copy(&mut down_r, &mut up_w).await;
                    let _ = up_w.shutdown().await;
                });
                // Chunks keep their order; each is written `delay` after it was read.
                let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<(Instant, Vec<u8>)>();
                tokio::spawn(async move {
                    let mut buf = vec![0u8; 64 << 10];
                    while let Ok(n @ 1..) = up_r.read(&mut buf).await {
                        if tx
                            .send((Instant::now() + delay, buf[..n].to_vec()))
                            .is_err()
                        {
                            return;
                        }
                    }
                });
                tokio::spawn(async move {
                    while let Some((due, chunk)) = rx.recv().await {
                        tokio::time::sleep_until(due.into()).await;
                        if down_w.write_all(&chunk).await.is_err() {
                            return;
                        }
                    }
                    let _ = down_w.shutdown().await;
                });
            }
        });
        config.cluster_url = format!("https://127.0.0.1:{port}").parse().unwrap();
        kube::Client::try_from(config).expect("client")
    }

    /// Starts an in-process router whose apiserver answers (watch events too) arrive `delay`
    /// late ([`World::slow_client`]): its table cannot know an actor created just before.
    pub async fn lagging_router(&self, delay: Duration, wake_timeout: Duration) -> router::Running {
        let slow = self.slow_client(delay).await;
        self.router_via(slow, wake_timeout).await
    }

    /// Starts an in-process router that talks to the apiserver through `client`.
    pub async fn router_via(
        &self,
        client: kube::Client,
        wake_timeout: Duration,
    ) -> router::Running {
        self.router_with(client, wake_timeout, 2).await
    }

    /// Starts an in-process router with `threads` proxy threads.
    pub async fn router_with(
        &self,
        client: kube::Client,
        wake_timeout: Duration,
        threads: usize,
    ) -> router::Running {
        let config = router::Config {
            listen: "127.0.0.1:0".parse().unwrap(),
            admin_listen: "127.0.0.1:0".parse().unwrap(),
            dns_listen: Some("127.0.0.1:0".parse().unwrap()),
            dns_addresses: vec!["127.0.0.1".parse().unwrap(), "::1".parse().unwrap()],
            suffix: router::host::Suffix::default(),
            wake_timeout,
            activity_interval: Duration::from_secs(1),
            default_idle_timeout: router::DEFAULT_IDLE_TIMEOUT,
            connect_timeout: Duration::from_secs(2),
            threads,
            ..router::Config::default()
        };
        let r = router::start(config, client).await.expect("router starts");
        let admin = r.admin_addr;
        eventually("the router is ready", || async move {
            let (s, _, _) = send(admin, get("/readyz", "admin")).await.ok()?;
            (s == 200).then_some(())
        })
        .await;
        r
    }
}

pub async fn eventually<T, F: std::future::Future<Output = Option<T>>>(
    what: &str,
    mut f: impl FnMut() -> F,
) -> T {
    let start = Instant::now();
    loop {
        if let Some(v) = f().await {
            return v;
        }
        assert!(
            start.elapsed() < Duration::from_secs(30),
            "timed out waiting for: {what}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

pub fn get(path: &str, host: &str) -> Request<Full<Bytes>> {
    Request::get(path)
        .header("host", host)
        .body(Full::new(Bytes::new()))
        .unwrap()
}

/// One HTTP/1.1 request on a fresh connection; the response body as text.
pub async fn send(
    addr: SocketAddr,
    req: Request<Full<Bytes>>,
) -> Result<(StatusCode, HeaderMap, String), hyper::Error> {
    let stream = tokio::net::TcpStream::connect(addr).await.expect("connect");
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream)).await?;
    tokio::spawn(conn);
    let resp = sender.send_request(req).await?;
    let (parts, body) = resp.into_parts();
    let body = body.collect().await?.to_bytes();
    Ok((
        parts.status,
        parts.headers,
        String::from_utf8_lossy(&body).into_owned(),
    ))
}

pub async fn metric(admin: SocketAddr, name: &str) -> f64 {
    let (_, _, text) = send(admin, get("/metrics", "admin")).await.unwrap();
    text.lines()
        .filter(|l| l.starts_with(name))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

// ---- the upstream server standing in for actors ----

type UpBody = http_body_util::combinators::BoxBody<Bytes, std::io::Error>;

fn full(s: impl Into<Bytes>) -> UpBody {
    Full::new(s.into())
        .map_err(|never: std::convert::Infallible| match never {})
        .boxed()
}

/// Routes: `/echo` (JSON of what it saw), `POST /upload` (counts the body), `/download?n=N`
/// (streams N bytes), an `Upgrade` request (101, then echoes bytes), else `hello from <host>`.
async fn upstream(mut req: Request<Incoming>) -> Result<Response<UpBody>, hyper::Error> {
    let host = req
        .headers()
        .get("host")
        .and_then(|h| h.to_str().ok())
        .unwrap_or_default()
        .to_string();
    if req.headers().contains_key("upgrade") {
        let on = hyper::upgrade::on(&mut req);
        tokio::spawn(async move {
            if let Ok(up) = on.await {
                let mut io = TokioIo::new(up);
                let mut buf = [0u8; 4096];
                loop {
                    match io.read(&mut buf).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => {
                            if io.write_all(&buf[..n]).await.is_err() {
                                return;
                            }
                        }
                    }
                }
            }
        });
        // What the handshake looked like from here, for the tests.
        let key = req
            .headers()
            .get("sec-websocket-key")
            .cloned()
            .unwrap_or(http::HeaderValue::from_static(""));
        return Ok(Response::builder()
            .status(101)
            .header("connection", "upgrade")
            .header("upgrade", "websocket")
            .header("sec-websocket-accept", "computed-by-the-actor")
            .header("x-seen-method", req.method().as_str())
            .header("x-seen-key", key)
            .body(full(""))
            .unwrap());
    }
    let path = req.uri().path().to_string();
    match path.as_str() {
        "/echo" => {
            let headers: serde_json::Map<String, Value> = req
                .headers()
                .iter()
                .map(|(k, v)| (k.to_string(), json!(v.to_str().unwrap_or("?"))))
                .collect();
            let body = json!({"method": req.method().as_str(), "version": format!("{:?}", req.version()),
                              "path": req.uri().to_string(), "headers": headers});
            Ok(Response::new(full(body.to_string())))
        }
        "/upload" => {
            let mut body = req.into_body();
            let mut n: u64 = 0;
            while let Some(f) = body.frame().await {
                if let Ok(d) = f?.into_data() {
                    n += d.len() as u64;
                }
            }
            Ok(Response::new(full(n.to_string())))
        }
        "/download" => {
            let n: u64 = req
                .uri()
                .query()
                .and_then(|q| q.strip_prefix("n="))
                .and_then(|n| n.parse().ok())
                .unwrap_or(0);
            let chunk = Bytes::from(vec![b'x'; 64 * 1024]);
            let stream = futures::stream::unfold(n, move |left| {
                let chunk = chunk.clone();
                async move {
                    if left == 0 {
                        return None;
                    }
                    let take = left.min(chunk.len() as u64);
                    Some((
                        Ok::<_, std::io::Error>(Frame::data(chunk.slice(..take as usize))),
                        left - take,
                    ))
                }
            });
            Ok(Response::new(BodyExt::boxed(StreamBody::new(stream))))
        }
        _ => Ok(Response::new(full(format!("hello from {host}")))),
    }
}

async fn start_upstream() -> SocketAddr {
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    tokio::spawn(async move {
        loop {
            let Ok((s, _)) = l.accept().await else {
                continue;
            };
            tokio::spawn(async move {
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(s), service_fn(upstream))
                    .with_upgrades()
                    .await;
            });
        }
    });
    addr
}

/// Used by tests that stream: a request body of `n` bytes made on the fly.
pub fn streaming_body(
    n: u64,
) -> StreamBody<impl futures::Stream<Item = Result<Frame<Bytes>, std::io::Error>>> {
    let chunk = Bytes::from(vec![b'u'; 64 * 1024]);
    StreamBody::new(futures::stream::unfold(n, move |left| {
        let chunk = chunk.clone();
        async move {
            if left == 0 {
                return None;
            }
            let take = left.min(chunk.len() as u64);
            Some((Ok(Frame::data(chunk.slice(..take as usize))), left - take))
        }
    }))
}

pub fn executor() -> TokioExecutor {
    TokioExecutor::new()
}
