//! Test doubles for the worker's OS boundaries: [`FakeRuntime`] (for runsc) and
//! [`FakeNetwork`] (for the netns/veth). They model the behaviour the state machine relies
//! on — including runsc's "a failed checkpoint kills the sandbox" and "a checkpointed
//! sandbox stops" — so the worker's logic can be tested without root. The real
//! implementations are tested against real runsc and real netlink in `tests/`.

use std::collections::BTreeMap;
use std::fs;
use std::future::{Future, ready};
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use crate::net::{NetError, NetInfo};
use crate::runsc::{BootIo, CheckpointOptions, ContainerState, ContainerStatus, RunscError};
use crate::worker::{Network, Runtime};

#[derive(Default)]
struct State {
    containers: BTreeMap<String, ContainerState>,
    next_pid: i64,
    boots: usize,
    fail_checkpoint: Option<bool>,
}

/// An in-memory runsc.
#[derive(Clone, Default)]
pub struct FakeRuntime {
    inner: Arc<Mutex<State>>,
}

fn failed(command: &str, stderr: &str) -> RunscError {
    RunscError::Failed {
        command: format!("fake-runsc {command}"),
        status: "exit status: 128".into(),
        exit_code: Some(128),
        stderr: stderr.into(),
        debug_log: None,
    }
}

impl FakeRuntime {
    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.inner.lock().expect("fake runtime lock poisoned")
    }

    /// Number of successful run/restore calls.
    pub fn boots(&self) -> usize {
        self.lock().boots
    }

    pub fn list_now(&self) -> Vec<ContainerState> {
        self.lock().containers.values().cloned().collect()
    }

    /// Adds a container as if created outside the worker.
    pub fn insert(&self, id: &str, status: ContainerStatus) {
        let mut s = self.lock();
        s.next_pid += 1;
        let pid = if status.is_live() {
            1000 + s.next_pid
        } else {
            -1
        };
        s.containers.insert(
            id.to_string(),
            ContainerState {
                id: id.to_string(),
                status,
                pid,
                bundle: PathBuf::new(),
            },
        );
    }

    /// Changes a container's status (e.g. the workload exits).
    pub fn set_status(&self, id: &str, status: ContainerStatus) {
        if let Some(c) = self.lock().containers.get_mut(id) {
            if !status.is_live() {
                c.pid = -1;
            }
            c.status = status;
        }
    }

    /// Makes the next checkpoint fail; `kills_sandbox` is what runsc does on a failed save.
    pub fn fail_next_checkpoint(&self, kills_sandbox: bool) {
        self.lock().fail_checkpoint = Some(kills_sandbox);
    }

    fn boot(&self, id: &str, bundle: &Path, image: Option<&Path>) -> Result<(), RunscError> {
        if !bundle.join("config.json").is_file() {
            return Err(failed("run", "cannot read bundle config.json"));
        }
        if let Some(dir) = image
            && !dir.join("checkpoint.img").is_file()
        {
            return Err(failed(
                "restore",
                "checkpoint.img: no such file or directory",
            ));
        }
        let mut s = self.lock();
        if s.containers.contains_key(id) {
            return Err(failed(
                "run",
                &format!("container with id {id} already exists"),
            ));
        }
        s.next_pid += 1;
        let pid = 1000 + s.next_pid;
        s.boots += 1;
        s.containers.insert(
            id.to_string(),
            ContainerState {
                id: id.to_string(),
                status: ContainerStatus::Running,
                pid,
                bundle: bundle.to_path_buf(),
            },
        );
        Ok(())
    }

    fn do_checkpoint(
        &self,
        id: &str,
        image_dir: &Path,
        leave_running: bool,
    ) -> Result<(), RunscError> {
        let ck = |stderr: &str| RunscError::CheckpointFailed {
            command: format!("fake-runsc checkpoint {id}"),
            status: "exit status: 128".into(),
            exit_code: Some(128),
            stderr: stderr.into(),
            debug_log: None,
        };
        let mut s = self.lock();
        let live = s.containers.get(id).is_some_and(|c| c.status.is_live());
        if !live {
            return Err(ck("container is not running"));
        }
        if let Some(kills) = s.fail_checkpoint.take() {
            if kills {
                let c = s.containers.get_mut(id).expect("checked");
                c.status = ContainerStatus::Stopped;
                c.pid = -1;
            }
            return Err(ck("save rejected due to unsupported networking state"));
        }
        fs::write(
            image_dir.join("checkpoint.img"),
            format!("fake image of {id}"),
        )
        .and_then(|()| fs::write(image_dir.join("pages.img"), vec![0u8; 4096]))
        .and_then(|()| fs::write(image_dir.join("pages_meta.img"), b"meta"))
        .map_err(|e| ck(&e.to_string()))?;
        if !leave_running {
            let c = s.containers.get_mut(id).expect("checked");
            c.status = ContainerStatus::Stopped;
            c.pid = -1;
        }
        Ok(())
    }

    fn do_kill(&self, id: &str) -> Result<(), RunscError> {
        let mut s = self.lock();
        let c = s
            .containers
            .get_mut(id)
            .ok_or_else(|| failed("kill", "loading container: file does not exist"))?;
        if !c.status.is_live() {
            return Err(failed("kill", "container is not running"));
        }
        c.status = ContainerStatus::Stopped;
        c.pid = -1;
        Ok(())
    }

    fn do_delete(&self, id: &str, force: bool) -> Result<(), RunscError> {
        let mut s = self.lock();
        let live = match s.containers.get(id) {
            None => return Err(failed("delete", "loading container: file does not exist")),
            Some(c) => c.status.is_live(),
        };
        if live && !force {
            return Err(failed(
                "delete",
                "cannot delete container that is not stopped without --force flag",
            ));
        }
        s.containers.remove(id);
        Ok(())
    }
}

