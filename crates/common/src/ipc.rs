//! Which operating-system primitives carry the rings, their doorbells and
//! the process watches: one choice per process tree, made once.
//!
//! | | `linux` (the default on Linux) | `portable` (every Unix) |
//! |---|---|---|
//! | ring memory | sealed `memfd` | POSIX `shm_open`, unlinked at once, mode 0600 |
//! | doorbells | `eventfd` | Unix socket pairs |
//! | "the child exited" | `pidfd` | a lifeline pipe only the child writes to |
//! | "the supervisor died" | `PR_SET_PDEATHSIG` + its pidfd | a lifeline pipe only the supervisor writes to, watched by a thread |
//!
//! Both give the same guarantees bar one: nothing is left in `/dev/shm` or
//! the filesystem after a SIGKILL of either side (the shared-memory object
//! is unlinked before any child exists, so only fds and mappings keep it),
//! a dead peer wakes every wait, a worker dies with its supervisor. The
//! exception: a POSIX shared-memory object cannot be sealed, so a worker
//! that shrinks its region could make the supervisor fault on a read
//! (memfd seals forbid that on Linux).
//!
//! The portable backend is the only one off Linux and is selectable on
//! Linux with `CE_IPC=portable`, so that the test suite runs on it there.
//! The supervisor passes its choice to every worker in the same variable.

use std::sync::OnceLock;

/// The environment variable that selects the backend (`linux`, `portable`).
pub const IPC_ENV: &str = "CE_IPC";

/// A set of IPC primitives (see the module doc).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    /// memfd, eventfd, pidfd, `PR_SET_PDEATHSIG`.
    Linux,
    /// POSIX shared memory, socket pairs, lifeline pipes.
    Portable,
}

/// `CE_IPC` holds something that names no backend of this build.
#[derive(Debug, Clone, thiserror::Error, PartialEq, Eq)]
#[error("{IPC_ENV}={0:?} names no IPC backend of this build (use {1})")]
pub struct UnknownBackend(String, &'static str);

impl Backend {
    /// The backend's name, as `CE_IPC` spells it.
    pub fn as_str(self) -> &'static str {
        match self {
            Backend::Linux => "linux",
            Backend::Portable => "portable",
        }
    }

    /// The backend a process uses when `CE_IPC` is unset.
    pub fn default_for_this_os() -> Self {
        if cfg!(target_os = "linux") {
            Backend::Linux
        } else {
            Backend::Portable
        }
    }

    /// Parses a `CE_IPC` value; `linux` exists only on Linux.
    pub fn parse(value: &str) -> Result<Self, UnknownBackend> {
        let choices = if cfg!(target_os = "linux") {
            "linux or portable"
        } else {
            "portable"
        };
        match value.trim() {
            "" => Ok(Self::default_for_this_os()),
            "linux" if cfg!(target_os = "linux") => Ok(Backend::Linux),
            "portable" => Ok(Backend::Portable),
            other => Err(UnknownBackend(other.to_string(), choices)),
        }
    }

    /// The backend `CE_IPC` selects (the OS's default when unset).
    pub fn from_env() -> Result<Self, UnknownBackend> {
        match std::env::var(IPC_ENV) {
            Ok(value) => Self::parse(&value),
            Err(_) => Ok(Self::default_for_this_os()),
        }
    }

    /// This process's backend, read from the environment once. A value
    /// that names no backend falls back to the default here; binaries call
    /// [`Backend::from_env`] first to refuse it with its name.
    pub fn current() -> Self {
        static CURRENT: OnceLock<Backend> = OnceLock::new();
        *CURRENT.get_or_init(|| Self::from_env().unwrap_or_else(|_| Self::default_for_this_os()))
    }
}

impl std::fmt::Display for Backend {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_parse_and_garbage_is_refused_by_name() {
        assert_eq!(Backend::parse("portable"), Ok(Backend::Portable));
        assert_eq!(Backend::parse(""), Ok(Backend::default_for_this_os()));
        #[cfg(target_os = "linux")]
        assert_eq!(Backend::parse("linux"), Ok(Backend::Linux));
        let e = Backend::parse("sysv").unwrap_err();
        assert!(e.to_string().contains("CE_IPC=\"sysv\""), "{e}");
        for b in [Backend::Linux, Backend::Portable] {
            if cfg!(target_os = "linux") || b == Backend::Portable {
                assert_eq!(Backend::parse(b.as_str()), Ok(b));
            }
        }
    }
}
