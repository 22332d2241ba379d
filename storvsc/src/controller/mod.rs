//! The storvsc controller on its VMBus channels: opens the SCSI channel on the shared bus,
//! runs the VSTOR handshake ([`Channel::transact`]), asks for sub-channels when the host
//! allows them (devices.md §3.10, vmbus-core §9) and opens them
//! ([`Channel::open_subchannels`]), then executes SRBs — queued (many in flight, spread over
//! every channel, ends reported by [`StorvscController::poll`] or, from the interrupt path,
//! [`StorvscController::poll_interrupt`]), in bursts that cost one publish and at most one
//! signal per channel ([`Burst`]), or blocking as [`ScsiTransport`], which is built on the
//! queue.
//!
//! The controller borrows the bus (`&Vmbus`: other drivers use it meanwhile) and owns only
//! its channels and its two bounce buffers. Requests are tracked by each channel's own
//! request table, with the controller's queue-slot index as context: a completion, or a
//! [`Received::Failed`] after the channel died (rescind, unload, corruption), comes back with
//! it.
//!
//! Data goes GPA-direct: on the caller's memory when the HAL can translate it
//! ([`Hal::virt_to_phys`]), otherwise through a bus-allocated [`HostBuffer`] — a pool shared
//! by queued requests, and one large buffer for blocking requests. Memory the host may still
//! access is never reused: a request that fails without a completion keeps its buffer until
//! [`StorvscController::close_with`] learns from the bus whether the host let go of it.

mod blocking;
mod burst;
mod close;
mod complete;
mod open;
mod submit;

pub use burst::Burst;
use burst::BurstState;

use vmbus_guest::{
    Channel, ChannelConfig, Hal, HostBuffer, Released, RequestId, Transport, Vmbus, Wait,
};

use crate::handshake::Negotiated;
use crate::protocol::Operation;
use crate::queue::{
    CallerMemory, DEFAULT_CHANNELS, DEFAULT_DEPTH, DEFAULT_POOL_PAGES, IoResult, Memory, PagePool,
    Tag,
};

#[cfg(doc)]
use crate::block::ScsiTransport;
#[cfg(doc)]
use crate::queue::MAX_POOL_PAGES;
#[cfg(doc)]
use vmbus_guest::{Received, Work};

/// Pages per ring direction, control page included (Linux storvsc uses a few hundred KiB; 128
/// KiB per direction keeps dozens of SRBs in flight).
pub const RING_PAGES: usize = 32;
/// Largest transfer sent as one blocking SRB: the host's maximum, capped by the blocking
/// bounce buffer.
pub const BOUNCE_BYTES: usize = 256 * 1024;
/// Room for one host packet on this channel (completions and unsolicited messages are at most
/// a descriptor plus a 64-byte VSTOR packet; margin for padding and hostile lengths).
const RX_BUF: usize = 256;
/// Context of the handshake requests (not a queue slot: a late completion matches nothing).
const HANDSHAKE_CONTEXT: u16 = u16::MAX;
/// Packets one internal drain (blocking waits) takes per channel before moving on.
const DRAIN_BUDGET: usize = 256;

/// A channel of the controller: the context of each request is its queue-slot index.
type Chan<'b, T, H, const DEPTH: usize> = Channel<'b, T, H, u16, DEPTH>;

/// Options for [`StorvscController::open_with`].
#[derive(Clone, Copy, Debug)]
pub struct ControllerOptions {
    /// Sub-channels to ask for (capped by the host's `max_channel_count` and by the
    /// controller's `CHANNELS - 1`); 0 = primary channel only.
    pub sub_channels: u16,
    /// Spreading policy. 0: every request goes to the least-loaded live channel (ties
    /// round-robin), which spreads even a single submitter's burst over all channels and
    /// costs one guest→host signal per channel per burst. N > 0: a request stays on the
    /// channel the previous one went to while that channel has fewer than N requests in
    /// flight, then moves to the least-loaded one — fewer signals for one submitter, still
    /// every channel under deep queues.
    pub spill_depth: usize,
    /// Pages of the bounce pool queued requests on memory the host cannot see share (at
    /// most [`MAX_POOL_PAGES`]; default [`DEFAULT_POOL_PAGES`]).
    pub pool_pages: usize,
}

impl Default for ControllerOptions {
    /// As many sub-channels as the host and `CHANNELS` allow, least-loaded spreading, a
    /// 256 KiB bounce pool.
    fn default() -> Self {
        Self {
            sub_channels: u16::MAX,
            spill_depth: 0,
            pool_pages: DEFAULT_POOL_PAGES,
        }
    }
}

