//! The atomics the ring protocol runs on: `core`'s in a build, loom's under `cfg(loom)` so the
//! model tests exercise the very index, mask and pending-send-size code the guest runs.

#![forbid(unsafe_code)]

#[cfg(loom)]
pub(crate) use loom::sync::atomic::{AtomicU32, Ordering, fence};

#[cfg(not(loom))]
pub(crate) use core::sync::atomic::{AtomicU32, Ordering, fence};
