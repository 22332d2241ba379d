//! Byte-exact tests with hand-built host requests (devices §6), and fuzz-style robustness tests.

use crate::heartbeat::Heartbeat;
use crate::kvp::{AdapterIpInfo, GuestInfo, Kvp, KvpAddressFamilyField, KvpValue};
use crate::protocol::*;
use crate::shutdown::{AcceptExceptHibernate, Shutdown, ShutdownKind, ShutdownRequest};
use crate::testutil::*;
use crate::timesync::{STALE_AFTER, TimeSync, UnixTime};
use crate::{IcError, IcEvent, IcHandler, IcService, IcStatus, IcVersion, Reply};
use std::boxed::Box;
use std::cell::Cell;
use std::rc::Rc;
use std::vec;
use std::vec::Vec;

fn run<H: IcHandler>(svc: &mut IcService<H>, req: &[u8]) -> (Reply, Vec<u8>) {
    let mut resp = vec![0u8; req.len().max(64) + 16];
    let reply = svc.handle(req, &mut resp).expect("reply");
    resp.truncate(reply.len);
    (reply, resp)
}

fn negotiate<H: IcHandler>(
    svc: &mut IcService<H>,
    fw: &[(u16, u16)],
    msg: &[(u16, u16)],
) -> (Reply, Vec<u8>) {
    run(svc, &request(0, (0, 0), &negotiate_payload(fw, msg)))
}

/// The common response checks: flags TRANSACTION | RESPONSE, status, and everything but
/// status/flags (and the payload range given) unchanged.
fn check_header(req: &[u8], resp: &[u8], status: IcStatus) {
    assert_eq!(resp[25], 0x5, "icflags");
    assert_eq!(u32_at(resp, 20), status.0, "status");
    assert_eq!(&resp[..20], &req[..20], "pipe header and versions echoed");
    assert_eq!(resp[24], req[24], "ictransaction_id echoed");
}

// ---------------------------------------------------------------- negotiation

#[test]
fn negotiate_heartbeat_picks_highest_common() {
    let mut svc = IcService::new(Heartbeat::new());
    let req = request(
        0,
        (0, 0),
        &negotiate_payload(&[(1, 0), (3, 0)], &[(1, 0), (3, 0)]),
    );
    let (reply, resp) = run(&mut svc, &req);
    assert_eq!(reply.len, req.len());
    assert_eq!(reply.status, IcStatus::S_OK);
    assert_eq!(
        reply.event,
        IcEvent::Negotiated {
            framework: IcVersion::new(3, 0),
            service: IcVersion::new(3, 0)
        }
    );
    assert_eq!(resp[25], 0x5);
    assert_eq!(u32_at(&resp, 20), 0);
    assert_eq!(u16_at(&resp, 18), 16, "icmsgsize");
    assert_eq!(u16_at(&resp, 28), 1);
    assert_eq!(u16_at(&resp, 30), 1);
    assert_eq!(&resp[36..44], &[3, 0, 0, 0, 3, 0, 0, 0]);
    assert_eq!(
        svc.negotiated(),
        Some((IcVersion::new(3, 0), IcVersion::new(3, 0)))
    );
}

