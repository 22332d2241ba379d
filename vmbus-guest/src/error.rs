//! Typed errors of the connection ([`VmbusError`]), of channels ([`ChannelError`]) and the
//! host protocol violations the connection detects and survives ([`ProtocolViolation`]).

#![forbid(unsafe_code)]

use crate::hal::HalError;
use crate::protocol::{MessageType, ParseError};
use crate::ring::{Corrupt, WriteError};
use core::fmt;
use winhv::{HvError, HypercallError, SynicError};

/// Why a connection-level operation (contact, offers, GPADL, unload) failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum VmbusError {
    /// HvCallPostMessage failed with a non-transient status, or transient retries ran out.
    Post(HypercallError),
    /// HvCallSignalEvent failed.
    Signal(HvError),
    /// Reading the SynIC failed.
    Synic(SynicError),
    /// The platform could not provide or translate memory.
    Hal(HalError),
    /// The host did not answer in time (the caller's [`crate::Wait`] gave up).
    Timeout,
    /// The host refused every candidate version.
    NoCompatibleVersion,
    /// The host accepted the version but reported a failed connection state (@9).
    ConnectionFailed {
        /// Connection state: 1 low resources, 2 unknown.
        state: u8,
    },
    /// The host returned an unusable message connection id (0 or wider than 24 bits).
    BadConnectionId(u32),
    /// The operation needs a different connection state (not connected, already connected,
    /// or an unload in progress).
    WrongState,
    /// No live offer has this relid.
    UnknownChannel(u32),
    /// The channel was rescinded by the host.
    Rescinded(u32),
    /// A fixed-capacity table (offers, GPADLs) is full.
    TableFull,
    /// A buffer cannot be described by one GPADL (empty, or range_buflen overflows u16).
    GpadlTooLarge,
    /// GPADL_CREATED reported a failure status.
    GpadlFailed {
        /// The handle.
        handle: u32,
        /// The host's status.
        status: u32,
    },
    /// No GPADL with this handle exists on the connection.
    UnknownGpadl(u32),
    /// No live offer of the requested class (and instance) is free to open.
    NoSuchDevice,
    /// OPENCHANNEL_RESULT reported this failure status.
    OpenFailed(u32),
    /// The connection was unloaded or reset while the operation was pending.
    Disconnected,
}

impl fmt::Display for VmbusError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Post(e) => write!(f, "posting a VMBus message failed: {e}"),
            Self::Signal(e) => write!(f, "signalling the host failed: {e}"),
            Self::Synic(e) => write!(f, "SynIC: {e}"),
            Self::Hal(e) => write!(f, "platform memory: {e}"),
            Self::Timeout => f.write_str("the VMBus host did not answer in time"),
            Self::NoCompatibleVersion => f.write_str("the host refused every VMBus version"),
            Self::ConnectionFailed { state } => {
                write!(f, "the host refused the connection (state {state})")
            }
            Self::BadConnectionId(id) => write!(f, "host returned connection id {id:#x}"),
            Self::WrongState => f.write_str("operation not valid in the connection's state"),
            Self::UnknownChannel(r) => write!(f, "no channel with relid {r}"),
            Self::Rescinded(r) => write!(f, "channel {r} was rescinded"),
            Self::TableFull => f.write_str("a fixed-capacity VMBus table is full"),
            Self::GpadlTooLarge => f.write_str("buffer cannot be described by one GPADL"),
            Self::GpadlFailed { handle, status } => {
                write!(f, "GPADL {handle:#x} creation failed, status {status:#x}")
            }
            Self::UnknownGpadl(h) => write!(f, "no GPADL with handle {h:#x}"),
            Self::NoSuchDevice => f.write_str("no free offer of that device class"),
            Self::OpenFailed(s) => write!(f, "the host refused to open the channel ({s:#x})"),
            Self::Disconnected => f.write_str("the VMBus connection was unloaded"),
        }
    }
}

impl core::error::Error for VmbusError {}

impl From<HalError> for VmbusError {
    fn from(e: HalError) -> Self {
        Self::Hal(e)
    }
}

impl From<crate::wait::TimedOut> for VmbusError {
    fn from(_: crate::wait::TimedOut) -> Self {
        Self::Timeout
    }
}

/// Something the host sent that breaks the protocol. The connection drops the message,
/// counts it and keeps working; none of these is fatal.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ProtocolViolation {
    /// The message could not be parsed (too short, too long, no header).
    Malformed(ParseError),
    /// An offer with relid 0 or ≥ 2048.
    BadRelid(u32),
    /// An offer for a relid that is already in use.
    DuplicateRelid(u32),
    /// A second primary offer (sub-channel index 0) for a device already offered.
    DuplicateDevice(u32),
    /// A sub-channel offer whose primary is unknown (kept as a standalone channel).
    OrphanSubchannel(u32),
    /// The offer table is full; the offer was dropped.
    OfferTableFull(u32),
    /// A message naming a relid with no live offer.
    UnknownRelid {
        /// The message type.
        message_type: MessageType,
        /// The relid it named.
        relid: u32,
    },
    /// OPENCHANNEL_RESULT for a channel with no open in progress (or a wrong open id).
    UnexpectedOpenResult(u32),
    /// GPADL_CREATED or GPADL_TORNDOWN for a handle the guest has not got in that state.
    UnknownGpadl(u32),
    /// A message that is not valid in the connection's current state (for example a
    /// VERSION_RESPONSE while connected, or ALLOFFERS_DELIVERED twice).
    Unexpected(MessageType),
    /// A completion whose transaction id matches no request in flight.
    UnknownTransaction(u64),
}

