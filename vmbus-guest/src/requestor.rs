//! The request table: maps the transaction ids the guest puts in packets that request a
//! completion to its requests in flight, each with a caller context that comes back with the
//! completion or the failure. A fixed slab with a generation per slot, so a host-supplied
//! transaction id is only ever looked up and validated, never trusted as a pointer, and a
//! stale, forged or duplicate id matches nothing.
//!
//! The slab's bookkeeping (states, generations, counts) is kept apart from the contexts and
//! worked on through a [`Book`], which knows neither the context type nor the capacity: the
//! channel code that allocates, matches and fails requests exists once, whatever the
//! context types and table sizes of the drivers linked together.

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

/// What a slot holds.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum State {
    Free,
    /// Waiting for the host; `dma`: it named bus host-buffer memory (GPA-direct).
    Pending {
        dma: bool,
    },
    /// Ended without a completion (the channel died, with the table's `failure`); reported
    /// once.
    Failed,
}

/// One slot's bookkeeping. Its context, if the slot is not free, is in the table's
/// context array at the same index.
#[derive(Clone, Copy, Debug)]
struct Meta {
    generation: u32,
    state: State,
}

/// The counts of a table.
#[derive(Debug)]
struct Counts {
    pending: usize,
    failed: usize,
    /// Why the failed requests failed (one cause for all: the channel's death).
    failure: ChannelError,
    /// Where the next free-slot search starts (keeps allocation O(1) on average).
    cursor: usize,
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
    counts: Counts,
    meta: [Meta; N],
    /// `Some` exactly where `meta` is not free.
    contexts: [Option<C>; N],
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
            counts: Counts {
                pending: 0,
                failed: 0,
                failure: ChannelError::Closed,
                cursor: 0,
            },
            meta: [Meta {
                generation: 1,
                state: State::Free,
            }; N],
            contexts: core::array::from_fn(|_| None),
        }
    }

    /// The bookkeeping and the contexts, apart.
    pub(crate) fn split(&mut self) -> (Book<'_>, Contexts<'_, C>) {
        (
            Book {
                counts: &mut self.counts,
                meta: &mut self.meta,
            },
            Contexts(&mut self.contexts),
        )
    }

    /// Requests waiting for the host.
    pub fn in_flight(&self) -> usize {
        self.counts.pending
    }

    /// Requests that failed and were not yet reported.
    pub fn failed(&self) -> usize {
        self.counts.failed
    }

    /// Whether every slot is taken (pending or failed and unreported).
    pub fn is_full(&self) -> bool {
        self.counts.pending + self.counts.failed == N
    }

    /// Reserves a slot for a request carrying `context`.
    pub fn insert(&mut self, context: C, dma: bool) -> Result<RequestId, (ChannelError, C)> {
        let (mut book, mut contexts) = self.split();
        match book.reserve(dma) {
            Ok(id) => {
                contexts.put(id, context);
                Ok(id)
            }
            Err(e) => Err((e, context)),
        }
    }

    /// Takes back a request whose packet was never sent (the write failed). The write may
    /// have failed because the ring was found corrupt, which fails every request in flight —
    /// this one included: it is taken back from the failed ones too, so a request its sender
    /// saw fail is never reported again by `take_failed`.
    pub fn cancel(&mut self, id: RequestId) -> Option<C> {
        let (mut book, mut contexts) = self.split();
        if book.cancel(id) {
            contexts.take(id)
        } else {
            None
        }
    }

    /// Validates a host-supplied transaction id and ends its request. `None` if the id
    /// matches no request in flight (unknown, stale, duplicate or forged).
    pub fn complete(&mut self, transaction_id: u64) -> Option<Ended<C>> {
        let (mut book, mut contexts) = self.split();
        let (id, dma) = book.complete(transaction_id)?;
        Some(Ended {
            id,
            context: contexts.take(id)?,
            dma,
        })
    }

    /// Every request in flight fails with `error` (the channel died); each is reported once
    /// by [`RequestTable::take_failed`].
    pub fn fail_all(&mut self, error: ChannelError) {
        self.split().0.fail_all(error);
    }

    /// Takes one failed request, freeing its slot.
    pub fn take_failed(&mut self) -> Option<(RequestId, C, ChannelError)> {
        let (mut book, mut contexts) = self.split();
        let (id, error) = book.take_failed()?;
        Some((id, contexts.take(id)?, error))
    }
}

/// The contexts of a table, borrowed apart from its [`Book`].
pub(crate) struct Contexts<'a, C>(&'a mut [Option<C>]);

