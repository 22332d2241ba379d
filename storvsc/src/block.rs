//! The block-device API (`block_size`, `num_blocks`, `read_blocks`, `write_blocks`, `flush`,
//! `discard`) over a small [`ScsiTransport`] trait. The VMBus glue only implements the
//! transport (send one EXECUTE_SRB with its data buffer, wait for the completion); everything
//! SCSI — discovery, capacity, splitting by the host's transfer limit, retries on unit
//! attention / busy, rescans after capacity changes — lives here and is tested without a
//! channel.

use crate::error::StorError;
use crate::protocol::DataDirection;
use crate::request::{LunAddress, ScsiRequest, SrbCompletion, split_transfer};
use crate::scsi::{
    BlockLimits, Capacity, Capacity10, Cdb, Disposition, InquiryData, Provisioning,
    unmap_parameters, vpd, vpd_supported_pages,
};

/// How many times a retryable completion is retried before giving up.
pub const MAX_RETRIES: usize = 5;

/// The data buffer of one SCSI command.
#[derive(Debug)]
pub enum DataBuf<'a> {
    /// No data phase.
    None,
    /// Data from the device into this buffer (`data_in` = 1).
    FromDevice(&'a mut [u8]),
    /// Data from this buffer to the device (`data_in` = 0).
    ToDevice(&'a [u8]),
}

impl DataBuf<'_> {
    /// Bytes in the buffer.
    pub fn len(&self) -> usize {
        match self {
            Self::None => 0,
            Self::FromDevice(b) => b.len(),
            Self::ToDevice(b) => b.len(),
        }
    }
    /// Whether there is no data phase (or an empty buffer).
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
    /// The SRB direction.
    pub fn direction(&self) -> DataDirection {
        match self {
            _ if self.is_empty() => DataDirection::NONE,
            Self::FromDevice(_) => DataDirection::READ,
            Self::ToDevice(_) => DataDirection::WRITE,
            Self::None => DataDirection::NONE,
        }
    }
    /// A shorter-lived view of the same buffer (to retry a command).
    pub fn reborrow(&mut self) -> DataBuf<'_> {
        match self {
            Self::None => DataBuf::None,
            Self::FromDevice(b) => DataBuf::FromDevice(b),
            Self::ToDevice(b) => DataBuf::ToDevice(b),
        }
    }
}

/// What the VMBus glue implements: execute one SCSI request and return its decoded completion.
///
/// The implementation writes the packet with [`ScsiRequest::write_packet`] for the negotiated
/// version, sends it in-band (no data) or GPA direct (one multi-page range over `data`; bounce
/// if the buffer is not host-visible), waits for the completion the channel's request table
/// ([`vmbus_guest::RequestTable`]) matches to the request, and decodes it with
/// [`SrbCompletion::parse`]. Transport failures (channel closed, timeout) are errors; SCSI
/// failures are returned as the completion.
pub trait ScsiTransport {
    /// Executes `request`; `data.len()` equals `request.transfer_length`.
    fn execute(
        &mut self,
        request: &ScsiRequest,
        data: DataBuf<'_>,
    ) -> Result<SrbCompletion, StorError>;
}

impl<T: ScsiTransport + ?Sized> ScsiTransport for &mut T {
    fn execute(
        &mut self,
        request: &ScsiRequest,
        data: DataBuf<'_>,
    ) -> Result<SrbCompletion, StorError> {
        (**self).execute(request, data)
    }
}

/// A generic block device, shaped like `gpt_disk_io::BlockIo` / OS block-driver traits.
pub trait BlockDevice {
    /// Logical block size in bytes (512 or 4096 on Hyper-V).
    fn block_size(&self) -> u32;
    /// Number of logical blocks.
    fn num_blocks(&self) -> u64;
    /// Reads `buf.len() / block_size` blocks starting at `lba`; `buf.len()` must be a multiple
    /// of the block size.
    fn read_blocks(&mut self, lba: u64, buf: &mut [u8]) -> Result<(), StorError>;
    /// Writes whole blocks starting at `lba`.
    fn write_blocks(&mut self, lba: u64, buf: &[u8]) -> Result<(), StorError>;
    /// Makes previous writes durable (SYNCHRONIZE CACHE).
    fn flush(&mut self) -> Result<(), StorError>;
}

