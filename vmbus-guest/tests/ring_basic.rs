//! Layout asserts against vmbus-core.md §7 and devices.md §0, and the behaviour of each packet
//! kind, trailer, space accounting and signalling decision.

mod common;

use common::{HeapRing, MirrorMemory};
use std::mem::{offset_of, size_of};
use vmbus_guest::ring::protocol::*;
use vmbus_guest::ring::*;

#[test]
fn layouts_match_the_protocol() {
    assert_eq!(size_of::<ControlPageLayout>(), 4096);
    assert_eq!(offset_of!(ControlPageLayout, write_index), 0x00);
    assert_eq!(offset_of!(ControlPageLayout, read_index), 0x04);
    assert_eq!(offset_of!(ControlPageLayout, interrupt_mask), 0x08);
    assert_eq!(offset_of!(ControlPageLayout, pending_send_size), 0x0C);
    assert_eq!(offset_of!(ControlPageLayout, feature_bits), 0x40);
    assert_eq!(offset_of!(ControlPage, write_index), 0x00);
    assert_eq!(offset_of!(ControlPage, read_index), 0x04);
    assert_eq!(offset_of!(ControlPage, interrupt_mask), 0x08);
    assert_eq!(offset_of!(ControlPage, pending_send_size), 0x0C);
    assert_eq!(offset_of!(ControlPage, feature_bits), 0x40);
    assert_eq!(size_of::<PacketDescriptor>(), 16);
    assert_eq!(offset_of!(PacketDescriptor, data_offset8), 2);
    assert_eq!(offset_of!(PacketDescriptor, length8), 4);
    assert_eq!(offset_of!(PacketDescriptor, flags), 6);
    assert_eq!(offset_of!(PacketDescriptor, transaction_id), 8);
    assert_eq!(size_of::<TransferPageHeader>(), 8);
    assert_eq!(offset_of!(TransferPageHeader, sender_owns_set), 2);
    assert_eq!(offset_of!(TransferPageHeader, range_count), 4);
    assert_eq!(size_of::<TransferPageRange>(), 8);
    assert_eq!(size_of::<GpaDirectHeader>(), 8);
    assert_eq!(offset_of!(GpaDirectHeader, range_count), 4);
    assert_eq!(size_of::<GpaRangeHeader>(), 8);
    assert_eq!(PacketType::DATA_IN_BAND.0, 6);
    assert_eq!(PacketType::DATA_USING_TRANSFER_PAGES.0, 7);
    assert_eq!(PacketType::DATA_USING_GPA_DIRECT.0, 9);
    assert_eq!(PacketType::COMPLETION.0, 11);
}

#[test]
fn in_band_packet_bytes_and_trailer() {
    let ring = HeapRing::new(4096);
    let mut w = RingWriter::new(ring.mem).unwrap();
    let mut r = RingReader::new(ring.mem).unwrap();
    assert_eq!(
        ring.mem
            .control()
            .feature_bits
            .load(std::sync::atomic::Ordering::Relaxed),
        1
    );
    let payload = [0xAAu8; 13];
    assert!(
        w.send(&OutgoingPacket::in_band(0x1234, true, &[&payload]))
            .unwrap()
            .is_needed()
    );
    // descriptor 16 + 13 payload -> 32 bytes (length8 4), trailer 8.
    let mut raw = [0u8; 48];
    ring.mem.read_data(0, &mut raw);
    assert_eq!(&raw[..8], &[6, 0, 2, 0, 4, 0, 1, 0]);
    assert_eq!(u64::from_le_bytes(raw[8..16].try_into().unwrap()), 0x1234);
    assert_eq!(&raw[16..29], &payload);
    assert_eq!(&raw[29..32], &[0, 0, 0]);
    assert_eq!(u64::from_le_bytes(raw[32..40].try_into().unwrap()), 0);
    // Second packet's trailer carries its start offset (40) in the high half.
    assert!(
        !w.send(&OutgoingPacket::completion(7, &[]))
            .unwrap()
            .is_needed()
    );
    ring.mem.read_data(40 + 16, &mut raw[..8]);
    assert_eq!(
        u64::from_le_bytes(raw[..8].try_into().unwrap()),
        40u64 << 32
    );

    let mut buf = [0u8; 64];
    let p = r.read(&mut buf).unwrap();
    assert_eq!(p.packet_type(), PacketType::DATA_IN_BAND);
    assert!(p.completion_requested());
    assert_eq!(p.transaction_id(), 0x1234);
    assert_eq!(&p.payload()[..13], &payload);
    assert_eq!(p.payload().len(), 16);
    let p = r.read(&mut buf).unwrap();
    assert!(matches!(p.kind, PacketKind::Completion));
    assert_eq!(p.transaction_id(), 7);
    assert_eq!(r.read(&mut buf).unwrap_err(), ReadError::Empty);
}

