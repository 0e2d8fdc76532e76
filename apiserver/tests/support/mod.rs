//! Test harness for black-box tests through the real `kubectl` and `curl`.
//!
//! Every test gets its own [`World`]: a real Valkey (or Redis) on a free loopback port, an
//! apiserver started in-process on `127.0.0.1:0` inside a runtime owned by the world, a fresh
//! PKI and admin kubeconfig, and a private `HOME` so kubectl's discovery cache never leaks
//! between worlds. Tests are plain `#[test]` functions that run `kubectl` as a child process.
//!
//! Nothing here sleeps to assert: waiting is always polling with a deadline ([`eventually`]).

#![allow(dead_code)] // each test binary uses a different subset

use std::io::{BufRead, BufReader, Write};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use clap::Parser;
use serde_json::Value;

use apiserver::config::Args;
use apiserver::testing::ValkeyServer;

/// How long any "eventually" condition may take on a slow, shared machine.
pub const DEADLINE: Duration = Duration::from_secs(20);

/// The kubectl binary: `$SUBSTRATE_KUBECTL` (set by hack/test.sh) or `kubectl` on PATH.
pub fn kubectl_bin() -> String {
    std::env::var("SUBSTRATE_KUBECTL")
        .ok()
        .filter(|s| !s.is_empty())
        .unwrap_or_else(|| "kubectl".into())
}

/// Whether kubectl can run; prints why a test is skipped when it cannot.
pub fn have_kubectl() -> bool {
    let ok = Command::new(kubectl_bin())
        .args(["version", "--client"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    if !ok {
        eprintln!("skipping: kubectl not found; run hack/test.sh which installs it");
    }
    ok
}

/// Starts a world for a kubectl test, or `None` (after saying so) when kubectl is missing.
pub fn world() -> Option<World> {
    have_kubectl().then(World::start)
}

fn init_tracing() {
    if std::env::var_os("RUST_LOG").is_some() {
        let _ = tracing_subscriber::fmt()
            .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
            .with_test_writer()
            .try_init();
    }
}

/// The result of one kubectl or curl run.
#[derive(Debug, Clone)]
pub struct Out {
    pub status: ExitStatus,
    pub stdout: String,
    pub stderr: String,
}

impl Out {
    pub fn success(&self) -> bool {
        self.status.success()
    }
    pub fn code(&self) -> Option<i32> {
        self.status.code()
    }
}

impl std::fmt::Display for Out {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "exit {:?}\n--- stdout\n{}\n--- stderr\n{}",
            self.status.code(),
            self.stdout,
            self.stderr
        )
    }
}

/// A response from [`World::http`]: status code and body (JSON when it parses).
#[derive(Debug, Clone)]
pub struct Http {
    pub code: u16,
    pub body: String,
}

impl Http {
    pub fn json(&self) -> Value {
        serde_json::from_str(&self.body)
            .unwrap_or_else(|e| panic!("response is not JSON ({e}): {}", self.body))
    }
    /// `message` of a `Status` body.
    pub fn message(&self) -> String {
        self.json()["message"]
            .as_str()
            .unwrap_or_default()
            .to_string()
    }
}

/// Which client identity a raw HTTP request presents.
#[derive(Debug, Clone)]
pub enum Identity {
    /// No client certificate.
    Anonymous,
    /// `<name>.crt`/`<name>.key` from the PKI directory (`admin`, `front-proxy-client`, or one
    /// issued by [`World::issue_user`]).
    Cert(String),
}

/// One apiserver incarnation and the runtime it runs in; dropping the runtime ends every
/// background task of that incarnation (watch cache feed, atespace lifecycle).
struct Server {
    rt: tokio::runtime::Runtime,
    running: Option<apiserver::Running>,
}

impl Server {
    fn stop(mut self) {
        if let Some(r) = self.running.take() {
            let _ = self
                .rt
                .block_on(async { tokio::time::timeout(Duration::from_secs(10), r.stop()).await });
        }
        self.rt.shutdown_timeout(Duration::from_secs(5));
    }
}

