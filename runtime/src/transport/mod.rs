//! The data-channel transport: WebSocket connect and the SigV4-signed upgrade.

pub mod connect;
pub mod proxy;
pub mod sign;
