//! `substrate-bench`: loads a RUNNING apiserver over HTTPS/2 with concurrent clients and prints
//! throughput and p50/p99/max latency of create, get, list, update, merge patch, server-side
//! apply (on the same actors as the updates, compared with them) and watch fan-out, and
//! Valkey's memory per actor. Run it through `hack/bench.sh`; figures and their analysis are
//! in `docs/benchmarks.md`.
//!
//! `--target kube` runs the same phases, with the same code and bodies, against a plain
//! kube-apiserver + etcd serving the equivalent CRD `actors.benchmark.ate.dev` (installed by
//! the run, see `bench/server.rs`), in Namespaces instead of atespaces; `--target both` runs
//! every phase on Substrate and then on kube-apiserver, back to back in one process, and
//! prints the ratio per operation (`hack/bench.sh --compare-kube`). The memory phase (Valkey's
//! bytes per actor) has no kube-apiserver equivalent and runs on Substrate only.
//!
//! Every run works in atespaces (Namespaces) of its own, `bench-<id>` (create, get, update,
//! patch), `bench-<id>-list` (exactly `--list-objects` actors), `bench-<id>-watch` and
//! `bench-<id>-mem`, and deletes them at the end (the cascade is asynchronous; pass
//! `--wait-cleanup` to wait for it). Failed requests are counted per phase and status, never
//! measured as successes.

#[path = "bench/client.rs"]
mod client;
#[path = "bench/probe.rs"]
mod probe;
#[path = "bench/server.rs"]
mod server;
#[path = "bench/stats.rs"]
mod stats;
#[path = "bench/watch.rs"]
mod watch;

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use bytes::Bytes;
use clap::Parser;
use http::{Method, StatusCode};
use serde_json::{Value, json};

use client::{Client, Credentials};
use probe::Probe;
use server::Server;
use stats::{OpError, PhaseResult, Recorded, expect, run_concurrent};

const KIB: f64 = 1024.0;
/// The annotation the patch phase sets.
const PATCH_ANNOTATION: &str = "bench.substrate.ate.dev/patch";

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
enum Phase {
    Create,
    Get,
    List,
    Update,
    Patch,
    Apply,
    Watch,
    Memory,
}

/// The phases, in the order they run.
const PHASES: [Phase; 8] = [
    Phase::Create,
    Phase::Get,
    Phase::List,
    Phase::Update,
    Phase::Patch,
    Phase::Apply,
    Phase::Watch,
    Phase::Memory,
];

/// What `--target` loads.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
enum TargetArg {
    /// Substrate's apiserver (`--kubeconfig`/`--pki-dir`).
    Substrate,
    /// kube-apiserver + etcd with the CRD `actors.benchmark.ate.dev` (`--kube-kubeconfig`).
    Kube,
    /// Both, each phase on Substrate then on kube-apiserver, with the ratios.
    Both,
}

