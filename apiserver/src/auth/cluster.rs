//! Delegated authentication settings from the cluster: the `kube-system/
//! extension-apiserver-authentication` ConfigMap kube-apiserver publishes for extension
//! servers, read at start and followed (a watch) while serving.
//!
//! Keys: `client-ca-file` (PEM), `requestheader-client-ca-file` (PEM),
//! `requestheader-allowed-names`, `requestheader-username-headers`,
//! `requestheader-group-headers`, `requestheader-extra-headers-prefix` (JSON arrays of
//! strings, as kube writes them). CA files given by flags (`--client-ca-file`,
//! `--requestheader-client-ca-file`) are trusted beside the ConfigMap's. The request-header
//! names and allowed names come from the ConfigMap when it has a request-header CA, else from
//! the `--requestheader-*` flags.

use std::collections::BTreeMap;

use futures::StreamExt;
use k8s_openapi::api::core::v1::ConfigMap;
use kube::runtime::{WatchStreamExt, watcher};

use super::{AuthError, Authenticator, Bundles, RequestHeader};

pub const NAMESPACE: &str = "kube-system";
pub const NAME: &str = "extension-apiserver-authentication";

const CLIENT_CA: &str = "client-ca-file";
const REQUESTHEADER_CA: &str = "requestheader-client-ca-file";
const ALLOWED_NAMES: &str = "requestheader-allowed-names";
const USERNAME_HEADERS: &str = "requestheader-username-headers";
const GROUP_HEADERS: &str = "requestheader-group-headers";
const EXTRA_PREFIX: &str = "requestheader-extra-headers-prefix";

fn join(a: &str, b: &str) -> String {
    match (a.trim().is_empty(), b.trim().is_empty()) {
        (true, _) => b.to_string(),
        (_, true) => a.to_string(),
        _ => format!("{}\n{}", a.trim_end(), b),
    }
}

fn list(data: &BTreeMap<String, String>, key: &str) -> Result<Vec<String>, AuthError> {
    match data.get(key).map(|v| v.trim()).filter(|v| !v.is_empty()) {
        None => Ok(Vec::new()),
        Some(v) => serde_json::from_str(v).map_err(|e| AuthError::ConfigMap {
            namespace: NAMESPACE.into(),
            name: NAME.into(),
            key: key.into(),
            reason: format!("not a JSON array of strings: {e}"),
        }),
    }
}

/// The bundles the ConfigMap's `data` gives, with `local` (from flags) added.
pub fn bundles(data: &BTreeMap<String, String>, local: &Bundles) -> Result<Bundles, AuthError> {
    let cm_client = data.get(CLIENT_CA).map(String::as_str).unwrap_or_default();
    let cm_rh = data
        .get(REQUESTHEADER_CA)
        .map(String::as_str)
        .unwrap_or_default();
    let request_header = if cm_rh.trim().is_empty() {
        local.request_header.clone()
    } else {
        RequestHeader::new(
            &list(data, USERNAME_HEADERS)?,
            &list(data, GROUP_HEADERS)?,
            &list(data, EXTRA_PREFIX)?,
            &list(data, ALLOWED_NAMES)?,
        )
    };
    Ok(Bundles {
        client_ca: join(cm_client, &local.client_ca),
        request_header_ca: join(cm_rh, &local.request_header_ca),
        request_header,
    })
}

fn lookup_error(reason: impl ToString) -> AuthError {
    AuthError::Lookup {
        namespace: NAMESPACE.into(),
        name: NAME.into(),
        reason: reason.to_string(),
    }
}

/// Reads the ConfigMap once: the bundles to start with.
pub async fn load(client: &kube::Client, local: &Bundles) -> Result<Bundles, AuthError> {
    let api: kube::Api<ConfigMap> = kube::Api::namespaced(client.clone(), NAMESPACE);
    let cm = api
        .get_opt(NAME)
        .await
        .map_err(lookup_error)?
        .ok_or_else(|| lookup_error("not found"))?;
    bundles(&cm.data.unwrap_or_default(), local)
}

