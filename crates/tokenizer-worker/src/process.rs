//! The tokenizer worker process's main loop (`ce-tokenizer-worker`, built
//! with the supervisor package so the three executables sit side by side).

use ce_common::control::{Role, WorkerJob};
use ce_common::worker::{WorkerError, WorkerSession};

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
    /// The supervisor's configuration is not a tokenizer's.
    #[error("bad worker configuration: {0}")]
    Config(String),
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
    let WorkerJob::Tokenizer { tokenizer: path } = &config.job else {
        let why = format!("a tokenizer worker was sent {:?}", config.job.role());
        session.refuse(&why);
        return Err(ProcessError::Config(why));
    };
    // SAFETY: `connect` ran on this thread alone; no other thread exists yet.
    unsafe {
        // One job at a time on one thread: the supervisor scales tokenizers
        // by processes, so the library must not parallelise on its own.
        std::env::set_var("RAYON_NUM_THREADS", "1");
        std::env::set_var("TOKENIZERS_PARALLELISM", "false");
    }
    let tokenizer = match PairTokenizer::from_file(path, config.max_length as usize) {
        Ok(t) => t,
        Err(e) => {
            session.refuse(&e.to_string());
            return Err(e.into());
        }
    };
    tracing::info!(worker = session.replica(), tokenizer = %path.display(), "tokenizer loaded");
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
        tokenize_job(&tokenizer, payload, out)
    })?;
    Ok(())
}
