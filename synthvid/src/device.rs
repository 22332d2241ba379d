//! The synthetic video driver: open, negotiate (devices §7.3), draw, flush damage, pointer,
//! mode changes, and the host's unsolicited messages.

#![forbid(unsafe_code)]

use vmbus_guest::protocol::{DeviceClass, VmbusVersion};
use vmbus_guest::{
    Channel, ChannelConfig, ChannelError, HV_PAGE_SIZE, Hal, Received, Released, Transport, Wait,
};
use zerocopy::IntoBytes;

use crate::dirty::{DirtyRects, Rect};
use crate::error::Error;
use crate::framebuffer::{Framebuffer, Mode};
use crate::protocol::{
    self, CURSOR_COMPLETE, DirtHeader, FeatureChange, HostMessage, MAX_CURSOR, MAX_DIRT_RECTS,
    PointerPosition, PointerShapeHeader, RESOLUTION_REQUEST_COUNT, ResolutionRequest,
    SituationUpdate, SynthvidVersion, VersionRequest, VideoOutput, VramLocation, WireRect, msg,
};
use crate::vram::{Vram, VramWindow};

/// Receive buffer: the largest host message is RESOLUTION_RESPONSE with 255 entries
/// (16 + 8 + 131 + 1020 bytes plus the ring descriptor).
pub const RX_BUFFER: usize = 2048;
/// Most supported resolutions kept from RESOLUTION_RESPONSE (what the guest asks for).
pub const MAX_RESOLUTIONS: usize = RESOLUTION_REQUEST_COUNT as usize;
/// Default number of damage rectangles tracked between flushes.
pub const DEFAULT_DIRTY_RECTS: usize = 32;
/// Packets handled by one [`Synthvid::poll`].
pub const POLL_BUDGET: usize = 16;
/// Mode used when the host gives no list and the caller no preference.
pub const FALLBACK_MODE: (u32, u32) = (1024, 768);
/// Largest mode of version 3.0 (WIN7).
pub const WIN7_MAX: (u32, u32) = (1600, 1200);

/// The synthvid versions to try, in order, on a connection of VMBus version `vmbus`, as Linux
/// chooses them (devices §4.1): 4.0 and 5.0 hosts 3.5 then 3.2; newer hosts 3.5 only; 2.4 and
/// 3.0 (WIN8, WIN8.1) 3.2 then 3.0; older (WIN7) 3.0.
pub fn candidate_versions(vmbus: VmbusVersion) -> &'static [SynthvidVersion] {
    const WIN10_THEN_WIN8: &[SynthvidVersion] = &[SynthvidVersion::WIN10, SynthvidVersion::WIN8];
    if vmbus == VmbusVersion::V4_0 || vmbus == VmbusVersion::V5_0 {
        WIN10_THEN_WIN8
    } else if vmbus > VmbusVersion::V4_0 {
        &[SynthvidVersion::WIN10]
    } else if vmbus >= VmbusVersion::V2_4 {
        &[SynthvidVersion::WIN8, SynthvidVersion::WIN7]
    } else {
        &[SynthvidVersion::WIN7]
    }
}

/// How to open the device.
#[derive(Clone, Copy, Debug)]
pub struct Config {
    /// Ring sizes.
    pub channel: ChannelConfig,
    /// Preferred resolution; `None` = the host's default (3.5) or [`FALLBACK_MODE`].
    pub resolution: Option<(u32, u32)>,
    /// Hide the host-drawn pointer after opening (position + 1×1 transparent shape).
    pub hide_pointer: bool,
    /// Send DIRT even before the host asked for it with FEATURE_CHANGE (Linux does not; a
    /// host that never sends FEATURE_CHANGE, like OpenVMM, still accepts DIRT).
    pub send_dirt_unrequested: bool,
    /// Colour the screen is cleared to after the mode is set.
    pub clear_color: u32,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            channel: ChannelConfig {
                outbound_pages: 16,
                inbound_pages: 8,
                ..ChannelConfig::default()
            },
            resolution: None,
            hide_pointer: true,
            send_dirt_unrequested: false,
            clear_color: 0,
        }
    }
}

/// A display resolution.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Resolution {
    /// Width in pixels.
    pub width: u32,
    /// Height in pixels.
    pub height: u32,
}

