//! The storage layer against a real `valkey-server`/`redis-server`: the suite, run by
//! `storage.rs` (a Valkey anyone may use) and `storage_acl.rs` (the cluster's ACL user).
//! Each test gets its server from `crate::start_valkey`.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use apiserver::storage::{
    EventType, ListRequest, ObjectKey, ResourceKey, StorageError, Store, StoreOptions, WatchEvent,
    Watcher,
};
use apiserver::testing::ValkeyServer;
use serde_json::{Value, json};

const RES: ResourceKey = ResourceKey {
    group: "substrate.ate.dev",
    resource: "actors",
};
const OTHER: ResourceKey = ResourceKey {
    group: "ate.dev",
    resource: "workerpools",
};
const WAIT: Duration = Duration::from_secs(30);

fn obj(ns: &str, name: &str, labels: &[(&str, &str)], n: u64) -> Value {
    let labels: serde_json::Map<String, Value> = labels
        .iter()
        .map(|(k, v)| (k.to_string(), Value::String(v.to_string())))
        .collect();
    json!({
        "apiVersion": "substrate.ate.dev/v1alpha1",
        "kind": "Actor",
        "metadata": {"namespace": ns, "name": name, "labels": labels},
        "spec": {"n": n},
    })
}

fn terms_of(o: &Value) -> Vec<String> {
    let mut t = Vec::new();
    if let Some(labels) = o["metadata"]["labels"].as_object() {
        for (k, v) in labels {
            t.push(format!("lk:{k}"));
            t.push(format!("l:{k}={}", v.as_str().unwrap_or_default()));
        }
    }
    t
}

fn rv(o: &Value) -> u64 {
    o["metadata"]["resourceVersion"]
        .as_str()
        .expect("resourceVersion is a string")
        .parse()
        .expect("resourceVersion is decimal")
}

fn key(ns: &str, name: &str) -> ObjectKey {
    ObjectKey::new(ns, name)
}

fn key_of(o: &Value) -> ObjectKey {
    key(
        o["metadata"]["namespace"].as_str().unwrap_or_default(),
        o["metadata"]["name"].as_str().unwrap_or_default(),
    )
}

async fn connect(server: &ValkeyServer, opts: StoreOptions) -> Store {
    Store::connect_to(&server.endpoint(), opts, &[RES, OTHER])
        .await
        .expect("connect")
}

async fn next(w: &mut Watcher) -> Arc<WatchEvent> {
    tokio::time::timeout(WAIT, w.next())
        .await
        .expect("event within timeout")
        .expect("event")
}

async fn create(store: &Store, o: &Value) -> Value {
    store
        .create(RES, &key_of(o), o, &terms_of(o))
        .await
        .expect("create")
}

async fn update(store: &Store, old: &Value, new: &Value) -> Value {
    store
        .update(
            RES,
            &key_of(old),
            rv(old),
            new,
            &terms_of(old),
            &terms_of(new),
        )
        .await
        .expect("update")
}

async fn raw_keys(server: &ValkeyServer) -> BTreeSet<String> {
    let mut c = server
        .client()
        .get_multiplexed_async_connection()
        .await
        .expect("raw connection");
    redis::cmd("KEYS")
        .arg("*")
        .query_async(&mut c)
        .await
        .expect("KEYS")
}

