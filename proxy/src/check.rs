//! `edgeroute-proxy check`: what `run` would load, validated without serving.

use edgeroute_config::{ProxyConfig, RoutingTable, TableSource};

/// Loads every TLS listener's certificate and key, as `run` would.
pub fn listeners(cfg: &ProxyConfig) -> Result<(), String> {
    for (i, l) in cfg.listeners.iter().enumerate() {
        if let Some(files) = &l.tls {
            crate::tls::listener_config(i, files)?;
        }
    }
    Ok(())
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
    let bytes = std::fs::read(path)
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
