//! An open channel (vmbus-core §5.8, §7, §8): its two rings in one GPADL, packet send
//! (in-band, with or without completion, GPA-direct), batched receive, completions matched
//! through the [`Requestor`], guest→host signalling, and close.

mod open;

pub use open::PendingOpen;

use crate::connection::{ChannelLiveness, Connection};
use crate::error::ChannelError;
use crate::hal::{HV_PAGE_SIZE, Hal};
use crate::offers::OfferInfo;
use crate::requestor::{RequestId, RequestMode, RequestStatus, Requestor};
use crate::ring::{
    Corrupt, GpaRange, IncomingPacket, OutgoingPacket, PacketKind, RawRingMemory, ReadError,
    RingReader, RingWriter, WriteError,
};
use crate::transport::Transport;
use crate::wait::Wait;
use core::ptr::NonNull;

/// Most PFNs one GPA-direct packet may name.
pub const MAX_GPA_DIRECT_PFNS: usize = 64;
/// Most caller buffers (GPA ranges) in one GPA-direct packet.
pub const MAX_GPA_DIRECT_RANGES: usize = 16;
/// Drain rounds per [`Channel::poll`] before it returns to the caller.
const MAX_DRAIN_ROUNDS: usize = 16;

/// Ring sizes and open parameters.
#[derive(Clone, Copy, Debug)]
pub struct ChannelConfig {
    /// Pages of the guest→host ring, control page included (≥ 2). This is also the
    /// OPENCHANNEL downstream ring page offset.
    pub outbound_pages: usize,
    /// Pages of the host→guest ring, control page included (≥ 2).
    pub inbound_pages: usize,
    /// VP the host interrupts for this channel; `None` = the transport's VP.
    pub target_vp: Option<u32>,
    /// Device-specific OPENCHANNEL user data (@28).
    pub user_data: [u8; 120],
}

