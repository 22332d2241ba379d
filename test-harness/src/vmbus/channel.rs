//! The host's view of one channel as device models see it: send packets into the guest's
//! inbound ring, signal the guest, reach guest memory named by GPA-direct ranges and GPADLs.

use std::collections::VecDeque;
use std::fmt;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use super::gpadl::{Gpadl, GpadlTable};
use super::mem::GuestRam;
use super::packet::{
    FLAG_COMPLETION_REQUESTED, HostPacket, PACKET_TYPE_COMPLETION, PACKET_TYPE_GPA_DIRECT,
    PACKET_TYPE_INBAND, encode_packet,
};
use super::ring::{HostReader, HostWriter, WriteError};
use super::{DeviceOffer, ErrorLog};
use crate::hv::{HostMapping, MockHypervisor, RequestSet, SharedRequestSet, ViolationHook};

/// Lifecycle state of a channel on the host (vmbus-core §5.8, §10.1).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ChannelState {
    /// Registered and (once the guest asked) offered; never opened or not open now.
    Offered,
    /// OPENCHANNEL received, OPENCHANNEL_RESULT withheld.
    Opening,
    /// Open: rings serviced.
    Open,
    /// Closed by CLOSECHANNEL after having been open.
    Closed,
    /// RESCIND_CHANNELOFFER sent; waiting for RELID_RELEASED.
    Rescinded,
    /// The guest sent RELID_RELEASED; the relid is free again.
    Released,
}

/// Why a host-side ring operation failed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum HostRingError {
    /// The channel is not open (or rescinded).
    NotOpen,
    /// The packet can never fit the guest's inbound ring (it must be < ring size − 8).
    TooLarge,
    /// The guest corrupted the ring (invalid read index); the channel is no longer serviced.
    Corrupt(String),
    /// A guest-physical range outside guest RAM (or outside the GPADL).
    BadAddress(u64),
    /// No live GPADL with this handle.
    UnknownGpadl(u32),
}

impl fmt::Display for HostRingError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::NotOpen => f.write_str("channel not open"),
            Self::TooLarge => f.write_str("packet larger than the inbound ring allows"),
            Self::Corrupt(e) => write!(f, "ring corrupt: {e}"),
            Self::BadAddress(a) => write!(f, "guest address {a:#x} outside guest RAM"),
            Self::UnknownGpadl(h) => write!(f, "no live GPADL {h:#x}"),
        }
    }
}

impl std::error::Error for HostRingError {}

/// Where host→guest channel interrupts go (vmbus-core §8.3).
#[derive(Clone, Copy, Debug)]
pub(crate) struct SignalTarget {
    /// Target VP; `None` = interrupts disabled (OPENCHANNEL target VP 0xFFFFFFFF).
    pub vp: Option<u32>,
    /// Connection SINT.
    pub sint: u8,
    /// Event flag (relid or the 6.0 guest-chosen flag).
    pub flag: u32,
    /// < 2.4: GPA of the legacy interrupt page; the relid bit goes into its receive half and
    /// event flag 0 is set instead.
    pub legacy_interrupt_page: Option<u64>,
}

/// Rings of an open channel.
pub(crate) struct OpenRings {
    pub reader: HostReader,
    pub writer: HostWriter,
    pub target: SignalTarget,
    pub corrupt: bool,
}

/// A device model's handle on its channel.
pub struct HostChannel {
    relid: u32,
    offer: DeviceOffer,
    ram: GuestRam,
    hv: MockHypervisor,
    gpadls: Arc<Mutex<GpadlTable>>,
    errors: ErrorLog,
    pub(crate) rings: Option<OpenRings>,
    backlog: VecDeque<Vec<u8>>,
    /// Where the next packet is encoded (its allocation reused).
    scratch: Vec<u8>,
    /// Inside [`Self::begin_batch`]: packets are written but published only by
    /// [`Self::end_batch`].
    batch: bool,
    pub(crate) packets_sent: u64,
    pub(crate) signals_to_guest: u64,
    pub(crate) pending_offers: Vec<(DeviceOffer, Box<dyn super::DeviceModel>)>,
    /// GPA-direct requests received and not yet completed: their pages count as host-mapped
    /// (`_requests_mapping`, kept for its drop, registers the set with the hypervisor once).
    requests: SharedRequestSet,
    _requests_mapping: HostMapping,
    map_hook: ViolationHook,
}

