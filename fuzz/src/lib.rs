//! Shared pieces of the fuzz targets: a ring memory the fuzz input controls ([`ring`]), and a
//! scripted hostile host ([`host`]): a `Transport` whose host messages and post failures come
//! from the input, a `Hal` over the std allocator that checks every free against what the host
//! may still map, and wire builders for host messages.
//!
//! Every assertion here is an invariant of the guest code under test: a failed one is a bug
//! the fuzzer found (or a bug in the model, which the report must say).

pub mod dev;
pub mod host;
pub mod ic;
pub mod net;
pub mod nvsp;
pub mod nvsp_offload;
pub mod ring;
pub mod rndis_check;
pub mod rsc_check;
pub mod scsi;
pub mod stor;
pub mod vstor;

/// Whether `FUZZ_TRACE` is set: the targets then narrate what they do (for triage of a
/// crash input with `cargo fuzz run TARGET crash-file`).
pub fn tracing() -> bool {
    static ON: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *ON.get_or_init(|| std::env::var_os("FUZZ_TRACE").is_some())
}

/// Prints a line when [`tracing`].
#[macro_export]
macro_rules! trace {
    ($($t:tt)*) => {
        if $crate::tracing() {
            eprintln!($($t)*);
        }
    };
}

use libfuzzer_sys::arbitrary::Unstructured;

/// Reads from the fuzz input; an exhausted input reads as zeros (so every target ends).
pub struct Input<'a> {
    u: Unstructured<'a>,
}

impl<'a> Input<'a> {
    /// Wraps the fuzz input.
    pub fn new(data: &'a [u8]) -> Self {
        Self {
            u: Unstructured::new(data),
        }
    }
    /// Whether the input is used up.
    pub fn is_empty(&self) -> bool {
        self.u.is_empty()
    }
    /// Next byte (0 when exhausted).
    pub fn u8(&mut self) -> u8 {
        self.u.arbitrary().unwrap_or(0)
    }
    /// Next little-endian u16.
    pub fn u16(&mut self) -> u16 {
        self.u.arbitrary().unwrap_or(0)
    }
    /// Next little-endian u32.
    pub fn u32(&mut self) -> u32 {
        self.u.arbitrary().unwrap_or(0)
    }
    /// Next little-endian u64.
    pub fn u64(&mut self) -> u64 {
        self.u.arbitrary().unwrap_or(0)
    }
    /// Next bool.
    pub fn bool(&mut self) -> bool {
        self.u8() & 1 != 0
    }
    /// A value in `0..n` (n > 0).
    pub fn below(&mut self, n: usize) -> usize {
        if n <= 1 {
            return 0;
        }
        if n <= 256 {
            self.u8() as usize % n
        } else {
            self.u32() as usize % n
        }
    }
    /// One of `choices`, or (the index past them) `other`'s value: `other` reads input only
    /// when it is chosen.
    pub fn pick<T: Copy>(&mut self, choices: &[T], other: impl FnOnce(&mut Self) -> T) -> T {
        let i = self.below(choices.len() + 1);
        choices.get(i).copied().unwrap_or_else(|| other(self))
    }
    /// Up to `max` bytes (length from the input, then the bytes; short if exhausted).
    pub fn bytes(&mut self, max: usize) -> Vec<u8> {
        let n = self.below(max + 1);
        let n = n.min(self.u.len());
        self.u.bytes(n).map(<[u8]>::to_vec).unwrap_or_default()
    }
    /// Exactly `n` bytes (zero-filled once exhausted).
    pub fn fill(&mut self, n: usize) -> Vec<u8> {
        let mut v = vec![0u8; n];
        let k = n.min(self.u.len());
        if let Ok(b) = self.u.bytes(k) {
            v[..k].copy_from_slice(b);
        }
        v
    }
    /// A ring index: usually a valid one (8-aligned, below `size`), sometimes any u32.
    pub fn ring_index(&mut self, size: u32) -> u32 {
        match self.u8() % 8 {
            0 => self.u32(),
            1 => size,
            2 => self.u32() % size, // maybe misaligned
            _ => (self.u32() % size) & !7,
        }
    }
}

/// Bytes from `from` forward to `to` in a ring of `size` (both < size).
pub fn distance(from: u32, to: u32, size: u32) -> u32 {
    if to >= from {
        to - from
    } else {
        size - from + to
    }
}

/// Whether `i` is a valid ring index for a data area of `size`.
pub fn valid_index(i: u32, size: u32) -> bool {
    i < size && i.is_multiple_of(8)
}
