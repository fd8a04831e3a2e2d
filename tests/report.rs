//! The report files: every key of report.json, the summary table, PNGs that decode at their size.

use ltrain::config::TrainConfig;
use ltrain::metrics::{evaluate, EvalMetrics};
use ltrain::presets::load_preset;
use ltrain::report::{
    append_epoch_record, read_epoch_records, write_report, EpochRecord, RunSummary,
};
use std::path::Path;

/// Ten classes with CIFAR-10-LT (rho = 100) training counts and 20 test samples each; the prediction
/// is right for 80 % of the head's samples and fewer in the tail.
fn metrics_and_counts() -> (EvalMetrics, Vec<usize>) {
    let counts = vec![5000, 2997, 1796, 1077, 645, 387, 232, 139, 83, 50];
    let c = counts.len();
    let (mut probs, mut labels) = (Vec::new(), Vec::new());
    for class in 0..c {
        for i in 0..20 {
            let correct = i * c < 20 * (c - class) * 8 / 10;
            let predicted = if correct { class } else { (class + 1) % c };
            let confidence = 0.35 + 0.03 * i as f32;
            let rest = (1.0 - confidence) / (c - 1) as f32;
            let mut row = vec![rest; c];
            row[predicted] = confidence;
            probs.extend(row);
            labels.push(class as u32);
        }
    }
    (evaluate(&probs, &labels, &counts).unwrap(), counts)
}

/// Twelve epochs (1-based), stage 2 after epoch 8, evaluated every other epoch.
fn history() -> Vec<EpochRecord> {
    let (m, _) = metrics_and_counts();
    (1..=12)
        .map(|epoch| {
            let mut eval = m.clone();
            eval.top1 = 30.0 + 4.0 * epoch as f64;
            eval.ece = 12.0 - 0.75 * epoch as f64;
            let stage = if epoch > 8 { 2 } else { 1 };
            // Dyadic values, so the JSON round trip is exact.
            let loss = 2.25 - 0.125 * epoch as f32;
            let evaluated = epoch % 2 == 0;
            EpochRecord::new(
                epoch,
                stage,
                0.1,
                loss,
                3.5 * epoch as f64,
                evaluated.then_some(&eval),
            )
        })
        .collect()
}

fn decode_png(path: &Path) -> (u32, u32) {
    let decoder = png::Decoder::new(std::io::BufReader::new(std::fs::File::open(path).unwrap()));
    let mut reader = decoder.read_info().unwrap();
    let mut buf = vec![0; reader.output_buffer_size().unwrap()];
    let info = reader.next_frame(&mut buf).unwrap();
    // A plot is more than a blank canvas.
    let first = &buf[..3];
    assert!(
        buf.chunks(3).any(|px| px != first),
        "{} is blank",
        path.display()
    );
    (info.width, info.height)
}

const KEYS: [&str; 21] = [
    "top1",
    "many",
    "medium",
    "few",
    "ece",
    "per_class_top1",
    "class_counts",
    "group_sizes",
    "group_rule",
    "test_samples",
    "reliability_bins",
    "epochs",
    "best_top1",
    "best_top1_epoch",
    "best_top1_note",
    "train_seconds",
    "data_wait_seconds",
    "samples_per_second",
    "device",
    "config",
    "paper",
];

