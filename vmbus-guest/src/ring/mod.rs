//! VMBus ring buffers (vmbus-core.md §7): one direction is a control page plus a data area;
//! a channel has an outbound ring the guest writes and an inbound ring the guest reads.
//!
//! [`RingWriter`] and [`RingReader`] are the two ends of one direction and serve either side:
//! the guest writes its outbound ring and reads its inbound ring; a host (the mock VMBus host
//! in `test-harness`) reads the guest's outbound ring and writes its inbound ring. Both work
//! over any [`RingMemory`]. Neither signals the peer: batched commits and publishes return a
//! [`Signal`] and the channel layer signals.
//!
//! Everything read from shared memory (indices, descriptors, headers, ranges) is read once and
//! validated; violations are [`Corrupt`] errors.

#![forbid(unsafe_code)]

pub(crate) mod control;
mod error;
mod index;
mod memory;
mod packet;
pub mod protocol;
mod reader;
mod signal;
mod sync;
mod writer;

pub use control::{ControlPage, ControlSnapshot};
pub use error::{Corrupt, ReadError, WriteError};
#[cfg(not(loom))]
pub use memory::{FlatRingMemory, RawRingMemory};
pub use memory::{LayoutError, MAX_DATA_SIZE, MIN_DATA_SIZE, RingMemory};
pub use packet::{
    GpaDirect, GpaRange, GpaRangeView, IncomingPacket, OutgoingPacket, PacketKind, TransferPages,
};
pub use protocol::{PacketDescriptor, PacketType, TransferPageRange};
pub use reader::RingReader;
pub use signal::{DrainEnd, Signal};
pub use writer::RingWriter;
