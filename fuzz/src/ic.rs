//! The integration services without a channel: each service's `IcService` fed generated and
//! arbitrary requests, checked against the protocol (devices §6): the common framing echoed,
//! NEGOTIATE choosing the first version of ours the host offers, heartbeat answering n + 1,
//! shutdown decoding its flags, time sync's acceptance rules, and KVP against a model of its
//! pools and their fixed store. `handle` and `handle_in_place` must agree byte for byte.

use crate::Input;
use ic_services::heartbeat::Heartbeat;
use ic_services::kvp::{AUTO_POOL_KEYS, GuestInfo, Kvp, entry_size};
use ic_services::shutdown::{Shutdown, ShutdownKind, ShutdownRequest};
use ic_services::timesync::{STALE_AFTER, TimeSync};
use ic_services::{
    FRAMEWORK_VERSIONS, IcError, IcEvent, IcHandler, IcService, IcStatus, IcVersion,
};
use std::cell::Cell;
use std::rc::Rc;

fn le16(b: &[u8], at: usize) -> u16 {
    u16::from_le_bytes([b[at], b[at + 1]])
}
fn le32(b: &[u8], at: usize) -> u32 {
    u32::from_le_bytes(b[at..at + 4].try_into().unwrap())
}
fn le64(b: &[u8], at: usize) -> u64 {
    u64::from_le_bytes(b[at..at + 8].try_into().unwrap())
}

/// A request: pipe header, IC header (framework 3.0, `ty`, service version `ver`,
/// TRANSACTION | REQUEST) and `payload`.
pub fn request(ty: u16, ver: (u16, u16), status: u32, payload: &[u8]) -> Vec<u8> {
    let mut v = Vec::with_capacity(28 + payload.len());
    v.extend_from_slice(&1u32.to_le_bytes());
    v.extend_from_slice(&((20 + payload.len()) as u32).to_le_bytes());
    v.extend_from_slice(&[3, 0, 0, 0]);
    v.extend_from_slice(&ty.to_le_bytes());
    v.extend_from_slice(&ver.0.to_le_bytes());
    v.extend_from_slice(&ver.1.to_le_bytes());
    v.extend_from_slice(&(payload.len() as u16).to_le_bytes());
    v.extend_from_slice(&status.to_le_bytes());
    v.extend_from_slice(&[0x5A, 3, 0, 0]);
    v.extend_from_slice(payload);
    v
}

fn version(inp: &mut Input<'_>, ours: &[IcVersion]) -> (u16, u16) {
    match inp.u8() % 4 {
        0 => (inp.u16() % 6, inp.u16() % 3),
        _ => {
            let v = ours[inp.below(ours.len())];
            (v.major, v.minor)
        }
    }
}

/// A NEGOTIATE payload: framework and service versions (sometimes with lying counts).
pub fn negotiate(inp: &mut Input<'_>, service: &[IcVersion]) -> Vec<u8> {
    let fw: Vec<(u16, u16)> = (0..inp.below(4))
        .map(|_| version(inp, FRAMEWORK_VERSIONS))
        .collect();
    let msg: Vec<(u16, u16)> = (0..inp.below(4)).map(|_| version(inp, service)).collect();
    let (mut nf, mut nm) = (fw.len() as u16, msg.len() as u16);
    if inp.u8().is_multiple_of(8) {
        nf = inp.u16() % 128;
        nm = inp.u16() % 128;
    }
    let mut p = Vec::new();
    p.extend_from_slice(&nf.to_le_bytes());
    p.extend_from_slice(&nm.to_le_bytes());
    p.extend_from_slice(&[0; 4]);
    for (a, b) in fw.iter().chain(&msg) {
        p.extend_from_slice(&a.to_le_bytes());
        p.extend_from_slice(&b.to_le_bytes());
    }
    p
}

