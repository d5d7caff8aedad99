//! The scheduling queue, batcher and router, as one actor task that owns
//! all their state (no locks on the hot path).
//!
//! Tokenized pairs arrive as [`Work`]; whenever a replica has a free slot
//! (fewer than `max_inflight` batches) the actor forms a batch
//! ([`crate::batcher::choose`]) and sends it to the replica with the fewest
//! batches in flight. It waits for company only while every replica is
//! busy, and never longer than the batch timeout. While every replica is
//! dead the queue waits for their restart. Scores are matched back
//! to their requests; the pairs of a batch whose replica died go back to
//! the front of the queue, in quarantine (a pair that keeps killing
//! replicas fails its request; see `requeue_after_death`).

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::{Duration, Instant};

use ce_common::TokenBatch;
use ce_common::frame::{self, FrameKind};
use tokio::sync::{RwLock, mpsc};

use crate::batcher::{self, BatchLimits};
use crate::metrics::{Metrics, Stage};
use crate::request::{ApiError, PendingRequest};
use crate::workers::{WorkerFailure, WorkerHandle, WorkerReply};

/// Tokenized pairs of one request.
#[derive(Debug)]
pub struct Work {
    /// Their request.
    pub request: Arc<PendingRequest>,
    /// Request-level index of the batch's first pair.
    pub first_index: usize,
    /// The pairs.
    pub batch: TokenBatch,
}

/// Batching and routing settings.
#[derive(Debug, Clone, Copy)]
pub struct SchedulerConfig {
    /// Batch limits.
    pub limits: BatchLimits,
    /// Longest wait for company while every replica is busy.
    pub timeout: Duration,
    /// Batches in flight per replica.
    pub max_inflight: usize,
    /// A replica that holds a batch longer is killed and replaced.
    pub deadline: Duration,
}

#[derive(Debug)]
struct QueuedPair {
    request: Arc<PendingRequest>,
    index: usize,
    ids: Vec<u32>,
    types: Vec<u32>,
    enqueued: Instant,
    /// Deaths of replicas holding this pair.
    tries: u8,
    /// Quarantine: pairs of a batch that killed its replica are re-sent
    /// only with the other members of their half, halving until the poison
    /// is alone.
    group: Option<u64>,
}

#[derive(Debug)]
struct InFlight {
    pairs: Vec<QueuedPair>,
    sent: Instant,
}

enum Event {
    Work(Work),
    /// The replica list changed (a restart): look for work to send.
    Nudge,
    Done {
        replica: usize,
        batch: InFlight,
        result: Result<WorkerReply, WorkerFailure>,
    },
}

/// The actor's address.
#[derive(Debug, Clone)]
pub struct Scheduler {
    events: mpsc::UnboundedSender<Event>,
}

impl std::fmt::Debug for Event {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Event::Work(w) => write!(f, "Work({} pairs)", w.batch.len()),
            Event::Done { replica, .. } => write!(f, "Done(replica {replica})"),
            Event::Nudge => write!(f, "Nudge"),
        }
    }
}

impl Scheduler {
    /// Starts the actor over `replicas` (a shared, replaceable list).
    pub fn start(
        config: SchedulerConfig,
        replicas: Arc<RwLock<Vec<WorkerHandle>>>,
        metrics: Arc<Metrics>,
    ) -> Self {
        let (events, rx) = mpsc::unbounded_channel();
        let actor = Actor {
            config,
            replicas,
            inflight: Vec::new(),
            isolated: Vec::new(),
            queue: VecDeque::new(),
            events: events.clone(),
            metrics,
            next_group: 0,
        };
        tokio::spawn(actor.run(rx));
        Self { events }
    }

    /// Tells the scheduler the replicas changed (one was replaced).
    pub fn nudge(&self) {
        let _ = self.events.send(Event::Nudge);
    }

    /// Queues tokenized pairs.
    pub fn submit(&self, work: Work) -> Result<(), ApiError> {
        self.events
            .send(Event::Work(work))
            .map_err(|_| ApiError::Unavailable("the scheduler has stopped".into()))
    }
}

struct Actor {
    config: SchedulerConfig,
    replicas: Arc<RwLock<Vec<WorkerHandle>>>,
    /// Batches in flight per replica slot.
    inflight: Vec<usize>,
    /// Replicas running a quarantine batch, which must be alone on its
    /// replica: a death then blames only that batch.
    isolated: Vec<bool>,
    queue: VecDeque<QueuedPair>,
    events: mpsc::UnboundedSender<Event>,
    metrics: Arc<Metrics>,
    next_group: u64,
}

