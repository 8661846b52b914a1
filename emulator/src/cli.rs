//! The standalone command (`ssm-tether emulator`): flags, scenario file, ready line, signals.
//!
//! Precedence: built-in defaults, then the scenario file, then flags.

use std::collections::BTreeMap;
use std::io::Write;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context;
use clap::Args;
use serde::Deserialize;

use crate::config::{AgentSettings, EmulatorConfig};
use crate::documents::{SessionDocument, is_host};
use crate::events::EventLog;
use crate::faults::{FaultSettings, KmsDeny, ResumeFailCode, SideSelection};
use crate::server::Emulator;

/// Run a local SSM Session Manager service (SSM API + MGS data channel) and agent model, with
/// fault injection. Prints one JSON line with `endpoint_url` and `admin_url` when ready and
/// runs until SIGINT/SIGTERM. Durations are written like `250ms`, `2s`, `1h`.
#[derive(Debug, Clone, Default, Args)]
pub struct EmulatorArgs {
    /// Port of the SSM API and data-channel server [default: a free port].
    #[arg(long, value_name = "PORT")]
    pub port: Option<u16>,
    /// Port of the admin server [default: a free port].
    #[arg(long, value_name = "PORT")]
    pub admin_port: Option<u16>,
    /// Seed of the RNG behind every random choice, for reproducible runs [default: 0].
    #[arg(long, value_name = "N")]
    pub seed: Option<u64>,
    /// JSON scenario file: {"seed": N, "agent": {...}, "documents": {...}, "faults": {...},
    /// "instances": [...]} (see the README).
    #[arg(long, value_name = "FILE")]
    pub scenario: Option<PathBuf>,
    /// A custom session document (SSM document JSON content: Port, Standard_Stream,
    /// InteractiveCommands or NonInteractiveCommands) StartSession accepts as NAME; repeatable. Replaces a scenario document of the same name.
    #[arg(long = "document", value_name = "NAME=FILE", value_parser = parse_document_flag)]
    pub documents: Vec<DocumentFlag>,
    /// Write every event as a JSON line to FILE, or to standard output with `-`.
    #[arg(long, value_name = "FILE|-")]
    pub event_log: Option<String>,
    /// A fake managed node, online, for DescribeInstanceInformation and StartSession; with any
    /// configured, only online ones are connected targets; repeatable. Adds to the scenario's.
    #[arg(long = "instance", value_name = "ID[:KEY=VALUE,…]", value_parser = crate::instances::InstanceSettings::parse_flag)]
    pub instances: Vec<crate::instances::InstanceSettings>,

