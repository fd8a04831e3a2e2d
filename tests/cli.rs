//! The `ltrain` command line, run as a real process on tiny settings: the files of a run and what
//! they hold, `--config` layering, `--resume`, `eval` predictions against the run's report, the `data`
//! subcommands, `presets`, `bench`, `--help`, and clear non-panicking errors for bad input.

use ltrain::config::{ExpertWidth, Imbalance, TrainConfig};
use serde_json::Value;
use std::path::Path;
use std::process::{Command, Output};

mod binary;
use binary::*;

/// A synthetic set of 4 classes (16, 10, 6, 4 training images; 4 test images per class) and a
/// reduced-width three-expert ResNet-32 for 2 epochs: a whole run takes seconds on 2 cores.
const TINY_DATA: &[&str] = &[
    "--synthetic-classes",
    "4",
    "--synthetic-max-per-class",
    "16",
    "--synthetic-test-per-class",
    "4",
    "--imbalance",
    "4",
];
const TINY_RUN: &[&str] = &[
    "--expert-width",
    "reduced",
    "--epochs",
    "2",
    "--batch-size",
    "8",
    "--threads",
    "2",
    "--quiet",
];
const CLASSES: usize = 4;
const MAX_PER_CLASS: usize = 16;
const TEST_PER_CLASS: usize = 4;
const RHO: f64 = 4.0;
/// Bytes of one CIFAR-10 record: a label byte and a 3x32x32 image.
const CIFAR10_RECORD: u64 = 1 + 3 * 32 * 32;

/// `ltrain train` with the tiny settings and `extra` flags.
fn train_args(extra: &[String]) -> Vec<String> {
    let mut args = vec!["train".to_string()];
    args.extend(TINY_DATA.iter().chain(TINY_RUN).map(|s| s.to_string()));
    args.extend(extra.iter().cloned());
    args
}

/// The long-tailed per-class counts of the LDAM protocol, n_max * rho^(-i / (C - 1)), floored.
fn expected_counts() -> Vec<usize> {
    (0..CLASSES)
        .map(|i| (MAX_PER_CLASS as f64 * RHO.powf(-(i as f64) / (CLASSES as f64 - 1.0))) as usize)
        .collect()
}

fn metrics_lines(dir: &Path) -> Vec<Value> {
    let text = std::fs::read_to_string(dir.join("metrics.jsonl")).unwrap();
    text.lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("bad line {l:?}: {e}")))
        .collect()
}

