//! The synthetic mouse and keyboard against a hostile host: the pure parsers (pipe framing,
//! mouse and keyboard messages, HID report descriptors and reports) on arbitrary bytes, and
//! each driver opened, negotiated and polled on a channel whose host answers the handshake
//! as the input says (correctly, late, twice, refusing, with any descriptor) and then sends
//! input reports, keystrokes and arbitrary packets, rewrites the rings or rescinds.
//!
//! Invariants beyond "no panic":
//! - parsers: every slice returned lies inside the packet at the offset and length the
//!   headers give; a parsed layout's fields fit its report; a report written per the layout
//!   decodes to the values written;
//! - mouse: events arrive in order with exactly the values of the well-formed reports sent
//!   (while nothing else was sent), scaled into the screen; the guest sends nothing after
//!   INITIAL_DEVICE_INFO_ACK;
//! - keyboard: keystrokes arrive in order with the host's make code and flags; after the
//!   handshake the guest sends only SET_LED_INDICATORS with the LEDs it was asked to set;
//! - every guest message is well framed; close frees the ring when the host confirms.
#![no_main]

use hyperv_guest_fuzz::dev::{self, Bus, Chaos, DevHal, Devices, HostPacket, HostWait, Step};
use hyperv_guest_fuzz::{Input, trace};
use libfuzzer_sys::fuzz_target;
use std::cell::RefCell;
use std::collections::VecDeque;
use std::rc::Rc;
use synthhid::protocol::{
    KbdEvent, kbd_msg, mouse_msg, parse_keyboard_message, parse_mouse_message,
};
use synthhid::report::MAX_REPORT_BYTES;
use synthhid::{KeyFlags, Keyboard, Leds, Mouse, MouseLayout, parse_descriptor};
use vmbus_guest::Released;
use vmbus_guest::protocol::DeviceClass;
use vmbus_guest::protocol::pipe::pipe_message;
use zerocopy::IntoBytes;

fuzz_target!(|data: &[u8]| {
    let mut inp = Input::new(data);
    match inp.u8() % 4 {
        0 => parsers(&mut inp),
        1 | 2 => mouse(inp),
        _ => keyboard(inp),
    }
});

/// The Hyper-V mouse's report descriptor: 5 buttons, absolute X/Y 0..=32767, a relative
/// 16-bit wheel; 7-byte reports without a report id (with the Logical Maximum where Usage
/// Maximum belongs at byte 14, as the real device has it).
const HV_MOUSE_DESCRIPTOR: [u8; 65] = [
    0x05, 0x01, 0x09, 0x02, 0xA1, 0x01, 0x09, 0x01, 0xA1, 0x00, 0x05, 0x09, 0x19, 0x01, 0x25, 0x05,
    0x15, 0x00, 0x25, 0x01, 0x95, 0x05, 0x75, 0x01, 0x81, 0x02, 0x95, 0x01, 0x75, 0x03, 0x81, 0x01,
    0x05, 0x01, 0x09, 0x30, 0x09, 0x31, 0x15, 0x00, 0x26, 0xFF, 0x7F, 0x75, 0x10, 0x95, 0x02, 0x81,
    0x02, 0x09, 0x38, 0x16, 0x01, 0x80, 0x26, 0xFF, 0x7F, 0x75, 0x10, 0x95, 0x01, 0x81, 0x06, 0xC0,
    0xC0,
];

fn le32(b: &[u8], at: usize) -> u32 {
    b.get(at..at + 4)
        .map_or(0, |s| u32::from_le_bytes(s.try_into().unwrap()))
}

/// Whether `inner` is the sub-slice `outer[at..at + inner.len()]`.
fn is_at(outer: &[u8], inner: &[u8], at: usize) -> bool {
    let o = outer.as_ptr() as usize;
    inner.as_ptr() as usize == o + at && at + inner.len() <= outer.len()
}

/// Writes `v` (its low `bits` bits) at `bit_offset` of `data`.
fn put_bits(data: &mut [u8], bit_offset: usize, bits: u32, v: u64) {
    for i in 0..bits as usize {
        let bit = (v >> i) & 1;
        let at = bit_offset + i;
        if bit != 0 {
            data[at / 8] |= 1 << (at % 8);
        } else {
            data[at / 8] &= !(1 << (at % 8));
        }
    }
}