#[tokio::test]
async fn crud_round_trip() {
    let server = crate::start_valkey();
    let store = connect(&server, StoreOptions::default()).await;
    let k = key("team", "a");

    assert_eq!(store.get(RES, &k).await.expect("get"), None);
    assert_eq!(store.current_rv(RES).await.expect("rv"), 0);

    // A resourceVersion passed in is ignored: the store assigns it.
    let mut input = obj("team", "a", &[("app", "web")], 1);
    input["metadata"]["resourceVersion"] = json!("999");
    let created = create(&store, &input).await;
    assert_eq!(rv(&created), 1);
    assert_eq!(
        store.get(RES, &k).await.expect("get"),
        Some(created.clone())
    );
    let mut c = server
        .client()
        .get_multiplexed_async_connection()
        .await
        .expect("raw");
    let raw: String = redis::cmd("GET")
        .arg("substrate:{substrate.ate.dev/actors}:o:team/a")
        .query_async(&mut c)
        .await
        .expect("raw get");
    assert!(raw.starts_with("1|{"), "{raw}");
    assert!(!raw.contains("resourceVersion"), "{raw}");

    assert!(matches!(
        store.create(RES, &k, &input, &[]).await,
        Err(StorageError::AlreadyExists { key }) if key == k
    ));

    let updated = update(&store, &created, &obj("team", "a", &[("app", "web")], 2)).await;
    assert_eq!(rv(&updated), 2);
    assert_eq!(updated["spec"]["n"], 2);
    // Stale rv.
    assert!(matches!(
        store.update(RES, &k, 1, &input, &[], &[]).await,
        Err(StorageError::Conflict {
            expected: 1,
            current: 2,
            ..
        })
    ));
    assert!(matches!(
        store.delete(RES, &k, 1, &input, &[]).await,
        Err(StorageError::Conflict {
            expected: 1,
            current: 2,
            ..
        })
    ));
    // Another resource has its own counter.
    let other = store
        .create(
            OTHER,
            &key("", "pool"),
            &json!({"metadata": {"name": "pool"}}),
            &[],
        )
        .await
        .expect("create other");
    assert_eq!(rv(&other), 1);

    // An unchanged object still gets a new rv when the caller writes it.
    let same = update(&store, &updated, &updated).await;
    assert_eq!(rv(&same), 3);

    let mut fin = same.clone();
    fin["metadata"]["deletionTimestamp"] = json!("2025-01-01T00:00:00Z");
    let deleted = store
        .delete(RES, &k, 3, &fin, &terms_of(&same))
        .await
        .expect("delete");
    assert_eq!(rv(&deleted), 4);
    assert_eq!(
        deleted["metadata"]["deletionTimestamp"],
        fin["metadata"]["deletionTimestamp"]
    );
    assert_eq!(store.get(RES, &k).await.expect("get"), None);
    assert!(matches!(
        store.delete(RES, &k, 4, &fin, &[]).await,
        Err(StorageError::NotFound { key }) if key == k
    ));
    assert!(matches!(
        store.update(RES, &k, 4, &fin, &[], &[]).await,
        Err(StorageError::NotFound { .. })
    ));
    assert_eq!(store.current_rv(RES).await.expect("rv"), 4);

    // Cluster-scoped objects use namespace "".
    let c1 = create(&store, &obj("", "cluster-wide", &[], 0)).await;
    assert_eq!(rv(&c1), 5);
    let cached = tokio::time::timeout(WAIT, async {
        store
            .cache(RES)
            .wait_for_rv(5, WAIT)
            .await
            .expect("cache catches up");
        store.cache(RES).get(&key("", "cluster-wide"))
    })
    .await
    .expect("in time");
    assert_eq!(cached.as_deref(), Some(&c1));
}

#[tokio::test]
async fn resource_versions_are_strictly_monotonic_under_concurrency() {
    let server = crate::start_valkey();
    let store = connect(&server, StoreOptions::default()).await;
    let base = create(&store, &obj("ns", "counter", &[], 0)).await;
    let mut w = store.cache(RES).watch_from(rv(&base)).expect("watch");

    let mut tasks = Vec::new();
    for _ in 0..8 {
        let store = store.clone();
        tasks.push(tokio::spawn(async move {
            let k = key("ns", "counter");
            let mut rvs = Vec::new();
            for _ in 0..20 {
                loop {
                    let cur = store.get(RES, &k).await.expect("get").expect("exists");
                    let mut next = cur.clone();
                    next["spec"]["n"] = json!(cur["spec"]["n"].as_u64().unwrap_or(0) + 1);
                    match store.update(RES, &k, rv(&cur), &next, &[], &[]).await {
                        Ok(v) => {
                            rvs.push(rv(&v));
                            break;
                        }
                        Err(StorageError::Conflict { .. }) => continue,
                        Err(e) => panic!("update: {e}"),
                    }
                }
            }
            rvs
        }));
    }
    let mut all = Vec::new();
    for t in tasks {
        let rvs = t.await.expect("join");
        assert!(rvs.windows(2).all(|w| w[0] < w[1]));
        all.extend(rvs);
    }
    all.sort_unstable();
    let expected: Vec<u64> = (2..=161).collect();
    assert_eq!(all, expected, "every successful CAS got its own rv");
    let fin = store
        .get(RES, &key("ns", "counter"))
        .await
        .expect("get")
        .expect("exists");
    assert_eq!(fin["spec"]["n"], 160);
    for want in 1..=160u64 {
        let ev = next(&mut w).await;
        assert_eq!(ev.kind, EventType::Modified);
        assert_eq!(ev.object["spec"]["n"], want);
        let prev = ev.prev.as_ref().expect("prev of a live event");
        assert_eq!(prev["spec"]["n"], want - 1);
        assert_eq!(rv(prev) + 1, ev.rv);
    }
}

/// Namespaces chosen to trip prefix and ordering bugs ("team" vs "team-a" vs "team0").
fn fixture() -> Vec<Value> {
    let mut v = Vec::new();
    for (ns, count) in [
        ("team", 7),
        ("team-a", 4),
        ("team0", 3),
        ("tea", 2),
        ("", 2),
    ] {
        for i in 0..count {
            let app = if i % 2 == 0 { "web" } else { "db" };
            let tier = if i % 3 == 0 { "fe" } else { "be" };
            v.push(obj(
                ns,
                &format!("o{i:02}"),
                &[("app", app), ("tier", tier)],
                i,
            ));
        }
    }
    v
}

