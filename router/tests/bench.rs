//! Proxy overhead on a warm actor, against a direct connection to the same upstream: latency
//! p50/p99 and requests/s at 1, 16 and 256 concurrent keep-alive connections, and the time
//! to first byte of a cold (woken) request. Not a pass/fail test: run it on purpose, in
//! release mode, and read the table it prints:
//!
//! ```sh
//! cargo test --release -p router --test bench -- --ignored --nocapture
//! ```

mod support;

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::Request;
use http_body_util::{BodyExt, Empty};
use hyper_util::rt::TokioIo;

use support::{host, world};

struct Run {
    latencies: Vec<Duration>,
    elapsed: Duration,
}

async fn load(addr: SocketAddr, host: String, conns: usize, per_conn: usize) -> Run {
    let start = Instant::now();
    let tasks = (0..conns).map(|_| {
        let host = host.clone();
        tokio::spawn(async move {
            let stream = tokio::net::TcpStream::connect(addr).await.unwrap();
            stream.set_nodelay(true).unwrap();
            let (mut tx, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
                .await
                .unwrap();
            tokio::spawn(conn);
            let mut lat = Vec::with_capacity(per_conn);
            for _ in 0..per_conn {
                let req = Request::get("/")
                    .header("host", &host)
                    .body(Empty::<Bytes>::new())
                    .unwrap();
                let t = Instant::now();
                let resp = tx.send_request(req).await.unwrap();
                let _ = resp.into_body().collect().await.unwrap();
                lat.push(t.elapsed());
            }
            lat
        })
    });
    let mut latencies = vec![];
    for t in futures::future::join_all(tasks).await {
        latencies.extend(t.unwrap());
    }
    Run {
        latencies,
        elapsed: start.elapsed(),
    }
}

fn pct(v: &mut [Duration], p: f64) -> Duration {
    v.sort();
    v[((v.len() as f64 - 1.0) * p) as usize]
}

#[tokio::test(flavor = "multi_thread")]
#[ignore = "benchmark: run with --ignored --nocapture, in release mode"]
async fn proxy_overhead() {
    let w = world().await;
    w.actor("bench", "t", "OnDemand").await;
    let r = w.router(Duration::from_secs(20)).await;
    let h = host("bench");

    // Cold: first byte of a request for a suspended actor (the fake agent takes 300 ms).
    let t = Instant::now();
    let (s, _, _) = support::send(r.http_addr, support::get("/", &h))
        .await
        .unwrap();
    assert_eq!(s, 200);
    println!(
        "cold request (wake incl. 300 ms fake restore): {:?}",
        t.elapsed()
    );

    println!(
        "conns | direct p50 / p99 / req/s | router p50 / p99 / req/s | added p50 | router/direct"
    );
    for conns in [1usize, 16, 256] {
        let per_conn = (20_000 / conns).max(50);
        // Warm-up.
        load(r.http_addr, h.clone(), conns, 10).await;
        load(w.upstream, h.clone(), conns, 10).await;
        let mut d = load(w.upstream, h.clone(), conns, per_conn).await;
        let mut p = load(r.http_addr, h.clone(), conns, per_conn).await;
        let d_rps = d.latencies.len() as f64 / d.elapsed.as_secs_f64();
        let p_rps = p.latencies.len() as f64 / p.elapsed.as_secs_f64();
        let (d50, d99) = (pct(&mut d.latencies, 0.5), pct(&mut d.latencies, 0.99));
        let (p50, p99) = (pct(&mut p.latencies, 0.5), pct(&mut p.latencies, 0.99));
        println!(
            "{conns:5} | {d50:>9.1?} / {d99:>9.1?} / {d_rps:8.0} | {p50:>9.1?} / {p99:>9.1?} / {p_rps:8.0} | {:>9.1?} | {:.0}%",
            p50.saturating_sub(d50),
            100.0 * p_rps / d_rps
        );
    }
    r.stop().await;
}
