//! EXECUTE_SRB requests (devices §3.4, §3.7, §3.10): building the vstor packet for a SCSI
//! command, decoding its completion and splitting large transfers by the host's limit.
//! Transaction ids are the channel's business ([`vmbus_guest::RequestTable`]).

use zerocopy::byteorder::little_endian::U32;
use zerocopy::{FromBytes, FromZeros};

use crate::error::StorError;
use crate::protocol::{
    DataDirection, NtStatus, Operation, ScsiStatus, SrbStatus, VSTOR_PACKET_SIZE_PRE_WIN8,
    VmscsiRequest, VstorPacket, VstorVersion, srb_flags,
};
use crate::scsi::{Cdb, Disposition, SenseData, classify};

/// SRB timeout Linux puts in `time_out_value` (seconds).
pub const SRB_TIMEOUT_SECONDS: u32 = 60;
/// `queue_tag` for tagged requests (Linux `SP_UNTAGGED`).
pub const QUEUE_TAG_UNTAGGED: u8 = 0xFF;
/// `queue_action` for simple tagged requests.
pub const QUEUE_ACTION_SIMPLE: u8 = 0x20;
/// Page size of GPA-direct ranges.
pub const PAGE_SIZE: usize = 4096;

/// Where a LUN sits on the synthetic SCSI controller. Hyper-V exposes disks as path 0 /
/// target 0 / LUN n on the SCSI controller; IDE controllers take path/target from the offer.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct LunAddress {
    /// Path id (channel / bus; Linux allows 0..8).
    pub path_id: u8,
    /// Target id (Linux: 0..2 for SCSI).
    pub target_id: u8,
    /// LUN (0..255).
    pub lun: u8,
}

impl LunAddress {
    /// Target 0, path 0, `lun`.
    pub const fn lun(lun: u8) -> Self {
        Self {
            path_id: 0,
            target_id: 0,
            lun,
        }
    }
}

/// One SCSI command to execute.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ScsiRequest {
    /// The LUN addressed.
    pub addr: LunAddress,
    /// The command.
    pub cdb: Cdb,
    /// Direction of the data phase.
    pub direction: DataDirection,
    /// Bytes in the data buffer (0 with [`DataDirection::NONE`]).
    pub transfer_length: u32,
}

impl ScsiRequest {
    /// A request; the direction is forced to NONE when `transfer_length` is 0.
    pub fn new(addr: LunAddress, cdb: Cdb, direction: DataDirection, transfer_length: u32) -> Self {
        let direction = if transfer_length == 0 {
            DataDirection::NONE
        } else {
            direction
        };
        Self {
            addr,
            cdb,
            direction,
            transfer_length,
        }
    }

    /// Builds the SRB for the negotiated `version`: length, sense buffer size, addressing,
    /// CDB, direction flags, and (WIN8+) the Linux-style tagged-queue extension.
    pub fn srb(&self, version: VstorVersion) -> VmscsiRequest {
        let mut s = VmscsiRequest::new_zeroed();
        s.length.set(version.srb_length());
        s.path_id = self.addr.path_id;
        s.target_id = self.addr.target_id;
        s.lun = self.addr.lun;
        let cdb = self.cdb.as_bytes();
        s.cdb_length = cdb.len() as u8;
        s.cdb_or_sense[..cdb.len()].copy_from_slice(cdb);
        s.sense_info_length = version.sense_buffer_size();
        s.data_in = self.direction.0;
        s.data_transfer_length = U32::new(self.transfer_length);
        let mut flags = srb_flags::DISABLE_SYNCH_TRANSFER
            | srb_flags::QUEUE_ACTION_ENABLE
            | srb_flags::NO_QUEUE_FREEZE;
        flags |= match self.direction {
            DataDirection::READ => srb_flags::DATA_IN,
            DataDirection::WRITE => srb_flags::DATA_OUT,
            _ => 0,
        };
        s.srb_flags = U32::new(flags);
        s.queue_tag = QUEUE_TAG_UNTAGGED;
        s.queue_action = QUEUE_ACTION_SIMPLE;
        s.time_out_value = U32::new(SRB_TIMEOUT_SECONDS);
        s
    }

    /// Writes the EXECUTE_SRB vstor packet (48 or 64 bytes per `version`) into `out`. The
    /// glue sends it in-band without data, or as GPA direct with one multi-page range of
    /// `transfer_length` bytes (see [`pages_spanned`]).
    pub fn write_packet(&self, version: VstorVersion, out: &mut [u8]) -> Result<usize, StorError> {
        let mut p = VstorPacket::request(Operation::EXECUTE_SRB);
        p.set_srb(&self.srb(version));
        let size = version.packet_size();
        p.write_to(size, out).ok_or(StorError::BufferTooSmall {
            needed: size,
            got: out.len(),
        })
    }
}

/// Number of 4 KiB pages (PFNs) a multi-page range of `len` bytes starting `offset` bytes into
/// its first page spans.
pub fn pages_spanned(offset: usize, len: usize) -> usize {
    (offset % PAGE_SIZE + len).div_ceil(PAGE_SIZE)
}

