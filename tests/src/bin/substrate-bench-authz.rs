//! `substrate-bench-authz`: what authorization costs (issue 13), all in one run so the figures
//! compare on this noisy machine. Run it through `hack/bench-authz.sh`; results in
//! `docs/benchmarks.md`.
//!
//! - **local RBAC**: one decision of the standalone RBAC authorizer (`Policy::authorize`) over
//!   the bootstrap policy plus `--namespaces` tenant namespaces (a Role and two RoleBindings
//!   each) and `--cluster-bindings` ClusterRoleBindings: an allow found in the namespace's
//!   bindings, and a refusal (every binding that could apply visited);
//! - **decision cache**: a warm hit of the delegated authorizer's cache (kube's webhook
//!   authorizer cache), and the whole chain (`Chain::check`) for `system:masters`;
//! - **SubjectAccessReview**: the cold round trip to a real kube-apiserver (envtest, needs
//!   `KUBEBUILDER_ASSETS`), p50/p99 over distinct requests, and the same requests again
//!   through the cache;
//! - **gets/s**: `GET` of one actor against a standalone apiserver, `--concurrency` clients
//!   (kube-rs) for `--seconds`, as an admin (`system:masters`, short-circuited) and as a
//!   tenant (decided by RBAC), alternating over `--rounds`, and the median ratio.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use clap::Parser;
use serde_json::{Value, json};

use apiserver::auth::UserInfo;
use apiserver::authz::cache::{CachedAuthorizer, Ttls};
use apiserver::authz::rbac::{Policy, RbacAuthorizer};
use apiserver::authz::webhook::{KubeReviewer, WebhookAuthorizer};
use apiserver::authz::{Attributes, Authorizer, Chain};
use e2e::bench::{median, percentile};

#[derive(Debug, Parser)]
#[command(name = "substrate-bench-authz")]
struct Args {
    /// Tenant namespaces in the local RBAC policy.
    #[arg(long, default_value_t = 1000)]
    namespaces: usize,
    /// ClusterRoleBindings (to other users) in the local RBAC policy.
    #[arg(long, default_value_t = 100)]
    cluster_bindings: usize,
    /// Decisions timed per in-process measurement.
    #[arg(long, default_value_t = 200_000)]
    iterations: u32,
    /// Distinct SubjectAccessReviews sent to kube-apiserver.
    #[arg(long, default_value_t = 300)]
    reviews: usize,
    /// Concurrent clients of the gets/s phase.
    #[arg(long, default_value_t = 16)]
    concurrency: usize,
    /// Duration of each gets/s measurement.
    #[arg(long, default_value_t = 3)]
    seconds: u64,
    /// Rounds of the gets/s phase (each: admin, then tenant).
    #[arg(long, default_value_t = 3)]
    rounds: usize,
}

fn user(name: &str, groups: &[&str]) -> UserInfo {
    UserInfo {
        name: name.into(),
        groups: groups
            .iter()
            .map(|g| g.to_string())
            .chain(["system:authenticated".to_string()])
            .collect(),
        extra: Default::default(),
    }
}

fn actors(u: &UserInfo, verb: &str, ns: &str, name: &str) -> Attributes {
    Attributes::resource(
        u,
        verb,
        "substrate.ate.dev",
        "v1alpha1",
        "actors",
        None,
        Some(ns),
        Some(name),
    )
}

/// The bootstrap ClusterRoles and bindings, plus tenants: namespace `t<i>` has Role
/// `actors-edit` bound to group `t<i>` and to user `u<i>`; `cluster` ClusterRoleBindings of
/// `view` to users `c<i>`.
fn policy(namespaces: usize, cluster: usize) -> Policy {
    let mut objects: Vec<Value> = Vec::new();
    for r in apiserver::authz::rbac::bootstrap::cluster_roles() {
        let mut v = serde_json::to_value(&r).expect("ClusterRole");
        v["kind"] = json!("ClusterRole");
        objects.push(v);
    }
    for b in apiserver::authz::rbac::bootstrap::cluster_role_bindings() {
        let mut v = serde_json::to_value(&b).expect("ClusterRoleBinding");
        v["kind"] = json!("ClusterRoleBinding");
        objects.push(v);
    }
    let rbac = "rbac.authorization.k8s.io";
    for i in 0..namespaces {
        let ns = format!("t{i}");
        objects.push(
            json!({"kind": "Role", "metadata": {"name": "actors-edit", "namespace": ns},
            "rules": [{"apiGroups": ["substrate.ate.dev"], "resources": ["actors"],
                       "verbs": ["get", "list", "watch", "create", "patch"]}]}),
        );
        for (name, kind, subject) in [
            ("group", "Group", ns.clone()),
            ("user", "User", format!("u{i}")),
        ] {
            objects.push(
                json!({"kind": "RoleBinding", "metadata": {"name": name, "namespace": ns},
                "roleRef": {"apiGroup": rbac, "kind": "Role", "name": "actors-edit"},
                "subjects": [{"apiGroup": rbac, "kind": kind, "name": subject}]}),
            );
        }
    }
    for i in 0..cluster {
        objects.push(
            json!({"kind": "ClusterRoleBinding", "metadata": {"name": format!("c{i}")},
            "roleRef": {"apiGroup": rbac, "kind": "ClusterRole", "name": "view"},
            "subjects": [{"apiGroup": rbac, "kind": "User", "name": format!("c{i}")}]}),
        );
    }
    Policy::from_manifests(&objects)
}

