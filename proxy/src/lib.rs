//! edgeroute's data plane.
//!
//! A proxy on Pingora's core that sends reads to the local region (or the nearest one
//! that can serve) and writes to the region holding the database writer, from
//! one routing snapshot that the table source swaps in whole.

pub mod admin;
pub mod check;
pub mod connect;
pub mod date;
pub mod demo;
pub mod dns;
pub mod downstream;
pub mod fields;
pub mod h1;
pub mod h2;
pub mod h2_budget;
pub mod health;
pub mod kernel;
pub mod lifecycle;
pub mod listen;
pub mod logging;
pub mod metrics;
pub mod respond;
pub mod rng;
pub mod route;
pub mod ryw;
pub mod server;
pub mod service;
pub mod sim;
pub mod snapshot;
pub mod state;
pub mod table_source;
pub mod tcp;
pub mod tls;
pub mod topology;
pub mod tunnel;
pub mod upstream;
pub mod via;
