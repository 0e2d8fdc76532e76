//! A typed async wrapper over the `runsc` (gVisor) command line.
//!
//! Every call is one `runsc` process with the configured global flags
//! (`--root`, `--platform`, `--network`, `--overlay2`, `--net-disconnect-ok`, extra flags).
//! Failures keep the command line, the exit status and runsc's stderr
//! ([`RunscError::Failed`]); a failed `checkpoint` is its own kind
//! ([`RunscError::CheckpointFailed`]) because runsc kills the sandbox when a save fails.
//!
//! # Environment facts this module handles
//!
//! - **`--network=sandbox` is refused in a network namespace** by the Debian runsc
//!   (`0.0~20240729`): it decides it runs in the root namespace when
//!   `/proc/sys/net/core/rmem_default` exists, which on this kernel is true in every
//!   namespace. Boot commands (`create`, `run`, `restore`) therefore run as
//!   `unshare --mount --propagation private sh -c '<prepare>; runsc …'`: in a private mount
//!   namespace an empty tmpfs is mounted over `/proc/sys/net`, which only the runsc CLI and
//!   the sandbox/gofer processes it spawns see. util-linux `unshare` instead of
//!   `unshare(2)` in a `pre_exec` hook keeps the crate free of `unsafe` (pre_exec is unsafe)
//!   and costs ~8 ms per boot (measured), against ~200 ms for the boot itself.
//! - **The shared root filesystem is protected twice.** The OCI root must be writable for
//!   `--overlay2=root:memory` to apply (with `root.readonly: true` runsc skips the overlay
//!   and writes fail with EROFS), so the same prepare step also bind-mounts the rootfs
//!   read-only over itself in that private namespace: the gofer can read it but nothing in
//!   or around the sandbox can write it, and all writes land in the in-memory overlay,
//!   which is part of the checkpoint.
//! - **Checkpoint with open TCP connections** fails (and kills the sandbox) unless the
//!   sandbox was booted with `--net-disconnect-ok`; even a server-side connection in
//!   TIME_WAIT after a finished HTTP request counts. The flag is on by default.
//! - **After `checkpoint` the sandbox exits asynchronously** (runsc reports `running` for
//!   a second or more); callers `delete --force` right after a successful checkpoint: the
//!   image is complete when the CLI returns.
//!
//! # Crash-safe operation records
//!
//! Long operations (`run`, `restore`, `checkpoint`) can be given an [`OpRecord`]: the
//! command then runs under a small `sh` wrapper in its own process group that writes its pid
//! to `op.pid` and, when runsc exits, the exit code to `op.rc` (atomically). If the executor
//! is killed meanwhile the wrapper and runsc carry on, and the restarted executor learns the
//! outcome from the record instead of guessing from the container state (a stopped sandbox
//! after a checkpoint means success *or* failure).

use std::ffi::OsString;
use std::fmt;
use std::fs::{self, File, OpenOptions};
use std::io::{self, Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};
use std::process::{ExitStatus, Stdio};
use std::str::FromStr;
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};
use tokio::process::Command;
use tracing::{debug, warn};

/// Files of a runsc checkpoint image as written by the supported runsc versions.
pub const IMAGE_FILES: &[&str] = &["checkpoint.img", "pages_meta.img", "pages.img"];

/// The file that must exist in an image directory for `restore` to make sense.
pub const IMAGE_STATE_FILE: &str = "checkpoint.img";

/// How much of runsc's stderr an error keeps (runsc prints whole Go stack traces and
/// object dumps on a failed save; the first lines carry the reason).
const STDERR_KEEP: usize = 4096;

/// `$0` of the wrapper shell, so a recorded pid can be recognised in `/proc/<pid>/cmdline`.
const WRAPPER_NAME: &str = "substrate-runsc-op";

/// Prepares the private mount namespace, runs runsc, records its exit code.
/// Arguments: `$1` rootfs to protect (may be empty), `$2` rc file (may be empty), then argv.
const BOOT_SCRIPT: &str = r#"rootfs=$1; rc=$2; shift 2
mount -t tmpfs -o size=64k,mode=0555 substrate-sysnet /proc/sys/net || { echo "substrate: cannot mount a tmpfs over /proc/sys/net in the private mount namespace" >&2; exit 201; }
if [ -n "$rootfs" ]; then
  { mount --bind "$rootfs" "$rootfs" && mount -o remount,bind,ro "$rootfs"; } || { echo "substrate: cannot bind-mount $rootfs read-only" >&2; exit 202; }
fi
"$@"; s=$?
if [ -n "$rc" ]; then echo "$s" > "$rc.tmp" && mv -f "$rc.tmp" "$rc"; fi
exit "$s""#;

/// Runs runsc and records its exit code. `$1` rc file, then argv.
const RECORD_SCRIPT: &str = r#"rc=$1; shift
"$@"; s=$?
echo "$s" > "$rc.tmp" && mv -f "$rc.tmp" "$rc"
exit "$s""#;

/// The gVisor platform (`--platform`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Platform {
    /// The default: seccomp-based syscall interception.
    #[default]
    Systrap,
    /// The fallback where systrap does not work (slower).
    Ptrace,
    /// Hardware virtualisation (needs /dev/kvm).
    Kvm,
}

