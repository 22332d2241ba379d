//! `embedded_io::{Read, Write, Seek}` byte-stream view of a [`BlockDevice`] (feature
//! `embedded-io`, embedded-io 0.7 — the version embedded-sdmmc 0.10 uses).
//!
//! Byte-oriented users (FAT, ext4 readers, image tools) see one seekable stream of
//! `num_blocks × block_size` bytes. Aligned whole blocks go straight to the device; partial
//! blocks go through a one-block bounce buffer (read-modify-write on writes).

use embedded_io::{ErrorKind, ErrorType, Read, Seek, SeekFrom, Write};

use crate::block::BlockDevice;
use crate::error::StorError;

/// Largest block size the bounce buffer holds.
pub const MAX_BLOCK_SIZE: usize = 4096;

impl embedded_io::Error for StorError {
    fn kind(&self) -> ErrorKind {
        match self {
            Self::InvalidArgument(_) | Self::OutOfRange { .. } => ErrorKind::InvalidInput,
            Self::Timeout => ErrorKind::TimedOut,
            Self::Unsupported | Self::VersionTooOld(_) => ErrorKind::Unsupported,
            Self::ChannelClosed => ErrorKind::NotConnected,
            Self::BadResponse(_) | Self::ShortPacket { .. } => ErrorKind::InvalidData,
            _ => ErrorKind::Other,
        }
    }
}

/// A seekable byte stream over a block device.
#[derive(Debug)]
pub struct BlockStream<D> {
    dev: D,
    pos: u64,
    bounce: [u8; MAX_BLOCK_SIZE],
}

impl<D: BlockDevice> BlockStream<D> {
    /// Wraps `dev` at position 0; fails if its block size exceeds [`MAX_BLOCK_SIZE`].
    pub fn new(dev: D) -> Result<Self, StorError> {
        if dev.block_size() as usize > MAX_BLOCK_SIZE || dev.block_size() == 0 {
            return Err(StorError::InvalidArgument("block size above 4096 bytes"));
        }
        Ok(Self {
            dev,
            pos: 0,
            bounce: [0; MAX_BLOCK_SIZE],
        })
    }

    /// Stream length in bytes.
    pub fn len(&self) -> u64 {
        self.dev
            .num_blocks()
            .saturating_mul(u64::from(self.dev.block_size()))
    }

    /// Whether the device has no blocks.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Current position.
    pub fn position(&self) -> u64 {
        self.pos
    }

    /// The device.
    pub fn device_mut(&mut self) -> &mut D {
        &mut self.dev
    }

    /// Gives the device back.
    pub fn into_inner(self) -> D {
        self.dev
    }

    fn bs(&self) -> u64 {
        u64::from(self.dev.block_size())
    }
}

impl<D: BlockDevice> ErrorType for BlockStream<D> {
    type Error = StorError;
}

impl<D: BlockDevice> Read for BlockStream<D> {
    fn read(&mut self, buf: &mut [u8]) -> Result<usize, StorError> {
        let bs = self.bs();
        let avail = self.len().saturating_sub(self.pos);
        let want = (buf.len() as u64).min(avail) as usize;
        if want == 0 {
            return Ok(0);
        }
        let lba = self.pos / bs;
        let off = (self.pos % bs) as usize;
        let n = if off == 0 && want as u64 >= bs {
            let n = (want as u64 / bs * bs) as usize;
            self.dev.read_blocks(lba, &mut buf[..n])?;
            n
        } else {
            let b = bs as usize;
            self.dev.read_blocks(lba, &mut self.bounce[..b])?;
            let n = (b - off).min(want);
            buf[..n].copy_from_slice(&self.bounce[off..off + n]);
            n
        };
        self.pos += n as u64;
        Ok(n)
    }
}

impl<D: BlockDevice> Write for BlockStream<D> {
    fn write(&mut self, buf: &[u8]) -> Result<usize, StorError> {
        let bs = self.bs();
        let avail = self.len().saturating_sub(self.pos);
        let want = (buf.len() as u64).min(avail) as usize;
        if buf.is_empty() {
            return Ok(0);
        }
        if want == 0 {
            // embedded-io 0.7 forbids Ok(0) for a non-empty buffer: past the end is an error.
            return Err(StorError::OutOfRange {
                lba: self.pos / bs,
                blocks: 1,
            });
        }
        let lba = self.pos / bs;
        let off = (self.pos % bs) as usize;
        let n = if off == 0 && want as u64 >= bs {
            let n = (want as u64 / bs * bs) as usize;
            self.dev.write_blocks(lba, &buf[..n])?;
            n
        } else {
            let b = bs as usize;
            self.dev.read_blocks(lba, &mut self.bounce[..b])?;
            let n = (b - off).min(want);
            self.bounce[off..off + n].copy_from_slice(&buf[..n]);
            self.dev.write_blocks(lba, &self.bounce[..b])?;
            n
        };
        self.pos += n as u64;
        Ok(n)
    }

    fn flush(&mut self) -> Result<(), StorError> {
        self.dev.flush()
    }
}

impl<D: BlockDevice> Seek for BlockStream<D> {
    fn seek(&mut self, pos: SeekFrom) -> Result<u64, StorError> {
        let new = match pos {
            SeekFrom::Start(p) => Some(p),
            SeekFrom::End(d) => self.len().checked_add_signed(d),
            SeekFrom::Current(d) => self.pos.checked_add_signed(d),
        };
        self.pos = new.ok_or(StorError::InvalidArgument("seek before 0 or past u64"))?;
        Ok(self.pos)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::block::ScsiDisk;
    use crate::block::tests::MemDisk;
    use crate::request::LunAddress;

    #[test]
    fn unaligned_read_write_seek() {
        for bs in [512u32, 4096] {
            let disk = ScsiDisk::open(MemDisk::new(8, bs), LunAddress::lun(0), 0).unwrap();
            let mut s = BlockStream::new(disk).unwrap();
            let len = 8 * u64::from(bs);
            assert_eq!(s.len(), len);
            let data: std::vec::Vec<u8> = (0..3 * bs + 77).map(|i| (i % 199) as u8).collect();
            assert_eq!(
                s.seek(SeekFrom::Start(u64::from(bs) - 10)).unwrap(),
                u64::from(bs) - 10
            );
            s.write_all(&data).unwrap();
            s.flush().unwrap();
            assert_eq!(
                s.seek(SeekFrom::Current(-(data.len() as i64))).unwrap(),
                u64::from(bs) - 10
            );
            let mut back = std::vec![0u8; data.len()];
            s.read_exact(&mut back).unwrap();
            assert_eq!(back, data);
            // The bytes around the write are untouched (RMW kept them zero).
            s.seek(SeekFrom::Start(0)).unwrap();
            let mut head = std::vec![1u8; bs as usize - 10];
            s.read_exact(&mut head).unwrap();
            assert!(head.iter().all(|&b| b == 0));
            // End of stream.
            assert_eq!(s.seek(SeekFrom::End(-3)).unwrap(), len - 3);
            let mut tail = [0u8; 10];
            assert_eq!(s.read(&mut tail).unwrap(), 3);
            assert_eq!(s.read(&mut tail).unwrap(), 0);
            assert!(matches!(s.write(&tail), Err(StorError::OutOfRange { .. })));
            assert!(s.write_all(&tail).is_err());
            assert!(s.seek(SeekFrom::Current(-(len as i64) - 1)).is_err());
        }
    }
}
