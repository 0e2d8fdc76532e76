//! `substrate-kubeconfig`: a kubeconfig for a user of a standalone Substrate, with a client
//! certificate signed by the apiserver's CA (its `--pki-dir`). The user's name is the
//! certificate's common name and each `--group` an organization, as kube-apiserver reads
//! client certificates; what the user may do is up to RBAC (RoleBindings to the user or a
//! group). hack/up.sh writes the demo tenants' kubeconfigs with it.
//!
//! ```console
//! $ substrate-kubeconfig --pki-dir .substrate/pki --server https://127.0.0.1:6443 \
//!     --user alice --group team-a --namespace team-a --out .substrate/tenants/alice.kubeconfig
//! ```

use std::path::PathBuf;

use anyhow::{Context, bail};
use clap::Parser;

#[derive(Parser, Debug)]
#[command(
    name = "substrate-kubeconfig",
    about = "Write a kubeconfig for a user of a standalone Substrate (a client certificate signed by its CA)"
)]
struct Args {
    /// The apiserver's PKI directory (its `--pki-dir`, holding `ca.crt` and `ca.key`).
    #[arg(long, value_name = "DIR")]
    pki_dir: PathBuf,
    /// The apiserver's URL, e.g. `https://127.0.0.1:6443`.
    #[arg(long, value_name = "URL")]
    server: String,
    /// The user name (the certificate's common name).
    #[arg(long, value_name = "NAME")]
    user: String,
    /// A group of the user (repeatable; `system:authenticated` is added by the apiserver).
    #[arg(long = "group", value_name = "GROUP")]
    groups: Vec<String>,
    /// The namespace (atespace) of the kubeconfig's context.
    #[arg(long, value_name = "NAMESPACE", default_value = "default")]
    namespace: String,
    /// Where to write the kubeconfig (mode 0600; parent directories are created).
    #[arg(long, value_name = "FILE")]
    out: PathBuf,
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    if args.user.is_empty() || args.user.contains(['/', '\0']) {
        bail!(
            "--user {:?}: a user name must be non-empty and contain no '/'",
            args.user
        );
    }
    if args.groups.iter().any(|g| g == "system:masters") {
        bail!(
            "--group system:masters would make {} an administrator; use the admin kubeconfig instead",
            args.user
        );
    }
    if !args.server.starts_with("https://") {
        bail!(
            "--server {:?}: the apiserver's URL must start with https://",
            args.server
        );
    }
    let pki = apiserver::pki::Pki {
        dir: args.pki_dir.clone(),
    };
    for f in [pki.ca_cert(), pki.path("ca.key")] {
        if !f.is_file() {
            bail!(
                "{} does not exist: --pki-dir must be the apiserver's PKI directory (created by its first start)",
                f.display()
            );
        }
    }
    let groups: Vec<&str> = args.groups.iter().map(String::as_str).collect();
    apiserver::pki::user_kubeconfig(
        &pki,
        &args.server,
        &args.user,
        &groups,
        &args.namespace,
        &args.out,
    )
    .with_context(|| {
        format!(
            "writing the kubeconfig of {} to {}",
            args.user,
            args.out.display()
        )
    })?;
    println!("{}", args.out.display());
    Ok(())
}
