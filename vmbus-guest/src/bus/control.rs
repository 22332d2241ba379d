//! [`Ctl`]: the control path with the bus lock held — posting messages and the bookkeeping
//! channels need from the offer table.

#![forbid(unsafe_code)]

use super::{ConnectionState, Control, Event, Negotiated, POST_ATTEMPTS, Vmbus};
use crate::error::{ProtocolViolation, VmbusError};
use crate::hal::Hal;
use crate::offers::{OfferInfo, OpenState};
use crate::protocol::{
    CloseChannel, FeatureFlags, MessageHeader, MessageType, OpenChannel, OpenChannelExtended,
    RelidReleased,
};
use crate::transport::Transport;
use core::ops::{Deref, DerefMut};
use zerocopy::IntoBytes;

/// The bus with its control lock held.
pub(crate) struct Ctl<'a, T: Transport, H: Hal> {
    pub(crate) bus: &'a Vmbus<T, H>,
    c: spin::MutexGuard<'a, Control>,
}

impl<T: Transport, H: Hal> Deref for Ctl<'_, T, H> {
    type Target = Control;
    fn deref(&self) -> &Control {
        &self.c
    }
}

impl<T: Transport, H: Hal> DerefMut for Ctl<'_, T, H> {
    fn deref_mut(&mut self) -> &mut Control {
        &mut self.c
    }
}

impl<'a, T: Transport, H: Hal> Ctl<'a, T, H> {
    pub(crate) fn new(bus: &'a Vmbus<T, H>, c: spin::MutexGuard<'a, Control>) -> Self {
        Self { bus, c }
    }

    pub(crate) fn push_event(&mut self, e: Event) {
        if self.events.push_back(e).is_err() {
            self.stats.events_dropped += 1;
            log::warn!("VMBus event queue full, dropped {e:?}");
        }
    }

    pub(crate) fn violation(&mut self, v: ProtocolViolation) {
        log::warn!("VMBus host protocol violation: {v}");
        self.stats.violations += 1;
        self.last_violation = Some(v);
        self.push_event(Event::Violation(v));
    }

    pub(crate) fn require_connected(&self) -> Result<Negotiated, VmbusError> {
        match (self.state, self.negotiated) {
            (ConnectionState::Connected, Some(n)) => Ok(n),
            _ => Err(VmbusError::WrongState),
        }
    }

    /// Posts a VMBus message to `connection_id`, retrying transient failures with backoff.
    pub(crate) fn post_to(&mut self, connection_id: u32, payload: &[u8]) -> Result<(), VmbusError> {
        let transport = &self.bus.transport;
        let backoff = self.bus.config.backoff;
        let mut retries = 0u64;
        let r = winhv::hypercall::retry_transient(
            POST_ATTEMPTS,
            || transport.post_message(connection_id, payload),
            |attempt| {
                retries += 1;
                backoff(attempt)
            },
        );
        self.stats.post_retries += retries;
        r.map_err(VmbusError::Post)
    }

    /// Posts on the negotiated message connection.
    pub(crate) fn post(&mut self, payload: &[u8]) -> Result<(), VmbusError> {
        let n = self.require_connected()?;
        self.post_to(n.message_connection_id, payload)
    }

    /// Claims the live offer `relid` for a channel object; returns it and its generation.
    pub(crate) fn offer_for_open(&mut self, relid: u32) -> Result<(OfferInfo, u32), VmbusError> {
        self.require_connected()?;
        let e = self
            .offers
            .get_mut(relid)
            .ok_or(VmbusError::UnknownChannel(relid))?;
        if e.rescinded {
            return Err(VmbusError::Rescinded(relid));
        }
        if e.in_use {
            return Err(VmbusError::WrongState);
        }
        e.in_use = true;
        Ok((e.info, e.generation))
    }

    /// Whether the offer `relid` of `generation` is still tracked (not released, not
    /// unloaded).
    pub(crate) fn offer_present(&self, relid: u32, generation: u32) -> bool {
        self.offers
            .get(relid)
            .is_some_and(|e| e.generation == generation)
    }

    /// Sends OPENCHANNEL for `info` with the ring GPADL and downstream offset.
    pub(crate) fn post_open(
        &mut self,
        info: &OfferInfo,
        gpadl: u32,
        downstream_page_offset: u32,
        target_vp: u32,
        user_data: &[u8; 120],
    ) -> Result<(), VmbusError> {
        let n = self.require_connected()?;
        let open_id = self.next_open_id;
        self.next_open_id = self.next_open_id.wrapping_add(1).max(1);
        let open = OpenChannel {
            header: MessageHeader::new(MessageType::OPENCHANNEL),
            relid: info.relid,
            open_id,
            ring_gpadl_handle: gpadl,
            target_vp,
            downstream_ring_page_offset: downstream_page_offset,
            user_data: *user_data,
        };
        self.set_open_state(info.relid, OpenState::Opening { open_id });
        let r = if n
            .features
            .contains(FeatureFlags::GUEST_SPECIFIED_SIGNAL_PARAMETERS)
        {
            // The defaults, stated explicitly: the offer's connection id and the relid flag.
            let ext = OpenChannelExtended {
                open,
                connection_id: info.connection_id,
                event_flag: info.relid as u16,
                flags: 0,
            };
            self.post(ext.as_bytes())
        } else {
            self.post(open.as_bytes())
        };
        if r.is_err() {
            self.set_open_state(info.relid, OpenState::Closed);
        }
        r
    }

    /// The open state of `relid`.
    pub(crate) fn open_state(&self, relid: u32) -> Option<OpenState> {
        self.offers.get(relid).map(|e| e.open)
    }

    pub(crate) fn set_open_state(&mut self, relid: u32, s: OpenState) {
        if let Some(e) = self.offers.get_mut(relid) {
            e.open = s;
        }
    }

    /// Sends CLOSECHANNEL (no reply).
    pub(crate) fn post_close(&mut self, relid: u32) -> Result<(), VmbusError> {
        self.set_open_state(relid, OpenState::Closed);
        self.post(CloseChannel::new(relid).as_bytes())
    }

    /// The channel object for `relid` is gone: if the offer was rescinded, RELID_RELEASED.
    pub(crate) fn release_channel(&mut self, relid: u32, generation: u32) {
        let Some(e) = self.offers.get_mut(relid) else {
            return;
        };
        if e.generation != generation {
            return;
        }
        e.in_use = false;
        e.open = OpenState::Closed;
        if e.rescinded {
            self.release_relid(relid);
        }
    }

    pub(crate) fn release_relid(&mut self, relid: u32) {
        self.offers.remove(relid);
        if self.require_connected().is_ok()
            && let Err(e) = self.post(RelidReleased::new(relid).as_bytes())
        {
            log::warn!("RELID_RELEASED({relid}) failed: {e}");
        }
    }
}
