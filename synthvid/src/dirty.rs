//! Damage tracking: a fixed list of rectangles that merges overlapping or touching damage and,
//! when full, folds the new rectangle into the one whose bounding box grows least.

#![forbid(unsafe_code)]

/// A rectangle of pixels: `x, y` top-left, `width × height` pixels.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct Rect {
    /// Left column.
    pub x: u32,
    /// Top line.
    pub y: u32,
    /// Columns.
    pub width: u32,
    /// Lines.
    pub height: u32,
}

impl Rect {
    /// A rectangle.
    pub const fn new(x: u32, y: u32, width: u32, height: u32) -> Self {
        Self {
            x,
            y,
            width,
            height,
        }
    }

    /// Whether it covers no pixel.
    pub fn is_empty(&self) -> bool {
        self.width == 0 || self.height == 0
    }

    /// One past the right column (saturating).
    pub fn right(&self) -> u32 {
        self.x.saturating_add(self.width)
    }

    /// One past the bottom line (saturating).
    pub fn bottom(&self) -> u32 {
        self.y.saturating_add(self.height)
    }

    /// The part inside a `width × height` screen (possibly empty).
    pub fn clip(&self, width: u32, height: u32) -> Rect {
        let x = self.x.min(width);
        let y = self.y.min(height);
        Rect::new(
            x,
            y,
            self.right().min(width) - x,
            self.bottom().min(height) - y,
        )
    }

    /// Whether `other` lies inside `self`.
    pub fn contains(&self, other: &Rect) -> bool {
        other.x >= self.x
            && other.y >= self.y
            && other.right() <= self.right()
            && other.bottom() <= self.bottom()
    }

    /// Whether the two overlap or share an edge (so their union wastes little).
    pub fn touches(&self, other: &Rect) -> bool {
        self.x <= other.right()
            && other.x <= self.right()
            && self.y <= other.bottom()
            && other.y <= self.bottom()
    }

    /// Bounding box of both.
    pub fn union(&self, other: &Rect) -> Rect {
        let x = self.x.min(other.x);
        let y = self.y.min(other.y);
        Rect::new(
            x,
            y,
            self.right().max(other.right()) - x,
            self.bottom().max(other.bottom()) - y,
        )
    }

    /// Pixels covered.
    pub fn area(&self) -> u64 {
        u64::from(self.width) * u64::from(self.height)
    }
}

/// Up to `K` damaged rectangles of one screen.
#[derive(Clone, Debug)]
pub struct DirtyRects<const K: usize> {
    rects: [Rect; K],
    len: usize,
}

impl<const K: usize> Default for DirtyRects<K> {
    fn default() -> Self {
        Self::new()
    }
}

impl<const K: usize> DirtyRects<K> {
    /// No damage.
    pub const fn new() -> Self {
        Self {
            rects: [Rect::new(0, 0, 0, 0); K],
            len: 0,
        }
    }

    /// The damaged rectangles (disjoint-ish: merged where they touched).
    pub fn as_slice(&self) -> &[Rect] {
        &self.rects[..self.len]
    }

    /// Whether nothing is damaged.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Forgets all damage.
    pub fn clear(&mut self) {
        self.len = 0;
    }

    fn remove(&mut self, i: usize) -> Rect {
        let r = self.rects[i];
        self.len -= 1;
        self.rects[i] = self.rects[self.len];
        r
    }

    /// Records damage. Empty rectangles are ignored; ones already covered add nothing.
    pub fn add(&mut self, rect: Rect) {
        if rect.is_empty() {
            return;
        }
        if K == 0 {
            return;
        }
        let mut cur = rect;
        // Each round removes one stored rectangle, so this ends within K + 1 rounds.
        loop {
            if self.as_slice().iter().any(|r| r.contains(&cur)) {
                return;
            }
            if let Some(i) = self.as_slice().iter().position(|r| r.touches(&cur)) {
                cur = cur.union(&self.remove(i));
                continue;
            }
            if self.len < K {
                self.rects[self.len] = cur;
                self.len += 1;
                return;
            }
            // Full: merge with the rectangle whose union grows least.
            let mut best = 0;
            let mut best_growth = u64::MAX;
            for (i, r) in self.as_slice().iter().enumerate() {
                let u = r.union(&cur);
                let growth = u.area() - r.area().max(cur.area()).min(u.area());
                if growth < best_growth {
                    best = i;
                    best_growth = growth;
                }
            }
            cur = cur.union(&self.remove(best));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn merges_touching_and_keeps_apart() {
        let mut d = DirtyRects::<4>::new();
        d.add(Rect::new(0, 0, 10, 10));
        d.add(Rect::new(10, 0, 10, 10));
        assert_eq!(d.as_slice(), &[Rect::new(0, 0, 20, 10)]);
        d.add(Rect::new(100, 100, 5, 5));
        assert_eq!(d.as_slice().len(), 2);
        d.add(Rect::new(2, 2, 3, 3));
        assert_eq!(d.as_slice().len(), 2);
        d.add(Rect::new(0, 0, 0, 7));
        assert_eq!(d.as_slice().len(), 2);
    }

    #[test]
    fn full_list_merges_cheapest() {
        let mut d = DirtyRects::<2>::new();
        d.add(Rect::new(0, 0, 1, 1));
        d.add(Rect::new(100, 100, 1, 1));
        d.add(Rect::new(3, 3, 1, 1));
        assert_eq!(d.as_slice().len(), 2);
        assert!(d.as_slice().contains(&Rect::new(0, 0, 4, 4)));
        assert!(d.as_slice().contains(&Rect::new(100, 100, 1, 1)));
    }

    #[test]
    fn clip_handles_extremes() {
        let r = Rect::new(u32::MAX - 1, 5, u32::MAX, 10);
        assert!(r.clip(640, 480).is_empty());
        assert_eq!(
            Rect::new(630, 470, 20, 20).clip(640, 480),
            Rect::new(630, 470, 10, 10)
        );
    }
}
