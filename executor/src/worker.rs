//! The state machine of one worker: at most one actor sandbox at a time, keyed by actor.
//!
//! ```text
//!            run                       checkpoint (ok)
//!   Idle ─────────► Booting ──► Running ─────────────► Checkpointing ──► Idle
//!     │  restore                  │  ▲                      │ failed, sandbox killed ──► Idle
//!     └─────────► Restoring ──────┘  └──────────────────────┘ failed, sandbox alive
//!   Running ──kill──► Idle        Running ──(sandbox exits)──► Exited (reported live)
//! ```
//!
//! # Idempotency (every operation is keyed by actor)
//! - `run`/`restore` of the actor that is running here: success, `already_done`.
//! - `checkpoint` of an actor that is not running here, when `image_dir` holds a complete
//!   checkpoint of it (the [`CHECKPOINT_MARKER`] names it): success, `already_done`.
//! - `kill` of an actor that is not here: success, `already_done`.
//! - Any operation for a *different* actor while a live sandbox is here:
//!   [`WorkerError::Busy`]. A sandbox that has exited on its own does not block the worker.
//!
//! # Crash recovery (`recover`, run once at start)
//! The executor persists its state (`<state-dir>/state.json`, written atomically) *before*
//! every runsc operation and records the operation's pid and exit code
//! ([`crate::runsc::OpRecord`]). On start it reads both and `runsc list`:
//! - an operation that was in flight is waited for (the runsc process outlives the
//!   executor) and then completed as if the executor had seen it finish: a finished
//!   checkpoint is finalized (sandbox deleted, marker written, worker free); a successful
//!   boot is adopted; a failed or vanished one is cleaned up;
//! - a `Running` actor whose sandbox still runs is **adopted** (a restart of the executor
//!   does not disturb the actor); one whose sandbox is gone is cleaned up (worker free);
//! - with no state file, a single running sandbox whose id maps to an actor is adopted;
//! - every other container in the worker's runsc root is killed and deleted;
//! - when the worker network had to be recreated, an adopted sandbox lost its interface
//!   and is killed.
//!
//! # The fence ([`Worker::fence_if_silent`])
//! Every call from the node agent is *contact* ([`Worker::touch`], at the start of each gRPC
//! call except a status probe). A worker whose sandbox runs and that has had no contact for
//! the fence time stops the sandbox and records a [`FenceInfo`] (persisted, reported in
//! status until the next boot): a dead agent must not leave a sandbox serving past the point
//! where the control plane releases its actor to its last good snapshot (see
//! `crds::liveness`). An operation in flight holds the fence off until it ends; the silence
//! is measured from the last contact, not from the end of the operation.

use std::fs::{self, File};
use std::future::Future;
use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};
use tracing::{debug, info, warn};

use crate::actor::ActorKey;
use crate::bundle::{self, ActorSpec, BundleError, Placement};
use crate::net::{NetError, NetInfo, WorkerNet};
use crate::runsc::{
    BootIo, CheckpointOptions, ContainerState, IMAGE_FILES, IMAGE_STATE_FILE, OpRecord,
    RecordedOutcome, Runsc, RunscError,
};

/// Written into the image directory after a successful checkpoint (last, atomically): a
/// JSON [`CheckpointInfo`]. Its presence means the image in that directory is complete and
/// belongs to the named actor.
pub const CHECKPOINT_MARKER: &str = "substrate-checkpoint.json";

/// Container logs bigger than this are rotated (one old generation kept) at the next boot.
const LOG_ROTATE_BYTES: u64 = 16 * 1024 * 1024;

/// The container runtime the worker drives (runsc; a fake in tests).
pub trait Runtime: Send + Sync + 'static {
    fn version(&self) -> impl Future<Output = Result<String, RunscError>> + Send;
    fn run(
        &self,
        id: &str,
        bundle: &Path,
        rootfs: &Path,
        io: &BootIo,
    ) -> impl Future<Output = Result<(), RunscError>> + Send;
    fn restore(
        &self,
        id: &str,
        bundle: &Path,
        rootfs: &Path,
        image_dir: &Path,
        io: &BootIo,
    ) -> impl Future<Output = Result<(), RunscError>> + Send;
    fn checkpoint(
        &self,
        id: &str,
        image_dir: &Path,
        opts: &CheckpointOptions,
    ) -> impl Future<Output = Result<(), RunscError>> + Send;
    fn kill(
        &self,
        id: &str,
        signal: &str,
        all: bool,
    ) -> impl Future<Output = Result<(), RunscError>> + Send;
    fn delete(&self, id: &str, force: bool) -> impl Future<Output = Result<(), RunscError>> + Send;
    fn list(&self) -> impl Future<Output = Result<Vec<ContainerState>, RunscError>> + Send;
}

impl Runtime for Runsc {
    fn version(&self) -> impl Future<Output = Result<String, RunscError>> + Send {
        Runsc::version(self)
    }
    fn run(
        &self,
        id: &str,
        bundle: &Path,
        rootfs: &Path,
        io: &BootIo,
    ) -> impl Future<Output = Result<(), RunscError>> + Send {
        Runsc::run(self, id, bundle, Some(rootfs), io)
    }
    fn restore(
        &self,
        id: &str,
        bundle: &Path,
        rootfs: &Path,
        image_dir: &Path,
        io: &BootIo,
    ) -> impl Future<Output = Result<(), RunscError>> + Send {
        Runsc::restore(self, id, bundle, Some(rootfs), image_dir, io)
    }
    fn checkpoint(
        &self,
        id: &str,
        image_dir: &Path,
        opts: &CheckpointOptions,
    ) -> impl Future<Output = Result<(), RunscError>> + Send {
        Runsc::checkpoint(self, id, image_dir, opts)
    }
    fn kill(
        &self,
        id: &str,
        signal: &str,
        all: bool,
    ) -> impl Future<Output = Result<(), RunscError>> + Send {
        Runsc::kill(self, id, signal, all)
    }
    fn delete(&self, id: &str, force: bool) -> impl Future<Output = Result<(), RunscError>> + Send {
        Runsc::delete(self, id, force)
    }
    fn list(&self) -> impl Future<Output = Result<Vec<ContainerState>, RunscError>> + Send {
        Runsc::list(self)
    }
}

/// The worker's network as the state machine needs it (the real one: [`WorkerNet`]).
pub trait Network: Send + Sync + 'static {
    /// Makes the namespace ready for a sandbox boot (see [`WorkerNet::prepare_for_boot`]).
    fn prepare_for_boot(&self) -> impl Future<Output = Result<(), NetError>> + Send;
    fn info(&self) -> NetInfo;
}

impl Network for WorkerNet {
    fn prepare_for_boot(&self) -> impl Future<Output = Result<(), NetError>> + Send {
        WorkerNet::prepare_for_boot(self)
    }
    fn info(&self) -> NetInfo {
        WorkerNet::info(self)
    }
}

/// The worker's phase.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Phase {
    #[default]
    Idle,
    Booting,
    Restoring,
    Running,
    Checkpointing,
    /// The sandbox stopped on its own (never persisted: derived from runsc's state).
    Exited,
    /// The executor is reconciling after a start (never persisted).
    Recovering,
}

impl Phase {
    pub fn as_str(self) -> &'static str {
        match self {
            Phase::Idle => "idle",
            Phase::Booting => "booting",
            Phase::Restoring => "restoring",
            Phase::Running => "running",
            Phase::Checkpointing => "checkpointing",
            Phase::Exited => "exited",
            Phase::Recovering => "recovering",
        }
    }
}

impl std::fmt::Display for Phase {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One file of a checkpoint image.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ImageFile {
    pub name: String,
    pub size: u64,
}

/// A completed checkpoint (the content of [`CHECKPOINT_MARKER`]).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CheckpointInfo {
    pub actor: String,
    pub image_dir: PathBuf,
    pub operation_id: String,
    pub runsc_version: String,
    pub files: Vec<ImageFile>,
    pub total_bytes: u64,
    pub completed_at_unix_ms: i64,
    /// Duration of `runsc checkpoint` (0 when finalized after an executor crash).
    pub runsc_seconds: f64,
}

/// A sandbox stopped by the fence (see the module docs).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct FenceInfo {
    pub actor: String,
    pub fenced_at_unix_ms: i64,
    /// How long the worker had not heard from its node agent.
    pub silent_seconds: f64,
    /// The operation that had started the sandbox.
    pub operation_id: String,
}

/// What `<state-dir>/state.json` holds.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct PersistedState {
    pub version: u32,
    pub worker: String,
    pub phase: Phase,
    pub actor: Option<String>,
    pub operation_id: Option<String>,
    /// Restoring: the source image; Checkpointing: the target.
    pub image_dir: Option<PathBuf>,
    pub op_started_unix_ms: Option<i64>,
    pub last_checkpoint: Option<CheckpointInfo>,
    /// Idle because the fence stopped the sandbox (cleared by the next boot).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fenced: Option<FenceInfo>,
}

