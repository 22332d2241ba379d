//! The status screen: the synthetic video device (synthvid) with its VRAM placed where the
//! VM generation puts the framebuffer, and the kernel's status drawn with embedded-graphics.
//!
//! VRAM placement: on a Generation 1 VM, BAR 0 of the legacy PCI video device; on a
//! Generation 2 VM (no PCI), the UEFI GOP framebuffer GRUB reported, which lies in the VMBus
//! MMIO range (Linux reuses it the same way). Either way the window is identity mapped.

use embedded_graphics::mono_font::MonoTextStyle;
use embedded_graphics::mono_font::ascii::{FONT_9X15, FONT_9X15_BOLD};
use embedded_graphics::pixelcolor::Rgb888;
use embedded_graphics::prelude::*;
use embedded_graphics::primitives::{PrimitiveStyle, Rectangle};
use embedded_graphics::text::Text;
use synthvid::{Config, Synthvid, VramWindow};
use vmbus_guest::protocol::DeviceClass;

use crate::hyperv::{self, Bus, SECOND, Transport};
use crate::memory::KernelHal;
use crate::multiboot2::Framebuffer;
use crate::status::{Line, Status, line};
use crate::{pci, println};

const BACKGROUND: Rgb888 = Rgb888::new(0x10, 0x20, 0x40);
const TITLE: Rgb888 = Rgb888::new(0xFF, 0xC0, 0x40);
const TEXT: Rgb888 = Rgb888::new(0xE0, 0xE8, 0xF0);
const LINE_HEIGHT: i32 = 20;

/// The display and what is on it.
pub struct Screen {
    video: Synthvid<'static, Transport, KernelHal>,
    /// Baseline of the live line, as `draw` laid the screen out.
    live_y: i32,
}

/// Where the VRAM goes: (guest-physical address, bytes available there).
fn vram_window(bus: &Bus, firmware_fb: Option<Framebuffer>) -> Option<(u64, u64, &'static str)> {
    if let Some((base, size)) = pci::hyperv_video_bar() {
        return Some((base, size, "PCI video BAR 0 (Generation 1)"));
    }
    let fb = firmware_fb?;
    let offer = bus.find(DeviceClass::Video, None)?;
    let bytes = u64::from(offer.mmio_megabytes) << 20;
    Some((fb.addr, bytes, "the UEFI framebuffer (Generation 2)"))
}

impl Screen {
    /// Opens the synthetic video device and clears the screen.
    pub fn open(
        bus: &'static Bus,
        firmware_fb: Option<Framebuffer>,
        status: &mut Status,
    ) -> Option<Self> {
        if bus.find(DeviceClass::Video, None).is_none() {
            println!("screen: the host offered no synthetic video device");
            return None;
        }
        let Some((gpa, size, source)) = vram_window(bus, firmware_fb) else {
            println!("screen: no place for the VRAM (no PCI video device, no UEFI framebuffer)");
            return None;
        };
        let Ok(len) = usize::try_from(size) else {
            return None;
        };
        // SAFETY: the range is the VM's video memory (PCI BAR 0 of the Hyper-V video device,
        // or the firmware framebuffer inside the VMBus MMIO range): device memory that
        // nothing else in this kernel uses.
        let window = unsafe { VramWindow::new(gpa, len) };
        let config = Config {
            clear_color: 0x0010_2040,
            ..Config::default()
        };
        let mut waiter = hyperv::waiter(5 * SECOND);
        match Synthvid::open(bus, window, &config, &mut waiter) {
            Ok(video) => {
                let mode = video.mode();
                let (vram_gpa, vram_len) = video.vram();
                println!(
                    "screen: synthvid {:?}, {}x{} at {} bpp; VRAM {} KiB at {vram_gpa:#x}, in {source}",
                    video.version(),
                    mode.width,
                    mode.height,
                    mode.depth_bits,
                    vram_len / 1024
                );
                status.video = line(format_args!(
                    "{}x{}, synthvid {:?}",
                    mode.width,
                    mode.height,
                    video.version()
                ));
                Some(Self { video, live_y: 0 })
            }
            Err(e) => {
                println!("screen: synthvid: {e}");
                None
            }
        }
    }

    /// Answers the host's video messages; `false` if the device failed.
    pub fn poll(&mut self) -> bool {
        match self.video.poll() {
            Ok(_) => true,
            Err(e) => {
                println!("screen: synthvid stopped: {e}");
                false
            }
        }
    }

    /// Draws the status screen, with the live line (uptime, heartbeats, UTC) at the bottom,
    /// and tells the host which rectangles changed.
    pub fn draw(&mut self, status: &Status, live: &Line) {
        let mut fb = self.video.framebuffer();
        let size = Size::new(fb.width(), fb.height());
        let _ = Rectangle::new(Point::zero(), size)
            .into_styled(PrimitiveStyle::with_fill(BACKGROUND))
            .draw(&mut fb);
        let title = MonoTextStyle::new(&FONT_9X15_BOLD, TITLE);
        let text = MonoTextStyle::new(&FONT_9X15, TEXT);
        let mut y = 40;
        // Draws a line and returns its baseline.
        let mut put = |s: &str, style| {
            let _ = Text::new(s, Point::new(32, y), style).draw(&mut fb);
            y += LINE_HEIGHT;
            y - LINE_HEIGHT
        };
        put(
            "hyperv-kernel: a no_std Rust guest on Hyper-V (hyperv-guest-rs example)",
            title,
        );
        put("", text);
        put(
            &line(format_args!("host     {}", status.host.as_str())),
            text,
        );
        put(
            &line(format_args!("devices  {}", status.offers.as_str())),
            text,
        );
        for disk in &status.disks {
            put(&line(format_args!("disk     {}", disk.as_str())), text);
        }
        put(
            &line(format_args!("network  {}", status.network.as_str())),
            text,
        );
        put(
            &line(format_args!("screen   {}", status.video.as_str())),
            text,
        );
        put("", text);
        let live_y = put(live, text);
        put("", text);
        put(
            "Shut the VM down from the host (Hyper-V Manager, Stop-VM, Azure) to power it off.",
            text,
        );
        self.live_y = live_y;
        if let Err(e) = self.video.flush() {
            println!("screen: DIRT: {e}");
        }
    }

    /// Redraws only the live line.
    pub fn draw_live(&mut self, live: &Line) {
        let y = self.live_y;
        let mut fb = self.video.framebuffer();
        let _ = Rectangle::new(
            Point::new(0, y - 15),
            Size::new(fb.width(), LINE_HEIGHT as u32),
        )
        .into_styled(PrimitiveStyle::with_fill(BACKGROUND))
        .draw(&mut fb);
        let _ = Text::new(
            live,
            Point::new(32, y),
            MonoTextStyle::new(&FONT_9X15, TEXT),
        )
        .draw(&mut fb);
        if let Err(e) = self.video.flush() {
            println!("screen: DIRT: {e}");
        }
    }

    /// Closes the device.
    pub fn close(self) {
        let mut waiter = hyperv::waiter(2 * SECOND);
        let _ = self.video.close(&mut waiter);
    }
}
