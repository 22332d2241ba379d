//! The storvsc controller on its VMBus channels: opens the SCSI channel on the shared bus,
//! runs the VSTOR handshake ([`Channel::transact`]), asks for sub-channels when the host
//! allows them (devices.md §3.10, vmbus-core §9) and opens them
//! ([`Channel::open_subchannels`]), then executes SRBs — queued (many in flight, spread over
//! every channel, ends reported by [`StorvscController::poll`] or, from the interrupt path,
//! [`StorvscController::poll_interrupt`]) or blocking as [`ScsiTransport`], which is built on
//! the queue.
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

use vmbus_guest::{
    Channel, ChannelConfig, ChannelError, HV_PAGE_SIZE, Hal, HostBuffer, Received, Released,
    RequestId, Transport, Vmbus, Wait, Work,
};

use crate::StorError;
use crate::block::{DataBuf, ScsiTransport};
use crate::handshake::{
    Handshake, Negotiated, Progress, check_simple_completion, create_sub_channels_request,
};
use crate::protocol::{DataDirection, Operation, VSTOR_PACKET_SIZE_WIN8 as VSTOR_PACKET_SIZE};
use crate::queue::{
    CallerMemory, DEFAULT_CHANNELS, DEFAULT_DEPTH, DEFAULT_POOL_PAGES, Done, IoBuffer, IoResult,
    MAX_POOL_PAGES, Memory, PagePool, Polled, Reclaimed, SLOT_BOUNCE_BYTES, Tag,
};
use crate::request::{LunAddress, ScsiRequest, SrbCompletion};
use crate::scsi::Cdb;

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
/// SRB and returns a [`Tag`] at once; [`Self::poll`] (thread context) or
/// [`Self::poll_interrupt`] (given the bus's [`Work`]) reports each ended request once.
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

fn is_back_pressure(e: &StorError) -> bool {
    matches!(
        e,
        StorError::TableFull | StorError::Channel(ChannelError::Full)
    )
}

