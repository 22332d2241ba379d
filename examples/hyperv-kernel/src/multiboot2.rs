//! The multiboot2 boot information GRUB hands over (EBX at entry): copied once into a
//! [`BootInfo`] before anything else can overwrite it; nothing reads GRUB's copy afterwards.

use heapless::Vec;

/// Memory map entries kept (more are ignored and reported).
pub const MAX_REGIONS: usize = 64;

/// A range of physical memory from the memory map.
#[derive(Debug, Clone, Copy)]
pub struct Region {
    /// First byte.
    pub base: u64,
    /// Length in bytes.
    pub len: u64,
    /// Multiboot2 type: 1 available RAM, 3 ACPI reclaimable, 4 preserve on hibernation, 5 bad.
    pub kind: u32,
}

impl Region {
    /// Usable RAM.
    pub const AVAILABLE: u32 = 1;
}

/// The framebuffer GRUB set up (on UEFI: the GOP framebuffer).
#[derive(Debug, Clone, Copy)]
pub struct Framebuffer {
    /// Physical address.
    pub addr: u64,
    /// Bytes per line.
    pub pitch: u32,
    /// Width in pixels.
    pub width: u32,
    /// Height in pixels.
    pub height: u32,
    /// Bits per pixel.
    pub bpp: u8,
}

/// What the kernel keeps from the boot information.
#[derive(Debug, Clone)]
pub struct BootInfo {
    /// Where GRUB put the boot information (physical = virtual), and its size: the page
    /// allocator leaves it alone.
    pub location: (u64, u64),
    /// The memory map.
    pub regions: Vec<Region, MAX_REGIONS>,
    /// Memory map entries beyond [`MAX_REGIONS`].
    pub regions_dropped: usize,
    /// The framebuffer, if GRUB set one.
    pub framebuffer: Option<Framebuffer>,
    /// The ACPI RSDP (tag 15, else 14) as GRUB copied it: up to 36 bytes.
    pub rsdp: Option<[u8; 36]>,
    /// The boot loader's name ("GRUB 2.06"), as bytes (ASCII).
    pub loader: Vec<u8, 48>,
    /// The kernel command line, as bytes.
    pub cmdline: Vec<u8, 128>,
}

/// Why the boot information was not usable.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BootInfoError {
    /// EAX did not hold the multiboot2 magic: not loaded by a multiboot2 loader.
    BadMagic(u32),
    /// The structure is misaligned, truncated or its tags run past its end.
    Malformed,
}

impl core::fmt::Display for BootInfoError {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        match self {
            Self::BadMagic(m) => write!(f, "not a multiboot2 boot (EAX = {m:#x})"),
            Self::Malformed => f.write_str("malformed multiboot2 boot information"),
        }
    }
}

const TAG_END: u32 = 0;
const TAG_CMDLINE: u32 = 1;
const TAG_LOADER_NAME: u32 = 2;
const TAG_MEMORY_MAP: u32 = 6;
const TAG_FRAMEBUFFER: u32 = 8;
const TAG_ACPI_OLD: u32 = 14;
const TAG_ACPI_NEW: u32 = 15;
/// Far more than GRUB ever produces; bounds what is copied.
const MAX_INFO_BYTES: usize = 64 * 1024;

