//! Channel-management messages from the guest (vmbus-core §5–6, §10): validation and answers.

use vmbus_guest::protocol::{
    AllOffersDelivered, FeatureFlags, GpadlCreated, GpadlTorndown, InitiateContact,
    MESSAGE_CONNECTION_ID, MESSAGE_CONNECTION_ID_MULTI_CLIENT, MessageHeader, MessageType,
    ModifyChannelResponse, OpenChannel, OpenResult, SYNIC_MESSAGE_TYPE_CHANNEL, UnloadResponse,
    VMBUS_MESSAGE_SINT, VersionResponse, VersionResponseWithFeatures, VmbusVersion,
};
use zerocopy::{FromBytes, IntoBytes};

use super::STATUS_UNSUCCESSFUL;
use super::channel::SignalTarget;
use super::gpadl::GpadlProgress;
use super::host::{Connection, MockVmbusHost, PendingOpen, Phase};

fn u32_at(b: &[u8], at: usize) -> u32 {
    u32::from_le_bytes([b[at], b[at + 1], b[at + 2], b[at + 3]])
}

fn u64_at(b: &[u8], at: usize) -> u64 {
    u64::from(u32_at(b, at)) | u64::from(u32_at(b, at + 4)) << 32
}

/// INITIATE_CONTACT @16..24 from 5.0 on, as the host reads it (vmbus-core §5.3): target SINT
/// (byte @16, from 5.0), target VTL (byte @17, from 5.1), reserved u16 @18, requested feature
/// flags (u32 @20, from 6.0). Below 5.0 the same 8 bytes are the legacy interrupt page GPA.
/// `info` is the little-endian u64 at @16.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct ContactTargetInfo {
    sint: u8,
    vtl: u8,
    features: u32,
}

impl ContactTargetInfo {
    fn from_field(info: u64) -> Self {
        let b = info.to_le_bytes();
        Self {
            sint: b[0],
            vtl: b[1],
            features: u32::from_le_bytes([b[4], b[5], b[6], b[7]]),
        }
    }
}

/// Lowest version each guest→host message needs (vmbus-core §5.2).
fn min_version(t: MessageType) -> VmbusVersion {
    match t {
        MessageType::MODIFYCHANNEL => VmbusVersion::V4_1,
        MessageType::OPEN_RESERVED_CHANNEL
        | MessageType::CLOSE_RESERVED_CHANNEL
        | MessageType::TL_CONNECT_REQUEST => VmbusVersion::V4_0,
        MessageType::MODIFY_CONNECTION => VmbusVersion::V6_0,
        _ => VmbusVersion::V1_1,
    }
}

impl MockVmbusHost {
    /// One message the guest posted with HvCallPostMessage.
    pub(super) fn handle_posted(&mut self, connection_id: u32, message_type: u32, msg: &[u8]) {
        if message_type != SYNIC_MESSAGE_TYPE_CHANNEL {
            self.error(format!(
                "PostMessage type {message_type} on connection {connection_id:#x} (VMBus uses 1)"
            ));
            return;
        }
        if msg.len() < 8 {
            self.error(format!("VMBus message of {} bytes (< 8)", msg.len()));
            return;
        }
        let t = MessageType(u32_at(msg, 0));
        if u32_at(msg, 4) != 0 {
            self.error(format!(
                "{t}: header padding {:#x} not zero",
                u32_at(msg, 4)
            ));
        }
        if t == MessageType::INITIATE_CONTACT {
            self.initiate_contact(connection_id, msg);
            return;
        }
        let Some(conn) = self.conn.as_ref() else {
            self.error(format!(
                "{t} before a successful INITIATE_CONTACT (ignored)"
            ));
            return;
        };
        if connection_id != conn.message_connection_id {
            self.error(format!(
                "{t} posted on connection {connection_id:#x}, but this {} connection uses {:#x}",
                conn.version, conn.message_connection_id
            ));
            return;
        }
        if conn.version < min_version(t) {
            self.error(format!(
                "{t} needs VMBus {} (negotiated {})",
                min_version(t),
                conn.version
            ));
            return;
        }
        let exact = |len: usize| -> bool { msg.len() == len };
        let size_ok = match t {
            MessageType::REQUESTOFFERS | MessageType::UNLOAD => exact(8),
            MessageType::CLOSECHANNEL | MessageType::RELID_RELEASED => exact(12),
            MessageType::GPADL_TEARDOWN | MessageType::MODIFYCHANNEL => exact(16),
            MessageType::MODIFY_CONNECTION => exact(24),
            MessageType::OPENCHANNEL => {
                exact(148) || (exact(156) && conn.version >= VmbusVersion::V6_0)
            }
            // Variable: checked by the GPADL table.
            MessageType::GPADL_HEADER | MessageType::GPADL_BODY => true,
            _ => {
                self.error(format!(
                    "unsupported or host→guest message type {t} from the guest ({} bytes)",
                    msg.len()
                ));
                return;
            }
        };
        if !size_ok {
            self.error(format!("{t} of wrong size {} bytes", msg.len()));
            return;
        }
        match t {
            MessageType::REQUESTOFFERS => self.request_offers(),
            MessageType::OPENCHANNEL => self.open_channel(msg),
            MessageType::CLOSECHANNEL => self.close_channel(u32_at(msg, 8)),
            MessageType::GPADL_HEADER => self.gpadl_header(msg),
            MessageType::GPADL_BODY => self.gpadl_body(msg),
            MessageType::GPADL_TEARDOWN => self.gpadl_teardown(u32_at(msg, 8), u32_at(msg, 12)),
            MessageType::RELID_RELEASED => self.relid_released(u32_at(msg, 8)),
            MessageType::UNLOAD => self.unload(),
            MessageType::MODIFYCHANNEL => self.modify_channel(u32_at(msg, 8), u32_at(msg, 12)),
            MessageType::MODIFY_CONNECTION => self.modify_connection(msg),
            _ => {}
        }
    }