/// Thin-provisioning support discovered at open.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct UnmapSupport {
    /// Maximum blocks per UNMAP descriptor / command.
    pub max_blocks: u32,
    /// Unmapped blocks read as zero.
    pub reads_zero: bool,
}

/// One disk (LUN) on the synthetic SCSI controller.
#[derive(Debug)]
pub struct ScsiDisk<T> {
    transport: T,
    addr: LunAddress,
    inquiry: InquiryData,
    capacity: Capacity,
    max_transfer_bytes: u32,
    unmap: Option<UnmapSupport>,
}

impl<T: ScsiTransport> ScsiDisk<T> {
    /// Brings up the disk at `addr`: TEST UNIT READY (clearing unit attentions), INQUIRY (must
    /// be a direct-access device), READ CAPACITY (16 for SPC-3+ devices, else 10, switching to
    /// 16 on 0xFFFFFFFF), and, when provisioning is enabled, VPD pages 0xB0/0xB2 for UNMAP.
    /// `max_transfer_bytes` comes from QUERY_PROPERTIES (0 = no limit).
    pub fn open(
        transport: T,
        addr: LunAddress,
        max_transfer_bytes: u32,
    ) -> Result<Self, StorError> {
        let mut d = Self {
            transport,
            addr,
            inquiry: InquiryData::parse(&[0; 5])?,
            capacity: Capacity {
                num_blocks: 0,
                block_size: 512,
                physical_exponent: 0,
                lbpme: false,
                lbprz: false,
            },
            max_transfer_bytes,
            unmap: None,
        };
        d.command(Cdb::test_unit_ready(), DataBuf::None)?;
        let mut inq = [0u8; 96];
        let n = d.command(Cdb::inquiry(96), DataBuf::FromDevice(&mut inq))?;
        d.inquiry = InquiryData::parse(&inq[..(n as usize).min(inq.len())])?;
        if !d.inquiry.is_disk() {
            return Err(StorError::Unsupported);
        }
        d.read_capacity()?;
        if d.capacity.lbpme {
            d.unmap = d.probe_unmap().ok().flatten();
        }
        if let Some(limit) = d.probe_block_limits() {
            let bytes = u64::from(limit) * u64::from(d.capacity.block_size);
            if bytes > 0 && (d.max_transfer_bytes == 0 || bytes < u64::from(d.max_transfer_bytes)) {
                d.max_transfer_bytes = bytes.min(u64::from(u32::MAX)) as u32;
            }
        }
        log::info!(
            "storvsc: LUN {}:{}:{} {} blocks of {} bytes, unmap {:?}",
            addr.path_id,
            addr.target_id,
            addr.lun,
            d.capacity.num_blocks,
            d.capacity.block_size,
            d.unmap
        );
        Ok(d)
    }

    fn supported_vpd(&mut self, page: u8) -> bool {
        let mut b = [0u8; 64];
        match self.command(
            Cdb::inquiry_vpd(vpd::SUPPORTED_PAGES, 64),
            DataBuf::FromDevice(&mut b),
        ) {
            Ok(n) => vpd_supported_pages(&b[..(n as usize).min(b.len())])
                .is_ok_and(|p| p.contains(&page)),
            Err(_) => false,
        }
    }

    fn probe_block_limits(&mut self) -> Option<u32> {
        if !self.supported_vpd(vpd::BLOCK_LIMITS) {
            return None;
        }
        let mut b = [0u8; 64];
        let n = self
            .command(
                Cdb::inquiry_vpd(vpd::BLOCK_LIMITS, 64),
                DataBuf::FromDevice(&mut b),
            )
            .ok()?;
        let l = BlockLimits::parse(&b[..(n as usize).min(b.len())]).ok()?;
        Some(l.max_transfer_blocks)
    }