/// A pointer image for POINTER_SHAPE: ARGB, `width × height × 4` bytes, each side ≤ 96.
#[derive(Clone, Copy, Debug)]
pub struct PointerShape<'a> {
    /// Width in pixels.
    pub width: u32,
    /// Height in pixels.
    pub height: u32,
    /// Hot spot X.
    pub hot_x: u32,
    /// Hot spot Y.
    pub hot_y: u32,
    /// ARGB pixels, row-major, 4 bytes each (B, G, R, A).
    pub argb: &'a [u8],
}

const TRANSPARENT_PIXEL: [u8; 4] = [0; 4];

/// Diagnostic counters.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Stats {
    /// DIRT messages sent.
    pub dirt_messages: u64,
    /// Rectangles sent in DIRT messages.
    pub dirt_rects: u64,
    /// FEATURE_CHANGE messages received.
    pub feature_changes: u64,
    /// Host messages that did not parse (logged and dropped).
    pub malformed: u64,
    /// Host messages of a type or at a time the guest does not expect (logged and dropped).
    pub unexpected: u64,
    /// ERROR messages from the host.
    pub host_errors: u64,
}

/// What the host told the driver, filled in by the receive path.
#[derive(Debug, Default)]
struct HostState {
    version_reply: Option<(SynthvidVersion, bool)>,
    vram_ack: Option<u64>,
    resolutions_received: bool,
    resolutions: heapless::Vec<Resolution, MAX_RESOLUTIONS>,
    default_resolution: Option<Resolution>,
    features: FeatureChange,
    dirt_newly_needed: bool,
    resend_situation: bool,
    resend_position: bool,
    resend_shape: bool,
    stats: Stats,
}

impl HostState {
    fn dispatch(&mut self, m: HostMessage<'_>) {
        match m {
            HostMessage::Version {
                version, accepted, ..
            } => self.version_reply = Some((version, accepted)),
            HostMessage::VramAck(ctx) => self.vram_ack = Some(ctx),
            HostMessage::SituationAck(_) => {}
            HostMessage::Feature(f) => {
                log::debug!("synthvid: FEATURE_CHANGE {f:?}");
                self.stats.feature_changes += 1;
                self.dirt_newly_needed |=
                    f.is_dirt_needed != 0 && self.features.is_dirt_needed == 0;
                self.resend_situation |= f.is_situation_needed != 0;
                self.resend_position |= f.is_ptr_position_needed != 0;
                self.resend_shape |= f.is_ptr_shape_needed != 0;
                self.features = f;
            }
            HostMessage::Resolutions {
                default_index,
                entries,
            } => {
                if self.resolutions_received {
                    self.stats.unexpected += 1;
                    return;
                }
                self.resolutions_received = true;
                for (i, e) in entries.iter().enumerate() {
                    let r = Resolution {
                        width: u32::from(e.width.get()),
                        height: u32::from(e.height.get()),
                    };
                    if r.width == 0 || r.height == 0 {
                        continue;
                    }
                    if usize::from(default_index) == i {
                        self.default_resolution = Some(r);
                    }
                    // More entries than asked for are the host's problem: keep the first ones.
                    let _ = self.resolutions.push(r);
                }
            }
            HostMessage::Other {
                kind: msg::ERROR, ..
            } => {
                log::warn!("synthvid: the host reported an error");
                self.stats.host_errors += 1;
            }
            HostMessage::BiosInfo(_) | HostMessage::Capability(_) | HostMessage::Other { .. } => {
                self.stats.unexpected += 1;
            }
        }
    }
}

/// The channel and what came over it.
struct Link<'b, T: Transport, H: Hal> {
    ch: Channel<'b, T, H, (), 1>,
    rx: [u8; RX_BUFFER],
    host: HostState,
}

