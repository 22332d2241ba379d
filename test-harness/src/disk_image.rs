//! FAT disk images made and checked by real tools: `mkfs.fat` / `fsck.fat` (dosfstools) and
//! `mcopy` / `mmd` / `mdir` (mtools), so the guest's filesystem I/O is judged by an independent
//! implementation rather than by the code under test.
//!
//! The images are "superfloppies" with a fake MBR (`mkfs.fat --mbr=y`): the boot sector at LBA 0
//! carries both the BPB and one partition entry spanning the whole disk. embedded-sdmmc needs
//! the partition entry (it only opens MBR volumes); mtools and `fsck.fat` read the BPB at offset
//! 0 without any partition offset.
//!
//! Where dosfstools is not installed (the demo on a bare machine), [`FatImage::create`] falls
//! back to the pure-Rust [`fatfs`] crate (0.3, `std` feature only) to format and populate an
//! image of the same shape (8.3 names only: with its `alloc` feature fatfs 0.3.6 writes
//! long-name entries into the "." and ".." slots of new directories, which `fsck.fat` rejects —
//! found by this module's own test), and reports which path it took as [`BuiltWith`]. Checking ([`FatImage::fsck`])
//! and reading back ([`FatImage::read_file`], [`FatImage::list`]) always use the real tools: a
//! check by the crate that wrote the image would prove little.

use std::ffi::OsStr;
use std::fmt;
use std::fs::OpenOptions;
use std::io::{self, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

/// Which FAT variant to format.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FatKind {
    /// FAT16 (volumes from about 16 MiB to 2 GiB with the default cluster sizes).
    Fat16,
    /// FAT32 (mkfs.fat needs at least ~33 MiB with 512-byte clusters; more for larger ones).
    Fat32,
}

impl FatKind {
    fn bits(self) -> &'static str {
        match self {
            Self::Fat16 => "16",
            Self::Fat32 => "32",
        }
    }
    /// MBR partition type byte for a volume of this kind addressed by LBA.
    fn partition_type(self) -> u8 {
        match self {
            Self::Fat16 => 0x06,
            Self::Fat32 => 0x0C,
        }
    }
}

/// What to put in an image: a directory, or a file with its contents. Paths are relative to
/// the root, `/`-separated (e.g. `"SUBDIR/NESTED.TXT"`); parents must be listed first.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Entry {
    /// A directory.
    Dir(String),
    /// A file and its bytes.
    File(String, Vec<u8>),
}

impl Entry {
    /// A directory entry.
    pub fn dir(path: &str) -> Self {
        Self::Dir(path.to_owned())
    }
    /// A file entry.
    pub fn file(path: &str, data: impl Into<Vec<u8>>) -> Self {
        Self::File(path.to_owned(), data.into())
    }
}

/// How an image was made.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BuiltWith {
    /// `mkfs.fat` + `mmd` + `mcopy`.
    RealTools,
    /// The pure-Rust `fatfs` crate (dosfstools or mtools missing).
    PureRust,
}

/// A failure of an image helper.
#[derive(Debug)]
pub enum ImageError {
    /// A tool is not installed (not on `PATH`, nor in `/usr/sbin` or `/sbin`).
    ToolMissing {
        /// The program name.
        tool: &'static str,
        /// The Debian package that provides it.
        package: &'static str,
    },
    /// A tool ran and exited unsuccessfully.
    ToolFailed {
        /// The program name.
        tool: &'static str,
        /// Its arguments.
        args: Vec<String>,
        /// Its exit code (`None` if killed by a signal).
        code: Option<i32>,
        /// What it wrote to stdout (fsck.fat reports problems there).
        stdout: String,
        /// What it wrote to stderr.
        stderr: String,
    },
    /// A host I/O error (creating the image file, spawning a tool, fatfs).
    Io(io::Error),
}

impl fmt::Display for ImageError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::ToolMissing { tool, package } => write!(
                f,
                "`{tool}` is not installed (Debian package `{package}`: \
                 apt-get install -y {package})"
            ),
            Self::ToolFailed {
                tool,
                args,
                code,
                stdout,
                stderr,
            } => write!(
                f,
                "`{tool} {}` failed (exit {code:?})\nstdout:\n{stdout}\nstderr:\n{stderr}",
                args.join(" ")
            ),
            Self::Io(e) => write!(f, "I/O error: {e}"),
        }
    }
}

