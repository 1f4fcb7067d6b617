//! This process's resource use, read from `/proc/self`: CPU time (user + system, every
//! thread), peak resident set size and what the resident set is made of, the figures the
//! benchmarks report.

use anyhow::Context;
use std::time::Duration;

/// `/proc/<pid>/stat` counts CPU time in USER_HZ ticks, which Linux fixes at 100 per second
/// for this interface whatever the kernel's internal tick rate.
const USER_HZ: u64 = 100;

/// CPU time this process has used so far.
pub fn cpu_time() -> anyhow::Result<Duration> {
    let stat = std::fs::read_to_string("/proc/self/stat").context("reading /proc/self/stat")?;
    // Fields after the parenthesised command name: utime is field 14, stime field 15.
    let after_name = stat
        .rsplit_once(')')
        .map(|(_, rest)| rest)
        .context("/proc/self/stat has no command name")?;
    let fields: Vec<&str> = after_name.split_whitespace().collect();
    let ticks = |index: usize| -> anyhow::Result<u64> {
        fields
            .get(index)
            .and_then(|raw| raw.parse().ok())
            .with_context(|| format!("/proc/self/stat field {} is not a number", index + 3))
    };
    Ok(Duration::from_millis(
        (ticks(11)? + ticks(12)?) * 1000 / USER_HZ,
    ))
}

/// The largest resident set size this process has had (`VmHWM`), in bytes.
pub fn peak_rss_bytes() -> anyhow::Result<u64> {
    status_kib("VmHWM").map(|kib| kib * 1024)
}

/// The resident set now, in bytes: (anonymous memory — heap and stacks —, pages of files
/// mapped, chiefly the binary's code).
pub fn rss_parts_bytes() -> anyhow::Result<(u64, u64)> {
    Ok((status_kib("RssAnon")? * 1024, status_kib("RssFile")? * 1024))
}

/// One `<field>: <n> kB` line of `/proc/self/status`.
fn status_kib(field: &str) -> anyhow::Result<u64> {
    let status =
        std::fs::read_to_string("/proc/self/status").context("reading /proc/self/status")?;
    let line = status
        .lines()
        .find_map(|l| l.strip_prefix(field)?.strip_prefix(':'))
        .with_context(|| format!("/proc/self/status has no {field} line"))?;
    line.trim()
        .trim_end_matches("kB")
        .trim()
        .parse()
        .with_context(|| format!("unexpected {field} line {line:?}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_cpu_time_and_peak_rss_of_this_process() {
        let spin_until = std::time::Instant::now() + Duration::from_millis(50);
        while std::time::Instant::now() < spin_until {}
        assert!(cpu_time().expect("cpu time") > Duration::ZERO);
        assert!(peak_rss_bytes().expect("peak rss") > 1024 * 1024);
        let (anon, file) = rss_parts_bytes().expect("rss parts");
        // Read after the parts, the high-water mark covers them.
        assert!(anon > 0 && file > 0 && anon + file <= peak_rss_bytes().unwrap());
    }
}