/// What NEGOTIATE must choose from a `received`-byte payload.
fn negotiate_model(p: &[u8], service: &[IcVersion]) -> Option<(IcVersion, IcVersion)> {
    if p.len() < 8 {
        return None;
    }
    let (nf, nm) = (usize::from(le16(p, 0)), usize::from(le16(p, 2)));
    if nf > 100 || nm > 100 || p.len() < 8 + 4 * (nf + nm) {
        return None;
    }
    let v = |i: usize| IcVersion::new(le16(p, 8 + 4 * i), le16(p, 10 + 4 * i));
    let fw = FRAMEWORK_VERSIONS
        .iter()
        .find(|o| (0..nf).any(|i| v(i) == **o))?;
    let sv = service
        .iter()
        .find(|o| (nf..nf + nm).any(|i| v(i) == **o))?;
    Some((*fw, *sv))
}

/// Runs one request through two copies of a service (`handle` and `handle_in_place`),
/// checks the common framing, and returns the reply and response for the service's checks.
fn exchange<H: IcHandler>(
    a: &mut IcService<H>,
    b: &mut IcService<H>,
    req: &[u8],
    cap: usize,
) -> Option<(ic_services::Reply, Vec<u8>)> {
    let mut resp = vec![0u8; cap];
    let ra = a.handle(req, &mut resp);
    if cap >= req.len() {
        let mut buf = vec![0u8; cap];
        buf[..req.len()].copy_from_slice(req);
        let rb = b.handle_in_place(&mut buf, req.len());
        assert_eq!(ra, rb, "handle and handle_in_place disagree");
        if let Ok(r) = &ra {
            assert_eq!(
                resp[..r.len],
                buf[..r.len],
                "handle and handle_in_place bytes"
            );
        }
    } else {
        // Keep the two copies in step.
        let _ = b.handle(req, &mut vec![0u8; cap]);
    }
    let reply = match ra {
        Ok(r) => r,
        Err(e) => {
            let needed = if req.len() >= 28 && le16(req, 12) == 0 {
                req.len().max(44)
            } else {
                req.len()
            };
            match e {
                IcError::TruncatedHeader { .. } => assert!(req.len() < 28),
                IcError::ResponseBufferTooSmall { .. } => assert!(cap < needed),
                _ => assert!(req.len() >= 28 && cap >= needed),
            }
            return None;
        }
    };
    let ty = le16(req, 12);
    let negotiate = ty == 0;
    let needed = if negotiate {
        req.len().max(44)
    } else {
        req.len()
    };
    assert_eq!(reply.len, needed, "reply length");
    let r = &resp;
    assert_eq!(r[0..4], req[0..4], "pipe flags echoed");
    let msgsize = if negotiate && needed > req.len() {
        (needed - 8) as u32
    } else {
        le32(req, 4)
    };
    assert_eq!(le32(r, 4), msgsize, "pipe size");
    assert_eq!(r[8..18], req[8..18], "versions and type echoed");
    assert_eq!(le16(r, 18), if negotiate { 16 } else { le16(req, 18) });
    assert_eq!(le32(r, 20), reply.status.0, "status in the header");
    assert_eq!(r[24], req[24], "IC transaction id echoed");
    assert_eq!(r[25], 0x5, "TRANSACTION | RESPONSE");
    if negotiate {
        let service = a.handler().service_versions().to_vec();
        let chosen = negotiate_model(&req[28..], &service);
        match chosen {
            Some((fw, sv)) => {
                assert_eq!(
                    reply.event,
                    IcEvent::Negotiated {
                        framework: fw,
                        service: sv
                    }
                );
                assert_eq!(reply.status, IcStatus::S_OK);
                assert_eq!(&r[28..32], &[1, 0, 1, 0]);
                assert_eq!((le16(r, 36), le16(r, 38)), (fw.major, fw.minor));
                assert_eq!((le16(r, 40), le16(r, 42)), (sv.major, sv.minor));
                assert_eq!(a.negotiated(), Some((fw, sv)));
            }
            None => {
                assert!(
                    matches!(reply.event, IcEvent::NegotiationFailed(_)),
                    "{reply:?}"
                );
                assert_eq!(
                    reply.status.0,
                    le32(req, 20),
                    "failed negotiation keeps the status"
                );
                assert_eq!(&r[28..32], &[0, 0, 0, 0]);
            }
        }
    } else if ty != H::MSG_TYPE.0 {
        assert_eq!(reply.status, IcStatus::E_FAIL);
        assert_eq!(r[28..reply.len], req[28..], "unsupported message changed");
    }
    Some((reply, resp))
}