impl std::error::Error for ImageError {}

impl From<io::Error> for ImageError {
    fn from(e: io::Error) -> Self {
        Self::Io(e)
    }
}

/// The programs the helpers run, with their Debian packages.
pub const TOOLS: [(&str, &str); 5] = [
    ("mkfs.fat", "dosfstools"),
    ("fsck.fat", "dosfstools"),
    ("mcopy", "mtools"),
    ("mmd", "mtools"),
    ("mdir", "mtools"),
];

/// Finds `tool` on `PATH`, then in `/usr/sbin` and `/sbin` (where Debian puts dosfstools,
/// often not on a normal user's `PATH`).
pub fn find_tool(tool: &'static str) -> Result<PathBuf, ImageError> {
    let package = TOOLS
        .iter()
        .find(|(t, _)| *t == tool)
        .map_or("?", |(_, p)| p);
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .chain([PathBuf::from("/usr/sbin"), PathBuf::from("/sbin")])
        .map(|d| d.join(tool))
        .find(|p| p.is_file())
        .ok_or(ImageError::ToolMissing { tool, package })
}

/// Checks that every tool in [`TOOLS`] is installed; the first missing one is the error.
pub fn tools_available() -> Result<(), ImageError> {
    TOOLS.iter().try_for_each(|(t, _)| find_tool(t).map(drop))
}

fn run(tool: &'static str, args: &[&OsStr], stdin: Option<&[u8]>) -> Result<Output, ImageError> {
    let mut cmd = Command::new(find_tool(tool)?);
    cmd.args(args)
        // Keep mtools from reading a user's ~/.mtoolsrc and from refusing odd geometries.
        .env("MTOOLSRC", "/dev/null")
        .env("MTOOLS_SKIP_CHECK", "1")
        .stdin(if stdin.is_some() {
            Stdio::piped()
        } else {
            Stdio::null()
        })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut child = cmd.spawn()?;
    if let Some(input) = stdin {
        // Dropping the handle after the write closes the pipe so the tool sees EOF.
        child.stdin.take().expect("piped stdin").write_all(input)?;
    }
    let out = child.wait_with_output()?;
    if out.status.success() {
        Ok(out)
    } else {
        Err(ImageError::ToolFailed {
            tool,
            args: args
                .iter()
                .map(|a| a.to_string_lossy().into_owned())
                .collect(),
            code: out.status.code(),
            stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
        })
    }
}

/// mtools' name for `path` on the image: `::/PATH`.
fn mpath(path: &str) -> String {
    format!("::/{}", path.trim_start_matches('/'))
}

/// A FAT image file on the host.
#[derive(Clone, Debug)]
pub struct FatImage {
    path: PathBuf,
}

impl FatImage {
    /// An existing image at `path` (no check is made).
    pub fn open(path: impl Into<PathBuf>) -> Self {
        Self { path: path.into() }
    }

    /// The image file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Makes an image of `size_bytes` at `path` (replacing any file there) with the real tools
    /// when they are installed, else with the `fatfs` crate, and populates it with `entries`.
    pub fn create(
        path: impl Into<PathBuf>,
        size_bytes: u64,
        kind: FatKind,
        label: &str,
        entries: &[Entry],
    ) -> Result<(Self, BuiltWith), ImageError> {
        let path = path.into();
        match tools_available() {
            Ok(()) => Self::create_with_tools(path, size_bytes, kind, label, entries)
                .map(|i| (i, BuiltWith::RealTools)),
            Err(ImageError::ToolMissing { tool, .. }) => {
                log::info!("disk image: `{tool}` missing, formatting with the fatfs crate");
                Self::create_with_fatfs(path, size_bytes, kind, label, entries)
                    .map(|i| (i, BuiltWith::PureRust))
            }
            Err(e) => Err(e),
        }
    }

