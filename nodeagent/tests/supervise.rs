//! `substrate-supervise`, the real binary over real processes: a child killed with SIGKILL is
//! started again; SIGTERM to the supervisor reaches the child (forwarded, not a kill) and
//! nothing is restarted afterwards; a command that fails at once with `--fail-fast-seconds`
//! ends the supervisor with its status.

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

fn read_pid(path: &Path) -> Option<i32> {
    std::fs::read_to_string(path).ok()?.trim().parse().ok()
}

fn alive(pid: i32) -> bool {
    // A zombie (exited, not yet reaped) counts as gone.
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Ok(stat) => !stat
            .rsplit_once(") ")
            .is_some_and(|(_, rest)| rest.starts_with('Z')),
        Err(_) => false,
    }
}

fn wait_until<T>(what: &str, limit: Duration, mut f: impl FnMut() -> Option<T>) -> T {
    let start = Instant::now();
    loop {
        if let Some(v) = f() {
            return v;
        }
        assert!(start.elapsed() < limit, "timed out after {limit:?}: {what}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn signal(pid: i32, sig: &str) {
    let ok = Command::new("kill")
        .args([sig, &pid.to_string()])
        .status()
        .expect("kill")
        .success();
    assert!(ok, "kill {sig} {pid}");
}

struct Supervisor(Child);

impl Drop for Supervisor {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[test]
fn a_killed_child_is_restarted_and_sigterm_stops_it_for_good() {
    let dir = tempfile::tempdir().unwrap();
    let pidfile = dir.path().join("child.pid");
    let terms = dir.path().join("terms");
    // The child notes a SIGTERM it receives, then exits.
    let script = format!(
        "trap 'echo $$ >> {}; exit 0' TERM; while :; do sleep 0.05; done",
        terms.display()
    );
    let mut sup = Supervisor(
        Command::new(env!("CARGO_BIN_EXE_substrate-supervise"))
            .args(["--name", "test-child", "--child-pidfile"])
            .arg(&pidfile)
            .args(["--", "sh", "-c", &script])
            .stdout(Stdio::null())
            .spawn()
            .expect("supervisor starts"),
    );
    let first = wait_until("the first child's pid", Duration::from_secs(10), || {
        read_pid(&pidfile).filter(|p| alive(*p))
    });

    // A crash: SIGKILL of the child. The supervisor starts another one.
    let killed = Instant::now();
    signal(first, "-KILL");
    let second = wait_until("a restarted child", Duration::from_secs(10), || {
        read_pid(&pidfile).filter(|p| *p != first && alive(*p))
    });
    eprintln!("child restarted {:?} after SIGKILL", killed.elapsed());
    assert!(!alive(first));

    // A stop: SIGTERM to the supervisor reaches the child, which exits; nothing restarts.
    signal(sup.0.id() as i32, "-TERM");
    let status = wait_until("the supervisor exits", Duration::from_secs(10), || {
        sup.0.try_wait().expect("try_wait")
    });
    assert!(status.success(), "{status}");
    assert!(!alive(second), "the child stopped with its supervisor");
    assert_eq!(
        std::fs::read_to_string(&terms).unwrap().trim(),
        second.to_string(),
        "the child got the SIGTERM (forwarded), once"
    );
    assert!(!pidfile.exists(), "the child pidfile is removed at exit");
    std::thread::sleep(Duration::from_secs(1));
    let running = Command::new("pgrep")
        .args(["-f", &terms.display().to_string()])
        .output()
        .expect("pgrep");
    assert!(
        running.stdout.is_empty(),
        "no child was started after the stop: {}",
        String::from_utf8_lossy(&running.stdout)
    );
}

#[test]
fn a_command_that_fails_at_start_is_reported_not_retried() {
    let dir = tempfile::tempdir().unwrap();
    let runs = dir.path().join("runs");
    let script = format!("echo run >> {}; exit 3", runs.display());
    let out = Command::new(env!("CARGO_BIN_EXE_substrate-supervise"))
        .args(["--fail-fast-seconds", "5", "--", "sh", "-c", &script])
        .output()
        .expect("supervisor runs");
    assert_eq!(out.status.code(), Some(3), "{out:?}");
    assert_eq!(std::fs::read_to_string(&runs).unwrap().lines().count(), 1);
}
