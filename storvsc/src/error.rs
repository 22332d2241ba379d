//! Typed errors for everything the host, the device or the caller can get wrong.

use core::fmt;

use crate::protocol::{NtStatus, Operation, ScsiStatus, SrbStatus, VstorVersion};
use crate::scsi::SenseData;

/// Why a storvsc operation failed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum StorError {
    /// A host packet is shorter than the protocol requires.
    ShortPacket {
        /// Bytes needed.
        needed: usize,
        /// Bytes received.
        got: usize,
    },
    /// A completion carried an operation other than COMPLETE_IO where one was required.
    UnexpectedOperation(Operation),
    /// A handshake step was answered with a failure status.
    StepFailed {
        /// The request that failed.
        operation: Operation,
        /// The host's status.
        status: NtStatus,
    },
    /// The host refused every protocol version the guest offered.
    NoCommonVersion,
    /// A completion arrived when none was expected (e.g. after the handshake finished).
    UnexpectedCompletion,
    /// The caller's output buffer is too small.
    BufferTooSmall {
        /// Bytes needed.
        needed: usize,
        /// Bytes available.
        got: usize,
    },
    /// A completion's transaction id matches no request in flight.
    UnknownTransaction(u64),
    /// Every request slot is in use.
    TableFull,
    /// The channel died (rescind, close, reset); the request will never complete.
    ChannelClosed,
    /// The host did not answer in time.
    Timeout,
    /// The VMBus channel failed otherwise (corrupt ring, refused open, full ring).
    Channel(vmbus_guest::ChannelError),
    /// The SCSI request failed.
    Srb {
        /// SRB status (with its flag bits).
        srb_status: SrbStatus,
        /// SCSI status.
        scsi_status: ScsiStatus,
        /// Decoded sense data when the host supplied valid autosense.
        sense: Option<SenseData>,
    },
    /// The request completed with a non-success NTSTATUS in the vstor packet.
    IoStatus(NtStatus),
    /// The device moved fewer bytes than the request needs.
    ShortTransfer {
        /// Bytes requested.
        expected: u32,
        /// Bytes the host reported.
        got: u32,
    },
    /// Response data from the device is malformed (too short, inconsistent lengths...).
    BadResponse(&'static str),
    /// A caller argument is invalid (buffer not a multiple of the block size, CDB too long...).
    InvalidArgument(&'static str),
    /// The range of blocks lies (partly) past the end of the device.
    OutOfRange {
        /// First block.
        lba: u64,
        /// Number of blocks.
        blocks: u64,
    },
    /// The device does not support the operation (e.g. UNMAP without LBPU).
    Unsupported,
    /// The negotiated version does not support the operation.
    VersionTooOld(VstorVersion),
    /// Retries were exhausted; the last error is attached in the log.
    RetriesExhausted,
    /// The transport failed to send (ring full, channel gone...).
    Transport,
}

impl fmt::Display for StorError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::ShortPacket { needed, got } => {
                write!(f, "host packet of {got} bytes, need {needed}")
            }
            Self::UnexpectedOperation(op) => write!(f, "unexpected vstor operation {}", op.0),
            Self::StepFailed { operation, status } => {
                write!(f, "vstor operation {} failed: {status}", operation.0)
            }
            Self::NoCommonVersion => f.write_str("host refused every VSTOR protocol version"),
            Self::UnexpectedCompletion => f.write_str("completion when none was expected"),
            Self::BufferTooSmall { needed, got } => {
                write!(f, "buffer of {got} bytes, need {needed}")
            }
            Self::UnknownTransaction(id) => write!(f, "completion for unknown transaction {id:#x}"),
            Self::TableFull => f.write_str("all request slots in use"),
            Self::ChannelClosed => f.write_str("channel closed with the request in flight"),
            Self::Timeout => f.write_str("request timed out"),
            Self::Channel(e) => write!(f, "VMBus channel: {e}"),
            Self::Srb {
                srb_status,
                scsi_status,
                sense,
            } => {
                write!(
                    f,
                    "SCSI request failed: SRB status {:#04x}, SCSI status {:#04x}",
                    srb_status.0, scsi_status.0
                )?;
                if let Some(s) = sense {
                    write!(
                        f,
                        ", sense key {:#x} ASC/ASCQ {:#04x}/{:#04x}",
                        s.key.0, s.asc, s.ascq
                    )?;
                }
                Ok(())
            }
            Self::IoStatus(s) => write!(f, "request failed with {s}"),
            Self::ShortTransfer { expected, got } => {
                write!(f, "device transferred {got} of {expected} bytes")
            }
            Self::BadResponse(what) => write!(f, "malformed device response: {what}"),
            Self::InvalidArgument(what) => write!(f, "invalid argument: {what}"),
            Self::OutOfRange { lba, blocks } => {
                write!(f, "blocks {lba}+{blocks} past the end of the device")
            }
            Self::Unsupported => f.write_str("operation not supported by the device"),
            Self::VersionTooOld(v) => write!(f, "operation needs a newer protocol than {v}"),
            Self::RetriesExhausted => f.write_str("retries exhausted"),
            Self::Transport => f.write_str("transport failure"),
        }
    }
}

impl core::error::Error for StorError {}

impl From<vmbus_guest::ChannelError> for StorError {
    /// A dead channel is [`StorError::ChannelClosed`] (requests in flight will never complete),
    /// an unanswered one [`StorError::Timeout`]; anything else keeps the channel error.
    fn from(e: vmbus_guest::ChannelError) -> Self {
        use vmbus_guest::ChannelError as C;
        match e {
            C::Rescinded | C::Closed | C::NotOpen => Self::ChannelClosed,
            C::Timeout => Self::Timeout,
            other => Self::Channel(other),
        }
    }
}
