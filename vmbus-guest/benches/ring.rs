//! Ring throughput benchmark: the VMBus ring (`RingWriter` on one thread, `RingReader` on
//! another, signals through a park/unpark event) against, in the same run, a reference SPSC
//! byte ring with the same 24-byte framing and a single-thread memcpy of the same bytes.
//!
//! `cargo bench -p vmbus-guest --bench ring` (env: `RING_BENCH_ROUNDS`, default 9;
//! `RING_BENCH_MS`, default 200 ms per run; `RING_BENCH_SIZES`, default `64,256,1500,4096`;
//! `RING_BENCH_ST=1` for single-thread per-packet cost instead). Runs are interleaved round by round and the
//! report gives the median of the per-round ratios, because this machine's vCPUs change speed
//! within minutes; absolute numbers are context only.

#[path = "ring/reference.rs"]
mod reference;

use std::hint::{black_box, spin_loop};
use std::sync::OnceLock;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread::{self, Thread};
use std::time::{Duration, Instant};
use vmbus_guest::ring::{FlatRingMemory, OutgoingPacket, ReadError, WriteError};

/// Data area of every ring (64 pages).
const DATA_SIZE: usize = 256 * 1024;
/// Transaction id of the last packet of a run.
const END: u64 = u64::MAX;
/// How long a polling side spins before it sleeps.
const POLL: Duration = Duration::from_micros(50);
/// Bytes after which the batched variants commit / publish even before `BATCH` packets, so
/// large packets still stream (a 32 x 4 KiB batch would be half the ring).
const BATCH_BYTES: usize = 16 * 1024;
/// Packets per commit / publish in the batched variants.
const BATCH: u64 = 32;

/// An auto-reset event: the stand-in for a VMBus signal (SignalEvent hypercall + SINT).
struct Event {
    flag: AtomicBool,
    waiter: OnceLock<Thread>,
}

impl Event {
    fn new() -> Self {
        Self {
            flag: AtomicBool::new(false),
            waiter: OnceLock::new(),
        }
    }
    fn register(&self) {
        let _ = self.waiter.set(thread::current());
    }
    fn signal(&self) {
        self.flag.store(true, Ordering::Release);
        if let Some(t) = self.waiter.get() {
            t.unpark();
        }
    }
    fn wait(&self) {
        while !self.flag.swap(false, Ordering::Acquire) {
            thread::park();
        }
    }
}

/// The same polling step as the reference ring: spin a little, then yield the CPU.
fn backoff(spins: &mut u32) {
    *spins += 1;
    if *spins < 256 {
        spin_loop();
    } else {
        thread::yield_now();
    }
}

#[derive(Clone, Copy, Debug, PartialEq)]
enum Variant {
    Reference,
    Memcpy,
    /// Our ring: packets per commit/publish, consumer polls before sleeping.
    Ours {
        batch: u64,
        poll: bool,
    },
}

impl Variant {
    fn name(self) -> String {
        match self {
            Self::Reference => "reference SPSC".into(),
            Self::Memcpy => "memcpy (1 thread)".into(),
            Self::Ours { batch, poll } => format!(
                "vmbus ring {:<8} {}",
                if batch == 1 {
                    "b1".to_string()
                } else {
                    format!("b{batch}/16K")
                },
                if poll { "poll+sleep" } else { "sleep-now" }
            ),
        }
    }
}

#[derive(Default, Clone, Copy)]
struct Run {
    packets: u64,
    secs: f64,
    data_signals: u64,
    space_signals: u64,
    unmasks: u64,
}

impl Run {
    fn pps(&self) -> f64 {
        self.packets as f64 / self.secs
    }
}