/// Requests for service `H`: NEGOTIATE, its own message from `own`, another type, raw bytes.
fn run<H: IcHandler>(
    inp: &mut Input<'_>,
    mut a: IcService<H>,
    mut b: IcService<H>,
    mut own: impl FnMut(&mut Input<'_>) -> Vec<u8>,
    mut check: impl FnMut(&[u8], &IcService<H>, &ic_services::Reply, &[u8]),
) {
    for _ in 0..12 {
        if inp.is_empty() {
            break;
        }
        let service = a.handler().service_versions().to_vec();
        let req = match inp.u8() % 6 {
            0 => {
                let p = negotiate(inp, &service);
                request(0, version(inp, &service), inp.u32() & 0xFF, &p)
            }
            1..=3 => {
                let p = own(inp);
                request(H::MSG_TYPE.0, version(inp, &service), 0, &p)
            }
            4 => {
                let p = inp.bytes(64);
                request(inp.u16() % 10, version(inp, &service), 0, &p)
            }
            _ => inp.bytes(120),
        };
        let cap = match inp.u8() % 8 {
            0 => inp.below(req.len() + 50),
            _ => req.len() + 64,
        };
        if let Some((reply, resp)) = exchange(&mut a, &mut b, &req, cap)
            && le16(&req, 12) == H::MSG_TYPE.0
        {
            check(&req, &a, &reply, &resp);
        }
    }
}

/// The services on arbitrary and generated requests.
pub fn services(inp: &mut Input<'_>) {
    match inp.u8() % 4 {
        0 => run(
            inp,
            IcService::new(Heartbeat::new()),
            IcService::new(Heartbeat::new()),
            |inp| inp.bytes(44),
            |req, svc, reply, resp| {
                let seq = le64(req, 28).wrapping_add(1);
                assert_eq!(le64(resp, 28), seq);
                assert_eq!(reply.event, IcEvent::Heartbeat { sequence: seq });
                assert_eq!(svc.handler().last_sequence(), Some(seq));
            },
        ),
        1 => shutdown(inp),
        2 => timesync(inp),
        _ => kvp(inp),
    }
}

fn shutdown(inp: &mut Input<'_>) {
    let accept = Rc::new(Cell::new(true));
    let seen = Rc::new(Cell::new(None::<ShutdownRequest>));
    let policy = |accept: Rc<Cell<bool>>, seen: Option<Rc<Cell<Option<ShutdownRequest>>>>| {
        move |r: &ShutdownRequest| {
            if let Some(s) = &seen {
                s.set(Some(*r));
            }
            accept.get()
        }
    };
    let a = IcService::new(Shutdown::new(policy(accept.clone(), Some(seen.clone()))));
    let b = IcService::new(Shutdown::new(policy(accept.clone(), None)));
    run(
        inp,
        a,
        b,
        |inp| {
            accept.set(inp.u8() % 4 != 0);
            let mut p = vec![0u8; 12];
            p[..4].copy_from_slice(&inp.u32().to_le_bytes());
            p[4..8].copy_from_slice(&inp.u32().to_le_bytes());
            let flags = if inp.bool() {
                inp.u32()
            } else {
                u32::from(inp.u8() % 8)
            };
            p[8..12].copy_from_slice(&flags.to_le_bytes());
            let len = if inp.u8().is_multiple_of(8) {
                inp.below(2100)
            } else {
                2060
            };
            p.resize(len, 0x20);
            p
        },
        |req, svc, reply, resp| {
            let flags = le32(req, 36);
            assert_eq!(resp[28..reply.len], req[28..], "shutdown payload changed");
            let kind = match flags & !1 {
                0 => ShutdownKind::PowerOff,
                2 => ShutdownKind::Restart,
                4 => ShutdownKind::Hibernate,
                _ => {
                    assert_eq!(reply.status, IcStatus::E_FAIL);
                    assert_eq!(
                        reply.event,
                        IcEvent::Rejected(IcError::InvalidShutdownFlags(flags))
                    );
                    return;
                }
            };
            let r = seen.take().expect("the policy was asked");
            assert_eq!((r.kind, r.force, r.flags), (kind, flags & 1 != 0, flags));
            assert_eq!(
                (r.reason, r.timeout_seconds),
                (le32(req, 28), le32(req, 32))
            );
            let version = svc
                .negotiated()
                .map_or(IcVersion::new(le16(req, 14), le16(req, 16)), |(_, s)| s);
            assert_eq!(r.version, version);
            if accept.get() {
                assert_eq!(reply.status, IcStatus::S_OK);
                assert_eq!(reply.event, IcEvent::ShutdownRequested(r));
            } else {
                assert_eq!(reply.status, IcStatus::E_FAIL);
                assert_eq!(reply.event, IcEvent::ShutdownRefused(r));
            }
        },
    );
}

fn timesync(inp: &mut Input<'_>) {
    let now = Rc::new(Cell::new(0u64));
    let clock = |now: Rc<Cell<u64>>| move || now.get();
    let a = IcService::new(TimeSync::new(clock(now.clone())));
    let b = IcService::new(TimeSync::new(clock(now.clone())));
    run(
        inp,
        a,
        b,
        |inp| {
            now.set(if inp.bool() {
                inp.u64()
            } else {
                u64::from(inp.u32())
            });
            let mut p = Vec::new();
            let host = match inp.u8() % 3 {
                0 => inp.u64(),
                _ => 0x01DA_0000_0000_0000 + u64::from(inp.u32()),
            };
            p.extend_from_slice(&host.to_le_bytes());
            let reference = now
                .get()
                .wrapping_sub(u64::from(inp.u32()) * inp.below(3) as u64);
            p.extend_from_slice(&reference.to_le_bytes());
            let rest = 9 + inp.below(2) * 8;
            p.extend_from_slice(&inp.fill(rest));
            let len = if inp.u8().is_multiple_of(8) {
                inp.below(40)
            } else {
                p.len()
            };
            p.resize(len, 0);
            p
        },
        |req, svc, reply, _| {
            assert_eq!(
                reply.status,
                IcStatus::S_OK,
                "time samples are always acknowledged"
            );
            let version = svc
                .negotiated()
                .map_or(IcVersion::new(le16(req, 14), le16(req, 16)), |(_, s)| s);
            let t = now.get();
            let host = le64(req, 28);
            let (reference, flags) = if version.major >= 4 {
                (le64(req, 36), req[44])
            } else {
                (t, req[52])
            };
            let want = t
                .checked_sub(reference)
                .filter(|age| *age <= STALE_AFTER)
                .and_then(|age| host.checked_add(age))
                .and_then(|f| f.checked_sub(ic_services::protocol::FILETIME_UNIX_EPOCH));
            match (want, reply.event) {
                (Some(since), IcEvent::TimeSample(s)) => {
                    assert_eq!((s.host_time, s.reference_time), (host, reference));
                    assert_eq!(s.utc_at_receipt.secs, since / 10_000_000);
                    assert_eq!(s.flags.0, flags);
                    assert_eq!(svc.handler().last_sample(), Some(s));
                }
                (None, IcEvent::Rejected(_)) => {}
                (w, e) => panic!("time sample {host:#x}@{reference:#x} now {t:#x}: {w:?}, {e:?}"),
            }
        },
    );
}

/// A stored entry: key units, value type, value bytes.
type Entry = (Vec<u8>, u32, Vec<u8>);

/// The KVP pools as the host sees them: entries per pool in insertion order, in a store of
/// `cap` bytes.
struct KvpModel {
    pools: [Vec<Entry>; 5],
    cap: usize,
    /// Every request so far was generated, so the model knows the store.
    exact: bool,
}

impl KvpModel {
    fn used(&self) -> usize {
        self.pools
            .iter()
            .flatten()
            .map(|(k, _, v)| entry_size(k.len(), v.len()))
            .sum()
    }
}

const STORE: usize = 1200;

static GUEST: GuestInfo<'static> = GuestInfo {
    fully_qualified_domain_name: "guest.example",
    integration_services_version: "1.0",
    network_address_ipv4: "10.0.0.2",
    network_address_ipv6: "",
    os_build_number: "1",
    os_name: "hyperv-guest-rs",
    os_major_version: "0",
    os_minor_version: "1",
    os_version: "0.1",
    processor_architecture: "x86_64",
    adapters: &[],
};

