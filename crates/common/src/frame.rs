//! Ring frames: a fixed little-endian header and typed, packed payloads.
//!
//! ```text
//! FrameHeader (24 B): len u32 | kind u16 | flags u16 | id u64 | count u32 | work_us u32
//! QueryJob:    truncation u32 | model u32 | query bytes
//! TextJob:     n u32 | query_tokens u32 | query_len u32 | truncation u32 | first_index u32
//!              | model u32 | max_windows u32 | overlap u32 | doc_tokens u32
//!              | passage_len u32 × n | query ids u32 × query_len | passage bytes…
//! TokenBatch:  n u32 | tokens u32 | offsets u32 × (n+1) | input_ids u32 × tokens | type_ids u32 × tokens
//! Windows:     n u32 | (passage u32 | start u32 | end u32) × n | TokenBatch of n pairs
//! Scores:      n u32 | labels u32 | logits f32 × (n·labels)
//! Error:       code u32 | UTF-8 message
//! ```
//!
//! Decoders trust nothing: every count times its element size must equal the
//! payload length, offsets must be monotone and in range, text must be UTF-8.

use bytemuck::{Pod, Zeroable};

use crate::batch::TokenBatch;

const _: () = assert!(
    cfg!(target_endian = "little"),
    "ring frames are little-endian in place"
);

/// Bytes of a [`FrameHeader`].
pub const FRAME_HEADER_LEN: usize = 24;

/// The fixed header before every payload, read in place.
#[repr(C)]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Pod, Zeroable)]
pub struct FrameHeader {
    /// Payload length in bytes (the record is padded to 8).
    pub len: u32,
    /// A [`FrameKind`] value.
    pub kind: u16,
    /// Reserved flags (0).
    pub flags: u16,
    /// Request, job or batch id.
    pub id: u64,
    /// Element count (pairs, scores), meaning per kind.
    pub count: u32,
    /// On replies: microseconds the worker spent on the job (its forward
    /// pass or tokenization), so the supervisor can tell work from
    /// transfer; 0 otherwise.
    pub work_us: u32,
}

const _: () = assert!(std::mem::size_of::<FrameHeader>() == FRAME_HEADER_LEN);

impl FrameHeader {
    /// A header for a payload of `len` bytes.
    pub fn new(kind: u16, id: u64, count: u32, len: u32) -> Self {
        Self {
            len,
            kind,
            flags: 0,
            id,
            count,
            work_us: 0,
        }
    }

    /// All zeroes.
    pub fn zeroed() -> Self {
        Zeroable::zeroed()
    }
}

/// What a frame carries.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u16)]
pub enum FrameKind {
    /// Supervisor → tokenizer: a query and passages to tokenize.
    TextJob = 1,
    /// Tokenizer → supervisor, supervisor → model: a packed token batch.
    TokenBatch = 2,
    /// Model → supervisor: logits of a batch.
    Scores = 3,
    /// Either way: a job or batch failed.
    Error = 4,
    /// Supervisor → tokenizer: a request's query, tokenized once for all
    /// of its pairs.
    QueryJob = 5,
    /// Tokenizer → supervisor: a query's ids ([`QueryIds`]).
    QueryIds = 6,
    /// Tokenizer → supervisor: the windows of a job's passages and their
    /// pairs ([`WindowedBatch`]), the answer to a [`TextJob`] with a
    /// [`WindowPlan`].
    Windows = 7,
}

impl FrameKind {
    /// Parses a header's kind field.
    pub fn from_u16(v: u16) -> Option<Self> {
        Some(match v {
            1 => FrameKind::TextJob,
            2 => FrameKind::TokenBatch,
            3 => FrameKind::Scores,
            4 => FrameKind::Error,
            5 => FrameKind::QueryJob,
            6 => FrameKind::QueryIds,
            7 => FrameKind::Windows,
            _ => return None,
        })
    }
}

/// Why a payload was rejected.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("malformed {kind} payload: {reason}")]
pub struct FrameError {
    /// The payload kind being decoded.
    pub kind: &'static str,
    /// What was wrong.
    pub reason: String,
}

