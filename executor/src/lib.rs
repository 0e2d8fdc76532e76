//! The Substrate executor: one per worker (one warm gVisor sandbox slot). It boots,
//! checkpoints and restores actors with `runsc`, owns the worker's network namespace and
//! veth pair, and serves a small idempotent gRPC API over a unix socket to the node agent.
//!
//! | module | concept |
//! |---|---|
//! | [`actor`] | actor keys (`<atespace>/<name>`) and container ids |
//! | [`runsc`] | typed async wrapper over the runsc CLI (+ the environment workarounds) |
//! | [`net`] | per-worker netns + veth, address range, unreachable route (rtnetlink) |
//! | [`bundle`] | the OCI bundle (`config.json`) of an actor's sandbox |
//! | [`worker`] | the per-worker state machine: idempotency, persistence, crash recovery |
//! | [`grpc`] | the tonic service and the error → `tonic::Status` mapping |
//! | [`client`] | typed client: `ExecutorClient::connect(socket)` |
//! | [`daemon`] | the `substrate-executor` process (setup, recovery, serve, shutdown) |
//! | [`reaper`] | child-subreaper for orphaned sandbox processes (fast `runsc delete`) |
//! | [`fake`] | test doubles for runsc and the network |
//!
//! The wire contract is `proto/executor.proto` (package `substrate.executor.v1`), compiled
//! by `build.rs` into [`proto`].

pub mod actor;
pub mod bundle;
pub mod client;
pub mod daemon;
pub mod fake;
pub mod grpc;
pub mod net;
pub mod reaper;
pub mod runsc;
pub mod worker;

/// Generated protobuf and gRPC code for `substrate.executor.v1`.
#[allow(clippy::all, missing_docs)]
pub mod proto {
    tonic::include_proto!("substrate.executor.v1");
}

/// An error and its sources, joined with ": " (errors keep their source out of their own
/// message, so the chain is the full story).
pub fn error_chain(e: &dyn std::error::Error) -> String {
    let mut out = e.to_string();
    let mut cur = e.source();
    while let Some(s) = cur {
        let msg = s.to_string();
        if !out.ends_with(&msg) {
            out.push_str(": ");
            out.push_str(&msg);
        }
        cur = s.source();
    }
    out
}

pub use actor::ActorKey;
pub use bundle::{ActorSpec, ProcessSpec};
pub use client::{ClientError, ExecutorClient};
pub use worker::{ErrorKind, Phase, Worker, WorkerError};
