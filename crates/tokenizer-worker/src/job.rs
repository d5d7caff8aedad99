//! One text job: decode, tokenize every pair, encode the packed batch (or
//! an error that names the offending document).

use ce_common::TokenBatch;
use ce_common::frame::{self, ERROR_INTERNAL, ERROR_INVALID_INPUT, FrameKind, TextJob};
use ce_common::worker::Handled;

use crate::{PairTokenizer, TokenizeError, Truncation};

/// Tokenizes the text job in `payload` and writes the reply payload to
/// `out`: a token batch, or an error that names the offending document.
pub fn tokenize_job(tokenizer: &PairTokenizer, payload: &[u8], out: &mut Vec<u8>) -> Handled {
    let job = match TextJob::decode(payload) {
        Ok(job) => job,
        Err(e) => return error(out, ERROR_INTERNAL, &e.to_string()),
    };
    match tokenize(tokenizer, &job) {
        Ok(batch) => {
            frame::encode_token_batch(&batch, out);
            Handled {
                kind: FrameKind::TokenBatch,
                count: batch.len() as u32,
                pairs: batch.len() as u64,
            }
        }
        Err(message) => error(out, ERROR_INVALID_INPUT, &message),
    }
}

/// Tokenizes a decoded job; the error names the document that failed.
pub fn tokenize(tokenizer: &PairTokenizer, job: &TextJob) -> Result<TokenBatch, String> {
    let truncation = Truncation::from_code(job.truncation)
        .ok_or_else(|| format!("unknown truncation code {}", job.truncation))?;
    let total: usize = job
        .passages
        .iter()
        .map(|p| p.len() / 3 + job.query.len() / 3 + 3)
        .sum();
    let mut batch = TokenBatch::with_capacity(job.passages.len(), total);
    for (i, passage) in job.passages.iter().enumerate() {
        tokenizer
            .encode_into(&mut batch, &job.query, passage, truncation)
            .map_err(|e| match e {
                TokenizeError::EmptyQuery => e.to_string(),
                other => format!("document {}: {other}", job.first_index as usize + i),
            })?;
    }
    Ok(batch)
}

fn error(out: &mut Vec<u8>, code: u32, message: &str) -> Handled {
    out.clear();
    frame::encode_error(code, message, out);
    Handled {
        kind: FrameKind::Error,
        count: 0,
        pairs: 0,
    }
}
