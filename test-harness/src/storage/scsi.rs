//! The SCSI command set of the mock virtual disk (SPC-3 / SBC-3 as Hyper-V answers it).

use super::{Backing, Lun};

/// Fixed-format sense data (18 bytes, current error).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FixedSense {
    /// Sense key.
    pub key: u8,
    /// Additional sense code.
    pub asc: u8,
    /// Qualifier.
    pub ascq: u8,
}

impl FixedSense {
    /// Sense `key` with ASC/ASCQ.
    pub const fn new(key: u8, asc: u8, ascq: u8) -> Self {
        Self { key, asc, ascq }
    }
    /// ILLEGAL REQUEST / LOGICAL BLOCK ADDRESS OUT OF RANGE.
    pub const LBA_OUT_OF_RANGE: Self = Self::new(0x5, 0x21, 0x00);
    /// ILLEGAL REQUEST / INVALID COMMAND OPERATION CODE.
    pub const INVALID_OPCODE: Self = Self::new(0x5, 0x20, 0x00);
    /// ILLEGAL REQUEST / INVALID FIELD IN CDB.
    pub const INVALID_FIELD: Self = Self::new(0x5, 0x24, 0x00);
    /// ILLEGAL REQUEST / PARAMETER LIST LENGTH ERROR.
    pub const PARAM_LIST_LENGTH: Self = Self::new(0x5, 0x1A, 0x00);
    /// DATA PROTECT / WRITE PROTECTED.
    pub const WRITE_PROTECTED: Self = Self::new(0x7, 0x27, 0x00);
    /// MEDIUM ERROR / UNRECOVERED READ ERROR (backing store failure).
    pub const MEDIUM_ERROR: Self = Self::new(0x3, 0x11, 0x00);

    /// The 18 wire bytes: response code 0x70, key @2, additional length 10 @7, ASC @12,
    /// ASCQ @13.
    pub fn bytes(self) -> [u8; 18] {
        let mut b = [0; 18];
        b[0] = 0x70;
        b[2] = self.key & 0xF;
        b[7] = 10;
        b[12] = self.asc;
        b[13] = self.ascq;
        b
    }
}

/// Result of one SCSI command.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ScsiOutcome {
    /// GOOD; bytes of data moved.
    Good(usize),
    /// CHECK CONDITION with sense data.
    Check(FixedSense),
}

fn be16(b: &[u8], at: usize) -> u16 {
    u16::from_be_bytes([b[at], b[at + 1]])
}
fn be32(b: &[u8], at: usize) -> u32 {
    u32::from_be_bytes([b[at], b[at + 1], b[at + 2], b[at + 3]])
}
fn be64(b: &[u8], at: usize) -> u64 {
    u64::from(be32(b, at)) << 32 | u64::from(be32(b, at + 4))
}

/// Copies `src` into the data-in buffer, limited by the CDB allocation length.
fn reply(data: &mut [u8], alloc: usize, src: &[u8]) -> ScsiOutcome {
    let n = src.len().min(alloc).min(data.len());
    data[..n].copy_from_slice(&src[..n]);
    ScsiOutcome::Good(n)
}

/// Minimum CDB lengths by opcode group (SPC: group 0 = 6, 1/2 = 10, 4 = 16, 5 = 12).
fn cdb_len_ok(cdb: &[u8]) -> bool {
    let need = match cdb[0] >> 5 {
        0 => 6,
        1 | 2 => 10,
        4 => 16,
        5 => 12,
        _ => 6,
    };
    cdb.len() >= need
}

const MAX_UNMAP_BLOCKS: u32 = 0x0040_0000;
const MAX_UNMAP_DESCRIPTORS: u32 = 16;

