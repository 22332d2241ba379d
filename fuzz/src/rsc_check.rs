//! The `netvsc_offload` target's RSC part (devices §2.8, §2.14): `rsc::packet_id_of` and
//! `rsc::checksum_of` against the PPI walk of the model, and a sequence of fragments pushed
//! into `rsc::Reassembly` against a model of the reassembly rules the module documents (a
//! first fragment starts a frame, dropping a partial one; a later fragment needs a frame of
//! its packet id; a frame ends with its last fragment, within the buffer, the limit and 562
//! fragments, and never continues past its transfer-page packet): what is dropped, why, and
//! every completed frame the concatenation of its fragments with the first one's checksum.

use crate::Input;
use crate::net::{le32, ppi_walk};
use netvsc::offload::rsc::{
    MAX_FRAGMENTS, PacketId, Reassembly, RscDrop, checksum_of, packet_id_of,
};

/// A PPI area with packet-id, checksum and other elements, sometimes malformed.
fn ppi_area(inp: &mut Input<'_>) -> Vec<u8> {
    if inp.u8().is_multiple_of(4) {
        return inp.bytes(80);
    }
    let mut a = Vec::new();
    for _ in 0..1 + inp.below(3) {
        let payload = inp.pick(&[4, 4, 2], |i| i.below(12));
        let ty = inp.pick(&[0x8000_0001, 0, 0x8000_0001, 2], |i| i.u32());
        let (mut size, mut off) = (12 + payload as u32, 12u32);
        if inp.u8().is_multiple_of(8) {
            size = inp.u32() % 40;
            off = inp.u32() % 40;
        }
        for w in [size, ty, off] {
            a.extend_from_slice(&w.to_le_bytes());
        }
        a.extend(inp.fill(payload));
    }
    a
}

/// The first packet-id PPI as the module documents the walk: elements of 12 bytes and
/// more within the area; an id element whose payload (offset 12..=size) holds 4 bytes.
fn packet_id_model(area: &[u8]) -> Option<(u8, u8, u16)> {
    let mut rest = area;
    while rest.len() >= 12 {
        let size = le32(rest, 0) as usize;
        if size < 12 || size > rest.len() {
            return None;
        }
        let off = le32(rest, 8) as usize;
        if le32(rest, 4) == 0x8000_0001 && off >= 12 && off + 4 <= size {
            let p = &rest[off..];
            return Some((p[0], p[1], u16::from_le_bytes([p[2], p[3]])));
        }
        rest = &rest[size..];
    }
    None
}

/// A partial frame of the model.
struct Partial {
    id: u16,
    data: Vec<u8>,
    fragments: usize,
    checksum: Option<u32>,
}

/// The PPI parsers, then up to 24 fragments pushed.
pub fn rsc(inp: &mut Input<'_>) {
    let area = ppi_area(inp);
    let id = packet_id_of(&area);
    assert_eq!(
        id.map(|p| (p.version, p.flags, p.id)),
        packet_id_model(&area),
        "packet id of {area:02x?}"
    );
    let checksum = ppi_walk(&area)
        .into_iter()
        .map_while(Result::ok)
        .find(|&(ty, _, len)| ty == 0 && len >= 4)
        .map(|(_, at, _)| le32(&area, at));
    assert_eq!(checksum_of(&area), checksum);

    let mut r = Reassembly::default();
    let mut model: Option<Partial> = None;
    let buf_len = inp.pick(&[4096, 65535 + 54, 100], |i| i.below(5000));
    let mut buf = vec![0u8; buf_len + 16];
    let limit = inp.pick(&[9014, 1514, 65535 + 54], |i| i.below(6000));
    for _ in 0..24 {
        if inp.is_empty() {
            break;
        }
        let flags = inp.pick(&[1 | 2, 1, 1, 1 | 4, 1 | 2 | 4, 0], |i| i.u8());
        let id = if inp.u8().is_multiple_of(8) {
            inp.u16()
        } else {
            7
        };
        let data = if inp.u8().is_multiple_of(16) {
            vec![0xA5; inp.below(70000)]
        } else {
            inp.bytes(300)
        };
        let cs = inp.bool().then(|| inp.u32());
        let last_range = inp.u8().is_multiple_of(4);
        let pid = PacketId {
            version: 1,
            flags,
            id,
        };
        if !pid.is_fragment() {
            // An ordinary frame ends any partial one (the NIC abandons it).
            let n = r.abandon();
            assert_eq!(n as usize, model.take().map_or(0, |p| p.fragments));
            continue;
        }
        let canary = buf[buf_len..].to_vec();
        let got = r.push(pid, &data, cs, last_range, &mut buf[..buf_len], limit);
        assert_eq!(&buf[buf_len..], &canary[..], "written past the buffer");
        // The model.
        let (first, last) = (flags & 2 != 0, flags & 4 != 0);
        let mut dropped = 0;
        let mut why = None;
        let mut complete = None;
        'push: {
            if first {
                if let Some(p) = model.take().filter(|p| p.fragments > 0) {
                    dropped += p.fragments;
                    why = Some(RscDrop::Interrupted);
                }
                model = Some(Partial {
                    id,
                    data: Vec::new(),
                    fragments: 0,
                    checksum: cs,
                });
            } else if model.is_none() {
                dropped += 1;
                why = Some(RscDrop::NoFirst);
                break 'push;
            } else if model.as_ref().is_some_and(|p| p.id != id) {
                dropped += model.take().map_or(0, |p| p.fragments) + 1;
                why = Some(RscDrop::PacketIdChanged);
                break 'push;
            }
            let p = model.as_mut().expect("a frame in progress");
            let bad = if p.fragments >= MAX_FRAGMENTS {
                Some(RscDrop::TooManyFragments)
            } else if p.data.len() + data.len() > limit.min(buf_len) {
                Some(RscDrop::TooLarge)
            } else {
                None
            };
            if bad.is_some() {
                dropped += model.take().map_or(0, |p| p.fragments) + 1;
                why = bad;
                break 'push;
            }
            p.data.extend_from_slice(&data);
            p.fragments += 1;
            if last {
                complete = model.take();
            } else if last_range {
                dropped += model.take().map_or(0, |p| p.fragments);
                why = Some(RscDrop::Unterminated);
            }
        }
        assert_eq!(
            (got.dropped as usize, got.why),
            (dropped, why),
            "fragment {flags:#x} id {id} of {} bytes",
            data.len()
        );
        assert_eq!(r.is_active(), model.is_some());
        match (got.complete, complete) {
            (None, None) => {}
            (Some(c), Some(p)) => {
                crate::trace!("RSC frame of {} bytes in {} fragments", c.len, c.fragments);
                assert_eq!(
                    (c.len, usize::from(c.fragments)),
                    (p.data.len(), p.fragments)
                );
                assert_eq!(c.checksum, p.checksum, "the first fragment's checksum");
                assert!(buf[..c.len] == p.data[..], "the frame is its fragments");
            }
            (got, want) => panic!(
                "completion {got:?}, the model's {:?}",
                want.map(|p| p.data.len())
            ),
        }
    }
}
