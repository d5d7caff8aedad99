//! `ce-supervisor`: serves a cross-encoder through tokenizer and model worker
//! processes (DESIGN.md §1).
//!
//! Not built yet: the process supervisor, API, batcher and router land with
//! the supervisor issue. Until then `ce-score` (crate `model-worker`) is the
//! way to score pairs, and this binary says so instead of pretending to serve.

fn main() -> anyhow::Result<()> {
    anyhow::bail!(
        "ce-supervisor is not implemented yet; score pairs with `scripts/score.sh` (ce-score) meanwhile"
    )
}
