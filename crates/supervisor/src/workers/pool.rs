//! One pool per worker role. It owns the slots and everything about them:
//! which process serves each slot (membership, published lock-free for the
//! dispatch path and as a generation on a `watch` for those who wait),
//! starting and restarting workers with back-off, and the work in flight
//! on each (leases: the one count of it).
//!
//! Dispatch takes a [`Lease`] on a slot — shared with other work (up to a
//! limit) or alone (see [`super::isolation`]) — and holds it until the
//! worker answers; dropping it frees the slot and wakes whoever waits.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use arc_swap::ArcSwap;
use ce_common::control::Role;
use ce_common::spawn::Spawner;
use futures_util::future::join_all;
use tokio::sync::{Notify, watch};

use super::client::Client;
use super::process::{StartFailure, WorkerProcess, WorkerSpec};
use crate::metrics::{Metrics, RoleLabels};

/// How a lease shares its worker.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Share {
    /// With other shared leases, at most this many on one worker.
    Shared(usize),
    /// With nothing: the worker holds this work alone.
    Alone,
}

/// A worker that died is restarted after this wait, doubled after every
/// failed start up to [`MAX_BACKOFF`].
const FIRST_BACKOFF: Duration = Duration::from_millis(100);
/// The longest wait between two failed starts.
const MAX_BACKOFF: Duration = Duration::from_secs(30);

/// A slot's load word: the number of leases, plus two flags.
struct Load(AtomicUsize);

/// Set while one lease holds the slot alone.
const ALONE: usize = 1 << (usize::BITS - 1);
/// Set while an alone lease waits for the slot's shared leases to end:
/// no new shared lease starts there meanwhile, so the wait ends.
const RESERVED: usize = 1 << (usize::BITS - 2);
const COUNT: usize = !(ALONE | RESERVED);

impl Load {
    fn leases(&self) -> usize {
        let v = self.0.load(Ordering::Acquire);
        (v & COUNT) + usize::from(v & ALONE != 0)
    }

    fn try_share(&self, limit: usize) -> bool {
        self.0
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |v| {
                (v & (ALONE | RESERVED) == 0 && v < limit).then_some(v + 1)
            })
            .is_ok()
    }

    fn try_alone(&self, reserved_by_us: bool) -> bool {
        let free = if reserved_by_us { RESERVED } else { 0 };
        self.0
            .compare_exchange(free, ALONE, Ordering::AcqRel, Ordering::Acquire)
            .is_ok()
    }

    fn try_reserve(&self) -> bool {
        self.0
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |v| {
                (v & (ALONE | RESERVED) == 0).then_some(v | RESERVED)
            })
            .is_ok()
    }

    fn unreserve(&self) {
        self.0.fetch_and(!RESERVED, Ordering::AcqRel);
    }

    fn release(&self, alone: bool) {
        if alone {
            self.0.fetch_and(!ALONE, Ordering::AcqRel);
        } else {
            self.0.fetch_sub(1, Ordering::AcqRel);
        }
    }
}

struct Shared<C> {
    role: Role,
    loads: Box<[Load]>,
    /// The client of every slot, serving or not.
    members: ArcSwap<Vec<C>>,
    /// Bumped whenever a slot gets a new process.
    generation: watch::Sender<u64>,
    /// A lease ended or membership changed.
    freed: Notify,
}

/// The workers of one role.
pub struct WorkerPool<C> {
    shared: Arc<Shared<C>>,
}

impl<C> Clone for WorkerPool<C> {
    fn clone(&self) -> Self {
        Self {
            shared: self.shared.clone(),
        }
    }
}

impl<C: Client> std::fmt::Debug for WorkerPool<C> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WorkerPool")
            .field("role", &self.shared.role)
            .field("slots", &self.shared.loads.len())
            .field("serving", &self.serving())
            .finish()
    }
}

/// A slot taken for one piece of work, released when dropped.
pub struct Lease<C> {
    shared: Arc<Shared<C>>,
    slot: usize,
    alone: bool,
    leases_before: usize,
    client: C,
}

impl<C> Lease<C> {
    /// The worker to send the work to.
    pub fn client(&self) -> &C {
        &self.client
    }

    /// Whether this lease holds its worker alone.
    pub fn is_alone(&self) -> bool {
        self.alone
    }

    /// Whether the worker held no other work when the lease was taken.
    pub fn found_idle(&self) -> bool {
        self.leases_before == 0
    }
}

