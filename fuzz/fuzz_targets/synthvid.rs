//! Synthetic video against a hostile host: the pure parts (`parse_host_message` on arbitrary
//! bytes, the damage list, rectangle clipping), and the driver opened against a host that
//! answers VERSION_REQUEST, RESOLUTION_REQUEST and VRAM_LOCATION correctly or not (refusing,
//! answering another version, lying about the resolution count, acknowledging another
//! context, never answering), then draws, flushes damage, changes mode and moves the pointer
//! while the host sends FEATURE_CHANGE and arbitrary messages, rewrites the rings or
//! rescinds.
//!
//! Invariants beyond "no panic": parsed slices lie where the headers say; every stored damage
//! rectangle set covers what was added; every guest message is pipe-framed with consistent
//! sizes, the situation announces a mode that fits the VRAM with the version's depth, DIRT
//! names only rectangles inside the screen and covers every pixel drawn since the last flush
//! (when the host wants DIRT); pixels drawn are in the VRAM where the mode says.
#![no_main]

use hyperv_guest_fuzz::dev::{
    self, Bus, Chaos, DevHal, Devices, HostPacket, HostWait, MMIO_GPA, Step,
};
use hyperv_guest_fuzz::{Input, trace};
use libfuzzer_sys::fuzz_target;
use std::cell::RefCell;
use std::rc::Rc;
use synthvid::protocol::{HostMessage, msg};
use synthvid::{
    Config, DirtyRects, PointerShape, Rect, Synthvid, SynthvidVersion, VramWindow,
    parse_host_message,
};
use vmbus_guest::protocol::DeviceClass;
use vmbus_guest::protocol::pipe::pipe_message;
use vmbus_guest::{ChannelConfig, Released};

fuzz_target!(|data: &[u8]| {
    let mut inp = Input::new(data);
    match inp.u8() % 4 {
        0 => pure(&mut inp),
        _ => device(inp),
    }
});

const VRAM: usize = 1 << 20;

fn le32(b: &[u8], at: usize) -> u32 {
    b.get(at..at + 4)
        .map_or(0, |s| u32::from_le_bytes(s.try_into().unwrap()))
}

fn is_at(outer: &[u8], inner: &[u8], at: usize) -> bool {
    inner.is_empty()
        || inner.as_ptr() as usize == outer.as_ptr() as usize + at
            && at + inner.len() <= outer.len()
}

fn covered(rects: &[Rect], x: u32, y: u32) -> bool {
    rects
        .iter()
        .any(|r| x >= r.x && y >= r.y && x < r.right() && y < r.bottom())
}

fn pure(inp: &mut Input<'_>) {
    for _ in 0..6 {
        if inp.is_empty() {
            break;
        }
        let b = inp.bytes(1200);
        if let Ok(m) = parse_host_message(&b) {
            let body = pipe_message(&b).expect("parsed without a pipe message");
            assert!(body.len() >= 8);
            let p = &body[8..];
            match m {
                HostMessage::Version {
                    version, accepted, ..
                } => {
                    assert_eq!(version.0, le32(p, 0));
                    assert_eq!(accepted, p[4] != 0);
                }
                HostMessage::Resolutions {
                    entries,
                    default_index,
                } => {
                    assert_eq!(entries.len(), usize::from(p[128]));
                    assert_eq!(default_index, p[129]);
                    let e: &[u8] = zerocopy::IntoBytes::as_bytes(entries);
                    assert!(is_at(&b, e, 16 + 131), "resolutions misplaced");
                }
                HostMessage::Other { kind, payload } => {
                    assert_eq!(kind, le32(body, 0));
                    assert!(is_at(&b, payload, 16));
                    assert_eq!(payload.len(), body.len() - 8);
                }
                HostMessage::VramAck(c) | HostMessage::SituationAck(c) => {
                    assert_eq!(c, u64::from(le32(p, 0)) | u64::from(le32(p, 4)) << 32)
                }
                _ => {}
            }
        }
    }
    // Damage: whatever is added stays covered; at most K rectangles.
    let mut d: DirtyRects<4> = DirtyRects::new();
    let mut added: Vec<Rect> = Vec::new();
    let (w, h) = (1 + u32::from(inp.u8() % 40), 1 + u32::from(inp.u8() % 40));
    for _ in 0..16 {
        if inp.is_empty() {
            break;
        }
        if inp.u8().is_multiple_of(8) {
            d.clear();
            added.clear();
            continue;
        }
        let r = Rect::new(
            u32::from(inp.u8() % 48),
            u32::from(inp.u8() % 48),
            u32::from(inp.u8() % 20),
            u32::from(inp.u8() % 20),
        );
        let c = r.clip(w, h);
        assert!(
            c.right() <= w && c.bottom() <= h,
            "{r:?} clipped to {c:?} off {w}x{h}"
        );
        assert!(c.is_empty() || r.contains(&c));
        d.add(c);
        added.push(c);
        assert!(d.as_slice().len() <= 4);
        for a in &added {
            for y in a.y..a.bottom() {
                for x in a.x..a.right() {
                    assert!(
                        covered(d.as_slice(), x, y),
                        "({x},{y}) of {a:?} lost: {:?}",
                        d.as_slice()
                    );
                }
            }
        }
        for s in d.as_slice() {
            assert!(!s.is_empty());
        }
    }
}

