//! Fatal errors reach the host: on Hyper-V a panic or CPU exception is reported through the
//! guest crash registers with its message, so the host logs it (Hyper-V's event log) besides
//! COM1.

use core::fmt::{self, Write};
use core::ptr::NonNull;

use spin::Once;
use winhv::{HV_PAGE_SIZE, HvPage, HypervInfo};

/// What detection found, once Hyper-V is known to be there.
static HYPERV: Once<HypervInfo> = Once::new();

/// The page the host reads the crash message from.
#[repr(C, align(4096))]
struct MessagePage([u8; HV_PAGE_SIZE]);

/// Written only through the `HvPage` made in `report`, once per boot.
static mut MESSAGE_PAGE: MessagePage = MessagePage([0; HV_PAGE_SIZE]);

/// The start of a message, cut at the buffer's end.
struct Message {
    bytes: [u8; 1024],
    len: usize,
}

impl Write for Message {
    fn write_str(&mut self, s: &str) -> fmt::Result {
        let n = s.len().min(self.bytes.len() - self.len);
        self.bytes[self.len..self.len + n].copy_from_slice(&s.as_bytes()[..n]);
        self.len += n;
        Ok(())
    }
}

/// Enables crash reports to the host (call once Hyper-V is detected).
pub fn enable(info: HypervInfo) {
    HYPERV.call_once(|| info);
}

/// Reports a fatal error to the host, if on Hyper-V with crash registers; once per boot.
pub fn report(args: fmt::Arguments<'_>) {
    static REPORTED: core::sync::atomic::AtomicBool = core::sync::atomic::AtomicBool::new(false);
    let Some(info) = HYPERV.get() else {
        return;
    };
    if REPORTED.swap(true, core::sync::atomic::Ordering::Relaxed) {
        return;
    }
    let mut message = Message {
        bytes: [0; 1024],
        len: 0,
    };
    let _ = message.write_fmt(args);
    let page = (&raw mut MESSAGE_PAGE).cast::<u8>();
    let Some(virt) = NonNull::new(page) else {
        return;
    };
    // SAFETY: a page-aligned static used for nothing else, reached only here and only once
    // (REPORTED); identity mapped, so its address is its GPA.
    let mut page = unsafe { HvPage::new(virt, page as u64) };
    let cpu = crate::detect::cpu();
    // Parameters: a marker for "Rust kernel panic", then nothing.
    let _ = winhv::crash::report_crash_message(
        &cpu,
        info,
        [0x5255_5354, 0, 0],
        &mut page,
        &message.bytes[..message.len],
    );
}
