//! Bindings: which run of an actor on a worker an upstream connection belongs to.
//!
//! An address is not an identity: once an actor leaves a worker (suspended, deleted, moved),
//! another actor's sandbox answers on the same address a moment later, and a kept-alive
//! connection opened to the old sandbox must not carry the new one's requests (the new
//! sandbox resets it: the request fails). A binding is one stretch of an actor (by uid) being
//! routable (`Running` + `Ready`) on one worker at one address; a resume starts a new one even
//! on the same worker, told apart by the `Ready` condition's transition time (set at each
//! resume). The routing table numbers each binding it sees ([`Bindings::bind`]) and ends it
//! when the actor stops being routable there or is deleted ([`Bindings::unbind`]); every end
//! advances an epoch that the proxy threads watch ([`Bindings::subscribe`]). The upstream
//! pool ([`crate::upstream`]) files each connection under the binding it was opened for: it
//! serves that binding only, and is closed when the binding ends.

use std::collections::{HashMap, HashSet};
use std::net::SocketAddr;
use std::sync::RwLock;
use std::sync::atomic::{AtomicU64, Ordering};

use tokio::sync::watch;

/// What a request was routed by: a binding's number, and the epoch it was live at.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Binding {
    /// Unique per binding for the router's lifetime; 0 never names a live binding.
    pub id: u64,
    /// [`Bindings::epoch`] when `id` was looked up (live then).
    pub epoch: u64,
}

impl Binding {
    /// A binding of no pooled connection: a connection opened for it is closed after use.
    pub const NONE: Binding = Binding { id: 0, epoch: 0 };
}

/// Where an actor is routable: its worker, the address requests go to, and since when it is
/// ready there.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Placement<'a> {
    pub worker: &'a str,
    pub addr: SocketAddr,
    /// The `Ready` condition's last transition time (new at every resume).
    pub ready_since: Option<jiff::Timestamp>,
    /// The actor's resourceVersion this was read from, when numeric: an older view does not
    /// replace the binding of a newer one.
    pub version: Option<u64>,
}

/// An actor's binding, or (`id` 0) the version at which it stopped being routable.
#[derive(Debug)]
struct Bound {
    worker: String,
    addr: SocketAddr,
    ready_since: Option<jiff::Timestamp>,
    version: Option<u64>,
    id: u64,
}

impl Bound {
    /// The binding `p` names, [`Binding::NONE`] for a view older than this entry, `None`
    /// when `p` starts a new binding.
    fn answer(&self, p: &Placement<'_>) -> Option<u64> {
        if self.id != 0
            && self.worker == p.worker
            && self.addr == p.addr
            && self.ready_since == p.ready_since
        {
            return Some(self.id);
        }
        matches!((self.version, p.version), (Some(mine), Some(theirs)) if mine > theirs)
            .then_some(Binding::NONE.id)
    }
}

#[derive(Debug, Default)]
struct State {
    by_uid: HashMap<String, Bound>,
    live: HashSet<u64>,
    next: u64,
}

/// The current binding of every routable actor.
#[derive(Debug)]
pub struct Bindings {
    state: RwLock<State>,
    /// Bindings ended so far (moves only under the write lock).
    epoch: AtomicU64,
    ended: watch::Sender<u64>,
}

impl Default for Bindings {
    fn default() -> Self {
        Self {
            state: RwLock::default(),
            epoch: AtomicU64::new(0),
            ended: watch::channel(0).0,
        }
    }
}

impl Bindings {
    /// The binding of actor `uid` at `at`: the current one if the actor was already routable
    /// there, else a new one (ending the actor's previous binding). A view older than what
    /// the last [`Bindings::bind`] or [`Bindings::unbind`] saw gets [`Binding::NONE`].
    pub fn bind(&self, uid: &str, at: Placement<'_>) -> Binding {
        {
            let s = self.state.read().unwrap_or_else(|e| e.into_inner());
            if let Some(id) = s.by_uid.get(uid).and_then(|b| b.answer(&at)) {
                return self.binding(id);
            }
        }
        let mut s = self.state.write().unwrap_or_else(|e| e.into_inner());
        if let Some(id) = s.by_uid.get(uid).and_then(|b| b.answer(&at)) {
            return self.binding(id);
        }
        s.next += 1;
        let id = s.next;
        let bound = Bound {
            worker: at.worker.to_string(),
            addr: at.addr,
            ready_since: at.ready_since,
            version: at.version,
            id,
        };
        s.live.insert(id);
        if let Some(old) = s.by_uid.insert(uid.to_string(), bound) {
            self.end(&mut s, old.id);
        }
        tracing::debug!(uid, worker = at.worker, addr = %at.addr, id, "actor bound");
        self.binding(id)
    }

    /// Actor `uid` is not routable any more as of `version`: its binding ends (and a view
    /// older than `version` binds nothing).
    pub fn unbind(&self, uid: &str, version: Option<u64>) {
        let bound = |s: &State| s.by_uid.get(uid).is_some_and(|b| b.id != 0);
        if !bound(&self.state.read().unwrap_or_else(|e| e.into_inner())) {
            return;
        }
        let mut s = self.state.write().unwrap_or_else(|e| e.into_inner());
        if let Some(b) = s.by_uid.get_mut(uid).filter(|b| b.id != 0) {
            let id = std::mem::take(&mut b.id);
            b.version = version;
            tracing::debug!(uid, worker = %b.worker, addr = %b.addr, id, "actor unbound");
            self.end(&mut s, id);
        }
    }

