//! Hyper-V synthetic input drivers: the HID mouse and the synthetic keyboard over VMBus channels.
//!
//! This crate is reserved for the synthetic input issue; it contains no code yet.
#![no_std]
