//! `substrate-image`: build and push small OCI images without Docker, and pull images into the
//! node's image cache (for debugging).
//!
//! ```text
//! substrate-image push --file target/static/x86_64-unknown-linux-gnu/release/counter:/counter:0755 \
//!     --entrypoint /counter --env PORT=8080 --env DATA_FILE=/data/file --port 8080 \
//!     --ref 127.0.0.1:5000/substrate/counter:latest --insecure
//! sha256:...                                   (the manifest digest, on stdout)
//!
//! substrate-image pull 127.0.0.1:5000/substrate/counter@sha256:... --insecure --cache-dir /tmp/c
//! /tmp/c/rootfs/<hex>/rootfs                   (the unpacked root filesystem, on stdout)
//! ```

use std::path::PathBuf;

use anyhow::{Context, bail};
use clap::{Args, Parser, Subcommand, ValueEnum};
use nodeagent::images::{
    self, BasicAuth, FileSpec, ImageCache, ImageConfig, ImageSpec, PushOptions,
};

#[derive(Debug, Parser)]
#[command(
    name = "substrate-image",
    about = "Build, push and pull Substrate OCI images without Docker"
)]
struct Cli {
    /// Log format (logs go to stderr).
    #[arg(long, env = "SUBSTRATE_LOG_FORMAT", value_enum, default_value_t = LogFormat::Plain, global = true)]
    log_format: LogFormat,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Clone, Copy, ValueEnum)]
enum LogFormat {
    Plain,
    Json,
}

#[derive(Debug, Args)]
struct RegistryArgs {
    /// Reach the reference's registry over plain HTTP.
    #[arg(long, env = "SUBSTRATE_REGISTRY_INSECURE")]
    insecure: bool,
    /// Basic-auth user name for the registry.
    #[arg(long, env = "SUBSTRATE_REGISTRY_USERNAME", requires = "password")]
    username: Option<String>,
    /// Basic-auth password for the registry (prefer the environment variable).
    #[arg(
        long,
        env = "SUBSTRATE_REGISTRY_PASSWORD",
        hide_env_values = true,
        requires = "username"
    )]
    password: Option<String>,
}

impl RegistryArgs {
    fn auth(&self) -> Option<BasicAuth> {
        match (&self.username, &self.password) {
            (Some(u), Some(p)) => Some(BasicAuth::new(u, p)),
            _ => None,
        }
    }
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Build a one-layer image from host files and push it; prints the manifest digest.
    Push {
        /// `<host-path>:<path-in-image>[:octal-mode]`; repeat for more files.
        #[arg(long = "file", required = true)]
        files: Vec<FileSpec>,
        /// Entrypoint argument; repeat for more (`--entrypoint /bin/sh --entrypoint -c`).
        #[arg(long, allow_hyphen_values = true)]
        entrypoint: Vec<String>,
        /// Default arguments after the entrypoint; repeat for more.
        #[arg(long, allow_hyphen_values = true)]
        cmd: Vec<String>,
        /// `KEY=value`; repeat for more.
        #[arg(long)]
        env: Vec<String>,
        /// Exposed port, `8080` or `8080/tcp`; repeat for more.
        #[arg(long)]
        port: Vec<String>,
        /// Working directory of the process.
        #[arg(long, env = "SUBSTRATE_IMAGE_WORKDIR")]
        workdir: Option<String>,
        /// `user[:group]` the process runs as.
        #[arg(long, env = "SUBSTRATE_IMAGE_USER")]
        user: Option<String>,
        /// Where to push: `registry/repository[:tag]`.
        #[arg(long = "ref", env = "SUBSTRATE_IMAGE_REF")]
        reference: String,
        #[command(flatten)]
        registry: RegistryArgs,
    },
    /// Pull an image into an image cache; prints the unpacked rootfs path.
    Pull {
        /// `registry/repository[:tag]` or `registry/repository@sha256:...`.
        reference: String,
        /// The image cache directory.
        #[arg(
            long,
            env = "SUBSTRATE_IMAGE_CACHE",
            default_value = "/var/lib/substrate/images"
        )]
        cache_dir: PathBuf,
        #[command(flatten)]
        registry: RegistryArgs,
    },
}

fn init_tracing(format: LogFormat) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    match format {
        LogFormat::Plain => builder.init(),
        LogFormat::Json => builder.json().init(),
    }
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    init_tracing(cli.log_format);
    match cli.command {
        Command::Push {
            files,
            entrypoint,
            cmd,
            env,
            port,
            workdir,
            user,
            reference,
            registry,
        } => {
            let spec = ImageSpec {
                files,
                entrypoint,
                cmd,
                env,
                working_dir: workdir,
                exposed_ports: port,
                user,
            };
            let image = tokio::task::spawn_blocking(move || images::build::build_image(&spec))
                .await
                .context("building the image")??;
            let options = PushOptions {
                insecure: registry.insecure,
                auth: registry.auth(),
            };
            let digest = images::push_image(&image, &reference, &options).await?;
            println!("{digest}");
        }
        Command::Pull {
            reference,
            cache_dir,
            registry,
        } => {
            let parsed: oci_client::Reference = reference
                .parse()
                .with_context(|| format!("invalid image reference {reference:?}"))?;
            let mut config = ImageConfig::new(cache_dir);
            if registry.insecure {
                config
                    .insecure_registries
                    .push(parsed.registry().to_string());
            }
            if let Some(auth) = registry.auth() {
                config.auth.insert(parsed.registry().to_string(), auth);
            }
            if registry.username.is_some() != registry.password.is_some() {
                bail!("--username and --password go together");
            }
            let cache = ImageCache::new(config)?;
            let rootfs = cache.ensure_rootfs(&reference).await?;
            tracing::info!(
                digest = %rootfs.manifest_digest,
                argv = ?rootfs.config.argv(),
                "image ready"
            );
            println!("{}", rootfs.path.display());
        }
    }
    Ok(())
}
