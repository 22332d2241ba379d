//! The part of a [`Channel`](super::Channel) that knows neither its request context type nor
//! its request capacity: the rings, signalling, liveness, batching, the write path and close.
//! Drivers instantiate `Channel` with several context types and table sizes; all of this
//! exists once for them. It reaches the request table only to fail every request when the
//! channel dies, through [`FailAll`] behind `dyn`. The hot paths that store or match a
//! context (`request`, `request_dma`, `recv`) stay generic in `Channel`, built on these
//! pieces.

#![forbid(unsafe_code)]

use super::ChannelStats;
use super::signal::Signaller;
use crate::bus::{Liveness, Released, SlotRef, Vmbus};
use crate::error::ChannelError;
use crate::hal::Hal;
use crate::offers::OfferInfo;
use crate::requestor::FailAll;
use crate::ring::{
    Corrupt, OutgoingPacket, PacketDescriptor, RawRingMemory, ReadError, RingReader, RingWriter,
    Signal, WriteError,
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
    pub(super) fn check(&mut self, reqs: &mut dyn FailAll) -> Result<(), ChannelError> {
        if self.health == Health::Open {
            match self.bus.slots.liveness(self.slot) {
                Liveness::Live => return Ok(()),
                Liveness::Rescinded => self.fail(reqs, Health::Rescinded),
                Liveness::Gone => self.fail(reqs, Health::Gone),
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

    pub(super) fn fail(&mut self, reqs: &mut dyn FailAll, health: Health) {
        self.health = health;
        let err = self.health_error();
        reqs.fail_all(err);
    }

    /// The ring is corrupt: the channel is broken, its requests fail.
    fn broken(&mut self, reqs: &mut dyn FailAll, c: Corrupt) -> ChannelError {
        self.fail(reqs, Health::Broken(c));
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
        reqs: &mut dyn FailAll,
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
                            return Err(self.write_error(reqs, e));
                        }
                    }
                    Ok(false) => return Err(ChannelError::Full),
                    Err(c) => return Err(self.broken(reqs, c)),
                }
            }
            Err(e) => return Err(self.write_error(reqs, e)),
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
    pub(super) fn begin_send_batch(&mut self, reqs: &mut dyn FailAll) -> Result<(), ChannelError> {
        self.check(reqs)?;
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
    pub(super) fn check_send(&mut self, reqs: &mut dyn FailAll) -> Result<(), ChannelError> {
        if self.in_send_batch && self.health == Health::Open {
            Ok(())
        } else {
            self.check(reqs)
        }
    }

    fn write_error(&mut self, reqs: &mut dyn FailAll, e: WriteError) -> ChannelError {
        match e {
            WriteError::Full { .. } => ChannelError::Full,
            WriteError::Corrupt(c) => self.broken(reqs, c),
            other => ChannelError::InvalidPacket(other),
        }
    }

    /// Sends a packet that requests no completion (in-band data, a reply, a completion):
    /// a failed signal is the caller's error.
    pub(super) fn send(
        &mut self,
        reqs: &mut dyn FailAll,
        packet: &OutgoingPacket<'_>,
    ) -> Result<(), ChannelError> {
        self.check_send(reqs)?;
        if self.write_packet(reqs, packet)?.is_needed() {
            self.signal()?;
        }
        Ok(())
    }

    /// Sends a request's packet: `Err` only if it never reached the ring (the caller then
    /// takes the request back). Once the packet is in the ring the request is in flight — the
    /// host may complete it, and may be using the memory it names — so a failed signal does
    /// not fail it: it is logged and counted, and the request completes, or fails at close,
    /// like any other.
    pub(super) fn send_request(
        &mut self,
        reqs: &mut dyn FailAll,
        packet: &OutgoingPacket<'_>,
    ) -> Result<(), ChannelError> {
        if self.write_packet(reqs, packet)?.is_needed() {
            self.signal_after_write();
        }
        Ok(())
    }

    /// Starts a receive batch if none is open and the channel is alive.
    pub(super) fn begin_receive(&mut self, reqs: &mut dyn FailAll) {
        // Liveness is checked once per batch, not per packet; a dead channel's ring is left
        // alone (after `close_in_place` its memory is no longer ours).
        if !self.in_batch && self.check(reqs).is_ok() {
            self.reader.begin_drain();
            self.in_batch = true;
        }
    }

    /// A completion matched no request: counted and logged, then skipped.
    #[cold]
    pub(super) fn unknown_completion(&mut self, transaction_id: u64) {
        self.stats.unknown_completions += 1;
        log::warn!(
            "channel {}: completion for unknown transaction {transaction_id:#x}",
            self.info.relid
        );
    }

    /// [`super::Channel::skip`].
    pub(super) fn skip(
        &mut self,
        reqs: &mut dyn FailAll,
    ) -> Result<Option<PacketDescriptor>, ChannelError> {
        self.begin_receive(reqs);
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
            Err(ReadError::Corrupt(c)) => Err(self.broken(reqs, c)),
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
    /// the table by the caller, with its context).
    pub(super) fn fail_for_close(&mut self, reqs: &mut dyn FailAll) {
        let _ = self.check(reqs);
        if matches!(self.health, Health::Open | Health::Broken(_)) {
            self.fail(reqs, Health::Gone);
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
