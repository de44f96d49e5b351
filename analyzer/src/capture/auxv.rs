//! The target's auxiliary vector (the core's `NT_AUXV`). `/proc/PID/auxv` is readable by the
//! target's own user only (mode 0400: a plain permission check, not a ptrace one), so a node agent
//! holding `CAP_SYS_PTRACE` alone cannot open it for a container that runs as another user. Then it
//! is read where the kernel put it: on the target's initial stack, after argc, argv and envp, at
//! the address `/proc/PID/stat` gives (`startstack`), with `process_vm_readv`, which ptrace access
//! allows.

use std::io::{self, IoSliceMut};
use std::path::Path;

use nix::sys::uio::{process_vm_readv, RemoteIoVec};
use nix::unistd::Pid;

use crate::procfs;

/// Most of the initial stack read: argv and envp pointers, then the vector.
const WINDOW: usize = 1 << 20;
/// `AT_*` keys are small numbers (51 is the largest Linux defines today).
const MAX_KEY: u64 = 64;
/// Entries of the vector, its terminator included.
const MAX_ENTRIES: usize = 128;

/// The vector as `/proc/PID/auxv` gives it: (key, value) pairs of native words up to and
/// including `AT_NULL`.
pub(crate) fn read(pid: i32, task: i32) -> io::Result<Vec<u8>> {
    match std::fs::read(format!("/proc/{pid}/task/{task}/auxv")) {
        Err(e) if e.kind() == io::ErrorKind::PermissionDenied => from_stack(pid).map_err(|why| {
            io::Error::new(
                io::ErrorKind::PermissionDenied,
                format!("{e}; nor found on its stack: {why}"),
            )
        }),
        r => r,
    }
}

fn from_stack(pid: i32) -> Result<Vec<u8>, String> {
    let start = procfs::read_stat(Path::new("/proc"), pid, None)
        .map_err(|e| format!("reading its stat: {e}"))?
        .start_stack
        .filter(|&a| a != 0)
        .ok_or("no start of stack in its stat")?;
    let mut buf = vec![0u8; WINDOW];
    let n = process_vm_readv(
        Pid::from_raw(pid),
        &mut [IoSliceMut::new(&mut buf)],
        &[RemoteIoVec {
            base: start as usize,
            len: WINDOW,
        }],
    )
    .map_err(|e| format!("reading its stack: {e}"))?;
    buf.truncate(n);
    parse_stack(&buf).map(|v| v.to_vec())
}

/// The auxiliary vector in an initial stack that starts at argc.
fn parse_stack(stack: &[u8]) -> Result<&[u8], String> {
    let word = |i: usize| -> Option<u64> {
        let b = stack.get(i * 8..i * 8 + 8)?;
        Some(u64::from_ne_bytes(b.try_into().ok()?))
    };
    let short = || "the stack ends before the auxiliary vector".to_string();
    let argc = word(0).ok_or_else(short)?;
    if argc > (WINDOW / 8) as u64 {
        return Err(format!("argc {argc} is not a count"));
    }
    let mut i = 1 + argc as usize;
    if word(i).ok_or_else(short)? != 0 {
        return Err("argv is not NULL-terminated where argc says".into());
    }
    i += 1;
    while word(i).ok_or_else(short)? != 0 {
        i += 1;
    }
    let first = i + 1;
    for entry in 0..MAX_ENTRIES {
        let at = first + 2 * entry;
        let key = word(at).ok_or_else(short)?;
        word(at + 1).ok_or_else(short)?;
        if key == 0 {
            return Ok(&stack[first * 8..(at + 2) * 8]);
        }
        if key > MAX_KEY {
            return Err(format!("key {key} is not an AT_ type"));
        }
    }
    Err(format!("no AT_NULL within {MAX_ENTRIES} entries"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn words(w: &[u64]) -> Vec<u8> {
        w.iter().flat_map(|x| x.to_ne_bytes()).collect()
    }

    #[test]
    fn finds_the_vector_after_argv_and_envp() {
        // argc 2, argv, NULL, two envp, NULL, AT_PAGESZ 4096, AT_ENTRY, AT_NULL, then strings.
        let stack = words(&[
            2, 0x7f10, 0x7f20, 0, 0x7f30, 0x7f40, 0, 6, 4096, 9, 0x4010, 0, 0, 0x6c,
        ]);
        assert_eq!(
            parse_stack(&stack).unwrap(),
            &words(&[6, 4096, 9, 0x4010, 0, 0])[..]
        );
        // No environment at all.
        let stack = words(&[0, 0, 0, 6, 4096, 0, 0]);
        assert_eq!(parse_stack(&stack).unwrap(), &words(&[6, 4096, 0, 0])[..]);
    }

    #[test]
    fn refuses_what_is_not_an_initial_stack() {
        assert!(parse_stack(&[]).is_err());
        assert!(parse_stack(&words(&[u64::MAX])).is_err(), "argc");
        assert!(
            parse_stack(&words(&[1, 0x7f10, 0x7f20])).is_err(),
            "argv not terminated"
        );
        assert!(
            parse_stack(&words(&[0, 0, 0, 1000, 1, 0, 0])).is_err(),
            "not a key"
        );
        // Cut short inside the vector, or no terminator: never past the bytes read.
        assert!(parse_stack(&words(&[0, 0, 0, 6, 4096, 9])).is_err());
        let mut endless = vec![0u64, 0, 0];
        for _ in 0..200 {
            endless.extend([6, 4096]);
        }
        assert!(parse_stack(&words(&endless)).is_err());
    }
}
