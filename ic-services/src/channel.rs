//! An integration service bound to its VMBus channel on the shared bus: opens the channel the
//! host offered for the service's class, answers every host request with the service's
//! response (in-band, the host's transaction id, no completion), and hands the OS the
//! resulting events.
//!
//! Receiving uses the channel's pull API: each request is read into the channel's buffer,
//! answered in place and the answer written to the ring before the next request is read; the
//! ring's read index is published once per batch. Every [`IcChannel::poll`] reads at most a
//! budget of packets — answered, malformed or not requests at all — so a host that keeps
//! refilling the ring cannot hold the caller; [`Polled::more`] says to poll again.
//!
//! A reply that finds the outbound ring full is not lost: it stays in the buffer and goes out
//! at the next poll, before anything new is read (the host signals when it frees space).

use core::fmt;

use vmbus_guest::protocol::Guid;
use vmbus_guest::ring::PacketKind;
use vmbus_guest::{
    Channel, ChannelConfig, ChannelError, ChannelStats, Hal, Received, Released, Transport, Vmbus,
    Wait,
};

use crate::{AnswerInPlace, IcError, IcEvent, IcHandler, IcService};

/// Default buffer size of an [`IcChannel`]: the largest IC packet, the KVP IP-info message
/// (16-byte descriptor + 28-byte header + 7428 payload bytes = 7472), rounded up. Services with
/// smaller messages may use their own `MAX_PACKET` (e.g. [`crate::heartbeat::MAX_PACKET`]).
pub const MAX_IC_PACKET: usize = 8192;
/// Ring pages per direction for an IC channel (control page included): Linux uses 3 pages of
/// data (12 KiB) per direction for the util services.
pub const IC_RING_PAGES: usize = 4;
/// Default number of host packets one [`IcChannel::poll`] reads before it returns.
pub const DEFAULT_POLL_BUDGET: usize = 16;

/// Largest packet (descriptor, header and payload, rounded to 8 bytes) a service whose own
/// messages carry `payload` bytes after the IC header receives, NEGOTIATE included (at most
/// 2 × 100 versions).
pub const fn max_packet(payload: usize) -> usize {
    const DESCRIPTOR: usize = 16;
    const NEGOTIATE: usize = 8 + 4 * 2 * crate::protocol::NEGOTIATE_MAX_VERSION_COUNT;
    let body = if payload > NEGOTIATE {
        payload
    } else {
        NEGOTIATE
    };
    (DESCRIPTOR + crate::protocol::ICMSG_HDR_SIZE + body).next_multiple_of(8)
}

/// The channel configuration IC channels open with: [`IC_RING_PAGES`] each way.
pub fn ic_channel_config() -> ChannelConfig {
    ChannelConfig {
        outbound_pages: IC_RING_PAGES,
        inbound_pages: IC_RING_PAGES,
        ..ChannelConfig::default()
    }
}

/// Why an IC channel operation failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum IcChannelError {
    /// The VMBus channel failed (no such offer, open refused, closed, rescinded, corrupt ring).
    Channel(ChannelError),
}

impl From<ChannelError> for IcChannelError {
    fn from(e: ChannelError) -> Self {
        Self::Channel(e)
    }
}

impl fmt::Display for IcChannelError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Channel(e) => write!(f, "IC channel: {e}"),
        }
    }
}

impl core::error::Error for IcChannelError {}

/// Counters of one IC channel.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct IcStats {
    /// Host packets read from the ring, of every kind (completions the channel skipped
    /// included).
    pub read: u64,
    /// Requests answered (the reply is in the ring).
    pub answered: u64,
    /// Requests dropped without an answer because they were malformed (a typed [`IcError`]
    /// was logged and reported as [`IcEvent::Rejected`]).
    pub malformed: u64,
    /// Packets dropped because they are not in-band requests (GPA-direct, transfer pages,
    /// unknown types).
    pub not_requests: u64,
    /// Completion packets dropped: an IC channel never sends a request, so any completion is
    /// a host bug.
    pub stray_completions: u64,
    /// Packets larger than the channel's buffer, dropped unread.
    pub oversized: u64,
    /// Replies that found the outbound ring full and were kept for a retry.
    pub replies_deferred: u64,
}

