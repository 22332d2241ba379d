//! The netvsc target's first part: the pure RNDIS parsers (`rndis::parse_message`,
//! `rndis::ppis`) on arbitrary bytes against the layout of devices §2.11 (parsed slices
//! where the headers say, the PPI walk of the model), and the RNDIS writers round-tripped
//! through them.

use crate::Input;
use netvsc::protocol::RNDIS_OFFSET_BASE;
use netvsc::rndis::{
    Message, Ppi, RndisError, parse_message, ppis, write_oid_request, write_packet,
};

fn le32(b: &[u8], at: usize) -> usize {
    b.get(at..at + 4)
        .map_or(0, |s| u32::from_le_bytes(s.try_into().unwrap()) as usize)
}

/// Whether `inner` is `outer[at..at + inner.len()]`.
fn is_at(outer: &[u8], inner: &[u8], at: usize) -> bool {
    inner.is_empty()
        || inner.as_ptr() as usize == outer.as_ptr() as usize + at
            && at + inner.len() <= outer.len()
}

fn check_ppis(area: &[u8]) {
    let got: Vec<Result<Ppi<'_>, RndisError>> = ppis(area).collect();
    let want = crate::net::ppi_walk(area);
    assert_eq!(got.len(), want.len(), "PPI walk length");
    for (g, w) in got.iter().zip(&want) {
        match (g, w) {
            (Ok(p), Ok((ty, at, len))) => {
                assert_eq!(p.ppi_type, *ty);
                assert_eq!(p.payload.len(), *len);
                assert!(is_at(area, p.payload, *at), "PPI payload misplaced");
            }
            (Err(RndisError::BadPpi), Err(())) => {}
            other => panic!("PPI walk: {other:?}"),
        }
    }
}

/// The bytes at `offset` (from byte 8) of length `len` in `msg`, as the guest must find them.
fn range(msg: &[u8], offset: usize, len: usize) -> Option<usize> {
    let start = offset.checked_add(RNDIS_OFFSET_BASE)?;
    (start.checked_add(len)? <= msg.len()).then_some(start)
}

/// The parsers on up to six inputs, each followed by the writers' round trips.
pub fn parsers(inp: &mut Input<'_>) {
    for _ in 0..6 {
        if inp.is_empty() {
            break;
        }
        let b = inp.bytes(300);
        check_ppis(&b);
        let r = parse_message(&b);
        let len = le32(&b, 4);
        if b.len() < 8 || len < 8 || len > b.len() {
            assert!(r.is_err(), "{r:?}");
            continue;
        }
        let msg = &b[..len];
        match r {
            Ok(Message::Packet { frame, ppi }) => {
                assert_eq!(le32(&b, 0), 1);
                assert!(len >= 44 && !frame.is_empty());
                let at = range(msg, le32(msg, 8), le32(msg, 12)).expect("frame inside");
                assert!(at >= 44 && is_at(msg, frame, at), "frame misplaced");
                assert_eq!(frame.len(), le32(msg, 12));
                if !ppi.is_empty() {
                    let at = range(msg, le32(msg, 28), le32(msg, 32)).expect("PPIs inside");
                    assert!(at >= 44 && is_at(msg, ppi, at), "PPIs misplaced");
                }
                assert!(
                    ppis(ppi).all(|p| p.is_ok()),
                    "a PACKET accepted with bad PPIs"
                );
                assert_eq!(
                    (le32(msg, 16), le32(msg, 20), le32(msg, 24), le32(msg, 36)),
                    (0, 0, 0, 0)
                );
            }
            Ok(Message::QueryComplete {
                info,
                request_id,
                status,
            }) => {
                assert_eq!(
                    (request_id, status),
                    (le32(msg, 8) as u32, le32(msg, 12) as u32)
                );
                if !info.is_empty() {
                    let at = range(msg, le32(msg, 20), le32(msg, 16)).expect("info inside");
                    assert!(at >= 24 && is_at(msg, info, at), "info misplaced");
                }
            }
            Ok(Message::IndicateStatus { status, buffer }) => {
                assert_eq!(status, le32(msg, 8) as u32);
                if !buffer.is_empty() {
                    let at = range(msg, le32(msg, 16), le32(msg, 12)).expect("buffer inside");
                    assert!(
                        at >= 20 && is_at(msg, buffer, at),
                        "status buffer misplaced"
                    );
                }
            }
            Ok(Message::InitComplete(c)) => {
                assert!(len >= 52 && c.request_id.get() as usize == le32(msg, 8))
            }
            Ok(Message::SetComplete { .. } | Message::KeepaliveComplete { .. }) => {
                assert!(len >= 16)
            }
            Err(_) => {}
        }
        // Writers round-trip through the parser.
        let frame = inp.bytes(200);
        let mut out = vec![0u8; inp.below(300)];
        match write_packet(&mut out, &frame) {
            Some(n) => match parse_message(&out[..n]) {
                Ok(Message::Packet { frame: f, ppi }) => {
                    assert_eq!(f, &frame[..]);
                    assert!(ppi.is_empty());
                }
                other => assert!(
                    frame.is_empty() && other == Err(RndisError::EmptyPacket),
                    "{other:?}"
                ),
            },
            None => assert!(out.len() < netvsc::rndis::packet_message_len(frame.len())),
        }
        let info = inp.bytes(40);
        let mut out = vec![0u8; 128];
        let (id, oid) = (inp.u32(), inp.u32());
        let n = write_oid_request(&mut out, 5, id, oid, &info).unwrap();
        assert_eq!(
            (le32(&out, 0), le32(&out, 4), le32(&out, 8), le32(&out, 12)),
            (5, n, id as usize, oid as usize)
        );
        assert_eq!(le32(&out, 16), info.len());
        if !info.is_empty() {
            assert_eq!(&out[8 + le32(&out, 20)..n], &info[..]);
        }
    }
}
