//! Run-time control of the fake managed nodes and of injected API errors.

use super::FaultControl;
use crate::api_faults::{ApiFailCode, ArmedFailure};
use crate::events::Event;
use crate::instances::{InstanceSettings, PingStatus};

impl FaultControl {
    /// The configured managed nodes (empty when none are configured).
    pub fn instances(&self) -> Vec<InstanceSettings> {
        self.service.extras.instances.all()
    }

    /// Replaces node `id` as an Auto Scaling group would: a new node with a fresh id and the
    /// same tags comes online, `id` goes `ConnectionLost` (sessions to it are not touched;
    /// terminate them to make a client restart). Returns the new id.
    ///
    /// # Errors
    /// A message when no nodes are configured or `id` is not one of them.
    pub fn replace_instance(&self, id: &str) -> Result<String, String> {
        let digits: String = self
            .service
            .random_uuid()
            .simple()
            .to_string()
            .chars()
            .take(17)
            .collect();
        let prefix = if id.starts_with("mi-") { "mi-" } else { "i-" };
        let new_id = format!("{prefix}{digits}");
        self.service.extras.instances.replace(id, &new_id)?;
        self.service.events.emit(Event::Fault {
            session_id: None,
            kind: "replace_instance".to_owned(),
            detail: format!("{id} replaced by {new_id}"),
        });
        Ok(new_id)
    }

    /// Sets node `id`'s ping status (`Online`, `ConnectionLost`, `Inactive`).
    ///
    /// # Errors
    /// A message when `id` is not a configured node.
    pub fn set_ping_status(&self, id: &str, status: PingStatus) -> Result<(), String> {
        self.service.extras.instances.set_ping_status(id, status)?;
        self.service.events.emit(Event::Fault {
            session_id: None,
            kind: "ping_status".to_owned(),
            detail: format!("{id} {}", status.as_str()),
        });
        Ok(())
    }

    /// Makes the next `count` calls of `operation` (`None`: of any operation) fail with
    /// `code`, worded as the real service words it.
    pub fn fail_api(&self, operation: Option<&str>, code: ApiFailCode, count: u32) {
        self.service
            .extras
            .failures
            .arm(operation.map(str::to_owned), code, count);
    }

    /// Disarms every injected API error.
    pub fn clear_api_failures(&self) {
        self.service.extras.failures.clear();
    }

    /// The API errors still armed.
    pub fn armed_api_failures(&self) -> Vec<ArmedFailure> {
        self.service.extras.failures.armed()
    }
}
