//! `cargo run -p test-harness --bin demo [-- --host ws2016|ws2022|not-hyperv|bare-metal]`
//!
//! Boots a simulated Hyper-V VM on the mock hypervisor and narrates what the guest does.

use std::io::IsTerminal;
use std::process::ExitCode;

use test_harness::demo::{DemoOptions, parse_host, run};
use test_harness::hv::HostPreset;

fn main() -> ExitCode {
    let mut host = HostPreset::Ws2022;
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        match arg.as_str() {
            "--host" => match args.next().as_deref().and_then(parse_host) {
                Some(h) => host = h,
                None => {
                    eprintln!("--host takes ws2016, ws2022, not-hyperv or bare-metal");
                    return ExitCode::from(2);
                }
            },
            "-h" | "--help" => {
                println!("usage: demo [--host ws2016|ws2022|not-hyperv|bare-metal]");
                return ExitCode::SUCCESS;
            }
            other => {
                eprintln!("unknown argument {other:?} (try --help)");
                return ExitCode::from(2);
            }
        }
    }
    let options = DemoOptions {
        host,
        colour: std::io::stdout().is_terminal(),
    };
    match run(options, &mut std::io::stdout().lock()) {
        Ok(steps) if steps.iter().all(|s| s.ok) => ExitCode::SUCCESS,
        Ok(_) => ExitCode::FAILURE,
        Err(e) => {
            eprintln!("demo: {e}");
            ExitCode::FAILURE
        }
    }
}
