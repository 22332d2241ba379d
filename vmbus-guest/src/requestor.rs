//! The request table: maps the transaction ids the guest puts in packets that request a
//! completion to its requests in flight, each with a caller context that comes back with the
//! completion or the failure. A fixed slab with a generation per slot, so a host-supplied
//! transaction id is only ever looked up and validated, never trusted as a pointer, and a
//! stale, forged or duplicate id matches nothing.

#![forbid(unsafe_code)]

use crate::error::ChannelError;

/// Default request slots per channel.
pub const DEFAULT_REQUESTS: usize = 64;

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

    /// The slot index (below the table's capacity): a driver may keep per-request state in
    /// an array of its own indexed by it.
    pub fn index(self) -> usize {
        usize::from(self.index)
    }
}

#[derive(Debug)]
enum Slot<C> {
    Free,
    Pending {
        context: C,
        dma: bool,
    },
    /// Ended without a completion (the channel died, with the table's `failure`); reported
    /// once.
    Failed {
        context: C,
    },
}

#[derive(Debug)]
struct Entry<C> {
    generation: u32,
    slot: Slot<C>,
}

/// A request that ended, as the table reports it.
#[derive(Debug)]
pub struct Ended<C> {
    /// The request.
    pub id: RequestId,
    /// Its context.
    pub context: C,
    /// It named bus host-buffer memory (GPA-direct).
    pub dma: bool,
}

/// The requests in flight on one channel: `N` slots, context `C` each.
#[derive(Debug)]
pub struct RequestTable<C, const N: usize = DEFAULT_REQUESTS> {
    entries: [Entry<C>; N],
    pending: usize,
    failed: usize,
    /// Why the failed requests failed (one cause for all: the channel's death).
    failure: ChannelError,
    /// Where the next free-slot search starts (keeps allocation O(1) on average).
    cursor: usize,
}

impl<C, const N: usize> Default for RequestTable<C, N> {
    fn default() -> Self {
        Self::new()
    }
}

impl<C, const N: usize> RequestTable<C, N> {
    /// An empty table. `N` must fit the 16-bit slot index.
    pub fn new() -> Self {
        const { assert!(N > 0 && N <= u16::MAX as usize) };
        Self {
            entries: core::array::from_fn(|_| Entry {
                generation: 1,
                slot: Slot::Free,
            }),
            pending: 0,
            failed: 0,
            failure: ChannelError::Closed,
            cursor: 0,
        }
    }

    /// Requests waiting for the host.
    pub fn in_flight(&self) -> usize {
        self.pending
    }

    /// Requests that failed and were not yet reported.
    pub fn failed(&self) -> usize {
        self.failed
    }

    /// Whether every slot is taken (pending or failed and unreported).
    pub fn is_full(&self) -> bool {
        self.pending + self.failed == N
    }

    /// Reserves a slot for a request carrying `context`.
    pub fn insert(&mut self, context: C, dma: bool) -> Result<RequestId, (ChannelError, C)> {
        if self.is_full() {
            return Err((ChannelError::TooManyRequests, context));
        }
        for step in 0..N {
            let index = (self.cursor + step) % N;
            let e = &mut self.entries[index];
            if matches!(e.slot, Slot::Free) {
                e.slot = Slot::Pending { context, dma };
                self.pending += 1;
                self.cursor = (index + 1) % N;
                return Ok(RequestId {
                    index: index as u16,
                    generation: e.generation,
                });
            }
        }
        Err((ChannelError::TooManyRequests, context))
    }

    fn free(e: &mut Entry<C>) -> Slot<C> {
        e.generation = e.generation.wrapping_add(1).max(1);
        core::mem::replace(&mut e.slot, Slot::Free)
    }

    /// Takes back a request whose packet was never sent (the write failed). The write may
    /// have failed because the ring was found corrupt, which fails every request in flight —
    /// this one included: it is taken back from the failed ones too, so a request its sender
    /// saw fail is never reported again by `take_failed`.
    pub fn cancel(&mut self, id: RequestId) -> Option<C> {
        let e = self
            .entries
            .get_mut(usize::from(id.index))
            .filter(|e| e.generation == id.generation && !matches!(e.slot, Slot::Free))?;
        match Self::free(e) {
            Slot::Pending { context, .. } => {
                self.pending -= 1;
                Some(context)
            }
            Slot::Failed { context, .. } => {
                self.failed -= 1;
                Some(context)
            }
            Slot::Free => None,
        }
    }

