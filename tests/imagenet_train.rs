//! ImageNet-LT end to end through the command line: a tiny data set in the ImageNet-LT format
//! (JPEG files + `relative/path.JPEG label` list files) written here, trained for four epochs with a
//! reduced-resolution three-expert ResNet-50, and unreadable images reported by path.

use std::path::{Path, PathBuf};
use std::process::Command;

const CLASSES: [[u8; 3]; 3] = [[200, 40, 40], [40, 200, 40], [40, 40, 200]];
const TRAIN_COUNTS: [usize; 3] = [6, 3, 3]; // 12: whole batches of 2, every image is read

fn jpeg(colour: [u8; 3], seed: usize) -> Vec<u8> {
    let (w, h) = (44u16, 36u16);
    let mut pixels = Vec::with_capacity(w as usize * h as usize * 3);
    for y in 0..h as usize {
        for x in 0..w as usize {
            let stripe = ((x + y + seed) / 5).is_multiple_of(2);
            for &c in &colour {
                pixels.push(if stripe { c } else { c / 2 });
            }
        }
    }
    let mut out = Vec::new();
    jpeg_encoder::Encoder::new(&mut out, 90)
        .encode(&pixels, w, h, jpeg_encoder::ColorType::Rgb)
        .unwrap();
    out
}

/// Writes `root/train/cK/iN.JPEG` and `root/val/...` plus the two list files.
fn write_dataset(root: &Path) -> (PathBuf, PathBuf) {
    let (mut train, mut test) = (String::new(), String::new());
    for (c, &colour) in CLASSES.iter().enumerate() {
        for (split, count, list) in [
            ("train", TRAIN_COUNTS[c], &mut train),
            ("val", 2, &mut test),
        ] {
            let dir = root.join(split).join(format!("c{c}"));
            std::fs::create_dir_all(&dir).unwrap();
            for i in 0..count {
                std::fs::write(dir.join(format!("i{i}.JPEG")), jpeg(colour, i)).unwrap();
                list.push_str(&format!("{split}/c{c}/i{i}.JPEG {c}\n"));
            }
        }
    }
    let (train_list, test_list) = (root.join("train.txt"), root.join("test.txt"));
    std::fs::write(&train_list, train).unwrap();
    std::fs::write(&test_list, test).unwrap();
    (train_list, test_list)
}

fn train(
    root: &Path,
    train_list: &Path,
    test_list: &Path,
    out: &Path,
    extra: &[&str],
) -> std::process::Output {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_ltrain"));
    cmd.args(["train", "--dataset", "imagenet-lt", "--model", "resnet50"])
        .arg("--data-dir")
        .arg(root)
        .arg("--train-list")
        .arg(train_list)
        .arg("--test-list")
        .arg(test_list)
        .arg("--out")
        .arg(out)
        .args([
            "--image-size",
            "32",
            "--batch-size",
            "2",
            "--lr",
            "0.01",
            "--threads",
            "2",
            "--quiet",
        ])
        .args(extra);
    cmd.output().unwrap()
}

#[test]
fn reduced_resolution_resnet50_trains_on_a_tiny_imagenet_lt() {
    let tmp = tempfile::tempdir().unwrap();
    let (train_list, test_list) = write_dataset(tmp.path());
    let out = tmp.path().join("run");
    let result = train(
        tmp.path(),
        &train_list,
        &test_list,
        &out,
        // Enough batch-norm updates (24) for the running statistics that evaluation uses.
        &["--epochs", "4", "--stage2-epoch", "3"],
    );
    let stderr = String::from_utf8_lossy(&result.stderr);
    assert!(result.status.success(), "{stderr}");
    let report: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(out.join("report.json")).unwrap()).unwrap();
    assert_eq!(report["class_counts"], serde_json::json!(TRAIN_COUNTS));
    assert_eq!(report["epochs"], 4);
    let top1 = report["top1"].as_f64().unwrap();
    assert!((0.0..=100.0).contains(&top1));
    assert_eq!(report["config"]["model"], "resnet50");
    // Four evaluated epochs, the last in stage 2, with a finite loss.
    let lines: Vec<serde_json::Value> = std::fs::read_to_string(out.join("metrics.jsonl"))
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(lines.len(), 4);
    assert_eq!(lines[2]["stage"], 1);
    assert_eq!(lines[3]["stage"], 2);
    assert!(lines
        .iter()
        .all(|l| l["train_loss"].as_f64().unwrap().is_finite()));
    // The checkpoint carries torchvision-style names for the shared stem and the experts' layer4.
    let bytes = std::fs::read(out.join("checkpoint.safetensors")).unwrap();
    let header_len = u64::from_le_bytes(bytes[..8].try_into().unwrap()) as usize;
    let header = std::str::from_utf8(&bytes[8..8 + header_len]).unwrap();
    for name in [
        "shared.conv1.weight",
        "shared.layer2.0.downsample.0.weight",
        "experts.2.layer4.2.bn3.running_var",
        "experts.0.fc.weight",
    ] {
        assert!(header.contains(name), "{name} missing from the checkpoint");
    }
}

#[test]
fn an_unreadable_image_is_named_or_substituted() {
    let tmp = tempfile::tempdir().unwrap();
    let (train_list, test_list) = write_dataset(tmp.path());
    let broken = tmp.path().join("train/c0/i1.JPEG");
    std::fs::write(&broken, b"not a jpeg at all").unwrap();

    let failed = train(
        tmp.path(),
        &train_list,
        &test_list,
        &tmp.path().join("a"),
        &["--epochs", "1", "--single-stage", "--loss", "la"],
    );
    let stderr = String::from_utf8_lossy(&failed.stderr);
    assert!(!failed.status.success());
    assert!(!stderr.contains("panicked"), "{stderr}");
    assert!(
        stderr.contains("i1.JPEG"),
        "the error must name the file: {stderr}"
    );

    let skipped = train(
        tmp.path(),
        &train_list,
        &test_list,
        &tmp.path().join("b"),
        &[
            "--epochs",
            "1",
            "--single-stage",
            "--loss",
            "la",
            "--skip-bad-images",
        ],
    );
    let stderr = String::from_utf8_lossy(&skipped.stderr);
    assert!(skipped.status.success(), "{stderr}");
    assert!(
        stderr.contains("i1.JPEG"),
        "the warning must name the file: {stderr}"
    );
}
