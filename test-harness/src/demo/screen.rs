//! Demo part five: the screen, the keyboard and the mouse. The guest opens synthvid and the
//! synthetic keyboard and mouse on the shared bus (the integration services stay open beside
//! them), draws a status screen with embedded-graphics and flushes it as DIRT; the host saves
//! what it shows as a PNG. Then the host types a line and clicks a button on the screen: the
//! guest decodes the keys with pc-keyboard, draws the text, moves its cursor along the mouse
//! reports to the click and marks the button pressed; the host saves a second PNG.

use std::io;
use std::path::{Path, PathBuf};

use embedded_graphics::Pixel;
use embedded_graphics::mono_font::ascii::{FONT_9X15, FONT_9X15_BOLD, FONT_10X20};
use embedded_graphics::mono_font::{MonoFont, MonoTextStyle};
use embedded_graphics::pixelcolor::Rgb888;
use embedded_graphics::prelude::*;
use embedded_graphics::primitives::{PrimitiveStyleBuilder, Rectangle, RoundedRectangle};
use embedded_graphics::text::{Baseline, Text};
use ic_services::{IcHandler, IcService};
use pc_keyboard::DecodedKey;
use pc_keyboard::layouts::Us104Key;
use synthhid::keys::Set1Decoder;
use synthhid::protocol::{KEYBOARD_VERSION, MOUSE_VERSION};
use synthhid::{KeyFlags, Keyboard, Mouse};
use synthvid::{Config, Framebuffer, Synthvid, VramWindow};
use vmbus_guest::protocol::{DeviceClass, Guid};
use vmbus_guest::{BoundedWait, Hal, Transport, Vmbus};

use super::narrator::Narrator;
use crate::guest_ics::GuestIcs;
use crate::hv::MockHypervisor;
use crate::input::keymap::LEFT_SHIFT;
use crate::input::{KeyboardVsp, MouseVsp};
use crate::video::{VideoConfig, VideoVsp};
use crate::vmbus::{HostRelease, MockVmbusHost};

/// The status screen, as the host saved it.
pub const STATUS_PNG: &str = "screenshot.png";
/// The screen after the typed line and the click.
pub const TYPED_PNG: &str = "screenshot-typed.png";
/// The line the host types (ending with keypad Enter, an extended key).
pub const TYPED_LINE: &str = "Hello, Hyper-V! Typed on the host, decoded by a no_std guest.";

const VIDEO_INSTANCE: Guid = Guid::from_str_const("5a1e6a3c-2f1d-4e7b-9c0d-3b8a61d2e010");
const KEYBOARD_INSTANCE: Guid = Guid::from_str_const("5a1e6a3c-2f1d-4e7b-9c0d-3b8a61d2e011");
const MOUSE_INSTANCE: Guid = Guid::from_str_const("5a1e6a3c-2f1d-4e7b-9c0d-3b8a61d2e012");

/// Set-1 make code of Enter; with the E0 prefix it is keypad Enter.
const ENTER: u8 = 0x1C;
/// Host steps the guest waits for the typed line or the click.
const INPUT_ROUNDS: usize = 40;

// Layout (the mode is 1024 × 768 on every host release the demo emulates).
const MARGIN: i32 = 24;
const TITLE_BAR: u32 = 76;
const PANEL_TOP: i32 = 92;
const PANEL_HEIGHT: u32 = 236;
const KEYS_TOP: i32 = 344;
const KEYS_HEIGHT: u32 = 136;
const TEXT_BOX: Rectangle = Rectangle::new(Point::new(44, 386), Size::new(936, 36));
const MOUSE_TOP: i32 = 496;
/// The button the host clicks.
const BUTTON: Rectangle = Rectangle::new(Point::new(744, 624), Size::new(216, 56));
/// Where on the button the host clicks (right of the label, so the pointer leaves it legible).
const CLICK: (u32, u32) = (918, 648);
/// Where the host's mouse starts.
const MOUSE_START: (u32, u32) = (120, 700);
/// Mouse reports on the way to the button.
const MOUSE_MOVES: u32 = 8;

