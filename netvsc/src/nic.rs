//! The netvsc driver on a VMBus channel: NVSP handshake (devices §7.1), receive and send
//! buffers behind GPADLs, RNDIS initialisation, the receive path (transfer-page packets,
//! devices §2.8) and the send path through send-buffer sections (§2.9).
//!
//! A [`Nic`] borrows the bus and owns its primary channel and both buffers. Blocking calls
//! ([`Nic::open`], [`Nic::close`]) take a [`Wait`]; the data path ([`Nic::send_frame`],
//! [`Nic::poll`]) never blocks, takes no lock and reports back-pressure as an error the
//! caller retries on, so a frame is never dropped without a counted reason.

use vmbus_guest::ring::{PacketKind, PacketType};
use vmbus_guest::{
    Channel, ChannelConfig, ChannelError, Hal, HostBuffer, Received, Released, Transport, Vmbus,
    VmbusError, Wait,
};
use zerocopy::{FromBytes, IntoBytes};

use crate::protocol::{
    CHANNEL_TYPE_CONTROL, CHANNEL_TYPE_DATA, NVSP_MESSAGE_SIZE, NvspHeader, NvspInit,
    NvspInitComplete, NvspNdisConfig, NvspNdisVersion, NvspRecvBufComplete, NvspRevokeBuffer,
    NvspRndisPacket, NvspRndisPacketComplete, NvspSendBufComplete, NvspSendBuffer, NvspVersion,
    RECV_BUFFER_ID, RndisInitComplete, RndisPacket, SEND_BUFFER_ID, filter, msg, oid, padded,
    rndis_msg, rndis_status, status,
};
use crate::rndis::{self, Message, RndisError};

/// Largest MTU (IP payload of a frame) this driver supports; frames are at most 1514 bytes.
pub const MAX_MTU: u16 = 1500;
/// Ethernet header size.
pub const ETHERNET_HEADER: usize = 14;
/// Most send-buffer sections used (the rest of a larger buffer stays unused).
pub const MAX_SECTIONS: usize = 256;
/// Most RNDIS bytes copied out of one receive range (a whole OpenVMM slot is 1806 bytes for
/// MTU 1500); a longer message is dropped and counted.
pub const MAX_RECEIVE_MESSAGE: usize = 4096;
/// Most ranges accepted in one transfer-page packet (devices §2.8: 562 with RSC).
pub const MAX_RANGES: usize = 562;
/// Bytes of the ring-packet buffer: the largest transfer-page packet (descriptor, header,
/// [`MAX_RANGES`] ranges, 40-byte NVSP message).
pub const RING_PACKET_BUFFER: usize = 16 + 8 + MAX_RANGES * 8 + 40;
/// Receive completions that can wait for ring space.
pub const PENDING_COMPLETIONS: usize = 64;
/// Default receive buffer: 16 MiB (Linux).
pub const DEFAULT_RECV_BUFFER: usize = 16 << 20;
/// Receive buffer cap for NVSP ≤ 2 hosts: 15 MiB (Linux).
pub const LEGACY_RECV_BUFFER_MAX: usize = 15 << 20;
/// Default send buffer: 1 MiB (Linux).
pub const DEFAULT_SEND_BUFFER: usize = 1 << 20;

const PAGE: usize = 4096;

/// How to open the NIC.
#[derive(Clone, Debug)]
pub struct NicConfig {
    /// NVSP versions to propose, in order (default: 6.1, 6, 5, 4, 2, 1).
    pub versions: &'static [NvspVersion],
    /// MTU (without the Ethernet header), at most [`MAX_MTU`].
    pub mtu: u16,
    /// Receive buffer size in bytes (rounded up to pages; capped at 15 MiB for NVSP ≤ 2).
    pub recv_buffer_bytes: usize,
    /// Send buffer size in bytes (rounded up to pages).
    pub send_buffer_bytes: usize,
    /// RNDIS packet filter set when opening (default directed + all-multicast + broadcast).
    pub packet_filter: u32,
    /// Ring sizes of the channel.
    pub channel: ChannelConfig,
}

impl Default for NicConfig {
    fn default() -> Self {
        Self {
            versions: &NvspVersion::ALL_NEWEST_FIRST,
            mtu: MAX_MTU,
            recv_buffer_bytes: DEFAULT_RECV_BUFFER,
            send_buffer_bytes: DEFAULT_SEND_BUFFER,
            packet_filter: filter::DEFAULT,
            channel: ChannelConfig {
                outbound_pages: 64,
                inbound_pages: 64,
                ..ChannelConfig::default()
            },
        }
    }
}

/// Which resource a send found exhausted (retry after [`Nic::poll`] reaped completions).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Busy {
    /// The outbound ring has no room.
    RingFull,
    /// Every send-buffer section is waiting for its completion.
    NoSection,
    /// Every request slot of the channel is in flight.
    Requests,
}

