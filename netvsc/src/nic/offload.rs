//! Offload negotiation during bring-up (devices §7.1 step 8, §2.13): query the host's
//! TCP_OFFLOAD_HARDWARE_CAPABILITIES, set TCP_OFFLOAD_PARAMETERS from them. Optional: a host
//! that does not answer, answers something malformed or refuses the parameters leaves the
//! NIC without offloads; only a dead channel fails the open.

use zerocopy::IntoBytes;

use super::*;
use crate::offload::rsc::RSC_MAX_FRAME;
use crate::offload::{negotiate_rsc, parse_offload};
use crate::protocol::{
    NDIS_CAP_RSC, NDIS_OFFLOAD_SIZE_REV1, NDIS_OFFLOAD_SIZE_REV2, NDIS_OFFLOAD_SIZE_REV3,
    NdisObjectHeader, NdisOffload, ndis_object,
};

/// The revision and size of the NDIS_OFFLOAD a guest of NVSP `version` names in its query:
/// 3 / 156 from NVSP 5 (NDIS 6.30), 2 / 144 at NVSP 4 (NDIS 6.1), 1 / 112 before (Linux,
/// devices §2.13.1). The reply buffer takes any revision up to 256 bytes regardless.
fn query_header(version: NvspVersion) -> NdisObjectHeader {
    let (revision, size) = if version >= NvspVersion::V5 {
        (3, NDIS_OFFLOAD_SIZE_REV3)
    } else if version >= NvspVersion::V4 {
        (2, NDIS_OFFLOAD_SIZE_REV2)
    } else {
        (1, NDIS_OFFLOAD_SIZE_REV1)
    };
    NdisObjectHeader {
        object_type: ndis_object::OFFLOAD,
        revision,
        size: size.into(),
    }
}

/// The reassembly area of queue `index` in the caller's RSC storage (empty without one).
pub(super) fn rsc_area(storage: Option<&mut [u8]>, index: usize) -> &mut [u8] {
    storage
        .and_then(|s| s.chunks_exact_mut(RSC_MAX_FRAME).nth(index))
        .unwrap_or_default()
}

/// Errors that end the open; anything else only means "no offloads".
fn fatal(e: &NetError) -> bool {
    matches!(e, NetError::Channel(_) | NetError::Vmbus(_))
}

impl<'b, T: Transport, H: Hal, const N: usize, const M: usize> Nic<'b, T, H, N, M> {
    /// Reassembly areas of [`RSC_MAX_FRAME`] bytes the caller's storage holds (0 without).
    pub(super) fn rsc_areas(&self) -> usize {
        self.rsc_storage
            .as_ref()
            .map_or(0, |s| s.len() / RSC_MAX_FRAME)
    }

    /// Whether the NIC asks for RSC: configured, offloads on, and storage for a frame.
    pub(super) fn wants_rsc(&self, config: &NicConfig) -> bool {
        config.rsc && config.offloads && self.rsc_areas() > 0
    }

    /// SEND_NDIS_CONFIG capabilities (devices §2.6): IEEE 802.1Q always, RSC from NVSP 6.1
    /// when the NIC asks for it (Linux announces RSC at 6.1 whatever its LRO setting; a NIC
    /// without reassembly storage does not claim it).
    pub(super) fn ndis_capabilities(&self, version: NvspVersion, config: &NicConfig) -> u64 {
        let mut caps = version.ndis_capabilities();
        if version >= NvspVersion::V61 && self.wants_rsc(config) {
            caps |= NDIS_CAP_RSC;
        }
        caps
    }

    pub(super) fn negotiate_offloads(
        &mut self,
        rsc: bool,
        waiter: &mut impl Wait,
    ) -> Result<(), NetError> {
        let relid = self.channel.relid();
        let header = query_header(self.core.info.version);
        // The input is the whole object, zeroed but for its header (Linux, FreeBSD).
        let input = NdisOffload {
            header,
            ..Default::default()
        };
        let input = &input.as_bytes()[..usize::from(header.size.get())];
        let reply = match self.query_with(oid::TCP_OFFLOAD_HARDWARE_CAPABILITIES, input, waiter) {
            Ok(r) => r,
            Err(e) if fatal(&e) => return Err(e),
            Err(e) => {
                log::info!("netvsc {relid}: no offload capabilities ({e}): no offloads");
                return Ok(());
            }
        };
        let caps = match parse_offload(&reply.info[..reply.info_len]) {
            Ok(c) => c,
            Err(e) => {
                log::warn!("netvsc {relid}: offload capabilities refused ({e}): no offloads");
                return Ok(());
            }
        };
        self.core.info.offload_caps = Some(caps);
        let n = negotiate_rsc(&caps, self.core.info.version, rsc);
        if n.offloads == Offloads::NONE {
            return Ok(());
        }
        match self.set(oid::TCP_OFFLOAD_PARAMETERS, n.bytes(), waiter) {
            Ok(()) => {
                self.core.info.offloads = n.offloads;
                Ok(())
            }
            Err(e) if fatal(&e) => Err(e),
            Err(e) => {
                log::warn!("netvsc {relid}: offload parameters refused ({e}): no offloads");
                Ok(())
            }
        }
    }
}
