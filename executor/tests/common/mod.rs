//! Shared helpers for the executor integration tests (real runsc, real netns, root).
//!
//! Tests skip with a printed reason when not root, or when runsc/unshare/busybox-static are
//! missing — unless `SUBSTRATE_REQUIRE_RUNSC=1`, which turns every skip into a failure.
//! Worker slots 16300..16383 of the default range are reserved for these tests.

#![allow(dead_code)]

use std::fs;
use std::io::{Read, Write};
use std::net::{Ipv4Addr, SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use executor::bundle::{ActorSpec, ProcessSpec};
use executor::daemon::{DaemonConfig, ShutdownPolicy};
use executor::net::{AddrRange, NetSpec};
use executor::runsc::RunscConfig;

pub const RUNSC: &str = "/usr/bin/runsc";
pub const BUSYBOX: &str = "/bin/busybox";

/// True when the real-runsc tests can run here; otherwise prints why (or panics when
/// `SUBSTRATE_REQUIRE_RUNSC=1`).
pub fn runsc_available(test: &str) -> bool {
    let mut missing = Vec::new();
    if !nix::unistd::geteuid().is_root() {
        missing.push("root privileges".to_string());
    }
    if !Path::new(RUNSC).exists() {
        missing.push(format!("{RUNSC} (Debian package runsc)"));
    }
    if !Path::new("/usr/bin/unshare").exists() {
        missing.push("/usr/bin/unshare (util-linux)".to_string());
    }
    match fs::read(BUSYBOX) {
        Ok(bytes) if is_static(&bytes) => {}
        Ok(_) => missing.push(format!(
            "a static {BUSYBOX} (Debian package busybox-static)"
        )),
        Err(_) => missing.push(format!("{BUSYBOX} (Debian package busybox-static)")),
    }
    if missing.is_empty() {
        return true;
    }
    let msg = format!("{test}: needs {}", missing.join(", "));
    if std::env::var("SUBSTRATE_REQUIRE_RUNSC").as_deref() == Ok("1") {
        panic!("{msg} (SUBSTRATE_REQUIRE_RUNSC=1)");
    }
    eprintln!("SKIPPED {msg}");
    false
}

/// A dynamically linked ELF names its interpreter; a static one does not.
fn is_static(elf: &[u8]) -> bool {
    !elf.windows(b"/ld-linux".len()).any(|w| w == b"/ld-linux")
}

/// A root filesystem with a static busybox and its applets as symlinks.
pub fn busybox_rootfs(dir: &Path) -> PathBuf {
    let rootfs = dir.join("rootfs");
    for d in ["bin", "proc", "dev", "sys", "tmp", "data", "www", "etc"] {
        fs::create_dir_all(rootfs.join(d)).unwrap();
    }
    fs::copy(BUSYBOX, rootfs.join("bin/busybox")).unwrap();
    for applet in [
        "sh", "httpd", "sleep", "echo", "cat", "mkdir", "ls", "nc", "date",
    ] {
        std::os::unix::fs::symlink("busybox", rootfs.join("bin").join(applet)).unwrap();
    }
    fs::write(rootfs.join("etc/passwd"), "root:x:0:0:root:/:/bin/sh\n").unwrap();
    rootfs
}

/// The test workload: a shell loop holding a counter in a shell variable (memory only),
/// writing it to /www/counter every 200 ms, a marker file written once at boot in the root
/// overlay (/data) and one in tmpfs (/tmp), and `busybox httpd` serving `/` on port 8080.
pub fn counter_spec(rootfs: &Path) -> ActorSpec {
    let script = "echo booted-$RANDOM$RANDOM > /data/marker; echo tmp-$RANDOM > /tmp/t; \
                  httpd -p 8080 -h /; i=0; \
                  while true; do i=$((i+1)); echo $i > /www/counter; sleep 0.2; done";
    ActorSpec {
        rootfs: rootfs.to_path_buf(),
        process: ProcessSpec {
            args: vec!["/bin/sh".into(), "-c".into(), script.into()],
            env: vec!["PATH=/bin".into()],
            cwd: "/".into(),
            uid: 0,
            gid: 0,
        },
        hostname: None,
    }
}

/// `GET path` over plain HTTP/1.0; returns (status code, body).
pub fn http_get(ip: Ipv4Addr, port: u16, path: &str) -> std::io::Result<(u16, String)> {
    let addr = SocketAddr::from((ip, port));
    let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(2))?;
    s.set_read_timeout(Some(Duration::from_secs(3)))?;
    write!(s, "GET {path} HTTP/1.0\r\nHost: {ip}\r\n\r\n")?;
    let mut buf = String::new();
    s.read_to_string(&mut buf)?;
    let code = buf
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    let body = buf
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.trim().to_string())
        .unwrap_or_default();
    Ok((code, body))
}

