//! Bad configuration stops the real binary at start-up with one line naming the variable.

use std::process::Command;

fn start_with(variable: &str, value: &str) -> (Option<i32>, String) {
    // Port 0 first, so that a value that were wrongly accepted would still not collide;
    // the variable under test comes last and wins.
    let output = Command::new(env!("CARGO_BIN_EXE_hello"))
        .env("PORT", "0")
        .env(variable, value)
        .output()
        .unwrap();
    (
        output.status.code(),
        String::from_utf8_lossy(&output.stderr).into_owned(),
    )
}

#[test]
fn bad_variables_stop_start_up_with_one_line_naming_them() {
    for (variable, value) in [
        ("NAME_SERVICE_URL", "ftp://name.internal"),
        ("DISCOVERY_RECORD", "mx"),
        ("DNS_MAX_TTL", "ten seconds"),
        ("DNS_SERVER", "resolver.internal"),
        ("PORT", "70000"),
        ("MAX_ATTEMPTS", "0"),
    ] {
        let (code, stderr) = start_with(variable, value);
        assert_eq!(code, Some(2), "{variable}={value}: {stderr}");
        assert_eq!(stderr.lines().count(), 1, "{variable}={value}: {stderr}");
        assert!(stderr.contains(variable), "{variable}={value}: {stderr}");
    }
}

#[test]
fn bounds_out_of_order_are_refused_by_name() {
    let output = Command::new(env!("CARGO_BIN_EXE_hello"))
        .env("DNS_MIN_TTL", "10s")
        .env("DNS_MAX_TTL", "5s")
        .env("PORT", "0")
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(2));
    assert!(
        stderr.contains("DNS_MIN_TTL") && stderr.contains("DNS_MAX_TTL"),
        "{stderr}"
    );
}