    /// INITIATE_CONTACT (§5.3, §5.5).
    fn initiate_contact(&mut self, connection_id: u32, msg: &[u8]) {
        if msg.len() != 40 && msg.len() != 56 {
            self.error(format!(
                "INITIATE_CONTACT of {} bytes (must be 40, or 56 with a client id)",
                msg.len()
            ));
            return;
        }
        let Ok((c, _)) = InitiateContact::read_from_prefix(msg) else {
            return;
        };
        let version = VmbusVersion(c.version_requested);
        let info = ContactTargetInfo::from_field(c.interrupt_page_or_target_info);
        let max = self.release.max_version();
        let vp = if version >= VmbusVersion::V3_0 && max >= VmbusVersion::V3_0 {
            c.target_vp
        } else {
            0
        };
        let sint = if version >= VmbusVersion::V5_0 && max >= VmbusVersion::V5_0 && info.sint < 16 {
            info.sint
        } else {
            VMBUS_MESSAGE_SINT
        };
        let multi_client = connection_id == MESSAGE_CONNECTION_ID_MULTI_CLIENT;
        if connection_id != MESSAGE_CONNECTION_ID && !multi_client {
            self.error(format!(
                "INITIATE_CONTACT on connection {connection_id:#x} (must be 1, or 4 from 5.0)"
            ));
            return;
        }
        if self.conn.is_some() {
            self.error("INITIATE_CONTACT while connected, without UNLOAD: host resets".into());
            self.reset_connection();
        }
        let mut reject = None;
        if multi_client && version < VmbusVersion::V5_0 {
            reject = Some(format!(
                "INITIATE_CONTACT for {version} on connection 4 (versions below 5.0 use 1)"
            ));
        } else if !multi_client && version >= VmbusVersion::V5_0 && self.release.accepts(version) {
            reject = Some(format!(
                "INITIATE_CONTACT for {version} on connection 1 (5.0 and later must use 4)"
            ));
        }
        let accepted = reject.is_none() && self.release.accepts(version);
        if let Some(r) = reject {
            self.error(r);
        }
        let features = if version >= VmbusVersion::V6_0 {
            info.features
        } else {
            0
        };
        let mut accepted = accepted;
        if accepted && let Err(e) = self.check_contact(&c, version, features, msg.len()) {
            self.error(e);
            accepted = false;
        }
        let granted = features & self.host_features;
        // Injected failure: 2.4+ report it as supported with a failed connection state; older
        // versions have no state field, so the failure is reported as "not supported".
        let mut state = if accepted { self.connection_state } else { 0 };
        if state != 0 && version < VmbusVersion::V2_4 {
            accepted = false;
            state = 0;
        }
        let id_or_version = match (accepted, version >= VmbusVersion::V5_0) {
            (true, true) => self.multi_client_connection_id,
            (true, false) => version.0,
            (false, _) => 0,
        };
        let base = VersionResponse {
            header: MessageHeader::new(MessageType::VERSION_RESPONSE),
            version_supported: u8::from(accepted),
            connection_state: state,
            padding: 0,
            selected_version_or_connection_id: id_or_version,
        };
        if accepted && version >= VmbusVersion::V6_0 {
            let r = VersionResponseWithFeatures {
                base,
                supported_features: granted,
            };
            self.send_to(vp, sint, r.as_bytes());
        } else {
            self.send_to(vp, sint, base.as_bytes());
        }
        if !accepted || state != 0 {
            return;
        }
        let monitor_pages = (c.parent_to_child_monitor_page_gpa != 0).then_some((
            c.parent_to_child_monitor_page_gpa,
            c.child_to_parent_monitor_page_gpa,
        ));
        let interrupt_page =
            (version < VmbusVersion::V2_4).then_some(c.interrupt_page_or_target_info);
        let message_connection_id = if version >= VmbusVersion::V5_0 {
            self.multi_client_connection_id
        } else {
            MESSAGE_CONNECTION_ID
        };
        let host_pages = self.map_connection_pages(monitor_pages, interrupt_page);
        self.conn = Some(Connection {
            version,
            features: granted,
            target_vp: vp,
            sint,
            message_connection_id,
            monitor_pages,
            interrupt_page,
            offers_requested: false,
            offers_delivered: false,
            host_pages,
        });
        self.unloaded = false;
    }

