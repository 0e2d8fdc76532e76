//! A typed client for the executor's gRPC API over its unix socket.
//!
//! ```no_run
//! # async fn demo() -> Result<(), executor::client::ClientError> {
//! use executor::client::ExecutorClient;
//! let mut c = ExecutorClient::connect("/var/lib/substrate/executor/w1/executor.sock").await?;
//! let st = c.status().await?;
//! println!("{} is {:?}", st.worker, st.phase());
//! # Ok(()) }
//! ```

use std::path::{Path, PathBuf};
use std::time::Duration;

use hyper_util::rt::TokioIo;
use tokio::net::UnixStream;
use tonic::transport::{Channel, Endpoint, Uri};

use crate::actor::ActorKey;
use crate::bundle::ActorSpec;
use crate::grpc::{ERROR_KIND_KEY, SANDBOX_LOST_KEY, spec_to_proto};
use crate::proto;
use crate::proto::executor_client::ExecutorClient as RawClient;
use crate::worker::ErrorKind;

/// A failed client call.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("cannot connect to the executor at {path}")]
    Connect {
        path: PathBuf,
        #[source]
        source: tonic::transport::Error,
    },
    #[error("executor {op} failed ({code:?}{}): {message}", .kind.map(|k| format!(", {}", k.as_str())).unwrap_or_default())]
    Rpc {
        op: &'static str,
        code: tonic::Code,
        kind: Option<ErrorKind>,
        sandbox_lost: Option<bool>,
        message: String,
    },
}

impl ClientError {
    fn from_status(op: &'static str, s: tonic::Status) -> Self {
        let meta = |k: &str| {
            s.metadata()
                .get(k)
                .and_then(|v| v.to_str().ok())
                .map(str::to_string)
        };
        ClientError::Rpc {
            op,
            code: s.code(),
            kind: meta(ERROR_KIND_KEY).and_then(|k| ErrorKind::parse(&k)),
            sandbox_lost: meta(SANDBOX_LOST_KEY).map(|v| v == "true"),
            message: s.message().to_string(),
        }
    }

    /// The executor's error kind (None for transport errors).
    pub fn kind(&self) -> Option<ErrorKind> {
        match self {
            ClientError::Rpc { kind, .. } => *kind,
            ClientError::Connect { .. } => None,
        }
    }

    pub fn code(&self) -> tonic::Code {
        match self {
            ClientError::Rpc { code, .. } => *code,
            ClientError::Connect { .. } => tonic::Code::Unavailable,
        }
    }

    /// For a failed checkpoint: whether the sandbox is gone (the worker is then free and
    /// the actor must be resumed from its last good snapshot).
    pub fn sandbox_lost(&self) -> Option<bool> {
        match self {
            ClientError::Rpc { sandbox_lost, .. } => *sandbox_lost,
            ClientError::Connect { .. } => None,
        }
    }
}

/// The executor client (cheap to clone; one HTTP/2 connection).
#[derive(Debug, Clone)]
pub struct ExecutorClient {
    inner: RawClient<Channel>,
    socket: PathBuf,
}

impl ExecutorClient {
    /// Connects to the executor serving on `socket` (fails fast when nobody listens).
    pub async fn connect(socket: impl AsRef<Path>) -> Result<Self, ClientError> {
        let socket = socket.as_ref().to_path_buf();
        let path = socket.clone();
        // The URI is ignored: the connector always dials the unix socket.
        let channel = Endpoint::from_static("http://executor.invalid")
            .connect_timeout(Duration::from_secs(5))
            .connect_with_connector(tower::service_fn(move |_: Uri| {
                let path = path.clone();
                async move { UnixStream::connect(path).await.map(TokioIo::new) }
            }))
            .await
            .map_err(|source| ClientError::Connect {
                path: socket.clone(),
                source,
            })?;
        Ok(Self {
            inner: RawClient::new(channel),
            socket,
        })
    }

    pub fn socket(&self) -> &Path {
        &self.socket
    }

    /// The generated client, for requests the typed methods do not cover.
    pub fn raw(&mut self) -> &mut RawClient<Channel> {
        &mut self.inner
    }

    pub async fn run(
        &mut self,
        actor: &ActorKey,
        operation_id: &str,
        spec: &ActorSpec,
    ) -> Result<proto::OperationResponse, ClientError> {
        self.inner
            .run(proto::RunRequest {
                actor: actor.to_string(),
                operation_id: operation_id.to_string(),
                spec: Some(spec_to_proto(spec)),
            })
            .await
            .map(tonic::Response::into_inner)
            .map_err(|s| ClientError::from_status("run", s))
    }

    pub async fn restore(
        &mut self,
        actor: &ActorKey,
        operation_id: &str,
        spec: &ActorSpec,
        image_dir: &Path,
    ) -> Result<proto::OperationResponse, ClientError> {
        self.inner
            .restore(proto::RestoreRequest {
                actor: actor.to_string(),
                operation_id: operation_id.to_string(),
                spec: Some(spec_to_proto(spec)),
                image_dir: image_dir.to_string_lossy().into_owned(),
            })
            .await
            .map(tonic::Response::into_inner)
            .map_err(|s| ClientError::from_status("restore", s))
    }

    pub async fn checkpoint(
        &mut self,
        actor: &ActorKey,
        operation_id: &str,
        image_dir: &Path,
    ) -> Result<proto::CheckpointResponse, ClientError> {
        self.inner
            .checkpoint(proto::CheckpointRequest {
                actor: actor.to_string(),
                operation_id: operation_id.to_string(),
                image_dir: image_dir.to_string_lossy().into_owned(),
            })
            .await
            .map(tonic::Response::into_inner)
            .map_err(|s| ClientError::from_status("checkpoint", s))
    }

    pub async fn kill(
        &mut self,
        actor: &ActorKey,
        operation_id: &str,
    ) -> Result<proto::OperationResponse, ClientError> {
        self.inner
            .kill(proto::KillRequest {
                actor: actor.to_string(),
                operation_id: operation_id.to_string(),
            })
            .await
            .map(tonic::Response::into_inner)
            .map_err(|s| ClientError::from_status("kill", s))
    }

    /// The worker's status; the call is contact from the node agent (it holds off the
    /// sandbox fence: a ping).
    pub async fn status(&mut self) -> Result<proto::WorkerStatus, ClientError> {
        self.status_request(false).await
    }

    /// The worker's status without counting as contact (does not hold off the fence).
    pub async fn probe(&mut self) -> Result<proto::WorkerStatus, ClientError> {
        self.status_request(true).await
    }

    async fn status_request(&mut self, probe: bool) -> Result<proto::WorkerStatus, ClientError> {
        self.inner
            .status(proto::StatusRequest { probe })
            .await
            .map(tonic::Response::into_inner)
            .map_err(|s| ClientError::from_status("status", s))
    }
}
