//! Mock storage VSP: the host side of the synthetic SCSI controller (devices §3, §7.2, §7.7),
//! a [`DeviceModel`] for the mock VMBus host.
//!
//! Written from the protocol document, independently of the guest's handshake and request
//! code; only the wire structs and plain numbers of `storvsc::protocol` are shared. The
//! version-dependent rules (packet size, SRB length, which versions exist) are the VSP's own,
//! in `vstor.rs`. It answers like a Hyper-V
//! virtual disk: INQUIRY "Msft" / "Virtual Disk", READ CAPACITY, READ/WRITE(10/16) through the
//! GPA-direct range, SYNCHRONIZE CACHE, UNMAP, REPORT LUNS, TEST UNIT READY, MODE SENSE, with
//! sense data for bad LBAs and unknown opcodes. Completions are padded to the negotiated packet
//! size (48 bytes for WIN6/WIN7, 64 for WIN8+).
//!
//! [`StorageVsp`] is a cheap clone sharing one controller state, so a test keeps a clone to
//! inject faults (error status, bus reset, unit attention, withheld completions, resize, hot
//! add/remove) after handing another to the host.

mod lun;
mod scsi;
mod vstor;

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use storvsc::protocol::{
    ChannelProperties, NtStatus, Operation, ProtocolVersion,
    STORAGE_CHANNEL_SUPPORTS_MULTI_CHANNEL, SubChannelCount, VmscsiRequest, VstorVersion,
};
use zerocopy::IntoBytes;
use zerocopy::byteorder::little_endian::{U16, U32};

use crate::vmbus::{
    DeviceModel, DeviceOffer, HostChannel, HostPacket, HostRingError, PACKET_TYPE_COMPLETION,
    PACKET_TYPE_GPA_DIRECT, PACKET_TYPE_INBAND,
};

pub use lun::{Backing, Lun};
pub use scsi::{FixedSense, ScsiOutcome};

/// Storage controller class GUID (SCSI), devices §1.1 (a literal here, not the guest's table).
pub const SCSI_CLASS: vmbus_guest::protocol::Guid =
    vmbus_guest::protocol::Guid::from_str_const("ba6163d9-04a1-4d29-b605-72e2ffb1dc7f");

/// OpenVMM's per-request limit, reported in QUERY_PROPERTIES.
pub const DEFAULT_MAX_TRANSFER_BYTES: u32 = 0x40000;

/// What the VSP needs from a channel; implemented by [`HostChannel`] and by test fakes.
pub trait VspChannel {
    /// Sends a completion (type 11) for `transaction_id`.
    fn send_completion(&mut self, transaction_id: u64, payload: &[u8])
    -> Result<(), HostRingError>;
    /// Sends an in-band packet (unsolicited messages use transaction id 0).
    fn send_inband(&mut self, payload: &[u8], transaction_id: u64) -> Result<(), HostRingError>;
    /// Reads guest memory.
    fn read_gpa(&self, gpa: u64, buf: &mut [u8]) -> Result<(), HostRingError>;
    /// Writes guest memory.
    fn write_gpa(&self, gpa: u64, data: &[u8]) -> Result<(), HostRingError>;
    /// Records a guest protocol violation.
    fn protocol_error(&self, reason: String);
}

impl VspChannel for HostChannel {
    fn send_completion(
        &mut self,
        transaction_id: u64,
        payload: &[u8],
    ) -> Result<(), HostRingError> {
        HostChannel::send_completion(self, transaction_id, payload)
    }
    fn send_inband(&mut self, payload: &[u8], transaction_id: u64) -> Result<(), HostRingError> {
        HostChannel::send_inband(self, payload, transaction_id, false)
    }
    fn read_gpa(&self, gpa: u64, buf: &mut [u8]) -> Result<(), HostRingError> {
        HostChannel::read_gpa(self, gpa, buf)
    }
    fn write_gpa(&self, gpa: u64, data: &[u8]) -> Result<(), HostRingError> {
        HostChannel::write_gpa(self, gpa, data)
    }
    fn protocol_error(&self, reason: String) {
        HostChannel::protocol_error(self, reason)
    }
}

/// Controller configuration.
#[derive(Clone, Debug)]
pub struct VspConfig {
    /// Versions the host accepts; others get STATUS_REVISION_MISMATCH.
    pub accepted_versions: Vec<VstorVersion>,
    /// Sub-channels allowed (QUERY_PROPERTIES max_channel_count); 0 = no multi-channel flag.
    pub max_sub_channels: u16,
    /// QUERY_PROPERTIES max_transfer_bytes.
    pub max_transfer_bytes: u32,
}

