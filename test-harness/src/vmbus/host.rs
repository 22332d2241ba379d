//! The mock host's state, public controls and the step loop.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use vmbus_guest::protocol::{
    FeatureFlags, MESSAGE_CONNECTION_ID, MESSAGE_CONNECTION_ID_MULTI_CLIENT, MessageHeader,
    MessageType, OfferChannel, RescindChannelOffer, SYNIC_MESSAGE_TYPE_CHANNEL, VMBUS_MESSAGE_SINT,
    VmbusVersion,
};
use zerocopy::IntoBytes;
use zerocopy::byteorder::little_endian::U64;

use super::channel::{ChannelState, HostChannel, OpenRings, SignalTarget};
use super::gpadl::GpadlTable;
use super::mem::GuestRam;
use super::ring::{HostReader, HostWriter};
use super::{DeviceModel, DeviceOffer, ErrorLog, HostRelease};
use crate::hv::{FreedWhileMapped, HostMapping, MockHypervisor, ViolationHook};

/// The message connection id a ≥ 5.0 host returns in VERSION_RESPONSE @12 by default. It is
/// deliberately neither 1 nor 4 so a guest that does not switch to the returned id is caught.
pub const DEFAULT_MESSAGE_CONNECTION_ID: u32 = 0x0001_0004;
/// Guest→host signalling connection id of relid `r` is this base + `r` (offer @192).
pub const CHANNEL_CONNECTION_ID_BASE: u32 = 0x0002_0000;
/// 6.0 features the Copper host grants by default (requested ∩ this): guest-specified signal
/// parameters, interrupt redirection, modify connection, client id (vmbus-core §5.6).
pub const DEFAULT_HOST_FEATURES: u32 = FeatureFlags::GUEST_SPECIFIED_SIGNAL_PARAMETERS.bits()
    | FeatureFlags::CHANNEL_INTERRUPT_REDIRECTION.bits()
    | FeatureFlags::MODIFY_CONNECTION.bits()
    | FeatureFlags::CLIENT_ID.bits();
/// NTSTATUS the host puts in failed OPENCHANNEL_RESULT / GPADL_CREATED messages.
pub const STATUS_UNSUCCESSFUL: u32 = 0xC000_0001;

/// Capacity of each message port (messages not yet taken by a step).
const PORT_CAPACITY: usize = 4096;

/// Where the guest raises monitor id `monitor_id` on the child→parent monitor page: the byte
/// offset of the `pending` word and the bit to test in it; `None` for ids beyond 127.
///
/// The host's own statement of vmbus-core §8.1/§8.2 (not the guest library's): the page has 4
/// trigger groups of 32 monitor ids (ids 0..=127); group `g` = `monitor_id / 32` is the 8-byte
/// pair {pending u32, armed u32} at 0x008 + 8·g, and the guest sets bit `monitor_id % 32` of
/// its `pending` word.
pub(super) fn monitor_pending_bit(monitor_id: u8) -> Option<(u64, u32)> {
    const TRIGGER_GROUPS_OFFSET: u64 = 0x008;
    const TRIGGER_GROUP_SIZE: u64 = 8;
    const IDS_PER_GROUP: u8 = 32;
    const GROUPS: u8 = 4;
    let group = monitor_id / IDS_PER_GROUP;
    if group >= GROUPS {
        return None;
    }
    Some((
        TRIGGER_GROUPS_OFFSET + u64::from(group) * TRIGGER_GROUP_SIZE,
        1 << (monitor_id % IDS_PER_GROUP),
    ))
}

/// The negotiated connection (after an accepted INITIATE_CONTACT).
pub(super) struct Connection {
    pub version: VmbusVersion,
    pub features: u32,
    pub target_vp: u32,
    pub sint: u8,
    /// Connection id every later message must arrive on.
    pub message_connection_id: u32,
    /// (parent→child, child→parent) monitor page GPAs.
    pub monitor_pages: Option<(u64, u64)>,
    /// < 2.4: legacy interrupt page GPA.
    pub interrupt_page: Option<u64>,
    pub offers_requested: bool,
    pub offers_delivered: bool,
    /// The host's mappings of the monitor and legacy interrupt pages: it writes them until
    /// UNLOAD_RESPONSE (vmbus-core §10.3), so they end with the connection.
    pub host_pages: Vec<HostMapping>,
}

