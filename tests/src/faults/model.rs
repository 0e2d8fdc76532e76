//! What the fault suite expects of each actor's memory, as a pure model (no I/O).
//!
//! The `counter` demo answers each request with the number of requests its memory has
//! served. The model keeps, per actor incarnation (uid), the range of values that memory may
//! hold (`live`): one value when the last answer is known, wider after requests whose answer
//! was lost (a 502 or a dropped connection may or may not have been served), and the range
//! each snapshot was taken at. An answer must continue `live`. The only way back in time is a
//! *rollback* the system announced: the actor put back at its last good snapshot with
//! `Ready=False` and one of [`ROLLBACK_REASONS`]; the model then expects that snapshot's
//! value (no snapshot: the template's golden one, counter 0).
//!
//! Versions of the actor come from a watch on the apiserver ([`super::watch`]), fed to
//! [`ActorModel::observe`] in order. A snapshot first seen in a batch of versions was taken
//! somewhere between the previous batch and now, so it is recorded with the union of the
//! ranges `live` had over that interval (a slight leniency, never a false failure).

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;

use serde_json::Value;

/// `Ready` reasons with which the system puts a running actor back to its last good
/// snapshot (its sandbox is gone): the node agent's `SandboxLost`, `SandboxFenced` and
/// `CheckpointFailed`, the operator's `WorkerLost`.
pub const ROLLBACK_REASONS: [&str; 4] = [
    "SandboxLost",
    "SandboxFenced",
    "CheckpointFailed",
    "WorkerLost",
];

/// An inclusive range of counter values.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Count {
    pub lo: u64,
    pub hi: u64,
}

impl Count {
    pub const ZERO: Count = Count { lo: 0, hi: 0 };

    pub fn exactly(n: u64) -> Count {
        Count { lo: n, hi: n }
    }

    fn union(self, o: Count) -> Count {
        Count {
            lo: self.lo.min(o.lo),
            hi: self.hi.max(o.hi),
        }
    }

    /// Whether `answer` is the next value after this one.
    fn next_is(self, answer: u64) -> bool {
        answer > self.lo && answer <= self.hi + 1
    }
}

impl fmt::Display for Count {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.lo == self.hi {
            write!(f, "{}", self.lo)
        } else {
            write!(f, "{}..={}", self.lo, self.hi)
        }
    }
}

/// A rollback the system announced.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rollback {
    pub reason: String,
    pub message: String,
    /// The snapshot the actor went back to (None: its template's golden snapshot).
    pub snapshot: Option<String>,
    pub to: Count,
}

/// One actor incarnation.
#[derive(Debug, Clone)]
pub struct ActorModel {
    pub namespace: String,
    pub name: String,
    pub uid: String,
    /// What the memory of the actor holds (running) or will hold (suspended).
    pub live: Count,
    /// `live` at the end of the previous batch of observed versions.
    live_before_batch: Count,
    /// Counter range at each snapshot seen.
    pub snapshots: BTreeMap<String, Count>,
    /// Rollbacks applied, by (reason, lastTransitionTime) so a repeat is applied once.
    seen_rollbacks: BTreeSet<(String, String)>,
    pub rollbacks: Vec<Rollback>,
    /// The watch lost events (410) since the last known answer: a rollback may have been
    /// missed, so an answer continuing any known snapshot is accepted (and noted).
    pub gap: bool,
    /// Answers accepted only because of a gap.
    pub lenient: Vec<String>,
}

/// An answer the model cannot explain.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Mismatch {
    pub answer: u64,
    pub expected: Count,
    pub detail: String,
}

impl ActorModel {
    pub fn new(namespace: &str, name: &str, uid: &str) -> Self {
        ActorModel {
            namespace: namespace.into(),
            name: name.into(),
            uid: uid.into(),
            live: Count::ZERO,
            live_before_batch: Count::ZERO,
            snapshots: BTreeMap::new(),
            seen_rollbacks: BTreeSet::new(),
            rollbacks: Vec::new(),
            gap: false,
            lenient: Vec::new(),
        }
    }