#[tokio::test]
async fn list_filters_and_paginates() {
    let server = crate::start_valkey();
    let store = connect(&server, StoreOptions::default()).await;
    let mut stored = BTreeMap::new();
    for o in fixture() {
        let c = create(&store, &o).await;
        stored.insert(key_of(&c), c);
    }
    let rv_now = store.current_rv(RES).await.expect("rv");
    let cache = store.cache(RES);
    cache.wait_for_rv(rv_now, WAIT).await.expect("cache");

    let namespaces = [
        None,
        Some("team"),
        Some("team-a"),
        Some("tea"),
        Some(""),
        Some("nope"),
    ];
    let term_sets: [&[&str]; 4] = [
        &[],
        &["l:app=web"],
        &["l:app=web", "l:tier=fe"],
        &["lk:zzz"],
    ];
    for ns in namespaces {
        for terms in term_sets {
            let matches = |o: &Value| {
                let t = terms_of(o);
                terms.iter().all(|x| t.iter().any(|y| y == x))
            };
            let expected: Vec<&Value> = stored
                .values()
                .filter(|o| ns.is_none_or(|ns| o["metadata"]["namespace"] == ns))
                .filter(|o| matches(o))
                .collect();
            // Ordered by "<ns>/<name>" bytes.
            let members: Vec<String> = expected.iter().map(|o| key_of(o).member()).collect();
            let mut sorted = members.clone();
            sorted.sort();
            assert_eq!(members, sorted);

            for limit in [None, Some(1), Some(2), Some(3), Some(5), Some(100)] {
                let mut got = Vec::new();
                let mut start_after = None;
                let mut pages = 0;
                loop {
                    let page = cache
                        .list(
                            &ListRequest {
                                namespace: ns.map(str::to_string),
                                start_after: start_after.clone(),
                                limit,
                                ..Default::default()
                            },
                            &matches,
                        )
                        .expect("list");
                    pages += 1;
                    assert_eq!(page.rv, rv_now);
                    if let Some(l) = limit {
                        assert!(page.items.len() <= l);
                    }
                    if let Some(next) = &page.next {
                        assert_eq!(Some(next), page.items.last().map(|o| key_of(o)).as_ref());
                    }
                    got.extend(page.items);
                    match page.next {
                        Some(n) => start_after = Some(n),
                        None => break,
                    }
                    assert!(pages < 100, "pagination does not terminate");
                }
                let got: Vec<&Value> = got.iter().map(|o| o.as_ref()).collect();
                assert_eq!(got, expected, "ns={ns:?} terms={terms:?} limit={limit:?}");
                if let Some(l) = limit {
                    // No empty last page: a page is followed by another only if one matches.
                    assert_eq!(pages, expected.len().div_ceil(l).max(1));
                }
            }
        }
    }

    // A start_after key outside the namespace.
    let page = cache
        .list(
            &ListRequest {
                namespace: Some("team".into()),
                start_after: Some(key("team-a", "o99")),
                limit: Some(2),
                ..Default::default()
            },
            &|_| true,
        )
        .expect("list");
    assert_eq!(
        page.items.iter().map(|o| key_of(o)).collect::<Vec<_>>(),
        vec![key("team", "o00"), key("team", "o01")]
    );

    // One name in a namespace.
    let page = cache
        .list(
            &ListRequest {
                namespace: Some("team".into()),
                name: Some("o03".into()),
                ..Default::default()
            },
            &|_| true,
        )
        .expect("list");
    assert_eq!(
        page.items.iter().map(|o| key_of(o)).collect::<Vec<_>>(),
        vec![key("team", "o03")]
    );
}

