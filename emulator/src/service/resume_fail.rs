//! The ResumeSession failure budget (count and/or window) and the credential-expiry check.

use std::time::{Duration, Instant};

use super::{Service, lock};
use crate::events::Event;
use crate::faults::{ResumeFailCode, ResumeFailSettings};

/// The armed ResumeSession failure budget.
#[derive(Debug, Default)]
pub(super) struct ResumeFailState {
    remaining: u32,
    window: Option<Duration>,
    window_start: Option<Instant>,
    code: ResumeFailCode,
}

impl ResumeFailState {
    pub(super) fn arm(&mut self, settings: &ResumeFailSettings) {
        *self = Self {
            remaining: settings.count,
            window: settings.window,
            window_start: None,
            code: settings.code,
        };
    }

    /// Whether this call fails, consuming budget.
    fn take(&mut self, now: Instant) -> Option<ResumeFailCode> {
        if self.remaining > 0 {
            self.remaining -= 1;
            self.window_start.get_or_insert(now);
            return Some(self.code);
        }
        let window = self.window?;
        let start = *self.window_start.get_or_insert(now);
        (now.duration_since(start) < window).then_some(self.code)
    }
}

impl Service {
    /// Arms a one-off ResumeSession failure budget (not re-armed on recycle).
    pub(crate) fn arm_resume_fail(&self, settings: &ResumeFailSettings) {
        lock(&self.resume_fail).arm(settings);
        self.events.emit(Event::Fault {
            session_id: None,
            kind: "resume_fail_armed".to_owned(),
            detail: format!(
                "count={} for={} code={:?}",
                settings.count,
                settings
                    .window
                    .map_or("-".to_owned(), |w| humantime::format_duration(w)
                        .to_string()),
                settings.code
            ),
        });
    }

    /// Whether this ResumeSession call must fail, and how.
    pub(crate) fn take_resume_failure(&self) -> Option<ResumeFailCode> {
        lock(&self.resume_fail).take(Instant::now())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn resume_failures_count_then_window() {
        let mut state = ResumeFailState::default();
        state.arm(&ResumeFailSettings {
            count: 2,
            window: None,
            code: ResumeFailCode::Throttling,
        });
        let now = Instant::now();
        assert_eq!(state.take(now), Some(ResumeFailCode::Throttling));
        assert_eq!(state.take(now), Some(ResumeFailCode::Throttling));
        assert_eq!(state.take(now), None);
        state.arm(&ResumeFailSettings {
            count: 0,
            window: Some(Duration::from_secs(1)),
            code: ResumeFailCode::AccessDenied,
        });
        assert_eq!(state.take(now), Some(ResumeFailCode::AccessDenied));
        assert_eq!(
            state.take(now + Duration::from_millis(500)),
            Some(ResumeFailCode::AccessDenied)
        );
        assert_eq!(state.take(now + Duration::from_secs(2)), None);
    }
}
