//! `edgeroute-control`: serve the routing table, show it, or check a config.

use anyhow::Context;
use clap::{Parser, Subcommand};
use edgeroute_config::{ControlConfig, ControlConfigError, LogFormat, TOKEN_ENV};
use edgeroute_control::builder::Builder;
use edgeroute_control::metrics::ControlMetrics;
use edgeroute_control::server::{self, ServerState};
use edgeroute_control::source;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;

#[derive(Parser)]
#[command(
    name = "edgeroute-control",
    version,
    about = "edgeroute control plane: builds the routing table and serves it to proxies"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Serve the routing table.
    Serve {
        #[arg(long, short, value_name = "FILE")]
        config: PathBuf,
    },
    /// Read the source once and print the table that would be served.
    Show {
        #[arg(long, short, value_name = "FILE")]
        config: PathBuf,
    },
    /// Validate a config file and read its source once.
    Check {
        #[arg(long, short, value_name = "FILE")]
        config: PathBuf,
    },
}

fn main() -> ExitCode {
    // One TLS stack for the process: rustls with ring.
    if rustls::crypto::CryptoProvider::get_default().is_none()
        && rustls::crypto::ring::default_provider()
            .install_default()
            .is_err()
    {
        eprintln!("note: a TLS crypto provider was already installed");
    }
    let cli = Cli::parse();
    let (Command::Serve { config } | Command::Show { config } | Command::Check { config }) =
        &cli.command;
    let cfg = match ControlConfig::load(config) {
        Ok(c) => c,
        Err(ControlConfigError::Invalid { path, errors }) => {
            eprintln!("{}: {} invalid field(s):", path.display(), errors.len());
            for e in errors.iter() {
                eprintln!("  {e}");
            }
            return ExitCode::FAILURE;
        }
        Err(e) => {
            eprintln!("{e}");
            return ExitCode::FAILURE;
        }
    };
    let result = match cli.command {
        Command::Serve { .. } => serve(cfg),
        Command::Show { .. } => show(&cfg, true),
        Command::Check { ref config } => {
            show(&cfg, false).map(|()| println!("{}: ok", config.display()))
        }
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    Ok(tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?)
}

fn show(cfg: &ControlConfig, print: bool) -> anyhow::Result<()> {
    let view =
        runtime()?.block_on(async { source::Source::new(&cfg.source).await.read().await })?;
    let mut builder = Builder::new(source::now_ms() / 1000);
    let table = builder
        .apply(&view, source::now_ms())
        .context("the source gave no table")?;
    if print {
        println!("{}", serde_json::to_string_pretty(table)?);
    }
    Ok(())
}

/// The bearer token: `EDGEROUTE_CONTROL_TOKEN` when set, else the file.
/// It is never logged.
fn read_token(path: Option<&Path>) -> anyhow::Result<Vec<u8>> {
    if let Ok(token) = std::env::var(TOKEN_ENV)
        && !token.trim().is_empty()
    {
        return Ok(token.trim().as_bytes().to_vec());
    }
    let path = path.with_context(|| format!("no token: set server.token_file or {TOKEN_ENV}"))?;
    let token = std::fs::read_to_string(path)
        .with_context(|| format!("cannot read server.token_file {}", path.display()))?;
    let token = token.trim();
    anyhow::ensure!(
        !token.is_empty(),
        "server.token_file {} is empty; put the bearer token in it",
        path.display()
    );
    Ok(token.as_bytes().to_vec())
}

fn serve(cfg: ControlConfig) -> anyhow::Result<()> {
    init_logging(cfg.log.format, &cfg.log.level)?;
    let token = read_token(cfg.server.token_file.as_deref())?;
    let rt = runtime()?;
    rt.block_on(async move {
        let listener = tokio::net::TcpListener::bind(cfg.server.address)
            .await
            .with_context(|| format!("cannot listen on server.address {}", cfg.server.address))?;
        let metrics = Arc::new(ControlMetrics::new());
        let (tx, rx) = tokio::sync::watch::channel(None);
        // Epochs start from the clock: a restart never goes back.
        let builder = Builder::new(source::now_ms() / 1000);
        let src = source::Source::new(&cfg.source).await;
        let poller = tokio::spawn(source::run(src, builder, tx, Arc::clone(&metrics)));
        let state = Arc::new(ServerState {
            token,
            max_wait: cfg.server.max_wait,
            table: rx,
            metrics,
        });
        tracing::info!(address = %cfg.server.address, "edgeroute-control serving");
        let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
        tokio::select! {
            _ = server::serve(state, listener) => {}
            _ = term.recv() => tracing::info!("SIGTERM: stopping"),
            _ = tokio::signal::ctrl_c() => tracing::info!("SIGINT: stopping"),
        }
        poller.abort();
        anyhow::Ok(())
    })
}

fn init_logging(format: LogFormat, level: &str) -> anyhow::Result<()> {
    let filter = match std::env::var("RUST_LOG") {
        Ok(v) if !v.is_empty() => tracing_subscriber::EnvFilter::try_new(&v)?,
        _ => tracing_subscriber::EnvFilter::try_new(level)?,
    };
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stdout()));
    match format {
        LogFormat::Text => builder.try_init(),
        LogFormat::Json => builder.json().flatten_event(true).try_init(),
    }
    .map_err(|e| anyhow::anyhow!("cannot set up logging: {e}"))
}
