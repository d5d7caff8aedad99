//! Anonymous shared memory mapped read-write: a sealed `memfd` on the
//! Linux backend, a POSIX shared-memory object unlinked at once on the
//! portable one ([`crate::ipc`]).
//!
//! A memfd lives in no filesystem, so a SIGKILL of any process leaves
//! nothing behind in `/dev/shm` (the memory goes when the last fd and mapping
//! go), it is reachable only through an inherited fd (mode 0600 by
//! construction), and its size is sealed so a peer cannot shrink it under
//! our mapping and turn reads into SIGBUS. The portable object is created
//! 0600 with `O_EXCL` under a fresh name and unlinked before `create`
//! returns, so it too is reachable only through fds and leaves nothing
//! behind; it cannot be sealed.

use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::ptr::NonNull;

#[cfg(target_os = "linux")]
use rustix::fs::{MemfdFlags, SealFlags};
use rustix::mm::{MapFlags, ProtFlags};

use crate::ipc::Backend;

/// Why a shared region could not be created or attached.
#[derive(Debug, thiserror::Error)]
pub enum ShmError {
    /// A system call failed.
    #[error("{op} failed: {source}")]
    Sys {
        /// The operation.
        op: &'static str,
        /// The OS error.
        source: rustix::io::Errno,
    },
    /// The fd is not a sealed memfd of a usable size.
    #[error("shared memory fd rejected: {0}")]
    Rejected(String),
}

fn sys(op: &'static str) -> impl FnOnce(rustix::io::Errno) -> ShmError {
    move |source| ShmError::Sys { op, source }
}

#[cfg(target_os = "linux")]
const REQUIRED_SEALS: SealFlags = SealFlags::SHRINK
    .union(SealFlags::GROW)
    .union(SealFlags::SEAL);

/// A sealed memfd of `len` bytes.
#[cfg(target_os = "linux")]
fn sealed_memfd(name: &str, len: usize) -> Result<OwnedFd, ShmError> {
    let fd = rustix::fs::memfd_create(name, MemfdFlags::CLOEXEC | MemfdFlags::ALLOW_SEALING)
        .map_err(sys("memfd_create"))?;
    rustix::fs::ftruncate(&fd, len as u64).map_err(sys("ftruncate"))?;
    rustix::fs::fcntl_add_seals(&fd, REQUIRED_SEALS).map_err(sys("fcntl(F_ADD_SEALS)"))?;
    Ok(fd)
}

#[cfg(not(target_os = "linux"))]
fn sealed_memfd(_: &str, _: usize) -> Result<OwnedFd, ShmError> {
    Err(ShmError::Rejected("memfd exists only on Linux".into()))
}

/// Checks a peer's memfd is sealed against resizing.
#[cfg(target_os = "linux")]
fn check_sealed(fd: &OwnedFd) -> Result<(), ShmError> {
    let seals = rustix::fs::fcntl_get_seals(fd).map_err(sys("fcntl(F_GET_SEALS)"))?;
    if !seals.contains(SealFlags::SHRINK | SealFlags::GROW) {
        return Err(ShmError::Rejected("not sealed against resizing".into()));
    }
    Ok(())
}

#[cfg(not(target_os = "linux"))]
fn check_sealed(_: &OwnedFd) -> Result<(), ShmError> {
    Err(ShmError::Rejected("memfd exists only on Linux".into()))
}