fn err(kind: &'static str, reason: impl Into<String>) -> FrameError {
    FrameError {
        kind,
        reason: reason.into(),
    }
}

/// Reads little-endian u32s from a byte slice, checking bounds.
struct Reader<'a> {
    bytes: &'a [u8],
    at: usize,
    kind: &'static str,
}

impl<'a> Reader<'a> {
    fn new(bytes: &'a [u8], kind: &'static str) -> Self {
        Self { bytes, at: 0, kind }
    }

    fn take(&mut self, n: usize) -> Result<&'a [u8], FrameError> {
        let end = self
            .at
            .checked_add(n)
            .filter(|&e| e <= self.bytes.len())
            .ok_or_else(|| {
                err(
                    self.kind,
                    format!(
                        "needs {n} bytes at {} but has {}",
                        self.at,
                        self.bytes.len()
                    ),
                )
            })?;
        let s = &self.bytes[self.at..end];
        self.at = end;
        Ok(s)
    }

    fn u32(&mut self) -> Result<u32, FrameError> {
        let b = self.take(4)?;
        Ok(u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
    }

    fn u32s(&mut self, n: usize) -> Result<Vec<u32>, FrameError> {
        let bytes = n
            .checked_mul(4)
            .ok_or_else(|| err(self.kind, "count overflows"))?;
        let b = self.take(bytes)?;
        Ok(b.chunks_exact(4)
            .map(|c| u32::from_le_bytes([c[0], c[1], c[2], c[3]]))
            .collect())
    }

    fn finish(self) -> Result<(), FrameError> {
        if self.at == self.bytes.len() {
            Ok(())
        } else {
            Err(err(
                self.kind,
                format!("{} trailing bytes", self.bytes.len() - self.at),
            ))
        }
    }
}

fn put_u32s(out: &mut Vec<u8>, values: &[u32]) {
    out.reserve(values.len() * 4);
    for v in values {
        out.extend_from_slice(&v.to_le_bytes());
    }
}

/// Error code: the client's input cannot be processed (too long with
/// truncation off, empty query…); the message says why.
pub const ERROR_INVALID_INPUT: u32 = 1;
/// Error code: the worker failed on valid input.
pub const ERROR_INTERNAL: u32 = 2;

/// A query to tokenize once for every pair of its request.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct QueryJob {
    /// Which of the worker's tokenizers (the served model's index).
    pub model: u32,
    /// The query.
    pub query: String,
    /// The request's truncation code (see [`TextJob::truncation`]): it
    /// decides which end of an over-long query is kept.
    pub truncation: u32,
    /// An LLM reranker's instruction for this request (`None`: the
    /// model's default).
    pub instruction: Option<String>,
}

impl QueryJob {
    /// Payload bytes of this job.
    pub fn encoded_len(&self) -> usize {
        12 + self.instruction.as_ref().map_or(0, String::len) + self.query.len()
    }

    /// Appends the payload: truncation, model, the instruction's length
    /// plus one (0: none) and bytes, then the query's bytes.
    pub fn encode(&self, out: &mut Vec<u8>) {
        let instruction = self.instruction.as_deref();
        let marker = instruction.map_or(0, |i| i.len() as u32 + 1);
        put_u32s(out, &[self.truncation, self.model, marker]);
        out.extend_from_slice(instruction.unwrap_or("").as_bytes());
        out.extend_from_slice(self.query.as_bytes());
    }

    /// Decodes and validates a payload.
    pub fn decode(bytes: &[u8]) -> Result<Self, FrameError> {
        const K: &str = "query job";
        let mut r = Reader::new(bytes, K);
        let truncation = r.u32()?;
        let model = r.u32()?;
        let marker = r.u32()? as usize;
        let text = |b: &[u8]| {
            String::from_utf8(b.to_vec()).map_err(|e| err(K, format!("invalid UTF-8: {e}")))
        };
        let instruction = match marker {
            0 => None,
            n => Some(text(r.take(n - 1)?)?),
        };
        let rest_len = bytes.len() - 12 - marker.saturating_sub(1);
        let query = text(r.take(rest_len)?)?;
        r.finish()?;
        Ok(Self {
            model,
            query,
            truncation,
            instruction,
        })
    }
}

