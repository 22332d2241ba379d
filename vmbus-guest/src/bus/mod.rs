//! The VMBus connection, shared by every driver (vmbus-core §5, §10): version negotiation with
//! fallback, the offer table, rescinds, GPADLs, channel open/close bookkeeping, unload and
//! reconnect, and the interrupt and poll entry points that feed host messages into these state
//! machines.
//!
//! [`Vmbus`] is used through `&`: a kernel keeps it in a `static` (or any shared place), hands
//! `&Vmbus` to every driver and calls [`Vmbus::handle_interrupt`] from its VMBus interrupt.
//!
//! Two paths, two kinds of synchronisation:
//! - the **interrupt path** ([`Vmbus::handle_interrupt`]) uses atomics only: it takes the
//!   channel event flags, copies host messages out of the SynIC slot (EOM protocol) into a
//!   lock-free inbox, marks rescinded channels dead at once and reports which relids have
//!   work. It never takes the control lock, never allocates, never blocks;
//! - the **control path** (everything else on [`Vmbus`]) runs in thread context under one
//!   spin lock: it processes the inbox ([`Vmbus::poll`]), posts messages, keeps the offer and
//!   GPADL tables. Its blocking calls take a [`Wait`] and are bounded.
//!
//! Channels ([`crate::Channel`]) need neither on their data path: each carries its signalling
//! parameters and reads its liveness from a lock-free slot the bus updates.

#![forbid(unsafe_code)]

mod control;
mod dispatch;
mod gpadl_ops;
mod inbox;
mod negotiate;
pub(crate) mod slots;

use crate::bitmap::{AtomicChannelBitmap, ChannelBitmap};
use crate::error::{ProtocolViolation, VmbusError};
use crate::gpadl::{GpadlState, GpadlTable};
use crate::hal::Hal;
use crate::offers::{OfferInfo, OfferTable};
use crate::protocol::{DeviceClass, FeatureFlags, Guid, MessageType, VmbusVersion};
use crate::shared::SharedPages;
use crate::transport::{RawMessage, Transport};
use crate::wait::Wait;
use core::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use heapless::Deque;

pub(crate) use control::Ctl;
pub(crate) use gpadl_ops::Created;
pub use negotiate::{MAX_LEAKED_MONITOR_SETS, SUPPORTED_FEATURES};
pub use slots::MAX_OPEN_CHANNELS;
pub(crate) use slots::{Liveness, SlotRef, Slots};

/// Host messages processed per [`Vmbus::poll`] at most, so a flood cannot starve the caller
/// (the rest stay queued and are taken by the next poll).
pub const MAX_MESSAGES_PER_POLL: usize = 64;
/// Connection events queued for [`Vmbus::next_event`]. When full, the newest event is
/// dropped and counted ([`Stats::events_dropped`]); offers stay readable in the offer table.
pub const EVENT_QUEUE: usize = 32;
/// Host messages the interrupt path can copy out before the control path runs. When the inbox
/// is full, messages stay in the SynIC slot (the host waits) until [`Vmbus::poll`] makes room.
pub use inbox::INBOX;
/// PostMessage attempts on a transient status (INSUFFICIENT_BUFFERS) before giving up.
pub const POST_ATTEMPTS: u32 = 20;

/// Pages the connection shares with the host: two monitor pages and the legacy interrupt page.
pub(crate) const SHARED_PAGES: usize = 3;
/// Offset of the send half of the legacy interrupt page.
pub(crate) const LEGACY_SEND_HALF: usize = 2048;

/// Whether memory handed back by a close or teardown went back to the allocator.
#[must_use = "leaked memory is gone for good: report or count it"]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Released {
    /// The host confirmed it no longer maps the memory (GPADL_TORNDOWN, a refused GPADL,
    /// UNLOAD_RESPONSE, or it never saw it); it was freed.
    Freed,
    /// The host may still map the memory (no confirmation, a rescind, an abandoned or
    /// replaced connection): it was leaked, never reused.
    Leaked,
}

impl Released {
    /// `Leaked` if either is.
    pub fn and(self, other: Released) -> Released {
        if self == Released::Freed && other == Released::Freed {
            Released::Freed
        } else {
            Released::Leaked
        }
    }

    /// Whether the memory was freed.
    pub fn is_freed(self) -> bool {
        self == Released::Freed
    }
}

/// What the caller configures about the connection.
#[derive(Clone, Copy, Debug)]
pub struct ConnectionConfig {
    /// Versions to propose, highest first (default [`crate::protocol::CANDIDATE_VERSIONS`]).
    /// Versions the guest does not implement are skipped; an empty or unsorted list is
    /// refused by [`Vmbus::start_connect`].
    pub versions: &'static [VmbusVersion],
    /// 6.0 features to request (limited to [`SUPPORTED_FEATURES`]); the connection keeps
    /// `requested & granted`. Default: none (as Linux).
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
            features: FeatureFlags::empty(),
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
    /// Shared pages leaked because the host might still map them (abandoned connections,
    /// failed negotiations, unconfirmed GPADLs).
    pub pages_leaked: u64,
}

