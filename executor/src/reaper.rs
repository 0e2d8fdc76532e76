//! Makes the executor the reaper of the sandbox processes it starts.
//!
//! `runsc run/restore --detach` exits right after starting the sandbox and gofer
//! processes, which are then orphans. Normally PID 1 reaps them when they die, but not
//! promptly everywhere: on the development VMs PID 1 (`process_api`) leaves them as
//! zombies for a second or more, and `runsc delete` waits until the killed sandbox has
//! been reaped — measured at 1.0–1.9 s per delete, on the suspend path. With
//! [`install`], the executor becomes a child subreaper (`PR_SET_CHILD_SUBREAPER`): the
//! orphans are re-parented to it and reaped as soon as they exit (`runsc delete` then takes
//! tens of milliseconds).
//!
//! Only zombies that are *not* children spawned through [`spawn`] are reaped here, so the
//! exit status of commands the executor waits for (runsc invocations via tokio) is never
//! stolen: spawning and registering a child happen under the same lock the reaper holds
//! while scanning. Consequently, a process that installs the reaper must spawn the children
//! it waits for through [`spawn`] (the executor does: all its children are runsc commands).

use std::collections::BTreeSet;
use std::io;
use std::sync::Mutex;
use std::time::Duration;

use nix::sys::wait::{WaitPidFlag, waitpid};
use nix::unistd::Pid;
use tracing::{debug, warn};

/// Pids of children the process waits for itself.
static OWNED: Mutex<BTreeSet<i32>> = Mutex::new(BTreeSet::new());

/// Spawns a child and registers it as "waited for by its owner" atomically with respect
/// to the reaper. Call [`release`] after the child has been waited for.
pub fn spawn(cmd: &mut tokio::process::Command) -> io::Result<tokio::process::Child> {
    let mut owned = OWNED.lock().expect("reaper lock poisoned");
    let child = cmd.spawn()?;
    if let Some(pid) = child.id().and_then(|p| i32::try_from(p).ok()) {
        owned.insert(pid);
    }
    Ok(child)
}

/// Forgets a child registered by [`spawn`].
pub fn release(pid: Option<u32>) {
    if let Some(pid) = pid.and_then(|p| i32::try_from(p).ok()) {
        OWNED.lock().expect("reaper lock poisoned").remove(&pid);
    }
}

/// Becomes a child subreaper and starts reaping orphaned zombies (on SIGCHLD, and once a
/// second as a fallback). Call once, from within a tokio runtime.
pub fn install() -> io::Result<()> {
    nix::sys::prctl::set_child_subreaper(true)
        .map_err(|e| io::Error::from_raw_os_error(e as i32))?;
    let mut sigchld = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::child())?;
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(Duration::from_secs(1));
        loop {
            tokio::select! {
                _ = sigchld.recv() => {}
                _ = tick.tick() => {}
            }
            reap_orphans();
        }
    });
    Ok(())
}

/// Reaps every zombie child of this process that nobody else waits for.
pub fn reap_orphans() {
    let me = std::process::id() as i32;
    let owned = OWNED.lock().expect("reaper lock poisoned");
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return;
    };
    for entry in dir.flatten() {
        let Some(pid) = entry
            .file_name()
            .to_str()
            .and_then(|s| s.parse::<i32>().ok())
        else {
            continue;
        };
        if owned.contains(&pid) {
            continue;
        }
        let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
            continue;
        };
        // "pid (comm) S ppid ..." — comm may contain spaces and parentheses.
        let Some((_, rest)) = stat.rsplit_once(") ") else {
            continue;
        };
        let mut fields = rest.split_whitespace();
        let state = fields.next();
        let ppid = fields.next().and_then(|p| p.parse::<i32>().ok());
        if state == Some("Z") && ppid == Some(me) {
            match waitpid(Pid::from_raw(pid), Some(WaitPidFlag::WNOHANG)) {
                Ok(status) => debug!(pid, ?status, "reaped orphaned sandbox process"),
                // Another reaper (e.g. a second runtime in tests) was faster.
                Err(nix::errno::Errno::ECHILD) => {}
                Err(e) => warn!(pid, error = %e, "cannot reap orphaned process"),
            }
        }
    }
}
