//! SCSI commands (SPC/SBC) a disk driver needs (devices §3.9): CDB builders, parsers for the
//! data the device returns, sense data decoding and the retry/fatal classification of a
//! completed request. All multi-byte SCSI fields are big-endian. Parsers never panic on
//! device bytes: short or inconsistent data is an error or is clamped.

use crate::error::StorError;
use crate::protocol::{ScsiStatus, SrbStatus};

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

fn be_u64(b: &[u8]) -> u64 {
    let mut a = [0; 8];
    a.copy_from_slice(&b[..8]);
    u64::from_be_bytes(a)
}

fn be_u32_at(b: &[u8], at: usize) -> u32 {
    match b.get(at..at + 4) {
        Some(s) => u32::from_be_bytes([s[0], s[1], s[2], s[3]]),
        None => 0,
    }
}

/// Peripheral device type: direct-access block device (disk).
pub const DEVICE_TYPE_DISK: u8 = 0x00;
/// Peripheral device type: CD/DVD.
pub const DEVICE_TYPE_CDROM: u8 = 0x05;
/// Peripheral device type/qualifier byte for "no device at this LUN".
pub const DEVICE_TYPE_NONE: u8 = 0x7F;

/// Standard INQUIRY data (the fields a disk driver uses).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct InquiryData {
    /// Peripheral qualifier (0 = connected, 1 = not connected, 3 = no device).
    pub qualifier: u8,
    /// Peripheral device type (0 disk, 5 CD-ROM).
    pub device_type: u8,
    /// Removable medium.
    pub removable: bool,
    /// Version (SPC level: 5 = SPC-3).
    pub version: u8,
    /// T10 vendor id, space padded.
    pub vendor: [u8; 8],
    /// Product id, space padded.
    pub product: [u8; 16],
    /// Product revision.
    pub revision: [u8; 4],
}

impl InquiryData {
    /// Minimum standard INQUIRY length with vendor/product/revision.
    pub const LEN: usize = 36;

    /// Parses standard INQUIRY data; fields past the end of a short response read as spaces.
    /// Needs at least the 5-byte header.
    pub fn parse(b: &[u8]) -> Result<Self, StorError> {
        if b.len() < 5 {
            return Err(StorError::BadResponse("INQUIRY data shorter than 5 bytes"));
        }
        let field = |from: usize, out: &mut [u8]| {
            for (i, o) in out.iter_mut().enumerate() {
                *o = b.get(from + i).copied().unwrap_or(b' ');
            }
        };
        let mut vendor = [0; 8];
        let mut product = [0; 16];
        let mut revision = [0; 4];
        field(8, &mut vendor);
        field(16, &mut product);
        field(32, &mut revision);
        Ok(Self {
            qualifier: b[0] >> 5,
            device_type: b[0] & 0x1F,
            removable: b[1] & 0x80 != 0,
            version: b[2],
            vendor,
            product,
            revision,
        })
    }
    /// Whether a device is present at this LUN (qualifier 0; not 0x7F).
    pub fn is_present(&self) -> bool {
        self.qualifier == 0 && self.device_type != 0x1F
    }
    /// Whether this LUN is a direct-access disk.
    pub fn is_disk(&self) -> bool {
        self.is_present() && self.device_type == DEVICE_TYPE_DISK
    }
}

/// The LUN numbers in a REPORT LUNS response.
#[derive(Clone, Copy, Debug)]
pub struct ReportLuns<'a> {
    entries: &'a [u8],
    /// Number of LUNs the device has (may exceed what fit in the buffer).
    pub total: u32,
}

impl<'a> ReportLuns<'a> {
    /// Parses a REPORT LUNS response: 4-byte big-endian list length, 4 reserved, then 8-byte
    /// entries. The entries are clamped to the buffer.
    pub fn parse(b: &'a [u8]) -> Result<Self, StorError> {
        if b.len() < 8 {
            return Err(StorError::BadResponse(
                "REPORT LUNS data shorter than 8 bytes",
            ));
        }
        let list_len = be_u32_at(b, 0);
        let avail = (b.len() - 8) / 8 * 8;
        let n = (list_len as usize / 8 * 8).min(avail);
        Ok(Self {
            entries: &b[8..8 + n],
            total: list_len / 8,
        })
    }
    /// Whether the buffer held fewer entries than the device reported (retry with a larger one).
    pub fn truncated(&self) -> bool {
        (self.entries.len() / 8) < self.total as usize
    }
    /// The LUNs, decoded from peripheral (00b) or flat (01b) addressing; other methods are
    /// skipped.
    pub fn luns(&self) -> impl Iterator<Item = u16> + 'a {
        self.entries
            .chunks_exact(8)
            .filter_map(|e| match e[0] >> 6 {
                0 => Some(u16::from(e[1])),
                1 => Some(u16::from(e[0] & 0x3F) << 8 | u16::from(e[1])),
                _ => None,
            })
    }
}

