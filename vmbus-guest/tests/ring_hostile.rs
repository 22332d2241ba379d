//! A hostile peer: every control field and every descriptor/header field corrupted in turn
//! must give a typed `Corrupt` (or harmless flow control), never a panic, an out-of-bounds
//! access (the `Checked` memory asserts) or an endless loop.

mod common;

use common::{Checked, HeapRing, Rng};
use std::sync::atomic::Ordering::Relaxed;
use vmbus_guest::ring::protocol::*;
use vmbus_guest::ring::*;

const SIZE: u32 = 4096;

/// A ring holding one in-band packet (desc + 24 bytes payload = 40 bytes, trailer 8).
fn ring_with_packet() -> (
    HeapRing,
    RingReader<Checked<vmbus_guest::ring::RawRingMemory>>,
) {
    let ring = HeapRing::new(SIZE);
    let mut w = RingWriter::new(Checked(ring.mem)).unwrap();
    let _ = w
        .send(&OutgoingPacket::in_band(1, false, &[&[0x55; 24]]))
        .unwrap();
    let r = RingReader::new(Checked(ring.mem)).unwrap();
    (ring, r)
}

fn corrupt(r: &mut RingReader<impl RingMemory>) -> Corrupt {
    let mut buf = vec![0u8; 1 << 20];
    match r.read(&mut buf) {
        Err(ReadError::Corrupt(c)) => c,
        other => panic!("expected Corrupt, got {other:?}"),
    }
}

fn set_desc(ring: &HeapRing, f: impl FnOnce(&mut PacketDescriptor)) {
    use zerocopy::{FromBytes, IntoBytes};
    let mut raw = [0u8; 16];
    ring.mem.read_data(0, &mut raw);
    let mut d = PacketDescriptor::read_from_bytes(&raw[..]).unwrap();
    f(&mut d);
    ring.mem.write_data(0, d.as_bytes());
}

#[test]
fn write_index_out_of_range_or_misaligned() {
    for (w, want) in [
        (SIZE, Corrupt::WriteIndexOutOfRange(SIZE)),
        (u32::MAX, Corrupt::WriteIndexOutOfRange(u32::MAX)),
        (SIZE + 8, Corrupt::WriteIndexOutOfRange(SIZE + 8)),
        (44, Corrupt::WriteIndexMisaligned(44)),
        (1, Corrupt::WriteIndexMisaligned(1)),
    ] {
        let ring = HeapRing::new(SIZE);
        let mut r = RingReader::new(Checked(ring.mem)).unwrap();
        ring.mem.control().write_index.store(w, Relaxed);
        assert_eq!(corrupt(&mut r), want);
        // Constructing an endpoint over the corrupt ring fails too.
        assert_eq!(RingReader::new(Checked(ring.mem)).unwrap_err(), want);
        assert_eq!(RingWriter::new(Checked(ring.mem)).unwrap_err(), want);
        // finish_drain reports "more" so the caller reads and meets the error.
        assert!(r.finish_drain().more);
    }
}

#[test]
fn write_index_claiming_less_than_a_packet() {
    // The reader reads the write index once per snapshot, so corrupt it before the reader
    // takes its first look.
    for (w, want) in [
        (16, Corrupt::TruncatedPacket { available: 16 }),
        (
            40,
            Corrupt::LengthExceedsAvailable {
                length: 48,
                available: 40,
            },
        ),
    ] {
        let (ring, _) = ring_with_packet();
        ring.mem.control().write_index.store(w, Relaxed);
        let mut r = RingReader::new(Checked(ring.mem)).unwrap();
        assert_eq!(corrupt(&mut r), want);
    }
}

