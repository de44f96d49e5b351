//! A live process, read through `/proc/PID/maps` and `process_vm_readv`.
//!
//! Reading a running process gives a view that may be inconsistent while it runs; `capture`
//! stops it first. Analysis of a live PID is for quick looks.

use std::io::IoSliceMut;
use std::path::{Path, PathBuf};

use nix::errno::Errno;
use nix::sys::uio::{process_vm_readv, RemoteIoVec};
use nix::unistd::Pid;

use super::{Error, Mapping, MemoryImage, Perms, ProcessInfo, ReadError, Result};

pub struct LiveProcess {
    pid: i32,
    mappings: Vec<Mapping>,
    info: ProcessInfo,
}

impl LiveProcess {
    pub fn open(pid: i32) -> Result<LiveProcess> {
        let mappings = read_maps(pid)?;
        let info = process_info(pid)?;
        let me = LiveProcess {
            pid,
            mappings,
            info,
        };
        // Probe one readable page so a permission problem is reported now, not as missing data later.
        if let Some(m) = me.mappings.iter().find(|m| m.perms.read && m.perms.write) {
            let mut b = [0u8; 8];
            match process_vm_readv(
                Pid::from_raw(pid),
                &mut [IoSliceMut::new(&mut b)],
                &[RemoteIoVec {
                    base: m.start as usize,
                    len: 8,
                }],
            ) {
                Err(Errno::EPERM) | Err(Errno::EACCES) => return Err(Error::Permission { pid }),
                Err(Errno::ESRCH) => return Err(Error::NoSuchProcess { pid }),
                _ => {}
            }
        }
        Ok(me)
    }

    pub fn pid(&self) -> i32 {
        self.pid
    }
}

impl MemoryImage for LiveProcess {
    fn mappings(&self) -> &[Mapping] {
        &self.mappings
    }

    fn read(&self, addr: u64, buf: &mut [u8]) -> Result<(), ReadError> {
        if buf.is_empty() {
            return Ok(());
        }
        let len = buf.len();
        let remote = [RemoteIoVec {
            base: addr as usize,
            len,
        }];
        match process_vm_readv(
            Pid::from_raw(self.pid),
            &mut [IoSliceMut::new(buf)],
            &remote,
        ) {
            Ok(n) if n == len => Ok(()),
            Ok(n) => Err(ReadError::Missing(addr + n as u64)),
            Err(_) => Err(if self.mapping_at(addr).is_some() {
                ReadError::Missing(addr)
            } else {
                ReadError::Unmapped(addr)
            }),
        }
    }

    fn info(&self) -> &ProcessInfo {
        &self.info
    }
}

fn proc_err(pid: i32, what: &str, e: std::io::Error) -> Error {
    match e.kind() {
        std::io::ErrorKind::NotFound => Error::NoSuchProcess { pid },
        std::io::ErrorKind::PermissionDenied => Error::Permission { pid },
        _ => Error::Process {
            pid,
            what: what.into(),
            source: e,
        },
    }
}

/// Parse `/proc/PID/maps`.
pub fn read_maps(pid: i32) -> Result<Vec<Mapping>> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/maps"))
        .map_err(|e| proc_err(pid, "reading maps", e))?;
    Ok(parse_maps(&text))
}

/// Parse the text of a `/proc/PID/maps` file; lines that do not parse are skipped.
pub fn parse_maps(text: &str) -> Vec<Mapping> {
    let mut out = Vec::new();
    for line in text.lines() {
        let mut it = line.splitn(6, ' ');
        let (Some(range), Some(perms), Some(offset), Some(_dev), Some(inode)) =
            (it.next(), it.next(), it.next(), it.next(), it.next())
        else {
            continue;
        };
        let rest = it.next().unwrap_or("").trim_start();
        let Some((s, e)) = range.split_once('-') else {
            continue;
        };
        let (Ok(start), Ok(end), Ok(offset)) = (
            u64::from_str_radix(s, 16),
            u64::from_str_radix(e, 16),
            u64::from_str_radix(offset, 16),
        ) else {
            continue;
        };
        let path = if rest.is_empty() {
            None
        } else {
            // A deleted file keeps its mapping; the name is still the best we have.
            Some(rest.trim_end_matches(" (deleted)").to_owned())
        };
        let _ = inode;
        out.push(Mapping {
            start,
            end,
            perms: Perms::parse(perms),
            offset,
            path,
        });
    }
    out.sort_by_key(|m| m.start);
    out
}

/// What `/proc` says about a process: executable, command, RSS, start time, threads.
pub fn process_info(pid: i32) -> Result<ProcessInfo> {
    let stat = crate::procfs::read_stat(Path::new("/proc"), pid, None)
        .map_err(|e| proc_err(pid, "reading stat", e))?;
    let start_time = stat.start_time;
    let threads = stat.threads.map_or(1, |n| n as usize);
    let page = nix::unistd::sysconf(nix::unistd::SysconfVar::PAGE_SIZE)
        .ok()
        .flatten()
        .unwrap_or(4096) as u64;
    let rss = stat.rss_pages.map(|p| p * page);
    let comm = std::fs::read_to_string(format!("/proc/{pid}/comm"))
        .ok()
        .map(|s| s.trim_end().to_owned());
    let exe = std::fs::read_link(format!("/proc/{pid}/exe"))
        .ok()
        .map(|p: PathBuf| {
            p.to_string_lossy()
                .trim_end_matches(" (deleted)")
                .to_owned()
        });
    let captured_at = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .ok()
        .map(|d| d.as_secs_f64());
    Ok(ProcessInfo {
        pid,
        exe,
        comm,
        captured_at,
        rss,
        start_time,
        threads,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_maps_lines() {
        let text = "\
55d0c0a00000-55d0c0a21000 r--p 00000000 fd:01 1234    /usr/bin/python3.11
55d0c2000000-55d0c2400000 rw-p 00000000 00:00 0       [heap]
7f0000000000-7f0000100000 rw-p 00000000 00:00 0
7f0000100000-7f0000200000 r-xp 00010000 fd:01 99      /lib/x86_64-linux-gnu/libc.so.6 (deleted)
garbage line
";
        let maps = parse_maps(text);
        assert_eq!(maps.len(), 4);
        assert_eq!(maps[0].path.as_deref(), Some("/usr/bin/python3.11"));
        assert!(maps[1].is_heap() && maps[1].perms.write && !maps[1].perms.exec);
        assert!(maps[2].is_anonymous());
        assert_eq!(maps[3].offset, 0x10000);
        assert_eq!(
            maps[3].path.as_deref(),
            Some("/lib/x86_64-linux-gnu/libc.so.6")
        );
        assert!(maps[3].perms.exec && maps[3].is_file_backed());
    }

    #[test]
    fn reads_own_memory() {
        let value: u64 = 0x1122_3344_5566_7788;
        let p = LiveProcess::open(std::process::id() as i32).expect("open self");
        let addr = &value as *const u64 as u64;
        assert_eq!(p.read_u64(addr), Ok(value));
        assert!(p.info().rss.unwrap_or(0) > 0);
        assert!(p.read_u64(8).is_err());
    }
}
