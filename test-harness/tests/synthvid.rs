//! synthvid against the mock video VSP: negotiation per host generation, VRAM placement,
//! modes, pointer, dirty rectangles and a golden screenshot of a scene drawn with
//! embedded-graphics.

mod common;

use std::path::PathBuf;

use common::{Guest, assert_clean, instance, rig, step};
use embedded_graphics::mono_font::MonoTextStyle;
use embedded_graphics::mono_font::ascii::FONT_6X10;
use embedded_graphics::pixelcolor::Rgb888;
use embedded_graphics::prelude::*;
use embedded_graphics::primitives::{Circle, Line, PrimitiveStyle, Rectangle, Triangle};
use embedded_graphics::text::Text;
use synthvid::{Config, Error, PointerShape, Rect, Synthvid, SynthvidVersion, VramWindow};
use test_harness::hv::{MockHal, MockHypervisor, MockVp};
use test_harness::video::{Features, Screen, VideoConfig, VideoVsp, host_message};
use test_harness::vmbus::{HostRelease, MockVmbusHost};
use vmbus_guest::SynicTransport;

type Video<'b, const K: usize = 32> = Synthvid<'b, SynicTransport<MockVp>, MockHal, K>;

fn setup(
    release: HostRelease,
    cfg: VideoConfig,
) -> (MockHypervisor, MockVmbusHost, Guest, VideoVsp) {
    let (hv, mut host, guest) = rig(release);
    let vsp = VideoVsp::new(hv.clone(), cfg);
    host.add_device(vsp.offer(instance(7)), Box::new(vsp.clone()));
    guest.connect(&mut step(&mut host)).unwrap();
    (hv, host, guest, vsp)
}

fn window(hv: &MockHypervisor) -> VramWindow {
    let (base, len) = hv.mmio_window();
    // SAFETY: the mock's MMIO window is reserved for the VRAM and used by nothing else.
    unsafe { VramWindow::new(base, len) }
}

fn open<'b, const K: usize>(
    hv: &MockHypervisor,
    host: &mut MockVmbusHost,
    guest: &'b Guest,
    config: &Config,
) -> Result<Video<'b, K>, Error> {
    Synthvid::open(guest, window(hv), config, &mut step(host))
}

/// Lets host and guest exchange what is pending.
fn settle<const K: usize>(host: &mut MockVmbusHost, video: &mut Video<'_, K>) {
    for _ in 0..4 {
        host.step();
        video.poll().unwrap();
    }
}

fn at(x: i32, y: i32) -> Point {
    Point::new(x, y)
}

#[test]
fn win10_host_negotiates_3_5_and_places_vram() {
    let (hv, mut host, guest, vsp) = setup(HostRelease::Ws2022, VideoConfig::hyperv());
    let mut video = open::<32>(&hv, &mut host, &guest, &Config::default()).unwrap();
    settle(&mut host, &mut video);
    assert_eq!(video.version(), SynthvidVersion::WIN10);
    assert_eq!(vsp.versions_requested(), vec![0x0005_0003]);
    assert_eq!(vsp.vram_gpa(), Some(hv.mmio_window().0));
    assert_eq!(video.vram().1, 8 << 20);
    // The host's default resolution, depth 32, packed stride.
    let sit = vsp.situation().unwrap();
    assert_eq!(
        (sit.width, sit.height, sit.depth, sit.pitch),
        (1024, 768, 32, 4096)
    );
    assert_eq!(video.resolutions().len(), 5);
    // VERSION, RESOLUTION, VRAM_LOCATION, SITUATION, then the pointer hidden.
    assert_eq!(&vsp.received()[..6], &[1, 13, 3, 5, 7, 8]);
    let p = vsp.pointer();
    assert!(p.visible && p.transparent && p.shape == (1, 1));
    // FEATURE_CHANGE (V2, 132 bytes) asked for DIRT; the pointer was re-sent.
    assert_eq!(video.features().is_dirt_needed, 1);
    assert_eq!(video.stats().feature_changes, 1);
    assert_eq!(video.stats().malformed, 0);
    assert_clean(&host);
    assert!(video.close(&mut step(&mut host)).is_freed());
}

