//! Many random packets of random kinds and sizes through wrap-around, batched and unbatched,
//! against a simple reference model (fixed seed), on flat and on double-mapped memory.

mod common;

use common::{Checked, HeapRing, MirrorMemory, Rng};
use std::collections::VecDeque;
use vmbus_guest::ring::*;

#[derive(Debug, Clone, PartialEq)]
enum Kind {
    InBand(bool),
    Completion,
    Gpa(Vec<(u32, u32, Vec<u64>)>),
    Xfer(u16, Vec<TransferPageRange>),
}

#[derive(Debug, Clone, PartialEq)]
struct Model {
    tid: u64,
    kind: Kind,
    payload: Vec<u8>,
    total: u32,
}

fn random_packet(rng: &mut Rng, max_payload: u64) -> Model {
    let tid = rng.next();
    let payload: Vec<u8> = (0..rng.below(max_payload + 1))
        .map(|_| rng.next() as u8)
        .collect();
    let kind = match rng.below(4) {
        0 => Kind::InBand(rng.below(2) == 1),
        1 => Kind::Completion,
        2 => Kind::Gpa(
            (0..1 + rng.below(3))
                .map(|_| {
                    let off = rng.below(4096) as u32;
                    let len = rng.below(3 * 4096) as u32;
                    let pages = (off as u64 + len as u64).div_ceil(4096);
                    (len, off, (0..pages).map(|_| rng.next() >> 12).collect())
                })
                .collect(),
        ),
        _ => Kind::Xfer(
            rng.next() as u16,
            (0..rng.below(5))
                .map(|_| TransferPageRange {
                    byte_count: rng.next() as u32,
                    byte_offset: rng.next() as u32,
                })
                .collect(),
        ),
    };
    let header = match &kind {
        Kind::Gpa(r) => 8 + r.iter().map(|(_, _, p)| 8 + 8 * p.len()).sum::<usize>(),
        Kind::Xfer(_, r) => 8 + 8 * r.len(),
        _ => 0,
    };
    let total = ((16 + header + payload.len()).div_ceil(8) * 8 + 8) as u32;
    Model {
        tid,
        kind,
        payload,
        total,
    }
}

fn write_model<M: RingMemory>(w: &mut RingWriter<M>, m: &Model) -> Result<(), WriteError> {
    let payload = [m.payload.as_slice()];
    match &m.kind {
        Kind::InBand(c) => w.write(&OutgoingPacket::in_band(m.tid, *c, &payload)),
        Kind::Completion => w.write(&OutgoingPacket::completion(m.tid, &payload)),
        Kind::Gpa(r) => {
            let ranges: Vec<GpaRange<'_>> = r
                .iter()
                .map(|(len, off, pfns)| GpaRange {
                    byte_count: *len,
                    byte_offset: *off,
                    pfns,
                })
                .collect();
            w.write(&OutgoingPacket::gpa_direct(m.tid, &ranges, &payload))
        }
        Kind::Xfer(id, r) => w.write(&OutgoingPacket::transfer_pages(
            m.tid, *id, true, r, &payload,
        )),
    }
}

fn check(p: &IncomingPacket<'_>, m: &Model) {
    assert_eq!(p.transaction_id(), m.tid);
    assert_eq!(p.descriptor.length8 as u32 * 8 + 8, m.total);
    assert_eq!(&p.payload()[..m.payload.len()], &m.payload[..]);
    assert!(
        p.payload()[m.payload.len()..].iter().all(|&b| b == 0),
        "padding is zero"
    );
    match (&m.kind, p.kind) {
        (Kind::InBand(c), PacketKind::InBand) => assert_eq!(p.completion_requested(), *c),
        (Kind::Completion, PacketKind::Completion) => {}
        (Kind::Gpa(r), PacketKind::GpaDirect(g)) => {
            let got: Vec<_> = g
                .ranges()
                .map(|x| (x.byte_count, x.byte_offset, x.pfns().collect::<Vec<_>>()))
                .collect();
            assert_eq!(&got, r);
        }
        (Kind::Xfer(id, r), PacketKind::TransferPages(t)) => {
            assert_eq!(t.transfer_page_set_id, *id);
            assert_eq!(&t.ranges().collect::<Vec<_>>(), r);
        }
        (k, got) => panic!("kind mismatch: sent {k:?}, got {got:?}"),
    }
}

