//! Starting worker processes so that none outlives the supervisor.
//!
//! * Linux backend ([`crate::ipc`]): the child gets `PR_SET_PDEATHSIG(SIGKILL)`
//!   between fork and exec, then checks that its parent is still the
//!   process that forked it (if the parent died in between, the signal
//!   would never come); the parent watches the child through a pidfd.
//! * Portable backend: two lifeline pipes instead. The supervisor holds the
//!   write end of one pipe for its whole life and every child inherits its
//!   read end ([`LIFELINE_ENV`]): end of file there means the supervisor is
//!   gone, and [`watch_parent`] arms a thread that SIGKILLs the child then.
//!   Each child inherits the write end of a pipe of its own whose read end
//!   the supervisor keeps: end of file there means the child has exited
//!   (the "exit fd", what the pidfd is on Linux). A grandchild could hold a
//!   lifeline open; workers start none.
//! * The death signal fires when the *thread* that forked exits, so all
//!   spawning happens on one long-lived [`Spawner`] thread, never on a tokio
//!   worker thread that the runtime may retire.
//! * The child leads its own process group, so a terminal's Ctrl-C reaches
//!   the supervisor alone, which drains the workers itself.
//! * Link fds are placed at fixed numbers from [`CHILD_LINK_FD_BASE`] (the
//!   only fds the child inherits besides stdio and the lifelines), and the
//!   parent gets an exit fd for the child: readable the moment the child
//!   dies, pollable by tokio.

use std::ffi::OsString;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::process::CommandExt;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::{OnceLock, mpsc};

use rustix::process::{Pid, Signal};

use crate::ipc::{Backend, IPC_ENV};
use crate::link::{CHILD_LINK_FD_BASE, ChildLinkFds, LINK_ENV};

/// Environment variable telling a child (portable backend) which fd is the
/// read end of its supervisor's lifeline.
pub const LIFELINE_ENV: &str = "CE_LIFELINE_FD";

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
    /// The process (for `wait`).
    pub child: Child,
    /// Readable once the child has exited; kills it.
    pub exit: ExitWatch,
}

impl Spawned {
    /// The child's pid.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }
}

/// A child's exit fd (its pidfd, or the read end of its lifeline pipe):
/// readable once it has exited, pollable by `poll` and tokio.
#[derive(Debug)]
pub struct ExitWatch {
    fd: OwnedFd,
    pid: u32,
    backend: Backend,
}

impl ExitWatch {
    /// The fd to poll (as a ring wait's `peer`, or for tokio).
    pub fn fd(&self) -> BorrowedFd<'_> {
        self.fd.as_fd()
    }

    /// Whether the child has exited (without blocking).
    pub fn has_exited(&self) -> bool {
        has_exited(&self.fd)
    }

    /// SIGKILLs the child; a no-op once it has exited.
    pub fn kill(&self) {
        match self.backend {
            #[cfg(target_os = "linux")]
            Backend::Linux => {
                let _ = rustix::process::pidfd_send_signal(&self.fd, Signal::KILL);
            }
            _ => {
                // Without a pidfd the pid is the only name: signal it only
                // while the lifeline says the child lives, i.e. before it can
                // have been reaped and its pid reused (the window between
                // this check and the signal is a few instructions).
                if !self.has_exited()
                    && let Some(pid) = Pid::from_raw(self.pid as i32)
                {
                    let _ = rustix::process::kill_process(pid, Signal::KILL);
                }
            }
        }
    }
}

/// A pipe whose two ends are close-on-exec.
#[cfg(not(target_vendor = "apple"))]
fn cloexec_pipe() -> rustix::io::Result<(OwnedFd, OwnedFd)> {
    rustix::pipe::pipe_with(rustix::pipe::PipeFlags::CLOEXEC)
}

