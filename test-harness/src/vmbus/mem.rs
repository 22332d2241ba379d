//! Host access to guest RAM: the one place the mock VMBus host touches shared memory.
//!
//! Everything the guest may change concurrently (ring control fields, monitor pages, ring data,
//! GPA-direct buffers) is read and written here with atomic or volatile accesses through
//! [`MockHypervisor::gpa_to_ptr`], which bounds-checks every range against guest RAM.

use std::sync::atomic::{AtomicU32, Ordering};

use crate::hv::MockHypervisor;

/// A handle on guest RAM as the host sees it.
#[derive(Clone)]
pub(crate) struct GuestRam {
    hv: MockHypervisor,
}

impl GuestRam {
    /// Wraps the partition's memory.
    pub(crate) fn new(hv: MockHypervisor) -> Self {
        Self { hv }
    }

    /// Whether `[gpa, gpa + len)` lies inside guest RAM.
    pub(crate) fn contains(&self, gpa: u64, len: usize) -> bool {
        self.hv.gpa_to_ptr(gpa, len.max(1)).is_some()
    }

    /// Whether the 4 KiB page `pfn` lies inside guest RAM.
    pub(crate) fn contains_pfn(&self, pfn: u64) -> bool {
        pfn.checked_mul(4096)
            .is_some_and(|gpa| self.contains(gpa, 4096))
    }

    /// Copies `buf.len()` bytes from `gpa`; `false` (nothing read) if outside guest RAM.
    /// Every access to guest memory is volatile: aligned 16-byte words, bytes at the unaligned
    /// ends.
    pub(crate) fn read(&self, gpa: u64, buf: &mut [u8]) -> bool {
        if buf.is_empty() {
            return true;
        }
        let Some(p) = self.hv.gpa_to_ptr(gpa, buf.len()) else {
            return false;
        };
        // SAFETY: `gpa_to_ptr` checked that `buf.len()` bytes from `p` are guest RAM, which
        // lives as long as `self.hv`; `buf` is private memory that does not overlap it.
        unsafe { volatile_copy_in(p.as_ptr(), buf) };
        true
    }

    /// Copies `data` to `gpa`; `false` (nothing written) if outside guest RAM. Volatile like
    /// [`Self::read`].
    pub(crate) fn write(&self, gpa: u64, data: &[u8]) -> bool {
        if data.is_empty() {
            return true;
        }
        let Some(p) = self.hv.gpa_to_ptr(gpa, data.len()) else {
            return false;
        };
        // SAFETY: as in `read`, for `data.len()` bytes at `p`.
        unsafe { volatile_copy_out(p.as_ptr(), data) };
        true
    }

    /// The shared u32 at `gpa` (4-byte aligned, inside RAM).
    fn atomic(&self, gpa: u64) -> Option<&AtomicU32> {
        if !gpa.is_multiple_of(4) {
            return None;
        }
        let p = self.hv.gpa_to_ptr(gpa, 4)?;
        if !(p.as_ptr() as usize).is_multiple_of(4) {
            return None;
        }
        // SAFETY: the 4 bytes are inside guest RAM (checked above), 4-byte aligned, live as long
        // as `self.hv` (which the returned borrow of `self` keeps alive), and every host access
        // to shared words goes through atomics.
        Some(unsafe { AtomicU32::from_ptr(p.as_ptr().cast::<u32>()) })
    }

    /// Acquire-load of the u32 at `gpa`.
    pub(crate) fn load_u32(&self, gpa: u64) -> Option<u32> {
        self.atomic(gpa).map(|a| a.load(Ordering::Acquire))
    }

    /// Release-store of `value` at `gpa`; `false` if not addressable.
    pub(crate) fn store_u32(&self, gpa: u64, value: u32) -> bool {
        self.atomic(gpa)
            .map(|a| a.store(value, Ordering::Release))
            .is_some()
    }

    /// Atomically clears `mask` bits at `gpa`; returns the old value.
    pub(crate) fn fetch_and_u32(&self, gpa: u64, mask: u32) -> Option<u32> {
        self.atomic(gpa)
            .map(|a| a.fetch_and(mask, Ordering::SeqCst))
    }

    /// Atomically sets `bits` at `gpa`; returns the old value.
    pub(crate) fn fetch_or_u32(&self, gpa: u64, bits: u32) -> Option<u32> {
        self.atomic(gpa).map(|a| a.fetch_or(bits, Ordering::SeqCst))
    }
}

/// The word of the bulk of the copies below: an SSE2 register on x86_64 (baseline there), 8
/// bytes elsewhere; an AVX2 register where the CPU has AVX2 (detected at run time).
#[cfg(target_arch = "x86_64")]
type Word = std::arch::x86_64::__m128i;
#[cfg(not(target_arch = "x86_64"))]
type Word = u64;