#[test]
fn read_index_out_of_range_or_misaligned() {
    for (ri, want) in [
        (SIZE, Corrupt::ReadIndexOutOfRange(SIZE)),
        (u32::MAX - 3, Corrupt::ReadIndexOutOfRange(u32::MAX - 3)),
        (12, Corrupt::ReadIndexMisaligned(12)),
    ] {
        // A writer that needs the read index again (its cached view is used up) sees it.
        let ring = HeapRing::new(SIZE);
        let mut w = RingWriter::new(Checked(ring.mem)).unwrap();
        let p = [0u8; 1000];
        let mut sent = 0;
        let err = loop {
            match w.write(&OutgoingPacket::in_band(0, false, &[&p])) {
                Ok(()) => {
                    sent += 1;
                    if sent == 2 {
                        ring.mem.control().read_index.store(ri, Relaxed);
                    }
                }
                Err(e) => break e,
            }
        };
        assert_eq!(err, WriteError::Corrupt(want));
        assert_eq!(w.request_space(1024), Err(want));
        // The signal decision with a garbage read index is simply "no signal".
        assert!(!w.commit().is_needed());
        assert_eq!(RingWriter::new(Checked(ring.mem)).unwrap_err(), want);
    }
}

#[test]
fn interrupt_mask_pending_send_size_and_feature_garbage_are_harmless() {
    let ring = HeapRing::new(SIZE);
    let mut w = RingWriter::new(Checked(ring.mem)).unwrap();
    let mut r = RingReader::new(Checked(ring.mem)).unwrap();
    let c = ring.mem.control();
    c.interrupt_mask.store(0xDEAD_BEEF, Relaxed);
    assert!(
        !w.send(&OutgoingPacket::in_band(0, false, &[]))
            .unwrap()
            .is_needed(),
        "masked"
    );
    let mut buf = [0u8; 64];
    for pending in [u32::MAX, SIZE, SIZE + 1, 7, 8, 0x8000_0000] {
        c.pending_send_size.store(pending, Relaxed);
        c.feature_bits.store(u32::MAX, Relaxed);
        let _ = w.send(&OutgoingPacket::in_band(0, false, &[])).unwrap();
        r.read(&mut buf).unwrap();
        let _ = r.publish();
    }
    // Pending send size that can never be satisfied never signals.
    c.pending_send_size.store(u32::MAX, Relaxed);
    let _ = w.send(&OutgoingPacket::in_band(0, false, &[])).unwrap();
    r.read(&mut buf).unwrap();
    assert!(!r.publish().is_needed());
}

#[test]
fn descriptor_data_offset_below_two_or_beyond_length() {
    for (off, len) in [(0u16, 5u16), (1, 5), (6, 5), (u16::MAX, 5)] {
        let (ring, mut r) = ring_with_packet();
        set_desc(&ring, |d| {
            d.data_offset8 = off;
            d.length8 = len;
        });
        assert_eq!(
            corrupt(&mut r),
            Corrupt::BadDataOffset {
                offset8: off,
                length8: len
            }
        );
    }
}

#[test]
fn descriptor_length_beyond_available() {
    for len in [6u16, 7, 100, u16::MAX] {
        let (ring, mut r) = ring_with_packet();
        set_desc(&ring, |d| d.length8 = len);
        assert_eq!(
            corrupt(&mut r),
            Corrupt::LengthExceedsAvailable {
                length: len as u32 * 8 + 8,
                available: 48
            }
        );
    }
    // length8 smaller than the real packet just yields a shorter packet; the trailer slot then
    // points into the payload and the next packet is garbage the reader also rejects.
    let (ring, mut r) = ring_with_packet();
    set_desc(&ring, |d| d.length8 = 2);
    let mut buf = [0u8; 64];
    assert!(r.read(&mut buf).is_ok());
    assert!(matches!(r.read(&mut buf), Err(ReadError::Corrupt(_))));
}

#[test]
fn unknown_type_and_flags_are_surfaced_not_trusted() {
    let (ring, mut r) = ring_with_packet();
    set_desc(&ring, |d| {
        d.packet_type = PacketType(0x7777);
        d.flags = 0xFFFF;
    });
    let mut buf = [0u8; 64];
    let p = r.read(&mut buf).unwrap();
    assert!(matches!(p.kind, PacketKind::Other));
    assert_eq!(p.packet_type(), PacketType(0x7777));
}

