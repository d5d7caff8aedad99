//! A worker's data plane: one sealed region holding its two rings
//! (supervisor → worker and worker → supervisor) and their four doorbells,
//! and how those five fds reach the child.
//!
//! ```text
//! region: [ to_worker ring | pad to 64 | from_worker ring ]
//! child fds: 3 region, 4/5 to_worker data/space, 6/7 from_worker data/space
//! env CE_LINK = "<to_worker capacity>,<from_worker capacity>"
//! ```

use std::os::fd::{FromRawFd, OwnedFd, RawFd};
use std::sync::Arc;

use crate::ring::{Consumer, Doorbells, Producer, RingError, RingPlacement};
use crate::shm::{SharedRegion, ShmError};

/// First fd number a child receives its link on.
pub const CHILD_LINK_FD_BASE: RawFd = 3;
/// Number of fds of a link.
pub const LINK_FDS: usize = 5;
/// Environment variable carrying the ring capacities to the child.
pub const LINK_ENV: &str = "CE_LINK";

/// Why a link could not be made or attached.
#[derive(Debug, thiserror::Error)]
pub enum LinkError {
    /// Shared memory failed.
    #[error(transparent)]
    Shm(#[from] ShmError),
    /// A ring failed.
    #[error(transparent)]
    Ring(#[from] RingError),
    /// The child's environment does not describe a link.
    #[error("no usable link in the environment: {0}")]
    Environment(String),
}

/// Ring sizes of one link.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LinkConfig {
    /// Capacity of the supervisor → worker ring (power of two).
    pub to_worker: usize,
    /// Capacity of the worker → supervisor ring (power of two).
    pub from_worker: usize,
}

impl Default for LinkConfig {
    fn default() -> Self {
        Self {
            to_worker: 4 << 20,
            from_worker: 4 << 20,
        }
    }
}

/// The largest ring a link is made with (each direction): 1 GiB.
pub const MAX_RING_CAPACITY: usize = 1 << 30;

impl LinkConfig {
    /// The smallest link (no smaller than the default) whose rings carry
    /// frames of up to `to_worker` and `from_worker` payload bytes; `None`
    /// if that needs a ring over [`MAX_RING_CAPACITY`].
    pub fn carrying(to_worker: usize, from_worker: usize) -> Option<Self> {
        let ring = |payload: usize, floor: usize| {
            // A frame may take at most half a ring (see `max_payload`).
            let capacity = payload
                .checked_add(crate::frame::FRAME_HEADER_LEN)?
                .checked_mul(2)?
                .checked_next_power_of_two()?
                .max(floor);
            (capacity <= MAX_RING_CAPACITY).then_some(capacity)
        };
        let floor = Self::default();
        Some(Self {
            to_worker: ring(to_worker, floor.to_worker)?,
            from_worker: ring(from_worker, floor.from_worker)?,
        })
    }

    /// Largest payload of a frame to the worker.
    pub fn max_to_worker_payload(&self) -> usize {
        self.to_worker / 2 - crate::frame::FRAME_HEADER_LEN
    }

    /// Largest payload of a frame from the worker.
    pub fn max_from_worker_payload(&self) -> usize {
        self.from_worker / 2 - crate::frame::FRAME_HEADER_LEN
    }

    fn placements(&self) -> (RingPlacement, RingPlacement) {
        let a = RingPlacement {
            offset: 0,
            capacity: self.to_worker,
        };
        let b = RingPlacement {
            offset: a.footprint().div_ceil(64) * 64,
            capacity: self.from_worker,
        };
        (a, b)
    }

    fn region_len(&self) -> usize {
        let (_, b) = self.placements();
        b.offset + b.footprint()
    }

    /// The `CE_LINK` value describing this config.
    pub fn to_env(&self) -> String {
        format!("{},{}", self.to_worker, self.from_worker)
    }

