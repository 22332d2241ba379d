//! The synthetic interrupt controller of one virtual processor: message and event-flag pages,
//! synthetic interrupt sources (SINTs) and the end-of-message protocol.

use core::fmt;
use core::sync::atomic::{AtomicU64, Ordering};

use static_assertions::const_assert_eq;
use zerocopy::{FromBytes, Immutable, IntoBytes, KnownLayout};

use crate::cpu::Cpu;
use crate::cpu::write_plain_register;
use crate::detect::{HypervInfo, Privileges};
use crate::hypercall::MAX_MESSAGE_PAYLOAD;
use crate::page::HvPage;
use crate::register::SyntheticRegister;

/// Number of synthetic interrupt sources per virtual processor.
pub const SINT_COUNT: u8 = 16;
/// SINT used by VMBus for channel messages and channel events.
pub const VMBUS_MESSAGE_SINT: u8 = 2;
/// Size of one message slot (and of one event-flags slot).
pub const SLOT_SIZE: usize = 256;
/// Event flags per SINT (2048 bits in a 256-byte slot).
pub const EVENT_FLAGS_PER_SINT: u32 = (SLOT_SIZE * 8) as u32;
/// Message type of an expired synthetic timer (HvMessageTimerExpired).
pub const MESSAGE_TYPE_TIMER_EXPIRED: u32 = 0x8000_0010;

/// Enable bit of SCONTROL, SIMP and SIEFP.
const ENABLE: u64 = 1;
/// SIMP/SIEFP bits 11:1 are reserved and preserved.
const PAGE_REG_PRESERVED: u64 = 0xFFE;
/// SINT bit 16: masked.
const SINT_MASKED: u64 = 1 << 16;
/// SINT bit 17: AutoEOI.
const SINT_AUTO_EOI: u64 = 1 << 17;
/// SINT bit 18: polling.
const SINT_POLLING: u64 = 1 << 18;
/// How often [`Synic::take_message`] re-reads a slot that changed under it before giving up.
const MESSAGE_TAKE_ATTEMPTS: u32 = 8;
/// Flags bit 0 of a message slot: more messages are queued for this SINT.
const MESSAGE_FLAG_PENDING: u8 = 1;

/// Header of a SynIC message slot (the payload follows at offset 16).
#[repr(C)]
#[derive(Debug, Clone, Copy, FromBytes, IntoBytes, Immutable, KnownLayout)]
pub struct HvMessageHeader {
    /// Message type; 0 means the slot is free.
    pub message_type: u32,
    /// Payload size in bytes (≤ 240).
    pub payload_size: u8,
    /// Bit 0: message pending.
    pub flags: u8,
    /// Reserved.
    pub reserved: u16,
    /// Sender partition or port id (0 for timers).
    pub origin: u64,
}
const_assert_eq!(size_of::<HvMessageHeader>(), 16);

/// A message copied out of a SynIC slot, with a validated payload size.
#[derive(Clone)]
pub struct HvMessage {
    header: HvMessageHeader,
    payload: [u8; MAX_MESSAGE_PAYLOAD],
}

impl HvMessage {
    /// Message type (1 for VMBus channel messages).
    pub fn message_type(&self) -> u32 {
        self.header.message_type
    }

    /// Sender id (partition or port; 0 for timers).
    pub fn origin(&self) -> u64 {
        self.header.origin
    }

    /// The payload bytes the sender posted.
    pub fn payload(&self) -> &[u8] {
        &self.payload[..usize::from(self.header.payload_size)]
    }
}

impl fmt::Debug for HvMessage {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("HvMessage")
            .field(
                "message_type",
                &format_args!("{:#x}", self.header.message_type),
            )
            .field("origin", &self.header.origin)
            .field("payload_len", &self.header.payload_size)
            .finish()
    }
}

