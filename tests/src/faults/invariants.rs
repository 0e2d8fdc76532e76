//! What must hold once the system is quiet: every actor settled, its memory intact, no
//! worker or sandbox or snapshot without its actor, the controllers' views current, the logs
//! bounded. Each check fails with a message that says exactly what is wrong.

use std::collections::BTreeSet;
use std::path::Path;
use std::process::Command;
use std::time::Duration;

use serde_json::{Value, json};

use super::world::{HOME, Key, Outcome, World};
use crate::{eventually_within, phase};

/// How long the system gets to settle after the faults end (a resume or suspend retried
/// after an outage, an operator waiting for the previous leader's lease to expire).
pub const SETTLE: Duration = Duration::from_secs(240);

/// How long workers and sandboxes get to match the settled actors (a worker bound to a
/// deleted actor is released after the node agent's orphan grace, ~15-20 s).
pub const WORKER_GRACE: Duration = Duration::from_secs(60);

/// Whether snapshots of deleted actors must be gone from the object store (the operator's
/// snapshot garbage collection, `operator/src/snapshot_gc.rs`). `false` only reports them.
pub const SNAPSHOT_GC_ENFORCED: bool = true;

/// How long snapshot garbage collection gets to remove a deleted actor's snapshots: the
/// operator runs with `--snapshot-gc-grace=20s` ([`super::start_operator`]; an actor deleted
/// while the operator was down is collected only past that age), and sweeps at most every
/// min(grace, 30 s).
pub const SNAPSHOT_GC_GRACE: Duration = Duration::from_secs(90);

/// A component's log may grow by this much plus [`LOG_BYTES_PER_STEP`] per step.
pub const LOG_BYTES_BASE: u64 = 2 << 20;
pub const LOG_BYTES_PER_STEP: u64 = 64 << 10;

fn ready_reason(a: &Value) -> (String, String) {
    let c = a["status"]["conditions"]
        .as_array()
        .and_then(|cs| cs.iter().find(|c| c["type"] == "Ready"))
        .cloned()
        .unwrap_or_default();
    (
        c["reason"].as_str().unwrap_or_default().to_string(),
        c["message"].as_str().unwrap_or_default().to_string(),
    )
}

fn key_of(a: &Value) -> Key {
    (
        a["metadata"]["namespace"]
            .as_str()
            .unwrap_or_default()
            .into(),
        a["metadata"]["name"].as_str().unwrap_or_default().into(),
    )
}

fn short(a: &Value) -> String {
    let (reason, message) = ready_reason(a);
    format!(
        "{}/{} phase={} activation={} worker={} ready={reason}: {message}",
        a["metadata"]["namespace"].as_str().unwrap_or_default(),
        a["metadata"]["name"].as_str().unwrap_or_default(),
        phase(a),
        a["spec"]["activation"].as_str().unwrap_or("OnDemand"),
        a["status"]["worker"]["name"].as_str().unwrap_or("-"),
    )
}

impl World {
    fn list(&self, kind: &str) -> Option<Vec<Value>> {
        let (ok, out, _) = self.sys.kube.run(
            &["get", kind, "-A", "-o", "json", "--request-timeout=10s"],
            None,
        );
        if !ok {
            return None;
        }
        let l: Value = serde_json::from_str(&out).ok()?;
        Some(l["items"].as_array().cloned().unwrap_or_default())
    }

    /// The actors the suite manages (the golden actors are the operator's).
    fn user_actors(&self) -> Option<Vec<Value>> {
        Some(
            self.list("actors")?
                .into_iter()
                .filter(|a| a["metadata"]["namespace"] != "ate-golden")
                .collect(),
        )
    }

