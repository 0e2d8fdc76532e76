//! Where Valkey is and how to log in to it: the URL, the ACL user, the password and, for a
//! `rediss://` URL, the CA that signs Valkey's certificate.
//!
//! Credentials may be in the URL (`redis://user:pass@host:port`, percent-encoded) or given
//! apart ([`Endpoint::with_username`], [`Endpoint::with_password`], read from a file by
//! [`read_password_file`]); a password given apart wins over the URL's. The password is never
//! printed: [`Endpoint::redacted`] is the URL without its userinfo, for logs and errors, and
//! `Debug` hides the password.

use std::fmt;
use std::path::{Path, PathBuf};

use redis::IntoConnectionInfo as _;

/// Why an [`Endpoint`] could not be built.
#[derive(Debug, thiserror::Error)]
pub enum EndpointError {
    #[error("reading the Valkey password file {path}: {source}")]
    ReadPassword {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("the Valkey password file {path} is empty (its first line is the password)")]
    EmptyPassword { path: PathBuf },
    #[error("reading the Valkey CA file {path}: {source}")]
    ReadCa {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("invalid Valkey URL {url}: {source}")]
    Url {
        /// Redacted.
        url: String,
        #[source]
        source: redis::RedisError,
    },
    #[error("the Valkey CA bundle holds no PEM certificate")]
    NoCaCertificate,
    #[error("a Valkey CA file needs a rediss:// URL, not {url}")]
    CaWithoutTls {
        /// Redacted.
        url: String,
    },
}

/// How to reach and log in to Valkey. See the module docs.
#[derive(Clone)]
pub struct Endpoint {
    url: String,
    username: Option<String>,
    password: Option<String>,
    tls_ca: Option<Vec<u8>>,
}

impl fmt::Debug for Endpoint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Endpoint")
            .field("url", &self.redacted())
            .field("username", &self.username)
            .field("password", &self.password.as_ref().map(|_| "<redacted>"))
            .field("tls_ca", &self.tls_ca.as_ref().map(|_| "<PEM>"))
            .finish()
    }
}

impl Endpoint {
    /// The endpoint of `url`, with whatever credentials the URL carries.
    pub fn new(url: impl Into<String>) -> Self {
        Self {
            url: url.into(),
            username: None,
            password: None,
            tls_ca: None,
        }
    }

    /// Logs in as this ACL user (instead of the URL's, or `default`).
    pub fn with_username(mut self, username: impl Into<String>) -> Self {
        self.username = Some(username.into());
        self
    }

    /// Logs in with this password (instead of the URL's).
    pub fn with_password(mut self, password: impl Into<String>) -> Self {
        self.password = Some(password.into());
        self
    }

    /// Trusts only this CA bundle (PEM) for Valkey's certificate (`rediss://` URLs; without
    /// it the system's roots are used).
    pub fn with_tls_ca(mut self, pem: Vec<u8>) -> Self {
        self.tls_ca = Some(pem);
        self
    }

    /// The endpoint the apiserver's flags describe: `--valkey-url`, `--valkey-username`,
    /// `--valkey-password-file` and `--valkey-tls-ca-file`.
    pub fn from_flags(
        url: &str,
        username: Option<&str>,
        password_file: Option<&Path>,
        tls_ca_file: Option<&Path>,
    ) -> Result<Self, EndpointError> {
        let mut e = Endpoint::new(url);
        if let Some(u) = username {
            e = e.with_username(u);
        }
        if let Some(p) = password_file {
            e = e.with_password(read_password_file(p)?);
        }
        if let Some(p) = tls_ca_file {
            let pem = std::fs::read(p).map_err(|source| EndpointError::ReadCa {
                path: p.to_path_buf(),
                source,
            })?;
            e = e.with_tls_ca(pem);
        }
        Ok(e)
    }

    /// The URL without its userinfo (`redis://***@host:port/`), safe to log.
    pub fn redacted(&self) -> String {
        redact_url(&self.url)
    }

    /// The ACL user this endpoint logs in as (`default` when none is named).
    pub fn username(&self) -> String {
        if let Some(u) = &self.username {
            return u.clone();
        }
        self.url
            .as_str()
            .into_connection_info()
            .ok()
            .and_then(|i| i.redis_settings().username().map(str::to_string))
            .unwrap_or_else(|| "default".into())
    }

    /// Whether a password is set (here or in the URL).
    pub fn has_password(&self) -> bool {
        self.password.is_some()
            || self
                .url
                .as_str()
                .into_connection_info()
                .is_ok_and(|i| i.redis_settings().password().is_some())
    }

    /// A client that logs in with these credentials on every connection it makes (and every
    /// reconnection).
    pub fn client(&self) -> Result<redis::Client, EndpointError> {
        let url_err = |source| EndpointError::Url {
            url: self.redacted(),
            source,
        };
        let info = self.url.as_str().into_connection_info().map_err(url_err)?;
        let mut settings = info.redis_settings().clone();
        if let Some(u) = &self.username {
            settings = settings.set_username(u);
        }
        if let Some(p) = &self.password {
            settings = settings.set_password(p);
        }
        let info = info.set_redis_settings(settings);
        match &self.tls_ca {
            None => redis::Client::open(info).map_err(url_err),
            Some(pem) => {
                if !matches!(info.addr(), redis::ConnectionAddr::TcpTls { .. }) {
                    return Err(EndpointError::CaWithoutTls {
                        url: self.redacted(),
                    });
                }
                use rustls::pki_types::{CertificateDer, pem::PemObject as _};
                if !CertificateDer::pem_slice_iter(pem).any(|c| c.is_ok()) {
                    return Err(EndpointError::NoCaCertificate);
                }
                redis::Client::build_with_tls(
                    info,
                    redis::TlsCertificates {
                        client_tls: None,
                        root_cert: Some(pem.clone()),
                    },
                )
                .map_err(url_err)
            }
        }
    }
}

