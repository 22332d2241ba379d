//! Version negotiation (vmbus-core §5.5), REQUESTOFFERS and UNLOAD (§10.2).

#![forbid(unsafe_code)]

use super::{ConnectionState, Ctl, Event, Negotiated, SHARED_PAGES, Vmbus};
use crate::error::VmbusError;
use crate::hal::Hal;
use crate::shared::SharedPages;

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

/// How many sets of monitor and interrupt pages (three pages each) one bus leaves
/// to the host over its life, for connections the host failed or the guest abandoned after
/// sharing them; later connections reuse the last set. The bound on what a hostile host can
/// make the guest leak this way: 4 × 3 pages = 48 KiB.
pub const MAX_LEAKED_MONITOR_SETS: u32 = 4;

impl<T: Transport, H: Hal> Ctl<'_, T, H> {
    /// Starts negotiation: allocates (or re-zeroes) the monitor pages and posts
    /// INITIATE_CONTACT for the highest candidate version.
    pub(crate) fn start_connect(&mut self) -> Result<(), VmbusError> {
        if !matches!(
            self.state,
            ConnectionState::Disconnected | ConnectionState::Failed(_)
        ) {
            return Err(VmbusError::WrongState);
        }
        if !valid_version_list(self.bus.config().versions) {
            return Err(VmbusError::NoCompatibleVersion);
        }
        if self.monitor_shared {
            // The host may still consider the old connection live (a failure after it
            // accepted the contact) and keep using the old pages: leave them to it.
            self.leak_shared_pages();
        }
        match &self.monitor_pages {
            Some(p) => p.zero(),
            None => self.monitor_pages = Some(SharedPages::alloc(self.bus.hal(), SHARED_PAGES)?),
        }
        self.negotiated = None;
        self.offers.clear();
        self.gpadls.clear();
        self.offers_requested = false;
        self.all_offers_delivered = false;
        self.send_contact(0)
    }

    fn shared_gpas(&self) -> Result<(u64, u64, u64), VmbusError> {
        let p = self.monitor_pages.as_ref().ok_or(VmbusError::WrongState)?;
        let hal = self.bus.hal();
        Ok((
            p.page_gpa(hal, 0)?,
            p.page_gpa(hal, 1)?,
            p.page_gpa(hal, 2)?,
        ))
    }

    /// Posts INITIATE_CONTACT for `versions[index]`, moving down the list while the host
    /// rejects the connection id (a pre-5.0 host does not know connection 4).
    pub(super) fn send_contact(&mut self, mut index: usize) -> Result<(), VmbusError> {
        let (p2c, c2p, interrupt_page) = match self.shared_gpas() {
            Ok(g) => g,
            Err(e) => return self.fail(e),
        };
        let target_vp = self
            .bus
            .config()
            .target_vp
            .unwrap_or_else(|| self.bus.transport().vp_index());
        loop {
            let Some(&version) = self.bus.config().versions.get(index) else {
                // Every version refused: the host holds nothing of this guest.
                self.monitor_shared = false;
                return self.fail(VmbusError::NoCompatibleVersion);
            };
            let features = if version >= VmbusVersion::V6_0 {
                (self.bus.config().features & SUPPORTED_FEATURES).bits()
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
            self.monitor_shared = true;
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
        let Some(&requested) = self.bus.config().versions.get(index) else {
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
            self.bus.config().features
                & SUPPORTED_FEATURES
                & r.supported_features.unwrap_or_default()
        } else {
            FeatureFlags::empty()
        };
        self.negotiated = Some(Negotiated {
            version: requested,
            message_connection_id,
            features,
        });
        self.state = ConnectionState::Connected;
        self.bus.set_legacy_flags(requested < VmbusVersion::V2_4);
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

    /// Sends UNLOAD; UNLOAD_RESPONSE arrives later.
    pub(crate) fn start_unload(&mut self) -> Result<(), VmbusError> {
        self.post(Unload::new().as_bytes())?;
        self.state = ConnectionState::Unloading;
        Ok(())
    }

    /// UNLOAD_RESPONSE while unloading: the host dropped every channel and GPADL.
    pub(super) fn on_unloaded(&mut self, clean: bool) {
        if clean {
            self.cleanly_ended = Some(self.bus.epoch());
        }
        self.state = ConnectionState::Disconnected;
        self.negotiated = None;
        self.offers.clear();
        self.gpadls.clear();
        self.offers_requested = false;
        self.all_offers_delivered = false;
        self.monitor_shared = false;
        self.bus.bump_epoch();
        self.push_event(Event::Unloaded);
    }

    /// Leaves the monitor and interrupt pages to the host, which may still use them, and
    /// takes fresh ones for the next connection — at most [`MAX_LEAKED_MONITOR_SETS`] times
    /// per bus. After that a hostile host that keeps failing connections gets the same pages
    /// back (re-zeroed by the next connect): they were only ever VMBus's and are never freed
    /// while shared, so reuse costs at most stale monitor bits, where leaking would cost
    /// memory without limit.
    fn leak_shared_pages(&mut self) {
        self.monitor_shared = false;
        if self.monitor_sets_leaked >= MAX_LEAKED_MONITOR_SETS {
            log::warn!("the host failed connection after connection: reusing the monitor pages");
            // An unreleased connection may still map them: whatever later connections do,
            // they are never freed.
            self.monitor_pinned |= self.monitor_pages.is_some();
            return;
        }
        if let Some(p) = self.monitor_pages.take() {
            self.monitor_sets_leaked += 1;
            self.stats.pages_leaked += p.pages() as u64;
            p.leak();
        }
    }
}

/// Whether `versions` is a usable candidate list: non-empty, strictly descending, and every
/// entry a version this guest implements.
fn valid_version_list(versions: &[VmbusVersion]) -> bool {
    !versions.is_empty()
        && versions.windows(2).all(|w| w[0] > w[1])
        && versions
            .iter()
            .all(|v| crate::protocol::CANDIDATE_VERSIONS.contains(v))
}

impl<T: Transport, H: Hal> Vmbus<T, H> {
    /// Starts negotiation: allocates (or re-zeroes) the monitor pages and posts
    /// INITIATE_CONTACT for the highest candidate version. Progress comes from
    /// [`Vmbus::poll`]; watch [`Vmbus::state`]. Thread context only.
    pub fn start_connect(&self) -> Result<(), VmbusError> {
        self.lock().start_connect()
    }

    /// Negotiates and waits for ALLOFFERS_DELIVERED; returns the agreed version. Thread
    /// context only.
    pub fn connect(&self, waiter: &mut impl Wait) -> Result<VmbusVersion, VmbusError> {
        self.start_connect()?;
        self.wait_until(waiter, |c| match c.state {
            ConnectionState::Failed(e) => Some(Err(e)),
            ConnectionState::Connected if c.all_offers_delivered => {
                c.negotiated.map(|n| Ok(n.version))
            }
            _ => None,
        })
    }

    /// Sends UNLOAD. Progress through [`Vmbus::poll`]; on UNLOAD_RESPONSE every channel,
    /// GPADL and relid is gone and the state is [`ConnectionState::Disconnected`].
    pub fn start_unload(&self) -> Result<(), VmbusError> {
        self.lock().start_unload()
    }

    /// Sends UNLOAD and waits for UNLOAD_RESPONSE (ignoring everything else meanwhile).
    /// Afterwards [`Vmbus::connect`] may be called again (the kexec case). If the wait times
    /// out the state stays [`ConnectionState::Unloading`]: call [`Vmbus::abandon`] before
    /// connecting again. Channels still open are dead; closing them frees nothing the host
    /// did not release.
    pub fn unload(&self, waiter: &mut impl Wait) -> Result<(), VmbusError> {
        self.start_unload()?;
        self.wait_until(waiter, |c| {
            (c.state == ConnectionState::Disconnected).then_some(Ok(()))
        })
    }

    /// Gives up on the current connection without the host's agreement — UNLOAD_RESPONSE
    /// never came, or the guest must start over after a failure — and returns to
    /// [`ConnectionState::Disconnected`] so that [`Vmbus::connect`] can start afresh.
    ///
    /// The host may still use what it was given, so nothing is reused: the monitor and
    /// interrupt pages are leaked to it (new ones are allocated on the next connect), every
    /// offer and GPADL is forgotten, and every channel and host buffer of the old epoch leaks
    /// its memory when closed or released. Linux does the same when UNLOAD times out before
    /// kexec.
    ///
    /// Host messages already copied into the inbox belong to the old connection and are
    /// discarded (counted in [`super::Stats::stale_discarded`]), so they cannot pass for
    /// answers to the next INITIATE_CONTACT. VMBus messages carry no connection identity, so
    /// one still in the SynIC slot, or sent late by the host, can: a guest that abandons
    /// because the host went silent should let it settle before reconnecting.
    pub fn abandon(&self) {
        let mut c = self.lock();
        while self.dequeue().is_some() {
            c.stats.stale_discarded += 1;
        }
        c.leak_shared_pages();
        c.on_unloaded(false);
    }
}
