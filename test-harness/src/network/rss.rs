//! The host side of vRSS (devices §2.13.3, §2.13.4, §2.15), written here from the protocol
//! document and the NDIS hashing rules, not from the guest driver: the RSS capabilities the
//! host answers, the RSS parameters it takes (checked as OpenVMM does, plus the oracle's own
//! check that the table names only open channels), the Toeplitz hash of every frame it
//! delivers and the channel the guest's indirection table picks for it, the send
//! indirection table it sends once every sub-channel is open, and the check that each frame
//! the guest sends arrives on the channel that table names.
//!
//! Conventions (the NDIS ones): hash input = source address, destination address, source
//! port, destination port in network order; TCP (UDP) uses ports when its hash type is on,
//! other IP packets, fragments and IPv6 with extension headers the addresses of their IP type;
//! a frame without a hash goes to the primary (receive) or steers as hash 0 (send). One
//! 802.1Q tag is skipped. Receive slot = hash mod table length; send slot = hash mod 16.

use super::*;

/// OID_GEN_RECEIVE_SCALE_CAPABILITIES.
pub(super) const OID_RSS_CAPABILITIES: u32 = 0x0001_0203;
/// OID_GEN_RECEIVE_SCALE_PARAMETERS.
pub(super) const OID_RSS_PARAMETERS: u32 = 0x0001_0204;
/// NDIS STATUS_INVALID_DATA, OpenVMM's answer to parameters it refuses.
const STATUS_INVALID_DATA: u32 = 0xC001_0015;
/// Entries of the send indirection table (VRSS_SEND_TAB_SIZE).
const SEND_TABLE: usize = 16;
/// Frames kept for sub-channels that have not taken them yet, all channels together.
const MAX_PENDING: usize = 4096;

/// The RSS parameters the guest set.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RssParameters {
    /// Hash function and types (devices §2.13.4).
    pub hash_information: u32,
    /// The receive indirection table: channel index per slot.
    pub table: Vec<u32>,
    /// The Toeplitz key.
    pub key: [u8; 40],
}

/// vRSS state of the mock NIC.
#[derive(Debug, Default)]
pub(super) struct Rss {
    /// Parameters in force; `None` = RSS off (every frame on the primary).
    params: Option<RssParameters>,
    /// Open sub-channels, a bit per index.
    open: u64,
    /// The send table last sent to the guest, and the one before (the guest applies a new
    /// one at its next poll, so frames already on their way may follow the previous one).
    send_table: Option<[u32; SEND_TABLE]>,
    prev_send_table: Option<[u32; SEND_TABLE]>,
    /// The table went to the guest since the sub-channels opened.
    table_sent: bool,
    /// Frames for sub-channels, waiting for that channel's turn.
    pending: BTreeMap<u16, VecDeque<Vec<u8>>>,
    /// Transfer-page packets sent on a sub-channel: tid → index.
    sent_on: BTreeMap<u64, u16>,
    /// Frames delivered per channel index.
    delivered: BTreeMap<u16, u64>,
    /// Frames the guest sent, per channel index.
    received: BTreeMap<u16, u64>,
    /// Frames the guest sent on another channel than the send table names.
    mismatches: u64,
    /// NVSP messages for the guest without completion (send tables, hostile messages).
    pub(super) notes: VecDeque<Vec<u8>>,
}

/// Reads bit `n` of `key` (bit 0 = most significant bit of byte 0); beyond the key: 0.
fn key_bit(key: &[u8], n: usize) -> u32 {
    key.get(n / 8)
        .map_or(0, |b| u32::from(b >> (7 - n % 8)) & 1)
}

/// The Toeplitz hash, bit by bit: for every set input bit `n`, XOR the 32 key bits from `n`.
pub(super) fn toeplitz(key: &[u8], input: &[u8]) -> u32 {
    let mut hash = 0u32;
    for n in 0..input.len() * 8 {
        if (input[n / 8] >> (7 - n % 8)) & 1 == 1 {
            hash ^= (0..32).fold(0u32, |v, k| (v << 1) | key_bit(key, n + k));
        }
    }
    hash
}

