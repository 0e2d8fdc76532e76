//! envtest: a real Kubernetes control plane for tests — etcd, kube-apiserver and (on request)
//! kube-controller-manager as processes on loopback, with a PKI made by the harness
//! ([`pki`]), state in a temporary directory and every process group killed on drop.
//!
//! The binaries are found the way the Kubernetes ecosystem's envtest finds them: the folder
//! in `KUBEBUILDER_ASSETS` holds `kube-apiserver` and `kube-controller-manager` (and `etcd`,
//! else `etcd` on `PATH`, Debian's `etcd-server`). [`Envtest::start`] returns `None` (after
//! printing why) only when `KUBEBUILDER_ASSETS` is unset; `hack/test.sh` sets it to
//! `../shared/envtest/bin` when that exists, and CI fails without it.
//!
//! Kubernetes 1.25 on these machines needs (see `/work/shared/envtest/README.md`): loopback
//! addresses everywhere, a loopback service range (`127.74.0.0/24` here), no endpoint
//! reconciler, aggregator routing off, and kube-controller-manager without the controllers
//! that need nodes or a cloud.
//!
//! Substrate is registered as an aggregated API with [`Envtest::register_substrate`]
//! (an `ExternalName` Service pointing at `localhost` and the APIService
//! `v1alpha1.substrate.ate.dev`), and [`substrate::Substrate`] runs Substrate's apiserver
//! against the control plane.

pub mod identity;
pub mod pki;
pub mod substrate;

use std::net::SocketAddr;
use std::os::unix::process::CommandExt as _;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::{Value, json};

pub use identity::Identity;
use pki::{CertFiles, Credential, Pki};

use crate::{Kubectl, eventually_within, free_port};

/// The environment variable naming the folder of the control plane's binaries.
pub const ASSETS_ENV: &str = "KUBEBUILDER_ASSETS";

/// Kubernetes' service range: loopback, so nothing is ever dialled off this machine.
pub const SERVICE_CIDR: &str = "127.74.0.0/24";

/// Where Substrate's aggregated API is registered: the `ExternalName` Service's namespace and
/// name (its serving certificate must name `<name>.<namespace>.svc`).
pub const SUBSTRATE_NAMESPACE: &str = "substrate-system";
pub const SUBSTRATE_SERVICE: &str = "substrate-apiserver";

/// How long a component may take to become ready.
const START_DEADLINE: Duration = Duration::from_secs(60);

/// The binaries of the control plane.
#[derive(Debug, Clone)]
pub struct Assets {
    pub kube_apiserver: PathBuf,
    pub kube_controller_manager: PathBuf,
    pub etcd: PathBuf,
}

impl Assets {
    /// The binaries named by `KUBEBUILDER_ASSETS`; `None` (with a printed reason) when it is
    /// unset. Panics when it is set but a binary is missing: the tests were asked to run.
    pub fn find() -> Option<Assets> {
        let Some(dir) = std::env::var_os(ASSETS_ENV).filter(|d| !d.is_empty()) else {
            eprintln!(
                "skipping: {ASSETS_ENV} is unset; point it at a folder holding kube-apiserver and \
                 kube-controller-manager (hack/test.sh sets it to ../shared/envtest/bin) and \
                 install etcd (Debian: etcd-server)"
            );
            return None;
        };
        let dir = PathBuf::from(dir);
        let need = |name: &str| {
            let p = dir.join(name);
            assert!(
                p.is_file(),
                "{ASSETS_ENV}={} has no {name}: the envtest tests need kube-apiserver and \
                 kube-controller-manager there",
                dir.display()
            );
            p
        };
        let etcd = [dir.join("etcd"), PathBuf::from("/usr/bin/etcd")]
            .into_iter()
            .chain(which("etcd"))
            .find(|p| p.is_file())
            .unwrap_or_else(|| {
                panic!(
                    "etcd is missing: neither {}/etcd nor etcd on PATH; install Debian's \
                     etcd-server (hack/test.sh does)",
                    dir.display()
                )
            });
        Some(Assets {
            kube_apiserver: need("kube-apiserver"),
            kube_controller_manager: need("kube-controller-manager"),
            etcd,
        })
    }
}

