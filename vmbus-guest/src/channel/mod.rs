//! An open channel (vmbus-core §5.8, §7, §8): its two rings in one GPADL, packet send
//! (in-band, with or without completion, GPA-direct), pull receive in batches, completions
//! matched through the [`RequestTable`], guest→host signalling, and close.
//!
//! The data path touches only the channel: it signals with its own parameters and reads its
//! liveness from a lock-free slot the bus updates, so channels (sub-channels of one device
//! included) run on different VPs without sharing a lock. Only open, close and
//! [`Channel::open_subchannels`] take the bus's control lock.

#![forbid(unsafe_code)]

mod link;
mod open;
mod signal;

pub use open::ChannelConfig;

use crate::bus::{Released, Vmbus};
use crate::error::ChannelError;
use crate::hal::Hal;
use crate::host_buffer::Dma;
use crate::offers::OfferInfo;
use crate::requestor::{DEFAULT_REQUESTS, RequestId, RequestTable};
use crate::ring::{
    Corrupt, GpaRange, IncomingPacket, OutgoingPacket, PacketDescriptor, PacketKind, ReadError,
};
use crate::transport::Transport;
use crate::wait::Wait;
use link::{Health, Link};

/// Most PFNs one GPA-direct packet may name.
pub const MAX_GPA_DIRECT_PFNS: usize = 66;
/// Most ranges (DMA descriptors) in one GPA-direct packet.
pub const MAX_GPA_DIRECT_RANGES: usize = 16;
/// Completions for unknown transaction ids skipped by one [`Channel::recv`] call before it
/// returns `Ok(None)` (bounded work against a host that floods them).
const MAX_SKIPPED_PER_RECV: usize = 64;

/// What [`Channel::recv`] returns.
#[derive(Debug)]
pub enum Received<'a, C> {
    /// A packet from the host that is not a completion of a guest request (in-band data,
    /// transfer pages, GPA direct, ...). If it requests a completion, the driver sends it
    /// with [`Channel::send_completion`] (between receives if it likes).
    Packet(IncomingPacket<'a>),
    /// The completion of a guest request.
    Completion {
        /// The request.
        request: RequestId,
        /// The context given when it was sent.
        context: C,
        /// The completion packet (payload includes padding).
        packet: IncomingPacket<'a>,
    },
    /// A request that will never complete: the channel died (rescind, unload, corruption)
    /// with it in flight. Each is reported once, before `recv` returns the channel error.
    Failed {
        /// The request.
        request: RequestId,
        /// The context given when it was sent.
        context: C,
        /// Why it failed.
        error: ChannelError,
    },
}

/// Diagnostic counters of one channel.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ChannelStats {
    /// Packets received (completions included).
    pub received: u64,
    /// Packets sent.
    pub sent: u64,
    /// Completions whose transaction id matched no request (a misbehaving host).
    pub unknown_completions: u64,
    /// Guest→host signals (hypercalls or monitor bits).
    pub signals: u64,
    /// Receive batches ended with [`Channel::end_batch`].
    pub batches: u64,
    /// Send batches ended with [`Channel::end_send_batch`].
    pub send_batches: u64,
    /// Signals that failed after a request's packet was already in the ring (the request
    /// stays in flight; the host sees it the next time it looks at the ring).
    pub signal_failures: u64,
}

/// An open VMBus channel, owned by its device driver, borrowing the bus it was opened on.
///
/// `C` is the context each request carries (returned with its completion or failure), `N` the
/// number of requests that can be in flight. Close it with [`Channel::close`]; dropping it
/// leaks its ring pages (the host may still map them).
///
/// Every method except [`Channel::open`], [`Channel::open_subchannels`], [`Channel::transact`]
/// and [`Channel::close`] is interrupt-safe: no lock, no allocation, no blocking.
pub struct Channel<'b, T: Transport, H: Hal, C = u64, const N: usize = DEFAULT_REQUESTS> {
    /// Everything but the request contexts: the code behind every method is there, once for
    /// all context types and capacities.
    link: Link<'b, T, H>,
    requests: RequestTable<C, N>,
}

impl<T: Transport, H: Hal, C, const N: usize> core::fmt::Debug for Channel<'_, T, H, C, N> {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("Channel")
            .field("relid", &self.link.info.relid)
            .field("health", &self.link.health)
            .field("in_flight", &self.requests.in_flight())
            .field("stats", &self.link.stats)
            .finish()
    }
}

