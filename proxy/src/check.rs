//! `edgeroute-proxy check`: what `run` would load, validated without serving.

use edgeroute_config::{ProxyConfig, RoutingTable, TableSource};

/// Loads every TLS listener's certificate and key, as `run` would; the
/// error names each one that is wrong, a line each.
pub fn listeners(cfg: &ProxyConfig) -> Result<(), String> {
    let errors: Vec<String> = cfg
        .listeners
        .iter()
        .enumerate()
        .filter_map(|(i, l)| crate::tls::ListenerCert::load(i, l.tls.as_ref()?).err())
        .collect();
    if errors.is_empty() {
        Ok(())
    } else {
        Err(errors.join("\n"))
    }
}

/// What `run` reads besides the config and the table before it serves: the
/// token files (present, not empty, fit for an `Authorization` field) and the
/// log filter (`log.level`, or `RUST_LOG` when set).
pub fn secrets_and_logs(cfg: &ProxyConfig) -> Result<(), String> {
    let mut errors = Vec::new();
    if let Some(path) = &cfg.admin.token_file {
        errors.extend(edgeroute_config::read_secret("admin.token_file", path).err());
    }
    if let TableSource::Control { token_file, .. } = &cfg.table {
        errors.extend(edgeroute_config::read_secret("table.token_file", token_file).err());
    }
    errors.extend(
        crate::logging::filter(&cfg.log.level)
            .err()
            .map(|e| e.to_string()),
    );
    if errors.is_empty() {
        Ok(())
    } else {
        Err(errors.join("\n"))
    }
}

/// Validates the routing table the config names against the config's regions.
pub fn table_file(cfg: &ProxyConfig) -> Result<String, String> {
    let path = match &cfg.table {
        TableSource::File { path, .. } => path,
        TableSource::Control { url, .. } => {
            return Ok(format!(
                "{} regions, local {}, table from the control plane at {url}",
                cfg.regions.len(),
                cfg.local_region_name()
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
    Ok(format!(
        "{} regions, local {}, table epoch {} version {} primary {}",
        cfg.regions.len(),
        cfg.local_region_name(),
        table.epoch,
        table.version,
        table.primary_region.as_deref().unwrap_or("none")
    ))
}