const BACKGROUND: Rgb888 = Rgb888::new(0x0B, 0x16, 0x28);
const TITLE_BG: Rgb888 = Rgb888::new(0x1F, 0x4F, 0x9A);
const PANEL_BG: Rgb888 = Rgb888::new(0x13, 0x24, 0x3C);
const PANEL_EDGE: Rgb888 = Rgb888::new(0x35, 0x5C, 0x92);
const HEADING: Rgb888 = Rgb888::new(0x7F, 0xC8, 0xFF);
const LABEL: Rgb888 = Rgb888::new(0x93, 0xA8, 0xC4);
const VALUE: Rgb888 = Rgb888::WHITE;
const GOOD: Rgb888 = Rgb888::new(0x4C, 0xD1, 0x6A);
const WARN: Rgb888 = Rgb888::new(0xF2, 0xB8, 0x4B);
const TYPED: Rgb888 = Rgb888::new(0xFF, 0xE0, 0x80);
const FIELD_BG: Rgb888 = Rgb888::new(0x05, 0x0C, 0x18);
const TRAIL: Rgb888 = Rgb888::new(0x7F, 0xA6, 0xD8);
const BUTTON_UP: Rgb888 = Rgb888::new(0x2B, 0x5F, 0xB0);
const BUTTON_DOWN: Rgb888 = Rgb888::new(0x2E, 0x9E, 0x4F);

/// The guest's pointer: `B` outline, `W` fill, `.` transparent; the hot spot is the top left.
const ARROW: [&str; 19] = [
    "B...........",
    "BB..........",
    "BWB.........",
    "BWWB........",
    "BWWWB.......",
    "BWWWWB......",
    "BWWWWWB.....",
    "BWWWWWWB....",
    "BWWWWWWWB...",
    "BWWWWWWWWB..",
    "BWWWWWWWWWB.",
    "BWWWWWWBBBBB",
    "BWWWBWWB....",
    "BWWBBWWB....",
    "BWB..BWWB...",
    "BB...BWWB...",
    "B.....BWWB..",
    "......BWWB..",
    ".......BB...",
];

/// The host side of the screen: the three devices and where screenshots go.
pub struct ScreenHost {
    video: VideoVsp,
    keyboard: KeyboardVsp,
    mouse: MouseVsp,
    /// The MMIO range the platform gives the guest for the VRAM (on Hyper-V: from the VMBus
    /// device's `_CRS`).
    vram_window: (u64, usize),
    dir: PathBuf,
}

/// The newest synthvid version a host of `release` accepts, by its generation's name in
/// devices §4.1: WIN7 3.0 (16 bpp) for WS2008 R2, WIN8 3.2 for WS2012, WIN8.1 3.3 for WS2012
/// R2, WIN10 3.5 (with the resolution list) from WS2016. The guest picks its candidates by the
/// VMBus version (3.0; 3.2; 3.5 then 3.2), so each release negotiates its own.
fn video_config(release: HostRelease) -> VideoConfig {
    let max_minor = match release {
        HostRelease::Ws2008R2 => 0,
        HostRelease::Ws2012 => 2,
        HostRelease::Ws2012R2 => 3,
        _ => 5,
    };
    VideoConfig {
        max_minor,
        ..VideoConfig::hyperv()
    }
}

/// Offers the video, keyboard and mouse devices; screenshots will be saved in `dir`.
pub fn offer(host: &mut MockVmbusHost, hv: &MockHypervisor, dir: PathBuf) -> ScreenHost {
    let video = VideoVsp::new(hv.clone(), video_config(host.release()));
    host.add_device(video.offer(VIDEO_INSTANCE), Box::new(video.clone()));
    let keyboard = KeyboardVsp::new();
    host.add_device(
        keyboard.offer(KEYBOARD_INSTANCE),
        Box::new(keyboard.clone()),
    );
    let mouse = MouseVsp::default();
    host.add_device(mouse.offer(MOUSE_INSTANCE), Box::new(mouse.clone()));
    ScreenHost {
        video,
        keyboard,
        mouse,
        vram_window: hv.mmio_window(),
        dir,
    }
}

/// The versions the open integration services negotiated, for the status screen.
pub fn ic_versions<T: Transport, H: Hal>(
    services: &GuestIcs<'_, T, H>,
) -> Vec<(DeviceClass, String)> {
    fn version<S: IcHandler>(
        class: DeviceClass,
        s: &IcService<S>,
    ) -> Option<(DeviceClass, String)> {
        s.negotiated()
            .map(|(_, service)| (class, format!("IC {service}")))
    }
    [
        version(DeviceClass::Heartbeat, services.heartbeat.service()),
        version(DeviceClass::Shutdown, services.shutdown.service()),
        version(DeviceClass::TimeSync, services.timesync.service()),
        version(DeviceClass::Kvp, services.kvp.service()),
    ]
    .into_iter()
    .flatten()
    .collect()
}

fn release_name(r: HostRelease) -> &'static str {
    match r {
        HostRelease::Ws2008R2 => "Windows Server 2008 R2",
        HostRelease::Ws2012 => "Windows Server 2012",
        HostRelease::Ws2012R2 => "Windows Server 2012 R2",
        HostRelease::Ws2016 => "Windows Server 2016",
        HostRelease::Ws2019 => "Windows Server 2019",
        HostRelease::Ws2022 => "Windows Server 2022 / Azure",
        HostRelease::Copper => "a VMBus 6.0 host",
    }
}

