//! Drawing into VRAM: a view over the mapped VRAM in the current mode that records every
//! changed area in the driver's damage list, so [`crate::Synthvid::flush`] can tell the host.
//!
//! Colours are `0x00RRGGBB`. At 32 bpp they are stored as is (bytes B, G, R, X); at 16 bpp
//! (version 3.0) they are converted to RGB565. Everything outside the screen is clipped
//! silently.

#![forbid(unsafe_code)]

use crate::dirty::{DirtyRects, Rect};
use crate::vram::Vram;

/// A display mode as announced in SITUATION_UPDATE.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Mode {
    /// Pixels per line.
    pub width: u32,
    /// Lines.
    pub height: u32,
    /// Bytes per line.
    pub stride: u32,
    /// 16 or 32.
    pub depth_bits: u8,
}

impl Mode {
    /// A mode with the tightest stride for `depth_bits`.
    pub fn packed(width: u32, height: u32, depth_bits: u8) -> Self {
        Self {
            width,
            height,
            stride: width.saturating_mul(u32::from(depth_bits / 8)),
            depth_bits,
        }
    }

    /// Bytes per pixel.
    pub fn bytes_per_pixel(&self) -> usize {
        usize::from(self.depth_bits / 8)
    }

    /// Bytes of VRAM the mode uses (`stride × height`).
    pub fn bytes(&self) -> u64 {
        u64::from(self.stride) * u64::from(self.height)
    }

    /// The whole screen.
    pub fn screen(&self) -> Rect {
        Rect::new(0, 0, self.width, self.height)
    }
}

/// `0x00RRGGBB` → RGB565.
pub fn to_rgb565(c: u32) -> u16 {
    let r = (c >> 19) & 0x1F;
    let g = (c >> 10) & 0x3F;
    let b = (c >> 3) & 0x1F;
    ((r << 11) | (g << 5) | b) as u16
}

/// RGB565 → `0x00RRGGBB` (low bits replicated).
pub fn from_rgb565(p: u16) -> u32 {
    let p = u32::from(p);
    let r = (p >> 11) & 0x1F;
    let g = (p >> 5) & 0x3F;
    let b = p & 0x1F;
    (((r << 3) | (r >> 2)) << 16) | (((g << 2) | (g >> 4)) << 8) | ((b << 3) | (b >> 2))
}

/// A drawing view of the VRAM in the current mode. Borrowed from [`crate::Synthvid`], so a
/// mode change cannot happen while it exists.
#[derive(Debug)]
pub struct Framebuffer<'a, const K: usize> {
    pub(crate) vram: &'a mut Vram,
    pub(crate) mode: Mode,
    pub(crate) dirty: &'a mut DirtyRects<K>,
}