/// A Valkey, an apiserver, a PKI, a kubeconfig and a HOME, all private to one test.
pub struct World {
    server: Option<Server>,
    pub valkey: ValkeyServer,
    pub addr: SocketAddr,
    pub dir: tempfile::TempDir,
    pub kubeconfig: PathBuf,
    pub pki_dir: PathBuf,
    pub home: PathBuf,
    key_prefix: String,
    /// Authorizers after the built-in ones, kept across restarts.
    authorizers: Vec<std::sync::Arc<dyn apiserver::authz::Authorizer>>,
    /// More apiserver flags (`--token-auth-file=...`), kept across restarts.
    extra_args: Vec<String>,
}

impl World {
    /// Starts Valkey and the apiserver; panics (failing the test) when either cannot start.
    pub fn start() -> Self {
        Self::start_with_authz(Vec::new())
    }

    /// Starts a world whose apiserver also asks `authorizers` (after the built-in ones).
    pub fn start_with_authz(
        authorizers: Vec<std::sync::Arc<dyn apiserver::authz::Authorizer>>,
    ) -> Self {
        Self::start_full(authorizers, Vec::new())
    }

    /// Starts a world whose apiserver gets more flags.
    pub fn start_with_args(extra_args: Vec<String>) -> Self {
        Self::start_full(Vec::new(), extra_args)
    }

    /// Starts a world on `valkey` (e.g. one that requires a password or an ACL user; the
    /// apiserver gets its [`ValkeyServer::apiserver_flags`]), with the apiserver's default
    /// key prefix `substrate` (the one the shipped ACL rules allow).
    pub fn start_on(valkey: ValkeyServer) -> Self {
        Self::start_on_full(valkey, "substrate", Vec::new(), Vec::new())
    }

    fn start_full(
        authorizers: Vec<std::sync::Arc<dyn apiserver::authz::Authorizer>>,
        extra_args: Vec<String>,
    ) -> Self {
        Self::start_on_full(
            ValkeyServer::start(),
            "substrate-test",
            authorizers,
            extra_args,
        )
    }

    fn start_on_full(
        valkey: ValkeyServer,
        key_prefix: &str,
        authorizers: Vec<std::sync::Arc<dyn apiserver::authz::Authorizer>>,
        extra_args: Vec<String>,
    ) -> Self {
        init_tracing();
        let dir = tempfile::Builder::new()
            .prefix("substrate-kubectl-")
            .tempdir()
            .expect("tempdir");
        let home = dir.path().join("home");
        std::fs::create_dir_all(&home).expect("creating HOME");
        let mut w = World {
            server: None,
            valkey,
            addr: SocketAddr::from(([127, 0, 0, 1], 0)),
            kubeconfig: dir.path().join("kubeconfig"),
            pki_dir: dir.path().join("pki"),
            home,
            dir,
            key_prefix: key_prefix.into(),
            authorizers,
            extra_args,
        };
        w.start_apiserver();
        w
    }

    fn args(&self) -> Args {
        let fixed = [
            "substrate-apiserver".to_string(),
            "--bind=127.0.0.1:0".into(),
            format!("--key-prefix={}", self.key_prefix),
            format!("--pki-dir={}", self.pki_dir.display()),
            format!("--kubeconfig-out={}", self.kubeconfig.display()),
            // Standalone even when the tests run inside a Kubernetes pod.
            "--standalone".into(),
        ];
        Args::try_parse_from(
            fixed
                .into_iter()
                .chain(self.valkey.apiserver_flags())
                .chain(self.extra_args.iter().cloned()),
        )
        .expect("apiserver arguments")
    }

    fn start_apiserver(&mut self) {
        assert!(self.server.is_none(), "apiserver already running");
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .thread_name("apiserver")
            .build()
            .expect("tokio runtime");
        let args = self.args();
        let authorizers = self.authorizers.clone();
        let running = rt
            .block_on(async {
                tokio::time::timeout(
                    Duration::from_secs(30),
                    apiserver::start_with(&args, authorizers),
                )
                .await
            })
            .expect("apiserver did not start within 30s")
            .unwrap_or_else(|e| panic!("apiserver failed to start: {e}"));
        self.addr = running.addr;
        self.server = Some(Server {
            rt,
            running: Some(running),
        });
        // The kubeconfig is written before the listener serves; wait until it answers.
        eventually("apiserver /readyz", || {
            let r = self.http_as(&Identity::Anonymous, "GET", "/readyz", None, &[]);
            (r.code == 200).then_some(())
        });
    }

