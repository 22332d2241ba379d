//! A virtual switch joining mock NICs: each port has a MAC, the guest's packet filter and a
//! link state; a frame sent on one port is delivered to every other port whose filter accepts
//! it (directed to its MAC, broadcast, multicast or promiscuous). An uplink port (a TAP
//! bridge) takes every frame and hands it to its sink at once instead of queueing it.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

/// RNDIS packet filter bits (devices §2.12), as the switch applies them.
const DIRECTED: u32 = 0x1;
const MULTICAST: u32 = 0x2;
const ALL_MULTICAST: u32 = 0x4;
const BROADCAST: u32 = 0x8;
const PROMISCUOUS: u32 = 0x20;

/// Where an uplink port's frames go (called on the forwarding thread, outside the lock).
pub type Sink = Box<dyn Fn(&[u8]) + Send + Sync>;

struct Port {
    mac: [u8; 6],
    filter: u32,
    link_up: bool,
    inbox: VecDeque<Vec<u8>>,
    sink: Option<Arc<Sink>>,
}

impl std::fmt::Debug for Port {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Port")
            .field("mac", &self.mac)
            .field("filter", &self.filter)
            .field("link_up", &self.link_up)
            .field("queued", &self.inbox.len())
            .field("uplink", &self.sink.is_some())
            .finish()
    }
}

#[derive(Debug, Default)]
struct SwitchState {
    ports: Vec<Port>,
    forwarded: u64,
    dropped_link_down: u64,
    unmatched: u64,
}

/// A virtual switch; a cheap clone sharing one state.
#[derive(Clone, Debug, Default)]
pub struct VirtualSwitch(Arc<Mutex<SwitchState>>);

/// Counters of a [`VirtualSwitch`].
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SwitchStats {
    /// Frame deliveries into a port's inbox.
    pub forwarded: u64,
    /// Frames sent from or to a port whose link is down.
    pub dropped_link_down: u64,
    /// Frames no other port accepted.
    pub unmatched: u64,
}

impl VirtualSwitch {
    /// An empty switch.
    pub fn new() -> Self {
        Self::default()
    }

    fn lock(&self) -> MutexGuard<'_, SwitchState> {
        self.0.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Adds a port for a NIC with `mac` (filter 0 until the guest sets one, link up).
    pub fn add_port(&self, mac: [u8; 6]) -> usize {
        let mut s = self.lock();
        s.ports.push(Port {
            mac,
            filter: 0,
            link_up: true,
            inbox: VecDeque::new(),
            sink: None,
        });
        s.ports.len() - 1
    }

    /// Adds a promiscuous uplink port whose frames go to `sink` as they are forwarded.
    pub fn add_uplink(&self, sink: Sink) -> usize {
        let mut s = self.lock();
        s.ports.push(Port {
            mac: [0; 6],
            filter: PROMISCUOUS,
            link_up: true,
            inbox: VecDeque::new(),
            sink: Some(Arc::new(sink)),
        });
        s.ports.len() - 1
    }

    /// Disconnects an uplink's sink (the port then takes no frames).
    pub fn detach_uplink(&self, port: usize) {
        if let Some(p) = self.lock().ports.get_mut(port) {
            p.sink = None;
            p.filter = 0;
        }
    }

    pub(crate) fn set_filter(&self, port: usize, filter: u32) {
        if let Some(p) = self.lock().ports.get_mut(port) {
            p.filter = filter;
        }
    }

    pub(crate) fn set_link(&self, port: usize, up: bool) {
        if let Some(p) = self.lock().ports.get_mut(port) {
            p.link_up = up;
            if !up {
                p.inbox.clear();
            }
        }
    }

    /// Sends `frame` from `from` to every accepting port; returns the deliveries.
    pub fn forward(&self, from: usize, frame: &[u8]) -> usize {
        let mut s = self.lock();
        if frame.len() < 14 || !s.ports.get(from).is_some_and(|p| p.link_up) {
            s.dropped_link_down += 1;
            return 0;
        }
        let dst: [u8; 6] = frame[..6].try_into().unwrap_or([0; 6]);
        let mut n = 0;
        let mut down = 0;
        let mut sinks = Vec::new();
        for (i, p) in s.ports.iter_mut().enumerate() {
            if i == from {
                continue;
            }
            let accept = p.filter & PROMISCUOUS != 0
                || (dst == [0xFF; 6] && p.filter & BROADCAST != 0)
                || (dst != [0xFF; 6]
                    && dst[0] & 1 != 0
                    && p.filter & (MULTICAST | ALL_MULTICAST) != 0)
                || (dst == p.mac && p.filter & DIRECTED != 0);
            if !accept {
                continue;
            }
            if !p.link_up {
                down += 1;
                continue;
            }
            match &p.sink {
                Some(sink) => sinks.push(sink.clone()),
                None => p.inbox.push_back(frame.to_vec()),
            }
            n += 1;
        }
        s.forwarded += n as u64;
        s.dropped_link_down += down;
        if n == 0 && down == 0 {
            s.unmatched += 1;
        }
        drop(s);
        for sink in sinks {
            sink(frame);
        }
        n
    }

    /// Injects `frame` into `port`'s inbox as if another station had sent it.
    pub fn inject(&self, port: usize, frame: &[u8]) {
        if let Some(p) = self.lock().ports.get_mut(port) {
            p.inbox.push_back(frame.to_vec());
        }
    }

    pub(crate) fn take(&self, port: usize) -> Option<Vec<u8>> {
        self.lock().ports.get_mut(port)?.inbox.pop_front()
    }

    /// Counters.
    pub fn stats(&self) -> SwitchStats {
        let s = self.lock();
        SwitchStats {
            forwarded: s.forwarded,
            dropped_link_down: s.dropped_link_down,
            unmatched: s.unmatched,
        }
    }
}
