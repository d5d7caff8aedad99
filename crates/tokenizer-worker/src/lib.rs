//! Tokenization of (query, passage) pairs, exactly as Hugging Face
//! `transformers` does it for a cross-encoder.
//!
//! * [`PairTokenizer`] — loads a `tokenizer.json`, replaces whatever
//!   truncation and padding it carries with longest-first truncation to the
//!   model's limit and no padding, and encodes pairs straight into a packed
//!   [`TokenBatch`](ce_common::TokenBatch).
//!
//! * [`job`] — one text job in, one packed batch (or a precise error) out.
//! * [`process`] — the worker process's main loop.
//!
//! The tokenizer worker process (`ce-tokenizer-worker`, see docs/ARCHITECTURE.md) wraps
//! this library; the supervisor uses it directly when run with `--tokenizers 0`.
#![deny(unsafe_op_in_unsafe_fn)]
#![warn(missing_docs)]

mod fast;
pub mod job;
mod pair;
pub mod process;

pub use pair::{PairTokenizer, TokenizeError, Truncation, WindowPair};