#[test]
fn gpa_direct_and_transfer_pages_round_trip() {
    let ring = HeapRing::new(8192);
    let mut w = RingWriter::new(ring.mem).unwrap();
    let mut r = RingReader::new(ring.mem).unwrap();
    let pfns_a = [0x100u64];
    let pfns_b = [0x200u64, 0x201, 0x202];
    let ranges = [
        GpaRange {
            byte_count: 100,
            byte_offset: 8,
            pfns: &pfns_a,
        },
        GpaRange {
            byte_count: 8192,
            byte_offset: 16,
            pfns: &pfns_b,
        },
    ];
    let req = [1u8, 2, 3, 4];
    w.write(&OutgoingPacket::gpa_direct(9, &ranges, &[&req]))
        .unwrap();
    let xfer = [
        TransferPageRange {
            byte_count: 1514,
            byte_offset: 0,
        },
        TransferPageRange {
            byte_count: 60,
            byte_offset: 4096,
        },
    ];
    w.write(&OutgoingPacket::transfer_pages(
        10,
        0xCAFE,
        true,
        &xfer,
        &[&req, &req],
    ))
    .unwrap();
    let _ = w.commit();

    let mut buf = [0u8; 256];
    let p = r.read(&mut buf).unwrap();
    assert_eq!(p.descriptor.data_offset8 as usize * 8, 24 + 16 + 8 + 24);
    assert!(p.completion_requested());
    let PacketKind::GpaDirect(g) = p.kind else {
        panic!("not GPA direct")
    };
    assert_eq!(g.range_count(), 2);
    let got: Vec<_> = g
        .ranges()
        .map(|r| (r.byte_count, r.byte_offset, r.pfns().collect::<Vec<_>>()))
        .collect();
    assert_eq!(
        got,
        vec![(100, 8, vec![0x100]), (8192, 16, vec![0x200, 0x201, 0x202])]
    );
    assert_eq!(&p.payload()[..4], &req);

    let p = r.read(&mut buf).unwrap();
    let PacketKind::TransferPages(t) = p.kind else {
        panic!("not transfer pages")
    };
    assert_eq!(t.transfer_page_set_id, 0xCAFE);
    assert!(t.sender_owns_set);
    assert_eq!(t.ranges().collect::<Vec<_>>(), xfer.to_vec());
    assert_eq!(&p.payload()[..8], &[1, 2, 3, 4, 1, 2, 3, 4]);
}

#[test]
fn malformed_outgoing_packets_are_rejected() {
    let ring = HeapRing::new(4096);
    let mut w = RingWriter::new(ring.mem).unwrap();
    let bad = [GpaRange {
        byte_count: 4096,
        byte_offset: 8,
        pfns: &[1],
    }];
    assert_eq!(
        w.write(&OutgoingPacket::gpa_direct(1, &bad, &[])),
        Err(WriteError::InvalidPacket)
    );
    assert_eq!(
        w.write(&OutgoingPacket::gpa_direct(1, &[], &[])),
        Err(WriteError::InvalidPacket)
    );
    let big = vec![0u8; 4096];
    assert_eq!(
        w.write(&OutgoingPacket::in_band(1, false, &[&big])),
        Err(WriteError::TooLarge)
    );
    // A packet must stay below D - 8 including its trailer (§7.7): exactly D - 8 is refused
    // (OpenVMM treats it as invalid), D - 16 is the largest that is ever written.
    let at_limit = vec![0u8; 4096 - 8 - 8 - 16];
    assert_eq!(
        w.write(&OutgoingPacket::in_band(1, false, &[&at_limit])),
        Err(WriteError::TooLarge)
    );
    let max = vec![0u8; 4096 - 8 - 8 - 16 - 8];
    assert!(w.send(&OutgoingPacket::in_band(1, false, &[&max])).is_ok());
}