/// Benchmark of a running Substrate apiserver (see docs/benchmarks.md).
#[derive(Debug, Clone, Parser)]
#[command(name = "substrate-bench", version)]
struct Args {
    /// Admin kubeconfig (inline certificate data) of the apiserver to load.
    #[arg(
        long,
        env = "SUBSTRATE_BENCH_KUBECONFIG",
        default_value = ".substrate/kubeconfig"
    )]
    kubeconfig: PathBuf,
    /// Use ca.crt, admin.crt and admin.key from this PKI directory instead of the kubeconfig.
    #[arg(long, env = "SUBSTRATE_BENCH_PKI_DIR")]
    pki_dir: Option<PathBuf>,
    /// Server URL (default: the kubeconfig's, or https://127.0.0.1:6443 with --pki-dir).
    #[arg(long, env = "SUBSTRATE_BENCH_SERVER")]
    server: Option<String>,
    /// Valkey the apiserver uses (memory phase; CPU and command statistics of every phase).
    #[arg(
        long,
        env = "SUBSTRATE_BENCH_VALKEY_URL",
        default_value = "redis://127.0.0.1:6390"
    )]
    valkey_url: String,
    /// Valkey ACL user (default: the URL's user, else `default`).
    #[arg(long, env = "SUBSTRATE_BENCH_VALKEY_USERNAME")]
    valkey_username: Option<String>,
    /// File whose first line is the Valkey password (wins over one in --valkey-url).
    #[arg(long, env = "SUBSTRATE_BENCH_VALKEY_PASSWORD_FILE")]
    valkey_password_file: Option<PathBuf>,
    /// CA bundle of Valkey's certificate (a `rediss://` URL).
    #[arg(long, env = "SUBSTRATE_BENCH_VALKEY_TLS_CA_FILE")]
    valkey_tls_ca_file: Option<PathBuf>,
    /// The apiserver's --key-prefix.
    #[arg(long, env = "SUBSTRATE_BENCH_KEY_PREFIX", default_value = "substrate")]
    key_prefix: String,
    /// Pid of the apiserver, to report its CPU use per phase (optional).
    #[arg(long, env = "SUBSTRATE_BENCH_APISERVER_PID")]
    apiserver_pid: Option<u32>,
    /// What to load: Substrate, a kube-apiserver with an equivalent CRD, or both in one run.
    #[arg(
        long,
        env = "SUBSTRATE_BENCH_TARGET",
        value_enum,
        default_value = "substrate"
    )]
    target: TargetArg,
    /// Admin kubeconfig (inline certificate data) of the kube-apiserver of `--target kube|both`.
    #[arg(long, env = "SUBSTRATE_BENCH_KUBE_KUBECONFIG")]
    kube_kubeconfig: Option<PathBuf>,
    /// Pid of that kube-apiserver, to report its CPU use per phase (optional).
    #[arg(long, env = "SUBSTRATE_BENCH_KUBE_APISERVER_PID")]
    kube_apiserver_pid: Option<u32>,
    /// Pid of its etcd (optional; its CPU counts as the store's, as Valkey's for Substrate).
    #[arg(long, env = "SUBSTRATE_BENCH_ETCD_PID")]
    etcd_pid: Option<u32>,
    /// HTTP/2 connections to open (to each server).
    #[arg(long, env = "SUBSTRATE_BENCH_CONNECTIONS", default_value_t = 8)]
    connections: usize,
    /// Requests in flight at once (over all connections).
    #[arg(long, env = "SUBSTRATE_BENCH_CONCURRENCY", default_value_t = 64)]
    concurrency: usize,
    /// Phases to run, in this order whatever the order given.
    #[arg(
        long,
        env = "SUBSTRATE_BENCH_PHASES",
        value_enum,
        value_delimiter = ',',
        default_value = "create,get,list,update,patch,apply,watch,memory"
    )]
    phases: Vec<Phase>,
    /// Actors created by the create phase (get and update use them).
    #[arg(long, env = "SUBSTRATE_BENCH_CREATES", default_value_t = 20_000)]
    creates: usize,
    /// GETs of random actors.
    #[arg(long, env = "SUBSTRATE_BENCH_GETS", default_value_t = 100_000)]
    gets: usize,
    /// Actors in the atespace the list phase lists.
    #[arg(long, env = "SUBSTRATE_BENCH_LIST_OBJECTS", default_value_t = 1000)]
    list_objects: usize,
    /// LISTs of that atespace.
    #[arg(long, env = "SUBSTRATE_BENCH_LISTS", default_value_t = 500)]
    lists: usize,
    /// LISTs in flight at once (a list is ~1,000 times the work of a get: with 64 in flight the
    /// latency would only measure queueing).
    #[arg(long, env = "SUBSTRATE_BENCH_LIST_CONCURRENCY", default_value_t = 8)]
    list_concurrency: usize,
    /// List in pages of this many objects (`?limit=` and `continue`, as kubectl and
    /// client-go's pager do; one measured list is all its pages); 0: one request.
    #[arg(long, env = "SUBSTRATE_BENCH_LIST_PAGE_SIZE", default_value_t = 0)]
    list_page_size: usize,
    /// PUTs (label change with the object's resourceVersion).
    #[arg(long, env = "SUBSTRATE_BENCH_UPDATES", default_value_t = 20_000)]
    updates: usize,
    /// JSON merge patches (annotation `bench.substrate.ate.dev/patch=<n>`, no
    /// resourceVersion) of the update phase's actors.
    #[arg(long, env = "SUBSTRATE_BENCH_PATCHES", default_value_t = 20_000)]
    patches: usize,
    /// Server-side applies (`application/apply-patch+yaml` with a JSON body as kubectl sends
    /// it, label tier t1<->t2, forced) of the update phase's actors.
    #[arg(long, env = "SUBSTRATE_BENCH_APPLIES", default_value_t = 20_000)]
    applies: usize,
    /// Send the apply configurations as YAML instead of JSON (kubectl and controller-runtime
    /// send JSON; YAML costs the server a YAML parse).
    #[arg(long, env = "SUBSTRATE_BENCH_APPLY_YAML")]
    apply_yaml: bool,
    /// Concurrent watches of the watch phase.
    #[arg(long, env = "SUBSTRATE_BENCH_WATCHERS", default_value_t = 100)]
    watchers: usize,
    /// Sequential writes the watchers must see.
    #[arg(long, env = "SUBSTRATE_BENCH_WATCH_WRITES", default_value_t = 200)]
    watch_writes: usize,
    /// Pause after each of those writes, in milliseconds.
    #[arg(long, env = "SUBSTRATE_BENCH_WATCH_INTERVAL_MS", default_value_t = 5)]
    watch_interval_ms: u64,
    /// How long the watchers may take after the last write, in seconds.
    #[arg(long, env = "SUBSTRATE_BENCH_WATCH_TIMEOUT", default_value_t = 30)]
    watch_timeout: u64,
    /// Actors in the atespace of the memory phase.
    #[arg(long, env = "SUBSTRATE_BENCH_MEMORY_ACTORS", default_value_t = 100_000)]
    memory_actors: usize,
    /// Send `?fieldValidation=<this>` with every write (kubectl sends Strict; unset, the
    /// server applies its default, Warn). `Ignore` skips the server's unknown-field check.
    #[arg(long, env = "SUBSTRATE_BENCH_FIELD_VALIDATION", value_parser = ["Strict", "Warn", "Ignore"])]
    field_validation: Option<String>,
    /// Print one JSON document on stdout (the table goes to stderr).
    #[arg(long, env = "SUBSTRATE_BENCH_JSON")]
    json: bool,
    /// Wait until the deleted atespaces (and their actors) are gone.
    #[arg(long, env = "SUBSTRATE_BENCH_WAIT_CLEANUP")]
    wait_cleanup: bool,
    /// Keep the benchmark's atespaces (do not delete them).
    #[arg(
        long,
        env = "SUBSTRATE_BENCH_NO_CLEANUP",
        conflicts_with = "wait_cleanup"
    )]
    no_cleanup: bool,
    /// Longest wait for terminating atespaces (before the run, and with --wait-cleanup).
    #[arg(long, env = "SUBSTRATE_BENCH_CLEANUP_TIMEOUT", default_value_t = 1800)]
    cleanup_timeout: u64,
}

/// A typical actor: two labels, a template ref, activation and idle timeout.
fn actor_body(server: Server, ns: &str, name: &str) -> Bytes {
    Bytes::from(
        json!({
            "apiVersion": server.api_version(),
            "kind": "Actor",
            "metadata": {"name": name, "namespace": ns, "labels": {"app": "bench", "tier": "t1"}},
            "spec": {"template": {"name": "counter"}, "activation": "OnDemand", "idleTimeout": "5m"},
        })
        .to_string(),
    )
}

/// The actors the get and update phases work on, with the last response of each (its
/// current state and resourceVersion).
struct ActorSet {
    ns: String,
    /// The Actors collection of `ns`.
    path: String,
    names: Vec<String>,
    objects: Vec<tokio::sync::Mutex<Bytes>>,
}

/// A target figure and whether this run met it.
struct Target {
    what: &'static str,
    goal: String,
    measured: String,
    met: bool,
}

struct Bench {
    server: Server,
    args: Args,
    client: Arc<Client>,
    probe: Probe,
    run_id: String,
    atespaces: Vec<String>,
    rows: Vec<PhaseResult>,
    targets: Vec<Target>,
    details: serde_json::Map<String, Value>,
    base: Option<Arc<ActorSet>>,
}

impl Bench {
    /// The query string of write requests (`?fieldValidation=...` or empty).
    fn write_query(&self) -> String {
        self.args
            .field_validation
            .as_deref()
            .map_or_else(String::new, |v| format!("?fieldValidation={v}"))
    }

    fn ns(&self, suffix: &str) -> String {
        if suffix.is_empty() {
            format!("bench-{}", self.run_id)
        } else {
            format!("bench-{}-{suffix}", self.run_id)
        }
    }

    fn actors_path(&self, ns: &str) -> String {
        self.server.actors_path(ns)
    }

    /// Creates atespace (on kube-apiserver: Namespace) `name`.
    async fn create_atespace(&mut self, name: &str) -> anyhow::Result<()> {
        let body = self.server.namespace_body(name);
        let r = self
            .client
            .send(
                Method::POST,
                &self.server.namespaces_path(),
                Some("application/json"),
                Bytes::from(body.to_string()),
            )
            .await?;
        expect(r, StatusCode::CREATED)
            .map_err(|e| anyhow::anyhow!("creating namespace {name}: {}: {}", e.kind, e.detail))?;
        self.atespaces.push(name.to_string());
        Ok(())
    }