impl Platform {
    pub fn as_str(self) -> &'static str {
        match self {
            Platform::Systrap => "systrap",
            Platform::Ptrace => "ptrace",
            Platform::Kvm => "kvm",
        }
    }
}

impl fmt::Display for Platform {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for Platform {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "systrap" => Ok(Platform::Systrap),
            "ptrace" => Ok(Platform::Ptrace),
            "kvm" => Ok(Platform::Kvm),
            other => Err(format!(
                "unknown runsc platform {other:?} (expected systrap, ptrace or kvm)"
            )),
        }
    }
}

/// Configuration of one runsc "installation" (one `--root` directory: one per worker).
#[derive(Debug, Clone)]
pub struct RunscConfig {
    /// The runsc binary.
    pub path: PathBuf,
    /// `--root`: where runsc keeps container state. One per worker.
    pub root: PathBuf,
    pub platform: Platform,
    /// `--network` (`sandbox`: gVisor's netstack on the veth of the worker's netns).
    pub network: String,
    /// `--overlay2` (`root:memory`: root filesystem writes go to sandbox memory and are
    /// saved in the checkpoint).
    pub overlay2: String,
    /// `--net-disconnect-ok`: lets a checkpoint disconnect open TCP connections instead
    /// of failing (and killing the sandbox).
    pub net_disconnect_ok: bool,
    /// More global flags, passed verbatim before the subcommand (e.g. `--debug`).
    pub extra_flags: Vec<String>,
    /// When set: `--debug --debug-log=<dir>/`; errors then point at this directory.
    pub debug_log_dir: Option<PathBuf>,
    /// util-linux `unshare`, used for the private mount namespace of boot commands.
    pub unshare_path: PathBuf,
    /// Run boot commands (`create`, `run`, `restore`) through the mount-namespace wrapper
    /// (needed by the Debian runsc with `--network=sandbox`; see the module docs).
    pub boot_in_private_mount_ns: bool,
    /// Limit for `create`/`run`/`restore`.
    pub boot_timeout: Duration,
    /// Limit for `checkpoint`.
    pub checkpoint_timeout: Duration,
    /// Limit for `state`/`list`/`kill`/`delete`/`start`/`--version`.
    pub control_timeout: Duration,
}

impl Default for RunscConfig {
    fn default() -> Self {
        Self {
            path: PathBuf::from("/usr/bin/runsc"),
            root: PathBuf::from("/run/substrate/runsc"),
            platform: Platform::Systrap,
            network: "sandbox".into(),
            overlay2: "root:memory".into(),
            net_disconnect_ok: true,
            extra_flags: Vec::new(),
            debug_log_dir: None,
            unshare_path: PathBuf::from("/usr/bin/unshare"),
            boot_in_private_mount_ns: true,
            boot_timeout: Duration::from_secs(120),
            checkpoint_timeout: Duration::from_secs(600),
            control_timeout: Duration::from_secs(30),
        }
    }
}

/// A runsc command that did not do what was asked.
#[derive(Debug, thiserror::Error)]
pub enum RunscError {
    #[error("cannot start `{command}`")]
    Spawn {
        command: String,
        #[source]
        source: io::Error,
    },
    #[error("`{command}` failed ({status}): {stderr}{}", debug_hint(debug_log))]
    Failed {
        command: String,
        status: String,
        exit_code: Option<i32>,
        stderr: String,
        debug_log: Option<PathBuf>,
    },
    /// `runsc checkpoint` failed. runsc kills the sandbox when the save itself fails, so
    /// the caller must check whether the sandbox survived.
    #[error(
        "checkpoint failed: `{command}` ({status}): {stderr}{}",
        debug_hint(debug_log)
    )]
    CheckpointFailed {
        command: String,
        status: String,
        exit_code: Option<i32>,
        stderr: String,
        debug_log: Option<PathBuf>,
    },
    #[error("`{command}` did not finish within {timeout:?} and was killed")]
    Timeout { command: String, timeout: Duration },
    #[error("cannot parse the output of `{command}` (output: {output:?})")]
    Parse {
        command: String,
        output: String,
        #[source]
        source: serde_json::Error,
    },
    #[error("{what} {path}")]
    Io {
        what: &'static str,
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("invalid container id {id:?}: only letters, digits, '_', '-', '.' and '+' are allowed")]
    InvalidId { id: String },
}

fn debug_hint(debug_log: &Option<PathBuf>) -> String {
    match debug_log {
        Some(dir) => format!(" (runsc debug logs in {})", dir.display()),
        None => String::new(),
    }
}

impl RunscError {
    /// True for [`RunscError::Timeout`].
    pub fn is_timeout(&self) -> bool {
        matches!(self, RunscError::Timeout { .. })
    }
}

/// runsc's view of a container (`runsc state`, `runsc list --format=json`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ContainerState {
    pub id: String,
    pub status: ContainerStatus,
    /// The sandbox process (-1 or 0 when not running).
    #[serde(default)]
    pub pid: i64,
    #[serde(default)]
    pub bundle: PathBuf,
}