impl<'b, T: Transport, H: Hal, W: Wait, const CHANNELS: usize, const DEPTH: usize>
    StorvscController<'b, T, H, W, CHANNELS, DEPTH>
{
    /// Opens the SCSI channel `relid` on `bus`, runs the VSTOR handshake (version
    /// negotiation newest first, channel properties, end of initialisation) and opens as many
    /// sub-channels as the host and `CHANNELS` allow. Thread context only.
    pub fn open(bus: &'b Vmbus<T, H>, relid: u32, waiter: W) -> Result<Self, StorError> {
        Self::open_with(bus, relid, waiter, ControllerOptions::default())
    }

    /// Like [`Self::open`], for the first free SCSI controller the host offered.
    pub fn open_first(bus: &'b Vmbus<T, H>, waiter: W) -> Result<Self, StorError> {
        let offer = bus
            .find(vmbus_guest::protocol::DeviceClass::Scsi, None)
            .ok_or(StorError::Channel(ChannelError::Vmbus(
                vmbus_guest::VmbusError::NoSuchDevice,
            )))?;
        Self::open(bus, offer.relid, waiter)
    }

    /// Like [`Self::open`], with explicit options. After END_INITIALIZATION, if the host
    /// allows sub-channels (version ≥ WIN8, multi-channel flag, `max_channel_count` > 0) and
    /// `options.sub_channels` > 0, sends CREATE_SUB_CHANNELS, waits (bounded by the waiter)
    /// for the sub-channel offers and opens each with the primary's ring size. A sub-channel
    /// that is not offered in time or fails to open is left out (logged), not an error.
    pub fn open_with(
        bus: &'b Vmbus<T, H>,
        relid: u32,
        waiter: W,
        options: ControllerOptions,
    ) -> Result<Self, StorError> {
        let mut slot = None;
        Self::open_in(&mut slot, bus, relid, waiter, options)?;
        slot.take()
            .ok_or(StorError::InvalidArgument("controller not stored"))
    }

    /// Like [`Self::open_with`], building the controller in caller-provided storage (a
    /// `static`, or a slot in a larger structure) instead of returning it by value, so a
    /// kernel's stack never holds a second copy of it while it opens. Returns it in place.
    pub fn open_in<'s>(
        slot: &'s mut Option<Self>,
        bus: &'b Vmbus<T, H>,
        relid: u32,
        mut waiter: W,
        options: ControllerOptions,
    ) -> Result<&'s mut Self, StorError> {
        const {
            assert!(CHANNELS >= 1 && CHANNELS <= 32, "1 to 32 channels");
            assert!(
                DEPTH >= 1 && DEPTH < u16::MAX as usize,
                "DEPTH fits a u16 context"
            );
        }
        let config = channel_config();
        waiter.restart();
        let mut primary: Chan<'b, T, H, DEPTH> = Channel::open(bus, relid, &config, &mut waiter)?;
        let mut bus_changed = false;
        let negotiated = match handshake(&mut primary, &mut waiter, &mut bus_changed) {
            Ok(n) => n,
            Err(e) => {
                waiter.restart();
                note_release(relid, primary.close(&mut waiter));
                return Err(e);
            }
        };
        let mut channels: [Option<Chan<'b, T, H, DEPTH>>; CHANNELS] =
            core::array::from_fn(|_| None);
        let want = options
            .sub_channels
            .min(negotiated.sub_channels_allowed())
            .min((CHANNELS - 1) as u16);
        if want > 0 && negotiated.version.is_win8_or_later() {
            let mut request = [0u8; VSTOR_PACKET_SIZE];
            let asked =
                create_sub_channels_request(&negotiated, want, &mut request).and_then(|n| {
                    let mut completion = [0u8; VSTOR_PACKET_SIZE];
                    let len = call(
                        &mut primary,
                        &mut waiter,
                        &request[..n],
                        &mut completion,
                        &mut bus_changed,
                    )?;
                    check_simple_completion(Operation::CREATE_SUB_CHANNELS, &completion[..len])
                });
            match asked {
                Ok(()) => {
                    waiter.restart();
                    let n = primary.open_subchannels::<DEPTH>(
                        usize::from(want),
                        &config,
                        &mut waiter,
                        &mut channels[1..],
                    );
                    if n < usize::from(want) {
                        log::warn!("storvsc {relid}: {n} of {want} sub-channels opened");
                    }
                }
                Err(e) => log::warn!("storvsc {relid}: CREATE_SUB_CHANNELS refused: {e}"),
            }
        }
        channels[0] = Some(primary);
        let mut relids = [0u32; CHANNELS];
        let mut opened = 0;
        for (r, ch) in relids.iter_mut().zip(channels.iter()) {
            if let Some(ch) = ch {
                *r = ch.relid();
                opened += 1;
            }
        }
        let pool_pages = options.pool_pages.clamp(1, MAX_POOL_PAGES);
        let buffers =
            HostBuffer::new(bus, BOUNCE_BYTES / HV_PAGE_SIZE).and_then(
                |big| match HostBuffer::new(bus, pool_pages) {
                    Ok(pool) => Ok((big, pool)),
                    Err(e) => {
                        waiter.restart();
                        note_release(relid, big.release(&mut waiter));
                        Err(e)
                    }
                },
            );
        let (bounce, pool) = match buffers {
            Ok(b) => b,
            Err(e) => {
                log::warn!("storvsc {relid}: no host-visible memory for the bounce buffers: {e}");
                for ch in channels.iter_mut().rev().filter_map(Option::take) {
                    waiter.restart();
                    note_release(relid, ch.close(&mut waiter));
                }
                return Err(StorError::InvalidArgument(
                    "no host-visible memory for the bounce buffers",
                ));
            }
        };
        log::info!(
            "storvsc {relid}: VSTOR {:?}, max transfer {} bytes, {} sub-channels allowed, {} open",
            negotiated.version,
            negotiated.max_transfer_bytes,
            negotiated.sub_channels_allowed(),
            opened - 1
        );
        Ok(slot.insert(Self {
            bus,
            channels,
            opened,
            relids,
            submitted: [0; CHANNELS],
            dead: 0,
            more: 0,
            waiter,
            negotiated,
            slots: [const { Slot::new() }; DEPTH],
            undelivered: 0,
            pool: Some(pool),
            pool_pages: PagePool::new(pool_pages),
            bounce: Some(bounce),
            bounce_state: BigBounce::Free,
            cursor: 0,
            poll_cursor: 0,
            last: 0,
            spill_depth: options.spill_depth,
            bus_changed,
        }))
    }

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
        self.slots
            .iter()
            .filter(|s| matches!(s.phase, Phase::InFlight | Phase::Ended))
            .count()
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

    /// Submits one SCSI request without waiting. The SRB goes to the least-loaded live
    /// channel, GPA-direct on `data` when every page of it translates through
    /// [`Hal::virt_to_phys`], else through the bounce pool (at most [`SLOT_BOUNCE_BYTES`], and
    /// at most the pool's size).
    /// Returns the tag [`Self::poll`] reports the request's end with.
    ///
    /// Back-pressure: [`StorError::TableFull`] when every queue slot (or the bounce pool, or
    /// every channel's request table) is in use, `StorError::Channel(ChannelError::Full)` when
    /// every ring is full — poll, then retry. [`StorError::ChannelClosed`] once the primary
    /// is gone.
    ///
    /// # Safety
    ///
    /// The memory `data` describes must stay valid (allocated, unmoved), and nothing else may
    /// read or write it, from this call until [`Self::poll`] reports the tag with
    /// [`Memory::Returned`] — or, if it is reported with [`Memory::HeldUntilClose`] or never
    /// reported, until [`Self::close_with`] reports it with [`Released::Freed`]; if that
    /// says [`Released::Leaked`], or the controller is dropped without `close_with`, never
    /// reuse it. The host writes it for a read and reads it for a write, directly
    /// (GPA-direct, [`vmbus_guest::Dma::from_raw`]'s obligation) or through the controller's
    /// bounce copy.
    #[allow(unsafe_code)]
    pub unsafe fn submit(
        &mut self,
        request: &ScsiRequest,
        data: IoBuffer,
    ) -> Result<Tag, StorError> {
        if data.len() != request.transfer_length as usize {
            return Err(StorError::InvalidArgument(
                "data length differs from the request's transfer length",
            ));
        }
        // SAFETY: the caller holds this function's contract for `data`, which is
        // `CallerMemory`'s invariant.
        let memory = unsafe { CallerMemory::new(data) };
        let stage = match memory {
            None => Stage::None,
            Some(m) if self.host_visible(&m) => Stage::Direct(m),
            Some(m)
                if m.len() <= SLOT_BOUNCE_BYTES
                    && m.len().div_ceil(HV_PAGE_SIZE) <= self.pool_pages.capacity() =>
            {
                Stage::Pool(m)
            }
            Some(_) => {
                return Err(StorError::InvalidArgument(
                    "buffer not host-visible and larger than a request's bounce buffer",
                ));
            }
        };
        self.send(request, stage, Owner::Queued)
    }

    /// Submits READ(10/16) of `blocks` blocks at `lba` from `lun` into `buffer` (whose length
    /// is `blocks` × the block size). See [`Self::submit`]; the completion moved
    /// `buffer.len()` bytes if [`SrbCompletion::check`] with that length succeeds.
    ///
    /// # Safety
    ///
    /// As for [`Self::submit`]: `buffer` must not be accessed, moved or freed until it is
    /// given back (reported with [`Memory::Returned`], or reclaimed as [`Released::Freed`]).
    #[allow(unsafe_code)]
    pub unsafe fn submit_read(
        &mut self,
        lun: LunAddress,
        lba: u64,
        blocks: u32,
        buffer: &mut [u8],
    ) -> Result<Tag, StorError> {
        let request = rw_request(false, lun, lba, blocks, buffer.len())?;
        // SAFETY: the caller upholds `submit`'s contract for `buffer`.
        unsafe { self.submit(&request, IoBuffer::from_device(buffer)) }
    }

    /// Submits WRITE(10/16) of `buffer` (`blocks` × the block size) at `lba` of `lun`. See
    /// [`Self::submit`].
    ///
    /// # Safety
    ///
    /// As for [`Self::submit`]: `buffer` must not be written, moved or freed until it is
    /// given back.
    #[allow(unsafe_code)]
    pub unsafe fn submit_write(
        &mut self,
        lun: LunAddress,
        lba: u64,
        blocks: u32,
        buffer: &[u8],
    ) -> Result<Tag, StorError> {
        let request = rw_request(true, lun, lba, blocks, buffer.len())?;
        // SAFETY: the caller upholds `submit`'s contract for `buffer`.
        unsafe { self.submit(&request, IoBuffer::to_device(buffer)) }
    }

    /// Processes the bus's control messages ([`Vmbus::poll`]: rescinds become visible), then
    /// drains every channel — at most `budget` packets in all — and reports each queued
    /// request that ended to `on_done`, exactly once: completed by the host, or failed
    /// because its channel was rescinded, closed or corrupted (or the primary died).
    /// Thread context; a driver without interrupts calls it in its loop.
    pub fn poll(&mut self, budget: usize, mut on_done: impl FnMut(Done)) -> Polled {
        self.bus.poll();
        self.poll_channels(u32::MAX, budget, Some(&mut on_done))
    }

    /// The interrupt-driven form of [`Self::poll`]: drains only the channels `work` names
    /// (taking their bits, so the rest can go to other drivers) plus those whose last drain
    /// stopped early, at most `budget` packets in all. `work` comes from
    /// [`Vmbus::handle_interrupt`], which names rescinded channels too: their requests end
    /// here with an error. Takes no bus lock (interrupt-safe as far as the bus is concerned);
    /// the kernel calls [`Vmbus::poll`] from thread context when `work.control` is set.
    pub fn poll_interrupt(
        &mut self,
        work: &mut Work,
        budget: usize,
        mut on_done: impl FnMut(Done),
    ) -> Polled {
        let mut mask = self.more;
        for ci in 0..self.opened {
            if work.channels.take(self.relids[ci]) {
                mask |= 1 << ci;
            }
        }
        self.poll_channels(mask, budget, Some(&mut on_done))
    }

    fn host_visible(&self, m: &CallerMemory) -> bool {
        let addr = m.addr().as_ptr() as usize;
        let first = addr - addr % HV_PAGE_SIZE;
        let Some(end) = addr.checked_add(m.len()) else {
            return false;
        };
        let mut page = first;
        while page < end {
            let ok = core::ptr::NonNull::new(page as *mut u8)
                .is_some_and(|p| self.bus.hal().virt_to_phys(p).is_ok());
            if !ok {
                return false;
            }
            page += HV_PAGE_SIZE;
        }
        true
    }

    fn free_slot(&self) -> Option<usize> {
        self.slots.iter().position(|s| s.phase == Phase::Free)
    }

    /// Stages the data, takes a slot and sends the SRB on a live channel.
    fn send(
        &mut self,
        request: &ScsiRequest,
        stage: Stage,
        owner: Owner,
    ) -> Result<Tag, StorError> {
        if !self.is_alive() {
            return Err(StorError::ChannelClosed);
        }
        let mut packet = [0u8; VSTOR_PACKET_SIZE];
        let n = request.write_packet(self.negotiated.version, &mut packet)?;
        let index = self.free_slot().ok_or(StorError::TableFull)?;
        let (staging, data, len) = match stage {
            Stage::None => (Staging::None, None, 0),
            Stage::Direct(m) => (Staging::Direct, Some(m), m.len()),
            Stage::Big(len) => (Staging::Big, None, len),
            Stage::Pool(m) => {
                let pages = m.len().div_ceil(HV_PAGE_SIZE);
                let first = self.pool_pages.alloc(pages).ok_or(StorError::TableFull)?;
                let staging = Staging::Pool {
                    first: first as u16,
                    pages: pages as u16,
                };
                if m.is_write() {
                    let copied = match &self.pool {
                        Some(pool) => m.with_bytes(|b| pool.write_at(first * HV_PAGE_SIZE, b)),
                        None => Err(vmbus_guest::OutOfBounds {
                            offset: 0,
                            len: 0,
                            size: 0,
                        }),
                    };
                    if copied.is_err() {
                        self.pool_pages.free(first, pages);
                        return Err(StorError::InvalidArgument("bounce pool too small"));
                    }
                }
                (staging, Some(m), m.len())
            }
        };
        let context = index as u16;
        let mut last = StorError::Channel(ChannelError::Full);
        let start = self.pick_channel();
        let mut sent = None;
        for k in 0..self.opened {
            let ci = (start + k) % self.opened;
            if self.dead & (1 << ci) != 0 {
                continue;
            }
            let Some(ch) = self.channels[ci].as_mut() else {
                continue;
            };
            let payload: [&[u8]; 1] = [&packet[..n]];
            let r = match (staging, data) {
                (Staging::None, _) => ch.request(&payload, context),
                (Staging::Direct, Some(m)) => match m.dma() {
                    Ok(d) => ch.request_dma(&[d], &payload, context),
                    Err(e) => {
                        last = e;
                        break;
                    }
                },
                (Staging::Pool { first, .. }, Some(_)) => {
                    match self
                        .pool
                        .as_ref()
                        .map(|p| p.dma(usize::from(first) * HV_PAGE_SIZE, len))
                    {
                        Some(Ok(d)) => ch.request_dma(&[d], &payload, context),
                        _ => {
                            last = StorError::InvalidArgument("bounce pool too small");
                            break;
                        }
                    }
                }
                (Staging::Big, _) => match self.bounce.as_ref().map(|b| b.dma(0, len)) {
                    Some(Ok(d)) => ch.request_dma(&[d], &payload, context),
                    _ => {
                        last = StorError::InvalidArgument("transfer larger than the bounce buffer");
                        break;
                    }
                },
                _ => {
                    last = StorError::InvalidArgument("data without a buffer");
                    break;
                }
            };
            match r {
                Ok(id) => {
                    sent = Some((ci, id));
                    break;
                }
                Err(ChannelError::Full) => last = StorError::Channel(ChannelError::Full),
                Err(ChannelError::TooManyRequests) => last = StorError::TableFull,
                Err(e @ (ChannelError::InvalidArgument(_) | ChannelError::InvalidPacket(_))) => {
                    last = StorError::from(e);
                    break;
                }
                Err(e) => {
                    // The channel died (or cannot signal): its next receive reports what it
                    // held; try another one.
                    self.more |= 1 << ci;
                    last = StorError::from(e);
                }
            }
        }
        let Some((ci, id)) = sent else {
            if let Staging::Pool { first, pages } = staging {
                self.pool_pages.free(usize::from(first), usize::from(pages));
            }
            return Err(if self.is_alive() {
                last
            } else {
                StorError::ChannelClosed
            });
        };
        let slot = &mut self.slots[index];
        slot.phase = Phase::InFlight;
        slot.channel = ci as u8;
        slot.request = Some(id);
        slot.data = data;
        slot.staging = staging;
        slot.owner = owner;
        slot.result = None;
        slot.memory = Memory::Returned;
        slot.host_done = false;
        self.submitted[ci] += 1;
        self.cursor = ci + 1;
        self.last = ci;
        Ok(slot.tag(index))
    }

    /// The channel for the next request: the last one while under the spill depth, else the
    /// live channel with the fewest requests in flight, ties broken round-robin.
    fn pick_channel(&self) -> usize {
        let live = |ci: usize| self.dead & (1 << ci) == 0;
        if self.spill_depth > 0
            && live(self.last)
            && let Some(ch) = &self.channels[self.last]
            && ch.requests_in_flight() < self.spill_depth
        {
            return self.last;
        }
        let mut best = 0;
        let mut best_load = usize::MAX;
        for k in 0..self.opened {
            let ci = (self.cursor + k) % self.opened;
            if !live(ci) {
                continue;
            }
            if let Some(ch) = &self.channels[ci] {
                let load = ch.requests_in_flight();
                if load < best_load {
                    best = ci;
                    best_load = load;
                }
            }
        }
        best
    }

    /// Frees slot `index` (a new generation for its next request).
    fn release_slot(&mut self, index: usize) {
        let s = &mut self.slots[index];
        s.phase = Phase::Free;
        s.generation = s.generation.wrapping_add(1).max(1);
        s.request = None;
        s.data = None;
        s.staging = Staging::None;
        s.result = None;
        s.memory = Memory::Returned;
        s.host_done = false;
    }

    /// Reports queued requests that ended while a blocking call waited.
    fn deliver_stored(&mut self, on_done: &mut dyn FnMut(Done)) -> usize {
        let mut n = 0;
        for index in 0..DEPTH {
            let s = &mut self.slots[index];
            if s.phase != Phase::Ended || s.owner != Owner::Queued {
                continue;
            }
            let Some(result) = s.result.take() else {
                continue;
            };
            let done = Done {
                tag: s.tag(index),
                result,
                memory: s.memory,
            };
            self.undelivered = self.undelivered.saturating_sub(1);
            self.after_report(index);
            on_done(done);
            n += 1;
        }
        n
    }

    /// A request was reported (or abandoned): free its slot, or keep it while its channel or
    /// its buffer is still accounted.
    fn after_report(&mut self, index: usize) {
        let s = &mut self.slots[index];
        if s.request.is_none() && s.memory == Memory::Returned {
            self.release_slot(index);
        } else {
            s.phase = Phase::Lingering;
        }
    }

    /// A request of slot `index` ended with `result`: hand it to its owner.
    fn finish(
        &mut self,
        index: usize,
        result: IoResult,
        memory: Memory,
        on_done: &mut Option<&mut dyn FnMut(Done)>,
    ) -> usize {
        let s = &mut self.slots[index];
        s.memory = memory;
        match s.owner {
            Owner::Blocking => {
                s.phase = Phase::Ended;
                s.result = Some(result);
                0
            }
            Owner::Abandoned => {
                self.after_report(index);
                0
            }
            Owner::Queued => match on_done {
                Some(f) => {
                    let done = Done {
                        tag: s.tag(index),
                        result,
                        memory,
                    };
                    self.after_report(index);
                    f(done);
                    1
                }
                None => {
                    s.phase = Phase::Ended;
                    s.result = Some(result);
                    self.undelivered += 1;
                    0
                }
            },
        }
    }

    /// The slot a completion or failure on channel `ci` names, if it is the one in flight.
    fn slot_for(&mut self, ci: usize, request: RequestId, context: u16) -> Option<usize> {
        let index = usize::from(context);
        match self.slots.get(index) {
            Some(s)
                if s.request == Some(request)
                    && usize::from(s.channel) == ci
                    && matches!(s.phase, Phase::InFlight | Phase::Lingering) =>
            {
                Some(index)
            }
            _ => {
                if context != HANDSHAKE_CONTEXT {
                    log::warn!("storvsc: end of a request no longer tracked (slot {index})");
                }
                None
            }
        }
    }

    fn on_completion(
        &mut self,
        ci: usize,
        request: RequestId,
        context: u16,
        payload: &[u8],
        on_done: &mut Option<&mut dyn FnMut(Done)>,
    ) -> usize {
        let Some(index) = self.slot_for(ci, request, context) else {
            return 0;
        };
        let result = SrbCompletion::parse(payload);
        let s = &mut self.slots[index];
        s.request = None;
        let in_flight = s.phase == Phase::InFlight;
        // The host is done with the data: copy a bounced read out, free the bounce space.
        match s.staging {
            Staging::Pool { first, pages } => {
                if in_flight
                    && let (Ok(srb), Some(m), Some(pool)) = (&result, s.data, &self.pool)
                    && !m.is_write()
                {
                    let n = srb.data_transfer_length as usize;
                    let offset = usize::from(first) * HV_PAGE_SIZE;
                    if m.with_bytes_mut(n, |b| pool.read_at(offset, b)).is_err() {
                        log::warn!("storvsc: bounced read not copied out");
                    }
                }
                self.pool_pages.free(usize::from(first), usize::from(pages));
            }
            // A blocking caller copies the data out itself, then frees it.
            Staging::Big if s.owner != Owner::Blocking || !in_flight => {
                self.bounce_state = BigBounce::Free;
            }
            _ => {}
        }
        if in_flight {
            self.finish(index, result, Memory::Returned, on_done)
        } else {
            let s = &mut self.slots[index];
            s.host_done = true;
            if s.memory == Memory::Returned {
                self.release_slot(index);
            }
            0
        }
    }

    fn on_failed(
        &mut self,
        ci: usize,
        request: RequestId,
        context: u16,
        error: ChannelError,
        on_done: &mut Option<&mut dyn FnMut(Done)>,
    ) -> usize {
        let Some(index) = self.slot_for(ci, request, context) else {
            return 0;
        };
        let s = &mut self.slots[index];
        s.request = None;
        // The host may still access what the request named until the channel's close says
        // otherwise: the caller's memory is held, bounce space stays reserved.
        let memory = match s.staging {
            Staging::Direct => Memory::HeldUntilClose,
            Staging::Big => {
                self.bounce_state = BigBounce::Held;
                Memory::Returned
            }
            Staging::None | Staging::Pool { .. } => Memory::Returned,
        };
        if s.phase == Phase::InFlight {
            self.finish(index, Err(StorError::from(error)), memory, on_done)
        } else {
            if s.memory == Memory::Returned {
                self.release_slot(index);
            }
            0
        }
    }

    /// Channel `ci` is unusable: it returned its error (after reporting every request it
    /// held as failed), or the host broke it. Requests it may still hold end now, with their
    /// caller memory held until close; if it is the primary, the controller is gone and so
    /// are the requests on every channel.
    fn channel_died(
        &mut self,
        ci: usize,
        e: ChannelError,
        on_done: &mut Option<&mut dyn FnMut(Done)>,
    ) -> usize {
        let bit = 1u32 << ci;
        self.more &= !bit;
        if self.dead & bit != 0 {
            return 0;
        }
        self.dead |= bit;
        log::warn!("storvsc: channel {} failed: {e}", self.relids[ci]);
        let mut reported = 0;
        for index in 0..DEPTH {
            let s = &self.slots[index];
            if s.phase != Phase::InFlight || (ci != 0 && usize::from(s.channel) != ci) {
                continue;
            }
            let memory = match s.staging {
                Staging::Direct => Memory::HeldUntilClose,
                Staging::Big => {
                    self.bounce_state = BigBounce::Held;
                    Memory::Returned
                }
                _ => Memory::Returned,
            };
            reported += self.finish(index, Err(StorError::ChannelClosed), memory, on_done);
        }
        reported
    }

    /// Drains the channels in `mask` (at most `budget` packets in all); ends the requests
    /// whose completions arrived (queued ones are reported to `on_done` if given, else
    /// stored) and those of channels that died.
    fn poll_channels(
        &mut self,
        mask: u32,
        budget: usize,
        mut on_done: Option<&mut dyn FnMut(Done)>,
    ) -> Polled {
        let mut reported = 0;
        if self.undelivered > 0
            && let Some(f) = on_done.as_mut()
        {
            reported += self.deliver_stored(*f);
        }
        let mut left = budget;
        let mut rx = [0u8; RX_BUF];
        let start = self.poll_cursor;
        for k in 0..self.opened {
            let ci = (start + k) % self.opened;
            if mask & (1 << ci) == 0 {
                continue;
            }
            reported += self.drain_channel(ci, &mut left, &mut rx, &mut on_done);
        }
        if self.opened > 0 {
            self.poll_cursor = (start + 1) % self.opened;
        }
        Polled {
            reported,
            more: self.more != 0 || self.undelivered > 0,
        }
    }

    fn drain_channel(
        &mut self,
        ci: usize,
        left: &mut usize,
        rx: &mut [u8; RX_BUF],
        on_done: &mut Option<&mut dyn FnMut(Done)>,
    ) -> usize {
        let bit = 1u32 << ci;
        if self.dead & bit != 0 {
            self.more &= !bit;
            return 0;
        }
        let mut reported = 0;
        loop {
            let Some(ch) = self.channels[ci].as_mut() else {
                self.more &= !bit;
                return reported;
            };
            if *left == 0 {
                // Budget spent: publish what was read, keep the host's interrupts masked.
                let _ = ch.yield_batch();
                self.more |= bit;
                return reported;
            }
            let r = match ch.recv(&mut rx[..]) {
                Ok(Some(r)) => r,
                Ok(None) => match ch.end_batch() {
                    Ok(true) => continue,
                    Ok(false) => {
                        self.more &= !bit;
                        return reported;
                    }
                    Err(e) => {
                        // The read index is published; only the signal failed. Look again
                        // at the next poll.
                        log::warn!("storvsc: channel {}: {e}", self.relids[ci]);
                        self.more |= bit;
                        return reported;
                    }
                },
                Err(ChannelError::BufferTooSmall { needed }) => {
                    // No VSTOR packet is this large: the host is broken. The packet stays in
                    // the ring; stop using the channel.
                    log::warn!(
                        "storvsc: {needed}-byte host packet on channel {}",
                        self.relids[ci]
                    );
                    let _ = ch.end_batch();
                    return reported
                        + self.channel_died(ci, ChannelError::BufferTooSmall { needed }, on_done);
                }
                Err(e) => {
                    let _ = ch.end_batch();
                    return reported + self.channel_died(ci, e, on_done);
                }
            };
            *left -= 1;
            reported += match r {
                Received::Completion {
                    request,
                    context,
                    packet,
                } => self.on_completion(ci, request, context, packet.payload(), on_done),
                Received::Failed {
                    request,
                    context,
                    error,
                } => self.on_failed(ci, request, context, error, on_done),
                Received::Packet(p) => {
                    note_unsolicited(p.payload(), &mut self.bus_changed);
                    0
                }
            };
        }
    }

    /// Closes every channel (sub-channels first) and accounts for every queued request whose
    /// buffer the caller has not got back: one still in flight or ended but never reported
    /// (with its result), and one reported with [`Memory::HeldUntilClose`] (without). Each is
    /// handed to `on_request` once with [`Released::Freed`] — its buffer is the caller's
    /// again — only if the bus confirmed that the host let go of its channel (or the host
    /// completed it, or it never named the caller's memory); otherwise [`Released::Leaked`]:
    /// never reuse it. The bounce buffers are released the same way. Returns
    /// [`Released::Freed`] only if everything (rings, bounce buffers, every request's
    /// memory) was. Thread context only.
    pub fn close_with(mut self, mut on_request: impl FnMut(Reclaimed)) -> Released {
        let mut verdicts = [Released::Freed; CHANNELS];
        let mut released = Released::Freed;
        for ci in (0..self.opened).rev() {
            if let Some(ch) = self.channels[ci].take() {
                self.waiter.restart();
                verdicts[ci] = ch.close(&mut self.waiter);
                note_release(self.relids[ci], verdicts[ci]);
                released = released.and(verdicts[ci]);
            }
        }
        for index in 0..DEPTH {
            let s = &mut self.slots[index];
            let verdict = verdicts
                .get(usize::from(s.channel))
                .copied()
                .unwrap_or(Released::Leaked);
            let tag = s.tag(index);
            let reclaimed = match s.phase {
                Phase::Free => None,
                Phase::InFlight | Phase::Ended if s.owner == Owner::Queued => {
                    let result = s.result.take().unwrap_or(Err(StorError::ChannelClosed));
                    let held = s.phase == Phase::InFlight && s.staging == Staging::Direct
                        || s.phase == Phase::Ended && s.memory == Memory::HeldUntilClose;
                    Some(Reclaimed {
                        tag,
                        result: Some(result),
                        memory: if held { verdict } else { Released::Freed },
                    })
                }
                Phase::Lingering if s.memory == Memory::HeldUntilClose => Some(Reclaimed {
                    tag,
                    result: None,
                    memory: if s.host_done {
                        Released::Freed
                    } else {
                        verdict
                    },
                }),
                _ => None,
            };
            self.release_slot(index);
            if let Some(r) = reclaimed {
                on_request(r);
            }
        }
        self.undelivered = 0;
        for buffer in [self.pool.take(), self.bounce.take()].into_iter().flatten() {
            self.waiter.restart();
            released = released.and(buffer.release(&mut self.waiter));
        }
        if released == Released::Leaked {
            log::warn!(
                "storvsc {}: closed, some memory leaked (the host did not confirm)",
                self.relids[0]
            );
        }
        released
    }

    /// Closes the controller like [`Self::close_with`]; the buffers of queued requests not
    /// given back are the caller's again only if this returns [`Released::Freed`].
    pub fn close(self) -> Released {
        self.close_with(|_| {})
    }

    /// Waits (bounded by the waiter) for the blocking request in slot `index`.
    fn wait_blocking(&mut self, index: usize) -> IoResult {
        self.waiter.restart();
        loop {
            self.bus.poll();
            let _ = self.poll_channels(u32::MAX, DRAIN_BUDGET * self.opened, None);
            let s = &mut self.slots[index];
            if s.phase == Phase::Ended {
                let result = s.result.take().unwrap_or(Err(StorError::ChannelClosed));
                self.after_report(index);
                return result;
            }
            if self.waiter.wait().is_err() {
                self.slots[index].owner = Owner::Abandoned;
                return Err(StorError::Timeout);
            }
        }
    }
}

