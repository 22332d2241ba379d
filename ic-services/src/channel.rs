//! An integration service bound to its VMBus channel: opens the channel the host offered for
//! the service's class, answers every host request in the ring with the service's response
//! (in-band, the host's transaction id, no completion), and hands the OS the resulting events.

use core::fmt;

use vmbus_guest::ring::PacketKind;
use vmbus_guest::{
    Channel, ChannelConfig, ChannelError, Connection, Hal, Received, Transport, Wait,
};

use crate::{IcError, IcEvent, IcHandler, IcService};

/// Largest IC packet this layer handles (descriptor included): the KVP IP-info message, the
/// largest IC message (7428 payload bytes + 28 header bytes), rounded up.
pub const MAX_IC_PACKET: usize = 8192;
/// Ring pages per direction for an IC channel (control page included): Linux uses 3 pages of
/// data (12 KiB) per direction for the util services.
pub const IC_RING_PAGES: usize = 4;
/// Host requests answered per [`IcChannel::poll`] call before returning to the caller.
pub const MAX_REQUESTS_PER_POLL: usize = 16;

/// Why an IC channel operation failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum IcChannelError {
    /// The VMBus channel failed (closed, rescinded, corrupt ring, full ring).
    Channel(ChannelError),
}

impl From<ChannelError> for IcChannelError {
    fn from(e: ChannelError) -> Self {
        Self::Channel(e)
    }
}

impl fmt::Display for IcChannelError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Channel(e) => write!(f, "IC channel: {e}"),
        }
    }
}

impl core::error::Error for IcChannelError {}

/// One integration service on its open channel.
///
/// Holds two packet buffers of [`MAX_IC_PACKET`] bytes: keep it in a `static` or on the heap
/// of a kernel, not on a small stack.
pub struct IcChannel<H> {
    channel: Channel,
    service: IcService<H>,
    rx: [u8; MAX_IC_PACKET],
    tx: [u8; MAX_IC_PACKET],
    dropped: u64,
}

impl<H: IcHandler> IcChannel<H> {
    /// Opens the channel `relid` (an offer of the service's class) with IC-sized rings. The
    /// guest then waits: the host starts with NEGOTIATE.
    pub fn open<T: Transport, A: Hal>(
        conn: &mut Connection<T, A>,
        relid: u32,
        handler: H,
        waiter: &mut impl Wait,
    ) -> Result<Self, IcChannelError> {
        let config = ChannelConfig {
            outbound_pages: IC_RING_PAGES,
            inbound_pages: IC_RING_PAGES,
            ..ChannelConfig::default()
        };
        let channel = Channel::open(conn, relid, &config, waiter)?;
        Ok(Self {
            channel,
            service: IcService::new(handler),
            rx: [0; MAX_IC_PACKET],
            tx: [0; MAX_IC_PACKET],
            dropped: 0,
        })
    }

    /// The service (negotiated versions, the handler's state).
    pub fn service(&self) -> &IcService<H> {
        &self.service
    }

    /// Mutable access to the service (for example to update KVP values the guest publishes).
    pub fn service_mut(&mut self) -> &mut IcService<H> {
        &mut self.service
    }

    /// The channel's relid.
    pub fn relid(&self) -> u32 {
        self.channel.relid()
    }

    /// Whether requests are still waiting in the ring after the last [`IcChannel::poll`]
    /// (it stops after [`MAX_REQUESTS_PER_POLL`]); no interrupt announces them, poll again.
    pub fn has_more(&self) -> bool {
        self.channel.has_more()
    }

    /// Host packets dropped without an answer: malformed requests (a typed [`IcError`] was
    /// logged) and packets that are not in-band requests.
    pub fn dropped(&self) -> u64 {
        self.dropped
    }

    /// Answers the host requests waiting in the ring, one at a time (each answer goes out
    /// before the next request is read), and calls `on_event` with what each one means for
    /// the OS. Returns the number of requests answered. Callable from a polling loop or after
    /// the channel's interrupt; never blocks.
    pub fn poll<T: Transport, A: Hal>(
        &mut self,
        conn: &Connection<T, A>,
        mut on_event: impl FnMut(IcEvent),
    ) -> Result<usize, IcChannelError> {
        let mut answered = 0;
        while answered < MAX_REQUESTS_PER_POLL {
            let mut reply: Option<(u64, Result<crate::Reply, IcError>)> = None;
            let mut other = false;
            let (service, tx) = (&mut self.service, &mut self.tx);
            let read =
                self.channel
                    .poll_at_most(conn, &mut self.rx, 1, |received| match received {
                        Received::Packet(p) if matches!(p.kind, PacketKind::InBand) => {
                            reply = Some((p.transaction_id(), service.handle(p.payload(), tx)));
                        }
                        _ => other = true,
                    })?;
            if read == 0 {
                break;
            }
            match reply {
                Some((transaction_id, Ok(r))) => {
                    self.channel
                        .send_reply(conn, transaction_id, &[&self.tx[..r.len]])?;
                    answered += 1;
                    if r.event != IcEvent::None {
                        on_event(r.event);
                    }
                }
                Some((_, Err(e))) => {
                    log::warn!(
                        "IC channel {}: dropped a malformed request: {e}",
                        self.relid()
                    );
                    self.dropped += 1;
                    on_event(IcEvent::Rejected(e));
                }
                None => {
                    debug_assert!(other);
                    log::warn!(
                        "IC channel {}: ignored a packet that is not a request",
                        self.relid()
                    );
                    self.dropped += 1;
                }
            }
        }
        Ok(answered)
    }

    /// Closes the channel (see [`Channel::close`]) and gives the handler back.
    pub fn close<T: Transport, A: Hal>(
        self,
        conn: &mut Connection<T, A>,
        waiter: &mut impl Wait,
    ) -> Result<H, IcChannelError> {
        self.channel.close(conn, waiter)?;
        Ok(self.service.into_handler())
    }
}
