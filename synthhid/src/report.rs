//! A small HID report-descriptor parser that finds what a pointing device reports — absolute
//! X and Y, buttons, wheel — and a report decoder for the layout it finds.
//!
//! [`parse_descriptor`] and [`MouseLayout::decode`] are pure and never panic: fuzz entry
//! points for host-supplied descriptors and reports.

#![forbid(unsafe_code)]

use core::fmt;

/// Most bits of one field.
pub const MAX_FIELD_BITS: u32 = 32;
/// Most bytes of an input report (after the report id) this parser lays out.
pub const MAX_REPORT_BYTES: usize = 64;
/// Nesting of PUSH and of collections accepted.
pub const MAX_DEPTH: usize = 8;

/// Why a report descriptor or report was rejected.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ReportError {
    /// An item runs past the end of the descriptor.
    Truncated {
        /// Offset of the item.
        at: usize,
    },
    /// Report size larger than 32 bits, or a report longer than [`MAX_REPORT_BYTES`].
    TooLarge {
        /// Offset of the item.
        at: usize,
    },
    /// PUSH/collection nesting deeper than [`MAX_DEPTH`], or POP/END_COLLECTION unbalanced.
    Nesting {
        /// Offset of the item.
        at: usize,
    },
    /// No absolute X and Y input fields: not a pointing device this driver understands.
    NoPointer,
    /// A report shorter than the layout, or with the wrong report id.
    BadReport {
        /// Bytes present.
        len: usize,
    },
}

impl fmt::Display for ReportError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Truncated { at } => write!(f, "report descriptor item at {at} truncated"),
            Self::TooLarge { at } => write!(f, "report descriptor field at {at} too large"),
            Self::Nesting { at } => write!(f, "report descriptor nesting broken at {at}"),
            Self::NoPointer => f.write_str("report descriptor has no absolute X/Y input"),
            Self::BadReport { len } => write!(f, "input report of {len} bytes does not match"),
        }
    }
}

impl core::error::Error for ReportError {}

/// One value in an input report.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Field {
    /// First bit, counted from the start of the report data (after the report id).
    pub bit_offset: u16,
    /// Width in bits (1..=32).
    pub bits: u8,
    /// Logical minimum.
    pub min: i32,
    /// Logical maximum.
    pub max: i32,
    /// Relative (a delta) rather than absolute.
    pub relative: bool,
}

impl Field {
    fn extract(&self, data: &[u8]) -> Option<i32> {
        let first = usize::from(self.bit_offset / 8);
        let shift = u32::from(self.bit_offset % 8);
        let mut raw = 0u64;
        for i in 0..5 {
            if let Some(b) = data.get(first + i) {
                raw |= u64::from(*b) << (8 * i);
            } else if (i as u32) * 8 < shift + u32::from(self.bits) {
                return None;
            }
        }
        let bits = u32::from(self.bits);
        let v = (raw >> shift) & ((1u64 << bits) - 1);
        Some(if self.min < 0 && bits < 64 && v & (1 << (bits - 1)) != 0 {
            (v as i64 - (1i64 << bits)) as i32
        } else {
            v as u32 as i32
        })
    }
}

/// Where a pointing device puts its values in an input report.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct MouseLayout {
    /// Report id (0 = the device uses none, so reports have no id byte).
    pub report_id: u8,
    /// Bytes of report data (after the id byte, if any).
    pub report_bytes: usize,
    /// Absolute X.
    pub x: Field,
    /// Absolute Y.
    pub y: Field,
    /// Wheel (usually relative).
    pub wheel: Option<Field>,
    /// Buttons: first bit and count (button 1 = bit 0).
    pub buttons: Option<(u16, u8)>,
}

/// A decoded input report, in the device's logical units.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct RawPointer {
    /// Button bits (button 1 = bit 0).
    pub buttons: u32,
    /// X in `layout.x.min..=max`.
    pub x: i32,
    /// Y in `layout.y.min..=max`.
    pub y: i32,
    /// Wheel delta (0 without a wheel).
    pub wheel: i32,
}

