//! The storvsc controller on its VMBus channels: opens the SCSI channel, runs the VSTOR
//! handshake, asks for sub-channels when the host allows them (devices.md §3.10,
//! vmbus-core §9) and opens them, then executes SRBs — queued (many in flight, spread over
//! every channel, completions reported by [`StorvscController::poll`]) or blocking as
//! [`ScsiTransport`], which is built on the queue.
//!
//! Data goes GPA-direct: on the caller's memory when the HAL can translate it
//! ([`Hal::virt_to_phys`]), otherwise through a host-visible bounce buffer (one per request
//! slot for queued I/O, one large one for blocking I/O).

use core::ptr::NonNull;

use vmbus_guest::{
    Channel, ChannelConfig, ChannelError, Connection, HV_PAGE_SIZE, Hal, Received, RequestMode,
    Transport, Wait,
};

use crate::StorError;
use crate::block::{DataBuf, ScsiTransport};
use crate::handshake::{
    Handshake, Negotiated, Progress, check_simple_completion, create_sub_channels_request,
};
use crate::protocol::{DataDirection, Operation, VSTOR_PACKET_SIZE_WIN8 as VSTOR_PACKET_SIZE};
use crate::queue::{
    IoBuffer, IoResult, MAX_CHANNELS, Owner, QUEUE_DEPTH, SLOT_BOUNCE_BYTES, SLOT_BOUNCE_PAGES,
    Slot, Staging, Tag,
};
use crate::request::{LunAddress, RequestTable, ScsiRequest, SrbCompletion};
use crate::scsi::Cdb;

/// Pages per ring direction, control page included (Linux storvsc uses a few hundred KiB; 128
/// KiB per direction keeps dozens of SRBs in flight).
pub const RING_PAGES: usize = 32;
/// Largest transfer sent as one blocking SRB: the host's maximum, capped by the bounce buffer.
pub const BOUNCE_BYTES: usize = 256 * 1024;
/// Room for one host packet on this channel (completions and unsolicited messages are at most
/// a descriptor plus a 64-byte VSTOR packet; margin for padding and hostile lengths).
const RX_BUF: usize = 256;
/// "Store queued completions instead of reporting them" for the internal drains.
const NO_REPORT: Option<&mut fn(Tag, IoResult)> = None;

/// Options for [`StorvscController::open_with`].
#[derive(Clone, Copy, Debug)]
pub struct ControllerOptions {
    /// Sub-channels to ask for (capped by the host's `max_channel_count` and by
    /// [`MAX_CHANNELS`]` - 1`); 0 = primary channel only.
    pub sub_channels: u16,
    /// Spreading policy. 0: every request goes to the least-loaded live channel (ties
    /// round-robin), which spreads even a single submitter's burst over all channels and
    /// costs one guest→host signal per channel per burst. N > 0: a request stays on the
    /// channel the previous one went to while that channel has fewer than N requests in
    /// flight, then moves to the least-loaded one — fewer signals for one submitter, still
    /// every channel under deep queues.
    pub spill_depth: usize,
}

impl Default for ControllerOptions {
    /// As many sub-channels as the host and [`MAX_CHANNELS`] allow, least-loaded spreading.
    fn default() -> Self {
        Self {
            sub_channels: (MAX_CHANNELS - 1) as u16,
            spill_depth: 0,
        }
    }
}

