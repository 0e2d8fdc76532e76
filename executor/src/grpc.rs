//! The gRPC service (`substrate.executor.v1.Executor`, see `proto/executor.proto`) over a
//! unix socket, and the one mapping from [`WorkerError`] to `tonic::Status`.
//!
//! | error kind | gRPC code |
//! |---|---|
//! | `invalid_argument` | INVALID_ARGUMENT |
//! | `busy`, `not_running` | FAILED_PRECONDITION |
//! | `image_not_found` | NOT_FOUND |
//! | `checkpoint_failed`, `sandbox_exited` | ABORTED |
//! | `timeout` | DEADLINE_EXCEEDED |
//! | `runtime`, `network`, `internal` | INTERNAL |
//!
//! Every error carries the kind in the `substrate-error-kind` metadata entry; a failed
//! checkpoint also carries `substrate-sandbox-lost: true|false`.
//!
//! Every call except a `Status` probe is contact from the node agent ([`Worker::touch`],
//! recorded when the call arrives): it holds off the sandbox fence.

use std::fs;
use std::io;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use tokio::net::{UnixListener, UnixStream};
use tokio_stream::wrappers::UnixListenerStream;
use tonic::metadata::MetadataValue;
use tonic::{Code, Request, Response, Status};
use tracing::info;

use crate::actor::ActorKey;
use crate::bundle::{ActorSpec, ProcessSpec};
use crate::proto;
use crate::proto::executor_server::{Executor, ExecutorServer};
use crate::worker::{
    CheckpointInfo, ErrorKind, FenceInfo, Network, OpOutcome, Phase, Runtime, Timing, Worker,
    WorkerError, WorkerStatus,
};

/// Metadata key naming the [`ErrorKind`] of a failed call.
pub const ERROR_KIND_KEY: &str = "substrate-error-kind";
/// Metadata key on `checkpoint_failed` errors: whether the sandbox is gone.
pub const SANDBOX_LOST_KEY: &str = "substrate-sandbox-lost";

/// The gRPC code for an error kind.
pub fn code_for(kind: ErrorKind) -> Code {
    match kind {
        ErrorKind::InvalidArgument => Code::InvalidArgument,
        ErrorKind::Busy | ErrorKind::NotRunning => Code::FailedPrecondition,
        ErrorKind::ImageNotFound => Code::NotFound,
        ErrorKind::CheckpointFailed | ErrorKind::SandboxExited => Code::Aborted,
        ErrorKind::Timeout => Code::DeadlineExceeded,
        ErrorKind::Runtime | ErrorKind::Network | ErrorKind::Internal => Code::Internal,
    }
}

/// Maps a worker error to the status the client sees (message: the whole error chain).
pub fn to_status(e: &WorkerError) -> Status {
    let kind = e.kind();
    let mut status = Status::new(code_for(kind), crate::error_chain(e));
    status
        .metadata_mut()
        .insert(ERROR_KIND_KEY, MetadataValue::from_static(kind.as_str()));
    if let Some(lost) = e.sandbox_lost() {
        status.metadata_mut().insert(
            SANDBOX_LOST_KEY,
            MetadataValue::from_static(if lost { "true" } else { "false" }),
        );
    }
    status
}

fn invalid(msg: String) -> Status {
    to_status(&WorkerError::InvalidArgument(msg))
}

fn parse_actor(s: &str) -> Result<ActorKey, Status> {
    s.parse::<ActorKey>().map_err(|e| invalid(e.to_string()))
}

fn parse_dir(field: &str, s: &str) -> Result<PathBuf, Status> {
    if s.is_empty() {
        return Err(invalid(format!("{field} is required")));
    }
    Ok(PathBuf::from(s))
}

/// Converts a wire spec to the domain spec (structure only; [`ActorSpec::validate`] checks
/// the content).
pub fn spec_from_proto(spec: Option<proto::ActorSpec>) -> Result<ActorSpec, Status> {
    let spec = spec.ok_or_else(|| invalid("spec is required".into()))?;
    let process = spec
        .process
        .ok_or_else(|| invalid("spec.process is required".into()))?;
    if spec.rootfs.is_empty() {
        return Err(invalid("spec.rootfs is required".into()));
    }
    Ok(ActorSpec {
        rootfs: PathBuf::from(spec.rootfs),
        process: ProcessSpec {
            args: process.args,
            env: process.env,
            cwd: if process.cwd.is_empty() {
                "/".into()
            } else {
                process.cwd
            },
            uid: process.uid,
            gid: process.gid,
        },
        hostname: (!spec.hostname.is_empty()).then_some(spec.hostname),
    })
}

