//! Prometheus metrics of the router, served as text on the admin listener's `/metrics`.

use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

type Labels = [(&'static str, String); 1];

/// All router metrics (cheap to share behind an `Arc`).
pub struct Metrics {
    registry: Registry,
    /// `substrate_router_requests_total{code}`.
    pub requests: Family<Labels, Counter>,
    /// `substrate_router_resumes_total`: resume POSTs sent to the apiserver.
    pub resumes: Counter,
    /// `substrate_router_wake_failures_total{reason}`.
    pub wake_failures: Family<Labels, Counter>,
    /// `substrate_router_request_duration_seconds`: until the response head.
    pub request_latency: Histogram,
    /// `substrate_router_wake_duration_seconds`: until a woken actor is ready.
    pub wake_latency: Histogram,
    /// `substrate_router_upstream_open_connections`: open upstream TCP connections (pooled ones too).
    pub upstream_connections: Gauge,
    /// `substrate_router_upstream_retries_total`: requests sent again on a new connection
    /// after a pooled one failed before answering.
    pub upstream_retries: Counter,
    /// `substrate_router_gateway_tunnels_total`: upstream connections opened through a node
    /// agent's worker gateway.
    pub gateway_tunnels: Counter,
    /// `substrate_router_gateway_failures_total`: worker gateways that refused a tunnel or
    /// could not be reached.
    pub gateway_failures: Counter,
    /// `substrate_router_open_exchanges`: requests in flight plus upgraded tunnels.
    pub open_exchanges: Gauge,
    /// `substrate_router_activity_patches_total`: lastActiveTime writes.
    pub activity_patches: Counter,
    /// `substrate_router_activity_sync_reports_total`: lastActiveTime writes a request waited
    /// for before it was forwarded (the router's record of the actor's activity was stale).
    pub activity_sync_reports: Counter,
    /// `substrate_router_fresh_lookups_total`: requests for an actor the apiserver had but
    /// the routing table did not yet (created a moment before).
    pub fresh_lookups: Counter,
    /// `substrate_router_access_denials_total{reason}`: requests refused by an atespace's
    /// `Authorized` HTTP access policy (`no_token`, `unauthenticated`, `forbidden`,
    /// `unavailable`).
    pub access_denials: Family<Labels, Counter>,
    /// `substrate_router_table_objects{kind}`: objects in the routing table, set when
    /// `/metrics` is read ([`Metrics::set_table_sizes`]).
    pub table_objects: Family<Labels, Gauge>,
    /// `requests`' counters for codes 100..=599, filled on first use.
    by_code: Box<[std::sync::OnceLock<Counter>]>,
}

impl Default for Metrics {
    fn default() -> Self {
        let mut registry = Registry::with_prefix("substrate_router");
        let requests = Family::<Labels, Counter>::default();
        registry.register(
            "requests",
            "Requests answered, by HTTP status code",
            requests.clone(),
        );
        let resumes = Counter::default();
        registry.register(
            "resumes",
            "Resume requests sent to the apiserver (one per wake, shared by concurrent requests)",
            resumes.clone(),
        );
        let wake_failures = Family::<Labels, Counter>::default();
        registry.register(
            "wake_failures",
            "Wakes that did not end with a ready actor, by reason",
            wake_failures.clone(),
        );
        let request_latency = Histogram::new(exponential_buckets(0.0001, 2.0, 20));
        registry.register(
            "request_duration_seconds",
            "Time from a request's arrival to its response head",
            request_latency.clone(),
        );
        let wake_latency = Histogram::new(exponential_buckets(0.01, 2.0, 14));
        registry.register(
            "wake_duration_seconds",
            "Time to wake a suspended actor until it is ready",
            wake_latency.clone(),
        );
        let upstream_connections = Gauge::default();
        registry.register(
            "upstream_open_connections",
            "Open TCP connections to actors, idle pooled ones included",
            upstream_connections.clone(),
        );
        let upstream_retries = Counter::default();
        registry.register(
            "upstream_retries",
            "Requests sent again on a new connection after a pooled one failed before answering (closed by the actor while idle)",
            upstream_retries.clone(),
        );
        let gateway_tunnels = Counter::default();
        registry.register(
            "gateway_tunnels",
            "Upstream connections opened through a node agent's worker gateway (CONNECT)",
            gateway_tunnels.clone(),
        );
        let gateway_failures = Counter::default();
        registry.register(
            "gateway_failures",
            "Worker gateways that refused a tunnel or could not be reached",
            gateway_failures.clone(),
        );
        let open_exchanges = Gauge::default();
        registry.register(
            "open_exchanges",
            "Requests in flight plus upgraded (WebSocket) tunnels",
            open_exchanges.clone(),
        );
        let fresh_lookups = Counter::default();
        registry.register(
            "fresh_lookups",
            "Requests for an actor the apiserver had and the routing table not yet (created a moment before)",
            fresh_lookups.clone(),
        );
        let activity_patches = Counter::default();
        registry.register(
            "activity_patches",
            "status.lastActiveTime merge patches sent",
            activity_patches.clone(),
        );
        let activity_sync_reports = Counter::default();
        registry.register(
            "activity_sync_reports",
            "status.lastActiveTime writes a request waited for before it was forwarded (less than half the actor's idle timeout was left on the recorded activity)",
            activity_sync_reports.clone(),
        );
        let access_denials = Family::<Labels, Counter>::default();
        registry.register(
            "access_denials",
            "Requests refused by an atespace's Authorized HTTP access policy, by reason",
            access_denials.clone(),
        );
        let table_objects = Family::<Labels, Gauge>::default();
        registry.register(
            "table_objects",
            "Objects in the routing table (the router's watch caches), by kind",
            table_objects.clone(),
        );
        Self {
            registry,
            requests,
            resumes,
            wake_failures,
            request_latency,
            wake_latency,
            upstream_connections,
            upstream_retries,
            gateway_tunnels,
            gateway_failures,
            open_exchanges,
            activity_patches,
            activity_sync_reports,
            fresh_lookups,
            access_denials,
            table_objects,
            by_code: (100..600).map(|_| std::sync::OnceLock::new()).collect(),
        }
    }
}

impl Metrics {
    pub fn request(&self, code: u16) {
        // The family's counter for a code, looked up (hashing, a lock, an allocation) once.
        let counter = usize::from(code)
            .checked_sub(100)
            .and_then(|i| self.by_code.get(i))
            .map(|slot| {
                slot.get_or_init(|| {
                    self.requests
                        .get_or_create(&[("code", code.to_string())])
                        .clone()
                })
            });
        match counter {
            Some(c) => {
                c.inc();
            }
            None => {
                self.requests
                    .get_or_create(&[("code", code.to_string())])
                    .inc();
            }
        }
    }

    pub fn wake_failure(&self, reason: &'static str) {
        self.wake_failures
            .get_or_create(&[("reason", reason.to_string())])
            .inc();
    }

    pub fn access_denial(&self, reason: &'static str) {
        self.access_denials
            .get_or_create(&[("reason", reason.to_string())])
            .inc();
    }

    /// Sets `substrate_router_table_objects` (from [`crate::table::Table::sizes`]).
    pub fn set_table_sizes(&self, sizes: &[(&'static str, usize)]) {
        for (kind, n) in sizes {
            self.table_objects
                .get_or_create(&[("kind", (*kind).to_string())])
                .set(i64::try_from(*n).unwrap_or(i64::MAX));
        }
    }

    /// The Prometheus text exposition.
    pub fn encode(&self) -> String {
        let mut out = String::new();
        // Writing into a String cannot fail.
        let _ = prometheus_client::encoding::text::encode(&mut out, &self.registry);
        out
    }
}
