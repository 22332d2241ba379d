//! SCSI commands (SPC/SBC) a disk driver needs (devices §3.9): CDB builders, parsers for the
//! data the device returns, sense data decoding and the retry/fatal classification of a
//! completed request. All multi-byte SCSI fields are big-endian. Parsers never panic on
//! device bytes: short or inconsistent data is an error or is clamped.

mod cdb;
mod data;
mod sense;
#[cfg(test)]
mod tests;

pub use cdb::*;
pub use data::*;
pub use sense::*;

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
