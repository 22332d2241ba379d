//! The guest's outbound ring writer against a hostile reader: the read index, pending send
//! size, feature bits and interrupt mask come from the input and change between writes.
//!
//! Invariants beyond "no panic":
//! - every data access stays inside the ring, and a write touches only the bytes of the
//!   packet it writes, starting at the writer's cursor;
//! - a written packet is byte-exact (descriptor, type-specific header, payload, zero padding,
//!   trailer) against an independent encoding of the same packet;
//! - `Full` writes nothing and happens only when the current read index leaves too little
//!   room; success only with room under some read index the host published; `TooLarge` and
//!   `InvalidPacket` exactly for packets that can never fit or are malformed;
//! - `commit` publishes the cursor and signals exactly when the reader was idle and unmasked;
//!   `request_space` stores the right pending send size (the largest size still waited for,
//!   capped at the largest packet) and answers from the current index; only a write at least
//!   that large clears it;
//! - the writer never stores into the fields the reader owns (read index, interrupt mask).
#![no_main]

use hyperv_guest_fuzz::ring::{FuzzRing, Mutation};
use hyperv_guest_fuzz::{Input, distance, valid_index};
use libfuzzer_sys::fuzz_target;
use std::sync::atomic::Ordering::SeqCst;
use vmbus_guest::ring::protocol::gpa_range_pages;
use vmbus_guest::ring::{GpaRange, OutgoingPacket, RingWriter, TransferPageRange, WriteError};

fuzz_target!(|data: &[u8]| run(data));

/// A packet description the target encodes itself (the oracle) and through `OutgoingPacket`.
struct Spec {
    kind: u8,
    tid: u64,
    completion: bool,
    payload: Vec<Vec<u8>>,
    gpa: Vec<(u32, u32, Vec<u64>)>,
    tp_set: u16,
    tp_owns: bool,
    tp: Vec<TransferPageRange>,
}

fn spec(inp: &mut Input, size: u32) -> Spec {
    let kind = inp.u8() % 4;
    let mut payload = Vec::new();
    for _ in 0..inp.u8() % 4 {
        let n = match inp.u8() % 8 {
            0 => inp.below(2 * size as usize + 64),
            1 => 0,
            _ => inp.below(64),
        };
        payload.push(inp.fill(n));
    }
    let mut gpa = Vec::new();
    if kind == 2 {
        for _ in 0..inp.u8() % 4 {
            let byte_offset = if inp.u8().is_multiple_of(16) {
                inp.u32()
            } else {
                inp.u16() as u32 % 4096
            };
            let byte_count = inp.u16() as u32 % 20000;
            let mut pages = gpa_range_pages(byte_offset, byte_count).min(8);
            match inp.u8() % 16 {
                0 => pages += 1,
                1 => pages = pages.saturating_sub(1),
                _ => {}
            }
            let pfns = (0..pages).map(|_| inp.u64()).collect();
            gpa.push((byte_count, byte_offset, pfns));
        }
    }
    let mut tp = Vec::new();
    if kind == 3 {
        for _ in 0..inp.u8() % 5 {
            tp.push(TransferPageRange {
                byte_count: inp.u32(),
                byte_offset: inp.u32(),
            });
        }
    }
    Spec {
        kind,
        tid: inp.u64(),
        completion: inp.bool(),
        payload,
        gpa,
        tp_set: inp.u16(),
        tp_owns: inp.bool(),
        tp,
    }
}

