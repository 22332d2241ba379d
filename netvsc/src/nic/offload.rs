//! Offload negotiation during bring-up (devices §7.1 step 8, §2.13): query the host's
//! TCP_OFFLOAD_HARDWARE_CAPABILITIES, set TCP_OFFLOAD_PARAMETERS from them. Optional: a host
//! that does not answer, answers something malformed or refuses the parameters leaves the
//! NIC without offloads; only a dead channel fails the open.

use zerocopy::IntoBytes;

use super::*;
use crate::offload::{negotiate, parse_offload};
use crate::protocol::{
    NDIS_OFFLOAD_SIZE_REV1, NDIS_OFFLOAD_SIZE_REV2, NDIS_OFFLOAD_SIZE_REV3, NdisObjectHeader,
    NdisOffload, ndis_object,
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

/// Errors that end the open; anything else only means "no offloads".
fn fatal(e: &NetError) -> bool {
    matches!(e, NetError::Channel(_) | NetError::Vmbus(_))
}

impl<'b, T: Transport, H: Hal, const N: usize, const M: usize> Nic<'b, T, H, N, M> {
    pub(super) fn negotiate_offloads(&mut self, waiter: &mut impl Wait) -> Result<(), NetError> {
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
        let n = negotiate(&caps, self.core.info.version);
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
