//! Issue 31 item 11, run as a user would: more seeds added to an existing sweep (its finished runs
//! byte for byte untouched, the summary over all the seeds), any other change of plan refused;
//! `ltrain eval --predictions --probabilities` (one column per class, named, each row the averaged
//! softmax of the prediction), a predictions file that cannot be written refused before evaluating;
//! `--gpu N` and its conflicts with `--device` and the data-parallel flags.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

mod binary;
use binary::*;

/// A synthetic set of 4 classes (16, 10, 6, 4 training images; 4 test images per class), a
/// reduced-width three-expert ResNet-32 for 2 epochs: a run takes a few seconds on 2 cores.
const TINY: &[&str] = &[
    "--synthetic-classes",
    "4",
    "--synthetic-max-per-class",
    "16",
    "--synthetic-test-per-class",
    "4",
    "--imbalance",
    "4",
    "--expert-width",
    "reduced",
    "--epochs",
    "2",
    "--batch-size",
    "8",
    "--threads",
    "2",
    "--lr",
    "0.002",
    "--no-mixup",
];

/// `ltrain sweep EXTRA... TINY... --out DIR`.
fn sweep_args(dir: &Path, extra: &[&str]) -> Vec<String> {
    let mut args = vec!["sweep".to_string()];
    args.extend(extra.iter().chain(TINY).map(|s| s.to_string()));
    args.extend(["--out".to_string(), path_str(dir)]);
    args
}

/// Every file under `dir` (recursively) with its bytes and modification time.
fn tree(dir: &Path) -> BTreeMap<PathBuf, (std::time::SystemTime, Vec<u8>)> {
    let mut files = BTreeMap::new();
    let mut todo = vec![dir.to_path_buf()];
    while let Some(d) = todo.pop() {
        for entry in std::fs::read_dir(&d).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                todo.push(path);
            } else {
                let modified = std::fs::metadata(&path).unwrap().modified().unwrap();
                files.insert(path.clone(), (modified, std::fs::read(&path).unwrap()));
            }
        }
    }
    files
}