    /// Ends every fault and waits until every actor has settled: exactly the actors of the
    /// model exist, each `Running`, `Suspended` or `Failed` with a reason, as its activation
    /// asks (`Suspended` → Suspended, `Always` → Running or Failed), and the atespaces
    /// deleted are gone.
    pub fn quiesce(&mut self, what: &str) -> Vec<Value> {
        self.end_windows(None);
        let started = std::time::Instant::now();
        let actors = loop {
            let problems = self.settle_problems();
            match problems {
                Ok(actors) => break actors,
                Err(p) if started.elapsed() > SETTLE => self.fail(format!(
                    "{what}: the system did not settle within {SETTLE:?} after the faults ended:\n  {p}"
                )),
                Err(_) => std::thread::sleep(Duration::from_millis(500)),
            }
        };
        self.drain();
        self.note(format!(
            "{what}: settled in {:.1}s ({} actors)",
            started.elapsed().as_secs_f64(),
            actors.len()
        ));
        actors
    }

    /// The actors when settled, else what is not.
    fn settle_problems(&self) -> Result<Vec<Value>, String> {
        let actors = self
            .user_actors()
            .ok_or_else(|| "the apiserver does not answer".to_string())?;
        let mut problems = Vec::new();
        let present: BTreeSet<Key> = actors.iter().map(key_of).collect();
        for k in self.models.keys() {
            if !present.contains(k) {
                problems.push(format!("{}/{} is missing", k.0, k.1));
            }
        }
        for a in &actors {
            let k = key_of(a);
            let Some(m) = self.models.get(&k) else {
                problems.push(format!("deleted but still there: {}", short(a)));
                continue;
            };
            if a["metadata"]["uid"] != m.uid.as_str() {
                problems.push(format!("another incarnation: {}", short(a)));
            }
            let activation = a["spec"]["activation"].as_str().unwrap_or("OnDemand");
            let ok = match (phase(a), activation) {
                ("Failed", _) => !ready_reason(a).0.is_empty(),
                ("Suspended", "Always") | ("Running", "Suspended") => false,
                ("Running" | "Suspended", _) => true,
                _ => false,
            };
            if !ok {
                problems.push(format!("not settled: {}", short(a)));
            }
        }
        let spaces = self
            .list("atespaces")
            .ok_or_else(|| "the apiserver does not answer".to_string())?;
        for s in &spaces {
            let n = s["metadata"]["name"].as_str().unwrap_or_default();
            if n.starts_with("fz") && !self.atespaces.iter().any(|a| a == n) {
                problems.push(format!(
                    "atespace {n} deleted but still there ({})",
                    phase(s)
                ));
            }
        }
        if problems.is_empty() {
            Ok(actors)
        } else {
            Err(problems.join("\n  "))
        }
    }

    /// No worker bound to a missing actor (or to one that does not name it back), every
    /// actor's worker exists and is bound to it, and no sandbox runs without a Running
    /// actor bound to its worker.
    ///
    /// A worker may stay bound to a deleted actor for a while (the node agent's orphan
    /// grace), so the check waits up to [`WORKER_GRACE`] for the problems to go.
    pub fn check_workers_and_sandboxes(&self, what: &str) {
        let start = std::time::Instant::now();
        loop {
            let Err(p) = self.worker_problems() else {
                if start.elapsed() > Duration::from_secs(1) {
                    self.note(format!(
                        "{what}: workers and sandboxes consistent after {:.1}s",
                        start.elapsed().as_secs_f64()
                    ));
                }
                return;
            };
            if start.elapsed() > WORKER_GRACE {
                self.fail(format!(
                    "{what}, {WORKER_GRACE:?} after the system settled: {p}"
                ));
            }
            std::thread::sleep(Duration::from_millis(500));
        }
    }

