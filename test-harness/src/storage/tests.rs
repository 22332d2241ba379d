//! The VSP's packet handling driven through a fake channel (fast, no hypervisor).

use std::cell::RefCell;

use super::*;

struct FakeChannel {
    mem: RefCell<Vec<u8>>,
    sent: Vec<(bool, u64, Vec<u8>)>,
    errors: RefCell<Vec<String>>,
}

impl FakeChannel {
    fn new() -> Self {
        Self {
            mem: RefCell::new(vec![0; 64 * 4096]),
            sent: Vec::new(),
            errors: RefCell::new(Vec::new()),
        }
    }
}

impl VspChannel for FakeChannel {
    fn send_completion(&mut self, tid: u64, payload: &[u8]) -> Result<(), HostRingError> {
        self.sent.push((true, tid, payload.to_vec()));
        Ok(())
    }
    fn send_inband(&mut self, payload: &[u8], tid: u64) -> Result<(), HostRingError> {
        self.sent.push((false, tid, payload.to_vec()));
        Ok(())
    }
    fn read_gpa(&self, gpa: u64, buf: &mut [u8]) -> Result<(), HostRingError> {
        let m = self.mem.borrow();
        let s = gpa as usize;
        let src = m
            .get(s..s + buf.len())
            .ok_or(HostRingError::BadAddress(gpa))?;
        buf.copy_from_slice(src);
        Ok(())
    }
    fn write_gpa(&self, gpa: u64, data: &[u8]) -> Result<(), HostRingError> {
        let mut m = self.mem.borrow_mut();
        let s = gpa as usize;
        m.get_mut(s..s + data.len())
            .ok_or(HostRingError::BadAddress(gpa))?
            .copy_from_slice(data);
        Ok(())
    }
    fn protocol_error(&self, reason: String) {
        self.errors.borrow_mut().push(reason);
    }
}

fn vstor(op: u32, payload: &[u8], size: usize) -> Vec<u8> {
    let mut p = vec![0u8; size];
    p[0..4].copy_from_slice(&op.to_le_bytes());
    p[4] = 1;
    let n = payload.len().min(size - 12);
    p[12..12 + n].copy_from_slice(&payload[..n]);
    p
}

fn srb_payload(lun: u8, cdb: &[u8], data_in: u8, len: u32) -> Vec<u8> {
    let mut s = vec![0u8; 52];
    s[0] = 52;
    s[7] = lun;
    s[8] = cdb.len() as u8;
    s[9] = 0x14;
    s[10] = data_in;
    s[12..16].copy_from_slice(&len.to_le_bytes());
    s[16..16 + cdb.len()].copy_from_slice(cdb);
    s
}

fn packet(tid: u64, payload: Vec<u8>, ranges: Vec<(u32, u32, Vec<u64>)>) -> HostPacket {
    HostPacket {
        packet_type: if ranges.is_empty() { 6 } else { 9 },
        flags: 1,
        transaction_id: tid,
        payload,
        gpa_ranges: ranges,
        xfer_pages: None,
    }
}

struct Bench {
    vsp: StorageVsp,
    ch: FakeChannel,
    tid: u64,
    size: usize,
}