/// A pipe whose two ends are close-on-exec. macOS has no `pipe2`, so the
/// flag is set after the fact: a process forked by another thread in
/// between would keep the ends. The supervisor forks workers only on the
/// [`Spawner`] thread (the caller here), and otherwise only to ask the
/// loader about a worker that failed to start.
#[cfg(target_vendor = "apple")]
fn cloexec_pipe() -> rustix::io::Result<(OwnedFd, OwnedFd)> {
    let (read, write) = rustix::pipe::pipe()?;
    for end in [&read, &write] {
        rustix::io::fcntl_setfd(end, rustix::io::FdFlags::CLOEXEC)?;
    }
    Ok((read, write))
}

/// The supervisor's lifeline (portable backend): a pipe whose write end
/// this process holds until it exits (close-on-exec, so no child holds
/// it); each child inherits a duplicate of the read end.
fn parent_lifeline() -> std::io::Result<BorrowedFd<'static>> {
    static READ_END: OnceLock<Result<(OwnedFd, OwnedFd), rustix::io::Errno>> = OnceLock::new();
    match READ_END.get_or_init(cloexec_pipe) {
        Ok((read, _write)) => Ok(read.as_fd()),
        Err(e) => Err(std::io::Error::from(*e)),
    }
}

/// Starts a process (on the calling thread; prefer a [`Spawner`]) with
/// this process's IPC backend, which the child is told in `CE_IPC`.
pub fn spawn_now(mut spec: SpawnSpec) -> std::io::Result<Spawned> {
    let backend = Backend::current();
    let parent = rustix::process::getpid();
    spec.env.push((IPC_ENV.into(), backend.as_str().into()));
    // Portable: the child's lifeline (we keep the read end: its exit fd)
    // and the supervisor's (the child gets a read end), placed after the
    // spec's fds.
    let mut child_lifeline = None;
    if backend == Backend::Portable {
        let (read, write) = cloexec_pipe()?;
        child_lifeline = Some(read);
        spec.fds.push(write);
        let parent_end = rustix::io::fcntl_dupfd_cloexec(parent_lifeline()?, 0)?;
        let number = CHILD_LINK_FD_BASE + spec.fds.len() as RawFd;
        spec.env
            .push((LIFELINE_ENV.into(), number.to_string().into()));
        spec.fds.push(parent_end);
    }
    // Move every fd above the target range first, so placing one with dup2
    // can never overwrite another that is still to be placed.
    let high: Vec<OwnedFd> = spec
        .fds
        .iter()
        .map(|fd| rustix::io::fcntl_dupfd_cloexec(fd, 64).map_err(std::io::Error::from))
        .collect::<Result<_, _>>()?;
    // The child's lifeline write end must be closed here once the child
    // has its copy, or its end of file would never come.
    drop(std::mem::take(&mut spec.fds));
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
            #[cfg(target_os = "linux")]
            if backend == Backend::Linux {
                rustix::process::set_parent_process_death_signal(Some(Signal::KILL))?;
            }
            if rustix::process::getppid() != Some(parent) {
                return Err(std::io::Error::other("parent exited during spawn"));
            }
            Ok(())
        });
    }
    let child = cmd.spawn()?;
    drop(high);
    let fd = match child_lifeline {
        Some(read) => read,
        None => pidfd_of(child.id())?,
    };
    let exit = ExitWatch {
        fd,
        pid: child.id(),
        backend,
    };
    Ok(Spawned { child, exit })
}

#[cfg(target_os = "linux")]
fn pidfd_of(pid: u32) -> std::io::Result<OwnedFd> {
    let pid = Pid::from_raw(pid as i32).ok_or_else(|| std::io::Error::other("child pid 0"))?;
    Ok(rustix::process::pidfd_open(
        pid,
        rustix::process::PidfdFlags::empty(),
    )?)
}

