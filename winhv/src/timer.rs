//! Synthetic timers: four per virtual processor, counting partition reference time and firing
//! either a SynIC message or a direct interrupt.

use core::fmt;

use static_assertions::const_assert_eq;
use zerocopy::{FromBytes, Immutable, IntoBytes, KnownLayout};

use crate::cpu::Cpu;
use crate::cpu::write_plain_register;
use crate::detect::{Features, HypervInfo, Privileges};
use crate::register::SyntheticRegister;
use crate::synic::{HvMessage, MESSAGE_TYPE_TIMER_EXPIRED, SINT_COUNT};

/// Synthetic timers per virtual processor.
pub const STIMER_COUNT: u8 = 4;

/// STIMER_CONFIG bit 0: enabled.
const CONFIG_ENABLE: u64 = 1 << 0;
/// STIMER_CONFIG bit 1: periodic.
const CONFIG_PERIODIC: u64 = 1 << 1;
/// STIMER_CONFIG bit 3: writing a non-zero COUNT enables the timer.
const CONFIG_AUTO_ENABLE: u64 = 1 << 3;
/// STIMER_CONFIG bit 12: direct mode.
const CONFIG_DIRECT: u64 = 1 << 12;

/// How an expiring timer notifies the guest.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TimerDelivery {
    /// A HvMessageTimerExpired message in the SynIC slot of `sint` (1..16; the SINT must be
    /// routed with [`crate::synic::Synic::enable`]).
    Message {
        /// The SINT the message is posted to.
        sint: u8,
    },
    /// An interrupt on `vector` (16..=255), without a message. Needs the direct-mode feature.
    Direct {
        /// The interrupt vector.
        vector: u8,
    },
}

/// Why a timer could not be programmed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TimerError {
    /// The partition lacks the synthetic timer privilege.
    NoTimerPrivilege,
    /// Timer index not in 0..4.
    InvalidTimer(u8),
    /// Message mode needs a SINT in 1..16.
    InvalidSint(u8),
    /// Direct mode needs a vector of at least 16.
    InvalidVector(u8),
    /// Direct mode is not offered by this hypervisor (CPUID 0x40000003 EDX bit 19).
    DirectModeUnavailable,
    /// A period of 0 would stop the timer rather than start it.
    ZeroPeriod,
}

impl fmt::Display for TimerError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::NoTimerPrivilege => f.write_str("partition lacks the synthetic timer privilege"),
            Self::InvalidTimer(n) => write!(f, "synthetic timer {n} does not exist"),
            Self::InvalidSint(s) => write!(f, "SINT {s} cannot deliver timer messages"),
            Self::InvalidVector(v) => write!(f, "interrupt vector {v} is reserved"),
            Self::DirectModeUnavailable => f.write_str("direct-mode synthetic timers unavailable"),
            Self::ZeroPeriod => f.write_str("a timer period must be non-zero"),
        }
    }
}

impl core::error::Error for TimerError {}

/// One synthetic timer of the calling virtual processor.
#[derive(Debug, Clone, Copy)]
pub struct SyntheticTimer {
    index: u8,
    delivery: TimerDelivery,
}

impl SyntheticTimer {
    /// Validates a timer index and delivery mode against what the partition offers.
    pub fn new(info: &HypervInfo, index: u8, delivery: TimerDelivery) -> Result<Self, TimerError> {
        if !info
            .privileges
            .contains(Privileges::ACCESS_SYNTHETIC_TIMER_REGS)
        {
            return Err(TimerError::NoTimerPrivilege);
        }
        if index >= STIMER_COUNT {
            return Err(TimerError::InvalidTimer(index));
        }
        match delivery {
            TimerDelivery::Message { sint } if sint == 0 || sint >= SINT_COUNT => {
                return Err(TimerError::InvalidSint(sint));
            }
            TimerDelivery::Direct { vector } if vector < 16 => {
                return Err(TimerError::InvalidVector(vector));
            }
            TimerDelivery::Direct { .. }
                if !info.features.contains(Features::DIRECT_SYNTHETIC_TIMERS) =>
            {
                return Err(TimerError::DirectModeUnavailable);
            }
            _ => {}
        }
        Ok(Self { index, delivery })
    }