fn check_layout(l: &MouseLayout, inp: &mut Input<'_>) {
    assert!(l.report_bytes <= MAX_REPORT_BYTES);
    for f in [Some(l.x), Some(l.y), l.wheel].into_iter().flatten() {
        assert!((1..=32).contains(&f.bits), "field of {} bits", f.bits);
        assert!(
            usize::from(f.bit_offset) + usize::from(f.bits) <= l.report_bytes * 8,
            "field {f:?} outside the {}-byte report",
            l.report_bytes
        );
    }
    if let Some((off, n)) = l.buttons {
        assert!(usize::from(off) + usize::from(n) <= MAX_REPORT_BYTES * 8);
    }
    // A report written per the layout decodes to what was written (X and Y, which come from
    // one input report and never overlap).
    let id = usize::from(l.report_id != 0);
    let mut report = inp.fill(id + l.report_bytes);
    if id == 1 {
        report[0] = l.report_id;
    }
    let (xv, yv) = (inp.u32() as u64, inp.u32() as u64);
    put_bits(
        &mut report[id..],
        l.x.bit_offset.into(),
        l.x.bits.into(),
        xv,
    );
    put_bits(
        &mut report[id..],
        l.y.bit_offset.into(),
        l.y.bits.into(),
        yv,
    );
    let want = |f: &synthhid::report::Field, v: u64| -> i32 {
        let bits = u32::from(f.bits);
        let v = v & ((1u64 << bits) - 1);
        if f.min < 0 && v & (1 << (bits - 1)) != 0 {
            (v as i64 - (1i64 << bits)) as i32
        } else {
            v as u32 as i32
        }
    };
    let raw = l
        .decode(&report)
        .unwrap_or_else(|e| panic!("a report of the layout's size does not decode: {e:?}, {l:?}"));
    assert_eq!(raw.x, want(&l.x, xv), "X of {report:02x?} per {l:?}");
    assert_eq!(raw.y, want(&l.y, yv), "Y of {report:02x?} per {l:?}");
    // Shorter reports are refused.
    if !report.is_empty() && l.report_bytes > 0 {
        assert!(l.decode(&report[..report.len() - 1]).is_err());
    }
    let other = inp.bytes(80);
    if l.decode(&other).is_ok() {
        assert!(other.len() >= id + l.report_bytes);
    }
}

fn parsers(inp: &mut Input<'_>) {
    for _ in 0..8 {
        if inp.is_empty() {
            break;
        }
        let b = inp.bytes(400);
        match pipe_message(&b) {
            Ok(body) => {
                assert_eq!(le32(&b, 0), 1);
                assert_eq!(body.len(), le32(&b, 4) as usize);
                assert!(is_at(&b, body, 8));
            }
            Err(_) => {
                assert!(b.len() < 8 || le32(&b, 0) != 1 || le32(&b, 4) as usize > b.len() - 8)
            }
        }
        match parse_mouse_message(&b) {
            Ok(synthhid::protocol::MouseMessage::DeviceInfo {
                hid,
                report_descriptor,
                ..
            }) => {
                assert_eq!(
                    report_descriptor.len(),
                    usize::from(hid.class_descriptor_length.get())
                );
                // Device info (32) and the HID descriptor's own length precede it.
                assert!(is_at(
                    &b,
                    report_descriptor,
                    16 + 32 + usize::from(hid.b_length)
                ));
                if let Ok(l) = parse_descriptor(report_descriptor) {
                    check_layout(&l, inp);
                }
            }
            Ok(synthhid::protocol::MouseMessage::InputReport(r)) => {
                assert_eq!(r.len(), le32(&b, 12) as usize);
                assert!(is_at(&b, r, 16));
                assert!(
                    16 + r.len() <= 8 + le32(&b, 4) as usize,
                    "past the pipe size"
                );
            }
            Ok(synthhid::protocol::MouseMessage::ProtocolResponse { version, .. }) => {
                assert_eq!(version, le32(&b, 16));
            }
            _ => {}
        }
        if let Ok(synthhid::protocol::KeyboardMessage::Event(e)) = parse_keyboard_message(&b) {
            assert_eq!(u32::from(e.make_code), le32(&b, 4) & 0xFFFF);
            assert_eq!(e.flags.bits(), le32(&b, 8));
        }
        if let Ok(l) = parse_descriptor(&b) {
            check_layout(&l, inp);
        }
    }
}

/// The guest's messages and what the host answers, per device.
struct Sim<'a> {
    dev: Devices,
    inp: Input<'a>,
    relid: u32,
    /// Mouse: the guest sent INITIAL_DEVICE_INFO_ACK. Keyboard: the host answered
    /// PROTOCOL_REQUEST.
    done: bool,
    keyboard: bool,
    /// The descriptor the host sent is the Hyper-V one.
    standard: bool,
    /// LED values the guest may send (set_leds calls not yet seen by the host).
    leds: VecDeque<u16>,
}

