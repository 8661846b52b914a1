//! Runtime types ⇄ WIT types. The WIT mirrors the runtime's vocabulary one to one, so these
//! are plain field copies; durations become milliseconds (saturating).
//!
//! Text coming back from a plugin is bounded and escaped here ([`text`]), so no host type
//! ever holds a plugin's raw string.

use std::time::{Duration, UNIX_EPOCH};

use super::bindings::types as wit;
use super::text;
use crate::aws::{ApiError, ApiErrorKind};
use crate::events::{Cause, ProbeFailure, SessionRef};
use crate::events::{EventKind, ProbeOutcome, TunnelEvent};
use crate::policy::Role;
use crate::recovery::{Decision, DecisionContext, OutageSummary};

/// Longest delay a plugin may ask for; a longer one is a bad answer.
pub(crate) const MAX_DELAY: Duration = Duration::from_secs(24 * 3600);

pub(crate) fn millis(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

fn millis32(d: Duration) -> u32 {
    u32::try_from(d.as_millis()).unwrap_or(u32::MAX)
}

pub(crate) fn api_failure(err: &ApiError) -> wit::ApiFailure {
    wit::ApiFailure {
        class: match err.kind {
            ApiErrorKind::DoesNotExist => wit::ApiErrorClass::DoesNotExist,
            ApiErrorKind::AccessDenied => wit::ApiErrorClass::AccessDenied,
            ApiErrorKind::ExpiredToken => wit::ApiErrorClass::ExpiredToken,
            ApiErrorKind::Throttling => wit::ApiErrorClass::Throttling,
            ApiErrorKind::InvalidDocument => wit::ApiErrorClass::InvalidDocument,
            ApiErrorKind::TargetNotConnected => wit::ApiErrorClass::TargetNotConnected,
            ApiErrorKind::Credentials => wit::ApiErrorClass::Credentials,
            ApiErrorKind::Configuration => wit::ApiErrorClass::Configuration,
            ApiErrorKind::Transport => wit::ApiErrorClass::Transport,
            ApiErrorKind::ServerError => wit::ApiErrorClass::ServerError,
            _ => wit::ApiErrorClass::Other,
        },
        code: err.code.clone(),
        message: err.message.clone(),
    }
}

pub(crate) fn session_ref(session: &SessionRef) -> wit::SessionRef {
    wit::SessionRef {
        stripe: session.stripe,
        serial: session.serial,
        session_id: session.session_id.clone(),
    }
}

pub(crate) fn cause(cause: &Cause) -> wit::Cause {
    match cause {
        Cause::PlannedClose => wit::Cause::PlannedClose,
        Cause::TransportError(d) => wit::Cause::TransportError(d.clone()),
        Cause::PingTimeout => wit::Cause::PingTimeout,
        Cause::ConnectFailed(d) => wit::Cause::ConnectFailed(d.to_string()),
        Cause::ResumeFailed(e) => wit::Cause::ResumeFailed(api_failure(e)),
        Cause::StartFailed(e) => wit::Cause::StartFailed(api_failure(e)),
        Cause::HandshakeFailed(d) => wit::Cause::HandshakeFailed(d.clone()),
        Cause::SessionGone(d) => wit::Cause::SessionGone(d.clone()),
        Cause::ProtocolError(d) => wit::Cause::ProtocolError(d.clone()),
        Cause::ProbeFailed(p) => wit::Cause::ProbeFailed(probe_failure(p)),
        Cause::MaxDurationReached => wit::Cause::MaxDurationReached,
        // The WIT has no case of its own for it (adding one would break every 0.1 guest);
        // to a policy it is what it amounts to: a socket that cannot be trusted.
        Cause::Wakeup(d) => wit::Cause::TransportError(d.clone()),
    }
}

fn probe_failure(p: &ProbeFailure) -> wit::ProbeFailure {
    wit::ProbeFailure {
        check: p.check.clone(),
        consecutive_failures: p.consecutive_failures,
        reason: p.reason.clone(),
    }
}

fn outage(o: &OutageSummary) -> wit::OutageSummary {
    wit::OutageSummary {
        cause: cause(&o.cause),
        attempts: o.attempts,
        failed_resumes: o.failed_resumes,
        duration_ms: millis(o.duration),
        outcome: if o.restarted {
            wit::OutageOutcome::Restarted
        } else {
            wit::OutageOutcome::Resumed
        },
        stable_ms: millis(o.stable),
    }
}

pub(crate) fn decision_context(
    tunnel: &wit::TunnelInfo,
    ctx: &DecisionContext,
) -> wit::DecisionContext {
    wit::DecisionContext {
        tunnel: tunnel.clone(),
        cause: cause(&ctx.cause),
        attempt: ctx.attempt,
        failed_resumes: ctx.failed_resumes,
        outage_ms: millis(ctx.outage),
        session_age_ms: millis(ctx.session_age),
        last_delay_ms: ctx.last_delay.map(millis),
        history: ctx.history.iter().map(outage).collect(),
    }
}

/// A plugin's decision, or why it is unusable.
pub(crate) fn decision(answer: wit::Decision) -> Result<Decision, String> {
    let delay = |ms: u64| {
        let after = Duration::from_millis(ms);
        if after > MAX_DELAY {
            Err(format!(
                "bad answer: a delay of {ms} ms is longer than the {} h limit",
                MAX_DELAY.as_secs() / 3600
            ))
        } else {
            Ok(after)
        }
    };
    Ok(match answer {
        wit::Decision::ResumeAfter(ms) => Decision::Resume { after: delay(ms)? },
        wit::Decision::RestartAfter(ms) => Decision::Restart { after: delay(ms)? },
        wit::Decision::GiveUp(reason) => Decision::GiveUp {
            reason: if reason.trim().is_empty() {
                "the reconnect policy gave up".to_owned()
            } else {
                plugin_text(reason)
            },
        },
    })
}

pub(crate) fn probe_outcome(outcome: wit::ProbeOutcome) -> ProbeOutcome {
    match outcome {
        wit::ProbeOutcome::Healthy => ProbeOutcome::Healthy,
        wit::ProbeOutcome::Degraded(r) => ProbeOutcome::Degraded(plugin_text(r)),
        wit::ProbeOutcome::Unhealthy(r) => ProbeOutcome::Unhealthy(plugin_text(r)),
    }
}

/// A reason or message from a plugin, bounded and escaped.
pub(crate) fn plugin_text(text: String) -> String {
    text::bounded_owned(text, text::MAX_TEXT)
}

/// What `describe` returned, bounded and escaped: the name and version appear in every
/// event and log line about the plugin.
pub(crate) fn plugin_info(info: wit::PluginInfo) -> wit::PluginInfo {
    wit::PluginInfo {
        name: text::bounded_owned(info.name, text::MAX_NAME),
        version: text::bounded_owned(info.version, text::MAX_NAME),
        description: plugin_text(info.description),
    }
}

fn wit_probe_outcome(outcome: &ProbeOutcome) -> wit::ProbeOutcome {
    match outcome {
        ProbeOutcome::Healthy => wit::ProbeOutcome::Healthy,
        ProbeOutcome::Degraded(r) => wit::ProbeOutcome::Degraded(r.clone()),
        ProbeOutcome::Unhealthy(r) => wit::ProbeOutcome::Unhealthy(r.clone()),
    }
}

pub(crate) fn probe_context(
    tunnel: &wit::TunnelInfo,
    consecutive_failures: u32,
    budget: Duration,
) -> wit::ProbeContext {
    wit::ProbeContext {
        tunnel: tunnel.clone(),
        consecutive_failures,
        budget_ms: millis32(budget),
    }
}

fn role(role: Role) -> wit::PluginRole {
    match role {
        Role::ReconnectPolicy => wit::PluginRole::ReconnectPolicy,
        Role::HealthCheck => wit::PluginRole::HealthCheck,
        Role::EventHook => wit::PluginRole::EventHook,
    }
}

/// The event as WIT `0.1` describes it; `None` for kinds that package version has no case
/// for (rotation steps: hooks see a successor as `session-started` and `forwarding`, and the
/// predecessor's remaining connections as `connection-closed` with reason `max-duration`).
pub(crate) fn event(event: &TunnelEvent) -> Option<wit::TunnelEvent> {
    let kind = match &event.kind {
        EventKind::Rotating { .. } | EventKind::Rotated { .. } | EventKind::SessionEnded { .. } => {
            return None;
        }
        EventKind::Listening { local } => wit::EventKind::Listening(local.clone()),
        EventKind::SessionStarted { session_id } => {
            wit::EventKind::SessionStarted(session_id.clone())
        }
        EventKind::Connected { session_id } => wit::EventKind::Connected(session_id.clone()),
        EventKind::Forwarding {
            session_id,
            mode,
            agent_version,
        } => wit::EventKind::Forwarding(wit::ForwardingInfo {
            session_id: session_id.clone(),
            mode: if *mode == "basic" {
                wit::ForwardingMode::Basic
            } else {
                wit::ForwardingMode::Mux
            },
            agent_version: agent_version.clone(),
        }),
        EventKind::Disconnected { cause: c } => wit::EventKind::Disconnected(cause(c)),
        EventKind::AttemptFailed { cause: c, attempt } => {
            wit::EventKind::AttemptFailed(wit::AttemptFailedInfo {
                cause: cause(c),
                attempt: *attempt,
            })
        }
        EventKind::Resuming { attempt, outage } => wit::EventKind::Resuming(wit::ResumingInfo {
            attempt: *attempt,
            outage_ms: millis(*outage),
        }),
        EventKind::Resumed { outage } => wit::EventKind::Resumed(millis(*outage)),
        EventKind::Restarting {
            cause: c,
            attempt,
            outage,
        } => wit::EventKind::Restarting(wit::RestartingInfo {
            cause: cause(c),
            attempt: *attempt,
            outage_ms: millis(*outage),
        }),
        EventKind::Restarted { session_id, outage } => {
            wit::EventKind::Restarted(wit::RestartedInfo {
                session_id: session_id.clone(),
                outage_ms: millis(*outage),
            })
        }
        EventKind::GivingUp { reason } => wit::EventKind::GivingUp(reason.clone()),
        EventKind::ConnectionOpened { id, peer } => {
            wit::EventKind::ConnectionOpened(wit::ConnectionOpenedInfo {
                id: *id,
                peer: peer.to_string(),
            })
        }
        EventKind::ConnectionClosed {
            id,
            bytes_up,
            bytes_down,
            reason,
        } => wit::EventKind::ConnectionClosed(wit::ConnectionClosedInfo {
            id: *id,
            bytes_up: *bytes_up,
            bytes_down: *bytes_down,
            reason: reason.as_str().to_owned(),
        }),
        EventKind::DestinationUnreachable { destination } => {
            wit::EventKind::DestinationUnreachable(destination.clone())
        }
        EventKind::ProbeResult {
            check,
            outcome,
            consecutive_failures,
            duration,
        } => wit::EventKind::ProbeResult(wit::ProbeResultInfo {
            check: check.clone(),
            outcome: wit_probe_outcome(outcome),
            consecutive_failures: *consecutive_failures,
            duration_ms: millis(*duration),
        }),
        EventKind::PluginFailed {
            plugin,
            role: r,
            reason,
            quarantined,
        } => wit::EventKind::PluginFailed(wit::PluginFailedInfo {
            plugin: plugin.clone(),
            role: role(*r),
            reason: reason.clone(),
            quarantined: *quarantined,
        }),
        EventKind::Stopped => wit::EventKind::Stopped,
    };
    Some(wit::TunnelEvent {
        tunnel: event.tunnel.clone(),
        at_unix_ms: event.at.duration_since(UNIX_EPOCH).map_or(0, millis),
        kind,
    })
}
