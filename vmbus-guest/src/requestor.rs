//! The requestor table: maps the transaction ids the guest puts in packets that request a
//! completion to its requests in flight. A fixed slab with a generation counter per slot, so a
//! host-supplied transaction id is only ever looked up and validated, never trusted as a
//! pointer, and a stale or forged id matches nothing.

use crate::error::ChannelError;

/// Request slots per channel.
pub const MAX_REQUESTS: usize = 64;
/// Completion payload bytes kept for a request awaited with [`RequestMode::Await`].
pub const COMPLETION_INLINE: usize = 128;

/// Identifies one request in flight on a channel (slot and generation).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct RequestId {
    index: u16,
    generation: u32,
}

impl RequestId {
    /// The transaction id sent in the packet descriptor: generation in the high 32 bits,
    /// slot + 1 in the low 32 (never 0).
    pub fn transaction_id(self) -> u64 {
        (u64::from(self.generation) << 32) | (u64::from(self.index) + 1)
    }
}

/// What happens when the completion of a request arrives.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RequestMode {
    /// The completion is handed to the receive callback and the slot freed at once.
    Callback,
    /// The completion payload (up to [`COMPLETION_INLINE`] bytes) is kept until
    /// `take_completion` collects it.
    Await,
}

/// How an awaited request ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RequestStatus {
    /// Still waiting for the host.
    Pending,
    /// The completion arrived: `len` payload bytes (possibly more than were kept).
    Completed {
        /// Payload bytes the host sent.
        len: usize,
    },
    /// Ended without a completion.
    Failed(ChannelError),
}

#[derive(Clone, Copy, Debug)]
enum Slot {
    Free,
    Pending {
        cookie: u64,
        mode: RequestMode,
    },
    Completed {
        cookie: u64,
        len: usize,
        data: [u8; COMPLETION_INLINE],
    },
    Failed {
        cookie: u64,
        error: ChannelError,
    },
    /// A callback-mode request that ended without a completion; kept until the channel's
    /// poll reports it (`Requestor::take_failed_callback`).
    FailedCallback {
        cookie: u64,
        error: ChannelError,
    },
}

#[derive(Clone, Copy, Debug)]
struct Entry {
    generation: u32,
    slot: Slot,
}

/// The requests in flight on one channel.
#[derive(Debug)]
pub struct Requestor {
    entries: [Entry; MAX_REQUESTS],
    in_flight: usize,
}

impl Default for Requestor {
    fn default() -> Self {
        Self::new()
    }
}

impl Requestor {
    /// An empty table.
    pub const fn new() -> Self {
        Self {
            entries: [Entry {
                generation: 1,
                slot: Slot::Free,
            }; MAX_REQUESTS],
            in_flight: 0,
        }
    }

    /// Reserves a slot for a request carrying `cookie` (the caller's tag, returned with the
    /// completion).
    pub fn allocate(&mut self, cookie: u64, mode: RequestMode) -> Result<RequestId, ChannelError> {
        let (index, e) = self
            .entries
            .iter_mut()
            .enumerate()
            .find(|(_, e)| matches!(e.slot, Slot::Free))
            .ok_or(ChannelError::TooManyRequests)?;
        e.slot = Slot::Pending { cookie, mode };
        self.in_flight += 1;
        Ok(RequestId {
            index: index as u16,
            generation: e.generation,
        })
    }

    /// Frees a slot whose packet was never sent (the write failed).
    pub fn cancel(&mut self, id: RequestId) {
        if let Some(e) = self.entry_mut(id)
            && matches!(e.slot, Slot::Pending { .. })
        {
            Self::free(e);
            self.in_flight -= 1;
        }
    }

    fn free(e: &mut Entry) {
        e.slot = Slot::Free;
        e.generation = e.generation.wrapping_add(1).max(1);
    }

    fn entry_mut(&mut self, id: RequestId) -> Option<&mut Entry> {
        self.entries
            .get_mut(usize::from(id.index))
            .filter(|e| e.generation == id.generation)
    }

    /// Validates a host-supplied transaction id and records the completion. Returns the
    /// request and its cookie, or `None` if the id matches no request in flight.
    pub fn complete(&mut self, transaction_id: u64, payload: &[u8]) -> Option<(RequestId, u64)> {
        let low = transaction_id as u32;
        let index = usize::try_from(low.checked_sub(1)?).ok()?;
        let id = RequestId {
            index: u16::try_from(index).ok()?,
            generation: (transaction_id >> 32) as u32,
        };
        let e = self.entry_mut(id)?;
        let Slot::Pending { cookie, mode } = e.slot else {
            return None;
        };
        match mode {
            RequestMode::Callback => Self::free(e),
            RequestMode::Await => {
                let mut data = [0; COMPLETION_INLINE];
                let n = payload.len().min(COMPLETION_INLINE);
                data[..n].copy_from_slice(&payload[..n]);
                e.slot = Slot::Completed {
                    cookie,
                    len: payload.len(),
                    data,
                };
            }
        }
        self.in_flight -= 1;
        Some((id, cookie))
    }

    /// Ends every request in flight with `error` (rescind, close, ring corruption). Awaited
    /// requests keep the error for their waiter; callback requests keep it until
    /// [`Requestor::take_failed_callback`] hands it to their owner. Each is also reported
    /// through `on_failed`.
    pub fn fail_all(&mut self, error: ChannelError, mut on_failed: impl FnMut(RequestId, u64)) {
        for (index, e) in self.entries.iter_mut().enumerate() {
            if let Slot::Pending { cookie, mode } = e.slot {
                let id = RequestId {
                    index: index as u16,
                    generation: e.generation,
                };
                e.slot = match mode {
                    RequestMode::Callback => Slot::FailedCallback { cookie, error },
                    RequestMode::Await => Slot::Failed { cookie, error },
                };
                on_failed(id, cookie);
            }
        }
        self.in_flight = 0;
    }

