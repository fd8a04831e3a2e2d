//! `ltrain sweep`, run as a real process on tiny settings: the run directories of a grid x seeds,
//! the summary's mean ± std recomputed from the runs' own report.json, a re-run that skips finished
//! runs, a killed sweep continued (a run resumed from its checkpoint, finished runs untouched, the
//! same summary as an uninterrupted sweep), a different plan in the same directory refused, and
//! clear errors for bad --set keys and values.

use serde_json::Value;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant, SystemTime};

mod binary;
use binary::*;

/// A synthetic set of 4 classes (16, 10, 6, 4 training images; 4 test images per class), a
/// reduced-width three-expert ResNet-32 for 2 epochs: a run takes a few seconds on 2 cores. At this
/// learning rate without mixup, seeds 0 and 1 reach different top-1.
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

/// Mean and sample std (n - 1) of the values, computed here independently of ltrain.
fn mean_std(values: &[f64]) -> (f64, Option<f64>) {
    let n = values.len() as f64;
    let mean = values.iter().sum::<f64>() / n;
    let std = (values.len() > 1)
        .then(|| (values.iter().map(|v| (v - mean).powi(2)).sum::<f64>() / (n - 1.0)).sqrt());
    (mean, std)
}

fn close(a: f64, b: f64) -> bool {
    (a - b).abs() <= 1e-9 * a.abs().max(1.0)
}

/// Every file of a run directory with its modification time and contents.
fn snapshot(dir: &Path) -> BTreeMap<PathBuf, (SystemTime, Vec<u8>)> {
    std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.is_file())
        .map(|p| {
            let modified = std::fs::metadata(&p).unwrap().modified().unwrap();
            let bytes = std::fs::read(&p).unwrap();
            (p, (modified, bytes))
        })
        .collect()
}

/// The numbers of a summary.json, without timings: per configuration its label, seeds and stats,
/// and each run's metrics.
fn summary_numbers(summary: &Value) -> Value {
    let configs: Vec<Value> = summary["configurations"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| {
            let runs: Vec<Value> = c["runs"]
                .as_array()
                .unwrap()
                .iter()
                .map(|r| {
                    let o = &r["outcome"];
                    serde_json::json!([
                        r["seed"],
                        r["dir"],
                        o["top1"],
                        o["many"],
                        o["medium"],
                        o["few"],
                        o["ece"],
                        o["epochs"]
                    ])
                })
                .collect();
            serde_json::json!([
                c["label"],
                c["seeds"],
                c["top1"],
                c["many"],
                c["medium"],
                c["few"],
                c["ece"],
                runs
            ])
        })
        .collect();
    Value::Array(configs)
}

/// Checks one configuration's statistics against its runs' report.json; returns the top-1 and ECE
/// standard deviations.
fn check_against_reports(sweep_dir: &Path, config: &Value) -> (Option<f64>, Option<f64>) {
    let runs = config["runs"].as_array().unwrap();
    let reports: Vec<Value> = runs
        .iter()
        .map(|r| {
            assert_eq!(r["finished"], true, "{r}");
            read_json(
                &sweep_dir
                    .join(r["dir"].as_str().unwrap())
                    .join("report.json"),
            )
        })
        .collect();
    assert_eq!(config["seeds"], reports.len());
    let mut stds = BTreeMap::new();
    for key in ["top1", "many", "medium", "few", "ece"] {
        let values: Vec<f64> = reports.iter().filter_map(|r| r[key].as_f64()).collect();
        let stat = &config[key];
        if values.is_empty() {
            assert!(stat.is_null(), "{key}: no seed has the group, got {stat}");
            continue;
        }
        let (mean, std) = mean_std(&values);
        assert!(
            close(stat["mean"].as_f64().unwrap(), mean),
            "{key}: mean {} vs {mean} from the reports",
            stat["mean"]
        );
        assert_eq!(stat["n"], values.len(), "{key}");
        match std {
            Some(std) => assert!(
                close(stat["std"].as_f64().unwrap(), std),
                "{key}: std {} vs {std} from the reports",
                stat["std"]
            ),
            None => assert!(
                stat["std"].is_null(),
                "{key}: one seed, std {}",
                stat["std"]
            ),
        }
        stds.insert(key, std);
    }
    (stds["top1"], stds["ece"])
}