impl Default for VspConfig {
    /// A Windows Server 2016+ host: every version up to WIN10 (devices §3.1), 4 sub-channels,
    /// 256 KiB.
    fn default() -> Self {
        Self {
            accepted_versions: vstor::ALL_VERSIONS_NEWEST_FIRST.to_vec(),
            max_sub_channels: 4,
            max_transfer_bytes: DEFAULT_MAX_TRANSFER_BYTES,
        }
    }
}

impl VspConfig {
    /// The OpenVMM host: WIN6..WIN8.1, refuses WIN10 (devices §3.1).
    pub fn openvmm() -> Self {
        Self {
            accepted_versions: vstor::OPENVMM_VERSIONS.to_vec(),
            ..Self::default()
        }
    }
}

/// Initialisation progress of the controller.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum InitState {
    /// Nothing received yet.
    NotStarted,
    /// BEGIN_INITIALIZATION received.
    Begun,
    /// END_INITIALIZATION received: SRBs are accepted.
    Ready,
}

/// One forced SRB result (fault injection).
#[derive(Clone, Copy, Debug)]
struct ForcedSrb {
    srb_status: u8,
    scsi_status: u8,
    sense: Option<FixedSense>,
}

struct Shared {
    config: VspConfig,
    luns: BTreeMap<u8, Lun>,
    version: Option<VstorVersion>,
    init: InitState,
    fail_next_status: Option<NtStatus>,
    fail_next_srb: Option<ForcedSrb>,
    withhold: bool,
    withheld: Vec<(u64, Vec<u8>)>,
    release_withheld: bool,
    send_enumerate: bool,
    sub_channels_created: u16,
    opcodes: Vec<u8>,
    protocol_errors: Vec<String>,
    closed: u32,
}

/// The mock storage VSP; see the module documentation. Clones share the controller.
#[derive(Clone)]
pub struct StorageVsp {
    shared: Arc<Mutex<Shared>>,
    /// Offer of the primary channel (sub-channels repeat type and instance).
    offer: Option<DeviceOffer>,
    primary: bool,
}

impl StorageVsp {
    /// A controller with `config` and no LUNs.
    pub fn new(config: VspConfig) -> Self {
        Self {
            shared: Arc::new(Mutex::new(Shared {
                config,
                luns: BTreeMap::new(),
                version: None,
                init: InitState::NotStarted,
                fail_next_status: None,
                fail_next_srb: None,
                withhold: false,
                withheld: Vec::new(),
                release_withheld: false,
                send_enumerate: false,
                sub_channels_created: 0,
                opcodes: Vec::new(),
                protocol_errors: Vec::new(),
                closed: 0,
            })),
            offer: None,
            primary: true,
        }
    }

    /// Remembers the primary offer so CREATE_SUB_CHANNELS can offer sub-channels like it.
    pub fn with_offer(mut self, offer: DeviceOffer) -> Self {
        self.offer = Some(offer);
        self
    }

    fn lock(&self) -> MutexGuard<'_, Shared> {
        self.shared.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Adds (hot-adds) `lun`; call [`Self::announce_bus_change`] to tell the guest.
    pub fn add_lun(&self, n: u8, lun: Lun) -> &Self {
        self.lock().luns.insert(n, lun);
        self
    }

    /// Removes `lun` (later commands to it complete with SRB INVALID_LUN).
    pub fn remove_lun(&self, n: u8) -> Option<Lun> {
        self.lock().luns.remove(&n)
    }

    /// Sends an unsolicited ENUMERATE_BUS (transaction id 0) on the next poll.
    pub fn announce_bus_change(&self) {
        self.lock().send_enumerate = true;
    }

    /// Resizes `lun` (CAPACITY DATA HAS CHANGED on its next command).
    pub fn resize_lun(&self, n: u8, num_blocks: u64) -> std::io::Result<()> {
        match self.lock().luns.get_mut(&n) {
            Some(l) => l.resize(num_blocks),
            None => Err(std::io::ErrorKind::NotFound.into()),
        }
    }

