//! The channel-free parts of the storvsc target: parsers, the handshake state machine, a
//! `ScsiDisk` over an input-driven transport, and the request table, each against a model
//! written from the protocol (devices §3, §7.2; SPC/SBC), not from storvsc.

use crate::Input;
use crate::scsi::Disk;
use storvsc::StorError;
use storvsc::block::{BlockDevice, DataBuf, MAX_RETRIES, ScsiDisk, ScsiTransport};
use storvsc::handshake::{Handshake, Progress};
use storvsc::protocol::{NtStatus, Operation, ScsiStatus, SrbStatus, VstorPacket, VstorVersion};
use storvsc::request::{LunAddress, ScsiRequest, SrbCompletion, split_transfer};
use storvsc::scsi::{
    BlockLimits, Capacity, Capacity10, Cdb, Disposition, InquiryData, Provisioning, ReportLuns,
    SenseData, SenseKey, classify, classify_sense, parse_unmap_parameters, unmap_parameters,
    vpd_supported_pages,
};
use vmbus_guest::{ChannelError, RequestId, RequestTable};
use zerocopy::{FromZeros, IntoBytes};

fn le32(b: &[u8], at: usize) -> u32 {
    b.get(at..at + 4)
        .map_or(0, |s| u32::from_le_bytes(s.try_into().unwrap()))
}
fn be32(b: &[u8], at: usize) -> u32 {
    b.get(at..at + 4)
        .map_or(0, |s| u32::from_be_bytes(s.try_into().unwrap()))
}
fn be64(b: &[u8], at: usize) -> u64 {
    u64::from_be_bytes(b[at..at + 8].try_into().unwrap())
}

/// Sense data as SPC defines it: fixed format (0x70/0x71) has the key @2 and ASC/ASCQ
/// @12/@13 within the additional length @7; descriptor format (0x72/0x73) key @1, ASC @2,
/// ASCQ @3.
fn sense_model(b: &[u8]) -> Option<(u8, u8, u8)> {
    let at = |i: usize| b.get(i).copied().unwrap_or(0);
    match *b.first()? & 0x7F {
        0x70 | 0x71 => {
            let key = *b.get(2)? & 0xF;
            let end = 8 + usize::from(at(7));
            let f = |i: usize| if i < end { at(i) } else { 0 };
            Some((key, f(12), f(13)))
        }
        0x72 | 0x73 => Some((*b.get(1)? & 0xF, at(2), at(3))),
        _ => None,
    }
}

fn check_srb_completion(b: &[u8]) {
    match SrbCompletion::parse(b) {
        Ok(c) => {
            assert!(b.len() >= 48 && le32(b, 0) == 1, "accepted {b:02x?}");
            assert_eq!(c.status.0, le32(b, 8));
            assert_eq!(c.srb_status.0, b[14]);
            assert_eq!(c.scsi_status.0, b[15]);
            assert_eq!(c.data_transfer_length, le32(b, 24));
            let sense = if b[14] & 0x80 != 0 {
                let n = usize::from(b[21]).min(20);
                &b[28..28 + n]
            } else {
                &[][..]
            };
            assert_eq!(
                c.sense.map(|s| (s.key.0, s.asc, s.ascq)),
                sense_model(sense)
            );
            let d = c.disposition();
            assert_eq!(c.error().is_none(), d == Disposition::Success);
            let n = c.data_transfer_length;
            assert_eq!(c.check(n).is_ok(), d == Disposition::Success);
            assert!(c.check(n.wrapping_add(1)).is_err());
            if d == Disposition::Success {
                assert!(c.status.is_success(), "a failing NTSTATUS succeeded: {c:?}");
            }
        }
        Err(_) => assert!(b.len() < 48 || le32(b, 0) != 1, "refused {b:02x?}"),
    }
}

