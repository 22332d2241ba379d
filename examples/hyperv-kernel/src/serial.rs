//! The console: COM1 (16550 UART at port 0x3F8, 115200 8N1), behind a spin lock, with
//! `println!` and a `log` facade logger (the driver crates log through `log`).

use core::fmt::{self, Write};

use spin::Mutex;

use crate::port::{inb, outb};

const COM1: u16 = 0x3F8;
/// Line status register: transmitter holding register empty.
const LSR_THR_EMPTY: u8 = 1 << 5;
/// How long to wait for the UART before dropping a byte: a missing UART must not hang boot.
const SPIN_LIMIT: u32 = 100_000;

/// COM1. Construct it only through [`init`].
pub struct Serial(());

static CONSOLE: Mutex<Serial> = Mutex::new(Serial(()));

impl Serial {
    fn put(&mut self, byte: u8) {
        for _ in 0..SPIN_LIMIT {
            // SAFETY: COM1's line status register; reading it has no side effect.
            if unsafe { inb(COM1 + 5) } & LSR_THR_EMPTY != 0 {
                break;
            }
            core::hint::spin_loop();
        }
        // SAFETY: COM1's transmit register, which `init` configured.
        unsafe { outb(COM1, byte) };
    }
}

impl Write for Serial {
    fn write_str(&mut self, s: &str) -> fmt::Result {
        for byte in s.bytes() {
            if byte == b'\n' {
                self.put(b'\r');
            }
            self.put(byte);
        }
        Ok(())
    }
}

/// Programs COM1 for 115200 baud, 8 data bits, no parity, one stop bit, FIFOs on.
pub fn init() {
    let registers: [(u16, u8); 7] = [
        (1, 0x00), // no interrupts: the console is polled
        (3, 0x80), // DLAB: the next two writes set the divisor
        (0, 0x01), // divisor 1: 115200 baud
        (1, 0x00),
        (3, 0x03), // 8N1, DLAB off
        (2, 0xC7), // FIFOs on and cleared, 14-byte threshold
        (4, 0x0B), // DTR, RTS, OUT2
    ];
    for (offset, value) in registers {
        // SAFETY: COM1's registers, written in the 16550 initialisation order.
        unsafe { outb(COM1 + offset, value) };
    }
    // The driver crates report host misbehaviour through `log`; show it on the console.
    if log::set_logger(&LOGGER).is_ok() {
        log::set_max_level(log::LevelFilter::Info);
    }
}

/// Writes formatted text to COM1 (used by [`println!`](crate::println)).
pub fn print(args: fmt::Arguments<'_>) {
    let _ = CONSOLE.lock().write_fmt(args);
}

/// Writes to COM1 even if the console lock is held (the panic handler: the panicking code may
/// hold it).
pub fn print_unlocked(args: fmt::Arguments<'_>) {
    let _ = Serial(()).write_fmt(args);
}

/// Prints a line to COM1.
#[macro_export]
macro_rules! println {
    () => { $crate::serial::print(format_args!("\n")) };
    ($($arg:tt)*) => { $crate::serial::print(format_args!("{}\n", format_args!($($arg)*))) };
}

/// The driver crates' `log` records, on COM1.
struct SerialLogger;

static LOGGER: SerialLogger = SerialLogger;

impl log::Log for SerialLogger {
    fn enabled(&self, metadata: &log::Metadata<'_>) -> bool {
        metadata.level() <= log::max_level()
    }

    fn log(&self, record: &log::Record<'_>) {
        if self.enabled(record.metadata()) {
            print(format_args!(
                "  [{} {}] {}\n",
                record.level(),
                record.target(),
                record.args()
            ));
        }
    }

    fn flush(&self) {}
}
