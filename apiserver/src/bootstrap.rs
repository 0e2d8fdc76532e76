//! Cluster-mode bootstrap: what an installed apiserver creates for itself in its namespace, so
//! `kubectl apply -k config/default` needs no generated files and no cert-manager.
//!
//! - `--pki-secret`: the serving CA and certificate live in a Secret (`ca.crt`, `ca.key`,
//!   `tls.crt`, `tls.key`; the certificate names the Service: `<service>`, `<service>.<ns>`,
//!   `<service>.<ns>.svc`, `<service>.<ns>.svc.cluster.local`). The first replica to start
//!   generates it and creates the Secret; a replica that loses the creation race (409) or
//!   starts later uses the Secret's, so every replica serves the same certificate.
//! - `--ca-configmap`: a ConfigMap (`ca.crt`) with the serving CA, for the components that talk
//!   to the apiserver's Service directly (operator, node agents, router).
//! - `--apiservice`: the APIService's `spec.caBundle` is kept equal to the serving CA (checked
//!   at start and every minute), so kube-apiserver verifies the aggregated server; the
//!   manifests leave `caBundle` out, so `kubectl apply` never fights it.
//! - `--valkey-password-secret`: Valkey's password (`password`, 32 random bytes, hex) is
//!   created the same way; Valkey's pod mounts the Secret and waits until it exists.

use std::collections::BTreeMap;
use std::path::Path;
use std::time::Duration;

use base64::Engine as _;
use k8s_openapi::ByteString;
use k8s_openapi::api::core::v1::{ConfigMap, Secret};
use kube::api::{Api, ApiResource, DynamicObject, Patch, PatchParams, PostParams};

/// Files of the PKI directory ([`crate::pki`]) kept in the PKI Secret, by Secret key.
const PKI_FILES: [(&str, &str); 4] = [
    ("ca.crt", "ca.crt"),
    ("ca.key", "ca.key"),
    ("tls.crt", "serving.crt"),
    ("tls.key", "serving.key"),
];

/// The namespace file of a pod's ServiceAccount.
const SA_NAMESPACE: &str = "/var/run/secrets/kubernetes.io/serviceaccount/namespace";

