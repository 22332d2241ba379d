//! The storvsc controller on its VMBus channel: opens the SCSI channel, runs the VSTOR
//! handshake, and executes SRBs as [`ScsiTransport`] — in-band for commands without data,
//! GPA-direct for data, through a host-visible bounce buffer when the caller's buffer cannot
//! be handed to the host directly.

use core::ptr::NonNull;

use vmbus_guest::{
    Channel, ChannelConfig, Connection, HV_PAGE_SIZE, Hal, Received, RequestMode, Transport, Wait,
};

use crate::StorError;
use crate::block::{DataBuf, ScsiTransport};
use crate::handshake::{Handshake, Negotiated, Progress};
use crate::protocol::{Operation, VSTOR_PACKET_SIZE_WIN8 as VSTOR_PACKET_SIZE};
use crate::request::{ScsiRequest, SrbCompletion};

/// Pages per ring direction, control page included (Linux storvsc uses a few hundred KiB; 128
/// KiB per direction keeps dozens of SRBs in flight).
pub const RING_PAGES: usize = 32;
/// Largest transfer sent as one SRB: the host's maximum, capped by the bounce buffer.
pub const BOUNCE_BYTES: usize = 256 * 1024;
/// Room for one host packet on this channel (completions and unsolicited messages are at most
/// a descriptor plus a 64-byte VSTOR packet; margin for padding and hostile lengths).
const RX_BUF: usize = 256;

/// A SCSI controller (one storvsc channel) bound to the VMBus connection it was opened on.
///
/// Blocking: every [`ScsiTransport::execute`] waits for its completion, with the waiter's
/// full budget per request ([`Wait::restart`]). Unsolicited ENUMERATE_BUS / REMOVE_DEVICE messages seen meanwhile are recorded
/// ([`StorvscController::take_bus_change`]) so the caller can rescan.
pub struct StorvscController<'c, T: Transport, H: Hal, W: Wait> {
    conn: &'c mut Connection<T, H>,
    channel: Option<Channel>,
    waiter: W,
    negotiated: Negotiated,
    bounce: NonNull<u8>,
    bounce_pages: usize,
    bus_changed: bool,
}

impl<'c, T: Transport, H: Hal, W: Wait> StorvscController<'c, T, H, W> {
    /// Opens the SCSI channel `relid` and runs the VSTOR handshake (version negotiation newest
    /// first, channel properties, end of initialisation).
    pub fn open(
        conn: &'c mut Connection<T, H>,
        relid: u32,
        mut waiter: W,
    ) -> Result<Self, StorError> {
        let config = ChannelConfig {
            outbound_pages: RING_PAGES,
            inbound_pages: RING_PAGES,
            // OPENCHANNEL user data: a zeroed 24-byte channel-properties structure.
            ..ChannelConfig::default()
        };
        let mut channel = Channel::open(conn, relid, &config, &mut waiter)?;
        let mut handshake = Handshake::default();
        let mut bus_changed = false;
        let negotiated = loop {
            let mut request = [0u8; VSTOR_PACKET_SIZE];
            let Some(n) = handshake.next_request(&mut request) else {
                return Err(StorError::BadResponse("handshake stalled"));
            };
            let mut completion = [0u8; VSTOR_PACKET_SIZE];
            let len = call(
                conn,
                &mut channel,
                &mut waiter,
                &request[..n],
                None,
                &mut completion,
                &mut bus_changed,
            )?;
            if let Progress::Done(negotiated) = handshake.on_completion(&completion[..len])? {
                break negotiated;
            }
        };
        let bounce_pages = BOUNCE_BYTES / HV_PAGE_SIZE;
        let bounce = conn.hal().alloc_pages(bounce_pages).map_err(|_| {
            StorError::InvalidArgument("no host-visible memory for the bounce buffer")
        })?;
        log::info!(
            "storvsc {relid}: VSTOR {:?}, max transfer {} bytes, {} sub-channels allowed",
            negotiated.version,
            negotiated.max_transfer_bytes,
            negotiated.sub_channels_allowed()
        );
        Ok(Self {
            conn,
            channel: Some(channel),
            waiter,
            negotiated,
            bounce,
            bounce_pages,
            bus_changed,
        })
    }

    /// What the handshake agreed (version, host limits).
    pub fn negotiated(&self) -> &Negotiated {
        &self.negotiated
    }

    /// The largest transfer one request may carry: the host's limit, capped by the bounce
    /// buffer. Give this to [`crate::block::ScsiDisk::open`].
    pub fn max_transfer_bytes(&self) -> u32 {
        self.negotiated.max_transfer_bytes.min(BOUNCE_BYTES as u32)
    }

