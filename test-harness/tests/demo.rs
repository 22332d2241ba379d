//! The demo run as a test: on every emulated Hyper-V host it must succeed at every step and
//! leave two screenshots of the guest's screen, and elsewhere it must say why it stops.

use std::path::{Path, PathBuf};

use test_harness::demo::{
    DemoOptions, NetworkOptions, STATUS_PNG, StepResult, TYPED_LINE, TYPED_PNG, parse_host, run,
};
use test_harness::video::Screen;

/// The directory for one run's screenshots (under the target directory, not the repo).
fn screenshot_dir_of(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_TARGET_TMPDIR"))
        .join("demo-screenshots")
        .join(name)
}

/// [`screenshot_dir_of`], emptied.
fn screenshot_dir(name: &str) -> PathBuf {
    let dir = screenshot_dir_of(name);
    let _ = std::fs::remove_dir_all(&dir);
    dir
}

fn demo_in(host: &str, screenshot_dir: &Path) -> (Vec<StepResult>, String) {
    demo_with(host, screenshot_dir, NetworkOptions::default())
}

fn demo_with(
    host: &str,
    screenshot_dir: &Path,
    network: NetworkOptions,
) -> (Vec<StepResult>, String) {
    let mut out = Vec::new();
    let host = parse_host(host).expect("known host name");
    let steps = run(
        DemoOptions {
            host,
            colour: false,
            screenshot_dir: screenshot_dir.to_path_buf(),
            network,
        },
        &mut out,
    )
    .unwrap();
    (steps, String::from_utf8(out).unwrap())
}

fn demo(host: &str) -> (Vec<StepResult>, String) {
    demo_in(host, &screenshot_dir(host))
}

/// The screen's size on every emulated release (the 3.5 default and the fallback mode).
const SCREEN: (u32, u32) = (1024, 768);

/// Reads a screenshot, which must be a PNG of the screen's size.
fn screenshot(path: &Path) -> Screen {
    let bytes = std::fs::read(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    assert!(
        bytes.starts_with(b"\x89PNG\r\n\x1a\n"),
        "{} is not a PNG",
        path.display()
    );
    let screen = Screen::read_png(path)
        .unwrap_or_else(|e| panic!("{} does not decode: {e}", path.display()));
    assert_eq!((screen.width, screen.height), SCREEN, "{}", path.display());
    screen
}

/// The pixel position in "left click at (x, y)".
fn click_position(detail: &str) -> (u32, u32) {
    let rest = detail
        .split("click at (")
        .nth(1)
        .unwrap_or_else(|| panic!("no click position in {detail:?}"));
    let (x, rest) = rest.split_once(", ").unwrap();
    let (y, _) = rest.split_once(')').unwrap();
    (x.parse().unwrap(), y.parse().unwrap())
}

const STEPS: [&str; 22] = [
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
    "network adapter",
    "IPv4 address",
    "ping",
    "KVP IPv4 address",
    "screen",
    "keyboard",
    "mouse",
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
        assert!(text.contains("22 of 22 steps succeeded"));
        assert!(
            text.contains("GUEST.TXT written and read back"),
            "{host}:\n{text}"
        );
        assert!(!text.contains('\x1b'), "no colour when asked for none");

        // The host's keystrokes came back as the same text.
        let step = |name: &str| steps.iter().find(|s| s.step == name).unwrap();
        assert!(
            step("keyboard")
                .detail
                .contains(&format!("decoded \"{TYPED_LINE}\"")),
            "{host}:\n{text}"
        );
        // Both screenshots are where the demo said, PNGs of the screen's size.
        let dir = std::path::absolute(screenshot_dir_of(host)).unwrap();
        let (status, typed) = (dir.join(STATUS_PNG), dir.join(TYPED_PNG));
        assert!(
            text.contains(&status.display().to_string())
                && text.contains(&typed.display().to_string()),
            "{host}: the narration names both screenshots\n{text}"
        );
        let (status, typed) = (screenshot(&status), screenshot(&typed));
        assert_ne!(status, typed, "{host}: input changed the screen");
        // The guest's pointer (black outline, hot spot at the tip) sits where the host clicked,
        // on the host's view of the screen.
        let (x, y) = click_position(&step("mouse").detail);
        assert_eq!(typed.pixel(x, y), 0, "{host}: no pointer at ({x}, {y})");
        assert_ne!(
            status.pixel(x, y),
            0,
            "{host}: ({x}, {y}) was already black"
        );
    }
}

