//! The image cache and image pushing against a real `docker-registry` on loopback
//! (Debian package `docker-registry`), with the real static `counter` binary.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::{Child, Command, Stdio};

use nodeagent::images::build::{BuiltImage, FileSpec, ImageSpec, build_image};
use nodeagent::images::testing::{self, Registry};
use nodeagent::images::{
    BasicAuth, ImageCache, ImageError, PushError, PushOptions, push_image, sha256_digest,
};

fn cache_in(registry: &Registry, dir: &Path) -> ImageCache {
    ImageCache::new(registry.image_config(dir)).unwrap()
}

/// The counter binary, started on the host from an unpacked rootfs, on loopback.
struct Counter {
    child: Child,
    addr: SocketAddr,
}

impl Counter {
    fn start(binary: &Path, data_file: &Path) -> Counter {
        let mut child = Command::new(binary)
            .env_clear()
            .env("PORT", "0")
            .env("LISTEN_HOST", "127.0.0.1")
            .env("DATA_FILE", data_file)
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let mut line = String::new();
        BufReader::new(child.stderr.take().unwrap())
            .read_line(&mut line)
            .unwrap();
        let addr = line
            .strip_prefix("counter: listening on ")
            .and_then(|r| r.split(' ').next())
            .unwrap_or_else(|| panic!("unexpected log line {line:?}"))
            .parse()
            .unwrap();
        Counter { child, addr }
    }

    /// One request on a fresh connection with `Connection: close`; returns (status, body).
    fn request(&self, method: &str, path: &str, body: &[u8]) -> (u16, Vec<u8>) {
        let mut s = TcpStream::connect(self.addr).unwrap();
        write!(
            s,
            "{method} {path} HTTP/1.1\r\nHost: counter\r\nConnection: close\r\nContent-Length: {}\r\n\r\n",
            body.len()
        )
        .unwrap();
        s.write_all(body).unwrap();
        let mut raw = Vec::new();
        s.read_to_end(&mut raw).unwrap();
        let split = raw.windows(4).position(|w| w == b"\r\n\r\n").unwrap();
        let head = String::from_utf8_lossy(&raw[..split]).into_owned();
        let status = head.split(' ').nth(1).unwrap().parse().unwrap();
        (status, raw[split + 4..].to_vec())
    }
}