/// Why a bootstrap step failed.
#[derive(Debug, thiserror::Error)]
pub enum BootstrapError {
    #[error("{what} {namespace}/{name}: {source}")]
    Api {
        what: &'static str,
        namespace: String,
        name: String,
        #[source]
        source: Box<kube::Error>,
    },
    #[error("Secret {namespace}/{name} has no key {key:?}")]
    MissingKey {
        namespace: String,
        name: String,
        key: String,
    },
    #[error("{path}: {source}")]
    Io {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error(transparent)]
    Pki(#[from] crate::pki::PkiError),
}

/// The namespace the apiserver runs in: `flag`, else its pod's, else `substrate-system`.
pub fn namespace(flag: Option<&str>) -> String {
    if let Some(ns) = flag {
        return ns.to_string();
    }
    std::fs::read_to_string(SA_NAMESPACE)
        .ok()
        .map(|s| s.trim().to_string())
        .filter(|s| !s.is_empty())
        .unwrap_or_else(|| "substrate-system".to_string())
}

/// The DNS names of `service` in `namespace` (the serving certificate's SANs).
pub fn service_names(service: &str, namespace: &str) -> Vec<String> {
    vec![
        service.to_string(),
        format!("{service}.{namespace}"),
        format!("{service}.{namespace}.svc"),
        format!("{service}.{namespace}.svc.cluster.local"),
    ]
}

fn api_err(
    what: &'static str,
    namespace: &str,
    name: &str,
) -> impl FnOnce(kube::Error) -> BootstrapError {
    let (namespace, name) = (namespace.to_string(), name.to_string());
    move |source| BootstrapError::Api {
        what,
        namespace,
        name,
        source: Box::new(source),
    }
}

fn is_conflict(e: &kube::Error) -> bool {
    matches!(e, kube::Error::Api(s) if s.code == 409)
}

/// The Secret `namespace/name`; created with `generate()`'s data when absent. A creation that
/// loses a race (409) reads the winner's.
async fn get_or_create_secret(
    client: &kube::Client,
    namespace: &str,
    name: &str,
    generate: impl FnOnce() -> Result<BTreeMap<String, ByteString>, BootstrapError>,
) -> Result<BTreeMap<String, ByteString>, BootstrapError> {
    let api: Api<Secret> = Api::namespaced(client.clone(), namespace);
    if let Some(s) = api
        .get_opt(name)
        .await
        .map_err(api_err("reading Secret", namespace, name))?
    {
        return Ok(s.data.unwrap_or_default());
    }
    let secret = Secret {
        metadata: kube::api::ObjectMeta {
            name: Some(name.to_string()),
            namespace: Some(namespace.to_string()),
            labels: Some(BTreeMap::from([(
                "app.kubernetes.io/managed-by".to_string(),
                "substrate-apiserver".to_string(),
            )])),
            ..Default::default()
        },
        data: Some(generate()?),
        type_: Some("Opaque".to_string()),
        ..Default::default()
    };
    match api.create(&PostParams::default(), &secret).await {
        Ok(s) => {
            tracing::info!(namespace, name, "created Secret");
            Ok(s.data.unwrap_or_default())
        }
        Err(e) if is_conflict(&e) => {
            tracing::info!(
                namespace,
                name,
                "Secret created by another replica meanwhile; using it"
            );
            let s = api
                .get(name)
                .await
                .map_err(api_err("reading Secret", namespace, name))?;
            Ok(s.data.unwrap_or_default())
        }
        Err(e) => Err(api_err("creating Secret", namespace, name)(e)),
    }
}

fn key<'a>(
    data: &'a BTreeMap<String, ByteString>,
    namespace: &str,
    name: &str,
    key: &str,
) -> Result<&'a [u8], BootstrapError> {
    data.get(key)
        .map(|b| b.0.as_slice())
        .ok_or_else(|| BootstrapError::MissingKey {
            namespace: namespace.to_string(),
            name: name.to_string(),
            key: key.to_string(),
        })
}

/// Makes `pki_dir` hold the serving CA and certificate of the Secret `namespace/name`,
/// generating both (for `sans`) and creating the Secret when it does not exist yet.
pub async fn pki_from_secret(
    client: &kube::Client,
    namespace: &str,
    name: &str,
    pki_dir: &Path,
    sans: &[String],
) -> Result<(), BootstrapError> {
    let data = get_or_create_secret(client, namespace, name, || {
        // Generated in a scratch directory: files of an earlier run in `pki_dir` must not
        // leak into a new Secret with other names.
        let scratch = tempfile::tempdir().map_err(|source| BootstrapError::Io {
            path: std::env::temp_dir().display().to_string(),
            source,
        })?;
        let pki = crate::pki::ensure(scratch.path(), sans)?;
        PKI_FILES
            .iter()
            .map(|(k, file)| {
                let path = pki.path(file);
                std::fs::read(&path)
                    .map(|b| (k.to_string(), ByteString(b)))
                    .map_err(|source| BootstrapError::Io {
                        path: path.display().to_string(),
                        source,
                    })
            })
            .collect()
    })
    .await?;
    write_pki_files(&data, namespace, name, pki_dir)
}

/// Writes the PKI Secret's files into `pki_dir` (those whose content changed; each file
/// replaced at once, by a rename).
fn write_pki_files(
    data: &BTreeMap<String, ByteString>,
    namespace: &str,
    name: &str,
    pki_dir: &Path,
) -> Result<(), BootstrapError> {
    std::fs::create_dir_all(pki_dir).map_err(|source| BootstrapError::Io {
        path: pki_dir.display().to_string(),
        source,
    })?;
    for (k, file) in PKI_FILES {
        let bytes = key(data, namespace, name, k)?;
        let path = pki_dir.join(file);
        if std::fs::read(&path).is_ok_and(|b| b == bytes) {
            continue;
        }
        let tmp = pki_dir.join(format!(".{file}.tmp"));
        write_private(&tmp, bytes)?;
        std::fs::rename(&tmp, &path).map_err(|source| BootstrapError::Io {
            path: path.display().to_string(),
            source,
        })?;
    }
    Ok(())
}

