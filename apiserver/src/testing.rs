//! Test support: a real, throw-away `valkey-server` (or `redis-server`).
//!
//! [`ValkeyServer::start`] runs the server on a free loopback port with its data in a
//! temporary directory, AOF on with `fsync` on every write (`--appendonly yes
//! --appendfsync always --save ''`), so [`ValkeyServer::kill`] followed by
//! [`ValkeyServer::restart`] loses no acknowledged write. The process is killed on drop.
//!
//! [`ValkeyServer::start_with`] also requires authentication ([`ValkeyAuth`]: a `requirepass`
//! password from an included 0600 config file, as `hack/up.sh` runs it, or an ACL file) and
//! can serve TLS on a second port. The helper itself (`PING`, `SHUTDOWN`,
//! [`ValkeyServer::client`]) logs in as the admin; [`ValkeyServer::apiserver_flags`] give the
//! apiserver the client's credentials.

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::os::unix::fs::OpenOptionsExt as _;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// Arguments of a standalone apiserver for tests of other crates: a free loopback port,
/// `valkey` (with its client credentials, if it requires any), its PKI in `dir/pki` and its
/// admin kubeconfig written to `dir/kubeconfig` (the returned path).
pub fn apiserver_args(valkey: &ValkeyServer, dir: &Path) -> (crate::config::Args, PathBuf) {
    use clap::Parser as _;
    let kubeconfig = dir.join("kubeconfig");
    let mut argv = vec![
        "substrate-apiserver".to_string(),
        "--bind=127.0.0.1:0".into(),
        format!("--pki-dir={}", dir.join("pki").display()),
        format!("--kubeconfig-out={}", kubeconfig.display()),
        // Standalone even when the tests run inside a Kubernetes pod.
        "--standalone".into(),
    ];
    argv.extend(valkey.apiserver_flags());
    let args = crate::config::Args::try_parse_from(argv).expect("apiserver arguments");
    (args, kubeconfig)
}

/// How long to wait for the server to answer `PING` (AOF replay included).
const START_TIMEOUT: Duration = Duration::from_secs(20);

/// A Valkey user and password.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Login {
    /// `None`: the `default` user.
    pub username: Option<String>,
    pub password: String,
}

impl Login {
    /// The `default` user with `password` (what `requirepass` sets).
    pub fn default_user(password: impl Into<String>) -> Self {
        Self {
            username: None,
            password: password.into(),
        }
    }

    /// ACL user `username` with `password`.
    pub fn user(username: impl Into<String>, password: impl Into<String>) -> Self {
        Self {
            username: Some(username.into()),
            password: password.into(),
        }
    }
}

/// How a [`ValkeyServer`] wants clients to log in.
#[derive(Clone, Debug, Default)]
pub enum ValkeyAuth {
    /// Anyone may connect (the `default` user without a password).
    #[default]
    None,
    /// `requirepass` (the `default` user's password), from a config file (mode 0600) given
    /// with `--include`, never on the command line: how `hack/up.sh` runs Valkey.
    Password(String),
    /// `--aclfile` with these lines (`user <name> on >password ...`). The helper logs in as
    /// `admin` (which needs `SHUTDOWN`, `INFO` and whatever the test inspects), the apiserver
    /// as `client`.
    Acl {
        users: Vec<String>,
        admin: Login,
        client: Login,
    },
}

/// The ACL rules of a cluster's Valkey, `config/valkey/users.acl.tmpl`, as shipped.
pub const CLUSTER_ACL_TEMPLATE: &str = include_str!("../../config/valkey/users.acl.tmpl");

/// The ACL user the apiserver logs in as in a cluster (in [`CLUSTER_ACL_TEMPLATE`]).
pub const APISERVER_ACL_USER: &str = "substrate-apiserver";

impl ValkeyAuth {
    /// A cluster's ACL: [`CLUSTER_ACL_TEMPLATE`] rendered with `apiserver_password` (its
    /// SHA-256, `${APISERVER_PASSWORD_SHA256}`), so `default` is off and the apiserver logs
    /// in as [`APISERVER_ACL_USER`] with exactly the shipped permissions. The helper gets an
    /// admin user of its own (`substrate-test-admin`, every permission) for `SHUTDOWN`,
    /// `INFO` and the tests' inspection.
    pub fn cluster(apiserver_password: &str) -> Self {
        let mut users = render_cluster_acl(apiserver_password);
        let admin = Login::user("substrate-test-admin", "admin-password");
        users.push(format!(
            "user {} on >{} ~* &* +@all",
            admin.username.as_deref().unwrap_or_default(),
            admin.password
        ));
        ValkeyAuth::Acl {
            users,
            admin,
            client: Login::user(APISERVER_ACL_USER, apiserver_password),
        }
    }
}

