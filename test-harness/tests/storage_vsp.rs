//! The mock storage VSP behind the real mock VMBus host, driven by hand-built ring packets
//! (vstor packets, EXECUTE_SRB in-band and GPA direct), then by the storvsc protocol layer
//! through a test-only `ScsiTransport` — a preview of the driver glue.

use std::ptr::NonNull;

use storvsc::block::{BlockDevice, DataBuf, ScsiDisk, ScsiTransport};
use storvsc::handshake::{Handshake, Progress};
use storvsc::protocol::{NtStatus, VstorVersion};
use storvsc::request::{LunAddress, ScsiRequest, SrbCompletion};
use storvsc::{StorError, scsi};
use test_harness::guest::{BootedVp, boot_vp};
use test_harness::hv::{HostPreset, MockConfig, MockHypervisor};
use test_harness::storage::{Lun, SCSI_CLASS, StorageVsp, VspConfig};
use test_harness::vmbus::{ChannelState, DeviceOffer, HostRelease, MockVmbusHost};
use vmbus_guest::protocol::{
    CANDIDATE_VERSIONS, GpaRange, GpadlBody, GpadlHeader, Guid, InitiateContact, MessageHeader,
    MessageType, OfferChannel, OpenChannel, RequestOffers, WirePfn, message_connection_id_for,
};
use vmbus_guest::{ChannelError, Hal, RequestTable};
use zerocopy::{FromZeros, IntoBytes};

const INSTANCE: Guid = Guid::from_str_const("00000000-0000-0000-0000-0000000000d1");
/// Ring GPADL pages; each direction gets half: one control page + data pages.
const RING_PAGES: usize = 32;
const HALF: u64 = (RING_PAGES / 2) as u64;
const DATA_SIZE: u32 = ((HALF - 1) * 4096) as u32;

fn u32_at(b: &[u8], at: usize) -> u32 {
    u32::from_le_bytes(b[at..at + 4].try_into().unwrap())
}

/// A hand-played guest with one open storage channel.
struct Rig {
    hv: MockHypervisor,
    host: MockVmbusHost,
    vp: BootedVp,
    conn: u32,
    relid: u32,
    connection_id: u32,
    ring: u64,
    /// Outbound write index and inbound read index.
    w: u32,
    r: u32,
}

impl Rig {
    fn alloc(hv: &MockHypervisor, pages: usize) -> (NonNull<u8>, u64) {
        let hal = hv.hal();
        let p = hal.alloc_pages(pages).expect("alloc");
        (p, hal.virt_to_phys(p).expect("phys"))
    }

    fn post(&mut self, bytes: &[u8]) {
        self.vp
            .hypercalls
            .post_message(self.conn, 1, bytes)
            .expect("post");
    }

    fn recv(&self) -> Option<Vec<u8>> {
        let m = self.vp.synic.take_message(&self.vp.cpu, 2).expect("slot")?;
        Some(m.payload().to_vec())
    }

    fn expect(&mut self, t: MessageType) -> Vec<u8> {
        self.host.step();
        let m = self
            .recv()
            .unwrap_or_else(|| panic!("no message, expected {t}"));
        assert_eq!(MessageType(u32_at(&m, 0)), t);
        m
    }

