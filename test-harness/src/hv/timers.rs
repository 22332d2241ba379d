//! Synthetic timers: STIMERn_CONFIG/COUNT semantics and expiry bookkeeping
//! (protocol/vmbus-core.md §2.4). Firing (message or interrupt) is done by the caller.

/// CONFIG enabled bit.
pub const ENABLED: u64 = 1 << 0;
/// CONFIG periodic bit.
pub const PERIODIC: u64 = 1 << 1;
/// CONFIG auto-enable bit.
pub const AUTO_ENABLE: u64 = 1 << 3;
/// CONFIG direct-mode bit.
pub const DIRECT: u64 = 1 << 12;
/// CONFIG bits that must be zero: 15:13 and 63:20.
pub const RESERVED: u64 = (0b111 << 13) | !0xF_FFFF;
/// Message type of a timer expiry message.
pub const TIMER_EXPIRED_MESSAGE: u32 = 0x8000_0010;

/// One synthetic timer.
#[derive(Debug, Default, Clone, Copy)]
pub(crate) struct Timer {
    pub config: u64,
    pub count: u64,
    /// Next expiry in reference time while armed.
    pub expiry: Option<u64>,
}

/// What a fired timer must do.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Fire {
    /// Raise this APIC vector (direct mode).
    Interrupt(u8),
    /// Queue a timer-expired message to this SINT.
    Message { sint: u8, expiration: u64 },
}

impl Timer {
    fn enabled(&self) -> bool {
        self.config & ENABLED != 0
    }

    fn direct(&self) -> bool {
        self.config & DIRECT != 0
    }

    /// SINT of a message-mode timer.
    pub(crate) fn sint(&self) -> u8 {
        ((self.config >> 16) & 0xF) as u8
    }

    /// Applies a CONFIG write (reserved bits and direct-mode support already checked).
    /// Returns a note when the write was not taken as written.
    pub(crate) fn write_config(&mut self, value: u64, now: u64) -> Option<String> {
        self.config = value;
        let mut note = None;
        if self.enabled() && !self.direct() && self.sint() == 0 {
            // A message-mode timer needs a SINT: the enable bit stays clear.
            self.config &= !ENABLED;
            note = Some("STIMER_CONFIG enabled in message mode with SINT 0: stays disabled".into());
        }
        self.arm(now);
        note
    }

    /// Applies a COUNT write.
    pub(crate) fn write_count(&mut self, value: u64, now: u64) {
        self.count = value;
        if value == 0 {
            self.config &= !ENABLED;
        } else if self.config & AUTO_ENABLE != 0 && (self.direct() || self.sint() != 0) {
            self.config |= ENABLED;
        }
        self.arm(now);
    }

    fn arm(&mut self, now: u64) {
        self.expiry = if !self.enabled() || self.count == 0 {
            None
        } else if self.config & PERIODIC != 0 {
            Some(now.saturating_add(self.count))
        } else {
            Some(self.count)
        };
    }

    /// Fires the timer if it expires at or before `limit`; updates it (re-arm periodic,
    /// disable one-shot) and says what to deliver.
    pub(crate) fn fire(&mut self, index_expiry: u64) -> Fire {
        if self.config & PERIODIC != 0 {
            self.expiry = Some(index_expiry.saturating_add(self.count.max(1)));
        } else {
            self.expiry = None;
            self.config &= !ENABLED;
        }
        if self.direct() {
            Fire::Interrupt(((self.config >> 4) & 0xFF) as u8)
        } else {
            Fire::Message {
                sint: self.sint(),
                expiration: index_expiry,
            }
        }
    }
}

/// The 24-byte payload of a timer-expired message.
pub(crate) fn expiry_payload(index: u8, expiration: u64, delivery: u64) -> Vec<u8> {
    let mut p = Vec::with_capacity(24);
    p.extend_from_slice(&u32::from(index).to_le_bytes());
    p.extend_from_slice(&0u32.to_le_bytes());
    p.extend_from_slice(&expiration.to_le_bytes());
    p.extend_from_slice(&delivery.to_le_bytes());
    p
}
