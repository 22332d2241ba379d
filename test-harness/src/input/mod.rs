//! Mock synthetic input VSPs (devices §5, §7.4, §7.5), written from the protocol facts: a HID
//! mouse that sends its device info (in OpenVMM's oversized form) and then injected input
//! reports, and a keyboard that types strings as set-1 make/break events (E0 flags for
//! extended keys, as OpenVMM sends them).
//!
//! # What they reject (protocol errors)
//!
//! Mouse: a pipe header that is not type 1 or whose size is not 8 + the synthhid size; a
//! PROTOCOL_REQUEST of the wrong size; any message other than the ACK after device info, a
//! malformed ACK, and any message after the ACK (fatal, as in OpenVMM).
//! Keyboard: a PROTOCOL_REQUEST of the wrong size; after acceptance any message other than
//! SET_LED_INDICATORS (fatal), and SET_LED_INDICATORS before acceptance.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use vmbus_guest::protocol::Guid;

use crate::vmbus::{DeviceModel, DeviceOffer, HostChannel, HostPacket, PACKET_TYPE_COMPLETION};

pub mod keymap;

/// Synthetic mouse class GUID.
pub const MOUSE_CLASS: Guid = Guid::from_str_const("cfa8b69e-5b4a-4cc0-b98b-8ba1a1f3f95a");
/// Synthetic keyboard class GUID.
pub const KEYBOARD_CLASS: Guid = Guid::from_str_const("f912ad6d-2b17-48ea-bd65-f927a61c7684");

/// The Hyper-V mouse report descriptor shape: 5 buttons, absolute X/Y 0..32767, relative
/// wheel; 7-byte reports. Byte 14 carries the known bug (0x25 Logical Maximum where 0x29 Usage
/// Maximum belongs) that Linux patches.
pub const MOUSE_REPORT_DESCRIPTOR: [u8; 65] = [
    0x05, 0x01, 0x09, 0x02, 0xA1, 0x01, 0x09, 0x01, 0xA1, 0x00, 0x05, 0x09, 0x19, 0x01, 0x25, 0x05,
    0x15, 0x00, 0x25, 0x01, 0x95, 0x05, 0x75, 0x01, 0x81, 0x02, 0x95, 0x01, 0x75, 0x03, 0x81, 0x01,
    0x05, 0x01, 0x09, 0x30, 0x09, 0x31, 0x15, 0x00, 0x26, 0xFF, 0x7F, 0x75, 0x10, 0x95, 0x02, 0x81,
    0x02, 0x09, 0x38, 0x16, 0x01, 0x80, 0x26, 0xFF, 0x7F, 0x75, 0x10, 0x95, 0x01, 0x81, 0x06, 0xC0,
    0xC0,
];

fn u32_at(b: &[u8], at: usize) -> u32 {
    u32::from_le_bytes([b[at], b[at + 1], b[at + 2], b[at + 3]])
}

fn send(ch: &mut HostChannel, payload: &[u8]) {
    if let Err(e) = ch.send_inband(payload, 0, false) {
        log::warn!("input device: cannot send: {e}");
    }
}

