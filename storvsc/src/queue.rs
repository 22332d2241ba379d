//! Types of the controller's queued (non-blocking) I/O: the [`Tag`] naming a submitted
//! request, the [`IoBuffer`] describing its data without borrowing it, what
//! [`crate::controller::StorvscController::poll`] reports ([`Done`], [`Polled`]) and what
//! [`crate::controller::StorvscController::close_with`] gives back ([`Reclaimed`]).
//!
//! A queued request is an EXECUTE_SRB sent with a completion requested through the channel's
//! own request table ([`vmbus_guest::RequestTable`]); the context it carries is the index of
//! the controller's queue slot, so a completion or failure is matched to a slot of a fixed
//! array, never to a pointer taken from the host.
//!
//! This module is the only place in the crate that touches caller memory by address (the
//! memory of queued requests, promised by the caller of the `unsafe` submit functions).

use core::ptr::NonNull;

use vmbus_guest::{Dma, Released};

use crate::StorError;
use crate::request::SrbCompletion;

/// Default number of channels per controller: the primary and up to 3 sub-channels (the
/// `CHANNELS` const parameter of [`crate::controller::StorvscController`]).
pub const DEFAULT_CHANNELS: usize = 4;
/// Default queue depth: requests in flight at once, all channels together (the `DEPTH` const
/// parameter of [`crate::controller::StorvscController`]). Each channel's own request table
/// has the same capacity, so one channel can carry the whole depth.
pub const DEFAULT_DEPTH: usize = 32;
/// Most pages of one queued request that goes through the bounce pool (its buffer is not
/// host-visible).
pub const SLOT_BOUNCE_PAGES: usize = 16;
/// Bytes of [`SLOT_BOUNCE_PAGES`].
pub const SLOT_BOUNCE_BYTES: usize = SLOT_BOUNCE_PAGES * vmbus_guest::HV_PAGE_SIZE;
/// Default size of the bounce pool queued requests share, in pages (256 KiB).
pub const DEFAULT_POOL_PAGES: usize = 64;
/// Largest bounce pool, in pages (1 MiB).
pub const MAX_POOL_PAGES: usize = 256;

/// Names one queued request until its end is reported by
/// [`crate::controller::StorvscController::poll`]. Unique among requests in flight; a tag is
/// never reused while its request is tracked (slot index plus generation).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Tag(pub(crate) u64);

impl Tag {
    /// The raw value: `(generation << 32) | (slot index + 1)`.
    pub fn raw(self) -> u64 {
        self.0
    }

    pub(crate) fn new(index: usize, generation: u32) -> Self {
        Self((u64::from(generation) << 32) | (index as u64 + 1))
    }
}

/// How a queued request ended: the decoded SRB completion (check it with
/// [`SrbCompletion::check`] or [`SrbCompletion::error`]), or a transport error —
/// [`StorError::ChannelClosed`] when the channel was rescinded or closed with the request in
/// flight.
pub type IoResult = Result<SrbCompletion, StorError>;

/// Whether the caller's buffer of an ended request is the caller's again.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Memory {
    /// The host completed the request, or never saw the caller's buffer (no data, or the
    /// data went through a bounce buffer): the buffer may be reused now.
    Returned,
    /// The request failed without a completion (its channel died) while its GPA-direct
    /// packet named the caller's buffer: the host may still access it. Keep the buffer until
    /// [`crate::controller::StorvscController::close_with`] reports the tag with
    /// [`Released::Freed`]; if it says [`Released::Leaked`], never reuse it.
    HeldUntilClose,
}

/// One queued request that ended, as [`crate::controller::StorvscController::poll`] reports
/// it (exactly once per tag).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Done {
    /// The request.
    pub tag: Tag,
    /// How it ended.
    pub result: IoResult,
    /// Whether its buffer is the caller's again.
    pub memory: Memory,
}

/// What one call of [`crate::controller::StorvscController::poll`] (or
/// [`crate::controller::StorvscController::poll_interrupt`]) did.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[must_use = "`more` says whether to poll again: no interrupt announces what is left"]
pub struct Polled {
    /// Requests reported.
    pub reported: usize,
    /// Work is left (the budget ran out with packets in a ring, or ended requests wait to
    /// be reported): poll again soon; no interrupt will announce it.
    pub more: bool,
}