    /// Creates `n` actors `<prefix><i>` in `ns`, `concurrency` at a time; keeps the response
    /// bodies when `keep`.
    async fn create_actors(
        &self,
        label: &str,
        ns: &str,
        prefix: &str,
        n: usize,
        keep: bool,
    ) -> (Recorded, Vec<Option<Bytes>>) {
        let slots: Arc<Vec<std::sync::Mutex<Option<Bytes>>>> = Arc::new(
            (0..if keep { n } else { 0 })
                .map(|_| std::sync::Mutex::new(None))
                .collect(),
        );
        let client = self.client.clone();
        let path = Arc::new(format!("{}{}", self.actors_path(ns), self.write_query()));
        let server = self.server;
        let (ns, prefix) = (Arc::new(ns.to_string()), Arc::new(prefix.to_string()));
        let s2 = slots.clone();
        let rec = run_concurrent(label, n, self.args.concurrency, move |i| {
            let (client, path, ns, prefix, slots) = (
                client.clone(),
                path.clone(),
                ns.clone(),
                prefix.clone(),
                s2.clone(),
            );
            async move {
                let body = actor_body(server, &ns, &format!("{prefix}{i}"));
                let r = client
                    .send(Method::POST, &path, Some("application/json"), body)
                    .await
                    .map_err(|e| OpError::transport(&e))?;
                let r = expect(r, StatusCode::CREATED)?;
                if let Some(slot) = slots.get(i) {
                    *slot.lock().unwrap_or_else(|e| e.into_inner()) = Some(r.body);
                }
                Ok(())
            }
        })
        .await;
        let bodies = Arc::try_unwrap(slots)
            .map(|v| {
                v.into_iter()
                    .map(|m| m.into_inner().unwrap_or_else(|e| e.into_inner()))
                    .collect()
            })
            .unwrap_or_default();
        (rec, bodies)
    }

    fn push(&mut self, row: PhaseResult) {
        eprintln!(
            "  {}: {} ok, {} errors, {:.1}/s, p50 {} p99 {}",
            row.name,
            row.rec.ok(),
            row.rec.failed(),
            row.ops_per_sec(),
            stats::fmt_dur(row.p(0.5)),
            stats::fmt_dur(row.p(0.99))
        );
        self.rows.push(row);
    }

    /// The actor set of get/update: the create phase's, or created now (unmeasured).
    async fn base(&mut self) -> anyhow::Result<Arc<ActorSet>> {
        if let Some(b) = &self.base {
            return Ok(b.clone());
        }
        let ns = self.ns("");
        self.create_atespace(&ns).await?;
        eprintln!(
            "seeding {} actors in {ns} (not measured)",
            self.args.creates
        );
        let (rec, bodies) = self
            .create_actors("seed", &ns, "a-", self.args.creates, true)
            .await;
        if rec.failed() > 0 {
            eprintln!("  seed: {} creates failed: {:?}", rec.failed(), rec.samples);
        }
        self.set_base(ns, bodies)
    }

    fn set_base(
        &mut self,
        ns: String,
        bodies: Vec<Option<Bytes>>,
    ) -> anyhow::Result<Arc<ActorSet>> {
        let mut names = Vec::new();
        let mut objects = Vec::new();
        for (i, b) in bodies.into_iter().enumerate() {
            if let Some(b) = b {
                names.push(format!("a-{i}"));
                objects.push(tokio::sync::Mutex::new(b));
            }
        }
        if names.is_empty() {
            bail!("no actor could be created in {ns}; see the errors above");
        }
        let path = self.actors_path(&ns);
        let set = Arc::new(ActorSet {
            ns,
            path,
            names,
            objects,
        });
        self.base = Some(set.clone());
        Ok(set)
    }

    async fn phase_create(&mut self) -> anyhow::Result<()> {
        let ns = self.ns("");
        self.create_atespace(&ns).await?;
        eprintln!("create: {} actors in {ns}", self.args.creates);
        let before = self.probe.sample().await;
        let (rec, bodies) = self
            .create_actors("create", &ns, "a-", self.args.creates, true)
            .await;
        let usage = self.probe.usage_since(&before).await;
        let row = PhaseResult::new("create", rec, Some(usage));
        self.target("create", 5000.0, &row);
        self.push(row);
        self.set_base(ns, bodies)?;
        Ok(())
    }

    fn target(&mut self, what: &'static str, per_sec: f64, row: &PhaseResult) {
        self.targets.push(Target {
            what,
            goal: format!(">= {per_sec:.0}/s"),
            measured: format!(
                "{:.0}/s ({}/core)",
                row.ops_per_sec(),
                stats::ratio(
                    Some(row.ops_per_sec()),
                    row.usage.as_ref().and_then(stats::server_cores)
                )
                .map_or("-".into(), |v| format!("{v:.0}"))
            ),
            met: row.ops_per_sec() >= per_sec && row.rec.failed() == 0,
        });
    }

    async fn phase_get(&mut self) -> anyhow::Result<()> {
        let set = self.base().await?;
        eprintln!(
            "get: {} GETs of random actors of {}",
            self.args.gets, set.ns
        );
        let client = self.client.clone();
        let before = self.probe.sample().await;
        let s = set.clone();
        let rec = run_concurrent("get", self.args.gets, self.args.concurrency, move |_| {
            let (client, s) = (client.clone(), s.clone());
            async move {
                let name = &s.names[rand::random_range(0..s.names.len())];
                let r = client
                    .send(
                        Method::GET,
                        &format!("{}/{name}", s.path),
                        None,
                        Bytes::new(),
                    )
                    .await
                    .map_err(|e| OpError::transport(&e))?;
                expect(r, StatusCode::OK).map(drop)
            }
        })
        .await;
        let usage = self.probe.usage_since(&before).await;
        let row = PhaseResult::new("get", rec, Some(usage));
        self.target("get", 20_000.0, &row);
        self.push(row);
        Ok(())
    }

