//! The storage host (VSTOR, devices §3, §7.2) for the storvsc target: answers the
//! initialisation handshake, CREATE_SUB_CHANNELS (with sub-channel offers) and EXECUTE_SRB
//! against the [`Disk`] model, moving data by DMA through the pages the GPA-direct packet
//! names, each answer correct or hostile as the input's decision byte says:
//!
//! | decision | answer |
//! |---|---|
//! | < 0xB0 (and an exhausted input) | correct |
//! | else by `% 11` | 0 held (answered when the target releases it), 1 failing NTSTATUS, 2 another operation, 3 a short packet, 4 twice, 5 a stale or impossible id first, 6 a lying transfer length, 7 garbage data-in, 8 an SRB error with arbitrary sense, 9 an unsolicited message first, 10 arbitrary bytes |
//!
//! Every guest packet is checked: in-band or GPA-direct with a completion requested, a known
//! operation, the SRB consistent with its data range.

use crate::dev::{Devices, GuestPacket, HostPacket, Step};
use crate::scsi::Disk;
use crate::{Input, trace};
use storvsc::protocol::{
    ChannelProperties, Operation, ProtocolVersion, REQUEST_COMPLETION_FLAG, VstorPacket,
    VstorVersion, payload_as, set_payload,
};
use vmbus_guest::protocol::DeviceClass;
use zerocopy::{FromZeros, IntoBytes};

/// A request the host read and answers later.
#[derive(Clone, Debug)]
pub struct Held {
    /// The guest packet.
    pub packet: GuestPacket,
}

/// The storage host.
pub struct Vstor<'a> {
    /// Rings and DMA.
    pub dev: Devices,
    /// The decision tape (shared with the target's operations).
    pub inp: Input<'a>,
    /// LUN 0.
    pub disk: Disk,
    /// Highest VSTOR version accepted.
    pub host_max: u16,
    /// QUERY_PROPERTIES answer: sub-channels allowed, flags, maximum transfer bytes.
    pub props: (u16, u32, u32),
    /// The version the host accepted.
    pub version: Option<VstorVersion>,
    /// Relid the next sub-channel offer gets.
    pub next_relid: u32,
    /// Requests held for later.
    pub held: Vec<Held>,
    /// The host put data other than the disk's in a buffer: data checks are off.
    pub corrupted: bool,
    /// Sub-channels offered.
    pub offered: u16,
    /// EXECUTE_SRBs answered.
    pub srbs: u64,
    /// The host answered with arbitrary bytes: what the guest negotiated is unknown.
    pub forged: bool,
}

const STATUS_REVISION_MISMATCH: u32 = 0xC000_0059;

impl<'a> Vstor<'a> {
    /// A host for `disk`.
    pub fn new(dev: Devices, inp: Input<'a>, disk: Disk) -> Self {
        Self {
            dev,
            inp,
            disk,
            host_max: 0x0602,
            props: (0, 0, 0),
            version: None,
            next_relid: 2,
            held: Vec::new(),
            corrupted: false,
            offered: 0,
            srbs: 0,
            forged: false,
        }
    }

    fn packet_size(&self) -> usize {
        self.version.map_or(64, |v| v.packet_size())
    }

    /// A completion (COMPLETE_IO) echoing `req` with `status` and, for an SRB, its outcome.
    fn completion(&self, req: &VstorPacket, status: u32) -> VstorPacket {
        let mut p = *req;
        p.operation = Operation::COMPLETE_IO.0.into();
        p.flags = 0.into();
        p.status = status.into();
        p
    }

    fn send(&mut self, relid: u32, tid: u64, p: &VstorPacket) {
        let n = self.packet_size();
        let payload = p.as_bytes()[..n].to_vec();
        self.dev
            .send(relid, HostPacket::Completion { tid, payload });
    }

