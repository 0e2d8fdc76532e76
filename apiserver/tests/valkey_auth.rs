//! Valkey authentication (issue 14): Valkey holds every object, so nothing may reach it
//! without a password. Against real `valkey-server`s: the apiserver logs in with a password
//! file (standalone, `requirepass`) and as the cluster's ACL user (`config/valkey/users.acl.tmpl`,
//! `default` off) through kubectl, including the watch feed across a Valkey restart; a wrong
//! or missing password is one clear start-up error that never shows the password; the ACL
//! rules are necessary as well as sufficient and refuse what the apiserver never does;
//! `hack/lib.sh` starts Valkey with a generated password (0600, not on a command line) that
//! an unauthenticated client cannot get past; TLS with a CA file.

mod support;

use std::io::{Read as _, Write as _};
use std::os::unix::fs::PermissionsExt as _;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use apiserver::storage::{ObjectKey, ResourceKey, StorageError, Store, StoreOptions};
use apiserver::testing::{Login, ValkeyAuth, ValkeyOptions, ValkeyServer};
use clap::Parser as _;
use serde_json::json;

use support::{World, eventually};

const ACTORS: ResourceKey = ResourceKey {
    group: "substrate.ate.dev",
    resource: "actors",
};

/// One command on a fresh connection that never logs in; returns the raw reply line.
fn unauthenticated(port: u16, command: &str) -> String {
    let mut s = std::net::TcpStream::connect(("127.0.0.1", port)).expect("connect");
    s.set_read_timeout(Some(Duration::from_secs(5)))
        .expect("timeout");
    s.write_all(format!("{command}\r\n").as_bytes())
        .expect("write");
    let mut buf = [0u8; 512];
    let n = s.read(&mut buf).expect("read");
    String::from_utf8_lossy(&buf[..n]).into_owned()
}

/// Apiserver arguments over `valkey_flags`, its PKI in `dir`.
fn args(dir: &Path, valkey_flags: &[String]) -> apiserver::config::Args {
    let mut argv = vec![
        "substrate-apiserver".to_string(),
        "--bind=127.0.0.1:0".into(),
        format!("--pki-dir={}", dir.join("pki").display()),
        "--standalone".into(),
    ];
    argv.extend(valkey_flags.iter().cloned());
    apiserver::config::Args::try_parse_from(argv).expect("arguments")
}

/// Starts an apiserver; returns why it could not start, and how long that took.
async fn start_error(args: &apiserver::config::Args) -> (String, Duration) {
    let t = Instant::now();
    match tokio::time::timeout(Duration::from_secs(60), apiserver::start(args))
        .await
        .expect("the start ends, with an error, within 60s")
    {
        Ok(running) => {
            running.stop().await;
            panic!("the apiserver started");
        }
        Err(e) => (e.to_string(), t.elapsed()),
    }
}

fn file(dir: &Path, name: &str, text: &str) -> PathBuf {
    let p = dir.join(name);
    std::fs::write(&p, text).expect("write");
    p
}

