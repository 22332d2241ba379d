//! The VMBus connection (vmbus-core §5, §10): version negotiation with fallback, the offer
//! table, rescinds, GPADLs, channel open/close bookkeeping, unload and reconnect, and the
//! interrupt/poll entry points that feed host messages into these state machines.
//!
//! Everything is non-blocking and advanced by [`Connection::poll`] (or
//! [`Connection::handle_interrupt`]); the blocking wrappers take a [`Wait`] and are bounded.

mod dispatch;
mod gpadl_ops;
mod negotiate;

use crate::bitmap::ChannelBitmap;
use crate::error::{ProtocolViolation, VmbusError};
use crate::gpadl::GpadlTable;
use crate::hal::{HV_PAGE_SIZE, Hal};
use crate::offers::{OfferInfo, OfferTable, OpenState};
use crate::protocol::{
    CloseChannel, FeatureFlags, MonitorPage, OpenChannel, OpenChannelExtended, RelidReleased,
    VmbusVersion,
};
use crate::transport::Transport;
use crate::wait::Wait;
use core::ptr::NonNull;
use core::sync::atomic::{AtomicU32, Ordering};
use heapless::Deque;
use zerocopy::IntoBytes;

pub use gpadl_ops::GpadlBuffer;
pub use negotiate::SUPPORTED_FEATURES;

/// Host messages processed per [`Connection::poll`] at most, so a flood cannot starve the
/// caller (the rest stay queued in the SynIC and are taken by the next poll).
pub const MAX_MESSAGES_PER_POLL: usize = 64;
/// Connection events queued for [`Connection::next_event`]; older ones are dropped beyond.
pub const EVENT_QUEUE: usize = 64;
/// PostMessage attempts on a transient status (INSUFFICIENT_BUFFERS) before giving up.
pub const POST_ATTEMPTS: u32 = 20;

/// Pages the connection shares with the host: two monitor pages and the legacy interrupt page.
pub(crate) const SHARED_PAGES: usize = 3;
/// Offset of the send half of the legacy interrupt page.
const LEGACY_SEND_HALF: usize = 2048;

/// What the caller configures about the connection.
#[derive(Clone, Copy, Debug)]
pub struct ConnectionConfig {
    /// Versions to propose, highest first (default [`crate::protocol::CANDIDATE_VERSIONS`]).
    pub versions: &'static [VmbusVersion],
    /// 6.0 features to request (limited to [`SUPPORTED_FEATURES`]); the connection keeps
    /// `requested & granted`.
    pub features: FeatureFlags,
    /// Target VP for control messages (INITIATE_CONTACT @12); `None` = the transport's VP.
    pub target_vp: Option<u32>,
    /// Delay between transient PostMessage retries, given the attempt number (from 1).
    pub backoff: fn(u32),
}

fn spin_backoff(attempt: u32) {
    for _ in 0..(1u32 << attempt.min(16)) {
        core::hint::spin_loop();
    }
}

impl Default for ConnectionConfig {
    fn default() -> Self {
        Self {
            versions: &crate::protocol::CANDIDATE_VERSIONS,
            features: FeatureFlags::GUEST_SPECIFIED_SIGNAL_PARAMETERS,
            target_vp: None,
            backoff: spin_backoff,
        }
    }
}

/// Something that happened on the connection, for the device layer.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Event {
    /// Version negotiated; REQUESTOFFERS sent.
    Connected(VmbusVersion),
    /// A channel was offered (initially or hot-added).
    Offer(u32),
    /// The initial offers are all delivered.
    AllOffersDelivered,
    /// The host rescinded a channel.
    Rescind(u32),
    /// UNLOAD_RESPONSE arrived: every channel and GPADL is gone.
    Unloaded,
    /// The host broke the protocol; the message was dropped.
    Violation(ProtocolViolation),
}

