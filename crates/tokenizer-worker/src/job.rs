//! One text job: decode, tokenize every pair, encode the packed batch (or
//! an error that names the offending document).

use ce_common::TokenBatch;
use ce_common::frame::{self, ERROR_INTERNAL, ERROR_INVALID_INPUT, FrameKind, TextJob};

use crate::{PairTokenizer, TokenizeError, Truncation};

/// The outcome of a job: the reply frame's kind, count and pairs done. Its
/// payload has been written to the output buffer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct JobReply {
    /// [`FrameKind::TokenBatch`] or [`FrameKind::Error`].
    pub kind: FrameKind,
    /// Pairs in the batch (0 for an error).
    pub pairs: u32,
}

/// Tokenizes the text job in `payload` and writes the reply payload to `out`.
pub fn tokenize_job(tokenizer: &PairTokenizer, payload: &[u8], out: &mut Vec<u8>) -> JobReply {
    let job = match TextJob::decode(payload) {
        Ok(job) => job,
        Err(e) => return error(out, ERROR_INTERNAL, &e.to_string()),
    };
    match tokenize(tokenizer, &job) {
        Ok(batch) => {
            frame::encode_token_batch(&batch, out);
            JobReply {
                kind: FrameKind::TokenBatch,
                pairs: batch.len() as u32,
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

fn error(out: &mut Vec<u8>, code: u32, message: &str) -> JobReply {
    out.clear();
    frame::encode_error(code, message, out);
    JobReply {
        kind: FrameKind::Error,
        pairs: 0,
    }
}