fn dotted(v: u32) -> String {
    format!("{}.{}", v >> 16, v & 0xFFFF)
}

/// One line of the device table.
struct DeviceRow {
    relid: String,
    name: &'static str,
    version: String,
    state: &'static str,
}

/// The status screen's content, gathered by the guest.
struct Status {
    release: String,
    vmbus: String,
    video: String,
    vram: String,
    updates: String,
    devices: Vec<DeviceRow>,
}

// ---------------------------------------------------------------------------------------------
// Drawing (the guest's side: everything goes through synthvid's DrawTarget).

type Fb<'a> = Framebuffer<'a, { synthvid::DEFAULT_DIRTY_RECTS }>;

fn text(fb: &mut Fb<'_>, s: &str, x: i32, y: i32, font: &MonoFont<'_>, color: Rgb888) {
    let _ = Text::with_baseline(
        s,
        Point::new(x, y),
        MonoTextStyle::new(font, color),
        Baseline::Top,
    )
    .draw(fb);
}

fn fill(fb: &mut Fb<'_>, r: Rectangle, color: Rgb888) {
    let _ = r
        .into_styled(PrimitiveStyleBuilder::new().fill_color(color).build())
        .draw(fb);
}

fn panel(fb: &mut Fb<'_>, r: Rectangle, title: &str) {
    let style = PrimitiveStyleBuilder::new()
        .fill_color(PANEL_BG)
        .stroke_color(PANEL_EDGE)
        .stroke_width(1)
        .build();
    let _ = RoundedRectangle::with_equal_corners(r, Size::new(8, 8))
        .into_styled(style)
        .draw(fb);
    text(
        fb,
        title,
        r.top_left.x + 16,
        r.top_left.y + 10,
        &FONT_9X15_BOLD,
        HEADING,
    );
}

/// Draws through to the target at `factor` times the size (a big title from a small font).
struct Scaled<'a, D> {
    target: &'a mut D,
    factor: i32,
}

impl<D: DrawTarget<Color = Rgb888>> OriginDimensions for Scaled<'_, D> {
    fn size(&self) -> Size {
        self.target.bounding_box().size / self.factor as u32
    }
}

impl<D: DrawTarget<Color = Rgb888>> DrawTarget for Scaled<'_, D> {
    type Color = Rgb888;
    type Error = D::Error;

    fn draw_iter<I: IntoIterator<Item = Pixel<Rgb888>>>(
        &mut self,
        pixels: I,
    ) -> Result<(), D::Error> {
        let f = self.factor;
        self.target
            .draw_iter(pixels.into_iter().flat_map(move |Pixel(p, c)| {
                (0..f * f).map(move |i| Pixel(Point::new(p.x * f + i % f, p.y * f + i / f), c))
            }))
    }
}

