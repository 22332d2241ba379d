//! Just enough ACPI to power the machine off (sleep state S5): the RSDP GRUB copied, the
//! RSDT/XSDT, the FADT's PM1 control blocks (or, on hardware-reduced ACPI, its sleep control
//! register) and the `\_S5_` package in the DSDT for the SLP_TYP values.
//!
//! Firmware tables are read from identity-mapped physical memory, each access bounds-checked
//! against the table's length and the 4 GiB the boot code mapped.

use spin::Once;

use crate::port::{inw, outb, outw};

/// The RSDP bytes from the boot information, kept for [`power_off`].
static RSDP: Once<[u8; 36]> = Once::new();

/// The ACPI table header's size.
const HEADER: usize = 36;
/// Tables above this address are not mapped.
const MAPPED_LIMIT: u64 = 1 << 32;
/// Larger tables are not believed.
const MAX_TABLE: u32 = 1 << 20;

/// PM1 control: SCI_EN (ACPI mode on), SLP_TYP at bits 10..12, SLP_EN.
const PM1_SCI_EN: u16 = 1;
const PM1_SLP_EN: u16 = 1 << 13;
/// FADT flags: HW_REDUCED_ACPI, RESET_REG_SUP.
const FADT_HW_REDUCED: u32 = 1 << 20;
const FADT_RESET_REG_SUPPORTED: u32 = 1 << 10;

/// Keeps the RSDP for a later [`power_off`].
pub fn init(rsdp: Option<[u8; 36]>) {
    if let Some(rsdp) = rsdp {
        RSDP.call_once(|| rsdp);
    }
}

/// `len` bytes of identity-mapped physical memory at `addr`, if they lie below 4 GiB.
fn physical(addr: u64, len: usize) -> Option<&'static [u8]> {
    let end = addr.checked_add(len as u64)?;
    if addr == 0 || end > MAPPED_LIMIT {
        return None;
    }
    // SAFETY: the first 4 GiB are identity mapped (boot.rs) and firmware tables are never
    // written by this kernel (the page allocator only hands out available RAM).
    Some(unsafe { core::slice::from_raw_parts(addr as usize as *const u8, len) })
}

fn u32_at(b: &[u8], o: usize) -> Option<u32> {
    Some(u32::from_le_bytes(b.get(o..o + 4)?.try_into().ok()?))
}

fn u64_at(b: &[u8], o: usize) -> Option<u64> {
    Some(u64::from_le_bytes(b.get(o..o + 8)?.try_into().ok()?))
}

/// The whole table at `addr`, if its header, length and checksum are sane.
fn table(addr: u64) -> Option<&'static [u8]> {
    let header = physical(addr, HEADER)?;
    let len = u32_at(header, 4)?;
    if !(HEADER as u32..=MAX_TABLE).contains(&len) {
        return None;
    }
    let bytes = physical(addr, len as usize)?;
    let sum = bytes.iter().fold(0u8, |s, &b| s.wrapping_add(b));
    (sum == 0).then_some(bytes)
}

/// The table with `signature`, through the XSDT (ACPI 2.0+) or the RSDT.
fn find(rsdp: &[u8; 36], signature: &[u8; 4]) -> Option<&'static [u8]> {
    let revision = rsdp[15];
    let (root, entry) = match u64_at(rsdp, 24) {
        Some(xsdt) if revision >= 2 && xsdt != 0 => (table(xsdt)?, 8),
        _ => (table(u64::from(u32_at(rsdp, 16)?))?, 4),
    };
    root[HEADER..].chunks_exact(entry).find_map(|e| {
        let addr = if entry == 8 {
            u64_at(e, 0)?
        } else {
            u64::from(u32_at(e, 0)?)
        };
        table(addr).filter(|t| &t[..4] == signature)
    })
}

/// One AML integer of the `\_S5_` package: ZeroOp, OneOp, BytePrefix n, or a small constant.
fn aml_byte(aml: &[u8], at: &mut usize) -> Option<u8> {
    let op = *aml.get(*at)?;
    *at += 1;
    match op {
        0x0A => {
            let value = *aml.get(*at)?;
            *at += 1;
            Some(value)
        }
        0x00 | 0x01 => Some(op),
        0xFF => None,
        other => Some(other),
    }
}

