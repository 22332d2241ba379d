//! Command descriptor blocks: the operation codes, VPD page codes and CDB builders, and the
//! UNMAP parameter list.

use super::be_u64;
use crate::error::StorError;

/// SCSI operation codes used here.
pub mod opcode {
    /// TEST UNIT READY.
    pub const TEST_UNIT_READY: u8 = 0x00;
    /// REQUEST SENSE.
    pub const REQUEST_SENSE: u8 = 0x03;
    /// INQUIRY.
    pub const INQUIRY: u8 = 0x12;
    /// MODE SENSE(6).
    pub const MODE_SENSE_6: u8 = 0x1A;
    /// READ CAPACITY(10).
    pub const READ_CAPACITY_10: u8 = 0x25;
    /// READ(10).
    pub const READ_10: u8 = 0x28;
    /// WRITE(10).
    pub const WRITE_10: u8 = 0x2A;
    /// SYNCHRONIZE CACHE(10).
    pub const SYNCHRONIZE_CACHE_10: u8 = 0x35;
    /// UNMAP.
    pub const UNMAP: u8 = 0x42;
    /// MODE SENSE(10).
    pub const MODE_SENSE_10: u8 = 0x5A;
    /// READ(16).
    pub const READ_16: u8 = 0x88;
    /// WRITE(16).
    pub const WRITE_16: u8 = 0x8A;
    /// SYNCHRONIZE CACHE(16).
    pub const SYNCHRONIZE_CACHE_16: u8 = 0x91;
    /// SERVICE ACTION IN(16) (READ CAPACITY(16) is service action 0x10).
    pub const SERVICE_ACTION_IN_16: u8 = 0x9E;
    /// REPORT LUNS.
    pub const REPORT_LUNS: u8 = 0xA0;
    /// Service action of READ CAPACITY(16).
    pub const SA_READ_CAPACITY_16: u8 = 0x10;
}

/// VPD page codes.
pub mod vpd {
    /// Supported VPD pages.
    pub const SUPPORTED_PAGES: u8 = 0x00;
    /// Unit serial number.
    pub const UNIT_SERIAL: u8 = 0x80;
    /// Device identification.
    pub const DEVICE_ID: u8 = 0x83;
    /// Block limits.
    pub const BLOCK_LIMITS: u8 = 0xB0;
    /// Block device characteristics.
    pub const BLOCK_DEVICE_CHARACTERISTICS: u8 = 0xB1;
    /// Logical block provisioning.
    pub const LOGICAL_BLOCK_PROVISIONING: u8 = 0xB2;
}

/// A command descriptor block of up to 16 bytes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Cdb {
    bytes: [u8; 16],
    len: u8,
}