/// The worker as reported by `status`.
#[derive(Debug, Clone, PartialEq)]
pub struct WorkerStatus {
    pub worker: String,
    pub index: u32,
    pub phase: Phase,
    pub actor: Option<ActorKey>,
    pub operation_id: Option<String>,
    /// runsc's view of the actor's container, when runsc knows it.
    pub sandbox: Option<ContainerState>,
    pub network: NetInfo,
    pub runsc_version: String,
    pub last_checkpoint: Option<CheckpointInfo>,
    /// Set while the worker is idle because the fence stopped its sandbox.
    pub fenced: Option<FenceInfo>,
}

/// Where the time of an operation went.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Timing {
    pub total: Duration,
    /// The runsc command itself (run, restore, checkpoint).
    pub runsc: Duration,
}

/// Result of `run`, `restore` and `kill`.
#[derive(Debug, Clone)]
pub struct OpOutcome {
    pub status: WorkerStatus,
    /// The request was a repeat; nothing was done.
    pub already_done: bool,
    pub timing: Timing,
}

/// Result of `checkpoint`.
#[derive(Debug, Clone)]
pub struct CheckpointOutcome {
    pub status: WorkerStatus,
    pub already_done: bool,
    pub timing: Timing,
    pub checkpoint: CheckpointInfo,
}

/// What `recover` did.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct RecoveryReport {
    /// The actor whose running sandbox was adopted.
    pub adopted: Option<String>,
    /// What happened to an operation that was in flight when the executor stopped.
    pub resolved_operation: Option<String>,
    /// Containers that were killed/deleted.
    pub cleaned: Vec<String>,
}

/// Coarse error classes, for the gRPC mapping and for callers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorKind {
    InvalidArgument,
    Busy,
    NotRunning,
    ImageNotFound,
    CheckpointFailed,
    SandboxExited,
    Runtime,
    Network,
    Timeout,
    Internal,
}

impl ErrorKind {
    pub fn as_str(self) -> &'static str {
        match self {
            ErrorKind::InvalidArgument => "invalid_argument",
            ErrorKind::Busy => "busy",
            ErrorKind::NotRunning => "not_running",
            ErrorKind::ImageNotFound => "image_not_found",
            ErrorKind::CheckpointFailed => "checkpoint_failed",
            ErrorKind::SandboxExited => "sandbox_exited",
            ErrorKind::Runtime => "runtime",
            ErrorKind::Network => "network",
            ErrorKind::Timeout => "timeout",
            ErrorKind::Internal => "internal",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        [
            ErrorKind::InvalidArgument,
            ErrorKind::Busy,
            ErrorKind::NotRunning,
            ErrorKind::ImageNotFound,
            ErrorKind::CheckpointFailed,
            ErrorKind::SandboxExited,
            ErrorKind::Runtime,
            ErrorKind::Network,
            ErrorKind::Timeout,
            ErrorKind::Internal,
        ]
        .into_iter()
        .find(|k| k.as_str() == s)
    }
}

/// Why a worker operation failed.
#[derive(Debug, thiserror::Error)]
pub enum WorkerError {
    #[error("invalid request: {0}")]
    InvalidArgument(String),
    #[error(transparent)]
    Bundle(#[from] BundleError),
    #[error("worker {worker} is {phase} with actor {current}; cannot {op} actor {requested} here")]
    Busy {
        worker: String,
        phase: Phase,
        current: String,
        requested: String,
        op: &'static str,
    },
    #[error("actor {actor} is not running on worker {worker} and {image_dir} holds no complete checkpoint of it{}", .detail.as_ref().map(|d| format!(" ({d})")).unwrap_or_default())]
    NotRunning {
        actor: String,
        worker: String,
        image_dir: PathBuf,
        detail: Option<String>,
    },
    #[error("no checkpoint image in {path}: {detail}")]
    ImageNotFound { path: PathBuf, detail: String },
    #[error("checkpoint of {actor} failed; {}: {detail}", if *.sandbox_lost { "the sandbox is gone and the worker is free (resume the actor from its last good snapshot)" } else { "the sandbox is still running" })]
    CheckpointFailed {
        actor: String,
        sandbox_lost: bool,
        detail: String,
    },
    #[error("the sandbox of {actor} has exited{}; the worker is free", .detail.as_ref().map(|d| format!(": {d}")).unwrap_or_default())]
    SandboxExited {
        actor: String,
        detail: Option<String>,
    },
    #[error(transparent)]
    Runtime(RunscError),
    #[error(transparent)]
    Network(#[from] NetError),
    #[error("{what} {path}")]
    Io {
        what: &'static str,
        path: PathBuf,
        #[source]
        source: io::Error,
    },
}

impl From<RunscError> for WorkerError {
    fn from(e: RunscError) -> Self {
        WorkerError::Runtime(e)
    }
}

impl WorkerError {
    pub fn kind(&self) -> ErrorKind {
        match self {
            WorkerError::InvalidArgument(_) => ErrorKind::InvalidArgument,
            WorkerError::Bundle(BundleError::Invalid { .. }) => ErrorKind::InvalidArgument,
            WorkerError::Bundle(_) => ErrorKind::Internal,
            WorkerError::Busy { .. } => ErrorKind::Busy,
            WorkerError::NotRunning { .. } => ErrorKind::NotRunning,
            WorkerError::ImageNotFound { .. } => ErrorKind::ImageNotFound,
            WorkerError::CheckpointFailed { .. } => ErrorKind::CheckpointFailed,
            WorkerError::SandboxExited { .. } => ErrorKind::SandboxExited,
            WorkerError::Runtime(e) if e.is_timeout() => ErrorKind::Timeout,
            WorkerError::Runtime(_) => ErrorKind::Runtime,
            WorkerError::Network(_) => ErrorKind::Network,
            WorkerError::Io { .. } => ErrorKind::Internal,
        }
    }

    /// For [`WorkerError::CheckpointFailed`]: whether the sandbox is gone.
    pub fn sandbox_lost(&self) -> Option<bool> {
        match self {
            WorkerError::CheckpointFailed { sandbox_lost, .. } => Some(*sandbox_lost),
            _ => None,
        }
    }
}

fn io_err(what: &'static str, path: &Path) -> impl FnOnce(io::Error) -> WorkerError {
    let path = path.to_path_buf();
    move |source| WorkerError::Io { what, path, source }
}

/// Static configuration of a worker.
#[derive(Debug, Clone)]
pub struct WorkerConfig {
    /// The worker's name (also names its netns and cgroup).
    pub name: String,
    /// The worker's slot on this host (its address block).
    pub index: u32,
    /// Where state, bundles, logs and operation records live.
    pub state_dir: PathBuf,
    /// How long `recover` waits for an operation that was in flight at a crash.
    pub recovery_wait: Duration,
    /// After a failed checkpoint, how long the sandbox must stay alive to count as
    /// having survived (see [`Worker::checkpoint`]).
    pub checkpoint_failure_grace: Duration,
}

/// Default for [`WorkerConfig::checkpoint_failure_grace`].
pub const DEFAULT_CHECKPOINT_FAILURE_GRACE: Duration = Duration::from_secs(3);

struct Published {
    state: PersistedState,
    recovering: bool,
}

/// One worker: serialises operations, persists its state, answers status concurrently.
pub struct Worker<R: Runtime, N: Network> {
    cfg: WorkerConfig,
    runtime: R,
    net: N,
    runsc_version: String,
    op_lock: tokio::sync::Mutex<()>,
    published: Mutex<Published>,
    /// Whether a state file existed at open.
    had_state_file: bool,
    /// Becomes true when `recover` succeeded; operations wait for it.
    ready: tokio::sync::watch::Sender<bool>,
    /// A container could not be removed: sweep the runsc root before the next boot.
    sweep_needed: AtomicBool,
    /// The last contact from the node agent (the fence's clock).
    last_contact: Mutex<Instant>,
}

enum BootKind<'a> {
    Run,
    Restore { image_dir: &'a Path },
}

impl BootKind<'_> {
    fn phase(&self) -> Phase {
        match self {
            BootKind::Run => Phase::Booting,
            BootKind::Restore { .. } => Phase::Restoring,
        }
    }
    fn verb(&self) -> &'static str {
        match self {
            BootKind::Run => "run",
            BootKind::Restore { .. } => "restore",
        }
    }
}

fn now_unix_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

fn validate_op(op: &str) -> Result<(), WorkerError> {
    if op.is_empty() {
        return Err(WorkerError::InvalidArgument(
            "operation_id must not be empty".into(),
        ));
    }
    if op.len() > 256 || op.chars().any(char::is_control) {
        return Err(WorkerError::InvalidArgument(format!(
            "operation_id {op:?} must be at most 256 characters without control characters"
        )));
    }
    Ok(())
}