/// Decodes a PNG fully and returns (width, height).
fn decode_png(path: &Path) -> (u32, u32) {
    let file = std::fs::File::open(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    let mut reader = png::Decoder::new(std::io::BufReader::new(file))
        .read_info()
        .unwrap_or_else(|e| panic!("{} is not a PNG: {e}", path.display()));
    let mut buf = vec![0; reader.output_buffer_size().unwrap()];
    let info = reader
        .next_frame(&mut buf)
        .unwrap_or_else(|e| panic!("{}: cannot decode: {e}", path.display()));
    assert!(info.width > 0 && info.height > 0);
    (info.width, info.height)
}

/// One run end to end: train with `--config` + flags, check every file, evaluate the checkpoint and
/// compare with the report, refuse to overwrite the run, then resume it to more epochs.
#[test]
fn train_eval_resume_end_to_end() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("run");
    // The file sets three keys; the flag --lr must win over its lr.
    let config_file = tmp.path().join("base.toml");
    std::fs::write(&config_file, "lr = 0.2\nseed = 5\nmixup_alpha = 0.3\n").unwrap();
    run_ok(&train_args(&[
        "--config".into(),
        path_str(&config_file),
        "--lr".into(),
        "0.05".into(),
        "--out".into(),
        path_str(&dir),
    ]));

    for file in [
        "config.toml",
        "metrics.jsonl",
        "checkpoint.safetensors",
        "model.safetensors",
        "report.json",
        "summary.md",
        "reliability.png",
        "per_class.png",
        "curves.png",
    ] {
        assert!(dir.join(file).is_file(), "{file} is missing");
    }

    // config.toml: defaults < file < flags; --epochs 2 rescales (to the nearest epoch) the warm-up (1
    // of 10 -> 0), the stage switch (8 of 10 -> 2, kept inside the run: 1 of 2) and the milestones
    // ([8, 9] of 10 -> [2] of 2).
    let cfg = TrainConfig::load(&dir.join("config.toml")).unwrap();
    let expected = TrainConfig {
        synthetic_classes: CLASSES,
        synthetic_max_per_class: MAX_PER_CLASS,
        synthetic_test_per_class: TEST_PER_CLASS,
        imbalance: Imbalance::Ratio(RHO),
        expert_width: ExpertWidth::Reduced,
        epochs: 2,
        batch_size: 8,
        threads: 2,
        lr: 0.05,
        seed: 5,
        mixup_alpha: 0.3,
        warmup_epochs: 0,
        stage2_epoch: Some(1),
        milestones: vec![2],
        ..TrainConfig::default()
    };
    assert_eq!(cfg, expected);

    // metrics.jsonl: one object per (evaluated) epoch, 1-based epochs, stage 2 from epoch index 1.
    let lines = metrics_lines(&dir);
    assert_eq!(lines.len(), 2);
    for (i, line) in lines.iter().enumerate() {
        for key in [
            "epoch",
            "stage",
            "lr",
            "train_loss",
            "top1",
            "many",
            "medium",
            "few",
            "ece",
            "seconds",
        ] {
            assert!(
                line.get(key).is_some(),
                "metrics line {i} lacks {key}: {line}"
            );
        }
        assert_eq!(line["epoch"], i + 1);
        assert_eq!(line["stage"], i + 1);
        assert!(line["train_loss"].as_f64().unwrap().is_finite());
        let top1 = line["top1"].as_f64().unwrap();
        assert!((0.0..=100.0).contains(&top1));
    }

    // report.json
    let report = read_json(&dir.join("report.json"));
    for key in [
        "top1",
        "many",
        "medium",
        "few",
        "ece",
        "per_class_top1",
        "class_counts",
        "epochs",
        "train_seconds",
        "samples_per_second",
        "device",
        "config",
    ] {
        assert!(report.get(key).is_some(), "report.json lacks {key}");
    }
    let counts: Vec<usize> = serde_json::from_value(report["class_counts"].clone()).unwrap();
    assert_eq!(counts, expected_counts());
    assert_eq!(report["epochs"], 2);
    assert_eq!(report["per_class_top1"].as_array().unwrap().len(), CLASSES);
    assert_eq!(report["top1"], lines[1]["top1"], "report = last epoch");
    let report_cfg: TrainConfig = serde_json::from_value(report["config"].clone()).unwrap();
    assert_eq!(report_cfg, expected);

    for png in ["reliability.png", "per_class.png", "curves.png"] {
        decode_png(&dir.join(png));
    }

    // eval: same weights, same test set -> the CSV's accuracy is the report's top-1.
    let checkpoint = dir.join("checkpoint.safetensors");
    let csv_path = tmp.path().join("preds.csv");
    run_ok(&[
        "eval".into(),
        "--checkpoint".into(),
        path_str(&checkpoint),
        "--predictions".into(),
        path_str(&csv_path),
    ]);
    let csv = std::fs::read_to_string(&csv_path).unwrap();
    let mut rows = csv.lines();
    assert_eq!(
        rows.next(),
        Some("index,label,prediction,confidence,expert0,expert1,expert2")
    );
    let rows: Vec<Vec<&str>> = rows.map(|r| r.split(',').collect()).collect();
    assert_eq!(rows.len(), CLASSES * TEST_PER_CLASS);
    let mut correct = 0;
    for (i, row) in rows.iter().enumerate() {
        assert_eq!(row.len(), 7, "row {i}: {row:?}");
        assert_eq!(row[0], i.to_string());
        let label: usize = row[1].parse().unwrap();
        let prediction: usize = row[2].parse().unwrap();
        let confidence: f64 = row[3].parse().unwrap();
        assert!(label < CLASSES && prediction < CLASSES);
        // Softmax averaging over 4 classes: the top probability is at least 1/4.
        assert!((0.25 - 1e-6..=1.0 + 1e-6).contains(&confidence), "row {i}");
        correct += usize::from(label == prediction);
    }
    let csv_top1 = 100.0 * correct as f64 / rows.len() as f64;
    let report_top1 = report["top1"].as_f64().unwrap();
    assert!(
        (csv_top1 - report_top1).abs() < 1e-9,
        "CSV top-1 {csv_top1} vs report.json {report_top1}"
    );

    // The finished run is not overwritten by a fresh one.
    run_err(
        &train_args(&["--out".into(), path_str(&dir)]),
        &["already holds a run", "--resume"],
    );

    // Resume the finished run with a longer schedule: it continues to epoch 3.
    run_ok(&[
        "train",
        "--resume",
        &path_str(&dir),
        "--epochs",
        "3",
        "--quiet",
    ]);
    let lines = metrics_lines(&dir);
    let epochs: Vec<u64> = lines.iter().map(|l| l["epoch"].as_u64().unwrap()).collect();
    assert_eq!(epochs, [1, 2, 3]);
    assert_eq!(read_json(&dir.join("report.json"))["epochs"], 3);
    assert_eq!(
        TrainConfig::load(&dir.join("config.toml")).unwrap().epochs,
        3
    );
}