fn channel_config() -> ChannelConfig {
    ChannelConfig {
        outbound_pages: RING_PAGES,
        inbound_pages: RING_PAGES,
        // OPENCHANNEL user data: a zeroed 24-byte channel-properties structure.
        ..ChannelConfig::default()
    }
}

fn note_release(relid: u32, r: Released) {
    if r == Released::Leaked {
        log::warn!("storvsc {relid}: memory leaked (the host did not confirm it let go)");
    }
}

fn rw_request(
    write: bool,
    lun: LunAddress,
    lba: u64,
    blocks: u32,
    len: usize,
) -> Result<ScsiRequest, StorError> {
    if blocks == 0 || len == 0 || !len.is_multiple_of(blocks as usize) {
        return Err(StorError::InvalidArgument(
            "buffer is not a non-zero multiple of the block count",
        ));
    }
    let transfer =
        u32::try_from(len).map_err(|_| StorError::InvalidArgument("transfer larger than 4 GiB"))?;
    let cdb = Cdb::read_write(write, lba, blocks).ok_or(StorError::OutOfRange {
        lba,
        blocks: u64::from(blocks),
    })?;
    let direction = if write {
        DataDirection::WRITE
    } else {
        DataDirection::READ
    };
    Ok(ScsiRequest::new(lun, cdb, direction, transfer))
}

