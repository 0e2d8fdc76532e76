//! The watch fan-out phase: many concurrent watches on one atespace's actors, then a series
//! of sequential merge patches of one actor, each carrying a sequence number annotation.
//! For every (write, watcher) pair the delivery latency is the time the watcher parsed the
//! event minus the time the write's request was sent (and, second figure, minus the time
//! the write's response arrived, clamped at 0).

use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use bytes::{Buf, Bytes, BytesMut};
use http::{Method, StatusCode};
use http_body_util::BodyExt;
use serde::Deserialize;
use tokio::sync::watch;

use crate::client::Client;
use crate::stats::{OpError, Recorded, expect};

/// The annotation carrying the write's sequence number.
pub const SEQ_ANNOTATION: &str = "bench.substrate.ate.dev/seq";

/// What to do.
pub struct Plan<'a> {
    /// Actors path of the atespace, e.g. `/apis/.../namespaces/x/actors`.
    pub actors_path: &'a str,
    /// The actor to patch.
    pub actor: &'a str,
    /// Query string of the patches (`?fieldValidation=...` or empty).
    pub query: &'a str,
    /// Watch from this resourceVersion (the actor's creation).
    pub resource_version: &'a str,
    pub watchers: usize,
    pub writes: usize,
    pub interval: Duration,
    /// How long to wait for the last deliveries after the last write.
    pub timeout: Duration,
}

/// What happened.
pub struct Report {
    /// The patches (request sent -> response read).
    pub writes: Recorded,
    /// Delivery latency from the write's request.
    pub from_send: Recorded,
    /// Delivery latency from the write's response (0 when the event came first).
    pub from_response: Recorded,
    pub watchers: usize,
    pub expected: usize,
    pub delivered: usize,
    pub duplicates: usize,
    /// Deliveries that were parsed before the write's response was read.
    pub before_response: usize,
    /// Watch streams that failed or ended early, by reason.
    pub watch_errors: Vec<String>,
}

#[derive(Deserialize)]
struct Event {
    #[serde(rename = "type")]
    kind: String,
    #[serde(default)]
    object: EventObject,
}

#[derive(Deserialize, Default)]
struct EventObject {
    #[serde(default)]
    metadata: EventMeta,
    #[serde(default)]
    message: Option<String>,
}

#[derive(Deserialize, Default)]
struct EventMeta {
    #[serde(default)]
    annotations: std::collections::HashMap<String, String>,
}

/// One watcher's view: when each sequence number was parsed.
struct Seen {
    at: Vec<Option<Instant>>,
    duplicates: usize,
    error: Option<String>,
}

async fn read_watch(
    mut body: hyper::body::Incoming,
    writes: usize,
    mut stop: watch::Receiver<bool>,
) -> Seen {
    let mut seen = Seen {
        at: vec![None; writes],
        duplicates: 0,
        error: None,
    };
    let mut got = 0usize;
    let mut buf = BytesMut::new();
    while got < writes {
        let frame = tokio::select! {
            f = body.frame() => f,
            _ = stop.changed() => break,
        };
        let data: Bytes = match frame {
            Some(Ok(f)) => match f.into_data() {
                Ok(d) => d,
                Err(_) => continue, // trailers
            },
            Some(Err(e)) => {
                seen.error = Some(format!("stream error: {e}"));
                break;
            }
            None => {
                seen.error = Some("stream ended".into());
                break;
            }
        };
        buf.extend_from_slice(&data);
        while let Some(nl) = buf.iter().position(|&b| b == b'\n') {
            let line = buf.split_to(nl + 1);
            let line = &line[..nl];
            if line.is_empty() {
                continue;
            }
            let ev: Event = match serde_json::from_slice(line) {
                Ok(ev) => ev,
                Err(e) => {
                    seen.error = Some(format!("unparsable event: {e}"));
                    continue;
                }
            };
            let now = Instant::now();
            if ev.kind == "ERROR" {
                seen.error = Some(format!(
                    "ERROR event: {}",
                    ev.object.message.unwrap_or_default()
                ));
                continue;
            }
            let Some(seq) = ev
                .object
                .metadata
                .annotations
                .get(SEQ_ANNOTATION)
                .and_then(|s| s.parse::<usize>().ok())
                .filter(|&s| s < writes)
            else {
                continue;
            };
            match seen.at[seq] {
                Some(_) => seen.duplicates += 1,
                None => {
                    seen.at[seq] = Some(now);
                    got += 1;
                }
            }
        }
        if buf.remaining() > 16 << 20 {
            seen.error = Some("line longer than 16 MiB".into());
            break;
        }
    }
    seen
}

