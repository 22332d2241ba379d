//! Reference models for the `netvsc_offload` target, written from the protocol facts rather
//! than from the driver: where the IP and TCP/UDP headers of an Ethernet frame are (RFC 791,
//! RFC 8200, RFC 793, RFC 768 and the rules of devices §2.14), the Internet checksum
//! (RFC 1071) bit by bit over the pseudo-header, the PPI walk of devices §2.11, the Toeplitz
//! hash as the NDIS RSS specification defines it (key bits `i..i + 32` for input bit `i`)
//! and its input tuple (devices §2.13.4) — plus a generator of frames from the fuzz input
//! that are usually well formed, so the checks get past the header parsing.

use crate::Input;
use netvsc::offload::{CsumStatus, RxChecksum};

/// Big-endian u16 at `at`, if inside.
pub fn be16(b: &[u8], at: usize) -> Option<u16> {
    Some(u16::from_be_bytes([
        *b.get(at)?,
        *b.get(at.checked_add(1)?)?,
    ]))
}

/// Little-endian u32 at `at` (0 outside).
pub fn le32(b: &[u8], at: usize) -> u32 {
    b.get(at..at + 4)
        .map_or(0, |s| u32::from_le_bytes([s[0], s[1], s[2], s[3]]))
}

/// Where the headers of a TCP/UDP over IP frame are (no 802.1Q tag).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Headers {
    /// IPv6 (else IPv4).
    pub v6: bool,
    /// TCP (else UDP).
    pub tcp: bool,
    /// Offset of the TCP/UDP header.
    pub l4: usize,
    /// TCP/UDP bytes as the IP header gives them.
    pub len: usize,
    /// IPv4 options (IHL > 5).
    pub ip_options: bool,
    /// TCP header bytes (data offset × 4); 8 for UDP.
    pub l4_header: usize,
}

impl Headers {
    /// Offset of the checksum field.
    pub fn checksum_at(&self) -> usize {
        self.l4 + if self.tcp { 16 } else { 6 }
    }
}

/// The headers of `f` when it is TCP or UDP over IPv4 (version 4, IHL ≥ 5, total length
/// within the frame and covering the header, not a fragment) or IPv6 (version 6, payload
/// within the frame, TCP/UDP as the next header), with a TCP data offset in 20..=segment or
/// a UDP length equal to the IP payload length.
pub fn headers(f: &[u8]) -> Option<Headers> {
    let first = *f.get(14)?;
    let (v6, l4, len, proto, ip_options) = match be16(f, 12)? {
        0x0800 => {
            let ihl = usize::from(first & 0xF) * 4;
            if first >> 4 != 4 || ihl < 20 || f.len() < 14 + ihl {
                return None;
            }
            let total = usize::from(be16(f, 16)?);
            let frag = be16(f, 20)?;
            if total < ihl || f.len() < 14 + total || frag & 0x1FFF != 0 || frag & 0x2000 != 0 {
                return None;
            }
            (false, 14 + ihl, total - ihl, f[23], ihl > 20)
        }
        0x86DD => {
            let payload = usize::from(be16(f, 18)?);
            if first >> 4 != 6 || f.len() < 54 + payload {
                return None;
            }
            (true, 54, payload, f[20], false)
        }
        _ => return None,
    };
    let (tcp, l4_header) = match proto {
        6 => {
            let doff = usize::from(*f.get(l4 + 12)? >> 4) * 4;
            if doff < 20 || doff > len {
                return None;
            }
            (true, doff)
        }
        17 => {
            if len < 8 || usize::from(be16(f, l4 + 4)?) != len {
                return None;
            }
            (false, 8)
        }
        _ => return None,
    };
    Some(Headers {
        v6,
        tcp,
        l4,
        len,
        ip_options,
        l4_header,
    })
}

/// The RFC 1071 sum of `data` as 16-bit big-endian words (an odd byte padded), unfolded.
pub fn sum(data: &[u8]) -> u64 {
    let mut s = 0u64;
    for (i, &b) in data.iter().enumerate() {
        s += if i.is_multiple_of(2) {
            u64::from(b) << 8
        } else {
            u64::from(b)
        };
    }
    s
}

/// Folds with end-around carry.
pub fn fold(mut s: u64) -> u16 {
    while s > 0xFFFF {
        s = (s & 0xFFFF) + (s >> 16);
    }
    s as u16
}

