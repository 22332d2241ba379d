//! The host IC models driven by a hand-written guest responder: each model's state machine runs
//! on a [`RecordingChannel`], the "guest" answers from the bytes of devices §6 (Linux
//! behaviour: the request modified in place, status and icflags changed, icmsgsize 16 for
//! NEGOTIATE). Deterministic; no threads, no real time.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use test_harness::hv::{HostPreset, MockConfig, MockHypervisor};
use test_harness::ic::kvp::{
    KVP_DELETE_SIZE, KVP_ENUMERATE_SIZE, KVP_GET_SET_SIZE, KVP_IP_INFO_SIZE, POOL_AUTO,
    POOL_EXTERNAL, REG_SZ,
};
use test_harness::ic::shutdown::{SHUTDOWN_PAYLOAD_SIZE, SHUTDOWN_REASON_PLANNED};
use test_harness::ic::timesync::{TIMESYNC_V3_PAYLOAD_SIZE, TIMESYNC_V4_PAYLOAD_SIZE};
use test_harness::ic::wire::{E_FAIL, NO_MORE_ITEMS, get_utf16z, put_utf16z};
use test_harness::ic::{
    Heartbeat, IcHost, IcHostConfig, IcModel, IcService, IcVersion, Kvp, KvpValue, Negotiation,
    RecordingChannel, Shutdown, ShutdownKind, ShutdownOutcome, TimeSync, TimeSyncKind,
};
use test_harness::vmbus::{
    FLAG_COMPLETION_REQUESTED, HostPacket, HostRelease, MockVmbusHost, PACKET_TYPE_COMPLETION,
    PACKET_TYPE_INBAND,
};
use vmbus_guest::protocol::DeviceClass;

const V1: IcVersion = IcVersion::new(1, 0);
const V3: IcVersion = IcVersion::new(3, 0);

fn u16_at(b: &[u8], at: usize) -> u16 {
    u16::from_le_bytes(b[at..at + 2].try_into().unwrap())
}
fn u32_at(b: &[u8], at: usize) -> u32 {
    u32::from_le_bytes(b[at..at + 4].try_into().unwrap())
}
fn u64_at(b: &[u8], at: usize) -> u64 {
    u64::from_le_bytes(b[at..at + 8].try_into().unwrap())
}
fn ver_at(b: &[u8], at: usize) -> IcVersion {
    IcVersion::new(u16_at(b, at), u16_at(b, at + 2))
}

/// An in-band guest packet as the mock host would decode it (payload padded to 8 bytes).
fn inband(tid: u64, payload: &[u8]) -> HostPacket {
    let mut payload = payload.to_vec();
    payload.resize(payload.len().next_multiple_of(8), 0);
    HostPacket {
        packet_type: PACKET_TYPE_INBAND,
        flags: 0,
        transaction_id: tid,
        payload,
        gpa_ranges: Vec::new(),
        xfer_pages: None,
    }
}

/// Linux-style answer: the request with `status` and icflags 0x5, after `edit` on the payload.
fn answer(req: &[u8], status: u32, edit: impl FnOnce(&mut [u8])) -> Vec<u8> {
    let mut r = req.to_vec();
    r[20..24].copy_from_slice(&status.to_le_bytes());
    r[25] = 0x5;
    edit(&mut r[28..]);
    r
}

/// Linux-style NEGOTIATE answer: first of `fw` / `svc` (guest preference order) that the host
/// offered, counts 1/1, icmsgsize 16; counts 0/0 if either has no match.
fn negotiate_answer(req: &[u8], fw: &[IcVersion], svc: &[IcVersion]) -> Vec<u8> {
    let nfw = usize::from(u16_at(req, 28));
    let nsvc = usize::from(u16_at(req, 30));
    let offered_fw: Vec<_> = (0..nfw).map(|i| ver_at(req, 36 + 4 * i)).collect();
    let offered_svc: Vec<_> = (0..nsvc).map(|i| ver_at(req, 36 + 4 * (nfw + i))).collect();
    let f = fw.iter().find(|v| offered_fw.contains(v));
    let s = svc.iter().find(|v| offered_svc.contains(v));
    let mut r = answer(req, 0, |p| match (f, s) {
        (Some(f), Some(s)) => {
            p[0..2].copy_from_slice(&1u16.to_le_bytes());
            p[2..4].copy_from_slice(&1u16.to_le_bytes());
            p[8..10].copy_from_slice(&f.major.to_le_bytes());
            p[10..12].copy_from_slice(&f.minor.to_le_bytes());
            p[12..14].copy_from_slice(&s.major.to_le_bytes());
            p[14..16].copy_from_slice(&s.minor.to_le_bytes());
        }
        _ => p[0..4].fill(0),
    });
    r[18..20].copy_from_slice(&16u16.to_le_bytes());
    r
}

/// Opens `m` and answers its NEGOTIATE with the guest lists; returns the channel.
fn negotiated<S: IcService>(
    m: &mut IcModel<S>,
    fw: &[IcVersion],
    svc: &[IcVersion],
) -> RecordingChannel {
    let mut ch = RecordingChannel::new();
    m.open(&mut ch);
    let (tid, req) = ch.take().expect("NEGOTIATE sent on open");
    m.packet(&mut ch, &inband(tid, &negotiate_answer(&req, fw, svc)));
    ch
}

/// Polls once and returns the request sent.
fn next(m: &mut IcModel<impl IcService>, ch: &mut RecordingChannel) -> (u64, Vec<u8>) {
    m.poll(ch);
    ch.take().expect("a request was sent")
}

