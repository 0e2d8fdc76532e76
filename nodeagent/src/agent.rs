//! The node agent's control loops (like a kubelet for actors).
//!
//! * **Workers**: for every `WorkerPool` this node hosts, `replicas` local workers. Each is a
//!   supervised `substrate-executor` process (its own network namespace and runsc root) and a
//!   `Worker` object named `<node>-<pool>-<i>` that the agent registers and heartbeats. A
//!   running executor found at start (the agent was restarted) is adopted, not restarted.
//! * **Actors**: a watch on the actors bound to this node (`status.worker.node=<node>`),
//!   level-triggered: `Resuming` → fetch the snapshot (the actor's own, else the template's
//!   golden one, else cold boot), restore or run it on the executor, wait for readiness,
//!   `Running`; `Suspending` → checkpoint, upload (zstd, manifest last), `Suspended` with the
//!   new snapshot, worker freed; `Running` whose sandbox is gone → back to `Suspended` at its
//!   last good snapshot; deleted (`deletionTimestamp` set, held by the
//!   `substrate.ate.dev/sandbox` finalizer) → sandbox killed (no checkpoint), actor unbound,
//!   worker freed, after which the operator removes the finalizer. One operation per actor at
//!   a time (a change seen meanwhile runs the actor's task again when it ends); everything is
//!   retried on the next pass, and every executor call is idempotent (keyed by actor and
//!   operation id). A worker is freed only while it still names the actor (by uid).
//! * **Fencing** (`crds::liveness`): each executor stops its sandbox when it has not heard
//!   from the agent for `SANDBOX_FENCE_AFTER`; the operator releases an actor whose worker
//!   has not heartbeated for `DEAD_WORKER_AFTER`. So the agent talks to an executor only
//!   while it holds a *lease* on the worker: a heartbeat of that `Worker` written less than
//!   [`LEASE`] ago. Every pass probes each executor (a status call that is not contact),
//!   writes the heartbeat, and then pings the executor (contact): a sandbox therefore never
//!   outlives the last heartbeat by more than `LEASE + SANDBOX_FENCE_AFTER`, which is less
//!   than `DEAD_WORKER_AFTER`, however the agent dies or loses the apiserver.

use std::collections::{BTreeMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::StreamExt;
use kube::api::{Api, ListParams, Patch, PatchParams, PostParams};
use kube::runtime::reflector::{self, Store};
use kube::runtime::{WatchStreamExt, watcher};
use serde_json::{Value, json};
use tokio::process::{Child, Command};

use crds::ate::{ActorTemplate, WorkerPool};
use crds::substrate::{Actor, Worker};
use executor::proto;
use executor::{ActorKey, ActorSpec, ExecutorClient, ProcessSpec};

use crate::images::ImageCache;
use crate::snapshots::{SnapshotKey, SnapshotMeta, SnapshotRef, SnapshotStore};

/// How long after a heartbeat of a `Worker` was written the agent may still contact its
/// executor (each contact gives the sandbox `SANDBOX_FENCE_AFTER` more): the gap between
/// the fence and the operator's dead-worker rule, less one second because heartbeat times
/// are written with a resolution of a second.
pub const LEASE: Duration = Duration::from_secs(
    crds::liveness::DEAD_WORKER_AFTER.as_secs() - crds::liveness::SANDBOX_FENCE_AFTER.as_secs() - 1,
);

/// How often a resume in progress checks that its actor still wants it.
const ABANDON_CHECK: Duration = Duration::from_secs(1);

/// Committed snapshots kept per actor (the newest is the one its status records).
const SNAPSHOTS_KEPT: usize = 2;

/// Why an agent operation failed.
#[derive(Debug, thiserror::Error)]
pub enum AgentError {
    #[error("API request failed: {0}")]
    Kube(#[from] kube::Error),
    #[error("executor of worker {worker}: {source}")]
    Executor {
        worker: String,
        #[source]
        source: executor::ClientError,
    },
    #[error("image: {0}")]
    Image(#[from] crate::images::ImageError),
    #[error("snapshot: {0}")]
    Snapshot(#[from] crate::snapshots::SnapshotError),
    #[error("{0}")]
    Invalid(String),
    #[error("readiness: {0}")]
    NotReady(String),
    #[error(
        "no recent heartbeat of worker {worker}: its executor is not contacted (the sandbox fence)"
    )]
    NoLease { worker: String },
    #[error(
        "the executor of worker {worker} is still recovering after a restart (adopting or cleaning up its sandbox)"
    )]
    Recovering { worker: String },
    #[error("I/O on {path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

impl AgentError {
    /// Whether the failure says nothing about the actor: the executor process went away
    /// mid-call (its supervisor restarts it) or the apiserver could not be reached. Such a
    /// transition is retried as it is (every executor operation is idempotent) instead of
    /// being given up.
    pub fn is_transient(&self) -> bool {
        match self {
            AgentError::Executor { source, .. } => {
                source.kind().is_none()
                    && matches!(
                        source.code(),
                        tonic::Code::Unavailable | tonic::Code::Unknown | tonic::Code::Cancelled
                    )
            }
            AgentError::Kube(kube::Error::Api(e)) => e.code >= 500 || e.code == 429,
            AgentError::Kube(_) => true,
            AgentError::NoLease { .. } | AgentError::Recovering { .. } => true,
            _ => false,
        }
    }
}

/// Configuration of one node agent.
#[derive(Debug, Clone)]
pub struct AgentConfig {
    /// This node's name (`Worker.spec.node`, `Actor.status.worker.node`).
    pub node: String,
    /// Namespace of the WorkerPools this node hosts.
    pub pool_namespace: String,
    /// WorkerPools to host (empty: every pool in `pool_namespace`).
    pub pools: Vec<String>,
    /// Sockets, executor state, checkpoint scratch space.
    pub state_dir: PathBuf,
    /// The `substrate-executor` binary.
    pub executor_bin: PathBuf,
    /// Extra arguments for every executor (runsc path, platform, address range...).
    pub executor_args: Vec<String>,
    /// Heartbeat, executor ping and resync period (at most
    /// [`crds::liveness::HEARTBEAT_INTERVAL`]: longer would let leases lapse).
    pub heartbeat: Duration,
    /// runsc platform recorded in snapshot metadata.
    pub platform: String,
    /// First worker index (indexes name the host-side veth and pick the address block, so
    /// two agents on one host need disjoint index ranges).
    pub index_base: u32,
    /// The worker gateway's advertised address (`<ip>:<port>`, [`crate::gateway`]): written
    /// on this node's Workers (`status.gateway`) and on the actors they run
    /// (`status.worker.gateway`). `None`: no gateway.
    pub gateway: Option<String>,
}

/// A worker hosted here.
#[derive(Debug)]
struct LocalWorker {
    index: u32,
    socket: PathBuf,
    child: Option<Child>,
    /// Pid of an executor adopted from an earlier agent (not our child).
    adopted: Option<i32>,
}

/// Whether the executor is booting, restoring or checkpointing its sandbox (which is then
/// not killed as a stray).
fn mid_operation(status: &proto::WorkerStatus) -> bool {
    matches!(
        proto::Phase::try_from(status.phase),
        Ok(proto::Phase::Booting | proto::Phase::Restoring | proto::Phase::Checkpointing)
    )
}

/// Annotation on a worker the node agent cordoned because its pool was scaled below it.
pub const RETIRING_ANNOTATION: &str = "substrate.ate.dev/retiring";

/// Which workers a node runs: see [`Agent::desired_workers`].
#[derive(Debug, Default)]
struct WorkerPlan {
    desired: Vec<(String, String)>,
    retiring: Vec<(String, String)>,
    /// This node's `Worker`s as listed for the plan (what scale-down retires from).
    existing: Vec<Worker>,
}

/// Scale of one pool on one node: of the existing workers `mine` (`(name, bound)`), keeps
/// `replicas`, bound ones first (an actor's worker is never the one taken away while a free
/// one could go), then the lowest indexes; the bound ones beyond `replicas` are `retiring`
/// (they go when their actor leaves); new names (the lowest unused indexes) make up the
/// rest. Returns `(keep, retiring)`; workers in neither are retired now.
fn choose_workers(
    node: &str,
    pool: &str,
    replicas: usize,
    mine: &[(String, bool)],
) -> (Vec<String>, Vec<String>) {
    let prefix = format!("{node}-{pool}-");
    let index = |n: &str| {
        n.strip_prefix(&prefix)
            .and_then(|i| i.parse::<usize>().ok())
            .unwrap_or(usize::MAX)
    };
    let mut ranked: Vec<&(String, bool)> = mine.iter().collect();
    ranked.sort_by_key(|(n, bound)| (!*bound, index(n), n.clone()));
    let mut keep: Vec<String> = ranked
        .iter()
        .take(replicas)
        .map(|(n, _)| n.clone())
        .collect();
    let retiring = ranked
        .iter()
        .skip(replicas)
        .filter(|(_, bound)| *bound)
        .map(|(n, _)| n.clone())
        .collect();
    let mut i = 0;
    while keep.len() < replicas {
        let n = format!("{prefix}{i}");
        if !mine.iter().any(|(m, _)| *m == n) {
            keep.push(n);
        }
        i += 1;
    }
    (keep, retiring)
}

/// Stops the executor of worker `name` (SIGTERM; SIGKILL after 30 s), whether this agent
/// started it or adopted it. With `--on-shutdown=kill` it kills its sandbox and removes the
/// worker's network on the way out.
async fn stop_executor(name: &str, w: &mut LocalWorker) {
    let term = |pid: i32, sig| {
        let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), sig);
    };
    if let Some(pid) = w.adopted.take() {
        term(pid, nix::sys::signal::Signal::SIGTERM);
        let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
        while pid_alive(pid) && tokio::time::Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        if pid_alive(pid) {
            tracing::warn!(worker = %name, pid, "adopted executor did not stop within 30s; killing it");
            term(pid, nix::sys::signal::Signal::SIGKILL);
        } else {
            tracing::info!(worker = %name, pid, "adopted executor stopped");
        }
    }
    let Some(child) = w.child.as_mut() else {
        return;
    };
    if let Some(pid) = child.id().and_then(|p| i32::try_from(p).ok()) {
        term(pid, nix::sys::signal::Signal::SIGTERM);
    }
    match tokio::time::timeout(Duration::from_secs(30), child.wait()).await {
        Ok(_) => tracing::info!(worker = %name, "executor stopped"),
        Err(_) => {
            tracing::warn!(worker = %name, "executor did not stop within 30s; killing it");
            let _ = child.kill().await;
        }
    }
    w.child = None;
}

