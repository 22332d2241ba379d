//! The offer table: every channel the host offered on this connection, with what the guest
//! needs from OFFERCHANNEL (vmbus-core §5.3, §5.7, §9), in a fixed-capacity table.

#![forbid(unsafe_code)]

use crate::error::ProtocolViolation;
use crate::protocol::{
    DeviceClass, Guid, MAX_CHANNELS, MonitorPage, OfferChannel, OfferFlags, VmbusVersion,
};
use heapless::Vec;

/// Most offers (channels, sub-channels included) one connection tracks at a time.
pub const MAX_OFFERS: usize = 64;

/// A validated channel offer. The offer's 120-byte user-defined area (pipe and hvsock
/// parameters) is not kept: no driver here uses it, and 64 copies of it would not fit the bus
/// on a kernel stack.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct OfferInfo {
    /// Child relid (1..2048): the channel id in every later message and its event flag.
    pub relid: u32,
    /// Interface type GUID (device class).
    pub interface_type: Guid,
    /// Interface instance GUID (unique device id; shared by a primary and its sub-channels).
    pub interface_instance: Guid,
    /// Device class recognised from the interface type (or hvsock from the offer flags).
    pub class: DeviceClass,
    /// Offer flags (@56).
    pub flags: OfferFlags,
    /// MMIO space the device needs, in MiB.
    pub mmio_megabytes: u16,
    /// Sub-channel index (0 = primary).
    pub subchannel_index: u16,
    /// Relid of the primary channel, for a sub-channel whose primary is known.
    pub primary_relid: Option<u32>,
    /// Monitor id, when the host allocated one in range (MNF possible).
    pub monitor_id: Option<u8>,
    /// Whether the channel has a dedicated interrupt (≥ 1.1).
    pub dedicated_interrupt: bool,
    /// Connection id for guest→host signalling (≥ 1.1).
    pub connection_id: u32,
}

impl OfferInfo {
    /// Validates an OFFERCHANNEL (relid range, monitor id range) and extracts its fields.
    pub fn from_wire(o: &OfferChannel, _version: VmbusVersion) -> Result<Self, ProtocolViolation> {
        if o.relid == 0 || o.relid >= MAX_CHANNELS {
            return Err(ProtocolViolation::BadRelid(o.relid));
        }
        let flags = o.flags();
        let class = if o.is_hvsock() {
            DeviceClass::Hvsock
        } else {
            DeviceClass::from_interface_type(&o.interface_type)
        };
        let monitor_id = (o.has_monitor() && MonitorPage::pending_bit(o.monitor_id).is_some())
            .then_some(o.monitor_id);
        Ok(Self {
            relid: o.relid,
            interface_type: o.interface_type,
            interface_instance: o.interface_instance,
            class,
            flags,
            mmio_megabytes: o.mmio_megabytes,
            subchannel_index: o.subchannel_index,
            primary_relid: None,
            monitor_id,
            dedicated_interrupt: o.dedicated_interrupt(),
            connection_id: o.connection_id,
        })
    }

    /// Whether this is a primary channel (sub-channel index 0).
    pub fn is_primary(&self) -> bool {
        self.subchannel_index == 0
    }
}

/// Where the guest is with a channel's OPENCHANNEL.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum OpenState {
    /// Not open (offered, or closed again).
    Closed,
    /// OPENCHANNEL sent with this open id; waiting for OPENCHANNEL_RESULT.
    Opening {
        /// Open id sent.
        open_id: u32,
    },
    /// OPENCHANNEL_RESULT arrived with this status (0 = open).
    Result(u32),
    /// Open failed because the channel was rescinded while waiting.
    Cancelled,
}

/// One row of the offer table.
#[derive(Clone, Copy, Debug)]
pub(crate) struct OfferEntry {
    pub info: OfferInfo,
    /// Unique per offer across connections, so a stale [`crate::Channel`] is detected.
    pub generation: u32,
    pub rescinded: bool,
    pub open: OpenState,
    /// A channel object exists for this offer (opened or opening): rescind waits for it.
    pub in_use: bool,
}

