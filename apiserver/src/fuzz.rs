//! The bodies of the cargo-fuzz targets in `apiserver/fuzz/` (one function per target, each
//! taking the fuzzer's bytes), kept in the crate so the stable test
//! `apiserver/tests/fuzz_seeds.rs` replays every target's checked-in seeds through the very
//! same code: a target that stops compiling or starts failing on its seeds fails CI, without
//! a nightly toolchain.
//!
//! Each function decodes the input the way a request handler does and checks what must hold
//! whatever the input: no panic; a decoded value survives re-encoding; a merge patch of an
//! object leaves an object; a parsed selector prints as a selector that parses back to the
//! same one; a DELETE or POST of a namespaced resource's all-namespaces path is never a
//! collection write.

use serde_json::{Value, json};

use crds::resources::{self, ACTORS};

use crate::negotiate::{BodyFormat, PatchType};
use crate::registry::PatchBody;
use crate::request::{self, DeleteOptions, ListOptions, Query, Target, Verb, WriteOptions};
use crate::selector::{FieldSelector, LabelSelector};
use crate::{apply, decode};

/// The object patches and applies start from.
pub fn seed_actor() -> Value {
    json!({
        "apiVersion": "substrate.ate.dev/v1alpha1", "kind": "Actor",
        "metadata": {"name": "a", "namespace": "team-a", "uid": "u-1", "resourceVersion": "7",
            "labels": {"app": "counter", "tier": "web"}, "annotations": {"note": "x"}},
        "spec": {"template": {"name": "counter"}, "activation": "OnDemand", "idleTimeout": "5m"},
        "status": {"phase": "Running", "worker": {"name": "w-0", "address": "10.0.0.1"},
            "conditions": [{"type": "Ready", "status": "True", "reason": "Running",
                "message": "", "lastTransitionTime": "2026-01-01T00:00:00Z"}]}
    })
}

/// Splits `data` at its first NUL: (before, after); all of it and nothing without one.
fn split(data: &[u8]) -> (&[u8], &[u8]) {
    match data.iter().position(|b| *b == 0) {
        Some(i) => (&data[..i], &data[i + 1..]),
        None => (data, &[]),
    }
}

/// Create/update bodies: JSON and YAML object decoding, then the typed decoding and
/// validation of an actor.
pub fn object(data: &[u8]) {
    for format in [BodyFormat::Json, BodyFormat::Yaml] {
        let Ok(v) = decode::object(format, data) else {
            continue;
        };
        let text = serde_json::to_vec(&v).expect("a decoded body encodes as JSON");
        let again = decode::object(BodyFormat::Json, &text).expect("its JSON decodes");
        assert_eq!(again, v, "JSON round trip");
        if let Ok(a) = serde_json::from_value::<crds::substrate::Actor>(v) {
            let _ = crds::validation::validate_actor_spec(&a.spec);
            let _ = serde_json::to_value(&a).expect("a typed actor encodes");
        }
    }
}

/// PATCH bodies: a type byte (JSON patch, merge patch, strategic merge, apply), then the
/// patch; applied to [`seed_actor`] as the registry does.
pub fn patch(data: &[u8]) {
    let Some((&kind, body)) = data.split_first() else {
        return;
    };
    let ptype = match kind % 4 {
        0 => PatchType::Json,
        1 => PatchType::Merge,
        2 => PatchType::Strategic,
        _ => PatchType::Apply,
    };
    if ptype == PatchType::Apply {
        return apply_body(body);
    }
    let Ok(p) = decode::patch(ptype, "application/fuzz", body) else {
        return;
    };
    assert!(ptype != PatchType::Strategic, "strategic merge is refused");
    let mut target = seed_actor();
    match p {
        PatchBody::Json(p) => {
            let _ = json_patch::patch(&mut target, &p);
        }
        PatchBody::Merge(p) | PatchBody::Strategic(p) => {
            json_patch::merge(&mut target, &p);
            assert!(
                target.is_object(),
                "a merge patch of an object is an object"
            );
        }
    }
    let _ = serde_json::to_vec(&target).expect("a patched object encodes");
}

