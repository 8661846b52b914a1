//! The soak's final report: one flat record, as JSON (`--json`, stable field names, for
//! machines and for quoting in BENCHMARKS.md) or as aligned lines for humans.

use std::collections::BTreeMap;
use std::fmt::Write as _;

use serde::Serialize;

use super::memory::LeakVerdict;

/// Everything a soak measured. Counters come from the tunnel's events and status, the
/// traffic's own checks, the emulator's fault log and `/proc`; none from the schedule.
#[derive(Debug, Serialize)]
pub(super) struct Report {
    /// The command line that produced it.
    pub(super) command: String,
    /// When the run started (UTC, RFC 3339).
    pub(super) started_at: String,
    /// Length of one service hour, milliseconds.
    pub(super) hour_ms: u64,
    /// Service hours run.
    pub(super) hours: f64,
    /// Wall-clock seconds, including the final drain.
    pub(super) wall_seconds: f64,
    /// Sessions the tunnel stripes over.
    pub(super) sessions: u8,
    /// The external endpoint driven (`--against`), or `null` for the built-in emulator.
    pub(super) against: Option<String>,
    /// Seed of the fault schedule and the traffic.
    pub(super) seed: u64,
    /// Planned closes (the service's recycle) the tunnel saw.
    pub(super) recycles: u64,
    /// Successful resumes (the tunnel's status).
    pub(super) resumes: u64,
    /// Successful restarts (new sessions replacing lost ones).
    pub(super) restarts: u64,
    /// Completed make-before-break rotations.
    pub(super) rotations: u64,
    /// Times the tunnel gave up or stopped by itself.
    pub(super) tunnel_deaths: u64,
    /// Sessions still not forwarding at the end of the run, after a grace period.
    pub(super) unrecovered_outages: u64,
    /// Bytes that came back exactly as sent.
    pub(super) bytes_verified: u64,
    /// Bytes that came back different.
    pub(super) bytes_corrupted: u64,
    /// Connections opened through the tunnel.
    pub(super) connections_opened: u64,
    /// Short (one-per-second) connections that completed.
    pub(super) short_connections_completed: u64,
    /// Short connections not started because too many were still open.
    pub(super) short_connections_skipped: u64,
    /// Connections that ended for a reason the scenario does not excuse.
    pub(super) connections_lost_unexpected: u64,
    /// Connections closed for an expected reason (ours, or the service ending a session).
    pub(super) connections_closed_expected: u64,
    /// The same, by the tunnel's close reason.
    pub(super) connections_closed_expected_by_reason: BTreeMap<String, u64>,
    /// Bytes in flight on connections whose session the service ended (not checked: they
    /// went with the session).
    pub(super) bytes_in_flight_at_expected_close: u64,
    /// Outages recovered from (resumes and restarts).
    pub(super) outages: u64,
    /// Median outage, milliseconds (`null` without outages).
    pub(super) outage_p50_ms: Option<u64>,
    /// 99th percentile outage, milliseconds.
    pub(super) outage_p99_ms: Option<u64>,
    /// Longest outage, milliseconds.
    pub(super) outage_max_ms: Option<u64>,
    /// RSS of the whole soak process at the start of the first hour, MiB (`null` off Linux).
    pub(super) rss_start_mib: Option<f64>,
    /// RSS at the end of the last hour, MiB.
    pub(super) rss_end_mib: Option<f64>,
    /// Largest hourly RSS sample, MiB.
    pub(super) rss_max_mib: Option<f64>,
    /// RSS at the end of every hour, MiB.
    pub(super) rss_hourly_mib: Vec<f64>,
    /// The leak rule's verdict over the hourly samples (`null`: too few samples or no `/proc`).
    pub(super) leak: Option<LeakVerdict>,
    /// CPU time (user + system) the whole process used during the run, seconds.
    pub(super) cpu_seconds: Option<f64>,
    /// Faults the built-in emulator injected, from its event log (`null` with `--against`).
    pub(super) faults_injected: Option<BTreeMap<String, u64>>,
    /// Tunnel events the soak's subscription missed (its counters are then lower bounds).
    pub(super) events_missed: u64,
    /// The first few unexpected losses.
    pub(super) lost_details: Vec<String>,
    /// Why the soak failed; empty when it passed.
    pub(super) failures: Vec<String>,
    /// Nothing lost, corrupted or dead, no leak.
    pub(super) passed: bool,
}

