//! Blocking I/O ([`ScsiTransport`]) on top of the queue.

use vmbus_guest::{ChannelError, Hal, HostBuffer, Transport, Wait};

use super::{BigBounce, DRAIN_BUDGET, Owner, Phase, Stage, StorvscController};
use crate::StorError;
use crate::block::{DataBuf, ScsiTransport};
use crate::queue::IoResult;
use crate::request::{ScsiRequest, SrbCompletion};

impl<'b, T: Transport, H: Hal, W: Wait, const CHANNELS: usize, const DEPTH: usize>
    StorvscController<'b, T, H, W, CHANNELS, DEPTH>
{
    /// Waits (bounded by the waiter) for the blocking request in slot `index`.
    pub(super) fn wait_blocking(&mut self, index: usize) -> IoResult {
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

fn is_back_pressure(e: &StorError) -> bool {
    matches!(
        e,
        StorError::TableFull | StorError::Channel(ChannelError::Full)
    )
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
            match self.send(request, stage, Owner::Blocking, None) {
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