fn check_sense(b: &[u8]) {
    let s = SenseData::parse(b);
    assert_eq!(s.map(|s| (s.key.0, s.asc, s.ascq)), sense_model(b));
    if let Some(s) = s {
        let d = classify_sense(s);
        match s.key {
            SenseKey::NO_SENSE | SenseKey::RECOVERED_ERROR => assert_eq!(d, Disposition::Success),
            SenseKey::ILLEGAL_REQUEST | SenseKey::MEDIUM_ERROR | SenseKey::DATA_PROTECT => {
                assert_eq!(d, Disposition::Fatal)
            }
            SenseKey::ABORTED_COMMAND => assert_eq!(d, Disposition::Retry),
            SenseKey::UNIT_ATTENTION => {
                assert!(matches!(
                    d,
                    Disposition::Retry | Disposition::RescanAndRetry
                ))
            }
            _ => {}
        }
        // CHECK CONDITION with sense follows the sense; without sense nothing says it is
        // transient.
        let cc = classify(SrbStatus::ERROR, ScsiStatus::CHECK_CONDITION, Some(s));
        assert_eq!(cc, d);
    }
}

fn check_inquiry(b: &[u8]) {
    match InquiryData::parse(b) {
        Ok(i) => {
            assert!(b.len() >= 5);
            assert_eq!((i.qualifier, i.device_type), (b[0] >> 5, b[0] & 0x1F));
            assert_eq!(i.removable, b[1] & 0x80 != 0);
            assert_eq!(i.version, b[2]);
            for (k, v) in i.vendor.iter().enumerate() {
                assert_eq!(*v, b.get(8 + k).copied().unwrap_or(b' '));
            }
            for (k, v) in i.product.iter().enumerate() {
                assert_eq!(*v, b.get(16 + k).copied().unwrap_or(b' '));
            }
            assert_eq!(i.is_disk(), b[0] == 0);
        }
        Err(_) => assert!(b.len() < 5),
    }
}

fn check_report_luns(b: &[u8]) {
    match ReportLuns::parse(b) {
        Ok(r) => {
            let list_len = be32(b, 0) as usize;
            assert_eq!(r.total as usize, list_len / 8);
            let entries = (list_len / 8).min((b.len() - 8) / 8);
            let want: Vec<u16> = (0..entries)
                .filter_map(|i| {
                    let e = &b[8 + 8 * i..16 + 8 * i];
                    match e[0] >> 6 {
                        0 => Some(u16::from(e[1])),
                        1 => Some(u16::from(e[0] & 0x3F) << 8 | u16::from(e[1])),
                        _ => None,
                    }
                })
                .collect();
            assert_eq!(r.luns().collect::<Vec<_>>(), want);
            assert_eq!(r.truncated(), entries < list_len / 8);
        }
        Err(_) => assert!(b.len() < 8),
    }
}

fn block_size_ok(bs: u32) -> bool {
    (512..=65536).contains(&bs) && bs.is_power_of_two()
}

fn check_capacity(b: &[u8]) {
    match Capacity::parse_10(b) {
        Ok(Capacity10::UseReadCapacity16) => assert_eq!(be32(b, 0), u32::MAX),
        Ok(Capacity10::Known(c)) => {
            assert_eq!(c.num_blocks, u64::from(be32(b, 0)) + 1);
            assert_eq!(c.block_size, be32(b, 4));
            assert!(block_size_ok(c.block_size));
        }
        Err(_) => assert!(b.len() < 8 || !block_size_ok(be32(b, 4))),
    }
    match Capacity::parse_16(b) {
        Ok(c) => {
            assert!(b.len() >= 12);
            assert_eq!(c.num_blocks, be64(b, 0) + 1);
            assert_eq!(c.block_size, be32(b, 8));
            assert!(block_size_ok(c.block_size));
            let at = |i: usize| b.get(i).copied().unwrap_or(0);
            assert_eq!(c.physical_exponent, at(13) & 0xF);
            assert_eq!((c.lbpme, c.lbprz), (at(14) & 0x80 != 0, at(14) & 0x40 != 0));
        }
        Err(_) => {
            assert!(b.len() < 12 || be64(b, 0) == u64::MAX || !block_size_ok(be32(b, 8)))
        }
    }
}

