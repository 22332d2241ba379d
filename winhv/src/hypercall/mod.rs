//! Enabling the hypercall interface and issuing typed hypercalls.

mod control;
pub mod protocol;

use core::fmt;

use bitflags::bitflags;
use zerocopy::IntoBytes;

pub use control::{HypercallCode, HypercallControl, HypercallResult, MAX_REP_COUNT};
pub use protocol::MAX_MESSAGE_PAYLOAD;
use protocol::{
    FlushVirtualAddressSpaceInput, PostMessageInput, SendSyntheticClusterIpiInput, SignalEventInput,
};

use crate::cpu::Cpu;
use crate::cpu::write_plain_register;
use crate::page::{HV_PAGE_SIZE, HvPage};
use crate::register::SyntheticRegister;
use crate::status::{HvError, HvStatus};

/// HYPERCALL register bit 0: the hypercall page is enabled.
const HYPERCALL_ENABLE: u64 = 1 << 0;
/// HYPERCALL register bit 1: locked until reset.
const HYPERCALL_LOCKED: u64 = 1 << 1;
/// HYPERCALL register bits 11:2, reserved and preserved.
const HYPERCALL_PRESERVED: u64 = 0xFFC;

/// Why the hypercall page could not be enabled.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HypercallSetupError {
    /// The page address is not 4 KiB aligned.
    Misaligned(u64),
    /// The enable bit did not stick: GUEST_OS_ID is still 0.
    GuestOsIdNotSet,
    /// The register is locked to another page by an earlier boot stage.
    Locked {
        /// The guest page number the register is locked to.
        locked_gpn: u64,
    },
}

impl fmt::Display for HypercallSetupError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Misaligned(gpa) => write!(f, "hypercall page GPA {gpa:#x} is not page aligned"),
            Self::GuestOsIdNotSet => {
                f.write_str("hypercall page did not enable: GUEST_OS_ID must be written first")
            }
            Self::Locked { locked_gpn } => {
                write!(f, "hypercall register is locked to GPN {locked_gpn:#x}")
            }
        }
    }
}

impl core::error::Error for HypercallSetupError {}

/// Enables the hypercall page at `gpa` (x86_64).
///
/// The page is an overlay: while enabled, the hypervisor's code hides whatever RAM is at that
/// address. Reads the register back to confirm the enable bit took (it stays clear while
/// GUEST_OS_ID is 0). Call once per partition, after [`crate::GuestOsId::write`].
///
/// # Safety
///
/// `gpa` names a page reserved for the hypervisor until [`disable_hypercall_page`] (or
/// forever): nothing else uses the RAM behind it, and it is mapped executable at the address
/// given to the [`Cpu`] implementation that calls through it.
pub unsafe fn enable_hypercall_page(cpu: &impl Cpu, gpa: u64) -> Result<(), HypercallSetupError> {
    if !gpa.is_multiple_of(HV_PAGE_SIZE as u64) {
        return Err(HypercallSetupError::Misaligned(gpa));
    }
    let old = cpu.read_register(SyntheticRegister::Hypercall);
    if old & HYPERCALL_LOCKED != 0 {
        if old & HYPERCALL_ENABLE != 0 && old >> 12 == gpa >> 12 {
            return Ok(());
        }
        return Err(HypercallSetupError::Locked {
            locked_gpn: old >> 12,
        });
    }
    let value = (old & HYPERCALL_PRESERVED) | gpa | HYPERCALL_ENABLE;
    // SAFETY: the caller reserves the page for the hypervisor (this function's contract).
    unsafe { cpu.write_register(SyntheticRegister::Hypercall, value) };
    if cpu.read_register(SyntheticRegister::Hypercall) & HYPERCALL_ENABLE == 0 {
        return Err(HypercallSetupError::GuestOsIdNotSet);
    }
    Ok(())
}

/// Disables the hypercall page, restoring the RAM it covered. The GPN is kept.
pub fn disable_hypercall_page(cpu: &impl Cpu) {
    let old = cpu.read_register(SyntheticRegister::Hypercall);
    write_plain_register(cpu, SyntheticRegister::Hypercall, old & !HYPERCALL_ENABLE);
}

/// Why a typed hypercall was not issued or did not succeed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HypercallError {
    /// The hypervisor returned a failure status.
    Hv(HvError),
    /// An argument breaks a rule the hypervisor would reject it for; nothing was issued.
    InvalidArgument(&'static str),
    /// A rep hypercall reported success without completing more reps (or more reps than
    /// asked); it was not reissued, to avoid looping forever.
    NoProgress {
        /// Reps completed before the call.
        start: u16,
        /// Reps the hypervisor reported completed.
        reported: u16,
    },
}

