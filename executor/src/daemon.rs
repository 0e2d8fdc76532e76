//! The `substrate-executor` process: set up the worker network, open the worker, recover,
//! serve gRPC until shutdown.
//!
//! Start-up order: network setup (idempotent; ensures the unreachable route first) → open
//! the worker (state file, `runsc --version`) → bind the socket → serve, with recovery
//! running concurrently: `Status` answers `RECOVERING` meanwhile and operations wait for
//! it (an operation that was in flight at a crash may take a while to finish). A recovery
//! failure stops the process (its supervisor restarts it).
//!
//! Shutdown (SIGTERM/SIGINT) with the default [`ShutdownPolicy::Leave`] stops serving and
//! leaves the sandbox and the network in place: a restarted executor adopts the running
//! actor (executor upgrades and crashes do not cost the actor its state, and the node agent
//! alone decides when an actor is checkpointed or killed). [`ShutdownPolicy::Kill`] kills
//! the sandbox and removes the worker network (for decommissioning a worker).
//!
//! The fence: a watchdog checks every second (or a quarter of the fence time) whether the
//! node agent has been silent for [`DaemonConfig::fence_after`] (every gRPC call but a
//! status probe is contact) and, if so, stops the sandbox (see `worker` module docs).

use std::future::Future;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use tracing::{info, warn};

use crate::grpc::{self, ServeError};
use crate::net::{self, AddrRange, NetError, NetSpec, WorkerNet};
use crate::runsc::{Runsc, RunscConfig};
use crate::worker::{Worker, WorkerConfig, WorkerError};

/// What to do with the sandbox when the executor is asked to stop.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, clap::ValueEnum)]
pub enum ShutdownPolicy {
    /// Leave the sandbox running and the network in place, for the next executor to adopt.
    #[default]
    Leave,
    /// Kill the sandbox and remove the worker's network namespace and veth.
    Kill,
}

/// Everything the executor process needs.
#[derive(Debug, Clone)]
pub struct DaemonConfig {
    pub worker_name: String,
    pub index: u32,
    pub socket: PathBuf,
    pub state_dir: PathBuf,
    pub range: AddrRange,
    pub runsc: RunscConfig,
    pub on_shutdown: ShutdownPolicy,
    pub recovery_wait: Duration,
    /// Stop the sandbox after this long without contact from the node agent
    /// (default [`crds::liveness::SANDBOX_FENCE_AFTER`]).
    pub fence_after: Duration,
}

/// Why the executor stopped with an error.
#[derive(Debug, thiserror::Error)]
pub enum DaemonError {
    #[error("cannot set up the worker network")]
    Network(#[from] NetError),
    #[error("cannot open the worker")]
    Worker(#[from] WorkerError),
    #[error("runsc does not run")]
    Runsc(#[from] crate::runsc::RunscError),
    #[error("recovery failed")]
    Recovery(#[source] WorkerError),
    #[error(transparent)]
    Serve(#[from] ServeError),
}

/// Runs the executor until `shutdown` resolves.
pub async fn run(
    cfg: DaemonConfig,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), DaemonError> {
    if let Err(e) = crate::reaper::install() {
        warn!(error = %crate::error_chain(&e), "cannot become a child subreaper; deleting sandboxes may be slow");
    }
    // A runsc that does not run fails the start before anything is created on the host
    // (a network namespace and veth would otherwise outlive every failed attempt).
    Runsc::new(cfg.runsc.clone()).version().await?;
    let spec = NetSpec::new(&cfg.worker_name, cfg.index, cfg.range)?;
    let (net, report) = WorkerNet::setup(spec.clone()).await?;
    let info = net.info();
    info!(worker = %cfg.worker_name, index = cfg.index, netns = %info.netns_path.display(), host_ip = %info.host_ip, worker_ip = %info.worker_ip, created_netns = report.created_netns, recreated_veth = report.recreated_veth, "worker network ready");
    let worker = Arc::new(
        Worker::open(
            WorkerConfig {
                name: cfg.worker_name.clone(),
                index: cfg.index,
                state_dir: cfg.state_dir.clone(),
                recovery_wait: cfg.recovery_wait,
                checkpoint_failure_grace: crate::worker::DEFAULT_CHECKPOINT_FAILURE_GRACE,
            },
            Runsc::new(cfg.runsc.clone()),
            net,
        )
        .await?,
    );
    let listener = grpc::bind(&cfg.socket).await?;

    // Recovery runs while serving (Status answers RECOVERING, operations wait for it); a
    // recovery failure stops the server.
    let (fail_tx, fail_rx) = tokio::sync::oneshot::channel::<WorkerError>();
    let recovering = {
        let worker = worker.clone();
        tokio::spawn(async move {
            if let Err(e) = worker.recover(report.recreated_veth).await {
                let _ = fail_tx.send(e);
            }
        })
    };
    let watchdog = {
        let worker = worker.clone();
        let after = cfg.fence_after;
        let period = (after / 4).clamp(Duration::from_millis(100), Duration::from_secs(1));
        tokio::spawn(async move {
            loop {
                tokio::time::sleep(period).await;
                if let Err(e) = worker.fence_if_silent(after).await {
                    warn!(worker = %worker.config().name, error = %crate::error_chain(&e), "fencing the sandbox failed; retrying");
                }
            }
        })
    };
    info!(worker = %cfg.worker_name, fence_after_s = cfg.fence_after.as_secs_f64(), "sandbox fence armed");
    let (why_tx, mut why_rx) = tokio::sync::mpsc::channel::<WorkerError>(1);
    let stop = async move {
        let failed = async move {
            match fail_rx.await {
                Ok(e) => e,
                // Recovery succeeded (the sender was dropped): never stop for this reason.
                Err(_) => std::future::pending().await,
            }
        };
        tokio::select! {
            () = shutdown => {}
            e = failed => {
                let _ = why_tx.send(e).await;
            }
        }
    };
    let served = grpc::serve(worker.clone(), listener, stop).await;
    watchdog.abort();
    served?;
    recovering.abort();
    if let Ok(e) = why_rx.try_recv() {
        return Err(DaemonError::Recovery(e));
    }
    match cfg.on_shutdown {
        ShutdownPolicy::Leave => {
            info!(worker = %cfg.worker_name, "stopped; sandbox and network left for the next executor")
        }
        ShutdownPolicy::Kill => {
            if let Err(e) = worker.kill_current("shutdown").await {
                warn!(worker = %cfg.worker_name, error = %crate::error_chain(&e), "cannot kill the sandbox at shutdown");
            }
            drop(worker);
            remove_worker_cgroups(&cfg.worker_name);
            net::teardown(&spec).await?;
            info!(worker = %cfg.worker_name, "stopped; sandbox killed and network removed");
        }
    }
    Ok(())
}

/// Removes the worker's (empty) cgroup directories, `/substrate/<worker>` in every
/// hierarchy. runsc normally removes them on delete, but can leave an empty one behind when
/// the sandbox died on its own (e.g. after a failed checkpoint); it is reused by the next
/// boot of the same worker, so this only matters when a worker is decommissioned.
fn remove_worker_cgroups(worker: &str) {
    let root = std::path::Path::new("/sys/fs/cgroup");
    let mut candidates = vec![root.join("substrate").join(worker)];
    if let Ok(entries) = std::fs::read_dir(root) {
        candidates.extend(
            entries
                .flatten()
                .map(|e| e.path().join("substrate").join(worker)),
        );
    }
    for dir in candidates {
        // rmdir only succeeds on an empty cgroup; anything else is left alone.
        let _ = std::fs::remove_dir(&dir);
    }
}