fn xfer_ring(count: u32, offset8: u16) -> (HeapRing, RingReader<Checked<RawRingMemory>>) {
    use zerocopy::IntoBytes;
    let (ring, r) = ring_with_packet();
    set_desc(&ring, |d| {
        d.packet_type = PacketType::DATA_USING_TRANSFER_PAGES;
        d.data_offset8 = offset8;
    });
    let h = TransferPageHeader {
        transfer_page_set_id: 1,
        sender_owns_set: 1,
        reserved: 0xFF,
        range_count: count,
    };
    ring.mem.write_data(16, h.as_bytes());
    (ring, r)
}

#[test]
fn transfer_page_header_and_range_count() {
    let (_ring, mut r) = xfer_ring(1, 2);
    assert_eq!(corrupt(&mut r), Corrupt::HeaderExceedsDataOffset);
    for count in [2u32, 3, u32::MAX, 0x2000_0000] {
        let (_ring, mut r) = xfer_ring(count, 4);
        assert_eq!(corrupt(&mut r), Corrupt::BadRangeCount(count));
    }
    let (_ring, mut r) = xfer_ring(2, 5);
    let mut buf = [0u8; 64];
    let p = r.read(&mut buf).unwrap();
    let PacketKind::TransferPages(t) = p.kind else {
        panic!()
    };
    assert_eq!(t.range_count(), 2);
}

fn gpa_ring(
    count: u32,
    range: (u32, u32),
    offset8: u16,
) -> (HeapRing, RingReader<Checked<RawRingMemory>>) {
    use zerocopy::IntoBytes;
    let (ring, r) = ring_with_packet();
    set_desc(&ring, |d| {
        d.packet_type = PacketType::DATA_USING_GPA_DIRECT;
        d.data_offset8 = offset8;
    });
    ring.mem.write_data(
        16,
        GpaDirectHeader {
            reserved: 0,
            range_count: count,
        }
        .as_bytes(),
    );
    ring.mem.write_data(
        24,
        GpaRangeHeader {
            byte_count: range.0,
            byte_offset: range.1,
        }
        .as_bytes(),
    );
    (ring, r)
}

#[test]
fn gpa_direct_ranges_must_fit_the_header() {
    let (_ring, mut r) = gpa_ring(1, (100, 0), 2);
    assert_eq!(corrupt(&mut r), Corrupt::HeaderExceedsDataOffset);
    let (_ring, mut r) = gpa_ring(0, (100, 0), 5);
    assert_eq!(corrupt(&mut r), Corrupt::BadRangeCount(0));
    let (_ring, mut r) = gpa_ring(1, (100, 4096), 5);
    assert_eq!(corrupt(&mut r), Corrupt::BadRangeOffset(4096));
    // One page fits in offset8 = 5 (24 + 8 + 8 = 40); two pages do not.
    let (_ring, mut r) = gpa_ring(1, (4096, 8), 5);
    assert_eq!(corrupt(&mut r), Corrupt::BadRangeCount(1));
    let (_ring, mut r) = gpa_ring(1, (u32::MAX, 4095), 5);
    assert_eq!(corrupt(&mut r), Corrupt::BadRangeCount(1));
    let (_ring, mut r) = gpa_ring(u32::MAX, (8, 0), 5);
    assert_eq!(corrupt(&mut r), Corrupt::BadRangeCount(u32::MAX));
    let (_ring, mut r) = gpa_ring(1, (100, 8), 5);
    let mut buf = [0u8; 64];
    assert!(r.read(&mut buf).is_ok());
}