#[test]
fn negotiate_shutdown_timesync_kvp() {
    let mut sd = IcService::new(Shutdown::new(AcceptExceptHibernate));
    let (_, r) = negotiate(
        &mut sd,
        &[(1, 0), (3, 0)],
        &[(1, 0), (3, 0), (3, 1), (3, 2)],
    );
    assert_eq!(&r[36..44], &[3, 0, 0, 0, 3, 0, 2, 0]);

    let mut ts = IcService::new(TimeSync::new(|| 0u64));
    let (_, r) = negotiate(&mut ts, &[(3, 0)], &[(4, 0)]);
    assert_eq!(&r[36..44], &[3, 0, 0, 0, 4, 0, 0, 0]);

    let mut kvp = IcService::new(Box::new(<Kvp<'static>>::new(GuestInfo::default())));
    // OpenVMM offers 3.0, 4.0, 5.0: this guest (like Linux) stops at 4.0.
    let (_, r) = negotiate(&mut kvp, &[(3, 0)], &[(3, 0), (4, 0), (5, 0)]);
    assert_eq!(&r[36..44], &[3, 0, 0, 0, 4, 0, 0, 0]);

    // An old host: framework 1.0 only.
    let (_, r) = negotiate(&mut sd, &[(1, 0)], &[(1, 0)]);
    assert_eq!(&r[36..44], &[1, 0, 0, 0, 1, 0, 0, 0]);
}

#[test]
fn negotiate_without_common_version_answers_zero_counts() {
    let mut svc = IcService::new(Heartbeat::new());
    let (reply, resp) = negotiate(&mut svc, &[(3, 0)], &[(2, 0)]);
    assert_eq!(
        reply.event,
        IcEvent::NegotiationFailed(IcError::NoCommonVersion)
    );
    assert_eq!(u16_at(&resp, 28), 0);
    assert_eq!(u16_at(&resp, 30), 0);
    assert_eq!(resp[25], 0x5);
    assert_eq!(svc.negotiated(), None);
}

#[test]
fn negotiate_rejects_bad_counts() {
    let mut svc = IcService::new(Heartbeat::new());
    let mut p = negotiate_payload(&[(3, 0)], &[(3, 0)]);
    p[0] = 101; // 101 framework versions: over the limit.
    let (reply, resp) = run(&mut svc, &request(0, (0, 0), &p));
    assert!(matches!(
        reply.event,
        IcEvent::NegotiationFailed(IcError::BadNegotiateCounts { .. })
    ));
    assert_eq!(u16_at(&resp, 28), 0);
    // Counts claiming more versions than the packet holds.
    let mut p = negotiate_payload(&[(3, 0)], &[(3, 0)]);
    p[2] = 5;
    let (reply, _) = run(&mut svc, &request(0, (0, 0), &p));
    assert!(matches!(
        reply.event,
        IcEvent::NegotiationFailed(IcError::BadNegotiateCounts { .. })
    ));
}

#[test]
fn negotiate_short_offer_gets_full_size_answer() {
    let mut svc = IcService::new(Heartbeat::new());
    let req = request(0, (0, 0), &negotiate_payload(&[(3, 0)], &[]));
    assert_eq!(req.len(), 40);
    let (reply, resp) = run(&mut svc, &req);
    assert_eq!(reply.len, NEGOTIATE_RESPONSE_SIZE);
    assert_eq!(u32_at(&resp, 4), 36, "pipe size follows the longer answer");
    assert!(matches!(reply.event, IcEvent::NegotiationFailed(_)));
}

#[test]
fn framing_errors_are_typed() {
    let mut svc = IcService::new(Heartbeat::new());
    let mut out = [0u8; 64];
    assert_eq!(
        svc.handle(&[0u8; 27], &mut out),
        Err(IcError::TruncatedHeader { len: 27 })
    );
    let req = request(1, (3, 0), &[0u8; 40]);
    let mut small = [0u8; 50];
    assert_eq!(
        svc.handle(&req, &mut small),
        Err(IcError::ResponseBufferTooSmall {
            needed: 68,
            got: 50
        })
    );
}

// ---------------------------------------------------------------- heartbeat

#[test]
fn heartbeat_increments_sequence() {
    let mut svc = IcService::new(Heartbeat::new());
    negotiate(&mut svc, &[(3, 0)], &[(3, 0)]);
    let mut payload = [0u8; 40];
    payload[..8].copy_from_slice(&41u64.to_le_bytes());
    payload[8] = 1; // OpenVMM application state, echoed.
    let req = request(1, (3, 0), &payload);
    let (reply, resp) = run(&mut svc, &req);
    assert_eq!(reply.event, IcEvent::Heartbeat { sequence: 42 });
    assert_eq!(reply.len, 68);
    check_header(&req, &resp, IcStatus::S_OK);
    assert_eq!(u64_at(&resp, 28), 42);
    assert_eq!(&resp[36..], &req[36..]);
    assert_eq!(svc.handler().last_sequence(), Some(42));

    // Only the sequence number is required; the sequence wraps.
    let req = request(1, (3, 0), &u64::MAX.to_le_bytes());
    let (reply, resp) = run(&mut svc, &req);
    assert_eq!(reply.event, IcEvent::Heartbeat { sequence: 0 });
    assert_eq!(u64_at(&resp, 28), 0);

    let mut out = [0u8; 64];
    assert!(matches!(
        svc.handle(&request(1, (3, 0), &[0u8; 7]), &mut out),
        Err(IcError::TruncatedPayload {
            needed: 8,
            got: 7,
            ..
        })
    ));
}

#[test]
fn unknown_message_type_answers_e_fail() {
    let mut svc = IcService::new(Heartbeat::new());
    let req = request(3, (3, 0), &[0u8; 16]); // a shutdown message on the heartbeat channel
    let (reply, resp) = run(&mut svc, &req);
    assert_eq!(reply.len, req.len());
    assert_eq!(
        reply.event,
        IcEvent::Rejected(IcError::UnsupportedMessageType(IcMsgType::SHUTDOWN))
    );
    check_header(&req, &resp, IcStatus::E_FAIL);
    assert_eq!(&resp[28..], &req[28..]);
}

// ---------------------------------------------------------------- shutdown

fn shutdown_payload(reason: u32, timeout: u32, flags: u32) -> Vec<u8> {
    let mut p = vec![0u8; 2060];
    p[..4].copy_from_slice(&reason.to_le_bytes());
    p[4..8].copy_from_slice(&timeout.to_le_bytes());
    p[8..12].copy_from_slice(&flags.to_le_bytes());
    p[12..17].copy_from_slice(b"hello");
    p
}

#[test]
fn shutdown_accept_and_refuse() {
    let seen = Rc::new(Cell::new(None::<ShutdownRequest>));
    let s2 = seen.clone();
    let mut svc = IcService::new(Shutdown::new(move |r: &ShutdownRequest| {
        s2.set(Some(*r));
        r.kind != ShutdownKind::Hibernate
    }));
    negotiate(&mut svc, &[(3, 0)], &[(3, 2)]);

    let req = request(3, (3, 2), &shutdown_payload(0x8000_0000, 30, 0));
    let (reply, resp) = run(&mut svc, &req);
    check_header(&req, &resp, IcStatus::S_OK);
    assert_eq!(&resp[28..], &req[28..]);
    let IcEvent::ShutdownRequested(r) = reply.event else {
        panic!("{:?}", reply.event)
    };
    assert_eq!(r.kind, ShutdownKind::PowerOff);
    assert!(!r.force && r.is_planned());
    assert_eq!((r.timeout_seconds, r.version), (30, IcVersion::new(3, 2)));
    assert_eq!(seen.get(), Some(r), "policy consulted before the reply");

    let (reply, _) = run(&mut svc, &request(3, (3, 2), &shutdown_payload(0, 5, 3)));
    let IcEvent::ShutdownRequested(r) = reply.event else {
        panic!()
    };
    assert_eq!((r.kind, r.force), (ShutdownKind::Restart, true));

    let req = request(3, (3, 2), &shutdown_payload(0, 5, 4));
    let (reply, resp) = run(&mut svc, &req);
    check_header(&req, &resp, IcStatus::E_FAIL);
    let IcEvent::ShutdownRefused(r) = reply.event else {
        panic!()
    };
    assert_eq!(r.kind, ShutdownKind::Hibernate);

    let req = request(3, (3, 2), &shutdown_payload(0, 5, 8));
    let (reply, resp) = run(&mut svc, &req);
    check_header(&req, &resp, IcStatus::E_FAIL);
    assert_eq!(
        reply.event,
        IcEvent::Rejected(IcError::InvalidShutdownFlags(8))
    );

    let mut out = [0u8; 64];
    assert!(
        svc.handle(&request(3, (3, 2), &[0u8; 11]), &mut out)
            .is_err()
    );
}

// ---------------------------------------------------------------- time sync

const T_1700000000: u64 = FILETIME_UNIX_EPOCH + 1_700_000_000 * 10_000_000;

fn ts_v4(parent: u64, reference: u64, flags: u8) -> Vec<u8> {
    let mut p = vec![0u8; 22];
    p[..8].copy_from_slice(&parent.to_le_bytes());
    p[8..16].copy_from_slice(&reference.to_le_bytes());
    p[16] = flags;
    p[17] = 0;
    p[18] = 2;
    p
}

#[test]
fn timesync_v4_compensates_delay() {
    let now = Rc::new(Cell::new(0u64));
    let n2 = now.clone();
    let mut svc = IcService::new(TimeSync::new(move || n2.get()));
    negotiate(&mut svc, &[(3, 0)], &[(4, 0)]);

    // Host sampled at reference 1000; the packet arrives 0.5 s later.
    now.set(1000 + 5_000_000);
    let req = request(4, (4, 0), &ts_v4(T_1700000000, 1000, 1));
    let (reply, resp) = run(&mut svc, &req);
    check_header(&req, &resp, IcStatus::S_OK);
    assert_eq!(&resp[28..], &req[28..], "payload echoed unchanged");
    let IcEvent::TimeSample(s) = reply.event else {
        panic!("{:?}", reply.event)
    };
    assert!(s.is_sync());
    assert_eq!(s.stratum, 2);
    assert_eq!(
        s.utc_at_receipt,
        UnixTime {
            secs: 1_700_000_000,
            nanos: 500_000_000
        }
    );

    let ts = svc.handler_mut();
    assert_eq!(
        ts.utc_at(1000 + 25_000_001).unwrap(),
        UnixTime {
            secs: 1_700_000_002,
            nanos: 500_000_100
        }
    );
    now.set(1000 + 10_000_000);
    assert_eq!(
        ts.utc_now().unwrap(),
        UnixTime {
            secs: 1_700_000_001,
            nanos: 0
        }
    );
    assert!(matches!(
        ts.utc_at(1000 + STALE_AFTER + 1),
        Err(IcError::StaleTimeSample { .. })
    ));
    assert!(matches!(
        ts.utc_at(999),
        Err(IcError::TimeSampleFromFuture { .. })
    ));
}

#[test]
fn timesync_v4_rejects_future_and_stale_samples() {
    let now = Rc::new(Cell::new(10_000u64));
    let n2 = now.clone();
    let mut svc = IcService::new(TimeSync::new(move || n2.get()));
    negotiate(&mut svc, &[(3, 0)], &[(4, 0)]);
    let (reply, resp) = run(
        &mut svc,
        &request(4, (4, 0), &ts_v4(T_1700000000, 10_001, 2)),
    );
    assert_eq!(u32_at(&resp, 20), 0, "still acknowledged");
    assert!(matches!(
        reply.event,
        IcEvent::Rejected(IcError::TimeSampleFromFuture { .. })
    ));
    now.set(STALE_AFTER + 20_000);
    let (reply, _) = run(
        &mut svc,
        &request(4, (4, 0), &ts_v4(T_1700000000, 10_000, 2)),
    );
    assert!(matches!(
        reply.event,
        IcEvent::Rejected(IcError::StaleTimeSample { .. })
    ));
    let (reply, _) = run(&mut svc, &request(4, (4, 0), &ts_v4(5, STALE_AFTER, 2)));
    assert_eq!(
        reply.event,
        IcEvent::Rejected(IcError::TimeOutOfRange),
        "before 1970"
    );
    assert_eq!(svc.handler().utc_at(0), Err(IcError::NoTimeSample));
    let mut out = [0u8; 64];
    assert!(
        svc.handle(&request(4, (4, 0), &[0u8; 21]), &mut out)
            .is_err()
    );
}

#[test]
fn timesync_v3_uses_time_of_receipt() {
    let now = Rc::new(Cell::new(777u64));
    let n2 = now.clone();
    let mut svc = IcService::new(TimeSync::new(move || n2.get()));
    negotiate(&mut svc, &[(3, 0)], &[(3, 0)]);
    let mut p = vec![0u8; 25];
    p[..8].copy_from_slice(&(T_1700000000 + 1).to_le_bytes());
    p[24] = 2; // SAMPLE
    let req = request(4, (3, 0), &p);
    let (reply, resp) = run(&mut svc, &req);
    check_header(&req, &resp, IcStatus::S_OK);
    let IcEvent::TimeSample(s) = reply.event else {
        panic!()
    };
    assert_eq!((s.reference_time, s.flags), (777, TimeSyncFlags::SAMPLE));
    assert_eq!(
        s.utc_at_receipt,
        UnixTime {
            secs: 1_700_000_000,
            nanos: 100
        }
    );
    assert_eq!(
        svc.handler().utc_at(777 + 20_000_000).unwrap().secs,
        1_700_000_002
    );
    let mut out = [0u8; 64];
    assert!(svc.handle(&request(4, (3, 0), &p[..24]), &mut out).is_err());
}

// ---------------------------------------------------------------- KVP

type KvpSvc = IcService<Box<Kvp<'static>>>;

/// Test-only: drive boxed services (the KVP tables are too big for comfort on a test stack).
impl<T: IcHandler> IcHandler for Box<T> {
    const MSG_TYPE: IcMsgType = T::MSG_TYPE;
    const DEVICE_CLASS: vmbus_guest::protocol::DeviceClass = T::DEVICE_CLASS;
    fn service_versions(&self) -> &[IcVersion] {
        (**self).service_versions()
    }
    fn handle_message(&mut self, v: IcVersion, p: &mut [u8]) -> Result<crate::Outcome, IcError> {
        (**self).handle_message(v, p)
    }
}

#[test]
fn service_by_reference() {
    let mut hb = Heartbeat::new();
    {
        let mut svc = IcService::new(&mut hb);
        run(&mut svc, &request(1, (3, 0), &5u64.to_le_bytes()));
    }
    assert_eq!(hb.last_sequence(), Some(6));
}

static ADAPTERS: [AdapterIpInfo<'static>; 1] = [AdapterIpInfo {
    adapter_id: "00:15:5D:00:01:02",
    family: KvpAddressFamilyField(KvpAddressFamily::IPV4),
    dhcp_enabled: true,
    ip_addresses: "10.0.0.5",
    subnets: "255.255.255.0",
    gateways: "10.0.0.1",
    dns_servers: "10.0.0.1;8.8.8.8",
}];

fn guest() -> GuestInfo<'static> {
    GuestInfo {
        fully_qualified_domain_name: "vm1.example.com",
        integration_services_version: "6.0.0",
        network_address_ipv4: "10.0.0.5",
        network_address_ipv6: "",
        os_build_number: "1.2.3",
        os_name: "RustOS",
        os_major_version: "1",
        os_minor_version: "2",
        os_version: "1.2",
        processor_architecture: "x86_64",
        adapters: &ADAPTERS,
    }
}