/// Where a request's data goes on the wire.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Staging {
    /// No data phase.
    None,
    /// GPA-direct on the caller's memory.
    Direct,
    /// Through pages `first..first + pages` of the bounce pool.
    Pool { first: u16, pages: u16 },
    /// Through the blocking bounce buffer (blocking requests only).
    Big,
}

/// Who waits for a request.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Owner {
    /// A queued request: reported through `poll`.
    Queued,
    /// A blocking `execute` that waits for this slot.
    Blocking,
    /// A blocking request that timed out: dropped when it ends.
    Abandoned,
}

/// Where a queue slot is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Phase {
    Free,
    /// Sent; the channel's request table holds it (`request` is set).
    InFlight,
    /// Ended; `result` waits for its owner (a blocking caller, or the next `poll`).
    Ended,
    /// Reported, but still accounted: its channel may still hold the request (`request` is
    /// set: reported early because the primary died), or the caller's buffer waits for the
    /// close verdict (`memory` is `HeldUntilClose`).
    Lingering,
}

/// What the slot's request wants staged.
#[derive(Clone, Copy, Debug)]
enum Stage {
    None,
    Direct(CallerMemory),
    Pool(CallerMemory),
    Big(usize),
}

/// The blocking bounce buffer.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum BigBounce {
    Free,
    /// Named by a request in flight (a blocking one, or one that timed out).
    Busy,
    /// Named by a request that failed without a completion: the host's until close.
    Held,
}

/// One queue slot.
#[derive(Debug)]
struct Slot {
    generation: u32,
    phase: Phase,
    channel: u8,
    request: Option<RequestId>,
    data: Option<CallerMemory>,
    staging: Staging,
    owner: Owner,
    result: Option<IoResult>,
    memory: Memory,
    /// The host completed a request reported early (its buffer is free after all).
    host_done: bool,
}

impl Slot {
    const fn new() -> Self {
        Self {
            generation: 1,
            phase: Phase::Free,
            channel: 0,
            request: None,
            data: None,
            staging: Staging::None,
            owner: Owner::Queued,
            result: None,
            memory: Memory::Returned,
            host_done: false,
        }
    }

    fn tag(&self, index: usize) -> Tag {
        Tag::new(index, self.generation)
    }
}

/// A SCSI controller (one storvsc device: its primary channel and sub-channels) on a shared
/// VMBus.
///
/// `CHANNELS` bounds the channels (primary included, at most 32) and `DEPTH` the requests in
/// flight (all channels together; each channel's request table has the same capacity). The
/// defaults ([`DEFAULT_CHANNELS`], [`DEFAULT_DEPTH`]) keep the value under 16 KiB.
///
/// Queued I/O: [`Self::submit`] (or [`Self::submit_read`] / [`Self::submit_write`]) sends an
/// SRB and returns a [`Tag`] at once; a [`Burst`] ([`Self::burst`], [`Self::burst_on_vp`])
/// sends many and publishes them with one index store and at most one signal per channel;
/// [`Self::poll`] (thread context) or [`Self::poll_interrupt`] (given the bus's [`Work`])
/// reports each ended request once, draining with a budget while the host's interrupts stay
/// masked and unmasking only when a ring is empty (NAPI-style).
/// Blocking I/O: [`ScsiTransport::execute`] submits and waits with the waiter's full budget
/// per request ([`Wait::restart`]). Unsolicited ENUMERATE_BUS / REMOVE_DEVICE messages seen
/// meanwhile are recorded ([`StorvscController::take_bus_change`]) so the caller can rescan.
///
/// Close it with [`Self::close_with`] (or [`Self::close`]); dropping it leaks its channels'
/// rings and its bounce buffers, and the buffers of requests in flight must then never be
/// reused.
pub struct StorvscController<
    'b,
    T: Transport,
    H: Hal,
    W: Wait,
    const CHANNELS: usize = DEFAULT_CHANNELS,
    const DEPTH: usize = DEFAULT_DEPTH,