impl<const K: usize> Framebuffer<'_, K> {
    /// The mode drawn in.
    pub fn mode(&self) -> Mode {
        self.mode
    }

    /// Width in pixels.
    pub fn width(&self) -> u32 {
        self.mode.width
    }

    /// Height in pixels.
    pub fn height(&self) -> u32 {
        self.mode.height
    }

    fn offset(&self, x: u32, y: u32) -> usize {
        y as usize * self.mode.stride as usize + x as usize * self.mode.bytes_per_pixel()
    }

    fn put(&mut self, offset: usize, color: u32) {
        if self.mode.depth_bits == 16 {
            self.vram.write_u16(offset, to_rgb565(color));
        } else {
            self.vram.write_u32(offset, color & 0x00FF_FFFF);
        }
    }

    fn get(&self, offset: usize) -> Option<u32> {
        if self.mode.depth_bits == 16 {
            self.vram.read_u16(offset).map(from_rgb565)
        } else {
            self.vram.read_u32(offset).map(|v| v & 0x00FF_FFFF)
        }
    }

    /// Records damage the caller did by other means (nothing is written).
    pub fn mark_dirty(&mut self, rect: Rect) {
        self.dirty.add(rect.clip(self.mode.width, self.mode.height));
    }

    /// Sets one pixel; ignored outside the screen.
    pub fn set_pixel(&mut self, x: u32, y: u32, color: u32) {
        if x < self.mode.width && y < self.mode.height {
            let o = self.offset(x, y);
            self.put(o, color);
            self.dirty.add(Rect::new(x, y, 1, 1));
        }
    }

    /// Reads one pixel back from VRAM (`None` outside the screen).
    pub fn pixel(&self, x: u32, y: u32) -> Option<u32> {
        (x < self.mode.width && y < self.mode.height).then(|| self.get(self.offset(x, y)))?
    }

    /// Writes pixels without recording damage (the caller records the bounding box once).
    #[cfg_attr(not(feature = "embedded-graphics"), allow(dead_code))]
    pub(crate) fn put_pixel_raw(&mut self, x: u32, y: u32, color: u32) -> bool {
        if x < self.mode.width && y < self.mode.height {
            let o = self.offset(x, y);
            self.put(o, color);
            true
        } else {
            false
        }
    }

    /// Fills `rect` (clipped) with `color`.
    pub fn fill(&mut self, rect: Rect, color: u32) {
        let r = rect.clip(self.mode.width, self.mode.height);
        if r.is_empty() {
            return;
        }
        let bpp = self.mode.bytes_per_pixel();
        for y in r.y..r.bottom() {
            let row = self.offset(r.x, y);
            for i in 0..r.width as usize {
                self.put(row + i * bpp, color);
            }
        }
        self.dirty.add(r);
    }

    /// Fills the whole screen.
    pub fn clear(&mut self, color: u32) {
        self.fill(self.mode.screen(), color);
    }

    /// Copies a `width`-pixel-wide image (`src.len() / width` lines, row-major `0x00RRGGBB`)
    /// with its top-left corner at `(x, y)`, clipped to the screen.
    pub fn blit(&mut self, x: u32, y: u32, width: u32, src: &[u32]) {
        if width == 0 {
            return;
        }
        let height = (src.len() / width as usize) as u32;
        let r = Rect::new(x, y, width, height).clip(self.mode.width, self.mode.height);
        if r.is_empty() {
            return;
        }
        let bpp = self.mode.bytes_per_pixel();
        for line in 0..r.height {
            let row = self.offset(r.x, r.y + line);
            let s = (line as usize) * width as usize;
            for (i, &c) in src[s..s + r.width as usize].iter().enumerate() {
                self.put(row + i * bpp, c);
            }
        }
        self.dirty.add(r);
    }

    /// Scrolls the whole screen up by `lines` (down if negative), filling the lines exposed
    /// with `fill`. The whole screen becomes damaged.
    pub fn scroll(&mut self, lines: i32, fill: u32) {
        let h = self.mode.height;
        let n = lines.unsigned_abs().min(h);
        let row_bytes = self.mode.width as usize * self.mode.bytes_per_pixel();
        let stride = self.mode.stride as usize;
        let copy_row = |vram: &mut Vram, from: u32, to: u32| {
            let (s, d) = (from as usize * stride, to as usize * stride);
            let mut i = 0;
            while i + 4 <= row_bytes {
                if let Some(v) = vram.read_u32(s + i) {
                    vram.write_u32(d + i, v);
                }
                i += 4;
            }
            if i < row_bytes
                && let Some(v) = vram.read_u16(s + i)
            {
                vram.write_u16(d + i, v);
            }
        };
        if lines > 0 {
            for y in 0..h - n {
                copy_row(self.vram, y + n, y);
            }
            self.fill(Rect::new(0, h - n, self.mode.width, n), fill);
        } else if lines < 0 {
            for y in (0..h - n).rev() {
                copy_row(self.vram, y, y + n);
            }
            self.fill(Rect::new(0, 0, self.mode.width, n), fill);
        }
        self.dirty.add(self.mode.screen());
    }
}

#[cfg(feature = "embedded-graphics")]
mod eg {
    use core::convert::Infallible;

