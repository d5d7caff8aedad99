//! A single-producer single-consumer byte ring in shared memory.
//!
//! ```text
//! region: [ RingHeader (256 B) | data (capacity B, a power of two) ]
//! header: line 0  magic, version, capacity, generation, pids   (constant)
//!         line 1  head   — bytes ever written (producer stores)
//!         line 2  tail   — bytes ever read    (consumer stores)
//!         line 3  consumer_sleeping, producer_sleeping, attacher pid, heartbeat
//! data:   records of [FrameHeader | payload | pad to 8], or a wrap marker
//! ```
//!
//! Waiting never spins for long: a side that finds nothing to do spins for
//! up to 50 µs, then sets its `sleeping` flag, re-checks, and blocks in
//! `poll` on its doorbell (an eventfd, or on the portable backend its end
//! of a socket pair, whose end-of-file says the peer is gone; plus the
//! peer's exit fd, so a dead peer wakes it) with a timeout. The other side
//! rings that doorbell only when the flag is
//! set (the consumer only once half the ring is free), so a busy pipeline
//! makes no system call per frame. Both
//! sides order "store my index; load their flag" against "store my flag;
//! load their index" with SeqCst fences, so a wake-up cannot be lost.
//!
//! The peer is not trusted: the capacity is read once at attach, every
//! index and frame header read from shared memory is checked against it,
//! and payloads are copied out before they are decoded. A corrupt ring is a
//! [`RingError::Corrupt`], never a panic or an out-of-bounds access.

use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::sync::Arc;

use crate::ipc::Backend;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering, fence};
use std::time::{Duration, Instant};

use rustix::event::{PollFd, PollFlags};

use crate::frame::{FRAME_HEADER_LEN, FrameHeader};
use crate::shm::SharedRegion;

/// Identifies a ring header ("CE-RING1").
pub const RING_MAGIC: u64 = u64::from_le_bytes(*b"CE-RING1");
/// Layout version; a peer with another one is refused.
pub const RING_VERSION: u32 = 1;
/// Bytes taken by the header before the data area.
pub const RING_HEADER_LEN: usize = 256;
/// The `len` word that marks "continue at offset 0".
const WRAP_MARKER: u32 = u32::MAX;
/// How long a waiting side spins before it sleeps. Longer than one wake-up
/// of the peer (~15 µs here), so a ping-pong with an awake peer never
/// sleeps; short enough that a worker waiting for its next batch wastes
/// nothing measurable.
const SPIN_FOR: Duration = Duration::from_micros(50);

/// Bytes to skip (with a wrap marker) before writing a record of `record`
/// bytes at offset `off`: to the end when it does not fit there; also when
/// the ring is empty and the record fits before `off`, so an idle-then-busy
/// pipeline keeps reusing the first, cache-warm pages instead of touching
/// every page of the ring (which would also grow both processes' RSS to the
/// full capacity).
fn skip_before(off: u64, record: u64, cap: u64, used: u64) -> u64 {
    if off + record > cap || (used == 0 && off > 0 && record <= off) {
        cap - off
    } else {
        0
    }
}

/// Why a ring operation failed.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum RingError {
    /// The shared header or a frame in it is inconsistent.
    #[error("ring corrupt: {0}")]
    Corrupt(String),
    /// The frame can never fit (over half the capacity).
    #[error("frame of {len} bytes exceeds the ring's limit of {max} bytes")]
    FrameTooLarge {
        /// Payload length asked for.
        len: usize,
        /// Largest payload this ring carries.
        max: usize,
    },
    /// Nothing happened before the deadline.
    #[error("timed out")]
    Timeout,
    /// The peer process exited.
    #[error("peer process is gone")]
    PeerGone,
    /// A system call failed.
    #[error("{0}")]
    Sys(String),
}

/// Generations of the rings this process created: a fresh mapping is
/// told apart from an old one by its number.
static GENERATION: AtomicU64 = AtomicU64::new(0);

#[repr(C, align(64))]
struct Line<T>(T);

#[repr(C)]
struct RingHeader {
    magic: Line<(AtomicU64, AtomicU32, AtomicU32, AtomicU64, AtomicU64)>,
    head: Line<AtomicU64>,
    tail: Line<AtomicU64>,
    flags: Line<(AtomicU32, AtomicU32, AtomicU64, AtomicU64)>,
}

const _: () = assert!(std::mem::size_of::<RingHeader>() == RING_HEADER_LEN);

impl RingHeader {
    fn consumer_sleeping(&self) -> &AtomicU32 {
        &self.flags.0.0
    }
    fn producer_sleeping(&self) -> &AtomicU32 {
        &self.flags.0.1
    }
}