fn which(tool: &str) -> Option<PathBuf> {
    let out = Command::new("sh")
        .args(["-c", &format!("command -v {tool}")])
        .output()
        .ok()?;
    let p = String::from_utf8_lossy(&out.stdout).trim().to_string();
    (!p.is_empty()).then(|| PathBuf::from(p))
}

/// A process in its own process group, logging to a file; the whole group gets SIGTERM on
/// drop, then SIGKILL after 10 s. The process also gets SIGKILL when the thread that spawned
/// it ends (`PR_SET_PDEATHSIG`), so create and drop it on the same thread (a test's).
#[derive(Debug)]
pub struct GroupChild {
    child: Child,
    pub name: String,
    pub log: PathBuf,
}

impl GroupChild {
    /// Spawns `bin args...` in a new process group, stdout and stderr to `log`.
    pub fn spawn(name: &str, bin: &Path, args: &[String], log: PathBuf) -> GroupChild {
        let file = || {
            std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(&log)
                .expect("log file")
        };
        // Killed as well when the test's thread dies without dropping us (SIGKILL of the test
        // binary, Ctrl-C: the process group is not the terminal's): util-linux's `setpriv`
        // sets the parent-death signal and execs the binary (no `unsafe` pre_exec here).
        let setpriv = Path::new("/usr/bin/setpriv");
        let mut cmd = if setpriv.exists() {
            let mut c = Command::new(setpriv);
            c.args(["--pdeathsig", "KILL", "--"]).arg(bin);
            c
        } else {
            Command::new(bin)
        };
        cmd.args(args)
            .stdin(Stdio::null())
            .stdout(file())
            .stderr(file())
            .process_group(0);
        let child = cmd
            .spawn()
            .unwrap_or_else(|e| panic!("starting {}: {e}", bin.display()));
        GroupChild {
            child,
            name: name.to_string(),
            log,
        }
    }

    /// The process id (also the process group id).
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// The exit status when it has exited.
    pub fn exited(&mut self) -> Option<std::process::ExitStatus> {
        self.child.try_wait().ok().flatten()
    }

    /// The last `n` lines of its log.
    pub fn log_tail(&self, n: usize) -> String {
        let s = std::fs::read_to_string(&self.log).unwrap_or_default();
        let lines: Vec<&str> = s.lines().collect();
        lines[lines.len().saturating_sub(n)..]
            .iter()
            .map(|l| match l.char_indices().nth(400) {
                Some((i, _)) => format!("{}...", &l[..i]),
                None => l.to_string(),
            })
            .collect::<Vec<_>>()
            .join("\n")
    }

    fn signal_group(&self, sig: &str) {
        let _ = Command::new("kill")
            .args([sig, "--", &format!("-{}", self.child.id())])
            .stderr(Stdio::null())
            .status();
    }
}

impl Drop for GroupChild {
    fn drop(&mut self) {
        self.signal_group("-TERM");
        let start = Instant::now();
        while start.elapsed() < Duration::from_secs(10) {
            if self.exited().is_some() {
                // Children of the group may outlive the leader: make sure.
                self.signal_group("-KILL");
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        self.signal_group("-KILL");
        let _ = self.child.wait();
    }
}

/// What to start.
#[derive(Debug, Clone)]
pub struct Options {
    /// Start kube-controller-manager (namespace deletion, garbage collection, quota...).
    pub controller_manager: bool,
}

impl Default for Options {
    fn default() -> Self {
        Options {
            controller_manager: true,
        }
    }
}

/// A running control plane. See the module docs.
pub struct Envtest {
    // Declared first: dropped (killed) before the state directory goes.
    controller_manager: Option<GroupChild>,
    kube_apiserver: GroupChild,
    etcd: GroupChild,
    /// kube-apiserver's URL (`https://127.0.0.1:<port>`).
    pub url: String,
    pub pki: Pki,
    /// `system:masters` (client certificate).
    pub admin: Identity,
    /// How long [`Envtest::start`] took.
    pub startup: Duration,
    assets: Assets,
    home: PathBuf,
    dir: tempfile::TempDir,
}

impl std::fmt::Debug for Envtest {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Envtest")
            .field("url", &self.url)
            .field("dir", &self.dir.path())
            .finish()
    }
}

impl Envtest {
    /// etcd, kube-apiserver and kube-controller-manager, ready; `None` when
    /// `KUBEBUILDER_ASSETS` is unset (see [`Assets::find`]).
    pub fn start() -> Option<Envtest> {
        Self::start_with(Options::default())
    }

