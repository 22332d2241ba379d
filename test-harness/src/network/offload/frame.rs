//! The host's own view of a frame: where the IP and TCP/UDP headers are and the Internet
//! checksum over them (written for the mock, independently of the guest's helpers).

/// A frame as the host parses it: IP version, where the IP and transport headers are.
#[derive(Clone, Copy, Debug)]
pub(super) struct Parsed {
    pub(super) v6: bool,
    pub(super) ip_at: usize,
    pub(super) ip_header: usize,
    pub(super) l4_at: usize,
    pub(super) l4_len: usize,
    pub(super) proto: u8,
    pub(super) fragment: bool,
}

pub(super) fn be(b: &[u8], at: usize) -> Option<u16> {
    Some(u16::from_be_bytes(b.get(at..at + 2)?.try_into().ok()?))
}

pub(super) fn parse(frame: &[u8]) -> Option<Parsed> {
    let ip_at = 14;
    match be(frame, 12)? {
        0x0800 => {
            let vihl = *frame.get(ip_at)?;
            let ihl = usize::from(vihl & 15) * 4;
            let total = usize::from(be(frame, ip_at + 2)?);
            if vihl >> 4 != 4 || ihl < 20 || total < ihl || ip_at + total > frame.len() {
                return None;
            }
            Some(Parsed {
                v6: false,
                ip_at,
                ip_header: ihl,
                l4_at: ip_at + ihl,
                l4_len: total - ihl,
                proto: frame[ip_at + 9],
                fragment: be(frame, ip_at + 6)? & 0x3FFF != 0,
            })
        }
        0x86DD => {
            let payload = usize::from(be(frame, ip_at + 4)?);
            if *frame.get(ip_at)? >> 4 != 6 || ip_at + 40 + payload > frame.len() {
                return None;
            }
            Some(Parsed {
                v6: true,
                ip_at,
                ip_header: 40,
                l4_at: ip_at + 40,
                l4_len: payload,
                proto: frame[ip_at + 6],
                fragment: false,
            })
        }
        _ => None,
    }
}

/// Sum of big-endian 16-bit words (odd byte padded), not folded.
pub(super) fn word_sum(bytes: &[u8]) -> u64 {
    let mut total = 0u64;
    let mut i = 0;
    while i < bytes.len() {
        let hi = u64::from(bytes[i]) << 8;
        let lo = bytes.get(i + 1).map_or(0, |b| u64::from(*b));
        total += hi | lo;
        i += 2;
    }
    total
}

pub(super) fn folded(mut s: u64) -> u16 {
    while s > 0xFFFF {
        s = (s >> 16) + (s & 0xFFFF);
    }
    s as u16
}

/// Pseudo-header sum (with the transport length), not folded.
pub(super) fn pseudo(frame: &[u8], p: &Parsed) -> u64 {
    let addrs = if p.v6 {
        &frame[p.ip_at + 8..p.ip_at + 40]
    } else {
        &frame[p.ip_at + 12..p.ip_at + 20]
    };
    word_sum(addrs) + u64::from(p.proto) + p.l4_len as u64
}

/// Where the checksum field of TCP (16) or UDP (6) is, if the segment holds it.
pub(super) fn checksum_at(p: &Parsed) -> Option<usize> {
    let off = match p.proto {
        6 if p.l4_len >= 20 => 16,
        17 if p.l4_len >= 8 => 6,
        _ => return None,
    };
    Some(p.l4_at + off)
}

/// Whether the frame's IPv4 header and TCP/UDP checksums are right (`None`: nothing the
/// host checks — not IP, a fragment's transport, another protocol).
pub(super) fn verdict(frame: &[u8]) -> (Option<bool>, Option<(u8, bool)>) {
    let Some(p) = parse(frame) else {
        return (None, None);
    };
    let ip = (!p.v6).then(|| folded(word_sum(&frame[p.ip_at..p.ip_at + p.ip_header])) == 0xFFFF);
    let l4 = match checksum_at(&p) {
        Some(at) if !p.fragment => {
            let seg = &frame[p.l4_at..p.l4_at + p.l4_len];
            let zero_udp4 = p.proto == 17 && !p.v6 && be(frame, at) == Some(0);
            let ok = zero_udp4 || folded(pseudo(frame, &p) + word_sum(seg)) == 0xFFFF;
            Some((p.proto, ok))
        }
        _ => None,
    };
    (ip, l4)
}