    /// Stops the apiserver (and every task it started), keeping Valkey and the PKI.
    pub fn stop_apiserver(&mut self) {
        if let Some(s) = self.server.take() {
            s.stop();
        }
    }

    /// Stops the apiserver and starts a new one on the same Valkey (new port, same PKI).
    pub fn restart_apiserver(&mut self) {
        self.stop_apiserver();
        self.start_apiserver();
    }

    /// The registry of the running apiserver, for assertions that kubectl cannot make.
    pub fn registry(&self) -> &apiserver::registry::Registry {
        &self
            .server
            .as_ref()
            .and_then(|s| s.running.as_ref())
            .expect("apiserver running")
            .registry
    }

    /// Runs a future on the apiserver's runtime.
    pub fn block_on<F: std::future::Future>(&self, f: F) -> F::Output {
        self.server
            .as_ref()
            .expect("apiserver running")
            .rt
            .block_on(f)
    }

    pub fn base_url(&self) -> String {
        format!("https://{}", self.addr)
    }

    // --- kubectl ----------------------------------------------------------------------------

    fn command(&self, args: &[&str], env: &[(&str, &str)]) -> Command {
        let mut c = Command::new(kubectl_bin());
        c.args(args)
            .env("KUBECONFIG", &self.kubeconfig)
            .env("HOME", &self.home)
            .env_remove("KUBECTL_EXTERNAL_DIFF")
            .env_remove("KUBE_EDITOR")
            .env_remove("EDITOR")
            .env_remove("KUBECTL_KUBERC")
            .env_remove("KUBECTL_COMMAND_HEADERS")
            .env("NO_COLOR", "1")
            .current_dir(self.dir.path());
        for (k, v) in env {
            c.env(k, v);
        }
        c
    }

    /// Runs kubectl with `stdin` (empty when `None`) and extra environment variables.
    pub fn kubectl_with(&self, args: &[&str], stdin: Option<&str>, env: &[(&str, &str)]) -> Out {
        let mut child = self
            .command(args, env)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap_or_else(|e| panic!("spawning {}: {e}", kubectl_bin()));
        {
            let mut input = child.stdin.take().expect("stdin");
            if let Some(s) = stdin {
                input
                    .write_all(s.as_bytes())
                    .expect("writing kubectl stdin");
            }
        }
        let out = wait_with_deadline(
            child,
            Duration::from_secs(60),
            &format!("kubectl {}", args.join(" ")),
        );
        Out {
            status: out.status,
            stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
        }
    }

    pub fn kubectl(&self, args: &[&str]) -> Out {
        self.kubectl_with(args, None, &[])
    }

    /// Runs kubectl and returns stdout; panics with everything when it fails.
    pub fn ok(&self, args: &[&str]) -> String {
        let out = self.kubectl(args);
        assert!(out.success(), "kubectl {} failed:\n{out}", args.join(" "));
        out.stdout
    }

    /// Runs kubectl expecting failure; returns stderr.
    pub fn fail(&self, args: &[&str]) -> String {
        let out = self.kubectl(args);
        assert!(
            !out.success(),
            "kubectl {} unexpectedly succeeded:\n{out}",
            args.join(" ")
        );
        out.stderr
    }

    /// `kubectl ARGS -f -` with `yaml` on stdin.
    pub fn stdin(&self, yaml: &str, args: &[&str]) -> Out {
        let mut all: Vec<&str> = args.to_vec();
        all.extend(["-f", "-"]);
        self.kubectl_with(&all, Some(yaml), &[])
    }