/// A POSIX shared-memory object of `len` bytes that no name reaches any
/// more: created 0600 under a name no other object has (`O_EXCL`), sized,
/// and unlinked before anyone else could open it by name.
fn unlinked_shm(len: usize) -> Result<OwnedFd, ShmError> {
    use rustix::fs::Mode;
    use rustix::shm::OFlags;
    use std::sync::atomic::{AtomicU32, Ordering};
    static SEQUENCE: AtomicU32 = AtomicU32::new(0);
    let pid = std::process::id();
    for _ in 0..16 {
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.subsec_nanos());
        // Short: macOS allows 31 bytes.
        let name = format!(
            "/ce{pid:x}.{:x}.{nanos:x}",
            SEQUENCE.fetch_add(1, Ordering::Relaxed)
        );
        let fd = match rustix::shm::open(
            name.as_str(),
            OFlags::CREATE | OFlags::EXCL | OFlags::RDWR,
            Mode::RUSR | Mode::WUSR,
        ) {
            Ok(fd) => fd,
            Err(rustix::io::Errno::EXIST) => continue,
            Err(e) => {
                return Err(ShmError::Sys {
                    op: "shm_open",
                    source: e,
                });
            }
        };
        rustix::shm::unlink(name.as_str()).map_err(sys("shm_unlink"))?;
        rustix::fs::ftruncate(&fd, len as u64).map_err(sys("ftruncate"))?;
        return Ok(fd);
    }
    Err(ShmError::Rejected(
        "no free shared-memory name after 16 tries".into(),
    ))
}

/// A mapped, size-sealed memfd.
#[derive(Debug)]
pub struct SharedRegion {
    ptr: NonNull<u8>,
    len: usize,
    fd: OwnedFd,
}

// SAFETY: the region is plain shared bytes; all access goes through atomics
// or explicit copies in `ring`, which synchronise on their own.
unsafe impl Send for SharedRegion {}
// SAFETY: as above.
unsafe impl Sync for SharedRegion {}

impl SharedRegion {
    /// Creates a zeroed region of `len` bytes (rounded up to a page) with
    /// this process's [`Backend`]; `name` labels a memfd (in
    /// `/proc/PID/fd`), the portable object needs none.
    pub fn create(name: &str, len: usize) -> Result<Self, ShmError> {
        Self::create_with(Backend::current(), name, len)
    }

    /// [`create`](Self::create) with a given backend.
    pub fn create_with(backend: Backend, name: &str, len: usize) -> Result<Self, ShmError> {
        let page = rustix::param::page_size();
        let len = len.max(1).div_ceil(page) * page;
        let fd = match backend {
            Backend::Linux => sealed_memfd(name, len)?,
            Backend::Portable => unlinked_shm(len)?,
        };
        Self::map(fd, len)
    }

    /// Maps a region received from a peer, after checking it is at least
    /// `min_len` bytes long and (on the Linux backend) sealed against
    /// resizing.
    pub fn attach(fd: OwnedFd, min_len: usize) -> Result<Self, ShmError> {
        Self::attach_with(Backend::current(), fd, min_len)
    }

    /// [`attach`](Self::attach) with a given backend.
    pub fn attach_with(backend: Backend, fd: OwnedFd, min_len: usize) -> Result<Self, ShmError> {
        if backend == Backend::Linux {
            check_sealed(&fd)?;
        }
        let len = rustix::fs::fstat(&fd).map_err(sys("fstat"))?.st_size as usize;
        if len < min_len || len == 0 {
            return Err(ShmError::Rejected(format!(
                "{len} bytes, need at least {min_len}"
            )));
        }
        Self::map(fd, len)
    }

    fn map(fd: OwnedFd, len: usize) -> Result<Self, ShmError> {
        // SAFETY: a fresh shared mapping of a memfd we hold; the size is
        // sealed, so the whole range stays backed for the mapping's life.
        let ptr = unsafe {
            rustix::mm::mmap(
                std::ptr::null_mut(),
                len,
                ProtFlags::READ | ProtFlags::WRITE,
                MapFlags::SHARED,
                &fd,
                0,
            )
        }
        .map_err(sys("mmap"))?;
        let ptr = NonNull::new(ptr.cast::<u8>())
            .ok_or_else(|| ShmError::Rejected("null mapping".into()))?;
        Ok(Self { ptr, len, fd })
    }

