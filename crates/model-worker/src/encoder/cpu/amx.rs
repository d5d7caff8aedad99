//! What the integer and bf16 AMX kernels share: whether this CPU and OS
//! let the process use the tile registers, and the one tile configuration
//! both kernels run under.
//!
//! Rust has no stable AMX intrinsics; the kernels drive the tiles with
//! inline assembly, which needs no compiler support beyond the assembler.

#![cfg(target_arch = "x86_64")]

use std::arch::asm;
use std::sync::OnceLock;

/// Rows of every tile.
pub const TILE_ROWS: usize = 16;
/// Bytes of every tile row.
pub const TILE_BYTES: usize = 64;

/// Which AMX multiply instructions a kernel needs.
#[derive(Debug, Clone, Copy)]
pub enum Unit {
    /// `tdpbusd` (AMX-INT8).
    Int8,
    /// `tdpbf16ps` (AMX-BF16).
    Bf16,
}

/// Whether the CPU has AMX tiles and `unit`, and Linux lets this process
/// use the tile state (it must be asked for, once per process).
pub fn available(unit: Unit) -> bool {
    // CPUID leaf 7: EDX bit 22 AMX-BF16, 24 AMX-TILE, 25 AMX-INT8.
    let leaf = std::arch::x86_64::__cpuid_count(7, 0);
    let bit = |b: u32| leaf.edx >> b & 1 == 1;
    let has_unit = match unit {
        Unit::Int8 => bit(25),
        Unit::Bf16 => bit(22),
    };
    has_unit && bit(24) && tile_state_granted()
}

#[cfg(target_os = "linux")]
fn tile_state_granted() -> bool {
    static GRANTED: OnceLock<bool> = OnceLock::new();
    *GRANTED.get_or_init(|| {
        const ARCH_REQ_XCOMP_PERM: libc::c_long = 0x1023;
        const XFEATURE_XTILEDATA: libc::c_long = 18;
        // SAFETY: arch_prctl with these arguments only changes which
        // register state the kernel saves for this process.
        let granted = unsafe {
            libc::syscall(
                libc::SYS_arch_prctl,
                ARCH_REQ_XCOMP_PERM,
                XFEATURE_XTILEDATA,
            )
        } == 0;
        if !granted {
            tracing::info!("the CPU has AMX but the kernel refused the tile state; using AVX-512");
        }
        granted
    })
}

/// Only Linux has the `arch_prctl` permission request; no other x86 host
/// this server targets (Intel Macs) has AMX at all.
#[cfg(not(target_os = "linux"))]
fn tile_state_granted() -> bool {
    false
}

/// Palette 1 with all eight tiles 16 rows of 64 bytes: tiles 0–3
/// accumulate 16 × 16 32-bit sums, 4–5 hold 16 rows of activations, 6–7
/// 16 interleaved groups of weights (4 bytes of depth × 16 columns).
#[repr(C, align(64))]
struct Config([u8; 64]);

/// The tile registers, configured; released when dropped so the kernel
/// need not save them on every context switch.
pub struct Tiles(());

impl Tiles {
    /// Configures the tiles.
    ///
    /// # Safety
    /// [`available`] must have returned true in this process.
    pub unsafe fn configure() -> Self {
        let mut c = [0u8; 64];
        c[0] = 1;
        for t in 0..8 {
            c[16 + 2 * t] = TILE_BYTES as u8;
            c[48 + t] = TILE_ROWS as u8;
        }
        let config = Config(c);
        // SAFETY: the configuration is a valid palette-1 layout, and the
        // caller checked the CPU has tiles and the OS granted them.
        unsafe { asm!("ldtilecfg [{0}]", in(reg) config.0.as_ptr(), options(nostack)) };
        Self(())
    }
}

impl Drop for Tiles {
    fn drop(&mut self) {
        // SAFETY: tiles were configured by `configure`; none is in use past
        // this point.
        unsafe { asm!("tilerelease", options(nostack, nomem)) };
    }
}
