//! The scheduling queue, batcher and router of one model, as one actor
//! task that owns the queue (no locks on the dispatch path: the model's
//! replicas are leased from the [`WorkerPool`], which counts their work in
//! flight). One actor per served model, so batches never mix models.
//!
//! Tokenized pairs arrive as [`Work`]; whenever a replica has room (fewer
//! than `max_inflight` batches) the actor forms a batch
//! ([`crate::batcher::choose`]) and sends it to the replica with the fewest
//! batches in flight. It waits for company only while every replica is
//! busy, and never longer than the batch timeout. While every replica is
//! dead the queue waits for their restart. Scores are matched back
//! to their requests; the pairs of a batch whose replica died go back to
//! the front of the queue as suspects ([`crate::workers::isolation`]): a
//! pair that keeps killing replicas fails its request.

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::{Duration, Instant};

use ce_common::TokenBatch;
use tokio::sync::{mpsc, watch};

use crate::api::ApiError;
use crate::batcher::{self, BatchBudget};
use crate::metrics::{Metrics, Stage};
use crate::request::PendingRequest;
use crate::workers::isolation::{AfterDeath, after_death};
use crate::workers::{JobError, Lease, ReplicaClient, Scores, Share, Worked, WorkerPool};

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
    /// What one batch may hold.
    pub budget: BatchBudget,
    /// Longest wait for company while every replica is busy.
    pub timeout: Duration,
    /// Batches in flight per replica.
    pub max_inflight: usize,
    /// A replica that holds a batch longer is killed and replaced.
    pub deadline: Duration,
}

/// The model an actor schedules for.
#[derive(Debug, Clone)]
pub struct ModelQueue {
    /// Its name (the metrics' `model` label).
    pub name: String,
    /// The replica slots that serve it.
    pub slots: Vec<usize>,
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
    /// Suspects: pairs of a batch that killed its replica are re-sent only
    /// with the other members of their group, alone on a replica.
    group: Option<u64>,
}

#[derive(Debug)]
struct InFlight {
    pairs: Vec<QueuedPair>,
    sent: Instant,
    /// Whether the batch held its replica alone.
    alone: bool,
}

enum Event {
    Work(Work),
    Done {
        batch: InFlight,
        result: Result<Worked<Scores>, JobError>,
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
            Event::Done { batch, .. } => write!(f, "Done({} pairs)", batch.pairs.len()),
        }
    }
}

