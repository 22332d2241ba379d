//! Hyper-V synthetic network adapter driver (netvsc): NVSP and RNDIS over a VMBus channel
//! (`shared/protocol/devices.md` §2, §7.1).
//!
//! - [`protocol`]: NVSP and RNDIS wire structs (`zerocopy`, sizes and offsets asserted).
//! - [`rndis`]: pure parsers and builders of RNDIS messages (fuzzable:
//!   [`rndis::parse_message`]).
//! - [`rss`]: the Toeplitz hash, flow tuples, RSS capability / send-table parsers (fuzzable:
//!   [`rss::parse_rss_capabilities`], [`rss::parse_send_indirection_table`]) and the send
//!   table the queues share.
//! - [`nic`]: the driver: [`Nic::open`] negotiates NVSP (6.1 down to 1), registers the
//!   receive and send buffers through GPADLs, initialises RNDIS (MAC, MTU, link, packet
//!   filter); [`Nic::poll`] receives frames and reaps completions, [`Nic::send_frame`] sends
//!   one frame and [`Nic::send_batch`] a burst (frames packed into shared send
//!   sections, one packet and one completion per section). It negotiates checksum and LSO v2
//!   offloads at open; [`Nic::send_frame_checksum`] and the other `_checksum` variants
//!   leave TCP/UDP checksums to the host, [`Nic::send_lso`] hands it a large TCP segment to
//!   cut (LSO v2), [`Nic::poll_with_checksum`] reports the host's receive verdict per frame.
//! - [`offload`]: checksum and LSO v2 offloads — the host's capabilities
//!   ([`offload::parse_offload`]), the negotiation, frame helpers ([`offload::l4_of`]) and
//!   the receive checksum verdict ([`offload::rx_checksum_of`]); the reassembly of frames the
//!   host coalesced (RSC, [`offload::rsc`], used by a NIC opened with [`Nic::open_with_rsc`]);
//!   all pure and fuzzable.
//! - multi-queue (vRSS): [`Nic::open_queues`] asks the host for sub-channels and sets RSS;
//!   [`Nic::split`] hands out one [`nic::Queue`] per channel — each owns its channel, its
//!   send sections and its receive completions, so each VP drives its own without a lock;
//!   [`Nic::send_steered`] sends where the host's send table says.
//!
//! - `phy` (feature `smoltcp`): a `smoltcp::phy::Device` over a NIC.
//!
//! `#![no_std]`, no allocator, no `unsafe`: host memory is reached only through
//! `vmbus_guest::HostBuffer`'s bounds-checked copies.
#![no_std]
#![forbid(unsafe_code)]

#[cfg(test)]
extern crate std;

pub mod nic;
pub mod offload;
#[cfg(feature = "smoltcp")]
pub mod phy;
pub mod protocol;
pub mod rndis;
pub mod rss;

pub use nic::{Busy, Ctx, NetError, Nic, NicConfig, NicInfo, NicStats, RxInfo, VfState};
