//! Test support: a real, throw-away `valkey-server` (or `redis-server`).
//!
//! [`ValkeyServer::start`] runs the server on a free loopback port with its data in a
//! temporary directory, AOF on with `fsync` on every write (`--appendonly yes
//! --appendfsync always --save ''`), so [`ValkeyServer::kill`] followed by
//! [`ValkeyServer::restart`] loses no acknowledged write. The process is killed on drop.

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// Arguments of a standalone apiserver for tests of other crates: a free loopback port,
/// `valkey`, its PKI in `dir/pki` and its admin kubeconfig written to `dir/kubeconfig`
/// (the returned path).
pub fn apiserver_args(valkey: &ValkeyServer, dir: &Path) -> (crate::config::Args, PathBuf) {
    use clap::Parser as _;
    let kubeconfig = dir.join("kubeconfig");
    let args = crate::config::Args::try_parse_from([
        "substrate-apiserver".to_string(),
        "--bind=127.0.0.1:0".into(),
        format!("--valkey-url={}", valkey.url()),
        format!("--pki-dir={}", dir.join("pki").display()),
        format!("--kubeconfig-out={}", kubeconfig.display()),
        // Standalone even when the tests run inside a Kubernetes pod.
        "--standalone".into(),
    ])
    .expect("apiserver arguments");
    (args, kubeconfig)
}

/// How long to wait for the server to answer `PING` (AOF replay included).
const START_TIMEOUT: Duration = Duration::from_secs(20);

/// A running `valkey-server`/`redis-server` for tests. See the module docs.
#[derive(Debug)]
pub struct ValkeyServer {
    binary: PathBuf,
    port: u16,
    dir: tempfile::TempDir,
    child: Option<Child>,
}

impl ValkeyServer {
    /// Starts a server on a free port and waits until it answers `PING`.
    ///
    /// # Panics
    /// When neither `valkey-server` nor `redis-server` is on `PATH` (run `hack/test.sh`, which
    /// installs it), or when the server does not come up.
    pub fn start() -> Self {
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
        let mut server = Self {
            binary,
            port: 0,
            dir,
            child: None,
        };
        // Another test may grab the same free port between our probe and the server's bind.
        for _ in 0..5 {
            server.port = free_port();
            if server.spawn() {
                return server;
            }
        }
        panic!("valkey could not bind a free port in 5 attempts");
    }

    /// `redis://127.0.0.1:<port>/`.
    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}/", self.port)
    }

    /// The TCP port.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// The data directory.
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// A client for direct inspection in tests.
    pub fn client(&self) -> redis::Client {
        redis::Client::open(self.url()).expect("valid redis url")
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
        let _ = command(self.port, "SHUTDOWN");
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
        let child = Command::new(&self.binary)
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
            if let Ok(reply) = command(self.port, "PING")
                && reply.starts_with("+PONG")
            {
                let info = command(self.port, "INFO server").unwrap_or_default();
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

/// Sends one inline command and returns its reply (a bulk string is read completely).
fn command(port: u16, cmd: &str) -> std::io::Result<String> {
    let mut s = TcpStream::connect(("127.0.0.1", port))?;
    s.set_read_timeout(Some(Duration::from_secs(2)))?;
    s.write_all(format!("{cmd}\r\n").as_bytes())?;
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
            dir: tempfile::tempdir().expect("tempdir"),
            child: None,
        };
        assert!(!b.spawn(), "b must not mistake a for itself");
        assert!(!b.is_running());
        assert!(
            command(a.port(), "PING")
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
        assert!(command(s.port(), "PING").is_err());
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