/// Where a channel is in its open/close cycle.
pub(super) enum Phase {
    Idle,
    Opening(Box<PendingOpen>),
    Open,
    Closed,
}

/// An accepted OPENCHANNEL whose result is withheld.
pub(super) struct PendingOpen {
    pub open_id: u32,
    pub rings: OpenRings,
    /// 6.0 guest-specified signalling connection id.
    pub guest_connection_id: Option<u32>,
    /// Pages of the ring GPADL.
    pub pages: Vec<u64>,
    /// Downstream page offset.
    pub downstream: usize,
}

/// One registered device channel.
pub(super) struct Entry {
    pub model: Box<dyn DeviceModel>,
    pub ch: HostChannel,
    pub connection_id: u32,
    /// 6.0 guest-specified signalling connection id.
    pub guest_connection_id: Option<u32>,
    pub monitor_id: Option<u8>,
    pub offered: bool,
    pub rescinded: bool,
    pub phase: Phase,
    pub withhold_open: bool,
    /// The host does not read the outbound ring ([`MockVmbusHost::stall_reading`]).
    pub reading_stalled: bool,
    pub signalled: bool,
    pub signal_count: u64,
    pub ring_gpadl: Option<u32>,
    /// Downstream page offset of the current ring GPADL.
    pub downstream: usize,
}

/// A mock Hyper-V VMBus host (channel manager plus the host end of every ring).
pub struct MockVmbusHost {
    pub(super) hv: MockHypervisor,
    pub(super) ram: GuestRam,
    pub(super) release: HostRelease,
    pub(super) errors: ErrorLog,
    pub(super) conn: Option<Connection>,
    pub(super) unloaded: bool,
    pub(super) channels: BTreeMap<u32, Entry>,
    pub(super) released: BTreeSet<u32>,
    pub(super) gpadls: Arc<Mutex<GpadlTable>>,
    pub(super) host_features: u32,
    pub(super) multi_client_connection_id: u32,
    pub(super) poll_rings: bool,
    /// With `poll_rings`: the host thread is spinning on the rings, so their interrupt masks
    /// are set ([`Self::set_polling`]).
    pub(super) polling: bool,
    pub(super) stray_signals: u64,
    pub(super) connection_state: u8,
    pub(super) fail_next_open: BTreeMap<u32, u32>,
    pub(super) fail_next_gpadl: Option<u32>,
    /// Reports a guest free of host-mapped memory into `errors`.
    pub(super) map_hook: ViolationHook,
    /// Fault injection ([`MockVmbusHost::withhold_gpadl_torndown`]).
    pub(super) withhold_torndown: bool,
    /// GPADLs whose teardown was accepted but whose GPADL_TORNDOWN is withheld (still live).
    pub(super) withheld_torndowns: Vec<u32>,
    /// GPA-direct requests of channels closed while TORNDOWN is withheld: the host still
    /// works on them, so their pages stay mapped.
    pub(super) lingering_requests: Vec<HostMapping>,
    /// A buffer a step reuses (no allocation per step).
    signal_buf: Vec<(u32, u16)>,
    /// [`MockHypervisor::guest_activity`] at the last step.
    seen_activity: u64,
}

impl MockVmbusHost {
    /// A host imitating `release` on `hv`. Connects message port 1, and for releases with
    /// VMBus ≥ 5.0 also port 4 and the returned message connection id; on older releases a
    /// post to connection 4 fails with HV_STATUS_INVALID_CONNECTION_ID because nothing is
    /// connected there.
    pub fn new(hv: MockHypervisor, release: HostRelease) -> Self {
        hv.connect_message_port(MESSAGE_CONNECTION_ID, PORT_CAPACITY);
        if release.has_multi_client_connection() {
            hv.connect_message_port(MESSAGE_CONNECTION_ID_MULTI_CLIENT, PORT_CAPACITY);
            hv.connect_message_port(DEFAULT_MESSAGE_CONNECTION_ID, PORT_CAPACITY);
        }
        let errors = ErrorLog::default();
        let map_hook: ViolationHook = {
            let errors = errors.clone();
            Arc::new(move |v: &FreedWhileMapped| errors.push(v.to_string()))
        };
        Self {
            ram: GuestRam::new(hv.clone()),
            gpadls: Arc::new(Mutex::new(GpadlTable::new(hv.clone(), map_hook.clone()))),
            hv,
            release,
            errors,
            conn: None,
            unloaded: false,
            channels: BTreeMap::new(),
            released: BTreeSet::new(),
            host_features: DEFAULT_HOST_FEATURES,
            multi_client_connection_id: DEFAULT_MESSAGE_CONNECTION_ID,
            poll_rings: false,
            polling: false,
            stray_signals: 0,
            connection_state: 0,
            fail_next_open: BTreeMap::new(),
            fail_next_gpadl: None,
            map_hook,
            withhold_torndown: false,
            withheld_torndowns: Vec::new(),
            lingering_requests: Vec::new(),
            signal_buf: Vec::new(),
            seen_activity: 0,
        }
    }