/// Pid of the process serving the unix socket at `path` (SO_PEERCRED).
async fn socket_peer_pid(path: &Path) -> Option<i32> {
    let stream = tokio::net::UnixStream::connect(path).await.ok()?;
    stream.peer_cred().ok()?.pid()
}

fn pid_alive(pid: i32) -> bool {
    nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), None).is_ok()
}

/// The node agent.
pub struct Agent {
    /// Workers, actors and atespaces on Substrate's apiserver; pools and templates on the
    /// cluster's (one and the same in standalone mode).
    clients: clients::Clients,
    cfg: AgentConfig,
    images: ImageCache,
    snapshots: SnapshotStore,
    workers: tokio::sync::Mutex<BTreeMap<String, LocalWorker>>,
    in_flight: Mutex<HashSet<String>>,
    /// Actors that changed while their task was in flight: the task goes round once more.
    dirty: Mutex<HashSet<String>>,
    /// Per worker: when its last successful heartbeat was stamped (see [`LEASE`]).
    leases: Mutex<BTreeMap<String, std::time::Instant>>,
    /// The addresses of the workers hosted here: where the worker gateway may connect.
    targets: Arc<crate::gateway::Targets>,
}

fn io_err(path: &Path) -> impl FnOnce(std::io::Error) -> AgentError + '_ {
    move |source| AgentError::Io {
        path: path.to_path_buf(),
        source,
    }
}

fn now() -> String {
    jiff::Timestamp::now()
        .strftime("%Y-%m-%dT%H:%M:%SZ")
        .to_string()
}

fn condition(
    type_: &str,
    status: bool,
    reason: &str,
    message: &str,
    generation: Option<i64>,
) -> Value {
    json!({
        "type": type_, "status": if status { "True" } else { "False" }, "reason": reason,
        "message": message, "lastTransitionTime": now(), "observedGeneration": generation.unwrap_or(0),
    })
}

/// `conditions` with `c` replacing the condition of the same type (transition time kept when
/// the status did not change).
fn with_condition(old: &[Value], c: Value) -> Vec<Value> {
    let mut out: Vec<Value> = old
        .iter()
        .filter(|o| o["type"] != c["type"])
        .cloned()
        .collect();
    let mut c = c;
    if let Some(prev) = old.iter().find(|o| o["type"] == c["type"])
        && prev["status"] == c["status"]
    {
        c["lastTransitionTime"] = prev["lastTransitionTime"].clone();
    }
    out.push(c);
    out
}

/// `text` without terminal colour codes (ANSI CSI sequences: ESC `[` … final letter), as
/// the executors' and agents' plain logs contain them.
pub fn strip_ansi(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut chars = text.chars();
    while let Some(c) = chars.next() {
        if c == '\x1b' {
            for c in chars.by_ref() {
                if c.is_ascii_alphabetic() {
                    break;
                }
            }
        } else {
            out.push(c);
        }
    }
    out
}

/// The last line of an executor log that reports an error (colour codes removed), or the
/// log's path when there is none.
fn last_error_line(log: &Path) -> String {
    let plain = strip_ansi(&std::fs::read_to_string(log).unwrap_or_default());
    // The executor logs its fatal error as one `ERROR` line with the whole cause chain.
    plain
        .lines()
        .rev()
        .find_map(|l| l.split_once(" ERROR ").map(|(_, m)| m.trim().to_string()))
        .unwrap_or_else(|| format!("see {}", log.display()))
}

fn to_crd_snapshot(r: &SnapshotRef) -> Value {
    serde_json::to_value(crds::substrate::SnapshotRef::from(r)).unwrap_or(Value::Null)
}

/// The snapshot metadata kept beside an unpacked snapshot (a cached unpack skips the fetch
/// that returns it).
const RESTORE_META: &str = ".snapshot-meta.json";

/// `reference` pinned to `digest`: `host/repo:tag` or `host/repo@sha256:..` → `host/repo@digest`.
fn pin_image(reference: &str, digest: &str) -> String {
    let repo = match reference.split_once('@') {
        Some((repo, _)) => repo,
        None => match reference.rsplit_once(':') {
            Some((repo, tag)) if !tag.contains('/') => repo,
            _ => reference,
        },
    };
    format!("{repo}@{digest}")
}

/// The image a snapshot was taken with, for the template's first container.
fn recorded_image_of(meta: &SnapshotMeta, template: &ActorTemplate) -> Option<String> {
    let c = template.spec.containers.first()?;
    meta.image_digests.get(&c.name).cloned()
}

fn read_recorded_image(dir: &Path, template: &ActorTemplate) -> Option<String> {
    let bytes = std::fs::read(dir.join(RESTORE_META)).ok()?;
    let meta: SnapshotMeta = serde_json::from_slice(&bytes).ok()?;
    recorded_image_of(&meta, template)
}

/// A record this young may belong to an actor the watch has not delivered yet.
const IMAGE_RECORD_GRACE: Duration = Duration::from_secs(60);

/// The image records in `dir` (`<uid>` files) whose actor is not in `known` (the actors bound
/// to this node) and that are older than `grace`.
fn stale_image_records(dir: &Path, known: &HashSet<String>, grace: Duration) -> Vec<PathBuf> {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return Vec::new();
    };
    entries
        .filter_map(Result::ok)
        .filter(|e| !known.contains(e.file_name().to_string_lossy().as_ref()))
        .filter(|e| {
            e.metadata()
                .and_then(|m| m.modified())
                .ok()
                .and_then(|t| t.elapsed().ok())
                .is_some_and(|age| age >= grace)
        })
        .map(|e| e.path())
        .collect()
}

/// How often cache entries of snapshots gone from the store are dropped.
const CACHE_PRUNE_EVERY: Duration = Duration::from_secs(30);
/// A cache entry used this recently is kept even when the store does not list it (yet).
const CACHE_PRUNE_GRACE: Duration = Duration::from_secs(60);

/// The unpacked snapshots in `dir` (`<uid>-<16 hex of the manifest digest>`) whose actor is
/// not in `known` and that are older than `grace`.
fn stale_restore_dirs(dir: &Path, known: &HashSet<String>, grace: Duration) -> Vec<PathBuf> {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return Vec::new();
    };
    entries
        .filter_map(Result::ok)
        .filter(|e| {
            let name = e.file_name().to_string_lossy().into_owned();
            let uid = name.rsplit_once('-').map_or(name.as_str(), |(u, _)| u);
            !known.contains(uid)
        })
        .filter(|e| {
            e.metadata()
                .and_then(|m| m.modified())
                .ok()
                .and_then(|t| t.elapsed().ok())
                .is_some_and(|age| age >= grace)
        })
        .map(|e| e.path())
        .collect()
}

fn from_crd_snapshot(s: &crds::substrate::SnapshotRef) -> Option<SnapshotRef> {
    SnapshotRef::try_from(s).ok()
}

impl Agent {
    /// The agent; a single `kube::Client` is standalone mode.
    pub fn new(
        clients: impl Into<clients::Clients>,
        cfg: AgentConfig,
        images: ImageCache,
        snapshots: SnapshotStore,
    ) -> Arc<Self> {
        Arc::new(Self {
            clients: clients.into(),
            cfg,
            images,
            snapshots,
            workers: tokio::sync::Mutex::new(BTreeMap::new()),
            in_flight: Mutex::new(HashSet::new()),
            dirty: Mutex::new(HashSet::new()),
            leases: Mutex::new(BTreeMap::new()),
            targets: Arc::default(),
        })
    }

    /// The addresses of this agent's workers (kept by its worker sync), for the worker
    /// gateway ([`crate::gateway::Gateway`]).
    pub fn gateway_targets(&self) -> Arc<crate::gateway::Targets> {
        self.targets.clone()
    }

    fn worker_api(&self) -> Api<Worker> {
        Api::all(self.clients.substrate.clone())
    }

    fn actor_api(&self, ns: &str) -> Api<Actor> {
        Api::namespaced(self.clients.substrate.clone(), ns)
    }

    /// Runs the agent until the returned future is dropped.
    pub async fn run(self: Arc<Self>) {
        let (store, writer) = reflector::store::<Actor>();
        let cfg =
            watcher::Config::default().fields(&format!("status.worker.node={}", self.cfg.node));
        let stream = watcher(Api::<Actor>::all(self.clients.substrate.clone()), cfg)
            .default_backoff()
            .reflect(writer)
            .applied_objects();
        let mut stream = std::pin::pin!(stream);
        let period = self.cfg.heartbeat.min(crds::liveness::HEARTBEAT_INTERVAL);
        let mut tick = tokio::time::interval(period);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let pruner = self.prune_snapshot_cache();
        let mut pruner = std::pin::pin!(pruner);
        loop {
            tokio::select! {
                ev = stream.next() => match ev {
                    Some(Ok(_)) => self.clone().reconcile_actors(&store),
                    Some(Err(e)) => tracing::warn!(error = %e, "actor watch failed; retrying"),
                    None => return,
                },
                _ = tick.tick() => {
                    if let Err(e) = self.sync_workers(&store).await {
                        tracing::warn!(error = %e, "worker sync failed; will retry");
                    }
                    self.clone().reconcile_actors(&store);
                }
                _ = &mut pruner => {}
            }
        }
    }

    /// Stops the executors of this agent, those it started and those it adopted from an
    /// earlier agent (SIGTERM; each applies its own shutdown policy), waiting up to 30 s
    /// for each.
    pub async fn shutdown(&self) {
        let mut workers = self.workers.lock().await;
        for (name, w) in workers.iter_mut() {
            stop_executor(name, w).await;
        }
    }

    // --- workers -----------------------------------------------------------------------

