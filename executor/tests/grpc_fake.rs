//! The gRPC layer end to end over a real unix socket, with the fake runtime and network
//! (no root needed): wire conversions, error codes and metadata, the typed client.

use std::sync::Arc;
use std::time::Duration;

use executor::ActorKey;
use executor::bundle::{ActorSpec, ProcessSpec};
use executor::fake::{FakeNetwork, FakeRuntime};
use executor::proto::Phase;
use executor::worker::{Worker, WorkerConfig};
use executor::{ErrorKind, ExecutorClient};
use tonic::Code;

#[tokio::test]
async fn typed_client_over_a_unix_socket() {
    let dir = tempfile::tempdir().unwrap();
    let rootfs = dir.path().join("rootfs");
    std::fs::create_dir_all(&rootfs).unwrap();
    let rt = FakeRuntime::default();
    let worker = Arc::new(
        Worker::open(
            WorkerConfig {
                name: "fake-1".into(),
                index: 1,
                state_dir: dir.path().join("state"),
                recovery_wait: Duration::from_secs(1),
                checkpoint_failure_grace: Duration::from_millis(200),
            },
            rt.clone(),
            FakeNetwork::default(),
        )
        .await
        .unwrap(),
    );
    worker.recover(false).await.unwrap();
    let socket = dir.path().join("sock/executor.sock");
    let listener = executor::grpc::bind(&socket).await.unwrap();
    // A second executor on the same socket is refused.
    let err = executor::grpc::bind(&socket).await;
    assert!(err.is_err());
    let (tx, rx) = tokio::sync::oneshot::channel::<()>();
    let server = tokio::spawn(executor::grpc::serve(
        worker.clone(),
        listener,
        async move {
            let _ = rx.await;
        },
    ));

    let mut c = ExecutorClient::connect(&socket).await.unwrap();
    let st = c.status().await.unwrap();
    assert_eq!(st.phase(), Phase::Idle);
    assert_eq!(st.worker, "fake-1");
    assert_eq!(st.network.unwrap().worker_ip, "10.203.0.6");

    let spec = ActorSpec {
        rootfs: rootfs.clone(),
        process: ProcessSpec {
            args: vec!["/bin/app".into()],
            ..Default::default()
        },
        hostname: Some("custom".into()),
    };
    let a: ActorKey = "t/a".parse().unwrap();
    let out = c.run(&a, "op1", &spec).await.unwrap();
    assert!(!out.already_done);
    assert_eq!(out.status.as_ref().unwrap().phase(), Phase::Running);
    assert_eq!(out.status.unwrap().sandbox.unwrap().status, "running");
    let bundle: serde_json::Value = serde_json::from_slice(
        &std::fs::read(dir.path().join("state/bundles/t_a/config.json")).unwrap(),
    )
    .unwrap();
    assert_eq!(bundle["hostname"], "custom");

    let err = c
        .run(&"t/b".parse().unwrap(), "op2", &spec)
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::FailedPrecondition);
    assert_eq!(err.kind(), Some(ErrorKind::Busy));

    rt.fail_next_checkpoint(true);
    let img = dir.path().join("img");
    let err = c.checkpoint(&a, "op3", &img).await.unwrap_err();
    assert_eq!(err.code(), Code::Aborted);
    assert_eq!(err.kind(), Some(ErrorKind::CheckpointFailed));
    assert_eq!(err.sandbox_lost(), Some(true));
    assert_eq!(c.status().await.unwrap().phase(), Phase::Idle);

    c.run(&a, "op4", &spec).await.unwrap();
    let ck = c.checkpoint(&a, "op5", &img).await.unwrap();
    assert_eq!(ck.checkpoint.as_ref().unwrap().operation_id, "op5");
    let again = c.checkpoint(&a, "op5", &img).await.unwrap();
    assert!(again.already_done);
    assert_eq!(again.checkpoint, ck.checkpoint);
    let st = c.status().await.unwrap();
    assert_eq!(st.last_checkpoint, ck.checkpoint);

    let err = c
        .restore(&a, "op6", &spec, &dir.path().join("nothing-here"))
        .await
        .unwrap_err();
    assert_eq!(
        (err.code(), err.kind()),
        (Code::NotFound, Some(ErrorKind::ImageNotFound))
    );
    let r = c.restore(&a, "op6", &spec, &img).await.unwrap();
    assert_eq!(r.status.unwrap().phase(), Phase::Running);

    let err = c
        .raw()
        .kill(executor::proto::KillRequest {
            actor: "T/A".into(),
            operation_id: "x".into(),
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument);
    assert_eq!(
        err.metadata().get("substrate-error-kind").unwrap(),
        "invalid_argument"
    );
    let err = c
        .raw()
        .run(executor::proto::RunRequest {
            actor: "t/a".into(),
            operation_id: "x".into(),
            spec: None,
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument);
    assert!(err.message().contains("spec is required"));

    assert!(!c.kill(&a, "op7").await.unwrap().already_done);
    tx.send(()).unwrap();
    server.await.unwrap().unwrap();
    assert!(!socket.exists(), "socket removed at shutdown");
    let err = ExecutorClient::connect(&socket).await.unwrap_err();
    assert!(err.to_string().contains("executor.sock"), "{err}");
}
