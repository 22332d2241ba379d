//! Errors of the synthetic input drivers.

#![forbid(unsafe_code)]

use core::fmt;

use vmbus_guest::ChannelError;

use crate::protocol::ParseError;
use crate::report::ReportError;

/// Why a synthetic mouse or keyboard operation failed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Error {
    /// The channel failed (timeout, rescind, ring full, corruption, no such device, ...).
    Channel(ChannelError),
    /// The host did not approve the protocol version.
    VersionRejected,
    /// A host message needed for the handshake did not parse.
    Parse(ParseError),
    /// The mouse's report descriptor has no usable pointer layout.
    Descriptor(ReportError),
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Channel(e) => write!(f, "input channel: {e}"),
            Self::VersionRejected => f.write_str("the host rejected the protocol version"),
            Self::Parse(e) => write!(f, "input message: {e}"),
            Self::Descriptor(e) => write!(f, "mouse report descriptor: {e}"),
        }
    }
}

impl core::error::Error for Error {}

impl From<ChannelError> for Error {
    fn from(e: ChannelError) -> Self {
        Self::Channel(e)
    }
}

/// Counters shared by both drivers.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Stats {
    /// Events delivered.
    pub events: u64,
    /// Host messages that did not parse (logged and dropped).
    pub malformed: u64,
    /// Host messages of a type or at a time the driver does not expect (dropped).
    pub unexpected: u64,
}