    /// The timer index (0..4).
    pub fn index(&self) -> u8 {
        self.index
    }

    fn config_value(&self, periodic: bool) -> u64 {
        let mut value = CONFIG_ENABLE;
        if periodic {
            value |= CONFIG_PERIODIC;
        }
        match self.delivery {
            TimerDelivery::Message { sint } => value | (u64::from(sint) << 16),
            TimerDelivery::Direct { vector } => value | CONFIG_DIRECT | (u64::from(vector) << 4),
        }
    }

    /// Stops the timer (clears CONFIG, which also disables it; COUNT is left alone).
    pub fn stop(&self, cpu: &impl Cpu) {
        write_plain_register(cpu, SyntheticRegister::StimerConfig(self.index), 0);
    }

    fn program(&self, cpu: &impl Cpu, periodic: bool, count: u64) {
        // The timer must be disabled before its configuration changes.
        self.stop(cpu);
        write_plain_register(cpu, SyntheticRegister::StimerCount(self.index), count);
        write_plain_register(
            cpu,
            SyntheticRegister::StimerConfig(self.index),
            self.config_value(periodic),
        );
    }

    /// Arms a one-shot expiry at absolute reference time `deadline` (100 ns units); a deadline
    /// in the past fires immediately. One-shot timers disable themselves after firing.
    pub fn arm_one_shot(&self, cpu: &impl Cpu, deadline: u64) {
        // A COUNT of 0 means "stopped"; the earliest real deadline is 1.
        self.program(cpu, false, deadline.max(1));
    }

    /// Prepares the timer for repeated one-shot use: CONFIG is written once, disabled and with
    /// auto-enable set, so that each later [`SyntheticTimer::set_deadline`] arms it with a
    /// single COUNT write (one register access per clock event, as Linux programs it).
    pub fn configure_one_shot(&self, cpu: &impl Cpu) {
        self.stop(cpu);
        let config = (self.config_value(false) & !CONFIG_ENABLE) | CONFIG_AUTO_ENABLE;
        write_plain_register(cpu, SyntheticRegister::StimerConfig(self.index), config);
    }

    /// Arms a timer prepared with [`SyntheticTimer::configure_one_shot`] to expire at absolute
    /// reference time `deadline` (in the past: immediately).
    pub fn set_deadline(&self, cpu: &impl Cpu, deadline: u64) {
        write_plain_register(
            cpu,
            SyntheticRegister::StimerCount(self.index),
            deadline.max(1),
        );
    }

    /// Arms a periodic timer firing every `period` reference ticks.
    pub fn arm_periodic(&self, cpu: &impl Cpu, period: u64) -> Result<(), TimerError> {
        if period == 0 {
            return Err(TimerError::ZeroPeriod);
        }
        self.program(cpu, true, period);
        Ok(())
    }
}

/// Payload of HvMessageTimerExpired (type 0x80000010).
#[repr(C)]
#[derive(Debug, Clone, Copy, PartialEq, Eq, FromBytes, IntoBytes, Immutable, KnownLayout)]
pub struct TimerExpiredPayload {
    /// Which timer expired.
    pub timer_index: u32,
    /// Reserved.
    pub reserved: u32,
    /// When it was due (reference time).
    pub expiration_time: u64,
    /// When the message was delivered (reference time).
    pub delivery_time: u64,
}
const_assert_eq!(size_of::<TimerExpiredPayload>(), 24);

impl TimerExpiredPayload {
    /// Decodes a timer-expired message; `None` for another message type, a short payload or a
    /// timer index out of range.
    pub fn parse(message: &HvMessage) -> Option<Self> {
        if message.message_type() != MESSAGE_TYPE_TIMER_EXPIRED {
            return None;
        }
        let (payload, _) = Self::read_from_prefix(message.payload()).ok()?;
        (payload.timer_index < u32::from(STIMER_COUNT)).then_some(payload)
    }
}