#[test]
fn negotiate_request_is_built_like_hyper_v() {
    let mut m = IcModel::new(Heartbeat::new(None));
    let mut ch = RecordingChannel::new();
    m.open(&mut ch);
    let (tid, req) = ch.take().unwrap();
    assert_eq!(m.negotiation(), Negotiation::Pending(tid));
    // Pipe: data, bytes after the pipe header.
    assert_eq!(u32_at(&req, 0), 1);
    assert_eq!(u32_at(&req, 4) as usize, req.len() - 8);
    assert_eq!(u16_at(&req, 12), 0, "icmsgtype NEGOTIATE");
    assert_eq!(usize::from(u16_at(&req, 18)), req.len() - 28, "icmsgsize");
    assert_eq!(u32_at(&req, 20), 0, "status");
    assert_eq!(req[24], tid as u8);
    assert_eq!(req[25], 0x3, "TRANSACTION|REQUEST");
    // Counts 2/2: frameworks 1.0, 3.0 then heartbeat 1.0, 3.0.
    assert_eq!((u16_at(&req, 28), u16_at(&req, 30)), (2, 2));
    assert_eq!(req.len(), 28 + 8 + 16);
    let vs: Vec<_> = (0..4).map(|i| ver_at(&req, 36 + 4 * i)).collect();
    assert_eq!(vs, [V1, V3, V1, V3]);
    // Nothing more until the answer, however often it is polled.
    m.lock_free_poll_many(&mut ch, 5);
    assert!(ch.sent.is_empty());
}

/// Small extension so the test reads naturally.
trait PollMany {
    fn lock_free_poll_many(&mut self, ch: &mut RecordingChannel, n: usize);
}
impl<S: IcService> PollMany for IcModel<S> {
    fn lock_free_poll_many(&mut self, ch: &mut RecordingChannel, n: usize) {
        for _ in 0..n {
            self.poll(ch);
        }
    }
}

#[test]
fn negotiation_accepted_and_fallback_recorded() {
    let mut m = IcModel::new(Heartbeat::new(None));
    let ch = negotiated(&mut m, &[V3, V1], &[V3, V1]);
    assert_eq!(m.negotiated(), Some((V3, V3)));
    assert!(m.errors().is_empty(), "{:?}", m.errors());
    assert!(ch.reported.is_empty());

    // A host offering only 1.0 gets 1.0/1.0 from the same guest.
    let mut m = IcModel::new(Heartbeat::new(None));
    m.set_offered_versions(&[V1], &[V1]);
    negotiated(&mut m, &[V3, V1], &[V3, V1]);
    assert_eq!(m.negotiated(), Some((V1, V1)));
    assert!(m.errors().is_empty(), "{:?}", m.errors());
}

#[test]
fn negotiation_refused_is_recorded_and_silences_the_service() {
    let mut m = IcModel::new(Heartbeat::new(Some(1)));
    m.set_offered_versions(&[V3], &[IcVersion::new(9, 0)]);
    let mut ch = negotiated(&mut m, &[V3, V1], &[V3, V1]);
    assert_eq!(m.negotiation(), Negotiation::Refused);
    assert!(
        m.errors().is_empty(),
        "a 0/0 answer is legal: {:?}",
        m.errors()
    );
    m.service_mut().beat_now();
    m.lock_free_poll_many(&mut ch, 3);
    assert!(ch.sent.is_empty(), "no requests after a refusal");
}

#[test]
fn bad_negotiate_answers_are_protocol_errors() {
    // Guest picks a version never offered.
    let mut m = IcModel::new(Heartbeat::new(None));
    m.set_offered_versions(&[V1], &[V1]);
    let mut ch = RecordingChannel::new();
    m.open(&mut ch);
    let (tid, req) = ch.take().unwrap();
    let mut r = negotiate_answer(&req, &[V1], &[V1]);
    r[28 + 12] = 3; // service 3.0
    m.packet(&mut ch, &inband(tid, &r));
    assert_eq!(m.negotiation(), Negotiation::Failed);
    assert!(m.errors()[0].contains("never offered"), "{:?}", m.errors());
    assert_eq!(ch.reported, m.errors(), "reported to the channel too");

    // Wrong flags, status, icmsgsize, counts.
    for (what, edit) in [
        (
            "icflags",
            (|r: &mut Vec<u8>| r[25] = 0x4) as fn(&mut Vec<u8>),
        ),
        ("status", |r| {
            r[20..24].copy_from_slice(&E_FAIL.to_le_bytes())
        }),
        ("icmsgsize", |r| r[18] = 44),
        ("counts 2/1", |r| r[28] = 2),
        ("ictransaction_id", |r| r[24] ^= 0xFF),
    ] {
        let mut m = IcModel::new(Heartbeat::new(None));
        let mut ch = RecordingChannel::new();
        m.open(&mut ch);
        let (tid, req) = ch.take().unwrap();
        let mut r = negotiate_answer(&req, &[V3], &[V3]);
        edit(&mut r);
        m.packet(&mut ch, &inband(tid, &r));
        assert!(!m.errors().is_empty(), "{what} not caught");
    }
}

