//! Fixed-seed fuzzing: random host bytes through every parser and state machine must never
//! panic (design rule "the host is untrusted input").

use std::vec::Vec;

use crate::StorError;
use crate::block::{BlockDevice, DataBuf, ScsiDisk, ScsiTransport};
use crate::handshake::{Handshake, Progress};
use crate::protocol::{ScsiStatus, SrbStatus};
use crate::request::{LunAddress, ScsiRequest, SrbCompletion};
use crate::scsi::{
    BlockLimits, Capacity, InquiryData, Provisioning, ReportLuns, SenseData, classify,
    parse_unmap_parameters, vpd_supported_pages,
};
use vmbus_guest::{ChannelError, RequestTable};

struct XorShift(u64);

impl XorShift {
    fn next(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        self.0 = x;
        x
    }
    fn bytes(&mut self, max: usize) -> Vec<u8> {
        let n = (self.next() % (max as u64 + 1)) as usize;
        let biased = self.next().is_multiple_of(4);
        (0..n)
            .map(|_| {
                let v = self.next() as u8;
                // Bias some packets toward plausible small values (COMPLETE_IO, status 0).
                if biased && v > 0x20 { v & 1 } else { v }
            })
            .collect()
    }
}

#[test]
fn parsers_never_panic() {
    let mut r = XorShift(0x5EED_CAFE_F00D_1234);
    for _ in 0..20_000 {
        let b = r.bytes(96);
        let _ = SrbCompletion::parse(&b).map(|c| (c.disposition(), c.error(), c.check(512)));
        if let Some(s) = SenseData::parse(&b) {
            let _ = crate::scsi::classify_sense(s);
        }
        let _ = InquiryData::parse(&b);
        if let Ok(l) = ReportLuns::parse(&b) {
            let _ = l.luns().count();
            let _ = l.truncated();
        }
        let _ = Capacity::parse_10(&b);
        let _ = Capacity::parse_16(&b);
        let _ = BlockLimits::parse(&b);
        let _ = Provisioning::parse(&b);
        let _ = vpd_supported_pages(&b);
        let _ = parse_unmap_parameters(&b).count();
        let s = b.first().copied().unwrap_or(0);
        let _ = classify(
            SrbStatus(s),
            ScsiStatus(b.get(1).copied().unwrap_or(0)),
            SenseData::parse(&b),
        );
    }
}

#[test]
fn handshake_and_table_never_panic() {
    let mut r = XorShift(0xDEAD_BEEF_0BAD_F00D);
    let mut done = 0;
    for _ in 0..5_000 {
        let mut hs = Handshake::default();
        let mut out = [0u8; 64];
        for _ in 0..12 {
            if hs.next_request(&mut out).is_none() && !hs.is_finished() {
                // awaiting
            }
            match hs.on_completion(&r.bytes(80)) {
                Ok(Progress::Done(_)) => {
                    done += 1;
                    break;
                }
                Ok(Progress::Continue) | Err(_) => {}
            }
        }
    }
    // The biased generator completes the handshake sometimes; the count only documents it.
    let _ = done;
    // The channel's request table (storvsc's transaction ids): random inserts, host ids
    // (real, stale or forged) and channel deaths never break its accounting.
    let mut t: RequestTable<u8, 8> = RequestTable::new();
    let mut ids = Vec::new();
    for i in 0..10_000u32 {
        match r.next() % 4 {
            0 => {
                if let Ok(id) = t.insert(i as u8, r.next().is_multiple_of(2)) {
                    ids.push(id.transaction_id());
                }
            }
            1 => {
                let id = if r.next().is_multiple_of(2) && !ids.is_empty() {
                    ids[(r.next() % ids.len() as u64) as usize]
                } else {
                    r.next()
                };
                let _ = t.complete(id);
            }
            2 => {
                let _ = t.take_failed();
            }
            _ => {
                if r.next().is_multiple_of(100) {
                    t.fail_all(ChannelError::Rescinded);
                }
            }
        }
        assert!(t.in_flight() + t.failed() <= 8);
    }
}

/// The request table storvsc's requests go through (ported from storvsc's own table, which
/// the channel's replaced): ids are never 0, a full table refuses, completed, stale, forged
/// and duplicate ids match nothing, and a channel death hands every request back once.
#[test]
fn channel_request_table_ids_and_fail_all() {
    let mut t: RequestTable<u32, 2> = RequestTable::new();
    let a = t.insert(10, false).unwrap();
    let b = t.insert(20, false).unwrap();
    assert_ne!(a.transaction_id(), 0);
    assert_eq!(t.insert(30, false).unwrap_err().1, 30);
    assert_eq!(t.complete(a.transaction_id()).map(|e| e.context), Some(10));
    assert!(t.complete(a.transaction_id()).is_none());
    let c = t.insert(30, false).unwrap();
    assert_ne!(
        c.transaction_id(),
        a.transaction_id(),
        "same slot, new generation"
    );
    assert!(t.complete(a.transaction_id()).is_none());
    for bad in [0, 3, u64::MAX, b.transaction_id() + (1 << 32)] {
        assert!(t.complete(bad).is_none());
    }
    t.fail_all(ChannelError::Rescinded);
    let mut failed = Vec::new();
    while let Some(f) = t.take_failed() {
        failed.push(f);
    }
    assert_eq!(failed.len(), 2);
    assert!(failed.contains(&(b, 20, ChannelError::Rescinded)));
    assert!(failed.contains(&(c, 30, ChannelError::Rescinded)));
    assert_eq!(t.in_flight(), 0);
    assert!(t.complete(b.transaction_id()).is_none());
}

/// A transport that answers with random completions and random data.
struct RandomHost(XorShift);

impl ScsiTransport for RandomHost {
    fn execute(&mut self, _: &ScsiRequest, data: DataBuf<'_>) -> Result<SrbCompletion, StorError> {
        if let DataBuf::FromDevice(b) = data {
            for x in b.iter_mut() {
                *x = self.0.next() as u8;
            }
        }
        let mut p = self.0.bytes(64);
        p.resize(64, 0);
        if self.0.next().is_multiple_of(2) {
            p[0] = 1;
            p[8..12].fill(0);
            if self.0.next().is_multiple_of(2) {
                p[14] = 1;
            }
        }
        SrbCompletion::parse(&p)
    }
}

#[test]
fn disk_over_random_host_never_panics() {
    let mut r = XorShift(42);
    for seed in 1..400u64 {
        let host = RandomHost(XorShift(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1));
        if let Ok(mut d) = ScsiDisk::open(host, LunAddress::lun(0), (r.next() % 70000) as u32) {
            let bs = d.block_size() as usize;
            let mut buf = std::vec![0u8; bs * 3];
            let _ = d.read_blocks(r.next() % 8, &mut buf);
            let _ = d.write_blocks(r.next() % 8, &buf);
            let _ = d.flush();
            let _ = d.discard(r.next() % 8, r.next() % 8);
        }
    }
}