/// Why the SynIC could not be enabled or a message not read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SynicError {
    /// The partition lacks the SynIC register privilege.
    NoSynicPrivilege,
    /// A message or event-flags page is not 4 KiB aligned, or both are the same page.
    BadPage,
    /// A SINT index is not in 0..16.
    InvalidSint(u8),
    /// An interrupt vector below 16 (x86 reserves them for exceptions).
    InvalidVector(u8),
    /// The slot held a message whose payload size exceeds 240 bytes; the slot was freed and the
    /// message dropped.
    OversizedMessage {
        /// The SINT the message arrived on.
        sint: u8,
        /// The size the slot claimed.
        payload_size: u8,
    },
    /// The slot kept changing while it was being taken (a second consumer, or a misbehaving
    /// hypervisor); nothing was taken.
    SlotUnstable(u8),
    /// An event flag number beyond the 2048 flags of a SIEFP slot.
    InvalidEventFlag(u32),
}

impl fmt::Display for SynicError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::NoSynicPrivilege => f.write_str("partition lacks the SynIC register privilege"),
            Self::BadPage => f.write_str("SynIC pages must be distinct and 4 KiB aligned"),
            Self::InvalidSint(s) => write!(f, "SINT {s} does not exist"),
            Self::InvalidVector(v) => write!(f, "interrupt vector {v} is reserved"),
            Self::SlotUnstable(s) => write!(f, "message slot of SINT {s} kept changing"),
            Self::InvalidEventFlag(n) => write!(f, "event flag {n} is beyond 2048"),
            Self::OversizedMessage { sint, payload_size } => write!(
                f,
                "message on SINT {sint} claims a {payload_size}-byte payload (max 240); dropped"
            ),
        }
    }
}

impl core::error::Error for SynicError {}

/// How one synthetic interrupt source is routed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SintConfig {
    /// SINT index (0..16); VMBus uses [`VMBUS_MESSAGE_SINT`].
    pub sint: u8,
    /// Interrupt vector (16..=255 on x86).
    pub vector: u8,
    /// Acknowledge the interrupt automatically (no APIC EOI needed in the handler).
    pub auto_eoi: bool,
}

impl SintConfig {
    /// A SINT routed to `vector`, with AutoEOI set exactly when the hypervisor does not
    /// deprecate it (CPUID 0x40000004 EAX bit 9).
    pub fn recommended(info: &HypervInfo, sint: u8, vector: u8) -> Self {
        Self {
            sint,
            vector,
            auto_eoi: info.auto_eoi_allowed(),
        }
    }

    pub(crate) fn validate(&self) -> Result<(), SynicError> {
        if self.sint >= SINT_COUNT {
            return Err(SynicError::InvalidSint(self.sint));
        }
        if self.vector < 16 {
            return Err(SynicError::InvalidVector(self.vector));
        }
        Ok(())
    }
}

/// The enabled SynIC of one virtual processor.
///
/// Per-VP state: use it only with the [`Cpu`] of the virtual processor that enabled it (EOM
/// written on another VP acknowledges that VP's SynIC). Dropping it without
/// [`Synic::disable`] leaves the pages with the hypervisor (see [`HvPage::new`]).
///
/// Owns the message page (SIMP) and event-flags page (SIEFP). Both are overlay pages that the
/// hypervisor writes at any time: they are only ever accessed with volatile or atomic
/// operations, and every message is copied out once before it is looked at.
#[must_use = "dropping an enabled SynIC leaks its pages to the hypervisor"]
pub struct Synic {
    simp: HvPage,
    siefp: HvPage,
    configured_sints: u16,
}

// SAFETY: every `&self` method reaches the message and event-flag pages only through atomics
// (64-bit loads and compare-exchange on message slots, atomic bit operations on flags), which
// are sound from any thread; the single-consumer rule of `take_message` is a protocol rule the
// caller keeps (documented there), not a memory-safety one.
unsafe impl Sync for Synic {}