#[test]
fn data_info_cut_and_preview() {
    let tmp = tempfile::tempdir().unwrap();
    let with_data = |cmd: &[&str]| -> Vec<String> {
        cmd.iter().chain(TINY_DATA).map(|s| s.to_string()).collect()
    };

    let out = run_ok(&with_data(&["data", "info", "--json"]));
    let info: Value = serde_json::from_str(&stdout(&out)).expect("data info --json prints JSON");
    for key in [
        "total",
        "class_counts",
        "imbalance",
        "many",
        "medium",
        "few",
    ] {
        assert!(info.get(key).is_some(), "data info lacks {key}: {info}");
    }
    let counts = expected_counts();
    let total: usize = counts.iter().sum();
    assert_eq!(
        serde_json::from_value::<Vec<usize>>(info["class_counts"].clone()).unwrap(),
        counts
    );
    assert_eq!(info["total"], total);
    assert_eq!(info["imbalance"].as_f64(), Some(RHO));
    // Every class has under 20 images: all few-shot.
    assert_eq!(info["few"].as_array().unwrap().len(), CLASSES);
    assert!(info["many"].as_array().unwrap().is_empty());

    let cut = tmp.path().join("cut.bin");
    run_ok(&with_data(&["data", "cut", "--output", &path_str(&cut)]));
    let bytes = std::fs::metadata(&cut).unwrap().len();
    assert_eq!(bytes, total as u64 * CIFAR10_RECORD);
    // The record labels are the long-tailed counts.
    let records = std::fs::read(&cut).unwrap();
    let mut label_counts = vec![0; CLASSES];
    for record in records.chunks(CIFAR10_RECORD as usize) {
        label_counts[record[0] as usize] += 1;
    }
    assert_eq!(label_counts, counts);

    let preview = tmp.path().join("preview.png");
    run_ok(&with_data(&[
        "data",
        "preview",
        "--output",
        &path_str(&preview),
    ]));
    decode_png(&preview);
}

#[test]
fn presets_lists_every_preset() {
    let out = stdout(&run_ok(&["presets"]));
    for name in ltrain::presets::preset_names() {
        assert!(
            out.lines()
                .any(|l| l.split_whitespace().next() == Some(name)),
            "preset {name} not listed:\n{out}"
        );
    }
}

#[test]
fn bench_prints_throughput() {
    let out = run_ok(&[
        "bench",
        "--device",
        "cpu",
        "--steps",
        "1",
        "--warmup",
        "0",
        "--batch-size",
        "4",
        "--experts",
        "1",
        "--threads",
        "2",
    ]);
    let text = stdout(&out);
    let line = text
        .lines()
        .find(|l| l.contains("samples/s"))
        .unwrap_or_else(|| panic!("no samples/s line:\n{text}"));
    let rate: f64 = line
        .split(": ")
        .nth(1)
        .and_then(|rest| rest.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("no number before samples/s in {line:?}"));
    assert!(rate > 0.0 && rate.is_finite(), "{line}");
}

