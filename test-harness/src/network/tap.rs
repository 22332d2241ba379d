//! The Linux kernel as a real peer on the virtual switch: a network namespace the test owns
//! (deleted again on drop, also when the test panics), a TAP device inside it, a switch port
//! bridged to that TAP, and helper processes (`dnsmasq`, `ping`) run inside the namespace.
//!
//! Nothing touches the machine's own network: the TAP is created by a thread that entered
//! the namespace first, so it never exists outside it, and only 192.0.2.0/24 (TEST-NET-1) is
//! used. Needs root, `/dev/net/tun` and the `ip` tool; [`real_peer_check`] says whether
//! they are there.

use std::fs::File;
use std::io::{self, Read, Write};
use std::os::fd::AsRawFd;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::thread::JoinHandle;

use super::VirtualSwitch;

/// The Linux side's address on the TAP (TEST-NET-1, RFC 5737).
pub const LINUX_ADDRESS: [u8; 4] = [192, 0, 2, 1];
/// First and last address `dnsmasq` leases to guests.
pub const DHCP_RANGE: ([u8; 4], [u8; 4]) = ([192, 0, 2, 100], [192, 0, 2, 199]);

/// Whether this machine can run the real-peer network tests: root, `/dev/net/tun`, and the
/// given tools (`ip` always) in `PATH` or `/usr/sbin`. `Err` says what is missing.
pub fn real_peer_check(tools: &[&str]) -> Result<(), String> {
    // SAFETY: geteuid has no preconditions and cannot fail.
    if unsafe { libc::geteuid() } != 0 {
        return Err("not root (a network namespace and a TAP device need root)".into());
    }
    if !Path::new("/dev/net/tun").exists() {
        return Err("/dev/net/tun is missing".into());
    }
    for tool in std::iter::once(&"ip").chain(tools) {
        if find_tool(tool).is_none() {
            return Err(format!("`{tool}` is not installed"));
        }
    }
    Ok(())
}

/// The path of `tool` in `PATH`, `/usr/sbin` or `/sbin` (Debian puts `ip` and `dnsmasq` in
/// sbin, which a non-login root shell may not have in `PATH`).
pub fn find_tool(tool: &str) -> Option<std::path::PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .chain(["/usr/sbin".into(), "/sbin".into(), "/usr/bin".into()])
        .map(|d| d.join(tool))
        .find(|p| p.is_file())
}

fn tool(name: &str) -> io::Result<std::path::PathBuf> {
    find_tool(name).ok_or_else(|| io::Error::new(io::ErrorKind::NotFound, name.to_string()))
}