#[test]
fn writer_never_fills_the_ring() {
    let ring = HeapRing::new(256);
    let mut w = RingWriter::new(ring.mem).unwrap();
    let mut r = RingReader::new(ring.mem).unwrap();
    // 32-byte packets (16 + 8 payload + 8 trailer): 7 fit in 256 - 8 = 248 bytes, not 8.
    let p = [0u8; 8];
    for _ in 0..7 {
        w.write(&OutgoingPacket::in_band(0, false, &[&p])).unwrap();
    }
    assert_eq!(
        w.write(&OutgoingPacket::in_band(0, false, &[&p])),
        Err(WriteError::Full { needed: 32 })
    );
    let _ = w.commit();
    let mut buf = [0u8; 64];
    r.read(&mut buf).unwrap();
    // Not yet published: still full.
    assert!(matches!(
        w.write(&OutgoingPacket::in_band(0, false, &[&p])),
        Err(WriteError::Full { .. })
    ));
    let _ = r.publish();
    w.write(&OutgoingPacket::in_band(0, false, &[&p])).unwrap();
}

#[test]
fn writer_signals_only_on_empty_to_non_empty_when_unmasked() {
    let ring = HeapRing::new(4096);
    let mut w = RingWriter::new(ring.mem).unwrap();
    let mut r = RingReader::new(ring.mem).unwrap();
    let pkt = OutgoingPacket::in_band(0, false, &[]);
    assert_eq!(w.send(&pkt).unwrap(), Signal::Needed);
    assert_eq!(
        w.send(&pkt).unwrap(),
        Signal::NotNeeded,
        "ring was not empty"
    );
    let mut buf = [0u8; 64];
    r.begin_drain();
    while r.read(&mut buf).is_ok() {}
    let _ = r.publish();
    assert_eq!(w.send(&pkt).unwrap(), Signal::NotNeeded, "reader masked");
    r.read(&mut buf).unwrap();
    let end = r.finish_drain();
    assert!(!end.more);
    assert_eq!(w.send(&pkt).unwrap(), Signal::Needed, "empty and unmasked");
    // A batch signals once.
    r.read(&mut buf).unwrap();
    let end = r.finish_drain();
    assert!(!end.more);
    for _ in 0..10 {
        w.write(&pkt).unwrap();
    }
    assert_eq!(w.commit(), Signal::Needed);
    assert_eq!(w.commit(), Signal::NotNeeded, "nothing to commit");
}

#[test]
fn finish_drain_reports_data_that_arrived_while_masked() {
    let ring = HeapRing::new(4096);
    let mut w = RingWriter::new(ring.mem).unwrap();
    let mut r = RingReader::new(ring.mem).unwrap();
    r.begin_drain();
    assert_eq!(
        w.send(&OutgoingPacket::in_band(0, false, &[])).unwrap(),
        Signal::NotNeeded
    );
    let end = r.finish_drain();
    assert!(
        end.more,
        "the writer did not signal, so the reader must not sleep"
    );
}

#[test]
fn reader_signals_when_freed_space_crosses_pending_send_size() {
    let ring = HeapRing::new(256);
    let mut w = RingWriter::new(ring.mem).unwrap();
    let mut r = RingReader::new(ring.mem).unwrap();
    let p = [0u8; 8];
    for _ in 0..7 {
        w.write(&OutgoingPacket::in_band(0, false, &[&p])).unwrap();
    }
    let big = [0u8; 72]; // 16 + 72 + 8 = 96 bytes
    let needed = match w.write(&OutgoingPacket::in_band(0, false, &[&big])) {
        Err(WriteError::Full { needed }) => needed,
        other => panic!("{other:?}"),
    };
    assert_eq!(needed, 96);
    let _ = w.commit();
    assert!(!w.request_space(needed).unwrap());
    let mut buf = [0u8; 64];
    // Free 32 bytes at a time: 8 free -> 40 -> 72 -> 104; the signal comes when free > 96.
    let mut signals = vec![];
    for _ in 0..4 {
        r.read(&mut buf).unwrap();
        signals.push(r.publish().is_needed());
    }
    assert_eq!(signals, vec![false, false, true, false]);
    w.write(&OutgoingPacket::in_band(0, false, &[&big]))
        .unwrap();
    assert_eq!(
        ring.mem
            .control()
            .pending_send_size
            .load(std::sync::atomic::Ordering::Relaxed),
        0
    );
}