#[test]
fn bench_no_mixup_runs_the_views_as_they_are_and_says_so() {
    let line = |extra: &[&str]| -> String {
        let mut args = vec![
            "bench",
            "--device",
            "cpu",
            "--threads",
            "2",
            "--expert-width",
            "full",
            "--steps",
            "1",
            "--warmup",
            "0",
            "--batch-size",
            "4",
            "--classes",
            "3",
            "--image-size",
            "8",
        ];
        args.extend_from_slice(extra);
        let text = stdout(&run_ok(&args));
        text.lines()
            .find(|l| l.contains("samples/s"))
            .unwrap_or_else(|| panic!("no samples/s line:\n{text}"))
            .to_string()
    };
    let off = line(&["--no-mixup"]);
    assert!(off.contains("stage 1, no mixup, "), "{off}");
    assert!(off.contains("(full width)"), "{off}");
    let on = line(&[]);
    assert!(on.contains("stage 1, mixup, "), "{on}");
    // Stage 2 never mixes: --no-mixup changes nothing there.
    let stage2 = line(&["--stage2", "--no-mixup"]);
    assert!(stage2.contains("stage 2, no mixup, "), "{stage2}");
}

#[test]
fn help_of_every_subcommand() {
    let cases: &[(&[&str], &[&str])] = &[
        (&[], &["train", "eval", "data", "presets", "bench"]),
        (
            &["train"],
            &[
                "--epochs",
                "--loss",
                "--config",
                "--preset",
                "--resume",
                "--out",
                "--device",
                "--ranks",
                "--gpus",
                "--rendezvous",
                "--sync-bn",
            ],
        ),
        (&["eval"], &["--checkpoint", "--predictions", "--device"]),
        (&["data"], &["info", "cut", "preview", "download"]),
        (&["data", "download"], &["--to", "cifar10"]),
        (&["data", "info"], &["--json", "--dataset", "--data-dir"]),
        (&["data", "cut"], &["--output", "--train-file"]),
        (&["data", "preview"], &["--output", "--samples"]),
        (&["presets"], &["Usage"]),
        (
            &["bench"],
            &["--steps", "--batch-size", "--device", "--model"],
        ),
    ];
    for (cmd, mentions) in cases {
        let mut args: Vec<&str> = cmd.to_vec();
        args.push("--help");
        let text = stdout(&run_ok(&args));
        for m in *mentions {
            assert!(
                text.contains(m),
                "ltrain {} --help lacks {m}",
                cmd.join(" ")
            );
        }
    }
}

#[test]
fn bad_flag_values_are_rejected() {
    run_err(
        &train_args(&["--loss".into(), "bogus".into()]),
        &["--loss", "bogus"],
    );
    run_err(
        &train_args(&["--device".into(), "tpu".into()]),
        &["--device", "tpu"],
    );
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("run");
    run_err(
        &train_args(&[
            "--stage2-epoch".into(),
            "50".into(),
            "--out".into(),
            path_str(&out),
        ]),
        &["--stage2-epoch"],
    );
    assert!(
        !out.exists(),
        "a rejected configuration leaves no run directory"
    );
}

#[test]
fn bad_config_files_are_rejected() {
    let tmp = tempfile::tempdir().unwrap();
    let missing = tmp.path().join("missing.toml");
    run_err(
        &train_args(&["--config".into(), path_str(&missing)]),
        &["missing.toml", "--config"],
    );
    for (name, text, mention) in [
        ("invalid.toml", "epochs = [\n", "TOML"),
        ("unknown.toml", "epoch = 3\n", "epoch"),
        ("wrong_type.toml", "epochs = \"three\"\n", "three"),
    ] {
        let file = tmp.path().join(name);
        std::fs::write(&file, text).unwrap();
        run_err(
            &train_args(&["--config".into(), path_str(&file)]),
            &[name, mention],
        );
    }
}

