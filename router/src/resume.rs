//! Waking actors: one `POST .../actors/<name>/resume` per actor shared by every concurrent
//! request for it (single flight), then a wait on the watch for `Running` + `Ready=True`,
//! bounded by the wake timeout.
//!
//! A wake runs as its own task, so a client that gives up does not cancel it for the others.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures::FutureExt;
use futures::future::{BoxFuture, Shared};
use kube::api::{Api, PostParams};
use serde_json::json;

use crds::substrate::{Activation, Actor, ActorPhase};

use crate::host::ActorKey;
use crate::metrics::Metrics;
use crate::table::{Lookup, Table, Target, condition, phase};

/// How many times one wake resumes an actor that was released while it resumed.
const MAX_RESUMES_PER_WAKE: u32 = 3;

/// Condition the scheduler sets while an actor waits for a worker.
pub const SCHEDULED: &str = "Scheduled";
/// Its reason when no worker is free.
pub const NO_FREE_WORKER: &str = crds::conditions::reasons::NO_FREE_WORKER;

/// Why a wake did not end with a ready actor. Each maps to one HTTP answer.
#[derive(Debug, Clone, thiserror::Error)]
pub enum WakeError {
    #[error("atespace {atespace:?} does not exist")]
    NoAtespace { atespace: String },
    #[error("actor {name:?} not found in atespace {atespace:?}")]
    NoActor { atespace: String, name: String },
    #[error(
        "actor {key} is suspended by its activation policy; set spec.activation to OnDemand to wake it on request"
    )]
    Suspended { key: ActorKey },
    #[error("actor {key} cannot start now: no free worker ({message})")]
    NoFreeWorker { key: ActorKey, message: String },
    #[error("actor {key} did not become ready within {after:?} (phase {phase})")]
    Timeout {
        key: ActorKey,
        after: Duration,
        phase: String,
    },
    #[error("actor {key} failed to start: {message}")]
    Failed { key: ActorKey, message: String },
    #[error("actor {key} cannot be resumed: {message}")]
    Refused { key: ActorKey, message: String },
    #[error("actor {key} could not be resumed: the control plane is unreachable ({message})")]
    ControlPlane { key: ActorKey, message: String },
}

impl WakeError {
    /// HTTP status code of this failure.
    pub fn status(&self) -> u16 {
        match self {
            Self::NoAtespace { .. } | Self::NoActor { .. } => 404,
            Self::Suspended { .. } => 409,
            Self::NoFreeWorker { .. } | Self::Refused { .. } | Self::ControlPlane { .. } => 503,
            Self::Timeout { .. } => 504,
            Self::Failed { .. } => 502,
        }
    }

    /// Metric label.
    pub fn reason(&self) -> &'static str {
        match self {
            Self::NoAtespace { .. } => "no_atespace",
            Self::NoActor { .. } => "no_actor",
            Self::Suspended { .. } => "suspended",
            Self::NoFreeWorker { .. } => "no_free_worker",
            Self::Timeout { .. } => "timeout",
            Self::Failed { .. } => "failed",
            Self::Refused { .. } => "refused",
            Self::ControlPlane { .. } => "control_plane",
        }
    }

    /// The actor `key` names, or the 404 that says which part is missing.
    pub fn find(table: &Table, key: &ActorKey) -> Result<Arc<Actor>, Self> {
        match table.lookup(key) {
            Lookup::Actor(a) => Ok(a),
            Lookup::NoAtespace => Err(Self::NoAtespace {
                atespace: key.atespace.clone(),
            }),
            Lookup::NoActor => Err(Self::NoActor {
                atespace: key.atespace.clone(),
                name: key.name.clone(),
            }),
        }
    }
}

/// Apiserver GETs in flight at most for names missing from the table; beyond that the table's
/// answer (404) stands.
pub const MAX_CONFIRMS: usize = 16;

/// How long a request for an actor the apiserver has, but the table not yet, waits for the
/// watch to deliver it.
pub const WATCH_CATCH_UP: Duration = Duration::from_secs(10);

