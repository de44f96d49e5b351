//! Entry points for the fuzz targets (`analyzer/fuzz`) and their regression tests: parse untrusted
//! bytes as a core and run every reader over it. Must never panic, hang or allocate without bound.

use std::path::Path;

use crate::image::{CoreFile, MemoryImage};

/// A sysroot that does not exist, so fuzz inputs never make us open the host's files.
const NO_SYSROOT: &str = "/nonexistent/leakhunt-fuzz-sysroot";

/// Parse `data` as a core and, if it parses, take the census and read every mapping's first bytes.
pub fn core_reader(data: &[u8]) {
    let Ok(core) = CoreFile::from_bytes("fuzz-input", data.to_vec(), Some(Path::new(NO_SYSROOT)))
    else {
        return;
    };
    for m in core.mappings().iter().take(1000) {
        let mut buf = [0u8; 64];
        let _ = core.read(m.start, &mut buf);
        let _ = core.read_cstr(m.start, 256);
        let _ = core.read(m.end.saturating_sub(8), &mut buf[..16]);
    }
    let _ = crate::census::take(&core, Some(Path::new(NO_SYSROOT)));
    if let Ok(Some(heap)) = crate::python::load(&core) {
        let _ = heap.census();
    }
}
