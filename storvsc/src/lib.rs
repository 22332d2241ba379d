//! Hyper-V synthetic SCSI controller driver (storvsc): the VSTOR protocol over a VMBus channel.
//!
//! This crate is reserved for the storvsc issue; it contains no code yet. The driver will be built
//! on `vmbus-guest` channels and follow the protocol facts in `shared/protocol/devices.md` §3.
#![no_std]
