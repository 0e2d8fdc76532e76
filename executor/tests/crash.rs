//! (d) The `substrate-executor` binary killed with SIGKILL — while idle with a running actor,
//! in the middle of a checkpoint and in the middle of a restore — and restarted: it reports
//! a state consistent with runsc (nothing leaked, nothing lost) and retries converge.
//! Also: SIGTERM leaves the sandbox running and the next executor adopts it.

mod common;

use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::*;
use executor::proto::{Phase, WorkerStatus};
use executor::runsc::{Runsc, RunscConfig};
use executor::{ActorKey, ExecutorClient};

struct Bin {
    child: Child,
    socket: PathBuf,
    state_dir: PathBuf,
    name: String,
    index: u32,
}

impl Drop for Bin {
    /// After a panic: stop the executor and remove what it left (sandbox, veth, netns).
    fn drop(&mut self) {
        if matches!(self.child.try_wait(), Ok(None)) {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
        if std::thread::panicking() {
            cleanup_worker_blocking(&self.name, self.index, &self.state_dir.join("runsc"));
        }
    }
}

impl Bin {
    fn start(name: &str, index: u32, state_dir: &Path) -> Self {
        let log = fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(state_dir.with_extension("log"))
            .unwrap();
        let child = Command::new(env!("CARGO_BIN_EXE_substrate-executor"))
            .args(["--worker-name", name, "--index", &index.to_string()])
            .arg("--state-dir")
            .arg(state_dir)
            .env("RUST_LOG", "info")
            .env_remove("RUST_BACKTRACE")
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .unwrap();
        Self {
            child,
            socket: state_dir.join("executor.sock"),
            state_dir: state_dir.to_path_buf(),
            name: name.to_string(),
            index,
        }
    }