fn pem_of<'a>(
    data: &'a BTreeMap<String, ByteString>,
    namespace: &str,
    name: &str,
    k: &str,
) -> Result<std::borrow::Cow<'a, str>, BootstrapError> {
    Ok(String::from_utf8_lossy(key(data, namespace, name, k)?))
}

/// Renews the serving certificate of the PKI Secret `namespace/name` when it is due
/// ([`crate::pki::due_for_renewal`]) and mirrors the Secret into `pki_dir`. The local copy
/// is looked at first, so a replica reads the Secret only once its own certificate is due;
/// the write carries the Secret's resourceVersion, so of replicas renewing at once one wins
/// and the others take its certificate. Returns whether the Secret was read.
pub async fn renew_pki_secret(
    client: &kube::Client,
    namespace: &str,
    name: &str,
    pki_dir: &Path,
    sans: &[String],
) -> Result<bool, BootstrapError> {
    let now = jiff::Timestamp::now();
    let local = std::fs::read_to_string(pki_dir.join("serving.crt")).unwrap_or_default();
    if !crate::pki::due_for_renewal(&local, now) {
        return Ok(false);
    }
    let api: Api<Secret> = Api::namespaced(client.clone(), namespace);
    let mut secret = api
        .get(name)
        .await
        .map_err(api_err("reading Secret", namespace, name))?;
    let data = secret.data.clone().unwrap_or_default();
    if crate::pki::due_for_renewal(&pem_of(&data, namespace, name, "tls.crt")?, now) {
        let (crt, k) = crate::pki::issue_serving(
            &pem_of(&data, namespace, name, "ca.crt")?,
            &pem_of(&data, namespace, name, "ca.key")?,
            sans,
        )?;
        let d = secret.data.get_or_insert_with(BTreeMap::new);
        d.insert("tls.crt".into(), ByteString(crt.into_bytes()));
        d.insert("tls.key".into(), ByteString(k.into_bytes()));
        secret = match api.replace(name, &PostParams::default(), &secret).await {
            Ok(s) => {
                tracing::info!(
                    namespace,
                    name,
                    "renewed the serving certificate in the PKI Secret"
                );
                s
            }
            Err(e) if is_conflict(&e) => {
                tracing::info!(
                    namespace,
                    name,
                    "the PKI Secret changed meanwhile (another replica renewed it); using it"
                );
                api.get(name)
                    .await
                    .map_err(api_err("reading Secret", namespace, name))?
            }
            Err(e) => return Err(api_err("updating Secret", namespace, name)(e)),
        };
    }
    write_pki_files(&secret.data.unwrap_or_default(), namespace, name, pki_dir)?;
    Ok(true)
}

fn write_private(path: &Path, bytes: &[u8]) -> Result<(), BootstrapError> {
    use std::io::Write as _;
    use std::os::unix::fs::OpenOptionsExt as _;
    let io = |source| BootstrapError::Io {
        path: path.display().to_string(),
        source,
    };
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(path)
        .map_err(io)?;
    f.write_all(bytes).map_err(io)
}

/// Valkey's password from the Secret `namespace/name` (key `password`), created with 32 random
/// bytes (hex) when absent.
pub async fn valkey_password(
    client: &kube::Client,
    namespace: &str,
    name: &str,
) -> Result<String, BootstrapError> {
    let data = get_or_create_secret(client, namespace, name, || {
        let bytes: [u8; 32] = rand::random();
        let hex: String = bytes.iter().map(|b| format!("{b:02x}")).collect();
        Ok(BTreeMap::from([(
            "password".to_string(),
            ByteString(hex.into_bytes()),
        )]))
    })
    .await?;
    let p = key(&data, namespace, name, "password")?;
    Ok(String::from_utf8_lossy(p).trim_end().to_string())
}

