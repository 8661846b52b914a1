//! Fault injection: the knobs ([`FaultSettings`], also the scenario-file format) and the
//! runtime trigger API ([`FaultControl`]) the admin endpoint and tests use.
//!
//! Every random decision (frame faults, recycle skews) comes from the emulator's single seeded
//! RNG, so a run with the same seed and the same traffic makes the same decisions.

mod fleet;
mod settings;

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

pub use settings::{
    FaultSettings, FrameFaults, KmsDeny, ResumeFailCode, ResumeFailSettings, SideSelection,
};

use crate::events::{Event, Side};
use crate::service::{Service, Termination};
use crate::sessions::SessionInfo;

/// Triggers faults and changes fault settings while the emulator runs. Cheap to clone.
#[derive(Clone)]
pub struct FaultControl {
    service: Arc<Service>,
}

/// A rejected fault request.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FaultError {
    /// The settings patch does not parse or a value is out of range.
    #[error("invalid fault settings: {0}")]
    InvalidSettings(String),
    /// No session has the given id.
    #[error("no session with id {0}")]
    NoSuchSession(String),
}

impl FaultControl {
    pub(crate) fn new(service: Arc<Service>) -> Self {
        Self { service }
    }

    /// The current settings.
    pub fn settings(&self) -> FaultSettings {
        self.service.faults()
    }

    /// Replaces the settings (validated first).
    ///
    /// # Errors
    /// [`FaultError::InvalidSettings`] if a rate is outside `0..=1` or a period is zero.
    pub fn set_settings(&self, settings: FaultSettings) -> Result<(), FaultError> {
        settings.validate().map_err(FaultError::InvalidSettings)?;
        self.service.events.emit(Event::Fault {
            session_id: None,
            kind: "settings".to_owned(),
            detail: serde_json::to_string(&settings).unwrap_or_default(),
        });
        self.service.set_faults(settings);
        Ok(())
    }

    /// Applies a JSON merge patch to the settings (what `PUT /faults` does) and returns the
    /// result, e.g. `{"to_client": {"drop_rate": 0.1}, "recycle_every": "300ms"}`.
    ///
    /// # Errors
    /// [`FaultError::InvalidSettings`] naming the bad field; nothing is changed then.
    pub fn patch(&self, patch: &serde_json::Value) -> Result<FaultSettings, FaultError> {
        let patched = self
            .settings()
            .patched(patch)
            .map_err(FaultError::InvalidSettings)?;
        self.set_settings(patched.clone())?;
        Ok(patched)
    }

    /// Closes the selected sockets with 1000 "Bye" now, in one session or in every active one
    /// (`session: None`). Returns how many sessions were recycled.
    ///
    /// # Errors
    /// [`FaultError::NoSuchSession`] if `session` names no session.
    pub async fn recycle(
        &self,
        session: Option<&str>,
        sides: SideSelection,
    ) -> Result<usize, FaultError> {
        let sessions = self.sessions_for(session)?;
        for s in &sessions {
            self.service.recycle(s, sides, "triggered").await;
        }
        Ok(sessions.len())
    }

    /// Drops the selected sockets now without a close frame (an abrupt connection loss, as
    /// opposed to the orderly 1000 "Bye" of [`recycle`](Self::recycle)). Returns how many
    /// sessions were affected.
    ///
    /// # Errors
    /// [`FaultError::NoSuchSession`] if `session` names no session.
    pub async fn reset(
        &self,
        session: Option<&str>,
        sides: SideSelection,
    ) -> Result<usize, FaultError> {
        let sessions = self.sessions_for(session)?;
        for s in &sessions {
            self.service.reset(s, sides).await;
        }
        Ok(sessions.len())
    }

    /// Starts (`on`) or stops black-holing the selected open sockets: they stay open but are
    /// neither read nor written, so frames and pongs silently stop. A socket opened later is
    /// not affected. Returns how many sockets changed.
    ///
    /// # Errors
    /// [`FaultError::NoSuchSession`] if `session` names no session.
    pub fn black_hole(
        &self,
        session: Option<&str>,
        sides: SideSelection,
        on: bool,
    ) -> Result<usize, FaultError> {
        let mut changed = 0;
        for s in self.sessions_for(session)? {
            for side in [Side::Client, Side::Agent] {
                let wanted = match side {
                    Side::Client => sides.client(),
                    Side::Agent => sides.agent(),
                };
                if let Some(peer) = s.peer(side).filter(|_| wanted) {
                    peer.set_black_hole(on);
                    changed += 1;
                    self.service.events.emit(Event::Fault {
                        session_id: Some(s.id.clone()),
                        kind: "black_hole".to_owned(),
                        detail: format!("side={} on={on}", crate::service::side_name(side)),
                    });
                }
            }
        }
        Ok(changed)
    }

    /// Terminates one session, or every active one, service-side (as if from the console):
    /// `channel_closed` to both sides, sockets closed, agent stopped. Returns how many
    /// sessions ended.
    ///
    /// # Errors
    /// [`FaultError::NoSuchSession`] if `session` names no session.
    pub async fn terminate(&self, session: Option<&str>) -> Result<usize, FaultError> {
        let mut ended = 0;
        for s in self.sessions_for(session)? {
            self.service.events.emit(Event::Fault {
                session_id: Some(s.id.clone()),
                kind: "terminate".to_owned(),
                detail: "terminated by the service".to_owned(),
            });
            if self.service.terminate(&s, Termination::Console).await {
                ended += 1;
            }
        }
        Ok(ended)
    }

    /// Makes the next `count` ResumeSession calls fail, and/or every call during `window`
    /// from the first failing one, with `code`. Not re-armed by recycles (unlike the
    /// configured [`FaultSettings::resume_fail`]).
    pub fn fail_resume(&self, count: u32, window: Option<Duration>, code: ResumeFailCode) {
        self.service.arm_resume_fail(&ResumeFailSettings {
            count,
            window,
            code,
        });
    }

    /// Makes every agent refuse (or stop refusing) connections to its destination.
    pub fn refuse_destination(&self, on: bool) {
        let mut settings = self.settings();
        settings.refuse_destination = on;
        self.service.set_faults(settings);
        self.service.events.emit(Event::Fault {
            session_id: None,
            kind: "refuse_destination".to_owned(),
            detail: format!("on={on}"),
        });
    }

    /// A summary of every session (no tokens).
    pub fn sessions(&self) -> Vec<SessionInfo> {
        self.service
            .all_sessions()
            .iter()
            .map(|s| s.info())
            .collect()
    }

    /// Whether the agent of `session` currently refuses its destination.
    pub fn refuses_destination(&self, session: &str) -> Option<bool> {
        self.service
            .session(session)
            .map(|s| s.controls.refuse_destination.load(Ordering::Relaxed))
    }

    fn sessions_for(
        &self,
        session: Option<&str>,
    ) -> Result<Vec<Arc<crate::sessions::Session>>, FaultError> {
        let sessions = self.service.select(session);
        match session {
            Some(id) if sessions.is_empty() => Err(FaultError::NoSuchSession(id.to_owned())),
            _ => Ok(sessions),
        }
    }
}
