//! Every payload parser: never panics on arbitrary bytes.
#![no_main]

use libfuzzer_sys::fuzz_target;
use ssm_tether_protocol::payload::{
    AcknowledgeContent, AgentSessionState, ChannelClosed, Flag, HandshakeComplete,
    HandshakeRequest, HandshakeResponse, OpenDataChannel,
};

fuzz_target!(|data: &[u8]| {
    let _ = AcknowledgeContent::from_payload(data);
    let _ = HandshakeRequest::from_payload(data).map(|request| request.session_type());
    let _ = HandshakeResponse::from_payload(data);
    let _ = HandshakeComplete::from_payload(data);
    let _ = ChannelClosed::from_payload(data);
    let _ = AgentSessionState::from_payload(data);
    let _ = Flag::from_payload(data);
    if let Ok(text) = std::str::from_utf8(data) {
        let _ = OpenDataChannel::from_json(text);
    }
});
