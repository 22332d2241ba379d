//! The network host (NVSP and RNDIS, devices §2, §7.1) for the netvsc target: answers the
//! NVSP handshake and buffer registration, reads RNDIS control messages and data frames out
//! of the guest's send-buffer sections, answers control messages through the receive buffer
//! (transfer-page packets, one slot per message), and accounts for every transfer-page packet
//! until the guest completes it. Each answer is correct or hostile as the input's decision
//! byte says (< 0xB0 and an exhausted input: correct).
//!
//! Checked here: every guest packet is a well-formed NVSP message (40 bytes, a known type,
//! completion requested where the protocol needs one), every RNDIS message in a section lies
//! inside it, data frames arrive in the order and with the bytes the guest accepted them, and
//! every transfer-page packet is completed at most once (and, when the target asks, exactly
//! once).

use crate::dev::{Devices, GuestPacket, HostPacket, Step};
use crate::nvsp_offload::{Expected, OffloadHost, relid_of};
use crate::{Input, trace};
use std::collections::{BTreeMap, BTreeSet, VecDeque};

fn le32(b: &[u8], at: usize) -> u32 {
    b.get(at..at + 4)
        .map_or(0, |s| u32::from_le_bytes(s.try_into().unwrap()))
}

fn words(w: &[u32]) -> Vec<u8> {
    w.iter().flat_map(|x| x.to_le_bytes()).collect()
}

fn nvsp(w: &[u32]) -> Vec<u8> {
    let mut b = words(w);
    b.resize(40.max(b.len()), 0);
    b
}

/// A frame the host delivered and the checksum PPI bits it sent with it.
pub type Delivered = (Vec<u8>, Option<u32>);

/// The receive buffer as the host uses it.
#[derive(Clone, Debug)]
pub struct Recv {
    /// GPADL handle.
    pub gpadl: u32,
    /// Slot size.
    pub slot: usize,
    /// Slots in use.
    pub used: Vec<bool>,
}

/// The network host.
pub struct Nvsp<'a> {
    /// Rings and the host model.
    pub dev: Devices,
    /// Decision tape (shared with the target's operations).
    pub inp: Input<'a>,
    /// Highest NVSP version accepted.
    pub host_max: u32,
    /// Section size answered for the send buffer.
    pub section_size: u32,
    /// Receive slot size answered.
    pub slot_size: u32,
    /// RNDIS max packets per message and alignment factor answered.
    pub packing: (u32, u32),
    /// Maximum frame size answered.
    pub max_frame: u32,
    /// MAC address answered.
    pub mac: [u8; 6],
    /// Negotiated version.
    pub version: Option<u32>,
    /// The receive buffer.
    pub recv: Option<Recv>,
    /// Send buffer GPADL and section count.
    pub send: Option<(u32, usize)>,
    /// Transfer-page packets not yet completed: tid → (relid, slots).
    pub outstanding: BTreeMap<u64, (u32, Vec<usize>)>,
    /// Host requests (VF association, switch data path) awaiting completion: tid → type.
    pub asked: BTreeMap<u64, u32>,
    /// Tids the guest completed.
    pub completed: BTreeSet<u64>,
    /// Frames the guest accepted for sending, per channel, not yet seen by the host.
    pub tx_expected: BTreeMap<u32, VecDeque<Expected>>,
    /// Frames (and checksum PPI bits) the host sent in valid messages, per channel, not yet
    /// delivered.
    pub rx_expected: BTreeMap<u32, VecDeque<Delivered>>,
    /// Offloads and multi-queue.
    pub offload: OffloadHost,
    /// No hostile act so far could change what the guest receives (or its control state).
    pub exact: bool,
    /// Every frame the guest accepted for sending is in `tx_expected`, and the host saw the
    /// guest's own packets: frames must arrive exactly.
    pub tx_exact: bool,
    /// Requests held for a later answer (a data packet's frames were already checked).
    pub held: Vec<GuestPacket>,
    /// The host sent packets it does not track (chaos): completions of unknown ids are
    /// tolerated.
    pub untracked: bool,
    next_tid: u64,
    /// Channels by their last OPENCHANNEL (true) or CLOSECHANNEL (false) the guest posted.
    open: BTreeMap<u32, bool>,
    posted_seen: usize,
    /// Frames the host saw from the guest.
    pub tx_seen: u64,
}

