//! A SCSI disk as the storage host's model of LUN 0 (SPC-3 / SBC-3 as Hyper-V answers),
//! written from the standards, not from storvsc: INQUIRY (standard and VPD 0x00, 0xB0,
//! 0xB2), READ CAPACITY (10) and (16), REPORT LUNS, MODE SENSE, TEST UNIT READY, REQUEST
//! SENSE, READ/WRITE (10)/(16), SYNCHRONIZE CACHE and UNMAP.
//!
//! Block contents are a function of the byte offset: [`pattern`] until written, the write
//! pattern [`written`] once written (the targets only ever write that), zeros once unmapped.
//! So any read, however it races with writes, returns blocks each of which is one of the
//! three; [`Disk::block_ok`] checks that.

use std::collections::BTreeMap;

/// What an unwritten byte at `offset` holds.
pub fn pattern(offset: u64) -> u8 {
    (offset.wrapping_mul(0x9E37_79B9_7F4A_7C15) >> 56) as u8 | 1
}

/// What the targets write at `offset` (never equal to [`pattern`] nor zero).
pub fn written(offset: u64) -> u8 {
    pattern(offset) ^ 0x80 | 0x40
}

/// Sense key, ASC, ASCQ.
pub type Sense = (u8, u8, u8);

/// ILLEGAL REQUEST / INVALID COMMAND OPERATION CODE.
pub const INVALID_OPCODE: Sense = (5, 0x20, 0);
/// ILLEGAL REQUEST / INVALID FIELD IN CDB.
pub const INVALID_FIELD: Sense = (5, 0x24, 0);
/// ILLEGAL REQUEST / LOGICAL BLOCK ADDRESS OUT OF RANGE.
pub const LBA_OUT_OF_RANGE: Sense = (5, 0x21, 0);

/// How one command ended.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Outcome {
    /// SRB status (0x01 success, 0x04 error, 0x20 invalid LUN …); the autosense flag is
    /// added by whoever encodes the completion when `sense` is set.
    pub srb_status: u8,
    /// SCSI status.
    pub scsi_status: u8,
    /// Sense data (CHECK CONDITION).
    pub sense: Option<Sense>,
    /// Data-in bytes (already cut to the allocation length and the buffer).
    pub data: Vec<u8>,
}

impl Outcome {
    fn good(data: Vec<u8>) -> Self {
        Self {
            srb_status: 1,
            scsi_status: 0,
            sense: None,
            data,
        }
    }
    fn check(s: Sense) -> Self {
        Self {
            srb_status: 4,
            scsi_status: 2,
            sense: Some(s),
            data: Vec::new(),
        }
    }
    /// Fixed-format sense bytes (18).
    pub fn sense_bytes(&self) -> Option<[u8; 18]> {
        self.sense.map(|(key, asc, ascq)| {
            let mut b = [0u8; 18];
            b[0] = 0x70;
            b[2] = key;
            b[7] = 10;
            b[12] = asc;
            b[13] = ascq;
            b
        })
    }
}

fn be16(b: &[u8], at: usize) -> u16 {
    u16::from_be_bytes([b[at], b[at + 1]])
}
fn be32(b: &[u8], at: usize) -> u32 {
    u32::from_be_bytes(b[at..at + 4].try_into().unwrap())
}
fn be64(b: &[u8], at: usize) -> u64 {
    u64::from_be_bytes(b[at..at + 8].try_into().unwrap())
}

/// The LBA a WRITE(10) or WRITE(16) CDB writes at (where [`Disk::execute`] checks the data
/// against [`written`]); `None` for any other CDB.
pub fn write_lba(cdb: &[u8]) -> Option<u64> {
    match *cdb.first()? {
        0x2A if cdb.len() >= 6 => Some(u64::from(be32(cdb, 2))),
        0x8A if cdb.len() >= 10 => Some(be64(cdb, 2)),
        _ => None,
    }
}

/// One block's state.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum State {
    Written,
    Unmapped,
}

/// LUN 0.
#[derive(Clone, Debug)]
pub struct Disk {
    /// Logical block size.
    pub block_size: u32,
    /// Blocks.
    pub blocks: u64,
    /// Thin provisioning (LBPME, UNMAP through VPD 0xB2).
    pub thin: bool,
    /// INQUIRY version byte (≥ 5: READ CAPACITY (16) is used).
    pub version: u8,
    /// VPD 0xB0 maximum transfer length in blocks (0 = none).
    pub max_transfer_blocks: u32,
    /// Most blocks one UNMAP descriptor may name.
    pub max_unmap_blocks: u32,
    /// Every WRITE must carry the write pattern (the targets' convention).
    pub check_writes: bool,
    state: BTreeMap<u64, State>,
}

