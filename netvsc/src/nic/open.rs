//! Opening a NIC (devices §7.1): NVSP version negotiation, NDIS config and version, the
//! receive and send buffers, RNDIS initialisation and the first queries.

use super::receive::flush_completions;
use super::send::large_slot_bytes;
use super::*;

impl<'b, T: Transport, H: Hal, const N: usize, const M: usize> Nic<'b, T, H, N, M> {
    /// Opens the first network adapter the host offered; see [`Nic::open`].
    pub fn open_first(
        bus: &'b Vmbus<T, H>,
        config: &NicConfig,
        waiter: &mut impl Wait,
    ) -> Result<Self, NetError> {
        let offer = bus
            .find(vmbus_guest::protocol::DeviceClass::Network, None)
            .ok_or(NetError::Vmbus(VmbusError::NoSuchDevice))?;
        Self::open(bus, offer.relid, config, waiter)
    }

    /// Opens the network channel `relid` and brings the NIC up (devices §7.1): NVSP version
    /// negotiation, NDIS config and version, receive and send buffers, RNDIS INITIALIZE,
    /// queries of the maximum frame size, MAC and link state, and the packet filter. On
    /// failure everything is closed again. Thread context only.
    pub fn open(
        bus: &'b Vmbus<T, H>,
        relid: u32,
        config: &NicConfig,
        waiter: &mut impl Wait,
    ) -> Result<Self, NetError> {
        Self::open_inner(bus, relid, config, None, waiter)
    }

    /// [`Nic::open`] with reassembly storage for receive segment coalescing (RSC, devices
    /// §2.13.2): `storage` holds [`RSC_MAX_FRAME`](crate::offload::rsc::RSC_MAX_FRAME) bytes
    /// per queue (queue `i` reassembles in the `i`-th such area; [`Nic::open_queues`] opens no
    /// more queues than there are areas). With [`NicConfig::rsc`] and offloads on, RSC is
    /// announced and enabled when the host offers it ([`Offloads::rsc`]); coalesced frames are
    /// then handed to [`Nic::poll`] and the other receive calls like any frame. Storage
    /// smaller than one area leaves RSC off. Thread context only.
    pub fn open_with_rsc(
        bus: &'b Vmbus<T, H>,
        relid: u32,
        config: &NicConfig,
        storage: &'b mut [u8],
        waiter: &mut impl Wait,
    ) -> Result<Self, NetError> {
        Self::open_inner(bus, relid, config, Some(storage), waiter)
    }

    fn open_inner(
        bus: &'b Vmbus<T, H>,
        relid: u32,
        config: &NicConfig,
        rsc_storage: Option<&'b mut [u8]>,
        waiter: &mut impl Wait,
    ) -> Result<Self, NetError> {
        const { assert!(N >= 4, "room for the handshake and a few frames") };
        if config.mtu < 68 || config.mtu > MAX_JUMBO_MTU {
            return Err(NetError::InvalidArgument("MTU must be 68..=9000"));
        }
        if config.mtu > MAX_MTU && M < receive_message_for(config.mtu) {
            return Err(NetError::InvalidArgument(
                "a jumbo MTU needs a receive copy buffer (M) holding a host slot",
            ));
        }
        if config.recv_buffer_bytes < PAGE || config.send_buffer_bytes < PAGE {
            return Err(NetError::InvalidArgument("buffers of at least one page"));
        }
        waiter.restart();
        let channel = Channel::open(bus, relid, &config.channel, waiter)?;
        let mut nic = Self {
            channel,
            recv_buf: None,
            send_buf: None,
            large_buf: None,
            lso_buf: None,
            core: Core {
                info: NicInfo {
                    version: NvspVersion::V1,
                    mac: [0; 6],
                    mtu: config.mtu,
                    recv_slots: 0,
                    section_size: 0,
                    sections: 0,
                    max_packets_per_message: 1,
                    packet_alignment: 8,
                    link_speed: 0,
                    offload_caps: None,
                    offloads: Offloads::NONE,
                },
                ready: false,
                max_frame: usize::from(config.mtu) + ETHERNET_HEADER,
                recv_len: 0,
                sections: Sections::default(),
                pending: PendingCompletions::new(),
                stats: NicStats::default(),
                link_up: false,
                link_changed: false,
                next_request_id: 1,
                awaiting: None,
                reply: None,
                control_refused: None,
                cursor: None,
                vf: VfState::default(),
                host_send_table: None,
                switch_owed: false,
                large_free: 0,
                lso_free: 0,
                burst: None,
                rsc: Default::default(),
                rx_more: false,
            },
            ring: [0; RING_PACKET_BUFFER],
            msg: [0; M],
            mq: multi::MqState::new(config),
            rsc_storage,
        };
        match nic.bring_up(bus, config, waiter) {
            Ok(()) => {
                log::info!(
                    "netvsc {relid}: NVSP {:#x}, MAC {:02x?}, MTU {}, {} send sections, link {}, \
                     offloads {:?}",
                    nic.core.info.version.0,
                    nic.core.info.mac,
                    nic.core.info.mtu,
                    nic.core.info.sections,
                    if nic.core.link_up { "up" } else { "down" },
                    nic.core.info.offloads
                );
                Ok(nic)
            }
            Err(e) => {
                log::warn!("netvsc {relid}: bring-up failed: {e}");
                if nic.teardown(waiter, false) == Released::Leaked {
                    log::warn!("netvsc {relid}: memory leaked after the failed bring-up");
                }
                Err(e)
            }
        }
    }