/// What [`Vmbus::handle_interrupt`] and [`Vmbus::poll`] found.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Work {
    /// Channels to service: their event flag was set, or the host rescinded them (their
    /// owner's next receive reports the failure of everything in flight).
    pub channels: ChannelBitmap,
    /// Host control messages wait for [`Vmbus::poll`] (thread context).
    pub control: bool,
}

/// The control-path state, behind the bus lock.
pub(crate) struct Control {
    pub(crate) state: ConnectionState,
    pub(crate) negotiated: Option<Negotiated>,
    /// Three zeroed pages: [0] parent→child and [1] child→parent monitor page, [2] the legacy
    /// interrupt page (receive half, then send half) used below 2.4.
    pub(crate) monitor_pages: Option<SharedPages>,
    pub(crate) offers: OfferTable,
    pub(crate) gpadls: GpadlTable,
    pub(crate) offers_requested: bool,
    pub(crate) all_offers_delivered: bool,
    pub(crate) events: Deque<Event, EVENT_QUEUE>,
    pub(crate) stats: Stats,
    pub(crate) last_violation: Option<ProtocolViolation>,
    pub(crate) next_open_id: u32,
    /// The host was given the monitor pages (INITIATE_CONTACT) and has not released them
    /// (UNLOAD_RESPONSE, or every version refused).
    pub(crate) monitor_shared: bool,
    /// The last epoch that ended with UNLOAD_RESPONSE (the host released everything).
    pub(crate) cleanly_ended: Option<u32>,
    /// Monitor page sets left to the host so far (at most [`MAX_LEAKED_MONITOR_SETS`]).
    pub(crate) monitor_sets_leaked: u32,
    /// The current monitor pages were kept for reuse after a connection the host never
    /// released: an old connection may still map them, so they are never freed.
    pub(crate) monitor_pinned: bool,
}

/// The guest end of the VMBus control connection, shared by every driver.
///
/// Interrupt-safe calls: [`Vmbus::handle_interrupt`], [`Vmbus::take_work`],
/// [`Vmbus::epoch`]. Every other call takes the control lock and must run in thread context.
pub struct Vmbus<T: Transport, H: Hal> {
    transport: T,
    hal: H,
    config: ConnectionConfig,
    control: spin::Mutex<Control>,
    inbox: inbox::Inbox,
    /// One context at a time takes SynIC messages (the EOM protocol is single-consumer).
    taking: AtomicBool,
    /// Someone found `taking` set: the holder takes again before leaving.
    retake: AtomicBool,
    work: AtomicChannelBitmap,
    pub(crate) slots: Slots,
    /// Bumped when the connection ends without the host's agreement ([`Vmbus::abandon`]) or
    /// with it (UNLOAD_RESPONSE): objects of an older epoch never free or reuse memory.
    epoch: AtomicU32,
    /// Below 2.4 the host signals every channel with event flag 0.
    legacy_flags: AtomicBool,
    relid_limit: AtomicU32,
}

impl<T: Transport, H: Hal> Vmbus<T, H> {
    /// A disconnected bus over `transport`, allocating host-visible memory from `hal`.
    pub fn new(transport: T, hal: H, config: ConnectionConfig) -> Self {
        Self {
            transport,
            hal,
            config,
            control: spin::Mutex::new(Control {
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
                monitor_shared: false,
                cleanly_ended: None,
                monitor_sets_leaked: 0,
                monitor_pinned: false,
            }),
            inbox: inbox::Inbox::new(),
            taking: AtomicBool::new(false),
            retake: AtomicBool::new(false),
            work: AtomicChannelBitmap::new(),
            slots: Slots::new(),
            epoch: AtomicU32::new(1),
            legacy_flags: AtomicBool::new(false),
            relid_limit: AtomicU32::new(1),
        }
    }