    /// Boots, negotiates VMBus, takes the storage offer, GPADLs and opens the ring.
    fn new(vsp: StorageVsp) -> Self {
        let hv =
            MockHypervisor::new(MockConfig::new(HostPreset::Ws2022).with_memory_bytes(8 << 20));
        let vp = boot_vp(&hv, 0).expect("boot");
        let mut host = MockVmbusHost::new(hv.clone(), HostRelease::Ws2022);
        let offer = DeviceOffer::new(SCSI_CLASS, INSTANCE);
        host.add_device(offer.clone(), Box::new(vsp.with_offer(offer)));
        let mut rig = Rig {
            hv,
            host,
            vp,
            conn: 1,
            relid: 0,
            connection_id: 0,
            ring: 0,
            w: 0,
            r: 0,
        };
        rig.negotiate();
        rig.post(RequestOffers::new().as_bytes());
        rig.host.step();
        let mut offers = Vec::new();
        while let Some(m) = rig.recv() {
            match MessageType(u32_at(&m, 0)) {
                MessageType::OFFERCHANNEL => {
                    offers.push(zerocopy::FromBytes::read_from_bytes(&m[..]).unwrap())
                }
                MessageType::ALLOFFERS_DELIVERED => break,
                t => panic!("unexpected {t}"),
            }
        }
        let offer: OfferChannel = offers[0];
        rig.relid = offer.relid;
        rig.connection_id = offer.connection_id;
        let (_, gpa) = Self::alloc(&rig.hv, RING_PAGES);
        rig.ring = gpa;
        rig.gpadl(0x5700, gpa, RING_PAGES);
        let mut o = OpenChannel::new_zeroed();
        o.header = MessageHeader::new(MessageType::OPENCHANNEL);
        o.relid = rig.relid;
        o.open_id = rig.relid;
        o.ring_gpadl_handle = 0x5700;
        o.downstream_ring_page_offset = HALF as u32;
        rig.post(o.as_bytes());
        let r = rig.expect(MessageType::OPENCHANNEL_RESULT);
        assert_eq!(u32_at(&r, 16), 0, "open status");
        assert_eq!(rig.host.channel_state(rig.relid), Some(ChannelState::Open));
        rig
    }

    fn negotiate(&mut self) {
        for v in CANDIDATE_VERSIONS {
            let (_, p2c) = Self::alloc(&self.hv, 1);
            let (_, c2p) = Self::alloc(&self.hv, 1);
            let info = if v >= vmbus_guest::protocol::VmbusVersion::V5_0 {
                InitiateContact::target_info(2, 0, 0)
            } else {
                0
            };
            let msg = InitiateContact {
                header: MessageHeader::new(MessageType::INITIATE_CONTACT),
                version_requested: v.0,
                target_vp: 0,
                interrupt_page_or_target_info: info,
                parent_to_child_monitor_page_gpa: p2c,
                child_to_parent_monitor_page_gpa: c2p,
            };
            if self
                .vp
                .hypercalls
                .post_message(message_connection_id_for(v), 1, msg.as_bytes())
                .is_err()
            {
                continue;
            }
            let r = self.expect(MessageType::VERSION_RESPONSE);
            if r[8] != 0 {
                if v >= vmbus_guest::protocol::VmbusVersion::V5_0 {
                    self.conn = u32_at(&r, 12);
                }
                return;
            }
        }
        panic!("no VMBus version");
    }

    fn gpadl(&mut self, handle: u32, gpa: u64, pages: usize) {
        let pfns: Vec<WirePfn> = (0..pages as u64)
            .map(|i| WirePfn::new(gpa / 4096 + i))
            .collect();
        let first = pfns.len().min(26);
        let mut m = GpadlHeader::new(self.relid, handle, (8 + 8 * pages) as u16, 1)
            .as_bytes()
            .to_vec();
        m.extend_from_slice(
            GpaRange {
                byte_count: (pages * 4096) as u32,
                byte_offset: 0,
            }
            .as_bytes(),
        );
        m.extend_from_slice(pfns[..first].as_bytes());
        self.post(&m);
        for chunk in pfns[first..].chunks(28) {
            let mut b = GpadlBody::new(handle).as_bytes().to_vec();
            b.extend_from_slice(chunk.as_bytes());
            self.post(&b);
        }
        let r = self.expect(MessageType::GPADL_CREATED);
        assert_eq!(u32_at(&r, 16), 0, "GPADL status");
    }

    fn write_mem(&self, gpa: u64, data: &[u8]) {
        let p = self.hv.gpa_to_ptr(gpa, data.len()).unwrap();
        // SAFETY: guest RAM of `hv`; the host only touches it inside `step`.
        unsafe { std::ptr::copy_nonoverlapping(data.as_ptr(), p.as_ptr(), data.len()) };
    }