fn u32_at(bytes: &[u8], offset: usize) -> Option<u32> {
    let b = bytes.get(offset..offset.checked_add(4)?)?;
    Some(u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
}

fn u64_at(bytes: &[u8], offset: usize) -> Option<u64> {
    Some(u64::from(u32_at(bytes, offset)?) | (u64::from(u32_at(bytes, offset + 4)?) << 32))
}

/// A NUL-terminated string tag's text.
fn text<const N: usize>(body: &[u8]) -> Vec<u8, N> {
    let end = body.iter().position(|&b| b == 0).unwrap_or(body.len());
    let mut out = Vec::new();
    for &b in &body[..end.min(N)] {
        let _ = out.push(if b.is_ascii_graphic() || b == b' ' {
            b
        } else {
            b'?'
        });
    }
    out
}

/// Copies what the kernel needs out of the boot information at physical address `info`.
///
/// # Safety
///
/// `magic` and `info` are what GRUB left in EAX and EBX, and the first 4 GiB are identity
/// mapped: if the magic matches, `info` points at a multiboot2 boot information structure.
pub unsafe fn parse(magic: u32, info: u32) -> Result<BootInfo, BootInfoError> {
    if magic != crate::boot::MULTIBOOT2_BOOTLOADER_MAGIC {
        return Err(BootInfoError::BadMagic(magic));
    }
    if info == 0 || !info.is_multiple_of(8) {
        return Err(BootInfoError::Malformed);
    }
    let base = info as usize as *const u8;
    // SAFETY: GRUB's structure starts with its total size (contract above).
    let total = unsafe { base.cast::<u32>().read() } as usize;
    if !(8..=MAX_INFO_BYTES).contains(&total) {
        return Err(BootInfoError::Malformed);
    }
    // SAFETY: the structure is `total` bytes long, identity mapped, and nothing writes it
    // while this slice lives.
    let bytes = unsafe { core::slice::from_raw_parts(base, total) };
    parse_bytes(u64::from(info), bytes)
}

fn parse_bytes(address: u64, bytes: &[u8]) -> Result<BootInfo, BootInfoError> {
    let mut boot = BootInfo {
        location: (address, bytes.len() as u64),
        regions: Vec::new(),
        regions_dropped: 0,
        framebuffer: None,
        rsdp: None,
        loader: Vec::new(),
        cmdline: Vec::new(),
    };
    let mut offset = 8;
    loop {
        let kind = u32_at(bytes, offset).ok_or(BootInfoError::Malformed)?;
        let size = u32_at(bytes, offset + 4).ok_or(BootInfoError::Malformed)? as usize;
        if kind == TAG_END {
            return Ok(boot);
        }
        let body = offset
            .checked_add(size)
            .filter(|_| size >= 8)
            .and_then(|end| bytes.get(offset + 8..end))
            .ok_or(BootInfoError::Malformed)?;
        match kind {
            TAG_CMDLINE => boot.cmdline = text(body),
            TAG_LOADER_NAME => boot.loader = text(body),
            TAG_MEMORY_MAP => parse_memory_map(body, &mut boot)?,
            TAG_FRAMEBUFFER => {
                boot.framebuffer = (|| {
                    Some(Framebuffer {
                        addr: u64_at(body, 0)?,
                        pitch: u32_at(body, 8)?,
                        width: u32_at(body, 12)?,
                        height: u32_at(body, 16)?,
                        bpp: *body.get(20)?,
                    })
                })();
            }
            TAG_ACPI_OLD | TAG_ACPI_NEW if kind == TAG_ACPI_NEW || boot.rsdp.is_none() => {
                let mut rsdp = [0u8; 36];
                let n = body.len().min(36);
                rsdp[..n].copy_from_slice(&body[..n]);
                boot.rsdp = Some(rsdp);
            }
            _ => {}
        }
        offset = (offset + size + 7) & !7;
    }
}

fn parse_memory_map(body: &[u8], boot: &mut BootInfo) -> Result<(), BootInfoError> {
    let entry_size = u32_at(body, 0).ok_or(BootInfoError::Malformed)? as usize;
    if entry_size < 24 {
        return Err(BootInfoError::Malformed);
    }
    let entries = body.get(8..).ok_or(BootInfoError::Malformed)?;
    for entry in entries.chunks_exact(entry_size) {
        let region = Region {
            base: u64_at(entry, 0).ok_or(BootInfoError::Malformed)?,
            len: u64_at(entry, 8).ok_or(BootInfoError::Malformed)?,
            kind: u32_at(entry, 16).ok_or(BootInfoError::Malformed)?,
        };
        if boot.regions.push(region).is_err() {
            boot.regions_dropped += 1;
        }
    }
    Ok(())
}