fn check_vpd(b: &[u8]) {
    match vpd_supported_pages(b) {
        Ok(p) => {
            let n = usize::from(u16::from_be_bytes([b[2], b[3]]));
            assert_eq!(p, &b[4..(4 + n).min(b.len())]);
            assert_eq!(b[1], 0);
        }
        Err(_) => assert!(b.len() < 4 || b[1] != 0),
    }
    match BlockLimits::parse(b) {
        Ok(l) => {
            let end = (4 + usize::from(u16::from_be_bytes([b[2], b[3]]))).min(b.len());
            let f = |at: usize| if at + 4 <= end { be32(b, at) } else { 0 };
            assert_eq!(l.max_transfer_blocks, f(8));
            assert_eq!(l.optimal_transfer_blocks, f(12));
            assert_eq!(l.max_unmap_blocks, f(20));
            assert_eq!(l.max_unmap_descriptors, f(24));
            assert_eq!(l.unmap_granularity, f(28));
        }
        Err(_) => assert!(b.len() < 4 || b[1] != 0xB0),
    }
    match Provisioning::parse(b) {
        Ok(p) => {
            assert_eq!(p.unmap, b[5] & 0x80 != 0);
            assert_eq!(p.provisioning_type, b[6] & 7);
        }
        Err(_) => assert!(b.len() < 7 || b[1] != 0xB2),
    }
}

fn check_unmap(b: &[u8], inp: &mut Input<'_>) {
    let got: Vec<(u64, u32)> = parse_unmap_parameters(b).collect();
    let declared = if b.len() >= 8 {
        usize::from(u16::from_be_bytes([b[2], b[3]]))
    } else {
        0
    };
    let n = (b.len().saturating_sub(8)).min(declared) / 16;
    assert_eq!(got.len(), n);
    for (i, (lba, count)) in got.iter().enumerate() {
        assert_eq!(*lba, be64(b, 8 + 16 * i));
        assert_eq!(*count, be32(b, 16 + 16 * i));
    }
    let ranges: Vec<(u64, u32)> = (0..inp.below(6)).map(|_| (inp.u64(), inp.u32())).collect();
    let mut out = vec![0u8; inp.below(120)];
    match unmap_parameters(&ranges, &mut out) {
        Ok(len) => {
            assert_eq!(len, 8 + 16 * ranges.len());
            let back: Vec<(u64, u32)> = parse_unmap_parameters(&out[..len]).collect();
            assert_eq!(back, ranges);
        }
        Err(_) => assert!(out.len() < 8 + 16 * ranges.len()),
    }
}

fn check_cdbs(inp: &mut Input<'_>) {
    let (write, lba, blocks) = (inp.bool(), inp.u64() >> inp.below(64), inp.u32());
    match Cdb::read_write(write, lba, blocks) {
        Some(c) => {
            let end = lba + u64::from(blocks);
            assert_eq!(c.rw_range(), Some((lba, blocks)));
            let ten = lba <= u64::from(u32::MAX) && end <= 1 << 32 && blocks <= 0xFFFF;
            let op = match (ten, write) {
                (true, false) => 0x28,
                (true, true) => 0x2A,
                (false, false) => 0x88,
                (false, true) => 0x8A,
            };
            assert_eq!(c.opcode(), op);
            assert_eq!(c.as_bytes().len(), if ten { 10 } else { 16 });
        }
        None => assert!(lba.checked_add(u64::from(blocks)).is_none()),
    }
    let raw = inp.bytes(20);
    match Cdb::from_bytes(&raw) {
        Some(c) => assert_eq!(c.as_bytes(), &raw[..]),
        None => assert!(raw.is_empty() || raw.len() > 16),
    }
}