/// The password in `path`: its first line without the line end. Re-read on every start, not
/// while running.
pub fn read_password_file(path: &Path) -> Result<String, EndpointError> {
    let text = std::fs::read_to_string(path).map_err(|source| EndpointError::ReadPassword {
        path: path.to_path_buf(),
        source,
    })?;
    let line = text.split('\n').next().unwrap_or_default();
    let line = line.strip_suffix('\r').unwrap_or(line);
    if line.is_empty() {
        return Err(EndpointError::EmptyPassword {
            path: path.to_path_buf(),
        });
    }
    Ok(line.to_string())
}

/// `url` with its userinfo (user and password) replaced by `***`; unchanged when it has none.
pub fn redact_url(url: &str) -> String {
    let Some(scheme_end) = url.find("://") else {
        return url.to_string();
    };
    let start = scheme_end + 3;
    let authority_end = url[start..]
        .find(['/', '?', '#'])
        .map_or(url.len(), |i| start + i);
    match url[start..authority_end].rfind('@') {
        Some(at) => format!("{}***{}", &url[..start], &url[start + at..]),
        None => url.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_are_redacted() {
        assert_eq!(
            redact_url("redis://user:s3cret@127.0.0.1:6390/"),
            "redis://***@127.0.0.1:6390/"
        );
        assert_eq!(
            redact_url("rediss://:p%40ss@valkey:6379"),
            "rediss://***@valkey:6379"
        );
        // An `@` in the password (unencoded) does not leak its tail.
        assert_eq!(redact_url("redis://u:a@b@host:1/0"), "redis://***@host:1/0");
        assert_eq!(
            redact_url("redis://127.0.0.1:6390"),
            "redis://127.0.0.1:6390"
        );
        assert_eq!(
            redact_url("redis://h:1/?x=a@b"),
            "redis://h:1/?x=a@b",
            "an @ after the authority is not userinfo"
        );
        assert_eq!(redact_url("not a url"), "not a url");
    }

    #[test]
    fn credentials_given_apart_win_and_are_never_printed() {
        let e = Endpoint::new("redis://alice:from-url@127.0.0.1:6390/");
        assert_eq!(e.username(), "alice");
        assert!(e.has_password());
        let c = e.client().expect("client");
        let s = c.get_connection_info().redis_settings();
        assert_eq!(
            (s.username(), s.password()),
            (Some("alice"), Some("from-url"))
        );

        let e = e.with_username("bob").with_password("from-file");
        assert_eq!(e.username(), "bob");
        let c = e.client().expect("client");
        let s = c.get_connection_info().redis_settings();
        assert_eq!(
            (s.username(), s.password()),
            (Some("bob"), Some("from-file"))
        );
        let debug = format!("{e:?}");
        assert!(
            !debug.contains("from-file") && !debug.contains("from-url"),
            "{debug}"
        );
        assert_eq!(e.redacted(), "redis://***@127.0.0.1:6390/");

        let plain = Endpoint::new("redis://127.0.0.1:6390");
        assert_eq!(plain.username(), "default");
        assert!(!plain.has_password());
    }

    #[test]
    fn the_password_file_is_its_first_line() {
        let dir = tempfile::tempdir().expect("tempdir");
        let p = dir.path().join("password");
        for (content, want) in [
            ("s3cret\n", Some("s3cret")),
            ("s3cret", Some("s3cret")),
            ("s3cret\r\n", Some("s3cret")),
            ("s3cret\nsecond line\n", Some("s3cret")),
            (" spaced \n", Some(" spaced ")),
            ("\n", None),
            ("", None),
        ] {
            std::fs::write(&p, content).expect("write");
            match (read_password_file(&p), want) {
                (Ok(got), Some(want)) => assert_eq!(got, want, "{content:?}"),
                (Err(EndpointError::EmptyPassword { .. }), None) => {}
                (r, _) => panic!("{content:?}: {r:?}"),
            }
        }
        let missing = read_password_file(&dir.path().join("nope")).expect_err("missing");
        assert!(
            missing.to_string().contains("nope"),
            "names the file: {missing}"
        );
    }

    #[test]
    fn a_ca_needs_a_tls_url() {
        let e = Endpoint::new("redis://127.0.0.1:6390").with_tls_ca(b"pem".to_vec());
        assert!(matches!(
            e.client(),
            Err(EndpointError::CaWithoutTls { .. })
        ));
        let e = Endpoint::new("rediss://127.0.0.1:6390").with_tls_ca(b"not a pem".to_vec());
        assert!(
            matches!(e.client(), Err(EndpointError::NoCaCertificate)),
            "a CA bundle without a certificate is refused"
        );
    }
}
