//! How the binaries are linked, where it changes what every process costs.

use porthole_tests::bin;

/// Neither binary loads the system's libm (`relay_server::runtime::pow`): a library
/// the dynamic loader maps and relocates costs each process about 0.3 MiB of resident
/// memory, and libm was there for one function that only a multi-threaded runtime
/// calls. A dependency that starts calling another libm function brings it back; then
/// this test names the binary, and the fix is that function defined beside `pow` (or
/// the 0.3 MiB accepted, and this test removed).
#[cfg(all(target_os = "linux", target_env = "gnu"))]
#[test]
fn binaries_load_no_libm() {
    for name in ["porthole", "porthole-relay"] {
        let path = bin(name);
        let image = std::fs::read(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        // A needed library is named in the dynamic string table; nothing else in the
        // binary spells this file name.
        let needle = b"libm.so.6";
        assert!(
            !image.windows(needle.len()).any(|w| w == needle),
            "{} needs libm.so.6 again: `nm -D --undefined-only {}` shows which libm function it calls",
            path.display(),
            path.display()
        );
    }
}