impl Actor {
    async fn run(mut self, mut rx: mpsc::UnboundedReceiver<Event>) {
        loop {
            let wake_at = self.dispatch().await;
            let event = match wake_at {
                Some(at) => tokio::select! {
                    e = rx.recv() => e,
                    _ = tokio::time::sleep_until(at.into()) => continue,
                },
                None => rx.recv().await,
            };
            let Some(event) = event else { return };
            self.handle(event);
            // Take everything already waiting before forming batches.
            while let Ok(event) = rx.try_recv() {
                self.handle(event);
            }
        }
    }

    fn handle(&mut self, event: Event) {
        match event {
            Event::Nudge => {}
            Event::Work(work) => {
                let now = Instant::now();
                for i in 0..work.batch.len() {
                    self.queue.push_back(QueuedPair {
                        request: work.request.clone(),
                        index: work.first_index + i,
                        ids: work.batch.ids(i).to_vec(),
                        types: work.batch.types(i).to_vec(),
                        enqueued: now,
                        tries: 0,
                        group: None,
                    });
                }
            }
            Event::Done {
                replica,
                batch,
                result,
            } => {
                if let Some(n) = self.inflight.get_mut(replica) {
                    *n = n.saturating_sub(1);
                }
                if let Some(i) = self.isolated.get_mut(replica) {
                    *i = false;
                }
                self.finish(batch, result);
            }
        }
        self.metrics.queue_pairs.set(self.queue.len() as i64);
        self.publish_inflight();
    }

    fn finish(&mut self, batch: InFlight, result: Result<WorkerReply, WorkerFailure>) {
        let elapsed = batch.sent.elapsed();
        let reply = match result {
            Ok(reply) => reply,
            Err(WorkerFailure::Died) => {
                self.requeue_after_death(batch.pairs);
                return;
            }
        };
        let scores = match FrameKind::from_u16(reply.kind) {
            Some(FrameKind::Scores) => {
                frame::decode_scores(&reply.payload).map_err(|e| e.to_string())
            }
            Some(FrameKind::Error) => Err(frame::decode_error(&reply.payload)
                .map(|(_, m)| m)
                .unwrap_or_else(|e| e.to_string())),
            _ => Err(format!("unexpected reply kind {}", reply.kind)),
        };
        match scores {
            Ok((logits, labels)) if logits.len() == batch.pairs.len() * labels => {
                let m = &self.metrics;
                m.pairs.inc_by(batch.pairs.len() as u64);
                m.observe_stage(Stage::Forward, reply.work.as_secs_f64());
                m.observe_stage(
                    Stage::Ring,
                    elapsed.saturating_sub(reply.work).as_secs_f64(),
                );
                for (pair, row) in batch.pairs.iter().zip(logits.chunks(labels)) {
                    let queued = batch.sent.saturating_duration_since(pair.enqueued);
                    m.pair_latency
                        .observe(pair.enqueued.elapsed().as_secs_f64());
                    pair.request.complete(pair.index, row, queued, elapsed);
                }
            }
            Ok((logits, labels)) => {
                let message = format!(
                    "model worker returned {} logits for {} pairs × {labels}",
                    logits.len(),
                    batch.pairs.len()
                );
                batch
                    .pairs
                    .iter()
                    .for_each(|p| p.request.fail(ApiError::Internal(message.clone())));
            }
            Err(message) => {
                batch.pairs.iter().for_each(|p| {
                    p.request
                        .fail(ApiError::Internal(format!("model worker: {message}")))
                });
            }
        }
    }

    /// The replica died holding these pairs. Several are split in two
    /// quarantine groups that travel alone, so the bystanders finish and
    /// the poison is isolated in log2(n) deaths. A pair that was alone
    /// outside quarantine is quarantined alone: it may have been a
    /// bystander of an outside kill. A pair that kills its replica while
    /// quarantined alone is the poison: its request fails, after two tries
    /// when it was alone from the start, after 1 + ⌈log2 n⌉ replica deaths
    /// when it came in a batch of n.
    fn requeue_after_death(&mut self, mut pairs: Vec<QueuedPair>) {
        for p in &mut pairs {
            p.tries = p.tries.saturating_add(1);
        }
        if let [pair] = pairs.as_mut_slice() {
            if pair.group.is_some() {
                pair.request.fail(ApiError::Internal(format!(
                    "a model worker crashed scoring document {} ({} times, the last time alone); this input is refused",
                    pair.index, pair.tries
                )));
                return;
            }
            pair.group = Some(self.next_group);
            self.next_group += 1;
        } else {
            let half = pairs.len() / 2;
            for (i, p) in pairs.iter_mut().enumerate() {
                p.group = Some(self.next_group + (i >= half) as u64);
            }
            self.next_group += 2;
        }
        for pair in pairs.into_iter().rev() {
            self.queue.push_front(pair);
        }
    }

