//! `substrate-envtest`: the test harness's control plane (`e2e::envtest`: etcd and
//! kube-apiserver on loopback ports the kernel picks, a throw-away PKI and state directory,
//! no kube-controller-manager unless asked) as a process of its own, for scripts:
//! `hack/bench.sh --compare-kube` loads it beside Substrate.
//!
//! Once the control plane is ready it writes `--env-file` (shell syntax, written atomically):
//! `ENVTEST_KUBECONFIG` (admin, `system:masters`, inline certificates), `ENVTEST_SERVER`,
//! `ENVTEST_KUBE_APISERVER_PID`, `ENVTEST_ETCD_PID`, `ENVTEST_DIR`; then it runs until SIGINT
//! or SIGTERM and stops everything, removing the state directory. Killed outright, its
//! processes still die (parent-death signal) but the directory stays in the temp dir.

use std::path::PathBuf;

use anyhow::Context;
use clap::Parser;

/// Runs etcd + kube-apiserver (envtest) until SIGINT/SIGTERM.
#[derive(Debug, Parser)]
#[command(name = "substrate-envtest")]
struct Args {
    /// Where to write the control plane's address, kubeconfig and pids.
    #[arg(long, env = "SUBSTRATE_ENVTEST_ENV_FILE")]
    env_file: PathBuf,
    /// Also run kube-controller-manager (namespace deletion, garbage collection).
    #[arg(long, env = "SUBSTRATE_ENVTEST_CONTROLLER_MANAGER")]
    controller_manager: bool,
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    // Started on this (the main) thread, which lives until the end: the children's
    // parent-death signal is tied to it.
    let env = e2e::envtest::Envtest::start_with(e2e::envtest::Options {
        controller_manager: args.controller_manager,
    })
    .context("KUBEBUILDER_ASSETS is unset: it must name the folder of kube-apiserver")?;
    let q = |s: &str| format!("'{}'", s.replace('\'', r"'\''"));
    let text = format!(
        "ENVTEST_KUBECONFIG={}\nENVTEST_SERVER={}\nENVTEST_KUBE_APISERVER_PID={}\nENVTEST_ETCD_PID={}\nENVTEST_DIR={}\n",
        q(&env.admin.kubeconfig.display().to_string()),
        q(&env.url),
        env.kube_apiserver_pid(),
        env.etcd_pid(),
        q(&env.dir().display().to_string()),
    );
    let tmp = args.env_file.with_extension("tmp");
    std::fs::write(&tmp, text).with_context(|| format!("writing {}", tmp.display()))?;
    std::fs::rename(&tmp, &args.env_file)
        .with_context(|| format!("writing {}", args.env_file.display()))?;
    eprintln!(
        "substrate-envtest: kube-apiserver {} (pid {}), etcd pid {}; {} written; SIGINT or SIGTERM stops them",
        env.url,
        env.kube_apiserver_pid(),
        env.etcd_pid(),
        args.env_file.display()
    );
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("tokio runtime")?;
    rt.block_on(async {
        use tokio::signal::unix::{SignalKind, signal};
        let mut term = signal(SignalKind::terminate())?;
        let mut int = signal(SignalKind::interrupt())?;
        tokio::select! {
            _ = term.recv() => {}
            _ = int.recv() => {}
        }
        anyhow::Ok(())
    })?;
    eprintln!("substrate-envtest: stopping kube-apiserver and etcd");
    drop(env);
    Ok(())
}