/// What writing `s` must do: `Err` with the error class, or the exact ring image without the
/// trailer's value (filled in at the write position).
fn oracle(s: &Spec, size: u32) -> Result<Vec<u8>, WriteError> {
    let mut header = Vec::new();
    let (ty, flags): (u16, u16) = match s.kind {
        0 => (6, s.completion as u16),
        1 => (11, 0),
        2 => {
            if s.gpa.is_empty() {
                return Err(WriteError::InvalidPacket);
            }
            header.extend_from_slice(&0u32.to_le_bytes());
            header.extend_from_slice(&(s.gpa.len() as u32).to_le_bytes());
            for (count, offset, pfns) in &s.gpa {
                if *offset >= 4096 || gpa_range_pages(*offset, *count) != pfns.len() as u64 {
                    return Err(WriteError::InvalidPacket);
                }
                header.extend_from_slice(&count.to_le_bytes());
                header.extend_from_slice(&offset.to_le_bytes());
                for p in pfns {
                    header.extend_from_slice(&p.to_le_bytes());
                }
            }
            (9, 1)
        }
        _ => {
            header.extend_from_slice(&s.tp_set.to_le_bytes());
            header.push(s.tp_owns as u8);
            header.push(0);
            header.extend_from_slice(&(s.tp.len() as u32).to_le_bytes());
            for r in &s.tp {
                header.extend_from_slice(&r.byte_count.to_le_bytes());
                header.extend_from_slice(&r.byte_offset.to_le_bytes());
            }
            (7, 1)
        }
    };
    let payload: Vec<u8> = s.payload.concat();
    let offset = 16 + header.len();
    let len = (offset + payload.len()).next_multiple_of(8);
    if offset / 8 > u16::MAX as usize || len / 8 > u16::MAX as usize || len + 8 >= size as usize - 8
    {
        return Err(WriteError::TooLarge);
    }
    let mut out = Vec::with_capacity(len + 8);
    out.extend_from_slice(&ty.to_le_bytes());
    out.extend_from_slice(&((offset / 8) as u16).to_le_bytes());
    out.extend_from_slice(&((len / 8) as u16).to_le_bytes());
    out.extend_from_slice(&flags.to_le_bytes());
    out.extend_from_slice(&s.tid.to_le_bytes());
    out.extend_from_slice(&header);
    out.extend_from_slice(&payload);
    out.resize(len + 8, 0);
    Ok(out)
}