impl<T: Transport, H: Hal> Link<'_, T, H> {
    fn send(&mut self, kind: u32, payload: &[&[u8]]) -> Result<(), Error> {
        let len: usize = payload.iter().map(|p| p.len()).sum();
        let h = protocol::headers(kind, len);
        let mut parts: [&[u8]; 4] = [&h, &[], &[], &[]];
        for (slot, p) in parts[1..].iter_mut().zip(payload) {
            *slot = p;
        }
        self.ch.send(&parts[..1 + payload.len().min(3)])?;
        Ok(())
    }

    /// Receives up to `budget` packets; returns whether more may be waiting.
    fn pump(&mut self, budget: usize) -> Result<bool, Error> {
        for _ in 0..budget {
            match self.ch.recv(&mut self.rx)? {
                None => return Ok(self.ch.end_batch()?),
                Some(Received::Packet(p)) => match protocol::parse_host_message(p.payload()) {
                    Ok(m) => self.host.dispatch(m),
                    Err(e) => {
                        log::warn!("synthvid: dropped host message: {e}");
                        self.host.stats.malformed += 1;
                    }
                },
                // No request ever asks for a completion; a host that sends one anyway is
                // answered by nothing.
                Some(_) => self.host.stats.unexpected += 1,
            }
        }
        self.ch.yield_batch()?;
        Ok(true)
    }

    fn wait_until(
        &mut self,
        waiter: &mut impl Wait,
        mut done: impl FnMut(&HostState) -> bool,
    ) -> Result<(), Error> {
        waiter.restart();
        loop {
            let more = self.pump(POLL_BUDGET)?;
            if done(&self.host) {
                return Ok(());
            }
            if !more {
                self.ch.bus().poll();
                waiter.wait().map_err(ChannelError::from)?;
            }
        }
    }
}

/// An open synthetic video device with its VRAM mapped and a mode set.
///
/// `K` is the number of damage rectangles tracked between flushes.
pub struct Synthvid<'b, T: Transport, H: Hal, const K: usize = DEFAULT_DIRTY_RECTS> {
    link: Link<'b, T, H>,
    vram: Vram,
    version: SynthvidVersion,
    mode: Mode,
    dirty: DirtyRects<K>,
    send_dirt_unrequested: bool,
    pointer_hidden: bool,
    pointer: (i32, i32, bool),
    shape_wanted: bool,
}

impl<T: Transport, H: Hal, const K: usize> core::fmt::Debug for Synthvid<'_, T, H, K> {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("Synthvid")
            .field("version", &self.version)
            .field("mode", &self.mode)
            .field("vram_gpa", &self.vram.gpa())
            .field("stats", &self.link.host.stats)
            .finish()
    }
}

impl<'b, T: Transport, H: Hal, const K: usize> Synthvid<'b, T, H, K> {
    /// Opens the first synthetic video offer and brings it up (devices §7.3): negotiates the
    /// version for the connection's VMBus version, fetches the supported resolutions (3.5),
    /// maps `mmio_megabytes` MiB of `window` as VRAM, announces it with VRAM_LOCATION (and
    /// waits for the ACK echoing its GPA), sets the mode with SITUATION_UPDATE, hides the
    /// pointer if asked and clears the screen. Thread context; bounded by `waiter`. On failure
    /// the channel is closed again. Poll once after it returns, before waiting for an
    /// interrupt: packets the host sent behind the handshake's replies raise none.
    pub fn open(
        bus: &'b vmbus_guest::Vmbus<T, H>,
        window: VramWindow,
        config: &Config,
        waiter: &mut impl Wait,
    ) -> Result<Self, Error> {
        let ch = Channel::open_class(bus, DeviceClass::Video, None, &config.channel, waiter)?;
        let mut link = Link {
            ch,
            rx: [0; RX_BUFFER],
            host: HostState::default(),
        };
        match Self::bring_up(&mut link, window, config, waiter) {
            Ok((vram, version, mode)) => {
                let mut dev = Self {
                    link,
                    vram,
                    version,
                    mode,
                    dirty: DirtyRects::new(),
                    send_dirt_unrequested: config.send_dirt_unrequested,
                    pointer_hidden: false,
                    pointer: (0, 0, true),
                    shape_wanted: false,
                };
                // The host asked for nothing yet: announce state once now.
                dev.link.host.resend_situation = false;
                if config.hide_pointer {
                    dev.hide_pointer()?;
                }
                dev.framebuffer().clear(config.clear_color);
                Ok(dev)
            }
            Err(e) => {
                let _ = link.ch.close(waiter);
                Err(e)
            }
        }
    }