> {
    bus: &'b Vmbus<T, H>,
    /// Index 0 is the primary; `None` = never opened.
    channels: [Option<Chan<'b, T, H, DEPTH>>; CHANNELS],
    /// Channels opened (primary included); `channels[..opened]` are set.
    opened: usize,
    relids: [u32; CHANNELS],
    submitted: [u64; CHANNELS],
    /// Channels that died (rescinded, unloaded, corrupt), one bit each: closed at close.
    dead: u32,
    /// Channels whose last drain stopped with packets possibly left (no interrupt will
    /// announce them).
    more: u32,
    waiter: W,
    negotiated: Negotiated,
    slots: [Slot; DEPTH],
    /// Indices of the free slots (a stack: `free[..free_len]`), so a submission takes one
    /// without scanning.
    free: [u16; DEPTH],
    free_len: usize,
    /// Slots in flight or ended and not yet reported ([`Self::in_flight`]).
    active: usize,
    /// Queued requests ended while a blocking call waited, not yet reported.
    undelivered: usize,
    pool: Option<HostBuffer<'b, T, H>>,
    pool_pages: PagePool,
    bounce: Option<HostBuffer<'b, T, H>>,
    bounce_state: BigBounce,
    /// Where the least-loaded search and the poll start (round-robin).
    cursor: usize,
    poll_cursor: usize,
    /// Channel of the last submission and [`ControllerOptions::spill_depth`].
    last: usize,
    spill_depth: usize,
    bus_changed: bool,
}

impl<'b, T: Transport, H: Hal, W: Wait, const CHANNELS: usize, const DEPTH: usize>
    StorvscController<'b, T, H, W, CHANNELS, DEPTH>
{
    /// The bus the controller's channels are open on.
    pub fn bus(&self) -> &'b Vmbus<T, H> {
        self.bus
    }

    /// What the handshake agreed (version, host limits).
    pub fn negotiated(&self) -> &Negotiated {
        &self.negotiated
    }

    /// The largest transfer one blocking request may carry: the host's limit, capped by the
    /// bounce buffer. Give this to [`crate::block::ScsiDisk::open`].
    pub fn max_transfer_bytes(&self) -> u32 {
        self.negotiated.max_transfer_bytes.min(BOUNCE_BYTES as u32)
    }

    /// Whether the host announced a bus change (ENUMERATE_BUS, REMOVE_DEVICE) since the last
    /// call: rescan the LUNs.
    pub fn take_bus_change(&mut self) -> bool {
        core::mem::take(&mut self.bus_changed)
    }

    /// Channels opened at start (primary plus sub-channels), live or not.
    pub fn channel_count(&self) -> usize {
        self.opened
    }

    /// Relids of the channels opened at start; index 0 is the primary.
    pub fn channel_relids(&self) -> &[u32] {
        &self.relids[..self.opened]
    }

    /// Requests sent on each channel so far (same order as [`Self::channel_relids`]).
    pub fn submissions_per_channel(&self) -> &[u64] {
        &self.submitted[..self.opened]
    }

    /// Requests submitted and not yet reported (blocking ones included).
    pub fn in_flight(&self) -> usize {
        debug_assert_eq!(
            self.active,
            self.slots
                .iter()
                .filter(|s| matches!(s.phase, Phase::InFlight | Phase::Ended))
                .count()
        );
        self.active
    }

    /// Requests reported with [`Memory::HeldUntilClose`] whose buffers wait for
    /// [`Self::close_with`].
    pub fn held_until_close(&self) -> usize {
        self.slots
            .iter()
            .filter(|s| s.phase == Phase::Lingering && s.memory == Memory::HeldUntilClose)
            .count()
    }

    /// Whether the primary channel is still usable (it was not rescinded, unloaded or
    /// corrupted). Once it is not, every request ends with an error and new ones are refused.
    pub fn is_alive(&self) -> bool {
        self.dead & 1 == 0
    }
}

pub(super) fn channel_config() -> ChannelConfig {
    ChannelConfig {
        outbound_pages: RING_PAGES,
        inbound_pages: RING_PAGES,
        // OPENCHANNEL user data: a zeroed 24-byte channel-properties structure.
        ..ChannelConfig::default()
    }
}

pub(super) fn note_release(relid: u32, r: Released) {
    if r == Released::Leaked {
        log::warn!("storvsc {relid}: memory leaked (the host did not confirm it let go)");
    }
}

/// Records an unsolicited host packet: ENUMERATE_BUS / REMOVE_DEVICE mean "rescan".
pub(super) fn note_unsolicited(payload: &[u8], bus_changed: &mut bool) {
    let operation = payload
        .get(..4)
        .and_then(|b| b.try_into().ok())
        .map(|b| Operation(u32::from_le_bytes(b)));
    if matches!(
        operation,
        Some(Operation::ENUMERATE_BUS | Operation::REMOVE_DEVICE)
    ) {
        *bus_changed = true;
    } else {
        log::warn!("storvsc: ignored unsolicited host packet {operation:?}");
    }
}
