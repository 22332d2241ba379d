//! synthhid against the mock input VSPs: typed text through the keyboard and pc-keyboard,
//! mouse reports to screen positions, LEDs, hostile descriptors and messages; and the sizes
//! of every type a user holds from synthvid and synthhid.

mod common;

use common::{Guest, assert_clean, instance, rig, step};
use pc_keyboard::layouts::Us104Key;
use pc_keyboard::{DecodedKey, KeyCode};
use synthhid::keys::Set1Decoder;
use synthhid::{Error, Keyboard, Leds, Mouse, MouseEvent, ReportError};
use test_harness::hv::{MockHal, MockVp};
use test_harness::input::{KeyboardVsp, MouseVsp};
use test_harness::vmbus::{HostRelease, MockVmbusHost};
use vmbus_guest::SynicTransport;

type Kbd<'b> = Keyboard<'b, SynicTransport<MockVp>, MockHal>;
type Ms<'b> = Mouse<'b, SynicTransport<MockVp>, MockHal>;

fn keyboard_rig() -> (MockVmbusHost, Guest, KeyboardVsp) {
    let (_hv, mut host, guest) = rig(HostRelease::Ws2022);
    let vsp = KeyboardVsp::new();
    host.add_device(vsp.offer(instance(3)), Box::new(vsp.clone()));
    guest.connect(&mut step(&mut host)).unwrap();
    (host, guest, vsp)
}

fn mouse_rig(vsp: MouseVsp) -> (MockVmbusHost, Guest, MouseVsp) {
    let (_hv, mut host, guest) = rig(HostRelease::Ws2022);
    host.add_device(vsp.offer(instance(4)), Box::new(vsp.clone()));
    guest.connect(&mut step(&mut host)).unwrap();
    (host, guest, vsp)
}

fn type_and_decode(host: &mut MockVmbusHost, kb: &mut Kbd<'_>) -> (String, Vec<KeyCode>) {
    let mut decoder = Set1Decoder::new(Us104Key);
    let (mut text, mut raw) = (String::new(), Vec::new());
    for _ in 0..20 {
        host.step();
        kb.poll(|e| match decoder.feed(&e) {
            Some(DecodedKey::Unicode(c)) => text.push(c),
            Some(DecodedKey::RawKey(KeyCode::LShift)) => {}
            Some(DecodedKey::RawKey(k)) => raw.push(k),
            None => {}
        })
        .unwrap();
    }
    (text, raw)
}

#[test]
fn typed_text_round_trips_through_pc_keyboard() {
    let (mut host, guest, vsp) = keyboard_rig();
    let mut kb: Kbd<'_> = Keyboard::open(&guest, &mut step(&mut host)).unwrap();
    assert!(vsp.accepted());
    let typed = "Hello, World! 1+1=2 \"quoted\" ~/path? {a|b} under_score\n";
    assert!(vsp.type_str(typed).is_empty());
    // Extended keys: keypad '/' (E0 35) types a slash; Left arrow (E0 4B) is a raw key.
    vsp.tap(0x35, true);
    vsp.tap(0x4B, true);
    let (text, raw) = type_and_decode(&mut host, &mut kb);
    assert_eq!(text, format!("{typed}/"));
    assert_eq!(raw, vec![KeyCode::ArrowLeft]);
    kb.set_leds(Leds::CAPS_LOCK | Leds::NUM_LOCK).unwrap();
    host.step();
    assert_eq!(vsp.leds(), vec![0x6]);
    assert_eq!(kb.stats().malformed, 0);
    assert_clean(&host);
    assert!(kb.close(&mut step(&mut host)).is_freed());
}

#[test]
fn hostile_keyboard_messages_are_dropped() {
    let (mut host, guest, vsp) = keyboard_rig();
    let mut kb: Kbd<'_> = Keyboard::open(&guest, &mut step(&mut host)).unwrap();
    vsp.inject(vec![3, 0, 0, 0, 0x1E]);
    vsp.inject(vec![9, 0, 0, 0, 0, 0, 0, 0]);
    vsp.inject(vec![1]);
    // UNICODE is passed on as Linux does, and exposed.
    vsp.inject(vec![3, 0, 0, 0, 0x3A, 0x26, 0, 0, 1, 0, 0, 0]);
    let mut events = Vec::new();
    for _ in 0..5 {
        host.step();
        kb.poll(|e| events.push(e)).unwrap();
    }
    assert_eq!(events.len(), 1);
    assert_eq!(events[0].unicode(), Some(0x263A));
    let s = kb.stats();
    // Ring padding makes the 5-byte event an 8-byte one (still too short: malformed) and the
    // 1-byte message a type-1 message (unexpected).
    assert_eq!((s.malformed, s.unexpected), (1, 2), "{s:?}");
    assert_clean(&host);
}

