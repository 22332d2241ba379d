//! The receive path (devices §2.8): transfer-page packets, one RNDIS message per range,
//! completions batched at the end of a poll; control replies and indications; coalesced
//! frames reassembled from RSC fragments ([`crate::offload::rsc`]).

use super::*;
use crate::offload::rsc::{self, PacketId};

/// One receive range of a transfer-page packet.
#[derive(Clone, Copy, Debug)]
pub(super) struct Range {
    /// Byte offset in the receive buffer.
    pub(super) offset: usize,
    /// Byte count.
    pub(super) count: usize,
    /// Whether it is the packet's last range.
    pub(super) last: bool,
}

/// What the receive path hands over with a frame besides its bytes.
pub(super) struct FrameMeta<'a> {
    /// The PACKET's PPI area; for a coalesced frame, a checksum PPI with the first
    /// fragment's verdict (or nothing when it had none).
    pub(super) ppi: &'a [u8],
    /// The fragments of a coalesced frame (0: an ordinary frame).
    pub(super) fragments: u16,
}

/// A frame consumer: returns false to stop after this frame.
pub(super) type OnFrame<'f> = dyn FnMut(&[u8], &FrameMeta<'_>) -> bool + 'f;

impl Core {
    /// Handles one received packet; never sends (receive completions are queued in
    /// `pending`, which the caller checked has room).
    pub(super) fn on_received(
        &mut self,
        r: Received<'_, Ctx>,
        recv_buf: Option<&HostBufferView<'_>>,
        scratch: &mut [u8],
        defer: bool,
    ) {
        match r {
            Received::Packet(p) => {
                if let PacketKind::TransferPages(t) = p.kind {
                    self.stats.rx_packets += 1;
                    let valid = self.check_transfer_pages(&t, p.payload(), recv_buf.is_some());
                    let reply = p.completion_requested();
                    // A coalesced frame never continues from an earlier packet.
                    if self.rsc.is_active() {
                        self.stats.rx_rsc_dropped += u64::from(self.rsc.abandon());
                    }
                    if !valid {
                        self.stats.rx_bad_packets += 1;
                        if reply {
                            self.queue_completion(p.transaction_id(), status::FAILURE);
                        }
                    } else if defer {
                        self.cursor = Some(Cursor {
                            transaction_id: p.transaction_id(),
                            reply,
                            next: 0,
                            count: t.range_count(),
                        });
                    } else {
                        if let Some(buf) = recv_buf {
                            let count = t.range_count();
                            for (i, r) in t.ranges().enumerate() {
                                let (off, n) = (r.byte_offset as usize, r.byte_count as usize);
                                let at = Range {
                                    offset: off,
                                    count: n,
                                    last: i + 1 == count,
                                };
                                // Only during a handshake wait: the NIC takes no frames.
                                self.on_range(at, buf, scratch, &mut [], &mut |_, _| true);
                            }
                        }
                        if reply {
                            self.queue_completion(p.transaction_id(), status::SUCCESS);
                        }
                    }
                } else if p.packet_type() == PacketType::DATA_IN_BAND {
                    let t = NvspHeader::read_from_prefix(p.payload())
                        .map(|(h, _)| h.msg_type.get())
                        .unwrap_or(0);
                    let reply = p.completion_requested().then(|| p.transaction_id());
                    match t {
                        msg::SEND_INDIRECTION_TABLE => self.on_send_table(p.payload()),
                        msg::SEND_VF_ASSOCIATION => self.on_vf_association(p.payload(), reply),
                        msg::SWITCH_DATA_PATH => self.on_host_switch(p.payload(), reply),
                        other => {
                            log::warn!("netvsc: unexpected NVSP message {other}");
                            self.stats.unexpected += 1;
                        }
                    }
                } else {
                    self.stats.unexpected += 1;
                }
            }
            Received::Completion {
                context, packet, ..
            } => match context {
                Ctx::Handshake => {}
                // OpenVMM completes SWITCH_DATA_PATH with an empty payload (devices §2.5);
                // whatever it carries, the host has seen the switch.
                Ctx::DataPath => self.vf.synthetic_confirmed = true,
                Ctx::Control { section } => {
                    self.sections.release(section);
                    // The host refused the message (e.g. control on a sub-channel): no RNDIS
                    // reply will come, so the waiter must not wait for one.
                    if let Ok((c, _)) = NvspRndisPacketComplete::read_from_prefix(packet.payload())
                        && c.status.get() != status::SUCCESS
                        && self.awaiting.is_some()
                    {
                        self.control_refused = Some(c.status.get());
                    }
                }
                Ctx::Data { .. } | Ctx::Large { .. } | Ctx::Lso { .. } => {
                    let frames = match context {
                        Ctx::Data { section, frames } => {
                            self.sections.release(section);
                            u64::from(frames)
                        }
                        Ctx::Large { slot } => {
                            self.large_free |= 1 << slot;
                            1
                        }
                        Ctx::Lso { slot } => {
                            self.lso_free |= 1 << slot;
                            1
                        }
                        _ => 0,
                    };
                    let p = packet.payload();
                    // A zero-length completion is legal (devices §2.5): treat as success.
                    let ok = match NvspRndisPacketComplete::read_from_prefix(p) {
                        Ok((c, _)) => {
                            c.msg_type.get() == msg::SEND_RNDIS_PKT_COMPLETE
                                && c.status.get() == status::SUCCESS
                        }
                        Err(_) => p.len() < 4,
                    };
                    if ok {
                        self.stats.tx_completed += frames;
                    } else {
                        self.stats.tx_failed += frames;
                    }
                }
            },
            // The channel died with the request in flight: its section stays taken (the
            // memory is only reused after a confirmed release, i.e. never by this NIC).
            Received::Failed { context, .. } => match context {
                Ctx::Data { frames, .. } => self.stats.tx_failed += u64::from(frames),
                Ctx::Large { .. } | Ctx::Lso { .. } => self.stats.tx_failed += 1,
                _ => {}
            },
        }
    }