    /// Agent sleep after every message it sends (the real agent: 1ms; 0 for speed) [default: 1ms].
    #[arg(long, value_name = "DURATION", value_parser = parse_duration)]
    pub pacing: Option<Duration>,
    /// AgentVersion the agent reports: `3.3.987.0` mux, `3.1.1000.0` mux with smux keepalive,
    /// `3.0.0.0` basic mode [default: 3.3.987.0].
    #[arg(long, value_name = "V")]
    pub agent_version: Option<String>,
    /// Start no agent model: an external agent must call CreateDataChannel and dial in.
    #[arg(long)]
    pub no_agent: bool,
    /// How long the agent waits for the HandshakeResponse [default: 15s].
    #[arg(long, value_name = "DURATION", value_parser = parse_duration)]
    pub handshake_timeout: Option<Duration>,
    /// Interval of the agent's WebSocket pings [default: 54s].
    #[arg(long, value_name = "DURATION", value_parser = parse_duration)]
    pub agent_ping_interval: Option<Duration>,
    /// How long the agent waits for a pong before reconnecting [default: 60s].
    #[arg(long, value_name = "DURATION", value_parser = parse_duration)]
    pub agent_pong_wait: Option<Duration>,
    /// smux keepalive NOP interval, for agents that keep it on [default: 10s].
    #[arg(long, value_name = "DURATION", value_parser = parse_duration)]
    pub smux_keepalive_interval: Option<Duration>,
    /// smux keepalive timeout: the agent drops every stream after a window this long without
    /// a frame [default: 30s].
    #[arg(long, value_name = "DURATION", value_parser = parse_duration)]
    pub smux_keepalive_timeout: Option<Duration>,
    /// Host the agent dials when the document properties name none [default: 127.0.0.1].
    #[arg(long, value_name = "HOST", value_parser = parse_host)]
    pub agent_default_host: Option<String>,
    /// Shell of Standard_Stream sessions and of `sh -c` for InteractiveCommands
    /// [default: /bin/sh].
    #[arg(long, value_name = "PATH")]
    pub shell: Option<String>,
    /// How long a pty session waits before its first read (the agent's 1s) [default: 1s].
    #[arg(long, value_name = "DURATION", value_parser = parse_duration)]
    pub shell_first_read_delay: Option<Duration>,
    /// Handshake for Standard_Stream and InteractiveCommands sessions even without KMS (the
    /// real agent does not).
    #[arg(long)]
    pub force_handshake: bool,
    /// Encrypt shell sessions with KMS (session preference kmsKeyId) under
    /// `alias/ssm-emulator`, or the key of --kms-key-id.
    #[arg(long)]
    pub kms: bool,
    /// Encrypt shell sessions with KMS under this key id, key ARN, alias or alias ARN
    /// (implies --kms).
    #[arg(long, value_name = "KEY")]
    pub kms_key_id: Option<String>,
    /// The agent's Kms.RequireKMSChallengeResponse: fail clients that do not acknowledge the
    /// random challenge.
    #[arg(long)]
    pub require_kms_challenge_response: bool,

    /// Close data-channel sockets with 1000 "Bye" this often (per session) [default: never].
    #[arg(long, value_name = "DURATION", value_parser = parse_duration)]
    pub recycle_every: Option<Duration>,
    /// Random delay in 0..=SKEW added to each side's close of a recycle [default: 0].
    #[arg(long, value_name = "DURATION", value_parser = parse_duration)]
    pub recycle_skew: Option<Duration>,
    /// Which sockets a recycle closes: client, agent or both [default: both].
    #[arg(long, value_name = "SIDE")]
    pub recycle_side: Option<SideSelection>,
    /// After a client recycle, refuse the old StreamUrl's cell-number with HTTP 403; only the
    /// StreamUrl from ResumeSession works.
    #[arg(long)]
    pub stale_cell: bool,
    /// Fail this many ResumeSession calls (re-armed after every client-side recycle).
    #[arg(long, value_name = "N")]
    pub resume_fail_count: Option<u32>,
    /// Fail every ResumeSession for this long from the first failure (re-armed per client-side recycle).
    #[arg(long, value_name = "DURATION", value_parser = parse_duration)]
    pub resume_fail_for: Option<Duration>,
    /// Error of a failing ResumeSession: access-denied (403) or throttling (400)
    /// [default: access-denied].
    #[arg(long, value_name = "CODE")]
    pub resume_fail_code: Option<ResumeFailCode>,
    /// Requests signed with an access key id first seen longer ago than this get
    /// ExpiredTokenException; a new access key id works [default: never].
    #[arg(long, value_name = "DURATION", value_parser = parse_duration)]
    pub credential_ttl: Option<Duration>,

