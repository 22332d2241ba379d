//! The guest side of Hyper-V's VMBus: the connection to the host's channel manager, channels,
//! GPADLs and the ring buffers every synthetic device speaks over.
//!
//! `#![no_std]` and allocation-free: memory the host must see comes from the [`Hal`] the
//! operating system implements.
#![no_std]

pub mod bitmap;
pub mod channel;
pub mod connection;
pub mod error;
pub mod gpadl;
pub mod hal;
pub mod offers;
pub mod protocol;
pub mod requestor;
pub mod ring;
#[cfg(test)]
mod test_util;
pub mod transport;
pub mod wait;

pub use bitmap::ChannelBitmap;
pub use channel::{Channel, ChannelConfig, PendingOpen, Received};
pub use connection::{
    Connection, ConnectionConfig, ConnectionState, Event, GpadlBuffer, Negotiated, Stats,
};
pub use error::{ChannelError, ProtocolViolation, VmbusError};
pub use hal::{HV_PAGE_SIZE, Hal, HalError, PhysAddr};
pub use offers::{OfferInfo, OfferTable};
pub use requestor::{RequestId, RequestMode, RequestStatus};
pub use transport::{RawMessage, SynicTransport, Transport};
pub use wait::{BoundedWait, DeadlineWait, TimedOut, Wait};