/// Writes a REPORT LUNS entry for `lun` using peripheral (< 256) or flat addressing.
pub fn encode_lun(lun: u16) -> [u8; 8] {
    let mut e = [0; 8];
    if lun < 256 {
        e[1] = lun as u8;
    } else {
        e[0] = 0x40 | ((lun >> 8) as u8 & 0x3F);
        e[1] = lun as u8;
    }
    e
}

/// Capacity of a device: READ CAPACITY(10) or (16).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Capacity {
    /// Number of logical blocks (last LBA + 1).
    pub num_blocks: u64,
    /// Logical block size in bytes.
    pub block_size: u32,
    /// Logical blocks per physical block exponent (RC16 only; 0 otherwise).
    pub physical_exponent: u8,
    /// LBPME: logical block provisioning (thin provisioning, UNMAP) enabled (RC16 only).
    pub lbpme: bool,
    /// LBPRZ: unmapped blocks read as zero (RC16 only).
    pub lbprz: bool,
}

/// Result of parsing READ CAPACITY(10).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Capacity10 {
    /// The device fits 32-bit LBAs.
    Known(Capacity),
    /// Last LBA is 0xFFFFFFFF: ask READ CAPACITY(16).
    UseReadCapacity16,
}

fn check_block_size(bs: u32) -> Result<u32, StorError> {
    if (512..=65536).contains(&bs) && bs.is_power_of_two() {
        Ok(bs)
    } else {
        Err(StorError::BadResponse(
            "block size not a power of two in 512..=65536",
        ))
    }
}

impl Capacity {
    /// Parses the 8 bytes of READ CAPACITY(10).
    pub fn parse_10(b: &[u8]) -> Result<Capacity10, StorError> {
        if b.len() < 8 {
            return Err(StorError::BadResponse(
                "READ CAPACITY(10) data shorter than 8 bytes",
            ));
        }
        let last = be_u32_at(b, 0);
        if last == u32::MAX {
            return Ok(Capacity10::UseReadCapacity16);
        }
        Ok(Capacity10::Known(Self {
            num_blocks: u64::from(last) + 1,
            block_size: check_block_size(be_u32_at(b, 4))?,
            physical_exponent: 0,
            lbpme: false,
            lbprz: false,
        }))
    }
    /// Parses READ CAPACITY(16) data (at least 14 bytes used; 32 returned).
    pub fn parse_16(b: &[u8]) -> Result<Self, StorError> {
        if b.len() < 12 {
            return Err(StorError::BadResponse(
                "READ CAPACITY(16) data shorter than 12 bytes",
            ));
        }
        let last = be_u64(&b[0..8]);
        let num_blocks = last.checked_add(1).ok_or(StorError::BadResponse(
            "READ CAPACITY(16) last LBA overflows",
        ))?;
        let b13 = b.get(13).copied().unwrap_or(0);
        let b14 = b.get(14).copied().unwrap_or(0);
        Ok(Self {
            num_blocks,
            block_size: check_block_size(be_u32_at(b, 8))?,
            physical_exponent: b13 & 0x0F,
            lbpme: b14 & 0x80 != 0,
            lbprz: b14 & 0x40 != 0,
        })
    }
}

/// The list of supported VPD pages (page 0x00).
pub fn vpd_supported_pages(b: &[u8]) -> Result<&[u8], StorError> {
    if b.len() < 4 || b[1] != vpd::SUPPORTED_PAGES {
        return Err(StorError::BadResponse("VPD page 0x00 header"));
    }
    let n = usize::from(u16::from_be_bytes([b[2], b[3]]));
    Ok(&b[4..(4 + n).min(b.len())])
}

