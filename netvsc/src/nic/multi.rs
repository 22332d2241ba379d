//! Multi-queue bring-up and teardown (devices §2.15): the RSS capabilities query, the NVSP
//! SUBCHANNEL request, opening the offered sub-channels, the default send table, the RSS
//! parameters, and handing the queues out.
//!
//! What real guests do, and this driver too: ask (NVSP ≥ 5) for `min(wanted, the host's
//! receive queues, 64) − 1` sub-channels; a host that refuses (OpenVMM is all-or-nothing) or
//! answers nonsense leaves the NIC single-queue, and [`QueueSetup::single`] says why. The
//! send table starts as `i mod n` as soon as the sub-channels are open and is replaced by
//! the host's SEND_INDIRECTION_TABLE whenever one arrives (never waited for). A failed RSS
//! SET keeps the queues (Linux does the same): the host then receives everything on the
//! primary, while sends still spread.

use super::queue::Buffers;
use super::*;
use crate::protocol::{
    MAX_CHANNELS, NDIS_OBJECT_TYPE_RSS_CAPABILITIES, NDIS_RSS_CAPS_SIZE_REVISION_2,
    NDIS_RSS_REVISION_2, NdisObjectHeader, NdisRssCapabilities, NvspSubchannel,
    OID_GEN_RECEIVE_SCALE_CAPABILITIES, OID_GEN_RECEIVE_SCALE_PARAMETERS, RSS_KEY_SIZE,
    SUBCHANNEL_ALLOCATE, rss_flags, rss_hash, rss_parameters_len,
};
use crate::rss::{self, MICROSOFT_RSS_KEY, RssCapabilities};
use core::sync::atomic::Ordering;

/// How many queues to use (devices §2.15).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MultiQueueConfig {
    /// Most queues (channels, primary included) to use — typically the number of VPs that
    /// will service the NIC. 1 (the default) keeps the NIC single-queue.
    pub max_queues: u16,
    /// The Toeplitz key given to the host (default: [`MICROSOFT_RSS_KEY`]).
    pub rss_key: [u8; RSS_KEY_SIZE],
    /// VP the host interrupts for sub-channel `i`: `queue_vps[i]`; a missing entry (and
    /// entry 0: the primary is opened with [`NicConfig::channel`]) means the VP of
    /// [`NicConfig::channel`].
    pub queue_vps: &'static [u32],
}

impl Default for MultiQueueConfig {
    fn default() -> Self {
        Self {
            max_queues: 1,
            rss_key: MICROSOFT_RSS_KEY,
            queue_vps: &[],
        }
    }
}

/// Why a NIC stayed single-queue.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SingleQueue {
    /// The configuration asks for one queue.
    NotRequested,
    /// The host negotiated NVSP below 5, which has no sub-channels.
    NvspTooOld,
    /// No place for a sub-queue (empty storage, or a send buffer of one section).
    NoStorage,
    /// The RSS capabilities query failed or its answer was unusable.
    NoRssCapabilities(NetError),
    /// The host has one receive queue.
    HostHasOneQueue,
    /// The host refused the SUBCHANNEL request (an all-or-nothing host refuses what it
    /// cannot grant whole).
    Refused {
        /// Sub-channels asked for.
        asked: u32,
        /// NVSP status of the completion.
        status: u32,
    },
    /// The host granted more sub-channels than asked for (Linux refuses those too).
    OverGranted {
        /// Sub-channels asked for.
        asked: u32,
        /// Sub-channels granted.
        granted: u32,
    },
    /// The SUBCHANNEL completion was not one.
    BadCompletion,
    /// The host granted sub-channels but none could be opened (none offered in time, or the
    /// opens failed).
    NoneOpened {
        /// Sub-channels granted.
        granted: u32,
    },
}

/// What [`Nic::open_queues`] set up.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct QueueSetup {
    /// Queues in use, primary included.
    pub queues: usize,
    /// Sub-channels the host granted.
    pub granted: u32,
    /// Why the NIC stayed single-queue, if it did.
    pub single: Option<SingleQueue>,
    /// The RSS parameters SET: `Ok` when the host took them (receive spreads), otherwise
    /// why not (the queues stay; the host receives on the primary only).
    pub rss: Result<(), NetError>,
}

