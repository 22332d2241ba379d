//! The storvsc initialisation handshake (devices §7.2) as a state machine without a channel:
//! BEGIN_INITIALIZATION → QUERY_PROTOCOL_VERSION (newest first, next candidate on a non-zero
//! status) → QUERY_PROPERTIES → END_INITIALIZATION.
//!
//! The glue loop is: `while let Some(n) = hs.next_request(&mut buf)` send `buf[..n]` as an
//! in-band packet with completion requested, wait for its completion, feed the completion
//! payload to [`Handshake::on_completion`] until it returns [`Progress::Done`].
//!
//! Packet sizes: WIN8+ candidates are proposed in 64-byte packets, WIN7/WIN6 candidates in
//! 48-byte packets (the pre-Win8 `vmscsi_size_delta`); after negotiation every packet has the
//! negotiated size. BEGIN_INITIALIZATION uses the size of the first candidate.

use zerocopy::byteorder::little_endian::U16;

use crate::error::StorError;
use crate::protocol::{
    ChannelProperties, NtStatus, Operation, ProtocolVersion,
    STORAGE_CHANNEL_SUPPORTS_MULTI_CHANNEL, SubChannelCount, VSTOR_HEADER_SIZE, VstorPacket,
    VstorVersion, payload_as, set_payload,
};

/// What the handshake learned from the host.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Negotiated {
    /// The accepted protocol version.
    pub version: VstorVersion,
    /// Sub-channels the host allows (QUERY_PROPERTIES `max_channel_count`).
    pub max_channel_count: u16,
    /// Properties flags (0x1 = multi-channel).
    pub flags: u32,
    /// Maximum bytes per request (0 if the host reported none).
    pub max_transfer_bytes: u32,
}

impl Negotiated {
    /// vstor_packet size for every later packet (48 or 64).
    pub fn packet_size(&self) -> usize {
        self.version.packet_size()
    }
    /// Sub-channels the guest may ask for: the host's count when the version is WIN8+ and the
    /// multi-channel flag is set (Linux rule), else 0.
    pub fn sub_channels_allowed(&self) -> u16 {
        if self.version.is_win8_or_later()
            && self.flags & STORAGE_CHANNEL_SUPPORTS_MULTI_CHANNEL != 0
        {
            self.max_channel_count
        } else {
            0
        }
    }
}

/// Result of feeding a completion to the handshake.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Progress {
    /// Send the next request ([`Handshake::next_request`]).
    Continue,
    /// The device is ready.
    Done(Negotiated),
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum State {
    BeginInit,
    QueryVersion(usize),
    QueryProperties,
    EndInit,
    Done,
    Failed,
}

/// The handshake state machine. See the module documentation.
#[derive(Clone, Debug)]
pub struct Handshake<'a> {
    candidates: &'a [VstorVersion],
    state: State,
    awaiting: bool,
    version: Option<VstorVersion>,
    props: ChannelProperties,
    legacy_sizing: bool,
}

impl Default for Handshake<'static> {
    fn default() -> Self {
        Self::new(&VstorVersion::ALL_NEWEST_FIRST)
    }
}

impl<'a> Handshake<'a> {
    /// A handshake proposing `candidates` in order (newest first is expected).
    pub fn new(candidates: &'a [VstorVersion]) -> Self {
        Self {
            candidates,
            state: State::BeginInit,
            awaiting: false,
            version: None,
            props: ChannelProperties::default(),
            legacy_sizing: false,
        }
    }

    /// Sends BEGIN_INITIALIZATION and every QUERY_PROTOCOL_VERSION in 48-byte packets, switching
    /// to 64 bytes only once a WIN8+ version is accepted. This is what Linux did while it still
    /// supported WIN7/WIN6 hosts (`vmscsi_size_delta` starts at 16) and what FreeBSD does: the
    /// proven-safe sizing for pre-Win8 hosts, which every later host also accepts.
    pub fn legacy_sizing(mut self) -> Self {
        self.legacy_sizing = true;
        self
    }

    /// The operation of the request in flight or about to be sent (`None` when finished).
    pub fn pending_operation(&self) -> Option<Operation> {
        Some(match self.state {
            State::BeginInit => Operation::BEGIN_INITIALIZATION,
            State::QueryVersion(_) => Operation::QUERY_PROTOCOL_VERSION,
            State::QueryProperties => Operation::QUERY_PROPERTIES,
            State::EndInit => Operation::END_INITIALIZATION,
            State::Done | State::Failed => return None,
        })
    }