impl HostChannel {
    pub(crate) fn new(
        relid: u32,
        offer: DeviceOffer,
        hv: MockHypervisor,
        gpadls: Arc<Mutex<GpadlTable>>,
        errors: ErrorLog,
        map_hook: ViolationHook,
    ) -> Self {
        let requests = SharedRequestSet::default();
        let requests_mapping =
            hv.map_requests_for_host(relid, requests.clone(), Some(map_hook.clone()));
        Self {
            relid,
            offer,
            ram: GuestRam::new(hv.clone()),
            hv,
            gpadls,
            errors,
            rings: None,
            backlog: VecDeque::new(),
            scratch: Vec::new(),
            batch: false,
            packets_sent: 0,
            signals_to_guest: 0,
            pending_offers: Vec::new(),
            _requests_mapping: requests_mapping,
            requests,
            map_hook,
        }
    }

    /// The channel's relid.
    pub fn relid(&self) -> u32 {
        self.relid
    }

    /// The offer this channel was created from.
    pub fn offer(&self) -> &DeviceOffer {
        &self.offer
    }

    /// Whether the rings are being serviced.
    pub fn is_open(&self) -> bool {
        self.rings.as_ref().is_some_and(|r| !r.corrupt)
    }

    /// Packets queued because the guest's inbound ring was full; they are written (in order)
    /// when the guest frees space and signals.
    pub fn backlog_len(&self) -> usize {
        self.backlog.len()
    }

    /// Data size of the guest's inbound ring, when open.
    pub fn inbound_ring_size(&self) -> Option<u32> {
        self.rings.as_ref().map(|r| r.writer.size())
    }

    /// Sends an in-band packet (type 6) with `payload`; flags bit 0 if `completion_requested`.
    /// A full ring queues the packet (see [`Self::backlog_len`]) and returns `Ok`.
    pub fn send_inband(
        &mut self,
        payload: &[u8],
        transaction_id: u64,
        completion_requested: bool,
    ) -> Result<(), HostRingError> {
        let flags = if completion_requested {
            FLAG_COMPLETION_REQUESTED
        } else {
            0
        };
        self.send_packet(PACKET_TYPE_INBAND, flags, transaction_id, &[], payload)
    }

    /// Sends a completion packet (type 11) for `transaction_id` carrying `payload`.
    pub fn send_completion(
        &mut self,
        transaction_id: u64,
        payload: &[u8],
    ) -> Result<(), HostRingError> {
        self.send_packet(PACKET_TYPE_COMPLETION, 0, transaction_id, &[], payload)
    }

    /// Sends any packet: `header` is the type-specific part after the 16-byte descriptor (a
    /// multiple of 8 bytes; e.g. a transfer-page header and ranges for type 7), then `payload`.
    /// A completion (type 11) ends the host's use of the pages of the GPA-direct request with
    /// that transaction id (see [`Self::requests_in_flight`]), even if it cannot be written.
    pub fn send_packet(
        &mut self,
        packet_type: u16,
        flags: u16,
        transaction_id: u64,
        header: &[u8],
        payload: &[u8],
    ) -> Result<(), HostRingError> {
        if packet_type == PACKET_TYPE_COMPLETION {
            self.lock_requests().remove(transaction_id);
        }
        match self.rings.as_ref() {
            None => return Err(HostRingError::NotOpen),
            Some(r) if r.corrupt => {
                return Err(HostRingError::Corrupt("ring marked corrupt earlier".into()));
            }
            Some(_) => {}
        }
        let mut bytes = std::mem::take(&mut self.scratch);
        if !encode_packet(
            &mut bytes,
            packet_type,
            flags,
            transaction_id,
            header,
            payload,
        ) {
            self.scratch = bytes;
            return Err(HostRingError::TooLarge);
        }
        if !self.backlog.is_empty() {
            self.backlog.push_back(bytes);
            return Ok(());
        }
        let written = self.write_now(&bytes);
        if written == Ok(false) {
            self.backlog.push_back(bytes);
        } else {
            // Kept for the next packet: no allocation per packet sent.
            self.scratch = bytes;
        }
        written.map(|_| ())
    }

