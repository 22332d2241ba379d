//! What the host does with a guest's transmit PPIs: checksum offload (checked against the
//! frame, filled in like a NIC over the guest's preload) and the final verification of every
//! frame leaving the host.

use super::OffloadState;
use super::frame::{be, checksum_at, folded, parse, pseudo, verdict, word_sum};

impl OffloadState {
    /// Applies a guest PACKET's checksum PPI (`value`) to its frame as the host NIC does.
    /// `Err`: refused (completed with status 2, frame dropped). `Ok(notes)`: sent, with the
    /// guest mistakes found on the way (rejections).
    pub(in crate::network) fn transmit_checksum(
        &mut self,
        frame: &mut [u8],
        value: u32,
    ) -> Result<Vec<String>, String> {
        let (is4, is6, tcp, udp, iph) = (
            value & 1 != 0,
            value & 2 != 0,
            value & 4 != 0,
            value & 8 != 0,
            value & 16 != 0,
        );
        let offset = ((value >> 16) & 0x3FF) as usize;
        // OpenVMM (devices §2.10 rule): a non-zero header offset must leave room for the
        // IP header and lie inside the frame.
        let min = if is6 { 14 + 40 } else { 14 + 20 };
        if (tcp || udp) && offset != 0 && (offset < min || offset >= frame.len()) {
            return Err(format!(
                "InvalidTcpHeaderOffset: {offset} in a {}-byte frame",
                frame.len()
            ));
        }
        let mut notes = Vec::new();
        if !(tcp || udp || iph) {
            return Ok(notes);
        }
        let Some(p) = parse(frame) else {
            notes.push(format!("checksum PPI {value:#x} on a frame that is not IP"));
            return Ok(notes);
        };
        if is4 == is6 || is6 != p.v6 {
            notes.push(format!(
                "checksum PPI {value:#x}: IP version does not match the frame"
            ));
            return Ok(notes);
        }
        let e = self.enabled.tx;
        if iph {
            if p.v6 || !e.ip4 {
                notes.push("IPv4 header checksum requested without that offload".into());
            } else {
                let h = p.ip_at..p.ip_at + p.ip_header;
                frame[p.ip_at + 10..p.ip_at + 12].fill(0);
                let c = !folded(word_sum(&frame[h]));
                frame[p.ip_at + 10..p.ip_at + 12].copy_from_slice(&c.to_be_bytes());
            }
        }
        if !(tcp || udp) {
            return Ok(notes);
        }
        let enabled = match (p.v6, tcp) {
            (false, true) => e.tcp4,
            (false, false) => e.udp4,
            (true, true) => e.tcp6,
            (true, false) => e.udp6,
        };
        let want_proto = if tcp { 6 } else { 17 };
        let Some(at) =
            checksum_at(&p).filter(|_| p.proto == want_proto && !p.fragment && !(tcp && udp))
        else {
            notes.push(format!(
                "checksum PPI {value:#x} does not match the frame's protocol {}",
                p.proto
            ));
            return Ok(notes);
        };
        if offset != p.l4_at {
            notes.push(format!(
                "checksum PPI header offset {offset}, the frame's is {}",
                p.l4_at
            ));
            return Ok(notes);
        }
        if !enabled {
            notes.push(format!(
                "checksum PPI {value:#x} for an offload the guest did not enable"
            ));
            return Ok(notes);
        }
        self.stats.tx_checksummed += 1;
        let preload = be(frame, at).unwrap_or(0);
        let want = folded(pseudo(frame, &p));
        // 0 and 0xFFFF are the same one's complement number.
        if preload != want && !(preload | want == 0xFFFF && preload & want == 0) {
            self.stats.tx_bad_preloads += 1;
            notes.push(format!(
                "checksum preload {preload:#06x}, pseudo-header sum {want:#06x}"
            ));
        }
        // The NIC: one's complement sum of the segment as it is (preload included).
        let mut c = !folded(word_sum(&frame[p.l4_at..p.l4_at + p.l4_len]));
        if c == 0 && !tcp {
            c = 0xFFFF;
        }
        frame[at..at + 2].copy_from_slice(&c.to_be_bytes());
        Ok(notes)
    }

    /// Verifies a frame on its way out: always when the host computed one of its checksums
    /// (`offloaded`), every IP frame while verification is on.
    pub(in crate::network) fn verify_sent(&mut self, frame: &[u8], offloaded: bool) {
        if !self.verify && !offloaded {
            return;
        }
        let (ip, l4) = verdict(frame);
        if ip.is_none() && l4.is_none() {
            return;
        }
        self.stats.tx_verified += 1;
        if ip == Some(false) || matches!(l4, Some((_, false))) {
            self.stats.tx_bad_checksums += 1;
        }
    }
}

fn be32(b: &[u8], at: usize) -> u32 {
    u32::from_be_bytes([b[at], b[at + 1], b[at + 2], b[at + 3]])
}