impl Sim<'_> {
    fn mouse_packet(&mut self, p: &dev::GuestPacket) {
        assert!(
            !self.done,
            "the mouse sent {:02x?} after INITIAL_DEVICE_INFO_ACK",
            p.payload
        );
        let body = pipe_message(&p.payload).expect("mouse message pipe-framed");
        assert!(body.len() >= 8, "mouse message without synthhid header");
        let (kind, size) = (le32(body, 0), le32(body, 4) as usize);
        assert_eq!(size + 8, body.len(), "synthhid size");
        let relid = self.relid;
        match kind {
            mouse_msg::PROTOCOL_REQUEST => {
                assert_eq!(le32(body, 8), synthhid::protocol::MOUSE_VERSION);
                let d = self.inp.u8();
                trace!("  mouse PROTOCOL_REQUEST, host answer {}", d % 8);
                if p.completion_requested && d & 0x80 == 0 {
                    self.dev.send(
                        relid,
                        HostPacket::Completion {
                            tid: p.tid,
                            payload: vec![],
                        },
                    );
                }
                let approve = |ok: bool, v: u32| {
                    let mut m = msg(mouse_msg::PROTOCOL_RESPONSE, 5);
                    m.extend_from_slice(&v.to_le_bytes());
                    m.push(u8::from(ok));
                    m
                };
                let descriptor = if d % 8 == 3 {
                    self.inp.bytes(200)
                } else {
                    HV_MOUSE_DESCRIPTOR.to_vec()
                };
                self.standard = d % 8 != 3;
                let info = device_info(&descriptor);
                let v = synthhid::protocol::MOUSE_VERSION;
                let out: Vec<Vec<u8>> = match d % 8 {
                    0 | 3 => vec![approve(true, v), info],
                    1 => vec![approve(false, v)],
                    2 => vec![info, approve(true, v)],
                    4 => vec![],
                    5 => vec![self.inp.bytes(64), approve(true, v), info],
                    6 => vec![approve(true, v ^ 1), info],
                    _ => vec![approve(true, v), approve(false, v), info.clone(), info],
                };
                for m in out {
                    self.inband(m);
                }
            }
            mouse_msg::INITIAL_DEVICE_INFO_ACK => {
                self.done = true;
                if p.completion_requested && self.inp.u8() & 1 == 0 {
                    self.dev.send(
                        relid,
                        HostPacket::Completion {
                            tid: p.tid,
                            payload: vec![],
                        },
                    );
                }
            }
            other => panic!("the mouse sent message type {other}"),
        }
    }

    fn keyboard_packet(&mut self, p: &dev::GuestPacket) {
        let kind = le32(&p.payload, 0);
        match kind {
            kbd_msg::PROTOCOL_REQUEST if !self.done => {
                assert_eq!(le32(&p.payload, 4), synthhid::protocol::KEYBOARD_VERSION);
                let d = self.inp.u8();
                if p.completion_requested && d & 0x80 == 0 {
                    self.dev.send(
                        self.relid,
                        HostPacket::Completion {
                            tid: p.tid,
                            payload: vec![],
                        },
                    );
                }
                let answer = |status: u32| {
                    let mut m = kbd_msg::PROTOCOL_RESPONSE.to_le_bytes().to_vec();
                    m.extend_from_slice(&status.to_le_bytes());
                    m
                };
                let out = match d % 6 {
                    0 | 1 => vec![answer(1)],
                    2 => vec![answer(0)],
                    3 => vec![],
                    4 => vec![self.inp.bytes(32), answer(1)],
                    _ => vec![key(0x1E, 0), answer(3), answer(0)],
                };
                self.done = true;
                for m in out {
                    self.inband(m);
                }
            }
            kbd_msg::SET_LED_INDICATORS if self.done => {
                assert!(p.payload.len() >= 8, "SET_LED_INDICATORS too short");
                let leds = u16::from_le_bytes([p.payload[4], p.payload[5]]);
                assert_eq!(
                    self.leds.pop_front(),
                    Some(leds),
                    "LEDs the guest was not asked to set"
                );
            }
            other => panic!("the keyboard sent message type {other}"),
        }
    }

    fn inband(&mut self, payload: Vec<u8>) {
        let tid = self.inp.u64();
        self.dev.send(
            self.relid,
            HostPacket::InBand {
                tid,
                completion: false,
                payload,
            },
        );
    }
}

