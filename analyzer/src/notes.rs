//! The note leakhunt adds to the cores it writes: what a core from the kernel or gcore lacks
//! (capture time, RSS, process start time, the names of `[heap]`-style mappings).

use serde::{Deserialize, Serialize};

/// Owner name of our note (ELF notes are namespaced by owner).
pub const LEAKHUNT_NOTE_NAME: &[u8] = b"LEAKHUNT";
pub const NT_LEAKHUNT_INFO: u32 = 1;

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct LeakhuntNote {
    pub pid: i32,
    /// Seconds since the Unix epoch.
    pub captured_at: f64,
    pub rss: Option<u64>,
    pub start_time: Option<u64>,
    pub exe: Option<String>,
    /// How long the target was stopped, in seconds.
    pub stopped_seconds: f64,
    /// `(start, name)` of mappings with pseudo-names such as `[heap]` and `[stack]`.
    #[serde(default)]
    pub pseudo_names: Vec<(u64, String)>,
}
