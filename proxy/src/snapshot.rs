//! One routing snapshot: the table in force, resolved against the topology.
//!
//! A snapshot is built off the request path when a table is admitted, then
//! published with a single `ArcSwap` store. A request loads it once and routes
//! every attempt from that same snapshot, so it never sees half of one table
//! and half of another.

use crate::topology::Topology;
use arc_swap::ArcSwapOption;
use edgeroute_config::{RegionState, RoutingTable};
use http::HeaderValue;
use std::sync::Arc;
use std::time::SystemTime;

pub struct Snapshot {
    pub table: RoutingTable,
    /// `x-edgeroute-epoch`, formatted once.
    pub epoch_header: HeaderValue,
    /// [`RoutingTable::routing_digest`], for the proxy's reports, computed
    /// once.
    pub routing_digest: String,
    /// Per configured region (topology order). Regions the table omits are down.
    pub states: Box<[RegionState]>,
    pub weights: Box<[u32]>,
    pub primary: Option<usize>,
    pub failover_in_progress: bool,
    /// Regions other than the local one, in the order reads fall back to them.
    pub fallback: Box<[usize]>,
    pub loaded_at: SystemTime,
}

impl Snapshot {
    /// `table` must have been admitted against `topology`'s regions.
    pub fn build(topology: &Topology, table: RoutingTable) -> Self {
        let n = topology.regions.len();
        let mut states = vec![RegionState::Down; n];
        let mut weights = vec![0; n];
        for (i, r) in topology.regions.iter().enumerate() {
            if let Some(entry) = table.region(&r.name) {
                states[i] = entry.state;
                weights[i] = entry.weight;
            }
        }
        let primary = table
            .primary_region
            .as_deref()
            .and_then(|p| topology.regions.iter().position(|r| &*r.name == p));
        let fallback = (0..n).filter(|&i| i != topology.local).collect();
        Snapshot {
            epoch_header: HeaderValue::from(table.epoch),
            routing_digest: table.routing_digest(),
            failover_in_progress: table.failover_in_progress,
            states: states.into(),
            weights: weights.into(),
            primary,
            fallback,
            table,
            loaded_at: SystemTime::now(),
        }
    }

    pub fn epoch(&self) -> u64 {
        self.table.epoch
    }

    pub fn version(&self) -> u64 {
        self.table.version
    }
}

/// The one place the table in force lives.
#[derive(Default)]
pub struct Router {
    current: ArcSwapOption<Snapshot>,
}

impl Router {
    pub fn load(&self) -> Option<Arc<Snapshot>> {
        self.current.load_full()
    }

    pub fn store(&self, snapshot: Snapshot) {
        self.current.store(Some(Arc::new(snapshot)));
    }
}