/// Random garbage in indices, descriptors and data, thousands of times: only typed results,
/// every access in bounds (`Checked` panics otherwise), every call returns.
#[test]
fn random_corruption_never_panics_or_overreads() {
    let mut rng = Rng::new(0xBAD_5EED);
    let mut buf = vec![0u8; 1 << 19];
    for round in 0..2000 {
        let ring = HeapRing::new(if round % 2 == 0 { 256 } else { 4096 });
        let size = ring.mem.data_size();
        let mut w = RingWriter::new(Checked(ring.mem)).unwrap();
        let mut r = RingReader::new(Checked(ring.mem)).unwrap();
        for _ in 0..4 {
            let p = vec![0xA5u8; rng.below(100) as usize];
            let _ = w.write(&OutgoingPacket::in_band(rng.next(), true, &[&p]));
        }
        let _ = w.commit();
        for _ in 0..1 + rng.below(6) {
            match rng.below(6) {
                0 => {
                    let v = if rng.below(2) == 0 {
                        rng.below(size as u64 + 16) as u32 & !7
                    } else {
                        rng.next() as u32
                    };
                    ring.mem.control().write_index.store(v, Relaxed);
                }
                1 => ring
                    .mem
                    .control()
                    .read_index
                    .store(rng.next() as u32, Relaxed),
                2 => ring
                    .mem
                    .control()
                    .pending_send_size
                    .store(rng.next() as u32, Relaxed),
                3 => ring
                    .mem
                    .control()
                    .interrupt_mask
                    .store(rng.next() as u32, Relaxed),
                _ => {
                    let off = rng.below(size as u64) as usize;
                    let garbage: Vec<u8> = (0..rng.below(16).min(size as u64 - off as u64))
                        .map(|_| rng.next() as u8)
                        .collect();
                    ring.mem.write_data(off, &garbage);
                }
            }
        }
        for _ in 0..64 {
            match r.read(&mut buf) {
                Ok(p) => {
                    let _ = p.payload().len();
                    if let PacketKind::GpaDirect(g) = p.kind {
                        for range in g.ranges() {
                            let _ = range.pfns().count();
                        }
                    }
                }
                Err(_) => break,
            }
        }
        let _ = r.publish();
        let _ = r.finish_drain();
        let _ = w.write(&OutgoingPacket::in_band(0, false, &[&[1u8; 40]]));
        let _ = w.commit();
        let _ = w.request_space(64);
    }
}

/// A packet larger than the reader's buffer stays at the head of the ring (every `read`
/// says `BufferTooSmall`) until `skip` drops it unread; `skip` checks the descriptor like
/// `read` (a corrupt one is refused, not skipped over).
#[test]
fn skip_drops_a_packet_too_large_for_the_buffer() {
    let ring = HeapRing::new(SIZE);
    let mut w = RingWriter::new(Checked(ring.mem)).unwrap();
    let _ = w
        .send(&OutgoingPacket::in_band(1, false, &[&[0x55; 1000]]))
        .unwrap();
    let _ = w
        .send(&OutgoingPacket::in_band(2, false, &[&[0x66; 8]]))
        .unwrap();
    let mut r = RingReader::new(Checked(ring.mem)).unwrap();
    let mut small = [0u8; 64];
    for _ in 0..2 {
        assert_eq!(
            r.read(&mut small).unwrap_err(),
            ReadError::BufferTooSmall { needed: 1016 }
        );
    }
    let d = r.skip().unwrap();
    assert_eq!((d.transaction_id, d.length8), (1, 127));
    let p = r.read(&mut small).unwrap();
    assert_eq!((p.transaction_id(), p.payload()), (2, &[0x66; 8][..]));
    assert_eq!(r.skip().unwrap_err(), ReadError::Empty);
    let _ = r.publish();
    assert_eq!(
        ring.mem.control().read_index.load(Relaxed),
        ring.mem.control().write_index.load(Relaxed),
        "both packets' space is freed"
    );

    let (ring, mut r) = ring_with_packet();
    set_desc(&ring, |d| d.length8 = 100);
    assert!(matches!(
        r.skip(),
        Err(ReadError::Corrupt(Corrupt::LengthExceedsAvailable { .. }))
    ));
    let (ring, mut r) = ring_with_packet();
    set_desc(&ring, |d| d.data_offset8 = 1);
    assert!(matches!(
        r.skip(),
        Err(ReadError::Corrupt(Corrupt::BadDataOffset { .. }))
    ));
}