/// Errors of the netvsc driver.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum NetError {
    /// The channel failed (closed, rescinded, corrupt, timed out, ...).
    Channel(ChannelError),
    /// The bus failed (GPADL, memory).
    Vmbus(VmbusError),
    /// The host accepted none of the proposed NVSP versions.
    NoVersion,
    /// The host answered with a value the protocol does not allow.
    HostValue(&'static str),
    /// The host refused a request (NVSP or RNDIS status).
    HostStatus {
        /// What was asked.
        what: &'static str,
        /// The status it answered.
        status: u32,
    },
    /// A malformed RNDIS reply to a control request.
    Rndis(RndisError),
    /// Back-pressure: retry the send later.
    Busy(Busy),
    /// A frame shorter than an Ethernet header or longer than MTU + 14.
    FrameSize(usize),
    /// A configuration value is not usable.
    InvalidArgument(&'static str),
}

impl core::fmt::Display for NetError {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        match self {
            Self::Channel(e) => write!(f, "netvsc channel: {e}"),
            Self::Vmbus(e) => write!(f, "netvsc bus: {e}"),
            Self::NoVersion => f.write_str("the host accepted no NVSP version"),
            Self::HostValue(w) => write!(f, "invalid host value: {w}"),
            Self::HostStatus { what, status } => write!(f, "{what} refused: status {status:#x}"),
            Self::Rndis(e) => write!(f, "RNDIS: {e}"),
            Self::Busy(b) => write!(f, "send back-pressure: {b:?}"),
            Self::FrameSize(n) => write!(f, "frame of {n} bytes does not fit the MTU"),
            Self::InvalidArgument(w) => write!(f, "invalid argument: {w}"),
        }
    }
}

impl core::error::Error for NetError {}

impl From<ChannelError> for NetError {
    fn from(e: ChannelError) -> Self {
        Self::Channel(e)
    }
}

impl From<VmbusError> for NetError {
    fn from(e: VmbusError) -> Self {
        Self::Vmbus(e)
    }
}

impl From<vmbus_guest::TimedOut> for NetError {
    fn from(_: vmbus_guest::TimedOut) -> Self {
        Self::Channel(ChannelError::Timeout)
    }
}

/// What came back from the host during the handshake and RNDIS initialisation.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct NicInfo {
    /// Negotiated NVSP version.
    pub version: NvspVersion,
    /// Permanent MAC address.
    pub mac: [u8; 6],
    /// MTU in effect (the configured one, lowered to the host's maximum frame size).
    pub mtu: u16,
    /// Receive slots the host reported.
    pub recv_slots: u32,
    /// Send section size the host reported.
    pub section_size: u32,
    /// Send sections in use.
    pub sections: u16,
    /// RNDIS max packets per message (batching limit; this driver sends one per message).
    pub max_packets_per_message: u32,
    /// Link speed in units of 100 bit/s (0 if not reported).
    pub link_speed: u32,
}

/// Diagnostic counters. Every frame the driver did not deliver or send is in one of them.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct NicStats {
    /// Frames handed to the host.
    pub tx_frames: u64,
    /// Sends completed with success.
    pub tx_completed: u64,
    /// Sends the host completed with a failure status, or that died with the channel.
    pub tx_failed: u64,
    /// Sends refused: outbound ring full.
    pub tx_busy_ring: u64,
    /// Sends refused: no free send section.
    pub tx_busy_section: u64,
    /// Sends refused: request table full.
    pub tx_busy_requests: u64,
    /// Sends refused: frame size.
    pub tx_bad_size: u64,
    /// Frames delivered.
    pub rx_frames: u64,
    /// Transfer-page packets received (each completed once).
    pub rx_packets: u64,
    /// Transfer-page packets rejected whole (bad NVSP message, page set id, range count,
    /// too large for the buffer): completed with status 2.
    pub rx_bad_packets: u64,
    /// Ranges outside the receive buffer or shorter than an RNDIS header.
    pub rx_bad_ranges: u64,
    /// Ranges that held no valid RNDIS message.
    pub rx_bad_messages: u64,
    /// Messages larger than [`MAX_RECEIVE_MESSAGE`] or frames larger than MTU + 14.
    pub rx_too_large: u64,
    /// Frames received before the NIC was ready (during initialisation).
    pub rx_not_ready: u64,
    /// Receive completions that had to wait for ring space.
    pub rx_completions_deferred: u64,
    /// Receive completions that could not even be queued (the host keeps those ranges).
    pub rx_completions_lost: u64,
    /// Status indications received.
    pub indications: u64,
    /// Host messages of unexpected types or replies to no pending request.
    pub unexpected: u64,
}

/// The request context of the channel: what a completion belongs to.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Ctx {
    /// An NVSP handshake request (INIT, buffers).
    Handshake,
    /// An RNDIS control message in send section `section`.
    Control {
        /// The section.
        section: u16,
    },
    /// A frame in send section `section`.
    Data {
        /// The section.
        section: u16,
    },
}

#[derive(Clone, Copy, Debug, Default)]
struct Sections {
    free: [u64; MAX_SECTIONS / 64],
}

impl Sections {
    fn new(count: usize) -> Self {
        let mut s = Self::default();
        for i in 0..count.min(MAX_SECTIONS) {
            s.free[i / 64] |= 1 << (i % 64);
        }
        s
    }
    fn alloc(&mut self) -> Option<u16> {
        for (w, word) in self.free.iter_mut().enumerate() {
            if *word != 0 {
                let b = word.trailing_zeros() as usize;
                *word &= !(1 << b);
                return Some((w * 64 + b) as u16);
            }
        }
        None
    }
    fn release(&mut self, i: u16) {
        let i = usize::from(i);
        if i < MAX_SECTIONS {
            self.free[i / 64] |= 1 << (i % 64);
        }
    }
    fn free_count(&self) -> u32 {
        self.free.iter().map(|w| w.count_ones()).sum()
    }
}

