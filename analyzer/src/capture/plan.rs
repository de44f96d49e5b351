//! Which mappings a capture writes, and how big the core will be.
//!
//! Every mapping gets a PT_LOAD (so readers see the whole address space, as in kernel cores); only
//! those whose contents matter get bytes: all writable memory, anonymous memory, and the read-only
//! file-backed mappings of ELF objects (code and `.rodata`: type names, vtables, string constants
//! live there, and a core that carries them is readable on another machine). Read-only mappings of
//! other files (locale archives, fonts, data files) are left out, like the kernel does.

use std::collections::HashMap;
use std::io::{IoSliceMut, Read};

use nix::sys::uio::{process_vm_readv, RemoteIoVec};
use nix::unistd::Pid;

use crate::image::Mapping;

/// One mapping of the address space and whether its bytes go into the core.
#[derive(Debug, Clone)]
pub(crate) struct Region {
    pub mapping: Mapping,
    pub dump: bool,
}

impl Region {
    /// Bytes this region occupies in the core file.
    pub fn file_bytes(&self) -> u64 {
        if self.dump {
            self.mapping.len()
        } else {
            0
        }
    }
}

/// Decide, for each mapping of `pid`, whether its bytes are written.
pub(crate) fn plan(pid: i32, maps: &[Mapping]) -> Vec<Region> {
    let mut is_elf: HashMap<&str, bool> = HashMap::new();
    maps.iter()
        .map(|m| {
            let dump = match dump_class(m) {
                Class::Skip => false,
                Class::Dump => true,
                Class::IfElf(path) => *is_elf
                    .entry(path)
                    .or_insert_with(|| file_is_elf(pid, maps, path)),
            };
            Region {
                mapping: m.clone(),
                dump,
            }
        })
        .collect()
}

enum Class<'a> {
    Skip,
    Dump,
    IfElf(&'a str),
}

fn dump_class(m: &Mapping) -> Class<'_> {
    let path = m.path.as_deref().unwrap_or("");
    if !m.perms.read || m.is_empty() {
        // PROT_NONE guard pages and reservations: nothing to read.
        return Class::Skip;
    }
    if matches!(path, "[vvar]" | "[vvar_vclock]" | "[vsyscall]") {
        // Kernel pages that cannot be read through another process and hold no program state.
        return Class::Skip;
    }
    if is_device(path) {
        // Reading device memory can have side effects or hang; it is not heap.
        return Class::Skip;
    }
    if m.perms.write || !m.is_file_backed() {
        return Class::Dump;
    }
    match m.path.as_deref() {
        Some(p) => Class::IfElf(p),
        None => Class::Dump,
    }
}

/// A mapping of a device file. `/dev/zero` (shared anonymous memory) and `/dev/shm/` (POSIX shared
/// memory, a tmpfs) are memory, not devices.
fn is_device(path: &str) -> bool {
    path.starts_with("/dev/") && path != "/dev/zero" && !path.starts_with("/dev/shm/")
}

/// Whether `path` as mapped in `pid` is an ELF object: the first bytes of its offset-0 mapping, or
/// of the file seen through the process's root (it may live in another mount namespace).
fn file_is_elf(pid: i32, maps: &[Mapping], path: &str) -> bool {
    let mut magic = [0u8; 4];
    if let Some(head) = maps
        .iter()
        .find(|m| m.offset == 0 && m.perms.read && m.path.as_deref() == Some(path))
    {
        let ok = process_vm_readv(
            Pid::from_raw(pid),
            &mut [IoSliceMut::new(&mut magic)],
            &[RemoteIoVec {
                base: head.start as usize,
                len: 4,
            }],
        );
        if ok == Ok(4) {
            return &magic == b"\x7fELF";
        }
    }
    std::fs::File::open(format!("/proc/{pid}/root{path}"))
        .and_then(|mut f| f.read_exact(&mut magic))
        .is_ok()
        && &magic == b"\x7fELF"
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::image::parse_maps;

    #[test]
    fn classifies_mappings() {
        let maps = parse_maps(
            "\
00400000-00401000 r--p 00000000 fd:01 1 /usr/share/locale/locale-archive
01000000-01100000 rw-p 00000000 00:00 0 [heap]
7f0000000000-7f0000001000 ---p 00000000 00:00 0
7f0000001000-7f0000002000 r--p 00000000 00:00 0
7f0000002000-7f0000003000 rw-s 00000000 00:05 3 /dev/dri/card0
7f0000003000-7f0000004000 rw-s 00000000 00:01 4 /dev/zero (deleted)
7f0000004000-7f0000005000 r--p 00000000 00:00 0 [vvar]
7f0000005000-7f0000006000 r-xp 00000000 00:00 0 [vdso]
7f0000006000-7f0000007000 rw-p 00001000 fd:01 5 /usr/share/data.bin
",
        );
        let plan = plan(std::process::id() as i32, &maps);
        let dumped: Vec<bool> = plan.iter().map(|r| r.dump).collect();
        // The locale archive is not mapped in this process and is not an ELF file anyway.
        assert_eq!(
            dumped,
            [false, true, false, true, false, true, false, true, true]
        );
        assert_eq!(plan[1].file_bytes(), 0x100000);
        assert_eq!(plan[2].file_bytes(), 0);
    }

    #[test]
    fn recognises_own_executable_as_elf() {
        let pid = std::process::id() as i32;
        let maps = crate::image::read_maps(pid).expect("own maps");
        let exe = std::fs::read_link("/proc/self/exe").expect("exe");
        let exe = exe.to_string_lossy();
        assert!(file_is_elf(pid, &maps, &exe));
        let plan = plan(pid, &maps);
        assert!(plan
            .iter()
            .any(|r| r.dump && !r.mapping.perms.write && r.mapping.path.as_deref() == Some(&exe)));
    }
}
