//! What the kernel found, as short lines for the status screen (the serial console gets the
//! full narration as it happens).

use core::fmt::Write;

use heapless::{String, Vec};

/// One line of the status screen.
pub type Line = String<96>;

/// The status screen's contents.
#[derive(Default)]
pub struct Status {
    /// Hypervisor version and VMBus version.
    pub host: Line,
    /// VMBus devices the host offered.
    pub offers: Line,
    /// One line per disk.
    pub disks: Vec<Line, 4>,
    /// The network adapter and its address.
    pub network: Line,
    /// The display.
    pub video: Line,
    /// What was typed on the keyboard since the last Enter.
    pub typed: Line,
}

/// A line from formatted text (cut at 96 bytes).
pub fn line(args: core::fmt::Arguments<'_>) -> Line {
    let mut s = Line::new();
    let _ = s.write_fmt(args);
    s
}