/// A sweep of two seeds: the run directories (normal run directories), summary.json's mean and std
/// recomputed from the runs' report.json, summary.md and summary.png; a re-run skips every run;
/// the same sweep killed while its second run trains is continued with `--resume` to the same
/// summary without touching the first run; another plan in the same directory is refused.
#[test]
fn two_seeds_summary_rerun_resume_and_plan_refusal() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("sweep");
    run_ok(&sweep_args(&dir, &["--seeds", "0,1", "--quiet"]));

    for file in ["sweep.toml", "summary.md", "summary.json", "summary.png"] {
        assert!(dir.join(file).is_file(), "{file} is missing");
    }
    let png = std::fs::read(dir.join("summary.png")).unwrap();
    assert_eq!(&png[..8], b"\x89PNG\r\n\x1a\n");
    for seed in [0, 1] {
        let run = dir.join(format!("base/seed-{seed}"));
        for file in [
            "config.toml",
            "metrics.jsonl",
            "checkpoint.safetensors",
            "report.json",
            "summary.md",
            "reliability.png",
            "per_class.png",
            "curves.png",
        ] {
            assert!(run.join(file).is_file(), "seed {seed}: {file} is missing");
        }
        let report = read_json(&run.join("report.json"));
        assert_eq!(report["config"]["seed"], seed);
        assert_eq!(report["config"]["lr"].as_f64().unwrap() as f32, 0.002);
        assert_eq!(report["epochs"], 2);
    }

    let summary = read_json(&dir.join("summary.json"));
    assert_eq!(summary["runs_planned"], 2);
    assert_eq!(summary["runs_finished"], 2);
    assert!(summary["paper"].is_null());
    let configs = summary["configurations"].as_array().unwrap();
    assert_eq!(configs.len(), 1);
    assert_eq!(configs[0]["label"], "base");
    let (top1_std, ece_std) = check_against_reports(&dir, &configs[0]);
    // The tiny set's classes are all few-shot: many and medium have no classes.
    assert!(configs[0]["many"].is_null() && configs[0]["medium"].is_null());
    let top1: Vec<f64> = configs[0]["runs"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["outcome"]["top1"].as_f64().unwrap())
        .collect();
    if top1[0] != top1[1] {
        assert!(top1_std.unwrap() > 0.0, "top-1 {top1:?} differ, std 0");
    }
    assert!(ece_std.unwrap() > 0.0, "the seeds' ECE should differ");
    let md = std::fs::read_to_string(dir.join("summary.md")).unwrap();
    let top1_stat = &configs[0]["top1"];
    let cell = format!(
        "{:.2} ± {:.2}",
        top1_stat["mean"].as_f64().unwrap(),
        top1_stat["std"].as_f64().unwrap()
    );
    assert!(md.contains(&cell), "summary.md lacks {cell}:\n{md}");
    assert!(md.contains("| base | 2 |"), "{md}");

    // The same command again: nothing is trained, the runs' files are untouched.
    let before: Vec<_> = [0, 1]
        .map(|s| snapshot(&dir.join(format!("base/seed-{s}"))))
        .into();
    let out = run_ok(&sweep_args(&dir, &["--seeds", "0,1"]));
    let err = stderr(&out);
    assert!(
        err.contains("[1/2] base seed 0: finished earlier")
            && err.contains("[2/2] base seed 1: finished earlier"),
        "{err}"
    );
    assert!(!err.contains("epoch    1"), "nothing should train:\n{err}");
    for (s, snap) in before.iter().enumerate() {
        assert_eq!(&snapshot(&dir.join(format!("base/seed-{s}"))), snap);
    }
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(stdout.contains("base: top-1"), "{stdout}");
    assert_eq!(
        summary_numbers(&read_json(&dir.join("summary.json"))),
        summary_numbers(&summary)
    );

    // The same sweep in another directory, killed once its second run has a checkpoint (after its
    // first epoch); a kill after the last checkpoint but before the report is simulated by
    // removing the report should the run have got that far.
    let killed = tmp.path().join("killed");
    let mut child = Command::new(env!("CARGO_BIN_EXE_ltrain"))
        .args(sweep_args(&killed, &["--seeds", "0,1", "--quiet"]))
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let second = killed.join("base/seed-1");
    let deadline = Instant::now() + Duration::from_secs(120);
    while !second.join("checkpoint.safetensors").exists() {
        assert!(child.try_wait().unwrap().is_none(), "the sweep ended early");
        assert!(Instant::now() < deadline, "no checkpoint of the second run");
        std::thread::sleep(Duration::from_millis(2));
    }
    child.kill().unwrap();
    child.wait().unwrap();
    if std::fs::remove_file(second.join("report.json")).is_ok() {
        eprintln!("the second run finished before the kill; its report was removed");
    }
    let _ = std::fs::remove_file(killed.join("summary.json"));
    let first = snapshot(&killed.join("base/seed-0"));
    assert!(first.contains_key(&killed.join("base/seed-0/report.json")));

    let out = run_ok(&["sweep", "--resume", &path_str(&killed)]);
    let err = stderr(&out);
    assert!(err.contains("[1/2] base seed 0: finished earlier"), "{err}");
    assert!(
        err.contains("[2/2] base seed 1: resuming from its checkpoint"),
        "{err}"
    );
    assert_eq!(
        snapshot(&killed.join("base/seed-0")),
        first,
        "run 1 was redone"
    );
    let epochs: Vec<u64> = std::fs::read_to_string(second.join("metrics.jsonl"))
        .unwrap()
        .lines()
        .map(|l| {
            serde_json::from_str::<Value>(l).unwrap()["epoch"]
                .as_u64()
                .unwrap()
        })
        .collect();
    assert_eq!(epochs, [1, 2]);
    let resumed = read_json(&killed.join("summary.json"));
    assert_eq!(
        summary_numbers(&resumed),
        summary_numbers(&summary),
        "a resumed sweep should end with the uninterrupted sweep's numbers"
    );

    // Another plan in the same directory is refused, naming what differs; nothing is written.
    let plan = std::fs::read(dir.join("sweep.toml")).unwrap();
    // (More seeds are added to a sweep, see tests/cli_sweep_eval.rs; leaving one out is refused.)
    run_err(
        &sweep_args(&dir, &["--seeds", "1,2", "--quiet"]),
        &["another plan", "seeds", "--resume"],
    );
    run_err(
        &sweep_args(&dir, &["--seeds", "0,1", "--tau", "0.5", "--quiet"]),
        &["another plan", "tau"],
    );
    run_err(
        &sweep_args(&dir, &["--seeds", "0,1", "--set", "tau=1,0.5", "--quiet"]),
        &["another plan", "grid"],
    );
    run_err(
        &["sweep", "--resume", &path_str(&dir), "--epochs", "3"],
        &["another plan", "epochs"],
    );
    assert_eq!(std::fs::read(dir.join("sweep.toml")).unwrap(), plan);
    assert!(!dir.join("tau=1.0").exists() && !dir.join("base/seed-2").exists());
    // How it runs may change: another thread count is the same plan.
    run_ok(&[
        "sweep",
        "--resume",
        &path_str(&dir),
        "--threads",
        "1",
        "--quiet",
    ]);
}

