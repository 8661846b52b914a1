//! Codec benchmarks. Target (issue #2): encode + decode of a 1024-byte `input_stream_data`
//! message, SHA-256 both ways, under 3 µs per round trip on a 2-core machine.
//!
//! Run with `cargo bench --profile release -p ssm-tether-protocol --bench codec`.

#![allow(missing_docs)]

use bytes::{Bytes, BytesMut};
use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use ssm_tether_protocol::smux::{self, FrameDecoder};
use ssm_tether_protocol::{ClientMessage, MessageType, PayloadType};
use std::hint::black_box;
use uuid::Uuid;

fn message(payload_len: usize) -> ClientMessage {
    ClientMessage {
        message_type: MessageType::InputStreamData,
        schema_version: 1,
        created_date: 1_503_434_274_948,
        sequence_number: 42,
        flags: 0,
        message_id: Uuid::from_u128(0xdd01_e56b_ff48_483e_a508_b5f0_73f3_1b16),
        payload_type: PayloadType::OUTPUT,
        payload: Bytes::from((0..payload_len).map(|i| i as u8).collect::<Vec<_>>()),
    }
}

fn client_message(c: &mut Criterion) {
    let msg = message(1024);
    let mut group = c.benchmark_group("client_message_1024");
    group.throughput(Throughput::Bytes(1024));
    group.bench_function("encode", |b| b.iter(|| black_box(&msg).encode()));
    let frame = msg.encode();
    group.bench_function("decode", |b| {
        b.iter(|| ClientMessage::decode(black_box(frame.clone())).map(|d| d.digest_valid))
    });
    group.bench_function("round_trip", |b| {
        b.iter(|| {
            let decoded = ClientMessage::decode(black_box(&msg).encode()).ok();
            decoded.map(|d| d.digest_valid)
        })
    });
    group.finish();
}

fn smux_stream(c: &mut Criterion) {
    // 64 KiB of smux data written in 32 KiB frames, fed to the decoder in 1024-byte messages as
    // the data channel delivers it.
    let data = vec![0x5a_u8; 64 * 1024];
    let mut stream = BytesMut::new();
    smux::encode_data(3, &data, smux::MAX_FRAME_SIZE, &mut stream);
    let stream = stream.freeze();
    let mut group = c.benchmark_group("smux_64k_in_1024_chunks");
    group.throughput(Throughput::Bytes(data.len() as u64));
    group.bench_function("decode", |b| {
        b.iter(|| {
            let mut decoder = FrameDecoder::new();
            let mut total = 0;
            for chunk in stream.chunks(1024) {
                decoder.push(chunk);
                while let Ok(Some(frame)) = decoder.next_frame() {
                    total += frame.data.len();
                }
            }
            total
        })
    });
    group.finish();
}

criterion_group!(benches, client_message, smux_stream);
criterion_main!(benches);