/// The video host.
struct Sim<'a> {
    dev: Devices,
    inp: Input<'a>,
    /// Versions the host accepts.
    accept: Vec<SynthvidVersion>,
    resolutions: Vec<(u16, u16)>,
    default_index: u8,
    version: Option<SynthvidVersion>,
    /// Width, height, depth of the last SITUATION_UPDATE.
    mode: Option<(u32, u32, u8)>,
    /// DIRT rectangles received since the target last looked.
    dirt: Vec<Rect>,
    /// The host answered something the driver may have taken in a way the host does not
    /// know (arbitrary bytes, rewritten rings).
    loose: bool,
}

impl Sim<'_> {
    fn send(&mut self, kind: u32, payload: &[u8]) {
        let mut m = synthvid::protocol::headers(kind, payload.len()).to_vec();
        m.extend_from_slice(payload);
        let tid = self.inp.u64();
        self.dev.send(
            1,
            HostPacket::InBand {
                tid,
                completion: false,
                payload: m,
            },
        );
    }

    fn on_guest(&mut self, p: &dev::GuestPacket) {
        if !p.trusted {
            return;
        }
        assert_eq!(p.packet_type, 6, "packet type");
        assert!(!p.completion_requested, "synthvid asks for a completion");
        let body = pipe_message(&p.payload).expect("synthvid message pipe-framed");
        assert!(body.len() >= 8, "no synthvid header");
        assert_eq!(le32(body, 4) as usize, body.len(), "synthvid size field");
        let kind = le32(body, 0);
        let b = &body[8..];
        let d = self.inp.u8();
        let hostile = d >= 0xC0;
        trace!(
            "  guest sends {kind} ({} bytes){}",
            b.len(),
            if hostile { " hostile" } else { "" }
        );
        match kind {
            msg::VERSION_REQUEST => {
                let v = SynthvidVersion(le32(b, 0));
                let ok = self.accept.contains(&v);
                let mut answer = v.0;
                let mut accepted = u8::from(ok);
                if hostile {
                    self.loose = true;
                    match d % 4 {
                        0 => return,
                        1 => answer = self.inp.u32(),
                        2 => accepted = self.inp.u8(),
                        _ => {
                            let junk = self.inp.bytes(40);
                            let kind = self.inp.u32() % 20;
                            self.send(kind, &junk);
                        }
                    }
                }
                if answer == v.0 && accepted != 0 {
                    self.version = Some(v);
                }
                let mut r = answer.to_le_bytes().to_vec();
                r.extend_from_slice(&[accepted, 1]);
                self.send(msg::VERSION_RESPONSE, &r);
            }
            msg::RESOLUTION_REQUEST => {
                assert!(self.version.is_some_and(|v| v.has_resolution_list()) || self.loose);
                let mut r = vec![0u8; 128];
                let mut count = self.resolutions.len() as u8;
                if hostile {
                    self.loose = true;
                    if d.is_multiple_of(2) {
                        return;
                    }
                    count = self.inp.u8();
                }
                r.extend_from_slice(&[count, self.default_index, 0]);
                for (w, h) in &self.resolutions {
                    r.extend_from_slice(&w.to_le_bytes());
                    r.extend_from_slice(&h.to_le_bytes());
                }
                self.send(msg::RESOLUTION_RESPONSE, &r);
            }
            msg::VRAM_LOCATION => {
                assert_eq!(b.len(), 17, "VRAM_LOCATION size");
                let ctx = u64::from(le32(b, 0)) | u64::from(le32(b, 4)) << 32;
                let gpa = u64::from(le32(b, 9)) | u64::from(le32(b, 13)) << 32;
                assert_eq!((b[8], gpa, ctx), (1, MMIO_GPA, MMIO_GPA), "VRAM location");
                let mut ack = ctx;
                if hostile {
                    self.loose = true;
                    if d.is_multiple_of(2) {
                        return;
                    }
                    ack = self.inp.u64();
                }
                self.send(msg::VRAM_LOCATION_ACK, &ack.to_le_bytes());
            }
            msg::SITUATION_UPDATE => {
                assert_eq!(b.len(), 27, "SITUATION_UPDATE size");
                let o = &b[9..];
                let (active, offset, depth) = (o[0], le32(o, 1), o[5]);
                let (w, h, pitch) = (le32(o, 6), le32(o, 10), le32(o, 14));
                assert_eq!(
                    (b[8], active, offset),
                    (1, 1, 0),
                    "one active output at offset 0"
                );
                if let (Some(v), false) = (self.version, self.loose) {
                    assert_eq!(depth, v.depth_bits(), "depth of version {v}");
                }
                let bpp = u32::from(depth / 8);
                assert_eq!(pitch, w * bpp, "pitch");
                assert!(
                    w > 0 && h > 0 && u64::from(pitch) * u64::from(h) <= VRAM as u64,
                    "{w}x{h} over the VRAM"
                );
                self.mode = Some((w, h, depth));
                if hostile {
                    self.send(msg::SITUATION_UPDATE_ACK, &0u64.to_le_bytes());
                }
            }
            msg::POINTER_POSITION => {
                assert_eq!(b.len(), 10);
                assert_eq!(b[1], 0, "video output");
            }
            msg::POINTER_SHAPE => {
                assert!(b.len() >= 18);
                let (w, h, hx, hy) = (le32(b, 2), le32(b, 6), le32(b, 10), le32(b, 14));
                assert_eq!((b[0], b[1]), (0xFF, 1), "complete ARGB shape");
                assert!((1..=96).contains(&w) && (1..=96).contains(&h) && hx < w && hy < h);
                assert_eq!(b.len(), 18 + (w * h * 4) as usize, "shape bytes");
            }
            msg::DIRT => {
                let n = usize::from(b[1]);
                assert_eq!(b[0], 0, "video output");
                assert!(n >= 1, "empty DIRT");
                assert_eq!(b.len(), 2 + 16 * n, "DIRT size");
                let (mw, mh, _) = self.mode.expect("DIRT before any mode");
                for r in b[2..].chunks_exact(16) {
                    let (x1, y1, x2, y2) = (le32(r, 0), le32(r, 4), le32(r, 8), le32(r, 12));
                    assert!(
                        x1 < x2 && y1 < y2 && x2 <= mw && y2 <= mh,
                        "DIRT ({x1},{y1})-({x2},{y2}) off {mw}x{mh}"
                    );
                    self.dirt.push(Rect::new(x1, y1, x2 - x1, y2 - y1));
                }
            }
            other => panic!("synthvid sent message {other}"),
        }
    }
}

