//! What the operator sees of every tunnel, kept from its event stream and its status watch.
//!
//! One observer task per tunnel reads `Tunnel::subscribe` and `Tunnel::status` (never the
//! data path) and keeps a small tally: the state and since when, connections opened and
//! closed by reason, the last outage and the disconnect that began it, and plugin health. The
//! metrics, `/readyz`, the control socket's `status` and systemd's `STATUS=` line all read the
//! same board, so they never disagree.
//!
//! Label values are bounded: tunnel names come from the policy file, close reasons and states
//! from fixed sets, and plugin labels are the policy file's `plugin` values (a health check's
//! `describe` name is mapped back to its entry), at most [`MAX_PLUGIN_LABELS`] per tunnel and
//! [`MAX_LABEL_CHARS`] characters each; anything beyond is counted as `other`.

use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, SystemTime};

use serde::{Deserialize, Serialize};
use tokio::sync::{broadcast, watch};

use super::metrics::Metrics;
use crate::events::{
    CloseReason, EventKind, ProbeOutcome, Role, SessionRole, TunnelEvent, TunnelState, TunnelStatus,
};
use crate::plugin::TunnelPlugins;
use crate::tunnel::Tunnel;

/// Distinct plugin label values kept per tunnel; further ones are counted as `other`.
pub const MAX_PLUGIN_LABELS: usize = 16;
/// Longest plugin label value, in characters (a long plugin path is cut).
pub const MAX_LABEL_CHARS: usize = 128;
/// Longest failure reason or probe message kept for `status`, in characters.
const MAX_REASON_CHARS: usize = 256;
/// Stripes whose outage causes are tracked (the policy allows at most 16).
const MAX_STRIPES: usize = 16;
/// The label value that stands for every plugin beyond [`MAX_PLUGIN_LABELS`].
pub const OTHER_LABEL: &str = "other";

/// Every phase a tunnel can be in, in the order of [`TunnelState`].
pub const STATES: [TunnelState; 7] = [
    TunnelState::Starting,
    TunnelState::Restarting,
    TunnelState::Resuming,
    TunnelState::Connecting,
    TunnelState::Handshaking,
    TunnelState::Forwarding,
    TunnelState::Stopped,
];

/// Every reason a local connection closes, each at its index in the `closed` tallies.
pub const CLOSE_REASONS: [CloseReason; 8] = [
    CloseReason::ClientClosed,
    CloseReason::DestinationClosed,
    CloseReason::DestinationUnreachable,
    CloseReason::SlowReader,
    CloseReason::MaxDuration,
    CloseReason::SessionRestarted,
    CloseReason::SessionEnded,
    CloseReason::TunnelStopped,
];

/// The position of `reason` in [`CLOSE_REASONS`] (a new reason fails to compile here).
fn reason_index(reason: CloseReason) -> usize {
    match reason {
        CloseReason::ClientClosed => 0,
        CloseReason::DestinationClosed => 1,
        CloseReason::DestinationUnreachable => 2,
        CloseReason::SlowReader => 3,
        CloseReason::MaxDuration => 4,
        CloseReason::SessionRestarted => 5,
        CloseReason::SessionEnded => 6,
        CloseReason::TunnelStopped => 7,
    }
}

/// The `result` label of a health check's verdict.
fn probe_result(outcome: &ProbeOutcome) -> &'static str {
    match outcome {
        ProbeOutcome::Healthy => "healthy",
        ProbeOutcome::Degraded(_) => "degraded",
        ProbeOutcome::Unhealthy(_) => "unhealthy",
    }
}

/// Every tunnel of a running `ssm-tether run`, as observed.
#[derive(Debug)]
pub struct Board {
    tunnels: Arc<[Arc<Watched>]>,
    metrics: Metrics,
    policy: String,
    started: SystemTime,
    metrics_address: Mutex<Option<String>>,
    changes: watch::Sender<u64>,
}

/// One observed tunnel.
#[derive(Debug)]
pub(crate) struct Watched {
    pub(crate) name: String,
    local: String,
    pub(crate) status: watch::Receiver<TunnelStatus>,
    plugins: watch::Receiver<Arc<TunnelPlugins>>,
    tally: Mutex<Tally>,
}