/// OCI container status as runsc reports it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(from = "String", into = "String")]
pub enum ContainerStatus {
    Creating,
    Created,
    Running,
    Paused,
    Stopped,
    Other(String),
}

impl ContainerStatus {
    pub fn as_str(&self) -> &str {
        match self {
            ContainerStatus::Creating => "creating",
            ContainerStatus::Created => "created",
            ContainerStatus::Running => "running",
            ContainerStatus::Paused => "paused",
            ContainerStatus::Stopped => "stopped",
            ContainerStatus::Other(s) => s,
        }
    }

    /// Whether the sandbox holds a live workload (running or paused).
    pub fn is_live(&self) -> bool {
        matches!(self, ContainerStatus::Running | ContainerStatus::Paused)
    }
}

impl From<String> for ContainerStatus {
    fn from(s: String) -> Self {
        match s.as_str() {
            "creating" => ContainerStatus::Creating,
            "created" => ContainerStatus::Created,
            "running" => ContainerStatus::Running,
            "paused" => ContainerStatus::Paused,
            "stopped" => ContainerStatus::Stopped,
            _ => ContainerStatus::Other(s),
        }
    }
}

impl From<ContainerStatus> for String {
    fn from(s: ContainerStatus) -> Self {
        s.as_str().to_string()
    }
}

/// Where the container's stdio goes for boot commands (the sandbox inherits the runsc
/// CLI's stdout/stderr, so this file also receives the CLI's own messages, which is where
/// a failed boot's error text is read back from).
#[derive(Debug, Clone)]
pub struct BootIo {
    /// Appended to; created if missing.
    pub log: PathBuf,
    /// Optional crash-safe record of the operation.
    pub record: Option<OpRecord>,
}

/// The files through which a long runsc operation survives an executor crash
/// (see the module docs).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OpRecord {
    dir: PathBuf,
}

/// What an [`OpRecord`] says about its operation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RecordedOutcome {
    /// No pid was recorded: the command was never started.
    NotStarted,
    /// The wrapper is still alive.
    InProgress { pid: i32 },
    /// runsc exited with this code.
    Finished { exit_code: i32 },
    /// The wrapper died without recording an exit code (killed).
    Vanished,
}

impl OpRecord {
    /// A record in `dir` (files `op.pid`, `op.rc`, `op.out`).
    pub fn new(dir: impl Into<PathBuf>) -> Self {
        Self { dir: dir.into() }
    }

    pub fn pid_file(&self) -> PathBuf {
        self.dir.join("op.pid")
    }

    pub fn rc_file(&self) -> PathBuf {
        self.dir.join("op.rc")
    }

    /// stdout+stderr of a recorded command that has no container log (checkpoint).
    pub fn output_file(&self) -> PathBuf {
        self.dir.join("op.out")
    }

    /// Removes the files of a previous operation.
    pub fn clear(&self) -> io::Result<()> {
        fs::create_dir_all(&self.dir)?;
        for f in [self.pid_file(), self.rc_file(), self.output_file()] {
            match fs::remove_file(&f) {
                Ok(()) => {}
                Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                Err(e) => return Err(e),
            }
        }
        Ok(())
    }

    /// Reads the record.
    pub fn outcome(&self) -> RecordedOutcome {
        if let Some(code) = fs::read_to_string(self.rc_file())
            .ok()
            .and_then(|s| s.trim().parse::<i32>().ok())
        {
            return RecordedOutcome::Finished { exit_code: code };
        }
        let Some(pid) = fs::read_to_string(self.pid_file())
            .ok()
            .and_then(|s| s.trim().parse::<i32>().ok())
        else {
            return RecordedOutcome::NotStarted;
        };
        if wrapper_alive(pid) {
            RecordedOutcome::InProgress { pid }
        } else {
            // The wrapper may have written rc between our two reads.
            match fs::read_to_string(self.rc_file())
                .ok()
                .and_then(|s| s.trim().parse::<i32>().ok())
            {
                Some(code) => RecordedOutcome::Finished { exit_code: code },
                None => RecordedOutcome::Vanished,
            }
        }
    }

    /// The recorded command's output (for error messages after a crash).
    pub fn output_tail(&self) -> String {
        read_from(&self.output_file(), 0).unwrap_or_default()
    }
}

/// Whether `pid` is a live wrapper shell of ours (not a recycled pid).
fn wrapper_alive(pid: i32) -> bool {
    match fs::read(format!("/proc/{pid}/cmdline")) {
        Ok(cmdline) => {
            let stat = fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
            // A zombie (state Z) has finished.
            let zombie = stat
                .rsplit_once(") ")
                .is_some_and(|(_, rest)| rest.starts_with('Z'));
            !zombie
                && cmdline
                    .split(|b| *b == 0)
                    .any(|arg| arg == WRAPPER_NAME.as_bytes())
        }
        Err(_) => false,
    }
}

/// Options of [`Runsc::checkpoint`].
#[derive(Debug, Clone, Default)]
pub struct CheckpointOptions {
    /// `--leave-running`: keep the sandbox running after the save.
    pub leave_running: bool,
    pub record: Option<OpRecord>,
}

