//! The netvsc driver on a VMBus channel: NVSP handshake (devices §7.1), receive and send
//! buffers behind GPADLs, RNDIS initialisation, the receive path (transfer-page packets,
//! devices §2.8) and the send path through send-buffer sections (§2.9).
//!
//! A [`Nic`] borrows the bus and owns its primary channel and both buffers. Blocking calls
//! ([`Nic::open`], [`Nic::close`]) take a [`Wait`]; the data path ([`Nic::send_frame`],
//! [`Nic::send_batch`], [`Nic::poll`]) never blocks, takes no lock and reports back-pressure as an error the
//! caller retries on, so a frame is never dropped without a counted reason.
//!
//! Multi-queue (devices §2.15): the data path is a [`Queue`] (one channel and its own state);
//! the `Nic` methods above work on queue 0, the primary channel. [`Nic::open_queues`] adds
//! sub-channel queues kept in caller storage ([`SubQueue`]), [`Nic::split`] hands every queue
//! out at once. Interrupt context: every [`Queue`] method and the `Nic` data-path methods
//! (send, queue, flush, poll, receive, split, queue, send_steered, poll_queues) take no lock
//! and never wait; open, close, the queue set-up and teardown, and RNDIS control
//! ([`Nic::keepalive`]) are thread context only.

mod control;
mod lso;
mod multi;
mod offload;
mod open;
mod queue;
mod receive;
mod rsc;
mod send;

use vmbus_guest::ring::{PacketKind, PacketType};
use vmbus_guest::{
    Channel, ChannelConfig, ChannelError, Hal, HostBuffer, Received, Released, Transport, Vmbus,
    VmbusError, Wait,
};
use zerocopy::{FromBytes, IntoBytes};

use crate::offload::rsc::Reassembly;
use crate::offload::{OffloadCaps, Offloads, RxChecksum};
use crate::protocol::{
    CHANNEL_TYPE_CONTROL, CHANNEL_TYPE_DATA, DATA_PATH_SYNTHETIC, DATA_PATH_VF, NO_SECTION,
    NVSP_MESSAGE_SIZE, NvspHeader, NvspInit, NvspInitComplete, NvspNdisConfig, NvspNdisVersion,
    NvspRecvBufComplete, NvspRevokeBuffer, NvspRndisPacket, NvspRndisPacketComplete,
    NvspSendBufComplete, NvspSendBuffer, NvspSwitchDataPath, NvspVersion, NvspVfAssociation,
    RECV_BUFFER_ID, RndisHeader, RndisInitComplete, RndisKeepalive, RndisPacket, SEND_BUFFER_ID,
    filter, msg, oid, padded, rndis_msg, rndis_status, status,
};
use crate::rndis::{self, Message, RndisError};
pub use lso::LSO_SLOTS;
pub use multi::{MultiQueueConfig, QueueSetup, SingleQueue};
pub use queue::{Queue, Shared, SubQueue};
pub use rsc::RxInfo;
pub use send::{MAX_PACKED, MAX_PACKET_ALIGNMENT, PACK_THRESHOLD};