    async fn phase_list(&mut self) -> anyhow::Result<()> {
        #[derive(serde::Deserialize)]
        struct ListPage {
            items: Vec<serde::de::IgnoredAny>,
            #[serde(default)]
            metadata: ListMeta,
        }
        #[derive(serde::Deserialize, Default)]
        struct ListMeta {
            #[serde(default, rename = "continue")]
            next: Option<String>,
        }
        let ns = self.ns("list");
        self.create_atespace(&ns).await?;
        let n = self.args.list_objects;
        eprintln!("list: seeding {n} actors in {ns} (not measured)");
        let (seed, _) = self.create_actors("list seed", &ns, "l-", n, false).await;
        if seed.failed() > 0 {
            bail!("seeding the list atespace failed: {:?}", seed.samples);
        }
        let page = self.args.list_page_size;
        eprintln!(
            "list: {} LISTs of {ns} ({n} actors each{}), {} in flight",
            self.args.lists,
            if page > 0 {
                format!(", in pages of {page}")
            } else {
                String::new()
            },
            self.args.list_concurrency
        );
        let client = self.client.clone();
        let path = Arc::new(self.actors_path(&ns));
        let before = self.probe.sample().await;
        let bytes = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let b2 = bytes.clone();
        let rec = run_concurrent(
            "list",
            self.args.lists,
            self.args.list_concurrency,
            move |_| {
                let (client, path, bytes) = (client.clone(), path.clone(), b2.clone());
                async move {
                    let (mut items, mut size, mut next) = (0, 0, None::<String>);
                    loop {
                        let url = match (&next, page) {
                            (_, 0) => path.to_string(),
                            (None, _) => format!("{path}?limit={page}"),
                            (Some(c), _) => format!(
                                "{path}?limit={page}&continue={}",
                                form_urlencoded::byte_serialize(c.as_bytes()).collect::<String>()
                            ),
                        };
                        let r = client
                            .send(Method::GET, &url, None, Bytes::new())
                            .await
                            .map_err(|e| OpError::transport(&e))?;
                        let r = expect(r, StatusCode::OK)?;
                        size += r.body.len();
                        let list: ListPage = serde_json::from_slice(&r.body)
                            .map_err(|e| OpError::new("bad list body", e.to_string()))?;
                        items += list.items.len();
                        next = list.metadata.next.filter(|c| !c.is_empty());
                        if next.is_none() || page == 0 || items > n {
                            break;
                        }
                    }
                    bytes.store(size, std::sync::atomic::Ordering::Relaxed);
                    if items != n {
                        return Err(OpError::new(
                            "wrong item count",
                            format!("{items} items instead of {n}"),
                        ));
                    }
                    Ok(())
                }
            },
        )
        .await;
        let usage = self.probe.usage_since(&before).await;
        let row = PhaseResult::new(format!("list ({n} objects)"), rec, Some(usage));
        let size = bytes.load(std::sync::atomic::Ordering::Relaxed);
        eprintln!("  one list (all its pages) is {:.0} KiB", size as f64 / KIB);
        self.details.insert(
            "list".into(),
            json!({"objects": n, "page_size": page, "response_bytes": size, "items_per_sec": row.ops_per_sec() * n as f64}),
        );
        self.push(row);
        Ok(())
    }

    async fn phase_update(&mut self) -> anyhow::Result<()> {
        let set = self.base().await?;
        eprintln!(
            "update: {} PUTs (label tier t1<->t2, with resourceVersion) over {} actors of {}",
            self.args.updates,
            set.names.len(),
            set.ns
        );
        // Other writers may have changed the actors since this run last saw them (the operator
        // of hack/up.sh's system sets a new actor's status): PUT from their current state.
        let fresh = self.refresh(&set).await;
        if fresh.failed() > 0 {
            eprintln!(
                "  refresh: {} GETs failed: {:?}",
                fresh.failed(),
                fresh.samples
            );
        }
        let client = self.client.clone();
        let before = self.probe.sample().await;
        let s = set.clone();
        let query = Arc::new(self.write_query());
        let rec = run_concurrent(
            "update",
            self.args.updates,
            self.args.concurrency,
            move |k| {
                let (client, s, query) = (client.clone(), s.clone(), query.clone());
                async move {
                    let i = k % s.names.len();
                    let path = format!("{}/{}", s.path, s.names[i]);
                    let put_path = format!("{path}{query}");
                    let mut slot = s.objects[i].lock().await;
                    let mut obj: Value = serde_json::from_slice(&slot)
                        .map_err(|e| OpError::new("bad stored object", e.to_string()))?;
                    let labels = &mut obj["metadata"]["labels"];
                    let next = if labels["tier"] == "t1" { "t2" } else { "t1" };
                    labels["tier"] = json!(next);
                    let body = Bytes::from(obj.to_string());
                    let r = client
                        .send(Method::PUT, &put_path, Some("application/json"), body)
                        .await
                        .map_err(|e| OpError::transport(&e))?;
                    match expect(r, StatusCode::OK) {
                        Ok(r) => {
                            *slot = r.body;
                            Ok(())
                        }
                        Err(e) => {
                            // Refresh the state so that the next update of this actor can succeed.
                            if let Ok(r) = client.send(Method::GET, &path, None, Bytes::new()).await
                                && r.status == StatusCode::OK
                            {
                                *slot = r.body;
                            }
                            Err(e)
                        }
                    }
                }
            },
        )
        .await;
        let usage = self.probe.usage_since(&before).await;
        self.push(PhaseResult::new("update", rec, Some(usage)));
        Ok(())
    }

    /// Reads every actor of `set` again (not measured).
    async fn refresh(&self, set: &Arc<ActorSet>) -> Recorded {
        let client = self.client.clone();
        let s = set.clone();
        run_concurrent(
            "refresh",
            set.names.len(),
            self.args.concurrency,
            move |i| {
                let (client, s) = (client.clone(), s.clone());
                async move {
                    let path = format!("{}/{}", s.path, s.names[i]);
                    let r = client
                        .send(Method::GET, &path, None, Bytes::new())
                        .await
                        .map_err(|e| OpError::transport(&e))?;
                    let r = expect(r, StatusCode::OK)?;
                    *s.objects[i].lock().await = r.body;
                    Ok(())
                }
            },
        )
        .await
    }

    /// JSON merge patches of the update phase's actors: one annotation set to the patch's
    /// number, no resourceVersion (a patch retries on a conflict inside the server).
    async fn phase_patch(&mut self) -> anyhow::Result<()> {
        let set = self.base().await?;
        eprintln!(
            "patch: {} merge patches (annotation {PATCH_ANNOTATION}) over {} actors of {}",
            self.args.patches,
            set.names.len(),
            set.ns
        );
        let client = self.client.clone();
        let before = self.probe.sample().await;
        let s = set.clone();
        let query = Arc::new(self.write_query());
        let rec = run_concurrent(
            "patch",
            self.args.patches,
            self.args.concurrency,
            move |k| {
                let (client, s, query) = (client.clone(), s.clone(), query.clone());
                async move {
                    let i = k % s.names.len();
                    let path = format!("{}/{}{query}", s.path, s.names[i]);
                    let body =
                        json!({"metadata": {"annotations": {PATCH_ANNOTATION: k.to_string()}}});
                    let r = client
                        .send(
                            Method::PATCH,
                            &path,
                            Some("application/merge-patch+json"),
                            Bytes::from(body.to_string()),
                        )
                        .await
                        .map_err(|e| OpError::transport(&e))?;
                    expect(r, StatusCode::OK).map(drop)
                }
            },
        )
        .await;
        let usage = self.probe.usage_since(&before).await;
        self.push(PhaseResult::new("merge patch", rec, Some(usage)));
        // The stored objects are stale now; only the apply phase uses them after this one,
        // and an apply sends no resourceVersion.
        Ok(())
    }