    /// One version of this actor from the watch (in order). Versions of another uid are
    /// ignored.
    pub fn observe(&mut self, actor: &Value) {
        if actor["metadata"]["uid"].as_str() != Some(self.uid.as_str()) {
            return;
        }
        let snapshot = actor["status"]["snapshot"]["uri"]
            .as_str()
            .map(str::to_string);
        if let Some(uri) = &snapshot
            && !self.snapshots.contains_key(uri)
        {
            let at = self.live_before_batch.union(self.live);
            self.snapshots.insert(uri.clone(), at);
        }
        let Some(ready) = actor["status"]["conditions"]
            .as_array()
            .and_then(|cs| cs.iter().find(|c| c["type"] == "Ready"))
        else {
            return;
        };
        let reason = ready["reason"].as_str().unwrap_or_default();
        if ready["status"] != "False" || !ROLLBACK_REASONS.contains(&reason) {
            return;
        }
        let when = ready["lastTransitionTime"]
            .as_str()
            .unwrap_or_default()
            .to_string();
        if !self.seen_rollbacks.insert((reason.to_string(), when)) {
            return;
        }
        let to = match &snapshot {
            None => Count::ZERO,
            // Seen above, so known.
            Some(uri) => self.snapshots[uri],
        };
        self.rollbacks.push(Rollback {
            reason: reason.into(),
            message: ready["message"].as_str().unwrap_or_default().into(),
            snapshot,
            to,
        });
        self.live = to;
    }

    /// The end of a batch of observed versions.
    pub fn end_batch(&mut self) {
        self.live_before_batch = self.live;
    }

    /// The watch lost events (it had to list again).
    pub fn watch_gap(&mut self) {
        self.gap = true;
    }

    /// A request whose answer was lost (it may have been served).
    pub fn maybe_served(&mut self) {
        self.live.hi += 1;
    }

    /// A request answered `answer`: it must continue `live`.
    pub fn answered(&mut self, answer: u64) -> Result<(), Mismatch> {
        if self.live.next_is(answer) {
            self.live = Count::exactly(answer);
            self.gap = false;
            return Ok(());
        }
        if self.gap
            && (Count::ZERO.next_is(answer) || self.snapshots.values().any(|c| c.next_is(answer)))
        {
            self.lenient.push(format!(
                "answer {answer} (expected after {}) accepted as a rollback the watch may have missed",
                self.live
            ));
            self.live = Count::exactly(answer);
            self.gap = false;
            return Ok(());
        }
        Err(Mismatch {
            answer,
            expected: Count {
                lo: self.live.lo + 1,
                hi: self.live.hi + 1,
            },
            detail: self.describe(),
        })
    }

    /// Answers of requests sent at once (`lost` more were sent whose answers were lost):
    /// each request is served once, so the answers are distinct and, with nothing lost,
    /// exactly the values that follow `live`.
    pub fn answered_concurrently(&mut self, answers: &[u64], lost: usize) -> Result<(), Mismatch> {
        let mut sorted = answers.to_vec();
        sorted.sort_unstable();
        let distinct = sorted.windows(2).all(|w| w[0] < w[1]);
        let Some((&first, &last)) = sorted.first().zip(sorted.last()) else {
            self.live.hi += lost as u64;
            return Ok(());
        };
        let slack = lost as u64;
        let spread_ok = last - first < (sorted.len() as u64) + slack;
        let saved = self.clone();
        // The smallest answer continues the memory (a lost request may have come first).
        let mut continues = self.clone();
        continues.live.hi += slack;
        let first_ok = continues.answered(first);
        if distinct && spread_ok && first_ok.is_ok() {
            *self = continues;
            self.live = Count {
                lo: last,
                hi: last + slack,
            };
            return Ok(());
        }
        *self = saved;
        Err(Mismatch {
            answer: first,
            expected: Count {
                lo: self.live.lo + 1,
                hi: self.live.hi + 1 + slack,
            },
            detail: format!(
                "{} concurrent requests answered {sorted:?} ({lost} answers lost): {}; {}",
                answers.len() + lost,
                if distinct {
                    "distinct"
                } else {
                    "SERVED TWICE OR ANSWERED TWICE"
                },
                self.describe()
            ),
        })
    }

