//! Opening a channel (vmbus-core §5.8, §7.1, §7.6): allocate both rings in one set of pages,
//! describe them with one GPADL, initialise the control pages, send OPENCHANNEL and wait for
//! OPENCHANNEL_RESULT — as a state machine ([`PendingOpen`]) and as a bounded blocking call.

use super::{Channel, ChannelConfig, Health};
use crate::connection::Connection;
use crate::error::{ChannelError, VmbusError};
use crate::gpadl::GpadlState;
use crate::hal::{HV_PAGE_SIZE, Hal};
use crate::offers::{OfferInfo, OpenState};
use crate::requestor::Requestor;
use crate::ring::{RawRingMemory, RingReader, RingWriter};
use crate::transport::Transport;
use crate::wait::Wait;
use core::ptr::NonNull;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Stage {
    WaitGpadl,
    WaitOpen,
}

/// A channel open in progress. Advance it with [`PendingOpen::poll`] after
/// [`Connection::poll`]; give up with [`PendingOpen::abort`].
#[derive(Debug)]
pub struct PendingOpen {
    info: OfferInfo,
    generation: u32,
    pages: NonNull<u8>,
    total_pages: usize,
    outbound_pages: usize,
    gpadl: u32,
    target_vp: u32,
    user_data: [u8; 120],
    stage: Stage,
}

// SAFETY: `pages` names this open's own ring allocation, touched only through `&mut self`.
unsafe impl Send for PendingOpen {}

impl PendingOpen {
    /// Starts opening channel `relid`: allocates the ring pages and posts the ring GPADL.
    pub fn start<T: Transport, H: Hal>(
        conn: &mut Connection<T, H>,
        relid: u32,
        config: &ChannelConfig,
    ) -> Result<Self, ChannelError> {
        if config.outbound_pages < 2 || config.inbound_pages < 2 {
            return Err(ChannelError::InvalidArgument(
                "each ring needs a control page and at least one data page",
            ));
        }
        let total_pages = config
            .outbound_pages
            .checked_add(config.inbound_pages)
            .ok_or(ChannelError::InvalidArgument("ring too large"))?;
        if u32::try_from((total_pages - 2) * HV_PAGE_SIZE).is_err() {
            return Err(ChannelError::InvalidArgument("ring too large"));
        }
        let (info, generation) = conn.offer_for_open(relid)?;
        let target_vp = config
            .target_vp
            .unwrap_or_else(|| conn.transport().vp_index());
        let pages = match conn.hal().alloc_pages(total_pages) {
            Ok(p) => p,
            Err(e) => {
                conn.release_channel(relid, generation);
                return Err(e.into());
            }
        };
        // SAFETY: the ring pages were just allocated from the HAL; the channel owns them and
        // frees them only after GPADL_TORNDOWN (leaking them otherwise), and reaches the rings
        // only through the ring module's atomic and raw accesses.
        let gpadl = match unsafe { conn.start_gpadl(relid, pages, total_pages) } {
            Ok(h) => h,
            Err(e) => {
                if !matches!(e, VmbusError::Post(_)) {
                    // SAFETY: nothing was posted about these pages; the host never saw them.
                    unsafe { conn.hal().free_pages(pages, total_pages) };
                }
                conn.release_channel(relid, generation);
                return Err(e.into());
            }
        };
        Ok(Self {
            info,
            generation,
            pages,
            total_pages,
            outbound_pages: config.outbound_pages,
            gpadl,
            target_vp,
            user_data: config.user_data,
            stage: Stage::WaitGpadl,
        })
    }

    /// The relid being opened.
    pub fn relid(&self) -> u32 {
        self.info.relid
    }

    /// Advances the open: `Ok(Some(channel))` once OPENCHANNEL_RESULT reports success,
    /// `Ok(None)` while waiting. On `Err` call [`PendingOpen::abort`].
    pub fn poll<T: Transport, H: Hal>(
        &mut self,
        conn: &mut Connection<T, H>,
    ) -> Result<Option<Channel>, ChannelError> {
        let relid = self.info.relid;
        match self.stage {
            Stage::WaitGpadl => match conn.gpadl_state(self.gpadl) {
                Some(GpadlState::Creating) => Ok(None),
                Some(GpadlState::Created) => {
                    // Zeroed pages from the HAL: both control pages read = write = 0, inbound
                    // interrupt mask 0; the writer sets its feature bit (§7.6).
                    self.rings()?;
                    conn.post_open(
                        &self.info,
                        self.gpadl,
                        self.outbound_pages as u32,
                        self.target_vp,
                        &self.user_data,
                    )?;
                    self.stage = Stage::WaitOpen;
                    Ok(None)
                }
                Some(GpadlState::Failed(status)) => {
                    Err(ChannelError::Vmbus(VmbusError::GpadlFailed {
                        handle: self.gpadl,
                        status,
                    }))
                }
                Some(GpadlState::Revoked) => Err(ChannelError::Rescinded),
                _ => Err(ChannelError::Closed),
            },
            Stage::WaitOpen => match conn.open_state(relid) {
                Some(OpenState::Opening { .. }) => Ok(None),
                Some(OpenState::Result(0)) => {
                    let (writer, reader) = self.rings()?;
                    Ok(Some(Channel {
                        info: self.info,
                        generation: self.generation,
                        pages: self.pages,
                        total_pages: self.total_pages,
                        gpadl: self.gpadl,
                        writer,
                        reader,
                        requests: Requestor::new(),
                        health: Health::Open,
                        unknown_completions: 0,
                        more: false,
                    }))
                }
                Some(OpenState::Result(status)) => Err(ChannelError::OpenFailed(status)),
                Some(OpenState::Cancelled) => Err(ChannelError::Rescinded),
                _ => Err(ChannelError::Closed),
            },
        }
    }