impl<'a> Nvsp<'a> {
    /// A host with default answers.
    pub fn new(dev: Devices, inp: Input<'a>) -> Self {
        Self {
            dev,
            inp,
            host_max: 0x6_0001,
            section_size: 6144,
            slot_size: 1806,
            packing: (8, 3),
            max_frame: 1500,
            mac: [0x00, 0x15, 0x5D, 1, 2, 3],
            version: None,
            recv: None,
            send: None,
            outstanding: BTreeMap::new(),
            asked: BTreeMap::new(),
            completed: BTreeSet::new(),
            tx_expected: BTreeMap::new(),
            rx_expected: BTreeMap::new(),
            offload: OffloadHost::default(),
            exact: true,
            tx_exact: true,
            held: Vec::new(),
            untracked: false,
            next_tid: 0x100,
            open: BTreeMap::new(),
            posted_seen: 0,
            tx_seen: 0,
        }
    }

    fn tid(&mut self) -> u64 {
        self.next_tid += 1;
        self.next_tid
    }

    /// Channels the guest has open and the host serves (a channel the guest closed may
    /// still have its rings mapped while the host has not answered the teardown, but no
    /// packet on it reaches the guest any more).
    pub fn live(&mut self) -> Vec<u32> {
        {
            let w = self.dev.world.borrow();
            for (_, m) in &w.posted[self.posted_seen..] {
                match le32(m, 0) {
                    5 => self.open.insert(le32(m, 8), true),
                    7 => self.open.insert(le32(m, 8), false),
                    _ => None,
                };
            }
            self.posted_seen = w.posted.len();
        }
        let open = &self.open;
        self.dev
            .relids()
            .into_iter()
            .filter(|r| open.get(r) == Some(&true))
            .collect()
    }

    /// Base address and length of the buffer behind GPADL `h`, while the host maps it.
    fn buffer(&self, h: u32) -> Option<(*mut u8, usize)> {
        let w = self.dev.world.borrow();
        let g = w.gpadls.get(&h)?;
        if g.pfns.len() != g.pages || g.pfns.is_empty() {
            return None;
        }
        assert!(g.pfns.windows(2).all(|p| p[1] == p[0] + 1));
        Some(((g.pfns[0] * 4096) as *mut u8, g.pfns.len() * 4096))
    }

    fn read_buffer(&self, h: u32, at: usize, len: usize) -> Option<Vec<u8>> {
        let (base, size) = self.buffer(h)?;
        if at.checked_add(len)? > size {
            return None;
        }
        let mut v = vec![0u8; len];
        // SAFETY: inside the buffer of a GPADL the host maps (checked above); the guest does
        // not free it while the GPADL exists (the HAL checks).
        unsafe { std::ptr::copy_nonoverlapping(base.add(at), v.as_mut_ptr(), len) };
        Some(v)
    }

    fn write_buffer(&self, h: u32, at: usize, bytes: &[u8]) -> bool {
        let Some((base, size)) = self.buffer(h) else {
            return false;
        };
        if at + bytes.len() > size {
            return false;
        }
        // SAFETY: as in `read_buffer`; the guest reads the receive buffer with volatile copies.
        unsafe { std::ptr::copy_nonoverlapping(bytes.as_ptr(), base.add(at), bytes.len()) };
        true
    }

    /// Puts RNDIS messages into free receive slots and sends one transfer-page packet naming
    /// them on channel `relid` (ranges may be overridden by the caller's `ranges`). Returns
    /// the tid, or `None` if there is no buffer, no free slot or no such channel.
    pub fn deliver(
        &mut self,
        relid: u32,
        messages: &[Vec<u8>],
        ranges: Option<Vec<(u32, u32)>>,
    ) -> Option<u64> {
        if !self.live().contains(&relid) {
            return None;
        }
        let r = self.recv.clone()?;
        let free: Vec<usize> = (0..r.used.len())
            .filter(|&i| !r.used[i])
            .take(messages.len())
            .collect();
        if free.len() < messages.len() || messages.is_empty() {
            return None;
        }
        let mut rs = Vec::new();
        for (m, &slot) in messages.iter().zip(&free) {
            let m = &m[..m.len().min(r.slot)];
            if !self.write_buffer(r.gpadl, slot * r.slot, m) {
                return None;
            }
            rs.push((m.len() as u32, (slot * r.slot) as u32));
        }
        let tid = self.tid();
        trace!(
            "  host delivers {tid:#x}: {} messages, ranges {:?}",
            messages.len(),
            ranges.as_ref().map(|r| r.len())
        );
        let payload = nvsp(&[107, 0, 0xFFFF_FFFF, 0]);
        let sent = self.dev.send(
            relid,
            HostPacket::TransferPages {
                tid,
                set: 0xCAFE,
                ranges: ranges.unwrap_or(rs),
                payload,
            },
        );
        if !sent {
            return None;
        }
        if let Some(r) = self.recv.as_mut() {
            for &s in &free {
                r.used[s] = true;
            }
        }
        self.outstanding.insert(tid, (relid, free));
        Some(tid)
    }

