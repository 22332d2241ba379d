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
//! - [`request`]: EXECUTE_SRB packets, transfer splitting and the request table that maps
//!   transaction ids to requests.
//! - [`block`]: a block-device API over the small [`block::ScsiTransport`] trait, which the
//!   VMBus glue implements.
//! - `io` (feature `embedded-io`): an `embedded_io::{Read, Write, Seek}` byte-stream view.
//! - `sdmmc` (feature `embedded-sdmmc`): an `embedded_sdmmc::BlockDevice` adapter.
#![no_std]

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

#[cfg(test)]
mod fuzz;

pub use error::StorError;