#[test]
fn bad_checkpoints_and_run_directories_are_rejected() {
    let tmp = tempfile::tempdir().unwrap();
    let missing = tmp.path().join("none.safetensors");
    run_err(
        &["eval", "--checkpoint", &path_str(&missing)],
        &["none.safetensors"],
    );

    // Pseudo-random bytes: neither a valid header length nor a JSON header.
    let corrupt = tmp.path().join("corrupt.safetensors");
    let bytes: Vec<u8> = (0..4096u32)
        .map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8)
        .collect();
    std::fs::write(&corrupt, bytes).unwrap();
    run_err(
        &["eval", "--checkpoint", &path_str(&corrupt)],
        &["corrupt.safetensors"],
    );

    let empty = tmp.path().join("empty_run");
    std::fs::create_dir(&empty).unwrap();
    run_err(
        &["train", "--resume", &path_str(&empty)],
        &["--resume", "checkpoint.safetensors"],
    );
}

#[test]
fn missing_or_bad_data_is_rejected() {
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("run");
    run_err(
        &train_args(&[
            "--dataset".into(),
            "cifar10-lt".into(),
            "--out".into(),
            path_str(&out),
        ]),
        &["--data-dir"],
    );
    assert!(!out.exists(), "a run without data leaves no run directory");

    // One byte short of a record.
    let bad = tmp.path().join("short.bin");
    std::fs::write(&bad, vec![0u8; CIFAR10_RECORD as usize - 1]).unwrap();
    let bad = path_str(&bad);
    run_err(
        &train_args(&[
            "--dataset".into(),
            "cifar10-lt".into(),
            "--train-file".into(),
            bad.clone(),
            "--test-file".into(),
            bad.clone(),
            "--out".into(),
            path_str(&out),
        ]),
        &["short.bin", "3073"],
    );
    assert!(!out.exists());
    run_err(
        &[
            "data",
            "info",
            "--dataset",
            "cifar10-lt",
            "--train-file",
            &bad,
            "--test-file",
            &bad,
        ],
        &["short.bin", "3073"],
    );
}

#[test]
fn cuda_without_a_gpu_is_a_clear_error() {
    if ltrain::backend::cuda::CudaBackend::new_gpu(0).is_ok() {
        println!("skipping: this machine has a usable GPU, --device cuda would train");
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("run");
    run_err(
        &train_args(&[
            "--device".into(),
            "cuda".into(),
            "--out".into(),
            path_str(&out),
        ]),
        &["--device cuda"],
    );
    assert!(
        !out.exists(),
        "a run that cannot start leaves no run directory"
    );
    run_err(
        &["bench", "--device", "cuda", "--steps", "1", "--warmup", "0"],
        &["--device cuda"],
    );
}

#[test]
fn cuda_graphs_on_a_backend_without_them_is_a_clear_error() {
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("run");
    run_err(
        &train_args(&[
            "--device".into(),
            "cpu".into(),
            "--cuda-graphs".into(),
            "on".into(),
            "--out".into(),
            path_str(&out),
        ]),
        &["--cuda-graphs on", "--cuda-graphs off"],
    );
    assert!(
        !out.exists(),
        "a run that cannot start leaves no run directory"
    );
    run_err(
        &[
            "bench",
            "--device",
            "cpu",
            "--cuda-graphs",
            "on",
            "--steps",
            "1",
            "--warmup",
            "0",
        ],
        &["--cuda-graphs on"],
    );
}

#[test]
fn bench_counts_a_replayed_step_in_three_host_operations() {
    let out = run_ok(&[
        "bench",
        "--device",
        "cuda-emulated",
        "--counters",
        "--count-only",
        "--cuda-graphs",
        "on",
        "--input",
        "device-augment",
        // The closing synchronisation's error-record read, spread over the steps, rounds away.
        "--steps",
        "4",
    ]);
    let text = stdout(&out);
    let count = |what: &str| -> u64 {
        let line = text
            .lines()
            .find(|l| l.trim_start().starts_with(what))
            .unwrap_or_else(|| panic!("no {what:?} line:\n{text}"));
        line.split_whitespace().last().unwrap().parse().unwrap()
    };
    assert_eq!(count("graph launches"), 1, "{text}");
    assert_eq!(count("host operations"), 3, "{text}");
    assert!(count("stream operations") > 400, "{text}");
}

#[test]
fn ranks_train_resume_and_refuse_another_world_size() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("run");
    let d = path_str(&dir);
    run_ok(&train_args(&[
        "--ranks".into(),
        "2".into(),
        "--sync-bn".into(),
        "--out".into(),
        d.clone(),
    ]));
    // Rank 0 alone wrote: one metrics line per epoch, one report.
    assert_eq!(metrics_lines(&dir).len(), 2);
    let report = read_json(&dir.join("report.json"));
    let device = report["device"].as_str().unwrap();
    assert!(device.ends_with("x 2 ranks"), "{device}");
    assert_eq!(report["config"]["sync_bn"], true);
    let resume = |extra: &[&str]| {
        let mut args = vec!["train", "--resume", &d, "--epochs", "3", "--quiet"];
        args.extend_from_slice(extra);
        args.into_iter().map(String::from).collect::<Vec<_>>()
    };
    run_err(&resume(&[]), &["trained on 2 ranks", "cannot resume on 1"]);
    run_err(&resume(&["--ranks", "3"]), &["trained on 2 ranks"]);
    run_ok(&resume(&["--ranks", "2"]));
    assert_eq!(metrics_lines(&dir).len(), 3);
}