/// A SCSI controller (one storvsc device: its primary channel and sub-channels) bound to the
/// VMBus connection it was opened on.
///
/// Queued I/O: [`Self::submit`] (or [`Self::submit_read`] / [`Self::submit_write`]) sends an
/// SRB and returns a [`Tag`] at once; [`Self::poll`] reports completions. Blocking I/O:
/// [`ScsiTransport::execute`] submits and waits with the waiter's full budget per request
/// ([`Wait::restart`]). Unsolicited ENUMERATE_BUS / REMOVE_DEVICE messages seen meanwhile are
/// recorded ([`StorvscController::take_bus_change`]) so the caller can rescan.
pub struct StorvscController<'c, T: Transport, H: Hal, W: Wait> {
    conn: &'c mut Connection<T, H>,
    /// Index 0 is the primary; `None` = never opened or dead (rescinded, closed, corrupt).
    channels: [Option<Channel>; MAX_CHANNELS],
    /// Channels opened (primary included); `channels[..opened]` were live once.
    opened: usize,
    relids: [u32; MAX_CHANNELS],
    submitted: [u64; MAX_CHANNELS],
    /// Dead channels kept until close (their rings may still be mapped).
    dead: [Option<Channel>; MAX_CHANNELS],
    waiter: W,
    negotiated: Negotiated,
    table: RequestTable<Slot, QUEUE_DEPTH>,
    /// Table id of each slot index in flight (0 = free), to walk the table.
    live: [u64; QUEUE_DEPTH],
    /// Completed queued requests not yet reported (they ended while a blocking call waited).
    undelivered: usize,
    slot_bounce: [Option<NonNull<u8>>; QUEUE_DEPTH],
    bounce: NonNull<u8>,
    bounce_pages: usize,
    /// A timed-out blocking request still names the large bounce buffer.
    bounce_busy: bool,
    cursor: usize,
    /// Channels whose last poll left packets in the ring (no interrupt will announce them).
    more: u32,
    /// Channel of the last submission and [`ControllerOptions::spill_depth`].
    last: usize,
    spill_depth: usize,
    bus_changed: bool,
}

fn slot_index(id: u64) -> Option<usize> {
    // RequestTable ids are `(generation << 32) | (index + 1)`.
    ((id & 0xFFFF_FFFF) as usize)
        .checked_sub(1)
        .filter(|i| *i < QUEUE_DEPTH)
}

fn is_dead(e: &ChannelError) -> bool {
    matches!(
        e,
        ChannelError::Rescinded
            | ChannelError::Closed
            | ChannelError::NotOpen
            | ChannelError::Corrupt(_)
            | ChannelError::BufferTooSmall { .. }
    )
}

impl<'c, T: Transport, H: Hal, W: Wait> StorvscController<'c, T, H, W> {
    /// Opens the SCSI channel `relid`, runs the VSTOR handshake (version negotiation newest
    /// first, channel properties, end of initialisation) and opens as many sub-channels as
    /// the host allows (see [`ControllerOptions::default`]).
    pub fn open(conn: &'c mut Connection<T, H>, relid: u32, waiter: W) -> Result<Self, StorError> {
        Self::open_with(conn, relid, waiter, ControllerOptions::default())
    }

