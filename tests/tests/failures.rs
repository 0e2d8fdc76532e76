//! Crashes in the middle of a transition, through the whole system (real Valkey, apiserver,
//! registry, node agent, executors, runsc): SIGKILL of the node agent and of an executor in
//! the middle of a suspend and of a resume. After each crash the actor must end in a
//! consistent state — Running, or Suspended at its last good snapshot — with its memory and
//! files as that state says, and no worker may leak.
//!
//! "In the middle" is pinned down by watching the node agent's scratch space: a suspend
//! creates `node/checkpoints/<uid>/<id>/` right before it asks the executor to checkpoint,
//! a resume creates `node/restore/<uid>-<digest>/` right before it fetches the snapshot and
//! asks the executor to restore it.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use e2e::{Options, System, eventually, first_int, http, phase};
use serde_json::{Value, json};

/// Sub-directories of `dir` (none if it does not exist).
fn subdirs(dir: &Path) -> Vec<PathBuf> {
    std::fs::read_dir(dir)
        .map(|d| d.flatten().map(|e| e.path()).collect())
        .unwrap_or_default()
}

/// Waits (polling every 5 ms, at most 30 s) for a new entry under `dir` that is not in
/// `before`; returns how long it took.
fn wait_new_entry(dir: &Path, before: &[PathBuf], recursive: bool) -> Duration {
    let start = Instant::now();
    loop {
        let mut now = subdirs(dir);
        if recursive {
            now = now.iter().flat_map(|d| subdirs(d)).collect();
        }
        if now.iter().any(|p| !before.contains(p)) {
            return start.elapsed();
        }
        assert!(
            start.elapsed() < Duration::from_secs(30),
            "nothing new appeared under {} within 30 s",
            dir.display()
        );
        std::thread::sleep(Duration::from_millis(5));
    }
}

fn checkpoints_dir(sys: &System) -> PathBuf {
    sys.dir().join("node").join("checkpoints")
}

fn restore_dir(sys: &System) -> PathBuf {
    sys.dir().join("node").join("restore")
}

fn all_checkpoints(sys: &System) -> Vec<PathBuf> {
    subdirs(&checkpoints_dir(sys))
        .iter()
        .flat_map(|d| subdirs(d))
        .collect()
}

fn snapshot_uri(a: &Value) -> Option<String> {
    a["status"]["snapshot"]["uri"].as_str().map(str::to_string)
}

/// Waits until the actor settles in Running or Suspended (nothing in flight) and returns it.
fn settled(sys: &System, name: &str) -> Value {
    let a = eventually(
        &format!("actor {name} settles in Running or Suspended"),
        || {
            let a = sys.actor(name);
            assert_ne!(
                phase(&a),
                "Failed",
                "a crash must not fail the actor: {a}\n--- node agent log\n{}",
                sys.log("nodeagent")
            );
            matches!(phase(&a), "Running" | "Suspended").then_some(a)
        },
    );
    eprintln!("settled: {} (snapshot {:?})", phase(&a), snapshot_uri(&a));
    a
}

/// What the test knows about the actor's memory: the counter value in its last snapshot,
/// and the value it has while running.
struct Memory {
    snapshot: Option<String>,
    at_snapshot: u64,
    live: u64,
}

impl Memory {
    /// After a suspend attempt ended in `Suspended`: a new snapshot holds the live value; the
    /// old one (the last good snapshot) holds what it held.
    fn suspended(&mut self, a: &Value) {
        assert_eq!(phase(a), "Suspended", "{a}");
        let uri = snapshot_uri(a);
        if uri != self.snapshot {
            self.snapshot = uri;
            self.at_snapshot = self.live;
        }
        self.live = self.at_snapshot;
    }

    /// Resumes the (Suspended) actor if needed, waits for Running, checks the counter
    /// continues from what the state says, and bumps it.
    fn check_running(&mut self, sys: &System, name: &str) -> String {
        let a = sys.wait_phase(name, "Running");
        let url = System::actor_url(&a);
        let n = first_int(&http("GET", &format!("{url}/"), None).expect("GET /"));
        assert_eq!(
            n,
            self.live + 1,
            "the counter continues from the state the actor is in (snapshot {:?})",
            self.snapshot
        );
        self.live = n;
        assert_eq!(
            http("GET", &format!("{url}/file"), None).as_deref(),
            Some("kept"),
            "the file written before the first suspend"
        );
        url
    }
}