impl<C> Drop for Lease<C> {
    fn drop(&mut self) {
        self.shared.loads[self.slot].release(self.alone);
        self.shared.freed.notify_waiters();
    }
}

/// What the pool needs to start and restart its workers.
pub struct Starter<C: Client> {
    /// Spawns processes.
    pub spawner: Spawner,
    /// Restart counts go here.
    pub metrics: Arc<Metrics>,
    /// What a new worker must answer before it serves.
    pub warm_up: C::WarmUp,
    /// How long the warm-up may take.
    pub warm_up_deadline: Duration,
    /// Once true, dead workers stay dead.
    pub stop: watch::Receiver<bool>,
    /// Failed starts in a row after which a slot gives up (and says why).
    pub max_attempts: u32,
}

impl<C: Client> WorkerPool<C> {
    /// A pool of `slots` slots, none serving yet: [`WorkerPool::start`]
    /// starts their workers. Front ends can already look at it.
    pub fn new(role: Role, slots: usize) -> Self {
        let members = (0..slots)
            .map(|slot| C::new(WorkerProcess::not_started(role, slot as u32)))
            .collect();
        Self {
            shared: Arc::new(Shared {
                role,
                loads: (0..slots).map(|_| Load(AtomicUsize::new(0))).collect(),
                members: ArcSwap::from_pointee(members),
                generation: watch::Sender::new(0),
                freed: Notify::new(),
            }),
        }
    }

    /// Starts one worker per slot (`specs[slot]`), in parallel, and a keeper
    /// per slot that replaces its worker whenever it dies. A worker that
    /// fails to start leaves its slot dead, with the reason, for the keeper
    /// to retry. Returns once every first start has succeeded or failed.
    pub async fn start(&self, specs: Vec<WorkerSpec>, starter: Starter<C>) {
        let starter = Arc::new(starter);
        let started = join_all(specs.iter().map(|s| start_one(s, &starter))).await;
        for (slot, client) in started.into_iter().enumerate() {
            self.replace(slot, client);
        }
        for (slot, spec) in specs.into_iter().enumerate() {
            tokio::spawn(self.clone().keep(slot, spec, starter.clone()));
        }
    }

    /// The client of every slot, serving or not.
    pub fn members(&self) -> Arc<Vec<C>> {
        self.shared.members.load_full()
    }

    /// Slots whose worker serves.
    pub fn serving(&self) -> usize {
        self.shared
            .members
            .load()
            .iter()
            .filter(|c| c.process().is_alive())
            .count()
    }

    /// Slots among `slots` whose worker serves.
    pub fn serving_in(&self, slots: &[usize]) -> usize {
        let members = self.shared.members.load();
        slots
            .iter()
            .filter(|&&s| members.get(s).is_some_and(|c| c.process().is_alive()))
            .count()
    }

    /// Work in flight, over every slot.
    pub fn in_flight(&self) -> usize {
        self.shared.loads.iter().map(Load::leases).sum()
    }

    /// Changes whenever a slot gets a new process (a restart).
    pub fn generation(&self) -> watch::Receiver<u64> {
        self.shared.generation.subscribe()
    }

    /// A lease on the serving worker with the least work that `share`
    /// allows, if there is one now. Never waits, never locks.
    pub fn try_lease(&self, share: Share) -> Option<Lease<C>> {
        self.try_lease_in(share, None)
    }

    /// As [`try_lease`](Self::try_lease), among `slots` only (all: `None`):
    /// how the replicas of one model are leased for its batches.
    pub fn try_lease_in(&self, share: Share, slots: Option<&[usize]>) -> Option<Lease<C>> {
        let members = self.shared.members.load();
        for slot in self.serving_by_load(&members, slots) {
            let load = &self.shared.loads[slot];
            let before = load.leases();
            let taken = match share {
                Share::Shared(limit) => load.try_share(limit),
                Share::Alone => load.try_alone(false),
            };
            if taken {
                return Some(self.lease(slot, share == Share::Alone, before, &members));
            }
        }
        None
    }

