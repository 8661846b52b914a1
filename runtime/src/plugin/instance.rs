//! A started plugin serving one tunnel: its sandbox, its metadata, and quarantine.
//!
//! Failures are counted per instance; after [`QUARANTINE_AFTER`] in a row the plugin is not
//! called for a backoff (10 s, doubling to 10 min) and the fallback answers at once, so a
//! plugin that keeps trapping costs nothing per event. The first success after a quarantine
//! resets the backoff.

use std::sync::Mutex;
use std::time::{Duration, Instant};

use super::bindings::types as wit;
use super::capability::{HostContext, TunnelLink};
use super::convert;
use super::engine::PluginEngine;
use super::error::{CallFailure, LoadError};
use super::rate::{self, Admit, PluginRates};
use super::sandbox::{Failure, Sandbox};
use crate::events::{ProbeOutcome, TunnelEvent};
use crate::policy::{PluginSpec, Role};
use crate::recovery::{Decision, DecisionContext};

/// Consecutive failures after which a plugin is quarantined.
pub const QUARANTINE_AFTER: u32 = 3;
const FIRST_QUARANTINE: Duration = Duration::from_secs(10);
const MAX_QUARANTINE: Duration = Duration::from_secs(600);

/// A plugin instance for one tunnel and role.
pub struct PluginInstance {
    label: String,
    role: Role,
    info: wit::PluginInfo,
    tunnel: wit::TunnelInfo,
    link: TunnelLink,
    sandbox: tokio::sync::Mutex<Sandbox>,
    health: Mutex<Quarantine>,
    rates: PluginRates,
}

impl std::fmt::Debug for PluginInstance {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PluginInstance")
            .field("label", &self.label)
            .field("role", &self.role)
            .field("name", &self.info.name)
            .finish_non_exhaustive()
    }
}

#[derive(Default)]
struct Quarantine {
    consecutive: u32,
    until: Option<Instant>,
    backoff: Option<Duration>,
}

/// The static facts about a tunnel that plugins see.
pub type TunnelInfo = wit::TunnelInfo;

/// A plugin's own description.
pub type PluginInfo = wit::PluginInfo;

impl PluginInstance {
    /// Loads (or takes from the cache), instantiates and initialises a plugin for `role`.
    ///
    /// # Errors
    /// Missing file, not a component, a `sha256` pin it does not match, wrong world or
    /// version, a trap during start-up, or a config rejected by `init`, each naming the plugin.
    pub async fn start(
        engine: &PluginEngine,
        spec: &PluginSpec,
        role: Role,
        tunnel: TunnelInfo,
        link: TunnelLink,
    ) -> Result<Self, LoadError> {
        let loaded = engine
            .load_pinned(&spec.source, spec.sha256.as_ref())
            .await?;
        loaded.expect_role(role)?;
        let rates = PluginRates::default();
        let host = HostContext::new(&tunnel.name, link.clone(), rates.clone());
        let label = loaded.label.clone();
        let (sandbox, info) = Sandbox::start(loaded, spec.clone(), host).await?;
        Ok(Self {
            label,
            role,
            info,
            tunnel,
            link,
            sandbox: tokio::sync::Mutex::new(sandbox),
            health: Mutex::new(Quarantine::default()),
            rates,
        })
    }

    /// Whether the plugin is quarantined now: a call would be refused without running.
    /// Callers that only observe (hooks, health checks) skip the call, and report nothing:
    /// the failure that started the quarantine was reported.
    pub fn quarantined(&self) -> bool {
        let health = rate::lock(&self.health);
        health.until.is_some_and(|until| Instant::now() < until)
    }

    /// Logs a failed call as a warning, rate-limited per plugin (10 at once, then 10 a
    /// minute): the `plugin-failed` event reports every failure, the log need not.
    pub fn log_failure(&self, failure: &CallFailure) {
        if !self.log_admitted() {
            return;
        }
        let what = match self.role {
            Role::ReconnectPolicy => "reconnect policy failed; the built-in policy decides",
            Role::HealthCheck => "health check failed to run",
            Role::EventHook => "event hook failed",
        };
        tracing::warn!(tunnel = %self.tunnel.name, error = %failure, "{what}");
    }

    /// Takes a token for a line about this plugin's failures, first reporting lines dropped.
    fn log_admitted(&self) -> bool {
        match rate::lock(&self.rates.failures).admit(Instant::now()) {
            Admit::Drop => false,
            Admit::Write { suppressed } => {
                if suppressed > 0 {
                    tracing::warn!(plugin = %self.label, tunnel = %self.tunnel.name, suppressed,
                        "failure reports of this plugin suppressed (rate limit)");
                }
                true
            }
        }
    }

    /// The plugin as written in the policy file (`builtin:NAME` or the path).
    pub fn label(&self) -> &str {
        &self.label
    }