/// Block limits VPD page 0xB0 (SBC-3); absent fields read as 0 (no limit reported).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct BlockLimits {
    /// Maximum transfer length in blocks (0 = none reported).
    pub max_transfer_blocks: u32,
    /// Optimal transfer length in blocks.
    pub optimal_transfer_blocks: u32,
    /// Maximum UNMAP LBA count (0 = UNMAP not supported per this page).
    pub max_unmap_blocks: u32,
    /// Maximum UNMAP block descriptor count.
    pub max_unmap_descriptors: u32,
    /// Optimal UNMAP granularity in blocks.
    pub unmap_granularity: u32,
}

impl BlockLimits {
    /// Parses page 0xB0.
    pub fn parse(b: &[u8]) -> Result<Self, StorError> {
        if b.len() < 4 || b[1] != vpd::BLOCK_LIMITS {
            return Err(StorError::BadResponse("VPD page 0xB0 header"));
        }
        let n = (4 + usize::from(u16::from_be_bytes([b[2], b[3]]))).min(b.len());
        let b = &b[..n];
        Ok(Self {
            max_transfer_blocks: be_u32_at(b, 8),
            optimal_transfer_blocks: be_u32_at(b, 12),
            max_unmap_blocks: be_u32_at(b, 20),
            max_unmap_descriptors: be_u32_at(b, 24),
            unmap_granularity: be_u32_at(b, 28),
        })
    }
}

/// Logical block provisioning VPD page 0xB2 (SBC-3).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Provisioning {
    /// LBPU: UNMAP supported.
    pub unmap: bool,
    /// LBPWS: WRITE SAME(16) with UNMAP supported.
    pub write_same_16: bool,
    /// LBPWS10: WRITE SAME(10) with UNMAP supported.
    pub write_same_10: bool,
    /// Provisioning type (0 full, 1 resource, 2 thin).
    pub provisioning_type: u8,
}