    /// The workers to run: `desired` (`replicas` per hosted pool) and `retiring` (bound
    /// workers past `replicas`: heartbeated and cordoned until their actor leaves, then
    /// retired). See [`choose_workers`].
    async fn desired_workers(&self) -> Result<WorkerPlan, AgentError> {
        let pools: Api<WorkerPool> =
            Api::namespaced(self.clients.cluster.clone(), &self.cfg.pool_namespace);
        let node = self.cfg.node.as_str();
        // This node's workers only (the apiserver filters by the selectable field), not every
        // worker of the cluster at each heartbeat.
        let lp = ListParams::default().fields(&format!("spec.node={node}"));
        let existing: Vec<Worker> = self
            .worker_api()
            .list(&lp)
            .await?
            .into_iter()
            .filter(|w| w.spec.node.as_deref() == Some(node))
            .collect();
        let mut plan = WorkerPlan::default();
        for p in pools.list(&ListParams::default()).await? {
            let name = p.metadata.name.clone().unwrap_or_default();
            if !self.cfg.pools.is_empty() && !self.cfg.pools.contains(&name) {
                continue;
            }
            let mine: Vec<(String, bool)> = existing
                .iter()
                .filter(|w| w.spec.pool == name)
                .map(|w| {
                    let bound = w.status.as_ref().and_then(|s| s.phase)
                        == Some(crds::substrate::WorkerPhase::Bound);
                    (w.metadata.name.clone().unwrap_or_default(), bound)
                })
                .collect();
            let (keep, retiring) =
                choose_workers(node, &name, p.spec.replicas.max(0) as usize, &mine);
            plan.desired
                .extend(keep.into_iter().map(|w| (w, name.clone())));
            plan.retiring
                .extend(retiring.into_iter().map(|w| (w, name.clone())));
        }
        plan.existing = existing;
        Ok(plan)
    }

    /// Cordons a bound worker past its pool's `replicas` (`spec.unschedulable`, annotated
    /// as ours): no new actor lands on it, and the operator's drain suspends the one it runs
    /// (checkpointed: its next request resumes it elsewhere), after which it is retired.
    async fn mark_retiring(&self, name: &str) {
        let patch = json!({
            "metadata": {"annotations": {RETIRING_ANNOTATION: "true"}},
            "spec": {"unschedulable": true},
        });
        match self
            .worker_api()
            .patch(name, &PatchParams::default(), &Patch::Merge(patch))
            .await
        {
            Ok(_) => {}
            Err(e) => {
                tracing::warn!(worker = name, error = %e, "cannot cordon a worker past its pool's replicas")
            }
        }
    }

    fn index_file(&self) -> PathBuf {
        self.cfg.state_dir.join("worker-indexes.json")
    }

    /// Stable index per worker name (its network block), persisted across restarts.
    fn allocate_index(&self, name: &str) -> Result<u32, AgentError> {
        let path = self.index_file();
        let mut map: BTreeMap<String, u32> = std::fs::read(&path)
            .ok()
            .and_then(|b| serde_json::from_slice(&b).ok())
            .unwrap_or_default();
        if let Some(i) = map.get(name) {
            return Ok(*i);
        }
        let used: HashSet<u32> = map.values().copied().collect();
        let base = self.cfg.index_base.max(1);
        let i = (base..).find(|i| !used.contains(i)).unwrap_or(base);
        map.insert(name.to_string(), i);
        std::fs::create_dir_all(&self.cfg.state_dir).map_err(io_err(&self.cfg.state_dir))?;
        let tmp = path.with_extension("tmp");
        std::fs::write(&tmp, serde_json::to_vec(&map).unwrap_or_default()).map_err(io_err(&tmp))?;
        std::fs::rename(&tmp, &path).map_err(io_err(&path))?;
        Ok(i)
    }

    /// A client of `worker`'s executor, for calls that are contact (they hold off its
    /// sandbox fence): only while this agent holds the worker's lease, a heartbeat written
    /// less than [`LEASE`] ago.
    async fn executor(&self, worker: &str) -> Result<ExecutorClient, AgentError> {
        let held = self
            .leases
            .lock()
            .ok()
            .and_then(|l| l.get(worker).copied())
            .is_some_and(|at| at.elapsed() < LEASE);
        if !held {
            return Err(AgentError::NoLease {
                worker: worker.into(),
            });
        }
        self.executor_unleased(worker).await
    }

    /// A client of `worker`'s executor whatever the lease: for status probes (not
    /// contact) and the ping right after a heartbeat.
    async fn executor_unleased(&self, worker: &str) -> Result<ExecutorClient, AgentError> {
        let socket = self
            .cfg
            .state_dir
            .join("run")
            .join(format!("{worker}.sock"));
        ExecutorClient::connect(&socket)
            .await
            .map_err(|source| AgentError::Executor {
                worker: worker.into(),
                source,
            })
    }

