//! The tokio side of a ring: waits through `AsyncFd` on the doorbells, so no runtime thread ever blocks (docs/ARCHITECTURE.md, "The rings").

use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::time::Duration;

use tokio::io::unix::AsyncFd;

use crate::frame::FrameHeader;
use crate::ring::{Consumer, FrameMeta, Producer, RingError, drain};

/// Re-check liveness this often even without a wake-up.
const MAX_SLEEP: Duration = Duration::from_millis(100);

fn async_bell(fd: BorrowedFd<'_>) -> Result<AsyncFd<OwnedFd>, RingError> {
    let dup =
        rustix::io::fcntl_dupfd_cloexec(fd, 0).map_err(|e| RingError::Sys(format!("dup: {e}")))?;
    // SAFETY: `dup` is a fresh descriptor owned by the returned AsyncFd, so it
    // stays open exactly as long as it is registered.
    unsafe { AsyncFd::register(dup) }.map_err(|e| RingError::Sys(format!("AsyncFd: {e}")))
}

/// Waits for the doorbell (at most [`MAX_SLEEP`]); `true` when it says the
/// peer is gone (a socket-pair doorbell's end of file).
async fn wait_readable(bell: &AsyncFd<OwnedFd>) -> bool {
    if let Ok(Ok(mut guard)) = tokio::time::timeout(MAX_SLEEP, bell.readable()).await {
        if drain(bell.get_ref().as_fd()) {
            return true;
        }
        guard.clear_ready();
    }
    false
}

/// A [`Consumer`] awaited from tokio.
#[derive(Debug)]
pub struct AsyncConsumer {
    inner: Consumer,
    bell: AsyncFd<OwnedFd>,
}

impl AsyncConsumer {
    /// Wraps a consumer (inside a tokio runtime).
    pub fn new(inner: Consumer) -> Result<Self, RingError> {
        let bell = async_bell(inner.data_bell())?;
        Ok(Self { inner, bell })
    }

    /// The next frame, copied into `payload`. Waits without blocking a thread;
    /// `alive` is asked every 100 ms at most and ends the wait with
    /// [`RingError::PeerGone`] when it says no.
    pub async fn recv(
        &mut self,
        payload: &mut Vec<u8>,
        alive: impl Fn() -> bool,
    ) -> Result<FrameHeader, RingError> {
        loop {
            if let Some(h) = self.inner.try_recv(payload)? {
                return Ok(h);
            }
            let mut peer_closed = false;
            if self.inner.begin_sleep() {
                peer_closed = wait_readable(&self.bell).await;
            }
            self.inner.end_sleep();
            if peer_closed || !alive() {
                // Drain what the peer wrote before it died.
                return match self.inner.try_recv(payload)? {
                    Some(h) => Ok(h),
                    None => Err(RingError::PeerGone),
                };
            }
        }
    }

    /// The wrapped consumer.
    pub fn get_ref(&self) -> &Consumer {
        &self.inner
    }
}

/// A [`Producer`] awaited from tokio.
#[derive(Debug)]
pub struct AsyncProducer {
    inner: Producer,
    bell: AsyncFd<OwnedFd>,
}

impl AsyncProducer {
    /// Wraps a producer (inside a tokio runtime).
    pub fn new(inner: Producer) -> Result<Self, RingError> {
        let bell = async_bell(inner.space_bell())?;
        Ok(Self { inner, bell })
    }

    /// Writes a frame, waiting for room without blocking a thread.
    pub async fn send(
        &mut self,
        meta: FrameMeta,
        payload: &[u8],
        alive: impl Fn() -> bool,
    ) -> Result<(), RingError> {
        loop {
            if self.inner.try_send(meta, payload)? {
                return Ok(());
            }
            let full = self.inner.begin_sleep(payload.len());
            let mut peer_closed = false;
            if matches!(full, Ok(true)) {
                peer_closed = wait_readable(&self.bell).await;
            }
            self.inner.end_sleep();
            full?;
            if peer_closed || !alive() {
                return Err(RingError::PeerGone);
            }
        }
    }

    /// The wrapped producer.
    pub fn get_ref(&self) -> &Producer {
        &self.inner
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::link::{LinkConfig, WorkerLink, create};

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn async_ends_talk_to_a_blocking_worker_thread() {
        let (sup, child) = create(
            LinkConfig {
                to_worker: 1 << 14,
                from_worker: 1 << 14,
            },
            "ce-async-test",
        )
        .unwrap();
        let mut to = AsyncProducer::new(sup.to_worker).unwrap();
        let mut from = AsyncConsumer::new(sup.from_worker).unwrap();
        let worker = std::thread::spawn(move || {
            let mut w = WorkerLink::attach(child).unwrap();
            let mut buf = Vec::new();
            for _ in 0..20_000 {
                let h = w
                    .to_worker
                    .recv(&mut buf, Duration::from_secs(5), None)
                    .unwrap();
                let meta = FrameMeta {
                    kind: h.kind,
                    id: h.id,
                    count: h.count,
                    work_us: 0,
                };
                w.from_worker
                    .send(meta, &buf, Duration::from_secs(5), None)
                    .unwrap();
            }
        });
        let sender = tokio::spawn(async move {
            for i in 0..20_000u64 {
                let payload = vec![(i % 256) as u8; (i % 3000) as usize];
                to.send(
                    FrameMeta {
                        kind: 2,
                        id: i,
                        count: 0,
                        work_us: 0,
                    },
                    &payload,
                    || true,
                )
                .await
                .unwrap();
            }
        });
        let mut buf = Vec::new();
        for i in 0..20_000u64 {
            let h = from.recv(&mut buf, || true).await.unwrap();
            assert_eq!(h.id, i);
            assert_eq!(buf.len(), (i % 3000) as usize);
        }
        sender.await.unwrap();
        worker.join().unwrap();
    }
}