    /// Validates a host-supplied transaction id and ends its request. `None` if the id
    /// matches no request in flight (unknown, stale, duplicate or forged).
    pub fn complete(&mut self, transaction_id: u64) -> Option<Ended<C>> {
        let index = usize::try_from((transaction_id as u32).checked_sub(1)?).ok()?;
        let generation = (transaction_id >> 32) as u32;
        let e = self
            .entries
            .get_mut(index)
            .filter(|e| e.generation == generation && matches!(e.slot, Slot::Pending { .. }))?;
        match Self::free(e) {
            Slot::Pending { context, dma } => {
                self.pending -= 1;
                Some(Ended {
                    id: RequestId {
                        index: index as u16,
                        generation,
                    },
                    context,
                    dma,
                })
            }
            _ => None,
        }
    }

    /// Every request in flight fails with `error` (the channel died); each is reported once
    /// by [`RequestTable::take_failed`].
    pub fn fail_all(&mut self, error: ChannelError) {
        if self.pending == 0 {
            return;
        }
        self.failure = error;
        for e in self.entries.iter_mut() {
            if matches!(e.slot, Slot::Pending { .. }) {
                let Slot::Pending { context, .. } = core::mem::replace(&mut e.slot, Slot::Free)
                else {
                    continue;
                };
                e.slot = Slot::Failed { context };
                self.pending -= 1;
                self.failed += 1;
            }
        }
    }

    /// Takes one failed request, freeing its slot.
    pub fn take_failed(&mut self) -> Option<(RequestId, C, ChannelError)> {
        if self.failed == 0 {
            return None;
        }
        for (index, e) in self.entries.iter_mut().enumerate() {
            if matches!(e.slot, Slot::Failed { .. }) {
                let generation = e.generation;
                if let Slot::Failed { context } = Self::free(e) {
                    self.failed -= 1;
                    let id = RequestId {
                        index: index as u16,
                        generation,
                    };
                    return Some((id, context, self.failure));
                }
            }
        }
        None
    }
}

/// What a channel's context-free code needs of its request table: failing every request in
/// flight when the channel dies. Behind `dyn`, so that code exists once whatever the context
/// types and table sizes of the drivers linked together (the hot paths that store and take
/// contexts stay generic).
pub(crate) trait FailAll {
    /// [`RequestTable::fail_all`].
    fn fail_all(&mut self, error: ChannelError);
}

impl<C, const N: usize> FailAll for RequestTable<C, N> {
    fn fail_all(&mut self, error: ChannelError) {
        RequestTable::fail_all(self, error);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_are_validated_and_never_reused_while_live() {
        let mut t: RequestTable<u32, 4> = RequestTable::new();
        let a = t.insert(10, false).unwrap();
        let b = t.insert(11, true).unwrap();
        assert_ne!(a.transaction_id(), b.transaction_id());
        assert!(t.complete(0).is_none());
        assert!(t.complete(a.transaction_id() ^ (1 << 32)).is_none());
        assert!(t.complete(99).is_none());
        let e = t.complete(b.transaction_id()).unwrap();
        assert_eq!((e.context, e.dma, e.id), (11, true, b));
        assert!(t.complete(b.transaction_id()).is_none(), "duplicate");
        let c = t.insert(12, false).unwrap();
        assert_ne!(c.transaction_id(), b.transaction_id());
        assert_eq!(t.cancel(c), Some(12));
        assert_eq!(t.cancel(c), None);
        t.insert(1, false).unwrap();
        t.insert(2, false).unwrap();
        t.insert(3, false).unwrap();
        assert!(t.is_full());
        assert_eq!(t.insert(4, false).unwrap_err().1, 4);
        t.fail_all(ChannelError::Rescinded);
        assert_eq!(t.in_flight(), 0);
        assert!(
            t.complete(a.transaction_id()).is_none(),
            "failed ids match nothing"
        );
        let mut got = [0u32; 4];
        let mut n = 0;
        while let Some((_, ctx, err)) = t.take_failed() {
            assert_eq!(err, ChannelError::Rescinded);
            got[n] = ctx;
            n += 1;
        }
        got.sort();
        assert_eq!(got, [1, 2, 3, 10]);
        assert!(!t.is_full());
    }

    #[test]
    fn cancel_takes_back_a_failed_request() {
        let mut t: RequestTable<u32, 2> = RequestTable::new();
        let a = t.insert(1, false).unwrap();
        let b = t.insert(2, false).unwrap();
        t.fail_all(ChannelError::Rescinded);
        assert_eq!(t.cancel(a), Some(1));
        assert_eq!(t.cancel(a), None);
        assert_eq!(t.failed(), 1);
        let (id, ctx, _) = t.take_failed().unwrap();
        assert_eq!((id, ctx), (b, 2));
        assert!(t.take_failed().is_none());
        assert_eq!(t.cancel(b), None, "already reported");
    }
}
