//! Typed clients of the two worker roles: the supervisor asks a tokenizer
//! to `tokenize` a [`TextJob`] and a replica to `score` a [`TokenBatch`];
//! frames are encoded and replies decoded here and in `ce_common::frame`,
//! nowhere else.

use std::time::{Duration, Instant};

use ce_common::TokenBatch;
use ce_common::frame::{
    self, ERROR_INVALID_INPUT, FrameKind, QueryIds, QueryJob, Reply, TextJob, Window,
};

use super::process::{RawReply, WorkerFailure, WorkerProcess};

/// Why a job got no usable answer.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum JobError {
    /// The worker died (or was killed as hung) holding the job.
    #[error("worker process died")]
    Died,
    /// The worker refused the input (too long with truncation off, an
    /// empty query…); the message names the document.
    #[error("{0}")]
    Refused(String),
    /// The worker failed on valid input or answered nonsense.
    #[error("{0}")]
    Failed(String),
}

impl From<WorkerFailure> for JobError {
    fn from(failure: WorkerFailure) -> Self {
        match failure {
            WorkerFailure::Died => JobError::Died,
            too_large @ WorkerFailure::TooLarge { .. } => JobError::Failed(too_large.to_string()),
        }
    }
}

/// A job's result with the time the worker spent on it by its own clock,
/// the time it waited behind the worker's previous job, and the whole
/// round trip (the rest of which is transfer: [`Worked::transfer`]).
#[derive(Debug, Clone, PartialEq)]
pub struct Worked<T> {
    /// What the worker produced.
    pub output: T,
    /// The worker's own time on the job.
    pub work: Duration,
    /// From sending until the worker answered the job before it (zero
    /// when the worker was free).
    pub waited: Duration,
    /// Send to answer.
    pub round_trip: Duration,
}

impl<T> Worked<T> {
    /// The round trip less the worker's time and the wait behind its
    /// previous job: ring transfer, doorbells and decoding.
    pub fn transfer(&self) -> Duration {
        self.round_trip
            .saturating_sub(self.work)
            .saturating_sub(self.waited)
    }

    /// The output, and the timing without it (to carry over to what the
    /// output is decoded into, [`Worked::with`]).
    fn split(self) -> (T, Worked<()>) {
        let timing = Worked {
            output: (),
            work: self.work,
            waited: self.waited,
            round_trip: self.round_trip,
        };
        (self.output, timing)
    }
}

impl Worked<()> {
    fn with<U>(self, output: U) -> Worked<U> {
        Worked {
            output,
            work: self.work,
            waited: self.waited,
            round_trip: self.round_trip,
        }
    }
}

/// A replica's logits for one batch, `[pairs, labels]` row-major.
#[derive(Debug, Clone, PartialEq)]
pub struct Scores {
    /// The logits.
    pub logits: Vec<f32>,
    /// Logits per pair.
    pub labels: usize,
}

/// A tokenize job's answer: its pairs, in passage order, and — for a
/// windowed job ([`frame::WindowPlan`]) — which passage and characters
/// each pair is a window of.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Tokenized {
    /// The pairs.
    pub batch: TokenBatch,
    /// One per pair, for a windowed job; `None`: one pair per passage.
    pub windows: Option<Vec<Window>>,
}

impl Tokenized {
    /// Whether this answers `job`: one pair per passage, or windows that
    /// give every passage (in order) at least one and at most
    /// `max_windows` pairs.
    pub fn answers(&self, job: &TextJob) -> bool {
        let n = job.passages.len();
        let Some(windows) = &self.windows else {
            return !job.windows.is_on() && self.batch.len() == n;
        };
        if !job.windows.is_on() || windows.len() != self.batch.len() {
            return false;
        }
        let mut counts = vec![0u32; n];
        for w in windows {
            match counts.get_mut(w.passage as usize) {
                Some(c) => *c += 1,
                None => return false,
            }
        }
        // Passages arrive in order (the frame decoder checks that).
        counts
            .iter()
            .all(|&c| c >= 1 && c <= job.windows.max_windows)
    }
}

/// What the pool needs of a client: made from a process, and able to show
/// that a freshly started one serves.
pub trait Client: Clone + Send + Sync + 'static {
    /// What a new worker is sent before it may serve.
    type WarmUp: Send + Sync + 'static;

    /// A client of `process`.
    fn new(process: WorkerProcess) -> Self;

    /// Its process.
    fn process(&self) -> &WorkerProcess;

    /// Proves a fresh worker serves.
    fn warm_up(
        &self,
        with: &Self::WarmUp,
        deadline: Duration,
    ) -> impl Future<Output = Result<(), JobError>> + Send;
}

/// Sends one frame and decodes its reply; kills the worker if it holds the
/// job longer than `deadline` (see [`WorkerProcess::reply_within`]).
async fn call(
    process: &WorkerProcess,
    kind: FrameKind,
    count: u32,
    payload: Vec<u8>,
    deadline: Duration,
    what: &str,
) -> Result<Worked<Reply>, JobError> {
    let sent = Instant::now();
    let pending = process.send(kind, count, payload);
    let RawReply {
        kind,
        payload,
        work,
        previous_reply,
    } = process.reply_within(pending, deadline, what).await?;
    let role = format!("{:?}", process.role()).to_lowercase();
    let output = match Reply::decode(kind, &payload) {
        Ok(output) => output,
        Err(e) => return Err(faulty(process, &format!("{role} worker sent {e}"))),
    };
    if let Reply::Error { code, message } = output {
        return Err(if code == ERROR_INVALID_INPUT {
            JobError::Refused(message)
        } else {
            JobError::Failed(format!("{role} worker: {message}"))
        });
    }
    Ok(Worked {
        output,
        work,
        waited: previous_reply.saturating_duration_since(sent),
        round_trip: sent.elapsed(),
    })
}

