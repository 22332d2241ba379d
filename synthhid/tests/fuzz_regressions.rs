//! Regression tests for bugs the synthhid fuzz target (`fuzz/fuzz_targets/synthhid.rs`)
//! found, each replaying the minimized input's scenario through the public API.

use synthhid::parse_descriptor;

/// Buttons (or a wheel) found in one report were kept when X and Y turned out to be in
/// another: `decode` then looked for them in X/Y's reports, past their end, and refused every
/// report — the mouse delivered nothing. Fuzz input: a descriptor with buttons in report 0 and
/// X/Y in report 1.
#[test]
fn buttons_of_another_report_than_x_and_y_are_dropped() {
    let d = [
        0x05, 0x01, 0x09, 0x02, 0xA1, 0x01, 0x09, 0x01, 0xA1, 0x00, //
        0x75, 0x08, 0x95, 0x06, 0x81, 0x01, // report 0: 48 constant bits
        0x05, 0x09, 0x19, 0x01, 0x29, 0x03, 0x15, 0x00, 0x25, 0x01, 0x95, 0x03, 0x75, 0x01, 0x81,
        0x02, // report 0: 3 buttons at bit 48
        0x95, 0x01, 0x75, 0x05, 0x81, 0x01, // padding
        0x85, 0x01, // report 1
        0x05, 0x01, 0x09, 0x30, 0x09, 0x31, 0x15, 0x00, 0x26, 0xFF, 0x7F, 0x75, 0x10, 0x95, 0x02,
        0x81, 0x02, // report 1: X, Y
        0xC0, 0xC0,
    ];
    let l = parse_descriptor(&d).unwrap();
    assert_eq!((l.report_id, l.report_bytes), (1, 4));
    assert_eq!(l.buttons, None, "the buttons are in report 0");
    let raw = l.decode(&[1, 0x34, 0x12, 0x78, 0x56]).unwrap();
    assert_eq!((raw.x, raw.y, raw.buttons), (0x1234, 0x5678, 0));
}
