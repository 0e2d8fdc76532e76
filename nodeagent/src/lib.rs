//! The Substrate node agent: one per node. It runs the node's workers (supervised
//! `substrate-executor` processes), keeps the OCI image cache and the snapshot store, and
//! converges the actors bound to its workers (resume: fetch, restore, readiness; suspend:
//! checkpoint, upload, free the worker). See `agent` for the control loops, `images` for the
//! image cache and image building, `snapshots` for the object-store format, and
//! `supervise` for `substrate-supervise`, the process supervisor of the one-command system,
//! and `gateway` for the worker gateway (how routers on other nodes reach this node's workers).

pub mod agent;
pub mod gateway;
pub mod images;
pub mod snapshots;
pub mod supervise;
