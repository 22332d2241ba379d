//! Mock network VSP: the host side of the synthetic NIC (devices §2, §7.1, §7.7), a
//! [`DeviceModel`] for the mock VMBus host, written from the protocol document independently
//! of the guest driver (it parses and builds every message byte by byte here).
//!
//! It behaves like OpenVMM's netvsp where the facts describe it: accepts the six NVSP versions
//! up to a configured maximum; stays in its init phase until it has the NDIS version, the
//! receive buffer and (NVSP ≥ 2) SEND_NDIS_CONFIG, which must precede the receive buffer;
//! places received frames at offset 256 of 1806-byte slots with `msg_len` covering the slot
//! and a checksum PPI; keeps 16 slots for control messages; answers RNDIS INITIALIZE / QUERY /
//! SET through the receive buffer; completes every SEND_RNDIS_PKT with 108.
//!
//! What it rejects (each recorded in [`NetworkVsp::rejections`], tests assert on them):
//! - fatal, the channel is no longer serviced ([`NetworkVsp::fatal`]): an RNDIS packet before
//!   the init phase is over (`UnexpectedRndisPacket`), another NVSP type during it
//!   (`InvalidPacketData`), a repeated 100/101/104/125, RESET/SET_EX/INDICATE_STATUS or a
//!   second INITIALIZE (`RndisMessageTypeNotImplemented` / `InvalidRndisState`);
//! - completed with status 2: RNDIS control on a sub-channel (`NotSupportedOnSubChannel`), a
//!   PACKET with OOB fields, a VC handle or no data (`UnsupportedRndisBehavior`), a GPA-direct
//!   RNDIS message whose header or PPIs are not inside the first range (`HeaderSplit`);
//! - not processed at all: SEND_RNDIS_PKT without completion requested
//!   (`MissingTransactionId`).
//!
//! Faults: link down/up ([`NetworkVsp::set_link`]), withheld send completions
//! ([`NetworkVsp::withhold_completions`]), revoked buffers ([`NetworkVsp::revoke_buffers`]),
//! zero-length completions ([`NetworkVsp::empty_completions`]), raw RNDIS messages
//! ([`NetworkVsp::inject_rndis`]), raw transfer-page packets with arbitrary ranges
//! ([`NetworkVsp::inject_transfer_pages`]) and RSC fragment sequences
//! ([`NetworkVsp::inject_fragments`]). Once the guest enables RSC, TCP segments are coalesced
//! toward it (`rsc.rs`). Host requests: a VF association
//! ([`NetworkVsp::announce_vf`]) and a host-side data-path switch
//! ([`NetworkVsp::host_switch_data_path`]); the guest's SWITCH_DATA_PATH gets OpenVMM's empty
//! completion.

mod deliver;
mod in_flight;
pub mod offload;
mod rndis;
mod rsc;
mod rss;
mod switch;
pub mod tap;

use std::collections::{BTreeMap, VecDeque};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use crate::vmbus::{
    DeviceModel, HostChannel, HostPacket, PACKET_TYPE_COMPLETION, PACKET_TYPE_GPA_DIRECT,
    PACKET_TYPE_INBAND, PACKET_TYPE_XFER_PAGES,
};

pub use offload::{
    CapsReply, EnabledChecksums, EnabledOffloads, HostOffloadCaps, OffloadHostConfig, OffloadStats,
};
pub use rsc::{FIRST_FRAGMENT, Fragment, LAST_FRAGMENT, RscStats, SUB_ALLOCATION};
pub use rss::RssParameters;
pub use switch::{Sink, SwitchStats, VirtualSwitch};

/// Network adapter class GUID, devices §1.1 (a literal here, not the guest's table).
pub const NETWORK_CLASS: vmbus_guest::protocol::Guid =
    vmbus_guest::protocol::Guid::from_str_const("f8615163-df3e-46c5-913f-f2d2f965ed0e");

/// The six NVSP versions (devices §2.2), oldest first.
pub const NVSP_VERSIONS: [u32; 6] = [0x2, 0x3_0002, 0x4_0000, 0x5_0000, 0x6_0000, 0x6_0001];