    fn probe_unmap(&mut self) -> Result<Option<UnmapSupport>, StorError> {
        if !self.supported_vpd(vpd::LOGICAL_BLOCK_PROVISIONING) {
            return Ok(None);
        }
        let mut b = [0u8; 64];
        let n = self.command(
            Cdb::inquiry_vpd(vpd::LOGICAL_BLOCK_PROVISIONING, 64),
            DataBuf::FromDevice(&mut b),
        )?;
        let p = Provisioning::parse(&b[..(n as usize).min(b.len())])?;
        if !p.unmap {
            return Ok(None);
        }
        let mut max_blocks = u32::MAX;
        if self.supported_vpd(vpd::BLOCK_LIMITS) {
            let mut b = [0u8; 64];
            let n = self.command(
                Cdb::inquiry_vpd(vpd::BLOCK_LIMITS, 64),
                DataBuf::FromDevice(&mut b),
            )?;
            let l = BlockLimits::parse(&b[..(n as usize).min(b.len())])?;
            if l.max_unmap_blocks == 0 || l.max_unmap_descriptors == 0 {
                return Ok(None);
            }
            max_blocks = l.max_unmap_blocks;
        }
        Ok(Some(UnmapSupport {
            max_blocks,
            reads_zero: self.capacity.lbprz,
        }))
    }

    /// Re-reads the capacity (after a CAPACITY DATA HAS CHANGED unit attention).
    pub fn read_capacity(&mut self) -> Result<Capacity, StorError> {
        let cap = if self.inquiry.version >= 5 {
            match self.read_capacity_16() {
                Ok(c) => c,
                Err(_) => self.read_capacity_10()?,
            }
        } else {
            self.read_capacity_10()?
        };
        self.capacity = cap;
        Ok(cap)
    }

    fn read_capacity_16(&mut self) -> Result<Capacity, StorError> {
        let mut b = [0u8; 32];
        let n = self.command_once(Cdb::read_capacity_16(32), &mut DataBuf::FromDevice(&mut b))?;
        Capacity::parse_16(&b[..(n as usize).min(32)])
    }

    fn read_capacity_10(&mut self) -> Result<Capacity, StorError> {
        let mut b = [0u8; 8];
        let n = self.command_once(Cdb::read_capacity_10(), &mut DataBuf::FromDevice(&mut b))?;
        match Capacity::parse_10(&b[..(n as usize).min(8)])? {
            Capacity10::Known(c) => Ok(c),
            Capacity10::UseReadCapacity16 => self.read_capacity_16(),
        }
    }

    /// Executes one command without retries; returns bytes transferred (≤ the buffer).
    fn command_once(&mut self, cdb: Cdb, data: &mut DataBuf<'_>) -> Result<u32, StorError> {
        let (c, _) = self.execute(cdb, data)?;
        c.error().map_or(Ok(c.data_transfer_length), Err)
    }

    fn execute(
        &mut self,
        cdb: Cdb,
        data: &mut DataBuf<'_>,
    ) -> Result<(SrbCompletion, Disposition), StorError> {
        let len =
            u32::try_from(data.len()).map_err(|_| StorError::InvalidArgument("buffer > 4 GiB"))?;
        let req = ScsiRequest::new(self.addr, cdb, data.direction(), len);
        let mut c = self.transport.execute(&req, data.reborrow())?;
        // Host input: never believe more bytes than the buffer holds.
        if c.data_transfer_length > len {
            log::warn!(
                "storvsc: host claims {} bytes for a {len}-byte buffer",
                c.data_transfer_length
            );
            c.data_transfer_length = len;
        }
        Ok((c, c.disposition()))
    }