    pub(crate) fn lock(&self) -> Ctl<'_, T, H> {
        Ctl::new(self, self.control.lock())
    }

    /// The platform memory interface. Interrupt-safe.
    pub fn hal(&self) -> &H {
        &self.hal
    }

    /// The transport. Interrupt-safe.
    pub fn transport(&self) -> &T {
        &self.transport
    }

    pub(crate) fn config(&self) -> &ConnectionConfig {
        &self.config
    }

    /// The connection epoch: changes when the connection ends (UNLOAD_RESPONSE or
    /// [`Vmbus::abandon`]). Interrupt-safe.
    pub fn epoch(&self) -> u32 {
        self.epoch.load(Ordering::Acquire)
    }

    pub(crate) fn bump_epoch(&self) {
        self.epoch.fetch_add(1, Ordering::AcqRel);
        self.slots.all_gone();
    }

    /// Where the connection is.
    pub fn state(&self) -> ConnectionState {
        self.lock().state
    }

    /// The negotiated parameters, once connected.
    pub fn negotiated(&self) -> Option<Negotiated> {
        self.lock().negotiated
    }

    /// The negotiated version, once connected.
    pub fn version(&self) -> Option<VmbusVersion> {
        self.negotiated().map(|n| n.version)
    }

    /// Runs `f` on the offer table (under the control lock: keep it short).
    pub fn with_offers<R>(&self, f: impl FnOnce(&OfferTable) -> R) -> R {
        f(&self.lock().offers)
    }

    /// The live offer with `relid`.
    pub fn offer(&self, relid: u32) -> Option<OfferInfo> {
        self.with_offers(|t| t.offer(relid).copied())
    }

    /// The live primary offer of `class`, of the given instance if `instance` is set
    /// (otherwise the lowest relid not already claimed by an open channel).
    pub fn find(&self, class: DeviceClass, instance: Option<&Guid>) -> Option<OfferInfo> {
        let c = self.lock();
        c.offers.free_primary(class, instance).copied()
    }

    /// Whether ALLOFFERS_DELIVERED arrived on this connection.
    pub fn all_offers_delivered(&self) -> bool {
        self.lock().all_offers_delivered
    }

    /// Diagnostic counters.
    pub fn stats(&self) -> Stats {
        self.lock().stats
    }

    /// The last protocol violation seen.
    pub fn last_violation(&self) -> Option<ProtocolViolation> {
        self.lock().last_violation
    }

    /// Takes the oldest queued event (offers, hot-adds, rescinds, unload).
    pub fn next_event(&self) -> Option<Event> {
        self.lock().events.pop_front()
    }

    /// State of a GPADL.
    pub fn gpadl_state(&self, handle: u32) -> Option<GpadlState> {
        self.lock().gpadls.state(handle)
    }

    /// Number of GPADLs the connection tracks (live, being created or torn down).
    pub fn gpadl_count(&self) -> usize {
        self.lock().gpadls.len()
    }

    pub(crate) fn set_relid_limit(&self, limit: u32) {
        self.relid_limit.store(limit.max(1), Ordering::Release);
    }

    pub(crate) fn set_legacy_flags(&self, legacy: bool) {
        self.legacy_flags.store(legacy, Ordering::Release);
    }

    /// Records that `relid` has work for its driver (rescinds found by the control path).
    pub(crate) fn note_work(&self, relid: u32) {
        self.work.set(relid);
    }

    /// Takes the "has work" mark of `relid` set by the interrupt or control path (for a
    /// driver that services its channels from its own loop). Interrupt-safe.
    pub fn take_work(&self, relid: u32) -> bool {
        self.work.take(relid)
    }

    /// Copies host messages from the SynIC into the inbox while there is room; a RESCIND
    /// marks its channel dead at once. One context at a time; a concurrent caller leaves the
    /// work to the holder, which takes again before leaving.
    fn take_messages(&self, work: &mut ChannelBitmap) {
        loop {
            if self
                .taking
                .compare_exchange(false, true, Ordering::Acquire, Ordering::Relaxed)
                .is_err()
            {
                self.retake.store(true, Ordering::Release);
                return;
            }
            self.retake.store(false, Ordering::Relaxed);
            // Bounded: the inbox holds INBOX messages; a failed take counts as one.
            for _ in 0..INBOX * 2 {
                if !self.inbox.has_room() {
                    break;
                }
                match self.transport.take_message() {
                    Ok(Some(m)) => {
                        if let Some(relid) = rescinded_relid(m.payload())
                            && self.slots.rescind(relid)
                        {
                            work.set(relid);
                            self.work.set(relid);
                        }
                        if self.inbox.push(&m).is_err() {
                            // Cannot happen: room was checked and one context produces at a
                            // time. Said loudly rather than hidden.
                            log::error!(
                                "VMBus inbox full, dropped a {}-byte message",
                                m.payload().len()
                            );
                        }
                    }
                    Ok(None) => break,
                    Err(e) => log::warn!("SynIC message dropped: {e}"),
                }
            }
            self.taking.store(false, Ordering::Release);
            if !self.retake.swap(false, Ordering::AcqRel) {
                return;
            }
        }
    }

    /// The VMBus SINT interrupt entry point (also usable purely polled). **Interrupt-safe**:
    /// atomics only, no allocation, no blocking, never the control lock.
    ///
    /// Takes the channel event flags (up to the highest relid offered), copies host messages
    /// into the inbox (marking rescinded channels dead at once), and returns the channels with
    /// work — rescinded ones included — and whether control messages wait for
    /// [`Vmbus::poll`], which the kernel then calls from thread context.
    ///
    /// Before 2.4 the host signals every channel with event flag 0; then every open channel is
    /// reported.
    pub fn handle_interrupt(&self) -> Work {
        let mut channels = ChannelBitmap::new();
        let limit = self.relid_limit.load(Ordering::Acquire);
        self.transport
            .take_event_flags(limit, &mut |flag| channels.set(flag));
        if self.legacy_flags.load(Ordering::Acquire) && channels.take(0) {
            self.slots.open_relids(|relid| channels.set(relid));
        }
        self.take_messages(&mut channels);
        self.work.drain_into(&mut channels);
        Work {
            channels,
            control: !self.inbox_is_empty(),
        }
    }

    fn inbox_is_empty(&self) -> bool {
        self.inbox.len() == 0
    }

    /// Processes up to [`MAX_MESSAGES_PER_POLL`] host messages (from the inbox, then the
    /// SynIC) under the control lock and returns what it found: channels with work (rescinds)
    /// and whether messages are left. Thread context only; purely polled drivers call it in
    /// their loop.
    ///
    /// It takes messages from the SynIC itself, which (EOM being a per-VP register) must
    /// happen on the VP the transport belongs to. A kernel whose control path may run on any
    /// VP lets the VMBus interrupt on that VP take them ([`Vmbus::handle_interrupt`]) and
    /// calls [`Vmbus::process`] elsewhere.
    pub fn poll(&self) -> Work {
        self.drain(true)
    }

    /// Like [`Vmbus::poll`], but only processes what [`Vmbus::handle_interrupt`] already
    /// copied into the inbox: callable from any VP (thread context).
    pub fn process(&self) -> Work {
        self.drain(false)
    }

    fn drain(&self, take_from_synic: bool) -> Work {
        let mut channels = ChannelBitmap::new();
        let mut ctl = self.lock();
        let mut n = 0;
        while n < MAX_MESSAGES_PER_POLL {
            let m = match self.dequeue() {
                Some(m) => m,
                None if take_from_synic => {
                    self.take_messages(&mut channels);
                    match self.dequeue() {
                        Some(m) => m,
                        None => break,
                    }
                }
                None => break,
            };
            ctl.handle_message(m.payload());
            n += 1;
        }
        drop(ctl);
        self.work.drain_into(&mut channels);
        Work {
            channels,
            control: n == MAX_MESSAGES_PER_POLL || !self.inbox_is_empty(),
        }
    }

    pub(super) fn dequeue(&self) -> Option<RawMessage> {
        self.inbox.pop()
    }

    /// Processes one VMBus message payload from the host (as copied out of the SynIC slot),
    /// for a kernel with its own SynIC handling. Never panics: malformed or unexpected
    /// messages are counted and dropped. Thread context only.
    pub fn handle_message(&self, payload: &[u8]) {
        if let Some(relid) = rescinded_relid(payload)
            && self.slots.rescind(relid)
        {
            self.work.set(relid);
        }
        self.lock().handle_message(payload);
    }

    /// Polls, then returns `done`'s answer, waiting with `waiter` between polls until it has
    /// one. Bounded by the waiter. Thread context only.
    pub(crate) fn wait_until<R>(
        &self,
        waiter: &mut impl Wait,
        mut done: impl FnMut(&mut Ctl<'_, T, H>) -> Option<Result<R, VmbusError>>,
    ) -> Result<R, VmbusError> {
        loop {
            self.poll();
            if let Some(r) = done(&mut self.lock()) {
                return r;
            }
            waiter.wait()?;
        }
    }
}

/// The relid of a RESCIND_CHANNELOFFER, read from the private copy of a message.
fn rescinded_relid(payload: &[u8]) -> Option<u32> {
    let word = |at: usize| {
        payload
            .get(at..at + 4)
            .map(|b| u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
    };
    (word(0)? == MessageType::RESCIND_CHANNELOFFER.0).then_some(word(8)?)
}

impl<T: Transport, H: Hal> Drop for Vmbus<T, H> {
    fn drop(&mut self) {
        // The monitor pages are freed only when the host never used them, or released them:
        // no connection holds them and none that the host never released ever did (a kernel
        // keeps the bus for its lifetime).
        let c = self.control.get_mut();
        if let Some(p) = c.monitor_pages.take() {
            if !c.monitor_shared && !c.monitor_pinned {
                p.free(&self.hal);
            } else {
                p.leak();
            }
        }
    }
}

#[cfg(test)]
mod tests;