const SECTION_SIZE: u32 = 6144;
const CONTROL_SLOTS: usize = 16;
const FRAME_OFFSET_IN_SLOT: usize = 256;
/// The receive buffer id the host expects back as the transfer page set id is whatever the
/// guest registered; frames per transfer-page packet when several wait.
const FRAMES_PER_PACKET: usize = 4;

/// How the mock NIC behaves.
#[derive(Clone, Debug)]
pub struct NetVspConfig {
    /// Highest NVSP version accepted (one of [`NVSP_VERSIONS`]).
    pub max_version: u32,
    /// The NIC's permanent MAC.
    pub mac: [u8; 6],
    /// Sub-channels the host can create (queue count − 1).
    pub max_subchannels: u32,
    /// Link state at start.
    pub link_up: bool,
    /// Send section size reported in SEND_SEND_BUF_COMPLETE (6144 on Hyper-V; other values
    /// test the guest's validation).
    pub section_size: u32,
    /// RNDIS max packets per message in INITIALIZE_COMPLETE (8 on Hyper-V): the most RNDIS
    /// messages the guest may pack into one send section.
    pub max_packets_per_message: u32,
    /// RNDIS packet alignment factor in INITIALIZE_COMPLETE (3 on Hyper-V: packed messages
    /// start at multiples of 8 bytes).
    pub packet_alignment_factor: u32,
    /// Task offloads: the capability reply and what the host accepts ([`offload`]).
    pub offload: OffloadHostConfig,
    /// SUBCHANNEL is all-or-nothing (OpenVMM): a request beyond what the host can give is
    /// refused with status 2; otherwise the host grants what it can.
    pub all_or_nothing: bool,
    /// The host answers the RSS capabilities query (otherwise NOT_SUPPORTED).
    pub rss: bool,
    /// Receive queues in the RSS capabilities (0 = `max_subchannels + 1`).
    pub rss_receive_queues: u32,
    /// Once every sub-channel is open, send SEND_INDIRECTION_TABLE `i mod n` (OpenVMM).
    pub send_table_on_open: bool,
}

impl Default for NetVspConfig {
    fn default() -> Self {
        Self {
            max_version: 0x6_0001,
            mac: [0x00, 0x15, 0x5D, 0x00, 0x00, 0x01],
            max_subchannels: 4,
            link_up: true,
            section_size: SECTION_SIZE,
            max_packets_per_message: 8,
            packet_alignment_factor: 3,
            offload: OffloadHostConfig::default(),
            all_or_nothing: true,
            rss: true,
            rss_receive_queues: 0,
            send_table_on_open: true,
        }
    }
}

#[derive(Debug)]
struct RecvBuffer {
    gpadl: u32,
    id: u16,
    slot_size: usize,
    free: VecDeque<usize>,
}

#[derive(Debug)]
struct SendBuffer {
    gpadl: u32,
    sections: u32,
}

#[derive(Debug)]
enum Outgoing {
    /// An RNDIS control message (reply or indication), any slot.
    Control(Vec<u8>),
    /// Raw bytes as one range (fault injection).
    Raw(Vec<u8>),
}

/// A hostile transfer-page packet: page set id, ranges (byte count, offset), payload.
type RawTransfer = (u16, Vec<(u32, u32)>, Vec<u8>);