/// The unfolded pseudo-header sum of `h` in `f` with `len` as the upper-layer length.
pub fn pseudo(f: &[u8], h: &Headers, len: usize) -> u64 {
    let addrs = if h.v6 { &f[22..54] } else { &f[26..34] };
    let proto = if h.tcp { 6 } else { 17 };
    sum(addrs) + proto + (len as u64 >> 16) + (len as u64 & 0xFFFF)
}

/// Whether the TCP/UDP checksum of `f` verifies (over the pseudo-header and the segment).
pub fn verifies(f: &[u8], h: &Headers) -> bool {
    fold(pseudo(f, h, h.len) + sum(&f[h.l4..h.l4 + h.len])) == 0xFFFF
}

/// A PPI element as the walk of devices §2.11 finds it: (type, payload offset in the area,
/// payload length), or the malformed element that ends the walk.
pub type PpiElement = Result<(u32, usize, usize), ()>;

/// The PPI walk: size ≥ 12 and within what is left, payload offset in 12..=size.
pub fn ppi_walk(area: &[u8]) -> Vec<PpiElement> {
    let mut out = Vec::new();
    let mut at = 0;
    while at < area.len() {
        let rest = &area[at..];
        if rest.len() < 12 {
            out.push(Err(()));
            break;
        }
        let (size, ty, off) = (
            le32(rest, 0) as usize,
            le32(rest, 4),
            le32(rest, 8) as usize,
        );
        if size < 12 || size > rest.len() || off < 12 || off > size {
            out.push(Err(()));
            break;
        }
        out.push(Ok((ty, at + off, size - off)));
        at += size;
    }
    out
}

/// The Toeplitz hash: for every set bit `i` of the input (MSB of byte 0 first, at most 36
/// bytes), the key bits `i..i + 32` as a u32 are XORed in.
pub fn toeplitz(key: &[u8; 40], input: &[u8]) -> u32 {
    let key_bit = |j: usize| u32::from(key[j / 8] >> (7 - j % 8) & 1);
    let mut h = 0;
    for i in 0..input.len().min(36) * 8 {
        if input[i / 8] >> (7 - i % 8) & 1 == 1 {
            h ^= (0..32).fold(0u32, |w, k| w << 1 | key_bit(i + k));
        }
    }
    h
}

/// The RSS hash input of `f` under hash types `info`: one 802.1Q tag skipped; IPv4 (version
/// 4, IHL ≥ 5 within the frame; a fragment has no ports) or IPv6 (version 6, 40 bytes);
/// addresses then ports when the protocol's 4-tuple type is on and the ports are there,
/// otherwise the addresses when the version's 2-tuple type is on.
pub fn hash_input(f: &[u8], info: u32) -> Option<Vec<u8>> {
    let (mut ethertype, mut l3) = (be16(f, 12)?, 14);
    if ethertype == 0x8100 {
        ethertype = be16(f, 16)?;
        l3 = 18;
    }
    let ip = &f[l3.min(f.len())..];
    let first = *ip.first()?;
    let (addrs, proto, l4, two, tcp, udp) = match ethertype {
        0x0800 => {
            let ihl = usize::from(first & 0xF) * 4;
            if first >> 4 != 4 || ihl < 20 || ip.len() < ihl {
                return None;
            }
            let fragment = be16(ip, 6)? & 0x3FFF != 0;
            let proto = if fragment { 0 } else { ip[9] };
            (&ip[12..20], proto, ihl, 0x100, 0x200, 0x4000)
        }
        0x86DD => {
            if first >> 4 != 6 || ip.len() < 40 {
                return None;
            }
            (&ip[8..40], ip[6], 40, 0x400, 0x1000, 0x8000)
        }
        _ => return None,
    };
    let ports = ip.get(l4..l4 + 4);
    let four = (proto == 6 && info & tcp != 0) || (proto == 17 && info & udp != 0);
    let mut out = addrs.to_vec();
    match ports {
        Some(p) if four => out.extend_from_slice(p),
        _ if info & two != 0 => {}
        _ => return None,
    }
    Some(out)
}

/// The receive verdict a guest reports (devices §2.14) for checksum PPI bits `bits`: per
/// layer Bad when its failed bit is set, Good when its succeeded bit is, otherwise not
/// checked; then only the layers enabled on receive for the frame's IP version are kept
/// (`rx`: IPv4 header, TCP/IPv4, UDP/IPv4, TCP/IPv6, UDP/IPv6; IPv6 has no header checksum).
pub fn rx_verdict(bits: u32, frame: &[u8], rx: [bool; 5]) -> RxChecksum {
    let status = |on: bool, failed: u32, ok: u32| match () {
        _ if !on => CsumStatus::NotChecked,
        _ if bits & failed != 0 => CsumStatus::Bad,
        _ if bits & ok != 0 => CsumStatus::Good,
        _ => CsumStatus::NotChecked,
    };
    let (ip, tcp, udp) = match be16(frame, 12) {
        Some(0x0800) => (rx[0], rx[1], rx[2]),
        Some(0x86DD) => (false, rx[3], rx[4]),
        _ => (false, false, false),
    };
    RxChecksum {
        ip: status(ip, 4, 32),
        tcp: status(tcp, 1, 8),
        udp: status(udp, 2, 16),
    }
}