fn units(s: &[u16]) -> Vec<u8> {
    s.iter().flat_map(|u| u.to_le_bytes()).collect()
}

fn kvp(inp: &mut Input<'_>) {
    let model = Rc::new(std::cell::RefCell::new(KvpModel {
        pools: Default::default(),
        cap: STORE,
        exact: true,
    }));
    let m2 = model.clone();
    let a: IcService<Kvp<'_, STORE>> = IcService::new(Kvp::new(GUEST));
    let b: IcService<Kvp<'_, STORE>> = IcService::new(Kvp::new(GUEST));
    run(
        inp,
        a,
        b,
        |inp| {
            let op = inp.u8() % 6;
            let pool = [0u8, 1, 2, 3, 4, 9][inp.below(6)];
            let key: Vec<u16> = if pool == 2 && inp.bool() {
                AUTO_POOL_KEYS[inp.below(10)].encode_utf16().collect()
            } else {
                (0..1 + inp.below(3))
                    .map(|_| u16::from(b'a' + inp.u8() % 3))
                    .collect()
            };
            let mut p = vec![op, pool, 0, 0];
            match op {
                3 => {
                    p.extend_from_slice(&u32::from(inp.u8() % 6).to_le_bytes());
                    p.resize(2580, 0);
                }
                2 => {
                    p.extend_from_slice(&(2 * key.len() as u32 + 2).to_le_bytes());
                    let k = units(&key);
                    p.extend_from_slice(&k);
                    p.resize(520, 0);
                }
                4 | 5 => p.resize(7428, 0),
                _ => {
                    let (ty, value): (u32, Vec<u8>) = match inp.u8() % 4 {
                        0 => (4, inp.fill(4)),
                        1 => (11, inp.fill(8)),
                        2 => (4, inp.fill(8)),
                        _ => {
                            let n = inp.below(400);
                            (
                                1,
                                units(&vec![u16::from(b'v') + u16::from(inp.u8() % 2); n]),
                            )
                        }
                    };
                    let vsize = if ty == 1 {
                        value.len() as u32 + 2
                    } else {
                        value.len() as u32
                    };
                    p.extend_from_slice(&ty.to_le_bytes());
                    p.extend_from_slice(&(2 * key.len() as u32 + 2).to_le_bytes());
                    p.extend_from_slice(&vsize.to_le_bytes());
                    let mut kf = units(&key);
                    kf.resize(512, 0);
                    p.extend_from_slice(&kf);
                    let mut vf = value;
                    vf.resize(2048, 0);
                    p.extend_from_slice(&vf);
                }
            }
            if inp.u8() % 16 == 0 {
                let n = inp.below(p.len());
                p.truncate(n);
            }
            p
        },
        move |req, _svc, reply, resp| kvp_check(&mut m2.borrow_mut(), req, reply, resp),
    );
    let _ = model;
}