/// One side's doorbells of a ring (non-blocking fds). Each side rings and
/// waits on its own `data` and `space`: with eventfds both sides hold the
/// same two counters; with socket pairs each holds one end, so a byte
/// written to one end wakes the other.
#[derive(Debug)]
pub struct Doorbells {
    /// Rung by the producer when data arrives for a sleeping consumer.
    pub data: OwnedFd,
    /// Rung by the consumer when space frees up for a sleeping producer.
    pub space: OwnedFd,
}

impl Doorbells {
    /// The doorbells of one ring with this process's backend: one side's
    /// and the other's (to keep, or to hand to a child).
    pub fn pair() -> Result<(Self, Self), RingError> {
        Self::pair_with(Backend::current())
    }

    /// [`pair`](Self::pair) with a given backend.
    pub fn pair_with(backend: Backend) -> Result<(Self, Self), RingError> {
        match backend {
            Backend::Linux => {
                let data = eventfd()?;
                let space = eventfd()?;
                let other = Self {
                    data: dup(&data)?,
                    space: dup(&space)?,
                };
                Ok((Self { data, space }, other))
            }
            Backend::Portable => {
                let (data, peer_data) = socket_pair()?;
                let (space, peer_space) = socket_pair()?;
                Ok((
                    Self { data, space },
                    Self {
                        data: peer_data,
                        space: peer_space,
                    },
                ))
            }
        }
    }
}

#[cfg(target_os = "linux")]
fn eventfd() -> Result<OwnedFd, RingError> {
    use rustix::event::EventfdFlags;
    rustix::event::eventfd(0, EventfdFlags::CLOEXEC | EventfdFlags::NONBLOCK)
        .map_err(|e| RingError::Sys(format!("eventfd: {e}")))
}

#[cfg(not(target_os = "linux"))]
fn eventfd() -> Result<OwnedFd, RingError> {
    Err(RingError::Sys("eventfd exists only on Linux".into()))
}

fn dup(fd: &OwnedFd) -> Result<OwnedFd, RingError> {
    rustix::io::fcntl_dupfd_cloexec(fd, 0).map_err(|e| RingError::Sys(format!("dup: {e}")))
}

/// A connected pair of non-blocking, close-on-exec Unix stream sockets.
fn socket_pair() -> Result<(OwnedFd, OwnedFd), RingError> {
    let (a, b) = std::os::unix::net::UnixStream::pair()
        .map_err(|e| RingError::Sys(format!("socketpair: {e}")))?;
    for end in [&a, &b] {
        end.set_nonblocking(true)
            .map_err(|e| RingError::Sys(format!("socketpair: {e}")))?;
    }
    Ok((a.into(), b.into()))
}

fn ring(fd: BorrowedFd<'_>) {
    // A failed write means the eventfd counter (or the socket's buffer) is
    // full, so the peer has a wake-up pending anyway; or the peer is gone,
    // which its waits find out on their own.
    let _ = rustix::io::write(fd, &1u64.to_ne_bytes());
}

/// Resets a doorbell after a wake-up; `true` when the doorbell says the
/// peer is gone (its end of a socket pair closed: end of file).
pub fn drain(fd: BorrowedFd<'_>) -> bool {
    // An eventfd reads as one 8-byte counter; a socket as whatever bytes
    // its peer rang with.
    let mut buf = [0u8; 64];
    loop {
        match rustix::io::read(fd, &mut buf) {
            Ok(0) => return true,
            Ok(n) if n == buf.len() => continue,
            Err(rustix::io::Errno::INTR) => continue,
            Ok(_) | Err(_) => return false,
        }
    }
}

/// Blocks until `bell` or `peer` is readable or `timeout` passes.
fn sleep_on(
    bell: BorrowedFd<'_>,
    peer: Option<BorrowedFd<'_>>,
    timeout: Duration,
) -> Result<(), RingError> {
    let mut fds = vec![PollFd::new(&bell, PollFlags::IN)];
    if let Some(p) = peer.as_ref() {
        fds.push(PollFd::new(p, PollFlags::IN));
    }
    let ts = rustix::time::Timespec {
        tv_sec: timeout.as_secs() as i64,
        tv_nsec: timeout.subsec_nanos() as i64,
    };
    match rustix::event::poll(&mut fds, Some(&ts)) {
        Ok(_) | Err(rustix::io::Errno::INTR) => {}
        Err(e) => return Err(RingError::Sys(format!("poll: {e}"))),
    }
    if fds.len() > 1 && !fds[1].revents().is_empty() {
        return Err(RingError::PeerGone);
    }
    if !fds[0].revents().is_empty() && drain(bell) {
        return Err(RingError::PeerGone);
    }
    Ok(())
}

/// Where a ring sits inside a shared region.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RingPlacement {
    /// Byte offset of the header in the region (64-aligned).
    pub offset: usize,
    /// Data capacity in bytes (a power of two, at least 4 KiB).
    pub capacity: usize,
}

impl RingPlacement {
    /// Bytes the ring occupies in the region.
    pub fn footprint(&self) -> usize {
        RING_HEADER_LEN + self.capacity
    }

