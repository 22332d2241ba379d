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
//!
//! Interrupts: a receive that runs out of budget leaves the NIC's ring masked, so the host
//! does not interrupt for what is left. After `Interface::poll`, poll again at once while
//! [`NetvscDevice::needs_poll`] (or [`Nic::receive_pending`]) says so; wait for the channel's
//! interrupt only when it does not.
//!
//! Checksums: smoltcp's `DeviceCapabilities::checksum` follows the negotiated offloads.
//! With any TCP/UDP transmit offload, smoltcp leaves TCP and UDP checksums to the device,
//! which sends frames through [`Nic::queue_frame_checksum_with`] (offloaded where the host
//! does it, computed in software otherwise, e.g. UDP on an old host). With a receive offload
//! smoltcp stops verifying that checksum, so the device drops frames the host found bad and
//! verifies in software those the host did not check (another IP version, a host that
//! skipped it). IPv4 fragments and IPv6 frames with extension headers cannot be verified by
//! the device; they are passed on unverified and counted ([`DeviceStats::rx_unverified`]).
//!
//! Frame size: the device advertises the NIC's maximum frame (MTU + 14) and copies each
//! received frame into an `M`-byte buffer. Receive segment coalescing would hand it frames of
//! up to 64 KiB, so use a NIC opened without RSC storage ([`Nic::open`]: RSC stays off);
//! a larger frame that still arrives is dropped and counted ([`DeviceStats::rx_too_large`]),
//! never cut short.

use smoltcp::phy::{self, Checksum, DeviceCapabilities, Medium};
use smoltcp::time::Instant;
use vmbus_guest::{Hal, Transport};

use crate::nic::{MAX_RECEIVE_MESSAGE, NetError, Nic};
use crate::offload::frame::{ipv4_header_ok, l4_checksum_ok};
use crate::offload::{CsumStatus, FrameError, L4Proto, Offloads, RxChecksum, l4_of};

/// Packets (host packets, not frames) one `receive` may process looking for a frame.
const RECEIVE_BUDGET: usize = 16;

/// Frames lost between smoltcp and the NIC.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct DeviceStats {
    /// Frames smoltcp built that the NIC refused (the reason is in the NIC's counters).
    pub tx_dropped: u64,
    /// Receive calls that failed (the channel is dead; see [`NetvscDevice::last_error`]).
    pub rx_errors: u64,
    /// Received frames dropped for a wrong checksum smoltcp was told not to verify: the
    /// host's verdict was bad, or the device's software check failed.
    pub rx_csum_dropped: u64,
    /// Received frames whose TCP/UDP checksum neither the host, the device nor smoltcp
    /// verifies (IPv4 fragments, IPv6 extension headers, with a receive offload on).
    pub rx_unverified: u64,
    /// Received frames larger than the device's copy buffer (coalesced RSC frames of a NIC
    /// opened with RSC storage): dropped.
    pub rx_too_large: u64,
}

/// Which checksums the device (the host's offload, or the device in software) takes over
/// from smoltcp.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Duties {
    /// TCP and UDP checksums on transmit (through the NIC's checksum API).
    tx_l4: bool,
    /// IPv4 header checksum on receive.
    rx_ip4: bool,
    /// TCP checksum on receive.
    rx_tcp: bool,
    /// UDP checksum on receive.
    rx_udp: bool,
}

impl Duties {
    fn of(o: &Offloads) -> Self {
        Self {
            tx_l4: o.tx.tcp4 || o.tx.tcp6 || o.tx.udp4 || o.tx.udp6,
            rx_ip4: o.rx.ip4,
            rx_tcp: o.rx.tcp4 || o.rx.tcp6,
            rx_udp: o.rx.udp4 || o.rx.udp6,
        }
    }

