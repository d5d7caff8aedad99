//! `ce-model-worker`: one model replica, started by `ce-supervisor` with
//! its rings (fds 3–7) and control socket (fd 8). Not meant to be run by
//! hand. The loop lives in `model_worker::process`.

use std::process::ExitCode;

fn main() -> ExitCode {
    supervisor::logging::init();
    // SAFETY: first thing in main; fds 3–8 are the supervisor's placement.
    match unsafe { model_worker::process::run() } {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) if e.was_reported() => {
            tracing::debug!("model worker stopped: {e}");
            ExitCode::FAILURE
        }
        Err(e) => {
            tracing::error!("model worker failed: {e}");
            ExitCode::FAILURE
        }
    }
}