#[test]
fn transport_level_mistakes_are_protocol_errors() {
    let mut m = IcModel::new(Heartbeat::new(None));
    let mut ch = RecordingChannel::new();
    // Unsolicited before anything was asked.
    m.packet(&mut ch, &inband(7, &[0; 40]));
    assert_eq!(m.errors().len(), 1);
    m.open(&mut ch);
    let (tid, req) = ch.take().unwrap();
    // Wrong transaction id: error, still waiting.
    m.packet(
        &mut ch,
        &inband(tid + 1, &negotiate_answer(&req, &[V3], &[V3])),
    );
    assert_eq!(m.errors().len(), 2);
    assert!(m.busy());
    // A completion packet instead of an in-band answer.
    let mut p = inband(tid, &negotiate_answer(&req, &[V3], &[V3]));
    p.packet_type = PACKET_TYPE_COMPLETION;
    m.packet(&mut ch, &p);
    assert_eq!(m.errors().len(), 3);
    // The right answer but with the completion flag set: accepted, flag reported.
    let mut p = inband(tid, &negotiate_answer(&req, &[V3], &[V3]));
    p.flags = FLAG_COMPLETION_REQUESTED;
    m.packet(&mut ch, &p);
    assert_eq!(m.errors().len(), 4);
    assert_eq!(m.negotiated(), Some((V3, V3)));
    // A truncated answer to a heartbeat: no panic, an error.
    m.service_mut().beat_now();
    let (tid, _) = next(&mut m, &mut ch);
    m.packet(&mut ch, &inband(tid, &[0; 12]));
    assert_eq!(m.errors().len(), 5, "{:?}", m.errors());
}

#[test]
fn heartbeat_periodic_sequence_checked_and_beats_counted() {
    let mut m = IcModel::new(Heartbeat::new(Some(3)));
    let mut ch = negotiated(&mut m, &[V3, V1], &[V3, V1]);
    m.lock_free_poll_many(&mut ch, 2);
    assert!(ch.sent.is_empty(), "not due before 3 polls");
    let (tid, req) = next(&mut m, &mut ch);
    assert_ne!(tid, 0);
    assert_eq!(u16_at(&req, 12), 1, "HEARTBEAT");
    assert_eq!(ver_at(&req, 8), V3, "negotiated framework in the header");
    assert_eq!(ver_at(&req, 14), V3, "negotiated service in the header");
    assert_eq!(req[25], 0x3);
    assert_eq!(u16_at(&req, 18), 40);
    assert_eq!(req.len(), 28 + 40);
    let seq = u64_at(&req, 28);
    m.packet(
        &mut ch,
        &inband(
            tid,
            &answer(&req, 0, |p| {
                p[..8].copy_from_slice(&(seq + 1).to_le_bytes())
            }),
        ),
    );
    assert_eq!(m.service().beats(), 1);
    assert!(m.errors().is_empty(), "{:?}", m.errors());

    // The next beat carries the last answer and a fresh transaction id.
    m.lock_free_poll_many(&mut ch, 2);
    let (tid2, req2) = next(&mut m, &mut ch);
    assert_ne!(tid2, tid);
    assert_eq!(u64_at(&req2, 28), seq + 1);
    // Sequence not incremented: protocol error, no beat.
    m.packet(&mut ch, &inband(tid2, &answer(&req2, 0, |_| {})));
    assert_eq!(m.service().beats(), 1);
    assert_eq!(m.errors().len(), 1, "{:?}", m.errors());

    // Bad status and bad flags are each caught.
    m.service_mut().beat_now();
    let (tid3, req3) = next(&mut m, &mut ch);
    let s = u64_at(&req3, 28) + 1;
    let mut r = answer(&req3, E_FAIL, |p| p[..8].copy_from_slice(&s.to_le_bytes()));
    r[25] = 0x1;
    m.packet(&mut ch, &inband(tid3, &r));
    assert_eq!(m.errors().len(), 3, "{:?}", m.errors());
    assert_eq!(m.service().beats(), 1);
}

#[test]
fn shutdown_requests_carry_the_right_flags_and_outcomes() {
    for (kind, force, flags) in [
        (ShutdownKind::Shutdown, false, 0),
        (ShutdownKind::Shutdown, true, 1),
        (ShutdownKind::Restart, false, 2),
        (ShutdownKind::Restart, true, 3),
        (ShutdownKind::Hibernate, false, 4),
    ] {
        let mut m = IcModel::new(Shutdown::new());
        let mut ch = negotiated(
            &mut m,
            &[V3, V1],
            &[
                IcVersion::new(3, 2),
                IcVersion::new(3, 1),
                IcVersion::new(3, 0),
                V1,
            ],
        );
        assert_eq!(m.negotiated(), Some((V3, IcVersion::new(3, 2))));
        m.lock_free_poll_many(&mut ch, 2);
        assert!(ch.sent.is_empty(), "nothing before the command");
        assert_eq!(m.service().outcome(), ShutdownOutcome::None);
        m.service_mut()
            .request_shutdown(kind, force, SHUTDOWN_REASON_PLANNED, 30);
        assert_eq!(m.service().outcome(), ShutdownOutcome::Pending);
        let (tid, req) = next(&mut m, &mut ch);
        assert_eq!(u16_at(&req, 12), 3, "SHUTDOWN");
        assert_eq!(req.len(), 28 + SHUTDOWN_PAYLOAD_SIZE);
        assert_eq!(usize::from(u16_at(&req, 18)), 2060);
        assert_eq!(u32_at(&req, 28), SHUTDOWN_REASON_PLANNED);
        assert_eq!(u32_at(&req, 32), 30);
        assert_eq!(u32_at(&req, 36), flags);
        // Linux refuses hibernation it cannot do.
        let status = if kind == ShutdownKind::Hibernate {
            E_FAIL
        } else {
            0
        };
        m.packet(&mut ch, &inband(tid, &answer(&req, status, |_| {})));
        let want = if status == 0 {
            ShutdownOutcome::Accepted
        } else {
            ShutdownOutcome::Refused
        };
        assert_eq!(m.service().outcome(), want);
        assert!(m.errors().is_empty(), "{:?}", m.errors());
    }

    // An answer that changes the flags, with an unexpected status.
    let mut m = IcModel::new(Shutdown::new());
    let mut ch = negotiated(&mut m, &[V3], &[V3]);
    m.service_mut()
        .request_shutdown(ShutdownKind::Shutdown, false, 0, 0);
    let (tid, req) = next(&mut m, &mut ch);
    m.packet(
        &mut ch,
        &inband(tid, &answer(&req, 0x8007_0032, |p| p[8] = 9)),
    );
    assert_eq!(m.service().outcome(), ShutdownOutcome::Other(0x8007_0032));
    assert_eq!(m.errors().len(), 2, "{:?}", m.errors());
}

