//! `cargo run -p test-harness --bin demo [-- --host NAME] [--screenshot-dir DIR]
//! [--no-linux] [--serve]` (`--help` lists the hosts)
//!
//! Boots a simulated Hyper-V VM on the mock hypervisor and narrates what the guest does; the
//! host saves screenshots of the guest's screen in DIR (default: the current directory). As
//! root (with `ip`, `dnsmasq`, `ping`) the guest's NIC reaches the Linux network stack through
//! a TAP in a network namespace of the demo's own; `--serve` then keeps the VM running,
//! serving a status page, until Ctrl-C.

use std::io::IsTerminal;
use std::path::PathBuf;
use std::process::ExitCode;

use test_harness::demo::{
    DemoOptions, HOST_NAMES, NetworkOptions, STATUS_PNG, TYPED_PNG, parse_host, run,
};

fn main() -> ExitCode {
    let mut host = parse_host("ws2022").expect("the default host name parses");
    let mut screenshot_dir = PathBuf::from(".");
    let mut network = NetworkOptions {
        real_peers: true,
        serve: false,
    };
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        match arg.as_str() {
            "--host" => match args.next().as_deref().and_then(parse_host) {
                Some(h) => host = h,
                None => {
                    eprintln!("--host takes one of:");
                    for (name, what) in HOST_NAMES {
                        eprintln!("  {name:<11} {what}");
                    }
                    return ExitCode::from(2);
                }
            },
            "--screenshot-dir" => match args.next() {
                Some(dir) => screenshot_dir = PathBuf::from(dir),
                None => {
                    eprintln!("--screenshot-dir takes a directory");
                    return ExitCode::from(2);
                }
            },
            "--no-linux" => network.real_peers = false,
            "--serve" => {
                if let Err(why) = test_harness::network::tap::real_peer_check(&["dnsmasq"]) {
                    eprintln!("--serve needs the Linux peer: {why}");
                    return ExitCode::from(2);
                }
                network.serve = true;
            }
            "-h" | "--help" => {
                println!(
                    "usage: demo [--host NAME] [--screenshot-dir DIR] [--no-linux] [--serve]\n\n\
                     The host saves {STATUS_PNG} and {TYPED_PNG} in DIR (default: the current \
                     directory).\n\
                     As root the NIC reaches Linux through a TAP in the demo's own network \
                     namespace (--no-linux: two guests on the switch instead); --serve keeps \
                     the VM up, pingable and serving http://<guest>/ in that namespace, until \
                     Ctrl-C.\n\nNAME is one of:"
                );
                for (name, what) in HOST_NAMES {
                    println!("  {name:<11} {what}");
                }
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
        screenshot_dir,
        network,
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
