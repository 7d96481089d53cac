//! Turns a task's cgroup readings into the counters the agent reports: cpu time and peak memory
//! as the kernel keeps them, plus the integral of sampled memory use, from which the control
//! service takes the average over any period (the kernel keeps no average).

use canopy_core::wire::Usage;
use std::time::Instant;

/// One task's meter, sampled at every report and once more before its cgroup goes away.
#[derive(Clone, Debug, Default)]
pub struct UsageMeter {
    last_sample: Option<(Instant, u64)>,
    byte_ms: u128,
    sampled_ms: u64,
    latest: Usage,
}

impl UsageMeter {
    /// Adds a reading taken `at`: memory is integrated by the trapezoid rule since the previous
    /// sample. The kernel's counters only grow for the life of a cgroup, so a reading below the
    /// last one (a file that could not be read) does not lower them. Returns the counters to
    /// report.
    pub fn sample(&mut self, at: Instant, reading: Usage) -> Usage {
        if let Some((then, bytes)) = self.last_sample {
            let ms = at.saturating_duration_since(then).as_millis() as u64;
            self.byte_ms += (bytes as u128 + reading.memory_bytes as u128) * ms as u128 / 2;
            self.sampled_ms += ms;
        }
        self.last_sample = Some((at, reading.memory_bytes));
        self.latest = Usage {
            cpu_usec: self.latest.cpu_usec.max(reading.cpu_usec),
            memory_bytes: reading.memory_bytes,
            memory_peak_bytes: self.latest.memory_peak_bytes.max(reading.memory_peak_bytes).max(reading.memory_bytes),
            memory_byte_seconds: u64::try_from(self.byte_ms / 1000).unwrap_or(u64::MAX),
            memory_sampled_ms: self.sampled_ms,
        };
        self.latest
    }

    /// The counters as of the last sample (what a task that has ended reports).
    pub fn latest(&self) -> Usage {
        self.latest
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn reading(cpu_usec: u64, memory_bytes: u64, memory_peak_bytes: u64) -> Usage {
        Usage { cpu_usec, memory_bytes, memory_peak_bytes, ..Usage::default() }
    }

    #[test]
    fn integrates_memory_between_samples_and_keeps_counters_monotonic() {
        let start = Instant::now();
        let mut meter = UsageMeter::default();
        let first = meter.sample(start, reading(1_000, 100, 100));
        assert_eq!((first.memory_byte_seconds, first.memory_sampled_ms), (0, 0));
        // 100 -> 300 bytes over 2 s: 400 byte seconds; then 300 for 1 s.
        meter.sample(start + Duration::from_secs(2), reading(5_000, 300, 350));
        let usage = meter.sample(start + Duration::from_secs(3), reading(0, 300, 0));
        assert_eq!(usage.memory_byte_seconds, 700);
        assert_eq!(usage.memory_sampled_ms, 3_000);
        // An unreadable counter (0) does not go backwards.
        assert_eq!((usage.cpu_usec, usage.memory_peak_bytes), (5_000, 350));
        assert_eq!(meter.latest(), usage);
        // Average over the 3 s: 700 / 3 byte.
        assert_eq!(usage.memory_byte_seconds * 1000 / usage.memory_sampled_ms, 233);
    }
}