impl From<HvError> for HypercallError {
    fn from(e: HvError) -> Self {
        Self::Hv(e)
    }
}

impl HypercallError {
    /// Whether retrying the same call may succeed (see [`HvStatus::is_transient`]).
    pub fn is_transient(&self) -> bool {
        matches!(self, Self::Hv(e) if e.is_transient())
    }
}

impl fmt::Display for HypercallError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Hv(e) => e.fmt(f),
            Self::InvalidArgument(why) => write!(f, "invalid hypercall argument: {why}"),
            Self::NoProgress { start, reported } => write!(
                f,
                "rep hypercall made no progress (from rep {start}, hypervisor reported {reported})"
            ),
        }
    }
}

impl core::error::Error for HypercallError {}

bitflags! {
    /// HV_FLUSH_* flags of the TLB flush hypercalls.
    #[derive(Debug, Clone, Copy, PartialEq, Eq)]
    pub struct FlushFlags: u64 {
        /// Flush on every virtual processor (the processor mask is ignored).
        const ALL_PROCESSORS = 1 << 0;
        /// Flush every address space (the address space is ignored).
        const ALL_VIRTUAL_ADDRESS_SPACES = 1 << 1;
        /// Only flush non-global mappings.
        const NON_GLOBAL_MAPPINGS_ONLY = 1 << 2;
    }
}

/// Most pages one GVA-list entry can add after its first page (12 bits).
pub const MAX_ADDITIONAL_PAGES: u16 = 0x0FFF;

/// One entry of HvCallFlushVirtualAddressList: a page-aligned virtual address and how many
/// following pages to flush with it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct GvaRange {
    start: u64,
    additional_pages: u16,
}

impl GvaRange {
    /// The page holding `start` and `additional_pages` pages after it, or `None` if more than
    /// [`MAX_ADDITIONAL_PAGES`] are asked for (split such ranges into several entries).
    pub const fn new(start: u64, additional_pages: u16) -> Option<Self> {
        if additional_pages > MAX_ADDITIONAL_PAGES {
            return None;
        }
        Some(Self {
            start: start & !0xFFF,
            additional_pages,
        })
    }

    /// First page's virtual address.
    pub const fn start(self) -> u64 {
        self.start
    }

    /// Pages flushed after the first one.
    pub const fn additional_pages(self) -> u16 {
        self.additional_pages
    }

    /// The wire encoding: bits 63:12 the page, bits 11:0 the additional page count.
    pub const fn encode(self) -> u64 {
        self.start | self.additional_pages as u64
    }
}

/// Header size of the flush hypercalls.
const FLUSH_HEADER_SIZE: usize = size_of::<FlushVirtualAddressSpaceInput>();
/// GVA entries that fit in one input page after the header.
pub const MAX_FLUSH_LIST_ENTRIES_PER_CALL: usize = (HV_PAGE_SIZE - FLUSH_HEADER_SIZE) / 8;

/// The typed hypercalls of one virtual processor, issued through its private input and output
/// parameter pages (the common practice: one pair per CPU, used with interrupts disabled).
pub struct Hypercalls<C: Cpu> {
    cpu: C,
    input: HvPage,
    output: HvPage,
}

impl<C: Cpu> Hypercalls<C> {
    /// Creates the hypercall interface of one virtual processor.
    ///
    /// `input` and `output` must be ordinary RAM pages (not overlay pages such as the SynIC or
    /// TSC pages), distinct, and 4 KiB aligned. The hypercall page must already be enabled.
    pub fn new(cpu: C, input: HvPage, output: HvPage) -> Result<Self, HypercallError> {
        if !input.is_aligned() || !output.is_aligned() {
            return Err(HypercallError::InvalidArgument(
                "hypercall parameter pages must be 4 KiB aligned",
            ));
        }
        if input.gpa() == output.gpa() {
            return Err(HypercallError::InvalidArgument(
                "hypercall input and output pages must not overlap",
            ));
        }
        Ok(Self { cpu, input, output })
    }

    /// The processor these hypercalls are issued on.
    pub fn cpu(&self) -> &C {
        &self.cpu
    }

    /// Gives back the processor and the two parameter pages.
    pub fn into_parts(self) -> (C, HvPage, HvPage) {
        (self.cpu, self.input, self.output)
    }

