//! [`ChannelBitmap`]: which channels (by relid) have work, as a fixed 2048-bit set — the same
//! shape as the host→guest event-flag bitmap of SIEFP slot 2 (vmbus-core §8.3).

use crate::protocol::MAX_CHANNELS;

const WORDS: usize = MAX_CHANNELS as usize / 64;

/// A set of relids (0..2048) with work pending, filled by the interrupt entry point.
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct ChannelBitmap {
    words: [u64; WORDS],
}

impl Default for ChannelBitmap {
    fn default() -> Self {
        Self::new()
    }
}

impl core::fmt::Debug for ChannelBitmap {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_set().entries(self.iter()).finish()
    }
}

impl ChannelBitmap {
    /// The empty set.
    pub const fn new() -> Self {
        Self { words: [0; WORDS] }
    }

    /// Adds `relid`; ignored when it is not below 2048.
    pub fn set(&mut self, relid: u32) {
        if relid < MAX_CHANNELS {
            self.words[relid as usize / 64] |= 1 << (relid % 64);
        }
    }

    /// Whether `relid` is in the set.
    pub fn contains(&self, relid: u32) -> bool {
        relid < MAX_CHANNELS && self.words[relid as usize / 64] & (1 << (relid % 64)) != 0
    }

    /// Removes `relid` and says whether it was there.
    pub fn take(&mut self, relid: u32) -> bool {
        let was = self.contains(relid);
        if was {
            self.words[relid as usize / 64] &= !(1 << (relid % 64));
        }
        was
    }

    /// Whether no relid is set.
    pub fn is_empty(&self) -> bool {
        self.words.iter().all(|w| *w == 0)
    }

    /// Adds every relid of `other`.
    pub fn union(&mut self, other: &ChannelBitmap) {
        for (a, b) in self.words.iter_mut().zip(other.words.iter()) {
            *a |= *b;
        }
    }

    /// The relids in ascending order.
    pub fn iter(&self) -> impl Iterator<Item = u32> + '_ {
        self.words.iter().enumerate().flat_map(|(i, &w)| {
            let mut bits = w;
            core::iter::from_fn(move || {
                if bits == 0 {
                    return None;
                }
                let b = bits.trailing_zeros();
                bits &= bits - 1;
                Some(i as u32 * 64 + b)
            })
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn set_iter_take() {
        let mut b = ChannelBitmap::new();
        assert!(b.is_empty());
        for r in [1, 63, 64, 2047, 2048, 5000] {
            b.set(r);
        }
        let mut v = [0u32; 8];
        let mut n = 0;
        for r in b.iter() {
            v[n] = r;
            n += 1;
        }
        assert_eq!(&v[..n], &[1, 63, 64, 2047]);
        assert!(b.take(64) && !b.take(64) && !b.contains(2048));
    }

    #[test]
    fn atomic_set_drain_take() {
        let a = AtomicChannelBitmap::new();
        let mut out = ChannelBitmap::new();
        a.drain_into(&mut out);
        assert!(out.is_empty());
        a.set(5);
        a.set(700);
        a.set(4096);
        assert!(a.take(700) && !a.take(700));
        a.drain_into(&mut out);
        assert!(out.contains(5) && !out.contains(700));
        let mut again = ChannelBitmap::new();
        a.drain_into(&mut again);
        assert!(again.is_empty(), "a drain empties the set");
        // A bit taken before the drain leaves the flag up: the drain finds nothing, no harm.
        a.set(9);
        assert!(a.take(9));
        a.drain_into(&mut again);
        assert!(again.is_empty());
        a.set(2047);
        a.drain_into(&mut again);
        assert!(again.contains(2047));
    }
}

/// A [`ChannelBitmap`] that interrupt context and other VPs update concurrently: relids with
/// work recorded by the bus until a driver takes them.
#[derive(Debug)]
pub struct AtomicChannelBitmap {
    words: [core::sync::atomic::AtomicU64; WORDS],
    /// Set after a bit is set: lets a drain of an empty set (the usual case on the interrupt
    /// path) skip the words. May be true while the set is empty, never false while a bit set
    /// before the last drain's look at it is waiting.
    any: core::sync::atomic::AtomicBool,
}

impl Default for AtomicChannelBitmap {
    fn default() -> Self {
        Self::new()
    }
}

impl AtomicChannelBitmap {
    /// The empty set.
    pub const fn new() -> Self {
        Self {
            words: [const { core::sync::atomic::AtomicU64::new(0) }; WORDS],
            any: core::sync::atomic::AtomicBool::new(false),
        }
    }

    /// Adds `relid` (ignored when not below 2048). Interrupt-safe.
    pub fn set(&self, relid: u32) {
        if relid < MAX_CHANNELS {
            self.words[relid as usize / 64]
                .fetch_or(1 << (relid % 64), core::sync::atomic::Ordering::AcqRel);
            // After the bit: a drain that sees `any` sees the bit.
            self.any.store(true, core::sync::atomic::Ordering::Release);
        }
    }

    /// Removes `relid` and says whether it was there. Interrupt-safe.
    pub fn take(&self, relid: u32) -> bool {
        if relid >= MAX_CHANNELS {
            return false;
        }
        let bit = 1 << (relid % 64);
        self.words[relid as usize / 64].fetch_and(!bit, core::sync::atomic::Ordering::AcqRel) & bit
            != 0
    }

    /// Moves every relid into `out`. Interrupt-safe. On the interrupt path the set is
    /// almost always empty: then one flag says so, instead of 32 locked swaps per interrupt.
    /// A bit whose `set` is still under way may be left for the next drain (its flag is then
    /// still up), as a bit set just after the drain would be.
    pub fn drain_into(&self, out: &mut ChannelBitmap) {
        use core::sync::atomic::Ordering;
        if !self.any.swap(false, Ordering::AcqRel) {
            return;
        }
        for (o, w) in out.words.iter_mut().zip(self.words.iter()) {
            if w.load(Ordering::Relaxed) != 0 {
                *o |= w.swap(0, Ordering::AcqRel);
            }
        }
    }
}
