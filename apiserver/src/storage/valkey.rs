//! The Valkey store: atomic CAS writes, consistent reads, and the feed of the watch caches.
//!
//! # Key layout (the on-disk format)
//!
//! Every key of one resource type shares the hash tag `{<group>/<resource>}`, so a resource
//! lives in ONE cluster slot and its scripts can run on a Valkey cluster unchanged. `P` is
//! [`StoreOptions::prefix`] (default `substrate`; it must not contain `{` or `}`), `<member>`
//! is `"<namespace>/<name>"` (cluster-scoped objects: `"/<name>"`). Example:
//! `substrate:{substrate.ate.dev/actors}:o:team-a/web-1`.
//!
//! * `P:{G/R}:rv` — string: the resource's resourceVersion counter (decimal; the rv of the
//!   last write, absent before the first).
//! * `P:{G/R}:o:<member>` — string `<rv>` `|` `<json>`: the rv of the object's last write and
//!   its JSON WITHOUT `metadata.resourceVersion` (injected on read).
//! * `P:{G/R}:all` — sorted set of every `<member>`, all scores 0, so ordered by bytes; one
//!   namespace is the lexicographic range `[<ns>/` .. `(<ns>0` (`0` follows `/`), which is
//!   why there is no per-namespace set.
//! * `P:{G/R}:i:<term>` — set of the `<member>`s whose object has index term `<term>`. Terms
//!   are opaque strings computed by the caller (e.g. `l:app=web`, `lk:app`,
//!   `f:status.phase=Running`).
//! * `P:{G/R}:log` — stream with one entry per write; entry ID exactly `<rv>-0`; fields `t`
//!   (`ADDED`, `MODIFIED` or `DELETED`), `k` (`<member>`) and `o` (the object JSON without
//!   rv; for `DELETED` the final state passed to [`Store::delete`]). Trimmed with
//!   `MAXLEN ~` [`StoreOptions::log_max_len`].
//!
//! Invariants, kept because every write is one Lua script (`scripts/*.lua`, run with
//! EVALSHA, `#!lua` shebang so Valkey >= 7 / Redis >= 7 rejects them up front under OOM):
//! the counter is incremented by exactly one per write, and that write appends exactly one
//! stream entry with the same rv, so the stream's rvs are contiguous; empty index sets are
//! removed by Valkey itself. The scripts check everything before writing and append to the
//! stream first (the only command that could fail), so a failed script writes nothing.
//!
//! # The feed
//!
//! One task per [`Store`] follows every resource stream with `XREAD BLOCK` on a dedicated
//! connection and applies the entries to the [`WatchCache`]s. It reconnects with backoff
//! (logging in again with the [`Endpoint`]'s credentials, as every connection does) and
//! resumes from the cache's rv, so a Valkey restart (AOF) neither loses nor duplicates events.
//! It reloads a cache (bumping its epoch, which expires its watchers) when the counter is
//! lower than the cache's rv (Valkey lost data or was flushed) or when the stream does not
//! continue the cache's state (trimmed past the cache's position, or rewritten).
//!
//! Reads: [`Store::get`] is a plain `GET` and [`Store::current_rv`] reads the counter; lists
//! are served by the watch caches ([`WatchCache::list`]), which a consistent list first lets
//! catch up with the counter. Loading a cache is one read-only script (`#!lua
//! flags=no-writes`, `scripts/load.lua`) returning the counter and every object together. The
//! term sets are kept for a Valkey-side query but no read uses them today.
//!
//! Limits: the multi-stream `XREAD` is the one command that assumes a single node (on a
//! cluster the feed would issue one `XREAD` per shard). Data loss is detected by the counter
//! going backwards (checked on every reconnect and every second) or by a stream entry that
//! does not follow the cache; a flush followed by exactly as many writes as were lost before
//! the next check is indistinguishable from normal progress. No acknowledged write is lost
//! only if Valkey runs with `appendfsync always`.

use std::collections::HashMap;
use std::sync::{Arc, LazyLock};
use std::time::{Duration, Instant};

use redis::aio::{ConnectionManager, ConnectionManagerConfig, MultiplexedConnection};
use redis::streams::{StreamId, StreamRangeReply, StreamReadReply};
use redis::{AsyncConnectionConfig, Script};
use serde_json::Value;