fn run(data: &[u8]) {
    let mut inp = Input::new(data);
    let size = match inp.u8() {
        0xF0..=0xFF => 4096,
        k => 64 + 8 * (k as u32 % 64),
    };
    let ring = FuzzRing::new(size, inp.bool());
    let r0 = inp.ring_index(size);
    let w0 = inp.ring_index(size);
    let c = ring.ctl();
    c.read_index.store(r0, SeqCst);
    c.write_index.store(w0, SeqCst);
    c.pending_send_size.store(inp.u32(), SeqCst);
    c.interrupt_mask.store(inp.u8() as u32 % 2, SeqCst);

    let mut writer = match RingWriter::new(&ring) {
        Ok(w) => w,
        Err(_) => {
            assert!(!valid_index(r0, size) || !valid_index(w0, size));
            return;
        }
    };
    assert!(valid_index(r0, size) && valid_index(w0, size));
    assert_eq!(c.feature_bits.load(SeqCst), 1);
    assert_eq!(c.pending_send_size.load(SeqCst), 0);

    let mut tail = w0;
    let mut committed = w0;
    let mut reads = vec![r0];
    // Ring bytes recorded as waited for and not yet written (0: none).
    let mut waiting = 0u32;

    for _ in 0..256 {
        if inp.is_empty() {
            break;
        }
        let (r_before, mask_before) = (c.read_index.load(SeqCst), c.interrupt_mask.load(SeqCst));
        match inp.u8() % 8 {
            0 => {
                let r = inp.ring_index(size);
                if valid_index(r, size) {
                    reads.push(r);
                }
                ring.apply(&Mutation::ReadIndex(r));
                continue;
            }
            1 => {
                // The reader consumed everything committed.
                reads.push(committed);
                ring.apply(&Mutation::ReadIndex(committed));
                continue;
            }
            2 => {
                let m = match inp.u8() % 3 {
                    0 => Mutation::PendingSendSize(inp.u32()),
                    1 => Mutation::FeatureBits(inp.u32()),
                    _ => Mutation::InterruptMask(inp.u8() as u32 % 2),
                };
                ring.apply(&m);
                continue;
            }
            3 | 4 => {
                let s = spec(&mut inp, size);
                let gpa: Vec<GpaRange<'_>> = s
                    .gpa
                    .iter()
                    .map(|(count, offset, pfns)| GpaRange {
                        byte_count: *count,
                        byte_offset: *offset,
                        pfns,
                    })
                    .collect();
                let slices: Vec<&[u8]> = s.payload.iter().map(Vec::as_slice).collect();
                let packet = match s.kind {
                    0 => OutgoingPacket::in_band(s.tid, s.completion, &slices),
                    1 => OutgoingPacket::completion(s.tid, &slices),
                    2 => OutgoingPacket::gpa_direct(s.tid, &gpa, &slices),
                    _ => OutgoingPacket::transfer_pages(s.tid, s.tp_set, s.tp_owns, &s.tp, &slices),
                };
                let expect = oracle(&s, size);
                let log_before = ring.log.borrow().len();
                let r_now = c.read_index.load(SeqCst);
                let result = writer.write(&packet);
                let writes: Vec<_> = ring.log.borrow()[log_before..].to_vec();
                match (&expect, result) {
                    (Ok(image), Ok(())) => {
                        let total = image.len() as u32;
                        assert_eq!(writer.packet_size(&packet), Ok(total));
                        if waiting != 0 && total >= waiting {
                            assert_eq!(c.pending_send_size.load(SeqCst), 0, "waiter written");
                            waiting = 0;
                        }
                        assert!(
                            reads
                                .iter()
                                .any(|&r| size - distance(r, tail, size) - 8 >= total),
                            "{total}-byte packet written at {tail:#x} without room under any read index"
                        );
                        for a in &writes {
                            assert!(a.write);
                            let start = a.offset as u32 % size;
                            assert!(
                                distance(tail, start, size) + a.len as u32 <= total,
                                "write {a:?} outside the packet at {tail:#x}+{total}"
                            );
                        }
                        let mut image = image.clone();
                        let n = image.len();
                        image[n - 8..].copy_from_slice(&((tail as u64) << 32).to_le_bytes());
                        assert_eq!(ring.get(tail, n), image, "packet bytes differ");
                        tail = (tail + total) % size;
                    }
                    (Ok(image), Err(WriteError::Full { needed })) => {
                        assert_eq!(needed as usize, image.len());
                        assert!(writes.is_empty(), "Full wrote bytes");
                        assert!(valid_index(r_now, size));
                        assert!(
                            size - distance(r_now, tail, size) - 8 < needed,
                            "Full with room: r={r_now:#x} tail={tail:#x} needed={needed}"
                        );
                    }
                    (Ok(_), Err(WriteError::Corrupt(_))) => {
                        assert!(writes.is_empty());
                        assert!(!valid_index(r_now, size));
                    }
                    (Err(e), Err(got)) => {
                        assert_eq!(*e, got);
                        assert!(writes.is_empty());
                    }
                    (e, got) => panic!(
                        "expected {:?}, write returned {got:?}",
                        e.as_ref().map(|_| ())
                    ),
                }
            }
            5 => {
                let old = committed;
                let signal = writer.commit();
                let (mask, r) = (c.interrupt_mask.load(SeqCst), c.read_index.load(SeqCst));
                if tail != old {
                    assert_eq!(c.write_index.load(SeqCst), tail);
                    assert_eq!(signal.is_needed(), mask == 0 && r == old, "commit signal");
                    committed = tail;
                } else {
                    assert!(!signal.is_needed());
                }
            }
            6 => {
                let needed = match inp.u8() % 4 {
                    0 => inp.u32(),
                    _ => inp.u16() as u32,
                };
                let r_now = c.read_index.load(SeqCst);
                let uncommitted = distance(committed, tail, size);
                assert_eq!(writer.uncommitted(), uncommitted);
                let got = writer.request_space(needed);
                waiting = waiting.max(needed.min(size - 16));
                assert_eq!(
                    c.pending_send_size.load(SeqCst),
                    uncommitted.saturating_add(waiting)
                );
                match got {
                    Ok(room) => {
                        assert!(valid_index(r_now, size));
                        assert_eq!(room, size - distance(r_now, tail, size) - 8 >= needed);
                        reads.push(r_now);
                    }
                    Err(_) => assert!(!valid_index(r_now, size)),
                }
            }
            _ => {
                writer.discard_uncommitted();
                tail = committed;
            }
        }
        assert_eq!(
            c.read_index.load(SeqCst),
            r_before,
            "writer stored the read index"
        );
        assert_eq!(
            c.interrupt_mask.load(SeqCst),
            mask_before,
            "writer stored the mask"
        );
        assert_eq!(writer.uncommitted(), distance(committed, tail, size));
    }
}
