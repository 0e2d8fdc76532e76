//! Which actor a request is for: `<actor>.<atespace>.<suffix>[:port]`.
//!
//! The name comes from the absolute-form request URI when the router is used as an HTTP proxy
//! (`curl -x http://router:8080 http://web-1.team-a.actors.resources.substrate.ate.dev/`), else
//! from the `Host` header (HTTP/1.1), else from `:authority` (HTTP/2, which hyper exposes as
//! the URI's authority). Names are case-insensitive, a trailing dot is allowed, and the actor
//! and atespace labels must be DNS-1123 labels (the names the apiserver accepts).
//!
//! A host that cannot be a DNS name at all is *malformed* (400); a well-formed name that is not
//! `<actor>.<atespace>.<suffix>` is *not ours* (404). [`parse_name`] is shared with the DNS
//! responder, which answers for the same names.

use std::fmt;

/// The default zone under which actors are named.
pub const DEFAULT_SUFFIX: &str = "actors.resources.substrate.ate.dev";

/// An actor's identity: its atespace (namespace) and name, both lowercase DNS labels.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ActorKey {
    /// The atespace (the actor's namespace).
    pub atespace: String,
    /// The actor's name.
    pub name: String,
}

impl ActorKey {
    pub fn new(atespace: impl Into<String>, name: impl Into<String>) -> Self {
        Self {
            atespace: atespace.into(),
            name: name.into(),
        }
    }
}

impl fmt::Display for ActorKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.atespace, self.name)
    }
}

/// The zone suffix, normalized (lowercase, no leading or trailing dot).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Suffix(String);

impl Suffix {
    /// Normalizes `s`; it must be a non-empty dotted DNS name.
    pub fn new(s: &str) -> Result<Self, HostError> {
        let t = s.trim_end_matches('.').to_ascii_lowercase();
        if t.is_empty() || t.split('.').any(|l| !is_dns_label(l)) {
            return Err(HostError::Malformed {
                host: s.to_string(),
                why: "the suffix must be a dotted DNS name such as actors.example.com",
            });
        }
        Ok(Self(t))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl Default for Suffix {
    fn default() -> Self {
        Self(DEFAULT_SUFFIX.to_string())
    }
}

impl fmt::Display for Suffix {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// Why a host does not name an actor.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum HostError {
    /// No host at all (HTTP/1.0 without `Host`, or an empty one).
    #[error("the request names no host; expected Host: <actor>.<atespace>.{suffix}")]
    Missing { suffix: String },
    /// Not a syntactically valid host[:port].
    #[error("malformed host {host:?}: {why}")]
    Malformed { host: String, why: &'static str },
    /// A valid DNS name outside the zone, or with the wrong number of labels in it.
    #[error("host {host:?} does not name an actor; expected <actor>.<atespace>.{suffix}")]
    NotAnActor { host: String, suffix: String },
}

impl HostError {
    /// The HTTP status the router answers with.
    pub fn status(&self) -> u16 {
        match self {
            Self::Missing { .. } | Self::Malformed { .. } => 400,
            Self::NotAnActor { .. } => 404,
        }
    }
}

/// What a DNS name under (or outside) the zone denotes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ZoneName {
    /// The zone apex itself.
    Apex,
    /// `<atespace>.<suffix>`.
    Atespace(String),
    /// `<actor>.<atespace>.<suffix>`.
    Actor(ActorKey),
    /// Under the zone but not a name we serve (more labels, or labels that are not DNS-1123).
    Other,
    /// Not under the zone.
    Outside,
}

/// A DNS-1123 label: 1-63 of `[a-z0-9-]`, starting and ending alphanumeric (lowercase input).
pub fn is_dns_label(l: &str) -> bool {
    let b = l.as_bytes();
    !b.is_empty()
        && b.len() <= 63
        && b.iter()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || *c == b'-')
        && b[0] != b'-'
        && b[b.len() - 1] != b'-'
}

/// Classifies a DNS name (any case, optional trailing dot) relative to the zone `suffix`.
pub fn parse_name(name: &str, suffix: &Suffix) -> ZoneName {
    let n = name.strip_suffix('.').unwrap_or(name).to_ascii_lowercase();
    let s = suffix.as_str();
    if n == s {
        return ZoneName::Apex;
    }
    let Some(rest) = n.strip_suffix(s).and_then(|r| r.strip_suffix('.')) else {
        return ZoneName::Outside;
    };
    let labels: Vec<&str> = rest.split('.').collect();
    if !labels.iter().all(|l| is_dns_label(l)) {
        return ZoneName::Other;
    }
    match labels.as_slice() {
        [ates] => ZoneName::Atespace(ates.to_string()),
        [actor, ates] => ZoneName::Actor(ActorKey::new(*ates, *actor)),
        _ => ZoneName::Other,
    }
}

/// Splits `host[:port]`; rejects bracketed IPv6 literals' ports only when malformed.
fn split_port(authority: &str) -> Result<&str, &'static str> {
    if let Some(rest) = authority.strip_prefix('[') {
        // An IPv6 literal: valid syntax, but never an actor.
        let Some(end) = rest.find(']') else {
            return Err("unterminated IPv6 literal");
        };
        let after = &rest[end + 1..];
        if !(after.is_empty() || after.strip_prefix(':').is_some_and(valid_port)) {
            return Err("invalid port");
        }
        return Ok(&authority[..end + 2]);
    }
    match authority.rsplit_once(':') {
        Some((h, p)) => {
            if !valid_port(p) {
                return Err("invalid port");
            }
            Ok(h)
        }
        None => Ok(authority),
    }
}

