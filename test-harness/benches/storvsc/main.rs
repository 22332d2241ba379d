//! storvsc IOPS benchmark: 4 KiB random reads and writes at queue depth 1 and 32 against the
//! mock storage VSP's 32 MiB in-memory disk, next to two baselines measured in the same run:
//!
//! - the raw ring: the same VMBus channel type and ring size carrying packets of the same
//!   shape (a 64-byte in-band payload — the size of a WIN8+ EXECUTE_SRB — plus one 4 KiB
//!   GPA-direct range of caller memory) to the mock's `DataEchoDevice`, which does the VSP's
//!   4 KiB copy — between the guest page and a random place of its own 32 MiB disk — and
//!   completes at once, with no VSTOR or SCSI; reads and writes, each the baseline of the
//!   storvsc rows of its direction;
//! - the bare loop (`bare.rs`): two threads, shared memory, 64-byte requests and a 4 KiB
//!   memcpy each from a random place of a 32 MiB disk, no VMBus at all — the physical
//!   reference.
//!
//! `cargo bench -p test-harness --bench storvsc` (env: `STORVSC_BENCH_ROUNDS`, default 7;
//! `STORVSC_BENCH_MS`, default 150 ms per run; `STORVSC_BENCH_INSNS=0` skips the instruction
//! counts, which need valgrind: `apt-get install valgrind`). Host and guest run on their own
//! threads (`MockVmbusHost::spawn`: the host spins while idle — yielding its core after
//! `YIELD_AFTER` — for a window before it sleeps, and the table says how often it slept; the
//! guest loop and the bare loop's threads wait the same way, so two threads the scheduler put
//! on one core hand it over at once). Two modes:
//!
//! - `poll`: the host reads every ring on every step (`set_poll_rings(true)`), masking the
//!   guest's signals while it spins, and the guest polls every channel in a loop;
//! - `intr`: the host reads a ring only when the guest signals it, and the guest drains only
//!   the channels named in the work `Vmbus::handle_interrupt` returns (`poll_interrupt`; the
//!   guest spins on the flags, the mock delivers no real interrupt).
//!
//! The storvsc guest submits each round as one burst from VP 0 (`burst_on_vp(0)`): with 5
//! channels (4 sub-channels) its requests stay on VP 0's channel, as a kernel's would, so the
//! 5-channel rows show what the other channels cost a single submitter (polling them).
//!
//! Variants of one configuration are interleaved round by round (order rotated each round)
//! and the ratio columns are medians of the per-round ratios, because the machine's vCPUs
//! change speed within minutes; absolute rates are medians, for context only. Instruction
//! counts (`insns.rs`) do not depend on timing at all.

mod bare;
mod insns;
mod rig;

use std::time::{Duration, Instant};

use insns::{Side, Subject};
use rig::{DISK_BLOCKS, IO, Mode, Run, Stop, run_raw, run_storvsc};

#[derive(Clone, Copy, Debug, PartialEq)]
enum Variant {
    /// The bare two-thread loop.
    Bare,
    /// Raw ring to the data echo device: reads (`write` false) or writes.
    Raw { write: bool },
    /// storvsc with `channels` channels (1 = primary only).
    Stor { write: bool, channels: u16 },
}

impl Variant {
    fn name(self) -> String {
        match self {
            Self::Bare => "bare loop (no VMBus)".into(),
            Self::Raw { write } => {
                format!("raw ring {} (echo)", if write { "write" } else { "read " })
            }
            Self::Stor { write, channels } => format!(
                "storvsc {} {}ch",
                if write { "write" } else { "read " },
                channels
            ),
        }
    }

    /// Whether the variant writes (compared with the raw ring's writes).
    fn writes(self) -> bool {
        matches!(
            self,
            Self::Raw { write: true } | Self::Stor { write: true, .. }
        )
    }

    fn run(self, mode: Mode, depth: usize, dur: Duration) -> Run {
        let stop = Stop::Time(dur);
        match self {
            Self::Bare => bare::run_threaded(depth, dur),
            Self::Raw { write } => run_raw(mode, write, depth, stop, true),
            Self::Stor { write, channels } => run_storvsc(mode, write, channels, depth, stop, true),
        }
    }
}

const VARIANTS: [Variant; 7] = [
    Variant::Bare,
    Variant::Raw { write: false },
    Variant::Raw { write: true },
    Variant::Stor {
        write: false,
        channels: 1,
    },
    Variant::Stor {
        write: true,
        channels: 1,
    },
    Variant::Stor {
        write: false,
        channels: 5,
    },
    Variant::Stor {
        write: true,
        channels: 5,
    },
];
const BARE: usize = 0;
const RAW_READ: usize = 1;
const RAW_WRITE: usize = 2;

fn median(v: &mut [f64]) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    let n = v.len();
    if n == 0 {
        return f64::NAN;
    }
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

/// Median of the per-round ratios of `a` to `b`.
fn ratio(a: &[Run], b: &[Run]) -> f64 {
    median(
        &mut a
            .iter()
            .zip(b)
            .map(|(x, y)| x.iops() / y.iops())
            .collect::<Vec<_>>(),
    )
}