/// What one [`IcChannel::poll`] did.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Polled {
    /// Requests answered (a retried reply included).
    pub answered: usize,
    /// Host packets read, whatever became of them.
    pub read: usize,
    /// The budget ran out with packets possibly still in the ring: poll again soon. No
    /// interrupt announces them (the host's interrupts stay masked until the ring is drained).
    pub more: bool,
    /// A reply is waiting for room in the outbound ring; it goes out at the next poll, after
    /// the host has read (and signals).
    pub reply_pending: bool,
}

/// A reply that found the ring full: its bytes are `buf[start..start + len]`.
#[derive(Clone, Copy, Debug)]
struct PendingReply {
    transaction_id: u64,
    start: usize,
    len: usize,
    event: IcEvent,
}

/// What one receive produced, copied out of the buffer's borrow.
enum Step {
    Empty,
    Request {
        transaction_id: u64,
        start: usize,
        len: usize,
    },
    NotRequest,
    Stray,
    Oversized(usize),
}

/// One integration service on its open channel, borrowing the bus it was opened on.
///
/// `BUF` is the receive buffer, in which replies are also built and kept until they are in
/// the ring: it should hold the largest packet the host sends (see [`max_packet`] and each
/// service's `MAX_PACKET`); a larger packet is dropped unread and counted
/// ([`IcStats::oversized`]). With the default [`MAX_IC_PACKET`] every `IcChannel` of this crate's
/// services (KVP with its default store included) stays within 16 KiB.
pub struct IcChannel<'b, T: Transport, A: Hal, H, const BUF: usize = MAX_IC_PACKET> {
    io: Io<'b, T, A>,
    service: IcService<H>,
    buf: [u8; BUF],
}

/// Everything of an [`IcChannel`] but the service and the buffer: the poll loop lives here,
/// once for every service (the service and the buffer come in as `dyn` and a slice).
struct Io<'b, T: Transport, A: Hal> {
    /// No requests of its own: one (never used) request slot.
    channel: Channel<'b, T, A, (), 1>,
    pending: Option<PendingReply>,
    budget: usize,
    more: bool,
    stats: IcStats,
}

impl<T: Transport, A: Hal, H, const BUF: usize> fmt::Debug for IcChannel<'_, T, A, H, BUF> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("IcChannel")
            .field("channel", &self.io.channel)
            .field("reply_pending", &self.io.pending.is_some())
            .field("stats", &self.io.stats)
            .finish()
    }
}

impl<'b, T: Transport, A: Hal, H: IcHandler, const BUF: usize> IcChannel<'b, T, A, H, BUF> {
    /// Opens the first free offer of the service's class ([`IcHandler::DEVICE_CLASS`]) with
    /// IC-sized rings ([`ic_channel_config`]). The guest then waits: the host starts with
    /// NEGOTIATE. Thread context only.
    pub fn open(
        bus: &'b Vmbus<T, A>,
        handler: H,
        waiter: &mut impl Wait,
    ) -> Result<Self, IcChannelError> {
        Self::open_with(bus, None, &ic_channel_config(), handler, waiter)
    }

    /// Opens the offer of the service's class with interface instance `instance` (any free
    /// one if `None`) with `config`. Thread context only.
    pub fn open_with(
        bus: &'b Vmbus<T, A>,
        instance: Option<&Guid>,
        config: &ChannelConfig,
        handler: H,
        waiter: &mut impl Wait,
    ) -> Result<Self, IcChannelError> {
        let mut slot = None;
        Self::open_in(&mut slot, bus, instance, config, handler, waiter)?;
        slot.take()
            .ok_or(IcChannelError::Channel(ChannelError::NotOpen))
    }