impl Disk {
    /// A disk of `blocks` blocks of `block_size` bytes.
    pub fn new(block_size: u32, blocks: u64) -> Self {
        Self {
            block_size,
            blocks,
            thin: true,
            version: 5,
            max_transfer_blocks: 0,
            max_unmap_blocks: 16,
            check_writes: true,
            state: BTreeMap::new(),
        }
    }

    /// The current contents of block `lba`.
    pub fn block(&self, lba: u64) -> Vec<u8> {
        let bs = u64::from(self.block_size);
        let base = lba * bs;
        match self.state.get(&lba) {
            None => (0..bs).map(|i| pattern(base + i)).collect(),
            Some(State::Written) => (0..bs).map(|i| written(base + i)).collect(),
            Some(State::Unmapped) => vec![0; bs as usize],
        }
    }

    /// Whether `data` could be block `lba` at some time: unwritten, written or unmapped.
    pub fn block_ok(&self, lba: u64, data: &[u8]) -> bool {
        let base = lba * u64::from(self.block_size);
        data.iter()
            .enumerate()
            .all(|(i, &b)| b == pattern(base + i as u64))
            || data
                .iter()
                .enumerate()
                .all(|(i, &b)| b == written(base + i as u64))
            || data.iter().all(|&b| b == 0)
    }

