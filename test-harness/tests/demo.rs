//! The demo run as a test: it must succeed on every Hyper-V preset and say why it stops
//! elsewhere.

use test_harness::demo::{DemoOptions, run};
use test_harness::hv::HostPreset;

fn demo(host: HostPreset) -> (Vec<test_harness::demo::StepResult>, String) {
    let mut out = Vec::new();
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

#[test]
fn demo_succeeds_on_hyperv_hosts() {
    for host in [HostPreset::Ws2016, HostPreset::Ws2022] {
        let (steps, text) = demo(host);
        let names: Vec<_> = steps.iter().map(|s| s.step).collect();
        assert_eq!(
            names,
            [
                "detect Hyper-V",
                "bring-up",
                "reference clock",
                "synthetic timer"
            ],
            "{text}"
        );
        assert!(steps.iter().all(|s| s.ok), "{text}");
        assert!(text.contains("Microsoft Hv"));
        assert!(text.contains("== Summary"));
        assert!(!text.contains('\x1b'), "no colour when asked for none");
    }
}

#[test]
fn demo_explains_a_machine_that_is_not_hyperv() {
    let (steps, text) = demo(HostPreset::NotHyperV);
    assert_eq!(steps.len(), 1);
    assert!(!steps[0].ok);
    assert!(
        text.contains("does not implement the Hyper-V interface"),
        "{text}"
    );
}