    /// `kubectl apply -f - ARGS` with `yaml` on stdin; returns stdout, panics on failure.
    pub fn apply_stdin(&self, yaml: &str, args: &[&str]) -> String {
        let mut all = vec!["apply"];
        all.extend_from_slice(args);
        let out = self.stdin(yaml, &all);
        assert!(
            out.success(),
            "kubectl apply failed:\n{out}\n--- input\n{yaml}"
        );
        out.stdout
    }

    /// `kubectl create -f -` with `yaml`; returns stdout, panics on failure.
    pub fn create(&self, yaml: &str) -> String {
        let out = self.stdin(yaml, &["create"]);
        assert!(
            out.success(),
            "kubectl create failed:\n{out}\n--- input\n{yaml}"
        );
        out.stdout
    }

    /// Runs a failing kubectl command with `-v=6` and returns the HTTP status of the last
    /// failed response (`None` if kubectl never got one) and stderr without the log lines.
    pub fn fail_http(&self, args: &[&str], stdin: Option<&str>) -> (Option<u16>, String) {
        let mut all: Vec<&str> = args.to_vec();
        all.push("-v=6");
        let out = self.kubectl_with(&all, stdin, &[]);
        assert!(
            !out.success(),
            "kubectl {} unexpectedly succeeded:\n{out}",
            args.join(" ")
        );
        let mut code = None;
        let mut rest = Vec::new();
        // `server response object: [{` starts a pretty-printed Status that ends with `}]`.
        let mut in_dump = false;
        for line in out.stderr.lines() {
            if in_dump {
                in_dump = line != "}]";
            } else if let Some(c) = response_status(line) {
                if c >= 400 {
                    code = Some(c);
                }
            } else if is_klog_line(line) {
                in_dump = line.trim_end().ends_with("[{");
            } else {
                rest.push(line);
            }
        }
        (code, rest.join("\n"))
    }

    /// `kubectl get RESOURCE NAME -n NS -o jsonpath=EXPR` (no namespace flag for `ns = ""`).
    pub fn jsonpath(&self, resource: &str, name: &str, ns: &str, expr: &str) -> String {
        let jp = format!("-o=jsonpath={expr}");
        let mut args = vec!["get", resource, name, jp.as_str()];
        if !ns.is_empty() {
            args.extend(["-n", ns]);
        }
        self.ok(&args)
    }

    /// The object as JSON (`kubectl get -o json`), or `None` when it does not exist.
    pub fn get_json(&self, resource: &str, name: &str, ns: &str) -> Option<Value> {
        let mut args = vec!["get", resource, name, "-o", "json", "--ignore-not-found"];
        if !ns.is_empty() {
            args.extend(["-n", ns]);
        }
        let out = self.ok(&args);
        (!out.trim().is_empty()).then(|| {
            serde_json::from_str(&out).unwrap_or_else(|e| panic!("kubectl -o json: {e}: {out}"))
        })
    }

    /// Names (`kubectl get -o name` without the `kind/` prefix) of a resource in `ns`.
    pub fn names(&self, resource: &str, ns: &str) -> Vec<String> {
        let mut args = vec!["get", resource, "-o", "name"];
        if ns.is_empty() {
            args.push("-A");
        } else {
            args.extend(["-n", ns]);
        }
        let out = self.ok(&args);
        let mut v: Vec<String> = out
            .lines()
            .filter(|l| !l.is_empty())
            .map(|l| l.rsplit('/').next().unwrap_or(l).to_string())
            .collect();
        v.sort();
        v
    }

    /// Creates an atespace and waits until it can be read.
    pub fn atespace(&self, name: &str) {
        self.create(&atespace_yaml(name));
    }

    /// Creates an actor of template `counter`.
    pub fn actor(&self, ns: &str, name: &str) {
        self.create(&actor_yaml(ns, name, ""));
    }

    /// Starts a long-running kubectl (e.g. `get -w`) whose stdout is read line by line.
    pub fn spawn(&self, args: &[&str]) -> Spawned {
        Spawned::start(self.command(args, &[]), args)
    }

    // --- raw HTTP (curl) --------------------------------------------------------------------

