//! GPA overlay pages (hypercall page, SIMP, SIEFP, reference TSC page): while enabled the
//! overlay's own contents cover the RAM page at its GPA; disabling brings the RAM back and
//! keeps the overlay contents for the next enable, as the TLFS describes overlays.

use super::memory::{GuestMemory, PAGE_SIZE};

/// One overlay page.
#[derive(Debug)]
pub(crate) struct Overlay {
    /// GPA while mapped.
    gpa: Option<u64>,
    /// The overlay's contents while unmapped.
    contents: Vec<u8>,
    /// The RAM under the overlay while mapped.
    saved_ram: Vec<u8>,
}

impl Default for Overlay {
    fn default() -> Self {
        Self {
            gpa: None,
            contents: vec![0; PAGE_SIZE],
            saved_ram: Vec::new(),
        }
    }
}

impl Overlay {
    /// An overlay whose initial contents are `prefix` followed by zeros.
    pub(crate) fn with_contents(prefix: &[u8]) -> Self {
        let mut o = Self::default();
        o.contents[..prefix.len()].copy_from_slice(prefix);
        o
    }

    /// Makes the overlay cover `gpa` (or nothing): unmaps from the old GPA first. `gpa` must be
    /// a page inside RAM.
    pub(crate) fn set(&mut self, mem: &GuestMemory, gpa: Option<u64>) {
        if self.gpa == gpa {
            return;
        }
        if let Some(old) = self.gpa.take() {
            self.contents = mem.read(old, PAGE_SIZE).unwrap_or_default();
            mem.write(old, &self.saved_ram);
        }
        if let Some(new) = gpa {
            self.saved_ram = mem.read(new, PAGE_SIZE).unwrap_or_default();
            mem.write(new, &self.contents);
            self.gpa = Some(new);
        }
    }

    /// The GPA while mapped.
    pub(crate) fn gpa(&self) -> Option<u64> {
        self.gpa
    }
}