    fn read_mem(&self, gpa: u64, len: usize) -> Vec<u8> {
        let p = self.hv.gpa_to_ptr(gpa, len).unwrap();
        // SAFETY: as in `write_mem`.
        unsafe { std::slice::from_raw_parts(p.as_ptr(), len).to_vec() }
    }

    fn ring_write(&self, base: u64, at: u32, data: &[u8]) {
        let first = ((DATA_SIZE - at) as usize).min(data.len());
        self.write_mem(base + u64::from(at), &data[..first]);
        if first < data.len() {
            self.write_mem(base, &data[first..]);
        }
    }

    fn ring_read(&self, base: u64, at: u32, len: usize) -> Vec<u8> {
        let first = ((DATA_SIZE - at) as usize).min(len);
        let mut v = self.read_mem(base + u64::from(at), first);
        if first < len {
            v.extend(self.read_mem(base, len - first));
        }
        v
    }

    /// Writes a packet: in-band (type 6) or, with `range`, GPA direct (type 9) with one
    /// multi-page range (byte count, byte offset, PFNs). Signals and steps the host.
    fn send(&mut self, tid: u64, payload: &[u8], range: Option<(u32, u32, &[u64])>) {
        let mut header = Vec::new();
        if let Some((count, offset, pfns)) = range {
            header.extend_from_slice(&0u32.to_le_bytes());
            header.extend_from_slice(&1u32.to_le_bytes());
            header.extend_from_slice(&count.to_le_bytes());
            header.extend_from_slice(&offset.to_le_bytes());
            for p in pfns {
                header.extend_from_slice(&p.to_le_bytes());
            }
        }
        let off = 16 + header.len();
        let len = (off + payload.len()).next_multiple_of(8);
        let ty: u16 = if range.is_some() { 9 } else { 6 };
        let mut p = Vec::new();
        p.extend_from_slice(&ty.to_le_bytes());
        p.extend_from_slice(&((off / 8) as u16).to_le_bytes());
        p.extend_from_slice(&((len / 8) as u16).to_le_bytes());
        p.extend_from_slice(&1u16.to_le_bytes());
        p.extend_from_slice(&tid.to_le_bytes());
        p.extend_from_slice(&header);
        p.extend_from_slice(payload);
        p.resize(len, 0);
        p.extend_from_slice(&(u64::from(self.w) << 32).to_le_bytes());
        self.ring_write(self.ring + 4096, self.w, &p);
        self.w = (self.w + p.len() as u32) % DATA_SIZE;
        self.write_mem(self.ring, &self.w.to_le_bytes());
        self.vp
            .hypercalls
            .signal_event(self.connection_id, 0)
            .unwrap();
        self.host.step();
    }

    /// Takes the next inbound packet: (type, tid, payload).
    fn take(&mut self) -> Option<(u16, u64, Vec<u8>)> {
        let in_ctl = self.ring + HALF * 4096;
        let hw = u32_at(&self.read_mem(in_ctl, 4), 0);
        if hw == self.r {
            return None;
        }
        let d = self.ring_read(in_ctl + 4096, self.r, 16);
        let ty = u16::from_le_bytes([d[0], d[1]]);
        let off = usize::from(u16::from_le_bytes([d[2], d[3]])) * 8;
        let len = usize::from(u16::from_le_bytes([d[4], d[5]])) * 8;
        let tid = u64::from_le_bytes(d[8..16].try_into().unwrap());
        let all = self.ring_read(in_ctl + 4096, self.r, len + 8);
        self.r = (self.r + len as u32 + 8) % DATA_SIZE;
        self.write_mem(in_ctl + 4, &self.r.to_le_bytes());
        Some((ty, tid, all[off..len].to_vec()))
    }

    /// Sends a vstor packet and returns the completion's vstor bytes.
    fn call(&mut self, tid: u64, payload: &[u8], range: Option<(u32, u32, &[u64])>) -> Vec<u8> {
        self.send(tid, payload, range);
        let (ty, t, p) = self.take().expect("completion");
        assert_eq!((ty, t), (11, tid));
        p
    }