/// The runsc CLI with one configuration.
#[derive(Debug, Clone)]
pub struct Runsc {
    cfg: RunscConfig,
}

/// One prepared invocation.
struct Invocation {
    program: PathBuf,
    args: Vec<OsString>,
    /// The runsc command line as a human reads it (without wrappers).
    display: String,
}

enum Output {
    /// stdout and stderr captured through pipes.
    Piped,
    /// stdout and stderr appended to a file; on failure the part written by this command
    /// is read back as its stderr.
    File(PathBuf),
}

struct Finished {
    status: ExitStatus,
    stdout: String,
    stderr: String,
}

impl Runsc {
    pub fn new(cfg: RunscConfig) -> Self {
        Self { cfg }
    }

    pub fn config(&self) -> &RunscConfig {
        &self.cfg
    }

    /// The global flags every command gets.
    pub fn global_args(&self) -> Vec<String> {
        let c = &self.cfg;
        let mut args = vec![
            format!("--root={}", c.root.display()),
            format!("--platform={}", c.platform),
            format!("--network={}", c.network),
            format!("--overlay2={}", c.overlay2),
        ];
        if c.net_disconnect_ok {
            args.push("--net-disconnect-ok".into());
        }
        if let Some(dir) = &c.debug_log_dir {
            args.push("--debug".into());
            args.push(format!("--debug-log={}/", dir.display()));
        }
        args.extend(c.extra_flags.iter().cloned());
        args
    }

    fn runsc_args(&self, sub: &[&str], rest: &[OsString]) -> (Vec<OsString>, String) {
        let mut args: Vec<OsString> = self.global_args().into_iter().map(Into::into).collect();
        args.extend(sub.iter().map(OsString::from));
        args.extend(rest.iter().cloned());
        let display = std::iter::once(self.cfg.path.to_string_lossy().into_owned())
            .chain(args.iter().map(|a| a.to_string_lossy().into_owned()))
            .collect::<Vec<_>>()
            .join(" ");
        (args, display)
    }

    /// A plain runsc invocation.
    fn direct(&self, sub: &[&str], rest: &[OsString]) -> Invocation {
        let (args, display) = self.runsc_args(sub, rest);
        Invocation {
            program: self.cfg.path.clone(),
            args,
            display,
        }
    }

    /// A boot invocation: private mount namespace (if configured) and optional record.
    fn boot(
        &self,
        sub: &[&str],
        rest: &[OsString],
        rootfs: Option<&Path>,
        record: Option<&OpRecord>,
    ) -> Invocation {
        let (runsc_args, display) = self.runsc_args(sub, rest);
        let rc = record
            .map(|r| r.rc_file().into_os_string())
            .unwrap_or_default();
        let mut args: Vec<OsString> = Vec::new();
        let program = if self.cfg.boot_in_private_mount_ns {
            args.extend(
                [
                    "--mount",
                    "--propagation",
                    "private",
                    "/bin/sh",
                    "-c",
                    BOOT_SCRIPT,
                ]
                .map(OsString::from),
            );
            args.push(WRAPPER_NAME.into());
            args.push(rootfs.map(|p| p.as_os_str().to_owned()).unwrap_or_default());
            args.push(rc);
            self.cfg.unshare_path.clone()
        } else if record.is_some() {
            args.extend(["-c", RECORD_SCRIPT].map(OsString::from));
            args.push(WRAPPER_NAME.into());
            args.push(rc);
            PathBuf::from("/bin/sh")
        } else {
            return Invocation {
                program: self.cfg.path.clone(),
                args: runsc_args,
                display,
            };
        };
        args.push(self.cfg.path.clone().into_os_string());
        args.extend(runsc_args);
        Invocation {
            program,
            args,
            display,
        }
    }

    /// A recorded (crash-safe) non-boot invocation.
    fn recorded(&self, sub: &[&str], rest: &[OsString], record: &OpRecord) -> Invocation {
        let (runsc_args, display) = self.runsc_args(sub, rest);
        let mut args: Vec<OsString> = ["-c", RECORD_SCRIPT].map(OsString::from).to_vec();
        args.push(WRAPPER_NAME.into());
        args.push(record.rc_file().into_os_string());
        args.push(self.cfg.path.clone().into_os_string());
        args.extend(runsc_args);
        Invocation {
            program: PathBuf::from("/bin/sh"),
            args,
            display,
        }
    }