    /// Copy of the first `len` bytes of an in-memory LUN (or read from its file).
    pub fn read_lun(&self, n: u8, offset: u64, len: usize) -> Option<Vec<u8>> {
        let mut s = self.lock();
        let l = s.luns.get_mut(&n)?;
        let mut b = vec![0; len];
        l.read(offset, &mut b).ok()?;
        Some(b)
    }

    /// Writes bytes straight into a LUN (test setup).
    pub fn write_lun(&self, n: u8, offset: u64, data: &[u8]) -> bool {
        let mut s = self.lock();
        s.luns
            .get_mut(&n)
            .is_some_and(|l| l.write(offset, data).is_ok())
    }

    /// Fault: the next vstor packet of any kind completes with `status`.
    pub fn fail_next_status(&self, status: NtStatus) {
        self.lock().fail_next_status = Some(status);
    }

    /// Fault: the next SRB completes with these statuses and (optionally) sense data.
    pub fn fail_next_srb(&self, srb_status: u8, scsi_status: u8, sense: Option<FixedSense>) {
        self.lock().fail_next_srb = Some(ForcedSrb {
            srb_status,
            scsi_status,
            sense,
        });
    }

    /// Fault: unit attention (ASC, ASCQ) on the next command to `lun`.
    pub fn unit_attention(&self, lun: u8, asc: u8, ascq: u8) {
        if let Some(l) = self.lock().luns.get_mut(&lun) {
            l.pending_ua = Some((asc, ascq));
        }
    }

    /// Fault: a bus reset. The next SRB completes with SRB_STATUS_BUS_RESET and every LUN then
    /// reports POWER ON, RESET OR BUS DEVICE RESET OCCURRED (0x29/0x00) once.
    pub fn bus_reset(&self) {
        let mut s = self.lock();
        s.fail_next_srb = Some(ForcedSrb {
            srb_status: 0x0E,
            scsi_status: 0,
            sense: None,
        });
        for l in s.luns.values_mut() {
            l.pending_ua = Some((0x29, 0x00));
        }
    }

    /// Fault: while on, completions are kept instead of sent.
    pub fn withhold_completions(&self, on: bool) {
        self.lock().withhold = on;
    }

    /// Sends the withheld completions on the next poll (and stops withholding).
    pub fn release_withheld(&self) {
        let mut s = self.lock();
        s.withhold = false;
        s.release_withheld = true;
    }

    /// Completions currently withheld.
    pub fn withheld(&self) -> usize {
        self.lock().withheld.len()
    }

    /// The negotiated version, once a QUERY_PROTOCOL_VERSION was accepted.
    pub fn negotiated_version(&self) -> Option<VstorVersion> {
        self.lock().version
    }

    /// Initialisation state.
    pub fn init_state(&self) -> InitState {
        self.lock().init
    }

    /// SCSI opcodes of every SRB received, in order.
    pub fn opcodes(&self) -> Vec<u8> {
        self.lock().opcodes.clone()
    }

    /// Sub-channels offered through CREATE_SUB_CHANNELS.
    pub fn sub_channels_created(&self) -> u16 {
        self.lock().sub_channels_created
    }

    /// Times a channel of this controller was closed (including rescinds).
    pub fn closes(&self) -> u32 {
        self.lock().closed
    }

    /// Guest protocol violations this VSP saw (also reported to the channel).
    pub fn protocol_errors(&self) -> Vec<String> {
        self.lock().protocol_errors.clone()
    }

    /// Completion packet size: the negotiated size, or before negotiation the request's own
    /// size clamped to 48..=64.
    fn reply_size(s: &Shared, request_len: usize) -> usize {
        match s.version {
            Some(v) => vstor::packet_size(v),
            None => request_len.clamp(vstor::PACKET_SIZE_PRE_WIN8, vstor::PACKET_SIZE_WIN8),
        }
    }

    fn error(s: &mut Shared, ch: &dyn VspChannel, e: String) {
        log::warn!("storage VSP: {e}");
        ch.protocol_error(e.clone());
        s.protocol_errors.push(e);
    }

    fn send(s: &mut Shared, ch: &mut dyn VspChannel, tid: u64, bytes: &[u8]) {
        if s.withhold {
            s.withheld.push((tid, bytes.to_vec()));
        } else if let Err(e) = ch.send_completion(tid, bytes) {
            log::warn!("storage VSP: completion {tid:#x} not sent: {e}");
        }
    }