    /// Server-side applies of the same actors the update phase changes, so the two rows
    /// compare an apply (decode YAML, merge, field sets, conflicts, managedFields) with a
    /// plain update of the same objects. Target: an apply costs at most 2x an update.
    async fn phase_apply(&mut self) -> anyhow::Result<()> {
        let set = self.base().await?;
        eprintln!(
            "apply: {} server-side applies (label tier t1<->t2, fieldManager=bench, force) over {} actors of {}",
            self.args.applies,
            set.names.len(),
            set.ns
        );
        let client = self.client.clone();
        let before = self.probe.sample().await;
        let s = set.clone();
        let sep = if self.write_query().is_empty() {
            "?"
        } else {
            "&"
        };
        let query = Arc::new(format!(
            "{}{sep}fieldManager=bench&force=true",
            self.write_query()
        ));
        let yaml = self.args.apply_yaml;
        let api_version = self.server.api_version();
        let rec = run_concurrent(
            "apply",
            self.args.applies,
            self.args.concurrency,
            move |k| {
                let (client, s, query) = (client.clone(), s.clone(), query.clone());
                async move {
                    let i = k % s.names.len();
                    let path = format!("{}/{}{query}", s.path, s.names[i]);
                    let mut slot = s.objects[i].lock().await;
                    let cur: Value = serde_json::from_slice(&slot)
                        .map_err(|e| OpError::new("bad stored object", e.to_string()))?;
                    let next = if cur["metadata"]["labels"]["tier"] == "t1" { "t2" } else { "t1" };
                    // JSON, as kubectl and controller-runtime send it (or YAML).
                    let config = json!({
                        "apiVersion": api_version,
                        "kind": "Actor",
                        "metadata": {"name": s.names[i], "namespace": s.ns, "labels": {"app": "bench", "tier": next}},
                        "spec": {"template": {"name": "counter"}, "activation": "OnDemand", "idleTimeout": "5m"},
                    });
                    let config = if yaml {
                        serde_saphyr::to_string(&config)
                            .map_err(|e| OpError::new("yaml", e.to_string()))?
                    } else {
                        config.to_string()
                    };
                    let r = client
                        .send(
                            Method::PATCH,
                            &path,
                            Some("application/apply-patch+yaml"),
                            Bytes::from(config),
                        )
                        .await
                        .map_err(|e| OpError::transport(&e))?;
                    let r = expect(r, StatusCode::OK)?;
                    *slot = r.body;
                    Ok(())
                }
            },
        )
        .await;
        let usage = self.probe.usage_since(&before).await;
        let row = PhaseResult::new("apply (server-side)", rec, Some(usage));
        if let Some(update) = self.rows.iter().find(|r| r.name == "update") {
            let ratio = |a: Option<Duration>, b: Option<Duration>| match (a, b) {
                (Some(a), Some(b)) if !b.is_zero() => a.as_secs_f64() / b.as_secs_f64(),
                _ => f64::INFINITY,
            };
            let p50 = ratio(row.p(0.5), update.p(0.5));
            let tput = if row.ops_per_sec() > 0.0 {
                update.ops_per_sec() / row.ops_per_sec()
            } else {
                f64::INFINITY
            };
            self.details.insert(
                "apply_vs_update".into(),
                json!({"p50_ratio": p50, "p99_ratio": ratio(row.p(0.99), update.p(0.99)), "cost_ratio": tput}),
            );
            self.targets.push(Target {
                what: "apply cost vs update",
                goal: "<= 2.0x".into(),
                measured: format!("{tput:.2}x (p50 {p50:.2}x)"),
                met: tput <= 2.0 && row.rec.failed() == 0,
            });
        }
        self.push(row);
        Ok(())
    }

    async fn phase_watch(&mut self) -> anyhow::Result<()> {
        let ns = self.ns("watch");
        self.create_atespace(&ns).await?;
        let path = self.actors_path(&ns);
        let r = self
            .client
            .send(
                Method::POST,
                &path,
                Some("application/json"),
                actor_body(self.server, &ns, "w-0"),
            )
            .await?;
        let r = expect(r, StatusCode::CREATED)
            .map_err(|e| anyhow::anyhow!("creating the watched actor: {}: {}", e.kind, e.detail))?;
        let obj: Value = serde_json::from_slice(&r.body)?;
        let rv = obj["metadata"]["resourceVersion"]
            .as_str()
            .context("the created actor has no resourceVersion")?
            .to_string();
        eprintln!(
            "watch: {} watches of {ns} from rv {rv}, then {} merge patches {} ms apart",
            self.args.watchers, self.args.watch_writes, self.args.watch_interval_ms
        );
        let before = self.probe.sample().await;
        let report = watch::run(
            &self.client,
            &watch::Plan {
                actors_path: &path,
                actor: "w-0",
                query: &self.write_query(),
                resource_version: &rv,
                watchers: self.args.watchers,
                writes: self.args.watch_writes,
                interval: Duration::from_millis(self.args.watch_interval_ms),
                timeout: Duration::from_secs(self.args.watch_timeout),
            },
        )
        .await?;
        let usage = self.probe.usage_since(&before).await;
        for e in report.watch_errors.iter().take(10) {
            eprintln!("  ! {e}");
        }
        let all = report.delivered == report.expected && report.writes.failed() == 0;
        eprintln!(
            "  watch: {}/{} events delivered ({} duplicates, {} before the write's response){}",
            report.delivered,
            report.expected,
            report.duplicates,
            report.before_response,
            if all { "" } else { "  NOT ALL DELIVERED" }
        );
        self.details.insert(
            "watch".into(),
            json!({
                "watchers": report.watchers,
                "writes": self.args.watch_writes,
                "interval_ms": self.args.watch_interval_ms,
                "expected": report.expected,
                "delivered": report.delivered,
                "all_delivered": all,
                "duplicates": report.duplicates,
                "delivered_before_response": report.before_response,
                "watch_errors": report.watch_errors,
            }),
        );
        self.targets.push(Target {
            what: "watch delivery",
            goal: format!("all {} events", report.watchers * self.args.watch_writes),
            measured: format!("{} delivered", report.delivered),
            met: all,
        });
        let p99 = stats::percentile(&report.from_response.latencies, 0.99);
        self.targets.push(Target {
            what: "watch p99 from response",
            goal: "< 5 ms".into(),
            measured: stats::fmt_dur(p99),
            met: all && p99.is_some_and(|p| p < Duration::from_millis(5)),
        });
        let w = report.watchers;
        self.push(PhaseResult::new(
            format!("watch patch ({w} w.)"),
            report.writes,
            None,
        ));
        self.push(PhaseResult::new(
            "watch from send",
            report.from_send,
            Some(usage),
        ));
        self.push(PhaseResult::new(
            "watch from response",
            report.from_response,
            None,
        ));
        Ok(())
    }