/// Largest MTU (IP payload of a frame) this driver supports; frames are at most 1514 bytes.
pub const MAX_MTU: u16 = 1500;
/// Largest jumbo MTU: frames of up to 9014 bytes (OpenVMM accepts 1514..=9216-byte frames in
/// SEND_NDIS_CONFIG, devices §2.6); needs NVSP ≥ 2, whose NDIS config carries the MTU.
pub const MAX_JUMBO_MTU: u16 = 9000;
/// Bytes of a receive slot around the frame on OpenVMM (devices §2.7: 256 + frame + 36).
pub const HOST_SLOT_OVERHEAD: usize = 256 + 36;
/// The receive copy buffer (`Nic`'s `M`) an MTU needs: a whole host slot.
pub const fn receive_message_for(mtu: u16) -> usize {
    mtu as usize + ETHERNET_HEADER + HOST_SLOT_OVERHEAD
}
/// Page-buffer slots for frames too large for a send section (jumbo frames only).
pub const LARGE_SLOTS: usize = 8;
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
    /// MTU (without the Ethernet header): 68 to [`MAX_MTU`], or up to [`MAX_JUMBO_MTU`] when
    /// the receive copy buffer `M` holds [`receive_message_for`] it (lowered to 1500 on an
    /// NVSP 1 host, and to the host's maximum frame size).
    pub mtu: u16,
    /// Receive buffer size in bytes (rounded up to pages; capped at 15 MiB for NVSP ≤ 2).
    pub recv_buffer_bytes: usize,
    /// Send buffer size in bytes (rounded up to pages).
    pub send_buffer_bytes: usize,
    /// RNDIS packet filter set when opening (default directed + all-multicast + broadcast).
    pub packet_filter: u32,
    /// Ring sizes of the channel (the sub-channels of [`Nic::open_queues`] use the same).
    pub channel: ChannelConfig,
    /// Negotiate checksum and LSO v2 offloads from the host's capabilities (default on;
    /// devices §7.1 step 8). Off: every checksum is the guest's. With LSO v2 enabled the NIC
    /// also allocates [`LSO_SLOTS`] slots of 68 KiB of host-visible memory for
    /// [`Nic::send_lso`].
    pub offloads: bool,
    /// Multi-queue (vRSS): how many queues to ask for and the RSS key.
    pub multi_queue: MultiQueueConfig,
    /// Receive segment coalescing (default on): with [`NicConfig::offloads`], a NIC opened
    /// with reassembly storage ([`Nic::open_with_rsc`]) announces RSC in its NDIS config
    /// (NVSP 6.1) and enables it when the host offers it for IPv4 and IPv6; the host may then
    /// deliver TCP segments coalesced into frames of up to
    /// [`RSC_MAX_FRAME`](crate::offload::rsc::RSC_MAX_FRAME) bytes. Without storage (plain
    /// [`Nic::open`]) RSC stays off whatever this says.
    pub rsc: bool,
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
            offloads: true,
            multi_queue: MultiQueueConfig::default(),
            rsc: true,
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
    /// A frame that cannot go as one LSO v2 send.
    Lso(crate::offload::LsoError),
    /// The host's RSS capabilities or send table are malformed.
    Rss(crate::rss::RssError),
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
            Self::Lso(e) => write!(f, "LSO: {e}"),
            Self::Rss(e) => write!(f, "RSS: {e}"),
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
    /// RNDIS messages packed into one send section at most: the host's max packets per
    /// message, capped at [`MAX_PACKED`] (1 = no packing).
    pub max_packets_per_message: u32,
    /// Alignment of each packed RNDIS message in bytes (from the host's packet alignment
    /// factor; at least 8, at most [`MAX_PACKET_ALIGNMENT`]).
    pub packet_alignment: u32,
    /// Link speed in units of 100 bit/s (0 if not reported).
    pub link_speed: u32,
    /// The host's offload capabilities (`None`: not queried, not answered or malformed).
    pub offload_caps: Option<OffloadCaps>,
    /// The offloads in effect (the host accepted TCP_OFFLOAD_PARAMETERS).
    pub offloads: Offloads,
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
    /// Frames sent with their TCP/UDP checksum left to the host (checksum PPI).
    pub tx_csum_offloaded: u64,
    /// Frames sent through the checksum API whose TCP/UDP checksum the guest computed (not
    /// offloaded for that IP version, protocol or IPv4 options).
    pub tx_csum_software: u64,
    /// LSO v2 sends (each one frame in `tx_frames`; the host makes the segments).
    pub tx_lso: u64,
    /// Segments the LSO v2 sends asked the host for.
    pub tx_lso_segments: u64,
    /// Frames delivered.
    pub rx_frames: u64,
    /// Frames delivered through [`Nic::poll_with_checksum`] or
    /// [`Nic::receive_with_checksum`] with a checksum the host validated (a negotiated
    /// receive offload).
    pub rx_csum_good: u64,
    /// Frames delivered through those calls with a checksum the host found wrong (a
    /// negotiated receive offload); handed on with the verdict, for the stack to drop.
    pub rx_csum_bad: u64,
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
    /// Frames (or RSC fragments) received while the NIC took none: during initialisation,
    /// while a control request ([`Nic::keepalive`]) waited for its reply, and while closing.
    pub rx_not_ready: u64,
    /// Coalesced frames reassembled from RSC fragments and delivered (also in `rx_frames`).
    pub rx_rsc_frames: u64,
    /// Fragments those frames came in.
    pub rx_rsc_fragments: u64,
    /// RSC fragments dropped: out of order, of another packet id, a frame beyond the
    /// reassembly buffer, cut by another message or by the end of its transfer-page packet,
    /// or received without reassembly storage ([`crate::offload::rsc::RscDrop`]).
    pub rx_rsc_dropped: u64,
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
    /// Frames packed in send section `section`.
    Data {
        /// The section.
        section: u16,
        /// Frames in it.
        frames: u16,
    },
    /// A SWITCH_DATA_PATH request.
    DataPath,
    /// A frame sent as GPA-direct page buffers from page-buffer slot `slot`.
    Large {
        /// The slot.
        slot: u8,
    },
    /// An LSO v2 send from LSO slot `slot`.
    Lso {
        /// The slot.
        slot: u8,
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

/// A completion the guest owes the host: transaction id, NVSP message type, status.
type Owed = (u64, u32, u32);

/// Completions waiting for ring space (receive completions, VF messages).
#[derive(Clone, Copy, Debug)]
struct PendingCompletions {
    items: [Owed; PENDING_COMPLETIONS],
    head: usize,
    len: usize,
}

impl PendingCompletions {
    const fn new() -> Self {
        Self {
            items: [(0, 0, 0); PENDING_COMPLETIONS],
            head: 0,
            len: 0,
        }
    }
    fn is_full(&self) -> bool {
        self.len == PENDING_COMPLETIONS
    }
    fn push(&mut self, item: Owed) -> bool {
        if self.is_full() {
            return false;
        }
        self.items[(self.head + self.len) % PENDING_COMPLETIONS] = item;
        self.len += 1;
        true
    }
    fn front(&self) -> Option<Owed> {
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

/// Bytes of a control reply's information buffer kept (an NDIS_OFFLOAD is 156 bytes; room
/// for later revisions).
const REPLY_INFO: usize = 256;

/// A reply to the pending RNDIS control request.
#[derive(Clone, Copy, Debug)]
struct Reply {
    msg_type: u32,
    status: u32,
    info: [u8; REPLY_INFO],
    info_len: usize,
    init: Option<RndisInitComplete>,
}

/// Everything but the channel and the buffers, so receive handling can borrow it while the
/// channel and the buffers are borrowed separately. One per queue (the primary's also holds
/// the control state).
#[derive(Clone)]
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
    /// What the host said about an SR-IOV VF.
    vf: VfState,
    /// A SEND_INDIRECTION_TABLE received and not yet applied to the shared table.
    host_send_table: Option<[u32; crate::protocol::SEND_TABLE_ENTRIES]>,
    /// A SWITCH_DATA_PATH (synthetic) is owed to the host.
    switch_owed: bool,
    /// Free page-buffer slots (bit per slot).
    large_free: u16,
    /// Free LSO slots (bit per slot).
    lso_free: u8,
    /// The send section the current burst is filling.
    burst: Option<send::OpenSection>,
    /// The coalesced frame being reassembled from RSC fragments.
    rsc: Reassembly,
    /// The last poll or receive stopped with host packets still waiting in the ring (its
    /// budget used up, or a frame handed over mid-packet): the reader stays masked, so no
    /// interrupt announces them ([`Nic::receive_pending`]).
    rx_more: bool,
}

/// The SR-IOV VF as the host announced it (devices §2.17). This driver has no VF driver:
/// it keeps (or puts back) the data path on the synthetic NIC and tells the host so.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct VfState {
    /// The last SEND_VF_ASSOCIATION: (allocated, serial number).
    pub association: Option<(bool, u32)>,
    /// The host confirmed the guest's SWITCH_DATA_PATH to synthetic (its completion, empty
    /// on OpenVMM, arrived).
    pub synthetic_confirmed: bool,
    /// The data path the host last switched to itself (SWITCH_DATA_PATH from the host).
    pub host_data_path: Option<u32>,
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
/// Close it with [`Nic::close`] ([`Nic::close_all`] when it has sub-queues); dropping it leaks
/// the channel's rings and both buffers.
pub struct Nic<'b, T: Transport, H: Hal, const N: usize = 64, const M: usize = MAX_RECEIVE_MESSAGE>
{
    channel: Channel<'b, T, H, Ctx, N>,
    recv_buf: Option<HostBuffer<'b, T, H>>,
    send_buf: Option<HostBuffer<'b, T, H>>,
    /// Page-buffer slots for frames larger than a section (no GPADL: named by GPA-direct
    /// packets), allocated only when the MTU needs them.
    large_buf: Option<HostBuffer<'b, T, H>>,
    /// Slots for LSO v2 sends (no GPADL), allocated when the host enabled LSO v2.
    lso_buf: Option<HostBuffer<'b, T, H>>,
    core: Core,
    ring: [u8; RING_PACKET_BUFFER],
    /// Where one RNDIS message is copied out of the receive buffer.
    msg: [u8; M],
    /// Multi-queue state: the shared send table and RSS settings, the sub-channel count.
    mq: multi::MqState,
    /// The caller's RSC reassembly storage: [`RSC_MAX_FRAME`](crate::offload::rsc::RSC_MAX_FRAME)
    /// bytes for each queue, queue `i` the `i`-th ([`Nic::open_with_rsc`]).
    rsc_storage: Option<&'b mut [u8]>,
}

impl<T: Transport, H: Hal, const N: usize, const M: usize> core::fmt::Debug
    for Nic<'_, T, H, N, M>
{
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("Nic")
            .field("info", &self.core.info)
            .field("link_up", &self.core.link_up)
            .field("stats", &self.core.stats)
            .finish()
    }
}

impl<'b, T: Transport, H: Hal, const N: usize, const M: usize> Nic<'b, T, H, N, M> {
    /// Whether a frame can be sent or queued now: room in the open section of the burst
    /// (for a small frame), or a free section and request slot.
    pub fn can_send(&self) -> bool {
        self.core.can_send(self.channel.requests_full())
    }

    /// What the handshake learned.
    pub fn info(&self) -> &NicInfo {
        &self.core.info
    }

    /// The offloads in effect ([`Offloads::NONE`] when the host offered none, refused the
    /// parameters, or [`NicConfig::offloads`] was off).
    pub fn offloads(&self) -> Offloads {
        self.core.info.offloads
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

    /// What the host said about an SR-IOV VF, and whether it confirmed the synthetic path.
    pub fn vf(&self) -> VfState {
        self.core.vf
    }

    /// The channel's relid.
    pub fn relid(&self) -> u32 {
        self.channel.relid()
    }
}
