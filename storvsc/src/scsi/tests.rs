use super::*;
use crate::protocol::{ScsiStatus, SrbStatus};

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