    /// Answers `g` now, as decision `d` says.
    fn answer(&mut self, g: &GuestPacket, d: u8) {
        let Some(req) = VstorPacket::parse(&g.payload) else {
            return;
        };
        let op = req.op();
        let hostile = d >= 0xB0;
        let k = d % 11;
        trace!(
            "  vstor {}: op {} tid {:#x}, {}",
            g.relid,
            op.0,
            g.tid,
            if hostile { "hostile" } else { "correct" }
        );
        if hostile {
            match k {
                0 => {
                    self.held.push(Held { packet: g.clone() });
                    return;
                }
                3 => {
                    let payload = self.inp.bytes(47);
                    self.dev.send(
                        g.relid,
                        HostPacket::Completion {
                            tid: g.tid,
                            payload,
                        },
                    );
                    return;
                }
                5 => {
                    let stale = match self.inp.u8() % 3 {
                        0 => g.tid & 0xFFFF_FFFF,
                        1 => g.tid | 0xFFFF_0000,
                        _ => g.tid.wrapping_sub(1 << 32),
                    };
                    let p = self.completion(&req, 0);
                    self.send(g.relid, stale, &p);
                }
                9 => {
                    let mut u = VstorPacket::new_zeroed();
                    u.operation = [2u32, 11, 14, self.inp.u32()][self.inp.below(4)].into();
                    let tid = self.inp.u64();
                    let payload = u.as_bytes()[..self.packet_size()].to_vec();
                    self.dev.send(
                        g.relid,
                        HostPacket::InBand {
                            tid,
                            completion: false,
                            payload,
                        },
                    );
                }
                10 => {
                    self.forged = true;
                    let payload = self.inp.fill(64);
                    self.dev.send(
                        g.relid,
                        HostPacket::Completion {
                            tid: g.tid,
                            payload,
                        },
                    );
                    return;
                }
                _ => {}
            }
        }
        let mut status = 0;
        let mut reply = self.completion(&req, 0);
        match op {
            Operation::BEGIN_INITIALIZATION | Operation::END_INITIALIZATION => {}
            Operation::QUERY_PROTOCOL_VERSION => {
                let v: ProtocolVersion = payload_as(&req.payload);
                let v = v.major_minor.get();
                let known = VstorVersion::ALL_NEWEST_FIRST.iter().any(|k| k.0 == v);
                if known && v <= self.host_max {
                    self.version = Some(VstorVersion(v));
                } else {
                    status = STATUS_REVISION_MISMATCH;
                }
            }
            Operation::QUERY_PROPERTIES => {
                let (count, flags, max) = self.props;
                set_payload(
                    &mut reply.payload,
                    &ChannelProperties {
                        max_channel_count: count.into(),
                        flags: flags.into(),
                        max_transfer_bytes: max.into(),
                        ..Default::default()
                    },
                );
            }
            Operation::CREATE_SUB_CHANNELS => {
                let n = u16::from_le_bytes([req.payload[0], req.payload[1]]);
                if g.trusted && !self.forged {
                    assert!(
                        n >= 1 && n <= self.props.0,
                        "CREATE_SUB_CHANNELS for {n}, host allows {}",
                        self.props.0
                    );
                    assert!(
                        self.version.is_some_and(|v| v.is_win8_or_later()),
                        "CREATE_SUB_CHANNELS before WIN8"
                    );
                }
                let offers = n.min(8 - self.offered.min(8));
                for i in 0..offers {
                    let relid = self.next_relid;
                    self.next_relid += 1;
                    self.offered += 1;
                    let o = crate::dev::offer(DeviceClass::Scsi, relid, 0, 1 + i, 0);
                    self.dev.world.borrow_mut().send(o);
                }
            }
            Operation::EXECUTE_SRB => {
                reply = self.execute(g, &req, hostile.then_some(k));
                self.srbs += 1;
            }
            // (Bytes the host itself wrote into the ring may read as anything.)
            _ if !g.trusted => return,
            other => panic!("guest sent VSTOR operation {}", other.0),
        }
        if hostile {
            match k {
                1 => status = self.inp.u32() | 1,
                2 => reply.operation = (self.inp.u32() | 2).into(),
                _ => {}
            }
        }
        reply.status = status.into();
        self.send(g.relid, g.tid, &reply);
        if hostile && k == 4 {
            self.send(g.relid, g.tid, &reply);
        }
    }