    /// Handles one guest packet on a channel (the body of [`DeviceModel::on_packet`]).
    pub fn handle(&mut self, ch: &mut dyn VspChannel, packet: &HostPacket, subs: &mut Vec<u16>) {
        let shared = self.shared.clone();
        let mut s = shared.lock().unwrap_or_else(PoisonError::into_inner);
        if packet.packet_type == PACKET_TYPE_COMPLETION {
            return;
        }
        if packet.packet_type != PACKET_TYPE_INBAND && packet.packet_type != PACKET_TYPE_GPA_DIRECT
        {
            Self::error(&mut s, ch, format!("packet type {:#x}", packet.packet_type));
            return;
        }
        let Some(req) = vstor::parse_packet(&packet.payload) else {
            Self::error(
                &mut s,
                ch,
                format!("vstor packet of {} bytes", packet.payload.len()),
            );
            return;
        };
        if let Some(v) = s.version
            && packet.payload.len() < vstor::packet_size(v)
        {
            Self::error(
                &mut s,
                ch,
                format!(
                    "{}-byte packet after negotiating {}",
                    packet.payload.len(),
                    vstor::version_name(v)
                ),
            );
        }
        if req.flags.get() & 1 == 0 {
            Self::error(&mut s, ch, "vstor packet without REQUEST_COMPLETION".into());
        }
        let size = Self::reply_size(&s, packet.payload.len());
        let mut reply = vstor::host_packet(Operation::COMPLETE_IO.0);
        let forced = s.fail_next_status.take();
        let op = Operation(req.operation.get());
        let status = if let Some(st) = forced {
            // The payload is echoed so the guest sees a well-formed packet.
            reply.payload = req.payload;
            st
        } else {
            match op {
                Operation::BEGIN_INITIALIZATION => {
                    s.init = InitState::Begun;
                    s.version = None;
                    NtStatus::SUCCESS
                }
                Operation::QUERY_PROTOCOL_VERSION => {
                    let pv: ProtocolVersion = vstor::payload_as(&req.payload);
                    let v = VstorVersion(pv.major_minor.get());
                    reply.payload = req.payload;
                    if s.init != InitState::Begun {
                        NtStatus::INVALID_DEVICE_STATE
                    } else if s.config.accepted_versions.contains(&v) {
                        s.version = Some(v);
                        NtStatus::SUCCESS
                    } else {
                        NtStatus::REVISION_MISMATCH
                    }
                }
                Operation::QUERY_PROPERTIES => {
                    let max = s.config.max_sub_channels;
                    let props = ChannelProperties {
                        max_channel_count: U16::new(max),
                        flags: U32::new(if max > 0 {
                            STORAGE_CHANNEL_SUPPORTS_MULTI_CHANNEL
                        } else {
                            0
                        }),
                        max_transfer_bytes: U32::new(s.config.max_transfer_bytes),
                        ..Default::default()
                    };
                    vstor::set_payload(&mut reply.payload, &props);
                    NtStatus::SUCCESS
                }
                Operation::END_INITIALIZATION => {
                    if s.version.is_none() {
                        NtStatus::INVALID_DEVICE_STATE
                    } else {
                        s.init = InitState::Ready;
                        NtStatus::SUCCESS
                    }
                }
                Operation::CREATE_SUB_CHANNELS => {
                    let c: SubChannelCount = vstor::payload_as(&req.payload);
                    let n = c.sub_channel_count.get();
                    // Sub-channels only from WIN8 (devices §3.10).
                    let ok = s.version.is_some_and(vstor::is_win8_or_later)
                        && n > 0
                        && n <= s.config.max_sub_channels
                            - s.sub_channels_created.min(s.config.max_sub_channels);
                    if ok && self.primary {
                        let first = s.sub_channels_created + 1;
                        s.sub_channels_created += n;
                        subs.extend(first..first + n);
                        NtStatus::SUCCESS
                    } else {
                        NtStatus::INVALID_PARAMETER
                    }
                }
                Operation::RESET_LUN | Operation::RESET_ADAPTER | Operation::RESET_BUS => {
                    NtStatus::SUCCESS
                }
                Operation::EXECUTE_SRB => {
                    if s.init != InitState::Ready {
                        NtStatus::INVALID_DEVICE_STATE
                    } else {
                        let srb = vstor::srb_of(&req);
                        let version = s.version.unwrap_or(VstorVersion(vstor::WIN8));
                        let out = self.execute_srb(&mut s, ch, packet, &srb, version);
                        vstor::set_payload(&mut reply.payload, &out);
                        NtStatus::SUCCESS
                    }
                }
                _ => NtStatus::INVALID_DEVICE_REQUEST,
            }
        };
        reply.status = U32::new(status.0);
        let bytes = &reply.as_bytes()[..size];
        Self::send(&mut s, ch, packet.transaction_id, bytes);
    }

