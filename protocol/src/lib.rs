//! The SSM data-channel wire formats, sans-IO.
//!
//! This crate is the protocol core of ssm-tether (re-exported as `ssm_tether::protocol`). It is
//! a crate of its own, rather than a module of the runtime, because the emulator speaks the same
//! wire format from the other side and the runtime's CLI embeds the emulator: a shared leaf
//! crate is the only dependency graph without a cycle. Only the codec is shared; the
//! emulator's reliability, session and forwarding logic is its own.
//!
//! * [`message`]: the binary `ClientMessage` frame every WebSocket binary message carries
//!   (docs/protocol.md §2), with [`MessageType`] and [`PayloadType`].
//! * [`payload`]: the JSON and binary payloads carried inside those frames (§3–§5).
//! * [`smux`]: the xtaci/smux v1 frame format multiplexed inside `Output` payloads (§6.2).
//!
//! Nothing here performs I/O or reads a clock: callers pass times and bytes in, and get bytes
//! and typed values out, so every rule can be tested deterministically and fuzzed.

pub mod message;
pub mod message_type;
pub mod payload;
pub mod payload_type;
pub mod smux;

pub use message::{ClientMessage, DecodeError, DecodedMessage};
pub use message_type::{MessageType, MessageTypeError};
pub use payload_type::PayloadType;
