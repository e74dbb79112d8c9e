//! What the kernel says about the server process: resident memory and CPU
//! time, read from `/proc/<pid>/status` and `/proc/<pid>/stat`, and the
//! open-file limit the fan-out needs.
//!
//! Hand-written rather than a `/proc` crate: two fields of two files.

use std::io;
use std::time::Duration;

/// Resident set size of process `pid`, in bytes (`VmRSS` of
/// `/proc/<pid>/status`, which the kernel gives in KiB).
///
/// Errors: the process is gone, or the line is missing (not Linux).
pub fn rss_bytes(pid: u32) -> io::Result<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    status
        .lines()
        .find_map(|line| line.strip_prefix("VmRSS:"))
        .and_then(|rest| {
            rest.trim()
                .trim_end_matches("kB")
                .trim()
                .parse::<u64>()
                .ok()
        })
        .map(|kib| kib * 1024)
        .ok_or_else(|| io::Error::other(format!("no VmRSS in /proc/{pid}/status")))
}

/// CPU time process `pid` has used so far, user plus system, all threads
/// (live and exited) together: fields 14 and 15 of `/proc/<pid>/stat`.
///
/// Resolution is one clock tick (`sysconf(_SC_CLK_TCK)`, 10 ms on most
/// kernels), so only differences over seconds of load mean anything.
///
/// Errors: the process is gone, or the file does not parse.
pub fn cpu_time(pid: u32) -> io::Result<Duration> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))?;
    // Field 2 (the command name) is in parentheses and may contain spaces,
    // so count fields from the last ')'.
    let after_name = stat
        .rfind(')')
        .map(|i| &stat[i + 1..])
        .ok_or_else(|| io::Error::other("unparsable /proc/<pid>/stat"))?;
    // After the name come field 3 (state), 4, ...: utime is field 14, stime 15.
    let fields: Vec<&str> = after_name.split_whitespace().collect();
    let field = |n: usize| -> io::Result<u64> {
        fields
            .get(n - 3)
            .and_then(|f| f.parse().ok())
            .ok_or_else(|| io::Error::other(format!("no field {n} in /proc/<pid>/stat")))
    };
    let ticks = field(14)? + field(15)?;
    Ok(Duration::from_secs_f64(
        ticks as f64 / clock_ticks_per_second(),
    ))
}

fn clock_ticks_per_second() -> f64 {
    // SAFETY: sysconf only reads a system constant; no pointers involved.
    let ticks = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    if ticks > 0 {
        ticks as f64
    } else {
        100.0
    }
}

/// The machine's 1, 5 and 15 minute load averages (`/proc/loadavg`), for
/// the record: other work on the machine makes every figure noisier.
pub fn load_average() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .map(|l| l.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_else(|e| format!("unknown ({e})"))
}

/// Raises this process's soft open-file limit to at least `wanted` (as far
/// as the hard limit allows) and returns the limit now in force.
///
/// Children inherit resource limits, so calling this before spawning the
/// server raises the server's limit too: each SSE subscriber is one socket
/// on each side, and the usual soft limit of 1,024 stops the 10k fan-out
/// long before the server does.
pub fn raise_open_file_limit(wanted: u64) -> io::Result<u64> {
    rlimit::increase_nofile_limit(wanted)
}
