//! The actor runtime end to end, all real: Valkey, the apiserver (in-process), a local OCI
//! registry with the `counter` demo image, the node agent binary running two executors, and
//! gVisor `runsc` sandboxes in their own network namespaces.
//!
//! An actor is resumed (cold boot), its in-memory counter is driven to N over HTTP and a file
//! is written, it is suspended (checkpoint → zstd snapshot with a manifest in the object
//! store, worker freed), then resumed on the *other* worker: the counter continues from N
//! and the file is still there.
//!
//! Needs root and runsc; skipped with a message otherwise, unless `SUBSTRATE_REQUIRE_RUNSC=1`
//! (hack/test.sh sets it), which turns a missing prerequisite into a failure.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use clap::Parser;
use serde_json::{Value, json};

const DEADLINE: Duration = Duration::from_secs(120);

fn required() -> bool {
    std::env::var("SUBSTRATE_REQUIRE_RUNSC").is_ok_and(|v| v == "1")
}

/// Whether the prerequisites are here; prints why not (or panics when they are required).
fn prerequisites() -> bool {
    let mut missing = Vec::new();
    if !nix_is_root() {
        missing.push("root".to_string());
    }
    for tool in ["runsc", "kubectl", "curl"] {
        if Command::new("sh")
            .args(["-c", &format!("command -v {tool}")])
            .stdout(Stdio::null())
            .status()
            .map_or(true, |s| !s.success())
        {
            missing.push(tool.to_string());
        }
    }
    if !Path::new("/usr/bin/docker-registry").exists()
        && std::env::var_os("SUBSTRATE_DOCKER_REGISTRY").is_none()
    {
        missing.push("docker-registry".into());
    }
    if missing.is_empty() {
        return true;
    }
    let msg = format!(
        "end-to-end runtime test needs {}; run hack/test.sh, which installs them",
        missing.join(", ")
    );
    assert!(!required(), "{msg}");
    eprintln!("skipping: {msg}");
    false
}

fn nix_is_root() -> bool {
    Command::new("id")
        .arg("-u")
        .output()
        .is_ok_and(|o| String::from_utf8_lossy(&o.stdout).trim() == "0")
}

/// `target/<profile>/` (where the workspace's binaries are).
fn bin_dir() -> PathBuf {
    let exe = std::env::current_exe().expect("test executable path");
    // target/<profile>/deps/<test>
    exe.parent()
        .and_then(Path::parent)
        .expect("target dir")
        .to_path_buf()
}

fn workspace_bin(name: &str) -> PathBuf {
    let p = bin_dir().join(name);
    assert!(
        p.exists(),
        "{} is missing: build the workspace's binaries first (`cargo build --workspace --bins`; hack/test.sh does)",
        p.display()
    );
    p
}

fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("workspace root")
        .to_path_buf()
}

/// Builds the static `counter` binary into its own target dir (no lock on the outer build).
fn build_counter() -> PathBuf {
    let target = workspace_root().join("target").join("counter-static");
    let status = Command::new(env!("CARGO"))
        .args([
            "build",
            "--release",
            "-p",
            "counter",
            "--target",
            "x86_64-unknown-linux-gnu",
            "--target-dir",
        ])
        .arg(&target)
        .env("RUSTFLAGS", "-C target-feature=+crt-static")
        .current_dir(workspace_root())
        .status()
        .expect("running cargo build for counter");
    assert!(status.success(), "building the static counter failed");
    target.join("x86_64-unknown-linux-gnu/release/counter")
}

fn eventually<T>(what: &str, mut f: impl FnMut() -> Option<T>) -> T {
    let start = Instant::now();
    loop {
        if let Some(v) = f() {
            return v;
        }
        assert!(
            start.elapsed() < DEADLINE,
            "timed out after {DEADLINE:?} waiting for: {what}"
        );
        std::thread::sleep(Duration::from_millis(250));
    }
}

struct KillOnDrop(Child);

