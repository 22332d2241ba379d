//! The demo run as a test: on every emulated Hyper-V host it must succeed at every step, and
//! elsewhere it must say why it stops.

use test_harness::demo::{DemoOptions, StepResult, parse_host, run};

fn demo(host: &str) -> (Vec<StepResult>, String) {
    let mut out = Vec::new();
    let host = parse_host(host).expect("known host name");
    let steps = run(
        DemoOptions {
            host,
            colour: false,
        },
        &mut out,
    )
    .unwrap();
    (steps, String::from_utf8(out).unwrap())
}

const STEPS: [&str; 15] = [
    "detect Hyper-V",
    "bring-up",
    "reference clock",
    "synthetic timer",
    "VMBus connect",
    "offer table",
    "IC negotiation",
    "heartbeat",
    "KVP exchange",
    "time sync",
    "disk",
    "host checks the image",
    "all devices at once",
    "rescind mid-I/O",
    "shutdown honoured",
];

#[test]
fn demo_succeeds_on_every_hyperv_host() {
    for (host, version) in [
        ("ws2008r2", "1.1"),
        ("ws2012", "2.4"),
        ("ws2012r2", "3.0"),
        ("ws2016", "4.0"),
        ("ws2019", "5.2"),
        ("ws2022", "5.3"),
        ("copper", "6.0"),
    ] {
        let (steps, text) = demo(host);
        let names: Vec<_> = steps.iter().map(|s| s.step).collect();
        assert_eq!(names, STEPS, "{host}:\n{text}");
        assert!(steps.iter().all(|s| s.ok), "{host}:\n{text}");
        assert!(
            text.contains(&format!("agreed on {version}")),
            "{host}:\n{text}"
        );
        assert!(
            text.contains("OSName"),
            "{host}: the host read the guest's OS name"
        );
        assert!(text.contains("15 of 15 steps succeeded"));
        assert!(
            text.contains("GUEST.TXT written and read back"),
            "{host}:\n{text}"
        );
        assert!(!text.contains('\x1b'), "no colour when asked for none");
    }
}

#[test]
fn demo_explains_a_machine_that_is_not_hyperv() {
    let (steps, text) = demo("not-hyperv");
    assert_eq!(steps.len(), 1);
    assert!(!steps[0].ok);
    assert!(
        text.contains("does not implement the Hyper-V interface"),
        "{text}"
    );
    let (steps, text) = demo("bare-metal");
    assert_eq!(steps.len(), 1);
    assert!(text.contains("not running under a hypervisor"), "{text}");
}
