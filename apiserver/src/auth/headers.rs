//! The request-header (front proxy) authenticator's settings and parsing, as kube's
//! `requestheader` authenticator: the user name is the first non-empty value among the
//! username headers; the groups are every non-empty value of every group header, in order
//! (one group per value, never split); extra keys are header names after an extra prefix,
//! percent-decoded and lower-cased. Header names are case-insensitive. `system:authenticated`
//! is added, as kube's authenticated-group adder does.

use std::collections::BTreeMap;

use super::UserInfo;

/// The front-proxy settings (`requestheader-*` of `extension-apiserver-authentication`, or
/// the flags of the same names).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RequestHeader {
    /// Header names carrying the user name, in order of preference (lower-case).
    pub username_headers: Vec<String>,
    /// Header names carrying groups (lower-case).
    pub group_headers: Vec<String>,
    /// Prefixes of header names carrying extra attributes (lower-case).
    pub extra_headers_prefixes: Vec<String>,
    /// Common names a front-proxy certificate may have (empty: any the CA signed).
    pub allowed_names: Vec<String>,
}

impl Default for RequestHeader {
    /// kube's defaults for aggregated servers.
    fn default() -> Self {
        Self {
            username_headers: vec!["x-remote-user".into()],
            group_headers: vec!["x-remote-group".into()],
            extra_headers_prefixes: vec!["x-remote-extra-".into()],
            allowed_names: Vec::new(),
        }
    }
}

impl RequestHeader {
    /// Settings from header lists as given (any case, blanks dropped).
    pub fn new(
        username_headers: &[String],
        group_headers: &[String],
        extra_headers_prefixes: &[String],
        allowed_names: &[String],
    ) -> Self {
        let lower = |v: &[String]| -> Vec<String> {
            v.iter()
                .map(|h| h.trim().to_ascii_lowercase())
                .filter(|h| !h.is_empty())
                .collect()
        };
        Self {
            username_headers: lower(username_headers),
            group_headers: lower(group_headers),
            extra_headers_prefixes: lower(extra_headers_prefixes),
            allowed_names: allowed_names
                .iter()
                .map(|n| n.trim().to_string())
                .filter(|n| !n.is_empty())
                .collect(),
        }
    }

    /// The user the front proxy names in `headers`; `None` without a user name.
    pub fn user(&self, headers: &http::HeaderMap) -> Option<UserInfo> {
        let name = self.username_headers.iter().find_map(|h| {
            headers
                .get(h.as_str())
                .and_then(|v| v.to_str().ok())
                .map(str::trim)
                .filter(|v| !v.is_empty())
        })?;
        let mut groups: Vec<String> = self
            .group_headers
            .iter()
            .flat_map(|h| headers.get_all(h.as_str()).iter())
            .filter_map(|v| v.to_str().ok())
            .filter(|v| !v.is_empty())
            .map(str::to_string)
            .collect();
        if !groups.iter().any(|g| g == "system:authenticated") {
            groups.push("system:authenticated".into());
        }
        let mut extra: BTreeMap<String, Vec<String>> = BTreeMap::new();
        for (header, value) in headers {
            // http's header names are lower-case already.
            let Some(key) = self
                .extra_headers_prefixes
                .iter()
                .find_map(|p| header.as_str().strip_prefix(p.as_str()))
            else {
                continue;
            };
            if let Ok(v) = value.to_str() {
                extra
                    .entry(path_unescape(key).to_lowercase())
                    .or_default()
                    .push(v.to_string());
            }
        }
        Some(UserInfo {
            name: name.to_string(),
            groups,
            extra,
        })
    }
}

/// Go's `url.PathUnescape` (`%XX` decoded, `+` kept); an invalid escape keeps the text as is.
fn path_unescape(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%' {
            let hex = b
                .get(i + 1..i + 3)
                .and_then(|h| std::str::from_utf8(h).ok());
            match hex.and_then(|h| u8::from_str_radix(h, 16).ok()) {
                Some(byte) => {
                    out.push(byte);
                    i += 3;
                    continue;
                }
                None => return s.to_string(),
            }
        }
        out.push(b[i]);
        i += 1;
    }
    String::from_utf8(out).unwrap_or_else(|_| s.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(pairs: &[(&str, &str)]) -> http::HeaderMap {
        let mut h = http::HeaderMap::new();
        for (k, v) in pairs {
            h.append(
                http::HeaderName::from_bytes(k.as_bytes()).unwrap(),
                http::HeaderValue::from_str(v).unwrap(),
            );
        }
        h
    }

    fn strings(v: &[&str]) -> Vec<String> {
        v.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn default_headers_give_user_groups_and_extra() {
        let rh = RequestHeader::default();
        let u = rh
            .user(&headers(&[
                ("X-Remote-User", "alice"),
                ("X-Remote-Group", "team-a"),
                ("X-Remote-Group", "devs,qa"),
                ("X-Remote-Extra-Scopes", "view"),
                ("X-Remote-Extra-Scopes", "edit"),
                ("X-Remote-Extra-Example.com%2fTeam", "a"),
            ]))
            .unwrap();
        assert_eq!(u.name, "alice");
        // One group per header value, never split on commas (as kube).
        assert_eq!(
            u.groups,
            strings(&["team-a", "devs,qa", "system:authenticated"])
        );
        assert_eq!(u.extra["scopes"], strings(&["view", "edit"]));
        assert_eq!(u.extra["example.com/team"], strings(&["a"]));
        assert_eq!(u.extra.len(), 2);
    }

    #[test]
    fn configured_names_replace_the_defaults_in_order_of_preference() {
        let rh = RequestHeader::new(
            &strings(&["X-Forwarded-User", "X-Remote-User"]),
            &strings(&["X-Forwarded-Groups"]),
            &strings(&["X-Forwarded-Extra-"]),
            &strings(&["front-proxy-client"]),
        );
        let u = rh
            .user(&headers(&[
                ("X-Remote-User", "second"),
                ("X-Forwarded-User", "first"),
                ("X-Remote-Group", "ignored"),
                ("X-Forwarded-Groups", "g1"),
                ("X-Remote-Extra-Old", "ignored"),
                ("X-Forwarded-Extra-New", "v"),
            ]))
            .unwrap();
        assert_eq!(u.name, "first");
        assert_eq!(u.groups, strings(&["g1", "system:authenticated"]));
        assert_eq!(u.extra.keys().collect::<Vec<_>>(), vec!["new"]);
        assert_eq!(rh.allowed_names, strings(&["front-proxy-client"]));
        // The first header is empty: the next one names the user.
        let u = rh
            .user(&headers(&[
                ("X-Forwarded-User", ""),
                ("X-Remote-User", "second"),
            ]))
            .unwrap();
        assert_eq!(u.name, "second");
    }

    #[test]
    fn no_user_header_is_nobody() {
        let rh = RequestHeader::default();
        assert_eq!(
            rh.user(&headers(&[("X-Remote-Group", "system:masters")])),
            None
        );
        assert_eq!(rh.user(&headers(&[("X-Remote-User", "  ")])), None);
        let none = RequestHeader::new(&[], &[], &[], &[]);
        assert_eq!(none.user(&headers(&[("X-Remote-User", "alice")])), None);
    }

    #[test]
    fn extra_keys_are_path_unescaped() {
        assert_eq!(path_unescape("a%2Fb"), "a/b");
        assert_eq!(path_unescape("a+b"), "a+b");
        assert_eq!(path_unescape("bad%zz"), "bad%zz");
    }
}
