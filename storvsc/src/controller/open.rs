//! Opening a controller: the primary channel, the VSTOR handshake, sub-channels and the
//! bounce buffers.

use vmbus_guest::{
    Channel, ChannelError, HV_PAGE_SIZE, Hal, HostBuffer, Received, Transport, Vmbus, Wait,
};

use super::{
    BOUNCE_BYTES, BigBounce, Chan, ControllerOptions, HANDSHAKE_CONTEXT, RX_BUF, Slot,
    StorvscController, channel_config, note_release, note_unsolicited,
};
use crate::StorError;
use crate::handshake::{
    Handshake, Negotiated, Progress, check_simple_completion, create_sub_channels_request,
};
use crate::protocol::{Operation, VSTOR_PACKET_SIZE_WIN8 as VSTOR_PACKET_SIZE};
use crate::queue::{MAX_POOL_PAGES, PagePool};

impl<'b, T: Transport, H: Hal, W: Wait, const CHANNELS: usize, const DEPTH: usize>
    StorvscController<'b, T, H, W, CHANNELS, DEPTH>
{
    /// Opens the SCSI channel `relid` on `bus`, runs the VSTOR handshake (version
    /// negotiation newest first, channel properties, end of initialisation) and opens as many
    /// sub-channels as the host and `CHANNELS` allow. Thread context only. Poll once after
    /// it returns, before waiting for an interrupt: packets the host sent behind the
    /// handshake raise none ([`Polled::more`](crate::queue::Polled) says what is left).
    pub fn open(bus: &'b Vmbus<T, H>, relid: u32, waiter: W) -> Result<Self, StorError> {
        Self::open_with(bus, relid, waiter, ControllerOptions::default())
    }

    /// Like [`Self::open`], for the first free SCSI controller the host offered.
    pub fn open_first(bus: &'b Vmbus<T, H>, waiter: W) -> Result<Self, StorError> {
        let offer = bus
            .find(vmbus_guest::protocol::DeviceClass::Scsi, None)
            .ok_or(StorError::Channel(ChannelError::Vmbus(
                vmbus_guest::VmbusError::NoSuchDevice,
            )))?;
        Self::open(bus, offer.relid, waiter)
    }

    /// Like [`Self::open`], with explicit options. After END_INITIALIZATION, if the host
    /// allows sub-channels (version ≥ WIN8, multi-channel flag, `max_channel_count` > 0) and
    /// `options.sub_channels` > 0, sends CREATE_SUB_CHANNELS, waits (bounded by the waiter)
    /// for the sub-channel offers and opens each with the primary's ring size. A sub-channel
    /// that is not offered in time or fails to open is left out (logged), not an error.
    pub fn open_with(
        bus: &'b Vmbus<T, H>,
        relid: u32,
        waiter: W,
        options: ControllerOptions,
    ) -> Result<Self, StorError> {
        let mut slot = None;
        Self::open_in(&mut slot, bus, relid, waiter, options)?;
        slot.take()
            .ok_or(StorError::InvalidArgument("controller not stored"))
    }

    /// Like [`Self::open_with`], building the controller in caller-provided storage (a
    /// `static`, or a slot in a larger structure) instead of returning it by value, so a
    /// kernel's stack never holds a second copy of it while it opens. Returns it in place.
    pub fn open_in<'s>(
        slot: &'s mut Option<Self>,
        bus: &'b Vmbus<T, H>,
        relid: u32,
        mut waiter: W,
        options: ControllerOptions,
    ) -> Result<&'s mut Self, StorError> {
        const {
            assert!(CHANNELS >= 1 && CHANNELS <= 32, "1 to 32 channels");
            assert!(
                DEPTH >= 1 && DEPTH < u16::MAX as usize,
                "DEPTH fits a u16 context"
            );
        }
        let config = channel_config();
        waiter.restart();
        let mut primary: Chan<'b, T, H, DEPTH> = Channel::open(bus, relid, &config, &mut waiter)?;
        let mut bus_changed = false;
        let negotiated = match handshake(&mut primary, &mut waiter, &mut bus_changed) {
            Ok(n) => n,
            Err(e) => {
                waiter.restart();
                note_release(relid, primary.close(&mut waiter));
                return Err(e);
            }
        };
        let mut channels: [Option<Chan<'b, T, H, DEPTH>>; CHANNELS] =
            core::array::from_fn(|_| None);
        let want = options
            .sub_channels
            .min(negotiated.sub_channels_allowed())
            .min((CHANNELS - 1) as u16);
        if want > 0 && negotiated.version.is_win8_or_later() {
            let mut request = [0u8; VSTOR_PACKET_SIZE];
            let asked =
                create_sub_channels_request(&negotiated, want, &mut request).and_then(|n| {
                    let mut completion = [0u8; VSTOR_PACKET_SIZE];
                    let len = call(
                        &mut primary,
                        &mut waiter,
                        &request[..n],
                        &mut completion,
                        &mut bus_changed,
                    )?;
                    check_simple_completion(Operation::CREATE_SUB_CHANNELS, &completion[..len])
                });
            match asked {
                Ok(()) => {
                    waiter.restart();
                    let n = primary.open_subchannels::<DEPTH>(
                        usize::from(want),
                        &config,
                        &mut waiter,
                        &mut channels[1..],
                    );
                    if n < usize::from(want) {
                        log::warn!("storvsc {relid}: {n} of {want} sub-channels opened");
                    }
                }
                Err(e) => log::warn!("storvsc {relid}: CREATE_SUB_CHANNELS refused: {e}"),
            }
        }
        channels[0] = Some(primary);
        let mut relids = [0u32; CHANNELS];
        let mut opened = 0;
        for (r, ch) in relids.iter_mut().zip(channels.iter()) {
            if let Some(ch) = ch {
                *r = ch.relid();
                opened += 1;
            }
        }
        // Packets the host sent behind the handshake's replies (an ENUMERATE_BUS, say) wait
        // in a ring that raises no interrupt for them: the first poll drains those channels.
        let more = channels
            .iter()
            .enumerate()
            .filter(|(_, c)| c.as_ref().is_some_and(|c| c.has_more()))
            .fold(0u32, |m, (i, _)| m | 1 << i);
        let pool_pages = options.pool_pages.clamp(1, MAX_POOL_PAGES);
        let buffers =
            HostBuffer::new(bus, BOUNCE_BYTES / HV_PAGE_SIZE).and_then(
                |big| match HostBuffer::new(bus, pool_pages) {
                    Ok(pool) => Ok((big, pool)),
                    Err(e) => {
                        waiter.restart();
                        note_release(relid, big.release(&mut waiter));
                        Err(e)
                    }
                },
            );
        let (bounce, pool) = match buffers {
            Ok(b) => b,
            Err(e) => {
                log::warn!("storvsc {relid}: no host-visible memory for the bounce buffers: {e}");
                for ch in channels.iter_mut().rev().filter_map(Option::take) {
                    waiter.restart();
                    note_release(relid, ch.close(&mut waiter));
                }
                return Err(StorError::InvalidArgument(
                    "no host-visible memory for the bounce buffers",
                ));
            }
        };
        log::info!(
            "storvsc {relid}: VSTOR {:?}, max transfer {} bytes, {} sub-channels allowed, {} open",
            negotiated.version,
            negotiated.max_transfer_bytes,
            negotiated.sub_channels_allowed(),
            opened - 1
        );
        Ok(slot.insert(Self {
            bus,
            channels,
            opened,
            relids,
            submitted: [0; CHANNELS],
            dead: 0,
            more,
            waiter,
            negotiated,
            slots: [const { Slot::new() }; DEPTH],
            free: core::array::from_fn(|i| (DEPTH - 1 - i) as u16),
            free_len: DEPTH,
            active: 0,
            undelivered: 0,
            pool: Some(pool),
            pool_pages: PagePool::new(pool_pages),
            bounce: Some(bounce),
            bounce_state: BigBounce::Free,
            cursor: 0,
            poll_cursor: 0,
            last: 0,
            spill_depth: options.spill_depth,
            bus_changed,
        }))
    }
}

