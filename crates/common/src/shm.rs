//! Anonymous shared memory: a sealed `memfd` mapped read-write.
//!
//! A memfd lives in no filesystem, so a SIGKILL of any process leaves
//! nothing behind in `/dev/shm` (the memory goes when the last fd and mapping
//! go), it is reachable only through an inherited fd (mode 0600 by
//! construction), and its size is sealed so a peer cannot shrink it under
//! our mapping and turn reads into SIGBUS.

use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::ptr::NonNull;

use rustix::fs::{MemfdFlags, SealFlags};
use rustix::mm::{MapFlags, ProtFlags};

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

const REQUIRED_SEALS: SealFlags = SealFlags::SHRINK
    .union(SealFlags::GROW)
    .union(SealFlags::SEAL);

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
    /// Creates a zeroed region of `len` bytes (rounded up to a page).
    pub fn create(name: &str, len: usize) -> Result<Self, ShmError> {
        let page = rustix::param::page_size();
        let len = len.max(1).div_ceil(page) * page;
        let fd = rustix::fs::memfd_create(name, MemfdFlags::CLOEXEC | MemfdFlags::ALLOW_SEALING)
            .map_err(sys("memfd_create"))?;
        rustix::fs::ftruncate(&fd, len as u64).map_err(sys("ftruncate"))?;
        rustix::fs::fcntl_add_seals(&fd, REQUIRED_SEALS).map_err(sys("fcntl(F_ADD_SEALS)"))?;
        Self::map(fd, len)
    }

    /// Maps a region received from a peer, after checking it is sealed
    /// against resizing and at least `min_len` bytes long.
    pub fn attach(fd: OwnedFd, min_len: usize) -> Result<Self, ShmError> {
        let seals = rustix::fs::fcntl_get_seals(&fd).map_err(sys("fcntl(F_GET_SEALS)"))?;
        if !seals.contains(SealFlags::SHRINK | SealFlags::GROW) {
            return Err(ShmError::Rejected("not sealed against resizing".into()));
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
        let a = SharedRegion::create("ce-test", 10_000).unwrap();
        assert!(a.len() >= 10_000 && a.len().is_multiple_of(rustix::param::page_size()));
        let b = SharedRegion::attach(a.try_clone_fd().unwrap(), 10_000).unwrap();
        // SAFETY: both mappings are at least 10 000 bytes long.
        unsafe {
            a.as_ptr().add(9_999).write_volatile(42);
            assert_eq!(b.as_ptr().add(9_999).read_volatile(), 42);
        }
    }

    #[test]
    fn rejects_unsealed_and_short_regions() {
        let fd = rustix::fs::memfd_create("plain", MemfdFlags::CLOEXEC).unwrap();
        rustix::fs::ftruncate(&fd, 4096).unwrap();
        assert!(matches!(
            SharedRegion::attach(fd, 16),
            Err(ShmError::Rejected(_))
        ));
        let a = SharedRegion::create("ce-test", 4096).unwrap();
        assert!(matches!(
            SharedRegion::attach(a.try_clone_fd().unwrap(), 1 << 20),
            Err(ShmError::Rejected(_))
        ));
        // The seal holds: the region cannot be shrunk under a mapping.
        assert!(rustix::fs::ftruncate(a.fd(), 0).is_err());
    }
}
