//! Shared helpers for the ring tests: test memories and a fixed-seed PRNG.
#![allow(dead_code)]

use std::cell::Cell;
use std::ptr::NonNull;
use vmbus_guest::ring::{ControlPage, RawRingMemory, RingMemory};

/// A ring in a heap buffer: control page then `data_size` bytes.
pub struct HeapRing {
    _buf: Vec<u64>,
    pub mem: RawRingMemory,
}

impl HeapRing {
    pub fn new(data_size: u32) -> Self {
        let mut buf = vec![0u64; (4096 + data_size as usize) / 8];
        let base = NonNull::new(buf.as_mut_ptr().cast::<u8>()).unwrap();
        // SAFETY: `buf` holds 4096 + data_size bytes and lives as long as `mem` (both in self);
        // tests use one writer and one reader per ring and are single-threaded.
        let mem = unsafe { RawRingMemory::from_pages(base, data_size) }.unwrap();
        Self { _buf: buf, mem }
    }
}

/// Wraps a memory and panics on any access outside the data area: hostile input must never
/// make the ring code ask for out-of-bounds bytes.
#[derive(Debug, Clone, Copy)]
pub struct Checked<M>(pub M);

impl<M: RingMemory> RingMemory for Checked<M> {
    fn control(&self) -> &ControlPage {
        self.0.control()
    }
    fn data_size(&self) -> u32 {
        self.0.data_size()
    }
    fn contiguous_size(&self) -> usize {
        self.0.contiguous_size()
    }
    fn read_data(&self, offset: usize, buf: &mut [u8]) {
        assert!(
            offset < self.0.data_size() as usize,
            "read offset {offset} out of range"
        );
        assert!(
            offset + buf.len() <= self.0.contiguous_size(),
            "read past the data area"
        );
        self.0.read_data(offset, buf)
    }
    fn write_data(&self, offset: usize, data: &[u8]) {
        assert!(
            offset < self.0.data_size() as usize,
            "write offset {offset} out of range"
        );
        assert!(
            offset + data.len() <= self.0.contiguous_size(),
            "write past the data area"
        );
        self.0.write_data(offset, data)
    }
}

/// Simulates a double mapping: the data area is stored twice and every write goes to both
/// copies, so the ring code sees `2 * data_size` contiguous bytes.
pub struct MirrorMemory {
    control: ControlPage,
    data: Vec<Cell<u8>>,
    size: u32,
}

impl MirrorMemory {
    pub fn new(size: u32) -> Self {
        Self {
            control: ControlPage::new(),
            data: (0..size as usize * 2).map(|_| Cell::new(0)).collect(),
            size,
        }
    }
}

impl RingMemory for MirrorMemory {
    fn control(&self) -> &ControlPage {
        &self.control
    }
    fn data_size(&self) -> u32 {
        self.size
    }
    fn contiguous_size(&self) -> usize {
        self.size as usize * 2
    }
    fn read_data(&self, offset: usize, buf: &mut [u8]) {
        for (i, b) in buf.iter_mut().enumerate() {
            *b = self.data[offset + i].get();
        }
    }
    fn write_data(&self, offset: usize, data: &[u8]) {
        let d = self.size as usize;
        for (i, b) in data.iter().enumerate() {
            let p = (offset + i) % d;
            self.data[p].set(*b);
            self.data[p + d].set(*b);
        }
    }
}

/// xorshift64*: deterministic, no dependency.
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Self {
        Self(seed | 1)
    }
    pub fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }
    pub fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}