/// What the events of one tunnel added up to.
#[derive(Debug)]
struct Tally {
    state: TunnelState,
    since: SystemTime,
    connections_opened: u64,
    closed: [u64; CLOSE_REASONS.len()],
    /// Per stripe: the disconnect that began the outage under way.
    outage_causes: [Option<String>; MAX_STRIPES],
    last_outage: Option<LastOutage>,
    plugins: Vec<PluginTally>,
    events_lost: u64,
}

#[derive(Debug, Clone)]
struct LastOutage {
    duration: Duration,
    cause: String,
    ended: SystemTime,
    restarted: bool,
}

#[derive(Debug, Clone)]
struct PluginTally {
    label: String,
    role: Role,
    failures: u64,
    last_failure: Option<String>,
    quarantined: bool,
    last_probe: Option<String>,
}

impl Board {
    /// Starts watching `tunnels` (each with the channel its plugins arrive on, so that plugin
    /// health can be reported and health checks named as in the policy file). `policy` names
    /// the policy file in reports. Spawns one observer task per tunnel; they end when their
    /// tunnel has stopped.
    pub fn start(
        policy: impl Into<String>,
        tunnels: Vec<(&Tunnel, watch::Receiver<Arc<TunnelPlugins>>)>,
    ) -> Arc<Self> {
        let started = SystemTime::now();
        let mut watched = Vec::with_capacity(tunnels.len());
        let mut streams = Vec::with_capacity(tunnels.len());
        for (tunnel, plugins) in tunnels {
            streams.push(tunnel.subscribe());
            watched.push(Arc::new(Watched {
                name: tunnel.name().to_owned(),
                local: tunnel.local().to_string(),
                status: tunnel.status(),
                plugins,
                tally: Mutex::new(Tally::new(tunnel.status().borrow().state, started)),
            }));
        }
        let tunnels: Arc<[Arc<Watched>]> = watched.into();
        let (changes, _) = watch::channel(0);
        let board = Arc::new(Self {
            metrics: Metrics::new(Arc::clone(&tunnels)),
            tunnels,
            policy: policy.into(),
            started,
            metrics_address: Mutex::new(None),
            changes,
        });
        for (watched, events) in board.tunnels.iter().zip(streams) {
            tokio::spawn(observe(Arc::clone(&board), Arc::clone(watched), events));
        }
        board
    }

    /// The Prometheus metrics.
    pub fn metrics(&self) -> &Metrics {
        &self.metrics
    }

    /// Records where the metrics endpoint listens, for `status`.
    pub fn set_metrics_address(&self, address: impl Into<String>) {
        *lock(&self.metrics_address) = Some(address.into());
    }

    /// A receiver that sees a change whenever a tunnel's state changes.
    pub fn changes(&self) -> watch::Receiver<u64> {
        self.changes.subscribe()
    }

    /// Tunnels that are not forwarding, with their state; empty when all are ready.
    pub fn not_ready(&self) -> Vec<(String, TunnelState)> {
        self.tunnels
            .iter()
            .filter_map(|t| {
                let state = t.status.borrow().state;
                (state != TunnelState::Forwarding).then(|| (t.name.clone(), state))
            })
            .collect()
    }

    /// One line for a service manager: how many tunnels forward, and which do not.
    pub fn summary(&self) -> String {
        summarize(self.tunnels.len(), &self.not_ready())
    }

    /// Everything `ssm-tether status` shows.
    pub fn report(&self) -> StatusReport {
        let now = SystemTime::now();
        let tunnels: Vec<TunnelReport> = self.tunnels.iter().map(|t| t.report(now)).collect();
        StatusReport {
            version: env!("CARGO_PKG_VERSION").to_owned(),
            pid: std::process::id(),
            policy: self.policy.clone(),
            started: rfc3339(self.started),
            uptime_seconds: seconds(now.duration_since(self.started).unwrap_or_default()),
            ready: tunnels
                .iter()
                .all(|t| t.state == TunnelState::Forwarding.name()),
            metrics: lock(&self.metrics_address).clone(),
            tunnels,
        }
    }

    fn state_changed(&self) {
        self.changes.send_modify(|n| *n = n.wrapping_add(1));
    }
}

