//! smux v1 decoding: never panics, and the frames found do not depend on how the stream is
//! chunked (the first byte picks the chunk size).
#![no_main]

use libfuzzer_sys::fuzz_target;
use ssm_tether_protocol::smux::{Frame, FrameDecoder, SmuxError};

fn decode(stream: &[u8], chunk: usize) -> (Vec<Frame>, Option<SmuxError>) {
    let mut decoder = FrameDecoder::new();
    let mut frames = Vec::new();
    for piece in stream.chunks(chunk) {
        decoder.push(piece);
        loop {
            match decoder.next_frame() {
                Ok(Some(frame)) => frames.push(frame),
                Ok(None) => break,
                Err(err) => return (frames, Some(err)),
            }
        }
    }
    (frames, None)
}

fuzz_target!(|data: &[u8]| {
    let Some((&first, stream)) = data.split_first() else { return };
    let whole = decode(stream, stream.len().max(1));
    let chunked = decode(stream, usize::from(first).max(1));
    assert_eq!(whole, chunked);
});
