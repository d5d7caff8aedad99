//! Starting worker processes so that none outlives the supervisor.
//!
//! * The child gets `PR_SET_PDEATHSIG(SIGKILL)` between fork and exec, then
//!   checks that its parent is still the process that forked it (if the
//!   parent died in between, the signal would never come).
//! * The death signal fires when the *thread* that forked exits, so all
//!   spawning happens on one long-lived [`Spawner`] thread, never on a tokio
//!   worker thread that the runtime may retire.
//! * The child leads its own process group, so a terminal's Ctrl-C reaches
//!   the supervisor alone, which drains the workers itself.
//! * Link fds are placed at fixed numbers from [`CHILD_LINK_FD_BASE`] (the
//!   only fds the child inherits besides stdio), and the parent gets a pidfd
//!   for the child: readable the moment the child dies, pollable by tokio.

use std::ffi::OsString;
use std::os::fd::{AsFd, AsRawFd, OwnedFd, RawFd};
use std::os::unix::process::CommandExt;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;

use rustix::process::{Pid, PidfdFlags, Signal};

use crate::link::{CHILD_LINK_FD_BASE, ChildLinkFds, LINK_ENV};

/// What to start.
#[derive(Debug)]
pub struct SpawnSpec {
    /// The executable.
    pub program: PathBuf,
    /// Its arguments.
    pub args: Vec<OsString>,
    /// Extra environment variables.
    pub env: Vec<(OsString, OsString)>,
    /// Fds the child receives at `CHILD_LINK_FD_BASE`, `+1`, … in order.
    pub fds: Vec<OwnedFd>,
    /// Whether the child's stderr goes to ours (else it is discarded).
    pub inherit_stderr: bool,
}

impl SpawnSpec {
    /// A spec with no arguments, environment or fds.
    pub fn new(program: impl Into<PathBuf>) -> Self {
        Self {
            program: program.into(),
            args: Vec::new(),
            env: Vec::new(),
            fds: Vec::new(),
            inherit_stderr: true,
        }
    }

    /// Hands the child a link: its fds at [`CHILD_LINK_FD_BASE`] and the
    /// ring sizes in [`LINK_ENV`], as [`crate::link::WorkerLink::from_inherited`] expects.
    pub fn with_link(mut self, link: ChildLinkFds) -> Self {
        self.env
            .push((LINK_ENV.into(), link.config.to_env().into()));
        self.fds = link.fds.into();
        self
    }
}

/// A started child.
#[derive(Debug)]
pub struct Spawned {
    /// The process (for `wait`/`kill`).
    pub child: Child,
    /// Readable once the child has exited.
    pub pidfd: OwnedFd,
}

impl Spawned {
    /// The child's pid.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }
}

/// Starts a process (on the calling thread; prefer a [`Spawner`]).
pub fn spawn_now(spec: SpawnSpec) -> std::io::Result<Spawned> {
    let parent = rustix::process::getpid();
    // Move every fd above the target range first, so placing one with dup2
    // can never overwrite another that is still to be placed.
    let high: Vec<OwnedFd> = spec
        .fds
        .iter()
        .map(|fd| rustix::io::fcntl_dupfd_cloexec(fd, 64).map_err(std::io::Error::from))
        .collect::<Result<_, _>>()?;
    let raw: Vec<RawFd> = high.iter().map(|fd| fd.as_raw_fd()).collect();
    let mut cmd = Command::new(&spec.program);
    // Its own process group: a terminal's Ctrl-C (SIGINT to the foreground
    // group) reaches only the supervisor, which then drains its workers.
    cmd.args(&spec.args).stdin(Stdio::null()).process_group(0);
    if !spec.inherit_stderr {
        cmd.stderr(Stdio::null());
    }
    for (k, v) in &spec.env {
        cmd.env(k, v);
    }
    // SAFETY: the closure runs between fork and exec and only makes
    // async-signal-safe system calls (dup2/fcntl, prctl, getppid).
    unsafe {
        cmd.pre_exec(move || {
            for (i, &fd) in raw.iter().enumerate() {
                let target = CHILD_LINK_FD_BASE + i as RawFd;
                // dup2 leaves the new fd without close-on-exec: it survives exec.
                if libc_dup2(fd, target) < 0 {
                    return Err(std::io::Error::last_os_error());
                }
            }
            rustix::process::set_parent_process_death_signal(Some(Signal::KILL))?;
            if rustix::process::getppid() != Some(parent) {
                return Err(std::io::Error::other("parent exited during spawn"));
            }
            Ok(())
        });
    }
    let child = cmd.spawn()?;
    drop(high);
    let pid =
        Pid::from_raw(child.id() as i32).ok_or_else(|| std::io::Error::other("child pid 0"))?;
    let pidfd = rustix::process::pidfd_open(pid, PidfdFlags::empty())?;
    Ok(Spawned { child, pidfd })
}

