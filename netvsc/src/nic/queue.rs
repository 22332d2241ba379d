//! One queue of a NIC (devices §2.15): a channel — the primary or a vRSS sub-channel — with
//! its own receive and send state, usable from its own VP without a lock shared with the
//! other queues.
//!
//! Ownership: a [`Queue`] borrows, for the time it is used, exactly what is its own — its
//! channel (ring, request table), its [`Core`] (its range of send-buffer sections and
//! page-buffer slots, the receive completions it owes, its counters), its packet and message
//! buffers — and shares read-only what every queue reads: the receive buffer (read by
//! host-given offset through [`HostBuffer::read_at`]), the send buffer (each queue writes
//! only its own sections), and [`Shared`] (the send table of atomics, the RSS key). Receive
//! completions go back on the channel the packet arrived on, send completions come back on
//! the channel the packet was sent on, so no queue ever touches another's ring.
//!
//! [`SubQueue`] is the owned state of one sub-channel (kept by the caller next to the
//! [`Nic`], one per sub-channel); [`Nic::split`] hands out one [`Queue`] per channel, which
//! a kernel gives to one VP each. The control path (RNDIS queries and sets, closing) stays
//! on the primary and needs the whole [`Nic`] back.

use core::sync::atomic::{AtomicU32, Ordering};

use super::receive::OnFrame;
use super::*;
use crate::protocol::{RSS_KEY_SIZE, rss_hash};
use crate::rss::{self, MICROSOFT_RSS_KEY, SendTable};

/// What every queue of a NIC reads: the send table and the RSS settings the guest gave the
/// host (so a queue can steer a frame the way the host expects).
#[derive(Debug)]
pub struct Shared {
    /// The send indirection table.
    pub(super) table: SendTable,
    /// The Toeplitz key set with the RSS parameters (default until then).
    pub(super) key: [u8; RSS_KEY_SIZE],
    /// The hash types set with the RSS parameters ([`rss_hash`] bits; 0 = RSS not set).
    pub(super) hash_info: AtomicU32,
}

impl Shared {
    pub(super) const fn new() -> Self {
        Self {
            table: SendTable::new(),
            key: MICROSOFT_RSS_KEY,
            hash_info: AtomicU32::new(0),
        }
    }

    /// The queue the send table names for `frame`: `table[hash & 15]`, with the Toeplitz hash
    /// of the frame under the NIC's key and hash types (hash 0 for a frame without one).
    pub fn queue_for_frame(&self, frame: &[u8]) -> usize {
        let info = match self.hash_info.load(Ordering::Acquire) {
            0 => rss_hash::LINUX_DEFAULT,
            i => i,
        };
        let hash = rss::flow_hash(&self.key, info, frame).unwrap_or(0);
        self.table.queue_for_hash(hash)
    }

    /// The send table.
    pub fn send_table(&self) -> &SendTable {
        &self.table
    }

    /// The RSS key.
    pub fn key(&self) -> &[u8; RSS_KEY_SIZE] {
        &self.key
    }

    /// The hash types the host was given (0 until RSS is set).
    pub fn hash_info(&self) -> u32 {
        self.hash_info.load(Ordering::Acquire)
    }
}

/// The host-visible buffers every queue uses.
pub(super) struct Buffers<'n, 'b, T: Transport, H: Hal> {
    pub(super) recv_buf: &'n Option<HostBuffer<'b, T, H>>,
    pub(super) send_buf: &'n Option<HostBuffer<'b, T, H>>,
    pub(super) large_buf: &'n Option<HostBuffer<'b, T, H>>,
}

impl<T: Transport, H: Hal> Clone for Buffers<'_, '_, T, H> {
    fn clone(&self) -> Self {
        *self
    }
}

impl<T: Transport, H: Hal> Copy for Buffers<'_, '_, T, H> {}

/// One queue of a NIC, borrowed from it (see the module documentation): send on it, poll it,
/// from one VP at a time. Made by [`Nic::split`] (one per channel) or [`Nic::queue`].
///
/// Every method is interrupt-safe: no lock, no allocation, no blocking.
pub struct Queue<'n, 'b, T: Transport, H: Hal, const N: usize, const M: usize> {
    pub(super) index: u16,
    pub(super) channel: &'n mut Channel<'b, T, H, Ctx, N>,
    pub(super) core: &'n mut Core,
    /// The ring-packet buffer ([`RING_PACKET_BUFFER`] bytes).
    pub(super) ring: &'n mut [u8],
    /// The message copy buffer (`M` bytes).
    pub(super) msg: &'n mut [u8],
    pub(super) recv_buf: &'n Option<HostBuffer<'b, T, H>>,
    pub(super) send_buf: &'n Option<HostBuffer<'b, T, H>>,
    pub(super) large_buf: &'n Option<HostBuffer<'b, T, H>>,
    pub(super) shared: &'n Shared,
    /// The queue's RSC reassembly area (empty without one).
    pub(super) rsc: &'n mut [u8],
}