fn kvp_check(m: &mut KvpModel, req: &[u8], reply: &ic_services::Reply, resp: &[u8]) {
    let p = &req[28..];
    let r = &resp[28..];
    let full = |n: usize| p.len() >= n;
    if !m.exact {
        return;
    }
    if p.len() < 2 {
        assert_eq!(reply.status, IcStatus::E_FAIL);
        return;
    }
    let (op, pool) = (p[0], p[1]);
    let fail = |reply: &ic_services::Reply| assert_eq!(reply.status, IcStatus::E_FAIL, "{reply:?}");
    let bad_pool = pool >= 5 || pool == 4;
    match op {
        1 if !full(2576) || bad_pool || pool == 2 => fail(reply),
        1 => {
            let (ty, ksize, vsize) = (le32(p, 4), le32(p, 8) as usize, le32(p, 12) as usize);
            let key = p[16..16 + ksize - 2].to_vec();
            let value = match (ty, vsize) {
                (1, n) => p[528..528 + n - 2].to_vec(),
                (4, 4) => p[528..532].to_vec(),
                (11, 8) => p[528..536].to_vec(),
                _ => return fail(reply),
            };
            let new = entry_size(key.len(), value.len());
            let used = m.used();
            let pl = &mut m.pools[usize::from(pool)];
            let slot = match pl.iter().position(|e| e.0 == key) {
                Some(i) if used - entry_size(pl[i].0.len(), pl[i].2.len()) + new <= m.cap => {
                    pl[i] = (key, ty, value);
                    Some(i)
                }
                None if used + new <= m.cap => {
                    pl.push((key, ty, value));
                    Some(pl.len() - 1)
                }
                _ => None,
            };
            match slot {
                Some(slot) => {
                    assert_eq!(reply.status, IcStatus::S_OK);
                    assert_eq!(
                        reply.event,
                        IcEvent::KvpSetByHost {
                            pool: ic_services::protocol::KvpPool(pool),
                            slot
                        }
                    );
                }
                None => assert_eq!(reply.status, IcStatus::DISK_FULL, "a full store"),
            }
        }
        0 if !full(2576) || bad_pool => fail(reply),
        0 => {
            let key = &p[16..16 + le32(p, 8) as usize - 2];
            let found = if pool == 2 {
                (0..10)
                    .filter_map(|i| GUEST.auto_entry(i))
                    .find(|(k, _)| units(&k.encode_utf16().collect::<Vec<_>>()) == key)
                    .map(|(_, v)| (1, units(&v.encode_utf16().collect::<Vec<_>>())))
            } else {
                m.pools[usize::from(pool)]
                    .iter()
                    .find(|e| e.0 == key)
                    .map(|e| (e.1, e.2.clone()))
            };
            match found {
                Some((ty, v)) => {
                    assert_eq!(reply.status, IcStatus::S_OK);
                    assert_eq!(le32(r, 4), ty, "GET value type");
                    let size = if ty == 1 { v.len() + 2 } else { v.len() };
                    assert_eq!(le32(r, 12) as usize, size, "GET value size");
                    assert_eq!(&r[528..528 + v.len()], &v[..], "GET value");
                }
                None => assert_eq!(reply.status, IcStatus::NO_MORE_ITEMS),
            }
        }
        2 if !full(520) || bad_pool || pool == 2 => fail(reply),
        2 => {
            let key = &p[8..8 + le32(p, 4) as usize - 2];
            let pl = &mut m.pools[usize::from(pool)];
            match pl.iter().position(|e| e.0 == key) {
                Some(i) => {
                    pl.remove(i);
                    assert_eq!(reply.status, IcStatus::S_OK);
                }
                None => assert_eq!(reply.status, IcStatus::NO_MORE_ITEMS),
            }
        }
        3 if !full(2580) || bad_pool => fail(reply),
        3 => {
            let index = le32(p, 4) as usize;
            let entry = if pool == 2 {
                GUEST.auto_entry(index).map(|(k, v)| {
                    let (k, v) = (
                        k.encode_utf16().collect::<Vec<_>>(),
                        v.encode_utf16().collect::<Vec<_>>(),
                    );
                    (units(&k), 1, units(&v))
                })
            } else {
                m.pools[usize::from(pool)].get(index).cloned()
            };
            match entry {
                Some((k, ty, v)) => {
                    assert_eq!(reply.status, IcStatus::S_OK);
                    assert_eq!(le32(r, 8), ty);
                    assert_eq!(le32(r, 12) as usize, k.len() + 2, "ENUMERATE key size");
                    assert_eq!(&r[20..20 + k.len()], &k[..], "ENUMERATE key");
                    assert_eq!(&r[532..532 + v.len()], &v[..], "ENUMERATE value");
                }
                None => assert_eq!(reply.status, IcStatus::NO_MORE_ITEMS),
            }
        }
        4 if !full(7428) => fail(reply),
        4 => assert_eq!(reply.status, IcStatus::E_FAIL, "no adapter to report"),
        5 if !full(7428) => fail(reply),
        5 => assert!(
            reply.status == IcStatus::GUID_NOT_FOUND || reply.status == IcStatus::E_FAIL,
            "{reply:?}"
        ),
        _ => fail(reply),
    }
}