/// `"2/3 tunnels forwarding; not forwarding: db (resuming)"`.
fn summarize(total: usize, not_ready: &[(String, TunnelState)]) -> String {
    /// A service manager shows one line; keep it short.
    const MAX_NAMED: usize = 5;
    let forwarding = total - not_ready.len().min(total);
    let mut line = format!("{forwarding}/{total} tunnels forwarding");
    if !not_ready.is_empty() {
        let named: Vec<String> = not_ready
            .iter()
            .take(MAX_NAMED)
            .map(|(name, state)| format!("{name} ({})", state.name()))
            .collect();
        line.push_str("; not forwarding: ");
        line.push_str(&named.join(", "));
        if not_ready.len() > MAX_NAMED {
            line.push_str(&format!(" and {} more", not_ready.len() - MAX_NAMED));
        }
    }
    line
}

/// Reads one tunnel's events and status until it has stopped.
async fn observe(
    board: Arc<Board>,
    watched: Arc<Watched>,
    mut events: broadcast::Receiver<TunnelEvent>,
) {
    let mut status = watched.status.clone();
    let mut events_open = true;
    loop {
        tokio::select! {
            event = events.recv(), if events_open => match event {
                Ok(event) => watched.record(&event, &board.metrics),
                Err(broadcast::error::RecvError::Lagged(missed)) => {
                    lock(&watched.tally).events_lost += missed;
                    board.metrics.events_lost(&watched.name, missed);
                }
                Err(broadcast::error::RecvError::Closed) => events_open = false,
            },
            changed = status.changed() => {
                if changed.is_err() {
                    // The tunnel's task is gone: whatever it was, it is stopped now.
                    if watched.set_state(TunnelState::Stopped) {
                        board.state_changed();
                    }
                    return;
                }
                let state = status.borrow_and_update().state;
                if watched.set_state(state) {
                    board.state_changed();
                }
            }
        }
    }
}

impl Tally {
    fn new(state: TunnelState, since: SystemTime) -> Self {
        Self {
            state,
            since,
            connections_opened: 0,
            closed: [0; CLOSE_REASONS.len()],
            outage_causes: Default::default(),
            last_outage: None,
            plugins: Vec::new(),
            events_lost: 0,
        }
    }

    /// The plugin's entry, created if there is room; `None` means it counts as `other`.
    fn plugin(&mut self, label: &str, role: Role) -> Option<&mut PluginTally> {
        let found = self
            .plugins
            .iter()
            .position(|p| p.label == label && p.role == role);
        let index = match found {
            Some(index) => index,
            None if self.plugins.len() < MAX_PLUGIN_LABELS => {
                self.plugins.push(PluginTally {
                    label: label.to_owned(),
                    role,
                    failures: 0,
                    last_failure: None,
                    quarantined: false,
                    last_probe: None,
                });
                self.plugins.len() - 1
            }
            None => return None,
        };
        self.plugins.get_mut(index)
    }
}

impl Watched {
    /// Records a state; returns whether it changed.
    fn set_state(&self, state: TunnelState) -> bool {
        let mut tally = lock(&self.tally);
        if tally.state == state {
            return false;
        }
        tally.state = state;
        tally.since = SystemTime::now();
        true
    }

    /// The policy file's name for a plugin: a health check's `describe` name is mapped back
    /// to its entry; the result is cut to [`MAX_LABEL_CHARS`].
    fn plugin_label(&self, name: &str, role: Role) -> String {
        let label = if role == Role::HealthCheck {
            let plugins = self.plugins.borrow();
            plugins
                .health_checks
                .iter()
                .find(|check| check.plugin.info().name == name)
                .map(|check| check.plugin.label().to_owned())
        } else {
            None
        };
        cut(label.as_deref().unwrap_or(name), MAX_LABEL_CHARS)
    }

