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
/// document. `parallel`: a text job's documents may be encoded in parallel
/// (see [`tokenize`]).
pub fn handle(
    tokenizers: &[Option<PairTokenizer>],
    parallel: bool,
    kind: u16,
    payload: &[u8],
    out: &mut Vec<u8>,
) -> Handled {
    let answered = match FrameKind::from_u16(kind) {
        Some(FrameKind::TextJob) => TextJob::decode(payload)
            .map_err(|e| (ERROR_INTERNAL, e.to_string()))
            .and_then(|job| text_job(pick(tokenizers, job.model)?, &job, parallel, out)),
        Some(FrameKind::QueryJob) => QueryJob::decode(payload)
            .map_err(|e| (ERROR_INTERNAL, e.to_string()))
            .and_then(|job| {
                let ids = query(pick(tokenizers, job.model)?, &job)
                    .map_err(|m| (ERROR_INVALID_INPUT, m))?;
                ids.encode(out);
                Ok(Handled {
                    kind: FrameKind::QueryIds,
                    count: 1,
                    pairs: 0,
                })
            }),
        _ => Err((
            ERROR_INTERNAL,
            format!("a tokenizer takes no frame of kind {kind}"),
        )),
    };
    answered.unwrap_or_else(|(code, message)| error(out, code, &message))
}

/// The tokenizer of model `model`: the supervisor sends only models this
/// worker was given, so a miss is the worker's fault, not the input's.
fn pick(tokenizers: &[Option<PairTokenizer>], model: u32) -> Result<&PairTokenizer, (u32, String)> {
    tokenizers
        .get(model as usize)
        .and_then(Option::as_ref)
        .ok_or_else(|| {
            (
                ERROR_INTERNAL,
                format!(
                    "no tokenizer for model {model}: this worker holds {} slots",
                    tokenizers.len()
                ),
            )
        })
}

/// A text job's answer into `out`: its pairs, or its windows.
fn text_job(
    tokenizer: &PairTokenizer,
    job: &TextJob,
    parallel: bool,
    out: &mut Vec<u8>,
) -> Result<Handled, (u32, String)> {
    let invalid = |m: String| (ERROR_INVALID_INPUT, m);
    let (kind, pairs) = if job.windows.is_on() {
        let windowed = tokenize_windows(tokenizer, job).map_err(invalid)?;
        windowed.encode(out);
        (FrameKind::Windows, windowed.batch.len())
    } else {
        let batch = tokenize(tokenizer, job, parallel).map_err(invalid)?;
        frame::encode_token_batch(&batch, out);
        (FrameKind::TokenBatch, batch.len())
    };
    Ok(Handled {
        kind,
        count: pairs as u32,
        pairs: pairs as u64,
    })
}

fn truncation_of(code: u32) -> Result<Truncation, String> {
    Truncation::from_code(code).ok_or_else(|| format!("unknown truncation code {code}"))
}

/// Tokenizes a request's query once for all of its pairs.
pub fn query(tokenizer: &PairTokenizer, job: &QueryJob) -> Result<QueryIds, String> {
    tokenizer
        .encode_query_ids_for(
            &job.query,
            job.instruction.as_deref(),
            truncation_of(job.truncation)?,
        )
        .map_err(|e| match e {
            TokenizeError::EmptyQuery => e.to_string(),
            other => format!("query: {other}"),
        })
}

