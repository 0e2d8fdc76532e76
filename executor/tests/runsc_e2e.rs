//! Real runsc, real network namespaces, real HTTP, through the gRPC API of in-process
//! executor daemons. Needs root, runsc, util-linux unshare and busybox-static (see
//! `common::runsc_available`). Timings and image sizes are printed, never asserted
//! (`cargo test -p executor --test runsc_e2e -- --nocapture` shows them).

mod common;

use std::time::{Duration, Instant};

use common::*;
use executor::proto::Phase;
use executor::{ActorKey, ErrorKind};
use tonic::Code;

fn key(s: &str) -> ActorKey {
    s.parse().unwrap()
}

/// (a) Boot on worker 1, checkpoint, restore on worker 2 (other netns, other IP): the
/// in-memory counter continues, files written before the checkpoint (root overlay and
/// tmpfs) are there, the actor answers on worker 2's IP. Then back to worker 1.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn memory_and_files_survive_a_move_between_workers() {
    if !runsc_available("memory_and_files_survive_a_move_between_workers") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let rootfs = busybox_rootfs(dir.path());
    let spec = counter_spec(&rootfs);
    let (i1, i2) = (16301, 16302);
    let mut w1 = InProcess::start(daemon_config("xt-move-1", i1, dir.path())).await;
    let w2 = InProcess::start(daemon_config("xt-move-2", i2, dir.path())).await;
    let (ip1, ip2) = (worker_ip(i1), worker_ip(i2));
    let actor = key("e2e/counter");

    let t = Instant::now();
    let out = w1.client.run(&actor, "run-1", &spec).await.unwrap();
    let boot_wall = t.elapsed();
    let st = out.status.unwrap();
    assert_eq!(st.phase(), Phase::Running);
    assert_eq!(st.actor, "e2e/counter");
    assert_eq!(st.network.as_ref().unwrap().worker_ip, ip1.to_string());
    assert!(st.sandbox.as_ref().unwrap().pid > 0);

    let marker = get_async(ip1, "/data/marker").await;
    let tmp = get_async(ip1, "/tmp/t").await;
    assert!(marker.starts_with("booted-"), "{marker}");
    assert!(tmp.starts_with("tmp-"), "{tmp}");
    let before = counter_async(ip1, 5).await;
    // The shared rootfs was not written: writes went to the sandbox's memory overlay.
    assert!(!rootfs.join("data/marker").exists());
    assert!(!rootfs.join("www/counter").exists());

    let mut report = Vec::new();
    let mut ws = [w1, w2];
    let ips = [ip1, ip2];
    for round in 0..2 {
        let (from, to) = pair(&mut ws, round % 2);
        let (ip_from, ip_to) = (ips[round % 2], ips[(round + 1) % 2]);
        let counter_before = counter_async(ip_from, 1).await;
        let img = dir.path().join(format!("images/round-{round}"));
        let t = Instant::now();
        let ck = from
            .client
            .checkpoint(&actor, &format!("ck-{round}"), &img)
            .await
            .unwrap();
        let ck_wall = t.elapsed();
        assert!(!ck.already_done);
        let st = ck.status.unwrap();
        assert_eq!(
            st.phase(),
            Phase::Idle,
            "the worker is free after a checkpoint"
        );
        assert!(st.sandbox.is_none());
        let info = ck.checkpoint.unwrap();
        assert_eq!(info.actor, "e2e/counter");
        assert!(
            info.files
                .iter()
                .any(|f| f.name == "checkpoint.img" && f.size > 0)
        );
        assert!(img.join(executor::worker::CHECKPOINT_MARKER).is_file());
        let gone = tokio::task::spawn_blocking(move || http_get(ip_from, 8080, "/www/counter"))
            .await
            .unwrap();
        assert!(
            !matches!(gone, Ok((200, _))),
            "the old worker must not serve the actor any more: {gone:?}"
        );
        let (raw, zst) = image_sizes(&img);

        let t = Instant::now();
        let rs = to
            .client
            .restore(&actor, &format!("restore-{round}"), &spec, &img)
            .await
            .unwrap();
        let restore_wall = t.elapsed();
        let st = rs.status.unwrap();
        assert_eq!(st.phase(), Phase::Running);
        assert_eq!(st.network.unwrap().worker_ip, ip_to.to_string());

        assert_eq!(
            get_async(ip_to, "/data/marker").await,
            marker,
            "root overlay file survived"
        );
        assert_eq!(get_async(ip_to, "/tmp/t").await, tmp, "tmpfs file survived");
        let after = counter_async(ip_to, counter_before).await;
        assert!(
            after >= counter_before,
            "counter continued: {after} >= {counter_before}"
        );
        let later = counter_async(ip_to, after + 2).await;
        assert!(later > after, "the restored loop keeps counting");
        report.push(format!(
            "round {round}: checkpoint runsc {:.3}s (rpc {:.3}s), restore runsc {:.3}s (rpc {:.3}s), image {raw} B raw, {zst} B zstd-3 ({:.1}x), counter {counter_before} -> {after}",
            ck.timing.unwrap().runsc_seconds,
            ck_wall.as_secs_f64(),
            rs.timing.unwrap().runsc_seconds,
            restore_wall.as_secs_f64(),
            raw as f64 / zst.max(1) as f64,
        ));
    }
    let [mut w1, w2] = ws;
    assert!(!rootfs.join("data/marker").exists());
    println!(
        "MEASURE cold boot (run) rpc {:.3}s",
        boot_wall.as_secs_f64()
    );
    for r in &report {
        println!("MEASURE {r}");
    }
    assert!(before >= 5);

    w1.client.kill(&actor, "cleanup").await.unwrap();
    w1.stop().await;
    w2.stop().await;
}