fn mouse_message(kind: u32, synthhid_size: usize, payload: &[u8]) -> Vec<u8> {
    let mut v = Vec::with_capacity(16 + payload.len());
    v.extend_from_slice(&1u32.to_le_bytes());
    v.extend_from_slice(&((8 + payload.len()) as u32).to_le_bytes());
    v.extend_from_slice(&kind.to_le_bytes());
    v.extend_from_slice(&(synthhid_size as u32).to_le_bytes());
    v.extend_from_slice(payload);
    v
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum MouseState {
    Version,
    WaitAck,
    Ready,
    Dead,
}

#[derive(Debug)]
struct MouseShared {
    descriptor: Vec<u8>,
    state: MouseState,
    reports: VecDeque<Vec<u8>>,
    raw: VecDeque<Vec<u8>>,
    errors: Vec<String>,
    received: Vec<u32>,
}

/// The mock mouse VSP. Clones share the device.
#[derive(Clone)]
pub struct MouseVsp {
    shared: Arc<Mutex<MouseShared>>,
}

impl Default for MouseVsp {
    fn default() -> Self {
        Self::new(MOUSE_REPORT_DESCRIPTOR.to_vec())
    }
}

impl MouseVsp {
    /// A mouse with this report descriptor.
    pub fn new(descriptor: Vec<u8>) -> Self {
        Self {
            shared: Arc::new(Mutex::new(MouseShared {
                descriptor,
                state: MouseState::Version,
                reports: VecDeque::new(),
                raw: VecDeque::new(),
                errors: Vec::new(),
                received: Vec::new(),
            })),
        }
    }

    /// The offer.
    pub fn offer(&self, instance: Guid) -> DeviceOffer {
        DeviceOffer::new(MOUSE_CLASS, instance)
    }

    fn lock(&self) -> MutexGuard<'_, MouseShared> {
        self.shared.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Queues an input report in the 7-byte layout of [`MOUSE_REPORT_DESCRIPTOR`]: buttons,
    /// X and Y in 0..=32767, wheel delta. Sent once the guest has acknowledged device info.
    pub fn report(&self, buttons: u8, x: u16, y: u16, wheel: i16) {
        let mut r = vec![buttons];
        r.extend_from_slice(&x.min(0x7FFF).to_le_bytes());
        r.extend_from_slice(&y.min(0x7FFF).to_le_bytes());
        r.extend_from_slice(&wheel.to_le_bytes());
        self.lock().reports.push_back(r);
    }

    /// Moves to (x, y) in 0..=32767 with no button held.
    pub fn move_to(&self, x: u16, y: u16) {
        self.report(0, x, y, 0);
    }

    /// Presses and releases `button` (bit number) at (x, y).
    pub fn click(&self, button: u8, x: u16, y: u16) {
        self.report(1 << button, x, y, 0);
        self.report(0, x, y, 0);
    }

    /// Turns the wheel by `delta` at (x, y).
    pub fn wheel(&self, delta: i16, x: u16, y: u16) {
        self.report(0, x, y, delta);
    }

    /// Queues an arbitrary in-band payload (sent in any state): hostile-host tests.
    pub fn inject(&self, payload: Vec<u8>) {
        self.lock().raw.push_back(payload);
    }

    /// Builds a mouse message: pipe size 8 + payload, synthhid size as given.
    pub fn message(kind: u32, synthhid_size: usize, payload: &[u8]) -> Vec<u8> {
        mouse_message(kind, synthhid_size, payload)
    }

    /// Whether the guest acknowledged device info.
    pub fn ready(&self) -> bool {
        self.lock().state == MouseState::Ready
    }

    /// Message types received, in order.
    pub fn received(&self) -> Vec<u32> {
        self.lock().received.clone()
    }

    /// What this device rejected.
    pub fn errors(&self) -> Vec<String> {
        self.lock().errors.clone()
    }

    fn device_info(descriptor: &[u8]) -> Vec<u8> {
        let mut p = Vec::new();
        p.extend_from_slice(&32u32.to_le_bytes());
        p.extend_from_slice(&0x045Eu16.to_le_bytes());
        p.extend_from_slice(&0x0621u16.to_le_bytes());
        p.extend_from_slice(&1u16.to_le_bytes());
        p.extend_from_slice(&[0; 22]);
        p.extend_from_slice(&[9, 0x21, 0x01, 0x01, 0, 1, 0x22]);
        p.extend_from_slice(&(descriptor.len() as u16).to_le_bytes());
        let synthhid_size = p.len() + descriptor.len();
        // OpenVMM carries the report descriptor in a 128-byte array: the pipe holds more
        // than the synthhid size says.
        let mut array = descriptor.to_vec();
        array.resize(array.len().max(128), 0);
        p.extend_from_slice(&array);
        mouse_message(2, synthhid_size, &p)
    }
}

impl DeviceModel for MouseVsp {
    fn on_open(&mut self, _ch: &mut HostChannel) {
        self.lock().state = MouseState::Version;
    }

    fn on_packet(&mut self, ch: &mut HostChannel, packet: &HostPacket) {
        if packet.packet_type == PACKET_TYPE_COMPLETION {
            return;
        }
        let mut s = self.lock();
        let b = &packet.payload;
        let fail = |s: &mut MouseShared, ch: &HostChannel, e: String| {
            ch.protocol_error(format!("mouse: {e}"));
            s.errors.push(e);
            s.state = MouseState::Dead;
        };
        if s.state == MouseState::Dead {
            return;
        }
        if b.len() < 16
            || u32_at(b, 0) != 1
            || u32_at(b, 4) as usize != 8 + u32_at(b, 12) as usize
            || u32_at(b, 4) as usize > b.len() - 8
        {
            return fail(
                &mut s,
                ch,
                format!("bad headers {:?}", &b[..b.len().min(16)]),
            );
        }
        let (kind, size) = (u32_at(b, 8), u32_at(b, 12) as usize);
        s.received.push(kind);
        if packet.completion_requested()
            && let Err(e) = ch.send_completion(packet.transaction_id, &[])
        {
            log::warn!("mouse: completion: {e}");
        }
        match (s.state, kind) {
            (MouseState::Version, 0) if size == 4 => {
                let v = u32_at(b, 16);
                let ok = v == 0x0002_0000;
                let mut p = v.to_le_bytes().to_vec();
                p.push(u8::from(ok));
                send(ch, &mouse_message(1, 5, &p));
                if ok {
                    let info = Self::device_info(&s.descriptor);
                    send(ch, &info);
                    s.state = MouseState::WaitAck;
                }
            }
            (MouseState::WaitAck, 3) if size == 1 && b[16] == 0 => {
                s.state = MouseState::Ready;
            }
            (state, kind) => fail(
                &mut s,
                ch,
                format!("message {kind} (size {size}) in state {state:?}"),
            ),
        }
    }

    fn poll(&mut self, ch: &mut HostChannel) {
        let mut s = self.lock();
        while let Some(r) = s.raw.pop_front() {
            send(ch, &r);
        }
        if s.state != MouseState::Ready {
            return;
        }
        while let Some(r) = s.reports.pop_front() {
            send(ch, &mouse_message(4, r.len(), &r));
        }
    }
}

#[derive(Debug)]
struct KeyboardShared {
    accepted: bool,
    dead: bool,
    events: VecDeque<(u16, u32)>,
    raw: VecDeque<Vec<u8>>,
    leds: Vec<u16>,
    errors: Vec<String>,
}

/// The mock keyboard VSP. Clones share the device.
#[derive(Clone)]
pub struct KeyboardVsp {
    shared: Arc<Mutex<KeyboardShared>>,
}

impl Default for KeyboardVsp {
    fn default() -> Self {
        Self::new()
    }
}

/// Keystroke info bit: release.
pub const KEY_BREAK: u32 = 1 << 1;
/// Keystroke info bit: E0 prefix.
pub const KEY_E0: u32 = 1 << 2;
/// Keystroke info bit: E1 prefix.
pub const KEY_E1: u32 = 1 << 3;
/// Keystroke info bit: UNICODE.
pub const KEY_UNICODE: u32 = 1 << 0;

impl KeyboardVsp {
    /// A keyboard.
    pub fn new() -> Self {
        Self {
            shared: Arc::new(Mutex::new(KeyboardShared {
                accepted: false,
                dead: false,
                events: VecDeque::new(),
                raw: VecDeque::new(),
                leds: Vec::new(),
                errors: Vec::new(),
            })),
        }
    }

    /// The offer.
    pub fn offer(&self, instance: Guid) -> DeviceOffer {
        DeviceOffer::new(KEYBOARD_CLASS, instance)
    }

    fn lock(&self) -> MutexGuard<'_, KeyboardShared> {
        self.shared.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Queues one keystroke as OpenVMM sends it: make code & 0x7F, flags in `info`.
    pub fn key(&self, scan: u8, info: u32) {
        self.lock().events.push_back((u16::from(scan & 0x7F), info));
    }

    /// Presses and releases a key (`e0` for extended keys: arrows, keypad Enter and /, right
    /// Ctrl/Alt, ...).
    pub fn tap(&self, scan: u8, e0: bool) {
        let e = if e0 { KEY_E0 } else { 0 };
        self.key(scan, e);
        self.key(scan, e | KEY_BREAK);
    }

    /// Types `text` on a US layout (left Shift for shifted characters). Characters without a
    /// key are skipped and returned.
    pub fn type_str(&self, text: &str) -> Vec<char> {
        let mut missing = Vec::new();
        for c in text.chars() {
            match keymap::us_key(c) {
                Some((scan, shift)) => {
                    if shift {
                        self.key(keymap::LEFT_SHIFT, 0);
                    }
                    self.tap(scan, false);
                    if shift {
                        self.key(keymap::LEFT_SHIFT, KEY_BREAK);
                    }
                }
                None => missing.push(c),
            }
        }
        missing
    }

    /// Queues a raw keyboard message (sent in any state): hostile-host tests.
    pub fn inject(&self, payload: Vec<u8>) {
        self.lock().raw.push_back(payload);
    }

    /// Whether the protocol was accepted.
    pub fn accepted(&self) -> bool {
        self.lock().accepted
    }

    /// Every LED value the guest set.
    pub fn leds(&self) -> Vec<u16> {
        self.lock().leds.clone()
    }

    /// What this device rejected.
    pub fn errors(&self) -> Vec<String> {
        self.lock().errors.clone()
    }
}

impl DeviceModel for KeyboardVsp {
    fn on_open(&mut self, _ch: &mut HostChannel) {
        let mut s = self.lock();
        s.accepted = false;
        s.dead = false;
    }

    fn on_packet(&mut self, ch: &mut HostChannel, packet: &HostPacket) {
        if packet.packet_type == PACKET_TYPE_COMPLETION {
            return;
        }
        let mut s = self.lock();
        if s.dead {
            return;
        }
        let b = &packet.payload;
        let fail = |s: &mut KeyboardShared, e: String| {
            ch.protocol_error(format!("keyboard: {e}"));
            s.errors.push(e);
        };
        if b.len() < 8 {
            return fail(&mut s, format!("message of {} bytes", b.len()));
        }
        match (s.accepted, u32_at(b, 0)) {
            (false, 1) => {
                let ok = u32_at(b, 4) == 0x0001_0000;
                let mut r = 2u32.to_le_bytes().to_vec();
                r.extend_from_slice(&u32::from(ok).to_le_bytes());
                if packet.completion_requested() {
                    let _ = ch.send_completion(packet.transaction_id, &[]);
                }
                send(ch, &r);
                s.accepted = ok;
            }
            (true, 4) => {
                let leds = u16::from_le_bytes([b[4], b[5]]);
                s.leds.push(leds);
            }
            (accepted, kind) => {
                fail(&mut s, format!("message {kind} (accepted {accepted})"));
                if accepted {
                    s.dead = true;
                }
            }
        }
    }

    fn poll(&mut self, ch: &mut HostChannel) {
        let mut s = self.lock();
        while let Some(r) = s.raw.pop_front() {
            send(ch, &r);
        }
        if !s.accepted || s.dead {
            return;
        }
        while let Some((make, info)) = s.events.pop_front() {
            let mut m = 3u32.to_le_bytes().to_vec();
            m.extend_from_slice(&make.to_le_bytes());
            m.extend_from_slice(&[0, 0]);
            m.extend_from_slice(&info.to_le_bytes());
            send(ch, &m);
        }
    }
}