    fn bring_up(
        link: &mut Link<'b, T, H>,
        window: VramWindow,
        config: &Config,
        waiter: &mut impl Wait,
    ) -> Result<(Vram, SynthvidVersion, Mode), Error> {
        let vram_bytes = usize::from(link.ch.offer().mmio_megabytes) << 20;
        if vram_bytes == 0 {
            return Err(Error::NoVram);
        }
        let vmbus = link.ch.bus().version().unwrap_or(VmbusVersion::V1_1);
        let mut version = None;
        for &v in candidate_versions(vmbus) {
            link.host.version_reply = None;
            let req = VersionRequest {
                version: v.0.into(),
            };
            link.send(msg::VERSION_REQUEST, &[req.as_bytes()])?;
            link.wait_until(waiter, |h| h.version_reply.is_some())?;
            match link.host.version_reply {
                Some((answered, true)) if answered == v => {
                    version = Some(v);
                    break;
                }
                Some((_, true)) => {
                    return Err(Error::Protocol("VERSION_RESPONSE for another version"));
                }
                _ => log::info!("synthvid: host rejected version {v}"),
            }
        }
        let version = version.ok_or(Error::VersionRejected)?;
        log::info!("synthvid: version {version}, {} MiB VRAM", vram_bytes >> 20);
        if version.has_resolution_list() {
            let req = ResolutionRequest {
                maximum_resolution_count: RESOLUTION_REQUEST_COUNT,
            };
            link.send(msg::RESOLUTION_REQUEST, &[req.as_bytes()])?;
            link.wait_until(waiter, |h| h.resolutions_received)?;
        }
        let wanted = match config.resolution {
            Some((w, h)) => Resolution {
                width: w,
                height: h,
            },
            None => link.host.default_resolution.unwrap_or(Resolution {
                width: FALLBACK_MODE.0,
                height: FALLBACK_MODE.1,
            }),
        };
        let mode = check_mode(version, &link.host.resolutions, vram_bytes, wanted)?;
        if window.len() < vram_bytes {
            return Err(Error::VramWindowTooSmall {
                needed: vram_bytes,
                have: window.len(),
            });
        }
        if !window.gpa().is_multiple_of(HV_PAGE_SIZE as u64) {
            return Err(Error::Map(vmbus_guest::HalError::InvalidRequest));
        }
        let vram = Vram::map(link.ch.bus().hal(), window, vram_bytes).map_err(Error::Map)?;
        let gpa = vram.gpa();
        link.host.vram_ack = None;
        let loc = VramLocation {
            user_context: gpa.into(),
            is_vram_gpa_specified: 1,
            vram_gpa: gpa.into(),
        };
        link.send(msg::VRAM_LOCATION, &[loc.as_bytes()])?;
        link.wait_until(waiter, |h| h.vram_ack.is_some())?;
        if link.host.vram_ack != Some(gpa) {
            return Err(Error::Protocol(
                "VRAM_LOCATION_ACK does not echo the context",
            ));
        }
        send_situation(link, mode)?;
        Ok((vram, version, mode))
    }

    /// The negotiated version.
    pub fn version(&self) -> SynthvidVersion {
        self.version
    }

    /// The current mode.
    pub fn mode(&self) -> Mode {
        self.mode
    }

    /// The mapped VRAM's guest-physical address and size.
    pub fn vram(&self) -> (u64, usize) {
        (self.vram.gpa(), self.vram.len())
    }

    /// The resolutions the host supports (3.5; empty before).
    pub fn resolutions(&self) -> &[Resolution] {
        &self.link.host.resolutions
    }

    /// What the host asked for in its last FEATURE_CHANGE (all zero if it never sent one).
    pub fn features(&self) -> FeatureChange {
        self.link.host.features
    }

    /// Counters.
    pub fn stats(&self) -> Stats {
        self.link.host.stats
    }

    /// The damage not yet flushed.
    pub fn dirty(&self) -> &[Rect] {
        self.dirty.as_slice()
    }