    /// Starts (or adopts) the executor of `name`.
    async fn ensure_executor(&self, name: &str) -> Result<(), AgentError> {
        let mut workers = self.workers.lock().await;
        if !workers.contains_key(name) {
            let index = self.allocate_index(name)?;
            let socket = self.cfg.state_dir.join("run").join(format!("{name}.sock"));
            workers.insert(
                name.into(),
                LocalWorker {
                    index,
                    socket,
                    child: None,
                    adopted: None,
                },
            );
        }
        let Some(w) = workers.get_mut(name) else {
            return Ok(());
        };
        if let Some(child) = &mut w.child
            && matches!(child.try_wait(), Ok(None))
        {
            return Ok(());
        }
        // Adopt an executor that still serves the socket (the agent restarted), and
        // remember its pid so that shutdown stops it like one of ours.
        if let Some(pid) = w.adopted
            && pid_alive(pid)
        {
            return Ok(());
        }
        if ExecutorClient::connect(&w.socket).await.is_ok() {
            w.adopted = socket_peer_pid(&w.socket).await;
            tracing::info!(worker = name, pid = ?w.adopted, "adopted a running executor");
            return Ok(());
        }
        w.adopted = None;
        let run_dir = self.cfg.state_dir.join("run");
        std::fs::create_dir_all(&run_dir).map_err(io_err(&run_dir))?;
        let log = self.cfg.state_dir.join("logs").join(format!("{name}.log"));
        if let Some(p) = log.parent() {
            std::fs::create_dir_all(p).map_err(io_err(p))?;
        }
        let out = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&log)
            .map_err(io_err(&log))?;
        let err = out.try_clone().map_err(io_err(&log))?;
        let child = Command::new(&self.cfg.executor_bin)
            .arg("--worker-name")
            .arg(name)
            .arg("--index")
            .arg(w.index.to_string())
            .arg("--socket")
            .arg(&w.socket)
            .arg("--state-dir")
            .arg(self.cfg.state_dir.join("executors").join(name))
            .args(&self.cfg.executor_args)
            .stdout(out)
            .stderr(err)
            .spawn()
            .map_err(io_err(&self.cfg.executor_bin))?;
        tracing::info!(worker = name, index = w.index, pid = ?child.id(), "started executor");
        w.child = Some(child);
        // Wait for the socket; an executor that exits says why in its log.
        for _ in 0..100 {
            if ExecutorClient::connect(&w.socket).await.is_ok() {
                return Ok(());
            }
            if let Some(code) = w.child.as_mut().and_then(|c| c.try_wait().ok().flatten()) {
                return Err(AgentError::Invalid(format!(
                    "executor of worker {name} exited during start-up ({code}): {}",
                    last_error_line(&log)
                )));
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        Err(AgentError::Invalid(format!(
            "executor of worker {name} did not serve {} within 10s (log: {})",
            w.socket.display(),
            log.display()
        )))
    }

    /// One pass: executors up, Worker objects registered, heartbeats, orphaned sandboxes.
    async fn sync_workers(&self, actors: &Store<Actor>) -> Result<(), AgentError> {
        let plan = self.desired_workers().await?;
        let desired = plan.desired;
        let api = self.worker_api();
        for (name, _) in &plan.retiring {
            self.mark_retiring(name).await;
        }
        for (name, pool) in desired.iter().chain(&plan.retiring) {
            let started = self.ensure_executor(name).await;
            if let Err(e) = &started {
                tracing::warn!(worker = %name, error = %e, "executor not available");
            }
            // A probe: not contact, so the fence is not held off before the heartbeat
            // below is known to be written.
            let status = match (&started, self.executor_unleased(name).await) {
                (Ok(()), Ok(mut c)) => c.probe().await.ok(),
                _ => None,
            };
            let address = status
                .as_ref()
                .and_then(|s| s.network.as_ref())
                .map(|n| n.worker_ip.clone())
                .filter(|s| !s.is_empty());
            if let Some(ip) = address.as_deref().and_then(|a| a.parse().ok()) {
                self.targets.set(name, ip);
            }
            let existing = api.get_opt(name).await?;
            if existing.is_none() {
                let labels = self.pool_labels(pool).await.unwrap_or_default();
                let obj: Worker = serde_json::from_value(json!({
                    "apiVersion": "substrate.ate.dev/v1alpha1", "kind": "Worker",
                    "metadata": {"name": name, "labels": labels},
                    "spec": {"pool": pool, "node": self.cfg.node, "address": address},
                }))
                .map_err(|e| AgentError::Invalid(e.to_string()))?;
                match api.create(&PostParams::default(), &obj).await {
                    Ok(_) => tracing::info!(worker = %name, pool = %pool, "registered worker"),
                    Err(kube::Error::Api(e)) if e.code == 409 => {}
                    Err(e) => return Err(e.into()),
                }
            }
            let current = api.get_opt(name).await?;
            // Wanted again (the pool scaled back up): no longer retiring.
            if !plan.retiring.iter().any(|(r, _)| r == name)
                && current.as_ref().is_some_and(|w| {
                    w.metadata
                        .annotations
                        .as_ref()
                        .is_some_and(|a| a.contains_key(RETIRING_ANNOTATION))
                })
            {
                let patch = json!({
                    "metadata": {"annotations": {RETIRING_ANNOTATION: null}},
                    "spec": {"unschedulable": null},
                });
                if let Err(e) = api
                    .patch(name, &PatchParams::default(), &Patch::Merge(patch))
                    .await
                {
                    tracing::warn!(worker = %name, error = %e, "cannot uncordon a worker wanted again");
                }
            }
            let phase = current
                .as_ref()
                .and_then(|w| w.status.as_ref())
                .and_then(|s| s.phase)
                .map(|p| format!("{p:?}"));
            let healthy = status.is_some();
            // Taken before the time is stamped: the lease never outlasts what the
            // operator sees.
            let stamped = std::time::Instant::now();
            let mut st = json!({"lastHeartbeatTime": now()});
            let advertised = current
                .as_ref()
                .and_then(|w| w.status.as_ref())
                .and_then(|s| s.gateway.as_deref());
            if advertised != self.cfg.gateway.as_deref() {
                // `null` removes it (merge patch): a gateway turned off is not advertised.
                st["gateway"] = json!(self.cfg.gateway);
            }
            match (phase.as_deref(), healthy) {
                (None | Some("Unhealthy"), true) => st["phase"] = json!("Free"),
                (None | Some("Free"), false) => st["phase"] = json!("Unhealthy"),
                _ => {}
            }
            // `Ready` says whether the worker can take actors and, when not, why (written
            // on changes only: the scheduler keeps its own conditions in the same list).
            let ready = match (&started, healthy) {
                (_, true) => {
                    condition("Ready", true, "ExecutorReady", "the executor answers", None)
                }
                (Err(e), false) => {
                    condition("Ready", false, "ExecutorUnavailable", &e.to_string(), None)
                }
                (Ok(()), false) => condition(
                    "Ready",
                    false,
                    "ExecutorUnreachable",
                    "the executor does not answer its status call",
                    None,
                ),
            };
            let conds: Vec<Value> = current
                .as_ref()
                .and_then(|w| w.status.as_ref())
                .map(|s| {
                    s.conditions
                        .iter()
                        .filter_map(|c| serde_json::to_value(c).ok())
                        .collect()
                })
                .unwrap_or_default();
            let prev = conds.iter().find(|c| c["type"] == "Ready");
            if prev.is_none_or(|p| p["status"] != ready["status"] || p["reason"] != ready["reason"])
            {
                st["conditions"] = json!(with_condition(&conds, ready));
            }
            api.patch_status(
                name,
                &PatchParams::default(),
                &Patch::Merge(json!({"status": st})),
            )
            .await?;
            if let Ok(mut l) = self.leases.lock() {
                l.insert(name.clone(), stamped);
            }
            // The ping: contact, now that the heartbeat is written.
            if healthy
                && let Ok(mut c) = self.executor(name).await
                && let Err(e) = c.status().await
            {
                tracing::warn!(worker = %name, error = %e, "executor ping failed");
            }
            if let Some(s) = &status {
                self.kill_stray_sandbox(name, s, actors).await;
            }
        }
        self.prune_image_records(actors);
        self.prune_restore_dirs(actors);
        let retired = self.retire_workers(&desired, plan.existing).await;
        {
            // The gateway reaches the workers whose executors this agent still has.
            let workers = self.workers.lock().await;
            self.targets.retain(|n| workers.contains_key(n));
        }
        retired
    }

    /// Removes the image records of actors this node no longer runs (deleted while running,
    /// or whose sandbox was lost and the actor rescued elsewhere): only once the actor watch
    /// has listed, so an empty store never wipes the records of running actors.
    fn prune_image_records(&self, actors: &Store<Actor>) {
        use futures::FutureExt as _;
        if !matches!(actors.wait_until_ready().now_or_never(), Some(Ok(()))) {
            return;
        }
        let known: HashSet<String> = actors
            .state()
            .iter()
            .filter_map(|a| a.metadata.uid.clone())
            .collect();
        for f in stale_image_records(&self.run_image_dir(), &known, IMAGE_RECORD_GRACE) {
            match std::fs::remove_file(&f) {
                Ok(()) => {
                    tracing::debug!(file = %f.display(), "removed the image record of an actor no longer here")
                }
                Err(e) => {
                    tracing::warn!(file = %f.display(), error = %e, "could not remove a stale image record")
                }
            }
        }
    }

    /// Removes unpacked snapshots (`<state>/restore/<uid>-<digest>`: a whole memory image)
    /// of actors no longer bound to this node — deleted, suspended or moved — once older than
    /// [`IMAGE_RECORD_GRACE`]; only once the actor watch has listed.
    fn prune_restore_dirs(&self, actors: &Store<Actor>) {
        use futures::FutureExt as _;
        if !matches!(actors.wait_until_ready().now_or_never(), Some(Ok(()))) {
            return;
        }
        let known: HashSet<String> = actors
            .state()
            .iter()
            .filter_map(|a| a.metadata.uid.clone())
            .collect();
        let dir = self.cfg.state_dir.join("restore");
        for d in stale_restore_dirs(&dir, &known, IMAGE_RECORD_GRACE) {
            match std::fs::remove_dir_all(&d) {
                Ok(()) => {
                    tracing::info!(dir = %d.display(), "removed the unpacked snapshot of an actor no longer here")
                }
                Err(e) => {
                    tracing::warn!(dir = %d.display(), error = %e, "could not remove an unpacked snapshot")
                }
            }
        }
    }

    /// Drops node-local snapshot cache entries whose snapshot left the object store (the
    /// operator's GC deleted it: its actor is gone or it was superseded), every
    /// [`CACHE_PRUNE_EVERY`]; failures (the store may be down) are retried then.
    async fn prune_snapshot_cache(&self) {
        let mut tick = tokio::time::interval(CACHE_PRUNE_EVERY);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut failing = false;
        loop {
            tick.tick().await;
            match self.snapshots.prune_cache(CACHE_PRUNE_GRACE).await {
                Ok(p) => {
                    if p.entries > 0 {
                        tracing::info!(
                            entries = p.entries,
                            bytes = p.bytes,
                            "snapshot cache pruned"
                        );
                    }
                    failing = false;
                }
                // One warning per outage, not one per attempt.
                Err(e) if !failing => {
                    failing = true;
                    tracing::warn!(error = %e, "snapshot cache prune failed; retrying every {CACHE_PRUNE_EVERY:?}");
                }
                Err(e) => tracing::debug!(error = %e, "snapshot cache prune failed again"),
            }
        }
    }

    /// Scale-down: this node's workers no longer desired (fewer replicas, pool deleted)
    /// go once they are not bound: the `Worker` is deleted first, with its resourceVersion
    /// as precondition (a concurrent claim by the scheduler wins and the worker stays until
    /// its actor leaves), then its executor is stopped.
    /// Retires `existing` workers (this node's, listed at the start of the pass) that are
    /// not `desired` and not bound; a worker changed since the list (a claim) keeps its
    /// resourceVersion precondition from being met, and is looked at again next pass.
    async fn retire_workers(
        &self,
        desired: &[(String, String)],
        existing: Vec<Worker>,
    ) -> Result<(), AgentError> {
        let api = self.worker_api();
        for w in existing {
            let name = w.metadata.name.clone().unwrap_or_default();
            if desired.iter().any(|(n, _)| *n == name)
                || (!self.cfg.pools.is_empty() && !self.cfg.pools.contains(&w.spec.pool))
            {
                continue;
            }
            if w.status.as_ref().and_then(|s| s.phase) == Some(crds::substrate::WorkerPhase::Bound)
            {
                continue;
            }
            let dp = kube::api::DeleteParams {
                preconditions: Some(kube::api::Preconditions {
                    resource_version: w.metadata.resource_version.clone(),
                    uid: w.metadata.uid.clone(),
                }),
                ..Default::default()
            };
            match api.delete(&name, &dp).await {
                Ok(_) => tracing::info!(worker = %name, "worker retired (scale-down)"),
                Err(kube::Error::Api(e)) if e.code == 409 => continue,
                Err(kube::Error::Api(e)) if e.code == 404 => {}
                Err(e) => return Err(e.into()),
            }
            let mut workers = self.workers.lock().await;
            match workers.remove(&name) {
                Some(mut local) => stop_executor(&name, &mut local).await,
                None => {
                    // Not started by this agent (it restarted since): stop whoever serves
                    // the worker's socket.
                    let socket = self.cfg.state_dir.join("run").join(format!("{name}.sock"));
                    let mut local = LocalWorker {
                        index: 0,
                        adopted: socket_peer_pid(&socket).await,
                        socket,
                        child: None,
                    };
                    stop_executor(&name, &mut local).await;
                }
            }
        }
        Ok(())
    }

    async fn pool_labels(&self, pool: &str) -> Option<BTreeMap<String, String>> {
        let pools: Api<WorkerPool> =
            Api::namespaced(self.clients.cluster.clone(), &self.cfg.pool_namespace);
        let p = pools.get_opt(pool).await.ok()??;
        let mut labels = p.spec.worker_labels.clone();
        labels.insert(crds::labels::WORKER_POOL.into(), pool.into());
        Some(labels)
    }

    /// Kills a sandbox whose actor is no longer bound to this worker (deleted, or moved on
    /// after a failure), unless an operation on it is in flight.
    async fn kill_stray_sandbox(
        &self,
        worker: &str,
        status: &proto::WorkerStatus,
        actors: &Store<Actor>,
    ) {
        if status.actor.is_empty()
            || self
                .in_flight
                .lock()
                .is_ok_and(|f| f.contains(&status.actor))
        {
            return;
        }
        let bound = actors.state().iter().any(|a| {
            let key = format!(
                "{}/{}",
                a.metadata.namespace.as_deref().unwrap_or_default(),
                a.metadata.name.as_deref().unwrap_or_default()
            );
            key == status.actor
                && a.status
                    .as_ref()
                    .and_then(|s| s.worker.as_ref())
                    .is_some_and(|w| w.name == worker)
        });
        if bound || mid_operation(status) {
            return;
        }
        // The cache may not have synced yet (a restarted agent): ask the apiserver before
        // killing anything, and keep the sandbox unless it says the actor is not bound here.
        self.kill_if_not_bound(worker, &status.actor).await;
    }

    /// Kills the sandbox of `actor` ("<atespace>/<name>") on `worker` unless the apiserver
    /// says that actor is bound to this worker (or cannot be asked). Returns whether it
    /// killed it.
    async fn kill_if_not_bound(&self, worker: &str, actor: &str) -> bool {
        let (Ok(key), Some((ns, name))) = (actor.parse::<ActorKey>(), actor.split_once('/')) else {
            return false;
        };
        match self.actor_api(ns).get_opt(name).await {
            Ok(Some(a))
                if a.status
                    .as_ref()
                    .and_then(|s| s.worker.as_ref())
                    .is_some_and(|w| w.name == worker) =>
            {
                return false;
            }
            Ok(_) => {}
            Err(e) => {
                tracing::debug!(worker, actor, error = %e, "cannot check a sandbox's actor; keeping it");
                return false;
            }
        }
        let Ok(mut c) = self.executor(worker).await else {
            return false;
        };
        match c.kill(&key, &format!("stray-{}", now())).await {
            Ok(_) => {
                tracing::info!(
                    worker,
                    actor,
                    "killed a sandbox whose actor is not bound here"
                );
                true
            }
            Err(e) => {
                tracing::warn!(worker, actor, error = %e, "killing a stray sandbox failed");
                false
            }
        }
    }

    /// After the executor refused an operation for `key` because it is busy: when what
    /// keeps it busy is a settled sandbox of another actor that is not bound here (left
    /// running when its actor was released elsewhere, e.g. after the agent's pod was
    /// deleted, and not yet found by the heartbeat's sweep), kills it. Returns whether the
    /// worker is free to try again. This worker was claimed for `key` by the scheduler, so
    /// no other actor may run on it.
    async fn clear_stray_for(&self, worker: &str, key: &ActorKey) -> bool {
        let Ok(mut c) = self.executor(worker).await else {
            return false;
        };
        let Ok(status) = c.status().await else {
            return false;
        };
        if status.actor.is_empty() || status.actor == key.to_string() || mid_operation(&status) {
            return false;
        }
        self.kill_if_not_bound(worker, &status.actor).await
    }

    // --- actors ------------------------------------------------------------------------

    /// Starts a task for every actor that needs one and has none running.
    fn reconcile_actors(self: Arc<Self>, store: &Store<Actor>) {
        for actor in store.state() {
            let ns = actor.metadata.namespace.clone().unwrap_or_default();
            let name = actor.metadata.name.clone().unwrap_or_default();
            let key = format!("{ns}/{name}");
            let phase = actor
                .status
                .as_ref()
                .and_then(|s| s.phase)
                .map(|p| format!("{p:?}"));
            if !matches!(
                phase.as_deref(),
                Some("Resuming" | "Suspending" | "Running")
            ) {
                continue;
            }
            {
                let Ok(mut f) = self.in_flight.lock() else {
                    return;
                };
                if !f.insert(key.clone()) {
                    // Looked at again when the task ends (e.g. a delete that arrived
                    // during a resume), not only at the next heartbeat.
                    if let Ok(mut d) = self.dirty.lock() {
                        d.insert(key);
                    }
                    continue;
                }
            }
            let agent = self.clone();
            tokio::spawn(async move {
                loop {
                    let result = agent.reconcile_actor(&ns, &name).await;
                    if let Err(e) = result {
                        tracing::warn!(atespace = %ns, actor = %name, error = %e, "actor reconcile failed; will retry");
                    }
                    // Both locks at once: a change recorded after this check starts a task.
                    let (Ok(mut f), Ok(mut d)) = (agent.in_flight.lock(), agent.dirty.lock())
                    else {
                        return;
                    };
                    if !d.remove(&key) {
                        f.remove(&key);
                        return;
                    }
                }
            });
        }
    }

    async fn reconcile_actor(&self, ns: &str, name: &str) -> Result<(), AgentError> {
        // Always act on the latest version, not the cached one.
        let Some(actor) = self.actor_api(ns).get_opt(name).await? else {
            return Ok(());
        };
        let Some(status) = actor.status.clone() else {
            return Ok(());
        };
        let Some(worker) = status.worker.clone() else {
            return Ok(());
        };
        if worker.node.as_deref() != Some(&self.cfg.node) {
            return Ok(());
        }
        if actor.metadata.deletion_timestamp.is_some() {
            return self.stop_deleted(&actor, &worker.name).await;
        }
        match status.phase.map(|p| format!("{p:?}")).as_deref() {
            Some("Resuming") => self.resume(&actor, &worker.name).await,
            Some("Suspending") => self.suspend(&actor, &worker.name).await,
            Some("Running") => self.check_running(&actor, &worker.name).await,
            _ => Ok(()),
        }
    }

    async fn template(&self, actor: &Actor) -> Result<ActorTemplate, AgentError> {
        let ns = actor.metadata.namespace.clone().unwrap_or_default();
        let tns = actor.spec.template.namespace.clone().unwrap_or(ns);
        let api: Api<ActorTemplate> = Api::namespaced(self.clients.cluster.clone(), &tns);
        api.get_opt(&actor.spec.template.name)
            .await?
            .ok_or_else(|| {
                AgentError::Invalid(format!(
                    "actortemplates.ate.dev \"{}\" not found in atespace {tns}",
                    actor.spec.template.name
                ))
            })
    }

    /// A template of another atespace must (still) share itself with the actor's atespace
    /// (`spec.sharing`): the apiserver checks it on create and at every resume; checked here
    /// too, so an actor bound some other way (a status write) cannot boot from it.
    async fn check_template_shared(
        &self,
        actor: &Actor,
        template: &ActorTemplate,
    ) -> Result<(), AgentError> {
        let ns = actor.metadata.namespace.as_deref().unwrap_or_default();
        if template.metadata.namespace.as_deref() == Some(ns) || ns == crds::GOLDEN_ATESPACE {
            return Ok(());
        }
        let atespaces: Api<crds::Atespace> = Api::all(self.clients.substrate.clone());
        let labels = atespaces
            .get_opt(ns)
            .await?
            .and_then(|a| a.metadata.labels)
            .unwrap_or_default();
        if template.usable_from(ns, &labels) {
            return Ok(());
        }
        Err(AgentError::Invalid(format!(
            "actortemplates.ate.dev \"{}\" in atespace \"{}\" is not shared with atespace \"{ns}\"",
            template.metadata.name.as_deref().unwrap_or_default(),
            template.metadata.namespace.as_deref().unwrap_or_default(),
        )))
    }

    /// The process to run, from the template's first container and its image config.
    ///
    /// `image` (from a snapshot's record) replaces the template's image: a process restores
    /// onto the root filesystem it was checkpointed with, whatever the template says now.
    async fn actor_spec(
        &self,
        actor: &Actor,
        template: &ActorTemplate,
        image: Option<&str>,
    ) -> Result<(ActorSpec, String), AgentError> {
        let c = template
            .spec
            .containers
            .first()
            .ok_or_else(|| AgentError::Invalid("the template has no containers".into()))?;
        let reference = image.unwrap_or(&c.image);
        let rootfs = self.images.ensure_rootfs(reference).await?;
        let image = &rootfs.config;
        let args = match (c.command.is_empty(), c.args.is_empty()) {
            (false, _) => c.command.iter().chain(&c.args).cloned().collect(),
            (true, false) => image.entrypoint.iter().chain(&c.args).cloned().collect(),
            (true, true) => image.argv(),
        };
        if args.is_empty() {
            return Err(AgentError::Invalid(format!(
                "image {reference} has no entrypoint and the template gives no command"
            )));
        }
        let mut env = ProcessSpec::default().env;
        env.retain(|e| {
            !image
                .env
                .iter()
                .any(|i| i.split('=').next() == e.split('=').next())
        });
        env.extend(image.env.iter().cloned());
        env.extend(c.env.iter().map(|e| format!("{}={}", e.name, e.value)));
        let cwd = c
            .working_dir
            .clone()
            .or_else(|| image.working_dir.clone())
            .unwrap_or_else(|| "/".into());
        let spec = ActorSpec {
            rootfs: rootfs.path.clone(),
            process: ProcessSpec {
                args,
                env,
                cwd,
                ..ProcessSpec::default()
            },
            hostname: actor.metadata.name.clone(),
        };
        Ok((spec, pin_image(reference, &rootfs.manifest_digest)))
    }

    /// Where the images the sandboxes run are remembered, a file per actor uid (survives an
    /// agent restart).
    fn run_image_dir(&self) -> PathBuf {
        self.cfg.state_dir.join("images-running")
    }

    fn run_image_file(&self, uid: &str) -> PathBuf {
        self.run_image_dir().join(uid)
    }

    fn remember_image(&self, uid: &str, image: &str) {
        let f = self.run_image_file(uid);
        let written = f
            .parent()
            .map_or(Ok(()), std::fs::create_dir_all)
            .and_then(|()| std::fs::write(&f, image));
        if let Err(e) = written {
            tracing::warn!(file = %f.display(), error = %e, "could not record the actor's image");
        }
    }

    fn recorded_run_image(&self, uid: &str) -> Option<String> {
        let s = std::fs::read_to_string(self.run_image_file(uid)).ok()?;
        let s = s.trim();
        (!s.is_empty()).then(|| s.to_string())
    }

    fn actor_key(actor: &Actor) -> Result<ActorKey, AgentError> {
        ActorKey::new(
            actor.metadata.namespace.as_deref().unwrap_or_default(),
            actor.metadata.name.as_deref().unwrap_or_default(),
        )
        .map_err(|e| AgentError::Invalid(e.to_string()))
    }

    async fn resume(&self, actor: &Actor, worker: &str) -> Result<(), AgentError> {
        let ns = actor.metadata.namespace.clone().unwrap_or_default();
        let name = actor.metadata.name.clone().unwrap_or_default();
        let uid = actor.metadata.uid.clone().unwrap_or_default();
        // A resume the actor no longer waits for (deleted, or failed by the operator's
        // resume deadline) is abandoned: its sandbox is killed and its worker freed now,
        // not when a hung image pull or readiness probe gives up.
        let result = tokio::select! {
            r = self.try_resume(actor, worker) => r,
            () = self.until_abandoned(actor, worker) => {
                tracing::warn!(atespace = %ns, actor = %name, worker, "resume abandoned: the actor was deleted or left this worker");
                return self.resume_overtaken(actor, worker).await;
            }
        };
        match result {
            Ok((address, image)) => {
                let written = self
                    .set_actor_status(&ns, &name, &uid, |st, generation| {
                        if st["phase"] != "Resuming" || st["worker"]["name"] != worker {
                            return false;
                        }
                        st["phase"] = json!("Running");
                        st["image"] = json!(image);
                        if let Some(w) = st["worker"].as_object_mut() {
                            match &self.cfg.gateway {
                                Some(g) => w.insert("gateway".into(), json!(g)),
                                None => w.remove("gateway"),
                            };
                        }
                        st["lastActiveTime"] = json!(now());
                        st["observedGeneration"] = json!(generation);
                        let conds = st["conditions"].as_array().cloned().unwrap_or_default();
                        let message = format!("running on worker {worker} at {address}");
                        let conds = with_condition(
                            &conds,
                            condition(
                                "Ready",
                                true,
                                crds::conditions::reasons::RUNNING,
                                &message,
                                Some(generation),
                            ),
                        );
                        let conds = with_condition(
                            &conds,
                            condition(
                                "Reconciling",
                                false,
                                crds::conditions::reasons::RUNNING,
                                &message,
                                Some(generation),
                            ),
                        );
                        st["conditions"] = json!(with_condition(
                            &conds,
                            condition(
                                "Stalled",
                                false,
                                crds::conditions::reasons::RUNNING,
                                &message,
                                Some(generation)
                            )
                        ));
                        true
                    })
                    .await?;
                if !written {
                    return self.resume_overtaken(actor, worker).await;
                }
                tracing::info!(atespace = %ns, actor = %name, worker, "actor running");
                Ok(())
            }
            Err(e) if e.is_transient() => {
                tracing::warn!(atespace = %ns, actor = %name, worker, error = %e, "resume interrupted; will retry");
                Err(e)
            }
            Err(e) => {
                tracing::warn!(atespace = %ns, actor = %name, worker, error = %e, "resume failed");
                if let Ok(mut c) = self.executor(worker).await
                    && let Ok(key) = Self::actor_key(actor)
                {
                    let _ = c.kill(&key, &format!("resume-failed-{uid}")).await;
                }
                let msg = e.to_string();
                self.release(actor, worker, "Failed", "ResumeFailed", &msg, None)
                    .await?;
                Err(e)
            }
        }
    }

    /// Returns once `actor` is deleted (or being deleted), or no longer bound to `worker`
    /// (checked every [`ABANDON_CHECK`]; an unreachable apiserver changes nothing).
    async fn until_abandoned(&self, actor: &Actor, worker: &str) {
        let ns = actor.metadata.namespace.clone().unwrap_or_default();
        let name = actor.metadata.name.clone().unwrap_or_default();
        let api = self.actor_api(&ns);
        loop {
            tokio::time::sleep(ABANDON_CHECK).await;
            match api.get_opt(&name).await {
                Ok(Some(a))
                    if a.metadata.uid == actor.metadata.uid
                        && a.metadata.deletion_timestamp.is_none()
                        && a.status
                            .as_ref()
                            .and_then(|s| s.worker.as_ref())
                            .is_some_and(|w| w.name == worker) => {}
                Ok(_) => return,
                Err(_) => {}
            }
        }
    }

    /// A resume finished (or abandoned) after the actor stopped `Resuming` here: suspended
    /// meanwhile (the next pass checkpoints it); deleted (its sandbox is stopped now); or
    /// unbound (failed by the operator's resume deadline): then its sandbox is killed and the
    /// worker freed if it still names the actor, instead of waiting for the stray-sandbox and
    /// orphan rules.
    async fn resume_overtaken(&self, actor: &Actor, worker: &str) -> Result<(), AgentError> {
        let ns = actor.metadata.namespace.clone().unwrap_or_default();
        let name = actor.metadata.name.clone().unwrap_or_default();
        let uid = actor.metadata.uid.clone().unwrap_or_default();
        let cur = self.actor_api(&ns).get_opt(&name).await?;
        let still_here = cur.as_ref().is_some_and(|a| {
            a.metadata.uid.as_deref() == Some(uid.as_str())
                && a.status
                    .as_ref()
                    .and_then(|s| s.worker.as_ref())
                    .is_some_and(|w| w.name == worker)
        });
        if still_here {
            return match cur.filter(|a| a.metadata.deletion_timestamp.is_some()) {
                Some(deleted) => self.stop_deleted(&deleted, worker).await,
                None => Ok(()),
            };
        }
        let key = Self::actor_key(actor)?;
        self.executor(worker)
            .await?
            .kill(&key, &format!("overtaken-{uid}"))
            .await
            .map_err(|source| AgentError::Executor {
                worker: worker.into(),
                source,
            })?;
        self.free_worker(worker, &uid).await?;
        tracing::info!(actor = %key, worker, "resume overtaken: the actor left this worker; sandbox killed, worker freed");
        Ok(())
    }

    /// Fetch, restore (or cold boot), wait for readiness. Returns the worker address.
    /// Returns the worker address and the image the process runs (pinned by digest).
    async fn try_resume(
        &self,
        actor: &Actor,
        worker: &str,
    ) -> Result<(String, String), AgentError> {
        let key = Self::actor_key(actor)?;
        let uid = actor.metadata.uid.clone().unwrap_or_default();
        let started = std::time::Instant::now();
        let template = self.template(actor).await?;
        self.check_template_shared(actor, &template).await?;
        let mut prepared = started.elapsed();
        let mut fetched = Duration::ZERO;
        let own = actor.status.as_ref().and_then(|s| s.snapshot.as_ref());
        // Without a snapshot of its own, a new actor resumes from its template's golden one
        // (when it was taken for the template as it is now); a golden actor boots.
        let golden = own.is_none();
        let template_golden = (actor.metadata.namespace.as_deref() != Some(crds::GOLDEN_ATESPACE))
            .then(|| template.current_golden())
            .flatten();
        let snapshot = own.or(template_golden).and_then(from_crd_snapshot);
        let mut exec = self.executor(worker).await?;
        let exec_err = |source| AgentError::Executor {
            worker: worker.into(),
            source,
        };
        // Where the snapshot is unpacked for the executor: per actor and manifest digest.
        let restore = snapshot.as_ref().map(|r| {
            let digest = r.manifest_digest.trim_start_matches("sha256:").to_string();
            let dir = self
                .cfg
                .state_dir
                .join("restore")
                .join(format!("{uid}-{}", &digest[..digest.len().min(16)]));
            (r, digest, dir)
        });
        // The image the snapshot was taken with (recorded in its metadata) is the one it
        // restores onto.
        let mut recorded_image = None;
        if let Some((_, _, dir)) = &restore
            && dir.join(".complete").exists()
        {
            recorded_image = read_recorded_image(dir, &template);
        } else if let Some((r, _, dir)) = &restore {
            let t = std::time::Instant::now();
            let _ = std::fs::remove_dir_all(dir);
            let outcome = self.snapshots.fetch(r, dir).await?;
            if golden {
                // The golden actor's checkpoint marker names the golden actor; this
                // restore deliberately starts another actor from it.
                let marker = dir.join(executor::worker::CHECKPOINT_MARKER);
                if marker.exists() {
                    std::fs::remove_file(&marker).map_err(io_err(&marker))?;
                }
            }
            let meta_file = dir.join(RESTORE_META);
            let json = serde_json::to_vec(&outcome.meta)
                .map_err(|e| AgentError::Invalid(format!("snapshot metadata: {e}")))?;
            std::fs::write(&meta_file, json).map_err(io_err(&meta_file))?;
            std::fs::write(dir.join(".complete"), b"").map_err(io_err(dir))?;
            tracing::info!(actor = %key, source = ?outcome.source, bytes = outcome.bytes, "snapshot fetched");
            fetched = t.elapsed();
            recorded_image = recorded_image_of(&outcome.meta, &template);
        }
        let t = std::time::Instant::now();
        let (spec, image) = self
            .actor_spec(actor, &template, recorded_image.as_deref())
            .await?;
        prepared += t.elapsed();
        self.remember_image(&uid, &image);
        let t = std::time::Instant::now();
        let mut cleared = false;
        let (how, op) = loop {
            let result = match &restore {
                Some((_, digest, dir)) => exec
                    .restore(&key, &format!("restore-{uid}-{digest}"), &spec, dir)
                    .await
                    .map(|op| (if golden { "golden" } else { "restore" }, op)),
                None => exec
                    .run(&key, &format!("run-{uid}"), &spec)
                    .await
                    .map(|op| ("cold", op)),
            };
            match result {
                Ok(done) => break done,
                Err(e)
                    if !cleared
                        && e.kind() == Some(executor::worker::ErrorKind::Busy)
                        && self.clear_stray_for(worker, &key).await =>
                {
                    cleared = true;
                }
                Err(e) => return Err(exec_err(e)),
            }
        };
        let executed = t.elapsed();
        let runsc = op.timing.map(|t| t.runsc_seconds).unwrap_or_default();
        // The operation's answer carries the worker's status (a separate Status call would
        // ask runsc again: ~30 ms).
        let status = match op.status {
            Some(s) => s,
            None => exec.status().await.map_err(exec_err)?,
        };
        let address = status.network.map(|n| n.worker_ip).unwrap_or_default();
        let t = std::time::Instant::now();
        self.wait_ready(&template, &address).await?;
        let ready = t.elapsed();
        let ms = |d: Duration| d.as_secs_f64() * 1e3;
        tracing::info!(
            actor = %key, worker, how, %image,
            prepare_ms = ms(prepared), fetch_ms = ms(fetched), executor_ms = ms(executed),
            runsc_ms = runsc * 1e3, ready_ms = ms(ready), total_ms = ms(started.elapsed()),
            "resume timing"
        );
        Ok((address, image))
    }

    async fn wait_ready(&self, template: &ActorTemplate, address: &str) -> Result<(), AgentError> {
        let probe = template.spec.readiness_probe.clone().unwrap_or_default();
        let initial = Duration::from_secs(probe.initial_delay_seconds.unwrap_or(0).max(0) as u64);
        let Some(get) = probe.http_get else {
            tokio::time::sleep(initial.max(Duration::from_secs(1))).await;
            return Ok(());
        };
        tokio::time::sleep(initial).await;
        let period =
            Duration::from_millis((probe.period_seconds.unwrap_or(1).max(1) as u64) * 1000)
                .min(Duration::from_secs(1));
        let timeout = Duration::from_secs(probe.timeout_seconds.unwrap_or(2).max(1) as u64);
        let budget = Duration::from_secs(60)
            .max(timeout * probe.failure_threshold.unwrap_or(30).max(1) as u32);
        let path = get.path.unwrap_or_else(|| "/".into());
        let deadline = tokio::time::Instant::now() + budget;
        let mut last = String::new();
        // Probe again quickly at first (a restored process is usually ready at once; a
        // cold boot within tens of milliseconds), backing off to the probe's period.
        let mut pause = Duration::from_millis(10);
        while tokio::time::Instant::now() < deadline {
            match tokio::time::timeout(timeout, http_get(address, get.port as u16, &path)).await {
                Ok(Ok(code)) if (200..400).contains(&code) => return Ok(()),
                Ok(Ok(code)) => last = format!("HTTP {code}"),
                Ok(Err(e)) => last = e.to_string(),
                Err(_) => last = "timed out".into(),
            }
            tokio::time::sleep(pause.min(period)).await;
            pause *= 2;
        }
        Err(AgentError::NotReady(format!(
            "GET http://{address}:{}{path} did not succeed within {budget:?}: {last}",
            get.port
        )))
    }

    async fn suspend(&self, actor: &Actor, worker: &str) -> Result<(), AgentError> {
        let key = Self::actor_key(actor)?;
        let ns = actor.metadata.namespace.clone().unwrap_or_default();
        let name = actor.metadata.name.clone().unwrap_or_default();
        let uid = actor.metadata.uid.clone().unwrap_or_default();
        let started = std::time::Instant::now();
        let mut runsc_s = 0.0;
        let mut exec = self.executor(worker).await?;
        let exec_err = |source| AgentError::Executor {
            worker: worker.into(),
            source,
        };
        let status = exec.status().await.map_err(exec_err)?;
        // A restarted executor that has not adopted its sandbox yet says nothing of it.
        if proto::Phase::try_from(status.phase) == Ok(proto::Phase::Recovering) {
            return Err(AgentError::Recovering {
                worker: worker.into(),
            });
        }
        let key_s = key.to_string();
        // Where the checkpoint is (or goes): a finished one from before a crash is reused.
        let dir = match status
            .last_checkpoint
            .as_ref()
            .filter(|c| c.actor == key_s && status.actor != key_s)
        {
            Some(done) if Path::new(&done.image_dir).exists() => PathBuf::from(&done.image_dir),
            _ if status.actor == key_s => {
                // The id records the actor's uid: GC tells this actor's snapshots from those
                // of a deleted actor of the same name.
                let id = crate::snapshots::owner_id(&uid, jiff::Timestamp::now());
                let dir = self.cfg.state_dir.join("checkpoints").join(&uid).join(&id);
                std::fs::create_dir_all(&dir).map_err(io_err(&dir))?;
                match exec
                    .checkpoint(&key, &format!("checkpoint-{uid}-{id}"), &dir)
                    .await
                {
                    Ok(done) => {
                        runsc_s = done.timing.map(|t| t.runsc_seconds).unwrap_or_default();
                        dir
                    }
                    Err(e) if e.kind().is_none() && e.sandbox_lost().is_none() => {
                        // The executor went away mid-checkpoint: the next attempt adopts
                        // the sandbox or reuses a checkpoint that finished.
                        let _ = std::fs::remove_dir_all(&dir);
                        return Err(exec_err(e));
                    }
                    Err(e) => {
                        let msg = format!("checkpoint failed; back to the last good snapshot: {e}");
                        self.release(actor, worker, "Suspended", "CheckpointFailed", &msg, None)
                            .await?;
                        return Err(exec_err(e));
                    }
                }
            }
            _ => {
                // The sandbox is gone: nothing to checkpoint; keep the last good snapshot.
                self.release(actor, worker, "Suspended", "SandboxLost", "the sandbox was gone when the suspend started; resumes from the last good snapshot", None).await?;
                return Ok(());
            }
        };
        let id = dir
            .file_name()
            .and_then(|n| n.to_str())
            .unwrap_or("s0")
            .to_string();
        let template = self.template(actor).await.ok();
        let mut meta = SnapshotMeta::new(status.runsc_version.clone(), self.cfg.platform.clone());
        meta.node = Some(self.cfg.node.clone());
        meta.worker = Some(worker.into());
        meta.template = Some(format!(
            "{}/{}",
            actor
                .spec
                .template
                .namespace
                .clone()
                .unwrap_or_else(|| ns.clone()),
            actor.spec.template.name
        ));
        if let Some(t) = &template
            && let Some(c) = t.spec.containers.first()
        {
            // The image this sandbox was started with, pinned by digest; the template's
            // image (which may have changed since) only when that was not recorded.
            let ran = self
                .recorded_run_image(&uid)
                .unwrap_or_else(|| c.image.clone());
            meta.image_digests.insert(c.name.clone(), ran);
        }
        let skey = SnapshotKey::new(ns.clone(), name.clone(), id)?;
        let checkpointed = started.elapsed();
        let r = match self.snapshots.upload(&skey, &dir, meta).await {
            // An earlier attempt committed this very checkpoint, then failed (its status
            // write: apiserver or Valkey away): finish with the snapshot it uploaded.
            Err(crate::snapshots::SnapshotError::AlreadyCommitted { uri }) => {
                tracing::info!(atespace = %ns, actor = %name, %uri, "snapshot committed by an earlier attempt; reusing it");
                self.snapshots.committed(&skey, &dir).await?
            }
            other => other?,
        };
        tracing::info!(atespace = %ns, actor = %name, uri = %r.uri, bytes = r.size, stored = r.compressed_size, "snapshot uploaded");
        let ms = |d: Duration| d.as_secs_f64() * 1e3;
        tracing::info!(
            actor = %key, worker,
            checkpoint_ms = ms(checkpointed), runsc_ms = runsc_s * 1e3,
            upload_ms = ms(started.elapsed() - checkpointed), bytes = r.size, stored = r.compressed_size,
            "suspend timing"
        );
        self.release(
            actor,
            worker,
            "Suspended",
            "Suspended",
            &format!("suspended to {}", r.uri),
            Some(&r),
        )
        .await?;
        let _ = std::fs::remove_dir_all(&dir);
        // The snapshot records the image now; the next resume records it again.
        let _ = std::fs::remove_file(self.run_image_file(&uid));
        // Keep the new snapshot and the one before it (a resume racing this suspend may
        // still be reading it); older ones and abandoned uploads go.
        match self
            .snapshots
            .retain_latest(&ns, &name, SNAPSHOTS_KEPT)
            .await
        {
            Ok(report) => tracing::debug!(atespace = %ns, actor = %name, ?report, "snapshot GC"),
            Err(e) => {
                tracing::warn!(atespace = %ns, actor = %name, error = %e, "snapshot GC failed")
            }
        }
        Ok(())
    }

    /// A deleted actor (its `deletionTimestamp` set; the
    /// [`SANDBOX`](crds::finalizers::SANDBOX) finalizer holds it) bound here: its sandbox is
    /// killed (no checkpoint: nothing of it is kept), the actor unbound and the worker freed,
    /// so the operator can remove the finalizer and the worker takes another actor at once.
    async fn stop_deleted(&self, actor: &Actor, worker: &str) -> Result<(), AgentError> {
        let key = Self::actor_key(actor)?;
        let uid = actor.metadata.uid.clone().unwrap_or_default();
        let started = std::time::Instant::now();
        let mut exec = self.executor(worker).await?;
        exec.kill(&key, &format!("delete-{uid}"))
            .await
            .map_err(|source| AgentError::Executor {
                worker: worker.into(),
                source,
            })?;
        let _ = std::fs::remove_file(self.run_image_file(&uid));
        self.release(
            actor,
            worker,
            "Suspended",
            crds::conditions::reasons::DELETED,
            "the actor was deleted: its sandbox was stopped and its worker freed",
            None,
        )
        .await?;
        tracing::info!(actor = %key, worker, ms = started.elapsed().as_secs_f64() * 1e3, "deleted actor's sandbox stopped; worker freed");
        Ok(())
    }

    /// A `Running` actor whose sandbox is gone goes back to `Suspended` (last good snapshot).
    async fn check_running(&self, actor: &Actor, worker: &str) -> Result<(), AgentError> {
        let key = Self::actor_key(actor)?.to_string();
        let mut exec = self.executor(worker).await?;
        let status = exec.status().await.map_err(|source| AgentError::Executor {
            worker: worker.into(),
            source,
        })?;
        // A restarted executor that has not adopted its sandbox yet says nothing of it: a
        // dead executor is not a dead sandbox (declaring it lost freed the worker while the
        // sandbox still served, and the actor came back on it with a rollback announced).
        if proto::Phase::try_from(status.phase) == Ok(proto::Phase::Recovering) {
            return Err(AgentError::Recovering {
                worker: worker.into(),
            });
        }
        let running = status.actor == key
            && matches!(
                proto::Phase::try_from(status.phase),
                Ok(proto::Phase::Running | proto::Phase::Checkpointing)
            );
        if !running {
            let fenced = status.fenced.as_ref().filter(|f| f.actor == key);
            let (reason, message) = match fenced {
                Some(f) => {
                    tracing::warn!(actor = %key, worker, silent_s = f.silent_seconds, "sandbox fenced while the node agent was away; actor back to its last good snapshot");
                    (
                        "SandboxFenced",
                        format!(
                            "the executor stopped the sandbox after {:.0}s without its node agent (the fence); resumes from the last good snapshot",
                            f.silent_seconds
                        ),
                    )
                }
                None => {
                    tracing::warn!(actor = %key, worker, phase = status.phase, "sandbox gone; actor back to its last good snapshot");
                    (
                        "SandboxLost",
                        "the sandbox stopped; resumes from the last good snapshot".to_string(),
                    )
                }
            };
            self.release(actor, worker, "Suspended", reason, &message, None)
                .await?;
        }
        Ok(())
    }

    /// Unbinds `actor` from `worker` with the given phase and reason (and a new snapshot),
    /// then frees the worker.
    async fn release(
        &self,
        actor: &Actor,
        worker: &str,
        phase: &str,
        reason: &str,
        message: &str,
        snapshot: Option<&SnapshotRef>,
    ) -> Result<(), AgentError> {
        let ns = actor.metadata.namespace.clone().unwrap_or_default();
        let name = actor.metadata.name.clone().unwrap_or_default();
        let uid = actor.metadata.uid.clone().unwrap_or_default();
        self.set_actor_status(&ns, &name, &uid, |st, generation| {
            if st["worker"]["name"] != worker {
                return false;
            }
            st["phase"] = json!(phase);
            if let Some(m) = st.as_object_mut() {
                m.remove("worker");
            }
            if let Some(r) = snapshot {
                st["snapshot"] = to_crd_snapshot(r);
            }
            let conds = st["conditions"].as_array().cloned().unwrap_or_default();
            // The binding (Scheduled=True) ends here; a resume requested while the actor
            // was suspending (Scheduled=False, waiting) stays, so the scheduler binds it
            // again now that it is suspended.
            let conds: Vec<Value> = conds
                .into_iter()
                .filter(|c| !(c["type"] == "Scheduled" && c["status"] == "True"))
                .collect();
            // kstatus: the transition is over; a failed resume is stalled until retried.
            let conds = with_condition(
                &conds,
                condition("Ready", false, reason, message, Some(generation)),
            );
            let conds = with_condition(
                &conds,
                condition("Reconciling", false, reason, message, Some(generation)),
            );
            st["conditions"] = json!(with_condition(
                &conds,
                condition(
                    "Stalled",
                    phase == "Failed",
                    reason,
                    message,
                    Some(generation)
                )
            ));
            true
        })
        .await?;
        self.free_worker(worker, &uid).await
    }

    /// Frees `worker` if it is still bound to the actor with `uid` (compare-and-swap: a
    /// worker released meanwhile by the scheduler's orphan rule, or by the operator, and
    /// bound to another actor is left alone).
    async fn free_worker(&self, worker: &str, uid: &str) -> Result<(), AgentError> {
        let api = self.worker_api();
        for _ in 0..10 {
            let Some(mut w) = api.get_opt(worker).await? else {
                return Ok(());
            };
            let Some(st) = w.status.as_mut() else {
                return Ok(());
            };
            if st.actor.as_ref().and_then(|a| a.uid.as_deref()) != Some(uid) {
                return Ok(());
            }
            st.actor = None;
            st.phase = Some(crds::substrate::WorkerPhase::Free);
            // The scheduler's mark of a binding whose actor no longer points back (set in
            // the instant between the actor's unbinding and this write): the binding is over.
            st.conditions.retain(|c| c.type_ != "Orphaned");
            match api.replace_status(worker, &PostParams::default(), &w).await {
                Ok(_) => return Ok(()),
                Err(kube::Error::Api(e)) if e.code == 409 => continue,
                Err(e) => return Err(e.into()),
            }
        }
        Err(AgentError::Invalid(format!(
            "worker {worker}: status update kept conflicting"
        )))
    }

    /// Read-modify-write of an actor's status with optimistic concurrency (retried on 409).
    /// `f` gets the status as JSON and the generation; returns false to leave it alone.
    async fn set_actor_status(
        &self,
        ns: &str,
        name: &str,
        uid: &str,
        mut f: impl FnMut(&mut Value, i64) -> bool,
    ) -> Result<bool, AgentError> {
        let api = self.actor_api(ns);
        for _ in 0..10 {
            let Some(cur) = api.get_opt(name).await? else {
                return Ok(false);
            };
            if cur.metadata.uid.as_deref() != Some(uid) {
                return Ok(false);
            }
            let mut obj =
                serde_json::to_value(&cur).map_err(|e| AgentError::Invalid(e.to_string()))?;
            if !obj["status"].is_object() {
                obj["status"] = json!({});
            }
            let generation = cur.metadata.generation.unwrap_or(0);
            if !f(&mut obj["status"], generation) {
                return Ok(false);
            }
            let new: Actor =
                serde_json::from_value(obj).map_err(|e| AgentError::Invalid(e.to_string()))?;
            match api.replace_status(name, &PostParams::default(), &new).await {
                Ok(_) => return Ok(true),
                Err(kube::Error::Api(e)) if e.code == 409 => continue,
                Err(e) => return Err(e.into()),
            }
        }
        Err(AgentError::Invalid(format!(
            "actor {ns}/{name}: status update kept conflicting"
        )))
    }
}

/// A minimal HTTP/1.1 GET; returns the status code.
async fn http_get(host: &str, port: u16, path: &str) -> std::io::Result<u16> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut s = tokio::net::TcpStream::connect((host, port)).await?;
    s.write_all(format!("GET {path} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\nUser-Agent: substrate-nodeagent\r\n\r\n").as_bytes())
        .await?;
    let mut buf = [0u8; 64];
    let mut n = 0;
    while n < 12 {
        let m = s.read(&mut buf[n..]).await?;
        if m == 0 {
            break;
        }
        n += m;
    }
    let line = String::from_utf8_lossy(&buf[..n]);
    line.split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .ok_or_else(|| std::io::Error::other(format!("not an HTTP response: {line:?}")))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn image_records_of_actors_no_longer_here_are_stale_after_a_grace() {
        let dir = tempfile::tempdir().unwrap();
        let old = std::time::SystemTime::now() - Duration::from_secs(120);
        for (uid, age) in [
            ("running", Some(old)),
            ("deleted", Some(old)),
            ("fresh", None),
        ] {
            let f = std::fs::File::create(dir.path().join(uid)).unwrap();
            if let Some(t) = age {
                f.set_modified(t).unwrap();
            }
        }
        let known: HashSet<String> = ["running".to_string()].into();
        let stale = stale_image_records(dir.path(), &known, Duration::from_secs(60));
        assert_eq!(stale, vec![dir.path().join("deleted")]);
        assert!(stale_image_records(&dir.path().join("none"), &known, Duration::ZERO).is_empty());
    }