fn draw_status(fb: &mut Fb<'_>, s: &Status) {
    let width = fb.width();
    let _ = DrawTarget::clear(fb, BACKGROUND);
    fill(
        fb,
        Rectangle::new(Point::zero(), Size::new(width, TITLE_BAR)),
        TITLE_BG,
    );
    let _ = Text::with_baseline(
        "hyperv-guest-rs",
        Point::new(MARGIN / 2, 9),
        MonoTextStyle::new(&FONT_10X20, VALUE),
        Baseline::Top,
    )
    .draw(&mut Scaled {
        target: fb,
        factor: 2,
    });
    text(
        fb,
        "no_std Rust guest drivers on a simulated Hyper-V host",
        352,
        18,
        &FONT_9X15,
        VALUE,
    );
    text(
        fb,
        "drawn by the guest with embedded-graphics into synthvid's VRAM",
        352,
        40,
        &FONT_9X15,
        HEADING,
    );

    let half = (width - 3 * MARGIN as u32) / 2;
    let left = Rectangle::new(Point::new(MARGIN, PANEL_TOP), Size::new(half, PANEL_HEIGHT));
    panel(fb, left, "Host");
    let rows = [
        ("release", s.release.as_str()),
        ("VMBus", s.vmbus.as_str()),
        ("video", s.video.as_str()),
        ("VRAM", s.vram.as_str()),
        ("updates", s.updates.as_str()),
        ("pointer", "drawn by the guest (host pointer hidden)"),
    ];
    for (i, (label, value)) in rows.iter().enumerate() {
        let y = PANEL_TOP + 42 + 28 * i as i32;
        text(fb, label, MARGIN + 16, y, &FONT_9X15, LABEL);
        text(fb, value, MARGIN + 96, y, &FONT_9X15, VALUE);
    }

    let right_x = 2 * MARGIN + half as i32;
    let right = Rectangle::new(
        Point::new(right_x, PANEL_TOP),
        Size::new(half, PANEL_HEIGHT),
    );
    panel(fb, right, "Devices on the bus");
    let columns = [16, 70, 172, 316];
    for (x, h) in columns.iter().zip(["relid", "device", "version", "state"]) {
        text(fb, h, right_x + x, PANEL_TOP + 38, &FONT_9X15, LABEL);
    }
    // Rows closer together when many devices are offered, so all fit the panel.
    let pitch = (19).min((PANEL_HEIGHT as i32 - 72) / s.devices.len().max(1) as i32);
    for (i, d) in s.devices.iter().enumerate() {
        let y = PANEL_TOP + 60 + pitch * i as i32;
        let state_colour = if d.state == "open" { GOOD } else { WARN };
        text(
            fb,
            &format!("{:>5}", d.relid),
            right_x + columns[0],
            y,
            &FONT_9X15,
            VALUE,
        );
        text(fb, d.name, right_x + columns[1], y, &FONT_9X15, VALUE);
        text(fb, &d.version, right_x + columns[2], y, &FONT_9X15, VALUE);
        text(
            fb,
            d.state,
            right_x + columns[3],
            y,
            &FONT_9X15,
            state_colour,
        );
    }

    let keys = Rectangle::new(
        Point::new(MARGIN, KEYS_TOP),
        Size::new(width - 2 * MARGIN as u32, KEYS_HEIGHT),
    );
    panel(
        fb,
        keys,
        "Keyboard: synthhid keystrokes (scan code set 1), decoded by pc-keyboard",
    );
    draw_line(fb, "", false);
    key_status(fb, "waiting for the host to type...", LABEL);

    let mouse = Rectangle::new(
        Point::new(MARGIN, MOUSE_TOP),
        Size::new(
            width - 2 * MARGIN as u32,
            768 - MOUSE_TOP as u32 - MARGIN as u32 / 2,
        ),
    );
    panel(
        fb,
        mouse,
        "Mouse: synthhid absolute HID pointer, reports scaled to the screen",
    );
    mouse_status(fb, "waiting for the host to click the button...", LABEL);
    draw_button(fb, false);
}

/// The typed line in its field, with a caret unless the line was entered.
fn draw_line(fb: &mut Fb<'_>, line: &str, entered: bool) {
    let edge = if entered { GOOD } else { PANEL_EDGE };
    let style = PrimitiveStyleBuilder::new()
        .fill_color(FIELD_BG)
        .stroke_color(edge)
        .stroke_width(2)
        .build();
    let _ = TEXT_BOX.into_styled(style).draw(fb);
    let (x, y) = (TEXT_BOX.top_left.x + 12, TEXT_BOX.top_left.y + 8);
    text(fb, ">", x, y, &FONT_10X20, LABEL);
    text(fb, line, x + 20, y, &FONT_10X20, TYPED);
    if !entered {
        let caret_x = x + 20 + 10 * line.chars().count() as i32;
        fill(
            fb,
            Rectangle::new(Point::new(caret_x, y + 2), Size::new(10, 18)),
            TYPED,
        );
    }
}

fn status_line(fb: &mut Fb<'_>, y: i32, s: &str, color: Rgb888) {
    let width = fb.width() - 2 * MARGIN as u32 - 32;
    fill(
        fb,
        Rectangle::new(Point::new(MARGIN + 16, y), Size::new(width, 15)),
        PANEL_BG,
    );
    text(fb, s, MARGIN + 16, y, &FONT_9X15, color);
}

fn key_status(fb: &mut Fb<'_>, s: &str, color: Rgb888) {
    status_line(fb, KEYS_TOP + 96, s, color);
}

fn mouse_status(fb: &mut Fb<'_>, s: &str, color: Rgb888) {
    status_line(fb, MOUSE_TOP + 36, s, color);
}

fn draw_button(fb: &mut Fb<'_>, pressed: bool) {
    let (fill_colour, label) = if pressed {
        (BUTTON_DOWN, "clicked!")
    } else {
        (BUTTON_UP, "click me")
    };
    let style = PrimitiveStyleBuilder::new()
        .fill_color(fill_colour)
        .stroke_color(VALUE)
        .stroke_width(2)
        .build();
    let _ = RoundedRectangle::with_equal_corners(BUTTON, Size::new(10, 10))
        .into_styled(style)
        .draw(fb);
    let w = 10 * label.len() as i32;
    text(
        fb,
        label,
        BUTTON.center().x - w / 2,
        BUTTON.center().y - 10,
        &FONT_10X20,
        VALUE,
    );
}

