//! The Prometheus metrics of `ssm-tether run`, encoded by `prometheus-client`.
//!
//! Two sources, neither of them the data path:
//!
//! * **At scrape time** a collector reads every tunnel's status watch: `tunnel_up`,
//!   `tunnel_state`, `sessions`, `sessions_forwarding`, `resumes_total`, `restarts_total`,
//!   `rotations_total`, `bytes_total`, `connections` (open now), and `build_info`. The status carries
//!   running totals, so nothing is lost when the event stream lags.
//! * **From events**, counted by the [`Board`](super::Board)'s observers:
//!   `connections_total`, `connections_closed_total`, `outage_seconds`,
//!   `probe_results_total`, `plugin_failures_total`, `events_lost_total`, and
//!   `reloads_total`, counted by whoever reloads.
//!
//! Every name carries the prefix `ssm_tether_`. Label values are bounded (see
//! [`board`](super::board)). Only the Prometheus text format (0.0.4) is served: OpenMetrics
//! would name the counter `ssm_tether_connections_total` and the gauge of open connections
//! `ssm_tether_connections` as one family.

use std::sync::Arc;
use std::time::Duration;

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeLabelSet, EncodeMetric};
use prometheus_client::metrics::MetricType;
use prometheus_client::metrics::counter::{ConstCounter, Counter};
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::ConstGauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;

use super::board::{CLOSE_REASONS, STATES, Watched};
use crate::events::{CloseReason, Role, SessionRole, TunnelState};

/// The `Content-Type` of [`Metrics::encode_prometheus`].
pub const PROMETHEUS_CONTENT_TYPE: &str =
    prometheus_client::encoding::prometheus_text::CONTENT_TYPE;

