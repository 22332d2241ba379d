//! Signalling decisions. The ring never signals by itself: it tells the channel layer whether
//! the protocol requires a signal (SignalEvent or a monitor bit, vmbus-core.md §8.1).

#![forbid(unsafe_code)]

/// Whether the peer must be signalled after a commit or a publish.
#[must_use = "the channel layer must signal the peer when the ring says so, or a wake-up is lost"]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Signal {
    /// Signal the peer: the writer made an idle, unmasked reader's ring non-empty, or the
    /// reader freed the space a blocked writer asked for.
    Needed,
    /// No signal: the peer is busy, masked, or not waiting.
    NotNeeded,
}

impl Signal {
    /// `true` for [`Signal::Needed`].
    pub fn is_needed(self) -> bool {
        self == Self::Needed
    }

    pub(crate) fn from_bool(b: bool) -> Self {
        if b { Self::Needed } else { Self::NotNeeded }
    }
}

/// The outcome of [`RingReader::finish_drain`](super::RingReader::finish_drain).
#[must_use = "a drain that found more data must continue, and a space signal must be sent"]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DrainEnd {
    /// Whether to signal the writer (space freed past its pending send size).
    pub signal: Signal,
    /// Data arrived after the last read; the reader must drain again instead of sleeping
    /// (the writer saw the mask set and did not signal).
    pub more: bool,
}