    fn worker_problems(&self) -> Result<(), String> {
        let Some(all) = self.list("actors") else {
            return Err("the apiserver does not answer".into());
        };
        let workers = self.sys.workers();
        let mut problems = Vec::new();
        for w in &workers {
            let wname = w["metadata"]["name"].as_str().unwrap_or_default();
            let bound = &w["status"]["actor"];
            if phase(w) == "Bound" || !bound.is_null() {
                let owner = all.iter().find(|a| {
                    a["metadata"]["namespace"] == bound["namespace"]
                        && a["metadata"]["name"] == bound["name"]
                        && (bound["uid"].is_null() || a["metadata"]["uid"] == bound["uid"])
                });
                match owner {
                    None => problems.push(format!(
                        "worker {wname} ({}) is bound to actor {}/{} (uid {}), which does not exist",
                        phase(w),
                        bound["namespace"].as_str().unwrap_or("?"),
                        bound["name"].as_str().unwrap_or("?"),
                        bound["uid"].as_str().unwrap_or("?")
                    )),
                    Some(a) if a["status"]["worker"]["name"] != wname => problems.push(format!(
                        "worker {wname} is bound to {} which does not name it back",
                        short(a)
                    )),
                    Some(_) => {}
                }
            }
        }
        for a in &all {
            if let Some(wname) = a["status"]["worker"]["name"].as_str() {
                let w = workers.iter().find(|w| w["metadata"]["name"] == wname);
                let back = w.is_some_and(|w| {
                    w["status"]["actor"]["name"] == a["metadata"]["name"]
                        && w["status"]["actor"]["namespace"] == a["metadata"]["namespace"]
                });
                if !back {
                    problems.push(format!(
                        "{} names worker {wname}, which is {}",
                        short(a),
                        w.map(|w| format!("bound to {}", w["status"]["actor"]))
                            .unwrap_or_else(|| "missing".into())
                    ));
                }
            }
        }
        // Sandboxes, as runsc sees them, and as the network does.
        for w in &workers {
            let wname = w["metadata"]["name"].as_str().unwrap_or_default();
            let running =
                running_sandboxes(&self.sys.dir().join("node").join("executors").join(wname));
            let owner = all
                .iter()
                .find(|a| a["status"]["worker"]["name"] == wname && phase(a) == "Running");
            if !running.is_empty() && owner.is_none() {
                problems.push(format!(
                    "worker {wname} ({}) runs sandbox(es) {running:?} but no Running actor is bound to it",
                    phase(w)
                ));
            }
            if let Some(a) = owner
                && running.is_empty()
            {
                problems.push(format!(
                    "{} is Running but runsc runs no sandbox on its worker",
                    short(a)
                ));
            }
            if owner.is_none()
                && let Some(addr) = w["spec"]["address"].as_str()
                && answers(&format!("http://{addr}:8080/healthz"))
            {
                problems.push(format!(
                    "worker {wname} ({}) at {addr} answers HTTP but no Running actor is bound to it",
                    phase(w)
                ));
            }
        }
        if problems.is_empty() {
            return Ok(());
        }
        Err(format!(
            "{} problem(s) with workers and sandboxes:\n  {}\n--- workers\n{}",
            problems.len(),
            problems.join("\n  "),
            serde_json::to_string_pretty(&workers).unwrap_or_default()
        ))
    }

    /// Every settled actor answers through the router with its memory intact. Running
    /// actors first; then each is suspended (unless `Always`) so that the suspended ones
    /// find a free worker when they are woken in turn (and suspended again).
    pub fn check_memories(&mut self, actors: &[Value]) {
        let mut order: Vec<&Value> = actors.iter().filter(|a| phase(a) == "Running").collect();
        order.extend(actors.iter().filter(|a| phase(a) != "Running"));
        for a in order {
            let k = key_of(a);
            if !self.models.contains_key(&k) {
                continue;
            }
            let mut activation = self.activation.get(&k).cloned().unwrap_or_default();
            if activation == "Suspended" {
                // Kept suspended by its policy: its memory must be intact all the same.
                let patch = json!({"spec": {"activation": "OnDemand"}}).to_string();
                self.sys.kube.ok(
                    &[
                        "patch",
                        "actor",
                        &k.1,
                        "-n",
                        &k.0,
                        "--type=merge",
                        "-p",
                        &patch,
                    ],
                    None,
                );
                self.activation.insert(k.clone(), "OnDemand".into());
                activation = "OnDemand".into();
            }
            self.request_until_answered(&k);
            if activation == "OnDemand" {
                self.action(&k, "suspend");
                self.wait_phase(&k, "Suspended");
            }
        }
    }