use super::cache::{Loaded, StreamEvent, WatchCache};
use super::{Endpoint, EventType, ObjectKey, ResourceKey, StorageError, stored_json, with_rv};

static CREATE: LazyLock<Script> = LazyLock::new(|| Script::new(include_str!("scripts/create.lua")));
static UPDATE: LazyLock<Script> = LazyLock::new(|| Script::new(include_str!("scripts/update.lua")));
static DELETE: LazyLock<Script> = LazyLock::new(|| Script::new(include_str!("scripts/delete.lua")));
static LOAD: LazyLock<Script> = LazyLock::new(|| Script::new(include_str!("scripts/load.lua")));

/// How long one `XREAD` blocks; also the period of the data-loss check when idle.
const BLOCK: Duration = Duration::from_secs(1);
/// Entries per stream per `XREAD`.
const READ_COUNT: usize = 1000;
/// How often the feed compares the counters with the caches (data-loss detection).
const CHECK_INTERVAL: Duration = Duration::from_secs(1);
/// Timeout of one command on the normal connection (loads of big resources included): a
/// Valkey that hangs turns into a clear error instead of a hung request.
const RESPONSE_TIMEOUT: Duration = Duration::from_secs(10);
/// Timeout of establishing a connection.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(2);
const BACKOFF_MIN: Duration = Duration::from_millis(50);
const BACKOFF_MAX: Duration = Duration::from_secs(2);

/// Options of a [`Store`].
#[derive(Clone, Debug)]
pub struct StoreOptions {
    /// Prefix of every key (must not contain `{` or `}`). Default `substrate`.
    pub prefix: String,
    /// Approximate number of entries kept in each resource's stream. Default 10000.
    pub log_max_len: usize,
    /// Events kept in memory per resource (how far back a watch can start). Default 10000.
    pub history: usize,
}

impl Default for StoreOptions {
    fn default() -> Self {
        Self {
            prefix: "substrate".into(),
            log_max_len: 10_000,
            history: 10_000,
        }
    }
}

/// The keys of one resource type (see the module docs).
#[derive(Debug)]
struct Keys {
    rv: String,
    all: String,
    log: String,
    object_prefix: String,
    index_prefix: String,
}

impl Keys {
    fn new(prefix: &str, res: ResourceKey) -> Self {
        let base = format!("{prefix}:{{{}/{}}}:", res.group, res.resource);
        Self {
            rv: format!("{base}rv"),
            all: format!("{base}all"),
            log: format!("{base}log"),
            object_prefix: format!("{base}o:"),
            index_prefix: format!("{base}i:"),
        }
    }

    fn object(&self, key: &ObjectKey) -> String {
        format!("{}{}", self.object_prefix, key.member())
    }

    fn term(&self, term: &str) -> String {
        format!("{}{term}", self.index_prefix)
    }
}

struct Resource {
    keys: Arc<Keys>,
    cache: Arc<WatchCache>,
}

struct Inner {
    conn: ConnectionManager,
    opts: StoreOptions,
    resources: HashMap<ResourceKey, Resource>,
    _feed: AbortOnDrop,
}