    /// The partition the host sits on.
    pub fn hypervisor(&self) -> &MockHypervisor {
        &self.hv
    }

    /// The release being imitated.
    pub fn release(&self) -> HostRelease {
        self.release
    }

    /// Sets the 6.0 feature flags the host is willing to grant (default
    /// [`DEFAULT_HOST_FEATURES`]).
    pub fn set_host_features(&mut self, features: u32) {
        self.host_features = features;
    }

    /// Sets the message connection id returned to ≥ 5.0 guests (takes effect at the next
    /// INITIATE_CONTACT; the port is connected now).
    pub fn set_message_connection_id(&mut self, id: u32) {
        self.hv.connect_message_port(id, PORT_CAPACITY);
        self.multi_client_connection_id = id;
    }

    /// When on, every open ring is read on every step even without a signal from the guest.
    /// Off by default so a guest that forgets to signal is caught (its packets are never seen).
    pub fn set_poll_rings(&mut self, on: bool) {
        self.poll_rings = on;
        if !on {
            self.unmask_rings();
        }
    }

    /// With ring polling on ([`Self::set_poll_rings`]): `true` = the host is watching every
    /// outbound ring right now (a spinning host thread), so it sets their interrupt masks and
    /// the guest does not signal; `false` = it is about to stop watching, so the masks are
    /// cleared (followed by a full barrier: the caller steps once more before it sleeps, to
    /// catch packets committed while they were set). Without ring polling the masks stay
    /// clear: the host reads a ring only when signalled.
    pub fn set_polling(&mut self, on: bool) {
        self.polling = on;
        if !on {
            self.unmask_rings();
        }
    }

    fn unmask_rings(&mut self) {
        for e in self.channels.values_mut() {
            if let Some(r) = e.ch.rings.as_mut() {
                r.reader.set_mask(false);
            }
        }
    }