#[test]
fn more_seeds_extend_a_sweep_and_other_changes_are_refused() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("sweep");
    run_ok(&sweep_args(&dir, &["--seeds", "0,1,2", "--quiet"]));
    let old: Vec<_> = (0..3)
        .map(|s| tree(&dir.join(format!("base/seed-{s}"))))
        .collect();
    for (s, files) in old.iter().enumerate() {
        assert!(
            files.contains_key(&dir.join(format!("base/seed-{s}/report.json"))),
            "seed {s} did not finish"
        );
    }
    let first = read_json(&dir.join("summary.json"));
    assert_eq!(first["runs_planned"], 3);

    // Seeds 3 and 4 added: said so, their runs trained, the three finished runs untouched.
    let out = run_ok(&sweep_args(&dir, &["--seeds", "0,1,2,3,4", "--quiet"]));
    let err = stderr(&out);
    assert!(
        err.contains("2 seeds added: 3, 4; 3 runs kept"),
        "the sweep should say what it added:\n{err}"
    );
    for (s, files) in old.iter().enumerate() {
        assert_eq!(
            &tree(&dir.join(format!("base/seed-{s}"))),
            files,
            "the finished run of seed {s} was touched"
        );
    }
    for s in [3, 4] {
        let report = read_json(&dir.join(format!("base/seed-{s}/report.json")));
        assert_eq!(report["config"]["seed"], s);
    }
    let summary = read_json(&dir.join("summary.json"));
    assert_eq!(summary["seeds"], serde_json::json!([0, 1, 2, 3, 4]));
    assert_eq!(summary["runs_planned"], 5);
    assert_eq!(summary["runs_finished"], 5);
    let config = &summary["configurations"][0];
    assert_eq!(config["seeds"], 5);
    assert_eq!(config["top1"]["n"], 5);
    let mean = config["runs"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["outcome"]["top1"].as_f64().unwrap())
        .sum::<f64>()
        / 5.0;
    assert!((config["top1"]["mean"].as_f64().unwrap() - mean).abs() < 1e-9);
    // The old runs' numbers are the first summary's.
    for s in 0..3 {
        assert_eq!(
            config["runs"][s]["outcome"],
            first["configurations"][0]["runs"][s]["outcome"]
        );
    }
    let md = std::fs::read_to_string(dir.join("summary.md")).unwrap();
    assert!(md.contains("| base | 5 |"), "{md}");
    let plan: toml::Table =
        toml::from_str(&std::fs::read_to_string(dir.join("sweep.toml")).unwrap()).unwrap();
    assert_eq!(
        plan["seeds"],
        toml::Value::Array((0..5).map(toml::Value::Integer).collect())
    );

    // The same command again adds nothing and trains nothing.
    let before = tree(&dir);
    let err = stderr(&run_ok(&sweep_args(&dir, &["--seeds", "0,1,2,3,4"])));
    assert!(!err.contains("added"), "{err}");
    assert!(err.contains("[5/5] base seed 4: finished earlier"), "{err}");
    let after = tree(&dir);
    for (path, file) in &before {
        let name = path.file_name().unwrap().to_string_lossy();
        if !name.starts_with("summary.") {
            assert_eq!(after.get(path), Some(file), "{} changed", path.display());
        }
    }

    // Anything else that changes is refused, naming it, with nothing written.
    let plan = std::fs::read(dir.join("sweep.toml")).unwrap();
    run_err(
        &sweep_args(
            &dir,
            &["--seeds", "0,1,2,3,4,5", "--set", "tau=1,0.5", "--quiet"],
        ),
        &["another plan", "grid", "--set tau=1.0,0.5"],
    );
    run_err(
        &sweep_args(&dir, &["--seeds", "0,1,2,3,4,5", "--tau", "0.5", "--quiet"]),
        &["another plan", "tau"],
    );
    run_err(
        &sweep_args(&dir, &["--seeds", "3,4,5", "--quiet"]),
        &[
            "another plan",
            "leaves out seeds 0,1,2",
            "--seeds 0,1,2,3,4,5",
        ],
    );
    assert_eq!(std::fs::read(dir.join("sweep.toml")).unwrap(), plan);
    assert!(!dir.join("base/seed-5").exists() && !dir.join("tau=1.0").exists());
}