    async fn exec(
        &self,
        inv: Invocation,
        output: Output,
        timeout: Duration,
        record: Option<&OpRecord>,
    ) -> Result<Finished, RunscError> {
        let mut cmd = Command::new(&inv.program);
        cmd.args(&inv.args)
            .stdin(Stdio::null())
            .kill_on_drop(true)
            // Own process group: a timeout kills the wrapper *and* runsc, and a Ctrl-C
            // aimed at the executor does not interrupt an operation half-way.
            .process_group(0);
        let mut offset = 0;
        match &output {
            Output::Piped => {
                cmd.stdout(Stdio::piped()).stderr(Stdio::piped());
            }
            Output::File(path) => {
                if let Some(parent) = path.parent() {
                    fs::create_dir_all(parent).map_err(|source| RunscError::Io {
                        what: "cannot create log directory",
                        path: parent.to_path_buf(),
                        source,
                    })?;
                }
                let file = OpenOptions::new()
                    .create(true)
                    .append(true)
                    .open(path)
                    .map_err(|source| RunscError::Io {
                        what: "cannot open log file",
                        path: path.clone(),
                        source,
                    })?;
                offset = file.metadata().map(|m| m.len()).unwrap_or(0);
                let err = file.try_clone().map_err(|source| RunscError::Io {
                    what: "cannot open log file",
                    path: path.clone(),
                    source,
                })?;
                cmd.stdout(Stdio::from(file)).stderr(Stdio::from(err));
            }
        }
        let started = Instant::now();
        debug!(command = %inv.display, "runsc");
        let child = crate::reaper::spawn(&mut cmd).map_err(|source| RunscError::Spawn {
            command: format!("{} ({})", inv.display, inv.program.display()),
            source,
        })?;
        let pid = child.id();
        if let (Some(rec), Some(pid)) = (record, pid) {
            let pid_file = rec.pid_file();
            let tmp = pid_file.with_extension("pid.tmp");
            let written =
                fs::write(&tmp, pid.to_string()).and_then(|()| fs::rename(&tmp, &pid_file));
            if let Err(source) = written {
                warn!(path = %pid_file.display(), error = %source, "cannot record operation pid");
            }
        }
        let waited = tokio::time::timeout(timeout, child.wait_with_output()).await;
        if waited.is_ok() {
            // Waited for: the reaper may handle this pid again. (After a timeout the pid
            // stays registered: tokio reaps the killed child in the background.)
            crate::reaper::release(pid);
        }
        let out = match waited {
            Ok(Ok(out)) => out,
            Ok(Err(source)) => {
                return Err(RunscError::Spawn {
                    command: inv.display,
                    source,
                });
            }
            Err(_) => {
                // The future (and the child handle, kill_on_drop) is gone; also kill the
                // whole process group so runsc does not outlive its wrapper.
                if let Some(pid) = pid.and_then(|p| i32::try_from(p).ok()) {
                    let _ = nix::sys::signal::killpg(
                        nix::unistd::Pid::from_raw(pid),
                        nix::sys::signal::Signal::SIGKILL,
                    );
                }
                return Err(RunscError::Timeout {
                    command: inv.display,
                    timeout,
                });
            }
        };
        debug!(command = %inv.display, elapsed_ms = started.elapsed().as_millis() as u64, status = %out.status, "runsc done");
        let (stdout, stderr) = match &output {
            Output::Piped => (
                String::from_utf8_lossy(&out.stdout).into_owned(),
                String::from_utf8_lossy(&out.stderr).into_owned(),
            ),
            Output::File(path) => {
                let text = if out.status.success() {
                    String::new()
                } else {
                    read_from(path, offset).unwrap_or_default()
                };
                (String::new(), text)
            }
        };
        Ok(Finished {
            status: out.status,
            stdout,
            stderr,
        })
    }

    fn failed(&self, display: String, f: Finished) -> RunscError {
        RunscError::Failed {
            command: display,
            status: f.status.to_string(),
            exit_code: f.status.code(),
            stderr: trim_stderr(&f.stderr),
            debug_log: self.cfg.debug_log_dir.clone(),
        }
    }

    async fn control(&self, sub: &[&str], rest: &[OsString]) -> Result<String, RunscError> {
        let inv = self.direct(sub, rest);
        let display = inv.display.clone();
        let f = self
            .exec(inv, Output::Piped, self.cfg.control_timeout, None)
            .await?;
        if f.status.success() {
            Ok(f.stdout)
        } else {
            Err(self.failed(display, f))
        }
    }

    /// `runsc --version`: the first line, e.g. `runsc version 0.0~20240729.0`.
    pub async fn version(&self) -> Result<String, RunscError> {
        let inv = Invocation {
            program: self.cfg.path.clone(),
            args: vec!["--version".into()],
            display: format!("{} --version", self.cfg.path.display()),
        };
        let display = inv.display.clone();
        let f = self
            .exec(inv, Output::Piped, self.cfg.control_timeout, None)
            .await?;
        if !f.status.success() {
            return Err(self.failed(display, f));
        }
        Ok(f.stdout
            .lines()
            .next()
            .unwrap_or_default()
            .trim()
            .to_string())
    }

    /// `runsc create --bundle <bundle> <id>` (container created, process not started).
    pub async fn create(
        &self,
        id: &str,
        bundle: &Path,
        rootfs: Option<&Path>,
        io: &BootIo,
    ) -> Result<(), RunscError> {
        check_id(id)?;
        let rest = [
            OsString::from("--bundle"),
            bundle.as_os_str().to_owned(),
            id.into(),
        ];
        self.boot_cmd(&["create"], &rest, rootfs, io).await
    }

