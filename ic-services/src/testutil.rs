//! Helpers for building host requests byte by byte in tests.

use std::vec::Vec;

/// Builds a host request: pipe header (flags 1, size), IC header with the given type, versions
/// 3.0 / `msg_ver`, TRANSACTION | REQUEST, then `payload`.
pub fn request(msg_type: u16, msg_ver: (u16, u16), payload: &[u8]) -> Vec<u8> {
    let mut v = Vec::new();
    v.extend_from_slice(&1u32.to_le_bytes());
    v.extend_from_slice(&((20 + payload.len()) as u32).to_le_bytes());
    v.extend_from_slice(&3u16.to_le_bytes());
    v.extend_from_slice(&0u16.to_le_bytes());
    v.extend_from_slice(&msg_type.to_le_bytes());
    v.extend_from_slice(&msg_ver.0.to_le_bytes());
    v.extend_from_slice(&msg_ver.1.to_le_bytes());
    v.extend_from_slice(&(payload.len() as u16).to_le_bytes());
    v.extend_from_slice(&0u32.to_le_bytes());
    v.push(0); // ictransaction_id
    v.push(0x3); // TRANSACTION | REQUEST
    v.extend_from_slice(&[0, 0]);
    assert_eq!(v.len(), 28);
    v.extend_from_slice(payload);
    v
}

/// A NEGOTIATE payload offering `fw` then `msg` versions.
pub fn negotiate_payload(fw: &[(u16, u16)], msg: &[(u16, u16)]) -> Vec<u8> {
    let mut v = Vec::new();
    v.extend_from_slice(&(fw.len() as u16).to_le_bytes());
    v.extend_from_slice(&(msg.len() as u16).to_le_bytes());
    v.extend_from_slice(&0u32.to_le_bytes());
    for (a, b) in fw.iter().chain(msg) {
        v.extend_from_slice(&a.to_le_bytes());
        v.extend_from_slice(&b.to_le_bytes());
    }
    v
}

/// Reads a little-endian u32 at `off`.
pub fn u32_at(b: &[u8], off: usize) -> u32 {
    u32::from_le_bytes(b[off..off + 4].try_into().unwrap())
}

/// Reads a little-endian u16 at `off`.
pub fn u16_at(b: &[u8], off: usize) -> u16 {
    u16::from_le_bytes(b[off..off + 2].try_into().unwrap())
}

/// Reads a little-endian u64 at `off`.
pub fn u64_at(b: &[u8], off: usize) -> u64 {
    u64::from_le_bytes(b[off..off + 8].try_into().unwrap())
}

/// UTF-16LE bytes of `s` plus NUL.
pub fn utf16z(s: &str) -> Vec<u8> {
    let mut v: Vec<u8> = s.encode_utf16().flat_map(|u| u.to_le_bytes()).collect();
    v.extend_from_slice(&[0, 0]);
    v
}

/// Deterministic xorshift64 generator for fuzz-style tests.
pub struct XorShift(pub u64);

impl XorShift {
    /// Next value.
    pub fn next(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        self.0 = x;
        x
    }
}

/// Feeds `base` truncated to every length, and `rounds` random mutations of it (random bytes,
/// random lengths), to `f`; `f` must not panic.
pub fn fuzz(base: &[u8], seed: u64, rounds: usize, mut f: impl FnMut(&[u8])) {
    for len in 0..=base.len() {
        f(&base[..len]);
    }
    let mut rng = XorShift(seed);
    let mut buf = base.to_vec();
    for _ in 0..rounds {
        buf.clear();
        buf.extend_from_slice(base);
        let flips = (rng.next() % 16) as usize;
        for _ in 0..flips {
            if buf.is_empty() {
                break;
            }
            let i = (rng.next() % buf.len() as u64) as usize;
            buf[i] = rng.next() as u8;
        }
        // Sometimes hit the header fields that steer parsing.
        if rng.next().is_multiple_of(4) && buf.len() > 40 {
            let i = 28 + (rng.next() % 12) as usize;
            buf[i] = rng.next() as u8;
        }
        let len = if rng.next().is_multiple_of(3) {
            (rng.next() % (buf.len() as u64 + 1)) as usize
        } else {
            buf.len()
        };
        f(&buf[..len]);
        let noise: Vec<u8> = (0..(rng.next() % 64)).map(|_| rng.next() as u8).collect();
        f(&noise);
    }
}
