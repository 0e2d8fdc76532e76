//! The driver: a whole system under a seeded sequence of user operations and faults, with
//! the model of every actor's memory kept up to date from the answers and the watch.

use std::cell::RefCell;
use std::collections::BTreeMap;
use std::process::Command;
use std::rc::Rc;
use std::time::{Duration, Instant};

use serde_json::{Value, json};

use super::env::{CacheDisk, StoreOutage};
use super::model::ActorModel;
use super::rng::Rng;
use super::watch::{ActorWatch, Seen};
use crate::{RouterAddrs, System, eventually_within, phase};

/// The zone of the actors' names.
pub const SUFFIX: &str = "actors.resources.substrate.ate.dev";
/// The atespace that holds the template (never deleted).
pub const HOME: &str = "team-a";
/// At most this many actors exist at once.
pub const MAX_ACTORS: usize = 6;
/// At most this many extra atespaces (`fz<n>`) exist at once.
pub const MAX_ATESPACES: usize = 2;
/// The idle timeout of `OnDemand` actors without one of their own, for the operator and the
/// router alike (the default, 5 min, is longer than the settle window: three busy `OnDemand`
/// actors would keep the pool's three workers from the `Always` actor past it).
pub const DEFAULT_IDLE_TIMEOUT_FLAG: &str = "--default-idle-timeout=30s";
/// Router flags of the suite.
pub const ROUTER_FLAGS: [&str; 4] = [
    "--wake-timeout=20s",
    "--activity-interval=1s",
    "--connect-timeout=2s",
    DEFAULT_IDLE_TIMEOUT_FLAG,
];

/// `(atespace, name)`.
pub type Key = (String, String);

/// The steps taken so far (printed with the seed when the suite fails).
pub type History = Rc<RefCell<Vec<String>>>;

/// A kill fault.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kill {
    NodeAgent,
    Operator,
    Router,
    Apiserver,
    Valkey,
    /// An executor process (the node agent restarts it; it adopts its sandbox).
    Executor,
    /// A sandbox (the actor's process, `runsc kill ... KILL`): its memory is lost, and the
    /// actor must come back at its last snapshot with a condition saying so.
    Sandbox,
}

pub const KILLS: [Kill; 7] = [
    Kill::NodeAgent,
    Kill::Operator,
    Kill::Router,
    Kill::Apiserver,
    Kill::Valkey,
    Kill::Executor,
    Kill::Sandbox,
];

/// What a request through the router came to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// 200 with the counter's answer.
    Answered(u64),
    /// An answer that says the request was not forwarded (404, 409, 503, 504...).
    NotServed(u16, String),
    /// Maybe served: a 502, or the connection failed after it was made.
    Lost(String),
}

/// The system, the model and the faults in force.
///
/// Fields drop in order: the watch, the fault windows and the cache disk go before the
/// system (whose directory holds the disk's mount point).
pub struct World {
    pub watch: ActorWatch,
    pub outage: Option<(StoreOutage, usize)>,
    pub cache: CacheDisk,
    pub sys: System,
    pub router: RouterAddrs,
    pub rng: Rng,
    pub models: BTreeMap<Key, ActorModel>,
    pub activation: BTreeMap<Key, String>,
    pub atespaces: Vec<String>,
    /// Names deleted (actors, or all of an atespace's), for reuse and the final probes.
    pub deleted: Vec<Key>,
    pub history: History,
    pub disk_full_until: Option<usize>,
    next_actor: usize,
    next_atespace: usize,
    pub stats: BTreeMap<&'static str, usize>,
    pub started: Instant,
}

impl World {
    pub fn new(sys: System, router: RouterAddrs, seed: u64, history: History) -> Self {
        let (ca, cert, key) = sys.admin_pki();
        let watch = ActorWatch::start(super::watch::Endpoint {
            base: format!("https://{}", sys.apiserver_addr()),
            ca,
            cert,
            key,
        });
        let cache = CacheDisk::mount(&sys.dir().join("node").join("snapshot-cache"));
        World {
            sys,
            router,
            rng: Rng::new(seed),
            watch,
            models: BTreeMap::new(),
            activation: BTreeMap::new(),
            atespaces: Vec::new(),
            deleted: Vec::new(),
            history,
            cache,
            outage: None,
            disk_full_until: None,
            next_actor: 0,
            next_atespace: 0,
            stats: BTreeMap::new(),
            started: Instant::now(),
        }
    }