    /// The largest payload one frame may carry.
    pub fn max_payload(&self) -> usize {
        self.capacity / 2 - FRAME_HEADER_LEN
    }
}

/// Shared state both ends hold.
struct RingView {
    region: Arc<SharedRegion>,
    header: *const RingHeader,
    data: *mut u8,
    capacity: u64,
    bells: Doorbells,
}

// SAFETY: the raw pointers point into the region this view keeps alive, and
// all shared access goes through atomics or copies.
unsafe impl Send for RingView {}

impl RingView {
    fn new(
        region: Arc<SharedRegion>,
        at: RingPlacement,
        bells: Doorbells,
        init: bool,
    ) -> Result<Self, RingError> {
        if !at.capacity.is_power_of_two() || at.capacity < 4096 || !at.offset.is_multiple_of(64) {
            return Err(RingError::Corrupt(format!("bad placement {at:?}")));
        }
        let end = at
            .offset
            .checked_add(at.footprint())
            .ok_or_else(|| RingError::Corrupt("placement overflows".into()))?;
        if end > region.len() {
            return Err(RingError::Corrupt(format!(
                "ring ends at {end}, region has {} bytes",
                region.len()
            )));
        }
        // SAFETY: offset and footprint were checked to lie inside the mapping,
        // which is page aligned, so the header is 64-aligned.
        let base = unsafe { region.as_ptr().add(at.offset) };
        let header = base.cast::<RingHeader>().cast_const();
        // SAFETY: as above; the header's fields are atomics, valid for any bit pattern.
        let h = unsafe { &*header };
        if init {
            h.magic.0.1.store(RING_VERSION, Ordering::Relaxed);
            h.magic.0.3.store(at.capacity as u64, Ordering::Relaxed);
            h.magic.0.2.store(std::process::id(), Ordering::Relaxed);
            h.magic.0.4.store(
                GENERATION.fetch_add(1, Ordering::Relaxed) + 1,
                Ordering::Relaxed,
            );
            h.flags.0.2.store(0, Ordering::Relaxed);
            h.flags.0.3.store(0, Ordering::Relaxed);
            h.head.0.store(0, Ordering::Relaxed);
            h.tail.0.store(0, Ordering::Relaxed);
            h.magic.0.0.store(RING_MAGIC, Ordering::Release);
        } else {
            let magic = h.magic.0.0.load(Ordering::Acquire);
            let version = h.magic.0.1.load(Ordering::Relaxed);
            let capacity = h.magic.0.3.load(Ordering::Relaxed);
            if magic != RING_MAGIC {
                return Err(RingError::Corrupt(format!("bad magic {magic:#x}")));
            }
            if version != RING_VERSION {
                return Err(RingError::Corrupt(format!(
                    "layout version {version}, expected {RING_VERSION}"
                )));
            }
            if capacity != at.capacity as u64 {
                return Err(RingError::Corrupt(format!(
                    "capacity {capacity}, expected {}",
                    at.capacity
                )));
            }
            h.flags
                .0
                .2
                .store(std::process::id() as u64, Ordering::Relaxed);
        }
        Ok(Self {
            region,
            header,
            // SAFETY: inside the checked footprint.
            data: unsafe { base.add(RING_HEADER_LEN) },
            capacity: at.capacity as u64,
            bells,
        })
    }

    fn header(&self) -> &RingHeader {
        // SAFETY: valid for the view's life (the region is kept alive).
        unsafe { &*self.header }
    }

    fn identity(&self) -> RingIdentity {
        let h = self.header();
        RingIdentity {
            generation: h.magic.0.4.load(Ordering::Relaxed),
            creator_pid: h.magic.0.2.load(Ordering::Relaxed),
            attacher_pid: h.flags.0.2.load(Ordering::Relaxed) as u32,
            heartbeat: h.flags.0.3.load(Ordering::Relaxed),
        }
    }
}

/// A read-only look at a ring's fill level, for metrics: cheap to clone,
/// usable from any thread while either end works.
#[derive(Clone)]
pub struct RingGauge {
    /// Kept alive: `header` points into it.
    _region: Arc<SharedRegion>,
    header: *const RingHeader,
    capacity: u64,
}

// SAFETY: the pointer points into the region this gauge keeps alive, and
// only atomics are read through it.
unsafe impl Send for RingGauge {}
// SAFETY: as above; reads of atomics are safe from any thread.
unsafe impl Sync for RingGauge {}

impl std::fmt::Debug for RingGauge {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RingGauge")
            .field("capacity", &self.capacity)
            .field("occupancy", &self.occupancy())
            .finish()
    }
}

impl RingGauge {
    fn of(view: &RingView) -> Self {
        Self {
            _region: view.region.clone(),
            header: view.header,
            capacity: view.capacity,
        }
    }

