//! Parsers of the data-in a device returns: INQUIRY, REPORT LUNS, READ CAPACITY, and the
//! block-limits and provisioning VPD pages. They never panic on device bytes.

use super::{be_u32_at, be_u64, vpd};
use crate::error::StorError;

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