/// SLP_TYPa and SLP_TYPb for S5 from the DSDT's `Name (_S5_, Package () { a, b, ... })`.
fn s5_sleep_types(dsdt: &[u8]) -> Option<(u8, u8)> {
    let at = dsdt.windows(5).position(|w| w == b"_S5_\x12")?;
    // NameOp, optionally followed by the root prefix, comes right before the name.
    let named = at >= 1
        && (dsdt[at - 1] == 0x08 || (at >= 2 && dsdt[at - 1] == b'\\' && dsdt[at - 2] == 0x08));
    if !named {
        return None;
    }
    let mut i = at + 5;
    let lead = *dsdt.get(i)?;
    i += 1 + usize::from(lead >> 6); // PkgLength
    i += 1; // NumElements
    let a = aml_byte(dsdt, &mut i)?;
    let b = aml_byte(dsdt, &mut i)?;
    Some((a, b))
}

/// A generic address structure's I/O port, if it is in I/O space.
fn gas_port(fadt: &[u8], offset: usize) -> Option<u16> {
    let space = *fadt.get(offset)?;
    let address = u64_at(fadt, offset + 4)?;
    (space == 1 && address != 0 && address <= 0xFFFF).then_some(address as u16)
}

/// Enters S5 through ACPI. Returns `false` if that was impossible (no usable tables), `true`
/// once the sleep command is written (which can take effect a moment later).
pub fn power_off() -> bool {
    let Some(fadt) = RSDP.get().and_then(|rsdp| find(rsdp, b"FACP")) else {
        return false;
    };
    let dsdt_addr = match u64_at(fadt, 140) {
        Some(x) if x != 0 && fadt.len() >= 148 => x,
        _ => u64::from(u32_at(fadt, 40).unwrap_or(0)),
    };
    let Some((slp_typ_a, slp_typ_b)) = table(dsdt_addr).and_then(s5_sleep_types) else {
        return false;
    };
    let flags = u32_at(fadt, 112).unwrap_or(0);
    if flags & FADT_HW_REDUCED != 0 {
        if let Some(port) = gas_port(fadt, 244) {
            crate::println!("powering off: ACPI S5 (sleep control port {port:#x})");
            // SAFETY: the FADT's sleep control register; writing SLP_TYP|SLP_EN enters S5.
            unsafe { outb(port, ((slp_typ_a & 7) << 2) | (1 << 5)) };
            return true;
        }
        return false;
    }
    let pm1a = match gas_port(fadt, 172) {
        Some(p) if fadt.len() >= 184 => p,
        _ => u32_at(fadt, 64).unwrap_or(0) as u16,
    };
    let pm1b = u32_at(fadt, 68).unwrap_or(0) as u16;
    if pm1a == 0 {
        return false;
    }
    enable_acpi_mode(fadt, pm1a);
    crate::println!("powering off: ACPI S5 (PM1a control port {pm1a:#x}, SLP_TYP {slp_typ_a})");
    let sleep = |typ: u8| (u16::from(typ & 7) << 10) | PM1_SLP_EN;
    // SAFETY: the FADT's PM1a (and PM1b) control ports; SLP_TYP(S5)|SLP_EN powers off.
    unsafe {
        if pm1b != 0 {
            outw(pm1b, sleep(slp_typ_b));
        }
        outw(pm1a, sleep(slp_typ_a));
    }
    true
}

/// Restarts through the FADT's reset register when it is an I/O port (Generation 2 VMs have
/// no keyboard controller). Returns only if there is none.
pub fn reset() {
    let Some(fadt) = RSDP.get().and_then(|rsdp| find(rsdp, b"FACP")) else {
        return;
    };
    if u32_at(fadt, 112).unwrap_or(0) & FADT_RESET_REG_SUPPORTED == 0 {
        return;
    }
    if let (Some(port), Some(&value)) = (gas_port(fadt, 116), fadt.get(128)) {
        // SAFETY: the FADT's reset register and value: writing it resets the machine.
        unsafe { outb(port, value) };
    }
}

/// Switches the chipset to ACPI mode through SMI_CMD if the firmware left it in legacy mode.
fn enable_acpi_mode(fadt: &[u8], pm1a: u16) {
    // SAFETY: the FADT's PM1a control port; reading it has no side effect.
    if unsafe { inw(pm1a) } & PM1_SCI_EN != 0 {
        return;
    }
    let smi_cmd = u32_at(fadt, 48).unwrap_or(0);
    let acpi_enable = fadt.get(52).copied().unwrap_or(0);
    if smi_cmd == 0 || smi_cmd > 0xFFFF || acpi_enable == 0 {
        return;
    }
    // SAFETY: the FADT's SMI command port and the value it gives for entering ACPI mode.
    unsafe { outb(smi_cmd as u16, acpi_enable) };
    for _ in 0..1_000_000 {
        // SAFETY: as above, a read of PM1a control.
        if unsafe { inw(pm1a) } & PM1_SCI_EN != 0 {
            break;
        }
        core::hint::spin_loop();
    }
}
