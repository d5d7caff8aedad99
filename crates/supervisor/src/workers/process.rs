//! The supervisor's side of one worker process: spawn it with its link and
//! control socket, shake hands, configure it, wait until it is ready, then
//! carry frames to it and replies back. Only the typed clients
//! ([`super::client`]) send frames; everything else sees a process.
//!
//! A worker handle runs three tasks: a writer (jobs → to-worker ring), a
//! reader (from-worker ring → the job's reply channel, matched by frame id)
//! and a control task (heartbeats, metrics snapshots, shutdown). When the
//! process dies, every job it held fails with [`WorkerFailure::Died`] and
//! the handle reports itself dead; nothing waits forever.

use std::collections::HashMap;
use std::os::fd::OwnedFd;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use ce_common::control::{
    self, ControlChannel, ControlError, ControlMessage, GpuDevice, MetricsSnapshot, Role,
    WorkerConfig,
};
use ce_common::frame::FrameKind;
use ce_common::link::{self, LinkConfig};
use ce_common::ring::{FrameMeta, RingError, RingGauge};
use ce_common::ring_async::{AsyncConsumer, AsyncProducer};
use ce_common::spawn::{ExitWatch, SpawnSpec, Spawner};
use ce_common::worker::REPLICA_ENV;
use tokio::sync::{mpsc, oneshot, watch};

