//! The worker network against the real kernel (root): setup, idempotency, convergence from
//! broken states, host → worker reachability over the veth, teardown. No runsc needed.

mod common;

use std::fs;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

use executor::net::{AddrRange, NetSpec, WorkerNet, teardown};

fn ip(args: &[&str]) -> String {
    let out = Command::new("ip").args(args).output().unwrap();
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn root_available(test: &str) -> bool {
    let mut missing = Vec::new();
    if !nix::unistd::geteuid().is_root() {
        missing.push("root privileges");
    }
    if !Path::new("/usr/sbin/ip").exists() && !Path::new("/sbin/ip").exists() {
        missing.push("iproute2 (for the assertions)");
    }
    if missing.is_empty() {
        return true;
    }
    let msg = format!("{test}: needs {}", missing.join(", "));
    if std::env::var("SUBSTRATE_REQUIRE_RUNSC").as_deref() == Ok("1") {
        panic!("{msg} (SUBSTRATE_REQUIRE_RUNSC=1)");
    }
    eprintln!("SKIPPED {msg}");
    false
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn worker_network_setup_converges_and_tears_down() {
    if !root_available("worker_network_setup_converges_and_tears_down") {
        return;
    }
    let forwarding_before = fs::read_to_string("/proc/sys/net/ipv4/ip_forward").unwrap();
    let spec = NetSpec::new("xt-net", 16307, AddrRange::default()).unwrap();
    teardown(&spec).await.unwrap();
    let ns = spec.netns_name();
    let addrs = spec.addrs();

    let (net, report) = WorkerNet::setup(spec.clone()).await.unwrap();
    assert!(report.created_netns && report.recreated_veth);
    assert!(ip(&["route", "show", "type", "unreachable"]).contains("10.203.0.0/16"));
    assert!(ip(&["netns", "list"]).contains(&ns));
    let host = ip(&["-br", "addr", "show", "dev", &spec.host_if()]);
    assert!(host.contains(&format!("{}/30", addrs.host)), "{host}");
    let inside = ip(&["-n", &ns, "-br", "addr"]);
    assert!(inside.contains("eth0"), "{inside}");
    assert!(
        !inside.contains(&addrs.worker.to_string()),
        "setup leaves the sandbox address to prepare_for_boot: {inside}"
    );

    net.prepare_for_boot().await.unwrap();
    net.prepare_for_boot().await.unwrap(); // idempotent
    let inside = ip(&["-n", &ns, "-br", "addr", "show", "dev", "eth0"]);
    assert!(inside.contains(&format!("{}/30", addrs.worker)), "{inside}");
    assert!(inside.contains("UP"), "{inside}");
    let routes = ip(&["-n", &ns, "route"]);
    assert!(
        routes.contains(&format!("default via {} dev eth0", addrs.host)),
        "{routes}"
    );

    // The host reaches a server inside the namespace at the worker address.
    let www = tempfile::tempdir().unwrap();
    fs::write(www.path().join("index.html"), "hello from the netns").unwrap();
    let mut server = Command::new("ip")
        .args([
            "netns",
            "exec",
            &ns,
            "/bin/busybox",
            "httpd",
            "-f",
            "-p",
            "8080",
            "-h",
        ])
        .arg(www.path())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let worker = addrs.worker;
    let body = tokio::task::spawn_blocking(move || {
        common::wait_get(worker, "/index.html", Duration::from_secs(10))
    })
    .await
    .unwrap();
    server.kill().unwrap();
    server.wait().unwrap();
    assert_eq!(body, "hello from the netns");

    // A second setup reuses everything.
    drop(net);
    let (net, report) = WorkerNet::setup(spec.clone()).await.unwrap();
    assert!(
        !report.created_netns && !report.recreated_veth,
        "{report:?}"
    );
    drop(net);

    // The sandbox end vanished (e.g. deleted by hand): the pair is recreated.
    assert!(
        Command::new("ip")
            .args(["-n", &ns, "link", "del", "eth0"])
            .status()
            .unwrap()
            .success()
    );
    let (net, report) = WorkerNet::setup(spec.clone()).await.unwrap();
    assert!(!report.created_netns && report.recreated_veth, "{report:?}");
    net.prepare_for_boot().await.unwrap();
    assert!(ip(&["-n", &ns, "-br", "addr"]).contains(&addrs.worker.to_string()));

    // A stale namespace file (e.g. after a reboot, /run/netns on disk): replaced.
    net.teardown().await.unwrap();
    assert!(!ip(&["netns", "list"]).contains(&ns));
    assert!(
        ip(&["-br", "link"])
            .lines()
            .all(|l| !l.starts_with(&spec.host_if()))
    );
    fs::write(spec.netns_path(), b"").unwrap();
    let (net, report) = WorkerNet::setup(spec.clone()).await.unwrap();
    assert!(report.created_netns);
    net.teardown().await.unwrap();
    teardown(&spec).await.unwrap(); // idempotent
    assert!(!spec.netns_path().exists());

    // The unreachable route stays (it protects every worker of the range); no forwarding.
    assert!(ip(&["route", "show", "type", "unreachable"]).contains("10.203.0.0/16"));
    assert_eq!(
        fs::read_to_string("/proc/sys/net/ipv4/ip_forward").unwrap(),
        forwarding_before
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_range_in_use_on_the_host_is_refused() {
    if !root_available("a_range_in_use_on_the_host_is_refused") {
        return;
    }
    // Something on the host already routes part of the range (here: a local route on lo,
    // which keeps the test's traffic on this machine).
    let taken = "10.204.7.0/24";
    let _ = Command::new("ip")
        .args(["route", "del", taken, "dev", "lo"])
        .status();
    assert!(
        Command::new("ip")
            .args(["route", "add", taken, "dev", "lo"])
            .status()
            .unwrap()
            .success()
    );
    let range: AddrRange = "10.204.0.0/16".parse().unwrap();
    let spec = NetSpec::new("xt-conflict", 0, range).unwrap();
    let res = WorkerNet::setup(spec.clone()).await;
    let _ = Command::new("ip")
        .args(["route", "del", taken, "dev", "lo"])
        .status();
    let err = res.unwrap_err();
    assert!(
        matches!(err, executor::net::NetError::RangeConflict { .. }),
        "{err}"
    );
    assert!(err.to_string().contains("10.204.7.0/24 dev lo"), "{err}");
    assert!(!spec.netns_path().exists(), "nothing was created");
    assert!(!ip(&["route", "show", "type", "unreachable"]).contains("10.204.0.0/16"));
}