/// The bytes the hash covers for `frame` under `hash_information`, if any.
fn hash_input(frame: &[u8], hash_information: u32) -> Option<Vec<u8>> {
    let (mut at, mut ethertype) = (14, u16::from_be_bytes(frame.get(12..14)?.try_into().ok()?));
    if ethertype == 0x8100 {
        ethertype = u16::from_be_bytes(frame.get(16..18)?.try_into().ok()?);
        at = 18;
    }
    // (address bytes, protocol or None for "no ports", transport offset, 2-tuple bit, TCP
    // bit, UDP bit)
    let (addrs, proto, l4, ip_bit, tcp_bit, udp_bit) = match ethertype {
        0x0800 => {
            let h = frame.get(at..at + 20)?;
            let header_len = usize::from(h[0] & 15) * 4;
            if h[0] >> 4 != 4 || header_len < 20 || frame.len() < at + header_len {
                return None;
            }
            let frag = u16::from_be_bytes([h[6], h[7]]) & 0x3FFF;
            let proto = (frag == 0).then_some(h[9]);
            (&h[12..20], proto, at + header_len, 0x100, 0x200, 0x4000)
        }
        0x86DD => {
            let h = frame.get(at..at + 40)?;
            if h[0] >> 4 != 6 {
                return None;
            }
            (&h[8..40], Some(h[6]), at + 40, 0x400, 0x1000, 0x8000)
        }
        _ => return None,
    };
    let wants_ports = match proto {
        Some(6) => hash_information & tcp_bit != 0,
        Some(17) => hash_information & udp_bit != 0,
        _ => false,
    };
    let mut input = addrs.to_vec();
    if let (true, Some(ports)) = (wants_ports, frame.get(l4..l4 + 4)) {
        input.extend_from_slice(ports);
        return Some(input);
    }
    (hash_information & ip_bit != 0).then_some(input)
}

impl State {
    /// Channels the host can steer to (its receive queues).
    pub(super) fn rss_queues(&self) -> u32 {
        match self.config.rss_receive_queues {
            0 => self.config.max_subchannels + 1,
            n => n,
        }
    }

    /// The RSS capabilities object (revision 2, 18 bytes, like OpenVMM), or `None` when
    /// the host is configured without RSS.
    pub(super) fn rss_capabilities(&self) -> Option<Vec<u8>> {
        if !self.config.rss {
            return None;
        }
        let mut b = vec![0x88, 2, 18, 0];
        // Toeplitz and the TCP/IPv4, TCP/IPv6 hash types.
        b.extend_from_slice(&words(&[0x301, 1, self.rss_queues()]));
        b.extend_from_slice(&128u16.to_le_bytes());
        Some(b)
    }

    /// OID_GEN_RECEIVE_SCALE_PARAMETERS: OpenVMM's checks (disable flag or no hash function
    /// = RSS off; otherwise a 40-byte key, a table of a non-zero multiple of 4 bytes, entries
    /// below the queue count), answered with its status; a table entry naming a channel that
    /// is not open is accepted like OpenVMM does but recorded as a rejection (the oracle's
    /// own check: nothing could be delivered there).
    pub(super) fn set_rss_parameters(&mut self, ch: &HostChannel, info: &[u8]) -> u32 {
        let u16_le = |at: usize| u16_at(info, at).map(usize::from);
        let (Some(flags), Some(hash), Some(tsize), Some(toff), Some(ksize), Some(koff)) = (
            u16_le(4),
            u32_at(info, 8),
            u16_le(12),
            u32_at(info, 16),
            u16_le(20),
            u32_at(info, 24),
        ) else {
            self.reject(ch, "RSS parameters shorter than their fixed part".into());
            return STATUS_INVALID_DATA;
        };
        if info[0] != 0x89 {
            self.reject(ch, format!("RSS parameters of object type {:#x}", info[0]));
            return STATUS_INVALID_DATA;
        }
        if flags & 0x10 != 0 || hash & 0xFF == 0 {
            self.rss.params = None;
            return 0;
        }
        let (toff, koff) = (toff as usize, koff as usize);
        let key = info.get(koff..koff + ksize).filter(|_| ksize == 40);
        let table = info
            .get(toff..toff + tsize)
            .filter(|_| tsize != 0 && tsize % 4 == 0);
        let (Some(key), Some(table)) = (key, table) else {
            return STATUS_INVALID_DATA;
        };
        let table: Vec<u32> = table
            .chunks_exact(4)
            .map(|c| u32::from_le_bytes([c[0], c[1], c[2], c[3]]))
            .collect();
        if table.iter().any(|q| *q >= self.rss_queues()) {
            return STATUS_INVALID_DATA;
        }
        if let Some(q) = table.iter().find(|q| !self.channel_open(**q)) {
            self.reject(
                ch,
                format!("RSS indirection table names channel {q}, which is not open"),
            );
        }
        let mut k = [0u8; 40];
        k.copy_from_slice(key);
        self.rss.params = Some(RssParameters {
            hash_information: hash,
            table,
            key: k,
        });
        0
    }

    fn channel_open(&self, index: u32) -> bool {
        index == 0 || index < 64 && self.rss.open & (1 << index) != 0
    }

    /// The channel the guest's indirection table picks for a frame delivered to it (0 when
    /// RSS is off or the frame has no hash).
    pub(super) fn receive_channel(&self, frame: &[u8]) -> u16 {
        let Some(p) = &self.rss.params else { return 0 };
        let Some(input) = hash_input(frame, p.hash_information) else {
            return 0;
        };
        let hash = toeplitz(&p.key, &input);
        let q = p.table[hash as usize % p.table.len()];
        if self.channel_open(q) { q as u16 } else { 0 }
    }