#[test]
fn unknown_message_type_probe_expects_e_fail() {
    let mut m = IcModel::new(Heartbeat::new(None));
    let mut ch = negotiated(&mut m, &[V3], &[V3]);
    m.probe(9, vec![0; 8], E_FAIL);
    m.service_mut().beat_now();
    // The probe goes first, with the negotiated versions and flags 0x3.
    let (tid, req) = next(&mut m, &mut ch);
    assert_eq!(u16_at(&req, 12), 9);
    assert_eq!((ver_at(&req, 8), ver_at(&req, 14)), (V3, V3));
    assert_eq!(req[25], 0x3);
    m.packet(&mut ch, &inband(tid, &answer(&req, E_FAIL, |_| {})));
    assert!(m.errors().is_empty(), "{:?}", m.errors());
    assert_eq!(m.service().beats(), 0, "the service never saw the probe");
    // Then the heartbeat; a guest that says S_OK to the next probe is flagged.
    let (tid, req) = next(&mut m, &mut ch);
    assert_eq!(u16_at(&req, 12), 1);
    let s = u64_at(&req, 28) + 1;
    m.packet(
        &mut ch,
        &inband(
            tid,
            &answer(&req, 0, |p| p[..8].copy_from_slice(&s.to_le_bytes())),
        ),
    );
    m.probe(7, Vec::new(), E_FAIL);
    let (tid, req) = next(&mut m, &mut ch);
    m.packet(&mut ch, &inband(tid, &answer(&req, 0, |_| {})));
    assert_eq!(m.errors().len(), 1, "{:?}", m.errors());
}

fn timesync_model(epoch: u64) -> (IcModel<TimeSync>, Arc<AtomicU64>) {
    let t = Arc::new(AtomicU64::new(5_000_000));
    let c = Arc::clone(&t);
    (
        IcModel::new(TimeSync::new(
            Arc::new(move || c.load(Ordering::SeqCst)),
            epoch,
            Some(4),
        )),
        t,
    )
}

#[test]
fn timesync_v4_sync_then_samples_with_reference_time() {
    let epoch = 133_000_000_000_000_000;
    let (mut m, clock) = timesync_model(epoch);
    let v4 = IcVersion::new(4, 0);
    let mut ch = negotiated(&mut m, &[V3, V1], &[v4, V3, V1]);
    assert_eq!(m.negotiated(), Some((V3, v4)));
    // SYNC right after negotiation.
    let (tid, req) = next(&mut m, &mut ch);
    assert_eq!(u16_at(&req, 12), 4, "TIMESYNC");
    assert_eq!(req.len(), 28 + TIMESYNC_V4_PAYLOAD_SIZE);
    assert_eq!(u16_at(&req, 18) as usize, TIMESYNC_V4_PAYLOAD_SIZE);
    assert_eq!(u64_at(&req, 28), epoch + 5_000_000, "parent_time");
    assert_eq!(u64_at(&req, 36), 5_000_000, "vm_reference_time");
    assert_eq!(req[44], 1, "SYNC");
    m.packet(&mut ch, &inband(tid, &answer(&req, 0, |_| {})));
    assert_eq!(m.service().acked(), 1);

    // SAMPLE every 4 polls (one poll already happened above).
    clock.store(55_000_000, Ordering::SeqCst);
    m.lock_free_poll_many(&mut ch, 2);
    assert!(ch.sent.is_empty());
    let (tid, req) = next(&mut m, &mut ch);
    assert_eq!(req[44], 2, "SAMPLE");
    assert_eq!(u64_at(&req, 28), epoch + 55_000_000);
    assert_eq!(u64_at(&req, 36), 55_000_000);
    // A guest that alters the sample is caught.
    m.packet(&mut ch, &inband(tid, &answer(&req, 0, |p| p[0] ^= 1)));
    assert_eq!(m.service().acked(), 1);
    assert_eq!(m.errors().len(), 1, "{:?}", m.errors());

    // On command.
    m.service_mut().send(TimeSyncKind::Sync);
    let (_, req) = next(&mut m, &mut ch);
    assert_eq!(req[44], 1);
}

#[test]
fn timesync_v3_layout_when_3_0_negotiated() {
    let epoch = 132_000_000_000_000_000;
    let (mut m, _clock) = timesync_model(epoch);
    let mut ch = negotiated(&mut m, &[V3, V1], &[V3, V1]);
    assert_eq!(m.negotiated(), Some((V3, V3)));
    let (tid, req) = next(&mut m, &mut ch);
    assert_eq!(req.len(), 28 + TIMESYNC_V3_PAYLOAD_SIZE);
    assert_eq!(u64_at(&req, 28), epoch + 5_000_000, "parent_time");
    assert_eq!(u64_at(&req, 36), 0, "child_time");
    assert_eq!(u64_at(&req, 44), 0, "round trip");
    assert_eq!(req[52], 1, "SYNC");
    m.packet(&mut ch, &inband(tid, &answer(&req, 0, |_| {})));
    assert_eq!(m.service().acked(), 1);
    assert!(m.errors().is_empty(), "{:?}", m.errors());
}

/// A tiny KVP guest: the AUTO pool has two entries, the EXTERNAL pool is a map.
struct KvpGuest {
    external: Vec<(String, String)>,
}