/// A tokenized query: the length pair truncation weighs it at and the ids
/// a pair can use of it (at most the model's length, from the end
/// truncation keeps).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct QueryIds {
    /// Its length as longest-first truncation weighs it, without special
    /// tokens (at least `ids.len()`).
    pub tokens: u32,
    /// Its ids, without special tokens, cut to the model's length.
    pub ids: Vec<u32>,
}

impl QueryIds {
    /// Appends the payload to `out`.
    pub fn encode(&self, out: &mut Vec<u8>) {
        put_u32s(out, &[self.tokens, self.ids.len() as u32]);
        put_u32s(out, &self.ids);
    }

    /// Decodes and validates a payload.
    pub fn decode(bytes: &[u8]) -> Result<Self, FrameError> {
        const K: &str = "query ids";
        let mut r = Reader::new(bytes, K);
        let tokens = r.u32()?;
        let n = r.u32()? as usize;
        if n > bytes.len() / 4 || n > tokens as usize {
            return Err(err(
                K,
                format!("{n} ids of a {tokens}-token query in {} bytes", bytes.len()),
            ));
        }
        let ids = r.u32s(n)?;
        r.finish()?;
        Ok(Self { tokens, ids })
    }
}

/// A query's token ids (tokenized once per request, see [`QueryJob`]) and
/// the passages to tokenize against it.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct TextJob {
    /// The query, tokenized (longest-first truncation weighs its whole
    /// length, so that is sent with the ids a pair can use).
    pub query: QueryIds,
    /// The passages.
    pub passages: Vec<String>,
    /// How over-long pairs are handled: 0 truncate the end, 1 truncate the
    /// start, 2 refuse (the tokenizer's `Truncation` codes).
    pub truncation: u32,
    /// Request-level index of the first passage, so that an error can name
    /// the document the client sent.
    pub first_index: u32,
    /// Which of the worker's tokenizers (the served model's index).
    pub model: u32,
    /// Whether long passages are split into windows (then the reply is a
    /// [`WindowedBatch`]) and how.
    pub windows: WindowPlan,
}

/// How a passage that does not fit beside the query is split into
/// overlapping windows of tokens, each scored as its own pair. All zeroes:
/// no windows (truncation applies).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct WindowPlan {
    /// Windows per passage at most; 0 turns windowing off. A passage's
    /// windows after this many are not scored.
    pub max_windows: u32,
    /// Tokens each window shares with the one before.
    pub overlap: u32,
    /// Tokens of a passage considered at most (the rest is cut before it
    /// is split); 0 for all of them.
    pub doc_tokens: u32,
}

impl WindowPlan {
    /// True when passages are split into windows.
    pub fn is_on(&self) -> bool {
        self.max_windows > 0
    }
}

/// Payload bytes of a [`TextJob`] before its passages: the header and the
/// query's ids.
pub fn text_job_base_len(query_ids: usize) -> usize {
    36 + 4 * query_ids
}

/// Payload bytes one passage of `len` bytes adds to a [`TextJob`].
pub fn text_job_passage_len(len: usize) -> usize {
    4 + len
}

impl TextJob {
    /// Payload bytes of this job.
    pub fn encoded_len(&self) -> usize {
        text_job_base_len(self.query.ids.len())
            + self
                .passages
                .iter()
                .map(|p| text_job_passage_len(p.len()))
                .sum::<usize>()
    }

    /// Appends the payload to `out`.
    pub fn encode(&self, out: &mut Vec<u8>) {
        out.reserve(self.encoded_len());
        let lens: Vec<u32> = self.passages.iter().map(|p| p.len() as u32).collect();
        put_u32s(
            out,
            &[
                self.passages.len() as u32,
                self.query.tokens,
                self.query.ids.len() as u32,
                self.truncation,
                self.first_index,
                self.model,
                self.windows.max_windows,
                self.windows.overlap,
                self.windows.doc_tokens,
            ],
        );
        put_u32s(out, &lens);
        put_u32s(out, &self.query.ids);
        for p in &self.passages {
            out.extend_from_slice(p.as_bytes());
        }
    }