    /// Whether the handshake finished (successfully or not).
    pub fn is_finished(&self) -> bool {
        matches!(self.state, State::Done | State::Failed)
    }

    fn current_size(&self) -> usize {
        if self.legacy_sizing && self.version.is_none() {
            return crate::protocol::VSTOR_PACKET_SIZE_PRE_WIN8;
        }
        match (self.state, self.version) {
            (State::QueryVersion(i), _) => self
                .candidates
                .get(i)
                .map_or(VstorVersion::WIN8.packet_size(), |v| v.packet_size()),
            (_, Some(v)) => v.packet_size(),
            _ => self
                .candidates
                .first()
                .map_or(VstorVersion::WIN8.packet_size(), |v| v.packet_size()),
        }
    }

    /// Writes the next request packet into `out` (at least 64 bytes) and returns its length;
    /// `None` when a completion is awaited, the handshake is finished, or `out` is too small.
    pub fn next_request(&mut self, out: &mut [u8]) -> Option<usize> {
        if self.awaiting {
            return None;
        }
        let op = self.pending_operation()?;
        let mut p = VstorPacket::request(op);
        if let State::QueryVersion(i) = self.state {
            let v = *self.candidates.get(i)?;
            set_payload(
                &mut p.payload,
                &ProtocolVersion {
                    major_minor: U16::new(v.0),
                    revision: U16::new(0),
                },
            );
        }
        let n = p.write_to(self.current_size(), out)?;
        self.awaiting = true;
        Some(n)
    }

    fn fail(&mut self, e: StorError) -> Result<Progress, StorError> {
        self.state = State::Failed;
        self.awaiting = false;
        Err(e)
    }

    /// Consumes the completion payload (the vstor_packet) of the request in flight.
    pub fn on_completion(&mut self, packet: &[u8]) -> Result<Progress, StorError> {
        if !self.awaiting || self.is_finished() {
            return Err(StorError::UnexpectedCompletion);
        }
        let Some(p) = VstorPacket::parse(packet) else {
            return self.fail(StorError::ShortPacket {
                needed: crate::protocol::VSTOR_PACKET_SIZE_PRE_WIN8,
                got: packet.len(),
            });
        };
        if p.op() != Operation::COMPLETE_IO {
            return self.fail(StorError::UnexpectedOperation(p.op()));
        }
        self.awaiting = false;
        let status = p.nt_status();
        let operation = self.pending_operation().unwrap_or(Operation(0));
        match self.state {
            State::QueryVersion(i) => {
                if status.is_success() {
                    let v = self.candidates[i];
                    log::debug!("storvsc: host accepted VSTOR {v}");
                    self.version = Some(v);
                    self.state = State::QueryProperties;
                } else if i + 1 < self.candidates.len() {
                    log::debug!(
                        "storvsc: host refused VSTOR {} ({status})",
                        self.candidates[i]
                    );
                    self.state = State::QueryVersion(i + 1);
                } else {
                    return self.fail(StorError::NoCommonVersion);
                }
                return Ok(Progress::Continue);
            }
            _ if !status.is_success() => {
                return self.fail(StorError::StepFailed { operation, status });
            }
            State::BeginInit => {
                if self.candidates.is_empty() {
                    return self.fail(StorError::NoCommonVersion);
                }
                self.state = State::QueryVersion(0);
            }
            State::QueryProperties => {
                self.props = payload_as(&p.payload);
                self.state = State::EndInit;
            }
            State::EndInit => {
                self.state = State::Done;
                let Some(version) = self.version else {
                    return self.fail(StorError::NoCommonVersion);
                };
                return Ok(Progress::Done(Negotiated {
                    version,
                    max_channel_count: self.props.max_channel_count.get(),
                    flags: self.props.flags.get(),
                    max_transfer_bytes: self.props.max_transfer_bytes.get(),
                }));
            }
            State::Done | State::Failed => return Err(StorError::UnexpectedCompletion),
        }
        Ok(Progress::Continue)
    }
}