    /// A host request (VF association, switch data path) with completion requested.
    pub fn ask(&mut self, payload: Vec<u8>) {
        let ty = le32(&payload, 0);
        let tid = self.tid();
        if self.dev.send(
            1,
            HostPacket::InBand {
                tid,
                completion: true,
                payload,
            },
        ) {
            self.asked.insert(tid, ty);
        }
    }

    fn complete(&mut self, g: &GuestPacket, payload: Vec<u8>) {
        self.dev.send(
            g.relid,
            HostPacket::Completion {
                tid: g.tid,
                payload,
            },
        );
    }

    fn on_completion(&mut self, g: &GuestPacket) {
        if let Some((relid, slots)) = self.outstanding.remove(&g.tid) {
            // (Unless a packet the host does not track had the same id.)
            assert!(
                self.untracked || relid == g.relid,
                "transfer-page packet of channel {relid} completed on {}",
                g.relid
            );
            let st = le32(&g.payload, 4);
            assert!(
                self.untracked || le32(&g.payload, 0) == 108,
                "receive completion type"
            );
            assert!(
                self.untracked || st == 1 || st == 2,
                "receive completion status {st}"
            );
            if let Some(r) = self.recv.as_mut() {
                for s in slots {
                    r.used[s] = false;
                }
            }
            self.completed.insert(g.tid);
        } else if let Some(ty) = self.asked.remove(&g.tid) {
            assert!(
                self.untracked || le32(&g.payload, 0) == ty,
                "completion of host request {ty}: {:02x?}",
                &g.payload[..8.min(g.payload.len())]
            );
            self.completed.insert(g.tid);
        } else {
            assert!(
                self.untracked || !self.completed.contains(&g.tid),
                "transfer-page packet {:#x} completed twice",
                g.tid
            );
            assert!(
                self.untracked,
                "completion {:#x} of nothing the host sent",
                g.tid
            );
        }
    }

    /// The RNDIS reply to control message `m` (`None`: no reply, e.g. HALT); `late`: an
    /// answer the host held, so what the guest set may no longer hold (nor be waited for).
    fn rndis_reply(
        &mut self,
        m: &[u8],
        hostile: Option<u8>,
        trusted: bool,
        late: bool,
    ) -> Option<Vec<u8>> {
        let (ty, id) = (le32(m, 0), le32(m, 8));
        let mut status = 0;
        let mut reply = match ty {
            2 => {
                let (p, a) = self.packing;
                words(&[0x8000_0002, 52, id, 0, 1, 0, 1, 0, p, 0x4000, a, 0, 0])
            }
            4 => {
                let oid = le32(m, 12);
                let info: Vec<u8> = match oid {
                    _ if self.offload.query(oid).is_some() => {
                        if oid == 0xFC01_020D && hostile.is_some() {
                            self.offload.caps_unsure = true;
                        }
                        match self.offload.query(oid).unwrap() {
                            Ok(info) => info,
                            Err(s) => {
                                status = s;
                                Vec::new()
                            }
                        }
                    }
                    0x0001_0106 => self.max_frame.to_le_bytes().to_vec(),
                    0x0101_0101 | 0x0101_0102 => self.mac.to_vec(),
                    0x0001_0114 => 0u32.to_le_bytes().to_vec(),
                    0x0001_0107 => 100_000u32.to_le_bytes().to_vec(),
                    _ => {
                        status = 0xC000_00BB;
                        Vec::new()
                    }
                };
                let mut r = words(&[
                    0x8000_0004,
                    24 + info.len() as u32,
                    id,
                    status,
                    info.len() as u32,
                    16,
                ]);
                r.extend_from_slice(&info);
                r
            }
            5 => {
                let (oid, len, off) = (le32(m, 12), le32(m, 16) as usize, le32(m, 20) as usize);
                let info = m.get(8 + off..8 + off + len).unwrap_or_default();
                let exact = trusted && self.exact && hostile.is_none() && !late;
                let version = self.version.unwrap_or(0);
                match oid {
                    0xFC01_020C => {
                        let hostile = hostile.is_some() || !self.exact || late;
                        self.offload
                            .set_offload_parameters(info, version, trusted, hostile);
                    }
                    0x0001_0204 => {
                        let queues = self.live().len();
                        self.offload.set_rss_parameters(info, queues, exact);
                    }
                    _ => {}
                }
                words(&[0x8000_0005, 16, id, 0])
            }
            8 => words(&[0x8000_0008, 16, id, 0]),
            3 => return None,
            other => {
                assert!(!trusted, "guest sent RNDIS control message {other:#x}");
                return None;
            }
        };
        match hostile {
            Some(1) => reply[12..16].copy_from_slice(&self.inp.u32().to_le_bytes()),
            Some(2) => reply[8..12].copy_from_slice(&self.inp.u32().to_le_bytes()),
            Some(3) => reply = self.inp.bytes(80),
            Some(4) => {
                let n = self.inp.below(reply.len());
                reply.truncate(n);
            }
            Some(5) => reply[4..8].copy_from_slice(&self.inp.u32().to_le_bytes()),
            _ => {}
        }
        Some(reply)
    }