fn validate_image_dir(dir: &Path) -> Result<(), WorkerError> {
    if !dir.is_absolute() {
        return Err(WorkerError::InvalidArgument(format!(
            "image_dir {dir:?} is not an absolute path"
        )));
    }
    Ok(())
}

/// Reads the checkpoint marker of `image_dir`, if any (unreadable markers count as absent).
pub fn read_marker(image_dir: &Path) -> Option<CheckpointInfo> {
    let bytes = fs::read(image_dir.join(CHECKPOINT_MARKER)).ok()?;
    serde_json::from_slice(&bytes).ok()
}

/// Writes `path` atomically (temp file + rename). `durable` adds the fsyncs that make the
/// write survive a machine crash, not only a process crash.
///
/// The state file is written without them: it must survive an executor crash (the page
/// cache does), while after a machine crash every sandbox is gone anyway and recovery
/// rebuilds the state from runsc (an empty or stale file is handled). This keeps two
/// fsyncs off the resume path. The checkpoint marker is durable: it vouches for an image
/// that must outlive the machine.
fn write_atomic(path: &Path, bytes: &[u8], durable: bool) -> io::Result<()> {
    let dir = path.parent().unwrap_or(Path::new("."));
    let tmp = dir.join(format!(
        ".{}.tmp",
        path.file_name().and_then(|n| n.to_str()).unwrap_or("file")
    ));
    let mut f = File::create(&tmp)?;
    f.write_all(bytes)?;
    if durable {
        f.sync_all()?;
    }
    fs::rename(&tmp, path)?;
    if durable {
        File::open(dir)?.sync_all()?;
    }
    Ok(())
}

impl<R: Runtime, N: Network> Worker<R, N> {
    /// Opens the worker: creates its directories, loads its state file and asks the
    /// runtime for its version (a missing runsc fails here). The worker reports
    /// `Recovering` until [`Worker::recover`] has run.
    pub async fn open(cfg: WorkerConfig, runtime: R, net: N) -> Result<Self, WorkerError> {
        for d in [
            cfg.state_dir.clone(),
            cfg.state_dir.join("bundles"),
            cfg.state_dir.join("logs"),
        ] {
            fs::create_dir_all(&d).map_err(io_err("cannot create directory", &d))?;
        }
        let runsc_version = runtime.version().await?;
        let path = cfg.state_dir.join("state.json");
        let (state, had_state_file) = match fs::read(&path) {
            Ok(bytes) => match serde_json::from_slice::<PersistedState>(&bytes) {
                Ok(s) => (s, true),
                Err(e) => {
                    let aside = cfg
                        .state_dir
                        .join(format!("state.json.corrupt-{}", now_unix_ms()));
                    warn!(path = %path.display(), error = %crate::error_chain(&e), moved_to = %aside.display(), "state file is corrupt; starting from runsc's view");
                    let _ = fs::rename(&path, &aside);
                    (PersistedState::default(), false)
                }
            },
            Err(e) if e.kind() == io::ErrorKind::NotFound => (PersistedState::default(), false),
            Err(e) => return Err(io_err("cannot read state file", &path)(e)),
        };
        Ok(Self {
            cfg,
            runtime,
            net,
            runsc_version,
            op_lock: tokio::sync::Mutex::new(()),
            published: Mutex::new(Published {
                state,
                recovering: true,
            }),
            had_state_file,
            ready: tokio::sync::watch::Sender::new(false),
            sweep_needed: AtomicBool::new(false),
            last_contact: Mutex::new(Instant::now()),
        })
    }

    /// Waits until recovery has completed (operations must not run on unreconciled state).
    async fn wait_ready(&self) {
        let mut rx = self.ready.subscribe();
        // The sender lives in `self`, so the channel cannot close while we wait.
        let _ = rx.wait_for(|ready| *ready).await;
    }

    pub fn config(&self) -> &WorkerConfig {
        &self.cfg
    }

    /// Records contact from the node agent: the fence's clock starts again.
    pub fn touch(&self) {
        *self.last_contact.lock().expect("contact lock poisoned") = Instant::now();
    }

    /// How long the worker has not heard from its node agent.
    pub fn silent_for(&self) -> Duration {
        self.last_contact
            .lock()
            .expect("contact lock poisoned")
            .elapsed()
    }

    /// The fence: when the worker has not heard from its node agent for `after` and a
    /// sandbox runs here, stops it (its state is lost: the actor comes back from its last
    /// good snapshot) and records why. Waits for an operation in flight (it holds the fence
    /// off) and for recovery. Returns what it fenced, if anything.
    pub async fn fence_if_silent(&self, after: Duration) -> Result<Option<FenceInfo>, WorkerError> {
        if self.silent_for() < after {
            return Ok(None);
        }
        self.wait_ready().await;
        let _guard = self.op_lock.lock().await;
        let silent = self.silent_for();
        if silent < after {
            return Ok(None);
        }
        let cur = self.current();
        let Some(actor) = cur
            .actor
            .as_deref()
            .and_then(|a| a.parse::<ActorKey>().ok())
        else {
            return Ok(None);
        };
        if cur.phase == Phase::Idle {
            return Ok(None);
        }
        let cid = actor.container_id();
        let live = self
            .container(&cid)
            .await?
            .is_some_and(|c| c.status.is_live());
        if !live {
            // It stopped on its own: reported as exited, not fenced.
            return Ok(None);
        }
        warn!(worker = %self.cfg.name, actor = %actor, silent_s = silent.as_secs_f64(), fence_after_s = after.as_secs_f64(), "no contact from the node agent; fencing: stopping the sandbox");
        self.remove_container(&cid).await?;
        let _ = fs::remove_dir_all(self.bundle_dir(&cid));
        let info = FenceInfo {
            actor: actor.to_string(),
            fenced_at_unix_ms: now_unix_ms(),
            silent_seconds: silent.as_secs_f64(),
            operation_id: cur.operation_id.clone().unwrap_or_default(),
        };
        self.persist(PersistedState {
            fenced: Some(info.clone()),
            ..self.idle_state(&cur)
        })?;
        warn!(worker = %self.cfg.name, actor = %actor, silent_s = silent.as_secs_f64(), "sandbox fenced: stopped for lack of contact from the node agent; the worker is free");
        Ok(Some(info))
    }

    pub fn runtime(&self) -> &R {
        &self.runtime
    }

    pub fn network(&self) -> &N {
        &self.net
    }

    fn state_path(&self) -> PathBuf {
        self.cfg.state_dir.join("state.json")
    }

    fn record(&self) -> OpRecord {
        OpRecord::new(self.cfg.state_dir.join("op"))
    }

    fn bundle_dir(&self, cid: &str) -> PathBuf {
        self.cfg.state_dir.join("bundles").join(cid)
    }

    /// The container log of an actor (its stdout/stderr, and runsc's boot messages).
    pub fn log_path(&self, actor: &ActorKey) -> PathBuf {
        self.cfg
            .state_dir
            .join("logs")
            .join(format!("{}.log", actor.container_id()))
    }

    fn current(&self) -> PersistedState {
        self.published
            .lock()
            .expect("state lock poisoned")
            .state
            .clone()
    }

    fn persist(&self, mut state: PersistedState) -> Result<(), WorkerError> {
        state.version = 1;
        state.worker = self.cfg.name.clone();
        let path = self.state_path();
        let bytes = serde_json::to_vec_pretty(&state).map_err(|e| WorkerError::Io {
            what: "cannot encode state",
            path: path.clone(),
            source: io::Error::other(e),
        })?;
        write_atomic(&path, &bytes, false).map_err(io_err("cannot write state file", &path))?;
        debug!(worker = %self.cfg.name, phase = %state.phase, actor = ?state.actor, "state persisted");
        self.published.lock().expect("state lock poisoned").state = state;
        Ok(())
    }

    fn idle_state(&self, from: &PersistedState) -> PersistedState {
        PersistedState {
            last_checkpoint: from.last_checkpoint.clone(),
            ..Default::default()
        }
    }

    async fn container(&self, cid: &str) -> Result<Option<ContainerState>, WorkerError> {
        Ok(self.runtime.list().await?.into_iter().find(|c| c.id == cid))
    }

    /// Kills and deletes a container, tolerating one that is already gone.
    /// `delete --force` kills a live sandbox (and all its processes) and removes its state;
    /// one runsc call in the common case. A failure is only an error if the container is
    /// still there afterwards; then the next boot sweeps the root.
    async fn remove_container(&self, cid: &str) -> Result<(), WorkerError> {
        match self.runtime.delete(cid, true).await {
            Ok(()) => Ok(()),
            Err(e) => {
                if self.container(cid).await?.is_none() {
                    Ok(())
                } else {
                    self.sweep_needed.store(true, Ordering::SeqCst);
                    Err(e.into())
                }
            }
        }
    }

