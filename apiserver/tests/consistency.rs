//! Paginated lists are snapshots, against a real apiserver and Valkey over HTTPS (curl): every
//! page of a list is a slice of the state at the first page's resourceVersion and reports it,
//! whatever is written between the pages; a continue token whose resourceVersion has left the
//! watch history is `410 Expired` with Kubernetes' message and an inconsistent token.

use std::collections::BTreeMap;
use std::path::PathBuf;

use serde_json::{Value, json};

use apiserver::testing::ValkeyServer;

const ACTORS: &str = "/apis/substrate.ate.dev/v1alpha1/namespaces/team/actors";
const ALL_ACTORS: &str = "/apis/substrate.ate.dev/v1alpha1/actors";

/// An apiserver on a real Valkey, with a small watch history.
struct Api {
    running: apiserver::Running,
    _valkey: ValkeyServer,
    dir: tempfile::TempDir,
}

impl Api {
    async fn start(history: usize) -> Self {
        let valkey = ValkeyServer::start();
        let dir = tempfile::tempdir().expect("tempdir");
        let (mut args, _) = apiserver::testing::apiserver_args(&valkey, dir.path());
        args.watch_history = history;
        let running = apiserver::start(&args).await.expect("apiserver starts");
        let api = Api {
            running,
            _valkey: valkey,
            dir,
        };
        let (code, body) = api.http("GET", "/readyz", None).await;
        assert_eq!(code, 200, "readyz: {body}");
        api
    }

    fn pki(&self, file: &str) -> PathBuf {
        self.dir.path().join("pki").join(file)
    }

    /// One HTTPS request as the admin; returns the status code and the JSON body (`Null`
    /// when it is not JSON).
    async fn http(&self, method: &str, path: &str, body: Option<Value>) -> (u16, Value) {
        let addr = self.running.addr;
        let mut c = tokio::process::Command::new("curl");
        c.args([
            "-sS",
            "--max-time",
            "30",
            "-X",
            method,
            "-w",
            "\n%{http_code}",
        ])
        .arg("--cacert")
        .arg(self.pki("ca.crt"))
        .arg("--cert")
        .arg(self.pki("admin.crt"))
        .arg("--key")
        .arg(self.pki("admin.key"));
        if let Some(b) = &body {
            let ct = if method == "PATCH" {
                "application/merge-patch+json"
            } else {
                "application/json"
            };
            c.args(["-H", &format!("Content-Type: {ct}"), "--data-binary"])
                .arg(b.to_string());
        }
        c.arg(format!("https://{addr}{path}"));
        let out = c.output().await.expect("curl runs");
        let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
        let (body, code) = stdout.rsplit_once('\n').unwrap_or(("", stdout.as_str()));
        let code = code.trim().parse().unwrap_or_else(|_| {
            panic!(
                "curl {method} {path}: {stdout} {}",
                String::from_utf8_lossy(&out.stderr)
            )
        });
        (code, serde_json::from_str(body).unwrap_or(Value::Null))
    }

    async fn ok(&self, method: &str, path: &str, body: Option<Value>) -> Value {
        let (code, v) = self.http(method, path, body).await;
        assert!((200..300).contains(&code), "{method} {path}: {code} {v}");
        v
    }

    async fn atespace(&self, name: &str) {
        self.ok(
            "POST",
            "/apis/substrate.ate.dev/v1alpha1/atespaces",
            Some(
                json!({"apiVersion": "substrate.ate.dev/v1alpha1", "kind": "Atespace",
                "metadata": {"name": name}, "spec": {}}),
            ),
        )
        .await;
    }

    async fn actor(&self, name: &str, app: &str) {
        self.ok(
            "POST",
            ACTORS,
            Some(
                json!({"apiVersion": "substrate.ate.dev/v1alpha1", "kind": "Actor",
                "metadata": {"name": name, "labels": {"app": app}},
                "spec": {"template": {"name": "t"}}}),
            ),
        )
        .await;
    }

