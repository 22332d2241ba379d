//! Receive segment coalescing as a host NIC does it, written from the NDIS rules ("Rules for
//! Coalescing TCP/IP Segments", "Updating the IP Headers for Coalesced Segments", "Indicating
//! Coalesced Segments", "Exception Conditions that Terminate Coalescing"), with the mock's own
//! frame parser and checksum code:
//!
//! - only TCP over IPv4 without options or over IPv6 without extension headers, not
//!   fragmented, whose IPv4 header and TCP checksums are right, with data, a TCP header of 20
//!   bytes (no options: coalescing timestamps is left to implementations) and no flags but
//!   ACK and PSH, is a candidate;
//! - a candidate joins the single coalesced unit (SCU) when it is of the same flow (MACs,
//!   addresses, ports), carries the same IPv4 TOS/DF or IPv6 traffic class and flow label,
//!   no ECN congestion mark, starts where the SCU ends (SEG.SEQ == H.NXT) and acknowledges no
//!   less (SEG.ACK ≥ H.ACK), and the SCU stays a legal IP datagram (65535 bytes) within the
//!   caller's size;
//! - the SCU keeps the first segment's headers and IPv4 identification, takes the last
//!   segment's ACK number and window, the smallest TTL / hop limit and the PSH bit of any
//!   segment; the IP length and both checksums are recomputed.

use super::frame::{Parsed, folded, parse, pseudo, verdict, word_sum};

const ACK: u8 = 0x10;
const PSH: u8 = 0x08;
/// Largest IPv4 total length / IPv6 payload length.
const MAX_IP_LENGTH: usize = 65535;

fn be32(b: &[u8], at: usize) -> u32 {
    u32::from_be_bytes([b[at], b[at + 1], b[at + 2], b[at + 3]])
}

/// A TCP segment the host may coalesce: its parse, if it is one (`v4` / `v6`: RSC enabled
/// for that IP version).
fn candidate(frame: &[u8], v4: bool, v6: bool) -> Option<Parsed> {
    let p = parse(frame)?;
    let l4 = p.l4_at;
    let exact = frame.len() == l4 + p.l4_len;
    let ip_ok = if p.v6 {
        v6
    } else {
        v4 && p.ip_header == 20 && frame[p.ip_at + 1] & 3 != 3
    };
    if !ip_ok || p.fragment || p.proto != 6 || !exact || p.l4_len <= 20 {
        return None;
    }
    if p.v6 && frame[p.ip_at + 1] >> 4 & 3 == 3 {
        // ECN congestion experienced (traffic class bits 0-1).
        return None;
    }
    let (doff, flags) = (frame[l4 + 12], frame[l4 + 13]);
    if doff != 0x50 || flags & !(ACK | PSH) != 0 || flags & ACK == 0 {
        return None;
    }
    match verdict(frame) {
        (ip, Some((6, true))) if ip != Some(false) => Some(p),
        _ => None,
    }
}

/// A single coalesced unit being built.
#[derive(Debug)]
pub(in crate::network) struct Scu {
    frame: Vec<u8>,
    p: Parsed,
    next_seq: u32,
    ack: u32,
    window: [u8; 2],
    flags: u8,
    ttl: u8,
    segments: u32,
}

impl Scu {
    /// Starts an SCU with `frame` if the host may coalesce it.
    pub(in crate::network) fn start(frame: &[u8], v4: bool, v6: bool) -> Option<Self> {
        let p = candidate(frame, v4, v6)?;
        let l4 = p.l4_at;
        Some(Self {
            frame: frame.to_vec(),
            p,
            next_seq: be32(frame, l4 + 4).wrapping_add(p.l4_len as u32 - 20),
            ack: be32(frame, l4 + 8),
            window: [frame[l4 + 14], frame[l4 + 15]],
            flags: frame[l4 + 13],
            ttl: frame[p.ip_at + if p.v6 { 7 } else { 8 }],
            segments: 1,
        })
    }

    /// Segments in the SCU.
    pub(in crate::network) fn segments(&self) -> u32 {
        self.segments
    }

    /// Adds `frame` if it continues the SCU and the result stays within `max_len` bytes.
    pub(in crate::network) fn try_add(&mut self, frame: &[u8], max_len: usize) -> bool {
        let (a, b) = (&self.frame, frame);
        let Some(q) = candidate(b, !self.p.v6, self.p.v6) else {
            return false;
        };
        let (ip, l4) = (self.p.ip_at, self.p.l4_at);
        let same_ip = if self.p.v6 {
            a[ip..ip + 4] == b[ip..ip + 4] && a[ip + 8..ip + 40] == b[ip + 8..ip + 40]
        } else {
            a[ip + 1] == b[ip + 1]
                && a[ip + 6] & 0x40 == b[ip + 6] & 0x40
                && a[ip + 12..ip + 20] == b[ip + 12..ip + 20]
        };
        let data = q.l4_len - 20;
        let ip_len = self.p.l4_len + data + if self.p.v6 { 0 } else { 20 };
        let fits = ip_len <= MAX_IP_LENGTH && self.frame.len() + data <= max_len;
        let ack = be32(b, l4 + 8);
        if q.v6 != self.p.v6
            || a[..14] != b[..14]
            || !same_ip
            || a[l4..l4 + 4] != b[l4..l4 + 4]
            || be32(b, l4 + 4) != self.next_seq
            || (ack.wrapping_sub(self.ack) as i32) < 0
            || !fits
        {
            return false;
        }
        self.frame.extend_from_slice(&b[l4 + 20..]);
        self.p.l4_len += data;
        self.next_seq = self.next_seq.wrapping_add(data as u32);
        self.ack = ack;
        self.window = [b[l4 + 14], b[l4 + 15]];
        self.flags |= b[l4 + 13] & PSH;
        self.ttl = self.ttl.min(b[ip + if self.p.v6 { 7 } else { 8 }]);
        self.segments += 1;
        true
    }