    /// Bytes written and not yet read (clamped to the capacity: the peer
    /// may write anything into the header).
    pub fn occupancy(&self) -> u64 {
        // SAFETY: valid while `_region` is alive, which we hold.
        let h = unsafe { &*self.header };
        h.head
            .0
            .load(Ordering::Acquire)
            .wrapping_sub(h.tail.0.load(Ordering::Acquire))
            .min(self.capacity)
    }

    /// The data area's size in bytes.
    pub fn capacity(&self) -> u64 {
        self.capacity
    }
}

/// Who made a ring, who attached, and its liveness counter, as the shared
/// header says (informational: the peer may write anything there).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RingIdentity {
    /// Number of the ring among those its creator made.
    pub generation: u64,
    /// Pid of the creator (the supervisor).
    pub creator_pid: u32,
    /// Pid of the side that attached (the worker), 0 before it did.
    pub attacher_pid: u32,
    /// Bumped by [`Consumer::beat`]: moves while the consumer loop runs.
    pub heartbeat: u64,
}

/// Metadata of a frame to send.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FrameMeta {
    /// Frame kind (see [`crate::frame::FrameKind`]).
    pub kind: u16,
    /// Request or batch id.
    pub id: u64,
    /// Element count, meaning per kind.
    pub count: u32,
    /// On replies: microseconds the worker spent on the job (0 otherwise).
    pub work_us: u32,
}

/// The writing end of a ring.
pub struct Producer {
    view: RingView,
    head: u64,
    full_waits: u64,
}

impl std::fmt::Debug for Producer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Producer")
            .field("head", &self.head)
            .field("full_waits", &self.full_waits)
            .finish_non_exhaustive()
    }
}

/// The reading end of a ring.
pub struct Consumer {
    view: RingView,
    tail: u64,
}

impl std::fmt::Debug for Consumer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Consumer")
            .field("tail", &self.tail)
            .finish_non_exhaustive()
    }
}

/// Records start on 8-byte boundaries; an index read from shared memory
/// that is not is corruption (and reading a header there would be misaligned).
fn aligned_index(value: u64, name: &str) -> Result<u64, RingError> {
    if value.is_multiple_of(8) {
        Ok(value)
    } else {
        Err(RingError::Corrupt(format!(
            "{name} {value} is not 8-byte aligned"
        )))
    }
}

fn padded(len: u64) -> u64 {
    len.div_ceil(8) * 8
}

impl Producer {
    /// Initialises the ring at `at` (the creator's side) and returns its producer.
    pub fn create(
        region: Arc<SharedRegion>,
        at: RingPlacement,
        bells: Doorbells,
    ) -> Result<Self, RingError> {
        Ok(Self {
            view: RingView::new(region, at, bells, true)?,
            head: 0,
            full_waits: 0,
        })
    }

    /// Attaches to a ring the peer initialised.
    pub fn attach(
        region: Arc<SharedRegion>,
        at: RingPlacement,
        bells: Doorbells,
    ) -> Result<Self, RingError> {
        let view = RingView::new(region, at, bells, false)?;
        let head = aligned_index(view.header().head.0.load(Ordering::Acquire), "head")?;
        Ok(Self {
            view,
            head,
            full_waits: 0,
        })
    }

    /// Largest payload a frame may carry.
    pub fn max_payload(&self) -> usize {
        (self.view.capacity / 2) as usize - FRAME_HEADER_LEN
    }

    /// Bytes not yet consumed, as far as the producer knows.
    pub fn occupancy(&self) -> Result<u64, RingError> {
        let tail = self.view.header().tail.0.load(Ordering::Acquire);
        self.used(tail)
    }

    fn used(&self, tail: u64) -> Result<u64, RingError> {
        match self.head.checked_sub(tail) {
            Some(used) if used <= self.view.capacity => Ok(used),
            _ => Err(RingError::Corrupt(format!(
                "tail {tail} is not within head {} - capacity",
                self.head
            ))),
        }
    }