#[test]
fn win10_rs1_host_retries_a_rejected_version() {
    let cfg = VideoConfig {
        max_minor: 2,
        ..VideoConfig::hyperv()
    };
    let (hv, mut host, guest, vsp) = setup(HostRelease::Ws2016, cfg);
    let mut video = open::<32>(&hv, &mut host, &guest, &Config::default()).unwrap();
    settle(&mut host, &mut video);
    assert_eq!(video.version(), SynthvidVersion::WIN8);
    assert_eq!(vsp.versions_requested(), vec![0x0005_0003, 0x0002_0003]);
    // No resolution list below 3.5: the fallback mode.
    assert!(!vsp.received().contains(&13));
    assert_eq!(vsp.situation().unwrap().width, 1024);
    assert_clean(&host);
}

#[test]
fn newer_host_does_not_fall_back() {
    let cfg = VideoConfig {
        max_minor: 2,
        ..VideoConfig::hyperv()
    };
    let (hv, mut host, guest, vsp) = setup(HostRelease::Ws2022, cfg);
    let e = open::<32>(&hv, &mut host, &guest, &Config::default()).unwrap_err();
    assert_eq!(e, Error::VersionRejected);
    assert_eq!(vsp.versions_requested(), vec![0x0005_0003]);
    assert_clean(&host);
}

#[test]
fn win8_1_host_falls_back_to_3_0_at_16_bpp() {
    let cfg = VideoConfig {
        max_minor: 0,
        feature_change: None,
        ..VideoConfig::hyperv()
    };
    let (hv, mut host, guest, vsp) = setup(HostRelease::Ws2012R2, cfg);
    let config = Config {
        resolution: Some((800, 600)),
        ..Config::default()
    };
    let mut video = open::<32>(&hv, &mut host, &guest, &config).unwrap();
    assert_eq!(video.version(), SynthvidVersion::WIN7);
    assert_eq!(vsp.versions_requested(), vec![0x0002_0003, 0x0000_0003]);
    settle(&mut host, &mut video);
    let sit = vsp.situation().unwrap();
    assert_eq!((sit.depth, sit.pitch), (16, 1600));
    video
        .framebuffer()
        .fill(Rect::new(10, 10, 5, 5), 0x00FF_0000);
    // Without FEATURE_CHANGE the host reads the VRAM itself; no DIRT is sent.
    assert_eq!(video.flush().unwrap(), 0);
    settle(&mut host, &mut video);
    assert_eq!(vsp.dirt_messages(), 0);
    let screen = vsp.screen().unwrap();
    assert_eq!(screen.pixel(12, 12), 0x00FF_0000);
    assert_eq!(screen.pixel(2, 2), 0);
    assert_clean(&host);
}

#[test]
fn resolution_change_within_the_list() {
    let (hv, mut host, guest, vsp) = setup(HostRelease::Ws2022, VideoConfig::hyperv());
    let mut video = open::<32>(&hv, &mut host, &guest, &Config::default()).unwrap();
    settle(&mut host, &mut video);
    assert_eq!(
        video.set_resolution(1000, 700, 0),
        Err(Error::UnsupportedMode {
            width: 1000,
            height: 700
        })
    );
    video.set_resolution(1920, 1080, 0x0000_00FF).unwrap();
    assert_eq!(video.flush().unwrap(), 1);
    settle(&mut host, &mut video);
    let sit = vsp.situation().unwrap();
    assert_eq!((sit.width, sit.height, sit.pitch), (1920, 1080, 7680));
    let screen = vsp.screen().unwrap();
    assert_eq!(screen.pixel(1919, 1079), 0xFF);
    assert_clean(&host);
}