fn run_ours(payload: usize, batch: u64, poll: bool, dur: Duration) -> Run {
    let mut buf = vec![0u64; (4096 + DATA_SIZE) / 8];
    let (mut w, mut r) = FlatRingMemory::new_pair(&mut buf).unwrap();
    let data_ready = Event::new();
    let space_ready = Event::new();
    // Packets per commit / publish: `batch`, or fewer if that many exceed BATCH_BYTES.
    let batch = batch.min((BATCH_BYTES / (payload + 24)).max(1) as u64);
    let start = Instant::now();
    thread::scope(|s| {
        let producer = s.spawn(|| {
            space_ready.register();
            let data = vec![0x5Au8; payload];
            let slices = [&data[..]];
            let mut signals = 0u64;
            let mut id = 0u64;
            loop {
                let done = id.is_multiple_of(256) && start.elapsed() >= dur;
                let pkt = OutgoingPacket::in_band(if done { END } else { id }, false, &slices);
                'write: loop {
                    match w.write(&pkt) {
                        Ok(()) => break,
                        Err(WriteError::Full { needed }) => {
                            if w.commit().is_needed() {
                                signals += 1;
                                data_ready.signal();
                            }
                            let t = Instant::now();
                            let mut spins = 0u32;
                            while !spins.is_multiple_of(32) || t.elapsed() < POLL {
                                backoff(&mut spins);
                                if w.write(&pkt).is_ok() {
                                    break 'write;
                                }
                            }
                            if !w.request_space(needed).unwrap() {
                                space_ready.wait();
                            }
                        }
                        Err(e) => panic!("{e}"),
                    }
                }
                id += 1;
                if (done || id.is_multiple_of(batch)) && w.commit().is_needed() {
                    signals += 1;
                    data_ready.signal();
                }
                if done {
                    return signals;
                }
            }
        });
        let consumer = s.spawn(|| {
            data_ready.register();
            let mut out = vec![0u8; payload + 64];
            let mut run = Run::default();
            let mut sum = 0u64;
            let mut unpublished = 0u64;
            r.begin_drain();
            'outer: loop {
                match r.read(&mut out) {
                    Ok(p) => {
                        if p.transaction_id() == END {
                            run.secs = start.elapsed().as_secs_f64();
                            let _ = r.finish_drain();
                            break;
                        }
                        sum += p.payload().first().copied().unwrap_or(0) as u64;
                        run.packets += 1;
                        unpublished += 1;
                        if unpublished >= batch {
                            unpublished = 0;
                            if r.publish().is_needed() {
                                run.space_signals += 1;
                                space_ready.signal();
                            }
                        }
                    }
                    Err(ReadError::Empty) => {
                        // Nothing to publish early: the writer has the space it asked for
                        // (every `batch` packets are published), and `finish_drain`
                        // publishes the rest before sleeping.
                        if poll {
                            let t = Instant::now();
                            let mut spins = 0u32;
                            while !spins.is_multiple_of(32) || t.elapsed() < POLL {
                                backoff(&mut spins);
                                if !r.is_empty().unwrap() {
                                    continue 'outer;
                                }
                            }
                        }
                        unpublished = 0;
                        let end = r.finish_drain();
                        run.unmasks += 1;
                        if end.signal.is_needed() {
                            run.space_signals += 1;
                            space_ready.signal();
                        }
                        if !end.more {
                            data_ready.wait();
                        }
                        r.begin_drain();
                    }
                    Err(e) => panic!("{e}"),
                }
            }
            black_box(sum);
            run
        });
        let signals = producer.join().unwrap();
        let mut run = consumer.join().unwrap();
        run.data_signals = signals;
        run
    })
}

fn run_reference(payload: usize, dur: Duration) -> Run {
    let (mut p, mut c) = reference::ring(DATA_SIZE);
    let start = Instant::now();
    thread::scope(|s| {
        s.spawn(move || {
            let data = vec![0x5Au8; payload];
            let mut id = 0u64;
            loop {
                let done = id.is_multiple_of(256) && start.elapsed() >= dur;
                p.push(if done { END } else { id }, &data);
                if done {
                    break;
                }
                id += 1;
            }
        });
        let consumer = s.spawn(move || {
            let mut out = vec![0u8; payload + 64];
            let mut run = Run::default();
            let mut sum = 0u64;
            loop {
                let (id, _) = c.pop(&mut out);
                if id == END {
                    run.secs = start.elapsed().as_secs_f64();
                    break;
                }
                sum += out[0] as u64;
                run.packets += 1;
            }
            black_box(sum);
            run
        });
        consumer.join().unwrap()
    })
}