/// A large packet waits for space; a smaller one that fits in the meantime (a receive
/// completion written while a send request waits) must leave the larger one's pending send
/// size in place, or the reader never signals and the large packet waits for unrelated
/// traffic. Fails with a writer that clears pending send size on any successful write.
#[test]
fn a_smaller_write_keeps_a_larger_waiters_pending_send_size() {
    let ring = HeapRing::new(256);
    let mut w = RingWriter::new(ring.mem).unwrap();
    let mut r = RingReader::new(ring.mem).unwrap();
    let pending = || {
        ring.mem
            .control()
            .pending_send_size
            .load(std::sync::atomic::Ordering::Relaxed)
    };
    let (small_payload, big_payload) = ([0u8; 8], [0u8; 72]);
    let (small_parts, big_parts): ([&[u8]; 1], [&[u8]; 1]) = ([&small_payload], [&big_payload]);
    let small = OutgoingPacket::in_band(0, false, &small_parts); // 32 ring bytes
    let big = OutgoingPacket::in_band(0, false, &big_parts); // 96 ring bytes
    for _ in 0..6 {
        w.write(&small).unwrap();
    }
    let _ = w.commit();
    // 248 - 192 = 56 bytes free: the big packet waits, a small one still fits.
    assert_eq!(w.write(&big), Err(WriteError::Full { needed: 96 }));
    assert!(!w.request_space(96).unwrap());
    assert_eq!(pending(), 96);
    w.write(&small).unwrap();
    let _ = w.commit();
    assert_eq!(
        pending(),
        96,
        "the small write cancelled the big one's wake-up"
    );
    // A small waiter does not lower it either.
    assert_eq!(w.write(&small), Err(WriteError::Full { needed: 32 }));
    assert!(!w.request_space(32).unwrap());
    assert_eq!(pending(), 96);
    // The reader frees 32 bytes at a time: 24 free -> 56 -> 88 -> 120; it signals once, when
    // free space passes 96, and then the big packet goes and clears the field.
    let mut buf = [0u8; 64];
    let mut signals = vec![];
    for _ in 0..4 {
        r.read(&mut buf).unwrap();
        signals.push(r.publish().is_needed());
    }
    assert_eq!(signals, vec![false, false, true, false]);
    w.write(&big).unwrap();
    assert_eq!(pending(), 0);
}

#[test]
fn no_space_signal_without_the_feature_bit() {
    let ring = HeapRing::new(256);
    let mut w = RingWriter::new(ring.mem).unwrap();
    let mut r = RingReader::new(ring.mem).unwrap();
    ring.mem
        .control()
        .feature_bits
        .store(0, std::sync::atomic::Ordering::Relaxed);
    for _ in 0..7 {
        w.write(&OutgoingPacket::in_band(0, false, &[&[0u8; 8]]))
            .unwrap();
    }
    let _ = w.commit();
    assert!(!w.request_space(96).unwrap());
    let mut buf = [0u8; 64];
    for _ in 0..7 {
        r.read(&mut buf).unwrap();
        assert!(!r.publish().is_needed());
    }
}

#[test]
fn double_mapped_memory_needs_no_split_copies() {
    let mem = MirrorMemory::new(512);
    let mut w = RingWriter::new(&mem).unwrap();
    let mut r = RingReader::new(&mem).unwrap();
    let mut buf = [0u8; 512];
    for i in 0..200u32 {
        let payload: Vec<u8> = (0..(i % 90) as u8).collect();
        w.send(&OutgoingPacket::in_band(i as u64, false, &[&payload]))
            .unwrap()
            .is_needed();
        let p = r.read(&mut buf).unwrap();
        assert_eq!(p.transaction_id(), i as u64);
        assert_eq!(&p.payload()[..payload.len()], &payload[..]);
        let _ = r.publish();
    }
}

#[test]
fn flat_memory_pair() {
    let mut buf = vec![0u64; (4096 + 4096) / 8];
    let (mut w, mut r) = FlatRingMemory::new_pair(&mut buf).unwrap();
    let _ = w
        .send(&OutgoingPacket::in_band(5, false, &[b"hello"]))
        .unwrap();
    let mut out = [0u8; 64];
    assert_eq!(&r.read(&mut out).unwrap().payload()[..5], b"hello");
    let mut small = vec![0u64; 100];
    assert!(FlatRingMemory::new_pair(&mut small).is_err());
}

#[test]
fn buffer_too_small_consumes_nothing() {
    let ring = HeapRing::new(4096);
    let mut w = RingWriter::new(ring.mem).unwrap();
    let mut r = RingReader::new(ring.mem).unwrap();
    let _ = w
        .send(&OutgoingPacket::in_band(1, false, &[&[7u8; 100]]))
        .unwrap();
    let mut small = [0u8; 64];
    assert_eq!(
        r.read(&mut small).unwrap_err(),
        ReadError::BufferTooSmall { needed: 120 }
    );
    let mut big = [0u8; 128];
    assert_eq!(r.read(&mut big).unwrap().payload()[99], 7);
}
