//! ssm-emulator: a faithful local AWS SSM Session Manager service (SSM API + MGS data-channel
//! relay) and agent model, with seeded fault injection, for testing SSM clients on loopback.
//!
//! The emulator shares only the frame codec (`ssm-tether-protocol`) with ssm-tether. Its
//! reliability, handshake and forwarding logic model the real agent independently, so that a
//! bug in the runtime cannot cancel itself out in the tests.

pub mod agent;
pub mod api_faults;
pub mod cli;
pub mod config;
pub mod destination;
pub mod documents;
pub mod events;
pub mod faults;
pub mod instances;
pub mod kms;
pub mod server;
pub mod sessions;
pub mod sim;

mod admin;
mod agent_link;
mod api;
mod api_ext;
mod relay;
mod service;
mod supervisor;

pub use config::{AgentSettings, EmulatorConfig};
pub use faults::{FaultControl, FaultSettings};
pub use server::{Emulator, EmulatorError};
