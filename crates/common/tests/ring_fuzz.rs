//! Property test in the place of `cargo fuzz` (which needs a nightly
//! toolchain): arbitrary bytes as ring memory, headers and payloads must
//! give frames or errors, never a panic, a hang or an out-of-bounds read.
//!
//! Runs for `CE_FUZZ_SECONDS` (default 3); `CE_FUZZ_SEED` replays a run.
//! The executions and the seed are printed (`--nocapture`).

mod support;

use std::sync::Arc;
use std::time::{Duration, Instant};

use ce_common::batch::TokenBatch;
use ce_common::frame::{self, FrameKind, TextJob};
use ce_common::ring::{Consumer, Doorbells, FrameMeta, Producer, RING_HEADER_LEN, RingPlacement};
use ce_common::shm::SharedRegion;
use rand::rngs::StdRng;
use rand::{Rng, RngCore, SeedableRng};
use support::env_or;

fn random_payload(rng: &mut StdRng, out: &mut Vec<u8>) -> FrameKind {
    out.clear();
    match rng.random_range(0..5) {
        0 => {
            let job = TextJob {
                query: frame::QueryIds {
                    tokens: 40,
                    ids: (0..rng.random_range(0..40)).map(|i| i * 3).collect(),
                },
                passages: (0..rng.random_range(0..6))
                    .map(|i| "ü".repeat(i * 7))
                    .collect(),
                truncation: rng.random_range(0..3),
                first_index: rng.random(),
                model: rng.random_range(0..3),
                windows: frame::WindowPlan {
                    max_windows: rng.random_range(0..4),
                    overlap: rng.random_range(0..64),
                    doc_tokens: rng.random(),
                },
            };
            job.encode(out);
            FrameKind::TextJob
        }
        1 => {
            let mut batch = TokenBatch::default();
            for _ in 0..rng.random_range(1..5) {
                let n = rng.random_range(1..30);
                let ids: Vec<u32> = (0..n).map(|_| rng.random_range(0..30_000)).collect();
                let types: Vec<u32> = (0..n).map(|_| rng.random_range(0..2)).collect();
                batch.push(&ids, &types);
            }
            frame::encode_token_batch(&batch, out);
            FrameKind::TokenBatch
        }
        2 => {
            let logits: Vec<f32> = (0..rng.random_range(0..50)).map(|_| rng.random()).collect();
            frame::encode_scores(&logits, 1, out);
            FrameKind::Scores
        }
        3 => {
            frame::encode_error(rng.random(), "worker failed", out);
            FrameKind::Error
        }
        _ => {
            out.resize(rng.random_range(0..600), 0);
            rng.fill_bytes(out);
            FrameKind::Error
        }
    }
}

/// Decodes a payload as its header claims; the result does not matter.
fn decode(kind: u16, payload: &[u8]) -> bool {
    match FrameKind::from_u16(kind) {
        Some(FrameKind::TextJob) => TextJob::decode(payload).is_ok(),
        Some(FrameKind::TokenBatch) => frame::decode_token_batch(payload).is_ok(),
        Some(FrameKind::Scores) => frame::decode_scores(payload).is_ok(),
        Some(FrameKind::Error) => frame::decode_error(payload).is_ok(),
        Some(FrameKind::QueryJob) => frame::QueryJob::decode(payload).is_ok(),
        Some(FrameKind::QueryIds) => frame::QueryIds::decode(payload).is_ok(),
        Some(FrameKind::Windows) => frame::WindowedBatch::decode(payload).is_ok(),
        None => false,
    }
}

#[derive(Default, Debug)]
struct Tally {
    runs: u64,
    frames: u64,
    decoded: u64,
    ring_errors: u64,
    attach_errors: u64,
}