/// Mean nanoseconds of `f` over `n` calls.
fn time_ns(n: u32, mut f: impl FnMut() -> bool) -> f64 {
    let mut yes = 0u32;
    let t = Instant::now();
    for _ in 0..n {
        yes += u32::from(std::hint::black_box(f()));
    }
    std::hint::black_box(yes);
    t.elapsed().as_nanos() as f64 / f64::from(n)
}

async fn time_ns_async<F: std::future::Future<Output = bool>>(
    n: u32,
    mut f: impl FnMut() -> F,
) -> f64 {
    let t = Instant::now();
    for _ in 0..n {
        std::hint::black_box(f().await);
    }
    t.elapsed().as_nanos() as f64 / f64::from(n)
}

fn local(args: &Args) {
    let t = Instant::now();
    let p = policy(args.namespaces, args.cluster_bindings);
    let counts = p.counts();
    println!(
        "local RBAC policy: {} roles, {} cluster roles, {} role bindings, {} cluster role bindings (built in {:.1?})",
        counts[0],
        counts[1],
        counts[2],
        counts[3],
        t.elapsed()
    );
    let mid = args.namespaces / 2;
    let member = user("someone", &[&format!("t{mid}")]);
    let allow = actors(&member, "get", &format!("t{mid}"), "a1");
    let deny = actors(&member, "delete", &format!("t{mid}"), "a1");
    let other = actors(&member, "get", "t0", "a1");
    assert!(p.authorize(&allow).allowed(), "the member may get");
    assert!(!p.authorize(&deny).allowed(), "the member may not delete");
    let n = args.iterations;
    println!(
        "local RBAC decision: allow {:.0} ns, refuse (verb) {:.0} ns, refuse (other namespace) {:.0} ns",
        time_ns(n, || p.authorize(&allow).allowed()),
        time_ns(n, || p.authorize(&deny).allowed()),
        time_ns(n, || p.authorize(&other).allowed()),
    );
}

async fn chain_and_cache(args: &Args) {
    let rbac = RbacAuthorizer::default();
    rbac.set(policy(args.namespaces, args.cluster_bindings));
    let cached = CachedAuthorizer::new(Arc::new(rbac.clone()), Ttls::default(), 10_000);
    let member = user("someone", &["t1"]);
    let allow = actors(&member, "get", "t1", "a1");
    assert!(cached.authorize(&allow).await.expect("answer").allowed());
    let n = args.iterations;
    let hit = time_ns_async(n, || async { cached.authorize(&allow).await.is_ok() }).await;
    let chain = Chain::new(Vec::new(), vec![Arc::new(rbac.clone())]);
    let masters = actors(&user("admin", &["system:masters"]), "get", "t1", "a1");
    let via_chain_admin = time_ns_async(n, || async { chain.check(&masters).await.is_ok() }).await;
    let via_chain_tenant = time_ns_async(n, || async { chain.check(&allow).await.is_ok() }).await;
    println!(
        "decision cache warm hit: {hit:.0} ns; Chain::check: system:masters {via_chain_admin:.0} ns, tenant (local RBAC) {via_chain_tenant:.0} ns"
    );
}

fn sar(args: &Args, rt: &tokio::runtime::Runtime) -> anyhow::Result<()> {
    let Some(env) = e2e::envtest::Envtest::start_with(e2e::envtest::Options {
        controller_manager: false,
    }) else {
        println!("SubjectAccessReview: skipped (KUBEBUILDER_ASSETS unset)");
        return Ok(());
    };
    for (ns, _) in e2e::tenancy::NAMESPACES {
        env.ensure_namespace(ns);
    }
    e2e::tenancy::apply_rbac(&env.admin);
    let kubeconfig = env.delegation_kubeconfig();
    rt.block_on(reviews(args, &kubeconfig))
}

async fn reviews(args: &Args, kubeconfig: &std::path::Path) -> anyhow::Result<()> {
    let client = apiserver::cluster_client(Some(kubeconfig), false, "bench")
        .await
        .context("a client of kube-apiserver")?
        .context("no client")?;
    let webhook = Arc::new(WebhookAuthorizer::new(Arc::new(KubeReviewer::new(client))));
    let cached = CachedAuthorizer::new(webhook.clone(), Ttls::default(), 10_000);
    let alice = user("alice", &["team-a"]);
    let attrs: Vec<Attributes> = (0..args.reviews)
        .map(|i| actors(&alice, "get", "team-a", &format!("a{i}")))
        .collect();
    // One to warm the connection.
    webhook
        .authorize(&actors(&alice, "list", "team-a", ""))
        .await
        .context("a SubjectAccessReview")?;
    let mut cold = Vec::with_capacity(attrs.len());
    for a in &attrs {
        let t = Instant::now();
        let answer = cached.authorize(a).await.context("a SubjectAccessReview")?;
        cold.push(t.elapsed());
        if !answer.allowed() {
            bail!("kube-apiserver refused {a:?}: {answer:?}");
        }
    }
    let t = Instant::now();
    for a in &attrs {
        cached.authorize(a).await.context("a cached decision")?;
    }
    let warm = t.elapsed().as_nanos() as f64 / attrs.len() as f64;
    cold.sort_unstable();
    println!(
        "SubjectAccessReview to kube-apiserver (cold, {} distinct): p50 {:.2?}, p99 {:.2?}, max {:.2?}; the same again from the cache: {warm:.0} ns each",
        cold.len(),
        percentile(&cold, 0.5),
        percentile(&cold, 0.99),
        cold[cold.len() - 1],
    );
    Ok(())
}

