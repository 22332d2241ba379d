//! Mock synthetic video VSP (devices §4, §7.3, §7.7), written from the protocol facts alone:
//! it parses what the guest sends by byte offset, answers like Hyper-V / OpenVMM, keeps the
//! screen the host shows (updated from the VRAM only where DIRT says, once it asked for DIRT
//! with FEATURE_CHANGE) and writes it to PNG.
//!
//! # What it rejects (each is a protocol error, see [`crate::vmbus::MockVmbusHost::protocol_errors`])
//!
//! * a pipe header that is not type 1, whose size exceeds the packet, or a synthvid size other
//!   than the pipe size (header + payload, as Linux sends it); a completion request;
//! * any message before an accepted VERSION_REQUEST, and a second VERSION_REQUEST after one
//!   was accepted (fatal, as in OpenVMM: the device stops answering);
//! * RESOLUTION_REQUEST below 3.5; VRAM_LOCATION not 17 bytes, unaligned, or whose
//!   `mmio_megabytes` range leaves the MMIO window;
//! * SITUATION_UPDATE before VRAM_LOCATION, with no or several outputs, a depth other than
//!   the version's, a pitch below width × bytes per pixel, a mode beyond the VRAM, or (3.5) not
//!   in the resolution list;
//! * POINTER_SHAPE not complete in one part, larger than 96 × 96 or shorter than its image;
//! * DIRT before a mode, with a count beyond the message, or a rectangle outside the screen.

use std::path::Path;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use vmbus_guest::protocol::Guid;

use crate::hv::MockHypervisor;
use crate::vmbus::{DeviceModel, DeviceOffer, HostChannel, HostPacket, PACKET_TYPE_INBAND};

/// Synthetic video class GUID.
pub const VIDEO_CLASS: Guid = Guid::from_str_const("da0a7802-e377-4aac-8e77-0558eb1073f8");

const ERROR: u32 = 0;
const VERSION_REQUEST: u32 = 1;
const VERSION_RESPONSE: u32 = 2;
const VRAM_LOCATION: u32 = 3;
const VRAM_LOCATION_ACK: u32 = 4;
const SITUATION_UPDATE: u32 = 5;
const SITUATION_UPDATE_ACK: u32 = 6;
const POINTER_POSITION: u32 = 7;
const POINTER_SHAPE: u32 = 8;
const FEATURE_CHANGE: u32 = 9;
const DIRT: u32 = 10;
const RESOLUTION_REQUEST: u32 = 13;
const RESOLUTION_RESPONSE: u32 = 14;

fn u32_at(b: &[u8], at: usize) -> u32 {
    u32::from_le_bytes([b[at], b[at + 1], b[at + 2], b[at + 3]])
}
fn u64_at(b: &[u8], at: usize) -> u64 {
    u64::from(u32_at(b, at)) | (u64::from(u32_at(b, at + 4)) << 32)
}

/// What the host sends in FEATURE_CHANGE.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Features {
    /// is_dirt_needed.
    pub dirt: bool,
    /// is_ptr_position_needed.
    pub pointer_position: bool,
    /// is_ptr_shape_needed.
    pub pointer_shape: bool,
    /// is_situation_needed.
    pub situation: bool,
    /// Send the 132-byte V2 form (with an EDID block).
    pub v2: bool,
}

/// How the mock video host behaves.
#[derive(Clone, Debug)]
pub struct VideoConfig {
    /// Highest 3.x minor version accepted (5 = 3.5; 2 = a WIN8 host; 0 = WIN7).
    pub max_minor: u16,
    /// The offer's `mmio_megabytes` (VRAM size).
    pub mmio_megabytes: u16,
    /// Resolutions answered to RESOLUTION_REQUEST (with ≥ 64 asked for, as OpenVMM).
    pub resolutions: Vec<(u16, u16)>,
    /// Index of the preferred resolution.
    pub default_index: u8,
    /// FEATURE_CHANGE sent after the first SITUATION_UPDATE (`None`: never, like OpenVMM).
    pub feature_change: Option<Features>,
}

