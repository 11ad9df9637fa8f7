//! Assembles and runs the proxy: routing state, the table source, the admin
//! listener, and the HTTP listeners (on the proxy's own accept loop, as one
//! Pingora service).

use crate::admin;
use crate::dns::{self, Dns};
use crate::health::prober;
use crate::listen::{self, Listener, Listeners, Transport};
use crate::service::EdgeProxy;
use crate::state::AppState;
use crate::table_source;
use crate::tls::{self, TlsCert};
use crate::topology::Topology;
use anyhow::Context;
use edgeroute_config::{ProxyConfig, TableSource};
use pingora_core::connectors::{ConnectorOptions, TransportConnector};
use pingora_core::listeners::tls::Acceptor;
use pingora_core::server::configuration::{Opt, ServerConf};
use pingora_core::server::{RunArgs, Server};
use std::sync::Arc;

/// Runs the proxy until it is stopped by a signal. Start-up problems (a
/// backend that does not resolve, a busy port, a bad table) are returned.
pub fn run(config: ProxyConfig) -> anyhow::Result<()> {
    let open_files = edgeroute_config::raise_open_file_limit();
    // The admin API, the table source, health probes, DNS refresh and the
    // exit on drain run on a runtime of their own, which outlives Pingora's
    // listeners during shutdown.
    let control = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .thread_name("edgeroute-control")
        .enable_all()
        .build()
        .context("cannot start the control runtime")?;
    let dns = Arc::new({
        let _enter = control.enter();
        Dns::new(&config.dns)?
    });
    let answers = control.block_on(dns::resolve_all(&config, &dns))?;
    let addrs: Vec<Vec<Vec<_>>> = answers
        .iter()
        .map(|r| r.iter().map(|a| a.addrs.clone()).collect())
        .collect();
    let topology = Topology::build(&config, &addrs);
    let admin_token = match &config.admin.token_file {
        None => None,
        Some(path) => Some(
            edgeroute_config::TokenFile::open("admin.token_file", path)
                .map_err(anyhow::Error::msg)?,
        ),
    };
    // The control plane's token, CA certificates and client certificate,
    // read before anything is bound or started; one Authorization header
    // for the table and the reports.
    let mut identity = None;
    let mut control_client = match &config.table {
        TableSource::Control {
            url,
            token_file,
            ca_file,
            client_tls,
            ..
        } => {
            // Read again every 10 s, for the table's asks and the reports.
            let auth = Arc::new(
                edgeroute_config::TokenFile::open("table.token_file", token_file)
                    .map_err(anyhow::Error::msg)?,
            );
            identity = client_tls
                .as_ref()
                .map(|files| TlsCert::load_as(tls::Role::Client, "table.client_tls", files))
                .transpose()
                .map_err(anyhow::Error::msg)?;
            if let Some(warning) = identity.as_ref().and_then(|c| c.ca_warning()) {
                tracing::warn!("{warning}");
            }
            let connector = table_source::connector(url, ca_file.as_deref(), identity.clone())
                .map_err(anyhow::Error::msg)?;
            Some((connector, auth))
        }
        TableSource::File { .. } => None,
    };
    // Pingora's defaults are fixed /tmp paths: two proxies on a host would collide.
    let run_file = |ext: &str| {
        std::env::temp_dir()
            .join(format!("edgeroute-proxy-{}.{ext}", std::process::id()))
            .display()
            .to_string()
    };
    let conf = ServerConf {
        threads: config.runtime.threads,
        work_stealing: config.runtime.work_stealing,
        // `exit_when_drained` ends the process once nothing is in flight,
        // or when the grace period is over, saying how many requests it
        // cuts: Pingora's own grace runs longer, so its teardown (which
        // drops the requests still in flight) never comes first.
        grace_period_seconds: Some(config.shutdown.grace_period.as_secs() + 5),
        graceful_shutdown_timeout_seconds: Some(1),
        pid_file: run_file("pid"),
        upgrade_sock: run_file("sock"),
        ..ServerConf::default()
    };
    // Upstream TLS trusts what Pingora's connector trusts by default.
    let connector = TransportConnector::new(Some(ConnectorOptions::from_server_conf(&conf)));
    let state = Arc::new(AppState::new(config, topology, admin_token, connector));
    let cfg = &state.config;

    // A file table must be good at start-up; a control-plane table arrives
    // once the proxy runs, and /ready waits for it.
    let mut taken_table = Vec::new();
    let table_description = match &cfg.table {
        TableSource::File { path, .. } => {
            taken_table = table_source::load_initial(&state, path)?;
            path.display().to_string()
        }
        TableSource::Control { url, .. } => format!("{url}/v1/table"),
    };

    // Bind now so that a busy port is reported before anything starts.
    let admin = std::net::TcpListener::bind(cfg.admin.address).map_err(|e| {
        anyhow::anyhow!(edgeroute_config::accept::cannot_listen(
            "admin.address",
            cfg.admin.address,
            &e
        ))
    })?;
    admin.set_nonblocking(true)?;
    // Every listener is bound, and every certificate loaded, before
    // anything starts.
    let mut listeners = Vec::new();
    let mut certs = Vec::new();
    for (i, l) in cfg.listeners.iter().enumerate() {
        let transport = match &l.tls {
            Some(files) => {
                let cert = TlsCert::load(format!("listeners[{i}].tls"), files)
                    .map_err(anyhow::Error::msg)?;
                let acceptor = Acceptor::from_server_config(cert.server_config(tls::ALPN));
                certs.push((l.address.to_string(), cert));
                Transport::Tls(Arc::new(acceptor))
            }
            None if l.h2c => Transport::H2c,
            None => Transport::Plain,
        };
        let socket = listen::bind(l.address).map_err(|e| {
            anyhow::anyhow!(edgeroute_config::accept::cannot_listen(
                &format!("listeners[{i}].address"),
                l.address,
                &e
            ))
        })?;
        listeners.push(Listener { socket, transport });
    }

    {
        let _enter = control.enter();
        for region in &state.topology.regions {
            for backend in region.backends().iter() {
                prober::spawn(Arc::clone(&state), Arc::clone(backend));
            }
        }
        for (ri, region) in answers.into_iter().enumerate() {
            let refresh_at = region.iter().map(|a| a.refresh_at).collect();
            control.spawn(dns::refresh_region(
                Arc::clone(&state),
                Arc::clone(&dns),
                ri,
                refresh_at,
            ));
        }
    }
    control.spawn(admin::serve(
        Arc::clone(&state),
        {
            let _enter = control.enter();
            tokio::net::TcpListener::from_std(admin)?
        },
        cfg.admin.max_connections,
    ));
    match cfg.table.clone() {
        TableSource::File {
            path,
            watch_interval,
        } => {
            control.spawn(table_source::watch_file(
                Arc::clone(&state),
                path,
                watch_interval,
                std::mem::take(&mut taken_table),
            ));
        }
        TableSource::Control {
            url,
            wait,
            max_backoff,
            report,
            ..
        } => {
            let (connector, auth) = control_client
                .take()
                .context("the control plane's client was not made")?;
            if let Some(interval) = report {
                control.spawn(table_source::report_to_control(
                    Arc::clone(&state),
                    url.clone(),
                    connector.clone(),
                    auth.clone(),
                    interval,
                ));
            }
            control.spawn(table_source::poll_control(
                Arc::clone(&state),
                url,
                connector,
                auth,
                wait,
                max_backoff,
            ));
        }
    }
    // Also without TLS listeners: it catches SIGHUP, whose default action
    // would stop the proxy when nothing else does (a control-plane table).
    let rereads = {
        let _enter = control.enter();
        crate::lifecycle::Rereads::new(tls::WATCH_INTERVAL, "the certificate files")
    };
    certs.extend(identity.map(|cert| ("table.client_tls".to_owned(), cert)));
    control.spawn(tls::watch(certs, Arc::clone(&state), rereads));
    control.spawn(exit_when_drained(Arc::clone(&state)));
    control.spawn(prune_idle_connections(Arc::clone(&state)));

    let mut server = Server::new_with_opt_and_conf(None::<Opt>, conf);
    server.bootstrap();

    let proxy = Arc::new(EdgeProxy::new(Arc::clone(&state)));
    let max_connections = cfg.limits.client_connections(open_files);
    server.add_service(Listeners::new(
        "edgeroute",
        proxy,
        listeners,
        max_connections,
    ));

    let snap = state.router.load();
    tracing::info!(
        listeners = ?cfg.listeners.iter().map(|l| format!("{}{}", if l.tls.is_some() { "https://" } else { "http://" }, l.address)).collect::<Vec<_>>(),
        admin = %cfg.admin.address,
        local_region = state.topology.regions[state.topology.local].name.as_ref(),
        epoch = snap.as_ref().map(|s| s.epoch()),
        version = snap.as_ref().map(|s| s.version()),
        primary = snap
            .as_ref()
            .and_then(|s| s.table.primary_region.as_deref())
            .unwrap_or("none"),
        table = %table_description,
        threads = cfg.runtime.threads,
        open_files,
        max_client_connections = max_connections,
        "edgeroute-proxy started"
    );
    server.run(RunArgs {
        shutdown_signal: Box::new(crate::lifecycle::SignalWatch(
            Arc::clone(&state.lifecycle),
            state.config.shutdown.keep_accepting,
        )),
    });
    tracing::info!("edgeroute-proxy stopped");
    drop(control);
    Ok(())
}

