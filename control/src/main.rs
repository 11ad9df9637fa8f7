//! `edgeroute-control`: serve the routing table, show it, or check a config.

use anyhow::Context;
use clap::{Parser, Subcommand};
use edgeroute_config::{
    ControlConfig, ControlConfigError, LogFormat, RoutingTable, SourceConfig, TOKEN_ENV, TokenFile,
};
use edgeroute_control::actions::{self, ControlView, Output, Runner};
use edgeroute_control::automation::{self, Automation};
use edgeroute_control::aws::{AwsRequests, AwsSource};
use edgeroute_control::builder::Builder;
use edgeroute_control::metrics::ControlMetrics;
use edgeroute_control::notify::Notifier;
use edgeroute_control::registry::Registry;
use edgeroute_control::server::{self, ServerState};
use edgeroute_control::source;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

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
    /// Serve the routing table (and run automated failover when enabled).
    Serve {
        /// The control plane's config file (TOML).
        #[arg(long, short, value_name = "FILE")]
        config: PathBuf,
    },
    /// Read the source once and print the table that would be served.
    Show {
        /// The control plane's config file (TOML).
        #[arg(long, short, value_name = "FILE")]
        config: PathBuf,
    },
    /// Validate a config file and read its source once.
    Check {
        /// The control plane's config file (TOML).
        #[arg(long, short, value_name = "FILE")]
        config: PathBuf,
    },
    /// The writer, every region, the table served, the proxies, and the
    /// last failover and drill.
    Status {
        /// The control plane's config file (TOML).
        #[arg(long, short, value_name = "FILE")]
        config: PathBuf,
    },
    /// Move the Aurora writer to REGION: a planned switchover (no data
    /// loss) unless --unplanned. Follows it until every proxy routes on the
    /// new epoch and prints the timeline.
    Failover {
        /// The control plane's config file (TOML).
        #[arg(long, short, value_name = "FILE")]
        config: PathBuf,
        /// The region to move the writer to.
        #[arg(long, value_name = "REGION", value_parser = region_name)]
        to: String,
        /// FailoverGlobalCluster: for when the primary region is lost.
        /// Writes not yet replicated to REGION are lost.
        #[arg(long, requires = "allow_data_loss", conflicts_with = "drill")]
        unplanned: bool,
        /// Required with --unplanned, to say so.
        #[arg(long, requires = "unplanned")]
        allow_data_loss: bool,
        /// Switch over to REGION and back, and keep the result as the last
        /// failover test.
        #[arg(long)]
        drill: bool,
        /// Move the writer even to a region Route 53 reports unhealthy
        /// (for a health check known to be wrong).
        #[arg(long)]
        to_unhealthy: bool,
        /// Print the current state and every step; change nothing.
        #[arg(long)]
        dry_run: bool,
        /// Give up following after this long (default: actions.timeout).
        #[arg(long, value_parser = follow_timeout)]
        timeout: Option<Duration>,
    },
    /// Take REGION out of DNS: its latency records are removed (a copy is
    /// kept in the zone for undrain), or its weighted records set to
    /// weight 0. Reads move to the other regions; follows it until every
    /// proxy routes on the new table.
    Drain {
        /// The control plane's config file (TOML).
        #[arg(long, short, value_name = "FILE")]
        config: PathBuf,
        /// The region to take out of DNS.
        #[arg(value_parser = region_name)]
        region: String,
        /// Print the current state and every step; change nothing.
        #[arg(long)]
        dry_run: bool,
        /// Give up following after this long (default: actions.timeout).
        #[arg(long, value_parser = follow_timeout)]
        timeout: Option<Duration>,
    },
    /// Put REGION back in DNS: its kept latency records, or its weighted
    /// records at the weight they had before the drain (unless --weight).
    Undrain {
        /// The control plane's config file (TOML).
        #[arg(long, short, value_name = "FILE")]
        config: PathBuf,
        /// The region to put back.
        #[arg(value_parser = region_name)]
        region: String,
        /// The Route 53 weight to give weighted records (1-255), instead
        /// of the one kept by the drain.
        #[arg(long, value_parser = clap::value_parser!(i64).range(1..=255))]
        weight: Option<i64>,
        /// Print the current state and every step; change nothing.
        #[arg(long)]
        dry_run: bool,
        /// Give up following after this long (default: actions.timeout).
        #[arg(long, value_parser = follow_timeout)]
        timeout: Option<Duration>,
    },
}

