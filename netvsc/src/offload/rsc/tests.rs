use super::*;
use crate::protocol::{PpiHeader, PpiU32};
use std::vec;
use std::vec::Vec;
use zerocopy::IntoBytes;

const SUB: u8 = rsc_flags::SUB_ALLOCATION;
const FIRST: u8 = SUB | rsc_flags::FIRST_FRAGMENT;
const LAST: u8 = SUB | rsc_flags::LAST_FRAGMENT;
const ONLY: u8 = FIRST | LAST;

fn id(flags: u8, id: u16) -> PacketId {
    PacketId {
        version: 1,
        flags,
        id,
    }
}

/// A PPI area: a checksum PPI (when given) and a packet-id PPI (when given).
fn area(csum: Option<u32>, pid: Option<PacketId>) -> Vec<u8> {
    let mut a = Vec::new();
    if let Some(c) = csum {
        a.extend_from_slice(PpiU32::new(PPI_CHECKSUM, c).as_bytes());
    }
    if let Some(p) = pid {
        let h = PpiHeader {
            size: 16.into(),
            ppi_type: PPI_RSC_PACKET_ID.into(),
            ppi_offset: 12.into(),
        };
        a.extend_from_slice(h.as_bytes());
        a.extend_from_slice(&[p.version, p.flags]);
        a.extend_from_slice(&p.id.to_le_bytes());
    }
    a
}

#[test]
fn ppis_are_found_in_any_order_and_bad_ones_ignored() {
    let a = area(Some(0x28), Some(id(FIRST, 7)));
    assert_eq!(ppis_of(&a), (Some(id(FIRST, 7)), Some(0x28)));
    assert_eq!(packet_id_of(&area(None, None)), None);
    // Checksum after the packet id.
    let mut b = area(None, Some(id(LAST, 9)));
    b.extend_from_slice(&area(Some(8), None));
    assert_eq!(ppis_of(&b), (Some(id(LAST, 9)), Some(8)));
    // A packet-id PPI whose payload is shorter than 4 bytes is not one.
    let mut short = area(None, Some(id(FIRST, 1)));
    short[0..4].copy_from_slice(&14u32.to_le_bytes());
    assert_eq!(packet_id_of(&short[..14]), None);
    // The public (non-internal) type 1 is IPsec, not the packet id.
    let mut public = area(None, Some(id(FIRST, 1)));
    public[4..8].copy_from_slice(&1u32.to_le_bytes());
    assert_eq!(packet_id_of(&public), None);
}

/// What [`run`] saw: completed frames with their fragment counts, fragments dropped, why.
type Outcome = (Vec<(Vec<u8>, u16)>, u32, Vec<RscDrop>);

/// Pushes `(flags, id, data, last_range)` in order; returns the completed frames and the
/// fragments dropped.
fn run(
    r: &mut Reassembly,
    buf: &mut [u8],
    limit: usize,
    frags: &[(u8, u16, &[u8], bool)],
) -> Outcome {
    let mut done = Vec::new();
    let mut dropped = 0;
    let mut why = Vec::new();
    for (flags, pid, data, last) in frags {
        let p = r.push(id(*flags, *pid), data, Some(0x18), *last, buf, limit);
        dropped += p.dropped;
        why.extend(p.why);
        if let Some(c) = p.complete {
            assert_eq!(c.checksum, Some(0x18));
            done.push((buf[..c.len].to_vec(), c.fragments));
        }
    }
    (done, dropped, why)
}

#[test]
fn fragments_are_joined_in_order() {
    let mut r = Reassembly::default();
    let mut buf = vec![0u8; 64];
    let (done, dropped, _) = run(
        &mut r,
        &mut buf,
        64,
        &[
            (FIRST, 5, b"abc", false),
            (SUB, 5, b"def", false),
            (LAST, 5, b"gh", false),
            (ONLY, 6, b"single", true),
        ],
    );
    assert_eq!(
        done,
        vec![(b"abcdefgh".to_vec(), 3), (b"single".to_vec(), 1)]
    );
    assert_eq!(dropped, 0);
    assert!(!r.is_active());
}

#[test]
fn the_checksum_verdict_is_the_first_fragments() {
    let mut r = Reassembly::default();
    let mut buf = [0u8; 16];
    r.push(id(FIRST, 1), b"ab", Some(0x28), false, &mut buf, 16);
    let p = r.push(id(LAST, 1), b"cd", Some(0x1), true, &mut buf, 16);
    assert_eq!(
        p.complete,
        Some(Coalesced {
            len: 4,
            fragments: 2,
            checksum: Some(0x28)
        })
    );
}

