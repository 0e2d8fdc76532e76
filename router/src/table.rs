//! The routing table: actors, atespaces and actor templates kept in memory from watches on the
//! apiserver (kube-runtime reflectors), so a request to a running actor, and every DNS answer,
//! costs no control-plane call.
//!
//! Every actor event bumps a generation counter ([`Table::subscribe`]) that wakes requests
//! waiting for an actor to become ready, and keeps the actors' bindings
//! ([`crate::binding`]) current: a routable actor is bound, one that stops being routable or
//! is deleted is unbound.

use std::collections::HashSet;
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, RwLock};

use futures::StreamExt;
use kube::api::Api;
use kube::runtime::reflector::{self, ObjectRef, Store};
use kube::runtime::{WatchStreamExt, watcher};
use tokio::sync::watch;

use crds::ate::ActorTemplate;
use crds::substrate::{Activation, Actor, ActorPhase, Atespace, HttpAccessPolicy};

use crate::binding::{Binding, Bindings, Placement};
use crate::gateway::Network;
use crate::host::ActorKey;

/// Port an actor serves on when its template names none.
pub const DEFAULT_PORT: u16 = 8080;

/// What the table knows about a name.
#[derive(Debug, Clone)]
pub enum Lookup {
    /// The atespace does not exist.
    NoAtespace,
    /// The atespace exists, the actor does not.
    NoActor,
    /// The actor.
    Actor(Arc<Actor>),
}

/// Where a request for a routable actor goes: the address, the worker gateway to reach it
/// through (`None`: directly; [`crate::gateway`]), and the binding it is there by.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Target {
    pub addr: SocketAddr,
    pub gateway: Option<SocketAddr>,
    pub binding: Binding,
}

/// The in-memory view of the apiserver the router and the DNS responder answer from.
pub struct Table {
    actors: Store<Actor>,
    atespaces: Store<Atespace>,
    templates: Store<ActorTemplate>,
    changed: watch::Sender<u64>,
    /// Bumped with `changed`; read per request (an atomic load) to validate cached routes.
    generation: AtomicU64,
    synced: AtomicBool,
    bindings: Arc<Bindings>,
    /// Atespaces whose `spec.httpAccess.policy` is `Authorized` ([`Table::http_access`]).
    authorized: RwLock<HashSet<String>>,
    /// Whether `authorized` has any: when not (the default), a request's policy costs one
    /// atomic load.
    any_authorized: AtomicBool,
    /// How workers are reached (`--worker-network`, `--node-name`).
    network: Network,
}

impl Table {
    /// Starts the watches (actors and atespaces on Substrate's apiserver, templates on the
    /// cluster's; one and the same in standalone mode); the table fills in the background
    /// ([`Table::ready`]).
    pub fn start(
        clients: &clients::Clients,
        network: Network,
    ) -> (Arc<Self>, tokio::task::JoinHandle<()>) {
        let client = clients.substrate.clone();
        let cluster = clients.cluster.clone();
        let (actors, aw) = reflector::store::<Actor>();
        let (atespaces, sw) = reflector::store::<Atespace>();
        let (templates, tw) = reflector::store::<ActorTemplate>();
        let (changed, _) = watch::channel(0u64);
        let table = Arc::new(Self {
            actors,
            atespaces,
            templates,
            changed,
            generation: AtomicU64::new(0),
            synced: AtomicBool::new(false),
            bindings: Arc::default(),
            authorized: RwLock::default(),
            any_authorized: AtomicBool::new(false),
            network,
        });
        let t = table.clone();
        let task = tokio::spawn(async move {
            let bump = |t: &Table| {
                t.generation.fetch_add(1, Ordering::AcqRel);
                t.changed.send_modify(|g| *g = g.wrapping_add(1));
            };
            let observer = t.clone();
            let a = watcher(Api::<Actor>::all(client.clone()), Default::default())
                .default_backoff()
                .reflect(aw)
                .map(move |e| {
                    if let Ok(e) = e {
                        observer.observe(&e);
                    }
                    0u8
                });
            let policies = t.clone();
            let s = watcher(Api::<Atespace>::all(client.clone()), Default::default())
                .default_backoff()
                .reflect(sw)
                .touched_objects()
                .map(move |a| {
                    // Before the generation bump: a route cached under the old generation
                    // is not reused with the old policy.
                    if let Ok(a) = a
                        && let Some(name) = a.metadata.name.as_deref()
                    {
                        policies.observe_atespace(name);
                    }
                    1u8
                });
            let tp = watcher(Api::<ActorTemplate>::all(cluster), Default::default())
                .default_backoff()
                .reflect(tw)
                .touched_objects()
                .map(|_| 2u8);
            let mut events =
                std::pin::pin!(futures::stream::select(a, futures::stream::select(s, tp)));
            let ready = async {
                let _ = t.actors.wait_until_ready().await;
                let _ = t.atespaces.wait_until_ready().await;
                let _ = t.templates.wait_until_ready().await;
            };
            let mut ready = std::pin::pin!(ready);
            let mut synced = false;
            loop {
                tokio::select! {
                    e = events.next() => match e {
                        Some(_) => bump(&t),
                        None => return,
                    },
                    _ = &mut ready, if !synced => {
                        synced = true;
                        t.synced.store(true, Ordering::Release);
                        bump(&t);
                        tracing::info!("routing table synced");
                    }
                }
            }
        });
        (table, task)
    }