impl Bench {
    fn new(config: VspConfig) -> Self {
        let vsp = StorageVsp::new(config);
        vsp.add_lun(0, Lun::memory(512, 128));
        Self {
            vsp,
            ch: FakeChannel::new(),
            tid: 0,
            size: 64,
        }
    }
    /// Sends a packet and returns (status, completion bytes).
    fn send(&mut self, payload: Vec<u8>, ranges: Vec<(u32, u32, Vec<u64>)>) -> (u32, Vec<u8>) {
        self.tid += 1;
        let mut subs = Vec::new();
        self.vsp
            .handle(&mut self.ch, &packet(self.tid, payload, ranges), &mut subs);
        let (is_comp, tid, bytes) = self.ch.sent.pop().expect("a completion");
        assert!(is_comp);
        assert_eq!(tid, self.tid);
        (u32::from_le_bytes(bytes[8..12].try_into().unwrap()), bytes)
    }
    fn op(&mut self, op: u32, payload: &[u8]) -> (u32, Vec<u8>) {
        let p = vstor(op, payload, self.size);
        self.send(p, vec![])
    }
    fn init(&mut self, version: u16) {
        assert_eq!(self.op(7, &[]).0, 0);
        assert_eq!(self.op(9, &version.to_le_bytes()).0, 0);
        assert_eq!(self.op(10, &[]).0, 0);
        assert_eq!(self.op(8, &[]).0, 0);
    }
    /// EXECUTE_SRB with data at GPA 0x2000 + `off`; returns (srb_status, scsi_status,
    /// transferred, sense bytes).
    fn srb(
        &mut self,
        lun: u8,
        cdb: &[u8],
        data_in: u8,
        len: u32,
        off: u32,
    ) -> (u8, u8, u32, Vec<u8>) {
        let ranges = if len == 0 {
            vec![]
        } else {
            let pages = (off as usize + len as usize).div_ceil(4096) as u64;
            vec![(len, off, (2..2 + pages).collect())]
        };
        let p = vstor(3, &srb_payload(lun, cdb, data_in, len), self.size);
        let (st, b) = self.send(p, ranges);
        assert_eq!(st, 0);
        assert_eq!(b.len(), self.size, "completion padded to the packet size");
        assert_eq!(b[0], 1, "COMPLETE_IO");
        let sense_len = usize::from(b[12 + 9]).min(20);
        (
            b[14],
            b[15],
            u32::from_le_bytes(b[24..28].try_into().unwrap()),
            b[28..28 + sense_len].to_vec(),
        )
    }
}

#[test]
fn handshake_versions_and_properties() {
    let mut b = Bench::new(VspConfig::openvmm());
    assert_eq!(
        b.op(9, &0x0602u16.to_le_bytes()).0,
        0xC000_0184,
        "before BEGIN"
    );
    assert_eq!(b.op(7, &[]).0, 0);
    assert_eq!(b.op(9, &0x0602u16.to_le_bytes()).0, 0xC000_0059);
    assert_eq!(
        b.op(3, &srb_payload(0, &[0; 6], 2, 0)).0,
        0xC000_0184,
        "SRB before END"
    );
    let (st, r) = b.op(9, &0x0600u16.to_le_bytes());
    assert_eq!(st, 0);
    assert_eq!(&r[12..14], &[0, 6]);
    assert_eq!(b.vsp.negotiated_version(), Some(VstorVersion::WIN8_1));
    let (_, r) = b.op(10, &[]);
    assert_eq!(&r[16..18], &4u16.to_le_bytes());
    assert_eq!(&r[20..24], &1u32.to_le_bytes());
    assert_eq!(&r[24..28], &0x40000u32.to_le_bytes());
    assert_eq!(b.op(8, &[]).0, 0);
    assert_eq!(b.vsp.init_state(), InitState::Ready);
    assert_eq!(b.op(99, &[]).0, 0xC000_0010);
    assert_eq!(b.op(6, &[]).0, 0, "reset bus is a no-op");
    assert!(b.ch.errors.borrow().is_empty());
}

#[test]
fn win7_completions_are_48_bytes() {
    let mut b = Bench::new(VspConfig::default());
    b.size = 48;
    b.init(0x0402);
    let (srb, scsi, n, _) = b.srb(0, &[0x25, 0, 0, 0, 0, 0, 0, 0, 0, 0], 1, 8, 0);
    assert_eq!((srb, scsi, n), (1, 0, 8));
    assert_eq!(
        &b.ch.mem.borrow()[0x2000..0x2008],
        &[0, 0, 0, 127, 0, 0, 2, 0]
    );
    // A 48-byte packet after negotiating WIN8+ is a protocol error.
    let mut b = Bench::new(VspConfig::default());
    b.init(0x0602);
    b.size = 48;
    b.op(10, &[]);
    assert_eq!(b.ch.errors.borrow().len(), 1);
}