    /// Records a step (printed on failure) and echoes it.
    pub fn note(&self, what: String) {
        eprintln!("[{:>6.1}s] {what}", self.started.elapsed().as_secs_f64());
        self.history.borrow_mut().push(what);
    }

    fn count(&mut self, what: &'static str) {
        *self.stats.entry(what).or_default() += 1;
    }

    /// Feeds what the watch saw to the models.
    pub fn drain(&mut self) {
        for seen in self.watch.drain() {
            match seen {
                Seen::Version { actor, .. } => {
                    let key = (
                        actor["metadata"]["namespace"]
                            .as_str()
                            .unwrap_or_default()
                            .to_string(),
                        actor["metadata"]["name"]
                            .as_str()
                            .unwrap_or_default()
                            .to_string(),
                    );
                    if let Some(m) = self.models.get_mut(&key) {
                        m.observe(&actor);
                    }
                }
                Seen::Gap => {
                    self.note("the watch lost history (410) and listed again".into());
                    for m in self.models.values_mut() {
                        m.watch_gap();
                    }
                }
            }
        }
        for m in self.models.values_mut() {
            m.end_batch();
        }
    }

    /// Panics with the seed's history and the message.
    pub fn fail(&self, msg: String) -> ! {
        panic!("{msg}");
    }

    // ---- user operations -------------------------------------------------------------

    fn kubectl(&self, args: &[&str], stdin: Option<&str>) -> (bool, String) {
        let mut all = vec!["--request-timeout=15s"];
        all.extend_from_slice(args);
        let (ok, out, err) = self.sys.kube.run(&all, stdin);
        (ok, if ok { out } else { err.trim().to_string() })
    }

    fn live_atespaces(&self) -> Vec<String> {
        let mut v = vec![HOME.to_string()];
        v.extend(self.atespaces.iter().cloned());
        v
    }

    pub fn create_actor(&mut self) {
        let spaces = self.live_atespaces();
        // Sometimes the name of a deleted actor (its atespace still there): a new
        // incarnation must not inherit anything of the old one.
        let reuse: Vec<Key> = self
            .deleted
            .iter()
            .filter(|(ns, n)| {
                spaces.contains(ns) && !self.models.contains_key(&(ns.clone(), n.clone()))
            })
            .cloned()
            .collect();
        let (ns, name) = if !reuse.is_empty() && self.rng.chance(30) {
            self.rng.pick(&reuse).clone()
        } else {
            self.next_actor += 1;
            (
                self.rng.pick(&spaces).clone(),
                format!("a{}", self.next_actor),
            )
        };
        let idle = self.rng.chance(60);
        let mut spec = json!({"template": {"name": "counter", "namespace": HOME}});
        if idle {
            spec["idleTimeout"] = json!("15s");
        }
        let obj = json!({
            "apiVersion": "substrate.ate.dev/v1alpha1", "kind": "Actor",
            "metadata": {"name": name, "namespace": ns},
            "spec": spec,
        });
        let (ok, out) = self.kubectl(&["create", "-o", "json", "-f", "-"], Some(&obj.to_string()));
        let uid = ok
            .then(|| serde_json::from_str::<Value>(&out).ok())
            .flatten()
            .and_then(|a| a["metadata"]["uid"].as_str().map(str::to_string));
        self.note(format!(
            "create actor {ns}/{name}{}: {}",
            if idle { " (idleTimeout 15s)" } else { "" },
            uid.as_deref().unwrap_or(&out)
        ));
        match uid {
            Some(uid) => {
                let key = (ns.clone(), name.clone());
                self.models
                    .insert(key.clone(), ActorModel::new(&ns, &name, &uid));
                self.activation.insert(key, "OnDemand".into());
            }
            None => {
                // The apiserver may have stored it before the connection failed: find out
                // once it answers, so that the model knows every actor that exists.
                self.adopt_unknown_actor(&ns, &name);
            }
        }
    }

    /// After a create whose answer was lost: the actor's uid if it exists.
    fn adopt_unknown_actor(&mut self, ns: &str, name: &str) {
        let got = eventually_within(
            Duration::from_secs(60),
            "the apiserver answers (after a create whose answer was lost)",
            || self.get_actor(ns, name),
        );
        if let Some(a) = got {
            let uid = a["metadata"]["uid"].as_str().unwrap_or_default();
            if !a["metadata"]["deletionTimestamp"].is_null() {
                // An earlier actor of that name on its way out (its finalizer not removed
                // yet) made the create fail: nothing was created.
                self.note(format!(
                    "  ... an earlier actor of that name (uid {uid}) is still being deleted: not created"
                ));
                return;
            }
            self.note(format!("  ... it was created after all: uid {uid}"));
            let key = (ns.to_string(), name.to_string());
            self.models
                .insert(key.clone(), ActorModel::new(ns, name, uid));
            self.activation.insert(key, "OnDemand".into());
        }
    }

