//! Every payload a worker or the supervisor decodes from shared memory:
//! the first two bytes pick the frame kind, the rest is the payload.
//! Decoding must never panic, and whatever decodes re-encodes to the same
//! bytes (the decoders accept exactly the encoders' output).
#![no_main]

use ce_common::frame::{self, QueryIds, QueryJob, Reply, TextJob, WindowedBatch};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if data.len() < 2 {
        return;
    }
    let kind = u16::from_le_bytes([data[0], data[1]]);
    let payload = &data[2..];
    let _ = Reply::decode(kind, payload);
    if let Ok(job) = TextJob::decode(payload) {
        let mut again = Vec::new();
        job.encode(&mut again);
        assert_eq!(again, payload);
        assert_eq!(job.encoded_len(), payload.len());
    }
    if let Ok(job) = QueryJob::decode(payload) {
        let mut again = Vec::new();
        job.encode(&mut again);
        assert_eq!(again, payload);
    }
    if let Ok(ids) = QueryIds::decode(payload) {
        assert!(ids.ids.len() <= ids.tokens as usize);
        let mut again = Vec::new();
        ids.encode(&mut again);
        assert_eq!(again, payload);
    }
    if let Ok(windowed) = WindowedBatch::decode(payload) {
        assert_eq!(windowed.windows.len(), windowed.batch.len());
        let mut again = Vec::new();
        windowed.encode(&mut again);
        assert_eq!(again, payload);
    }
    if let Ok((logits, labels)) = frame::decode_scores(payload) {
        let mut again = Vec::new();
        frame::encode_scores(&logits, labels, &mut again);
        assert_eq!(again, payload);
    }
    let _ = frame::decode_error(payload);
});