    /// Probability of dropping a frame, both directions.
    #[arg(long, value_name = "F", value_parser = parse_rate)]
    pub drop_rate: Option<f64>,
    /// Probability of delivering a frame twice, both directions.
    #[arg(long, value_name = "F", value_parser = parse_rate)]
    pub dup_rate: Option<f64>,
    /// Probability of delivering a frame after the next one, both directions.
    #[arg(long, value_name = "F", value_parser = parse_rate)]
    pub reorder_rate: Option<f64>,
    /// Drop probability for client → agent frames (overrides --drop-rate).
    #[arg(long, value_name = "F", value_parser = parse_rate)]
    pub drop_rate_to_agent: Option<f64>,
    /// Drop probability for agent → client frames (overrides --drop-rate).
    #[arg(long, value_name = "F", value_parser = parse_rate)]
    pub drop_rate_to_client: Option<f64>,
    /// Duplicate probability for client → agent frames (overrides --dup-rate).
    #[arg(long, value_name = "F", value_parser = parse_rate)]
    pub dup_rate_to_agent: Option<f64>,
    /// Duplicate probability for agent → client frames (overrides --dup-rate).
    #[arg(long, value_name = "F", value_parser = parse_rate)]
    pub dup_rate_to_client: Option<f64>,
    /// Reorder probability for client → agent frames (overrides --reorder-rate).
    #[arg(long, value_name = "F", value_parser = parse_rate)]
    pub reorder_rate_to_agent: Option<f64>,
    /// Reorder probability for agent → client frames (overrides --reorder-rate).
    #[arg(long, value_name = "F", value_parser = parse_rate)]
    pub reorder_rate_to_client: Option<f64>,
    /// Apply drop/dup/reorder rates to `acknowledge` frames only.
    #[arg(long)]
    pub acks_only: bool,

    /// Terminate a session whose client has had no open socket for this long [default: never].
    #[arg(long, value_name = "DURATION", value_parser = parse_duration)]
    pub client_grace: Option<Duration>,
    /// Terminate a session after this long without stream data [default: never].
    #[arg(long, value_name = "DURATION", value_parser = parse_duration)]
    pub idle_timeout: Option<Duration>,
    /// Terminate a session this long after it started [default: never].
    #[arg(long, value_name = "DURATION", value_parser = parse_duration)]
    pub max_session_duration: Option<Duration>,
    /// Agents refuse connections to their destination (ConnectToPortError in mux mode).
    #[arg(long)]
    pub refuse_destination: bool,
    /// Fake-KMS calls refused with AccessDeniedException: off, generate-data-key (the
    /// client's), decrypt (the agent's) or all [default: off].
    #[arg(long, value_name = "CALLS")]
    pub kms_deny: Option<KmsDeny>,
}

/// A `--document NAME=FILE` value.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DocumentFlag {
    /// The document name StartSession uses.
    pub name: String,
    /// The file with the document's JSON content.
    pub file: PathBuf,
}

impl std::fmt::Display for DocumentFlag {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "--document {}={}", self.name, self.file.display())
    }
}

fn parse_document_flag(text: &str) -> Result<DocumentFlag, String> {
    match text.split_once('=') {
        Some((name, file)) if !name.is_empty() && !file.is_empty() => Ok(DocumentFlag {
            name: name.to_owned(),
            file: PathBuf::from(file),
        }),
        _ => Err(format!(
            "{text:?} is not NAME=FILE (for example My-Port-Session=doc.json)"
        )),
    }
}

/// A host flag value.
fn parse_host(text: &str) -> Result<String, String> {
    if is_host(text) {
        Ok(text.to_owned())
    } else {
        Err(format!("{text:?} is not a host name or address"))
    }
}

/// A duration flag value (`250ms`, `2s`, `1h`).
fn parse_duration(text: &str) -> Result<Duration, String> {
    humantime::parse_duration(text)
        .map_err(|e| format!("{e} (write durations like 250ms, 2s or 1h)"))
}

/// A probability flag value.
fn parse_rate(text: &str) -> Result<f64, String> {
    let rate: f64 = text
        .parse()
        .map_err(|_| format!("{text:?} is not a number"))?;
    if (0.0..=1.0).contains(&rate) {
        Ok(rate)
    } else {
        Err(format!("{rate} is not between 0 and 1"))
    }
}

/// The scenario file: every section optional.
#[derive(Debug, Default, Deserialize)]
#[serde(default, deny_unknown_fields)]
struct Scenario {
    seed: Option<u64>,
    agent: Option<AgentSettings>,
    /// Name → document content, validated after parsing so errors name the document.
    documents: BTreeMap<String, serde_json::Value>,
    faults: Option<FaultSettings>,
    /// Fake managed nodes.
    instances: Vec<crate::instances::InstanceSettings>,
}

