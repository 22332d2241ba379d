//! The synthetic keyboard (devices §5.2 and §7.5).

#![forbid(unsafe_code)]

use vmbus_guest::protocol::DeviceClass;
use vmbus_guest::{Channel, ChannelConfig, ChannelError, Hal, Received, Released, Transport, Wait};
use zerocopy::IntoBytes;

use crate::error::{Error, Stats};
use crate::keys::{KeyEvent, Leds};
use crate::protocol::{
    KEYBOARD_MAX_MESSAGE, KEYBOARD_VERSION, KbdProtocolRequest, KbdSetLeds, KeyboardMessage,
    kbd_msg, parse_keyboard_message,
};

/// Receive buffer: the largest keyboard message plus the ring descriptor.
pub const KEYBOARD_RX_BUFFER: usize = KEYBOARD_MAX_MESSAGE + 64;
/// Packets handled by one poll.
pub const POLL_BUDGET: usize = 32;

/// The open, negotiated synthetic keyboard.
pub struct Keyboard<'b, T: Transport, H: Hal> {
    ch: Channel<'b, T, H, (), 2>,
    rx: [u8; KEYBOARD_RX_BUFFER],
    leds: Leds,
    stats: Stats,
}

impl<T: Transport, H: Hal> core::fmt::Debug for Keyboard<'_, T, H> {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("Keyboard")
            .field("leds", &self.leds)
            .field("stats", &self.stats)
            .finish()
    }
}

impl<'b, T: Transport, H: Hal> Keyboard<'b, T, H> {
    /// Opens the first synthetic keyboard and negotiates version 1.0 (PROTOCOL_REQUEST with
    /// completion requested, PROTOCOL_RESPONSE bit 0). Keystrokes arriving before the answer
    /// are dropped. Thread context; bounded by `waiter`. On failure the channel is closed.
    /// Poll once after it returns, before waiting for an interrupt: packets the host
    /// sent behind the handshake's replies raise none.
    pub fn open(bus: &'b vmbus_guest::Vmbus<T, H>, waiter: &mut impl Wait) -> Result<Self, Error> {
        let cfg = ChannelConfig {
            outbound_pages: 2,
            inbound_pages: 10,
            ..ChannelConfig::default()
        };
        let mut ch = Channel::open_class(bus, DeviceClass::Keyboard, None, &cfg, waiter)?;
        let mut rx = [0u8; KEYBOARD_RX_BUFFER];
        let mut stats = Stats::default();
        match Self::negotiate(&mut ch, &mut rx, &mut stats, waiter) {
            Ok(()) => Ok(Self {
                ch,
                rx,
                leds: Leds::empty(),
                stats,
            }),
            Err(e) => {
                let _ = ch.close(waiter);
                Err(e)
            }
        }
    }

    fn negotiate(
        ch: &mut Channel<'b, T, H, (), 2>,
        rx: &mut [u8],
        stats: &mut Stats,
        waiter: &mut impl Wait,
    ) -> Result<(), Error> {
        let req = KbdProtocolRequest {
            kind: kbd_msg::PROTOCOL_REQUEST.into(),
            version: KEYBOARD_VERSION.into(),
        };
        ch.request(&[req.as_bytes()], ())?;
        waiter.restart();
        loop {
            let mut answer = None;
            while let Some(r) = ch.recv(rx)? {
                let Received::Packet(p) = r else {
                    continue;
                };
                match parse_keyboard_message(p.payload()) {
                    Ok(KeyboardMessage::ProtocolResponse { accepted }) => answer = Some(accepted),
                    Ok(_) => stats.unexpected += 1,
                    Err(_) => stats.malformed += 1,
                }
                if answer.is_some() {
                    break;
                }
            }
            let more = ch.end_batch()?;
            match answer {
                Some(true) => return Ok(()),
                Some(false) => return Err(Error::VersionRejected),
                None => {}
            }
            if !more {
                ch.bus().poll();
                waiter.wait().map_err(ChannelError::from)?;
            }
        }
    }

    /// Counters.
    pub fn stats(&self) -> Stats {
        self.stats
    }

    /// The LEDs last set.
    pub fn leds(&self) -> Leds {
        self.leds
    }

    /// Sets the indicator LEDs (SET_LED_INDICATORS, the only message the host accepts after
    /// the handshake). Interrupt-safe.
    pub fn set_leds(&mut self, leds: Leds) -> Result<(), Error> {
        let m = KbdSetLeds {
            kind: kbd_msg::SET_LED_INDICATORS.into(),
            led_flags: leds.bits().into(),
            padding: 0.into(),
        };
        self.ch.send(&[m.as_bytes()])?;
        self.leds = leds;
        Ok(())
    }

    /// Receives up to [`POLL_BUDGET`] packets, calling `on_key` for each keystroke; other
    /// messages are counted and dropped. Returns whether more may be waiting. Interrupt-safe.
    pub fn poll(&mut self, mut on_key: impl FnMut(KeyEvent)) -> Result<bool, Error> {
        for _ in 0..POLL_BUDGET {
            let Some(r) = self.ch.recv(&mut self.rx)? else {
                return Ok(self.ch.end_batch()?);
            };
            let Received::Packet(p) = r else {
                continue;
            };
            match parse_keyboard_message(p.payload()) {
                Ok(KeyboardMessage::Event(e)) => {
                    self.stats.events += 1;
                    on_key(e);
                }
                Ok(_) => self.stats.unexpected += 1,
                Err(e) => {
                    log::warn!("keyboard: dropped host message: {e}");
                    self.stats.malformed += 1;
                }
            }
        }
        self.ch.yield_batch()?;
        Ok(true)
    }

    /// Closes the channel.
    pub fn close(self, waiter: &mut impl Wait) -> Released {
        self.ch.close(waiter)
    }
}