impl<T: Transport, H: Hal, const N: usize, const M: usize> core::fmt::Debug
    for Queue<'_, '_, T, H, N, M>
{
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("Queue")
            .field("index", &self.index)
            .field("relid", &self.channel.relid())
            .field("stats", &self.core.stats)
            .finish()
    }
}

impl<'n, 'b, T: Transport, H: Hal, const N: usize, const M: usize> Queue<'n, 'b, T, H, N, M> {
    pub(super) fn new(
        index: u16,
        channel: &'n mut Channel<'b, T, H, Ctx, N>,
        core: &'n mut Core,
        ring: &'n mut [u8; RING_PACKET_BUFFER],
        msg: &'n mut [u8; M],
        bufs: Buffers<'n, 'b, T, H>,
        shared: &'n Shared,
    ) -> Self {
        Self {
            index,
            channel,
            core,
            ring,
            msg,
            recv_buf: bufs.recv_buf,
            send_buf: bufs.send_buf,
            large_buf: bufs.large_buf,
            shared,
            rsc: &mut [],
        }
    }

    /// The queue's index: 0 for the primary channel, the sub-channel index otherwise (the
    /// number the host's indirection tables use).
    pub fn index(&self) -> usize {
        usize::from(self.index)
    }

    /// The relid of the queue's channel.
    pub fn relid(&self) -> u32 {
        self.channel.relid()
    }

    /// Whether a frame can be sent or queued now on this queue.
    pub fn can_send(&self) -> bool {
        self.core.can_send(self.channel.requests_full())
    }

    /// This queue's counters.
    pub fn stats(&self) -> NicStats {
        self.core.stats
    }

    /// Frames sent on this queue and not yet completed.
    pub fn sends_in_flight(&self) -> usize {
        self.channel.requests_in_flight()
    }

    /// What every queue shares: the send table and the RSS settings.
    pub fn shared(&self) -> &'n Shared {
        self.shared
    }

    /// The queue the send table names for `frame` ([`Shared::queue_for_frame`]): a kernel
    /// that hands a frame to the VP of that queue sends it where the host expects it.
    pub fn queue_for_frame(&self, frame: &[u8]) -> usize {
        self.shared.queue_for_frame(frame)
    }

    /// Receives up to `budget` packets ([`Queue::poll`]'s engine); a send table the host sent
    /// on this channel becomes the shared one as its packet is handled (it is checked
    /// against the queue count first; a bad one is refused and counted).
    pub(super) fn pump(
        &mut self,
        budget: usize,
        on_frame: &mut OnFrame<'_>,
    ) -> Result<bool, NetError> {
        let r = self.pump_ring(budget, on_frame);
        // One parsed while a control request waited (handshake_request) is applied here.
        apply_send_table(self.core, self.shared, self.channel.relid());
        self.core.rx_more = matches!(r, Ok(true));
        r
    }
}

/// Makes a send table the host sent on `relid` (parsed into `core`) the shared one, right
/// after its packet: tables take effect in the order they arrive, so a refused one leaves
/// the one before it in force however many packets a poll reads.
pub(super) fn apply_send_table(core: &mut Core, shared: &Shared, relid: u32) {
    if let Some(t) = core.host_send_table.take() {
        match shared.table.apply(&t) {
            Ok(()) => log::info!(
                "netvsc {relid}: host send table {:?}",
                shared.table.entries()
            ),
            Err(e) => log::warn!("netvsc {relid}: host send table refused: {e}"),
        }
    }
}

impl Core {
    /// Whether a frame can be sent or queued: room in the open section of the burst (for a
    /// small frame), or a free section and (`requests_full` false) a request slot.
    pub(super) fn can_send(&self, requests_full: bool) -> bool {
        self.burst.is_some_and(|o| {
            u32::from(o.frames) < self.info.max_packets_per_message
                && o.used as usize
                    + send::packed_message_len(
                        PACK_THRESHOLD + send::PPI_BYTES,
                        self.info.packet_alignment,
                    )
                    <= self.info.section_size as usize
        }) || !requests_full && self.sections.free_count() > 0
    }

    /// SEND_INDIRECTION_TABLE (devices §2.6): parsed and kept for the queue to apply (it
    /// needs the shared table, which the receive handling does not hold). A malformed one
    /// is counted and dropped; the table in use stays. It carries no completion.
    pub(super) fn on_send_table(&mut self, payload: &[u8]) {
        match rss::parse_send_indirection_table(payload, self.info.version) {
            Ok(t) => self.host_send_table = Some(t),
            Err(e) => {
                log::warn!("netvsc: SEND_INDIRECTION_TABLE refused: {e}");
                self.stats.unexpected += 1;
            }
        }
    }

