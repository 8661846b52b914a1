//! The fault knobs: the shape of a scenario file, of `GET /faults` and of `PUT /faults` patches.

use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::config::duration_text;
use crate::config::optional_duration_text;

/// Every fault knob. All durations are humantime text in JSON (`"300ms"`, `"1h"`); `null`
/// switches a timed fault off.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct FaultSettings {
    /// Close data-channel sockets with 1000 "Bye" this often (per session, from its start).
    #[serde(with = "optional_duration_text")]
    pub recycle_every: Option<Duration>,
    /// Each side's close is delayed by a random amount in `0..=recycle_skew`, so the two sides
    /// of one recycle are up to this far apart, in a random order.
    #[serde(with = "duration_text")]
    pub recycle_skew: Duration,
    /// Which sockets a periodic recycle closes.
    pub recycle_side: SideSelection,
    /// After a client-side recycle the old `cell-number` is refused at the upgrade (HTTP 403);
    /// only the StreamUrl returned by the next ResumeSession works.
    pub stale_cell: bool,
    /// ResumeSession failures armed at start and re-armed after every client-side recycle.
    pub resume_fail: ResumeFailSettings,
    /// Requests signed with an access key id first seen longer ago than this get
    /// `ExpiredTokenException`.
    #[serde(with = "optional_duration_text")]
    pub credential_ttl: Option<Duration>,
    /// Frame faults applied to frames the client sends (client → agent).
    pub to_agent: FrameFaults,
    /// Frame faults applied to frames the agent sends (agent → client).
    pub to_client: FrameFaults,
    /// Terminate a session when no client socket has been open for this long.
    #[serde(with = "optional_duration_text")]
    pub client_grace: Option<Duration>,
    /// Terminate a session after this long without stream data in either direction.
    #[serde(with = "optional_duration_text")]
    pub idle_timeout: Option<Duration>,
    /// Terminate a session this long after StartSession.
    #[serde(with = "optional_duration_text")]
    pub max_session_duration: Option<Duration>,
    /// The agent refuses to connect to the destination (ConnectToPortError in mux mode).
    pub refuse_destination: bool,
    /// Which fake-KMS calls are refused with `AccessDeniedException`.
    pub kms_deny: KmsDeny,
}

impl Default for FaultSettings {
    fn default() -> Self {
        Self {
            recycle_every: None,
            recycle_skew: Duration::ZERO,
            recycle_side: SideSelection::Both,
            stale_cell: false,
            resume_fail: ResumeFailSettings::default(),
            credential_ttl: None,
            to_agent: FrameFaults::default(),
            to_client: FrameFaults::default(),
            client_grace: None,
            idle_timeout: None,
            max_session_duration: None,
            refuse_destination: false,
            kms_deny: KmsDeny::Off,
        }
    }
}

/// Which data-channel socket(s) a fault concerns.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SideSelection {
    /// The client's socket only.
    Client,
    /// The agent's socket only.
    Agent,
    /// Both sockets.
    #[default]
    Both,
}

impl SideSelection {
    /// Whether the client's socket is concerned.
    pub fn client(self) -> bool {
        matches!(self, Self::Client | Self::Both)
    }

    /// Whether the agent's socket is concerned.
    pub fn agent(self) -> bool {
        matches!(self, Self::Agent | Self::Both)
    }
}

impl std::str::FromStr for SideSelection {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "client" => Ok(Self::Client),
            "agent" => Ok(Self::Agent),
            "both" => Ok(Self::Both),
            other => Err(format!(
                "unknown side {other:?}: expected client, agent or both"
            )),
        }
    }
}

/// How ResumeSession fails while a failure budget is armed.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ResumeFailSettings {
    /// Fail this many calls (0: no count-based failures).
    pub count: u32,
    /// Fail every call during this window, which opens at the first failing call.
    #[serde(rename = "for", with = "optional_duration_text")]
    pub window: Option<Duration>,
    /// The error returned.
    pub code: ResumeFailCode,
}

impl ResumeFailSettings {
    /// Whether any failure is configured.
    pub fn is_armed(&self) -> bool {
        self.count > 0 || self.window.is_some()
    }
}

/// The error a failing ResumeSession returns.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum ResumeFailCode {
    /// HTTP 403 `AccessDeniedException`.
    #[default]
    AccessDenied,
    /// HTTP 400 `ThrottlingException` (retryable for the AWS SDKs).
    Throttling,
}

impl std::str::FromStr for ResumeFailCode {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.to_ascii_lowercase().replace(['_', '-'], "").as_str() {
            "accessdenied" | "accessdeniedexception" | "403" => Ok(Self::AccessDenied),
            "throttling" | "throttlingexception" | "400" => Ok(Self::Throttling),
            _ => Err(format!(
                "unknown code {s:?}: expected access-denied or throttling"
            )),
        }
    }
}

/// Which calls of the fake KMS fail with `AccessDeniedException` (HTTP 400, like KMS).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum KmsDeny {
    /// Every call is allowed.
    #[default]
    Off,
    /// The client's `GenerateDataKey` is refused (the client cannot set up encryption).
    GenerateDataKey,
    /// The agent's `Decrypt` is refused (the handshake fails on the agent's side).
    Decrypt,
    /// Both.
    All,
}