    /// Removes every container in the root except `keep`.
    async fn remove_strays(&self, keep: Option<&str>) -> Result<Vec<String>, WorkerError> {
        let mut cleaned = Vec::new();
        for c in self.runtime.list().await? {
            if Some(c.id.as_str()) == keep {
                continue;
            }
            warn!(worker = %self.cfg.name, container = %c.id, status = c.status.as_str(), "removing stray container");
            self.remove_container(&c.id).await?;
            cleaned.push(c.id);
        }
        Ok(cleaned)
    }

    fn status_from(
        &self,
        state: &PersistedState,
        recovering: bool,
        sandbox: Option<ContainerState>,
    ) -> WorkerStatus {
        let actor = state.actor.as_deref().and_then(|a| a.parse().ok());
        let mut phase = if recovering {
            Phase::Recovering
        } else {
            state.phase
        };
        if phase == Phase::Running && !sandbox.as_ref().is_some_and(|c| c.status.is_live()) {
            phase = Phase::Exited;
        }
        WorkerStatus {
            worker: self.cfg.name.clone(),
            index: self.cfg.index,
            phase,
            actor,
            operation_id: state.operation_id.clone(),
            sandbox,
            network: self.net.info(),
            runsc_version: self.runsc_version.clone(),
            last_checkpoint: state.last_checkpoint.clone(),
            fenced: state.fenced.clone(),
        }
    }

    /// The current status. Does not wait for a running operation; for `Running` it asks
    /// runsc whether the sandbox is alive (reporting `Exited` if not).
    pub async fn status(&self) -> Result<WorkerStatus, WorkerError> {
        let (state, recovering) = {
            let p = self.published.lock().expect("state lock poisoned");
            (p.state.clone(), p.recovering)
        };
        let sandbox = match state
            .actor
            .as_deref()
            .and_then(|a| a.parse::<ActorKey>().ok())
        {
            Some(actor) if !recovering => self.container(&actor.container_id()).await?,
            _ => None,
        };
        Ok(self.status_from(&state, recovering, sandbox))
    }

    /// Status right after an operation (under the operation lock).
    async fn status_now(&self) -> Result<WorkerStatus, WorkerError> {
        self.status().await
    }

    /// Cold-boots `actor` from `spec`.
    pub async fn run(
        &self,
        actor: &ActorKey,
        op: &str,
        spec: &ActorSpec,
    ) -> Result<OpOutcome, WorkerError> {
        self.boot(BootKind::Run, actor, op, spec).await
    }

    /// Restores `actor` from the checkpoint image in `image_dir`.
    pub async fn restore(
        &self,
        actor: &ActorKey,
        op: &str,
        spec: &ActorSpec,
        image_dir: &Path,
    ) -> Result<OpOutcome, WorkerError> {
        validate_image_dir(image_dir)?;
        let state_file = image_dir.join(IMAGE_STATE_FILE);
        match fs::metadata(&state_file) {
            Ok(m) if m.is_file() => {}
            Ok(_) => {
                return Err(WorkerError::ImageNotFound {
                    path: image_dir.to_path_buf(),
                    detail: format!("{} is not a file", state_file.display()),
                });
            }
            Err(e) => {
                return Err(WorkerError::ImageNotFound {
                    path: image_dir.to_path_buf(),
                    detail: format!("{}: {e}", state_file.display()),
                });
            }
        }
        if let Some(info) = read_marker(image_dir)
            && info.actor != actor.to_string()
        {
            return Err(WorkerError::InvalidArgument(format!(
                "the checkpoint in {} belongs to actor {}, not {actor}",
                image_dir.display(),
                info.actor
            )));
        }
        self.boot(BootKind::Restore { image_dir }, actor, op, spec)
            .await
    }

    async fn boot(
        &self,
        kind: BootKind<'_>,
        actor: &ActorKey,
        op: &str,
        spec: &ActorSpec,
    ) -> Result<OpOutcome, WorkerError> {
        let started = Instant::now();
        validate_op(op)?;
        spec.validate()?;
        self.wait_ready().await;
        let _guard = self.op_lock.lock().await;
        let cur = self.current();
        let cid = actor.container_id();
        let actor_s = actor.to_string();
        if cur.phase != Phase::Idle {
            let cur_actor = cur.actor.clone().unwrap_or_default();
            let cur_cid = cur_actor
                .parse::<ActorKey>()
                .map(|a| a.container_id())
                .unwrap_or_default();
            let live = self
                .container(&cur_cid)
                .await?
                .is_some_and(|c| c.status.is_live());
            if live && cur_actor == actor_s {
                info!(worker = %self.cfg.name, actor = %actor, op, "already running; nothing to do");
                return Ok(OpOutcome {
                    status: self.status_now().await?,
                    already_done: true,
                    timing: Timing {
                        total: started.elapsed(),
                        runsc: Duration::ZERO,
                    },
                });
            }
            if live {
                return Err(WorkerError::Busy {
                    worker: self.cfg.name.clone(),
                    phase: cur.phase,
                    current: cur_actor,
                    requested: actor_s,
                    op: kind.verb(),
                });
            }
            info!(worker = %self.cfg.name, previous = %cur_actor, "previous sandbox has exited; cleaning up");
            if !cur_cid.is_empty() {
                self.remove_container(&cur_cid).await?;
            }
            let _ = fs::remove_dir_all(self.bundle_dir(&cur_cid));
        }
        if self.sweep_needed.swap(false, Ordering::SeqCst) {
            // An earlier cleanup failed: make sure the root holds no other container.
            if let Err(e) = self.remove_strays(None).await {
                self.sweep_needed.store(true, Ordering::SeqCst);
                return Err(e);
            }
        }
        self.net.prepare_for_boot().await?;

        let info = self.net.info();
        let cgroups = format!("/substrate/{}", self.cfg.name);
        let oci = bundle::generate(
            spec,
            &Placement {
                netns_path: &info.netns_path,
                cgroups_path: &cgroups,
                default_hostname: actor.name(),
            },
        )?;
        let bundle_dir = self.bundle_dir(&cid);
        bundle::write(&bundle_dir, &oci)?;
        let record = self.record();
        record.clear().map_err(io_err(
            "cannot reset operation record in",
            &self.cfg.state_dir,
        ))?;
        let log = self.log_path(actor);
        rotate_log(&log);
        let image_dir = match &kind {
            BootKind::Run => None,
            BootKind::Restore { image_dir } => Some(image_dir.to_path_buf()),
        };
        self.persist(PersistedState {
            phase: kind.phase(),
            actor: Some(actor_s.clone()),
            operation_id: Some(op.to_string()),
            image_dir: image_dir.clone(),
            op_started_unix_ms: Some(now_unix_ms()),
            last_checkpoint: cur.last_checkpoint.clone(),
            ..Default::default()
        })?;
        info!(worker = %self.cfg.name, actor = %actor, op, kind = kind.verb(), "booting sandbox");
        let io = BootIo {
            log: log.clone(),
            record: Some(record),
        };
        let t = Instant::now();
        let res = match &kind {
            BootKind::Run => self.runtime.run(&cid, &bundle_dir, &spec.rootfs, &io).await,
            BootKind::Restore { image_dir } => {
                self.runtime
                    .restore(&cid, &bundle_dir, &spec.rootfs, image_dir, &io)
                    .await
            }
        };
        let runsc_time = t.elapsed();
        let mut sandbox = None;
        let failure = match res {
            Err(e) => Some(WorkerError::Runtime(e)),
            Ok(()) => match self.container(&cid).await? {
                Some(c) if c.status.is_live() => {
                    sandbox = Some(c);
                    None
                }
                other => Some(WorkerError::SandboxExited {
                    actor: actor_s.clone(),
                    detail: Some(format!(
                        "right after {} (runsc status: {}); container log {}: {}",
                        kind.verb(),
                        other
                            .map(|c| c.status.as_str().to_string())
                            .unwrap_or_else(|| "unknown".into()),
                        log.display(),
                        log_tail(&log)
                    )),
                }),
            },
        };
        if let Some(err) = failure {
            warn!(worker = %self.cfg.name, actor = %actor, op, error = %crate::error_chain(&err), "boot failed; cleaning up");
            if let Err(e) = self.remove_container(&cid).await {
                warn!(worker = %self.cfg.name, container = %cid, error = %crate::error_chain(&e), "cleanup after failed boot failed");
            }
            self.persist(self.idle_state(&cur))?;
            return Err(err);
        }
        let running = PersistedState {
            phase: Phase::Running,
            actor: Some(actor_s),
            operation_id: Some(op.to_string()),
            image_dir,
            op_started_unix_ms: None,
            last_checkpoint: cur.last_checkpoint.clone(),
            ..Default::default()
        };
        self.persist(running.clone())?;
        info!(worker = %self.cfg.name, actor = %actor, op, kind = kind.verb(), runsc_ms = runsc_time.as_millis() as u64, total_ms = started.elapsed().as_millis() as u64, "sandbox running");
        Ok(OpOutcome {
            // The container state was just read: no second runsc call for the status.
            status: self.status_from(&running, false, sandbox),
            already_done: false,
            timing: Timing {
                total: started.elapsed(),
                runsc: runsc_time,
            },
        })
    }

