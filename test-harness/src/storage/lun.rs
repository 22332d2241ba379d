//! A LUN of the mock controller: a virtual disk in memory or in a file.

use std::fs::File;
use std::io::{Read, Seek, SeekFrom, Write};

/// Where a LUN's blocks live.
#[derive(Debug)]
pub enum Backing {
    /// In memory.
    Memory(Vec<u8>),
    /// In a file (read and written in place; SYNCHRONIZE CACHE calls `sync_data`).
    File(File),
}

/// One LUN: a virtual disk.
#[derive(Debug)]
pub struct Lun {
    pub(super) backing: Backing,
    pub(super) block_size: u32,
    pub(super) num_blocks: u64,
    pub(super) read_only: bool,
    /// Unit attention (ASC, ASCQ) reported on the next command.
    pub(super) pending_ua: Option<(u8, u8)>,
}

impl Lun {
    /// A zero-filled in-memory disk of `num_blocks` blocks of `block_size` (512 or 4096).
    pub fn memory(block_size: u32, num_blocks: u64) -> Self {
        assert!(
            block_size == 512 || block_size == 4096,
            "block size 512 or 4096"
        );
        let len = usize::try_from(num_blocks * u64::from(block_size)).expect("disk fits memory");
        Self {
            backing: Backing::Memory(vec![0; len]),
            block_size,
            num_blocks,
            read_only: false,
            pending_ua: None,
        }
    }

    /// A disk backed by `file`; the capacity is the file length rounded down to whole blocks.
    pub fn file(file: File, block_size: u32) -> std::io::Result<Self> {
        assert!(
            block_size == 512 || block_size == 4096,
            "block size 512 or 4096"
        );
        let len = file.metadata()?.len();
        Ok(Self {
            backing: Backing::File(file),
            block_size,
            num_blocks: len / u64::from(block_size),
            read_only: false,
            pending_ua: None,
        })
    }

    /// Marks the disk write-protected (MODE SENSE WP bit; writes fail with DATA PROTECT).
    pub fn read_only(mut self) -> Self {
        self.read_only = true;
        self
    }

    /// Logical block size.
    pub fn block_size(&self) -> u32 {
        self.block_size
    }

    /// Number of blocks.
    pub fn num_blocks(&self) -> u64 {
        self.num_blocks
    }

    pub(crate) fn read(&mut self, offset: u64, buf: &mut [u8]) -> std::io::Result<()> {
        match &mut self.backing {
            Backing::Memory(m) => {
                let s = offset as usize;
                buf.copy_from_slice(&m[s..s + buf.len()]);
                Ok(())
            }
            Backing::File(f) => {
                f.seek(SeekFrom::Start(offset))?;
                f.read_exact(buf)
            }
        }
    }

    pub(crate) fn write(&mut self, offset: u64, data: &[u8]) -> std::io::Result<()> {
        match &mut self.backing {
            Backing::Memory(m) => {
                let s = offset as usize;
                m[s..s + data.len()].copy_from_slice(data);
                Ok(())
            }
            Backing::File(f) => {
                f.seek(SeekFrom::Start(offset))?;
                f.write_all(data)
            }
        }
    }

    pub(crate) fn flush(&mut self) -> std::io::Result<()> {
        match &mut self.backing {
            Backing::Memory(_) => Ok(()),
            Backing::File(f) => f.sync_data(),
        }
    }

    /// Changes the capacity (memory: truncates or zero-extends; file: sets the length) and
    /// queues CAPACITY DATA HAS CHANGED.
    pub fn resize(&mut self, num_blocks: u64) -> std::io::Result<()> {
        let len = num_blocks * u64::from(self.block_size);
        match &mut self.backing {
            Backing::Memory(m) => m.resize(len as usize, 0),
            Backing::File(f) => f.set_len(len)?,
        }
        self.num_blocks = num_blocks;
        self.pending_ua = Some((0x2A, 0x09));
        Ok(())
    }
}
