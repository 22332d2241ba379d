//! `embedded_sdmmc::BlockDevice` adapter over any [`BlockDevice`] (feature `embedded-sdmmc`,
//! embedded-sdmmc 0.10).
//!
//! [embedded-sdmmc](https://crates.io/crates/embedded-sdmmc) is a `no_std`, allocation-free
//! FAT16/FAT32 implementation. Its block-device trait fixes the geometry it can address:
//!
//! - blocks are exactly 512 bytes ([`embedded_sdmmc::Block::LEN`]), so 4096-byte-sector disks
//!   (which Hyper-V offers, e.g. VHDX with 4K logical sectors) are refused;
//! - block indices and counts are `u32`, so a disk of more than `u32::MAX` blocks (2 TiB of
//!   512-byte blocks) cannot be addressed and is refused rather than silently truncated.
//!
//! Both checks happen once, in [`SdmmcDisk::new`], with a typed [`SdmmcAdapterError`].
//!
//! # Why a `RefCell`
//!
//! `embedded_sdmmc::BlockDevice::{read, write, num_blocks}` take `&self` (the crate's
//! `VolumeManager` keeps the device inside its own `RefCell` and hands out shared references),
//! while [`BlockDevice::read_blocks`] / [`BlockDevice::write_blocks`] need `&mut self`: a SCSI
//! disk owns a transport, a request table and a bounce buffer that every command mutates. The
//! adapter therefore keeps the device in a [`core::cell::RefCell`] and borrows it mutably for
//! the duration of one call. The borrow never outlives the call and embedded-sdmmc never calls
//! back into the device while a call is running, so the borrow cannot conflict in practice; if
//! it ever did (a re-entrant call from an interrupt handler, say), the call fails with a
//! [`StorError`] instead of panicking. `RefCell` is `!Sync`, which matches the single-threaded
//! contract of the underlying device; share it between cores with a lock around the whole
//! `VolumeManager`.
//!
//! # Durability
//!
//! The trait has no flush. Writes reach the host as they are issued (the synthetic SCSI disk
//! may still cache them); call [`SdmmcDisk::flush`] (e.g. through
//! `VolumeManager::device(|d| d.flush())`) after closing files to issue SYNCHRONIZE CACHE.
//!
//! # Partitioning
//!
//! embedded-sdmmc only opens volumes through an MBR partition table. A "superfloppy" image with
//! a BPB at LBA 0 works when the boot sector also carries a partition entry covering the disk
//! (what `mkfs.fat --mbr=y` writes).

use core::cell::RefCell;
use core::fmt;

use embedded_sdmmc::{Block, BlockCount, BlockIdx};

/// The embedded-sdmmc crate this adapter is built against, so users mount with the matching
/// version (`storvsc::sdmmc::embedded_sdmmc::VolumeManager`).
pub use embedded_sdmmc;

use crate::block::BlockDevice;
use crate::error::StorError;

/// The only logical block size embedded-sdmmc can use.
pub const SDMMC_BLOCK_SIZE: u32 = Block::LEN_U32;

/// Why a device cannot be wrapped for embedded-sdmmc.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SdmmcAdapterError {
    /// The device's logical block size is not 512 bytes (e.g. a 4096-byte-sector disk).
    UnsupportedBlockSize(u32),
    /// The device has more blocks than a `u32` block index can address (more than 2 TiB).
    TooLarge {
        /// The device's block count.
        blocks: u64,
    },
}

impl fmt::Display for SdmmcAdapterError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::UnsupportedBlockSize(bs) => write!(
                f,
                "embedded-sdmmc needs 512-byte logical blocks, the disk has {bs}-byte blocks"
            ),
            Self::TooLarge { blocks } => write!(
                f,
                "disk of {blocks} blocks exceeds embedded-sdmmc's 32-bit block index (2 TiB)"
            ),
        }
    }
}

impl core::error::Error for SdmmcAdapterError {}

/// An [`embedded_sdmmc::BlockDevice`] over a storvsc [`BlockDevice`] with 512-byte blocks.
#[derive(Debug)]
pub struct SdmmcDisk<D> {
    dev: RefCell<D>,
    blocks: u32,
}

impl<D: BlockDevice> SdmmcDisk<D> {
    /// Wraps `dev`, refusing devices embedded-sdmmc cannot address: a block size other than
    /// 512 bytes, or more than `u32::MAX` blocks.
    pub fn new(dev: D) -> Result<Self, SdmmcAdapterError> {
        let bs = dev.block_size();
        if bs != SDMMC_BLOCK_SIZE {
            return Err(SdmmcAdapterError::UnsupportedBlockSize(bs));
        }
        let n = dev.num_blocks();
        let blocks = u32::try_from(n).map_err(|_| SdmmcAdapterError::TooLarge { blocks: n })?;
        Ok(Self {
            dev: RefCell::new(dev),
            blocks,
        })
    }

    /// Makes previous writes durable (SYNCHRONIZE CACHE on a SCSI disk).
    pub fn flush(&self) -> Result<(), StorError> {
        self.with_dev(|d| d.flush())
    }

    /// Gives the device back.
    pub fn into_inner(self) -> D {
        self.dev.into_inner()
    }