    /// Runs an EXECUTE_SRB against the disk (DMA in and out) and returns its completion.
    fn execute(&mut self, g: &GuestPacket, req: &VstorPacket, hostile: Option<u8>) -> VstorPacket {
        let srb = req.srb();
        let len = srb.data_transfer_length.get() as usize;
        let cdb_len = usize::from(srb.cdb_length);
        if g.trusted {
            assert!((1..=16).contains(&cdb_len), "CDB length {cdb_len}");
            let named: usize = g.ranges.iter().map(|r| r.1 as usize).sum();
            assert_eq!(
                named, len,
                "SRB data_transfer_length and the GPA range disagree"
            );
            if let Some(v) = self.version {
                assert_eq!(srb.length.get(), v.srb_length(), "SRB length field");
            }
        }
        let cdb = &srb.cdb_or_sense[..cdb_len.min(16)];
        let out = if srb.data_in == 0 {
            self.dev.dma_read(&g.ranges, len)
        } else {
            Vec::new()
        };
        let mut o = self.disk.execute(srb.lun, cdb, &out, len);
        let mut transferred = if srb.data_in == 0 && o.srb_status == 1 {
            len
        } else {
            o.data.len()
        };
        if hostile == Some(7) {
            o.data = self.inp.fill(len.min(4096));
            transferred = o.data.len();
            self.corrupted = true;
        }
        if srb.data_in == 1 && !o.data.is_empty() {
            self.dev.dma_write(&g.ranges, &o.data);
        }
        let mut s = srb;
        s.srb_status = o.srb_status;
        s.scsi_status = o.scsi_status;
        s.cdb_or_sense = [0; 20];
        s.sense_info_length = 0;
        if let Some(b) = o.sense_bytes() {
            s.srb_status |= 0x80;
            s.cdb_or_sense[..18].copy_from_slice(&b);
            s.sense_info_length = 18;
        }
        s.data_transfer_length = (transferred as u32).into();
        match hostile {
            Some(6) => s.data_transfer_length = self.inp.u32().into(),
            Some(8) => {
                s.srb_status = self.inp.u8();
                s.scsi_status = self.inp.u8();
                s.sense_info_length = self.inp.u8();
                let sense = self.inp.fill(20);
                s.cdb_or_sense.copy_from_slice(&sense);
            }
            _ => {}
        }
        let mut p = *req;
        p.set_srb(&s);
        self.completion(&p, 0)
    }

    /// Answers held request `i` now (correctly), if the host still serves its channel.
    pub fn release(&mut self, i: usize) {
        if i >= self.held.len() {
            return;
        }
        let h = self.held.remove(i);
        let g = h.packet;
        if !self.dev.serves(g.relid) || (!g.ranges.is_empty() && !self.dev.holds(g.relid, g.tid)) {
            return;
        }
        self.answer(&g, 0);
    }

    fn on_packet(&mut self, g: GuestPacket) {
        if g.trusted {
            assert!(
                g.packet_type == 6 || g.packet_type == 9,
                "storvsc sent packet type {}",
                g.packet_type
            );
            assert!(g.completion_requested, "storvsc request without completion");
            let p = VstorPacket::parse(&g.payload).expect("VSTOR packet of at least 48 bytes");
            assert_eq!(
                p.flags.get() & REQUEST_COMPLETION_FLAG,
                REQUEST_COMPLETION_FLAG
            );
        }
        let d = self.inp.u8();
        self.answer(&g, d);
    }
}

impl Step for Vstor<'_> {
    fn step(&mut self) {
        for relid in self.dev.relids() {
            while let Some(g) = self.dev.recv(relid) {
                self.on_packet(g);
            }
        }
        self.dev.flush_all();
    }
}
