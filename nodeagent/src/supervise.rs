//! `substrate-supervise`: keeps one long-running component alive on a machine without an
//! init system that supervises (the one-command system of `hack/up.sh`; PID 1 is not
//! systemd there).
//!
//! It starts the command, restarts it whenever it exits (after a backoff: `min_backoff`,
//! doubled after each run shorter than `stable_after`, at most `max_backoff`; a run that
//! lasted `stable_after` starts over at `min_backoff`), and on SIGTERM, SIGINT or SIGHUP
//! forwards the signal to the child, waits for it to exit (SIGKILL after `stop_timeout`,
//! when set) and exits without restarting it. So the supervisor's pid is the one to stop,
//! and a crash of the component (`kill -9`) is a blip: a node agent restarted at once
//! adopts its executors and their sandboxes before they fence themselves.
//!
//! A command whose *first* run ends within `fail_fast` is not restarted: the supervisor
//! exits with its status, so a start-up error (a port in use, a bad flag) is reported to
//! whoever started it instead of being retried forever.

use std::path::PathBuf;
use std::process::ExitStatus;
use std::time::{Duration, Instant};

use tokio::process::{Child, Command};
use tokio::signal::unix::{SignalKind, signal};

/// What to supervise, and how.
#[derive(Debug, Clone)]
pub struct SuperviseConfig {
    /// Name used in the supervisor's log lines.
    pub name: String,
    /// The command and its arguments.
    pub command: Vec<String>,
    /// Where to write the current child's pid (removed at exit).
    pub child_pidfile: Option<PathBuf>,
    pub min_backoff: Duration,
    pub max_backoff: Duration,
    /// A run at least this long resets the backoff.
    pub stable_after: Duration,
    /// A first run shorter than this ends the supervisor (zero: always restart).
    pub fail_fast: Duration,
    /// After forwarding a stop signal, SIGKILL the child after this long (None: wait).
    pub stop_timeout: Option<Duration>,
}

impl SuperviseConfig {
    pub fn new(name: impl Into<String>, command: Vec<String>) -> Self {
        SuperviseConfig {
            name: name.into(),
            command,
            child_pidfile: None,
            min_backoff: Duration::from_millis(500),
            max_backoff: Duration::from_secs(30),
            stable_after: Duration::from_secs(10),
            fail_fast: Duration::ZERO,
            stop_timeout: None,
        }
    }
}

/// Why supervision ended with an error.
#[derive(Debug, thiserror::Error)]
pub enum SuperviseError {
    #[error("no command to supervise")]
    NoCommand,
    #[error("cannot install the {signal} handler")]
    Signal {
        signal: &'static str,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot start {command}")]
    Spawn {
        command: String,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot wait for {command}")]
    Wait {
        command: String,
        #[source]
        source: std::io::Error,
    },
    #[error("{command} exited during start-up ({status}); not restarting it")]
    FailedAtStart { command: String, status: ExitStatus },
}

/// How supervision ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// Stopped by a signal; the child exited with this status.
    Stopped(Option<ExitStatus>),
}

struct Signals {
    term: tokio::signal::unix::Signal,
    int: tokio::signal::unix::Signal,
    hup: tokio::signal::unix::Signal,
}

impl Signals {
    fn install() -> Result<Self, SuperviseError> {
        let install = |kind: SignalKind, name: &'static str| {
            signal(kind).map_err(|source| SuperviseError::Signal {
                signal: name,
                source,
            })
        };
        Ok(Signals {
            term: install(SignalKind::terminate(), "SIGTERM")?,
            int: install(SignalKind::interrupt(), "SIGINT")?,
            hup: install(SignalKind::hangup(), "SIGHUP")?,
        })
    }

    /// The next stop signal.
    async fn recv(&mut self) -> nix::sys::signal::Signal {
        use nix::sys::signal::Signal;
        tokio::select! {
            _ = self.term.recv() => Signal::SIGTERM,
            _ = self.int.recv() => Signal::SIGINT,
            _ = self.hup.recv() => Signal::SIGHUP,
        }
    }
}