#[tokio::test]
async fn list_at_an_older_rv_is_the_state_then() {
    let server = crate::start_valkey();
    let store = connect(&server, StoreOptions::default()).await;
    let mut objs = BTreeMap::new();
    for o in fixture() {
        let c = create(&store, &o).await;
        objs.insert(key_of(&c), c);
    }
    let then = store.current_rv(RES).await.expect("rv");
    // Delete, modify (also out of and into a selection) and create.
    let victim = objs[&key("team", "o02")].clone();
    store
        .delete(
            RES,
            &key_of(&victim),
            rv(&victim),
            &victim,
            &terms_of(&victim),
        )
        .await
        .expect("delete");
    let old = objs[&key("team", "o01")].clone();
    update(&store, &old, &obj("team", "o01", &[("app", "web")], 99)).await;
    let old = objs[&key("team", "o00")].clone();
    let mid = update(&store, &old, &obj("team", "o00", &[("app", "db")], 98)).await;
    update(&store, &mid, &obj("team", "o00", &[("app", "db")], 97)).await;
    create(&store, &obj("team", "o015", &[("app", "web")], 5)).await;
    let now = store.current_rv(RES).await.expect("rv");
    let cache = store.cache(RES);
    cache.wait_for_rv(now, WAIT).await.expect("cache");

    let web = |o: &Value| o["metadata"]["labels"]["app"] == "web";
    for (filter, name) in [
        (&(|_: &Value| true) as &dyn Fn(&Value) -> bool, "all"),
        (&web, "web"),
    ] {
        let want: Vec<&Value> = objs.values().filter(|o| filter(o)).collect();
        for limit in [None, Some(1), Some(4)] {
            let mut got = Vec::new();
            let mut start_after = None;
            loop {
                let page = cache
                    .list(
                        &ListRequest {
                            start_after: start_after.clone(),
                            limit,
                            at: Some(then),
                            ..Default::default()
                        },
                        filter,
                    )
                    .expect("list at then");
                assert_eq!(page.rv, then);
                got.extend(page.items);
                match page.next {
                    Some(n) => start_after = Some(n),
                    None => break,
                }
            }
            let got: Vec<&Value> = got.iter().map(|o| o.as_ref()).collect();
            assert_eq!(got, want, "{name} limit={limit:?}");
        }
    }
    // The current state is served as before.
    let page = cache
        .list(&ListRequest::default(), &|_| true)
        .expect("list now");
    assert_eq!(page.rv, now);
    assert_eq!(page.items.len(), objs.len());

    // A new store loads its history from the stream and derives the previous states.
    let fresh = connect(&server, StoreOptions::default()).await;
    let page = fresh
        .cache(RES)
        .list(
            &ListRequest {
                at: Some(then),
                ..Default::default()
            },
            &|_| true,
        )
        .expect("list at then after a load");
    assert_eq!(
        page.items.iter().map(|o| o.as_ref()).collect::<Vec<_>>(),
        objs.values().collect::<Vec<_>>()
    );
    // With a short history, the first event of a key in it has no known previous state
    // (o00's last update), so nothing before it can be rebuilt; before the history: too old.
    let small = connect(
        &server,
        StoreOptions {
            history: 2,
            ..Default::default()
        },
    )
    .await;
    for at in [now - 2, now - 3] {
        let r = small.cache(RES).list(
            &ListRequest {
                at: Some(at),
                ..Default::default()
            },
            &|_| true,
        );
        assert!(
            matches!(r, Err(StorageError::TooOld { requested, .. }) if requested == at),
            "{r:?}"
        );
    }
    // At now - 1: o02 deleted, o015 not created yet (undoing a create needs no previous state).
    let page = small
        .cache(RES)
        .list(
            &ListRequest {
                at: Some(now - 1),
                ..Default::default()
            },
            &|_| true,
        )
        .expect("list at now - 1");
    let keys: Vec<ObjectKey> = page.items.iter().map(|o| key_of(o)).collect();
    assert_eq!(keys.len(), objs.len() - 1);
    assert!(!keys.contains(&key("team", "o015")) && !keys.contains(&key("team", "o02")));
}

/// Every object in Valkey (of `ns` when given), in key order, read from Valkey itself.
async fn valkey_objects(server: &ValkeyServer, store: &Store, ns: Option<&str>) -> Vec<Value> {
    let mut c = server
        .client()
        .get_multiplexed_async_connection()
        .await
        .expect("raw connection");
    let members: Vec<String> = redis::cmd("ZRANGE")
        .arg("substrate:{substrate.ate.dev/actors}:all")
        .arg("-")
        .arg("+")
        .arg("BYLEX")
        .query_async(&mut c)
        .await
        .expect("ZRANGE");
    let mut out = Vec::new();
    for m in members {
        let k = ObjectKey::from_member(&m).expect("member");
        if ns.is_some_and(|ns| k.namespace != ns) {
            continue;
        }
        out.push(store.get(RES, &k).await.expect("get").expect("exists"));
    }
    out
}

/// The members of the intersection of index term sets, sorted.
async fn term_members(conn: &mut redis::aio::MultiplexedConnection, terms: &[&str]) -> Vec<String> {
    let mut cmd = redis::cmd("SINTER");
    for t in terms {
        cmd.arg(format!("substrate:{{substrate.ate.dev/actors}}:i:{t}"));
    }
    let mut m: Vec<String> = cmd.query_async(conn).await.expect("SINTER");
    m.sort();
    m
}