    async fn label(&self, name: &str, app: &str) {
        self.ok(
            "PATCH",
            &format!("{ACTORS}/{name}"),
            Some(json!({"metadata": {"labels": {"app": app}}})),
        )
        .await;
    }

    async fn delete(&self, name: &str) {
        self.ok("DELETE", &format!("{ACTORS}/{name}"), None).await;
    }
}

/// `name -> (resourceVersion, app label)` of list items.
type State = BTreeMap<String, (String, String)>;

fn state_of(items: &[Value]) -> State {
    items
        .iter()
        .map(|o| {
            (
                o["metadata"]["name"]
                    .as_str()
                    .unwrap_or_default()
                    .to_string(),
                (
                    o["metadata"]["resourceVersion"]
                        .as_str()
                        .unwrap_or_default()
                        .to_string(),
                    o["metadata"]["labels"]["app"]
                        .as_str()
                        .unwrap_or_default()
                        .to_string(),
                ),
            )
        })
        .collect()
}

fn rv(list: &Value) -> String {
    list["metadata"]["resourceVersion"]
        .as_str()
        .expect("list resourceVersion")
        .to_string()
}

fn token(list: &Value) -> Option<String> {
    list["metadata"]["continue"]
        .as_str()
        .filter(|s| !s.is_empty())
        .map(str::to_string)
}

fn items(list: &Value) -> Vec<Value> {
    list["items"].as_array().cloned().unwrap_or_default()
}

/// Percent-encodes a continue token for a query string.
fn q(s: &str) -> String {
    form_urlencoded::byte_serialize(s.as_bytes()).collect()
}

/// A paginated list in progress: the first page is read, the rest by [`Paged::finish`].
struct Paged {
    path: &'static str,
    query: String,
    rv: String,
    items: Vec<Value>,
    token: Option<String>,
}

impl Paged {
    async fn start(api: &Api, path: &'static str, query: &str) -> Self {
        let first = api.ok("GET", &format!("{path}?{query}"), None).await;
        let token = token(&first);
        assert!(token.is_some(), "{path}?{query} has more than one page");
        Paged {
            path,
            // Later pages send only the token (and the selectors), like client-go's pager.
            query: query
                .split('&')
                .filter(|p| !p.starts_with("resourceVersion"))
                .collect::<Vec<_>>()
                .join("&"),
            rv: rv(&first),
            items: items(&first),
            token,
        }
    }