/// One thread copies each packet's bytes (header, payload, trailer) into a ring-sized buffer
/// and the payload back out: the copies the rings do, without a second core or any sharing.
fn run_memcpy(payload: usize, dur: Duration) -> Run {
    let data = vec![0x5Au8; payload];
    let mut area = vec![0u8; DATA_SIZE];
    let mut out = vec![0u8; payload + 64];
    let total = (16 + payload).next_multiple_of(8) + 8;
    let hdr = [1u8; 16];
    let trailer = [0u8; 16];
    let start = Instant::now();
    let (mut pos, mut packets, mut sum) = (0usize, 0u64, 0u64);
    loop {
        if packets % 256 == 0 && start.elapsed() >= dur {
            break;
        }
        if pos + total > DATA_SIZE {
            pos = 0;
        }
        let pad = total - 16 - payload;
        area[pos..pos + 16].copy_from_slice(&hdr);
        area[pos + 16..pos + 16 + payload].copy_from_slice(&data);
        area[pos + 16 + payload..pos + total].copy_from_slice(&trailer[..pad]);
        let area = black_box(&mut area);
        out[..payload].copy_from_slice(&area[pos + 16..pos + 16 + payload]);
        sum += black_box(&out)[0] as u64;
        pos += total;
        packets += 1;
    }
    black_box(sum);
    Run {
        packets,
        secs: start.elapsed().as_secs_f64(),
        ..Run::default()
    }
}

/// Context only (`RING_BENCH_ST=1`): per-packet cost of each ring with producer and consumer
/// alternating on one thread, 32 packets at a time, free of cross-core effects.
fn single_thread(payload: usize) {
    const N: u64 = 100_000;
    let data = vec![0x5Au8; payload];
    let slices = [&data[..]];
    let mut out = vec![0u8; payload + 64];
    let mut buf = vec![0u64; (4096 + DATA_SIZE) / 8];
    let (mut w, mut r) = FlatRingMemory::new_pair(&mut buf).unwrap();
    let (mut p, mut c) = reference::ring(DATA_SIZE);
    let (mut ours, mut reference) = (f64::MAX, f64::MAX);
    for _ in 0..15 {
        let t = Instant::now();
        for i in 0..N / 32 {
            for j in 0..32 {
                w.write(&OutgoingPacket::in_band(i * 32 + j, false, &slices))
                    .unwrap();
            }
            let _ = w.commit();
            for _ in 0..32 {
                black_box(r.read(&mut out).unwrap().payload()[0]);
            }
            let _ = r.publish();
        }
        ours = ours.min(t.elapsed().as_nanos() as f64 / N as f64);
        let t = Instant::now();
        for i in 0..N / 32 {
            for j in 0..32 {
                p.push(i * 32 + j, &data);
            }
            for _ in 0..32 {
                black_box(c.pop(&mut out));
            }
        }
        reference = reference.min(t.elapsed().as_nanos() as f64 / N as f64);
    }
    println!(
        "single thread {payload:>5} B (best of 15): vmbus ring {ours:.1} ns/packet, reference {reference:.1} ns/packet"
    );
}

fn median(v: &mut [f64]) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    let n = v.len();
    if n % 2 == 1 {
        v[n / 2]
    } else {
        (v[n / 2 - 1] + v[n / 2]) / 2.0
    }
}