/// A 10-class CIFAR-10 record file (made by `ltrain data cut` from the synthetic set), trained on
/// for one epoch; returns the checkpoint and the flags that name the data.
fn cifar10_run(tmp: &Path) -> (PathBuf, Vec<String>) {
    let records = path_str(&tmp.join("lt.bin"));
    run_ok(&[
        "data",
        "cut",
        "--imbalance",
        "4",
        "--synthetic-classes",
        "10",
        "--synthetic-max-per-class",
        "8",
        "--synthetic-test-per-class",
        "2",
        "--output",
        &records,
    ]);
    let data: Vec<String> = [
        "--dataset",
        "cifar10-lt",
        "--imbalance",
        "none",
        "--train-file",
        &records,
        "--test-file",
        &records,
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    let run = tmp.join("run");
    let mut args: Vec<String> = [
        "train",
        "--epochs",
        "1",
        "--batch-size",
        "4",
        "--lr",
        "0.005",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    args.extend(data.iter().cloned());
    args.extend(
        [
            "--expert-width",
            "reduced",
            "--threads",
            "2",
            "--quiet",
            "--out",
        ]
        .iter()
        .map(|s| s.to_string()),
    );
    args.push(path_str(&run));
    run_ok(&args);
    (run.join("checkpoint.safetensors"), data)
}

/// Checks a predictions CSV written with --probabilities against `names`; returns its rows.
fn check_probabilities(csv: &str, names: &[&str]) -> usize {
    let mut lines = csv.lines();
    let mut want = String::from("index,label,prediction,confidence,expert0,expert1,expert2");
    for n in names {
        want.push(',');
        want.push_str(n);
    }
    want.push_str(",label_name,predicted_name");
    assert_eq!(lines.next(), Some(want.as_str()));
    let classes = names.len();
    let mut rows = 0;
    for (i, line) in lines.enumerate() {
        let f: Vec<&str> = line.split(',').collect();
        assert_eq!(f.len(), 7 + classes + 2, "row {i}: {line}");
        assert_eq!(f[0], i.to_string());
        let label: usize = f[1].parse().unwrap();
        let prediction: usize = f[2].parse().unwrap();
        let confidence: f64 = f[3].parse().unwrap();
        let probs: Vec<f32> = f[7..7 + classes]
            .iter()
            .map(|p| p.parse().unwrap())
            .collect();
        let sum: f64 = probs.iter().map(|&p| p as f64).sum();
        assert!((sum - 1.0).abs() <= 1e-5, "row {i} sums to {sum}");
        assert!(probs.iter().all(|&p| (0.0..=1.0).contains(&p)), "row {i}");
        let max = probs.iter().copied().fold(f32::MIN, f32::max);
        let argmax = probs.iter().position(|&p| p == max).unwrap();
        assert_eq!(argmax, prediction, "row {i}: {probs:?}");
        assert!(
            (confidence - max as f64).abs() <= 1e-6,
            "row {i}: confidence {confidence} vs max {max}"
        );
        assert_eq!(f[7 + classes], names[label], "row {i}");
        assert_eq!(f[8 + classes], names[prediction], "row {i}");
        rows += 1;
    }
    rows
}

#[test]
fn probabilities_columns_named_by_class_and_output_checked_first() {
    let tmp = tempfile::tempdir().unwrap();
    let (checkpoint, data) = cifar10_run(tmp.path());
    let eval = |extra: &[&str]| -> Vec<String> {
        let mut args = vec![
            "eval".to_string(),
            "--checkpoint".to_string(),
            path_str(&checkpoint),
            "--threads".to_string(),
            "2".to_string(),
        ];
        args.extend(data.iter().cloned());
        args.extend(extra.iter().map(|s| s.to_string()));
        args
    };

    // Without --probabilities the CSV is as before.
    let plain = tmp.path().join("plain.csv");
    run_ok(&eval(&["--predictions", &path_str(&plain)]));
    let text = std::fs::read_to_string(&plain).unwrap();
    assert_eq!(
        text.lines().next(),
        Some("index,label,prediction,confidence,expert0,expert1,expert2")
    );
    let plain_rows: Vec<&str> = text.lines().skip(1).collect();
    assert!(plain_rows.iter().all(|r| r.split(',').count() == 7));

    // CIFAR-10: the classes' own names.
    let with = tmp.path().join("with.csv");
    run_ok(&eval(&[
        "--predictions",
        &path_str(&with),
        "--probabilities",
    ]));
    let text = std::fs::read_to_string(&with).unwrap();
    let cifar10 = [
        "airplane",
        "automobile",
        "bird",
        "cat",
        "deer",
        "dog",
        "frog",
        "horse",
        "ship",
        "truck",
    ];
    let rows = check_probabilities(&text, &cifar10);
    assert_eq!(rows, plain_rows.len());
    // The first columns are those of the plain CSV.
    for (a, b) in text.lines().skip(1).zip(&plain_rows) {
        let a: Vec<&str> = a.split(',').take(7).collect();
        assert_eq!(a.join(","), **b);
    }

    // A dataset without names: class_0, class_1, ...
    let synthetic = tmp.path().join("synthetic.csv");
    run_ok(&[
        "eval",
        "--checkpoint",
        &path_str(&checkpoint),
        "--threads",
        "2",
        "--dataset",
        "synthetic",
        "--synthetic-classes",
        "10",
        "--synthetic-test-per-class",
        "1",
        "--imbalance",
        "4",
        "--predictions",
        &path_str(&synthetic),
        "--probabilities",
    ]);
    let names: Vec<String> = (0..10).map(|c| format!("class_{c}")).collect();
    let names: Vec<&str> = names.iter().map(String::as_str).collect();
    assert_eq!(
        check_probabilities(&std::fs::read_to_string(&synthetic).unwrap(), &names),
        10
    );

    // A predictions file in a directory that does not exist: refused before evaluating, naming
    // the directory (no metrics printed).
    let missing = tmp.path().join("nodir");
    let args = eval(&[
        "--predictions",
        &path_str(&missing.join("p.csv")),
        "--probabilities",
    ]);
    let clock = std::time::Instant::now();
    let out = ltrain(&args);
    let seconds = clock.elapsed().as_secs_f64();
    let err = run_err(&args, &[&path_str(&missing), "does not exist"]);
    assert!(err.contains("nothing was evaluated"), "{err}");
    assert!(
        !stdout(&out).contains("top-1"),
        "the evaluation ran before the check:\n{}",
        stdout(&out)
    );
    assert!(seconds < 30.0, "took {seconds} s");
    assert!(!missing.exists());
    // A directory as the file, and --probabilities without --predictions.
    run_err(
        &eval(&["--predictions", &path_str(tmp.path())]),
        &["is a directory"],
    );
    run_err(&eval(&["--probabilities"]), &["--predictions"]);

    let help = stdout(&run_ok(&["eval", "--help"]));
    for m in [
        "--probabilities",
        "label_name,predicted_name",
        "class_0",
        "--gpu",
    ] {
        assert!(help.contains(m), "eval --help lacks {m}:\n{help}");
    }
}

#[test]
fn gpu_flag_is_checked_against_device_and_data_parallel_flags() {
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("never");
    let o = path_str(&out);
    let checkpoint = path_str(&tmp.path().join("missing.safetensors"));
    let tiny =
        |cmd: &[&str]| -> Vec<String> { cmd.iter().chain(TINY).map(|s| s.to_string()).collect() };

    // --gpu with --device cpu (or the emulator): an error naming both, before anything else.
    run_err(
        &tiny(&["train", "--gpu", "1", "--device", "cpu", "--out", &o]),
        &["--gpu 1", "--device cpu"],
    );
    run_err(
        &tiny(&[
            "sweep", "--seeds", "0", "--gpu", "1", "--device", "cpu", "--out", &o,
        ]),
        &["--gpu 1", "--device cpu"],
    );
    run_err(
        &[
            "eval",
            "--checkpoint",
            &checkpoint,
            "--gpu",
            "1",
            "--device",
            "cpu",
        ],
        &["--gpu 1", "--device cpu"],
    );
    run_err(
        &["bench", "--gpu", "1", "--device", "cuda-emulated"],
        &["--gpu 1", "--device cuda-emulated"],
    );
    // With the data-parallel flags: refused, naming them.
    run_err(
        &tiny(&["train", "--gpu", "0", "--gpus", "2", "--out", &o]),
        &["--gpu 0", "--gpus 2"],
    );
    run_err(
        &tiny(&["train", "--gpu", "1", "--ranks", "2", "--out", &o]),
        &["--gpu 1", "--ranks 2"],
    );
    assert!(!out.exists(), "a refused command wrote {o}");

    // A GPU that is not there: a clear error naming its number, no panic, no run directory.
    let absent = if ltrain::backend::cuda::cuda_available().is_err() {
        "0"
    } else {
        "99"
    };
    run_err(
        &["bench", "--gpu", absent, "--steps", "1", "--warmup", "0"],
        &[&format!("--gpu {absent}"), "no usable CUDA GPU"],
    );
    run_err(
        &tiny(&["train", "--gpu", absent, "--out", &o]),
        &[&format!("--gpu {absent}"), "no usable CUDA GPU"],
    );
    assert!(!out.exists(), "a run that cannot start wrote {o}");

    for cmd in ["train", "sweep", "eval", "bench"] {
        let help = stdout(&run_ok(&[cmd, "--help"]));
        assert!(
            help.contains("--gpu <N>") && help.contains("CUDA_VISIBLE_DEVICES"),
            "ltrain {cmd} --help lacks --gpu or CUDA_VISIBLE_DEVICES:\n{help}"
        );
    }
}