    /// Rules a real host enforces on an otherwise acceptable INITIATE_CONTACT.
    fn check_contact(
        &self,
        c: &InitiateContact,
        version: VmbusVersion,
        features: u32,
        len: usize,
    ) -> Result<(), String> {
        let (p2c, c2p) = (
            c.parent_to_child_monitor_page_gpa,
            c.child_to_parent_monitor_page_gpa,
        );
        if (p2c == 0) != (c2p == 0) {
            return Err(format!(
                "INITIATE_CONTACT monitor pages {p2c:#x}/{c2p:#x}: both zero or both non-zero"
            ));
        }
        for gpa in [p2c, c2p] {
            if gpa != 0 && (!gpa.is_multiple_of(4096) || !self.ram.contains(gpa, 4096)) {
                return Err(format!(
                    "INITIATE_CONTACT monitor page {gpa:#x} not a page of guest RAM"
                ));
            }
        }
        let info = ContactTargetInfo::from_field(c.interrupt_page_or_target_info);
        if version >= VmbusVersion::V5_1 && info.vtl != 0 {
            return Err(format!("INITIATE_CONTACT target VTL {}", info.vtl));
        }
        if version >= VmbusVersion::V5_0 && info.sint >= 16 {
            return Err(format!("INITIATE_CONTACT target SINT {}", info.sint));
        }
        if version < VmbusVersion::V2_4 {
            let page = c.interrupt_page_or_target_info;
            if page == 0 || !page.is_multiple_of(4096) || !self.ram.contains(page, 4096) {
                return Err(format!(
                    "INITIATE_CONTACT for {version} needs a legacy interrupt page in guest RAM, got {page:#x}"
                ));
            }
        }
        let client_id = features & FeatureFlags::CLIENT_ID.bits() != 0;
        if len == 56 && !client_id {
            return Err("56-byte INITIATE_CONTACT without the CLIENT_ID feature".into());
        }
        if len == 40 && client_id {
            return Err("CLIENT_ID feature requested but INITIATE_CONTACT is 40 bytes".into());
        }
        Ok(())
    }

    /// REQUESTOFFERS: every offer, then ALLOFFERS_DELIVERED; only once per connection.
    fn request_offers(&mut self) {
        let Some(conn) = self.conn.as_mut() else {
            return;
        };
        if conn.offers_requested {
            self.error("second REQUESTOFFERS on the same connection (ignored)".into());
            return;
        }
        conn.offers_requested = true;
        let relids: Vec<u32> = self
            .channels
            .iter()
            .filter(|(_, e)| !e.rescinded)
            .map(|(r, _)| *r)
            .collect();
        for relid in relids {
            self.send_offer(relid);
        }
        self.send(AllOffersDelivered::new().as_bytes());
        if let Some(conn) = self.conn.as_mut() {
            conn.offers_delivered = true;
        }
    }