    /// Takes one callback-mode request that failed (channel death) so its owner learns of it;
    /// the slot is freed.
    pub fn take_failed_callback(&mut self) -> Option<(RequestId, u64, ChannelError)> {
        let (index, e) = self
            .entries
            .iter_mut()
            .enumerate()
            .find(|(_, e)| matches!(e.slot, Slot::FailedCallback { .. }))?;
        let Slot::FailedCallback { cookie, error } = e.slot else {
            return None;
        };
        let id = RequestId {
            index: index as u16,
            generation: e.generation,
        };
        Self::free(e);
        Some((id, cookie, error))
    }

    /// Status of a request sent in [`RequestMode::Await`].
    pub fn status(&self, id: RequestId) -> Result<RequestStatus, ChannelError> {
        let e = self
            .entries
            .get(usize::from(id.index))
            .filter(|e| e.generation == id.generation)
            .ok_or(ChannelError::UnknownRequest)?;
        Ok(match e.slot {
            Slot::Free => return Err(ChannelError::UnknownRequest),
            Slot::Pending { .. } => RequestStatus::Pending,
            Slot::Completed { len, .. } => RequestStatus::Completed { len },
            Slot::Failed { error, .. } | Slot::FailedCallback { error, .. } => {
                RequestStatus::Failed(error)
            }
        })
    }

    /// Collects a finished awaited request: copies the kept completion payload into `buf` and
    /// returns the host's payload length; `Ok(None)` while pending; the failure if it failed.
    /// The slot is freed once collected.
    pub fn take(&mut self, id: RequestId, buf: &mut [u8]) -> Result<Option<usize>, ChannelError> {
        let e = self.entry_mut(id).ok_or(ChannelError::UnknownRequest)?;
        match e.slot {
            Slot::Free => Err(ChannelError::UnknownRequest),
            Slot::Pending { .. } => Ok(None),
            Slot::Completed { len, data, .. } => {
                let n = len.min(COMPLETION_INLINE).min(buf.len());
                buf[..n].copy_from_slice(&data[..n]);
                Self::free(e);
                Ok(Some(len))
            }
            Slot::Failed { error, .. } | Slot::FailedCallback { error, .. } => {
                Self::free(e);
                Err(error)
            }
        }
    }

    /// Requests whose completion has not arrived.
    pub fn in_flight(&self) -> usize {
        self.in_flight
    }

    /// The cookie of a request still tracked.
    pub fn cookie(&self, id: RequestId) -> Option<u64> {
        let e = self
            .entries
            .get(usize::from(id.index))
            .filter(|e| e.generation == id.generation)?;
        match e.slot {
            Slot::Free => None,
            Slot::Pending { cookie, .. }
            | Slot::Completed { cookie, .. }
            | Slot::Failed { cookie, .. }
            | Slot::FailedCallback { cookie, .. } => Some(cookie),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn complete_validates_ids() {
        let mut r = Requestor::new();
        let a = r.allocate(11, RequestMode::Await).unwrap();
        let b = r.allocate(22, RequestMode::Callback).unwrap();
        assert_eq!(r.in_flight(), 2);
        // Forged ids: 0, out of range, wrong generation.
        assert!(r.complete(0, &[]).is_none());
        assert!(r.complete(u64::MAX, &[]).is_none());
        assert!(r.complete(a.transaction_id() + (1 << 32), &[]).is_none());
        assert_eq!(r.complete(b.transaction_id(), &[1]), Some((b, 22)));
        assert!(r.complete(b.transaction_id(), &[1]).is_none(), "replay");
        assert_eq!(r.take(a, &mut [0; 4]), Ok(None));
        assert_eq!(r.complete(a.transaction_id(), &[1, 2, 3]), Some((a, 11)));
        assert_eq!(r.status(a), Ok(RequestStatus::Completed { len: 3 }));
        let mut buf = [0; 4];
        assert_eq!(r.take(a, &mut buf), Ok(Some(3)));
        assert_eq!(&buf[..3], &[1, 2, 3]);
        assert_eq!(r.take(a, &mut buf), Err(ChannelError::UnknownRequest));
        assert_eq!(r.in_flight(), 0);
        // The slot is reused with a new generation: the old id stays dead.
        let c = r.allocate(33, RequestMode::Await).unwrap();
        assert_ne!(c.transaction_id(), a.transaction_id());
        assert!(r.complete(a.transaction_id(), &[]).is_none());
    }

    #[test]
    fn fail_all_and_capacity() {
        let mut r = Requestor::new();
        let mut ids = [None; MAX_REQUESTS];
        for (i, id) in ids.iter_mut().enumerate() {
            *id = Some(r.allocate(i as u64, RequestMode::Await).unwrap());
        }
        assert_eq!(
            r.allocate(0, RequestMode::Await),
            Err(ChannelError::TooManyRequests)
        );
        let mut failed = 0;
        r.fail_all(ChannelError::Rescinded, |_, _| failed += 1);
        assert_eq!(failed, MAX_REQUESTS);
        for id in ids.iter().flatten() {
            assert_eq!(r.take(*id, &mut []), Err(ChannelError::Rescinded));
        }
        assert!(r.allocate(0, RequestMode::Await).is_ok());
    }
}