    fn record(&self, event: &TunnelEvent, metrics: &Metrics) {
        let stripe = event.session.as_ref().map(|s| usize::from(s.stripe));
        match &event.kind {
            EventKind::ConnectionOpened { .. } => {
                lock(&self.tally).connections_opened += 1;
                metrics.connection_opened(&self.name);
            }
            EventKind::ConnectionClosed { reason, .. } => {
                lock(&self.tally).closed[reason_index(*reason)] += 1;
                metrics.connection_closed(&self.name, *reason);
            }
            EventKind::Disconnected { cause } => {
                let mut tally = lock(&self.tally);
                if let Some(slot) = stripe.and_then(|s| tally.outage_causes.get_mut(s))
                    && slot.is_none()
                {
                    *slot = Some(cut(&cause.to_string(), MAX_REASON_CHARS));
                }
            }
            EventKind::Resumed { outage } | EventKind::Restarted { outage, .. } => {
                let restarted = matches!(event.kind, EventKind::Restarted { .. });
                let mut tally = lock(&self.tally);
                let cause = stripe
                    .and_then(|s| tally.outage_causes.get_mut(s))
                    .and_then(Option::take)
                    .unwrap_or_else(|| "unknown".to_owned());
                tally.last_outage = Some(LastOutage {
                    duration: *outage,
                    cause,
                    ended: event.at,
                    restarted,
                });
                drop(tally);
                metrics.outage(&self.name, *outage);
            }
            EventKind::ProbeResult { check, outcome, .. } => {
                let label = self.plugin_label(check, Role::HealthCheck);
                let mut tally = lock(&self.tally);
                let counted = match tally.plugin(&label, Role::HealthCheck) {
                    Some(entry) => {
                        entry.last_probe = Some(match outcome {
                            ProbeOutcome::Healthy => "healthy".to_owned(),
                            ProbeOutcome::Degraded(why) | ProbeOutcome::Unhealthy(why) => cut(
                                &format!("{}: {why}", probe_result(outcome)),
                                MAX_REASON_CHARS,
                            ),
                        });
                        label
                    }
                    None => OTHER_LABEL.to_owned(),
                };
                drop(tally);
                metrics.probe(&self.name, &counted, probe_result(outcome));
            }
            EventKind::PluginFailed {
                plugin,
                role,
                reason,
                quarantined,
            } => {
                let label = cut(plugin, MAX_LABEL_CHARS);
                let mut tally = lock(&self.tally);
                let counted = match tally.plugin(&label, *role) {
                    Some(entry) => {
                        entry.failures += 1;
                        entry.last_failure = Some(cut(reason, MAX_REASON_CHARS));
                        entry.quarantined = *quarantined;
                        label
                    }
                    None => OTHER_LABEL.to_owned(),
                };
                drop(tally);
                metrics.plugin_failed(&self.name, &counted, *role);
            }
            _ => {}
        }
    }

    fn report(&self, now: SystemTime) -> TunnelReport {
        let status = self.status.borrow().clone();
        let tally = lock(&self.tally);
        let plugins = self.plugin_reports(&tally);
        let sessions = status
            .sessions
            .iter()
            .map(|s| SessionReport {
                stripe: s.session.stripe,
                serial: s.session.serial,
                session_id: s.session.session_id.clone(),
                role: s.role.name().to_owned(),
                state: s.state.name().to_owned(),
                age_seconds: seconds(s.age),
                connections: s.connections,
                resumes: s.resumes,
            })
            .collect::<Vec<_>>();
        TunnelReport {
            name: self.name.clone(),
            local: self.local.clone(),
            state: status.state.name().to_owned(),
            since: rfc3339(tally.since),
            for_seconds: seconds(now.duration_since(tally.since).unwrap_or_default()),
            sessions_forwarding: status
                .sessions
                .iter()
                .filter(|s| s.state == TunnelState::Forwarding && s.role != SessionRole::Draining)
                .count(),
            sessions,
            resumes: status.resumes,
            restarts: status.restarts,
            rotations: status.rotations,
            connections: status.connections,
            connections_total: tally.connections_opened,
            connections_closed: CLOSE_REASONS
                .iter()
                .zip(tally.closed)
                .filter(|(_, n)| *n > 0)
                .map(|(reason, n)| (reason.as_str().to_owned(), n))
                .collect(),
            bytes_up: status.bytes_up,
            bytes_down: status.bytes_down,
            longest_outage_seconds: seconds(status.longest_outage),
            last_outage: tally.last_outage.as_ref().map(|o| OutageReport {
                seconds: seconds(o.duration),
                cause: o.cause.clone(),
                ended: rfc3339(o.ended),
                ago_seconds: seconds(now.duration_since(o.ended).unwrap_or_default()),
                restarted: o.restarted,
            }),
            plugins,
            events_lost: tally.events_lost,
        }
    }