impl VideoConfig {
    /// A current Hyper-V host: 3.5, 8 MiB, a few resolutions (1024 × 768 preferred), and
    /// FEATURE_CHANGE (V2 form) asking for DIRT and the pointer.
    pub fn hyperv() -> Self {
        Self {
            max_minor: 5,
            mmio_megabytes: 8,
            resolutions: vec![
                (1024, 768),
                (1280, 1024),
                (800, 600),
                (1920, 1080),
                (640, 480),
            ],
            default_index: 0,
            feature_change: Some(Features {
                dirt: true,
                pointer_position: true,
                pointer_shape: true,
                situation: false,
                v2: true,
            }),
        }
    }
}

/// The mode the guest set.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Situation {
    /// Width.
    pub width: u32,
    /// Height.
    pub height: u32,
    /// Bytes per line.
    pub pitch: u32,
    /// 16 or 32.
    pub depth: u8,
    /// Offset of the first pixel in VRAM.
    pub vram_offset: u32,
}

/// The host-drawn pointer.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Pointer {
    /// Visible flag of the last POINTER_POSITION.
    pub visible: bool,
    /// Position.
    pub x: i32,
    /// Position.
    pub y: i32,
    /// Size of the last shape (0 × 0 before one).
    pub shape: (u32, u32),
    /// Whether the last shape's pixels are all transparent.
    pub transparent: bool,
}

/// A picture of the screen: `0x00RRGGBB` pixels, row-major.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Screen {
    /// Width.
    pub width: u32,
    /// Height.
    pub height: u32,
    /// Pixels.
    pub pixels: Vec<u32>,
}

impl Screen {
    /// Pixel at (x, y).
    pub fn pixel(&self, x: u32, y: u32) -> u32 {
        self.pixels[(y * self.width + x) as usize]
    }

    /// Writes the screen as an 8-bit RGB PNG.
    pub fn write_png(&self, path: &Path) -> std::io::Result<()> {
        let file = std::io::BufWriter::new(std::fs::File::create(path)?);
        let mut enc = png::Encoder::new(file, self.width, self.height);
        enc.set_color(png::ColorType::Rgb);
        enc.set_depth(png::BitDepth::Eight);
        let mut w = enc.write_header().map_err(std::io::Error::other)?;
        let data: Vec<u8> = self
            .pixels
            .iter()
            .flat_map(|p| [(p >> 16) as u8, (p >> 8) as u8, *p as u8])
            .collect();
        w.write_image_data(&data).map_err(std::io::Error::other)?;
        w.finish().map_err(std::io::Error::other)
    }

    /// Reads an 8-bit RGB or RGBA PNG.
    pub fn read_png(path: &Path) -> std::io::Result<Screen> {
        let dec = png::Decoder::new(std::io::BufReader::new(std::fs::File::open(path)?));
        let mut r = dec.read_info().map_err(std::io::Error::other)?;
        let mut buf = vec![0; r.output_buffer_size().unwrap_or(0)];
        let info = r.next_frame(&mut buf).map_err(std::io::Error::other)?;
        let step = match info.color_type {
            png::ColorType::Rgb => 3,
            png::ColorType::Rgba => 4,
            other => {
                return Err(std::io::Error::other(format!(
                    "unsupported PNG colour {other:?}"
                )));
            }
        };
        let pixels = buf[..info.buffer_size()]
            .chunks_exact(step)
            .map(|c| (u32::from(c[0]) << 16) | (u32::from(c[1]) << 8) | u32::from(c[2]))
            .collect();
        Ok(Screen {
            width: info.width,
            height: info.height,
            pixels,
        })
    }
}