/// Work in flight for an actor: when it started, and its outcome, shared.
type Flight<V> = (Instant, Shared<BoxFuture<'static, V>>);

/// Work per actor shared by every request that asks for it while it runs (single flight).
/// Each flight is a task of its own, so it ends, and leaves the map, even when every request
/// waiting for it has gone.
struct Flights<V> {
    running: Mutex<HashMap<ActorKey, Flight<V>>>,
}

impl<V: Clone + Send + Sync + 'static> Flights<V> {
    fn new() -> Arc<Self> {
        Arc::new(Self {
            running: Mutex::new(HashMap::new()),
        })
    }

    /// The flight for `key`, or a new one running `start`'s work on `runtime` (`None` when
    /// `start` gives none). `ended` is the outcome of a task that panicked or was cancelled.
    fn join_or_start<F>(
        self: &Arc<Self>,
        runtime: &tokio::runtime::Handle,
        key: &ActorKey,
        start: impl FnOnce() -> Option<F>,
        ended: fn(&ActorKey, String) -> V,
    ) -> Option<Flight<V>>
    where
        F: std::future::Future<Output = V> + Send + 'static,
    {
        let mut running = self.running.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(f) = running.get(key) {
            return Some(f.clone());
        }
        // Before the work can begin: a flight never started later than its work did.
        let started = Instant::now();
        let work = start()?;
        let this = self.clone();
        let k = key.clone();
        let task = runtime.spawn(async move {
            let out = work.await;
            this.running
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .remove(&k);
            out
        });
        let k = key.clone();
        let outcome = async move { task.await.unwrap_or_else(|e| ended(&k, e.to_string())) };
        let flight = (started, outcome.boxed().shared());
        running.insert(key.clone(), flight.clone());
        Some(flight)
    }
}

/// What the apiserver said of a name the table does not know.
#[derive(Debug, Clone)]
enum Confirmed {
    Exists,
    Missing,
    /// It could not be asked (the error, for the log).
    Unknown(String),
}

/// Wakes actors, one flight per actor.
pub struct Waker {
    client: kube::Client,
    table: Arc<Table>,
    metrics: Arc<Metrics>,
    timeout: Duration,
    connect_timeout: Duration,
    flights: Arc<Flights<Result<Target, WakeError>>>,
    /// GETs in flight for names the table does not know, one per name, shared by the
    /// requests that want it ([`Waker::find_fresh`]).
    confirming: Arc<Flights<Confirmed>>,
    /// Bounds the apiserver GETs for names the table does not know ([`Waker::find_fresh`]),
    /// so traffic for made-up names cannot load the control plane.
    confirms: Arc<tokio::sync::Semaphore>,
    /// The runtime wakes run on (the one `new` was called on): a wake is shared by the
    /// requests of every proxy thread and outlives the one that started it.
    runtime: tokio::runtime::Handle,
}

fn rv(a: &Actor) -> Option<u64> {
    a.metadata.resource_version.as_deref()?.parse().ok()
}

fn waiting_for_worker(a: &Actor) -> Option<String> {
    condition(a, SCHEDULED)
        .filter(|c| c.status == "False" && c.reason == NO_FREE_WORKER)
        .map(|c| c.message.clone())
}

fn has_worker(a: &Actor) -> bool {
    a.status.as_ref().is_some_and(|s| s.worker.is_some())
}

fn phase_name(a: &Actor) -> &'static str {
    phase(a).map_or("Suspended", ActorPhase::as_str)
}

impl Waker {
    pub fn new(
        client: kube::Client,
        table: Arc<Table>,
        metrics: Arc<Metrics>,
        timeout: Duration,
        connect_timeout: Duration,
    ) -> Arc<Self> {
        Arc::new(Self {
            client,
            table,
            metrics,
            timeout,
            connect_timeout,
            flights: Flights::new(),
            confirming: Flights::new(),
            confirms: Arc::new(tokio::sync::Semaphore::new(MAX_CONFIRMS)),
            runtime: tokio::runtime::Handle::current(),
        })
    }

    /// Wakes `key` (or joins the wake in progress) and returns where it serves.
    pub async fn wake(self: &Arc<Self>, key: &ActorKey) -> Result<Target, WakeError> {
        let start = || {
            let (this, k) = (self.clone(), key.clone());
            Some(async move { this.run(&k).await })
        };
        let started = self
            .flights
            .join_or_start(&self.runtime, key, start, |key, e| {
                Err(WakeError::ControlPlane {
                    key: key.clone(),
                    message: format!("wake task ended: {e}"),
                })
            });
        let Some((_, flight)) = started else {
            unreachable!("a wake always starts when none is in flight")
        };
        flight.await
    }