    /// `runsc start <id>`.
    pub async fn start(&self, id: &str) -> Result<(), RunscError> {
        check_id(id)?;
        self.control(&["start"], &[id.into()]).await.map(drop)
    }

    /// `runsc run --detach --bundle <bundle> <id>`: create and start.
    /// `rootfs` (the bundle's root path) is bind-mounted read-only for runsc.
    pub async fn run(
        &self,
        id: &str,
        bundle: &Path,
        rootfs: Option<&Path>,
        io: &BootIo,
    ) -> Result<(), RunscError> {
        check_id(id)?;
        let rest = [
            OsString::from("--detach"),
            "--bundle".into(),
            bundle.as_os_str().to_owned(),
            id.into(),
        ];
        self.boot_cmd(&["run"], &rest, rootfs, io).await
    }

    /// `runsc restore --detach --bundle <bundle> --image-path <image_dir> <id>`.
    pub async fn restore(
        &self,
        id: &str,
        bundle: &Path,
        rootfs: Option<&Path>,
        image_dir: &Path,
        io: &BootIo,
    ) -> Result<(), RunscError> {
        check_id(id)?;
        let rest = [
            OsString::from("--detach"),
            "--bundle".into(),
            bundle.as_os_str().to_owned(),
            "--image-path".into(),
            image_dir.as_os_str().to_owned(),
            id.into(),
        ];
        self.boot_cmd(&["restore"], &rest, rootfs, io).await
    }

    async fn boot_cmd(
        &self,
        sub: &[&str],
        rest: &[OsString],
        rootfs: Option<&Path>,
        io: &BootIo,
    ) -> Result<(), RunscError> {
        let inv = self.boot(sub, rest, rootfs, io.record.as_ref());
        let display = inv.display.clone();
        let f = self
            .exec(
                inv,
                Output::File(io.log.clone()),
                self.cfg.boot_timeout,
                io.record.as_ref(),
            )
            .await?;
        if f.status.success() {
            Ok(())
        } else {
            Err(self.failed(display, f))
        }
    }

    /// `runsc checkpoint --image-path <image_dir> --compression=none <id>`.
    ///
    /// The image is written uncompressed (our own zstd is smaller and faster than runsc's
    /// flate). Unless `leave_running`, the sandbox exits afterwards — and it is killed
    /// when the save fails ([`RunscError::CheckpointFailed`]).
    pub async fn checkpoint(
        &self,
        id: &str,
        image_dir: &Path,
        opts: &CheckpointOptions,
    ) -> Result<(), RunscError> {
        check_id(id)?;
        let mut rest = vec![
            OsString::from("--image-path"),
            image_dir.as_os_str().to_owned(),
            "--compression=none".into(),
        ];
        if opts.leave_running {
            rest.push("--leave-running".into());
        }
        rest.push(id.into());
        let (inv, output) = match &opts.record {
            Some(rec) => (
                self.recorded(&["checkpoint"], &rest, rec),
                Output::File(rec.output_file()),
            ),
            None => (self.direct(&["checkpoint"], &rest), Output::Piped),
        };
        let display = inv.display.clone();
        let f = self
            .exec(
                inv,
                output,
                self.cfg.checkpoint_timeout,
                opts.record.as_ref(),
            )
            .await?;
        if f.status.success() {
            Ok(())
        } else {
            Err(RunscError::CheckpointFailed {
                command: display,
                status: f.status.to_string(),
                exit_code: f.status.code(),
                stderr: trim_stderr(&f.stderr),
                debug_log: self.cfg.debug_log_dir.clone(),
            })
        }
    }

    /// `runsc kill [--all] <id> <signal>`.
    pub async fn kill(&self, id: &str, signal: &str, all: bool) -> Result<(), RunscError> {
        check_id(id)?;
        let mut rest: Vec<OsString> = Vec::new();
        if all {
            rest.push("--all".into());
        }
        rest.push(id.into());
        rest.push(signal.into());
        self.control(&["kill"], &rest).await.map(drop)
    }

    /// `runsc delete [--force] <id>` (`--force` kills a running sandbox first).
    pub async fn delete(&self, id: &str, force: bool) -> Result<(), RunscError> {
        check_id(id)?;
        let mut rest: Vec<OsString> = Vec::new();
        if force {
            rest.push("--force".into());
        }
        rest.push(id.into());
        self.control(&["delete"], &rest).await.map(drop)
    }

    /// `runsc state <id>`; `None` when runsc does not know the container.
    ///
    /// Implemented over `list` (same cost: one runsc process) so that "not found" does not
    /// depend on parsing runsc's error text.
    pub async fn state(&self, id: &str) -> Result<Option<ContainerState>, RunscError> {
        check_id(id)?;
        Ok(self.list().await?.into_iter().find(|c| c.id == id))
    }

    /// `runsc list --format=json`: every container in this root (empty when the root
    /// directory does not exist yet).
    pub async fn list(&self) -> Result<Vec<ContainerState>, RunscError> {
        let out = self.control(&["list"], &["--format=json".into()]).await?;
        parse_list(&out).map_err(|source| RunscError::Parse {
            command: self.direct(&["list"], &["--format=json".into()]).display,
            output: out.chars().take(512).collect(),
            source,
        })
    }
}