    /// The SCU as one frame: IP length, TTL, TCP ACK, window and flags updated, the IPv4
    /// header and TCP checksums recomputed.
    pub(in crate::network) fn finish(self) -> Vec<u8> {
        let Self { mut frame, p, .. } = self;
        let (ip, l4) = (p.ip_at, p.l4_at);
        if p.v6 {
            frame[ip + 4..ip + 6].copy_from_slice(&(p.l4_len as u16).to_be_bytes());
            frame[ip + 7] = self.ttl;
        } else {
            frame[ip + 2..ip + 4].copy_from_slice(&((20 + p.l4_len) as u16).to_be_bytes());
            frame[ip + 8] = self.ttl;
            frame[ip + 10..ip + 12].fill(0);
            let c = !folded(word_sum(&frame[ip..ip + 20]));
            frame[ip + 10..ip + 12].copy_from_slice(&c.to_be_bytes());
        }
        frame[l4 + 8..l4 + 12].copy_from_slice(&self.ack.to_be_bytes());
        frame[l4 + 13] = self.flags;
        frame[l4 + 14..l4 + 16].copy_from_slice(&self.window);
        frame[l4 + 16..l4 + 18].fill(0);
        let sum = pseudo(&frame, &p) + word_sum(&frame[l4..l4 + p.l4_len]);
        frame[l4 + 16..l4 + 18].copy_from_slice(&(!folded(sum)).to_be_bytes());
        frame
    }
}

#[cfg(test)]
mod tests {
    use super::super::frame::be;
    use super::*;

    /// An IPv4 TCP segment with right checksums: seq, ack, flags, payload.
    fn seg4(seq: u32, ack: u32, flags: u8, ttl: u8, data: &[u8]) -> Vec<u8> {
        let mut f = vec![2, 0, 0, 0, 0, 2, 2, 0, 0, 0, 0, 1, 0x08, 0x00];
        let total = (40 + data.len()) as u16;
        f.extend_from_slice(&[0x45, 0, 0, 0, 0x12, 0x34, 0x40, 0, ttl, 6, 0, 0]);
        f[16..18].copy_from_slice(&total.to_be_bytes());
        f.extend_from_slice(&[10, 0, 0, 1, 10, 0, 0, 2]);
        let c = !folded(word_sum(&f[14..34]));
        f[24..26].copy_from_slice(&c.to_be_bytes());
        f.extend_from_slice(&[0x10, 0x00, 0x00, 0x50]);
        f.extend_from_slice(&seq.to_be_bytes());
        f.extend_from_slice(&ack.to_be_bytes());
        f.extend_from_slice(&[0x50, flags, 0x20, 0x00, 0, 0, 0, 0]);
        f.extend_from_slice(data);
        let p = parse(&f).unwrap();
        let sum = pseudo(&f, &p) + word_sum(&f[34..]);
        f[50..52].copy_from_slice(&(!folded(sum)).to_be_bytes());
        f
    }

    #[test]
    fn consecutive_segments_become_one_valid_segment() {
        let a = seg4(1000, 7, ACK, 64, &[1; 100]);
        let b = seg4(1100, 9, ACK | PSH, 60, &[2; 50]);
        let mut s = Scu::start(&a, true, false).unwrap();
        assert!(s.try_add(&b, 65535));
        assert_eq!(s.segments(), 2);
        let f = s.finish();
        assert_eq!(f.len(), 54 + 150);
        assert_eq!(verdict(&f), (Some(true), Some((6, true))));
        assert_eq!(be(&f, 16), Some(190));
        assert_eq!((f[22], f[47]), (60, ACK | PSH));
        assert_eq!(be32(&f, 42), 9);
        assert_eq!(&f[54..154], &[1; 100][..]);
        assert_eq!(&f[154..], &[2; 50][..]);
    }

    #[test]
    fn exceptions_end_the_scu() {
        let a = seg4(1000, 7, ACK, 64, &[1; 100]);
        let mut s = Scu::start(&a, true, false).unwrap();
        // Out of sequence, an older ACK, SYN/FIN, a pure ACK, too large, bad checksum.
        assert!(!s.try_add(&seg4(1101, 7, ACK, 64, &[0; 10]), 65535));
        assert!(!s.try_add(&seg4(1100, 6, ACK, 64, &[0; 10]), 65535));
        assert!(!s.try_add(&seg4(1100, 7, ACK | 0x01, 64, &[0; 10]), 65535));
        assert!(!s.try_add(&seg4(1100, 7, ACK, 64, &[]), 65535));
        assert!(!s.try_add(&seg4(1100, 7, ACK, 64, &[0; 10]), 160));
        let mut bad = seg4(1100, 7, ACK, 64, &[0; 10]);
        bad[60] ^= 1;
        assert!(!s.try_add(&bad, 65535));
        assert_eq!(s.segments(), 1);
        // Not candidates at all: RSC off for IPv4, no ACK.
        assert!(Scu::start(&a, false, true).is_none());
        assert!(Scu::start(&seg4(1, 1, PSH, 64, &[1]), true, false).is_none());
    }
}