#[test]
fn crashes_mid_transition_leave_actors_consistent_and_workers_free() {
    let Some(mut sys) = System::start(Options::new("e2e-crash", "10.207.0.0/16", 300)) else {
        return;
    };
    sys.create_actor("crash", json!({}));
    sys.action("crash", "resume");
    let a = sys.wait_phase("crash", "Running");
    let url = System::actor_url(&a);
    for i in 1..=3 {
        assert_eq!(
            first_int(&http("GET", &format!("{url}/"), None).unwrap()),
            i
        );
    }
    http("PUT", &format!("{url}/file"), Some("kept")).expect("PUT /file");
    let mut mem = Memory {
        snapshot: None,
        at_snapshot: 0,
        live: 3,
    };

    // 1. The node agent dies in the middle of a suspend (the checkpoint has started).
    let before = all_checkpoints(&sys);
    sys.action("crash", "suspend");
    let t = wait_new_entry(&checkpoints_dir(&sys), &before, true);
    sys.kill9_agent();
    eprintln!("node agent killed {t:?} into a suspend");
    sys.start_agent();
    let a = settled(&sys, "crash");
    if phase(&a) == "Running" {
        // The agent found the sandbox still running: the suspend was not lost, ask again.
        sys.action("crash", "suspend");
    }
    let a = sys.wait_phase("crash", "Suspended");
    mem.suspended(&a);
    assert!(
        mem.snapshot.is_some(),
        "a snapshot exists after the suspend: {a}"
    );
    sys.assert_no_worker_leak(2);

    // 2. The node agent dies in the middle of a resume (the restore has started).
    let before = subdirs(&restore_dir(&sys));
    sys.action("crash", "resume");
    let t = wait_new_entry(&restore_dir(&sys), &before, false);
    sys.kill9_agent();
    eprintln!("node agent killed {t:?} into a resume");
    sys.start_agent();
    let a = settled(&sys, "crash");
    if phase(&a) == "Suspended" {
        mem.suspended(&a);
        sys.action("crash", "resume");
    }
    mem.check_running(&sys, "crash");
    sys.assert_no_worker_leak(1);

    // 3. The executor dies in the middle of a suspend.
    let worker = sys.actor("crash")["status"]["worker"]["name"]
        .as_str()
        .expect("bound")
        .to_string();
    let before = all_checkpoints(&sys);
    sys.action("crash", "suspend");
    wait_new_entry(&checkpoints_dir(&sys), &before, true);
    kill9_executor(&sys, &worker);
    let a = settled(&sys, "crash");
    if phase(&a) == "Running" {
        sys.action("crash", "suspend");
    }
    let a = sys.wait_phase("crash", "Suspended");
    mem.suspended(&a);
    sys.assert_no_worker_leak(2);

    // 4. The executor dies in the middle of a resume.
    let before = subdirs(&restore_dir(&sys));
    let bound = sys.action("crash", "resume");
    let worker = bound["status"]["worker"]["name"]
        .as_str()
        .expect("bound")
        .to_string();
    wait_new_entry(&restore_dir(&sys), &before, false);
    kill9_executor(&sys, &worker);
    let a = settled(&sys, "crash");
    if phase(&a) == "Suspended" {
        mem.suspended(&a);
        sys.action("crash", "resume");
    }
    let url = mem.check_running(&sys, "crash");

    // Finally a clean suspend: everything released, no sandbox left answering.
    sys.action("crash", "suspend");
    let a = sys.wait_phase("crash", "Suspended");
    assert!(a["status"]["worker"].is_null(), "{a}");
    sys.assert_no_worker_leak(2);
    assert!(
        http("GET", &format!("{url}/"), None).is_none(),
        "the sandbox is gone"
    );
    // Every executor is the agent's child again (no orphan left behind by the crashes).
    let mut last = Vec::new();
    let start = Instant::now();
    while start.elapsed() < Duration::from_secs(60) {
        last = sys.executor_pids();
        if last.len() == 2 && last[0].1 != last[1].1 {
            break;
        }
        std::thread::sleep(Duration::from_millis(250));
    }
    assert!(
        last.len() == 2 && last[0].1 != last[1].1,
        "exactly one executor per worker, found {last:?}\n--- node agent log\n{}",
        sys.log("nodeagent")
    );
    // A clean stop of the agent stops every executor, adopted ones included.
    sys.stop_agent();
    let left = sys.executor_pids();
    assert!(
        left.is_empty(),
        "executors left after the agent stopped: {left:?}"
    );
}

