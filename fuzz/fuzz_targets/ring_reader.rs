//! The guest's inbound ring reader against a hostile writer: indices, descriptors and bytes
//! from the input, rewritten between reads and in the middle of them.
//!
//! Invariants beyond "no panic":
//! - every data access stays inside the ring (`FuzzRing` checks the `RingMemory` contract);
//! - a packet is returned only if its bytes and trailer lie between the read cursor and a
//!   write index the host actually published; the cursor advances by exactly that much;
//! - when the host changed nothing during the read, the packet is a faithful copy of the ring
//!   (wrap-around included) and its parsed view (payload, ranges) is within it;
//! - `Empty`, `BufferTooSmall` and `Corrupt` consume nothing; `publish` stores the cursor and
//!   signals only when the writer asked (feature bit and pending send size);
//!   `finish_drain` unmasks and reports "more" exactly when the write index moved on.
#![no_main]

use hyperv_guest_fuzz::ring::{FuzzRing, Mutation};
use hyperv_guest_fuzz::{Input, distance, valid_index};
use libfuzzer_sys::fuzz_target;
use std::sync::atomic::Ordering::SeqCst;
use vmbus_guest::ring::protocol::gpa_range_pages;
use vmbus_guest::ring::{PacketKind, PacketType, ReadError, RingReader};

fuzz_target!(|data: &[u8]| run(data));

fn pick_size(inp: &mut Input) -> u32 {
    match inp.u8() {
        0xF0..=0xFF => 4096,
        k => 64 + 8 * (k as u32 % 64),
    }
}

fn mutation(inp: &mut Input, size: u32) -> Mutation {
    match inp.u8() % 6 {
        0 => Mutation::WriteIndex(inp.ring_index(size)),
        1 => Mutation::ReadIndex(inp.ring_index(size)),
        2 => {
            let at = inp.u32() % size;
            Mutation::Bytes(at, inp.bytes(32))
        }
        3 => Mutation::PendingSendSize(inp.u32()),
        4 => Mutation::FeatureBits(inp.u32()),
        _ => Mutation::InterruptMask(inp.u32()),
    }
}

/// Writes a packet the way a host would (descriptor fields partly from the input) at the
/// host's cursor, and returns the new cursor.
fn host_packet(ring: &FuzzRing, inp: &mut Input, at: u32) -> u32 {
    let size = ring.size();
    let ty: u16 = match inp.u8() % 6 {
        0 => 6,
        1 => 11,
        2 => 7,
        3 => 9,
        _ => inp.u16(),
    };
    let mut header = Vec::new();
    match ty {
        7 => {
            let count = inp.u8() as u32 % 5;
            header.extend_from_slice(&inp.u16().to_le_bytes());
            header.push(inp.u8());
            header.push(0);
            let claimed = if inp.u8().is_multiple_of(4) {
                inp.u32()
            } else {
                count
            };
            header.extend_from_slice(&claimed.to_le_bytes());
            header.extend(inp.fill(count as usize * 8));
        }
        9 => {
            let count = inp.u8() as u32 % 4;
            header.extend_from_slice(&0u32.to_le_bytes());
            let claimed = if inp.u8().is_multiple_of(4) {
                inp.u32()
            } else {
                count
            };
            header.extend_from_slice(&claimed.to_le_bytes());
            for _ in 0..count {
                let byte_count = inp.u16() as u32 * if inp.bool() { 1 } else { 37 };
                let byte_offset = if inp.u8().is_multiple_of(8) {
                    inp.u32()
                } else {
                    inp.u16() as u32 % 4096
                };
                header.extend_from_slice(&byte_count.to_le_bytes());
                header.extend_from_slice(&byte_offset.to_le_bytes());
                let pages = (byte_offset as u64 + byte_count as u64)
                    .div_ceil(4096)
                    .min(16);
                for _ in 0..pages {
                    header.extend_from_slice(&inp.u64().to_le_bytes());
                }
            }
        }
        _ => {}
    }
    let payload = inp.bytes(96);
    let offset = 16 + header.len();
    let len = (offset + payload.len()).next_multiple_of(8);
    let mut offset8 = (offset / 8) as u16;
    let mut len8 = (len / 8) as u16;
    match inp.u8() % 8 {
        0 => offset8 = inp.u16(),
        1 => len8 = inp.u16(),
        _ => {}
    }
    let mut pkt = Vec::with_capacity(len + 8);
    pkt.extend_from_slice(&ty.to_le_bytes());
    pkt.extend_from_slice(&offset8.to_le_bytes());
    pkt.extend_from_slice(&len8.to_le_bytes());
    pkt.extend_from_slice(&inp.u16().to_le_bytes());
    pkt.extend_from_slice(&inp.u64().to_le_bytes());
    pkt.extend_from_slice(&header);
    pkt.extend_from_slice(&payload);
    pkt.resize(len, 0);
    pkt.extend_from_slice(&((at as u64) << 32).to_le_bytes());
    if pkt.len() >= size as usize {
        return at;
    }
    ring.put(at, &pkt);
    let next = (at + pkt.len() as u32) % size;
    ring.ctl().write_index.store(next, SeqCst);
    next
}

