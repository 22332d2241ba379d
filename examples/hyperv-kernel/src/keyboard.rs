//! The synthetic keyboard (synthhid): keystrokes decoded with a US layout, echoed on COM1 and
//! shown on the status screen — type into the VM's console window to see it.

use pc_keyboard::DecodedKey;
use pc_keyboard::layouts::Us104Key;
use synthhid::Keyboard as SynthKeyboard;
use synthhid::keys::Set1Decoder;
use vmbus_guest::protocol::DeviceClass;

use crate::hyperv::{self, Bus, SECOND, Transport};
use crate::memory::KernelHal;
use crate::println;
use crate::status::{Line, Status};

/// The keyboard and its decoder.
pub struct Keyboard {
    device: SynthKeyboard<'static, Transport, KernelHal>,
    decoder: Set1Decoder<Us104Key>,
}

impl Keyboard {
    /// Opens the synthetic keyboard, if the host offered one.
    pub fn open(bus: &'static Bus) -> Option<Self> {
        bus.find(DeviceClass::Keyboard, None)?;
        let mut waiter = hyperv::waiter(5 * SECOND);
        match SynthKeyboard::open(bus, &mut waiter) {
            Ok(device) => {
                println!(
                    "keyboard: synthetic keyboard open; keys typed on the console are echoed here"
                );
                Some(Self {
                    device,
                    decoder: Set1Decoder::new(Us104Key),
                })
            }
            Err(e) => {
                println!("keyboard: {e}");
                None
            }
        }
    }

    /// Takes the keystrokes that arrived into the status's typed line (Enter starts a new
    /// one). Returns `Ok(true)` if the line changed, `Err` if the device failed.
    pub fn poll(&mut self, status: &mut Status) -> Result<bool, synthhid::Error> {
        let Self { device, decoder } = self;
        let mut changed = false;
        device.poll(|event| {
            let Some(DecodedKey::Unicode(c)) = decoder.feed(&event) else {
                return;
            };
            changed = true;
            match c {
                '\n' | '\r' => {
                    println!("keyboard: typed \"{}\"", status.typed.as_str());
                    status.typed = Line::new();
                }
                '\u{8}' => {
                    status.typed.pop();
                }
                // A full line starts over.
                c if !c.is_control() && status.typed.push(c).is_err() => {
                    status.typed = Line::new();
                }
                _ => {}
            }
        })?;
        Ok(changed)
    }
}