fn check_split(inp: &mut Input<'_>) {
    let lba = if inp.bool() {
        u64::MAX - u64::from(inp.u16())
    } else {
        u64::from(inp.u32())
    };
    let blocks = u64::from(inp.u16() % 2048);
    let bs = [0, 1, 512, 4096, 65536, inp.u32()][inp.below(6)];
    let max = [0, 1, 512, 4096, 0x40000, inp.u32()][inp.below(6)];
    let unit = u64::from(bs.max(1));
    let limit = if max == 0 {
        u64::from(u32::MAX)
    } else {
        u64::from(max)
    };
    let (mut next_lba, mut next_off, mut total) = (lba, 0usize, 0u64);
    for c in split_transfer(lba, blocks, bs, max) {
        assert_eq!(c.lba, next_lba, "chunks not contiguous");
        assert_eq!(c.buf_offset, next_off);
        assert!(c.blocks >= 1);
        assert_eq!(c.len as u64, u64::from(c.blocks) * unit);
        assert!(
            c.len as u64 <= limit.max(unit),
            "chunk of {} bytes over the limit",
            c.len
        );
        assert!(c.len as u64 <= u64::from(u32::MAX) || c.blocks == 1);
        next_lba = c.lba.wrapping_add(u64::from(c.blocks));
        next_off += c.len;
        total += u64::from(c.blocks);
    }
    if lba.checked_add(blocks).is_some() {
        assert_eq!(total, blocks, "split lost blocks");
    } else {
        assert!(total <= blocks);
    }
}

/// Parsers and builders on arbitrary bytes and values.
pub fn parsers(inp: &mut Input<'_>) {
    for _ in 0..6 {
        if inp.is_empty() {
            break;
        }
        let b = inp.bytes(120);
        check_srb_completion(&b);
        check_sense(&b);
        check_inquiry(&b);
        check_report_luns(&b);
        check_capacity(&b);
        check_vpd(&b);
        check_unmap(&b, inp);
        check_cdbs(inp);
        check_split(inp);
        let (srb, scsi) = (SrbStatus(inp.u8()), ScsiStatus(inp.u8()));
        let d = classify(srb, scsi, SenseData::parse(&b));
        match srb.code() {
            SrbStatus::INVALID_LUN | SrbStatus::NO_DEVICE | SrbStatus::SELECTION_TIMEOUT => {
                assert_eq!(d, Disposition::LunGone)
            }
            SrbStatus::DATA_OVERRUN => assert_eq!(d, Disposition::Success),
            SrbStatus::SUCCESS if scsi == ScsiStatus::GOOD => assert_eq!(d, Disposition::Success),
            SrbStatus::BUSY | SrbStatus::BUS_RESET => assert_eq!(d, Disposition::Retry),
            _ => {}
        }
    }
}

