//! Instructions per I/O, guest and host side, from callgrind: the benchmark runs itself under
//! `valgrind --tool=callgrind` in a deterministic single-threaded form (a guest turn, then a
//! host step) for a fixed number of I/Os, collecting only inside `insns_guest_turn` (the
//! guest: driver, bus, ring and the mock hypervisor's hypercalls) or only inside
//! `insns_host_step` (the mock host and its device model). Two I/O counts are run and the
//! difference divided by the extra I/Os, so setup, ramp-up and the final drain cancel out.
//! `perf stat` counters are not available in this VM kind, hence callgrind. Without valgrind
//! the counts are skipped (said in the output).

use std::process::{Command, Stdio};

use crate::bare;
use crate::rig::{Mode, Stop, run_raw, run_storvsc};

/// The environment variable that makes the benchmark binary the measured child:
/// `variant,depth,ios`.
pub const CHILD_ENV: &str = "STORVSC_BENCH_INSNS_RUN";
const SHORT: u64 = 1_000;
const LONG: u64 = 3_000;

/// What the instruction counts measure.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Subject {
    Bare,
    RawRead,
    RawWrite,
    Read,
    Write,
}

impl Subject {
    pub const ALL: [Subject; 5] = [
        Self::Bare,
        Self::RawRead,
        Self::RawWrite,
        Self::Read,
        Self::Write,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Self::Bare => "bare loop",
            Self::RawRead => "raw ring read  (echo)",
            Self::RawWrite => "raw ring write (echo)",
            Self::Read => "storvsc read  1ch",
            Self::Write => "storvsc write 1ch",
        }
    }

    fn key(self) -> &'static str {
        match self {
            Self::Bare => "bare",
            Self::RawRead => "rawread",
            Self::RawWrite => "rawwrite",
            Self::Read => "read",
            Self::Write => "write",
        }
    }

    fn from_key(k: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|s| s.key() == k)
    }
}

/// Which side's instructions are collected.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Side {
    Guest,
    Host,
}

/// Runs `subject` at `depth` for `ios` I/Os, deterministic and single-threaded.
fn run(subject: Subject, depth: usize, ios: u64) -> u64 {
    // Interrupt mode: the host reads a ring when signalled, as Hyper-V does; the guest
    // drains the channels its interrupt names.
    let stop = Stop::Ios(ios);
    match subject {
        Subject::Bare => bare::run_stepped(depth, ios),
        Subject::RawRead => run_raw(Mode::Intr, false, depth, stop, false).ops,
        Subject::RawWrite => run_raw(Mode::Intr, true, depth, stop, false).ops,
        Subject::Read => run_storvsc(Mode::Intr, false, 1, depth, stop, false).ops,
        Subject::Write => run_storvsc(Mode::Intr, true, 1, depth, stop, false).ops,
    }
}

/// The child's entry point when [`CHILD_ENV`] is set; returns the process exit code.
pub fn child(spec: &str) -> i32 {
    let mut it = spec.split(',');
    let subject = it.next().and_then(Subject::from_key);
    let depth = it.next().and_then(|d| d.parse().ok());
    let ios = it.next().and_then(|n| n.parse().ok());
    let (Some(subject), Some(depth), Some(ios)) = (subject, depth, ios) else {
        eprintln!("bad {CHILD_ENV}={spec}");
        return 2;
    };
    println!("{} I/Os", run(subject, depth, ios));
    0
}

/// Whether valgrind can be run.
pub fn available() -> bool {
    Command::new("valgrind")
        .arg("--version")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

/// Instructions collected in one callgrind run of `ios` I/Os.
fn callgrind(subject: Subject, depth: usize, ios: u64, side: Side) -> Option<u64> {
    let exe = std::env::current_exe().ok()?;
    let out = std::env::temp_dir().join(format!(
        "storvsc-bench-{}-{}-{depth}-{ios}-{side:?}.callgrind",
        std::process::id(),
        subject.key()
    ));
    let toggle = match side {
        Side::Guest => "--toggle-collect=*insns_guest_turn*",
        Side::Host => "--toggle-collect=*insns_host_step*",
    };
    let status = Command::new("valgrind")
        .arg("--tool=callgrind")
        .arg("--collect-atstart=no")
        .arg(toggle)
        .arg(format!("--callgrind-out-file={}", out.display()))
        .arg(&exe)
        .env(CHILD_ENV, format!("{},{depth},{ios}", subject.key()))
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .ok()?;
    let text = std::fs::read_to_string(&out).ok();
    let _ = std::fs::remove_file(&out);
    if !status.success() {
        return None;
    }
    text?
        .lines()
        .find_map(|l| l.strip_prefix("summary:"))
        .and_then(|n| n.trim().parse().ok())
}

/// Instructions per I/O of `side` for `subject` at `depth`: (I(LONG) − I(SHORT)) / (LONG −
/// SHORT).
pub fn per_io(subject: Subject, depth: usize, side: Side) -> Option<f64> {
    let a = callgrind(subject, depth, SHORT, side)?;
    let b = callgrind(subject, depth, LONG, side)?;
    Some(b.saturating_sub(a) as f64 / (LONG - SHORT) as f64)
}

/// The footnote that says how the counts were made.
pub fn footnote() -> String {
    format!(
        "insn/IO = instructions per I/O from callgrind on a deterministic single-threaded loop\n\
         (guest turn, then host step; interrupt mode): (I({LONG}) - I({SHORT})) / {}",
        LONG - SHORT
    )
}