fn mouse_events(host: &mut MockVmbusHost, m: &mut Ms<'_>) -> Vec<MouseEvent> {
    let mut out = Vec::new();
    for _ in 0..5 {
        host.step();
        m.poll(|e| out.push(e)).unwrap();
    }
    out
}

#[test]
fn mouse_reports_decode_to_injected_positions() {
    let (mut host, guest, vsp) = mouse_rig(MouseVsp::default());
    let mut m: Ms<'_> = Mouse::open(&guest, (1024, 768), &mut step(&mut host)).unwrap();
    host.step();
    assert!(vsp.ready());
    assert_eq!(vsp.received(), vec![0, 3]);
    assert_eq!((m.info().vendor, m.info().product), (0x045E, 0x0621));
    vsp.move_to(0, 0);
    vsp.move_to(32767, 32767);
    vsp.move_to(16384, 8192);
    vsp.click(0, 100, 200);
    vsp.click(1, 100, 200);
    vsp.wheel(-3, 100, 200);
    let ev = mouse_events(&mut host, &mut m);
    let pos: Vec<_> = ev.iter().map(|e| (e.x, e.y)).collect();
    assert_eq!(&pos[..3], &[(0, 0), (1023, 767), (511, 191)]);
    assert!(ev[3].buttons.left() && !ev[4].buttons.left());
    assert!(ev[5].buttons.right());
    assert_eq!(ev[7].wheel, -3);
    assert_eq!((ev[3].raw.x, ev[3].raw.y), (100, 200));
    // The guest sent nothing after the ACK.
    assert_eq!(vsp.received(), vec![0, 3]);
    assert_clean(&host);
    assert!(m.close(&mut step(&mut host)).is_freed());
}

#[test]
fn mouse_without_pointer_descriptor_is_not_acked() {
    // A keyboard-ish descriptor: no X/Y.
    let desc = vec![
        0x05, 0x01, 0x09, 0x06, 0xA1, 0x01, 0x75, 0x08, 0x95, 0x01, 0x81, 0x02, 0xC0,
    ];
    let (mut host, guest, vsp) = mouse_rig(MouseVsp::new(desc));
    let e = Ms::open(&guest, (1024, 768), &mut step(&mut host)).unwrap_err();
    assert_eq!(e, Error::Descriptor(ReportError::NoPointer));
    assert_eq!(vsp.received(), vec![0]);
    assert_clean(&host);
}

#[test]
fn hostile_mouse_messages_are_dropped() {
    let (mut host, guest, vsp) = mouse_rig(MouseVsp::default());
    let mut m: Ms<'_> = Mouse::open(&guest, (1024, 768), &mut step(&mut host)).unwrap();
    // A report shorter than the layout, one longer than its pipe, an unknown type, a bad pipe.
    vsp.inject(MouseVsp::message(4, 3, &[1, 2, 3]));
    vsp.inject(MouseVsp::message(4, 200, &[0; 7]));
    vsp.inject(MouseVsp::message(9, 0, &[]));
    vsp.inject(vec![2, 0, 0, 0, 8, 0, 0, 0, 4, 0, 0, 0, 0, 0, 0, 0]);
    // A second device info is not acknowledged again.
    vsp.inject(MouseVsp::message(2, 0, &[]));
    vsp.move_to(10, 10);
    let ev = mouse_events(&mut host, &mut m);
    assert_eq!(ev.len(), 1);
    let s = m.stats();
    assert_eq!((s.malformed, s.unexpected), (4, 1), "{s:?}");
    assert_eq!(vsp.received(), vec![0, 3]);
    assert_clean(&host);
}

#[test]
fn user_held_types_fit_16_kib() {
    type T = SynicTransport<MockVp>;
    let sizes = [
        (
            "synthvid::Synthvid",
            size_of::<synthvid::Synthvid<'_, T, MockHal>>(),
        ),
        (
            "synthvid::Framebuffer",
            size_of::<synthvid::Framebuffer<'_, 32>>(),
        ),
        (
            "synthvid::DirtyRects<32>",
            size_of::<synthvid::DirtyRects<32>>(),
        ),
        ("synthvid::Config", size_of::<synthvid::Config>()),
        ("synthhid::Mouse", size_of::<Mouse<'_, T, MockHal>>()),
        ("synthhid::Keyboard", size_of::<Keyboard<'_, T, MockHal>>()),
        ("synthhid::MouseLayout", size_of::<synthhid::MouseLayout>()),
        ("synthhid::Set1Decoder", size_of::<Set1Decoder<Us104Key>>()),
    ];
    for (name, size) in sizes {
        println!("{name}: {size} bytes");
        assert!(size <= 16 * 1024, "{name} is {size} bytes");
    }
}