    /// SEND_VF_ASSOCIATION (devices §2.17): recorded; with no VF driver the data path stays
    /// synthetic, which the guest tells the host with SWITCH_DATA_PATH (sent by the next
    /// poll). Completed when the host asked for it.
    fn on_vf_association(&mut self, payload: &[u8], reply: Option<u64>) {
        let st = match NvspVfAssociation::read_from_prefix(payload) {
            Ok((m, _)) if m.allocated.get() <= 1 => {
                let allocated = m.allocated.get() == 1;
                self.vf.association = Some((allocated, m.serial_number.get()));
                if allocated && self.info.version >= NvspVersion::V4 {
                    self.switch_owed = true;
                    self.vf.synthetic_confirmed = false;
                }
                status::SUCCESS
            }
            _ => {
                self.stats.unexpected += 1;
                status::FAILURE
            }
        };
        if let Some(tid) = reply {
            self.queue_nvsp_completion(tid, msg::SEND_VF_ASSOCIATION, st);
        }
    }

    /// SWITCH_DATA_PATH from the host (OpenVMM sends it before a VF goes away): recorded and
    /// completed when asked.
    fn on_host_switch(&mut self, payload: &[u8], reply: Option<u64>) {
        let st = match NvspSwitchDataPath::read_from_prefix(payload) {
            Ok((m, _)) if m.active_data_path.get() <= DATA_PATH_VF => {
                self.vf.host_data_path = Some(m.active_data_path.get());
                status::SUCCESS
            }
            _ => {
                self.stats.unexpected += 1;
                status::FAILURE
            }
        };
        if let Some(tid) = reply {
            self.queue_nvsp_completion(tid, msg::SWITCH_DATA_PATH, st);
        }
    }

    /// Validates a transfer-page packet's header (NVSP message, page set id, range count).
    pub(super) fn check_transfer_pages(
        &self,
        t: &vmbus_guest::ring::TransferPages<'_>,
        payload: &[u8],
        have_buffer: bool,
    ) -> bool {
        let Ok((nvsp, _)) = NvspRndisPacket::read_from_prefix(payload) else {
            return false;
        };
        have_buffer
            && nvsp.msg_type.get() == msg::SEND_RNDIS_PKT
            && t.transfer_page_set_id == RECV_BUFFER_ID
            && t.range_count() != 0
            && t.range_count() <= MAX_RANGES
    }