/// The offers of one connection.
#[derive(Debug, Default)]
pub struct OfferTable {
    entries: Vec<OfferEntry, MAX_OFFERS>,
    next_generation: u32,
}

impl OfferTable {
    /// An empty table.
    pub const fn new() -> Self {
        Self {
            entries: Vec::new(),
            next_generation: 1,
        }
    }

    /// Inserts an offer, attaching a sub-channel to its primary. Rejects duplicate relids,
    /// duplicate primaries and a full table.
    pub(crate) fn insert(&mut self, mut info: OfferInfo) -> Result<u32, ProtocolViolation> {
        if self.get(info.relid).is_some() {
            return Err(ProtocolViolation::DuplicateRelid(info.relid));
        }
        let same_device = self.entries.iter().find(|e| {
            !e.rescinded
                && e.info.is_primary()
                && e.info.interface_type == info.interface_type
                && e.info.interface_instance == info.interface_instance
        });
        if info.is_primary() {
            if same_device.is_some() && info.class != DeviceClass::Hvsock {
                return Err(ProtocolViolation::DuplicateDevice(info.relid));
            }
        } else {
            info.primary_relid = same_device.map(|e| e.info.relid);
        }
        let generation = self.next_generation;
        self.next_generation = self.next_generation.wrapping_add(1).max(1);
        self.entries
            .push(OfferEntry {
                info,
                generation,
                rescinded: false,
                open: OpenState::Closed,
                in_use: false,
            })
            .map_err(|_| ProtocolViolation::OfferTableFull(info.relid))?;
        Ok(generation)
    }

    pub(crate) fn get(&self, relid: u32) -> Option<&OfferEntry> {
        self.entries.iter().find(|e| e.info.relid == relid)
    }

    pub(crate) fn get_mut(&mut self, relid: u32) -> Option<&mut OfferEntry> {
        self.entries.iter_mut().find(|e| e.info.relid == relid)
    }

    pub(crate) fn remove(&mut self, relid: u32) {
        if let Some(i) = self.entries.iter().position(|e| e.info.relid == relid) {
            self.entries.swap_remove(i);
        }
    }

    pub(crate) fn clear(&mut self) {
        self.entries.clear();
    }

    /// The offer with `relid`, if live (not rescinded).
    pub fn offer(&self, relid: u32) -> Option<&OfferInfo> {
        self.get(relid).filter(|e| !e.rescinded).map(|e| &e.info)
    }

    /// Every live offer.
    pub fn iter(&self) -> impl Iterator<Item = &OfferInfo> {
        self.entries
            .iter()
            .filter(|e| !e.rescinded)
            .map(|e| &e.info)
    }

    /// Live offers of class `class`.
    pub fn by_class(&self, class: DeviceClass) -> impl Iterator<Item = &OfferInfo> {
        self.iter().filter(move |o| o.class == class)
    }

    /// The live primary offer with this instance GUID (devices keep it across reconnects).
    pub fn by_instance(&self, instance: &Guid) -> Option<&OfferInfo> {
        self.iter()
            .find(|o| o.is_primary() && o.interface_instance == *instance)
    }

    /// Live sub-channels attached to `primary_relid`.
    pub fn subchannels(&self, primary_relid: u32) -> impl Iterator<Item = &OfferInfo> {
        self.iter()
            .filter(move |o| o.primary_relid == Some(primary_relid))
    }

    /// The first live primary offer of `class` (of `instance` when given) that no channel
    /// object holds.
    pub fn free_primary(&self, class: DeviceClass, instance: Option<&Guid>) -> Option<&OfferInfo> {
        self.entries
            .iter()
            .filter(|e| !e.rescinded && !e.in_use && e.info.is_primary() && e.info.class == class)
            .filter(|e| instance.is_none_or(|i| e.info.interface_instance == *i))
            .min_by_key(|e| e.info.relid)
            .map(|e| &e.info)
    }

    /// Live sub-channels of `primary_relid` that no channel object holds.
    pub fn free_subchannels(&self, primary_relid: u32) -> impl Iterator<Item = &OfferInfo> {
        self.entries
            .iter()
            .filter(move |e| {
                !e.rescinded && !e.in_use && e.info.primary_relid == Some(primary_relid)
            })
            .map(|e| &e.info)
    }

