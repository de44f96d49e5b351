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
    /// How the memory was copied (absent in cores written before pre-copy).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub method: Option<CaptureMethod>,
}

/// How a capture copied the target's memory.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "kebab-case")]
pub enum CaptureMethod {
    /// Copied while it ran, then stopped to copy again only what it wrote meanwhile.
    PreCopy {
        /// How writes were tracked: `soft-dirty` or `userfaultfd write-protect`.
        tracker: String,
        /// Copy rounds while it ran.
        rounds: u32,
        /// Bytes copied in the first round.
        precopied: u64,
        /// Bytes read while it was stopped.
        dirty: u64,
    },
    /// Stopped for the whole copy; `why` when pre-copy was not possible.
    StopTheWorld { why: Option<String> },
}

impl std::fmt::Display for CaptureMethod {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        use crate::util::human_bytes;
        match self {
            CaptureMethod::PreCopy {
                tracker,
                rounds,
                precopied,
                dirty,
            } => write!(
                f,
                "pre-copied {}, {} dirty; {tracker} tracking, {rounds} round{}",
                human_bytes(*precopied),
                human_bytes(*dirty),
                if *rounds == 1 { "" } else { "s" }
            ),
            CaptureMethod::StopTheWorld { why: None } => {
                write!(f, "stopped for the whole copy, as asked")
            }
            CaptureMethod::StopTheWorld { why: Some(w) } => {
                write!(f, "stopped for the whole copy: {w}")
            }
        }
    }
}