/// [`CLUSTER_ACL_TEMPLATE`]'s lines with `${APISERVER_PASSWORD_SHA256}` replaced.
///
/// # Panics
/// When the template has another placeholder (it would need a value here too).
pub fn render_cluster_acl(apiserver_password: &str) -> Vec<String> {
    use sha2::Digest as _;
    let sha: String = sha2::Sha256::digest(apiserver_password.as_bytes())
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    let text = CLUSTER_ACL_TEMPLATE.replace("${APISERVER_PASSWORD_SHA256}", &sha);
    assert!(
        !text.contains("${"),
        "config/valkey/users.acl.tmpl has a placeholder the tests do not fill: {text}"
    );
    text.lines()
        .filter(|l| !l.trim().is_empty())
        .map(str::to_string)
        .collect()
}

/// Options of [`ValkeyServer::start_with`].
#[derive(Clone, Debug, Default)]
pub struct ValkeyOptions {
    pub auth: ValkeyAuth,
    /// Also serve TLS on a second port ([`ValkeyServer::tls_url`]), with a certificate for
    /// `127.0.0.1` signed by a CA of its own ([`ValkeyServer::tls_ca_file`]).
    pub tls: bool,
}

/// A running `valkey-server`/`redis-server` for tests. See the module docs.
#[derive(Debug)]
pub struct ValkeyServer {
    binary: PathBuf,
    port: u16,
    tls_port: Option<u16>,
    dir: tempfile::TempDir,
    child: Option<Child>,
    auth: ValkeyAuth,
    /// Who the helper logs in as (`None`: nobody, no authentication).
    admin: Option<Login>,
}

impl ValkeyServer {
    /// Starts a server on a free port and waits until it answers `PING`.
    ///
    /// # Panics
    /// When neither `valkey-server` nor `redis-server` is on `PATH` (run `hack/test.sh`, which
    /// installs it), or when the server does not come up.
    pub fn start() -> Self {
        Self::start_with(ValkeyOptions::default())
    }

    /// [`ValkeyServer::start`] requiring `auth`.
    pub fn start_with_auth(auth: ValkeyAuth) -> Self {
        Self::start_with(ValkeyOptions { auth, tls: false })
    }

    /// [`ValkeyServer::start`] with `opts`.
    pub fn start_with(opts: ValkeyOptions) -> Self {
        let binary = find_binary().unwrap_or_else(|| {
            panic!(
                "neither valkey-server nor redis-server found on PATH; \
                 run hack/test.sh, which installs it"
            )
        });
        let dir = tempfile::Builder::new()
            .prefix("substrate-valkey-")
            .tempdir()
            .expect("create a temporary directory for valkey");
        let admin = match &opts.auth {
            ValkeyAuth::None => None,
            ValkeyAuth::Password(p) => Some(Login::default_user(p.clone())),
            ValkeyAuth::Acl { admin, .. } => Some(admin.clone()),
        };
        let mut server = Self {
            binary,
            port: 0,
            tls_port: None,
            dir,
            child: None,
            auth: opts.auth,
            admin,
        };
        server.write_auth_files();
        if opts.tls {
            crate::pki::ensure(&server.dir.path().join("tls"), &[]).expect("TLS certificates");
        }
        // Another test may grab the same free port between our probe and the server's bind.
        for _ in 0..5 {
            server.port = free_port();
            server.tls_port = opts.tls.then(free_port);
            if server.spawn() {
                return server;
            }
        }
        panic!("valkey could not bind a free port in 5 attempts");
    }

    /// Writes the `requirepass` include, the ACL file and the client's password file, all
    /// mode 0600.
    fn write_auth_files(&self) {
        let write = |name: &str, text: String| {
            let mut f = std::fs::OpenOptions::new()
                .create(true)
                .truncate(true)
                .write(true)
                .mode(0o600)
                .open(self.dir.path().join(name))
                .unwrap_or_else(|e| panic!("write {name}: {e}"));
            f.write_all(text.as_bytes())
                .unwrap_or_else(|e| panic!("write {name}: {e}"));
        };
        match &self.auth {
            ValkeyAuth::None => {}
            ValkeyAuth::Password(p) => write("auth.conf", format!("requirepass {p}\n")),
            ValkeyAuth::Acl { users, .. } => write("users.acl", users.join("\n") + "\n"),
        }
        if let Some(login) = self.client_login() {
            write("client-password", format!("{}\n", login.password));
        }
    }

    /// Who the apiserver should log in as (`None` when the server needs no password).
    pub fn client_login(&self) -> Option<Login> {
        match &self.auth {
            ValkeyAuth::None => None,
            ValkeyAuth::Password(p) => Some(Login::default_user(p.clone())),
            ValkeyAuth::Acl { client, .. } => Some(client.clone()),
        }
    }