/// A queued request [`crate::controller::StorvscController::close_with`] accounts for: one
/// still in flight (never reported), or one [`poll`](crate::controller::StorvscController::poll)
/// reported with [`Memory::HeldUntilClose`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Reclaimed {
    /// The request.
    pub tag: Tag,
    /// How it ended, if `poll` never reported it; `None` if it did.
    pub result: Option<IoResult>,
    /// [`Released::Freed`]: the caller's buffer is the caller's again. [`Released::Leaked`]:
    /// the host may still access it (its channel's close was not confirmed): never reuse it.
    pub memory: Released,
}

/// The data buffer of a queued request, described by address and length so no Rust borrow
/// outlives the submission (the host, or the controller's bounce copy, accesses the memory
/// until the request is reported).
#[derive(Clone, Copy, Debug)]
pub enum IoBuffer {
    /// No data phase.
    None,
    /// The device writes `len` bytes at `ptr` (a read).
    FromDevice {
        /// First byte.
        ptr: NonNull<u8>,
        /// Bytes.
        len: usize,
    },
    /// The device reads `len` bytes at `ptr` (a write).
    ToDevice {
        /// First byte.
        ptr: NonNull<u8>,
        /// Bytes.
        len: usize,
    },
}

impl IoBuffer {
    /// Describes `buf` as the destination of a read.
    pub fn from_device(buf: &mut [u8]) -> Self {
        let len = buf.len();
        Self::FromDevice {
            ptr: NonNull::from(buf).cast(),
            len,
        }
    }

    /// Describes `buf` as the source of a write.
    pub fn to_device(buf: &[u8]) -> Self {
        Self::ToDevice {
            ptr: NonNull::from(buf).cast(),
            len: buf.len(),
        }
    }

    /// Bytes in the data phase.
    pub fn len(&self) -> usize {
        match *self {
            Self::None => 0,
            Self::FromDevice { len, .. } | Self::ToDevice { len, .. } => len,
        }
    }

    /// Whether there is no data phase.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// Caller memory of a queued request with the submit contract attached.
///
/// Invariant (established by [`CallerMemory::new`], whose caller holds the contract of
/// [`crate::controller::StorvscController::submit`]): the `len` bytes at `ptr` stay valid,
/// allocated and unmoved, and nothing but this controller (and, for GPA-direct requests, the
/// host) reads or writes them, from the submission until the request is reported with
/// [`Memory::Returned`], or [`Reclaimed`] with [`Released::Freed`] — and forever if
/// reclaimed as [`Released::Leaked`].
#[derive(Clone, Copy, Debug)]
pub(crate) struct CallerMemory {
    ptr: NonNull<u8>,
    len: usize,
    is_write: bool,
}

impl CallerMemory {
    /// Takes the caller's buffer of a queued request; `None` if it has no data phase.
    ///
    /// # Safety
    ///
    /// The caller of the submit function that calls this holds its contract for `data` (see
    /// the type's invariant).
    #[allow(unsafe_code)]
    pub(crate) unsafe fn new(data: IoBuffer) -> Option<Self> {
        match data {
            IoBuffer::None => None,
            IoBuffer::FromDevice { len: 0, .. } | IoBuffer::ToDevice { len: 0, .. } => None,
            IoBuffer::FromDevice { ptr, len } => Some(Self {
                ptr,
                len,
                is_write: false,
            }),
            IoBuffer::ToDevice { ptr, len } => Some(Self {
                ptr,
                len,
                is_write: true,
            }),
        }
    }

    pub(crate) fn len(&self) -> usize {
        self.len
    }

    pub(crate) fn addr(&self) -> NonNull<u8> {
        self.ptr
    }

    pub(crate) fn is_write(&self) -> bool {
        self.is_write
    }