    async fn phase_memory(&mut self) -> anyhow::Result<()> {
        if self.server == Server::Kube {
            eprintln!(
                "memory: skipped on kube-apiserver (it measures Valkey's bytes per actor; etcd has no equivalent figure here)"
            );
            return Ok(());
        }
        let ns = self.ns("mem");
        self.create_atespace(&ns).await?;
        let n = self.args.memory_actors;
        let prefix = self.args.key_prefix.clone();
        let base = format!("{prefix}:{{substrate.ate.dev/actors}}:");
        let Some(conn) = self.probe.valkey() else {
            bail!(
                "the memory phase needs Valkey at {}",
                apiserver::storage::redact_url(&self.args.valkey_url)
            );
        };
        let mut conn = conn.clone();
        // The keys every actor adds a member to (the field terms are those of the typical
        // actor; status.phase is read from the first created object).
        let mut shared_keys: Vec<String> = [
            "all",
            "log",
            "i:l:app=bench",
            "i:lk:app",
            "i:l:tier=t1",
            "i:lk:tier",
            "i:f:spec.activation=OnDemand",
            "i:f:spec.template.name=counter",
        ]
        .iter()
        .map(|k| format!("{base}{k}"))
        .collect();
        let pid = self.probe.apiserver_pid();
        let rss_before = pid.and_then(probe::rss_bytes);
        let used_before = probe::used_memory(&mut conn).await?;
        eprintln!(
            "memory: creating {n} actors in {ns} (Valkey used_memory before: {:.1} MiB)",
            used_before as f64 / KIB / KIB
        );
        let before = self.probe.sample().await;
        let (rec, first) = self
            .create_actors("memory create", &ns, "m-", n, false)
            .await;
        let usage = self.probe.usage_since(&before).await;
        drop(first);
        let created = rec.ok();
        let row = PhaseResult::new(format!("create (to {}k)", n / 1000), rec, Some(usage));
        self.push(row);
        let used_after = probe::used_memory(&mut conn).await?;
        let rss_after = pid.and_then(probe::rss_bytes);

        // Where it goes: the object strings (sampled) and the shared structures.
        let r = self
            .client
            .send(
                Method::GET,
                &format!("{}/m-0", self.actors_path(&ns)),
                None,
                Bytes::new(),
            )
            .await?;
        if r.status == StatusCode::OK {
            let obj: Value = serde_json::from_slice(&r.body)?;
            if let Some(phase) = obj.pointer("/status/phase").and_then(Value::as_str) {
                shared_keys.push(format!("{base}i:f:status.phase={phase}"));
            }
        }
        let samples = created.clamp(1, 200);
        let mut object_bytes = 0u64;
        let mut value_bytes = 0u64;
        for i in 0..samples {
            let key = format!("{base}o:{ns}/m-{}", i * (n / samples).max(1));
            object_bytes += probe::key_memory(&mut conn, &key).await?;
            let len: u64 = redis::cmd("STRLEN")
                .arg(&key)
                .query_async(&mut conn)
                .await?;
            value_bytes += len;
        }
        let per_object = object_bytes as f64 / samples as f64;
        let per_value = value_bytes as f64 / samples as f64;
        let mut structures = serde_json::Map::new();
        for k in &shared_keys {
            let bytes = probe::key_memory(&mut conn, k).await?;
            let short = k.strip_prefix(&base).unwrap_or(k).to_string();
            structures.insert(short, json!(bytes));
        }
        let delta = used_after.saturating_sub(used_before);
        let per_actor = delta as f64 / created.max(1) as f64;
        eprintln!(
            "  memory: used_memory {:.1} MiB -> {:.1} MiB for {created} actors: {per_actor:.0} bytes/actor \
             (object key ~{per_object:.0} B incl. {per_value:.0} B of JSON)",
            used_before as f64 / KIB / KIB,
            used_after as f64 / KIB / KIB,
        );
        let rss_per_actor = rss_before
            .zip(rss_after)
            .map(|(b, a)| a.saturating_sub(b) as f64 / created.max(1) as f64);
        if let (Some(b), Some(a), Some(per)) = (rss_before, rss_after, rss_per_actor) {
            eprintln!(
                "  apiserver RSS {:.1} MiB -> {:.1} MiB: {per:.0} bytes/actor (its watch cache holds every object)",
                b as f64 / KIB / KIB,
                a as f64 / KIB / KIB
            );
        }
        self.targets.push(Target {
            what: "Valkey memory per actor",
            goal: "< 2048 bytes".into(),
            measured: format!("{per_actor:.0} bytes"),
            met: per_actor < 2048.0 && created == n,
        });
        self.details.insert(
            "memory".into(),
            json!({
                "actors": created,
                "used_memory_before": used_before,
                "used_memory_after": used_after,
                "bytes_per_actor": per_actor.round(),
                "object_key_bytes_sampled": per_object.round(),
                "object_json_bytes_sampled": per_value.round(),
                "shared_structures_bytes_after": structures,
                "apiserver_rss_before": rss_before,
                "apiserver_rss_after": rss_after,
                "apiserver_rss_bytes_per_actor": rss_per_actor.map(f64::round),
            }),
        );
        Ok(())
    }

    /// Lists the atespaces that are terminating (deletionTimestamp set).
    async fn terminating(&self, only: Option<&[String]>) -> anyhow::Result<Vec<String>> {
        let r = self
            .client
            .send(
                Method::GET,
                &self.server.namespaces_path(),
                None,
                Bytes::new(),
            )
            .await?;
        let r = expect(r, StatusCode::OK)
            .map_err(|e| anyhow::anyhow!("listing atespaces: {}: {}", e.kind, e.detail))?;
        let list: Value = serde_json::from_slice(&r.body)?;
        Ok(list["items"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|a| {
                let name = a.pointer("/metadata/name")?.as_str()?.to_string();
                let wanted = match only {
                    Some(names) => names.contains(&name),
                    None => a.pointer("/metadata/deletionTimestamp").is_some(),
                };
                wanted.then_some(name)
            })
            .collect())
    }

    /// Waits until no atespace is terminating (or none of `only` exists any more).
    async fn wait_atespaces_gone(&self, only: Option<&[String]>) -> anyhow::Result<Duration> {
        let started = Instant::now();
        let deadline = started + Duration::from_secs(self.args.cleanup_timeout);
        let mut last_print = Instant::now() - Duration::from_secs(60);
        loop {
            let left = self.terminating(only).await?;
            if left.is_empty() {
                return Ok(started.elapsed());
            }
            if Instant::now() >= deadline {
                bail!(
                    "atespaces still present after {}s: {left:?}",
                    self.args.cleanup_timeout
                );
            }
            if last_print.elapsed() >= Duration::from_secs(15) {
                eprintln!(
                    "  waiting for {} terminating atespace(s) to go: {} ({:.0}s)",
                    left.len(),
                    left.join(", "),
                    started.elapsed().as_secs_f64()
                );
                last_print = Instant::now();
            }
            tokio::time::sleep(Duration::from_secs(1)).await;
        }
    }