    fn open_result(&self, relid: u32, open_id: u32, status: u32) {
        let r = OpenResult {
            header: MessageHeader::new(MessageType::OPENCHANNEL_RESULT),
            relid,
            open_id,
            status,
        };
        self.send(r.as_bytes());
    }

    /// OPENCHANNEL (§5.3, §7.1, §7.6).
    fn open_channel(&mut self, msg: &[u8]) {
        let Ok((o, _)) = OpenChannel::read_from_prefix(msg) else {
            return;
        };
        let (relid, open_id) = (o.relid, o.open_id);
        if let Some(status) = self.fail_next_open.remove(&relid) {
            self.open_result(relid, open_id, status);
            return;
        }
        match self.validate_open(&o, msg) {
            Ok(None) => {}
            Ok(Some(p)) => {
                let withhold = self.channels.get(&relid).is_some_and(|e| e.withhold_open);
                if let Some(e) = self.channels.get_mut(&relid) {
                    e.ring_gpadl = Some(o.ring_gpadl_handle);
                    e.downstream = o.downstream_ring_page_offset as usize;
                }
                if let Some(g) = self.lock_gpadls().live.get_mut(&o.ring_gpadl_handle) {
                    g.in_use_by = Some(relid);
                }
                if withhold {
                    if let Some(e) = self.channels.get_mut(&relid) {
                        e.phase = Phase::Opening(Box::new(p));
                    }
                } else {
                    self.finish_open(relid, p);
                }
            }
            Err(e) => {
                self.error(format!("OPENCHANNEL relid {relid}: {e}"));
                self.open_result(relid, open_id, STATUS_UNSUCCESSFUL);
            }
        }
    }

    /// `Ok(None)`: silently ignored (rescinded channel).
    fn validate_open(&self, o: &OpenChannel, msg: &[u8]) -> Result<Option<PendingOpen>, String> {
        let conn = self
            .conn
            .as_ref()
            .ok_or_else(|| "not connected".to_string())?;
        let e = self
            .channels
            .get(&o.relid)
            .ok_or_else(|| "unknown relid".to_string())?;
        if e.rescinded {
            return Ok(None);
        }
        if !e.offered {
            return Err("channel not offered to the guest".into());
        }
        if matches!(e.phase, Phase::Open | Phase::Opening(_)) {
            return Err("channel already open".into());
        }
        let t = self.lock_gpadls();
        let handle = o.ring_gpadl_handle;
        let g = t
            .live
            .get(&handle)
            .ok_or_else(|| format!("ring GPADL {handle:#x} unknown (or not complete)"))?;
        if let Some(other) = g.in_use_by {
            return Err(format!(
                "ring GPADL {handle:#x} already used by channel {other}"
            ));
        }
        if g.relid != o.relid {
            return Err(format!(
                "ring GPADL {handle:#x} was created for channel {}, not {}",
                g.relid, o.relid
            ));
        }
        let pages = g
            .whole_pages()
            .ok_or_else(|| format!("ring GPADL {handle:#x} is not whole pages"))?;
        drop(t);
        let n = pages.len();
        let k = o.downstream_ring_page_offset as usize;
        if k < 2 || k + 2 > n {
            return Err(format!(
                "downstream ring page offset {k} for a {n}-page GPADL (must be 2..={})",
                n.saturating_sub(2)
            ));
        }
        let mut flag = o.relid;
        let mut guest_conn = None;
        if msg.len() == 156 {
            let features = FeatureFlags::from_bits_retain(conn.features);
            if !features.contains(FeatureFlags::GUEST_SPECIFIED_SIGNAL_PARAMETERS)
                && !features.contains(FeatureFlags::CHANNEL_INTERRUPT_REDIRECTION)
            {
                return Err("156-byte OPENCHANNEL without the 6.0 open-extension features".into());
            }
            if features.contains(FeatureFlags::GUEST_SPECIFIED_SIGNAL_PARAMETERS) {
                let cid = u32_at(msg, 148);
                let f = u16::from_le_bytes([msg[152], msg[153]]);
                if cid != 0 {
                    guest_conn = Some(cid);
                }
                if f != 0 {
                    flag = u32::from(f);
                }
            }
        }
        if flag >= 2048 {
            return Err(format!("event flag {flag} beyond 2047"));
        }
        let vp = if conn.version < VmbusVersion::V2_4 {
            Some(0)
        } else if o.target_vp == OpenChannel::TARGET_VP_NONE {
            None
        } else {
            Some(o.target_vp)
        };
        let target = SignalTarget {
            vp,
            sint: conn.sint,
            flag,
            legacy_interrupt_page: conn.interrupt_page,
        };
        let rings = self.make_rings(&pages, k, target);
        Ok(Some(PendingOpen {
            open_id: o.open_id,
            rings,
            guest_connection_id: guest_conn,
            pages,
            downstream: k,
        }))
    }

