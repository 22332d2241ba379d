//! Links the kernel as a freestanding static ELF: no C runtime or libc, our own linker script
//! (multiboot2 header first, loaded at 1 MiB).
fn main() {
    let dir = std::env::var("CARGO_MANIFEST_DIR").unwrap_or_else(|_| ".".into());
    println!("cargo:rerun-if-changed=linker.ld");
    println!("cargo:rustc-link-arg-bins=-nostartfiles");
    println!("cargo:rustc-link-arg-bins=-nostdlib");
    println!("cargo:rustc-link-arg-bins=-static");
    println!("cargo:rustc-link-arg-bins=-Wl,--build-id=none");
    println!("cargo:rustc-link-arg-bins=-Wl,-z,max-page-size=0x1000");
    println!("cargo:rustc-link-arg-bins=-Wl,-T,{dir}/linker.ld");
}
