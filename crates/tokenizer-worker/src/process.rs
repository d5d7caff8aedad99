//! The tokenizer worker process's main loop (`ce-tokenizer-worker`, built
//! with the supervisor package so the three executables sit side by side).

use std::path::Path;

use ce_common::control::Role;
use ce_common::worker::{Reply, WorkerError, WorkerSession};

use crate::job::tokenize_job;
use crate::{PairTokenizer, TokenizeError};

/// Why the worker stopped with an error.
#[derive(Debug, thiserror::Error)]
pub enum ProcessError {
    /// Link, control channel or ring.
    #[error(transparent)]
    Session(#[from] WorkerError),
    /// The tokenizer could not be loaded.
    #[error(transparent)]
    Tokenizer(#[from] TokenizeError),
}

/// Environment variable that makes a tokenizer worker abort on any job
/// whose query or documents contain this text: the crash-isolation tests'
/// poison input. Only tests set it; unset (always, in production) it costs
/// nothing.
pub const FAULT_ABORT_TEXT_ENV: &str = "CE_FAULT_ABORT_TEXT";

fn fault_injection_text() -> Option<String> {
    let marker = std::env::var(FAULT_ABORT_TEXT_ENV)
        .ok()
        .filter(|m| !m.is_empty())?;
    tracing::warn!(
        marker,
        "fault injection on: aborting on jobs holding this text"
    );
    Some(marker)
}

/// Connects to the supervisor that started this process and serves text
/// jobs until told to stop.
///
/// # Safety
/// Fds 3–8 must be what the supervisor placed for this process, owned by
/// nothing else; call once, first thing in `main`.
pub unsafe fn run() -> Result<(), ProcessError> {
    // SAFETY: forwarded from the caller.
    let session = unsafe { WorkerSession::connect(Role::Tokenizer)? };
    let config = session.config().clone();
    let threads = config.threads.max(1).to_string();
    // SAFETY: `connect` ran on this thread alone; no other thread exists yet.
    unsafe {
        // The tokenizers library may parallelise on its own: hold it to our share.
        std::env::set_var("RAYON_NUM_THREADS", &threads);
        std::env::set_var("TOKENIZERS_PARALLELISM", "false");
    }
    // `model` is the tokenizer.json the supervisor resolved for us.
    let tokenizer =
        match PairTokenizer::from_file(Path::new(&config.model), config.max_length as usize) {
            Ok(t) => t,
            Err(e) => {
                session.refuse(&e.to_string());
                return Err(e.into());
            }
        };
    tracing::info!(worker = session.replica(), tokenizer = %config.model, "tokenizer loaded");
    let poison = fault_injection_text();
    session.serve(|_, payload, out| {
        if let Some(marker) = &poison
            && let Ok(job) = ce_common::frame::TextJob::decode(payload)
            && (job.query.contains(marker.as_str())
                || job.passages.iter().any(|p| p.contains(marker.as_str())))
        {
            // Test-only crash on a marker input (see `fault_injection_text`).
            std::process::abort();
        }
        let reply = tokenize_job(&tokenizer, payload, out);
        Reply {
            kind: reply.kind,
            count: reply.pairs,
            pairs: reply.pairs as u64,
        }
    })?;
    Ok(())
}