    /// Waits for a lease: a shared one as soon as a worker has room, an
    /// alone one by reserving the least loaded worker and waiting for its
    /// other work to end. Gives up once no worker has served for `patience`.
    pub async fn wait_lease(&self, share: Share, patience: Duration) -> Option<Lease<C>> {
        let mut reserved: Option<usize> = None;
        let mut without_workers = Duration::ZERO;
        const LOOK_AGAIN: Duration = Duration::from_millis(50);
        loop {
            let freed = self.shared.freed.notified();
            if let Some(slot) = reserved {
                let members = self.shared.members.load();
                if !members[slot].process().is_alive() {
                    self.shared.loads[slot].unreserve();
                    reserved = None;
                    continue;
                }
                if self.shared.loads[slot].try_alone(true) {
                    return Some(self.lease(slot, true, 0, &members));
                }
            } else if let Some(lease) = self.try_lease(share) {
                return Some(lease);
            } else if share == Share::Alone {
                reserved = self.reserve_least_loaded();
                if reserved.is_some() {
                    continue;
                }
            }
            if self.serving() == 0 {
                if without_workers >= patience {
                    return None;
                }
                without_workers += LOOK_AGAIN;
            } else {
                without_workers = Duration::ZERO;
            }
            // Woken by a lease's end or a restart; the timeout also covers
            // a death (which frees nothing).
            let _ = tokio::time::timeout(LOOK_AGAIN, freed).await;
        }
    }

    fn reserve_least_loaded(&self) -> Option<usize> {
        let members = self.shared.members.load();
        self.serving_by_load(&members, None)
            .into_iter()
            .find(|&s| self.shared.loads[s].try_reserve())
    }

    /// The slots (of `among`, or all) whose worker serves, least work in
    /// flight first.
    fn serving_by_load(&self, members: &[C], among: Option<&[usize]>) -> Vec<usize> {
        let every: Vec<usize>;
        let candidates = match among {
            Some(slots) => slots,
            None => {
                every = (0..members.len()).collect();
                &every
            }
        };
        let mut slots: Vec<usize> = candidates
            .iter()
            .copied()
            .filter(|&s| members.get(s).is_some_and(|m| m.process().is_alive()))
            .collect();
        slots.sort_by_key(|&s| self.shared.loads[s].leases());
        slots
    }

    fn lease(&self, slot: usize, alone: bool, before: usize, members: &[C]) -> Lease<C> {
        Lease {
            shared: self.shared.clone(),
            slot,
            alone,
            leases_before: before,
            client: members[slot].clone(),
        }
    }

    fn replace(&self, slot: usize, client: C) {
        let mut members = Vec::clone(&self.shared.members.load());
        if let Some(s) = members.get_mut(slot) {
            *s = client;
        }
        self.shared.members.store(Arc::new(members));
        self.shared.generation.send_modify(|g| *g += 1);
        self.shared.freed.notify_waiters();
    }

    /// Watches `slot`; when its worker dies, starts a new one with
    /// exponential back-off until one is ready — or, after
    /// `max_attempts` failed starts in a row, leaves the slot dead with
    /// "<role> N cannot load: <reason>" for `/info` and the log.
    async fn keep(self, slot: usize, spec: WorkerSpec, starter: Arc<Starter<C>>) {
        let role = format!("{:?}", spec.role).to_lowercase();
        let mut stop = starter.stop.clone();
        let mut failures = 0u32;
        loop {
            let Some(current) = self.members().get(slot).cloned() else {
                return;
            };
            if let Some(reason) = current.process().start_error() {
                failures += 1;
                let hopeless = current.process().start_is_hopeless();
                if hopeless || failures >= starter.max_attempts {
                    let name = match spec.role {
                        Role::Model => "replica",
                        _ => role.as_str(),
                    };
                    let gave_up = match hopeless {
                        true => format!("{name} {slot} cannot start: {reason} (not retried)"),
                        false => format!(
                            "{name} {slot} cannot load: {reason} (gave up after {failures} failed starts in a row)"
                        ),
                    };
                    tracing::error!(role, slot, "{gave_up}");
                    let failure = StartFailure {
                        reason: gave_up,
                        permanent: hopeless,
                    };
                    self.replace(
                        slot,
                        C::new(WorkerProcess::failed(spec.role, slot as u32, failure)),
                    );
                    return;
                }
            } else {
                failures = 0;
            }
            tokio::select! {
                _ = current.process().died() => {}
                _ = stop.wait_for(|s| *s) => return,
            }
            // No process outlives its slot: the dead one (killed when it was
            // given up on) is reaped before a new one starts.
            tokio::select! {
                _ = current.process().exited() => {}
                _ = stop.wait_for(|s| *s) => return,
            }
            let backoff = FIRST_BACKOFF
                .saturating_mul(1 << failures.min(16))
                .min(MAX_BACKOFF);
            tokio::select! {
                _ = tokio::time::sleep(backoff) => {}
                _ = stop.wait_for(|s| *s) => return,
            }
            let client = start_one(&spec, &starter).await;
            if *stop.borrow() {
                client.process().shutdown(Duration::ZERO);
                return;
            }
            if client.process().is_alive() {
                tracing::warn!(
                    role,
                    slot,
                    pid = client.process().pid(),
                    "worker replaced after it died"
                );
                starter
                    .metrics
                    .worker_restarts
                    .get_or_create(&RoleLabels { role: role.clone() })
                    .inc();
            } else {
                tracing::error!(role, slot, ?backoff, "restarting a worker failed; retrying");
                starter
                    .metrics
                    .worker_start_failures
                    .get_or_create(&RoleLabels { role: role.clone() })
                    .inc();
            }
            self.replace(slot, client);
        }
    }
}