#[derive(Debug)]
struct State {
    config: NetVspConfig,
    version: Option<u32>,
    ndis_version: Option<(u32, u32)>,
    ndis_config: Option<(u32, u64)>,
    recv: Option<RecvBuffer>,
    send: Option<SendBuffer>,
    rndis_initialized: bool,
    filter: u32,
    link_up: bool,
    fatal: Option<String>,
    rejections: Vec<String>,
    switch: Option<(VirtualSwitch, usize)>,
    /// Type-7 packets the guest has not completed: tid → slots.
    outstanding: in_flight::InFlight,
    to_guest: VecDeque<Outgoing>,
    raw_xfer: VecDeque<RawTransfer>,
    withhold: bool,
    /// Held send completions: (status, tid, channel index).
    withheld: Vec<(u32, u64, u16)>,
    refuse_control: bool,
    frames_from_guest: Vec<Vec<u8>>,
    /// Data SEND_RNDIS_PKTs (sections or page buffers) the guest sent.
    data_packets_from_guest: u64,
    /// Frames the guest sent (counted even when not kept).
    frames_from_guest_count: u64,
    /// Keep the frames the guest sends ([`NetworkVsp::keep_frames`]).
    keep_frames: bool,
    frames_to_guest: u64,
    /// A frame delivered over and over ([`NetworkVsp::generate`]): (frame, frames per
    /// transfer-page packet).
    generator: Option<(Vec<u8>, usize)>,
    /// Buffers of delivered frames, reused for the generator's copies.
    spare_frames: Vec<Vec<u8>>,
    /// Slot lists of completed transfer-page packets, reused for the next ones.
    spare_slots: Vec<Vec<usize>>,
    /// The ranges of the transfer-page packet being assembled (reused).
    ranges: Vec<(u32, u32)>,
    /// The bytes of the guest's last send section or page buffers (reused).
    sent_bytes: Vec<u8>,
    subchannels: u32,
    completions_from_guest: u64,
    /// The guest sent RNDIS HALT.
    halted: bool,
    /// The host forgot both buffers ([`NetworkVsp::revoke_buffers`]).
    revoked: bool,
    /// SEND_RNDIS_PKT completions carry no payload (OpenVMM does so for some messages).
    empty_completions: bool,
    /// In-band NVSP messages for the guest, with completion requested: (tid, message).
    nvsp_to_guest: VecDeque<(u64, Vec<u8>)>,
    /// Host-initiated requests (VF association, data-path switch) the guest has not completed.
    host_requests: Vec<u64>,
    /// Completions the guest sent to host-initiated requests: (tid, payload).
    host_request_completions: Vec<(u64, Vec<u8>)>,
    /// SWITCH_DATA_PATH values the guest sent.
    data_path_requests: Vec<u32>,
    /// Task offloads.
    offload: offload::OffloadState,
    /// The checksum PPI value of the generator's frame (computed once).
    generator_bits: Option<u32>,
    /// vRSS: parameters, per-channel frames, send table.
    rss: rss::Rss,
    /// Receive segment coalescing toward the guest.
    rsc: rsc::RscState,
}

/// The mock NIC; a cheap clone sharing one state (keep one to inject faults).
#[derive(Clone, Debug)]
pub struct NetworkVsp {
    shared: Arc<Mutex<State>>,
    /// Sub-channel index of the channel this model serves (0 = primary).
    index: u16,
}

fn u16_at(b: &[u8], at: usize) -> Option<u16> {
    Some(u16::from_le_bytes(b.get(at..at + 2)?.try_into().ok()?))
}

fn u32_at(b: &[u8], at: usize) -> Option<u32> {
    Some(u32::from_le_bytes(b.get(at..at + 4)?.try_into().ok()?))
}

fn words(w: &[u32]) -> Vec<u8> {
    words_padded(w, 0)
}

/// `w` little-endian, zero-padded to at least `len` bytes, in one allocation (completions
/// are built this way once per packet).
fn words_padded(w: &[u32], len: usize) -> Vec<u8> {
    let len = len.max(w.len() * 4);
    let mut b = Vec::with_capacity(len);
    for x in w {
        b.extend_from_slice(&x.to_le_bytes());
    }
    b.resize(len, 0);
    b
}

impl NetworkVsp {
    /// A NIC not attached to a switch (frames the guest sends are only recorded).
    pub fn new(config: NetVspConfig) -> Self {
        let link_up = config.link_up;
        let offload = offload::OffloadState::new(config.offload.clone());
        Self {
            shared: Arc::new(Mutex::new(State {
                config,
                version: None,
                ndis_version: None,
                ndis_config: None,
                recv: None,
                send: None,
                rndis_initialized: false,
                filter: 0,
                link_up,
                fatal: None,
                rejections: Vec::new(),
                switch: None,
                outstanding: in_flight::InFlight::default(),
                to_guest: VecDeque::new(),
                raw_xfer: VecDeque::new(),
                withhold: false,
                withheld: Vec::new(),
                refuse_control: false,
                frames_from_guest: Vec::new(),
                data_packets_from_guest: 0,
                frames_from_guest_count: 0,
                keep_frames: true,
                frames_to_guest: 0,
                generator: None,
                spare_frames: Vec::new(),
                spare_slots: Vec::new(),
                ranges: Vec::new(),
                sent_bytes: Vec::new(),
                subchannels: 0,
                completions_from_guest: 0,
                halted: false,
                revoked: false,
                empty_completions: false,
                nvsp_to_guest: VecDeque::new(),
                host_requests: Vec::new(),
                host_request_completions: Vec::new(),
                data_path_requests: Vec::new(),
                offload,
                generator_bits: None,
                rss: rss::Rss::default(),
                rsc: rsc::RscState::default(),
            })),
            index: 0,
        }
    }