    /// Issues a client certificate for `user` in `groups` and stores it as `<user>.crt/.key`
    /// in the PKI directory, for [`Identity::Cert`]; returns a kubeconfig for that user.
    pub fn issue_user(&self, user: &str, groups: &[&str]) -> PathBuf {
        let pki = apiserver::pki::Pki {
            dir: self.pki_dir.clone(),
        };
        let out = self.dir.path().join(format!("kubeconfig-{user}"));
        apiserver::pki::user_kubeconfig(&pki, &self.base_url(), user, groups, "default", &out)
            .expect("issuing a client certificate and writing its kubeconfig");
        out
    }

    /// A request as the admin.
    pub fn http(&self, method: &str, path: &str, body: Option<(&str, &[u8])>) -> Http {
        self.http_as(&Identity::Cert("admin".into()), method, path, body, &[])
    }

    /// A raw HTTPS request with `curl`. `body` is (content type, bytes); `headers` are extra
    /// `Name: value` headers.
    pub fn http_as(
        &self,
        who: &Identity,
        method: &str,
        path: &str,
        body: Option<(&str, &[u8])>,
        headers: &[&str],
    ) -> Http {
        let mut c = Command::new("curl");
        c.args([
            "-sS",
            "--max-time",
            "30",
            "-X",
            method,
            "-w",
            "\n%{http_code}",
            "--cacert",
        ])
        .arg(self.pki_dir.join("ca.crt"))
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
        if let Identity::Cert(name) = who {
            c.arg("--cert")
                .arg(self.pki_dir.join(format!("{name}.crt")));
            c.arg("--key").arg(self.pki_dir.join(format!("{name}.key")));
        }
        for h in headers {
            c.args(["-H", h]);
        }
        if body.is_some() {
            // curl 7.x over HTTP/2 reports "Stream error in the HTTP/2 framing layer" instead
            // of a response the server sends before reading the whole body (413, 405, 401:
            // the server then resets the stream with NO_ERROR). Go clients (kubectl) and
            // HTTP/1.1 see the response, so requests with a body use HTTP/1.1.
            c.arg("--http1.1");
        }
        if let Some((ct, _)) = body {
            c.args(["-H", &format!("Content-Type: {ct}"), "--data-binary", "@-"]);
        }
        c.arg(format!("{}{path}", self.base_url()));
        let mut child = c.spawn().expect("spawning curl (is it installed?)");
        {
            let mut input = child.stdin.take().expect("stdin");
            if let Some((_, bytes)) = body {
                // The server may answer (413) and close before reading everything.
                let _ = input.write_all(bytes);
            }
        }
        let out = wait_with_deadline(
            child,
            Duration::from_secs(60),
            &format!("curl {method} {path}"),
        );
        let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
        let (body, code) = stdout.rsplit_once('\n').unwrap_or(("", stdout.as_str()));
        let code: u16 = code.trim().parse().unwrap_or(0);
        if code == 0 {
            return Http {
                code,
                body: format!("{body}{}", String::from_utf8_lossy(&out.stderr)),
            };
        }
        Http {
            code,
            body: body.to_string(),
        }
    }

    /// The list `resourceVersion` of a resource (per resource type, so it proves whether
    /// anything of that type was written).
    pub fn list_rv(&self, group: &str, plural: &str) -> String {
        let r = self.http("GET", &format!("/apis/{group}/v1alpha1/{plural}"), None);
        assert_eq!(r.code, 200, "listing {plural}: {}", r.body);
        r.json()["metadata"]["resourceVersion"]
            .as_str()
            .unwrap_or_default()
            .to_string()
    }

    pub fn actors_rv(&self) -> String {
        self.list_rv("substrate.ate.dev", "actors")
    }

    pub fn atespaces_rv(&self) -> String {
        self.list_rv("substrate.ate.dev", "atespaces")
    }

    /// Writes `contents` into the world's directory and returns the path.
    pub fn file(&self, name: &str, contents: &str) -> PathBuf {
        let p = self.dir.path().join(name);
        std::fs::write(&p, contents).expect("writing file");
        p
    }