    /// Whether the host announced a bus change (ENUMERATE_BUS, REMOVE_DEVICE) since the last
    /// call: rescan the LUNs.
    pub fn take_bus_change(&mut self) -> bool {
        core::mem::take(&mut self.bus_changed)
    }

    /// Closes the channel (requests in flight fail) and frees the bounce buffer once the host
    /// no longer maps it.
    pub fn close(mut self) -> Result<(), StorError> {
        if let Some(channel) = self.channel.take() {
            self.waiter.restart();
            channel.close(self.conn, &mut self.waiter)?;
        }
        // SAFETY: the bounce pages were allocated by this controller's HAL; the channel is
        // closed and its GPADL torn down, and no request that named them is in flight.
        unsafe { self.conn.hal().free_pages(self.bounce, self.bounce_pages) };
        Ok(())
    }
}

/// Sends one VSTOR packet (GPA-direct over `data` if given) and waits for its completion,
/// copying it to `completion`; unsolicited host packets seen meanwhile set `bus_changed`.
fn call<T: Transport, H: Hal>(
    conn: &mut Connection<T, H>,
    channel: &mut Channel,
    waiter: &mut impl Wait,
    packet: &[u8],
    data: Option<(NonNull<u8>, usize)>,
    completion: &mut [u8],
    bus_changed: &mut bool,
) -> Result<usize, StorError> {
    waiter.restart();
    let id = match data {
        None => channel.send_request(conn, &[packet], 0, RequestMode::Await)?,
        Some((ptr, len)) => {
            // The slice only names the pages for the send; the host then accesses them
            // directly until the completion, while nothing in Rust refers to them.
            // SAFETY: the caller passes `len` bytes of its bounce buffer.
            let buffer = unsafe { core::slice::from_raw_parts(ptr.as_ptr(), len) };
            // SAFETY: the bounce buffer is HAL memory the controller owns for its lifetime and
            // only touches through raw copies before send and after completion; this function
            // waits for the completion (or the channel's failure) before returning.
            unsafe { channel.send_gpa_direct(conn, &[buffer], &[packet], 0, RequestMode::Await)? }
        }
    };
    let mut rx = [0u8; RX_BUF];
    let len = channel.wait_completion(
        conn,
        id,
        completion,
        &mut rx,
        |received| {
            if let Received::Packet(p) = received {
                let operation = p
                    .payload()
                    .get(..4)
                    .and_then(|b| b.try_into().ok())
                    .map(|b| Operation(u32::from_le_bytes(b)));
                if matches!(
                    operation,
                    Some(Operation::ENUMERATE_BUS | Operation::REMOVE_DEVICE)
                ) {
                    *bus_changed = true;
                } else {
                    log::warn!("storvsc: ignored unsolicited host packet {operation:?}");
                }
            }
        },
        waiter,
    )?;
    Ok(len.min(completion.len()))
}

impl<T: Transport, H: Hal, W: Wait> ScsiTransport for StorvscController<'_, T, H, W> {
    fn execute(
        &mut self,
        request: &ScsiRequest,
        data: DataBuf<'_>,
    ) -> Result<SrbCompletion, StorError> {
        let channel = self.channel.as_mut().ok_or(StorError::ChannelClosed)?;
        let len = data.len();
        if len > self.bounce_pages * HV_PAGE_SIZE {
            return Err(StorError::InvalidArgument(
                "transfer larger than the bounce buffer",
            ));
        }
        if let DataBuf::ToDevice(b) = &data {
            // SAFETY: the bounce buffer is `bounce_pages` pages this controller owns and no
            // request naming it is in flight; `len` fits (checked above).
            unsafe { core::ptr::copy_nonoverlapping(b.as_ptr(), self.bounce.as_ptr(), len) };
        }
        let mut packet = [0u8; VSTOR_PACKET_SIZE];
        let n = request.write_packet(self.negotiated.version, &mut packet)?;
        let mut completion = [0u8; VSTOR_PACKET_SIZE];
        let got = call(
            self.conn,
            channel,
            &mut self.waiter,
            &packet[..n],
            (len > 0).then_some((self.bounce, len)),
            &mut completion,
            &mut self.bus_changed,
        )?;
        let srb = SrbCompletion::parse(&completion[..got])?;
        if let DataBuf::FromDevice(b) = data {
            let n = (srb.data_transfer_length as usize).min(len);
            // SAFETY: the request completed, so the host no longer writes the bounce pages;
            // `n` ≤ `len` bytes of them are copied out.
            unsafe { core::ptr::copy_nonoverlapping(self.bounce.as_ptr(), b.as_mut_ptr(), n) };
        }
        Ok(srb)
    }
}