#[test]
fn kubectl_through_the_clusters_acl_user_across_a_valkey_restart() {
    if !support::have_kubectl() {
        return;
    }
    let valkey = ValkeyServer::start_with_auth(ValkeyAuth::cluster("s3cret-apiserver"));
    // `default` is off: a client without a login gets nothing.
    assert!(
        unauthenticated(valkey.port(), "GET substrate:x").starts_with("-NOAUTH"),
        "an unauthenticated client is refused"
    );
    // `default` is off: a client without a login gets nothing.
    let mut w = World::start_on(valkey);
    w.atespace("team-a");
    w.actor("team-a", "x");
    assert_eq!(w.names("actors", "team-a"), vec!["x".to_string()]);
    let mut watch = w.spawn(&["get", "actors", "-w", "-n", "team-a"]);
    watch.expect_line("the header", |l| l.starts_with("NAME"));
    watch.expect_line("the initial row of x", |l| l.starts_with("x "));
    w.ok(&[
        "patch",
        "actor",
        "x",
        "-n",
        "team-a",
        "--subresource=status",
        "--type=merge",
        "-p",
        r#"{"status":{"phase":"Running"}}"#,
    ]);
    watch.expect_line("x running", |l| {
        l.starts_with("x ") && l.contains("Running")
    });

    // Valkey dies and comes back: the apiserver's connections and the watch feed log in
    // again as substrate-apiserver, and the open watch goes on.
    w.valkey.kill();
    w.valkey.restart();
    // No retry here: the first request after a restart is retried once on a new connection
    // (which logs in), inside the apiserver.
    w.actor("team-a", "y");
    watch.expect_line(
        "y, created after the restart, through the same watch",
        |l| l.starts_with("y "),
    );
    w.ok(&["label", "actor", "x", "-n", "team-a", "after=restart"]);
    assert_eq!(
        w.jsonpath("actor", "x", "team-a", "{.metadata.labels.after}"),
        "restart"
    );
    w.ok(&["delete", "actor", "x", "-n", "team-a"]);
    eventually("x deleted", || {
        w.get_json("actors", "x", "team-a").is_none().then_some(())
    });
    let names = w.names("actors", "team-a");
    assert_eq!(names, vec!["y".to_string()]);
}