impl Cdb {
    /// A CDB from raw bytes; `None` if longer than 16 bytes or empty.
    pub fn from_bytes(b: &[u8]) -> Option<Self> {
        if b.is_empty() || b.len() > 16 {
            return None;
        }
        let mut bytes = [0; 16];
        bytes[..b.len()].copy_from_slice(b);
        Some(Self {
            bytes,
            len: b.len() as u8,
        })
    }
    fn zeroed(len: u8, op: u8) -> Self {
        let mut bytes = [0; 16];
        bytes[0] = op;
        Self { bytes, len }
    }
    /// The CDB bytes.
    pub fn as_bytes(&self) -> &[u8] {
        &self.bytes[..usize::from(self.len)]
    }
    /// The operation code.
    pub fn opcode(&self) -> u8 {
        self.bytes[0]
    }
    /// TEST UNIT READY (6 bytes).
    pub fn test_unit_ready() -> Self {
        Self::zeroed(6, opcode::TEST_UNIT_READY)
    }
    /// REQUEST SENSE (6 bytes) for `alloc` bytes.
    pub fn request_sense(alloc: u8) -> Self {
        let mut c = Self::zeroed(6, opcode::REQUEST_SENSE);
        c.bytes[4] = alloc;
        c
    }
    /// Standard INQUIRY (6 bytes) for `alloc` bytes (36 is the usual minimum).
    pub fn inquiry(alloc: u16) -> Self {
        let mut c = Self::zeroed(6, opcode::INQUIRY);
        c.bytes[3..5].copy_from_slice(&alloc.to_be_bytes());
        c
    }
    /// INQUIRY with EVPD = 1 for VPD `page` (see [`vpd`]).
    pub fn inquiry_vpd(page: u8, alloc: u16) -> Self {
        let mut c = Self::inquiry(alloc);
        c.bytes[1] = 0x01;
        c.bytes[2] = page;
        c
    }
    /// MODE SENSE(6) with DBD for `page` (0x3F = all pages), current values.
    pub fn mode_sense_6(page: u8, alloc: u8) -> Self {
        let mut c = Self::zeroed(6, opcode::MODE_SENSE_6);
        c.bytes[1] = 0x08;
        c.bytes[2] = page & 0x3F;
        c.bytes[4] = alloc;
        c
    }
    /// REPORT LUNS (12 bytes), select report 0 (all LUNs), `alloc` ≥ 16.
    pub fn report_luns(alloc: u32) -> Self {
        let mut c = Self::zeroed(12, opcode::REPORT_LUNS);
        c.bytes[6..10].copy_from_slice(&alloc.to_be_bytes());
        c
    }
    /// READ CAPACITY(10) (10 bytes; 8 bytes of data).
    pub fn read_capacity_10() -> Self {
        Self::zeroed(10, opcode::READ_CAPACITY_10)
    }
    /// READ CAPACITY(16) = SERVICE ACTION IN(16)/0x10 (16 bytes) for `alloc` bytes (32 usual).
    pub fn read_capacity_16(alloc: u32) -> Self {
        let mut c = Self::zeroed(16, opcode::SERVICE_ACTION_IN_16);
        c.bytes[1] = opcode::SA_READ_CAPACITY_16;
        c.bytes[10..14].copy_from_slice(&alloc.to_be_bytes());
        c
    }
    /// READ(10) of `blocks` blocks at `lba`.
    pub fn read_10(lba: u32, blocks: u16) -> Self {
        Self::rw10(opcode::READ_10, lba, blocks)
    }
    /// WRITE(10) of `blocks` blocks at `lba`.
    pub fn write_10(lba: u32, blocks: u16) -> Self {
        Self::rw10(opcode::WRITE_10, lba, blocks)
    }
    fn rw10(op: u8, lba: u32, blocks: u16) -> Self {
        let mut c = Self::zeroed(10, op);
        c.bytes[2..6].copy_from_slice(&lba.to_be_bytes());
        c.bytes[7..9].copy_from_slice(&blocks.to_be_bytes());
        c
    }
    /// READ(16) of `blocks` blocks at `lba`.
    pub fn read_16(lba: u64, blocks: u32) -> Self {
        Self::rw16(opcode::READ_16, lba, blocks)
    }
    /// WRITE(16) of `blocks` blocks at `lba`.
    pub fn write_16(lba: u64, blocks: u32) -> Self {
        Self::rw16(opcode::WRITE_16, lba, blocks)
    }
    fn rw16(op: u8, lba: u64, blocks: u32) -> Self {
        let mut c = Self::zeroed(16, op);
        c.bytes[2..10].copy_from_slice(&lba.to_be_bytes());
        c.bytes[10..14].copy_from_slice(&blocks.to_be_bytes());
        c
    }
    /// READ or WRITE in the smallest form that can address `lba`..`lba + blocks`: the 10-byte
    /// form when the range fits 32-bit LBAs and 16-bit counts, else the 16-byte form.
    /// `None` if `blocks` exceeds the 16-byte form's 32-bit count or the range overflows.
    pub fn read_write(write: bool, lba: u64, blocks: u32) -> Option<Self> {
        let end = lba.checked_add(u64::from(blocks))?;
        // The first LBA itself must fit 32 bits: an empty range at 2^32 ends at 2^32 too.
        if lba <= u64::from(u32::MAX) && end <= 1 << 32 && blocks <= 0xFFFF {
            let (lba, n) = (lba as u32, blocks as u16);
            Some(if write {
                Self::write_10(lba, n)
            } else {
                Self::read_10(lba, n)
            })
        } else if write {
            Some(Self::write_16(lba, blocks))
        } else {
            Some(Self::read_16(lba, blocks))
        }
    }
    /// SYNCHRONIZE CACHE(10) of the whole device (LBA 0, 0 blocks = to the end).
    pub fn synchronize_cache_10() -> Self {
        Self::zeroed(10, opcode::SYNCHRONIZE_CACHE_10)
    }
    /// UNMAP (10 bytes) with a parameter list of `param_len` bytes (see [`unmap_parameters`]).
    pub fn unmap(param_len: u16) -> Self {
        let mut c = Self::zeroed(10, opcode::UNMAP);
        c.bytes[7..9].copy_from_slice(&param_len.to_be_bytes());
        c
    }
    /// The (LBA, block count) a READ/WRITE(10/16) CDB addresses; `None` for other commands.
    pub fn rw_range(&self) -> Option<(u64, u32)> {
        let b = &self.bytes;
        match b[0] {
            opcode::READ_10 | opcode::WRITE_10 => Some((
                u64::from(u32::from_be_bytes([b[2], b[3], b[4], b[5]])),
                u32::from(u16::from_be_bytes([b[7], b[8]])),
            )),
            opcode::READ_16 | opcode::WRITE_16 => Some((
                u64::from_be_bytes([b[2], b[3], b[4], b[5], b[6], b[7], b[8], b[9]]),
                u32::from_be_bytes([b[10], b[11], b[12], b[13]]),
            )),
            _ => None,
        }
    }
}