/// Why a worker could not be started.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    /// Spawning failed (binary missing, fds).
    #[error("cannot start {program}: {source}")]
    Spawn {
        /// The worker binary.
        program: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// The shared-memory link could not be made.
    #[error("cannot create the worker's rings: {0}")]
    Link(#[from] link::LinkError),
    /// Handshake or readiness failed.
    #[error("worker {role:?} {slot} did not become ready: {source}")]
    Control {
        /// Its role.
        role: Role,
        /// Its slot.
        slot: u32,
        /// Why.
        source: ControlError,
    },
    /// Setting up the rings in the runtime failed.
    #[error("ring: {0}")]
    Ring(#[from] RingError),
    /// The worker can never serve on this machine as configured: its
    /// device is absent or unusable, its back-end is not built in, or a
    /// library it links is missing. Starting it again cannot help.
    #[error("{0}")]
    Unavailable(String),
}

impl StartError {
    /// Whether starting the worker again cannot help (see
    /// [`StartError::Unavailable`]).
    pub fn is_permanent(&self) -> bool {
        matches!(self, StartError::Unavailable(_))
    }
}

/// Why a slot has no worker: what `/info` and the log say, and whether a
/// restart could change it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StartFailure {
    /// In words, for `/info` and the log.
    pub reason: String,
    /// Starting again cannot help: the slot is given up at once.
    pub permanent: bool,
}

impl From<&StartError> for StartFailure {
    fn from(e: &StartError) -> Self {
        Self {
            reason: e.to_string(),
            permanent: e.is_permanent(),
        }
    }
}

/// The exit status the dynamic loader gives a program whose libraries it
/// cannot find (before `main` runs).
const LOADER_FAILED: i32 = 127;

/// Why a job got no reply.
#[derive(Debug, Clone, thiserror::Error, PartialEq, Eq)]
pub enum WorkerFailure {
    /// The worker process died (or its rings broke) with the job in hand.
    #[error("worker process died")]
    Died,
    /// The job's frame can never fit the ring; nothing was sent and the
    /// worker is unharmed. Jobs are sized to fit, so this is a backstop.
    #[error("a job of {len} bytes exceeds the ring's largest frame ({max} bytes)")]
    TooLarge {
        /// Payload bytes of the job.
        len: usize,
        /// Largest payload the ring carries.
        max: usize,
    },
}

/// A reply frame as it came off the ring, for the typed clients to decode.
#[derive(Debug)]
pub(super) struct RawReply {
    /// Frame kind of the reply.
    pub kind: u16,
    /// Its payload.
    pub payload: Vec<u8>,
    /// Time the worker spent on the job, by its own clock (the rest of the
    /// round trip is transfer and waiting).
    pub work: Duration,
    /// When the reply before this one arrived: the worker takes jobs one
    /// at a time, so a job sent earlier waited behind that one until then.
    pub previous_reply: Instant,
}

/// Where a frame's reply (or its worker's death) arrives.
pub(super) type PendingReply = oneshot::Receiver<Result<RawReply, WorkerFailure>>;

/// One worker's figures for `/metrics`.
#[derive(Debug, Clone)]
pub struct WorkerFigures {
    /// Tokenizer or model.
    pub role: Role,
    /// Its slot among workers of its role.
    pub slot: u32,
    /// Its pid (0 for a slot that failed to start).
    pub pid: u32,
    /// Whether it serves.
    pub alive: bool,
    /// Its latest snapshot.
    pub snapshot: MetricsSnapshot,
    /// Bytes waiting in the supervisor → worker ring.
    pub to_worker_bytes: u64,
    /// Bytes waiting in the worker → supervisor ring.
    pub from_worker_bytes: u64,
    /// The GPU it computes on (a model worker on a GPU).
    pub gpu: Option<GpuDevice>,
    /// Device memory it holds, as the driver accounts it; filled in by the
    /// collector (`None` until then, or where the driver cannot tell).
    pub gpu_memory_bytes: Option<u64>,
}

type ReplySender = oneshot::Sender<Result<RawReply, WorkerFailure>>;

struct Job {
    kind: FrameKind,
    count: u32,
    payload: Vec<u8>,
    reply: ReplySender,
}

/// What to start.
#[derive(Debug, Clone)]
pub struct WorkerSpec {
    /// Tokenizer or model.
    pub role: Role,
    /// Its slot among workers of its role.
    pub slot: u32,
    /// The worker binary.
    pub program: PathBuf,
    /// What it is told after the handshake.
    pub config: WorkerConfig,
    /// Ring sizes.
    pub link: LinkConfig,
    /// How long loading may take.
    pub ready_timeout: Duration,
}

/// A worker process: running and ready, dead, or a slot whose worker
/// failed to start (dead from the start, carrying the reason).
#[derive(Debug, Clone)]
pub struct WorkerProcess {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    role: Role,
    slot: u32,
    pid: u32,
    jobs: mpsc::UnboundedSender<Job>,
    alive: AtomicBool,
    died: watch::Sender<bool>,
    /// True once the process has been reaped (or never existed).
    exited: watch::Sender<bool>,
    metrics: Mutex<MetricsSnapshot>,
    shutdown: mpsc::UnboundedSender<u64>,
    stopping: AtomicBool,
    /// Frames sent and not yet answered, by frame id.
    pending: Pending,
    /// When the handle was made; the origin of `last_reply_us`.
    born: Instant,
    /// When the worker last answered a job, in µs since `born`.
    last_reply_us: AtomicU64,
    /// `None` for a slot whose worker failed to start.
    exit: Option<Arc<ExitWatch>>,
    /// Why the worker of this slot failed to start, if it did.
    start_error: Option<StartFailure>,
    /// What computes its work, as it said when ready (empty otherwise).
    kernel: String,
    /// The GPU it computes on, as it said when ready.
    gpu: Option<GpuDevice>,
    /// Fill levels of the to-worker and from-worker rings.
    rings: Option<[RingGauge; 2]>,
}

impl WorkerProcess {
    /// Spawns the worker and waits until it says it is ready.
    pub async fn start(spec: WorkerSpec, spawner: &Spawner) -> Result<Self, StartError> {
        let name = format!("ce-{:?}-{}", spec.role, spec.slot).to_lowercase();
        let (sup_link, child_link) = link::create(spec.link, &name)?;
        let (ours, theirs) = control::socket_pair().map_err(|source| StartError::Spawn {
            program: spec.program.clone(),
            source,
        })?;
        let mut command = SpawnSpec::new(&spec.program).with_link(child_link);
        command.fds.push(OwnedFd::from(theirs));
        command
            .env
            .push((REPLICA_ENV.into(), spec.slot.to_string().into()));
        let spawner = spawner.clone();
        let program = spec.program.clone();
        let spawned = tokio::task::spawn_blocking(move || spawner.spawn(command))
            .await
            .map_err(|e| StartError::Spawn {
                program: program.clone(),
                source: std::io::Error::other(e),
            })?
            .map_err(|source| StartError::Spawn { program, source })?;
        let pid = spawned.pid();
        let control_err = |source| StartError::Control {
            role: spec.role,
            slot: spec.slot,
            source,
        };
        let mut control = ControlChannel::from_std(ours).map_err(|e| control_err(e.into()))?;
        let ready = async {
            match control
                .handshake(Role::Supervisor, spec.slot, Duration::from_secs(30))
                .await?
            {
                ControlMessage::Hello { role, .. } if role == spec.role => {}
                other => return Err(ControlError::Unexpected(format!("{other:?}"))),
            }
            control
                .send(&ControlMessage::Config(spec.config.clone()))
                .await?;
            loop {
                match control.recv().await? {
                    ControlMessage::Ready { kernel, gpu } => return Ok((kernel, gpu)),
                    ControlMessage::Refused { reason, permanent } => {
                        return Err(ControlError::Refused { reason, permanent });
                    }
                    ControlMessage::Heartbeat { .. } | ControlMessage::Metrics(_) => {}
                    other => {
                        return Err(ControlError::Unexpected(format!("{other:?} before Ready")));
                    }
                }
            }
        };
        let outcome = match tokio::time::timeout(spec.ready_timeout, ready).await {
            Ok(r) => r,
            Err(_) => Err(ControlError::Timeout(spec.ready_timeout)),
        };
        let mut child = spawned.child;
        let (kernel, gpu) = match outcome {
            Ok(ready) => ready,
            Err(e) => {
                let status = exit_status(&mut child, &spawned.exit).await;
                if let ControlError::Refused {
                    reason,
                    permanent: true,
                } = &e
                {
                    return Err(StartError::Unavailable(reason.clone()));
                }
                if status.and_then(|s| s.code()) == Some(LOADER_FAILED)
                    && let Some(why) = unloadable(&spec).await
                {
                    return Err(StartError::Unavailable(why));
                }
                let e = match (e, status) {
                    (e @ ControlError::Refused { .. }, _) => e,
                    (e, Some(status)) => ControlError::Unexpected(format!(
                        "{e}; the worker {}",
                        describe_exit(status)
                    )),
                    (e, None) => e,
                };
                return Err(control_err(e));
            }
        };
        let exit = Arc::new(spawned.exit);
        let producer = AsyncProducer::new(sup_link.to_worker)?;
        let consumer = AsyncConsumer::new(sup_link.from_worker)?;
        let rings = [producer.get_ref().gauge(), consumer.get_ref().gauge()];
        let (jobs, job_rx) = mpsc::unbounded_channel();
        let (shutdown, shutdown_rx) = mpsc::unbounded_channel();
        let mut inner = Inner::new(
            spec.role,
            spec.slot,
            Some(Live {
                pid,
                exit: exit.clone(),
                rings,
            }),
            jobs,
            shutdown,
        );
        inner.kernel = kernel;
        inner.gpu = gpu;
        let inner = Arc::new(inner);
        tokio::spawn(writer(inner.clone(), producer, job_rx, exit.clone()));
        tokio::spawn(reader(inner.clone(), consumer, exit));
        tokio::spawn(control_task(
            inner.clone(),
            control,
            shutdown_rx,
            Duration::from_millis(spec.config.heartbeat_ms),
        ));
        // Reap the process when it exits, so it never lingers as a zombie;
        // its slot restarts only after this (see `exited`).
        let reaped = inner.exited.clone();
        tokio::task::spawn_blocking(move || {
            let _ = child.wait();
            reaped.send_replace(true);
        });
        tracing::info!(role = ?spec.role, slot = spec.slot, pid, kernel = inner.kernel, "worker ready");
        Ok(Self { inner })
    }

    /// A slot whose worker has not been started yet (while loading).
    pub fn not_started(role: Role, slot: u32) -> Self {
        Self::dead(role, slot, None)
    }

    /// A slot whose worker could not be started: dead from the start, it
    /// carries the reason (for `/info` and logs) until a restart succeeds.
    pub fn failed(role: Role, slot: u32, failure: StartFailure) -> Self {
        Self::dead(role, slot, Some(failure))
    }

    fn dead(role: Role, slot: u32, start_error: Option<StartFailure>) -> Self {
        // Nobody receives: a job sent here fails at once as Died.
        let (jobs, _) = mpsc::unbounded_channel();
        let (shutdown, _) = mpsc::unbounded_channel();
        let mut inner = Inner::new(role, slot, None, jobs, shutdown);
        inner.start_error = start_error;
        Self {
            inner: Arc::new(inner),
        }
    }

    /// Why this slot's worker failed to start, if it did.
    pub fn start_error(&self) -> Option<&str> {
        self.inner.start_error.as_ref().map(|f| f.reason.as_str())
    }

    /// Whether this slot's worker failed to start for a reason no restart
    /// changes (see [`StartError::Unavailable`]).
    pub fn start_is_hopeless(&self) -> bool {
        self.inner.start_error.as_ref().is_some_and(|f| f.permanent)
    }

    /// The GPU this worker computes on, as it said when it became ready.
    pub fn gpu(&self) -> Option<&GpuDevice> {
        self.inner.gpu.as_ref()
    }

    /// What computes this worker's work, as it said when it became ready:
    /// a model worker's path and kernel; empty for a tokenizer or a slot
    /// that never started.
    pub fn kernel(&self) -> &str {
        &self.inner.kernel
    }

    /// Sends a frame; its reply (or the worker's death) arrives on the
    /// receiver.
    pub(super) fn send(&self, kind: FrameKind, count: u32, payload: Vec<u8>) -> PendingReply {
        let (reply, rx) = oneshot::channel();
        if let Err(mpsc::error::SendError(job)) = self.inner.jobs.send(Job {
            kind,
            count,
            payload,
            reply,
        }) {
            let _ = job.reply.send(Err(WorkerFailure::Died));
        }
        rx
    }

    /// Awaits `reply` (from [`send`](Self::send), called just before)
    /// and SIGKILLs the worker if it holds the job longer than `deadline`.
    ///
    /// A worker takes its jobs one at a time, in order, so a job starts when
    /// the one before it is answered: the clock runs from the later of the
    /// call and the worker's last answer. A job queued behind a slow one is
    /// not blamed for the wait, which under CPU contention (a busy host, a
    /// noisy neighbour) used to get a healthy replica killed.
    pub(super) async fn reply_within(
        &self,
        mut reply: PendingReply,
        deadline: Duration,
        what: &str,
    ) -> Result<RawReply, WorkerFailure> {
        let sent = Instant::now();
        let mut due = sent + deadline;
        loop {
            match tokio::time::timeout_at(due.into(), &mut reply).await {
                Ok(r) => return r.unwrap_or(Err(WorkerFailure::Died)),
                Err(_) => {
                    let last_reply = self.inner.born
                        + Duration::from_micros(self.inner.last_reply_us.load(Ordering::Acquire));
                    let started = sent.max(last_reply);
                    if started + deadline > Instant::now() {
                        due = started + deadline;
                        continue;
                    }
                    // Hung (or far too slow): its jobs then fail as Died.
                    self.kill(&format!("{what} over its deadline of {deadline:?}"));
                    return reply.await.unwrap_or(Err(WorkerFailure::Died));
                }
            }
        }
    }

    /// False once the process has died.
    pub fn is_alive(&self) -> bool {
        self.inner.alive.load(Ordering::Acquire)
    }

    /// Resolves when the process has died (or been given up on).
    pub async fn died(&self) {
        let mut rx = self.inner.died.subscribe();
        let _ = rx.wait_for(|d| *d).await;
    }

    /// Resolves once the process has exited and been reaped: after
    /// [`died`](Self::died), nothing of it is left running.
    pub async fn exited(&self) {
        let mut rx = self.inner.exited.subscribe();
        let _ = rx.wait_for(|d| *d).await;
    }

    /// Its pid.
    pub fn pid(&self) -> u32 {
        self.inner.pid
    }

    /// Its slot among workers of its role.
    pub fn slot(&self) -> u32 {
        self.inner.slot
    }

    /// Its role.
    pub fn role(&self) -> Role {
        self.inner.role
    }

    /// The latest figures it reported.
    pub fn metrics(&self) -> MetricsSnapshot {
        self.inner
            .metrics
            .lock()
            .map(|m| m.clone())
            .unwrap_or_default()
    }

    /// Its figures for `/metrics`.
    pub fn figures(&self) -> WorkerFigures {
        let occupancy = |i: usize| {
            self.inner
                .rings
                .as_ref()
                .map_or(0, |r: &[RingGauge; 2]| r[i].occupancy())
        };
        WorkerFigures {
            role: self.inner.role,
            slot: self.inner.slot,
            pid: self.inner.pid,
            alive: self.is_alive(),
            snapshot: self.metrics(),
            to_worker_bytes: occupancy(0),
            from_worker_bytes: occupancy(1),
            gpu: self.inner.gpu.clone(),
            gpu_memory_bytes: None,
        }
    }

    /// SIGKILLs it (hung, or faulty) and counts it dead at once: its jobs
    /// fail with [`WorkerFailure::Died`] and its slot's keeper starts a new
    /// one once it has exited.
    pub fn kill(&self, why: &str) {
        self.inner.kill(why);
    }

    /// Asks it to finish and exit within `grace`.
    pub fn shutdown(&self, grace: Duration) {
        self.inner.stopping.store(true, Ordering::Release);
        let _ = self.inner.shutdown.send(grace.as_millis() as u64);
    }
}

type Pending = Arc<Mutex<HashMap<u64, ReplySender>>>;

/// What only a started worker has.
struct Live {
    pid: u32,
    exit: Arc<ExitWatch>,
    rings: [RingGauge; 2],
}

impl Inner {
    /// A live worker's state, or (`live` = `None`) a dead slot's.
    fn new(
        role: Role,
        slot: u32,
        live: Option<Live>,
        jobs: mpsc::UnboundedSender<Job>,
        shutdown: mpsc::UnboundedSender<u64>,
    ) -> Self {
        Self {
            role,
            slot,
            pid: live.as_ref().map_or(0, |l| l.pid),
            jobs,
            alive: AtomicBool::new(live.is_some()),
            died: watch::Sender::new(live.is_none()),
            exited: watch::Sender::new(live.is_none()),
            metrics: Mutex::new(MetricsSnapshot::default()),
            shutdown,
            stopping: AtomicBool::new(false),
            pending: Arc::default(),
            born: Instant::now(),
            last_reply_us: AtomicU64::new(0),
            exit: live.as_ref().map(|l| l.exit.clone()),
            start_error: None,
            kernel: String::new(),
            gpu: None,
            rings: live.map(|l| l.rings),
        }
    }

    fn holding(&self) -> usize {
        self.pending.lock().map_or(0, |p| p.len())
    }

    /// Gives up on the worker, saying why: it is killed and counts as dead
    /// at once, so no more work is sent to it while it exits.
    fn kill(&self, why: &str) {
        tracing::error!(role = ?self.role, slot = self.slot, pid = self.pid, "killing worker: {why}");
        self.mark_dead();
    }

    /// Gives up on the worker: kills it (a no-op once it has exited), fails
    /// every job it holds and reports it dead.
    fn mark_dead(&self) {
        if let Some(exit) = &self.exit {
            exit.kill();
        }
        if self.alive.swap(false, Ordering::AcqRel) {
            if self.stopping.load(Ordering::Acquire) {
                tracing::info!(role = ?self.role, slot = self.slot, pid = self.pid, "worker exited");
            } else {
                tracing::warn!(role = ?self.role, slot = self.slot, pid = self.pid, "worker died");
            }
        }
        let failed: Vec<ReplySender> = match self.pending.lock() {
            Ok(mut p) => p.drain().map(|(_, s)| s).collect(),
            Err(_) => Vec::new(),
        };
        for s in failed {
            let _ = s.send(Err(WorkerFailure::Died));
        }
        self.died.send_replace(true);
    }
}

/// Carries jobs to the worker until it dies; then it ends, and with it the
/// producer (the ring mapping and doorbell) and its share of the exit fd.
async fn writer(
    inner: Arc<Inner>,
    mut producer: AsyncProducer,
    mut jobs: mpsc::UnboundedReceiver<Job>,
    exit: Arc<ExitWatch>,
) {
    let mut next_id = 1u64;
    let mut died = inner.died.subscribe();
    loop {
        let job = tokio::select! {
            job = jobs.recv() => job,
            _ = died.wait_for(|d| *d) => None,
        };
        let Some(job) = job else { break };
        let id = next_id;
        next_id += 1;
        if !inner.alive.load(Ordering::Acquire) {
            let _ = job.reply.send(Err(WorkerFailure::Died));
            continue;
        }
        if let Ok(mut p) = inner.pending.lock() {
            p.insert(id, job.reply);
        }
        let meta = FrameMeta {
            kind: job.kind as u16,
            id,
            count: job.count,
            work_us: 0,
        };
        let alive = || !exit.has_exited();
        match producer.send(meta, &job.payload, alive).await {
            Ok(()) => {}
            // Checked before anything is written: the job fails, the worker is fine.
            Err(RingError::FrameTooLarge { len, max }) => {
                let waiter = inner.pending.lock().ok().and_then(|mut p| p.remove(&id));
                if let Some(w) = waiter {
                    let _ = w.send(Err(WorkerFailure::TooLarge { len, max }));
                }
            }
            Err(e) => {
                if e != RingError::PeerGone {
                    tracing::error!(role = ?inner.role, slot = inner.slot, "to-worker ring failed: {e}");
                }
                inner.mark_dead();
                break;
            }
        }
    }
    // Whatever was queued behind the death fails now; later sends fail at once.
    jobs.close();
    while let Ok(job) = jobs.try_recv() {
        let _ = job.reply.send(Err(WorkerFailure::Died));
    }
}

async fn reader(inner: Arc<Inner>, mut consumer: AsyncConsumer, exit: Arc<ExitWatch>) {
    let mut buf = Vec::new();
    loop {
        let alive = || !exit.has_exited();
        match consumer.recv(&mut buf, alive).await {
            Ok(header) => {
                let waiter = inner
                    .pending
                    .lock()
                    .ok()
                    .and_then(|mut p| p.remove(&header.id));
                match waiter {
                    Some(w) => {
                        let previous_us = inner
                            .last_reply_us
                            .swap(inner.born.elapsed().as_micros() as u64, Ordering::AcqRel);
                        let reply = RawReply {
                            kind: header.kind,
                            payload: std::mem::take(&mut buf),
                            work: Duration::from_micros(header.work_us.into()),
                            previous_reply: inner.born + Duration::from_micros(previous_us),
                        };
                        let _ = w.send(Ok(reply));
                    }
                    None => {
                        tracing::warn!(role = ?inner.role, slot = inner.slot, id = header.id, "reply to no job")
                    }
                }
            }
            Err(e) => {
                if e != RingError::PeerGone {
                    // A worker that corrupts its ring is not to be trusted
                    // again: `mark_dead` kills it.
                    tracing::error!(role = ?inner.role, slot = inner.slot, "from-worker ring failed: {e}");
                }
                inner.mark_dead();
                return;
            }
        }
    }
}

/// Heartbeats missed, while the worker holds work, before it counts as
/// hung (stopped, or frozen as a whole) and is killed. A batch that merely
/// runs long keeps the heartbeats coming; it meets the batch deadline.
const MISSED_HEARTBEATS: u32 = 5;

async fn control_task(
    inner: Arc<Inner>,
    mut control: ControlChannel,
    mut shutdown: mpsc::UnboundedReceiver<u64>,
    heartbeat: Duration,
) {
    let stale_after = heartbeat
        .saturating_mul(MISSED_HEARTBEATS)
        .max(Duration::from_secs(1));
    let mut last_beat = Instant::now();
    let mut watchdog = tokio::time::interval(heartbeat.max(Duration::from_millis(50)));
    watchdog.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            message = control.recv() => match message {
                Ok(ControlMessage::Metrics(m)) => {
                    if let Ok(mut slot) = inner.metrics.lock() {
                        *slot = m;
                    }
                }
                Ok(ControlMessage::Heartbeat { .. }) => {
                    last_beat = Instant::now();
                }
                Ok(other) => tracing::debug!(slot = inner.slot, "ignoring control message {other:?}"),
                // EOF: the process is gone, or closed its control socket
                // (broken): either way it is given up on.
                Err(_) => {
                    inner.mark_dead();
                    return;
                }
            },
            Some(grace_ms) = shutdown.recv() => {
                let _ = control.send(&ControlMessage::Shutdown { grace_ms }).await;
            }
            _ = watchdog.tick() => {
                let silent = last_beat.elapsed();
                let holding = inner.holding();
                if silent > stale_after && holding > 0 && inner.alive.load(Ordering::Acquire) {
                    inner.kill(&format!(
                        "no heartbeat for {silent:.1?} while holding {holding} job(s): hung"
                    ));
                    // Once: its death arrives through the exit fd.
                    last_beat = Instant::now();
                }
            }
        }
    }
}