    /// Sends OPENCHANNEL_RESULT(success), attaches the rings and tells the model.
    pub(super) fn finish_open(&mut self, relid: u32, p: PendingOpen) {
        let errs = {
            let mut errs = Vec::new();
            let ram = &self.ram;
            let out = super::ring::RingMem::new(ram.clone(), &p.pages[..p.downstream]);
            let inb = super::ring::RingMem::new(ram.clone(), &p.pages[p.downstream..]);
            if let Err(e) = out.check_fresh("outbound") {
                errs.push(e);
            }
            if let Err(e) = inb.check_fresh("inbound") {
                errs.push(e);
            }
            errs
        };
        if let Some(cid) = p.guest_connection_id {
            self.hv.connect_event_port(cid);
        }
        let Some(e) = self.channels.get_mut(&relid) else {
            return;
        };
        if !errs.is_empty() {
            let gpadl = e.ring_gpadl.take();
            e.phase = Phase::Idle;
            for err in errs {
                self.error(format!("OPENCHANNEL relid {relid}: {err}"));
            }
            if let Some(h) = gpadl {
                self.release_ring_gpadl(h);
            }
            self.open_result(relid, p.open_id, STATUS_UNSUCCESSFUL);
            return;
        }
        e.guest_connection_id = p.guest_connection_id;
        e.ch.rings = Some(p.rings);
        e.phase = Phase::Open;
        e.signalled = false;
        self.open_result(relid, p.open_id, 0);
        if let Some(e) = self.channels.get_mut(&relid) {
            e.model.on_open(&mut e.ch);
        }
    }

    /// CLOSECHANNEL: stop servicing; no reply.
    pub(super) fn close_channel(&mut self, relid: u32) {
        let Some(e) = self.channels.get_mut(&relid) else {
            self.error(format!("CLOSECHANNEL for unknown relid {relid}"));
            return;
        };
        let active = matches!(e.phase, Phase::Open | Phase::Opening(_));
        if !active && !e.rescinded {
            self.error(format!("CLOSECHANNEL for relid {relid}, which is not open"));
            return;
        }
        if active {
            let was_open = matches!(e.phase, Phase::Open);
            e.phase = Phase::Closed;
            if self.withhold_torndown {
                // Fault injection: the host has not finished the requests in flight.
                self.lingering_requests
                    .extend(e.ch.take_requests_in_flight());
            }
            e.ch.detach();
            if was_open && !e.rescinded {
                e.model.on_close();
            }
        } else {
            e.phase = Phase::Closed;
        }
        let gpadl = e.ring_gpadl.take();
        if let Some(h) = gpadl {
            self.release_ring_gpadl(h);
        }
    }

    fn gpadl_created(&self, relid: u32, handle: u32, status: u32) {
        let m = GpadlCreated {
            header: MessageHeader::new(MessageType::GPADL_CREATED),
            relid,
            gpadl_handle: handle,
            status,
        };
        self.send(m.as_bytes());
    }

    pub(super) fn send_torndown(&self, handle: u32) {
        let m = GpadlTorndown {
            header: MessageHeader::new(MessageType::GPADL_TORNDOWN),
            gpadl_handle: handle,
        };
        self.send(m.as_bytes());
    }

