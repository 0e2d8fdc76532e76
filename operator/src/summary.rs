//! Bounded failure logging: the first failure of a kind (per controller and error kind) in an
//! interval is logged in full; the others are only counted, and at the end of the interval
//! one line says how many more there were. A thousand objects failing alike make two lines
//! per interval, not a thousand per pass.
//!
//! [`Summary`] is pure (the time is passed in); the controllers' runner logs what it says.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

/// Default length of a summary interval.
pub const DEFAULT_INTERVAL: Duration = Duration::from_secs(10);

/// Which failures count as alike.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct Key {
    pub controller: &'static str,
    pub kind: String,
}

/// What the caller should log for one failure.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Record {
    /// The first of its kind in this interval: log it in full.
    Log,
    /// Counted; summarised at the end of the interval.
    Counted,
}

/// One summary line: `suppressed` failures like `example` in the last `interval`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Line {
    pub key: Key,
    pub suppressed: u64,
    pub example: String,
}

#[derive(Debug)]
struct Window {
    started: Instant,
    suppressed: u64,
    example: String,
}

/// The failure counters of the current intervals.
#[derive(Debug)]
pub struct Summary {
    interval: Duration,
    windows: BTreeMap<Key, Window>,
    /// Lines of intervals closed by a new failure before [`Summary::flush`] ran.
    closed: Vec<Line>,
}

impl Summary {
    pub fn new(interval: Duration) -> Self {
        Summary {
            interval,
            windows: BTreeMap::new(),
            closed: Vec::new(),
        }
    }

    pub fn interval(&self) -> Duration {
        self.interval
    }

    /// Records a failure (`example`: its message, e.g. with the object's name).
    pub fn record(&mut self, key: Key, example: &str, now: Instant) -> Record {
        match self.windows.get_mut(&key) {
            Some(w) if now.duration_since(w.started) < self.interval => {
                if w.suppressed == 0 {
                    w.example = example.to_string();
                }
                w.suppressed += 1;
                Record::Counted
            }
            _ => {
                if let Some(old) = self.windows.get_mut(&key)
                    && old.suppressed > 0
                {
                    self.closed.push(Line {
                        key: key.clone(),
                        suppressed: old.suppressed,
                        example: std::mem::take(&mut old.example),
                    });
                }
                self.windows.insert(
                    key,
                    Window {
                        started: now,
                        suppressed: 0,
                        example: String::new(),
                    },
                );
                Record::Log
            }
        }
    }

    /// Closes the intervals that are over: one line for each that counted failures besides
    /// the one logged. A key then logs its next failure in full again.
    pub fn flush(&mut self, now: Instant) -> Vec<Line> {
        let interval = self.interval;
        let mut out = std::mem::take(&mut self.closed);
        self.windows.retain(|key, w| {
            if now.duration_since(w.started) < interval {
                return true;
            }
            if w.suppressed > 0 {
                out.push(Line {
                    key: key.clone(),
                    suppressed: w.suppressed,
                    example: std::mem::take(&mut w.example),
                });
            }
            false
        });
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(c: &'static str, k: &str) -> Key {
        Key {
            controller: c,
            kind: k.into(),
        }
    }

    #[test]
    fn alike_failures_make_one_line_and_one_summary_per_interval() {
        let t0 = Instant::now();
        let mut s = Summary::new(Duration::from_secs(10));
        let k = key("lifecycle", "api 500 InternalError");
        assert_eq!(s.record(k.clone(), "a0", t0), Record::Log);
        for i in 1..1000 {
            let at = t0 + Duration::from_millis(i);
            assert_eq!(s.record(k.clone(), &format!("a{i}"), at), Record::Counted);
        }
        // Another kind or controller is logged on its own.
        assert_eq!(
            s.record(key("pool", "api 500 InternalError"), "p", t0),
            Record::Log
        );
        assert_eq!(s.record(key("lifecycle", "http"), "b", t0), Record::Log);
        assert!(
            s.flush(t0 + Duration::from_secs(5)).is_empty(),
            "not over yet"
        );
        let lines = s.flush(t0 + Duration::from_secs(10));
        assert_eq!(
            lines,
            [Line {
                key: k.clone(),
                suppressed: 999,
                example: "a1".into()
            }]
        );
        // A new interval: the next failure is logged in full again.
        assert_eq!(
            s.record(k.clone(), "a", t0 + Duration::from_secs(11)),
            Record::Log
        );
        assert!(
            s.flush(t0 + Duration::from_secs(30)).is_empty(),
            "nothing suppressed"
        );
    }
}
