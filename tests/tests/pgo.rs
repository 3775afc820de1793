//! Profile-guided release builds (docs/internals.md, "Profile-guided optimization"): the
//! committed profile is one this toolchain's rustc can read (an unreadable one only
//! draws a warning, and release builds would silently lose it), and the rustc wrapper
//! adds it to optimized builds alone.

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Command;

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("..")
        .canonicalize()
        .unwrap()
}

fn llvm_major(version_output: &str) -> Option<u32> {
    version_output
        .lines()
        .find_map(|l| l.strip_prefix("LLVM version: "))?
        .split('.')
        .next()?
        .parse()
        .ok()
}

/// Compiles a one-function crate at -O3 with `profile`; rustc's stderr.
fn compile_with(profile: &Path, dir: &Path) -> String {
    let src = dir.join("probe.rs");
    std::fs::write(&src, "pub fn f(x: u32) -> u32 { x.wrapping_mul(3) + 1 }\n").unwrap();
    let out = Command::new("rustc")
        .args([
            "--edition",
            "2021",
            "--crate-type",
            "lib",
            "-C",
            "opt-level=3",
        ])
        .arg(format!("-Cprofile-use={}", profile.display()))
        .args(["--emit", "obj", "-o"])
        .arg(dir.join("probe.o"))
        .arg(&src)
        .output()
        .expect("running rustc");
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(out.status.success(), "rustc failed: {stderr}");
    stderr
}

#[test]
fn the_committed_profile_is_readable_by_this_rustc() {
    let pgo = repo().join("pgo");
    let written_by: u32 = std::fs::read_to_string(pgo.join("llvm-major"))
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    let version = Command::new("rustc").arg("-vV").output().unwrap();
    let ours = llvm_major(&String::from_utf8_lossy(&version.stdout)).expect("rustc -vV names LLVM");
    if ours < written_by {
        eprintln!("rustc's LLVM {ours} is older than the profile's {written_by}: builds skip it");
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let stderr = compile_with(&pgo.join("merged.profdata"), dir.path());
    assert!(
        !stderr.contains("profile"),
        "rustc warned about the profile: {stderr}"
    );

    // The same check tells a damaged profile apart.
    let whole = std::fs::read(pgo.join("merged.profdata")).unwrap();
    let cut = dir.path().join("cut.profdata");
    std::fs::write(&cut, &whole[..whole.len().min(4096)]).unwrap();
    let stderr = compile_with(&cut, dir.path());
    assert!(stderr.contains("instrumentation profile data"), "{stderr}");
}

#[test]
fn the_wrapper_adds_the_profile_to_optimized_builds_only() {
    let dir = tempfile::tempdir().unwrap();
    // A stand-in rustc: reports the LLVM version it is told to, and echoes its arguments.
    let fake = dir.path().join("rustc");
    std::fs::write(
        &fake,
        "#!/bin/sh\n[ \"$1\" = -vV ] && { echo \"LLVM version: $FAKE_LLVM.1.0\"; exit 0; }\necho \"$@\"\n",
    )
    .unwrap();
    std::fs::set_permissions(&fake, std::fs::Permissions::from_mode(0o755)).unwrap();
    let wrapper = repo().join("scripts/rustc-pgo.sh");
    let flag = format!(
        "-Cprofile-use={}",
        repo().join("pgo/merged.profdata").display()
    );
    let run = |llvm: &str, env: &[(&str, &str)], args: &[&str]| -> String {
        let out = Command::new(&wrapper)
            .arg(&fake)
            .args(args)
            .env("FAKE_LLVM", llvm)
            .env_remove("PORTHOLE_PGO")
            .envs(env.iter().copied())
            .output()
            .unwrap();
        assert!(out.status.success());
        String::from_utf8(out.stdout).unwrap()
    };
    let release = ["--crate-name", "x", "-C", "opt-level=3"];
    assert!(run("99", &[], &release).contains(&flag));
    assert!(run("99", &[], &["--crate-name", "x", "-C", "opt-level=s"]).contains(&flag));
    // Debug builds, a switch turned off, an LLVM too old to read it, a build recording a
    // profile: rustc as it was called.
    for (llvm, env, args) in [
        ("99", &[][..], &["--crate-name", "x"][..]),
        ("99", &[("PORTHOLE_PGO", "0")][..], &release[..]),
        ("1", &[][..], &release[..]),
        (
            "99",
            &[][..],
            &["-C", "opt-level=3", "-Cprofile-generate=/tmp/x"][..],
        ),
    ] {
        let out = run(llvm, env, args);
        assert_eq!(out.trim(), args.join(" "), "LLVM {llvm}, {env:?}");
    }
}