    /// Live offers newer than `after` (their offer sequence numbers are above it), oldest
    /// first, with their sequence numbers: a driver that remembers the last number it saw
    /// learns of every hot-added offer without sharing the connection's event queue.
    pub fn offered_after(&self, after: u32) -> impl Iterator<Item = (u32, &OfferInfo)> {
        let mut newer: heapless::Vec<(u32, &OfferInfo), MAX_OFFERS> = heapless::Vec::new();
        for e in self
            .entries
            .iter()
            .filter(|e| !e.rescinded && e.generation > after)
        {
            let _ = newer.push((e.generation, &e.info));
        }
        newer.sort_unstable_by_key(|(g, _)| *g);
        newer.into_iter()
    }

    /// Number of offers tracked (rescinded ones awaiting release included).
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// Whether no offer is tracked.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// One past the highest relid tracked: the event-flag scan limit.
    pub fn relid_limit(&self) -> u32 {
        self.entries
            .iter()
            .map(|e| e.info.relid + 1)
            .max()
            .unwrap_or(0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::{MessageHeader, MessageType};
    use zerocopy::FromZeros;

    pub(crate) fn wire_offer(relid: u32, ty: &str, inst: u32, sub: u16) -> OfferChannel {
        let mut o = OfferChannel::new_zeroed();
        o.header = MessageHeader::new(MessageType::OFFERCHANNEL);
        o.interface_type = Guid::from_str_const(ty);
        o.interface_instance.data1 = inst;
        o.relid = relid;
        o.subchannel_index = sub;
        o.connection_id = 0x1000 + relid;
        o.is_dedicated_interrupt = 1;
        o
    }

    const NET: &str = "f8615163-df3e-46c5-913f-f2d2f965ed0e";

    #[test]
    fn classes_subchannels_duplicates() {
        let mut t = OfferTable::new();
        let v = VmbusVersion::V5_3;
        let p = OfferInfo::from_wire(&wire_offer(5, NET, 1, 0), v).unwrap();
        assert_eq!(p.class, DeviceClass::Network);
        t.insert(p).unwrap();
        let s = OfferInfo::from_wire(&wire_offer(6, NET, 1, 1), v).unwrap();
        t.insert(s).unwrap();
        assert_eq!(t.offer(6).unwrap().primary_relid, Some(5));
        assert_eq!(t.subchannels(5).count(), 1);
        assert_eq!(
            t.insert(OfferInfo::from_wire(&wire_offer(6, NET, 2, 0), v).unwrap()),
            Err(ProtocolViolation::DuplicateRelid(6))
        );
        assert_eq!(
            t.insert(OfferInfo::from_wire(&wire_offer(7, NET, 1, 0), v).unwrap()),
            Err(ProtocolViolation::DuplicateDevice(7))
        );
        assert_eq!(
            OfferInfo::from_wire(&wire_offer(0, NET, 1, 0), v),
            Err(ProtocolViolation::BadRelid(0))
        );
        assert_eq!(
            OfferInfo::from_wire(&wire_offer(2048, NET, 1, 0), v),
            Err(ProtocolViolation::BadRelid(2048))
        );
        assert_eq!(t.relid_limit(), 7);
        for r in 100..100 + MAX_OFFERS as u32 {
            let _ = t.insert(OfferInfo::from_wire(&wire_offer(r, NET, r, 0), v).unwrap());
        }
        assert_eq!(t.len(), MAX_OFFERS);
    }

    #[test]
    fn monitor_id_range() {
        let mut o = wire_offer(3, NET, 1, 0);
        o.monitor_allocated = 1;
        o.monitor_id = 200;
        assert_eq!(
            OfferInfo::from_wire(&o, VmbusVersion::V5_3)
                .unwrap()
                .monitor_id,
            None
        );
        o.monitor_id = 127;
        assert_eq!(
            OfferInfo::from_wire(&o, VmbusVersion::V5_3)
                .unwrap()
                .monitor_id,
            Some(127)
        );
    }
}