    async fn cleanup(&mut self) -> anyhow::Result<()> {
        if self.args.no_cleanup {
            eprintln!(
                "keeping {} namespaces {}",
                self.server.label(),
                self.atespaces.join(", ")
            );
            return Ok(());
        }
        for name in &self.atespaces {
            let r = self
                .client
                .send(
                    Method::DELETE,
                    &format!("{}/{name}", self.server.namespaces_path()),
                    None,
                    Bytes::new(),
                )
                .await?;
            if !r.status.is_success() {
                eprintln!(
                    "  ! deleting namespace {name}: HTTP {}: {}",
                    r.status,
                    String::from_utf8_lossy(&r.body)
                        .chars()
                        .take(300)
                        .collect::<String>()
                );
            }
        }
        // kube-apiserver alone does not empty a deleted Namespace: kube-controller-manager's
        // namespace controller does (hack/bench.sh --compare-kube runs none; the control
        // plane is thrown away after the run).
        let wait = self.args.wait_cleanup && self.server == Server::Substrate;
        eprintln!(
            "deleted {} namespaces {} ({})",
            self.server.label(),
            self.atespaces.join(", "),
            match (self.server, wait) {
                (Server::Substrate, true) => "the cascade runs in the apiserver; waiting for it",
                (Server::Substrate, false) => "the cascade runs in the apiserver; not waiting",
                (Server::Kube, _) =>
                    "kube-controller-manager's namespace controller empties them, if one runs",
            }
        );
        if wait {
            let names = self.atespaces.clone();
            let took = self.wait_atespaces_gone(Some(&names)).await?;
            eprintln!("  cleanup took {:.1}s", took.as_secs_f64());
            self.details.insert(
                "cleanup".into(),
                json!({"atespaces": names, "seconds": (took.as_secs_f64() * 10.0).round() / 10.0}),
            );
        }
        Ok(())
    }

    async fn run_phase(&mut self, phase: Phase) -> anyhow::Result<()> {
        match phase {
            Phase::Create => self.phase_create().await,
            Phase::Get => self.phase_get().await,
            Phase::List => self.phase_list().await,
            Phase::Update => self.phase_update().await,
            Phase::Patch => self.phase_patch().await,
            Phase::Apply => self.phase_apply().await,
            Phase::Watch => self.phase_watch().await,
            Phase::Memory => self.phase_memory().await,
        }
    }

    /// The phase table and, for Substrate, its targets.
    fn report(&self) -> String {
        let mut out = format!(
            "\n{} ({}):\n{}",
            self.server.label(),
            self.client.base(),
            stats::table(&self.rows)
        );
        if self.server == Server::Substrate {
            out.push_str("\ntargets:\n");
            for t in &self.targets {
                out.push_str(&format_target(t));
            }
        }
        out
    }

    fn to_json(&self) -> Value {
        json!({
            "server": self.client.base(),
            "kind": self.server.label(),
            "phases": self.rows.iter().map(PhaseResult::to_json).collect::<Vec<_>>(),
            "details": self.details,
            "targets": self.targets.iter().map(|t| json!({
                "what": t.what, "goal": t.goal, "measured": t.measured, "met": t.met,
            })).collect::<Vec<_>>(),
        })
    }
}

fn format_target(t: &Target) -> String {
    format!(
        "  {:<26} {:<14} measured {:<24} {}\n",
        t.what,
        t.goal,
        t.measured,
        if t.met { "MET" } else { "MISSED" }
    )
}

/// Issue 15's targets of the comparison: Substrate at least 5 times kube-apiserver + etcd.
fn ratio_targets(substrate: &[PhaseResult], kube: &[PhaseResult]) -> Vec<Target> {
    stats::compare(substrate, kube)
        .into_iter()
        .filter_map(|c| {
            let what = match c.name.as_str() {
                "create" => "create vs kube-apiserver",
                "get" => "get vs kube-apiserver",
                "update" => "update vs kube-apiserver",
                n if n.starts_with("list (") => "list vs kube-apiserver",
                _ => return None,
            };
            let ratio = c.rate_ratio.unwrap_or(0.0);
            Some(Target {
                what,
                goal: ">= 5.0x".into(),
                measured: format!(
                    "{ratio:.2}x ({} per core)",
                    c.per_core_ratio.map_or("-".into(), |r| format!("{r:.2}x"))
                ),
                met: ratio >= 5.0 && c.errors == 0,
            })
        })
        .collect()
}

async fn connect_valkey(args: &Args) -> anyhow::Result<redis::aio::MultiplexedConnection> {
    let endpoint = apiserver::storage::Endpoint::from_flags(
        &args.valkey_url,
        args.valkey_username.as_deref(),
        args.valkey_password_file.as_deref(),
        args.valkey_tls_ca_file.as_deref(),
    )?;
    let url = endpoint.redacted();
    let client = endpoint.client()?;
    let conn = tokio::time::timeout(
        Duration::from_secs(5),
        client.get_multiplexed_async_connection(),
    )
    .await
    .with_context(|| format!("connecting to Valkey at {url}: timeout"))?
    .with_context(|| format!("connecting to Valkey at {url}"))?;
    Ok(conn)
}

fn substrate_credentials(args: &Args) -> anyhow::Result<Credentials> {
    Ok(match &args.pki_dir {
        Some(dir) => Credentials::from_pki_dir(
            dir,
            args.server
                .clone()
                .unwrap_or_else(|| "https://127.0.0.1:6443".into()),
        )?,
        None => {
            let mut c = Credentials::from_kubeconfig(&args.kubeconfig).with_context(|| {
                format!(
                    "no usable kubeconfig at {} (start the system with hack/up.sh, or pass --kubeconfig/--pki-dir)",
                    args.kubeconfig.display()
                )
            })?;
            if let Some(s) = &args.server {
                c.server = s.clone();
            }
            c
        }
    })
}

/// Connects to `creds.server` and checks `/readyz`.
async fn connect(
    server: Server,
    creds: &Credentials,
    connections: usize,
) -> anyhow::Result<Arc<Client>> {
    let client = Client::connect(creds, connections)
        .await
        .with_context(|| format!("connecting to {} at {}", server.label(), creds.server))?;
    let ready = client
        .send(Method::GET, "/readyz", None, Bytes::new())
        .await?;
    if ready.status != StatusCode::OK {
        bail!(
            "{} at {} is not ready (/readyz: HTTP {}){}",
            server.label(),
            creds.server,
            ready.status,
            if server == Server::Substrate {
                "; is the system up (hack/up.sh)?"
            } else {
                ""
            }
        );
    }
    Ok(Arc::new(client))
}

