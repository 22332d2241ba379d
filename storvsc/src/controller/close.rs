//! Closing a controller and accounting for the memory of every request.

use vmbus_guest::{Hal, Released, Transport, Wait};

use super::{Owner, Phase, Staging, StorvscController, note_release};
use crate::StorError;
use crate::queue::{Memory, Reclaimed};

impl<'b, T: Transport, H: Hal, W: Wait, const CHANNELS: usize, const DEPTH: usize>
    StorvscController<'b, T, H, W, CHANNELS, DEPTH>
{
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
}