    /// Decodes and validates a payload.
    pub fn decode(bytes: &[u8]) -> Result<Self, FrameError> {
        const K: &str = "text job";
        let mut r = Reader::new(bytes, K);
        let n = r.u32()? as usize;
        let query_tokens = r.u32()?;
        let query_len = r.u32()? as usize;
        let truncation = r.u32()?;
        let first_index = r.u32()?;
        let model = r.u32()?;
        let windows = WindowPlan {
            max_windows: r.u32()?,
            overlap: r.u32()?,
            doc_tokens: r.u32()?,
        };
        if query_len > query_tokens as usize {
            return Err(err(
                K,
                format!("{query_len} ids of a {query_tokens}-token query"),
            ));
        }
        if n > bytes.len() / 4 || query_len > bytes.len() / 4 {
            return Err(err(
                K,
                format!(
                    "{n} passages and {query_len} query ids cannot fit in {} bytes",
                    bytes.len()
                ),
            ));
        }
        let lens = r.u32s(n)?;
        let query_ids = r.u32s(query_len)?;
        let passages = lens
            .iter()
            .map(|&l| {
                let b = r.take(l as usize)?;
                String::from_utf8(b.to_vec()).map_err(|e| err(K, format!("invalid UTF-8: {e}")))
            })
            .collect::<Result<_, _>>()?;
        r.finish()?;
        Ok(Self {
            query: QueryIds {
                tokens: query_tokens,
                ids: query_ids,
            },
            passages,
            truncation,
            first_index,
            model,
            windows,
        })
    }
}

/// Where one pair of a [`WindowedBatch`] comes from: a window of one
/// passage of the job, in characters of that passage.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Window {
    /// The passage's position in its job.
    pub passage: u32,
    /// Character offset of the window's first token in the passage.
    pub start: u32,
    /// Character offset just past its last token.
    pub end: u32,
}

/// A windowed job's answer: one pair per window, windows of a passage
/// consecutive and passages in job order, every passage with at least one.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct WindowedBatch {
    /// Where each pair comes from, parallel to `batch`.
    pub windows: Vec<Window>,
    /// The pairs.
    pub batch: TokenBatch,
}

impl WindowedBatch {
    /// Appends the payload to `out`.
    pub fn encode(&self, out: &mut Vec<u8>) {
        put_u32s(out, &[self.windows.len() as u32]);
        for w in &self.windows {
            put_u32s(out, &[w.passage, w.start, w.end]);
        }
        encode_token_batch(&self.batch, out);
    }

    /// Decodes a payload and checks that windows and pairs agree, passages
    /// come in order and every window's offsets are ordered. Whether each
    /// passage of the job has a window is for the receiver to check (it
    /// knows the job).
    pub fn decode(bytes: &[u8]) -> Result<Self, FrameError> {
        const K: &str = "windowed batch";
        let mut r = Reader::new(bytes, K);
        let n = r.u32()? as usize;
        if n > bytes.len() / 12 {
            return Err(err(K, format!("{n} windows in {} bytes", bytes.len())));
        }
        let fields = r.u32s(3 * n)?;
        let windows: Vec<Window> = fields
            .chunks_exact(3)
            .map(|w| Window {
                passage: w[0],
                start: w[1],
                end: w[2],
            })
            .collect();
        let rest = r.take(bytes.len() - 4 - 12 * n)?;
        r.finish()?;
        let batch = decode_token_batch(rest)?;
        if batch.len() != n {
            return Err(err(K, format!("{n} windows for {} pairs", batch.len())));
        }
        for (i, w) in windows.iter().enumerate() {
            let ordered = i == 0 || windows[i - 1].passage <= w.passage;
            if !ordered || w.start > w.end {
                return Err(err(K, format!("window {i} is out of order")));
            }
        }
        Ok(Self { windows, batch })
    }
}

/// Bytes of the payload of a [`WindowedBatch`] of `pairs` windows holding
/// `tokens` tokens.
pub fn windowed_batch_len(pairs: usize, tokens: usize) -> u64 {
    4 + 12 * pairs as u64 + token_batch_len(pairs, tokens)
}