    fn assert_clean(&self) {
        assert_eq!(self.host.protocol_errors(), Vec::<String>::new());
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

fn srb(lun: u8, cdb: &[u8], data_in: u8, len: u32) -> Vec<u8> {
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

fn status(p: &[u8]) -> u32 {
    u32_at(p, 8)
}

#[test]
fn hand_built_handshake_and_io_through_the_host() {
    let vsp = StorageVsp::new(VspConfig::openvmm());
    vsp.add_lun(0, Lun::memory(512, 2048));
    let mut rig = Rig::new(vsp.clone());
    assert_eq!(status(&rig.call(1, &vstor(7, &[], 64), None)), 0);
    let c = rig.call(2, &vstor(9, &0x0602u16.to_le_bytes(), 64), None);
    assert_eq!(status(&c), NtStatus::REVISION_MISMATCH.0);
    assert_eq!(c.len(), 64);
    assert_eq!(
        status(&rig.call(3, &vstor(9, &0x0600u16.to_le_bytes(), 64), None)),
        0
    );
    let props = rig.call(4, &vstor(10, &[], 64), None);
    assert_eq!(u32_at(&props, 24), 0x40000);
    assert_eq!(status(&rig.call(5, &vstor(8, &[], 64), None)), 0);

    // WRITE(10) of 3 blocks from a buffer 100 bytes into a page (spans 2 pages).
    let (_, buf) = Rig::alloc(&rig.hv, 4);
    let data: Vec<u8> = (0..1536u32).map(|i| (i * 13 % 256) as u8).collect();
    rig.write_mem(buf + 100, &data);
    let pfns = [buf / 4096, buf / 4096 + 1];
    let c = rig.call(
        6,
        &vstor(3, &srb(0, &[0x2A, 0, 0, 0, 0, 9, 0, 0, 3, 0], 0, 1536), 64),
        Some((1536, 100, &pfns)),
    );
    assert_eq!((status(&c), c[14], u32_at(&c, 24)), (0, 1, 1536));
    assert_eq!(vsp.read_lun(0, 9 * 512, 1536).unwrap(), data);
    // READ(16) it back into another page-crossing spot.
    let mut r16 = [0u8; 16];
    r16[0] = 0x88;
    r16[9] = 9;
    r16[13] = 3;
    let pfns = [buf / 4096 + 2, buf / 4096 + 3];
    let c = rig.call(
        7,
        &vstor(3, &srb(0, &r16, 1, 1536), 64),
        Some((1536, 3000, &pfns)),
    );
    assert_eq!((c[14], u32_at(&c, 24)), (1, 1536));
    assert_eq!(rig.read_mem(buf + 2 * 4096 + 3000, 1536), data);
    // Past the end: CHECK CONDITION, ILLEGAL REQUEST 0x21/0x00, autosense flag.
    let c = rig.call(
        8,
        &vstor(
            3,
            &srb(0, &[0x28, 0, 0, 0, 0x07, 0xFF, 0, 0, 3, 0], 1, 1536),
            64,
        ),
        Some((1536, 3000, &pfns)),
    );
    assert_eq!((c[14], c[15]), (0x84, 2));
    let sense = scsi::SenseData::parse(&c[28..28 + usize::from(c[21])]).unwrap();
    assert_eq!(
        (sense.key, sense.code()),
        (scsi::SenseKey::ILLEGAL_REQUEST, scsi::asc::LBA_OUT_OF_RANGE)
    );
    rig.assert_clean();
}

#[test]
fn pre_win8_host_gets_48_byte_packets() {
    let vsp = StorageVsp::new(VspConfig {
        accepted_versions: vec![VstorVersion::WIN7, VstorVersion::WIN6],
        ..VspConfig::default()
    });
    vsp.add_lun(0, Lun::memory(4096, 16));
    let mut rig = Rig::new(vsp.clone());
    rig.call(1, &vstor(7, &[], 48), None);
    assert_eq!(
        status(&rig.call(2, &vstor(9, &0x0501u16.to_le_bytes(), 64), None)),
        0xC000_0059
    );
    let c = rig.call(3, &vstor(9, &0x0402u16.to_le_bytes(), 48), None);
    assert_eq!(status(&c), 0);
    // Completions are padded to the ring's 8-byte multiple of the 48-byte packet.
    let c = rig.call(4, &vstor(10, &[], 48), None);
    assert_eq!(c.len(), 48);
    rig.call(5, &vstor(8, &[], 48), None);
    let c = rig.call(6, &vstor(3, &srb(0, &[0; 6], 2, 0), 48), None);
    assert_eq!((c.len(), c[14]), (48, 1));
    assert_eq!(vsp.negotiated_version(), Some(VstorVersion::WIN7));
    rig.assert_clean();
}

#[test]
fn withheld_completions_then_rescind_mid_io() {
    let vsp = StorageVsp::new(VspConfig::default());
    vsp.add_lun(0, Lun::memory(512, 64));
    let mut rig = Rig::new(vsp.clone());
    for (tid, op, v) in [(1, 7, 0u16), (2, 9, 0x0602), (3, 10, 0), (4, 8, 0)] {
        assert_eq!(
            status(&rig.call(tid, &vstor(op, &v.to_le_bytes(), 64), None)),
            0
        );
    }
    vsp.withhold_completions(true);
    rig.send(10, &vstor(3, &srb(0, &[0; 6], 2, 0), 64), None);
    rig.send(
        11,
        &vstor(3, &srb(0, &[0x35, 0, 0, 0, 0, 0, 0, 0, 0, 0], 2, 0), 64),
        None,
    );
    assert!(rig.take().is_none());
    assert_eq!(vsp.withheld(), 2);
    // Released completions arrive in order on the next host step.
    vsp.release_withheld();
    rig.host.step();
    assert_eq!(rig.take().map(|p| p.1), Some(10));
    assert_eq!(rig.take().map(|p| p.1), Some(11));
    // Withhold again and rescind: the completion never comes, the guest gets RESCIND.
    vsp.withhold_completions(true);
    rig.send(12, &vstor(3, &srb(0, &[0; 6], 2, 0), 64), None);
    let relid = rig.relid;
    rig.host.rescind(relid);
    let m = rig.recv().expect("rescind message");
    assert_eq!(
        MessageType(u32_at(&m, 0)),
        MessageType::RESCIND_CHANNELOFFER
    );
    assert!(rig.take().is_none());
    assert_eq!(vsp.withheld(), 0);
    assert_eq!(vsp.closes(), 1);
    rig.assert_clean();
}

#[test]
fn enumerate_bus_is_unsolicited_inband_with_id_zero() {
    let vsp = StorageVsp::new(VspConfig::default());
    vsp.add_lun(0, Lun::memory(512, 64));
    let mut rig = Rig::new(vsp.clone());
    for (tid, op, v) in [(1, 7, 0u16), (2, 9, 0x0602), (3, 10, 0), (4, 8, 0)] {
        rig.call(tid, &vstor(op, &v.to_le_bytes(), 64), None);
    }
    vsp.add_lun(3, Lun::memory(4096, 8));
    vsp.announce_bus_change();
    rig.host.step();
    let (ty, tid, p) = rig.take().expect("ENUMERATE_BUS");
    assert_eq!((ty, tid, u32_at(&p, 0)), (6, 0, 11));
    rig.assert_clean();
}

/// A test-only transport: what the VMBus glue will do, over the hand-played rig.
struct RigTransport<'a> {
    rig: &'a mut Rig,
    version: VstorVersion,
    table: RequestTable<(), 8>,
    bounce: u64,
    bounce_pages: usize,
}

impl ScsiTransport for RigTransport<'_> {
    fn execute(
        &mut self,
        request: &ScsiRequest,
        data: DataBuf<'_>,
    ) -> Result<SrbCompletion, StorError> {
        let len = data.len();
        if len > self.bounce_pages * 4096 - 512 {
            return Err(StorError::InvalidArgument(
                "transfer larger than the bounce buffer",
            ));
        }
        // Start at a sub-page offset to exercise the first-page offset of the range.
        let offset = 512u32;
        if let DataBuf::ToDevice(b) = &data {
            self.rig.write_mem(self.bounce + u64::from(offset), b);
        }
        let mut pkt = [0u8; 64];
        let n = request.write_packet(self.version, &mut pkt)?;
        let tid = self
            .table
            .insert((), false)
            .map_err(|_| StorError::TableFull)?
            .transaction_id();
        if len == 0 {
            self.rig.send(tid, &pkt[..n], None);
        } else {
            let pages = storvsc::request::pages_spanned(offset as usize, len);
            let pfns: Vec<u64> = (0..pages as u64).map(|i| self.bounce / 4096 + i).collect();
            self.rig
                .send(tid, &pkt[..n], Some((len as u32, offset, &pfns)));
        }
        let Some((ty, got, payload)) = self.rig.take() else {
            self.table.fail_all(ChannelError::Timeout);
            while self.table.take_failed().is_some() {}
            return Err(StorError::Timeout);
        };
        if ty != 11 {
            return Err(StorError::UnexpectedCompletion);
        }
        self.table
            .complete(got)
            .ok_or(StorError::UnknownTransaction(got))?;
        let c = SrbCompletion::parse(&payload)?;
        if let DataBuf::FromDevice(b) = data {
            let n = (c.data_transfer_length as usize).min(b.len());
            b[..n].copy_from_slice(&self.rig.read_mem(self.bounce + u64::from(offset), n));
        }
        Ok(c)
    }
}

fn bring_up(rig: &mut Rig) -> storvsc::handshake::Negotiated {
    bring_up_with(rig, Handshake::default())
}

fn bring_up_with(rig: &mut Rig, mut hs: Handshake<'_>) -> storvsc::handshake::Negotiated {
    let mut buf = [0u8; 64];
    let mut tid = 100;
    loop {
        let n = hs.next_request(&mut buf).expect("request");
        tid += 1;
        let c = rig.call(tid, &buf[..n], None);
        if let Progress::Done(neg) = hs.on_completion(&c).expect("handshake") {
            return neg;
        }
    }
}

#[test]
fn storvsc_protocol_layer_against_the_mock_vsp() {
    for (config, bs, expect) in [
        (VspConfig::default(), 512u32, VstorVersion::WIN10),
        (VspConfig::openvmm(), 4096, VstorVersion::WIN8_1),
    ] {
        let vsp = StorageVsp::new(VspConfig {
            max_transfer_bytes: 0x4000,
            ..config
        });
        vsp.add_lun(0, Lun::memory(bs, 512));
        vsp.add_lun(2, Lun::memory(512, 64));
        let mut rig = Rig::new(vsp.clone());
        let neg = bring_up(&mut rig);
        assert_eq!(neg.version, expect);
        assert_eq!(neg.max_transfer_bytes, 0x4000);
        let (_, bounce) = Rig::alloc(&rig.hv, 20);
        let mut t = RigTransport {
            rig: &mut rig,
            version: neg.version,
            table: RequestTable::new(),
            bounce,
            bounce_pages: 20,
        };
        let mut luns = Vec::new();
        assert_eq!(
            storvsc::block::report_luns(&mut t, LunAddress::lun(0), |l| luns.push(l)),
            Ok(2)
        );
        assert_eq!(luns, [0, 2]);
        vsp.unit_attention(0, 0x29, 0);
        let mut disk =
            ScsiDisk::open(&mut t, LunAddress::lun(0), neg.max_transfer_bytes).expect("open");
        assert_eq!((disk.block_size(), disk.num_blocks()), (bs, 512));
        assert_eq!(&disk.inquiry().product, b"Virtual Disk    ");
        assert!(disk.unmap_support().is_some());
        let data: Vec<u8> = (0..bs as usize * 10).map(|i| (i % 241) as u8).collect();
        disk.write_blocks(7, &data).unwrap();
        let mut back = vec![0u8; data.len()];
        disk.read_blocks(7, &mut back).unwrap();
        assert_eq!(back, data);
        disk.flush().unwrap();
        disk.discard(7, 2).unwrap();
        assert!(
            vsp.read_lun(0, 7 * u64::from(bs), 2 * bs as usize)
                .unwrap()
                .iter()
                .all(|&b| b == 0)
        );
        // Resize: the next I/O sees CAPACITY DATA HAS CHANGED, rescans and succeeds.
        vsp.resize_lun(0, 1024).unwrap();
        // The guest only learns of it through the unit attention on its next command.
        disk.read_blocks(0, &mut back[..bs as usize]).unwrap();
        disk.read_blocks(1000, &mut back[..bs as usize]).unwrap();
        assert_eq!(disk.num_blocks(), 1024);
        // Bus reset: retried transparently.
        vsp.bus_reset();
        disk.read_blocks(7, &mut back).unwrap();
        assert!(matches!(
            disk.read_blocks(1024, &mut back[..bs as usize]),
            Err(StorError::OutOfRange { .. })
        ));
        // The I/O was split by the 16 KiB limit.
        let reads = vsp.opcodes().iter().filter(|&&o| o == 0x28).count();
        assert!(reads >= (10 * bs as usize).div_ceil(0x4000));
        let _ = disk.into_transport();
        rig.assert_clean();
    }
}

#[test]
fn create_sub_channels_offers_them() {
    let vsp = StorageVsp::new(VspConfig::default());
    vsp.add_lun(0, Lun::memory(512, 64));
    let mut rig = Rig::new(vsp.clone());
    for (tid, op, v) in [(1, 7, 0u16), (2, 9, 0x0602), (3, 10, 0), (4, 8, 0)] {
        rig.call(tid, &vstor(op, &v.to_le_bytes(), 64), None);
    }
    assert_eq!(
        status(&rig.call(5, &vstor(13, &5u16.to_le_bytes(), 64), None)),
        NtStatus::INVALID_PARAMETER.0
    );
    assert_eq!(
        status(&rig.call(6, &vstor(13, &2u16.to_le_bytes(), 64), None)),
        0
    );
    rig.host.step();
    let mut subs = Vec::new();
    while let Some(m) = rig.recv() {
        if MessageType(u32_at(&m, 0)) == MessageType::OFFERCHANNEL {
            let o: OfferChannel = zerocopy::FromBytes::read_from_bytes(&m[..]).unwrap();
            assert_eq!(o.interface_type, SCSI_CLASS);
            assert_eq!(o.interface_instance, INSTANCE);
            subs.push(o.subchannel_index);
        }
    }
    assert_eq!(subs, [1, 2]);
    assert_eq!(vsp.sub_channels_created(), 2);
    rig.assert_clean();
}

#[test]
fn file_backed_lun() {
    let path = std::env::temp_dir().join(format!("storvsc-vsp-{}.img", std::process::id()));
    let file = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(true)
        .open(&path)
        .unwrap();
    file.set_len(64 * 4096).unwrap();
    let vsp = StorageVsp::new(VspConfig::default());
    vsp.add_lun(0, Lun::file(file, 4096).unwrap());
    let mut rig = Rig::new(vsp.clone());
    let neg = bring_up(&mut rig);
    let (_, bounce) = Rig::alloc(&rig.hv, 4);
    let mut t = RigTransport {
        rig: &mut rig,
        version: neg.version,
        table: RequestTable::new(),
        bounce,
        bounce_pages: 4,
    };
    let mut disk = ScsiDisk::open(&mut t, LunAddress::lun(0), neg.max_transfer_bytes).unwrap();
    assert_eq!((disk.block_size(), disk.num_blocks()), (4096, 64));
    let data = vec![0xA5u8; 8192];
    disk.write_blocks(62, &data).unwrap();
    disk.flush().unwrap();
    let _ = disk.into_transport();
    let on_disk = std::fs::read(&path).unwrap();
    std::fs::remove_file(&path).unwrap();
    assert_eq!(&on_disk[62 * 4096..], &data[..]);
    rig.assert_clean();
}

#[test]
fn storvsc_handshake_falls_back_to_a_win7_host() {
    for legacy in [false, true] {
        let vsp = StorageVsp::new(VspConfig {
            accepted_versions: vec![VstorVersion::WIN7, VstorVersion::WIN6],
            max_sub_channels: 0,
            ..VspConfig::default()
        });
        vsp.add_lun(0, Lun::memory(512, 32));
        let mut rig = Rig::new(vsp.clone());
        let hs = if legacy {
            Handshake::default().legacy_sizing()
        } else {
            Handshake::default()
        };
        let neg = bring_up_with(&mut rig, hs);
        assert_eq!(
            (neg.version, neg.packet_size(), neg.sub_channels_allowed()),
            (VstorVersion::WIN7, 48, 0)
        );
        let (_, bounce) = Rig::alloc(&rig.hv, 4);
        let mut t = RigTransport {
            rig: &mut rig,
            version: neg.version,
            table: RequestTable::new(),
            bounce,
            bounce_pages: 4,
        };
        let mut disk = ScsiDisk::open(&mut t, LunAddress::lun(0), neg.max_transfer_bytes).unwrap();
        disk.write_blocks(31, &[7u8; 512]).unwrap();
        let _ = disk.into_transport();
        assert_eq!(vsp.read_lun(0, 31 * 512, 512).unwrap(), vec![7u8; 512]);
        rig.assert_clean();
    }
}

impl Rig {
    /// The guest frees `pages` pages at `gpa` through the HAL.
    fn free(&self, gpa: u64, pages: usize) {
        let p = self.hv.gpa_to_ptr(gpa, pages * 4096).expect("RAM");
        // SAFETY: `p` starts a live `pages`-page allocation from this HAL and the test keeps
        // no reference into it.
        unsafe { self.hv.hal().free_pages(p, pages) };
    }
}

#[test]
fn freeing_the_buffer_of_a_withheld_read_is_recorded() {
    let vsp = StorageVsp::new(VspConfig::default());
    vsp.add_lun(0, Lun::memory(512, 64));
    vsp.write_lun(0, 0, &[0x5A; 512]);
    let mut rig = Rig::new(vsp.clone());
    for (tid, op, v) in [(1, 7, 0u16), (2, 9, 0x0602), (3, 10, 0), (4, 8, 0)] {
        assert_eq!(
            status(&rig.call(tid, &vstor(op, &v.to_le_bytes(), 64), None)),
            0
        );
    }
    let read10 = [0x28, 0, 0, 0, 0, 0, 0, 0, 1, 0];
    let (_, a) = Rig::alloc(&rig.hv, 1);
    let (_, b) = Rig::alloc(&rig.hv, 1);
    vsp.withhold_completions(true);
    rig.send(
        20,
        &vstor(3, &srb(0, &read10, 1, 512), 64),
        Some((512, 0, &[a / 4096])),
    );
    rig.send(
        21,
        &vstor(3, &srb(0, &read10, 1, 512), 64),
        Some((512, 0, &[b / 4096])),
    );
    assert_eq!(vsp.withheld(), 2);
    assert_eq!(rig.host.requests_in_flight(rig.relid), [20, 21]);
    // The guest gives up on request 20 and frees its buffer while the host still holds it.
    rig.free(a, 1);
    let v = rig.host.freed_while_mapped();
    assert_eq!(v.len(), 1, "{v:?}");
    assert!(v[0].owner.contains("GPA-direct request 0x14"), "{}", v[0]);
    assert_eq!(rig.host.protocol_errors().len(), 1);
    // Once the completions are released, freeing the other buffer is fine.
    vsp.release_withheld();
    rig.host.step();
    assert_eq!(rig.take().map(|p| p.1), Some(20));
    assert_eq!(rig.take().map(|p| p.1), Some(21));
    assert_eq!(rig.host.requests_in_flight(rig.relid), Vec::<u64>::new());
    assert_eq!(rig.read_mem(b, 512), [0x5A; 512]);
    rig.free(b, 1);
    assert_eq!(rig.host.freed_while_mapped().len(), 1);
    assert_eq!(rig.host.protocol_errors().len(), 1);
}