/// Copies `buf.len()` bytes from guest memory at `src` with volatile loads: bytes up to a
/// word boundary of `src`, then words four at a time, then the rest.
///
/// # Safety
///
/// `src..src + buf.len()` is mapped, readable memory that does not overlap `buf`.
unsafe fn volatile_copy_in(src: *const u8, buf: &mut [u8]) {
    #[cfg(target_arch = "x86_64")]
    if std::arch::is_x86_feature_detected!("avx2") {
        // SAFETY: the CPU has AVX2; the caller's guarantee is passed on.
        return unsafe { copy_in_avx2(src, buf) };
    }
    // SAFETY: the caller's guarantee.
    unsafe { copy_in_words::<Word>(src, buf) }
}

/// Copies `data` into guest memory at `dst` with volatile stores, in the same pieces as
/// [`volatile_copy_in`].
///
/// # Safety
///
/// `dst..dst + data.len()` is mapped, writable memory that does not overlap `data`.
unsafe fn volatile_copy_out(dst: *mut u8, data: &[u8]) {
    #[cfg(target_arch = "x86_64")]
    if std::arch::is_x86_feature_detected!("avx2") {
        // SAFETY: the CPU has AVX2; the caller's guarantee is passed on.
        return unsafe { copy_out_avx2(dst, data) };
    }
    // SAFETY: the caller's guarantee.
    unsafe { copy_out_words::<Word>(dst, data) }
}

/// [`copy_in_words`] with 32-byte AVX2 words.
///
/// # Safety
///
/// As for [`volatile_copy_in`], and the CPU has AVX2.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
unsafe fn copy_in_avx2(src: *const u8, buf: &mut [u8]) {
    // SAFETY: forwarded.
    unsafe { copy_in_words::<std::arch::x86_64::__m256i>(src, buf) }
}

/// [`copy_out_words`] with 32-byte AVX2 words.
///
/// # Safety
///
/// As for [`volatile_copy_out`], and the CPU has AVX2.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
unsafe fn copy_out_avx2(dst: *mut u8, data: &[u8]) {
    // SAFETY: forwarded.
    unsafe { copy_out_words::<std::arch::x86_64::__m256i>(dst, data) }
}

/// [`volatile_copy_in`] with words of type `W` (a plain-data register type).
///
/// # Safety
///
/// As for [`volatile_copy_in`]; `W` can be loaded from any aligned bytes.
#[inline(always)]
unsafe fn copy_in_words<W: Copy>(src: *const u8, buf: &mut [u8]) {
    let word = std::mem::size_of::<W>();
    let len = buf.len();
    let dst = buf.as_mut_ptr();
    let head = src.align_offset(word).min(len);
    // SAFETY: every offset below is < len, inside both ranges; word loads are from
    // word-aligned `src` offsets (past `head`), word stores into `buf` are unaligned.
    unsafe {
        copy_in_small(src, dst, head);
        let mut i = head;
        while i + 4 * word <= len {
            let s = src.add(i).cast::<W>();
            let (a, b, c, d) = (
                s.read_volatile(),
                s.add(1).read_volatile(),
                s.add(2).read_volatile(),
                s.add(3).read_volatile(),
            );
            let o = dst.add(i).cast::<W>();
            o.write_unaligned(a);
            o.add(1).write_unaligned(b);
            o.add(2).write_unaligned(c);
            o.add(3).write_unaligned(d);
            i += 4 * word;
        }
        while i + word <= len {
            dst.add(i)
                .cast::<W>()
                .write_unaligned(src.add(i).cast::<W>().read_volatile());
            i += word;
        }
        copy_in_small(src.add(i), dst.add(i), len - i);
    }
}

/// [`volatile_copy_out`] with words of type `W` (a plain-data register type).
///
/// # Safety
///
/// As for [`volatile_copy_out`]; `W` can be loaded from any bytes.
#[inline(always)]
unsafe fn copy_out_words<W: Copy>(dst: *mut u8, data: &[u8]) {
    let word = std::mem::size_of::<W>();
    let len = data.len();
    let src = data.as_ptr();
    let head = dst.align_offset(word).min(len);
    // SAFETY: as in `copy_in_words`, with the roles of the two ranges swapped.
    unsafe {
        copy_out_small(src, dst, head);
        let mut i = head;
        while i + 4 * word <= len {
            let s = src.add(i).cast::<W>();
            let (a, b, c, d) = (
                s.read_unaligned(),
                s.add(1).read_unaligned(),
                s.add(2).read_unaligned(),
                s.add(3).read_unaligned(),
            );
            let o = dst.add(i).cast::<W>();
            o.write_volatile(a);
            o.add(1).write_volatile(b);
            o.add(2).write_volatile(c);
            o.add(3).write_volatile(d);
            i += 4 * word;
        }
        while i + word <= len {
            dst.add(i)
                .cast::<W>()
                .write_volatile(src.add(i).cast::<W>().read_unaligned());
            i += word;
        }
        copy_out_small(src.add(i), dst.add(i), len - i);
    }
}