    /// A file (mode 0600) whose first line is the client's password.
    pub fn password_file(&self) -> Option<PathBuf> {
        self.client_login()
            .map(|_| self.dir.path().join("client-password"))
    }

    /// The apiserver's Valkey flags: `--valkey-url`, and `--valkey-username` and
    /// `--valkey-password-file` of the client's login when the server requires one.
    pub fn apiserver_flags(&self) -> Vec<String> {
        let mut flags = vec![format!("--valkey-url={}", self.url())];
        if let Some(login) = self.client_login() {
            if let Some(u) = &login.username {
                flags.push(format!("--valkey-username={u}"));
            }
            if let Some(p) = self.password_file() {
                flags.push(format!("--valkey-password-file={}", p.display()));
            }
        }
        flags
    }

    /// How the apiserver reaches this server: [`ValkeyServer::url`] with the client's login.
    pub fn endpoint(&self) -> crate::storage::Endpoint {
        let mut e = crate::storage::Endpoint::new(self.url());
        if let Some(login) = self.client_login() {
            if let Some(u) = &login.username {
                e = e.with_username(u);
            }
            e = e.with_password(login.password);
        }
        e
    }

    /// `redis://127.0.0.1:<port>/` (no credentials).
    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}/", self.port)
    }

    /// `rediss://127.0.0.1:<tls port>/` when started with [`ValkeyOptions::tls`].
    pub fn tls_url(&self) -> Option<String> {
        self.tls_port.map(|p| format!("rediss://127.0.0.1:{p}/"))
    }

    /// The CA bundle (PEM) of the TLS port's certificate.
    pub fn tls_ca_file(&self) -> Option<PathBuf> {
        self.tls_port
            .map(|_| self.dir.path().join("tls").join("ca.crt"))
    }

    /// The TCP port.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// The data directory.
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// A client for direct inspection in tests, logged in as the admin.
    pub fn client(&self) -> redis::Client {
        let mut e = crate::storage::Endpoint::new(self.url());
        if let Some(login) = &self.admin {
            if let Some(u) = &login.username {
                e = e.with_username(u);
            }
            e = e.with_password(&login.password);
        }
        e.client().expect("valid redis url")
    }

    /// Kills the server with SIGKILL (no shutdown; the AOF holds every acknowledged write).
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Stops the server gracefully (`SHUTDOWN`), falling back to SIGKILL after 10s.
    pub fn stop(&mut self) {
        let Some(mut child) = self.child.take() else {
            return;
        };
        let _ = command(self.port, self.admin.as_ref(), &["SHUTDOWN"]);
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = child.kill();
        let _ = child.wait();
    }

    /// Starts the server again on the same port and data directory (stopping it gracefully
    /// first if it runs) and waits until it answers `PING`.
    pub fn restart(&mut self) {
        self.stop();
        assert!(
            self.spawn(),
            "valkey could not bind port {} again (taken by another process?)",
            self.port
        );
    }

    /// Whether the process is running (as far as this handle knows).
    pub fn is_running(&self) -> bool {
        self.child.is_some()
    }

    /// Spawns the server and waits until it answers `PING`; false when it exited during
    /// startup or another server answers on the port (the port was taken).
    fn spawn(&mut self) -> bool {
        let log_path = self.dir.path().join("server.log");
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&log_path)
            .expect("open valkey log");
        let mut cmd = Command::new(&self.binary);
        match &self.auth {
            ValkeyAuth::None => {}
            ValkeyAuth::Password(_) => {
                cmd.arg("--include").arg(self.dir.path().join("auth.conf"));
            }
            ValkeyAuth::Acl { .. } => {
                cmd.arg("--aclfile").arg(self.dir.path().join("users.acl"));
            }
        }
        if let Some(tls_port) = self.tls_port {
            let tls = self.dir.path().join("tls");
            cmd.arg("--tls-port")
                .arg(tls_port.to_string())
                .arg("--tls-cert-file")
                .arg(tls.join("serving.crt"))
                .arg("--tls-key-file")
                .arg(tls.join("serving.key"))
                .arg("--tls-ca-cert-file")
                .arg(tls.join("ca.crt"))
                .args(["--tls-auth-clients", "no"]);
        }
        let child = cmd
            .arg("--port")
            .arg(self.port.to_string())
            .args(["--bind", "127.0.0.1"])
            .arg("--dir")
            .arg(self.dir.path())
            .args([
                "--appendonly",
                "yes",
                "--appendfsync",
                "always",
                "--save",
                "",
            ])
            .args(["--daemonize", "no", "--protected-mode", "no"])
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("clone log handle"))
            .stderr(log)
            .spawn()
            .unwrap_or_else(|e| panic!("spawn {}: {e}", self.binary.display()));
        let pid = child.id();
        self.child = Some(child);
        let deadline = Instant::now() + START_TIMEOUT;
        loop {
            let admin = self.admin.as_ref();
            if let Ok(reply) = command(self.port, admin, &["PING"])
                && reply.starts_with("+PONG")
            {
                let info = command(self.port, admin, &["INFO", "server"]).unwrap_or_default();
                if info.contains(&format!("process_id:{pid}\r\n")) {
                    return true;
                }
                self.kill();
                return false;
            }
            if let Some(child) = self.child.as_mut()
                && let Ok(Some(status)) = child.try_wait()
            {
                self.child = None;
                let log = std::fs::read_to_string(&log_path).unwrap_or_default();
                if log.contains("Address already in use") {
                    return false;
                }
                panic!("valkey exited during startup ({status}):\n{log}");
            }
            if Instant::now() > deadline {
                panic!("valkey on port {} did not answer PING", self.port);
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }
}