/// The initialisation state machine against a model of devices §7.2: BEGIN_INITIALIZATION,
/// QUERY_PROTOCOL_VERSION per candidate until one is accepted, QUERY_PROPERTIES,
/// END_INITIALIZATION; any failure status or malformed completion ends it.
pub fn handshake(inp: &mut Input<'_>) {
    let all = VstorVersion::ALL_NEWEST_FIRST;
    let cands: Vec<VstorVersion> = match inp.u8() % 4 {
        0 => (0..inp.below(4)).map(|_| VstorVersion(inp.u16())).collect(),
        k => all[usize::from(k - 1)..].to_vec(),
    };
    let legacy = inp.bool();
    let mut hs = Handshake::new(&cands);
    if legacy {
        hs = hs.legacy_sizing();
    }
    // Model: the step and candidate in flight, what was accepted and reported.
    let mut step = 0u8; // 0 begin, 1 version, 2 properties, 3 end, 4 finished
    let mut cand = 0usize;
    let mut accepted: Option<VstorVersion> = None;
    let mut props = (0u16, 0u32, 0u32);
    let mut awaiting = false;
    for _ in 0..24 {
        if inp.is_empty() {
            break;
        }
        let cap = if inp.u8().is_multiple_of(8) {
            inp.below(80)
        } else {
            64
        };
        let mut out = vec![0u8; cap];
        let expected_op = match step {
            0 => Some(Operation::BEGIN_INITIALIZATION),
            1 => Some(Operation::QUERY_PROTOCOL_VERSION),
            2 => Some(Operation::QUERY_PROPERTIES),
            3 => Some(Operation::END_INITIALIZATION),
            _ => None,
        };
        assert_eq!(hs.pending_operation(), expected_op);
        assert_eq!(hs.is_finished(), step == 4);
        match hs.next_request(&mut out) {
            Some(n) => {
                assert!(!awaiting, "a second request while one is in flight");
                assert!(n == 48 || n == 64, "{n}-byte request");
                let p = VstorPacket::parse(&out[..n]).unwrap();
                assert_eq!(Some(p.op()), expected_op);
                assert_eq!(p.flags.get(), 1);
                // Proposals go in their candidate's size (48 with legacy sizing), later
                // packets in the accepted version's, BEGIN_INITIALIZATION in the first
                // candidate's.
                let size = match (step, accepted) {
                    (_, Some(v)) => v.packet_size(),
                    _ if legacy => 48,
                    (1, None) => cands[cand].packet_size(),
                    _ => cands.first().map_or(64, |v| v.packet_size()),
                };
                if step == 1 {
                    let v = VstorVersion(u16::from_le_bytes([p.payload[0], p.payload[1]]));
                    assert_eq!(v, cands[cand]);
                }
                assert_eq!(n, size, "request size at step {step}");
                awaiting = true;
            }
            None => assert!(
                awaiting || step == 4 || cap < 64 || (step == 1 && cand >= cands.len()),
                "no request at step {step}"
            ),
        }
        let bytes = if inp.u8().is_multiple_of(4) {
            inp.bytes(80)
        } else {
            let mut p = VstorPacket::new_zeroed();
            p.operation = 1.into();
            p.status = match inp.u8() % 8 {
                0 => inp.u32(),
                1 => NtStatus::REVISION_MISMATCH.0,
                _ => 0,
            }
            .into();
            let payload = inp.fill(12);
            p.payload[..12].copy_from_slice(&payload);
            let n = if inp.bool() { 48 } else { 64 };
            p.as_bytes()[..n].to_vec()
        };
        let r = hs.on_completion(&bytes);
        if !awaiting || step == 4 {
            assert_eq!(r, Err(StorError::UnexpectedCompletion));
            continue;
        }
        awaiting = false;
        if bytes.len() < 48 {
            assert!(matches!(r, Err(StorError::ShortPacket { .. })), "{r:?}");
            step = 4;
            continue;
        }
        if le32(&bytes, 0) != 1 {
            assert!(matches!(r, Err(StorError::UnexpectedOperation(_))), "{r:?}");
            step = 4;
            continue;
        }
        let status = le32(&bytes, 8);
        match step {
            1 if status == 0 => {
                accepted = Some(cands[cand]);
                step = 2;
                assert_eq!(r, Ok(Progress::Continue));
            }
            1 => {
                cand += 1;
                if cand < cands.len() {
                    assert_eq!(r, Ok(Progress::Continue));
                } else {
                    assert_eq!(r, Err(StorError::NoCommonVersion));
                    step = 4;
                }
            }
            _ if status != 0 => {
                assert!(matches!(r, Err(StorError::StepFailed { .. })), "{r:?}");
                step = 4;
            }
            0 if cands.is_empty() => {
                assert_eq!(r, Err(StorError::NoCommonVersion));
                step = 4;
            }
            0 => {
                assert_eq!(r, Ok(Progress::Continue));
                step = 1;
            }
            2 => {
                let p = &bytes[12..];
                props = (u16::from_le_bytes([p[4], p[5]]), le32(p, 8), le32(p, 12));
                assert_eq!(r, Ok(Progress::Continue));
                step = 3;
            }
            _ => {
                let Ok(Progress::Done(n)) = r else {
                    panic!("END_INITIALIZATION completed: {r:?}")
                };
                assert_eq!(Some(n.version), accepted);
                assert_eq!((n.max_channel_count, n.flags, n.max_transfer_bytes), props);
                step = 4;
            }
        }
        assert_eq!(hs.is_finished(), step == 4);
    }
}

