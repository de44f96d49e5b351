//! Starts tracemalloc in a live CPython 3.14+ the way `leakhunt hunt --allocation-sites` does at
//! snapshot A (for bench/allocation-sites.sh). Usage: trace_start PID [FRAMES]
use leakhunt_analyzer::python::remote;

fn main() {
    let mut args = std::env::args().skip(1);
    let pid: i32 = args.next().and_then(|p| p.parse().ok()).unwrap_or_else(|| {
        eprintln!("usage: trace_start PID [FRAMES]");
        std::process::exit(2)
    });
    let frames = args
        .next()
        .and_then(|f| f.parse().ok())
        .unwrap_or(remote::DEFAULT_FRAMES);
    match remote::open(pid).and_then(|r| remote::start_tracing(&r, frames, remote::DEFAULT_TIMEOUT))
    {
        Ok(t) => println!("{t:?}"),
        Err(e) => {
            eprintln!("trace_start: {e}");
            std::process::exit(1)
        }
    }
}