    /// [`Envtest::start`] with [`Options`].
    pub fn start_with(opts: Options) -> Option<Envtest> {
        let assets = Assets::find()?;
        let assets_ref = &assets;
        let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
        let t0 = Instant::now();
        let dir = tempfile::Builder::new()
            .prefix("substrate-envtest-")
            .tempdir()
            .expect("tempdir");
        let home = dir.path().join("home");
        std::fs::create_dir_all(&home).expect("home");
        let pki = Pki::new(&dir.path().join("pki")).expect("PKI");

        let etcd_port = start_retrying("etcd", |attempt| {
            start_etcd(assets_ref, dir.path(), attempt)
        });
        let (etcd, etcd_url) = etcd_port;
        let etcd_ready = t0.elapsed();
        let admin_cert = pki
            .ca
            .client(&pki.dir, "admin", "envtest-admin", &["system:masters"])
            .expect("admin certificate");
        let (kube_apiserver, admin) = start_retrying("kube-apiserver", |attempt| {
            let port = free_port();
            let admin = Identity::new(
                dir.path(),
                &format!("https://127.0.0.1:{port}"),
                &pki,
                "envtest-admin",
                Credential::Cert(admin_cert.clone()),
                &home,
            );
            start_kube_apiserver(assets_ref, dir.path(), &pki, &etcd_url, &admin, attempt)
        });
        let url = admin.server.clone();
        let mut env = Envtest {
            controller_manager: None,
            kube_apiserver,
            etcd,
            url,
            pki,
            admin,
            startup: Duration::ZERO,
            assets,
            home,
            dir,
        };
        let kube_apiserver_ready = t0.elapsed();
        if opts.controller_manager {
            env.start_controller_manager();
        }
        env.startup = t0.elapsed();
        eprintln!(
            "envtest: control plane at {} ready in {:.1?} (etcd {:.1?}, kube-apiserver {:.1?}{}; state in {})",
            env.url,
            env.startup,
            etcd_ready,
            kube_apiserver_ready - etcd_ready,
            if opts.controller_manager {
                format!(
                    ", kube-controller-manager {:.1?}",
                    env.startup - kube_apiserver_ready
                )
            } else {
                String::new()
            },
            env.dir.path().display()
        );
        Some(env)
    }

    /// The state directory (PKI, kubeconfigs, logs).
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// Starts kube-controller-manager (when [`Options::controller_manager`] was false) and
    /// waits until it runs its controllers. Started after an aggregated API is registered, its
    /// garbage collector and quota controller include that API in their first sync.
    pub fn start_controller_manager(&mut self) {
        assert!(
            self.controller_manager.is_none(),
            "kube-controller-manager already runs"
        );
        let cert = self
            .pki
            .ca
            .client(
                &self.pki.dir,
                "kube-controller-manager",
                "system:kube-controller-manager",
                &[],
            )
            .expect("kube-controller-manager certificate");
        let kubeconfig = self.dir.path().join("kube-controller-manager.kubeconfig");
        pki::write_kubeconfig(
            &kubeconfig,
            &self.url,
            &self.pki.ca.files.cert_pem,
            "system:kube-controller-manager",
            &Credential::Cert(cert),
        )
        .expect("kubeconfig");
        let kc = kubeconfig.display().to_string();
        let args = vec![
            format!("--kubeconfig={kc}"),
            format!("--authentication-kubeconfig={kc}"),
            format!("--authorization-kubeconfig={kc}"),
            "--use-service-account-credentials=true".into(),
            format!("--service-cluster-ip-range={SERVICE_CIDR}"),
            "--allocate-node-cidrs=false".into(),
            "--leader-elect=false".into(),
            "--bind-address=127.0.0.1".into(),
            "--secure-port=0".into(),
            format!("--root-ca-file={}", self.pki.ca.files.cert.display()),
            "--controllers=*,-nodeipam,-nodelifecycle,-cloud-node-lifecycle,-service,-route,-persistentvolume-binder,-attachdetach,-persistentvolume-expander,-ttl,-bootstrapsigner,-tokencleaner".into(),
            // Discovery and GC resyncs every 30 s by default; tests want new APIs noticed soon.
            "--namespace-sync-period=10s".into(),
            "-v=2".into(),
        ];
        let mut kcm = GroupChild::spawn(
            "kube-controller-manager",
            &self.assets.kube_controller_manager,
            &args,
            self.dir.path().join("kube-controller-manager.log"),
        );
        // Ready once its controllers' ServiceAccounts exist (it creates them as it starts them).
        eventually_within(
            START_DEADLINE,
            "kube-controller-manager starts its controllers",
            || {
                if let Some(status) = kcm.exited() {
                    panic!(
                        "kube-controller-manager exited ({status}):\n{}",
                        kcm.log_tail(40)
                    );
                }
                let (code, _) = self.admin.request(
                    "GET",
                    "/api/v1/namespaces/kube-system/serviceaccounts/namespace-controller",
                    None,
                );
                (code == 200).then_some(())
            },
        );
        self.controller_manager = Some(kcm);
    }

