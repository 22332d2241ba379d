//! Errors of the synthetic video driver.

#![forbid(unsafe_code)]

use core::fmt;

use vmbus_guest::{ChannelError, HalError};

use crate::protocol::ParseError;

/// Why a synthetic video operation failed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Error {
    /// The channel failed (timeout, rescind, ring full, corruption, no such device, ...).
    Channel(ChannelError),
    /// The offer asks for no MMIO space (`mmio_megabytes` = 0): nowhere to put the VRAM.
    NoVram,
    /// The kernel's VRAM window is smaller than the offer's `mmio_megabytes`.
    VramWindowTooSmall {
        /// Bytes the offer asks for.
        needed: usize,
        /// Bytes of the window.
        have: usize,
    },
    /// Mapping the VRAM failed.
    Map(HalError),
    /// The host rejected every candidate version.
    VersionRejected,
    /// The host answered something the protocol does not allow.
    Protocol(&'static str),
    /// A host message did not parse.
    Parse(ParseError),
    /// The resolution is not supported (not in the host's list, or too large for the VRAM
    /// or the version).
    UnsupportedMode {
        /// Width asked for.
        width: u32,
        /// Height asked for.
        height: u32,
    },
    /// A pointer shape larger than 96 × 96, empty, with the hot spot outside, or whose data
    /// length is not width × height × 4.
    BadPointerShape,
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Channel(e) => write!(f, "synthvid channel: {e}"),
            Self::NoVram => f.write_str("the video offer asks for no MMIO space"),
            Self::VramWindowTooSmall { needed, have } => {
                write!(f, "VRAM window of {have} bytes, the host wants {needed}")
            }
            Self::Map(e) => write!(f, "cannot map the VRAM: {e}"),
            Self::VersionRejected => f.write_str("the host rejected every synthvid version"),
            Self::Protocol(why) => write!(f, "synthvid protocol violation: {why}"),
            Self::Parse(e) => write!(f, "synthvid message: {e}"),
            Self::UnsupportedMode { width, height } => {
                write!(f, "resolution {width}x{height} is not supported")
            }
            Self::BadPointerShape => f.write_str("pointer shape out of limits"),
        }
    }
}

impl core::error::Error for Error {}

impl From<ChannelError> for Error {
    fn from(e: ChannelError) -> Self {
        Self::Channel(e)
    }
}

impl From<ParseError> for Error {
    fn from(e: ParseError) -> Self {
        Self::Parse(e)
    }
}