impl KvpGuest {
    fn put_record(p: &mut [u8], at: usize, key: Option<&str>, value: &str) {
        p[at..at + 4].copy_from_slice(&REG_SZ.to_le_bytes());
        if let Some(key) = key {
            let n = put_utf16z(&mut p[at + 12..at + 524], key);
            p[at + 4..at + 8].copy_from_slice(&n.to_le_bytes());
        }
        let n = put_utf16z(&mut p[at + 524..at + 2572], value);
        p[at + 8..at + 12].copy_from_slice(&n.to_le_bytes());
    }

    fn answer(&mut self, req: &[u8]) -> Vec<u8> {
        let p = &req[28..];
        let (op, pool) = (p[0], p[1]);
        let key_at = |at: usize| {
            let size = u32_at(p, at + 4) as usize;
            get_utf16z(&p[at + 12..at + 12 + size])
        };
        match op {
            0 => {
                let key = key_at(4);
                match self.external.iter().find(|(k, _)| *k == key) {
                    Some((_, v)) => {
                        let v = v.clone();
                        answer(req, 0, |p| Self::put_record(p, 4, None, &v))
                    }
                    None => answer(req, NO_MORE_ITEMS, |_| {}),
                }
            }
            1 => {
                let value_size = u32_at(p, 12) as usize;
                let v = get_utf16z(&p[528..528 + value_size]);
                self.external.push((key_at(4), v));
                answer(req, 0, |_| {})
            }
            2 => {
                let key = get_utf16z(&p[8..8 + u32_at(p, 4) as usize]);
                let before = self.external.len();
                self.external.retain(|(k, _)| *k != key);
                let status = if self.external.len() < before {
                    0
                } else {
                    NO_MORE_ITEMS
                };
                answer(req, status, |_| {})
            }
            3 if pool == POOL_AUTO => {
                let auto = [("OSName", "Harness OS"), ("OSVersion", "0.1.0")];
                match auto.get(u32_at(p, 4) as usize) {
                    Some((k, v)) => answer(req, 0, |p| Self::put_record(p, 8, Some(k), v)),
                    None => answer(req, NO_MORE_ITEMS, |_| {}),
                }
            }
            4 => answer(req, 0, |p| {
                p[258] = 1;
                p[259] = 1;
                put_utf16z(&mut p[260..2308], "192.168.0.2");
                put_utf16z(&mut p[2308..4356], "255.255.255.0");
                put_utf16z(&mut p[4356..5380], "192.168.0.1");
                put_utf16z(&mut p[5380..7428], "192.168.0.1;8.8.8.8");
            }),
            _ => answer(req, E_FAIL, |_| {}),
        }
    }
}

#[test]
fn kvp_operations_have_the_right_sizes_and_answers_are_parsed() {
    let mut m = IcModel::new(Kvp::new());
    let v4 = IcVersion::new(4, 0);
    let mut ch = negotiated(&mut m, &[V3, V1], &[v4, V3, V1]);
    assert_eq!(m.negotiated(), Some((V3, v4)));
    let mut guest = KvpGuest {
        external: Vec::new(),
    };
    let mut round = |m: &mut IcModel<Kvp>, ch: &mut RecordingChannel| {
        let (tid, req) = next(m, ch);
        m.packet(ch, &inband(tid, &guest.answer(&req)));
        req
    };

    // Enumerate the AUTO pool until "no more items".
    let mut found = Vec::new();
    for index in 0.. {
        m.service_mut()
            .request(test_harness::ic::KvpRequest::Enumerate {
                pool: POOL_AUTO,
                index,
            });
        let req = round(&mut m, &mut ch);
        assert_eq!(req.len(), 28 + KVP_ENUMERATE_SIZE);
        assert_eq!((req[28], req[29]), (3, POOL_AUTO));
        let r = m.service().last_reply().unwrap().clone();
        if r.is_no_more_items() {
            break;
        }
        found.push((r.key.clone().unwrap(), r.value_str().unwrap().to_string()));
    }
    assert_eq!(
        found,
        [
            ("OSName".to_string(), "Harness OS".to_string()),
            ("OSVersion".into(), "0.1.0".into())
        ]
    );

    // SET then GET then DELETE then GET (missing).
    m.service_mut().request(test_harness::ic::KvpRequest::Set {
        pool: POOL_EXTERNAL,
        key: "VirtualMachineName".into(),
        value: KvpValue::String("vm1".into()),
    });
    let req = round(&mut m, &mut ch);
    assert_eq!(req.len(), 28 + KVP_GET_SET_SIZE);
    assert_eq!(u32_at(&req, 32), REG_SZ);
    assert_eq!(u32_at(&req, 36), 2 * 19, "key_size counts the NUL");
    assert_eq!(u32_at(&req, 40), 2 * 4, "value_size counts the NUL");
    assert!(m.service().last_reply().unwrap().is_ok());

    m.service_mut().request(test_harness::ic::KvpRequest::Get {
        pool: POOL_EXTERNAL,
        key: "VirtualMachineName".into(),
    });
    let req = round(&mut m, &mut ch);
    assert_eq!(req.len(), 28 + KVP_GET_SET_SIZE);
    assert_eq!(m.service().last_reply().unwrap().value_str(), Some("vm1"));

    m.service_mut()
        .request(test_harness::ic::KvpRequest::Delete {
            pool: POOL_EXTERNAL,
            key: "VirtualMachineName".into(),
        });
    let req = round(&mut m, &mut ch);
    assert_eq!(req.len(), 28 + KVP_DELETE_SIZE);
    assert_eq!(u32_at(&req, 32), 2 * 19);
    assert!(m.service().last_reply().unwrap().is_ok());

    m.service_mut().request(test_harness::ic::KvpRequest::Get {
        pool: POOL_EXTERNAL,
        key: "VirtualMachineName".into(),
    });
    round(&mut m, &mut ch);
    assert_eq!(m.service().last_reply().unwrap().status, NO_MORE_ITEMS);

    m.service_mut()
        .request(test_harness::ic::KvpRequest::GetIpInfo {
            adapter: "{00000000-0000-0000-0000-0000000000aa}".into(),
        });
    let req = round(&mut m, &mut ch);
    assert_eq!(req.len(), 28 + KVP_IP_INFO_SIZE);
    assert_eq!(
        get_utf16z(&req[30..286]),
        "{00000000-0000-0000-0000-0000000000aa}"
    );
    let ip = m.service().last_reply().unwrap().ip_info.clone().unwrap();
    assert_eq!(ip.address_family, 1);
    assert!(ip.dhcp_enabled);
    assert_eq!(ip.addresses, "192.168.0.2");
    assert_eq!(ip.dns_servers, "192.168.0.1;8.8.8.8");
    assert!(m.errors().is_empty(), "{:?}", m.errors());
}

