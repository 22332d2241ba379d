//! The guest side of Hyper-V's VMBus: the connection to the host's channel manager, channels,
//! GPADLs and the ring buffers every synthetic device speaks over.
//!
//! `#![no_std]` and allocation-free: memory the host must see comes from the [`Hal`] the
//! operating system implements.
#![no_std]
// The loom model tests (`--cfg loom`) build only the ring protocol and what it needs: the
// channel layer runs on OS-mapped ring memory, which has no loom model.

#[cfg(not(loom))]
pub mod bitmap;
#[cfg(not(loom))]
pub mod channel;
#[cfg(not(loom))]
pub mod connection;
#[cfg(not(loom))]
pub mod error;
#[cfg(not(loom))]
pub mod gpadl;
pub mod hal;
#[cfg(not(loom))]
pub mod offers;
pub mod protocol;
#[cfg(not(loom))]
pub mod requestor;
pub mod ring;
#[cfg(test)]
mod test_util;
#[cfg(not(loom))]
pub mod transport;
#[cfg(not(loom))]
pub mod wait;

#[cfg(not(loom))]
pub use bitmap::ChannelBitmap;
#[cfg(not(loom))]
pub use channel::{Channel, ChannelConfig, PendingOpen, Received};
#[cfg(not(loom))]
pub use connection::{
    Connection, ConnectionConfig, ConnectionState, Event, GpadlBuffer, Negotiated, Stats,
};
#[cfg(not(loom))]
pub use error::{ChannelError, ProtocolViolation, VmbusError};
pub use hal::{HV_PAGE_SIZE, Hal, HalError, PhysAddr};
#[cfg(not(loom))]
pub use offers::{OfferInfo, OfferTable};
#[cfg(not(loom))]
pub use requestor::{RequestId, RequestMode, RequestStatus};
#[cfg(not(loom))]
pub use transport::{RawMessage, SynicTransport, Transport, take_channel_events};
#[cfg(not(loom))]
pub use wait::{BoundedWait, DeadlineWait, TimedOut, Wait};