#[test]
fn the_apiserver_logs_in_with_its_password_file() {
    if !support::have_kubectl() {
        return;
    }
    let valkey = ValkeyServer::start_with_auth(ValkeyAuth::Password("requirepass-secret".into()));
    assert!(unauthenticated(valkey.port(), "PING").starts_with("-NOAUTH"));
    let flags = valkey.apiserver_flags();
    assert!(
        flags
            .iter()
            .any(|f| f.starts_with("--valkey-password-file=")),
        "{flags:?}"
    );
    assert!(
        !flags.iter().any(|f| f.contains("requirepass-secret")),
        "the password is not on the apiserver's command line: {flags:?}"
    );
    let w = World::start_on(valkey);
    w.atespace("team-a");
    w.actor("team-a", "x");
    assert_eq!(w.names("actors", "team-a"), vec!["x".to_string()]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refused_login_is_one_clear_startup_error_without_the_password() {
    let valkey = ValkeyServer::start_with_auth(ValkeyAuth::Password("the-right-one".into()));
    let dir = tempfile::tempdir().expect("tempdir");
    let url = valkey.url();
    let redacted = format!("redis://***@127.0.0.1:{}/", valkey.port());

    // A wrong password from the file.
    let wrong = file(dir.path(), "wrong", "wr0ng-pa55word\n");
    let a = args(
        dir.path(),
        &[
            format!("--valkey-url={url}"),
            format!("--valkey-password-file={}", wrong.display()),
        ],
    );
    let (e, took) = start_error(&a).await;
    assert!(
        e.contains(&format!("valkey at {url} refused authentication")),
        "{e}"
    );
    assert!(e.contains("user default"), "names the user: {e}");
    assert!(!e.contains("wr0ng-pa55word"), "{e}");
    assert!(
        took < Duration::from_secs(3),
        "refused at once, not after retries: {took:?}"
    );

    // A wrong password in the URL: the URL in the error is redacted.
    let a = args(
        dir.path(),
        &[format!(
            "--valkey-url=redis://:url-pa55word@127.0.0.1:{}/",
            valkey.port()
        )],
    );
    let (e, _) = start_error(&a).await;
    assert!(
        e.contains(&format!("valkey at {redacted} refused authentication")),
        "{e}"
    );
    assert!(!e.contains("url-pa55word"), "{e}");

    // The file wins over the URL: a wrong URL password with the right file starts.
    let right = valkey.password_file().expect("password file");
    let a = args(
        dir.path(),
        &[
            format!(
                "--valkey-url=redis://:url-pa55word@127.0.0.1:{}/",
                valkey.port()
            ),
            format!("--valkey-password-file={}", right.display()),
        ],
    );
    let running = apiserver::start(&a).await.expect("starts with the file");
    running.stop().await;

    // No password at all.
    let a = args(dir.path(), &[format!("--valkey-url={url}")]);
    let (e, took) = start_error(&a).await;
    assert!(
        e.contains("refused authentication: Valkey requires a password and none was given"),
        "{e}"
    );
    assert!(took < Duration::from_secs(3), "{took:?}");

    // An empty password file is named.
    let empty = file(dir.path(), "empty", "\n");
    let a = args(
        dir.path(),
        &[
            format!("--valkey-url={url}"),
            format!("--valkey-password-file={}", empty.display()),
        ],
    );
    let (e, _) = start_error(&a).await;
    assert!(e.contains("is empty"), "{e}");
    assert!(e.contains(&empty.display().to_string()), "{e}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_clusters_default_user_and_unknown_users_are_refused() {
    let valkey = ValkeyServer::start_with_auth(ValkeyAuth::cluster("apiserver-pw"));
    let dir = tempfile::tempdir().expect("tempdir");
    let pw = valkey.password_file().expect("password file");
    for user in ["default", "nobody"] {
        let a = args(
            dir.path(),
            &[
                format!("--valkey-url={}", valkey.url()),
                format!("--valkey-username={user}"),
                format!("--valkey-password-file={}", pw.display()),
            ],
        );
        let (e, _) = start_error(&a).await;
        assert!(e.contains("refused authentication"), "{user}: {e}");
        assert!(e.contains(&format!("user {user}")), "{user}: {e}");
    }
    // The right user (from the URL) with the file's password starts.
    let a = args(
        dir.path(),
        &[
            format!(
                "--valkey-url=redis://substrate-apiserver@127.0.0.1:{}/",
                valkey.port()
            ),
            format!("--valkey-password-file={}", pw.display()),
        ],
    );
    apiserver::start(&a).await.expect("starts").stop().await;
}

/// A Valkey with the shipped ACL rules changed by `edit` (applied to the apiserver's line).
fn with_rules(edit: impl Fn(&str) -> String) -> ValkeyServer {
    let ValkeyAuth::Acl {
        users,
        admin,
        client,
    } = ValkeyAuth::cluster("pw")
    else {
        unreachable!()
    };
    let users = users
        .iter()
        .map(|l| {
            if l.starts_with("user substrate-apiserver ") {
                edit(l)
            } else {
                l.clone()
            }
        })
        .collect();
    ValkeyServer::start_with_auth(ValkeyAuth::Acl {
        users,
        admin,
        client,
    })
}

/// Connects a store and creates, reads and updates one object.
async fn exercise(server: &ValkeyServer) -> Result<(), StorageError> {
    let store = Store::connect_to(&server.endpoint(), StoreOptions::default(), &[ACTORS]).await?;
    let key = ObjectKey::new("ns", "a");
    let obj = json!({"metadata": {"namespace": "ns", "name": "a"}, "spec": {}});
    let created = store.create(ACTORS, &key, &obj, &["l:a=b".into()]).await?;
    let rv: u64 = created["metadata"]["resourceVersion"]
        .as_str()
        .and_then(|s| s.parse().ok())
        .expect("rv");
    store.get(ACTORS, &key).await?;
    store
        .update(ACTORS, &key, rv, &obj, &["l:a=b".into()], &[])
        .await?;
    store
        .cache(ACTORS)
        .wait_for_rv(rv + 1, Duration::from_secs(10))
        .await?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_part_of_the_shipped_acl_rules_is_needed() {
    // As shipped: enough (the whole storage suite proves it in storage_acl.rs).
    exercise(&with_rules(str::to_string))
        .await
        .expect("the shipped rules suffice");
    for (what, from, to) in [
        ("EVALSHA", " +evalsha", ""),
        ("SCRIPT LOAD", " +script|load", ""),
        ("@read (GET, XREAD, XREVRANGE)", " +@read", ""),
        ("@write (inside the scripts)", " +@write", ""),
        ("@connection (PING)", " +@connection", ""),
        ("the key pattern", "~substrate:*", "~other:*"),
    ] {
        let server = with_rules(|l| {
            assert!(l.contains(from), "the shipped rules have {from}: {l}");
            l.replace(from, to)
        });
        let r = exercise(&server).await;
        let e = r.expect_err(&format!("without {what} the store cannot work"));
        assert!(
            e.to_string().to_lowercase().contains("no permissions"),
            "without {what}: {e}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_acl_user_cannot_do_what_the_apiserver_never_does() {
    let server = ValkeyServer::start_with_auth(ValkeyAuth::cluster("pw"));
    exercise(&server).await.expect("works");
    let client = server.endpoint().client().expect("client");
    let mut c = client
        .get_multiplexed_async_connection()
        .await
        .expect("log in as substrate-apiserver");
    for args in [
        vec!["FLUSHALL"],
        vec!["FLUSHDB"],
        vec!["KEYS", "*"],
        vec!["CONFIG", "GET", "requirepass"],
        vec!["CONFIG", "SET", "appendfsync", "no"],
        vec!["SHUTDOWN"],
        vec!["ACL", "LIST"],
        vec!["INFO"],
        vec!["MONITOR"],
        vec!["SCRIPT", "FLUSH"],
        vec!["FUNCTION", "FLUSH"],
        vec!["EVAL", "return 1", "0"],
        vec!["CLIENT", "KILL", "TYPE", "normal"],
        vec!["SUBSCRIBE", "c"],
        vec!["PUBLISH", "c", "m"],
        vec!["SET", "other:key", "v"],
        vec!["GET", "other:key"],
    ] {
        let mut cmd = redis::cmd(args[0]);
        for a in &args[1..] {
            cmd.arg(*a);
        }
        let r: Result<redis::Value, _> = cmd.query_async(&mut c).await;
        let e = r.expect_err(&format!("{args:?} is refused"));
        assert!(
            e.to_string().to_lowercase().contains("no permissions"),
            "{args:?}: {e}"
        );
    }
    // The data is still there.
    let n: u64 = redis::cmd("DBSIZE")
        .query_async(
            &mut server
                .client()
                .get_multiplexed_async_connection()
                .await
                .expect("admin"),
        )
        .await
        .expect("dbsize");
    assert!(n > 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_with_a_ca_file() {
    let valkey = ValkeyServer::start_with(ValkeyOptions {
        auth: ValkeyAuth::Password("tls-pw".into()),
        tls: true,
    });
    let dir = tempfile::tempdir().expect("tempdir");
    let url = valkey.tls_url().expect("tls url");
    let ca = valkey.tls_ca_file().expect("ca");
    let pw = valkey.password_file().expect("password file");
    let a = args(
        dir.path(),
        &[
            format!("--valkey-url={url}"),
            format!("--valkey-tls-ca-file={}", ca.display()),
            format!("--valkey-password-file={}", pw.display()),
        ],
    );
    let running = apiserver::start(&a).await.expect("starts over TLS");
    // It wrote through TLS: the bootstrap atespaces are in Valkey.
    let mut c = valkey
        .client()
        .get_multiplexed_async_connection()
        .await
        .expect("admin");
    let rv: Option<String> = redis::cmd("GET")
        .arg("substrate:{substrate.ate.dev/atespaces}:rv")
        .query_async(&mut c)
        .await
        .expect("get");
    assert!(rv.is_some(), "the apiserver wrote over TLS");
    running.stop().await;

    // A CA file with a plain URL is refused before connecting.
    let a = args(
        dir.path(),
        &[
            format!("--valkey-url={}", valkey.url()),
            format!("--valkey-tls-ca-file={}", ca.display()),
        ],
    );
    let (e, _) = start_error(&a).await;
    assert!(e.contains("needs a rediss:// URL"), "{e}");
}

// --- hack/lib.sh ---------------------------------------------------------------------------

/// Runs `script` in bash after sourcing hack/lib.sh, with the state directory `home` and
/// Valkey on `port`; returns stdout, panicking (with stderr) when it fails.
fn lib_sh(home: &Path, port: u16, script: &str) -> String {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let mut cmd = Command::new("bash");
    cmd.arg("-c")
        .arg(format!(
            "set -euo pipefail; source hack/lib.sh; ensure_valkey >/dev/null 2>&1; {script}"
        ))
        .current_dir(&root)
        .env("SUBSTRATE_HOME", home)
        .env("SUBSTRATE_VALKEY_PORT", port.to_string())
        .env_remove("SUBSTRATE_SUPERVISE_BIN")
        .env_remove("REDISCLI_AUTH");
    let out = cmd.output().expect("bash");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{script}: {}\n{stderr}", out.status);
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Stops the Valkey of a hack/lib.sh state directory on drop (a failed test leaves none).
struct LibValkey {
    home: PathBuf,
}

impl Drop for LibValkey {
    fn drop(&mut self) {
        let pidfile = self.home.join("run/valkey.pid");
        if let Ok(pid) = std::fs::read_to_string(&pidfile) {
            let _ = Command::new("kill").args(["-KILL", pid.trim()]).status();
        }
    }
}

fn mode(p: &Path) -> u32 {
    std::fs::metadata(p).expect("stat").permissions().mode() & 0o777
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("port")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hack_lib_starts_valkey_with_a_generated_password() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let home = tmp.path().join("state");
    let port = free_port();
    let _guard = LibValkey { home: home.clone() };
    lib_sh(&home, port, "valkey_start");
    let password_file = home.join("valkey/password");
    let password = std::fs::read_to_string(&password_file).expect("password file");
    let password = password.trim_end().to_string();
    assert_eq!(password.len(), 64, "64 hex digits");
    assert!(password.bytes().all(|b| b.is_ascii_hexdigit()));
    assert_eq!(mode(&password_file), 0o600);
    assert_eq!(mode(&home.join("valkey/auth.conf")), 0o600);
    assert_eq!(mode(&home.join("valkey")), 0o700, "the AOF's directory too");

    // Nothing gets past Valkey without the password, and `ps` does not show it.
    assert!(unauthenticated(port, "PING").starts_with("-NOAUTH"));
    assert!(unauthenticated(port, "KEYS *").starts_with("-NOAUTH"));
    let pid = std::fs::read_to_string(home.join("run/valkey.pid")).expect("pid");
    let cmdline = std::fs::read(format!("/proc/{}/cmdline", pid.trim())).expect("cmdline");
    let cmdline = String::from_utf8_lossy(&cmdline).replace('\0', " ");
    assert!(!cmdline.contains(&password), "{cmdline}");
    // The library's own cli calls log in (REDISCLI_AUTH).
    assert_eq!(
        lib_sh(&home, port, "valkey_ping \"$VALKEY_PORT\" && echo up").trim(),
        "up"
    );

    // The apiserver serves with --valkey-password-file (and writes its bootstrap objects).
    let dir = tempfile::tempdir().expect("tempdir");
    let a = args(
        dir.path(),
        &[
            format!("--valkey-url=redis://127.0.0.1:{port}"),
            format!("--valkey-password-file={}", password_file.display()),
        ],
    );
    apiserver::start(&a).await.expect("serves").stop().await;

    // A restart keeps the password (and the data); valkey_stop's SHUTDOWN logs in.
    lib_sh(&home, port, "valkey_stop; valkey_start");
    let again = std::fs::read_to_string(&password_file).expect("password file");
    assert_eq!(again.trim_end(), password);
    let client = apiserver::storage::Endpoint::new(format!("redis://127.0.0.1:{port}"))
        .with_password(&password)
        .client()
        .expect("client");
    let mut c = client
        .get_multiplexed_async_connection()
        .await
        .expect("log in");
    let rv: Option<String> = redis::cmd("GET")
        .arg("substrate:{substrate.ate.dev/atespaces}:rv")
        .query_async(&mut c)
        .await
        .expect("get");
    assert!(rv.is_some(), "the data survived the restart");
    lib_sh(&home, port, "valkey_stop");
    assert!(
        std::net::TcpStream::connect(("127.0.0.1", port)).is_err(),
        "stopped"
    );

    // A Valkey an older hack/up.sh started (no password) is reported for a restart.
    let out = lib_sh(
        &home,
        port,
        r#"spawn_daemon "$VALKEY_PIDFILE" "$VALKEY_LOG" "$VALKEY_SERVER" "$ROOT/config/valkey/valkey.conf" \
             --port "$VALKEY_PORT" --dir "$SUBSTRATE_VALKEY_DIR"
           printf '%s\n' "$VALKEY_PORT" >"$VALKEY_PORTFILE"
           wait_for -t 20 valkey_ping "$VALKEY_PORT"
           valkey_start 2>/dev/null
           echo "without=$VALKEY_WITHOUT_PASSWORD"
           valkey_stop 2>/dev/null; valkey_start 2>/dev/null
           valkey_requires_auth "$VALKEY_PORT" && echo requires
           valkey_stop 2>/dev/null"#,
    );
    assert!(out.contains("without=1"), "{out}");
    assert!(out.contains("requires"), "{out}");
}

#[test]
fn a_valkey_test_server_with_an_acl_keeps_its_users_across_restarts() {
    let mut s = ValkeyServer::start_with_auth(ValkeyAuth::cluster("pw"));
    s.kill();
    s.restart();
    assert!(unauthenticated(s.port(), "PING").starts_with("-NOAUTH"));
    let login = s.client_login().expect("login");
    assert_eq!(login, Login::user("substrate-apiserver", "pw"));
    let mut c = s
        .endpoint()
        .client()
        .expect("client")
        .get_connection()
        .expect("log in");
    let pong: String = redis::cmd("PING").query(&mut c).expect("ping");
    assert_eq!(pong, "PONG");
}

#[test]
fn the_documented_acl_is_the_shipped_one_and_renders_as_documented() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let readme = std::fs::read_to_string(root.join("config/valkey/README.md")).expect("README");
    for line in apiserver::testing::CLUSTER_ACL_TEMPLATE.lines() {
        assert!(
            readme.contains(line),
            "config/valkey/README.md shows users.acl.tmpl's line {line:?}"
        );
    }
    // The README's rendering (sha256sum and sed) gives what the tests run Valkey with.
    let tmp = tempfile::tempdir().expect("tempdir");
    std::fs::write(tmp.path().join("password"), "pa55-w0rd\n").expect("write");
    let out = Command::new("bash")
        .arg("-c")
        .arg(
            r#"set -euo pipefail
               pw="$(head -n 1 "$1/password")"
               sha="$(printf '%s' "$pw" | sha256sum | cut -d ' ' -f 1)"
               sed "s/\${APISERVER_PASSWORD_SHA256}/$sha/" "$2""#,
        )
        .arg("render")
        .arg(tmp.path())
        .arg(root.join("config/valkey/users.acl.tmpl"))
        .output()
        .expect("bash");
    assert!(out.status.success(), "{out:?}");
    let rendered: Vec<String> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(str::to_string)
        .collect();
    assert_eq!(
        rendered,
        apiserver::testing::render_cluster_acl("pa55-w0rd")
    );
    assert!(
        readme.contains(r#"sed "s/\${APISERVER_PASSWORD_SHA256}/$sha/" users.acl.tmpl"#),
        "the README renders the file the same way"
    );
}