    /// Issues a slow call whose input block is `input` (copied to the input page).
    fn call_with_input(&mut self, control: HypercallControl, input: &[u8]) -> HypercallResult {
        // The callers' blocks are all far smaller than a page; `write_at` cannot fail here.
        let copied = self.input.write_at(0, input);
        debug_assert!(copied);
        // SAFETY: the input page holds the fully initialised block just written, the output page
        // is owned by this value and not accessed during the call, and both are named by their
        // true GPAs (HvPage contract).
        let raw = unsafe {
            self.cpu
                .hypercall(control.raw(), self.input.gpa(), self.output.gpa())
        };
        HypercallResult::from_raw(raw)
    }

    /// HvCallPostMessage: posts `payload` (≤ 240 bytes) with `message_type` to the port behind
    /// `connection_id`.
    ///
    /// Returns the hypervisor's status as an error on failure. `INSUFFICIENT_BUFFERS` means the
    /// receiver's queue is full and is transient: see [`retry_transient`].
    pub fn post_message(
        &mut self,
        connection_id: u32,
        message_type: u32,
        payload: &[u8],
    ) -> Result<(), HypercallError> {
        if payload.len() > MAX_MESSAGE_PAYLOAD {
            return Err(HypercallError::InvalidArgument(
                "message payload exceeds 240 bytes",
            ));
        }
        if message_type == 0 || message_type & (1 << 31) != 0 {
            return Err(HypercallError::InvalidArgument(
                "message type must be non-zero with bit 31 clear",
            ));
        }
        if connection_id >> 24 != 0 {
            return Err(HypercallError::InvalidArgument(
                "connection id must fit in 24 bits",
            ));
        }
        let mut input = PostMessageInput {
            connection_id,
            reserved: 0,
            message_type,
            payload_size: payload.len() as u32,
            payload: [0; MAX_MESSAGE_PAYLOAD],
        };
        input.payload[..payload.len()].copy_from_slice(payload);
        let control = HypercallControl::new(HypercallCode::POST_MESSAGE);
        Ok(self
            .call_with_input(control, input.as_bytes())
            .status
            .result()?)
    }

    /// HvCallSignalEvent in its fast form: sets flag `flag_number` of the event port behind
    /// `connection_id` (VMBus uses flag 0) and interrupts its owner.
    pub fn signal_event(&self, connection_id: u32, flag_number: u16) -> Result<(), HvError> {
        signal_event(&self.cpu, connection_id, flag_number)
    }

    /// HvCallFlushVirtualAddressSpace: flushes all TLB entries of an address space (or of all of
    /// them) on the processors in `processor_mask` (or all of them).
    pub fn flush_virtual_address_space(
        &mut self,
        address_space: u64,
        flags: FlushFlags,
        processor_mask: u64,
    ) -> Result<(), HypercallError> {
        let input = FlushVirtualAddressSpaceInput {
            address_space,
            flags: flags.bits(),
            processor_mask,
        };
        let control = HypercallControl::new(HypercallCode::FLUSH_VIRTUAL_ADDRESS_SPACE);
        Ok(self
            .call_with_input(control, input.as_bytes())
            .status
            .result()?)
    }

    /// HvCallFlushVirtualAddressList: flushes the listed virtual address ranges.
    ///
    /// Splits the list into calls of at most [`MAX_FLUSH_LIST_ENTRIES_PER_CALL`] entries and
    /// continues from the reps completed when the hypervisor stops a rep call early.
    pub fn flush_virtual_address_list(
        &mut self,
        address_space: u64,
        flags: FlushFlags,
        processor_mask: u64,
        ranges: &[GvaRange],
    ) -> Result<(), HypercallError> {
        let header = FlushVirtualAddressSpaceInput {
            address_space,
            flags: flags.bits(),
            processor_mask,
        };
        for chunk in ranges.chunks(MAX_FLUSH_LIST_ENTRIES_PER_CALL) {
            self.input.write_at(0, header.as_bytes());
            for (i, range) in chunk.iter().enumerate() {
                self.input
                    .write_at(FLUSH_HEADER_SIZE + 8 * i, &range.encode().to_le_bytes());
            }
            let count = chunk.len() as u16;
            let mut start = 0u16;
            // Each round either completes more reps or returns: at most `count` rounds.
            while start < count {
                let control = HypercallControl::new(HypercallCode::FLUSH_VIRTUAL_ADDRESS_LIST)
                    .with_rep_count(count)
                    .with_rep_start(start);
                // SAFETY: the input page holds the header and `count` entries written above; the
                // output page is owned by this value (HvPage contract).
                let raw = unsafe {
                    self.cpu
                        .hypercall(control.raw(), self.input.gpa(), self.output.gpa())
                };
                let result = HypercallResult::from_raw(raw);
                let done = result.reps_completed;
                if !result.status.is_success() && result.status != HvStatus::TIMEOUT {
                    return Err(HypercallError::Hv(HvError(result.status)));
                }
                if done <= start || done > count {
                    // No progress (or a nonsensical count): give up rather than loop forever.
                    return Err(HypercallError::NoProgress {
                        start,
                        reported: done,
                    });
                }
                start = done;
            }
        }
        Ok(())
    }