fn check(status: io::Result<std::process::Output>, what: &str) -> io::Result<()> {
    let out = status?;
    if out.status.success() {
        Ok(())
    } else {
        Err(io::Error::other(format!(
            "{what}: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        )))
    }
}

static NEXT_NAMESPACE: AtomicU64 = AtomicU64::new(0);

/// A network namespace created for one test; dropping it kills the processes started in it
/// and deletes it (with the TAP inside).
#[derive(Debug)]
pub struct NetNamespace {
    name: String,
    children: Mutex<Vec<Child>>,
}

impl NetNamespace {
    /// Creates `hvtest-<tag>-<pid>-<n>` with its loopback up.
    pub fn create(tag: &str) -> io::Result<Self> {
        let name = format!(
            "hvtest-{tag}-{}-{}",
            std::process::id(),
            NEXT_NAMESPACE.fetch_add(1, Ordering::Relaxed)
        );
        let ip = tool("ip")?;
        check(
            Command::new(&ip).args(["netns", "add", &name]).output(),
            "ip netns add",
        )?;
        // From here on, Drop deletes it.
        let ns = Self {
            name,
            children: Mutex::new(Vec::new()),
        };
        ns.ip(&["link", "set", "lo", "up"])?;
        Ok(ns)
    }

    /// The namespace's name (as `ip netns` lists it).
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Runs `ip -n <ns> args…` and fails if it does.
    pub fn ip(&self, args: &[&str]) -> io::Result<()> {
        check(
            Command::new(tool("ip")?)
                .args(["-n", &self.name])
                .args(args)
                .output(),
            &format!("ip {}", args.join(" ")),
        )
    }

    /// A command that runs `program` inside the namespace (`ip netns exec`).
    pub fn command(&self, program: &str) -> io::Result<Command> {
        let mut c = Command::new(tool("ip")?);
        c.args(["netns", "exec", &self.name]).arg(tool(program)?);
        Ok(c)
    }

    /// Starts `program args…` inside the namespace as a helper that lives until the
    /// namespace is dropped (stdout and stderr discarded unless `verbose`).
    pub fn spawn_helper(&self, program: &str, args: &[&str], verbose: bool) -> io::Result<()> {
        let mut c = self.command(program)?;
        c.args(args).stdin(Stdio::null());
        if !verbose {
            c.stdout(Stdio::null()).stderr(Stdio::null());
        }
        let child = c.spawn()?;
        self.children
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .push(child);
        Ok(())
    }

    /// Runs `f` on a new thread inside the namespace (sockets it opens are the namespace's);
    /// the thread's result is `Err` if it could not enter.
    pub fn run<R: Send + 'static>(
        &self,
        f: impl FnOnce() -> R + Send + 'static,
    ) -> JoinHandle<io::Result<R>> {
        let path = Path::new("/run/netns").join(&self.name);
        std::thread::spawn(move || {
            enter_namespace(&path)?;
            Ok(f())
        })
    }

    /// Creates TAP device `ifname` inside the namespace, gives it `address`/24 and brings
    /// it up.
    pub fn create_tap(&self, ifname: &str, address: [u8; 4]) -> io::Result<TapDevice> {
        let name = ifname.to_string();
        let file = self
            .run(move || open_tap(&name))
            .join()
            .map_err(|_| io::Error::other("TAP thread panicked"))???;
        let [a, b, c, d] = address;
        self.ip(&["addr", "add", &format!("{a}.{b}.{c}.{d}/24"), "dev", ifname])?;
        self.ip(&["link", "set", ifname, "up"])?;
        Ok(TapDevice {
            file,
            name: ifname.to_string(),
        })
    }
}

impl Drop for NetNamespace {
    fn drop(&mut self) {
        let mut children = self.children.lock().unwrap_or_else(PoisonError::into_inner);
        for c in children.iter_mut() {
            let _ = c.kill();
            let _ = c.wait();
        }
        if let Ok(ip) = tool("ip") {
            match Command::new(ip).args(["netns", "del", &self.name]).output() {
                Ok(o) if o.status.success() => {}
                other => eprintln!("network namespace {} not deleted: {other:?}", self.name),
            }
        }
    }
}

/// Moves the calling thread into the network namespace at `path` (a thread started for
/// that purpose: every socket it opens afterwards belongs to the namespace).
fn enter_namespace(path: &Path) -> io::Result<()> {
    let handle = File::open(path)?;
    // SAFETY: setns on a namespace descriptor we own; it changes only this thread's network
    // namespace.
    let rc = unsafe { libc::setns(handle.as_raw_fd(), libc::CLONE_NEWNET) };
    if rc != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// `struct ifreq` as TUNSETIFF reads it: the interface name, then the flags (the rest of
/// the 24-byte union unused).
#[repr(C)]
struct IfReq {
    name: [u8; 16],
    flags: libc::c_short,
    _rest: [u8; 22],
}

/// `TUNSETIFF` = `_IOW('T', 202, int)`.
const TUNSETIFF: libc::c_ulong = 0x4004_54CA;

/// Opens `/dev/net/tun` and attaches it to a new TAP `ifname` (Ethernet frames, no packet
/// information header) in the calling thread's namespace.
fn open_tap(ifname: &str) -> io::Result<File> {
    let file = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/net/tun")?;
    let mut req = IfReq {
        name: [0; 16],
        flags: (libc::IFF_TAP | libc::IFF_NO_PI) as libc::c_short,
        _rest: [0; 22],
    };
    let n = ifname.len().min(15);
    req.name[..n].copy_from_slice(&ifname.as_bytes()[..n]);
    // SAFETY: TUNSETIFF reads and writes one `struct ifreq`, which `req` is (40 bytes,
    // C layout), on a /dev/net/tun descriptor we own.
    let rc = unsafe { libc::ioctl(file.as_raw_fd(), TUNSETIFF as _, &mut req) };
    if rc != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(file)
}

/// A TAP device: reads and writes of its file are whole Ethernet frames.
#[derive(Debug)]
pub struct TapDevice {
    file: File,
    name: String,
}

impl TapDevice {
    /// The interface name inside the namespace.
    pub fn name(&self) -> &str {
        &self.name
    }
}

/// Counters of a [`TapBridge`].
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct TapStats {
    /// Frames read from the TAP (sent by Linux) and forwarded into the switch.
    pub from_linux: u64,
    /// Frames the switch delivered to the TAP (received by Linux).
    pub to_linux: u64,
    /// Frames the TAP refused (a write error; the kernel counts its own drops).
    pub write_errors: u64,
}

#[derive(Debug, Default)]
struct Counters {
    from_linux: AtomicU64,
    to_linux: AtomicU64,
    write_errors: AtomicU64,
}

/// A switch port bridged to a TAP device: frames the switch sends to the port are written
/// to the TAP at once (on the sender's thread); a thread reads the TAP and forwards what
/// Linux sends into the switch. The port is promiscuous, like a bridge's uplink.
#[derive(Debug)]
pub struct TapBridge {
    stop: Arc<AtomicBool>,
    reader: Option<JoinHandle<()>>,
    counters: Arc<Counters>,
    switch: VirtualSwitch,
    port: usize,
}

impl TapBridge {
    /// Plugs `tap` into `switch`.
    pub fn attach(tap: TapDevice, switch: &VirtualSwitch) -> io::Result<Self> {
        let file = Arc::new(tap.file);
        let counters = Arc::new(Counters::default());
        let writer = file.clone();
        let c = counters.clone();
        let port = switch.add_uplink(Box::new(move |frame: &[u8]| {
            // A TAP write takes one whole frame or fails.
            match (&*writer).write(frame) {
                Ok(n) if n == frame.len() => c.to_linux.fetch_add(1, Ordering::Relaxed),
                _ => c.write_errors.fetch_add(1, Ordering::Relaxed),
            };
        }));
        let stop = Arc::new(AtomicBool::new(false));
        let (s, c, sw) = (stop.clone(), counters.clone(), switch.clone());
        let reader = std::thread::Builder::new()
            .name(format!("tap {}", tap.name))
            .spawn(move || {
                let mut buf = vec![0u8; 65536];
                let fd = file.as_raw_fd();
                while !s.load(Ordering::Relaxed) {
                    let mut pfd = libc::pollfd {
                        fd,
                        events: libc::POLLIN,
                        revents: 0,
                    };
                    // SAFETY: one valid pollfd for a descriptor `file` keeps open.
                    let n = unsafe { libc::poll(&mut pfd, 1, 20) };
                    if n <= 0 || pfd.revents & libc::POLLIN == 0 {
                        continue;
                    }
                    match (&*file).read(&mut buf) {
                        Ok(n) if n > 0 => {
                            c.from_linux.fetch_add(1, Ordering::Relaxed);
                            sw.forward(port, &buf[..n]);
                        }
                        Ok(_) => {}
                        Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                        Err(_) => break,
                    }
                }
            })?;
        Ok(Self {
            stop,
            reader: Some(reader),
            counters,
            switch: switch.clone(),
            port,
        })
    }

    /// Counters.
    pub fn stats(&self) -> TapStats {
        TapStats {
            from_linux: self.counters.from_linux.load(Ordering::Relaxed),
            to_linux: self.counters.to_linux.load(Ordering::Relaxed),
            write_errors: self.counters.write_errors.load(Ordering::Relaxed),
        }
    }

    /// The bridge's switch port.
    pub fn port(&self) -> usize {
        self.port
    }
}

impl Drop for TapBridge {
    fn drop(&mut self) {
        self.switch.set_link(self.port, false);
        self.switch.detach_uplink(self.port);
        self.stop.store(true, Ordering::Relaxed);
        if let Some(r) = self.reader.take() {
            let _ = r.join();
        }
    }
}

/// Starts `dnsmasq` in `ns` as the DHCP server on `ifname` for [`DHCP_RANGE`] (no DNS, no
/// lease file, no ping probe before an offer); it is stopped with the namespace.
pub fn start_dhcp_server(ns: &NetNamespace, ifname: &str, verbose: bool) -> io::Result<()> {
    let ([a, b, c, d], [_, _, _, e]) = DHCP_RANGE;
    let range = format!("--dhcp-range={a}.{b}.{c}.{d},{a}.{b}.{c}.{e},255.255.255.0,1h");
    let interface = format!("--interface={ifname}");
    ns.spawn_helper(
        "dnsmasq",
        &[
            "--keep-in-foreground",
            "--no-daemon",
            "--bind-interfaces",
            "--except-interface=lo",
            &interface,
            &range,
            "--port=0",
            "--no-resolv",
            "--no-hosts",
            "--no-ping",
            "--leasefile-ro",
            "--log-dhcp",
        ],
        verbose,
    )
}
