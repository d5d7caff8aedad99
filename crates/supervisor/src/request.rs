//! A client request in flight: its pairs' scores as they arrive, its
//! timing, and the channel its answer goes to. Shared by every batch that
//! holds one of its pairs; the answer is sent when the last pair is scored.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::sync::oneshot;

use crate::api::ApiError;

/// Where the time of a request went.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Timing {
    /// Until the last chunk was tokenized.
    pub tokenize: Duration,
    /// Longest wait of a pair between tokenized and sent to a replica.
    pub queue: Duration,
    /// Longest round trip of a batch holding one of its pairs.
    pub inference: Duration,
    /// Arrival to answer.
    pub total: Duration,
}

/// A scored request: one raw logit row per pair, in input order — per
/// window of each document, for a windowed request.
#[derive(Debug, Clone, PartialEq)]
pub struct Scored {
    /// Row-major `[rows, labels]` logits.
    pub logits: Vec<f32>,
    /// Logits per pair.
    pub labels: usize,
    /// Tokens of all pairs.
    pub tokens: u64,
    /// Where the time went.
    pub timing: Timing,
    /// For a windowed request, where each row came from.
    pub windows: Option<Vec<crate::chunks::RowOrigin>>,
}

impl Scored {
    /// The first logit of each pair (the relevance logit of a one-label model).
    pub fn first_logits(&self) -> impl Iterator<Item = f32> + '_ {
        self.rows().map(|row| row[0])
    }

    /// Each pair's row of logits.
    pub fn rows(&self) -> impl Iterator<Item = &[f32]> + '_ {
        self.logits.chunks(self.labels.max(1))
    }
}

#[derive(Debug)]
struct State {
    logits: Vec<f32>,
    labels: usize,
    /// Rows to score: its pairs, or its windows once grown.
    rows: usize,
    remaining: usize,
    tokens: u64,
    tokenized: Option<Instant>,
    queue: Duration,
    inference: Duration,
}

/// Where a request's answer arrives.
pub type Answer = oneshot::Receiver<Result<Scored, ApiError>>;

/// Counts pairs admitted and not yet finished, and the tokens of model
/// work they hold once tokenized, for admission control.
#[derive(Debug, Default)]
pub struct Admission {
    pairs: AtomicUsize,
    tokens: AtomicUsize,
}

impl Admission {
    /// Pairs in the system now.
    pub fn pairs(&self) -> usize {
        self.pairs.load(Ordering::Acquire)
    }

    /// Tokens admitted to the model queue and not yet finished.
    pub fn tokens(&self) -> usize {
        self.tokens.load(Ordering::Acquire)
    }
}

/// One request's shared state.
#[derive(Debug)]
pub struct PendingRequest {
    /// Pairs it holds of `Admission::pairs` (its rows, once grown).
    pairs: AtomicUsize,
    /// Tokens it holds of `Admission::tokens` (0 until tokenized).
    tokens: AtomicUsize,
    arrived: Instant,
    state: Mutex<State>,
    answer: Mutex<Option<oneshot::Sender<Result<Scored, ApiError>>>>,
    admission: Arc<Admission>,
}

impl PendingRequest {
    /// Admits a request of `pairs` pairs if fewer than `limit` pairs would
    /// then be in the system; returns it and the receiver of its answer.
    pub fn admit(
        pairs: usize,
        admission: &Arc<Admission>,
        limit: usize,
    ) -> Result<(Arc<Self>, Answer), ApiError> {
        let before = admission.pairs.fetch_add(pairs, Ordering::AcqRel);
        if before + pairs > limit && before > 0 {
            admission.pairs.fetch_sub(pairs, Ordering::AcqRel);
            return Err(ApiError::Overloaded(format!(
                "server busy: {before} pairs queued, limit {limit} (max_queue_pairs); retry later"
            )));
        }
        let (tx, rx) = oneshot::channel();
        let request = Arc::new(Self {
            pairs: AtomicUsize::new(pairs),
            tokens: AtomicUsize::new(0),
            arrived: Instant::now(),
            state: Mutex::new(State {
                logits: Vec::new(),
                labels: 0,
                rows: pairs,
                remaining: pairs,
                tokens: 0,
                tokenized: None,
                queue: Duration::ZERO,
                inference: Duration::ZERO,
            }),
            answer: Mutex::new(Some(tx)),
            admission: admission.clone(),
        });
        Ok((request, rx))
    }

