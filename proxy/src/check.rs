//! `edgeroute-proxy check`: what `run` would load, validated without serving.

use edgeroute_config::{ProxyConfig, RoutingTable, TableSource};

/// Loads every TLS listener's certificate and key, and the client
/// certificate for the control plane (`table.client_tls`), as `run`
/// would; the error names each one that is wrong, a line each. What loads
/// but will not serve every client (a certificate outside its dates, which
/// `run` presents with an error logged) is given back as warnings.
pub fn listeners(cfg: &ProxyConfig) -> Result<Vec<String>, String> {
    let now = crate::tls::unix_now();
    let mut errors = Vec::new();
    let mut warnings = Vec::new();
    for (i, files) in cfg
        .listeners
        .iter()
        .enumerate()
        .filter_map(|(i, l)| Some((i, l.tls.as_ref()?)))
    {
        match crate::tls::TlsCert::load(format!("listeners[{i}].tls"), files) {
            Ok(cert) => warnings.extend(cert.date_warning(now)),
            Err(e) => errors.push(e),
        }
    }
    if let TableSource::Control {
        client_tls: Some(files),
        ..
    } = &cfg.table
    {
        match crate::tls::TlsCert::load_as(crate::tls::Role::Client, "table.client_tls", files) {
            Ok(cert) => warnings.extend(
                [cert.date_warning(now), cert.ca_warning()]
                    .into_iter()
                    .flatten(),
            ),
            Err(e) => errors.push(e),
        }
    }
    if errors.is_empty() {
        Ok(warnings)
    } else {
        Err(errors.join("\n"))
    }
}

/// What `run` reads besides the config and the table before it serves: the
/// token files (present, not empty, fit for an `Authorization` field), the
/// CA certificates of an `https://` control plane, and the log filter
/// (`log.level`, or `RUST_LOG` when set). A token that is easy to guess
/// is given back as a warning.
pub fn secrets_and_logs(cfg: &ProxyConfig) -> Result<Vec<String>, String> {
    let mut errors = Vec::new();
    let mut warnings = Vec::new();
    let mut token =
        |field: &str, path: &std::path::Path| match edgeroute_config::read_secret(field, path) {
            Ok(token) => {
                warnings.extend(edgeroute_config::weak_token(field, &token));
                warnings.extend(edgeroute_config::writable_by_others(field, path));
            }
            Err(e) => errors.push(e),
        };
    if let Some(path) = &cfg.admin.token_file {
        token("admin.token_file", path);
    }
    if let TableSource::Control {
        token_file,
        url,
        ca_file,
        ..
    } = &cfg.table
    {
        token("table.token_file", token_file);
        errors.extend(crate::table_source::connector(url, ca_file.as_deref(), None).err());
    }
    errors.extend(
        crate::logging::filter(&cfg.log.level)
            .err()
            .map(|e| e.to_string()),
    );
    if errors.is_empty() {
        Ok(warnings)
    } else {
        Err(errors.join("\n"))
    }
}

/// Validates the routing table the config names against the config's regions.
pub fn table_file(cfg: &ProxyConfig) -> Result<(String, Vec<String>), String> {
    let path = match &cfg.table {
        TableSource::File { path, .. } => path,
        TableSource::Control { url, .. } => {
            return Ok((
                format!(
                    "{}, local {}, table from the control plane at {url}",
                    regions(cfg.regions.len()),
                    cfg.local_region_name()
                ),
                Vec::new(),
            ));
        }
    };
    let bytes = RoutingTable::read_file(path)
        .map_err(|e| format!("table.path: cannot read {}: {e}", path.display()))?;
    let table = RoutingTable::from_json(&bytes)
        .map_err(|r| format!("table.path: {}: {r}", path.display()))?;
    table
        .admit(None, cfg.regions.iter().map(|r| r.name.as_str()))
        .map_err(|r| format!("table.path: {}: {r}", path.display()))?;
    let mut warnings: Vec<String> = RoutingTable::unknown_keys(&bytes)
        .into_iter()
        .map(|key| {
            format!(
                "table.path: {}: `{key}` is no key of a routing table and is ignored (misspelt?)",
                path.display()
            )
        })
        .collect();
    if table.primary_region.is_none() {
        warnings.push(format!(
            "table.path: {}: the table names no primary region (\"primary_region\": null): every write gets 503 until one does",
            path.display()
        ));
    }
    Ok((
        format!(
            "{}, local {}, table epoch {} version {} {}",
            regions(cfg.regions.len()),
            cfg.local_region_name(),
            table.epoch,
            table.version,
            table.writes_summary()
        ),
        warnings,
    ))
}

/// `n regions`, or `1 region`.
fn regions(n: usize) -> String {
    format!("{n} region{}", if n == 1 { "" } else { "s" })
}