/// A transport whose answers come from the disk model or, when the input says so, are
/// hostile.
struct Transport<'i, 'a> {
    inp: &'i mut Input<'a>,
    disk: Disk,
    /// The data and completions so far came from the disk model.
    exact: bool,
    limit: u32,
    calls: usize,
}

impl ScsiTransport for Transport<'_, '_> {
    fn execute(&mut self, r: &ScsiRequest, data: DataBuf<'_>) -> Result<SrbCompletion, StorError> {
        self.calls += 1;
        assert_eq!(data.len(), r.transfer_length as usize);
        assert_eq!(data.direction(), r.direction);
        let cdb = r.cdb.as_bytes();
        let bs = self.disk.block_size;
        if matches!(cdb[0], 0x28 | 0x2A | 0x88 | 0x8A) && self.limit > 0 {
            // Within the limit, or a single block (of the size the guest believes: a hostile
            // READ CAPACITY may have given one larger than the limit and the model's).
            let blocks = match cdb[0] {
                0x28 | 0x2A => u32::from(u16::from_be_bytes([cdb[7], cdb[8]])),
                _ => u32::from_be_bytes([cdb[10], cdb[11], cdb[12], cdb[13]]),
            };
            assert!(
                r.transfer_length <= self.limit.max(bs) || blocks == 1,
                "{}-byte transfer of {blocks} blocks over the {}-byte limit",
                r.transfer_length,
                self.limit
            );
        }
        let d = self.inp.u8();
        let hostile = d >= 0xC0;
        let k = d % 6;
        if hostile && k == 0 {
            return Err([
                StorError::Timeout,
                StorError::ChannelClosed,
                StorError::Transport,
            ][self.inp.below(3)]);
        }
        if hostile && k == 1 {
            self.exact = false;
            if let DataBuf::FromDevice(b) = data {
                let junk = self.inp.fill(b.len().min(64));
                b[..junk.len()].copy_from_slice(&junk);
            }
            let sense = self.inp.bytes(20);
            return Ok(SrbCompletion {
                status: NtStatus(if self.inp.bool() { 0 } else { self.inp.u32() }),
                srb_status: SrbStatus(self.inp.u8()),
                scsi_status: ScsiStatus(self.inp.u8()),
                data_transfer_length: self.inp.u32(),
                sense: SenseData::parse(&sense),
            });
        }
        if hostile && (k == 3 || k == 4) {
            let mut c = SrbCompletion::good(0);
            if k == 3 {
                c.srb_status = SrbStatus::ERROR.with_autosense();
                c.scsi_status = ScsiStatus::CHECK_CONDITION;
                let (asc, ascq) =
                    [(0x29, 0), (0x2A, 0x09), (0x3F, 0x0E), (0x04, 0x01)][self.inp.below(4)];
                c.sense = Some(SenseData {
                    key: SenseKey(if asc == 0x04 { 2 } else { 6 }),
                    asc,
                    ascq,
                });
            } else {
                c.srb_status = SrbStatus::BUSY;
            }
            return Ok(c);
        }
        let out: Vec<u8> = match &data {
            DataBuf::ToDevice(b) => b.to_vec(),
            _ => Vec::new(),
        };
        let o = self.disk.execute(r.addr.lun, cdb, &out, data.len());
        let mut n = match data {
            DataBuf::FromDevice(b) => {
                let mut src = o.data.clone();
                if hostile && k == 5 {
                    self.exact = false;
                    src = self.inp.fill(src.len());
                }
                b[..src.len()].copy_from_slice(&src);
                src.len() as u32
            }
            DataBuf::ToDevice(b) if o.srb_status == 1 => b.len() as u32,
            _ => 0,
        };
        if hostile && k == 2 {
            n = self.inp.u32();
        }
        let mut srb_status = SrbStatus(o.srb_status);
        if o.sense.is_some() {
            srb_status = srb_status.with_autosense();
        }
        Ok(SrbCompletion {
            status: NtStatus::SUCCESS,
            srb_status,
            scsi_status: ScsiStatus(o.scsi_status),
            data_transfer_length: n,
            sense: o.sense.map(|(key, asc, ascq)| SenseData {
                key: SenseKey(key),
                asc,
                ascq,
            }),
        })
    }
}

