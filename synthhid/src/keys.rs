//! Keyboard events, their set-1 byte form, LED flags and (feature `pc-keyboard`) a decoder
//! to characters.

#![forbid(unsafe_code)]

bitflags::bitflags! {
    /// The `info` bits of a keystroke (devices §5.2).
    #[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
    pub struct KeyFlags: u32 {
        /// make_code is a UTF-16 code unit.
        const UNICODE = 1 << 0;
        /// Key release.
        const BREAK = 1 << 1;
        /// 0xE0 prefix.
        const E0 = 1 << 2;
        /// 0xE1 prefix.
        const E1 = 1 << 3;
    }
}

bitflags::bitflags! {
    /// Keyboard indicator LEDs for SET_LED_INDICATORS (Windows convention, inferred).
    #[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
    pub struct Leds: u16 {
        /// Scroll Lock.
        const SCROLL_LOCK = 0x1;
        /// Num Lock.
        const NUM_LOCK = 0x2;
        /// Caps Lock.
        const CAPS_LOCK = 0x4;
        /// Kana.
        const KANA = 0x8;
    }
}

/// One keystroke from the host.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct KeyEvent {
    /// Set-1 make code (low 7 bits meaningful), or a UTF-16 unit with [`KeyFlags::UNICODE`].
    pub make_code: u16,
    /// Flags.
    pub flags: KeyFlags,
}

/// Up to three set-1 bytes (prefix, code).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Set1Bytes {
    bytes: [u8; 2],
    len: u8,
}

impl Set1Bytes {
    /// The bytes.
    pub fn as_slice(&self) -> &[u8] {
        &self.bytes[..usize::from(self.len)]
    }
}

impl KeyEvent {
    /// Key release?
    pub fn is_break(&self) -> bool {
        self.flags.contains(KeyFlags::BREAK)
    }

    /// The UTF-16 unit, when the host flagged the event UNICODE.
    pub fn unicode(&self) -> Option<u16> {
        self.flags
            .contains(KeyFlags::UNICODE)
            .then_some(self.make_code)
    }

    /// The set-1 byte stream Linux feeds its AT/XT decoder (hyperv-keyboard.c): an optional
    /// 0xE0 or 0xE1 prefix, then the low byte of make_code with 0x80 OR-ed in for a release.
    /// Like Linux, the UNICODE flag is not looked at (see [`Self::unicode`]).
    pub fn set1_bytes(&self) -> Set1Bytes {
        let code = (self.make_code as u8) | if self.is_break() { 0x80 } else { 0 };
        if self.flags.contains(KeyFlags::E0) {
            Set1Bytes {
                bytes: [0xE0, code],
                len: 2,
            }
        } else if self.flags.contains(KeyFlags::E1) {
            Set1Bytes {
                bytes: [0xE1, code],
                len: 2,
            }
        } else {
            Set1Bytes {
                bytes: [code, 0],
                len: 1,
            }
        }
    }
}

#[cfg(feature = "pc-keyboard")]
pub use decoder::Set1Decoder;

#[cfg(feature = "pc-keyboard")]
mod decoder {
    use pc_keyboard::{DecodedKey, HandleControl, KeyboardLayout, ScancodeSet1};

    use super::KeyEvent;

    /// Turns keystrokes into characters and raw keys with `pc_keyboard` (scan code set 1).
    pub struct Set1Decoder<L: KeyboardLayout> {
        keyboard: pc_keyboard::PS2Keyboard<L, ScancodeSet1>,
    }

    impl<L: KeyboardLayout> Set1Decoder<L> {
        /// A decoder for `layout` (e.g. `pc_keyboard::layouts::Us104Key`); Ctrl+letter gives
        /// the letter.
        pub fn new(layout: L) -> Self {
            Self {
                keyboard: pc_keyboard::PS2Keyboard::new(
                    ScancodeSet1::new(),
                    layout,
                    HandleControl::Ignore,
                ),
            }
        }

        /// Feeds one keystroke; returns the key it completes, if any (modifier presses and
        /// releases return `None`).
        pub fn feed(&mut self, event: &KeyEvent) -> Option<DecodedKey> {
            let mut out = None;
            for &b in event.set1_bytes().as_slice() {
                if let Ok(Some(ev)) = self.keyboard.add_byte(b) {
                    out = self.keyboard.process_keyevent(ev);
                }
            }
            out
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn set1_bytes_follow_linux() {
        let e = KeyEvent {
            make_code: 0x48,
            flags: KeyFlags::E0 | KeyFlags::BREAK,
        };
        assert_eq!(e.set1_bytes().as_slice(), &[0xE0, 0xC8]);
        let e = KeyEvent {
            make_code: 0x1E,
            flags: KeyFlags::empty(),
        };
        assert_eq!(e.set1_bytes().as_slice(), &[0x1E]);
        let e = KeyEvent {
            make_code: 0x1D,
            flags: KeyFlags::E1,
        };
        assert_eq!(e.set1_bytes().as_slice(), &[0xE1, 0x1D]);
        let u = KeyEvent {
            make_code: 0x263A,
            flags: KeyFlags::UNICODE,
        };
        assert_eq!(u.unicode(), Some(0x263A));
        assert_eq!(u.set1_bytes().as_slice(), &[0x3A]);
    }
}