/// Where the connection is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ConnectionState {
    /// No connection (initially, after UNLOAD_RESPONSE, or after a failure was collected).
    Disconnected,
    /// INITIATE_CONTACT for `versions[index]` sent, waiting for VERSION_RESPONSE.
    Contacting {
        /// Index into the candidate list.
        index: usize,
    },
    /// Connected.
    Connected,
    /// UNLOAD sent, waiting for UNLOAD_RESPONSE.
    Unloading,
    /// Negotiation failed.
    Failed(VmbusError),
}

/// The negotiated parameters of a live connection.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Negotiated {
    /// Agreed protocol version.
    pub version: VmbusVersion,
    /// Connection id for every further PostMessage (VERSION_RESPONSE @12 from 5.0, else 1).
    pub message_connection_id: u32,
    /// Granted 6.0 features (`requested & supported`), empty before 6.0.
    pub features: FeatureFlags,
}

/// Diagnostic counters.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Stats {
    /// Host messages processed.
    pub messages: u64,
    /// Messages discarded while no VERSION_RESPONSE was expected (stale, or not connected).
    pub stale_discarded: u64,
    /// Protocol violations detected.
    pub violations: u64,
    /// Events dropped because the queue was full.
    pub events_dropped: u64,
    /// PostMessage calls that needed a transient retry.
    pub post_retries: u64,
}

/// The guest end of the VMBus control connection.
pub struct Connection<T: Transport, H: Hal> {
    transport: T,
    hal: H,
    config: ConnectionConfig,
    state: ConnectionState,
    negotiated: Option<Negotiated>,
    /// Three zeroed pages: [0] parent→child and [1] child→parent monitor page, [2] the legacy
    /// interrupt page (receive half, then send half) used below 2.4.
    monitor_pages: Option<NonNull<u8>>,
    offers: OfferTable,
    gpadls: GpadlTable,
    offers_requested: bool,
    all_offers_delivered: bool,
    events: Deque<Event, EVENT_QUEUE>,
    stats: Stats,
    last_violation: Option<ProtocolViolation>,
    next_open_id: u32,
}

// SAFETY: `monitor_pages` names the connection's own shared pages, accessed only through
// `&self`/`&mut self` with atomics; the rest is `Send` when the transport and HAL are.
unsafe impl<T: Transport + Send, H: Hal + Send> Send for Connection<T, H> {}

impl<T: Transport, H: Hal> Connection<T, H> {
    /// A disconnected connection over `transport`, allocating host-visible memory from `hal`.
    pub fn new(transport: T, hal: H, config: ConnectionConfig) -> Self {
        Self {
            transport,
            hal,
            config,
            state: ConnectionState::Disconnected,
            negotiated: None,
            monitor_pages: None,
            offers: OfferTable::new(),
            gpadls: GpadlTable::new(),
            offers_requested: false,
            all_offers_delivered: false,
            events: Deque::new(),
            stats: Stats::default(),
            last_violation: None,
            next_open_id: 1,
        }
    }

    /// The platform memory interface.
    pub fn hal(&self) -> &H {
        &self.hal
    }

    /// The transport.
    pub fn transport(&self) -> &T {
        &self.transport
    }

    /// The transport, mutably (for example to take it apart after UNLOAD).
    pub fn transport_mut(&mut self) -> &mut T {
        &mut self.transport
    }

    /// Where the connection is.
    pub fn state(&self) -> ConnectionState {
        self.state
    }

    /// The negotiated parameters, once connected.
    pub fn negotiated(&self) -> Option<Negotiated> {
        self.negotiated
    }

    /// The negotiated version, once connected.
    pub fn version(&self) -> Option<VmbusVersion> {
        self.negotiated.map(|n| n.version)
    }

    /// The offer table.
    pub fn offers(&self) -> &OfferTable {
        &self.offers
    }

    /// The GPADL table.
    pub fn gpadls(&self) -> &GpadlTable {
        &self.gpadls
    }

    /// Whether ALLOFFERS_DELIVERED arrived on this connection.
    pub fn all_offers_delivered(&self) -> bool {
        self.all_offers_delivered
    }

    /// Diagnostic counters.
    pub fn stats(&self) -> Stats {
        self.stats
    }