/// Runs the VSTOR initialisation on the primary channel.
fn handshake<T: Transport, H: Hal, const DEPTH: usize>(
    channel: &mut Chan<'_, T, H, DEPTH>,
    waiter: &mut impl Wait,
    bus_changed: &mut bool,
) -> Result<Negotiated, StorError> {
    let mut handshake = Handshake::default();
    loop {
        let mut request = [0u8; VSTOR_PACKET_SIZE];
        let Some(n) = handshake.next_request(&mut request) else {
            return Err(StorError::BadResponse("handshake stalled"));
        };
        let mut completion = [0u8; VSTOR_PACKET_SIZE];
        let len = call(channel, waiter, &request[..n], &mut completion, bus_changed)?;
        if let Progress::Done(negotiated) = handshake.on_completion(&completion[..len])? {
            return Ok(negotiated);
        }
    }
}

/// Sends one VSTOR packet in-band and waits for its completion
/// ([`Channel::transact`]), copying it to `completion`; unsolicited host packets seen
/// meanwhile set `bus_changed`. Used for the handshake and CREATE_SUB_CHANNELS, before the
/// queue exists.
fn call<T: Transport, H: Hal, const DEPTH: usize>(
    channel: &mut Chan<'_, T, H, DEPTH>,
    waiter: &mut impl Wait,
    packet: &[u8],
    completion: &mut [u8],
    bus_changed: &mut bool,
) -> Result<usize, StorError> {
    waiter.restart();
    let mut rx = [0u8; RX_BUF];
    let len = channel.transact(
        &[packet],
        HANDSHAKE_CONTEXT,
        completion,
        &mut rx,
        |received| {
            if let Received::Packet(p) = received {
                note_unsolicited(p.payload(), bus_changed);
            }
        },
        waiter,
    )?;
    Ok(len.min(completion.len()))
}
