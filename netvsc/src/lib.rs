//! Hyper-V synthetic network adapter driver (netvsc): NVSP and RNDIS over a VMBus channel
//! (`shared/protocol/devices.md` §2, §7.1).
//!
//! - [`protocol`]: NVSP and RNDIS wire structs (`zerocopy`, sizes and offsets asserted).
//! - [`rndis`]: pure parsers and builders of RNDIS messages (fuzzable:
//!   [`rndis::parse_message`]).
//!
//! `#![no_std]`, no allocator, no `unsafe`: host memory is reached only through
//! `vmbus_guest::HostBuffer`'s bounds-checked copies.
#![no_std]
#![forbid(unsafe_code)]

#[cfg(test)]
extern crate std;

pub mod protocol;
pub mod rndis;