impl OffloadState {
    /// Segments a guest's LSO v2 frame (PPI `value`) as the host NIC does (devices §2.14):
    /// every segment carries the frame's headers with its own IP length (and IPv4 id and
    /// header checksum), sequence number, flags (FIN and PSH only on the last, CWR only on
    /// the first) and a TCP checksum summed over the guest's preload plus the segment's
    /// length. `max_frame`: the NIC's frame size (SEND_NDIS_CONFIG). `Err`: refused (status
    /// 2, nothing sent). `Ok((segments, notes))`: the notes are guest mistakes (rejections).
    pub(in crate::network) fn transmit_lso(
        &mut self,
        frame: &[u8],
        value: u32,
        max_frame: usize,
        nvsp: u32,
    ) -> Result<(Vec<Vec<u8>>, Vec<String>), String> {
        let mss = (value & 0xF_FFFF) as usize;
        let offset = ((value >> 20) & 0x3FF) as usize;
        let v6 = value & (1 << 31) != 0;
        if value & (1 << 30) == 0 {
            return Err(format!("LSO v1 PPI {value:#x}: only LSO v2 can be enabled"));
        }
        let min = if v6 { 14 + 40 } else { 14 + 20 };
        if offset < min || offset >= frame.len() {
            return Err(format!("InvalidTcpHeaderOffset: LSO offset {offset}"));
        }
        let enabled = if v6 {
            self.enabled.lso_v2_ipv6
        } else {
            self.enabled.lso_v2_ipv4
        };
        if !enabled {
            return Err(format!("LSO PPI {value:#x} without LSO v2 enabled"));
        }
        let mut notes = Vec::new();
        let ethertype = be(frame, 12).unwrap_or(0);
        let ip_at = 14;
        let (l4_at, proto) = match (ethertype, v6) {
            (0x0800, false) => {
                let ihl = usize::from(frame[ip_at] & 15) * 4;
                if frame[ip_at] >> 4 != 4 || ihl < 20 {
                    return Err("LSO frame with a bad IPv4 header".into());
                }
                if be(frame, ip_at + 2) != Some(0) || be(frame, ip_at + 10) != Some(0) {
                    notes.push("LSO IPv4 total length / header checksum not zeroed".into());
                }
                (ip_at + ihl, frame.get(ip_at + 9).copied())
            }
            (0x86DD, true) => {
                if be(frame, ip_at + 4) != Some(0) {
                    notes.push("LSO IPv6 payload length not zeroed".into());
                }
                (ip_at + 40, frame.get(ip_at + 6).copied())
            }
            _ => {
                return Err(format!(
                    "LSO PPI IP version and ethertype {ethertype:#06x} differ"
                ));
            }
        };
        let doff = usize::from(frame.get(l4_at + 12).copied().unwrap_or(0) >> 4) * 4;
        if proto != Some(6) || l4_at != offset || doff < 20 || l4_at + doff > frame.len() {
            return Err(format!("LSO frame: TCP header at {offset} not found"));
        }
        let header_len = l4_at + doff;
        let payload = &frame[header_len..];
        let caps = self.caps(nvsp);
        if mss == 0 || header_len + mss > max_frame {
            return Err(format!(
                "LSO MSS {mss} does not fit a {max_frame}-byte frame"
            ));
        }
        if payload.is_empty() || payload.len() > caps.lso_v2_max_size as usize {
            return Err(format!("LSO payload of {} bytes", payload.len()));
        }
        let count = payload.len().div_ceil(mss);
        if count < caps.lso_v2_min_segments as usize {
            notes.push(format!(
                "LSO send of {count} segments, below the host's minimum {}",
                caps.lso_v2_min_segments
            ));
        }
        // The preload: the pseudo-header sum without the length.
        let addrs = if v6 {
            &frame[ip_at + 8..ip_at + 40]
        } else {
            &frame[ip_at + 12..ip_at + 20]
        };
        let want = folded(word_sum(addrs) + 6);
        let preload = be(frame, l4_at + 16).unwrap_or(0);
        if preload != want {
            self.stats.tx_bad_preloads += 1;
            notes.push(format!(
                "LSO preload {preload:#06x}, pseudo-header sum {want:#06x}"
            ));
        }
        let seq = be32(frame, l4_at + 4);
        let id = be(frame, ip_at + 4).unwrap_or(0);
        let mut segments = Vec::with_capacity(count);
        for (i, chunk) in payload.chunks(mss).enumerate() {
            let mut s = frame[..header_len].to_vec();
            s.extend_from_slice(chunk);
            let l4_len = doff + chunk.len();
            if v6 {
                s[ip_at + 4..ip_at + 6].copy_from_slice(&(l4_len as u16).to_be_bytes());
            } else {
                let ihl = l4_at - ip_at;
                s[ip_at + 2..ip_at + 4].copy_from_slice(&((ihl + l4_len) as u16).to_be_bytes());
                let seg_id = id.wrapping_add(i as u16);
                s[ip_at + 4..ip_at + 6].copy_from_slice(&seg_id.to_be_bytes());
                s[ip_at + 10..ip_at + 12].fill(0);
                let c = !folded(word_sum(&s[ip_at..l4_at]));
                s[ip_at + 10..ip_at + 12].copy_from_slice(&c.to_be_bytes());
            }
            let seg_seq = seq.wrapping_add((i * mss) as u32);
            s[l4_at + 4..l4_at + 8].copy_from_slice(&seg_seq.to_be_bytes());
            if i + 1 < count {
                s[l4_at + 13] &= !(0x01 | 0x08); // FIN, PSH
            }
            if i > 0 {
                s[l4_at + 13] &= !0x80; // CWR
            }
            // The NIC: the segment as it is (the preload in the field) plus its length.
            let c = !folded(word_sum(&s[l4_at..]) + l4_len as u64);
            s[l4_at + 16..l4_at + 18].copy_from_slice(&c.to_be_bytes());
            segments.push(s);
        }
        self.stats.tx_lso_sends += 1;
        self.stats.tx_lso_segments += segments.len() as u64;
        Ok((segments, notes))
    }
}