/// The decoded completion of an EXECUTE_SRB.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SrbCompletion {
    /// NTSTATUS of the vstor packet.
    pub status: NtStatus,
    /// SRB status with flags.
    pub srb_status: SrbStatus,
    /// SCSI status.
    pub scsi_status: ScsiStatus,
    /// Bytes the host says it transferred (host input: check it).
    pub data_transfer_length: u32,
    /// Decoded sense data when autosense was valid.
    pub sense: Option<SenseData>,
}

impl SrbCompletion {
    /// A successful completion that moved `len` bytes (for transports and tests).
    pub fn good(len: u32) -> Self {
        Self {
            status: NtStatus::SUCCESS,
            srb_status: SrbStatus::SUCCESS,
            scsi_status: ScsiStatus::GOOD,
            data_transfer_length: len,
            sense: None,
        }
    }

    /// Decodes an EXECUTE_SRB completion (48- or 64-byte vstor packet).
    pub fn parse(packet: &[u8]) -> Result<Self, StorError> {
        // A full (Win8+) packet is read where it lies; a shorter one is copied and
        // zero-extended (`VstorPacket::parse`).
        let copy;
        let p = match VstorPacket::ref_from_prefix(packet) {
            Ok((p, _)) => p,
            Err(_) => {
                copy = VstorPacket::parse(packet).ok_or(StorError::ShortPacket {
                    needed: VSTOR_PACKET_SIZE_PRE_WIN8,
                    got: packet.len(),
                })?;
                &copy
            }
        };
        if p.op() != Operation::COMPLETE_IO {
            return Err(StorError::UnexpectedOperation(p.op()));
        }
        let srb = p.srb_ref();
        Ok(Self {
            status: p.nt_status(),
            srb_status: srb.status(),
            scsi_status: srb.scsi(),
            data_transfer_length: srb.data_transfer_length.get(),
            sense: SenseData::parse(srb.sense()),
        })
    }

    /// What to do with this completion. A non-success NTSTATUS with a SUCCESS SRB is treated
    /// like an SRB error.
    pub fn disposition(&self) -> Disposition {
        let d = classify(self.srb_status, self.scsi_status, self.sense);
        if d == Disposition::Success && !self.status.is_success() {
            return match self.status {
                NtStatus::DEVICE_BUSY | NtStatus::IO_TIMEOUT => Disposition::Retry,
                NtStatus::DEVICE_DOES_NOT_EXIST | NtStatus::DEVICE_NOT_CONNECTED => {
                    Disposition::LunGone
                }
                _ => Disposition::Fatal,
            };
        }
        d
    }

    /// The error this completion stands for (`None` if it succeeded).
    pub fn error(&self) -> Option<StorError> {
        if self.disposition() == Disposition::Success {
            return None;
        }
        if !self.status.is_success()
            && classify(self.srb_status, self.scsi_status, self.sense) == Disposition::Success
        {
            return Some(StorError::IoStatus(self.status));
        }
        Some(StorError::Srb {
            srb_status: self.srb_status,
            scsi_status: self.scsi_status,
            sense: self.sense,
        })
    }

    /// Succeeds if the command succeeded and moved exactly `expected` bytes (the host may not
    /// claim more than was asked; fewer is a short transfer).
    pub fn check(&self, expected: u32) -> Result<(), StorError> {
        if let Some(e) = self.error() {
            return Err(e);
        }
        if self.data_transfer_length != expected {
            return Err(StorError::ShortTransfer {
                expected,
                got: self.data_transfer_length,
            });
        }
        Ok(())
    }
}

/// One piece of a split transfer.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Chunk {
    /// First block of the piece.
    pub lba: u64,
    /// Blocks in the piece.
    pub blocks: u32,
    /// Byte offset of the piece in the caller's buffer.
    pub buf_offset: usize,
    /// Bytes in the piece.
    pub len: usize,
}

