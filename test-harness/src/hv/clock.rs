//! The deterministic virtual clock: reference time in 100 ns units, the TSC derived from it,
//! and the reference TSC page contents (protocol/vmbus-core.md §2.6).

use std::sync::atomic::Ordering;

use super::memory::GuestMemory;
use super::synic::enabled_page;

/// TSC value at reference time 0 (non-zero so that the page's offset is exercised).
const TSC_AT_ZERO: u64 = 250_000_000_000;
/// How far the TSC jumps when the page is updated in the middle of a guest read (as after a
/// live migration to a host whose TSC differs): a reader that mixes the old offset with the
/// new TSC is off by this many TSC ticks.
const TSC_REBASE_STEP: u64 = 1_000_000_000_000;

/// Reference time, TSC mapping and the REFERENCE_TSC MSR.
#[derive(Debug)]
pub(crate) struct Clock {
    /// Current reference time (100 ns units).
    pub now: u64,
    tsc_frequency: u64,
    /// REFERENCE_TSC MSR value.
    pub reference_tsc_msr: u64,
    sequence: u32,
    /// Whether the hypervisor currently publishes a valid page.
    pub page_valid: bool,
    /// Rewrite the page with a new sequence during the next TSC read.
    pub update_during_next_read: bool,
    /// TSC value at reference time 0; moved by [`Clock::rebase_tsc`].
    tsc_at_zero: u64,
    /// TIME_REF_COUNT reads so far (tests check the TSC page spares them).
    pub counter_reads: u64,
}

impl Clock {
    /// # Panics
    ///
    /// Below 10 MHz, which the TSC page's 64-bit scale cannot express.
    pub(crate) fn new(tsc_frequency: u64) -> Self {
        assert!(
            tsc_frequency >= 10_000_000,
            "TSC frequency {tsc_frequency} Hz below 10 MHz cannot be expressed by the TSC page"
        );
        Self {
            now: 0,
            tsc_frequency,
            reference_tsc_msr: 0,
            sequence: 0,
            page_valid: true,
            update_during_next_read: false,
            tsc_at_zero: TSC_AT_ZERO,
            counter_reads: 0,
        }
    }

    /// The TSC at the current reference time.
    pub(crate) fn tsc(&self) -> u64 {
        let ticks = u128::from(self.now) * u128::from(self.tsc_frequency) / 10_000_000;
        self.tsc_at_zero.wrapping_add(ticks as u64)
    }

    /// Scale such that `(tsc * scale) >> 64` counts 100 ns units; rounded up so that whole
    /// ticks come out exactly for frequencies dividing evenly. A 10 MHz TSC would need 2^64:
    /// saturated (off by far less than a tick).
    pub(crate) fn scale(&self) -> u64 {
        let num = 10_000_000u128 << 64;
        num.div_ceil(u128::from(self.tsc_frequency))
            .min(u128::from(u64::MAX)) as u64
    }

    /// Offset such that `((tsc * scale) >> 64) + offset` is the reference time.
    pub(crate) fn offset(&self) -> i64 {
        let at_zero = ((u128::from(self.tsc_at_zero) * u128::from(self.scale())) >> 64) as u64;
        0i64.wrapping_sub(at_zero as i64)
    }

    /// Moves the TSC (not reference time) by [`TSC_REBASE_STEP`] and republishes the page with
    /// the matching offset under a new sequence.
    pub(crate) fn rebase_tsc(&mut self, mem: &GuestMemory) {
        self.tsc_at_zero = self.tsc_at_zero.wrapping_add(TSC_REBASE_STEP);
        self.publish(mem);
    }

    /// (Re)writes the TSC page if enabled: scale and offset, then a new non-zero sequence, or
    /// sequence 0 when invalid.
    pub(crate) fn publish(&mut self, mem: &GuestMemory) {
        let Some(page) = enabled_page(self.reference_tsc_msr) else {
            return;
        };
        if !mem.in_ram(page, 4096) {
            return;
        }
        let seq = mem.atomic_u32(page);
        if !self.page_valid {
            seq.store(0, Ordering::Release);
            return;
        }
        // Invalidate while updating, as the hypervisor does.
        seq.store(0, Ordering::Release);
        mem.atomic_u64(page + 8)
            .store(self.scale(), Ordering::Relaxed);
        mem.atomic_u64(page + 16)
            .store(self.offset() as u64, Ordering::Relaxed);
        self.sequence = self.sequence.wrapping_add(1);
        if self.sequence == 0 || self.sequence == u32::MAX {
            self.sequence = 1;
        }
        seq.store(self.sequence, Ordering::Release);
    }
}