fn kvp() -> KvpSvc {
    kvp_with_store()
}

/// A negotiated KVP service whose store holds `B` bytes.
fn kvp_with_store<const B: usize>() -> IcService<Box<Kvp<'static, B>>> {
    let mut svc = IcService::new(Box::new(Kvp::<B>::new(guest())));
    negotiate(&mut svc, &[(3, 0)], &[(4, 0)]);
    svc
}

fn record(value_type: u32, key: &[u8], key_size: u32, value: &[u8], value_size: u32) -> Vec<u8> {
    let mut r = vec![0u8; 2572];
    r[..4].copy_from_slice(&value_type.to_le_bytes());
    r[4..8].copy_from_slice(&key_size.to_le_bytes());
    r[8..12].copy_from_slice(&value_size.to_le_bytes());
    r[12..12 + key.len()].copy_from_slice(key);
    r[524..524 + value.len()].copy_from_slice(value);
    r
}

fn kv_msg(op: u8, pool: u8, rec: &[u8]) -> Vec<u8> {
    let mut p = vec![op, pool, 0, 0];
    p.extend_from_slice(rec);
    request(2, (4, 0), &p)
}

fn kv_str(op: u8, pool: u8, key: &str, value: &str) -> Vec<u8> {
    let (k, v) = (utf16z(key), utf16z(value));
    kv_msg(op, pool, &record(1, &k, k.len() as u32, &v, v.len() as u32))
}