impl Drop for ValkeyServer {
    fn drop(&mut self) {
        self.kill();
    }
}

fn find_binary() -> Option<PathBuf> {
    if let Some(p) = std::env::var_os("SUBSTRATE_VALKEY_SERVER") {
        return Some(PathBuf::from(p));
    }
    let path = std::env::var_os("PATH")?;
    ["valkey-server", "redis-server"].iter().find_map(|name| {
        std::env::split_paths(&path)
            .map(|dir| dir.join(name))
            .find(|p| p.is_file())
    })
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("bind an ephemeral port")
}

/// Sends one command (after `AUTH` as `login`, if given) and returns its reply (a bulk
/// string is read completely).
fn command(port: u16, login: Option<&Login>, args: &[&str]) -> std::io::Result<String> {
    let mut s = TcpStream::connect(("127.0.0.1", port))?;
    s.set_read_timeout(Some(Duration::from_secs(2)))?;
    if let Some(login) = login {
        let mut auth = vec!["AUTH"];
        auth.extend(login.username.as_deref());
        auth.push(&login.password);
        s.write_all(&resp(&auth))?;
        let reply = read_reply(&mut s)?;
        if !reply.starts_with("+OK") {
            return Err(std::io::Error::other(format!("AUTH: {reply}")));
        }
    }
    s.write_all(&resp(args))?;
    read_reply(&mut s)
}

/// `args` as a RESP array of bulk strings.
fn resp(args: &[&str]) -> Vec<u8> {
    let mut out = format!("*{}\r\n", args.len()).into_bytes();
    for a in args {
        out.extend_from_slice(format!("${}\r\n", a.len()).as_bytes());
        out.extend_from_slice(a.as_bytes());
        out.extend_from_slice(b"\r\n");
    }
    out
}

/// Reads one reply: a line, or a bulk string completely.
fn read_reply(s: &mut TcpStream) -> std::io::Result<String> {
    let mut reply = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        let n = s.read(&mut buf)?;
        if n == 0 {
            break;
        }
        reply.extend_from_slice(&buf[..n]);
        let Some(header_end) = reply.windows(2).position(|w| w == b"\r\n") else {
            continue;
        };
        let header = String::from_utf8_lossy(&reply[..header_end]).into_owned();
        let wanted = match header.strip_prefix('$').map(str::parse::<usize>) {
            Some(Ok(len)) => header_end + 2 + len + 2,
            _ => header_end + 2,
        };
        if reply.len() >= wanted {
            break;
        }
    }
    Ok(String::from_utf8_lossy(&reply).into_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_taken_port_is_detected() {
        let a = ValkeyServer::start();
        let mut b = ValkeyServer {
            binary: a.binary.clone(),
            port: a.port(),
            tls_port: None,
            dir: tempfile::tempdir().expect("tempdir"),
            child: None,
            auth: ValkeyAuth::None,
            admin: None,
        };
        assert!(!b.spawn(), "b must not mistake a for itself");
        assert!(!b.is_running());
        assert!(
            command(a.port(), None, &["PING"])
                .expect("a still runs")
                .starts_with("+PONG")
        );
    }

    #[test]
    fn server_starts_restarts_and_keeps_data() {
        let mut s = ValkeyServer::start();
        let mut c = s.client().get_connection().expect("connect");
        redis::cmd("SET")
            .arg("k")
            .arg("v")
            .exec(&mut c)
            .expect("set");
        s.kill();
        assert!(command(s.port(), None, &["PING"]).is_err());
        s.restart();
        let mut c = s.client().get_connection().expect("reconnect");
        let v: String = redis::cmd("GET").arg("k").query(&mut c).expect("get");
        assert_eq!(v, "v");
        s.restart();
        let mut c = s.client().get_connection().expect("reconnect");
        let v: String = redis::cmd("GET").arg("k").query(&mut c).expect("get");
        assert_eq!(v, "v");
    }
}
