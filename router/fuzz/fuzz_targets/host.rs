//! Feeds arbitrary bytes to the Host/`:authority` parser and the DNS name classifier: they
//! must never panic, and whatever they accept must be a pair of DNS-1123 labels.
#![no_main]

#[allow(dead_code)]
#[path = "../../src/host.rs"]
mod host;

use host::{Suffix, ZoneName, is_dns_label, parse_authority, parse_name};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(s) = std::str::from_utf8(data) else {
        return;
    };
    let suffix = Suffix::default();
    if let Ok(k) = parse_authority(s, &suffix) {
        assert!(is_dns_label(&k.name) && is_dns_label(&k.atespace));
    }
    if let ZoneName::Actor(k) = parse_name(s, &suffix) {
        assert!(is_dns_label(&k.name) && is_dns_label(&k.atespace));
    }
    // Through a request as the proxy sees it.
    if let Ok(v) = http::HeaderValue::from_bytes(data)
        && let Ok(req) = http::Request::get("/").header(http::header::HOST, v).body(())
    {
        let _ = host::actor_of(&req, &suffix);
    }
});