    /// Writes an executable shell script into the world's directory.
    pub fn script(&self, name: &str, body: &str) -> PathBuf {
        use std::os::unix::fs::PermissionsExt;
        let p = self.file(name, &format!("#!/bin/sh\nset -eu\n{body}\n"));
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o755)).expect("chmod");
        p
    }
}

impl Drop for World {
    fn drop(&mut self) {
        self.stop_apiserver();
    }
}

fn is_klog_line(line: &str) -> bool {
    // `I1122 08:07:01.123456   12345 file.go:123] ...`
    let b = line.as_bytes();
    b.len() > 6
        && matches!(b[0], b'I' | b'W' | b'E')
        && b[1..5].iter().all(u8::is_ascii_digit)
        && b[5] == b' '
}

/// The status code of a kubectl `-v=6` response log line, in either klog format:
/// `"Response" verb="GET" url="..." status="404 Not Found" milliseconds=1` or
/// `GET https://... 404 Not Found in 1 milliseconds`.
fn response_status(line: &str) -> Option<u16> {
    if !is_klog_line(line) {
        return None;
    }
    if let Some(i) = line.find("status=\"") {
        return line[i + 8..].get(..3)?.parse().ok();
    }
    if line.contains(" milliseconds") && line.contains("https://") {
        let after = line.split("https://").nth(1)?;
        let mut parts = after.split_whitespace();
        parts.next()?; // host/path
        return parts.next()?.parse().ok();
    }
    None
}

/// Waits for a child with a deadline, killing it (and failing the test) when it hangs.
fn wait_with_deadline(mut child: Child, limit: Duration, what: &str) -> std::process::Output {
    let stdout = child.stdout.take();
    let stderr = child.stderr.take();
    let read = |r: Option<Box<dyn std::io::Read + Send>>| {
        std::thread::spawn(move || {
            let mut buf = Vec::new();
            if let Some(mut r) = r {
                let _ = r.read_to_end(&mut buf);
            }
            buf
        })
    };
    let out_t = read(stdout.map(|s| Box::new(s) as Box<dyn std::io::Read + Send>));
    let err_t = read(stderr.map(|s| Box::new(s) as Box<dyn std::io::Read + Send>));
    let start = Instant::now();
    let status = loop {
        if let Some(s) = child.try_wait().expect("waiting for child") {
            break s;
        }
        if start.elapsed() > limit {
            let _ = child.kill();
            let _ = child.wait();
            let out = String::from_utf8_lossy(&out_t.join().unwrap_or_default()).into_owned();
            let err = String::from_utf8_lossy(&err_t.join().unwrap_or_default()).into_owned();
            panic!("{what} did not finish within {limit:?}\n--- stdout\n{out}\n--- stderr\n{err}");
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    std::process::Output {
        status,
        stdout: out_t.join().unwrap_or_default(),
        stderr: err_t.join().unwrap_or_default(),
    }
}

/// A running child process whose stdout lines arrive on a channel; killed on drop.
pub struct Spawned {
    child: Child,
    lines: mpsc::Receiver<String>,
    seen: Vec<String>,
    stderr: std::sync::Arc<std::sync::Mutex<String>>,
    stderr_reader: Option<std::thread::JoinHandle<()>>,
    what: String,
}

impl Spawned {
    fn start(mut cmd: Command, args: &[&str]) -> Self {
        let mut child = cmd
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap_or_else(|e| panic!("spawning kubectl: {e}"));
        let (tx, rx) = mpsc::channel();
        let stdout = child.stdout.take().expect("stdout");
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        let stderr_buf = std::sync::Arc::new(std::sync::Mutex::new(String::new()));
        let sink = stderr_buf.clone();
        let stderr = child.stderr.take().expect("stderr");
        let stderr_reader = std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines() {
                let Ok(line) = line else { break };
                if let Ok(mut s) = sink.lock() {
                    s.push_str(&line);
                    s.push('\n');
                }
            }
        });
        Spawned {
            child,
            lines: rx,
            seen: Vec::new(),
            stderr: stderr_buf,
            stderr_reader: Some(stderr_reader),
            what: format!("kubectl {}", args.join(" ")),
        }
    }

    /// Waits (up to [`DEADLINE`]) for a new stdout line satisfying `pred`; returns it.
    pub fn expect_line(&mut self, what: &str, pred: impl Fn(&str) -> bool) -> String {
        let deadline = Instant::now() + DEADLINE;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.lines.recv_timeout(left) {
                Ok(line) => {
                    self.seen.push(line.clone());
                    if pred(&line) {
                        return line;
                    }
                }
                Err(_) => {
                    let stderr = self.stderr.lock().map(|s| s.clone()).unwrap_or_default();
                    let status = self.child.try_wait().ok().flatten();
                    panic!(
                        "{}: no line with {what} within {DEADLINE:?} (exit: {status:?})\n--- stdout so far\n{}\n--- stderr\n{stderr}",
                        self.what,
                        self.seen.join("\n")
                    );
                }
            }
        }
    }

    /// Every stdout line read so far.
    pub fn seen(&self) -> &[String] {
        &self.seen
    }

    /// Waits (up to [`DEADLINE`]) for the process to exit; returns its status, all of its
    /// stdout and its stderr.
    pub fn wait_exit(mut self) -> Out {
        let deadline = Instant::now() + DEADLINE;
        let status = loop {
            if let Some(s) = self.child.try_wait().expect("waiting for child") {
                break s;
            }
            if Instant::now() > deadline {
                let stderr = self.stderr.lock().map(|s| s.clone()).unwrap_or_default();
                panic!(
                    "{} did not exit within {DEADLINE:?}\n--- stdout so far\n{}\n--- stderr\n{stderr}",
                    self.what,
                    self.seen.join("\n")
                );
            }
            std::thread::sleep(Duration::from_millis(20));
        };
        // The readers end at EOF, which follows the exit.
        while let Ok(line) = self.lines.recv_timeout(Duration::from_secs(5)) {
            self.seen.push(line);
        }
        if let Some(t) = self.stderr_reader.take() {
            let _ = t.join();
        }
        let stderr = self.stderr.lock().map(|s| s.clone()).unwrap_or_default();
        Out {
            status,
            stdout: self.seen.join("\n"),
            stderr,
        }
    }
}

