//! What a researcher meets in the first hour with `ltrain train`, run as a real process on tiny
//! settings: flags a resumed run cannot honour, extending a finished run, batch sizes that cannot
//! train, and the last batch an epoch leaves out.

use serde_json::Value;
use std::path::Path;

mod binary;
use binary::*;

/// A synthetic set of 4 classes (16, 10, 6, 4 training images: 36) and a reduced-width ResNet-32
/// (batches of 32 unless `extra` says otherwise).
fn tiny(out: &Path, extra: &[&str]) -> Vec<String> {
    let mut args: Vec<String> = [
        "train",
        "--synthetic-classes",
        "4",
        "--synthetic-max-per-class",
        "16",
        "--synthetic-test-per-class",
        "4",
        "--imbalance",
        "4",
        "--threads",
        "2",
        "--out",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    args.push(out.display().to_string());
    args.extend(extra.iter().map(|s| s.to_string()));
    args
}

fn resume(dir: &Path, extra: &[&str]) -> Vec<String> {
    let mut args = vec![
        "train".to_string(),
        "--resume".into(),
        dir.display().to_string(),
    ];
    args.extend(extra.iter().map(|s| s.to_string()));
    args
}

fn metrics(dir: &Path) -> Vec<Value> {
    std::fs::read_to_string(dir.join("metrics.jsonl"))
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

#[test]
fn resume_refuses_each_flag_it_cannot_honour_naming_both_values() {
    let root = tempfile::tempdir().unwrap();
    let dir = root.path().join("run");
    run_ok(&tiny(&dir, &["--epochs", "1", "--lr", "0.05", "--quiet"]));
    let before = std::fs::read(dir.join("checkpoint.safetensors")).unwrap();
    let err = run_err(
        &resume(
            &dir,
            &[
                "--epochs",
                "2",
                "--lr",
                "0.5",
                "--batch-size",
                "16",
                "--seed",
                "3",
            ],
        ),
        &[
            "--resume",
            "--lr asks for lr = 0.5",
            "trained with 0.05",
            "--batch-size asks for batch_size = 16",
            "--seed",
        ],
    );
    assert!(err.contains("--init"), "{err}");
    for (flag, value, key) in [
        ("--dataset", "cifar10-lt", "dataset"),
        ("--train-file", "/nowhere/train.bin", "train_file"),
        ("--no-mixup", "", "mixup_alpha"),
        ("--expert-width", "full", "expert_width"),
    ] {
        let mut extra = vec![flag];
        if !value.is_empty() {
            extra.push(value);
        }
        run_err(&resume(&dir, &extra), &[flag, key]);
    }
    // Nothing was trained or written by the refused commands.
    assert_eq!(
        std::fs::read(dir.join("checkpoint.safetensors")).unwrap(),
        before
    );
    assert_eq!(metrics(&dir).len(), 1);
    // The flags it can honour, and a flag that repeats the run's own value, are fine.
    run_ok(&resume(
        &dir,
        &[
            "--epochs",
            "1",
            "--threads",
            "1",
            "--eval-every",
            "1",
            "--lr",
            "0.05",
            "--quiet",
        ],
    ));
}

#[test]
fn a_finished_run_is_extended_and_says_what_its_schedule_does() {
    let root = tempfile::tempdir().unwrap();
    let dir = root.path().join("run");
    run_ok(&tiny(&dir, &["--epochs", "1", "--quiet"]));
    // One epoch had no room for stage 2 or SLA: kept as it is, SLA would start under mixup.
    let out = run_ok(&resume(&dir, &["--epochs", "2"]));
    let err = stderr(&out);
    assert!(
        err.contains("cannot be kept") && err.contains("rescaled to 2 epochs"),
        "{err}"
    );
    let rows = metrics(&dir);
    assert_eq!(rows.len(), 2);
    assert_eq!(rows[1]["epoch"], 2);
    let config = std::fs::read_to_string(dir.join("config.toml")).unwrap();
    assert!(config.contains("epochs = 2"), "{config}");
    // A run whose schedule holds at the new length keeps it.
    let plain = root.path().join("plain");
    run_ok(&tiny(&plain, &["--epochs", "1", "--loss", "la", "--quiet"]));
    let out = run_ok(&resume(&plain, &["--epochs", "2"]));
    let err = stderr(&out);
    assert!(err.contains("its schedule is kept"), "{err}");
    assert_eq!(metrics(&plain).len(), 2);
    // Shortening below what was trained is refused.
    run_err(
        &resume(&dir, &["--epochs", "1"]),
        &["--epochs 1", "already trained 2 epochs"],
    );
}

#[test]
fn batch_sizes_that_cannot_train_are_refused_and_a_left_out_batch_is_said() {
    let root = tempfile::tempdir().unwrap();
    let dir = root.path().join("run");
    run_err(
        &tiny(&dir, &["--batch-size", "1"]),
        &["--batch-size 1", "batch norm"],
    );
    assert!(!dir.exists(), "a refused run leaves no directory");
    // 36 images in batches of 7: the last batch has 1, which batch norm cannot use.
    let out = run_ok(&tiny(&dir, &["--epochs", "1", "--batch-size", "7"]));
    let err = stderr(&out);
    assert!(err.contains("leaves its last 1 image out"), "{err}");
    // In batches of 8 the last has 4: nothing is left out, and nothing is said.
    let other = root.path().join("other");
    let out = run_ok(&tiny(&other, &["--epochs", "1", "--batch-size", "8"]));
    assert!(!stderr(&out).contains("left out") && !stderr(&out).contains("leaves"));
}

#[test]
fn ctrl_c_is_acknowledged_at_once_and_a_second_one_quits_leaving_no_lock() {
    use std::io::{BufRead, BufReader};
    use std::process::{Command, Stdio};
    let root = tempfile::tempdir().unwrap();
    let dir = root.path().join("run");
    // Full-width experts on batches of 128: each step takes a good part of a second here, time
    // enough for the second Ctrl-C to land inside the step the first one waits for.
    let mut args = tiny(
        &dir,
        &[
            "--epochs",
            "20",
            "--expert-width",
            "full",
            "--batch-size",
            "128",
        ],
    );
    let at = args
        .iter()
        .position(|a| a == "--synthetic-max-per-class")
        .unwrap();
    args[at + 1] = "100".into();
    let mut child = Command::new(env!("CARGO_BIN_EXE_ltrain"))
        .args(&args)
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    // config.toml is written just before the first epoch: the signals land during training.
    while !dir.join("config.toml").exists() {
        std::thread::sleep(std::time::Duration::from_millis(5));
    }
    assert!(dir.join(".ltrain.lock").exists());
    let interrupt = |pid: u32| {
        let status = Command::new("kill")
            .args(["-INT", &pid.to_string()])
            .status();
        assert!(status.unwrap().success());
    };
    interrupt(child.id());
    let mut lines = BufReader::new(child.stderr.take().unwrap()).lines();
    let mut seen = Vec::new();
    for line in lines.by_ref() {
        let line = line.unwrap();
        seen.push(line.clone());
        if line.contains("stopping after this step") {
            break;
        }
    }
    assert!(
        seen.last()
            .is_some_and(|l| l.contains("Ctrl-C again to quit now")),
        "the first Ctrl-C was not acknowledged: {seen:?}"
    );
    interrupt(child.id());
    let rest: Vec<String> = lines.map(|l| l.unwrap()).collect();
    let status = child.wait().unwrap();
    assert_eq!(status.code(), Some(130), "{rest:?}");
    assert!(
        rest.iter()
            .any(|l| l.contains("quit;") && l.contains("--resume")),
        "{rest:?}"
    );
    assert!(
        !dir.join(".ltrain.lock").exists(),
        "the lock was left behind"
    );
    // The directory is usable as it is: the run starts again there (no epoch was saved).
    assert!(!dir.join("checkpoint.safetensors").exists());
    let mut again = tiny(&dir, &["--epochs", "1", "--quiet"]);
    again.retain(|a| a != "--threads" && a != "2");
    run_ok(&again);
}

#[test]
fn the_weights_alone_evaluate_as_the_checkpoint_does() {
    let root = tempfile::tempdir().unwrap();
    let dir = root.path().join("run");
    run_ok(&tiny(&dir, &["--epochs", "1", "--quiet"]));
    let eval = |file: &str| {
        let path = dir.join(file).display().to_string();
        let out = run_ok(&["eval", "--checkpoint", &path, "--threads", "2"]);
        stdout(&out)
    };
    let (weights, checkpoint) = (eval("model.safetensors"), eval("checkpoint.safetensors"));
    assert!(weights.contains("top-1"), "{weights}");
    assert_eq!(weights, checkpoint);
}

#[test]
fn messages_name_the_flag_the_key_the_epoch_and_the_fix() {
    let root = tempfile::tempdir().unwrap();
    let out_dir = root.path().join("never");
    let out = out_dir.display().to_string();
    // Negative numbers reach the value checks.
    let err = run_err(
        &["train", "--epochs", "-1", "--out", &out],
        &["--epochs", "'-1'"],
    );
    assert!(!err.contains("unexpected argument"), "{err}");
    run_err(
        &["train", "--lr", "-0.1", "--out", &out],
        &["--lr", "-0.1", "positive"],
    );
    // A configuration value of the wrong type names the file, its line and the key.
    let config = root.path().join("c.toml");
    std::fs::write(&config, "lr = 0.1\n\nbatch_size = \"64\"\n").unwrap();
    let config = config.display().to_string();
    run_err(
        &["train", "--config", &config, "--out", &out],
        &["c.toml:3", "`batch_size`", "string \"64\""],
    );
    assert!(!out_dir.exists());
    // Every training flag says what it is.
    let help = stdout(&run_ok(&["train", "--help"]));
    for flag in [
        "--batch-size",
        "--momentum",
        "--weight-decay",
        "--seed",
        "--device",
    ] {
        let at = help
            .find(&format!("      {flag} "))
            .unwrap_or_else(|| panic!("{flag}:\n{help}"));
        let described = help[at..].lines().nth(1).unwrap_or("").trim();
        assert!(!described.is_empty(), "{flag} has no help text:\n{help}");
    }
    // The start line in words, not debug names.
    let dir = root.path().join("run");
    let started = stderr(&run_ok(&tiny(&dir, &["--epochs", "1"])));
    assert!(
        started.contains("ResNet-32 x 3 experts (experts 24/48 wide"),
        "{started}"
    );
    assert!(
        started.contains("1 epoch ->") && !started.contains("Resnet32"),
        "{started}"
    );
    // A model that diverges within a one-step epoch is caught at its evaluation, with the fix.
    let wild = root.path().join("wild");
    let err = run_err(
        &tiny(
            &wild,
            &[
                "--epochs",
                "1",
                "--lr",
                "1e30",
                "--warmup-epochs",
                "0",
                "--no-mixup",
            ],
        ),
        &["epoch 1", "learning rate", "--lr", "--warmup-epochs"],
    );
    assert!(
        err.contains("no finite probability") || err.contains("diverged"),
        "{err}"
    );
}

#[test]
fn a_run_records_who_ran_it_and_a_dry_run_writes_nothing() {
    let root = tempfile::tempdir().unwrap();
    let dir = root.path().join("run");
    let dry = run_ok(&tiny(
        &dir,
        &["--epochs", "3", "--batch-size", "8", "--dry-run"],
    ));
    let printed = stdout(&dry);
    // The resolved configuration (it parses back), the run's size, and an estimate.
    let config: String = printed
        .lines()
        .filter(|l| !l.starts_with('#'))
        .collect::<Vec<_>>()
        .join("\n");
    let cfg = ltrain::config::TrainConfig::from_toml_str(&config, "dry run").unwrap();
    assert_eq!((cfg.epochs, cfg.batch_size), (3, 8));
    // 36 images in batches of 8: 5 steps an epoch.
    assert!(
        printed.contains("3 epochs x 5 steps of 8 images = 15 steps, 108 training samples"),
        "{printed}"
    );
    assert!(printed.contains("# estimate: about"), "{printed}");
    assert!(!dir.exists(), "a dry run writes nothing");

    run_ok(&tiny(&dir, &["--epochs", "1", "--quiet"]));
    run_ok(&resume(&dir, &["--epochs", "2", "--quiet"]));
    let sessions: Vec<Value> =
        serde_json::from_str(&std::fs::read_to_string(dir.join("run.json")).unwrap()).unwrap();
    assert_eq!(sessions.len(), 2, "one session per start and resume");
    let first = &sessions[0];
    assert_eq!(first["ltrain"], env!("CARGO_PKG_VERSION"));
    let command: Vec<&str> = first["command"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| a.as_str().unwrap())
        .collect();
    assert!(
        command.contains(&"--synthetic-classes") && !command.contains(&"--resume"),
        "{command:?}"
    );
    assert!(sessions[1]["command"]
        .as_array()
        .unwrap()
        .iter()
        .any(|a| a == "--resume"));
    assert!(
        first["device"].as_str().unwrap().starts_with("cpu"),
        "{first}"
    );
    assert!(first["started"].as_str().unwrap().ends_with('Z'), "{first}");
    assert!(
        !first["host"].as_str().unwrap().is_empty() && !first["cpu"].as_str().unwrap().is_empty()
    );
    // Built in this checkout: the commit is the checkout's HEAD.
    let head = std::process::Command::new("git")
        .args(["rev-parse", "HEAD"])
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .output()
        .ok()
        .filter(|o| o.status.success())
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string());
    if let Some(head) = head {
        assert_eq!(first["commit"], head.as_str());
    }
    let report: Value =
        serde_json::from_str(&std::fs::read_to_string(dir.join("report.json")).unwrap()).unwrap();
    assert_eq!(report["sessions"], Value::Array(sessions));
}
