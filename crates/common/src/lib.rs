//! Types shared by every ce-supervisor process.
//!
//! * [`batch`] — the packed token batch: the one tensor layout that travels
//!   from the tokenizer to the model engine (flat ids, flat type ids, per-pair
//!   offsets; no padding), with the validation every consumer runs before
//!   trusting it.
//!
//! The shared-memory rings and control messages of DESIGN.md §3 live here too
//! once they exist, so that the supervisor and every worker agree on one
//! definition of each frame.
#![deny(unsafe_op_in_unsafe_fn)]
#![warn(missing_docs)]

pub mod batch;

pub use batch::{BatchError, TokenBatch};