fn env(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn main() {
    let rounds = env("RING_BENCH_ROUNDS", 9).max(1) as usize;
    let dur = Duration::from_millis(env("RING_BENCH_MS", 200));
    let variants = [
        Variant::Reference,
        Variant::Ours {
            batch: 1,
            poll: true,
        },
        Variant::Ours {
            batch: BATCH,
            poll: true,
        },
        Variant::Memcpy,
        Variant::Ours {
            batch: 1,
            poll: false,
        },
        Variant::Ours {
            batch: BATCH,
            poll: false,
        },
    ];
    println!(
        "VMBus ring benchmark: data area {} KiB, {rounds} interleaved rounds of {} ms per variant",
        DATA_SIZE / 1024,
        dur.as_millis()
    );
    println!(
        "ratios are medians of per-round ratios; absolute rates are medians, for context only\n"
    );
    println!(
        "{:>7} {:<31} {:>10} {:>7} {:>8} {:>8} {:>9} {:>9} {:>9} {:>6}",
        "payload",
        "variant",
        "Mpkt/s",
        "GB/s",
        "x ref",
        "x memcpy",
        "dsig/1k",
        "ssig/1k",
        "unmask/1k",
        "excess"
    );
    if std::env::var("RING_BENCH_ST").is_ok() {
        for payload in [64usize, 256, 1500, 4096] {
            single_thread(payload);
        }
        return;
    }
    let sizes: Vec<usize> = std::env::var("RING_BENCH_SIZES")
        .ok()
        .map(|v| v.split(',').filter_map(|x| x.trim().parse().ok()).collect())
        .unwrap_or_else(|| vec![64, 256, 1500, 4096]);
    for &payload in &sizes {
        let mut runs: Vec<Vec<Run>> = vec![Vec::new(); variants.len()];
        for round in 0..rounds {
            for k in 0..variants.len() {
                // Rotate the order each round so no variant always runs in the same slot.
                let i = (k + round) % variants.len();
                let run = match variants[i] {
                    Variant::Reference => run_reference(payload, dur),
                    Variant::Memcpy => run_memcpy(payload, dur),
                    Variant::Ours { batch, poll } => run_ours(payload, batch, poll, dur),
                };
                if std::env::var("RING_BENCH_DEBUG").is_ok() {
                    eprintln!("{:?} {} {}", variants[i], run.packets, run.secs);
                }
                runs[i].push(run);
            }
        }
        for (i, v) in variants.iter().enumerate() {
            let mut pps: Vec<f64> = runs[i].iter().map(Run::pps).collect();
            let mut vs_ref: Vec<f64> = runs[i]
                .iter()
                .zip(&runs[0])
                .map(|(a, b)| a.pps() / b.pps())
                .collect();
            let mut vs_mem: Vec<f64> = runs[i]
                .iter()
                .zip(&runs[3])
                .map(|(a, b)| a.pps() / b.pps())
                .collect();
            let packets: u64 = runs[i].iter().map(|r| r.packets).sum();
            let per_k = |f: fn(&Run) -> u64| {
                runs[i].iter().map(f).sum::<u64>() as f64 * 1000.0 / packets.max(1) as f64
            };
            // Data signals beyond "one per unmask, plus one", worst run.
            let excess = runs[i]
                .iter()
                .map(|r| r.data_signals as i64 - r.unmasks as i64 - 1)
                .max()
                .unwrap_or(0);
            let pps_m = median(&mut pps);
            let ours = matches!(v, Variant::Ours { .. });
            println!(
                "{:>7} {:<31} {:>10.3} {:>7.2} {:>8.3} {:>8.3} {:>9} {:>9} {:>9} {:>6}",
                payload,
                v.name(),
                pps_m / 1e6,
                pps_m * payload as f64 / 1e9,
                median(&mut vs_ref),
                median(&mut vs_mem),
                if ours {
                    format!("{:.3}", per_k(|r| r.data_signals))
                } else {
                    "-".into()
                },
                if ours {
                    format!("{:.3}", per_k(|r| r.space_signals))
                } else {
                    "-".into()
                },
                if ours {
                    format!("{:.3}", per_k(|r| r.unmasks))
                } else {
                    "-".into()
                },
                if ours {
                    excess.max(0).to_string()
                } else {
                    "-".into()
                },
            );
        }
        println!();
    }
    println!(
        "b1 = commit/publish every packet; b32/16K = every 32 packets or 16 KiB, whichever first"
    );
    println!("poll+sleep = a side that finds the ring empty/full polls 50 us before it sleeps;");
    println!("sleep-now = the consumer sleeps as soon as the ring is empty");
    println!("dsig = writer->reader data signals, ssig = reader->writer space signals,");
    println!("excess = worst run's data signals minus (reader unmask events + 1), must be 0");
    println!(
        "\ncontext: per-packet cost with both ends on one thread (no cross-core or scheduler effects)"
    );
    for &payload in &sizes {
        single_thread(payload);
    }
}