impl Drop for Spawned {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Polls `f` until it returns `Some` or [`DEADLINE`] passes (then panics naming `what`).
pub fn eventually<T>(what: &str, mut f: impl FnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + DEADLINE;
    let mut pause = Duration::from_millis(25);
    loop {
        if let Some(v) = f() {
            return v;
        }
        if Instant::now() > deadline {
            panic!("timed out after {DEADLINE:?} waiting for {what}");
        }
        std::thread::sleep(pause);
        pause = (pause * 2).min(Duration::from_millis(400));
    }
}

/// Asserts that `haystack` contains `needle`, showing both when it does not.
#[track_caller]
pub fn assert_contains(haystack: &str, needle: &str) {
    assert!(
        haystack.contains(needle),
        "expected to find\n  {needle}\nin\n{haystack}"
    );
}

/// Asserts that `haystack` does not contain `needle`.
#[track_caller]
pub fn assert_not_contains(haystack: &str, needle: &str) {
    assert!(
        !haystack.contains(needle),
        "did not expect to find\n  {needle}\nin\n{haystack}"
    );
}

pub fn atespace_yaml(name: &str) -> String {
    format!(
        "apiVersion: substrate.ate.dev/v1alpha1\nkind: Atespace\nmetadata:\n  name: \"{name}\"\n"
    )
}

/// An Actor manifest; `extra_spec` lines (already indented by two spaces) are appended to spec.
pub fn actor_yaml(ns: &str, name: &str, extra_spec: &str) -> String {
    format!(
        "apiVersion: substrate.ate.dev/v1alpha1\nkind: Actor\nmetadata:\n  name: \"{name}\"\n  namespace: {ns}\nspec:\n  template:\n    name: counter\n{extra_spec}"
    )
}

/// A path in a temp dir as `&str`.
pub fn path_str(p: &Path) -> &str {
    p.to_str().expect("UTF-8 path")
}