fn kv_enum(pool: u8, index: u32) -> Vec<u8> {
    let mut p = vec![3, pool, 0, 0];
    p.extend_from_slice(&index.to_le_bytes());
    p.extend_from_slice(&[0u8; 2572]);
    request(2, (4, 0), &p)
}

fn kv_delete(pool: u8, key: &str) -> Vec<u8> {
    let k = utf16z(key);
    let mut p = vec![2, pool, 0, 0];
    p.extend_from_slice(&(k.len() as u32).to_le_bytes());
    let mut field = [0u8; 512];
    field[..k.len()].copy_from_slice(&k);
    p.extend_from_slice(&field);
    request(2, (4, 0), &p)
}

/// Decodes a NUL-terminated UTF-16 field of a response.
fn utf16_at(b: &[u8], off: usize, max: usize) -> std::string::String {
    let units: Vec<u16> = b[off..off + max]
        .chunks_exact(2)
        .map(|c| u16::from_le_bytes([c[0], c[1]]))
        .take_while(|&u| u != 0)
        .collect();
    std::string::String::from_utf16(&units).unwrap()
}

#[test]
fn kvp_set_get_enumerate_delete() {
    let mut svc = kvp();
    let req = kv_str(1, 0, "Key1", "Value1");
    assert_eq!(req.len(), 28 + 2576);
    let (reply, resp) = run(&mut svc, &req);
    check_header(&req, &resp, IcStatus::S_OK);
    assert_eq!(
        reply.event,
        IcEvent::KvpSetByHost {
            pool: KvpPool::EXTERNAL,
            slot: 0
        }
    );
    let e = svc.handler().entry(KvpPool::EXTERNAL, 0).unwrap();
    assert!(e.key().eq_str("Key1"));
    assert!(matches!(e.value(), KvpValue::String(s) if s.eq_str("Value1")));

    // GET: the host sends the key and an empty value.
    let k = utf16z("Key1");
    let req = kv_msg(0, 0, &record(0, &k, k.len() as u32, &[], 0));
    let (reply, resp) = run(&mut svc, &req);
    assert_eq!(reply.status, IcStatus::S_OK);
    assert_eq!(u32_at(&resp, 32), 1, "REG_SZ");
    assert_eq!(u32_at(&resp, 40), 14, "value_size includes the NUL");
    assert_eq!(utf16_at(&resp, 32 + 524, 2048), "Value1");

    // Overwrite keeps the slot.
    let (reply, _) = run(&mut svc, &kv_str(1, 0, "Key1", "Value2"));
    assert_eq!(
        reply.event,
        IcEvent::KvpSetByHost {
            pool: KvpPool::EXTERNAL,
            slot: 0
        }
    );

    let (reply, resp) = run(&mut svc, &kv_enum(0, 0));
    assert_eq!(reply.status, IcStatus::S_OK);
    assert_eq!(u32_at(&resp, 36 + 4), 10, "key_size");
    assert_eq!(utf16_at(&resp, 36 + 12, 512), "Key1");
    assert_eq!(utf16_at(&resp, 36 + 524, 2048), "Value2");
    let (reply, resp) = run(&mut svc, &kv_enum(0, 1));
    assert_eq!(reply.status, IcStatus::NO_MORE_ITEMS);
    assert_eq!(u32_at(&resp, 20), 0x8007_0103);

    let (reply, _) = run(&mut svc, &kv_delete(0, "Key1"));
    assert_eq!(
        reply.event,
        IcEvent::KvpDeletedByHost {
            pool: KvpPool::EXTERNAL
        }
    );
    let (reply, _) = run(&mut svc, &req_get(0, "Key1"));
    assert_eq!(reply.status, IcStatus::NO_MORE_ITEMS);
    assert_eq!(reply.event, IcEvent::Rejected(IcError::KeyNotFound));
    let (reply, _) = run(&mut svc, &kv_delete(0, "Key1"));
    assert_eq!(reply.status, IcStatus::NO_MORE_ITEMS);
}