fn run<M: RingMemory + Copy>(mem: M, seed: u64, steps: usize, min_fulls: u64) {
    let size = mem.data_size();
    let mut rng = Rng::new(seed);
    let mut w = RingWriter::new(mem).unwrap();
    let mut r = RingReader::new(mem).unwrap();
    let mut committed: VecDeque<Model> = VecDeque::new();
    let mut uncommitted: Vec<Model> = Vec::new();
    // Bytes the writer has filled that the reader has not published as free.
    let mut in_use = 0u32;
    // Bytes of packets read but not yet published.
    let mut read_unpublished = 0u32;
    let mut unpublished_committed = 0u32; // committed bytes the reader has not published
    let mut buf = vec![0u8; size as usize];
    let (mut packets, mut fulls, mut wraps) = (0u64, 0u64, 0u64);
    for _ in 0..steps {
        match rng.below(6) {
            0..=2 => {
                let batch = if rng.below(2) == 0 { 1 } else { 6 };
                let n = 1 + rng.below(batch);
                for _ in 0..n {
                    let max = [16, 200, 1500][rng.below(3) as usize];
                    let m = random_packet(&mut rng, max);
                    match write_model(&mut w, &m) {
                        Ok(()) => {
                            assert!(in_use + m.total <= size - 8, "writer overfilled the ring");
                            in_use += m.total;
                            uncommitted.push(m);
                        }
                        Err(WriteError::Full { needed }) => {
                            assert_eq!(needed, m.total);
                            assert!(in_use + m.total > size - 8, "Full although space was free");
                            fulls += 1;
                            break;
                        }
                        Err(WriteError::TooLarge) => assert!(m.total > size - 8),
                        Err(e) => panic!("{e:?}"),
                    }
                }
                let was_empty = unpublished_committed == 0;
                let masked = r.is_masked();
                let before = w.uncommitted();
                let s = w.commit();
                let expect = before > 0 && was_empty && !masked;
                assert_eq!(s.is_needed(), expect, "signal decision");
                for m in uncommitted.drain(..) {
                    unpublished_committed += m.total;
                    committed.push_back(m);
                }
            }
            3 | 4 => {
                for _ in 0..1 + rng.below(8) {
                    match r.read(&mut buf) {
                        Ok(p) => {
                            let m = committed
                                .pop_front()
                                .expect("read a packet never committed");
                            check(&p, &m);
                            read_unpublished += m.total;
                            packets += 1;
                        }
                        Err(ReadError::Empty) => {
                            assert!(committed.is_empty());
                            break;
                        }
                        Err(e) => panic!("{e:?}"),
                    }
                }
                let published = match rng.below(3) {
                    0 => {
                        let _ = r.publish();
                        true
                    }
                    1 => {
                        let end = r.finish_drain();
                        assert_eq!(end.more, !committed.is_empty());
                        true
                    }
                    _ => {
                        r.begin_drain();
                        false
                    }
                };
                if r.control_snapshot().read_index < 64 {
                    wraps += 1;
                }
                if published {
                    in_use -= read_unpublished;
                    unpublished_committed -= read_unpublished;
                    read_unpublished = 0;
                }
            }
            _ => {
                // Drain everything and publish.
                while let Ok(p) = r.read(&mut buf) {
                    let m = committed.pop_front().expect("extra packet");
                    check(&p, &m);
                    read_unpublished += m.total;
                    packets += 1;
                }
                assert!(committed.is_empty());
                let _ = r.publish();
                in_use -= read_unpublished;
                unpublished_committed -= read_unpublished;
                read_unpublished = 0;
            }
        }
    }
    assert!(packets > steps as u64 / 2, "only {packets} packets");
    assert!(fulls >= min_fulls, "the ring rarely filled ({fulls})");
    assert!(wraps > 10, "the ring rarely wrapped ({wraps})");
}

#[test]
fn random_packets_through_wraparound_flat() {
    let ring = HeapRing::new(4096);
    let mem = Checked(ring.mem);
    run(mem, 0x5EED_0001, 40_000, 1000);
}

#[test]
fn random_packets_through_wraparound_large_ring() {
    let ring = HeapRing::new(64 * 1024);
    let mem = Checked(ring.mem);
    run(mem, 0x5EED_0002, 40_000, 0);
}

#[test]
fn random_packets_through_wraparound_double_mapped() {
    let mem = MirrorMemory::new(4096);
    run(&mem, 0x5EED_0003, 20_000, 500);
}