    pub(super) fn bring_up(
        &mut self,
        bus: &'b Vmbus<T, H>,
        config: &NicConfig,
        waiter: &mut impl Wait,
    ) -> Result<(), NetError> {
        let version = self.negotiate(config.versions, waiter)?;
        self.core.info.version = version;
        if version < NvspVersion::V2 && self.core.info.mtu > MAX_MTU {
            // NVSP 1 has no NDIS config to announce a larger frame in.
            self.core.info.mtu = MAX_MTU;
            self.core.max_frame = usize::from(MAX_MTU) + ETHERNET_HEADER;
        }
        if version >= NvspVersion::V2 {
            let m = NvspNdisConfig {
                msg_type: msg::SEND_NDIS_CONFIG.into(),
                mtu: (u32::from(self.core.info.mtu) + ETHERNET_HEADER as u32).into(),
                reserved: 0.into(),
                capabilities: self.ndis_capabilities(version, config).into(),
            };
            self.channel.send(&[&padded(m.as_bytes())])?;
        }
        let (major, minor) = version.ndis_version();
        let m = NvspNdisVersion {
            msg_type: msg::SEND_NDIS_VERSION.into(),
            ndis_major: major.into(),
            ndis_minor: minor.into(),
        };
        self.channel.send(&[&padded(m.as_bytes())])?;

        // Receive buffer.
        let mut recv_bytes = config.recv_buffer_bytes;
        if version <= NvspVersion::V2 {
            recv_bytes = recv_bytes.min(LEGACY_RECV_BUFFER_MAX);
        }
        waiter.restart();
        let rb =
            HostBuffer::with_gpadl(bus, self.channel.relid(), recv_bytes.div_ceil(PAGE), waiter)?;
        let handle = rb.gpadl_handle().ok_or(NetError::HostValue("no GPADL"))?;
        self.core.recv_len = rb.len();
        self.recv_buf = Some(rb);
        let m = NvspSendBuffer {
            msg_type: msg::SEND_RECV_BUF.into(),
            gpadl_handle: handle.into(),
            id: RECV_BUFFER_ID.into(),
            padding: 0.into(),
        };
        let mut resp = [0u8; NVSP_MESSAGE_SIZE];
        let n = self.handshake_request(m.as_bytes(), &mut resp, waiter)?;
        let c = NvspRecvBufComplete::read_from_prefix(&resp[..n.min(resp.len())])
            .map_err(|_| NetError::HostValue("short SEND_RECV_BUF_COMPLETE"))?
            .0;
        if c.msg_type.get() != msg::SEND_RECV_BUF_COMPLETE {
            return Err(NetError::HostValue(
                "SEND_RECV_BUF answered with another type",
            ));
        }
        if c.status.get() != status::SUCCESS {
            return Err(NetError::HostStatus {
                what: "receive buffer",
                status: c.status.get(),
            });
        }
        let end = u64::from(c.offset.get())
            + u64::from(c.sub_alloc_size.get()) * u64::from(c.num_sub_allocs.get());
        if c.num_sections.get() != 1
            || c.sub_alloc_size.get() == 0
            || c.num_sub_allocs.get() == 0
            || u64::from(c.end_offset.get()) != end
            || end > self.core.recv_len as u64
        {
            return Err(NetError::HostValue("receive buffer section"));
        }
        self.core.info.recv_slots = c.num_sub_allocs.get();

        // Send buffer.
        waiter.restart();
        let sb = HostBuffer::with_gpadl(
            bus,
            self.channel.relid(),
            config.send_buffer_bytes.div_ceil(PAGE),
            waiter,
        )?;
        let handle = sb.gpadl_handle().ok_or(NetError::HostValue("no GPADL"))?;
        let send_len = sb.len();
        self.send_buf = Some(sb);
        let m = NvspSendBuffer {
            msg_type: msg::SEND_SEND_BUF.into(),
            gpadl_handle: handle.into(),
            id: SEND_BUFFER_ID.into(),
            padding: 0.into(),
        };
        let n = self.handshake_request(m.as_bytes(), &mut resp, waiter)?;
        let c = NvspSendBufComplete::read_from_prefix(&resp[..n.min(resp.len())])
            .map_err(|_| NetError::HostValue("short SEND_SEND_BUF_COMPLETE"))?
            .0;
        if c.msg_type.get() != msg::SEND_SEND_BUF_COMPLETE {
            return Err(NetError::HostValue(
                "SEND_SEND_BUF answered with another type",
            ));
        }
        if c.status.get() != status::SUCCESS {
            return Err(NetError::HostStatus {
                what: "send buffer",
                status: c.status.get(),
            });
        }
        let size = c.section_size.get() as usize;
        let needed =
            rndis::packet_message_len(usize::from(MAX_MTU) + ETHERNET_HEADER + send::PPI_BYTES);
        if size < needed || size > send_len {
            return Err(NetError::HostValue("send section size"));
        }
        let count = (send_len / size).min(MAX_SECTIONS);
        self.core.info.section_size = size as u32;
        self.core.info.sections = count as u16;
        self.core.sections = Sections::new(count);
        if rndis::packet_message_len(self.core.max_frame + send::PPI_BYTES) > size {
            // Frames that do not fit a section go as page buffers (devices §2.9).
            let pages = large_slot_bytes(self.core.max_frame) / PAGE * LARGE_SLOTS;
            self.large_buf = Some(HostBuffer::new(bus, pages)?);
            self.core.large_free = ((1u32 << LARGE_SLOTS) - 1) as u16;
        }

        // RNDIS.
        let id = self.next_id();
        let mut m = [0u8; 64];
        let len = rndis::write_initialize(&mut m, id, 0x4000).ok_or(NetError::HostValue("init"))?;
        let r = self.rndis_request(id, &m[..len], waiter)?;
        let init = match (r.msg_type, r.init) {
            (rndis_msg::INITIALIZE_CMPLT, Some(i)) => i,
            _ => return Err(NetError::HostValue("INITIALIZE answered with another type")),
        };
        if init.status.get() != rndis_status::SUCCESS {
            return Err(NetError::HostStatus {
                what: "RNDIS INITIALIZE",
                status: init.status.get(),
            });
        }
        if init.medium.get() != 0 {
            return Err(NetError::HostValue("RNDIS medium is not 802.3"));
        }
        // Packing limits (devices §2.9): 0 packets means no packing; the alignment factor
        // is a power of two, 8 bytes at least (RNDIS messages stay 8-byte aligned).
        self.core.info.max_packets_per_message =
            init.max_packets_per_message.get().clamp(1, MAX_PACKED);
        let factor = init.packet_alignment_factor.get();
        if factor > MAX_PACKET_ALIGNMENT.trailing_zeros() {
            return Err(NetError::HostValue("RNDIS packet alignment factor"));
        }
        self.core.info.packet_alignment = (1u32 << factor).max(8);

        let (frame_size, _) = self.query_u32(oid::GEN_MAXIMUM_FRAME_SIZE, waiter)?;
        if frame_size < 68 {
            return Err(NetError::HostValue("maximum frame size below 68"));
        }
        if frame_size < u32::from(self.core.info.mtu) {
            // Page-buffer slots sized for the configured MTU stay large enough.
            self.core.info.mtu = frame_size as u16;
            self.core.max_frame = frame_size as usize + ETHERNET_HEADER;
        }
        let mac = self.query(oid::PERMANENT_ADDRESS, waiter)?;
        if mac.info_len < 6 {
            return Err(NetError::HostValue("MAC address shorter than 6 bytes"));
        }
        self.core.info.mac.copy_from_slice(&mac.info[..6]);
        if config.offloads {
            self.negotiate_offloads(self.wants_rsc(config), waiter)?;
            self.allocate_lso(bus);
        }
        let (media, _) = self.query_u32(oid::GEN_MEDIA_CONNECT_STATUS, waiter)?;
        self.core.link_up = match media {
            0 => true,
            1 => false,
            _ => return Err(NetError::HostValue("media connect status")),
        };
        if version >= NvspVersion::V5 {
            // Optional: a host that does not answer it keeps the speed unknown.
            if let Ok((speed, _)) = self.query_u32(oid::GEN_LINK_SPEED, waiter) {
                self.core.info.link_speed = speed;
            }
        }
        self.set_u32(oid::GEN_CURRENT_PACKET_FILTER, config.packet_filter, waiter)?;
        self.core.ready = true;
        self.core.link_changed = false;
        Ok(())
    }