/// Parses `runsc list --format=json` output (`null` when empty).
pub fn parse_list(out: &str) -> Result<Vec<ContainerState>, serde_json::Error> {
    let parsed: Option<Vec<ContainerState>> = serde_json::from_str(out.trim())?;
    Ok(parsed.unwrap_or_default())
}

/// Parses `runsc state <id>` output.
pub fn parse_state(out: &str) -> Result<ContainerState, serde_json::Error> {
    serde_json::from_str(out.trim())
}

/// runsc's own id rule (`^[\w+\-\.]+$`).
fn check_id(id: &str) -> Result<(), RunscError> {
    let ok = !id.is_empty()
        && id
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.' | '+'));
    if ok {
        Ok(())
    } else {
        Err(RunscError::InvalidId { id: id.to_string() })
    }
}

fn trim_stderr(s: &str) -> String {
    let s = s.trim();
    if s.len() <= STDERR_KEEP {
        return s.to_string();
    }
    let mut end = STDERR_KEEP;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}… [{} more bytes]", &s[..end], s.len() - end)
}

/// Reads a file from `offset` (at most 64 KiB).
fn read_from(path: &Path, offset: u64) -> io::Result<String> {
    let mut f = File::open(path)?;
    f.seek(SeekFrom::Start(offset))?;
    let mut buf = Vec::new();
    f.take(64 * 1024).read_to_end(&mut buf)?;
    Ok(String::from_utf8_lossy(&buf).into_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_list_and_state() {
        assert_eq!(parse_list("null\n").unwrap(), vec![]);
        let list = parse_list(
            r#"[{"ociVersion":"1.0.2-dev","id":"a_b","status":"running","pid":7187,"bundle":"/tmp/b2"},
                {"ociVersion":"1.0.2-dev","id":"c_d","status":"stopped","pid":-1,"bundle":"/tmp/b3","created":"x"}]"#,
        )
        .unwrap();
        assert_eq!(list.len(), 2);
        assert_eq!(list[0].status, ContainerStatus::Running);
        assert_eq!(list[0].pid, 7187);
        assert!(list[0].status.is_live());
        assert_eq!(list[1].status, ContainerStatus::Stopped);
        assert!(!list[1].status.is_live());
        let st = parse_state(
            "{\n \"ociVersion\": \"1.0.2-dev\",\n \"id\": \"a1\",\n \"status\": \"weird\",\n \"pid\": -1,\n \"bundle\": \"/tmp/exp/b1\"\n}",
        )
        .unwrap();
        assert_eq!(st.status, ContainerStatus::Other("weird".into()));
        assert!(parse_list("ID PID STATUS").is_err());
    }

    #[test]
    fn global_args_follow_config() {
        let r = Runsc::new(RunscConfig {
            root: "/r".into(),
            platform: Platform::Ptrace,
            extra_flags: vec!["--debug".into()],
            ..Default::default()
        });
        assert_eq!(
            r.global_args(),
            [
                "--root=/r",
                "--platform=ptrace",
                "--network=sandbox",
                "--overlay2=root:memory",
                "--net-disconnect-ok",
                "--debug"
            ]
        );
        let r = Runsc::new(RunscConfig {
            net_disconnect_ok: false,
            debug_log_dir: Some("/logs".into()),
            ..Default::default()
        });
        let args = r.global_args();
        assert!(!args.contains(&"--net-disconnect-ok".to_string()));
        assert!(args.contains(&"--debug-log=/logs/".to_string()));
    }

    #[test]
    fn boot_invocation_wraps_in_private_mount_namespace() {
        let r = Runsc::new(RunscConfig::default());
        let rec = OpRecord::new("/state/op");
        let inv = r.boot(
            &["run"],
            &["--detach".into(), "x".into()],
            Some(Path::new("/images/rootfs")),
            Some(&rec),
        );
        assert_eq!(inv.program, PathBuf::from("/usr/bin/unshare"));
        let args: Vec<String> = inv
            .args
            .iter()
            .map(|a| a.to_string_lossy().into_owned())
            .collect();
        assert_eq!(
            &args[..5],
            ["--mount", "--propagation", "private", "/bin/sh", "-c"]
        );
        assert_eq!(args[6], WRAPPER_NAME);
        assert_eq!(args[7], "/images/rootfs");
        assert_eq!(args[8], "/state/op/op.rc");
        assert_eq!(args[9], "/usr/bin/runsc");
        assert!(inv.display.starts_with("/usr/bin/runsc --root="));
        assert!(inv.display.ends_with("run --detach x"));

        let plain = Runsc::new(RunscConfig {
            boot_in_private_mount_ns: false,
            ..Default::default()
        });
        let inv = plain.boot(&["run"], &["x".into()], None, None);
        assert_eq!(inv.program, PathBuf::from("/usr/bin/runsc"));
    }

    #[test]
    fn platform_parses() {
        assert_eq!("ptrace".parse::<Platform>().unwrap(), Platform::Ptrace);
        let err = "kvmm".parse::<Platform>().unwrap_err();
        assert!(err.contains("kvmm") && err.contains("systrap"));
    }

    #[test]
    fn ids_are_checked() {
        assert!(check_id("team-a_web-1").is_ok());
        assert!(matches!(check_id("a/b"), Err(RunscError::InvalidId { .. })));
        assert!(check_id("").is_err());
    }

    #[test]
    fn long_stderr_is_trimmed_at_a_char_boundary() {
        let s = "é".repeat(STDERR_KEEP);
        let t = trim_stderr(&s);
        assert!(t.len() < s.len());
        assert!(t.contains("more bytes"));
        assert_eq!(trim_stderr("  short \n"), "short");
    }

    #[tokio::test]
    async fn missing_binary_is_a_clear_spawn_error() {
        let r = Runsc::new(RunscConfig {
            path: "/nonexistent/runsc".into(),
            ..Default::default()
        });
        let err = r.version().await.unwrap_err();
        assert!(matches!(err, RunscError::Spawn { .. }), "{err}");
        assert!(err.to_string().contains("/nonexistent/runsc"), "{err}");
    }

    #[tokio::test]
    async fn failures_keep_status_and_stderr_and_records_survive() {
        // A stand-in "runsc" that fails like runsc does; exercises the real process
        // plumbing (pipes, files, records, process groups) without needing root.
        let dir = tempfile::tempdir().unwrap();
        let fake = dir.path().join("runsc");
        fs::write(
            &fake,
            "#!/bin/sh\nfor a in \"$@\"; do last=$a; done\necho \"loading container: file does not exist: $last\" >&2\nexit 128\n",
        )
        .unwrap();
        use std::os::unix::fs::PermissionsExt;
        fs::set_permissions(&fake, fs::Permissions::from_mode(0o755)).unwrap();
        let r = Runsc::new(RunscConfig {
            path: fake.clone(),
            root: dir.path().join("root"),
            boot_in_private_mount_ns: false,
            ..Default::default()
        });
        let err = r.kill("c1", "KILL", true).await.unwrap_err();
        match &err {
            RunscError::Failed {
                exit_code,
                stderr,
                command,
                ..
            } => {
                assert_eq!(*exit_code, Some(128));
                assert!(stderr.contains("file does not exist: KILL"), "{stderr}");
                assert!(command.contains("kill --all c1 KILL"), "{command}");
            }
            other => panic!("unexpected {other}"),
        }

        let rec = OpRecord::new(dir.path().join("op"));
        rec.clear().unwrap();
        assert_eq!(rec.outcome(), RecordedOutcome::NotStarted);
        let err = r
            .checkpoint(
                "c1",
                dir.path(),
                &CheckpointOptions {
                    leave_running: false,
                    record: Some(rec.clone()),
                },
            )
            .await
            .unwrap_err();
        assert!(
            matches!(
                err,
                RunscError::CheckpointFailed {
                    exit_code: Some(128),
                    ..
                }
            ),
            "{err}"
        );
        assert!(err.to_string().contains("file does not exist: c1"), "{err}");
        assert_eq!(rec.outcome(), RecordedOutcome::Finished { exit_code: 128 });

        let log = dir.path().join("logs/c1.log");
        let rec2 = OpRecord::new(dir.path().join("op2"));
        rec2.clear().unwrap();
        let err = r
            .run(
                "c1",
                dir.path(),
                None,
                &BootIo {
                    log: log.clone(),
                    record: Some(rec2.clone()),
                },
            )
            .await
            .unwrap_err();
        assert!(err.to_string().contains("file does not exist: c1"), "{err}");
        assert_eq!(rec2.outcome(), RecordedOutcome::Finished { exit_code: 128 });
        assert!(fs::read_to_string(&log).unwrap().contains("does not exist"));
    }

    #[tokio::test]
    async fn timeouts_kill_the_process_group() {
        let dir = tempfile::tempdir().unwrap();
        let fake = dir.path().join("runsc");
        fs::write(&fake, "#!/bin/sh\nsleep 30\n").unwrap();
        use std::os::unix::fs::PermissionsExt;
        fs::set_permissions(&fake, fs::Permissions::from_mode(0o755)).unwrap();
        let r = Runsc::new(RunscConfig {
            path: fake,
            root: dir.path().join("root"),
            control_timeout: Duration::from_millis(200),
            checkpoint_timeout: Duration::from_millis(200),
            ..Default::default()
        });
        let err = r.list().await.unwrap_err();
        assert!(err.is_timeout(), "{err}");
        let rec = OpRecord::new(dir.path().join("op"));
        rec.clear().unwrap();
        let err = r
            .checkpoint(
                "c1",
                dir.path(),
                &CheckpointOptions {
                    leave_running: false,
                    record: Some(rec.clone()),
                },
            )
            .await
            .unwrap_err();
        assert!(err.is_timeout(), "{err}");
        // The wrapper was killed with its group: the record says so (no rc written).
        let mut outcome = rec.outcome();
        for _ in 0..50 {
            if outcome == RecordedOutcome::Vanished {
                break;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
            outcome = rec.outcome();
        }
        assert_eq!(outcome, RecordedOutcome::Vanished);
    }
}