fn push16(v: &mut Vec<u8>, x: u16) {
    v.extend_from_slice(&x.to_be_bytes());
}

/// A frame from the input: raw bytes, or (mostly) TCP/UDP/other over IPv4/IPv6, sometimes
/// behind an 802.1Q tag, with options, payloads up to `max_payload` bytes, lengths and
/// fragment fields that are usually right, Ethernet padding, and a few bytes overwritten.
pub fn frame(inp: &mut Input<'_>, max_payload: usize) -> Vec<u8> {
    let mode = inp.u8();
    if mode.is_multiple_of(8) {
        return inp.bytes(300);
    }
    let shape = inp.u8();
    let v6 = shape & 1 != 0;
    let proto = [6u8, 6, 6, 17, 17, 0, 58, 6][usize::from(shape >> 1 & 7)];
    let proto = if proto == 0 { inp.u8() } else { proto };
    let mut f = inp.fill(12);
    if shape >> 4 == 0 {
        push16(&mut f, 0x8100);
        push16(&mut f, inp.u16());
    }
    push16(&mut f, if v6 { 0x86DD } else { 0x0800 });
    let tcp_words = match inp.u8() % 8 {
        0 => inp.below(16),
        1 => 5 + inp.below(11),
        _ => 5,
    };
    let l4_header = match proto {
        6 => (tcp_words * 4).max(20),
        17 => 8,
        _ => inp.below(24),
    };
    let ihl = match inp.u8() % 8 {
        0 => inp.below(16),
        1 => 5 + inp.below(11),
        _ => 5,
    };
    let ip_header = if v6 { 40 } else { (ihl * 4).max(20) };
    let room = 0xFFFF - l4_header - if v6 { 0 } else { ip_header };
    let payload_len = match inp.u8() % 8 {
        0 => inp.below(max_payload + 1),
        1 => 0,
        2 => inp.below(3000),
        _ => inp.below(200),
    }
    .min(room);
    let l4_len = l4_header + payload_len;
    let odd = |inp: &mut Input<'_>| inp.u8().is_multiple_of(8);
    if v6 {
        let version = if odd(inp) { inp.u8() } else { 0x60 };
        f.push(version);
        f.extend(inp.fill(3));
        let len = if odd(inp) { inp.u16() } else { l4_len as u16 };
        push16(&mut f, len);
        f.push(proto);
        f.push(64);
        f.extend(inp.fill(32));
    } else {
        let version = if odd(inp) { inp.u8() >> 4 } else { 4 };
        f.push(version << 4 | ihl as u8 & 0xF);
        f.push(0);
        let total = if odd(inp) {
            inp.u16()
        } else {
            (ip_header + l4_len) as u16
        };
        push16(&mut f, total);
        push16(&mut f, inp.u16());
        let frag = match inp.u8() % 8 {
            0 => inp.u16(),
            1 => 0x4000,
            _ => 0,
        };
        push16(&mut f, frag);
        f.push(64);
        f.push(proto);
        f.extend(inp.fill(2 + 8 + ip_header - 20));
    }
    match proto {
        6 => {
            f.extend(inp.fill(12));
            f.push((tcp_words as u8) << 4);
            f.extend(inp.fill(l4_header - 13));
        }
        17 => {
            f.extend(inp.fill(4));
            let len = if odd(inp) { inp.u16() } else { l4_len as u16 };
            push16(&mut f, len);
            f.extend(inp.fill(2));
        }
        _ => f.extend(inp.fill(l4_header)),
    }
    f.extend(inp.fill(payload_len));
    if odd(inp) {
        let pad = inp.below(64);
        f.extend(inp.fill(pad));
    }
    if mode % 8 == 1 {
        for _ in 0..1 + inp.below(3) {
            let at = inp.below(f.len());
            f[at] = inp.u8();
        }
    }
    if mode % 8 == 2 {
        let n = inp.below(f.len() + 1);
        f.truncate(n);
    }
    f
}
