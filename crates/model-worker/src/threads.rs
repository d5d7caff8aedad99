//! How many threads an engine computes with.
//!
//! candle's CPU kernels split work over `RAYON_NUM_THREADS` threads (its
//! GEMM) and `CANDLE_NUM_THREADS` threads (its barrier pool), and read those
//! variables each time; rayon's global pool serves the rest. Several model
//! workers share a machine, so each process sets all three to its share of
//! the cores — never the default of one thread per core in every process.

/// Why the thread count could not be applied.
#[derive(Debug, thiserror::Error)]
#[error("cannot configure {threads} compute threads: {reason}")]
pub struct ThreadConfigError {
    threads: usize,
    reason: String,
}

/// Sets this process's compute threads to `threads` (at least 1).
///
/// # Safety
/// Writes environment variables: call it first thing in `main`, before any
/// other thread exists (another thread reading the environment at the same
/// time is undefined behaviour on Linux).
pub unsafe fn set_compute_threads(threads: usize) -> Result<(), ThreadConfigError> {
    let threads = threads.max(1);
    let value = threads.to_string();
    // SAFETY: the caller guarantees no other thread runs yet.
    unsafe {
        std::env::set_var("RAYON_NUM_THREADS", &value);
        std::env::set_var("CANDLE_NUM_THREADS", &value);
    }
    rayon::ThreadPoolBuilder::new()
        .num_threads(threads)
        .build_global()
        .map_err(|e| ThreadConfigError {
            threads,
            reason: e.to_string(),
        })
}

/// Sets this process's compute threads to every core it may run on and
/// returns that count (what a benchmark alone on the machine wants).
///
/// # Safety
/// As [`set_compute_threads`]: before any other thread exists.
pub unsafe fn use_every_core() -> Result<usize, ThreadConfigError> {
    let cores = std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(1);
    // SAFETY: the caller guarantees no other thread runs yet.
    unsafe { set_compute_threads(cores) }?;
    Ok(cores)
}

/// The compute threads in effect (what candle's GEMM will use).
pub fn compute_threads() -> usize {
    candle_core::utils::get_num_threads()
}