#[test]
fn hostile_sequences_are_dropped_and_counted() {
    let mut buf = vec![0u8; 32];
    // A later fragment with no first: dropped alone; the next whole frame still arrives.
    let mut r = Reassembly::default();
    let (done, dropped, why) = run(
        &mut r,
        &mut buf,
        32,
        &[
            (SUB, 1, b"x", false),
            (LAST, 1, b"y", false),
            (ONLY, 2, b"ok", true),
        ],
    );
    assert_eq!((done.len(), dropped), (1, 2));
    assert_eq!(why, vec![RscDrop::NoFirst, RscDrop::NoFirst]);
    // A first fragment while one is open: the open one is dropped (Linux resets silently).
    let (done, dropped, why) = run(
        &mut r,
        &mut buf,
        32,
        &[
            (FIRST, 1, b"a", false),
            (SUB, 1, b"b", false),
            (FIRST, 2, b"c", false),
            (LAST, 2, b"d", true),
        ],
    );
    assert_eq!(done, vec![(b"cd".to_vec(), 2)]);
    assert_eq!((dropped, why), (2, vec![RscDrop::Interrupted]));
    // Ids mixing: the partial frame and the stray fragment go; what follows is orphaned.
    let (done, dropped, why) = run(
        &mut r,
        &mut buf,
        32,
        &[
            (FIRST, 1, b"a", false),
            (SUB, 9, b"b", false),
            (LAST, 1, b"c", true),
        ],
    );
    assert!(done.is_empty());
    assert_eq!(dropped, 3);
    assert_eq!(why, vec![RscDrop::PacketIdChanged, RscDrop::NoFirst]);
    // The packet ends before the last fragment: nothing carries over to the next packet.
    let (done, dropped, why) = run(
        &mut r,
        &mut buf,
        32,
        &[
            (FIRST, 3, b"a", false),
            (SUB, 3, b"b", true),
            (LAST, 3, b"c", false),
        ],
    );
    assert!(done.is_empty());
    assert_eq!(dropped, 3);
    assert_eq!(why, vec![RscDrop::Unterminated, RscDrop::NoFirst]);
    assert!(!r.is_active());
}

#[test]
fn a_frame_beyond_the_buffer_or_the_limit_is_dropped() {
    let mut buf = vec![0u8; 8];
    let mut r = Reassembly::default();
    let (done, dropped, why) = run(
        &mut r,
        &mut buf,
        100,
        &[
            (FIRST, 1, b"1234", false),
            (SUB, 1, b"5678", false),
            (LAST, 1, b"9", false),
            (ONLY, 2, b"12345678", true),
        ],
    );
    assert_eq!(done, vec![(b"12345678".to_vec(), 1)]);
    assert_eq!((dropped, why), (3, vec![RscDrop::TooLarge]));
    // The limit binds below the buffer.
    let (done, dropped, _) = run(&mut r, &mut buf, 5, &[(ONLY, 3, b"123456", true)]);
    assert!(done.is_empty());
    assert_eq!(dropped, 1);
}

#[test]
fn at_most_max_fragments_make_a_frame() {
    let mut buf = vec![0u8; MAX_FRAGMENTS + 2];
    let mut r = Reassembly::default();
    let mut frags: Vec<(u8, u16, &[u8], bool)> = vec![(FIRST, 4, b"x", false)];
    frags.extend((1..MAX_FRAGMENTS).map(|_| (SUB, 4, &b"x"[..], false)));
    frags.push((LAST, 4, b"x", true));
    let (done, dropped, why) = run(&mut r, &mut buf, usize::MAX, &frags);
    assert!(done.is_empty());
    assert_eq!(dropped, MAX_FRAGMENTS as u32 + 1);
    assert_eq!(why, vec![RscDrop::TooManyFragments]);
    // One fewer is a frame.
    frags.remove(1);
    let (done, _, _) = run(&mut r, &mut buf, usize::MAX, &frags);
    assert_eq!(done[0].1 as usize, MAX_FRAGMENTS);
}

#[test]
fn abandon_counts_the_partial_frame() {
    let mut r = Reassembly::default();
    let mut buf = [0u8; 8];
    assert_eq!(r.abandon(), 0);
    r.push(id(FIRST, 1), b"a", None, false, &mut buf, 8);
    r.push(id(SUB, 1), b"b", None, false, &mut buf, 8);
    assert!(r.is_active());
    assert_eq!(r.abandon(), 2);
    assert!(!r.is_active());
}

#[test]
fn random_sequences_never_panic_and_account_for_every_fragment() {
    // Deterministic xorshift: every fragment pushed is either in a completed frame, dropped,
    // or still pending at the end.
    let mut x: u32 = 0x9E37_79B9;
    let mut next = || {
        x ^= x << 13;
        x ^= x >> 17;
        x ^= x << 5;
        x
    };
    let mut buf = vec![0u8; 40];
    let mut r = Reassembly::default();
    let (mut pushed, mut joined, mut dropped) = (0u64, 0u64, 0u64);
    for _ in 0..50_000 {
        let v = next();
        let flags = (v & 7) as u8;
        let pid = ((v >> 3) & 1) as u16;
        let len = ((v >> 4) % 12) as usize;
        let last = (v >> 8) % 5 == 0;
        let data = [0xA5u8; 12];
        let p = r.push(id(flags, pid), &data[..len], None, last, &mut buf, 36);
        pushed += 1;
        dropped += u64::from(p.dropped);
        if let Some(c) = p.complete {
            assert!(c.len <= 36);
            joined += u64::from(c.fragments);
        }
    }
    let pending = u64::from(r.abandon());
    assert_eq!(pushed, joined + dropped + pending);
}