    /// The buffer as a GPA-direct descriptor (the host accesses it directly).
    #[allow(unsafe_code)]
    pub(crate) fn dma(&self) -> Result<Dma<'static>, StorError> {
        // The type's invariant is `Dma::from_raw`'s obligation: the memory stays valid, unmoved
        // and unreferenced by Rust until the request completes, or, if it fails without a
        // completion, until the channel's close frees it — the controller reports such a
        // request with `Memory::HeldUntilClose` and gives the buffer back only when
        // `close_with` says `Released::Freed`. Host-visibility was checked page by page with
        // `Hal::virt_to_phys` before the controller chose this path.
        // SAFETY: this type's invariant, as above, is exactly that obligation.
        unsafe { Dma::from_raw(self.ptr, self.len) }
            .map_err(|_| StorError::InvalidArgument("buffer larger than 4 GiB"))
    }

    /// Runs `f` on the caller's bytes (to copy a write into a bounce buffer).
    #[allow(unsafe_code)]
    pub(crate) fn with_bytes<R>(&self, f: impl FnOnce(&[u8]) -> R) -> R {
        // SAFETY: by the type's invariant the bytes are valid and nothing else writes them
        // while the request is tracked; a bounced buffer is never named to the host, so the
        // only access is this controller's, and the reference lives only during `f`.
        let bytes = unsafe { core::slice::from_raw_parts(self.ptr.as_ptr(), self.len) };
        f(bytes)
    }

    /// Runs `f` on the first `n` (at most `len`) caller bytes, mutably (to copy a completed
    /// read out of a bounce buffer).
    #[allow(unsafe_code)]
    pub(crate) fn with_bytes_mut<R>(&self, n: usize, f: impl FnOnce(&mut [u8]) -> R) -> R {
        let n = n.min(self.len);
        // SAFETY: by the type's invariant the bytes are valid and nothing else reads or writes
        // them until the request is reported; a bounced buffer is never named to the host, and
        // the reference lives only during `f`.
        let bytes = unsafe { core::slice::from_raw_parts_mut(self.ptr.as_ptr(), n) };
        f(bytes)
    }
}

/// Page-granular first-fit allocator over the bounce pool (one bit per page).
#[derive(Clone, Debug)]
pub(crate) struct PagePool {
    used: [u64; MAX_POOL_PAGES / 64],
    pages: usize,
}

impl PagePool {
    pub(crate) fn new(pages: usize) -> Self {
        Self {
            used: [0; MAX_POOL_PAGES / 64],
            pages: pages.min(MAX_POOL_PAGES),
        }
    }

    fn is_used(&self, page: usize) -> bool {
        self.used[page / 64] & (1 << (page % 64)) != 0
    }

    fn set(&mut self, first: usize, n: usize, used: bool) {
        for p in first..first + n {
            if used {
                self.used[p / 64] |= 1 << (p % 64);
            } else {
                self.used[p / 64] &= !(1 << (p % 64));
            }
        }
    }

    /// Pages in the pool.
    pub(crate) fn capacity(&self) -> usize {
        self.pages
    }

    /// Takes `n` contiguous pages; returns the first.
    pub(crate) fn alloc(&mut self, n: usize) -> Option<usize> {
        if n == 0 || n > self.pages {
            return None;
        }
        let mut run = 0;
        for p in 0..self.pages {
            if self.is_used(p) {
                run = 0;
                continue;
            }
            run += 1;
            if run == n {
                let first = p + 1 - n;
                self.set(first, n, true);
                return Some(first);
            }
        }
        None
    }

    /// Gives pages back.
    pub(crate) fn free(&mut self, first: usize, n: usize) {
        if first.checked_add(n).is_some_and(|end| end <= self.pages) {
            self.set(first, n, false);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn page_pool_first_fit() {
        let mut p = PagePool::new(70);
        assert_eq!(p.alloc(0), None);
        assert_eq!(p.alloc(71), None);
        assert_eq!(p.alloc(60), Some(0));
        assert_eq!(p.alloc(16), None);
        assert_eq!(p.alloc(10), Some(60));
        p.free(10, 20);
        assert_eq!(p.alloc(16), Some(10));
        assert_eq!(p.alloc(5), None);
        assert_eq!(p.alloc(4), Some(26));
        p.free(0, 70);
        assert_eq!(p.alloc(70), Some(0));
        p.free(65, 100);
        assert_eq!(p.alloc(1), None, "an out-of-range free is ignored");
        assert_eq!(Tag::new(3, 7).raw(), (7 << 32) | 4);
    }
}