/// A `ScsiDisk` over [`Transport`]: geometry, data and retries against the model.
pub fn disk(inp: &mut Input<'_>) {
    let bs = if inp.bool() { 512 } else { 4096 };
    let blocks = 1 + u64::from(inp.u8());
    let mut model = Disk::new(bs, blocks);
    model.thin = inp.bool();
    model.version = [5, 4, 6][inp.below(3)];
    model.max_transfer_blocks = [0, 1, 3, 8][inp.below(4)];
    model.max_unmap_blocks = 1 + u32::from(inp.u8() % 16);
    let limit = [0, 512, 4096, 8192, inp.u32() % 65536][inp.below(5)];
    let mut t = Transport {
        inp,
        disk: model,
        exact: true,
        limit,
        calls: 0,
    };
    let Ok(mut disk) = ScsiDisk::open(&mut t, LunAddress::lun(0), limit) else {
        return;
    };
    let exact = disk.transport_mut().exact;
    if exact {
        assert_eq!(disk.block_size(), bs);
        assert_eq!(disk.num_blocks(), blocks);
    }
    for _ in 0..16 {
        // The block size the guest believes (a hostile READ CAPACITY may have changed it).
        let dbs = disk.block_size() as usize;
        let t = disk.transport_mut();
        if t.inp.is_empty() {
            break;
        }
        // The model checks written bytes by their offset in its own blocks: only while the
        // guest's blocks are the model's.
        t.disk.check_writes &= dbs == bs as usize;
        let op = t.inp.u8() % 5;
        let lba = u64::from(t.inp.u8()) % (blocks + 2);
        let n = 1 + t.inp.below(9);
        t.calls = 0;
        let in_range = lba + n as u64 <= disk.num_blocks();
        match op {
            0 | 1 => {
                let mut buf = vec![0u8; n * dbs];
                let r = disk.read_blocks(lba, &mut buf);
                let t = disk.transport_mut();
                if r.is_ok() && t.exact {
                    for (i, b) in buf.chunks(dbs).enumerate() {
                        assert_eq!(
                            b,
                            &t.disk.block(lba + i as u64)[..],
                            "block {}",
                            lba + i as u64
                        );
                    }
                }
                if !in_range {
                    assert!(r.is_err());
                }
            }
            2 => {
                let base = lba * dbs as u64;
                let buf: Vec<u8> = (0..(n * dbs) as u64)
                    .map(|i| crate::scsi::written(base + i))
                    .collect();
                let r = disk.write_blocks(lba, &buf);
                if !in_range {
                    assert!(r.is_err());
                }
            }
            3 => {
                let _ = disk.flush();
            }
            _ => {
                let r = disk.discard(lba, n as u64);
                if disk.unmap_support().is_none() {
                    assert_eq!(r, Err(StorError::Unsupported));
                }
            }
        }
        // Retries are bounded: each piece at most MAX_RETRIES + 1 times, each retry at most a
        // capacity re-read (a few commands).
        let calls = disk.transport_mut().calls;
        assert!(
            calls <= (n + 1) * (MAX_RETRIES + 1) * 8,
            "{calls} commands for one operation on {n} blocks"
        );
    }
}