/// `ltrain args` with the environment of a torchrun-started rank.
fn ltrain_as_rank(args: &[String], env: &[(&str, &str)]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_ltrain"))
        .args(args)
        .envs(env.iter().copied())
        .output()
        .expect("cannot start the ltrain binary")
}

#[test]
fn bad_parallel_launches_are_clear_errors() {
    let tmp = tempfile::tempdir().unwrap();
    let out = path_str(&tmp.path().join("run"));
    run_err(&train_args(&["--ranks".into(), "0".into()]), &["--ranks 0"]);
    let rank1 = [
        ("RANK", "1"),
        ("WORLD_SIZE", "2"),
        ("MASTER_ADDR", "127.0.0.1"),
        ("MASTER_PORT", "1"),
    ];
    let check = |out: Output, mentions: &[&str]| {
        let err = stderr(&out);
        assert!(
            !out.status.success() && out.status.code() != Some(101) && !err.contains("panicked"),
            "{err}"
        );
        for m in mentions {
            assert!(err.contains(m), "stderr should mention {m:?}:\n{err}");
        }
    };
    // One process per rank needs NCCL: not on the CPU, and the same --out for all.
    check(
        ltrain_as_rank(
            &train_args(&["--device".into(), "cpu".into(), "--out".into(), out.clone()]),
            &rank1,
        ),
        &["rank 1 of 2", "--ranks N"],
    );
    check(
        ltrain_as_rank(&train_args(&[]), &rank1),
        &["rank 1 of 2", "--out"],
    );
    check(
        ltrain_as_rank(
            &train_args(&["--out".into(), out.clone()]),
            &[("RANK", "x"), ("WORLD_SIZE", "2")],
        ),
        &["RANK=x"],
    );
    check(
        ltrain_as_rank(
            &train_args(&["--ranks".into(), "2".into(), "--out".into(), out.clone()]),
            &rank1,
        ),
        &["--ranks 2", "WORLD_SIZE=2"],
    );
    if ltrain::backend::cuda::CudaBackend::new_gpu(0).is_ok() {
        println!("skipping the no-GPU checks: this machine has a usable GPU");
        return;
    }
    // Without a GPU or NCCL, GPUs as ranks fail before anything is written, naming what is missing.
    for launch in [
        ltrain_as_rank(
            &train_args(&["--gpus".into(), "2".into(), "--out".into(), out.clone()]),
            &[],
        ),
        ltrain_as_rank(
            &train_args(&[
                "--device".into(),
                "cuda".into(),
                "--out".into(),
                out.clone(),
            ]),
            &rank1,
        ),
    ] {
        let err = stderr(&launch);
        check(launch, &[]);
        assert!(err.contains("NCCL") || err.contains("GPU"), "{err}");
    }
    assert!(!tmp.path().join("run").exists());
}

