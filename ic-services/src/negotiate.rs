//! Framework and service version negotiation (icmsgtype 0, devices §6.2).
//!
//! The host offers `icframe_vercnt` framework versions followed by `icmsg_vercnt` service
//! versions. The guest walks its own lists in preference order and picks the first entry the
//! host offers in the corresponding part. The answer has counts 1/1 with the chosen framework
//! version in slot 0 and the chosen service version in slot 1, `icmsgsize` 16; if a part has no
//! match (or the offer is malformed) the counts are 0/0, and Linux still replies.

use crate::IcError;
use crate::protocol::{IcVersion, NEGOTIATE_MAX_VERSION_COUNT, NegotiateHeader, WireVersion};
use zerocopy::{FromBytes, IntoBytes};

/// Picks the first of `ours` (preference order) that appears in `offered`.
pub fn pick(ours: &[IcVersion], offered: &[WireVersion]) -> Option<IcVersion> {
    ours.iter()
        .copied()
        .find(|v| offered.iter().any(|w| IcVersion::from_wire(*w) == *v))
}

/// Parses a NEGOTIATE payload (`received` bytes at the start of `payload`) and chooses a
/// framework and a service version.
pub fn choose(
    payload: &[u8],
    framework: &[IcVersion],
    service: &[IcVersion],
) -> Result<(IcVersion, IcVersion), IcError> {
    let Ok((head, rest)) = NegotiateHeader::read_from_prefix(payload) else {
        return Err(IcError::TruncatedPayload {
            msg_type: crate::IcMsgType::NEGOTIATE,
            needed: core::mem::size_of::<NegotiateHeader>(),
            got: payload.len(),
        });
    };
    let fw_count = head.icframe_vercnt.get();
    let msg_count = head.icmsg_vercnt.get();
    let bad = IcError::BadNegotiateCounts {
        framework: fw_count,
        service: msg_count,
    };
    let (fw_count, msg_count) = (usize::from(fw_count), usize::from(msg_count));
    if fw_count > NEGOTIATE_MAX_VERSION_COUNT || msg_count > NEGOTIATE_MAX_VERSION_COUNT {
        return Err(bad);
    }
    let Ok((versions, _)) = <[WireVersion]>::ref_from_prefix_with_elems(rest, fw_count + msg_count)
    else {
        return Err(bad);
    };
    let (fw_offered, msg_offered) = versions.split_at(fw_count);
    let fw = pick(framework, fw_offered).ok_or(IcError::NoCommonVersion)?;
    let msg = pick(service, msg_offered).ok_or(IcError::NoCommonVersion)?;
    Ok((fw, msg))
}

/// Turns the NEGOTIATE payload in `payload` (of which the first `received` bytes came from the
/// host; `payload` must be at least 16 bytes) into the guest's answer, and returns the chosen
/// versions or why there are none (the answer then has counts 0/0).
pub fn respond(
    payload: &mut [u8],
    received: usize,
    framework: &[IcVersion],
    service: &[IcVersion],
) -> Result<(IcVersion, IcVersion), IcError> {
    let received = received.min(payload.len());
    let result = choose(&payload[..received], framework, service);
    let (count, fw, msg) = match result {
        Ok((fw, msg)) => (1u16, fw, msg),
        Err(_) => (0u16, IcVersion::default(), IcVersion::default()),
    };
    let head = NegotiateHeader {
        icframe_vercnt: count.into(),
        icmsg_vercnt: count.into(),
        reserved: 0.into(),
    };
    let answer = [fw.to_wire(), msg.to_wire()];
    let Some(out) = payload.get_mut(..16) else {
        return Err(IcError::ResponseBufferTooSmall {
            needed: 16,
            got: payload.len(),
        });
    };
    out[..8].copy_from_slice(head.as_bytes());
    out[8..16].copy_from_slice(answer.as_bytes());
    result
}
