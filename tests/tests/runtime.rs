//! The actor runtime end to end, all real: Valkey, the apiserver (in-process), a local OCI
//! registry with the `counter` demo image, the node agent binary running two executors, and
//! gVisor `runsc` sandboxes in their own network namespaces.
//!
//! An actor is resumed (cold boot), its in-memory counter is driven to N over HTTP and a file
//! is written, it is suspended (checkpoint → zstd snapshot with a manifest in the object
//! store, worker freed), then resumed on the *other* worker: the counter continues from N
//! and the file is still there.
//!
//! Needs root and runsc; skipped with a message otherwise, unless `SUBSTRATE_REQUIRE_RUNSC=1`
//! (hack/test.sh sets it), which turns a missing prerequisite into a failure.

use std::path::PathBuf;
use std::process::{Command, Stdio};

use e2e::{KillOnDrop, Options, System, condition, eventually, first_int, http, phase};
use serde_json::json;

/// Where snapshots go in a scenario.
struct SnapshotTarget {
    /// `--snapshot-url` of the node agent (None: its default, a local `file://` directory).
    url: Option<String>,
    /// Extra environment of the node agent (S3 endpoint and credentials).
    env: Vec<(String, String)>,
    /// Checks that the manifest at `uri` exists in the object store.
    committed: Box<dyn Fn(&str) -> bool>,
    /// Run the operator, so the actor resumes from its template's golden snapshot.
    golden: bool,
}

#[test]
fn actor_survives_suspend_and_resume_on_another_worker() {
    scenario(
        "e2e-file",
        "10.205.0.0/16",
        100,
        SnapshotTarget {
            url: None,
            env: Vec::new(),
            golden: false,
            committed: Box::new(|uri| {
                let manifest = PathBuf::from(uri.trim_start_matches("file://"));
                let zst = std::fs::read_dir(manifest.parent().unwrap())
                    .map(|d| {
                        d.filter_map(|e| e.ok()?.file_name().into_string().ok())
                            .any(|n| n.ends_with(".zst"))
                    })
                    .unwrap_or(false);
                manifest.exists() && zst
            }),
        },
    );
}

/// The same path with snapshots in an S3-compatible object store (moto) on loopback, and
/// with the operator: the actor's first resume restores the template's golden snapshot.
#[test]
fn actor_survives_suspend_and_resume_with_snapshots_in_s3() {
    if !e2e::prerequisites() {
        return;
    }
    let Some(moto) = Moto::start() else {
        let msg = "moto_server is not installed (pip install 'moto[server]'; hack/test.sh does)";
        assert!(
            !std::env::var("SUBSTRATE_REQUIRE_MOTO").is_ok_and(|v| v == "1"),
            "{msg}"
        );
        eprintln!("skipping: {msg}");
        return;
    };
    let endpoint = format!("http://127.0.0.1:{}", moto.port);
    let status = Command::new("curl")
        .args([
            "-sS",
            "--fail",
            "-X",
            "PUT",
            &format!("{endpoint}/e2e-snapshots"),
        ])
        .status()
        .expect("curl");
    assert!(status.success(), "creating the bucket");
    let check = endpoint.clone();
    scenario(
        "e2e-s3",
        "10.206.0.0/16",
        200,
        SnapshotTarget {
            url: Some("s3://e2e-snapshots/actors".into()),
            golden: true,
            env: vec![
                ("AWS_ENDPOINT_URL".into(), endpoint),
                ("AWS_ALLOW_HTTP".into(), "true".into()),
                ("AWS_REGION".into(), "us-east-1".into()),
                ("AWS_ACCESS_KEY_ID".into(), "test".into()),
                ("AWS_SECRET_ACCESS_KEY".into(), "test".into()),
            ],
            committed: Box::new(move |uri| {
                // moto refuses unsigned GETs of objects but lists buckets.
                let key = uri.trim_start_matches("s3://e2e-snapshots/");
                let prefix = key.rsplit_once('/').map_or("", |(p, _)| p);
                let listing = http(
                    "GET",
                    &format!("{check}/e2e-snapshots?list-type=2&prefix={prefix}/"),
                    None,
                )
                .unwrap_or_default();
                listing.contains(&format!("<Key>{key}</Key>")) && listing.contains(".zst</Key>")
            }),
        },
    );
}