    #[test]
    fn unpacked_snapshots_of_actors_no_longer_here_are_stale_after_a_grace() {
        let dir = tempfile::tempdir().unwrap();
        let old = std::time::SystemTime::now() - Duration::from_secs(120);
        let running = "0b6c7c4e-9d8f-4a57-a3c2-5e7f9d1b2c3a";
        let deleted = "7d1e2f3a-1111-4a57-a3c2-5e7f9d1b2c3a";
        for (name, age) in [
            (format!("{running}-0123456789abcdef"), Some(old)),
            (format!("{deleted}-0123456789abcdef"), Some(old)),
            (format!("{deleted}-fedcba9876543210"), None),
        ] {
            let d = dir.path().join(name);
            std::fs::create_dir(&d).unwrap();
            std::fs::write(d.join("pages.img"), b"memory").unwrap();
            if let Some(t) = age {
                std::fs::File::open(&d).unwrap().set_modified(t).unwrap();
            }
        }
        let known: HashSet<String> = [running.to_string()].into();
        let stale = stale_restore_dirs(dir.path(), &known, Duration::from_secs(60));
        assert_eq!(
            stale,
            vec![dir.path().join(format!("{deleted}-0123456789abcdef"))]
        );
    }

    #[test]
    fn images_are_pinned_by_digest() {
        let d = "sha256:0123";
        assert_eq!(
            pin_image("r.io:5000/a/b:v1", d),
            "r.io:5000/a/b@sha256:0123"
        );
        assert_eq!(pin_image("r.io:5000/a/b", d), "r.io:5000/a/b@sha256:0123");
        assert_eq!(pin_image("r.io/a/b@sha256:ffff", d), "r.io/a/b@sha256:0123");
        assert_eq!(pin_image("b:latest", d), "b@sha256:0123");
    }

