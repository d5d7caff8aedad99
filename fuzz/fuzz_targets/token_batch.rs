//! Token batches as a model worker reads them off its ring: decoding and
//! the engine's limits check must never panic, a batch that passes has a
//! consistent layout, and it re-encodes to the same bytes.
#![no_main]

use ce_common::batch::BatchLimits;
use ce_common::frame;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(batch) = frame::decode_token_batch(data) else {
        return;
    };
    let limits = BatchLimits {
        vocab_size: 30_522,
        type_vocab_size: 2,
        max_sequence_len: 512,
    };
    if batch.validate(&limits).is_ok() {
        for i in 0..batch.len() {
            assert_eq!(batch.ids(i).len(), batch.types(i).len());
            assert!(batch.seq_len(i) <= 512);
            assert!(batch.ids(i).iter().all(|&id| id < 30_522));
        }
    }
    let mut again = Vec::new();
    frame::encode_token_batch(&batch, &mut again);
    assert_eq!(again, data);
});