    pub(super) fn lock_gpadls(&self) -> MutexGuard<'_, GpadlTable> {
        self.gpadls.lock().unwrap_or_else(PoisonError::into_inner)
    }

    pub(super) fn error(&self, e: String) {
        self.errors.push(e);
    }

    /// (VP, SINT) host→guest control messages go to.
    pub(super) fn message_target(&self) -> (u32, u8) {
        self.conn
            .as_ref()
            .map_or((0, VMBUS_MESSAGE_SINT), |c| (c.target_vp, c.sint))
    }

    /// Delivers a VMBus message to the guest's control VP and SINT.
    pub(super) fn send(&self, bytes: &[u8]) {
        let (vp, sint) = self.message_target();
        self.send_to(vp, sint, bytes);
    }

    pub(super) fn send_to(&self, vp: u32, sint: u8, bytes: &[u8]) {
        if let Err(e) = self
            .hv
            .deliver_message(vp, sint, SYNIC_MESSAGE_TYPE_CHANNEL, bytes)
        {
            self.error(format!(
                "cannot deliver {} to VP {vp} SINT {sint}: {e}",
                MessageType(u32::from_le_bytes([bytes[0], bytes[1], bytes[2], bytes[3]]))
            ));
        }
    }

    /// Registers a device. Before the guest's REQUESTOFFERS it is offered with the others;
    /// after ALLOFFERS_DELIVERED the OFFERCHANNEL is sent immediately (hot add). Returns the
    /// relid: the lowest free one, from 1.
    pub fn add_device(&mut self, offer: DeviceOffer, model: Box<dyn DeviceModel>) -> u32 {
        let relid = (1..)
            .find(|r| !self.channels.contains_key(r))
            .unwrap_or(u32::MAX);
        self.released.remove(&relid);
        let monitor_id = if offer.wants_monitor() {
            (0u8..128).find(|m| self.channels.values().all(|e| e.monitor_id != Some(*m)))
        } else {
            None
        };
        let connection_id = CHANNEL_CONNECTION_ID_BASE + relid;
        self.hv.connect_event_port(connection_id);
        let ch = HostChannel::new(
            relid,
            offer,
            self.hv.clone(),
            self.gpadls.clone(),
            self.errors.clone(),
            self.map_hook.clone(),
        );
        self.channels.insert(
            relid,
            Entry {
                model,
                ch,
                connection_id,
                guest_connection_id: None,
                monitor_id,
                offered: false,
                rescinded: false,
                phase: Phase::Idle,
                withhold_open: false,
                reading_stalled: false,
                signalled: false,
                signal_count: 0,
                ring_gpadl: None,
                downstream: 0,
            },
        );
        if self.conn.as_ref().is_some_and(|c| c.offers_delivered) {
            self.send_offer(relid);
        }
        relid
    }

    /// Sends OFFERCHANNEL for `relid` and marks it offered.
    pub(super) fn send_offer(&mut self, relid: u32) {
        let Some(e) = self.channels.get_mut(&relid) else {
            return;
        };
        e.offered = true;
        let o = e.ch.offer();
        let msg = OfferChannel {
            header: MessageHeader::new(MessageType::OFFERCHANNEL),
            interface_type: o.interface_type,
            interface_instance: o.instance,
            reserved1: U64::new(0),
            reserved2: U64::new(0),
            flags: o.flags.bits(),
            mmio_megabytes: o.mmio_megabytes,
            user_defined: o.user_defined,
            subchannel_index: o.sub_channel_index,
            mmio_megabytes_optional: 0,
            relid,
            monitor_id: e.monitor_id.unwrap_or(0),
            monitor_allocated: u8::from(e.monitor_id.is_some()),
            is_dedicated_interrupt: 1,
            connection_id: e.connection_id,
        };
        self.send(msg.as_bytes());
    }

    /// Hot-removes `relid`: RESCIND_CHANNELOFFER if the guest has seen the offer (the host stops
    /// servicing the channel and then expects an optional CLOSECHANNEL and RELID_RELEASED);
    /// a device the guest never saw is simply dropped.
    pub fn rescind(&mut self, relid: u32) {
        let Some(e) = self.channels.get_mut(&relid) else {
            return;
        };
        if e.rescinded {
            return;
        }
        if !e.offered {
            self.channels.remove(&relid);
            return;
        }
        e.rescinded = true;
        // A withheld open of a rescinded channel never completes.
        if matches!(e.phase, Phase::Opening(_)) {
            e.phase = Phase::Idle;
        }
        let was_open = matches!(e.phase, Phase::Open);
        e.ch.detach();
        if was_open {
            e.model.on_close();
        }
        let gpadl = e.ring_gpadl.take();
        if let Some(h) = gpadl {
            self.release_ring_gpadl(h);
        }
        self.lock_gpadls().revoke_channel(relid);
        self.send(RescindChannelOffer::new(relid).as_bytes());
    }

    /// Clears a ring GPADL's in-use mark and finishes a deferred teardown (or, while
    /// TORNDOWN is withheld, keeps the GPADL live and queues its answer).
    pub(super) fn release_ring_gpadl(&mut self, handle: u32) {
        let withhold = self.withhold_torndown;
        let finish = {
            let mut t = self.lock_gpadls();
            match t.live.get_mut(&handle) {
                Some(g) => {
                    g.in_use_by = None;
                    let pending = g.teardown_pending;
                    if pending && !withhold {
                        t.live.remove(&handle);
                    }
                    pending
                }
                None => false,
            }
        };
        if finish {
            if withhold {
                self.withheld_torndowns.push(handle);
            } else {
                self.send_torndown(handle);
            }
        }
    }

    /// Fault injection: a host slow to let go of closed channels. While on, GPADL_TEARDOWN is
    /// accepted but GPADL_TORNDOWN withheld: the GPADL stays live (its pages host-mapped),
    /// and a channel closed meanwhile keeps the pages of its GPA-direct requests still in
    /// flight mapped too (the host has not finished them; its TORNDOWN of the ring would say
    /// so). A guest that frees any of that memory is reported by
    /// [`Self::freed_while_mapped`]. Turning it off sends the withheld TORNDOWNs and unmaps.
    pub fn withhold_gpadl_torndown(&mut self, on: bool) {
        self.withhold_torndown = on;
        if on {
            return;
        }
        self.lingering_requests.clear();
        for handle in std::mem::take(&mut self.withheld_torndowns) {
            self.lock_gpadls().live.remove(&handle);
            self.send_torndown(handle);
        }
    }

    /// GPADL_TORNDOWNs withheld so far ([`Self::withhold_gpadl_torndown`]).
    pub fn withheld_torndowns(&self) -> usize {
        self.withheld_torndowns.len()
    }

    /// Processes every posted message, signalled event and monitor bit, services the rings of
    /// signalled channels and runs the device models. Returns the amount of work done (0 =
    /// idle).
    pub fn step(&mut self) -> usize {
        let mut work = 0;
        // Posts and signals only when the guest made some since the last look (no lock).
        let activity = self.hv.guest_activity();
        let fresh = activity != self.seen_activity;
        self.seen_activity = activity;
        if fresh {
            for m in self.hv.take_posted_messages() {
                work += 1;
                self.handle_posted(m.connection_id, m.message_type, &m.payload);
            }
        }
        let mut signals = std::mem::take(&mut self.signal_buf);
        signals.clear();
        if fresh {
            self.hv.take_signaled_events_into(&mut signals);
        }
        for &(conn, _flag) in &signals {
            work += 1;
            let hit = self
                .channels
                .values_mut()
                .find(|e| e.connection_id == conn || e.guest_connection_id == Some(conn));
            match hit {
                Some(e) => {
                    e.signalled = true;
                    e.signal_count += 1;
                }
                None => self.stray_signals += 1,
            }
        }
        self.signal_buf = signals;
        work += self.scan_monitor_page();
        let poll = self.poll_rings;
        let mask = poll && self.polling;
        let mut offers = Vec::new();
        for (&relid, e) in self.channels.iter_mut() {
            work += super::service::service(relid, e, poll, mask, &self.errors);
            if !e.ch.pending_offers.is_empty() {
                offers.append(&mut e.ch.pending_offers);
            }
        }
        for (offer, model) in offers {
            work += 1;
            self.add_device(offer, model);
        }
        work
    }

    /// Checks (and clears) the child→parent monitor page pending bits of monitored channels.
    fn scan_monitor_page(&mut self) -> usize {
        let Some((_, c2p)) = self.conn.as_ref().and_then(|c| c.monitor_pages) else {
            return 0;
        };
        let mut work = 0;
        for e in self.channels.values_mut() {
            let Some((off, bit)) = e.monitor_id.and_then(monitor_pending_bit) else {
                continue;
            };
            let old = self.ram.fetch_and_u32(c2p + off, !bit).unwrap_or(0);
            if old & bit != 0 {
                e.signalled = true;
                e.signal_count += 1;
                work += 1;
            }
        }
        work
    }

    /// Builds the ring endpoints for an open.
    pub(super) fn make_rings(
        &self,
        pages: &[u64],
        downstream: usize,
        target: SignalTarget,
    ) -> OpenRings {
        use super::ring::RingMem;
        let out = RingMem::new(self.ram.clone(), &pages[..downstream]);
        let inb = RingMem::new(self.ram.clone(), &pages[downstream..]);
        OpenRings {
            reader: HostReader::new(out),
            writer: HostWriter::new(inb),
            target,
            corrupt: false,
        }
    }

    /// Every protocol violation the guest committed so far (tests assert this is empty).
    pub fn protocol_errors(&self) -> Vec<String> {
        self.errors.all()
    }

    /// Every time the guest freed (through [`MockHal`](crate::hv::MockHal)) a page the host
    /// still mapped: a live GPADL (created, not yet answered with GPADL_TORNDOWN, including
    /// those of a connection abandoned without UNLOAD), a GPA-direct request not yet
    /// completed, or the connection's monitor / legacy interrupt pages before
    /// UNLOAD_RESPONSE. Each one is also in [`Self::protocol_errors`]. (The list is the
    /// partition's, [`MockHypervisor::freed_while_mapped`].)
    pub fn freed_while_mapped(&self) -> Vec<FreedWhileMapped> {
        self.hv.freed_while_mapped()
    }

    /// Transaction ids of the GPA-direct requests on `relid` the host has received and not
    /// yet completed (e.g. withheld completions); their pages count as host-mapped.
    pub fn requests_in_flight(&self, relid: u32) -> Vec<u64> {
        self.channels
            .get(&relid)
            .map(|e| e.ch.requests_in_flight())
            .unwrap_or_default()
    }

    /// Maps the connection's monitor pages and legacy interrupt page for the host.
    pub(super) fn map_connection_pages(
        &self,
        monitor_pages: Option<(u64, u64)>,
        interrupt_page: Option<u64>,
    ) -> Vec<HostMapping> {
        let mut pages = Vec::new();
        if let Some((p2c, c2p)) = monitor_pages {
            pages.push(("parent→child monitor page", p2c));
            pages.push(("child→parent monitor page", c2p));
        }
        if let Some(page) = interrupt_page {
            pages.push(("legacy interrupt page", page));
        }
        pages
            .into_iter()
            .map(|(what, gpa)| {
                self.hv.map_for_host(
                    format!("{what} {gpa:#x} of the VMBus connection (no UNLOAD_RESPONSE yet)"),
                    [gpa / 4096],
                    Some(self.map_hook.clone()),
                )
            })
            .collect()
    }

    /// Returns and forgets the protocol errors so far (for hostile tests that expect some).
    pub fn take_protocol_errors(&mut self) -> Vec<String> {
        self.errors.take()
    }

    /// The negotiated VMBus version, if connected.
    pub fn negotiated_version(&self) -> Option<VmbusVersion> {
        self.conn.as_ref().map(|c| c.version)
    }

    /// The granted 6.0 feature flags (requested ∩ host), if connected.
    pub fn negotiated_features(&self) -> Option<u32> {
        self.conn.as_ref().map(|c| c.features)
    }

    /// The connection id the guest must post on now (after negotiation).
    pub fn message_connection_id(&self) -> Option<u32> {
        self.conn.as_ref().map(|c| c.message_connection_id)
    }

    /// Lifecycle state of `relid`; `None` if never registered (or dropped by UNLOAD).
    pub fn channel_state(&self, relid: u32) -> Option<ChannelState> {
        let Some(e) = self.channels.get(&relid) else {
            return self
                .released
                .contains(&relid)
                .then_some(ChannelState::Released);
        };
        Some(if e.rescinded {
            ChannelState::Rescinded
        } else {
            match e.phase {
                Phase::Idle => ChannelState::Offered,
                Phase::Opening(_) => ChannelState::Opening,
                Phase::Open => ChannelState::Open,
                Phase::Closed => ChannelState::Closed,
            }
        })
    }

    /// Number of live (complete, not torn down) GPADLs.
    pub fn gpadls(&self) -> usize {
        self.lock_gpadls().live.len()
    }

    /// The ranges of live GPADL `handle` as the host mapped them.
    pub fn gpadl_ranges(&self, handle: u32) -> Option<Vec<super::GpadlRange>> {
        self.lock_gpadls()
            .live
            .get(&handle)
            .map(|g| g.ranges.clone())
    }

    /// Whether the guest unloaded (UNLOAD answered) and has not reconnected since.
    pub fn unloaded(&self) -> bool {
        self.unloaded
    }

    /// Signals received for `relid` (SignalEvent or monitor bits).
    pub fn signal_count(&self, relid: u32) -> u64 {
        self.channels.get(&relid).map_or(0, |e| e.signal_count)
    }

    /// Times the host interrupted the guest for `relid`.
    pub fn guest_signal_count(&self, relid: u32) -> u64 {
        self.channels
            .get(&relid)
            .map_or(0, |e| e.ch.signals_to_guest)
    }

    /// Signals on connections that belong to no channel.
    pub fn stray_signals(&self) -> u64 {
        self.stray_signals
    }

    /// The guest→host signalling connection id offered for `relid`.
    pub fn connection_id(&self, relid: u32) -> Option<u32> {
        self.channels.get(&relid).map(|e| e.connection_id)
    }

    /// The monitor id allocated to `relid`.
    pub fn monitor_id(&self, relid: u32) -> Option<u8> {
        self.channels.get(&relid).and_then(|e| e.monitor_id)
    }

    /// Runs `f` with `relid`'s channel and model (e.g. to send unsolicited packets).
    pub fn with_channel<R>(
        &mut self,
        relid: u32,
        f: impl FnOnce(&mut HostChannel, &mut dyn DeviceModel) -> R,
    ) -> Option<R> {
        let e = self.channels.get_mut(&relid)?;
        Some(f(&mut e.ch, e.model.as_mut()))
    }

    /// Delivers arbitrary bytes as a VMBus message (SynIC message type 1) to the guest's control
    /// VP and SINT: for hostile-host tests.
    pub fn inject_raw_message(&mut self, payload: &[u8]) {
        let (vp, sint) = self.message_target();
        if let Err(e) = self
            .hv
            .deliver_message(vp, sint, SYNIC_MESSAGE_TYPE_CHANNEL, payload)
        {
            log::warn!("inject_raw_message: {e}");
        }
    }

    /// Fault injection: while on, the host stops reading `relid`'s outbound ring (a stuck
    /// host worker) but its device keeps sending; signals are remembered, and the ring is
    /// read on the first step after it is turned off.
    pub fn stall_reading(&mut self, relid: u32, on: bool) {
        if let Some(e) = self.channels.get_mut(&relid) {
            e.reading_stalled = on;
        }
    }

    /// While on, OPENCHANNEL for `relid` is accepted but its OPENCHANNEL_RESULT withheld (state
    /// Opening); turning it off sends the withheld result.
    pub fn set_withhold_open_result(&mut self, relid: u32, on: bool) {
        let Some(e) = self.channels.get_mut(&relid) else {
            return;
        };
        e.withhold_open = on;
        if !on && matches!(e.phase, Phase::Opening(_)) {
            let Phase::Opening(p) = std::mem::replace(&mut e.phase, Phase::Idle) else {
                return;
            };
            self.finish_open(relid, *p);
        }
    }

    /// Fault injection: VERSION_RESPONSE to an acceptable ≥ 2.4 INITIATE_CONTACT reports this
    /// connection state (1 = low resources, 2 = unknown failure) and the host stays
    /// disconnected. 0 (the default) is success.
    pub fn set_connection_state(&mut self, state: u8) {
        self.connection_state = state;
    }

    /// Fault injection: the next OPENCHANNEL for `relid` is answered with `status` (non-zero)
    /// without opening anything.
    pub fn fail_next_open(&mut self, relid: u32, status: u32) {
        self.fail_next_open.insert(relid, status);
    }

    /// Fault injection: the next GPADL that completes is answered GPADL_CREATED(`status`) and
    /// discarded.
    pub fn fail_next_gpadl(&mut self, status: u32) {
        self.fail_next_gpadl = Some(status);
    }

    /// Turns the guest's inbound ring of `relid` into garbage for hostile tests: writes
    /// `write_index` into its control page (the guest must reject it).
    pub fn corrupt_inbound_write_index(&mut self, relid: u32, write_index: u32) -> bool {
        let Some(e) = self.channels.get(&relid) else {
            return false;
        };
        let Some(g) = e.ring_gpadl else { return false };
        let t = self.lock_gpadls();
        let Some(gp) = t.live.get(&g) else {
            return false;
        };
        let Some(pages) = gp.whole_pages() else {
            return false;
        };
        match pages.get(e.downstream) {
            Some(pfn) => self.ram.store_u32(pfn * 4096, write_index),
            None => false,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::monitor_pending_bit;

    /// vmbus-core §8.2: trigger groups at 0x008, 8 bytes each, `pending` first; §8.1: bit
    /// `id % 32` of group `id / 32`; ids 0..127.
    #[test]
    fn monitor_pending_bit_follows_vmbus_core_8() {
        assert_eq!(monitor_pending_bit(0), Some((0x008, 1)));
        assert_eq!(monitor_pending_bit(1), Some((0x008, 1 << 1)));
        assert_eq!(monitor_pending_bit(31), Some((0x008, 1 << 31)));
        assert_eq!(monitor_pending_bit(32), Some((0x010, 1)));
        assert_eq!(monitor_pending_bit(33), Some((0x010, 1 << 1)));
        assert_eq!(monitor_pending_bit(64), Some((0x018, 1)));
        assert_eq!(monitor_pending_bit(100), Some((0x020, 1 << 4)));
        assert_eq!(monitor_pending_bit(127), Some((0x020, 1 << 31)));
        // The last trigger group ends before the reserved bytes at 0x028.
        assert_eq!(monitor_pending_bit(128), None);
        assert_eq!(monitor_pending_bit(255), None);
    }
}