    use embedded_graphics_core::Pixel;
    use embedded_graphics_core::draw_target::DrawTarget;
    use embedded_graphics_core::geometry::{OriginDimensions, Size};
    use embedded_graphics_core::pixelcolor::{Rgb888, RgbColor};
    use embedded_graphics_core::primitives::Rectangle;

    use super::Framebuffer;
    use crate::dirty::Rect;

    fn raw(c: Rgb888) -> u32 {
        (u32::from(c.r()) << 16) | (u32::from(c.g()) << 8) | u32::from(c.b())
    }

    /// The part of an embedded-graphics rectangle on a `w × h` screen.
    fn clip(area: &Rectangle, w: u32, h: u32) -> Rect {
        let x0 = i64::from(area.top_left.x);
        let y0 = i64::from(area.top_left.y);
        let x1 = (x0 + i64::from(area.size.width)).clamp(0, i64::from(w));
        let y1 = (y0 + i64::from(area.size.height)).clamp(0, i64::from(h));
        let x0 = x0.clamp(0, i64::from(w));
        let y0 = y0.clamp(0, i64::from(h));
        Rect::new(x0 as u32, y0 as u32, (x1 - x0) as u32, (y1 - y0) as u32)
    }

    impl<const K: usize> OriginDimensions for Framebuffer<'_, K> {
        fn size(&self) -> Size {
            Size::new(self.mode.width, self.mode.height)
        }
    }

    /// `Rgb888` drawing; out-of-screen pixels are discarded. Damage is recorded once per call
    /// (the bounding box of what was drawn).
    impl<const K: usize> DrawTarget for Framebuffer<'_, K> {
        type Color = Rgb888;
        type Error = Infallible;

        fn draw_iter<I>(&mut self, pixels: I) -> Result<(), Infallible>
        where
            I: IntoIterator<Item = Pixel<Rgb888>>,
        {
            let (mut x0, mut y0, mut x1, mut y1) = (u32::MAX, u32::MAX, 0u32, 0u32);
            for Pixel(p, c) in pixels {
                let (Ok(x), Ok(y)) = (u32::try_from(p.x), u32::try_from(p.y)) else {
                    continue;
                };
                if self.put_pixel_raw(x, y, raw(c)) {
                    x0 = x0.min(x);
                    y0 = y0.min(y);
                    x1 = x1.max(x + 1);
                    y1 = y1.max(y + 1);
                }
            }
            if x1 > x0 {
                self.dirty.add(Rect::new(x0, y0, x1 - x0, y1 - y0));
            }
            Ok(())
        }

        fn fill_contiguous<I>(&mut self, area: &Rectangle, colors: I) -> Result<(), Infallible>
        where
            I: IntoIterator<Item = Rgb888>,
        {
            let r = clip(area, self.mode.width, self.mode.height);
            if r.is_empty() {
                return Ok(());
            }
            let w = area.size.width as usize;
            let mut colors = colors.into_iter();
            let (ax, ay) = (i64::from(area.top_left.x), i64::from(area.top_left.y));
            'rows: for row in 0..area.size.height {
                let y = ay + i64::from(row);
                for col in 0..w {
                    let Some(c) = colors.next() else {
                        break 'rows;
                    };
                    let x = ax + col as i64;
                    if (0..i64::from(self.mode.width)).contains(&x)
                        && (0..i64::from(self.mode.height)).contains(&y)
                    {
                        self.put_pixel_raw(x as u32, y as u32, raw(c));
                    }
                }
            }
            self.dirty.add(r);
            Ok(())
        }

        fn fill_solid(&mut self, area: &Rectangle, color: Rgb888) -> Result<(), Infallible> {
            let r = clip(area, self.mode.width, self.mode.height);
            self.fill(r, raw(color));
            Ok(())
        }

        fn clear(&mut self, color: Rgb888) -> Result<(), Infallible> {
            Framebuffer::clear(self, raw(color));
            Ok(())
        }
    }
}
