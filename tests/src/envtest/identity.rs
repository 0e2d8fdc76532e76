//! An identity talking to an apiserver: a kubeconfig for `kubectl` and the same credential for
//! raw HTTPS requests with `curl` (exact status codes and `Status` bodies).

use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use serde_json::Value;

use super::pki::{self, Credential, Pki};
use crate::Kubectl;

/// A user of an apiserver. See the module docs.
#[derive(Debug, Clone)]
pub struct Identity {
    /// The user name the apiserver should see.
    pub user: String,
    /// The apiserver's URL (`https://127.0.0.1:<port>`).
    pub server: String,
    /// A kubeconfig with the credential embedded.
    pub kubeconfig: PathBuf,
    pub kubectl: Kubectl,
    pub credential: Credential,
    /// The CA that verifies the apiserver.
    pub ca: PathBuf,
}

impl Identity {
    /// Writes `dir/<user>.kubeconfig` for `server`, verified by the cluster CA of `pki`.
    pub fn new(
        dir: &Path,
        server: &str,
        pki: &Pki,
        user: &str,
        credential: Credential,
        home: &Path,
    ) -> Identity {
        Identity::for_server(dir, server, &pki.ca.files.cert_pem, user, credential, home)
    }

    /// An identity of any apiserver (`server`, verified by `ca_pem`): the CA and a kubeconfig
    /// are written to `dir` (named after the user and the server's port), `home` is kubectl's
    /// HOME. For Substrate's standalone apiserver, `credential` is a certificate signed by its
    /// own CA (`apiserver::pki::issue_client`).
    pub fn for_server(
        dir: &Path,
        server: &str,
        ca_pem: &str,
        user: &str,
        credential: Credential,
        home: &Path,
    ) -> Identity {
        let port = server.rsplit(':').next().unwrap_or_default();
        let file: String = format!("{user}-{port}")
            .chars()
            .map(|c| if c.is_ascii_alphanumeric() { c } else { '_' })
            .collect();
        let ca = dir.join(format!("{file}-ca.crt"));
        pki::write(&ca, ca_pem, false).expect("CA file");
        let kubeconfig = dir.join(format!("{file}.kubeconfig"));
        pki::write_kubeconfig(&kubeconfig, server, ca_pem, user, &credential).expect("kubeconfig");
        Identity {
            user: user.to_string(),
            server: server.to_string(),
            kubectl: Kubectl {
                kubeconfig: kubeconfig.clone(),
                home: home.to_path_buf(),
            },
            kubeconfig,
            credential,
            ca,
        }
    }

    /// The same credential against another apiserver (`server`, verified by `ca_pem`).
    pub fn at(&self, server: &str, ca_pem: &str, dir: &Path) -> Identity {
        Identity::for_server(
            dir,
            server,
            ca_pem,
            &self.user,
            self.credential.clone(),
            &self.kubectl.home,
        )
    }

    /// `METHOD path` with an optional JSON body; (status code, body as JSON — `Null` when
    /// empty, a JSON string when not JSON).
    pub fn request(&self, method: &str, path: &str, body: Option<&Value>) -> (u16, Value) {
        let (code, text) = self.request_raw(method, path, body.map(Value::to_string).as_deref());
        let v = if text.trim().is_empty() {
            Value::Null
        } else {
            serde_json::from_str(&text).unwrap_or(Value::String(text))
        };
        (code, v)
    }

    /// [`Identity::request`] with a raw body and answer. Code 0 when curl could not connect.
    pub fn request_raw(&self, method: &str, path: &str, body: Option<&str>) -> (u16, String) {
        let content_type = if method == "PATCH" {
            "Content-Type: application/merge-patch+json"
        } else {
            "Content-Type: application/json"
        };
        let mut c = Command::new("curl");
        c.args([
            "-s",
            "--max-time",
            "30",
            "-X",
            method,
            "-w",
            "\n%{http_code}",
        ])
        .arg("--cacert")
        .arg(&self.ca)
        .args(["-H", content_type, "-H", "Accept: application/json"]);
        match &self.credential {
            Credential::Cert(files) => {
                c.arg("--cert")
                    .arg(&files.cert)
                    .arg("--key")
                    .arg(&files.key);
            }
            Credential::Token(t) => {
                // Through a config on stdin would be tidier; a header keeps it off `ps` no
                // better, and tests' tokens are short-lived anyway.
                c.args(["-H", &format!("Authorization: Bearer {t}")]);
            }
        }
        if body.is_some() {
            c.args(["--data-binary", "@-"]);
        }
        c.arg(format!("{}{path}", self.server))
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::null());
        let mut child = c.spawn().expect("curl");
        {
            let mut stdin = child.stdin.take().expect("stdin");
            if let Some(b) = body {
                stdin.write_all(b.as_bytes()).expect("curl stdin");
            }
        }
        let out = child.wait_with_output().expect("curl output");
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        let (body, code) = text.rsplit_once('\n').unwrap_or(("", text.as_str()));
        (code.trim().parse().unwrap_or(0), body.to_string())
    }

    /// `kubectl args...`; (success, stdout, stderr).
    pub fn kubectl(&self, args: &[&str]) -> (bool, String, String) {
        self.kubectl.run(args, None)
    }

    /// `kubectl apply -f -` of `obj`; panics on failure. A `List` is sent as a stream of its items
    /// (JSON objects one after the other): kubectl validates a `kind: List` document against the OpenAPI v2
    /// document in protobuf, which Substrate's standalone apiserver does not serve (JSON only).
    pub fn apply(&self, obj: &Value) -> String {
        let stream = match (obj["kind"].as_str(), obj["items"].as_array()) {
            (Some("List"), Some(items)) => items
                .iter()
                .map(Value::to_string)
                .collect::<Vec<_>>()
                .join("\n"),
            _ => obj.to_string(),
        };
        self.kubectl.ok(&["apply", "-f", "-"], Some(&stream))
    }
}