/// Runs the phase. Fails only when the watches cannot be started.
pub async fn run(client: &Client, plan: &Plan<'_>) -> anyhow::Result<Report> {
    let watch_path = format!(
        "{}?watch=true&resourceVersion={}",
        plan.actors_path, plan.resource_version
    );
    // Open every watch and wait for its response headers: from then on the server has
    // registered the watcher, so no event of the writes below can be missed.
    let responses =
        futures::future::join_all((0..plan.watchers).map(|_| client.stream(&watch_path))).await;
    let (stop_tx, stop_rx) = watch::channel(false);
    let mut readers = Vec::with_capacity(plan.watchers);
    for (i, r) in responses.into_iter().enumerate() {
        let resp = r.with_context(|| format!("starting watch {i}"))?;
        if resp.status() != StatusCode::OK {
            let status = resp.status();
            let body = resp
                .into_body()
                .collect()
                .await
                .map(|b| b.to_bytes())
                .unwrap_or_default();
            bail!(
                "watch {i}: HTTP {status}: {}",
                String::from_utf8_lossy(&body)
                    .chars()
                    .take(300)
                    .collect::<String>()
            );
        }
        readers.push(tokio::spawn(read_watch(
            resp.into_body(),
            plan.writes,
            stop_rx.clone(),
        )));
    }

    let path = format!("{}/{}{}", plan.actors_path, plan.actor, plan.query);
    let mut sent = vec![None; plan.writes];
    let mut answered = vec![None; plan.writes];
    let mut writes = Recorded::default();
    let started = Instant::now();
    for seq in 0..plan.writes {
        let patch =
            serde_json::json!({"metadata": {"annotations": {SEQ_ANNOTATION: seq.to_string()}}});
        let t = Instant::now();
        let r = client
            .send(
                Method::PATCH,
                &path,
                Some("application/merge-patch+json"),
                Bytes::from(patch.to_string()),
            )
            .await;
        let done = Instant::now();
        writes.ops += 1;
        match r
            .map_err(|e| OpError::transport(&e))
            .and_then(|r| expect(r, StatusCode::OK))
        {
            Ok(_) => {
                sent[seq] = Some(t);
                answered[seq] = Some(done);
                writes.latencies.push(done - t);
            }
            Err(e) => writes.record_error(e),
        }
        tokio::time::sleep(plan.interval).await;
    }
    writes.elapsed = started.elapsed();
    writes.latencies.sort_unstable();

    // Wait for the readers to see every write, then stop the stragglers.
    let stopper = tokio::spawn({
        let timeout = plan.timeout;
        async move {
            tokio::time::sleep(timeout).await;
            let _ = stop_tx.send(true);
        }
    });
    let mut report = Report {
        writes,
        from_send: Recorded::default(),
        from_response: Recorded::default(),
        watchers: plan.watchers,
        // Failed writes are counted in `writes`; only the successful ones can be delivered.
        expected: plan.watchers * sent.iter().flatten().count(),
        delivered: 0,
        duplicates: 0,
        before_response: 0,
        watch_errors: Vec::new(),
    };
    let mut last = started;
    for (i, r) in readers.into_iter().enumerate() {
        let seen = match r.await {
            Ok(s) => s,
            Err(e) => {
                report
                    .watch_errors
                    .push(format!("watch {i}: reader panicked: {e}"));
                continue;
            }
        };
        if let Some(e) = seen.error {
            report.watch_errors.push(format!("watch {i}: {e}"));
        }
        report.duplicates += seen.duplicates;
        for (seq, at) in seen.at.iter().enumerate() {
            let (Some(at), Some(s), Some(a)) = (*at, sent[seq], answered[seq]) else {
                continue;
            };
            report.delivered += 1;
            last = last.max(at);
            report
                .from_send
                .latencies
                .push(at.saturating_duration_since(s));
            report
                .from_response
                .latencies
                .push(at.saturating_duration_since(a));
            if at < a {
                report.before_response += 1;
            }
        }
    }
    stopper.abort();
    // Every delivery counts as one "op"; the rate is deliveries per second of the run.
    for rec in [&mut report.from_send, &mut report.from_response] {
        rec.ops = report.expected;
        rec.elapsed = last.duration_since(started);
        rec.latencies.sort_unstable();
    }
    let missing = report.expected.saturating_sub(report.delivered);
    if missing > 0 {
        for rec in [&mut report.from_send, &mut report.from_response] {
            rec.errors.insert("not delivered".into(), missing as u64);
            rec.samples.insert(
                "not delivered".into(),
                format!(
                    "{missing} of {} (write, watcher) events never arrived",
                    report.expected
                ),
            );
        }
    }
    Ok(report)
}
