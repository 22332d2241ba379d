//! Sense data decoding and the retry/fatal classification of a completed request.

use crate::protocol::{ScsiStatus, SrbStatus};

/// A sense key (SPC). Open newtype.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct SenseKey(pub u8);

impl SenseKey {
    /// NO SENSE.
    pub const NO_SENSE: Self = Self(0x0);
    /// RECOVERED ERROR.
    pub const RECOVERED_ERROR: Self = Self(0x1);
    /// NOT READY.
    pub const NOT_READY: Self = Self(0x2);
    /// MEDIUM ERROR.
    pub const MEDIUM_ERROR: Self = Self(0x3);
    /// HARDWARE ERROR.
    pub const HARDWARE_ERROR: Self = Self(0x4);
    /// ILLEGAL REQUEST.
    pub const ILLEGAL_REQUEST: Self = Self(0x5);
    /// UNIT ATTENTION.
    pub const UNIT_ATTENTION: Self = Self(0x6);
    /// DATA PROTECT.
    pub const DATA_PROTECT: Self = Self(0x7);
    /// ABORTED COMMAND.
    pub const ABORTED_COMMAND: Self = Self(0xB);
}

/// Decoded sense data: key, additional sense code and qualifier.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SenseData {
    /// Sense key.
    pub key: SenseKey,
    /// Additional sense code.
    pub asc: u8,
    /// Additional sense code qualifier.
    pub ascq: u8,
}

/// ASC/ASCQ values the classification looks at (and the mock host produces).
pub mod asc {
    /// 0x04/0x01: logical unit is in the process of becoming ready.
    pub const NOT_READY_BECOMING_READY: (u8, u8) = (0x04, 0x01);
    /// 0x20/0x00: invalid command operation code.
    pub const INVALID_OPCODE: (u8, u8) = (0x20, 0x00);
    /// 0x21/0x00: logical block address out of range.
    pub const LBA_OUT_OF_RANGE: (u8, u8) = (0x21, 0x00);
    /// 0x24/0x00: invalid field in CDB.
    pub const INVALID_FIELD_IN_CDB: (u8, u8) = (0x24, 0x00);
    /// 0x25/0x00: logical unit not supported.
    pub const LUN_NOT_SUPPORTED: (u8, u8) = (0x25, 0x00);
    /// 0x29/0x00: power on, reset or bus device reset occurred.
    pub const POWER_ON_RESET: (u8, u8) = (0x29, 0x00);
    /// 0x2A/0x01: mode parameters changed.
    pub const MODE_PARAMETERS_CHANGED: (u8, u8) = (0x2A, 0x01);
    /// 0x2A/0x09: capacity data has changed.
    pub const CAPACITY_CHANGED: (u8, u8) = (0x2A, 0x09);
    /// 0x3A/0x00: medium not present.
    pub const MEDIUM_NOT_PRESENT: (u8, u8) = (0x3A, 0x00);
    /// 0x3F/0x0E: reported LUNs data has changed.
    pub const REPORTED_LUNS_CHANGED: (u8, u8) = (0x3F, 0x0E);
}

impl SenseData {
    /// Decodes fixed (0x70/0x71) or descriptor (0x72/0x73) format sense data. `None` for other
    /// response codes or data too short to hold the sense key.
    pub fn parse(b: &[u8]) -> Option<Self> {
        let code = *b.first()? & 0x7F;
        match code {
            0x70 | 0x71 => {
                let key = SenseKey(*b.get(2)? & 0x0F);
                // Additional length @7 bounds ASC/ASCQ @12/@13.
                let end = 8 + usize::from(b.get(7).copied().unwrap_or(0));
                let get = |i: usize| {
                    if i < end {
                        b.get(i).copied().unwrap_or(0)
                    } else {
                        0
                    }
                };
                Some(Self {
                    key,
                    asc: get(12),
                    ascq: get(13),
                })
            }
            0x72 | 0x73 => Some(Self {
                key: SenseKey(*b.get(1)? & 0x0F),
                asc: b.get(2).copied().unwrap_or(0),
                ascq: b.get(3).copied().unwrap_or(0),
            }),
            _ => None,
        }
    }
    /// Builds 18 bytes of fixed-format sense data (current error) — for hosts and tests.
    pub fn to_fixed(self) -> [u8; 18] {
        let mut s = [0; 18];
        s[0] = 0x70;
        s[2] = self.key.0 & 0x0F;
        s[7] = 10;
        s[12] = self.asc;
        s[13] = self.ascq;
        s
    }
    /// (ASC, ASCQ).
    pub fn code(&self) -> (u8, u8) {
        (self.asc, self.ascq)
    }
}