    /// A client-certificate identity: `user` in `groups`, with its kubeconfig.
    pub fn user(&self, user: &str, groups: &[&str]) -> Identity {
        let file = sanitize(user);
        let cert = self
            .pki
            .ca
            .client(&self.pki.dir, &format!("user-{file}"), user, groups)
            .expect("client certificate");
        Identity::new(
            self.dir.path(),
            &self.url,
            &self.pki,
            user,
            Credential::Cert(cert),
            &self.home,
        )
    }

    /// Creates the ServiceAccount `ns/name` (and `ns`) if absent.
    pub fn service_account(&self, ns: &str, name: &str) {
        self.ensure_namespace(ns);
        let (code, body) = self.admin.request(
            "POST",
            &format!("/api/v1/namespaces/{ns}/serviceaccounts"),
            Some(
                &json!({"apiVersion": "v1", "kind": "ServiceAccount", "metadata": {"name": name}}),
            ),
        );
        assert!(
            code == 201 || code == 409,
            "creating ServiceAccount {ns}/{name}: {code} {body}"
        );
    }

    /// A token of the ServiceAccount `ns/name` from the TokenRequest API (one hour).
    pub fn service_account_token(&self, ns: &str, name: &str) -> String {
        self.service_account_token_for(ns, name, &[])
    }

    /// [`Envtest::service_account_token`] issued for `audiences` (empty: kube-apiserver's),
    /// as a projected ServiceAccount token volume with `audience:` gets one.
    pub fn service_account_token_for(&self, ns: &str, name: &str, audiences: &[&str]) -> String {
        let mut spec = json!({"expirationSeconds": 3600});
        if !audiences.is_empty() {
            spec["audiences"] = json!(audiences);
        }
        let (code, body) = self.admin.request(
            "POST",
            &format!("/api/v1/namespaces/{ns}/serviceaccounts/{name}/token"),
            Some(&json!({
                "apiVersion": "authentication.k8s.io/v1", "kind": "TokenRequest",
                "spec": spec,
            })),
        );
        assert_eq!(code, 201, "TokenRequest for {ns}/{name}: {body}");
        body["status"]["token"]
            .as_str()
            .expect("status.token")
            .to_string()
    }

    /// The identity of the ServiceAccount `ns/name` (created if absent) with a bearer token.
    pub fn service_account_identity(&self, ns: &str, name: &str) -> Identity {
        self.service_account(ns, name);
        let token = self.service_account_token(ns, name);
        Identity::new(
            self.dir.path(),
            &self.url,
            &self.pki,
            &format!("system:serviceaccount:{ns}:{name}"),
            Credential::Token(token),
            &self.home,
        )
    }