    /// HvCallSendSyntheticClusterIpi in its fast form: sends `vector` to the processors in
    /// `processor_mask` (bit n = VP n, VPs 0..=63).
    pub fn send_synthetic_cluster_ipi(
        &self,
        vector: u8,
        processor_mask: u64,
    ) -> Result<(), HypercallError> {
        send_synthetic_cluster_ipi(&self.cpu, vector, processor_mask)
    }
}

/// HvCallSignalEvent, fast form (needs no parameter page; safe in interrupt context).
pub fn signal_event(cpu: &impl Cpu, connection_id: u32, flag_number: u16) -> Result<(), HvError> {
    let input = SignalEventInput {
        connection_id,
        flag_number,
        reserved: 0,
    };
    let word = u64::from_le_bytes(input.as_bytes().try_into().unwrap_or([0; 8]));
    let control = HypercallControl::new(HypercallCode::SIGNAL_EVENT).fast();
    HypercallResult::from_raw(cpu.fast_hypercall(control.raw(), word, 0))
        .status
        .result()
}

/// HvCallSendSyntheticClusterIpi, fast form.
pub fn send_synthetic_cluster_ipi(
    cpu: &impl Cpu,
    vector: u8,
    processor_mask: u64,
) -> Result<(), HypercallError> {
    if vector < 0x10 {
        return Err(HypercallError::InvalidArgument(
            "IPI vector must be at least 0x10",
        ));
    }
    let input = SendSyntheticClusterIpiInput {
        vector: u32::from(vector),
        target_vtl: 0,
        reserved: [0; 3],
        processor_mask,
    };
    let bytes = input.as_bytes();
    let word0 = u64::from_le_bytes(bytes[0..8].try_into().unwrap_or([0; 8]));
    let word1 = u64::from_le_bytes(bytes[8..16].try_into().unwrap_or([0; 8]));
    let control = HypercallControl::new(HypercallCode::SEND_SYNTHETIC_CLUSTER_IPI).fast();
    Ok(
        HypercallResult::from_raw(cpu.fast_hypercall(control.raw(), word0, word1))
            .status
            .result()?,
    )
}

/// Runs `call` until it succeeds, fails with a non-transient error, or `attempts` calls have
/// been made, calling `backoff` with the attempt number between tries.
///
/// The protocol leaves the retry policy to the caller: VMBus retries HvCallPostMessage on
/// `INSUFFICIENT_BUFFERS` with a growing delay (Linux: up to 20 tries). The last error is
/// returned when the attempts run out.
pub fn retry_transient<T>(
    attempts: u32,
    mut call: impl FnMut() -> Result<T, HypercallError>,
    mut backoff: impl FnMut(u32),
) -> Result<T, HypercallError> {
    let mut attempt = 1;
    loop {
        match call() {
            Err(e) if e.is_transient() && attempt < attempts => {
                backoff(attempt);
                attempt += 1;
            }
            other => return other,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retry_stops_on_success_permanent_error_or_budget() {
        let transient = HypercallError::Hv(HvError(HvStatus::INSUFFICIENT_BUFFERS));
        let permanent = HypercallError::Hv(HvError(HvStatus::INVALID_CONNECTION_ID));
        let (mut calls, mut backoffs) = (0, 0);
        let r = retry_transient(
            5,
            || {
                calls += 1;
                if calls < 3 { Err(transient) } else { Ok(calls) }
            },
            |_| backoffs += 1,
        );
        assert_eq!((r, calls, backoffs), (Ok(3), 3, 2));
        calls = 0;
        let r: Result<(), _> = retry_transient(
            5,
            || {
                calls += 1;
                Err(permanent)
            },
            |_| {},
        );
        assert_eq!((r, calls), (Err(permanent), 1));
        calls = 0;
        let r: Result<(), _> = retry_transient(
            4,
            || {
                calls += 1;
                Err(transient)
            },
            |_| {},
        );
        assert_eq!((r, calls), (Err(transient), 4));
    }

    #[test]
    fn gva_range_encoding() {
        let r = GvaRange::new(0xFFFF_8000_1234_5678, 0xFFF).unwrap();
        assert_eq!(r.encode(), 0xFFFF_8000_1234_5FFF);
        assert_eq!(GvaRange::new(0, 0x1000), None, "13 bits do not fit");
    }
}