/// Upper bounds of the `outage_seconds` buckets: a planned recycle resumes in well under a
/// second, a black hole costs the pong timeout (30 s by default), a restart with backoff
/// up to minutes.
const OUTAGE_BUCKETS: [f64; 13] = [
    0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0, 1800.0,
];

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct TunnelLabels {
    tunnel: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ClosedLabels {
    tunnel: String,
    reason: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ProbeLabels {
    tunnel: String,
    plugin: String,
    result: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct PluginLabels {
    tunnel: String,
    plugin: String,
    role: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ResultLabels {
    result: &'static str,
}

type HistogramFamily = Family<TunnelLabels, Histogram, fn() -> Histogram>;

/// The registry and the metrics counted from events.
#[derive(Debug)]
pub struct Metrics {
    registry: Registry,
    connections_opened: Family<TunnelLabels, Counter>,
    connections_closed: Family<ClosedLabels, Counter>,
    outages: HistogramFamily,
    probes: Family<ProbeLabels, Counter>,
    plugin_failures: Family<PluginLabels, Counter>,
    events_lost: Family<TunnelLabels, Counter>,
    reloads: Family<ResultLabels, Counter>,
}

impl Metrics {
    /// A registry for `tunnels`, every per-tunnel series present from the start (at 0).
    pub(crate) fn new(tunnels: Arc<[Arc<Watched>]>) -> Self {
        let mut registry = Registry::with_prefix("ssm_tether");
        let connections_opened = Family::<TunnelLabels, Counter>::default();
        let connections_closed = Family::<ClosedLabels, Counter>::default();
        let outages: HistogramFamily =
            Family::new_with_constructor(|| Histogram::new(OUTAGE_BUCKETS));
        let probes = Family::<ProbeLabels, Counter>::default();
        let plugin_failures = Family::<PluginLabels, Counter>::default();
        let events_lost = Family::<TunnelLabels, Counter>::default();
        let reloads = Family::<ResultLabels, Counter>::default();
        // Every series exists from the start: a counter that appears only at its first
        // increment hides that increment from `rate()`.
        for watched in tunnels.iter() {
            let tunnel = TunnelLabels {
                tunnel: watched.name.clone(),
            };
            let _ = connections_opened.get_or_create_owned(&tunnel);
            let _ = outages.get_or_create_owned(&tunnel);
            let _ = events_lost.get_or_create_owned(&tunnel);
            for reason in CLOSE_REASONS {
                let _ = connections_closed.get_or_create_owned(&ClosedLabels {
                    tunnel: watched.name.clone(),
                    reason: reason.as_str(),
                });
            }
        }
        for result in ["ok", "failed"] {
            let _ = reloads.get_or_create_owned(&ResultLabels { result });
        }
        registry.register(
            "connections",
            "Local connections accepted (counted from ConnectionOpened events)",
            connections_opened.clone(),
        );
        registry.register(
            "connections_closed",
            "Local connections closed, by reason",
            connections_closed.clone(),
        );
        registry.register(
            "outage_seconds",
            "How long forwarding was interrupted, per outage that ended (resume or restart)",
            outages.clone(),
        );
        registry.register(
            "probe_results",
            "Health check verdicts, by plugin (as in the policy file) and result",
            probes.clone(),
        );
        registry.register(
            "plugin_failures",
            "Plugin calls that failed (trap, budget, timeout, bad answer), by plugin and role",
            plugin_failures.clone(),
        );
        registry.register(
            "events_lost",
            "Tunnel events the metrics observer missed because it fell behind",
            events_lost.clone(),
        );
        registry.register(
            "reloads",
            "Plugin reloads (SIGHUP, file change, `ssm-tether reload`), by result",
            reloads.clone(),
        );
        // (`register` ends each help text with a period of its own.)
        registry.register_collector(Box::new(StatusCollector { tunnels }));
        Self {
            registry,
            connections_opened,
            connections_closed,
            outages,
            probes,
            plugin_failures,
            events_lost,
            reloads,
        }
    }

    /// The Prometheus text format (version 0.0.4).
    pub fn encode_prometheus(&self) -> String {
        let mut text = String::new();
        // Writing into a String cannot fail.
        let _ = prometheus_client::encoding::prometheus_text::encode(&mut text, &self.registry);
        text
    }

    /// Counts a reload and its result.
    pub fn reloaded(&self, ok: bool) {
        let result = if ok { "ok" } else { "failed" };
        self.reloads.get_or_create(&ResultLabels { result }).inc();
    }

    pub(crate) fn connection_opened(&self, tunnel: &str) {
        self.connections_opened
            .get_or_create(&tunnel_labels(tunnel))
            .inc();
    }

    pub(crate) fn connection_closed(&self, tunnel: &str, reason: CloseReason) {
        self.connections_closed
            .get_or_create(&ClosedLabels {
                tunnel: tunnel.to_owned(),
                reason: reason.as_str(),
            })
            .inc();
    }

    pub(crate) fn outage(&self, tunnel: &str, outage: Duration) {
        self.outages
            .get_or_create(&tunnel_labels(tunnel))
            .observe(outage.as_secs_f64());
    }

    pub(crate) fn probe(&self, tunnel: &str, plugin: &str, result: &'static str) {
        self.probes
            .get_or_create(&ProbeLabels {
                tunnel: tunnel.to_owned(),
                plugin: plugin.to_owned(),
                result,
            })
            .inc();
    }

    pub(crate) fn plugin_failed(&self, tunnel: &str, plugin: &str, role: Role) {
        self.plugin_failures
            .get_or_create(&PluginLabels {
                tunnel: tunnel.to_owned(),
                plugin: plugin.to_owned(),
                role: role.world(),
            })
            .inc();
    }

    pub(crate) fn events_lost(&self, tunnel: &str, missed: u64) {
        self.events_lost
            .get_or_create(&tunnel_labels(tunnel))
            .inc_by(missed);
    }
}

fn tunnel_labels(tunnel: &str) -> TunnelLabels {
    TunnelLabels {
        tunnel: tunnel.to_owned(),
    }
}

/// Reads every tunnel's status at scrape time.
#[derive(Debug)]
struct StatusCollector {
    tunnels: Arc<[Arc<Watched>]>,
}

/// One figure of a tunnel's status.
struct Figures {
    state: TunnelState,
    sessions: i64,
    sessions_forwarding: i64,
    resumes: u64,
    restarts: u64,
    rotations: u64,
    bytes_up: u64,
    bytes_down: u64,
    connections: i64,
}

impl Collector for StatusCollector {
    fn encode(&self, mut encoder: DescriptorEncoder<'_>) -> Result<(), std::fmt::Error> {
        let figures: Vec<(&str, Figures)> = self
            .tunnels
            .iter()
            .map(|t| {
                let status = t.status.borrow();
                let figures = Figures {
                    state: status.state,
                    sessions: gauge_count(status.sessions.len()),
                    sessions_forwarding: gauge_count(
                        status
                            .sessions
                            .iter()
                            .filter(|s| {
                                s.state == TunnelState::Forwarding
                                    && s.role != SessionRole::Draining
                            })
                            .count(),
                    ),
                    resumes: status.resumes,
                    restarts: status.restarts,
                    rotations: status.rotations,
                    bytes_up: status.bytes_up,
                    bytes_down: status.bytes_down,
                    connections: gauge_count(status.connections),
                };
                (t.name.as_str(), figures)
            })
            .collect();

        gauge(
            &mut encoder,
            "tunnel_up",
            "1 while the tunnel forwards (at least one session carries bytes), else 0.",
            figures.iter().map(|(name, f)| {
                (
                    vec![("tunnel", *name)],
                    i64::from(f.state == TunnelState::Forwarding),
                )
            }),
        )?;
        gauge(
            &mut encoder,
            "tunnel_state",
            "1 for the tunnel's current phase, 0 for the others.",
            figures.iter().flat_map(|(name, f)| {
                STATES.iter().map(move |state| {
                    (
                        vec![("tunnel", *name), ("state", state.name())],
                        i64::from(f.state == *state),
                    )
                })
            }),
        )?;
        gauge(
            &mut encoder,
            "sessions",
            "SSM sessions the tunnel holds (every role).",
            figures
                .iter()
                .map(|(name, f)| (vec![("tunnel", *name)], f.sessions)),
        )?;
        gauge(
            &mut encoder,
            "sessions_forwarding",
            "SSM sessions that forward and take connections (draining ones not counted).",
            figures
                .iter()
                .map(|(name, f)| (vec![("tunnel", *name)], f.sessions_forwarding)),
        )?;
        counter(
            &mut encoder,
            "resumes",
            "Successful resumes (same session, connections intact), all sessions.",
            figures
                .iter()
                .map(|(name, f)| (vec![("tunnel", *name)], f.resumes)),
        )?;
        counter(
            &mut encoder,
            "restarts",
            "Successful restarts (a new session replaced one that was gone).",
            figures
                .iter()
                .map(|(name, f)| (vec![("tunnel", *name)], f.restarts)),
        )?;
        counter(
            &mut encoder,
            "rotations",
            "Completed make-before-break rotations.",
            figures
                .iter()
                .map(|(name, f)| (vec![("tunnel", *name)], f.rotations)),
        )?;
        counter(
            &mut encoder,
            "bytes",
            "Bytes forwarded: up towards the destination, down from it.",
            figures.iter().flat_map(|(name, f)| {
                [
                    (vec![("tunnel", *name), ("direction", "up")], f.bytes_up),
                    (vec![("tunnel", *name), ("direction", "down")], f.bytes_down),
                ]
            }),
        )?;
        gauge(
            &mut encoder,
            "connections",
            "Local connections open now, including those waiting for a session.",
            figures
                .iter()
                .map(|(name, f)| (vec![("tunnel", *name)], f.connections)),
        )?;
        gauge(
            &mut encoder,
            "build_info",
            "Always 1; the version of ssm-tether in its label.",
            [(vec![("version", env!("CARGO_PKG_VERSION"))], 1)],
        )?;
        Ok(())
    }
}

fn gauge_count(n: usize) -> i64 {
    i64::try_from(n).unwrap_or(i64::MAX)
}

type Labels<'a> = Vec<(&'static str, &'a str)>;

fn gauge<'a>(
    encoder: &mut DescriptorEncoder<'_>,
    name: &str,
    help: &str,
    series: impl IntoIterator<Item = (Labels<'a>, i64)>,
) -> Result<(), std::fmt::Error> {
    let mut metric = encoder.encode_descriptor(name, help, None, MetricType::Gauge)?;
    for (labels, value) in series {
        ConstGauge::new(value).encode(metric.encode_family(&labels)?)?;
    }
    Ok(())
}

fn counter<'a>(
    encoder: &mut DescriptorEncoder<'_>,
    name: &str,
    help: &str,
    series: impl IntoIterator<Item = (Labels<'a>, u64)>,
) -> Result<(), std::fmt::Error> {
    let mut metric = encoder.encode_descriptor(name, help, None, MetricType::Counter)?;
    for (labels, value) in series {
        ConstCounter::new(value).encode(metric.encode_family(&labels)?)?;
    }
    Ok(())
}