    /// Executes `cdb` with `data`, retrying transient failures up to [`MAX_RETRIES`] times and
    /// re-reading the capacity before retrying after parameter changes. Returns the bytes the
    /// device transferred.
    pub fn command(&mut self, cdb: Cdb, mut data: DataBuf<'_>) -> Result<u32, StorError> {
        let mut last = StorError::RetriesExhausted;
        for attempt in 0..=MAX_RETRIES {
            let (c, d) = self.execute(cdb, &mut data)?;
            match d {
                Disposition::Success => return Ok(c.data_transfer_length),
                Disposition::Retry => {
                    log::debug!(
                        "storvsc: retrying opcode {:#04x} (attempt {attempt})",
                        cdb.opcode()
                    );
                }
                Disposition::RescanAndRetry => {
                    log::info!("storvsc: device parameters changed; re-reading capacity");
                    // The capacity read itself may see the attention again; that is fine.
                    if cdb.opcode() != crate::scsi::opcode::READ_CAPACITY_10
                        && cdb.opcode() != crate::scsi::opcode::SERVICE_ACTION_IN_16
                    {
                        let _ = self.read_capacity_quiet();
                    }
                }
                Disposition::LunGone | Disposition::Fatal => {
                    return Err(c.error().unwrap_or(StorError::Transport));
                }
            }
            last = c.error().unwrap_or(StorError::RetriesExhausted);
        }
        log::warn!(
            "storvsc: opcode {:#04x} failed after retries: {last}",
            cdb.opcode()
        );
        Err(last)
    }

    fn read_capacity_quiet(&mut self) -> Result<(), StorError> {
        // Up to two attempts, each without the retry loop (no recursion).
        for _ in 0..2 {
            if self.read_capacity().is_ok() {
                return Ok(());
            }
        }
        Err(StorError::RetriesExhausted)
    }

    fn check_range(&self, lba: u64, len: usize) -> Result<u64, StorError> {
        let bs = self.capacity.block_size as usize;
        if !len.is_multiple_of(bs) {
            return Err(StorError::InvalidArgument(
                "buffer not a multiple of the block size",
            ));
        }
        let blocks = (len / bs) as u64;
        match lba.checked_add(blocks) {
            Some(end) if end <= self.capacity.num_blocks => Ok(blocks),
            _ => Err(StorError::OutOfRange { lba, blocks }),
        }
    }

    fn transfer(&mut self, write: bool, lba: u64, mut data: DataBuf<'_>) -> Result<(), StorError> {
        let blocks = self.check_range(lba, data.len())?;
        for chunk in split_transfer(
            lba,
            blocks,
            self.capacity.block_size,
            self.max_transfer_bytes,
        ) {
            let cdb = Cdb::read_write(write, chunk.lba, chunk.blocks)
                .ok_or(StorError::OutOfRange { lba, blocks })?;
            let range = chunk.buf_offset..chunk.buf_offset + chunk.len;
            let part = match &mut data {
                DataBuf::FromDevice(b) => DataBuf::FromDevice(&mut b[range]),
                DataBuf::ToDevice(b) => DataBuf::ToDevice(&b[range]),
                DataBuf::None => DataBuf::None,
            };
            let n = self.command(cdb, part)?;
            if n as usize != chunk.len {
                return Err(StorError::ShortTransfer {
                    expected: chunk.len as u32,
                    got: n,
                });
            }
        }
        Ok(())
    }

    /// Discards (UNMAP) `blocks` blocks at `lba`, split by the device's UNMAP limit.
    pub fn discard(&mut self, lba: u64, blocks: u64) -> Result<(), StorError> {
        let u = self.unmap.ok_or(StorError::Unsupported)?;
        match lba.checked_add(blocks) {
            Some(end) if end <= self.capacity.num_blocks => {}
            _ => return Err(StorError::OutOfRange { lba, blocks }),
        }
        let mut done = 0;
        while done < blocks {
            let n = (blocks - done).min(u64::from(u.max_blocks)) as u32;
            let mut params = [0u8; 24];
            let len = unmap_parameters(&[(lba + done, n)], &mut params)?;
            self.command(Cdb::unmap(len as u16), DataBuf::ToDevice(&params[..len]))?;
            done += u64::from(n);
        }
        Ok(())
    }