impl EmulatorArgs {
    /// The configuration these flags (and the scenario file they name) describe.
    ///
    /// # Errors
    /// The scenario file cannot be read or parsed, a document (scenario or `--document`) cannot
    /// be read or is invalid, the event log cannot be created, or the resulting settings are out
    /// of range.
    pub fn to_config(&self) -> anyhow::Result<EmulatorConfig> {
        let scenario = match &self.scenario {
            Some(path) => {
                let text = std::fs::read_to_string(path)
                    .with_context(|| format!("--scenario: cannot read {}", path.display()))?;
                serde_json::from_str::<Scenario>(&text)
                    .with_context(|| format!("--scenario: {} is not valid", path.display()))?
            }
            None => Scenario::default(),
        };
        let mut documents = BTreeMap::new();
        for (name, content) in &scenario.documents {
            let document = SessionDocument::from_value(name, content).with_context(|| {
                let path = self.scenario.as_ref().map(|p| p.display().to_string());
                format!(
                    "--scenario: {} has an invalid document",
                    path.unwrap_or_default()
                )
            })?;
            documents.insert(name.clone(), document);
        }
        documents.extend(self.flag_documents()?);
        let mut config = EmulatorConfig {
            seed: scenario.seed.unwrap_or(0),
            agent: scenario.agent.unwrap_or_default(),
            faults: scenario.faults.unwrap_or_default(),
            ..EmulatorConfig::default()
        };
        for document in documents.into_values() {
            config.documents.add(document)?;
        }
        config.instances = scenario.instances;
        config.instances.extend(self.instances.iter().cloned());
        if let Some(bad) = config
            .instances
            .iter()
            .find(|i| !crate::instances::is_instance_id(&i.id))
        {
            anyhow::bail!("--scenario: instance id {:?} is not i-… or mi-…", bad.id);
        }
        self.apply(&mut config);
        // Only the scenario file can get here with a bad host: the flag is checked when parsed.
        if !is_host(&config.agent.default_host) {
            anyhow::bail!(
                "--scenario: agent.default_host {:?} is not a host name or address",
                config.agent.default_host
            );
        }
        config
            .faults
            .validate()
            .map_err(|e| anyhow::anyhow!("invalid fault settings: {e}"))?;
        config.events = match self.event_log.as_deref() {
            None => EventLog::default(),
            Some("-") => EventLog::new(Some(Box::new(std::io::stdout()))),
            Some(path) => {
                let file = std::fs::File::create(path)
                    .with_context(|| format!("--event-log: cannot create {path}"))?;
                EventLog::new(Some(Box::new(std::io::LineWriter::new(file))))
            }
        };
        Ok(config)
    }

    /// The `--document` flags' documents, by name.
    fn flag_documents(&self) -> anyhow::Result<BTreeMap<String, SessionDocument>> {
        let mut names = std::collections::BTreeSet::new();
        if let Some(flag) = self
            .documents
            .iter()
            .find(|f| !names.insert(f.name.as_str()))
        {
            anyhow::bail!("--document {} is given more than once", flag.name);
        }
        let mut documents = BTreeMap::new();
        for flag in &self.documents {
            let text = std::fs::read_to_string(&flag.file)
                .with_context(|| format!("{flag}: cannot read {}", flag.file.display()))?;
            let document =
                SessionDocument::parse(&flag.name, &text).with_context(|| flag.to_string())?;
            documents.insert(flag.name.clone(), document);
        }
        Ok(documents)
    }