    fn pick_actor(&mut self) -> Option<Key> {
        let keys: Vec<Key> = self.models.keys().cloned().collect();
        (!keys.is_empty()).then(|| self.rng.pick(&keys).clone())
    }

    /// A request through the router.
    pub fn request_raw(&self, key: &Key, path: &str) -> Outcome {
        request_via(self.router.http, key, path)
    }

    /// A request to `key` checked against its model.
    pub fn request(&mut self, key: &Key) -> Outcome {
        let outcome = self.request_raw(key, "/");
        self.note(format!("request {}/{}: {outcome:?}", key.0, key.1));
        match &outcome {
            Outcome::Answered(n) => {
                self.count("answers");
                self.check_answer(key, *n);
            }
            Outcome::Lost(_) => {
                self.count("lost answers");
                if let Some(m) = self.models.get_mut(key) {
                    m.maybe_served();
                }
            }
            Outcome::NotServed(code, body) => {
                self.count("requests not served");
                if *code == 500 {
                    self.fail(format!(
                        "the router answered 500 for {}/{}: {body}",
                        key.0, key.1
                    ));
                }
            }
        }
        outcome
    }

    /// Checks an answer against the model, waiting a little for the watch to deliver a
    /// rollback that may explain it.
    pub fn check_answer(&mut self, key: &Key, n: u64) {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            self.drain();
            let Some(m) = self.models.get_mut(key) else {
                return;
            };
            let live = m.live;
            match m.answered(n) {
                Ok(()) => return,
                Err(e) if Instant::now() > deadline => {
                    let a = self
                        .kubectl(&["get", "actor", &key.1, "-n", &key.0, "-o", "json"], None)
                        .1;
                    self.fail(format!(
                        "STATE LOST: actor {}/{} answered counter {} but its memory must continue from {} \
                         (expected {}) and no condition announced a rollback to an older snapshot.\n{}\n\
                         --- the actor now:\n{a}",
                        key.0, key.1, e.answer, live, e.expected, e.detail
                    ))
                }
                Err(_) => std::thread::sleep(Duration::from_millis(250)),
            }
        }
    }

    /// `n` requests to one actor at once (one wake shared by all when it is suspended).
    pub fn burst(&mut self, key: &Key, n: usize) {
        let router = self.router.http;
        let outcomes: Vec<Outcome> = std::thread::scope(|s| {
            let hs: Vec<_> = (0..n)
                .map(|_| s.spawn(|| request_via(router, key, "/")))
                .collect();
            hs.into_iter()
                .map(|h| h.join().expect("request thread"))
                .collect()
        });
        self.note(format!(
            "burst of {n} requests to {}/{}: {outcomes:?}",
            key.0, key.1
        ));
        let answers: Vec<u64> = outcomes
            .iter()
            .filter_map(|o| match o {
                Outcome::Answered(a) => Some(*a),
                _ => None,
            })
            .collect();
        let lost = outcomes
            .iter()
            .filter(|o| matches!(o, Outcome::Lost(_)))
            .count();
        *self.stats.entry("answers").or_default() += answers.len();
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            self.drain();
            let Some(m) = self.models.get_mut(key) else {
                return;
            };
            match m.answered_concurrently(&answers, lost) {
                Ok(()) => return,
                Err(e) if Instant::now() > deadline => self.fail(format!(
                    "STATE LOST: actor {}/{}: {} (expected the smallest in {})",
                    key.0, key.1, e.detail, e.expected
                )),
                Err(_) => std::thread::sleep(Duration::from_millis(250)),
            }
        }
    }

    pub fn action(&mut self, key: &Key, action: &str) {
        let path = format!("{}/{action}", crate::actor_path(&key.0, &key.1));
        let (ok, out) = self.kubectl(&["create", "--raw", &path, "-f", "-"], Some("{}"));
        let said = if ok {
            let a: Value = serde_json::from_str(&out).unwrap_or_default();
            format!("-> {}", phase(&a))
        } else {
            out
        };
        self.note(format!("{action} {}/{}: {said}", key.0, key.1));
    }

    pub fn delete_actor(&mut self, key: &Key) {
        let (ok, out) = self.kubectl(
            &["delete", "actor", &key.1, "-n", &key.0, "--wait=false"],
            None,
        );
        self.note(format!("delete actor {}/{}: {}", key.0, key.1, out.trim()));
        if ok || out.contains("NotFound") {
            self.forget(key);
        } else {
            // The answer was lost: deleted or not, find out.
            self.reconcile_existence(key);
        }
    }

    fn forget(&mut self, key: &Key) {
        self.models.remove(key);
        self.activation.remove(key);
        self.deleted.push(key.clone());
    }

    /// `kubectl get actor` of `ns/name`: `Some(Some(actor))`, `Some(None)` when it does not
    /// exist, `None` when the apiserver did not answer (readably).
    pub fn get_actor(&self, ns: &str, name: &str) -> Option<Option<Value>> {
        let (ok, out, err) = self.sys.kube.run(
            &[
                "get",
                "actor",
                name,
                "-n",
                ns,
                "-o",
                "json",
                "--request-timeout=10s",
            ],
            None,
        );
        if ok {
            return serde_json::from_str(&out).ok().map(Some);
        }
        err.contains("NotFound").then_some(None)
    }

    /// Whether the actor still exists, once the apiserver answers; forgets it if not.
    fn reconcile_existence(&mut self, key: &Key) {
        let exists = eventually_within(
            Duration::from_secs(60),
            "the apiserver answers (after a delete whose answer was lost)",
            || {
                // Being deleted (finalizers) counts as deleted.
                let a = self.get_actor(&key.0, &key.1)?;
                Some(a.is_some_and(|a| a["metadata"]["deletionTimestamp"].is_null()))
            },
        );
        if !exists {
            self.forget(key);
        }
    }

    pub fn set_activation(&mut self, key: &Key) {
        let always_elsewhere = self
            .activation
            .iter()
            .any(|(k, a)| k != key && a == "Always");
        // At most one Always actor: they hold workers forever.
        let choices: &[&str] = if always_elsewhere {
            &["OnDemand", "Suspended"]
        } else {
            &["OnDemand", "Suspended", "Always"]
        };
        let want = *self.rng.pick(choices);
        let patch = json!({"spec": {"activation": want}}).to_string();
        let (ok, out) = self.kubectl(
            &[
                "patch",
                "actor",
                &key.1,
                "-n",
                &key.0,
                "--type=merge",
                "-p",
                &patch,
            ],
            None,
        );
        self.note(format!(
            "activation {}/{} = {want}: {}",
            key.0,
            key.1,
            out.trim()
        ));
        if ok {
            self.activation.insert(key.clone(), want.into());
        } else if !out.contains("NotFound") {
            // Lost answer: read what it is.
            let now = eventually_within(
                Duration::from_secs(60),
                "the apiserver answers (after a patch whose answer was lost)",
                || self.get_actor(&key.0, &key.1).flatten(),
            );
            let a = now["spec"]["activation"].as_str().unwrap_or("OnDemand");
            self.activation.insert(key.clone(), a.into());
        }
    }

    pub fn create_atespace(&mut self) {
        self.next_atespace += 1;
        let name = format!("fz{}", self.next_atespace);
        let obj = json!({"apiVersion": "substrate.ate.dev/v1alpha1", "kind": "Atespace", "metadata": {"name": name}});
        let (ok, out) = self.kubectl(&["create", "-f", "-"], Some(&obj.to_string()));
        self.note(format!("create atespace {name}: {}", out.trim()));
        if ok || out.contains("AlreadyExists") {
            self.atespaces.push(name);
        }
    }

    pub fn delete_atespace(&mut self, name: &str) {
        let (ok, out) = self.kubectl(&["delete", "atespace", name, "--wait=false"], None);
        self.note(format!("delete atespace {name}: {}", out.trim()));
        if ok || out.contains("NotFound") {
            self.atespaces.retain(|a| a != name);
            let gone: Vec<Key> = self
                .models
                .keys()
                .filter(|(ns, _)| ns == name)
                .cloned()
                .collect();
            for k in gone {
                self.forget(&k);
            }
            // Its names cannot be reused (the atespace is gone).
        }
    }

    // ---- faults ------------------------------------------------------------------------

    pub fn kill(&mut self, what: Kill) {
        match what {
            Kill::NodeAgent => {
                let pid = self.sys.kill9_supervised_agent();
                self.note(format!(
                    "FAULT kill -9 node agent (pid {pid}; its supervisor restarts it)"
                ));
                // The next kill hits the new process.
                eventually_within(
                    Duration::from_secs(60),
                    "the supervisor restarts the node agent",
                    || self.sys.agent_pid().filter(|p| *p != pid),
                );
            }
            Kill::Operator => {
                let pid = self.sys.operator_pid();
                self.sys.kill9_operator();
                let pause = self.rng.below(1500);
                self.note(format!(
                    "FAULT kill -9 operator (pid {pid:?}); restarted after {pause} ms"
                ));
                std::thread::sleep(Duration::from_millis(pause));
                super::start_operator(&mut self.sys);
            }
            Kill::Router => {
                let pid = self.sys.router_pid();
                self.sys.kill9_router();
                let pause = self.rng.below(1500);
                self.note(format!(
                    "FAULT kill -9 router (pid {pid:?}); restarted after {pause} ms"
                ));
                std::thread::sleep(Duration::from_millis(pause));
                self.router = self.sys.start_router(&ROUTER_FLAGS);
            }
            Kill::Apiserver => {
                let pid = self.sys.apiserver_pid();
                self.sys.kill9_apiserver();
                let pause = self.rng.below(2000);
                self.note(format!(
                    "FAULT kill -9 apiserver (pid {pid:?}); restarted after {pause} ms"
                ));
                std::thread::sleep(Duration::from_millis(pause));
                self.sys.start_apiserver();
            }
            Kill::Valkey => {
                self.note("FAULT kill -9 Valkey; restarted at once (AOF)".into());
                self.sys.restart_valkey_after_kill9();
            }
            Kill::Executor => {
                let pids = self.sys.executor_pids();
                if pids.is_empty() {
                    self.note("FAULT kill -9 executor: none running".into());
                } else {
                    let (pid, worker) = self.rng.pick(&pids).clone();
                    let _ = Command::new("kill")
                        .args(["-KILL", &pid.to_string()])
                        .status();
                    self.note(format!(
                        "FAULT kill -9 executor of {worker} (pid {pid}; the node agent restarts it)"
                    ));
                }
            }
            Kill::Sandbox => {
                let exec = self.sys.dir().join("node").join("executors");
                let mut running = Vec::new();
                for e in std::fs::read_dir(&exec)
                    .map(|d| d.flatten().collect::<Vec<_>>())
                    .unwrap_or_default()
                {
                    for id in super::invariants::running_sandboxes(&e.path()) {
                        running.push((e.path().join("runsc"), id));
                    }
                }
                if running.is_empty() {
                    self.note("FAULT kill sandbox: none running".into());
                } else {
                    let (root, id) = self.rng.pick(&running).clone();
                    let ok = Command::new("runsc")
                        .arg("--root")
                        .arg(&root)
                        .args(["kill", &id, "KILL"])
                        .status()
                        .is_ok_and(|s| s.success());
                    self.note(format!(
                        "FAULT kill -9 sandbox {id} ({}): {ok}",
                        root.display()
                    ));
                }
            }
        }
        self.count(match what {
            Kill::NodeAgent => "kill node agent",
            Kill::Operator => "kill operator",
            Kill::Router => "kill router",
            Kill::Apiserver => "kill apiserver",
            Kill::Valkey => "kill valkey",
            Kill::Executor => "kill executor",
            Kill::Sandbox => "kill sandbox",
        });
    }

    /// The object store unavailable for the next `steps` steps.
    pub fn begin_store_outage(&mut self, now: usize, steps: usize) {
        if self.outage.is_some() {
            return;
        }
        let dir = self.sys.dir().join("snapshots");
        self.outage = Some((StoreOutage::begin(&dir), now + steps));
        self.note(format!("FAULT object store unavailable for {steps} steps"));
        self.count("store outages");
    }

    /// The node's snapshot cache disk full for the next `steps` steps.
    pub fn begin_disk_full(&mut self, now: usize, steps: usize) {
        if self.disk_full_until.is_some() {
            return;
        }
        self.cache.fill();
        self.disk_full_until = Some(now + steps);
        self.note(format!(
            "FAULT snapshot cache disk full ({} bytes free) for {steps} steps",
            self.cache.available()
        ));
        self.count("disk full");
    }

    /// Ends the windows that are over at step `now` (all with `None`).
    pub fn end_windows(&mut self, now: Option<usize>) {
        let over = |until: usize| now.is_none_or(|n| n >= until);
        if self.outage.as_ref().is_some_and(|(_, u)| over(*u)) {
            self.outage = None;
            self.note("object store available again".into());
        }
        if self.disk_full_until.is_some_and(over) {
            self.disk_full_until = None;
            self.cache.free();
            self.note("snapshot cache disk freed".into());
        }
    }

    // ---- one step ----------------------------------------------------------------------

    /// One seeded step: an operation, sometimes with a fault in the middle of it.
    pub fn step(&mut self, i: usize) {
        self.end_windows(Some(i));
        self.drain();
        let n_actors = self.models.len();
        let weights = [
            if n_actors < MAX_ACTORS { 14 } else { 0 }, // create
            if n_actors > 0 { 26 } else { 0 },          // request
            if n_actors > 0 { 4 } else { 0 },           // burst
            if n_actors > 0 { 10 } else { 0 },          // suspend
            if n_actors > 0 { 8 } else { 0 },           // resume
            if n_actors > 0 { 4 } else { 0 },           // delete
            if n_actors > 0 { 7 } else { 0 },           // activation
            if self.atespaces.len() < MAX_ATESPACES {
                3
            } else {
                0
            }, // create atespace
            if self.atespaces.is_empty() { 0 } else { 2 }, // delete atespace
            14,                                         // a fault on its own
        ];
        match self.rng.weighted(&weights) {
            0 => self.create_actor(),
            1 => {
                let k = self.pick_actor().expect("an actor");
                self.request(&k);
            }
            2 => {
                let k = self.pick_actor().expect("an actor");
                let n = 2 + self.rng.below(5) as usize;
                self.burst(&k, n);
            }
            op @ (3 | 4) => {
                let k = self.pick_actor().expect("an actor");
                self.action(&k, if op == 3 { "suspend" } else { "resume" });
                // In the middle of the transition, half of the time.
                if self.rng.chance(50) {
                    let pause = self.rng.below(1200);
                    std::thread::sleep(Duration::from_millis(pause));
                    let what = *self.rng.pick(&KILLS);
                    self.note(format!("  ... {pause} ms into it:"));
                    self.kill(what);
                }
            }
            5 => {
                let k = self.pick_actor().expect("an actor");
                self.delete_actor(&k);
            }
            6 => {
                let k = self.pick_actor().expect("an actor");
                self.set_activation(&k);
            }
            7 => self.create_atespace(),
            8 => {
                let a = self.rng.pick(&self.atespaces.clone()).clone();
                self.delete_atespace(&a);
            }
            _ => match self.rng.below(9) {
                7 => {
                    let n = 2 + self.rng.below(4) as usize;
                    self.begin_store_outage(i, n);
                }
                8 => {
                    let n = 2 + self.rng.below(4) as usize;
                    self.begin_disk_full(i, n);
                }
                k => self.kill(KILLS[k as usize]),
            },
        }
    }
}