    /// Writes a frame if there is room; `Ok(false)` when the ring is full.
    pub fn try_send(&mut self, meta: FrameMeta, payload: &[u8]) -> Result<bool, RingError> {
        let max = self.max_payload();
        if payload.len() > max {
            return Err(RingError::FrameTooLarge {
                len: payload.len(),
                max,
            });
        }
        let cap = self.view.capacity;
        let record = FRAME_HEADER_LEN as u64 + padded(payload.len() as u64);
        let tail = self.view.header().tail.0.load(Ordering::Acquire);
        let used = self.used(tail)?;
        let off = self.head % cap;
        let skip = skip_before(off, record, cap, used);
        if skip + record > cap - used {
            return Ok(false);
        }
        // SAFETY (all writes below): `off` < cap and the region from `off`
        // (or 0 after a wrap) for `record` bytes lies in the data area and
        // is free (not readable by the consumer until `head` is published).
        unsafe {
            if skip > 0 {
                self.view
                    .data
                    .add(off as usize)
                    .cast::<u32>()
                    .write_volatile(WRAP_MARKER);
                self.head += skip;
            }
            let at = self.view.data.add((self.head % cap) as usize);
            let mut header = FrameHeader::new(meta.kind, meta.id, meta.count, payload.len() as u32);
            header.work_us = meta.work_us;
            std::ptr::copy_nonoverlapping(
                bytemuck::bytes_of(&header).as_ptr(),
                at,
                FRAME_HEADER_LEN,
            );
            std::ptr::copy_nonoverlapping(
                payload.as_ptr(),
                at.add(FRAME_HEADER_LEN),
                payload.len(),
            );
        }
        self.head += record;
        let h = self.view.header();
        h.head.0.store(self.head, Ordering::Release);
        fence(Ordering::SeqCst);
        if h.consumer_sleeping().load(Ordering::Relaxed) != 0 {
            ring(self.view.bells.data.as_fd());
        }
        Ok(true)
    }

    /// Async side of the sleep protocol: announce sleep, then report whether
    /// a frame of `payload_len` bytes still does not fit.
    pub fn begin_sleep(&self, payload_len: usize) -> Result<bool, RingError> {
        let h = self.view.header();
        h.producer_sleeping().store(1, Ordering::SeqCst);
        fence(Ordering::SeqCst);
        self.is_full_for(payload_len)
    }

    /// The ring's identity and the consumer's heartbeat.
    pub fn identity(&self) -> RingIdentity {
        self.view.identity()
    }

    /// A gauge of this ring's fill level.
    pub fn gauge(&self) -> RingGauge {
        RingGauge::of(&self.view)
    }

    /// Clears the sleeping flag set by [`Producer::begin_sleep`].
    pub fn end_sleep(&self) {
        self.view
            .header()
            .producer_sleeping()
            .store(0, Ordering::SeqCst);
    }

    /// The doorbell a sleeping producer waits on.
    pub fn space_bell(&self) -> BorrowedFd<'_> {
        self.view.bells.space.as_fd()
    }

    fn is_full_for(&self, payload_len: usize) -> Result<bool, RingError> {
        let tail = self.view.header().tail.0.load(Ordering::Acquire);
        let record = FRAME_HEADER_LEN as u64 + padded(payload_len as u64);
        let cap = self.view.capacity;
        let used = self.used(tail)?;
        let skip = skip_before(self.head % cap, record, cap, used);
        Ok(skip + record > cap - used)
    }

    /// How many times [`Producer::send`] found the ring full and had to
    /// sleep until the consumer made room (back-pressure events).
    pub fn full_waits(&self) -> u64 {
        self.full_waits
    }

    /// Writes a frame, waiting for room up to `timeout`. `peer` (a pidfd)
    /// ends the wait early with [`RingError::PeerGone`].
    pub fn send(
        &mut self,
        meta: FrameMeta,
        payload: &[u8],
        timeout: Duration,
        peer: Option<BorrowedFd<'_>>,
    ) -> Result<(), RingError> {
        let deadline = Instant::now() + timeout;
        let spin_until = Instant::now() + SPIN_FOR;
        let mut spins = 0u32;
        loop {
            if self.try_send(meta, payload)? {
                return Ok(());
            }
            spins = spins.wrapping_add(1);
            if !spins.is_multiple_of(64) {
                std::hint::spin_loop();
                continue;
            }
            if Instant::now() < spin_until {
                // Yielding lets a peer woken onto this CPU run at once.
                std::thread::yield_now();
                continue;
            }
            let now = Instant::now();
            if now >= deadline {
                return Err(RingError::Timeout);
            }
            let h = self.view.header();
            h.producer_sleeping().store(1, Ordering::SeqCst);
            fence(Ordering::SeqCst);
            let still_full = self.is_full_for(payload.len())?;
            let result = if still_full {
                self.full_waits += 1;
                sleep_on(
                    self.view.bells.space.as_fd(),
                    peer,
                    (deadline - now).min(Duration::from_millis(100)),
                )
            } else {
                Ok(())
            };
            h.producer_sleeping().store(0, Ordering::SeqCst);
            result?;
        }
    }
}

impl Consumer {
    /// Initialises the ring at `at` (the creator's side) and returns its consumer.
    pub fn create(
        region: Arc<SharedRegion>,
        at: RingPlacement,
        bells: Doorbells,
    ) -> Result<Self, RingError> {
        Ok(Self {
            view: RingView::new(region, at, bells, true)?,
            tail: 0,
        })
    }

    /// Attaches to a ring the peer initialised.
    pub fn attach(
        region: Arc<SharedRegion>,
        at: RingPlacement,
        bells: Doorbells,
    ) -> Result<Self, RingError> {
        let view = RingView::new(region, at, bells, false)?;
        let tail = aligned_index(view.header().tail.0.load(Ordering::Acquire), "tail")?;
        Ok(Self { view, tail })
    }