#[cfg(not(target_os = "linux"))]
fn pidfd_of(_: u32) -> std::io::Result<OwnedFd> {
    Err(std::io::Error::other("pidfd exists only on Linux"))
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

/// In a child: an fd readable once the parent dies (its pidfd, or on the
/// portable backend the supervisor's lifeline), to watch in every wait.
/// On the portable backend it also arms what `PR_SET_PDEATHSIG` is on
/// Linux: a thread that SIGKILLs this process when the lifeline ends, so a
/// worker busy computing dies with its supervisor too. Fails if the parent
/// is already gone (re-parented to init or a subreaper).
pub fn watch_parent(expected_parent: Option<u32>) -> std::io::Result<OwnedFd> {
    let ppid = rustix::process::getppid().ok_or_else(|| std::io::Error::other("no parent"))?;
    if let Some(expected) = expected_parent
        && ppid.as_raw_nonzero().get() as u32 != expected
    {
        return Err(std::io::Error::other(
            "parent changed: the supervisor is gone",
        ));
    }
    match Backend::current() {
        Backend::Linux => pidfd_of(ppid.as_raw_nonzero().get() as u32),
        Backend::Portable => {
            let lifeline = inherited_lifeline()?;
            let watched = rustix::io::fcntl_dupfd_cloexec(&lifeline, 0)?;
            std::thread::Builder::new()
                .name("ce-lifeline".into())
                .spawn(move || die_with(lifeline))?;
            Ok(watched)
        }
    }
}

/// The lifeline read end the supervisor placed ([`LIFELINE_ENV`]), taken
/// once.
fn inherited_lifeline() -> std::io::Result<OwnedFd> {
    static TAKEN: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);
    let number: RawFd = std::env::var(LIFELINE_ENV)
        .ok()
        .and_then(|v| v.parse().ok())
        .filter(|&n| n >= CHILD_LINK_FD_BASE)
        .ok_or_else(|| {
            std::io::Error::other(format!(
                "{LIFELINE_ENV} names no inherited fd: not started by a supervisor on the portable backend"
            ))
        })?;
    if TAKEN.swap(true, std::sync::atomic::Ordering::AcqRel) {
        return Err(std::io::Error::other("the lifeline was taken already"));
    }
    // The fd must be open, or we would own a number someone else may reuse.
    // SAFETY: a borrow of a plain number for one fcntl.
    rustix::io::fcntl_getfd(unsafe { BorrowedFd::borrow_raw(number) })?;
    // SAFETY: the supervisor placed this fd for us alone; `TAKEN` makes
    // this the only owner, and it is kept close-on-exec from here.
    let fd = unsafe { OwnedFd::from_raw_fd(number) };
    rustix::io::fcntl_setfd(&fd, rustix::io::FdFlags::CLOEXEC)?;
    Ok(fd)
}

/// Blocks until `lifeline` ends (the supervisor is gone), then SIGKILLs
/// this process, as the kernel's parent-death signal would.
fn die_with(lifeline: OwnedFd) {
    loop {
        let mut fds = [rustix::event::PollFd::new(
            &lifeline,
            rustix::event::PollFlags::IN,
        )];
        match rustix::event::poll(&mut fds, None) {
            Ok(_) if !fds[0].revents().is_empty() => break,
            Ok(_) | Err(rustix::io::Errno::INTR) => continue,
            // A poll that cannot work leaves only the control channel's end
            // of file to notice the supervisor's death; say so and stop.
            Err(e) => {
                eprintln!("lifeline watch failed ({e}); relying on the control channel");
                return;
            }
        }
    }
    let _ = rustix::process::kill_process(rustix::process::getpid(), Signal::KILL);
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
        assert!(s.exit.has_exited());
    }

    #[test]
    fn the_exit_fd_says_when_a_child_lives_and_dies_and_kill_kills() {
        let spawner = Spawner::start().unwrap();
        let mut spec = SpawnSpec::new("/bin/sh");
        spec.args = vec!["-c".into(), "exec sleep 30".into()];
        let mut s = spawner.spawn(spec).unwrap();
        assert!(!s.exit.has_exited());
        s.exit.kill();
        let status = s.child.wait().unwrap();
        use std::os::unix::process::ExitStatusExt;
        assert_eq!(status.signal(), Some(9), "{status:?}");
        assert!(s.exit.has_exited());
        // Killing a reaped child is a no-op, not a signal to a reused pid.
        s.exit.kill();
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