    /// Plugs the NIC into `switch` (a new port with the NIC's MAC).
    pub fn on_switch(self, switch: &VirtualSwitch) -> Self {
        {
            let mut s = self.lock();
            let port = switch.add_port(s.config.mac);
            switch.set_link(port, s.link_up);
            s.switch = Some((switch.clone(), port));
        }
        self
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        self.shared.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// The negotiated NVSP version.
    pub fn version(&self) -> Option<u32> {
        self.lock().version
    }

    /// The NDIS version the guest announced.
    pub fn ndis_version(&self) -> Option<(u32, u32)> {
        self.lock().ndis_version
    }

    /// SEND_NDIS_CONFIG (frame MTU, capabilities), if received.
    pub fn ndis_config(&self) -> Option<(u32, u64)> {
        self.lock().ndis_config
    }

    /// The packet filter the guest set.
    pub fn filter(&self) -> u32 {
        self.lock().filter
    }

    /// Every guest action a real host rejects, in order.
    pub fn rejections(&self) -> Vec<String> {
        self.lock().rejections.clone()
    }

    /// Why the host stopped servicing the channel, if it did.
    pub fn fatal(&self) -> Option<String> {
        self.lock().fatal.clone()
    }

    /// Frames the guest sent, in order.
    pub fn frames_from_guest(&self) -> Vec<Vec<u8>> {
        self.lock().frames_from_guest.clone()
    }

    /// Data SEND_RNDIS_PKT packets the guest sent (several frames each when packed).
    pub fn data_packets_from_guest(&self) -> u64 {
        self.lock().data_packets_from_guest
    }

    /// Frames the guest sent, kept or not.
    pub fn frames_from_guest_count(&self) -> u64 {
        self.lock().frames_from_guest_count
    }

    /// Whether the frames the guest sends are kept for [`Self::frames_from_guest`] (default)
    /// or only counted (long runs such as benchmarks).
    pub fn keep_frames(&self, on: bool) {
        self.lock().keep_frames = on;
    }

    /// Traffic generator: `frame` is delivered to the guest over and over, as fast as receive
    /// slots come back, in transfer-page packets of up to `per_packet` frames (clamped to
    /// 1..=64); `None` stops it. Frames go out only once the guest set a packet filter.
    pub fn generate(&self, frame: Option<(&[u8], usize)>) {
        let mut s = self.lock();
        s.generator = frame.map(|(f, n)| (f.to_vec(), n.clamp(1, 64)));
        s.generator_bits = None;
    }

    /// Replaces the offload behaviour (takes effect with the next query or set; what the
    /// guest enabled stays until it sets new parameters or closes).
    pub fn set_offload_config(&self, config: OffloadHostConfig) {
        self.lock().offload.config = config;
    }

    /// Counters of the offload model; `tx_bad_checksums` must stay 0.
    pub fn offload_stats(&self) -> OffloadStats {
        self.lock().offload.stats
    }

    /// The offloads the guest enabled through TCP_OFFLOAD_PARAMETERS.
    pub fn offloads_enabled(&self) -> EnabledOffloads {
        self.lock().offload.enabled
    }

    /// Fault: the next `n` TCP/UDP frames delivered to the guest get a corrupted checksum
    /// before the host checks it (so a receive offload reports them bad).
    pub fn corrupt_rx_checksums(&self, n: u32) {
        self.lock().offload.corrupt_rx = n;
    }

    /// Hostile host: every delivered frame carries these checksum PPI bits instead of what
    /// the host found (`None`: the real verdict again).
    pub fn force_rx_checksum_bits(&self, bits: Option<u32>) {
        let mut s = self.lock();
        s.offload.forced_rx_bits = bits;
        s.generator_bits = None;
    }

    /// Whether every IP frame the guest sends has its checksums verified (default on; off
    /// for benchmarks, where it would be host work the baseline does not do). Frames with a
    /// checksum PPI are always checked.
    pub fn verify_checksums(&self, on: bool) {
        self.lock().offload.verify = on;
    }

    /// Frames delivered to the guest.
    pub fn frames_to_guest(&self) -> u64 {
        self.lock().frames_to_guest
    }

    /// Transfer-page packets the guest has not completed yet.
    pub fn receives_outstanding(&self) -> usize {
        self.lock().outstanding.len()
    }

    /// Receive completions the guest sent.
    pub fn receive_completions(&self) -> u64 {
        self.lock().completions_from_guest
    }

    /// Sub-channels created on request.
    pub fn subchannels(&self) -> u32 {
        self.lock().subchannels
    }

    /// Changes the link state: an INDICATE_STATUS MEDIA_CONNECT / MEDIA_DISCONNECT goes to
    /// the guest and the switch port follows.
    pub fn set_link(&self, up: bool) {
        let mut s = self.lock();
        s.link_up = up;
        if let Some((sw, port)) = &s.switch {
            sw.set_link(*port, up);
        }
        let code = if up { 0x4001_000B } else { 0x4001_000C };
        s.to_guest
            .push_back(Outgoing::Control(indicate_status(code, &[])));
    }

    /// Sends an INDICATE_STATUS with `code` and `buffer` (e.g. NETWORK_CHANGE 0x40010018).
    pub fn indicate(&self, code: u32, buffer: &[u8]) {
        self.lock()
            .to_guest
            .push_back(Outgoing::Control(indicate_status(code, buffer)));
    }

    /// Holds SEND_RNDIS_PKT completions (on) or releases the held ones (off).
    pub fn withhold_completions(&self, on: bool) {
        self.lock().withhold = on;
    }

    /// Completes every RNDIS control message with NVSP status 2 without processing it (a
    /// host that refuses control, as on a sub-channel).
    pub fn refuse_control(&self, on: bool) {
        self.lock().refuse_control = on;
    }

    /// Completions currently held back.
    pub fn withheld(&self) -> usize {
        self.lock().withheld.len()
    }

    /// Delivers `bytes` as one receive range, whatever they hold (malformed RNDIS).
    pub fn inject_rndis(&self, bytes: &[u8]) {
        self.lock()
            .to_guest
            .push_back(Outgoing::Raw(bytes.to_vec()));
    }

    /// Sends a transfer-page packet with the given page set id, ranges and in-band payload,
    /// without checking anything (hostile host). It expects a completion like any other.
    pub fn inject_transfer_pages(&self, set_id: u16, ranges: &[(u32, u32)], payload: &[u8]) {
        self.lock()
            .raw_xfer
            .push_back((set_id, ranges.to_vec(), payload.to_vec()));
    }

    /// Whether the guest sent RNDIS HALT.
    pub fn halted(&self) -> bool {
        self.lock().halted
    }

    /// Fault: the host forgets the guest's receive and send buffers (as after a revocation).
    /// Nothing more reaches the guest; sends through a section are completed with status 2.
    pub fn revoke_buffers(&self) {
        let mut s = self.lock();
        s.revoked = true;
        s.recv = None;
        s.send = None;
        s.outstanding.clear();
    }

    /// Completes every SEND_RNDIS_PKT with a zero-length completion (no NVSP header), which
    /// hosts may send (devices §2.5).
    pub fn empty_completions(&self, on: bool) {
        self.lock().empty_completions = on;
    }

    /// Announces an SR-IOV VF (devices §2.17): SEND_VF_ASSOCIATION {allocated, serial} with
    /// completion requested and OpenVMM's transaction id 0x8000_0000_0000_0000.
    pub fn announce_vf(&self, allocated: bool, serial: u32) {
        let mut s = self.lock();
        let m = s.padded(&[128, u32::from(allocated), serial]);
        s.nvsp_to_guest.push_back((0x8000_0000_0000_0000, m));
    }

    /// The host switches the data path itself (OpenVMM, before a VF goes away): SWITCH_DATA_PATH
    /// {path} with completion requested, transaction id 0x8000_0000_0000_0001.
    pub fn host_switch_data_path(&self, path: u32) {
        let mut s = self.lock();
        let m = s.padded(&[129, path]);
        s.nvsp_to_guest.push_back((0x8000_0000_0000_0001, m));
    }

    /// Completions the guest sent to host-initiated NVSP requests: (tid, payload).
    pub fn host_request_completions(&self) -> Vec<(u64, Vec<u8>)> {
        self.lock().host_request_completions.clone()
    }

    /// SWITCH_DATA_PATH values the guest sent.
    pub fn data_path_requests(&self) -> Vec<u32> {
        self.lock().data_path_requests.clone()
    }

    /// A sub-channel model sharing this NIC's state.
    fn sub(&self, index: u16) -> Self {
        Self {
            shared: self.shared.clone(),
            index,
        }
    }
}

fn indicate_status(code: u32, buffer: &[u8]) -> Vec<u8> {
    let len = 20 + buffer.len() as u32;
    let off = if buffer.is_empty() { 0 } else { 12 };
    let mut m = words(&[7, len, code, buffer.len() as u32, off]);
    m.extend_from_slice(buffer);
    m
}

impl State {
    fn nvsp_size(&self) -> usize {
        if self.version == Some(0x6_0001) {
            40
        } else {
            32
        }
    }