    /// The role it serves.
    pub fn role(&self) -> Role {
        self.role
    }

    /// What `describe` returned.
    pub fn info(&self) -> &PluginInfo {
        &self.info
    }

    /// Asks a reconnect policy for the next step.
    ///
    /// # Errors
    /// The plugin trapped, ran out of budget or time, answered nonsense, or is quarantined:
    /// the caller's fallback decides.
    pub async fn decide(&self, context: &DecisionContext) -> Result<Decision, CallFailure> {
        self.admit()?;
        let context_session = context.session.clone();
        let context = convert::decision_context(&self.tunnel_info(), context);
        let result = {
            let mut sandbox = self.sandbox.lock().await;
            let session = convert::session_ref(&context_session);
            let answer = sandbox.decide(&context, Some(session)).await;
            match answer.map(convert::decision) {
                Ok(Ok(decision)) => Ok(decision),
                Ok(Err(bad)) => {
                    sandbox.discard();
                    Err(Failure::Broken(bad))
                }
                Err(failure) => Err(failure),
            }
        };
        self.record(result)
    }

    /// Runs one probe of a health check.
    ///
    /// # Errors
    /// As [`decide`](Self::decide); a failed call is no verdict about the tunnel.
    pub async fn check(&self, consecutive_failures: u32) -> Result<ProbeOutcome, CallFailure> {
        self.admit()?;
        let result = {
            let mut sandbox = self.sandbox.lock().await;
            let budget = sandbox.limits().timeout;
            let context = convert::probe_context(&self.tunnel_info(), consecutive_failures, budget);
            sandbox.check(&context).await.map(convert::probe_outcome)
        };
        self.record(result)
    }

    /// Delivers one event to an event hook.
    ///
    /// # Errors
    /// As [`decide`](Self::decide).
    pub async fn on_event(&self, event: &TunnelEvent) -> Result<(), CallFailure> {
        let original = event;
        let Some(event) = convert::event(event) else {
            return Ok(());
        };
        self.admit()?;
        let session = original.session.as_ref().map(convert::session_ref);
        let result = self.sandbox.lock().await.on_event(&event, session).await;
        self.record(result)
    }

    /// The tunnel as plugins see it: a listener configured with port 0 shows the port it got.
    fn tunnel_info(&self) -> wit::TunnelInfo {
        let mut info = self.tunnel.clone();
        if let (Ok(configured), Some(bound)) = (
            info.local_address.parse::<std::net::SocketAddr>(),
            self.link.get().and_then(|t| t.address.tcp()),
        ) && configured.port() == 0
        {
            info.local_address =
                std::net::SocketAddr::new(configured.ip(), bound.port()).to_string();
        }
        info
    }

    fn admit(&self) -> Result<(), CallFailure> {
        let health = rate::lock(&self.health);
        match health.until {
            Some(until) if Instant::now() < until => Err(CallFailure {
                plugin: self.label.clone(),
                reason: format!(
                    "quarantined for another {:?} after {} failures in a row",
                    until.saturating_duration_since(Instant::now()),
                    health.consecutive
                ),
                quarantined: true,
            }),
            _ => Ok(()),
        }
    }

    fn record<R>(&self, result: Result<R, Failure>) -> Result<R, CallFailure> {
        let mut health = rate::lock(&self.health);
        let failure = match result {
            Ok(answer) => {
                *health = Quarantine::default();
                return Ok(answer);
            }
            Err(failure) => failure,
        };
        health.consecutive += 1;
        let quarantine = (health.consecutive >= QUARANTINE_AFTER).then(|| {
            let backoff = health
                .backoff
                .map_or(FIRST_QUARANTINE, |b| (b * 2).min(MAX_QUARANTINE));
            health.backoff = Some(backoff);
            health.until = Some(Instant::now() + backoff);
            (backoff, health.consecutive)
        });
        drop(health);
        if let Some((backoff, consecutive)) = quarantine
            && self.log_admitted()
        {
            tracing::warn!(plugin = %self.label, tunnel = %self.tunnel.name, ?backoff,
                "plugin quarantined after {consecutive} failures in a row");
        }
        Err(CallFailure {
            plugin: self.label.clone(),
            reason: failure.reason(),
            quarantined: quarantine.is_some(),
        })
    }
}

impl Drop for PluginInstance {
    /// Reports what the rate limits dropped since the last line written (a reload or a
    /// stopped tunnel ends the plugin before it logs again).
    fn drop(&mut self) {
        let log = rate::lock(&self.rates.log).take_suppressed();
        let failures = rate::lock(&self.rates.failures).take_suppressed();
        if log + failures > 0 {
            tracing::warn!(plugin = %self.label, tunnel = %self.tunnel.name,
                suppressed_log_lines = log, suppressed_failure_reports = failures,
                "plugin log lines suppressed (rate limit)");
        }
    }
}