/// SIGKILLs the executor process of `worker` (its supervisor, the node agent, restarts it).
fn kill9_executor(sys: &System, worker: &str) {
    let pids = sys.executor_pids();
    let (pid, _) = pids
        .iter()
        .find(|(_, w)| w == worker)
        .unwrap_or_else(|| panic!("no executor process for worker {worker}: {pids:?}"));
    let status = std::process::Command::new("kill")
        .args(["-KILL", &pid.to_string()])
        .status()
        .expect("kill");
    assert!(status.success(), "kill -9 {pid}");
    eprintln!("executor of {worker} (pid {pid}) killed");
}

/// The `Ready` condition of an object: (status, reason, message).
fn ready(obj: &Value) -> (String, String, String) {
    let c = obj["status"]["conditions"]
        .as_array()
        .and_then(|cs| cs.iter().find(|c| c["type"] == "Ready"))
        .cloned()
        .unwrap_or_default();
    let s = |k: &str| c[k].as_str().unwrap_or_default().to_string();
    (s("status"), s("reason"), s("message"))
}

#[test]
fn bad_inputs_fail_clearly_and_release_the_worker() {
    let mut opts = Options::new("e2e-bad", "10.209.0.0/16", 500);
    opts.workers = 1;
    let Some(sys) = System::start(opts) else {
        return;
    };

    // A template whose image does not exist.
    let missing = format!("{}/substrate/does-not-exist:1", sys.registry_host());
    sys.kube.create(&json!({
        "apiVersion": "ate.dev/v1alpha1", "kind": "ActorTemplate",
        "metadata": {"name": "no-image", "namespace": "team-a"},
        "spec": {"containers": [{"name": "c", "image": missing}], "workerPoolRef": {"name": sys.pool}},
    }));
    sys.kube.create(&json!({
        "apiVersion": "substrate.ate.dev/v1alpha1", "kind": "Actor",
        "metadata": {"name": "imageless", "namespace": "team-a"},
        "spec": {"template": {"name": "no-image"}},
    }));
    sys.action("imageless", "resume");
    let a = sys.wait_phase("imageless", "Failed");
    let (status, reason, message) = ready(&a);
    assert_eq!(
        (status.as_str(), reason.as_str()),
        ("False", "ResumeFailed"),
        "{a}"
    );
    assert!(
        message.contains("does-not-exist") && message.contains("not found"),
        "the condition names the image and says it is not found: {message}"
    );
    assert_eq!(e2e::condition(&a, "Stalled"), Some("True"), "{a}");
    assert!(a["status"]["worker"].is_null(), "{a}");
    sys.assert_no_worker_leak(1);

    // A snapshot corrupted in the object store (and not in the node's cache).
    sys.create_actor("corrupt", json!({}));
    sys.action("corrupt", "resume");
    let a = sys.wait_phase("corrupt", "Running");
    http("GET", &format!("{}/", System::actor_url(&a)), None).expect("GET /");
    sys.action("corrupt", "suspend");
    let a = sys.wait_phase("corrupt", "Suspended");
    let manifest = PathBuf::from(
        snapshot_uri(&a)
            .expect("snapshot")
            .trim_start_matches("file://"),
    );
    let victim = subdirs(manifest.parent().unwrap())
        .into_iter()
        .filter(|p| p.extension().is_some_and(|e| e == "zst"))
        .max_by_key(|p| std::fs::metadata(p).map(|m| m.len()).unwrap_or(0))
        .expect("a .zst file in the snapshot");
    // A new file (not the cache's hard-linked inode) with one byte flipped in the middle.
    let mut bytes = std::fs::read(&victim).unwrap();
    let mid = bytes.len() / 2;
    bytes[mid] ^= 0xff;
    std::fs::remove_file(&victim).unwrap();
    std::fs::write(&victim, &bytes).unwrap();
    let _ = std::fs::remove_dir_all(sys.dir().join("node").join("snapshot-cache"));
    sys.action("corrupt", "resume");
    let a = sys.wait_phase("corrupt", "Failed");
    let (status, reason, message) = ready(&a);
    assert_eq!(
        (status.as_str(), reason.as_str()),
        ("False", "ResumeFailed"),
        "{a}"
    );
    assert!(
        message.contains("snapshot"),
        "the condition says the snapshot is bad: {message}"
    );
    assert_eq!(
        snapshot_uri(&a).as_deref(),
        Some(
            manifest
                .to_str()
                .map(|m| format!("file://{m}"))
                .unwrap()
                .as_str()
        ),
        "the snapshot reference is kept (nothing is lost)"
    );
    sys.assert_no_worker_leak(1);
}