/// Receive completions waiting for ring space: (transaction id, NVSP status).
#[derive(Clone, Copy, Debug)]
struct PendingCompletions {
    items: [(u64, u32); PENDING_COMPLETIONS],
    head: usize,
    len: usize,
}

impl PendingCompletions {
    const fn new() -> Self {
        Self {
            items: [(0, 0); PENDING_COMPLETIONS],
            head: 0,
            len: 0,
        }
    }
    fn is_full(&self) -> bool {
        self.len == PENDING_COMPLETIONS
    }
    fn push(&mut self, item: (u64, u32)) -> bool {
        if self.is_full() {
            return false;
        }
        self.items[(self.head + self.len) % PENDING_COMPLETIONS] = item;
        self.len += 1;
        true
    }
    fn front(&self) -> Option<(u64, u32)> {
        (self.len > 0).then(|| self.items[self.head])
    }
    fn pop(&mut self) {
        if self.len > 0 {
            self.head = (self.head + 1) % PENDING_COMPLETIONS;
            self.len -= 1;
        }
    }
}

/// Progress through the ranges of a received transfer-page packet.
#[derive(Clone, Copy, Debug)]
struct Cursor {
    transaction_id: u64,
    reply: bool,
    next: usize,
    count: usize,
}

/// A reply to the pending RNDIS control request.
#[derive(Clone, Copy, Debug)]
struct Reply {
    msg_type: u32,
    status: u32,
    info: [u8; 64],
    info_len: usize,
    init: Option<RndisInitComplete>,
}

/// Everything but the channel and the buffers, so receive handling can borrow it while the
/// channel and the buffers are borrowed separately.
struct Core {
    info: NicInfo,
    ready: bool,
    max_frame: usize,
    recv_len: usize,
    sections: Sections,
    pending: PendingCompletions,
    stats: NicStats,
    link_up: bool,
    link_changed: bool,
    next_request_id: u32,
    awaiting: Option<u32>,
    reply: Option<Reply>,
    /// The transfer-page packet being handed out range by range.
    cursor: Option<Cursor>,
    /// NVSP status of a refused control message while a reply is awaited.
    control_refused: Option<u32>,
}

impl Core {
    /// Handles one received packet; never sends (receive completions are queued in
    /// `pending`, which the caller checked has room).
    fn on_received(
        &mut self,
        r: Received<'_, Ctx>,
        recv_buf: Option<&HostBufferView<'_>>,
        scratch: &mut [u8; MAX_RECEIVE_MESSAGE],
        defer: bool,
    ) {
        match r {
            Received::Packet(p) => {
                if let PacketKind::TransferPages(t) = p.kind {
                    self.stats.rx_packets += 1;
                    let valid = self.check_transfer_pages(&t, p.payload(), recv_buf.is_some());
                    let reply = p.completion_requested();
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
                            for r in t.ranges() {
                                let (off, n) = (r.byte_offset as usize, r.byte_count as usize);
                                self.on_range(off, n, buf, scratch, &mut |_| {});
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
                    match t {
                        // The send table only matters with sub-channels, which this driver
                        // does not open; the VF association needs a VF driver. Both ignored.
                        msg::SEND_INDIRECTION_TABLE | msg::SEND_VF_ASSOCIATION => {}
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
                Ctx::Data { section } => {
                    self.sections.release(section);
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
                        self.stats.tx_completed += 1;
                    } else {
                        self.stats.tx_failed += 1;
                    }
                }
            },
            // The channel died with the request in flight: its section stays taken (the
            // memory is only reused after a confirmed release, i.e. never by this NIC).
            Received::Failed { context, .. } => {
                if matches!(context, Ctx::Data { .. }) {
                    self.stats.tx_failed += 1;
                }
            }
        }
    }

    /// Validates a transfer-page packet's header (NVSP message, page set id, range count).
    fn check_transfer_pages(
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

    fn queue_completion(&mut self, transaction_id: u64, st: u32) {
        if !self.pending.push((transaction_id, st)) {
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
    fn drain_cursor(
        &mut self,
        ring: &[u8],
        buf: &HostBufferView<'_>,
        scratch: &mut [u8; MAX_RECEIVE_MESSAGE],
        on_frame: &mut dyn FnMut(&[u8]) -> bool,
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
                continue;
            };
            let count = u32::from_le_bytes([r[0], r[1], r[2], r[3]]) as usize;
            let offset = u32::from_le_bytes([r[4], r[5], r[6], r[7]]) as usize;
            let mut stop = false;
            self.on_range(offset, count, buf, scratch, &mut |f| stop = !on_frame(f));
            if stop {
                return true;
            }
        }
        false
    }

    fn on_range(
        &mut self,
        offset: usize,
        count: usize,
        buf: &HostBufferView<'_>,
        scratch: &mut [u8; MAX_RECEIVE_MESSAGE],
        on_frame: &mut dyn FnMut(&[u8]),
    ) {
        if count < size_of::<crate::protocol::RndisHeader>()
            || offset
                .checked_add(count)
                .is_none_or(|end| end > self.recv_len)
        {
            self.stats.rx_bad_ranges += 1;
            return;
        }
        let n = count.min(MAX_RECEIVE_MESSAGE);
        if (buf.read)(offset, &mut scratch[..n]).is_err() {
            self.stats.rx_bad_ranges += 1;
            return;
        }
        let msg_len = u32::from_le_bytes([scratch[4], scratch[5], scratch[6], scratch[7]]);
        if msg_len as usize > n && msg_len as usize <= count {
            self.stats.rx_too_large += 1;
            return;
        }
        match rndis::parse_message(&scratch[..n]) {
            Ok(Message::Packet { frame, .. }) => {
                if frame.len() > self.max_frame {
                    self.stats.rx_too_large += 1;
                } else if !self.ready {
                    self.stats.rx_not_ready += 1;
                } else {
                    self.stats.rx_frames += 1;
                    on_frame(frame);
                }
            }
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

    fn on_reply(
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
            info: [0; 64],
            info_len: info.len().min(64),
            init,
        };
        r.info[..r.info_len].copy_from_slice(&info[..r.info_len]);
        self.reply = Some(r);
    }

    fn on_indication(&mut self, code: u32, buffer: &[u8]) {
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

    fn set_link(&mut self, up: bool) {
        if self.link_up != up {
            self.link_up = up;
            self.link_changed = true;
        }
    }
}

/// A bounds-checked reader of the receive buffer, so receive handling does not need the
/// buffer's type parameters.
struct HostBufferView<'a> {
    read: &'a ReadFn<'a>,
}

type ReadFn<'a> = dyn Fn(usize, &mut [u8]) -> Result<(), vmbus_guest::OutOfBounds> + 'a;

/// A netvsc NIC: the primary channel, the receive and send buffers, and the RNDIS state.
/// `N` is the request-table capacity (frames in flight + control requests).
///
/// Close it with [`Nic::close`]; dropping it leaks the channel's rings and both buffers.
pub struct Nic<'b, T: Transport, H: Hal, const N: usize = 64> {
    channel: Channel<'b, T, H, Ctx, N>,
    recv_buf: Option<HostBuffer<'b, T, H>>,
    send_buf: Option<HostBuffer<'b, T, H>>,
    core: Core,
    ring: [u8; RING_PACKET_BUFFER],
    /// Where one RNDIS message is copied out of the receive buffer.
    msg: [u8; MAX_RECEIVE_MESSAGE],
}

impl<T: Transport, H: Hal, const N: usize> core::fmt::Debug for Nic<'_, T, H, N> {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("Nic")
            .field("info", &self.core.info)
            .field("link_up", &self.core.link_up)
            .field("stats", &self.core.stats)
            .finish()
    }
}

impl<'b, T: Transport, H: Hal, const N: usize> Nic<'b, T, H, N> {
    /// Opens the first network adapter the host offered; see [`Nic::open`].
    pub fn open_first(
        bus: &'b Vmbus<T, H>,
        config: &NicConfig,
        waiter: &mut impl Wait,
    ) -> Result<Self, NetError> {
        let offer = bus
            .find(vmbus_guest::protocol::DeviceClass::Network, None)
            .ok_or(NetError::Vmbus(VmbusError::NoSuchDevice))?;
        Self::open(bus, offer.relid, config, waiter)
    }