    /// Every plugin of the current set, then any that failed earlier and is gone (a reload).
    fn plugin_reports(&self, tally: &Tally) -> Vec<PluginReport> {
        let mut reports = Vec::new();
        {
            let set = self.plugins.borrow();
            let current = set
                .reconnect
                .iter()
                .map(|p| (p.as_ref(), Role::ReconnectPolicy))
                .chain(
                    set.health_checks
                        .iter()
                        .map(|c| (&c.plugin, Role::HealthCheck)),
                )
                .chain(set.hooks.iter().map(|p| (p.as_ref(), Role::EventHook)));
            for (plugin, role) in current {
                let label = cut(plugin.label(), MAX_LABEL_CHARS);
                let seen = tally
                    .plugins
                    .iter()
                    .find(|p| p.label == label && p.role == role);
                reports.push(PluginReport::new(
                    label.clone(),
                    role,
                    plugin.quarantined(),
                    seen,
                ));
            }
        }
        for seen in &tally.plugins {
            if !reports
                .iter()
                .any(|r| r.plugin == seen.label && r.role == seen.role.world())
            {
                reports.push(PluginReport::new(
                    seen.label.clone(),
                    seen.role,
                    seen.quarantined,
                    Some(seen),
                ));
            }
        }
        reports
    }
}

impl PluginReport {
    fn new(plugin: String, role: Role, quarantined: bool, seen: Option<&PluginTally>) -> Self {
        let failures = seen.map_or(0, |s| s.failures);
        let health = if quarantined {
            "quarantined"
        } else if seen.is_some_and(|s| {
            s.last_probe
                .as_deref()
                .is_some_and(|p| p.starts_with("unhealthy"))
        }) {
            "unhealthy"
        } else {
            "ok"
        };
        Self {
            plugin,
            role: role.world().to_owned(),
            health: health.to_owned(),
            failures,
            last_failure: seen.and_then(|s| s.last_failure.clone()),
            last_probe: seen.and_then(|s| s.last_probe.clone()),
        }
    }
}

/// Everything `ssm-tether status --json` prints: the answer to the control socket's `status`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StatusReport {
    /// ssm-tether's version.
    pub version: String,
    /// The process id of `run`.
    pub pid: u32,
    /// The policy file, as given to `run`.
    pub policy: String,
    /// When `run` started watching its tunnels (RFC 3339, UTC).
    pub started: String,
    /// Seconds since then.
    pub uptime_seconds: f64,
    /// Whether every tunnel forwards (what `/readyz` says).
    pub ready: bool,
    /// Where `/metrics` is served, if anywhere.
    pub metrics: Option<String>,
    /// Every tunnel, in policy file order.
    pub tunnels: Vec<TunnelReport>,
}

/// One tunnel in a [`StatusReport`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TunnelReport {
    /// Its name from the policy file.
    pub name: String,
    /// Where it accepts connections.
    pub local: String,
    /// Its phase: `starting`, `connecting`, `handshaking`, `forwarding`, `resuming`,
    /// `restarting` or `stopped`.
    pub state: String,
    /// When it entered that phase (RFC 3339, UTC).
    pub since: String,
    /// Seconds in that phase.
    pub for_seconds: f64,
    /// Sessions forwarding (draining ones not counted).
    pub sessions_forwarding: usize,
    /// Every session.
    pub sessions: Vec<SessionReport>,
    /// Successful resumes, all sessions.
    pub resumes: u64,
    /// Successful restarts, all sessions.
    pub restarts: u64,
    /// Completed make-before-break rotations.
    pub rotations: u64,
    /// Local connections open now.
    pub connections: usize,
    /// Local connections accepted since `run` started watching.
    pub connections_total: u64,
    /// Closed connections by reason (only reasons that occurred).
    pub connections_closed: std::collections::BTreeMap<String, u64>,
    /// Bytes forwarded towards the destination.
    pub bytes_up: u64,
    /// Bytes forwarded from the destination.
    pub bytes_down: u64,
    /// Longest interruption so far, of any session, in seconds.
    pub longest_outage_seconds: f64,
    /// The latest interruption that ended, if any.
    pub last_outage: Option<OutageReport>,
    /// Its plugins and how they fare.
    pub plugins: Vec<PluginReport>,
    /// Events the observer missed because it fell behind (its counts may be low by that).
    pub events_lost: u64,
}