    #[test]
    fn a_golden_snapshot_counts_only_for_the_generation_it_was_taken_at() {
        let template = |generation: i64, observed: i64, ready: &str| -> ActorTemplate {
            serde_json::from_value(json!({
                "apiVersion": "ate.dev/v1alpha1", "kind": "ActorTemplate",
                "metadata": {"name": "t", "namespace": "n", "generation": generation},
                "spec": {"containers": [{"name": "main", "image": "r/x:1"}],
                         "workerPoolRef": {"name": "p"}},
                "status": {
                    "snapshot": {"uri": "file:///s/manifest.json"},
                    "conditions": [{"type": "Ready", "status": ready, "reason": "R", "message": "",
                                    "observedGeneration": observed,
                                    "lastTransitionTime": "2026-01-01T00:00:00Z"}]}
            }))
            .unwrap()
        };
        let uri = |t: &ActorTemplate| t.current_golden().map(|s| s.uri.clone());
        assert_eq!(
            uri(&template(2, 2, "True")).as_deref(),
            Some("file:///s/manifest.json")
        );
        assert_eq!(
            uri(&template(3, 2, "True")),
            None,
            "taken for an older template"
        );
        assert_eq!(uri(&template(2, 2, "False")), None, "not ready");
    }

    #[test]
    fn strips_colour_codes() {
        let line = "\x1b[2m2026-12-01T16:59:24Z\x1b[0m \x1b[31mERROR\x1b[0m x: boom";
        assert_eq!(strip_ansi(line), "2026-12-01T16:59:24Z ERROR x: boom");
        assert_eq!(strip_ansi("plain"), "plain");
    }