    pub(super) fn queue_completion(&mut self, transaction_id: u64, st: u32) {
        self.queue_nvsp_completion(transaction_id, msg::SEND_RNDIS_PKT_COMPLETE, st);
    }

    fn queue_nvsp_completion(&mut self, transaction_id: u64, msg_type: u32, st: u32) {
        if !self.pending.push((transaction_id, msg_type, st)) {
            // Only possible during a handshake wait (the receive loop keeps room): the host
            // never gets these ranges back.
            log::warn!("netvsc: receive completion queue full");
            self.stats.rx_completions_lost += 1;
        }
    }

    /// Handles the remaining ranges of the current transfer-page packet, whose bytes are
    /// still in `ring` (the last packet received). `on_frame` returns false to stop after a
    /// frame (the rest is handled by the next call). Returns whether it stopped that way;
    /// when the packet is done its completion is queued.
    pub(super) fn drain_cursor(
        &mut self,
        ring: &[u8],
        buf: &HostBufferView<'_>,
        scratch: &mut [u8],
        rsc: &mut [u8],
        on_frame: &mut OnFrame<'_>,
    ) -> bool {
        while let Some(mut c) = self.cursor {
            if c.next >= c.count {
                self.cursor = None;
                if c.reply {
                    self.queue_completion(c.transaction_id, status::SUCCESS);
                }
                break;
            }
            // The range array of a transfer-page packet starts at byte 24 (devices §0.4);
            // the channel validated that `count` ranges fit before the payload.
            let at = 24 + c.next * 8;
            c.next += 1;
            self.cursor = Some(c);
            let Some(r) = ring.get(at..at + 8) else {
                self.stats.rx_bad_ranges += 1;
                self.stats.rx_rsc_dropped += u64::from(self.rsc.abandon());
                continue;
            };
            let range = Range {
                count: u32::from_le_bytes([r[0], r[1], r[2], r[3]]) as usize,
                offset: u32::from_le_bytes([r[4], r[5], r[6], r[7]]) as usize,
                last: c.next == c.count,
            };
            if self.on_range(range, buf, scratch, rsc, on_frame) {
                return true;
            }
        }
        false
    }

    /// Handles the RNDIS message of one receive range; returns true when `on_frame` asked to
    /// stop. A message that is not an RSC fragment ends a partial coalesced frame.
    pub(super) fn on_range(
        &mut self,
        range: Range,
        buf: &HostBufferView<'_>,
        scratch: &mut [u8],
        rsc: &mut [u8],
        on_frame: &mut OnFrame<'_>,
    ) -> bool {
        let mut fragment = false;
        let stop = self.on_message(range, buf, scratch, rsc, &mut fragment, on_frame);
        if !fragment && self.rsc.is_active() {
            self.stats.rx_rsc_dropped += u64::from(self.rsc.abandon());
        }
        stop
    }

    fn on_message(
        &mut self,
        range: Range,
        buf: &HostBufferView<'_>,
        scratch: &mut [u8],
        rsc: &mut [u8],
        fragment: &mut bool,
        on_frame: &mut OnFrame<'_>,
    ) -> bool {
        let Range { offset, count, .. } = range;
        if count < size_of::<crate::protocol::RndisHeader>()
            || offset
                .checked_add(count)
                .is_none_or(|end| end > self.recv_len)
        {
            self.stats.rx_bad_ranges += 1;
            return false;
        }
        let n = count.min(scratch.len());
        if read_message(buf, offset, &mut scratch[..n]).is_err() {
            self.stats.rx_bad_ranges += 1;
            return false;
        }
        let msg_len = u32::from_le_bytes([scratch[4], scratch[5], scratch[6], scratch[7]]);
        if msg_len as usize > n && msg_len as usize <= count {
            self.stats.rx_too_large += 1;
            return false;
        }
        match rndis::parse_message(&scratch[..n]) {
            Ok(Message::Packet { frame, ppi }) => {
                if let Some(id) = rsc::packet_id_of(ppi).filter(PacketId::is_fragment) {
                    *fragment = true;
                    let checksum = rsc::checksum_of(ppi);
                    return self.on_fragment(id, frame, checksum, range.last, rsc, on_frame);
                }
                if frame.len() > self.max_frame {
                    self.stats.rx_too_large += 1;
                } else if !self.ready {
                    self.stats.rx_not_ready += 1;
                } else {
                    self.stats.rx_frames += 1;
                    let meta = FrameMeta { ppi, fragments: 0 };
                    return !on_frame(frame, &meta);
                }
            }
            other => self.on_control(other, offset, count),
        }
        false
    }