    /// Creates the namespace if absent.
    pub fn ensure_namespace(&self, ns: &str) {
        let (code, body) = self.admin.request(
            "POST",
            "/api/v1/namespaces",
            Some(&json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": ns}})),
        );
        assert!(
            code == 201 || code == 409,
            "creating namespace {ns}: {code} {body}"
        );
    }

    /// The admin's kubectl.
    pub fn kubectl(&self) -> &Kubectl {
        &self.admin.kubectl
    }

    /// A serving certificate for Substrate's apiserver, signed by the cluster CA, for
    /// `substrate-apiserver.substrate-system.svc` (the name kube-apiserver verifies when it
    /// proxies to the APIService) and localhost.
    pub fn substrate_serving_cert(&self) -> CertFiles {
        let svc = format!("{SUBSTRATE_SERVICE}.{SUBSTRATE_NAMESPACE}.svc");
        self.pki
            .ca
            .serving(
                &self.pki.dir,
                "substrate-serving",
                &[&svc, "localhost", "127.0.0.1"],
            )
            .expect("Substrate serving certificate")
    }

    /// The kubeconfig Substrate's apiserver uses for delegated authentication and
    /// authorization (`--authentication-kubeconfig`, `--authorization-kubeconfig`): the user
    /// `substrate-apiserver` bound to `system:auth-delegator` (create TokenReviews and
    /// SubjectAccessReviews) and to `extension-apiserver-authentication-reader` in
    /// `kube-system` (read the `extension-apiserver-authentication` ConfigMap), and allowed to
    /// read the `ate.dev` CRDs (the templates its scheduler uses), as Substrate's apiserver's
    /// ServiceAccount is in a cluster (`config/rbac/`).
    pub fn delegation_kubeconfig(&self) -> PathBuf {
        let user = "substrate-apiserver";
        self.admin.apply(&json!({
            "apiVersion": "v1", "kind": "List", "items": [
                {
                    "apiVersion": "rbac.authorization.k8s.io/v1", "kind": "ClusterRoleBinding",
                    "metadata": {"name": "substrate-apiserver:system:auth-delegator"},
                    "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": "system:auth-delegator"},
                    "subjects": [{"apiGroup": "rbac.authorization.k8s.io", "kind": "User", "name": user}],
                },
                {
                    "apiVersion": "rbac.authorization.k8s.io/v1", "kind": "ClusterRole",
                    "metadata": {"name": "substrate-apiserver:templates"},
                    "rules": [{"apiGroups": ["ate.dev"], "resources": ["actortemplates", "workerpools"], "verbs": ["get", "list", "watch"]}],
                },
                {
                    "apiVersion": "rbac.authorization.k8s.io/v1", "kind": "ClusterRoleBinding",
                    "metadata": {"name": "substrate-apiserver:templates"},
                    "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": "substrate-apiserver:templates"},
                    "subjects": [{"apiGroup": "rbac.authorization.k8s.io", "kind": "User", "name": user}],
                },
                {
                    "apiVersion": "rbac.authorization.k8s.io/v1", "kind": "RoleBinding",
                    "metadata": {"name": "substrate-apiserver-authentication-reader", "namespace": "kube-system"},
                    "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": "extension-apiserver-authentication-reader"},
                    "subjects": [{"apiGroup": "rbac.authorization.k8s.io", "kind": "User", "name": user}],
                },
            ],
        }));
        self.user(user, &[]).kubeconfig
    }

    /// Installs the `ate.dev` CRDs (`crds/yaml/`: the kinds that are CRDs in a cluster) and
    /// waits until they are established.
    pub fn install_crds(&self) {
        let yaml = Path::new(env!("CARGO_MANIFEST_DIR")).join("../crds/yaml");
        self.kubectl()
            .ok(&["apply", "-f", &yaml.display().to_string()], None);
        self.kubectl().ok(
            &[
                "wait",
                "--for=condition=Established",
                "--timeout=60s",
                "crd/workerpools.ate.dev",
                "crd/actortemplates.ate.dev",
            ],
            None,
        );
    }

    /// Registers an aggregated server at `127.0.0.1:<port of addr>` serving
    /// `substrate.ate.dev/v1alpha1` (its certificate must verify with `ca_pem` for
    /// `substrate-apiserver.substrate-system.svc`): an `ExternalName` Service pointing at
    /// `localhost` and the APIService; waits until the APIService is `Available=True`.
    pub fn register_substrate(&self, addr: SocketAddr, ca_pem: &str) {
        self.register_substrate_with(addr, Some(ca_pem));
    }

    /// [`Envtest::register_substrate`] with the APIService's `caBundle` left out when
    /// `ca_pem` is `None` (as `config/` ships it: the apiserver fills it in with
    /// `--apiservice`).
    pub fn register_substrate_with(&self, addr: SocketAddr, ca_pem: Option<&str>) {
        use base64::Engine as _;
        self.ensure_namespace(SUBSTRATE_NAMESPACE);
        let port = addr.port();
        let mut spec = json!({
            "group": "substrate.ate.dev", "version": "v1alpha1",
            "groupPriorityMinimum": 1000, "versionPriority": 100,
            "service": {"namespace": SUBSTRATE_NAMESPACE, "name": SUBSTRATE_SERVICE, "port": port},
        });
        if let Some(ca) = ca_pem {
            spec["caBundle"] = base64::engine::general_purpose::STANDARD.encode(ca).into();
        }
        self.admin.apply(&json!({
            "apiVersion": "v1", "kind": "List", "items": [
                {
                    "apiVersion": "v1", "kind": "Service",
                    "metadata": {"name": SUBSTRATE_SERVICE, "namespace": SUBSTRATE_NAMESPACE},
                    "spec": {"type": "ExternalName", "externalName": "localhost",
                             "ports": [{"name": "https", "port": port, "protocol": "TCP"}]},
                },
                {
                    "apiVersion": "apiregistration.k8s.io/v1", "kind": "APIService",
                    "metadata": {"name": "v1alpha1.substrate.ate.dev"},
                    "spec": spec,
                },
            ],
        }));
        let t0 = Instant::now();
        eventually_within(
            START_DEADLINE,
            "APIService v1alpha1.substrate.ate.dev is Available",
            || {
                let (code, body) = self.admin.request(
                    "GET",
                    "/apis/apiregistration.k8s.io/v1/apiservices/v1alpha1.substrate.ate.dev",
                    None,
                );
                let available = code == 200
                    && body["status"]["conditions"]
                        .as_array()
                        .into_iter()
                        .flatten()
                        .any(|c| c["type"] == "Available" && c["status"] == "True");
                available.then_some(())
            },
        );
        eprintln!(
            "envtest: APIService v1alpha1.substrate.ate.dev Available in {:.1?}",
            t0.elapsed()
        );
    }

    /// The last lines of kube-controller-manager's log (for failure messages).
    pub fn controller_manager_log(&self, n: usize) -> String {
        self.controller_manager
            .as_ref()
            .map(|c| c.log_tail(n))
            .unwrap_or_default()
    }

    /// The last lines of kube-apiserver's log.
    pub fn kube_apiserver_log(&self, n: usize) -> String {
        self.kube_apiserver.log_tail(n)
    }

    /// etcd's pid.
    pub fn etcd_pid(&self) -> u32 {
        self.etcd.pid()
    }

    /// kube-apiserver's pid.
    pub fn kube_apiserver_pid(&self) -> u32 {
        self.kube_apiserver.pid()
    }

    /// The process groups of the control plane (etcd, kube-apiserver, and
    /// kube-controller-manager when it runs), for tests of the harness.
    pub fn process_groups(&self) -> Vec<u32> {
        [
            Some(&self.etcd),
            Some(&self.kube_apiserver),
            self.controller_manager.as_ref(),
        ]
        .into_iter()
        .flatten()
        .map(GroupChild::pid)
        .collect()
    }
}

