//! Build script of `porthole` and `porthole-relay` (both packages name this file): how a
//! release binary is linked, so that a running process keeps few pages of it in memory
//! (docs/internals.md, "Code layout").
//!
//! - **Function order.** The functions listed in the package's `link-order.txt` go
//!   first, in that order. `scripts/link-order.sh` makes the list from what the binary
//!   executes in everyday use, so the code a process touches sits together at the start
//!   of `.text` instead of spread over all of it: the kernel maps code 64 KiB or more
//!   around each page first executed, so spread code costs resident memory. Names the
//!   binary no longer has (after a toolchain or dependency update) are skipped without
//!   a warning, and the layout falls back towards the linker's default.
//! - **Packed relocations** (`-z pack-relative-relocs`, glibc 2.36+): the dynamic
//!   loader reads every relocation of a position-independent binary at start; packed,
//!   they take a few KiB instead of over 400.
//!
//! Both only where the linker is LLD: rustc links `x86_64-unknown-linux-gnu` with its
//! own LLD since 1.90, unless a linker is configured. `PORTHOLE_RELEASE_LINK=0` turns
//! both off.

use std::env;
use std::path::Path;
use std::process::Command;

fn main() {
    let dir = env::var("CARGO_MANIFEST_DIR").expect("cargo sets CARGO_MANIFEST_DIR");
    let order = Path::new(&dir).join("link-order.txt");
    println!("cargo:rerun-if-changed={}", order.display());
    println!("cargo:rerun-if-env-changed=PORTHOLE_RELEASE_LINK");
    if env::var("PORTHOLE_RELEASE_LINK").as_deref() == Ok("0")
        || env::var("PROFILE").as_deref() != Ok("release")
        || !links_with_lld()
    {
        return;
    }
    if order.is_file() {
        println!(
            "cargo:rustc-link-arg-bins=-Wl,--symbol-ordering-file={}",
            order.display()
        );
        println!("cargo:rustc-link-arg-bins=-Wl,--no-warn-symbol-ordering");
    }
    // The binary then needs glibc 2.36 to start; only when this machine's has it.
    if version(Command::new("getconf").arg("GNU_LIBC_VERSION"), 1) >= Some((2, 36)) {
        println!("cargo:rustc-link-arg-bins=-Wl,-z,pack-relative-relocs");
    }
}

/// Whether rustc links this build with its bundled LLD: the target and version where
/// that is the default, and no linker or linker flavour chosen by configuration.
fn links_with_lld() -> bool {
    let native = env::var("TARGET").ok() == env::var("HOST").ok();
    if env::var("TARGET").as_deref() != Ok("x86_64-unknown-linux-gnu")
        || !native
        || env::var_os("RUSTC_LINKER").is_some()
    {
        return false;
    }
    let flags = env::var("CARGO_ENCODED_RUSTFLAGS").unwrap_or_default();
    if ["linker", "fuse-ld", "link-self-contained"]
        .iter()
        .any(|f| flags.contains(f))
    {
        return false;
    }
    let rustc = env::var("RUSTC").unwrap_or_else(|_| "rustc".into());
    // "rustc 1.95.0 (…)": LLD is the default from 1.90.
    version(Command::new(rustc).arg("--version"), 1) >= Some((1, 90))
}

/// MAJOR.MINOR of the `word`th word a command prints ("glibc 2.36", "rustc 1.95.0 …").
fn version(cmd: &mut Command, word: usize) -> Option<(u32, u32)> {
    let out = cmd.output().ok().filter(|o| o.status.success())?;
    let text = String::from_utf8_lossy(&out.stdout);
    let mut parts = text.split_whitespace().nth(word)?.split('.');
    Some((parts.next()?.parse().ok()?, parts.next()?.parse().ok()?))
}