    /// Every message but a PACKET (replies, indications) or a parse error: off the data
    /// path's hot code.
    #[cold]
    #[inline(never)]
    fn on_control(&mut self, m: Result<Message<'_>, RndisError>, offset: usize, count: usize) {
        match m {
            Ok(Message::Packet { .. }) => {}
            Ok(Message::IndicateStatus { status, buffer }) => {
                self.stats.indications += 1;
                self.on_indication(status, buffer);
            }
            Ok(Message::InitComplete(c)) => self.on_reply(
                c.request_id.get(),
                rndis_msg::INITIALIZE_CMPLT,
                c.status.get(),
                &[],
                Some(c),
            ),
            Ok(Message::QueryComplete {
                request_id,
                status,
                info,
            }) => self.on_reply(request_id, rndis_msg::QUERY_CMPLT, status, info, None),
            Ok(Message::SetComplete { request_id, status }) => {
                self.on_reply(request_id, rndis_msg::SET_CMPLT, status, &[], None)
            }
            Ok(Message::KeepaliveComplete { request_id, status }) => {
                self.on_reply(request_id, rndis_msg::KEEPALIVE_CMPLT, status, &[], None)
            }
            Err(e) => {
                log::warn!("netvsc: receive range {offset}+{count}: {e}");
                self.stats.rx_bad_messages += 1;
            }
        }
    }

    pub(super) fn on_reply(
        &mut self,
        request_id: u32,
        msg_type: u32,
        status: u32,
        info: &[u8],
        init: Option<RndisInitComplete>,
    ) {
        if self.awaiting != Some(request_id) || self.reply.is_some() {
            log::warn!("netvsc: RNDIS reply {msg_type:#x} for request {request_id} not pending");
            self.stats.unexpected += 1;
            return;
        }
        let mut r = Reply {
            msg_type,
            status,
            info: [0; REPLY_INFO],
            info_len: info.len().min(REPLY_INFO),
            init,
        };
        r.info[..r.info_len].copy_from_slice(&info[..r.info_len]);
        self.reply = Some(r);
    }

    pub(super) fn on_indication(&mut self, code: u32, buffer: &[u8]) {
        match code {
            rndis_status::MEDIA_CONNECT => self.set_link(true),
            rndis_status::MEDIA_DISCONNECT => self.set_link(false),
            // "Moved to another network": report a change with the link still up, so the
            // user renews its addresses (Linux bounces the carrier for the same reason).
            rndis_status::NETWORK_CHANGE => self.link_changed = true,
            rndis_status::LINK_SPEED_CHANGE => {
                if let Some(s) = buffer.get(..4) {
                    self.info.link_speed = u32::from_le_bytes([s[0], s[1], s[2], s[3]]);
                }
            }
            _ => {}
        }
    }

    pub(super) fn set_link(&mut self, up: bool) {
        if self.link_up != up {
            self.link_up = up;
            self.link_changed = true;
        }
    }
}