    /// Start of the mapping (page aligned).
    pub fn as_ptr(&self) -> *mut u8 {
        self.ptr.as_ptr()
    }

    /// Length in bytes.
    pub fn len(&self) -> usize {
        self.len
    }

    /// Always false: a region has at least one page.
    pub fn is_empty(&self) -> bool {
        false
    }

    /// The memfd, to hand to a child process.
    pub fn fd(&self) -> BorrowedFd<'_> {
        self.fd.as_fd()
    }

    /// A duplicate of the memfd (close-on-exec).
    pub fn try_clone_fd(&self) -> Result<OwnedFd, ShmError> {
        rustix::io::fcntl_dupfd_cloexec(&self.fd, 0).map_err(sys("dup"))
    }
}

impl Drop for SharedRegion {
    fn drop(&mut self) {
        // SAFETY: unmapping exactly what `map` mapped; no reference into the
        // region outlives `self` (rings borrow the region).
        let _ = unsafe { rustix::mm::munmap(self.ptr.as_ptr().cast(), self.len) };
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn create_and_attach_share_bytes() {
        let a =
            SharedRegion::create_with(Backend::default_for_this_os(), "ce-test", 10_000).unwrap();
        assert!(a.len() >= 10_000 && a.len().is_multiple_of(rustix::param::page_size()));
        let b = SharedRegion::attach_with(
            Backend::default_for_this_os(),
            a.try_clone_fd().unwrap(),
            10_000,
        )
        .unwrap();
        // SAFETY: both mappings are at least 10 000 bytes long.
        unsafe {
            a.as_ptr().add(9_999).write_volatile(42);
            assert_eq!(b.as_ptr().add(9_999).read_volatile(), 42);
        }
    }

    #[test]
    fn the_portable_region_shares_bytes_and_leaves_no_name() {
        let before = shm_names();
        let a = SharedRegion::create_with(Backend::Portable, "", 10_000).unwrap();
        let b = SharedRegion::attach_with(Backend::Portable, a.try_clone_fd().unwrap(), 10_000)
            .unwrap();
        // SAFETY: both mappings are at least 10 000 bytes long.
        unsafe {
            a.as_ptr().add(9_999).write_volatile(7);
            assert_eq!(b.as_ptr().add(9_999).read_volatile(), 7);
        }
        assert_eq!(shm_names(), before, "the object was unlinked at once");
        assert!(matches!(
            SharedRegion::attach_with(Backend::Portable, a.try_clone_fd().unwrap(), 1 << 20),
            Err(ShmError::Rejected(_))
        ));
    }

    /// Our objects in /dev/shm (where Linux keeps POSIX shared memory).
    fn shm_names() -> Vec<String> {
        let prefix = format!("ce{:x}.", std::process::id());
        std::fs::read_dir("/dev/shm")
            .map(|d| {
                d.filter_map(|e| e.ok()?.file_name().into_string().ok())
                    .filter(|n| n.starts_with(&prefix))
                    .collect()
            })
            .unwrap_or_default()
    }

    #[cfg(target_os = "linux")]
    #[test]
    fn rejects_unsealed_and_short_regions() {
        let fd = rustix::fs::memfd_create("plain", MemfdFlags::CLOEXEC).unwrap();
        rustix::fs::ftruncate(&fd, 4096).unwrap();
        assert!(matches!(
            SharedRegion::attach_with(Backend::Linux, fd, 16),
            Err(ShmError::Rejected(_))
        ));
        let a = SharedRegion::create_with(Backend::Linux, "ce-test", 4096).unwrap();
        assert!(matches!(
            SharedRegion::attach_with(Backend::Linux, a.try_clone_fd().unwrap(), 1 << 20),
            Err(ShmError::Rejected(_))
        ));
        // The seal holds: the region cannot be shrunk under a mapping.
        assert!(rustix::fs::ftruncate(a.fd(), 0).is_err());
    }
}
