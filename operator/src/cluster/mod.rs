//! leakhunt in a cluster: the controller (`leakhunt operator`), the node agent
//! (`leakhunt agent`) and the analyzer Job's program (`leakhunt analyze-job`), and what they
//! share — which pods are hunted (`policy`), workload resolution, LeakReport reads and writes
//! through the API (`report_api`), the analyzer Job's spec (`job_spec`), label selectors,
//! leader election.

pub mod agent;
pub mod analyze_job;
pub mod controller;
pub mod job_spec;
pub mod kills;
pub mod leader;
pub mod policy;
pub mod report_api;
pub mod selector;
pub mod workload;
