//! Watch: a stream of `{"type": ..., "object": ...}` lines served from the in-memory watch
//! cache. Supports synthetic ADDED events for `resourceVersion` ""/"0", resuming from any
//! resourceVersion still held (410 Expired otherwise), BOOKMARKs, `sendInitialEvents`, selector
//! transitions (an object that stops matching is reported DELETED), and Table or
//! PartialObjectMetadata output.

use std::borrow::Cow;
use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::StreamBody;
use hyper::body::Frame;
use serde_json::{Value, json};
use tokio::sync::mpsc;

use crds::resources::ResourceInfo;

use crate::negotiate::Output;
use crate::registry::{Registry, Selectors, rkey};
use crate::request::{ListOptions, RvMatch};
use crate::status::ApiError;
use crate::storage::{EventType, StorageError, WatchEvent, Watcher};
use crate::table;

/// How often an idle watch that allows bookmarks gets one.
const BOOKMARK_EVERY: Duration = Duration::from_secs(10);
/// How long a watch from a resourceVersion ahead of the cache waits for it (kube: 3 s).
const RV_WAIT: Duration = Duration::from_secs(3);

/// What to watch.
pub struct WatchRequest {
    pub res: &'static ResourceInfo,
    pub namespace: Option<String>,
    pub name: Option<String>,
    pub selectors: Selectors,
    pub opts: ListOptions,
    pub output: Output,
    /// How objects are shown to this watcher.
    pub view: View,
    /// Atespaces only: the ones this user may see ([`crate::tenancy`]); `None`: all.
    pub filter: Option<crate::tenancy::AtespaceFilter>,
}

/// How a watcher sees the objects of its resource.
#[derive(Clone, Copy, Debug)]
pub enum View {
    /// As stored.
    Native,
    /// Standalone: atespaces shown as core `v1` `Namespace`s (`GET /api/v1/namespaces?watch`),
    /// through this function (the same one the namespace list and get use).
    CoreNamespaces(fn(&Value) -> Value),
}

/// A streaming response body.
pub type WatchBody =
    StreamBody<tokio_stream::wrappers::ReceiverStream<Result<Frame<Bytes>, Infallible>>>;

struct Encoder {
    res: &'static ResourceInfo,
    output: Output,
    view: View,
    columns_sent: bool,
}

impl Encoder {
    fn new(req: &WatchRequest) -> Self {
        Encoder {
            res: req.res,
            output: req.output,
            view: req.view,
            columns_sent: false,
        }
    }

    fn event(&mut self, kind: &str, obj: &Value) -> Bytes {
        if let View::CoreNamespaces(as_namespace) = self.view {
            // Namespaces are served as JSON objects only, as their list is.
            let mut line = serde_json::to_vec(&json!({"type": kind, "object": as_namespace(obj)}))
                .unwrap_or_default();
            line.push(b'\n');
            return Bytes::from(line);
        }
        let object = match self.output {
            Output::Table(include) => {
                let t = table::table(
                    self.res,
                    &[obj],
                    include,
                    json!({"resourceVersion": rv_str(obj)}),
                    !self.columns_sent,
                    jiff::Timestamp::now(),
                );
                self.columns_sent = true;
                t
            }
            Output::PartialMetadata => table::partial_object_metadata(obj),
            Output::Json | Output::Yaml => obj.clone(),
        };
        let mut line =
            serde_json::to_vec(&json!({"type": kind, "object": object})).unwrap_or_default();
        line.push(b'\n');
        Bytes::from(line)
    }

    /// The event line for a store event shown as stored: JSON output of the native view
    /// reuses the event's object encoded once for every watcher ([`WatchEvent::object_json`]);
    /// other outputs are encoded per watcher by [`Encoder::event`].
    fn store_event(&mut self, kind: &str, ev: &WatchEvent) -> Bytes {
        if !matches!(
            (self.view, self.output),
            (View::Native, Output::Json | Output::Yaml)
        ) {
            return self.event(kind, &ev.object);
        }
        let object = ev.object_json();
        let mut line = Vec::with_capacity(object.len() + kind.len() + 23);
        line.extend_from_slice(b"{\"type\":\"");
        line.extend_from_slice(kind.as_bytes());
        line.extend_from_slice(b"\",\"object\":");
        line.extend_from_slice(object);
        line.extend_from_slice(b"}\n");
        Bytes::from(line)
    }

