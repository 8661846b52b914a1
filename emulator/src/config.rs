//! Everything the emulator can be configured with at start: listening ports, the agent model's
//! knobs, the seed, the session documents and the initial fault settings.
//!
//! Faults can also be changed while running through [`crate::faults::FaultControl`]; the rest is
//! fixed for the life of an [`crate::Emulator`].

use std::net::{IpAddr, Ipv4Addr};
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::documents::Documents;
use crate::events::EventLog;
use crate::faults::FaultSettings;

/// How an [`crate::Emulator`] is started.
#[derive(Clone)]
pub struct EmulatorConfig {
    /// Address both servers listen on (loopback by default: the emulator has no authentication).
    pub bind: IpAddr,
    /// Port of the SSM API and data-channel server; 0 picks a free one.
    pub port: u16,
    /// Port of the admin server; 0 picks a free one.
    pub admin_port: u16,
    /// Seed of the single RNG behind every random decision (ids, tokens, faults, skews).
    pub seed: u64,
    /// Knobs of the agent model started for every session.
    pub agent: AgentSettings,
    /// The session documents StartSession accepts: the AWS-owned ones by default; register
    /// custom ones with [`Documents::add`].
    pub documents: Documents,
    /// Initial fault settings.
    pub faults: FaultSettings,
    /// Where events go; pass an [`EventLog`] created with a writer to get JSON lines.
    pub events: EventLog,
    /// Fake managed nodes for DescribeInstanceInformation and StartSession's target check;
    /// empty: every `i-…`/`mi-…` id is a connected target ([`crate::instances`]).
    pub instances: Vec<crate::instances::InstanceSettings>,
}

impl Default for EmulatorConfig {
    fn default() -> Self {
        Self {
            bind: IpAddr::V4(Ipv4Addr::LOCALHOST),
            port: 0,
            admin_port: 0,
            seed: 0,
            agent: AgentSettings::default(),
            documents: Documents::default(),
            faults: FaultSettings::default(),
            events: EventLog::default(),
            instances: Vec::new(),
        }
    }
}

impl std::fmt::Debug for EmulatorConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EmulatorConfig")
            .field("bind", &self.bind)
            .field("port", &self.port)
            .field("admin_port", &self.admin_port)
            .field("seed", &self.seed)
            .field("agent", &self.agent)
            .field("documents", &self.documents)
            .field("faults", &self.faults)
            .field("instances", &self.instances)
            .finish_non_exhaustive()
    }
}

/// The agent model's knobs (docs/protocol.md §5, §6, §10; PROTOCOL-SESSIONS.md §1, §3, §4).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct AgentSettings {
    /// Start the agent model for every session. Off, the service waits for an external agent
    /// to call CreateDataChannel and dial in (tests use this to script the agent side).
    pub enabled: bool,
    /// The AgentVersion the agent reports; it selects mux/basic mode and smux keepalive (§6.1).
    pub version: String,
    /// Sleep after every agent message, like the real agent's 1 ms; 0 for fast tests.
    #[serde(with = "duration_text")]
    pub pacing: Duration,
    /// How long the agent waits for the HandshakeResponse.
    #[serde(with = "duration_text")]
    pub handshake_timeout: Duration,
    /// Interval of the agent's WebSocket pings.
    #[serde(with = "duration_text")]
    pub ping_interval: Duration,
    /// How long the agent waits for a pong before it treats its socket as dead.
    #[serde(with = "duration_text")]
    pub pong_wait: Duration,
    /// smux `KeepAliveInterval` (NOPs), when keepalive is on (§6.2: 10 s).
    #[serde(with = "duration_text")]
    pub smux_keepalive_interval: Duration,
    /// smux `KeepAliveTimeout`: the session dies when a window this long passes without a
    /// frame (§6.2: 30 s). Shorter values compress the idle-tunnel tests.
    #[serde(with = "duration_text")]
    pub smux_keepalive_timeout: Duration,
    /// The host the agent dials when the document properties name none (no `host`, or an
    /// empty one), standing in for the real agent's local system.
    pub default_host: String,
    /// The shell of `Standard_Stream` sessions and the `sh` of `sh -c <command>` for
    /// `InteractiveCommands` (the agent runs `sh` from its PATH).
    pub shell: String,
    /// How long a pty session waits before its first read of the pty (the agent's 1 s wait
    /// for the shell profile); tests set it low.
    #[serde(with = "duration_text")]
    pub shell_first_read_delay: Duration,
    /// Perform the handshake for `Standard_Stream` and `InteractiveCommands` sessions too
    /// (the real agent does only with KMS), to exercise a client's handshake path.
    pub force_handshake: bool,
    /// The account's session preference `kmsKeyId`: shell sessions are KMS-encrypted under
    /// this key (a key id, key ARN, alias or alias ARN); `None` leaves them unencrypted. A
    /// shell document's own `inputs.kmsKeyId` wins over it.
    pub kms_key_id: Option<String>,
    /// The agent's `Kms.RequireKMSChallengeResponse`: fail clients that do not acknowledge
    /// the random challenge (the official plugin never does).
    pub require_kms_challenge_response: bool,
}

impl Default for AgentSettings {
    fn default() -> Self {
        Self {
            enabled: true,
            version: "3.3.987.0".to_owned(),
            pacing: Duration::from_millis(1),
            handshake_timeout: Duration::from_secs(15),
            ping_interval: Duration::from_secs(54),
            pong_wait: Duration::from_secs(60),
            smux_keepalive_interval: crate::agent::DEFAULT_SMUX_KEEPALIVE_INTERVAL,
            smux_keepalive_timeout: crate::agent::DEFAULT_SMUX_KEEPALIVE_TIMEOUT,
            default_host: crate::agent::DEFAULT_HOST.to_owned(),
            shell: crate::agent::DEFAULT_SHELL.to_owned(),
            shell_first_read_delay: crate::agent::DEFAULT_SHELL_FIRST_READ_DELAY,
            force_handshake: false,
            kms_key_id: None,
            require_kms_challenge_response: false,
        }
    }
}

/// Serde for durations written the humantime way (`250ms`, `2s`, `1h`), as in flags.
pub(crate) mod duration_text {
    use std::time::Duration;

    use serde::{Deserialize, Deserializer, Serializer};

    /// Writes `value` as humantime text.
    pub(crate) fn serialize<S: Serializer>(value: &Duration, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&humantime::format_duration(*value).to_string())
    }

    /// Reads humantime text.
    pub(crate) fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
        let text = String::deserialize(d)?;
        humantime::parse_duration(&text).map_err(serde::de::Error::custom)
    }
}

/// Serde for optional durations; `null` means "off".
pub(crate) mod optional_duration_text {
    use std::time::Duration;

    use serde::{Deserialize, Deserializer, Serializer};

    /// Writes `value` as humantime text or null.
    pub(crate) fn serialize<S: Serializer>(
        value: &Option<Duration>,
        s: S,
    ) -> Result<S::Ok, S::Error> {
        match value {
            Some(duration) => s.serialize_str(&humantime::format_duration(*duration).to_string()),
            None => s.serialize_none(),
        }
    }

    /// Reads humantime text or null.
    pub(crate) fn deserialize<'de, D: Deserializer<'de>>(
        d: D,
    ) -> Result<Option<Duration>, D::Error> {
        Option::<String>::deserialize(d)?
            .map(|text| humantime::parse_duration(&text).map_err(serde::de::Error::custom))
            .transpose()
    }
}