    fn padded(&self, w: &[u32]) -> Vec<u8> {
        words_padded(w, self.nvsp_size())
    }

    fn reject(&mut self, ch: &HostChannel, what: String) {
        log::warn!("network VSP channel {}: {what}", ch.relid());
        self.rejections.push(what);
    }

    fn die(&mut self, ch: &HostChannel, what: String) {
        self.reject(ch, what.clone());
        self.fatal = Some(what);
    }

    fn init_phase_over(&self) -> bool {
        let v = self.version.unwrap_or(0);
        // Buffers revoked by the host do not put the channel back into its init phase.
        self.revoked
            || self.ndis_version.is_some()
                && self.recv.is_some()
                && (v < 0x3_0002 || self.ndis_config.is_some())
    }

    fn complete(&mut self, ch: &mut HostChannel, tid: u64, payload: &[u8]) {
        if let Err(e) = ch.send_completion(tid, payload) {
            log::warn!("network VSP: completion not sent: {e}");
        }
    }

    fn on_packet(&mut self, ch: &mut HostChannel, p: &HostPacket, index: u16) -> Option<u32> {
        if self.fatal.is_some() {
            return None;
        }
        if p.packet_type == PACKET_TYPE_COMPLETION {
            if let Some(i) = self
                .host_requests
                .iter()
                .position(|t| *t == p.transaction_id)
            {
                self.host_requests.remove(i);
                self.host_request_completions
                    .push((p.transaction_id, p.payload.clone()));
                return None;
            }
            self.completions_from_guest += 1;
            if self.revoked {
                // Completions of packets sent before the revocation: nothing to return.
                return None;
            }
            match self.outstanding.remove(p.transaction_id) {
                Some(mut slots) => {
                    self.check_completion_channel(ch, p.transaction_id, index);
                    if u32_at(&p.payload, 0) != Some(108) {
                        self.reject(
                            ch,
                            "receive completion is not SEND_RNDIS_PKT_COMPLETE".into(),
                        );
                    }
                    if let Some(r) = self.recv.as_mut() {
                        r.free.extend(slots.drain(..));
                    }
                    if self.spare_slots.len() < deliver::SPARE_SLOT_LISTS {
                        self.spare_slots.push(slots);
                    }
                }
                None => ch.protocol_error(format!(
                    "completion for unknown transfer-page packet {:#x}",
                    p.transaction_id
                )),
            }
            return None;
        }
        if p.packet_type != PACKET_TYPE_INBAND && p.packet_type != PACKET_TYPE_GPA_DIRECT {
            self.die(
                ch,
                format!("InvalidPacketData: packet type {}", p.packet_type),
            );
            return None;
        }
        let Some(t) = u32_at(&p.payload, 0) else {
            self.die(ch, "InvalidPacketData: no NVSP header".into());
            return None;
        };
        if index != 0 && t != 107 {
            self.die(ch, format!("InvalidPacketData: NVSP {t} on a sub-channel"));
            return None;
        }
        let Some(version) = self.version else {
            if t != 1 {
                self.die(ch, format!("InvalidPacketData: NVSP {t} before INIT"));
                return None;
            }
            let v = u32_at(&p.payload, 4).unwrap_or(0);
            let ok = NVSP_VERSIONS.contains(&v) && v <= self.config.max_version;
            if ok {
                self.version = Some(v);
            }
            let neg = if v == 0x2 && ok { 2 } else { 0xFFFF_FFFF };
            let m = self.padded(&[2, neg, 34, if ok { 1 } else { 2 }]);
            if !p.completion_requested() {
                ch.protocol_error("NVSP INIT without completion requested");
                return None;
            }
            self.complete(ch, p.transaction_id, &m);
            return None;
        };
        if !self.init_phase_over() {
            match t {
                100 if self.ndis_version.is_none() => {
                    self.ndis_version = Some((
                        u32_at(&p.payload, 4).unwrap_or(0),
                        u32_at(&p.payload, 8).unwrap_or(0),
                    ));
                }
                125 if self.ndis_config.is_none() && version >= 0x3_0002 => {
                    let mtu = u32_at(&p.payload, 4).unwrap_or(0);
                    let caps = u64::from(u32_at(&p.payload, 12).unwrap_or(0))
                        | u64::from(u32_at(&p.payload, 16).unwrap_or(0)) << 32;
                    let mtu = if (1514..=9216).contains(&mtu) {
                        mtu
                    } else {
                        1514
                    };
                    self.ndis_config = Some((mtu, caps));
                }
                101 if self.recv.is_none() => {
                    if version >= 0x3_0002 && self.ndis_config.is_none() {
                        self.die(
                            ch,
                            "InvalidPacketData: receive buffer before NDIS config".into(),
                        );
                        return None;
                    }
                    self.on_recv_buffer(ch, p);
                }
                104 if self.send.is_none() => self.on_send_buffer(ch, p),
                107 => self.die(
                    ch,
                    "UnexpectedRndisPacket: RNDIS before the init phase ended".into(),
                ),
                other => self.die(
                    ch,
                    format!("InvalidPacketData: NVSP {other} in the init phase"),
                ),
            }
            return None;
        }
        match t {
            107 => self.on_rndis(ch, p, index),
            104 if self.send.is_none() => {
                // The send buffer must come before the first RNDIS message; accepted here
                // only while RNDIS has not started.
                if self.rndis_initialized {
                    self.die(
                        ch,
                        "InvalidPacketData: send buffer after RNDIS started".into(),
                    );
                } else {
                    self.on_send_buffer(ch, p);
                }
            }
            103 | 106 => {}
            133 => return self.on_subchannel(ch, p, version),
            // NVSP ≥ 4 (devices §2.17): OpenVMM answers with an empty completion.
            129 if version >= 0x4_0000 => {
                let path = u32_at(&p.payload, 4).unwrap_or(u32::MAX);
                if path > 1 {
                    self.die(ch, format!("InvalidPacketData: data path {path}"));
                    return None;
                }
                self.data_path_requests.push(path);
                if p.completion_requested() {
                    self.complete(ch, p.transaction_id, &[]);
                }
            }
            100 | 101 | 104 | 125 => self.die(ch, format!("InvalidPacketData: repeated NVSP {t}")),
            other => self.die(ch, format!("InvalidPacketData: NVSP {other}")),
        }
        None
    }