/// Converts a domain spec to the wire spec.
pub fn spec_to_proto(spec: &ActorSpec) -> proto::ActorSpec {
    proto::ActorSpec {
        rootfs: spec.rootfs.to_string_lossy().into_owned(),
        process: Some(proto::ProcessSpec {
            args: spec.process.args.clone(),
            env: spec.process.env.clone(),
            cwd: spec.process.cwd.clone(),
            uid: spec.process.uid,
            gid: spec.process.gid,
        }),
        hostname: spec.hostname.clone().unwrap_or_default(),
    }
}

fn phase_to_proto(p: Phase) -> proto::Phase {
    match p {
        Phase::Idle => proto::Phase::Idle,
        Phase::Booting => proto::Phase::Booting,
        Phase::Restoring => proto::Phase::Restoring,
        Phase::Running => proto::Phase::Running,
        Phase::Checkpointing => proto::Phase::Checkpointing,
        Phase::Exited => proto::Phase::Exited,
        Phase::Recovering => proto::Phase::Recovering,
    }
}

pub fn checkpoint_to_proto(c: &CheckpointInfo) -> proto::CheckpointInfo {
    proto::CheckpointInfo {
        actor: c.actor.clone(),
        image_dir: c.image_dir.to_string_lossy().into_owned(),
        operation_id: c.operation_id.clone(),
        runsc_version: c.runsc_version.clone(),
        files: c
            .files
            .iter()
            .map(|f| proto::ImageFile {
                name: f.name.clone(),
                size: f.size,
            })
            .collect(),
        total_bytes: c.total_bytes,
        completed_at_unix_ms: c.completed_at_unix_ms,
        runsc_seconds: c.runsc_seconds,
    }
}

pub fn fence_to_proto(f: &FenceInfo) -> proto::FenceInfo {
    proto::FenceInfo {
        actor: f.actor.clone(),
        fenced_at_unix_ms: f.fenced_at_unix_ms,
        silent_seconds: f.silent_seconds,
        operation_id: f.operation_id.clone(),
    }
}

pub fn status_to_proto(s: &WorkerStatus) -> proto::WorkerStatus {
    proto::WorkerStatus {
        worker: s.worker.clone(),
        index: s.index,
        phase: phase_to_proto(s.phase) as i32,
        actor: s.actor.as_ref().map(|a| a.to_string()).unwrap_or_default(),
        operation_id: s.operation_id.clone().unwrap_or_default(),
        sandbox: s.sandbox.as_ref().map(|c| proto::SandboxInfo {
            container_id: c.id.clone(),
            status: c.status.as_str().to_string(),
            pid: c.pid,
        }),
        network: Some(proto::NetworkInfo {
            netns_path: s.network.netns_path.to_string_lossy().into_owned(),
            host_interface: s.network.host_if.clone(),
            host_ip: s.network.host_ip.to_string(),
            worker_ip: s.network.worker_ip.to_string(),
            prefix_len: u32::from(s.network.prefix_len),
        }),
        runsc_version: s.runsc_version.clone(),
        last_checkpoint: s.last_checkpoint.as_ref().map(checkpoint_to_proto),
        fenced: s.fenced.as_ref().map(fence_to_proto),
    }
}

fn timing_to_proto(t: &Timing) -> proto::Timing {
    proto::Timing {
        total_seconds: t.total.as_secs_f64(),
        runsc_seconds: t.runsc.as_secs_f64(),
    }
}

fn op_response(o: &OpOutcome) -> proto::OperationResponse {
    proto::OperationResponse {
        status: Some(status_to_proto(&o.status)),
        already_done: o.already_done,
        timing: Some(timing_to_proto(&o.timing)),
    }
}

/// Runs an operation in a task of its own: when the caller goes away (the node agent
/// crashed, its request was cancelled), tonic drops the handler's future, and an operation
/// dropped half-way would kill `runsc` in the middle of a checkpoint or restore — which
/// kills the sandbox. Detached, the operation finishes and records its outcome, and the
/// caller's retry (same operation id) finds it done.
async fn detached<T, F>(op: F) -> Result<T, Status>
where
    F: std::future::Future<Output = Result<T, Status>> + Send + 'static,
    T: Send + 'static,
{
    tokio::spawn(op)
        .await
        .map_err(|e| Status::internal(format!("executor operation task failed: {e}")))?
}

/// The tonic service over one [`Worker`].
pub struct ExecutorService<R: Runtime, N: Network> {
    worker: Arc<Worker<R, N>>,
}

