//! The synthetic mouse (HID over VMBus, devices §5.1 and §7.4).

#![forbid(unsafe_code)]

use vmbus_guest::protocol::DeviceClass;
use vmbus_guest::{Channel, ChannelConfig, ChannelError, Hal, Received, Released, Transport, Wait};
use zerocopy::IntoBytes;
use zerocopy::little_endian::U32;

use crate::error::{Error, Stats};
use crate::protocol::{MOUSE_VERSION, MouseMessage, mouse_headers, mouse_msg, parse_mouse_message};
use crate::report::{MouseLayout, RawPointer, parse_descriptor};

/// Receive buffer (device info with a report descriptor of several hundred bytes fits).
pub const MOUSE_RX_BUFFER: usize = 1024;
/// Packets handled by one poll.
pub const POLL_BUDGET: usize = 32;

/// Mouse buttons.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Buttons(pub u32);

impl Buttons {
    /// Left button.
    pub fn left(self) -> bool {
        self.0 & 1 != 0
    }
    /// Right button.
    pub fn right(self) -> bool {
        self.0 & 2 != 0
    }
    /// Middle button.
    pub fn middle(self) -> bool {
        self.0 & 4 != 0
    }
}

/// A pointer event: absolute position scaled to the screen.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct MouseEvent {
    /// Column, `0..screen width`.
    pub x: u32,
    /// Line, `0..screen height`.
    pub y: u32,
    /// Buttons held.
    pub buttons: Buttons,
    /// Wheel delta (positive = away from the user).
    pub wheel: i32,
    /// The report in the device's logical units.
    pub raw: RawPointer,
}

/// What the device said about itself.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct MouseInfo {
    /// USB vendor id.
    pub vendor: u16,
    /// Product id.
    pub product: u16,
    /// Version.
    pub version: u16,
    /// The pointer layout found in the report descriptor.
    pub layout: MouseLayout,
}

fn scale(v: i32, min: i32, max: i32, size: u32) -> u32 {
    if max <= min || size == 0 {
        return 0;
    }
    let v = i128::from(v.clamp(min, max)) - i128::from(min);
    (v * i128::from(size - 1) / (i128::from(max) - i128::from(min))) as u32
}

/// The open, negotiated synthetic mouse.
pub struct Mouse<'b, T: Transport, H: Hal> {
    ch: Channel<'b, T, H, (), 2>,
    rx: [u8; MOUSE_RX_BUFFER],
    info: MouseInfo,
    screen: (u32, u32),
    stats: Stats,
}

impl<T: Transport, H: Hal> core::fmt::Debug for Mouse<'_, T, H> {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("Mouse")
            .field("info", &self.info)
            .field("screen", &self.screen)
            .field("stats", &self.stats)
            .finish()
    }
}

/// What the handshake collected.
#[derive(Default)]
struct Handshake {
    approved: Option<bool>,
    info: Option<Result<MouseInfo, Error>>,
    stats: Stats,
}

