//! Harness of Substrate's end-to-end tests (`tests/tests/*.rs`): a whole system on this
//! machine, all real — Valkey, the apiserver (in-process), a local OCI registry (Debian's
//! `docker-registry`) with the `counter` demo image, the node agent binary running executors
//! with gVisor `runsc` sandboxes in their own network namespaces, and on request the
//! operator and the router (their binaries).
//!
//! The binaries come from the workspace's target directory: run `cargo build --workspace
//! --bins` first (hack/test.sh does). Tests need root, runsc, kubectl, curl and
//! docker-registry; [`System::start`] returns `None` (after printing why) when they are
//! missing, unless `SUBSTRATE_REQUIRE_RUNSC=1` (set by hack/test.sh), which turns a missing
//! prerequisite into a failure.
//!
//! Every system gets its own node name, worker address range and worker index base, so tests
//! can run at once: see [`Options`].
//!
//! [`envtest`] is the other harness: a real Kubernetes control plane (etcd, kube-apiserver,
//! kube-controller-manager from `KUBEBUILDER_ASSETS`) with Substrate registered as an
//! aggregated API; [`standalone`] is the apiserver alone with its own RBAC; [`tenancy`] is the
//! tenant matrix of issue 13, runnable against either.

use std::net::{SocketAddr, TcpListener, UdpSocket};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::{Value, json};

/// How long [`eventually`] waits.
pub const DEADLINE: Duration = Duration::from_secs(120);

/// Whether a missing prerequisite must fail the test instead of skipping it.
pub fn required() -> bool {
    std::env::var("SUBSTRATE_REQUIRE_RUNSC").is_ok_and(|v| v == "1")
}

fn is_root() -> bool {
    Command::new("id")
        .arg("-u")
        .output()
        .is_ok_and(|o| String::from_utf8_lossy(&o.stdout).trim() == "0")
}