/// The guest-drawn pointer and the pixels it covers.
#[derive(Default)]
struct Cursor {
    under: Vec<Pixel<Rgb888>>,
}

impl Cursor {
    fn arrow(x: i32, y: i32) -> impl Iterator<Item = (Point, Rgb888)> {
        ARROW.iter().enumerate().flat_map(move |(dy, row)| {
            row.bytes().enumerate().filter_map(move |(dx, b)| {
                let p = Point::new(x + dx as i32, y + dy as i32);
                match b {
                    b'B' => Some((p, Rgb888::BLACK)),
                    b'W' => Some((p, Rgb888::WHITE)),
                    _ => None,
                }
            })
        })
    }

    /// Puts back what the pointer covered.
    fn hide(&mut self, fb: &mut Fb<'_>) {
        let _ = fb.draw_iter(self.under.drain(..));
    }

    /// Draws the pointer with its hot spot at (x, y), remembering what it covers.
    fn show(&mut self, fb: &mut Fb<'_>, x: u32, y: u32) {
        let (x, y) = (x as i32, y as i32);
        self.under = Self::arrow(x, y)
            .filter_map(|(p, _)| {
                let c = fb.pixel(u32::try_from(p.x).ok()?, u32::try_from(p.y).ok()?)?;
                Some(Pixel(
                    p,
                    Rgb888::new((c >> 16) as u8, (c >> 8) as u8, c as u8),
                ))
            })
            .collect();
        let _ = fb.draw_iter(Self::arrow(x, y).map(|(p, c)| Pixel(p, c)));
    }
}

// ---------------------------------------------------------------------------------------------
// The host's side.

/// Saves what the host shows as `name` in the screenshot directory.
fn save(screen: &ScreenHost, name: &str) -> Result<(PathBuf, (u32, u32)), String> {
    let shot = screen
        .video
        .screen()
        .ok_or("the host has no mode to show (no SITUATION_UPDATE)")?;
    std::fs::create_dir_all(&screen.dir).map_err(|e| format!("{}: {e}", screen.dir.display()))?;
    let path = screen.dir.join(name);
    shot.write_png(&path)
        .map_err(|e| format!("{}: {e}", path.display()))?;
    Ok((absolute(&path), (shot.width, shot.height)))
}

fn absolute(path: &Path) -> PathBuf {
    std::path::absolute(path).unwrap_or_else(|_| path.to_path_buf())
}

/// Raw HID coordinate (0..=32767) that the guest scales back to pixel `p` of `size` pixels.
fn to_raw(p: u32, size: u32) -> u16 {
    let span = u64::from(size.max(2) - 1);
    ((u64::from(p) * 32767).div_ceil(span)).min(32767) as u16
}

// ---------------------------------------------------------------------------------------------