    /// Actor `uid` was deleted: its binding ends, and it is forgotten.
    pub fn remove(&self, uid: &str) {
        let mut s = self.state.write().unwrap_or_else(|e| e.into_inner());
        if let Some(old) = s.by_uid.remove(uid) {
            self.end(&mut s, old.id);
        }
    }

    /// Ends the bindings of the actors `keep` rejects (after a relist: actors deleted while
    /// the watch was away).
    pub fn retain(&self, keep: impl Fn(&str) -> bool) {
        let mut s = self.state.write().unwrap_or_else(|e| e.into_inner());
        let gone: Vec<String> = s.by_uid.keys().filter(|u| !keep(u)).cloned().collect();
        for uid in gone {
            if let Some(old) = s.by_uid.remove(&uid) {
                self.end(&mut s, old.id);
            }
        }
    }

    /// Whether binding `id` has not ended.
    pub fn is_live(&self, id: u64) -> bool {
        self.state
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .live
            .contains(&id)
    }

    /// Moves whenever a binding ends: a binding live at one epoch is live until it moves.
    pub fn epoch(&self) -> u64 {
        self.epoch.load(Ordering::Acquire)
    }

    /// Changes whenever a binding ends.
    pub fn subscribe(&self) -> watch::Receiver<u64> {
        self.ended.subscribe()
    }

    /// Under the state lock (either): the epoch cannot move meanwhile.
    fn binding(&self, id: u64) -> Binding {
        if id == Binding::NONE.id {
            return Binding::NONE;
        }
        Binding {
            id,
            epoch: self.epoch(),
        }
    }

    fn end(&self, s: &mut State, id: u64) {
        if id == 0 || !s.live.remove(&id) {
            return;
        }
        let epoch = self.epoch.fetch_add(1, Ordering::AcqRel) + 1;
        self.ended.send_replace(epoch);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(worker: &str, port: u16, since: i64, version: u64) -> Placement<'_> {
        Placement {
            worker,
            addr: SocketAddr::from(([10, 0, 0, 1], port)),
            ready_since: jiff::Timestamp::from_second(since).ok(),
            version: Some(version),
        }
    }

    #[test]
    fn a_binding_lasts_while_the_placement_does() {
        let b = Bindings::default();
        let one = b.bind("a", at("w0", 8080, 100, 1));
        assert_ne!(one.id, 0);
        // A later object of the same run (activity, conditions) keeps it.
        assert_eq!(b.bind("a", at("w0", 8080, 100, 5)), one);
        // Another actor on another worker has its own.
        let other = b.bind("b", at("w1", 8080, 100, 6));
        assert_ne!(other.id, one.id);
        assert!(b.is_live(one.id) && b.is_live(other.id));
        assert_eq!(b.epoch(), 0);
    }

    #[test]
    fn a_resume_a_move_or_an_unbind_ends_it() {
        let b = Bindings::default();
        let mut rx = b.subscribe();
        let first = b.bind("a", at("w0", 8080, 100, 1));
        // Suspended and resumed on the same worker: Ready changed since.
        let second = b.bind("a", at("w0", 8080, 200, 9));
        assert_ne!(first.id, second.id);
        assert!(!b.is_live(first.id) && b.is_live(second.id));
        assert_eq!(second.epoch, 1);
        assert!(rx.has_changed().unwrap());
        rx.mark_unchanged();
        // Moved to another worker.
        let third = b.bind("a", at("w1", 8080, 200, 12));
        assert!(!b.is_live(second.id) && b.is_live(third.id));
        b.unbind("a", Some(13));
        assert!(!b.is_live(third.id));
        assert_eq!(b.epoch(), 3);
        assert!(rx.has_changed().unwrap());
        // Unbinding what is not bound changes nothing.
        b.unbind("a", Some(14));
        b.unbind("never-bound", Some(14));
        assert_eq!(b.epoch(), 3);
        // A view from before the unbind binds nothing; a resume after it binds anew.
        assert_eq!(b.bind("a", at("w1", 8080, 200, 12)), Binding::NONE);
        let fourth = b.bind("a", at("w1", 8080, 300, 20));
        assert!(b.is_live(fourth.id));
        b.remove("a");
        assert!(!b.is_live(fourth.id));
        assert_eq!(b.epoch(), 4);
    }

    #[test]
    fn an_older_view_does_not_replace_a_newer_binding() {
        let b = Bindings::default();
        let new = b.bind("a", at("w1", 8080, 200, 10));
        assert_eq!(b.bind("a", at("w0", 8080, 100, 4)), Binding::NONE);
        assert!(b.is_live(new.id));
        assert!(!b.is_live(Binding::NONE.id));
    }

    #[test]
    fn retain_ends_the_bindings_of_actors_gone() {
        let b = Bindings::default();
        let a = b.bind("a", at("w0", 8080, 100, 1));
        let c = b.bind("c", at("w1", 8080, 100, 2));
        b.retain(|uid| uid == "c");
        assert!(!b.is_live(a.id) && b.is_live(c.id));
    }
}