    fn rings(
        &self,
    ) -> Result<(RingWriter<RawRingMemory>, RingReader<RawRingMemory>), ChannelError> {
        let out_data = ((self.outbound_pages - 1) * HV_PAGE_SIZE) as u32;
        let in_data = ((self.total_pages - self.outbound_pages - 1) * HV_PAGE_SIZE) as u32;
        // SAFETY: `pages` is this open's allocation of `total_pages` pages; the outbound ring
        // is its first `outbound_pages` pages and the inbound ring the rest. Only this channel
        // (one writer, one reader) and the host access them, through the ring protocol.
        let (out, inb) = unsafe {
            let inbound = self.pages.add(self.outbound_pages * HV_PAGE_SIZE);
            (
                RawRingMemory::from_pages(self.pages, out_data),
                RawRingMemory::from_pages(inbound, in_data),
            )
        };
        let bad = |_| ChannelError::InvalidArgument("ring layout");
        let writer = RingWriter::new(out.map_err(bad)?)?;
        let reader = RingReader::new(inb.map_err(bad)?)?;
        Ok((writer, reader))
    }

    /// Gives up the open: CLOSECHANNEL if OPENCHANNEL went out, GPADL teardown, pages freed
    /// only if the host confirmed it no longer maps them (leaked otherwise), relid released.
    pub fn abort<T: Transport, H: Hal>(self, conn: &mut Connection<T, H>, waiter: &mut impl Wait) {
        let relid = self.info.relid;
        if self.stage == Stage::WaitOpen
            && conn.channel_status(relid, self.generation)
                != crate::connection::ChannelLiveness::Gone
        {
            // The host may have mapped the rings on OPENCHANNEL even if it never answered.
            let _ = conn.post_close(relid);
        }
        // The waiter may be spent (the open timed out): the teardown gets a fresh budget, or
        // the ring pages would always be leaked.
        waiter.restart();
        release_ring_memory(
            conn,
            relid,
            self.gpadl,
            self.pages,
            self.total_pages,
            waiter,
        );
        conn.release_channel(relid, self.generation);
    }
}

/// Tears down the ring GPADL and frees the pages if the host confirms; leaks them otherwise.
pub(super) fn release_ring_memory<T: Transport, H: Hal>(
    conn: &mut Connection<T, H>,
    relid: u32,
    gpadl: u32,
    pages: NonNull<u8>,
    total_pages: usize,
    waiter: &mut impl Wait,
) {
    let free = match conn.gpadl_state(gpadl) {
        Some(GpadlState::Created) => {
            let r = conn
                .start_gpadl_teardown(gpadl)
                .and_then(|()| conn.wait_gpadl_torndown(gpadl, waiter));
            match r {
                Ok(()) => true,
                Err(e) => {
                    log::warn!("ring GPADL of channel {relid} not torn down: {e}");
                    false
                }
            }
        }
        Some(GpadlState::Failed(_)) => {
            conn.forget_gpadl(gpadl);
            true
        }
        // Unloaded: the host dropped every GPADL of the connection.
        None => conn.state() == crate::connection::ConnectionState::Disconnected,
        Some(_) => {
            conn.forget_gpadl(gpadl);
            false
        }
    };
    if free {
        // SAFETY: the host no longer maps the pages (TORNDOWN, refused, or unloaded) and the
        // rings built on them are gone.
        unsafe { conn.hal().free_pages(pages, total_pages) };
    } else {
        log::warn!("leaking {total_pages} ring pages of channel {relid}");
    }
}

impl Channel {
    /// Opens channel `relid` and waits (bounded by `waiter`) for OPENCHANNEL_RESULT.
    pub fn open<T: Transport, H: Hal>(
        conn: &mut Connection<T, H>,
        relid: u32,
        config: &ChannelConfig,
        waiter: &mut impl Wait,
    ) -> Result<Channel, ChannelError> {
        let mut pending = PendingOpen::start(conn, relid, config)?;
        loop {
            conn.poll();
            match pending.poll(conn) {
                Ok(Some(ch)) => return Ok(ch),
                Ok(None) => {}
                Err(e) => {
                    pending.abort(conn, waiter);
                    return Err(e);
                }
            }
            if waiter.wait().is_err() {
                pending.abort(conn, waiter);
                return Err(ChannelError::Timeout);
            }
        }
    }
}