/// Runs the section on the shared `bus`; `versions` are what the caller's drivers negotiated
/// (the integration services, the disk), shown on the status screen next to the offers.
pub fn run<'b, T: Transport, H: Hal>(
    n: &mut Narrator<'_>,
    host: &mut MockVmbusHost,
    bus: &'b Vmbus<T, H>,
    screen: &ScreenHost,
    versions: &[(DeviceClass, String)],
) -> io::Result<()> {
    n.section("Screen, keyboard and mouse: synthvid and synthhid on the shared bus")?;
    let (base, len) = screen.vram_window;
    // SAFETY: the mock's MMIO window is the range the platform reserves for the VRAM; nothing
    // else in the demo maps it.
    let window = unsafe { VramWindow::new(base, len) };
    let opened = {
        let mut waiter = BoundedWait::new(500, || {
            host.step();
        });
        Synthvid::open(bus, window, &Config::default(), &mut waiter)
    };
    let mut video: Synthvid<'b, T, H> = match opened {
        Ok(v) => v,
        Err(e) => {
            n.record("screen", Err(format!("synthvid: {e}")))?;
            return Ok(());
        }
    };
    // FEATURE_CHANGE (the host asks for DIRT) follows the mode.
    for _ in 0..4 {
        host.step();
        let _ = video.poll();
    }
    let mode = video.mode();
    let (vram_gpa, vram_len) = video.vram();
    n.say(&format!(
        "synthvid {} on VMBus {}: {} x {} at {} bpp, {} MiB of VRAM at GPA {vram_gpa:#x}{}",
        video.version(),
        bus.version().map_or_else(|| "?".into(), |v| v.to_string()),
        mode.width,
        mode.height,
        mode.depth_bits,
        vram_len >> 20,
        if video.resolutions().is_empty() {
            String::new()
        } else {
            format!(", {} resolutions offered", video.resolutions().len())
        }
    ))?;
    let dirt = video.features().is_dirt_needed != 0;

    let keyboard = {
        let mut waiter = BoundedWait::new(500, || {
            host.step();
        });
        Keyboard::open(bus, &mut waiter)
    };
    let mouse = {
        let mut waiter = BoundedWait::new(500, || {
            host.step();
        });
        Mouse::open(bus, (mode.width, mode.height), &mut waiter)
    };
    // The mouse's ACK reaches the host; from then on it sends reports.
    host.step();
    let mouse_info = mouse.as_ref().ok().map(|m| *m.info());
    n.say(&format!(
        "keyboard {}; mouse {}",
        match &keyboard {
            Ok(_) => format!("{} open", dotted(KEYBOARD_VERSION)),
            Err(e) => format!("failed: {e}"),
        },
        match &mouse_info {
            Some(i) => format!(
                "{} open (HID {:04x}:{:04x}, X {}..{}, Y {}..{})",
                dotted(MOUSE_VERSION),
                i.vendor,
                i.product,
                i.layout.x.min,
                i.layout.x.max,
                i.layout.y.min,
                i.layout.y.max
            ),
            None => format!(
                "failed: {}",
                mouse
                    .as_ref()
                    .err()
                    .map(|e| e.to_string())
                    .unwrap_or_default()
            ),
        }
    ))?;

    // The status screen.
    let mut known: Vec<(DeviceClass, String)> = versions.to_vec();
    known.push((
        DeviceClass::Video,
        format!("{} ({}x{})", video.version(), mode.width, mode.height),
    ));
    if keyboard.is_ok() {
        known.push((DeviceClass::Keyboard, dotted(KEYBOARD_VERSION)));
    }
    if mouse.is_ok() {
        known.push((DeviceClass::Mouse, dotted(MOUSE_VERSION)));
    }
    let status = gather(host, bus, &known, &video, dirt);
    draw_status(&mut video.framebuffer(), &status);
    let flushed = flush(host, &mut video);
    let shot = flushed.and_then(|rects| save(screen, STATUS_PNG).map(|s| (rects, s)));
    let screen_ok = match shot {
        Ok((rects, (path, (w, h)))) => {
            n.say(&format!(
                "guest drew the status screen ({} devices listed) and flushed {}",
                status.devices.len(),
                if dirt {
                    format!(
                        "{rects} dirty rectangle{} as DIRT",
                        if rects == 1 { "" } else { "s" }
                    )
                } else {
                    "nothing: the host did not ask for DIRT and reads the VRAM itself".into()
                }
            ))?;
            n.say(&format!(
                "host saved its view of the screen: {}",
                path.display()
            ))?;
            n.record(
                "screen",
                Ok(format!(
                    "synthvid {}, {w} x {h}; screenshot {}",
                    video.version(),
                    path.display()
                )),
            )?
        }
        Err(e) => n.record("screen", Err(e))?,
    };

    // The host types a line; the guest echoes it.
    let mut keyboard = match keyboard {
        Ok(k) => Some(k),
        Err(e) => {
            n.record("keyboard", Err(format!("synthhid keyboard: {e}")))?;
            None
        }
    };
    if let Some(kb) = keyboard.as_mut() {
        let missing = screen.keyboard.type_str(TYPED_LINE);
        // Keypad Enter: the same make code as Enter with the E0 prefix.
        screen.keyboard.tap(ENTER, true);
        n.say(&format!(
            "host types \"{TYPED_LINE}\" and keypad Enter (E0 1C){}",
            if missing.is_empty() {
                String::new()
            } else {
                format!(" (no key for {missing:?})")
            }
        ))?;
        let result = type_line(host, &mut video, kb);
        match result {
            Ok(typed) => {
                n.say(&format!(
                    "guest decoded {} keystrokes ({} with the E0 prefix, {} Shift presses) into \
                     \"{}\"{}",
                    typed.events,
                    typed.extended,
                    typed.shifts,
                    typed.line,
                    if typed.entered {
                        ", ended by keypad Enter"
                    } else {
                        "; no Enter arrived"
                    }
                ))?;
                n.record(
                    "keyboard",
                    if typed.entered && typed.line == TYPED_LINE {
                        Ok(format!(
                            "decoded \"{}\" ({} keystrokes, keypad Enter)",
                            typed.line, typed.events
                        ))
                    } else {
                        Err(format!(
                            "decoded \"{}\"{}",
                            typed.line,
                            if typed.entered { "" } else { " without Enter" }
                        ))
                    },
                )?;
            }
            Err(e) => {
                n.record("keyboard", Err(e))?;
            }
        }
    }

    // The host moves the mouse to the button and clicks it.
    let mut mouse = match mouse {
        Ok(m) => Some(m),
        Err(e) => {
            n.record("mouse", Err(format!("synthhid mouse: {e}")))?;
            None
        }
    };
    if let Some(m) = mouse.as_mut() {
        let target = CLICK;
        for i in 1..=MOUSE_MOVES {
            let along = |a: u32, b: u32| {
                let (a, b) = (i64::from(a), i64::from(b));
                (a + (b - a) * i64::from(i) / i64::from(MOUSE_MOVES + 1)) as u32
            };
            let (x, y) = (
                along(MOUSE_START.0, target.0),
                along(MOUSE_START.1, target.1),
            );
            screen
                .mouse
                .move_to(to_raw(x, mode.width), to_raw(y, mode.height));
        }
        let raw = (to_raw(target.0, mode.width), to_raw(target.1, mode.height));
        screen.mouse.click(0, raw.0, raw.1);
        n.say(&format!(
            "host moves the mouse in {MOUSE_MOVES} reports and left-clicks at HID ({}, {}) \
             of 0..32767",
            raw.0, raw.1
        ))?;
        match follow_mouse(host, &mut video, m) {
            Ok(seen) => {
                let click = seen.click;
                n.say(&format!(
                    "guest got {} reports; its cursor followed them{}",
                    seen.reports,
                    match click {
                        Some((x, y)) => format!(
                            " to a left click at pixel ({x}, {y}), {} the button",
                            if seen.on_button { "on" } else { "outside" }
                        ),
                        None => ", but no click arrived".into(),
                    }
                ))?;
                n.record(
                    "mouse",
                    match click {
                        Some((x, y)) if seen.on_button => Ok(format!(
                            "left click at ({x}, {y}) pressed the on-screen button"
                        )),
                        Some((x, y)) => Err(format!("click at ({x}, {y}) missed the button")),
                        None => Err(format!("{} reports, no click", seen.reports)),
                    },
                )?;
            }
            Err(e) => {
                n.record("mouse", Err(e))?;
            }
        }
    }

    if screen_ok {
        match save(screen, TYPED_PNG) {
            Ok((path, _)) => n.say(&format!(
                "host saved the screen with the typed line and the click: {}",
                path.display()
            ))?,
            Err(e) => n.say(&format!("second screenshot failed: {e}"))?,
        }
    }

    // The OS stops the devices: close the channels.
    let mut waiter = BoundedWait::new(500, || {
        host.step();
    });
    let mut freed = video.close(&mut waiter).is_freed();
    if let Some(kb) = keyboard {
        freed &= kb.close(&mut waiter).is_freed();
    }
    if let Some(m) = mouse {
        freed &= m.close(&mut waiter).is_freed();
    }
    if !freed {
        n.say("a screen or input channel's ring memory could not be freed (leaked)")?;
    }
    Ok(())
}