    /// Snapshots and rollbacks, for failure messages.
    pub fn describe(&self) -> String {
        let snaps: Vec<String> = self
            .snapshots
            .iter()
            .map(|(u, c)| format!("{u} at {c}"))
            .collect();
        let rbs: Vec<String> = self
            .rollbacks
            .iter()
            .map(|r| {
                format!(
                    "{} to {:?} (counter {}): {}",
                    r.reason, r.snapshot, r.to, r.message
                )
            })
            .collect();
        format!(
            "actor {}/{} uid {}: memory at {}; snapshots seen [{}]; rollbacks announced [{}]",
            self.namespace,
            self.name,
            self.uid,
            self.live,
            snaps.join(", "),
            rbs.join("; ")
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn version(uid: &str, snapshot: Option<&str>, ready: Option<(&str, &str, &str)>) -> Value {
        let mut a = json!({"metadata": {"uid": uid}, "status": {}});
        if let Some(s) = snapshot {
            a["status"]["snapshot"] = json!({"uri": s});
        }
        if let Some((status, reason, when)) = ready {
            a["status"]["conditions"] = json!([{"type": "Ready", "status": status,
                "reason": reason, "lastTransitionTime": when, "message": "m"}]);
        }
        a
    }

    #[test]
    fn answers_continue_the_memory() {
        let mut m = ActorModel::new("ns", "a", "u1");
        m.answered(1).unwrap();
        m.answered(2).unwrap();
        let e = m.answered(2).unwrap_err();
        assert_eq!(e.expected, Count::exactly(3));
        assert!(e.detail.contains("memory at 2"), "{}", e.detail);
    }

    #[test]
    fn a_lost_answer_widens_the_range_until_the_next_answer() {
        let mut m = ActorModel::new("ns", "a", "u1");
        m.answered(1).unwrap();
        m.maybe_served();
        assert_eq!(m.live, Count { lo: 1, hi: 2 });
        m.answered(3).unwrap();
        assert_eq!(m.live, Count::exactly(3));
        m.maybe_served();
        m.answered(4).unwrap();
        assert!(m.answered(1).is_err());
    }

    #[test]
    fn going_back_needs_an_announced_rollback_to_the_snapshot_it_names() {
        let mut m = ActorModel::new("ns", "a", "u1");
        m.answered(1).unwrap();
        m.answered(2).unwrap();
        m.end_batch();
        m.observe(&version(
            "u1",
            Some("s1"),
            Some(("False", "Suspended", "t1")),
        ));
        m.end_batch();
        m.answered(3).unwrap();
        m.answered(4).unwrap();
        m.end_batch();
        // Without a condition saying so, a return to the snapshot is a failure.
        let mut silent = m.clone();
        assert!(silent.answered(3).is_err());
        // Announced: the memory is the snapshot's.
        m.observe(&version(
            "u1",
            Some("s1"),
            Some(("False", "SandboxLost", "t2")),
        ));
        assert_eq!(m.live, Count::exactly(2));
        m.answered(3).unwrap();
        // The same condition seen again (another write of the object) is not a new one.
        m.answered(4).unwrap();
        m.observe(&version(
            "u1",
            Some("s1"),
            Some(("False", "SandboxLost", "t2")),
        ));
        assert_eq!(m.live, Count::exactly(4));
    }

    #[test]
    fn concurrent_answers_are_distinct_and_continue_the_memory() {
        let mut m = ActorModel::new("ns", "a", "u1");
        m.answered(1).unwrap();
        m.answered_concurrently(&[4, 2, 3], 0).unwrap();
        assert_eq!(m.live, Count::exactly(4));
        assert!(
            m.clone().answered_concurrently(&[5, 5], 0).is_err(),
            "twice the same"
        );
        assert!(
            m.clone().answered_concurrently(&[5, 7], 0).is_err(),
            "a gap with nothing lost"
        );
        m.answered_concurrently(&[5, 7], 1).unwrap();
        assert_eq!(m.live, Count { lo: 7, hi: 8 });
        m.answered(9).unwrap();
    }

    #[test]
    fn a_rollback_without_a_snapshot_goes_to_the_golden_counter() {
        let mut m = ActorModel::new("ns", "a", "u1");
        m.answered(1).unwrap();
        m.observe(&version("u1", None, Some(("False", "WorkerLost", "t1"))));
        m.answered(1).unwrap();
    }

    #[test]
    fn versions_of_another_incarnation_are_ignored() {
        let mut m = ActorModel::new("ns", "a", "u1");
        m.answered(1).unwrap();
        m.observe(&version(
            "u0",
            Some("old"),
            Some(("False", "SandboxLost", "t")),
        ));
        assert_eq!(m.live, Count::exactly(1));
        assert!(m.snapshots.is_empty());
    }

    #[test]
    fn a_snapshot_first_seen_after_a_request_is_recorded_with_both_values() {
        let mut m = ActorModel::new("ns", "a", "u1");
        m.answered(1).unwrap();
        m.end_batch();
        // The snapshot may have been taken before or after the request that answered 2.
        m.answered(2).unwrap();
        m.observe(&version("u1", Some("s1"), None));
        assert_eq!(m.snapshots["s1"], Count { lo: 1, hi: 2 });
    }

    #[test]
    fn a_watch_gap_accepts_a_return_to_a_known_snapshot_once_and_says_so() {
        let mut m = ActorModel::new("ns", "a", "u1");
        m.answered(1).unwrap();
        m.observe(&version("u1", Some("s1"), None));
        m.end_batch();
        m.answered(2).unwrap();
        m.answered(3).unwrap();
        m.watch_gap();
        m.answered(2).unwrap();
        assert_eq!(m.lenient.len(), 1);
        assert!(m.answered(2).is_err(), "the gap is spent");
    }
}
