//! The model worker process's main loop (`ce-model-worker`, built with the
//! supervisor package so the three executables sit side by side).

use std::time::{Duration, Instant};

use ce_common::control::{Role, WorkerJob};
use ce_common::frame::{self, ERROR_INTERNAL, FrameKind};
use ce_common::worker::{Handled, WorkerError, WorkerSession};

use crate::error::EngineError;
use crate::threads::{self, ThreadConfigError};
use crate::{Engine, EngineConfig};

/// Why the worker stopped with an error.
#[derive(Debug, thiserror::Error)]
pub enum ProcessError {
    /// Link, control channel or ring.
    #[error(transparent)]
    Session(#[from] WorkerError),
    /// The supervisor's configuration is unusable.
    #[error("bad worker configuration: {0}")]
    Config(String),
    /// Threads could not be configured.
    #[error(transparent)]
    Threads(#[from] ThreadConfigError),
    /// The model could not be loaded or warmed up.
    #[error(transparent)]
    Engine(#[from] EngineError),
    /// The worker refused to serve and told the supervisor why, which
    /// reports it (the worker need not say it again).
    #[error("refused: {0}")]
    Refused(String),
}

impl ProcessError {
    /// Whether the supervisor has been told (and reports it itself).
    pub fn was_reported(&self) -> bool {
        matches!(self, ProcessError::Refused(_))
    }
}

/// Environment variable that makes a model worker abort on any batch
/// holding this token id: the crash-isolation tests' poison input. Only
/// tests set it; unset (always, in production) it costs nothing.
pub const FAULT_ABORT_TOKEN_ENV: &str = "CE_FAULT_ABORT_TOKEN";

/// Environment variable `TOKEN:MS` that makes a model worker sleep MS
/// milliseconds before scoring any batch holding token id TOKEN: a slow
/// replica on demand, for the deadline tests. Only tests set it.
pub const FAULT_DELAY_TOKEN_ENV: &str = "CE_FAULT_DELAY_TOKEN";

/// Test-only faults on marker inputs (see the two variables above).
#[derive(Debug, Default)]
struct FaultInjection {
    abort_on: Option<u32>,
    delay_on: Option<(u32, Duration)>,
}

impl FaultInjection {
    fn from_env() -> Self {
        let abort_on = std::env::var(FAULT_ABORT_TOKEN_ENV)
            .ok()
            .and_then(|v| v.parse().ok());
        if let Some(token) = abort_on {
            tracing::warn!(
                token,
                "fault injection on: aborting on batches holding this token"
            );
        }
        let delay_on = std::env::var(FAULT_DELAY_TOKEN_ENV).ok().and_then(|v| {
            let (token, ms) = v.split_once(':')?;
            Some((token.parse().ok()?, Duration::from_millis(ms.parse().ok()?)))
        });
        if let Some((token, delay)) = delay_on {
            tracing::warn!(
                token,
                ?delay,
                "fault injection on: delaying batches holding this token"
            );
        }
        Self { abort_on, delay_on }
    }

    fn apply(&self, input_ids: &[u32]) {
        if self.abort_on.is_some_and(|t| input_ids.contains(&t)) {
            std::process::abort();
        }
        if let Some((token, delay)) = self.delay_on
            && input_ids.contains(&token)
        {
            std::thread::sleep(delay);
        }
    }
}

/// Connects to the supervisor that started this process, loads the model
/// it names, warms up, and scores token batches until told to stop.
///
/// # Safety
/// Fds 3–8 must be what the supervisor placed for this process, owned by
/// nothing else; call once, first thing in `main`, before any thread starts.
pub unsafe fn run() -> Result<(), ProcessError> {
    // SAFETY: forwarded from the caller.
    let mut session = unsafe { WorkerSession::connect(Role::Model)? };
    let config = session.config().clone();
    let WorkerJob::Model(replica) = &config.job else {
        let why = format!("a model worker was sent {:?}", config.job.role());
        session.refuse(&why, true);
        return Err(ProcessError::Config(why));
    };
    // SAFETY: `connect` ran on this thread alone; no other thread exists yet.
    unsafe { threads::set_compute_threads(replica.threads)? };
    let mut engine_config = EngineConfig::new(&replica.model);
    engine_config.dtype = replica.dtype;
    engine_config.device = replica.device;
    engine_config.max_length = config.max_length as usize;
    engine_config.attention = replica.attention;
    let started = Instant::now();
    let loaded = Engine::load(&engine_config).and_then(|engine| {
        // One pass before Ready, so the first client batch does not pay for
        // lazy initialisation (thread pools, first-touch pages).
        engine.score_query("warm up", &["the engine"], Default::default())?;
        Ok(engine)
    });
    let engine = match loaded {
        Ok(engine) => engine,
        Err(e) => {
            // A device failure names the device already, and is the whole
            // story: the model is fine.
            let reason = match e.is_permanent() {
                true => e.to_string(),
                false => format!("cannot load {}: {e}", replica.model),
            };
            session.refuse(&reason, e.is_permanent());
            return Err(ProcessError::Refused(reason));
        }
    };
    session.set_kernel(engine.kernel());
    if let Some(gpu) = engine.gpu() {
        session.set_gpu(gpu.clone());
    }
    tracing::info!(
        replica = session.replica(),
        kernel = engine.kernel(),
        threads = threads::compute_threads(),
        elapsed_ms = started.elapsed().as_millis() as u64,
        "model replica ready"
    );
    let labels = engine.info().num_labels;
    let faults = FaultInjection::from_env();
    session.serve(|_, payload, out| {
        let scored = frame::decode_token_batch(payload)
            .map_err(|e| e.to_string())
            .inspect(|batch| faults.apply(&batch.input_ids))
            .and_then(|batch| engine.score(&batch).map_err(|e| e.to_string()));
        match scored {
            Ok(scores) => {
                frame::encode_scores(&scores.logits, labels, out);
                let pairs = scores.logits.len() / labels.max(1);
                Handled {
                    kind: FrameKind::Scores,
                    count: pairs as u32,
                    pairs: pairs as u64,
                }
            }
            Err(message) => {
                out.clear();
                frame::encode_error(ERROR_INTERNAL, &message, out);
                Handled {
                    kind: FrameKind::Error,
                    count: 0,
                    pairs: 0,
                }
            }
        }
    })?;
    Ok(())
}