/// A worker whose reply does not fit its job (undecodable, the wrong
/// kind, the wrong number of pairs or logits) is not to be trusted: it is
/// killed and replaced, and the job counts as one its worker died holding,
/// so it is retried alone once and then refused (see [`super::isolation`]).
fn faulty(process: &WorkerProcess, what: &str) -> JobError {
    process.kill(&format!("{what}: a faulty reply"));
    JobError::Died
}

/// A tokenizer worker.
#[derive(Debug, Clone)]
pub struct TokenizerClient {
    process: WorkerProcess,
}

impl TokenizerClient {
    /// Tokenizes a request's query once, for all of its pairs.
    pub async fn query(
        &self,
        job: &QueryJob,
        deadline: Duration,
    ) -> Result<Worked<QueryIds>, JobError> {
        let mut payload = Vec::with_capacity(job.encoded_len());
        job.encode(&mut payload);
        let done = call(
            &self.process,
            FrameKind::QueryJob,
            1,
            payload,
            deadline,
            "query job",
        )
        .await?;
        let (reply, done) = done.split();
        match reply {
            Reply::Query(ids) => Ok(done.with(ids)),
            other => Err(faulty(
                &self.process,
                &format!(
                    "tokenizer worker answered a query with {}",
                    describe(&other)
                ),
            )),
        }
    }

    /// Tokenizes `job` into one packed batch, its pairs in order (with
    /// their windows, for a windowed job).
    pub async fn tokenize(
        &self,
        job: &TextJob,
        deadline: Duration,
    ) -> Result<Worked<Tokenized>, JobError> {
        let mut payload = Vec::with_capacity(job.encoded_len());
        job.encode(&mut payload);
        let count = job.passages.len() as u32;
        let done = call(
            &self.process,
            FrameKind::TextJob,
            count,
            payload,
            deadline,
            "tokenize job",
        )
        .await?;
        let (reply, done) = done.split();
        let tokenized = match reply {
            Reply::Tokens(batch) => Tokenized {
                batch,
                windows: None,
            },
            Reply::Windows(windowed) => Tokenized {
                batch: windowed.batch,
                windows: Some(windowed.windows),
            },
            other => {
                return Err(faulty(
                    &self.process,
                    &format!(
                        "tokenizer worker answered {} passages with {}",
                        job.passages.len(),
                        describe(&other)
                    ),
                ));
            }
        };
        match tokenized.answers(job) {
            true => Ok(done.with(tokenized)),
            false => Err(faulty(
                &self.process,
                &format!(
                    "tokenizer worker answered {} passages with {} pairs{}",
                    job.passages.len(),
                    tokenized.batch.len(),
                    match &tokenized.windows {
                        Some(w) => format!(" in {} windows", w.len()),
                        None => String::new(),
                    }
                ),
            )),
        }
    }
}

impl Client for TokenizerClient {
    type WarmUp = ();

    fn new(process: WorkerProcess) -> Self {
        Self { process }
    }

    fn process(&self) -> &WorkerProcess {
        &self.process
    }

    async fn warm_up(&self, _: &(), _: Duration) -> Result<(), JobError> {
        Ok(())
    }
}

/// A model replica.
#[derive(Debug, Clone)]
pub struct ReplicaClient {
    process: WorkerProcess,
}

impl ReplicaClient {
    /// Scores a batch: one row of logits per pair.
    pub async fn score(
        &self,
        batch: &TokenBatch,
        deadline: Duration,
    ) -> Result<Worked<Scores>, JobError> {
        let mut payload = Vec::new();
        frame::encode_token_batch(batch, &mut payload);
        let done = call(
            &self.process,
            FrameKind::TokenBatch,
            batch.len() as u32,
            payload,
            deadline,
            "batch",
        )
        .await?;
        let (reply, done) = done.split();
        match reply {
            Reply::Scores { logits, labels } if logits.len() == batch.len() * labels => {
                Ok(done.with(Scores { logits, labels }))
            }
            Reply::Scores { logits, labels } => Err(faulty(
                &self.process,
                &format!(
                    "model worker returned {} logits for {} pairs × {labels}",
                    logits.len(),
                    batch.len()
                ),
            )),
            other => Err(faulty(
                &self.process,
                &format!("model worker answered a batch with {}", describe(&other)),
            )),
        }
    }
}

impl Client for ReplicaClient {
    /// One batch per slot, tokenized for that slot's model.
    type WarmUp = Vec<TokenBatch>;

    fn new(process: WorkerProcess) -> Self {
        Self { process }
    }

    fn process(&self) -> &WorkerProcess {
        &self.process
    }

    /// One small batch through the rings, answered with scores.
    async fn warm_up(&self, batches: &Vec<TokenBatch>, deadline: Duration) -> Result<(), JobError> {
        let Some(batch) = batches.get(self.process.slot() as usize) else {
            return Err(JobError::Failed(format!(
                "no warm-up batch for replica {}",
                self.process.slot()
            )));
        };
        self.score(batch, deadline).await.map(drop)
    }
}

fn describe(reply: &Reply) -> String {
    match reply {
        Reply::Tokens(b) => format!("a token batch of {} pairs", b.len()),
        Reply::Query(q) => format!("a query of {} ids", q.ids.len()),
        Reply::Windows(w) => format!("{} windows", w.windows.len()),
        Reply::Scores { logits, labels } => format!("{} logits × {labels}", logits.len()),
        Reply::Error { message, .. } => format!("an error: {message}"),
    }
}