impl<'b, T: Transport, H: Hal, C, const N: usize> Channel<'b, T, H, C, N> {
    /// The bus the channel was opened on.
    pub fn bus(&self) -> &'b Vmbus<T, H> {
        self.link.bus
    }

    /// The offer this channel was opened for.
    pub fn offer(&self) -> &OfferInfo {
        &self.link.info
    }

    /// The relid.
    pub fn relid(&self) -> u32 {
        self.link.info.relid
    }

    /// Handle of the ring GPADL.
    pub fn ring_gpadl(&self) -> u32 {
        self.link.gpadl
    }

    /// Requests waiting for a completion.
    pub fn requests_in_flight(&self) -> usize {
        self.requests.in_flight()
    }

    /// Whether every request slot is taken.
    pub fn requests_full(&self) -> bool {
        self.requests.is_full()
    }

    /// Diagnostic counters.
    pub fn stats(&self) -> ChannelStats {
        self.link.stats
    }

    /// Whether the channel is usable (not rescinded, unloaded, corrupt or closed). Reads the
    /// liveness the bus maintains; requests in flight fail on the first sight of a death.
    pub fn is_alive(&mut self) -> bool {
        self.link.check(&mut self.requests).is_ok()
    }

    /// Starts a send batch: packets sent until [`Channel::end_send_batch`] ([`Channel::send`],
    /// [`Channel::request`], [`Channel::request_dma`], completions) are copied into the ring
    /// at once but published together — one write-index store — and the host is signalled
    /// at most once, by the end, and only if the ring was empty before the batch and the
    /// host's interrupt mask is clear (vmbus-core §7.8 steps 4–6 for the whole batch).
    /// Liveness is checked here, once for the batch; a channel that dies meanwhile fails the
    /// batch's requests at the next [`Channel::recv`]. A ring that fills up mid-batch
    /// publishes what is there first. Every begin must be followed by an end: until then
    /// the host does not see the packets. Interrupt-safe.
    pub fn begin_send_batch(&mut self) -> Result<(), ChannelError> {
        self.link.begin_send_batch(&mut self.requests)
    }

    /// Ends a send batch: publishes its packets with one write-index store and signals the
    /// host if the rule says so. An error is the signal's: the packets are in the ring
    /// anyway (their requests are in flight) and the host finds them the next time it looks
    /// ([`ChannelStats::signal_failures`] counts it). Without a batch open, does nothing.
    /// Interrupt-safe.
    pub fn end_send_batch(&mut self) -> Result<(), ChannelError> {
        self.link.end_send_batch()
    }

    /// Whether a send batch is open ([`Channel::begin_send_batch`]).
    pub fn in_send_batch(&self) -> bool {
        self.link.in_send_batch
    }

    /// Sends an in-band packet (type 6) without completion request.
    pub fn send(&mut self, payload: &[&[u8]]) -> Result<(), ChannelError> {
        let packet = OutgoingPacket::in_band(0, false, payload);
        self.link.send(&mut self.requests, &packet)
    }

    /// Sends an in-band packet (type 6) without completion request, carrying the host's
    /// `transaction_id`: the reply form of protocols where the host starts every transaction
    /// and the guest answers in kind (integration services).
    pub fn send_reply(
        &mut self,
        transaction_id: u64,
        payload: &[&[u8]],
    ) -> Result<(), ChannelError> {
        let packet = OutgoingPacket::in_band(transaction_id, false, payload);
        self.link.send(&mut self.requests, &packet)
    }

    /// Sends a completion (type 11) for a host packet that requested one.
    pub fn send_completion(
        &mut self,
        transaction_id: u64,
        payload: &[&[u8]],
    ) -> Result<(), ChannelError> {
        let packet = OutgoingPacket::completion(transaction_id, payload);
        self.link.send(&mut self.requests, &packet)
    }

    /// Sends an in-band packet with completion requested. The completion (or the failure)
    /// comes back from [`Channel::recv`] with `context`. On error the packet was not sent and
    /// the context is dropped; a packet that reached the ring is in flight even if signalling
    /// the host failed ([`ChannelStats::signal_failures`]).
    pub fn request(&mut self, payload: &[&[u8]], context: C) -> Result<RequestId, ChannelError> {
        self.link.check_send(&mut self.requests)?;
        let id = self.requests.insert(context, false).map_err(|(e, _)| e)?;
        let packet = OutgoingPacket::in_band(id.transaction_id(), true, payload);
        if let Err(e) = self.link.send_request(&mut self.requests, &packet) {
            self.requests.cancel(id);
            return Err(e);
        }
        Ok(id)
    }

    /// Sends a GPA-direct packet (type 9, completion requested) naming the memory of `dma`
    /// (one GPA range each, translated page by page through [`Hal::virt_to_phys`]) followed
    /// by the in-band `payload`. Safe: a [`Dma`] is either bus memory that is not freed while
    /// the request may be in flight, or caller memory whose owner promised that when making
    /// it ([`Dma::from_raw`]). Errors as for [`Channel::request`]: an error means the packet
    /// never reached the ring, so the host never saw the memory.
    pub fn request_dma(
        &mut self,
        dma: &[Dma<'_>],
        payload: &[&[u8]],
        context: C,
    ) -> Result<RequestId, ChannelError> {
        self.link.check_send(&mut self.requests)?;
        if dma.is_empty() || dma.len() > MAX_GPA_DIRECT_RANGES {
            return Err(ChannelError::InvalidArgument("1 to 16 GPA-direct ranges"));
        }
        // Filled as translated (no zeroing of the whole capacity per request).
        let mut pfns: heapless::Vec<u64, MAX_GPA_DIRECT_PFNS> = heapless::Vec::new();
        let mut spans: heapless::Vec<(u32, u32, usize, usize), MAX_GPA_DIRECT_RANGES> =
            heapless::Vec::new();
        let mut host_buffer = false;
        for d in dma {
            let start = pfns.len();
            let count = d.page_count();
            if count > pfns.capacity() - start {
                return Err(ChannelError::InvalidArgument("too many GPA-direct pages"));
            }
            for i in 0..count {
                // Cannot fail: the capacity was checked above.
                let _ = pfns.push(d.pfn(self.link.bus.hal(), i)?);
            }
            let _ = spans.push((d.len() as u32, d.page_offset(), start, count));
            host_buffer |= d.users().is_some();
        }
        let mut ranges: heapless::Vec<GpaRange<'_>, MAX_GPA_DIRECT_RANGES> = heapless::Vec::new();
        for &(byte_count, byte_offset, start, count) in &spans {
            let _ = ranges.push(GpaRange {
                byte_count,
                byte_offset,
                pfns: &pfns[start..start + count],
            });
        }
        let id = self
            .requests
            .insert(context, host_buffer)
            .map_err(|(e, _)| e)?;
        // Recorded before the packet goes out: from then on the host may touch the memory.
        for d in dma {
            if let Some(users) = d.users() {
                users.record(self.link.slot);
            }
        }
        if host_buffer {
            self.link.bus.slots.dma_started(self.link.slot);
        }
        let packet = OutgoingPacket::gpa_direct(id.transaction_id(), &ranges, payload);
        if let Err(e) = self.link.send_request(&mut self.requests, &packet) {
            if self.requests.cancel(id).is_some() && host_buffer {
                // Never reached the ring: the host cannot be using the memory for it.
                self.link.bus.slots.dma_completed(self.link.slot);
            }
            return Err(e);
        }
        Ok(id)
    }

    /// Receives the next packet into `buf` (which must hold the largest packet the device
    /// sends): `Ok(None)` when the ring is empty. Completions are matched to their requests
    /// (unknown ids are counted and skipped). The first receive of a batch masks the host's
    /// interrupts; the freed ring space is published to the host only by
    /// [`Channel::end_batch`], so a driver may send completions between receives.
    ///
    /// After a rescind, unload or ring corruption, each request in flight is returned once as
    /// [`Received::Failed`], then the channel error; close the channel.
    pub fn recv<'a>(&mut self, buf: &'a mut [u8]) -> Result<Option<Received<'a, C>>, ChannelError> {
        self.link.begin_receive(&mut self.requests);
        if self.link.health != Health::Open {
            return match self.requests.take_failed() {
                Some((request, context, error)) => Ok(Some(Received::Failed {
                    request,
                    context,
                    error,
                })),
                None => Err(self.link.health_error()),
            };
        }
        self.link.more = true;
        for _ in 0..MAX_SKIPPED_PER_RECV {
            // Decide with a short borrow of `buf`; the packet is rebuilt from the private
            // copy below, so the borrow returned to the caller is the only long one.
            let outcome = match self.link.reader.read(&mut *buf) {
                Ok(p) => {
                    self.link.stats.received += 1;
                    let len = usize::from(p.descriptor.length8) * 8;
                    if matches!(p.kind, PacketKind::Completion) {
                        match self.requests.complete(p.transaction_id()) {
                            Some(ended) => {
                                if ended.dma {
                                    self.link.bus.slots.dma_completed(self.link.slot);
                                }
                                Some((len, Some((ended.id, ended.context))))
                            }
                            None => {
                                self.link.unknown_completion(p.transaction_id());
                                None
                            }
                        }
                    } else {
                        Some((len, None))
                    }
                }
                Err(ReadError::Empty) => {
                    self.link.more = false;
                    return Ok(None);
                }
                Err(ReadError::BufferTooSmall { needed }) => {
                    return Err(ChannelError::BufferTooSmall { needed });
                }
                Err(ReadError::Corrupt(c)) => {
                    self.link.fail(&mut self.requests, Health::Broken(c));
                    return self.recv(buf);
                }
            };
            let Some((len, completion)) = outcome else {
                continue;
            };
            let buf: &'a [u8] = buf;
            let packet = match buf.get(..len).map(IncomingPacket::reparse) {
                Some(Ok(p)) => p,
                // Cannot happen: `read` validated this very copy.
                _ => {
                    return Err(ChannelError::Corrupt(Corrupt::TruncatedPacket {
                        available: 0,
                    }));
                }
            };
            return Ok(Some(match completion {
                Some((request, context)) => Received::Completion {
                    request,
                    context,
                    packet,
                },
                None => Received::Packet(packet),
            }));
        }
        Ok(None)
    }

    /// Drops the next packet unread: the way past a packet larger than the caller's buffer
    /// (the [`ChannelError::BufferTooSmall`] of [`Channel::recv`]), which otherwise stays at the
    /// head of the ring for good. Returns its descriptor (`None` when the ring is empty) and
    /// counts it as received; the batch ends as after receives ([`Channel::end_batch`],
    /// [`Channel::yield_batch`]). A completion dropped this way leaves its request in flight:
    /// a driver whose completions can be that large must size its buffer for them.
    /// Interrupt-safe.
    pub fn skip(&mut self) -> Result<Option<PacketDescriptor>, ChannelError> {
        self.link.skip(&mut self.requests)
    }

    /// Ends a receive batch: publishes the read index once (signalling the host only if it
    /// waits for space), clears the interrupt mask and re-checks the ring. Returns whether
    /// packets are waiting — then receive again: no interrupt will announce them.
    pub fn end_batch(&mut self) -> Result<bool, ChannelError> {
        self.link.end_batch()
    }

    /// Ends a receive batch that stopped on a budget: publishes the read index (signalling
    /// the host only if it waits for space) but keeps the interrupt mask set, so the host does
    /// not interrupt while the driver is still behind (NAPI-style). Receive again later.
    pub fn yield_batch(&mut self) -> Result<(), ChannelError> {
        self.link.yield_batch()
    }

    /// Whether the last receive stopped with packets possibly still in the ring.
    pub fn has_more(&self) -> bool {
        self.link.more
    }

    /// A request/response exchange for handshakes: sends `payload` with completion
    /// requested, then receives (waiting with `waiter` between empty polls of bus and
    /// channel) until its completion arrives, copying the completion payload into `response`
    /// (truncated to it) and returning the host's payload length. Other packets received
    /// meanwhile go to `on_other`. A send batch still open is ended first. Thread context
    /// only; bounded by the waiter. If the waiter
    /// runs out, the request stays in flight and its late completion is returned by a later
    /// [`Channel::recv`] with `context`.
    pub fn transact(
        &mut self,
        payload: &[&[u8]],
        context: C,
        response: &mut [u8],
        rx: &mut [u8],
        mut on_other: impl FnMut(Received<'_, C>),
        waiter: &mut impl Wait,
    ) -> Result<usize, ChannelError> {
        // A send batch left open would keep the request from the host.
        self.end_send_batch()?;
        let id = self.request(payload, context)?;
        loop {
            while let Some(r) = self.recv(rx)? {
                match r {
                    Received::Completion {
                        request, packet, ..
                    } if request == id => {
                        self.end_batch()?;
                        let p = packet.payload();
                        let n = p.len().min(response.len());
                        response[..n].copy_from_slice(&p[..n]);
                        return Ok(p.len());
                    }
                    Received::Failed { request, error, .. } if request == id => {
                        self.end_batch()?;
                        return Err(error);
                    }
                    other => on_other(other),
                }
            }
            if self.end_batch()? {
                continue;
            }
            self.link.bus.poll();
            waiter.wait()?;
        }
    }

    /// Opens sub-channels of this (primary) channel: waits (bounded by `waiter`) until `n`
    /// sub-channel offers of this device are present — after the driver asked for them with
    /// its device protocol — and opens each with `config` into the empty places of `out`.
    /// Returns how many were opened; fewer than asked when the host offered fewer in time or
    /// an open failed (logged). Thread context only.
    pub fn open_subchannels<const M: usize>(
        &self,
        n: usize,
        config: &ChannelConfig,
        waiter: &mut impl Wait,
        out: &mut [Option<Channel<'b, T, H, C, M>>],
    ) -> usize {
        let want = n.min(out.iter().filter(|c| c.is_none()).count());
        let primary = self.link.info.relid;
        let _ = self.link.bus.wait_until(waiter, |c| {
            (c.offers.free_subchannels(primary).count() >= want).then_some(Ok(()))
        });
        let mut relids = [0u32; crate::bus::MAX_OPEN_CHANNELS];
        let found = self.link.bus.with_offers(|t| {
            let mut k = 0;
            for o in t.free_subchannels(primary).take(want.min(relids.len())) {
                relids[k] = o.relid;
                k += 1;
            }
            k
        });
        let mut opened = 0;
        for &relid in &relids[..found] {
            waiter.restart();
            let Some(place) = out.iter_mut().find(|c| c.is_none()) else {
                break;
            };
            match Channel::open(self.link.bus, relid, config, waiter) {
                Ok(ch) => {
                    *place = Some(ch);
                    opened += 1;
                }
                Err(e) => log::warn!("sub-channel {relid} of {primary} not opened: {e}"),
            }
        }
        opened
    }

    /// Closes the channel: every request in flight fails (the contexts are dropped; see
    /// [`Channel::close_with`]), CLOSECHANNEL is sent if the offer is still there, the ring
    /// GPADL is torn down and its pages freed only after GPADL_TORNDOWN, and a rescinded
    /// relid is released with RELID_RELEASED. Thread context only.
    pub fn close(self, waiter: &mut impl Wait) -> Released {
        self.close_with(waiter, |_, _, _| {})
    }

    /// Like [`Channel::close`], handing every request that was still in flight (or failed
    /// and not yet received) to `on_failed`. Memory those requests named may be reused only
    /// if this returns [`Released::Freed`].
    pub fn close_with(
        mut self,
        waiter: &mut impl Wait,
        on_failed: impl FnMut(RequestId, C, ChannelError),
    ) -> Released {
        self.close_in_place(waiter, on_failed)
    }

    /// Like [`Channel::close_with`], closing the channel where it lies: for a driver that
    /// keeps its channel inside a larger structure (a `static`, a slot) and would otherwise
    /// move all of it onto the stack to close by value. Afterwards the channel is a dead
    /// handle: every call fails with [`ChannelError::Closed`] without touching the ring, and
    /// dropping it does nothing. Only the first call releases anything; a later one returns
    /// [`Released::Leaked`] (nothing left to give back). Thread context only.
    pub fn close_in_place(
        &mut self,
        waiter: &mut impl Wait,
        mut on_failed: impl FnMut(RequestId, C, ChannelError),
    ) -> Released {
        self.link.fail_for_close(&mut self.requests);
        while let Some((id, ctx, err)) = self.requests.take_failed() {
            on_failed(id, ctx, err);
        }
        self.link.close(waiter)
    }
}