impl<C> Contexts<'_, C> {
    /// Stores the context of the request `id` the book just reserved.
    #[inline]
    pub(crate) fn put(&mut self, id: RequestId, context: C) {
        if let Some(c) = self.0.get_mut(id.index()) {
            *c = Some(context);
        }
    }

    /// Takes the context of the request `id` the book just freed. `None` only if the table
    /// and its book disagree (a bug of this crate, never a host's doing).
    #[inline]
    pub(crate) fn take(&mut self, id: RequestId) -> Option<C> {
        self.0.get_mut(id.index())?.take()
    }
}

/// The bookkeeping of a table, borrowed apart from its contexts: every operation that
/// allocates, matches or fails requests, with neither the context type nor the capacity in
/// its type. Whoever frees a slot here takes its context from the [`Contexts`]; whoever
/// reserves one puts it there.
pub(crate) struct Book<'a> {
    counts: &'a mut Counts,
    meta: &'a mut [Meta],
}

impl Book<'_> {
    /// Reserves a free slot for a request (its context to be put at its index).
    #[inline]
    pub(crate) fn reserve(&mut self, dma: bool) -> Result<RequestId, ChannelError> {
        let n = self.meta.len();
        if self.counts.pending + self.counts.failed >= n {
            return Err(ChannelError::TooManyRequests);
        }
        let mut index = self.counts.cursor;
        for _ in 0..n {
            if index >= n {
                index = 0;
            }
            if let Some(m) = self.meta.get_mut(index)
                && m.state == State::Free
            {
                m.state = State::Pending { dma };
                self.counts.pending += 1;
                self.counts.cursor = index + 1;
                return Ok(RequestId {
                    index: index as u16,
                    generation: m.generation,
                });
            }
            index += 1;
        }
        Err(ChannelError::TooManyRequests)
    }

    /// Frees a slot: a new generation, so its old id matches nothing. Returns what it held.
    #[inline]
    fn free(m: &mut Meta) -> State {
        m.generation = m.generation.wrapping_add(1).max(1);
        core::mem::replace(&mut m.state, State::Free)
    }

    /// Takes back a request whose packet was never sent, pending or failed (see
    /// [`RequestTable::cancel`]). Whether `id` was such a request (its context to be taken).
    pub(crate) fn cancel(&mut self, id: RequestId) -> bool {
        let Some(m) = self
            .meta
            .get_mut(id.index())
            .filter(|m| m.generation == id.generation && m.state != State::Free)
        else {
            return false;
        };
        match Self::free(m) {
            State::Pending { .. } => self.counts.pending -= 1,
            State::Failed => self.counts.failed -= 1,
            State::Free => {}
        }
        true
    }

    /// Validates a host-supplied transaction id and ends its request: the request and
    /// whether it named bus host-buffer memory (its context to be taken). `None` if the id
    /// matches no request in flight (unknown, stale, duplicate or forged).
    #[inline]
    pub(crate) fn complete(&mut self, transaction_id: u64) -> Option<(RequestId, bool)> {
        let index = usize::try_from((transaction_id as u32).checked_sub(1)?).ok()?;
        let generation = (transaction_id >> 32) as u32;
        let m = self
            .meta
            .get_mut(index)
            .filter(|m| m.generation == generation)?;
        let State::Pending { dma } = m.state else {
            return None;
        };
        Self::free(m);
        self.counts.pending -= 1;
        Some((
            RequestId {
                index: index as u16,
                generation,
            },
            dma,
        ))
    }

    /// Every request in flight fails with `error`; each is reported once by
    /// [`Book::take_failed`].
    pub(crate) fn fail_all(&mut self, error: ChannelError) {
        if self.counts.pending == 0 {
            return;
        }
        self.counts.failure = error;
        for m in self.meta.iter_mut() {
            if matches!(m.state, State::Pending { .. }) {
                m.state = State::Failed;
                self.counts.pending -= 1;
                self.counts.failed += 1;
            }
        }
    }

    /// Takes one failed request, freeing its slot (its context to be taken).
    pub(crate) fn take_failed(&mut self) -> Option<(RequestId, ChannelError)> {
        if self.counts.failed == 0 {
            return None;
        }
        let (index, m) = self
            .meta
            .iter_mut()
            .enumerate()
            .find(|(_, m)| m.state == State::Failed)?;
        let generation = m.generation;
        Self::free(m);
        self.counts.failed -= 1;
        Some((
            RequestId {
                index: index as u16,
                generation,
            },
            self.counts.failure,
        ))
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