    fn bookmark(&self, rv: u64, initial_end: bool) -> Option<Bytes> {
        let mut meta = json!({"resourceVersion": rv.to_string(), "creationTimestamp": null});
        if initial_end {
            meta["annotations"] = json!({"k8s.io/initial-events-end": "true"});
        }
        let object = match (self.view, self.output) {
            (View::CoreNamespaces(_), _) => {
                json!({"kind": "Namespace", "apiVersion": "v1", "metadata": meta})
            }
            (_, Output::Table(_)) => return None,
            (_, Output::PartialMetadata) => {
                json!({"kind": "PartialObjectMetadata", "apiVersion": "meta.k8s.io/v1", "metadata": meta})
            }
            _ => {
                json!({"kind": self.res.kind, "apiVersion": self.res.api_version(), "metadata": meta})
            }
        };
        let mut line =
            serde_json::to_vec(&json!({"type": "BOOKMARK", "object": object})).unwrap_or_default();
        line.push(b'\n');
        Some(Bytes::from(line))
    }

    fn error(&self, e: &ApiError) -> Bytes {
        let mut line = serde_json::to_vec(&json!({"type": "ERROR", "object": e.to_status()}))
            .unwrap_or_default();
        line.push(b'\n');
        Bytes::from(line)
    }
}

fn rv_str(obj: &Value) -> String {
    obj.pointer("/metadata/resourceVersion")
        .and_then(Value::as_str)
        .unwrap_or("")
        .to_string()
}

impl WatchRequest {
    fn in_scope(&self, obj: &Value) -> bool {
        let meta = obj.get("metadata");
        let field = |f: &str| {
            meta.and_then(|m| m.get(f))
                .and_then(Value::as_str)
                .unwrap_or("")
        };
        if let Some(ns) = &self.namespace
            && field("namespace") != ns
        {
            return false;
        }
        if let Some(name) = &self.name
            && field("name") != name
        {
            return false;
        }
        self.selectors.matches(obj)
    }

    /// The event this watcher should see for a store event, if any.
    fn translate<'a>(&self, ev: &'a WatchEvent) -> Option<(&'static str, Cow<'a, Value>)> {
        let now = self.in_scope(&ev.object);
        match ev.kind {
            EventType::Added => now.then_some(("ADDED", Cow::Borrowed(ev.object.as_ref()))),
            EventType::Deleted => now.then_some(("DELETED", Cow::Borrowed(ev.object.as_ref()))),
            EventType::Modified => {
                let before = ev.prev.as_ref().map(|p| self.in_scope(p));
                match (before, now) {
                    (Some(true), true) | (None, true) => {
                        Some(("MODIFIED", Cow::Borrowed(ev.object.as_ref())))
                    }
                    (Some(false), true) => Some(("ADDED", Cow::Borrowed(ev.object.as_ref()))),
                    (Some(true), false) => {
                        // Left the selection: report the previous state at this resourceVersion.
                        let mut prev = ev
                            .prev
                            .as_ref()
                            .map(|p| p.as_ref().clone())
                            .unwrap_or(Value::Null);
                        if let Some(m) = prev.get_mut("metadata").and_then(Value::as_object_mut) {
                            m.insert("resourceVersion".into(), json!(ev.rv.to_string()));
                        }
                        Some(("DELETED", Cow::Owned(prev)))
                    }
                    _ => None,
                }
            }
        }
    }
}