impl Drop for Counter {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Number of non-directory entries under `dir`, recursively.
fn files_under(dir: &Path) -> usize {
    std::fs::read_dir(dir)
        .unwrap()
        .map(|e| {
            let e = e.unwrap();
            if e.file_type().unwrap().is_dir() {
                files_under(&e.path())
            } else {
                1
            }
        })
        .sum()
}

fn first_integer(body: &[u8]) -> u64 {
    String::from_utf8_lossy(body)
        .split(|c: char| !c.is_ascii_digit())
        .find(|t| !t.is_empty())
        .unwrap()
        .parse()
        .unwrap()
}

#[tokio::test]
async fn push_pull_run_and_serve_from_cache_with_the_registry_stopped() {
    let mut registry = Registry::start().unwrap();
    let pushed = testing::push_counter(&registry, "substrate/counter:latest")
        .await
        .unwrap();
    let digest = pushed.image.manifest_digest.clone();
    assert!(
        pushed
            .reference
            .ends_with(&format!("/substrate/counter@{digest}"))
    );

    // Pushing the same inputs again gives the same digest (the build is reproducible).
    let again = testing::push_counter(&registry, "substrate/counter:again")
        .await
        .unwrap();
    assert_eq!(again.image.manifest_digest, digest);

    let dir = tempfile::tempdir().unwrap();
    let cache = cache_in(&registry, dir.path());
    let rootfs = cache.ensure_rootfs(&pushed.tag_reference).await.unwrap();
    assert_eq!(rootfs.manifest_digest, digest);
    assert_eq!(
        rootfs.path,
        dir.path()
            .join("rootfs")
            .join(digest.trim_start_matches("sha256:"))
            .join("rootfs")
    );
    let counter = rootfs.path.join("counter");
    let meta = std::fs::metadata(&counter).unwrap();
    assert_eq!(meta.permissions().mode() & 0o7777, 0o755);
    assert_eq!(
        std::fs::read(&counter).unwrap(),
        std::fs::read(testing::counter_binary().unwrap()).unwrap()
    );
    assert_eq!(rootfs.config.entrypoint, vec!["/counter"]);
    assert_eq!(rootfs.config.argv(), vec!["/counter"]);
    assert_eq!(rootfs.config.env, vec!["PORT=8080", "DATA_FILE=/data/file"]);
    assert_eq!(rootfs.config.exposed_ports, vec!["8080/tcp"]);
    let stats = cache.stats();
    assert_eq!((stats.blobs_downloaded, stats.rootfs_unpacked), (2, 1));
    // Layer and config are in the content-addressed store under their digests.
    for d in [&pushed.image.layer_digest, &pushed.image.config_digest] {
        let stored = std::fs::read(cache.blob_path(d).unwrap()).unwrap();
        assert_eq!(&sha256_digest(&stored), d);
    }

    // The unpacked binary runs: GET / counts 1 then 2, the file round-trips.
    let data = dir.path().join("data/file");
    let c = Counter::start(&counter, &data);
    let (s1, b1) = c.request("GET", "/", b"");
    let (s2, b2) = c.request("GET", "/", b"");
    assert_eq!((s1, first_integer(&b1)), (200, 1));
    assert_eq!((s2, first_integer(&b2)), (200, 2));
    assert_eq!(c.request("GET", "/file", b"").0, 404);
    assert_eq!(c.request("PUT", "/file", b"state").0, 200);
    assert_eq!(c.request("GET", "/file", b""), (200, b"state".to_vec()));
    assert_eq!(c.request("GET", "/healthz", b""), (200, b"ok\n".to_vec()));
    drop(c);

    // Registry gone: a digest reference is served from disk without any request.
    registry.stop();
    let before = cache.stats();
    let cached = cache.ensure_rootfs(&pushed.reference).await.unwrap();
    assert_eq!(cached, rootfs);
    assert_eq!(cache.stats(), before);

    // A new cache object over the same directory (an agent restart) too.
    let reopened = cache_in(&registry, dir.path());
    assert_eq!(
        reopened.ensure_rootfs(&pushed.reference).await.unwrap(),
        rootfs
    );
    assert_eq!(reopened.stats(), Default::default());

    // A tag falls back to the digest it resolved to before, since the registry is unreachable.
    let by_tag = reopened.ensure_rootfs(&pushed.tag_reference).await.unwrap();
    assert_eq!(by_tag, rootfs);
    assert_eq!(reopened.stats().offline_tag_hits, 1);

    // An empty cache cannot do that: clear error naming the registry.
    let empty_dir = tempfile::tempdir().unwrap();
    let empty = cache_in(&registry, empty_dir.path());
    let e = empty.ensure_rootfs(&pushed.reference).await.unwrap_err();
    assert!(matches!(e, ImageError::Unreachable { .. }), "{e}");
    assert!(e.to_string().contains(&registry.host()), "{e}");

    // Back on the same port with the same storage: tags resolve online again (one request).
    registry.restart().unwrap();
    assert!(registry.is_running());
    let before = reopened.stats();
    assert_eq!(
        reopened.ensure_rootfs(&pushed.tag_reference).await.unwrap(),
        rootfs
    );
    let after = reopened.stats();
    assert_eq!(after.manifest_requests, before.manifest_requests + 1);
    assert_eq!(after.offline_tag_hits, before.offline_tag_hits);
    assert_eq!(after.blobs_downloaded, 0);
}

#[tokio::test]
async fn concurrent_ensures_of_one_image_do_the_work_once() {
    let registry = Registry::start().unwrap();
    let pushed = testing::push_counter(&registry, "substrate/counter:latest")
        .await
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let cache = cache_in(&registry, dir.path());
    let results = futures::future::join_all((0..8).map(|i| {
        let cache = cache.clone();
        let r = if i % 2 == 0 {
            pushed.reference.clone()
        } else {
            pushed.tag_reference.clone()
        };
        tokio::spawn(async move { cache.ensure_rootfs(&r).await })
    }))
    .await;
    let rootfs: Vec<_> = results.into_iter().map(|r| r.unwrap().unwrap()).collect();
    assert!(rootfs.iter().all(|r| r == &rootfs[0]));
    let stats = cache.stats();
    assert_eq!(stats.rootfs_unpacked, 1, "{stats:?}");
    assert_eq!(stats.blobs_downloaded, 2, "{stats:?}");
    // Nothing left behind in tmp/.
    assert_eq!(files_under(&dir.path().join("tmp")), 0);
}

#[tokio::test]
async fn basic_auth_wrong_password_missing_credentials_and_right_ones() {
    let registry = Registry::start_with_auth(BasicAuth::new("alice", "correct horse")).unwrap();
    let binary = tokio::task::spawn_blocking(testing::counter_binary)
        .await
        .unwrap()
        .unwrap();
    let image = build_image(&testing::counter_image_spec(&binary)).unwrap();
    let reference = registry.reference("private/counter:1");

    // Pushing with a wrong password or none fails clearly.
    let wrong = PushOptions {
        insecure: true,
        auth: Some(BasicAuth::new("alice", "wrong")),
    };
    let e = push_image(&image, &reference, &wrong).await.unwrap_err();
    assert!(matches!(e, PushError::CredentialsRejected { .. }), "{e}");
    assert!(
        e.to_string().contains(&format!(
            "registry {} rejected the credentials of user \"alice\"",
            registry.host()
        )),
        "{e}"
    );
    let none = PushOptions {
        insecure: true,
        auth: None,
    };
    let e = push_image(&image, &reference, &none).await.unwrap_err();
    assert!(matches!(e, PushError::AuthenticationRequired { .. }), "{e}");

    let digest = push_image(&image, &reference, &registry.push_options())
        .await
        .unwrap();
    assert_eq!(digest, image.manifest_digest);

    // Pulling: wrong password, then no credentials, then the right ones.
    let dir = tempfile::tempdir().unwrap();
    let mut config = registry.image_config(dir.path());
    config
        .auth
        .insert(registry.host(), BasicAuth::new("alice", "wrong"));
    let e = ImageCache::new(config)
        .unwrap()
        .ensure_rootfs(&reference)
        .await
        .unwrap_err();
    assert!(matches!(e, ImageError::CredentialsRejected { .. }), "{e}");
    assert!(
        e.to_string()
            .contains("rejected the credentials of user \"alice\""),
        "{e}"
    );

    let mut config = registry.image_config(dir.path());
    config.auth.clear();
    let e = ImageCache::new(config)
        .unwrap()
        .ensure_rootfs(&reference)
        .await
        .unwrap_err();
    assert!(
        matches!(e, ImageError::AuthenticationRequired { .. }),
        "{e}"
    );
    assert!(
        e.to_string().contains("no credentials are configured"),
        "{e}"
    );

    let cache = cache_in(&registry, dir.path());
    let rootfs = cache.ensure_rootfs(&reference).await.unwrap();
    assert_eq!(rootfs.manifest_digest, image.manifest_digest);
    assert!(rootfs.path.join("counter").is_file());
}

#[tokio::test]
async fn a_corrupted_blob_in_the_registry_is_rejected_and_nothing_is_cached() {
    let registry = Registry::start().unwrap();
    let pushed = testing::push_counter(&registry, "substrate/counter:latest")
        .await
        .unwrap();
    let blob = registry.blob_data_path(&pushed.image.layer_digest);
    let original = std::fs::read(&blob).unwrap();
    let mut corrupted = original.clone();
    let mid = corrupted.len() / 2;
    corrupted[mid] ^= 0xff;
    std::fs::write(&blob, &corrupted).unwrap();

    let dir = tempfile::tempdir().unwrap();
    let cache = cache_in(&registry, dir.path());
    let e = cache.ensure_rootfs(&pushed.reference).await.unwrap_err();
    match &e {
        ImageError::DigestMismatch {
            what,
            digest,
            actual,
        } => {
            assert_eq!(*what, "layer");
            assert_eq!(digest, &pushed.image.layer_digest);
            assert_eq!(actual, &sha256_digest(&corrupted));
        }
        other => panic!("expected a digest mismatch, got {other}"),
    }
    assert!(
        !cache
            .blob_path(&pushed.image.layer_digest)
            .unwrap()
            .exists()
    );
    assert_eq!(
        std::fs::read_dir(dir.path().join("rootfs"))
            .unwrap()
            .count(),
        0
    );
    assert_eq!(files_under(&dir.path().join("tmp")), 0);

    // Once the registry serves the right bytes again, the same cache recovers.
    std::fs::write(&blob, &original).unwrap();
    let rootfs = cache.ensure_rootfs(&pushed.reference).await.unwrap();
    assert!(rootfs.path.join("counter").is_file());
}

/// Pushes a one-file image whose config lies about the layer's uncompressed digest.
fn with_wrong_diff_id(image: &BuiltImage) -> BuiltImage {
    let mut config: serde_json::Value = serde_json::from_slice(&image.config).unwrap();
    config["rootfs"]["diff_ids"][0] = serde_json::json!(format!("sha256:{}", "0".repeat(64)));
    let config = serde_json::to_vec(&config).unwrap();
    let config_digest = sha256_digest(&config);
    let mut manifest: serde_json::Value = serde_json::from_slice(&image.manifest).unwrap();
    manifest["config"]["digest"] = serde_json::json!(config_digest);
    manifest["config"]["size"] = serde_json::json!(config.len());
    let manifest = serde_json::to_vec(&manifest).unwrap();
    BuiltImage {
        manifest_digest: sha256_digest(&manifest),
        manifest,
        config_digest,
        config,
        ..image.clone()
    }
}

#[tokio::test]
async fn tags_move_missing_images_and_lying_configs() {
    let registry = Registry::start().unwrap();
    let files = tempfile::tempdir().unwrap();
    let make = |content: &str| {
        let p = files.path().join(format!("f-{content}"));
        std::fs::write(&p, content).unwrap();
        build_image(&ImageSpec {
            files: vec![FileSpec {
                source: p,
                dest: "/etc/version".into(),
                mode: None,
            }],
            entrypoint: vec!["/bin/true".into()],
            ..ImageSpec::default()
        })
        .unwrap()
    };
    let reference = registry.reference("demo/moving:stable");
    let v1 = make("v1");
    push_image(&v1, &reference, &registry.push_options())
        .await
        .unwrap();

    let dir = tempfile::tempdir().unwrap();
    let cache = cache_in(&registry, dir.path());
    let r1 = cache.ensure_rootfs(&reference).await.unwrap();
    assert_eq!(std::fs::read(r1.path.join("etc/version")).unwrap(), b"v1");

    // The tag moves: the next ensure follows it (tags are resolved every time).
    let v2 = make("v2");
    push_image(&v2, &reference, &registry.push_options())
        .await
        .unwrap();
    let r2 = cache.ensure_rootfs(&reference).await.unwrap();
    assert_eq!(r2.manifest_digest, v2.manifest_digest);
    assert_eq!(std::fs::read(r2.path.join("etc/version")).unwrap(), b"v2");
    // The old one is still there by digest.
    assert!(r1.path.join("etc/version").exists());

    // Unknown tag and unknown repository: NotFound naming the reference.
    for missing in [
        registry.reference("demo/moving:nope"),
        registry.reference("demo/absent:latest"),
        format!("{}/demo/moving@sha256:{}", registry.host(), "1".repeat(64)),
    ] {
        let e = cache.ensure_rootfs(&missing).await.unwrap_err();
        assert!(matches!(e, ImageError::NotFound { .. }), "{missing}: {e}");
        assert!(e.to_string().contains("not found"), "{e}");
    }

    // A config whose diff_id does not match the layer: rejected after unpacking, not cached.
    let liar = with_wrong_diff_id(&v1);
    let liar_ref = registry.reference("demo/liar:1");
    push_image(&liar, &liar_ref, &registry.push_options())
        .await
        .unwrap();
    let e = cache.ensure_rootfs(&liar_ref).await.unwrap_err();
    assert!(matches!(e, ImageError::DiffIdMismatch { .. }), "{e}");
    assert!(
        cache
            .cached_rootfs(&liar.manifest_digest)
            .unwrap()
            .is_none()
    );
    assert_eq!(files_under(&dir.path().join("tmp")), 0);
}

#[test]
fn the_counter_binary_is_static() {
    let path = testing::counter_binary().unwrap();
    let bytes = std::fs::read(&path).unwrap();
    assert!(!testing::has_elf_interpreter(&bytes), "{}", path.display());
}

/// The `substrate-image` binary end to end: push, then pull (prints the rootfs path).
#[tokio::test]
async fn substrate_image_cli_push_and_pull() {
    let registry = Registry::start_with_auth(BasicAuth::new("bob", "pw")).unwrap();
    let binary = tokio::task::spawn_blocking(testing::counter_binary)
        .await
        .unwrap()
        .unwrap();
    let reference = registry.reference("substrate/counter:cli");
    let cli = env!("CARGO_BIN_EXE_substrate-image");
    let out = tokio::process::Command::new(cli)
        .args(["push", "--file"])
        .arg(format!("{}:/counter:0755", binary.display()))
        .args([
            "--entrypoint",
            "/counter",
            "--env",
            "PORT=8080",
            "--env",
            "DATA_FILE=/data/file",
            "--port",
            "8080",
            "--insecure",
            "--ref",
            &reference,
        ])
        .env("SUBSTRATE_REGISTRY_USERNAME", "bob")
        .env("SUBSTRATE_REGISTRY_PASSWORD", "pw")
        .output()
        .await
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let digest = String::from_utf8(out.stdout).unwrap().trim().to_string();
    // Same inputs as the library's counter image: same digest.
    let expected = build_image(&testing::counter_image_spec(&binary)).unwrap();
    assert_eq!(digest, expected.manifest_digest);

    let cache_dir = tempfile::tempdir().unwrap();
    let pinned = format!("{}/substrate/counter@{digest}", registry.host());
    let out = tokio::process::Command::new(cli)
        .args([
            "pull",
            &pinned,
            "--insecure",
            "--username",
            "bob",
            "--cache-dir",
        ])
        .arg(cache_dir.path())
        .env("SUBSTRATE_REGISTRY_PASSWORD", "pw")
        .output()
        .await
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let path = String::from_utf8(out.stdout).unwrap().trim().to_string();
    assert!(Path::new(&path).join("counter").is_file(), "{path}");

    // Bad input: a clear message and a failure exit.
    let out = tokio::process::Command::new(cli)
        .args(["push", "--file", "relative-only", "--ref", &reference])
        .output()
        .await
        .unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("file spec \"relative-only\""), "{stderr}");
}