    #[test]
    fn the_last_error_line_of_an_executor_log() {
        let dir = tempfile::tempdir().unwrap();
        let log = dir.path().join("w.log");
        std::fs::write(
            &log,
            "2026 \x1b[32m INFO\x1b[0m started\n2026 \x1b[31mERROR\x1b[0m substrate_executor: cannot open the worker: no runsc\nError: x\n  2: No such file (os error 2)\n",
        )
        .unwrap();
        assert_eq!(
            last_error_line(&log),
            "substrate_executor: cannot open the worker: no runsc"
        );
        std::fs::write(&log, "nothing here\n").unwrap();
        assert!(last_error_line(&log).starts_with("see "));
    }
}

#[cfg(test)]
mod choose_workers_tests {
    use super::choose_workers;

    fn w(n: &str, bound: bool) -> (String, bool) {
        (format!("n1-p-{n}"), bound)
    }

    #[test]
    fn scale_down_keeps_bound_workers_and_retires_free_ones() {
        // 3 → 1 with worker 2 bound: worker 2 stays (its actor keeps running), 0 and 1 go.
        let (keep, retiring) =
            choose_workers("n1", "p", 1, &[w("0", false), w("1", false), w("2", true)]);
        assert_eq!(keep, vec!["n1-p-2"]);
        assert!(retiring.is_empty());
        // 3 → 1 with two bound: the lower-indexed bound one stays, the other retires when
        // its actor leaves; the free one goes now.
        let (keep, retiring) =
            choose_workers("n1", "p", 1, &[w("0", false), w("1", true), w("2", true)]);
        assert_eq!(keep, vec!["n1-p-1"]);
        assert_eq!(retiring, vec!["n1-p-2"]);
        // To 0: every bound worker retires.
        let (keep, retiring) = choose_workers("n1", "p", 0, &[w("0", true), w("1", false)]);
        assert!(keep.is_empty());
        assert_eq!(retiring, vec!["n1-p-0"]);
    }

    #[test]
    fn scale_up_fills_the_lowest_unused_indexes() {
        assert_eq!(
            choose_workers("n1", "p", 2, &[]).0,
            vec!["n1-p-0", "n1-p-1"]
        );
        let (keep, retiring) = choose_workers("n1", "p", 3, &[w("2", true)]);
        assert_eq!(keep, vec!["n1-p-2", "n1-p-0", "n1-p-1"]);
        assert!(retiring.is_empty());
        // Unchanged replicas keep exactly the existing workers.
        let mine = [w("0", false), w("1", true)];
        assert_eq!(
            choose_workers("n1", "p", 2, &mine).0,
            vec!["n1-p-1", "n1-p-0"]
        );
    }
}
