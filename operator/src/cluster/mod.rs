//! leakhunt in a cluster: the operator (`leakhunt operator`), the node agent (`leakhunt agent`)
//! and the analyzer Job (`leakhunt analyze-job`), and what they share — workload resolution,
//! report reads and writes, label selectors, leader election.

pub mod agent;
pub mod analyze_job;
pub mod job;
pub mod kills;
pub mod leader;
pub mod operator;
pub mod reports;
pub mod selector;
pub mod workload;
