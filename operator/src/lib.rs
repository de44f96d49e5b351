#![forbid(unsafe_code)]
//! leakhunt-operator: the `leakhunt` binary's library — node-level memory watching (shared by
//! the local hunt and the node agent), the custom resources, and the local hunt mode.

pub mod crd;
pub mod http;
pub mod hunt;
pub mod metrics;
pub mod metrics;
pub mod node;