/// The daemon at `from` and the other one.
fn pair(ws: &mut [InProcess; 2], from: usize) -> (&mut InProcess, &mut InProcess) {
    let (l, r) = ws.split_at_mut(1);
    if from == 0 {
        (&mut l[0], &mut r[0])
    } else {
        (&mut r[0], &mut l[0])
    }
}

/// Opens a TCP connection to the actor and leaves it idle mid-request.
async fn open_connection(ip: std::net::Ipv4Addr) -> std::net::TcpStream {
    tokio::task::spawn_blocking(move || {
        use std::io::Write;
        let mut s = std::net::TcpStream::connect_timeout(
            &std::net::SocketAddr::from((ip, 8080)),
            Duration::from_secs(2),
        )
        .unwrap();
        s.write_all(b"GET /www/counter HTTP/1.0\r\n").unwrap();
        s
    })
    .await
    .unwrap()
}

/// (b) A checkpoint while a client holds an open TCP connection: succeeds with
/// `--net-disconnect-ok` (the default); without it runsc refuses the save and kills the
/// sandbox, which the executor reports as the distinct `checkpoint_failed` /
/// sandbox-lost error and from which the worker recovers (free, bootable again).
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn checkpoint_with_an_open_connection() {
    if !runsc_available("checkpoint_with_an_open_connection") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let rootfs = busybox_rootfs(dir.path());
    let spec = counter_spec(&rootfs);
    let actor = key("e2e/conn");

    // With --net-disconnect-ok.
    let idx = 16303;
    let mut w = InProcess::start(daemon_config("xt-conn-ok", idx, dir.path())).await;
    let ip = worker_ip(idx);
    w.client.run(&actor, "run", &spec).await.unwrap();
    let n = counter_async(ip, 3).await;
    let conn = open_connection(ip).await;
    let img = dir.path().join("images/conn-ok");
    let ck = w.client.checkpoint(&actor, "ck", &img).await.unwrap();
    assert_eq!(ck.status.unwrap().phase(), Phase::Idle);
    drop(conn);
    w.client
        .restore(&actor, "restore", &spec, &img)
        .await
        .unwrap();
    assert!(counter_async(ip, n).await >= n);
    w.client.kill(&actor, "cleanup").await.unwrap();
    w.stop().await;

    // Without it.
    let idx = 16304;
    let mut cfg = daemon_config("xt-conn-strict", idx, dir.path());
    cfg.runsc.net_disconnect_ok = false;
    let mut w = InProcess::start(cfg).await;
    let ip = worker_ip(idx);
    w.client.run(&actor, "run", &spec).await.unwrap();
    let marker = get_async(ip, "/data/marker").await;
    counter_async(ip, 3).await;
    let conn = open_connection(ip).await;
    let img = dir.path().join("images/conn-strict");
    let err = w.client.checkpoint(&actor, "ck", &img).await.unwrap_err();
    drop(conn);
    assert_eq!(err.code(), Code::Aborted, "{err}");
    assert_eq!(err.kind(), Some(ErrorKind::CheckpointFailed), "{err}");
    assert_eq!(err.sandbox_lost(), Some(true), "{err}");
    assert!(
        err.to_string().contains("connected state"),
        "runsc's reason is kept: {err}"
    );
    println!(
        "MEASURE failed checkpoint error: {}",
        err.to_string().chars().take(300).collect::<String>()
    );
    assert!(!img.join(executor::worker::CHECKPOINT_MARKER).exists());
    let st = w.client.status().await.unwrap();
    assert_eq!(st.phase(), Phase::Idle, "the worker is free again");
    assert!(st.sandbox.is_none(), "the dead sandbox was deleted");
    // A retry of the checkpoint now fails cleanly instead of pretending.
    let err = w
        .client
        .checkpoint(&actor, "ck-retry", &img)
        .await
        .unwrap_err();
    assert_eq!(err.kind(), Some(ErrorKind::NotRunning), "{err}");
    // The worker boots again (a fresh boot: new marker).
    w.client.run(&actor, "run-2", &spec).await.unwrap();
    assert_ne!(get_async(ip, "/data/marker").await, marker);
    w.stop().await;
    // Stopping with the kill policy leaves no cgroup behind (runsc can leave an empty one
    // after a sandbox died on its own).
    let leaked: Vec<_> = std::fs::read_dir("/sys/fs/cgroup")
        .unwrap()
        .flatten()
        .map(|e| e.path().join("substrate/xt-conn-strict"))
        .filter(|p| p.exists())
        .collect();
    assert!(leaked.is_empty(), "leaked cgroups: {leaked:?}");
}