    /// Fetches the remaining pages, checking that each reports the first page's rv.
    async fn finish(mut self, api: &Api) -> State {
        let mut pages = 1;
        while let Some(t) = self.token.take() {
            let page = api
                .ok(
                    "GET",
                    &format!("{}?{}&continue={}", self.path, self.query, q(&t)),
                    None,
                )
                .await;
            pages += 1;
            assert_eq!(
                rv(&page),
                self.rv,
                "page {pages} of {}?{} reports the first page's resourceVersion",
                self.path,
                self.query
            );
            self.items.extend(items(&page));
            self.token = token(&page);
            assert!(pages < 100, "pagination ends");
        }
        assert!(pages > 2, "the list had several pages after the first");
        state_of(&self.items)
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pages_are_slices_of_the_first_pages_snapshot() {
    let api = Api::start(1000).await;
    api.atespace("team").await;
    for i in 0..30 {
        api.actor(&format!("a{i:02}"), if i % 2 == 0 { "web" } else { "db" })
            .await;
    }
    let full = api.ok("GET", ACTORS, None).await;
    let before = state_of(&items(&full));
    assert_eq!(before.len(), 30);
    let web: State = before
        .iter()
        .filter(|(_, (_, app))| app == "web")
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect();

    // Lists started before the writes: consistent (resourceVersion unset), from the cache
    // (resourceVersion=0), with a label selector, and across namespaces.
    let consistent = Paged::start(&api, ACTORS, "limit=7").await;
    let cached = Paged::start(&api, ACTORS, "limit=7&resourceVersion=0").await;
    let selected = Paged::start(&api, ACTORS, "limit=3&labelSelector=app%3Dweb").await;
    let everywhere = Paged::start(&api, ALL_ACTORS, "limit=6").await;
    for p in [&consistent, &cached, &selected, &everywhere] {
        assert_eq!(p.rv, rv(&full), "nothing was written since the full list");
    }

    // Deletes, updates and creates on the first page and on later ones.
    api.delete("a03").await;
    api.delete("a15").await;
    api.delete("a28").await;
    api.label("a01", "web").await;
    api.label("a12", "db").await;
    api.label("a21", "web").await;
    api.actor("a10b", "web").await;
    api.actor("a99", "web").await;
    api.actor("a00a", "web").await;

    assert_eq!(consistent.finish(&api).await, before);
    assert_eq!(cached.finish(&api).await, before);
    assert_eq!(selected.finish(&api).await, web);
    assert_eq!(everywhere.finish(&api).await, before);

    // `resourceVersionMatch=Exact` serves the state at that resourceVersion.
    let exact = api
        .ok(
            "GET",
            &format!(
                "{ACTORS}?resourceVersion={}&resourceVersionMatch=Exact",
                rv(&full)
            ),
            None,
        )
        .await;
    assert_eq!(rv(&exact), rv(&full));
    assert_eq!(state_of(&items(&exact)), before);
    // A new list sees the writes.
    let after = state_of(&items(&api.ok("GET", ACTORS, None).await));
    assert_eq!(after.len(), 30);
    assert!(after.contains_key("a99") && !after.contains_key("a15"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_expired_continue_token_is_410_with_an_inconsistent_token() {
    const HISTORY: usize = 8;
    let api = Api::start(HISTORY).await;
    api.atespace("team").await;
    for i in 0..10 {
        api.actor(&format!("a{i:02}"), "web").await;
    }
    let first = api.ok("GET", &format!("{ACTORS}?limit=4"), None).await;
    let t = token(&first).expect("more pages");
    // More writes than the history holds.
    for i in 0..=HISTORY {
        api.label(&format!("a{:02}", i % 10), &format!("v{i}"))
            .await;
    }
    api.delete("a09").await;
    let (code, status) = api
        .http("GET", &format!("{ACTORS}?limit=4&continue={}", q(&t)), None)
        .await;
    assert_eq!(code, 410, "{status}");
    assert_eq!(status["kind"], "Status");
    assert_eq!(status["reason"], "Expired");
    assert_eq!(status["code"], 410);
    assert_eq!(
        status["message"],
        "The provided continue parameter is too old to display a consistent list result. You can start a new list without the continue parameter, or use the continue token in this response to retrieve the remainder of the results. Continuing with the provided token results in an inconsistent list - objects that were created, modified, or deleted between the time the first chunk was returned and now may show up in the list."
    );
    // The inconsistent token continues after the first page, at the latest state.
    let inconsistent = token(&status).expect("Status carries metadata.continue");
    let rest = api
        .ok(
            "GET",
            &format!("{ACTORS}?limit=100&continue={}", q(&inconsistent)),
            None,
        )
        .await;
    let latest = api.ok("GET", ACTORS, None).await;
    assert_eq!(rv(&rest), rv(&latest));
    let names: Vec<String> = state_of(&items(&rest)).into_keys().collect();
    assert_eq!(
        names,
        ["a04", "a05", "a06", "a07", "a08"]
            .map(String::from)
            .to_vec()
    );
    assert_eq!(token(&rest), None);
    // A malformed token is 400.
    let (code, _) = api
        .http("GET", &format!("{ACTORS}?limit=4&continue=nope"), None)
        .await;
    assert_eq!(code, 400);
}