impl<'b, T: Transport, H: Hal> Mouse<'b, T, H> {
    /// Opens the first synthetic mouse and negotiates (devices §7.4): PROTOCOL_REQUEST 2.0
    /// (completion requested), PROTOCOL_RESPONSE, INITIAL_DEVICE_INFO (report descriptor
    /// parsed), then the one INITIAL_DEVICE_INFO_ACK — after which the guest sends nothing.
    /// Positions are scaled to `screen` (width, height). Thread context; bounded by `waiter`.
    /// On failure the channel is closed. Poll once after it returns, before waiting for an
    /// interrupt: packets the host sent behind the handshake's replies raise none.
    pub fn open(
        bus: &'b vmbus_guest::Vmbus<T, H>,
        screen: (u32, u32),
        waiter: &mut impl Wait,
    ) -> Result<Self, Error> {
        let cfg = ChannelConfig {
            outbound_pages: 4,
            inbound_pages: 10,
            ..ChannelConfig::default()
        };
        let mut ch = Channel::open_class(bus, DeviceClass::Mouse, None, &cfg, waiter)?;
        let mut rx = [0u8; MOUSE_RX_BUFFER];
        match Self::negotiate(&mut ch, &mut rx, waiter) {
            Ok((info, stats)) => Ok(Self {
                ch,
                rx,
                info,
                screen,
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
        waiter: &mut impl Wait,
    ) -> Result<(MouseInfo, Stats), Error> {
        let h = mouse_headers(mouse_msg::PROTOCOL_REQUEST, 4);
        let v = U32::new(MOUSE_VERSION);
        ch.request(&[&h, v.as_bytes()], ())?;
        let mut hs = Handshake::default();
        waiter.restart();
        loop {
            while let Some(r) = ch.recv(rx)? {
                let Received::Packet(p) = r else {
                    // The host's completions of our requests carry nothing.
                    continue;
                };
                match parse_mouse_message(p.payload()) {
                    Ok(MouseMessage::ProtocolResponse { approved, .. })
                        if hs.approved.is_none() =>
                    {
                        hs.approved = Some(approved);
                    }
                    Ok(MouseMessage::DeviceInfo {
                        info,
                        report_descriptor,
                        ..
                    }) if hs.info.is_none() => {
                        hs.info = Some(
                            parse_descriptor(report_descriptor)
                                .map(|layout| MouseInfo {
                                    vendor: info.vendor.get(),
                                    product: info.product.get(),
                                    version: info.version.get(),
                                    layout,
                                })
                                .map_err(Error::Descriptor),
                        );
                    }
                    Ok(_) => hs.stats.unexpected += 1,
                    Err(e) => {
                        log::warn!("mouse: dropped host message: {e}");
                        hs.stats.malformed += 1;
                        if hs.info.is_none() && hs.approved == Some(true) {
                            hs.info = Some(Err(Error::Parse(e)));
                        }
                    }
                }
            }
            let more = ch.end_batch()?;
            if hs.approved == Some(false) {
                return Err(Error::VersionRejected);
            }
            if hs.approved == Some(true) {
                match hs.info.take() {
                    Some(Ok(info)) => {
                        let h = mouse_headers(mouse_msg::INITIAL_DEVICE_INFO_ACK, 1);
                        ch.request(&[&h, &[0u8]], ())?;
                        log::info!(
                            "mouse: {:04x}:{:04x}, {:?}",
                            info.vendor,
                            info.product,
                            info.layout
                        );
                        return Ok((info, hs.stats));
                    }
                    Some(Err(e)) => return Err(e),
                    None => {}
                }
            }
            if !more {
                ch.bus().poll();
                waiter.wait().map_err(ChannelError::from)?;
            }
        }
    }

    /// The device and its report layout.
    pub fn info(&self) -> &MouseInfo {
        &self.info
    }

    /// Counters.
    pub fn stats(&self) -> Stats {
        self.stats
    }

    /// Sets the screen positions are scaled to.
    pub fn set_screen(&mut self, width: u32, height: u32) {
        self.screen = (width, height);
    }

    /// Receives up to [`POLL_BUDGET`] packets, calling `on_event` for each input report;
    /// malformed reports are counted and dropped. Returns whether more may be waiting.
    /// Interrupt-safe. Sends nothing (the host expects nothing after the ACK).
    pub fn poll(&mut self, mut on_event: impl FnMut(MouseEvent)) -> Result<bool, Error> {
        for _ in 0..POLL_BUDGET {
            let Some(r) = self.ch.recv(&mut self.rx)? else {
                return Ok(self.ch.end_batch()?);
            };
            let Received::Packet(p) = r else {
                continue;
            };
            match parse_mouse_message(p.payload()) {
                Ok(MouseMessage::InputReport(report)) => match self.info.layout.decode(report) {
                    Ok(raw) => {
                        let l = &self.info.layout;
                        self.stats.events += 1;
                        on_event(MouseEvent {
                            x: scale(raw.x, l.x.min, l.x.max, self.screen.0),
                            y: scale(raw.y, l.y.min, l.y.max, self.screen.1),
                            buttons: Buttons(raw.buttons),
                            wheel: raw.wheel,
                            raw,
                        });
                    }
                    Err(e) => {
                        log::warn!("mouse: dropped input report: {e}");
                        self.stats.malformed += 1;
                    }
                },
                Ok(_) => self.stats.unexpected += 1,
                Err(e) => {
                    log::warn!("mouse: dropped host message: {e}");
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

#[cfg(test)]
mod tests {
    use super::scale;

    #[test]
    fn scaling() {
        assert_eq!(scale(0, 0, 32767, 1024), 0);
        assert_eq!(scale(32767, 0, 32767, 1024), 1023);
        assert_eq!(scale(40000, 0, 32767, 1024), 1023);
        assert_eq!(scale(-5, 0, 32767, 1024), 0);
        assert_eq!(scale(5, 10, 10, 1024), 0);
        assert_eq!(scale(i32::MAX, i32::MIN, i32::MAX, u32::MAX), u32::MAX - 1);
    }
}
