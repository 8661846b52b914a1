//! ClientMessage decoding: never panics, and whatever decodes re-encodes to a frame that decodes
//! to the same message.
#![no_main]

use bytes::Bytes;
use libfuzzer_sys::fuzz_target;
use ssm_tether_protocol::ClientMessage;

fuzz_target!(|data: &[u8]| {
    if let Ok(decoded) = ClientMessage::decode(Bytes::copy_from_slice(data)) {
        let again = ClientMessage::decode(decoded.message.encode()).expect("own frames decode");
        assert!(again.digest_valid);
        assert_eq!(again.message, decoded.message);
    }
});