fn one_run(rng: &mut StdRng, tally: &mut Tally) {
    let at = RingPlacement {
        offset: 0,
        capacity: 4096 << rng.random_range(0..3),
    };
    let region = Arc::new(SharedRegion::create("ce-fuzz", at.footprint()).unwrap());
    let (bells, theirs) = Doorbells::pair().unwrap();
    let mut producer = Producer::create(region.clone(), at, bells).unwrap();
    let mut consumer = Consumer::attach(region.clone(), at, theirs).unwrap();
    let mut payload = Vec::new();
    let mut out = Vec::new();
    // Some honest traffic first, partly consumed, so the indices wrap.
    for i in 0..rng.random_range(0..40u64) {
        let kind = random_payload(rng, &mut payload);
        if !producer
            .try_send(
                FrameMeta {
                    kind: kind as u16,
                    id: i,
                    count: 0,
                    work_us: 0,
                },
                &payload,
            )
            .unwrap()
        {
            break;
        }
        if rng.random_bool(0.6) {
            consumer.try_recv(&mut out).unwrap();
        }
    }
    // Then corruption: random bytes anywhere, index words, or the whole data area.
    // SAFETY: the region is `footprint` bytes long and only this thread touches it.
    let bytes = unsafe {
        std::slice::from_raw_parts_mut(region.as_ptr(), region.len().min(at.footprint()))
    };
    match rng.random_range(0..4) {
        0 => {
            for _ in 0..rng.random_range(1..16) {
                let i = rng.random_range(0..bytes.len());
                bytes[i] = rng.random();
            }
        }
        1 => {
            // head, tail: anything, or near the honest values.
            for word in [64usize, 128] {
                let v: u64 = if rng.random_bool(0.5) {
                    rng.random()
                } else {
                    u64::from_le_bytes(bytes[word..word + 8].try_into().unwrap())
                        .wrapping_add(rng.random_range(0..64))
                };
                bytes[word..word + 8].copy_from_slice(&v.to_le_bytes());
            }
        }
        2 => rng.fill_bytes(&mut bytes[RING_HEADER_LEN..]),
        _ => rng.fill_bytes(bytes),
    }
    // Both a long-lived consumer and a freshly attached one must cope.
    let fresh = Consumer::attach(region.clone(), at, Doorbells::pair().unwrap().1);
    let mut consumers = vec![consumer];
    match fresh {
        Ok(c) => consumers.push(c),
        Err(_) => tally.attach_errors += 1,
    }
    for c in &mut consumers {
        for _ in 0..64 {
            match c.try_recv(&mut out) {
                Ok(Some(h)) => {
                    assert_eq!(out.len(), h.len as usize);
                    tally.frames += 1;
                    tally.decoded += decode(h.kind, &out) as u64;
                }
                Ok(None) => break,
                Err(_) => {
                    tally.ring_errors += 1;
                    break;
                }
            }
        }
    }
    // A producer on corrupt memory must refuse, not scribble out of bounds.
    if let Ok(mut p) = Producer::attach(region, at, Doorbells::pair().unwrap().0) {
        let _ = p.try_send(
            FrameMeta {
                kind: 1,
                id: 0,
                count: 0,
                work_us: 0,
            },
            &payload,
        );
    }
    tally.runs += 1;
}

#[test]
fn arbitrary_ring_memory_never_panics() {
    let seconds = env_or("CE_FUZZ_SECONDS", 3);
    let seed = env_or("CE_FUZZ_SEED", rand::rng().random());
    eprintln!("ring fuzz: seed {seed}, {seconds} s (replay with CE_FUZZ_SEED={seed})");
    let mut rng = StdRng::seed_from_u64(seed);
    let mut tally = Tally::default();
    let until = Instant::now() + Duration::from_secs(seconds);
    while Instant::now() < until {
        one_run(&mut rng, &mut tally);
    }
    eprintln!("ring fuzz: {tally:?}");
    assert!(
        tally.runs > 0 && tally.frames > 0 && tally.ring_errors > 0,
        "the fuzzer explored nothing: {tally:?}"
    );
}