#[test]
fn pointer_shape_and_position() {
    let (hv, mut host, guest, vsp) = setup(HostRelease::Ws2022, VideoConfig::hyperv());
    let mut video = open::<32>(&hv, &mut host, &guest, &Config::default()).unwrap();
    settle(&mut host, &mut video);
    let argb = [0xFFu8; 2 * 3 * 4];
    let shape = PointerShape {
        width: 2,
        height: 3,
        hot_x: 1,
        hot_y: 1,
        argb: &argb,
    };
    video.set_pointer_shape(&shape).unwrap();
    video.set_pointer_position(100, 200, true).unwrap();
    settle(&mut host, &mut video);
    let p = vsp.pointer();
    assert_eq!(
        (p.x, p.y, p.shape, p.transparent),
        (100, 200, (2, 3), false)
    );
    let too_big = PointerShape {
        width: 97,
        height: 1,
        hot_x: 0,
        hot_y: 0,
        argb: &[0; 97 * 4],
    };
    assert_eq!(
        video.set_pointer_shape(&too_big),
        Err(Error::BadPointerShape)
    );
    // The host asks for the pointer again: the position is re-sent, the caller's shape is
    // flagged for the caller to re-send.
    vsp.send_feature_change(Features {
        dirt: true,
        pointer_position: true,
        pointer_shape: true,
        situation: true,
        v2: false,
    });
    let before = vsp.received().len();
    settle(&mut host, &mut video);
    assert!(video.pointer_shape_wanted());
    assert_eq!(&vsp.received()[before..], &[5, 7]);
    video.hide_pointer().unwrap();
    settle(&mut host, &mut video);
    assert!(vsp.pointer().transparent);
    assert_clean(&host);
}

fn draw_scene<const K: usize>(video: &mut Video<'_, K>) {
    let mut fb = video.framebuffer();
    DrawTarget::clear(&mut fb, Rgb888::new(0x10, 0x20, 0x40)).unwrap();
    Rectangle::new(at(20, 20), Size::new(200, 120))
        .into_styled(PrimitiveStyle::with_fill(Rgb888::new(0xE0, 0x60, 0x20)))
        .draw(&mut fb)
        .unwrap();
    Circle::new(at(260, 40), 100)
        .into_styled(PrimitiveStyle::with_stroke(
            Rgb888::new(0x40, 0xE0, 0x80),
            5,
        ))
        .draw(&mut fb)
        .unwrap();
    Triangle::new(at(400, 140), at(500, 30), at(600, 140))
        .into_styled(PrimitiveStyle::with_fill(Rgb888::new(0xF0, 0xF0, 0x30)))
        .draw(&mut fb)
        .unwrap();
    Line::new(at(0, 479), at(639, 160))
        .into_styled(PrimitiveStyle::with_stroke(Rgb888::WHITE, 3))
        .draw(&mut fb)
        .unwrap();
    // Partly off screen: clipped, no panic.
    Circle::new(at(600, 440), 80)
        .into_styled(PrimitiveStyle::with_fill(Rgb888::new(0x80, 0x80, 0xFF)))
        .draw(&mut fb)
        .unwrap();
    Text::new(
        "Hyper-V synthvid: hello from a no_std guest",
        at(20, 180),
        MonoTextStyle::new(&FONT_6X10, Rgb888::WHITE),
    )
    .draw(&mut fb)
    .unwrap();
    let gradient: Vec<u32> = (0..64 * 32)
        .map(|i| ((i % 64) * 4) << 16 | ((i / 64) * 8))
        .collect();
    fb.blit(20, 200, 64, &gradient);
}

fn golden(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/golden")
        .join(name)
}

#[test]
fn scene_matches_golden_and_unflushed_damage_stays_off_screen() {
    let (hv, mut host, guest, vsp) = setup(HostRelease::Ws2022, VideoConfig::hyperv());
    let config = Config {
        resolution: Some((640, 480)),
        ..Config::default()
    };
    let mut video = open::<32>(&hv, &mut host, &guest, &config).unwrap();
    settle(&mut host, &mut video);
    draw_scene(&mut video);
    assert!(video.flush().unwrap() >= 1);
    settle(&mut host, &mut video);
    let screen = vsp.screen().unwrap();
    let out = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("synthvid_scene.png");
    screen.write_png(&out).unwrap();
    let path = golden("synthvid_scene.png");
    if std::env::var_os("UPDATE_GOLDEN").is_some() {
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        screen.write_png(&path).unwrap();
    }
    let expected = Screen::read_png(&path).expect("golden image (UPDATE_GOLDEN=1 writes it)");
    assert_eq!((expected.width, expected.height), (640, 480));
    let diff = expected
        .pixels
        .iter()
        .zip(&screen.pixels)
        .filter(|(a, b)| a != b)
        .count();
    assert_eq!(
        diff,
        0,
        "{diff} pixels differ from {}; actual in {}",
        path.display(),
        out.display()
    );

    // Damage that is not flushed is in the VRAM but not on the host's screen.
    let messages = vsp.dirt_messages();
    video
        .framebuffer()
        .fill(Rect::new(500, 300, 40, 40), 0x00FF_00FF);
    settle(&mut host, &mut video);
    assert_eq!(vsp.dirt_messages(), messages);
    assert_ne!(vsp.screen().unwrap().pixel(510, 310), 0x00FF_00FF);
    assert_eq!(video.framebuffer().pixel(510, 310), Some(0x00FF_00FF));
    assert_eq!(video.dirty(), &[Rect::new(500, 300, 40, 40)]);
    assert_eq!(video.flush().unwrap(), 1);
    settle(&mut host, &mut video);
    assert_eq!(vsp.screen().unwrap().pixel(510, 310), 0x00FF_00FF);
    assert_eq!(vsp.dirt_rects().last(), Some(&(500, 300, 540, 340)));
    assert_clean(&host);
}

