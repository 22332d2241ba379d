//! The part of a [`Channel`](super::Channel) that knows neither its request context type nor
//! its request capacity: the rings, signalling, liveness, batching, request bookkeeping
//! through a [`Book`], and close. Drivers instantiate `Channel` with several context types
//! and table sizes; all of this exists once for them, and `Channel`'s methods are thin
//! shells that move contexts in and out of the table.

#![forbid(unsafe_code)]

use super::signal::Signaller;
use super::{ChannelStats, MAX_GPA_DIRECT_PFNS, MAX_GPA_DIRECT_RANGES, MAX_SKIPPED_PER_RECV};
use crate::bus::{Liveness, Released, SlotRef, Vmbus};
use crate::error::ChannelError;
use crate::hal::Hal;
use crate::host_buffer::Dma;
use crate::offers::OfferInfo;
use crate::requestor::{Book, RequestId};
use crate::ring::{
    Corrupt, GpaRange, IncomingPacket, OutgoingPacket, PacketDescriptor, PacketKind, RawRingMemory,
    ReadError, RingReader, RingWriter, Signal, WriteError,
};
use crate::shared::SharedPages;
use crate::transport::Transport;
use crate::wait::Wait;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Health {
    Open,
    Rescinded,
    Broken(Corrupt),
    Gone,
}

/// What [`Link::recv`] found: a [`super::Received`] without the request's context, and
/// with the packet as its length in the caller's buffer (the caller parses it again there, so
/// the packet is built once, in the caller's result).
pub(super) enum Got {
    Packet {
        len: usize,
    },
    Completion {
        request: RequestId,
        len: usize,
    },
    Failed {
        request: RequestId,
        error: ChannelError,
    },
}

/// An open channel without its request contexts (see the module documentation).
pub(super) struct Link<'b, T: Transport, H: Hal> {
    pub(super) bus: &'b Vmbus<T, H>,
    pub(super) info: OfferInfo,
    pub(super) offer_generation: u32,
    pub(super) slot: SlotRef,
    pub(super) epoch: u32,
    pub(super) signaller: Signaller,
    /// The ring pages; `None` once closed (or leaked).
    pub(super) pages: Option<SharedPages>,
    pub(super) gpadl: u32,
    pub(super) writer: RingWriter<RawRingMemory>,
    pub(super) reader: RingReader<RawRingMemory>,
    pub(super) health: Health,
    pub(super) in_batch: bool,
    /// Inside a send batch: packets are written, not yet published.
    pub(super) in_send_batch: bool,
    /// The last `recv` stopped with packets possibly left.
    pub(super) more: bool,
    pub(super) stats: ChannelStats,
}