    /// Like [`Self::open`], with explicit options. After END_INITIALIZATION, if the host
    /// allows sub-channels (version ≥ WIN8, multi-channel flag, `max_channel_count` > 0) and
    /// `options.sub_channels` > 0, sends CREATE_SUB_CHANNELS, waits (bounded by the waiter)
    /// for the sub-channel offers and opens each with the primary's ring size. A sub-channel
    /// that is not offered in time or fails to open is left out (logged), not an error.
    pub fn open_with(
        conn: &'c mut Connection<T, H>,
        relid: u32,
        mut waiter: W,
        options: ControllerOptions,
    ) -> Result<Self, StorError> {
        let config = channel_config();
        let mut channel = Channel::open(conn, relid, &config, &mut waiter)?;
        let mut handshake = Handshake::default();
        let mut bus_changed = false;
        let negotiated = loop {
            let mut request = [0u8; VSTOR_PACKET_SIZE];
            let Some(n) = handshake.next_request(&mut request) else {
                return Err(StorError::BadResponse("handshake stalled"));
            };
            let mut completion = [0u8; VSTOR_PACKET_SIZE];
            let len = call(
                conn,
                &mut channel,
                &mut waiter,
                &request[..n],
                &mut completion,
                &mut bus_changed,
            )?;
            if let Progress::Done(negotiated) = handshake.on_completion(&completion[..len])? {
                break negotiated;
            }
        };
        let mut channels: [Option<Channel>; MAX_CHANNELS] = Default::default();
        let mut relids = [0u32; MAX_CHANNELS];
        relids[0] = relid;
        let want = options
            .sub_channels
            .min(negotiated.sub_channels_allowed())
            .min((MAX_CHANNELS - 1) as u16);
        let mut opened = 1;
        if want > 0 && negotiated.version.is_win8_or_later() {
            let mut request = [0u8; VSTOR_PACKET_SIZE];
            let n = create_sub_channels_request(&negotiated, want, &mut request)?;
            let mut completion = [0u8; VSTOR_PACKET_SIZE];
            let len = call(
                conn,
                &mut channel,
                &mut waiter,
                &request[..n],
                &mut completion,
                &mut bus_changed,
            )?;
            match check_simple_completion(Operation::CREATE_SUB_CHANNELS, &completion[..len]) {
                Ok(()) => {
                    opened += open_sub_channels(
                        conn,
                        relid,
                        usize::from(want),
                        &config,
                        &mut waiter,
                        &mut channels[1..],
                        &mut relids[1..],
                    );
                }
                Err(e) => log::warn!("storvsc {relid}: CREATE_SUB_CHANNELS refused: {e}"),
            }
        }
        channels[0] = Some(channel);
        let bounce_pages = BOUNCE_BYTES / HV_PAGE_SIZE;
        let bounce = match conn.hal().alloc_pages(bounce_pages) {
            Ok(b) => b,
            Err(_) => {
                let mut waiter = waiter;
                close_channels(conn, &mut channels, &mut waiter);
                return Err(StorError::InvalidArgument(
                    "no host-visible memory for the bounce buffer",
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
        Ok(Self {
            conn,
            channels,
            opened,
            relids,
            submitted: [0; MAX_CHANNELS],
            dead: Default::default(),
            waiter,
            negotiated,
            table: RequestTable::new(),
            live: [0; QUEUE_DEPTH],
            undelivered: 0,
            slot_bounce: [None; QUEUE_DEPTH],
            bounce,
            bounce_pages,
            bounce_busy: false,
            cursor: 0,
            more: 0,
            last: 0,
            spill_depth: options.spill_depth,
            bus_changed,
        })
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
        self.table.in_flight()
    }

    /// Whether the primary channel is still usable.
    pub fn is_alive(&self) -> bool {
        self.channels[0].is_some()
    }

    /// Submits one SCSI request without waiting. The SRB goes to the least-loaded live
    /// channel, GPA-direct on `data` when every page of it translates through
    /// [`Hal::virt_to_phys`], else through the slot's bounce buffer (at most
    /// [`SLOT_BOUNCE_BYTES`]). Returns the tag [`Self::poll`] reports the completion with.
    ///
    /// Back-pressure: [`StorError::TableFull`] when every request slot (of the controller or
    /// of every channel) is in use, `StorError::Channel(ChannelError::Full)` when every ring is
    /// full — poll, then retry. [`StorError::ChannelClosed`] once the primary is gone.
    ///
    /// # Safety
    ///
    /// The memory `data` describes must stay valid (allocated, unmoved) and must not be read
    /// or written by anything else from this call until `poll` (or `close_with`) reports the
    /// tag: the host, or the controller copying from a bounce buffer, writes it for a read and
    /// reads it for a write. If the controller is leaked or dropped without `close_with`, the
    /// memory of requests in flight must never be reused.
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
        let staging = match data {
            IoBuffer::None => Staging::Direct,
            _ if self.host_visible(&data) => Staging::Direct,
            _ if data.len() <= SLOT_BOUNCE_BYTES => Staging::SlotBounce,
            _ => {
                return Err(StorError::InvalidArgument(
                    "buffer not host-visible and larger than a request's bounce buffer",
                ));
            }
        };
        self.send(request, data, staging, Owner::Queued)
    }

    /// Submits READ(10/16) of `blocks` blocks at `lba` from `lun` into `buffer` (whose length
    /// is `blocks` × the block size). See [`Self::submit`]; the completion moved
    /// `buffer.len()` bytes if [`SrbCompletion::check`] with that length succeeds.
    ///
    /// # Safety
    ///
    /// As for [`Self::submit`]: `buffer` must not be accessed, moved or freed until `poll`
    /// reports the tag.
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
    /// As for [`Self::submit`]: `buffer` must not be written, moved or freed until `poll`
    /// reports the tag.
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

    /// Drains every channel once (no waiting) and reports each queued request that ended —
    /// completed by the host, or failed because its channel was rescinded, closed or
    /// corrupted — to `on_complete`, exactly once. Returns how many were reported.
    pub fn poll(&mut self, mut on_complete: impl FnMut(Tag, IoResult)) -> usize {
        let mut reported = 0;
        if self.undelivered > 0 {
            reported += self.deliver_stored(&mut on_complete);
        }
        reported += self.drain(Some(&mut on_complete));
        reported
    }

    /// Like [`Self::poll`], but first takes the SynIC event flags
    /// ([`Connection::handle_interrupt`]) and drains only the channels they name, plus those
    /// whose last drain stopped early ([`Channel::has_more`]): the interrupt-driven form.
    /// Channels the host did not signal cost no ring access.
    pub fn poll_interrupt(&mut self, mut on_complete: impl FnMut(Tag, IoResult)) -> usize {
        let mut work = self.conn.handle_interrupt();
        let mut mask = self.more;
        for ci in 0..self.opened {
            if work.take(self.relids[ci]) {
                mask |= 1 << ci;
            }
        }
        let mut reported = 0;
        if self.undelivered > 0 {
            reported += self.deliver_stored(&mut on_complete);
        }
        reported + self.drain_mask(mask, Some(&mut on_complete))
    }

    fn host_visible(&self, data: &IoBuffer) -> bool {
        let Some(ptr) = data.ptr() else {
            return true;
        };
        let addr = ptr.as_ptr() as usize;
        let first = addr - addr % HV_PAGE_SIZE;
        let end = addr + data.len();
        let mut page = first;
        while page < end {
            let ok = NonNull::new(page as *mut u8)
                .is_some_and(|p| self.conn.hal().virt_to_phys(p).is_ok());
            if !ok {
                return false;
            }
            page += HV_PAGE_SIZE;
        }
        true
    }

    /// Reserves a slot, stages the data and sends the SRB on a live channel.
    fn send(
        &mut self,
        request: &ScsiRequest,
        data: IoBuffer,
        staging: Staging,
        owner: Owner,
    ) -> Result<Tag, StorError> {
        if self.channels[0].is_none() {
            return Err(StorError::ChannelClosed);
        }
        let mut packet = [0u8; VSTOR_PACKET_SIZE];
        let n = request.write_packet(self.negotiated.version, &mut packet)?;
        let id = self.table.insert(Slot {
            channel: 0,
            request: None,
            data,
            staging,
            owner,
            result: None,
        })?;
        let Some(index) = slot_index(id) else {
            let _ = self.table.complete(id);
            return Err(StorError::TableFull);
        };
        // The memory the host is given: the caller's, or a bounce buffer holding its bytes.
        let wire: Option<(NonNull<u8>, usize)> = match (staging, data.ptr()) {
            (_, None) => None,
            (Staging::Direct, Some(p)) => Some((p, data.len())),
            (Staging::BigBounce, Some(_)) => Some((self.bounce, data.len())),
            (Staging::SlotBounce, Some(p)) => {
                let bounce = match self.slot_bounce[index] {
                    Some(b) => b,
                    None => match self.conn.hal().alloc_pages(SLOT_BOUNCE_PAGES) {
                        Ok(b) => *self.slot_bounce[index].insert(b),
                        Err(_) => {
                            let _ = self.table.complete(id);
                            return Err(StorError::InvalidArgument(
                                "no host-visible memory for a bounce buffer",
                            ));
                        }
                    },
                };
                if let IoBuffer::ToDevice { len, .. } = data {
                    // SAFETY: `p` names `len` bytes the caller keeps valid and unaliased
                    // (submit's contract); the slot's bounce buffer (SLOT_BOUNCE_BYTES ≥ `len`,
                    // checked by submit) is named by no request in flight until completion.
                    unsafe { core::ptr::copy_nonoverlapping(p.as_ptr(), bounce.as_ptr(), len) };
                }
                Some((bounce, data.len()))
            }
        };
        let mut last = StorError::Channel(ChannelError::Full);
        let start = self.pick_channel();
        for k in 0..self.opened {
            let ci = (start + k) % self.opened;
            let Some(ch) = self.channels[ci].as_mut() else {
                continue;
            };
            let sent = match wire {
                None => ch.send_request(self.conn, &[&packet[..n]], id, RequestMode::Callback),
                Some((ptr, len)) => {
                    // The slice only names the pages for the send (they are translated to
                    // PFNs); afterwards only the host accesses them, until the completion.
                    // SAFETY: `ptr` names `len` bytes that stay valid until the completion
                    // (the caller's buffer under submit's contract, or a bounce buffer this
                    // controller owns); nothing in Rust writes them meanwhile.
                    let buffer = unsafe { core::slice::from_raw_parts(ptr.as_ptr(), len) };
                    // The memory is host-visible (translated page by page, or HAL bounce
                    // pages) and stays allocated and unmoved until this request's completion
                    // or failure is reported (submit's contract, or the controller's own
                    // bounce buffers, freed only after close).
                    // SAFETY: as just said; `buffer` is the only reference, dropped when this
                    // call returns.
                    unsafe {
                        ch.send_gpa_direct(
                            self.conn,
                            &[buffer],
                            &[&packet[..n]],
                            id,
                            RequestMode::Callback,
                        )
                    }
                }
            };
            match sent {
                Ok(rid) => {
                    if let Ok(slot) = self.table.get(id) {
                        slot.channel = ci;
                        slot.request = Some(rid);
                    }
                    self.live[index] = id;
                    self.submitted[ci] += 1;
                    self.cursor = ci + 1;
                    self.last = ci;
                    return Ok(Tag(id));
                }
                Err(ChannelError::Full) => last = StorError::Channel(ChannelError::Full),
                Err(ChannelError::TooManyRequests) => last = StorError::TableFull,
                Err(e) if is_dead(&e) => {
                    self.channel_died(ci, e, NO_REPORT);
                    last = StorError::from(e);
                    if self.channels[0].is_none() {
                        break;
                    }
                }
                Err(e) => {
                    last = StorError::from(e);
                    break;
                }
            }
        }
        let _ = self.table.complete(id);
        if self.channels[0].is_none() {
            return Err(StorError::ChannelClosed);
        }
        Err(last)
    }

    /// The channel for the next request: the last one while under the spill depth, else the
    /// live channel with the fewest requests in flight, ties broken round-robin.
    fn pick_channel(&self) -> usize {
        if self.spill_depth > 0
            && let Some(ch) = &self.channels[self.last]
            && ch.requests_in_flight() < self.spill_depth
        {
            return self.last;
        }
        let mut best = 0;
        let mut best_load = usize::MAX;
        for k in 0..self.opened {
            let ci = (self.cursor + k) % self.opened;
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

    /// Reports queued requests that ended while a blocking call waited.
    fn deliver_stored(&mut self, on_complete: &mut dyn FnMut(Tag, IoResult)) -> usize {
        let mut n = 0;
        for index in 0..QUEUE_DEPTH {
            let id = self.live[index];
            if id == 0 {
                continue;
            }
            let done = self
                .table
                .get(id)
                .is_ok_and(|s| s.owner == Owner::Queued && s.result.is_some());
            if done && let Ok(slot) = self.table.complete(id) {
                self.live[index] = 0;
                self.undelivered = self.undelivered.saturating_sub(1);
                if let Some(r) = slot.result {
                    on_complete(Tag(id), r);
                    n += 1;
                }
            }
        }
        n
    }

    fn drain<F: FnMut(Tag, IoResult) + ?Sized>(&mut self, on_complete: Option<&mut F>) -> usize {
        self.drain_mask(u32::MAX, on_complete)
    }

    /// Polls the connection and the channels in `mask`; ends the requests whose completions
    /// arrived (queued ones are reported to `on_complete` if given, else stored) and those of
    /// channels that died.
    fn drain_mask<F: FnMut(Tag, IoResult) + ?Sized>(
        &mut self,
        mask: u32,
        mut on_complete: Option<&mut F>,
    ) -> usize {
        self.conn.poll();
        let mut reported = 0;
        let mut rx = [0u8; RX_BUF];
        for ci in 0..self.opened {
            if mask & (1 << ci) == 0 {
                continue;
            }
            let Some(ch) = self.channels[ci].as_mut() else {
                continue;
            };
            let Self {
                conn,
                table,
                live,
                slot_bounce,
                bounce_busy,
                undelivered,
                bus_changed,
                more,
                ..
            } = self;
            let polled = ch.poll(conn, &mut rx, |received| match received {
                Received::Completion { .. } | Received::Failed { .. } => {
                    let (request, cookie, result) = match received {
                        Received::Completion {
                            request,
                            cookie,
                            packet,
                        } => (request, cookie, SrbCompletion::parse(packet.payload())),
                        Received::Failed {
                            request,
                            cookie,
                            error,
                        } => (request, cookie, Err(StorError::from(error))),
                        Received::Packet(_) => return,
                    };
                    let Some(index) = slot_index(cookie) else {
                        return;
                    };
                    let Ok(slot) = table.get(cookie) else {
                        log::warn!("storvsc: completion for a request no longer tracked");
                        return;
                    };
                    if slot.channel != ci || slot.request != Some(request) || slot.result.is_some()
                    {
                        log::warn!("storvsc: completion does not match its request");
                        return;
                    }
                    if let (Ok(srb), IoBuffer::FromDevice { ptr, len }, Staging::SlotBounce) =
                        (&result, slot.data, slot.staging)
                        && let Some(b) = slot_bounce[index]
                    {
                        let n = (srb.data_transfer_length as usize).min(len);
                        // SAFETY: the request completed, so the host no longer writes the
                        // slot's bounce buffer; `n` ≤ `len` ≤ SLOT_BOUNCE_BYTES bytes go to
                        // the caller's buffer, valid and unaliased under submit's contract.
                        unsafe { core::ptr::copy_nonoverlapping(b.as_ptr(), ptr.as_ptr(), n) };
                    }
                    match slot.owner {
                        Owner::Blocking => slot.result = Some(result),
                        Owner::Abandoned => {
                            if slot.staging == Staging::BigBounce {
                                *bounce_busy = false;
                            }
                            let _ = table.complete(cookie);
                            live[index] = 0;
                        }
                        Owner::Queued => match on_complete.as_mut() {
                            Some(f) => {
                                let _ = table.complete(cookie);
                                live[index] = 0;
                                f(Tag(cookie), result);
                                reported += 1;
                            }
                            None => {
                                slot.result = Some(result);
                                *undelivered += 1;
                            }
                        },
                    }
                }
                Received::Packet(p) => {
                    let operation = p
                        .payload()
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
            });
            if ch.has_more() {
                *more |= 1 << ci;
            } else {
                *more &= !(1 << ci);
            }
            if let Err(e) = polled
                && is_dead(&e)
            {
                reported += self.channel_died(ci, e, on_complete.as_deref_mut());
            }
        }
        reported
    }

    /// A channel was rescinded, closed or corrupted: every request sent on it ends with an
    /// error (the channel's requestor already dropped them). If it is the primary, the whole
    /// controller is gone and every request on every channel ends.
    fn channel_died<F: FnMut(Tag, IoResult) + ?Sized>(
        &mut self,
        ci: usize,
        e: ChannelError,
        mut on_complete: Option<&mut F>,
    ) -> usize {
        log::warn!("storvsc: channel {} failed: {e}", self.relids[ci]);
        if let Some(ch) = self.channels[ci].take() {
            self.dead[ci] = Some(ch);
        }
        let all = ci == 0;
        let err = StorError::from(e);
        let mut reported = 0;
        for index in 0..QUEUE_DEPTH {
            let id = self.live[index];
            if id == 0 {
                continue;
            }
            let Ok(slot) = self.table.get(id) else {
                continue;
            };
            if slot.result.is_some() || !(all || slot.channel == ci) {
                continue;
            }
            match slot.owner {
                Owner::Blocking => slot.result = Some(Err(err)),
                Owner::Abandoned => {
                    if slot.staging == Staging::BigBounce {
                        self.bounce_busy = false;
                    }
                    let _ = self.table.complete(id);
                    self.live[index] = 0;
                }
                Owner::Queued => match on_complete.as_mut() {
                    Some(f) => {
                        let _ = self.table.complete(id);
                        self.live[index] = 0;
                        f(Tag(id), Err(err));
                        reported += 1;
                    }
                    None => {
                        slot.result = Some(Err(err));
                        self.undelivered += 1;
                    }
                },
            }
        }
        if all {
            for c in 1..self.opened {
                if let Some(ch) = self.channels[c].take() {
                    self.dead[c] = Some(ch);
                }
            }
        }
        reported
    }

    /// Closes every channel (sub-channels first), reports each queued request still in
    /// flight to `on_failed` with [`StorError::ChannelClosed`] (its memory is the caller's
    /// again), and frees the bounce buffers once the host no longer maps them.
    pub fn close_with(mut self, mut on_failed: impl FnMut(Tag, IoResult)) -> Result<(), StorError> {
        if self.undelivered > 0 {
            self.deliver_stored(&mut on_failed);
        }
        self.waiter.restart();
        let mut result = Ok(());
        for ci in (0..self.opened).rev() {
            let ch = self.channels[ci].take().or_else(|| self.dead[ci].take());
            if let Some(ch) = ch {
                self.waiter.restart();
                if let Err(e) = ch.close(self.conn, &mut self.waiter)
                    && ci == 0
                {
                    result = Err(StorError::from(e));
                }
            }
        }
        for index in 0..QUEUE_DEPTH {
            let id = core::mem::take(&mut self.live[index]);
            if id == 0 {
                continue;
            }
            if let Ok(slot) = self.table.complete(id)
                && slot.owner == Owner::Queued
            {
                on_failed(
                    Tag(id),
                    slot.result.unwrap_or(Err(StorError::ChannelClosed)),
                );
            }
        }
        let hal = self.conn.hal();
        for b in self.slot_bounce.iter_mut().filter_map(Option::take) {
            // SAFETY: allocated by this HAL with SLOT_BOUNCE_PAGES pages; every channel is
            // closed and its GPADL torn down, so no request names it any more.
            unsafe { hal.free_pages(b, SLOT_BOUNCE_PAGES) };
        }
        // SAFETY: the bounce pages were allocated by this controller's HAL; the channels are
        // closed and their GPADLs torn down, and no request that named them is in flight.
        unsafe { hal.free_pages(self.bounce, self.bounce_pages) };
        result
    }

    /// Closes the controller like [`Self::close_with`], dropping the reports of queued
    /// requests still in flight.
    pub fn close(self) -> Result<(), StorError> {
        self.close_with(|_, _| {})
    }

    /// Waits (bounded by the waiter) for the blocking request `id`.
    fn wait_blocking(&mut self, id: u64) -> IoResult {
        self.waiter.restart();
        loop {
            self.drain(NO_REPORT);
            let done = self.table.get(id).map(|s| s.result.is_some());
            match done {
                Ok(true) => {
                    if let Some(index) = slot_index(id) {
                        self.live[index] = 0;
                    }
                    let slot = self.table.complete(id)?;
                    return slot.result.unwrap_or(Err(StorError::ChannelClosed));
                }
                Ok(false) => {}
                Err(e) => return Err(e),
            }
            if self.waiter.wait().is_err() {
                if let Ok(slot) = self.table.get(id) {
                    slot.owner = Owner::Abandoned;
                    if slot.staging == Staging::BigBounce {
                        self.bounce_busy = true;
                    }
                }
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

/// Waits for up to `want` sub-channel offers of `primary` and opens them into `channels`,
/// recording their relids; returns how many opened.
fn open_sub_channels<T: Transport, H: Hal>(
    conn: &mut Connection<T, H>,
    primary: u32,
    want: usize,
    config: &ChannelConfig,
    waiter: &mut impl Wait,
    channels: &mut [Option<Channel>],
    relids: &mut [u32],
) -> usize {
    waiter.restart();
    loop {
        conn.poll();
        if conn.offers().subchannels(primary).count() >= want || waiter.wait().is_err() {
            break;
        }
    }
    let mut found = [0u32; MAX_CHANNELS];
    let mut n = 0;
    for o in conn.offers().subchannels(primary) {
        if n < want.min(channels.len()) {
            found[n] = o.relid;
            n += 1;
        }
    }
    if n < want {
        log::warn!("storvsc {primary}: {n} of {want} sub-channels offered");
    }
    let mut opened = 0;
    for &relid in &found[..n] {
        waiter.restart();
        match Channel::open(conn, relid, config, waiter) {
            Ok(ch) => {
                channels[opened] = Some(ch);
                relids[opened] = relid;
                opened += 1;
            }
            Err(e) => log::warn!("storvsc {primary}: sub-channel {relid} not opened: {e}"),
        }
    }
    opened
}

fn close_channels<T: Transport, H: Hal>(
    conn: &mut Connection<T, H>,
    channels: &mut [Option<Channel>],
    waiter: &mut impl Wait,
) {
    for ch in channels.iter_mut().rev().filter_map(Option::take) {
        waiter.restart();
        let _ = ch.close(conn, waiter);
    }
}

/// Sends one VSTOR packet in-band and waits for its completion, copying it to `completion`;
/// unsolicited host packets seen meanwhile set `bus_changed`. Used for the handshake and
/// CREATE_SUB_CHANNELS, before the queue exists.
fn call<T: Transport, H: Hal>(
    conn: &mut Connection<T, H>,
    channel: &mut Channel,
    waiter: &mut impl Wait,
    packet: &[u8],
    completion: &mut [u8],
    bus_changed: &mut bool,
) -> Result<usize, StorError> {
    waiter.restart();
    let id = channel.send_request(conn, &[packet], 0, RequestMode::Await)?;
    let mut rx = [0u8; RX_BUF];
    let len = channel.wait_completion(
        conn,
        id,
        completion,
        &mut rx,
        |received| {
            if let Received::Packet(p) = received {
                let operation = p
                    .payload()
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
        },
        waiter,
    )?;
    Ok(len.min(completion.len()))
}

impl<T: Transport, H: Hal, W: Wait> ScsiTransport for StorvscController<'_, T, H, W> {
    /// Executes one request on the queue and waits for it. The data always goes through the
    /// controller's large bounce buffer, so the caller's borrow may end at a timeout while
    /// the host still holds the request.
    fn execute(
        &mut self,
        request: &ScsiRequest,
        data: DataBuf<'_>,
    ) -> Result<SrbCompletion, StorError> {
        if self.channels[0].is_none() {
            return Err(StorError::ChannelClosed);
        }
        let len = data.len();
        if len > self.bounce_pages * HV_PAGE_SIZE {
            return Err(StorError::InvalidArgument(
                "transfer larger than the bounce buffer",
            ));
        }
        if len > 0 && self.bounce_busy {
            // A timed-out request still names the bounce buffer: wait for it to end.
            self.waiter.restart();
            while self.bounce_busy {
                self.drain(NO_REPORT);
                if self.bounce_busy && self.waiter.wait().is_err() {
                    return Err(StorError::Timeout);
                }
            }
        }
        let io = match &data {
            DataBuf::ToDevice(b) if !b.is_empty() => {
                // SAFETY: the bounce buffer is `bounce_pages` pages this controller owns and
                // no request naming it is in flight (`bounce_busy` is clear, and blocking
                // requests run one at a time); `len` fits (checked above).
                unsafe { core::ptr::copy_nonoverlapping(b.as_ptr(), self.bounce.as_ptr(), len) };
                IoBuffer::ToDevice {
                    ptr: self.bounce,
                    len,
                }
            }
            DataBuf::FromDevice(b) if !b.is_empty() => IoBuffer::FromDevice {
                ptr: self.bounce,
                len,
            },
            _ => IoBuffer::None,
        };
        // Back-pressure from queued requests: wait for room.
        self.waiter.restart();
        let id = loop {
            match self.send(request, io, Staging::BigBounce, Owner::Blocking) {
                Ok(tag) => break tag.0,
                Err(StorError::TableFull | StorError::Channel(ChannelError::Full)) => {
                    self.drain(NO_REPORT);
                    self.waiter.wait().map_err(|_| StorError::Timeout)?;
                }
                Err(e) => return Err(e),
            }
        };
        let srb = self.wait_blocking(id)?;
        if let DataBuf::FromDevice(b) = data {
            let n = (srb.data_transfer_length as usize).min(len);
            // SAFETY: the request completed, so the host no longer writes the bounce pages;
            // `n` ≤ `len` bytes of them are copied out.
            unsafe { core::ptr::copy_nonoverlapping(self.bounce.as_ptr(), b.as_mut_ptr(), n) };
        }
        Ok(srb)
    }
}
