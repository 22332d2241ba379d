//! Opening a channel (vmbus-core §5.8, §7.1, §7.6): allocate both rings in one set of pages,
//! describe them with one GPADL, initialise the control pages, send OPENCHANNEL and wait for
//! OPENCHANNEL_RESULT. Every failure path frees the pages only if the host never mapped them.

#![forbid(unsafe_code)]

use super::link::{Health, Link};
use super::signal::Signaller;
use super::{Channel, ChannelStats};
use crate::bus::{Created, Released, SlotRef, Vmbus};
use crate::error::{ChannelError, VmbusError};
use crate::hal::{HV_PAGE_SIZE, Hal};
use crate::offers::{OfferInfo, OpenState};
use crate::protocol::{DeviceClass, Guid, VmbusVersion};
use crate::requestor::RequestTable;
use crate::ring::{RingReader, RingWriter};
use crate::shared::SharedPages;
use crate::transport::Transport;
use crate::wait::Wait;

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

/// What was set up before a failure, to undo it.
struct Claimed {
    info: OfferInfo,
    offer_generation: u32,
    slot: SlotRef,
}

impl<'b, T: Transport, H: Hal, C, const N: usize> Channel<'b, T, H, C, N> {
    /// Opens the live primary offer of `class` (of `instance` when given, else the first one
    /// not yet open): one call from "the bus is connected" to "the device's channel is open".
    /// Thread context only.
    pub fn open_class(
        bus: &'b Vmbus<T, H>,
        class: DeviceClass,
        instance: Option<&Guid>,
        config: &ChannelConfig,
        waiter: &mut impl Wait,
    ) -> Result<Self, ChannelError> {
        let offer = bus
            .find(class, instance)
            .ok_or(ChannelError::Vmbus(VmbusError::NoSuchDevice))?;
        Self::open(bus, offer.relid, config, waiter)
    }

    /// Opens channel `relid` and waits (bounded by `waiter`) for OPENCHANNEL_RESULT. Thread
    /// context only.
    pub fn open(
        bus: &'b Vmbus<T, H>,
        relid: u32,
        config: &ChannelConfig,
        waiter: &mut impl Wait,
    ) -> Result<Self, ChannelError> {
        Ok(Channel {
            link: Link::open(bus, relid, config, waiter)?,
            requests: RequestTable::new(),
        })
    }
}