    /// Like [`IcChannel::open_with`], building the service channel in caller-provided storage
    /// (a `static`, or a slot in a larger structure) instead of returning it by value, so a
    /// kernel's stack never holds a second copy of its buffer while it opens. Thread context
    /// only.
    pub fn open_in<'s>(
        slot: &'s mut Option<Self>,
        bus: &'b Vmbus<T, A>,
        instance: Option<&Guid>,
        config: &ChannelConfig,
        handler: H,
        waiter: &mut impl Wait,
    ) -> Result<&'s mut Self, IcChannelError> {
        let channel = Channel::open_class(bus, H::DEVICE_CLASS, instance, config, waiter)?;
        Ok(slot.insert(Self {
            io: Io {
                channel,
                pending: None,
                budget: DEFAULT_POLL_BUDGET,
                more: false,
                stats: IcStats::default(),
            },
            service: IcService::new(handler),
            buf: [0; BUF],
        }))
    }

    /// The service (negotiated versions, the handler's state).
    pub fn service(&self) -> &IcService<H> {
        &self.service
    }

    /// Mutable access to the service (for example to update KVP values the guest publishes).
    pub fn service_mut(&mut self) -> &mut IcService<H> {
        &mut self.service
    }

    /// The channel's relid.
    pub fn relid(&self) -> u32 {
        self.io.channel.relid()
    }

    /// Whether the channel is usable (not rescinded, unloaded, corrupt or closed).
    pub fn is_alive(&mut self) -> bool {
        self.io.channel.is_alive()
    }

    /// Sets how many host packets one [`IcChannel::poll`] reads at most (at least 1).
    pub fn set_poll_budget(&mut self, packets: usize) {
        self.io.budget = packets.max(1);
    }

    /// Whether the last [`IcChannel::poll`] stopped on its budget with packets possibly left;
    /// no interrupt announces them, poll again.
    pub fn has_more(&self) -> bool {
        self.io.more
    }

    /// Whether a reply is waiting for room in the outbound ring (sent by the next poll).
    pub fn reply_pending(&self) -> bool {
        self.io.pending.is_some()
    }

    /// Counters.
    pub fn stats(&self) -> IcStats {
        let ch = self.io.channel.stats();
        IcStats {
            read: ch.received,
            stray_completions: self.io.stats.stray_completions + ch.unknown_completions,
            ..self.io.stats
        }
    }

    /// The VMBus channel's own counters (signals, batches …).
    pub fn channel_stats(&self) -> ChannelStats {
        self.io.channel.stats()
    }

    /// Host packets dropped without an answer: malformed requests, packets that are not
    /// requests, completions, and packets too large for the buffer.
    pub fn dropped(&self) -> u64 {
        let s = self.stats();
        s.malformed + s.not_requests + s.stray_completions + s.oversized
    }

    /// Answers the host requests waiting in the ring, one at a time (each answer goes out
    /// before the next request is read), and calls `on_event` with what each one means for
    /// the OS, after its answer is in the ring. Reads at most the poll budget
    /// ([`DEFAULT_POLL_BUDGET`], [`IcChannel::set_poll_budget`]) of packets, counting every
    /// packet read whatever becomes of it. (Completions for unknown transactions — all of
    /// them, on an IC channel — are skipped by the channel itself, up to 64 per receive, so a
    /// flood of them can overshoot the budget by that much, never more.) A reply kept because
    /// the ring was full is sent first; while it cannot go out nothing new is read.
    ///
    /// Callable from a polling loop or after the channel's interrupt; never blocks. An error
    /// means the channel is unusable (rescinded, unloaded, corrupt): close it.
    pub fn poll(&mut self, mut on_event: impl FnMut(IcEvent)) -> Result<Polled, IcChannelError> {
        Ok(self
            .io
            .poll(&mut self.buf, &mut self.service, &mut on_event)?)
    }

    /// Closes the channel (see [`Channel::close`]) and gives the handler back, with whether
    /// the ring memory was freed. A reply still waiting for ring space is dropped.
    pub fn close(mut self, waiter: &mut impl Wait) -> (H, Released) {
        let released = self.io.close(waiter);
        (self.service.into_handler(), released)
    }

    /// Like [`IcChannel::close`], closing the service channel where it lies (the storage of
    /// [`IcChannel::open_in`]) and emptying the slot: the handler is dropped there instead of
    /// being returned, so the stack never holds a copy of the channel and its buffer.
    /// Returns `None` if the slot was empty. Thread context only.
    pub fn close_in(slot: &mut Option<Self>, waiter: &mut impl Wait) -> Option<Released> {
        let released = slot.as_mut()?.io.close(waiter);
        *slot = None;
        Some(released)
    }
}

