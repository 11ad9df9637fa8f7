//! `edgeroute-proxy`: parse the command line, then run, check or demo.

use clap::{Parser, Subcommand};
use edgeroute_config::{ConfigError, ProxyConfig};
use edgeroute_proxy::{demo, logging, server};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[derive(Parser)]
#[command(
    name = "edgeroute-proxy",
    version,
    about = "Multi-region edge routing proxy: reads stay local, writes go to the primary region"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the proxy.
    Run {
        /// The proxy's config file (TOML).
        #[arg(long, short, value_name = "FILE")]
        config: PathBuf,
    },
    /// Validate a config file (and the routing table it names) and exit.
    Check {
        /// The proxy's config file (TOML).
        #[arg(long, short, value_name = "FILE")]
        config: PathBuf,
    },
    /// Three simulated regions behind a proxy for us-east-1, on loopback.
    Demo {
        /// Where the proxy takes requests.
        #[arg(long, value_name = "IP:PORT", default_value = "127.0.0.1:8080", value_parser = ip_port)]
        listen: SocketAddr,
        /// Where its admin listener answers.
        #[arg(long, value_name = "IP:PORT", default_value = "127.0.0.1:9901", value_parser = ip_port)]
        admin: SocketAddr,
        /// Take the table from this control plane (and report to it)
        /// instead of a table file.
        #[arg(long, value_name = "URL", requires = "token_file")]
        control: Option<String>,
        /// The control plane's token, with --control.
        #[arg(long, value_name = "FILE", requires = "control")]
        token_file: Option<PathBuf>,
        /// CA certificates (PEM) that sign an https:// --control's
        /// certificate; without it, the system's.
        #[arg(long, value_name = "FILE", requires = "control")]
        ca_file: Option<PathBuf>,
    },
}

/// An address to listen on, written as an IP address and a port (a name
/// such as `localhost` resolves to several or none).
fn ip_port(raw: &str) -> Result<SocketAddr, String> {
    raw.parse().map_err(|_| {
        format!("give an IP address and a port, such as 127.0.0.1:8080 or [::1]:8080 (got {raw:?})")
    })
}

fn main() -> ExitCode {
    edgeroute_proxy::tls::install_crypto_provider();
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Check { config } => return check(&config),
        Command::Run { config } => load(&config).and_then(|c| {
            logging::init(c.log.format, &c.log.level)?;
            server::run(c)
        }),
        Command::Demo {
            listen,
            admin,
            control,
            token_file,
            ca_file,
        } => logging::init(edgeroute_config::LogFormat::Text, "info").and_then(|()| {
            // The demo's config lives in a folder of its own: relative
            // paths are taken from here.
            let token_file = token_file.map(std::path::absolute).transpose()?;
            let ca_file = ca_file.map(std::path::absolute).transpose()?;
            if ca_file.is_some()
                && !control
                    .as_deref()
                    .is_some_and(|u| u.starts_with("https://"))
            {
                anyhow::bail!(
                    "--ca-file is for an https:// --control URL; leave it out for http://"
                );
            }
            demo::run(demo::DemoOptions {
                listen,
                admin,
                control: control
                    .zip(token_file)
                    .map(|(url, token_file)| demo::DemoControl {
                        url,
                        token_file,
                        ca_file,
                    }),
            })
        }),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn load(path: &Path) -> anyhow::Result<ProxyConfig> {
    Ok(ProxyConfig::load(path)?)
}

fn check(path: &Path) -> ExitCode {
    match ProxyConfig::load(path) {
        Ok(cfg) => {
            // Each part is checked whatever the others gave, so that one
            // run names every problem.
            let listeners = edgeroute_proxy::check::listeners(&cfg);
            let secrets = edgeroute_proxy::check::secrets_and_logs(&cfg);
            let table = edgeroute_proxy::check::table_file(&cfg);
            match (listeners, secrets, table) {
                (Ok(warnings), Ok(weak), Ok((summary, unknown))) => {
                    for warning in warnings.into_iter().chain(weak).chain(unknown) {
                        eprintln!("{}: warning: {warning}", path.display());
                    }
                    println!("{}: ok ({summary})", path.display());
                    ExitCode::SUCCESS
                }
                (listeners, secrets, table) => {
                    let errors = [listeners.err(), secrets.err(), table.err()];
                    for e in errors.into_iter().flatten() {
                        eprintln!("{}: {e}", path.display());
                    }
                    ExitCode::FAILURE
                }
            }
        }
        Err(ConfigError::Invalid { path, errors }) => {
            eprintln!("{}: {} invalid field(s):", path.display(), errors.len());
            for e in errors.iter() {
                eprintln!("  {e}");
            }
            ExitCode::FAILURE
        }
        Err(e) => {
            eprintln!("{e}");
            ExitCode::FAILURE
        }
    }
}