    /// The state of a new sub-channel queue: the primary's negotiated facts (version, sizes,
    /// link, readiness) and everything else fresh; its sections and page-buffer slots are
    /// given by the caller.
    pub(super) fn for_queue(primary: &Core, sections: Sections, large_free: u16) -> Core {
        let mut c = primary.clone();
        c.sections = sections;
        c.large_free = large_free;
        c.pending = PendingCompletions::new();
        c.stats = NicStats::default();
        c.link_changed = false;
        c.awaiting = None;
        c.reply = None;
        c.cursor = None;
        c.control_refused = None;
        c.vf = VfState::default();
        c.switch_owed = false;
        c.burst = None;
        c.host_send_table = None;
        c.rsc = Default::default();
        c.rx_more = false;
        // LSO slots belong to the primary channel ([`Nic::send_lso`]).
        c.lso_free = 0;
        c
    }
}

impl Sections {
    /// Moves the free sections in `range` out of `self` into a new set (sections in flight
    /// stay with `self`, whose completions will free them there).
    pub(super) fn take_range(&mut self, range: core::ops::Range<usize>) -> Sections {
        let mut out = Sections::default();
        for i in range.take_while(|i| *i < MAX_SECTIONS) {
            let bit = 1u64 << (i % 64);
            if self.free[i / 64] & bit != 0 {
                self.free[i / 64] &= !bit;
                out.free[i / 64] |= bit;
            }
        }
        out
    }

    /// Gives `other`'s free sections to `self`.
    pub(super) fn merge(&mut self, other: &Sections) {
        for (a, b) in self.free.iter_mut().zip(other.free.iter()) {
            *a |= *b;
        }
    }
}

/// The owned state of one sub-channel queue: its channel, receive and send state, and its
/// packet and message buffers (about 9 KiB plus the channel's request table). The caller
/// keeps one per sub-channel next to the [`Nic`] (`[Option<SubQueue>; K]`); [`Nic::open_queues`]
/// fills them, [`Nic::split`] and [`Nic::queue`] borrow them as [`Queue`]s, and
/// [`Nic::close_queues`] or [`Nic::close_all`] closes them. Dropping one leaks its channel's
/// rings.
pub struct SubQueue<
    'b,
    T: Transport,
    H: Hal,
    const N: usize = 64,
    const M: usize = MAX_RECEIVE_MESSAGE,
> {
    pub(super) index: u16,
    pub(super) channel: Channel<'b, T, H, Ctx, N>,
    pub(super) core: Core,
    pub(super) ring: [u8; RING_PACKET_BUFFER],
    pub(super) msg: [u8; M],
}

impl<T: Transport, H: Hal, const N: usize, const M: usize> core::fmt::Debug
    for SubQueue<'_, T, H, N, M>
{
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("SubQueue")
            .field("index", &self.index)
            .field("relid", &self.channel.relid())
            .field("stats", &self.core.stats)
            .finish()
    }
}

impl<T: Transport, H: Hal, const N: usize, const M: usize> SubQueue<'_, T, H, N, M> {
    /// The sub-channel index (the queue number of the host's tables).
    pub fn index(&self) -> usize {
        usize::from(self.index)
    }

    /// The sub-channel's relid.
    pub fn relid(&self) -> u32 {
        self.channel.relid()
    }

    /// This queue's counters.
    pub fn stats(&self) -> NicStats {
        self.core.stats
    }
}

/// The primary channel's data path: the [`Queue`] methods on queue 0.
impl<'b, T: Transport, H: Hal, const N: usize, const M: usize> Nic<'b, T, H, N, M> {
    /// Queue 0 (the primary channel) as a [`Queue`].
    pub(super) fn lane(&mut self) -> Queue<'_, 'b, T, H, N, M> {
        let rsc = super::offload::rsc_area(self.rsc_storage.as_deref_mut(), 0);
        Queue {
            index: 0,
            channel: &mut self.channel,
            core: &mut self.core,
            ring: &mut self.ring,
            msg: &mut self.msg,
            recv_buf: &self.recv_buf,
            send_buf: &self.send_buf,
            large_buf: &self.large_buf,
            shared: &self.mq.shared,
            rsc,
        }
    }

    /// Sends one Ethernet frame on the primary channel now ([`Queue::send_frame`]).
    /// Interrupt-safe.
    pub fn send_frame(&mut self, frame: &[u8]) -> Result<(), NetError> {
        self.lane().send_frame(frame)
    }