    /// Checkpoints `actor` into `image_dir` and frees the worker.
    pub async fn checkpoint(
        &self,
        actor: &ActorKey,
        op: &str,
        image_dir: &Path,
    ) -> Result<CheckpointOutcome, WorkerError> {
        let started = Instant::now();
        validate_op(op)?;
        validate_image_dir(image_dir)?;
        self.wait_ready().await;
        let _guard = self.op_lock.lock().await;
        let cur = self.current();
        let actor_s = actor.to_string();
        let cid = actor.container_id();
        if cur.phase != Phase::Idle && cur.actor.as_deref() == Some(actor_s.as_str()) {
            let live = self
                .container(&cid)
                .await?
                .is_some_and(|c| c.status.is_live());
            if !live {
                self.remove_container(&cid).await?;
                self.persist(self.idle_state(&cur))?;
                return Err(WorkerError::SandboxExited {
                    actor: actor_s,
                    detail: Some(format!(
                        "nothing to checkpoint; container log {}: {}",
                        self.log_path(actor).display(),
                        log_tail(&self.log_path(actor))
                    )),
                });
            }
            prepare_image_dir(image_dir)?;
            let record = self.record();
            record.clear().map_err(io_err(
                "cannot reset operation record in",
                &self.cfg.state_dir,
            ))?;
            self.persist(PersistedState {
                phase: Phase::Checkpointing,
                image_dir: Some(image_dir.to_path_buf()),
                operation_id: Some(op.to_string()),
                op_started_unix_ms: Some(now_unix_ms()),
                ..cur.clone()
            })?;
            info!(worker = %self.cfg.name, actor = %actor, op, image_dir = %image_dir.display(), "checkpointing");
            let t = Instant::now();
            let res = self
                .runtime
                .checkpoint(
                    &cid,
                    image_dir,
                    &CheckpointOptions {
                        leave_running: false,
                        record: Some(record),
                    },
                )
                .await;
            let runsc_time = t.elapsed();
            return match res {
                Ok(()) => {
                    let info = self
                        .finalize_checkpoint(&cur, actor, op, image_dir, runsc_time)
                        .await?;
                    info!(worker = %self.cfg.name, actor = %actor, op, runsc_ms = runsc_time.as_millis() as u64, bytes = info.total_bytes, "checkpoint complete; worker free");
                    Ok(CheckpointOutcome {
                        status: self.status_now().await?,
                        already_done: false,
                        timing: Timing {
                            total: started.elapsed(),
                            runsc: runsc_time,
                        },
                        checkpoint: info,
                    })
                }
                Err(e) => Err(self
                    .checkpoint_failed(&cur, actor, crate::error_chain(&e))
                    .await),
            };
        }
        if let Some(info) = read_marker(image_dir)
            && info.actor == actor_s
        {
            info!(worker = %self.cfg.name, actor = %actor, op, "checkpoint already complete; nothing to do");
            return Ok(CheckpointOutcome {
                status: self.status_now().await?,
                already_done: true,
                timing: Timing {
                    total: started.elapsed(),
                    runsc: Duration::ZERO,
                },
                checkpoint: info,
            });
        }
        let detail = match (&cur.phase, &cur.actor) {
            (Phase::Idle, _) | (_, None) => None,
            (phase, Some(other)) => Some(format!("the worker is {phase} with actor {other}")),
        };
        Err(WorkerError::NotRunning {
            actor: actor_s,
            worker: self.cfg.name.clone(),
            image_dir: image_dir.to_path_buf(),
            detail,
        })
    }

