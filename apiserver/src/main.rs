//! `substrate-apiserver`: see the crate docs of `apiserver`.

use anyhow::Context;
use clap::Parser;

use apiserver::config::Args;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    apiserver::init_tracing(args.log_format);
    let running = apiserver::start(&args)
        .await
        .context("starting the apiserver")?;
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .context("installing the SIGTERM handler")?;
    tokio::select! {
        _ = tokio::signal::ctrl_c() => tracing::info!("interrupted"),
        _ = term.recv() => tracing::info!("terminated"),
    }
    running.stop().await;
    tracing::info!("stopped");
    Ok(())
}