    /// Writes one encoded packet (and publishes it, unless in a batch); `Ok(false)` when the
    /// ring is full (retry later).
    fn write_now(&mut self, bytes: &[u8]) -> Result<bool, HostRingError> {
        let Some(rings) = self.rings.as_mut() else {
            return Err(HostRingError::NotOpen);
        };
        let mut result = rings.writer.write(bytes);
        if result == Err(WriteError::Full) && self.batch {
            // Publish what the batch wrote first: the guest frees space only for packets it
            // can see, and pending send size counts from the published index.
            if rings.writer.commit() {
                self.signal_guest();
            }
            let Some(rings) = self.rings.as_mut() else {
                return Err(HostRingError::NotOpen);
            };
            result = rings.writer.write(bytes);
        }
        match result {
            Ok(()) => {
                self.packets_sent += 1;
                if !self.batch {
                    self.commit();
                }
                Ok(true)
            }
            Err(WriteError::Full) => Ok(false),
            Err(WriteError::TooLarge) => Err(HostRingError::TooLarge),
            Err(WriteError::Corrupt(e)) => {
                if let Some(rings) = self.rings.as_mut() {
                    rings.corrupt = true;
                }
                self.errors.push(format!("channel {}: {e}", self.relid));
                Err(HostRingError::Corrupt(e))
            }
        }
    }

    /// Publishes what was written and interrupts the guest if the rule says so.
    fn commit(&mut self) {
        let signal = self.rings.as_mut().is_some_and(|r| r.writer.commit());
        if signal {
            self.signal_guest();
        }
    }

    /// Starts a batch: packets sent until [`Self::end_batch`] are written into the ring at
    /// once but published together, with at most one interrupt (the host's side of the
    /// batching a guest does with its interrupt mask; vmbus-core §7.8 step 6 applied to the
    /// whole batch).
    pub(crate) fn begin_batch(&mut self) {
        self.batch = true;
    }

    /// Ends a batch: publishes its packets and interrupts the guest if the ring was empty
    /// before them and the guest's mask is clear.
    pub(crate) fn end_batch(&mut self) {
        self.batch = false;
        self.commit();
    }

    /// Writes queued packets while they fit; returns how many went out.
    pub(crate) fn flush_backlog(&mut self) -> usize {
        let mut n = 0;
        while let Some(bytes) = self.backlog.pop_front() {
            match self.write_now(&bytes) {
                Ok(true) => n += 1,
                Ok(false) => {
                    self.backlog.push_front(bytes);
                    break;
                }
                Err(_) => {}
            }
        }
        n
    }

    /// Forgets the rings (close, rescind, unload) and the requests in flight: the host drops
    /// them with the channel and no longer touches their pages.
    pub(crate) fn detach(&mut self) {
        self.rings = None;
        self.backlog.clear();
        self.lock_requests().clear();
    }