/// What goes on the status screen.
fn gather<T: Transport, H: Hal>(
    host: &MockVmbusHost,
    bus: &Vmbus<T, H>,
    known: &[(DeviceClass, String)],
    video: &Synthvid<'_, T, H>,
    dirt: bool,
) -> Status {
    let version_of = |class: DeviceClass| {
        known
            .iter()
            .find(|(c, _)| *c == class)
            .map(|(_, v)| v.clone())
    };
    let mut devices: Vec<DeviceRow> = bus.with_offers(|t| {
        t.iter()
            .filter(|o| o.subchannel_index == 0)
            .map(|o| {
                let version = version_of(o.class);
                DeviceRow {
                    relid: o.relid.to_string(),
                    name: o.class.short_name(),
                    state: if version.is_some() { "open" } else { "offered" },
                    version: version.unwrap_or_else(|| "-".into()),
                }
            })
            .collect()
    });
    // Devices whose drivers ran earlier but whose offers are gone.
    for (class, version) in known {
        if !devices.iter().any(|d| d.name == class.short_name()) {
            devices.push(DeviceRow {
                relid: "-".into(),
                name: class.short_name(),
                version: version.clone(),
                state: "rescinded",
            });
        }
    }
    let mode = video.mode();
    let (gpa, len) = video.vram();
    let negotiated = bus.negotiated();
    Status {
        release: format!(
            "{} ({})",
            release_name(host.release()),
            host.release().name()
        ),
        vmbus: negotiated.map_or_else(
            || "not connected".into(),
            |n| {
                format!(
                    "{} (messages to connection {:#x})",
                    n.version, n.message_connection_id
                )
            },
        ),
        video: format!(
            "synthvid {}, {} x {}, {} bpp",
            video.version(),
            mode.width,
            mode.height,
            mode.depth_bits
        ),
        vram: format!("{} MiB at GPA {gpa:#x}", len >> 20),
        updates: if dirt {
            "DIRT rectangles (the host asked for them)".into()
        } else {
            "none needed: the host reads the VRAM".into()
        },
        devices,
    }
}