    /// Keeps the bindings current with an actor event (the store has applied it already).
    fn observe(&self, event: &watcher::Event<Actor>) {
        match event {
            watcher::Event::Apply(a) | watcher::Event::InitApply(a) => {
                if self.route(a).is_none() {
                    self.bindings.unbind(uid(a), version(a));
                }
            }
            watcher::Event::Delete(a) => self.bindings.remove(uid(a)),
            watcher::Event::Init => {}
            // A relist: actors deleted while the watch was away sent no delete.
            watcher::Event::InitDone => {
                let present: std::collections::HashSet<String> = self
                    .actors
                    .state()
                    .iter()
                    .map(|a| uid(a).to_string())
                    .collect();
                self.bindings.retain(|u| present.contains(u));
            }
        }
    }

    /// Keeps [`Table::http_access`] current for atespace `name` (the store has applied the
    /// event already: absent means deleted).
    fn observe_atespace(&self, name: &str) {
        let policy = self
            .atespaces
            .get(&ObjectRef::new(name))
            .map(|a| a.spec.http_access_policy())
            .unwrap_or_default();
        let mut set = self.authorized.write().unwrap_or_else(|e| e.into_inner());
        let changed = match policy {
            HttpAccessPolicy::Authorized => set.insert(name.to_string()),
            HttpAccessPolicy::Open => set.remove(name),
        };
        if changed {
            tracing::info!(atespace = name, policy = ?policy, "atespace HTTP access policy");
        }
        self.any_authorized
            .store(!set.is_empty(), Ordering::Release);
    }

    /// The HTTP access policy of atespace `name` (`Open` for an atespace the table lacks).
    pub fn http_access(&self, name: &str) -> HttpAccessPolicy {
        if !self.any_authorized.load(Ordering::Acquire) {
            return HttpAccessPolicy::Open;
        }
        let set = self.authorized.read().unwrap_or_else(|e| e.into_inner());
        if set.contains(name) {
            HttpAccessPolicy::Authorized
        } else {
            HttpAccessPolicy::Open
        }
    }

    /// The actors' bindings (the upstream pools follow them).
    pub fn bindings(&self) -> &Arc<Bindings> {
        &self.bindings
    }