#[test]
fn a_missing_runsc_marks_the_workers_not_ready_with_the_reason() {
    let mut opts = Options::new("e2e-norunsc", "10.210.0.0/16", 600);
    opts.workers = 1;
    opts.wait_workers = false;
    opts.executor_args = vec!["--runsc-path=/nonexistent/runsc".into()];
    let Some(sys) = System::start(opts) else {
        return;
    };
    let w = eventually("the worker is registered Unhealthy with a reason", || {
        let w = sys.workers().into_iter().next()?;
        (phase(&w) == "Unhealthy" && ready(&w).0 == "False").then_some(w)
    });
    let (_, reason, message) = ready(&w);
    assert_eq!(reason, "ExecutorUnavailable", "{w}");
    assert!(
        message.contains("/nonexistent/runsc"),
        "the condition names the missing runsc: {message}"
    );
    // An actor asking for a worker waits with a clear condition instead of landing there.
    sys.create_actor("waits", json!({}));
    let a = sys.action("waits", "resume");
    assert!(a["status"]["worker"].is_null(), "{a}");
    assert_eq!(e2e::condition(&a, "Scheduled"), Some("False"), "{a}");
    // Failed starts leave nothing on the host (no network namespace per attempt).
    let netns = std::process::Command::new("ip")
        .args(["netns", "list"])
        .output()
        .expect("ip netns list");
    let netns = String::from_utf8_lossy(&netns.stdout);
    assert!(
        !netns.contains("substrate-e2e-norunsc"),
        "a failed executor start left its network namespace: {netns}"
    );
}

/// The last `Ready` reason of an actor.
fn ready_reason(a: &Value) -> String {
    ready(a).1
}

/// A node agent crash is a blip (issue 12): the agent runs under `substrate-supervise`, as
/// in `hack/up.sh`; SIGKILL of the agent leaves its executor and sandbox serving, the
/// supervisor restarts the agent, which adopts the executor, keeps the sandbox (its actor is
/// still bound here) and heartbeats on, so neither the fence nor the operator's dead-worker
/// rule ever fires: the actor stays Running with its memory. (Before: nothing restarted the
/// agent, the operator released the actor after 30 s and the restarted agent killed the
/// healthy sandbox; the counter went back to its last snapshot.)
#[test]
fn a_node_agent_crash_is_a_blip_the_actor_keeps_running_with_its_memory() {
    let mut opts = Options::new("e2e-agentcrash", "10.217.0.0/16", 1200);
    opts.workers = 1;
    opts.supervised_agent = true;
    let Some(mut sys) = System::start(opts) else {
        return;
    };
    sys.create_actor("steady", json!({}));
    sys.action("steady", "resume");
    let a = sys.wait_phase("steady", "Running");
    // The operator's dead-worker rule is the one that used to release the actor.
    sys.start_operator();
    let url = System::actor_url(&a);
    for i in 1..=4 {
        assert_eq!(
            first_int(&http("GET", &format!("{url}/"), None).unwrap()),
            i
        );
    }
    let executors = sys.executor_pids();
    assert_eq!(executors.len(), 1, "{executors:?}");

    let killed_at = Instant::now();
    let old = sys.kill9_supervised_agent();
    eprintln!("node agent (pid {old}) killed");
    // The data plane does not need the agent.
    assert_eq!(
        first_int(&http("GET", &format!("{url}/"), None).expect("served while the agent is down")),
        5
    );
    let new = eventually("the supervisor restarts the node agent", || {
        sys.agent_pid().filter(|p| *p != old)
    });
    eprintln!(
        "node agent restarted as pid {new} {:?} after the kill",
        killed_at.elapsed()
    );
    eventually("the restarted agent adopts the executor", || {
        let log = sys.log("nodeagent");
        (log.matches("adopted a running executor").count() >= 1).then_some(())
    });
    // Past the fence (20 s) and the operator's dead-worker time (30 s): nothing may have
    // stopped the sandbox or released the actor.
    let window = Duration::from_secs(35);
    while killed_at.elapsed() < window {
        let a = sys.actor("steady");
        assert_eq!(
            phase(&a),
            "Running",
            "the actor stays Running across the agent crash: {a}\n--- node agent log\n{}\n--- operator log\n{}",
            sys.log("nodeagent"),
            sys.log("operator")
        );
        std::thread::sleep(Duration::from_secs(1));
    }
    assert_eq!(
        first_int(&http("GET", &format!("{url}/"), None).expect("still served")),
        6,
        "the actor's memory went on (its sandbox never stopped)"
    );
    assert_eq!(
        sys.executor_pids(),
        executors,
        "the same executor serves the worker"
    );
    let log = sys.log("nodeagent");
    assert!(
        !log.contains("killed a sandbox") && !log.contains("sandbox gone"),
        "the agent left the sandbox alone:\n{log}"
    );
}