    /// `mkfs.fat -C -F <bits> --mbr=y -n <label>`, then `mmd` for directories and `mcopy` (from
    /// stdin) for files. `size_bytes` is rounded down to whole KiB (mkfs.fat's unit).
    pub fn create_with_tools(
        path: impl Into<PathBuf>,
        size_bytes: u64,
        kind: FatKind,
        label: &str,
        entries: &[Entry],
    ) -> Result<Self, ImageError> {
        let path = path.into();
        match std::fs::remove_file(&path) {
            Err(e) if e.kind() != io::ErrorKind::NotFound => return Err(e.into()),
            _ => {}
        }
        let kib = (size_bytes / 1024).to_string();
        run(
            "mkfs.fat",
            &[
                "-C".as_ref(),
                "-F".as_ref(),
                kind.bits().as_ref(),
                "--mbr=y".as_ref(),
                "-n".as_ref(),
                label.as_ref(),
                path.as_os_str(),
                kib.as_ref(),
            ],
            None,
        )?;
        let image = Self { path };
        for e in entries {
            image.add(e)?;
        }
        Ok(image)
    }

    /// Adds one entry with mtools (`mmd` / `mcopy -o` from stdin).
    pub fn add(&self, entry: &Entry) -> Result<(), ImageError> {
        match entry {
            Entry::Dir(d) => {
                let target = mpath(d);
                run(
                    "mmd",
                    &["-i".as_ref(), self.path.as_os_str(), target.as_ref()],
                    None,
                )?;
            }
            Entry::File(f, data) => {
                let target = mpath(f);
                run(
                    "mcopy",
                    &[
                        "-o".as_ref(),
                        "-i".as_ref(),
                        self.path.as_os_str(),
                        "-".as_ref(),
                        target.as_ref(),
                    ],
                    Some(data),
                )?;
            }
        }
        Ok(())
    }

