//! Dispatch of one host→guest message according to the connection state.

#![forbid(unsafe_code)]

use super::{ConnectionState, Ctl, Event};
use crate::error::ProtocolViolation;
use crate::hal::Hal;
use crate::offers::{OfferInfo, OpenState};
use crate::protocol::{HostMessage, MessageType, parse_host_message};
use crate::transport::Transport;

impl<T: Transport, H: Hal> Ctl<'_, T, H> {
    /// Processes one VMBus message payload from the host (as copied out of the SynIC slot).
    /// Never panics: malformed or unexpected messages are counted and dropped.
    pub(crate) fn handle_message(&mut self, payload: &[u8]) {
        self.stats.messages += 1;
        let msg = match parse_host_message(payload, self.negotiated.map(|n| n.version)) {
            Ok(m) => m,
            Err(e) => {
                if matches!(self.state, ConnectionState::Connected) {
                    self.violation(ProtocolViolation::Malformed(e));
                } else {
                    self.stats.stale_discarded += 1;
                }
                return;
            }
        };
        match self.state {
            ConnectionState::Contacting { index } => match msg {
                HostMessage::VersionResponse(r) => self.on_version_response(index, r),
                // Leftovers of a previous instance (firmware, an earlier kernel).
                _ => self.stats.stale_discarded += 1,
            },
            ConnectionState::Unloading => match msg {
                HostMessage::UnloadResponse => self.on_unloaded(true),
                _ => self.stats.stale_discarded += 1,
            },
            ConnectionState::Disconnected | ConnectionState::Failed(_) => {
                self.stats.stale_discarded += 1
            }
            ConnectionState::Connected => self.on_connected_message(msg),
        }
    }

    fn on_connected_message(&mut self, msg: HostMessage) {
        match msg {
            HostMessage::Offer(o) => {
                let version = self
                    .negotiated
                    .map_or(crate::protocol::VmbusVersion::V1_1, |n| n.version);
                let r = OfferInfo::from_wire(&o, version).and_then(|info| {
                    let sub = !info.is_primary();
                    self.offers.insert(info).map(|_| (info.relid, sub))
                });
                match r {
                    Ok((relid, sub)) => {
                        self.bus.set_relid_limit(self.offers.relid_limit());
                        if sub
                            && self
                                .offers
                                .offer(relid)
                                .is_some_and(|o| o.primary_relid.is_none())
                        {
                            // Kept usable on its own; reported so the device layer knows.
                            self.violation(ProtocolViolation::OrphanSubchannel(relid));
                        }
                        self.push_event(Event::Offer(relid));
                    }
                    Err(v) => self.violation(v),
                }
            }
            HostMessage::Rescind { relid } => self.on_rescind(relid),
            HostMessage::AllOffersDelivered => {
                if self.all_offers_delivered {
                    self.violation(ProtocolViolation::Unexpected(
                        MessageType::ALLOFFERS_DELIVERED,
                    ));
                } else {
                    self.all_offers_delivered = true;
                    self.push_event(Event::AllOffersDelivered);
                }
            }
            HostMessage::OpenResult(r) => match self.offers.get_mut(r.relid) {
                Some(e) if e.open == (OpenState::Opening { open_id: r.open_id }) => {
                    e.open = OpenState::Result(r.status);
                }
                _ => self.violation(ProtocolViolation::UnexpectedOpenResult(r.relid)),
            },
            HostMessage::GpadlCreated(g) => {
                if let Err(v) = self.gpadls.on_created(g.relid, g.gpadl_handle, g.status) {
                    self.violation(v);
                }
            }
            HostMessage::GpadlTorndown { handle } => {
                if let Err(v) = self.gpadls.on_torndown(handle) {
                    self.violation(v);
                }
            }
            HostMessage::VersionResponse(_) => {
                self.violation(ProtocolViolation::Unexpected(MessageType::VERSION_RESPONSE))
            }
            HostMessage::UnloadResponse => {
                self.violation(ProtocolViolation::Unexpected(MessageType::UNLOAD_RESPONSE))
            }
            HostMessage::ModifyChannelResponse(_) => {}
            HostMessage::Unknown(t) => log::debug!("ignoring host message {t}"),
        }
    }

    fn on_rescind(&mut self, relid: u32) {
        // Usually done already by the interrupt path when it copied the message out.
        let bus = self.bus;
        if bus.slots.rescind(relid) {
            bus.note_work(relid);
        }
        let Some(e) = self.offers.get_mut(relid).filter(|e| !e.rescinded) else {
            self.violation(ProtocolViolation::UnknownRelid {
                message_type: MessageType::RESCIND_CHANNELOFFER,
                relid,
            });
            return;
        };
        e.rescinded = true;
        if matches!(e.open, OpenState::Opening { .. }) {
            // The host ignores OPENCHANNEL for a rescinded channel: cancel the wait.
            e.open = OpenState::Cancelled;
        }
        let in_use = e.in_use;
        self.gpadls.revoke_channel(relid);
        self.push_event(Event::Rescind(relid));
        if !in_use {
            self.release_relid(relid);
        }
    }
}