    /// Sends a burst on the primary channel ([`Queue::send_batch`]): returns how many frames
    /// were taken. Interrupt-safe.
    pub fn send_batch(&mut self, frames: &[&[u8]]) -> Result<usize, NetError> {
        self.lane().send_batch(frames)
    }

    /// Queues one frame in the primary channel's burst ([`Queue::queue_frame`]).
    /// Interrupt-safe.
    pub fn queue_frame(&mut self, frame: &[u8]) -> Result<(), NetError> {
        self.lane().queue_frame(frame)
    }

    /// Queues a `len`-byte frame that `build` writes in place ([`Queue::queue_frame_with`]).
    /// Interrupt-safe.
    pub fn queue_frame_with<R>(
        &mut self,
        len: usize,
        build: impl FnOnce(&mut [u8]) -> R,
    ) -> Result<R, NetError> {
        self.lane().queue_frame_with(len, build)
    }

    /// Sends one frame on the primary channel with its TCP/UDP checksum left to the host
    /// ([`Queue::send_frame_checksum`]). Interrupt-safe.
    pub fn send_frame_checksum(&mut self, frame: &[u8]) -> Result<(), NetError> {
        self.lane().send_frame_checksum(frame)
    }

    /// [`Nic::send_batch`] with checksums left to the host ([`Queue::send_batch_checksum`]).
    /// Interrupt-safe.
    pub fn send_batch_checksum(&mut self, frames: &[&[u8]]) -> Result<usize, NetError> {
        self.lane().send_batch_checksum(frames)
    }

    /// [`Nic::queue_frame`] with the checksum left to the host
    /// ([`Queue::queue_frame_checksum`]). Interrupt-safe.
    pub fn queue_frame_checksum(&mut self, frame: &[u8]) -> Result<(), NetError> {
        self.lane().queue_frame_checksum(frame)
    }

    /// [`Nic::queue_frame_with`] with the checksum left to the host
    /// ([`Queue::queue_frame_checksum_with`]). Interrupt-safe.
    pub fn queue_frame_checksum_with<R>(
        &mut self,
        len: usize,
        build: impl FnOnce(&mut [u8]) -> R,
    ) -> Result<R, NetError> {
        self.lane().queue_frame_checksum_with(len, build)
    }

    /// Submits the primary channel's burst ([`Queue::flush`]). Interrupt-safe.
    pub fn flush(&mut self) -> Result<(), NetError> {
        self.lane().flush()
    }

    /// Frames queued on the primary channel and not yet handed to the host.
    pub fn queued_frames(&self) -> usize {
        self.core.burst.map_or(0, |o| usize::from(o.frames))
    }

    /// Polls the primary channel ([`Queue::poll`]): frames to `on_frame`, completions reaped,
    /// receive ranges returned. Returns whether packets may still be waiting. Interrupt-safe.
    pub fn poll(&mut self, budget: usize, on_frame: impl FnMut(&[u8])) -> Result<bool, NetError> {
        self.lane().poll(budget, on_frame)
    }

    /// Whether the primary channel's last poll or receive left host packets waiting
    /// ([`Queue::receive_pending`]): call again before waiting for an interrupt.
    pub fn receive_pending(&self) -> bool {
        self.core.rx_more
    }

    /// Receives the next frame of the primary channel ([`Queue::receive_with`]).
    /// Interrupt-safe.
    pub fn receive_with<R>(
        &mut self,
        budget: usize,
        f: impl FnOnce(&[u8]) -> R,
    ) -> Result<Option<R>, NetError> {
        self.lane().receive_with(budget, f)
    }

    /// [`Nic::poll`] with each frame's receive checksum verdict
    /// ([`Queue::poll_with_checksum`]). Interrupt-safe.
    pub fn poll_with_checksum(
        &mut self,
        budget: usize,
        on_frame: impl FnMut(&[u8], RxChecksum),
    ) -> Result<bool, NetError> {
        self.lane().poll_with_checksum(budget, on_frame)
    }

    /// [`Nic::receive_with`] with the frame's receive checksum verdict
    /// ([`Queue::receive_with_checksum`]). Interrupt-safe.
    pub fn receive_with_checksum<R>(
        &mut self,
        budget: usize,
        f: impl FnOnce(&[u8], RxChecksum) -> R,
    ) -> Result<Option<R>, NetError> {
        self.lane().receive_with_checksum(budget, f)
    }

    pub(super) fn pump(
        &mut self,
        budget: usize,
        on_frame: &mut OnFrame<'_>,
    ) -> Result<bool, NetError> {
        self.lane().pump(budget, on_frame)
    }

    pub(super) fn flush_quietly(&mut self) {
        self.lane().flush_quietly();
    }
}