/// Size of one UNMAP block descriptor.
pub const UNMAP_DESCRIPTOR_SIZE: usize = 16;
/// Size of the UNMAP parameter list header.
pub const UNMAP_HEADER_SIZE: usize = 8;

/// Writes an UNMAP parameter list for `ranges` of (LBA, block count) into `out`; returns its
/// length (8 + 16 per range). Errors if `out` is too small or the list exceeds 16-bit lengths.
pub fn unmap_parameters(ranges: &[(u64, u32)], out: &mut [u8]) -> Result<usize, StorError> {
    let len = UNMAP_HEADER_SIZE + UNMAP_DESCRIPTOR_SIZE * ranges.len();
    if len > usize::from(u16::MAX) {
        return Err(StorError::InvalidArgument("too many UNMAP ranges"));
    }
    if out.len() < len {
        return Err(StorError::BufferTooSmall {
            needed: len,
            got: out.len(),
        });
    }
    out[..len].fill(0);
    out[0..2].copy_from_slice(&((len - 2) as u16).to_be_bytes());
    out[2..4].copy_from_slice(&((len - UNMAP_HEADER_SIZE) as u16).to_be_bytes());
    for (i, (lba, n)) in ranges.iter().enumerate() {
        let d = &mut out[UNMAP_HEADER_SIZE + i * UNMAP_DESCRIPTOR_SIZE..][..UNMAP_DESCRIPTOR_SIZE];
        d[0..8].copy_from_slice(&lba.to_be_bytes());
        d[8..12].copy_from_slice(&n.to_be_bytes());
    }
    Ok(len)
}

/// Decodes an UNMAP parameter list (host side / tests): iterator of (LBA, count). Clamped to the
/// lengths the header declares and the buffer holds.
pub fn parse_unmap_parameters(data: &[u8]) -> impl Iterator<Item = (u64, u32)> + '_ {
    let declared = if data.len() >= UNMAP_HEADER_SIZE {
        usize::from(u16::from_be_bytes([data[2], data[3]]))
    } else {
        0
    };
    let body = data.get(UNMAP_HEADER_SIZE..).unwrap_or(&[]);
    let body = &body[..declared.min(body.len())];
    body.chunks_exact(UNMAP_DESCRIPTOR_SIZE).map(|d| {
        (
            be_u64(&d[0..8]),
            u32::from_be_bytes([d[8], d[9], d[10], d[11]]),
        )
    })
}