/// Splits `blocks` blocks at `lba` into requests of at most `max_transfer_bytes` each (at
/// least one block per request; 0 = no limit besides the 32-bit length fields).
pub fn split_transfer(
    lba: u64,
    blocks: u64,
    block_size: u32,
    max_transfer_bytes: u32,
) -> impl Iterator<Item = Chunk> {
    let bs = u64::from(block_size.max(1));
    let limit = if max_transfer_bytes == 0 {
        u64::from(u32::MAX)
    } else {
        u64::from(max_transfer_bytes)
    };
    // Each request's byte length must also fit the SRB's u32 data_transfer_length.
    let per = (limit.min(u64::from(u32::MAX)) / bs).max(1);
    let mut done = 0u64;
    core::iter::from_fn(move || {
        if done >= blocks {
            return None;
        }
        let n = per.min(blocks - done);
        let c = Chunk {
            lba: lba.checked_add(done)?,
            blocks: n as u32,
            buf_offset: (done * bs) as usize,
            len: (n * bs) as usize,
        };
        done += n;
        Some(c)
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::scsi::{SenseKey, asc};
    use zerocopy::IntoBytes;

    #[test]
    fn execute_srb_packet_byte_exact_win8() {
        let r = ScsiRequest::new(
            LunAddress {
                path_id: 1,
                target_id: 0,
                lun: 3,
            },
            Cdb::read_10(0x10, 8),
            DataDirection::READ,
            4096,
        );
        let mut out = [0u8; 64];
        assert_eq!(r.write_packet(VstorVersion::WIN10, &mut out), Ok(64));
        let expect: [u8; 64] = [
            3, 0, 0, 0, 1, 0, 0, 0, 0, 0, 0, 0, // op, flags, status
            52, 0, 0, 0, 0, 1, 0, 3, 10, 0x14, 1, 0, // length .. reserved
            0, 0x10, 0, 0, // data_transfer_length
            0x28, 0, 0, 0, 0, 0x10, 0, 0, 8, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, // cdb
            0, 0, 0xFF, 0x20, // reserve, queue tag, action
            0x4A, 1, 0, 0, // flags: sync | qae | data in | no freeze
            60, 0, 0, 0, 0, 0, 0, 0,
        ];
        assert_eq!(out, expect);
    }

    #[test]
    fn execute_srb_pre_win8_and_no_data() {
        let r = ScsiRequest::new(
            LunAddress::lun(0),
            Cdb::test_unit_ready(),
            DataDirection::READ,
            0,
        );
        assert_eq!(r.direction, DataDirection::NONE);
        let mut out = [0u8; 48];
        assert_eq!(r.write_packet(VstorVersion::WIN7, &mut out), Ok(48));
        assert_eq!(&out[12..14], &[36, 0]);
        assert_eq!(out[12 + 9], 0x12);
        assert_eq!(out[12 + 10], 2);
        assert_eq!(&out[24..28], &[0; 4]);
        assert!(r.write_packet(VstorVersion::WIN10, &mut out).is_err());
    }

    fn completion(srb: u8, scsi: u8, len: u32, sense: Option<SenseData>, status: u32) -> [u8; 64] {
        let mut p = VstorPacket::request(Operation::COMPLETE_IO);
        p.status = U32::new(status);
        let mut s = VmscsiRequest::new_zeroed();
        s.srb_status = srb;
        s.scsi_status = scsi;
        s.data_transfer_length = U32::new(len);
        if let Some(d) = sense {
            s.cdb_or_sense[..18].copy_from_slice(&d.to_fixed());
            s.sense_info_length = 18;
        }
        p.set_srb(&s);
        let mut b = [0; 64];
        b.copy_from_slice(p.as_bytes());
        b
    }

    #[test]
    fn completion_decoding() {
        let c = SrbCompletion::parse(&completion(1, 0, 512, None, 0)).unwrap();
        assert_eq!(c.check(512), Ok(()));
        assert!(matches!(
            c.check(1024),
            Err(StorError::ShortTransfer { .. })
        ));
        let lba = SenseData {
            key: SenseKey::ILLEGAL_REQUEST,
            asc: asc::LBA_OUT_OF_RANGE.0,
            ascq: 0,
        };
        let c = SrbCompletion::parse(&completion(0x84, 2, 0, Some(lba), 0)).unwrap();
        assert_eq!(c.sense, Some(lba));
        assert_eq!(c.disposition(), Disposition::Fatal);
        assert!(matches!(c.check(0), Err(StorError::Srb { .. })));
        // Sense bytes without the autosense flag are ignored.
        let c = SrbCompletion::parse(&completion(0x04, 2, 0, Some(lba), 0)).unwrap();
        assert_eq!(c.sense, None);
        let c = SrbCompletion::parse(&completion(1, 0, 0, None, 0x8000_0011)).unwrap();
        assert_eq!(c.disposition(), Disposition::Retry);
        assert_eq!(c.error(), Some(StorError::IoStatus(NtStatus::DEVICE_BUSY)));
        assert!(SrbCompletion::parse(&[0; 30]).is_err());
        let mut b = completion(1, 0, 0, None, 0);
        b[0] = 2;
        assert!(SrbCompletion::parse(&b).is_err());
    }

    #[test]
    fn splitting() {
        let v: std::vec::Vec<_> = split_transfer(100, 1000, 512, 0x40000).collect();
        assert_eq!(v.len(), 2);
        assert_eq!(
            v[0],
            Chunk {
                lba: 100,
                blocks: 512,
                buf_offset: 0,
                len: 0x40000
            }
        );
        assert_eq!(
            v[1],
            Chunk {
                lba: 612,
                blocks: 488,
                buf_offset: 0x40000,
                len: 488 * 512
            }
        );
        // A limit smaller than a block still moves one block per request.
        assert_eq!(split_transfer(0, 3, 4096, 512).count(), 3);
        assert_eq!(split_transfer(0, 0, 512, 0).count(), 0);
        assert_eq!(split_transfer(u64::MAX, 2, 512, 512).count(), 1);
        assert_eq!(pages_spanned(0, 4096), 1);
        assert_eq!(pages_spanned(4095, 2), 2);
        assert_eq!(pages_spanned(100, 8192), 3);
    }
}
