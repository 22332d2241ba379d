//! Hyper-V integration services (heartbeat, KVP, shutdown, time sync) over VMBus channels.
//!
//! This crate is reserved for the integration-services issue; it contains no code yet.
#![no_std]