/// What the driver should do with a completed request.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Disposition {
    /// The command succeeded (check the transfer length).
    Success,
    /// Transient: send the same command again (bounded by the caller).
    Retry,
    /// Device parameters changed (capacity, LUN inventory, mode pages): re-read the capacity
    /// / rescan, then send the command again.
    RescanAndRetry,
    /// The LUN is gone: remove it.
    LunGone,
    /// Permanent failure for this command.
    Fatal,
}

/// Classifies a completion from its SRB status, SCSI status and (decoded) sense data, following
/// Linux `storvsc_handle_error` and SPC: UNIT ATTENTION, NOT READY "becoming ready", BUSY,
/// TASK SET FULL, ABORTED COMMAND, SRB BUSY / BUS_RESET / REQUEST_FLUSHED / timeouts are
/// retryable; capacity/parameter/inventory changes ask for a rescan first; INVALID_LUN,
/// NO_DEVICE and SELECTION_TIMEOUT mean the LUN is gone; everything else is fatal.
pub fn classify(srb: SrbStatus, scsi: ScsiStatus, sense: Option<SenseData>) -> Disposition {
    match srb.code() {
        SrbStatus::SUCCESS => {
            // A GOOD SRB with a non-GOOD SCSI status still follows the SCSI status.
            if scsi == ScsiStatus::GOOD {
                Disposition::Success
            } else {
                classify_scsi(scsi, sense)
            }
        }
        // Under/overrun: data moved; the caller checks data_transfer_length.
        SrbStatus::DATA_OVERRUN => Disposition::Success,
        SrbStatus::ERROR => classify_scsi(scsi, sense),
        SrbStatus::BUSY
        | SrbStatus::BUS_RESET
        | SrbStatus::REQUEST_FLUSHED
        | SrbStatus::TIMEOUT
        | SrbStatus::COMMAND_TIMEOUT
        | SrbStatus::PENDING => Disposition::Retry,
        SrbStatus::ABORTED => match sense {
            Some(s) if s.key == SenseKey::ILLEGAL_REQUEST => Disposition::Fatal,
            _ => Disposition::Retry,
        },
        SrbStatus::INVALID_LUN | SrbStatus::NO_DEVICE | SrbStatus::SELECTION_TIMEOUT => {
            Disposition::LunGone
        }
        _ => Disposition::Fatal,
    }
}

fn classify_scsi(scsi: ScsiStatus, sense: Option<SenseData>) -> Disposition {
    match scsi {
        ScsiStatus::GOOD => Disposition::Success,
        ScsiStatus::BUSY | ScsiStatus::TASK_SET_FULL => Disposition::Retry,
        ScsiStatus::CHECK_CONDITION => match sense {
            Some(s) => classify_sense(s),
            // CHECK CONDITION without sense: nothing tells us it is transient.
            None => Disposition::Fatal,
        },
        _ => Disposition::Fatal,
    }
}

/// Classifies sense data alone (see [`classify`]).
pub fn classify_sense(s: SenseData) -> Disposition {
    match s.key {
        SenseKey::NO_SENSE | SenseKey::RECOVERED_ERROR => Disposition::Success,
        SenseKey::UNIT_ATTENTION => match s.code() {
            asc::CAPACITY_CHANGED | asc::MODE_PARAMETERS_CHANGED => Disposition::RescanAndRetry,
            (0x3F, 0x03) => Disposition::Retry, // inquiry data changed: plain retry (Linux)
            (0x3F, _) => Disposition::RescanAndRetry,
            _ => Disposition::Retry,
        },
        SenseKey::NOT_READY => match s.code() {
            asc::NOT_READY_BECOMING_READY | (0x04, 0x00) => Disposition::Retry,
            _ => Disposition::Fatal,
        },
        SenseKey::ABORTED_COMMAND => Disposition::Retry,
        _ => Disposition::Fatal,
    }
}