    /// Admits the request's model work, `tokens` tokens, once it is
    /// tokenized: refused when it alone exceeds `limit`, or when it would
    /// take the tokens queued past `limit`. Its tokens are released when
    /// the request ends.
    pub fn admit_tokens(&self, tokens: usize, limit: usize) -> Result<(), ApiError> {
        if tokens > limit {
            return Err(ApiError::Overloaded(format!(
                "this request needs {tokens} tokens of model work, more than max_queue_tokens ({limit}) allows one request; send fewer or shorter documents"
            )));
        }
        let admission = &self.admission;
        let before = admission.tokens.fetch_add(tokens, Ordering::AcqRel);
        if before + tokens > limit {
            admission.tokens.fetch_sub(tokens, Ordering::AcqRel);
            return Err(ApiError::Overloaded(format!(
                "server busy: {before} tokens queued, this request needs {tokens}, limit {limit} (max_queue_tokens); retry later"
            )));
        }
        self.tokens.fetch_add(tokens, Ordering::AcqRel);
        Ok(())
    }

    /// Makes the request `rows` rows (a windowed request's windows, known
    /// once tokenized; call before any row is queued): the rows beyond its
    /// pairs are admitted against `limit` like new pairs.
    pub fn grow(&self, rows: usize, limit: usize) -> Result<(), ApiError> {
        let Ok(mut s) = self.state.lock() else {
            return Err(ApiError::Internal("request state poisoned".into()));
        };
        let extra = rows.saturating_sub(s.rows);
        if extra == 0 {
            return Ok(());
        }
        let before = self.admission.pairs.fetch_add(extra, Ordering::AcqRel);
        let own = self.pairs.load(Ordering::Acquire);
        // Alone in the system, a request may exceed the limit (as on arrival).
        if before + extra > limit && before > own {
            self.admission.pairs.fetch_sub(extra, Ordering::AcqRel);
            return Err(ApiError::Overloaded(format!(
                "server busy: this request's long documents make {rows} windows to score, with {} pairs queued past max_queue_pairs ({limit}); retry later",
                before - own
            )));
        }
        self.pairs.fetch_add(extra, Ordering::AcqRel);
        s.rows = rows;
        s.remaining += extra;
        Ok(())
    }

    /// When it arrived.
    pub fn arrived(&self) -> Instant {
        self.arrived
    }

    /// True once nobody waits for the answer (client gone, or answered).
    pub fn is_abandoned(&self) -> bool {
        match self.answer.lock() {
            Ok(a) => a.as_ref().is_none_or(|tx| tx.is_closed()),
            Err(_) => true,
        }
    }

    /// Records that a chunk was tokenized (the last one sets the time).
    pub fn tokenized(&self, tokens: u64) {
        if let Ok(mut s) = self.state.lock() {
            s.tokens += tokens;
            s.tokenized = Some(Instant::now());
        }
    }

    /// Records a pair's logits; answers the request after its last pair.
    pub fn complete(&self, index: usize, logits: &[f32], queued: Duration, inference: Duration) {
        let finished = {
            let Ok(mut s) = self.state.lock() else { return };
            if s.labels == 0 {
                s.labels = logits.len().max(1);
                s.logits = vec![f32::NAN; s.rows * s.labels];
            }
            let labels = s.labels;
            if logits.len() != labels || index >= s.rows {
                drop(s);
                self.fail(ApiError::Internal(
                    "replicas disagree on the number of labels".into(),
                ));
                return;
            }
            s.logits[index * labels..(index + 1) * labels].copy_from_slice(logits);
            s.queue = s.queue.max(queued);
            s.inference = s.inference.max(inference);
            s.remaining = s.remaining.saturating_sub(1);
            if s.remaining > 0 {
                return;
            }
            Scored {
                logits: std::mem::take(&mut s.logits),
                labels,
                tokens: s.tokens,
                timing: Timing {
                    tokenize: s.tokenized.map(|t| t - self.arrived).unwrap_or_default(),
                    queue: s.queue,
                    inference: s.inference,
                    total: self.arrived.elapsed(),
                },
                windows: None,
            }
        };
        if let Some(tx) = self.answer.lock().ok().and_then(|mut a| a.take()) {
            let _ = tx.send(Ok(finished));
        }
    }