    fn on_rndis_packet(&mut self, g: &GuestPacket, hostile: Option<u8>, released: bool) {
        let (channel, section, size) = (
            le32(&g.payload, 4),
            le32(&g.payload, 8),
            le32(&g.payload, 12),
        );
        let Some((gpadl, sections)) = self.send else {
            panic!("SEND_RNDIS_PKT before the send buffer");
        };
        let direct = section == 0xFFFF_FFFF;
        if g.trusted {
            assert!(channel <= 1, "channel type {channel}");
            // GPA-direct (devices §2.9): no section, the message in the packet's ranges.
            assert_eq!(
                direct,
                g.packet_type == 9,
                "section {section:#x}, packet type"
            );
            assert!(
                direct || (section as usize) < sections,
                "section {section} of {sections}"
            );
            assert!(
                direct || size as usize <= self.section_size as usize,
                "section size {size}"
            );
            assert!(!direct || channel == 0, "control message in page buffers");
        }
        let bytes = if direct {
            let len = g.ranges.iter().map(|r| r.1 as usize).sum();
            self.dev.dma_read(&g.ranges, len)
        } else {
            let at = section as usize * self.section_size as usize;
            self.read_buffer(gpadl, at, size as usize)
                .unwrap_or_default()
        };
        if channel == 0 && !released {
            let dma_off = direct && (self.dev.dma_off || self.dev.world.borrow().lied);
            self.check_frames(g, &bytes, dma_off);
        }
        if hostile == Some(0) {
            self.held.push(g.clone());
            return;
        }
        let mut st = 1;
        if channel == 1 {
            if g.trusted {
                assert!(
                    le32(&bytes, 4) as usize <= bytes.len(),
                    "RNDIS message past its section"
                );
            }
            let reply = self.rndis_reply(
                &bytes,
                hostile.filter(|_| self.exact).map(|k| k % 6),
                g.trusted,
                released,
            );
            if hostile.is_some() {
                self.exact = false;
            }
            if let Some(r) = reply {
                self.deliver(1, &[r], None);
            }
        }
        if hostile == Some(1) {
            st = 2;
        }
        let mut c = nvsp(&[108, st]);
        if hostile == Some(2) {
            c = self.inp.bytes(12);
        }
        self.complete(g, c.clone());
        if hostile == Some(3) {
            self.complete(g, c);
        }
    }