    /// The actor `key` names, when the table does not know it (`miss`, its 404): an actor
    /// created a moment ago may not have reached the watch yet, so one GET asks the apiserver
    /// (one per name, shared by all the requests for it) and, if the actor exists, the
    /// request waits for the watch to deliver it. The 404 stands when the apiserver has no
    /// such actor, cannot be asked, or already has [`MAX_CONFIRMS`] of these GETs in flight
    /// for other names.
    pub async fn find_fresh(
        self: &Arc<Self>,
        key: &ActorKey,
        miss: WakeError,
    ) -> Result<Arc<Actor>, WakeError> {
        // Subscribed before asking: a watch event during the GET is not missed.
        let mut changes = self.table.subscribe();
        let arrived = Instant::now();
        loop {
            let Some((started, answer)) = self.confirming(key) else {
                return Err(miss);
            };
            match answer.await {
                Confirmed::Exists => break,
                // A GET sent before this request came may predate the create the client
                // saw succeed: ask again (once: the next GET starts after `arrived`).
                Confirmed::Missing if started < arrived => {}
                Confirmed::Missing => return Err(miss),
                Confirmed::Unknown(error) => {
                    tracing::debug!(atespace = %key.atespace, actor = %key.name, %error, "confirming a missing actor failed");
                    return Err(miss);
                }
            }
        }
        self.metrics.fresh_lookups.inc();
        let wait = WATCH_CATCH_UP.min(self.timeout);
        let deadline = tokio::time::Instant::now() + wait;
        loop {
            if let Lookup::Actor(a) = self.table.lookup(key) {
                return Ok(a);
            }
            tokio::select! {
                r = changes.changed() => if r.is_err() {
                    return Err(WakeError::ControlPlane { key: key.clone(), message: "the routing table stopped".into() });
                },
                _ = tokio::time::sleep_until(deadline) => {
                    return Err(WakeError::ControlPlane {
                        key: key.clone(),
                        message: format!(
                            "the actor exists but the router's watch has not delivered it within {wait:?}"
                        ),
                    });
                }
            }
        }
    }

    /// The GET for `key` in flight, or a new one; `None` when [`MAX_CONFIRMS`] are in flight.
    fn confirming(self: &Arc<Self>, key: &ActorKey) -> Option<Flight<Confirmed>> {
        let start = || {
            let permit = self.confirms.clone().try_acquire_owned().ok()?;
            let api: Api<Actor> = Api::namespaced(self.client.clone(), &key.atespace);
            let name = key.name.clone();
            Some(async move {
                let got = api.get_opt(&name).await;
                drop(permit);
                match got {
                    Ok(Some(_)) => Confirmed::Exists,
                    Ok(None) => Confirmed::Missing,
                    Err(e) => Confirmed::Unknown(e.to_string()),
                }
            })
        };
        self.confirming
            .join_or_start(&self.runtime, key, start, |_, e| {
                Confirmed::Unknown(format!("the lookup task ended: {e}"))
            })
    }

    async fn run(&self, key: &ActorKey) -> Result<Target, WakeError> {
        let start = Instant::now();
        let out = self.run_inner(key, start).await;
        if let Ok(Target {
            addr,
            gateway: None,
            ..
        }) = out
        {
            // The actor just became ready: give its listener a second chance before the
            // requests go (one probe per wake, not per request). Not through a worker
            // gateway (its address is not reachable from here; the agent checked readiness).
            if !self.probe(addr).await {
                tokio::time::sleep(Duration::from_millis(200)).await;
                self.probe(addr).await;
            }
        }
        match &out {
            Ok(Target { addr, .. }) => {
                self.metrics
                    .wake_latency
                    .observe(start.elapsed().as_secs_f64());
                tracing::info!(atespace = %key.atespace, actor = %key.name, %addr, elapsed_ms = start.elapsed().as_millis() as u64, "actor woken");
            }
            Err(e) => {
                self.metrics.wake_failure(e.reason());
                tracing::info!(atespace = %key.atespace, actor = %key.name, error = %e, "wake failed");
            }
        }
        out
    }

