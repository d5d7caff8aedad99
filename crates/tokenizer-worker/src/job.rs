//! One job: a request's query ([`QueryJob`], tokenized once) or a text job
//! (its passages against the query's ids, or their windows): decode, pick
//! the job's model's tokenizer, tokenize, encode the packed batch (or an
//! error that names the offending document).

use ce_common::TokenBatch;
use ce_common::frame::{
    self, ERROR_INTERNAL, ERROR_INVALID_INPUT, FrameKind, QueryIds, QueryJob, TextJob, Window,
    WindowedBatch,
};
use ce_common::worker::Handled;

use crate::{PairTokenizer, TokenizeError, Truncation};

/// Answers the frame of kind `kind` in `payload` into `out` with the
/// tokenizer of the job's model (`tokenizers[job.model]`): the query's ids,
/// a token batch or a windowed batch, or an error that names the offending
/// document.
pub fn handle(
    tokenizers: &[Option<PairTokenizer>],
    kind: u16,
    payload: &[u8],
    out: &mut Vec<u8>,
) -> Handled {
    let pick = |model: u32| {
        tokenizers
            .get(model as usize)
            .and_then(Option::as_ref)
            .ok_or_else(|| {
                format!(
                    "no tokenizer for model {model}: this worker holds {} slots",
                    tokenizers.len()
                )
            })
    };
    match FrameKind::from_u16(kind) {
        Some(FrameKind::TextJob) => {
            let job = match TextJob::decode(payload) {
                Ok(job) => job,
                Err(e) => return error(out, ERROR_INTERNAL, &e.to_string()),
            };
            let tokenizer = match pick(job.model) {
                Ok(t) => t,
                Err(message) => return error(out, ERROR_INTERNAL, &message),
            };
            if job.windows.is_on() {
                return match tokenize_windows(tokenizer, &job) {
                    Ok(windowed) => {
                        windowed.encode(out);
                        let pairs = windowed.batch.len();
                        Handled {
                            kind: FrameKind::Windows,
                            count: pairs as u32,
                            pairs: pairs as u64,
                        }
                    }
                    Err(message) => error(out, ERROR_INVALID_INPUT, &message),
                };
            }
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
        Some(FrameKind::QueryJob) => {
            let job = match QueryJob::decode(payload) {
                Ok(job) => job,
                Err(e) => return error(out, ERROR_INTERNAL, &e.to_string()),
            };
            let tokenizer = match pick(job.model) {
                Ok(t) => t,
                Err(message) => return error(out, ERROR_INTERNAL, &message),
            };
            match query(tokenizer, &job) {
                Ok(ids) => {
                    ids.encode(out);
                    Handled {
                        kind: FrameKind::QueryIds,
                        count: 1,
                        pairs: 0,
                    }
                }
                Err(message) => error(out, ERROR_INVALID_INPUT, &message),
            }
        }
        _ => {
            let message = format!("a tokenizer takes no frame of kind {kind}");
            error(out, ERROR_INTERNAL, &message)
        }
    }
}

fn truncation_of(code: u32) -> Result<Truncation, String> {
    Truncation::from_code(code).ok_or_else(|| format!("unknown truncation code {code}"))
}

/// Tokenizes a request's query once for all of its pairs.
pub fn query(tokenizer: &PairTokenizer, job: &QueryJob) -> Result<QueryIds, String> {
    tokenizer
        .encode_query_ids(&job.query, truncation_of(job.truncation)?)
        .map_err(|e| match e {
            TokenizeError::EmptyQuery => e.to_string(),
            other => format!("query: {other}"),
        })
}

/// Tokenizes a decoded job; the error names the document that failed.
pub fn tokenize(tokenizer: &PairTokenizer, job: &TextJob) -> Result<TokenBatch, String> {
    let truncation = truncation_of(job.truncation)?;
    let total: usize = job
        .passages
        .iter()
        .map(|p| (p.len() / 3 + job.query.ids.len() + 3).min(tokenizer.max_length()))
        .sum();
    let mut batch = TokenBatch::with_capacity(job.passages.len(), total);
    for (i, passage) in job.passages.iter().enumerate() {
        let (ids, types) = tokenizer
            .encode_with_query(&job.query, passage, truncation)
            .map_err(|e| format!("document {}: {e}", job.first_index as usize + i))?;
        batch.push(&ids, &types);
    }
    Ok(batch)
}

/// Tokenizes a decoded windowed job: every passage's windows, passages in
/// order; the error names the document that failed.
pub fn tokenize_windows(tokenizer: &PairTokenizer, job: &TextJob) -> Result<WindowedBatch, String> {
    let mut windowed = WindowedBatch::default();
    for (i, passage) in job.passages.iter().enumerate() {
        let pairs = tokenizer
            .encode_windows(&job.query, passage, job.windows)
            .map_err(|e| format!("document {}: {e}", job.first_index as usize + i))?;
        for pair in pairs {
            windowed.batch.push(&pair.ids, &pair.types);
            windowed.windows.push(Window {
                passage: i as u32,
                start: pair.start,
                end: pair.end,
            });
        }
    }
    Ok(windowed)
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