impl MouseLayout {
    /// Decodes one input report (with its id byte if the layout has a report id).
    pub fn decode(&self, report: &[u8]) -> Result<RawPointer, ReportError> {
        let bad = ReportError::BadReport { len: report.len() };
        let data = if self.report_id != 0 {
            match report.split_first() {
                Some((&id, rest)) if id == self.report_id => rest,
                _ => return Err(bad),
            }
        } else {
            report
        };
        if data.len() < self.report_bytes {
            return Err(bad);
        }
        let x = self.x.extract(data).ok_or(bad)?;
        let y = self.y.extract(data).ok_or(bad)?;
        let wheel = match self.wheel {
            Some(w) => w.extract(data).ok_or(bad)?,
            None => 0,
        };
        let buttons = match self.buttons {
            Some((off, n)) => {
                let f = Field {
                    bit_offset: off,
                    bits: n.min(32),
                    min: 0,
                    max: 1,
                    relative: false,
                };
                f.extract(data).ok_or(bad)? as u32
            }
            None => 0,
        };
        Ok(RawPointer {
            buttons,
            x,
            y,
            wheel,
        })
    }
}

#[derive(Clone, Copy, Default)]
struct Globals {
    usage_page: u16,
    logical_min: i32,
    logical_max: i32,
    logical_max_raw: (u32, usize),
    report_size: u32,
    report_count: u32,
    report_id: u8,
}

const MAX_USAGES: usize = 16;

#[derive(Default)]
struct Locals {
    usages: [(u16, u16); MAX_USAGES],
    count: usize,
    min: Option<(u16, u16)>,
    max: Option<(u16, u16)>,
}

impl Locals {
    /// Usage (page, id) of the `i`-th field of the next main item.
    fn usage(&self, i: usize) -> Option<(u16, u16)> {
        if let (Some((page, lo)), Some((_, hi))) = (self.min, self.max) {
            let u = u32::from(lo) + i as u32;
            return (u <= u32::from(hi)).then_some((page, u as u16));
        }
        if self.count == 0 {
            return self.min;
        }
        Some(self.usages[i.min(self.count - 1)])
    }
}

fn unsigned(data: &[u8]) -> u32 {
    data.iter().rev().fold(0, |a, &b| (a << 8) | u32::from(b))
}

fn signed(data: &[u8]) -> i32 {
    let u = unsigned(data);
    match data.len() {
        1 => u as u8 as i8 as i32,
        2 => u as u16 as i16 as i32,
        _ => u as i32,
    }
}

const PAGE_GENERIC_DESKTOP: u16 = 0x01;
const PAGE_BUTTON: u16 = 0x09;
const USAGE_X: u16 = 0x30;
const USAGE_Y: u16 = 0x31;
const USAGE_WHEEL: u16 = 0x38;