impl<'b, T: Transport, H: Hal> Link<'b, T, H> {
    /// [`Channel::open`] without the request table.
    fn open(
        bus: &'b Vmbus<T, H>,
        relid: u32,
        config: &ChannelConfig,
        waiter: &mut impl Wait,
    ) -> Result<Self, ChannelError> {
        if config.outbound_pages < 2 || config.inbound_pages < 2 {
            return Err(ChannelError::InvalidArgument(
                "each ring needs a control page and at least one data page",
            ));
        }
        let total_pages = config
            .outbound_pages
            .checked_add(config.inbound_pages)
            .filter(|t| {
                (t - 2)
                    .checked_mul(HV_PAGE_SIZE)
                    .is_some_and(|b| b <= u32::MAX as usize)
            })
            .ok_or(ChannelError::InvalidArgument("ring too large"))?;
        let epoch = bus.epoch();
        let (claimed, signaller, target_vp) = {
            let mut c = bus.lock();
            let (info, offer_generation) = c.offer_for_open(relid)?;
            let Some(slot) = bus.slots.claim(relid) else {
                c.release_channel(relid, offer_generation);
                return Err(ChannelError::Vmbus(VmbusError::TableFull));
            };
            let version = c.negotiated.map_or(VmbusVersion::V1_1, |n| n.version);
            let signaller = Signaller::for_offer(&info, version, c.monitor_pages.as_ref());
            let target_vp = config
                .target_vp
                .unwrap_or_else(|| bus.transport().vp_index());
            let claimed = Claimed {
                info,
                offer_generation,
                slot,
            };
            (claimed, signaller, target_vp)
        };
        let pages = match SharedPages::alloc(bus.hal(), total_pages) {
            Ok(p) => p,
            Err(e) => {
                undo(bus, &claimed, true);
                return Err(e.into());
            }
        };
        let gpadl = match bus.create_gpadl(relid, &pages, waiter) {
            Created::Yes(h) => h,
            Created::No(e) => {
                pages.free(bus.hal());
                undo(bus, &claimed, true);
                return Err(e.into());
            }
            Created::Unknown(e) => {
                pages.leak();
                undo(bus, &claimed, false);
                return Err(e.into());
            }
        };
        // Zeroed pages from the HAL: both control pages read = write = 0, inbound interrupt
        // mask 0; the writer sets its feature bit (§7.6) before the host sees OPENCHANNEL.
        let rings = pages
            .ring(0, config.outbound_pages)
            .and_then(|o| Ok((o, pages.ring(config.outbound_pages, config.inbound_pages)?)))
            .map_err(ChannelError::from)
            .and_then(|(o, i)| Ok((RingWriter::new(o)?, RingReader::new(i)?)));
        let opened = rings.and_then(|rings| {
            let r = bus
                .lock()
                .post_open(
                    &claimed.info,
                    gpadl,
                    config.outbound_pages as u32,
                    target_vp,
                    &config.user_data,
                )
                .map_err(ChannelError::from);
            r.map(|()| rings)
        });
        let (writer, reader) = match opened {
            Ok(rings) => rings,
            Err(e) => {
                let released = bus.teardown_gpadl(gpadl, epoch, waiter);
                finish_undo(bus, &claimed, pages, released);
                return Err(e);
            }
        };
        let result = bus.wait_until(waiter, |c| match c.open_state(relid) {
            Some(OpenState::Opening { .. }) => None,
            Some(OpenState::Result(0)) => Some(Ok(())),
            Some(OpenState::Result(status)) => Some(Err(VmbusError::OpenFailed(status))),
            Some(OpenState::Cancelled) => Some(Err(VmbusError::Rescinded(relid))),
            _ => Some(Err(VmbusError::Disconnected)),
        });
        if let Err(e) = result {
            // The host may have mapped the rings on OPENCHANNEL even if it never answered.
            {
                let mut c = bus.lock();
                if c.offer_present(relid, claimed.offer_generation) {
                    let _ = c.post_close(relid);
                }
            }
            // The waiter may be spent (the open timed out): the teardown gets a fresh budget,
            // or the ring pages would always be leaked.
            waiter.restart();
            let released = bus.teardown_gpadl(gpadl, epoch, waiter);
            finish_undo(bus, &claimed, pages, released);
            return Err(e.into());
        }
        Ok(Link {
            bus,
            info: claimed.info,
            offer_generation: claimed.offer_generation,
            slot: claimed.slot,
            epoch,
            signaller,
            pages: Some(pages),
            gpadl,
            writer,
            reader,
            health: Health::Open,
            in_batch: false,
            in_send_batch: false,
            more: false,
            stats: ChannelStats::default(),
        })
    }
}

/// Gives the offer and the slot back after a failed open.
fn undo<T: Transport, H: Hal>(bus: &Vmbus<T, H>, claimed: &Claimed, host_released: bool) {
    bus.slots.release(claimed.slot, host_released);
    bus.lock()
        .release_channel(claimed.info.relid, claimed.offer_generation);
}

/// Frees or leaks the ring pages after a failed open, as the teardown allows.
fn finish_undo<T: Transport, H: Hal>(
    bus: &Vmbus<T, H>,
    claimed: &Claimed,
    pages: SharedPages,
    released: Released,
) {
    match released {
        Released::Freed => pages.free(bus.hal()),
        Released::Leaked => pages.leak(),
    }
    undo(bus, claimed, released.is_freed());
}
