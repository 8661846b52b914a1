//! Memory and CPU over time: samples of this process's RSS and CPU time (Linux `/proc`), and
//! the leak verdict over the hourly RSS samples.
//!
//! The leak rule, documented in the README's Soak section: after a warm-up (the first
//! [`LeakPolicy::warmup_hours`] hours, at most a quarter of the run: allocator arenas, caches
//! and the connection population settle), RSS is leaking when it ends more than
//! [`LeakPolicy::allowance_mib`] above its value at the end of the warm-up **and** it grew in
//! at least [`LeakPolicy::rising_fraction`] of the hours since. Both are needed: a one-off
//! step (a larger buffer pool after a burst) is not a leak, and neither is noise that goes up
//! and down by more than the allowance.

use serde::Serialize;

/// One sample of this process.
#[derive(Clone, Copy, Debug, PartialEq)]
pub(super) struct ProcessSample {
    /// Resident set size, MiB (`VmRSS`).
    pub(super) rss_mib: f64,
    /// User plus system CPU time since the process started, seconds.
    pub(super) cpu_seconds: f64,
}

/// Samples this process, or `None` where `/proc` is not available (non-Linux platforms).
#[cfg(target_os = "linux")]
pub(super) fn sample() -> Option<ProcessSample> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let stat = std::fs::read_to_string("/proc/self/stat").ok()?;
    Some(ProcessSample {
        rss_mib: rss_kib(&status)? as f64 / 1024.0,
        cpu_seconds: cpu_ticks(&stat)? as f64 / USER_HZ,
    })
}

/// Samples this process, or `None` where `/proc` is not available (non-Linux platforms).
#[cfg(not(target_os = "linux"))]
pub(super) fn sample() -> Option<ProcessSample> {
    None
}

/// The unit of the times in `/proc/self/stat`: `USER_HZ`, which the kernel fixes at 100 for
/// user space on every architecture Linux supports (whatever its internal `HZ`).
#[cfg(target_os = "linux")]
const USER_HZ: f64 = 100.0;

/// `VmRSS:   12345 kB` from `/proc/self/status`.
#[cfg_attr(not(target_os = "linux"), allow(dead_code))] // unit-tested everywhere
fn rss_kib(status: &str) -> Option<u64> {
    let line = status.lines().find(|l| l.starts_with("VmRSS:"))?;
    line.split_whitespace().nth(1)?.parse().ok()
}

/// `utime + stime` (fields 14 and 15) from `/proc/self/stat`. The command name (field 2) is in
/// parentheses and may contain spaces and parentheses: fields are counted after the last `)`.
#[cfg_attr(not(target_os = "linux"), allow(dead_code))] // unit-tested everywhere
fn cpu_ticks(stat: &str) -> Option<u64> {
    let rest = &stat[stat.rfind(')')? + 1..];
    let mut fields = rest.split_whitespace().skip(11); // field 3 is the first after ')'
    let utime: u64 = fields.next()?.parse().ok()?;
    let stime: u64 = fields.next()?.parse().ok()?;
    Some(utime + stime)
}

/// The documented allowance of the leak rule (see the module documentation).
#[derive(Clone, Copy, Debug, PartialEq, Serialize)]
pub(super) struct LeakPolicy {
    /// Hours ignored at the start (capped at a quarter of the run).
    pub(super) warmup_hours: usize,
    /// Growth over the post-warm-up baseline that is tolerated, MiB.
    pub(super) allowance_mib: f64,
    /// Share of post-warm-up hours with growth that makes growth beyond the allowance a leak.
    pub(super) rising_fraction: f64,
}

impl Default for LeakPolicy {
    fn default() -> Self {
        Self {
            warmup_hours: 10,
            allowance_mib: 16.0,
            rising_fraction: 0.5,
        }
    }
}