#[test]
fn kvp_bad_answers_are_protocol_errors() {
    let mut m = IcModel::new(Kvp::new());
    let mut ch = negotiated(&mut m, &[V3], &[V3]);
    // Enumerate answer with a wrong index and an oversized key.
    m.service_mut()
        .request(test_harness::ic::KvpRequest::Enumerate {
            pool: POOL_AUTO,
            index: 0,
        });
    let (tid, req) = next(&mut m, &mut ch);
    let r = answer(&req, 0, |p| {
        p[4] = 5;
        p[12..16].copy_from_slice(&600u32.to_le_bytes());
    });
    m.packet(&mut ch, &inband(tid, &r));
    assert_eq!(m.errors().len(), 2, "{:?}", m.errors());
    // Operation not echoed; answer shorter than the request.
    m.service_mut().request(test_harness::ic::KvpRequest::Set {
        pool: POOL_EXTERNAL,
        key: "k".into(),
        value: KvpValue::Dword(7),
    });
    let (tid, req) = next(&mut m, &mut ch);
    let mut r = answer(&req, 0, |p| p[0] = 0);
    r.truncate(100);
    m.packet(&mut ch, &inband(tid, &r));
    assert!(m.errors().len() >= 4, "{:?}", m.errors());
}

#[test]
fn random_answers_never_panic() {
    let mut seed = 0x1234_5678_9abc_def0_u64;
    let mut rnd = move || {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        seed
    };
    for _ in 0..200 {
        let mut m = IcModel::new(Kvp::new());
        let mut ch = RecordingChannel::new();
        m.open(&mut ch);
        let (tid, req) = ch.take().unwrap();
        let mut r = negotiate_answer(&req, &[V3], &[V3]);
        if rnd() % 2 == 0 {
            m.packet(&mut ch, &inband(tid, &r));
            m.service_mut()
                .request(test_harness::ic::KvpRequest::Enumerate { pool: 2, index: 0 });
            m.poll(&mut ch);
            let Some((tid, req)) = ch.take() else {
                continue;
            };
            r = answer(&req, 0, |_| {});
            let len = (rnd() as usize) % (r.len() + 1);
            r.truncate(len);
            for _ in 0..8 {
                let i = (rnd() as usize) % (r.len().max(1));
                if let Some(b) = r.get_mut(i) {
                    *b = rnd() as u8;
                }
            }
            m.packet(&mut ch, &inband(tid, &r));
        } else {
            let len = (rnd() as usize) % (r.len() + 1);
            r.truncate(len);
            for _ in 0..8 {
                let i = (rnd() as usize) % (r.len().max(1));
                if let Some(b) = r.get_mut(i) {
                    *b = rnd() as u8;
                }
            }
            m.packet(&mut ch, &inband(tid, &r));
        }
    }
}

#[test]
fn ic_host_offers_the_four_services_with_their_class_guids() {
    let hv = MockHypervisor::new(MockConfig::new(HostPreset::Ws2022).with_memory_bytes(1 << 20));
    let mut host = MockVmbusHost::new(hv, HostRelease::Ws2022);
    let ic = IcHost::add_to(&mut host, IcHostConfig::default());
    for (relid, class) in [
        (ic.heartbeat_relid, DeviceClass::Heartbeat),
        (ic.shutdown_relid, DeviceClass::Shutdown),
        (ic.timesync_relid, DeviceClass::TimeSync),
        (ic.kvp_relid, DeviceClass::Kvp),
    ] {
        let guid = host
            .with_channel(relid, |ch, _| ch.offer().interface_type)
            .unwrap();
        assert_eq!(Some(guid), class.interface_type());
    }
    // Commands before the guest opens anything are simply queued.
    ic.heartbeat.beat_now();
    ic.kvp.enumerate(POOL_AUTO, 0);
    host.step();
    assert_eq!(ic.heartbeat.negotiation(), Negotiation::NotStarted);
    assert!(ic.errors().is_empty());
    assert!(host.protocol_errors().is_empty());
}

/// End to end through the mock VMBus host: a hand-played guest (booted VP, VMBus messages,
/// rings written byte by byte) opens the four IC channels and answers like Linux.
mod end_to_end {
    use super::*;
    use test_harness::guest::{BootedVp, boot_vp};
    use vmbus_guest::Hal;
    use vmbus_guest::protocol::{
        CANDIDATE_VERSIONS, GpaRange, GpadlHeader, InitiateContact, MessageHeader, MessageType,
        OfferChannel, OpenChannel, RequestOffers, VmbusVersion, WirePfn, message_connection_id_for,
    };
    use zerocopy::{FromZeros, IntoBytes};

    const RING_PAGES: u64 = 4;
    const RING_DATA: u64 = (RING_PAGES - 1) * 4096;

    struct Guest {
        hv: MockHypervisor,
        host: MockVmbusHost,
        vp: BootedVp,
        conn: u32,
    }

