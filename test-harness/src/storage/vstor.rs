//! The VSP's own statement of the version-dependent VSTOR rules and its packet helpers, taken
//! from devices §3 and not from `storvsc`: the mock is the guest's test oracle, so a mistake in
//! the guest's version logic must show up as a disagreement, not be shared. Only the plain
//! wire structs (`VstorPacket`, `VmscsiRequest`, ...) and pure numbers come from
//! `storvsc::protocol`.

use storvsc::protocol::{VmscsiRequest, VstorPacket, VstorVersion};
use zerocopy::{FromBytes, FromZeros, Immutable, IntoBytes, KnownLayout};

/// WIN8 = 5.1 (devices §3.1, `(major << 8) | minor`): the first version with the Win8 SRB
/// extension, sub-channels and the 64-byte packet.
pub(super) const WIN8: u16 = 0x0501;

/// Every VSTOR version of devices §3.1, newest first: WIN10 6.2, WIN8.1 6.0, WIN8 5.1, WIN7
/// 4.2, WIN6 2.0. A Windows Server 2016+ host accepts them all.
pub(super) const ALL_VERSIONS_NEWEST_FIRST: [VstorVersion; 5] = [
    VstorVersion(0x0602),
    VstorVersion(0x0600),
    VstorVersion(0x0501),
    VstorVersion(0x0402),
    VstorVersion(0x0200),
];

/// What the OpenVMM host accepts (devices §3.1): 0x0200, 0x0402, 0x0501, 0x0600; it refuses
/// 0x0602 with REVISION_MISMATCH.
pub(super) const OPENVMM_VERSIONS: [VstorVersion; 4] = [
    VstorVersion(0x0200),
    VstorVersion(0x0402),
    VstorVersion(0x0501),
    VstorVersion(0x0600),
];

/// vstor_packet size for Win8+ hosts: 12-byte header + 0x34 payload (devices §3.3).
pub(super) const PACKET_SIZE_WIN8: usize = 64;
/// vstor_packet size for Win6/Win7 hosts: 12-byte header + 0x24 payload (devices §3.3).
pub(super) const PACKET_SIZE_PRE_WIN8: usize = 48;

/// Whether `v` is WIN8 or later, i.e. uses the Win8 SRB extension (devices §3.1, §3.3).
pub(super) fn is_win8_or_later(v: VstorVersion) -> bool {
    v.0 >= WIN8
}

/// Size of every vstor_packet once `v` is negotiated: 64 bytes for Win8+, 48 for Win6/Win7
/// (devices §3.3; OpenVMM pads its completions to exactly this because Windows guests check).
pub(super) fn packet_size(v: VstorVersion) -> usize {
    if is_win8_or_later(v) {
        PACKET_SIZE_WIN8
    } else {
        PACKET_SIZE_PRE_WIN8
    }
}

/// `vmscsi_request.length` for `v`: 52 for Win8+, 36 for older hosts (devices §3.4 @0).
pub(super) fn srb_length(v: VstorVersion) -> u16 {
    if is_win8_or_later(v) { 52 } else { 36 }
}

/// `major.minor` of a version word (devices §3.1), for messages.
pub(super) fn version_name(v: VstorVersion) -> String {
    format!("{}.{} ({:#06x})", v.0 >> 8, v.0 & 0xFF, v.0)
}

/// A guest packet as a full-size `VstorPacket`: it must hold at least the 48-byte pre-Win8
/// packet (devices §3.3); bytes past 64 are ignored, missing ones (48..64) read as zero.
pub(super) fn parse_packet(bytes: &[u8]) -> Option<VstorPacket> {
    if bytes.len() < PACKET_SIZE_PRE_WIN8 {
        return None;
    }
    let mut p = VstorPacket::new_zeroed();
    let n = bytes.len().min(PACKET_SIZE_WIN8);
    p.as_mut_bytes()[..n].copy_from_slice(&bytes[..n]);
    Some(p)
}