    /// How many objects the table holds, per kind (`actors`, `atespaces`, `templates`): to
    /// compare with the apiserver's (`substrate_router_table_objects`).
    pub fn sizes(&self) -> [(&'static str, usize); 3] {
        [
            ("actors", self.actors.state().len()),
            ("atespaces", self.atespaces.state().len()),
            ("templates", self.templates.state().len()),
        ]
    }

    /// Whether the initial lists of all three watches have arrived.
    pub fn ready(&self) -> bool {
        self.synced.load(Ordering::Acquire)
    }

    /// Changes whenever any watched object changes: what was looked up at one generation
    /// holds until the next.
    pub fn generation(&self) -> u64 {
        self.generation.load(Ordering::Acquire)
    }

    /// A receiver that changes whenever any watched object changes.
    pub fn subscribe(&self) -> watch::Receiver<u64> {
        self.changed.subscribe()
    }

    pub fn atespace_exists(&self, name: &str) -> bool {
        self.atespaces
            .get(&ObjectRef::new(name))
            .is_some_and(|a| a.metadata.deletion_timestamp.is_none())
    }

    pub fn actor(&self, key: &ActorKey) -> Option<Arc<Actor>> {
        self.actors
            .get(&ObjectRef::new(&key.name).within(&key.atespace))
    }

    pub fn lookup(&self, key: &ActorKey) -> Lookup {
        match self.actor(key) {
            Some(a) => Lookup::Actor(a),
            None if self.atespace_exists(&key.atespace) => Lookup::NoActor,
            None => Lookup::NoAtespace,
        }
    }

    /// Waits (at most `wait`) until the table shows `key` at resourceVersion `rv` or later,
    /// or no longer has it.
    pub async fn catch_up(&self, key: &ActorKey, rv: u64, wait: std::time::Duration) {
        let mut changes = self.subscribe();
        let deadline = tokio::time::Instant::now() + wait;
        loop {
            match self.actor(key) {
                Some(a) if version(&a).is_some_and(|v| v < rv) => {}
                _ => return,
            }
            tokio::select! {
                r = changes.changed() => if r.is_err() { return },
                _ = tokio::time::sleep_until(deadline) => return,
            }
        }
    }

    /// The port the actor serves on: its template's first container port, else the readiness
    /// probe's port, else [`DEFAULT_PORT`].
    pub fn port_of(&self, actor: &Actor) -> u16 {
        let ns = actor
            .spec
            .template
            .namespace
            .as_deref()
            .or(actor.metadata.namespace.as_deref())
            .unwrap_or_default();
        let Some(t) = self
            .templates
            .get(&ObjectRef::new(&actor.spec.template.name).within(ns))
        else {
            return DEFAULT_PORT;
        };
        let port = t
            .spec
            .containers
            .first()
            .and_then(|c| c.ports.first())
            .map(|p| p.container_port)
            .or_else(|| {
                t.spec
                    .readiness_probe
                    .as_ref()
                    .and_then(|p| p.http_get.as_ref())
                    .map(|h| h.port)
            });
        port.and_then(|p| u16::try_from(p).ok())
            .filter(|p| *p != 0)
            .unwrap_or(DEFAULT_PORT)
    }

    /// Where to send a request for `actor` now, and by which binding: `Some` only when it is
    /// `Running` with `Ready=True` and an address.
    pub fn route(&self, actor: &Actor) -> Option<Target> {
        let st = actor.status.as_ref()?;
        let ready = condition(actor, crds::conditions::READY)?;
        if st.phase != Some(ActorPhase::Running) || ready.status != "True" {
            return None;
        }
        let worker = st.worker.as_ref()?;
        let ip: IpAddr = worker.address.as_deref()?.parse().ok()?;
        let addr = SocketAddr::new(ip, self.port_of(actor));
        let gateway = self
            .network
            .via(worker.node.as_deref(), worker.gateway.as_deref());
        let binding = self.bindings.bind(
            uid(actor),
            Placement {
                worker: &worker.name,
                addr,
                ready_since: Some(ready.last_transition_time.0),
                version: version(actor),
            },
        );
        Some(Target {
            addr,
            gateway,
            binding,
        })
    }
}

fn uid(actor: &Actor) -> &str {
    actor.metadata.uid.as_deref().unwrap_or_default()
}

/// The actor's resourceVersion, when numeric (it orders the versions of one object).
fn version(actor: &Actor) -> Option<u64> {
    actor.metadata.resource_version.as_deref()?.parse().ok()
}

/// `status.conditions[type=Ready].status == "True"`.
pub fn is_ready(actor: &Actor) -> bool {
    condition(actor, crds::conditions::READY).is_some_and(|c| c.status == "True")
}

/// The condition `type_` of an actor.
pub fn condition<'a>(
    actor: &'a Actor,
    type_: &str,
) -> Option<&'a k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition> {
    actor
        .status
        .as_ref()?
        .conditions
        .iter()
        .find(|c| c.type_ == type_)
}

pub fn phase(actor: &Actor) -> Option<ActorPhase> {
    actor.status.as_ref().and_then(|s| s.phase)
}

pub fn activation(actor: &Actor) -> Activation {
    actor.spec.activation
}