impl Command {
    fn config(&self) -> &Path {
        match self {
            Command::Serve { config }
            | Command::Show { config }
            | Command::Check { config }
            | Command::Status { config }
            | Command::Failover { config, .. }
            | Command::Drain { config, .. }
            | Command::Undrain { config, .. } => config,
        }
    }
}

fn main() -> ExitCode {
    edgeroute_config::tls::install_crypto_provider();
    let cli = Cli::parse();
    let cfg = match ControlConfig::load(cli.command.config()) {
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
    if !matches!(cli.command, Command::Serve { .. }) {
        init_command_logging();
    }
    let result = match cli.command {
        Command::Serve { .. } => serve(cfg),
        Command::Show { .. } => show(&cfg, true).map(|_| ()),
        Command::Check { ref config } => check(&cfg, config),
        Command::Status { .. } => status(&cfg),
        ref action => act(&cfg, action),
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

/// `check`: every part a serve would load, each checked whatever the
/// others gave, so that one run names every problem; then the source's
/// table, when all of them loaded.
fn check(cfg: &ControlConfig, config: &Path) -> anyhow::Result<()> {
    let mut errors: Vec<String> = Vec::new();
    let mut note = |part: anyhow::Result<()>| errors.extend(part.err().map(|e| format!("{e:#}")));
    note(
        edgeroute_config::log_filter(&cfg.log.level)
            .map(|_| ())
            .map_err(anyhow::Error::msg),
    );
    match read_token(cfg.server.token_file.as_deref()) {
        Ok(token) => {
            let source = match edgeroute_config::token_from_env() {
                Ok(Some(_)) => TOKEN_ENV,
                _ => "server.token_file",
            };
            if let Some(weak) = edgeroute_config::weak_token(source, &token.current()) {
                eprintln!("warning: {weak}");
            }
            if source == "server.token_file"
                && let Some(path) = &cfg.server.token_file
                && let Some(loose) = edgeroute_config::writable_by_others(source, path)
            {
                eprintln!("warning: {loose}");
            }
        }
        Err(e) => note(Err(e)),
    }
    note(client_verifier(cfg).map(|_| ()));
    note(edgeroute_control::notify::webhook_token(&cfg.notify).map(|_| ()));
    if let Some(warning) = cleartext(cfg) {
        eprintln!("warning: {warning}");
    }
    // Presented all the same, as the proxy's listeners do.
    let now = edgeroute_config::tls::unix_now();
    match server_certificate(cfg) {
        Ok(cert) => cert
            .iter()
            .flat_map(|c| [c.date_warning(now), c.ca_warning()])
            .flatten()
            .for_each(|w| eprintln!("warning: {w}")),
        Err(e) => note(Err(e)),
    }
    match commands_identity(cfg) {
        Ok(identity) => {
            identity
                .iter()
                .flat_map(|c| [c.date_warning(now), c.ca_warning()])
                .flatten()
                .for_each(|w| eprintln!("warning: {w}"));
            note(commands_tls(cfg, identity).map(|_| ()));
        }
        Err(e) => note(Err(e)),
    }
    match errors.as_slice() {
        [] => {}
        [one] => anyhow::bail!("{one}"),
        many => anyhow::bail!("{} problems:\n  {}", many.len(), many.join("\n  ")),
    }
    let table = show(cfg, false)?;
    if table.primary_region.is_none() {
        eprintln!(
            "{}: warning: the source names no primary region: every write is refused (503 no_primary) until it does",
            config.display()
        );
    }
    actions::print_text(&format!("{}: ok ({})\n", config.display(), summary(&table)));
    Ok(())
}

/// Builds the table the source gives now; prints it when `print`.
fn show(cfg: &ControlConfig, print: bool) -> anyhow::Result<RoutingTable> {
    // A first read: nothing stands in for what it cannot read.
    let (view, _) = runtime()?.block_on(async {
        source::Source::new(
            &cfg.source,
            Some(&cfg.actions.history_file),
            AwsRequests::default(),
        )
        .await
        .read()
        .await
    })?;
    let mut builder = Builder::new(source::now_ms() / 1000);
    let table = builder
        .apply(&view, source::now_ms())
        .context("the source gave no table")?;
    if print {
        actions::print_text(&format!("{}\n", serde_json::to_string_pretty(table)?));
    }
    Ok(table.clone())
}

/// What `check` says of the table the source gives, in a few words.
fn summary(table: &RoutingTable) -> String {
    let n = table.regions.len();
    format!(
        "{n} region{}, {}",
        if n == 1 { "" } else { "s" },
        table.writes_summary()
    )
}

/// The bearer token: `EDGEROUTE_CONTROL_TOKEN` when set, else the file.
/// It is never logged.
/// The file is read again every 10 s (see [`TokenFile`]).
fn read_token(path: Option<&Path>) -> anyhow::Result<TokenFile> {
    if let Some(token) = edgeroute_config::token_from_env().map_err(anyhow::Error::msg)? {
        return Ok(TokenFile::fixed(TOKEN_ENV, token));
    }
    let path = path.with_context(|| format!("no token: set server.token_file or {TOKEN_ENV}"))?;
    TokenFile::open("server.token_file", path).map_err(anyhow::Error::msg)
}

/// Pause between reads while an action is followed.
const FOLLOW_POLL: Duration = Duration::from_millis(250);

/// The endpoint AWS calls go to (an emulator), if configured.
fn endpoint(cfg: &ControlConfig) -> Option<&str> {
    match &cfg.source {
        SourceConfig::Aws(a) => a.endpoint_url.as_deref(),
        SourceConfig::File { .. } => None,
    }
}

async fn runner(
    cfg: &ControlConfig,
    control: ControlView,
    by: &'static str,
    out: Output,
    metrics: Option<Arc<ControlMetrics>>,
    shared: Option<Arc<AwsSource>>,
) -> anyhow::Result<Runner> {
    let SourceConfig::Aws(aws) = &cfg.source else {
        anyhow::bail!(
            "failover, drain and undrain act on AWS: set source.kind = \"aws\" in the control config"
        );
    };
    let aws = match shared {
        Some(shared) => shared,
        None => {
            let requests = AwsRequests::of(metrics.as_deref());
            Arc::new(AwsSource::new(aws, Some(&cfg.actions.history_file), requests).await)
        }
    };
    Ok(Runner {
        aws,
        control,
        notifier: Arc::new(Notifier::new(&cfg.notify, endpoint(cfg), metrics).await?),
        history_file: cfg.actions.history_file.clone(),
        timeout: cfg.actions.timeout,
        // One DescribeGlobalClusters call or one control-plane request per
        // read while following: fine-grained timelines, far below API limits.
        poll: FOLLOW_POLL,
        proxy_max_age: cfg.actions.proxy_max_age,
        by,
        operator: edgeroute_control::actions::operator(),
        out,
        to_unhealthy: false,
        sending: Default::default(),
    })
}

/// A region argument: a region's name, as the config and the tables
/// write it, checked before anything asks AWS.
fn region_name(raw: &str) -> Result<String, String> {
    edgeroute_config::check_region_name(raw).map(|()| raw.to_owned())
}

/// A `--timeout`: long enough to see a change through, since Route 53 and
/// Aurora take seconds at the least. A shorter one would make the change
/// and then report it failed.
fn follow_timeout(raw: &str) -> Result<Duration, String> {
    let timeout = humantime::parse_duration(raw)
        .map_err(|_| format!("must be a duration such as \"15m\" or \"90s\", got {raw:?}"))?;
    if let Some(why) = edgeroute_config::short_action_timeout(timeout) {
        return Err(why);
    }
    Ok(timeout)
}

/// The commands' view of the control plane.
fn control_view(cfg: &ControlConfig) -> anyhow::Result<ControlView> {
    control_view_with(
        cfg,
        Arc::new(read_token(cfg.server.token_file.as_deref())?),
        commands_identity(cfg)?,
    )
}

/// [`control_view`] with the token and the client certificate given (the
/// automation's: the server's token, a certificate it reloads).
fn control_view_with(
    cfg: &ControlConfig,
    token: Arc<TokenFile>,
    identity: Option<Arc<edgeroute_config::tls::TlsCert>>,
) -> anyhow::Result<ControlView> {
    ControlView::http(
        &cfg.actions.control_url,
        &cfg.actions.replica_urls,
        token,
        commands_tls(cfg, identity)?,
    )
}

/// The commands' TLS settings for an `https://` `actions.control_url`:
/// `actions.ca_file`'s CA certificates, else the system's, and their
/// certificate `identity` (`actions.client_tls`, see [`commands_identity`])
/// when given.
fn commands_tls(
    cfg: &ControlConfig,
    identity: Option<Arc<edgeroute_config::tls::TlsCert>>,
) -> anyhow::Result<Option<rustls::ClientConfig>> {
    if !cfg.actions.control_url.starts_with("https://") {
        return Ok(None);
    }
    edgeroute_config::tls::client_config(
        cfg.actions.ca_file.as_deref(),
        "actions.ca_file",
        identity,
    )
    .map(Some)
    .map_err(anyhow::Error::msg)
}

/// `actions.client_tls`'s certificate and key, loaded, when given.
fn commands_identity(
    cfg: &ControlConfig,
) -> anyhow::Result<Option<Arc<edgeroute_config::tls::TlsCert>>> {
    cfg.actions
        .client_tls
        .as_ref()
        .map(|files| {
            edgeroute_config::tls::TlsCert::load_as(
                edgeroute_config::tls::Role::Client,
                "actions.client_tls",
                files,
            )
        })
        .transpose()
        .map_err(anyhow::Error::msg)
}

/// What `server.client_ca` asks of every client, when given.
/// The file's bytes with the verifier built from them, so that a reload
/// compares with what is in force.
type ClientCheck = (Vec<u8>, Arc<dyn rustls::server::danger::ClientCertVerifier>);

fn client_verifier(cfg: &ControlConfig) -> anyhow::Result<Option<ClientCheck>> {
    cfg.server
        .client_ca
        .as_deref()
        .map(|ca| {
            let pem = edgeroute_config::tls::read_ca_file(ca, "server.client_ca")?;
            let verifier = edgeroute_config::tls::client_verifier_of(&pem, ca, "server.client_ca")?;
            Ok::<_, String>((pem, verifier))
        })
        .transpose()
        .map_err(anyhow::Error::msg)
}

/// `failover`, `drain`, `undrain`.
fn act(cfg: &ControlConfig, command: &Command) -> anyhow::Result<()> {
    runtime()?.block_on(async {
        let mut runner = runner(cfg, control_view(cfg)?, "cli", Output::Print, None, None).await?;
        let outcome = match command {
            Command::Failover {
                to,
                unplanned,
                drill,
                dry_run,
                timeout,
                to_unhealthy,
                ..
            } => {
                runner.timeout = timeout.unwrap_or(runner.timeout);
                runner.to_unhealthy = *to_unhealthy;
                if *drill {
                    runner.drill(to, *dry_run).await
                } else {
                    runner.move_writer(to, !unplanned, *dry_run).await
                }
            }
            Command::Drain {
                region,
                dry_run,
                timeout,
                ..
            } => {
                runner.timeout = timeout.unwrap_or(runner.timeout);
                runner.drain(region, *dry_run).await
            }
            Command::Undrain {
                region,
                weight,
                dry_run,
                timeout,
                ..
            } => {
                runner.timeout = timeout.unwrap_or(runner.timeout);
                runner.undrain(region, *weight, *dry_run).await
            }
            _ => unreachable!("act handles the runbook commands only"),
        };
        match outcome {
            Ok(op) if op.ok => Ok(()),
            Ok(op) => Err(anyhow::anyhow!(
                "{}",
                op.error
                    .unwrap_or_else(|| "the action did not finish".into())
            )),
            Err(refused) => Err(anyhow::anyhow!("refused: {refused}")),
        }
    })
}

fn status(cfg: &ControlConfig) -> anyhow::Result<()> {
    runtime()?.block_on(async {
        // What AWS says, or why it cannot be read: the control plane's
        // part is shown either way.
        let aws: Result<_, String> = match &cfg.source {
            SourceConfig::Aws(aws) => {
                let src =
                    AwsSource::new(aws, Some(&cfg.actions.history_file), AwsRequests::default())
                        .await;
                match src.state().await {
                    Ok(state) => Ok((state.view, state.failover, state.route53_unread)),
                    // Route 53 cannot be listed: the global cluster alone.
                    Err(e) if e.api == "ListResourceRecordSets" => {
                        let e = format!("{e}{}", src.unreached_advice(&e));
                        match actions::cluster_alone(&src, &e).await {
                            Ok(state) => {
                                actions::eprint_text(&format!(
                                    "warning: {e}; showing the global cluster alone (health, weights and lag unknown)\n"
                                ));
                                Ok((state.view, state.failover, state.route53_unread))
                            }
                            Err(e) => Err(e),
                        }
                    }
                    Err(e) => Err(format!("{e}{}", src.unreached_advice(&e))),
                }
            }
            file => source::Source::new(file, None, AwsRequests::default())
                .await
                .read()
                .await
                .map(|(view, _)| (view, None, false))
                .map_err(|e| e.to_string()),
        };
        if let Err(e) = &aws {
            actions::eprint_text(&format!("error: {e}\n"));
        }
        let control = control_view(cfg)?;
        let (text, unknown) = actions::describe_now(
            &control,
            &cfg.actions.history_file,
            aws.as_ref()
                .map(|(view, failover, dns_unread)| (view, *dns_unread, failover.as_ref()))
                .map_err(|_| "AWS could not be read: see the error line"),
        )
        .await;
        actions::print_text(&text);
        // A script that reads the status learns that part of it is unknown.
        anyhow::ensure!(
            unknown.is_empty(),
            "part of the status could not be read: {} (what was wrong is said above, or in the control plane's log)",
            unknown.join(", ")
        );
        anyhow::Ok(())
    })
}

fn serve(cfg: ControlConfig) -> anyhow::Result<()> {
    init_logging(cfg.log.format, &cfg.log.level)?;
    if let Some(warning) = cleartext(&cfg) {
        tracing::warn!("{warning}");
    }
    // Every proxy holds a connection open for its long poll.
    let open_files = edgeroute_config::raise_open_file_limit();
    let token = Arc::new(read_token(cfg.server.token_file.as_deref())?);
    let cert = server_certificate(&cfg)?;
    if let Some(warning) = cert.as_ref().and_then(|c| c.ca_warning()) {
        tracing::warn!("{warning}");
    }
    let clients = client_verifier(&cfg)?;
    let rt = runtime()?;
    rt.block_on(async move {
        let listener = tokio::net::TcpListener::bind(cfg.server.address)
            .await
            .map_err(|e| {
                anyhow::anyhow!(edgeroute_config::accept::cannot_listen(
                    "server.address",
                    cfg.server.address,
                    &e
                ))
            })?;
        // Caught from the start: with TLS it rereads the certificate, and
        // its default action would stop the process.
        let hangups = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup())?;
        let metrics = Arc::new(ControlMetrics::new());
        let channels: Vec<&str> = [
            cfg.notify.sns_topic_arn.as_ref().map(|_| "sns"),
            cfg.notify.webhook_url.as_ref().map(|_| "webhook"),
        ]
        .into_iter()
        .flatten()
        .collect();
        metrics.precreate(cfg.automation.enabled, &channels);
        let registry = Arc::new(Registry::default());
        let notifier =
            Arc::new(Notifier::new(&cfg.notify, endpoint(&cfg), Some(Arc::clone(&metrics))).await?);
        let (tx, rx) = tokio::sync::watch::channel(None);
        let (views_tx, views_rx) = tokio::sync::watch::channel(None);
        // Epochs start from the clock: a restart never goes back.
        let builder = Builder::new(source::now_ms() / 1000);
        let src = source::Source::new(
            &cfg.source,
            Some(&cfg.actions.history_file),
            AwsRequests::of(Some(&metrics)),
        )
        .await;
        let shared_aws = src.aws();
        // Proxies' numberings of the table, from their reports.
        let (numbering_tx, numbering_rx) = tokio::sync::mpsc::channel(64);
        let poller = tokio::spawn(source::run(
            src,
            builder,
            tx,
            views_tx,
            numbering_rx,
            Arc::clone(&notifier),
            Arc::clone(&metrics),
        ));
        // This process among replicas.
        let instance = uuid::Uuid::new_v4().simple().to_string();
        // The certificate the automation presents to the other replicas,
        // read again as it is renewed.
        let mut client_watcher = None;
        let automation = if cfg.automation.enabled {
            // The other replicas' proxies vote and are followed too.
            let replicas = if cfg.actions.replica_urls.is_empty() {
                None
            } else {
                let identity = commands_identity(&cfg)?;
                if let Some(cert) = &identity {
                    client_watcher = Some(tokio::spawn(server::watch_client_certificate(
                        Arc::clone(cert),
                        Arc::clone(&metrics),
                        tokio::signal::unix::signal(
                            tokio::signal::unix::SignalKind::hangup(),
                        )?,
                    )));
                }
                Some(Arc::new(control_view_with(
                    &cfg,
                    Arc::clone(&token),
                    identity,
                )?))
            };
            let local = ControlView::Local {
                table: rx.clone(),
                registry: Arc::clone(&registry),
                max_age: cfg.actions.proxy_max_age,
                replicas,
                instance: instance.clone(),
            };
            let runner = runner(
                &cfg,
                local,
                "automation",
                Output::Log,
                Some(Arc::clone(&metrics)),
                shared_aws,
            )
            .await?;
            tracing::info!(
                after = ?cfg.automation.after,
                max_replication_lag = ?cfg.automation.max_replication_lag,
                min_interval = ?cfg.automation.min_interval,
                "automated failover enabled"
            );
            Some(tokio::spawn(automation::run(
                Automation::new(cfg.automation.clone(), cfg.source.poll_interval()),
                views_rx,
                cfg.actions.proxy_max_age,
                Arc::new(runner),
                Arc::clone(&metrics),
            )))
        } else {
            None
        };
        let state = Arc::new(ServerState {
            token,
            max_wait: cfg.server.max_wait,
            table: rx,
            metrics,
            registry,
            proxy_max_age: cfg.actions.proxy_max_age,
            history_file: cfg.actions.history_file.clone(),
            automation: cfg.automation.enabled,
            numbering: numbering_tx,
            instance,
        });
        let (ca_read, clients) = clients.unzip();
        let tls: Option<server::Tls> = cert.as_ref().map(|cert| {
            Arc::new(arc_swap::ArcSwap::new(
                cert.server_config_for(server::ALPN, clients),
            ))
        });
        let watcher = cert.zip(tls.clone()).map(|(cert, tls)| {
            let client_ca = cfg.server.client_ca.clone().map(|path| server::ClientCa {
                read: ca_read,
                path,
                tls,
            });
            tokio::spawn(server::watch_certificate(
                cert,
                Arc::clone(&state.metrics),
                hangups,
                client_ca,
            ))
        });
        let room = edgeroute_config::accept::Room::new(
            cfg.server.connections(open_files),
            "server.max_connections",
            state.metrics.accept_waits.clone(),
        );
        tracing::info!(
            address = %cfg.server.address,
            scheme = if tls.is_some() { "https" } else { "http" },
            open_files,
            max_connections = room.max(),
            "edgeroute-control serving"
        );
        let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
        let broken = tokio::select! {
            e = server::serve(state, listener, tls, room) => Some(e),
            _ = term.recv() => {
                tracing::info!("SIGTERM: stopping");
                None
            }
            _ = tokio::signal::ctrl_c() => {
                tracing::info!("SIGINT: stopping");
                None
            }
        };
        poller.abort();
        for task in [automation, watcher, client_watcher].into_iter().flatten() {
            task.abort();
        }
        match broken {
            // Exits non-zero, so that a supervisor starts it again.
            Some(e) => Err(anyhow::anyhow!(
                "the listening socket on server.address {} is broken ({e}); no more connections can be accepted",
                cfg.server.address
            )),
            None => anyhow::Ok(()),
        }
    })
}

/// What `check` and start-up warn of a server reachable from other hosts
/// without TLS: the token and the tables would cross the network in the
/// clear.
fn cleartext(cfg: &ControlConfig) -> Option<String> {
    let address = cfg.server.address;
    (!address.ip().is_loopback() && cfg.server.tls.is_none()).then(|| {
        format!(
            "server.address {address} is reachable from other hosts and server.tls is not set: \
             the token and the tables cross the network unencrypted; give the server a \
             certificate (server.tls), unless the network encrypts it (a service mesh's mTLS)"
        )
    })
}

/// `server.tls`'s certificate and key, loaded, when given.
fn server_certificate(
    cfg: &ControlConfig,
) -> anyhow::Result<Option<Arc<edgeroute_config::tls::TlsCert>>> {
    cfg.server
        .tls
        .as_ref()
        .map(|files| {
            edgeroute_config::tls::TlsCert::load_as(
                edgeroute_config::tls::Role::ControlServer,
                "server.tls",
                files,
            )
        })
        .transpose()
        .map_err(anyhow::Error::msg)
}

/// A command's warnings (an AWS read that failed in part: a health check,
/// a lag) go to standard error as lines of their own, so that what its
/// output shows as unknown is said there; `RUST_LOG` overrides.
fn init_command_logging() {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("edgeroute_control=warn"));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .without_time()
        .with_target(false)
        .try_init();
}

fn init_logging(format: LogFormat, level: &str) -> anyhow::Result<()> {
    let filter = edgeroute_config::log_filter(level).map_err(anyhow::Error::msg)?;
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stdout()));
    match format {
        LogFormat::Text => builder.try_init(),
        LogFormat::Json => builder.json().flatten_event(true).try_init(),
    }
    .map_err(|e| anyhow::anyhow!("cannot set up logging: {e}"))
}