/// A server-side apply body over [`seed_actor`], as the field manager applies it.
fn apply_body(body: &[u8]) {
    let Ok(config) = decode::apply_config(body) else {
        return;
    };
    let schema = apply::schema::root(&ACTORS);
    let live = seed_actor();
    let Ok(mut managers) = apply::decode(&live) else {
        return;
    };
    let id = apply::ManagerId::new("fuzz", apply::Operation::Apply, None);
    let ignore = apply::ignored(None);
    if let Ok(merged) = apply::apply(
        schema,
        &live,
        &config,
        &mut managers,
        &id,
        "substrate.ate.dev/v1alpha1",
        false,
        &ignore,
    ) {
        let _ = serde_json::to_vec(&merged).expect("an applied object encodes");
        let _ = apply::encode(&managers);
    }
}

/// Label and field selectors: the first byte picks the resource whose fields a field
/// selector may name.
pub fn selector(data: &[u8]) {
    let Some((&pick, rest)) = data.split_first() else {
        return;
    };
    let Ok(s) = std::str::from_utf8(rest) else {
        return;
    };
    let obj = seed_actor();
    if let Ok(sel) = LabelSelector::parse(s) {
        let printed = sel.to_string();
        let again = LabelSelector::parse(&printed)
            .unwrap_or_else(|e| panic!("{s:?} printed as {printed:?}, which does not parse: {e}"));
        assert_eq!(again.to_string(), printed, "printing is stable");
        assert_eq!(again.matches_object(&obj), sel.matches_object(&obj));
        let _ = sel.index_terms();
    }
    let res = resources::ALL[usize::from(pick) % resources::ALL.len()];
    if let Ok(sel) = FieldSelector::parse(s, res) {
        let _ = sel.matches(&obj);
        let _ = sel.index_terms();
        let _ = (sel.name(), sel.namespace());
    }
}

/// Query options and the request path: `<method byte><path>?<query>` then, after a NUL, a
/// `DeleteOptions` body (its content type chosen by the method byte too).
pub fn query(data: &[u8]) {
    let Some((&m, rest)) = data.split_first() else {
        return;
    };
    let (target, body) = split(rest);
    let Ok(target) = std::str::from_utf8(target) else {
        return;
    };
    let (path, raw_query) = match target.split_once('?') {
        Some((p, q)) => (p, Some(q)),
        None => (target, None),
    };
    let q = Query::parse(raw_query);
    let _ = ListOptions::from_query(&q);
    for kind in ["CreateOptions", "UpdateOptions", "PatchOptions"] {
        let _ = WriteOptions::from_query(&q, kind);
    }
    let content_type = if m & 0x80 == 0 {
        Some("application/json")
    } else {
        Some("application/yaml")
    };
    let _ = DeleteOptions::parse(&q, content_type, body);
    let method = match m % 6 {
        0 => http::Method::GET,
        1 => http::Method::POST,
        2 => http::Method::PUT,
        3 => http::Method::PATCH,
        4 => http::Method::DELETE,
        _ => http::Method::HEAD,
    };
    if let Ok(Target::Resource(rr)) = request::parse(&method, path, &q)
        && rr.res.namespaced
        && rr.namespace.is_none()
    {
        assert!(
            !matches!(rr.verb, Verb::DeleteCollection | Verb::Create),
            "{method} {path}: a collection write across every namespace ({:?})",
            rr.verb
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_targets_take_any_bytes() {
        for data in [
            &b""[..],
            b"\0",
            b"\x01{\"spec\":null}",
            b"\x04/apis/substrate.ate.dev/v1alpha1/actors?dryRun=All",
            b"\xff\xfe",
        ] {
            object(data);
            patch(data);
            selector(data);
            query(data);
        }
    }
}
