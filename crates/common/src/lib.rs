//! Types shared by every ce-supervisor process.
//!
//! * [`batch`] — the packed token batch: the one tensor layout that travels
//!   from the tokenizer to the model engine (flat ids, flat type ids, per-pair
//!   offsets; no padding), with the validation every consumer runs before
//!   trusting it.
//! * [`shm`] — sealed anonymous shared memory (`memfd` + `mmap`).
//! * [`ring`] — the single-producer single-consumer byte ring in that memory,
//!   with eventfd doorbells and untrusted-peer checks.
//! * [`frame`] — the frames the rings carry: a fixed header and typed
//!   payloads (text jobs, token batches, scores, errors).
#![deny(unsafe_op_in_unsafe_fn)]
#![warn(missing_docs)]

pub mod batch;
pub mod frame;
pub mod ring;
pub mod shm;

pub use batch::{BatchError, TokenBatch};