/// `--set tau=1,0.5` over a preset: two configurations, one directory each with its own tau, one
/// seed each (std null, "± –"), the paper's numbers beside them.
#[test]
fn grid_gives_one_configuration_per_value() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("grid");
    run_ok(&sweep_args(
        &dir,
        &[
            "--preset",
            "cifar10-lt-r100",
            "--dataset",
            "synthetic",
            "--seeds",
            "3",
            "--set",
            "tau=1,0.5",
            "--quiet",
        ],
    ));
    let summary = read_json(&dir.join("summary.json"));
    let configs = summary["configurations"].as_array().unwrap();
    let labels: Vec<&str> = configs
        .iter()
        .map(|c| c["label"].as_str().unwrap())
        .collect();
    assert_eq!(labels, ["tau=1.0", "tau=0.5"]);
    for (c, tau) in configs.iter().zip([1.0, 0.5]) {
        assert_eq!(c["settings"]["tau"], tau);
        let run = &c["runs"][0];
        assert_eq!(run["seed"], 3);
        let run_dir = dir.join(run["dir"].as_str().unwrap());
        assert_eq!(
            run_dir,
            dir.join(format!("{}/seed-3", c["label"].as_str().unwrap()))
        );
        let report = read_json(&run_dir.join("report.json"));
        assert_eq!(report["config"]["tau"], tau);
        assert_eq!(report["config"]["seed"], 3);
        assert_eq!(report["config"]["preset"], "cifar10-lt-r100");
        let (top1_std, _) = check_against_reports(&dir, c);
        assert_eq!(top1_std, None, "one seed has no std");
    }
    assert_eq!(summary["preset"], "cifar10-lt-r100");
    assert_eq!(summary["paper"]["top1"], 86.7);
    let md = std::fs::read_to_string(dir.join("summary.md")).unwrap();
    assert!(
        md.contains("| tau=1.0 | 1 |") && md.contains("| tau=0.5 | 1 |"),
        "{md}"
    );
    assert!(md.contains("± –"), "{md}");
    assert!(md.contains("| Paper (") && md.contains("86.7"), "{md}");
}