/// Aborts a task when dropped (here: the feed, when the last [`Store`] clone is dropped).
pub(crate) struct AbortOnDrop(pub(crate) tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// The Valkey-backed store of every resource type. Cheap to clone; the feed task stops when
/// the last clone is dropped.
///
/// Every method taking a [`ResourceKey`] panics when that resource was not passed to
/// [`Store::connect`] (a programming error, like an unknown map key).
#[derive(Clone)]
pub struct Store {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for Store {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Store")
            .field("prefix", &self.inner.opts.prefix)
            .field("resources", &self.inner.resources.len())
            .finish()
    }
}

impl Store {
    /// [`Store::connect_to`] `url`, with the credentials the URL carries (if any).
    pub async fn connect(
        url: &str,
        opts: StoreOptions,
        resources: &[ResourceKey],
    ) -> Result<Store, StorageError> {
        Self::connect_to(&Endpoint::new(url), opts, resources).await
    }

    /// Connects, loads every resource's watch cache, and starts the feed. Every connection
    /// (the feed's reconnections after a Valkey restart included) logs in with `endpoint`'s
    /// credentials. A refused login is [`StorageError::Unauthenticated`] at once (one attempt,
    /// not the reconnect backoff); a missing ACL permission met while loading is
    /// [`StorageError::Forbidden`].
    pub async fn connect_to(
        endpoint: &Endpoint,
        opts: StoreOptions,
        resources: &[ResourceKey],
    ) -> Result<Store, StorageError> {
        let client = endpoint.client()?;
        let user = endpoint.username();
        check_login(&client, &user).await?;
        let mut conn = ConnectionManager::new_with_config(
            client.clone(),
            ConnectionManagerConfig::new()
                .set_response_timeout(Some(RESPONSE_TIMEOUT))
                .set_connection_timeout(Some(CONNECT_TIMEOUT)),
        )
        .await
        .map_err(|e| classify(e, &user))?;
        tracing::info!(valkey = %endpoint.redacted(), user = %user,
            password = endpoint.has_password(), "connected to Valkey");
        let mut map = HashMap::new();
        let mut feed_resources = Vec::new();
        for &res in resources {
            if map.contains_key(&res) {
                continue;
            }
            let keys = Arc::new(Keys::new(&opts.prefix, res));
            let loaded = load(&mut conn, res, &keys, opts.history)
                .await
                .map_err(|e| match e {
                    StorageError::Backend(e) => classify(e, &user),
                    e => e,
                })?;
            tracing::info!(resource = %res, rv = loaded.rv, objects = loaded.objects.len(),
                history = loaded.history.len(), "watch cache loaded");
            let cache = Arc::new(WatchCache::new(res, opts.history, loaded));
            feed_resources.push((res, keys.clone(), cache.clone()));
            map.insert(res, Resource { keys, cache });
        }
        let feed = Feed {
            client,
            conn: None,
            resources: feed_resources,
            history: opts.history,
            last_check: Instant::now(),
        };
        let handle = tokio::spawn(feed.run());
        Ok(Store {
            inner: Arc::new(Inner {
                conn,
                opts,
                resources: map,
                _feed: AbortOnDrop(handle),
            }),
        })
    }

    /// Runs `op` on the shared connection, and once more when it failed because that
    /// connection was dropped (a Valkey restart: the connection manager reconnects on the
    /// error, and the request that met the dead socket would otherwise be a 503). Safe for
    /// writes too: every write is a compare-and-swap on the resourceVersion, so one that had
    /// reached Valkey before the drop is refused on the retry (409 / AlreadyExists), never
    /// applied twice.
    async fn once_more_on_a_dropped_connection<T, F, Fut>(
        &self,
        what: &'static str,
        op: F,
    ) -> Result<T, redis::RedisError>
    where
        F: Fn(ConnectionManager) -> Fut,
        Fut: std::future::Future<Output = Result<T, redis::RedisError>>,
    {
        match op(self.inner.conn.clone()).await {
            Err(e) if e.is_connection_dropped() => {
                tracing::info!(op = what, error = %e,
                    "the Valkey connection was dropped; retrying once on a new one");
                op(self.inner.conn.clone()).await
            }
            r => r,
        }
    }

    fn resource(&self, res: ResourceKey) -> &Resource {
        match self.inner.resources.get(&res) {
            Some(r) => r,
            None => panic!("resource {res} was not passed to Store::connect"),
        }
    }

    fn keys(&self, res: ResourceKey) -> &Keys {
        &self.resource(res).keys
    }

    /// The watch cache of `res`.
    ///
    /// # Panics
    /// When `res` was not passed to [`Store::connect`] (a programming error).
    pub fn cache(&self, res: ResourceKey) -> &Arc<WatchCache> {
        &self.resource(res).cache
    }

    /// Reads one object from Valkey (consistent, not from the cache).
    pub async fn get(
        &self,
        res: ResourceKey,
        key: &ObjectKey,
    ) -> Result<Option<Value>, StorageError> {
        let k = self.keys(res).object(key);
        let cmd = redis::cmd("GET").arg(&k).clone();
        let raw: Option<String> = self
            .once_more_on_a_dropped_connection("get", |mut c| {
                let cmd = &cmd;
                async move { cmd.query_async(&mut c).await }
            })
            .await?;
        raw.map(|s| parse_stored(&k, &s)).transpose()
    }

    /// Creates an object; [`StorageError::AlreadyExists`] when it exists. Returns the stored
    /// object with `metadata.resourceVersion`.
    pub async fn create(
        &self,
        res: ResourceKey,
        key: &ObjectKey,
        obj: &Value,
        terms: &[String],
    ) -> Result<Value, StorageError> {
        let keys = self.keys(res);
        let json = stored_json(obj);
        let mut inv = CREATE.prepare_invoke();
        inv.key(&keys.rv)
            .key(keys.object(key))
            .key(&keys.all)
            .key(&keys.log);
        for t in terms {
            inv.key(keys.term(t));
        }
        inv.arg(key.member())
            .arg(&json)
            .arg(self.inner.opts.log_max_len);
        let reply: Vec<String> = self
            .once_more_on_a_dropped_connection("create", |mut c| {
                let inv = &inv;
                async move { inv.invoke_async(&mut c).await }
            })
            .await?;
        match reply.first().map(String::as_str) {
            Some("ok") => {
                let rv = parse_rv(&keys.object(key), reply.get(1))?;
                tracing::debug!(resource = %res, key = %key, rv, "object created");
                Ok(with_rv(parse_json(&keys.object(key), &json)?, rv))
            }
            Some("exists") => Err(StorageError::AlreadyExists { key: key.clone() }),
            _ => Err(bad_reply(&keys.object(key), &reply)),
        }
    }

    /// Replaces an object if its rv is `expected_rv` ([`StorageError::NotFound`],
    /// [`StorageError::Conflict`]). `old_terms` must be the index terms of the stored object
    /// (the CAS guarantees it is the version the caller computed them from).
    pub async fn update(
        &self,
        res: ResourceKey,
        key: &ObjectKey,
        expected_rv: u64,
        obj: &Value,
        old_terms: &[String],
        new_terms: &[String],
    ) -> Result<Value, StorageError> {
        let keys = self.keys(res);
        let json = stored_json(obj);
        let okey = keys.object(key);
        let mut inv = UPDATE.prepare_invoke();
        inv.key(&keys.rv).key(&okey).key(&keys.log);
        for t in old_terms.iter().chain(new_terms) {
            inv.key(keys.term(t));
        }
        inv.arg(key.member())
            .arg(expected_rv)
            .arg(&json)
            .arg(self.inner.opts.log_max_len)
            .arg(old_terms.len());
        let reply: Vec<String> = self
            .once_more_on_a_dropped_connection("update", |mut c| {
                let inv = &inv;
                async move { inv.invoke_async(&mut c).await }
            })
            .await?;
        let rv = cas_reply(&okey, key, expected_rv, &reply)?;
        tracing::debug!(resource = %res, key = %key, rv, "object updated");
        Ok(with_rv(parse_json(&okey, &json)?, rv))
    }

    /// Deletes an object if its rv is `expected_rv` ([`StorageError::NotFound`],
    /// [`StorageError::Conflict`]). The DELETED event carries `final_obj`, which is returned
    /// with the deletion's rv.
    pub async fn delete(
        &self,
        res: ResourceKey,
        key: &ObjectKey,
        expected_rv: u64,
        final_obj: &Value,
        old_terms: &[String],
    ) -> Result<Value, StorageError> {
        let keys = self.keys(res);
        let json = stored_json(final_obj);
        let okey = keys.object(key);
        let mut inv = DELETE.prepare_invoke();
        inv.key(&keys.rv).key(&okey).key(&keys.all).key(&keys.log);
        for t in old_terms {
            inv.key(keys.term(t));
        }
        inv.arg(key.member())
            .arg(expected_rv)
            .arg(&json)
            .arg(self.inner.opts.log_max_len);
        let reply: Vec<String> = self
            .once_more_on_a_dropped_connection("delete", |mut c| {
                let inv = &inv;
                async move { inv.invoke_async(&mut c).await }
            })
            .await?;
        let rv = cas_reply(&okey, key, expected_rv, &reply)?;
        tracing::debug!(resource = %res, key = %key, rv, "object deleted");
        Ok(with_rv(parse_json(&okey, &json)?, rv))
    }

    /// The resource's current resourceVersion in Valkey.
    pub async fn current_rv(&self, res: ResourceKey) -> Result<u64, StorageError> {
        let k = &self.keys(res).rv;
        let cmd = redis::cmd("GET").arg(k).clone();
        let raw: Option<String> = self
            .once_more_on_a_dropped_connection("current_rv", |mut c| {
                let cmd = &cmd;
                async move { cmd.query_async(&mut c).await }
            })
            .await?;
        raw.map_or(Ok(0), |s| parse_u64(k, &s))
    }
}

/// Logs in once and sends `PING`, so that wrong credentials fail the start at once with a
/// clear error. A Valkey that cannot be reached (yet) is left to the connection manager,
/// which retries.
async fn check_login(client: &redis::Client, user: &str) -> Result<(), StorageError> {
    let config = AsyncConnectionConfig::new()
        .set_connection_timeout(Some(CONNECT_TIMEOUT))
        .set_response_timeout(Some(RESPONSE_TIMEOUT));
    let mut conn = match client
        .get_multiplexed_async_connection_with_config(&config)
        .await
    {
        Ok(c) => c,
        Err(e) => {
            return match classify(e, user) {
                StorageError::Backend(_) => Ok(()),
                refused => Err(refused),
            };
        }
    };
    redis::cmd("PING")
        .exec_async(&mut conn)
        .await
        .map_err(|e| classify(e, user))
}

/// Tells refused logins ([`StorageError::Unauthenticated`]) and missing ACL permissions
/// ([`StorageError::Forbidden`]) from other failures.
fn classify(e: redis::RedisError, user: &str) -> StorageError {
    if e.kind() == redis::ErrorKind::AuthenticationFailed {
        return StorageError::Unauthenticated {
            reason: format!(
                "the password of user {user} was refused (wrong password, unknown user or \
                 disabled user): {e}"
            ),
        };
    }
    match e.code() {
        Some("NOAUTH") => StorageError::Unauthenticated {
            reason: format!("Valkey requires a password and none was given: {e}"),
        },
        Some("WRONGPASS") => StorageError::Unauthenticated {
            reason: format!("the password of user {user} was refused: {e}"),
        },
        Some("NOPERM") => StorageError::Forbidden {
            user: user.to_string(),
            reason: e.to_string(),
        },
        _ => StorageError::Backend(e),
    }
}

/// The whole state of one resource as `(rv, [(member, stored value)])`, read atomically.
async fn load_raw<C: redis::aio::ConnectionLike>(
    conn: &mut C,
    keys: &Keys,
) -> Result<(u64, Vec<(String, String)>), StorageError> {
    let mut inv = LOAD.prepare_invoke();
    inv.key(&keys.rv).key(&keys.all).arg(&keys.object_prefix);
    let reply: Vec<String> = inv.invoke_async(conn).await?;
    let mut it = reply.into_iter();
    let Some(rv) = it.next() else {
        return Err(StorageError::Corrupt {
            key: keys.all.clone(),
            reason: "empty load reply".into(),
        });
    };
    let rv = parse_u64(&keys.rv, &rv)?;
    let mut items = Vec::new();
    while let (Some(m), Some(v)) = (it.next(), it.next()) {
        items.push((m, v));
    }
    Ok((rv, items))
}

/// Loads the state of one resource and its retained history (entries <= the state's rv).
async fn load<C: redis::aio::ConnectionLike>(
    conn: &mut C,
    res: ResourceKey,
    keys: &Keys,
    history: usize,
) -> Result<Loaded, StorageError> {
    let (rv, raw) = load_raw(conn, keys).await?;
    let mut objects = Vec::with_capacity(raw.len());
    for (member, value) in raw {
        let okey = format!("{}{member}", keys.object_prefix);
        match (member_key(&okey, &member), parse_stored(&okey, &value)) {
            (Ok(k), Ok(v)) => objects.push((k, v)),
            (Err(e), _) | (_, Err(e)) => {
                tracing::error!(resource = %res, key = %okey, error = %e, "skipping corrupt object");
            }
        }
    }
    let reply: StreamRangeReply = redis::cmd("XREVRANGE")
        .arg(&keys.log)
        .arg(format!("{rv}-0"))
        .arg("-")
        .arg("COUNT")
        .arg(history.max(1))
        .query_async(conn)
        .await?;
    let mut events = Vec::with_capacity(reply.ids.len());
    for entry in reply.ids.iter().rev() {
        match parse_entry(&keys.log, entry) {
            Ok(ev) => events.push(ev),
            // The cache keeps only the contiguous tail of the history, so a skipped entry
            // just shortens it.
            Err(e) => tracing::error!(resource = %res, id = %entry.id, error = %e,
                "skipping corrupt stream entry"),
        }
    }
    Ok(Loaded {
        rv,
        objects,
        history: events,
    })
}

/// Follows every resource stream and keeps the caches current. See the module docs.
struct Feed {
    client: redis::Client,
    conn: Option<MultiplexedConnection>,
    resources: Vec<(ResourceKey, Arc<Keys>, Arc<WatchCache>)>,
    history: usize,
    last_check: Instant,
}

impl Feed {
    async fn run(mut self) {
        let mut backoff = BACKOFF_MIN;
        let mut failures = 0u32;
        loop {
            match self.step().await {
                Ok(()) => {
                    if failures > 0 {
                        tracing::info!(failures, "watch feed recovered");
                    }
                    backoff = BACKOFF_MIN;
                    failures = 0;
                }
                Err(e) => {
                    failures += 1;
                    tracing::warn!(error = %e, failures, backoff_ms = backoff.as_millis() as u64,
                        "watch feed failed; reconnecting");
                    self.conn = None;
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(BACKOFF_MAX);
                }
            }
        }
    }

    /// Connects if needed, checks for data loss when due, and applies one `XREAD` batch.
    async fn step(&mut self) -> Result<(), StorageError> {
        let mut conn = match &self.conn {
            Some(c) => c.clone(),
            None => {
                let c = self
                    .client
                    .get_multiplexed_async_connection_with_config(
                        &AsyncConnectionConfig::new()
                            .set_response_timeout(Some(BLOCK + RESPONSE_TIMEOUT)),
                    )
                    .await?;
                self.conn = Some(c.clone());
                // After a reconnect, always check: Valkey may have restarted without its data.
                self.check(&mut c.clone()).await?;
                c
            }
        };
        if self.last_check.elapsed() >= CHECK_INTERVAL {
            self.check(&mut conn).await?;
        }
        let mut cmd = redis::cmd("XREAD");
        cmd.arg("COUNT")
            .arg(READ_COUNT)
            .arg("BLOCK")
            .arg(BLOCK.as_millis() as u64)
            .arg("STREAMS");
        for (_, keys, _) in &self.resources {
            cmd.arg(&keys.log);
        }
        for (_, _, cache) in &self.resources {
            cmd.arg(format!("{}-0", cache.rv()));
        }
        let reply: Option<StreamReadReply> = cmd.query_async(&mut conn).await?;
        for sk in reply.map(|r| r.keys).unwrap_or_default() {
            let Some(i) = self.resources.iter().position(|(_, k, _)| k.log == sk.key) else {
                continue;
            };
            let (res, keys, cache) = &self.resources[i];
            let mut events = Vec::with_capacity(sk.ids.len());
            for entry in &sk.ids {
                match parse_entry(&keys.log, entry) {
                    Ok(ev) => events.push(ev),
                    // Leaves a gap, which makes `apply` fail and the cache reload below.
                    Err(e) => tracing::error!(resource = %res, id = %entry.id, error = %e,
                        "skipping corrupt stream entry"),
                }
            }
            if let Err(e) = cache.apply(events) {
                tracing::warn!(resource = %res, error = %e, "watch cache out of step with the stream; reloading");
                self.reload(i, &mut conn).await?;
            }
        }
        Ok(())
    }

    /// Reloads every cache whose rv is ahead of its counter (Valkey lost data).
    async fn check(&mut self, conn: &mut MultiplexedConnection) -> Result<(), StorageError> {
        for i in 0..self.resources.len() {
            let (res, keys, cache) = &self.resources[i];
            let raw: Option<String> = redis::cmd("GET").arg(&keys.rv).query_async(conn).await?;
            let current = raw.map_or(Ok(0), |s| parse_u64(&keys.rv, &s))?;
            if current < cache.rv() {
                tracing::warn!(resource = %res, valkey_rv = current, cache_rv = cache.rv(),
                    "Valkey is behind the watch cache (data lost); reloading");
                self.reload(i, conn).await?;
            }
        }
        self.last_check = Instant::now();
        Ok(())
    }

    async fn reload(&self, i: usize, conn: &mut MultiplexedConnection) -> Result<(), StorageError> {
        let (res, keys, cache) = &self.resources[i];
        let loaded = load(conn, *res, keys, self.history).await?;
        cache.reset(loaded);
        Ok(())
    }
}

fn parse_entry(log: &str, entry: &StreamId) -> Result<StreamEvent, StorageError> {
    let corrupt = |reason: &str| StorageError::Corrupt {
        key: format!("{log} {}", entry.id),
        reason: reason.to_string(),
    };
    let rv = entry
        .id
        .strip_suffix("-0")
        .and_then(|s| s.parse::<u64>().ok())
        .ok_or_else(|| corrupt("entry ID is not <rv>-0"))?;
    let kind = entry
        .get::<String>("t")
        .and_then(|t| EventType::parse(&t))
        .ok_or_else(|| corrupt("bad or missing event type `t`"))?;
    let key = entry
        .get::<String>("k")
        .and_then(|k| ObjectKey::from_member(&k))
        .ok_or_else(|| corrupt("bad or missing key `k`"))?;
    let json = entry
        .get::<String>("o")
        .ok_or_else(|| corrupt("missing object `o`"))?;
    let object = serde_json::from_str(&json).map_err(|e| corrupt(&e.to_string()))?;
    Ok(StreamEvent {
        rv,
        kind,
        key,
        object: Arc::new(with_rv(object, rv)),
    })
}

/// Parses a stored `"<rv>|<json>"` value into the object with its resourceVersion.
fn parse_stored(key: &str, raw: &str) -> Result<Value, StorageError> {
    let Some((rv, json)) = raw.split_once('|') else {
        return Err(StorageError::Corrupt {
            key: key.to_string(),
            reason: "missing `<rv>|` prefix".into(),
        });
    };
    let rv = parse_u64(key, rv)?;
    Ok(with_rv(parse_json(key, json)?, rv))
}

fn parse_json(key: &str, json: &str) -> Result<Value, StorageError> {
    serde_json::from_str(json).map_err(|e| StorageError::Corrupt {
        key: key.to_string(),
        reason: e.to_string(),
    })
}

fn parse_u64(key: &str, s: &str) -> Result<u64, StorageError> {
    s.parse().map_err(|_| StorageError::Corrupt {
        key: key.to_string(),
        reason: format!("invalid resourceVersion {s:?}"),
    })
}

fn parse_rv(key: &str, s: Option<&String>) -> Result<u64, StorageError> {
    parse_u64(key, s.map_or("", String::as_str))
}

fn member_key(key: &str, member: &str) -> Result<ObjectKey, StorageError> {
    ObjectKey::from_member(member).ok_or_else(|| StorageError::Corrupt {
        key: key.to_string(),
        reason: format!("invalid member {member:?}"),
    })
}

fn bad_reply(key: &str, reply: &[String]) -> StorageError {
    StorageError::Corrupt {
        key: key.to_string(),
        reason: format!("unexpected script reply {reply:?}"),
    }
}

/// Maps the reply of the update and delete scripts to the new rv.
fn cas_reply(
    okey: &str,
    key: &ObjectKey,
    expected: u64,
    reply: &[String],
) -> Result<u64, StorageError> {
    match reply.first().map(String::as_str) {
        Some("ok") => parse_rv(okey, reply.get(1)),
        Some("notfound") => Err(StorageError::NotFound { key: key.clone() }),
        Some("conflict") => Err(StorageError::Conflict {
            key: key.clone(),
            expected,
            current: parse_rv(okey, reply.get(1))?,
        }),
        Some("corrupt") => Err(StorageError::Corrupt {
            key: okey.to_string(),
            reason: "missing `<rv>|` prefix".into(),
        }),
        _ => Err(bad_reply(okey, reply)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_share_one_hash_tag() {
        let k = Keys::new(
            "substrate",
            ResourceKey {
                group: "substrate.ate.dev",
                resource: "actors",
            },
        );
        assert_eq!(k.rv, "substrate:{substrate.ate.dev/actors}:rv");
        assert_eq!(
            k.object(&ObjectKey::new("ns", "a")),
            "substrate:{substrate.ate.dev/actors}:o:ns/a"
        );
        assert_eq!(
            k.term("l:app=web"),
            "substrate:{substrate.ate.dev/actors}:i:l:app=web"
        );
        for key in [&k.rv, &k.all, &k.log] {
            assert!(key.contains("{substrate.ate.dev/actors}"));
        }
    }

    #[tokio::test]
    async fn feed_reloads_when_the_stream_was_trimmed_past_the_cache() {
        const RES: ResourceKey = ResourceKey {
            group: "test.dev",
            resource: "things",
        };
        let server = crate::testing::ValkeyServer::start();
        let client = server.client();
        let mut raw = client
            .get_multiplexed_async_connection()
            .await
            .expect("raw connection");
        // Small stream nodes so that `MAXLEN ~` trims at a fine granularity.
        redis::cmd("CONFIG")
            .arg("SET")
            .arg("stream-node-max-entries")
            .arg(2)
            .exec_async(&mut raw)
            .await
            .expect("config");
        let opts = StoreOptions {
            log_max_len: 5,
            ..Default::default()
        };
        let store = Store::connect(&server.url(), opts, &[RES])
            .await
            .expect("connect");
        let k = ObjectKey::new("ns", "a");
        let mut a = store
            .create(RES, &k, &serde_json::json!({"n": 0}), &[])
            .await
            .expect("create");

        // A second cache whose feed is "down" (driven by hand) while the writes go on.
        let keys = Arc::new(Keys::new("substrate", RES));
        let loaded = load(&mut raw, RES, &keys, 100).await.expect("load");
        let cache = Arc::new(WatchCache::new(RES, 100, loaded));
        let mut w = cache.watch_from(1).expect("watch");
        let mut feed = Feed {
            client,
            conn: None,
            resources: vec![(RES, keys, cache.clone())],
            history: 100,
            last_check: Instant::now(),
        };
        for n in 1..=30 {
            let rv = a["metadata"]["resourceVersion"]
                .as_str()
                .and_then(|s| s.parse().ok())
                .expect("rv");
            a = store
                .update(RES, &k, rv, &serde_json::json!({"n": n}), &[], &[])
                .await
                .expect("update");
        }
        let len: u64 = redis::cmd("XLEN")
            .arg(&feed.resources[0].1.log)
            .query_async(&mut raw)
            .await
            .expect("xlen");
        assert!(len < 30, "the stream was trimmed (len {len})");

        feed.step().await.expect("step");
        assert_eq!(cache.epoch(), 1, "reloaded");
        assert_eq!(cache.rv(), 31);
        assert_eq!(cache.oldest_rv(), 31 - len);
        assert_eq!(cache.get(&k).as_deref(), Some(&a));
        assert!(matches!(w.next().await, Err(StorageError::Expired)));

        // Caught up: the next write is applied without another reset.
        store
            .update(RES, &k, 31, &serde_json::json!({"n": 31}), &[], &[])
            .await
            .expect("update");
        while cache.rv() < 32 {
            feed.step().await.expect("step");
        }
        assert_eq!(cache.epoch(), 1);
    }

    #[test]
    fn stored_values_parse() {
        let v = parse_stored("k", r#"12|{"metadata":{"name":"a"}}"#).expect("parse");
        assert_eq!(v["metadata"]["resourceVersion"], "12");
        assert!(matches!(
            parse_stored("k", "{}"),
            Err(StorageError::Corrupt { .. })
        ));
        assert!(matches!(
            parse_stored("k", "x|{}"),
            Err(StorageError::Corrupt { .. })
        ));
    }
}