    /// The standard INQUIRY data read at open.
    pub fn inquiry(&self) -> &InquiryData {
        &self.inquiry
    }
    /// The capacity last read.
    pub fn capacity(&self) -> Capacity {
        self.capacity
    }
    /// UNMAP support, if any.
    pub fn unmap_support(&self) -> Option<UnmapSupport> {
        self.unmap
    }
    /// Effective maximum bytes per request.
    pub fn max_transfer_bytes(&self) -> u32 {
        self.max_transfer_bytes
    }
    /// The LUN address.
    pub fn address(&self) -> LunAddress {
        self.addr
    }
    /// The transport, e.g. to drive other LUNs.
    pub fn transport_mut(&mut self) -> &mut T {
        &mut self.transport
    }
    /// Gives the transport back.
    pub fn into_transport(self) -> T {
        self.transport
    }
}

impl<T: ScsiTransport> BlockDevice for ScsiDisk<T> {
    fn block_size(&self) -> u32 {
        self.capacity.block_size
    }
    fn num_blocks(&self) -> u64 {
        self.capacity.num_blocks
    }
    fn read_blocks(&mut self, lba: u64, buf: &mut [u8]) -> Result<(), StorError> {
        self.transfer(false, lba, DataBuf::FromDevice(buf))
    }
    fn write_blocks(&mut self, lba: u64, buf: &[u8]) -> Result<(), StorError> {
        self.transfer(true, lba, DataBuf::ToDevice(buf))
    }
    fn flush(&mut self) -> Result<(), StorError> {
        self.command(Cdb::synchronize_cache_10(), DataBuf::None)
            .map(|_| ())
    }
}