/// Writes the ConfigMap `namespace/name` with `ca.crt` = `ca_pem` (server-side apply, field
/// manager `substrate-apiserver`).
pub async fn publish_ca(
    client: &kube::Client,
    namespace: &str,
    name: &str,
    ca_pem: &str,
) -> Result<(), BootstrapError> {
    let api: Api<ConfigMap> = Api::namespaced(client.clone(), namespace);
    let cm = serde_json::json!({
        "apiVersion": "v1", "kind": "ConfigMap",
        "metadata": {"name": name, "namespace": namespace,
                     "labels": {"app.kubernetes.io/managed-by": "substrate-apiserver"}},
        "data": {"ca.crt": ca_pem},
    });
    api.patch(
        name,
        &PatchParams::apply(FIELD_MANAGER).force(),
        &Patch::Apply(&cm),
    )
    .await
    .map_err(api_err("applying ConfigMap", namespace, name))?;
    Ok(())
}

const FIELD_MANAGER: &str = "substrate-apiserver";

fn apiservice_resource() -> ApiResource {
    ApiResource {
        group: "apiregistration.k8s.io".into(),
        version: "v1".into(),
        api_version: "apiregistration.k8s.io/v1".into(),
        kind: "APIService".into(),
        plural: "apiservices".into(),
    }
}

/// Sets the APIService `name`'s `spec.caBundle` to `ca_pem` unless it already is; whether it
/// changed.
pub async fn sync_apiservice_ca(
    client: &kube::Client,
    name: &str,
    ca_pem: &str,
) -> Result<bool, BootstrapError> {
    let api: Api<DynamicObject> = Api::all_with(client.clone(), &apiservice_resource());
    let want = base64::engine::general_purpose::STANDARD.encode(ca_pem);
    let current = api
        .get(name)
        .await
        .map_err(api_err("reading APIService", "", name))?;
    if current
        .data
        .pointer("/spec/caBundle")
        .and_then(|v| v.as_str())
        == Some(want.as_str())
    {
        return Ok(false);
    }
    api.patch(
        name,
        &PatchParams::default(),
        &Patch::Merge(serde_json::json!({"spec": {"caBundle": want}})),
    )
    .await
    .map_err(api_err("patching APIService", "", name))?;
    tracing::info!(
        apiservice = name,
        "set the APIService's caBundle to the serving CA"
    );
    Ok(true)
}

/// Keeps the APIService's `caBundle` equal to `ca_pem`: checked at once, then every minute;
/// after a failure (e.g. the APIService is not created yet: `kubectl apply` may start the
/// Deployment first) every 2 seconds, logged once per failure streak.
pub async fn keep_apiservice_ca(client: kube::Client, name: String, ca_pem: String) {
    let mut failing = false;
    loop {
        match sync_apiservice_ca(&client, &name, &ca_pem).await {
            Ok(_) => {
                if failing {
                    tracing::info!(apiservice = %name, "the APIService's caBundle is checked again");
                }
                failing = false;
            }
            Err(e) => {
                if !failing {
                    tracing::warn!(apiservice = %name, error = %e, "could not check the APIService's caBundle; retrying every 2s");
                }
                failing = true;
            }
        }
        let wait = if failing { RETRY } else { RECHECK };
        tokio::time::sleep(wait).await;
    }
}

/// How often the APIService's `caBundle` is checked.
const RECHECK: Duration = Duration::from_secs(60);
/// How soon a failed check is retried.
const RETRY: Duration = Duration::from_secs(2);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn service_names_cover_every_form_kube_uses() {
        assert_eq!(
            service_names("substrate-apiserver", "substrate-system"),
            [
                "substrate-apiserver",
                "substrate-apiserver.substrate-system",
                "substrate-apiserver.substrate-system.svc",
                "substrate-apiserver.substrate-system.svc.cluster.local",
            ]
        );
    }

    #[test]
    fn namespace_prefers_the_flag() {
        assert_eq!(namespace(Some("elsewhere")), "elsewhere");
    }
}
