//! Host side for testing the guest stack on a development machine: a mock hypervisor and
//! VMBus host that behave like Hyper-V, device models, the demo and benchmarks.

pub mod demo;
pub mod disk_image;
pub mod guest;
pub mod guest_ics;
pub mod guest_net;
pub mod hv;
pub mod ic;
pub mod input;
pub mod network;
pub mod real_peers;
pub mod storage;
pub mod video;
pub mod vmbus;

/// The README's code blocks, compiled as doc tests so they stay true to the API.
#[cfg(doctest)]
#[doc = include_str!("../../README.md")]
pub struct ReadmeDoctests;
