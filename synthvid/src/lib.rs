//! Hyper-V synthetic video driver (synthvid): framebuffer location, resolution and dirty
//! rectangles over a VMBus channel.
//!
//! This crate is reserved for the synthetic video issue; it contains no code yet.
#![no_std]