async fn gets_per_second(client: kube::Client, args: &Args) -> anyhow::Result<f64> {
    use kube::api::{ApiResource, DynamicObject, GroupVersionKind};
    let gvk = GroupVersionKind::gvk("substrate.ate.dev", "v1alpha1", "Actor");
    let api: kube::Api<DynamicObject> = kube::Api::namespaced_with(
        client,
        "team-a",
        &ApiResource::from_gvk_with_plural(&gvk, "actors"),
    );
    api.get("a1").await.context("GET of the actor")?;
    let done = Arc::new(AtomicU64::new(0));
    let errors = Arc::new(AtomicU64::new(0));
    let until = Instant::now() + Duration::from_secs(args.seconds);
    let start = Instant::now();
    let tasks: Vec<_> = (0..args.concurrency)
        .map(|_| {
            let (api, done, errors) = (api.clone(), done.clone(), errors.clone());
            tokio::spawn(async move {
                while Instant::now() < until {
                    match api.get("a1").await {
                        Ok(_) => done.fetch_add(1, Ordering::Relaxed),
                        Err(_) => errors.fetch_add(1, Ordering::Relaxed),
                    };
                }
            })
        })
        .collect();
    for t in tasks {
        t.await.context("a client task")?;
    }
    let errors = errors.load(Ordering::Relaxed);
    if errors > 0 {
        bail!("{errors} GETs failed");
    }
    Ok(done.load(Ordering::Relaxed) as f64 / start.elapsed().as_secs_f64())
}

fn gets(args: &Args) -> anyhow::Result<()> {
    let s = e2e::standalone::Standalone::start();
    let atespace = |name: &str| json!({"apiVersion": "substrate.ate.dev/v1alpha1", "kind": "Atespace", "metadata": {"name": name}});
    for (ns, obj) in [
        ("", atespace("team-a")),
        ("", atespace("team-b")),
        (
            "team-a",
            json!({"apiVersion": "substrate.ate.dev/v1alpha1", "kind": "Actor",
            "metadata": {"name": "a1", "namespace": "team-a"},
            "spec": {"template": {"name": "counter"}, "activation": "Suspended"}}),
        ),
    ] {
        let path = if ns.is_empty() {
            "/apis/substrate.ate.dev/v1alpha1/atespaces".to_string()
        } else {
            format!("/apis/substrate.ate.dev/v1alpha1/namespaces/{ns}/actors")
        };
        let (code, body) = s.admin.request("POST", &path, Some(&obj));
        if code != 201 {
            bail!("POST {path}: {code} {body}");
        }
    }
    e2e::tenancy::apply_rbac(&s.admin);
    let alice = s.user("alice", &["team-a"]);
    let rt = tokio::runtime::Runtime::new()?;
    // Rounds alternate admin and tenant, so that both see the same background load.
    let rounds = rt.block_on(async {
        let client = |path| async move {
            apiserver::cluster_client(Some(path), false, "bench")
                .await
                .context("a client")?
                .context("no client")
        };
        let (admin, tenant) = (
            client(&s.admin.kubeconfig).await?,
            client(&alice.kubeconfig).await?,
        );
        let mut rounds = Vec::new();
        for _ in 0..args.rounds {
            let a = gets_per_second(admin.clone(), args).await?;
            let t = gets_per_second(tenant.clone(), args).await?;
            rounds.push((a, t));
        }
        anyhow::Ok(rounds)
    })?;
    for (i, (admin, tenant)) in rounds.iter().enumerate() {
        println!(
            "GET of one actor, standalone, {} clients, {} s each, round {}: admin (system:masters) {admin:.0}/s, tenant (RBAC) {tenant:.0}/s, tenant/admin {:.2}",
            args.concurrency,
            args.seconds,
            i + 1,
            tenant / admin
        );
    }
    println!(
        "GET tenant/admin, median of {} rounds: {:.2}",
        rounds.len(),
        median(rounds.iter().map(|(a, t)| t / a).collect())
    );
    Ok(())
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    local(&args);
    let rt = tokio::runtime::Runtime::new()?;
    rt.block_on(chain_and_cache(&args));
    sar(&args, &rt)?;
    drop(rt);
    gets(&args)
}
