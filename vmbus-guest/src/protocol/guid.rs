//! The 16-byte GUID in Windows' mixed-endian wire layout.

#![forbid(unsafe_code)]

use core::fmt;
use zerocopy::{FromBytes, Immutable, IntoBytes, KnownLayout};

/// A GUID as Windows lays it out on the wire: `data1`, `data2` and `data3` little-endian,
/// `data4` as bytes in order. VMBus uses it for interface types (device classes), instance ids,
/// hvsock endpoints/services and the 6.0 client id.
#[repr(C)]
#[derive(
    Clone,
    Copy,
    PartialEq,
    Eq,
    PartialOrd,
    Ord,
    Hash,
    Default,
    FromBytes,
    IntoBytes,
    Immutable,
    KnownLayout,
)]
pub struct Guid {
    /// First group (8 hex digits), little-endian on the wire.
    pub data1: u32,
    /// Second group (4 hex digits), little-endian on the wire.
    pub data2: u16,
    /// Third group (4 hex digits), little-endian on the wire.
    pub data3: u16,
    /// Last two groups (4 + 12 hex digits), byte order as written.
    pub data4: [u8; 8],
}

static_assertions::const_assert_eq!(core::mem::size_of::<Guid>(), 16);

const fn hex_val(c: u8) -> Option<u8> {
    match c {
        b'0'..=b'9' => Some(c - b'0'),
        b'a'..=b'f' => Some(c - b'a' + 10),
        b'A'..=b'F' => Some(c - b'A' + 10),
        _ => None,
    }
}

/// Reads `n` hex digits (n ≤ 16) starting at `at`.
const fn hex_field(s: &[u8], at: usize, n: usize) -> Option<u64> {
    let mut v = 0u64;
    let mut i = 0;
    while i < n {
        match hex_val(s[at + i]) {
            Some(d) => v = (v << 4) | d as u64,
            None => return None,
        }
        i += 1;
    }
    Some(v)
}

impl Guid {
    /// The all-zero GUID.
    pub const ZERO: Guid = Guid {
        data1: 0,
        data2: 0,
        data3: 0,
        data4: [0; 8],
    };

    /// Parses the canonical `xxxxxxxx-xxxx-xxxx-xxxx-xxxxxxxxxxxx` form (either case, no
    /// braces). Returns `None` on any other input.
    pub const fn try_parse(s: &str) -> Option<Guid> {
        let b = s.as_bytes();
        if b.len() != 36 || b[8] != b'-' || b[13] != b'-' || b[18] != b'-' || b[23] != b'-' {
            return None;
        }
        let (Some(d1), Some(d2), Some(d3), Some(d4a), Some(d4b)) = (
            hex_field(b, 0, 8),
            hex_field(b, 9, 4),
            hex_field(b, 14, 4),
            hex_field(b, 19, 4),
            hex_field(b, 24, 12),
        ) else {
            return None;
        };
        let mut data4 = [0u8; 8];
        data4[0] = (d4a >> 8) as u8;
        data4[1] = d4a as u8;
        let mut i = 0;
        while i < 6 {
            data4[2 + i] = (d4b >> (8 * (5 - i))) as u8;
            i += 1;
        }
        Some(Guid {
            data1: d1 as u32,
            data2: d2 as u16,
            data3: d3 as u16,
            data4,
        })
    }

    /// Parses the canonical form in a `const` context; a malformed literal is a compile-time
    /// error when used to initialise a `const`, and a panic otherwise.
    pub const fn from_str_const(s: &str) -> Guid {
        match Self::try_parse(s) {
            Some(g) => g,
            None => panic!("malformed GUID literal"),
        }
    }
}

impl fmt::Display for Guid {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let d = &self.data4;
        write!(
            f,
            "{:08x}-{:04x}-{:04x}-{:02x}{:02x}-{:02x}{:02x}{:02x}{:02x}{:02x}{:02x}",
            self.data1, self.data2, self.data3, d[0], d[1], d[2], d[3], d[4], d[5], d[6], d[7]
        )
    }
}

impl fmt::Debug for Guid {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    extern crate std;
    use std::format;

    const NIC: Guid = Guid::from_str_const("f8615163-df3e-46c5-913f-f2d2f965ed0e");

    #[test]
    fn wire_bytes_are_mixed_endian() {
        assert_eq!(
            NIC.as_bytes(),
            &[
                0x63, 0x51, 0x61, 0xf8, 0x3e, 0xdf, 0xc5, 0x46, 0x91, 0x3f, 0xf2, 0xd2, 0xf9, 0x65,
                0xed, 0x0e
            ]
        );
        assert_eq!(Guid::read_from_bytes(NIC.as_bytes()).unwrap(), NIC);
    }

    #[test]
    fn display_round_trips_lowercase() {
        let g = Guid::from_str_const("BA6163D9-04A1-4D29-B605-72E2FFB1DC7F");
        assert_eq!(format!("{g}"), "ba6163d9-04a1-4d29-b605-72e2ffb1dc7f");
        assert_eq!(Guid::try_parse(&format!("{NIC}")), Some(NIC));
    }

    #[test]
    fn rejects_malformed() {
        for bad in [
            "",
            "f8615163-df3e-46c5-913f-f2d2f965ed0",
            "f8615163-df3e-46c5-913f-f2d2f965ed0e0",
            "f8615163xdf3e-46c5-913f-f2d2f965ed0e",
            "g8615163-df3e-46c5-913f-f2d2f965ed0e",
            "{8615163-df3e-46c5-913f-f2d2f965ed0}",
        ] {
            assert_eq!(Guid::try_parse(bad), None, "{bad}");
        }
    }
}
