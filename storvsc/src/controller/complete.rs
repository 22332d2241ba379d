//! Completions: draining the channels, matching completions and failures to queue slots and
//! reporting ended requests.

use vmbus_guest::{ChannelError, HV_PAGE_SIZE, Hal, Received, RequestId, Transport, Wait, Work};

use super::{
    BigBounce, HANDSHAKE_CONTEXT, Owner, Phase, RX_BUF, Staging, StorvscController,
    note_unsolicited,
};
use crate::StorError;
use crate::queue::{Done, IoResult, Memory, Polled};
use crate::request::SrbCompletion;

#[cfg(doc)]
use vmbus_guest::Vmbus;

impl<'b, T: Transport, H: Hal, W: Wait, const CHANNELS: usize, const DEPTH: usize>
    StorvscController<'b, T, H, W, CHANNELS, DEPTH>
{
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

    /// Frees slot `index` (a new generation for its next request).
    pub(super) fn release_slot(&mut self, index: usize) {
        let s = &mut self.slots[index];
        if matches!(s.phase, Phase::InFlight | Phase::Ended) {
            self.active -= 1;
        }
        if s.phase != Phase::Free {
            self.free[self.free_len] = index as u16;
            self.free_len += 1;
        }
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
    pub(super) fn deliver_stored(&mut self, on_done: &mut dyn FnMut(Done)) -> usize {
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
    pub(super) fn after_report(&mut self, index: usize) {
        let s = &mut self.slots[index];
        if s.request.is_none() && s.memory == Memory::Returned {
            self.release_slot(index);
        } else {
            if matches!(s.phase, Phase::InFlight | Phase::Ended) {
                self.active -= 1;
            }
            let s = &mut self.slots[index];
            s.phase = Phase::Lingering;
        }
    }

    /// A request of slot `index` ended with `result`: hand it to its owner.
    pub(super) fn finish(
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
    pub(super) fn slot_for(
        &mut self,
        ci: usize,
        request: RequestId,
        context: u16,
    ) -> Option<usize> {
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

    pub(super) fn on_completion(
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

    pub(super) fn on_failed(
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
    pub(super) fn channel_died(
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
    pub(super) fn poll_channels(
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
        // The channels of `mask`, from the cursor round (bits at and above it, then below).
        let start = self.poll_cursor;
        let opened = if self.opened >= 32 {
            u32::MAX
        } else {
            (1u32 << self.opened) - 1
        };
        let below = (1u32 << start.min(31)) - 1;
        for mut half in [mask & opened & !below, mask & opened & below] {
            while half != 0 {
                let ci = half.trailing_zeros() as usize;
                half &= half - 1;
                reported += self.drain_channel(ci, &mut left, &mut rx, &mut on_done);
            }
        }
        if self.opened > 0 {
            self.poll_cursor = if start + 1 >= self.opened {
                0
            } else {
                start + 1
            };
        }
        Polled {
            reported,
            more: self.more != 0 || self.undelivered > 0,
        }
    }

    pub(super) fn drain_channel(
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
}
