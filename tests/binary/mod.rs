//! Running the `ltrain` binary from the tests that drive it as a user would (each test crate uses
//! a part of these).
#![allow(dead_code)]

use serde_json::Value;
use std::path::Path;
use std::process::{Command, Output};

pub fn ltrain<S: AsRef<str>>(args: &[S]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_ltrain"))
        .args(args.iter().map(|a| a.as_ref()))
        .output()
        .expect("cannot start the ltrain binary")
}

pub fn stdout(out: &Output) -> String {
    String::from_utf8_lossy(&out.stdout).into_owned()
}

pub fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

pub fn run_ok<S: AsRef<str>>(args: &[S]) -> Output {
    let out = ltrain(args);
    let shown: Vec<&str> = args.iter().map(|a| a.as_ref()).collect();
    assert!(
        out.status.success(),
        "ltrain {} failed ({}):\n{}",
        shown.join(" "),
        out.status,
        stderr(&out)
    );
    out
}

/// Runs a command that must fail cleanly: a non-zero exit that is not a panic's (101), no panic
/// message, and a message on stderr that mentions every string of `mentions`. Returns stderr.
pub fn run_err<S: AsRef<str>>(args: &[S], mentions: &[&str]) -> String {
    let out = ltrain(args);
    let shown: Vec<&str> = args.iter().map(|a| a.as_ref()).collect();
    let err = stderr(&out);
    let code = out.status.code();
    assert!(
        !out.status.success() && code.is_some() && code != Some(101),
        "ltrain {} should fail cleanly, got {}:\n{err}",
        shown.join(" "),
        out.status
    );
    assert!(
        !err.contains("panicked"),
        "ltrain {} panicked:\n{err}",
        shown.join(" ")
    );
    for m in mentions {
        assert!(
            err.contains(m),
            "ltrain {}: stderr should mention {m:?}:\n{err}",
            shown.join(" ")
        );
    }
    err
}

pub fn path_str(p: &Path) -> String {
    p.to_str().expect("temporary paths are UTF-8").to_string()
}

pub fn read_json(path: &Path) -> Value {
    let text = std::fs::read_to_string(path)
        .unwrap_or_else(|e| panic!("cannot read {}: {e}", path.display()));
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("{} is not JSON: {e}", path.display()))
}