    fn on_recv_buffer(&mut self, ch: &mut HostChannel, p: &HostPacket) {
        let gpadl = u32_at(&p.payload, 4).unwrap_or(0);
        let id = u16_at(&p.payload, 8).unwrap_or(0);
        let frame = self.ndis_config.map_or(1514, |c| c.0) as usize;
        let slot_size = FRAME_OFFSET_IN_SLOT + frame + 36;
        let len = ch.gpadl_len(gpadl).unwrap_or(0) as usize;
        let slots = len / slot_size;
        let m = if slots > CONTROL_SLOTS {
            self.recv = Some(RecvBuffer {
                gpadl,
                id,
                slot_size,
                free: (0..slots).collect(),
            });
            let (s, n) = (slot_size as u32, slots as u32);
            self.padded(&[102, 1, 1, 0, s, n, s * n])
        } else {
            self.reject(
                ch,
                format!("receive buffer of {len} bytes holds no data slot"),
            );
            self.padded(&[102, 2, 0])
        };
        if p.completion_requested() {
            self.complete(ch, p.transaction_id, &m);
        } else {
            ch.protocol_error("SEND_RECV_BUF without completion requested");
        }
    }

    fn on_send_buffer(&mut self, ch: &mut HostChannel, p: &HostPacket) {
        let gpadl = u32_at(&p.payload, 4).unwrap_or(0);
        let len = ch.gpadl_len(gpadl).unwrap_or(0);
        let size = self.config.section_size.max(1);
        let sections = (len / u64::from(size)) as u32;
        let m = if sections > 0 {
            self.send = Some(SendBuffer { gpadl, sections });
            self.padded(&[105, 1, size])
        } else {
            self.padded(&[105, 2, 0])
        };
        if p.completion_requested() {
            self.complete(ch, p.transaction_id, &m);
        } else {
            ch.protocol_error("SEND_SEND_BUF without completion requested");
        }
    }

