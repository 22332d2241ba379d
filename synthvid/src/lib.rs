//! Hyper-V synthetic video driver (synthvid, devices §4 and §7.3): version negotiation by the
//! connection's VMBus version, VRAM placed in a kernel-supplied MMIO window and announced with
//! VRAM_LOCATION, the mode (SITUATION_UPDATE, the 3.5 resolution list), the host-drawn
//! pointer, and damage tracking sent as DIRT messages.
//!
//! `#![no_std]`, no allocator. All VRAM access is in one audited module ([`vram`]); the rest
//! is `forbid(unsafe_code)`. With the `embedded-graphics` feature, [`Framebuffer`] is an
//! `embedded_graphics_core::draw_target::DrawTarget<Color = Rgb888>`.
//!
//! ```ignore
//! // SAFETY: the range is the VMBus device's MMIO window, reserved for the VRAM.
//! let window = unsafe { VramWindow::new(0xF800_0000, 8 << 20) };
//! let mut video = Synthvid::<_, _>::open(&bus, window, &Config::default(), &mut waiter)?;
//! video.framebuffer().fill(Rect::new(10, 10, 100, 50), 0x00_20_80_FF);
//! video.poll()?;   // FEATURE_CHANGE and friends
//! video.flush()?;  // DIRT
//! ```
#![no_std]
#![deny(unsafe_code)]

mod device;
pub mod dirty;
mod error;
pub mod framebuffer;
pub mod protocol;
#[allow(unsafe_code)] // the one module that touches the VRAM
pub mod vram;

pub use device::{
    Config, DEFAULT_DIRTY_RECTS, FALLBACK_MODE, MAX_RESOLUTIONS, POLL_BUDGET, PointerShape,
    RX_BUFFER, Resolution, Stats, Synthvid, WIN7_MAX, candidate_versions,
};
pub use dirty::{DirtyRects, Rect};
pub use error::Error;
pub use framebuffer::{Framebuffer, Mode};
pub use protocol::{FeatureChange, SynthvidVersion, parse_host_message};
pub use vram::{Vram, VramWindow};