fn sanitize(s: &str) -> String {
    s.chars()
        .map(|c| if c.is_ascii_alphanumeric() { c } else { '_' })
        .collect()
}

/// Calls `f` up to 5 times (a free port may be taken between probing and binding).
fn start_retrying<T>(what: &str, mut f: impl FnMut(u32) -> Option<T>) -> T {
    for attempt in 0..5 {
        if let Some(v) = f(attempt) {
            return v;
        }
    }
    panic!("{what} did not start in 5 attempts (see its log above)");
}

/// etcd on loopback with its data in `dir`; (process, client URL) once it answers `/health`.
fn start_etcd(assets: &Assets, dir: &Path, attempt: u32) -> Option<(GroupChild, String)> {
    let client = format!("http://127.0.0.1:{}", free_port());
    let peer = format!("http://127.0.0.1:{}", free_port());
    let data = dir.join(format!("etcd-data-{attempt}"));
    // A name of its own: the member list tells our etcd from another one on the port.
    let name = format!(
        "envtest-{}",
        dir.file_name().and_then(|n| n.to_str()).unwrap_or("etcd")
    );
    let args = vec![
        format!("--name={name}"),
        format!("--data-dir={}", data.display()),
        format!("--listen-client-urls={client}"),
        format!("--advertise-client-urls={client}"),
        format!("--listen-peer-urls={peer}"),
        format!("--initial-advertise-peer-urls={peer}"),
        format!("--initial-cluster={name}={peer}"),
        "--log-level=warn".into(),
        "--logger=zap".into(),
    ];
    let mut etcd = GroupChild::spawn("etcd", &assets.etcd, &args, dir.join("etcd.log"));
    let start = Instant::now();
    while start.elapsed() < START_DEADLINE {
        if let Some(status) = etcd.exited() {
            eprintln!("etcd exited ({status}):\n{}", etcd.log_tail(20));
            return None;
        }
        let ok = Command::new("curl")
            .args(["-sf", "--max-time", "2", "-X", "POST", "-d", "{}"])
            .arg(format!("{client}/v3/cluster/member/list"))
            .output()
            .is_ok_and(|o| {
                o.status.success() && String::from_utf8_lossy(&o.stdout).contains(&name)
            });
        if ok {
            return Some((etcd, client));
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    panic!(
        "etcd not healthy after {START_DEADLINE:?}:\n{}",
        etcd.log_tail(40)
    );
}

/// kube-apiserver on loopback, on the port of `admin`'s URL; (process, admin) once `/readyz`
/// answers `ok` to the admin (its RBAC bootstrap roles included), `None` when it exited first
/// (the port was taken meanwhile: the caller tries another).
fn start_kube_apiserver(
    assets: &Assets,
    dir: &Path,
    pki: &Pki,
    etcd_url: &str,
    admin: &Identity,
    _attempt: u32,
) -> Option<(GroupChild, Identity)> {
    let port = admin.server.rsplit(':').next().expect("port");
    let cert_dir = dir.join("kube-apiserver-certs");
    std::fs::create_dir_all(&cert_dir).expect("cert dir");
    let p = |f: &Path| f.display().to_string();
    let args = vec![
        format!("--etcd-servers={etcd_url}"),
        "--bind-address=127.0.0.1".into(),
        "--advertise-address=127.0.0.1".into(),
        format!("--secure-port={port}"),
        format!("--service-cluster-ip-range={SERVICE_CIDR}"),
        "--endpoint-reconciler-type=none".into(),
        format!("--cert-dir={}", cert_dir.display()),
        format!("--tls-cert-file={}", p(&pki.serving.cert)),
        format!("--tls-private-key-file={}", p(&pki.serving.key)),
        format!("--client-ca-file={}", p(&pki.ca.files.cert)),
        "--service-account-issuer=https://kubernetes.default.svc.cluster.local".into(),
        format!("--service-account-key-file={}", p(&pki.sa_pub)),
        format!("--service-account-signing-key-file={}", p(&pki.sa_key)),
        "--authorization-mode=RBAC".into(),
        format!(
            "--requestheader-client-ca-file={}",
            p(&pki.front_proxy_ca.files.cert)
        ),
        "--requestheader-allowed-names=front-proxy-client".into(),
        "--requestheader-username-headers=X-Remote-User".into(),
        "--requestheader-group-headers=X-Remote-Group".into(),
        "--requestheader-extra-headers-prefix=X-Remote-Extra-".into(),
        format!(
            "--proxy-client-cert-file={}",
            p(&pki.front_proxy_client.cert)
        ),
        format!("--proxy-client-key-file={}", p(&pki.front_proxy_client.key)),
        "--enable-aggregator-routing=false".into(),
        // As kubeadm and every distribution run it: config/'s node agent DaemonSet is
        // privileged (tests/tests/install.rs applies it).
        "--allow-privileged=true".into(),
        "--profiling=false".into(),
        "--v=1".into(),
    ];
    let mut kas = GroupChild::spawn(
        "kube-apiserver",
        &assets.kube_apiserver,
        &args,
        dir.join("kube-apiserver.log"),
    );
    // Ready (a server that verifies with our CA and knows our admin) or exited.
    let start = Instant::now();
    loop {
        if let Some(status) = kas.exited() {
            eprintln!("kube-apiserver exited ({status}):\n{}", kas.log_tail(20));
            return None;
        }
        let (code, body) = admin.request_raw("GET", "/readyz", None);
        if code == 200 {
            return Some((kas, admin.clone()));
        }
        assert!(
            start.elapsed() < START_DEADLINE,
            "kube-apiserver not ready after {START_DEADLINE:?}: {code} {body}\n{}",
            kas.log_tail(40)
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// The JSON of a `kubectl` `List` of `items` (for [`Identity::apply`]).
pub fn list(items: Vec<Value>) -> Value {
    json!({"apiVersion": "v1", "kind": "List", "items": items})
}