impl Provisioning {
    /// Parses page 0xB2.
    pub fn parse(b: &[u8]) -> Result<Self, StorError> {
        if b.len() < 7 || b[1] != vpd::LOGICAL_BLOCK_PROVISIONING {
            return Err(StorError::BadResponse("VPD page 0xB2 header"));
        }
        Ok(Self {
            unmap: b[5] & 0x80 != 0,
            write_same_16: b[5] & 0x40 != 0,
            write_same_10: b[5] & 0x20 != 0,
            provisioning_type: b[6] & 0x07,
        })
    }
}

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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cdbs_byte_exact() {
        assert_eq!(Cdb::test_unit_ready().as_bytes(), &[0; 6]);
        assert_eq!(Cdb::inquiry(36).as_bytes(), &[0x12, 0, 0, 0, 36, 0]);
        assert_eq!(
            Cdb::inquiry_vpd(0xB0, 0x100).as_bytes(),
            &[0x12, 1, 0xB0, 1, 0, 0]
        );
        assert_eq!(
            Cdb::report_luns(0x1000).as_bytes(),
            &[0xA0, 0, 0, 0, 0, 0, 0, 0, 0x10, 0, 0, 0]
        );
        assert_eq!(
            Cdb::read_capacity_10().as_bytes(),
            &[0x25, 0, 0, 0, 0, 0, 0, 0, 0, 0]
        );
        assert_eq!(
            Cdb::read_capacity_16(32).as_bytes(),
            &[0x9E, 0x10, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 32, 0, 0]
        );
        assert_eq!(
            Cdb::read_10(0x01020304, 0x0506).as_bytes(),
            &[0x28, 0, 1, 2, 3, 4, 0, 5, 6, 0]
        );
        assert_eq!(Cdb::write_10(1, 2).as_bytes()[0], 0x2A);
        assert_eq!(
            Cdb::write_16(0x0102030405060708, 0x090A0B0C).as_bytes(),
            &[0x8A, 0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 0, 0]
        );
        assert_eq!(
            Cdb::synchronize_cache_10().as_bytes(),
            &[0x35, 0, 0, 0, 0, 0, 0, 0, 0, 0]
        );
        assert_eq!(
            Cdb::unmap(24).as_bytes(),
            &[0x42, 0, 0, 0, 0, 0, 0, 0, 24, 0]
        );
    }

    #[test]
    fn read_write_picks_form() {
        assert_eq!(Cdb::read_write(false, 10, 8).unwrap().opcode(), 0x28);
        assert_eq!(Cdb::read_write(true, 10, 0x10000).unwrap().opcode(), 0x8A);
        assert_eq!(
            Cdb::read_write(false, u32::MAX as u64, 1).unwrap().opcode(),
            0x28
        );
        assert_eq!(
            Cdb::read_write(false, u32::MAX as u64, 2).unwrap().opcode(),
            0x88
        );
        assert!(Cdb::read_write(false, u64::MAX, 2).is_none());
        assert_eq!(
            Cdb::read_write(false, 1 << 40, 3).unwrap().rw_range(),
            Some((1 << 40, 3))
        );
    }

    #[test]
    fn unmap_list() {
        let mut b = [0xFF; 40];
        let n = unmap_parameters(&[(0x10, 8), (0x1_0000_0000, 1)], &mut b).unwrap();
        assert_eq!(n, 40);
        assert_eq!(&b[..8], &[0, 38, 0, 32, 0, 0, 0, 0]);
        assert_eq!(
            &b[8..24],
            &[0, 0, 0, 0, 0, 0, 0, 0x10, 0, 0, 0, 8, 0, 0, 0, 0]
        );
        let v: std::vec::Vec<_> = parse_unmap_parameters(&b).collect();
        assert_eq!(v, [(0x10, 8), (0x1_0000_0000, 1)]);
        assert!(unmap_parameters(&[(0, 1)], &mut [0; 23]).is_err());
    }

    #[test]
    fn inquiry_parse() {
        let mut d = [b' '; 36];
        d[..8].copy_from_slice(&[0, 0, 5, 2, 31, 0, 0, 0]);
        d[8..12].copy_from_slice(b"Msft");
        d[16..28].copy_from_slice(b"Virtual Disk");
        d[32..36].copy_from_slice(b"1.0 ");
        let i = InquiryData::parse(&d).unwrap();
        assert!(i.is_disk());
        assert_eq!(&i.vendor, b"Msft    ");
        assert_eq!(&i.product, b"Virtual Disk    ");
        assert_eq!(i.version, 5);
        let none = InquiryData::parse(&[0x7F, 0, 0, 0, 0]).unwrap();
        assert!(!none.is_present());
        assert!(InquiryData::parse(&[0; 4]).is_err());
    }

    #[test]
    fn report_luns_parse() {
        let mut d = [0u8; 32];
        d[3] = 24;
        d[8..16].copy_from_slice(&encode_lun(0));
        d[16..24].copy_from_slice(&encode_lun(3));
        d[24..32].copy_from_slice(&encode_lun(300));
        let r = ReportLuns::parse(&d).unwrap();
        let v: std::vec::Vec<_> = r.luns().collect();
        assert_eq!(v, [0, 3, 300]);
        assert!(!r.truncated());
        let r = ReportLuns::parse(&d[..20]).unwrap();
        assert_eq!(r.luns().count(), 1);
        assert!(r.truncated());
    }

    #[test]
    fn capacity_parse() {
        let c = Capacity::parse_10(&[0, 0, 0x0F, 0xFF, 0, 0, 2, 0]).unwrap();
        assert_eq!(
            c,
            Capacity10::Known(Capacity {
                num_blocks: 0x1000,
                block_size: 512,
                physical_exponent: 0,
                lbpme: false,
                lbprz: false
            })
        );
        assert_eq!(
            Capacity::parse_10(&[0xFF, 0xFF, 0xFF, 0xFF, 0, 0, 2, 0]).unwrap(),
            Capacity10::UseReadCapacity16
        );
        assert!(Capacity::parse_10(&[0, 0, 0, 1, 0, 0, 3, 0]).is_err());
        let mut d = [0u8; 32];
        d[0..8].copy_from_slice(&0x1_0000_0000u64.to_be_bytes());
        d[8..12].copy_from_slice(&4096u32.to_be_bytes());
        d[13] = 3;
        d[14] = 0xC0;
        let c = Capacity::parse_16(&d).unwrap();
        assert_eq!(c.num_blocks, 0x1_0000_0001);
        assert_eq!(c.block_size, 4096);
        assert!(c.lbpme && c.lbprz);
        assert_eq!(c.physical_exponent, 3);
        d[0..8].copy_from_slice(&u64::MAX.to_be_bytes());
        assert!(Capacity::parse_16(&d).is_err());
    }

    #[test]
    fn vpd_parse() {
        assert_eq!(
            vpd_supported_pages(&[0, 0, 0, 3, 0, 0xB0, 0xB2]).unwrap(),
            &[0, 0xB0, 0xB2]
        );
        assert_eq!(vpd_supported_pages(&[0, 0, 0, 9, 0]).unwrap(), &[0]);
        let mut b0 = [0u8; 64];
        b0[1] = 0xB0;
        b0[3] = 0x3C;
        b0[8..12].copy_from_slice(&512u32.to_be_bytes());
        b0[20..24].copy_from_slice(&0xFFFF_FFFFu32.to_be_bytes());
        b0[24..28].copy_from_slice(&1u32.to_be_bytes());
        b0[28..32].copy_from_slice(&8u32.to_be_bytes());
        let l = BlockLimits::parse(&b0).unwrap();
        assert_eq!(l.max_transfer_blocks, 512);
        assert_eq!(l.max_unmap_blocks, u32::MAX);
        assert_eq!(l.max_unmap_descriptors, 1);
        assert_eq!(l.unmap_granularity, 8);
        // A page length shorter than the buffer hides the later fields.
        b0[3] = 8;
        assert_eq!(BlockLimits::parse(&b0).unwrap().max_unmap_blocks, 0);
        let p = Provisioning::parse(&[0, 0xB2, 0, 4, 0, 0x80, 2, 0]).unwrap();
        assert!(p.unmap && !p.write_same_16);
        assert_eq!(p.provisioning_type, 2);
    }

    #[test]
    fn sense_formats_and_classification() {
        let ua = SenseData {
            key: SenseKey::UNIT_ATTENTION,
            asc: 0x2A,
            ascq: 0x09,
        };
        assert_eq!(SenseData::parse(&ua.to_fixed()), Some(ua));
        assert_eq!(
            SenseData::parse(&[0x72, 0x06, 0x2A, 0x09, 0, 0, 0, 0]),
            Some(ua)
        );
        // Fixed format whose additional length stops before ASC.
        let mut short = ua.to_fixed();
        short[7] = 2;
        assert_eq!(SenseData::parse(&short).unwrap().asc, 0);
        assert_eq!(SenseData::parse(&[0x7F, 0, 0]), None);
        assert_eq!(SenseData::parse(&[0x70, 0]), None);

        let err = SrbStatus::ERROR.with_autosense();
        let cc = ScsiStatus::CHECK_CONDITION;
        assert_eq!(classify(err, cc, Some(ua)), Disposition::RescanAndRetry);
        let por = SenseData {
            key: SenseKey::UNIT_ATTENTION,
            asc: 0x29,
            ascq: 0,
        };
        assert_eq!(classify(err, cc, Some(por)), Disposition::Retry);
        let becoming = SenseData {
            key: SenseKey::NOT_READY,
            asc: 4,
            ascq: 1,
        };
        assert_eq!(classify(err, cc, Some(becoming)), Disposition::Retry);
        let nomedium = SenseData {
            key: SenseKey::NOT_READY,
            asc: 0x3A,
            ascq: 0,
        };
        assert_eq!(classify(err, cc, Some(nomedium)), Disposition::Fatal);
        let lba = SenseData {
            key: SenseKey::ILLEGAL_REQUEST,
            asc: 0x21,
            ascq: 0,
        };
        assert_eq!(classify(err, cc, Some(lba)), Disposition::Fatal);
        assert_eq!(
            classify(SrbStatus::ERROR, ScsiStatus::BUSY, None),
            Disposition::Retry
        );
        assert_eq!(
            classify(SrbStatus::BUSY, ScsiStatus::GOOD, None),
            Disposition::Retry
        );
        assert_eq!(
            classify(SrbStatus::SUCCESS, ScsiStatus::GOOD, None),
            Disposition::Success
        );
        assert_eq!(
            classify(SrbStatus::INVALID_LUN, ScsiStatus::GOOD, None),
            Disposition::LunGone
        );
        assert_eq!(
            classify(SrbStatus(0x3F), ScsiStatus::GOOD, None),
            Disposition::Fatal
        );
        assert_eq!(classify(SrbStatus::ERROR, cc, None), Disposition::Fatal);
    }
}