    fn on_subchannel(&mut self, ch: &mut HostChannel, p: &HostPacket, version: u32) -> Option<u32> {
        let op = u32_at(&p.payload, 4).unwrap_or(0);
        let n = u32_at(&p.payload, 8).unwrap_or(0);
        if n >= self.rss_queues() {
            // OpenVMM grants only below its queue count; a guest should never ask for more
            // than the RSS capabilities it was given allow.
            self.reject(
                ch,
                format!(
                    "SUBCHANNEL asks for {n}, beyond the {} queues advertised",
                    self.rss_queues()
                ),
            );
        }
        let slots = self.recv.as_ref().map_or(0, |r| r.free.len());
        let fits = |n: u32| {
            n <= self.config.max_subchannels
                && slots.saturating_sub(CONTROL_SLOTS) / (n as usize + 1) >= 1
        };
        // A host that is not all-or-nothing grants the most it can.
        let n = if self.config.all_or_nothing {
            n
        } else {
            (0..=n).rev().find(|k| fits(*k)).unwrap_or(0)
        };
        let ok = version >= 0x5_0000 && op == 1 && n > 0 && fits(n) && self.subchannels == 0;
        let m = self.padded(&[133, if ok { 1 } else { 2 }, if ok { n } else { 0 }]);
        self.complete(ch, p.transaction_id, &m);
        if ok {
            self.subchannels = n;
            Some(n)
        } else {
            None
        }
    }
}

impl DeviceModel for NetworkVsp {
    fn on_packet(&mut self, ch: &mut HostChannel, packet: &HostPacket) {
        let subs = {
            let mut s = self.lock();
            let r = s.on_packet(ch, packet, self.index);
            // A receive completion only frees slots, a data SEND_RNDIS_PKT is completed
            // already: what follows goes out in `poll`, once per host step (not once per
            // packet read).
            let completed = packet.packet_type == PACKET_TYPE_COMPLETION
                || u32_at(&packet.payload, 0) == Some(107) && u32_at(&packet.payload, 4) == Some(0);
            if !completed {
                s.deliver(ch, self.index);
            }
            r
        };
        if let Some(n) = subs {
            for i in 1..=n as u16 {
                let mut offer = ch.offer().clone();
                offer.sub_channel_index = i;
                ch.add_offer(offer, Box::new(self.sub(i)));
            }
        }
    }

    fn poll(&mut self, ch: &mut HostChannel) {
        self.lock().deliver(ch, self.index);
    }

    fn on_open(&mut self, _ch: &mut HostChannel) {
        if self.index != 0 {
            self.lock().subchannel_opened(self.index);
        }
    }

    fn on_close(&mut self) {
        if self.index != 0 {
            self.lock().subchannel_closed(self.index);
        }
        if self.index == 0 {
            let mut s = self.lock();
            s.version = None;
            s.ndis_version = None;
            s.ndis_config = None;
            s.recv = None;
            s.send = None;
            s.rndis_initialized = false;
            s.filter = 0;
            s.outstanding.clear();
            s.withheld.clear();
            s.subchannels = 0;
            s.revoked = false;
            s.offload.enabled = EnabledOffloads::default();
            s.generator_bits = None;
            s.host_requests.clear();
            s.rss_reset();
            s.rsc.reset();
            if let Some((sw, port)) = &s.switch {
                sw.set_filter(*port, 0);
            }
        }
    }
}