/// How a worker that failed to become ready ended: waits briefly for it to
/// exit on its own (a crash while loading), else kills it; reaps it either
/// way. `None` when it had to be killed (its status says nothing then).
async fn exit_status(
    child: &mut std::process::Child,
    exit: &ExitWatch,
) -> Option<std::process::ExitStatus> {
    let deadline = Instant::now() + Duration::from_millis(500);
    while !exit.has_exited() && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let on_its_own = exit.has_exited();
    if !on_its_own {
        let _ = child.kill();
    }
    let status = child.wait().ok()?;
    on_its_own.then_some(status)
}

/// Why the dynamic loader could not start `spec`'s program (it exited with
/// [`LOADER_FAILED`]), in one line naming the device: the libraries it
/// cannot find, as the loader lists them when asked to trace rather than
/// run (glibc's `LD_TRACE_LOADED_OBJECTS`, what `ldd` does). `None` when
/// the trace names nothing missing (the status meant something else).
async fn unloadable(spec: &WorkerSpec) -> Option<String> {
    let mut tracer = std::process::Command::new(&spec.program)
        .env("LD_TRACE_LOADED_OBJECTS", "1")
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .spawn()
        .ok()?;
    // A loader that ignores the variable runs the program itself, which
    // finds no supervisor's fds and exits; a hang is cut short regardless.
    let deadline = Instant::now() + Duration::from_secs(5);
    while tracer.try_wait().ok()?.is_none() {
        if Instant::now() > deadline {
            let _ = tracer.kill();
            let _ = tracer.wait();
            return None;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let mut listing = String::new();
    std::io::Read::read_to_string(tracer.stdout.as_mut()?, &mut listing).ok()?;
    let missing = missing_libraries(&listing);
    let first = missing.first()?;
    let whose = match &spec.config.job {
        control::WorkerJob::Model(replica) => replica.device.to_string(),
        control::WorkerJob::Tokenizer { .. } => "tokenizer".into(),
    };
    let program = spec.program.display();
    Some(if first.starts_with("libcuda.so") {
        format!("{whose}: {first} not found — is the NVIDIA driver installed? ({program} links it)")
    } else {
        format!(
            "{whose}: {program} cannot load {} (not found by the dynamic loader: check LD_LIBRARY_PATH, or rebuild the variant)",
            missing.join(", ")
        )
    })
}

/// The libraries a loader trace (`ldd`'s format) says are missing, the
/// driver's first: `libcuda.so.1 => not found`.
fn missing_libraries(trace: &str) -> Vec<String> {
    let mut missing: Vec<String> = trace
        .lines()
        .filter_map(|line| {
            let (name, found) = line.trim().split_once(" => ")?;
            found
                .trim()
                .starts_with("not found")
                .then(|| name.trim().to_string())
        })
        .collect();
    missing.sort_by_key(|name| !name.starts_with("libcuda.so"));
    missing.dedup();
    missing
}

/// "exited with status 3", "was killed by signal 6 (SIGABRT)".
fn describe_exit(status: std::process::ExitStatus) -> String {
    use std::os::unix::process::ExitStatusExt;
    match (status.code(), status.signal()) {
        (Some(code), _) => format!("exited with status {code}"),
        (None, Some(signal)) => {
            // The ones a crashing or killed worker ends with.
            let name = match signal {
                4 => " (SIGILL)",
                6 => " (SIGABRT)",
                7 => " (SIGBUS)",
                8 => " (SIGFPE)",
                9 => " (SIGKILL)",
                11 => " (SIGSEGV)",
                15 => " (SIGTERM)",
                _ => "",
            };
            format!("was killed by signal {signal}{name}")
        }
        (None, None) => format!("ended ({status})"),
    }
}

#[cfg(test)]
mod tests {
    use std::os::unix::process::ExitStatusExt;

    use super::{describe_exit, missing_libraries};

    #[test]
    fn a_loader_trace_names_the_missing_libraries_driver_first() {
        let trace = "\tlinux-vdso.so.1 (0x00007ffd)\n\tlibcublas.so.13 => not found\n\tlibcuda.so.1 => not found\n\tlibc.so.6 => /lib/x86_64-linux-gnu/libc.so.6 (0x00007f)\n";
        assert_eq!(
            missing_libraries(trace),
            ["libcuda.so.1".to_string(), "libcublas.so.13".to_string()]
        );
        assert!(missing_libraries("\tlibc.so.6 => /lib/libc.so.6 (0x1)\n").is_empty());
    }

    #[test]
    fn an_exit_is_described_by_its_status_or_signal() {
        let status = std::process::ExitStatus::from_raw;
        assert_eq!(describe_exit(status(3 << 8)), "exited with status 3");
        assert_eq!(describe_exit(status(6)), "was killed by signal 6 (SIGABRT)");
        assert_eq!(describe_exit(status(31)), "was killed by signal 31");
    }
}