    /// Data: packed RNDIS PACKET messages, in the order the guest accepted their frames on
    /// this channel, each checked (offloads applied) against what it accepted. With host
    /// DMA off (`unread`) a page-buffer send cannot be read: its frame is only counted.
    fn check_frames(&mut self, g: &GuestPacket, bytes: &[u8], unread: bool) {
        if !g.trusted {
            return;
        }
        if unread {
            self.tx_seen += 1;
            if let Some(q) = self.tx_expected.get_mut(&g.relid) {
                q.pop_front();
            }
            return;
        }
        let mut off = 0usize;
        while off + 8 <= bytes.len() {
            let (ty, len) = (le32(bytes, off), le32(bytes, off + 4) as usize);
            assert_eq!(ty, 1, "data section holds RNDIS message {ty:#x}");
            assert!(
                len >= 44 && off + len <= bytes.len(),
                "PACKET of {len} bytes at {off}"
            );
            let field = |at: usize| le32(bytes, off + at) as usize;
            let (start, dlen) = (off + 8 + field(8), field(12));
            assert!(start + dlen <= off + len, "frame past its PACKET");
            let (pstart, plen) = (off + 8 + field(28), field(32));
            assert!(
                plen == 0 || (pstart >= off + 44 && pstart + plen <= start),
                "PPIs at {pstart} of {plen} bytes, frame at {start}"
            );
            let frame = &bytes[start..start + dlen];
            let ppi = if plen == 0 {
                &[][..]
            } else {
                &bytes[pstart..pstart + plen]
            };
            self.tx_seen += 1;
            if self.tx_exact {
                let want = self
                    .tx_expected
                    .get_mut(&g.relid)
                    .and_then(VecDeque::pop_front)
                    .expect("a frame the guest never accepted on this channel");
                self.offload.check_sent(&want, frame, ppi, self.tx_seen);
            }
            off += len;
        }
    }

    /// Answers guest packet `g` now, as decision `d` says.
    pub fn answer(&mut self, g: &GuestPacket, d: u8) {
        let hostile = (d >= 0xB0).then_some(d % 6);
        let t = le32(&g.payload, 0);
        trace!(
            "  nvsp: type {t} tid {:#x}{}",
            g.tid,
            if hostile.is_some() { " hostile" } else { "" }
        );
        if hostile.is_some() && t != 107 {
            self.exact = false;
        }
        match t {
            1 => {
                let v = le32(&g.payload, 4);
                let ok = [2, 0x3_0002, 0x4_0000, 0x5_0000, 0x6_0000, 0x6_0001].contains(&v)
                    && v <= self.host_max;
                if ok {
                    self.version = Some(v);
                }
                let mut m = nvsp(&[2, v, 34, if ok { 1 } else { 2 }]);
                match hostile {
                    Some(0) => return self.held.push(g.clone()),
                    Some(1) => m[12..16].copy_from_slice(&self.inp.u32().to_le_bytes()),
                    Some(2) => m[0..4].copy_from_slice(&self.inp.u32().to_le_bytes()),
                    Some(3) => m.truncate(self.inp.below(16)),
                    _ => {}
                }
                self.complete(g, m);
            }
            100 | 125 | 103 | 106 => {
                if g.trusted {
                    assert!(
                        !g.completion_requested,
                        "NVSP {t} with completion requested"
                    );
                }
            }
            101 => {
                let h = le32(&g.payload, 4);
                let len = self.buffer(h).map_or(0, |b| b.1);
                let slot = self.slot_size as usize;
                let n = (len / slot).min(64);
                self.recv = Some(Recv {
                    gpadl: h,
                    slot,
                    used: vec![false; n],
                });
                let mut m = nvsp(&[102, 1, 1, 0, slot as u32, n as u32, (slot * n) as u32]);
                match hostile {
                    Some(0) => return self.held.push(g.clone()),
                    Some(1) => m[4..8].copy_from_slice(&2u32.to_le_bytes()),
                    Some(2) => m[8..12].copy_from_slice(&self.inp.u32().to_le_bytes()),
                    Some(3) => m[24..28].copy_from_slice(&self.inp.u32().to_le_bytes()),
                    Some(4) => m[16..20].copy_from_slice(&self.inp.u32().to_le_bytes()),
                    _ => {}
                }
                self.complete(g, m);
            }
            104 => {
                let h = le32(&g.payload, 4);
                let len = self.buffer(h).map_or(0, |b| b.1);
                let mut status = 1;
                match hostile {
                    Some(0) => return self.held.push(g.clone()),
                    Some(1) => status = 2,
                    Some(2) | Some(3) => self.section_size = self.inp.u32() % 0x10000,
                    _ => {}
                }
                let sections = (len / self.section_size.max(1) as usize).min(256);
                self.send = Some((h, sections));
                self.complete(g, nvsp(&[105, status, self.section_size]));
            }
            107 => self.on_rndis_packet(g, hostile, false),
            133 => self.on_subchannel(g, hostile),
            129 => {
                if g.trusted {
                    // (A hostile INIT answer may have made the guest take another version.)
                    assert!(
                        !self.exact || self.version.is_some_and(|v| v >= 0x4_0000),
                        "SWITCH_DATA_PATH below NVSP 4"
                    );
                    assert_eq!(
                        le32(&g.payload, 4),
                        0,
                        "the guest switches to anything but synthetic"
                    );
                }
                if hostile != Some(0) {
                    self.complete(g, Vec::new());
                }
            }
            other => {
                if g.trusted {
                    panic!("guest sent NVSP message {other}");
                }
            }
        }
    }

