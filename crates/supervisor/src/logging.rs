//! Logging for all three executables: `tracing` to stderr, filtered by
//! `CE_LOG` (e.g. `CE_LOG=debug`), default `info`.

/// Installs the subscriber (once, first thing in `main`).
pub fn init() {
    let filter =
        tracing_subscriber::EnvFilter::try_from_env("CE_LOG").unwrap_or_else(|_| "info".into());
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .try_init();
}