#[test]
fn model_safetensors_holds_the_state_dict_alone() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("run");
    run_ok(&train_args(&["--out".into(), path_str(&dir)]));
    let names = |file: &str| -> Vec<String> {
        let (tensors, _) = ltrain::train::checkpoint::load_checkpoint(&dir.join(file)).unwrap();
        let mut n: Vec<String> = tensors.into_iter().map(|t| t.name).collect();
        n.sort();
        n
    };
    let weights = names("model.safetensors");
    // PyTorch's state_dict() of the peer's ResNet32x3: parameters, running statistics and
    // num_batches_tracked, nothing else.
    for name in [
        "shared.conv1.weight",
        "shared.bn1.running_var",
        "shared.bn1.num_batches_tracked",
        "shared.layer1.4.conv2.weight",
        "experts.2.layer3.4.bn2.bias",
        "experts.0.fc.weight",
        "experts.2.fc.bias",
    ] {
        assert!(weights.iter().any(|n| n == name), "{name} missing");
    }
    assert!(weights
        .iter()
        .all(|n| n.starts_with("shared.") || n.starts_with("experts.")));
    // Exactly the checkpoint's model tensors.
    let model_part: Vec<String> = names("checkpoint.safetensors")
        .into_iter()
        .filter(|n| !n.starts_with("optimizer.") && !n.starts_with("sla."))
        .collect();
    assert_eq!(weights, model_part);
    assert!(!dir.read_dir().unwrap().any(|e| e
        .unwrap()
        .file_name()
        .to_string_lossy()
        .contains(".tmp")));
}

#[test]
fn short_runs_keep_stage_one_and_say_what_was_scaled() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("run");
    let mut args: Vec<String> = vec!["train".into()];
    args.extend(TINY_DATA.iter().map(|s| s.to_string()));
    for a in [
        "--expert-width",
        "reduced",
        "--batch-size",
        "8",
        "--threads",
        "2",
        "--epochs",
        "1",
        "--lr",
        "0.1",
        "--out",
    ] {
        args.push(a.into());
    }
    args.push(path_str(&dir));
    let err = stderr(&run_ok(&args));
    assert!(
        err.contains("--epochs 1 (the schedule was for 10)"),
        "{err}"
    );
    assert!(err.contains("stage2_epoch 8 -> none"), "{err}");
    assert!(err.contains("milestones [8, 9] -> [1]"), "{err}");
    // One epoch of stage 1 at the learning rate given (no decay before the first step).
    let lines = metrics_lines(&dir);
    assert_eq!(lines.len(), 1);
    assert_eq!(lines[0]["stage"], 1);
    assert_eq!(lines[0]["lr"].as_f64().unwrap(), 0.1);
    // Three epochs: the switch at 2 of 3 (8 of 10, nearest), stage 1 first.
    let dir3 = tmp.path().join("run3");
    let n = args.len();
    args[n - 5] = "3".into();
    args[n - 1] = path_str(&dir3);
    let err = stderr(&run_ok(&args));
    assert!(err.contains("stage2_epoch 8 -> 2"), "{err}");
    let stages: Vec<i64> = metrics_lines(&dir3)
        .iter()
        .map(|l| l["stage"].as_i64().unwrap())
        .collect();
    assert_eq!(stages, [1, 1, 2]);
}