    /// Requests `k` through the router until it answers (a free worker may be short for a
    /// moment) and checks the answer.
    fn request_until_answered(&mut self, k: &Key) {
        let start = std::time::Instant::now();
        let mut last = None;
        loop {
            match self.request_raw(k, "/") {
                Outcome::Answered(n) => {
                    self.note(format!("request {}/{}: answered {n}", k.0, k.1));
                    self.check_answer(k, n);
                    return;
                }
                Outcome::Lost(why) => {
                    self.note(format!("request {}/{}: lost ({why})", k.0, k.1));
                    if let Some(m) = self.models.get_mut(k) {
                        m.maybe_served();
                    }
                }
                other => last = Some(other),
            }
            if start.elapsed() > Duration::from_secs(120) {
                self.fail(format!(
                    "the settled actor {}/{} did not answer through the router within 120s: last {last:?}",
                    k.0, k.1
                ));
            }
            std::thread::sleep(Duration::from_millis(500));
        }
    }

    pub fn wait_phase(&self, k: &Key, want: &str) -> Value {
        eventually_within(
            Duration::from_secs(120),
            &format!("{}/{} {want}", k.0, k.1),
            || {
                let a = self.get_actor(&k.0, &k.1).flatten()?;
                (phase(&a) == want).then_some(a)
            },
        )
    }

    /// Snapshots in the object store: every actor's snapshot is there (enforced), and no
    /// snapshot of an actor that no longer exists stays past the grace (reported; enforced
    /// with [`SNAPSHOT_GC_ENFORCED`]).
    pub fn check_snapshots(&self) {
        let store = self.sys.dir().join("snapshots");
        let all = self.list("actors").expect("actors");
        let mut missing = Vec::new();
        for a in &all {
            if let Some(uri) = a["status"]["snapshot"]["uri"].as_str() {
                let path = uri.trim_start_matches("file://");
                if !Path::new(path).exists() {
                    missing.push(format!("{} -> {uri}", short(a)));
                }
            }
        }
        if !missing.is_empty() {
            self.fail(format!(
                "SNAPSHOT LOST: {} actor(s) refer to a snapshot that is not in the object store:\n  {}",
                missing.len(),
                missing.join("\n  ")
            ));
        }
        let orphans = |all: &[Value]| -> Vec<String> {
            let live: BTreeSet<Key> = all.iter().map(key_of).collect();
            let mut out = Vec::new();
            for ns in subdirs(&store) {
                for actor in subdirs(&ns) {
                    let k = (file_name(&ns), file_name(&actor));
                    if live.contains(&k) {
                        continue;
                    }
                    for snap in subdirs(&actor) {
                        if snap.join("manifest.json").exists() {
                            out.push(snap.display().to_string());
                        }
                    }
                }
            }
            out
        };
        let mut left = orphans(&all);
        let start = std::time::Instant::now();
        // Not enforced: report at once (the grace would only cost time).
        let grace = if SNAPSHOT_GC_ENFORCED {
            SNAPSHOT_GC_GRACE
        } else {
            Duration::ZERO
        };
        while !left.is_empty() && start.elapsed() < grace {
            std::thread::sleep(Duration::from_secs(1));
            left = orphans(&self.list("actors").unwrap_or_else(|| all.clone()));
        }
        if left.is_empty() {
            self.note("snapshots: none without its actor".into());
        } else if SNAPSHOT_GC_ENFORCED {
            self.fail(format!(
                "SNAPSHOT LEAK: {} snapshot(s) of deleted actors are still in the object store {:?} after it:\n  {}",
                left.len(),
                SNAPSHOT_GC_GRACE,
                left.join("\n  ")
            ));
        } else {
            self.note(format!(
                "NOT ENFORCED (SNAPSHOT_GC_ENFORCED = false): {} snapshot(s) of deleted actors in the object store:\n  {}",
                left.len(),
                left.join("\n  ")
            ));
        }
    }