/// Tokenizes a decoded job; the error names the document that failed.
///
/// With `parallel`, and the tokenizers library's batch parallelism on
/// (`TOKENIZERS_PARALLELISM`, which the library takes as on when unset),
/// the documents are encoded on the rayon pool; otherwise in order on this
/// thread. The batch is the same either way.
pub fn tokenize(
    tokenizer: &PairTokenizer,
    job: &TextJob,
    parallel: bool,
) -> Result<TokenBatch, String> {
    use tokenizers::utils::parallelism::MaybeParallelRefIterator;
    let truncation = truncation_of(job.truncation)?;
    // Every result kept in order, so that the error named is the first
    // failing document's however the work was split.
    let pairs: Vec<_> = job
        .passages
        .maybe_par_iter_cond(parallel)
        .map(|passage| tokenizer.encode_with_query(&job.query, passage, truncation))
        .collect();
    let total = pairs.iter().flatten().map(|(ids, _)| ids.len()).sum();
    let mut batch = TokenBatch::with_capacity(pairs.len(), total);
    for (i, pair) in pairs.into_iter().enumerate() {
        let (ids, types) =
            pair.map_err(|e| format!("document {}: {e}", job.first_index as usize + i))?;
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

#[cfg(test)]
mod tests {
    use super::*;
    use ce_common::frame::{Reply, WindowPlan};

    fn tokenizers() -> Vec<Option<PairTokenizer>> {
        let path = concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../../models/minilm-l6-ce/tokenizer.json"
        );
        let t = PairTokenizer::from_file(std::path::Path::new(path), 32).unwrap();
        vec![None, Some(t)]
    }

    fn answer(tokenizers: &[Option<PairTokenizer>], kind: FrameKind, payload: &[u8]) -> Reply {
        let mut out = Vec::new();
        let handled = handle(tokenizers, false, kind as u16, payload, &mut out);
        Reply::decode(handled.kind as u16, &out).unwrap()
    }

    #[test]
    fn parallel_encoding_gives_the_same_batch_and_names_the_first_failing_document() {
        let tokenizers = tokenizers();
        let tokenizer = tokenizers[1].as_ref().unwrap();
        let query = tokenizer
            .encode_query_ids("a query", Truncation::Off)
            .unwrap();
        let mut passages: Vec<String> = (0..40).map(|i| format!("passage number {i}")).collect();
        let job = |passages: Vec<String>| TextJob {
            query: query.clone(),
            passages,
            truncation: Truncation::Off.code(),
            first_index: 100,
            ..TextJob::default()
        };
        let run = |parallel: bool, job: &TextJob| {
            tokenizers::utils::parallelism::set_parallelism(parallel);
            let pool = rayon::ThreadPoolBuilder::new()
                .num_threads(4)
                .build()
                .unwrap();
            pool.install(|| tokenize(tokenizer, job, parallel))
        };
        let sequential = run(false, &job(passages.clone())).unwrap();
        assert_eq!(sequential.len(), 40);
        assert_eq!(run(true, &job(passages.clone())).unwrap(), sequential);
        // Two documents over the 32-token limit: the first one is named
        // however the work was split.
        passages[29] = "word ".repeat(40);
        passages[7] = "word ".repeat(40);
        for parallel in [false, true] {
            let error = run(parallel, &job(passages.clone())).unwrap_err();
            assert!(error.starts_with("document 107:"), "{error}");
        }
    }

    #[test]
    fn each_job_gets_its_models_tokenizer_and_its_kind_of_answer() {
        let tokenizers = tokenizers();
        let mut payload = Vec::new();
        QueryJob {
            model: 1,
            query: "what is a window".into(),
            truncation: 0,
            instruction: None,
        }
        .encode(&mut payload);
        let Reply::Query(query) = answer(&tokenizers, FrameKind::QueryJob, &payload) else {
            panic!("a query job answers with ids");
        };
        let job = |model, max_windows| TextJob {
            query: query.clone(),
            passages: vec!["short".into(), "word ".repeat(80)],
            model,
            windows: WindowPlan {
                max_windows,
                overlap: 4,
                doc_tokens: 0,
            },
            ..TextJob::default()
        };
        let mut payload = Vec::new();
        job(1, 0).encode(&mut payload);
        assert!(
            matches!(answer(&tokenizers, FrameKind::TextJob, &payload), Reply::Tokens(b) if b.len() == 2)
        );
        let mut payload = Vec::new();
        job(1, 8).encode(&mut payload);
        let Reply::Windows(windowed) = answer(&tokenizers, FrameKind::TextJob, &payload) else {
            panic!("a windowed job answers with windows");
        };
        assert_eq!(windowed.windows[0].passage, 0);
        assert!(windowed.windows.iter().filter(|w| w.passage == 1).count() > 1);
        for model in [0, 7] {
            let mut payload = Vec::new();
            job(model, 0).encode(&mut payload);
            let reply = answer(&tokenizers, FrameKind::TextJob, &payload);
            assert!(
                matches!(&reply, Reply::Error { code: ERROR_INTERNAL, message } if message.contains("no tokenizer for model")),
                "{reply:?}"
            );
        }
    }
}