    /// Runs `f` on the device (for operations the adapter does not expose).
    pub fn with_device<R>(&mut self, f: impl FnOnce(&mut D) -> R) -> R {
        f(self.dev.get_mut())
    }

    fn with_dev<R>(&self, f: impl FnOnce(&mut D) -> Result<R, StorError>) -> Result<R, StorError> {
        let mut dev = self
            .dev
            .try_borrow_mut()
            .map_err(|_| StorError::InvalidArgument("block device re-entered while in use"))?;
        f(&mut dev)
    }

    /// Checks that `count` blocks from `start` lie on the device.
    fn check_range(&self, start: BlockIdx, count: usize) -> Result<u64, StorError> {
        let end = u64::from(start.0) + count as u64;
        if end > u64::from(self.blocks) {
            return Err(StorError::OutOfRange {
                lba: u64::from(start.0),
                blocks: count as u64,
            });
        }
        Ok(u64::from(start.0))
    }
}

impl<D: BlockDevice> embedded_sdmmc::BlockDevice for SdmmcDisk<D> {
    type Error = StorError;

    fn read(&self, blocks: &mut [Block], start_block_idx: BlockIdx) -> Result<(), StorError> {
        let lba = self.check_range(start_block_idx, blocks.len())?;
        // One command per block: `Block` is a plain 512-byte array wrapper but not guaranteed
        // to be laid out contiguously as bytes, and embedded-sdmmc's block cache asks for one
        // block at a time anyway.
        self.with_dev(|d| {
            for (i, b) in blocks.iter_mut().enumerate() {
                d.read_blocks(lba + i as u64, &mut b.contents)?;
            }
            Ok(())
        })
    }

    fn write(&self, blocks: &[Block], start_block_idx: BlockIdx) -> Result<(), StorError> {
        let lba = self.check_range(start_block_idx, blocks.len())?;
        self.with_dev(|d| {
            for (i, b) in blocks.iter().enumerate() {
                d.write_blocks(lba + i as u64, &b.contents)?;
            }
            Ok(())
        })
    }

    fn num_blocks(&self) -> Result<BlockCount, StorError> {
        Ok(BlockCount(self.blocks))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use embedded_sdmmc::BlockDevice as _;
    use std::vec;
    use std::vec::Vec;

    #[derive(Debug)]
    struct Mem {
        bs: u32,
        blocks: u64,
        data: Vec<u8>,
        flushes: usize,
    }

    impl Mem {
        fn new(bs: u32, blocks: u64) -> Self {
            let len = if bs as u64 * blocks < (1 << 24) {
                (bs as u64 * blocks) as usize
            } else {
                0
            };
            Self {
                bs,
                blocks,
                data: vec![0; len],
                flushes: 0,
            }
        }
    }

    impl BlockDevice for Mem {
        fn block_size(&self) -> u32 {
            self.bs
        }
        fn num_blocks(&self) -> u64 {
            self.blocks
        }
        fn read_blocks(&mut self, lba: u64, buf: &mut [u8]) -> Result<(), StorError> {
            let o = (lba * u64::from(self.bs)) as usize;
            buf.copy_from_slice(&self.data[o..o + buf.len()]);
            Ok(())
        }
        fn write_blocks(&mut self, lba: u64, buf: &[u8]) -> Result<(), StorError> {
            let o = (lba * u64::from(self.bs)) as usize;
            self.data[o..o + buf.len()].copy_from_slice(buf);
            Ok(())
        }
        fn flush(&mut self) -> Result<(), StorError> {
            self.flushes += 1;
            Ok(())
        }
    }

    #[test]
    fn geometry_embedded_sdmmc_cannot_address_is_refused() {
        assert_eq!(
            SdmmcDisk::new(Mem::new(4096, 16)).unwrap_err(),
            SdmmcAdapterError::UnsupportedBlockSize(4096)
        );
        let two_tib = 1u64 << 32;
        assert_eq!(
            SdmmcDisk::new(Mem::new(512, two_tib)).unwrap_err(),
            SdmmcAdapterError::TooLarge { blocks: two_tib }
        );
        let just_fits = SdmmcDisk::new(Mem::new(512, two_tib - 1)).unwrap();
        assert_eq!(just_fits.num_blocks().unwrap(), BlockCount(u32::MAX));
    }

    #[test]
    fn blocks_round_trip_and_range_is_checked() {
        let disk = SdmmcDisk::new(Mem::new(512, 8)).unwrap();
        let mut out = [Block::new(), Block::new()];
        out[0].contents.fill(0xA5);
        out[1].contents.fill(0x5A);
        disk.write(&out, BlockIdx(6)).unwrap();
        let mut back = [Block::new(), Block::new()];
        disk.read(&mut back, BlockIdx(6)).unwrap();
        assert!(back.iter().zip(&out).all(|(a, b)| a.contents == b.contents));
        assert!(matches!(
            disk.read(&mut back, BlockIdx(7)),
            Err(StorError::OutOfRange { .. })
        ));
        disk.flush().unwrap();
        assert_eq!(disk.into_inner().flushes, 1);
    }
}