    fn gpadl_progress(&mut self, r: Result<GpadlProgress, String>) {
        match r {
            Err(e) => self.error(e),
            Ok(GpadlProgress::Incomplete) => {}
            Ok(GpadlProgress::Created { relid, handle }) => match self.fail_next_gpadl.take() {
                Some(status) => {
                    self.lock_gpadls().live.remove(&handle);
                    self.gpadl_created(relid, handle, status);
                }
                None => self.gpadl_created(relid, handle, 0),
            },
            Ok(GpadlProgress::Failed {
                relid,
                handle,
                reason,
            }) => {
                self.error(format!("GPADL {handle:#x} rejected: {reason}"));
                self.gpadl_created(relid, handle, STATUS_UNSUCCESSFUL);
            }
        }
    }

    /// GPADL_HEADER (§6).
    fn gpadl_header(&mut self, msg: &[u8]) {
        if msg.len() >= 16 {
            let relid = u32_at(msg, 8);
            let known = self
                .channels
                .get(&relid)
                .is_some_and(|e| e.offered && !e.rescinded);
            if !known {
                let handle = u32_at(msg, 12);
                self.error(format!(
                    "GPADL_HEADER {handle:#x} for relid {relid}, which is not an offered channel"
                ));
                self.gpadl_created(relid, handle, STATUS_UNSUCCESSFUL);
                return;
            }
        }
        let r = {
            let ram = self.ram.clone();
            self.lock_gpadls().header(msg, &ram)
        };
        self.gpadl_progress(r);
    }

    /// GPADL_BODY (§6.2).
    fn gpadl_body(&mut self, msg: &[u8]) {
        let r = {
            let ram = self.ram.clone();
            self.lock_gpadls().body(msg, &ram)
        };
        self.gpadl_progress(r);
    }

    /// GPADL_TEARDOWN: TORNDOWN now, or when the channel using it as its ring closes.
    fn gpadl_teardown(&mut self, relid: u32, handle: u32) {
        let withhold = self.withhold_torndown;
        let now = {
            let mut t = self.lock_gpadls();
            if t.is_pending(handle) {
                Err(format!(
                    "GPADL_TEARDOWN of {handle:#x}, which is still being created"
                ))
            } else {
                match t.live.get_mut(&handle) {
                    None => Err(format!("GPADL_TEARDOWN of unknown GPADL {handle:#x}")),
                    Some(g) => {
                        let mismatch = (g.relid != relid).then(|| {
                            format!(
                                "GPADL_TEARDOWN of {handle:#x} names relid {relid}, created for {}",
                                g.relid
                            )
                        });
                        if g.in_use_by.is_some() {
                            g.teardown_pending = true;
                            Ok((false, mismatch, false))
                        } else if withhold {
                            // Fault injection: accepted, answer withheld, still mapped.
                            g.teardown_pending = true;
                            Ok((false, mismatch, true))
                        } else {
                            t.live.remove(&handle);
                            Ok((true, mismatch, false))
                        }
                    }
                }
            }
        };
        match now {
            Err(e) => self.error(e),
            Ok((send, mismatch, withheld)) => {
                if let Some(m) = mismatch {
                    self.error(m);
                }
                if send {
                    self.send_torndown(handle);
                }
                if withheld {
                    self.withheld_torndowns.push(handle);
                }
            }
        }
    }

    /// RELID_RELEASED: only after a rescind.
    fn relid_released(&mut self, relid: u32) {
        match self.channels.get(&relid) {
            Some(e) if e.rescinded && matches!(e.phase, Phase::Open) => self.error(format!(
                "RELID_RELEASED for relid {relid} before CLOSECHANNEL: the channel was open \
                 when rescinded (§10.1: close it first)"
            )),
            Some(e) if e.rescinded => {
                self.channels.remove(&relid);
                self.lock_gpadls().drop_channel(relid);
                self.released.insert(relid);
            }
            Some(_) => self.error(format!(
                "RELID_RELEASED for relid {relid}, which was not rescinded"
            )),
            None => self.error(format!("RELID_RELEASED for unknown relid {relid}")),
        }
    }

    /// UNLOAD: UNLOAD_RESPONSE, then forget the connection.
    fn unload(&mut self) {
        self.send(UnloadResponse::new().as_bytes());
        self.reset_connection();
        self.unloaded = true;
    }