impl Synic {
    /// Enables the SynIC on the calling virtual processor in the documented order: SIMP, SIEFP,
    /// each SINT in `sints` (vector, unmasked, AutoEOI as configured), then SCONTROL.
    ///
    /// The pages are zeroed first. Reserved register bits are preserved.
    pub fn enable(
        cpu: &impl Cpu,
        info: &HypervInfo,
        mut simp: HvPage,
        mut siefp: HvPage,
        sints: &[SintConfig],
    ) -> Result<Self, SynicError> {
        if !info.privileges.contains(Privileges::ACCESS_SYNIC_REGS) {
            return Err(SynicError::NoSynicPrivilege);
        }
        if !simp.is_aligned() || !siefp.is_aligned() || simp.gpa() == siefp.gpa() {
            return Err(SynicError::BadPage);
        }
        for config in sints {
            config.validate()?;
        }
        simp.zero();
        siefp.zero();
        let mut configured_sints = 0u16;
        for (register, page) in [
            (SyntheticRegister::Simp, &simp),
            (SyntheticRegister::Siefp, &siefp),
        ] {
            let old = cpu.read_register(register);
            // SAFETY: `page` is owned by the Synic being built (HvPage contract) and stays
            // reserved for the hypervisor until `disable` turns the overlay off.
            unsafe {
                cpu.write_register(register, (old & PAGE_REG_PRESERVED) | page.gpa() | ENABLE)
            };
        }
        for config in sints {
            let register = SyntheticRegister::Sint(config.sint);
            let old = cpu.read_register(register);
            let mut value = old & !(0xFF | SINT_MASKED | SINT_AUTO_EOI | SINT_POLLING);
            value |= u64::from(config.vector);
            if config.auto_eoi {
                value |= SINT_AUTO_EOI;
            }
            write_plain_register(cpu, register, value);
            configured_sints |= 1 << config.sint;
        }
        let scontrol = cpu.read_register(SyntheticRegister::Scontrol);
        write_plain_register(cpu, SyntheticRegister::Scontrol, scontrol | ENABLE);
        Ok(Self {
            simp,
            siefp,
            configured_sints,
        })
    }

    /// Disables the SynIC in reverse order (mask the SINTs, disable SIMP and SIEFP keeping their
    /// GPNs, clear SCONTROL) and gives the pages back.
    pub fn disable(self, cpu: &impl Cpu) -> (HvPage, HvPage) {
        for sint in 0..SINT_COUNT {
            if self.configured_sints & (1 << sint) != 0 {
                let register = SyntheticRegister::Sint(sint);
                let old = cpu.read_register(register);
                write_plain_register(cpu, register, old | SINT_MASKED);
            }
        }
        for register in [SyntheticRegister::Simp, SyntheticRegister::Siefp] {
            let old = cpu.read_register(register);
            write_plain_register(cpu, register, old & !ENABLE);
        }
        let scontrol = cpu.read_register(SyntheticRegister::Scontrol);
        write_plain_register(cpu, SyntheticRegister::Scontrol, scontrol & !ENABLE);
        (self.simp, self.siefp)
    }

    fn slot_word(&self, sint: u8, word: usize) -> Result<&AtomicU64, SynicError> {
        if sint >= SINT_COUNT {
            return Err(SynicError::InvalidSint(sint));
        }
        debug_assert!(word < SLOT_SIZE / 8);
        // SAFETY: sint < 16 and word < 32, so the 8-byte-aligned word lies inside the message
        // page, which lives as long as `self`. The hypervisor writes the page concurrently; this
        // crate only ever accesses it through these 64-bit atomics (no mixed-size access).
        Ok(unsafe {
            AtomicU64::from_ptr(
                self.simp
                    .as_ptr()
                    .add(usize::from(sint) * SLOT_SIZE + word * 8)
                    .cast::<u64>(),
            )
        })
    }

