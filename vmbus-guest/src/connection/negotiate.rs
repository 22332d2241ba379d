//! Version negotiation (vmbus-core §5.5), REQUESTOFFERS and UNLOAD (§10.2).

use super::{Connection, ConnectionState, Event, Negotiated, SHARED_PAGES};
use crate::error::VmbusError;
use crate::hal::{HV_PAGE_SIZE, Hal};
use crate::protocol::{
    FeatureFlags, InitiateContact, MESSAGE_CONNECTION_ID, MessageHeader, MessageType,
    RequestOffers, Unload, VMBUS_MESSAGE_SINT, VersionResponseInfo, VmbusVersion,
    message_connection_id_for,
};
use crate::transport::Transport;
use crate::wait::Wait;
use winhv::{HvStatus, HypercallError};
use zerocopy::IntoBytes;

/// 6.0 features this guest implements and may request: guest-specified signal parameters
/// (the 156-byte OPENCHANNEL). Client id (56-byte INITIATE_CONTACT), server-specified monitor
/// pages, interrupt redirection, MODIFY_CONNECTION, pause/resume, confidential channels and GPA
/// pinning are not implemented, so they are never requested whatever the configuration says.
pub const SUPPORTED_FEATURES: FeatureFlags = FeatureFlags::GUEST_SPECIFIED_SIGNAL_PARAMETERS;

impl<T: Transport, H: Hal> Connection<T, H> {
    /// Starts negotiation: allocates (or re-zeroes) the two monitor pages and posts
    /// INITIATE_CONTACT for the highest candidate version. Progress comes from
    /// [`Connection::poll`]; watch [`Connection::state`].
    pub fn start_connect(&mut self) -> Result<(), VmbusError> {
        if !matches!(
            self.state,
            ConnectionState::Disconnected | ConnectionState::Failed(_)
        ) {
            return Err(VmbusError::WrongState);
        }
        if matches!(self.state, ConnectionState::Failed(_)) {
            // The host may still consider the old connection live (a failure after it
            // accepted the contact) and keep using the old pages: leave them to it.
            self.leak_shared_pages();
        }
        match self.monitor_pages {
            Some(p) => {
                // SAFETY: the two monitor pages are owned by this connection and, while
                // disconnected, not in use by the host.
                unsafe { core::ptr::write_bytes(p.as_ptr(), 0, SHARED_PAGES * HV_PAGE_SIZE) }
            }
            None => self.monitor_pages = Some(self.hal.alloc_pages(SHARED_PAGES)?),
        }
        self.negotiated = None;
        self.offers.clear();
        self.gpadls.clear();
        self.offers_requested = false;
        self.all_offers_delivered = false;
        self.send_contact(0)
    }

    fn shared_gpas(&self) -> Result<(u64, u64, u64), VmbusError> {
        let p = self.monitor_pages.ok_or(VmbusError::WrongState)?;
        let parent_to_child = self.hal.virt_to_phys(p)?;
        // SAFETY: the allocation is SHARED_PAGES (3) pages long.
        let child_to_parent = self.hal.virt_to_phys(unsafe { p.add(HV_PAGE_SIZE) })?;
        // SAFETY: as above.
        let interrupt_page = self.hal.virt_to_phys(unsafe { p.add(2 * HV_PAGE_SIZE) })?;
        Ok((parent_to_child, child_to_parent, interrupt_page))
    }

    /// Posts INITIATE_CONTACT for `versions[index]`, moving down the list while the host
    /// rejects the connection id (a pre-5.0 host does not know connection 4).
    pub(super) fn send_contact(&mut self, mut index: usize) -> Result<(), VmbusError> {
        let (p2c, c2p, interrupt_page) = match self.shared_gpas() {
            Ok(g) => g,
            Err(e) => return self.fail(e),
        };
        let target_vp = self
            .config
            .target_vp
            .unwrap_or_else(|| self.transport.vp_index());
        loop {
            let Some(&version) = self.config.versions.get(index) else {
                return self.fail(VmbusError::NoCompatibleVersion);
            };
            let features = if version >= VmbusVersion::V6_0 {
                (self.config.features & SUPPORTED_FEATURES).bits()
            } else {
                0
            };
            let target_info = if version >= VmbusVersion::V5_0 {
                InitiateContact::target_info(VMBUS_MESSAGE_SINT, 0, features)
            } else if version < VmbusVersion::V2_4 {
                // The legacy interrupt page: host→guest relid bits below 2.4.
                interrupt_page
            } else {
                0
            };
            let msg = InitiateContact {
                header: MessageHeader::new(MessageType::INITIATE_CONTACT),
                version_requested: version.0,
                target_vp,
                interrupt_page_or_target_info: target_info,
                parent_to_child_monitor_page_gpa: p2c,
                child_to_parent_monitor_page_gpa: c2p,
            };
            self.state = ConnectionState::Contacting { index };
            let conn = message_connection_id_for(version);
            match self.post_to(conn, msg.as_bytes()) {
                Ok(()) => {
                    log::debug!("INITIATE_CONTACT {version} on connection {conn}");
                    return Ok(());
                }
                Err(VmbusError::Post(HypercallError::Hv(e)))
                    if e.status() == HvStatus::INVALID_CONNECTION_ID
                        && version >= VmbusVersion::V5_0 =>
                {
                    log::debug!("connection {conn} unknown: host predates 5.0");
                    index += 1;
                }
                Err(e) => return self.fail(e),
            }
        }
    }