impl fmt::Display for ProtocolViolation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Malformed(e) => write!(f, "malformed message: {e}"),
            Self::BadRelid(r) => write!(f, "offer with invalid relid {r}"),
            Self::DuplicateRelid(r) => write!(f, "offer for relid {r} already in use"),
            Self::DuplicateDevice(r) => write!(f, "duplicate primary offer (relid {r})"),
            Self::OrphanSubchannel(r) => write!(f, "sub-channel {r} without a primary"),
            Self::OfferTableFull(r) => write!(f, "offer table full, dropped relid {r}"),
            Self::UnknownRelid {
                message_type,
                relid,
            } => write!(f, "{message_type} for unknown relid {relid}"),
            Self::UnexpectedOpenResult(r) => write!(f, "unexpected OPENCHANNEL_RESULT for {r}"),
            Self::UnknownGpadl(h) => write!(f, "GPADL message for unknown handle {h:#x}"),
            Self::Unexpected(t) => write!(f, "unexpected {t}"),
            Self::UnknownTransaction(t) => write!(f, "completion for unknown transaction {t:#x}"),
        }
    }
}

impl core::error::Error for ProtocolViolation {}

/// Why a channel operation failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ChannelError {
    /// The connection failed (post, GPADL, platform memory, ...).
    Vmbus(VmbusError),
    /// The host rescinded the channel; every request in flight completes with this.
    Rescinded,
    /// The channel was closed (or the connection unloaded) with the request in flight.
    Closed,
    /// OPENCHANNEL_RESULT reported a failure status.
    OpenFailed(u32),
    /// The host corrupted the ring; the channel is unusable and must be closed.
    Corrupt(Corrupt),
    /// The outbound ring has no room now; retry after the host drains it.
    Full,
    /// The packet can never fit the ring or is malformed.
    InvalidPacket(WriteError),
    /// Every request slot is in use.
    TooManyRequests,
    /// The request id is not (or no longer) in flight on this channel.
    UnknownRequest,
    /// A caller buffer is too small for the packet or completion; nothing was consumed.
    BufferTooSmall {
        /// Bytes needed.
        needed: usize,
    },
    /// The host did not answer in time.
    Timeout,
    /// The channel is not open.
    NotOpen,
    /// A ring size or buffer the caller passed is not usable.
    InvalidArgument(&'static str),
}

impl fmt::Display for ChannelError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Vmbus(e) => e.fmt(f),
            Self::Rescinded => f.write_str("the channel was rescinded by the host"),
            Self::Closed => f.write_str("the channel was closed with the request in flight"),
            Self::OpenFailed(s) => write!(f, "the host refused to open the channel ({s:#x})"),
            Self::Corrupt(c) => write!(f, "ring corrupted by the host: {c}"),
            Self::Full => f.write_str("outbound ring full"),
            Self::InvalidPacket(e) => write!(f, "packet cannot be sent: {e}"),
            Self::TooManyRequests => f.write_str("no free request slot"),
            Self::UnknownRequest => f.write_str("no such request in flight"),
            Self::BufferTooSmall { needed } => write!(f, "buffer too small, need {needed}"),
            Self::Timeout => f.write_str("the host did not answer in time"),
            Self::NotOpen => f.write_str("the channel is not open"),
            Self::InvalidArgument(why) => write!(f, "invalid argument: {why}"),
        }
    }
}

impl core::error::Error for ChannelError {}

impl From<VmbusError> for ChannelError {
    fn from(e: VmbusError) -> Self {
        match e {
            VmbusError::Timeout => Self::Timeout,
            VmbusError::Rescinded(_) => Self::Rescinded,
            VmbusError::Disconnected => Self::Closed,
            VmbusError::OpenFailed(s) => Self::OpenFailed(s),
            other => Self::Vmbus(other),
        }
    }
}

impl From<HalError> for ChannelError {
    fn from(e: HalError) -> Self {
        Self::Vmbus(VmbusError::Hal(e))
    }
}

impl From<crate::wait::TimedOut> for ChannelError {
    fn from(_: crate::wait::TimedOut) -> Self {
        Self::Timeout
    }
}

impl From<Corrupt> for ChannelError {
    fn from(e: Corrupt) -> Self {
        Self::Corrupt(e)
    }
}