#[test]
fn a_record_file_as_is_and_data_info_on_a_training_file_alone() {
    let tmp = tempfile::tempdir().unwrap();
    let file = tmp.path().join("lt.bin");
    // A long-tailed record file made elsewhere: a 10-class synthetic set (12 down to 3 per class),
    // cut to CIFAR-10 records.
    let data = [
        "--synthetic-classes",
        "10",
        "--synthetic-max-per-class",
        "12",
        "--synthetic-test-per-class",
        "2",
        "--imbalance",
        "4",
    ];
    let mut cut = vec!["data".to_string(), "cut".into()];
    cut.extend(data.iter().map(|s| s.to_string()));
    cut.extend(["--output".into(), path_str(&file)]);
    run_ok(&cut);
    let counts: Vec<usize> = (0..10)
        .map(|i| (12.0 * 4f64.powf(-(i as f64) / 9.0)) as usize)
        .collect();
    let info = |extra: &[&str]| -> Value {
        let mut args = vec![
            "data",
            "info",
            "--json",
            "--dataset",
            "cifar10-lt",
            "--train-file",
        ];
        let f = path_str(&file);
        args.push(&f);
        args.extend_from_slice(extra);
        serde_json::from_str(&stdout(&run_ok(&args))).unwrap()
    };
    let counts_of = |v: &Value| -> Vec<usize> {
        v.as_array()
            .unwrap()
            .iter()
            .map(|c| c.as_u64().unwrap() as usize)
            .collect()
    };
    // As is: the file's own counts and imbalance; no test set given, described anyway.
    let as_is = info(&["--imbalance", "none"]);
    assert_eq!(counts_of(&as_is["class_counts"]), counts);
    assert_eq!(as_is["imbalance"].as_f64().unwrap(), 12.0 / 3.0);
    assert!(as_is["test_class_counts"].is_null(), "{as_is}");
    // Cut to a ratio (the file's own: the same counts), still without a test set.
    let cut = info(&["--imbalance", "4"]);
    assert_eq!(counts_of(&cut["class_counts"]), counts);
    assert!(cut["test_class_counts"].is_null(), "{cut}");
    // Training on the file as it is reports its profile.
    let dir = tmp.path().join("run");
    let mut args = vec!["train".to_string()];
    args.extend(TINY_RUN.iter().map(|s| s.to_string()));
    let f = path_str(&file);
    args.extend(
        [
            "--dataset",
            "cifar10-lt",
            "--train-file",
            &f,
            "--test-file",
            &f,
            "--imbalance",
            "none",
            "--out",
        ]
        .map(String::from),
    );
    args.push(path_str(&dir));
    run_ok(&args);
    let report = read_json(&dir.join("report.json"));
    assert_eq!(counts_of(&report["class_counts"]), counts);
    assert_eq!(report["config"]["imbalance"], "none");
    run_err(
        &["data", "info", "--imbalance", "sideways"],
        &["sideways", "none"],
    );
}

/// Ctrl-C (SIGINT) stops `ltrain train` at the next step with a checkpoint, exit status 130 and a
/// message saying how to resume; `--resume` then ends where an uninterrupted run ends.
#[test]
fn sigint_saves_a_checkpoint_and_resume_ends_as_an_uninterrupted_run() {
    let straight = tempfile::tempdir().unwrap();
    let args = train_args(&["--out".to_string(), path_str(straight.path())]);
    run_ok(&args);

    let split = tempfile::tempdir().unwrap();
    let args = train_args(&["--out".to_string(), path_str(split.path())]);
    let child = Command::new(env!("CARGO_BIN_EXE_ltrain"))
        .args(&args)
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    // config.toml is written just before the first epoch: the signal lands during training.
    while !split.path().join("config.toml").exists() {
        std::thread::sleep(std::time::Duration::from_millis(5));
    }
    let killed = Command::new("kill")
        .args(["-INT", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(killed.success());
    let out = child.wait_with_output().unwrap();
    let err = stderr(&out);
    assert_eq!(out.status.code(), Some(130), "{err}");
    assert!(err.contains("--resume"), "{err}");
    assert!(split.path().join("checkpoint.safetensors").exists());

    let resume = [
        "train".to_string(),
        "--resume".to_string(),
        path_str(split.path()),
        "--quiet".to_string(),
    ];
    run_ok(&resume);
    let weights = |dir: &Path| std::fs::read(dir.join("model.safetensors")).unwrap();
    assert!(
        weights(straight.path()) == weights(split.path()),
        "the resumed run's weights differ from the uninterrupted run's"
    );
}