/// Starts a worker and warms it up; on failure, a dead client that carries
/// the reason.
async fn start_one<C: Client>(spec: &WorkerSpec, starter: &Starter<C>) -> C {
    let started = WorkerProcess::start(spec.clone(), &starter.spawner)
        .await
        .map_err(|e| StartFailure::from(&e));
    let ready = match started {
        Ok(process) => {
            let client = C::new(process);
            match client
                .warm_up(&starter.warm_up, starter.warm_up_deadline)
                .await
            {
                Ok(()) => Ok(client),
                Err(e) => {
                    client.process().kill("it failed its warm-up");
                    Err(StartFailure {
                        reason: format!("slot {} failed its warm-up: {e}", spec.slot),
                        permanent: false,
                    })
                }
            }
        }
        Err(e) => Err(e),
    };
    ready.unwrap_or_else(|failure| {
        // A hopeless one is said once, by its keeper, as it gives up.
        if !failure.permanent {
            tracing::error!(role = ?spec.role, slot = spec.slot, "worker failed to start: {}", failure.reason);
        }
        C::new(WorkerProcess::failed(spec.role, spec.slot, failure))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn load() -> Load {
        Load(AtomicUsize::new(0))
    }

    #[test]
    fn shared_leases_stop_at_the_limit_and_free_on_release() {
        let l = load();
        assert!(l.try_share(2) && l.try_share(2));
        assert!(!l.try_share(2), "a third batch on a replica that takes two");
        assert_eq!(l.leases(), 2);
        l.release(false);
        assert!(l.try_share(2));
        assert_eq!(l.leases(), 2);
    }

    #[test]
    fn an_alone_lease_excludes_everything_else() {
        let l = load();
        assert!(l.try_share(usize::MAX));
        assert!(!l.try_alone(false), "alone needs an idle worker");
        l.release(false);
        assert!(l.try_alone(false));
        assert_eq!(l.leases(), 1);
        assert!(!l.try_share(usize::MAX) && !l.try_alone(false));
        l.release(true);
        assert_eq!(l.leases(), 0);
        assert!(l.try_share(usize::MAX));
    }

    #[test]
    fn a_reservation_drains_the_worker_for_the_alone_lease() {
        let l = load();
        assert!(l.try_share(usize::MAX));
        assert!(l.try_reserve());
        assert!(!l.try_reserve(), "one reservation at a time");
        assert!(
            !l.try_share(usize::MAX),
            "no new shared work while reserved"
        );
        assert!(!l.try_alone(true), "the shared lease is still there");
        l.release(false);
        assert!(l.try_alone(true));
        assert!(!l.try_share(usize::MAX));
        l.release(true);
        assert!(l.try_share(usize::MAX), "the slot is free again");
        // A reservation given up (its worker died) frees the slot too.
        l.release(false);
        assert!(l.try_reserve());
        l.unreserve();
        assert!(l.try_share(usize::MAX));
    }

    #[test]
    fn concurrent_shared_leases_never_pass_the_limit() {
        let l = Arc::new(load());
        let peak = Arc::new(AtomicUsize::new(0));
        let threads: Vec<_> = (0..4)
            .map(|_| {
                let (l, peak) = (l.clone(), peak.clone());
                std::thread::spawn(move || {
                    for _ in 0..10_000 {
                        if l.try_share(3) {
                            peak.fetch_max(l.leases(), Ordering::AcqRel);
                            l.release(false);
                        }
                    }
                })
            })
            .collect();
        for t in threads {
            t.join().unwrap();
        }
        assert!(peak.load(Ordering::Acquire) <= 3);
        assert_eq!(l.leases(), 0);
    }
}