#[tokio::test]
async fn indexes_follow_updates_and_deletes() {
    let server = crate::start_valkey();
    let store = connect(&server, StoreOptions::default()).await;
    let mut raw = server
        .client()
        .get_multiplexed_async_connection()
        .await
        .expect("raw connection");

    let a = create(&store, &obj("ns", "a", &[("app", "web")], 0)).await;
    let b = create(&store, &obj("ns", "b", &[("app", "web")], 0)).await;
    let a2 = update(&store, &a, &obj("ns", "a", &[("app", "api")], 1)).await;
    assert_eq!(term_members(&mut raw, &["l:app=web"]).await, vec!["ns/b"]);
    assert_eq!(term_members(&mut raw, &["l:app=api"]).await, vec!["ns/a"]);
    assert_eq!(
        term_members(&mut raw, &["lk:app"]).await,
        vec!["ns/a", "ns/b"]
    );

    // Dropping the label removes the object from every term of it.
    let a3 = update(&store, &a2, &obj("ns", "a", &[], 2)).await;
    assert_eq!(term_members(&mut raw, &["lk:app"]).await, vec!["ns/b"]);
    assert!(
        !raw_keys(&server)
            .await
            .iter()
            .any(|k| k.ends_with(":i:l:app=api"))
    );

    store
        .delete(RES, &key("ns", "a"), rv(&a3), &a3, &terms_of(&a3))
        .await
        .expect("delete a");
    store
        .delete(RES, &key("ns", "b"), rv(&b), &b, &terms_of(&b))
        .await
        .expect("delete b");
    let left = raw_keys(&server).await;
    let expected: BTreeSet<String> = [
        "substrate:{substrate.ate.dev/actors}:rv",
        "substrate:{substrate.ate.dev/actors}:log",
    ]
    .into_iter()
    .map(String::from)
    .collect();
    assert_eq!(left, expected, "no dangling objects, index sets or members");
    assert_eq!(store.current_rv(RES).await.expect("rv"), 6);
}