    /// Drops every channel's connection state, GPADL and relid binding, keeping the devices so a
    /// new INITIATE_CONTACT + REQUESTOFFERS offers them again.
    pub(super) fn reset_connection(&mut self) {
        self.channels.retain(|_, e| !e.rescinded);
        for e in self.channels.values_mut() {
            let was_open = matches!(e.phase, Phase::Open);
            e.ch.detach();
            if was_open {
                e.model.on_close();
            }
            e.phase = Phase::Idle;
            e.offered = false;
            e.signalled = false;
            e.ring_gpadl = None;
            e.guest_connection_id = None;
        }
        self.lock_gpadls().clear();
        self.withheld_torndowns.clear();
        self.lingering_requests.clear();
        self.conn = None;
    }

    /// MODIFYCHANNEL (≥ 4.1): new interrupt target VP; acknowledged from 5.3.
    fn modify_channel(&mut self, relid: u32, target_vp: u32) {
        let version = self.conn.as_ref().map_or(VmbusVersion::V1_1, |c| c.version);
        let ok = match self.channels.get_mut(&relid) {
            Some(e) if matches!(e.phase, Phase::Open) => {
                if let Some(r) = e.ch.rings.as_mut() {
                    r.target.vp = (target_vp != OpenChannel::TARGET_VP_NONE).then_some(target_vp);
                }
                true
            }
            _ => {
                self.error(format!(
                    "MODIFYCHANNEL for relid {relid}, which is not open"
                ));
                false
            }
        };
        if version >= VmbusVersion::V5_3 {
            let m = ModifyChannelResponse {
                header: MessageHeader::new(MessageType::MODIFYCHANNEL_RESPONSE),
                relid,
                status: if ok { 0 } else { STATUS_UNSUCCESSFUL as i32 },
            };
            self.send(m.as_bytes());
        }
    }

    /// MODIFY_CONNECTION (6.0 + feature 0x4): new monitor pages.
    fn modify_connection(&mut self, msg: &[u8]) {
        let granted = self
            .conn
            .as_ref()
            .is_some_and(|c| c.features & FeatureFlags::MODIFY_CONNECTION.bits() != 0);
        if !granted {
            self.error("MODIFY_CONNECTION without the MODIFY_CONNECTION feature".into());
            return;
        }
        let (p2c, c2p) = (u64_at(msg, 8), u64_at(msg, 16));
        let ok = (p2c == 0) == (c2p == 0)
            && [p2c, c2p]
                .iter()
                .all(|&g| g == 0 || (g.is_multiple_of(4096) && self.ram.contains(g, 4096)));
        if ok {
            let monitor_pages = (p2c != 0).then_some((p2c, c2p));
            let interrupt_page = self.conn.as_ref().and_then(|c| c.interrupt_page);
            let host_pages = self.map_connection_pages(monitor_pages, interrupt_page);
            if let Some(c) = self.conn.as_mut() {
                c.monitor_pages = monitor_pages;
                c.host_pages = host_pages;
            }
        } else {
            self.error(format!(
                "MODIFY_CONNECTION with monitor pages {p2c:#x}/{c2p:#x}"
            ));
        }
        let mut m = [0u8; 9];
        m[0..4].copy_from_slice(&MessageType::MODIFY_CONNECTION_RESPONSE.0.to_le_bytes());
        m[8] = if ok { 0 } else { 1 };
        self.send(&m);
    }
}

#[cfg(test)]
mod tests {
    use super::ContactTargetInfo;

    /// vmbus-core §5.3 INITIATE_CONTACT: @16 target SINT (1 byte), @17 target VTL (1 byte),
    /// @18 reserved (2 bytes), @20 feature flags (4 bytes); the message bytes 16..24 are the
    /// little-endian u64 field.
    #[test]
    fn contact_target_info_follows_vmbus_core_5_3() {
        let msg_bytes_16_to_24 = [2u8, 0, 0xAA, 0xBB, 0x09, 0x00, 0x00, 0x00];
        let field = u64::from_le_bytes(msg_bytes_16_to_24);
        assert_eq!(
            ContactTargetInfo::from_field(field),
            ContactTargetInfo {
                sint: 2,
                vtl: 0,
                features: 0x9,
            }
        );
        let field = u64::from_le_bytes([0x0F, 0x01, 0, 0, 0x78, 0x56, 0x34, 0x12]);
        assert_eq!(
            ContactTargetInfo::from_field(field),
            ContactTargetInfo {
                sint: 15,
                vtl: 1,
                features: 0x1234_5678,
            }
        );
    }
}