impl Default for ChannelConfig {
    fn default() -> Self {
        Self {
            outbound_pages: 16,
            inbound_pages: 16,
            target_vp: None,
            user_data: [0; 120],
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Health {
    Open,
    Rescinded,
    Broken(Corrupt),
    Gone,
}

/// A packet handed to [`Channel::poll`]'s callback.
#[derive(Debug)]
pub enum Received<'a> {
    /// A packet from the host that is not a completion of a guest request (in-band data,
    /// transfer pages, GPA direct, ...). If it requests a completion, the device layer sends
    /// it with [`Channel::send_completion`].
    Packet(IncomingPacket<'a>),
    /// The completion of a guest request.
    Completion {
        /// The request.
        request: RequestId,
        /// The cookie given when it was sent.
        cookie: u64,
        /// The completion packet (payload includes padding).
        packet: IncomingPacket<'a>,
    },
    /// A callback-mode request that will never complete: the channel died (rescind, close,
    /// corruption) with it in flight. Reported once, before `poll` returns the channel error.
    Failed {
        /// The request.
        request: RequestId,
        /// The cookie given when it was sent.
        cookie: u64,
        /// Why it failed.
        error: ChannelError,
    },
}

/// An open VMBus channel. Owned by its device driver; every operation takes the
/// [`Connection`] it was opened on. Close it with [`Channel::close`]; dropping it leaks its
/// ring pages (the host may still map them).
#[derive(Debug)]
pub struct Channel {
    info: OfferInfo,
    generation: u32,
    pages: NonNull<u8>,
    total_pages: usize,
    gpadl: u32,
    writer: RingWriter<RawRingMemory>,
    reader: RingReader<RawRingMemory>,
    requests: Requestor,
    health: Health,
    unknown_completions: u64,
    /// The last poll left packets in the inbound ring.
    more: bool,
}

// SAFETY: `pages` names the channel's own ring allocation, used only through `&mut self`
// (the rings are `Send` already); moving the channel to another thread moves that ownership.
unsafe impl Send for Channel {}

impl Channel {
    /// The offer this channel was opened for.
    pub fn offer(&self) -> &OfferInfo {
        &self.info
    }

    /// The relid.
    pub fn relid(&self) -> u32 {
        self.info.relid
    }

    /// Handle of the ring GPADL.
    pub fn ring_gpadl(&self) -> u32 {
        self.gpadl
    }

    /// Requests waiting for a completion.
    pub fn requests_in_flight(&self) -> usize {
        self.requests.in_flight()
    }

    /// Completions whose transaction id matched no request (a misbehaving host).
    pub fn unknown_completions(&self) -> u64 {
        self.unknown_completions
    }

    /// Checks the channel is usable; on the first sight of a rescind, unload or corruption
    /// every request in flight completes with the matching error.
    fn check<T: Transport, H: Hal>(&mut self, conn: &Connection<T, H>) -> Result<(), ChannelError> {
        if self.health == Health::Open {
            match conn.channel_status(self.info.relid, self.generation) {
                ChannelLiveness::Live => return Ok(()),
                ChannelLiveness::Rescinded => self.fail(Health::Rescinded),
                ChannelLiveness::Gone => self.fail(Health::Gone),
            }
        }
        Err(self.health_error())
    }

    fn health_error(&self) -> ChannelError {
        match self.health {
            Health::Open => ChannelError::NotOpen,
            Health::Rescinded => ChannelError::Rescinded,
            Health::Broken(c) => ChannelError::Corrupt(c),
            Health::Gone => ChannelError::Closed,
        }
    }

    fn fail(&mut self, health: Health) {
        self.health = health;
        let err = self.health_error();
        self.requests.fail_all(err, |_, _| {});
    }

    fn signal<T: Transport, H: Hal>(&self, conn: &Connection<T, H>) -> Result<(), ChannelError> {
        conn.signal(&self.info).map_err(ChannelError::from)
    }

    fn write_and_signal<T: Transport, H: Hal>(
        &mut self,
        conn: &Connection<T, H>,
        packet: &OutgoingPacket<'_>,
    ) -> Result<(), ChannelError> {
        match self.writer.send(packet) {
            Ok(signal) => {
                if signal.is_needed() {
                    self.signal(conn)?;
                }
                Ok(())
            }
            Err(WriteError::Full { needed }) => {
                // Ask the host to signal when the space is there (§7.8 step 7).
                match self.writer.request_space(needed) {
                    Ok(true) => {
                        let signal = self.writer.send(packet).map_err(|e| self.write_error(e))?;
                        if signal.is_needed() {
                            self.signal(conn)?;
                        }
                        Ok(())
                    }
                    Ok(false) => Err(ChannelError::Full),
                    Err(c) => {
                        self.fail(Health::Broken(c));
                        Err(ChannelError::Corrupt(c))
                    }
                }
            }
            Err(e) => Err(self.write_error(e)),
        }
    }

    fn write_error(&mut self, e: WriteError) -> ChannelError {
        match e {
            WriteError::Full { .. } => ChannelError::Full,
            WriteError::Corrupt(c) => {
                self.fail(Health::Broken(c));
                ChannelError::Corrupt(c)
            }
            other => ChannelError::InvalidPacket(other),
        }
    }

    /// Sends an in-band packet (type 6) without completion request.
    pub fn send<T: Transport, H: Hal>(
        &mut self,
        conn: &Connection<T, H>,
        payload: &[&[u8]],
    ) -> Result<(), ChannelError> {
        self.check(conn)?;
        self.write_and_signal(conn, &OutgoingPacket::in_band(0, false, payload))
    }

    /// Sends an in-band packet (type 6) without completion request, carrying the host's
    /// `transaction_id`: the reply form of protocols where the host starts every transaction
    /// and the guest answers in kind (integration services).
    pub fn send_reply<T: Transport, H: Hal>(
        &mut self,
        conn: &Connection<T, H>,
        transaction_id: u64,
        payload: &[&[u8]],
    ) -> Result<(), ChannelError> {
        self.check(conn)?;
        self.write_and_signal(
            conn,
            &OutgoingPacket::in_band(transaction_id, false, payload),
        )
    }

    /// Sends an in-band packet with completion requested; the completion is matched by the
    /// returned id. `mode` says whether it goes to the poll callback or is kept for
    /// [`Channel::take_completion`].
    pub fn send_request<T: Transport, H: Hal>(
        &mut self,
        conn: &Connection<T, H>,
        payload: &[&[u8]],
        cookie: u64,
        mode: RequestMode,
    ) -> Result<RequestId, ChannelError> {
        self.check(conn)?;
        let id = self.requests.allocate(cookie, mode)?;
        let packet = OutgoingPacket::in_band(id.transaction_id(), true, payload);
        self.write_and_signal(conn, &packet).inspect_err(|_| {
            self.requests.cancel(id);
        })?;
        Ok(id)
    }

    /// Sends a GPA-direct packet (type 9, completion requested) naming the caller's
    /// `buffers` (each translated page by page through [`Hal::virt_to_phys`]) followed by the
    /// in-band `payload`. The buffers must stay alive and unmoved until the completion (or the
    /// request's failure) is seen: the host reads or writes them directly.
    ///
    /// # Safety
    ///
    /// The host reads or writes the buffers directly between this call and the request's
    /// completion or failure (including a rescind, close or corruption reported by `poll`).
    /// The caller guarantees each buffer is host-visible memory that stays allocated and
    /// unmoved until then, and that nothing in Rust holds a reference over bytes the host may
    /// write meanwhile (the slices passed here only name the memory for this call).
    pub unsafe fn send_gpa_direct<T: Transport, H: Hal>(
        &mut self,
        conn: &Connection<T, H>,
        buffers: &[&[u8]],
        payload: &[&[u8]],
        cookie: u64,
        mode: RequestMode,
    ) -> Result<RequestId, ChannelError> {
        self.check(conn)?;
        if buffers.is_empty() || buffers.len() > MAX_GPA_DIRECT_RANGES {
            return Err(ChannelError::InvalidArgument("1 to 16 GPA-direct buffers"));
        }
        let mut pfns: heapless::Vec<u64, MAX_GPA_DIRECT_PFNS> = heapless::Vec::new();
        let mut spans: heapless::Vec<(u32, u32, usize, usize), MAX_GPA_DIRECT_RANGES> =
            heapless::Vec::new();
        for b in buffers {
            let len = u32::try_from(b.len())
                .ok()
                .filter(|l| *l > 0)
                .ok_or(ChannelError::InvalidArgument("GPA-direct buffer size"))?;
            let addr = b.as_ptr() as usize;
            let offset = (addr % HV_PAGE_SIZE) as u32;
            let first_page = addr - offset as usize;
            let count = (offset as usize + b.len()).div_ceil(HV_PAGE_SIZE);
            let start = pfns.len();
            for i in 0..count {
                let page = NonNull::new((first_page + i * HV_PAGE_SIZE) as *mut u8)
                    .ok_or(ChannelError::InvalidArgument("null buffer"))?;
                let gpa = conn.hal().virt_to_phys(page)?;
                pfns.push(gpa >> 12)
                    .map_err(|_| ChannelError::InvalidArgument("too many GPA-direct pages"))?;
            }
            let _ = spans.push((len, offset, start, count));
        }
        let mut ranges: heapless::Vec<GpaRange<'_>, MAX_GPA_DIRECT_RANGES> = heapless::Vec::new();
        for &(byte_count, byte_offset, start, count) in &spans {
            let _ = ranges.push(GpaRange {
                byte_count,
                byte_offset,
                pfns: &pfns[start..start + count],
            });
        }
        let id = self.requests.allocate(cookie, mode)?;
        let packet = OutgoingPacket::gpa_direct(id.transaction_id(), &ranges, payload);
        self.write_and_signal(conn, &packet).inspect_err(|_| {
            self.requests.cancel(id);
        })?;
        Ok(id)
    }

    /// Sends a completion (type 11) for a host packet that requested one.
    pub fn send_completion<T: Transport, H: Hal>(
        &mut self,
        conn: &Connection<T, H>,
        transaction_id: u64,
        payload: &[&[u8]],
    ) -> Result<(), ChannelError> {
        self.check(conn)?;
        self.write_and_signal(conn, &OutgoingPacket::completion(transaction_id, payload))
    }

    /// Drains the inbound ring in batches (interrupt mask set while draining, one read-index
    /// publish per batch, a space signal only when the host waits for it), handing each packet
    /// to `on_packet`; completions are matched to their requests first. `buf` must hold the
    /// largest packet. Returns the number of packets handled.
    ///
    /// After a rescind or unload, every request in flight fails and this returns the error;
    /// on ring corruption likewise, and the channel must be closed.
    pub fn poll<T: Transport, H: Hal>(
        &mut self,
        conn: &Connection<T, H>,
        buf: &mut [u8],
        on_packet: impl FnMut(Received<'_>),
    ) -> Result<usize, ChannelError> {
        self.poll_at_most(conn, buf, usize::MAX, on_packet)
    }

    /// Like [`Channel::poll`], but hands at most `limit` packets to `on_packet` and leaves
    /// the rest in the ring, so a device layer can answer one request before reading the
    /// next. No interrupt announces what is left: poll again while [`Channel::has_more`].
    pub fn poll_at_most<T: Transport, H: Hal>(
        &mut self,
        conn: &Connection<T, H>,
        buf: &mut [u8],
        limit: usize,
        mut on_packet: impl FnMut(Received<'_>),
    ) -> Result<usize, ChannelError> {
        let result = self.drain(conn, buf, limit, &mut on_packet);
        if result.is_err() {
            // Whatever killed the channel, callback requests learn of it here.
            while let Some((request, cookie, error)) = self.requests.take_failed_callback() {
                on_packet(Received::Failed {
                    request,
                    cookie,
                    error,
                });
            }
        }
        result
    }

    /// Whether the last poll stopped with packets still in the inbound ring (it reached its
    /// packet limit or drain-round bound). The host signals only when the ring goes from empty
    /// to non-empty, so no interrupt will announce these: poll again.
    pub fn has_more(&self) -> bool {
        self.more
    }

    fn drain<T: Transport, H: Hal>(
        &mut self,
        conn: &Connection<T, H>,
        buf: &mut [u8],
        limit: usize,
        on_packet: &mut impl FnMut(Received<'_>),
    ) -> Result<usize, ChannelError> {
        self.more = false;
        self.check(conn)?;
        let mut handled = 0;
        for _ in 0..MAX_DRAIN_ROUNDS {
            self.reader.begin_drain();
            let mut stop = None;
            while handled < limit {
                match self.reader.read(buf) {
                    Ok(p) => {
                        handled += 1;
                        if matches!(p.kind, PacketKind::Completion) {
                            match self.requests.complete(p.transaction_id(), p.payload()) {
                                Some((request, cookie)) => on_packet(Received::Completion {
                                    request,
                                    cookie,
                                    packet: p,
                                }),
                                None => {
                                    self.unknown_completions += 1;
                                    log::warn!(
                                        "channel {}: completion for unknown transaction {:#x}",
                                        self.info.relid,
                                        p.transaction_id()
                                    );
                                }
                            }
                        } else {
                            on_packet(Received::Packet(p));
                        }
                    }
                    Err(ReadError::Empty) => break,
                    Err(ReadError::BufferTooSmall { needed }) => {
                        stop = Some(ChannelError::BufferTooSmall { needed });
                        break;
                    }
                    Err(ReadError::Corrupt(c)) => {
                        stop = Some(ChannelError::Corrupt(c));
                        break;
                    }
                }
            }
            let end = self.reader.finish_drain();
            if end.signal.is_needed() {
                self.signal(conn)?;
            }
            if let Some(e) = stop {
                if let ChannelError::Corrupt(c) = e {
                    self.fail(Health::Broken(c));
                }
                return Err(e);
            }
            if !end.more {
                return Ok(handled);
            }
            if handled >= limit {
                break;
            }
        }
        self.more = true;
        Ok(handled)
    }

    /// Status of a request sent with [`RequestMode::Await`].
    pub fn request_status(&self, id: RequestId) -> Result<RequestStatus, ChannelError> {
        self.requests.status(id)
    }

    /// Collects a finished awaited request: `Ok(Some(len))` with the completion payload
    /// copied into `buf` (up to [`crate::requestor::COMPLETION_INLINE`] bytes kept),
    /// `Ok(None)` while pending, the failure (rescind, close, corruption) otherwise.
    pub fn take_completion(
        &mut self,
        id: RequestId,
        buf: &mut [u8],
    ) -> Result<Option<usize>, ChannelError> {
        self.requests.take(id, buf)
    }

    /// Waits (bounded) for an awaited request: polls the connection and this channel,
    /// handing other packets to `on_packet`; returns the completion's payload length.
    pub fn wait_completion<T: Transport, H: Hal>(
        &mut self,
        conn: &mut Connection<T, H>,
        id: RequestId,
        completion: &mut [u8],
        rx_buf: &mut [u8],
        mut on_packet: impl FnMut(Received<'_>),
        waiter: &mut impl Wait,
    ) -> Result<usize, ChannelError> {
        loop {
            conn.poll();
            let polled = self.poll(conn, rx_buf, &mut on_packet);
            if let Some(len) = self.take_completion(id, completion)? {
                return Ok(len);
            }
            polled?;
            waiter.wait()?;
        }
    }

    /// Closes the channel: every request in flight fails with [`ChannelError::Closed`] (or
    /// the rescind error), CLOSECHANNEL is sent if the offer is still there, the ring GPADL is
    /// torn down and its pages freed after GPADL_TORNDOWN (leaked if the host never confirms),
    /// and a rescinded relid is released with RELID_RELEASED.
    pub fn close<T: Transport, H: Hal>(
        mut self,
        conn: &mut Connection<T, H>,
        waiter: &mut impl Wait,
    ) -> Result<(), ChannelError> {
        let _ = self.check(conn);
        if self.health == Health::Open || matches!(self.health, Health::Broken(_)) {
            self.fail(Health::Gone);
        }
        let relid = self.info.relid;
        let liveness = conn.channel_status(relid, self.generation);
        let mut result = Ok(());
        if liveness != ChannelLiveness::Gone
            && let Err(e) = conn.post_close(relid)
        {
            result = Err(e.into());
        }
        open::release_ring_memory(
            conn,
            relid,
            self.gpadl,
            self.pages,
            self.total_pages,
            waiter,
        );
        conn.release_channel(relid, self.generation);
        result
    }
}

#[cfg(test)]
mod tests;