    /// A drawing view of the screen.
    pub fn framebuffer(&mut self) -> Framebuffer<'_, K> {
        Framebuffer {
            vram: &mut self.vram,
            mode: self.mode,
            dirty: &mut self.dirty,
        }
    }

    /// Handles what the host sent (up to [`POLL_BUDGET`] packets): FEATURE_CHANGE is recorded
    /// and answered (situation and pointer re-sent when asked; when the host starts wanting
    /// DIRT the whole screen becomes damaged so its first picture is complete). Returns
    /// whether more may be waiting. Interrupt-safe (no lock, no wait).
    pub fn poll(&mut self) -> Result<bool, Error> {
        let more = self.link.pump(POLL_BUDGET)?;
        let h = &mut self.link.host;
        if core::mem::take(&mut h.dirt_newly_needed) {
            self.dirty.add(self.mode.screen());
        }
        if core::mem::take(&mut self.link.host.resend_situation) {
            send_situation(&mut self.link, self.mode)?;
        }
        if core::mem::take(&mut self.link.host.resend_position) {
            let (x, y, visible) = self.pointer;
            self.send_position(x, y, visible)?;
        }
        if core::mem::take(&mut self.link.host.resend_shape) {
            if self.pointer_hidden {
                self.send_shape(&transparent_shape())?;
            } else {
                self.shape_wanted = true;
            }
        }
        Ok(more)
    }

    /// Whether the host asked for the pointer shape again while a caller-set shape was shown:
    /// call [`Self::set_pointer_shape`] with it.
    pub fn pointer_shape_wanted(&self) -> bool {
        self.shape_wanted
    }

    /// Sends the damage recorded since the last flush as DIRT messages (at most 255
    /// rectangles each), if the host asked for DIRT (or [`Config::send_dirt_unrequested`]);
    /// otherwise forgets it. Returns the number of rectangles sent. Interrupt-safe. On
    /// [`ChannelError::Full`] the damage is kept: retry later.
    pub fn flush(&mut self) -> Result<usize, Error> {
        if self.dirty.is_empty() {
            return Ok(0);
        }
        if self.link.host.features.is_dirt_needed == 0 && !self.send_dirt_unrequested {
            self.dirty.clear();
            return Ok(0);
        }
        let mut rects = [0u8; MAX_DIRT_RECTS * 16];
        let all = self.dirty.as_slice();
        let mut sent = 0;
        for chunk in all.chunks(MAX_DIRT_RECTS) {
            for (r, out) in chunk.iter().zip(rects.chunks_exact_mut(16)) {
                let w = WireRect {
                    x1: (r.x as i32).into(),
                    y1: (r.y as i32).into(),
                    x2: (r.right() as i32).into(),
                    y2: (r.bottom() as i32).into(),
                };
                out.copy_from_slice(w.as_bytes());
            }
            let head = DirtHeader {
                video_output: 0,
                dirt_count: chunk.len() as u8,
            };
            let body = &rects[..chunk.len() * 16];
            self.link.send(msg::DIRT, &[head.as_bytes(), body])?;
            self.link.host.stats.dirt_messages += 1;
            self.link.host.stats.dirt_rects += chunk.len() as u64;
            sent += chunk.len();
        }
        self.dirty.clear();
        Ok(sent)
    }

    /// Changes the resolution (3.5: one of [`Self::resolutions`]; otherwise any mode that fits
    /// the VRAM, at most 1600 × 1200 on 3.0) with a new SITUATION_UPDATE; clears the screen to
    /// `clear` and damages all of it.
    pub fn set_resolution(&mut self, width: u32, height: u32, clear: u32) -> Result<(), Error> {
        let mode = check_mode(
            self.version,
            &self.link.host.resolutions,
            self.vram.len(),
            Resolution { width, height },
        )?;
        send_situation(&mut self.link, mode)?;
        self.mode = mode;
        self.dirty.clear();
        self.framebuffer().clear(clear);
        Ok(())
    }

    fn send_position(&mut self, x: i32, y: i32, visible: bool) -> Result<(), Error> {
        let p = PointerPosition {
            is_visible: u8::from(visible),
            video_output: 0,
            image_x: x.into(),
            image_y: y.into(),
        };
        self.link.send(msg::POINTER_POSITION, &[p.as_bytes()])
    }

    fn send_shape(&mut self, s: &PointerShape<'_>) -> Result<(), Error> {
        if s.width == 0
            || s.height == 0
            || s.width > MAX_CURSOR
            || s.height > MAX_CURSOR
            || s.hot_x >= s.width
            || s.hot_y >= s.height
            || s.argb.len() != (s.width * s.height * 4) as usize
        {
            return Err(Error::BadPointerShape);
        }
        let h = PointerShapeHeader {
            part_index: CURSOR_COMPLETE,
            is_argb: 1,
            width: s.width.into(),
            height: s.height.into(),
            hot_x: s.hot_x.into(),
            hot_y: s.hot_y.into(),
        };
        self.link.send(msg::POINTER_SHAPE, &[h.as_bytes(), s.argb])
    }

    /// Moves the host-drawn pointer (POINTER_POSITION).
    pub fn set_pointer_position(&mut self, x: i32, y: i32, visible: bool) -> Result<(), Error> {
        self.send_position(x, y, visible)?;
        self.pointer = (x, y, visible);
        Ok(())
    }

    /// Shows `shape` as the pointer (POINTER_SHAPE, ARGB, complete in one message).
    pub fn set_pointer_shape(&mut self, shape: &PointerShape<'_>) -> Result<(), Error> {
        self.send_shape(shape)?;
        self.pointer_hidden = false;
        self.shape_wanted = false;
        Ok(())
    }

    /// Hides the pointer as Linux does: POINTER_POSITION {visible, 0, 0} then a 1 × 1
    /// transparent ARGB shape (devices §4.6).
    pub fn hide_pointer(&mut self) -> Result<(), Error> {
        self.set_pointer_position(0, 0, true)?;
        self.send_shape(&transparent_shape())?;
        self.pointer_hidden = true;
        self.shape_wanted = false;
        Ok(())
    }

    /// Closes the channel. The VRAM stays where the host was told it is (the platform owns the
    /// mapping).
    pub fn close(self, waiter: &mut impl Wait) -> Released {
        self.link.ch.close(waiter)
    }
}