/// Bad grids, seeds and directories are clear errors naming the culprit, and write nothing.
#[test]
fn bad_sweeps_are_clear_errors() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("never");
    let with = |extra: &[&str]| {
        let mut e = vec!["--seeds", "0"];
        e.extend_from_slice(extra);
        sweep_args(&dir, &e)
    };
    run_err(
        &with(&["--set", "taux=1"]),
        &["--set taux=1", "unknown field", "taux"],
    );
    run_err(&with(&["--set", "tau=abc"]), &["--set tau=abc", "f32"]);
    run_err(
        &with(&["--set", "epochs=1.5"]),
        &["--set epochs=1.5", "usize"],
    );
    run_err(
        &with(&["--set", "loss=la,bogus"]),
        &["loss=bogus", "la-sla"],
    );
    run_err(&with(&["--set", "tau"]), &["--set tau", "KEY=V1,V2"]);
    run_err(&with(&["--set", "tau=1,"]), &["empty value"]);
    run_err(&with(&["--set", "tau=1,1.0"]), &["given twice"]);
    run_err(
        &with(&["--set", "tau=1", "--set", "tau=2"]),
        &["tau", "given twice"],
    );
    run_err(&with(&["--set", "seed=1,2"]), &["--seeds"]);
    run_err(
        &with(&["--set", "stage2_epoch=50"]),
        &["stage2_epoch=50", "stage2"],
    );
    run_err(&with(&["--seed", "1"]), &["--seed", "--seeds"]);
    run_err(&sweep_args(&dir, &["--seeds", "0,0"]), &["seed 0", "twice"]);
    assert!(!dir.exists(), "a refused sweep wrote {}", dir.display());

    let help = String::from_utf8_lossy(&run_ok(&["sweep", "--help"]).stdout).into_owned();
    for flag in [
        "--seeds", "--set", "--out", "--resume", "--preset", "--config", "--epochs",
    ] {
        assert!(help.contains(flag), "ltrain sweep --help lacks {flag}");
    }
    let top = String::from_utf8_lossy(&run_ok(&["--help"]).stdout).into_owned();
    assert!(top.contains("sweep"), "ltrain --help lacks sweep");

    run_err(
        &["sweep", "--resume", &path_str(&dir)],
        &["no sweep.toml", "not a sweep directory"],
    );
    let other = tmp.path().join("other");
    std::fs::create_dir_all(&other).unwrap();
    std::fs::write(other.join("notes.txt"), "mine").unwrap();
    run_err(
        &sweep_args(&other, &["--seeds", "0"]),
        &["not a sweep directory"],
    );
}

#[test]
fn runs_at_once_give_the_summary_of_runs_in_turn() {
    let tmp = tempfile::tempdir().unwrap();
    let (one, two) = (tmp.path().join("in-turn"), tmp.path().join("at-once"));
    let plan = ["--seeds", "0,1", "--set", "tau=1,0.5", "--quiet"];
    run_ok(&sweep_args(&one, &plan));
    let mut at_once = plan.to_vec();
    at_once.extend(["--jobs", "3"]);
    run_ok(&sweep_args(&two, &at_once));
    let (a, b) = (
        read_json(&one.join("summary.json")),
        read_json(&two.join("summary.json")),
    );
    assert_eq!(summary_numbers(&a), summary_numbers(&b));
    assert_eq!(a["configurations"].as_array().unwrap().len(), 2);
}