impl Runtime for FakeRuntime {
    fn version(&self) -> impl Future<Output = Result<String, RunscError>> + Send {
        ready(Ok("runsc version fake".to_string()))
    }
    fn run(
        &self,
        id: &str,
        bundle: &Path,
        _rootfs: &Path,
        _io: &BootIo,
    ) -> impl Future<Output = Result<(), RunscError>> + Send {
        ready(self.boot(id, bundle, None))
    }
    fn restore(
        &self,
        id: &str,
        bundle: &Path,
        _rootfs: &Path,
        image_dir: &Path,
        _io: &BootIo,
    ) -> impl Future<Output = Result<(), RunscError>> + Send {
        ready(self.boot(id, bundle, Some(image_dir)))
    }
    fn checkpoint(
        &self,
        id: &str,
        image_dir: &Path,
        opts: &CheckpointOptions,
    ) -> impl Future<Output = Result<(), RunscError>> + Send {
        ready(self.do_checkpoint(id, image_dir, opts.leave_running))
    }
    fn kill(
        &self,
        id: &str,
        _signal: &str,
        _all: bool,
    ) -> impl Future<Output = Result<(), RunscError>> + Send {
        ready(self.do_kill(id))
    }
    fn delete(&self, id: &str, force: bool) -> impl Future<Output = Result<(), RunscError>> + Send {
        ready(self.do_delete(id, force))
    }
    fn list(&self) -> impl Future<Output = Result<Vec<ContainerState>, RunscError>> + Send {
        ready(Ok(self.list_now()))
    }
}

/// A network that is always ready; counts `prepare_for_boot` calls.
#[derive(Clone, Default)]
pub struct FakeNetwork {
    prepared: Arc<AtomicUsize>,
}

impl FakeNetwork {
    pub fn prepared(&self) -> usize {
        self.prepared.load(Ordering::SeqCst)
    }
}

impl Network for FakeNetwork {
    fn prepare_for_boot(&self) -> impl Future<Output = Result<(), NetError>> + Send {
        self.prepared.fetch_add(1, Ordering::SeqCst);
        ready(Ok(()))
    }
    fn info(&self) -> NetInfo {
        NetInfo {
            netns_path: PathBuf::from("/run/netns/substrate-fake"),
            host_if: "sub1h".into(),
            host_ip: Ipv4Addr::new(10, 203, 0, 5),
            worker_ip: Ipv4Addr::new(10, 203, 0, 6),
            prefix_len: 30,
        }
    }
}