    /// Whether frames are spread over sub-channels (RSS set and a sub-channel open).
    pub(super) fn spreading(&self) -> bool {
        self.rss.params.is_some() && self.rss.open != 0
    }

    /// Takes frames from `next` into the per-channel queues (bounded by the free data slots
    /// and [`MAX_PENDING`]) while RSS spreads them.
    pub(super) fn classify(&mut self, next: &mut dyn FnMut() -> Option<Vec<u8>>) {
        let slots = self.recv.as_ref().map_or(0, |r| r.free.len());
        let mut room = slots.saturating_sub(CONTROL_SLOTS).min(MAX_PENDING);
        room = room.saturating_sub(self.rss.pending.values().map(VecDeque::len).sum());
        for _ in 0..room {
            let Some(frame) = next() else { break };
            let q = self.receive_channel(&frame);
            self.rss.pending.entry(q).or_default().push_back(frame);
        }
    }

    /// The next frame waiting for channel `index`.
    pub(super) fn next_pending(&mut self, index: u16) -> Option<Vec<u8>> {
        self.rss.pending.get_mut(&index)?.pop_front()
    }

    /// A transfer-page packet `tid` of `frames` frames went out on channel `index`.
    pub(super) fn note_delivery(&mut self, tid: u64, index: u16, frames: u64) {
        if index != 0 {
            self.rss.sent_on.insert(tid, index);
        }
        *self.rss.delivered.entry(index).or_default() += frames;
    }

    /// Checks that the guest completed transfer-page packet `tid` on the channel it came on.
    pub(super) fn check_completion_channel(&mut self, ch: &HostChannel, tid: u64, index: u16) {
        let sent = self.rss.sent_on.remove(&tid).unwrap_or(0);
        if sent != index {
            self.reject(
                ch,
                format!("receive completion {tid:#x} on channel {index}, packet sent on {sent}"),
            );
        }
    }

    /// A frame the guest sent on channel `index` (in RNDIS PACKET `m`): checked against the
    /// send table the host gave (or its previous one).
    pub(super) fn note_sent(&mut self, m: &[u8], index: u16) {
        let (Some(table), Some(p)) = (&self.rss.send_table, &self.rss.params) else {
            return;
        };
        let data = u32_at(m, 8).map(|o| o as usize + 8);
        let len = u32_at(m, 12).map(|l| l as usize);
        let Some(frame) = data.zip(len).and_then(|(o, l)| m.get(o..o + l)) else {
            return;
        };
        let hash = hash_input(frame, p.hash_information).map_or(0, |i| toeplitz(&p.key, &i));
        let slot = hash as usize % SEND_TABLE;
        let follows =
            |t: Option<&[u32; SEND_TABLE]>| t.is_some_and(|t| t[slot] == u32::from(index));
        if !follows(Some(table)) && !follows(self.rss.prev_send_table.as_ref()) {
            log::warn!(
                "network VSP: frame with hash {hash:#x} sent on channel {index}, table says {}",
                table[slot]
            );
            self.rss.mismatches += 1;
        }
    }

    /// `frames` data messages the guest sent on channel `index` in one packet, counted.
    pub(super) fn note_sent_count(&mut self, index: u16, frames: u64) {
        if frames > 0 {
            *self.rss.received.entry(index).or_default() += frames;
        }
    }

    /// The SEND_INDIRECTION_TABLE message for `table` (OpenVMM's layout: the table right
    /// after the 12-byte header), queued for the guest; the table becomes the one sends are
    /// checked against.
    pub(super) fn queue_send_table(&mut self, table: [u32; SEND_TABLE]) {
        let mut m = words(&[134, SEND_TABLE as u32, 12]);
        m.extend_from_slice(&words(&table));
        self.rss.notes.push_back(m);
        self.rss.prev_send_table = self.rss.send_table.replace(table);
    }

    /// Sub-channel `index` opened; once all of them are, OpenVMM sends the send table
    /// `i mod n` (devices §2.15 step 5).
    pub(super) fn subchannel_opened(&mut self, index: u16) {
        if index < 64 {
            self.rss.open |= 1 << index;
        }
        let n = self.subchannels;
        let all = (1..=n).all(|i| i < 64 && self.rss.open & (1 << i) != 0);
        if all && n > 0 && !self.rss.table_sent {
            self.rss.table_sent = true;
            let table = std::array::from_fn(|i| i as u32 % (n + 1));
            if self.config.send_table_on_open {
                self.queue_send_table(table);
            } else {
                // Not sent: the guest's own default (Linux's) is what sends must follow.
                self.rss.send_table = Some(table);
            }
        }
    }