fn valid_port(p: &str) -> bool {
    !p.is_empty()
        && p.len() <= 5
        && p.bytes().all(|b| b.is_ascii_digit())
        && p.parse::<u16>().is_ok()
}

/// Parses an authority (`host[:port]`) into the actor it names.
pub fn parse_authority(authority: &str, suffix: &Suffix) -> Result<ActorKey, HostError> {
    let malformed = |why| HostError::Malformed {
        host: authority.to_string(),
        why,
    };
    if authority.is_empty() {
        return Err(HostError::Missing {
            suffix: suffix.to_string(),
        });
    }
    if authority.contains('@') {
        return Err(malformed("userinfo is not allowed in a host"));
    }
    let host = split_port(authority).map_err(malformed)?;
    if host.starts_with('[') {
        return Err(HostError::NotAnActor {
            host: authority.to_string(),
            suffix: suffix.to_string(),
        });
    }
    if host.is_empty() {
        return Err(malformed("empty host name"));
    }
    let bare = host.strip_suffix('.').unwrap_or(host);
    if bare.len() > 253 {
        return Err(malformed("host name longer than 253 characters"));
    }
    if bare.is_empty()
        || bare
            .split('.')
            .any(|l| l.is_empty() || l.len() > 63 || !l.bytes().all(is_host_byte))
    {
        return Err(malformed(
            "not a DNS name (labels of letters, digits, '-' and '_', separated by single dots)",
        ));
    }
    match parse_name(bare, suffix) {
        ZoneName::Actor(key) => Ok(key),
        ZoneName::Other => {
            // Inside the zone: be precise about why.
            let lower = bare.to_ascii_lowercase();
            let rest = lower
                .strip_suffix(suffix.as_str())
                .and_then(|r| r.strip_suffix('.'))
                .unwrap_or_default();
            if rest.split('.').count() == 2 {
                Err(malformed(
                    "the actor and atespace must be DNS-1123 labels (lowercase letters, digits and '-', starting and ending alphanumeric)",
                ))
            } else {
                Err(HostError::NotAnActor {
                    host: authority.to_string(),
                    suffix: suffix.to_string(),
                })
            }
        }
        ZoneName::Apex | ZoneName::Atespace(_) | ZoneName::Outside => Err(HostError::NotAnActor {
            host: authority.to_string(),
            suffix: suffix.to_string(),
        }),
    }
}

fn is_host_byte(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b == b'-' || b == b'_'
}

/// The authority a request is addressed to: absolute-form URI (proxy mode) or `:authority`
/// (HTTP/2), else the `Host` header.
pub fn request_authority<B>(req: &http::Request<B>) -> Option<&str> {
    if let Some(a) = req.uri().authority() {
        return Some(a.as_str());
    }
    req.headers()
        .get(http::header::HOST)
        .and_then(|h| h.to_str().ok())
}