    /// SUBCHANNEL (devices §2.15): grants up to `offload.max_grant` sub-channels and offers
    /// those not offered yet (sub-channel `i` as relid `i + 1`, the primary's instance), or
    /// refuses, over-grants, answers garbage or holds.
    fn on_subchannel(&mut self, g: &GuestPacket, hostile: Option<u8>) {
        let (op, n) = (le32(&g.payload, 4), le32(&g.payload, 8));
        if g.trusted {
            assert!(
                !self.exact || self.version.is_some_and(|v| v >= 0x5_0000),
                "SUBCHANNEL below NVSP 5"
            );
            assert!(g.completion_requested, "SUBCHANNEL without completion");
            assert_eq!(op, 1, "SUBCHANNEL operation");
            assert!((1..=63).contains(&n), "{n} sub-channels asked for");
        }
        let mut granted = n.min(self.offload.max_grant);
        let mut m = nvsp(&[133, 1, granted]);
        match hostile {
            Some(0) => return self.held.push(g.clone()),
            Some(1) => m[4..8].copy_from_slice(&2u32.to_le_bytes()),
            Some(2) => {
                granted = n + 1;
                m[8..12].copy_from_slice(&granted.to_le_bytes());
            }
            Some(3) => m = self.inp.bytes(16),
            _ => {}
        }
        self.complete(g, m);
        let class = vmbus_guest::protocol::DeviceClass::Network;
        let upto = granted.min(8);
        for i in self.offload.offered + 1..=upto {
            trace!("  host offers sub-channel {i}");
            let o = crate::dev::offer(class, relid_of(i as usize), 0, i as u16, 0);
            self.dev.world.borrow_mut().send(o);
        }
        self.offload.offered = self.offload.offered.max(upto);
    }

    fn on_packet(&mut self, g: GuestPacket) {
        if g.packet_type == 11 {
            if g.trusted {
                self.on_completion(&g);
            }
            return;
        }
        if g.trusted {
            assert!(
                g.packet_type == 6 || g.packet_type == 9,
                "packet type {}",
                g.packet_type
            );
            assert!(
                g.payload.len() >= 40,
                "NVSP message of {} bytes",
                g.payload.len()
            );
        }
        let d = self.inp.u8();
        self.answer(&g, d);
    }

    /// Answers held request `i` now, correctly.
    pub fn release(&mut self, i: usize) {
        if i < self.held.len() {
            let g = self.held.remove(i);
            if self.dev.serves(g.relid) {
                if le32(&g.payload, 0) == 107 {
                    self.on_rndis_packet(&g, None, true);
                } else {
                    self.answer(&g, 0);
                }
            }
        }
    }
}

impl Step for Nvsp<'_> {
    fn step(&mut self) {
        for (_, tid) in std::mem::take(&mut self.dev.dropped) {
            // Never written: the guest never saw it.
            if let Some((_, slots)) = self.outstanding.remove(&tid)
                && let Some(r) = self.recv.as_mut()
            {
                for s in slots {
                    r.used[s] = false;
                }
            }
            self.asked.remove(&tid);
        }
        for relid in self.dev.relids() {
            while let Some(g) = self.dev.recv(relid) {
                self.on_packet(g);
            }
        }
        // A channel the guest closed, or the host stopped serving, gives back what its
        // packets held (after reading what the guest wrote before closing it).
        let served = self.live();
        let gone: Vec<u64> = self
            .outstanding
            .iter()
            .filter(|(_, (relid, _))| !served.contains(relid))
            .map(|(tid, _)| *tid)
            .collect();
        for tid in gone {
            if let Some((_, slots)) = self.outstanding.remove(&tid)
                && let Some(r) = self.recv.as_mut()
            {
                for s in slots {
                    r.used[s] = false;
                }
            }
        }
        self.dev.flush_all();
    }
}