    /// Whether a received frame is handed to smoltcp: no bad host verdict, and what smoltcp
    /// will not verify and the host did not check is right in software. `None`: passed on
    /// unverified.
    fn accept(&self, frame: &[u8], verdict: RxChecksum) -> Option<bool> {
        if verdict.is_bad() {
            return Some(false);
        }
        if self.rx_ip4 && verdict.ip != CsumStatus::Good && ipv4_header_ok(frame) == Some(false) {
            return Some(false);
        }
        let tcp = self.rx_tcp && verdict.tcp != CsumStatus::Good;
        let udp = self.rx_udp && verdict.udp != CsumStatus::Good;
        if !tcp && !udp {
            return Some(true);
        }
        match l4_of(frame) {
            Ok(l4) => {
                let check = match l4.proto {
                    L4Proto::Tcp => tcp,
                    L4Proto::Udp => udp,
                };
                Some(!check || l4_checksum_ok(frame, &l4))
            }
            Err(FrameError::Fragment) => None,
            // IPv6 next header that is an extension header (hop-by-hop, routing, fragment,
            // destination options) may hide TCP/UDP.
            Err(FrameError::NotTcpUdp(0 | 43 | 44 | 60))
                if frame.get(12..14) == Some(&[0x86, 0xDD]) =>
            {
                None
            }
            // Not TCP/UDP (smoltcp verifies ICMP itself) or malformed (smoltcp rejects it).
            Err(_) => Some(true),
        }
    }

    fn smoltcp(dev_tx: bool, dev_rx: bool) -> Checksum {
        match (dev_tx, dev_rx) {
            (false, false) => Checksum::Both,
            (true, false) => Checksum::Rx,
            (false, true) => Checksum::Tx,
            (true, true) => Checksum::None,
        }
    }
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

    /// Whether host packets are still waiting after smoltcp's last receive (its per-call
    /// budget ran out: [`Nic::receive_pending`]). The ring stays masked meanwhile, so no
    /// interrupt announces them: poll the interface again before waiting for one.
    pub fn needs_poll(&self) -> bool {
        self.nic.receive_pending()
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
    /// The device fills TCP/UDP checksums (smoltcp was told not to).
    checksum: bool,
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
        let build = |buf: &mut [u8]| {
            out = f.take().map(|f| f(buf));
        };
        let queued = if self.checksum {
            self.nic.queue_frame_checksum_with(len, build)
        } else {
            self.nic.queue_frame_with(len, build)
        };
        let result = queued.and_then(|()| match self.nic.flush() {
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
        let duties = Duties::of(&nic.offloads());
        // Frames dropped for their checksum, and a budget spent on packets that were no
        // frames, do not end the receive: the next call is tried (bounded; what is left is
        // reported by `needs_poll`).
        for _ in 0..RECEIVE_BUDGET {
            let got = nic.receive_with_checksum(RECEIVE_BUDGET, |frame, verdict| {
                let n = frame.len();
                if let Some(dst) = rx.get_mut(..n) {
                    dst.copy_from_slice(frame);
                }
                (n, verdict)
            });
            match got {
                Ok(Some((n, _))) if n > rx.len() => {
                    stats.rx_too_large += 1;
                    continue;
                }
                Ok(Some((n, verdict))) => {
                    match duties.accept(&rx[..n], verdict) {
                        Some(true) => {}
                        Some(false) => {
                            stats.rx_csum_dropped += 1;
                            continue;
                        }
                        None => stats.rx_unverified += 1,
                    }
                    return Some((
                        RxToken { frame: &rx[..n] },
                        TxToken {
                            nic,
                            checksum: duties.tx_l4,
                            stats,
                            last_error,
                        },
                    ));
                }
                Ok(None) if nic.receive_pending() => continue,
                Ok(None) => return None,
                Err(e) => {
                    stats.rx_errors += 1;
                    *last_error = Some(e);
                    return None;
                }
            }
        }
        None
    }

    fn transmit(&mut self, _timestamp: Instant) -> Option<Self::TxToken<'_>> {
        // Completions that free sections are reaped by `receive` (smoltcp calls it on every
        // poll); reaping here would have to consume frames too.
        let checksum = Duties::of(&self.nic.offloads()).tx_l4;
        self.nic.can_send().then_some(TxToken {
            nic: self.nic,
            checksum,
            stats: &mut self.stats,
            last_error: &mut self.last_error,
        })
    }

    fn capabilities(&self) -> DeviceCapabilities {
        let mut caps = DeviceCapabilities::default();
        caps.medium = Medium::Ethernet;
        caps.max_transmission_unit = self.nic.max_frame_len();
        let d = Duties::of(&self.nic.offloads());
        // The IPv4 header checksum is always computed by smoltcp on transmit.
        caps.checksum.ipv4 = Duties::smoltcp(false, d.rx_ip4);
        caps.checksum.tcp = Duties::smoltcp(d.tx_l4, d.rx_tcp);
        caps.checksum.udp = Duties::smoltcp(d.tx_l4, d.rx_udp);
        caps
    }
}