    /// One opened IC channel as the guest sees it.
    struct Chan {
        relid: u32,
        connection_id: u32,
        gpa: u64,
        /// Guest's outbound write index.
        out_w: u64,
    }

    impl Chan {
        fn out_data(&self) -> u64 {
            self.gpa + 4096
        }
        fn in_ctl(&self) -> u64 {
            self.gpa + RING_PAGES * 4096
        }
        fn in_data(&self) -> u64 {
            self.in_ctl() + 4096
        }
    }

    impl Guest {
        fn new() -> Self {
            let hv =
                MockHypervisor::new(MockConfig::new(HostPreset::Ws2022).with_memory_bytes(2 << 20));
            let vp = boot_vp(&hv, 0).expect("boot");
            let host = MockVmbusHost::new(hv.clone(), HostRelease::Ws2022);
            Guest {
                hv,
                host,
                vp,
                conn: 1,
            }
        }

        fn post(&mut self, bytes: &[u8]) {
            self.vp
                .hypercalls
                .post_message(self.conn, 1, bytes)
                .expect("post");
        }

        fn recv(&self) -> Option<Vec<u8>> {
            let m = self.vp.synic.take_message(&self.vp.cpu, 2).expect("slot")?;
            Some(m.payload().to_vec())
        }

        fn expect(&mut self, t: MessageType) -> Vec<u8> {
            self.host.step();
            let m = self.recv().expect("a message");
            assert_eq!(MessageType(u32_at(&m, 0)), t);
            m
        }

        fn alloc(&self, pages: usize) -> u64 {
            let hal = self.hv.hal();
            let p = hal.alloc_pages(pages).expect("alloc");
            hal.virt_to_phys(p).expect("phys")
        }

        fn write(&mut self, relid: u32, gpa: u64, data: &[u8]) {
            self.host
                .with_channel(relid, |ch, _| ch.write_gpa(gpa, data))
                .unwrap()
                .unwrap();
        }

        fn read(&mut self, relid: u32, gpa: u64, len: usize) -> Vec<u8> {
            let mut b = vec![0; len];
            self.host
                .with_channel(relid, |ch, _| ch.read_gpa(gpa, &mut b))
                .unwrap()
                .unwrap();
            b
        }

        fn connect(&mut self) -> Vec<OfferChannel> {
            'outer: for version in CANDIDATE_VERSIONS {
                let info = if version >= VmbusVersion::V5_0 {
                    InitiateContact::target_info(2, 0, 0)
                } else if version < VmbusVersion::V2_4 {
                    self.alloc(1)
                } else {
                    0
                };
                let msg = InitiateContact {
                    header: MessageHeader::new(MessageType::INITIATE_CONTACT),
                    version_requested: version.0,
                    target_vp: 0,
                    interrupt_page_or_target_info: info,
                    parent_to_child_monitor_page_gpa: self.alloc(1),
                    child_to_parent_monitor_page_gpa: self.alloc(1),
                };
                if self
                    .vp
                    .hypercalls
                    .post_message(message_connection_id_for(version), 1, msg.as_bytes())
                    .is_err()
                {
                    continue;
                }
                let r = self.expect(MessageType::VERSION_RESPONSE);
                if r[8] != 0 {
                    if version >= VmbusVersion::V5_0 {
                        self.conn = u32_at(&r, 12);
                    }
                    break 'outer;
                }
            }
            self.post(RequestOffers::new().as_bytes());
            self.host.step();
            let mut offers = Vec::new();
            while let Some(m) = self.recv() {
                if MessageType(u32_at(&m, 0)) == MessageType::OFFERCHANNEL {
                    offers.push(zerocopy::FromBytes::read_from_bytes(&m[..]).unwrap());
                }
            }
            offers
        }

        fn open(&mut self, offer: &OfferChannel) -> Chan {
            let relid = offer.relid;
            let pages = 2 * RING_PAGES as usize;
            let gpa = self.alloc(pages);
            let handle = 0x1000 + relid;
            let mut m = GpadlHeader::new(relid, handle, (8 + 8 * pages) as u16, 1)
                .as_bytes()
                .to_vec();
            m.extend_from_slice(
                GpaRange {
                    byte_count: (pages * 4096) as u32,
                    byte_offset: 0,
                }
                .as_bytes(),
            );
            for i in 0..pages as u64 {
                m.extend_from_slice(WirePfn::new(gpa / 4096 + i).as_bytes());
            }
            self.post(&m);
            let r = self.expect(MessageType::GPADL_CREATED);
            assert_eq!(u32_at(&r, 16), 0);
            self.write(relid, gpa + 0x40, &1u32.to_le_bytes());
            let mut o = OpenChannel::new_zeroed();
            o.header = MessageHeader::new(MessageType::OPENCHANNEL);
            o.relid = relid;
            o.open_id = relid;
            o.ring_gpadl_handle = handle;
            o.downstream_ring_page_offset = RING_PAGES as u32;
            self.post(o.as_bytes());
            let r = self.expect(MessageType::OPENCHANNEL_RESULT);
            assert_eq!(u32_at(&r, 16), 0);
            Chan {
                relid,
                connection_id: offer.connection_id,
                gpa,
                out_w: 0,
            }
        }

        fn ring_read(&mut self, relid: u32, data: u64, at: u64, len: usize) -> Vec<u8> {
            (0..len as u64)
                .map(|i| self.read(relid, data + (at + i) % RING_DATA, 1)[0])
                .collect()
        }