fn transparent_shape() -> PointerShape<'static> {
    PointerShape {
        width: 1,
        height: 1,
        hot_x: 0,
        hot_y: 0,
        argb: &TRANSPARENT_PIXEL,
    }
}

fn send_situation<T: Transport, H: Hal>(
    link: &mut Link<'_, T, H>,
    mode: Mode,
) -> Result<(), Error> {
    let s = SituationUpdate {
        user_context: 0.into(),
        video_output_count: 1,
        output: VideoOutput {
            active: 1,
            vram_offset: 0.into(),
            depth_bits: mode.depth_bits,
            width: mode.width.into(),
            height: mode.height.into(),
            pitch_bytes: mode.stride.into(),
        },
    };
    link.send(msg::SITUATION_UPDATE, &[s.as_bytes()])
}

/// Checks a wanted resolution against the version, the host's list and the VRAM.
fn check_mode(
    version: SynthvidVersion,
    list: &[Resolution],
    vram_bytes: usize,
    r: Resolution,
) -> Result<Mode, Error> {
    let mode = Mode::packed(r.width, r.height, version.depth_bits());
    let in_list = list.is_empty() || list.contains(&r);
    let win7_ok = version.depth_bits() != 16 || (r.width <= WIN7_MAX.0 && r.height <= WIN7_MAX.1);
    if r.width == 0
        || r.height == 0
        || r.width > 0x7FFF
        || r.height > 0x7FFF
        || !in_list
        || !win7_ok
        || mode.bytes() > vram_bytes as u64
    {
        return Err(Error::UnsupportedMode {
            width: r.width,
            height: r.height,
        });
    }
    Ok(mode)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn candidates_follow_linux() {
        let w10 = [SynthvidVersion::WIN10, SynthvidVersion::WIN8];
        assert_eq!(candidate_versions(VmbusVersion::V4_0), &w10);
        assert_eq!(candidate_versions(VmbusVersion::V5_0), &w10);
        assert_eq!(
            candidate_versions(VmbusVersion::V5_3),
            &[SynthvidVersion::WIN10]
        );
        assert_eq!(
            candidate_versions(VmbusVersion::V4_1),
            &[SynthvidVersion::WIN10]
        );
        assert_eq!(
            candidate_versions(VmbusVersion::V3_0),
            &[SynthvidVersion::WIN8, SynthvidVersion::WIN7]
        );
        assert_eq!(
            candidate_versions(VmbusVersion::V1_1),
            &[SynthvidVersion::WIN7]
        );
    }

    #[test]
    fn modes_are_checked() {
        let list = [Resolution {
            width: 1024,
            height: 768,
        }];
        let r = |width, height| Resolution { width, height };
        assert!(check_mode(SynthvidVersion::WIN10, &list, 8 << 20, r(1024, 768)).is_ok());
        assert!(check_mode(SynthvidVersion::WIN10, &list, 8 << 20, r(800, 600)).is_err());
        assert!(check_mode(SynthvidVersion::WIN8, &[], 8 << 20, r(1920, 1080)).is_ok());
        assert!(check_mode(SynthvidVersion::WIN8, &[], 4 << 20, r(1920, 1080)).is_err());
        assert!(check_mode(SynthvidVersion::WIN7, &[], 8 << 20, r(1920, 1080)).is_err());
        assert!(check_mode(SynthvidVersion::WIN7, &[], 8 << 20, r(0, 10)).is_err());
    }
}