    fn execute_srb(
        &self,
        s: &mut Shared,
        ch: &mut dyn VspChannel,
        packet: &HostPacket,
        srb: &VmscsiRequest,
        version: VstorVersion,
    ) -> VmscsiRequest {
        let mut out = *srb;
        out.length = U16::new(vstor::srb_length(version));
        let cdb_len = usize::from(srb.cdb_length).min(16);
        let cdb = &srb.cdb_or_sense[..cdb_len];
        s.opcodes.push(cdb.first().copied().unwrap_or(0xFF));
        let want = srb.data_transfer_length.get() as usize;
        // The data buffer: exactly one multi-page range covering data_transfer_length.
        let range = match (packet.gpa_ranges.as_slice(), want) {
            (_, 0) => None,
            ([r], _) if r.0 as usize >= want => Some(r),
            (ranges, _) => {
                Self::error(
                    s,
                    ch,
                    format!(
                        "SRB of {want} bytes with {} GPA range(s) {:?}",
                        ranges.len(),
                        ranges.iter().map(|r| r.0).collect::<Vec<_>>()
                    ),
                );
                return Self::srb_result(out, 0x06, 0, None, 0);
            }
        };
        if cdb_len == 0 {
            return Self::srb_result(out, 0x06, 0, None, 0);
        }
        if let Some(f) = s.fail_next_srb.take() {
            return Self::srb_result(out, f.srb_status, f.scsi_status, f.sense, 0);
        }
        let is_report_luns = cdb[0] == 0xA0;
        let lun_no = srb.lun;
        if !is_report_luns && !s.luns.contains_key(&lun_no) {
            return Self::srb_result(out, 0x20, 0, None, 0);
        }
        if srb.path_id != 0 || srb.target_id != 0 {
            return Self::srb_result(out, 0x20, 0, None, 0);
        }
        if !is_report_luns
            && let Some(l) = s.luns.get_mut(&lun_no)
            && cdb[0] != 0x03
            && let Some((asc, ascq)) = l.pending_ua.take()
        {
            return Self::srb_result(out, 0x04, 2, Some(FixedSense::new(0x6, asc, ascq)), 0);
        }
        // READ/WRITE of an in-memory disk: one copy, straight between the disk and the
        // guest pages (what a real host's DMA does), no staging buffer.
        if let Some(rw) = scsi::read_write_in_place(s.luns.get_mut(&lun_no), cdb, srb.data_in, want)
        {
            return match rw {
                Err(sense) => Self::srb_result(out, 0x04, 2, Some(sense), 0),
                Ok((_, 0)) => Self::srb_result(out, 0x01, 0, None, 0),
                Ok((disk, n)) => match range {
                    Some(r) => match gpa_copy(ch, r, disk, srb.data_in == 1) {
                        Ok(()) => Self::srb_result(out, 0x01, 0, None, n as u32),
                        Err(e) => {
                            let dir = if srb.data_in == 1 { "in" } else { "out" };
                            Self::error(s, ch, format!("SRB data {dir}: {e}"));
                            Self::srb_result(out, 0x06, 0, None, 0)
                        }
                    },
                    None => Self::srb_result(out, 0x01, 0, None, 0),
                },
            };
        }
        // Gather write data.
        let mut data = vec![0u8; want];
        if let Some(r) = range
            && srb.data_in == 0
            && let Err(e) = gpa_copy(ch, r, &mut data, false)
        {
            Self::error(s, ch, format!("SRB data out: {e}"));
            return Self::srb_result(out, 0x06, 0, None, 0);
        }
        let lun_list: Vec<u8> = if is_report_luns {
            s.luns.keys().copied().collect()
        } else {
            Vec::new()
        };
        let lun = s.luns.get_mut(&lun_no);
        let outcome = scsi::execute(lun, &lun_list, cdb, srb.data_in, &mut data);
        match outcome {
            ScsiOutcome::Good(n) => {
                let n = n.min(want);
                if let Some(r) = range
                    && srb.data_in == 1
                    && n > 0
                    && let Err(e) = gpa_copy(ch, r, &mut data[..n], true)
                {
                    Self::error(s, ch, format!("SRB data in: {e}"));
                    return Self::srb_result(out, 0x06, 0, None, 0);
                }
                Self::srb_result(out, 0x01, 0, None, n as u32)
            }
            ScsiOutcome::Check(sense) => Self::srb_result(out, 0x04, 2, Some(sense), 0),
        }
    }