/// Walks REPORT LUNS through `transport` (LUN 0 answers for the controller) and calls `f` for
/// every LUN number below 256. Returns the number of LUNs reported.
pub fn report_luns<T: ScsiTransport>(
    transport: &mut T,
    target: LunAddress,
    mut f: impl FnMut(u8),
) -> Result<u32, StorError> {
    let mut b = [0u8; 8 + 8 * 64];
    let len = b.len() as u32;
    let req = ScsiRequest::new(target, Cdb::report_luns(len), DataDirection::READ, len);
    let c = transport.execute(&req, DataBuf::FromDevice(&mut b))?;
    if let Some(e) = c.error() {
        return Err(e);
    }
    let n = (c.data_transfer_length as usize).min(b.len());
    let r = crate::scsi::ReportLuns::parse(&b[..n])?;
    for lun in r.luns() {
        if let Ok(l) = u8::try_from(lun) {
            f(l);
        }
    }
    Ok(r.total)
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::protocol::{ScsiStatus, SrbStatus};
    use crate::scsi::{SenseData, SenseKey, asc, encode_lun, opcode};
    use std::vec;
    use std::vec::Vec;

    /// In-memory SCSI disk answering like the mock host, with fault injection.
    pub(crate) struct MemDisk {
        pub data: Vec<u8>,
        pub bs: u32,
        pub lbpme: bool,
        pub unit_attention: Option<(u8, u8)>,
        pub busy_times: usize,
        pub log: Vec<(u8, u32)>,
        pub overclaim: bool,
    }

    impl MemDisk {
        pub fn new(blocks: usize, bs: u32) -> Self {
            Self {
                data: vec![0; blocks * bs as usize],
                bs,
                lbpme: true,
                unit_attention: None,
                busy_times: 0,
                log: Vec::new(),
                overclaim: false,
            }
        }
        fn fail(key: SenseKey, (asc, ascq): (u8, u8)) -> SrbCompletion {
            SrbCompletion {
                srb_status: SrbStatus::ERROR.with_autosense(),
                scsi_status: ScsiStatus::CHECK_CONDITION,
                sense: Some(SenseData { key, asc, ascq }),
                ..SrbCompletion::good(0)
            }
        }
    }

    fn put(data: &mut DataBuf<'_>, src: &[u8]) -> u32 {
        if let DataBuf::FromDevice(b) = data {
            let n = b.len().min(src.len());
            b[..n].copy_from_slice(&src[..n]);
            n as u32
        } else {
            0
        }
    }

    impl ScsiTransport for MemDisk {
        fn execute(
            &mut self,
            r: &ScsiRequest,
            mut data: DataBuf<'_>,
        ) -> Result<SrbCompletion, StorError> {
            assert_eq!(data.len() as u32, r.transfer_length);
            let c = r.cdb.as_bytes();
            self.log.push((c[0], r.transfer_length));
            if self.busy_times > 0 {
                self.busy_times -= 1;
                return Ok(SrbCompletion {
                    srb_status: SrbStatus::BUSY,
                    ..SrbCompletion::good(0)
                });
            }
            if let Some(code) = self.unit_attention.take() {
                return Ok(Self::fail(SenseKey::UNIT_ATTENTION, code));
            }
            let blocks = (self.data.len() / self.bs as usize) as u64;
            let n = match c[0] {
                opcode::TEST_UNIT_READY | opcode::SYNCHRONIZE_CACHE_10 => 0,
                opcode::INQUIRY if c[1] & 1 == 0 => {
                    let mut d = [b' '; 36];
                    d[..5].copy_from_slice(&[0, 0, 5, 2, 31]);
                    d[8..12].copy_from_slice(b"Msft");
                    put(&mut data, &d)
                }
                opcode::INQUIRY => match c[2] {
                    0x00 => put(&mut data, &[0, 0, 0, 3, 0, 0xB0, 0xB2]),
                    0xB0 => {
                        let mut d = [0u8; 64];
                        d[1] = 0xB0;
                        d[3] = 0x3C;
                        d[8..12].copy_from_slice(&64u32.to_be_bytes());
                        d[20..24].copy_from_slice(&5u32.to_be_bytes());
                        d[24..28].copy_from_slice(&1u32.to_be_bytes());
                        put(&mut data, &d)
                    }
                    0xB2 => put(&mut data, &[0, 0xB2, 0, 4, 0, 0x80, 2, 0]),
                    _ => {
                        return Ok(Self::fail(
                            SenseKey::ILLEGAL_REQUEST,
                            asc::INVALID_FIELD_IN_CDB,
                        ));
                    }
                },
                opcode::READ_CAPACITY_10 => {
                    let mut d = [0u8; 8];
                    d[..4].copy_from_slice(&((blocks - 1).min(0xFFFF_FFFF) as u32).to_be_bytes());
                    d[4..].copy_from_slice(&self.bs.to_be_bytes());
                    put(&mut data, &d)
                }
                opcode::SERVICE_ACTION_IN_16 => {
                    let mut d = [0u8; 32];
                    d[..8].copy_from_slice(&(blocks - 1).to_be_bytes());
                    d[8..12].copy_from_slice(&self.bs.to_be_bytes());
                    d[14] = if self.lbpme { 0xC0 } else { 0 };
                    put(&mut data, &d)
                }
                opcode::REPORT_LUNS => {
                    let mut d = vec![0, 0, 0, 16, 0, 0, 0, 0];
                    d.extend_from_slice(&encode_lun(0));
                    d.extend_from_slice(&encode_lun(2));
                    put(&mut data, &d)
                }
                opcode::UNMAP => {
                    let DataBuf::ToDevice(p) = &data else {
                        panic!("UNMAP without data")
                    };
                    for (lba, n) in crate::scsi::parse_unmap_parameters(p) {
                        assert!(n <= 5);
                        let s = lba as usize * self.bs as usize;
                        self.data[s..s + n as usize * self.bs as usize].fill(0);
                    }
                    0
                }
                _ => {
                    let Some((lba, n)) = r.cdb.rw_range() else {
                        return Ok(Self::fail(SenseKey::ILLEGAL_REQUEST, asc::INVALID_OPCODE));
                    };
                    if lba + u64::from(n) > blocks {
                        return Ok(Self::fail(SenseKey::ILLEGAL_REQUEST, asc::LBA_OUT_OF_RANGE));
                    }
                    let s = lba as usize * self.bs as usize;
                    let len = n as usize * self.bs as usize;
                    assert_eq!(len, data.len());
                    match &mut data {
                        DataBuf::FromDevice(b) => b.copy_from_slice(&self.data[s..s + len]),
                        DataBuf::ToDevice(b) => self.data[s..s + len].copy_from_slice(b),
                        DataBuf::None => panic!("rw without data"),
                    }
                    len as u32
                }
            };
            let n = if self.overclaim { n + 4096 } else { n };
            Ok(SrbCompletion::good(n))
        }
    }

    #[test]
    fn open_read_write_flush_discard() {
        for bs in [512u32, 4096] {
            let mut disk = ScsiDisk::open(MemDisk::new(64, bs), LunAddress::lun(0), 8192).unwrap();
            assert_eq!(disk.block_size(), bs);
            assert_eq!(disk.num_blocks(), 64);
            assert_eq!(&disk.inquiry().vendor[..4], b"Msft");
            assert_eq!(disk.unmap_support().map(|u| u.max_blocks), Some(5));
            let pattern: Vec<u8> = (0..bs as usize * 20).map(|i| (i * 7 % 251) as u8).collect();
            disk.write_blocks(3, &pattern).unwrap();
            let mut back = vec![0; pattern.len()];
            disk.read_blocks(3, &mut back).unwrap();
            assert_eq!(back, pattern);
            // Split by the 8 KiB limit.
            let rw = disk
                .transport_mut()
                .log
                .iter()
                .filter(|(op, _)| *op == 0x28)
                .count();
            assert_eq!(rw, (20 * bs as usize).div_ceil(8192));
            disk.flush().unwrap();
            disk.discard(3, 12).unwrap();
            disk.read_blocks(3, &mut back).unwrap();
            assert!(back[..12 * bs as usize].iter().all(|&b| b == 0));
            assert_eq!(back[12 * bs as usize..], pattern[12 * bs as usize..]);
            let unmaps = disk
                .transport_mut()
                .log
                .iter()
                .filter(|(op, _)| *op == 0x42)
                .count();
            assert_eq!(unmaps, 3);
            assert!(matches!(
                disk.read_blocks(60, &mut back),
                Err(StorError::OutOfRange { .. })
            ));
            assert!(matches!(
                disk.read_blocks(0, &mut back[..100]),
                Err(StorError::InvalidArgument(_))
            ));
            assert!(disk.discard(63, 2).is_err());
        }
    }

    #[test]
    fn retries_unit_attention_busy_and_capacity_change() {
        let mut m = MemDisk::new(16, 512);
        m.unit_attention = Some(asc::POWER_ON_RESET);
        m.lbpme = false;
        let mut disk = ScsiDisk::open(m, LunAddress::lun(0), 0).unwrap();
        assert_eq!(disk.unmap_support(), None);
        assert_eq!(disk.discard(0, 1), Err(StorError::Unsupported));
        // Resize + capacity-changed attention: the next command rescans and succeeds.
        disk.transport_mut().data.resize(32 * 512, 0);
        disk.transport_mut().unit_attention = Some(asc::CAPACITY_CHANGED);
        let mut b = [0u8; 512];
        disk.read_blocks(0, &mut b).unwrap();
        assert_eq!(disk.num_blocks(), 32);
        disk.read_blocks(31, &mut b).unwrap();
        disk.transport_mut().busy_times = MAX_RETRIES;
        disk.read_blocks(0, &mut b).unwrap();
        disk.transport_mut().busy_times = MAX_RETRIES + 1;
        assert!(matches!(
            disk.read_blocks(0, &mut b),
            Err(StorError::Srb { .. })
        ));
        // A host that claims more than the buffer is clamped, and the check still catches
        // lengths that do not match.
        disk.transport_mut().overclaim = true;
        disk.read_blocks(0, &mut b).unwrap();
    }

    #[test]
    fn report_luns_lists() {
        let mut m = MemDisk::new(16, 512);
        let mut seen = Vec::new();
        assert_eq!(
            report_luns(&mut m, LunAddress::lun(0), |l| seen.push(l)),
            Ok(2)
        );
        assert_eq!(seen, [0, 2]);
    }
}