/// The ends of [`copy_in_words`]: `n` bytes from guest memory at `src`, with volatile loads
/// of 1, 2 and 4 bytes up to an 8-byte boundary of `src` (one per set bit of the distance,
/// each aligned to its size), then aligned 8-byte words, then 4, 2 and 1 bytes (a small
/// unaligned copy takes a few loads, not one per byte). A copy shorter than the distance to
/// the boundary goes byte by byte.
///
/// # Safety
///
/// As for [`volatile_copy_in`], for the `n` bytes at `src` and `dst`.
#[inline(always)]
unsafe fn copy_in_small(src: *const u8, dst: *mut u8, n: usize) {
    // SAFETY: every offset is < n; each load is aligned to its size at `src + i` (see
    // `small_units`).
    unsafe {
        small_units(src, n, |i, size| match size {
            8 => dst
                .add(i)
                .cast::<u64>()
                .write_unaligned(src.add(i).cast::<u64>().read_volatile()),
            4 => dst
                .add(i)
                .cast::<u32>()
                .write_unaligned(src.add(i).cast::<u32>().read_volatile()),
            2 => dst
                .add(i)
                .cast::<u16>()
                .write_unaligned(src.add(i).cast::<u16>().read_volatile()),
            _ => dst.add(i).write(src.add(i).read_volatile()),
        });
    }
}

/// The ends of [`copy_out_words`]: as [`copy_in_small`] with the roles swapped (aligned
/// volatile stores into guest memory at `dst`).
///
/// # Safety
///
/// As for [`volatile_copy_out`], for the `n` bytes at `src` and `dst`.
#[inline(always)]
unsafe fn copy_out_small(src: *const u8, dst: *mut u8, n: usize) {
    // SAFETY: every offset is < n; each store is aligned to its size at `dst + i` (see
    // `small_units`).
    unsafe {
        small_units(dst, n, |i, size| match size {
            8 => dst
                .add(i)
                .cast::<u64>()
                .write_volatile(src.add(i).cast::<u64>().read_unaligned()),
            4 => dst
                .add(i)
                .cast::<u32>()
                .write_volatile(src.add(i).cast::<u32>().read_unaligned()),
            2 => dst
                .add(i)
                .cast::<u16>()
                .write_volatile(src.add(i).cast::<u16>().read_unaligned()),
            _ => dst.add(i).write_volatile(src.add(i).read()),
        });
    }
}

/// Splits `n` bytes at `guest` (the guest-memory side of a copy) into `unit(offset, size)`
/// calls of 1, 2, 4 or 8 bytes, each aligned to its size at `guest + offset`: units up to
/// the 8-byte boundary (one per set bit of the distance, smallest first, so each leaves the
/// next aligned), 8-byte words, then the rest largest first. Fewer bytes than the distance
/// to the boundary go one by one.
#[inline(always)]
fn small_units(guest: *const u8, n: usize, mut unit: impl FnMut(usize, usize)) {
    let head = guest.align_offset(8);
    let mut i = 0;
    if head > n {
        for b in 0..n {
            unit(b, 1);
        }
        return;
    }
    for size in [1, 2, 4] {
        if head & size != 0 {
            unit(i, size);
            i += size;
        }
    }
    while i + 8 <= n {
        unit(i, 8);
        i += 8;
    }
    for size in [4, 2, 1] {
        if (n - i) & size != 0 {
            unit(i, size);
            i += size;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::GuestRam;
    use crate::hv::{HostPreset, MockConfig, MockHypervisor};

    /// Every start alignment and length around the word sizes (SSE2 and AVX2): the bytes
    /// arrive intact and the bytes around the range are untouched.
    #[test]
    fn copies_move_exactly_the_range_at_every_alignment() {
        let hv =
            MockHypervisor::new(MockConfig::new(HostPreset::Ws2022).with_memory_bytes(1 << 20));
        let ram = GuestRam::new(hv.clone());
        let base = hv.memory_base_gpa() + 0x1000;
        let data: Vec<u8> = (0..300u32)
            .map(|i| (i as u8).wrapping_mul(13) | 1)
            .collect();
        for start in 0..40u64 {
            for len in (0..=70).chain([95, 96, 97, 127, 128, 129, 200]) {
                assert!(ram.write(base, &[0u8; 512]));
                assert!(ram.write(base + start, &data[..len]));
                let mut all = [0u8; 512];
                assert!(ram.read(base, &mut all));
                let s = start as usize;
                assert!(all[..s].iter().all(|&b| b == 0), "{start}/{len}");
                assert_eq!(&all[s..s + len], &data[..len], "{start}/{len}");
                assert!(all[s + len..].iter().all(|&b| b == 0), "{start}/{len}");
                let mut back = vec![0u8; len];
                assert!(ram.read(base + start, &mut back));
                assert_eq!(back, &data[..len], "{start}/{len}");
            }
        }
        let end = hv.memory_base_gpa() + hv.memory_bytes() as u64;
        assert!(!ram.read(end - 4, &mut [0u8; 8]), "past the end of RAM");
    }
}