    fn srb_result(
        mut out: VmscsiRequest,
        srb_status: u8,
        scsi_status: u8,
        sense: Option<FixedSense>,
        transferred: u32,
    ) -> VmscsiRequest {
        out.srb_status = srb_status;
        out.scsi_status = scsi_status;
        out.data_transfer_length = U32::new(transferred);
        out.cdb_or_sense = [0; 20];
        out.sense_info_length = 0;
        if let Some(sense) = sense {
            let b = sense.bytes();
            out.cdb_or_sense[..b.len()].copy_from_slice(&b);
            out.sense_info_length = b.len() as u8;
            out.srb_status |= 0x80;
        }
        out
    }

    /// The periodic part of [`DeviceModel::poll`]: releases withheld completions and sends a
    /// pending ENUMERATE_BUS.
    pub fn poll_channel(&mut self, ch: &mut dyn VspChannel) {
        let mut s = self.lock();
        if !self.primary {
            return;
        }
        if s.release_withheld {
            s.release_withheld = false;
            for (tid, bytes) in std::mem::take(&mut s.withheld) {
                if let Err(e) = ch.send_completion(tid, &bytes) {
                    log::warn!("storage VSP: withheld completion {tid:#x}: {e}");
                }
            }
        }
        if s.send_enumerate && s.init == InitState::Ready {
            s.send_enumerate = false;
            let p = vstor::host_packet(Operation::ENUMERATE_BUS.0);
            let size = Self::reply_size(&s, vstor::PACKET_SIZE_WIN8);
            if let Err(e) = ch.send_inband(&p.as_bytes()[..size], 0) {
                log::warn!("storage VSP: ENUMERATE_BUS: {e}");
            }
        }
    }
}

/// Copies between `data` and the guest pages of one multi-page range (§0.5): the first page
/// from `byte_offset`, then whole pages.
fn gpa_copy(
    ch: &mut dyn VspChannel,
    range: &(u32, u32, Vec<u64>),
    data: &mut [u8],
    to_guest: bool,
) -> Result<(), HostRingError> {
    let (_, offset, pfns) = range;
    let mut done = 0usize;
    let mut page_off = *offset as usize;
    for &pfn in pfns {
        if done == data.len() {
            break;
        }
        let n = (4096 - page_off).min(data.len() - done);
        let gpa = pfn * 4096 + page_off as u64;
        if to_guest {
            ch.write_gpa(gpa, &data[done..done + n])?;
        } else {
            ch.read_gpa(gpa, &mut data[done..done + n])?;
        }
        done += n;
        page_off = 0;
    }
    if done < data.len() {
        return Err(HostRingError::BadAddress(0));
    }
    Ok(())
}

impl DeviceModel for StorageVsp {
    fn on_open(&mut self, _ch: &mut HostChannel) {
        if self.primary {
            let mut s = self.lock();
            s.init = InitState::NotStarted;
            s.version = None;
        }
    }

    fn on_packet(&mut self, ch: &mut HostChannel, packet: &HostPacket) {
        let mut subs = Vec::new();
        self.handle(ch, packet, &mut subs);
        for index in subs {
            let Some(mut offer) = self.offer.clone() else {
                ch.protocol_error("storage VSP: CREATE_SUB_CHANNELS without a primary offer");
                continue;
            };
            offer.sub_channel_index = index;
            let model = StorageVsp {
                shared: self.shared.clone(),
                offer: None,
                primary: false,
            };
            ch.add_offer(offer, Box::new(model));
        }
    }

    fn poll(&mut self, ch: &mut HostChannel) {
        self.poll_channel(ch);
    }

    fn on_close(&mut self) {
        let mut s = self.lock();
        s.closed += 1;
        if self.primary {
            // Requests in flight die with the channel; the guest must fail them itself.
            let dropped = std::mem::take(&mut s.withheld).len();
            if dropped > 0 {
                log::info!("storage VSP: channel closed with {dropped} withheld completions");
            }
            s.init = InitState::NotStarted;
            s.version = None;
            s.withhold = false;
        }
    }
}

#[cfg(test)]
mod tests;