impl<R: Runtime, N: Network> ExecutorService<R, N> {
    pub fn new(worker: Arc<Worker<R, N>>) -> Self {
        Self { worker }
    }

    pub fn into_server(self) -> ExecutorServer<Self> {
        ExecutorServer::new(self)
    }
}

#[tonic::async_trait]
impl<R: Runtime, N: Network> Executor for ExecutorService<R, N> {
    async fn run(
        &self,
        req: Request<proto::RunRequest>,
    ) -> Result<Response<proto::OperationResponse>, Status> {
        self.worker.touch();
        let r = req.into_inner();
        let actor = parse_actor(&r.actor)?;
        let spec = spec_from_proto(r.spec)?;
        let worker = self.worker.clone();
        let out = detached(async move {
            worker
                .run(&actor, &r.operation_id, &spec)
                .await
                .map_err(|e| to_status(&e))
        })
        .await?;
        Ok(Response::new(op_response(&out)))
    }

    async fn restore(
        &self,
        req: Request<proto::RestoreRequest>,
    ) -> Result<Response<proto::OperationResponse>, Status> {
        self.worker.touch();
        let r = req.into_inner();
        let actor = parse_actor(&r.actor)?;
        let spec = spec_from_proto(r.spec)?;
        let dir = parse_dir("image_dir", &r.image_dir)?;
        let worker = self.worker.clone();
        let out = detached(async move {
            worker
                .restore(&actor, &r.operation_id, &spec, &dir)
                .await
                .map_err(|e| to_status(&e))
        })
        .await?;
        Ok(Response::new(op_response(&out)))
    }

    async fn checkpoint(
        &self,
        req: Request<proto::CheckpointRequest>,
    ) -> Result<Response<proto::CheckpointResponse>, Status> {
        self.worker.touch();
        let r = req.into_inner();
        let actor = parse_actor(&r.actor)?;
        let dir = parse_dir("image_dir", &r.image_dir)?;
        let worker = self.worker.clone();
        let out = detached(async move {
            worker
                .checkpoint(&actor, &r.operation_id, &dir)
                .await
                .map_err(|e| to_status(&e))
        })
        .await?;
        Ok(Response::new(proto::CheckpointResponse {
            status: Some(status_to_proto(&out.status)),
            already_done: out.already_done,
            timing: Some(timing_to_proto(&out.timing)),
            checkpoint: Some(checkpoint_to_proto(&out.checkpoint)),
        }))
    }

    async fn kill(
        &self,
        req: Request<proto::KillRequest>,
    ) -> Result<Response<proto::OperationResponse>, Status> {
        self.worker.touch();
        let r = req.into_inner();
        let actor = parse_actor(&r.actor)?;
        let worker = self.worker.clone();
        let out = detached(async move {
            worker
                .kill(&actor, &r.operation_id)
                .await
                .map_err(|e| to_status(&e))
        })
        .await?;
        Ok(Response::new(op_response(&out)))
    }

    async fn status(
        &self,
        req: Request<proto::StatusRequest>,
    ) -> Result<Response<proto::WorkerStatus>, Status> {
        if !req.get_ref().probe {
            self.worker.touch();
        }
        let s = self.worker.status().await.map_err(|e| to_status(&e))?;
        Ok(Response::new(status_to_proto(&s)))
    }
}

/// Why serving stopped.
#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    #[error("socket {path}: cannot {op}")]
    Socket {
        op: &'static str,
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("another executor is already serving on {path}")]
    AlreadyServing { path: PathBuf },
    #[error("gRPC server failed")]
    Transport(#[from] tonic::transport::Error),
}

/// Binds `socket` (removing a stale socket file; refusing if another process serves on it),
/// with mode 0660.
pub async fn bind(socket: &Path) -> Result<UnixListener, ServeError> {
    let serr = |op: &'static str| {
        let path = socket.to_path_buf();
        move |source| ServeError::Socket { op, path, source }
    };
    if let Some(parent) = socket.parent() {
        fs::create_dir_all(parent).map_err(serr("create the directory of"))?;
    }
    if socket.exists() {
        if UnixStream::connect(socket).await.is_ok() {
            return Err(ServeError::AlreadyServing {
                path: socket.to_path_buf(),
            });
        }
        fs::remove_file(socket).map_err(serr("remove stale"))?;
    }
    let listener = UnixListener::bind(socket).map_err(serr("bind"))?;
    fs::set_permissions(socket, fs::Permissions::from_mode(0o660)).map_err(serr("chmod"))?;
    Ok(listener)
}