#[derive(Debug, Default)]
struct State {
    version: Option<u32>,
    versions_requested: Vec<u32>,
    dead: bool,
    vram_gpa: Option<u64>,
    situation: Option<Situation>,
    situations: u32,
    features_sent: Option<Features>,
    resolution_requests: u32,
    pointer: Pointer,
    screen: Vec<u32>,
    dirt_messages: u32,
    dirt_rects: Vec<(i32, i32, i32, i32)>,
    received: Vec<u32>,
    errors: Vec<String>,
    to_send: Vec<Vec<u8>>,
}

/// The mock video VSP. Clones share the device state (one to plug into the host, one to
/// inspect).
#[derive(Clone)]
pub struct VideoVsp {
    hv: MockHypervisor,
    config: Arc<VideoConfig>,
    state: Arc<Mutex<State>>,
}

impl VideoVsp {
    /// A video device on `hv` (whose MMIO window backs the VRAM).
    pub fn new(hv: MockHypervisor, config: VideoConfig) -> Self {
        Self {
            hv,
            config: Arc::new(config),
            state: Arc::new(Mutex::new(State::default())),
        }
    }

    /// The offer: the video class, `instance`, the configured `mmio_megabytes`.
    pub fn offer(&self, instance: Guid) -> DeviceOffer {
        let mut o = DeviceOffer::new(VIDEO_CLASS, instance);
        o.mmio_megabytes = self.config.mmio_megabytes;
        o
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// The accepted version.
    pub fn version(&self) -> Option<u32> {
        self.lock().version
    }

    /// Every VERSION_REQUEST, in order.
    pub fn versions_requested(&self) -> Vec<u32> {
        self.lock().versions_requested.clone()
    }

    /// Message types received, in order.
    pub fn received(&self) -> Vec<u32> {
        self.lock().received.clone()
    }

    /// GPA of the VRAM the guest announced.
    pub fn vram_gpa(&self) -> Option<u64> {
        self.lock().vram_gpa
    }

    /// The mode the guest set.
    pub fn situation(&self) -> Option<Situation> {
        self.lock().situation
    }

    /// The pointer.
    pub fn pointer(&self) -> Pointer {
        self.lock().pointer
    }

    /// DIRT messages received.
    pub fn dirt_messages(&self) -> u32 {
        self.lock().dirt_messages
    }

    /// Every DIRT rectangle received `(x1, y1, x2, y2)`.
    pub fn dirt_rects(&self) -> Vec<(i32, i32, i32, i32)> {
        self.lock().dirt_rects.clone()
    }

    /// What this device rejected.
    pub fn errors(&self) -> Vec<String> {
        self.lock().errors.clone()
    }

    /// Queues raw bytes (an in-band packet payload) for the guest: hostile-host tests.
    pub fn inject(&self, payload: Vec<u8>) {
        self.lock().to_send.push(payload);
    }

    /// Queues FEATURE_CHANGE now.
    pub fn send_feature_change(&self, f: Features) {
        let mut s = self.lock();
        s.features_sent = Some(f);
        s.to_send.push(feature_change(f));
    }

    /// The screen as the host shows it: after FEATURE_CHANGE asked for DIRT, only what DIRT
    /// messages named was taken from the VRAM; without DIRT mode, the VRAM as it is now.
    pub fn screen(&self) -> Option<Screen> {
        let s = self.lock();
        let sit = s.situation?;
        if s.features_sent.is_some_and(|f| f.dirt) {
            return Some(Screen {
                width: sit.width,
                height: sit.height,
                pixels: s.screen.clone(),
            });
        }
        let gpa = s.vram_gpa?;
        let mut pixels = vec![0; (sit.width * sit.height) as usize];
        drop(s);
        self.scan(gpa, sit, (0, 0, sit.width, sit.height), &mut pixels);
        Some(Screen {
            width: sit.width,
            height: sit.height,
            pixels,
        })
    }

    /// Copies the rectangle `[x1, x2) × [y1, y2)` of the VRAM into `pixels`.
    fn scan(&self, gpa: u64, sit: Situation, r: (u32, u32, u32, u32), pixels: &mut [u32]) {
        let bpp = u32::from(sit.depth / 8);
        for y in r.1..r.3 {
            let start = gpa + u64::from(sit.vram_offset) + u64::from(y * sit.pitch + r.0 * bpp);
            let Some(bytes) = self.hv.read_mmio(start, ((r.2 - r.0) * bpp) as usize) else {
                return;
            };
            for (i, px) in bytes.chunks_exact(bpp as usize).enumerate() {
                let v = if bpp == 4 {
                    u32::from_le_bytes([px[0], px[1], px[2], 0])
                } else {
                    let p = u32::from(u16::from_le_bytes([px[0], px[1]]));
                    let (r5, g6, b5) = ((p >> 11) & 31, (p >> 5) & 63, p & 31);
                    (((r5 << 3) | (r5 >> 2)) << 16)
                        | (((g6 << 2) | (g6 >> 4)) << 8)
                        | ((b5 << 3) | (b5 >> 2))
                };
                pixels[(y * sit.width + r.0) as usize + i] = v;
            }
        }
    }

    fn error(&self, ch: &HostChannel, s: &mut State, e: String) {
        ch.protocol_error(format!("video: {e}"));
        s.errors.push(e);
    }

    fn handle(&self, ch: &mut HostChannel, packet: &HostPacket) {
        let mut s = self.lock();
        if s.dead {
            return;
        }
        if packet.packet_type != PACKET_TYPE_INBAND || packet.completion_requested() {
            self.error(
                ch,
                &mut s,
                format!("packet type {} flags {}", packet.packet_type, packet.flags),
            );
            return;
        }
        let b = &packet.payload;
        if b.len() < 16 {
            self.error(ch, &mut s, format!("message of {} bytes", b.len()));
            return;
        }
        let (pipe_type, pipe_size) = (u32_at(b, 0), u32_at(b, 4) as usize);
        let (kind, vid_size) = (u32_at(b, 8), u32_at(b, 12) as usize);
        if pipe_type != 1 || pipe_size < 8 || pipe_size > b.len() - 8 || vid_size != pipe_size {
            self.error(
                ch,
                &mut s,
                format!("pipe {pipe_type}/{pipe_size}, synthvid size {vid_size}"),
            );
            return;
        }
        let p = &b[16..8 + pipe_size];
        s.received.push(kind);
        if s.version.is_none() && kind != VERSION_REQUEST {
            self.error(
                ch,
                &mut s,
                format!("message {kind} before version negotiation"),
            );
            return;
        }
        let short = |n: usize| p.len() < n;
        match kind {
            VERSION_REQUEST if short(4) => self.error(ch, &mut s, "short VERSION_REQUEST".into()),
            VERSION_REQUEST => {
                if s.version.is_some() {
                    self.error(
                        ch,
                        &mut s,
                        "second VERSION_REQUEST after acceptance (fatal)".into(),
                    );
                    s.dead = true;
                    return;
                }
                let v = u32_at(p, 0);
                s.versions_requested.push(v);
                let ok = (v & 0xFFFF) == 3 && (v >> 16) as u16 <= self.config.max_minor;
                if ok {
                    s.version = Some(v);
                }
                let mut r = header(VERSION_RESPONSE, 6);
                r.extend_from_slice(&v.to_le_bytes());
                r.extend_from_slice(&[if ok { 2 } else { 0 }, 1]);
                s.to_send.push(r);
            }
            RESOLUTION_REQUEST => {
                if s.version.is_some_and(|v| (v >> 16) < 5) || short(1) {
                    self.error(ch, &mut s, "RESOLUTION_REQUEST below 3.5 or short".into());
                    return;
                }
                s.resolution_requests += 1;
                let list: &[(u16, u16)] = if p[0] >= 64 {
                    &self.config.resolutions
                } else {
                    &[]
                };
                let mut r = header(RESOLUTION_RESPONSE, 131 + 4 * list.len());
                r.extend_from_slice(&[0u8; 128]);
                r.extend_from_slice(&[list.len() as u8, self.config.default_index, 1]);
                for (w, h) in list {
                    r.extend_from_slice(&w.to_le_bytes());
                    r.extend_from_slice(&h.to_le_bytes());
                }
                s.to_send.push(r);
            }
            VRAM_LOCATION => {
                if p.len() != 17 {
                    self.error(ch, &mut s, format!("VRAM_LOCATION of {} bytes", p.len()));
                    return;
                }
                let ctx = u64_at(p, 0);
                if p[8] == 0 {
                    s.vram_gpa = None;
                } else {
                    let gpa = u64_at(p, 9);
                    let size = u64::from(self.config.mmio_megabytes) << 20;
                    let (base, len) = self.hv.mmio_window();
                    if !gpa.is_multiple_of(4096) || gpa < base || gpa + size > base + len as u64 {
                        self.error(
                            ch,
                            &mut s,
                            format!("VRAM at {gpa:#x} (+{size:#x}) outside the MMIO window"),
                        );
                        return;
                    }
                    s.vram_gpa = Some(gpa);
                }
                let mut r = header(VRAM_LOCATION_ACK, 8);
                r.extend_from_slice(&ctx.to_le_bytes());
                s.to_send.push(r);
            }
            SITUATION_UPDATE => self.on_situation(ch, &mut s, p),
            POINTER_POSITION if short(10) => {
                self.error(ch, &mut s, "short POINTER_POSITION".into())
            }
            POINTER_POSITION => {
                s.pointer.visible = p[0] != 0;
                s.pointer.x = u32_at(p, 2) as i32;
                s.pointer.y = u32_at(p, 6) as i32;
            }
            POINTER_SHAPE => {
                if short(18) {
                    self.error(ch, &mut s, "short POINTER_SHAPE".into());
                    return;
                }
                let (part, argb, w, h) = (p[0], p[1] != 0, u32_at(p, 2), u32_at(p, 6));
                let image = if argb {
                    w * h * 4
                } else {
                    w.div_ceil(8) * h * 2
                };
                if part != 0xFF || w > 96 || h > 96 || p.len() < 18 + image as usize {
                    self.error(
                        ch,
                        &mut s,
                        format!("POINTER_SHAPE part {part} {w}x{h}, {} bytes", p.len()),
                    );
                    return;
                }
                s.pointer.shape = (w, h);
                s.pointer.transparent =
                    argb && p[18..18 + image as usize].chunks(4).all(|px| px[3] == 0);
            }
            DIRT => self.dirt(ch, &mut s, p),
            other => self.error(ch, &mut s, format!("unexpected message type {other}")),
        }
    }

    fn on_situation(&self, ch: &HostChannel, s: &mut State, p: &[u8]) {
        if p.len() < 27 {
            return self.error(ch, s, format!("SITUATION_UPDATE of {} bytes", p.len()));
        }
        let Some(version) = s.version else { return };
        if s.vram_gpa.is_none() {
            return self.error(ch, s, "SITUATION_UPDATE before VRAM_LOCATION".into());
        }
        let sit = Situation {
            vram_offset: u32_at(p, 10),
            depth: p[14],
            width: u32_at(p, 15),
            height: u32_at(p, 19),
            pitch: u32_at(p, 23),
        };
        let depth = if (version >> 16) < 2 { 16 } else { 32 };
        let vram = u64::from(self.config.mmio_megabytes) << 20;
        let in_list = (version >> 16) < 5
            || self
                .config
                .resolutions
                .iter()
                .any(|&(w, h)| u32::from(w) == sit.width && u32::from(h) == sit.height);
        if p[8] != 1
            || p[9] != 1
            || sit.depth != depth
            || sit.width == 0
            || sit.height == 0
            || u64::from(sit.pitch) < u64::from(sit.width) * u64::from(depth / 8)
            || u64::from(sit.vram_offset) + u64::from(sit.pitch) * u64::from(sit.height) > vram
            || !in_list
        {
            return self.error(
                ch,
                s,
                format!(
                    "SITUATION_UPDATE {sit:?} (outputs {}, active {})",
                    p[8], p[9]
                ),
            );
        }
        s.situation = Some(sit);
        s.situations += 1;
        s.screen = vec![0; (sit.width * sit.height) as usize];
        let mut r = header(SITUATION_UPDATE_ACK, 8);
        r.extend_from_slice(&u64_at(p, 0).to_le_bytes());
        s.to_send.push(r);
        if s.situations == 1
            && let Some(f) = self.config.feature_change
        {
            s.features_sent = Some(f);
            s.to_send.push(feature_change(f));
        }
    }

    fn dirt(&self, ch: &HostChannel, s: &mut State, p: &[u8]) {
        let (Some(sit), Some(gpa)) = (s.situation, s.vram_gpa) else {
            return self.error(ch, s, "DIRT before a mode was set".into());
        };
        if p.len() < 2 || p.len() < 2 + 16 * usize::from(p[1]) || p[0] != 0 {
            return self.error(ch, s, format!("DIRT of {} bytes", p.len()));
        }
        s.dirt_messages += 1;
        let mut pixels = std::mem::take(&mut s.screen);
        for i in 0..usize::from(p[1]) {
            let r = &p[2 + 16 * i..];
            let (x1, y1, x2, y2) = (
                u32_at(r, 0) as i32,
                u32_at(r, 4) as i32,
                u32_at(r, 8) as i32,
                u32_at(r, 12) as i32,
            );
            s.dirt_rects.push((x1, y1, x2, y2));
            if x1 < 0
                || y1 < 0
                || x1 >= x2
                || y1 >= y2
                || x2 as u32 > sit.width
                || y2 as u32 > sit.height
            {
                self.error(
                    ch,
                    s,
                    format!("DIRT rectangle {x1},{y1}-{x2},{y2} outside the screen"),
                );
                continue;
            }
            self.scan(
                gpa,
                sit,
                (x1 as u32, y1 as u32, x2 as u32, y2 as u32),
                &mut pixels,
            );
        }
        s.screen = pixels;
    }
}

fn header(kind: u32, payload: usize) -> Vec<u8> {
    // OpenVMM writes the payload size in the synthvid header; the guest must not care.
    let mut v = Vec::with_capacity(16 + payload);
    v.extend_from_slice(&1u32.to_le_bytes());
    v.extend_from_slice(&((8 + payload) as u32).to_le_bytes());
    v.extend_from_slice(&kind.to_le_bytes());
    v.extend_from_slice(&(payload as u32).to_le_bytes());
    v
}

fn feature_change(f: Features) -> Vec<u8> {
    let n = if f.v2 { 132 } else { 4 };
    let mut r = header(FEATURE_CHANGE, n);
    r.extend_from_slice(&[
        u8::from(f.dirt),
        u8::from(f.pointer_position),
        u8::from(f.pointer_shape),
        u8::from(f.situation),
    ]);
    r.resize(16 + n, 0);
    r
}

/// ERROR message type (host → guest), for hostile tests.
pub const MSG_ERROR: u32 = ERROR;

/// Builds a host → guest video message of `kind` with `payload` (pipe + synthvid headers).
pub fn host_message(kind: u32, payload: &[u8]) -> Vec<u8> {
    let mut v = header(kind, payload.len());
    v.extend_from_slice(payload);
    v
}

impl DeviceModel for VideoVsp {
    fn on_open(&mut self, _ch: &mut HostChannel) {
        let mut s = self.lock();
        s.version = None;
        s.dead = false;
    }

    fn on_packet(&mut self, ch: &mut HostChannel, packet: &HostPacket) {
        self.handle(ch, packet);
        self.poll(ch);
    }

    fn poll(&mut self, ch: &mut HostChannel) {
        let out = std::mem::take(&mut self.lock().to_send);
        for m in out {
            if let Err(e) = ch.send_inband(&m, 0, false) {
                log::warn!("video: cannot send: {e}");
            }
        }
    }
}
