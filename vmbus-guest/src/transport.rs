//! How the connection talks to the hypervisor: [`Transport`] is the four primitives VMBus
//! needs (post a message, signal an event, take a SynIC message, take event flags), and
//! [`SynicTransport`] implements them with `winhv` on one virtual processor.

#![forbid(unsafe_code)]

use crate::bitmap::ChannelBitmap;
use crate::protocol::{MAX_MESSAGE_SIZE, SYNIC_MESSAGE_TYPE_CHANNEL, VMBUS_MESSAGE_SINT};
use winhv::{Cpu, HvError, HypercallError, Hypercalls, Synic, SynicError};

/// A VMBus message copied out of the SynIC message slot (≤ 240 bytes).
#[derive(Clone, Copy, Debug)]
pub struct RawMessage {
    len: usize,
    bytes: [u8; MAX_MESSAGE_SIZE],
}

impl RawMessage {
    /// Copies `payload` (truncated to 240 bytes).
    pub fn new(payload: &[u8]) -> Self {
        let len = payload.len().min(MAX_MESSAGE_SIZE);
        let mut bytes = [0; MAX_MESSAGE_SIZE];
        bytes[..len].copy_from_slice(&payload[..len]);
        Self { len, bytes }
    }

    /// The payload bytes.
    pub fn payload(&self) -> &[u8] {
        &self.bytes[..self.len]
    }
}

/// The hypervisor primitives the VMBus connection uses. Implemented by [`SynicTransport`] for
/// real use; tests may script it.
pub trait Transport {
    /// HvCallPostMessage of a VMBus message (SynIC message type 1) to `connection_id`.
    fn post_message(&self, connection_id: u32, payload: &[u8]) -> Result<(), HypercallError>;
    /// HvCallSignalEvent(`connection_id`, flag 0): wake the host for a channel.
    fn signal_event(&self, connection_id: u32) -> Result<(), HvError>;
    /// Takes the next VMBus message from SIMP slot 2 (EOM handled), `Ok(None)` if the slot is
    /// empty. Messages of other SynIC types are consumed and dropped.
    fn take_message(&self) -> Result<Option<RawMessage>, SynicError>;
    /// Atomically takes every set event flag of SIEFP slot 2 below `limit`, calling `on_flag`
    /// with each.
    fn take_event_flags(&self, limit: u32, on_flag: &mut dyn FnMut(u32));
    /// Hypervisor index of the VP this transport runs on (INITIATE_CONTACT target VP).
    fn vp_index(&self) -> u32;
}

/// [`Transport`] over `winhv` on one virtual processor: its typed hypercalls and its enabled
/// SynIC, with VMBus on SINT 2.
pub struct SynicTransport<C: Cpu> {
    /// Behind a lock: the hypercall input page is one per VP, used by one post at a time.
    hypercalls: spin::Mutex<Hypercalls<C>>,
    /// The VP's processor, for fast hypercalls (signal event) that need no page.
    cpu: C,
    synic: Synic,
    vp_index: u32,
}

impl<C: Cpu + Clone> SynicTransport<C> {
    /// Uses `hypercalls` and `synic` (enabled with SINT 2 routed) of the VP whose hypervisor
    /// index is `vp_index` (read from the VP_INDEX register).
    pub fn new(hypercalls: Hypercalls<C>, synic: Synic, vp_index: u32) -> Self {
        Self {
            cpu: hypercalls.cpu().clone(),
            hypercalls: spin::Mutex::new(hypercalls),
            synic,
            vp_index,
        }
    }

    /// Like [`SynicTransport::new`], reading the VP index from the VP_INDEX register of the
    /// processor the hypercalls run on (hypervisor VP indices are what INITIATE_CONTACT and
    /// OPENCHANNEL expect, not APIC ids).
    pub fn for_current_vp(hypercalls: Hypercalls<C>, synic: Synic) -> Self {
        let vp_index = hypercalls
            .cpu()
            .read_register(winhv::SyntheticRegister::VpIndex) as u32;
        Self::new(hypercalls, synic, vp_index)
    }

    /// Gives back the hypercalls and the SynIC (for example to disable the SynIC after UNLOAD).
    pub fn into_parts(self) -> (Hypercalls<C>, Synic) {
        (self.hypercalls.into_inner(), self.synic)
    }

    /// The SynIC in use.
    pub fn synic(&self) -> &Synic {
        &self.synic
    }
}

impl<C: Cpu + Clone> Transport for SynicTransport<C> {
    fn post_message(&self, connection_id: u32, payload: &[u8]) -> Result<(), HypercallError> {
        self.hypercalls
            .lock()
            .post_message(connection_id, SYNIC_MESSAGE_TYPE_CHANNEL, payload)
    }

    fn signal_event(&self, connection_id: u32) -> Result<(), HvError> {
        winhv::hypercall::signal_event(&self.cpu, connection_id, 0)
    }

    fn take_message(&self) -> Result<Option<RawMessage>, SynicError> {
        // Bounded: each iteration frees one slot; a stream of foreign messages stops after a
        // slot's worth of attempts and the caller polls again.
        for _ in 0..16 {
            match self.synic.take_message(&self.cpu, VMBUS_MESSAGE_SINT)? {
                None => return Ok(None),
                Some(m) if m.message_type() == SYNIC_MESSAGE_TYPE_CHANNEL => {
                    return Ok(Some(RawMessage::new(m.payload())));
                }
                Some(m) => log::debug!("dropping SynIC message type {:#x}", m.message_type()),
            }
        }
        Ok(None)
    }

    fn take_event_flags(&self, limit: u32, on_flag: &mut dyn FnMut(u32)) {
        // SINT 2 is a valid SINT, so this cannot fail.
        let _ = self
            .synic
            .take_event_flags(VMBUS_MESSAGE_SINT, limit, on_flag);
    }

    fn vp_index(&self) -> u32 {
        self.vp_index
    }
}

/// The channel half of the VMBus interrupt on a virtual processor other than the connection's:
/// from VMBus 2.4 on, the host interrupts a channel on the target VP named when it was opened
/// (`ChannelConfig::target_vp`), setting the channel's event flag in *that* VP's SynIC. This
/// takes those flags (below `relid_limit`, e.g. `bus.with_offers(|t| t.relid_limit())`) and returns the
/// channels with work; poll them.
///
/// Needs only that VP's [`Synic`], not the bus, so it is callable from that VP's interrupt
/// handler while another context holds the bus lock. No allocation, no blocking.
/// Control messages still arrive on the connection's VP ([`crate::Vmbus::handle_interrupt`]).
pub fn take_channel_events(synic: &Synic, relid_limit: u32) -> ChannelBitmap {
    let mut work = ChannelBitmap::new();
    // SINT 2 is a valid SINT, so this cannot fail.
    let _ = synic.take_event_flags(VMBUS_MESSAGE_SINT, relid_limit, |flag| work.set(flag));
    work
}
