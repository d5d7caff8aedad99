//! A process's own CPU time and memory: from `/proc` on Linux, from
//! `getrusage` elsewhere (macOS has no `/proc`).

use std::time::Duration;

/// CPU time (user + system) of the process or thread whose `stat` file is
/// `path` (`/proc/<pid>/stat`, `/proc/self/stat`, `/proc/thread-self/stat`).
pub fn cpu_time(path: &str) -> std::io::Result<Duration> {
    let stat = std::fs::read_to_string(path)?;
    let bad = || std::io::Error::other(format!("unexpected format of {path}"));
    // The command name is parenthesised and may contain spaces; utime and
    // stime are fields 14 and 15 of the line, 12 and 13 after the name.
    let rest = stat
        .rfind(')')
        .and_then(|i| stat.get(i + 2..))
        .ok_or_else(bad)?;
    let mut fields = rest.split_whitespace().skip(11);
    let mut next = || {
        fields
            .next()
            .and_then(|f| f.parse::<u64>().ok())
            .ok_or_else(bad)
    };
    let ticks = next()? + next()?;
    let hz = rustix::param::clock_ticks_per_second().max(1);
    Ok(Duration::from_nanos(
        ticks.saturating_mul(1_000_000_000) / hz,
    ))
}

/// CPU time (user + system) of this whole process, all threads.
pub fn own_cpu_time() -> std::io::Result<Duration> {
    #[cfg(target_os = "linux")]
    {
        cpu_time("/proc/self/stat")
    }
    #[cfg(not(target_os = "linux"))]
    {
        let usage = own_usage()?;
        let micros = |t: libc::timeval| t.tv_sec as u64 * 1_000_000 + t.tv_usec as u64;
        Ok(Duration::from_micros(
            micros(usage.ru_utime) + micros(usage.ru_stime),
        ))
    }
}

#[cfg(not(target_os = "linux"))]
fn own_usage() -> std::io::Result<libc::rusage> {
    let mut usage = std::mem::MaybeUninit::<libc::rusage>::zeroed();
    // SAFETY: getrusage writes one whole rusage into the buffer it is given.
    if unsafe { libc::getrusage(libc::RUSAGE_SELF, usage.as_mut_ptr()) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: zeroed is a valid rusage, and getrusage succeeded.
    Ok(unsafe { usage.assume_init() })
}

/// Resident memory of this process in bytes. Outside Linux this is the
/// peak resident size (`ru_maxrss`, bytes on macOS), the one figure the
/// OS gives a process about itself without extra entitlements.
#[cfg(not(target_os = "linux"))]
pub fn resident_bytes() -> std::io::Result<u64> {
    Ok(own_usage()?.ru_maxrss.max(0) as u64)
}

/// Resident memory of this process in bytes.
#[cfg(target_os = "linux")]
pub fn resident_bytes() -> std::io::Result<u64> {
    let statm = std::fs::read_to_string("/proc/self/statm")?;
    let pages: u64 = statm
        .split_whitespace()
        .nth(1)
        .and_then(|f| f.parse().ok())
        .ok_or_else(|| std::io::Error::other("unexpected format of /proc/self/statm"))?;
    Ok(pages * rustix::param::page_size() as u64)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn own_figures_are_plausible() {
        let started = std::time::Instant::now();
        let mut x = 0u64;
        while started.elapsed() < Duration::from_millis(50) {
            x = std::hint::black_box(x.wrapping_add(1));
        }
        assert!(own_cpu_time().unwrap() > Duration::ZERO);
        #[cfg(target_os = "linux")]
        assert!(cpu_time("/proc/thread-self/stat").unwrap() > Duration::ZERO);
        assert!(resident_bytes().unwrap() > 1 << 20);
        assert!(cpu_time("/proc/nonexistent/stat").is_err());
    }
}