fn req_get(pool: u8, key: &str) -> Vec<u8> {
    let k = utf16z(key);
    kv_msg(0, pool, &record(0, &k, k.len() as u32, &[], 0))
}

#[test]
fn kvp_auto_pool_enumerates_guest_info_in_linux_order() {
    let mut svc = kvp();
    let expect = [
        ("FullyQualifiedDomainName", "vm1.example.com"),
        ("IntegrationServicesVersion", "6.0.0"),
        ("NetworkAddressIPv4", "10.0.0.5"),
        ("NetworkAddressIPv6", ""),
        ("OSBuildNumber", "1.2.3"),
        ("OSName", "RustOS"),
        ("OSMajorVersion", "1"),
        ("OSMinorVersion", "2"),
        ("OSVersion", "1.2"),
        ("ProcessorArchitecture", "x86_64"),
    ];
    for (i, (k, v)) in expect.iter().enumerate() {
        let (reply, resp) = run(&mut svc, &kv_enum(2, i as u32));
        assert_eq!(reply.status, IcStatus::S_OK, "{k}");
        assert_eq!(u32_at(&resp, 36), 1);
        assert_eq!(u32_at(&resp, 40) as usize, 2 * (k.len() + 1));
        assert_eq!(u32_at(&resp, 44) as usize, 2 * (v.len() + 1));
        assert_eq!(utf16_at(&resp, 48, 512), *k);
        assert_eq!(utf16_at(&resp, 36 + 524, 2048), *v);
    }
    let (reply, _) = run(&mut svc, &kv_enum(2, 10));
    assert_eq!(reply.status, IcStatus::NO_MORE_ITEMS);
    let (reply, resp) = run(&mut svc, &req_get(2, "OSName"));
    assert_eq!(reply.status, IcStatus::S_OK);
    assert_eq!(utf16_at(&resp, 32 + 524, 2048), "RustOS");

    // The guest pool carries what the OS publishes.
    svc.handler_mut()
        .set_local(KvpPool::GUEST, "Role", "web")
        .unwrap();
    let (_, resp) = run(&mut svc, &kv_enum(1, 0));
    assert_eq!(utf16_at(&resp, 48, 512), "Role");
}

#[test]
fn kvp_integer_values() {
    let mut svc = kvp();
    let k = utf16z("Count");
    let (reply, _) = run(
        &mut svc,
        &kv_msg(1, 3, &record(4, &k, 12, &7u32.to_le_bytes(), 4)),
    );
    assert_eq!(reply.status, IcStatus::S_OK);
    assert_eq!(
        svc.handler()
            .get(KvpPool::AUTO_EXTERNAL, "Count")
            .unwrap()
            .value(),
        KvpValue::U32(7)
    );
    let (reply, _) = run(
        &mut svc,
        &kv_msg(1, 3, &record(11, &k, 12, &9u64.to_le_bytes(), 8)),
    );
    assert_eq!(reply.status, IcStatus::S_OK);
    assert_eq!(
        svc.handler()
            .get(KvpPool::AUTO_EXTERNAL, "Count")
            .unwrap()
            .value(),
        KvpValue::U64(9)
    );
    let (_, resp) = run(&mut svc, &req_get(3, "Count"));
    assert_eq!(
        (
            u32_at(&resp, 32),
            u32_at(&resp, 40),
            u64_at(&resp, 32 + 524)
        ),
        (11, 8, 9)
    );
    let (reply, _) = run(&mut svc, &kv_msg(1, 3, &record(4, &k, 12, &[0; 8], 8)));
    assert_eq!(
        reply.event,
        IcEvent::Rejected(IcError::BadValue {
            value_type: 4,
            size: 8
        })
    );
    let (reply, _) = run(&mut svc, &kv_msg(1, 3, &record(3, &k, 12, &[0; 8], 8)));
    assert_eq!(
        reply.status,
        IcStatus::E_FAIL,
        "REG_BINARY is not supported"
    );
}

