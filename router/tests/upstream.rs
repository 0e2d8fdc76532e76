//! The router's upstream pool against a bare HTTP/1.1 actor on raw TCP (so the actor can
//! drop a connection without answering, or hold a response open), through the real router
//! and a real apiserver + Valkey (the node agent's part played by the test, see `support`):
//! a request whose pooled connection fails before any answer is sent again once when that is
//! safe, and pooled connections never outlive the binding they were opened for.

mod support;

use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use http::Request;
use http_body_util::{BodyExt, Full};
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::Notify;

use support::{ATESPACE, World, eventually, get, host, metric, send, world};

const WAKE: Duration = Duration::from_secs(20);

/// Longer than the router's `REPLAY_AFTER_IDLE`: a connection idle this long is one the
/// actor may have closed.
const IDLE: Duration = Duration::from_millis(400);

/// What the raw actor saw.
#[derive(Default)]
struct Seen {
    /// Connections accepted (the wake's probe included).
    accepted: AtomicUsize,
    /// `(connection, path)` of every request head read.
    requests: Mutex<Vec<(usize, String)>>,
    /// Connections the router closed.
    closed: Mutex<Vec<usize>>,
    /// Releases the end of `/slow` answers.
    finish: Notify,
}

impl Seen {
    fn requests_for(&self, path: &str) -> Vec<usize> {
        let all = self.requests.lock().unwrap();
        all.iter()
            .filter(|(_, p)| p == path)
            .map(|(c, _)| *c)
            .collect()
    }

    fn closed(&self, conn: usize) -> bool {
        self.closed.lock().unwrap().contains(&conn)
    }
}

/// A bare HTTP/1.1 actor: an answer's body is the index of the connection it came on.
/// `/stale` is answered only as the first request of a connection; later on the connection
/// it is read (body too) and the connection closed without an answer, as a connection the
/// actor had closed while it was idle in the router's pool. `/never` is never answered.
/// `/slow` answers a first chunk, and the rest once `finish` is notified.
async fn raw_actor() -> (SocketAddr, Arc<Seen>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let seen = Arc::new(Seen::default());
    let s = seen.clone();
    tokio::spawn(async move {
        while let Ok((mut sock, _)) = listener.accept().await {
            let index = s.accepted.fetch_add(1, Ordering::SeqCst);
            let seen = s.clone();
            tokio::spawn(async move {
                let mut buf = Vec::new();
                let mut chunk = [0u8; 16 << 10];
                let mut nth = 0;
                loop {
                    let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") else {
                        match sock.read(&mut chunk).await {
                            Ok(0) | Err(_) => {
                                seen.closed.lock().unwrap().push(index);
                                return;
                            }
                            Ok(k) => buf.extend_from_slice(&chunk[..k]),
                        }
                        continue;
                    };
                    let head = String::from_utf8_lossy(&buf[..end]).to_string();
                    buf.drain(..end + 4);
                    let length: usize = head
                        .lines()
                        .find_map(|l| {
                            let (k, v) = l.split_once(':')?;
                            k.eq_ignore_ascii_case("content-length")
                                .then(|| v.trim().parse().ok())?
                        })
                        .unwrap_or(0);
                    while buf.len() < length {
                        match sock.read(&mut chunk).await {
                            Ok(0) | Err(_) => return,
                            Ok(k) => buf.extend_from_slice(&chunk[..k]),
                        }
                    }
                    buf.drain(..length);
                    let path = head.split(' ').nth(1).unwrap_or_default().to_string();
                    seen.requests.lock().unwrap().push((index, path.clone()));
                    nth += 1;
                    if path == "/never" || (path == "/stale" && nth > 1) {
                        return;
                    }
                    if path == "/slow" {
                        let first = format!(
                            "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n{:x}\r\n{index}\r\n",
                            index.to_string().len()
                        );
                        if sock.write_all(first.as_bytes()).await.is_err() {
                            return;
                        }
                        seen.finish.notified().await;
                        if sock.write_all(b"0\r\n\r\n").await.is_err() {
                            return;
                        }
                        continue;
                    }
                    let body = index.to_string();
                    let answer = format!(
                        "HTTP/1.1 200 OK\r\nContent-Length: {}\r\n\r\n{body}",
                        body.len()
                    );
                    if sock.write_all(answer.as_bytes()).await.is_err() {
                        return;
                    }
                }
            });
        }
    });
    (addr, seen)
}