    /// Parses a `CE_LINK` value.
    pub fn from_env(value: &str) -> Result<Self, LinkError> {
        let bad = || LinkError::Environment(format!("{LINK_ENV}={value:?} is not two capacities"));
        let (a, b) = value.split_once(',').ok_or_else(bad)?;
        Ok(Self {
            to_worker: a.trim().parse().map_err(|_| bad())?,
            from_worker: b.trim().parse().map_err(|_| bad())?,
        })
    }
}

/// The supervisor's end of a link.
#[derive(Debug)]
pub struct SupervisorLink {
    /// Jobs and batches to the worker.
    pub to_worker: Producer,
    /// Results from the worker.
    pub from_worker: Consumer,
}

/// The worker's end of a link.
#[derive(Debug)]
pub struct WorkerLink {
    /// Jobs and batches from the supervisor.
    pub to_worker: Consumer,
    /// Results to the supervisor.
    pub from_worker: Producer,
}

/// The fds a child needs, in [`CHILD_LINK_FD_BASE`] order.
#[derive(Debug)]
pub struct ChildLinkFds {
    /// Region, to-worker data/space, from-worker data/space.
    pub fds: [OwnedFd; LINK_FDS],
    /// Ring sizes (sent as [`LINK_ENV`]).
    pub config: LinkConfig,
}

/// Creates a fresh link: the supervisor's end and the fds for the child.
pub fn create(config: LinkConfig, name: &str) -> Result<(SupervisorLink, ChildLinkFds), LinkError> {
    let (a, b) = config.placements();
    let region = Arc::new(SharedRegion::create(name, config.region_len())?);
    let (to_bells, child_to) = Doorbells::pair()?;
    let (from_bells, child_from) = Doorbells::pair()?;
    let supervisor = SupervisorLink {
        to_worker: Producer::create(region.clone(), a, to_bells)?,
        from_worker: Consumer::create(region.clone(), b, from_bells)?,
    };
    let fds = [
        region.try_clone_fd()?,
        child_to.data,
        child_to.space,
        child_from.data,
        child_from.space,
    ];
    Ok((supervisor, ChildLinkFds { fds, config }))
}

impl WorkerLink {
    /// Attaches to the link described by fds (in [`CHILD_LINK_FD_BASE`] order).
    pub fn attach(fds: ChildLinkFds) -> Result<Self, LinkError> {
        let [region, to_data, to_space, from_data, from_space] = fds.fds;
        let (a, b) = fds.config.placements();
        let region = Arc::new(SharedRegion::attach(region, fds.config.region_len())?);
        Ok(Self {
            to_worker: Consumer::attach(
                region.clone(),
                a,
                Doorbells {
                    data: to_data,
                    space: to_space,
                },
            )?,
            from_worker: Producer::attach(
                region,
                b,
                Doorbells {
                    data: from_data,
                    space: from_space,
                },
            )?,
        })
    }

    /// Attaches to the link this process inherited (fds 3–7 and `CE_LINK`).
    ///
    /// # Safety
    /// Fds 3–7 must be this process's inherited link and nothing else may
    /// own them; call once.
    pub unsafe fn from_inherited() -> Result<Self, LinkError> {
        let value = std::env::var(LINK_ENV)
            .map_err(|_| LinkError::Environment(format!("{LINK_ENV} is not set")))?;
        let config = LinkConfig::from_env(&value)?;
        // SAFETY: the caller guarantees these fds are ours alone.
        let fds = std::array::from_fn(|i| unsafe {
            OwnedFd::from_raw_fd(CHILD_LINK_FD_BASE + i as RawFd)
        });
        Self::attach(ChildLinkFds { fds, config })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ring::FrameMeta;
    use std::time::Duration;

    #[test]
    fn both_directions_carry_frames() {
        let config = LinkConfig {
            to_worker: 1 << 16,
            from_worker: 1 << 14,
        };
        let (mut sup, child) = create(config, "ce-link-test").unwrap();
        let mut worker = WorkerLink::attach(child).unwrap();
        let meta = FrameMeta {
            kind: 2,
            id: 9,
            count: 1,
            work_us: 0,
        };
        let mut buf = Vec::new();
        sup.to_worker.try_send(meta, b"batch").unwrap();
        assert_eq!(
            worker
                .to_worker
                .recv(&mut buf, Duration::from_secs(1), None)
                .unwrap()
                .id,
            9
        );
        assert_eq!(buf, b"batch");
        worker.from_worker.try_send(meta, b"scores").unwrap();
        sup.from_worker.try_recv(&mut buf).unwrap().unwrap();
        assert_eq!(buf, b"scores");
        // Identity: same generation seen from both ends, heartbeat moves.
        let id = sup.to_worker.identity();
        assert_eq!(id.creator_pid, std::process::id());
        assert_eq!(id.attacher_pid, std::process::id());
        assert!(id.generation > 0);
        worker.to_worker.beat();
        assert_eq!(sup.to_worker.identity().heartbeat, id.heartbeat + 1);
    }

    #[test]
    fn env_round_trips_and_rejects_garbage() {
        let c = LinkConfig::default();
        assert_eq!(LinkConfig::from_env(&c.to_env()).unwrap(), c);
        assert!(LinkConfig::from_env("12").is_err());
        assert!(LinkConfig::from_env("a,b").is_err());
    }
}