fn run(data: &[u8]) {
    let mut inp = Input::new(data);
    let size = pick_size(&mut inp);
    let ring = FuzzRing::new(size, inp.bool());
    let r0 = inp.ring_index(size);
    let w0 = inp.ring_index(size);
    ring.ctl().read_index.store(r0, SeqCst);
    ring.ctl().write_index.store(w0, SeqCst);
    ring.ctl().interrupt_mask.store(inp.u8() as u32 % 2, SeqCst);
    let init = inp.bytes(size as usize);
    ring.put(0, &init);

    let mut reader = match RingReader::new(&ring) {
        Ok(r) => r,
        Err(_) => {
            assert!(
                !valid_index(r0, size) || !valid_index(w0, size),
                "valid indices {r0:#x}/{w0:#x} rejected"
            );
            return;
        }
    };
    assert!(valid_index(r0, size) && valid_index(w0, size));

    // The reader's private cursor, as the model sees it.
    let mut head = r0;
    // The cursor as last published.
    let mut pub_head = r0;
    // Every valid write index the host ever stored: a packet may only come from before one.
    let mut published = vec![w0];
    let mut host_cursor = w0;
    let mut buf = vec![0u8; 8192];

    for _ in 0..256 {
        if inp.is_empty() {
            break;
        }
        match inp.u8() % 10 {
            0 | 1 => {
                host_cursor = host_packet(&ring, &mut inp, host_cursor);
                published.push(host_cursor);
            }
            2 => {
                let m = mutation(&mut inp, size);
                if let Mutation::WriteIndex(w) = m
                    && valid_index(w, size)
                {
                    published.push(w);
                    host_cursor = w;
                }
                ring.apply(&m);
            }
            3 => {
                // Mutate in the middle of a future read.
                let skip = inp.u8() as u32 % 4;
                let m = mutation(&mut inp, size);
                if let Mutation::WriteIndex(w) = m
                    && valid_index(w, size)
                {
                    published.push(w);
                }
                ring.hooks.borrow_mut().push_back((skip, m));
            }
            4..=6 => {
                let cap = match inp.u8() % 4 {
                    0 => inp.u8() as usize,
                    1 => 64,
                    _ => buf.len(),
                };
                let fired = ring.fired.get();
                let w_now = ring.ctl().write_index.load(SeqCst);
                let log_before = ring.log.borrow().len();
                match reader.read(&mut buf[..cap]) {
                    Ok(p) => {
                        let d = p.descriptor;
                        let len = d.length8 as u32 * 8;
                        let total = len + 8;
                        assert!(
                            d.data_offset8 >= 2 && d.data_offset8 <= d.length8,
                            "bad data offset accepted: {d:?}"
                        );
                        assert!(len as usize <= cap);
                        assert!(
                            published
                                .iter()
                                .any(|&w| valid_index(w, size) && distance(head, w, size) >= total),
                            "packet of {total} bytes at {head:#x} beyond every published write index"
                        );
                        assert_eq!(
                            p.payload().len(),
                            (len - d.data_offset8 as u32 * 8) as usize
                        );
                        match p.kind {
                            PacketKind::GpaDirect(g) => {
                                let mut n = 0;
                                for r in g.ranges() {
                                    assert!(r.byte_offset < 4096);
                                    assert_eq!(
                                        r.pfns().count() as u64,
                                        gpa_range_pages(r.byte_offset, r.byte_count)
                                    );
                                    n += 1;
                                }
                                assert_eq!(n, g.range_count());
                                assert!(n > 0);
                                assert_eq!(d.packet_type, PacketType::DATA_USING_GPA_DIRECT);
                            }
                            PacketKind::TransferPages(t) => {
                                assert_eq!(t.ranges().count(), t.range_count());
                                assert_eq!(d.packet_type, PacketType::DATA_USING_TRANSFER_PAGES);
                            }
                            PacketKind::InBand => {
                                assert_eq!(d.packet_type, PacketType::DATA_IN_BAND)
                            }
                            PacketKind::Completion => {
                                assert_eq!(d.packet_type, PacketType::COMPLETION)
                            }
                            PacketKind::Other => {}
                        }
                        if ring.fired.get() == fired {
                            // Nothing changed under the read: a faithful copy.
                            let expect = ring.get(head, len as usize);
                            assert_eq!(&buf[..len as usize], &expect[..], "packet copy differs");
                        }
                        // Reads stay inside [head, head + len).
                        for a in &ring.log.borrow()[log_before..] {
                            let start = (a.offset as u32) % size;
                            assert!(
                                distance(head, start, size) + a.len as u32 <= len,
                                "read {a:?} outside packet at {head:#x} len {len}"
                            );
                        }
                        head = (head + total) % size;
                    }
                    Err(ReadError::Empty) => {
                        assert_eq!(ring.fired.get(), fired);
                        assert_eq!(w_now, head, "empty while the write index is elsewhere");
                    }
                    Err(ReadError::BufferTooSmall { needed }) => assert!(needed > cap),
                    Err(ReadError::Corrupt(_)) => {}
                }
            }
            7 => {
                let feat = ring.ctl().feature_bits.load(SeqCst);
                let pending = ring.ctl().pending_send_size.load(SeqCst);
                let before = ring.ctl().read_index.load(SeqCst);
                let signal = reader.publish();
                check_published(&ring, &mut pub_head, head, before);
                if signal.is_needed() {
                    assert!(feat & 1 != 0 && pending & !7 != 0, "spurious space signal");
                }
            }
            8 => {
                reader.begin_drain();
                assert!(reader.is_masked());
            }
            _ => {
                let before = ring.ctl().read_index.load(SeqCst);
                let mask_before = ring.ctl().interrupt_mask.load(SeqCst);
                let was_masked = reader.is_masked();
                let end = reader.finish_drain();
                assert!(!reader.is_masked());
                if was_masked {
                    assert_eq!(ring.ctl().interrupt_mask.load(SeqCst), 0);
                } else {
                    assert_eq!(ring.ctl().interrupt_mask.load(SeqCst), mask_before);
                }
                check_published(&ring, &mut pub_head, head, before);
                let w = ring.ctl().write_index.load(SeqCst);
                if valid_index(w, size) {
                    assert_eq!(
                        end.more,
                        w != head,
                        "more={} w={w:#x} head={head:#x}",
                        end.more
                    );
                } else {
                    assert!(end.more);
                }
            }
        }
    }
}

/// After a publish the read index is the cursor; with nothing read since the last publish
/// the reader stores nothing and the host's value stays.
fn check_published(ring: &FuzzRing, pub_head: &mut u32, head: u32, before: u32) {
    let r = ring.ctl().read_index.load(SeqCst);
    if head != *pub_head {
        assert_eq!(r, head, "publish stored {r:#x}, cursor {head:#x}");
        *pub_head = head;
    } else {
        assert_eq!(
            r, before,
            "publish with nothing read changed the read index"
        );
    }
}