/// Bytes of the token batch payload of `pairs` pairs holding `tokens`
/// tokens (at most 2^32 × 8 + 2^34: no overflow in u64).
pub fn token_batch_len(pairs: usize, tokens: usize) -> u64 {
    8 + 4 * (pairs as u64 + 1) + 8 * tokens as u64
}

/// Appends a token batch payload to `out`.
pub fn encode_token_batch(batch: &TokenBatch, out: &mut Vec<u8>) {
    out.reserve(token_batch_len(batch.len(), batch.total_tokens()) as usize);
    put_u32s(out, &[batch.len() as u32, batch.total_tokens() as u32]);
    put_u32s(out, &batch.offsets);
    put_u32s(out, &batch.input_ids);
    put_u32s(out, &batch.type_ids);
}

/// Decodes a token batch payload and checks its layout.
pub fn decode_token_batch(bytes: &[u8]) -> Result<TokenBatch, FrameError> {
    const K: &str = "token batch";
    let mut r = Reader::new(bytes, K);
    let n = r.u32()? as usize;
    let tokens = r.u32()? as usize;
    let expected = token_batch_len(n, tokens);
    if expected != bytes.len() as u64 {
        return Err(err(
            K,
            format!(
                "{n} pairs and {tokens} tokens need {expected} bytes, got {}",
                bytes.len()
            ),
        ));
    }
    let batch = TokenBatch {
        offsets: r.u32s(n + 1)?,
        input_ids: r.u32s(tokens)?,
        type_ids: r.u32s(tokens)?,
    };
    r.finish()?;
    batch.validate_layout().map_err(|e| err(K, e.to_string()))?;
    Ok(batch)
}

/// Appends a scores payload (`[pairs, labels]` row-major) to `out`.
pub fn encode_scores(logits: &[f32], labels: usize, out: &mut Vec<u8>) {
    let n = logits.len().checked_div(labels).unwrap_or(0);
    put_u32s(out, &[n as u32, labels as u32]);
    for v in logits {
        out.extend_from_slice(&v.to_le_bytes());
    }
}

/// Decodes a scores payload into `(logits, labels)`.
pub fn decode_scores(bytes: &[u8]) -> Result<(Vec<f32>, usize), FrameError> {
    const K: &str = "scores";
    let mut r = Reader::new(bytes, K);
    let n = r.u32()? as u64;
    let labels = r.u32()? as u64;
    let expected = n
        .checked_mul(labels)
        .and_then(|x| x.checked_mul(4))
        .and_then(|x| x.checked_add(8));
    if labels == 0 || expected != Some(bytes.len() as u64) {
        return Err(err(
            K,
            format!("{n} × {labels} scores do not match {} bytes", bytes.len()),
        ));
    }
    let logits = r
        .u32s((n * labels) as usize)?
        .into_iter()
        .map(f32::from_bits)
        .collect();
    r.finish()?;
    Ok((logits, labels as usize))
}

/// Longest error message a frame carries; longer ones are cut (at a
/// character boundary), so an error reply always fits its ring.
pub const MAX_ERROR_MESSAGE: usize = 4096;

/// Appends an error payload to `out`.
pub fn encode_error(code: u32, message: &str, out: &mut Vec<u8>) {
    put_u32s(out, &[code]);
    let mut end = message.len().min(MAX_ERROR_MESSAGE);
    while !message.is_char_boundary(end) {
        end -= 1;
    }
    out.extend_from_slice(&message.as_bytes()[..end]);
}

/// Decodes an error payload into `(code, message)`.
pub fn decode_error(bytes: &[u8]) -> Result<(u32, String), FrameError> {
    const K: &str = "error";
    let mut r = Reader::new(bytes, K);
    let code = r.u32()?;
    let msg =
        std::str::from_utf8(&bytes[4..]).map_err(|e| err(K, format!("invalid UTF-8: {e}")))?;
    Ok((code, msg.to_string()))
}

