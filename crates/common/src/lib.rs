//! Types shared by every ce-supervisor process.
//!
//! * [`batch`] — the packed token batch: the one tensor layout that travels
//!   from the tokenizer to the model engine (flat ids, flat type ids, per-pair
//!   offsets; no padding), with the validation every consumer runs before
//!   trusting it.
//! * [`ipc`] — which OS primitives carry all of this: Linux's (memfd,
//!   eventfd, pidfd) or the portable ones (POSIX shm, socket pairs, pipes).
//! * [`shm`] — anonymous shared memory (a sealed `memfd`, or POSIX shm) + `mmap`.
//! * [`ring`] — the single-producer single-consumer byte ring in that memory,
//!   with doorbells (eventfds or socket pairs) and untrusted-peer checks.
//! * [`ring_async`] — the tokio ends of a ring (`AsyncFd` on the doorbells).
//! * [`ring_check`] — checksummed frame streams for cross-process tests.
//! * [`link`] — a worker's region with its two rings, and its fds for the child.
//! * [`control`] — the postcard control channel (handshake, config,
//!   heartbeats, metrics, shutdown).
//! * [`spawn`] — starting workers that die with the supervisor, and a
//!   pollable "it exited" fd for each (a pidfd, or a lifeline pipe).
//! * [`frame`] — the frames the rings carry: a fixed header and typed
//!   payloads (text jobs, token batches, scores, errors).
//! * [`worker`] — the worker side of it all: attach, handshake, serve.
//! * [`procstat`] — a process's CPU time and memory from `/proc`.
#![deny(unsafe_op_in_unsafe_fn)]
#![warn(missing_docs)]

pub mod batch;
pub mod control;
pub mod frame;
pub mod ipc;
pub mod link;
pub mod procstat;
pub mod ring;
pub mod ring_async;
pub mod ring_check;
pub mod shm;
pub mod spawn;
pub mod worker;

pub use batch::{BatchError, TokenBatch};