#[test]
fn disk_commands() {
    for bs in [512u32, 4096] {
        let mut b = Bench::new(VspConfig::default());
        b.vsp.add_lun(1, Lun::memory(bs, 64));
        b.init(0x0602);
        let (s, _, n, _) = b.srb(1, &[0x12, 0, 0, 0, 36, 0], 1, 36, 100);
        assert_eq!((s, n), (1, 36));
        let inq = b.ch.mem.borrow()[0x2000 + 100..0x2000 + 136].to_vec();
        assert_eq!(&inq[8..16], b"Msft    ");
        assert_eq!(&inq[16..32], b"Virtual Disk    ");
        // READ CAPACITY(16): 64 blocks of bs, LBPME.
        let mut rc16 = [0u8; 16];
        rc16[0] = 0x9E;
        rc16[1] = 0x10;
        rc16[13] = 32;
        let (s, _, n, _) = b.srb(1, &rc16, 1, 32, 0);
        assert_eq!((s, n), (1, 32));
        let m = b.ch.mem.borrow()[0x2000..0x2020].to_vec();
        assert_eq!(&m[..8], &63u64.to_be_bytes());
        assert_eq!(&m[8..12], &bs.to_be_bytes());
        assert_eq!(m[14] & 0x80, 0x80);
        // WRITE(10) 2 blocks at LBA 5 from an unaligned buffer spanning pages, READ(16) back.
        let len = 2 * bs;
        let pattern: Vec<u8> = (0..len).map(|i| (i % 253) as u8).collect();
        b.ch.mem.borrow_mut()[0x2000 + 300..0x2000 + 300 + len as usize].copy_from_slice(&pattern);
        let (s, _, n, _) = b.srb(1, &[0x2A, 0, 0, 0, 0, 5, 0, 0, 2, 0], 0, len, 300);
        assert_eq!((s, n), (1, len));
        assert_eq!(
            b.vsp.read_lun(1, 5 * u64::from(bs), len as usize).unwrap(),
            pattern
        );
        let mut r16 = [0u8; 16];
        r16[0] = 0x88;
        r16[9] = 5;
        r16[13] = 2;
        b.ch.mem.borrow_mut()[0x2000..0x2000 + 3 * 4096].fill(0);
        let (s, _, n, _) = b.srb(1, &r16, 1, len, 8);
        assert_eq!((s, n), (1, len));
        assert_eq!(
            b.ch.mem.borrow()[0x2008..0x2008 + len as usize],
            pattern[..]
        );
        // Out of range → ILLEGAL REQUEST 0x21/0x00 with autosense.
        let (s, scsi, n, sense) = b.srb(1, &[0x28, 0, 0, 0, 0, 63, 0, 0, 2, 0], 1, len, 0);
        assert_eq!((s, scsi, n), (0x84, 2, 0));
        assert_eq!(
            (sense[0], sense[2], sense[12], sense[13]),
            (0x70, 5, 0x21, 0)
        );
        // Unknown opcode → 0x20/0x00.
        let (s, _, _, sense) = b.srb(1, &[0xC0, 0, 0, 0, 0, 0], 2, 0, 0);
        assert_eq!((s, sense[12]), (0x84, 0x20));
        // SYNCHRONIZE CACHE, TEST UNIT READY.
        assert_eq!(b.srb(1, &[0x35, 0, 0, 0, 0, 0, 0, 0, 0, 0], 2, 0, 0).0, 1);
        assert_eq!(b.srb(1, &[0; 6], 2, 0, 0).0, 1);
        // UNMAP block 5.
        let mut p = vec![0u8; 24];
        p[1] = 22;
        p[3] = 16;
        p[15] = 5;
        p[19] = 1;
        b.ch.mem.borrow_mut()[0x2000..0x2018].copy_from_slice(&p);
        assert_eq!(b.srb(1, &[0x42, 0, 0, 0, 0, 0, 0, 0, 24, 0], 0, 24, 0).0, 1);
        let after = b.vsp.read_lun(1, 5 * u64::from(bs), len as usize).unwrap();
        assert!(after[..bs as usize].iter().all(|&x| x == 0));
        assert_eq!(after[bs as usize..], pattern[bs as usize..]);
        // REPORT LUNS lists 0 and 1; absent LUN 7 → INVALID_LUN.
        let (s, _, n, _) = b.srb(7, &[0xA0, 0, 0, 0, 0, 0, 0, 0, 1, 0, 0, 0], 1, 256, 0);
        assert_eq!((s, n), (1, 24));
        assert_eq!(
            &b.ch.mem.borrow()[0x2000..0x2018],
            &[
                0, 0, 0, 16, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1, 0, 0, 0, 0, 0, 0
            ]
        );
        assert_eq!(b.srb(7, &[0; 6], 2, 0, 0).0, 0x20);
        // MODE SENSE(6) all pages: caching page present, not write-protected.
        let (s, _, n, _) = b.srb(1, &[0x1A, 0x08, 0x3F, 0, 0xFF, 0], 1, 255, 0);
        assert_eq!((s, n), (1, 24));
        assert_eq!(b.ch.mem.borrow()[0x2002], 0);
        assert_eq!(b.ch.mem.borrow()[0x2004], 0x08);
        // VPD pages.
        let (s, _, _, _) = b.srb(1, &[0x12, 1, 0xB0, 0, 64, 0], 1, 64, 0);
        assert_eq!(s, 1);
        assert_eq!(
            &b.ch.mem.borrow()[0x2014..0x2018],
            &0x40_0000u32.to_be_bytes()
        );
        assert!(b.ch.errors.borrow().is_empty());
    }
}