/// Supervises `cfg.command` until a stop signal arrives (see the module docs).
pub async fn run(cfg: SuperviseConfig) -> Result<Outcome, SuperviseError> {
    let Some((program, args)) = cfg.command.split_first() else {
        return Err(SuperviseError::NoCommand);
    };
    let command = cfg.command.join(" ");
    let mut signals = Signals::install()?;
    let mut backoff = cfg.min_backoff;
    let mut first = true;
    loop {
        let started = Instant::now();
        let mut child = Command::new(program)
            .args(args)
            .stdin(std::process::Stdio::null())
            .spawn()
            .map_err(|source| SuperviseError::Spawn {
                command: command.clone(),
                source,
            })?;
        let pid = child.id();
        write_pidfile(&cfg, pid);
        tracing::info!(component = %cfg.name, pid, "started");
        let event = tokio::select! {
            status = child.wait() => Ok(status),
            sig = signals.recv() => Err(sig),
        };
        let status = match event {
            Ok(status) => status.map_err(|source| SuperviseError::Wait {
                command: command.clone(),
                source,
            })?,
            Err(sig) => {
                let status = stop(&cfg, &mut child, sig).await;
                remove_pidfile(&cfg);
                return Ok(Outcome::Stopped(status));
            }
        };
        let ran = started.elapsed();
        if first && ran < cfg.fail_fast {
            remove_pidfile(&cfg);
            return Err(SuperviseError::FailedAtStart { command, status });
        }
        first = false;
        if ran >= cfg.stable_after {
            backoff = cfg.min_backoff;
        }
        tracing::warn!(component = %cfg.name, pid, %status, ran_s = ran.as_secs_f64(), restart_in_ms = backoff.as_millis() as u64, "exited; restarting");
        tokio::select! {
            () = tokio::time::sleep(backoff) => {}
            sig = signals.recv() => {
                tracing::info!(component = %cfg.name, signal = %sig, "stop signal while waiting to restart; not restarting");
                remove_pidfile(&cfg);
                return Ok(Outcome::Stopped(Some(status)));
            }
        }
        if ran < cfg.stable_after {
            backoff = (backoff * 2).min(cfg.max_backoff);
        }
    }
}

/// Forwards `sig` to the child and waits for it (SIGKILL after the stop timeout).
async fn stop(
    cfg: &SuperviseConfig,
    child: &mut Child,
    sig: nix::sys::signal::Signal,
) -> Option<ExitStatus> {
    let pid = child.id();
    tracing::info!(component = %cfg.name, pid, signal = %sig, "stop signal; forwarding it, not restarting");
    if let Some(p) = pid.and_then(|p| i32::try_from(p).ok()) {
        let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(p), sig);
    }
    let waited = match cfg.stop_timeout {
        Some(t) => tokio::time::timeout(t, child.wait()).await.ok(),
        None => Some(child.wait().await),
    };
    match waited {
        Some(Ok(status)) => {
            tracing::info!(component = %cfg.name, pid, %status, "stopped");
            Some(status)
        }
        Some(Err(e)) => {
            tracing::warn!(component = %cfg.name, pid, error = %e, "cannot wait for the child");
            None
        }
        None => {
            tracing::warn!(component = %cfg.name, pid, "did not stop in time; killing it");
            let _ = child.kill().await;
            child.wait().await.ok()
        }
    }
}

fn write_pidfile(cfg: &SuperviseConfig, pid: Option<u32>) {
    let (Some(path), Some(pid)) = (&cfg.child_pidfile, pid) else {
        return;
    };
    let tmp = path.with_extension("tmp");
    let written =
        std::fs::write(&tmp, format!("{pid}\n")).and_then(|()| std::fs::rename(&tmp, path));
    if let Err(e) = written {
        tracing::warn!(component = %cfg.name, path = %path.display(), error = %e, "cannot write the child pidfile");
    }
}

fn remove_pidfile(cfg: &SuperviseConfig) {
    if let Some(path) = &cfg.child_pidfile {
        let _ = std::fs::remove_file(path);
    }
}