/// `dup2` via a raw syscall: rustix's `dup2` wants owned fds, which the
/// post-fork child must not create or drop.
fn libc_dup2(from: RawFd, to: RawFd) -> i32 {
    // SAFETY: both numbers are plain ints; dup2 has no memory effects.
    let from = unsafe { std::os::fd::BorrowedFd::borrow_raw(from) };
    let mut target = std::mem::ManuallyDrop::new(
        // SAFETY: `to` is a number we are about to (re)define; ManuallyDrop
        // keeps this temporary owner from closing it.
        unsafe { <OwnedFd as std::os::fd::FromRawFd>::from_raw_fd(to) },
    );
    match rustix::io::dup2(from, &mut target) {
        Ok(()) => 0,
        Err(_) => -1,
    }
}

type Request = (SpawnSpec, mpsc::Sender<std::io::Result<Spawned>>);

/// A long-lived thread that spawns every worker (see the module doc).
#[derive(Debug, Clone)]
pub struct Spawner {
    tx: mpsc::Sender<Request>,
    /// Set by [`Spawner::close`]: no process starts after shutdown begins.
    closed: std::sync::Arc<std::sync::atomic::AtomicBool>,
}

impl Spawner {
    /// Starts the spawning thread. It lives until every `Spawner` clone is dropped.
    pub fn start() -> std::io::Result<Self> {
        let (tx, rx) = mpsc::channel::<Request>();
        std::thread::Builder::new()
            .name("ce-spawner".into())
            .spawn(move || {
                for (spec, reply) in rx {
                    let _ = reply.send(spawn_now(spec));
                }
            })?;
        Ok(Self {
            tx,
            closed: Default::default(),
        })
    }

    /// Refuses every later spawn, in every clone (shutdown has begun).
    pub fn close(&self) {
        self.closed
            .store(true, std::sync::atomic::Ordering::Release);
    }

    /// Spawns on the spawner thread and waits for the result; refused once
    /// [`close`](Self::close)d.
    pub fn spawn(&self, spec: SpawnSpec) -> std::io::Result<Spawned> {
        if self.closed.load(std::sync::atomic::Ordering::Acquire) {
            return Err(std::io::Error::other("shutting down: no new worker starts"));
        }
        let (reply, rx) = mpsc::channel();
        self.tx
            .send((spec, reply))
            .map_err(|_| std::io::Error::other("spawner thread is gone"))?;
        rx.recv()
            .map_err(|_| std::io::Error::other("spawner thread is gone"))?
    }
}

/// In a child: a pidfd for the parent, readable once it dies. Fails if the
/// parent is already gone (re-parented to init or a subreaper).
pub fn watch_parent(expected_parent: Option<u32>) -> std::io::Result<OwnedFd> {
    let ppid = rustix::process::getppid().ok_or_else(|| std::io::Error::other("no parent"))?;
    if let Some(expected) = expected_parent
        && ppid.as_raw_nonzero().get() as u32 != expected
    {
        return Err(std::io::Error::other(
            "parent changed: the supervisor is gone",
        ));
    }
    Ok(rustix::process::pidfd_open(ppid, PidfdFlags::empty())?)
}

/// True when a pidfd says its process has exited (without blocking).
pub fn has_exited(pidfd: &OwnedFd) -> bool {
    let fd = pidfd.as_fd();
    let mut fds = [rustix::event::PollFd::new(
        &fd,
        rustix::event::PollFlags::IN,
    )];
    let zero = rustix::time::Timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    matches!(rustix::event::poll(&mut fds, Some(&zero)), Ok(n) if n > 0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn child_sees_placed_fds_and_pidfd_reports_exit() {
        let spawner = Spawner::start().unwrap();
        let (r, w) = rustix::pipe::pipe().unwrap();
        let mut spec = SpawnSpec::new("/bin/sh");
        // fd 3 is the pipe's write end: the child writes through it.
        spec.args = vec!["-c".into(), "echo placed >&3".into()];
        spec.fds = vec![w];
        let mut s = spawner.spawn(spec).unwrap();
        let status = s.child.wait().unwrap();
        assert!(status.success());
        let mut buf = [0u8; 16];
        let n = rustix::io::read(&r, &mut buf).unwrap();
        assert_eq!(&buf[..n], b"placed\n");
        assert!(has_exited(&s.pidfd));
    }

    #[test]
    fn children_lead_their_own_process_group_and_close_stops_spawning() {
        let spawner = Spawner::start().unwrap();
        let mut spec = SpawnSpec::new("/bin/sh");
        spec.args = vec!["-c".into(), "sleep 5".into()];
        let mut s = spawner.spawn(spec).unwrap();
        let pid = Pid::from_raw(s.pid() as i32).unwrap();
        let group = rustix::process::getpgid(Some(pid)).unwrap();
        assert_eq!(group, pid, "the child leads its group");
        assert_ne!(group, rustix::process::getpgrp());
        s.child.kill().unwrap();
        s.child.wait().unwrap();
        spawner.clone().close();
        let e = spawner.spawn(SpawnSpec::new("/bin/true")).unwrap_err();
        assert!(e.to_string().contains("shutting down"), "{e}");
    }

    #[test]
    fn spawn_failure_is_an_error() {
        let spawner = Spawner::start().unwrap();
        assert!(
            spawner
                .spawn(SpawnSpec::new("/nonexistent/worker"))
                .is_err()
        );
    }
}