/// Serves the worker on `listener` until `shutdown` resolves, then removes the socket.
pub async fn serve<R: Runtime, N: Network>(
    worker: Arc<Worker<R, N>>,
    listener: UnixListener,
    shutdown: impl std::future::Future<Output = ()> + Send,
) -> Result<(), ServeError> {
    let path = listener
        .local_addr()
        .ok()
        .and_then(|a| a.as_pathname().map(Path::to_path_buf));
    info!(socket = ?path, worker = %worker.config().name, "serving executor gRPC");
    let result = tonic::transport::Server::builder()
        .add_service(ExecutorService::new(worker).into_server())
        .serve_with_incoming_shutdown(UnixListenerStream::new(listener), shutdown)
        .await;
    if let Some(p) = path {
        let _ = fs::remove_file(p);
    }
    result.map_err(Into::into)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::runsc::RunscError;

    #[test]
    fn every_error_kind_has_its_code_and_metadata() {
        let cases: Vec<(WorkerError, Code, &str)> = vec![
            (
                WorkerError::InvalidArgument("x".into()),
                Code::InvalidArgument,
                "invalid_argument",
            ),
            (
                WorkerError::Busy {
                    worker: "w".into(),
                    phase: Phase::Running,
                    current: "a/b".into(),
                    requested: "a/c".into(),
                    op: "run",
                },
                Code::FailedPrecondition,
                "busy",
            ),
            (
                WorkerError::NotRunning {
                    actor: "a/b".into(),
                    worker: "w".into(),
                    image_dir: "/i".into(),
                    detail: None,
                },
                Code::FailedPrecondition,
                "not_running",
            ),
            (
                WorkerError::ImageNotFound {
                    path: "/i".into(),
                    detail: "x".into(),
                },
                Code::NotFound,
                "image_not_found",
            ),
            (
                WorkerError::SandboxExited {
                    actor: "a/b".into(),
                    detail: None,
                },
                Code::Aborted,
                "sandbox_exited",
            ),
            (
                WorkerError::Runtime(RunscError::Timeout {
                    command: "runsc run".into(),
                    timeout: std::time::Duration::from_secs(1),
                }),
                Code::DeadlineExceeded,
                "timeout",
            ),
            (
                WorkerError::Runtime(RunscError::InvalidId { id: "x/y".into() }),
                Code::Internal,
                "runtime",
            ),
        ];
        for (err, code, kind) in cases {
            let st = to_status(&err);
            assert_eq!(st.code(), code, "{err}");
            assert_eq!(st.metadata().get(ERROR_KIND_KEY).unwrap(), kind);
            assert_eq!(st.message(), crate::error_chain(&err));
            assert!(st.metadata().get(SANDBOX_LOST_KEY).is_none());
        }
        for lost in [true, false] {
            let err = WorkerError::CheckpointFailed {
                actor: "a/b".into(),
                sandbox_lost: lost,
                detail: "boom".into(),
            };
            let st = to_status(&err);
            assert_eq!(st.code(), Code::Aborted);
            assert_eq!(
                st.metadata().get(ERROR_KIND_KEY).unwrap(),
                "checkpoint_failed"
            );
            assert_eq!(
                st.metadata().get(SANDBOX_LOST_KEY).unwrap(),
                if lost { "true" } else { "false" }
            );
        }
    }

    #[test]
    fn wire_specs_convert_with_defaults_and_clear_errors() {
        let spec = spec_from_proto(Some(proto::ActorSpec {
            rootfs: "/r".into(),
            process: Some(proto::ProcessSpec {
                args: vec!["/bin/sh".into()],
                ..Default::default()
            }),
            hostname: String::new(),
        }))
        .unwrap();
        assert_eq!(spec.process.cwd, "/");
        assert_eq!(spec.hostname, None);
        assert_eq!(spec_from_proto(Some(spec_to_proto(&spec))).unwrap(), spec);
        let err = spec_from_proto(None).unwrap_err();
        assert_eq!(err.code(), Code::InvalidArgument);
        assert!(err.message().contains("spec is required"));
        let err = spec_from_proto(Some(proto::ActorSpec {
            rootfs: "/r".into(),
            process: None,
            hostname: String::new(),
        }))
        .unwrap_err();
        assert!(err.message().contains("spec.process"));
        assert!(parse_actor("no-slash").is_err());
        assert!(
            parse_dir("image_dir", "")
                .unwrap_err()
                .message()
                .contains("image_dir is required")
        );
    }
}