    fn publish_inflight(&self) {
        let total: usize = self.inflight.iter().sum();
        self.metrics.batches_in_flight.set(total as i64);
    }

    /// Sends every batch that should go now; returns when to look again if
    /// a partial batch is waiting for company.
    async fn dispatch(&mut self) -> Option<Instant> {
        let replicas = self.replicas.read().await.clone();
        self.inflight.resize(replicas.len(), 0);
        self.isolated.resize(replicas.len(), false);
        loop {
            self.queue.retain(|p| !p.request.is_abandoned());
            self.metrics.queue_pairs.set(self.queue.len() as i64);
            let oldest = self.queue.front()?.enqueued;
            let quarantined = self.queue.front().is_some_and(|p| p.group.is_some());
            let slot = (0..replicas.len())
                .filter(|&r| replicas[r].is_alive() && !self.isolated[r])
                .filter(|&r| {
                    if quarantined {
                        self.inflight[r] == 0
                    } else {
                        self.inflight[r] < self.config.max_inflight
                    }
                })
                .min_by_key(|&r| self.inflight[r]);
            let Some(r) = slot else {
                // Every replica busy, or all dead and being restarted: the
                // queue waits (clients' deadlines bound the wait) and a
                // completion or a restart's nudge brings us back.
                return None;
            };
            // The batcher looks at one batch's worth of the oldest pairs:
            // a request is answered when its last pair is, so mixing the
            // pairs of many requests by length (a wider window) makes every
            // request wait for the slowest of several batches. A 1-to-3 s
            // open-loop ramp over HTTP answered 0.7 requests/s past the knee
            // with 8 batches' worth, against a capacity of 1.3. The packed
            // engine groups lengths for attention inside each batch anyway.
            // Quarantined pairs get a length no budget fits, so they never
            // join a normal batch.
            let window = self.config.limits.max_pairs;
            let lengths: Vec<usize> = self
                .queue
                .iter()
                .take(window)
                .map(|p| {
                    if p.group.is_some() {
                        usize::MAX / 4
                    } else {
                        p.ids.len()
                    }
                })
                .collect();
            let full = self.queue.len() >= self.config.limits.max_pairs
                || self
                    .queue
                    .iter()
                    .take(window)
                    .map(|p| p.ids.len())
                    .sum::<usize>()
                    >= self.config.limits.max_tokens;
            let due = oldest + self.config.timeout;
            if !(full || self.inflight[r] == 0 || Instant::now() >= due) {
                return Some(due);
            }
            let chosen = match self.queue.front().and_then(|p| p.group) {
                // A quarantine group goes alone, whole.
                Some(g) => (0..self.queue.len())
                    .filter(|&i| self.queue[i].group == Some(g))
                    .collect(),
                None => batcher::choose(&lengths, self.config.limits, window),
            };
            let mut pairs = Vec::with_capacity(chosen.len());
            for &i in chosen.iter().rev() {
                if let Some(p) = self.queue.remove(i) {
                    pairs.push(p);
                }
            }
            pairs.reverse();
            self.send(r, &replicas[r], pairs);
        }
    }

    fn send(&mut self, r: usize, replica: &WorkerHandle, pairs: Vec<QueuedPair>) {
        let tokens: usize = pairs.iter().map(|p| p.ids.len()).sum();
        let mut batch = TokenBatch::with_capacity(pairs.len(), tokens);
        for p in &pairs {
            batch.push(&p.ids, &p.types);
        }
        self.metrics.observe_batch(
            pairs.len(),
            tokens,
            pairs.iter().map(|p| p.ids.len()).max().unwrap_or(0),
        );
        for p in &pairs {
            let waited = p.enqueued.elapsed().as_secs_f64();
            self.metrics.queue_wait.observe(waited);
            self.metrics.observe_stage(Stage::Queue, waited);
        }
        let mut payload = Vec::with_capacity(8 + 4 * (batch.len() + 1) + 8 * tokens);
        frame::encode_token_batch(&batch, &mut payload);
        let reply = replica.submit(FrameKind::TokenBatch, pairs.len() as u32, payload);
        self.inflight[r] += 1;
        self.publish_inflight();
        self.isolated[r] = pairs.first().is_some_and(|p| p.group.is_some());
        let events = self.events.clone();
        let batch = InFlight {
            pairs,
            sent: Instant::now(),
        };
        let (replica, deadline) = (replica.clone(), self.config.deadline);
        tokio::spawn(async move {
            let result = replica.reply_within(reply, deadline, "batch").await;
            let _ = events.send(Event::Done {
                replica: r,
                batch,
                result,
            });
        });
    }
}