/// The fence: while the node agent is away (SIGKILL, nobody restarts it) the executor stops
/// its sandbox once it has not heard from the agent for its fence time (shortened here to
/// 6 s with `--fence-after-seconds`), and says so in its status. The agent, back, finds the
/// sandbox fenced and puts the actor back at its last good snapshot with
/// `Ready=False/SandboxFenced`; the next resume continues from that snapshot.
#[test]
fn a_sandbox_fences_itself_when_its_agent_is_away_and_the_actor_returns_to_its_snapshot() {
    let mut opts = Options::new("e2e-fence", "10.218.0.0/16", 1300);
    opts.workers = 1;
    opts.executor_args = vec!["--fence-after-seconds=6".into()];
    let Some(mut sys) = System::start(opts) else {
        return;
    };
    sys.create_actor("fenced", json!({}));
    sys.action("fenced", "resume");
    let a = sys.wait_phase("fenced", "Running");
    let url = System::actor_url(&a);
    for i in 1..=2 {
        assert_eq!(
            first_int(&http("GET", &format!("{url}/"), None).unwrap()),
            i
        );
    }
    sys.action("fenced", "suspend");
    let a = sys.wait_phase("fenced", "Suspended");
    let snapshot = snapshot_uri(&a).expect("a snapshot at counter 2");
    sys.action("fenced", "resume");
    let a = sys.wait_phase("fenced", "Running");
    let url = System::actor_url(&a);
    for i in 3..=4 {
        assert_eq!(
            first_int(&http("GET", &format!("{url}/"), None).unwrap()),
            i
        );
    }
    let worker = a["status"]["worker"]["name"]
        .as_str()
        .expect("bound")
        .to_string();

    sys.kill9_agent();
    let killed_at = Instant::now();
    eventually("the sandbox stops serving (fenced)", || {
        http("GET", &format!("{url}/healthz"), None)
            .is_none()
            .then_some(())
    });
    eprintln!(
        "sandbox stopped {:?} after the agent was killed",
        killed_at.elapsed()
    );
    let exec_log = std::fs::read_to_string(
        sys.dir()
            .join("node")
            .join("logs")
            .join(format!("{worker}.log")),
    )
    .unwrap_or_default();
    assert!(
        exec_log.contains("sandbox fenced"),
        "the executor says it fenced the sandbox:\n{exec_log}"
    );
    // Nobody has written the actor meanwhile: it still says Running on the worker.
    assert_eq!(phase(&sys.actor("fenced")), "Running");

    sys.start_agent();
    let a = sys.wait_phase("fenced", "Suspended");
    assert_eq!(
        snapshot_uri(&a).as_deref(),
        Some(snapshot.as_str()),
        "back at its last good snapshot: {a}"
    );
    assert_eq!(ready_reason(&a), "SandboxFenced", "{a}");
    assert!(a["status"]["worker"].is_null(), "{a}");
    sys.assert_no_worker_leak(1);
    sys.action("fenced", "resume");
    let a = sys.wait_phase("fenced", "Running");
    assert_eq!(
        first_int(&http("GET", &format!("{}/", System::actor_url(&a)), None).unwrap()),
        3,
        "the memory of the snapshot (counter 2), plus this request"
    );
}