    /// The last protocol violation seen.
    pub fn last_violation(&self) -> Option<ProtocolViolation> {
        self.last_violation
    }

    /// Takes the oldest queued event.
    pub fn next_event(&mut self) -> Option<Event> {
        self.events.pop_front()
    }

    fn push_event(&mut self, e: Event) {
        if self.events.is_full() {
            self.events.pop_front();
            self.stats.events_dropped += 1;
        }
        let _ = self.events.push_back(e);
    }

    fn violation(&mut self, v: ProtocolViolation) {
        log::warn!("VMBus host protocol violation: {v}");
        self.stats.violations += 1;
        self.last_violation = Some(v);
        self.push_event(Event::Violation(v));
    }

    fn require_connected(&self) -> Result<Negotiated, VmbusError> {
        match (self.state, self.negotiated) {
            (ConnectionState::Connected, Some(n)) => Ok(n),
            _ => Err(VmbusError::WrongState),
        }
    }

    /// Posts a VMBus message to `connection_id`, retrying transient failures with backoff.
    fn post_to(&mut self, connection_id: u32, payload: &[u8]) -> Result<(), VmbusError> {
        let transport = &mut self.transport;
        let backoff = self.config.backoff;
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
    fn post(&mut self, payload: &[u8]) -> Result<(), VmbusError> {
        let n = self.require_connected()?;
        self.post_to(n.message_connection_id, payload)
    }

    /// Processes up to [`MAX_MESSAGES_PER_POLL`] host messages from the SynIC; returns how
    /// many. Safe to call at any time; purely polled drivers call it in their loop.
    pub fn poll(&mut self) -> usize {
        let mut n = 0;
        while n < MAX_MESSAGES_PER_POLL {
            match self.transport.take_message() {
                Ok(Some(m)) => {
                    self.handle_message(m.payload());
                    n += 1;
                }
                Ok(None) => break,
                Err(e) => {
                    log::warn!("SynIC message dropped: {e}");
                    self.stats.violations += 1;
                    n += 1;
                }
            }
        }
        n
    }

    /// The VMBus SINT interrupt entry point (also usable purely polled): takes the channel
    /// event flags first (up to the highest relid in use), then processes host messages, and
    /// returns the channels that have work. No allocation, no blocking.
    ///
    /// Before 2.4 the host signals every channel with event flag 0; then every channel in use
    /// is reported.
    pub fn handle_interrupt(&mut self) -> ChannelBitmap {
        let mut work = ChannelBitmap::new();
        let limit = self.offers.relid_limit().max(1);
        self.transport
            .take_event_flags(limit, &mut |flag| work.set(flag));
        if self.version().is_some_and(|v| v < VmbusVersion::V2_4) && work.take(0) {
            for o in self.offers.iter() {
                work.set(o.relid);
            }
        }
        self.poll();
        work
    }

    /// Polls, then returns `done`'s answer, waiting with `waiter` between polls until it has
    /// one. Bounded by the waiter.
    pub fn wait_until<R>(
        &mut self,
        waiter: &mut impl Wait,
        mut done: impl FnMut(&mut Self) -> Option<Result<R, VmbusError>>,
    ) -> Result<R, VmbusError> {
        loop {
            self.poll();
            if let Some(r) = done(self) {
                return r;
            }
            waiter.wait()?;
        }
    }

    // ---- channel bookkeeping used by `Channel` ----

    /// The live offer with `relid` and its generation.
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

    /// Whether the offer `relid` of generation `generation` is still there, and rescinded.
    pub(crate) fn channel_status(&self, relid: u32, generation: u32) -> ChannelLiveness {
        match self.offers.get(relid) {
            Some(e) if e.generation == generation && e.rescinded => ChannelLiveness::Rescinded,
            Some(e) if e.generation == generation => ChannelLiveness::Live,
            _ => ChannelLiveness::Gone,
        }
    }

    /// Sends OPENCHANNEL for `relid` with the ring GPADL and downstream offset.
    pub(crate) fn post_open(
        &mut self,
        info: &OfferInfo,
        gpadl: u32,
        downstream_page_offset: u32,
        target_vp: u32,
        user_data: &[u8; 120],
    ) -> Result<u32, VmbusError> {
        let n = self.require_connected()?;
        let open_id = self.next_open_id;
        self.next_open_id = self.next_open_id.wrapping_add(1).max(1);
        let open = OpenChannel {
            header: crate::protocol::MessageHeader::new(crate::protocol::MessageType::OPENCHANNEL),
            relid: info.relid,
            open_id,
            ring_gpadl_handle: gpadl,
            target_vp,
            downstream_ring_page_offset: downstream_page_offset,
            user_data: *user_data,
        };
        if let Some(e) = self.offers.get_mut(info.relid) {
            e.open = OpenState::Opening { open_id };
        }
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
        if let Err(e) = r {
            if let Some(e) = self.offers.get_mut(info.relid) {
                e.open = OpenState::Closed;
            }
            return Err(e);
        }
        Ok(open_id)
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

    fn release_relid(&mut self, relid: u32) {
        self.offers.remove(relid);
        if self.require_connected().is_ok()
            && let Err(e) = self.post(RelidReleased::new(relid).as_bytes())
        {
            log::warn!("RELID_RELEASED({relid}) failed: {e}");
        }
    }

    /// Wakes the host for a channel: the pending bit of its monitor id in the child→parent
    /// monitor page (MNF) when the offer has a monitor, else HvSignalEvent on its connection
    /// id.
    pub(crate) fn signal(&self, info: &OfferInfo) -> Result<(), VmbusError> {
        if let (Some(id), Some(pages)) = (info.monitor_id, self.monitor_pages)
            && let Some((offset, bit)) = MonitorPage::pending_bit(id)
        {
            // SAFETY: `pages` is the live two-page monitor allocation; the child→parent page is
            // the second, and `offset` (< 0x28, 4-aligned) is a pending word inside it. The
            // hypervisor reads and clears these bits, so they are only accessed atomically.
            let word = unsafe {
                AtomicU32::from_ptr(pages.as_ptr().add(HV_PAGE_SIZE + offset).cast::<u32>())
            };
            word.fetch_or(bit, Ordering::SeqCst);
            return Ok(());
        }
        if !info.dedicated_interrupt
            && self.version().is_some_and(|v| v < VmbusVersion::V2_4)
            && let Some(pages) = self.monitor_pages
            && info.relid < crate::protocol::MAX_CHANNELS
        {
            // SAFETY: the legacy interrupt page's send half; relid < 2048 so the word lies in
            // the page. Shared with the host, hence atomic.
            let w = unsafe {
                AtomicU32::from_ptr(
                    pages
                        .as_ptr()
                        .add(2 * HV_PAGE_SIZE + LEGACY_SEND_HALF + info.relid as usize / 32 * 4)
                        .cast(),
                )
            };
            w.fetch_or(1 << (info.relid % 32), Ordering::SeqCst);
        }
        self.transport
            .signal_event(info.connection_id)
            .map_err(VmbusError::Signal)
    }
}

/// What the connection knows about a channel object's offer.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum ChannelLiveness {
    Live,
    Rescinded,
    /// Unloaded, or released and re-offered.
    Gone,
}

impl<T: Transport, H: Hal> Drop for Connection<T, H> {
    fn drop(&mut self) {
        // The monitor pages are freed only when the host no longer uses them: never while a
        // connection may be live (a kernel keeps the connection for its lifetime).
        if let Some(p) = self.monitor_pages.take()
            && matches!(
                self.state,
                ConnectionState::Disconnected | ConnectionState::Failed(_)
            )
            && self.negotiated.is_none()
        {
            // SAFETY: pages from `alloc_pages(SHARED_PAGES)`; no connection uses them any more.
            unsafe { self.hal.free_pages(p, SHARED_PAGES) };
        }
    }
}

#[cfg(test)]
mod tests;