impl<'q, 'b, T: Transport, H: Hal, const N: usize, const M: usize> Queue<'q, 'b, T, H, N, M> {
    pub(super) fn pump_ring(
        &mut self,
        budget: usize,
        on_frame: &mut OnFrame<'_>,
    ) -> Result<bool, NetError> {
        // Frames queued by a burst go out now at the latest, in the send batch that also
        // carries this poll's receive completions: everything the guest owes the host from
        // one poll is published with one write-index store and at most one signal (a host
        // reading on every signal would otherwise be woken per transfer-page packet). A
        // dead channel fails the batch's begin; the receive below reports it.
        self.submit_quietly();
        if !self.channel.in_send_batch() {
            let _ = self.channel.begin_send_batch();
        }
        let r = self.drain_ring(budget, on_frame);
        // The completions just reaped may have freed the request slot or ring space a
        // refused burst needs; nothing else would retry it (a full ring arms the host's
        // space signal, a full request table does not). Without a burst this returns at once.
        self.submit_quietly();
        self.end_send_batch();
        r
    }

    /// [`Queue::pump_ring`] inside its send batch.
    fn drain_ring(&mut self, budget: usize, on_frame: &mut OnFrame<'_>) -> Result<bool, NetError> {
        let Self {
            channel,
            recv_buf,
            core,
            ring,
            msg: scratch,
            rsc,
            shared,
            ..
        } = self;
        let rb = recv_buf.as_ref();
        let read = |off: usize, b: &mut [u8]| match rb {
            Some(r) => r.read_at(off, b),
            None => Err(vmbus_guest::OutOfBounds {
                offset: off,
                len: b.len(),
                size: 0,
            }),
        };
        let view = HostBufferView { read: &read };
        flush_completions(channel, core);
        for _ in 0..budget {
            if core.drain_cursor(ring, &view, scratch, rsc, on_frame) {
                return Ok(true);
            }
            flush_completions(channel, core);
            if core.pending.is_full() {
                // The ring refused the completions owed, so pending send size is armed: the
                // host signals when it frees space, and polling sooner finds nothing to do
                // (a host that stops reading must not make the guest spin). Stay masked:
                // no more packets are taken until the completions are out.
                channel.yield_batch()?;
                return Ok(false);
            }
            match channel.recv(ring) {
                Ok(Some(r)) => {
                    core.on_received(r, Some(&view), scratch, true);
                    super::queue::apply_send_table(core, shared, channel.relid());
                }
                Ok(None) => return Ok(channel.end_batch()?),
                Err(ChannelError::BufferTooSmall { .. }) => {
                    // Larger than any valid netvsc packet: drop it, but give back the
                    // receive ranges a transfer-page packet holds.
                    if let Some(d) = channel.skip()? {
                        core.stats.rx_bad_packets += 1;
                        if d.packet_type == PacketType::DATA_USING_TRANSFER_PAGES
                            && d.flags & 1 != 0
                        {
                            core.queue_completion(d.transaction_id, status::FAILURE);
                        }
                    }
                }
                Err(e) => return Err(e.into()),
            }
            flush_completions(channel, core);
        }
        channel.yield_batch()?;
        Ok(true)
    }

    /// Submits the frames a burst queued, then receives up to `budget` packets from the host,
    /// handing each received Ethernet frame to `on_frame`, reaping send completions and
    /// returning receive ranges to the host (one completion per transfer-page packet). Returns whether packets may still be waiting
    /// (poll again: no interrupt announces them). Interrupt-safe.
    pub fn poll(
        &mut self,
        budget: usize,
        mut on_frame: impl FnMut(&[u8]),
    ) -> Result<bool, NetError> {
        self.pump(budget, &mut |f, _| {
            on_frame(f);
            true
        })
    }

    /// [`Nic::poll`], with each frame's receive checksum verdict: what the host found for
    /// the checksums the guest enabled on receive ([`Offloads::rx`]); everything else is
    /// [`RxChecksum::NOT_CHECKED`]. A frame with a bad verdict is still handed over (and
    /// counted in [`NicStats::rx_csum_bad`]) for the caller to drop. Interrupt-safe.
    pub fn poll_with_checksum(
        &mut self,
        budget: usize,
        mut on_frame: impl FnMut(&[u8], RxChecksum),
    ) -> Result<bool, NetError> {
        let mut v = Verdicts::new(&self.core.info.offloads);
        let more = self.pump(budget, &mut |f, m| {
            on_frame(f, v.of(f, m.ppi));
            true
        });
        v.count(&mut self.core.stats);
        more
    }

