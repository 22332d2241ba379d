//! The guest side of Hyper-V's VMBus: the connection to the host's channel manager shared by
//! every driver ([`Vmbus`]), channels ([`Channel`]), GPADLs and host-visible buffers
//! ([`HostBuffer`], [`Dma`]), and the ring buffers every synthetic device speaks over.
//!
//! `#![no_std]` and allocation-free: memory the host must see comes from the [`Hal`] the
//! operating system implements. All access to that memory goes through one audited module;
//! every other module is `#![forbid(unsafe_code)]`.
//!
//! # Interrupt context
//!
//! [`Vmbus::handle_interrupt`] is the VMBus interrupt entry point (atomics only). Channel data
//! path calls ([`Channel::send`], [`Channel::request`], [`Channel::recv`],
//! [`Channel::end_batch`], ...) take no lock. Everything that opens, closes, negotiates or waits
//! takes the bus's control lock and must run in thread context.
//!
//! # Batching
//!
//! Both directions of a channel work in batches, as vmbus-core §7.8–7.9 allow: a receive
//! batch ([`Channel::recv`] ... [`Channel::end_batch`], or [`Channel::yield_batch`] when a
//! budget runs out) keeps the host's interrupts masked and publishes the read index once; a
//! send batch ([`Channel::begin_send_batch`] ... [`Channel::end_send_batch`]) publishes its
//! packets with one write-index store and signals the host at most once.
#![no_std]
#![deny(unsafe_code)]
// The loom model tests (`--cfg loom`) build only the ring protocol and what it needs: the
// channel layer runs on OS-mapped ring memory, which has no loom model.

#[cfg(not(loom))]
pub mod bitmap;
#[cfg(not(loom))]
pub mod bus;
#[cfg(not(loom))]
pub mod channel;
#[cfg(not(loom))]
pub mod error;
#[cfg(not(loom))]
pub mod gpadl;
#[allow(unsafe_code)] // declares the unsafe `Hal` trait the platform implements
pub mod hal;
#[cfg(not(loom))]
pub mod host_buffer;
#[cfg(not(loom))]
pub mod offers;
pub mod protocol;
#[cfg(not(loom))]
pub mod requestor;
pub mod ring;
#[cfg(not(loom))]
#[allow(unsafe_code)] // the one module that touches host-visible memory
mod shared;
#[cfg(test)]
#[allow(unsafe_code)]
mod test_util;
#[cfg(not(loom))]
pub mod transport;
#[cfg(not(loom))]
pub mod wait;

#[cfg(not(loom))]
pub use bitmap::ChannelBitmap;
#[cfg(not(loom))]
pub use bus::{
    ConnectionConfig, ConnectionState, Event, MAX_LEAKED_MONITOR_SETS, Negotiated, Released, Stats,
    Vmbus, Work,
};
#[cfg(not(loom))]
pub use channel::{Channel, ChannelConfig, ChannelStats, Received};
#[cfg(not(loom))]
pub use error::{ChannelError, ProtocolViolation, VmbusError};
pub use hal::{HV_PAGE_SIZE, Hal, HalError, PhysAddr};
#[cfg(not(loom))]
pub use host_buffer::{Dma, HostBuffer};
#[cfg(not(loom))]
pub use offers::{OfferInfo, OfferTable};
#[cfg(not(loom))]
pub use requestor::{RequestId, RequestTable};
#[cfg(not(loom))]
pub use shared::OutOfBounds;
#[cfg(not(loom))]
pub use transport::{RawMessage, SynicTransport, Transport, take_channel_events};
#[cfg(not(loom))]
pub use wait::{BoundedWait, DeadlineWait, TimedOut, Wait};
