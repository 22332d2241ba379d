//! The policy for tests whose peer is a real tool or a privilege (Debian's `mkfs.fat`, root
//! for a TAP device): on a machine without it the test says loudly that it skipped, so that
//! `cargo test --workspace` passes on a fresh machine; CI, which installs the tools and runs
//! as root, sets [`REQUIRE_ENV`] so that a missing peer fails instead.

/// Set to `1` to turn "skipped: no real peer" into a failure.
pub const REQUIRE_ENV: &str = "HV_REQUIRE_REAL_PEERS";

/// Whether the test may run: `available` is `Ok` when the peer is there. Otherwise prints a
/// loud skip notice with `install` (how to get the peer) and returns `false` — or panics when
/// [`REQUIRE_ENV`] is `1`.
pub fn available(test: &str, available: Result<(), String>, install: &str) -> bool {
    match available {
        Ok(()) => true,
        Err(why) if std::env::var(REQUIRE_ENV).as_deref() == Ok("1") => {
            panic!("{test}: its real peer is missing ({why}); {install} ({REQUIRE_ENV}=1)")
        }
        Err(why) => {
            // Straight to the process's stderr: the test harness captures `eprintln!` of
            // passing tests, and a skip must be seen.
            use std::io::Write;
            let _ = writeln!(
                std::io::stderr(),
                "\n*** SKIPPED {test}: {why}\n*** {install}; set {REQUIRE_ENV}=1 to make this \
                 a failure\n"
            );
            false
        }
    }
}
