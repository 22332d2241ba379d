//! Typed errors for everything the host can get wrong.

use core::fmt;

use crate::protocol::{IcMsgType, KvpOperation, KvpPool};

/// Why an IC message could not be handled as the host asked.
///
/// Errors returned from [`crate::IcService::handle`] mean "send nothing" (Linux drops such
/// packets too). Errors carried in [`crate::IcEvent::Rejected`] were answered with a failure
/// status.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum IcError {
    /// The packet is shorter than the 28-byte pipe + IC header.
    TruncatedHeader {
        /// Bytes received.
        len: usize,
    },
    /// The payload is shorter than the message type needs.
    TruncatedPayload {
        /// Message type.
        msg_type: IcMsgType,
        /// Bytes needed after the header.
        needed: usize,
        /// Bytes present after the header.
        got: usize,
    },
    /// The caller's response buffer cannot hold the response.
    ResponseBufferTooSmall {
        /// Bytes needed.
        needed: usize,
        /// Bytes available.
        got: usize,
    },
    /// NEGOTIATE offered more versions than the protocol allows or than the packet holds.
    BadNegotiateCounts {
        /// Framework versions claimed.
        framework: u16,
        /// Service versions claimed.
        service: u16,
    },
    /// No framework or service version in common with the host.
    NoCommonVersion,
    /// A message type this service does not implement.
    UnsupportedMessageType(IcMsgType),
    /// Shutdown flags other than power off, restart or hibernate (with or without force).
    InvalidShutdownFlags(u32),
    /// Time sample before the Unix epoch (or reference arithmetic overflowed).
    TimeOutOfRange,
    /// A v4 sample whose reference time lies in the guest's future.
    TimeSampleFromFuture {
        /// Reference time in the sample.
        sample: u64,
        /// Reference time now.
        now: u64,
    },
    /// A sample (or the last one kept) older than the staleness limit.
    StaleTimeSample {
        /// Age in 100 ns units.
        age: u64,
    },
    /// No time sample has been received yet.
    NoTimeSample,
    /// A KVP operation number outside GET..=SET_IP_INFO.
    UnknownKvpOperation(KvpOperation),
    /// A KVP pool number outside 0..=3 on the wire.
    InvalidPool(KvpPool),
    /// A KVP operation not allowed on this pool (e.g. host SET into the guest's AUTO pool).
    PoolNotWritable(KvpPool),
    /// A UTF-16 size that is odd, zero, or larger than its field.
    BadStringSize {
        /// Size claimed by the host.
        size: u32,
        /// Field capacity in bytes.
        max: usize,
    },
    /// A UTF-16 string with no NUL within its size and field.
    UnterminatedString,
    /// A string (from the OS or the host) that does not fit its field with the NUL.
    StringTooLong,
    /// A KVP value whose size does not match its integer type, or an unknown value type.
    BadValue {
        /// Value type.
        value_type: u32,
        /// Value size.
        size: u32,
    },
    /// A fixed-capacity KVP pool is full.
    PoolFull(KvpPool),
    /// The key is not in the pool.
    KeyNotFound,
    /// Enumeration index past the end of the pool.
    NoMoreItems,
    /// No adapter with the adapter id the host asked for.
    AdapterNotFound,
    /// The policy (callback) refused the request.
    Refused,
}

impl fmt::Display for IcError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::TruncatedHeader { len } => write!(
                f,
                "IC packet of {len} bytes is shorter than the 28-byte header"
            ),
            Self::TruncatedPayload {
                msg_type,
                needed,
                got,
            } => write!(
                f,
                "IC message type {} needs {needed} payload bytes, got {got}",
                msg_type.0
            ),
            Self::ResponseBufferTooSmall { needed, got } => {
                write!(f, "response buffer of {got} bytes, {needed} needed")
            }
            Self::BadNegotiateCounts { framework, service } => write!(
                f,
                "negotiate offers {framework} framework and {service} service versions (bad count)"
            ),
            Self::NoCommonVersion => f.write_str("no IC version in common with the host"),
            Self::UnsupportedMessageType(t) => write!(f, "unsupported IC message type {}", t.0),
            Self::InvalidShutdownFlags(x) => write!(f, "invalid shutdown flags {x:#x}"),
            Self::TimeOutOfRange => f.write_str("time sample out of range"),
            Self::TimeSampleFromFuture { sample, now } => write!(
                f,
                "time sample reference time {sample} is after the current reference time {now}"
            ),
            Self::StaleTimeSample { age } => write!(f, "time sample is {age} x 100 ns old"),
            Self::NoTimeSample => f.write_str("no time sample received yet"),
            Self::UnknownKvpOperation(op) => write!(f, "unknown KVP operation {}", op.0),
            Self::InvalidPool(p) => write!(f, "invalid KVP pool {}", p.0),
            Self::PoolNotWritable(p) => write!(f, "KVP pool {} is not writable by the host", p.0),
            Self::BadStringSize { size, max } => {
                write!(f, "UTF-16 size {size} invalid for a {max}-byte field")
            }
            Self::UnterminatedString => f.write_str("UTF-16 string not NUL-terminated"),
            Self::StringTooLong => f.write_str("string does not fit its field"),
            Self::BadValue { value_type, size } => {
                write!(
                    f,
                    "KVP value of type {value_type} with size {size} is invalid"
                )
            }
            Self::PoolFull(p) => write!(f, "KVP pool {} is full", p.0),
            Self::KeyNotFound => f.write_str("KVP key not found"),
            Self::NoMoreItems => f.write_str("KVP enumeration index past the end"),
            Self::AdapterNotFound => f.write_str("no adapter with that id"),
            Self::Refused => f.write_str("request refused by policy"),
        }
    }
}

impl core::error::Error for IcError {}