    /// Opens the network channel `relid` and brings the NIC up (devices §7.1): NVSP version
    /// negotiation, NDIS config and version, receive and send buffers, RNDIS INITIALIZE,
    /// queries of the maximum frame size, MAC and link state, and the packet filter. On
    /// failure everything is closed again. Thread context only.
    pub fn open(
        bus: &'b Vmbus<T, H>,
        relid: u32,
        config: &NicConfig,
        waiter: &mut impl Wait,
    ) -> Result<Self, NetError> {
        const { assert!(N >= 4, "room for the handshake and a few frames") };
        if config.mtu < 68 || config.mtu > MAX_MTU {
            return Err(NetError::InvalidArgument("MTU must be 68..=1500"));
        }
        if config.recv_buffer_bytes < PAGE || config.send_buffer_bytes < PAGE {
            return Err(NetError::InvalidArgument("buffers of at least one page"));
        }
        waiter.restart();
        let channel = Channel::open(bus, relid, &config.channel, waiter)?;
        let mut nic = Self {
            channel,
            recv_buf: None,
            send_buf: None,
            core: Core {
                info: NicInfo {
                    version: NvspVersion::V1,
                    mac: [0; 6],
                    mtu: config.mtu,
                    recv_slots: 0,
                    section_size: 0,
                    sections: 0,
                    max_packets_per_message: 1,
                    link_speed: 0,
                },
                ready: false,
                max_frame: usize::from(config.mtu) + ETHERNET_HEADER,
                recv_len: 0,
                sections: Sections::default(),
                pending: PendingCompletions::new(),
                stats: NicStats::default(),
                link_up: false,
                link_changed: false,
                next_request_id: 1,
                awaiting: None,
                reply: None,
                control_refused: None,
                cursor: None,
            },
            ring: [0; RING_PACKET_BUFFER],
            msg: [0; MAX_RECEIVE_MESSAGE],
        };
        match nic.bring_up(bus, config, waiter) {
            Ok(()) => {
                log::info!(
                    "netvsc {relid}: NVSP {:#x}, MAC {:02x?}, MTU {}, {} send sections, link {}",
                    nic.core.info.version.0,
                    nic.core.info.mac,
                    nic.core.info.mtu,
                    nic.core.info.sections,
                    if nic.core.link_up { "up" } else { "down" }
                );
                Ok(nic)
            }
            Err(e) => {
                log::warn!("netvsc {relid}: bring-up failed: {e}");
                if nic.teardown(waiter, false) == Released::Leaked {
                    log::warn!("netvsc {relid}: memory leaked after the failed bring-up");
                }
                Err(e)
            }
        }
    }