    fn apply(&self, config: &mut EmulatorConfig) {
        fn set<T: Clone>(target: &mut T, value: &Option<T>) {
            if let Some(value) = value {
                *target = value.clone();
            }
        }
        set(&mut config.port, &self.port);
        set(&mut config.admin_port, &self.admin_port);
        set(&mut config.seed, &self.seed);
        let agent = &mut config.agent;
        agent.enabled &= !self.no_agent;
        set(&mut agent.pacing, &self.pacing);
        set(&mut agent.version, &self.agent_version);
        set(&mut agent.handshake_timeout, &self.handshake_timeout);
        set(&mut agent.ping_interval, &self.agent_ping_interval);
        set(&mut agent.pong_wait, &self.agent_pong_wait);
        set(
            &mut agent.smux_keepalive_interval,
            &self.smux_keepalive_interval,
        );
        set(
            &mut agent.smux_keepalive_timeout,
            &self.smux_keepalive_timeout,
        );
        set(&mut agent.default_host, &self.agent_default_host);
        set(&mut agent.shell, &self.shell);
        set(
            &mut agent.shell_first_read_delay,
            &self.shell_first_read_delay,
        );
        agent.force_handshake |= self.force_handshake;
        if let Some(key) = &self.kms_key_id {
            agent.kms_key_id = Some(key.clone());
        } else if self.kms && agent.kms_key_id.is_none() {
            agent.kms_key_id = Some(crate::kms::DEFAULT_KEY_ID.to_owned());
        }
        agent.require_kms_challenge_response |= self.require_kms_challenge_response;
        let faults = &mut config.faults;
        if self.recycle_every.is_some() {
            faults.recycle_every = self.recycle_every;
        }
        set(&mut faults.recycle_skew, &self.recycle_skew);
        set(&mut faults.recycle_side, &self.recycle_side);
        faults.stale_cell |= self.stale_cell;
        set(&mut faults.resume_fail.count, &self.resume_fail_count);
        if self.resume_fail_for.is_some() {
            faults.resume_fail.window = self.resume_fail_for;
        }
        set(&mut faults.resume_fail.code, &self.resume_fail_code);
        if self.credential_ttl.is_some() {
            faults.credential_ttl = self.credential_ttl;
        }
        let pick = |both: Option<f64>, one: Option<f64>| one.or(both);
        let directions = [
            (
                &mut faults.to_agent,
                self.drop_rate_to_agent,
                self.dup_rate_to_agent,
                self.reorder_rate_to_agent,
            ),
            (
                &mut faults.to_client,
                self.drop_rate_to_client,
                self.dup_rate_to_client,
                self.reorder_rate_to_client,
            ),
        ];
        for (frames, drop, dup, reorder) in directions {
            set(&mut frames.drop_rate, &pick(self.drop_rate, drop));
            set(&mut frames.dup_rate, &pick(self.dup_rate, dup));
            set(&mut frames.reorder_rate, &pick(self.reorder_rate, reorder));
            frames.acks_only |= self.acks_only;
        }
        if self.client_grace.is_some() {
            faults.client_grace = self.client_grace;
        }
        if self.idle_timeout.is_some() {
            faults.idle_timeout = self.idle_timeout;
        }
        if self.max_session_duration.is_some() {
            faults.max_session_duration = self.max_session_duration;
        }
        faults.refuse_destination |= self.refuse_destination;
        set(&mut faults.kms_deny, &self.kms_deny);
    }
}

/// Runs the emulator until SIGINT or SIGTERM: prints
/// `{"endpoint_url":"http://127.0.0.1:PORT","admin_url":"http://127.0.0.1:PORT2"}` on one line
/// when ready, then shuts down cleanly on the signal.
///
/// # Errors
/// Bad configuration (see [`EmulatorArgs::to_config`]) or a port that cannot be bound.
pub async fn run(args: EmulatorArgs) -> anyhow::Result<()> {
    let config = args.to_config()?;
    let emulator = Emulator::start(config).await?;
    // Built by hand: the documented key order is endpoint_url first.
    let ready = format!(
        r#"{{"endpoint_url":{},"admin_url":{}}}"#,
        serde_json::Value::String(emulator.endpoint_url()),
        serde_json::Value::String(emulator.admin_url())
    );
    {
        let mut stdout = std::io::stdout().lock();
        writeln!(stdout, "{ready}").context("cannot write the ready line")?;
        stdout.flush().context("cannot write the ready line")?;
    }
    wait_for_signal().await?;
    emulator.shutdown().await;
    Ok(())
}