#[test]
fn faults() {
    let mut b = Bench::new(VspConfig::default());
    b.init(0x0602);
    b.vsp.fail_next_status(NtStatus::IO_DEVICE_ERROR);
    let p = vstor(3, &srb_payload(0, &[0; 6], 2, 0), 64);
    assert_eq!(b.send(p, vec![]).0, 0xC000_0185);
    b.vsp.unit_attention(0, 0x2A, 0x09);
    let (s, scsi, _, sense) = b.srb(0, &[0; 6], 2, 0, 0);
    assert_eq!(
        (s, scsi, sense[2], sense[12], sense[13]),
        (0x84, 2, 6, 0x2A, 0x09)
    );
    assert_eq!(b.srb(0, &[0; 6], 2, 0, 0).0, 1, "attention reported once");
    b.vsp.bus_reset();
    assert_eq!(b.srb(0, &[0; 6], 2, 0, 0).0, 0x0E);
    let (_, _, _, sense) = b.srb(0, &[0; 6], 2, 0, 0);
    assert_eq!(sense[12], 0x29);
    b.vsp.fail_next_srb(0x05, 0, None);
    assert_eq!(b.srb(0, &[0; 6], 2, 0, 0).0, 0x05);
    b.vsp.resize_lun(0, 256).unwrap();
    assert_eq!(b.srb(0, &[0; 6], 2, 0, 0).3[12], 0x2A);
    // Withheld completions are released on poll.
    b.vsp.withhold_completions(true);
    let mut subs = Vec::new();
    b.vsp.handle(
        &mut b.ch,
        &packet(77, vstor(3, &srb_payload(0, &[0; 6], 2, 0), 64), vec![]),
        &mut subs,
    );
    assert!(b.ch.sent.is_empty());
    assert_eq!(b.vsp.withheld(), 1);
    b.vsp.release_withheld();
    b.vsp.announce_bus_change();
    b.vsp.poll_channel(&mut b.ch);
    assert_eq!(b.ch.sent.len(), 2);
    assert_eq!(b.ch.sent[0].1, 77);
    assert_eq!(
        (b.ch.sent[1].0, b.ch.sent[1].1, b.ch.sent[1].2[0]),
        (false, 0, 11)
    );
    // A data SRB without its GPA range is a protocol error answered INVALID_REQUEST.
    let p = vstor(
        3,
        &srb_payload(0, &[0x28, 0, 0, 0, 0, 0, 0, 0, 1, 0], 1, 512),
        64,
    );
    let (_, r) = b.send(p, vec![]);
    assert_eq!(r[14], 0x06);
    assert_eq!(b.ch.errors.borrow().len(), 1);
    // Garbage never panics.
    let mut x = 0x1234_5678_9ABC_DEF0u64;
    for i in 0..3000 {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        let len = (x % 80) as usize;
        let mut payload: Vec<u8> = (0..len).map(|k| (x >> (k % 8 * 8)) as u8).collect();
        if len > 12 {
            payload[0] = [3, 7, 9, 10, 8, 13][i % 6];
        }
        let ranges = if x.is_multiple_of(3) {
            vec![(
                (x >> 8) as u32 % 9000,
                (x >> 20) as u32 % 4096,
                vec![x >> 40, 3],
            )]
        } else {
            vec![]
        };
        b.vsp
            .handle(&mut b.ch, &packet(i as u64, payload, ranges), &mut subs);
    }
}