impl Drop for KillOnDrop {
    /// SIGTERM first: the node agent then stops its executors, which (with
    /// `--on-shutdown=kill`) kill their sandboxes and remove their network namespaces.
    fn drop(&mut self) {
        let _ = Command::new("kill")
            .arg("-TERM")
            .arg(self.0.id().to_string())
            .status();
        let start = Instant::now();
        while start.elapsed() < Duration::from_secs(40) {
            if matches!(self.0.try_wait(), Ok(Some(_))) {
                return;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

struct Env {
    kubeconfig: PathBuf,
    home: PathBuf,
}

impl Env {
    fn kubectl(&self, args: &[&str], stdin: Option<&str>) -> (bool, String, String) {
        let mut c = Command::new("kubectl");
        c.args(args)
            .env("KUBECONFIG", &self.kubeconfig)
            .env("HOME", &self.home)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let mut child = c.spawn().expect("kubectl");
        {
            use std::io::Write;
            let mut input = child.stdin.take().expect("stdin");
            if let Some(s) = stdin {
                input.write_all(s.as_bytes()).expect("writing stdin");
            }
        }
        let out = child.wait_with_output().expect("kubectl output");
        (
            out.status.success(),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    }

    fn ok(&self, args: &[&str], stdin: Option<&str>) -> String {
        let (ok, out, err) = self.kubectl(args, stdin);
        assert!(ok, "kubectl {args:?} failed:\n{out}\n{err}");
        out
    }

    fn get(&self, kind: &str, name: &str, ns: Option<&str>) -> Value {
        let mut args = vec!["get", kind, name, "-o", "json"];
        if let Some(ns) = ns {
            args.extend(["-n", ns]);
        }
        serde_json::from_str(&self.ok(&args, None)).expect("JSON")
    }

    fn post(&self, path: &str) -> Value {
        serde_json::from_str(&self.ok(&["create", "--raw", path, "-f", "-"], Some("{}")))
            .expect("JSON")
    }
}

fn http(method: &str, url: &str, body: Option<&str>) -> Option<String> {
    let mut c = Command::new("curl");
    c.args(["-sS", "--fail", "--max-time", "5", "-X", method, url]);
    if let Some(b) = body {
        c.args(["--data-binary", b]);
    }
    let out = c.output().ok()?;
    out.status
        .success()
        .then(|| String::from_utf8_lossy(&out.stdout).into_owned())
}

fn first_int(s: &str) -> u64 {
    let digits: String = s
        .chars()
        .skip_while(|c| !c.is_ascii_digit())
        .take_while(char::is_ascii_digit)
        .collect();
    digits
        .parse()
        .unwrap_or_else(|_| panic!("no integer in {s:?}"))
}

fn phase(a: &Value) -> &str {
    a["status"]["phase"].as_str().unwrap_or("")
}

/// Where snapshots go in a scenario.
struct SnapshotTarget {
    /// `--snapshot-url` of the node agent (None: its default, a local `file://` directory).
    url: Option<String>,
    /// Extra environment of the node agent (S3 endpoint and credentials).
    env: Vec<(String, String)>,
    /// Checks that the manifest at `uri` exists in the object store.
    committed: Box<dyn Fn(&str) -> bool>,
    /// Run the operator, so the actor resumes from its template's golden snapshot.
    golden: bool,
}

#[test]
fn actor_survives_suspend_and_resume_on_another_worker() {
    if !prerequisites() {
        return;
    }
    scenario(
        "e2e-file",
        "10.205.0.0/16",
        100,
        SnapshotTarget {
            url: None,
            env: Vec::new(),
            golden: false,
            committed: Box::new(|uri| {
                let manifest = PathBuf::from(uri.trim_start_matches("file://"));
                let zst = std::fs::read_dir(manifest.parent().unwrap())
                    .map(|d| {
                        d.filter_map(|e| e.ok()?.file_name().into_string().ok())
                            .any(|n| n.ends_with(".zst"))
                    })
                    .unwrap_or(false);
                manifest.exists() && zst
            }),
        },
    );
}

/// The same path with snapshots in an S3-compatible object store (moto) on loopback, and
/// with the operator: the actor's first resume restores the template's golden snapshot.
#[test]
fn actor_survives_suspend_and_resume_with_snapshots_in_s3() {
    if !prerequisites() {
        return;
    }
    let Some(moto) = Moto::start() else {
        let msg = "moto_server is not installed (pip install 'moto[server]'; hack/test.sh does)";
        assert!(
            !std::env::var("SUBSTRATE_REQUIRE_MOTO").is_ok_and(|v| v == "1"),
            "{msg}"
        );
        eprintln!("skipping: {msg}");
        return;
    };
    let endpoint = format!("http://127.0.0.1:{}", moto.port);
    let status = Command::new("curl")
        .args([
            "-sS",
            "--fail",
            "-X",
            "PUT",
            &format!("{endpoint}/e2e-snapshots"),
        ])
        .status()
        .expect("curl");
    assert!(status.success(), "creating the bucket");
    let check = endpoint.clone();
    scenario(
        "e2e-s3",
        "10.206.0.0/16",
        200,
        SnapshotTarget {
            url: Some("s3://e2e-snapshots/actors".into()),
            golden: true,
            env: vec![
                ("AWS_ENDPOINT_URL".into(), endpoint),
                ("AWS_ALLOW_HTTP".into(), "true".into()),
                ("AWS_REGION".into(), "us-east-1".into()),
                ("AWS_ACCESS_KEY_ID".into(), "test".into()),
                ("AWS_SECRET_ACCESS_KEY".into(), "test".into()),
            ],
            committed: Box::new(move |uri| {
                // moto refuses unsigned GETs of objects but lists buckets.
                let key = uri.trim_start_matches("s3://e2e-snapshots/");
                let prefix = key.rsplit_once('/').map_or("", |(p, _)| p);
                let listing = http(
                    "GET",
                    &format!("{check}/e2e-snapshots?list-type=2&prefix={prefix}/"),
                    None,
                )
                .unwrap_or_default();
                listing.contains(&format!("<Key>{key}</Key>")) && listing.contains(".zst</Key>")
            }),
        },
    );
}

/// moto_server on a free loopback port, killed on drop.
struct Moto {
    port: u16,
    _child: KillOnDrop,
}

impl Moto {
    fn start() -> Option<Moto> {
        let installed = Command::new("moto_server")
            .arg("--help")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success());
        if !installed {
            return None;
        }
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .ok()?
            .local_addr()
            .ok()?
            .port();
        let child = Command::new("moto_server")
            .args(["-H", "127.0.0.1", "-p", &port.to_string()])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("starting moto_server");
        let moto = Moto {
            port,
            _child: KillOnDrop(child),
        };
        eventually("moto_server listens", || {
            std::net::TcpStream::connect(("127.0.0.1", port)).ok()
        });
        Some(moto)
    }
}

/// `node` names the node (and its workers), `range` and `index_base` keep the worker
/// networks (addresses, host-side veth names) of scenarios running at once apart.
fn scenario(node: &str, range: &str, index_base: u32, target: SnapshotTarget) {
    let dir = tempfile::Builder::new()
        .prefix("substrate-e2e-")
        .tempdir()
        .expect("tempdir");
    let home = dir.path().join("home");
    std::fs::create_dir_all(&home).expect("home");

    // Control plane: Valkey + apiserver.
    let valkey = apiserver::testing::ValkeyServer::start();
    let kubeconfig = dir.path().join("kubeconfig");
    let args = apiserver::config::Args::try_parse_from([
        "substrate-apiserver".to_string(),
        "--bind=127.0.0.1:0".into(),
        format!("--valkey-url={}", valkey.url()),
        format!("--pki-dir={}", dir.path().join("pki").display()),
        format!("--kubeconfig-out={}", kubeconfig.display()),
    ])
    .expect("args");
    let rt = tokio::runtime::Runtime::new().expect("runtime");
    let _running = rt
        .block_on(apiserver::start(&args))
        .expect("apiserver starts");
    let env = Env {
        kubeconfig: kubeconfig.clone(),
        home,
    };

    // The demo image in a real registry.
    let registry = nodeagent::images::testing::Registry::start().expect("registry starts");
    let counter = build_counter();
    let image_ref = format!("{}/substrate/counter:e2e", registry.host());
    let spec = nodeagent::images::build::ImageSpec {
        files: vec![
            format!("{}:/counter:755", counter.display())
                .parse()
                .expect("file spec"),
        ],
        entrypoint: vec!["/counter".into()],
        env: vec!["PORT=8080".into()],
        exposed_ports: vec!["8080/tcp".into()],
        ..Default::default()
    };
    let built = nodeagent::images::build::build_image(&spec).expect("image builds");
    rt.block_on(nodeagent::images::build::push_image(
        &built,
        &image_ref,
        &nodeagent::images::build::PushOptions {
            insecure: true,
            auth: None,
        },
    ))
    .expect("image pushed");

    // A pool of two workers on this node, and the counter template.
    env.ok(
        &["create", "-f", "-"],
        Some(
            &json!({
                "apiVersion": "ate.dev/v1alpha1", "kind": "WorkerPool",
                "metadata": {"name": "e2e", "namespace": "default"},
                "spec": {"replicas": 2, "workerLabels": {"tier": "test"}},
            })
            .to_string(),
        ),
    );
    env.ok(&["create", "-f", "-"], Some(&json!({"apiVersion": "substrate.ate.dev/v1alpha1", "kind": "Atespace", "metadata": {"name": "team-a"}}).to_string()));
    env.ok(&["create", "-f", "-"], Some(&json!({
        "apiVersion": "ate.dev/v1alpha1", "kind": "ActorTemplate",
        "metadata": {"name": "counter", "namespace": "team-a"},
        "spec": {
            "containers": [{"name": "counter", "image": image_ref, "env": [{"name": "DATA_FILE", "value": "/data/file"}]}],
            "workerPoolRef": {"name": "e2e"},
            "readinessProbe": {"httpGet": {"path": "/healthz", "port": 8080}, "periodSeconds": 1},
        },
    }).to_string()));

    // The node agent (real executors and runsc).
    let state = dir.path().join("node");
    let log = std::fs::File::create(dir.path().join("nodeagent.log")).expect("log");
    let mut command = Command::new(workspace_bin("substrate-nodeagent"));
    if let Some(url) = &target.url {
        command.arg("--snapshot-url").arg(url);
    }
    command.envs(target.env.iter().map(|(k, v)| (k, v)));
    let agent = KillOnDrop(
        command
            .arg("--kubeconfig")
            .arg(&kubeconfig)
            .args(["--node", node, "--pool-namespace", "default"])
            .arg("--state-dir")
            .arg(&state)
            .arg("--executor-bin")
            .arg(workspace_bin("substrate-executor"))
            .arg("--insecure-registries")
            .arg(registry.host())
            .args([
                "--heartbeat-seconds",
                "1",
                "--executor-arg=--on-shutdown=kill",
            ])
            .arg(format!("--executor-arg=--addr-range={range}"))
            .arg(format!("--worker-index-base={index_base}"))
            .stdout(log.try_clone().expect("log"))
            .stderr(log)
            .spawn()
            .expect("node agent starts"),
    );
    let agent_log = dir.path().join("nodeagent.log");
    let show_log = || std::fs::read_to_string(&agent_log).unwrap_or_default();

    let workers: Vec<String> = eventually("two free workers registered", || {
        let l: Value =
            serde_json::from_str(&env.ok(&["get", "workers", "-o", "json"], None)).ok()?;
        let free: Vec<String> = l["items"]
            .as_array()?
            .iter()
            .filter(|w| w["status"]["phase"] == "Free" && w["spec"]["address"].is_string())
            .map(|w| w["metadata"]["name"].as_str().unwrap_or("").to_string())
            .collect();
        (free.len() == 2).then_some(free)
    });

    // With the operator: the template gets a golden snapshot first (a golden actor in
    // ate-golden is booted, probed ready and suspended), and new actors resume from it.
    let _operator = target.golden.then(|| {
        let log = std::fs::File::create(dir.path().join("operator.log")).expect("log");
        let op = KillOnDrop(
            Command::new(workspace_bin("substrate-operator"))
                .arg("--kubeconfig")
                .arg(&kubeconfig)
                .args(["--resync-seconds", "1"])
                .stdout(log.try_clone().expect("log"))
                .stderr(log)
                .spawn()
                .expect("operator starts"),
        );
        let t = eventually("the template's golden snapshot", || {
            let t = env.get("actortemplate", "counter", Some("team-a"));
            let ready = t["status"]["conditions"]
                .as_array()?
                .iter()
                .any(|c| c["type"] == "Ready" && c["status"] == "True");
            (ready && t["status"]["snapshot"]["uri"].is_string()).then_some(t)
        });
        assert!(
            t["status"]["snapshot"]["uri"]
                .as_str()
                .unwrap()
                .contains("/ate-golden/team-a-counter/"),
            "{t}"
        );
        eventually("both workers free after the golden boot", || {
            let l: Value =
                serde_json::from_str(&env.ok(&["get", "workers", "-o", "json"], None)).ok()?;
            let free = l["items"]
                .as_array()?
                .iter()
                .filter(|w| w["status"]["phase"] == "Free")
                .count();
            (free == 2).then_some(())
        });
        op
    });

    // Create and resume (cold boot, or from the golden snapshot).
    env.ok(
        &["create", "-f", "-"],
        Some(
            &json!({
                "apiVersion": "substrate.ate.dev/v1alpha1", "kind": "Actor",
                "metadata": {"name": "web", "namespace": "team-a"},
                "spec": {"template": {"name": "counter"}},
            })
            .to_string(),
        ),
    );
    let base = "/apis/substrate.ate.dev/v1alpha1/namespaces/team-a/actors/web";
    let bound = env.post(&format!("{base}/resume"));
    let first_worker = bound["status"]["worker"]["name"]
        .as_str()
        .expect("bound")
        .to_string();
    assert!(workers.contains(&first_worker));
    let running = eventually("actor Running", || {
        let a = env.get("actor", "web", Some("team-a"));
        if phase(&a) == "Failed" {
            panic!("actor failed: {a}\n--- node agent log\n{}", show_log());
        }
        (phase(&a) == "Running").then_some(a)
    });
    let addr = running["status"]["worker"]["address"]
        .as_str()
        .expect("address")
        .to_string();
    let url = format!("http://{addr}:8080");
    let mut n = 0;
    for i in 1..=5 {
        let body = http("GET", &format!("{url}/"), None).expect("GET /");
        n = first_int(&body);
        assert_eq!(n, i, "the counter counts requests");
        if target.golden && i == 1 {
            // Restored from the golden snapshot: the process booted before this actor existed.
            let boot: jiff::Timestamp = body
                .split("since boot at ")
                .nth(1)
                .expect("boot time in the body")
                .trim()
                .parse()
                .expect("RFC 3339 boot time");
            let created: jiff::Timestamp = running["metadata"]["creationTimestamp"]
                .as_str()
                .unwrap()
                .parse()
                .unwrap();
            assert!(
                boot < created,
                "booted at {boot}, created at {created}: not from the golden snapshot"
            );
        }
    }
    http(
        "PUT",
        &format!("{url}/file"),
        Some("written before suspend"),
    )
    .expect("PUT /file");

    // Suspend: snapshot in the object store, worker freed.
    let s = env.post(&format!("{base}/suspend"));
    assert_eq!(phase(&s), "Suspending");
    let suspended = eventually("actor Suspended with a snapshot", || {
        let a = env.get("actor", "web", Some("team-a"));
        (phase(&a) == "Suspended" && a["status"]["snapshot"]["uri"].is_string()).then_some(a)
    });
    assert!(suspended["status"]["worker"].is_null(), "{suspended}");
    let uri = suspended["status"]["snapshot"]["uri"].as_str().unwrap();
    assert!(uri.ends_with("/manifest.json"), "{uri}");
    assert!(
        (target.committed)(uri),
        "the manifest and the zstd checkpoint files are in the object store at {uri}"
    );
    eventually("the first worker is free again", || {
        (env.get("worker", &first_worker, None)["status"]["phase"] == "Free").then_some(())
    });
    assert!(
        http("GET", &format!("{url}/"), None).is_none(),
        "the sandbox is gone"
    );

    // Resume on the other worker: cordon the first one through labels + workerSelector.
    env.ok(&["label", "worker", &first_worker, "cordoned=true"], None);
    env.ok(&["patch", "actor", "web", "-n", "team-a", "--type=merge", "-p",
        r#"{"spec":{"workerSelector":{"matchExpressions":[{"key":"cordoned","operator":"DoesNotExist"}]}}}"#], None);
    let bound = env.post(&format!("{base}/resume"));
    let second_worker = bound["status"]["worker"]["name"]
        .as_str()
        .expect("bound")
        .to_string();
    assert_ne!(second_worker, first_worker);
    let running = eventually("actor Running again", || {
        let a = env.get("actor", "web", Some("team-a"));
        if phase(&a) == "Failed" {
            panic!("actor failed: {a}\n--- node agent log\n{}", show_log());
        }
        (phase(&a) == "Running").then_some(a)
    });
    let addr2 = running["status"]["worker"]["address"]
        .as_str()
        .expect("address")
        .to_string();
    assert_ne!(addr2, addr, "a different worker has a different address");
    let url2 = format!("http://{addr2}:8080");
    let next = first_int(&http("GET", &format!("{url2}/"), None).expect("GET / after resume"));
    assert_eq!(
        next,
        n + 1,
        "the counter continued from {n}: memory survived"
    );
    assert_eq!(
        http("GET", &format!("{url2}/file"), None).expect("GET /file"),
        "written before suspend",
        "the file survived"
    );
    drop(agent);
}