    /// The pure-Rust path: `fatfs::format_volume` on a zero-filled file, the entries created
    /// through `fatfs`, then the same fake-MBR partition entry `mkfs.fat --mbr=y` writes.
    pub fn create_with_fatfs(
        path: impl Into<PathBuf>,
        size_bytes: u64,
        kind: FatKind,
        label: &str,
        entries: &[Entry],
    ) -> Result<Self, ImageError> {
        let path = path.into();
        let size = size_bytes / 512 * 512;
        let sectors = u32::try_from(size / 512)
            .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "image too large"))?;
        let mut file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(true)
            .open(&path)?;
        file.set_len(size)?;
        let mut vol_label = [b' '; 11];
        for (d, s) in vol_label.iter_mut().zip(label.bytes()) {
            *d = s.to_ascii_uppercase();
        }
        let fat_type = match kind {
            FatKind::Fat16 => fatfs::FatType::Fat16,
            FatKind::Fat32 => fatfs::FatType::Fat32,
        };
        fatfs::format_volume(
            &mut file,
            fatfs::FormatVolumeOptions::new()
                .fat_type(fat_type)
                .volume_label(vol_label),
        )?;
        file.seek(SeekFrom::Start(0))?;
        {
            let fs = fatfs::FileSystem::new(&mut file, fatfs::FsOptions::new())?;
            for e in entries {
                let root = fs.root_dir();
                match e {
                    Entry::Dir(d) => {
                        root.create_dir(d)?;
                    }
                    Entry::File(f, data) => {
                        let mut out = root.create_file(f)?;
                        out.truncate()?;
                        out.write_all(data)?;
                        out.flush()?;
                    }
                }
            }
            fs.unmount()?;
        }
        // Partition entry 1 at 0x1BE: active, CHS ignored, type, LBA start 0, length = disk.
        let mut part = [0u8; 16];
        part[0] = 0x80;
        part[4] = kind.partition_type();
        part[12..16].copy_from_slice(&sectors.to_le_bytes());
        file.seek(SeekFrom::Start(0x1BE))?;
        file.write_all(&part)?;
        file.sync_all()?;
        Ok(Self { path })
    }

    /// `fsck.fat -n` (check only, never repair): `Ok(report)` when it exits 0 (clean), else
    /// [`ImageError::ToolFailed`] with its findings.
    pub fn fsck(&self) -> Result<String, ImageError> {
        let out = run(
            "fsck.fat",
            &["-n".as_ref(), "-v".as_ref(), self.path.as_os_str()],
            None,
        )?;
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }

    /// The exact bytes of `path` on the image (`mcopy -n -i image ::/path -`, no text
    /// conversion).
    pub fn read_file(&self, path: &str) -> Result<Vec<u8>, ImageError> {
        let source = mpath(path);
        let out = run(
            "mcopy",
            &[
                "-n".as_ref(),
                "-i".as_ref(),
                self.path.as_os_str(),
                source.as_ref(),
                "-".as_ref(),
            ],
            None,
        )?;
        Ok(out.stdout)
    }

    /// Every entry under `dir`, recursively (`mdir -/ -b`): paths relative to the root without
    /// the leading `::/`, directories with a trailing `/`.
    pub fn list(&self, dir: &str) -> Result<Vec<String>, ImageError> {
        let target = mpath(dir);
        let out = run(
            "mdir",
            &[
                "-/".as_ref(),
                "-b".as_ref(),
                "-i".as_ref(),
                self.path.as_os_str(),
                target.as_ref(),
            ],
            None,
        )?;
        Ok(String::from_utf8_lossy(&out.stdout)
            .lines()
            .map(|l| l.trim_start_matches("::/").to_owned())
            .filter(|l| !l.is_empty())
            .collect())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tmp(name: &str) -> PathBuf {
        std::env::temp_dir().join(format!("hv-disk-image-{}-{name}", std::process::id()))
    }

    /// The fallback's output must satisfy the real checker too (when it is installed).
    #[test]
    fn the_fatfs_image_is_clean_and_readable_by_mtools() {
        let path = tmp("fatfs.img");
        let img = FatImage::create_with_fatfs(
            &path,
            16 << 20,
            FatKind::Fat16,
            "FALLBACK",
            &[
                Entry::dir("SUB"),
                Entry::file("A.TXT", b"alpha\n".to_vec()),
                Entry::file("SUB/B.BIN", vec![7u8; 5000]),
            ],
        )
        .unwrap();
        let mbr = std::fs::read(&path).unwrap();
        assert_eq!(mbr[0x1BE], 0x80);
        assert_eq!(mbr[0x1C2], 0x06);
        assert_eq!(&mbr[510..512], &[0x55, 0xAA]);
        match tools_available() {
            Ok(()) => {
                img.fsck().unwrap();
                assert_eq!(img.read_file("A.TXT").unwrap(), b"alpha\n");
                assert_eq!(img.read_file("SUB/B.BIN").unwrap(), vec![7u8; 5000]);
            }
            Err(e) => eprintln!("skipping the real-tool check: {e}"),
        }
        std::fs::remove_file(&path).unwrap();
    }

    /// The fsck check is not vacuous: a cluster marked used in the FAT but owned by no file
    /// (what a guest that crashed mid-write leaves) makes it fail with its findings.
    #[test]
    fn fsck_reports_a_damaged_image() {
        if let Err(e) = tools_available() {
            eprintln!("skipping: {e}");
            return;
        }
        let path = tmp("damaged.img");
        let img =
            FatImage::create_with_tools(&path, 16 << 20, FatKind::Fat16, "DAMAGED", &[]).unwrap();
        img.fsck().unwrap();
        // FAT16 entry for cluster 100 in both FAT copies: end of chain, owned by nobody.
        let boot = std::fs::read(&path).unwrap();
        let reserved = u64::from(u16::from_le_bytes([boot[14], boot[15]])) * 512;
        let fat_bytes = u64::from(u16::from_le_bytes([boot[22], boot[23]])) * 512;
        let mut f = OpenOptions::new().write(true).open(&path).unwrap();
        for copy in 0..2 {
            f.seek(SeekFrom::Start(reserved + copy * fat_bytes + 200))
                .unwrap();
            f.write_all(&[0xFF, 0xFF]).unwrap();
        }
        drop(f);
        match img.fsck() {
            Err(ImageError::ToolFailed { tool, stdout, .. }) => {
                assert_eq!(tool, "fsck.fat");
                assert!(stdout.contains("unused cluster"), "{stdout}");
            }
            other => panic!("fsck.fat accepted a damaged image: {other:?}"),
        }
        std::fs::remove_file(&path).unwrap();
    }
}
