//! The PyTorch definition shipped in `python/ltrain_models.py` against what ltrain writes.
//!
//! Without PyTorch (plain `python3`): the module's key list (`expected_state_dict_shapes`, names,
//! shapes and dtypes in `state_dict()` order) equals the state dict ltrain builds for ResNet-32
//! (reduced and full width), ResNet-50 and ResNeXt-50 32x4d, and equals the header of a real
//! `model.safetensors`, whose configuration the module reads back from the metadata.
//!
//! With PyTorch (`LTRAIN_TORCH_PYTHON`, else `python3` if it imports torch, else the venv
//! `scripts/bench-vs-pytorch.sh` makes, `$LTRAIN_TORCH_VENV` or `~/.cache/ltrain/torch-venv`):
//! the PyTorch modules have exactly those keys, a trained `model.safetensors` loads strictly, and
//! PyTorch's predictions on the test file are `ltrain eval`'s. Skipped, with a message, where no
//! PyTorch is found (nothing is installed).

use ltrain::backend::cpu::CpuBackend;
use ltrain::config::{ExpertWidth, ModelKind, TrainConfig};
use ltrain::model::MultiExpertNet;
use serde_json::{json, Value};
use std::path::{Path, PathBuf};
use std::process::Command;

mod binary;
use binary::*;

/// `(name, shape, dtype)` of a state-dict entry, as the Python module lists it.
type Entry = (String, Vec<usize>, String);

fn python_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("python")
}

