//! Bursts of queued submissions: every request of a burst is written into its channel's ring
//! at once, and each channel the burst used publishes them with one write-index store and at
//! most one signal when the burst ends ([`vmbus_guest::Channel::begin_send_batch`]).

use vmbus_guest::{Hal, Transport, Wait};

use super::StorvscController;
use crate::StorError;
use crate::queue::{IoBuffer, Tag};
use crate::request::{LunAddress, ScsiRequest};

#[cfg(doc)]
use crate::queue::Memory;
#[cfg(doc)]
use vmbus_guest::Released;

/// What a burst remembers: its home channel and the channels whose send batch it opened.
#[derive(Clone, Copy, Debug, Default)]
pub(super) struct BurstState {
    /// The channel tried first ([`StorvscController::burst_on_vp`]); `None` = the
    /// controller's spreading policy.
    pub(super) home: Option<usize>,
    /// Channels with a send batch open, one bit each.
    pub(super) open: u32,
}

/// A burst of queued submissions on a [`StorvscController`], from
/// [`StorvscController::burst`] or [`StorvscController::burst_on_vp`].
///
/// Submit any number of requests with [`Burst::submit`] (or [`Burst::submit_read`] /
/// [`Burst::submit_write`]); each goes into a channel's ring at once, but the host sees the
/// burst's requests only when it ends — [`Burst::finish`], or dropping it — and each channel
/// it used then publishes them with one write-index store and signals the host at most once
/// (only if its ring was empty before and the host's mask is clear), instead of once per
/// request. The controller cannot be polled while a burst is open (it is borrowed).
pub struct Burst<'c, 'b, T: Transport, H: Hal, W: Wait, const CHANNELS: usize, const DEPTH: usize> {
    controller: &'c mut StorvscController<'b, T, H, W, CHANNELS, DEPTH>,
    state: BurstState,
}

impl<'b, T: Transport, H: Hal, W: Wait, const CHANNELS: usize, const DEPTH: usize>
    StorvscController<'b, T, H, W, CHANNELS, DEPTH>
{
    /// Starts a burst whose requests are spread over the channels like single submissions
    /// ([`super::ControllerOptions::spill_depth`]); each channel used signals at most once.
    pub fn burst(&mut self) -> Burst<'_, 'b, T, H, W, CHANNELS, DEPTH> {
        Burst {
            controller: self,
            state: BurstState::default(),
        }
    }

    /// Starts a burst for the virtual processor with hypervisor index `vp`: its requests go
    /// to channel `vp % channel_count()` (the primary is channel 0, sub-channels follow in
    /// the order they were opened), so VPs that each submit their own bursts use their own
    /// sub-channels and rings without sharing (as Linux storvsc maps CPUs to channels). A
    /// request the VP's channel cannot take (dead, ring or request table full) goes to the
    /// next live channel.
    pub fn burst_on_vp(&mut self, vp: u32) -> Burst<'_, 'b, T, H, W, CHANNELS, DEPTH> {
        let home = (vp as usize).checked_rem(self.opened);
        Burst {
            controller: self,
            state: BurstState { home, open: 0 },
        }
    }
}

impl<T: Transport, H: Hal, W: Wait, const CHANNELS: usize, const DEPTH: usize>
    Burst<'_, '_, T, H, W, CHANNELS, DEPTH>
{
    /// [`StorvscController::submit`] inside the burst: the request is in its channel's ring
    /// when this returns, and the host sees it when the burst ends.
    ///
    /// # Safety
    ///
    /// [`StorvscController::submit`]'s contract for `data`: valid, unmoved and untouched
    /// until reported with [`Memory::Returned`] or reclaimed as [`Released::Freed`].
    #[allow(unsafe_code)]
    pub unsafe fn submit(
        &mut self,
        request: &ScsiRequest,
        data: IoBuffer,
    ) -> Result<Tag, StorError> {
        // SAFETY: the caller holds `submit`'s contract for `data`.
        unsafe {
            self.controller
                .submit_in(request, data, Some(&mut self.state))
        }
    }

    /// [`StorvscController::submit_read`] inside the burst.
    ///
    /// # Safety
    ///
    /// As for [`Burst::submit`]: `buffer` must not be accessed, moved or freed until it is
    /// given back.
    #[allow(unsafe_code)]
    pub unsafe fn submit_read(
        &mut self,
        lun: LunAddress,
        lba: u64,
        blocks: u32,
        buffer: &mut [u8],
    ) -> Result<Tag, StorError> {
        let request = super::submit::rw_request(false, lun, lba, blocks, buffer.len())?;
        // SAFETY: the caller upholds `submit`'s contract for `buffer`.
        unsafe { self.submit(&request, IoBuffer::from_device(buffer)) }
    }

    /// [`StorvscController::submit_write`] inside the burst.
    ///
    /// # Safety
    ///
    /// As for [`Burst::submit`]: `buffer` must not be written, moved or freed until it is
    /// given back.
    #[allow(unsafe_code)]
    pub unsafe fn submit_write(
        &mut self,
        lun: LunAddress,
        lba: u64,
        blocks: u32,
        buffer: &[u8],
    ) -> Result<Tag, StorError> {
        let request = super::submit::rw_request(true, lun, lba, blocks, buffer.len())?;
        // SAFETY: the caller upholds `submit`'s contract for `buffer`.
        unsafe { self.submit(&request, IoBuffer::to_device(buffer)) }
    }

    /// Ends the burst: every channel it used publishes its requests and signals the host if
    /// needed. An error is a failed signal (logged, counted by the channel): the requests
    /// are in flight anyway and the host finds them the next time it looks at the ring.
    pub fn finish(mut self) -> Result<(), StorError> {
        self.end()
    }

    fn end(&mut self) -> Result<(), StorError> {
        let mut result = Ok(());
        let c = &mut *self.controller;
        while self.state.open != 0 {
            let ci = self.state.open.trailing_zeros() as usize;
            self.state.open &= self.state.open - 1;
            let Some(ch) = c.channels.get_mut(ci).and_then(Option::as_mut) else {
                continue;
            };
            if let Err(e) = ch.end_send_batch() {
                log::warn!(
                    "storvsc: channel {}: signalling a burst failed: {e}",
                    c.relids[ci]
                );
                // Look at the channel again at the next poll.
                c.more |= 1 << ci;
                result = Err(StorError::from(e));
            }
        }
        result
    }
}

impl<T: Transport, H: Hal, W: Wait, const CHANNELS: usize, const DEPTH: usize> Drop
    for Burst<'_, '_, T, H, W, CHANNELS, DEPTH>
{
    /// Ends the burst like [`Burst::finish`] (a failed signal is logged).
    fn drop(&mut self) {
        let _ = self.end();
    }
}