impl Step for Sim<'_> {
    fn step(&mut self) {
        while let Some(p) = self.dev.recv(self.relid) {
            if !p.trusted {
                continue;
            }
            assert_eq!(p.packet_type, 6, "guest packet of type {}", p.packet_type);
            if self.keyboard {
                self.keyboard_packet(&p);
            } else {
                self.mouse_packet(&p);
            }
        }
        self.dev.flush(self.relid);
    }
}

/// Pipe and synthhid headers of a mouse message with a `len`-byte payload.
fn msg(kind: u32, len: usize) -> Vec<u8> {
    synthhid::protocol::mouse_headers(kind, len).to_vec()
}

/// INITIAL_DEVICE_INFO carrying `descriptor`.
fn device_info(descriptor: &[u8]) -> Vec<u8> {
    let len = 32 + 9 + descriptor.len();
    let mut m = msg(mouse_msg::INITIAL_DEVICE_INFO, len);
    let mut info = [0u8; 32];
    info[0] = 32;
    info[4..6].copy_from_slice(&0x045Eu16.to_le_bytes());
    info[6..8].copy_from_slice(&0x0621u16.to_le_bytes());
    info[8] = 1;
    m.extend_from_slice(&info);
    m.extend_from_slice(&[9, 0x21, 0x01, 0x01, 0, 1, 0x22]);
    m.extend_from_slice(&(descriptor.len() as u16).to_le_bytes());
    m.extend_from_slice(descriptor);
    m
}

/// A keyboard EVENT.
fn key(code: u16, info: u32) -> Vec<u8> {
    let e = KbdEvent {
        kind: kbd_msg::EVENT.into(),
        make_code: code.into(),
        reserved: 0.into(),
        info: info.into(),
    };
    e.as_bytes().to_vec()
}

type Shared<'a> = Rc<RefCell<Sim<'a>>>;

fn setup<'a>(inp: Input<'a>, class: DeviceClass) -> (Shared<'a>, Bus, bool) {
    let mut inp = inp;
    let answer_teardown = !inp.u8().is_multiple_of(8);
    let version = inp.below(8);
    let w = dev::world(vec![dev::offer(class, 1, 0, 0, 0)], answer_teardown);
    let bus = dev::connect(&w, DevHal::new(&w), version);
    let sim = Rc::new(RefCell::new(Sim {
        dev: Devices::new(w),
        inp,
        relid: 1,
        done: false,
        keyboard: class == DeviceClass::Keyboard,
        standard: false,
        leds: VecDeque::new(),
    }));
    (sim, bus, answer_teardown)
}

fn scaled(v: i32, min: i32, max: i32, size: u32) -> u32 {
    if max <= min || size == 0 {
        return 0;
    }
    let v = i128::from(v.clamp(min, max)) - i128::from(min);
    (v * i128::from(size - 1) / (i128::from(max) - i128::from(min))) as u32
}

