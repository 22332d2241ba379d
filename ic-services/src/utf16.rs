//! UTF-16LE strings as KVP carries them: fixed-size fields, a byte size that includes the
//! terminating NUL, and hosts that must not be trusted to terminate anything.

use crate::IcError;

/// A validated UTF-16LE string borrowed from a buffer: the code units before the NUL, as
/// little-endian bytes (always an even number). Unpaired surrogates are kept as they came.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Default)]
pub struct Utf16Str<'a> {
    bytes: &'a [u8],
}

impl<'a> Utf16Str<'a> {
    /// Wraps little-endian code-unit bytes without a NUL. `None` if the length is odd or a NUL
    /// unit is present.
    pub fn from_units_le(bytes: &'a [u8]) -> Option<Self> {
        if !bytes.len().is_multiple_of(2) {
            return None;
        }
        let s = Self { bytes };
        if s.units().any(|u| u == 0) {
            None
        } else {
            Some(s)
        }
    }

    /// The code units as little-endian bytes (no NUL).
    pub fn as_bytes(&self) -> &'a [u8] {
        self.bytes
    }

    /// Number of code units (without the NUL).
    pub fn len_units(&self) -> usize {
        self.bytes.len() / 2
    }

    /// Whether the string is empty.
    pub fn is_empty(&self) -> bool {
        self.bytes.is_empty()
    }

    /// Wire size of this string with its NUL, in bytes.
    pub fn wire_size(&self) -> usize {
        self.bytes.len() + 2
    }

    /// The code units.
    pub fn units(&self) -> impl Iterator<Item = u16> + 'a {
        self.bytes
            .chunks_exact(2)
            .map(|c| u16::from_le_bytes([c[0], c[1]]))
    }

    /// The characters; unpaired surrogates become U+FFFD.
    pub fn chars(&self) -> impl Iterator<Item = char> + 'a {
        char::decode_utf16(self.units()).map(|r| r.unwrap_or(char::REPLACEMENT_CHARACTER))
    }

    /// Whether this is exactly `s`.
    pub fn eq_str(&self, s: &str) -> bool {
        self.units().eq(s.encode_utf16())
    }

    /// Whether this equals `s` ignoring ASCII case (adapter ids, MAC addresses).
    pub fn eq_ignore_ascii_case(&self, s: &str) -> bool {
        let lower = |u: u16| {
            if (b'A' as u16..=b'Z' as u16).contains(&u) {
                u + 32
            } else {
                u
            }
        };
        self.units().map(lower).eq(s.encode_utf16().map(lower))
    }
}

/// Decodes a string from a fixed `field` whose host-claimed byte size (including the NUL) is
/// `size`. The size must be even and fit the field; the string ends at the first NUL, which
/// must lie within `size` bytes (or, tolerated, in the unit right after them when the field has
/// room). Size 0 is the empty string.
pub fn decode(field: &[u8], size: u32) -> Result<Utf16Str<'_>, IcError> {
    let bad = IcError::BadStringSize {
        size,
        max: field.len(),
    };
    let n = usize::try_from(size).map_err(|_| bad)?;
    if !n.is_multiple_of(2) || n > field.len() {
        return Err(bad);
    }
    if n == 0 {
        return Ok(Utf16Str::default());
    }
    let window = &field[..(n + 2).min(field.len())];
    let nul = window
        .chunks_exact(2)
        .position(|c| c == [0, 0])
        .ok_or(IcError::UnterminatedString)?;
    Ok(Utf16Str {
        bytes: &field[..nul * 2],
    })
}

/// Decodes a string that fills a fixed field with no separate size (e.g. `adapter_id`): it must
/// be NUL-terminated within the field.
pub fn decode_field(field: &[u8]) -> Result<Utf16Str<'_>, IcError> {
    let even = field.len() - field.len() % 2;
    decode(&field[..even], even as u32)
}

/// Writes `s` as UTF-16LE plus NUL at the start of `out`, zero-fills the rest, and returns the
/// wire size in bytes (including the NUL). Fails if it does not fit.
pub fn encode_str(s: &str, out: &mut [u8]) -> Result<usize, IcError> {
    let units = s.encode_utf16().count();
    let size = units
        .checked_add(1)
        .and_then(|u| u.checked_mul(2))
        .ok_or(IcError::StringTooLong)?;
    if size > out.len() {
        return Err(IcError::StringTooLong);
    }
    for (chunk, u) in out.chunks_exact_mut(2).zip(s.encode_utf16()) {
        chunk.copy_from_slice(&u.to_le_bytes());
    }
    out[size - 2..].fill(0);
    Ok(size)
}

/// Writes an already-encoded string plus NUL at the start of `out`, zero-fills the rest, and
/// returns the wire size in bytes.
pub fn encode_utf16(s: Utf16Str<'_>, out: &mut [u8]) -> Result<usize, IcError> {
    let size = s.wire_size();
    if size > out.len() {
        return Err(IcError::StringTooLong);
    }
    out[..s.bytes.len()].copy_from_slice(s.bytes);
    out[s.bytes.len()..].fill(0);
    Ok(size)
}

/// Number of UTF-16 code units `s` encodes to.
pub fn utf16_len(s: &str) -> usize {
    s.encode_utf16().count()
}