impl<T: Transport, A: Hal> Io<'_, T, A> {
    /// The body of [`IcChannel::poll`] with the buffer as a slice and the service and the
    /// event sink behind `dyn`: one copy of the poll loop for every service.
    fn poll(
        &mut self,
        buf: &mut [u8],
        service: &mut dyn AnswerInPlace,
        on_event: &mut dyn FnMut(IcEvent),
    ) -> Result<Polled, ChannelError> {
        let mut polled = Polled::default();
        let answered_before = self.stats.answered;
        let read_before = self.channel.stats().received;
        let result = self.poll_inner(buf, service, on_event, read_before);
        polled.answered = (self.stats.answered - answered_before) as usize;
        polled.read = (self.channel.stats().received - read_before) as usize;
        polled.reply_pending = self.pending.is_some();
        self.more = matches!(result, Ok(true));
        polled.more = self.more;
        result?;
        Ok(polled)
    }

    /// Sends the reply kept from an earlier poll. `Ok(false)`: the ring is still full.
    fn retry_pending(
        &mut self,
        buf: &[u8],
        on_event: &mut dyn FnMut(IcEvent),
    ) -> Result<bool, ChannelError> {
        let Some(p) = self.pending else {
            return Ok(true);
        };
        let bytes = buf.get(p.start..p.start + p.len).unwrap_or(&[]);
        match self.channel.send_reply(p.transaction_id, &[bytes]) {
            Ok(()) => {
                self.pending = None;
                self.stats.answered += 1;
                if p.event != IcEvent::None {
                    on_event(p.event);
                }
                Ok(true)
            }
            Err(ChannelError::Full) => Ok(false),
            Err(e) => {
                log::warn!(
                    "IC channel {}: reply {:#x} lost: {e}",
                    self.channel.relid(),
                    p.transaction_id
                );
                self.pending = None;
                Err(e)
            }
        }
    }

    /// Reads the next packet and keeps what the poll needs of it. A packet too large for the
    /// buffer is dropped unread (it would otherwise block the ring for good).
    fn receive(&mut self, buf: &mut [u8]) -> Result<Step, ChannelError> {
        let received = match self.channel.recv(buf) {
            Err(ChannelError::BufferTooSmall { needed }) => {
                return Ok(match self.channel.skip()? {
                    Some(_) => Step::Oversized(needed),
                    None => Step::Empty,
                });
            }
            other => other?,
        };
        Ok(match received {
            None => Step::Empty,
            Some(Received::Packet(p)) if matches!(p.kind, PacketKind::InBand) => {
                let d = p.descriptor;
                let start = usize::from(d.data_offset8) * 8;
                let end = usize::from(d.length8) * 8;
                Step::Request {
                    transaction_id: d.transaction_id,
                    start,
                    len: end.saturating_sub(start),
                }
            }
            Some(Received::Packet(_)) => Step::NotRequest,
            Some(Received::Completion { .. } | Received::Failed { .. }) => Step::Stray,
        })
    }

    /// The loop of [`IcChannel::poll`]: `Ok(true)` when the budget ran out.
    fn poll_inner(
        &mut self,
        buf: &mut [u8],
        service: &mut dyn AnswerInPlace,
        on_event: &mut dyn FnMut(IcEvent),
        read_before: u64,
    ) -> Result<bool, ChannelError> {
        if !self.retry_pending(buf, on_event)? {
            return Ok(false);
        }
        let budget = self.budget as u64;
        // Every pass reads a packet or ends the batch; ending one that says "more" starts
        // another. Bounded twice over: by packets read and by passes.
        for _ in 0..=2 * self.budget {
            if self.channel.stats().received - read_before >= budget {
                self.channel.yield_batch()?;
                return Ok(true);
            }
            match self.receive(buf)? {
                Step::Empty => {
                    if !self.channel.end_batch()? {
                        return Ok(false);
                    }
                }
                Step::NotRequest => {
                    log::warn!(
                        "IC channel {}: dropped a packet that is not an in-band request",
                        self.channel.relid()
                    );
                    self.stats.not_requests += 1;
                }
                Step::Stray => {
                    log::warn!(
                        "IC channel {}: dropped a stray completion",
                        self.channel.relid()
                    );
                    self.stats.stray_completions += 1;
                }
                Step::Oversized(needed) => {
                    log::warn!(
                        "IC channel {}: dropped a {needed}-byte packet, larger than the \
                         {}-byte buffer",
                        self.channel.relid(),
                        buf.len()
                    );
                    self.stats.oversized += 1;
                }
                Step::Request {
                    transaction_id,
                    start,
                    len,
                } => {
                    if !self.answer(buf, service, transaction_id, start, len, on_event)? {
                        // The reply waits for ring space: read nothing more until it is out.
                        self.channel.end_batch()?;
                        return Ok(false);
                    }
                }
            }
        }
        self.channel.yield_batch()?;
        Ok(true)
    }

    /// Answers the request in `buf[start..start + len]` in place and sends the answer.
    /// `Ok(false)`: the ring is full and the answer is kept for the next poll.
    fn answer(
        &mut self,
        buf: &mut [u8],
        service: &mut dyn AnswerInPlace,
        transaction_id: u64,
        start: usize,
        len: usize,
        on_event: &mut dyn FnMut(IcEvent),
    ) -> Result<bool, ChannelError> {
        let region = buf.get_mut(start..).unwrap_or(&mut []);
        let reply = match service.answer_in_place(region, len) {
            Ok(reply) => reply,
            Err(e) => {
                self.reject(e, on_event);
                return Ok(true);
            }
        };
        let Some(bytes) = buf.get(start..start + reply.len) else {
            // Cannot happen: the service wrote the reply there.
            self.reject(
                IcError::ResponseBufferTooSmall {
                    needed: start + reply.len,
                    got: buf.len(),
                },
                on_event,
            );
            return Ok(true);
        };
        match self.channel.send_reply(transaction_id, &[bytes]) {
            Ok(()) => {
                self.stats.answered += 1;
                if reply.event != IcEvent::None {
                    on_event(reply.event);
                }
                Ok(true)
            }
            Err(ChannelError::Full) => {
                log::debug!(
                    "IC channel {}: ring full, reply {transaction_id:#x} kept for the next poll",
                    self.channel.relid()
                );
                self.stats.replies_deferred += 1;
                self.pending = Some(PendingReply {
                    transaction_id,
                    start,
                    len: reply.len,
                    event: reply.event,
                });
                Ok(false)
            }
            Err(e) => Err(e),
        }
    }

    fn reject(&mut self, e: IcError, on_event: &mut dyn FnMut(IcEvent)) {
        log::warn!(
            "IC channel {}: dropped a malformed request: {e}",
            self.channel.relid()
        );
        self.stats.malformed += 1;
        on_event(IcEvent::Rejected(e));
    }

    fn close(&mut self, waiter: &mut impl Wait) -> Released {
        if let Some(p) = self.pending.take() {
            log::warn!(
                "IC channel {}: closed with reply {:#x} unsent",
                self.channel.relid(),
                p.transaction_id
            );
        }
        self.channel.close_in_place(waiter, |_, _, _| {})
    }
}