/// Follows the ConfigMap and reloads `authn` on every change (forever; errors are retried
/// with backoff and logged; an invalid change is logged and leaves the bundles in force).
pub async fn follow(client: kube::Client, authn: Authenticator, local: Bundles) {
    let api: kube::Api<ConfigMap> = kube::Api::namespaced(client, NAMESPACE);
    let config = watcher::Config::default().fields(&format!("metadata.name={NAME}"));
    let mut events = watcher(api, config).default_backoff().boxed();
    while let Some(event) = events.next().await {
        let cm = match event {
            Ok(watcher::Event::Apply(cm) | watcher::Event::InitApply(cm)) => cm,
            Ok(watcher::Event::Delete(_)) => {
                tracing::warn!(
                    namespace = NAMESPACE,
                    name = NAME,
                    "authentication ConfigMap deleted; keeping the CAs in force"
                );
                continue;
            }
            Ok(_) => continue,
            Err(e) => {
                tracing::warn!(namespace = NAMESPACE, name = NAME, error = %e, "watching the authentication ConfigMap");
                continue;
            }
        };
        let before = authn.bundles();
        match bundles(&cm.data.unwrap_or_default(), &local).and_then(|b| {
            let changed = b != before;
            authn.reload(b).map(|()| changed)
        }) {
            Ok(true) => tracing::info!(
                namespace = NAMESPACE,
                name = NAME,
                "authentication CAs and request-header settings reloaded"
            ),
            Ok(false) => {}
            Err(e) => tracing::warn!(error = %e, "ignoring an invalid authentication ConfigMap"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn data(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn the_configmap_as_kube_writes_it_gives_cas_and_header_names() {
        let cm = data(&[
            ("client-ca-file", "CLIENT"),
            ("requestheader-client-ca-file", "PROXY"),
            ("requestheader-allowed-names", "[\"front-proxy-client\"]"),
            ("requestheader-username-headers", "[\"X-Remote-User\"]"),
            ("requestheader-group-headers", "[\"X-Remote-Group\"]"),
            (
                "requestheader-extra-headers-prefix",
                "[\"X-Remote-Extra-\"]",
            ),
        ]);
        let b = bundles(&cm, &Bundles::default()).unwrap();
        assert_eq!(b.client_ca, "CLIENT");
        assert_eq!(b.request_header_ca, "PROXY");
        assert_eq!(
            b.request_header,
            RequestHeader {
                username_headers: vec!["x-remote-user".into()],
                group_headers: vec!["x-remote-group".into()],
                extra_headers_prefixes: vec!["x-remote-extra-".into()],
                allowed_names: vec!["front-proxy-client".into()],
            }
        );
    }

    #[test]
    fn flag_files_are_added_and_flag_headers_used_without_a_request_header_ca() {
        let local = Bundles {
            client_ca: "LOCAL-CLIENT\n".into(),
            request_header_ca: "LOCAL-PROXY".into(),
            request_header: RequestHeader::new(&["X-User".into()], &[], &[], &["proxy".into()]),
        };
        let b = bundles(&data(&[("client-ca-file", "CLIENT\n")]), &local).unwrap();
        assert_eq!(b.client_ca, "CLIENT\nLOCAL-CLIENT\n");
        assert_eq!(b.request_header_ca, "LOCAL-PROXY");
        assert_eq!(b.request_header, local.request_header);
        // With a request-header CA in the ConfigMap its names win (and the flag CA is added).
        let b = bundles(
            &data(&[
                ("requestheader-client-ca-file", "PROXY"),
                ("requestheader-username-headers", "[\"X-Forwarded-User\"]"),
            ]),
            &local,
        )
        .unwrap();
        assert_eq!(b.client_ca, "LOCAL-CLIENT\n");
        assert_eq!(b.request_header_ca, "PROXY\nLOCAL-PROXY");
        assert_eq!(b.request_header.username_headers, vec!["x-forwarded-user"]);
        assert!(b.request_header.allowed_names.is_empty());
    }

    #[test]
    fn a_malformed_list_names_its_key() {
        let e = bundles(
            &data(&[
                ("requestheader-client-ca-file", "PROXY"),
                ("requestheader-group-headers", "X-Remote-Group"),
            ]),
            &Bundles::default(),
        )
        .unwrap_err();
        assert!(
            e.to_string().contains("key requestheader-group-headers"),
            "{e}"
        );
    }
}