fn mouse(inp: Input<'_>) {
    let (sim, bus, answer_teardown) = setup(inp, DeviceClass::Mouse);
    let mut waiter = HostWait::new(sim.clone(), 6);
    let mut screen = (1024u32, 768u32);
    let Ok(mut mouse) = Mouse::open(&bus, screen, &mut waiter) else {
        return;
    };
    sim.borrow_mut().step();
    assert!(sim.borrow().done, "open returned before sending the ACK");
    let standard = sim.borrow().standard;
    if standard {
        let l = mouse.info().layout;
        assert_eq!(
            (l.x.min, l.x.max, l.y.max, l.report_bytes),
            (0, 32767, 32767, 7)
        );
    }
    // Raw values of the well-formed reports sent, in order, while `exact` holds.
    let mut expected: VecDeque<(i32, i32, u32, i32)> = VecDeque::new();
    let mut exact = standard;
    let mut rescinded = false;
    for _ in 0..64 {
        let mut s = sim.borrow_mut();
        if s.inp.is_empty() {
            break;
        }
        let op = s.inp.u8() % 8;
        trace!("mouse op {op}");
        match op {
            0..=2 => {
                let (x, y) = (s.inp.u16() as i32 & 0x7FFF, s.inp.u16() as i32 & 0x7FFF);
                let buttons = u32::from(s.inp.u8() & 0x1F);
                let wheel = i32::from(s.inp.u16() as i16).max(-32767);
                let mut r = vec![buttons as u8];
                r.extend_from_slice(&(x as u16).to_le_bytes());
                r.extend_from_slice(&(y as u16).to_le_bytes());
                r.extend_from_slice(&(wheel as i16).to_le_bytes());
                let mut m = msg(mouse_msg::INPUT_REPORT, r.len());
                m.extend_from_slice(&r);
                s.inband(m);
                expected.push_back((x, y, buttons, wheel));
            }
            3 => {
                let kind = u32::from(s.inp.u8() % 6);
                let payload = s.inp.bytes(120);
                let mut m = msg(kind, payload.len());
                m.extend_from_slice(&payload);
                if s.inp.bool() {
                    let n = s.inp.u32();
                    m[12..16].copy_from_slice(&n.to_le_bytes());
                }
                s.inband(m);
                exact = false;
            }
            4 => {
                let Sim { dev, inp, .. } = &mut *s;
                match dev::chaos(dev, inp, 1) {
                    Chaos::Rescind => {
                        rescinded = true;
                        drop(s);
                        bus.poll();
                    }
                    _ => exact = false,
                }
            }
            5 => {
                screen = (u32::from(s.inp.u16()), u32::from(s.inp.u16()));
                drop(s);
                mouse.set_screen(screen.0, screen.1);
            }
            _ => {
                drop(s);
                let mut got = Vec::new();
                let r = mouse.poll(|e| got.push(e));
                trace!("  poll {r:?}: {} events", got.len());
                sim.borrow_mut().dev.flush(1);
                for e in got {
                    assert!(
                        e.x < screen.0.max(1) && e.y < screen.1.max(1),
                        "{e:?} off {screen:?}"
                    );
                    if exact {
                        let (x, y, buttons, wheel) = expected
                            .pop_front()
                            .expect("an event no report was sent for");
                        assert_eq!(
                            (e.raw.x, e.raw.y, e.raw.buttons, e.raw.wheel),
                            (x, y, buttons, wheel)
                        );
                        assert_eq!(e.x, scaled(x, 0, 32767, screen.0));
                        assert_eq!(e.y, scaled(y, 0, 32767, screen.1));
                    }
                }
            }
        }
    }
    drop(expected);
    let released = mouse.close(&mut waiter);
    let lied = sim.borrow().dev.world.borrow().lied;
    if answer_teardown && !rescinded && !lied {
        assert_eq!(released, Released::Freed);
    }
}

fn keyboard(inp: Input<'_>) {
    let (sim, bus, answer_teardown) = setup(inp, DeviceClass::Keyboard);
    let mut waiter = HostWait::new(sim.clone(), 6);
    let Ok(mut kbd) = Keyboard::open(&bus, &mut waiter) else {
        return;
    };
    let mut expected: VecDeque<(u16, u32)> = VecDeque::new();
    let mut exact = true;
    let mut rescinded = false;
    // Keystrokes queued before the guest saw the answer may have been dropped.
    sim.borrow_mut().dev.flush(1);
    for _ in 0..64 {
        let mut s = sim.borrow_mut();
        if s.inp.is_empty() {
            break;
        }
        let op = s.inp.u8() % 8;
        trace!("keyboard op {op}");
        match op {
            0..=2 => {
                let code = s.inp.u16();
                let info = u32::from(s.inp.u8() & 0xF);
                s.inband(key(code, info));
                expected.push_back((code, info));
            }
            3 => {
                let payload = s.inp.bytes(300);
                s.inband(payload);
                exact = false;
            }
            4 => {
                let Sim { dev, inp, .. } = &mut *s;
                match dev::chaos(dev, inp, 1) {
                    Chaos::Rescind => {
                        rescinded = true;
                        drop(s);
                        bus.poll();
                    }
                    _ => exact = false,
                }
            }
            5 => {
                let leds = Leds::from_bits_retain(s.inp.u16());
                s.leds.push_back(leds.bits());
                drop(s);
                if kbd.set_leds(leds).is_ok() {
                    assert_eq!(kbd.leds(), leds);
                } else {
                    sim.borrow_mut().leds.pop_back();
                }
                sim.borrow_mut().step();
            }
            _ => {
                drop(s);
                let mut got = Vec::new();
                let _ = kbd.poll(|e| got.push(e));
                sim.borrow_mut().dev.flush(1);
                for e in got {
                    if exact {
                        let (code, info) = expected
                            .pop_front()
                            .expect("a keystroke no EVENT was sent for");
                        assert_eq!(e.make_code, code);
                        assert_eq!(e.flags, KeyFlags::from_bits_retain(info));
                    }
                }
            }
        }
    }
    let released = kbd.close(&mut waiter);
    let lied = sim.borrow().dev.world.borrow().lied;
    if answer_teardown && !rescinded && !lied {
        assert_eq!(released, Released::Freed);
    }
}