    /// [`Nic::poll_with_checksum`], with what else the host said of each frame
    /// ([`RxInfo`]: whether it was coalesced, in how many fragments). Interrupt-safe.
    pub fn poll_with_info(
        &mut self,
        budget: usize,
        mut on_frame: impl FnMut(&[u8], RxInfo),
    ) -> Result<bool, NetError> {
        let mut v = Verdicts::new(&self.core.info.offloads);
        let more = self.pump(budget, &mut |f, m| {
            on_frame(f, v.info(f, m));
            true
        });
        v.count(&mut self.core.stats);
        more
    }

    /// Whether the last poll or receive of this queue left host packets waiting: its budget
    /// ran out, or it handed over a frame with more behind it. The ring stays masked until
    /// a call finds it empty, so no interrupt announces those packets: call again before
    /// waiting for one (what `poll`'s return value says, for the pull-style calls).
    pub fn receive_pending(&self) -> bool {
        self.core.rx_more
    }

    /// Receives the next frame and hands it to `f` (pull style, for network stacks that
    /// ask for one frame at a time): processes up to `budget` host packets (completions,
    /// indications, refused messages) until a frame is found. `Ok(None)`: no frame now —
    /// and if [`Queue::receive_pending`], the budget ran out first: call again before
    /// waiting for an interrupt. The rest of a multi-frame transfer-page packet is kept for
    /// the next call; its completion goes to the host once all its frames were taken.
    /// Interrupt-safe.
    pub fn receive_with<R>(
        &mut self,
        budget: usize,
        f: impl FnOnce(&[u8]) -> R,
    ) -> Result<Option<R>, NetError> {
        let mut f = Some(f);
        let mut out = None;
        self.pump(budget, &mut |frame, _| {
            if let Some(f) = f.take() {
                out = Some(f(frame));
            }
            false
        })?;
        Ok(out)
    }

    /// [`Nic::receive_with`], with the frame's receive checksum verdict (see
    /// [`Nic::poll_with_checksum`]). Interrupt-safe.
    pub fn receive_with_checksum<R>(
        &mut self,
        budget: usize,
        f: impl FnOnce(&[u8], RxChecksum) -> R,
    ) -> Result<Option<R>, NetError> {
        let mut f = Some(f);
        let mut out = None;
        let mut v = Verdicts::new(&self.core.info.offloads);
        let got = self.pump(budget, &mut |frame, m| {
            if let Some(f) = f.take() {
                out = Some(f(frame, v.of(frame, m.ppi)));
            }
            false
        });
        v.count(&mut self.core.stats);
        got?;
        Ok(out)
    }

    /// [`Nic::receive_with`], with what the host said of the frame ([`RxInfo`]).
    /// Interrupt-safe.
    pub fn receive_with_info<R>(
        &mut self,
        budget: usize,
        f: impl FnOnce(&[u8], RxInfo) -> R,
    ) -> Result<Option<R>, NetError> {
        let mut f = Some(f);
        let mut out = None;
        let mut v = Verdicts::new(&self.core.info.offloads);
        let got = self.pump(budget, &mut |frame, m| {
            if let Some(f) = f.take() {
                out = Some(f(frame, v.info(frame, m)));
            }
            false
        });
        v.count(&mut self.core.stats);
        got?;
        Ok(out)
    }
}

/// Receive verdicts of one poll, decoded only for callers that ask for them (the plain
/// `poll` / `receive_with` path pays nothing), counted into the stats afterwards.
struct Verdicts {
    rx: crate::offload::ChecksumSet,
    good: u64,
    bad: u64,
}

impl Verdicts {
    fn new(offloads: &Offloads) -> Self {
        Self {
            rx: offloads.rx,
            good: 0,
            bad: 0,
        }
    }

