//! Hyper-V synthetic SCSI controller driver (storvsc): the VSTOR protocol layer.
//!
//! This crate is transport-agnostic, `#![no_std]` and allocation-free. It works on byte buffers
//! and on descriptions of data buffers, following `shared/protocol/devices.md` §3 and §7.2:
//!
//! - [`protocol`]: the wire structs (`vstor_packet`, `vmscsi_request`, payloads) and open
//!   newtypes for operations, NTSTATUS, SRB and SCSI status.
//! - [`handshake`]: the initialisation state machine (BEGIN_INITIALIZATION → version
//!   negotiation with fallback → QUERY_PROPERTIES → END_INITIALIZATION).
//! - [`scsi`]: CDB builders, response and sense parsers, error classification.
//! - [`request`]: EXECUTE_SRB packets and transfer splitting.
//! - [`block`]: a block-device API over the small [`block::ScsiTransport`] trait.
//! - [`controller`]: the VMBus glue: a [`controller::StorvscController`] on the shared bus
//!   (`&vmbus_guest::Vmbus`), owning its channels; queued and blocking I/O.
//! - [`queue`]: the types of queued I/O (tags, caller buffers, what polls and close report).
//!
//! `unsafe` appears only where the caller hands the controller memory by address (the
//! `submit*` functions and the [`queue`] module that keeps their promise); everything else is
//! safe code over `vmbus-guest`'s host-memory types.
//! - `io` (feature `embedded-io`): an `embedded_io::{Read, Write, Seek}` byte-stream view.
//! - `sdmmc` (feature `embedded-sdmmc`): an `embedded_sdmmc::BlockDevice` adapter.
#![no_std]
#![deny(unsafe_code)]

#[cfg(test)]
extern crate std;

pub mod block;
pub mod controller;
pub mod error;
pub mod handshake;
#[cfg(feature = "embedded-io")]
pub mod io;
pub mod protocol;
pub mod queue;
pub mod request;
pub mod scsi;
#[cfg(feature = "embedded-sdmmc")]
pub mod sdmmc;

pub use error::StorError;