/// Parses a HID report descriptor and returns the layout of its pointer input: absolute X and
/// Y (Generic Desktop 0x30/0x31), buttons (Button page) and wheel (0x38) of the first report
/// that has X and Y. Long items are skipped; output and feature items ignored.
pub fn parse_descriptor(d: &[u8]) -> Result<MouseLayout, ReportError> {
    let mut g = Globals::default();
    let mut stack = [Globals::default(); MAX_DEPTH];
    let mut sp = 0usize;
    let mut collections = 0usize;
    let mut l = Locals::default();
    // Bit offsets per report id seen so far (id 0 plus up to 7 ids).
    let mut offsets: [(u8, u32); 8] = [(0, 0); 8];
    let mut n_offsets = 1usize;
    let (mut x, mut y, mut wheel, mut buttons) = (None, None, None, None);
    // Report ids of the buttons and wheel found: fields of another report than X and Y are
    // not in the reports `decode` reads.
    let (mut buttons_id, mut wheel_id) = (0u8, 0u8);
    let mut layout_id: Option<u8> = None;
    let mut at = 0usize;
    while at < d.len() {
        let prefix = d[at];
        if prefix == 0xFE {
            let size = usize::from(*d.get(at + 1).ok_or(ReportError::Truncated { at })?);
            at = at
                .checked_add(3 + size)
                .filter(|e| *e <= d.len())
                .ok_or(ReportError::Truncated { at })?;
            continue;
        }
        let size = match prefix & 3 {
            3 => 4,
            n => usize::from(n),
        };
        let data = d
            .get(at + 1..at + 1 + size)
            .ok_or(ReportError::Truncated { at })?;
        let kind = (prefix >> 2) & 3;
        let tag = prefix >> 4;
        match (kind, tag) {
            // Main: input.
            (0, 8) => {
                let flags = unsigned(data);
                if g.report_size > MAX_FIELD_BITS {
                    return Err(ReportError::TooLarge { at });
                }
                let slot = match offsets[..n_offsets].iter().position(|o| o.0 == g.report_id) {
                    Some(s) => s,
                    None if n_offsets < offsets.len() => {
                        offsets[n_offsets] = (g.report_id, 0);
                        n_offsets += 1;
                        n_offsets - 1
                    }
                    None => return Err(ReportError::TooLarge { at }),
                };
                let start = offsets[slot].1;
                let total = g
                    .report_size
                    .checked_mul(g.report_count)
                    .ok_or(ReportError::TooLarge { at })?;
                let end = start
                    .checked_add(total)
                    .ok_or(ReportError::TooLarge { at })?;
                if end > (MAX_REPORT_BYTES * 8) as u32 {
                    return Err(ReportError::TooLarge { at });
                }
                offsets[slot].1 = end;
                let constant = flags & 1 != 0;
                let variable = flags & 2 != 0;
                let relative = flags & 4 != 0;
                let same_report = layout_id.is_none_or(|id| id == g.report_id);
                if !constant && variable && same_report && g.report_size > 0 {
                    let mut max = g.logical_max;
                    if g.logical_min >= 0 && max < 0 {
                        // A maximum that only makes sense unsigned (e.g. `26 FF FF`).
                        let (raw, n) = g.logical_max_raw;
                        max = if n >= 4 { i32::MAX } else { raw as i32 };
                    }
                    for i in 0..g.report_count.min(256) as usize {
                        let bit_offset = (start + i as u32 * g.report_size) as u16;
                        let field = Field {
                            bit_offset,
                            bits: g.report_size as u8,
                            min: g.logical_min,
                            max,
                            relative,
                        };
                        let (page, usage) = match l.usage(i) {
                            Some((0, u)) => (g.usage_page, u),
                            Some(pu) => pu,
                            None => (g.usage_page, 0),
                        };
                        match (page, usage) {
                            (PAGE_BUTTON, _) if g.report_size == 1 && buttons.is_none() => {
                                buttons = Some((bit_offset, g.report_count.min(32) as u8));
                                buttons_id = g.report_id;
                            }
                            (PAGE_GENERIC_DESKTOP, USAGE_X | USAGE_Y) if !relative => {
                                let slot = if usage == USAGE_X { &mut x } else { &mut y };
                                if slot.is_none() {
                                    *slot = Some(field);
                                    layout_id = Some(g.report_id);
                                    if buttons_id != g.report_id {
                                        buttons = None;
                                    }
                                    if wheel_id != g.report_id {
                                        wheel = None;
                                    }
                                }
                            }
                            (PAGE_GENERIC_DESKTOP, USAGE_WHEEL) if wheel.is_none() => {
                                wheel = Some(field);
                                wheel_id = g.report_id;
                            }
                            _ => {}
                        }
                    }
                }
                l = Locals::default();
            }
            // Main: output, feature.
            (0, 9) | (0, 11) => l = Locals::default(),
            // Main: collection / end collection.
            (0, 10) => {
                collections += 1;
                if collections > MAX_DEPTH {
                    return Err(ReportError::Nesting { at });
                }
                l = Locals::default();
            }
            (0, 12) => {
                collections = collections
                    .checked_sub(1)
                    .ok_or(ReportError::Nesting { at })?;
                l = Locals::default();
            }
            // Global items.
            (1, 0) => g.usage_page = unsigned(data) as u16,
            (1, 1) => g.logical_min = signed(data),
            (1, 2) => {
                g.logical_max = signed(data);
                g.logical_max_raw = (unsigned(data), size);
            }
            (1, 7) => g.report_size = unsigned(data),
            (1, 8) => g.report_id = unsigned(data) as u8,
            (1, 9) => g.report_count = unsigned(data),
            (1, 10) => {
                *stack.get_mut(sp).ok_or(ReportError::Nesting { at })? = g;
                sp += 1;
            }
            (1, 11) => {
                sp = sp.checked_sub(1).ok_or(ReportError::Nesting { at })?;
                g = stack[sp];
            }
            // Local items (a 4-byte usage carries its page in the high half).
            (2, 0..=2) => {
                let v = unsigned(data);
                let pu = if size == 4 {
                    ((v >> 16) as u16, v as u16)
                } else {
                    (0, v as u16)
                };
                match tag {
                    0 => {
                        if l.count < MAX_USAGES {
                            l.usages[l.count] = pu;
                            l.count += 1;
                        }
                    }
                    1 => l.min = Some(pu),
                    _ => l.max = Some(pu),
                }
            }
            _ => {}
        }
        at += 1 + size;
    }
    let (Some(x), Some(y)) = (x, y) else {
        return Err(ReportError::NoPointer);
    };
    let id = layout_id.unwrap_or(0);
    let bits = offsets[..n_offsets]
        .iter()
        .find(|o| o.0 == id)
        .map_or(0, |o| o.1);
    Ok(MouseLayout {
        report_id: id,
        report_bytes: bits.div_ceil(8) as usize,
        x,
        y,
        wheel,
        buttons,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The Hyper-V mouse's descriptor shape, including the known bug at byte 14 (Logical
    /// Maximum where Usage Maximum belongs).
    const HYPERV: [u8; 65] = [
        0x05, 0x01, 0x09, 0x02, 0xA1, 0x01, 0x09, 0x01, 0xA1, 0x00, 0x05, 0x09, 0x19, 0x01, 0x25,
        0x05, 0x15, 0x00, 0x25, 0x01, 0x95, 0x05, 0x75, 0x01, 0x81, 0x02, 0x95, 0x01, 0x75, 0x03,
        0x81, 0x01, 0x05, 0x01, 0x09, 0x30, 0x09, 0x31, 0x15, 0x00, 0x26, 0xFF, 0x7F, 0x75, 0x10,
        0x95, 0x02, 0x81, 0x02, 0x09, 0x38, 0x16, 0x01, 0x80, 0x26, 0xFF, 0x7F, 0x75, 0x10, 0x95,
        0x01, 0x81, 0x06, 0xC0, 0xC0,
    ];

    #[test]
    fn hyperv_descriptor() {
        let l = parse_descriptor(&HYPERV).unwrap();
        assert_eq!(l.report_id, 0);
        assert_eq!(l.report_bytes, 7);
        assert_eq!(l.buttons, Some((0, 5)));
        assert_eq!(
            (l.x.bit_offset, l.x.bits, l.x.min, l.x.max),
            (8, 16, 0, 32767)
        );
        assert_eq!(l.y.bit_offset, 24);
        let w = l.wheel.unwrap();
        assert_eq!((w.bit_offset, w.min, w.relative), (40, -32767, true));
        let r = l
            .decode(&[0x05, 0xFF, 0x7F, 0x00, 0x40, 0xFF, 0xFF])
            .unwrap();
        assert_eq!(
            r,
            RawPointer {
                buttons: 5,
                x: 32767,
                y: 0x4000,
                wheel: -1
            }
        );
        assert!(l.decode(&[0; 6]).is_err());
    }

    #[test]
    fn hostile_descriptors() {
        assert_eq!(parse_descriptor(&[]), Err(ReportError::NoPointer));
        assert_eq!(
            parse_descriptor(&[0x26, 0xFF]),
            Err(ReportError::Truncated { at: 0 })
        );
        assert_eq!(
            parse_descriptor(&[0xC0]),
            Err(ReportError::Nesting { at: 0 })
        );
        assert_eq!(
            parse_descriptor(&[0xB4]),
            Err(ReportError::Nesting { at: 0 })
        );
        // report size 33
        assert!(parse_descriptor(&[0x75, 0x21, 0x95, 0x01, 0x81, 0x02]).is_err());
        // a huge count
        assert!(parse_descriptor(&[0x75, 0x08, 0x96, 0xFF, 0xFF, 0x81, 0x02]).is_err());
        // long item running past the end
        assert!(parse_descriptor(&[0xFE, 0x10, 0x00]).is_err());
        // every prefix and every single-byte corruption of a valid descriptor: no panic
        for n in 0..HYPERV.len() {
            let _ = parse_descriptor(&HYPERV[..n]);
            for v in [0x00, 0x03, 0x27, 0x75, 0x95, 0xFE, 0xFF] {
                let mut d = HYPERV;
                d[n] = v;
                if let Ok(l) = parse_descriptor(&d) {
                    let _ = l.decode(&[0xFF; 9]);
                    let _ = l.decode(&[]);
                }
            }
        }
    }

    #[test]
    fn report_ids_and_pushes() {
        // Report id 2, X/Y 8 bits each absolute, pushed and popped globals.
        let d = [
            0x05, 0x01, 0x09, 0x02, 0xA1, 0x01, 0x85, 0x02, 0xA4, 0x15, 0x00, 0x25, 0x64, 0xB4,
            0x09, 0x30, 0x09, 0x31, 0x15, 0x00, 0x25, 0x64, 0x75, 0x08, 0x95, 0x02, 0x81, 0x02,
            0xC0,
        ];
        let l = parse_descriptor(&d).unwrap();
        assert_eq!(l.report_id, 2);
        assert_eq!(l.decode(&[2, 10, 20]).unwrap().y, 20);
        assert!(l.decode(&[1, 10, 20]).is_err());
    }
}