fn on_path(tool: &str) -> bool {
    Command::new("sh")
        .args(["-c", &format!("command -v {tool}")])
        .stdout(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

/// Whether the prerequisites are here; prints why not (or panics when they are required).
pub fn prerequisites() -> bool {
    let mut missing = Vec::new();
    if !is_root() {
        missing.push("root".to_string());
    }
    for tool in ["runsc", "kubectl", "curl"] {
        if !on_path(tool) {
            missing.push(tool.to_string());
        }
    }
    if !Path::new(nodeagent::images::testing::DEFAULT_REGISTRY_BINARY).exists()
        && std::env::var_os("SUBSTRATE_DOCKER_REGISTRY").is_none()
    {
        missing.push("docker-registry".into());
    }
    if missing.is_empty() {
        return true;
    }
    let msg = format!(
        "end-to-end test needs {}; run hack/test.sh, which installs them",
        missing.join(", ")
    );
    assert!(!required(), "{msg}");
    eprintln!("skipping: {msg}");
    false
}

/// `target/<profile>/` (where the workspace's binaries are).
pub fn bin_dir() -> PathBuf {
    let exe = std::env::current_exe().expect("test executable path");
    // target/<profile>/deps/<test>
    exe.parent()
        .and_then(Path::parent)
        .expect("target dir")
        .to_path_buf()
}

/// A binary of the workspace (panics with the command to build it when missing).
pub fn workspace_bin(name: &str) -> PathBuf {
    let p = bin_dir().join(name);
    assert!(
        p.exists(),
        "{} is missing: build the workspace's binaries first (`cargo build --workspace --bins`; hack/test.sh does)",
        p.display()
    );
    p
}

/// Polls `f` every 250 ms until it returns `Some`, for at most [`DEADLINE`].
pub fn eventually<T>(what: &str, f: impl FnMut() -> Option<T>) -> T {
    eventually_within(DEADLINE, what, f)
}

/// [`eventually`] with another deadline.
pub fn eventually_within<T>(deadline: Duration, what: &str, mut f: impl FnMut() -> Option<T>) -> T {
    let start = Instant::now();
    loop {
        if let Some(v) = f() {
            return v;
        }
        assert!(
            start.elapsed() < deadline,
            "timed out after {deadline:?} waiting for: {what}"
        );
        std::thread::sleep(Duration::from_millis(250));
    }
}

/// A child process stopped with SIGTERM (then SIGKILL after 40 s) when dropped.
pub struct KillOnDrop(pub Child);

impl KillOnDrop {
    pub fn pid(&self) -> u32 {
        self.0.id()
    }

    /// SIGKILL now (a crash), and reap.
    pub fn kill9(mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
        std::mem::forget(self);
    }
}

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

/// `kubectl` with the system's kubeconfig and a private HOME (no user cache).
#[derive(Debug, Clone)]
pub struct Kubectl {
    pub kubeconfig: PathBuf,
    pub home: PathBuf,
}

impl Kubectl {
    /// Runs kubectl; (success, stdout, stderr).
    pub fn run(&self, args: &[&str], stdin: Option<&str>) -> (bool, String, String) {
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

    /// Runs kubectl and asserts success; stdout.
    pub fn ok(&self, args: &[&str], stdin: Option<&str>) -> String {
        let (ok, out, err) = self.run(args, stdin);
        assert!(ok, "kubectl {args:?} failed:\n{out}\n{err}");
        out
    }

    /// `kubectl create -f -` of a JSON object.
    pub fn create(&self, obj: &Value) {
        self.ok(&["create", "-f", "-"], Some(&obj.to_string()));
    }

    /// `kubectl get KIND NAME [-n NS] -o json`.
    pub fn get(&self, kind: &str, name: &str, ns: Option<&str>) -> Value {
        let mut args = vec!["get", kind, name, "-o", "json"];
        if let Some(ns) = ns {
            args.extend(["-n", ns]);
        }
        serde_json::from_str(&self.ok(&args, None)).expect("JSON")
    }

    /// `kubectl get KIND [-A] -o json` items.
    pub fn list(&self, kind: &str) -> Vec<Value> {
        let l: Value =
            serde_json::from_str(&self.ok(&["get", kind, "-A", "-o", "json"], None)).expect("JSON");
        l["items"].as_array().cloned().unwrap_or_default()
    }

    /// POST `{}` to an API path (the resume and suspend subresources).
    pub fn post(&self, path: &str) -> Value {
        serde_json::from_str(&self.ok(&["create", "--raw", path, "-f", "-"], Some("{}")))
            .expect("JSON")
    }
}

/// The API path of an actor.
pub fn actor_path(ns: &str, name: &str) -> String {
    format!("/apis/substrate.ate.dev/v1alpha1/namespaces/{ns}/actors/{name}")
}

/// `curl -sS --fail` (5 s); the body on success.
pub fn http(method: &str, url: &str, body: Option<&str>) -> Option<String> {
    let mut c = Command::new("curl");
    c.args(["-sS", "--fail", "--max-time", "5", "-X", method, url]);
    if let Some(b) = body {
        c.args(["--data-binary", b]);
    }
    let out = c.output().ok()?;
    if !out.status.success() {
        // Kept in the test's output: a request that fails where it should not says why.
        eprintln!(
            "{method} {url}: curl {}: {}",
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        );
        return None;
    }
    Some(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// The first integer in `s` (the counter's answer starts with its count).
pub fn first_int(s: &str) -> u64 {
    let digits: String = s
        .chars()
        .skip_while(|c| !c.is_ascii_digit())
        .take_while(char::is_ascii_digit)
        .collect();
    digits
        .parse()
        .unwrap_or_else(|_| panic!("no integer in {s:?}"))
}

/// The status ("True"/"False") of condition `type_` of an object.
pub fn condition<'a>(obj: &'a Value, type_: &str) -> Option<&'a str> {
    obj["status"]["conditions"]
        .as_array()?
        .iter()
        .find(|c| c["type"] == type_)?["status"]
        .as_str()
}

/// `status.phase` of an object ("" when unset).
pub fn phase(a: &Value) -> &str {
    a["status"]["phase"].as_str().unwrap_or("")
}

/// A free TCP port on 127.0.0.1 (and the same UDP port free as well).
pub fn free_port() -> u16 {
    for _ in 0..50 {
        let t = TcpListener::bind("127.0.0.1:0").expect("bind");
        let port = t.local_addr().expect("addr").port();
        if UdpSocket::bind(("127.0.0.1", port)).is_ok() {
            return port;
        }
    }
    panic!("no port free for both TCP and UDP");
}

/// What kind of system to start.
#[derive(Debug, Clone)]
pub struct Options {
    /// Node name (also names the workers: `<node>-<pool>-<i>`).
    pub node: String,
    /// Worker address range; an unreachable route for all of it is added to the host.
    pub range: String,
    /// First worker index (host veth names and address blocks); disjoint per system.
    pub index_base: u32,
    /// Workers in the pool.
    pub workers: u32,
    /// `--snapshot-url` of the node agent (None: a `file://` directory of the system's).
    pub snapshot_url: Option<String>,
    /// Extra environment of the node agent (S3 endpoint and credentials).
    pub agent_env: Vec<(String, String)>,
    /// Extra executor arguments (`--executor-arg` of the node agent).
    pub executor_args: Vec<String>,
    /// Extra arguments of the node agent itself (e.g. `--gateway-listen=...`).
    pub agent_args: Vec<String>,
    /// Wait for the workers to be free before returning from [`System::start`].
    pub wait_workers: bool,
    /// Run the node agent under `substrate-supervise` (as `hack/up.sh` does), which
    /// restarts it when it dies; see [`System::kill9_supervised_agent`].
    pub supervised_agent: bool,
    /// Run the apiserver as its own process (the `substrate-apiserver` binary) instead of
    /// in the test's process, so that it can be killed and restarted; see
    /// [`System::kill9_apiserver`].
    pub apiserver_process: bool,
    /// The apiserver's `--token-auth-file` (static bearer tokens; in-process apiserver only).
    pub token_auth_file: Option<PathBuf>,
}

impl Options {
    pub fn new(node: &str, range: &str, index_base: u32) -> Self {
        Options {
            node: node.into(),
            range: range.into(),
            index_base,
            workers: 2,
            snapshot_url: None,
            agent_env: Vec::new(),
            executor_args: Vec::new(),
            agent_args: Vec::new(),
            wait_workers: true,
            supervised_agent: false,
            apiserver_process: false,
            token_auth_file: None,
        }
    }
}

/// Addresses of a started router.
#[derive(Debug, Clone, Copy)]
pub struct RouterAddrs {
    pub http: SocketAddr,
    pub admin: SocketAddr,
    pub dns: SocketAddr,
}

/// A whole system; everything stops when it is dropped.
pub struct System {
    pub opts: Options,
    pub kube: Kubectl,
    pub kubeconfig: PathBuf,
    /// The counter image by digest.
    pub image: String,
    /// The pool (`WorkerPool` in `default`) and template (`counter` in `team-a`) names.
    pub pool: String,
    agent: Option<KillOnDrop>,
    operator: Option<KillOnDrop>,
    router: Option<(KillOnDrop, RouterAddrs)>,
    pub rt: tokio::runtime::Runtime,
    _registry: nodeagent::images::testing::Registry,
    control: Control,
    dir: tempfile::TempDir,
}

/// Where a system's API lives.
enum Control {
    /// Substrate's standalone apiserver over its own Valkey: it serves every kind, and every
    /// component runs with its admin kubeconfig (`--mode=standalone`).
    Standalone {
        apiserver: Box<Apiserver>,
        valkey: Box<apiserver::testing::ValkeyServer>,
    },
    /// A Kubernetes control plane with Substrate aggregated into it ([`System::start_cluster`]).
    Cluster(Box<ClusterControl>),
}

/// A cluster-mode system's control plane: envtest (etcd, kube-apiserver,
/// kube-controller-manager) and Substrate's apiserver registered as its APIService.
pub struct ClusterControl {
    // Declared first: stopped before the control plane it is registered with.
    pub substrate: envtest::substrate::Substrate,
    pub env: envtest::Envtest,
    /// Each component's ServiceAccount (`substrate-system/substrate-<component>`), talking to
    /// kube-apiserver with a token.
    identities: std::collections::BTreeMap<String, envtest::Identity>,
}

/// The name Substrate's serving certificate carries (its Service in a cluster).
pub const SUBSTRATE_TLS_NAME: &str = "substrate-apiserver.substrate-system.svc";

/// The RBAC of the components in a cluster (ServiceAccounts, ClusterRoles and bindings).
pub const COMPONENT_RBAC: [&str; 3] = [
    "config/rbac/operator.yaml",
    "config/rbac/nodeagent.yaml",
    "config/rbac/router.yaml",
];

impl System {
    /// Starts Valkey, the apiserver and the registry (with the counter image), creates the
    /// pool, the `team-a` atespace and the `counter` template there, then starts the node
    /// agent and waits for its workers. `None` when the prerequisites are missing.
    pub fn start(opts: Options) -> Option<System> {
        if !prerequisites() {
            return None;
        }
        let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
        let dir = tempfile::Builder::new()
            .prefix("substrate-e2e-")
            .tempdir()
            .expect("tempdir");
        let home = dir.path().join("home");
        std::fs::create_dir_all(&home).expect("home");
        let valkey = apiserver::testing::ValkeyServer::start();
        let rt = tokio::runtime::Runtime::new().expect("runtime");
        let (running, kubeconfig) = if opts.apiserver_process {
            ApiserverProcess::start(&valkey, dir.path())
        } else {
            let (mut args, kubeconfig) = apiserver::testing::apiserver_args(&valkey, dir.path());
            args.token_auth_file = opts.token_auth_file.clone();
            let running = rt
                .block_on(apiserver::start(&args))
                .expect("apiserver starts");
            (Apiserver::InProcess(running), kubeconfig)
        };
        let kube = Kubectl {
            kubeconfig: kubeconfig.clone(),
            home,
        };
        let control = Control::Standalone {
            apiserver: Box::new(running),
            valkey: Box::new(valkey),
        };
        Some(Self::start_with(opts, control, kube, kubeconfig, rt, dir))
    }

    /// [`System::start`] in cluster mode: a Kubernetes control plane (envtest: etcd,
    /// kube-apiserver 1.25, kube-controller-manager) with Substrate's apiserver (in the test's
    /// process) registered as its APIService, the components' ServiceAccounts and RBAC from
    /// [`COMPONENT_RBAC`]; the pool and the template are CRD objects of kube-apiserver, the
    /// atespace `team-a` is created through it (its Namespace exists beforehand), and every
    /// component runs with `--mode=cluster` and its ServiceAccount's token, reaching
    /// Substrate's apiserver directly. The system's kubectl is the cluster admin's, through
    /// kube-apiserver (the aggregator). `None` when the prerequisites or `KUBEBUILDER_ASSETS`
    /// are missing.
    pub fn start_cluster(opts: Options) -> Option<System> {
        assert!(
            !opts.apiserver_process && opts.token_auth_file.is_none(),
            "cluster mode runs Substrate's apiserver in the test's process, delegating authentication"
        );
        if !prerequisites() {
            return None;
        }
        let env = envtest::Envtest::start()?;
        let substrate = envtest::substrate::Substrate::start(&env);
        let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
        for f in COMPONENT_RBAC {
            env.kubectl()
                .ok(&["apply", "-f", &root.join(f).display().to_string()], None);
        }
        let identities = ["operator", "nodeagent", "router"]
            .into_iter()
            .map(|c| {
                let id = env.service_account_identity(
                    envtest::SUBSTRATE_NAMESPACE,
                    &format!("substrate-{c}"),
                );
                (c.to_string(), id)
            })
            .collect();
        // The template's namespace: kube-apiserver keeps namespaced CRD objects only in
        // namespaces that exist (the operator adopts it for the atespace).
        env.ensure_namespace("team-a");
        let dir = tempfile::Builder::new()
            .prefix("substrate-e2e-cluster-")
            .tempdir()
            .expect("tempdir");
        let kube = env.admin.kubectl.clone();
        let kubeconfig = env.admin.kubeconfig.clone();
        let rt = tokio::runtime::Runtime::new().expect("runtime");
        let control = Control::Cluster(Box::new(ClusterControl {
            substrate,
            env,
            identities,
        }));
        Some(Self::start_with(opts, control, kube, kubeconfig, rt, dir))
    }

    /// The rest of a start, whatever the control plane: the registry and image, the pool, the
    /// atespace and template, the node agent.
    fn start_with(
        opts: Options,
        control: Control,
        kube: Kubectl,
        kubeconfig: PathBuf,
        rt: tokio::runtime::Runtime,
        dir: tempfile::TempDir,
    ) -> System {
        let registry = nodeagent::images::testing::Registry::start().expect("registry starts");
        let pushed = rt
            .block_on(nodeagent::images::testing::push_counter(
                &registry,
                "substrate/counter:e2e",
            ))
            .expect("counter image built and pushed");
        let pool = "e2e".to_string();
        kube.create(&json!({
            "apiVersion": "ate.dev/v1alpha1", "kind": "WorkerPool",
            "metadata": {"name": pool, "namespace": "default"},
            "spec": {"replicas": opts.workers, "workerLabels": {"tier": "test"}},
        }));
        kube.create(&json!({"apiVersion": "substrate.ate.dev/v1alpha1", "kind": "Atespace", "metadata": {"name": "team-a"}}));
        kube.create(&json!({
            "apiVersion": "ate.dev/v1alpha1", "kind": "ActorTemplate",
            "metadata": {"name": "counter", "namespace": "team-a"},
            "spec": {
                "containers": [{"name": "counter", "image": pushed.reference,
                    "env": [{"name": "DATA_FILE", "value": "/data/file"}],
                    "ports": [{"containerPort": 8080}]}],
                "workerPoolRef": {"name": pool},
                "readinessProbe": {"httpGet": {"path": "/healthz", "port": 8080}, "periodSeconds": 1},
                // Actors of every atespace use it (an empty selector matches them all).
                "sharing": {"atespaceSelector": {}},
            },
        }));
        let mut sys = System {
            opts,
            kube,
            kubeconfig,
            image: pushed.reference,
            pool,
            agent: None,
            operator: None,
            router: None,
            rt,
            _registry: registry,
            control,
            dir,
        };
        sys.start_agent();
        if sys.opts.wait_workers {
            sys.wait_free_workers(sys.opts.workers as usize);
        }
        sys
    }

    /// The control plane of a cluster-mode system (panics in standalone mode).
    pub fn cluster(&self) -> &ClusterControl {
        match &self.control {
            Control::Cluster(c) => c,
            Control::Standalone { .. } => panic!("not a cluster-mode system"),
        }
    }

    /// The API flags of `component` (`operator`, `nodeagent`, `router`): standalone, the
    /// admin kubeconfig of Substrate's apiserver; in cluster mode, its ServiceAccount's
    /// kubeconfig of kube-apiserver and Substrate's address, reached directly (the router is
    /// also given Substrate's CA explicitly; the others use the cluster's, which is the same).
    pub fn client_args(&self, component: &str) -> Vec<String> {
        match &self.control {
            Control::Standalone { .. } => vec![
                "--mode=standalone".into(),
                format!("--kubeconfig={}", self.kubeconfig.display()),
            ],
            Control::Cluster(c) => {
                let id = c
                    .identities
                    .get(component)
                    .unwrap_or_else(|| panic!("no ServiceAccount for {component}"));
                let mut args = vec![
                    "--mode=cluster".into(),
                    format!("--kubeconfig={}", id.kubeconfig.display()),
                    format!("--substrate-server=https://{}", c.substrate.addr),
                    format!("--substrate-tls-server-name={SUBSTRATE_TLS_NAME}"),
                ];
                if component == "router" {
                    args.push(format!(
                        "--substrate-ca-file={}",
                        c.env.pki.ca.files.cert.display()
                    ));
                }
                args
            }
        }
    }

    /// The system's temporary directory (logs, node state).
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// Registry host (`127.0.0.1:port`).
    pub fn registry_host(&self) -> String {
        self._registry.host()
    }

    fn log_file(&self, name: &str) -> std::fs::File {
        std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir().join(format!("{name}.log")))
            .expect("log file")
    }

    /// A component's log so far, without terminal colour codes.
    /// Pushes another version of the counter image as `repository_and_tag`: the same program
    /// with a `/version` file holding `version` (so a different root filesystem). Returns the
    /// reference by digest.
    pub fn push_counter_version(&self, repository_and_tag: &str, version: &str) -> String {
        let file = self.dir().join(format!("version-{version}"));
        std::fs::write(&file, version).expect("version file");
        self.rt
            .block_on(nodeagent::images::testing::push_counter_with(
                &self._registry,
                repository_and_tag,
                |spec| {
                    spec.files.push(nodeagent::images::FileSpec {
                        source: file.clone(),
                        dest: "/version".into(),
                        mode: Some(0o644),
                    })
                },
            ))
            .expect("counter image version built and pushed")
            .reference
    }

    pub fn log(&self, name: &str) -> String {
        nodeagent::agent::strip_ansi(
            &std::fs::read_to_string(self.dir().join(format!("{name}.log"))).unwrap_or_default(),
        )
    }

    /// Starts the node agent (again: it adopts the executors and sandboxes still running).
    pub fn start_agent(&mut self) {
        assert!(self.agent.is_none(), "the node agent already runs");
        let o = &self.opts;
        let mut c = if o.supervised_agent {
            let mut c = Command::new(workspace_bin("substrate-supervise"));
            c.args(["--name", "nodeagent", "--child-pidfile"])
                .arg(self.agent_pidfile())
                .arg("--")
                .arg(workspace_bin("substrate-nodeagent"));
            c
        } else {
            Command::new(workspace_bin("substrate-nodeagent"))
        };
        let snapshots = o
            .snapshot_url
            .clone()
            .unwrap_or_else(|| format!("file://{}", self.dir.path().join("snapshots").display()));
        c.args(self.client_args("nodeagent"))
            .args(["--node", &o.node, "--pool-namespace", "default"])
            .arg("--state-dir")
            .arg(self.dir.path().join("node"))
            .arg("--snapshot-url")
            .arg(&snapshots)
            .arg("--executor-bin")
            .arg(workspace_bin("substrate-executor"))
            .arg("--insecure-registries")
            .arg(self._registry.host())
            .args([
                "--heartbeat-seconds",
                "1",
                "--executor-arg=--on-shutdown=kill",
            ])
            .arg(format!("--executor-arg=--addr-range={}", o.range))
            .arg(format!("--worker-index-base={}", o.index_base))
            .args(
                o.executor_args
                    .iter()
                    .map(|a| format!("--executor-arg={a}")),
            )
            .args(&o.agent_args)
            .envs(o.agent_env.iter().map(|(k, v)| (k, v)))
            .stdout(self.log_file("nodeagent"))
            .stderr(self.log_file("nodeagent"));
        self.agent = Some(KillOnDrop(c.spawn().expect("node agent starts")));
    }

    fn agent_pidfile(&self) -> PathBuf {
        self.dir.path().join("nodeagent.pid")
    }

    /// The pid of the node agent process (under its supervisor, when supervised).
    pub fn agent_pid(&self) -> Option<u32> {
        if self.opts.supervised_agent {
            let pid: u32 = std::fs::read_to_string(self.agent_pidfile())
                .ok()?
                .trim()
                .parse()
                .ok()?;
            Path::new(&format!("/proc/{pid}")).exists().then_some(pid)
        } else {
            self.agent.as_ref().map(KillOnDrop::pid)
        }
    }

    /// SIGKILLs the supervised node agent (a crash; its supervisor restarts it); its pid.
    pub fn kill9_supervised_agent(&self) -> u32 {
        assert!(
            self.opts.supervised_agent,
            "the node agent is not supervised"
        );
        let pid = eventually("the supervised node agent's pid", || self.agent_pid());
        let ok = Command::new("kill")
            .args(["-KILL", &pid.to_string()])
            .status()
            .is_ok_and(|s| s.success());
        assert!(ok, "kill -9 {pid}");
        pid
    }

    /// SIGKILLs the node agent (its executors and sandboxes keep running, as after a crash).
    pub fn kill9_agent(&mut self) {
        if let Some(a) = self.agent.take() {
            a.kill9();
        }
    }

    /// Stops the node agent cleanly (its executors kill their sandboxes).
    pub fn stop_agent(&mut self) {
        self.agent.take();
    }

    /// Pids of this system's executors (`substrate-executor --worker-name <node>-...` with
    /// their socket in this system's directory).
    pub fn executor_pids(&self) -> Vec<(u32, String)> {
        let mut out = Vec::new();
        let Ok(dir) = std::fs::read_dir("/proc") else {
            return out;
        };
        let prefix = format!("{}-", self.opts.node);
        let mine = self.dir.path().to_string_lossy().into_owned();
        for e in dir.flatten() {
            let Some(pid) = e.file_name().to_str().and_then(|s| s.parse::<u32>().ok()) else {
                continue;
            };
            let Ok(cmd) = std::fs::read(e.path().join("cmdline")) else {
                continue;
            };
            let args: Vec<String> = cmd
                .split(|b| *b == 0)
                .map(|a| String::from_utf8_lossy(a).into_owned())
                .collect();
            if !args
                .first()
                .is_some_and(|a| a.ends_with("substrate-executor"))
                || !args.iter().any(|a| a.contains(&mine))
            {
                continue;
            }
            let worker = args.iter().enumerate().find_map(|(i, a)| {
                a.strip_prefix("--worker-name=")
                    .map(str::to_string)
                    .or_else(|| (a == "--worker-name").then(|| args.get(i + 1).cloned())?)
            });
            if let Some(w) = worker.filter(|w| w.starts_with(&prefix)) {
                out.push((pid, w));
            }
        }
        out
    }

    /// Starts the operator (1 s resync; it garbage-collects the node agent's snapshot store).
    pub fn start_operator(&mut self) {
        self.start_operator_with(&[]);
    }

    /// Starts the router binary with `extra` flags and waits until it is ready.
    /// The ports are probed free first; another process can take one before the
    /// router binds it, so a router that exits during start-up is retried on
    /// fresh ports.
    pub fn start_router(&mut self, extra: &[&str]) -> RouterAddrs {
        for _ in 0..5 {
            let addrs = RouterAddrs {
                http: SocketAddr::from(([127, 0, 0, 1], free_port())),
                admin: SocketAddr::from(([127, 0, 0, 1], free_port())),
                dns: SocketAddr::from(([127, 0, 0, 1], free_port())),
            };
            let c = Command::new(workspace_bin("substrate-router"))
                .args(self.client_args("router"))
                .arg(format!("--listen={}", addrs.http))
                .arg(format!("--admin-listen={}", addrs.admin))
                .arg(format!("--dns-listen={}", addrs.dns))
                .args(extra)
                .stdout(self.log_file("router"))
                .stderr(self.log_file("router"))
                .spawn()
                .expect("router starts");
            let mut router = KillOnDrop(c);
            let ready = eventually("the router is ready or has exited", || {
                if let Ok(Some(status)) = router.0.try_wait() {
                    eprintln!("router exited during start-up ({status}); retrying on other ports");
                    return Some(false);
                }
                http("GET", &format!("http://{}/readyz", addrs.admin), None).map(|_| true)
            });
            if ready {
                self.router = Some((router, addrs));
                return addrs;
            }
            // Already reaped: nothing to signal (its pid may be reused).
            std::mem::forget(router);
        }
        panic!("the router exited during start-up 5 times; see its log");
    }

    /// SIGKILLs the router (a crash: nothing it held in memory is written anywhere).
    pub fn kill9_router(&mut self) {
        if let Some((r, _)) = self.router.take() {
            r.kill9();
        }
    }

    /// The router process's pid.
    pub fn router_pid(&self) -> Option<u32> {
        self.router.as_ref().map(|(r, _)| r.pid())
    }

    /// Waits for `n` Free workers of this node with an address; their names.
    pub fn wait_free_workers(&self, n: usize) -> Vec<String> {
        eventually(&format!("{n} free workers registered"), || {
            let free: Vec<String> = self
                .workers()
                .iter()
                .filter(|w| w["status"]["phase"] == "Free" && w["spec"]["address"].is_string())
                .map(|w| w["metadata"]["name"].as_str().unwrap_or("").to_string())
                .collect();
            (free.len() == n).then_some(free)
        })
    }

    /// This node's workers.
    pub fn workers(&self) -> Vec<Value> {
        self.kube
            .list("workers")
            .into_iter()
            .filter(|w| w["spec"]["node"] == self.opts.node.as_str())
            .collect()
    }

    /// Creates actor `name` in `team-a` from the counter template.
    pub fn create_actor(&self, name: &str, extra_spec: Value) {
        let mut spec = json!({"template": {"name": "counter"}});
        if let (Some(s), Some(e)) = (spec.as_object_mut(), extra_spec.as_object()) {
            s.extend(e.clone());
        }
        self.kube.create(&json!({
            "apiVersion": "substrate.ate.dev/v1alpha1", "kind": "Actor",
            "metadata": {"name": name, "namespace": "team-a"},
            "spec": spec,
        }));
    }

    /// The actor `name` in `team-a`.
    pub fn actor(&self, name: &str) -> Value {
        self.kube.get("actor", name, Some("team-a"))
    }

    /// POSTs `resume` or `suspend` for actor `name` in `team-a`.
    pub fn action(&self, name: &str, action: &str) -> Value {
        self.kube
            .post(&format!("{}/{action}", actor_path("team-a", name)))
    }

    /// Waits for the actor to reach `want` (panics with the agent's log if it fails).
    pub fn wait_phase(&self, name: &str, want: &str) -> Value {
        eventually(&format!("actor {name} {want}"), || {
            let a = self.actor(name);
            if phase(&a) == "Failed" && want != "Failed" {
                panic!(
                    "actor failed: {a}\n--- node agent log\n{}",
                    self.log("nodeagent")
                );
            }
            (phase(&a) == want).then_some(a)
        })
    }

    /// `http://<address>:8080` of a Running actor.
    pub fn actor_url(a: &Value) -> String {
        let addr = a["status"]["worker"]["address"]
            .as_str()
            .unwrap_or_else(|| panic!("no address: {a}"));
        format!("http://{addr}:8080")
    }

    /// Asserts that no worker leaked: every Bound worker of this node is bound to an actor
    /// that names it back, and the number of Free workers is `free`.
    pub fn assert_no_worker_leak(&self, free: usize) {
        eventually(
            &format!("{free} free workers and no leaked binding"),
            || {
                let actors = self.kube.list("actors");
                let workers = self.workers();
                let n_free = workers
                    .iter()
                    .filter(|w| w["status"]["phase"] == "Free")
                    .count();
                let leaked: Vec<&Value> = workers
                    .iter()
                    .filter(|w| w["status"]["phase"] == "Bound")
                    .filter(|w| {
                        let name = &w["metadata"]["name"];
                        !actors
                            .iter()
                            .any(|a| &a["status"]["worker"]["name"] == name)
                    })
                    .collect();
                (n_free == free && leaked.is_empty()).then_some(())
            },
        );
    }
}

impl Drop for System {
    fn drop(&mut self) {
        // Router and operator first, then the agent (which kills the sandboxes).
        self.router.take();
        self.operator.take();
        self.agent.take();
        if std::thread::panicking() {
            // Keep the logs (node agent, executors, operator, router) of a failed test.
            let kept =
                std::mem::replace(&mut self.dir, tempfile::tempdir().expect("tempdir")).keep();
            eprintln!("test failed: logs kept in {}", kept.display());
        }
    }
}

// --- snapshot store and garbage collection (tests/tests/gc.rs) -------------------------

impl System {
    /// The node agent's `--snapshot-url`.
    pub fn snapshot_url(&self) -> String {
        self.opts
            .snapshot_url
            .clone()
            .unwrap_or_else(|| format!("file://{}", self.dir.path().join("snapshots").display()))
    }

    /// Starts the operator with `extra` flags (e.g. `--snapshot-gc-grace=3s`), given the
    /// node agent's snapshot store (and its environment: S3 settings) to garbage-collect.
    pub fn start_operator_with(&mut self, extra: &[&str]) {
        assert!(self.operator.is_none(), "the operator already runs");
        let c = Command::new(workspace_bin("substrate-operator"))
            .args(self.client_args("operator"))
            .args(["--resync-seconds", "1"])
            .arg(format!("--snapshot-url={}", self.snapshot_url()))
            .args(extra)
            .envs(self.opts.agent_env.iter().map(|(k, v)| (k, v)))
            .stdout(self.log_file("operator"))
            .stderr(self.log_file("operator"))
            .spawn()
            .expect("operator starts");
        self.operator = Some(KillOnDrop(c));
    }

    /// Stops the operator (SIGTERM: it releases its leader lease).
    pub fn stop_operator(&mut self) {
        self.operator.take();
    }

    /// Every file under `<atespace>/` of the default `file://` snapshot store, as
    /// `<actor>/<id>/<file>` paths, sorted (staging files of uploads included).
    pub fn stored_snapshot_files(&self, atespace: &str) -> Vec<String> {
        files_under(&self.dir.path().join("snapshots").join(atespace))
    }

    /// The committed snapshot ids (with a `manifest.json`) of an actor in the default
    /// `file://` snapshot store, sorted.
    pub fn stored_snapshot_ids(&self, atespace: &str, actor: &str) -> Vec<String> {
        self.stored_snapshot_files(atespace)
            .iter()
            .filter_map(|f| {
                let rest = f.strip_prefix(&format!("{actor}/"))?;
                rest.strip_suffix("/manifest.json").map(str::to_string)
            })
            .collect()
    }

    /// Every file of the node agent's snapshot cache entries of `atespace`.
    pub fn cached_snapshot_files(&self, atespace: &str) -> Vec<String> {
        files_under(
            &self
                .dir
                .path()
                .join("node/snapshot-cache/entries")
                .join(atespace),
        )
    }

    /// The node agent's unpacked snapshots (`<state>/restore/<uid>-<digest>`) of actor `uid`.
    pub fn restore_dirs_of(&self, uid: &str) -> Vec<String> {
        std::fs::read_dir(self.dir.path().join("node/restore"))
            .map(|rd| {
                rd.filter_map(|e| e.ok()?.file_name().into_string().ok())
                    .filter(|n| n.starts_with(&format!("{uid}-")))
                    .collect()
            })
            .unwrap_or_default()
    }
}

/// The files under `root`, relative, sorted (none when it does not exist).
pub fn files_under(root: &Path) -> Vec<String> {
    fn walk(root: &Path, dir: &Path, out: &mut Vec<String>) {
        let Ok(rd) = std::fs::read_dir(dir) else {
            return;
        };
        for e in rd.flatten() {
            let p = e.path();
            if e.file_type().is_ok_and(|t| t.is_dir()) {
                walk(root, &p, out);
            } else if let Ok(rel) = p.strip_prefix(root) {
                out.push(rel.to_string_lossy().into_owned());
            }
        }
    }
    let mut out = Vec::new();
    walk(root, root, &mut out);
    out.sort();
    out
}

/// Helpers of the lifecycle tests (`tests/tests/lifecycle.rs`): the runsc containers of a
/// worker, watches recorded in the background.
impl System {
    /// The ids of the runsc containers of `worker` (`<atespace>_<actor>`), from `runsc list`
    /// on the worker's runsc root.
    pub fn runsc_containers(&self, worker: &str) -> Vec<String> {
        let root = self
            .dir()
            .join("node")
            .join("executors")
            .join(worker)
            .join("runsc");
        let out = Command::new("runsc")
            .arg(format!("--root={}", root.display()))
            .args(["list", "-quiet"])
            .output()
            .expect("runsc list");
        assert!(
            out.status.success(),
            "runsc list: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout)
            .lines()
            .map(str::trim)
            .filter(|l| !l.is_empty())
            .map(str::to_string)
            .collect()
    }

    /// Starts `kubectl get <args> --watch -o json --output-watch-events` in the background;
    /// [`Watch::events`] returns what it printed so far.
    pub fn watch(&self, args: &[&str]) -> Watch {
        let out = self.dir().join(format!("watch-{}.json", free_port()));
        let child = Command::new("kubectl")
            .env("KUBECONFIG", &self.kubeconfig)
            .env("HOME", &self.kube.home)
            .arg("get")
            .args(args)
            .args(["--watch", "-o", "json", "--output-watch-events"])
            .stdout(std::fs::File::create(&out).expect("watch output"))
            .stderr(Stdio::null())
            .spawn()
            .expect("kubectl watch starts");
        Watch {
            _child: KillOnDrop(child),
            out,
        }
    }
}

/// The system's apiserver: in the test's process (the default), or its own process
/// ([`Options::apiserver_process`]) that can be killed and restarted.
pub enum Apiserver {
    InProcess(apiserver::Running),
    Process(ApiserverProcess),
}

/// A `substrate-apiserver` process on a fixed loopback port (a restart binds the same port,
/// so the kubeconfig every component read stays valid), logging to `<dir>/apiserver.log`.
pub struct ApiserverProcess {
    child: Option<KillOnDrop>,
    args: Vec<String>,
    dir: PathBuf,
    /// `127.0.0.1:<port>`.
    pub addr: SocketAddr,
}

impl ApiserverProcess {
    /// Starts it (on another free port if the first one was taken meanwhile) and waits until
    /// it is ready; the apiserver and its admin kubeconfig (written by the apiserver).
    fn start(valkey: &apiserver::testing::ValkeyServer, dir: &Path) -> (Apiserver, PathBuf) {
        let kubeconfig = dir.join("kubeconfig");
        for _ in 0..5 {
            let addr = SocketAddr::from(([127, 0, 0, 1], free_port()));
            let mut p = ApiserverProcess {
                child: None,
                args: vec![
                    format!("--bind={addr}"),
                    format!("--valkey-url={}", valkey.url()),
                    format!("--pki-dir={}", dir.join("pki").display()),
                    format!("--kubeconfig-out={}", kubeconfig.display()),
                ],
                dir: dir.to_path_buf(),
                addr,
            };
            if p.spawn() {
                return (Apiserver::Process(p), kubeconfig);
            }
        }
        panic!("the apiserver exited during start-up 5 times; see apiserver.log");
    }

    /// Spawns the process and waits until `/readyz` answers; false when it exited first.
    fn spawn(&mut self) -> bool {
        let log = || {
            std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(self.dir.join("apiserver.log"))
                .expect("apiserver log")
        };
        let c = Command::new(workspace_bin("substrate-apiserver"))
            .args(&self.args)
            .stdout(log())
            .stderr(log())
            .spawn()
            .expect("apiserver starts");
        let mut child = KillOnDrop(c);
        let url = format!("https://{}/readyz", self.addr);
        let ready = eventually("the apiserver is ready or has exited", || {
            if let Ok(Some(status)) = child.0.try_wait() {
                eprintln!("apiserver exited during start-up ({status})");
                return Some(false);
            }
            let ok = Command::new("curl")
                .args(["-sk", "--fail", "--max-time", "2", &url])
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status()
                .is_ok_and(|s| s.success());
            ok.then_some(true)
        });
        if ready {
            self.child = Some(child);
        } else {
            std::mem::forget(child);
        }
        ready
    }

    /// The process id.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(KillOnDrop::pid)
    }
}

impl System {
    /// The apiserver process (panics when the apiserver runs in the test's process).
    fn apiserver_process(&mut self) -> &mut ApiserverProcess {
        match &mut self.control {
            Control::Standalone { apiserver, .. } => match apiserver.as_mut() {
                Apiserver::Process(p) => p,
                Apiserver::InProcess(_) => panic!("the apiserver is not a process of its own"),
            },
            Control::Cluster(_) => panic!("the apiserver is not a process of its own"),
        }
    }

    /// SIGKILLs the apiserver process (needs [`Options::apiserver_process`]); nothing
    /// restarts it before [`System::start_apiserver`].
    pub fn kill9_apiserver(&mut self) {
        if let Some(c) = self.apiserver_process().child.take() {
            c.kill9();
        }
    }

    /// Starts the apiserver process again on its port and waits until it is ready.
    pub fn start_apiserver(&mut self) {
        let p = self.apiserver_process();
        assert!(p.child.is_none(), "the apiserver already runs");
        assert!(
            p.spawn(),
            "the apiserver did not start again on {} (port taken?); see apiserver.log",
            p.addr
        );
    }

    /// The apiserver's pid when it is a process of its own.
    pub fn apiserver_pid(&self) -> Option<u32> {
        match &self.control {
            Control::Standalone { apiserver, .. } => match apiserver.as_ref() {
                Apiserver::Process(p) => p.pid(),
                Apiserver::InProcess(_) => None,
            },
            Control::Cluster(_) => None,
        }
    }

    /// The apiserver's address (`127.0.0.1:<port>`).
    pub fn apiserver_addr(&self) -> SocketAddr {
        match &self.control {
            Control::Standalone { apiserver, .. } => match apiserver.as_ref() {
                Apiserver::Process(p) => p.addr,
                Apiserver::InProcess(r) => r.addr,
            },
            Control::Cluster(c) => c.substrate.addr,
        }
    }

    /// The admin client certificate, key and the CA of the apiserver (for raw HTTPS
    /// requests such as watches): `(ca, cert, key)`.
    pub fn admin_pki(&self) -> (PathBuf, PathBuf, PathBuf) {
        let pki = self.dir().join("pki");
        (
            pki.join("ca.crt"),
            pki.join("admin.crt"),
            pki.join("admin.key"),
        )
    }

    /// SIGKILLs Valkey (every acknowledged write is in its AOF) and starts it again on the
    /// same port and data.
    pub fn restart_valkey_after_kill9(&mut self) {
        let Control::Standalone { valkey, .. } = &mut self.control else {
            panic!("not a standalone system");
        };
        valkey.kill();
        valkey.restart();
    }

    /// The operator's pid, while it runs.
    pub fn operator_pid(&self) -> Option<u32> {
        self.operator.as_ref().map(KillOnDrop::pid)
    }

    /// SIGKILLs the operator (nothing restarts it before [`System::start_operator`]).
    pub fn kill9_operator(&mut self) {
        if let Some(o) = self.operator.take() {
            o.kill9();
        }
    }
}

/// A `kubectl --watch` running in the background (stopped when dropped).
pub struct Watch {
    _child: KillOnDrop,
    out: PathBuf,
}

impl Watch {
    /// The watch events printed so far (`{"type": ..., "object": ...}`), in order.
    pub fn events(&self) -> Vec<Value> {
        let text = std::fs::read_to_string(&self.out).unwrap_or_default();
        serde_json::Deserializer::from_str(&text)
            .into_iter::<Value>()
            .map_while(Result::ok)
            .collect()
    }
}

pub mod bench;
pub mod envtest;
pub mod faults;
pub mod standalone;
pub mod tenancy;