#[cfg(unix)]
async fn wait_for_signal() -> anyhow::Result<()> {
    use tokio::signal::unix::{SignalKind, signal};
    let mut term = signal(SignalKind::terminate()).context("cannot watch SIGTERM")?;
    tokio::select! {
        result = tokio::signal::ctrl_c() => result.context("cannot watch SIGINT"),
        _ = term.recv() => Ok(()),
    }
}

#[cfg(not(unix))]
async fn wait_for_signal() -> anyhow::Result<()> {
    tokio::signal::ctrl_c().await.context("cannot watch Ctrl-C")
}

#[cfg(test)]
mod tests {
    use clap::Parser;

    use super::*;

    #[derive(Parser)]
    struct Wrapper {
        #[command(flatten)]
        args: EmulatorArgs,
    }

    fn parse(args: &[&str]) -> Result<EmulatorArgs, clap::Error> {
        Wrapper::try_parse_from(std::iter::once("emulator").chain(args.iter().copied()))
            .map(|w| w.args)
    }

    #[test]
    fn flags_override_the_scenario_file_and_defaults() {
        let dir = std::env::temp_dir().join(format!("ssm-emulator-cli-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("temp dir");
        let scenario = dir.join("scenario.json");
        std::fs::write(
            &scenario,
            r#"{"seed": 9, "agent": {"version": "3.0.0.0"},
                "faults": {"recycle_every": "1h", "to_client": {"drop_rate": 0.5}, "stale_cell": true}}"#,
        )
        .expect("write");
        let args = parse(&[
            "--scenario",
            scenario.to_str().expect("utf8"),
            "--recycle-every",
            "300ms",
            "--pacing",
            "0s",
            "--drop-rate-to-agent",
            "0.25",
            "--resume-fail-code",
            "throttling",
            "--recycle-side",
            "client",
        ])
        .expect("parses");
        let config = args.to_config().expect("config");
        assert_eq!(config.seed, 9);
        assert_eq!(config.agent.version, "3.0.0.0");
        assert_eq!(config.agent.pacing, Duration::ZERO);
        assert_eq!(
            config.faults.recycle_every,
            Some(Duration::from_millis(300))
        );
        assert_eq!(config.faults.recycle_side, SideSelection::Client);
        assert!(config.faults.stale_cell);
        assert_eq!(config.faults.to_client.drop_rate, 0.5);
        assert_eq!(config.faults.to_agent.drop_rate, 0.25);
        assert_eq!(config.faults.resume_fail.code, ResumeFailCode::Throttling);
        let _ = std::fs::remove_dir_all(&dir);
    }

    /// A fresh directory for one test's files (tests run in parallel in one process).
    fn temp_dir(test: &str) -> PathBuf {
        let dir =
            std::env::temp_dir().join(format!("ssm-emulator-cli-{}-{test}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("temp dir");
        dir
    }

    fn port_document(default_port: &str) -> serde_json::Value {
        serde_json::json!({
            "schemaVersion": "1.0",
            "sessionType": "Port",
            "parameters": {"portNumber": {"type": "String", "default": default_port}},
            "properties": {"portNumber": "{{ portNumber }}", "type": "LocalPortForwarding"}
        })
    }

    fn resolved_port(config: &EmulatorConfig, document: &str) -> serde_json::Value {
        config
            .documents
            .resolve(document, &BTreeMap::new())
            .expect("resolves")
            .properties["portNumber"]
            .clone()
    }

    #[test]
    fn document_and_default_host_flags_override_the_scenario() {
        let dir = temp_dir("documents");
        let scenario = dir.join("scenario.json");
        let scenario_json = serde_json::json!({
            "agent": {"default_host": "10.0.0.1"},
            "documents": {"Shared-Doc": port_document("1111"), "Scenario-Doc": port_document("2222")}
        });
        std::fs::write(&scenario, scenario_json.to_string()).expect("write");
        let from_scenario = parse(&["--scenario", scenario.to_str().expect("utf8")])
            .expect("parses")
            .to_config()
            .expect("config");
        assert_eq!(from_scenario.agent.default_host, "10.0.0.1");
        assert_eq!(resolved_port(&from_scenario, "Shared-Doc"), "1111");

        let file = dir.join("shared.json");
        std::fs::write(&file, port_document("3333").to_string()).expect("write");
        let other = dir.join("other.json");
        std::fs::write(&other, port_document("4444").to_string()).expect("write");
        let shared_flag = format!("Shared-Doc={}", file.display());
        let other_flag = format!("Flag-Doc={}", other.display());
        let args = parse(&[
            "--scenario",
            scenario.to_str().expect("utf8"),
            "--document",
            &shared_flag,
            "--document",
            &other_flag,
            "--agent-default-host",
            "localhost",
        ])
        .expect("parses");
        assert_eq!(
            args.documents[0],
            DocumentFlag {
                name: "Shared-Doc".to_owned(),
                file: file.clone()
            }
        );
        let config = args.to_config().expect("config");
        assert_eq!(config.agent.default_host, "localhost");
        assert_eq!(resolved_port(&config, "Shared-Doc"), "3333");
        assert_eq!(resolved_port(&config, "Scenario-Doc"), "2222");
        assert_eq!(resolved_port(&config, "Flag-Doc"), "4444");
        assert!(
            config
                .documents
                .names()
                .any(|n| n == "AWS-StartPortForwardingSession")
        );
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn bad_documents_name_the_flag_file_or_document() {
        let err = parse(&["--document", "no-equals-sign"]).expect_err("error");
        assert!(err.to_string().contains("--document"), "{err}");
        let err = parse(&["--agent-default-host", ""]).expect_err("error");
        assert!(err.to_string().contains("--agent-default-host"), "{err}");

        let dir = temp_dir("bad-documents");
        let shell = dir.join("shell.json");
        let mut content = port_document("22");
        content["sessionType"] = serde_json::json!("Standard_Stream");
        std::fs::write(&shell, content.to_string()).expect("write");
        let flag = format!("My-Shell={}", shell.display());
        let err = parse(&["--document", &flag])
            .expect("parses")
            .to_config()
            .expect_err("a shell document with Port properties");
        let text = format!("{err:#}");
        assert!(
            text.contains(&format!("--document {flag}")) && text.contains("no properties"),
            "{text}"
        );

        let missing = format!("My-Doc={}", dir.join("missing.json").display());
        let err = parse(&["--document", &missing])
            .expect("parses")
            .to_config()
            .expect_err("no file");
        assert!(format!("{err:#}").contains("missing.json"), "{err:#}");

        let flag = format!("AWS-StartSSHSession={}", shell.display());
        let err = parse(&["--document", &flag])
            .expect("parses")
            .to_config()
            .expect_err("shadows a built-in");
        assert!(format!("{err:#}").contains("reserved"), "{err:#}");

        let twice = format!("My-Doc={}", shell.display());
        let err = parse(&["--document", &twice, "--document", &twice])
            .expect("parses")
            .to_config()
            .expect_err("twice");
        assert!(err.to_string().contains("more than once"), "{err}");

        let scenario = dir.join("scenario.json");
        let bad = serde_json::json!({"documents": {"Bad-Doc": {"sessionType": "Port"}}});
        std::fs::write(&scenario, bad.to_string()).expect("write");
        let err = parse(&["--scenario", scenario.to_str().expect("utf8")])
            .expect("parses")
            .to_config()
            .expect_err("invalid document");
        let text = format!("{err:#}");
        assert!(
            text.contains("--scenario") && text.contains("Bad-Doc"),
            "{text}"
        );
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn shell_and_kms_flags_fill_the_agent_settings() {
        let defaults = parse(&[]).expect("no flags").to_config().expect("config");
        assert_eq!(defaults.agent.shell, "/bin/sh");
        assert_eq!(
            defaults.agent.shell_first_read_delay,
            Duration::from_secs(1)
        );
        assert_eq!(defaults.agent.kms_key_id, None);
        assert_eq!(defaults.faults.kms_deny, KmsDeny::Off);
        let config = parse(&[
            "--shell",
            "/bin/bash",
            "--shell-first-read-delay",
            "50ms",
            "--force-handshake",
            "--kms",
            "--require-kms-challenge-response",
            "--kms-deny",
            "generate-data-key",
        ])
        .expect("parses")
        .to_config()
        .expect("config");
        assert_eq!(config.agent.shell, "/bin/bash");
        assert_eq!(
            config.agent.shell_first_read_delay,
            Duration::from_millis(50)
        );
        assert!(config.agent.force_handshake && config.agent.require_kms_challenge_response);
        assert_eq!(
            config.agent.kms_key_id.as_deref(),
            Some(crate::kms::DEFAULT_KEY_ID)
        );
        assert_eq!(config.faults.kms_deny, KmsDeny::GenerateDataKey);
        let keyed = parse(&["--kms-key-id", "alias/team"])
            .expect("parses")
            .to_config()
            .expect("config");
        assert_eq!(keyed.agent.kms_key_id.as_deref(), Some("alias/team"));
        let err = parse(&["--kms-deny", "sometimes"]).expect_err("error");
        assert!(err.to_string().contains("--kms-deny"), "{err}");
    }

    #[test]
    fn bad_values_name_the_flag() {
        let err = parse(&["--recycle-every", "soon"]).expect_err("error");
        assert!(err.to_string().contains("--recycle-every"), "{err}");
        let err = parse(&["--drop-rate", "1.5"]).expect_err("error");
        assert!(err.to_string().contains("--drop-rate"), "{err}");
        let err = parse(&["--recycle-side", "middle"]).expect_err("error");
        assert!(err.to_string().contains("--recycle-side"), "{err}");
        let defaults = parse(&[]).expect("no flags").to_config().expect("config");
        assert_eq!(defaults.agent.pacing, Duration::from_millis(1));
        assert_eq!(defaults.agent.version, "3.3.987.0");
        assert_eq!(defaults.faults, FaultSettings::default());
    }

    #[test]
    fn instances_come_from_the_scenario_and_the_flag() {
        let dir = temp_dir("instances");
        let scenario = dir.join("scenario.json");
        std::fs::write(
            &scenario,
            r#"{"instances": [{"id": "i-0aaa", "tags": {"Name": "bastion"}},
                              {"id": "mi-0bbb", "ping_status": "ConnectionLost"}]}"#,
        )
        .expect("write");
        let config = parse(&[
            "--scenario",
            scenario.to_str().expect("utf8"),
            "--instance",
            "i-0ccc:Name=web,Env=prod",
        ])
        .expect("parses")
        .to_config()
        .expect("config");
        let ids: Vec<&str> = config.instances.iter().map(|i| i.id.as_str()).collect();
        assert_eq!(ids, ["i-0aaa", "mi-0bbb", "i-0ccc"]);
        assert_eq!(
            config.instances[1].ping_status,
            crate::instances::PingStatus::ConnectionLost
        );
        assert_eq!(config.instances[2].tags.len(), 2);
        let err = parse(&["--instance", "bastion"]).expect_err("not an id");
        assert!(err.to_string().contains("--instance"), "{err}");
        std::fs::write(&scenario, r#"{"instances": [{"id": "web-1"}]}"#).expect("write");
        let err = parse(&["--scenario", scenario.to_str().expect("utf8")])
            .expect("parses")
            .to_config()
            .expect_err("not an id");
        assert!(format!("{err:#}").contains("web-1"), "{err:#}");
        let _ = std::fs::remove_dir_all(&dir);
    }
}