/// Without the Linux peer (the default in these tests, deterministic): a second guest stands
/// in, says why, and the host reads the guest's static address through KVP.
#[test]
fn demo_network_between_two_guests_says_why() {
    let (steps, text) = demo("ws2016");
    let step = |name: &str| steps.iter().find(|s| s.step == name).unwrap().clone();
    assert!(
        step("network adapter")
            .detail
            .contains("NVSP 6.1 / NDIS 6.30"),
        "{text}"
    );
    assert!(text.contains("00:15:5D:00:07:01, MTU 1500"), "{text}");
    assert!(
        text.contains(
            "checksum on transmit TCPv4 UDPv4 TCPv6 UDPv6, on receive IPv4 header TCPv4 UDPv4 \
             TCPv6 UDPv6"
        ),
        "{text}"
    );
    assert!(step("IPv4 address").detail.contains("static 192.0.2.10/24"));
    assert!(
        step("ping").detail.contains("between two guests") && text.contains("no Linux peer ("),
        "{text}"
    );
    assert_eq!(
        step("KVP IPv4 address").detail,
        "host sees 192.0.2.10 (static)"
    );
    assert!(text.contains("GET_IP_INFO 00:15:5D:00:07:01: 192.0.2.10 / 255.255.255.0"));
}

/// With root, `ip`, `dnsmasq` and `ping`: the switch's uplink is a TAP to Linux; the guest
/// leases its address from dnsmasq, pings Linux and is pinged; KVP reports the lease.
#[test]
fn demo_network_with_the_linux_stack() {
    if !test_harness::real_peers::available(
        "demo network with Linux",
        test_harness::network::tap::real_peer_check(&["dnsmasq", "ping"]),
        "run as root with `apt-get install iproute2 iputils-ping dnsmasq`",
    ) {
        return;
    }
    let network = NetworkOptions {
        real_peers: true,
        serve: false,
    };
    let (steps, text) = demo_with("ws2022", &screenshot_dir("linux-peer"), network);
    assert!(steps.iter().all(|s| s.ok), "{text}");
    let step = |name: &str| steps.iter().find(|s| s.step == name).unwrap().clone();
    let lease = step("IPv4 address").detail;
    assert!(lease.starts_with("DHCP lease 192.0.2.1"), "{text}");
    assert!(lease.ends_with("from dnsmasq (3600 s)"), "{text}");
    assert!(step("ping").detail.contains("3 of 3 replies"), "{text}");
    let address = lease
        .trim_start_matches("DHCP lease ")
        .split('/')
        .next()
        .unwrap()
        .to_string();
    assert_eq!(
        step("KVP IPv4 address").detail,
        format!("host sees {address} (the DHCP lease)")
    );
}

/// The README shows the status screen of the default host from `docs/screenshot.png`: it must
/// be what the demo draws now (`UPDATE_GOLDEN=1` rewrites it).
#[test]
fn readme_screenshot_is_current() {
    let dir = screenshot_dir("readme");
    let (steps, text) = demo_in("ws2022", &dir);
    assert!(steps.iter().all(|s| s.ok), "{text}");
    let fresh = dir.join(STATUS_PNG);
    let docs = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../docs/screenshot.png");
    if std::env::var_os("UPDATE_GOLDEN").is_some() {
        std::fs::copy(&fresh, &docs).unwrap();
    }
    let (now, shown) = (screenshot(&fresh), screenshot(&docs));
    let differ = now
        .pixels
        .iter()
        .zip(&shown.pixels)
        .filter(|(a, b)| a != b)
        .count();
    assert_eq!(
        differ,
        0,
        "{differ} pixels of docs/screenshot.png differ from {}: regenerate it with \
         UPDATE_GOLDEN=1 cargo test -p test-harness --test demo",
        fresh.display()
    );
}

#[test]
fn demo_explains_a_machine_that_is_not_hyperv() {
    let (steps, text) = demo("not-hyperv");
    assert_eq!(steps.len(), 1);
    assert!(
        !screenshot_dir_of("not-hyperv").exists(),
        "no screen, no screenshots"
    );
    assert!(!steps[0].ok);
    assert!(
        text.contains("does not implement the Hyper-V interface"),
        "{text}"
    );
    let (steps, text) = demo("bare-metal");
    assert_eq!(steps.len(), 1);
    assert!(text.contains("not running under a hypervisor"), "{text}");
}