    /// The verdict on `frame` from its PPI area, masked by what is enabled on receive.
    fn of(&mut self, frame: &[u8], ppi: &[u8]) -> RxChecksum {
        if self.rx.is_empty() {
            return RxChecksum::NOT_CHECKED;
        }
        let v = crate::offload::rx_checksum_of(ppi).masked(frame, &self.rx);
        if v.is_bad() {
            self.bad += 1;
        } else if v != RxChecksum::NOT_CHECKED {
            self.good += 1;
        }
        v
    }

    /// [`Verdicts::of`] and the fragment count.
    fn info(&mut self, frame: &[u8], m: &FrameMeta<'_>) -> RxInfo {
        RxInfo {
            checksum: self.of(frame, m.ppi),
            rsc_fragments: m.fragments,
        }
    }

    fn count(&self, stats: &mut NicStats) {
        stats.rx_csum_good += self.good;
        stats.rx_csum_bad += self.bad;
    }
}

/// Bytes read first from a receive range: an RNDIS PACKET header and a checksum PPI (and
/// any other message's fixed part).
const HEAD: usize = 64;

/// Copies the RNDIS message at `offset` of the receive buffer into `out` (the range's
/// length, capped at the copy buffer) — for a PACKET only the parts a parse looks at: the
/// header, the PPI area and the frame, each read once. A host slot is larger than its frame
/// (OpenVMM's `msg_len` covers the whole slot, devices §2.8), so the rest is skipped; the
/// bytes of `out` outside those parts are stale private bytes no parse reads. Offsets that
/// do not fit fall back to copying everything, so the parse reports the error.
fn read_message(
    buf: &HostBufferView<'_>,
    offset: usize,
    out: &mut [u8],
) -> Result<(), vmbus_guest::OutOfBounds> {
    let n = out.len();
    let head = n.min(HEAD);
    (buf.read)(offset, &mut out[..head])?;
    let field = |at: usize| {
        out.get(at..at + 4)
            .map_or(0, |b| u32::from_le_bytes([b[0], b[1], b[2], b[3]]) as usize)
    };
    if head < size_of::<RndisPacket>() || field(0) != rndis_msg::PACKET as usize {
        return (buf.read)(offset + head, &mut out[head..]);
    }
    let base = crate::protocol::RNDIS_OFFSET_BASE;
    let span = |off: usize, len: usize| {
        let start = off.checked_add(base)?;
        let end = start.checked_add(len)?;
        (end <= n).then_some((start.max(head), end))
    };
    match (span(field(28), field(32)), span(field(8), field(12))) {
        (Some(ppi), Some(data)) => {
            for (start, end) in [ppi, data] {
                if start < end {
                    (buf.read)(offset + start, &mut out[start..end])?;
                }
            }
            Ok(())
        }
        _ => (buf.read)(offset + head, &mut out[head..]),
    }
}

/// Sends queued completions while the ring takes them, then a SWITCH_DATA_PATH the host
/// is owed.
pub(super) fn flush_completions<T: Transport, H: Hal, const N: usize>(
    channel: &mut Channel<'_, T, H, Ctx, N>,
    core: &mut Core,
) {
    while let Some((tid, msg_type, st)) = core.pending.front() {
        let c = NvspRndisPacketComplete {
            msg_type: msg_type.into(),
            status: st.into(),
        };
        match channel.send_completion(tid, &[c.as_bytes()]) {
            Ok(()) => core.pending.pop(),
            Err(ChannelError::Full) => {
                core.stats.rx_completions_deferred += 1;
                break;
            }
            // A dead channel: the host's use of the ranges ends with it.
            Err(_) => core.pending.pop(),
        }
    }
    if core.switch_owed && !channel.requests_full() {
        let m = NvspSwitchDataPath {
            msg_type: msg::SWITCH_DATA_PATH.into(),
            active_data_path: DATA_PATH_SYNTHETIC.into(),
        };
        match channel.request(&[&padded(m.as_bytes())], Ctx::DataPath) {
            // Ring full: tried again on the next poll.
            Err(ChannelError::Full) => {}
            _ => core.switch_owed = false,
        }
    }
}