impl KmsDeny {
    /// Whether the named KMS operation (`GenerateDataKey`, `Decrypt`) is refused.
    pub fn denies(self, operation: &str) -> bool {
        match self {
            Self::Off => false,
            Self::GenerateDataKey => operation == "GenerateDataKey",
            Self::Decrypt => operation == "Decrypt",
            Self::All => true,
        }
    }
}

impl std::str::FromStr for KmsDeny {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.to_ascii_lowercase().replace(['_', '-'], "").as_str() {
            "off" | "none" => Ok(Self::Off),
            "generatedatakey" => Ok(Self::GenerateDataKey),
            "decrypt" => Ok(Self::Decrypt),
            "all" => Ok(Self::All),
            _ => Err(format!(
                "unknown value {s:?}: expected off, generate-data-key, decrypt or all"
            )),
        }
    }
}

/// Random frame faults for one direction. Rates are probabilities in `0.0..=1.0`, drawn per
/// frame from the emulator's seeded RNG; service-generated frames are never affected.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct FrameFaults {
    /// Probability that a frame is silently dropped.
    pub drop_rate: f64,
    /// Probability that a frame is delivered twice.
    pub dup_rate: f64,
    /// Probability that a frame is held back and delivered after the next one (or after 50 ms).
    pub reorder_rate: f64,
    /// Apply the rates to `acknowledge` frames only; other frames pass untouched.
    pub acks_only: bool,
}

impl FrameFaults {
    /// Whether any rate is non-zero.
    pub fn is_active(&self) -> bool {
        self.drop_rate > 0.0 || self.dup_rate > 0.0 || self.reorder_rate > 0.0
    }

    /// Checks that each rate is a probability.
    pub(crate) fn validate(&self, what: &str) -> Result<(), String> {
        for (name, rate) in [
            ("drop_rate", self.drop_rate),
            ("dup_rate", self.dup_rate),
            ("reorder_rate", self.reorder_rate),
        ] {
            if !(0.0..=1.0).contains(&rate) {
                return Err(format!("{what}.{name} must be between 0 and 1, got {rate}"));
            }
        }
        Ok(())
    }
}

impl FaultSettings {
    /// Checks value ranges that serde cannot express.
    pub fn validate(&self) -> Result<(), String> {
        self.to_agent.validate("to_agent")?;
        self.to_client.validate("to_client")?;
        if self.recycle_every == Some(Duration::ZERO) {
            return Err("recycle_every must be greater than 0".to_owned());
        }
        Ok(())
    }

    /// Applies an RFC 7386 JSON merge patch (what `PUT /faults` takes) and validates the result.
    pub fn patched(&self, patch: &serde_json::Value) -> Result<Self, String> {
        let mut value = serde_json::to_value(self).map_err(|e| e.to_string())?;
        merge_patch(&mut value, patch);
        let patched: Self = serde_json::from_value(value).map_err(|e| e.to_string())?;
        patched.validate()?;
        Ok(patched)
    }
}

/// RFC 7386: objects merge recursively, `null` removes, anything else replaces. Our settings
/// use `null` for "off", so a removed key comes back as its default (off) on deserialization.
fn merge_patch(target: &mut serde_json::Value, patch: &serde_json::Value) {
    use serde_json::Value;
    let Value::Object(patch_map) = patch else {
        *target = patch.clone();
        return;
    };
    if !target.is_object() {
        *target = Value::Object(serde_json::Map::new());
    }
    if let Value::Object(target_map) = target {
        for (key, value) in patch_map {
            if value.is_null() {
                target_map.insert(key.clone(), Value::Null);
            } else {
                merge_patch(target_map.entry(key.clone()).or_insert(Value::Null), value);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn patch_merges_nested_and_parses_durations() {
        let base = FaultSettings::default();
        let patched = base
            .patched(&serde_json::json!({
                "recycle_every": "300ms",
                "to_client": {"drop_rate": 0.5},
                "resume_fail": {"count": 2, "code": "throttling"}
            }))
            .expect("valid patch");
        assert_eq!(patched.recycle_every, Some(Duration::from_millis(300)));
        assert_eq!(patched.to_client.drop_rate, 0.5);
        assert!(!patched.to_client.acks_only);
        assert_eq!(patched.resume_fail.code, ResumeFailCode::Throttling);
        let off = patched
            .patched(&serde_json::json!({"recycle_every": null}))
            .expect("valid");
        assert_eq!(off.recycle_every, None);
    }

    #[test]
    fn bad_patches_are_errors_naming_the_field() {
        let base = FaultSettings::default();
        let err = base
            .patched(&serde_json::json!({"to_agent": {"drop_rate": 2.0}}))
            .expect_err("out of range");
        assert!(err.contains("to_agent.drop_rate"), "{err}");
        let err = base
            .patched(&serde_json::json!({"recycle_evry": "1s"}))
            .expect_err("unknown field");
        assert!(err.contains("recycle_evry"), "{err}");
    }
}