    /// Whether the sandbox stays alive for `checkpoint_failure_grace`: after a failed save
    /// runsc kills the sandbox, but asynchronously (it is still listed as running for a
    /// while), so one look is not enough.
    async fn survives(&self, cid: &str) -> bool {
        let start = Instant::now();
        loop {
            match self.container(cid).await {
                Ok(Some(c)) if c.status.is_live() => {}
                Ok(_) => {
                    debug!(
                        container = cid,
                        after_ms = start.elapsed().as_millis() as u64,
                        "sandbox stopped after the failed checkpoint"
                    );
                    return false;
                }
                Err(e) => {
                    warn!(container = cid, error = %crate::error_chain(&e), "cannot query runsc; assuming the sandbox is lost");
                    return false;
                }
            }
            if start.elapsed() >= self.cfg.checkpoint_failure_grace {
                return true;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// After a failed checkpoint: find out whether the sandbox survived and converge.
    async fn checkpoint_failed(
        &self,
        before: &PersistedState,
        actor: &ActorKey,
        detail: String,
    ) -> WorkerError {
        let cid = actor.container_id();
        let alive = self.survives(&cid).await;
        let persisted = if alive {
            self.persist(PersistedState {
                phase: Phase::Running,
                ..before.clone()
            })
        } else {
            if let Err(e) = self.remove_container(&cid).await {
                warn!(container = %cid, error = %crate::error_chain(&e), "cleanup after failed checkpoint failed");
            }
            self.persist(self.idle_state(before))
        };
        if let Err(e) = persisted {
            warn!(error = %crate::error_chain(&e), "cannot persist state after failed checkpoint");
        }
        warn!(worker = %self.cfg.name, actor = %actor, sandbox_lost = !alive, error = %detail, "checkpoint failed");
        WorkerError::CheckpointFailed {
            actor: actor.to_string(),
            sandbox_lost: !alive,
            detail,
        }
    }

    /// After runsc reported a successful checkpoint: delete the (exiting) sandbox, make the
    /// image durable, write the marker, free the worker.
    async fn finalize_checkpoint(
        &self,
        before: &PersistedState,
        actor: &ActorKey,
        op: &str,
        image_dir: &Path,
        runsc_time: Duration,
    ) -> Result<CheckpointInfo, WorkerError> {
        let cid = actor.container_id();
        // The image is complete when runsc returns; the sandbox may take a second or more
        // to exit on its own, so it is removed right away.
        if let Err(e) = self.remove_container(&cid).await {
            warn!(container = %cid, error = %crate::error_chain(&e), "cannot delete the sandbox after checkpoint");
        }
        let _ = fs::remove_dir_all(self.bundle_dir(&cid));
        let result = (|| -> Result<CheckpointInfo, WorkerError> {
            let mut files = Vec::new();
            for entry in fs::read_dir(image_dir).map_err(io_err("cannot list", image_dir))? {
                let entry = entry.map_err(io_err("cannot list", image_dir))?;
                let name = entry.file_name().to_string_lossy().into_owned();
                if name == CHECKPOINT_MARKER || name.starts_with('.') {
                    continue;
                }
                let path = entry.path();
                let f = File::open(&path).map_err(io_err("cannot open", &path))?;
                f.sync_all().map_err(io_err("cannot sync", &path))?;
                let size = f.metadata().map_err(io_err("cannot stat", &path))?.len();
                files.push(ImageFile { name, size });
            }
            files.sort_by(|a, b| a.name.cmp(&b.name));
            if !files.iter().any(|f| f.name == IMAGE_STATE_FILE) {
                return Err(WorkerError::ImageNotFound {
                    path: image_dir.to_path_buf(),
                    detail: format!("runsc reported success but wrote no {IMAGE_STATE_FILE}"),
                });
            }
            let info = CheckpointInfo {
                actor: actor.to_string(),
                image_dir: image_dir.to_path_buf(),
                operation_id: op.to_string(),
                runsc_version: self.runsc_version.clone(),
                total_bytes: files.iter().map(|f| f.size).sum(),
                files,
                completed_at_unix_ms: now_unix_ms(),
                runsc_seconds: runsc_time.as_secs_f64(),
            };
            let marker = image_dir.join(CHECKPOINT_MARKER);
            let bytes = serde_json::to_vec_pretty(&info).map_err(|e| WorkerError::Io {
                what: "cannot encode",
                path: marker.clone(),
                source: io::Error::other(e),
            })?;
            write_atomic(&marker, &bytes, true).map_err(io_err("cannot write", &marker))?;
            Ok(info)
        })();
        match result {
            Ok(info) => {
                self.persist(PersistedState {
                    last_checkpoint: Some(info.clone()),
                    ..Default::default()
                })?;
                Ok(info)
            }
            Err(e) => {
                self.persist(self.idle_state(before))?;
                Err(WorkerError::CheckpointFailed {
                    actor: actor.to_string(),
                    sandbox_lost: true,
                    detail: crate::error_chain(&e),
                })
            }
        }
    }

    /// Kills `actor`'s sandbox (its state is lost) and frees the worker.
    pub async fn kill(&self, actor: &ActorKey, op: &str) -> Result<OpOutcome, WorkerError> {
        let started = Instant::now();
        validate_op(op)?;
        self.wait_ready().await;
        let _guard = self.op_lock.lock().await;
        let cur = self.current();
        let cid = actor.container_id();
        let here = cur.phase != Phase::Idle && cur.actor.as_deref() == Some(&actor.to_string());
        let known = self.container(&cid).await?.is_some();
        if !here && !known {
            return Ok(OpOutcome {
                status: self.status_now().await?,
                already_done: true,
                timing: Timing {
                    total: started.elapsed(),
                    runsc: Duration::ZERO,
                },
            });
        }
        let t = Instant::now();
        self.remove_container(&cid).await?;
        let runsc_time = t.elapsed();
        let _ = fs::remove_dir_all(self.bundle_dir(&cid));
        if here {
            self.persist(self.idle_state(&cur))?;
        }
        info!(worker = %self.cfg.name, actor = %actor, op, "sandbox killed; worker free");
        Ok(OpOutcome {
            status: self.status_now().await?,
            already_done: false,
            timing: Timing {
                total: started.elapsed(),
                runsc: runsc_time,
            },
        })
    }

    /// Kills whatever actor is on the worker (shutdown with `--on-shutdown=kill`).
    pub async fn kill_current(&self, op: &str) -> Result<(), WorkerError> {
        let actor = self
            .current()
            .actor
            .and_then(|a| a.parse::<ActorKey>().ok());
        if let Some(actor) = actor {
            self.kill(&actor, op).await?;
        }
        let _guard = self.op_lock.lock().await;
        self.remove_strays(None).await?;
        Ok(())
    }

    /// Reconciles persisted state with runsc after a start (see the module docs). Must run
    /// once before operations are served; operations wait for it.
    /// `network_reset`: the worker's veth was recreated by this start.
    pub async fn recover(&self, network_reset: bool) -> Result<RecoveryReport, WorkerError> {
        let _guard = self.op_lock.lock().await;
        let result = self.recover_locked(network_reset).await;
        if result.is_ok() {
            self.published
                .lock()
                .expect("state lock poisoned")
                .recovering = false;
            self.ready.send_replace(true);
        }
        match &result {
            Ok(r) => {
                info!(worker = %self.cfg.name, adopted = ?r.adopted, resolved = ?r.resolved_operation, cleaned = ?r.cleaned, "recovery complete")
            }
            Err(e) => {
                warn!(worker = %self.cfg.name, error = %crate::error_chain(&e), "recovery failed")
            }
        }
        result
    }

    async fn wait_for_record(&self, state: &PersistedState) -> RecordedOutcome {
        let record = self.record();
        let started = state.op_started_unix_ms.unwrap_or_else(now_unix_ms);
        let deadline_ms = started + self.cfg.recovery_wait.as_millis() as i64;
        loop {
            let outcome = record.outcome();
            match outcome {
                RecordedOutcome::InProgress { pid } => {
                    if now_unix_ms() > deadline_ms {
                        warn!(worker = %self.cfg.name, pid, "in-flight operation did not finish in time; killing it");
                        let _ = nix::sys::signal::killpg(
                            nix::unistd::Pid::from_raw(pid),
                            nix::sys::signal::Signal::SIGKILL,
                        );
                        return RecordedOutcome::Vanished;
                    }
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
                other => return other,
            }
        }
    }

    async fn recover_locked(&self, network_reset: bool) -> Result<RecoveryReport, WorkerError> {
        let mut report = RecoveryReport::default();
        let st = self.current();
        let actor = st.actor.as_deref().and_then(|a| a.parse::<ActorKey>().ok());
        let mut keep: Option<String> = None;
        match (st.phase, &actor) {
            (Phase::Booting | Phase::Restoring | Phase::Checkpointing, Some(actor)) => {
                let cid = actor.container_id();
                let outcome = self.wait_for_record(&st).await;
                let ok_outcome = outcome == RecordedOutcome::Finished { exit_code: 0 };
                let live = if st.phase == Phase::Checkpointing && !ok_outcome {
                    // A failed save kills the sandbox asynchronously.
                    self.survives(&cid).await
                } else {
                    self.container(&cid)
                        .await?
                        .is_some_and(|c| c.status.is_live())
                };
                report.resolved_operation = Some(format!(
                    "{} of {actor} (operation {}): {outcome:?}",
                    st.phase,
                    st.operation_id.as_deref().unwrap_or("?")
                ));
                let ok = ok_outcome;
                if st.phase == Phase::Checkpointing {
                    let image_dir = st.image_dir.clone().unwrap_or_default();
                    if ok {
                        self.finalize_checkpoint(
                            &st,
                            actor,
                            st.operation_id.as_deref().unwrap_or_default(),
                            &image_dir,
                            Duration::ZERO,
                        )
                        .await?;
                    } else if live {
                        warn!(worker = %self.cfg.name, actor = %actor, output = %self.record().output_tail(), "checkpoint interrupted or failed; sandbox still running");
                        self.persist(PersistedState {
                            phase: Phase::Running,
                            image_dir: None,
                            op_started_unix_ms: None,
                            ..st.clone()
                        })?;
                        keep = Some(cid);
                        report.adopted = Some(actor.to_string());
                    } else {
                        warn!(worker = %self.cfg.name, actor = %actor, output = %self.record().output_tail(), "checkpoint failed while the executor was down; sandbox gone");
                        self.remove_container(&cid).await?;
                        report.cleaned.push(cid);
                        self.persist(self.idle_state(&st))?;
                    }
                } else if ok && live {
                    self.persist(PersistedState {
                        phase: Phase::Running,
                        op_started_unix_ms: None,
                        ..st.clone()
                    })?;
                    keep = Some(cid);
                    report.adopted = Some(actor.to_string());
                } else {
                    self.remove_container(&cid).await?;
                    report.cleaned.push(cid);
                    self.persist(self.idle_state(&st))?;
                }
            }
            (Phase::Running, Some(actor)) => {
                let cid = actor.container_id();
                let live = self
                    .container(&cid)
                    .await?
                    .is_some_and(|c| c.status.is_live());
                if live {
                    keep = Some(cid);
                    report.adopted = Some(actor.to_string());
                } else {
                    warn!(worker = %self.cfg.name, actor = %actor, "sandbox exited while the executor was down");
                    self.remove_container(&cid).await?;
                    report.cleaned.push(cid);
                    self.persist(self.idle_state(&st))?;
                }
            }
            (Phase::Idle, _) if !self.had_state_file => {
                let live: Vec<_> = self
                    .runtime
                    .list()
                    .await?
                    .into_iter()
                    .filter(|c| c.status.is_live())
                    .collect();
                if let [only] = live.as_slice()
                    && let Ok(actor) = ActorKey::from_container_id(&only.id)
                {
                    warn!(worker = %self.cfg.name, actor = %actor, "no state file; adopting the running sandbox");
                    self.persist(PersistedState {
                        phase: Phase::Running,
                        actor: Some(actor.to_string()),
                        operation_id: Some("adopted".into()),
                        ..Default::default()
                    })?;
                    keep = Some(only.id.clone());
                    report.adopted = Some(actor.to_string());
                }
            }
            (Phase::Idle, _) => {}
            (phase, None) => {
                warn!(worker = %self.cfg.name, %phase, "state names no valid actor; resetting to idle");
                self.persist(self.idle_state(&st))?;
            }
            (Phase::Exited | Phase::Recovering, Some(_)) => {
                self.persist(self.idle_state(&st))?;
            }
        }
        if network_reset && let Some(cid) = keep.take() {
            warn!(worker = %self.cfg.name, container = %cid, "worker network was recreated; the adopted sandbox lost its interface and is killed");
            self.remove_container(&cid).await?;
            report.cleaned.push(cid);
            report.adopted = None;
            let st = self.current();
            self.persist(self.idle_state(&st))?;
        }
        report
            .cleaned
            .extend(self.remove_strays(keep.as_deref()).await?);
        if !self.had_state_file || self.current() != st {
            // Make sure a state file exists from now on.
            let st = self.current();
            self.persist(st)?;
        }
        Ok(report)
    }
}

/// Creates `dir` and removes a previous image and marker from it (the marker first, so a
/// crash never leaves a marker next to a partial image).
fn prepare_image_dir(dir: &Path) -> Result<(), WorkerError> {
    fs::create_dir_all(dir).map_err(io_err("cannot create image directory", dir))?;
    for name in std::iter::once(CHECKPOINT_MARKER).chain(IMAGE_FILES.iter().copied()) {
        let p = dir.join(name);
        match fs::remove_file(&p) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => return Err(io_err("cannot remove old image file", &p)(e)),
        }
    }
    Ok(())
}

fn rotate_log(log: &Path) {
    if fs::metadata(log).is_ok_and(|m| m.len() > LOG_ROTATE_BYTES) {
        let _ = fs::rename(log, log.with_extension("log.1"));
    }
}

/// The last ~1 KiB of a log, for error messages.
fn log_tail(log: &Path) -> String {
    let Ok(bytes) = fs::read(log) else {
        return String::new();
    };
    let start = bytes.len().saturating_sub(1024);
    String::from_utf8_lossy(&bytes[start..]).trim().to_string()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::bundle::ProcessSpec;
    use crate::fake::{FakeNetwork, FakeRuntime};
    use crate::runsc::ContainerStatus;

    struct Env {
        _dir: tempfile::TempDir,
        state: PathBuf,
        images: PathBuf,
        spec: ActorSpec,
    }

    fn env() -> Env {
        let dir = tempfile::tempdir().unwrap();
        let rootfs = dir.path().join("rootfs");
        fs::create_dir_all(&rootfs).unwrap();
        Env {
            state: dir.path().join("state"),
            images: dir.path().join("images"),
            spec: ActorSpec {
                rootfs,
                process: ProcessSpec {
                    args: vec!["/bin/app".into()],
                    ..Default::default()
                },
                hostname: None,
            },
            _dir: dir,
        }
    }

    async fn worker(e: &Env, rt: FakeRuntime) -> Worker<FakeRuntime, FakeNetwork> {
        let w = Worker::open(
            WorkerConfig {
                name: "w1".into(),
                index: 1,
                state_dir: e.state.clone(),
                recovery_wait: Duration::from_secs(5),
                checkpoint_failure_grace: Duration::from_millis(200),
            },
            rt,
            FakeNetwork::default(),
        )
        .await
        .unwrap();
        w.recover(false).await.unwrap();
        w
    }

    fn key(s: &str) -> ActorKey {
        s.parse().unwrap()
    }

    #[tokio::test]
    async fn run_checkpoint_restore_kill_are_idempotent() {
        let e = env();
        let w = worker(&e, FakeRuntime::default()).await;
        let a = key("team/a");
        assert_eq!(w.status().await.unwrap().phase, Phase::Idle);

        let out = w.run(&a, "op1", &e.spec).await.unwrap();
        assert!(!out.already_done);
        assert_eq!(out.status.phase, Phase::Running);
        assert_eq!(out.status.actor, Some(a.clone()));
        let pid = out.status.sandbox.as_ref().unwrap().pid;
        assert_eq!(w.network().prepared(), 1);

        let again = w.run(&a, "op1-retry", &e.spec).await.unwrap();
        assert!(again.already_done);
        assert_eq!(again.status.sandbox.unwrap().pid, pid);
        assert_eq!(w.runtime().boots(), 1, "a repeated run must not boot again");

        let img = e.images.join("a1");
        let ck = w.checkpoint(&a, "op2", &img).await.unwrap();
        assert!(!ck.already_done);
        assert_eq!(ck.status.phase, Phase::Idle);
        assert_eq!(ck.checkpoint.actor, "team/a");
        assert!(ck.checkpoint.total_bytes > 0);
        assert_eq!(read_marker(&img).unwrap(), ck.checkpoint);
        assert_eq!(ck.status.last_checkpoint.as_ref(), Some(&ck.checkpoint));
        assert!(
            w.runtime().list_now().is_empty(),
            "sandbox deleted after checkpoint"
        );

        let again = w.checkpoint(&a, "op2-retry", &img).await.unwrap();
        assert!(again.already_done);
        assert_eq!(again.checkpoint, ck.checkpoint);

        let err = w
            .restore(&key("team/other"), "op3", &e.spec, &img)
            .await
            .unwrap_err();
        assert_eq!(err.kind(), ErrorKind::InvalidArgument, "{err}");
        assert!(err.to_string().contains("belongs to actor team/a"), "{err}");
        let r = w.restore(&a, "op3", &e.spec, &img).await.unwrap();
        assert!(!r.already_done);
        assert_eq!(r.status.phase, Phase::Running);
        let r2 = w.restore(&a, "op3-retry", &e.spec, &img).await.unwrap();
        assert!(r2.already_done);
        assert_eq!(w.runtime().boots(), 2);

        let k = w.kill(&a, "op4").await.unwrap();
        assert!(!k.already_done);
        assert_eq!(k.status.phase, Phase::Idle);
        assert!(w.kill(&a, "op4-retry").await.unwrap().already_done);
        assert!(w.runtime().list_now().is_empty());
    }

    #[tokio::test]
    async fn the_fence_stops_a_sandbox_whose_agent_went_silent_and_says_so() {
        let e = env();
        let w = worker(&e, FakeRuntime::default()).await;
        let a = key("team/a");
        let after = Duration::from_millis(300);
        // Idle: nothing to fence, however long the silence.
        tokio::time::sleep(after).await;
        assert_eq!(w.fence_if_silent(after).await.unwrap(), None);
        w.touch();
        w.run(&a, "op1", &e.spec).await.unwrap();
        // Contact keeps the sandbox.
        for _ in 0..4 {
            tokio::time::sleep(after / 3).await;
            w.touch();
            assert_eq!(w.fence_if_silent(after).await.unwrap(), None);
        }
        assert_eq!(w.status().await.unwrap().phase, Phase::Running);
        // Silence stops it, and the status says it was fenced (not crashed).
        tokio::time::sleep(after).await;
        let fenced = w.fence_if_silent(after).await.unwrap().expect("fenced");
        assert_eq!(fenced.actor, "team/a");
        assert_eq!(fenced.operation_id, "op1");
        assert!(fenced.silent_seconds >= after.as_secs_f64());
        assert!(w.runtime().list_now().is_empty(), "the sandbox is gone");
        let st = w.status().await.unwrap();
        assert_eq!(st.phase, Phase::Idle);
        assert_eq!(st.actor, None);
        assert_eq!(st.fenced.as_ref(), Some(&fenced));
        // Persisted: a restarted executor still reports it; the next boot clears it.
        drop(w);
        let w = worker(&e, FakeRuntime::default()).await;
        assert_eq!(w.status().await.unwrap().fenced, Some(fenced));
        w.run(&a, "op2", &e.spec).await.unwrap();
        assert_eq!(w.status().await.unwrap().fenced, None);
    }

    #[tokio::test]
    async fn other_actors_are_refused_while_busy() {
        let e = env();
        let w = worker(&e, FakeRuntime::default()).await;
        let (a, b) = (key("team/a"), key("team/b"));
        w.run(&a, "op1", &e.spec).await.unwrap();
        let err = w.run(&b, "op2", &e.spec).await.unwrap_err();
        assert_eq!(err.kind(), ErrorKind::Busy, "{err}");
        assert!(err.to_string().contains("team/a") && err.to_string().contains("team/b"));
        let img = e.images.join("b");
        let err = w.checkpoint(&b, "op3", &img).await.unwrap_err();
        assert_eq!(err.kind(), ErrorKind::NotRunning, "{err}");
        assert!(
            err.to_string().contains("running with actor team/a"),
            "{err}"
        );
        // Kill of an absent actor succeeds and leaves a alone.
        assert!(w.kill(&b, "op4").await.unwrap().already_done);
        assert_eq!(w.status().await.unwrap().actor, Some(a));
    }

    #[tokio::test]
    async fn bad_input_is_rejected_before_touching_anything() {
        let e = env();
        let w = worker(&e, FakeRuntime::default()).await;
        let a = key("team/a");
        let err = w.run(&a, "", &e.spec).await.unwrap_err();
        assert_eq!(err.kind(), ErrorKind::InvalidArgument);
        let mut bad = e.spec.clone();
        bad.rootfs = "/does/not/exist".into();
        let err = w.run(&a, "op", &bad).await.unwrap_err();
        assert_eq!(err.kind(), ErrorKind::InvalidArgument);
        assert!(err.to_string().contains("/does/not/exist"), "{err}");
        let err = w
            .restore(&a, "op", &e.spec, &e.images.join("missing"))
            .await
            .unwrap_err();
        assert_eq!(err.kind(), ErrorKind::ImageNotFound, "{err}");
        let err = w
            .checkpoint(&a, "op", Path::new("relative/dir"))
            .await
            .unwrap_err();
        assert_eq!(err.kind(), ErrorKind::InvalidArgument);
        let err = w
            .checkpoint(&a, "op", &e.images.join("none"))
            .await
            .unwrap_err();
        assert_eq!(err.kind(), ErrorKind::NotRunning);
        assert_eq!(w.runtime().boots(), 0);
    }

    #[tokio::test]
    async fn failed_checkpoint_reports_whether_the_sandbox_survived() {
        let e = env();
        let w = worker(&e, FakeRuntime::default()).await;
        let a = key("team/a");
        w.run(&a, "op1", &e.spec).await.unwrap();

        // A save failure that leaves the sandbox alive (e.g. an unwritable image path).
        w.runtime().fail_next_checkpoint(false);
        let err = w
            .checkpoint(&a, "op2", &e.images.join("x"))
            .await
            .unwrap_err();
        assert_eq!(err.kind(), ErrorKind::CheckpointFailed);
        assert_eq!(err.sandbox_lost(), Some(false));
        assert_eq!(w.status().await.unwrap().phase, Phase::Running);
        assert!(read_marker(&e.images.join("x")).is_none());

        // A save failure that kills the sandbox (what runsc does): the worker is free.
        w.runtime().fail_next_checkpoint(true);
        let err = w
            .checkpoint(&a, "op3", &e.images.join("x"))
            .await
            .unwrap_err();
        assert_eq!(err.sandbox_lost(), Some(true), "{err}");
        let st = w.status().await.unwrap();
        assert_eq!(st.phase, Phase::Idle);
        assert!(w.runtime().list_now().is_empty());
        // And it boots again.
        w.run(&a, "op4", &e.spec).await.unwrap();
    }

    #[tokio::test]
    async fn an_exited_sandbox_is_reported_and_does_not_block_the_worker() {
        let e = env();
        let w = worker(&e, FakeRuntime::default()).await;
        let (a, b) = (key("team/a"), key("team/b"));
        w.run(&a, "op1", &e.spec).await.unwrap();
        w.runtime()
            .set_status(&a.container_id(), ContainerStatus::Stopped);
        assert_eq!(w.status().await.unwrap().phase, Phase::Exited);
        let err = w
            .checkpoint(&a, "op2", &e.images.join("a"))
            .await
            .unwrap_err();
        assert_eq!(err.kind(), ErrorKind::SandboxExited);
        assert_eq!(w.status().await.unwrap().phase, Phase::Idle);

        w.run(&a, "op3", &e.spec).await.unwrap();
        w.runtime()
            .set_status(&a.container_id(), ContainerStatus::Stopped);
        let out = w.run(&b, "op4", &e.spec).await.unwrap();
        assert_eq!(out.status.actor, Some(b.clone()));
        assert_eq!(w.runtime().list_now().len(), 1);
    }

    #[tokio::test]
    async fn recovery_adopts_running_and_cleans_up_the_rest() {
        let e = env();
        let rt = FakeRuntime::default();
        let a = key("team/a");
        {
            let w = worker(&e, rt.clone()).await;
            w.run(&a, "op1", &e.spec).await.unwrap();
        }
        // A stray container appears (e.g. left by an older executor build).
        rt.insert("team_stray", ContainerStatus::Running);
        let w = worker(&e, rt.clone()).await;
        let st = w.status().await.unwrap();
        assert_eq!(st.phase, Phase::Running);
        assert_eq!(st.actor, Some(a.clone()));
        let ids: Vec<_> = rt.list_now().into_iter().map(|c| c.id).collect();
        assert_eq!(ids, ["team_a"]);

        // Sandbox died while the executor was down.
        drop(w);
        rt.set_status("team_a", ContainerStatus::Stopped);
        let w = worker(&e, rt.clone()).await;
        assert_eq!(w.status().await.unwrap().phase, Phase::Idle);
        assert!(rt.list_now().is_empty());
    }

    #[tokio::test]
    async fn recovery_finishes_an_interrupted_checkpoint_from_the_record() {
        let e = env();
        let rt = FakeRuntime::default();
        let a = key("team/a");
        let img = e.images.join("a");
        {
            let w = worker(&e, rt.clone()).await;
            w.run(&a, "op1", &e.spec).await.unwrap();
        }
        // Simulate: state persisted as Checkpointing, runsc finished (rc 0) and wrote the
        // image, the executor died before finalizing.
        let mut st: PersistedState =
            serde_json::from_slice(&fs::read(e.state.join("state.json")).unwrap()).unwrap();
        st.phase = Phase::Checkpointing;
        st.image_dir = Some(img.clone());
        st.operation_id = Some("op2".into());
        fs::write(e.state.join("state.json"), serde_json::to_vec(&st).unwrap()).unwrap();
        fs::create_dir_all(&img).unwrap();
        fs::write(img.join("checkpoint.img"), b"state").unwrap();
        fs::create_dir_all(e.state.join("op")).unwrap();
        fs::write(e.state.join("op/op.rc"), "0\n").unwrap();
        rt.set_status("team_a", ContainerStatus::Stopped);

        let w = worker(&e, rt.clone()).await;
        let s = w.status().await.unwrap();
        assert_eq!(s.phase, Phase::Idle);
        let marker = read_marker(&img).expect("marker written by recovery");
        assert_eq!(marker.actor, "team/a");
        assert_eq!(marker.operation_id, "op2");
        assert!(rt.list_now().is_empty());
        // The caller's retry is now a no-op.
        assert!(w.checkpoint(&a, "op2", &img).await.unwrap().already_done);
    }

    #[tokio::test]
    async fn recovery_cleans_up_a_boot_that_never_started_or_failed() {
        let e = env();
        let rt = FakeRuntime::default();
        let a = key("team/a");
        fs::create_dir_all(&e.state).unwrap();
        let st = PersistedState {
            version: 1,
            worker: "w1".into(),
            phase: Phase::Restoring,
            actor: Some("team/a".into()),
            operation_id: Some("op1".into()),
            op_started_unix_ms: Some(now_unix_ms()),
            ..Default::default()
        };
        fs::write(e.state.join("state.json"), serde_json::to_vec(&st).unwrap()).unwrap();
        // No pid recorded: the restore never started; a half-created container exists.
        rt.insert(&a.container_id(), ContainerStatus::Created);
        let w = worker(&e, rt.clone()).await;
        assert_eq!(w.status().await.unwrap().phase, Phase::Idle);
        assert!(rt.list_now().is_empty());
    }

    #[tokio::test]
    async fn lost_state_file_adopts_the_single_running_sandbox() {
        let e = env();
        let rt = FakeRuntime::default();
        rt.insert("team_a", ContainerStatus::Running);
        let w = worker(&e, rt.clone()).await;
        let st = w.status().await.unwrap();
        assert_eq!(st.phase, Phase::Running);
        assert_eq!(st.actor, Some(key("team/a")));
        assert!(e.state.join("state.json").exists());
    }

    #[tokio::test]
    async fn network_reset_kills_an_adopted_sandbox() {
        let e = env();
        let rt = FakeRuntime::default();
        let a = key("team/a");
        {
            let w = worker(&e, rt.clone()).await;
            w.run(&a, "op1", &e.spec).await.unwrap();
        }
        let w = Worker::open(
            WorkerConfig {
                name: "w1".into(),
                index: 1,
                state_dir: e.state.clone(),
                recovery_wait: Duration::from_secs(5),
                checkpoint_failure_grace: Duration::from_millis(200),
            },
            rt.clone(),
            FakeNetwork::default(),
        )
        .await
        .unwrap();
        assert_eq!(w.status().await.unwrap().phase, Phase::Recovering);
        let report = w.recover(true).await.unwrap();
        assert_eq!(report.adopted, None);
        assert_eq!(report.cleaned, ["team_a"]);
        assert_eq!(w.status().await.unwrap().phase, Phase::Idle);
    }

    #[tokio::test]
    async fn corrupt_state_file_is_moved_aside() {
        let e = env();
        fs::create_dir_all(&e.state).unwrap();
        fs::write(e.state.join("state.json"), b"{not json").unwrap();
        let w = worker(&e, FakeRuntime::default()).await;
        assert_eq!(w.status().await.unwrap().phase, Phase::Idle);
        let aside = fs::read_dir(&e.state)
            .unwrap()
            .filter_map(|d| d.ok())
            .any(|d| {
                d.file_name()
                    .to_string_lossy()
                    .starts_with("state.json.corrupt-")
            });
        assert!(aside);
    }

    #[test]
    fn error_kinds_round_trip() {
        for k in [
            ErrorKind::InvalidArgument,
            ErrorKind::Busy,
            ErrorKind::NotRunning,
            ErrorKind::ImageNotFound,
            ErrorKind::CheckpointFailed,
            ErrorKind::SandboxExited,
            ErrorKind::Runtime,
            ErrorKind::Network,
            ErrorKind::Timeout,
            ErrorKind::Internal,
        ] {
            assert_eq!(ErrorKind::parse(k.as_str()), Some(k));
        }
        assert_eq!(ErrorKind::parse("nope"), None);
    }
}