/// Polls `GET path` until it answers 200 (or panics after `limit`).
pub fn wait_get(ip: Ipv4Addr, path: &str, limit: Duration) -> String {
    let start = Instant::now();
    loop {
        match http_get(ip, 8080, path) {
            Ok((200, body)) if !body.is_empty() => return body,
            other => {
                if start.elapsed() > limit {
                    panic!(
                        "GET http://{ip}:8080{path} did not answer 200 within {limit:?}: {other:?}"
                    );
                }
            }
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// The workload's counter (polled until it is at least `min`).
pub fn counter_at_least(ip: Ipv4Addr, min: u64, limit: Duration) -> u64 {
    let start = Instant::now();
    loop {
        let body = wait_get(ip, "/www/counter", limit);
        let n: u64 = body.parse().unwrap_or(0);
        if n >= min {
            return n;
        }
        if start.elapsed() > limit {
            panic!("counter at {ip} stayed at {n} < {min} for {limit:?}");
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Daemon config for a test worker in `dir` (unique name and slot per test).
pub fn daemon_config(name: &str, index: u32, dir: &Path) -> DaemonConfig {
    let state_dir = dir.join(format!("state-{name}"));
    DaemonConfig {
        worker_name: name.to_string(),
        index,
        socket: state_dir.join("executor.sock"),
        range: AddrRange::default(),
        runsc: RunscConfig {
            root: state_dir.join("runsc"),
            // SUBSTRATE_TEST_RUNSC_PLATFORM=ptrace runs the suite on the fallback platform.
            platform: std::env::var("SUBSTRATE_TEST_RUNSC_PLATFORM")
                .ok()
                .map(|p| p.parse().expect("SUBSTRATE_TEST_RUNSC_PLATFORM"))
                .unwrap_or_default(),
            ..RunscConfig::default()
        },
        state_dir,
        on_shutdown: ShutdownPolicy::Kill,
        recovery_wait: Duration::from_secs(60),
        fence_after: crds::liveness::SANDBOX_FENCE_AFTER,
    }
}

/// Removes leftovers of an earlier (crashed) run of the same test worker.
pub async fn clean_worker_network(name: &str, index: u32) {
    let spec = NetSpec::new(name, index, AddrRange::default()).unwrap();
    executor::net::teardown(&spec).await.unwrap();
}

pub fn worker_ip(index: u32) -> Ipv4Addr {
    AddrRange::default().block(index).unwrap().worker
}

/// Total size of the files in `dir` and of their zstd (level 3) compression.
pub fn image_sizes(dir: &Path) -> (u64, u64) {
    let mut raw = 0;
    let mut compressed = 0;
    for e in fs::read_dir(dir).unwrap() {
        let p = e.unwrap().path();
        if !p.is_file() || p.extension().and_then(|x| x.to_str()) != Some("img") {
            continue;
        }
        raw += fs::metadata(&p).unwrap().len();
        let z = zstd::encode_all(fs::File::open(&p).unwrap(), 3).unwrap();
        compressed += z.len() as u64;
    }
    (raw, compressed)
}

/// Waits until `path` exists.
pub async fn wait_for_path(path: &Path, limit: Duration) {
    let start = Instant::now();
    while !path.exists() {
        if start.elapsed() > limit {
            panic!("{} did not appear within {limit:?}", path.display());
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// An executor daemon running inside the test process.
pub struct InProcess {
    pub client: executor::ExecutorClient,
    pub cfg: DaemonConfig,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    handle: tokio::task::JoinHandle<Result<(), executor::daemon::DaemonError>>,
}

impl InProcess {
    pub async fn start(cfg: DaemonConfig) -> Self {
        clean_worker_network(&cfg.worker_name, cfg.index).await;
        let (tx, rx) = tokio::sync::oneshot::channel::<()>();
        let handle = tokio::spawn(executor::daemon::run(cfg.clone(), async move {
            let _ = rx.await;
        }));
        let start = Instant::now();
        while !cfg.socket.exists() {
            if handle.is_finished() {
                match handle.await.unwrap() {
                    Ok(()) => panic!("executor {} stopped before serving", cfg.worker_name),
                    Err(e) => panic!(
                        "executor {} failed: {}",
                        cfg.worker_name,
                        executor::error_chain(&e)
                    ),
                }
            }
            assert!(
                start.elapsed() < Duration::from_secs(30),
                "{} did not appear",
                cfg.socket.display()
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let mut client = executor::ExecutorClient::connect(&cfg.socket)
            .await
            .unwrap();
        let start = Instant::now();
        loop {
            let st = client.status().await.unwrap();
            if st.phase() != executor::proto::Phase::Recovering {
                break;
            }
            assert!(
                start.elapsed() < Duration::from_secs(30),
                "recovery took too long"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        Self {
            client,
            cfg,
            stop: Some(tx),
            handle,
        }
    }

    /// Stops the daemon (policy Kill: sandbox killed, network removed).
    pub async fn stop(mut self) {
        if let Some(tx) = self.stop.take() {
            let _ = tx.send(());
        }
        (&mut self.handle).await.unwrap().unwrap();
    }
}

impl Drop for InProcess {
    /// A test that panicked did not stop its daemon: do not leave sandboxes, veths and
    /// namespaces behind on a shared machine.
    fn drop(&mut self) {
        if self.stop.is_some() {
            self.handle.abort();
            cleanup_worker_blocking(&self.cfg.worker_name, self.cfg.index, &self.cfg.runsc.root);
        }
    }
}

/// Best-effort synchronous cleanup of a test worker: every sandbox in its runsc root, its
/// veth, its namespace and its cgroup.
pub fn cleanup_worker_blocking(name: &str, index: u32, runsc_root: &Path) {
    use std::process::Command;
    let root = format!("--root={}", runsc_root.display());
    if let Ok(out) = Command::new(RUNSC)
        .args([&root, "list", "--format=json"])
        .output()
    {
        let list =
            executor::runsc::parse_list(&String::from_utf8_lossy(&out.stdout)).unwrap_or_default();
        for c in list {
            let _ = Command::new(RUNSC)
                .args([&root, "delete", "--force", &c.id])
                .status();
        }
    }
    let _ = Command::new("ip")
        .args(["link", "del", &format!("sub{index}h")])
        .status();
    let _ = Command::new("ip")
        .args(["netns", "del", &format!("substrate-{name}")])
        .status();
    if let Ok(entries) = fs::read_dir("/sys/fs/cgroup") {
        for e in entries.flatten() {
            let _ = fs::remove_dir(e.path().join("substrate").join(name));
        }
    }
}

/// Blocking HTTP helpers run off the async workers.
pub async fn counter_async(ip: Ipv4Addr, min: u64) -> u64 {
    tokio::task::spawn_blocking(move || counter_at_least(ip, min, Duration::from_secs(20)))
        .await
        .unwrap()
}

pub async fn get_async(ip: Ipv4Addr, path: &'static str) -> String {
    tokio::task::spawn_blocking(move || wait_get(ip, path, Duration::from_secs(20)))
        .await
        .unwrap()
}