    /// The controllers' views are current, proven through behaviour (neither the operator
    /// nor the node agent exposes its caches): the operator reacts to a spec change of an
    /// existing actor and to a new incarnation of a deleted name (which must start afresh,
    /// not from the deleted actor's memory), and the router answers 404 for a deleted name.
    pub fn check_views(&mut self) {
        // 1. A deleted name is unknown to the router.
        let gone: Vec<Key> = self
            .deleted
            .iter()
            .filter(|k| !self.models.contains_key(*k))
            .cloned()
            .collect();
        if let Some(k) = gone.first() {
            let k = k.clone();
            eventually_within(
                Duration::from_secs(30),
                &format!(
                    "the router answers 404 for the deleted actor {}/{}",
                    k.0, k.1
                ),
                || matches!(self.request_raw(&k, "/"), Outcome::NotServed(404, _)).then_some(()),
            );
            self.note(format!("router: 404 for the deleted {}/{}", k.0, k.1));
        }
        // 2. A new incarnation of a deleted name (or a new actor), Always: the operator
        //    resumes it, from the golden snapshot.
        let k: Key = gone
            .iter()
            .find(|(ns, _)| ns == HOME || self.atespaces.contains(ns))
            .cloned()
            .unwrap_or_else(|| (HOME.into(), "probe".into()));
        let obj = json!({
            "apiVersion": "substrate.ate.dev/v1alpha1", "kind": "Actor",
            "metadata": {"name": k.1, "namespace": k.0},
            "spec": {"template": {"name": "counter", "namespace": HOME}, "activation": "Always"},
        });
        // One actor running (if there is one that may run), so that the operator has
        // something to suspend.
        let runnable = self
            .activation
            .iter()
            .find(|(_, a)| a.as_str() != "Suspended")
            .map(|(k, _)| k.clone());
        if let Some(r) = &runnable {
            self.request(r);
        }
        // Free a worker for it: every other actor Suspended.
        for other in self.models.keys().cloned().collect::<Vec<_>>() {
            let patch = json!({"spec": {"activation": "Suspended"}}).to_string();
            self.sys.kube.ok(
                &[
                    "patch",
                    "actor",
                    &other.1,
                    "-n",
                    &other.0,
                    "--type=merge",
                    "-p",
                    &patch,
                ],
                None,
            );
            self.activation.insert(other.clone(), "Suspended".into());
        }
        // The operator reacts to each of those spec changes.
        for other in self.models.keys().cloned().collect::<Vec<_>>() {
            self.wait_phase(&other, "Suspended");
        }
        self.note("operator: every actor patched to activation Suspended was suspended".into());
        let out = self
            .sys
            .kube
            .ok(&["create", "-o", "json", "-f", "-"], Some(&obj.to_string()));
        let uid = serde_json::from_str::<Value>(&out).expect("JSON")["metadata"]["uid"]
            .as_str()
            .expect("uid")
            .to_string();
        self.models
            .insert(k.clone(), super::model::ActorModel::new(&k.0, &k.1, &uid));
        self.activation.insert(k.clone(), "Always".into());
        self.wait_phase(&k, "Running");
        match self.request(&k) {
            Outcome::Answered(1) => {}
            other => self.fail(format!(
                "a new actor {}/{} (a deleted actor's name) must start from the golden snapshot and answer 1: {other:?}",
                k.0, k.1
            )),
        }
        self.note(format!(
            "operator: the new Always actor {}/{} runs afresh",
            k.0, k.1
        ));
        self.check_cache_sizes();
    }

    /// The operator's watch caches (`ate_operator_cache_objects{kind}` on its `/metrics`) and
    /// the router's table (`substrate_router_table_objects{kind}`) hold as many objects of
    /// each kind as the apiserver lists, once the system is quiet.
    fn check_cache_sizes(&self) {
        let operator = super::operator_metrics_addr();
        let router = self.router.admin;
        let deadline = std::time::Instant::now() + Duration::from_secs(60);
        loop {
            let mut mismatches = Vec::new();
            let op = metrics_text(operator);
            let rt = metrics_text(router);
            for (kind, list, in_router) in [
                ("actors", "actors", true),
                ("workers", "workers", false),
                ("templates", "actortemplates", true),
                ("pools", "workerpools", false),
            ] {
                let Some(want) = self.list(list).map(|l| l.len() as u64) else {
                    mismatches.push(format!("listing {list} failed"));
                    continue;
                };
                let o = gauge(
                    &op,
                    &format!("ate_operator_cache_objects{{kind=\"{kind}\"}}"),
                );
                if o != Some(want) {
                    mismatches.push(format!("operator {kind}: {o:?}, apiserver: {want}"));
                }
                if in_router {
                    let r = gauge(
                        &rt,
                        &format!("substrate_router_table_objects{{kind=\"{kind}\"}}"),
                    );
                    if r != Some(want) {
                        mismatches.push(format!("router {kind}: {r:?}, apiserver: {want}"));
                    }
                }
            }
            if mismatches.is_empty() {
                self.note(
                    "caches: the operator's and the router's sizes equal the apiserver's lists"
                        .into(),
                );
                return;
            }
            if std::time::Instant::now() > deadline {
                self.fail(format!(
                    "STALE CACHES 60 s after the system settled: {}",
                    mismatches.join("; ")
                ));
            }
            std::thread::sleep(Duration::from_millis(500));
        }
    }