impl QueueSetup {
    fn single(reason: SingleQueue) -> Self {
        Self {
            queues: 1,
            granted: 0,
            single: Some(reason),
            rss: Ok(()),
        }
    }
}

/// The NIC's multi-queue state.
pub(super) struct MqState {
    pub(super) shared: Shared,
    pub(super) config: MultiQueueConfig,
    pub(super) channel: ChannelConfig,
    /// Sub-queues open in the caller's storage.
    pub(super) subs: usize,
    /// The host took RSS parameters that are still in force.
    pub(super) rss: bool,
}

impl MqState {
    pub(super) fn new(config: &NicConfig) -> Self {
        Self {
            shared: Shared::new(),
            config: config.multi_queue.clone(),
            channel: config.channel,
            subs: 0,
            rss: false,
        }
    }
}

/// The caller's storage of sub-queues.
type Subs<'s, 'b, T, H, const N: usize, const M: usize> = [Option<SubQueue<'b, T, H, N, M>>];

impl<'b, T: Transport, H: Hal, const N: usize, const M: usize> Nic<'b, T, H, N, M> {
    /// Opens like [`Nic::open`], then the queues of [`Nic::open_queues`] into `subs`.
    /// Thread context only.
    pub fn open_multi(
        bus: &'b Vmbus<T, H>,
        relid: u32,
        config: &NicConfig,
        subs: &mut Subs<'_, 'b, T, H, N, M>,
        waiter: &mut impl Wait,
    ) -> Result<(Self, QueueSetup), NetError> {
        let mut nic = Self::open(bus, relid, config, waiter)?;
        match nic.open_queues(subs, waiter) {
            Ok(setup) => Ok((nic, setup)),
            Err(e) => {
                waiter.restart();
                if nic.close_all(subs, waiter) == Released::Leaked {
                    log::warn!("netvsc {relid}: memory leaked after the failed queue set-up");
                }
                Err(e)
            }
        }
    }

    /// Sets up multi-queue (devices §2.15) with the sub-queues kept in `subs` (sub-channel
    /// `i` goes to `subs[i - 1]`; at most `subs.len()` are asked for): on NVSP ≥ 5, queries
    /// the RSS capabilities, asks for `min(max_queues, receive queues, 64, sections) − 1`
    /// sub-channels, opens those the host offers, divides the send sections and page-buffer
    /// slots among the queues, starts the send table as `i mod n` and sets the RSS
    /// parameters (hash types IPv4, TCP/IPv4, IPv6, TCP/IPv6; the configured key; a 128-entry
    /// table `i mod n`). A host that refuses leaves the NIC single-queue and the result says
    /// why; `Err` only when the primary channel failed (sub-queues opened before that stay in
    /// `subs`: close them with [`Nic::close_all`]). Frames the primary receives meanwhile are
    /// dropped, as during any control request. Thread context only.
    pub fn open_queues(
        &mut self,
        subs: &mut Subs<'_, 'b, T, H, N, M>,
        waiter: &mut impl Wait,
    ) -> Result<QueueSetup, NetError> {
        if self.mq.subs > 0 || subs.iter().any(Option::is_some) {
            return Err(NetError::InvalidArgument("queues are already open"));
        }
        let relid = self.channel.relid();
        let mut wanted = usize::from(self.mq.config.max_queues)
            .min(1 + subs.len())
            .min(usize::from(self.core.info.sections))
            .min(MAX_CHANNELS);
        if self.core.info.offloads.rsc {
            // The host coalesces on every channel: each queue needs a reassembly area.
            wanted = wanted.min(self.rsc_areas());
        }
        if self.large_buf.is_some() {
            // Frames larger than a section go as page buffers: each queue needs a slot of
            // its own (`divide_sections`), or its large frames would wait forever.
            wanted = wanted.min(LARGE_SLOTS);
        }
        let single = |reason| {
            log::info!("netvsc {relid}: single queue ({reason:?})");
            Ok(QueueSetup::single(reason))
        };
        if self.mq.config.max_queues <= 1 {
            return single(SingleQueue::NotRequested);
        }
        if self.core.info.version < NvspVersion::V5 {
            return single(SingleQueue::NvspTooOld);
        }
        if wanted <= 1 {
            return single(SingleQueue::NoStorage);
        }
        let caps = match self.query_rss_capabilities(waiter) {
            Ok(c) => c,
            Err(e) if self.channel.is_alive() => {
                return single(SingleQueue::NoRssCapabilities(e));
            }
            Err(e) => return Err(e),
        };
        let channels = caps.channels_for(wanted);
        if channels <= 1 {
            return single(SingleQueue::HostHasOneQueue);
        }
        let asked = (channels - 1) as u32;
        let m = NvspSubchannel {
            msg_type: msg::SUBCHANNEL.into(),
            operation_or_status: SUBCHANNEL_ALLOCATE.into(),
            num_subchannels: asked.into(),
        };
        let mut resp = [0u8; NVSP_MESSAGE_SIZE];
        let n = self.handshake_request(m.as_bytes(), &mut resp, waiter)?;
        let granted = match NvspSubchannel::read_from_prefix(&resp[..n.min(resp.len())]) {
            Ok((c, _)) if c.msg_type.get() == msg::SUBCHANNEL => {
                if c.operation_or_status.get() != status::SUCCESS {
                    return single(SingleQueue::Refused {
                        asked,
                        status: c.operation_or_status.get(),
                    });
                }
                c.num_subchannels.get()
            }
            _ => return single(SingleQueue::BadCompletion),
        };
        if granted > asked {
            return single(SingleQueue::OverGranted { asked, granted });
        }
        let opened = self.open_subchannels(granted as usize, subs, waiter);
        if opened == 0 {
            return single(SingleQueue::NoneOpened { granted });
        }
        let queues = 1 + opened;
        self.mq.subs = opened;
        self.mq.shared.table.set_default(queues);
        self.divide_sections(queues, subs);
        let rss = self.set_rss(queues, caps.table_entries(), waiter);
        if let Err(e) = &rss {
            log::warn!(
                "netvsc {relid}: RSS parameters not taken ({e}): receive stays on the primary"
            );
            if !self.channel.is_alive() {
                return Err(*e);
            }
        }
        log::info!(
            "netvsc {relid}: {queues} queues ({granted} of {asked} sub-channels granted), send table {:?}",
            self.mq.shared.table.entries()
        );
        Ok(QueueSetup {
            queues,
            granted,
            single: None,
            rss,
        })
    }

    /// OID_GEN_RECEIVE_SCALE_CAPABILITIES with a revision-2 header as input (Linux and FreeBSD
    /// send one), parsed by [`rss::parse_rss_capabilities`].
    fn query_rss_capabilities(
        &mut self,
        waiter: &mut impl Wait,
    ) -> Result<RssCapabilities, NetError> {
        let input = NdisRssCapabilities {
            header: NdisObjectHeader {
                object_type: NDIS_OBJECT_TYPE_RSS_CAPABILITIES,
                revision: NDIS_RSS_REVISION_2,
                size: NDIS_RSS_CAPS_SIZE_REVISION_2.into(),
            },
            ..Default::default()
        };
        let id = self.next_id();
        let mut m = [0u8; 64];
        let len = rndis::write_oid_request(
            &mut m,
            rndis_msg::QUERY,
            id,
            OID_GEN_RECEIVE_SCALE_CAPABILITIES,
            input.as_bytes(),
        )
        .ok_or(NetError::InvalidArgument("RSS capabilities query"))?;
        let r = self.rndis_request(id, &m[..len], waiter)?;
        if r.msg_type != rndis_msg::QUERY_CMPLT {
            return Err(NetError::HostValue("QUERY answered with another type"));
        }
        if r.status != rndis_status::SUCCESS {
            return Err(NetError::HostStatus {
                what: "RSS capabilities",
                status: r.status,
            });
        }
        rss::parse_rss_capabilities(&r.info[..r.info_len]).map_err(NetError::Rss)
    }

    /// Opens up to `granted` offered sub-channels, each into `subs[index - 1]`, with the
    /// target VP of its index; waits (bounded by `waiter`) for the offers. Offers with an
    /// index outside 1..=granted are left alone (Linux ignores them too). Only a gap-free
    /// run of indices 1..=k is kept (the host's tables name queues by index); anything
    /// opened beyond a gap is closed again. Returns k.
    fn open_subchannels(
        &mut self,
        granted: usize,
        subs: &mut Subs<'_, 'b, T, H, N, M>,
        waiter: &mut impl Wait,
    ) -> usize {
        let bus = self.channel.bus();
        let primary = self.channel.relid();
        let granted = granted.min(subs.len()).min(MAX_CHANNELS - 1);
        let mut tried = 0u64;
        waiter.restart();
        while (tried.count_ones() as usize) < granted {
            bus.poll();
            let next = bus.with_offers(|t| {
                t.free_subchannels(primary)
                    .map(|o| (usize::from(o.subchannel_index), o.relid))
                    .filter(|(i, _)| (1..=granted).contains(i) && tried & (1 << i) == 0)
                    .min()
            });
            let Some((index, sub_relid)) = next else {
                if waiter.wait().is_err() {
                    break;
                }
                continue;
            };
            tried |= 1 << index;
            let mut config = self.mq.channel;
            if let Some(&vp) = self.mq.config.queue_vps.get(index) {
                config.target_vp = Some(vp);
            }
            waiter.restart();
            match Channel::open(bus, sub_relid, &config, waiter) {
                Ok(channel) => {
                    subs[index - 1] = Some(SubQueue {
                        index: index as u16,
                        channel,
                        core: Core::for_queue(&self.core, Sections::default(), 0),
                        ring: [0; RING_PACKET_BUFFER],
                        msg: [0; M],
                    });
                }
                Err(e) => log::warn!("netvsc {primary}: sub-channel {index} not opened: {e}"),
            }
            waiter.restart();
        }
        let run = subs.iter().take_while(|s| s.is_some()).count();
        for s in subs.iter_mut().skip(run) {
            if let Some(q) = s.take() {
                log::warn!(
                    "netvsc {primary}: sub-channel {} beyond a gap closed",
                    q.index
                );
                waiter.restart();
                let _ = q.channel.close(waiter);
            }
        }
        run
    }

    /// Gives each sub-queue its share of the send sections (a contiguous range) and of the
    /// page-buffer slots (every `queues`-th); what is in flight on the primary stays its.
    fn divide_sections(&mut self, queues: usize, subs: &mut Subs<'_, 'b, T, H, N, M>) {
        let count = usize::from(self.core.info.sections);
        for q in subs.iter_mut().flatten() {
            let i = usize::from(q.index);
            q.core.sections = self
                .core
                .sections
                .take_range(i * count / queues..(i + 1) * count / queues);
            let mine = (0..LARGE_SLOTS)
                .filter(|s| s % queues == i)
                .fold(0u16, |m, s| m | 1 << s);
            q.core.large_free = self.core.large_free & mine;
            self.core.large_free &= !mine;
        }
    }

    /// OID_GEN_RECEIVE_SCALE_PARAMETERS: Linux's hash types, the configured key, an
    /// `entries`-entry table `i mod queues` (or, `queues` = 0, RSS disabled).
    fn set_rss(
        &mut self,
        queues: usize,
        entries: usize,
        waiter: &mut impl Wait,
    ) -> Result<(), NetError> {
        let (flags, hash) = if queues == 0 {
            (rss_flags::DISABLE_RSS, 0)
        } else {
            (0, rss_hash::LINUX_DEFAULT)
        };
        let key = self.mq.config.rss_key;
        let mut info = [0u8; rss_parameters_len(crate::protocol::INDIRECTION_TABLE_ENTRIES)];
        let len = rss::write_rss_parameters(
            &mut info,
            flags,
            hash,
            entries,
            |i| (i % queues.max(1)) as u32,
            &key,
        )
        .ok_or(NetError::InvalidArgument("RSS indirection table size"))?;
        let id = self.next_id();
        let mut m = [0u8; size_of::<crate::protocol::RndisOidRequest>()
            + rss_parameters_len(crate::protocol::INDIRECTION_TABLE_ENTRIES)];
        let mlen = rndis::write_oid_request(
            &mut m,
            rndis_msg::SET,
            id,
            OID_GEN_RECEIVE_SCALE_PARAMETERS,
            &info[..len],
        )
        .ok_or(NetError::InvalidArgument("RSS parameters"))?;
        self.mq.shared.key = key;
        let r = self.rndis_request(id, &m[..mlen], waiter)?;
        if r.msg_type != rndis_msg::SET_CMPLT {
            return Err(NetError::HostValue("SET answered with another type"));
        }
        if r.status != rndis_status::SUCCESS {
            return Err(NetError::HostStatus {
                what: "RSS parameters",
                status: r.status,
            });
        }
        self.mq.rss = queues > 0;
        self.mq.shared.hash_info.store(hash, Ordering::Release);
        Ok(())
    }

    /// Queues in use, primary included.
    pub fn queue_count(&self) -> usize {
        1 + self.mq.subs
    }

    /// What the queues share: the send table and the RSS settings.
    pub fn shared(&self) -> &Shared {
        &self.mq.shared
    }

    /// Queue `index` (0 = the primary channel, otherwise the sub-queue in `subs`) as a
    /// [`Queue`]. Interrupt-safe.
    pub fn queue<'n>(
        &'n mut self,
        subs: &'n mut Subs<'_, 'b, T, H, N, M>,
        index: usize,
    ) -> Option<Queue<'n, 'b, T, H, N, M>> {
        if index == 0 {
            return Some(self.lane());
        }
        let bufs = Buffers {
            recv_buf: &self.recv_buf,
            send_buf: &self.send_buf,
            large_buf: &self.large_buf,
        };
        let s = subs.get_mut(index - 1)?.as_mut()?;
        let rsc = super::offload::rsc_area(self.rsc_storage.as_deref_mut(), index);
        Some(
            Queue::new(
                s.index,
                &mut s.channel,
                &mut s.core,
                &mut s.ring,
                &mut s.msg,
                bufs,
                &self.mq.shared,
            )
            .with_rsc(rsc),
        )
    }

    /// Every queue at once, one [`Queue`] per channel (the primary first), each borrowing
    /// only its own channel and state: hand queue `i` to VP `i` and drive them concurrently
    /// (each is `Send` when the bus is `Sync`). The control path ([`Nic::keepalive`],
    /// [`Nic::close_all`]) waits until the queues are given back. Interrupt-safe.
    pub fn split<'n>(
        &'n mut self,
        subs: &'n mut Subs<'_, 'b, T, H, N, M>,
    ) -> impl Iterator<Item = Queue<'n, 'b, T, H, N, M>> {
        let Self {
            channel,
            recv_buf,
            send_buf,
            large_buf,
            core,
            ring,
            msg,
            mq,
            rsc_storage,
            ..
        } = self;
        let shared = &mq.shared;
        let bufs = Buffers {
            recv_buf,
            send_buf,
            large_buf,
        };
        // Queue i reassembles in area i; sub-queue i sits in subs[i - 1].
        let mut areas = rsc_storage
            .as_deref_mut()
            .unwrap_or_default()
            .chunks_exact_mut(crate::offload::rsc::RSC_MAX_FRAME)
            .map(Some)
            .chain(core::iter::repeat_with(|| None));
        let area = areas.next().flatten().unwrap_or_default();
        let primary = Queue::new(0, channel, core, ring, msg, bufs, shared).with_rsc(area);
        let subs = subs
            .iter_mut()
            .zip(areas)
            .filter_map(|(s, a)| Some((s.as_mut()?, a)));
        core::iter::once(primary).chain(subs.map(move |(s, area)| {
            Queue::new(
                s.index,
                &mut s.channel,
                &mut s.core,
                &mut s.ring,
                &mut s.msg,
                bufs,
                shared,
            )
            .with_rsc(area.unwrap_or_default())
        }))
    }

    /// Sends `frame` on the queue the send table names for it ([`Shared::queue_for_frame`]):
    /// where the host expects that flow. Interrupt-safe.
    pub fn send_steered(
        &mut self,
        subs: &mut Subs<'_, 'b, T, H, N, M>,
        frame: &[u8],
    ) -> Result<usize, NetError> {
        let q = self.mq.shared.queue_for_frame(frame);
        let mut queue = self.queue(subs, q).ok_or(NetError::InvalidArgument(
            "the send table names a queue that is not open",
        ))?;
        queue.send_frame(frame)?;
        Ok(q)
    }

    /// Polls every queue with `budget` each, handing each frame to `on_frame` with its queue's
    /// index. Returns whether any queue may have more; on a queue's error the other queues
    /// are still polled and the first error is returned — then ask
    /// [`Nic::queues_pending`] whether the others left packets waiting (no interrupt
    /// announces those). Interrupt-safe.
    pub fn poll_queues(
        &mut self,
        subs: &mut Subs<'_, 'b, T, H, N, M>,
        budget: usize,
        mut on_frame: impl FnMut(usize, &[u8]),
    ) -> Result<bool, NetError> {
        let mut more = false;
        let mut first_error = None;
        for mut q in self.split(subs) {
            let i = q.index();
            match q.poll(budget, |f| on_frame(i, f)) {
                Ok(m) => more |= m,
                Err(e) => {
                    first_error.get_or_insert(e);
                }
            }
        }
        first_error.map_or(Ok(more), Err)
    }

    /// Whether the last poll or receive of any queue (the primary's and those in `subs`)
    /// left host packets waiting ([`Queue::receive_pending`]): poll again before waiting
    /// for an interrupt.
    pub fn queues_pending(&self, subs: &Subs<'_, 'b, T, H, N, M>) -> bool {
        self.core.rx_more || subs.iter().flatten().any(|q| q.core.rx_more)
    }

    /// Back to one queue: RSS disabled on the host (when it was set and the primary is
    /// alive), the send table reset, every sub-queue closed (its channel first flushing
    /// nothing: queued frames are lost), its free sections and slots given back to the
    /// primary — and the ones its failed sends held too, when the close is confirmed.
    /// Thread context only.
    pub fn close_queues(
        &mut self,
        subs: &mut Subs<'_, 'b, T, H, N, M>,
        waiter: &mut impl Wait,
    ) -> Released {
        let relid = self.channel.relid();
        if self.mq.rss && self.channel.is_alive() && self.core.ready {
            waiter.restart();
            if let Err(e) = self.set_rss(0, crate::protocol::INDIRECTION_TABLE_ENTRIES, waiter) {
                log::warn!("netvsc {relid}: RSS not disabled: {e}");
            }
        }
        self.mq.rss = false;
        self.mq.shared.hash_info.store(0, Ordering::Release);
        self.mq.shared.table.set_default(1);
        let mut released = Released::Freed;
        for s in subs.iter_mut().rev() {
            let Some(q) = s.take() else { continue };
            let SubQueue { channel, core, .. } = q;
            let mut held = Sections::default();
            let mut held_slots = 0u16;
            waiter.restart();
            let r = channel.close_with(waiter, |_, ctx, _| match ctx {
                Ctx::Data { section, .. } | Ctx::Control { section } => held.release(section),
                Ctx::Large { slot } => held_slots |= 1 << slot,
                // LSO sends go on the primary channel only.
                Ctx::Handshake | Ctx::DataPath | Ctx::Lso { .. } => {}
            });
            self.core.sections.merge(&core.sections);
            self.core.large_free |= core.large_free;
            if r == Released::Freed {
                // The host confirmed the channel is gone: nothing it named is in use.
                self.core.sections.merge(&held);
                self.core.large_free |= held_slots;
                if let Some(open) = core.burst {
                    self.core.sections.release(open.section);
                }
            } else {
                released = Released::Leaked;
            }
        }
        self.mq.subs = 0;
        released
    }

    /// Closes the sub-queues ([`Nic::close_queues`], without disabling RSS first), then the
    /// NIC ([`Nic::close`]). Thread context only.
    pub fn close_all(
        mut self,
        subs: &mut Subs<'_, 'b, T, H, N, M>,
        waiter: &mut impl Wait,
    ) -> Released {
        self.mq.rss = false;
        let subs_released = self.close_queues(subs, waiter);
        self.close(waiter).and(subs_released)
    }
}
