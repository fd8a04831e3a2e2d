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
