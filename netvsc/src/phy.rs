//! A `smoltcp::phy::Device` over a [`Nic`] (feature `smoltcp`).
//!
//! Receive pulls one frame per token through [`Nic::receive_with`] (the rest of a multi-frame
//! transfer-page packet waits in the NIC, so no frame queue is needed); the frame is copied
//! into the device's own buffer because smoltcp holds the receive and transmit tokens at the
//! same time. Transmit has smoltcp build the frame in the NIC's private buffer
//! ([`Nic::queue_frame_with`]), from which it is copied into a send section once, and submits
//! it (smoltcp has no end-of-poll hook to close a burst on; bursts are [`Nic::send_batch`]'s).
//! Frames smoltcp produced but the NIC could not take (back-pressure, a dead channel) are
//! counted in [`DeviceStats`], never dropped silently.

use smoltcp::phy::{self, DeviceCapabilities, Medium};
use smoltcp::time::Instant;
use vmbus_guest::{Hal, Transport};

use crate::nic::{MAX_RECEIVE_MESSAGE, NetError, Nic};

/// Packets (host packets, not frames) one `receive` may process looking for a frame.
const RECEIVE_BUDGET: usize = 16;

/// Frames lost between smoltcp and the NIC.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct DeviceStats {
    /// Frames smoltcp built that the NIC refused (the reason is in the NIC's counters).
    pub tx_dropped: u64,
    /// Receive calls that failed (the channel is dead; see [`NetvscDevice::last_error`]).
    pub rx_errors: u64,
}

/// smoltcp's view of a NIC. Borrow it for each `Interface::poll`.
pub struct NetvscDevice<
    'n,
    'b,
    T: Transport,
    H: Hal,
    const N: usize = 64,
    const M: usize = MAX_RECEIVE_MESSAGE,
> {
    nic: &'n mut Nic<'b, T, H, N, M>,
    rx: [u8; M],
    stats: DeviceStats,
    last_error: Option<NetError>,
}

impl<'n, 'b, T: Transport, H: Hal, const N: usize, const M: usize>
    NetvscDevice<'n, 'b, T, H, N, M>
{
    /// Wraps `nic`.
    pub fn new(nic: &'n mut Nic<'b, T, H, N, M>) -> Self {
        Self {
            nic,
            rx: [0; M],
            stats: DeviceStats::default(),
            last_error: None,
        }
    }

    /// The NIC.
    pub fn nic(&mut self) -> &mut Nic<'b, T, H, N, M> {
        self.nic
    }

    /// Counters of frames lost between smoltcp and the NIC.
    pub fn stats(&self) -> DeviceStats {
        self.stats
    }

    /// The last error the NIC returned to the device, if any.
    pub fn last_error(&self) -> Option<NetError> {
        self.last_error
    }
}

/// A received frame (a copy in the device's buffer).
pub struct RxToken<'a> {
    frame: &'a [u8],
}

impl phy::RxToken for RxToken<'_> {
    fn consume<R, F>(self, f: F) -> R
    where
        F: FnOnce(&[u8]) -> R,
    {
        f(self.frame)
    }
}

/// Permission to send one frame.
pub struct TxToken<'a, 'b, T: Transport, H: Hal, const N: usize, const M: usize> {
    nic: &'a mut Nic<'b, T, H, N, M>,
    stats: &'a mut DeviceStats,
    last_error: &'a mut Option<NetError>,
}

impl<T: Transport, H: Hal, const N: usize, const M: usize> phy::TxToken
    for TxToken<'_, '_, T, H, N, M>
{
    fn consume<R, F>(self, len: usize, f: F) -> R
    where
        F: FnOnce(&mut [u8]) -> R,
    {
        // smoltcp builds the frame in the NIC's private buffer, which the NIC copies into
        // its send section once (no reference to host memory exists). smoltcp has no
        // end-of-poll hook, so the frame is submitted at once (a refused submission is
        // retried by the next poll, the frame staying queued).
        let mut f = Some(f);
        let mut out = None;
        let result = self
            .nic
            .queue_frame_with(len, |buf| {
                out = f.take().map(|f| f(buf));
            })
            .and_then(|()| match self.nic.flush() {
                Ok(()) | Err(NetError::Busy(_)) => Ok(()),
                Err(e) => Err(e),
            });
        if let Err(e) = result {
            log::debug!("netvsc smoltcp device: frame of {len} bytes not sent: {e}");
            self.stats.tx_dropped += 1;
            *self.last_error = Some(e);
        }
        match (out, f) {
            (Some(r), _) => r,
            // Refused before it was built: smoltcp still gets its result.
            (None, Some(f)) => {
                let mut buf = [0u8; M];
                f(&mut buf[..len.min(M)])
            }
            (None, None) => unreachable!("the frame was built, so it produced a result"),
        }
    }
}

impl<'n, 'b, T: Transport, H: Hal, const N: usize, const M: usize> phy::Device
    for NetvscDevice<'n, 'b, T, H, N, M>
{
    type RxToken<'a>
        = RxToken<'a>
    where
        Self: 'a;
    type TxToken<'a>
        = TxToken<'a, 'b, T, H, N, M>
    where
        Self: 'a;

    fn receive(&mut self, _timestamp: Instant) -> Option<(Self::RxToken<'_>, Self::TxToken<'_>)> {
        let Self {
            nic,
            rx,
            stats,
            last_error,
        } = self;
        let got = nic.receive_with(RECEIVE_BUDGET, |frame| {
            let n = frame.len().min(rx.len());
            rx[..n].copy_from_slice(&frame[..n]);
            n
        });
        match got {
            Ok(Some(n)) => Some((
                RxToken { frame: &rx[..n] },
                TxToken {
                    nic,
                    stats,
                    last_error,
                },
            )),
            Ok(None) => None,
            Err(e) => {
                stats.rx_errors += 1;
                *last_error = Some(e);
                None
            }
        }
    }

    fn transmit(&mut self, _timestamp: Instant) -> Option<Self::TxToken<'_>> {
        // Completions that free sections are reaped by `receive` (smoltcp calls it on every
        // poll); reaping here would have to consume frames too.
        self.nic.can_send().then_some(TxToken {
            nic: self.nic,
            stats: &mut self.stats,
            last_error: &mut self.last_error,
        })
    }

    fn capabilities(&self) -> DeviceCapabilities {
        let mut caps = DeviceCapabilities::default();
        caps.medium = Medium::Ethernet;
        caps.max_transmission_unit = self.nic.max_frame_len();
        caps
    }
}
