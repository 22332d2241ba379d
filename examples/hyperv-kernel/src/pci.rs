//! PCI configuration space (mechanism #1, ports 0xCF8/0xCFC), for one purpose: finding the
//! legacy video device of a Generation 1 VM (Microsoft 1414:5353), whose BAR 0 is the VRAM
//! the synthetic video device is pointed at.

use crate::port::{inl, outl};

const CONFIG_ADDRESS: u16 = 0xCF8;
const CONFIG_DATA: u16 = 0xCFC;
/// Hyper-V's legacy (S3 Trio emulation) video device.
const HYPERV_VIDEO: (u16, u16) = (0x1414, 0x5353);

fn address(device: u8, offset: u8) -> u32 {
    (1 << 31) | (u32::from(device) << 11) | u32::from(offset & 0xFC)
}

fn read(device: u8, offset: u8) -> u32 {
    // SAFETY: PCI configuration mechanism #1: select bus 0 / `device` / function 0, then read
    // the register; no memory is touched.
    unsafe {
        outl(CONFIG_ADDRESS, address(device, offset));
        inl(CONFIG_DATA)
    }
}

fn write(device: u8, offset: u8, value: u32) {
    // SAFETY: as `read`; only the video device's command register and BAR 0 are written
    // (sizing, then restored).
    unsafe {
        outl(CONFIG_ADDRESS, address(device, offset));
        outl(CONFIG_DATA, value);
    }
}

/// BAR 0 of Hyper-V's legacy video device on bus 0, as (address, size), if there is one and
/// it is a 32-bit memory BAR.
pub fn hyperv_video_bar() -> Option<(u64, u64)> {
    let device = (0..32).find(|&d| {
        let id = read(d, 0);
        (id as u16, (id >> 16) as u16) == HYPERV_VIDEO
    })?;
    let bar = read(device, 0x10);
    if bar & 1 != 0 || (bar >> 1) & 3 != 0 {
        return None;
    }
    // Size the BAR with memory decoding off (the command register's low half; writing zeros
    // to the status half changes nothing), then restore both.
    let command = read(device, 0x04) & 0xFFFF;
    write(device, 0x04, command & !0x3);
    write(device, 0x10, u32::MAX);
    let mask = read(device, 0x10) & !0xF;
    write(device, 0x10, bar);
    write(device, 0x04, command);
    let size = (!mask).wrapping_add(1);
    (mask != 0).then_some((u64::from(bar & !0xF), u64::from(size)))
}
