//! A [`RingMemory`] the fuzz input controls: plain heap memory for the data area, a real
//! [`ControlPage`], a check of the trait's contract on every access (the ring code may only
//! ask for `offset < data_size` and `offset + len <= contiguous_size`), a log of the bytes
//! written, and "host" mutations that fire in the middle of the endpoint's reads (the peer
//! rewriting indices and bytes while the guest copies).

use std::cell::{Cell, RefCell};
use std::collections::VecDeque;
use vmbus_guest::ring::{ControlPage, RingMemory};

/// A change the host makes to the ring.
#[derive(Clone, Debug)]
pub enum Mutation {
    /// Store a raw value as the write index.
    WriteIndex(u32),
    /// Store a raw value as the read index.
    ReadIndex(u32),
    /// Overwrite data bytes starting at a ring offset (wrapping).
    Bytes(u32, Vec<u8>),
    /// Store the pending send size.
    PendingSendSize(u32),
    /// Store the feature bits.
    FeatureBits(u32),
    /// Store the interrupt mask.
    InterruptMask(u32),
}

/// One access the endpoint made to the data area.
#[derive(Clone, Copy, Debug)]
pub struct Access {
    /// Offset asked for (may be ≥ size on a double-mapped ring).
    pub offset: usize,
    /// Length.
    pub len: usize,
    /// Write (true) or read.
    pub write: bool,
}

/// Ring memory for one direction, as the fuzz target's host sees it.
pub struct FuzzRing {
    control: ControlPage,
    data: RefCell<Vec<u8>>,
    size: u32,
    contiguous: usize,
    /// Every data access, in order.
    pub log: RefCell<Vec<Access>>,
    /// Mutations to fire at future `read_data` calls: (calls to skip first, mutation).
    pub hooks: RefCell<VecDeque<(u32, Mutation)>>,
    /// How many hooks fired so far.
    pub fired: Cell<u64>,
}

impl FuzzRing {
    /// A zeroed ring of `size` data bytes; `double_mapped` reports twice the size as
    /// contiguous (as an OS mapping the data pages twice back to back).
    pub fn new(size: u32, double_mapped: bool) -> Self {
        Self {
            control: ControlPage::new(),
            data: RefCell::new(vec![0; size as usize]),
            size,
            contiguous: size as usize * if double_mapped { 2 } else { 1 },
            log: RefCell::new(Vec::new()),
            hooks: RefCell::new(VecDeque::new()),
            fired: Cell::new(0),
        }
    }

    /// The control page (host side).
    pub fn ctl(&self) -> &ControlPage {
        &self.control
    }

    /// Data area size.
    pub fn size(&self) -> u32 {
        self.size
    }

    /// Applies `m` now.
    pub fn apply(&self, m: &Mutation) {
        use std::sync::atomic::Ordering::SeqCst;
        let c = &self.control;
        match m {
            Mutation::WriteIndex(v) => c.write_index.store(*v, SeqCst),
            Mutation::ReadIndex(v) => c.read_index.store(*v, SeqCst),
            Mutation::PendingSendSize(v) => c.pending_send_size.store(*v, SeqCst),
            Mutation::FeatureBits(v) => c.feature_bits.store(*v, SeqCst),
            Mutation::InterruptMask(v) => c.interrupt_mask.store(*v, SeqCst),
            Mutation::Bytes(at, bytes) => self.put(*at, bytes),
        }
    }

    /// Writes `bytes` at ring offset `at` (wrapping), as the host.
    pub fn put(&self, at: u32, bytes: &[u8]) {
        let mut d = self.data.borrow_mut();
        let n = self.size as usize;
        for (i, b) in bytes.iter().enumerate() {
            d[(at as usize + i) % n] = *b;
        }
    }

    /// Reads `len` bytes at ring offset `at` (wrapping), as the host.
    pub fn get(&self, at: u32, len: usize) -> Vec<u8> {
        let d = self.data.borrow();
        let n = self.size as usize;
        (0..len).map(|i| d[(at as usize + i) % n]).collect()
    }

    fn check_contract(&self, offset: usize, len: usize, write: bool) {
        assert!(
            offset < self.size as usize || (len == 0 && offset == 0),
            "ring {} at offset {offset:#x} >= data size {:#x}",
            if write { "write" } else { "read" },
            self.size
        );
        assert!(
            offset + len <= self.contiguous,
            "ring {} of {len} bytes at {offset:#x} runs past the {:#x} contiguous bytes",
            if write { "write" } else { "read" },
            self.contiguous
        );
        self.log.borrow_mut().push(Access { offset, len, write });
    }
}

impl RingMemory for FuzzRing {
    fn control(&self) -> &ControlPage {
        &self.control
    }
    fn data_size(&self) -> u32 {
        self.size
    }
    fn contiguous_size(&self) -> usize {
        self.contiguous
    }
    fn read_data(&self, offset: usize, buf: &mut [u8]) {
        self.check_contract(offset, buf.len(), false);
        // Fire the due hook first: the host changes the ring just as the guest copies.
        let due = {
            let mut hooks = self.hooks.borrow_mut();
            match hooks.front_mut() {
                Some((0, _)) => hooks.pop_front().map(|(_, m)| m),
                Some((n, _)) => {
                    *n -= 1;
                    None
                }
                None => None,
            }
        };
        if let Some(m) = due {
            self.apply(&m);
            self.fired.set(self.fired.get() + 1);
        }
        let d = self.data.borrow();
        let n = self.size as usize;
        for (i, b) in buf.iter_mut().enumerate() {
            *b = d[(offset + i) % n];
        }
    }
    fn write_data(&self, offset: usize, data: &[u8]) {
        self.check_contract(offset, data.len(), true);
        let mut d = self.data.borrow_mut();
        let n = self.size as usize;
        for (i, b) in data.iter().enumerate() {
            d[(offset + i) % n] = *b;
        }
    }
}