/// A world with template `raw` (the raw actor) and `actors` made from it, and a router with
/// one proxy thread (one upstream pool for every client).
async fn setup(actors: &[&str]) -> (World, router::Running, Arc<Seen>) {
    let w = world().await;
    let (addr, seen) = raw_actor().await;
    support::create(
        &w.client,
        &format!("/apis/ate.dev/v1alpha1/namespaces/{ATESPACE}/actortemplates"),
        serde_json::json!({"apiVersion": "ate.dev/v1alpha1", "kind": "ActorTemplate",
               "metadata": {"name": "raw"},
               "spec": {"containers": [{"name": "main", "image": "127.0.0.1:5000/x:1",
                                        "ports": [{"containerPort": addr.port()}]}],
                        "workerPoolRef": {"name": "p"}}}),
    )
    .await;
    for a in actors {
        w.actor(a, "raw", "OnDemand").await;
    }
    let r = w.router_with(w.client.clone(), WAKE, 1).await;
    (w, r, seen)
}

/// `GET path` for `actor` on a fresh client connection: status and body.
async fn ask(r: &router::Running, actor: &str, path: &str) -> (u16, String) {
    let (status, _, body) = send(r.http_addr, get(path, &host(actor))).await.unwrap();
    (status.as_u16(), body)
}

/// The connection index an answer names.
fn conn(answer: (u16, String)) -> usize {
    assert_eq!(answer.0, 200, "{}", answer.1);
    answer.1.parse().unwrap_or_else(|_| panic!("{answer:?}"))
}