    /// Fails the request (the first failure wins).
    pub fn fail(&self, error: ApiError) {
        if let Some(tx) = self.answer.lock().ok().and_then(|mut a| a.take()) {
            let _ = tx.send(Err(error));
        }
    }
}

impl Drop for PendingRequest {
    fn drop(&mut self) {
        let pairs = self.pairs.load(Ordering::Acquire);
        self.admission.pairs.fetch_sub(pairs, Ordering::AcqRel);
        let tokens = self.tokens.load(Ordering::Acquire);
        self.admission.tokens.fetch_sub(tokens, Ordering::AcqRel);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn answers_after_the_last_pair_in_input_order() {
        let admission = Arc::new(Admission::default());
        let (r, rx) = PendingRequest::admit(3, &admission, 10).unwrap();
        assert_eq!(admission.pairs(), 3);
        for i in [2usize, 0, 1] {
            r.complete(i, &[i as f32], Duration::ZERO, Duration::ZERO);
        }
        let scored = rx.await.unwrap().unwrap();
        assert_eq!(scored.first_logits().collect::<Vec<_>>(), [0.0, 1.0, 2.0]);
        drop(r);
        assert_eq!(admission.pairs(), 0);
    }

    #[test]
    fn admission_refuses_beyond_the_limit_and_names_it() {
        let admission = Arc::new(Admission::default());
        let (_a, _ra) = PendingRequest::admit(8, &admission, 10).unwrap();
        let e = PendingRequest::admit(3, &admission, 10).unwrap_err();
        assert!(
            matches!(&e, ApiError::Overloaded(m) if m.contains("max_queue_pairs")),
            "{e}"
        );
        // A request alone larger than the limit still runs (it cannot starve).
        drop(_a);
        assert!(PendingRequest::admit(30, &admission, 10).is_ok());
    }

    #[test]
    fn model_work_is_admitted_in_tokens_and_released_at_the_end() {
        let admission = Arc::new(Admission::default());
        let (a, _ra) = PendingRequest::admit(2, &admission, 10).unwrap();
        a.admit_tokens(600, 1000).unwrap();
        let (b, _rb) = PendingRequest::admit(2, &admission, 10).unwrap();
        let e = b.admit_tokens(500, 1000).unwrap_err();
        assert!(
            matches!(&e, ApiError::Overloaded(m) if m.contains("max_queue_tokens") && m.contains("600 tokens queued")),
            "{e}"
        );
        let e = b.admit_tokens(1001, 1000).unwrap_err();
        assert!(
            matches!(&e, ApiError::Overloaded(m) if m.contains("more than max_queue_tokens")),
            "{e}"
        );
        assert_eq!(admission.tokens(), 600);
        drop(a);
        assert_eq!(admission.tokens(), 0);
        b.admit_tokens(1000, 1000).unwrap();
        drop(b);
        assert_eq!((admission.tokens(), admission.pairs()), (0, 0));
    }

    #[tokio::test]
    async fn windows_grow_a_request_and_count_against_the_queue() {
        let admission = Arc::new(Admission::default());
        let (other, _ro) = PendingRequest::admit(6, &admission, 10).unwrap();
        let (r, rx) = PendingRequest::admit(2, &admission, 10).unwrap();
        r.grow(2, 10).unwrap();
        let e = r.grow(5, 10).unwrap_err();
        assert!(
            matches!(&e, ApiError::Overloaded(m) if m.contains("5 windows") && m.contains("max_queue_pairs")),
            "{e}"
        );
        assert_eq!(admission.pairs(), 8, "a refused growth takes nothing");
        r.grow(4, 10).unwrap();
        assert_eq!(admission.pairs(), 10);
        for i in 0..4 {
            r.complete(i, &[i as f32], Duration::ZERO, Duration::ZERO);
        }
        let scored = rx.await.unwrap().unwrap();
        assert_eq!(scored.first_logits().count(), 4);
        drop((r, other));
        assert_eq!(admission.pairs(), 0);
    }

    #[test]
    fn a_dropped_receiver_marks_the_request_abandoned() {
        let admission = Arc::new(Admission::default());
        let (r, rx) = PendingRequest::admit(1, &admission, 10).unwrap();
        assert!(!r.is_abandoned());
        drop(rx);
        assert!(r.is_abandoned());
    }
}