impl Report {
    /// Fills [`Self::failures`] and [`Self::passed`] from the counters.
    pub(super) fn judge(&mut self) {
        let mut failures = Vec::new();
        let mut fail = |bad: bool, what: String| {
            if bad {
                failures.push(what);
            }
        };
        fail(
            self.tunnel_deaths > 0,
            format!("{} tunnel death(s)", self.tunnel_deaths),
        );
        fail(
            self.unrecovered_outages > 0,
            format!("{} unrecovered outage(s)", self.unrecovered_outages),
        );
        fail(
            self.bytes_corrupted > 0,
            format!("{} corrupted byte(s)", self.bytes_corrupted),
        );
        fail(
            self.connections_lost_unexpected > 0,
            format!(
                "{} connection(s) lost unexpectedly",
                self.connections_lost_unexpected
            ),
        );
        fail(self.bytes_verified == 0, "no byte was verified".to_owned());
        if let Some(leak) = self.leak.as_ref().filter(|l| l.leaking) {
            fail(
                true,
                format!(
                    "memory leak: RSS grew {:.1} MiB after the warm-up, in {:.0} % of hours",
                    leak.growth_mib,
                    leak.rising_fraction * 100.0
                ),
            );
        }
        self.passed = failures.is_empty();
        self.failures = failures;
    }

    /// The report for humans.
    pub(super) fn human(&self) -> String {
        let mut out = String::new();
        let ms = |v: Option<u64>| v.map_or("-".to_owned(), |v| format!("{v} ms"));
        let mib = |v: Option<f64>| v.map_or("n/a".to_owned(), |v| format!("{v:.1} MiB"));
        let reasons = self
            .connections_closed_expected_by_reason
            .iter()
            .map(|(reason, n)| format!("{reason} {n}"))
            .collect::<Vec<_>>()
            .join(", ");
        let lines = [
            ("command", self.command.clone()),
            ("started", self.started_at.clone()),
            (
                "hours",
                format!(
                    "{:.1} (one hour = {} ms; {:.0} s wall)",
                    self.hours, self.hour_ms, self.wall_seconds
                ),
            ),
            ("sessions", self.sessions.to_string()),
            ("recycles", self.recycles.to_string()),
            ("resumes", self.resumes.to_string()),
            ("restarts", self.restarts.to_string()),
            ("rotations", self.rotations.to_string()),
            ("tunnel deaths", self.tunnel_deaths.to_string()),
            ("unrecovered outages", self.unrecovered_outages.to_string()),
            (
                "outages",
                format!(
                    "{}: p50 {}, p99 {}, max {}",
                    self.outages,
                    ms(self.outage_p50_ms),
                    ms(self.outage_p99_ms),
                    ms(self.outage_max_ms)
                ),
            ),
            ("bytes verified", self.bytes_verified.to_string()),
            ("bytes corrupted", self.bytes_corrupted.to_string()),
            (
                "connections",
                format!(
                    "{} opened, {} short completed, {} short skipped",
                    self.connections_opened,
                    self.short_connections_completed,
                    self.short_connections_skipped
                ),
            ),
            (
                "lost unexpectedly",
                self.connections_lost_unexpected.to_string(),
            ),
            (
                "closed as expected",
                format!("{} ({reasons})", self.connections_closed_expected),
            ),
            (
                "memory (RSS)",
                format!(
                    "start {}, end {}, max {}",
                    mib(self.rss_start_mib),
                    mib(self.rss_end_mib),
                    mib(self.rss_max_mib)
                ),
            ),
            (
                "leak check",
                self.leak
                    .as_ref()
                    .map_or("n/a (too few hours)".to_owned(), |l| {
                        format!(
                            "{} (+{:.1} MiB after {} warm-up hours, growing in {:.0} % of hours; \
                         allowance {} MiB)",
                            if l.leaking { "LEAK" } else { "flat" },
                            l.growth_mib,
                            l.warmup_hours,
                            l.rising_fraction * 100.0,
                            l.policy.allowance_mib
                        )
                    }),
            ),
            (
                "cpu",
                self.cpu_seconds
                    .map_or("n/a".to_owned(), |c| format!("{c:.1} s")),
            ),
        ];
        for (name, value) in lines {
            let _ = writeln!(out, "{name:<20} {value}");
        }
        if let Some(faults) = &self.faults_injected {
            let list = faults
                .iter()
                .map(|(k, v)| format!("{k} {v}"))
                .collect::<Vec<_>>()
                .join(", ");
            let _ = writeln!(out, "{:<20} {list}", "faults injected");
        }
        if self.events_missed > 0 {
            let _ = writeln!(
                out,
                "{:<20} {} (counters above are lower bounds)",
                "events missed", self.events_missed
            );
        }
        for detail in &self.lost_details {
            let _ = writeln!(out, "lost: {detail}");
        }
        if self.passed {
            let _ = writeln!(out, "result: PASSED");
        } else {
            let _ = writeln!(out, "result: FAILED: {}", self.failures.join("; "));
        }
        out
    }
}