    /// Finds and checks the next record without consuming it: its header,
    /// the payload's offset in the data area and the record's length.
    fn next_record(&mut self) -> Result<Option<(FrameHeader, usize, u64)>, RingError> {
        let cap = self.view.capacity;
        loop {
            let head = self.view.header().head.0.load(Ordering::Acquire);
            let avail = match head.checked_sub(self.tail) {
                Some(a) if a <= cap => a,
                _ => {
                    return Err(RingError::Corrupt(format!(
                        "head {head} is not within tail {} + capacity",
                        self.tail
                    )));
                }
            };
            if avail == 0 {
                return Ok(None);
            }
            let off = self.tail % cap;
            // SAFETY: off < cap and off is 8-aligned, so 4 bytes are in bounds.
            let first = unsafe {
                self.view
                    .data
                    .add(off as usize)
                    .cast::<u32>()
                    .read_volatile()
            };
            if first == WRAP_MARKER {
                let skip = cap - off;
                if skip > avail {
                    return Err(RingError::Corrupt(
                        "wrap marker beyond the written data".into(),
                    ));
                }
                self.advance(skip);
                continue;
            }
            if avail < FRAME_HEADER_LEN as u64 || off + FRAME_HEADER_LEN as u64 > cap {
                return Err(RingError::Corrupt(format!(
                    "{avail} bytes at offset {off} cannot hold a frame header"
                )));
            }
            let mut header = FrameHeader::zeroed();
            // SAFETY: the header's bytes lie within the data area (checked above).
            unsafe {
                std::ptr::copy_nonoverlapping(
                    self.view.data.add(off as usize),
                    bytemuck::bytes_of_mut(&mut header).as_mut_ptr(),
                    FRAME_HEADER_LEN,
                );
            }
            let len = header.len as u64;
            let record = FRAME_HEADER_LEN as u64 + padded(len);
            if record > avail || off + record > cap {
                return Err(RingError::Corrupt(format!(
                    "frame of {len} bytes at offset {off} overruns the ring ({avail} bytes written)"
                )));
            }
            return Ok(Some((header, off as usize + FRAME_HEADER_LEN, record)));
        }
    }

    /// Reads the next frame into `payload` (replacing its contents), if any.
    pub fn try_recv(&mut self, payload: &mut Vec<u8>) -> Result<Option<FrameHeader>, RingError> {
        self.try_recv_with(|_, bytes| {
            payload.clear();
            payload.extend_from_slice(bytes);
        })
        .map(|r| r.map(|(h, ())| h))
    }

    /// Hands the next frame's payload to `f` where it lies in the ring,
    /// then consumes it: one copy fewer than [`Consumer::try_recv`] for a
    /// reader that decodes the payload into its own buffers anyway.
    ///
    /// The peer is untrusted, so `f` must treat the bytes as hostile and
    /// read each value once (as the [`crate::frame`] decoders do, which
    /// copy out before they validate).
    pub fn try_recv_with<R>(
        &mut self,
        f: impl FnOnce(&FrameHeader, &[u8]) -> R,
    ) -> Result<Option<(FrameHeader, R)>, RingError> {
        Ok(self.next_record()?.map(|record| self.consume(record, f)))
    }

    fn consume<R>(
        &mut self,
        (header, at, record): (FrameHeader, usize, u64),
        f: impl FnOnce(&FrameHeader, &[u8]) -> R,
    ) -> (FrameHeader, R) {
        // SAFETY: `next_record` checked that the payload lies inside the
        // data area; the producer does not write there until we advance.
        let bytes =
            unsafe { std::slice::from_raw_parts(self.view.data.add(at), header.len as usize) };
        let out = f(&header, bytes);
        self.advance(record);
        (header, out)
    }

    fn advance(&mut self, by: u64) {
        self.tail += by;
        let h = self.view.header();
        h.tail.0.store(self.tail, Ordering::Release);
        fence(Ordering::SeqCst);
        // Wake a sleeping producer only once half the ring is free: waking
        // it for every frame read would cost two system calls per frame
        // whenever the consumer is the slower side. An empty ring always
        // fits the largest frame, so it can never be left waiting.
        if h.producer_sleeping().load(Ordering::Relaxed) != 0
            && h.head.0.load(Ordering::Acquire).wrapping_sub(self.tail) <= self.view.capacity / 2
        {
            ring(self.view.bells.space.as_fd());
        }
    }

    /// Async side of the sleep protocol: announce sleep, then report whether
    /// the ring is still empty (if not, call [`Consumer::end_sleep`] and read).
    pub fn begin_sleep(&self) -> bool {
        let h = self.view.header();
        h.consumer_sleeping().store(1, Ordering::SeqCst);
        fence(Ordering::SeqCst);
        h.head.0.load(Ordering::Acquire) == self.tail
    }