    fn fail(&mut self, e: VmbusError) -> Result<(), VmbusError> {
        self.state = ConnectionState::Failed(e);
        Err(e)
    }

    /// VERSION_RESPONSE while contacting.
    pub(super) fn on_version_response(&mut self, index: usize, r: VersionResponseInfo) {
        let Some(&requested) = self.config.versions.get(index) else {
            let _ = self.fail(VmbusError::NoCompatibleVersion);
            return;
        };
        if r.base.version_supported == 0 {
            log::debug!("host refused {requested}");
            let _ = self.send_contact(index + 1);
            return;
        }
        if requested >= VmbusVersion::V2_4 && r.base.connection_state != 0 {
            let _ = self.fail(VmbusError::ConnectionFailed {
                state: r.base.connection_state,
            });
            return;
        }
        let message_connection_id = if requested >= VmbusVersion::V5_0 {
            let id = r.base.selected_version_or_connection_id;
            if id == 0 || id >> 24 != 0 {
                let _ = self.fail(VmbusError::BadConnectionId(id));
                return;
            }
            id
        } else {
            MESSAGE_CONNECTION_ID
        };
        let features = if requested >= VmbusVersion::V6_0 {
            self.config.features & SUPPORTED_FEATURES & r.supported_features.unwrap_or_default()
        } else {
            FeatureFlags::empty()
        };
        self.negotiated = Some(Negotiated {
            version: requested,
            message_connection_id,
            features,
        });
        self.state = ConnectionState::Connected;
        log::info!("VMBus {requested} negotiated, message connection {message_connection_id}");
        self.push_event(Event::Connected(requested));
        if let Err(e) = self.request_offers() {
            log::warn!("REQUESTOFFERS failed: {e}");
            let _ = self.fail(e);
        }
    }

    /// Sends REQUESTOFFERS, once per connection (a second one is a protocol error).
    fn request_offers(&mut self) -> Result<(), VmbusError> {
        if self.offers_requested {
            return Ok(());
        }
        self.post(RequestOffers::new().as_bytes())?;
        self.offers_requested = true;
        Ok(())
    }

    /// Negotiates and waits for ALLOFFERS_DELIVERED; returns the agreed version.
    pub fn connect(&mut self, waiter: &mut impl Wait) -> Result<VmbusVersion, VmbusError> {
        self.start_connect()?;
        self.wait_until(waiter, |c| match c.state {
            ConnectionState::Failed(e) => Some(Err(e)),
            ConnectionState::Connected if c.all_offers_delivered => c.version().map(Ok),
            _ => None,
        })
    }

    /// Sends UNLOAD. Progress through [`Connection::poll`]; on UNLOAD_RESPONSE every channel,
    /// GPADL and relid is gone and the state is [`ConnectionState::Disconnected`].
    pub fn start_unload(&mut self) -> Result<(), VmbusError> {
        self.post(Unload::new().as_bytes())?;
        self.state = ConnectionState::Unloading;
        Ok(())
    }

    /// UNLOAD_RESPONSE while unloading.
    pub(super) fn on_unloaded(&mut self) {
        self.state = ConnectionState::Disconnected;
        self.negotiated = None;
        self.offers.clear();
        self.gpadls.clear();
        self.offers_requested = false;
        self.all_offers_delivered = false;
        self.push_event(Event::Unloaded);
    }

    /// Gives up on the current connection without the host's agreement — UNLOAD_RESPONSE
    /// never came, or the guest must start over after a failure — and returns to
    /// [`ConnectionState::Disconnected`] so that [`Connection::connect`] can start afresh.
    ///
    /// The host may still use what it was given, so nothing is reused: the monitor and
    /// interrupt pages are leaked to it (new ones are allocated on the next connect), every
    /// offer and GPADL is forgotten (channels and GPADL buffers still held by drivers must be
    /// leaked too). Linux does the same when UNLOAD times out before kexec.
    pub fn abandon(&mut self) {
        self.leak_shared_pages();
        self.on_unloaded();
    }

    fn leak_shared_pages(&mut self) {
        if let Some(p) = self.monitor_pages.take() {
            log::warn!(
                "VMBus: leaving the monitor pages at {:p} to the host (it may still use them)",
                p.as_ptr()
            );
        }
    }

    /// Sends UNLOAD and waits for UNLOAD_RESPONSE (ignoring everything else meanwhile).
    /// Afterwards [`Connection::connect`] may be called again (the kexec case). If the wait
    /// times out the state stays [`ConnectionState::Unloading`]: call
    /// [`Connection::abandon`] before connecting again.
    pub fn unload(&mut self, waiter: &mut impl Wait) -> Result<(), VmbusError> {
        self.start_unload()?;
        self.wait_until(waiter, |c| {
            (c.state == ConnectionState::Disconnected).then_some(Ok(()))
        })
    }
}
