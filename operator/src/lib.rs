#![forbid(unsafe_code)]
//! leakhunt-operator: the `leakhunt` binary's library.

pub mod crd;
pub mod node;
