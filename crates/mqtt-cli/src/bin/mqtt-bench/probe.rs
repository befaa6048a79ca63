//! Readings of the broker process from /proc (Linux): CPU time and memory.

use std::fs;

/// Clock ticks per second of the utime/stime fields of /proc/PID/stat. Linux reports
/// them in USER_HZ, which is 100 on every architecture it exports to user space.
const TICKS_PER_SECOND: f64 = 100.0;

/// The broker process being measured.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Broker {
    pub(crate) pid: u32,
}

/// One reading.
#[derive(Clone, Copy, Debug, Default)]
pub(crate) struct Reading {
    /// User plus system CPU seconds of all threads so far.
    pub(crate) cpu_seconds: f64,
    /// Resident set size now, in bytes.
    pub(crate) rss: u64,
    /// Peak resident set size since the last reset, in bytes.
    pub(crate) peak_rss: u64,
}

impl Broker {
    /// Reads CPU time and memory; an error names the file.
    pub(crate) fn read(self) -> Result<Reading, String> {
        let stat_path = format!("/proc/{}/stat", self.pid);
        let stat = fs::read_to_string(&stat_path).map_err(|e| format!("{stat_path}: {e}"))?;
        // Fields after the command name, which is in parentheses and may hold spaces:
        // field 3 (state) is index 0, so utime (14) and stime (15) are 11 and 12.
        let fields: Vec<&str> = stat
            .rsplit_once(')')
            .map(|(_, rest)| rest.split_whitespace().collect())
            .unwrap_or_default();
        let tick = |i: usize| -> Result<f64, String> {
            fields
                .get(i)
                .and_then(|f| f.parse::<u64>().ok())
                .map(|t| t as f64 / TICKS_PER_SECOND)
                .ok_or_else(|| format!("{stat_path}: no CPU time field"))
        };
        let cpu_seconds = tick(11)? + tick(12)?;
        let status_path = format!("/proc/{}/status", self.pid);
        let status = fs::read_to_string(&status_path).map_err(|e| format!("{status_path}: {e}"))?;
        let kib = |key: &str| {
            status
                .lines()
                .find_map(|l| l.strip_prefix(key))
                .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
                .map_or(0, |k| k * 1024)
        };
        Ok(Reading {
            cpu_seconds,
            rss: kib("VmRSS:"),
            peak_rss: kib("VmHWM:"),
        })
    }

    /// Resets the peak RSS, so the next reading's peak belongs to the next scenario.
    /// Best effort: without permission the peak stays the process's lifetime peak.
    pub(crate) fn reset_peak(self) {
        let _ = fs::write(format!("/proc/{}/clear_refs", self.pid), "5");
    }
}