/// Flushes the damage and lets the host take it in; returns the rectangles sent.
fn flush<T: Transport, H: Hal>(
    host: &mut MockVmbusHost,
    video: &mut Synthvid<'_, T, H>,
) -> Result<usize, String> {
    let rects = video.flush().map_err(|e| format!("flush: {e}"))?;
    host.step();
    video.poll().map_err(|e| e.to_string())?;
    Ok(rects)
}

/// What the guest made of the keystrokes.
struct Typed {
    line: String,
    entered: bool,
    events: u32,
    extended: u32,
    shifts: u32,
}

fn type_line<T: Transport, H: Hal>(
    host: &mut MockVmbusHost,
    video: &mut Synthvid<'_, T, H>,
    kb: &mut Keyboard<'_, T, H>,
) -> Result<Typed, String> {
    let mut decoder = Set1Decoder::new(Us104Key);
    let mut typed = Typed {
        line: String::new(),
        entered: false,
        events: 0,
        extended: 0,
        shifts: 0,
    };
    for _ in 0..INPUT_ROUNDS {
        host.step();
        video.poll().map_err(|e| e.to_string())?;
        let before = typed.line.chars().count();
        let mut entered = false;
        kb.poll(|e| {
            typed.events += 1;
            if e.flags.contains(KeyFlags::E0) {
                typed.extended += 1;
            }
            if e.make_code == u16::from(LEFT_SHIFT) && !e.is_break() {
                typed.shifts += 1;
            }
            match decoder.feed(&e) {
                Some(DecodedKey::Unicode('\n')) => entered = true,
                Some(DecodedKey::Unicode('\x08')) => {
                    typed.line.pop();
                }
                Some(DecodedKey::Unicode(c)) if !c.is_control() && !entered => typed.line.push(c),
                _ => {}
            }
        })
        .map_err(|e| format!("keyboard: {e}"))?;
        if typed.line.chars().count() != before || entered {
            typed.entered |= entered;
            let mut fb = video.framebuffer();
            draw_line(&mut fb, &typed.line, typed.entered);
            if typed.entered {
                key_status(
                    &mut fb,
                    &format!(
                        "keypad Enter (E0 1C) ended the line: {} characters from {} keystrokes",
                        typed.line.chars().count(),
                        typed.events
                    ),
                    GOOD,
                );
            }
            flush(host, video)?;
        }
        if typed.entered {
            break;
        }
    }
    Ok(typed)
}

/// What the guest saw of the mouse.
struct Seen {
    reports: u32,
    click: Option<(u32, u32)>,
    on_button: bool,
}

fn follow_mouse<T: Transport, H: Hal>(
    host: &mut MockVmbusHost,
    video: &mut Synthvid<'_, T, H>,
    mouse: &mut Mouse<'_, T, H>,
) -> Result<Seen, String> {
    let mut cursor = Cursor::default();
    let mut seen = Seen {
        reports: 0,
        click: None,
        on_button: false,
    };
    let mut held = false;
    for _ in 0..INPUT_ROUNDS {
        host.step();
        video.poll().map_err(|e| e.to_string())?;
        let mut events = Vec::new();
        mouse
            .poll(|e| events.push(e))
            .map_err(|e| format!("mouse: {e}"))?;
        if events.is_empty() {
            if seen.click.is_some() {
                break;
            }
            continue;
        }
        let mut fb = video.framebuffer();
        for e in events {
            seen.reports += 1;
            cursor.hide(&mut fb);
            let p = Point::new(e.x as i32, e.y as i32);
            let was_held = held;
            held = e.buttons.left();
            if held && !was_held {
                seen.click = Some((e.x, e.y));
                seen.on_button = BUTTON.contains(p);
                if seen.on_button {
                    draw_button(&mut fb, true);
                }
                mouse_status(
                    &mut fb,
                    &format!(
                        "left click at ({}, {}): {}",
                        e.x,
                        e.y,
                        if seen.on_button {
                            "on the button"
                        } else {
                            "not on the button"
                        }
                    ),
                    if seen.on_button { GOOD } else { WARN },
                );
            } else if !held && !was_held && !BUTTON.offset(6).contains(p) {
                // A trail of where the reports put the pointer.
                fill(&mut fb, Rectangle::with_center(p, Size::new(7, 7)), TRAIL);
            }
            cursor.show(&mut fb, e.x, e.y);
        }
        flush(host, video)?;
    }
    Ok(seen)
}