#[test]
fn kvp_rejects_bad_strings_and_pools() {
    let mut svc = kvp();
    let check = |svc: &mut KvpSvc, req: Vec<u8>, err: IcError| {
        let (reply, resp) = run(svc, &req);
        assert_eq!(reply.event, IcEvent::Rejected(err));
        check_header(&req, &resp, IcStatus::E_FAIL);
    };
    let unterminated = vec![b'A'; 512];
    check(
        &mut svc,
        kv_msg(1, 0, &record(1, &unterminated, 512, &[0, 0], 2)),
        IcError::UnterminatedString,
    );
    let k = utf16z("K");
    check(
        &mut svc,
        kv_msg(1, 0, &record(1, &k, 514, &[0, 0], 2)),
        IcError::BadStringSize {
            size: 514,
            max: 512,
        },
    );
    check(
        &mut svc,
        kv_msg(1, 0, &record(1, &k, 3, &[0, 0], 2)),
        IcError::BadStringSize { size: 3, max: 512 },
    );
    check(
        &mut svc,
        kv_msg(1, 0, &record(1, &k, 0, &[0, 0], 2)),
        IcError::BadStringSize { size: 0, max: 512 },
    );
    check(
        &mut svc,
        kv_msg(1, 0, &record(1, &k, 4, &[0, 0], 2050)),
        IcError::BadStringSize {
            size: 2050,
            max: 2048,
        },
    );
    check(
        &mut svc,
        kv_msg(1, 0, &record(1, &k, 4, &[b'x'; 2048], 2048)),
        IcError::UnterminatedString,
    );
    // Key size without the NUL is tolerated when the NUL follows in the field.
    let (reply, _) = run(&mut svc, &kv_msg(1, 0, &record(1, &k, 2, &[0, 0], 2)));
    assert_eq!(reply.status, IcStatus::S_OK);
    check(
        &mut svc,
        kv_str(1, 4, "K", "V"),
        IcError::InvalidPool(KvpPool(4)),
    );
    check(
        &mut svc,
        kv_str(1, 9, "K", "V"),
        IcError::InvalidPool(KvpPool(9)),
    );
    check(
        &mut svc,
        kv_str(1, 2, "K", "V"),
        IcError::PoolNotWritable(KvpPool::AUTO),
    );
    check(
        &mut svc,
        kv_delete(2, "OSName"),
        IcError::PoolNotWritable(KvpPool::AUTO),
    );
    check(
        &mut svc,
        kv_str(9, 0, "K", "V"),
        IcError::UnknownKvpOperation(KvpOperation(9)),
    );
    let short = request(2, (4, 0), &[1, 0, 0, 0, 1, 0]);
    check(
        &mut svc,
        short,
        IcError::TruncatedPayload {
            msg_type: IcMsgType::KVP_EXCHANGE,
            needed: 2576,
            got: 6,
        },
    );
}

#[test]
fn kvp_pool_capacity_is_enforced() {
    // Room for exactly four entries of a 2-unit key and a 1-unit value.
    const FOUR: usize = 4 * crate::kvp::entry_size(4, 2);
    let mut svc = kvp_with_store::<FOUR>();
    for i in 0..4 {
        let (reply, _) = run(&mut svc, &kv_str(1, 0, &std::format!("K{i}"), "v"));
        assert_eq!(reply.status, IcStatus::S_OK);
    }
    let (reply, _) = run(&mut svc, &kv_str(1, 0, "K4", "v"));
    assert_eq!(reply.status, IcStatus::DISK_FULL);
    assert_eq!(
        reply.event,
        IcEvent::Rejected(IcError::PoolFull(KvpPool::EXTERNAL))
    );
    // Overwriting an existing key still works when full.
    let (reply, _) = run(&mut svc, &kv_str(1, 0, "K3", "w"));
    assert_eq!(reply.status, IcStatus::S_OK);
    // The store is shared by the pools: another pool is full too.
    let (reply, _) = run(&mut svc, &kv_str(1, 3, "K5", "v"));
    assert_eq!(
        reply.event,
        IcEvent::Rejected(IcError::PoolFull(KvpPool::AUTO_EXTERNAL))
    );
    // A longer value for an existing key does not fit either, and leaves the old one.
    let (reply, _) = run(&mut svc, &kv_str(1, 0, "K1", "longer"));
    assert_eq!(reply.status, IcStatus::DISK_FULL);
    assert!(matches!(
        svc.handler().get(KvpPool::EXTERNAL, "K1").unwrap().value(),
        KvpValue::String(s) if s.eq_str("v")
    ));
    // Deleting makes room again, and the order of the others is kept.
    let (reply, _) = run(&mut svc, &kv_delete(0, "K0"));
    assert_eq!(reply.status, IcStatus::S_OK);
    let (reply, _) = run(&mut svc, &kv_str(1, 0, "K4", "v"));
    assert_eq!(
        reply.event,
        IcEvent::KvpSetByHost {
            pool: KvpPool::EXTERNAL,
            slot: 3
        }
    );
    let keys: Vec<std::string::String> = svc
        .handler()
        .entries(KvpPool::EXTERNAL)
        .map(|e| e.key().chars().collect())
        .collect();
    assert_eq!(keys, ["K1", "K2", "K3", "K4"]);
    assert_eq!(svc.handler().store_usage(), (FOUR, FOUR));
}