impl Step for Sim<'_> {
    fn step(&mut self) {
        while let Some(p) = self.dev.recv(1) {
            self.on_guest(&p);
        }
        self.dev.flush(1);
    }
}

fn device(mut inp: Input<'_>) {
    let answer_teardown = !inp.u8().is_multiple_of(8);
    let version_index = inp.below(8);
    let all = [
        SynthvidVersion::WIN10,
        SynthvidVersion::WIN8,
        SynthvidVersion::WIN7,
    ];
    let accept: Vec<SynthvidVersion> = all
        .iter()
        .copied()
        .filter(|_| !inp.u8().is_multiple_of(4))
        .collect();
    let n = inp.below(6);
    let resolutions: Vec<(u16, u16)> = (0..n).map(|_| (inp.u16() % 80, inp.u16() % 60)).collect();
    let default_index = inp.u8() % 8;
    let config = Config {
        channel: ChannelConfig {
            outbound_pages: 2 + inp.below(6),
            inbound_pages: 2 + inp.below(6),
            ..ChannelConfig::default()
        },
        resolution: if inp.bool() {
            resolutions
                .get(inp.below(n.max(1)))
                .map(|&(w, h)| (u32::from(w), u32::from(h)))
        } else {
            None
        },
        hide_pointer: inp.bool(),
        send_dirt_unrequested: inp.bool(),
        clear_color: inp.u32(),
    };
    let w = dev::world(
        vec![dev::offer(DeviceClass::Video, 1, 0, 0, 1)],
        answer_teardown,
    );
    let hal = DevHal::with_mmio(&w, VRAM);
    let bus: Bus = dev::connect(&w, hal.clone(), version_index);
    let sim = Rc::new(RefCell::new(Sim {
        dev: Devices::new(w.clone()),
        inp,
        accept,
        resolutions,
        default_index,
        version: None,
        mode: None,
        dirt: Vec::new(),
        loose: false,
    }));
    let mut waiter = HostWait::new(sim.clone(), 6);
    // SAFETY: the window is DevHal's MMIO memory, used by nothing else.
    let window = unsafe { VramWindow::new(MMIO_GPA, VRAM) };
    let mut video: Synthvid<'_, _, _, 4> = match Synthvid::open(&bus, window, &config, &mut waiter)
    {
        Ok(v) => v,
        Err(e) => {
            trace!("open: {e}");
            return;
        }
    };
    sim.borrow_mut().step();
    {
        let s = sim.borrow();
        if !s.loose {
            assert_eq!(Some(video.version()), s.version);
            let m = video.mode();
            assert_eq!(
                s.mode,
                Some((m.width, m.height, m.depth_bits)),
                "announced mode"
            );
        }
    }
    // Damage drawn since the last flush, clipped.
    let mut damage: Vec<Rect> = vec![video.mode().screen()];
    let mut rescinded = false;
    for _ in 0..48 {
        let op = {
            let mut s = sim.borrow_mut();
            if s.inp.is_empty() {
                break;
            }
            s.inp.u8() % 11
        };
        trace!("op {op}");
        let mode = video.mode();
        match op {
            0 | 1 => {
                let (r, color) = {
                    let mut s = sim.borrow_mut();
                    let i = &mut s.inp;
                    (
                        Rect::new(
                            u32::from(i.u8() % 90),
                            u32::from(i.u8() % 70),
                            u32::from(i.u8() % 40),
                            u32::from(i.u8() % 40),
                        ),
                        i.u32(),
                    )
                };
                let mut fb = video.framebuffer();
                fb.fill(r, color);
                let c = r.clip(mode.width, mode.height);
                if !c.is_empty() {
                    let (x, y) = (c.right() - 1, c.bottom() - 1);
                    let want = if mode.depth_bits == 16 {
                        synthvid::framebuffer::from_rgb565(synthvid::framebuffer::to_rgb565(color))
                    } else {
                        color & 0xFF_FFFF
                    };
                    assert_eq!(fb.pixel(x, y), Some(want), "pixel read back");
                    let o = y as usize * mode.stride as usize + x as usize * mode.bytes_per_pixel();
                    let vram = hal.mmio_read(o, 4);
                    let got = if mode.depth_bits == 16 {
                        synthvid::framebuffer::from_rgb565(u16::from_le_bytes([vram[0], vram[1]]))
                    } else {
                        le32(&vram, 0) & 0xFF_FFFF
                    };
                    assert_eq!(got, want, "pixel ({x},{y}) in the VRAM");
                    damage.push(c);
                }
                for d in &damage {
                    for (x, y) in [(d.x, d.y), (d.right() - 1, d.bottom() - 1)] {
                        assert!(
                            covered(video.dirty(), x, y),
                            "damage ({x},{y}) not recorded"
                        );
                    }
                }
            }
            2 => {
                let (x, y, color) = {
                    let mut s = sim.borrow_mut();
                    (
                        u32::from(s.inp.u8() % 90),
                        u32::from(s.inp.u8() % 70),
                        s.inp.u32(),
                    )
                };
                video.framebuffer().set_pixel(x, y, color);
                if x < mode.width && y < mode.height {
                    damage.push(Rect::new(x, y, 1, 1));
                }
            }
            3 => {
                let (lines, color) = {
                    let mut s = sim.borrow_mut();
                    (i32::from(s.inp.u8() as i8), s.inp.u32())
                };
                video.framebuffer().scroll(lines, color);
                if lines != 0 {
                    damage.push(mode.screen());
                }
            }
            4 => {
                let before: Vec<Rect> = video.dirty().to_vec();
                let wanted = video.features().is_dirt_needed != 0 || config.send_dirt_unrequested;
                let r = video.flush();
                trace!("  flush {r:?}");
                sim.borrow_mut().step();
                let dirt = std::mem::take(&mut sim.borrow_mut().dirt);
                if r.is_ok() {
                    if wanted && !before.is_empty() && !sim.borrow().loose {
                        for d in &damage {
                            for (x, y) in [(d.x, d.y), (d.right() - 1, d.bottom() - 1)] {
                                assert!(
                                    covered(&dirt, x, y),
                                    "drawn pixel ({x},{y}) missing from DIRT {dirt:?}"
                                );
                            }
                        }
                    }
                    damage.clear();
                    assert!(video.dirty().is_empty());
                }
            }
            5 => {
                let r = video.poll();
                trace!("  poll {r:?}");
                sim.borrow_mut().step();
            }
            6 => {
                let mut s = sim.borrow_mut();
                match s.inp.u8() % 3 {
                    0 => {
                        let f: Vec<u8> = (0..4).map(|_| s.inp.u8() % 2).collect();
                        s.send(msg::FEATURE_CHANGE, &f);
                    }
                    1 => {
                        let kind = s.inp.u32() % 18;
                        let p = s.inp.bytes(200);
                        s.send(kind, &p);
                        s.loose = true;
                    }
                    _ => {
                        let Sim { dev, inp, .. } = &mut *s;
                        match dev::chaos(dev, inp, 1) {
                            Chaos::Rescind => {
                                rescinded = true;
                                drop(s);
                                bus.poll();
                            }
                            _ => s.loose = true,
                        }
                    }
                }
            }
            7 => {
                let (w, h) = {
                    let mut s = sim.borrow_mut();
                    let i = s.inp.below(8);
                    match s.resolutions.get(i).copied() {
                        Some((w, h)) if s.inp.bool() => (u32::from(w), u32::from(h)),
                        _ => (u32::from(s.inp.u16() % 200), u32::from(s.inp.u16() % 200)),
                    }
                };
                if video.set_resolution(w, h, 0).is_ok() {
                    assert_eq!((video.mode().width, video.mode().height), (w, h));
                    damage.clear();
                    damage.push(video.mode().screen());
                }
                sim.borrow_mut().step();
            }
            8 => {
                let mut s = sim.borrow_mut();
                let (x, y, vis) = (s.inp.u32() as i32, s.inp.u32() as i32, s.inp.bool());
                drop(s);
                let _ = video.set_pointer_position(x, y, vis);
            }
            9 => {
                let (w, h, hx, hy, len) = {
                    let mut s = sim.borrow_mut();
                    let i = &mut s.inp;
                    (
                        u32::from(i.u8()),
                        u32::from(i.u8()),
                        u32::from(i.u8() % 4),
                        u32::from(i.u8() % 4),
                        i.below(40000),
                    )
                };
                let argb = vec![
                    0x80u8;
                    if len % 2 == 0 {
                        (w * h * 4) as usize
                    } else {
                        len
                    }
                ];
                let shape = PointerShape {
                    width: w,
                    height: h,
                    hot_x: hx,
                    hot_y: hy,
                    argb: &argb,
                };
                let ok = w >= 1
                    && h >= 1
                    && w <= 96
                    && h <= 96
                    && hx < w
                    && hy < h
                    && argb.len() == (w * h * 4) as usize;
                let r = video.set_pointer_shape(&shape);
                if !ok {
                    assert!(r.is_err(), "a bad pointer shape accepted");
                }
                if video.pointer_shape_wanted() {
                    let _ = video.hide_pointer();
                }
            }
            _ => sim.borrow_mut().step(),
        }
    }
    let released = video.close(&mut waiter);
    if answer_teardown && !rescinded {
        assert_eq!(released, Released::Freed);
    }
}