/// A host packet: `operation`, flags 0 (the host never asks for a completion), status 0, a
/// zero payload.
pub(super) fn host_packet(operation: u32) -> VstorPacket {
    let mut p = VstorPacket::new_zeroed();
    p.operation.set(operation);
    p
}

/// The SRB in a packet's payload (devices §3.4: the EXECUTE_SRB payload).
pub(super) fn srb_of(p: &VstorPacket) -> VmscsiRequest {
    payload_as(&p.payload)
}

/// Reads a `T` from the start of a payload (zero-extended if the payload is shorter).
pub(super) fn payload_as<T: FromBytes + IntoBytes + KnownLayout + Immutable>(payload: &[u8]) -> T {
    let mut t = T::new_zeroed();
    let dst = t.as_mut_bytes();
    let n = dst.len().min(payload.len());
    dst[..n].copy_from_slice(&payload[..n]);
    t
}

/// Writes `t` at the start of `payload` (truncated to the payload).
pub(super) fn set_payload<T: IntoBytes + Immutable>(payload: &mut [u8], t: &T) {
    let src = t.as_bytes();
    let n = src.len().min(payload.len());
    payload[..n].copy_from_slice(&src[..n]);
}

#[cfg(test)]
mod tests {
    use super::*;

    /// devices §3.1 (version words) and §3.3/§3.4 (sizes by version).
    #[test]
    fn sizes_by_version_follow_devices_3() {
        // (word, Win8+, packet bytes, SRB length)
        let table = [
            (0x0200, false, 48, 36), // WIN6, WS2008
            (0x0402, false, 48, 36), // WIN7, WS2008 R2
            (0x0501, true, 64, 52),  // WIN8, WS2012
            (0x0600, true, 64, 52),  // WIN8.1, WS2012 R2
            (0x0602, true, 64, 52),  // WIN10, WS2016+
        ];
        for (word, win8, packet, srb) in table {
            let v = VstorVersion(word);
            assert_eq!(is_win8_or_later(v), win8, "{word:#06x}");
            assert_eq!(packet_size(v), packet, "{word:#06x}");
            assert_eq!(srb_length(v), srb, "{word:#06x}");
        }
        // 48 = 12 + 0x24 and 64 = 12 + 0x34; the difference is the 16-byte Win8 extension.
        assert_eq!(PACKET_SIZE_PRE_WIN8, 12 + 0x24);
        assert_eq!(PACKET_SIZE_WIN8, 12 + 0x34);
        assert_eq!(
            srb_length(VstorVersion(0x0501)) - srb_length(VstorVersion(0x0402)),
            16
        );
    }

    #[test]
    fn version_lists_follow_devices_3_1() {
        let words = |l: &[VstorVersion]| l.iter().map(|v| v.0).collect::<Vec<_>>();
        assert_eq!(
            words(&ALL_VERSIONS_NEWEST_FIRST),
            [0x0602, 0x0600, 0x0501, 0x0402, 0x0200]
        );
        assert_eq!(words(&OPENVMM_VERSIONS), [0x0200, 0x0402, 0x0501, 0x0600]);
        assert_eq!(version_name(VstorVersion(0x0602)), "6.2 (0x0602)");
    }

    #[test]
    fn parse_needs_the_48_byte_packet() {
        assert!(parse_packet(&[0; 47]).is_none());
        let mut b = [0u8; 48];
        b[0] = 9;
        b[4] = 1;
        b[12] = 0x02;
        b[13] = 0x06;
        let p = parse_packet(&b).unwrap();
        assert_eq!(p.operation.get(), 9);
        assert_eq!(p.flags.get(), 1);
        assert_eq!(&p.payload[..2], &[0x02, 0x06]);
        assert!(p.payload[36..].iter().all(|&x| x == 0));
        let mut long = [0xFFu8; 80];
        long[0..4].copy_from_slice(&3u32.to_le_bytes());
        assert_eq!(parse_packet(&long).unwrap().as_bytes().len(), 64);
        let h = host_packet(1);
        assert_eq!(&h.as_bytes()[..12], &[1, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0]);
    }
}