/// Suspends `actor` as the node agent reports it, and waits for the router to see it.
async fn suspend(w: &World, r: &router::Running, actor: &str) {
    let api: kube::Api<crds::substrate::Actor> = kube::Api::namespaced(w.client.clone(), ATESPACE);
    api.patch_status(
        actor,
        &kube::api::PatchParams::default(),
        &kube::api::Patch::Merge(serde_json::json!({"status": {
            "phase": "Suspended", "worker": null,
            "conditions": [{"type": "Ready", "status": "False", "reason": "Suspended",
                            "message": "suspended", "lastTransitionTime": "2026-01-01T00:00:00Z"}]}})),
    )
    .await
    .unwrap();
    let key = router::host::ActorKey::new(ATESPACE, actor);
    eventually("the router sees the actor suspended", || async {
        let a = r.table.actor(&key)?;
        r.table.route(&a).is_none().then_some(())
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_get_whose_pooled_connection_was_closed_is_sent_again_once() {
    let (_w, r, seen) = setup(&["a"]).await;
    let first = conn(ask(&r, "a", "/").await);
    tokio::time::sleep(IDLE).await;
    // The pooled connection takes the request and closes without answering: the request
    // goes again, once, on a new connection, and the client sees only the answer.
    let accepted = seen.accepted.load(Ordering::SeqCst);
    let second = conn(ask(&r, "a", "/stale").await);
    assert_ne!(second, first);
    assert_eq!(seen.requests_for("/stale"), vec![first, second]);
    assert_eq!(seen.accepted.load(Ordering::SeqCst), accepted + 1);
    assert_eq!(
        metric(r.admin_addr, "substrate_router_upstream_retries_total").await,
        1.0
    );
    // The new connection serves what follows.
    assert_eq!(conn(ask(&r, "a", "/").await), second);
    r.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_is_sent_again_at_most_once() {
    let (_w, r, seen) = setup(&["a"]).await;
    let first = conn(ask(&r, "a", "/").await);
    tokio::time::sleep(IDLE).await;
    let (status, body) = ask(&r, "a", "/never").await;
    assert_eq!(status, 502, "{body}");
    assert!(
        body.contains(&format!("actor {ATESPACE}/a at "))
            && body.contains("closed the connection before answering"),
        "{body}"
    );
    let tried = seen.requests_for("/never");
    assert_eq!(tried.len(), 2, "the first try and one more: {tried:?}");
    assert_eq!(tried[0], first);
    r.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_post_whose_body_went_out_is_not_sent_again() {
    let (_w, r, seen) = setup(&["a"]).await;
    let first = conn(ask(&r, "a", "/").await);
    tokio::time::sleep(IDLE).await;
    let accepted = seen.accepted.load(Ordering::SeqCst);
    let post = Request::post("/stale")
        .header("host", host("a"))
        .body(Full::new(Bytes::from(vec![b'p'; 64 << 10])))
        .unwrap();
    let (status, _, body) = send(r.http_addr, post).await.unwrap();
    assert_eq!(status, 502, "{body}");
    assert!(
        body.contains("closed the connection before answering"),
        "{body}"
    );
    assert_eq!(seen.requests_for("/stale"), vec![first], "sent once");
    assert_eq!(seen.accepted.load(Ordering::SeqCst), accepted);
    assert_eq!(
        metric(r.admin_addr, "substrate_router_upstream_retries_total").await,
        0.0
    );
    r.stop().await;
}

/// Actor `a` served through the pool; `a` is suspended and `b` answers on the same address
/// (the test's workers share 127.0.0.1): `a`'s idle connection is closed when the router
/// sees the suspend, and `b` gets connections of its own.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pooled_connections_end_with_their_binding() {
    let (w, r, seen) = setup(&["a", "b"]).await;
    let of_a = conn(ask(&r, "a", "/").await);
    assert_eq!(conn(ask(&r, "a", "/").await), of_a, "kept alive and reused");
    suspend(&w, &r, "a").await;
    eventually("a's idle upstream connection is closed", || async {
        seen.closed(of_a).then_some(())
    })
    .await;
    let of_b = conn(ask(&r, "b", "/").await);
    assert_ne!(of_b, of_a);
    assert_eq!(conn(ask(&r, "b", "/").await), of_b, "b's own, reused");
    r.stop().await;
}

/// Two actors live at one address at once (the test's workers share 127.0.0.1): each keeps
/// its own connections, neither is ever given one opened for the other.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_connection_serves_only_the_binding_it_was_opened_for() {
    let (_w, r, _seen) = setup(&["a", "b"]).await;
    let of_a = conn(ask(&r, "a", "/").await);
    let of_b = conn(ask(&r, "b", "/").await);
    assert_ne!(of_a, of_b);
    assert_eq!(conn(ask(&r, "a", "/").await), of_a);
    assert_eq!(conn(ask(&r, "b", "/").await), of_b);
    r.stop().await;
}

/// A connection busy with a response when its binding ends is closed when the response
/// ends, not pooled for whoever comes next at that address.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_connection_busy_when_its_binding_ends_is_not_pooled() {
    let (w, r, seen) = setup(&["a", "b"]).await;
    // Wake `b` first: its wake opens nothing that `a`'s connection could be confused with.
    conn(ask(&r, "b", "/").await);
    let stream = tokio::net::TcpStream::connect(r.http_addr).await.unwrap();
    let (mut sender, c) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .unwrap();
    tokio::spawn(c);
    let resp = sender.send_request(get("/slow", &host("a"))).await.unwrap();
    assert_eq!(resp.status(), 200);
    let mut body = resp.into_body();
    let first = body.frame().await.unwrap().unwrap().into_data().unwrap();
    let busy: usize = String::from_utf8_lossy(&first).parse().unwrap();
    suspend(&w, &r, "a").await;
    seen.finish.notify_one();
    while body.frame().await.is_some() {}
    eventually(
        "the busy connection is closed once its answer ended",
        || async { seen.closed(busy).then_some(()) },
    )
    .await;
    assert_ne!(conn(ask(&r, "b", "/").await), busy);
    r.stop().await;
}