fn ip_msg(op: u8, adapter: &str) -> Vec<u8> {
    let mut p = vec![0u8; 7428];
    p[0] = op;
    p[1] = 0;
    let a = utf16z(adapter);
    p[2..2 + a.len()].copy_from_slice(&a);
    request(2, (4, 0), &p)
}

#[test]
fn kvp_ip_info() {
    let mut svc = kvp();
    let req = ip_msg(4, "00:15:5d:00:01:02");
    let (reply, resp) = run(&mut svc, &req);
    check_header(&req, &resp, IcStatus::S_OK);
    assert_eq!(reply.len, 28 + 7428);
    assert_eq!((resp[28 + 258], resp[28 + 259]), (1, 1));
    assert_eq!(utf16_at(&resp, 28 + 260, 2048), "10.0.0.5");
    assert_eq!(utf16_at(&resp, 28 + 2308, 2048), "255.255.255.0");
    assert_eq!(utf16_at(&resp, 28 + 4356, 1024), "10.0.0.1");
    assert_eq!(utf16_at(&resp, 28 + 5380, 2048), "10.0.0.1;8.8.8.8");

    let (reply, _) = run(&mut svc, &ip_msg(4, "00:15:5D:FF:FF:FF"));
    assert_eq!(
        (reply.status, reply.event),
        (
            IcStatus::E_FAIL,
            IcEvent::Rejected(IcError::AdapterNotFound)
        )
    );
    let (reply, _) = run(&mut svc, &ip_msg(5, "00:15:5D:00:01:02"));
    assert_eq!(reply.status, IcStatus::NOT_SUPPORTED);
    let (reply, _) = run(&mut svc, &ip_msg(5, "nope"));
    assert_eq!(reply.status, IcStatus::GUID_NOT_FOUND);
    // Unterminated adapter id.
    let mut req = ip_msg(4, "");
    req[30..30 + 256].fill(b'A');
    let (reply, _) = run(&mut svc, &req);
    assert_eq!(reply.event, IcEvent::Rejected(IcError::UnterminatedString));
}

