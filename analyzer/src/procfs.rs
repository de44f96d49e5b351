//! `/proc/PID/stat`, parsed in one place.
//!
//! The command name (field 2) is in parentheses and may itself hold spaces and parentheses
//! (`gunicorn: worker (x)`): the numbered fields start after the LAST `)`. A field that is missing
//! or does not parse is `None`; callers decide what a missing field means.

use std::path::Path;

/// The fields of `/proc/PID/stat` that leakhunt uses, numbered as in proc(5).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Stat {
    /// Field 2, without its parentheses.
    pub comm: String,
    /// Field 3: `R`, `S`, `D`, `Z`, `X`, ...
    pub state: Option<char>,
    /// Field 4.
    pub ppid: Option<i32>,
    /// Field 5.
    pub pgrp: Option<i32>,
    /// Field 6.
    pub session: Option<i32>,
    /// Field 9.
    pub flags: Option<u64>,
    /// Field 14, in clock ticks.
    pub utime: Option<u64>,
    /// Field 15, in clock ticks.
    pub stime: Option<u64>,
    /// Field 19.
    pub nice: Option<i64>,
    /// Field 20.
    pub threads: Option<u64>,
    /// Field 22: clock ticks since boot when the process started.
    pub start_time: Option<u64>,
    /// Field 24, in pages.
    pub rss_pages: Option<u64>,
    /// Field 28: where the initial stack starts (argc, argv, envp, then the auxiliary vector).
    pub start_stack: Option<u64>,
}

/// Parses the text of a stat file. A line without a `)` gives an empty [`Stat`].
pub fn parse_stat(text: &str) -> Stat {
    let Some(close) = text.rfind(')') else {
        return Stat::default();
    };
    let open = text.find('(').map_or(0, |i| i + 1);
    let comm = text.get(open..close).unwrap_or("").to_owned();
    let fields: Vec<&str> = text
        .get(close + 1..)
        .unwrap_or("")
        .split_whitespace()
        .collect();
    // fields[0] is field 3 (state).
    let field = |n: usize| fields.get(n - 3).copied();
    fn num<T: std::str::FromStr>(s: Option<&str>) -> Option<T> {
        s?.parse().ok()
    }
    Stat {
        comm,
        state: field(3).and_then(|s| s.chars().next()),
        ppid: num(field(4)),
        pgrp: num(field(5)),
        session: num(field(6)),
        flags: num(field(9)),
        utime: num(field(14)),
        stime: num(field(15)),
        nice: num(field(19)),
        threads: num(field(20)),
        start_time: num(field(22)),
        rss_pages: num(field(24)),
        start_stack: num(field(28)),
    }
}

/// Reads `PROC_ROOT/PID/stat`, or `PROC_ROOT/PID/task/TID/stat` for one thread; `proc_root` is
/// `/proc` except in tests.
pub fn read_stat(proc_root: &Path, pid: i32, tid: Option<i32>) -> std::io::Result<Stat> {
    let mut path = proc_root.join(pid.to_string());
    if let Some(tid) = tid {
        path = path.join("task").join(tid.to_string());
    }
    std::fs::read_to_string(path.join("stat")).map(|text| parse_stat(&text))
}

/// The PID process `pid` has in its own PID namespace (the last of `NSpid:` in its status): the
/// name a containerised JVM gives its attach socket and performance data file.
pub fn ns_pid(pid: i32) -> Option<i32> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = status.lines().find_map(|l| l.strip_prefix("NSpid:"))?;
    line.split_whitespace().last()?.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    const LINE: &str = "4242 (gunicorn: worker (x)) S 4200 4201 4202 0 -1 4194560 100 0 0 0 5 1 0 0 20 -5 3 0 987654 125000000 20480 18446744073709551615 94000000000000 94000000100000 140737488346000";

    #[test]
    fn parses_every_used_field() {
        let s = parse_stat(LINE);
        assert_eq!(s.comm, "gunicorn: worker (x)");
        assert_eq!(s.state, Some('S'));
        assert_eq!(
            (s.ppid, s.pgrp, s.session),
            (Some(4200), Some(4201), Some(4202))
        );
        assert_eq!(s.flags, Some(4194560));
        assert_eq!((s.utime, s.stime), (Some(5), Some(1)));
        assert_eq!(s.nice, Some(-5));
        assert_eq!(s.threads, Some(3));
        assert_eq!(s.start_time, Some(987654));
        assert_eq!(s.rss_pages, Some(20480));
        assert_eq!(s.start_stack, Some(140737488346000));
    }

    #[test]
    fn tricky_command_names() {
        for comm in [
            "a b",
            ") S 1 2 3",
            "((",
            "x) R 99 (y",
            "",
            "12345678901234)",
        ] {
            let s = parse_stat(&format!("7 ({comm}) Z 1 7 7 0 -1 0 0 0 0 0 9 8"));
            assert_eq!(s.comm, comm);
            assert_eq!(s.state, Some('Z'), "{comm:?}");
            assert_eq!(s.ppid, Some(1), "{comm:?}");
            assert_eq!((s.utime, s.stime), (Some(9), Some(8)), "{comm:?}");
            assert_eq!(s.start_time, None, "{comm:?}");
        }
    }

    #[test]
    fn short_and_garbled_lines() {
        assert_eq!(parse_stat(""), Stat::default());
        assert_eq!(parse_stat("42 no parentheses S 1"), Stat::default());
        let s = parse_stat("1 (x) S 0");
        assert_eq!((s.state, s.ppid, s.pgrp), (Some('S'), Some(0), None));
        let s = parse_stat("1 (x)");
        assert_eq!((s.comm.as_str(), s.state), ("x", None));
        assert_eq!(parse_stat("1 (x) S notanumber").ppid, None);
    }

    #[test]
    fn reads_under_a_proc_root() {
        let root = tempfile::tempdir().unwrap();
        let task = root.path().join("42/task/43");
        std::fs::create_dir_all(&task).unwrap();
        std::fs::write(root.path().join("42/stat"), "42 (main) S 1").unwrap();
        std::fs::write(task.join("stat"), "43 (worker) R 1").unwrap();
        let p = read_stat(root.path(), 42, None).unwrap();
        assert_eq!((p.comm.as_str(), p.state), ("main", Some('S')));
        let t = read_stat(root.path(), 42, Some(43)).unwrap();
        assert_eq!((t.comm.as_str(), t.state), ("worker", Some('R')));
        assert!(read_stat(root.path(), 44, None).is_err());
        let me = read_stat(Path::new("/proc"), std::process::id() as i32, None).unwrap();
        assert!(me.start_time.is_some() && me.threads.is_some_and(|n| n >= 1));
    }
}
