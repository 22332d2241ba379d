//! Types of the controller's queued (non-blocking) I/O: the [`Tag`] naming a submitted
//! request, the [`IoBuffer`] describing its data without borrowing it, and the fixed
//! capacities that bound the queue depth.
//!
//! A queued request is an EXECUTE_SRB sent with a completion requested; its transaction id is
//! a [`crate::request::RequestTable`] id, so completions are matched (after the channel's own
//! requestor validated the host's transaction id) to a slot of a fixed table, never to a
//! pointer taken from the host.

use core::ptr::NonNull;

use crate::StorError;
use crate::request::SrbCompletion;

/// Requests the controller tracks at once, all channels together (the fixed request table).
/// Each VMBus channel also bounds its own requests ([`vmbus_guest::requestor::MAX_REQUESTS`])
/// and its ring space; whichever is exhausted first is reported to the submitter.
pub const QUEUE_DEPTH: usize = 128;
/// Channels per controller: the primary and up to `MAX_CHANNELS - 1` sub-channels.
pub const MAX_CHANNELS: usize = 8;
/// Pages of the per-request bounce buffer used when a queued request's buffer is not
/// host-visible (allocated from the HAL on first use of a slot, kept until close).
pub const SLOT_BOUNCE_PAGES: usize = 16;
/// Bytes of the per-request bounce buffer.
pub const SLOT_BOUNCE_BYTES: usize = SLOT_BOUNCE_PAGES * vmbus_guest::HV_PAGE_SIZE;

/// Names one queued request until its completion is reported by
/// [`crate::controller::StorvscController::poll`]. Unique among requests in flight; a tag is
/// never reused while its request is in flight (slot index plus generation).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Tag(pub(crate) u64);

impl Tag {
    /// The raw value (the request-table id, also the cookie carried with the VMBus request).
    pub fn raw(self) -> u64 {
        self.0
    }
}

/// How a queued request ended: the decoded SRB completion (check it with
/// [`SrbCompletion::check`] or [`SrbCompletion::error`]), or a transport error —
/// [`StorError::ChannelClosed`] when the channel was rescinded or closed with the request in
/// flight.
pub type IoResult = Result<SrbCompletion, StorError>;

/// The data buffer of a queued request, described by address and length so no Rust borrow
/// outlives the submission (the host accesses the memory until the completion is reported).
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

    pub(crate) fn ptr(&self) -> Option<NonNull<u8>> {
        match *self {
            Self::None => None,
            Self::FromDevice { ptr, .. } | Self::ToDevice { ptr, .. } => Some(ptr),
        }
    }
}

/// Where a request's data goes on the wire.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Staging {
    /// No data, or GPA-direct on the caller's memory.
    Direct,
    /// Through this slot's bounce buffer (caller memory not host-visible).
    SlotBounce,
    /// Through the controller's large bounce buffer (blocking requests only).
    BigBounce,
}

/// Who waits for a request.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Owner {
    /// A queued request: reported through `poll`.
    Queued,
    /// A blocking `execute` that waits for this slot.
    Blocking,
    /// A blocking request that timed out: dropped when it ends.
    Abandoned,
}

/// One request in flight.
#[derive(Debug)]
pub(crate) struct Slot {
    /// Index of the channel the request went to.
    pub channel: usize,
    /// The channel's request id (set once sent).
    pub request: Option<vmbus_guest::RequestId>,
    /// The caller's data.
    pub data: IoBuffer,
    /// How the data is staged.
    pub staging: Staging,
    /// Who waits.
    pub owner: Owner,
    /// The result once the request ended (`None` while in flight).
    pub result: Option<IoResult>,
}