#[test]
fn kvp_local_api_validates() {
    let mut k = Box::new(<Kvp<'static>>::new(guest()));
    assert_eq!(
        k.set_local(KvpPool::AUTO, "a", "b"),
        Err(IcError::PoolNotWritable(KvpPool::AUTO))
    );
    assert_eq!(
        k.set_local(KvpPool(7), "a", "b"),
        Err(IcError::InvalidPool(KvpPool(7)))
    );
    let long: std::string::String = "x".repeat(256);
    assert_eq!(
        k.set_local(KvpPool::GUEST, &long, "b"),
        Err(IcError::StringTooLong)
    );
    assert!(k.set_local(KvpPool::GUEST, "", "b").is_err());
    assert_eq!(
        k.set_local(KvpPool::GUEST, &long[..255], &"y".repeat(1023)),
        Ok(0)
    );
    assert!(k.remove_local(KvpPool::GUEST, &long[..255]));
    assert!(!k.remove_local(KvpPool::GUEST, "zz"));
}

// ---------------------------------------------------------------- helpers

#[test]
fn utf16_helpers() {
    use crate::utf16::*;
    let mut out = [0xffu8; 8];
    assert_eq!(encode_str("abc", &mut out), Ok(8));
    assert_eq!(out, [b'a', 0, b'b', 0, b'c', 0, 0, 0]);
    assert_eq!(encode_str("abcd", &mut out), Err(IcError::StringTooLong));
    let s = decode(&out, 8).unwrap();
    assert!(s.eq_str("abc") && s.eq_ignore_ascii_case("ABC"));
    assert_eq!(s.chars().collect::<std::string::String>(), "abc");
    assert_eq!(
        decode(&out, 6).unwrap().len_units(),
        3,
        "NUL right after the size is tolerated"
    );
    assert_eq!(
        decode(&out, 10),
        Err(IcError::BadStringSize { size: 10, max: 8 })
    );
    assert_eq!(
        decode(&[b'a', 0, b'b', 0], 4),
        Err(IcError::UnterminatedString)
    );
    assert_eq!(
        decode_field(&[b'a', 0, b'b']),
        Err(IcError::UnterminatedString)
    );
    assert_eq!(utf16_len("é😀"), 3);
    assert_eq!(UnixTime::from_filetime(FILETIME_UNIX_EPOCH - 1), None);
    assert_eq!(
        UnixTime::from_filetime(FILETIME_UNIX_EPOCH + 15),
        Some(UnixTime {
            secs: 0,
            nanos: 1500
        })
    );
}

// ---------------------------------------------------------------- fuzz

fn fuzz_service<H: IcHandler>(svc: &mut IcService<H>, bases: &[Vec<u8>], seed: u64) {
    let mut resp = vec![0u8; 8192];
    for (i, base) in bases.iter().enumerate() {
        fuzz(base, seed ^ (i as u64 + 1), 3000, |input| {
            match svc.handle(input, &mut resp) {
                Ok(reply) => {
                    assert!(reply.len >= input.len() && reply.len <= resp.len());
                    assert_eq!(resp[25], 0x5);
                }
                Err(e) => {
                    let _ = std::format!("{e}");
                }
            }
        });
    }
}

fn negotiate_base(msg: &[(u16, u16)]) -> Vec<u8> {
    request(0, (0, 0), &negotiate_payload(&[(1, 0), (3, 0)], msg))
}

#[test]
fn fuzz_heartbeat() {
    let mut svc = IcService::new(Heartbeat::new());
    let bases = [negotiate_base(&[(3, 0)]), request(1, (3, 0), &[7u8; 40])];
    fuzz_service(&mut svc, &bases, 0x1234_5678);
}

#[test]
fn fuzz_shutdown() {
    let mut svc = IcService::new(Shutdown::new(AcceptExceptHibernate));
    let bases = [
        negotiate_base(&[(3, 2)]),
        request(3, (3, 2), &shutdown_payload(0, 1, 1)),
    ];
    fuzz_service(&mut svc, &bases, 0xdead_beef);
}

#[test]
fn fuzz_timesync() {
    let t = Cell::new(1u64);
    let mut svc = IcService::new(TimeSync::new(|| {
        t.set(t.get().wrapping_mul(6364136223846793005).wrapping_add(1));
        t.get()
    }));
    let bases = [
        negotiate_base(&[(4, 0)]),
        request(4, (4, 0), &ts_v4(T_1700000000, 5, 1)),
        request(4, (3, 0), &[9u8; 25]),
    ];
    fuzz_service(&mut svc, &bases, 0x0bad_cafe);
    let _ = svc.handler().utc_at(u64::MAX);
}

#[test]
fn fuzz_kvp() {
    let mut svc = kvp();
    let bases = [
        negotiate_base(&[(4, 0)]),
        kv_str(1, 0, "Key", "Value"),
        kv_str(0, 0, "Key", "Value"),
        kv_enum(2, 3),
        kv_enum(0, 0),
        kv_delete(0, "Key"),
        ip_msg(4, "00:15:5D:00:01:02"),
        ip_msg(5, "00:15:5D:00:01:02"),
    ];
    fuzz_service(&mut svc, &bases, 0x5eed);
}

/// `handle_in_place` answers exactly like `handle`, byte for byte and error for error, for
/// every fuzzed input (two services fed the same inputs stay in step).
#[test]
fn in_place_answers_like_handle() {
    fn twins<H: IcHandler>(a: &mut IcService<H>, b: &mut IcService<H>, bases: &[Vec<u8>]) {
        let mut resp = vec![0u8; 8192];
        let mut buf = vec![0u8; 8192];
        for (i, base) in bases.iter().enumerate() {
            fuzz(base, 0x7777 ^ i as u64, 500, |input| {
                let copied = a.handle(input, &mut resp);
                buf[..input.len()].copy_from_slice(input);
                let in_place = b.handle_in_place(&mut buf, input.len());
                assert_eq!(copied, in_place);
                if let Ok(r) = copied {
                    assert_eq!(&resp[..r.len], &buf[..r.len]);
                }
            });
        }
    }
    let (mut a, mut b) = (
        IcService::new(Heartbeat::new()),
        IcService::new(Heartbeat::new()),
    );
    twins(
        &mut a,
        &mut b,
        &[negotiate_base(&[(3, 0)]), request(1, (3, 0), &[7u8; 40])],
    );
    let (mut a, mut b) = (kvp(), kvp());
    twins(
        &mut a,
        &mut b,
        &[
            kv_str(1, 0, "Key", "Value"),
            kv_enum(0, 0),
            kv_delete(0, "Key"),
            ip_msg(4, "00:15:5D:00:01:02"),
        ],
    );
    // A buffer too small for the request, or for the NEGOTIATE answer, changes nothing.
    let req = request(0, (0, 0), &negotiate_payload(&[(3, 0)], &[]));
    let mut small = req.clone();
    assert_eq!(
        a.handle_in_place(&mut small, 41),
        Err(IcError::ResponseBufferTooSmall {
            needed: 41,
            got: 40
        })
    );
    assert_eq!(
        a.handle_in_place(&mut small, 40),
        Err(IcError::ResponseBufferTooSmall {
            needed: 44,
            got: 40
        })
    );
    assert_eq!(small, req);
}

/// The KVP store never panics and never corrupts itself under random host SET / DELETE
/// traffic: every entry stays readable, keys stay unique per pool, usage stays in bounds.
#[test]
fn kvp_store_survives_random_traffic() {
    let mut svc = kvp_with_store::<600>();
    let mut rng = XorShift(0xfeed);
    for _ in 0..4000 {
        let pool = (rng.next() % 4) as u8;
        let key = std::format!("k{}", rng.next() % 12);
        let value = "v".repeat((rng.next() % 40) as usize);
        let req = if rng.next().is_multiple_of(3) {
            kv_delete(pool, &key)
        } else {
            kv_str(1, pool, &key, &value)
        };
        run(&mut svc, &req);
        let k = svc.handler();
        let (used, cap) = k.store_usage();
        assert!(used <= cap);
        let mut total = 0;
        for p in 0..4 {
            let keys: Vec<std::string::String> = k
                .entries(KvpPool(p))
                .map(|e| {
                    total += crate::kvp::entry_size(
                        2 * e.key().len_units(),
                        match e.value() {
                            KvpValue::String(s) => 2 * s.len_units(),
                            _ => unreachable!("only strings were set"),
                        },
                    );
                    e.key().chars().collect()
                })
                .collect();
            let mut unique = keys.clone();
            unique.sort();
            unique.dedup();
            assert_eq!(unique.len(), keys.len(), "pool {p}: {keys:?}");
        }
        assert_eq!(total, used, "every stored byte belongs to a readable entry");
    }
}