/// The channel's request table (storvsc's transaction ids) against a model: ids never 0 and
/// never reused while live, a full table refuses and hands the context back, completed,
/// stale, forged and duplicate ids match nothing, a channel death hands each request back
/// exactly once.
pub fn request_table(inp: &mut Input<'_>) {
    let mut t: RequestTable<u16, 8> = RequestTable::new();
    let mut live: Vec<(RequestId, u16, bool)> = Vec::new();
    let mut failed: Vec<(RequestId, u16)> = Vec::new();
    let mut old: Vec<u64> = Vec::new();
    let mut ctx = 0u16;
    for _ in 0..200 {
        if inp.is_empty() {
            break;
        }
        match inp.u8() % 6 {
            0 | 1 => {
                ctx = ctx.wrapping_add(1);
                let dma = inp.bool();
                match t.insert(ctx, dma) {
                    Ok(id) => {
                        assert!(live.len() + failed.len() < 8);
                        assert_ne!(id.transaction_id(), 0);
                        assert!(id.index() < 8);
                        assert!(
                            live.iter()
                                .all(|(x, _, _)| x.transaction_id() != id.transaction_id())
                                && failed
                                    .iter()
                                    .all(|(x, _)| x.transaction_id() != id.transaction_id()),
                            "id reused while live"
                        );
                        live.push((id, ctx, dma));
                    }
                    Err((e, back)) => {
                        assert_eq!(live.len() + failed.len(), 8);
                        assert_eq!((e, back), (ChannelError::TooManyRequests, ctx));
                    }
                }
            }
            2 => {
                let tid = match inp.u8() % 4 {
                    0 => inp.u64(),
                    1 => old.get(inp.below(old.len().max(1))).copied().unwrap_or(0),
                    _ => live
                        .get(inp.below(live.len().max(1)))
                        .map_or(1, |l| l.0.transaction_id()),
                };
                let want = live.iter().position(|l| l.0.transaction_id() == tid);
                match (t.complete(tid), want) {
                    (Some(e), Some(i)) => {
                        let (id, c, dma) = live.remove(i);
                        assert_eq!((e.id, e.context, e.dma), (id, c, dma));
                        old.push(tid);
                    }
                    (None, None) => {}
                    (got, want) => panic!("complete({tid:#x}) = {got:?}, model {want:?}"),
                }
            }
            3 => {
                t.fail_all(ChannelError::Rescinded);
                failed.extend(live.drain(..).map(|(id, c, _)| (id, c)));
            }
            4 => match t.take_failed() {
                Some((id, c, e)) => {
                    assert_eq!(e, ChannelError::Rescinded);
                    let i = failed
                        .iter()
                        .position(|f| *f == (id, c))
                        .expect("a failed request reported twice or never failed");
                    failed.remove(i);
                    old.push(id.transaction_id());
                }
                None => assert!(failed.is_empty()),
            },
            _ => {
                let pick = inp.below(live.len() + failed.len() + 1);
                let id = if pick < live.len() {
                    Some(live[pick].0)
                } else {
                    failed.get(pick - live.len()).map(|f| f.0)
                };
                if let Some(id) = id {
                    let c = t.cancel(id).expect("cancel of a tracked request");
                    if let Some(i) = live.iter().position(|l| l.0 == id) {
                        assert_eq!(live.remove(i).1, c);
                    } else {
                        let i = failed.iter().position(|f| f.0 == id).unwrap();
                        assert_eq!(failed.remove(i).1, c);
                    }
                    assert_eq!(t.cancel(id), None);
                    old.push(id.transaction_id());
                }
            }
        }
        assert_eq!(t.in_flight(), live.len());
        assert_eq!(t.failed(), failed.len());
        assert_eq!(t.is_full(), live.len() + failed.len() == 8);
    }
}