    /// Bumps the heartbeat counter: a consumer loop calls it on every turn,
    /// so the producer side can tell a hung worker from an idle one.
    pub fn beat(&self) {
        self.view.header().flags.0.3.fetch_add(1, Ordering::Relaxed);
    }

    /// The ring's identity and heartbeat.
    pub fn identity(&self) -> RingIdentity {
        self.view.identity()
    }

    /// Clears the sleeping flag set by [`Consumer::begin_sleep`].
    pub fn end_sleep(&self) {
        self.view
            .header()
            .consumer_sleeping()
            .store(0, Ordering::SeqCst);
    }

    /// A gauge of this ring's fill level.
    pub fn gauge(&self) -> RingGauge {
        RingGauge::of(&self.view)
    }

    /// The doorbell a sleeping consumer waits on.
    pub fn data_bell(&self) -> BorrowedFd<'_> {
        self.view.bells.data.as_fd()
    }

    /// Bytes written but not yet read.
    pub fn occupancy(&self) -> u64 {
        self.view
            .header()
            .head
            .0
            .load(Ordering::Acquire)
            .wrapping_sub(self.tail)
            .min(self.view.capacity)
    }

    /// Reads the next frame, waiting up to `timeout`. `peer` (a pidfd) ends
    /// the wait early with [`RingError::PeerGone`] once the ring is drained.
    pub fn recv(
        &mut self,
        payload: &mut Vec<u8>,
        timeout: Duration,
        peer: Option<BorrowedFd<'_>>,
    ) -> Result<FrameHeader, RingError> {
        self.recv_with(timeout, peer, |_, bytes| {
            payload.clear();
            payload.extend_from_slice(bytes);
        })
        .map(|(h, ())| h)
    }

    /// [`Consumer::recv`] that hands the payload to `f` in place, as
    /// [`Consumer::try_recv_with`] does.
    pub fn recv_with<R>(
        &mut self,
        timeout: Duration,
        peer: Option<BorrowedFd<'_>>,
        f: impl FnOnce(&FrameHeader, &[u8]) -> R,
    ) -> Result<(FrameHeader, R), RingError> {
        let deadline = Instant::now() + timeout;
        let spin_until = Instant::now() + SPIN_FOR;
        let mut spins = 0u32;
        let mut peer_gone = false;
        loop {
            if let Some(record) = self.next_record()? {
                return Ok(self.consume(record, f));
            }
            if peer_gone {
                return Err(RingError::PeerGone);
            }
            spins = spins.wrapping_add(1);
            if !spins.is_multiple_of(64) {
                std::hint::spin_loop();
                continue;
            }
            if Instant::now() < spin_until {
                // Yielding lets a peer woken onto this CPU run at once.
                std::thread::yield_now();
                continue;
            }
            let now = Instant::now();
            if now >= deadline {
                return Err(RingError::Timeout);
            }
            let h = self.view.header();
            h.consumer_sleeping().store(1, Ordering::SeqCst);
            fence(Ordering::SeqCst);
            let empty = h.head.0.load(Ordering::Acquire) == self.tail;
            let result = if empty {
                sleep_on(
                    self.view.bells.data.as_fd(),
                    peer,
                    (deadline - now).min(Duration::from_millis(100)),
                )
            } else {
                Ok(())
            };
            h.consumer_sleeping().store(0, Ordering::SeqCst);
            match result {
                // The peer may have written its last frames just before
                // dying: look once more before reporting it gone.
                Err(RingError::PeerGone) => peer_gone = true,
                other => other?,
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::shm::SharedRegion;

    fn pair(capacity: usize) -> (Producer, Consumer) {
        let at = RingPlacement {
            offset: 0,
            capacity,
        };
        let region = Arc::new(SharedRegion::create("ce-ring-test", at.footprint()).unwrap());
        let (bells, other) = Doorbells::pair().unwrap();
        let p = Producer::create(region.clone(), at, bells).unwrap();
        let c = Consumer::attach(region, at, other).unwrap();
        (p, c)
    }

    fn meta(id: u64) -> FrameMeta {
        FrameMeta {
            kind: 1,
            id,
            count: 0,
            work_us: 0,
        }
    }

    #[test]
    fn frames_round_trip_across_wraps() {
        let (mut p, mut c) = pair(4096);
        let mut buf = Vec::new();
        let payload = |i: u64| -> Vec<u8> {
            (0..(i % 700) as usize)
                .map(|j| (j as u64 ^ i) as u8)
                .collect()
        };
        // One frame always in flight, so the ring is never empty and the
        // writes run through the end of the data area and wrap.
        assert!(p.try_send(meta(0), &payload(0)).unwrap());
        let mut wraps = 0;
        for i in 1..10_000u64 {
            let before = p.head % 4096;
            assert!(p.try_send(meta(i), &payload(i)).unwrap());
            wraps += (p.head % 4096 < before) as usize;
            let h = c.try_recv(&mut buf).unwrap().unwrap();
            assert_eq!(h.id, i - 1);
            assert_eq!(buf, payload(i - 1));
        }
        assert!(wraps > 100, "only {wraps} wraps");
        assert_eq!(c.try_recv(&mut buf).unwrap().unwrap().id, 9_999);
        assert!(c.try_recv(&mut buf).unwrap().is_none());
    }

    #[test]
    fn an_emptied_ring_starts_over_at_the_front() {
        let (mut p, mut c) = pair(1 << 16);
        let mut buf = Vec::new();
        let mut furthest = 0;
        for i in 0..1000u64 {
            let payload = vec![i as u8; (i as usize * 37) % 900];
            assert!(p.try_send(meta(i), &payload).unwrap());
            furthest = furthest.max(p.head % (1 << 16));
            assert_eq!(c.try_recv(&mut buf).unwrap().unwrap().id, i);
            assert_eq!(buf, payload);
        }
        // Only the first pages are ever touched: the largest record is 928
        // bytes, and an empty ring puts the next one at offset 0 when it fits.
        assert!(furthest < 2 * 928, "wrote up to offset {furthest}");
    }

    #[test]
    fn full_ring_refuses_then_accepts() {
        let (mut p, mut c) = pair(4096);
        let payload = vec![7u8; 1000];
        let mut sent = 0;
        while p.try_send(meta(sent), &payload).unwrap() {
            sent += 1;
        }
        // Records are 24 + 1000 = 1024 bytes: exactly four fill 4 KiB.
        assert_eq!(sent, 4);
        let mut buf = Vec::new();
        assert!(c.try_recv(&mut buf).unwrap().is_some());
        assert!(p.try_send(meta(99), &payload).unwrap());
        assert!(matches!(
            p.try_send(meta(0), &vec![0; 4096]),
            Err(RingError::FrameTooLarge { .. })
        ));
        assert_eq!(
            p.send(meta(1), &payload, Duration::from_millis(20), None),
            Err(RingError::Timeout)
        );
    }

    #[test]
    fn blocking_threads_pass_a_million_frames() {
        let (mut p, mut c) = pair(1 << 16);
        let n = 1_000_000u64;
        let producer = std::thread::spawn(move || {
            for i in 0..n {
                let len = (i * 7919 % 300) as usize;
                let payload = vec![(i % 251) as u8; len];
                p.send(meta(i), &payload, Duration::from_secs(10), None)
                    .unwrap();
            }
        });
        let mut buf = Vec::new();
        for i in 0..n {
            let h = c.recv(&mut buf, Duration::from_secs(10), None).unwrap();
            assert_eq!(h.id, i);
            assert_eq!(buf.len(), (i * 7919 % 300) as usize);
            assert!(buf.iter().all(|&b| b == (i % 251) as u8));
        }
        producer.join().unwrap();
    }

    #[test]
    fn corrupt_indices_and_headers_are_errors() {
        let (mut p, mut c) = pair(4096);
        let mut buf = Vec::new();
        p.try_send(meta(1), b"hello").unwrap();
        // A peer scribbling a huge length into the frame header.
        // SAFETY: test-only poke at offset 0 of the data area.
        unsafe { c.view.data.cast::<u32>().write_volatile(1 << 30) };
        assert!(matches!(c.try_recv(&mut buf), Err(RingError::Corrupt(_))));
        // A head index far beyond the tail.
        c.view.header().head.0.store(1 << 40, Ordering::SeqCst);
        assert!(matches!(c.try_recv(&mut buf), Err(RingError::Corrupt(_))));
        // A tail index beyond the head.
        p.view.header().tail.0.store(1 << 40, Ordering::SeqCst);
        assert!(matches!(
            p.try_send(meta(2), b"x"),
            Err(RingError::Corrupt(_))
        ));
    }

    #[test]
    fn attach_checks_magic_version_and_placement() {
        let at = RingPlacement {
            offset: 0,
            capacity: 4096,
        };
        let region = Arc::new(SharedRegion::create("ce-ring-test", at.footprint()).unwrap());
        let bells = || Doorbells::pair().unwrap().0;
        assert!(matches!(
            Consumer::attach(region.clone(), at, bells()),
            Err(RingError::Corrupt(_))
        ));
        let _p = Producer::create(region.clone(), at, bells()).unwrap();
        let wrong = RingPlacement {
            offset: 0,
            capacity: 8192,
        };
        assert!(Consumer::attach(region.clone(), wrong, bells()).is_err());
        let odd = RingPlacement {
            offset: 0,
            capacity: 5000,
        };
        assert!(Consumer::attach(region, odd, bells()).is_err());
    }
}