    async fn run_inner(&self, key: &ActorKey, start: Instant) -> Result<Target, WakeError> {
        let deadline = tokio::time::Instant::from_std(start + self.timeout);
        let mut changes = self.table.subscribe();
        let actor = WakeError::find(&self.table, key)?;
        if actor.spec.activation == Activation::Suspended {
            return Err(WakeError::Suspended { key: key.clone() });
        }
        if let Some(target) = self.table.route(&actor) {
            return Ok(target);
        }
        // Events older than the resume's answer say nothing about this wake.
        let mut since: Option<u64> = None;
        let needs_resume = matches!(
            phase(&actor),
            None | Some(ActorPhase::Suspended | ActorPhase::Failed | ActorPhase::Suspending)
        ) || (phase(&actor) == Some(ActorPhase::Running) && !has_worker(&actor));
        let mut resumes = 0;
        if needs_resume {
            since = self.resume_for_wake(key, true).await?;
            resumes += 1;
        }
        loop {
            let actor = WakeError::find(&self.table, key)?;
            if actor.spec.activation == Activation::Suspended {
                return Err(WakeError::Suspended { key: key.clone() });
            }
            if let Some(target) = self.table.route(&actor) {
                return Ok(target);
            }
            let fresh = match (since, rv(&actor)) {
                (Some(s), Some(r)) => r >= s,
                (Some(_), None) => false,
                (None, _) => true,
            };
            // Bound by our resume, then back to Suspended without a worker: the worker was
            // lost mid-resume (its node agent's pod deleted, or silent) and the actor released
            // to its last good snapshot. The request still waits: resume again (a few times),
            // rather than wait out the timeout for a resume nobody is doing. (The release
            // usually leaves no free worker for a moment: the actor then waits in the
            // scheduler's queue, and so does the request, until its deadline.)
            if fresh
                && since.is_some()
                && phase(&actor) == Some(ActorPhase::Suspended)
                && !has_worker(&actor)
                && waiting_for_worker(&actor).is_none()
                && resumes < MAX_RESUMES_PER_WAKE
            {
                tracing::info!(atespace = %key.atespace, actor = %key.name, "actor released during its wake; resuming it again");
                since = self.resume_for_wake(key, false).await?;
                resumes += 1;
                continue;
            }
            if fresh && phase(&actor) == Some(ActorPhase::Failed) {
                let message = condition(&actor, crds::conditions::READY)
                    .map(|c| c.message.clone())
                    .filter(|m| !m.is_empty())
                    .unwrap_or_else(|| "the actor's phase is Failed".to_string());
                return Err(WakeError::Failed {
                    key: key.clone(),
                    message,
                });
            }
            tokio::select! {
                r = changes.changed() => if r.is_err() {
                    return Err(WakeError::ControlPlane { key: key.clone(), message: "the routing table stopped".into() });
                },
                _ = tokio::time::sleep_until(deadline) => {
                    return Err(WakeError::Timeout {
                        key: key.clone(),
                        after: self.timeout,
                        phase: phase_name(&actor).to_string(),
                    });
                }
            }
        }
    }

    /// `resume` for a wake: the resourceVersion of the answer (events older than it say
    /// nothing about this wake); with `fail_fast`, `NoFreeWorker` when the actor has to wait
    /// for a worker.
    async fn resume_for_wake(
        &self,
        key: &ActorKey,
        fail_fast: bool,
    ) -> Result<Option<u64>, WakeError> {
        let resumed = self.resume(key).await?;
        if fail_fast
            && let Some(message) = waiting_for_worker(&resumed)
            && phase(&resumed) != Some(ActorPhase::Suspending)
            && !has_worker(&resumed)
        {
            return Err(WakeError::NoFreeWorker {
                key: key.clone(),
                message,
            });
        }
        Ok(rv(&resumed))
    }

    async fn probe(&self, addr: SocketAddr) -> bool {
        matches!(
            tokio::time::timeout(self.connect_timeout, tokio::net::TcpStream::connect(addr)).await,
            Ok(Ok(_))
        )
    }

    /// `POST .../resume`; the answer is the actor (200: bound, 202: waiting).
    async fn resume(&self, key: &ActorKey) -> Result<Actor, WakeError> {
        self.metrics.resumes.inc();
        tracing::info!(atespace = %key.atespace, actor = %key.name, "resuming actor for a request");
        let api: Api<Actor> = Api::namespaced(self.client.clone(), &key.atespace);
        api.create_subresource::<_, Actor>("resume", &key.name, &PostParams::default(), &json!({}))
            .await
            .map_err(|e| match e {
                kube::Error::Api(s) if s.code == 404 => WakeError::NoActor {
                    atespace: key.atespace.clone(),
                    name: key.name.clone(),
                },
                kube::Error::Api(s)
                    if s.code == 409 && s.message.contains("activation=Suspended") =>
                {
                    WakeError::Suspended { key: key.clone() }
                }
                kube::Error::Api(s) if s.code < 500 => WakeError::Refused {
                    key: key.clone(),
                    message: s.message,
                },
                e => WakeError::ControlPlane {
                    key: key.clone(),
                    message: e.to_string(),
                },
            })
    }
}
