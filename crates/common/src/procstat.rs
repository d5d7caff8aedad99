//! A process's own CPU time and memory, from `/proc` (Linux).

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

/// Resident memory of this process in bytes.
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
        assert!(cpu_time("/proc/thread-self/stat").unwrap() > Duration::ZERO);
        assert!(resident_bytes().unwrap() > 1 << 20);
        assert!(cpu_time("/proc/nonexistent/stat").is_err());
    }
}