fn print_group(mode: Mode, depth: usize, runs: &[Vec<Run>]) {
    for (i, v) in VARIANTS.iter().enumerate() {
        let r = &runs[i];
        let ops: u64 = r.iter().map(|x| x.ops).sum::<u64>().max(1);
        let per = |f: fn(&Run) -> u64| r.iter().map(f).sum::<u64>() as f64 / ops as f64;
        let (to_host, to_guest) = (per(|x| x.to_host), per(|x| x.to_guest));
        let vmbus = i != BARE;
        let cell = |x: f64| {
            if vmbus { format!("{x:.3}") } else { "-".into() }
        };
        println!(
            "{:<5} {:>3} {:<22} {:>10.0} {:>7} {:>7.3} {:>8} {:>8} {:>8} {:>7} {:>6}",
            format!("{mode:?}").to_lowercase(),
            depth,
            v.name(),
            median(&mut r.iter().map(Run::iops).collect::<Vec<_>>()),
            cell(ratio(
                r,
                &runs[if v.writes() { RAW_WRITE } else { RAW_READ }]
            )),
            ratio(r, &runs[BARE]),
            cell(to_host),
            cell(to_guest),
            cell(to_host + to_guest),
            if vmbus {
                r.iter().map(|x| x.sleeps).sum::<u64>().to_string()
            } else {
                "-".into()
            },
            if vmbus {
                r.iter().map(|x| x.stalls).sum::<u64>().to_string()
            } else {
                "-".into()
            },
        );
    }
    println!();
}

fn print_insns() {
    if env("STORVSC_BENCH_INSNS", 1) == 0 {
        println!("instruction counts skipped (STORVSC_BENCH_INSNS=0)");
        return;
    }
    if !insns::available() {
        println!("instruction counts skipped: valgrind not found (apt-get install valgrind)");
        return;
    }
    println!(
        "{:>3} {:<22} {:>12} {:>12}",
        "QD", "variant", "guest insn/IO", "host insn/IO"
    );
    for depth in [1usize, 32] {
        for s in Subject::ALL {
            let cell = |side| {
                insns::per_io(s, depth, side).map_or_else(|| "n/a".into(), |x| format!("{x:.0}"))
            };
            println!(
                "{:>3} {:<22} {:>12} {:>12}",
                depth,
                s.name(),
                cell(Side::Guest),
                cell(Side::Host)
            );
        }
    }
    println!("{}", insns::footnote());
}

/// The 1-minute load average (Linux), or "n/a".
fn load_average() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .ok()
        .and_then(|s| s.split_whitespace().next().map(str::to_owned))
        .unwrap_or_else(|| "n/a".into())
}

fn main() {
    if let Ok(spec) = std::env::var(insns::CHILD_ENV) {
        std::process::exit(insns::child(&spec));
    }
    // `cargo bench` passes `--bench`; `cargo test --benches` passes nothing: run briefly.
    let quick = !std::env::args().any(|a| a == "--bench");
    let rounds = if quick {
        1
    } else {
        env("STORVSC_BENCH_ROUNDS", 7).max(1) as usize
    };
    let dur = Duration::from_millis(if quick {
        10
    } else {
        env("STORVSC_BENCH_MS", 150)
    });
    println!(
        "storvsc benchmark: {IO}-byte random I/O on a {} MiB in-memory LUN, \
         {rounds} interleaved rounds of {} ms per variant",
        (DISK_BLOCKS * 512) >> 20,
        dur.as_millis()
    );
    println!("host: MockVmbusHost::spawn() (own thread); guest: this thread");
    // Host and guest (and the bare loop's two threads) poll: the timings are best with two
    // idle cores. Say how busy the machine was.
    println!(
        "cores: {}, load average before: {}\n",
        std::thread::available_parallelism().map_or(0, |n| n.get()),
        load_average()
    );
    println!(
        "{:<5} {:>3} {:<22} {:>10} {:>7} {:>7} {:>8} {:>8} {:>8} {:>7} {:>6}",
        "mode",
        "QD",
        "variant",
        "IOPS",
        "x raw",
        "x bare",
        "g>h/IO",
        "h>g/IO",
        "wake/IO",
        "sleeps",
        "stalls"
    );
    let total = Instant::now();
    for mode in [Mode::Poll, Mode::Intr] {
        for depth in [1usize, 32] {
            let mut runs: Vec<Vec<Run>> = vec![Vec::new(); VARIANTS.len()];
            for round in 0..rounds {
                for k in 0..VARIANTS.len() {
                    let i = (k + round) % VARIANTS.len();
                    runs[i].push(VARIANTS[i].run(mode, depth, dur));
                }
            }
            print_group(mode, depth, &runs);
        }
    }
    println!(
        "x raw, x bare = median of per-round ratios to the raw ring of the same direction / the\n\
         bare loop (same mode, depth);\n\
         g>h/IO, h>g/IO = guest->host and host->guest signals per I/O counted by the mock host\n\
         (all channels); wake/IO = their sum; sleeps = times the host thread slept after its\n\
         spin window without work; stalls = lost wakeups recovered by making the mock host read\n\
         its rings.\n"
    );
    println!(
        "load average after: {} (both sides poll, yielding their core while idle; other load\n\
         still stretches the rates, the ratios less so)\n",
        load_average()
    );
    if !quick {
        print_insns();
    }
    println!("total runtime {:.1} s", total.elapsed().as_secs_f64());
}