    /// Takes the message waiting in `sint`'s slot, if any, following the EOM protocol:
    /// load the slot's first word (type, size, flags) with acquire ordering and copy the rest
    /// once; free the slot with a compare-exchange on that first word (so a message or pending
    /// flag written meanwhile is never wiped); then — after the full barrier that implies —
    /// re-read the pending flag and write EOM if it is set, so the hypervisor delivers the next
    /// queued message.
    ///
    /// The copy's payload size is validated after the slot is freed; an oversized one is
    /// reported as [`SynicError::OversizedMessage`]. Callable from an interrupt handler. Each
    /// SINT must have a single consumer at a time (the handler on the VP that owns this SynIC,
    /// or code that runs with that handler masked): two consumers could both copy one message.
    pub fn take_message(&self, cpu: &impl Cpu, sint: u8) -> Result<Option<HvMessage>, SynicError> {
        let first = self.slot_word(sint, 0)?;
        // The hypervisor only fills a free slot and only sets the pending flag of a full one,
        // so the compare-exchange below fails at most a few times; bound it anyway.
        for _ in 0..MESSAGE_TAKE_ATTEMPTS {
            let word0 = first.load(Ordering::Acquire);
            if word0 as u32 == 0 {
                return Ok(None);
            }
            let mut raw = [0u64; SLOT_SIZE / 8];
            raw[0] = word0;
            for (i, word) in raw.iter_mut().enumerate().skip(1) {
                *word = self.slot_word(sint, i)?.load(Ordering::Relaxed);
            }
            // Free the slot: clear the type, keep the size and flags as they were.
            if first
                .compare_exchange(
                    word0,
                    word0 & !0xFFFF_FFFF,
                    Ordering::SeqCst,
                    Ordering::SeqCst,
                )
                .is_err()
            {
                continue;
            }
            let flags = (first.load(Ordering::SeqCst) >> 40) as u8;
            if flags & MESSAGE_FLAG_PENDING != 0 {
                write_plain_register(cpu, SyntheticRegister::Eom, 0);
            }
            let bytes = raw.as_bytes();
            let (header, rest) = HvMessageHeader::read_from_prefix(bytes)
                .map_err(|_| SynicError::InvalidSint(sint))?;
            if usize::from(header.payload_size) > MAX_MESSAGE_PAYLOAD {
                return Err(SynicError::OversizedMessage {
                    sint,
                    payload_size: header.payload_size,
                });
            }
            let mut payload = [0u8; MAX_MESSAGE_PAYLOAD];
            payload.copy_from_slice(&rest[..MAX_MESSAGE_PAYLOAD]);
            return Ok(Some(HvMessage { header, payload }));
        }
        Err(SynicError::SlotUnstable(sint))
    }

    fn event_word(&self, sint: u8, word: usize) -> &AtomicU64 {
        debug_assert!(sint < SINT_COUNT && word < SLOT_SIZE / 8);
        // SAFETY: callers keep sint < 16 and word < 32, so the 8-byte-aligned word lies inside
        // the event-flags page, which lives as long as `self` and is only accessed atomically
        // (the hypervisor sets bits with locked operations).
        unsafe {
            AtomicU64::from_ptr(
                self.siefp
                    .as_ptr()
                    .add(usize::from(sint) * SLOT_SIZE + word * 8)
                    .cast::<u64>(),
            )
        }
    }

    /// Atomically tests and clears event flag `flag` of `sint`; returns whether it was set.
    pub fn test_and_clear_event_flag(&self, sint: u8, flag: u32) -> Result<bool, SynicError> {
        if sint >= SINT_COUNT {
            return Err(SynicError::InvalidSint(sint));
        }
        if flag >= EVENT_FLAGS_PER_SINT {
            return Err(SynicError::InvalidEventFlag(flag));
        }
        let bit = 1u64 << (flag % 64);
        let old = self
            .event_word(sint, (flag / 64) as usize)
            .fetch_and(!bit, Ordering::SeqCst);
        Ok(old & bit != 0)
    }

    /// Atomically takes every set event flag of `sint` below `flag_limit` (at most 2048) and
    /// calls `on_flag` with each flag number in ascending order.
    ///
    /// Each 64-flag word is cleared with one atomic exchange of exactly the bits seen, so a flag
    /// the hypervisor sets during the scan is either reported now or left for the next scan.
    pub fn take_event_flags(
        &self,
        sint: u8,
        flag_limit: u32,
        mut on_flag: impl FnMut(u32),
    ) -> Result<(), SynicError> {
        if sint >= SINT_COUNT {
            return Err(SynicError::InvalidSint(sint));
        }
        let limit = flag_limit.min(EVENT_FLAGS_PER_SINT);
        for word_index in 0..limit.div_ceil(64) {
            let base = word_index * 64;
            let in_range = if limit - base >= 64 {
                u64::MAX
            } else {
                (1u64 << (limit - base)) - 1
            };
            let word = self.event_word(sint, word_index as usize);
            if word.load(Ordering::Relaxed) & in_range == 0 {
                continue;
            }
            let mut bits = word.fetch_and(!in_range, Ordering::SeqCst) & in_range;
            while bits != 0 {
                let bit = bits.trailing_zeros();
                bits &= bits - 1;
                on_flag(base + bit);
            }
        }
        Ok(())
    }
}