#[test]
fn report_files() {
    let dir = tempfile::tempdir().unwrap();
    let (metrics, counts) = metrics_and_counts();
    let history = history();
    let (config, paper) = load_preset("cifar10-lt-r100").unwrap();
    let run = RunSummary {
        metrics: &metrics,
        history: &history,
        class_counts: &counts,
        config: &config,
        paper: paper.as_ref(),
        device: "cpu (2 threads)",
        train_seconds: 42.0,
        data_wait_seconds: 2.1,
        samples_per_second: 1234.5,
    };
    write_report(dir.path(), &run).unwrap();

    let json: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(dir.path().join("report.json")).unwrap())
            .unwrap();
    for key in KEYS {
        assert!(json.get(key).is_some(), "report.json lacks {key}");
    }
    assert_eq!(json["top1"].as_f64().unwrap(), metrics.top1);
    assert_eq!(json["per_class_top1"].as_array().unwrap().len(), 10);
    assert_eq!(json["class_counts"][0], 5000);
    assert_eq!(json["epochs"], 12);
    // Best over epochs: top-1 grows by 4 per epoch, so the last evaluated one.
    assert_eq!(json["best_top1"].as_f64().unwrap(), 78.0);
    assert_eq!(json["best_top1_epoch"], 12);
    assert_eq!(json["few"], serde_json::Value::Null); // no class below 20 images
    assert_eq!(json["paper"]["top1"].as_f64().unwrap(), 86.7);
    assert_eq!(json["config"]["preset"], "cifar10-lt-r100");
    let config_back: TrainConfig = serde_json::from_value(json["config"].clone()).unwrap();
    assert_eq!(config_back, config);

    assert_eq!(json["data_wait_seconds"].as_f64().unwrap(), 2.1);

    let md = std::fs::read_to_string(dir.path().join("summary.md")).unwrap();
    assert!(md.contains("| Metric | ltrain | Paper |"), "{md}");
    assert!(md.contains("waiting for data: 2 s (5.0%)"), "{md}");
    assert!(
        md.contains(&format!("| Top-1 (%) | {:.2} | 86.7 |", metrics.top1)),
        "{md}"
    );
    assert!(
        md.contains(&format!("| ECE (%) | {:.2} | 1.9 |", metrics.ece)),
        "{md}"
    );
    assert!(md.contains("| Few (%, 0 classes) | n/a | – |"), "{md}");
    assert!(md.contains("CIFAR-10-LT (rho = 100)"), "{md}");

    for (file, size) in [
        ("reliability.png", (900, 960)),
        ("per_class.png", (1400, 720)),
        ("curves.png", (1000, 1100)),
    ] {
        assert_eq!(decode_png(&dir.path().join(file)), size, "{file}");
    }
    // Atomic writes leave no temporary files behind.
    let mut names: Vec<String> = std::fs::read_dir(dir.path())
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    assert_eq!(
        names,
        [
            "curves.png",
            "per_class.png",
            "reliability.png",
            "report.json",
            "summary.md"
        ]
    );
}

#[test]
fn report_without_paper_or_history() {
    let dir = tempfile::tempdir().unwrap();
    let (metrics, counts) = metrics_and_counts();
    let config = TrainConfig::default();
    let run = RunSummary {
        metrics: &metrics,
        history: &[],
        class_counts: &counts,
        config: &config,
        paper: None,
        device: "cpu",
        train_seconds: 0.0,
        data_wait_seconds: 0.0,
        samples_per_second: 0.0,
    };
    write_report(dir.path(), &run).unwrap();
    let json: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(dir.path().join("report.json")).unwrap())
            .unwrap();
    assert!(json["paper"].is_null() && json["best_top1"].is_null());
    let md = std::fs::read_to_string(dir.path().join("summary.md")).unwrap();
    assert!(
        md.contains("| Metric | ltrain |\n") && !md.contains("Paper"),
        "{md}"
    );
    assert_eq!(decode_png(&dir.path().join("curves.png")), (1000, 1100));
}

#[test]
fn epoch_records_round_trip_and_the_last_line_of_an_epoch_wins() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("metrics.jsonl");
    let records = history();
    for r in &records[..6] {
        append_epoch_record(&path, r).unwrap();
    }
    // A resume from the checkpoint after epoch 4 logs epochs 5.. again.
    let mut redone = records[4].clone();
    redone.train_loss = 9.0;
    append_epoch_record(&path, &redone).unwrap();
    for r in &records[5..] {
        append_epoch_record(&path, r).unwrap();
    }
    let back = read_epoch_records(&path).unwrap();
    assert_eq!(back.len(), 12);
    assert_eq!(back[4], redone);
    assert_eq!(back[..4], records[..4]);
    assert_eq!(back[5..], records[5..]);
    // Non-evaluated epochs are null in the file.
    let line = std::fs::read_to_string(&path)
        .unwrap()
        .lines()
        .next()
        .unwrap()
        .to_string();
    let first: serde_json::Value = serde_json::from_str(&line).unwrap();
    assert!(first["top1"].is_null() && first["ece"].is_null());

    std::fs::write(&path, "{\"epoch\": 0}\n").unwrap();
    let err = format!("{:#}", read_epoch_records(&path).unwrap_err());
    assert!(err.contains("metrics.jsonl:1"), "{err}");
}

/// Metrics lines written before the data-wait time was measured still load (as 0 s).
#[test]
fn epoch_records_without_data_wait_load() {
    let line = r#"{"epoch":3,"stage":1,"lr":0.1,"train_loss":1.5,"top1":40.0,"many":null,"medium":null,"few":null,"ece":0.05,"seconds":12.5}"#;
    let record: EpochRecord = serde_json::from_str(line).unwrap();
    assert_eq!(record.epoch, 3);
    assert_eq!(record.data_wait_seconds, 0.0);
    assert_eq!(record.seconds, 12.5);
}