#[test]
fn dirt_is_split_at_255_rectangles_per_message() {
    let (hv, mut host, guest, vsp) = setup(HostRelease::Ws2022, VideoConfig::hyperv());
    let mut video = open::<300>(&hv, &mut host, &guest, &Config::default()).unwrap();
    settle(&mut host, &mut video);
    video.flush().unwrap();
    settle(&mut host, &mut video);
    let before = vsp.dirt_messages();
    let mut fb = video.framebuffer();
    for i in 0..300u32 {
        fb.set_pixel((i % 30) * 3, (i / 30) * 3, 0xFFFFFF);
    }
    assert_eq!(video.flush().unwrap(), 300);
    settle(&mut host, &mut video);
    assert_eq!(vsp.dirt_messages() - before, 2);
    assert_eq!(vsp.screen().unwrap().pixel(87, 27), 0xFFFFFF);
    // Scrolling damages the whole screen and moves the pixels.
    video.framebuffer().scroll(3, 0);
    assert_eq!(video.framebuffer().pixel(87, 24), Some(0xFFFFFF));
    assert_eq!(video.dirty(), &[Rect::new(0, 0, 1024, 768)]);
    assert_clean(&host);
}

#[test]
fn hostile_host_messages_are_dropped() {
    let (hv, mut host, guest, vsp) = setup(HostRelease::Ws2022, VideoConfig::hyperv());
    let mut video = open::<32>(&hv, &mut host, &guest, &Config::default()).unwrap();
    settle(&mut host, &mut video);
    let mut bad_pipe = host_message(9, &[1, 0, 0, 0]);
    bad_pipe[4] = 200;
    vsp.inject(bad_pipe);
    vsp.inject(vec![1, 0, 0]);
    vsp.inject(host_message(2, &[1]));
    let mut res = vec![0u8; 131];
    res[128] = 200;
    vsp.inject(host_message(14, &res));
    vsp.inject(host_message(77, &[1, 2, 3]));
    vsp.inject(host_message(0, &[]));
    // Ring padding hides truncation below 8 bytes; a pipe size that says 2 bytes does not.
    vsp.inject(host_message(9, &[1, 0]));
    settle(&mut host, &mut video);
    let s = video.stats();
    assert_eq!(s.malformed, 5, "{s:?}");
    assert_eq!(s.unexpected, 1);
    assert_eq!(s.host_errors, 1);
    // Still working.
    video.framebuffer().fill(Rect::new(0, 0, 4, 4), 0x123456);
    assert_eq!(video.flush().unwrap(), 1);
    assert_clean(&host);
}

#[test]
fn vram_window_too_small_is_an_error() {
    let (hv, mut host, guest, _vsp) = setup(HostRelease::Ws2022, VideoConfig::hyperv());
    let (base, _) = hv.mmio_window();
    // SAFETY: part of the mock's MMIO window, used by nothing else.
    let w = unsafe { VramWindow::new(base, 1 << 20) };
    let e = Video::<32>::open(&guest, w, &Config::default(), &mut step(&mut host)).unwrap_err();
    assert!(matches!(e, Error::VramWindowTooSmall { .. }), "{e:?}");
}