impl Scheduler {
    /// Starts the actor of `model` over its slots of the replica pool.
    pub fn start(
        config: SchedulerConfig,
        model: ModelQueue,
        replicas: WorkerPool<ReplicaClient>,
        metrics: Arc<Metrics>,
    ) -> Self {
        let (events, rx) = mpsc::unbounded_channel();
        let actor = Actor {
            config,
            restarts: replicas.generation(),
            replicas,
            queue_gauge: metrics.model_queue(&model.name),
            pairs_scored: metrics.model_pairs(&model.name),
            slots: model.slots,
            queue: VecDeque::new(),
            events: events.clone(),
            metrics,
            next_group: 0,
        };
        tokio::spawn(actor.run(rx));
        Self { events }
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
    replicas: WorkerPool<ReplicaClient>,
    /// The model's replicas: the only slots leased.
    slots: Vec<usize>,
    queue_gauge: prometheus_client::metrics::gauge::Gauge,
    pairs_scored: prometheus_client::metrics::counter::Counter,
    /// Changes when a replica is replaced: look for work to send.
    restarts: watch::Receiver<u64>,
    queue: VecDeque<QueuedPair>,
    events: mpsc::UnboundedSender<Event>,
    metrics: Arc<Metrics>,
    next_group: u64,
}

impl Actor {
    async fn run(mut self, mut rx: mpsc::UnboundedReceiver<Event>) {
        loop {
            let wake_at = self.dispatch();
            let sleep = async {
                match wake_at {
                    Some(at) => tokio::time::sleep_until(at.into()).await,
                    None => std::future::pending().await,
                }
            };
            let event = tokio::select! {
                e = rx.recv() => e,
                _ = sleep => continue,
                changed = self.restarts.changed() => {
                    if changed.is_err() {
                        return;
                    }
                    continue;
                }
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
            Event::Done { batch, result } => self.finish(batch, result),
        }
        self.queue_gauge.set(self.queue.len() as i64);
        self.publish_inflight();
    }

    fn finish(&mut self, batch: InFlight, result: Result<Worked<Scores>, JobError>) {
        let message = match result {
            Ok(done) => {
                let m = &self.metrics;
                self.pairs_scored.inc_by(batch.pairs.len() as u64);
                m.observe_stage(Stage::Forward, done.work.as_secs_f64());
                m.observe_stage(Stage::Wait, done.waited.as_secs_f64());
                m.observe_stage(Stage::Ring, done.transfer().as_secs_f64());
                let labels = done.output.labels;
                for (pair, row) in batch.pairs.iter().zip(done.output.logits.chunks(labels)) {
                    let queued = batch.sent.saturating_duration_since(pair.enqueued);
                    m.pair_latency
                        .observe(pair.enqueued.elapsed().as_secs_f64());
                    pair.request
                        .complete(pair.index, row, queued, done.round_trip);
                }
                return;
            }
            Err(JobError::Died) => return self.requeue_after_death(batch.pairs, batch.alone),
            Err(JobError::Refused(message)) => format!("model worker: {message}"),
            Err(JobError::Failed(message)) => message,
        };
        for pair in &batch.pairs {
            pair.request.fail(ApiError::Internal(message.clone()));
        }
    }

    /// The replica died holding these pairs: they go back to the front of
    /// the queue as suspects, split so that the bystanders finish and the
    /// poison is isolated ([`after_death`]). A pair that kills its replica
    /// alone fails its request: after two tries when it was alone from the
    /// start, after 1 + ⌈log2 n⌉ replica deaths when it came in a batch of n.
    fn requeue_after_death(&mut self, mut pairs: Vec<QueuedPair>, alone: bool) {
        for p in &mut pairs {
            p.tries = p.tries.saturating_add(1);
        }
        let groups = match after_death(pairs, alone) {
            AfterDeath::Refuse(pair) => {
                pair.request.fail(ApiError::Internal(format!(
                    "a model worker crashed scoring document {} ({} times, the last time alone); this input is refused",
                    pair.index, pair.tries
                )));
                return;
            }
            AfterDeath::RetryAlone(groups) => groups,
        };
        let mut requeued = Vec::new();
        for group in groups {
            for mut pair in group {
                pair.group = Some(self.next_group);
                requeued.push(pair);
            }
            self.next_group += 1;
        }
        for pair in requeued.into_iter().rev() {
            self.queue.push_front(pair);
        }
    }

    fn publish_inflight(&self) {
        self.metrics
            .batches_in_flight
            .set(self.replicas.in_flight() as i64);
    }

    /// Sends every batch that should go now; returns when to look again if
    /// a partial batch is waiting for company.
    fn dispatch(&mut self) -> Option<Instant> {
        loop {
            self.queue.retain(|p| !p.request.is_abandoned());
            self.queue_gauge.set(self.queue.len() as i64);
            let front = self.queue.front()?;
            let (oldest, suspects) = (front.enqueued, front.group);
            // Suspects go alone to an idle replica; other batches share one
            // with up to `max_inflight` batches.
            let share = match suspects {
                Some(_) => Share::Alone,
                None => Share::Shared(self.config.max_inflight),
            };
            let Some(lease) = self.replicas.try_lease_in(share, Some(&self.slots)) else {
                // Every replica busy, or all dead and being restarted: the
                // queue waits (clients' deadlines bound the wait) and a
                // completion or a restart brings us back.
                return None;
            };
            let chosen: Vec<usize> = match suspects {
                // A suspect group goes alone, whole.
                Some(g) => (0..self.queue.len())
                    .filter(|&i| self.queue[i].group == Some(g))
                    .collect(),
                None => {
                    // The batcher looks at one batch's worth of the oldest
                    // pairs: a request is answered when its last pair is,
                    // so mixing the pairs of many requests by length (a
                    // wider window) makes every request wait for the
                    // slowest of several batches. A 1-to-3 s open-loop ramp
                    // over HTTP answered 0.7 requests/s past the knee with
                    // 8 batches' worth, against a capacity of 1.3. The
                    // packed engine groups lengths for attention inside
                    // each batch anyway. Suspects (always at the front,
                    // where a death puts them) never join a normal batch.
                    let budget = self.config.budget;
                    let lengths: Vec<usize> = self
                        .queue
                        .iter()
                        .take(budget.max_pairs)
                        .take_while(|p| p.group.is_none())
                        .map(|p| p.ids.len())
                        .collect();
                    let full = self.queue.len() >= budget.max_pairs
                        || lengths.iter().sum::<usize>() >= budget.max_tokens;
                    let due = oldest + self.config.timeout;
                    if !(full || lease.found_idle() || Instant::now() >= due) {
                        return Some(due);
                    }
                    batcher::choose(&lengths, budget, budget.max_pairs)
                }
            };
            let mut pairs = Vec::with_capacity(chosen.len());
            for &i in chosen.iter().rev() {
                if let Some(p) = self.queue.remove(i) {
                    pairs.push(p);
                }
            }
            pairs.reverse();
            self.send(lease, pairs);
        }
    }

    fn send(&mut self, lease: Lease<ReplicaClient>, pairs: Vec<QueuedPair>) {
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
        self.publish_inflight();
        let events = self.events.clone();
        let deadline = self.config.deadline;
        tokio::spawn(async move {
            let in_flight = InFlight {
                pairs,
                sent: Instant::now(),
                alone: lease.is_alone(),
            };
            let result = lease.client().score(&batch, deadline).await;
            // Free the replica before the actor hears of it, so that its
            // in-flight gauge and next dispatch see the room.
            drop(lease);
            let _ = events.send(Event::Done {
                batch: in_flight,
                result,
            });
        });
    }
}