#[tokio::test]
async fn watch_delivers_events_in_order_with_prev_and_replays() {
    let server = crate::start_valkey();
    let store = connect(
        &server,
        StoreOptions {
            history: 6,
            ..Default::default()
        },
    )
    .await;
    let cache = store.cache(RES).clone();
    let mut w = cache.watch_from(0).expect("watch from 0");

    let a1 = create(&store, &obj("ns", "a", &[], 1)).await;
    let a2 = update(&store, &a1, &obj("ns", "a", &[], 2)).await;
    let b1 = create(&store, &obj("ns", "b", &[], 1)).await;
    let mut fin = a2.clone();
    fin["metadata"]["finalizers"] = json!([]);
    let a3 = store
        .delete(RES, &key("ns", "a"), rv(&a2), &fin, &[])
        .await
        .expect("delete");

    let expect = [
        (EventType::Added, &a1, None),
        (EventType::Modified, &a2, Some(&a1)),
        (EventType::Added, &b1, None),
        (EventType::Deleted, &a3, Some(&a2)),
    ];
    for (kind, object, prev) in expect {
        let ev = next(&mut w).await;
        assert_eq!(ev.kind, kind);
        assert_eq!(ev.rv, rv(object));
        assert_eq!(&*ev.object, object);
        assert_eq!(ev.key, key_of(object));
        assert_eq!(ev.prev.as_deref(), prev);
    }
    assert!(w.try_next().is_none());

    // Replay from an older rv.
    let mut replay = cache.watch_from(2).expect("replay");
    assert_eq!(next(&mut replay).await.rv, 3);
    assert_eq!(next(&mut replay).await.rv, 4);

    // Push the history (6 events) past rv 2.
    let mut b = b1;
    for i in 0..4 {
        b = update(&store, &b, &obj("ns", "b", &[], 10 + i)).await;
    }
    cache.wait_for_rv(rv(&b), WAIT).await.expect("cache");
    assert_eq!(cache.oldest_rv(), 2);
    assert!(matches!(
        cache.watch_from(1),
        Err(StorageError::TooOld {
            requested: 1,
            oldest: 2
        })
    ));
    let mut from_oldest = cache.watch_from(2).expect("oldest is allowed");
    assert_eq!(next(&mut from_oldest).await.rv, 3);
    // `replay` is at rv 4, still inside the history: it continues without a gap.
    assert_eq!(next(&mut replay).await.rv, 5);
    b = update(&store, &b, &obj("ns", "b", &[], 99)).await;
    cache.wait_for_rv(rv(&b), WAIT).await.expect("cache");
    // History is now 4..=9 (oldest 3): `from_oldest`, at 3, can still continue. One more
    // write evicts rv 4, and the watcher that did not read it gets TooOld.
    b = update(&store, &b, &obj("ns", "b", &[], 100)).await;
    cache.wait_for_rv(rv(&b), WAIT).await.expect("cache");
    assert!(matches!(
        from_oldest.next().await,
        Err(StorageError::TooOld { requested: 3, .. })
    ));
    assert!(matches!(
        cache.wait_for_rv(rv(&b) + 1, Duration::from_millis(50)).await,
        Err(StorageError::Timeout { current, .. }) if current == rv(&b)
    ));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn watch_with_snapshot_has_no_gap_and_no_dup_under_writes() {
    let server = crate::start_valkey();
    let store = connect(&server, StoreOptions::default()).await;
    let cache = store.cache(RES).clone();
    const WRITES: u64 = 400;

    let writer = {
        let store = store.clone();
        tokio::spawn(async move {
            let mut live: BTreeMap<ObjectKey, Value> = BTreeMap::new();
            for i in 0..WRITES {
                let ns = ["a", "b", "c"][(i % 3) as usize];
                let k = key(ns, &format!("o{}", i % 17));
                match live.get(&k).cloned() {
                    None => {
                        let o = create(&store, &obj(ns, &k.name, &[], i)).await;
                        live.insert(k, o);
                    }
                    Some(cur) if i % 5 == 0 => {
                        store
                            .delete(RES, &k, rv(&cur), &cur, &[])
                            .await
                            .expect("delete");
                        live.remove(&k);
                    }
                    Some(cur) => {
                        let o = update(&store, &cur, &obj(ns, &k.name, &[], i)).await;
                        live.insert(k, o);
                    }
                }
            }
        })
    };

    let mut watchers = Vec::new();
    while !writer.is_finished() || watchers.len() < 4 {
        let ns = [None, Some("a"), Some("b")][watchers.len() % 3];
        let (rv, items, w) = cache.watch_with_snapshot(ns);
        watchers.push((ns, rv, items, w));
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    writer.await.expect("writer");
    let final_rv = store.current_rv(RES).await.expect("rv");
    assert_eq!(final_rv, WRITES);
    assert!(watchers.len() > 4);

    for (ns, start, items, mut w) in watchers {
        let mut state: BTreeMap<ObjectKey, Value> =
            items.iter().map(|o| (key_of(o), (**o).clone())).collect();
        let mut last = start;
        while last < final_rv {
            let ev = next(&mut w).await;
            assert_eq!(ev.rv, last + 1, "no gap, no duplicate");
            last = ev.rv;
            if ns.is_some_and(|ns| ev.key.namespace != ns) {
                continue;
            }
            match ev.kind {
                EventType::Added => {
                    assert!(state.insert(ev.key.clone(), (*ev.object).clone()).is_none())
                }
                EventType::Modified => {
                    assert!(state.insert(ev.key.clone(), (*ev.object).clone()).is_some())
                }
                EventType::Deleted => assert!(state.remove(&ev.key).is_some()),
            }
        }
        assert_eq!(
            state.into_values().collect::<Vec<_>>(),
            valkey_objects(&server, &store, ns).await,
            "ns={ns:?} start={start}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn many_watchers_are_cheap() {
    let server = crate::start_valkey();
    let store = connect(&server, StoreOptions::default()).await;
    let cache = store.cache(RES).clone();
    let mut tasks = Vec::new();
    for _ in 0..200 {
        let mut w = cache.watch_from(0).expect("watch");
        tasks.push(tokio::spawn(async move {
            let mut rvs = Vec::new();
            while rvs.len() < 50 {
                rvs.push(next(&mut w).await.rv);
            }
            rvs
        }));
    }
    for i in 0..50 {
        create(&store, &obj("ns", &format!("o{i}"), &[], i)).await;
    }
    let expected: Vec<u64> = (1..=50).collect();
    for t in tasks {
        assert_eq!(t.await.expect("join"), expected);
    }
}

/// Creates `obj-<i>` for every i, retrying through outages. A retry that finds the object
/// already there means the earlier attempt was committed; the object is then read back.
/// Returns (key, rv) of every committed create, and how many attempts failed.
async fn create_all_with_retries(
    store: Store,
    n: usize,
    done: Arc<AtomicUsize>,
) -> (Vec<(ObjectKey, u64)>, usize) {
    let mut committed = Vec::new();
    let mut failures = 0;
    for i in 0..n {
        let o = obj("ns", &format!("obj-{i:03}"), &[("app", "web")], i as u64);
        let k = key_of(&o);
        let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
        let rv = loop {
            match store.create(RES, &k, &o, &terms_of(&o)).await {
                Ok(v) => break rv(&v),
                Err(StorageError::AlreadyExists { .. }) => {
                    let v = loop {
                        match store.get(RES, &k).await {
                            Ok(v) => break v.expect("an existing object"),
                            Err(_) => tokio::time::sleep(Duration::from_millis(20)).await,
                        }
                    };
                    break rv(&v);
                }
                Err(StorageError::Backend(_)) => {
                    failures += 1;
                    assert!(
                        tokio::time::Instant::now() < deadline,
                        "Valkey did not come back"
                    );
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
                Err(e) => panic!("create: {e}"),
            }
        };
        committed.push((k, rv));
        done.fetch_add(1, Ordering::SeqCst);
    }
    (committed, failures)
}

async fn wait_until(what: &str, mut f: impl FnMut() -> bool) {
    tokio::time::timeout(WAIT, async {
        while !f() {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    })
    .await
    .unwrap_or_else(|_| panic!("timed out waiting for {what}"));
}

async fn restart_mid_stream(graceful: bool) {
    let mut server = crate::start_valkey();
    let store = connect(&server, StoreOptions::default()).await;
    let cache = store.cache(RES).clone();
    let mut w = cache.watch_from(cache.rv()).expect("watch");
    let epoch = cache.epoch();
    const N: usize = 300;

    let done = Arc::new(AtomicUsize::new(0));
    let writer = tokio::spawn(create_all_with_retries(store.clone(), N, done.clone()));
    let d = done.clone();
    wait_until("some writes", move || d.load(Ordering::SeqCst) >= 50).await;
    if graceful {
        server.stop();
    } else {
        server.kill();
    }
    let at_outage = done.load(Ordering::SeqCst);
    tokio::time::sleep(Duration::from_millis(300)).await;
    server.restart();
    let (committed, failures) = writer.await.expect("writer");
    assert!(at_outage < N, "the outage happened mid-stream");
    // A write that meets the dropped connection is retried once on a new one, which may wait
    // out a short outage: the writer need not see it.
    eprintln!("writes that failed during the outage: {failures}");

    let final_rv = store.current_rv(RES).await.expect("rv");
    let mut seen = Vec::new();
    let mut last = 0;
    while last < final_rv {
        let ev = next(&mut w).await;
        assert!(ev.rv > last, "in order, no duplicates");
        assert_eq!(ev.kind, EventType::Added);
        last = ev.rv;
        seen.push((ev.key.clone(), ev.rv));
    }
    assert_eq!(
        seen, committed,
        "every committed write exactly once, in order"
    );
    assert_eq!(cache.epoch(), epoch, "no reset: nothing was lost");
    assert_eq!(cache.snapshot(None).1.len(), N);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn kill_9_mid_stream_loses_and_duplicates_nothing() {
    restart_mid_stream(false).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn graceful_restart_mid_stream_loses_and_duplicates_nothing() {
    restart_mid_stream(true).await;
}

#[tokio::test]
async fn new_store_serves_old_resource_versions_from_the_stream() {
    let server = crate::start_valkey();
    let mut written = Vec::new();
    {
        let store = connect(&server, StoreOptions::default()).await;
        let mut a = create(&store, &obj("ns", "a", &[], 0)).await;
        written.push(a.clone());
        for i in 1..=5 {
            a = update(&store, &a, &obj("ns", "a", &[], i)).await;
            written.push(a.clone());
        }
        let b = create(&store, &obj("ns", "b", &[], 0)).await;
        written.push(b.clone());
        let d = store
            .delete(RES, &key("ns", "a"), rv(&a), &a, &[])
            .await
            .expect("delete");
        written.push(d);
    }
    // An apiserver restart: a new Store over the same Valkey.
    let store = connect(&server, StoreOptions::default()).await;
    let cache = store.cache(RES);
    assert_eq!((cache.rv(), cache.oldest_rv()), (8, 0));
    let mut w = cache.watch_from(3).expect("old rv");
    let kinds = [
        EventType::Modified,
        EventType::Modified,
        EventType::Modified,
        EventType::Added,
        EventType::Deleted,
    ];
    for (i, kind) in kinds.into_iter().enumerate() {
        let ev = next(&mut w).await;
        let want = &written[3 + i];
        assert_eq!((ev.rv, ev.kind), (rv(want), kind));
        assert_eq!(&*ev.object, want);
    }
    // The whole stream was loaded, so prev is known for every event.
    let mut w = cache.watch_from(0).expect("from the start");
    assert!(next(&mut w).await.prev.is_none());
    let e2 = next(&mut w).await;
    assert_eq!(e2.prev.as_deref(), Some(&written[0]));
    assert_eq!(
        cache
            .snapshot(None)
            .1
            .iter()
            .map(|v| (**v).clone())
            .collect::<Vec<_>>(),
        vec![written[6].clone()]
    );
}

#[tokio::test]
async fn new_store_after_trimming_starts_history_at_the_stream() {
    let server = crate::start_valkey();
    let mut c = server
        .client()
        .get_multiplexed_async_connection()
        .await
        .expect("raw");
    // Small stream nodes so that `MAXLEN ~` trims at a fine granularity.
    redis::cmd("CONFIG")
        .arg("SET")
        .arg("stream-node-max-entries")
        .arg(2)
        .exec_async(&mut c)
        .await
        .expect("config");
    let opts = StoreOptions {
        log_max_len: 10,
        ..Default::default()
    };
    {
        let store = connect(&server, opts.clone()).await;
        let mut a = create(&store, &obj("ns", "a", &[], 0)).await;
        for i in 1..50 {
            a = update(&store, &a, &obj("ns", "a", &[], i)).await;
        }
    }
    let len: usize = redis::cmd("XLEN")
        .arg("substrate:{substrate.ate.dev/actors}:log")
        .query_async(&mut c)
        .await
        .expect("xlen");
    assert!(
        (10..20).contains(&len),
        "stream trimmed to about 10, got {len}"
    );
    let store = connect(&server, opts).await;
    let cache = store.cache(RES);
    assert_eq!(cache.rv(), 50);
    assert_eq!(cache.oldest_rv(), 50 - len as u64);
    assert!(
        matches!(cache.watch_from(0), Err(StorageError::TooOld { requested: 0, oldest }) if oldest == 50 - len as u64)
    );
    let mut w = cache.watch_from(cache.oldest_rv()).expect("oldest");
    let first = next(&mut w).await;
    assert_eq!(first.rv, cache.oldest_rv() + 1);
    assert!(
        first.prev.is_none(),
        "the first event of a key in loaded history has no prev"
    );
    assert!(next(&mut w).await.prev.is_some());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn flushall_expires_watchers_and_reloads() {
    let server = crate::start_valkey();
    let store = connect(&server, StoreOptions::default()).await;
    let cache = store.cache(RES).clone();
    for i in 0..5 {
        create(&store, &obj("ns", &format!("o{i}"), &[], i)).await;
    }
    cache.wait_for_rv(5, WAIT).await.expect("cache");
    let epoch = cache.epoch();
    let mut w = cache.watch_from(5).expect("watch");
    let mut w_old = cache.watch_from(2).expect("watch");
    let pending = tokio::spawn(async move { w.next().await });

    let mut c = server
        .client()
        .get_multiplexed_async_connection()
        .await
        .expect("raw");
    redis::cmd("FLUSHALL")
        .exec_async(&mut c)
        .await
        .expect("flushall");

    let r = tokio::time::timeout(WAIT, pending)
        .await
        .expect("woken by the reset")
        .expect("join");
    assert!(matches!(r, Err(StorageError::Expired)), "{r:?}");
    // Unread events of the old epoch are gone too.
    assert!(matches!(w_old.next().await, Err(StorageError::Expired)));
    assert_eq!(cache.epoch(), epoch + 1);
    assert_eq!(cache.rv(), 0);
    assert!(cache.snapshot(None).1.is_empty());

    // The store keeps working on the empty database and the cache follows.
    let mut w = cache.watch_from(cache.rv()).expect("watch after reset");
    let o = create(&store, &obj("ns", "fresh", &[], 0)).await;
    assert_eq!(rv(&o), 1);
    let ev = next(&mut w).await;
    assert_eq!((ev.rv, ev.kind), (1, EventType::Added));
    assert_eq!(cache.get(&key("ns", "fresh")).as_deref(), Some(&o));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn restart_without_data_resets_the_cache() {
    let mut server = crate::start_valkey();
    let store = connect(&server, StoreOptions::default()).await;
    let cache = store.cache(RES).clone();
    for i in 0..3 {
        create(&store, &obj("ns", &format!("o{i}"), &[], i)).await;
    }
    cache.wait_for_rv(3, WAIT).await.expect("cache");
    let mut w = cache.watch_from(3).expect("watch");
    server.kill();
    // Lose the data: remove the AOF before the restart.
    std::fs::remove_dir_all(server.dir().join("appendonlydir")).expect("remove AOF");
    server.restart();
    let r = tokio::time::timeout(WAIT, w.next()).await.expect("woken");
    assert!(matches!(r, Err(StorageError::Expired)), "{r:?}");
    assert_eq!(cache.rv(), 0);
    // Writes (and their scripts, reloaded after NOSCRIPT) work again.
    let mut o = None;
    for _ in 0..500 {
        match store
            .create(RES, &key("ns", "x"), &obj("ns", "x", &[], 0), &[])
            .await
        {
            Ok(v) => {
                o = Some(v);
                break;
            }
            Err(StorageError::Backend(_)) => tokio::time::sleep(Duration::from_millis(20)).await,
            Err(e) => panic!("create: {e}"),
        }
    }
    assert_eq!(o.map(|o| rv(&o)), Some(1));
}

/// Found by the fault suite: after a Valkey restart the first request on the old connection
/// met the dead socket and was a 503. It is retried once on the new connection instead.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_first_requests_after_a_valkey_restart_succeed() {
    let mut server = crate::start_valkey();
    let store = connect(&server, StoreOptions::default()).await;
    let o = create(&store, &obj("ns", "before", &[], 0)).await;
    for graceful in [false, true] {
        if graceful {
            server.stop();
        } else {
            server.kill();
        }
        server.restart();
        // No sleep, no retry loop: each first call must succeed.
        let got = store
            .get(RES, &key("ns", "before"))
            .await
            .unwrap_or_else(|e| {
                panic!("the first get after a restart (graceful: {graceful}): {e}")
            });
        assert_eq!(got.as_ref(), Some(&o));
        server.kill();
        server.restart();
        let name = format!("after-{graceful}");
        store
            .create(RES, &key("ns", &name), &obj("ns", &name, &[], 0), &[])
            .await
            .unwrap_or_else(|e| {
                panic!("the first create after a restart (graceful: {graceful}): {e}")
            });
    }
}