    /// NVSP INIT with each candidate in turn; the first accepted one is returned.
    pub(super) fn negotiate(
        &mut self,
        versions: &[NvspVersion],
        waiter: &mut impl Wait,
    ) -> Result<NvspVersion, NetError> {
        for &v in versions {
            let m = NvspInit {
                msg_type: msg::INIT.into(),
                min_protocol_version: v.0.into(),
                max_protocol_version: v.0.into(),
            };
            let mut resp = [0u8; NVSP_MESSAGE_SIZE];
            let n = self.handshake_request(m.as_bytes(), &mut resp, waiter)?;
            let Ok((c, _)) = NvspInitComplete::read_from_prefix(&resp[..n.min(resp.len())]) else {
                return Err(NetError::HostValue("short INIT_COMPLETE"));
            };
            if c.msg_type.get() != msg::INIT_COMPLETE {
                return Err(NetError::HostValue("INIT answered with another type"));
            }
            if c.status.get() == status::SUCCESS {
                return Ok(v);
            }
            log::info!("netvsc: NVSP {:#x} refused ({})", v.0, c.status.get());
        }
        Err(NetError::NoVersion)
    }

    /// Sends an NVSP request (padded to 40 bytes) and waits for its completion; packets that
    /// arrive meanwhile are handled (receive completions sent afterwards).
    pub(super) fn handshake_request(
        &mut self,
        m: &[u8],
        resp: &mut [u8],
        waiter: &mut impl Wait,
    ) -> Result<usize, NetError> {
        waiter.restart();
        let Self {
            channel,
            recv_buf,
            core,
            ring,
            msg: scratch,
            ..
        } = self;
        let rb = recv_buf.as_ref();
        let read = |off: usize, b: &mut [u8]| match rb {
            Some(r) => r.read_at(off, b),
            None => Err(vmbus_guest::OutOfBounds {
                offset: off,
                len: b.len(),
                size: 0,
            }),
        };
        let view = HostBufferView { read: &read };
        // Nobody takes frames while the answer is awaited (a SUBCHANNEL request comes after
        // the NIC is ready): they are dropped and counted as not taken (`rx_not_ready`).
        let ready = core::mem::replace(&mut core.ready, false);
        let n = channel.transact(
            &[&padded(m)],
            Ctx::Handshake,
            resp,
            ring,
            |r| core.on_received(r, Some(&view), scratch, false),
            waiter,
        );
        self.core.ready = ready;
        flush_completions(&mut self.channel, &mut self.core);
        Ok(n?)
    }
}
