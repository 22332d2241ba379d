//! Hyper-V synthetic input drivers (devices §5, §7.4, §7.5): the HID mouse — report
//! descriptor parsed for absolute X/Y, buttons and wheel, positions scaled to the screen — and
//! the keyboard — set-1 keystrokes with E0/E1/break flags, LED indicators.
//!
//! `#![no_std]`, no allocator, no `unsafe`. With the `pc-keyboard` feature,
//! [`keys::Set1Decoder`] turns keystrokes into characters.
//!
//! After negotiation the mouse sends nothing and the keyboard only SET_LED_INDICATORS: the
//! host treats anything else as fatal.
#![no_std]
#![forbid(unsafe_code)]

mod error;
pub mod keyboard;
pub mod keys;
pub mod mouse;
pub mod protocol;
pub mod report;

pub use error::{Error, Stats};
pub use keyboard::Keyboard;
pub use keys::{KeyEvent, KeyFlags, Leds, Set1Bytes};
pub use mouse::{Buttons, Mouse, MouseEvent, MouseInfo};
pub use report::{MouseLayout, RawPointer, ReportError, parse_descriptor};
