//! Test support (not used by the agent itself): a real, throw-away OCI registry on loopback and
//! the static `counter` demo binary and image.
//!
//! [`Registry::start`] runs Debian's `docker-registry` (the CNCF distribution registry, package
//! `docker-registry`; the binary can be overridden with `$SUBSTRATE_DOCKER_REGISTRY`) as
//! `docker-registry serve <config.yml>` with filesystem storage in a temporary directory and
//! `http.addr: 127.0.0.1:<free port>`, optionally behind htpasswd basic auth (bcrypt). The
//! process is killed and the directory removed on drop. Do not run the distro's own service: it
//! listens on every interface (`systemctl disable --now docker-registry`).
//!
//! ```no_run
//! # async fn demo() -> Result<(), Box<dyn std::error::Error>> {
//! use nodeagent::images::{ImageCache, testing};
//! let registry = testing::Registry::start()?;
//! let pushed = testing::push_counter(&registry, "substrate/counter:latest").await?;
//! let cache_dir = tempfile::tempdir()?;
//! let cache = ImageCache::new(registry.image_config(cache_dir.path()))?;
//! let rootfs = cache.ensure_rootfs(&pushed.reference).await?;
//! assert!(rootfs.path.join("counter").exists());
//! # Ok(()) }
//! ```

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use tracing::info;

use super::build::{BuildError, BuiltImage, FileSpec, ImageSpec, PushError, PushOptions};
use super::{BasicAuth, ImageConfig};

/// Where Debian installs the registry.
pub const DEFAULT_REGISTRY_BINARY: &str = "/usr/bin/docker-registry";
/// The target the static counter is built for.
pub const COUNTER_TARGET: &str = "x86_64-unknown-linux-gnu";
/// How long a registry may take to answer after start.
const READY_TIMEOUT: Duration = Duration::from_secs(30);

