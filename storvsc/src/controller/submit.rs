//! Queued submission: staging a request's data and sending its SRB on a channel.

use vmbus_guest::{ChannelError, HV_PAGE_SIZE, Hal, Transport, Wait};

use super::{BurstState, Owner, Phase, Stage, Staging, StorvscController};
use crate::StorError;
use crate::protocol::{DataDirection, VSTOR_PACKET_SIZE_WIN8 as VSTOR_PACKET_SIZE};
use crate::queue::{CallerMemory, IoBuffer, Memory, SLOT_BOUNCE_BYTES, Tag};
use crate::request::{LunAddress, ScsiRequest};
use crate::scsi::Cdb;

#[cfg(doc)]
use crate::request::SrbCompletion;
#[cfg(doc)]
use vmbus_guest::Released;

impl<'b, T: Transport, H: Hal, W: Wait, const CHANNELS: usize, const DEPTH: usize>
    StorvscController<'b, T, H, W, CHANNELS, DEPTH>
{
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
        // SAFETY: the caller holds this function's contract for `data`.
        unsafe { self.submit_in(request, data, None) }
    }

    /// [`Self::submit`], inside `burst` if given (its channels' send batches stay open).
    ///
    /// # Safety
    ///
    /// [`Self::submit`]'s contract for `data`.
    #[allow(unsafe_code)]
    pub(super) unsafe fn submit_in(
        &mut self,
        request: &ScsiRequest,
        data: IoBuffer,
        burst: Option<&mut BurstState>,
    ) -> Result<Tag, StorError> {
        if data.len() != request.transfer_length as usize {
            return Err(StorError::InvalidArgument(
                "data length differs from the request's transfer length",
            ));
        }
        // SAFETY: the caller holds `submit`'s contract for `data`, which is
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
        self.send(request, stage, Owner::Queued, burst)
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

    pub(super) fn host_visible(&self, m: &CallerMemory) -> bool {
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

    /// The slot the next request takes (the top of the free stack; popped by `send` only
    /// once the request is sent).
    pub(super) fn free_slot(&self) -> Option<usize> {
        let top = self.free_len.checked_sub(1)?;
        Some(usize::from(self.free[top]))
    }

    /// Stages the data, takes a slot and sends the SRB on a live channel.
    pub(super) fn send(
        &mut self,
        request: &ScsiRequest,
        stage: Stage,
        owner: Owner,
        mut burst: Option<&mut BurstState>,
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
        let start = match burst.as_ref().and_then(|b| b.home) {
            Some(home) if home < self.opened => home,
            _ => self.pick_channel(),
        };
        let mut sent = None;
        for k in 0..self.opened {
            let ci = (start + k) % self.opened;
            if self.dead & (1 << ci) != 0 {
                continue;
            }
            let Some(ch) = self.channels[ci].as_mut() else {
                continue;
            };
            // The first request of a burst on this channel opens its send batch (and checks
            // the channel's liveness, once for the burst).
            if let Some(b) = burst.as_deref_mut()
                && b.open & (1 << ci) == 0
            {
                match ch.begin_send_batch() {
                    Ok(()) => b.open |= 1 << ci,
                    Err(e) => {
                        self.more |= 1 << ci;
                        last = StorError::from(e);
                        continue;
                    }
                }
            }
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
        self.free_len -= 1;
        self.active += 1;
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
    pub(super) fn pick_channel(&self) -> usize {
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
}

pub(super) fn rw_request(
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