/// moto_server on a free loopback port, killed on drop.
struct Moto {
    port: u16,
    _child: KillOnDrop,
}

impl Moto {
    fn start() -> Option<Moto> {
        let installed = Command::new("moto_server")
            .arg("--help")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success());
        if !installed {
            return None;
        }
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .ok()?
            .local_addr()
            .ok()?
            .port();
        let child = Command::new("moto_server")
            .args(["-H", "127.0.0.1", "-p", &port.to_string()])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("starting moto_server");
        let moto = Moto {
            port,
            _child: KillOnDrop(child),
        };
        eventually("moto_server listens", || {
            std::net::TcpStream::connect(("127.0.0.1", port)).ok()
        });
        Some(moto)
    }
}

/// `node` names the node (and its workers), `range` and `index_base` keep the worker
/// networks (addresses, host-side veth names) of scenarios running at once apart.
fn scenario(node: &str, range: &str, index_base: u32, target: SnapshotTarget) {
    let mut opts = Options::new(node, range, index_base);
    opts.snapshot_url = target.url.clone();
    opts.agent_env = target.env.clone();
    let Some(mut sys) = System::start(opts) else {
        return;
    };
    let workers = sys.wait_free_workers(2);

    // With the operator: the template gets a golden snapshot first (a golden actor in
    // ate-golden is booted, probed ready and suspended), and new actors resume from it.
    if target.golden {
        sys.start_operator();
        let t = eventually("the template's golden snapshot", || {
            let t = sys.kube.get("actortemplate", "counter", Some("team-a"));
            let ready = t["status"]["conditions"]
                .as_array()?
                .iter()
                .any(|c| c["type"] == "Ready" && c["status"] == "True");
            (ready && t["status"]["snapshot"]["uri"].is_string()).then_some(t)
        });
        assert!(
            t["status"]["snapshot"]["uri"]
                .as_str()
                .unwrap()
                .contains("/ate-golden/team-a-counter/"),
            "{t}"
        );
        sys.wait_free_workers(2);
    }

    // Create and resume (cold boot, or from the golden snapshot).
    sys.create_actor("web", json!({}));
    let bound = sys.action("web", "resume");
    let first_worker = bound["status"]["worker"]["name"]
        .as_str()
        .expect("bound")
        .to_string();
    assert!(workers.contains(&first_worker));
    let running = sys.wait_phase("web", "Running");
    // kstatus: settled, ready, not stalled.
    assert_eq!(condition(&running, "Ready"), Some("True"), "{running}");
    assert_eq!(
        condition(&running, "Reconciling"),
        Some("False"),
        "{running}"
    );
    assert_eq!(condition(&running, "Stalled"), Some("False"), "{running}");
    let url = System::actor_url(&running);
    let mut n = 0;
    for i in 1..=5 {
        let body = http("GET", &format!("{url}/"), None).expect("GET /");
        n = first_int(&body);
        assert_eq!(n, i, "the counter counts requests");
        if target.golden && i == 1 {
            // Restored from the golden snapshot: the process booted before this actor existed.
            let boot: jiff::Timestamp = body
                .split("since boot at ")
                .nth(1)
                .expect("boot time in the body")
                .trim()
                .parse()
                .expect("RFC 3339 boot time");
            let created: jiff::Timestamp = running["metadata"]["creationTimestamp"]
                .as_str()
                .unwrap()
                .parse()
                .unwrap();
            // creationTimestamp has whole seconds: the actor was created before created + 1 s.
            let created_by = created + jiff::SignedDuration::from_secs(1);
            assert!(
                boot < created_by,
                "booted at {boot}, created at {created} (whole seconds): not from the golden snapshot"
            );
        }
    }
    http(
        "PUT",
        &format!("{url}/file"),
        Some("written before suspend"),
    )
    .expect("PUT /file");

    // Suspend: snapshot in the object store, worker freed.
    let s = sys.action("web", "suspend");
    assert_eq!(phase(&s), "Suspending");
    let suspended = eventually("actor Suspended with a snapshot", || {
        let a = sys.actor("web");
        (phase(&a) == "Suspended" && a["status"]["snapshot"]["uri"].is_string()).then_some(a)
    });
    assert!(suspended["status"]["worker"].is_null(), "{suspended}");
    assert_eq!(
        condition(&suspended, "Reconciling"),
        Some("False"),
        "{suspended}"
    );
    let uri = suspended["status"]["snapshot"]["uri"].as_str().unwrap();
    assert!(uri.ends_with("/manifest.json"), "{uri}");
    assert!(
        (target.committed)(uri),
        "the manifest and the zstd checkpoint files are in the object store at {uri}"
    );
    eventually("the first worker is free again", || {
        (sys.kube.get("worker", &first_worker, None)["status"]["phase"] == "Free").then_some(())
    });
    assert!(
        http("GET", &format!("{url}/"), None).is_none(),
        "the sandbox is gone"
    );

    // Resume on the other worker: cordon the first one through labels + workerSelector.
    sys.kube
        .ok(&["label", "worker", &first_worker, "cordoned=true"], None);
    sys.kube.ok(&["patch", "actor", "web", "-n", "team-a", "--type=merge", "-p",
        r#"{"spec":{"workerSelector":{"matchExpressions":[{"key":"cordoned","operator":"DoesNotExist"}]}}}"#], None);
    let bound = sys.action("web", "resume");
    let second_worker = bound["status"]["worker"]["name"]
        .as_str()
        .expect("bound")
        .to_string();
    assert_ne!(second_worker, first_worker);
    let running = sys.wait_phase("web", "Running");
    let url2 = System::actor_url(&running);
    assert_ne!(url2, url, "a different worker has a different address");
    let next = first_int(&http("GET", &format!("{url2}/"), None).expect("GET / after resume"));
    assert_eq!(
        next,
        n + 1,
        "the counter continued from {n}: memory survived"
    );
    assert_eq!(
        http("GET", &format!("{url2}/file"), None).expect("GET /file"),
        "written before suspend",
        "the file survived"
    );
    sys.stop_agent();
}

/// Scaling a pool down retires its free workers: the `Worker` objects go and so do their
/// executors (and, with `--on-shutdown=kill`, their network namespaces); scaling up again
/// brings them back.
#[test]
fn scaling_a_pool_down_retires_free_workers() {
    let mut opts = Options::new("e2e-scale", "10.212.0.0/16", 700);
    opts.workers = 3;
    let Some(sys) = System::start(opts) else {
        return;
    };
    assert_eq!(sys.executor_pids().len(), 3);
    sys.kube.ok(
        &[
            "patch",
            "workerpool",
            &sys.pool,
            "-n",
            "default",
            "--type=merge",
            "-p",
            r#"{"spec":{"replicas":1}}"#,
        ],
        None,
    );
    eventually("one worker left", || {
        (sys.workers().len() == 1).then_some(())
    });
    eventually("one executor left", || {
        (sys.executor_pids().len() == 1).then_some(())
    });
    let netns = Command::new("ip")
        .args(["netns", "list"])
        .output()
        .expect("ip");
    let netns = String::from_utf8_lossy(&netns.stdout).into_owned();
    assert!(
        !netns.contains("substrate-e2e-scale-e2e-1")
            && !netns.contains("substrate-e2e-scale-e2e-2"),
        "retired workers' namespaces are gone: {netns}"
    );
    sys.kube.ok(
        &[
            "patch",
            "workerpool",
            &sys.pool,
            "-n",
            "default",
            "--type=merge",
            "-p",
            r#"{"spec":{"replicas":2}}"#,
        ],
        None,
    );
    sys.wait_free_workers(2);
}

/// Scaling a pool down takes its free workers, not the one an actor runs on: the actor keeps
/// running (its memory with it). Scaled below its bound workers, a bound one is cordoned
/// (retiring: no new actor, heartbeated while its actor runs) and wanted again on scale-up.
#[test]
fn scaling_a_pool_down_keeps_the_bound_worker() {
    let mut opts = Options::new("e2e-keep", "10.231.0.0/16", 2610);
    opts.workers = 2;
    let Some(sys) = System::start(opts) else {
        return;
    };
    sys.wait_free_workers(2);
    sys.create_actor("kept", json!({}));
    sys.action("kept", "resume");
    let running = sys.wait_phase("kept", "Running");
    let worker = running["status"]["worker"]["name"]
        .as_str()
        .expect("bound")
        .to_string();
    let url = System::actor_url(&running);
    assert_eq!(
        first_int(&http("GET", &format!("{url}/"), None).expect("GET")),
        1
    );
    let scale = |n: u32| {
        sys.kube.ok(
            &[
                "patch",
                "workerpool",
                &sys.pool,
                "-n",
                "default",
                "--type=merge",
                "-p",
                &format!(r#"{{"spec":{{"replicas":{n}}}}}"#),
            ],
            None,
        );
    };
    let names = || -> Vec<String> {
        sys.workers()
            .iter()
            .filter_map(|w| w["metadata"]["name"].as_str().map(str::to_string))
            .collect()
    };
    scale(1);
    eventually("the free worker is retired", || {
        (names() == vec![worker.clone()]).then_some(())
    });
    // The actor never stopped: same worker, its counter goes on.
    assert_eq!(
        first_int(&http("GET", &format!("{url}/"), None).expect("GET")),
        2
    );
    let a = sys.actor("kept");
    assert_eq!(
        (
            a["status"]["phase"].as_str(),
            a["status"]["worker"]["name"].as_str()
        ),
        (Some("Running"), Some(worker.as_str())),
        "{a}"
    );

    // Below the bound workers: the bound one is retiring, cordoned, and still heartbeated.
    scale(0);
    let retiring = eventually("the bound worker is cordoned as retiring", || {
        let w = sys
            .workers()
            .into_iter()
            .find(|w| w["metadata"]["name"] == worker.as_str())?;
        (w["spec"]["unschedulable"] == true
            && w["metadata"]["annotations"]["substrate.ate.dev/retiring"] == "true")
            .then_some(w)
    });
    let beat = retiring["status"]["lastHeartbeatTime"].clone();
    eventually("the retiring worker still heartbeats", || {
        let w = sys
            .workers()
            .into_iter()
            .find(|w| w["metadata"]["name"] == worker.as_str())?;
        (w["status"]["lastHeartbeatTime"] != beat).then_some(())
    });
    assert_eq!(
        first_int(&http("GET", &format!("{url}/"), None).expect("GET")),
        3
    );

    // Wanted again: uncordoned.
    scale(1);
    eventually("the worker is wanted again", || {
        let w = sys
            .workers()
            .into_iter()
            .find(|w| w["metadata"]["name"] == worker.as_str())?;
        (w["spec"]["unschedulable"].is_null()
            && w["metadata"]["annotations"]["substrate.ate.dev/retiring"].is_null())
        .then_some(())
    });
}

/// A resume asked for while the actor is still suspending (the router waking an actor the
/// operator just found idle) is not lost: the actor waits (`Scheduled=False`), then, once
/// the checkpoint is done and it is `Suspended`, it is bound and restored, memory intact.
#[test]
fn a_resume_during_a_suspend_runs_once_the_checkpoint_is_done() {
    let Some(sys) = System::start(Options::new("e2e-race", "10.213.0.0/16", 800)) else {
        return;
    };
    sys.wait_free_workers(2);
    sys.create_actor("web", json!({}));
    sys.action("web", "resume");
    let running = sys.wait_phase("web", "Running");
    let url = System::actor_url(&running);
    for i in 1..=3 {
        let n = first_int(&http("GET", &format!("{url}/"), None).expect("GET /"));
        assert_eq!(n, i);
    }

    // The resume must land while the checkpoint runs: it is sent 30 ms after the suspend
    // from another thread (two kubectl start-ups in a row took longer than a checkpoint on
    // a loaded machine). It can still land before the suspend or after the checkpoint; then
    // the round is a plain suspend and resume: try again, up to 10 times.
    let mut count = 3;
    let mut raced = false;
    for _ in 0..10 {
        let answer = std::thread::scope(|scope| {
            let resume = scope.spawn(|| {
                std::thread::sleep(std::time::Duration::from_millis(30));
                sys.action("web", "resume")
            });
            sys.action("web", "suspend");
            resume.join().expect("resume thread")
        });
        if phase(&answer) == "Suspending" {
            assert_eq!(condition(&answer, "Scheduled"), Some("False"), "{answer}");
            raced = true;
        }
        // It passes through Suspended (a new snapshot) and comes back; a resume that came
        // before the suspend leaves it Suspended: resume it then.
        let settled = eventually("the actor settled after its suspend", || {
            let a = sys.actor("web");
            let running = phase(&a) == "Running" && condition(&a, "Ready") == Some("True");
            let suspended = phase(&a) == "Suspended" && condition(&a, "Scheduled").is_none();
            ((running || suspended) && a["status"]["snapshot"]["uri"].is_string()).then_some(a)
        });
        assert!(
            !(raced && phase(&settled) == "Suspended"),
            "the resume asked for during the suspend was lost: {settled}"
        );
        if phase(&settled) == "Suspended" {
            sys.action("web", "resume");
        }
        let resumed = sys.wait_phase("web", "Running");
        assert_eq!(condition(&resumed, "Scheduled"), Some("True"), "{resumed}");
        let url = System::actor_url(&resumed);
        let n = first_int(&http("GET", &format!("{url}/"), None).expect("GET / after resume"));
        count += 1;
        assert_eq!(
            n, count,
            "the counter continued: restored from the new snapshot"
        );
        if raced {
            break;
        }
    }
    assert!(raced, "no resume landed during a suspend in 10 attempts");
}

/// A changed template gets a new golden snapshot from a fresh boot, and new actors resume
/// from that one: the golden actor of the new generation does not restore the old golden
/// snapshot (which was taken with the old spec; after an image change its process would not
/// even restore onto the new root filesystem).
#[test]
fn a_changed_template_boots_a_new_golden_and_new_actors_use_it() {
    let Some(mut sys) = System::start(Options::new("e2e-golden", "10.214.0.0/16", 900)) else {
        return;
    };
    sys.wait_free_workers(2);
    sys.start_operator();
    let golden = |generation: i64| {
        eventually(
            &format!("the golden snapshot of generation {generation}"),
            || {
                let t = sys.kube.get("actortemplate", "counter", Some("team-a"));
                let ready = t["status"]["conditions"].as_array()?.iter().any(|c| {
                    c["type"] == "Ready"
                        && c["status"] == "True"
                        && c["observedGeneration"] == generation
                });
                (ready && t["metadata"]["generation"] == generation)
                    .then(|| t["status"]["snapshot"]["uri"].as_str().map(str::to_string))
                    .flatten()
            },
        )
    };
    let first = golden(1);

    let changed_at = jiff::Timestamp::now();
    sys.kube.ok(&["patch", "actortemplate", "counter", "-n", "team-a", "--type=json", "-p",
        r#"[{"op":"add","path":"/spec/containers/0/env/-","value":{"name":"VERSION","value":"2"}}]"#], None);
    let second = golden(2);
    assert_ne!(
        first, second,
        "a new golden snapshot for the new generation"
    );
    sys.wait_free_workers(2);

    sys.create_actor("fresh", json!({}));
    sys.action("fresh", "resume");
    let running = sys.wait_phase("fresh", "Running");
    let body = http("GET", &format!("{}/", System::actor_url(&running)), None).expect("GET /");
    assert_eq!(first_int(&body), 1, "{body}");
    let boot: jiff::Timestamp = body
        .split("since boot at ")
        .nth(1)
        .expect("boot time in the body")
        .trim()
        .parse()
        .expect("RFC 3339 boot time");
    assert!(
        boot >= changed_at
            .checked_sub(jiff::SignedDuration::from_secs(1))
            .unwrap(),
        "the actor's process booted at {boot}, before the template changed at {changed_at}: \
         the new golden was restored from the old one"
    );
    sys.stop_agent();
}

/// The `image=` of the node agent's last `resume timing` line for `actor`.
fn resumed_image(sys: &System, actor: &str) -> String {
    let log = sys.log("nodeagent");
    let line = log
        .lines()
        .rev()
        .find(|l| l.contains("resume timing") && l.contains(&format!("actor=team-a/{actor} ")))
        .unwrap_or_else(|| panic!("no resume of {actor} in the agent's log:\n{log}"))
        .to_string();
    line.split_whitespace()
        .find_map(|f| f.strip_prefix("image="))
        .unwrap_or_else(|| panic!("no image= in {line}"))
        .to_string()
}

#[test]
fn a_suspended_actor_restores_onto_the_image_it_ran_when_the_template_changed() {
    let Some(sys) = System::start(Options::new("e2e-image", "10.215.0.0/16", 1000)) else {
        return;
    };
    // One request to the running actor: its counter.
    let count = |running: &serde_json::Value| {
        let body = http("GET", &format!("{}/", System::actor_url(running)), None).expect("GET /");
        first_int(&body)
    };
    sys.create_actor("keeper", json!({}));
    sys.action("keeper", "resume");
    let running = sys.wait_phase("keeper", "Running");
    for want in 1..=2 {
        assert_eq!(count(&running), want);
    }
    assert_eq!(
        resumed_image(&sys, "keeper"),
        sys.image,
        "booted on the pushed image"
    );
    sys.action("keeper", "suspend");
    sys.wait_phase("keeper", "Suspended");

    // A new version of the image (another root filesystem) goes into the template.
    let v2 = sys.push_counter_version("substrate/counter:v2", "2");
    assert_ne!(v2, sys.image);
    sys.kube.ok(
        &[
            "patch",
            "actortemplate",
            "counter",
            "-n",
            "team-a",
            "--type=json",
            "-p",
            &format!(r#"[{{"op":"replace","path":"/spec/containers/0/image","value":"{v2}"}}]"#),
        ],
        None,
    );

    // The suspended actor's process comes back on the root filesystem it was checkpointed
    // with, its memory intact.
    sys.action("keeper", "resume");
    let running = sys.wait_phase("keeper", "Running");
    assert_eq!(count(&running), 3);
    assert_eq!(
        resumed_image(&sys, "keeper"),
        sys.image,
        "restored onto the image it ran, not the template's new one"
    );
    assert_eq!(
        sys.actor("keeper")["status"]["image"],
        sys.image,
        "status.image says which image the actor runs"
    );
    // ...and keeps it across another suspend and resume (the snapshot records it again).
    sys.action("keeper", "suspend");
    sys.wait_phase("keeper", "Suspended");
    sys.action("keeper", "resume");
    let running = sys.wait_phase("keeper", "Running");
    assert_eq!(count(&running), 4);
    assert_eq!(resumed_image(&sys, "keeper"), sys.image);

    // A new actor boots on the template's new image.
    sys.create_actor("newcomer", json!({}));
    sys.action("newcomer", "resume");
    sys.wait_phase("newcomer", "Running");
    assert_eq!(resumed_image(&sys, "newcomer"), v2);
    assert_eq!(sys.actor("newcomer")["status"]["image"], v2);

    // `reset` moves the suspended actor onto the new image: its snapshot is forgotten, so
    // its next resume boots from the template as it is now (memory and files start afresh).
    sys.action("keeper", "suspend");
    sys.wait_phase("keeper", "Suspended");
    let reset = sys.action("keeper", "reset");
    assert!(reset["status"].get("snapshot").is_none(), "{reset}");
    sys.action("keeper", "resume");
    let running = sys.wait_phase("keeper", "Running");
    assert_eq!(count(&running), 1, "a fresh process");
    assert_eq!(resumed_image(&sys, "keeper"), v2);
    assert_eq!(sys.actor("keeper")["status"]["image"], v2);
}
