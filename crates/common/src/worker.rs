//! The worker side of a supervisor connection, shared by the tokenizer and
//! model workers: attach the inherited link and control socket, shake
//! hands, receive the [`WorkerConfig`], then serve frames until told to
//! stop or until the supervisor dies.
//!
//! ```text
//! let session = unsafe { WorkerSession::connect(Role::Model)? }; // one thread so far
//! // … set thread counts from session.config(), load, warm up …
//! session.serve(|frame, payload, out| { … })?;                  // sends Ready first
//! ```
//!
//! [`WorkerSession::connect`] runs a current-thread runtime on the calling
//! thread, so the process still has a single thread when it returns: the
//! caller may then set thread-count environment variables safely.

use std::os::fd::{AsFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::net::UnixStream as StdUnixStream;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use crate::control::{
    ControlChannel, ControlError, ControlMessage, GpuDevice, MetricsSnapshot, Role, WorkerConfig,
};
use crate::frame::{FrameHeader, FrameKind};
use crate::link::{CHILD_LINK_FD_BASE, LINK_FDS, LinkError, WorkerLink};
use crate::ring::{FrameMeta, RingError};
use crate::{procstat, spawn};

/// Fd of the control socket in a worker (right after the link's fds).
pub const CHILD_CONTROL_FD: RawFd = CHILD_LINK_FD_BASE + LINK_FDS as RawFd;
/// Environment variable carrying the worker's index.
pub const REPLICA_ENV: &str = "CE_REPLICA";
/// How long a worker waits for the supervisor's handshake and config.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(30);
/// Longest a blocked ring wait goes without re-checking the stop flag.
const POLL: Duration = Duration::from_millis(200);

/// Why a worker session failed.
#[derive(Debug, thiserror::Error)]
pub enum WorkerError {
    /// The inherited link is unusable.
    #[error("shared-memory link: {0}")]
    Link(#[from] LinkError),
    /// The control channel failed.
    #[error("control channel: {0}")]
    Control(#[from] ControlError),
    /// A ring failed (corrupt memory, a system call).
    #[error("ring: {0}")]
    Ring(#[from] RingError),
    /// Something else at the OS level.
    #[error("{0}")]
    Io(#[from] std::io::Error),
    /// The supervisor said something out of turn.
    #[error("protocol: {0}")]
    Protocol(String),
}

/// What a frame handler produced: the reply's kind and count; its payload
/// is what the handler wrote into the output buffer.
#[derive(Debug, Clone, Copy)]
pub struct Handled {
    /// Reply frame kind.
    pub kind: FrameKind,
    /// Reply element count (pairs, labels…).
    pub count: u32,
    /// Pairs this frame completed, for the metrics snapshot.
    pub pairs: u64,
}

/// The longest duration a worker accepts from its supervisor (a day).
const MAX_PEER_MS: u64 = 86_400_000;

/// Counters the control thread reports in its metrics snapshots.
#[derive(Debug, Default)]
struct Counters {
    jobs: AtomicU64,
    pairs: AtomicU64,
    busy_nanos: AtomicU64,
}

/// A connected worker, configured and not yet serving.
#[derive(Debug)]
pub struct WorkerSession {
    role: Role,
    replica: u32,
    config: WorkerConfig,
    link: WorkerLink,
    control: ControlChannel,
    runtime: tokio::runtime::Runtime,
    parent: OwnedFd,
    kernel: String,
    gpu: Option<GpuDevice>,
}

impl WorkerSession {
    /// Attaches the inherited link (fds 3–7) and control socket (fd 8),
    /// shakes hands and waits for the configuration.
    ///
    /// # Safety
    /// Fds 3–8 must be what a supervisor placed for this worker, owned by
    /// nothing else; call once.
    pub unsafe fn connect(role: Role) -> Result<Self, WorkerError> {
        let parent = spawn::watch_parent(None)?;
        let replica = std::env::var(crate::worker::REPLICA_ENV)
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(0);
        // SAFETY: the caller guarantees fds 3–7 are our link.
        let link = unsafe { WorkerLink::from_inherited()? };
        // SAFETY: the caller guarantees fd 8 is our control socket.
        let socket = unsafe { StdUnixStream::from(OwnedFd::from_raw_fd(CHILD_CONTROL_FD)) };
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?;
        let (control, config) = runtime.block_on(async {
            let mut control = ControlChannel::from_std(socket)?;
            match control.handshake(role, replica, HANDSHAKE_TIMEOUT).await? {
                ControlMessage::Hello {
                    role: Role::Supervisor,
                    ..
                } => {}
                other => {
                    return Err(WorkerError::Protocol(format!(
                        "expected the supervisor's Hello, got {other:?}"
                    )));
                }
            }
            let message = tokio::time::timeout(HANDSHAKE_TIMEOUT, control.recv())
                .await
                .map_err(|_| ControlError::Timeout(HANDSHAKE_TIMEOUT))??;
            match message {
                ControlMessage::Config(config) => Ok((control, config)),
                other => Err(WorkerError::Protocol(format!(
                    "expected Config, got {other:?}"
                ))),
            }
        })?;
        Ok(Self {
            role,
            replica,
            config,
            link,
            control,
            runtime,
            parent,
            kernel: String::new(),
            gpu: None,
        })
    }

    /// Names what computes this worker's work; [`serve`](Self::serve)
    /// reports it with `Ready`.
    pub fn set_kernel(&mut self, kernel: impl Into<String>) {
        self.kernel = kernel.into();
    }

    /// Names the GPU this worker computes on; [`serve`](Self::serve)
    /// reports it with `Ready`.
    pub fn set_gpu(&mut self, gpu: GpuDevice) {
        self.gpu = Some(gpu);
    }

    /// What the supervisor asked of this worker.
    pub fn config(&self) -> &WorkerConfig {
        &self.config
    }

    /// This worker's index among its kind.
    pub fn replica(&self) -> u32 {
        self.replica
    }

    /// Tells the supervisor this worker cannot serve (say, the model does not
    /// load), so that it reports the reason instead of a closed socket.
    /// `permanent`: starting this worker again cannot help (its device is
    /// absent), so the supervisor does not retry.
    pub fn refuse(mut self, reason: &str, permanent: bool) {
        let message = ControlMessage::Refused {
            reason: reason.to_string(),
            permanent,
        };
        let _ = self.runtime.block_on(self.control.send(&message));
    }

    /// Announces readiness, then answers every frame on the to-worker ring
    /// with `handler` until the supervisor sends `Shutdown` (and the ring is
    /// drained) or dies. A handler error for one frame is the handler's to
    /// encode as an error reply; `serve` itself fails only on ring or
    /// control-channel faults.
    pub fn serve<F>(self, mut handler: F) -> Result<(), WorkerError>
    where
        F: FnMut(&FrameHeader, &[u8], &mut Vec<u8>) -> Handled,
    {
        let Self {
            role,
            replica,
            config,
            mut link,
            mut control,
            runtime,
            parent,
            kernel,
            gpu,
        } = self;
        runtime.block_on(control.send(&ControlMessage::Ready { kernel, gpu }))?;
        let stop = Arc::new(AtomicBool::new(false));
        let counters = Arc::new(Counters::default());
        // The supervisor's numbers, kept in a range where a timer cannot overflow.
        let heartbeat = Duration::from_millis(config.heartbeat_ms.clamp(50, MAX_PEER_MS));
        {
            let (stop, counters) = (stop.clone(), counters.clone());
            std::thread::Builder::new()
                .name("control".into())
                .spawn(move || {
                    let outcome =
                        runtime.block_on(control_loop(control, heartbeat, &stop, &counters));
                    if let Err(e) = outcome {
                        // The supervisor is gone or broken: nothing left to serve.
                        tracing::warn!(?role, replica, "control channel ended: {e}");
                        std::process::exit(0);
                    }
                })?;
        }
        tracing::info!(?role, replica, pid = std::process::id(), "worker serving");
        let (mut input, mut output) = (Vec::new(), Vec::new());
        loop {
            link.to_worker.beat();
            let header = match link.to_worker.recv(&mut input, POLL, Some(parent.as_fd())) {
                Ok(h) => h,
                Err(RingError::Timeout) if stop.load(Ordering::Acquire) => return Ok(()),
                Err(RingError::Timeout) => continue,
                Err(RingError::PeerGone) => return Ok(()),
                Err(e) => return Err(e.into()),
            };
            let started = Instant::now();
            output.clear();
            let reply = handler(&header, &input, &mut output);
            let worked = started.elapsed();
            counters
                .busy_nanos
                .fetch_add(worked.as_nanos() as u64, Ordering::Relaxed);
            counters.jobs.fetch_add(1, Ordering::Relaxed);
            counters.pairs.fetch_add(reply.pairs, Ordering::Relaxed);
            let meta = FrameMeta {
                kind: reply.kind as u16,
                id: header.id,
                count: reply.count,
                work_us: u32::try_from(worked.as_micros()).unwrap_or(u32::MAX),
            };
            match link.from_worker.send(
                meta,
                &output,
                Duration::from_secs(3600),
                Some(parent.as_fd()),
            ) {
                Ok(()) => {}
                Err(RingError::PeerGone) => return Ok(()),
                Err(e) => return Err(e.into()),
            }
        }
    }
}

async fn control_loop(
    mut control: ControlChannel,
    heartbeat: Duration,
    stop: &AtomicBool,
    counters: &Counters,
) -> Result<(), ControlError> {
    let mut tick = tokio::time::interval(heartbeat);
    let mut seq = 0u64;
    loop {
        tokio::select! {
            _ = tick.tick() => {
                seq += 1;
                control.send(&ControlMessage::Heartbeat { seq }).await?;
                control.send(&ControlMessage::Metrics(snapshot(counters))).await?;
            }
            message = control.recv() => match message? {
                ControlMessage::Shutdown { grace_ms } => {
                    tracing::info!(grace_ms, "shutdown requested");
                    stop.store(true, Ordering::Release);
                    // The serving loop exits once the ring is drained; past
                    // the grace period we go regardless.
                    tokio::time::sleep(Duration::from_millis(grace_ms.min(MAX_PEER_MS))).await;
                    std::process::exit(0);
                }
                ControlMessage::Heartbeat { .. } => {}
                other => tracing::debug!("ignoring control message {other:?}"),
            }
        }
    }
}

fn snapshot(counters: &Counters) -> MetricsSnapshot {
    MetricsSnapshot {
        cpu_seconds: procstat::own_cpu_time()
            .map(|d| d.as_secs_f64())
            .unwrap_or(0.0),
        rss_bytes: procstat::resident_bytes().unwrap_or(0),
        jobs: counters.jobs.load(Ordering::Relaxed),
        pairs: counters.pairs.load(Ordering::Relaxed),
        busy_seconds: counters.busy_nanos.load(Ordering::Relaxed) as f64 / 1e9,
    }
}