    /// Connects once the executor serves and has finished recovering.
    async fn client(&mut self) -> ExecutorClient {
        let start = Instant::now();
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                panic!(
                    "executor exited with {status}; log:\n{}",
                    fs::read_to_string(self.state_dir.with_extension("log")).unwrap_or_default()
                );
            }
            if let Ok(mut c) = ExecutorClient::connect(&self.socket).await
                && let Ok(st) = c.status().await
                && st.phase() != Phase::Recovering
            {
                return c;
            }
            assert!(
                start.elapsed() < Duration::from_secs(60),
                "executor did not come up"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    fn kill9(&mut self) {
        self.child.kill().unwrap();
        self.child.wait().unwrap();
    }

    fn terminate(&mut self) {
        nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(self.child.id() as i32),
            nix::sys::signal::Signal::SIGTERM,
        )
        .unwrap();
        let status = self.child.wait().unwrap();
        assert!(status.success(), "SIGTERM exit: {status}");
    }
}

/// Asserts that the status agrees with runsc: Running ⇔ exactly the actor's container is
/// running; Idle ⇔ no container at all.
async fn assert_consistent(st: &WorkerStatus, runsc: &Runsc, actor: &ActorKey) {
    let list = runsc.list().await.unwrap();
    match st.phase() {
        Phase::Running => {
            assert_eq!(st.actor, actor.to_string());
            assert_eq!(list.len(), 1, "exactly one container: {list:?}");
            assert_eq!(list[0].id, actor.container_id());
            assert!(list[0].status.is_live());
            assert_eq!(st.sandbox.as_ref().unwrap().pid, list[0].pid);
        }
        Phase::Idle => {
            assert!(list.is_empty(), "idle worker leaks containers: {list:?}");
            assert!(st.sandbox.is_none());
        }
        other => panic!("unexpected phase after recovery: {other:?} ({st:?})"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn executor_crashes_converge() {
    if !runsc_available("executor_crashes_converge") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let rootfs = busybox_rootfs(dir.path());
    let spec = counter_spec(&rootfs);
    let (name, idx) = ("xt-crash", 16306);
    clean_worker_network(name, idx).await;
    let state_dir = dir.path().join("state");
    fs::create_dir_all(&state_dir).unwrap();
    let runsc = Runsc::new(RunscConfig {
        root: state_dir.join("runsc"),
        ..RunscConfig::default()
    });
    let ip = worker_ip(idx);
    let actor: ActorKey = "crash/counter".parse().unwrap();

    // 1. Run, then SIGKILL the executor: the actor keeps running; the next executor adopts it.
    let mut bin = Bin::start(name, idx, &state_dir);
    let mut c = bin.client().await;
    let out = c.run(&actor, "run-1", &spec).await.unwrap();
    let pid = out.status.unwrap().sandbox.unwrap().pid;
    let marker = get_async(ip, "/data/marker").await;
    let n = counter_async(ip, 3).await;
    bin.kill9();
    let n = counter_async(ip, n + 2).await; // still serving and counting without an executor
    let mut bin = Bin::start(name, idx, &state_dir);
    let mut c = bin.client().await;
    let st = c.status().await.unwrap();
    assert_eq!(st.phase(), Phase::Running);
    assert_eq!(
        st.sandbox.as_ref().unwrap().pid,
        pid,
        "adopted, not rebooted"
    );
    assert_consistent(&st, &runsc, &actor).await;
    assert!(c.run(&actor, "run-1", &spec).await.unwrap().already_done);

    // 2. SIGTERM (policy leave): the sandbox stays and is adopted again.
    bin.terminate();
    let mut bin = Bin::start(name, idx, &state_dir);
    let mut c = bin.client().await;
    let st = c.status().await.unwrap();
    assert_eq!(st.sandbox.as_ref().unwrap().pid, pid);
    let mut n = counter_async(ip, n + 1).await;

    // 3./4. SIGKILL in the middle of a checkpoint, then of a restore, at several points.
    for (round, (ck_delay, restore_delay)) in [(60u64, 150u64), (5, 20), (150, 400)]
        .into_iter()
        .enumerate()
    {
        // 3. SIGKILL in the middle of a checkpoint.
        let img = dir.path().join(format!("images/crash-{round}"));
        let ck = {
            let mut c = c.clone();
            let (actor, img) = (actor.clone(), img.clone());
            tokio::spawn(async move { c.checkpoint(&actor, &format!("ck-{round}"), &img).await })
        };
        tokio::time::sleep(Duration::from_millis(ck_delay)).await;
        bin.kill9();
        let first = ck.await.unwrap();
        bin = Bin::start(name, idx, &state_dir);
        c = bin.client().await;
        let st = c.status().await.unwrap();
        println!(
            "MEASURE crash {ck_delay} ms into a checkpoint: call {} -> after restart {:?}",
            if first.is_ok() {
                "completed"
            } else {
                "interrupted"
            },
            st.phase()
        );
        assert_consistent(&st, &runsc, &actor).await;
        if st.phase() == Phase::Idle {
            let marker_file = executor::worker::read_marker(&img)
                .expect("a free worker means a complete checkpoint");
            assert_eq!(marker_file.actor, actor.to_string());
        } else {
            counter_async(ip, n).await;
        }
        // The caller's retry converges either way.
        let ck = c
            .checkpoint(&actor, &format!("ck-{round}"), &img)
            .await
            .unwrap();
        assert_eq!(ck.status.unwrap().phase(), Phase::Idle);
        assert!(img.join(executor::worker::CHECKPOINT_MARKER).is_file());
        let st = c.status().await.unwrap();
        assert_consistent(&st, &runsc, &actor).await;

        // 4. SIGKILL in the middle of a restore.
        let rs = {
            let mut c = c.clone();
            let (actor, img, spec) = (actor.clone(), img.clone(), spec.clone());
            tokio::spawn(async move {
                c.restore(&actor, &format!("restore-{round}"), &spec, &img)
                    .await
            })
        };
        tokio::time::sleep(Duration::from_millis(restore_delay)).await;
        bin.kill9();
        let first = rs.await.unwrap();
        bin = Bin::start(name, idx, &state_dir);
        c = bin.client().await;
        let st = c.status().await.unwrap();
        println!(
            "MEASURE crash {restore_delay} ms into a restore: call {} -> after restart {:?}",
            if first.is_ok() {
                "completed"
            } else {
                "interrupted"
            },
            st.phase()
        );
        assert_consistent(&st, &runsc, &actor).await;
        let r = c
            .restore(&actor, &format!("restore-{round}"), &spec, &img)
            .await
            .unwrap();
        assert_eq!(r.status.unwrap().phase(), Phase::Running);
        // Memory and files are those of the checkpoint: same boot marker, counter continues.
        assert_eq!(get_async(ip, "/data/marker").await, marker);
        let after = counter_async(ip, n).await;
        assert!(after >= n, "counter continued: {after} >= {n}");
        let st = c.status().await.unwrap();
        assert_consistent(&st, &runsc, &actor).await;

        n = after;
    }
    // Clean up: kill the actor, stop the executor, remove the network.
    c.kill(&actor, "cleanup").await.unwrap();
    bin.terminate();
    assert!(runsc.list().await.unwrap().is_empty());
    clean_worker_network(name, idx).await;
}