/// Runs `python -c code args...` with `python/` importable; returns stdout, panicking with stderr.
fn python(python: &str, code: &str, args: &[String]) -> String {
    let out = Command::new(python)
        .arg("-c")
        .arg(code)
        .args(args)
        .env("PYTHONPATH", python_dir())
        .env("PYTHONDONTWRITEBYTECODE", "1")
        .env("OMP_NUM_THREADS", "2")
        .output()
        .unwrap_or_else(|e| panic!("cannot run {python} (the test needs Python 3): {e}"));
    assert!(
        out.status.success(),
        "{python} -c ... failed ({}):\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).expect("python prints UTF-8")
}

/// `expected_state_dict_shapes(**config)` for each config, from plain `python3`.
fn python_key_lists(configs: &[Value]) -> Vec<Vec<Entry>> {
    let code = "import json, sys, ltrain_models as m\n\
                configs = json.loads(sys.argv[1])\n\
                print(json.dumps([m.expected_state_dict_shapes(**c) for c in configs]))";
    let text = python("python3", code, &[Value::from(configs).to_string()]);
    serde_json::from_str(&text)
        .unwrap_or_else(|e| panic!("bad key lists from Python ({e}): {text}"))
}

/// Fails naming the first entries that differ.
fn assert_same_entries(what: &str, python: &[Entry], ltrain: &[Entry]) {
    let first_difference = python.iter().zip(ltrain).position(|(a, b)| a != b);
    if let Some(i) = first_difference {
        panic!(
            "{what}: entry {i} is {:?} in python/ltrain_models.py, {:?} in ltrain",
            python[i], ltrain[i]
        );
    }
    assert_eq!(
        python.len(),
        ltrain.len(),
        "{what}: python/ltrain_models.py lists {} entries, ltrain has {} (first extra: {:?})",
        python.len(),
        ltrain.len(),
        python.get(ltrain.len()).or(ltrain.get(python.len()))
    );
}

fn config(model: ModelKind, width: ExpertWidth, experts: usize) -> TrainConfig {
    TrainConfig {
        model,
        expert_width: width,
        experts,
        ..TrainConfig::default()
    }
}

#[test]
fn python_key_lists_match_the_state_dicts_ltrain_builds() {
    let cases = [
        (
            ModelKind::Resnet32,
            ExpertWidth::Reduced,
            3,
            10,
            "resnet32",
            "reduced",
        ),
        (
            ModelKind::Resnet32,
            ExpertWidth::Full,
            3,
            100,
            "resnet32",
            "full",
        ),
        (
            ModelKind::Resnet32,
            ExpertWidth::Full,
            1,
            7,
            "resnet32",
            "full",
        ),
        (
            ModelKind::Resnet50,
            ExpertWidth::Reduced,
            3,
            1000,
            "resnet50",
            "reduced",
        ),
        (
            ModelKind::Resnext50_32x4d,
            ExpertWidth::Full,
            2,
            1000,
            "resnext50_32x4d",
            "full",
        ),
    ];
    let configs: Vec<Value> = cases
        .iter()
        .map(|&(_, _, experts, classes, kind, width)| {
            json!({"kind": kind, "num_classes": classes, "experts": experts, "expert_width": width})
        })
        .collect();
    let expected = python_key_lists(&configs);
    let be = CpuBackend::new(Some(2)).unwrap();
    for ((model, width, experts, classes, ..), (python, cfg)) in
        cases.into_iter().zip(expected.iter().zip(&configs))
    {
        let net =
            MultiExpertNet::from_config(&be, &config(model, width, experts), classes).unwrap();
        let ltrain: Vec<Entry> = net
            .state_dict(&be)
            .unwrap()
            .into_iter()
            .map(|t| (t.name, t.shape, t.data.dtype_name().to_string()))
            .collect();
        assert_same_entries(&cfg.to_string(), python, &ltrain);
    }
}

/// `ltrain` with the space-separated words of `flags`, then `args` as they are (paths).
fn ltrain_ok(flags: &str, args: &[&str]) {
    run_ok(
        &flags
            .split_whitespace()
            .chain(args.iter().copied())
            .collect::<Vec<_>>(),
    );
}

/// A reduced-width three-expert ResNet-32 trained in `dir/run` with `flags` (data, schedule) and
/// `args`: its `model.safetensors`.
fn train_tiny(dir: &Path, flags: &str, args: &[&str]) -> PathBuf {
    let out = dir.join("run");
    let flags = format!("train --expert-width reduced --threads 2 --quiet {flags}");
    ltrain_ok(&flags, &[args, &["--out", &path_str(&out)]].concat());
    out.join("model.safetensors")
}

/// `(name -> (shape, dtype))` of a safetensors file's header: 8 bytes little-endian length, JSON.
fn header_entries(path: &Path) -> Vec<Entry> {
    let bytes = std::fs::read(path).unwrap();
    let len = u64::from_le_bytes(bytes[..8].try_into().unwrap()) as usize;
    let header: serde_json::Map<String, Value> =
        serde_json::from_slice(&bytes[8..8 + len]).unwrap();
    let mut entries: Vec<Entry> = header
        .into_iter()
        .filter(|(name, _)| name != "__metadata__")
        .map(|(name, t)| {
            let shape = serde_json::from_value(t["shape"].clone()).unwrap();
            (name, shape, t["dtype"].as_str().unwrap().to_string())
        })
        .collect();
    entries.sort();
    entries
}

#[test]
fn python_reads_the_configuration_and_keys_of_a_trained_model_file() {
    let tmp = tempfile::tempdir().unwrap();
    let data = "--synthetic-classes 5 --synthetic-max-per-class 12 --synthetic-test-per-class 2";
    let model = train_tiny(
        tmp.path(),
        &format!("{data} --epochs 1 --batch-size 8"),
        &[],
    );
    let code = "import json, sys, ltrain_models as m\n\
                c = m.describe(sys.argv[1])\n\
                print(json.dumps([c, m.expected_state_dict_shapes(**c)]))";
    let text = python("python3", code, &[path_str(&model)]);
    let (described, mut python): (Value, Vec<Entry>) = serde_json::from_str(&text).unwrap();
    assert_eq!(
        described,
        json!({"kind": "resnet32", "num_classes": 5, "experts": 3, "expert_width": "reduced"})
    );
    python.sort();
    assert_same_entries(
        "the tensors of model.safetensors",
        &python,
        &header_entries(&model),
    );
}

/// Fails unless each PyTorch network's `state_dict()` is `expected_state_dict_shapes` exactly.
const TORCH_KEYS_CHECK: &str = r#"
import ltrain_models as m
for kind, width in [("resnet32", "reduced"), ("resnet32", "full"), ("resnet50", None),
                    ("resnext50_32x4d", None)]:
    net = m.MultiExpertNet(kind, 10, 3, width)
    got = [(k, list(v.shape), "I64" if v.dtype == m.torch.int64 else "F32")
           for k, v in net.state_dict().items()]
    want = [tuple(e) for e in m.expected_state_dict_shapes(kind, 10, 3, width)]
    assert got == want, (kind, width, [g for g, w in zip(got, want) if g != w][:3])
"#;

/// A Python that imports torch, or `None` (the test is then skipped).
fn torch_python() -> Option<String> {
    let has_torch = |py: &str| {
        Command::new(py)
            .args(["-c", "import torch"])
            .output()
            .is_ok_and(|o| o.status.success())
    };
    if let Ok(py) = std::env::var("LTRAIN_TORCH_PYTHON") {
        assert!(
            has_torch(&py),
            "LTRAIN_TORCH_PYTHON={py} cannot import torch"
        );
        return Some(py);
    }
    let venv = std::env::var_os("LTRAIN_TORCH_VENV")
        .map(PathBuf::from)
        .or_else(|| {
            std::env::var_os("HOME").map(|h| Path::new(&h).join(".cache/ltrain/torch-venv"))
        });
    let venv_python = venv.map(|v| path_str(&v.join("bin/python")));
    std::iter::once("python3".to_string())
        .chain(venv_python)
        .find(|py| has_torch(py))
}

/// `(label, prediction, confidence, expert predictions)` per row of a predictions CSV (columns
/// `index,label,prediction,confidence,expert0,...`; others are ignored).
fn predictions(path: &Path) -> Vec<(String, String, f64, Vec<String>)> {
    let text = std::fs::read_to_string(path).unwrap();
    let mut lines = text.lines();
    let head: Vec<&str> = lines.next().unwrap().split(',').collect();
    assert_eq!(
        head[..4],
        ["index", "label", "prediction", "confidence"],
        "{path:?}"
    );
    let experts = head[4..]
        .iter()
        .take_while(|c| {
            c.strip_prefix("expert")
                .is_some_and(|k| k.parse::<usize>().is_ok())
        })
        .count();
    assert!(experts > 0, "{path:?}: no expert columns in {head:?}");
    lines
        .map(|l| {
            let f: Vec<&str> = l.split(',').collect();
            let per_expert = f[4..4 + experts].iter().map(|s| s.to_string()).collect();
            (f[1].into(), f[2].into(), f[3].parse().unwrap(), per_expert)
        })
        .collect()
}

#[test]
fn pytorch_loads_a_trained_model_strictly_and_predicts_as_ltrain_eval() {
    let Some(py) = torch_python() else {
        println!(
            "skipped: no Python with PyTorch (set LTRAIN_TORCH_PYTHON, or make the venv of \
             scripts/bench-vs-pytorch.sh)"
        );
        return;
    };
    // Every PyTorch module has exactly the keys, shapes and dtypes of the plain-Python list.
    python(&py, TORCH_KEYS_CHECK, &[]);

    // A tiny CIFAR-10 record file (62 synthetic images), trained on and tested on. Batches of 4
    // over 2 epochs at a low learning rate leave BN's running statistics close enough to the
    // batches' for an unsaturated softmax: the confidences differ from image to image and say
    // something when compared.
    let tmp = tempfile::tempdir().unwrap();
    let records = path_str(&tmp.path().join("lt.bin"));
    let data = "--synthetic-classes 10 --synthetic-max-per-class 12 --synthetic-test-per-class 2";
    ltrain_ok(
        &format!("data cut --imbalance 4 {data}"),
        &["--output", &records],
    );
    let flags = "--dataset cifar10-lt --imbalance none --epochs 2 --batch-size 4 --lr 0.005";
    let files = ["--train-file", &records, "--test-file", &records];
    let model = train_tiny(tmp.path(), flags, &files);
    let checkpoint = path_str(&model.with_file_name("checkpoint.safetensors"));
    let ltrain_csv = tmp.path().join("ltrain.csv");
    let csv = path_str(&ltrain_csv);
    ltrain_ok(
        "eval --threads 2",
        &["--checkpoint", &checkpoint, "--predictions", &csv],
    );

    // `python ltrain_models.py` loads model.safetensors strictly and writes the same CSV.
    let torch_csv = tmp.path().join("torch.csv");
    let out = Command::new(&py)
        .arg(python_dir().join("ltrain_models.py"))
        .args([path_str(&model), "--test-file".into(), records.clone()])
        .args(["--predictions".into(), path_str(&torch_csv)])
        .env("PYTHONDONTWRITEBYTECODE", "1")
        .env("OMP_NUM_THREADS", "2")
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "ltrain_models.py failed:\n{}",
        stderr(&out)
    );
    println!("PyTorch ({py}): {}", stdout(&out).trim());

    let (theirs, ours) = (predictions(&torch_csv), predictions(&ltrain_csv));
    assert_eq!(theirs.len(), ours.len(), "rows of torch.csv and ltrain.csv");
    assert!(!ours.is_empty());
    for (i, (t, l)) in theirs.iter().zip(&ours).enumerate() {
        assert_eq!(
            (&t.0, &t.1, &t.3),
            (&l.0, &l.1, &l.3),
            "image {i}: PyTorch vs ltrain eval"
        );
        assert!(
            (t.2 - l.2).abs() < 1e-4,
            "image {i}: confidence {} in PyTorch, {} in ltrain",
            t.2,
            l.2
        );
    }
}