    fn bring_up(
        &mut self,
        bus: &'b Vmbus<T, H>,
        config: &NicConfig,
        waiter: &mut impl Wait,
    ) -> Result<(), NetError> {
        let version = self.negotiate(config.versions, waiter)?;
        self.core.info.version = version;
        if version >= NvspVersion::V2 {
            let m = NvspNdisConfig {
                msg_type: msg::SEND_NDIS_CONFIG.into(),
                mtu: (u32::from(config.mtu) + ETHERNET_HEADER as u32).into(),
                reserved: 0.into(),
                capabilities: version.ndis_capabilities().into(),
            };
            self.channel.send(&[&padded(m.as_bytes())])?;
        }
        let (major, minor) = version.ndis_version();
        let m = NvspNdisVersion {
            msg_type: msg::SEND_NDIS_VERSION.into(),
            ndis_major: major.into(),
            ndis_minor: minor.into(),
        };
        self.channel.send(&[&padded(m.as_bytes())])?;

        // Receive buffer.
        let mut recv_bytes = config.recv_buffer_bytes;
        if version <= NvspVersion::V2 {
            recv_bytes = recv_bytes.min(LEGACY_RECV_BUFFER_MAX);
        }
        waiter.restart();
        let rb =
            HostBuffer::with_gpadl(bus, self.channel.relid(), recv_bytes.div_ceil(PAGE), waiter)?;
        let handle = rb.gpadl_handle().ok_or(NetError::HostValue("no GPADL"))?;
        self.core.recv_len = rb.len();
        self.recv_buf = Some(rb);
        let m = NvspSendBuffer {
            msg_type: msg::SEND_RECV_BUF.into(),
            gpadl_handle: handle.into(),
            id: RECV_BUFFER_ID.into(),
            padding: 0.into(),
        };
        let mut resp = [0u8; NVSP_MESSAGE_SIZE];
        let n = self.handshake_request(m.as_bytes(), &mut resp, waiter)?;
        let c = NvspRecvBufComplete::read_from_prefix(&resp[..n.min(resp.len())])
            .map_err(|_| NetError::HostValue("short SEND_RECV_BUF_COMPLETE"))?
            .0;
        if c.msg_type.get() != msg::SEND_RECV_BUF_COMPLETE {
            return Err(NetError::HostValue(
                "SEND_RECV_BUF answered with another type",
            ));
        }
        if c.status.get() != status::SUCCESS {
            return Err(NetError::HostStatus {
                what: "receive buffer",
                status: c.status.get(),
            });
        }
        let end = u64::from(c.offset.get())
            + u64::from(c.sub_alloc_size.get()) * u64::from(c.num_sub_allocs.get());
        if c.num_sections.get() != 1
            || c.sub_alloc_size.get() == 0
            || c.num_sub_allocs.get() == 0
            || u64::from(c.end_offset.get()) != end
            || end > self.core.recv_len as u64
        {
            return Err(NetError::HostValue("receive buffer section"));
        }
        self.core.info.recv_slots = c.num_sub_allocs.get();

        // Send buffer.
        waiter.restart();
        let sb = HostBuffer::with_gpadl(
            bus,
            self.channel.relid(),
            config.send_buffer_bytes.div_ceil(PAGE),
            waiter,
        )?;
        let handle = sb.gpadl_handle().ok_or(NetError::HostValue("no GPADL"))?;
        let send_len = sb.len();
        self.send_buf = Some(sb);
        let m = NvspSendBuffer {
            msg_type: msg::SEND_SEND_BUF.into(),
            gpadl_handle: handle.into(),
            id: SEND_BUFFER_ID.into(),
            padding: 0.into(),
        };
        let n = self.handshake_request(m.as_bytes(), &mut resp, waiter)?;
        let c = NvspSendBufComplete::read_from_prefix(&resp[..n.min(resp.len())])
            .map_err(|_| NetError::HostValue("short SEND_SEND_BUF_COMPLETE"))?
            .0;
        if c.msg_type.get() != msg::SEND_SEND_BUF_COMPLETE {
            return Err(NetError::HostValue(
                "SEND_SEND_BUF answered with another type",
            ));
        }
        if c.status.get() != status::SUCCESS {
            return Err(NetError::HostStatus {
                what: "send buffer",
                status: c.status.get(),
            });
        }
        let size = c.section_size.get() as usize;
        let needed = rndis::packet_message_len(usize::from(MAX_MTU) + ETHERNET_HEADER);
        if size < needed || size > send_len {
            return Err(NetError::HostValue("send section size"));
        }
        let count = (send_len / size).min(MAX_SECTIONS);
        self.core.info.section_size = size as u32;
        self.core.info.sections = count as u16;
        self.core.sections = Sections::new(count);

        // RNDIS.
        let id = self.next_id();
        let mut m = [0u8; 64];
        let len = rndis::write_initialize(&mut m, id, 0x4000).ok_or(NetError::HostValue("init"))?;
        let r = self.rndis_request(id, &m[..len], waiter)?;
        let init = match (r.msg_type, r.init) {
            (rndis_msg::INITIALIZE_CMPLT, Some(i)) => i,
            _ => return Err(NetError::HostValue("INITIALIZE answered with another type")),
        };
        if init.status.get() != rndis_status::SUCCESS {
            return Err(NetError::HostStatus {
                what: "RNDIS INITIALIZE",
                status: init.status.get(),
            });
        }
        if init.medium.get() != 0 {
            return Err(NetError::HostValue("RNDIS medium is not 802.3"));
        }
        self.core.info.max_packets_per_message = init.max_packets_per_message.get();

        let (frame_size, _) = self.query_u32(oid::GEN_MAXIMUM_FRAME_SIZE, waiter)?;
        if frame_size < 68 {
            return Err(NetError::HostValue("maximum frame size below 68"));
        }
        if frame_size < u32::from(self.core.info.mtu) {
            self.core.info.mtu = frame_size as u16;
            self.core.max_frame = frame_size as usize + ETHERNET_HEADER;
        }
        let mac = self.query(oid::PERMANENT_ADDRESS, waiter)?;
        if mac.info_len < 6 {
            return Err(NetError::HostValue("MAC address shorter than 6 bytes"));
        }
        self.core.info.mac.copy_from_slice(&mac.info[..6]);
        let (media, _) = self.query_u32(oid::GEN_MEDIA_CONNECT_STATUS, waiter)?;
        self.core.link_up = match media {
            0 => true,
            1 => false,
            _ => return Err(NetError::HostValue("media connect status")),
        };
        if version >= NvspVersion::V5 {
            // Optional: a host that does not answer it keeps the speed unknown.
            if let Ok((speed, _)) = self.query_u32(oid::GEN_LINK_SPEED, waiter) {
                self.core.info.link_speed = speed;
            }
        }
        self.set_u32(oid::GEN_CURRENT_PACKET_FILTER, config.packet_filter, waiter)?;
        self.core.ready = true;
        self.core.link_changed = false;
        Ok(())
    }

