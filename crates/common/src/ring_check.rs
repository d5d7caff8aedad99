//! Deterministic frame streams with checksums, for testing and benchmarking
//! rings end to end across processes (`ce-ring-peer`, the ring tests and
//! `ce-ring-bench` share it).
//!
//! Frame `i` of a stream with seed `s` has a size drawn from
//! [`size_for`]: 1 B … 1 MiB, log-uniform, with 99% of frames up to 4 KiB
//! so that ten million frames stay a few tens of gigabytes. A payload of 8
//! bytes or more ends with a checksum of the bytes before it.

use std::os::fd::BorrowedFd;
use std::time::Duration;

use crate::ring::{FrameMeta, Producer, RingError};

/// Frame kind that ends a stream; its `count` is the number of frames sent.
pub const END_KIND: u16 = 0xfff0;
/// Frame kind of a report: `count` = frames seen, `id` = checksum errors.
pub const REPORT_KIND: u16 = 0xfff1;
/// Largest frame of a checked stream.
pub const MAX_FRAME: usize = 1 << 20;

/// SplitMix64: tiny, fast, good enough to pick sizes and fill payloads.
#[derive(Debug, Clone)]
pub struct SplitMix(u64);

impl SplitMix {
    /// A generator from `seed`.
    pub fn new(seed: u64) -> Self {
        Self(seed)
    }

    /// The next value.
    #[allow(clippy::should_implement_trait)]
    pub fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }
}

/// Size of frame `i` of the stream with `seed`.
pub fn size_for(seed: u64, i: u64) -> usize {
    let mut r = SplitMix::new(seed ^ i.wrapping_mul(0x2545_f491_4f6c_dd1d));
    let a = r.next();
    let u = (r.next() >> 11) as f64 / (1u64 << 53) as f64;
    let (lo, hi) = if a.is_multiple_of(100) {
        (12.0, 20.0)
    } else {
        (0.0, 12.0)
    };
    ((2f64.powf(lo + u * (hi - lo))) as usize).clamp(1, MAX_FRAME)
}

fn checksum(bytes: &[u8]) -> u64 {
    let mut h = 0xcbf2_9ce4_8422_2325u64;
    let mut chunks = bytes.chunks_exact(8);
    for c in &mut chunks {
        let w = u64::from_le_bytes([c[0], c[1], c[2], c[3], c[4], c[5], c[6], c[7]]);
        h = (h ^ w).wrapping_mul(0x0000_0100_0000_01b3).rotate_left(29);
    }
    for &b in chunks.remainder() {
        h = (h ^ b as u64).wrapping_mul(0x0000_0100_0000_01b3);
    }
    h
}

/// Fills `out` with frame `i`'s payload (its size is [`size_for`]).
pub fn fill(seed: u64, i: u64, out: &mut Vec<u8>) {
    let len = size_for(seed, i);
    out.clear();
    out.resize(len, 0);
    let mut r = SplitMix::new(seed.rotate_left(17) ^ i);
    let body = len.saturating_sub(8).max(if len < 8 { len } else { 0 });
    for c in out[..body].chunks_mut(8) {
        let w = r.next().to_le_bytes();
        c.copy_from_slice(&w[..c.len()]);
    }
    if len >= 8 {
        let sum = checksum(&out[..len - 8]);
        out[len - 8..].copy_from_slice(&sum.to_le_bytes());
    }
}

/// Checks that `payload` is a well-formed frame `i` of the stream.
pub fn verify(seed: u64, i: u64, payload: &[u8]) -> bool {
    if payload.len() != size_for(seed, i) {
        return false;
    }
    if payload.len() < 8 {
        return true;
    }
    let (body, sum) = payload.split_at(payload.len() - 8);
    sum == checksum(body).to_le_bytes()
}

/// Sends frames `ids` of the checked stream with `seed`; returns the
/// payload bytes sent.
pub fn send_stream(
    producer: &mut Producer,
    seed: u64,
    ids: std::ops::Range<u64>,
    timeout: Duration,
    peer: Option<BorrowedFd<'_>>,
) -> Result<u64, RingError> {
    let (mut buf, mut bytes) = (Vec::new(), 0u64);
    for i in ids {
        fill(seed, i, &mut buf);
        bytes += buf.len() as u64;
        producer.send(
            FrameMeta {
                kind: 1,
                id: i,
                count: 0,
                work_us: 0,
            },
            &buf,
            timeout,
            peer,
        )?;
    }
    Ok(bytes)
}

/// Sends the frame that ends a stream of `count` frames, carrying `payload`.
pub fn send_end(
    producer: &mut Producer,
    count: u64,
    payload: &[u8],
    timeout: Duration,
    peer: Option<BorrowedFd<'_>>,
) -> Result<(), RingError> {
    producer.send(
        FrameMeta {
            kind: END_KIND,
            id: 0,
            count: count as u32,
            work_us: 0,
        },
        payload,
        timeout,
        peer,
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frames_verify_and_corruption_is_caught() {
        let mut buf = Vec::new();
        let mut big = 0;
        for i in 0..2000 {
            fill(5, i, &mut buf);
            assert!(verify(5, i, &buf));
            assert!((1..=MAX_FRAME).contains(&buf.len()));
            big += (buf.len() > 4096) as usize;
            if buf.len() >= 16 {
                buf[3] ^= 1;
                assert!(!verify(5, i, &buf));
            }
        }
        assert!((5..60).contains(&big), "{big} frames over 4 KiB");
    }
}