/// Executes `cdb` against `lun` (`None` only for REPORT LUNS). `data` is the whole
/// data-transfer buffer (write data in, read data out); `data_in` is the SRB direction.
pub fn execute(
    lun: Option<&mut Lun>,
    luns: &[u8],
    cdb: &[u8],
    data_in: u8,
    data: &mut [u8],
) -> ScsiOutcome {
    if !cdb_len_ok(cdb) {
        return ScsiOutcome::Check(FixedSense::INVALID_FIELD);
    }
    if cdb[0] == 0xA0 {
        let alloc = be32(cdb, 6) as usize;
        if alloc < 16 {
            return ScsiOutcome::Check(FixedSense::INVALID_FIELD);
        }
        let mut r = Vec::with_capacity(8 + 8 * luns.len());
        r.extend_from_slice(&((luns.len() * 8) as u32).to_be_bytes());
        r.extend_from_slice(&[0; 4]);
        for &l in luns {
            r.extend_from_slice(&[0, l, 0, 0, 0, 0, 0, 0]);
        }
        return reply(data, alloc, &r);
    }
    let Some(lun) = lun else {
        return ScsiOutcome::Check(FixedSense::new(0x5, 0x25, 0x00));
    };
    match cdb[0] {
        0x00 => ScsiOutcome::Good(0),
        0x03 => reply(data, usize::from(cdb[4]), &FixedSense::new(0, 0, 0).bytes()),
        0x12 => inquiry(lun, cdb, data),
        0x1A | 0x5A => mode_sense(lun, cdb, data),
        0x25 => {
            let last = (lun.num_blocks.saturating_sub(1)).min(0xFFFF_FFFF) as u32;
            let mut r = [0u8; 8];
            r[..4].copy_from_slice(&last.to_be_bytes());
            r[4..].copy_from_slice(&lun.block_size.to_be_bytes());
            reply(data, 8, &r)
        }
        0x9E if cdb[1] & 0x1F == 0x10 => {
            let mut r = [0u8; 32];
            r[..8].copy_from_slice(&lun.num_blocks.saturating_sub(1).to_be_bytes());
            r[8..12].copy_from_slice(&lun.block_size.to_be_bytes());
            r[14] = 0x80 | 0x40; // LBPME, LBPRZ: UNMAP zeroes in this model.
            reply(data, be32(cdb, 10) as usize, &r)
        }
        0x28 | 0x2A | 0x88 | 0x8A => {
            let (offset, len, write) = match read_write(lun, cdb, data_in, data.len()) {
                Some(Ok(rw)) => rw,
                Some(Err(sense)) => return ScsiOutcome::Check(sense),
                None => return ScsiOutcome::Check(FixedSense::INVALID_OPCODE),
            };
            let r = if write {
                lun.write(offset, data)
            } else {
                lun.read(offset, data)
            };
            match r {
                Ok(()) => ScsiOutcome::Good(len),
                Err(e) => {
                    log::warn!("storage VSP: backing store: {e}");
                    ScsiOutcome::Check(FixedSense::MEDIUM_ERROR)
                }
            }
        }
        0x35 | 0x91 => match lun.flush() {
            Ok(()) => ScsiOutcome::Good(0),
            Err(_) => ScsiOutcome::Check(FixedSense::MEDIUM_ERROR),
        },
        0x42 => unmap(lun, cdb, data),
        _ => ScsiOutcome::Check(FixedSense::INVALID_OPCODE),
    }
}

/// READ/WRITE(10/16) checked against `lun` for a data buffer of `data_len` bytes moving in
/// SRB direction `data_in`: `(byte offset, bytes, is_write)`, the sense data of the check
/// condition it earns, or `None` if `cdb` is not a read or write.
pub fn read_write(
    lun: &Lun,
    cdb: &[u8],
    data_in: u8,
    data_len: usize,
) -> Option<Result<(u64, usize, bool), FixedSense>> {
    if !matches!(cdb.first(), Some(0x28 | 0x2A | 0x88 | 0x8A)) {
        return None;
    }
    if !cdb_len_ok(cdb) {
        return Some(Err(FixedSense::INVALID_FIELD));
    }
    let (lba, blocks) = if cdb[0] & 0x80 == 0 {
        (u64::from(be32(cdb, 2)), u64::from(be16(cdb, 7)))
    } else {
        (be64(cdb, 2), u64::from(be32(cdb, 10)))
    };
    let write = cdb[0] & 0x02 != 0;
    match lba.checked_add(blocks) {
        Some(end) if end <= lun.num_blocks => {}
        _ => return Some(Err(FixedSense::LBA_OUT_OF_RANGE)),
    }
    let bs = u64::from(lun.block_size);
    let len = blocks * bs;
    if len != data_len as u64 || (blocks > 0 && data_in != u8::from(!write)) {
        return Some(Err(FixedSense::INVALID_FIELD));
    }
    if write && lun.read_only {
        return Some(Err(FixedSense::WRITE_PROTECTED));
    }
    Some(Ok((lba * bs, len as usize, write)))
}

/// [`read_write`] on an in-memory `lun`, for a one-copy transfer: the disk bytes the command
/// names (to copy to or from the guest) and their length, or the check condition. `None`
/// if `cdb` is not a read or write, or the disk is not in memory (the caller takes the
/// general path).
pub fn read_write_in_place<'l>(
    lun: Option<&'l mut Lun>,
    cdb: &[u8],
    data_in: u8,
    data_len: usize,
) -> Option<Result<(&'l mut [u8], usize), FixedSense>> {
    let lun = lun?;
    let rw = read_write(lun, cdb, data_in, data_len)?;
    let Backing::Memory(m) = &mut lun.backing else {
        return None;
    };
    Some(rw.and_then(|(offset, len, _)| {
        let start = usize::try_from(offset).map_err(|_| FixedSense::LBA_OUT_OF_RANGE)?;
        m.get_mut(start..start + len)
            .map(|b| (b, len))
            .ok_or(FixedSense::LBA_OUT_OF_RANGE)
    }))
}

