//! `ssm-tether frame decode|encode`: read and write ClientMessage frames as JSON and hex.

use std::io::{BufRead, Write};
use std::process::ExitCode;
use std::time::{SystemTime, UNIX_EPOCH};

use anyhow::{Context, bail};
use bytes::Bytes;
use clap::Subcommand;
use serde::{Deserialize, Serialize};
use ssm_tether::protocol::message::{HEADER_LENGTH, SCHEMA_VERSION};
use ssm_tether::protocol::{ClientMessage, DecodedMessage, MessageType, PayloadType};
use uuid::Uuid;

#[derive(Debug, Subcommand)]
pub(crate) enum FrameCommand {
    /// Decode a frame given as hex and print it as one JSON object.
    ///
    /// With `-`, read one hex frame per line from standard input and print one JSON object per
    /// line; a line that fails prints {"error": "..."} and the command exits 1 at the end.
    Decode {
        /// The frame as hex (whitespace and a leading 0x are ignored), or `-` for stdin.
        hex: String,
    },
    /// Encode a frame from a JSON object with the keys `decode` prints, and print it as hex.
    ///
    /// Required: message_type. Defaults: schema_version 1, created_date now, sequence_number 0,
    /// flags 0, message_id a new random UUID, payload_type 0, payload "" (hex). payload_digest
    /// and digest_valid are ignored (the digest is computed); header_length, if given, must be
    /// 116; payload_length, if given, must match the payload.
    Encode {
        /// The frame as a JSON object.
        json: String,
    },
}

/// One frame as JSON, keys in the documented order.
#[derive(Debug, Serialize)]
struct FrameJson {
    header_length: u32,
    message_type: String,
    schema_version: u32,
    created_date: u64,
    sequence_number: i64,
    flags: u64,
    message_id: String,
    payload_digest: String,
    digest_valid: bool,
    payload_type: u32,
    payload_length: u32,
    payload: String,
}

impl From<&DecodedMessage> for FrameJson {
    fn from(decoded: &DecodedMessage) -> Self {
        let message = &decoded.message;
        Self {
            header_length: decoded.header_length,
            message_type: message.message_type.as_str().to_owned(),
            schema_version: message.schema_version,
            created_date: message.created_date,
            sequence_number: message.sequence_number,
            flags: message.flags,
            message_id: message.message_id.hyphenated().to_string(),
            payload_digest: hex::encode(decoded.payload_digest),
            digest_valid: decoded.digest_valid,
            payload_type: message.payload_type.0,
            payload_length: decoded.payload_length,
            payload: hex::encode(&message.payload),
        }
    }
}

/// What `frame encode` accepts: the keys `decode` prints, most of them optional.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct FrameSpec {
    header_length: Option<u32>,
    message_type: String,
    schema_version: Option<u32>,
    created_date: Option<u64>,
    sequence_number: Option<i64>,
    flags: Option<u64>,
    message_id: Option<String>,
    #[serde(rename = "payload_digest")]
    _payload_digest: Option<serde::de::IgnoredAny>,
    #[serde(rename = "digest_valid")]
    _digest_valid: Option<serde::de::IgnoredAny>,
    payload_type: Option<u32>,
    payload_length: Option<u32>,
    payload: Option<String>,
}

pub(crate) fn run(command: FrameCommand) -> anyhow::Result<ExitCode> {
    match command {
        FrameCommand::Decode { hex } if hex == "-" => decode_lines(std::io::stdin().lock()),
        FrameCommand::Decode { hex } => {
            let frame = decode_hex_frame(&hex)?;
            println!("{}", json_line(&frame));
            Ok(ExitCode::SUCCESS)
        }
        FrameCommand::Encode { json } => {
            println!("{}", hex::encode(encode_spec(&json)?.encode()));
            Ok(ExitCode::SUCCESS)
        }
    }
}

/// Decodes one hex frame per line; blank lines are skipped. Every line gets an output line, so
/// output stays aligned with input; failures are counted and turn into a non-zero exit.
fn decode_lines(input: impl BufRead) -> anyhow::Result<ExitCode> {
    let stdout = std::io::stdout();
    let mut out = stdout.lock();
    let mut failed = 0usize;
    for (index, line) in input.lines().enumerate() {
        let line = line.with_context(|| format!("reading standard input, line {}", index + 1))?;
        if line.trim().is_empty() {
            continue;
        }
        let output = match decode_hex_frame(&line) {
            Ok(frame) => json_line(&frame),
            Err(err) => {
                failed += 1;
                let error = format!("line {}: {err:#}", index + 1);
                serde_json::json!({ "error": error }).to_string()
            }
        };
        writeln!(out, "{output}").context("writing standard output")?;
    }
    out.flush().context("writing standard output")?;
    if failed > 0 {
        eprintln!("ssm-tether: {failed} frame(s) could not be decoded");
        return Ok(ExitCode::from(super::EXIT_FAILURE));
    }
    Ok(ExitCode::SUCCESS)
}

fn decode_hex_frame(text: &str) -> anyhow::Result<DecodedMessage> {
    let compact: String = text.chars().filter(|c| !c.is_whitespace()).collect();
    let digits = compact.strip_prefix("0x").unwrap_or(&compact);
    let bytes = hex::decode(digits).context("frame is not valid hex")?;
    ClientMessage::decode(Bytes::from(bytes)).context("frame is not a valid ClientMessage")
}

fn json_line(frame: &DecodedMessage) -> String {
    // A struct of strings, integers and booleans always serializes.
    serde_json::to_string(&FrameJson::from(frame)).unwrap_or_default()
}

fn encode_spec(json: &str) -> anyhow::Result<ClientMessage> {
    let spec: FrameSpec = serde_json::from_str(json).context("frame JSON is invalid")?;
    if let Some(header_length) = spec.header_length
        && header_length != HEADER_LENGTH
    {
        bail!("header_length must be {HEADER_LENGTH}, got {header_length}");
    }
    let message_type = MessageType::parse(&spec.message_type)
        .with_context(|| format!("message_type {:?} is invalid", spec.message_type))?;
    let payload =
        hex::decode(spec.payload.as_deref().unwrap_or("")).context("payload is not valid hex")?;
    if let Some(declared) = spec.payload_length
        && u64::from(declared) != payload.len() as u64
    {
        bail!(
            "payload_length is {declared} but the payload has {} bytes",
            payload.len()
        );
    }
    let created_date = match spec.created_date {
        Some(0) => bail!("created_date must be non-zero: readers reject a frame dated 0"),
        Some(millis) => millis,
        None => now_millis()?,
    };
    let message_id = match spec.message_id {
        Some(text) => {
            Uuid::parse_str(&text).with_context(|| format!("message_id {text:?} is not a UUID"))?
        }
        None => Uuid::new_v4(),
    };
    Ok(ClientMessage {
        message_type,
        schema_version: spec.schema_version.unwrap_or(SCHEMA_VERSION),
        created_date,
        sequence_number: spec.sequence_number.unwrap_or(0),
        flags: spec.flags.unwrap_or(0),
        message_id,
        payload_type: PayloadType(spec.payload_type.unwrap_or(0)),
        payload: Bytes::from(payload),
    })
}

fn now_millis() -> anyhow::Result<u64> {
    let elapsed = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .context("system clock is before 1970")?;
    u64::try_from(elapsed.as_millis()).context("system clock is past the year 584 million")
}