    /// Component logs stay bounded.
    pub fn check_logs(&self, steps: usize) {
        let budget = LOG_BYTES_BASE + LOG_BYTES_PER_STEP * steps as u64;
        let mut files: Vec<std::path::PathBuf> = ["apiserver", "nodeagent", "operator", "router"]
            .iter()
            .map(|n| self.sys.dir().join(format!("{n}.log")))
            .collect();
        files.extend(
            std::fs::read_dir(self.sys.dir().join("node").join("logs"))
                .map(|d| d.flatten().map(|e| e.path()).collect::<Vec<_>>())
                .unwrap_or_default(),
        );
        let mut sizes = Vec::new();
        let mut over = Vec::new();
        for f in files {
            let n = std::fs::metadata(&f).map(|m| m.len()).unwrap_or(0);
            let name = file_name(&f);
            sizes.push(format!("{name} {} KiB", n >> 10));
            if n > budget {
                over.push(format!("{name}: {n} bytes > {budget}"));
            }
        }
        self.note(format!("logs: {}", sizes.join(", ")));
        if !over.is_empty() {
            self.fail(format!(
                "LOGS EXPLODED ({steps} steps, budget {budget} bytes per log):\n  {}",
                over.join("\n  ")
            ));
        }
    }
}

/// Whether something answers HTTP at `url` (1 s to connect and answer).
fn answers(url: &str) -> bool {
    Command::new("curl")
        .args(["-s", "-o", "/dev/null", "--max-time", "1", url])
        .status()
        .is_ok_and(|s| s.success())
}

/// Sandboxes runsc runs under a worker's executor (`<executor state>/runsc`).
pub(crate) fn running_sandboxes(executor_dir: &Path) -> Vec<String> {
    let root = executor_dir.join("runsc");
    if !root.exists() {
        return Vec::new();
    }
    let out = Command::new("runsc")
        .arg("--root")
        .arg(&root)
        .args(["list", "--format=json"])
        .output();
    let Ok(out) = out else {
        return Vec::new();
    };
    let v: Value = serde_json::from_slice(&out.stdout).unwrap_or_default();
    v.as_array()
        .map(|cs| {
            cs.iter()
                .filter(|c| c["status"] == "running" || c["status"] == "paused")
                .map(|c| c["id"].as_str().unwrap_or_default().to_string())
                .collect()
        })
        .unwrap_or_default()
}

fn subdirs(dir: &Path) -> Vec<std::path::PathBuf> {
    std::fs::read_dir(dir)
        .map(|d| {
            d.flatten()
                .map(|e| e.path())
                .filter(|p| p.is_dir())
                .collect()
        })
        .unwrap_or_default()
}

fn file_name(p: &Path) -> String {
    p.file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default()
}

/// The Prometheus text of `http://<addr>/metrics` (empty when it cannot be read).
fn metrics_text(addr: std::net::SocketAddr) -> String {
    std::process::Command::new("curl")
        .args(["-fsS", "--max-time", "5", &format!("http://{addr}/metrics")])
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
        .unwrap_or_default()
}

/// The value of the sample `name` (with its labels) in a Prometheus text.
fn gauge(text: &str, name: &str) -> Option<u64> {
    text.lines()
        .find_map(|l| l.strip_prefix(name)?.trim().parse::<f64>().ok())
        .map(|v| v as u64)
}
