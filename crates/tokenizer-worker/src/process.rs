//! The tokenizer worker process's main loop (`ce-tokenizer-worker`, built
//! with the supervisor package so the three executables sit side by side).

use ce_common::control::{Role, WorkerJob};
use ce_common::worker::{WorkerError, WorkerSession};

use ce_common::frame::{FrameKind, QueryJob, TextJob};

use crate::job::handle;
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

/// Environment variable that makes a tokenizer worker answer any text job
/// holding this text with one pair too few: the tests' lying worker.
pub const FAULT_SHORT_REPLY_TEXT_ENV: &str = "CE_FAULT_SHORT_REPLY_TEXT";

/// The test-only faults this worker was started with.
#[derive(Debug, Default)]
struct Faults {
    abort_on: Option<String>,
    short_reply_on: Option<String>,
}

impl Faults {
    fn from_env() -> Self {
        let marker = |env: &str| {
            let m = std::env::var(env).ok().filter(|m| !m.is_empty())?;
            tracing::warn!(env, marker = m, "fault injection on");
            Some(m)
        };
        Self {
            abort_on: marker(FAULT_ABORT_TEXT_ENV),
            short_reply_on: marker(FAULT_SHORT_REPLY_TEXT_ENV),
        }
    }

    fn holds(marker: &Option<String>, kind: u16, payload: &[u8]) -> bool {
        let Some(marker) = marker else { return false };
        match FrameKind::from_u16(kind) {
            Some(FrameKind::TextJob) => TextJob::decode(payload)
                .is_ok_and(|j| j.passages.iter().any(|p| p.contains(marker.as_str()))),
            Some(FrameKind::QueryJob) => {
                QueryJob::decode(payload).is_ok_and(|j| j.query.contains(marker.as_str()))
            }
            _ => false,
        }
    }
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
    let WorkerJob::Tokenizer {
        tokenizers: specs,
        threads,
    } = &config.job
    else {
        let why = format!("a tokenizer worker was sent {:?}", config.job.role());
        session.refuse(&why, true);
        return Err(ProcessError::Config(why));
    };
    let threads = (*threads).max(1);
    // SAFETY: `connect` ran on this thread alone; no other thread exists yet.
    unsafe {
        // One thread unless the supervisor asked for more: by default it
        // scales tokenizers by processes, and a library spreading each job
        // over every core would fight the other workers for them.
        std::env::set_var("RAYON_NUM_THREADS", threads.to_string());
        std::env::set_var(
            tokenizers::utils::parallelism::ENV_VARIABLE,
            if threads > 1 { "true" } else { "false" },
        );
    }
    let mut tokenizers = Vec::with_capacity(specs.len());
    for spec in specs {
        let Some(spec) = spec else {
            tokenizers.push(None);
            continue;
        };
        let loaded =
            PairTokenizer::from_file(&spec.file, spec.max_length as usize).and_then(
                |t| match &spec.prompt {
                    Some(prompt) => t.with_prompt(prompt.clone()),
                    None => Ok(t),
                },
            );
        match loaded {
            Ok(t) => tokenizers.push(Some(t)),
            Err(e) => {
                session.refuse(&e.to_string(), false);
                return Err(e.into());
            }
        }
        tracing::info!(worker = session.replica(), threads, tokenizer = %spec.file.display(), "tokenizer loaded");
    }
    let parallel = threads > 1;
    let faults = Faults::from_env();
    session.serve(|header, payload, out| {
        if Faults::holds(&faults.abort_on, header.kind, payload) {
            // Test-only crash on a marker input.
            std::process::abort();
        }
        if Faults::holds(&faults.short_reply_on, header.kind, payload)
            && let Ok(mut job) = TextJob::decode(payload)
        {
            // Test-only lie: one pair fewer than asked.
            job.passages.pop();
            let mut shorter = Vec::new();
            job.encode(&mut shorter);
            return handle(&tokenizers, parallel, header.kind, &shorter, out);
        }
        handle(&tokenizers, parallel, header.kind, payload, out)
    })?;
    Ok(())
}