/// A request through the router at `router`.
pub fn request_via(router: std::net::SocketAddr, key: &Key, path: &str) -> Outcome {
    let url = format!("http://{}.{}.{SUFFIX}{path}", key.1, key.0);
    let out = Command::new("curl")
        .args(["-sS", "--max-time", "60", "-w", "\n%{http_code}", "-x"])
        .arg(format!("http://{router}"))
        .arg(&url)
        .output()
        .expect("curl");
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let (body, code) = text.rsplit_once('\n').unwrap_or(("", text.as_str()));
    let code: u16 = code.trim().parse().unwrap_or(0);
    let err = String::from_utf8_lossy(&out.stderr).trim().to_string();
    match (out.status.code(), code) {
        (Some(0), 200) => match body.split_whitespace().next().and_then(|w| w.parse().ok()) {
            Some(n) => Outcome::Answered(n),
            None => Outcome::Lost(format!("200 without a counter: {body:?}")),
        },
        (Some(0), 502) => Outcome::Lost(format!("502 {}", body.trim())),
        (Some(0), c) => Outcome::NotServed(c, body.trim().to_string()),
        // 7: could not connect (the router is down): certainly not served.
        (Some(7), _) => Outcome::NotServed(0, err),
        (status, _) => Outcome::Lost(format!("curl exit {status:?}: {err}")),
    }
}
