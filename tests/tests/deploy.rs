//! The deploy/ files that can be checked here: the systemd unit passes
//! `systemd-analyze verify` (with ExecStart pointed at the binary just built), and the
//! Kubernetes Service and compose file publish the QUIC port over UDP.

use std::path::Path;

use porthole_tests::bin;

fn deploy(file: &str) -> String {
    let p = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../deploy")
        .join(file);
    std::fs::read_to_string(&p).unwrap_or_else(|e| panic!("reading {}: {e}", p.display()))
}

#[test]
fn systemd_unit_passes_systemd_analyze_verify() {
    let analyze = Path::new("/usr/bin/systemd-analyze");
    assert!(
        analyze.exists(),
        "systemd-analyze is missing: install Debian's `systemd` package (scripts/test.sh does)"
    );
    let unit = deploy("porthole-relay.service");
    assert!(unit.contains("NoNewPrivileges=yes") && unit.contains("ProtectSystem=strict"));
    let dir = tempfile::tempdir().unwrap();
    let copy = dir.path().join("porthole-relay.service");
    let relay = bin("porthole-relay");
    std::fs::write(
        &copy,
        unit.replace("/usr/local/bin/porthole-relay", relay.to_str().unwrap()),
    )
    .unwrap();
    let out = std::process::Command::new(analyze)
        .arg("verify")
        .arg(&copy)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "systemd-analyze verify failed:\n{stderr}"
    );
    // Warnings about this unit (not about the host's other units) count as failures.
    assert!(
        !stderr.contains("porthole-relay.service:"),
        "systemd-analyze verify warned:\n{stderr}"
    );
}

#[test]
fn the_quic_port_is_published_over_udp() {
    assert!(deploy("kubernetes/relay.yaml").contains("port: 4443, targetPort: quic, protocol: UDP"));
    assert!(deploy("compose.yaml").contains("\"4443:4443/udp\""));
    assert!(deploy("Dockerfile").contains("EXPOSE 8080/tcp 8443/tcp 4443/udp"));
    assert!(deploy("Dockerfile").contains("USER 10001"));
}