/// Writes a CREATE_SUB_CHANNELS request for `count` sub-channels (WIN8+ only) into `out`.
pub fn create_sub_channels_request(
    negotiated: &Negotiated,
    count: u16,
    out: &mut [u8],
) -> Result<usize, StorError> {
    if !negotiated.version.is_win8_or_later() {
        return Err(StorError::VersionTooOld(negotiated.version));
    }
    if count == 0 || count > negotiated.sub_channels_allowed() {
        return Err(StorError::InvalidArgument(
            "sub-channel count beyond the host's limit",
        ));
    }
    let mut p = VstorPacket::request(Operation::CREATE_SUB_CHANNELS);
    set_payload(
        &mut p.payload,
        &SubChannelCount {
            sub_channel_count: U16::new(count),
        },
    );
    let size = negotiated.packet_size();
    p.write_to(size, out).ok_or(StorError::BufferTooSmall {
        needed: size,
        got: out.len(),
    })
}

/// Checks a completion of a request that only needs status 0 (CREATE_SUB_CHANNELS, resets).
pub fn check_simple_completion(operation: Operation, packet: &[u8]) -> Result<(), StorError> {
    let p = VstorPacket::parse(packet).ok_or(StorError::ShortPacket {
        needed: VSTOR_HEADER_SIZE + 36,
        got: packet.len(),
    })?;
    if p.op() != Operation::COMPLETE_IO {
        return Err(StorError::UnexpectedOperation(p.op()));
    }
    if p.nt_status() != NtStatus::SUCCESS {
        return Err(StorError::StepFailed {
            operation,
            status: p.nt_status(),
        });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use zerocopy::IntoBytes;
    use zerocopy::byteorder::little_endian::U32;

    fn completion(status: u32, size: usize) -> std::vec::Vec<u8> {
        let mut p = VstorPacket::request(Operation::COMPLETE_IO);
        p.flags = U32::new(0);
        p.status = U32::new(status);
        p.as_bytes()[..size].to_vec()
    }

    fn props_completion() -> std::vec::Vec<u8> {
        let mut p = VstorPacket::request(Operation::COMPLETE_IO);
        set_payload(
            &mut p.payload,
            &ChannelProperties {
                max_channel_count: U16::new(4),
                flags: U32::new(1),
                max_transfer_bytes: U32::new(0x40000),
                ..Default::default()
            },
        );
        p.as_bytes().to_vec()
    }

    #[test]
    fn happy_path_win10_byte_exact() {
        let mut hs = Handshake::default();
        let mut buf = [0u8; 64];
        assert_eq!(hs.next_request(&mut buf), Some(64));
        assert_eq!(&buf[..12], &[7, 0, 0, 0, 1, 0, 0, 0, 0, 0, 0, 0]);
        assert_eq!(hs.next_request(&mut buf), None, "awaiting");
        assert_eq!(hs.on_completion(&completion(0, 64)), Ok(Progress::Continue));
        assert_eq!(hs.next_request(&mut buf), Some(64));
        assert_eq!(
            &buf[..16],
            &[9, 0, 0, 0, 1, 0, 0, 0, 0, 0, 0, 0, 2, 6, 0, 0]
        );
        hs.on_completion(&completion(0, 64)).unwrap();
        assert_eq!(hs.next_request(&mut buf), Some(64));
        assert_eq!(buf[0], 10);
        hs.on_completion(&props_completion()).unwrap();
        assert_eq!(hs.next_request(&mut buf), Some(64));
        assert_eq!(buf[0], 8);
        let Progress::Done(n) = hs.on_completion(&completion(0, 64)).unwrap() else {
            panic!("not done")
        };
        assert_eq!(n.version, VstorVersion::WIN10);
        assert_eq!(n.max_transfer_bytes, 0x40000);
        assert_eq!(n.sub_channels_allowed(), 4);
        assert!(hs.is_finished());
        assert_eq!(hs.next_request(&mut buf), None);
        assert_eq!(
            hs.on_completion(&completion(0, 64)),
            Err(StorError::UnexpectedCompletion)
        );
        let n2 = create_sub_channels_request(&n, 2, &mut buf).unwrap();
        assert_eq!(n2, 64);
        assert_eq!(&buf[..14], &[13, 0, 0, 0, 1, 0, 0, 0, 0, 0, 0, 0, 2, 0]);
        assert!(create_sub_channels_request(&n, 5, &mut buf).is_err());
    }

    #[test]
    fn falls_back_to_win6_with_48_byte_packets() {
        let mut hs = Handshake::default();
        let mut buf = [0u8; 64];
        hs.next_request(&mut buf).unwrap();
        hs.on_completion(&completion(0, 64)).unwrap();
        let expect = [
            (0x0602, 64),
            (0x0600, 64),
            (0x0501, 64),
            (0x0402, 48),
            (0x0200, 48),
        ];
        for (i, (v, size)) in expect.iter().enumerate() {
            assert_eq!(hs.next_request(&mut buf), Some(*size));
            assert_eq!(u16::from_le_bytes([buf[12], buf[13]]), *v);
            let status = if i < 4 { 0xC000_0059 } else { 0 };
            assert_eq!(
                hs.on_completion(&completion(status, 48)),
                Ok(Progress::Continue)
            );
        }
        assert_eq!(hs.next_request(&mut buf), Some(48));
        hs.on_completion(&completion(0, 48)).unwrap();
        assert_eq!(hs.next_request(&mut buf), Some(48));
        let Ok(Progress::Done(n)) = hs.on_completion(&completion(0, 48)) else {
            panic!()
        };
        assert_eq!(n.version, VstorVersion::WIN6);
        assert_eq!(n.packet_size(), 48);
        assert_eq!(n.sub_channels_allowed(), 0);
        assert!(create_sub_channels_request(&n, 1, &mut buf).is_err());
    }

    #[test]
    fn legacy_sizing_uses_48_bytes_until_win8_is_accepted() {
        let mut hs = Handshake::default().legacy_sizing();
        let mut buf = [0u8; 64];
        assert_eq!(hs.next_request(&mut buf), Some(48));
        hs.on_completion(&completion(0, 48)).unwrap();
        assert_eq!(hs.next_request(&mut buf), Some(48));
        assert_eq!(&buf[12..14], &[2, 6]);
        hs.on_completion(&completion(0, 48)).unwrap();
        assert_eq!(
            hs.next_request(&mut buf),
            Some(64),
            "WIN10 accepted: 64 bytes"
        );
    }

    #[test]
    fn errors() {
        let mut buf = [0u8; 64];
        // All versions refused.
        let only = [VstorVersion::WIN8];
        let mut hs = Handshake::new(&only);
        hs.next_request(&mut buf).unwrap();
        hs.on_completion(&completion(0, 64)).unwrap();
        hs.next_request(&mut buf).unwrap();
        assert_eq!(
            hs.on_completion(&completion(0xC000_0059, 64)),
            Err(StorError::NoCommonVersion)
        );
        assert!(hs.is_finished());
        // BEGIN_INITIALIZATION failure.
        let mut hs = Handshake::default();
        hs.next_request(&mut buf).unwrap();
        assert!(matches!(
            hs.on_completion(&completion(0xC000_0001, 64)),
            Err(StorError::StepFailed { .. })
        ));
        // Wrong operation, short packet, unsolicited completion, small buffer.
        let mut hs = Handshake::default();
        assert_eq!(
            hs.on_completion(&completion(0, 64)),
            Err(StorError::UnexpectedCompletion)
        );
        assert_eq!(hs.next_request(&mut [0; 32]), None);
        hs.next_request(&mut buf).unwrap();
        let mut bad = completion(0, 64);
        bad[0] = 11;
        assert_eq!(
            hs.on_completion(&bad),
            Err(StorError::UnexpectedOperation(Operation::ENUMERATE_BUS))
        );
        let mut hs = Handshake::default();
        hs.next_request(&mut buf).unwrap();
        assert!(matches!(
            hs.on_completion(&[1; 20]),
            Err(StorError::ShortPacket { .. })
        ));
        // Empty candidate list.
        let mut hs = Handshake::new(&[]);
        hs.next_request(&mut buf).unwrap();
        assert_eq!(
            hs.on_completion(&completion(0, 64)),
            Err(StorError::NoCommonVersion)
        );
        assert_eq!(
            check_simple_completion(Operation::RESET_BUS, &completion(0, 48)),
            Ok(())
        );
        assert!(check_simple_completion(Operation::RESET_BUS, &completion(1, 48)).is_err());
    }
}