/// What the leak rule found.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub(super) struct LeakVerdict {
    /// The rule applied.
    pub(super) policy: LeakPolicy,
    /// Hours actually skipped.
    pub(super) warmup_hours: usize,
    /// RSS at the end of the warm-up, MiB.
    pub(super) baseline_mib: f64,
    /// Last sample minus the baseline, MiB.
    pub(super) growth_mib: f64,
    /// Share of post-warm-up hours in which RSS grew.
    pub(super) rising_fraction: f64,
    /// Whether both conditions hold.
    pub(super) leaking: bool,
}

impl LeakPolicy {
    /// Applies the rule to hourly samples (MiB, oldest first); `None` with fewer than three
    /// samples after the warm-up, where no trend can be told from noise.
    pub(super) fn judge(&self, samples: &[f64]) -> Option<LeakVerdict> {
        let warmup = self.warmup_hours.min(samples.len() / 4);
        let after = samples.get(warmup..)?;
        if after.len() < 3 {
            return None;
        }
        let baseline = after[0];
        let last = after[after.len() - 1];
        let steps = after.len() - 1;
        let rising = after.windows(2).filter(|w| w[1] > w[0]).count();
        let rising_fraction = rising as f64 / steps as f64;
        let growth = last - baseline;
        Some(LeakVerdict {
            policy: *self,
            warmup_hours: warmup,
            baseline_mib: baseline,
            growth_mib: growth,
            rising_fraction,
            leaking: growth > self.allowance_mib && rising_fraction >= self.rising_fraction,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn monotonic_growth_beyond_the_allowance_is_a_leak() {
        // 0.5 MiB per hour for 100 hours: 45 MiB over the baseline, growing every hour.
        let samples: Vec<f64> = (0..100).map(|h| 40.0 + 0.5 * f64::from(h)).collect();
        let verdict = LeakPolicy::default()
            .judge(&samples)
            .expect("enough samples");
        assert!(verdict.leaking, "{verdict:?}");
        assert_eq!(verdict.warmup_hours, 10);
        assert!(verdict.rising_fraction > 0.99);
    }

    #[test]
    fn noise_and_a_single_step_are_not_a_leak() {
        // ±10 MiB of noise around a flat level (deterministic pseudo-random).
        let mut x = 7u64;
        let noisy: Vec<f64> = (0..200)
            .map(|_| {
                x = x.wrapping_mul(6_364_136_223_846_793_005).wrapping_add(1);
                50.0 + ((x >> 33) % 21) as f64 - 10.0
            })
            .collect();
        let verdict = LeakPolicy::default().judge(&noisy).expect("enough samples");
        assert!(!verdict.leaking, "{verdict:?}");
        // One 40 MiB step (a bigger pool after a burst), flat before and after.
        let step: Vec<f64> = (0..100).map(|h| if h < 50 { 40.0 } else { 80.0 }).collect();
        let verdict = LeakPolicy::default().judge(&step).expect("enough samples");
        assert!(verdict.growth_mib > 16.0);
        assert!(!verdict.leaking, "{verdict:?}");
        // Slow growth that stays within the allowance.
        let slow: Vec<f64> = (0..100).map(|h| 40.0 + 0.1 * f64::from(h)).collect();
        assert!(!LeakPolicy::default().judge(&slow).expect("samples").leaking);
    }

    #[test]
    fn short_runs_have_no_verdict_and_warm_up_is_capped() {
        assert_eq!(LeakPolicy::default().judge(&[1.0, 2.0]), None);
        let samples: Vec<f64> = (0..12).map(f64::from).collect();
        let verdict = LeakPolicy::default()
            .judge(&samples)
            .expect("9 samples after 3");
        assert_eq!(verdict.warmup_hours, 3);
    }

    #[test]
    fn proc_fields_parse() {
        assert_eq!(rss_kib("Name:\tx\nVmRSS:\t  2048 kB\n"), Some(2048));
        assert_eq!(rss_kib("Name:\tx\n"), None);
        let stat = "42 (a (b) c) S 1 2 3 4 5 6 7 8 9 10 250 50 0 0 20 0";
        assert_eq!(cpu_ticks(stat), Some(300));
        assert_eq!(cpu_ticks("garbage"), None);
    }
}