    fn lock_requests(&self) -> MutexGuard<'_, RequestSet> {
        self.requests.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Hands over the GPA-direct requests not yet completed, still mapped (a closing host
    /// that still works on them keeps them); `None` if there are none.
    pub(crate) fn take_requests_in_flight(&mut self) -> Option<HostMapping> {
        let taken = {
            let mut set = self.lock_requests();
            if set.is_empty() {
                return None;
            }
            set.take()
        };
        Some(self.hv.map_requests_for_host(
            self.relid,
            Arc::new(Mutex::new(taken)),
            Some(self.map_hook.clone()),
        ))
    }

    /// The host took `packet` from the ring: a GPA-direct packet asking for a completion
    /// names guest pages the host may use until it completes the request, so they count as
    /// host-mapped until then (a guest that frees them first is reported).
    pub(crate) fn begin_request(&mut self, packet: &HostPacket) {
        if packet.packet_type != PACKET_TYPE_GPA_DIRECT || !packet.completion_requested() {
            return;
        }
        self.lock_requests().add(
            packet.transaction_id,
            packet
                .gpa_ranges
                .iter()
                .flat_map(|(_, _, pfns)| pfns.iter().copied()),
        );
    }

    /// Transaction ids of the GPA-direct requests received on this channel and not yet
    /// completed (the host still uses their pages), oldest first.
    pub fn requests_in_flight(&self) -> Vec<u64> {
        self.lock_requests().transaction_ids()
    }

    /// Interrupts the guest for this channel (vmbus-core §8.3).
    pub(crate) fn signal_guest(&mut self) {
        let Some(rings) = self.rings.as_ref() else {
            return;
        };
        let t = rings.target;
        let Some(vp) = t.vp else {
            return;
        };
        self.signals_to_guest += 1;
        let result = match t.legacy_interrupt_page {
            Some(page) => {
                let word = page + u64::from(self.relid / 32) * 4;
                self.ram.fetch_or_u32(word, 1 << (self.relid % 32));
                self.hv.set_event_flag(vp, t.sint, 0)
            }
            None => self.hv.set_event_flag(vp, t.sint, t.flag),
        };
        if let Err(e) = result {
            self.errors.push(format!(
                "channel {}: cannot signal the guest on VP {vp} SINT {}: {e}",
                self.relid, t.sint
            ));
        }
    }

    /// Reads guest memory at `gpa` (e.g. behind a GPA-direct range).
    pub fn read_gpa(&self, gpa: u64, buf: &mut [u8]) -> Result<(), HostRingError> {
        if self.ram.read(gpa, buf) {
            Ok(())
        } else {
            Err(HostRingError::BadAddress(gpa))
        }
    }

    /// Writes guest memory at `gpa`.
    pub fn write_gpa(&self, gpa: u64, data: &[u8]) -> Result<(), HostRingError> {
        if self.ram.write(gpa, data) {
            Ok(())
        } else {
            Err(HostRingError::BadAddress(gpa))
        }
    }

    /// Size in bytes of live GPADL `handle` (e.g. a netvsc receive buffer or synthvid VRAM).
    pub fn gpadl_len(&self, handle: u32) -> Result<u64, HostRingError> {
        let t = self.gpadls.lock().unwrap_or_else(PoisonError::into_inner);
        t.live
            .get(&handle)
            .map(|g| g.len())
            .ok_or(HostRingError::UnknownGpadl(handle))
    }

    /// Runs `f` on live GPADL `handle` (its table locked once).
    fn with_gpadl<R>(
        &self,
        handle: u32,
        f: impl FnOnce(&Gpadl) -> Result<R, HostRingError>,
    ) -> Result<R, HostRingError> {
        let t = self.gpadls.lock().unwrap_or_else(PoisonError::into_inner);
        f(t.live
            .get(&handle)
            .ok_or(HostRingError::UnknownGpadl(handle))?)
    }

    /// Reads `buf.len()` bytes at byte `offset` of GPADL `handle` (ranges concatenated).
    pub fn read_gpadl(
        &self,
        handle: u32,
        offset: u64,
        buf: &mut [u8],
    ) -> Result<(), HostRingError> {
        self.with_gpadl(handle, |g| {
            g.for_each_piece(offset, buf.len(), |gpa, r| self.read_gpa(gpa, &mut buf[r]))
                .ok_or(HostRingError::BadAddress(offset))?
        })
    }

    /// Writes `data` at byte `offset` of GPADL `handle`.
    pub fn write_gpadl(&self, handle: u32, offset: u64, data: &[u8]) -> Result<(), HostRingError> {
        self.write_gpadl_parts(handle, &[(offset, data)])
    }

    /// Writes each `(offset, data)` of `parts` into GPADL `handle`, in order (one lookup of the
    /// GPADL for all: a device model writing a header and a payload per frame uses this).
    pub fn write_gpadl_parts(
        &self,
        handle: u32,
        parts: &[(u64, &[u8])],
    ) -> Result<(), HostRingError> {
        self.with_gpadl(handle, |g| {
            parts.iter().try_for_each(|&(offset, data)| {
                g.for_each_piece(offset, data.len(), |gpa, r| self.write_gpa(gpa, &data[r]))
                    .ok_or(HostRingError::BadAddress(offset))?
            })
        })
    }

    /// Asks the host to offer another channel (e.g. sub-channels a device created on request,
    /// vmbus-core §9); it is offered after the current callback returns.
    pub fn add_offer(&mut self, offer: DeviceOffer, model: Box<dyn super::DeviceModel>) {
        self.pending_offers.push((offer, model));
    }

    /// Records a device-protocol violation by the guest (fails tests like any protocol error).
    pub fn protocol_error(&self, reason: impl Into<String>) {
        self.errors
            .push(format!("channel {}: {}", self.relid, reason.into()));
    }
}
