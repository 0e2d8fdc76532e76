//! 100 MiB up and 100 MiB down through the real `substrate-router` binary, whose RSS (read
//! from /proc/<pid>/status) must stay far below the size of the bodies: nothing is buffered.

mod support;

use std::io::BufRead;
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use http::Request;
use http_body_util::BodyExt;
use hyper_util::rt::TokioIo;

use support::{eventually, get, host, send, streaming_body, world};

const SIZE: u64 = 100 * 1024 * 1024;
/// Far below the 100 MiB that buffering one body would cost.
const RSS_LIMIT_KIB: u64 = 48 * 1024;

fn status_kib(pid: u32, field: &str) -> Option<u64> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    s.lines()
        .find(|l| l.starts_with(field))?
        .split_whitespace()
        .nth(1)?
        .parse()
        .ok()
}

struct Child(std::process::Child);

impl Drop for Child {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hundred_mib_up_and_down_keep_the_router_rss_flat() {
    let w = world().await;
    w.actor("big", "t", "OnDemand").await;
    let mut child = Command::new(env!("CARGO_BIN_EXE_substrate-router"))
        .args([
            "--kubeconfig",
            w.kubeconfig.to_str().unwrap(),
            "--listen=127.0.0.1:0",
            "--admin-listen=127.0.0.1:0",
            "--dns-listen=off",
            "--log-format=json",
            "--activity-interval=1s",
        ])
        .env("RUST_LOG", "info")
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("spawn substrate-router");
    let stdout = child.stdout.take().unwrap();
    let pid = child.id();
    let child = Child(child);
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in std::io::BufReader::new(stdout).lines() {
            let Ok(line) = line else { return };
            if line.contains("router listening") {
                let _ = tx.send(line);
            }
        }
    });
    let line = rx
        .recv_timeout(Duration::from_secs(30))
        .expect("the router logs its addresses");
    let v: serde_json::Value = serde_json::from_str(&line).unwrap();
    let http: std::net::SocketAddr = v["fields"]["http"].as_str().unwrap().parse().unwrap();
    let admin: std::net::SocketAddr = v["fields"]["admin"].as_str().unwrap().parse().unwrap();
    eventually("the router is ready", || async move {
        (send(admin, get("/readyz", "a")).await.ok()?.0 == 200).then_some(())
    })
    .await;
    // Wake it first (a small request), then measure.
    assert_eq!(send(http, get("/", &host("big"))).await.unwrap().0, 200);
    let baseline = status_kib(pid, "VmRSS:").unwrap();

    let max_rss = Arc::new(AtomicU64::new(0));
    let done = Arc::new(AtomicBool::new(false));
    let sampler = {
        let (max_rss, done) = (max_rss.clone(), done.clone());
        tokio::spawn(async move {
            while !done.load(Ordering::Relaxed) {
                if let Some(r) = status_kib(pid, "VmRSS:") {
                    max_rss.fetch_max(r, Ordering::Relaxed);
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        })
    };

    // Upload: a streamed (chunked) 100 MiB body; the actor answers with the byte count.
    let stream = tokio::net::TcpStream::connect(http).await.unwrap();
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .unwrap();
    tokio::spawn(conn);
    let req = Request::post("/upload")
        .header("host", host("big"))
        .body(streaming_body(SIZE))
        .unwrap();
    let t = std::time::Instant::now();
    let resp = sender.send_request(req).await.unwrap();
    assert_eq!(resp.status(), 200);
    let body = resp.into_body().collect().await.unwrap().to_bytes();
    assert_eq!(String::from_utf8_lossy(&body), SIZE.to_string());
    let up = t.elapsed();

    // Download: 100 MiB streamed by the actor, counted frame by frame.
    let stream = tokio::net::TcpStream::connect(http).await.unwrap();
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .unwrap();
    tokio::spawn(conn);
    let req = Request::get(format!("/download?n={SIZE}"))
        .header("host", host("big"))
        .body(http_body_util::Empty::<bytes::Bytes>::new())
        .unwrap();
    let t = std::time::Instant::now();
    let resp = sender.send_request(req).await.unwrap();
    assert_eq!(resp.status(), 200);
    let mut body = resp.into_body();
    let mut n = 0u64;
    while let Some(f) = body.frame().await {
        if let Ok(d) = f.unwrap().into_data() {
            n += d.len() as u64;
        }
    }
    assert_eq!(n, SIZE);
    let down = t.elapsed();
    done.store(true, Ordering::Relaxed);
    sampler.await.unwrap();

    let peak = max_rss.load(Ordering::Relaxed);
    let hwm = status_kib(pid, "VmHWM:").unwrap();
    eprintln!(
        "router RSS: baseline {baseline} KiB, peak while streaming {peak} KiB, VmHWM {hwm} KiB; \
         upload {up:?}, download {down:?} for {SIZE} bytes each"
    );
    assert!(
        peak < RSS_LIMIT_KIB && hwm < RSS_LIMIT_KIB,
        "router RSS grew with the body: peak {peak} KiB, high-water mark {hwm} KiB (limit {RSS_LIMIT_KIB} KiB)"
    );
    drop(child);
}
