//! Hyper-V synthetic network adapter driver (netvsc): NVSP and RNDIS over a VMBus channel.
//!
//! This crate is reserved for the netvsc issue; it contains no code yet. The driver will be built
//! on `vmbus-guest` channels and follow the protocol facts in `shared/protocol/devices.md` §2.
#![no_std]
