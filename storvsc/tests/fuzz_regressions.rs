//! Regression tests for bugs the storvsc fuzz target (`fuzz/fuzz_targets/storvsc.rs`) found,
//! each replaying the minimized input's scenario through the public API.

use storvsc::scsi::{Cdb, opcode};

/// `Cdb::read_write` picked the 10-byte form for an empty range at LBA 2^32 (its end, 2^32,
/// "fits"), truncating the LBA to 0. Fuzz input: parsers, `read_write(false, 1 << 32, 0)`.
#[test]
fn empty_range_past_32_bit_lbas_keeps_its_lba() {
    for write in [false, true] {
        let c = Cdb::read_write(write, 1 << 32, 0).unwrap();
        assert_eq!(c.rw_range(), Some((1 << 32, 0)));
        let op = if write {
            opcode::WRITE_16
        } else {
            opcode::READ_16
        };
        assert_eq!(c.opcode(), op);
    }
    // The last 32-bit LBA still gets the short form.
    let c = Cdb::read_write(false, u64::from(u32::MAX), 1).unwrap();
    assert_eq!(c.opcode(), opcode::READ_10);
    assert_eq!(c.rw_range(), Some((u64::from(u32::MAX), 1)));
}
