//! The guest side of Hyper-V's VMBus: the connection to the host's channel manager, channels,
//! GPADLs and the ring buffers every synthetic device speaks over.
//!
//! `#![no_std]` and allocation-free: memory the host must see comes from the [`Hal`] the
//! operating system implements.
#![no_std]

pub mod hal;
pub mod protocol;
pub mod ring;

pub use hal::{HV_PAGE_SIZE, Hal, HalError, PhysAddr};