    /// NVSP INIT with each candidate in turn; the first accepted one is returned.
    fn negotiate(
        &mut self,
        versions: &[NvspVersion],
        waiter: &mut impl Wait,
    ) -> Result<NvspVersion, NetError> {
        for &v in versions {
            let m = NvspInit {
                msg_type: msg::INIT.into(),
                min_protocol_version: v.0.into(),
                max_protocol_version: v.0.into(),
            };
            let mut resp = [0u8; NVSP_MESSAGE_SIZE];
            let n = self.handshake_request(m.as_bytes(), &mut resp, waiter)?;
            let Ok((c, _)) = NvspInitComplete::read_from_prefix(&resp[..n.min(resp.len())]) else {
                return Err(NetError::HostValue("short INIT_COMPLETE"));
            };
            if c.msg_type.get() != msg::INIT_COMPLETE {
                return Err(NetError::HostValue("INIT answered with another type"));
            }
            if c.status.get() == status::SUCCESS {
                return Ok(v);
            }
            log::info!("netvsc: NVSP {:#x} refused ({})", v.0, c.status.get());
        }
        Err(NetError::NoVersion)
    }

    /// Sends an NVSP request (padded to 40 bytes) and waits for its completion; packets that
    /// arrive meanwhile are handled (receive completions sent afterwards).
    fn handshake_request(
        &mut self,
        m: &[u8],
        resp: &mut [u8],
        waiter: &mut impl Wait,
    ) -> Result<usize, NetError> {
        waiter.restart();
        let Self {
            channel,
            recv_buf,
            core,
            ring,
            msg: scratch,
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
        let n = channel.transact(
            &[&padded(m)],
            Ctx::Handshake,
            resp,
            ring,
            |r| core.on_received(r, Some(&view), scratch, false),
            waiter,
        );
        flush_completions(&mut self.channel, &mut self.core);
        Ok(n?)
    }

    fn next_id(&mut self) -> u32 {
        let id = self.core.next_request_id;
        self.core.next_request_id = id.wrapping_add(1).max(1);
        id
    }

    /// Sends an RNDIS control message through a send section and waits for its RNDIS reply
    /// in the receive path (the NVSP completion frees the section whenever it comes).
    fn rndis_request(
        &mut self,
        id: u32,
        message: &[u8],
        waiter: &mut impl Wait,
    ) -> Result<Reply, NetError> {
        waiter.restart();
        let section = self
            .core
            .sections
            .alloc()
            .ok_or(NetError::Busy(Busy::NoSection))?;
        let size = self.core.info.section_size as usize;
        let Some(sb) = self.send_buf.as_ref() else {
            return Err(NetError::InvalidArgument("no send buffer"));
        };
        if message.len() > size || sb.write_at(usize::from(section) * size, message).is_err() {
            self.core.sections.release(section);
            return Err(NetError::InvalidArgument(
                "control message larger than a section",
            ));
        }
        let m = NvspRndisPacket {
            msg_type: msg::SEND_RNDIS_PKT.into(),
            channel_type: CHANNEL_TYPE_CONTROL.into(),
            send_buf_section_index: u32::from(section).into(),
            send_buf_section_size: (message.len() as u32).into(),
        };
        if let Err(e) = self
            .channel
            .request(&[&padded(m.as_bytes())], Ctx::Control { section })
        {
            self.core.sections.release(section);
            return Err(e.into());
        }
        self.core.awaiting = Some(id);
        self.core.reply = None;
        self.core.control_refused = None;
        let result = loop {
            if let Err(e) = self.pump(64, &mut |_| true) {
                break Err(e);
            }
            if let Some(r) = self.core.reply.take() {
                break Ok(r);
            }
            if let Some(status) = self.core.control_refused.take() {
                break Err(NetError::HostStatus {
                    what: "RNDIS control message",
                    status,
                });
            }
            self.channel.bus().poll();
            if let Err(e) = waiter.wait() {
                break Err(e.into());
            }
        };
        self.core.awaiting = None;
        result
    }

    fn query(&mut self, oid: u32, waiter: &mut impl Wait) -> Result<Reply, NetError> {
        let id = self.next_id();
        let mut m = [0u8; 64];
        let len = rndis::write_oid_request(&mut m, rndis_msg::QUERY, id, oid, &[])
            .ok_or(NetError::InvalidArgument("query"))?;
        let r = self.rndis_request(id, &m[..len], waiter)?;
        if r.msg_type != rndis_msg::QUERY_CMPLT {
            return Err(NetError::HostValue("QUERY answered with another type"));
        }
        if r.status != rndis_status::SUCCESS {
            return Err(NetError::HostStatus {
                what: "RNDIS QUERY",
                status: r.status,
            });
        }
        Ok(r)
    }

    fn query_u32(&mut self, oid: u32, waiter: &mut impl Wait) -> Result<(u32, Reply), NetError> {
        let r = self.query(oid, waiter)?;
        if r.info_len < 4 {
            return Err(NetError::HostValue("QUERY reply shorter than a u32"));
        }
        Ok((
            u32::from_le_bytes([r.info[0], r.info[1], r.info[2], r.info[3]]),
            r,
        ))
    }

    fn set_u32(&mut self, oid: u32, value: u32, waiter: &mut impl Wait) -> Result<(), NetError> {
        let id = self.next_id();
        let mut m = [0u8; 64];
        let len = rndis::write_oid_request(&mut m, rndis_msg::SET, id, oid, &value.to_le_bytes())
            .ok_or(NetError::InvalidArgument("set"))?;
        let r = self.rndis_request(id, &m[..len], waiter)?;
        if r.msg_type != rndis_msg::SET_CMPLT {
            return Err(NetError::HostValue("SET answered with another type"));
        }
        if r.status != rndis_status::SUCCESS {
            return Err(NetError::HostStatus {
                what: "RNDIS SET",
                status: r.status,
            });
        }
        Ok(())
    }

    fn pump(
        &mut self,
        budget: usize,
        on_frame: &mut dyn FnMut(&[u8]) -> bool,
    ) -> Result<bool, NetError> {
        let Self {
            channel,
            recv_buf,
            core,
            ring,
            msg: scratch,
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
            if core.drain_cursor(ring, &view, scratch, on_frame) {
                return Ok(true);
            }
            flush_completions(channel, core);
            if core.pending.is_full() {
                channel.yield_batch()?;
                return Ok(true);
            }
            match channel.recv(ring) {
                Ok(Some(r)) => core.on_received(r, Some(&view), scratch, true),
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

    /// Receives up to `budget` packets from the host, handing each received Ethernet frame to
    /// `on_frame`, reaping send completions and returning receive ranges to the host (one
    /// completion per transfer-page packet). Returns whether packets may still be waiting
    /// (poll again: no interrupt announces them). Interrupt-safe.
    pub fn poll(
        &mut self,
        budget: usize,
        mut on_frame: impl FnMut(&[u8]),
    ) -> Result<bool, NetError> {
        self.pump(budget, &mut |f| {
            on_frame(f);
            true
        })
    }

    /// Receives the next frame and hands it to `f` (pull style, for network stacks that
    /// ask for one frame at a time): processes up to `budget` host packets (completions,
    /// indications, refused messages) until a frame is found. `Ok(None)`: no frame now.
    /// The rest of a multi-frame transfer-page packet is kept for the next call; its
    /// completion goes to the host once all its frames were taken. Interrupt-safe.
    pub fn receive_with<R>(
        &mut self,
        budget: usize,
        f: impl FnOnce(&[u8]) -> R,
    ) -> Result<Option<R>, NetError> {
        let mut f = Some(f);
        let mut out = None;
        self.pump(budget, &mut |frame| {
            if let Some(f) = f.take() {
                out = Some(f(frame));
            }
            false
        })?;
        Ok(out)
    }

    /// Sends one Ethernet frame (header + payload, no FCS) by copying it into a send-buffer
    /// section behind an RNDIS PACKET header, with completion requested. On
    /// [`NetError::Busy`] nothing was sent: poll and retry. Interrupt-safe.
    pub fn send_frame(&mut self, frame: &[u8]) -> Result<(), NetError> {
        if frame.len() < ETHERNET_HEADER || frame.len() > self.core.max_frame {
            self.core.stats.tx_bad_size += 1;
            return Err(NetError::FrameSize(frame.len()));
        }
        if self.channel.requests_full() {
            self.core.stats.tx_busy_requests += 1;
            return Err(NetError::Busy(Busy::Requests));
        }
        let Some(section) = self.core.sections.alloc() else {
            self.core.stats.tx_busy_section += 1;
            return Err(NetError::Busy(Busy::NoSection));
        };
        let header = rndis::packet_header(frame.len()).ok_or(NetError::FrameSize(frame.len()))?;
        let len = header.header.msg_len.get() as usize;
        let at = usize::from(section) * self.core.info.section_size as usize;
        let pad = [0u8; 8];
        let written = self.send_buf.as_ref().is_some_and(|sb| {
            sb.write_at(at, header.as_bytes()).is_ok()
                && sb.write_at(at + size_of::<RndisPacket>(), frame).is_ok()
                && sb
                    .write_at(
                        at + size_of::<RndisPacket>() + frame.len(),
                        &pad[..len - size_of::<RndisPacket>() - frame.len()],
                    )
                    .is_ok()
        });
        if !written {
            self.core.sections.release(section);
            return Err(NetError::InvalidArgument("send buffer gone"));
        }
        let m = NvspRndisPacket {
            msg_type: msg::SEND_RNDIS_PKT.into(),
            channel_type: CHANNEL_TYPE_DATA.into(),
            send_buf_section_index: u32::from(section).into(),
            send_buf_section_size: (len as u32).into(),
        };
        match self
            .channel
            .request(&[&padded(m.as_bytes())], Ctx::Data { section })
        {
            Ok(_) => {
                self.core.stats.tx_frames += 1;
                Ok(())
            }
            Err(e) => {
                self.core.sections.release(section);
                Err(match e {
                    ChannelError::Full => {
                        self.core.stats.tx_busy_ring += 1;
                        NetError::Busy(Busy::RingFull)
                    }
                    ChannelError::TooManyRequests => {
                        self.core.stats.tx_busy_requests += 1;
                        NetError::Busy(Busy::Requests)
                    }
                    other => NetError::Channel(other),
                })
            }
        }
    }

    /// Whether a frame can be sent now (a free section and request slot).
    pub fn can_send(&self) -> bool {
        !self.channel.requests_full() && self.core.sections.free_count() > 0
    }

    /// What the handshake learned.
    pub fn info(&self) -> &NicInfo {
        &self.core.info
    }

    /// The permanent MAC address.
    pub fn mac(&self) -> [u8; 6] {
        self.core.info.mac
    }

    /// Largest frame accepted by [`Nic::send_frame`] (MTU + 14).
    pub fn max_frame_len(&self) -> usize {
        self.core.max_frame
    }

    /// Whether the link is up (initial query, then MEDIA_CONNECT / MEDIA_DISCONNECT).
    pub fn link_up(&self) -> bool {
        self.core.link_up
    }

    /// Whether the link changed (or the host announced NETWORK_CHANGE) since the last call.
    pub fn take_link_change(&mut self) -> bool {
        core::mem::take(&mut self.core.link_changed)
    }

    /// Counters.
    pub fn stats(&self) -> NicStats {
        self.core.stats
    }

    /// Frames sent and not yet completed.
    pub fn sends_in_flight(&self) -> usize {
        self.channel.requests_in_flight()
    }

    /// The bus the NIC's channel is open on (its owner polls it or routes interrupts to it;
    /// a rescind reaches the NIC once the bus has processed it).
    pub fn bus(&self) -> &'b Vmbus<T, H> {
        self.channel.bus()
    }

    /// The channel's relid.
    pub fn relid(&self) -> u32 {
        self.channel.relid()
    }

    /// Closes the NIC (devices §2.18): packet filter 0, REVOKE_RECV_BUF and REVOKE_SEND_BUF,
    /// both buffer GPADLs torn down, then the channel closed. The buffers are freed only when the bus
    /// confirms the host let go of them; any `Leaked` part makes the result `Leaked`. Thread
    /// context only.
    pub fn close(mut self, waiter: &mut impl Wait) -> Released {
        waiter.restart();
        let alive = self.channel.is_alive() && self.core.ready;
        self.teardown(waiter, alive)
    }

    fn teardown(mut self, waiter: &mut impl Wait, graceful: bool) -> Released {
        // Frames that arrive while the close waits for its SET reply are counted as
        // "not ready", not handed to nobody.
        self.core.ready = false;
        if graceful
            && self
                .set_u32(oid::GEN_CURRENT_PACKET_FILTER, 0, waiter)
                .is_err()
        {
            log::warn!(
                "netvsc {}: packet filter 0 not confirmed",
                self.channel.relid()
            );
        }
        for (present, revoke, id) in [
            (
                self.recv_buf.is_some(),
                msg::REVOKE_RECV_BUF,
                RECV_BUFFER_ID,
            ),
            (
                self.send_buf.is_some(),
                msg::REVOKE_SEND_BUF,
                SEND_BUFFER_ID,
            ),
        ] {
            if present && self.channel.is_alive() {
                let m = NvspRevokeBuffer {
                    msg_type: revoke.into(),
                    id: id.into(),
                    padding: 0.into(),
                };
                if let Err(e) = self.channel.send(&[&padded(m.as_bytes())]) {
                    log::warn!("netvsc: buffer revoke not sent: {e}");
                }
            }
        }
        let Self {
            channel,
            recv_buf,
            send_buf,
            ..
        } = self;
        // Buffers first (devices §2.18, vmbus-core §10.1): closing the channel releases a
        // rescinded relid, after which the host no longer knows the channel's GPADLs.
        let mut released = Released::Freed;
        for b in [recv_buf, send_buf].into_iter().flatten() {
            waiter.restart();
            if b.release(waiter) == Released::Leaked {
                released = Released::Leaked;
            }
        }
        waiter.restart();
        if channel.close(waiter) == Released::Leaked {
            released = Released::Leaked;
        }
        released
    }
}

/// Sends queued receive completions while the ring takes them.
fn flush_completions<T: Transport, H: Hal, const N: usize>(
    channel: &mut Channel<'_, T, H, Ctx, N>,
    core: &mut Core,
) {
    while let Some((tid, st)) = core.pending.front() {
        let c = NvspRndisPacketComplete {
            msg_type: msg::SEND_RNDIS_PKT_COMPLETE.into(),
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
}