impl<T: Transport, H: Hal> Link<'_, T, H> {
    /// Checks the channel is usable; on the first sight of a rescind or unload every request
    /// in flight fails with the matching error.
    pub(super) fn check(&mut self, book: &mut Book<'_>) -> Result<(), ChannelError> {
        if self.health == Health::Open {
            match self.bus.slots.liveness(self.slot) {
                Liveness::Live => return Ok(()),
                Liveness::Rescinded => self.fail(book, Health::Rescinded),
                Liveness::Gone => self.fail(book, Health::Gone),
            }
        }
        Err(self.health_error())
    }

    pub(super) fn health_error(&self) -> ChannelError {
        match self.health {
            Health::Open => ChannelError::NotOpen,
            Health::Rescinded => ChannelError::Rescinded,
            Health::Broken(c) => ChannelError::Corrupt(c),
            Health::Gone => ChannelError::Closed,
        }
    }

    fn fail(&mut self, book: &mut Book<'_>, health: Health) {
        self.health = health;
        let err = self.health_error();
        book.fail_all(err);
    }

    /// The ring is corrupt: the channel is broken, its requests fail.
    fn broken(&mut self, book: &mut Book<'_>, c: Corrupt) -> ChannelError {
        self.fail(book, Health::Broken(c));
        ChannelError::Corrupt(c)
    }

    fn signal(&mut self) -> Result<(), ChannelError> {
        self.stats.signals += 1;
        self.signaller
            .signal(self.bus.transport())
            .map_err(ChannelError::from)
    }

    /// Writes `packet` and, outside a send batch, commits it (asking for space once if the
    /// ring is full), saying whether the host must be signalled. `Ok` means the packet is in
    /// the ring (published, or published by the batch's end): the host may act on it whatever
    /// happens to the signal.
    #[inline]
    fn write_packet(
        &mut self,
        book: &mut Book<'_>,
        packet: &OutgoingPacket<'_>,
    ) -> Result<Signal, ChannelError> {
        match self.writer.write(packet) {
            Ok(()) => {}
            Err(WriteError::Full { needed }) => {
                // Publish what the batch wrote so far (the host frees space only behind
                // packets it can see), then ask the host to signal when the space is there
                // (§7.8 step 7).
                if self.writer.commit().is_needed() {
                    self.signal_after_write();
                }
                match self.writer.request_space(needed) {
                    Ok(true) => {
                        if let Err(e) = self.writer.write(packet) {
                            return Err(self.write_error(book, e));
                        }
                    }
                    Ok(false) => return Err(ChannelError::Full),
                    Err(c) => return Err(self.broken(book, c)),
                }
            }
            Err(e) => return Err(self.write_error(book, e)),
        }
        let signal = if self.in_send_batch {
            Signal::NotNeeded
        } else {
            self.writer.commit()
        };
        self.stats.sent += 1;
        Ok(signal)
    }

    /// Signals the host for packets already in the ring: a failure does not undo them (the
    /// host sees them the next time it looks at the ring); it is logged and counted.
    fn signal_after_write(&mut self) {
        if let Err(e) = self.signal() {
            self.stats.signal_failures += 1;
            log::warn!(
                "channel {}: packets queued but signalling the host failed ({e})",
                self.info.relid
            );
        }
    }

    /// [`super::Channel::begin_send_batch`].
    pub(super) fn begin_send_batch(&mut self, book: &mut Book<'_>) -> Result<(), ChannelError> {
        self.check(book)?;
        self.in_send_batch = true;
        Ok(())
    }

    /// [`super::Channel::end_send_batch`].
    pub(super) fn end_send_batch(&mut self) -> Result<(), ChannelError> {
        if !self.in_send_batch {
            return Ok(());
        }
        self.in_send_batch = false;
        self.stats.send_batches += 1;
        if self.writer.commit().is_needed()
            && let Err(e) = self.signal()
        {
            self.stats.signal_failures += 1;
            return Err(e);
        }
        Ok(())
    }

    /// Liveness before a send: checked per packet outside a batch, once per batch inside.
    #[inline]
    fn check_send(&mut self, book: &mut Book<'_>) -> Result<(), ChannelError> {
        if self.in_send_batch && self.health == Health::Open {
            Ok(())
        } else {
            self.check(book)
        }
    }

    fn write_error(&mut self, book: &mut Book<'_>, e: WriteError) -> ChannelError {
        match e {
            WriteError::Full { .. } => ChannelError::Full,
            WriteError::Corrupt(c) => self.broken(book, c),
            other => ChannelError::InvalidPacket(other),
        }
    }

    /// Sends a packet that requests no completion (in-band data, a reply, a completion):
    /// a failed signal is the caller's error.
    pub(super) fn send(
        &mut self,
        book: &mut Book<'_>,
        packet: &OutgoingPacket<'_>,
    ) -> Result<(), ChannelError> {
        self.check_send(book)?;
        if self.write_packet(book, packet)?.is_needed() {
            self.signal()?;
        }
        Ok(())
    }

    /// Sends the packet of the request `id` (reserved in `book`), or takes the request back
    /// if the packet never reached the ring. Once the packet is in the ring the request is in
    /// flight — the host may complete it, and may be using the memory it names — so a failed
    /// signal does not fail it: it is logged and counted, and the request completes, or fails
    /// at close, like any other. `Err(true)`: taken back from the table.
    #[inline]
    fn send_request(
        &mut self,
        book: &mut Book<'_>,
        id: RequestId,
        packet: &OutgoingPacket<'_>,
    ) -> Result<(), (ChannelError, bool)> {
        match self.write_packet(book, packet) {
            Ok(signal) => {
                if signal.is_needed() {
                    self.signal_after_write();
                }
                Ok(())
            }
            Err(e) => Err((e, book.cancel(id))),
        }
    }

    /// [`super::Channel::request`] without the context: the request's slot in `book`.
    #[inline]
    pub(super) fn request(
        &mut self,
        book: &mut Book<'_>,
        payload: &[&[u8]],
    ) -> Result<RequestId, ChannelError> {
        self.check_send(book)?;
        let id = book.reserve(false)?;
        let packet = OutgoingPacket::in_band(id.transaction_id(), true, payload);
        self.send_request(book, id, &packet).map_err(|(e, _)| e)?;
        Ok(id)
    }

    /// [`super::Channel::request_dma`] without the context: the request's slot in `book`.
    #[inline]
    pub(super) fn request_dma(
        &mut self,
        book: &mut Book<'_>,
        dma: &[Dma<'_>],
        payload: &[&[u8]],
    ) -> Result<RequestId, ChannelError> {
        self.check_send(book)?;
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
                let _ = pfns.push(d.pfn(self.bus.hal(), i)?);
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
        let id = book.reserve(host_buffer)?;
        // Recorded before the packet goes out: from then on the host may touch the memory.
        for d in dma {
            if let Some(users) = d.users() {
                users.record(self.slot);
            }
        }
        if host_buffer {
            self.bus.slots.dma_started(self.slot);
        }
        let packet = OutgoingPacket::gpa_direct(id.transaction_id(), &ranges, payload);
        if let Err((e, cancelled)) = self.send_request(book, id, &packet) {
            if cancelled && host_buffer {
                // Never reached the ring: the host cannot be using the memory for it.
                self.bus.slots.dma_completed(self.slot);
            }
            return Err(e);
        }
        Ok(id)
    }

    /// Starts a receive batch if none is open and the channel is alive.
    fn begin_receive(&mut self, book: &mut Book<'_>) {
        // Liveness is checked once per batch, not per packet; a dead channel's ring is left
        // alone (after `close_in_place` its memory is no longer ours).
        if !self.in_batch && self.check(book).is_ok() {
            self.reader.begin_drain();
            self.in_batch = true;
        }
    }

    /// [`super::Channel::recv`] without the contexts: requests as their slots in `book`, the
    /// packet as its length at the start of `buf` (see [`packet_in`]).
    #[inline]
    pub(super) fn recv(
        &mut self,
        book: &mut Book<'_>,
        buf: &mut [u8],
    ) -> Result<Option<Got>, ChannelError> {
        self.begin_receive(book);
        if self.health == Health::Open {
            self.more = true;
            for _ in 0..MAX_SKIPPED_PER_RECV {
                match self.reader.read(&mut *buf) {
                    Ok(p) => {
                        self.stats.received += 1;
                        let len = usize::from(p.descriptor.length8) * 8;
                        if !matches!(p.kind, PacketKind::Completion) {
                            return Ok(Some(Got::Packet { len }));
                        }
                        match book.complete(p.transaction_id()) {
                            Some((request, dma)) => {
                                if dma {
                                    self.bus.slots.dma_completed(self.slot);
                                }
                                return Ok(Some(Got::Completion { request, len }));
                            }
                            None => self.unknown_completion(p.transaction_id()),
                        }
                    }
                    Err(ReadError::Empty) => {
                        self.more = false;
                        return Ok(None);
                    }
                    Err(ReadError::BufferTooSmall { needed }) => {
                        return Err(ChannelError::BufferTooSmall { needed });
                    }
                    Err(ReadError::Corrupt(c)) => {
                        // Dead from now on: its requests are reported below.
                        self.fail(book, Health::Broken(c));
                        break;
                    }
                }
            }
            if self.health == Health::Open {
                return Ok(None);
            }
        }
        match book.take_failed() {
            Some((request, error)) => Ok(Some(Got::Failed { request, error })),
            None => Err(self.health_error()),
        }
    }

    /// A completion matched no request: counted and logged, then skipped.
    #[cold]
    fn unknown_completion(&mut self, transaction_id: u64) {
        self.stats.unknown_completions += 1;
        log::warn!(
            "channel {}: completion for unknown transaction {transaction_id:#x}",
            self.info.relid
        );
    }

    /// [`super::Channel::skip`].
    pub(super) fn skip(
        &mut self,
        book: &mut Book<'_>,
    ) -> Result<Option<PacketDescriptor>, ChannelError> {
        self.begin_receive(book);
        if self.health != Health::Open {
            return Err(self.health_error());
        }
        match self.reader.skip() {
            Ok(descriptor) => {
                self.stats.received += 1;
                self.more = true;
                Ok(Some(descriptor))
            }
            Err(ReadError::Empty) => {
                self.more = false;
                Ok(None)
            }
            Err(ReadError::Corrupt(c)) => Err(self.broken(book, c)),
            // `skip` copies nothing, so no buffer is too small.
            Err(ReadError::BufferTooSmall { needed }) => {
                Err(ChannelError::BufferTooSmall { needed })
            }
        }
    }

    /// [`super::Channel::end_batch`].
    pub(super) fn end_batch(&mut self) -> Result<bool, ChannelError> {
        if !self.in_batch {
            return Ok(self.more);
        }
        self.in_batch = false;
        self.stats.batches += 1;
        let end = self.reader.finish_drain();
        if end.signal.is_needed() && self.health == Health::Open {
            self.signal()?;
        }
        self.more = end.more;
        Ok(end.more)
    }

    /// [`super::Channel::yield_batch`].
    pub(super) fn yield_batch(&mut self) -> Result<(), ChannelError> {
        if self.in_batch && self.reader.publish().is_needed() && self.health == Health::Open {
            self.signal()?;
        }
        Ok(())
    }

    /// The first half of a close: every request still in flight fails (to be taken from
    /// `book` by the caller, with its context).
    pub(super) fn fail_for_close(&mut self, book: &mut Book<'_>) {
        let _ = self.check(book);
        if matches!(self.health, Health::Open | Health::Broken(_)) {
            self.fail(book, Health::Gone);
        }
    }

    /// The second half of a close ([`super::Channel::close_in_place`]), once the failed
    /// requests are handed out.
    pub(super) fn close(&mut self, waiter: &mut impl Wait) -> Released {
        // Whatever it died of, a closed channel reports `Closed` from now on, and no batch
        // is open on a ring that is about to go.
        self.health = Health::Gone;
        self.in_batch = false;
        self.in_send_batch = false;
        self.more = false;
        let Some(pages) = self.pages.take() else {
            return Released::Leaked;
        };
        let relid = self.info.relid;
        let released = if self.epoch != self.bus.epoch() {
            self.bus.ended_epoch_release(self.epoch)
        } else {
            {
                let mut c = self.bus.lock();
                if c.offer_present(relid, self.offer_generation)
                    && let Err(e) = c.post_close(relid)
                {
                    log::warn!("CLOSECHANNEL({relid}) failed: {e}");
                }
            }
            waiter.restart();
            let r = self.bus.teardown_gpadl(self.gpadl, self.epoch, waiter);
            self.bus
                .lock()
                .release_channel(relid, self.offer_generation);
            r
        };
        self.bus.slots.release(self.slot, released.is_freed());
        match released {
            Released::Freed => pages.free(self.bus.hal()),
            Released::Leaked => pages.leak(),
        }
        released
    }
}

impl<T: Transport, H: Hal> Drop for Link<'_, T, H> {
    fn drop(&mut self) {
        if let Some(pages) = self.pages.take() {
            log::warn!(
                "channel {} dropped without close: its ring stays the host's",
                self.info.relid
            );
            self.bus.slots.release(self.slot, false);
            pages.leak();
        }
    }
}

/// The packet [`Link::recv`] read into `buf`, `len` bytes, parsed again from that private
/// copy. Never `None` (`read` validated this very copy); if it were, the ring is corrupt.
#[inline]
pub(super) fn packet_in(buf: &[u8], len: usize) -> Option<IncomingPacket<'_>> {
    IncomingPacket::reparse(buf.get(..len)?).ok()
}

/// What `recv` reports if [`packet_in`] ever failed.
pub(super) const UNREADABLE_COPY: ChannelError =
    ChannelError::Corrupt(Corrupt::TruncatedPacket { available: 0 });