/// After SIGTERM, exits 0 as soon as no request is in flight, or when the
/// grace period runs out.
async fn exit_when_drained(state: Arc<AppState>) {
    state.lifecycle.shutdown_started().await;
    let grace = state.config.shutdown.grace_period;
    // The server library's own line names a longer period: its teardown
    // is set to come after this one's end.
    tracing::info!(
        grace_period = ?grace,
        in_flight = state.lifecycle.inflight(),
        "waiting at most shutdown.grace_period for the requests in flight"
    );
    match tokio::time::timeout(grace, state.lifecycle.drained()).await {
        Ok(()) => tracing::info!("all in-flight requests finished; exiting"),
        Err(_) => tracing::warn!(
            still_in_flight = state.lifecycle.inflight(),
            grace_period = ?grace,
            "grace period over; exiting with requests still in flight"
        ),
    }
    std::process::exit(0);
}

/// Closes pooled backend connections that outlived `timeouts.pool_idle` or
/// that their backend closed, also for backends no request goes to: a
/// request only looks at the pool of the backend it was sent to.
async fn prune_idle_connections(state: Arc<AppState>) {
    let every = (state.config.timeouts.pool_idle / 2).clamp(
        std::time::Duration::from_secs(1),
        std::time::Duration::from_secs(30),
    );
    let mut tick = tokio::time::interval(every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        let now = std::time::Instant::now();
        for region in &state.topology.regions {
            for backend in region.backends().iter() {
                backend.idle.prune(now);
            }
        }
    }
}