fn inquiry(lun: &Lun, cdb: &[u8], data: &mut [u8]) -> ScsiOutcome {
    let alloc = usize::from(be16(cdb, 3));
    if cdb[1] & 1 == 0 {
        if cdb[2] != 0 {
            return ScsiOutcome::Check(FixedSense::INVALID_FIELD);
        }
        let mut r = [b' '; 36];
        r[..8].copy_from_slice(&[0x00, 0x00, 0x05, 0x02, 31, 0, 0, 0x02]);
        r[8..12].copy_from_slice(b"Msft");
        r[16..28].copy_from_slice(b"Virtual Disk");
        r[32..35].copy_from_slice(b"1.0");
        return reply(data, alloc, &r);
    }
    let bs = lun.block_size;
    let page: Vec<u8> = match cdb[2] {
        0x00 => vec![0x00, 0x80, 0x83, 0xB0, 0xB1, 0xB2],
        0x80 => b"MockVirtualDisk0".to_vec(),
        0x83 => {
            // One T10 vendor-id designator: code set ASCII, type 1.
            let id = b"Msft    Virtual Disk";
            let mut d = vec![0x02, 0x01, 0x00, id.len() as u8];
            d.extend_from_slice(id);
            d
        }
        0xB0 => {
            let mut d = vec![0u8; 0x3C];
            let max_xfer = super::DEFAULT_MAX_TRANSFER_BYTES / bs;
            d[4..8].copy_from_slice(&max_xfer.to_be_bytes()); // @8 of the page
            d[16..20].copy_from_slice(&MAX_UNMAP_BLOCKS.to_be_bytes()); // @20
            d[20..24].copy_from_slice(&MAX_UNMAP_DESCRIPTORS.to_be_bytes()); // @24
            d[24..28].copy_from_slice(&1u32.to_be_bytes()); // @28 granularity
            d
        }
        0xB1 => {
            let mut d = vec![0u8; 0x3C];
            d[1] = 1; // non-rotating medium
            d
        }
        0xB2 => vec![0x00, 0x80 | 0x04, 0x02, 0x00], // LBPU, LBPRZ; thin provisioned
        _ => return ScsiOutcome::Check(FixedSense::INVALID_FIELD),
    };
    let mut r = vec![0x00, cdb[2]];
    r.extend_from_slice(&(page.len() as u16).to_be_bytes());
    r.extend_from_slice(&page);
    reply(data, alloc, &r)
}

fn mode_sense(lun: &Lun, cdb: &[u8], data: &mut [u8]) -> ScsiOutcome {
    let page = cdb[2] & 0x3F;
    let ten = cdb[0] == 0x5A;
    let alloc = if ten {
        usize::from(be16(cdb, 7))
    } else {
        usize::from(cdb[4])
    };
    let mut pages = Vec::new();
    if page == 0x08 || page == 0x3F {
        // Caching page: WCE set (the host has a write cache; flush matters).
        let mut p = vec![0u8; 20];
        p[0] = 0x08;
        p[1] = 0x12;
        p[2] = 0x04;
        pages.extend_from_slice(&p);
    } else if page != 0 {
        return ScsiOutcome::Check(FixedSense::INVALID_FIELD);
    }
    let wp = if lun.read_only { 0x80 } else { 0 };
    let mut r = if ten {
        let len = (6 + pages.len()) as u16;
        let mut h = len.to_be_bytes().to_vec();
        h.extend_from_slice(&[0, wp, 0, 0, 0, 0]);
        h
    } else {
        vec![(3 + pages.len()) as u8, 0, wp, 0]
    };
    r.extend_from_slice(&pages);
    reply(data, alloc, &r)
}

fn unmap(lun: &mut Lun, cdb: &[u8], data: &mut [u8]) -> ScsiOutcome {
    let param_len = usize::from(be16(cdb, 7));
    if param_len == 0 {
        return ScsiOutcome::Good(0);
    }
    if param_len < 8 || param_len > data.len() {
        return ScsiOutcome::Check(FixedSense::PARAM_LIST_LENGTH);
    }
    let p = &data[..param_len];
    let desc_len = usize::from(be16(p, 2)).min(param_len - 8);
    if desc_len / 16 > MAX_UNMAP_DESCRIPTORS as usize {
        return ScsiOutcome::Check(FixedSense::INVALID_FIELD);
    }
    let bs = u64::from(lun.block_size);
    let ranges: Vec<(u64, u32)> = p[8..8 + desc_len]
        .chunks_exact(16)
        .map(|d| (be64(d, 0), be32(d, 8)))
        .collect();
    for &(lba, n) in &ranges {
        if n > MAX_UNMAP_BLOCKS {
            return ScsiOutcome::Check(FixedSense::INVALID_FIELD);
        }
        match lba.checked_add(u64::from(n)) {
            Some(end) if end <= lun.num_blocks => {}
            _ => return ScsiOutcome::Check(FixedSense::LBA_OUT_OF_RANGE),
        }
    }
    if lun.read_only {
        return ScsiOutcome::Check(FixedSense::WRITE_PROTECTED);
    }
    let zero = vec![0u8; 1 << 16];
    for (lba, n) in ranges {
        let mut off = lba * bs;
        let mut left = u64::from(n) * bs;
        while left > 0 {
            let k = left.min(zero.len() as u64) as usize;
            if lun.write(off, &zero[..k]).is_err() {
                return ScsiOutcome::Check(FixedSense::MEDIUM_ERROR);
            }
            off += k as u64;
            left -= k as u64;
        }
    }
    ScsiOutcome::Good(0)
}