/// Validates the request and starts the stream. Errors before the first byte are returned as
/// ordinary `Status` responses.
pub async fn start(registry: &Registry, req: WatchRequest) -> Result<WatchBody, ApiError> {
    let cache = registry.store.cache(rkey(req.res)).clone();
    let o = &req.opts;
    let requested_rv = match o.resource_version.as_deref() {
        None => None,
        Some(s) => Some(s.parse::<u64>().map_err(|_| {
            ApiError::bad_request(format!(
                "resourceVersion: Invalid value: {s:?}: must be a decimal number"
            ))
        })?),
    };
    if let Some(sie) = o.send_initial_events {
        let mut errs = Vec::new();
        if o.rv_match != Some(RvMatch::NotOlderThan) {
            errs.push("sendInitialEvents: Forbidden: sendInitialEvents is forbidden for watch unless resourceVersionMatch is set to NotOlderThan");
        }
        if sie && !o.allow_bookmarks {
            errs.push("allowWatchBookmarks: Forbidden: allowWatchBookmarks must be set to true when sendInitialEvents is set");
        }
        if !errs.is_empty() {
            return Err(ApiError::new(
                422,
                "Invalid",
                format!("{} is invalid: {}", req.res.kind, errs.join(", ")),
            ));
        }
    } else if o.rv_match.is_some() {
        return Err(ApiError::new(
            422,
            "Invalid",
            "resourceVersionMatch: Forbidden: resourceVersionMatch is forbidden for watch unless sendInitialEvents is provided",
        ));
    }
    let send_initial = match (o.send_initial_events, requested_rv) {
        (Some(s), _) => s,
        (None, None) | (None, Some(0)) => true,
        (None, Some(_)) => false,
    };
    let (initial, mut watcher, snapshot_rv): (Vec<Arc<Value>>, Watcher, u64) =
        if send_initial || requested_rv.is_none_or(|rv| rv == 0) {
            if let Some(rv) = requested_rv.filter(|rv| *rv > 0) {
                cache
                    .wait_for_rv(rv, RV_WAIT)
                    .await
                    .map_err(|e| ApiError::from_storage(req.res, "", e))?;
            }
            let (rv, objs, w) = cache.watch_with_snapshot(req.namespace.as_deref());
            (if send_initial { objs } else { Vec::new() }, w, rv)
        } else {
            let rv = requested_rv.unwrap_or(0);
            // A resourceVersion the cache has not reached: wait a little for it (it may be a
            // write still on its way through the feed), then answer 504 as kube-apiserver's
            // watch cache does, instead of a stream that waits forever.
            if rv > cache.rv() {
                cache
                    .wait_for_rv(rv, RV_WAIT)
                    .await
                    .map_err(|e| ApiError::from_storage(req.res, "", e))?;
            }
            match cache.watch_from(rv) {
                Ok(w) => (Vec::new(), w, rv),
                Err(StorageError::TooOld { requested, oldest }) => {
                    // As kube-apiserver: a 200 stream carrying one ERROR event with 410 Expired.
                    let (tx, rx) = mpsc::channel(1);
                    let enc = Encoder::new(&req);
                    let msg =
                        ApiError::gone(format!("too old resource version: {requested} ({oldest})"));
                    let _ = tx.try_send(Ok(Frame::data(enc.error(&msg))));
                    return Ok(StreamBody::new(
                        tokio_stream::wrappers::ReceiverStream::new(rx),
                    ));
                }
                Err(e) => return Err(ApiError::from_storage(req.res, "", e)),
            }
        };
    // A filtered watch that starts after a list (from its resourceVersion) remembers what
    // that list showed: the atespaces visible now.
    let seed: Vec<Arc<Value>> = if req.filter.is_some() && initial.is_empty() {
        cache.snapshot(None).1
    } else {
        Vec::new()
    };
    let (tx, rx) = mpsc::channel::<Result<Frame<Bytes>, Infallible>>(64);
    let timeout = match o.timeout_seconds {
        // kube-apiserver allows a negative timeout: its timer fires at once and the watch
        // ends. Here it ends before any event, deterministically.
        Some(t) if t < 0 => {
            drop(tx);
            return Ok(StreamBody::new(
                tokio_stream::wrappers::ReceiverStream::new(rx),
            ));
        }
        Some(t) if t > 0 => Duration::from_secs(t.unsigned_abs()),
        // Unset or 0: between 30 and 60 minutes, as kube's --min-request-timeout default.
        _ => Duration::from_secs(1800 + rand::random::<u64>() % 1800),
    };
    tokio::spawn(async move {
        let mut enc = Encoder::new(&req);
        let send = |b: Bytes| {
            let tx = tx.clone();
            async move { tx.send(Ok(Frame::data(b))).await.is_ok() }
        };
        let mut last_rv = snapshot_rv;
        let mut shown = crate::tenancy::Shown::default();
        if let Some(f) = &req.filter {
            for obj in seed.iter().filter(|o| req.in_scope(o)) {
                if f.visible(obj).await {
                    shown.insert(obj);
                }
            }
        }
        for obj in initial.iter().filter(|o| req.in_scope(o)) {
            last_rv = last_rv.max(crate::registry::rv_of(obj));
            if let Some(f) = &req.filter {
                if !f.visible(obj).await {
                    continue;
                }
                shown.insert(obj);
            }
            if !send(enc.event("ADDED", obj)).await {
                return;
            }
        }
        if req.opts.send_initial_events == Some(true)
            && let Some(b) = enc.bookmark(snapshot_rv, true)
            && !send(b).await
        {
            return;
        }
        let deadline = tokio::time::sleep(timeout);
        tokio::pin!(deadline);
        let mut ticker = tokio::time::interval(BOOKMARK_EVERY);
        ticker.reset();
        let mut last_bookmark = last_rv;
        loop {
            tokio::select! {
                ev = watcher.next() => match ev {
                    Ok(ev) => {
                        last_rv = ev.rv;
                        let out = match (req.translate(&ev), &req.filter) {
                            (Some((kind, obj)), Some(f)) => {
                                shown.event(f, kind, &obj).await.map(|k| (k, obj))
                            }
                            (out, None) => out,
                            (None, Some(_)) => None,
                        };
                        let line = match out {
                            Some((kind, Cow::Borrowed(_))) => enc.store_event(kind, &ev),
                            Some((kind, obj)) => enc.event(kind, &obj),
                            None => continue,
                        };
                        if !send(line).await {
                            return;
                        }
                    }
                    Err(e) => {
                        let _ = send(enc.error(&ApiError::from_storage(req.res, "", e))).await;
                        return;
                    }
                },
                _ = ticker.tick(), if req.opts.allow_bookmarks => {
                    if last_rv > last_bookmark || last_bookmark == 0 {
                        last_bookmark = last_rv;
                        if let Some(b) = enc.bookmark(last_rv, false)
                            && !send(b).await
                        {
                            return;
                        }
                    }
                }
                _ = &mut deadline => return,
                _ = tx.closed() => return,
            }
        }
    });
    Ok(StreamBody::new(
        tokio_stream::wrappers::ReceiverStream::new(rx),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::storage::{EventType, ObjectKey};

    fn request(output: Output) -> WatchRequest {
        let res = &crds::resources::ACTORS;
        WatchRequest {
            res,
            namespace: None,
            name: None,
            selectors: Selectors::parse(res, &ListOptions::default()).expect("no selectors"),
            opts: ListOptions::default(),
            output,
            view: View::Native,
            filter: None,
        }
    }

    #[test]
    fn a_store_event_is_encoded_once_and_reads_as_a_per_watcher_encoding_would() {
        let obj = json!({
            "apiVersion": "substrate.ate.dev/v1alpha1", "kind": "Actor",
            "metadata": {"name": "a\"b", "namespace": "t", "resourceVersion": "7",
                         "labels": {"z": "1", "a": "ü"}},
            "spec": {"template": {"name": "counter"}},
        });
        let ev = WatchEvent::new(
            7,
            EventType::Modified,
            ObjectKey::new("t", "a\"b"),
            Arc::new(obj.clone()),
            None,
        );
        let req = request(Output::Json);
        let (mut a, mut b) = (Encoder::new(&req), Encoder::new(&req));
        let shared = a.store_event("MODIFIED", &ev);
        assert_eq!(shared, a.event("MODIFIED", &obj), "byte for byte");
        let again = b.store_event("DELETED", &ev);
        let line: Value = serde_json::from_slice(&again).unwrap();
        assert_eq!(line, json!({"type": "DELETED", "object": obj}));
        assert!(again.ends_with(b"}\n"));
        // One encoding of the object, shared by both watchers.
        assert!(std::ptr::eq(ev.object_json(), ev.object_json()));
        assert_eq!(ev.object_json().as_ref(), serde_json::to_vec(&obj).unwrap());

        // Other outputs are encoded per watcher, from the object.
        let meta = request(Output::PartialMetadata);
        let mut m = Encoder::new(&meta);
        let line: Value = serde_json::from_slice(&m.store_event("ADDED", &ev)).unwrap();
        assert_eq!(line["object"]["kind"], "PartialObjectMetadata", "{line}");
    }
}