/// A worker's reply, decoded and checked: what the supervisor's worker
/// clients turn into typed results.
#[derive(Debug, Clone, PartialEq)]
pub enum Reply {
    /// A tokenizer's packed batch.
    Tokens(TokenBatch),
    /// A tokenizer's query.
    Query(QueryIds),
    /// A tokenizer's windows of a windowed job.
    Windows(WindowedBatch),
    /// A replica's logits, `[pairs, labels]` row-major.
    Scores {
        /// The logits.
        logits: Vec<f32>,
        /// Logits per pair.
        labels: usize,
    },
    /// The job failed; `code` says whether the input was at fault
    /// ([`ERROR_INVALID_INPUT`]) or the worker ([`ERROR_INTERNAL`]).
    Error {
        /// The error code.
        code: u32,
        /// What the worker said.
        message: String,
    },
}

impl Reply {
    /// Decodes the payload of a reply frame of kind `kind`.
    pub fn decode(kind: u16, payload: &[u8]) -> Result<Self, FrameError> {
        match FrameKind::from_u16(kind) {
            Some(FrameKind::TokenBatch) => decode_token_batch(payload).map(Reply::Tokens),
            Some(FrameKind::QueryIds) => QueryIds::decode(payload).map(Reply::Query),
            Some(FrameKind::Windows) => WindowedBatch::decode(payload).map(Reply::Windows),
            Some(FrameKind::Scores) => {
                decode_scores(payload).map(|(logits, labels)| Reply::Scores { logits, labels })
            }
            Some(FrameKind::Error) => {
                decode_error(payload).map(|(code, message)| Reply::Error { code, message })
            }
            Some(FrameKind::TextJob | FrameKind::QueryJob) | None => {
                Err(err("reply", format!("frame kind {kind} is not a reply")))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::{Rng, SeedableRng};

    #[test]
    fn payloads_round_trip() {
        let job = TextJob {
            query: QueryIds {
                tokens: 9,
                ids: vec![7, 0, u32::MAX],
            },
            passages: vec!["a".into(), "".into(), "東京".into()],
            truncation: 2,
            first_index: 7,
            model: 3,
            windows: WindowPlan {
                max_windows: 4,
                overlap: 16,
                doc_tokens: 900,
            },
        };
        let mut b = Vec::new();
        job.encode(&mut b);
        assert_eq!(b.len(), job.encoded_len());
        assert_eq!(TextJob::decode(&b).unwrap(), job);

        for instruction in [
            None,
            Some(String::new()),
            Some("Find the définition".into()),
        ] {
            let query = QueryJob {
                model: 2,
                query: "qü".into(),
                truncation: 1,
                instruction,
            };
            let mut b = Vec::new();
            query.encode(&mut b);
            assert_eq!(b.len(), query.encoded_len());
            assert_eq!(QueryJob::decode(&b).unwrap(), query);
            assert!(QueryJob::decode(&b[..3]).is_err());
        }
        assert!(QueryJob::decode(&[0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xff]).is_err());
        // An instruction longer than the payload.
        assert!(QueryJob::decode(&[0, 0, 0, 0, 0, 0, 0, 0, 9, 0, 0, 0, b'a']).is_err());
        let ids = QueryIds {
            tokens: 700,
            ids: vec![1, 2, 3],
        };
        let mut b = Vec::new();
        ids.encode(&mut b);
        assert_eq!(
            Reply::decode(FrameKind::QueryIds as u16, &b).unwrap(),
            Reply::Query(ids)
        );
        assert!(QueryIds::decode(&[1, 0, 0, 0, 2, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0]).is_err());

        let mut b = Vec::new();
        encode_error(2, &"é".repeat(MAX_ERROR_MESSAGE), &mut b);
        let (_, cut) = decode_error(&b).unwrap();
        assert!(cut.len() <= MAX_ERROR_MESSAGE && cut.chars().all(|c| c == 'é'));

        let mut batch = TokenBatch::default();
        batch.push(&[101, 7, 102], &[0, 0, 0]);
        batch.push(&[101, 102], &[0, 1]);
        let mut b = Vec::new();
        encode_token_batch(&batch, &mut b);
        assert_eq!(decode_token_batch(&b).unwrap(), batch);

        let windowed = WindowedBatch {
            windows: vec![
                Window {
                    passage: 0,
                    start: 0,
                    end: 5,
                },
                Window {
                    passage: 1,
                    start: 3,
                    end: 9,
                },
            ],
            batch: batch.clone(),
        };
        let mut b = Vec::new();
        windowed.encode(&mut b);
        assert_eq!(b.len() as u64, windowed_batch_len(2, batch.total_tokens()));
        assert_eq!(
            Reply::decode(FrameKind::Windows as u16, &b).unwrap(),
            Reply::Windows(windowed.clone())
        );
        let mut backwards = windowed.clone();
        backwards.windows.reverse();
        let mut b = Vec::new();
        backwards.encode(&mut b);
        assert!(WindowedBatch::decode(&b).is_err(), "passages out of order");
        let mut short = windowed;
        short.windows.pop();
        let mut b = Vec::new();
        short.encode(&mut b);
        assert!(
            WindowedBatch::decode(&b).is_err(),
            "a pair without a window"
        );

        let mut b = Vec::new();
        encode_scores(&[0.5, -1.0, 2.0, 3.0], 2, &mut b);
        assert_eq!(decode_scores(&b).unwrap(), (vec![0.5, -1.0, 2.0, 3.0], 2));

        let mut b = Vec::new();
        encode_error(3, "worker crashed", &mut b);
        assert_eq!(decode_error(&b).unwrap(), (3, "worker crashed".into()));
        assert_eq!(
            Reply::decode(FrameKind::Error as u16, &b).unwrap(),
            Reply::Error {
                code: 3,
                message: "worker crashed".into()
            }
        );
        assert!(Reply::decode(FrameKind::TextJob as u16, &b).is_err());
        assert!(Reply::decode(99, &b).is_err());
    }

    #[test]
    fn rejects_inconsistent_payloads() {
        let mut b = Vec::new();
        TextJob {
            query: QueryIds {
                tokens: 1,
                ids: vec![5],
            },
            passages: vec!["ab".into()],
            ..TextJob::default()
        }
        .encode(&mut b);
        assert!(TextJob::decode(&b[..b.len() - 1]).is_err());
        let mut bad_utf8 = b.clone();
        let last = bad_utf8.len() - 1;
        bad_utf8[last] = 0xff;
        assert!(TextJob::decode(&bad_utf8).is_err());
        let mut extra = b.clone();
        extra.push(b'x');
        assert!(TextJob::decode(&extra).is_err());

        let mut batch = TokenBatch::default();
        batch.push(&[1, 2, 3], &[0, 0, 0]);
        let mut b = Vec::new();
        encode_token_batch(&batch, &mut b);
        let mut wrong_offsets = b.clone();
        wrong_offsets[12] = 9; // offsets[1] = 9 > tokens
        assert!(decode_token_batch(&wrong_offsets).is_err());
        assert!(decode_token_batch(&b[..b.len() - 4]).is_err());
        assert!(decode_scores(&[1, 0, 0, 0, 0, 0, 0, 0]).is_err());
    }

    #[test]
    fn arbitrary_bytes_never_panic() {
        let mut rng = rand::rngs::StdRng::seed_from_u64(3);
        for _ in 0..50_000 {
            let len = rng.random_range(0..64);
            let mut bytes: Vec<u8> = (0..len).map(|_| rng.random()).collect();
            // Small counts make the structured paths reachable.
            if len >= 8 && rng.random_bool(0.7) {
                bytes[0..4].copy_from_slice(&rng.random_range(0u32..4).to_le_bytes());
                bytes[4..8].copy_from_slice(&rng.random_range(0u32..8).to_le_bytes());
            }
            let _ = TextJob::decode(&bytes);
            let _ = QueryJob::decode(&bytes);
            let _ = QueryIds::decode(&bytes);
            let _ = WindowedBatch::decode(&bytes);
            let _ = decode_token_batch(&bytes);
            let _ = decode_scores(&bytes);
            let _ = decode_error(&bytes);
        }
    }
}
