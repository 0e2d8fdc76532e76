//! Every version of every actor, in order: a raw watch on the apiserver (curl with the
//! admin certificate, one JSON event per line) in a thread of its own. A watch that ends
//! (timeout, apiserver restart, Valkey restart) is resumed from the last resourceVersion, so
//! nothing is missed; when the apiserver no longer has that history (410) the thread lists
//! again and reports a gap, which the model takes into account.

use std::io::{BufRead, BufReader};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{Receiver, Sender, channel};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;

use serde_json::Value;

/// What the watch reports.
#[derive(Debug)]
pub enum Seen {
    /// A version of an actor (ADDED or MODIFIED; DELETED versions too, with `deleted`).
    Version { actor: Value, deleted: bool },
    /// Events were lost: the watch had to list again (the versions listed follow).
    Gap,
}

/// How to reach the apiserver.
#[derive(Debug, Clone)]
pub struct Endpoint {
    pub base: String,
    pub ca: PathBuf,
    pub cert: PathBuf,
    pub key: PathBuf,
}

impl Endpoint {
    fn curl(&self) -> Command {
        let mut c = Command::new("curl");
        c.args(["-sS", "--no-buffer", "--cacert"])
            .arg(&self.ca)
            .arg("--cert")
            .arg(&self.cert)
            .arg("--key")
            .arg(&self.key);
        c
    }
}

/// The watch thread; stopped when dropped.
pub struct ActorWatch {
    pub rx: Receiver<Seen>,
    stop: Arc<AtomicBool>,
    child: Arc<Mutex<Option<Child>>>,
    thread: Option<JoinHandle<()>>,
}

const ACTORS: &str = "/apis/substrate.ate.dev/v1alpha1/actors";

impl ActorWatch {
    pub fn start(ep: Endpoint) -> Self {
        let (tx, rx) = channel();
        let stop = Arc::new(AtomicBool::new(false));
        let child = Arc::new(Mutex::new(None));
        let thread = {
            let (stop, child) = (stop.clone(), child.clone());
            std::thread::spawn(move || run(&ep, &tx, &stop, &child))
        };
        ActorWatch {
            rx,
            stop,
            child,
            thread: Some(thread),
        }
    }

    /// Everything seen so far.
    pub fn drain(&self) -> Vec<Seen> {
        self.rx.try_iter().collect()
    }
}

impl Drop for ActorWatch {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(c) = self.child.lock().expect("watch child").as_mut() {
            let _ = c.kill();
        }
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// Lists the actors: (resourceVersion, items); None while the apiserver does not answer.
fn list(ep: &Endpoint) -> Option<(String, Vec<Value>)> {
    let out = ep
        .curl()
        .args(["--fail", "--max-time", "10"])
        .arg(format!("{}{ACTORS}", ep.base))
        .output()
        .ok()?;
    if !out.status.success() {
        return None;
    }
    let l: Value = serde_json::from_slice(&out.stdout).ok()?;
    let rv = l["metadata"]["resourceVersion"].as_str()?.to_string();
    Some((rv, l["items"].as_array().cloned().unwrap_or_default()))
}

fn run(ep: &Endpoint, tx: &Sender<Seen>, stop: &AtomicBool, child: &Mutex<Option<Child>>) {
    let mut rv: Option<String> = None;
    while !stop.load(Ordering::SeqCst) {
        let Some(from) = rv.clone() else {
            match list(ep) {
                Some((v, items)) => {
                    for actor in items {
                        let _ = tx.send(Seen::Version {
                            actor,
                            deleted: false,
                        });
                    }
                    rv = Some(v);
                }
                None => std::thread::sleep(Duration::from_millis(200)),
            }
            continue;
        };
        let spawned = ep
            .curl()
            .arg(format!(
                "{}{ACTORS}?watch=true&allowWatchBookmarks=true&timeoutSeconds=60&resourceVersion={from}",
                ep.base
            ))
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn();
        let Ok(mut c) = spawned else {
            std::thread::sleep(Duration::from_millis(200));
            continue;
        };
        let out = c.stdout.take().expect("piped stdout");
        *child.lock().expect("watch child") = Some(c);
        let mut expired = false;
        for line in BufReader::new(out).lines() {
            let Ok(line) = line else { break };
            let Ok(ev) = serde_json::from_str::<Value>(&line) else {
                continue;
            };
            let obj = &ev["object"];
            match ev["type"].as_str().unwrap_or_default() {
                "ERROR" => {
                    // 410: the history no longer reaches `from`.
                    expired = obj["code"] == 410;
                    break;
                }
                t => {
                    if let Some(v) = obj["metadata"]["resourceVersion"].as_str() {
                        rv = Some(v.to_string());
                    }
                    if t != "BOOKMARK" {
                        let _ = tx.send(Seen::Version {
                            actor: obj.clone(),
                            deleted: t == "DELETED",
                        });
                    }
                }
            }
        }
        if let Some(mut c) = child.lock().expect("watch child").take() {
            let _ = c.kill();
            let _ = c.wait();
        }
        if expired {
            let _ = tx.send(Seen::Gap);
            rv = None;
        } else {
            // Ended (timeout, apiserver gone): resume from `rv` after a breath.
            std::thread::sleep(Duration::from_millis(200));
        }
    }
}
