#![forbid(unsafe_code)]
//! leakhunt-operator: the `leakhunt` binary's library — node-level memory watching (shared by
//! the local hunt and the node agent), the custom resources, the local hunt mode, the cluster
//! components (operator, agent, analyzer Job), alert delivery, metrics and the admin HTTP server.

pub mod alerts;
pub mod cluster;
pub mod crd;
pub mod html;
pub mod http;
pub mod hunt;
pub mod metrics;
pub mod node;
pub mod sites;
pub mod snapshot;
pub mod status;
pub mod units;