/// The actor a request is for.
pub fn actor_of<B>(req: &http::Request<B>, suffix: &Suffix) -> Result<ActorKey, HostError> {
    match request_authority(req) {
        Some(a) => parse_authority(a, suffix),
        None => {
            if req.headers().contains_key(http::header::HOST) {
                Err(HostError::Malformed {
                    host: String::from_utf8_lossy(req.headers()[http::header::HOST].as_bytes())
                        .into_owned(),
                    why: "the Host header is not ASCII",
                })
            } else {
                Err(HostError::Missing {
                    suffix: suffix.to_string(),
                })
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn p(s: &str) -> Result<ActorKey, HostError> {
        parse_authority(s, &Suffix::default())
    }

    #[test]
    fn actor_names_parse() {
        let k = ActorKey::new("team-a", "web-1");
        assert_eq!(
            p("web-1.team-a.actors.resources.substrate.ate.dev"),
            Ok(k.clone())
        );
        assert_eq!(
            p("web-1.team-a.actors.resources.substrate.ate.dev:8080"),
            Ok(k.clone())
        );
        assert_eq!(
            p("WEB-1.Team-A.Actors.Resources.Substrate.Ate.Dev."),
            Ok(k.clone())
        );
        assert_eq!(
            p("web-1.team-a.actors.resources.substrate.ate.dev.:80"),
            Ok(k)
        );
    }

    #[test]
    fn custom_suffix() {
        let s = Suffix::new("Actors.Example.COM.").unwrap();
        assert_eq!(s.as_str(), "actors.example.com");
        assert_eq!(
            parse_authority("a.b.actors.example.com", &s),
            Ok(ActorKey::new("b", "a"))
        );
        assert_eq!(
            parse_authority("a.b.actors.resources.substrate.ate.dev", &s)
                .unwrap_err()
                .status(),
            404
        );
        assert!(Suffix::new("").is_err());
        assert!(Suffix::new("a..b").is_err());
    }

    #[test]
    fn not_ours_is_404() {
        for h in [
            "example.com",
            "localhost:8080",
            "127.0.0.1:8080",
            "[::1]:8080",
            "actors.resources.substrate.ate.dev",
            "team-a.actors.resources.substrate.ate.dev",
            "x.web-1.team-a.actors.resources.substrate.ate.dev",
            "web-1.team-a.actors.resources.substrate.ate.dev.evil.com",
            "xactors.resources.substrate.ate.dev",
        ] {
            let e = p(h).unwrap_err();
            assert_eq!(e.status(), 404, "{h}: {e}");
            assert!(
                e.to_string()
                    .contains("<actor>.<atespace>.actors.resources"),
                "{e}"
            );
        }
    }

    #[test]
    fn malformed_is_400() {
        for h in [
            "",
            ":80",
            "web-1.team-a.actors.resources.substrate.ate.dev:",
            "web-1.team-a.actors.resources.substrate.ate.dev:99999",
            "web-1.team-a.actors.resources.substrate.ate.dev:8x",
            "web 1.team-a.actors.resources.substrate.ate.dev",
            "web-1..actors.resources.substrate.ate.dev",
            "user@web-1.team-a.actors.resources.substrate.ate.dev",
            "-web.team-a.actors.resources.substrate.ate.dev",
            "web_1.team-a.actors.resources.substrate.ate.dev",
            "[::1",
            "..",
            ".",
        ] {
            let e = p(h).unwrap_err();
            assert_eq!(e.status(), 400, "{h:?}: {e}");
        }
        let long = format!(
            "{}.team-a.actors.resources.substrate.ate.dev",
            "a".repeat(64)
        );
        assert_eq!(p(&long).unwrap_err().status(), 400);
    }

    #[test]
    fn request_sources() {
        let s = Suffix::default();
        // Proxy mode: the absolute URI wins over Host.
        let r = http::Request::get("http://a.b.actors.resources.substrate.ate.dev/x")
            .header("host", "router:8080")
            .body(())
            .unwrap();
        assert_eq!(actor_of(&r, &s), Ok(ActorKey::new("b", "a")));
        let r = http::Request::get("/x")
            .header("host", "a.b.actors.resources.substrate.ate.dev")
            .body(())
            .unwrap();
        assert_eq!(actor_of(&r, &s), Ok(ActorKey::new("b", "a")));
        let r = http::Request::get("/x").body(()).unwrap();
        assert_eq!(actor_of(&r, &s).unwrap_err().status(), 400);
    }

    #[test]
    fn zone_names() {
        let s = Suffix::default();
        assert_eq!(
            parse_name("actors.resources.substrate.ate.dev.", &s),
            ZoneName::Apex
        );
        assert_eq!(
            parse_name("Team-A.actors.resources.substrate.ate.dev.", &s),
            ZoneName::Atespace("team-a".into())
        );
        assert_eq!(parse_name("example.com.", &s), ZoneName::Outside);
        assert_eq!(
            parse_name("a.b.c.actors.resources.substrate.ate.dev", &s),
            ZoneName::Other
        );
        assert_eq!(
            parse_name("a_b.c.actors.resources.substrate.ate.dev", &s),
            ZoneName::Other
        );
    }

    fn label() -> impl Strategy<Value = String> {
        "[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?"
    }

    proptest! {
        #[test]
        fn never_panics(s in "\\PC{0,300}") {
            let _ = p(&s);
            let _ = parse_name(&s, &Suffix::default());
        }

        #[test]
        fn never_panics_on_hostlike(s in "[a-zA-Z0-9.:\\[\\]_@-]{0,100}") {
            if let Ok(k) = p(&s) {
                prop_assert!(is_dns_label(&k.name) && is_dns_label(&k.atespace));
            }
        }

        #[test]
        fn round_trip(actor in label(), ates in label(), port in proptest::option::of(any::<u16>()),
                      upper in any::<bool>(), dot in any::<bool>()) {
            let mut h = format!("{actor}.{ates}.{DEFAULT_SUFFIX}");
            if upper { h = h.to_ascii_uppercase(); }
            if dot { h.push('.'); }
            if let Some(port) = port { h = format!("{h}:{port}"); }
            prop_assert_eq!(p(&h), Ok(ActorKey::new(ates.clone(), actor.clone())));
            prop_assert_eq!(
                parse_name(&format!("{actor}.{ates}.{DEFAULT_SUFFIX}."), &Suffix::default()),
                ZoneName::Actor(ActorKey::new(ates, actor))
            );
        }
    }
}