impl Bench {
    fn new(server: Server, args: &Args, client: Arc<Client>, probe: Probe, run_id: &str) -> Self {
        Bench {
            server,
            args: args.clone(),
            client,
            probe,
            run_id: run_id.to_string(),
            atespaces: Vec::new(),
            rows: Vec::new(),
            targets: Vec::new(),
            details: serde_json::Map::new(),
            base: None,
        }
    }
}

/// The bench of Substrate's apiserver, with Valkey's statistics when it answers.
async fn substrate_bench(args: &Args, run_id: &str) -> anyhow::Result<(Bench, Value)> {
    let creds = substrate_credentials(args)?;
    let client = connect(Server::Substrate, &creds, args.connections).await?;
    let valkey = match connect_valkey(args).await {
        Ok(c) => Some(c),
        Err(e) if args.phases.contains(&Phase::Memory) => return Err(e),
        Err(e) => {
            eprintln!("warning: {e:#}; no Valkey CPU or command statistics");
            None
        }
    };
    let mut probe = Probe::new(valkey, args.apiserver_pid);
    let mut valkey_info = json!(null);
    if let Some(conn) = probe.valkey() {
        let info = probe::server_info(conn).await;
        let fsync: Vec<String> = redis::cmd("CONFIG")
            .arg("GET")
            .arg("appendfsync")
            .query_async(conn)
            .await
            .unwrap_or_default();
        valkey_info = json!({
            "version": info.get("valkey_version").or(info.get("redis_version")),
            "aof_enabled": info.get("aof_enabled"),
            "appendfsync": fsync.get(1),
        });
    }
    Ok((
        Bench::new(Server::Substrate, args, client, probe, run_id),
        valkey_info,
    ))
}

/// The bench of kube-apiserver + etcd, with the CRD installed.
async fn kube_bench(args: &Args, run_id: &str) -> anyhow::Result<Bench> {
    let path = args.kube_kubeconfig.as_ref().context(
        "--target kube|both needs --kube-kubeconfig (kube-apiserver's admin kubeconfig)",
    )?;
    let creds = Credentials::from_kubeconfig(path)?;
    let client = connect(Server::Kube, &creds, args.connections).await?;
    server::ensure_kube_crd(&client, Duration::from_secs(60)).await?;
    let probe = Probe::with_storage_pid(
        args.kube_apiserver_pid,
        Server::Kube.storage(),
        args.etcd_pid,
    );
    Ok(Bench::new(Server::Kube, args, client, probe, run_id))
}

async fn run(args: Args) -> anyhow::Result<Value> {
    let run_id = format!("{:06x}", rand::random::<u32>() & 0xff_ffff);
    let mut benches = Vec::new();
    let mut valkey_info = json!(null);
    if args.target != TargetArg::Kube {
        let (b, info) = substrate_bench(&args, &run_id).await?;
        valkey_info = info;
        benches.push(b);
    }
    if args.target != TargetArg::Substrate {
        benches.push(kube_bench(&args, &run_id).await?);
    }
    eprintln!(
        "substrate-bench {run_id}: {} over {} HTTP/2 connections each, {} requests in flight, \
         fieldValidation {}; Valkey {}",
        benches
            .iter()
            .map(|b| format!("{} {}", b.server.label(), b.client.base()))
            .collect::<Vec<_>>()
            .join(" and "),
        args.connections,
        args.concurrency,
        args.field_validation
            .as_deref()
            .unwrap_or("(server default)"),
        valkey_info
    );
    // An earlier run's cascade would compete with this one (and skew the memory figure).
    for b in benches.iter().filter(|b| b.server == Server::Substrate) {
        if !b.terminating(None).await?.is_empty() {
            eprintln!("waiting for terminating atespaces (an earlier run's cleanup) to go first");
            b.wait_atespaces_gone(None).await?;
        }
    }
    let started = Instant::now();
    let result = async {
        for phase in PHASES {
            if !args.phases.contains(&phase) {
                continue;
            }
            // Back to back: the phase on Substrate, then on kube-apiserver.
            for b in benches.iter_mut() {
                if args.target == TargetArg::Both {
                    eprintln!("--- {phase:?} on {}", b.server.label());
                }
                b.run_phase(phase)
                    .await
                    .with_context(|| format!("phase {phase:?} on {}", b.server.label()))?;
            }
        }
        anyhow::Ok(())
    }
    .await;
    let total = started.elapsed();
    let mut cleanup = Ok(());
    for b in benches.iter_mut() {
        let r = b.cleanup().await;
        if cleanup.is_ok() {
            cleanup = r;
        }
    }
    result?;
    cleanup?;

    let mut out: String = benches.iter().map(Bench::report).collect();
    let mut comparison = json!(null);
    let mut ratio_goals = Vec::new();
    if let [s, k] = benches.as_slice() {
        out.push_str(&format!(
            "\nSubstrate vs kube-apiserver + etcd (same run, {} connections, {} in flight):\n{}",
            args.connections,
            args.concurrency,
            stats::compare_table(s.server.label(), &s.rows, k.server.label(), &k.rows)
        ));
        ratio_goals = ratio_targets(&s.rows, &k.rows);
        out.push_str("\ntargets (issue 15):\n");
        for t in &ratio_goals {
            out.push_str(&format_target(t));
        }
        comparison = stats::compare_json(&s.rows, &k.rows);
    }
    if args.json {
        eprint!("{out}");
    } else {
        print!("{out}");
    }
    let common = json!({
        "run_id": run_id,
        "target": format!("{:?}", args.target).to_lowercase(),
        "connections": args.connections,
        "concurrency": args.concurrency,
        "list_concurrency": args.list_concurrency,
        "list_page_size": args.list_page_size,
        "field_validation": args.field_validation,
        "cpus": std::thread::available_parallelism().map_or(0, |n| n.get()),
        "valkey": valkey_info,
        "seconds": (total.as_secs_f64() * 10.0).round() / 10.0,
    });
    let mut doc = common;
    match benches.as_slice() {
        [one] => {
            // One server: its figures at the top level, as before --target existed.
            if let (Some(d), Value::Object(b)) = (doc.as_object_mut(), one.to_json()) {
                d.extend(b);
            }
        }
        many => {
            for b in many {
                doc[b.server.label()] = b.to_json();
            }
            doc["comparison"] = comparison;
            doc["comparison_targets"] = Value::Array(
                ratio_goals
                    .iter()
                    .map(|t| json!({"what": t.what, "goal": t.goal, "measured": t.measured, "met": t.met}))
                    .collect(),
            );
        }
    }
    Ok(doc)
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let json_out = args.json;
    let doc = run(args).await?;
    if json_out {
        println!("{}", serde_json::to_string_pretty(&doc)?);
    }
    Ok(())
}
