//! Bad configuration stops the real binary at start-up with one line naming the variable.

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// Runs hello with `vars` and returns its exit code and standard error. A hello that keeps
/// running (the values were accepted) is killed and fails the test, rather than hanging it.
fn start_with(vars: &[(&str, &str)]) -> (Option<i32>, String) {
    let mut child = Command::new(env!("CARGO_BIN_EXE_hello"))
        .env("PORT", "0")
        .envs(vars.iter().copied())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    while child.try_wait().unwrap().is_none() {
        if Instant::now() > deadline {
            child.kill().unwrap();
            panic!("{vars:?} were accepted: hello is still running");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let output = child.wait_with_output().unwrap();
    (
        output.status.code(),
        String::from_utf8_lossy(&output.stderr).into_owned(),
    )
}

#[test]
fn bad_variables_stop_start_up_with_one_line_naming_them() {
    for (variable, value) in [
        ("NAME_SERVICE_URL", "ftp://name.internal"),
        ("NAME_SERVICE_URL", "http://name.internal:0"),
        ("NAME_SERVICE_URL", "http://user:pw@name.internal:3000"),
        ("MAX_ANSWER_BYTES", "0"),
        ("HEADER_READ_TIMEOUT", "soon"),
        ("DISCOVERY_RECORD", "mx"),
        ("DNS_MAX_TTL", "ten seconds"),
        ("DNS_SERVER", "resolver.internal"),
        ("PORT", "70000"),
        ("MAX_ATTEMPTS", "0"),
    ] {
        let (code, stderr) = start_with(&[(variable, value)]);
        assert_eq!(code, Some(2), "{variable}={value}: {stderr}");
        assert_eq!(stderr.lines().count(), 1, "{variable}={value}: {stderr}");
        assert!(stderr.contains(variable), "{variable}={value}: {stderr}");
    }
}

#[test]
fn an_unknown_record_type_lists_the_known_ones() {
    let (_, stderr) = start_with(&[("DISCOVERY_RECORD", "mx")]);
    assert!(stderr.contains("a, srv"), "{stderr}");
}

#[test]
fn bounds_out_of_order_are_refused_by_name() {
    let (code, stderr) = start_with(&[("DNS_MIN_TTL", "10s"), ("DNS_MAX_TTL", "5s")]);
    assert_eq!(code, Some(2));
    assert!(
        stderr.contains("DNS_MIN_TTL") && stderr.contains("DNS_MAX_TTL"),
        "{stderr}"
    );
}