/// (c) Idempotency and precise errors through the gRPC API.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn operations_are_idempotent_and_errors_precise() {
    if !runsc_available("operations_are_idempotent_and_errors_precise") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let rootfs = busybox_rootfs(dir.path());
    let spec = counter_spec(&rootfs);
    let idx = 16305;
    let mut w = InProcess::start(daemon_config("xt-idem", idx, dir.path())).await;
    let c = &mut w.client;
    let ip = worker_ip(idx);
    let (a, b) = (key("e2e/a"), key("e2e/b"));

    let first = c.run(&a, "run-a", &spec).await.unwrap();
    assert!(!first.already_done);
    let pid = first.status.unwrap().sandbox.unwrap().pid;
    let again = c.run(&a, "run-a", &spec).await.unwrap();
    assert!(again.already_done);
    assert_eq!(
        again.status.unwrap().sandbox.unwrap().pid,
        pid,
        "same sandbox"
    );
    counter_async(ip, 3).await;

    let err = c.run(&b, "run-b", &spec).await.unwrap_err();
    assert_eq!(
        (err.code(), err.kind()),
        (Code::FailedPrecondition, Some(ErrorKind::Busy))
    );
    assert!(err.to_string().contains("e2e/a"), "{err}");
    let img = dir.path().join("images/a");
    let err = c.restore(&b, "restore-b", &spec, &img).await.unwrap_err();
    assert_eq!(err.kind(), Some(ErrorKind::ImageNotFound), "{err}");
    assert_eq!(err.code(), Code::NotFound);

    let ck1 = c.checkpoint(&a, "ck-a", &img).await.unwrap();
    assert!(!ck1.already_done);
    let ck2 = c.checkpoint(&a, "ck-a", &img).await.unwrap();
    assert!(ck2.already_done, "a repeated checkpoint is a no-op");
    assert_eq!(ck2.checkpoint, ck1.checkpoint);
    let err = c
        .checkpoint(&b, "ck-b", &dir.path().join("images/b"))
        .await
        .unwrap_err();
    assert_eq!(
        (err.code(), err.kind()),
        (Code::FailedPrecondition, Some(ErrorKind::NotRunning))
    );

    let r1 = c.restore(&a, "restore-a", &spec, &img).await.unwrap();
    assert!(!r1.already_done);
    let pid = r1.status.unwrap().sandbox.unwrap().pid;
    let r2 = c.restore(&a, "restore-a", &spec, &img).await.unwrap();
    assert!(r2.already_done);
    assert_eq!(r2.status.unwrap().sandbox.unwrap().pid, pid);
    // b cannot be restored from a's image.
    let err = c.restore(&b, "restore-b", &spec, &img).await.unwrap_err();
    assert_eq!(err.kind(), Some(ErrorKind::InvalidArgument), "{err}");
    assert!(err.to_string().contains("belongs to actor e2e/a"), "{err}");

    let k1 = c.kill(&a, "kill-a").await.unwrap();
    assert!(!k1.already_done);
    assert_eq!(k1.status.unwrap().phase(), Phase::Idle);
    assert!(c.kill(&a, "kill-a").await.unwrap().already_done);

    // Bad input.
    let err = c
        .raw()
        .run(executor::proto::RunRequest {
            actor: "not a key".into(),
            operation_id: "x".into(),
            spec: Some(executor::grpc::spec_to_proto(&spec)),
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument);
    assert!(err.message().contains("not a key"), "{}", err.message());
    let mut bad = spec.clone();
    bad.rootfs = "relative/rootfs".into();
    let err = c.run(&a, "x", &bad).await.unwrap_err();
    assert_eq!(err.kind(), Some(ErrorKind::InvalidArgument));
    assert!(err.to_string().contains("relative/rootfs"), "{err}");
    let err = c.run(&a, "", &spec).await.unwrap_err();
    assert!(err.to_string().contains("operation_id"), "{err}");
    let mut bad = spec.clone();
    bad.process.args = vec!["/bin/does-not-exist".into()];
    let err = c.run(&a, "bad-binary", &bad).await.unwrap_err();
    println!("MEASURE bad binary error: {err}");
    assert_eq!(
        c.status().await.unwrap().phase(),
        Phase::Idle,
        "a failed boot frees the worker"
    );

    // A workload that exits on its own: reported as EXITED, and it does not block the worker.
    let mut short = spec.clone();
    short.process.args = vec!["/bin/sh".into(), "-c".into(), "sleep 1; exit 3".into()];
    c.run(&a, "short", &short).await.unwrap();
    let start = Instant::now();
    loop {
        let st = c.status().await.unwrap();
        if st.phase() == Phase::Exited {
            assert_eq!(st.actor, "e2e/a");
            break;
        }
        assert_eq!(st.phase(), Phase::Running);
        assert!(
            start.elapsed() < Duration::from_secs(20),
            "workload never exited"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let out = c.run(&b, "run-b-2", &spec).await.unwrap();
    assert_eq!(out.status.unwrap().actor, "e2e/b");
    counter_async(ip, 2).await;
    w.stop().await;
}