    /// Sub-channel `index` closed (by the guest, or rescinded): its pending frames dropped,
    /// the receive slots of its packets back (the host's use of them ended with it).
    pub(super) fn subchannel_closed(&mut self, index: u16) {
        if index < 64 {
            self.rss.open &= !(1 << index);
        }
        self.rss.pending.remove(&index);
        let tids: Vec<u64> = self
            .rss
            .sent_on
            .iter()
            .filter(|(_, i)| **i == index)
            .map(|(t, _)| *t)
            .collect();
        for tid in tids {
            self.rss.sent_on.remove(&tid);
            if let (Some(slots), Some(r)) = (self.outstanding.remove(tid), self.recv.as_mut()) {
                r.free.extend(slots);
            }
        }
    }

    /// Everything vRSS forgets when the primary closes.
    pub(super) fn rss_reset(&mut self) {
        self.rss = Rss::default();
    }
}

impl NetworkVsp {
    /// The RSS parameters the guest set and the host took (`None`: RSS off).
    pub fn rss_parameters(&self) -> Option<RssParameters> {
        self.lock().rss.params.clone()
    }

    /// Sends the guest a SEND_INDIRECTION_TABLE with `table` (16 entries; OpenVMM's layout)
    /// on the primary channel; the guest's sends are checked against it from then on.
    pub fn send_indirection_table(&self, table: [u32; 16]) {
        self.lock().queue_send_table(table);
    }

    /// Sends `message` to the guest as an in-band NVSP packet without completion, whatever
    /// it holds (hostile send tables and other malformed messages).
    pub fn inject_nvsp(&self, message: &[u8]) {
        self.lock().rss.notes.push_back(message.to_vec());
    }

    /// Frames delivered to the guest on each channel (index → frames).
    pub fn frames_to_guest_per_channel(&self) -> BTreeMap<u16, u64> {
        self.lock().rss.delivered.clone()
    }

    /// Frames the guest sent on each channel (index → frames).
    pub fn frames_from_guest_per_channel(&self) -> BTreeMap<u16, u64> {
        self.lock().rss.received.clone()
    }

    /// Frames the guest sent on a channel other than the send table names for them (0 in a
    /// clean run).
    pub fn steering_mismatches(&self) -> u64 {
        self.lock().rss.mismatches
    }

    /// The channel the host would deliver `frame` on under the guest's RSS parameters.
    pub fn receive_channel_for(&self, frame: &[u8]) -> u16 {
        self.lock().receive_channel(frame)
    }

    /// Sub-channels currently open.
    pub fn open_subchannels(&self) -> u32 {
        self.lock().rss.open.count_ones()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const KEY: [u8; 40] = [
        0x6d, 0x5a, 0x56, 0xda, 0x25, 0x5b, 0x0e, 0xc2, 0x41, 0x67, 0x25, 0x3d, 0x43, 0xa3, 0x8f,
        0xb0, 0xd0, 0xca, 0x2b, 0xcb, 0xae, 0x7b, 0x30, 0xb4, 0x77, 0xcb, 0x2d, 0xa3, 0x80, 0x30,
        0xf2, 0x0c, 0x6a, 0x42, 0xb7, 0x3b, 0xbe, 0xac, 0x01, 0xfa,
    ];

    #[test]
    fn the_host_hash_matches_the_verification_suite() {
        // 66.9.149.187:2794 → 161.142.100.80:1766, and 199.92.111.2:14230 → 65.69.140.83:4739.
        let cases: [([u8; 12], u32, u32); 2] = [
            (
                [66, 9, 149, 187, 161, 142, 100, 80, 0x0a, 0xea, 0x06, 0xe6],
                0x323e8fc2,
                0x51ccc178,
            ),
            (
                [199, 92, 111, 2, 65, 69, 140, 83, 0x37, 0x96, 0x12, 0x83],
                0xd718262a,
                0xc626b0ea,
            ),
        ];
        for (input, two, four) in cases {
            assert_eq!(toeplitz(&KEY, &input[..8]), two);
            assert_eq!(toeplitz(&KEY, &input), four);
            let mut frame = vec![0u8; 12];
            frame.extend_from_slice(&[0x08, 0x00, 0x45, 0, 0, 40, 0, 0, 0, 0, 64, 6, 0, 0]);
            frame.extend_from_slice(&input);
            frame.extend_from_slice(&[0; 16]);
            let i = hash_input(&frame, 0x301).unwrap();
            assert_eq!(toeplitz(&KEY, &i), four);
            let i = hash_input(&frame, 0x101).unwrap();
            assert_eq!(toeplitz(&KEY, &i), two);
            assert_eq!(hash_input(&frame, 0x1), None);
        }
    }
}