        /// Takes every host packet from `c`'s inbound ring: (tid, payload).
        fn take_packets(&mut self, c: &Chan) -> Vec<(u64, Vec<u8>)> {
            let ctl = self.read(c.relid, c.in_ctl(), 8);
            let (w, mut r) = (u64::from(u32_at(&ctl, 0)), u64::from(u32_at(&ctl, 4)));
            let mut out = Vec::new();
            while r != w {
                let d = self.ring_read(c.relid, c.in_data(), r, 16);
                assert_eq!(u16_at(&d, 0), 6, "host sends in-band packets");
                assert_eq!(u16_at(&d, 6), 0, "no completion requested");
                let off = u64::from(u16_at(&d, 2)) * 8;
                let len = u64::from(u16_at(&d, 4)) * 8;
                let payload = self.ring_read(c.relid, c.in_data(), r + off, (len - off) as usize);
                out.push((u64_at(&d, 8), payload));
                r = (r + len + 8) % RING_DATA;
            }
            self.write(c.relid, c.in_ctl() + 4, &(r as u32).to_le_bytes());
            out
        }

        fn send(&mut self, c: &mut Chan, tid: u64, payload: &[u8]) {
            let len = (16 + payload.len()).next_multiple_of(8);
            let mut p = Vec::new();
            p.extend_from_slice(&6u16.to_le_bytes());
            p.extend_from_slice(&2u16.to_le_bytes());
            p.extend_from_slice(&((len / 8) as u16).to_le_bytes());
            p.extend_from_slice(&0u16.to_le_bytes());
            p.extend_from_slice(&tid.to_le_bytes());
            p.extend_from_slice(payload);
            p.resize(len, 0);
            p.extend_from_slice(&(c.out_w << 32).to_le_bytes());
            for (i, b) in p.iter().enumerate() {
                let at = c.out_data() + (c.out_w + i as u64) % RING_DATA;
                self.write(c.relid, at, &[*b]);
            }
            c.out_w = (c.out_w + p.len() as u64) % RING_DATA;
            self.write(c.relid, c.gpa, &(c.out_w as u32).to_le_bytes());
            self.vp
                .hypercalls
                .signal_event(c.connection_id, 0)
                .expect("signal");
        }

        /// Steps the host and answers every IC packet Linux-style; returns how many.
        fn serve(&mut self, chans: &mut [Chan], kvp: &mut KvpGuest) -> usize {
            self.host.step();
            let mut n = 0;
            for c in chans.iter_mut() {
                for (tid, req) in self.take_packets(c) {
                    let len = 28 + usize::from(u16_at(&req, 18));
                    let req = &req[..len];
                    let answer = match u16_at(req, 12) {
                        0 => negotiate_answer(
                            req,
                            &[V3, V1],
                            &[
                                IcVersion::new(4, 0),
                                IcVersion::new(3, 2),
                                IcVersion::new(3, 1),
                                V3,
                                V1,
                            ],
                        ),
                        1 => answer(req, 0, |p| {
                            let s = u64_at(p, 0) + 1;
                            p[..8].copy_from_slice(&s.to_le_bytes());
                        }),
                        2 => kvp.answer(req),
                        3 => answer(req, 0, |_| {}),
                        4 => answer(req, 0, |_| {}),
                        _ => answer(req, E_FAIL, |_| {}),
                    };
                    self.send(c, tid, &answer);
                    n += 1;
                }
            }
            self.host.step();
            n
        }
    }

    #[test]
    fn guest_answers_all_four_services_through_the_rings() {
        let mut g = Guest::new();
        let ic = IcHost::add_to(
            &mut g.host,
            IcHostConfig {
                heartbeat_period: Some(2),
                ..IcHostConfig::default()
            },
        );
        let offers = g.connect();
        assert_eq!(offers.len(), 4);
        let mut chans: Vec<Chan> = offers.iter().map(|o| g.open(o)).collect();
        let mut kvp = KvpGuest {
            external: Vec::new(),
        };
        ic.kvp.enumerate(POOL_AUTO, 0);
        ic.kvp.enumerate(POOL_AUTO, 2);
        ic.shutdown
            .request_shutdown(ShutdownKind::Restart, false, SHUTDOWN_REASON_PLANNED, 0);
        for _ in 0..12 {
            g.serve(&mut chans, &mut kvp);
        }
        assert_eq!(ic.heartbeat.negotiated(), Some((V3, V3)));
        assert_eq!(ic.shutdown.negotiated(), Some((V3, IcVersion::new(3, 2))));
        assert_eq!(ic.timesync.negotiated(), Some((V3, IcVersion::new(4, 0))));
        assert_eq!(ic.kvp.negotiated(), Some((V3, IcVersion::new(4, 0))));
        assert!(ic.heartbeat.beats() >= 3, "beats {}", ic.heartbeat.beats());
        assert_eq!(ic.shutdown.outcome(), ShutdownOutcome::Accepted);
        assert_eq!(ic.timesync.acked(), 1, "the SYNC after negotiation");
        let replies = ic.kvp.lock().service().replies().to_vec();
        assert_eq!(replies.len(), 2);
        assert_eq!(replies[0].key.as_deref(), Some("OSName"));
        assert!(replies[1].is_no_more_items());
        assert_eq!(ic.errors(), Vec::<String>::new());
        assert_eq!(g.host.protocol_errors(), Vec::<String>::new());

        // A guest that answers the heartbeat wrongly is flagged in the host's errors too.
        ic.heartbeat.beat_now();
        g.host.step();
        let hb = chans
            .iter()
            .position(|c| c.relid == ic.heartbeat_relid)
            .unwrap();
        let (tid, req) = g.take_packets(&chans[hb]).remove(0);
        let bad = answer(&req[..68], 0, |_| {});
        g.send(&mut chans[hb], tid, &bad);
        g.host.step();
        assert_eq!(ic.heartbeat.errors().len(), 1);
        assert_eq!(g.host.protocol_errors().len(), 1);
    }
}