/// One session of a tunnel.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SessionReport {
    /// Its stripe.
    pub stripe: u8,
    /// Tunnel-wide number of the StartSession that created it.
    pub serial: u32,
    /// The SSM session id, once known.
    pub session_id: Option<String>,
    /// `primary`, `successor` or `draining`.
    pub role: String,
    /// Its phase.
    pub state: String,
    /// Seconds since its StartSession.
    pub age_seconds: f64,
    /// Local connections it carries.
    pub connections: usize,
    /// Resumes it survived.
    pub resumes: u64,
}

/// An interruption of forwarding that ended.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct OutageReport {
    /// How long forwarding was interrupted.
    pub seconds: f64,
    /// The disconnect that began it (`planned close (1000)`, `no pong within the timeout` …).
    pub cause: String,
    /// When it ended (RFC 3339, UTC).
    pub ended: String,
    /// Seconds since it ended.
    pub ago_seconds: f64,
    /// Whether it ended with a new session (a restart) rather than a resume.
    pub restarted: bool,
}

/// One plugin of a tunnel.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PluginReport {
    /// The plugin as written in the policy file.
    pub plugin: String,
    /// `reconnect-policy`, `health-check` or `event-hook`.
    pub role: String,
    /// `ok`, `unhealthy` (a health check's last verdict) or `quarantined`.
    pub health: String,
    /// Failed calls since `run` started watching.
    pub failures: u64,
    /// What the last failed call said.
    pub last_failure: Option<String>,
    /// A health check's last verdict.
    pub last_probe: Option<String>,
}

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

/// `text` cut to at most `max` characters.
fn cut(text: &str, max: usize) -> String {
    match text.char_indices().nth(max) {
        Some((end, _)) => text[..end].to_owned(),
        None => text.to_owned(),
    }
}

fn seconds(duration: Duration) -> f64 {
    (duration.as_secs_f64() * 1000.0).round() / 1000.0
}

fn rfc3339(at: SystemTime) -> String {
    humantime::format_rfc3339_seconds(at).to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_summary_names_tunnels_that_do_not_forward_and_stays_short() {
        assert_eq!(summarize(2, &[]), "2/2 tunnels forwarding");
        assert_eq!(
            summarize(3, &[("db".into(), TunnelState::Resuming)]),
            "2/3 tunnels forwarding; not forwarding: db (resuming)"
        );
        let many: Vec<_> = (0..9)
            .map(|i| (format!("t{i}"), TunnelState::Restarting))
            .collect();
        let line = summarize(9, &many);
        assert!(line.starts_with("0/9 tunnels forwarding"), "{line}");
        assert!(line.ends_with("and 4 more"), "{line}");
        assert!(!line.contains('\n'));
    }

    #[test]
    fn close_reasons_are_listed_at_their_index() {
        for (index, reason) in CLOSE_REASONS.iter().enumerate() {
            assert_eq!(reason_index(*reason), index, "{reason}");
        }
    }

    #[test]
    fn plugin_labels_beyond_the_bound_count_as_other() {
        let mut tally = Tally::new(TunnelState::Starting, SystemTime::now());
        for i in 0..MAX_PLUGIN_LABELS {
            assert!(tally.plugin(&format!("p{i}"), Role::EventHook).is_some());
        }
        assert!(tally.plugin("p0", Role::EventHook).is_some(), "known");
        assert!(tally.plugin("one-more", Role::EventHook).is_none());
        assert_eq!(tally.plugins.len(), MAX_PLUGIN_LABELS);
    }

    #[test]
    fn cut_keeps_whole_characters() {
        assert_eq!(cut("ééé", 2), "éé");
        assert_eq!(cut("ab", 5), "ab");
    }
}