/// Records an unsolicited host packet: ENUMERATE_BUS / REMOVE_DEVICE mean "rescan".
fn note_unsolicited(payload: &[u8], bus_changed: &mut bool) {
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

/// Runs the VSTOR initialisation on the primary channel.
fn handshake<T: Transport, H: Hal, const DEPTH: usize>(
    channel: &mut Chan<'_, T, H, DEPTH>,
    waiter: &mut impl Wait,
    bus_changed: &mut bool,
) -> Result<Negotiated, StorError> {
    let mut handshake = Handshake::default();
    loop {
        let mut request = [0u8; VSTOR_PACKET_SIZE];
        let Some(n) = handshake.next_request(&mut request) else {
            return Err(StorError::BadResponse("handshake stalled"));
        };
        let mut completion = [0u8; VSTOR_PACKET_SIZE];
        let len = call(channel, waiter, &request[..n], &mut completion, bus_changed)?;
        if let Progress::Done(negotiated) = handshake.on_completion(&completion[..len])? {
            return Ok(negotiated);
        }
    }
}

/// Sends one VSTOR packet in-band and waits for its completion
/// ([`Channel::transact`]), copying it to `completion`; unsolicited host packets seen
/// meanwhile set `bus_changed`. Used for the handshake and CREATE_SUB_CHANNELS, before the
/// queue exists.
fn call<T: Transport, H: Hal, const DEPTH: usize>(
    channel: &mut Chan<'_, T, H, DEPTH>,
    waiter: &mut impl Wait,
    packet: &[u8],
    completion: &mut [u8],
    bus_changed: &mut bool,
) -> Result<usize, StorError> {
    waiter.restart();
    let mut rx = [0u8; RX_BUF];
    let len = channel.transact(
        &[packet],
        HANDSHAKE_CONTEXT,
        completion,
        &mut rx,
        |received| {
            if let Received::Packet(p) = received {
                note_unsolicited(p.payload(), bus_changed);
            }
        },
        waiter,
    )?;
    Ok(len.min(completion.len()))
}

impl<T: Transport, H: Hal, W: Wait, const CHANNELS: usize, const DEPTH: usize> ScsiTransport
    for StorvscController<'_, T, H, W, CHANNELS, DEPTH>
{
    /// Executes one request on the queue and waits for it. The data always goes through the
    /// controller's blocking bounce buffer, so the caller's borrow may end at a timeout while
    /// the host still holds the request.
    fn execute(
        &mut self,
        request: &ScsiRequest,
        data: DataBuf<'_>,
    ) -> Result<SrbCompletion, StorError> {
        if !self.is_alive() {
            return Err(StorError::ChannelClosed);
        }
        let len = data.len();
        if len > self.bounce.as_ref().map_or(0, HostBuffer::len) {
            return Err(StorError::InvalidArgument(
                "transfer larger than the bounce buffer",
            ));
        }
        if len > 0 {
            // A timed-out request may still name the bounce buffer: wait for it to end.
            self.waiter.restart();
            loop {
                match self.bounce_state {
                    BigBounce::Free => break,
                    // Until close: a request of a dead channel named it.
                    BigBounce::Held => return Err(StorError::ChannelClosed),
                    BigBounce::Busy => {
                        self.bus.poll();
                        let _ = self.poll_channels(u32::MAX, DRAIN_BUDGET * self.opened, None);
                        if self.bounce_state == BigBounce::Busy && self.waiter.wait().is_err() {
                            return Err(StorError::Timeout);
                        }
                    }
                }
            }
        }
        if let (DataBuf::ToDevice(b), Some(bounce)) = (&data, &self.bounce)
            && !b.is_empty()
            && bounce.write_at(0, b).is_err()
        {
            return Err(StorError::InvalidArgument(
                "transfer larger than the bounce buffer",
            ));
        }
        let stage = if len > 0 {
            Stage::Big(len)
        } else {
            Stage::None
        };
        // Back-pressure from queued requests: wait for room.
        self.waiter.restart();
        let tag = loop {
            match self.send(request, stage, Owner::Blocking) {
                Ok(tag) => break tag,
                Err(e) if is_back_pressure(&e) => {
                    self.bus.poll();
                    let _ = self.poll_channels(u32::MAX, DRAIN_BUDGET * self.opened, None);
                    self.waiter.wait().map_err(|_| StorError::Timeout)?;
                }
                Err(e) => return Err(e),
            }
        };
        if len > 0 {
            self.bounce_state = BigBounce::Busy;
        }
        let index = (tag.raw() as u32 - 1) as usize;
        let srb = self.wait_blocking(index);
        if len > 0 && srb != Err(StorError::Timeout) && self.bounce_state == BigBounce::Busy {
            // The request ended and the host is done with the buffer (a failure without
            // completion left it `Held`; a timeout leaves it busy until it ends).
            self.bounce_state = BigBounce::Free;
        }
        let srb = srb?;
        if let (DataBuf::FromDevice(b), Some(bounce)) = (data, &self.bounce) {
            let n = (srb.data_transfer_length as usize).min(len);
            bounce
                .read_at(0, &mut b[..n])
                .map_err(|_| StorError::BadResponse("bounce buffer"))?;
        }
        Ok(srb)
    }
}
