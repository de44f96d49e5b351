//! Node-level memory watching, shared by the local hunt (`leakhunt hunt`) and the node agent:
//! cgroup v1/v2 memory, the kubelet's cgroup layouts, per-process memory, growth and time to
//! OOM, the snapshot threshold state machine, and OOM-kill detection.

pub mod cgroup;
pub mod growth;
pub mod jvm;
pub mod kubelet;
pub mod oom;
pub mod procs;
pub mod threshold;
pub mod watch;

pub use cgroup::{Cgroup, CgroupMemory, CgroupVersion, Hierarchy};
pub use growth::GrowthWindow;
pub use kubelet::{CgroupDriver, PodCgroup, QosClass};
pub use oom::{KillSource, OomKill, OomWatch};
pub use procs::{ProcessKey, ProcessMemory};
pub use threshold::{Action, Level, Observation, ThresholdMachine, Thresholds};
pub use watch::{CgroupWatcher, Sample};