/// Failures of the test support.
#[derive(Debug, thiserror::Error)]
pub enum TestingError {
    #[error(
        "registry binary {path} not found (install Debian's docker-registry: apt-get install -y docker-registry, or set SUBSTRATE_DOCKER_REGISTRY)"
    )]
    RegistryNotInstalled { path: PathBuf },
    #[error("{op}: {source}")]
    Io {
        op: String,
        #[source]
        source: std::io::Error,
    },
    #[error("hashing the registry password: {0}")]
    Bcrypt(#[from] bcrypt::BcryptError),
    #[error("registry on {addr} did not become ready: {reason}; its log:\n{log}")]
    NotReady {
        addr: SocketAddr,
        reason: String,
        log: String,
    },
    #[error("building the static counter failed ({status}): {stderr}")]
    CounterBuild { status: String, stderr: String },
    #[error("{path} is not a static executable (it has an ELF interpreter)")]
    NotStatic { path: PathBuf },
    #[error(transparent)]
    Build(#[from] BuildError),
    #[error(transparent)]
    Push(#[from] PushError),
}

fn io(op: impl Into<String>) -> impl FnOnce(std::io::Error) -> TestingError {
    let op = op.into();
    move |source| TestingError::Io { op, source }
}

/// A running `docker-registry` on `127.0.0.1`, storing into a temporary directory.
#[derive(Debug)]
pub struct Registry {
    child: Option<Child>,
    dir: tempfile::TempDir,
    addr: SocketAddr,
    auth: Option<BasicAuth>,
    binary: PathBuf,
}

impl Registry {
    /// Starts an anonymous registry (pull and push without credentials).
    pub fn start() -> Result<Registry, TestingError> {
        Self::start_inner(None)
    }

    /// Starts a registry that requires basic auth with these credentials for everything.
    pub fn start_with_auth(auth: BasicAuth) -> Result<Registry, TestingError> {
        Self::start_inner(Some(auth))
    }

    fn start_inner(auth: Option<BasicAuth>) -> Result<Registry, TestingError> {
        let binary = std::env::var_os("SUBSTRATE_DOCKER_REGISTRY")
            .map(PathBuf::from)
            .unwrap_or_else(|| PathBuf::from(DEFAULT_REGISTRY_BINARY));
        if !binary.exists() {
            return Err(TestingError::RegistryNotInstalled { path: binary });
        }
        let dir = tempfile::Builder::new()
            .prefix("substrate-registry-")
            .tempdir()
            .map_err(io("creating the registry directory"))?;
        std::fs::create_dir(dir.path().join("storage")).map_err(io("creating storage"))?;
        if let Some(a) = &auth {
            let hash = bcrypt::hash(&a.password, 4)?;
            std::fs::write(
                dir.path().join("htpasswd"),
                format!("{}:{hash}\n", a.username),
            )
            .map_err(io("writing htpasswd"))?;
        }
        let mut registry = Registry {
            child: None,
            dir,
            // Replaced by the first successful spawn.
            addr: SocketAddr::from(([127, 0, 0, 1], 0)),
            auth,
            binary,
        };
        // A free port can be taken by someone else between probing and binding: retry.
        let mut last = None;
        for _ in 0..5 {
            registry.addr = free_port()?;
            match registry.spawn() {
                Ok(()) => return Ok(registry),
                Err(e @ TestingError::NotReady { .. }) => last = Some(e),
                Err(e) => return Err(e),
            }
        }
        Err(last.expect("loop ran at least once"))
    }

    fn write_config(&self) -> Result<PathBuf, TestingError> {
        let q = |p: &Path| serde_json::to_string(&p.to_string_lossy()).expect("string serializes");
        let mut config = format!(
            "version: 0.1\n\
             log:\n  level: warn\n  accesslog:\n    disabled: true\n\
             storage:\n  filesystem:\n    rootdirectory: {}\n  delete:\n    enabled: true\n\
             \x20 maintenance:\n    uploadpurging:\n      enabled: false\n\
             http:\n  addr: {}\n  secret: substrate-test-registry\n",
            q(&self.storage_dir()),
            self.addr
        );
        if self.auth.is_some() {
            config.push_str(&format!(
                "auth:\n  htpasswd:\n    realm: substrate-test\n    path: {}\n",
                q(&self.dir.path().join("htpasswd"))
            ));
        }
        let path = self.dir.path().join("config.yml");
        std::fs::write(&path, config).map_err(io("writing the registry config"))?;
        Ok(path)
    }

    fn log_path(&self) -> PathBuf {
        self.dir.path().join("registry.log")
    }

    fn spawn(&mut self) -> Result<(), TestingError> {
        let config = self.write_config()?;
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.log_path())
            .map_err(io("opening the registry log"))?;
        let log2 = log.try_clone().map_err(io("opening the registry log"))?;
        let child = Command::new(&self.binary)
            .arg("serve")
            .arg(&config)
            .stdin(Stdio::null())
            .stdout(log)
            .stderr(log2)
            .spawn()
            .map_err(io(format!("starting {}", self.binary.display())))?;
        self.child = Some(child);
        match self.wait_ready() {
            Ok(()) => {
                info!(addr = %self.addr, auth = self.auth.is_some(), "test registry ready");
                Ok(())
            }
            Err(e) => {
                self.stop();
                Err(e)
            }
        }
    }

    fn wait_ready(&mut self) -> Result<(), TestingError> {
        let deadline = Instant::now() + READY_TIMEOUT;
        let not_ready = |this: &Registry, reason: String| TestingError::NotReady {
            addr: this.addr,
            reason,
            log: std::fs::read_to_string(this.log_path()).unwrap_or_default(),
        };
        loop {
            if let Some(child) = self.child.as_mut()
                && let Ok(Some(status)) = child.try_wait()
            {
                return Err(not_ready(self, format!("it exited with {status}")));
            }
            if let Ok(status) = probe(self.addr)
                && (status == 200 || status == 401)
            {
                return Ok(());
            }
            if Instant::now() > deadline {
                return Err(not_ready(
                    self,
                    format!("no answer within {READY_TIMEOUT:?}"),
                ));
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// `127.0.0.1:<port>`: the registry part of references.
    pub fn host(&self) -> String {
        self.addr.to_string()
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// The credentials it requires, if any.
    pub fn auth(&self) -> Option<&BasicAuth> {
        self.auth.as_ref()
    }

    /// `<host>/<repository_and_tag>`.
    pub fn reference(&self, repository_and_tag: &str) -> String {
        format!("{}/{repository_and_tag}", self.host())
    }

    /// An [`ImageConfig`] for a cache in `cache_dir` that reaches this registry over plain HTTP
    /// with its credentials.
    pub fn image_config(&self, cache_dir: impl Into<PathBuf>) -> ImageConfig {
        let mut c = ImageConfig::new(cache_dir);
        c.insecure_registries.push(self.host());
        if let Some(a) = &self.auth {
            c.auth.insert(self.host(), a.clone());
        }
        c
    }

    /// [`PushOptions`] for this registry (plain HTTP, its credentials).
    pub fn push_options(&self) -> PushOptions {
        PushOptions {
            insecure: true,
            auth: self.auth.clone(),
        }
    }

    /// The registry's storage root.
    pub fn storage_dir(&self) -> PathBuf {
        self.dir.path().join("storage")
    }

    /// The file holding a blob's bytes in the registry's storage (for corruption tests).
    pub fn blob_data_path(&self, digest: &str) -> PathBuf {
        let hex = digest.trim_start_matches("sha256:");
        self.storage_dir()
            .join("docker/registry/v2/blobs/sha256")
            .join(&hex[..2.min(hex.len())])
            .join(hex)
            .join("data")
    }

    pub fn is_running(&mut self) -> bool {
        self.child
            .as_mut()
            .is_some_and(|c| matches!(c.try_wait(), Ok(None)))
    }

    /// Kills the registry (SIGKILL) and waits for it; storage is kept for [`Registry::restart`].
    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Starts the registry again on the same port with the same storage.
    pub fn restart(&mut self) -> Result<(), TestingError> {
        self.stop();
        self.spawn()
    }
}

impl Drop for Registry {
    fn drop(&mut self) {
        self.stop();
    }
}

fn free_port() -> Result<SocketAddr, TestingError> {
    let l = TcpListener::bind(("127.0.0.1", 0)).map_err(io("finding a free port"))?;
    l.local_addr().map_err(io("finding a free port"))
}

/// `GET /v2/` and returns the status code.
fn probe(addr: SocketAddr) -> std::io::Result<u16> {
    let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(1))?;
    s.set_read_timeout(Some(Duration::from_secs(2)))?;
    write!(s, "GET /v2/ HTTP/1.0\r\nHost: {addr}\r\n\r\n")?;
    let mut buf = [0u8; 64];
    let n = s.read(&mut buf)?;
    let head = String::from_utf8_lossy(&buf[..n]);
    head.split(' ')
        .nth(1)
        .and_then(|c| c.parse().ok())
        .ok_or_else(|| std::io::Error::other(format!("unexpected answer {head:?}")))
}

/// The workspace root (parent of the nodeagent crate).
pub fn workspace_root() -> PathBuf {
    let manifest = Path::new(env!("CARGO_MANIFEST_DIR"));
    manifest.parent().unwrap_or(manifest).to_path_buf()
}

/// Builds the `counter` demo as a static executable (once per process) and returns its path:
///
/// ```text
/// RUSTFLAGS='-C target-feature=+crt-static' CARGO_TARGET_DIR=<workspace>/target/static \
///   cargo build --release -p counter --target x86_64-unknown-linux-gnu
/// ```
///
/// A target directory of its own keeps it from waiting on (or invalidating) the main one.
pub fn counter_binary() -> Result<PathBuf, TestingError> {
    static BUILT: OnceLock<Result<PathBuf, String>> = OnceLock::new();
    let result = BUILT.get_or_init(|| build_counter().map_err(|e| e.to_string()));
    result.clone().map_err(|stderr| TestingError::CounterBuild {
        status: "earlier attempt in this process".to_string(),
        stderr,
    })
}

fn build_counter() -> Result<PathBuf, TestingError> {
    let root = workspace_root();
    let target_dir = root.join("target/static");
    let cargo = std::env::var_os("CARGO")
        .or_else(|| option_env!("CARGO").map(Into::into))
        .unwrap_or_else(|| "cargo".into());
    let out = Command::new(cargo)
        .current_dir(&root)
        .args([
            "build",
            "--release",
            "-p",
            "counter",
            "--target",
            COUNTER_TARGET,
        ])
        .env("RUSTFLAGS", "-C target-feature=+crt-static")
        .env_remove("CARGO_ENCODED_RUSTFLAGS")
        .env("CARGO_TARGET_DIR", &target_dir)
        .stdin(Stdio::null())
        .output()
        .map_err(io("running cargo build for counter"))?;
    if !out.status.success() {
        return Err(TestingError::CounterBuild {
            status: out.status.to_string(),
            stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
        });
    }
    let path = target_dir.join(COUNTER_TARGET).join("release/counter");
    let bytes = std::fs::read(&path).map_err(io(format!("reading {}", path.display())))?;
    if has_elf_interpreter(&bytes) {
        return Err(TestingError::NotStatic { path });
    }
    Ok(path)
}

/// Whether an ELF64 little-endian executable asks for a dynamic loader (`PT_INTERP`).
/// Anything that is not such an ELF file counts as dynamic.
pub fn has_elf_interpreter(elf: &[u8]) -> bool {
    const PT_INTERP: u32 = 3;
    if elf.len() < 64 || &elf[..4] != b"\x7fELF" || elf[4] != 2 || elf[5] != 1 {
        return true;
    }
    let u16_at = |o: usize| u16::from_le_bytes([elf[o], elf[o + 1]]) as usize;
    let mut phoff_bytes = [0u8; 8];
    phoff_bytes.copy_from_slice(&elf[0x20..0x28]);
    let phoff = u64::from_le_bytes(phoff_bytes) as usize;
    let (phentsize, phnum) = (u16_at(0x36), u16_at(0x38));
    (0..phnum).any(|i| {
        let o = phoff.saturating_add(i * phentsize);
        elf.get(o..o + 4)
            .is_none_or(|t| u32::from_le_bytes([t[0], t[1], t[2], t[3]]) == PT_INTERP)
    })
}

/// The `counter` image: `/counter` (mode 0755) as entrypoint, `PORT=8080`,
/// `DATA_FILE=/data/file`, port 8080/tcp exposed. The same as
///
/// ```text
/// substrate-image push --file <counter>:/counter:0755 --entrypoint /counter \
///   --env PORT=8080 --env DATA_FILE=/data/file --port 8080 --ref <ref> --insecure
/// ```
pub fn counter_image_spec(binary: &Path) -> ImageSpec {
    ImageSpec {
        files: vec![FileSpec {
            source: binary.to_path_buf(),
            dest: "/counter".to_string(),
            mode: Some(0o755),
        }],
        entrypoint: vec!["/counter".to_string()],
        env: vec!["PORT=8080".to_string(), "DATA_FILE=/data/file".to_string()],
        exposed_ports: vec!["8080".to_string()],
        ..ImageSpec::default()
    }
}

/// What [`push_counter`] pushed.
#[derive(Debug, Clone)]
pub struct PushedImage {
    /// `<host>/<repository>@sha256:...`
    pub reference: String,
    /// `<host>/<repository_and_tag>` as given.
    pub tag_reference: String,
    pub image: BuiltImage,
}

/// Builds the static counter, packs it as the counter image and pushes it to `registry` as
/// `repository_and_tag` (e.g. `substrate/counter:latest`).
pub async fn push_counter(
    registry: &Registry,
    repository_and_tag: &str,
) -> Result<PushedImage, TestingError> {
    push_counter_with(registry, repository_and_tag, |_| {}).await
}

/// [`push_counter`] with the image spec changed by `edit` first (another version of it:
/// an extra file, another environment).
pub async fn push_counter_with(
    registry: &Registry,
    repository_and_tag: &str,
    edit: impl FnOnce(&mut ImageSpec),
) -> Result<PushedImage, TestingError> {
    let binary = tokio::task::spawn_blocking(counter_binary)
        .await
        .map_err(|e| io("building counter")(std::io::Error::other(e)))??;
    let mut spec = counter_image_spec(&binary);
    edit(&mut spec);
    let image = super::build::build_image(&spec)?;
    let tag_reference = registry.reference(repository_and_tag);
    let digest = super::push_image(&image, &tag_reference, &registry.push_options()).await?;
    let repository = repository_and_tag
        .split_once(':')
        .map_or(repository_and_tag, |(r, _)| r);
    Ok(PushedImage {
        reference: format!("{}/{repository}@{digest}", registry.host()),
        tag_reference,
        image,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn elf_interpreter_detection() {
        // This test binary is dynamically linked (the default for the gnu target).
        let me = std::fs::read(std::env::current_exe().unwrap()).unwrap();
        assert!(has_elf_interpreter(&me));
        assert!(has_elf_interpreter(b"#!/bin/sh\n"));
    }
}