    /// Executes `cdb` on `lun` with `data_out` (what the host read for a write) and a data-in
    /// buffer of `buffer` bytes.
    pub fn execute(&mut self, lun: u8, cdb: &[u8], data_out: &[u8], buffer: usize) -> Outcome {
        if cdb.is_empty() {
            return Outcome::check(INVALID_OPCODE);
        }
        if lun != 0 && cdb[0] != 0xA0 && cdb[0] != 0x12 {
            return Outcome {
                srb_status: 0x20,
                scsi_status: 0,
                sense: None,
                data: Vec::new(),
            };
        }
        let cut = |mut d: Vec<u8>, alloc: usize| {
            d.truncate(alloc.min(buffer));
            Outcome::good(d)
        };
        let need = |n: usize| cdb.len() < n;
        match cdb[0] {
            0x00 | 0x35 | 0x91 => Outcome::good(Vec::new()),
            0x03 => {
                let mut s = [0u8; 18];
                s[0] = 0x70;
                s[7] = 10;
                cut(s.to_vec(), usize::from(*cdb.get(4).unwrap_or(&0)))
            }
            0x12 if need(6) => Outcome::check(INVALID_FIELD),
            0x12 => {
                let alloc = usize::from(be16(cdb, 3));
                if lun != 0 {
                    // Peripheral qualifier 3: no device at this LUN.
                    return cut(vec![0x7F, 0, 5, 2, 31], alloc);
                }
                if cdb[1] & 1 == 0 {
                    let mut d = vec![b' '; 36];
                    d[..5].copy_from_slice(&[0, 0, self.version, 2, 31]);
                    d[5..8].copy_from_slice(&[0, 0, 2]);
                    d[8..12].copy_from_slice(b"Msft");
                    d[16..28].copy_from_slice(b"Virtual Disk");
                    d[32..36].copy_from_slice(b"1.0 ");
                    return cut(d, alloc);
                }
                match cdb[2] {
                    0x00 => cut(vec![0, 0, 0, 3, 0, 0xB0, 0xB2], alloc),
                    0xB0 => {
                        let mut d = vec![0u8; 64];
                        d[1] = 0xB0;
                        d[3] = 0x3C;
                        d[8..12].copy_from_slice(&self.max_transfer_blocks.to_be_bytes());
                        if self.thin {
                            d[20..24].copy_from_slice(&self.max_unmap_blocks.to_be_bytes());
                            d[24..28].copy_from_slice(&1u32.to_be_bytes());
                        }
                        cut(d, alloc)
                    }
                    0xB2 => {
                        let lbpu = if self.thin { 0x80 } else { 0 };
                        cut(vec![0, 0xB2, 0, 4, 0, lbpu, 2, 0], alloc)
                    }
                    _ => Outcome::check(INVALID_FIELD),
                }
            }
            0x1A | 0x5A => {
                // Mode parameter header only: no write protection, no block descriptors.
                let d = if cdb[0] == 0x1A {
                    vec![3, 0, 0, 0]
                } else {
                    vec![0, 6, 0, 0, 0, 0, 0, 0]
                };
                let alloc = if cdb[0] == 0x1A {
                    usize::from(*cdb.get(4).unwrap_or(&0))
                } else if cdb.len() >= 9 {
                    usize::from(be16(cdb, 7))
                } else {
                    0
                };
                cut(d, alloc)
            }
            0x25 => {
                let mut d = vec![0u8; 8];
                let last = (self.blocks.saturating_sub(1)).min(0xFFFF_FFFF) as u32;
                d[..4].copy_from_slice(&last.to_be_bytes());
                d[4..].copy_from_slice(&self.block_size.to_be_bytes());
                cut(d, 8)
            }
            0x9E if need(14) || cdb[1] & 0x1F != 0x10 => Outcome::check(INVALID_FIELD),
            0x9E => {
                let mut d = vec![0u8; 32];
                d[..8].copy_from_slice(&self.blocks.saturating_sub(1).to_be_bytes());
                d[8..12].copy_from_slice(&self.block_size.to_be_bytes());
                d[14] = if self.thin { 0xC0 } else { 0 };
                cut(d, be32(cdb, 10) as usize)
            }
            0xA0 if need(12) => Outcome::check(INVALID_FIELD),
            0xA0 => {
                let mut d = vec![0, 0, 0, 8, 0, 0, 0, 0];
                d.extend_from_slice(&[0; 8]);
                cut(d, be32(cdb, 6) as usize)
            }
            0x28 | 0x2A | 0x88 | 0x8A => {
                let (lba, n) = match cdb[0] {
                    0x28 | 0x2A if cdb.len() >= 10 => {
                        (u64::from(be32(cdb, 2)), u64::from(be16(cdb, 7)))
                    }
                    0x88 | 0x8A if cdb.len() >= 16 => (be64(cdb, 2), u64::from(be32(cdb, 10))),
                    _ => return Outcome::check(INVALID_FIELD),
                };
                if lba.checked_add(n).is_none_or(|end| end > self.blocks) {
                    return Outcome::check(LBA_OUT_OF_RANGE);
                }
                let bytes = n * u64::from(self.block_size);
                if cdb[0] & 2 != 0 {
                    // WRITE: the data the host read.
                    if (data_out.len() as u64) < bytes {
                        return Outcome::check(INVALID_FIELD);
                    }
                    if self.check_writes {
                        let base = lba * u64::from(self.block_size);
                        for (i, &b) in data_out[..bytes as usize].iter().enumerate() {
                            assert_eq!(
                                b,
                                written(base + i as u64),
                                "WRITE of LBA {lba}+{n}: byte {i} is not what the caller wrote"
                            );
                        }
                    }
                    for l in lba..lba + n {
                        self.state.insert(l, State::Written);
                    }
                    Outcome::good(Vec::new())
                } else {
                    if bytes > buffer as u64 {
                        return Outcome::check(INVALID_FIELD);
                    }
                    let mut d = Vec::with_capacity(bytes as usize);
                    for l in lba..lba + n {
                        d.extend_from_slice(&self.block(l));
                    }
                    Outcome::good(d)
                }
            }
            0x42 if !self.thin => Outcome::check(INVALID_OPCODE),
            0x42 => {
                // UNMAP parameter list: 8-byte header (block descriptor data length @2), then
                // 16-byte descriptors (LBA @0, blocks @8).
                if data_out.len() < 8 {
                    return Outcome::check(INVALID_FIELD);
                }
                let declared = usize::from(be16(data_out, 2));
                let body = &data_out[8..(8 + declared).min(data_out.len())];
                for d in body.chunks_exact(16) {
                    let (lba, n) = (be64(d, 0), u64::from(be32(d, 8)));
                    if n > u64::from(self.max_unmap_blocks)
                        || lba.checked_add(n).is_none_or(|end| end > self.blocks)
                    {
                        return Outcome::check(LBA_OUT_OF_RANGE);
                    }
                    for l in lba..lba + n {
                        self.state.insert(l, State::Unmapped);
                    }
                }
                Outcome::good(Vec::new())
            }
            _ => Outcome::check(INVALID_OPCODE),
        }
    }
}
