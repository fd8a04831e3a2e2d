//! State dicts and safetensors checkpoints: PyTorch names (against the structure of
//! shared/peers/torch_resnet32_3e.py and torchvision), the raw file format read without our
//! loader, bit-exact round trips, strict loading errors, atomic writes.

use ltrain::backend::cpu::CpuBackend;
use ltrain::backend::Backend;
use ltrain::model::MultiExpertNet;
use ltrain::nn::{NamedTensor, TensorData};
use ltrain::train::checkpoint::{load_checkpoint, load_model, save_checkpoint};
use rand::rngs::StdRng;
use rand::SeedableRng;
use rand_distr::{Distribution, StandardNormal};
use std::collections::BTreeMap;
use std::path::Path;

type Be = CpuBackend;

fn backend() -> Be {
    CpuBackend::new(Some(2)).expect("cpu backend")
}

fn randn(rng: &mut StdRng, n: usize) -> Vec<f32> {
    (0..n).map(|_| StandardNormal.sample(rng)).collect()
}

const BN: [&str; 5] = [
    "weight",
    "bias",
    "running_mean",
    "running_var",
    "num_batches_tracked",
];

/// `prefix.{conv1,bn1,conv2,bn2}.*` of the peer's `BasicBlock`, in registration order.
fn basic_block_names(prefix: &str, out: &mut Vec<String>) {
    for (conv, bn) in [("conv1", "bn1"), ("conv2", "bn2")] {
        out.push(format!("{prefix}.{conv}.weight"));
        out.extend(BN.iter().map(|b| format!("{prefix}.{bn}.{b}")));
    }
}

/// The state-dict keys of the peer's `ResNet32x3(num_classes, experts)`, in `state_dict()` order.
fn peer_resnet32_names(experts: usize) -> Vec<String> {
    let mut names = vec!["shared.conv1.weight".to_string()];
    names.extend(BN.iter().map(|b| format!("shared.bn1.{b}")));
    for i in 0..5 {
        basic_block_names(&format!("shared.layer1.{i}"), &mut names);
    }
    for k in 0..experts {
        for layer in ["layer2", "layer3"] {
            for i in 0..5 {
                basic_block_names(&format!("experts.{k}.{layer}.{i}"), &mut names);
            }
        }
        names.push(format!("experts.{k}.fc.weight"));
        names.push(format!("experts.{k}.fc.bias"));
    }
    names
}

fn find<'a>(tensors: &'a [NamedTensor], name: &str) -> &'a NamedTensor {
    tensors
        .iter()
        .find(|t| t.name == name)
        .unwrap_or_else(|| panic!("no tensor {name}"))
}

#[test]
fn resnet32_state_dict_names_match_the_pytorch_peer() {
    let be = backend();
    let model = MultiExpertNet::resnet32(&be, 10, 3, (32, 64), 0).unwrap();
    let state = model.state_dict(&be).unwrap();
    let names: Vec<String> = state.iter().map(|t| t.name.clone()).collect();
    let expected = peer_resnet32_names(3);
    assert_eq!(names.len(), 432);
    assert_eq!(names, expected);
    assert_eq!(find(&state, "shared.conv1.weight").shape, vec![16, 3, 3, 3]);
    assert_eq!(
        find(&state, "experts.1.layer2.0.conv1.weight").shape,
        vec![32, 16, 3, 3]
    );
    assert_eq!(
        find(&state, "experts.2.layer3.4.bn2.running_var").shape,
        vec![64]
    );
    assert_eq!(find(&state, "experts.2.fc.weight").shape, vec![10, 64]);
    let counter = find(&state, "shared.layer1.3.bn2.num_batches_tracked");
    assert_eq!(
        (counter.shape.clone(), counter.data.clone()),
        (vec![], TensorData::I64(vec![0]))
    );
    // The parameters come in the same order as the peer's model.parameters().
    let params: Vec<String> = model.params().iter().map(|p| p.name.clone()).collect();
    let expected_params: Vec<String> = expected
        .into_iter()
        .filter(|n| !n.contains("running_") && !n.ends_with("num_batches_tracked"))
        .collect();
    assert_eq!(params, expected_params);
}

#[test]
fn resnet50_and_resnext50_state_dict_follow_torchvision() {
    let be = backend();
    let r50 = MultiExpertNet::resnet50(&be, 1000, 1, 0).unwrap();
    let state = r50.state_dict(&be).unwrap();
    // torchvision's resnet50().state_dict() has 320 entries: 53 convs, 53 BNs x 5, fc x 2.
    assert_eq!(state.len(), 320);
    assert_eq!(find(&state, "shared.conv1.weight").shape, vec![64, 3, 7, 7]);
    assert_eq!(
        find(&state, "shared.layer1.0.downsample.0.weight").shape,
        vec![256, 64, 1, 1]
    );
    assert_eq!(
        find(&state, "shared.layer1.0.downsample.1.running_var").shape,
        vec![256]
    );
    assert_eq!(
        find(&state, "shared.layer2.0.conv2.weight").shape,
        vec![128, 128, 3, 3]
    );
    assert_eq!(
        find(&state, "experts.0.layer3.0.downsample.0.weight").shape,
        vec![1024, 512, 1, 1]
    );
    assert_eq!(
        find(&state, "experts.0.layer3.5.conv3.weight").shape,
        vec![1024, 256, 1, 1]
    );
    assert_eq!(
        find(&state, "experts.0.layer4.2.bn3.weight").shape,
        vec![2048]
    );
    assert_eq!(find(&state, "experts.0.fc.weight").shape, vec![1000, 2048]);
    assert!(state
        .iter()
        .all(|t| !t.name.contains("layer1.1.downsample")));

    let rx50 = MultiExpertNet::resnext50_32x4d(&be, 1000, 1, 0).unwrap();
    let state = rx50.state_dict(&be).unwrap();
    assert_eq!(state.len(), 320);
    // Widths 128 (layer1) and 1024 (layer4) in 32 groups: 4 and 32 input channels per group.
    assert_eq!(
        find(&state, "shared.layer1.0.conv2.weight").shape,
        vec![128, 4, 3, 3]
    );
    assert_eq!(
        find(&state, "experts.0.layer4.0.conv2.weight").shape,
        vec![1024, 32, 3, 3]
    );
}

/// A trained-a-little model, so running statistics and counters are not at their initial values.
fn stepped_model(be: &Be, seed: u64) -> MultiExpertNet<Be> {
    let mut model = MultiExpertNet::resnet32(be, 4, 3, (24, 48), seed).unwrap();
    let mut rng = StdRng::seed_from_u64(seed);
    for _ in 0..2 {
        // Three views of two 8x8 samples, stacked.
        let x = be.upload(&randn(&mut rng, 3 * 2 * 3 * 8 * 8)).unwrap();
        model.forward_train(be, x, 3, 2, 8, 8).unwrap();
    }
    model
}

fn bits(t: &NamedTensor) -> Vec<u64> {
    match &t.data {
        TensorData::F32(v) => v.iter().map(|x| x.to_bits() as u64).collect(),
        TensorData::I64(v) => v.iter().map(|x| *x as u64).collect(),
    }
}

#[test]
fn save_load_round_trip_is_bit_exact() {
    let be = backend();
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("ckpt.safetensors");
    let model = stepped_model(&be, 1);
    let mut tensors = model.state_dict(&be).unwrap();
    assert_eq!(
        find(&tensors, "shared.bn1.num_batches_tracked").data,
        TensorData::I64(vec![2])
    );
    tensors.push(NamedTensor::f32(
        "optimizer.shared.conv1.weight.momentum_buffer",
        vec![16, 3, 3, 3],
        vec![0.25; 432],
    ));
    let mut meta = BTreeMap::new();
    meta.insert("epoch".to_string(), "7".to_string());
    meta.insert(
        "config".to_string(),
        "lr = 0.1\n[x]\ny = \"z\"\n".to_string(),
    );
    save_checkpoint(&path, &tensors, &meta).unwrap();

    let (loaded, loaded_meta) = load_checkpoint(&path).unwrap();
    assert_eq!(loaded_meta, meta);
    assert_eq!(loaded.len(), tensors.len());
    for t in &tensors {
        let u = find(&loaded, &t.name);
        assert_eq!(u.shape, t.shape, "{}", t.name);
        assert_eq!(bits(u), bits(t), "{}", t.name);
    }

    // Into a differently initialised model: same state, same evaluation output, bit for bit;
    // the optimizer tensor is handed back untouched.
    let mut other = MultiExpertNet::resnet32(&be, 4, 3, (24, 48), 99).unwrap();
    let (rest, meta2) = load_model(&be, &mut other, &path).unwrap();
    assert_eq!(meta2, meta);
    assert_eq!(rest.len(), 1);
    assert_eq!(
        rest[0].name,
        "optimizer.shared.conv1.weight.momentum_buffer"
    );
    let again = other.state_dict(&be).unwrap();
    let original = model.state_dict(&be).unwrap();
    assert_eq!(again.len(), original.len());
    for (a, b) in again.iter().zip(&original) {
        assert_eq!((a.name.as_str(), bits(a)), (b.name.as_str(), bits(b)));
    }
    let mut rng = StdRng::seed_from_u64(3);
    let x = be.upload(&randn(&mut rng, 2 * 3 * 8 * 8)).unwrap();
    let p1 = be
        .download(&model.forward_eval(&be, &x, 2, 8, 8).unwrap().probs)
        .unwrap();
    let p2 = be
        .download(&other.forward_eval(&be, &x, 2, 8, 8).unwrap().probs)
        .unwrap();
    assert_eq!(
        p1.iter().map(|v| v.to_bits()).collect::<Vec<_>>(),
        p2.iter().map(|v| v.to_bits()).collect::<Vec<_>>()
    );
}

/// Reads the safetensors header the way any other reader does (8-byte little-endian length +
/// JSON), so the layout PyTorch sees is checked without our loader.
#[test]
fn file_layout_is_what_pytorch_expects() {
    let be = backend();
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("model.safetensors");
    let model = stepped_model(&be, 2);
    let mut meta = BTreeMap::new();
    meta.insert("epoch".to_string(), "3".to_string());
    save_checkpoint(&path, &model.state_dict(&be).unwrap(), &meta).unwrap();
    let bytes = std::fs::read(&path).unwrap();
    let n = u64::from_le_bytes(bytes[..8].try_into().unwrap()) as usize;
    let header: serde_json::Value = serde_json::from_slice(&bytes[8..8 + n]).unwrap();
    let entry = |name: &str| {
        header
            .get(name)
            .unwrap_or_else(|| panic!("no {name}"))
            .clone()
    };
    let counter = entry("experts.2.layer3.4.bn2.num_batches_tracked");
    assert_eq!(counter["dtype"], "I64");
    assert_eq!(counter["shape"], serde_json::json!([]));
    let conv = entry("shared.conv1.weight");
    assert_eq!(conv["dtype"], "F32");
    assert_eq!(conv["shape"], serde_json::json!([16, 3, 3, 3]));
    assert_eq!(
        entry("experts.0.fc.weight")["shape"],
        serde_json::json!([4, 48])
    );
    assert_eq!(header["__metadata__"]["epoch"], "3");
    // The bytes of one tensor are its values, little-endian, row-major.
    let offsets = &conv["data_offsets"];
    let (start, end) = (
        offsets[0].as_u64().unwrap() as usize,
        offsets[1].as_u64().unwrap() as usize,
    );
    let raw = &bytes[8 + n + start..8 + n + end];
    let values: Vec<f32> = raw
        .chunks_exact(4)
        .map(|b| f32::from_le_bytes(b.try_into().unwrap()))
        .collect();
    assert_eq!(values, be.download(&model.params()[0].value).unwrap());
    let counter_offsets = &counter["data_offsets"];
    let start = counter_offsets[0].as_u64().unwrap() as usize;
    let raw = &bytes[8 + n + start..8 + n + start + 8];
    assert_eq!(i64::from_le_bytes(raw.try_into().unwrap()), 2);
}

fn message(err: anyhow::Error) -> String {
    format!("{err:#}")
}

#[test]
fn loading_errors_name_the_file_and_the_tensor() {
    let be = backend();
    let dir = tempfile::tempdir().unwrap();
    let model = stepped_model(&be, 3);
    let state = model.state_dict(&be).unwrap();
    let meta = BTreeMap::new();

    // Wrong shape: a checkpoint with 4 classes into a model with 5.
    let path = dir.path().join("four_classes.safetensors");
    save_checkpoint(&path, &state, &meta).unwrap();
    let mut five = MultiExpertNet::resnet32(&be, 5, 3, (24, 48), 0).unwrap();
    let before = five.state_dict(&be).unwrap();
    let err = message(load_model(&be, &mut five, &path).unwrap_err());
    assert!(err.contains("four_classes.safetensors"), "{err}");
    assert!(
        err.contains("experts.0.fc.weight") && err.contains("[4, 48]") && err.contains("[5, 48]"),
        "{err}"
    );
    // A failed load leaves the model as it was.
    assert_eq!(five.state_dict(&be).unwrap(), before);

    // Missing tensor.
    let path = dir.path().join("missing.safetensors");
    let without: Vec<NamedTensor> = state
        .iter()
        .filter(|t| t.name != "experts.1.layer2.3.bn1.running_mean")
        .cloned()
        .collect();
    save_checkpoint(&path, &without, &meta).unwrap();
    let mut same = MultiExpertNet::resnet32(&be, 4, 3, (24, 48), 0).unwrap();
    let err = message(load_model(&be, &mut same, &path).unwrap_err());
    assert!(
        err.contains("missing.safetensors") && err.contains("experts.1.layer2.3.bn1.running_mean"),
        "{err}"
    );

    // Unexpected tensors: three experts into a two-expert model.
    let path = dir.path().join("three.safetensors");
    save_checkpoint(&path, &state, &meta).unwrap();
    let mut two = MultiExpertNet::resnet32(&be, 4, 2, (24, 48), 0).unwrap();
    let err = message(load_model(&be, &mut two, &path).unwrap_err());
    assert!(
        err.contains("122 unexpected") && err.contains("experts.2.fc.weight"),
        "{err}"
    );

    // Wrong dtype for a counter.
    let path = dir.path().join("dtype.safetensors");
    let retyped: Vec<NamedTensor> = state
        .iter()
        .map(|t| match &t.data {
            TensorData::I64(v) if t.name == "shared.bn1.num_batches_tracked" => {
                NamedTensor::f32(t.name.clone(), vec![], vec![v[0] as f32])
            }
            _ => t.clone(),
        })
        .collect();
    save_checkpoint(&path, &retyped, &meta).unwrap();
    let err = message(load_model(&be, &mut same, &path).unwrap_err());
    assert!(
        err.contains("shared.bn1.num_batches_tracked") && err.contains("I64"),
        "{err}"
    );

    // Not a checkpoint at all, and no file.
    let path = dir.path().join("garbage.safetensors");
    std::fs::write(&path, b"this is not a safetensors file").unwrap();
    let err = message(load_checkpoint(&path).unwrap_err());
    assert!(
        err.contains("garbage.safetensors") && err.contains("not a safetensors"),
        "{err}"
    );
    let path = dir.path().join("absent.safetensors");
    let err = message(load_checkpoint(&path).unwrap_err());
    assert!(err.contains("absent.safetensors"), "{err}");
}

fn entries(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    names
}

#[test]
fn atomic_write_leaves_no_temporary_or_partial_file() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("ckpt.safetensors");
    let meta = BTreeMap::new();
    let first = vec![NamedTensor::f32("a", vec![2, 2], vec![1.0, 2.0, 3.0, 4.0])];
    save_checkpoint(&path, &first, &meta).unwrap();
    assert_eq!(entries(dir.path()), vec!["ckpt.safetensors"]);

    // Overwriting replaces the whole content.
    let second = vec![NamedTensor::f32("b", vec![3], vec![5.0, 6.0, 7.0])];
    save_checkpoint(&path, &second, &meta).unwrap();
    assert_eq!(entries(dir.path()), vec!["ckpt.safetensors"]);
    assert_eq!(load_checkpoint(&path).unwrap().0, second);

    // A save that fails (the target is a directory, so the final rename fails) cleans up its
    // temporary file and leaves no file at the target.
    let blocked = dir.path().join("blocked.safetensors");
    std::fs::create_dir(&blocked).unwrap();
    std::fs::write(blocked.join("keep"), b"x").unwrap();
    assert!(save_checkpoint(&blocked, &first, &meta).is_err());
    assert_eq!(
        entries(dir.path()),
        vec!["blocked.safetensors", "ckpt.safetensors"]
    );
    assert!(blocked.is_dir());

    // Inconsistent tensors are refused before anything is written; the old file stays intact.
    let bad = vec![NamedTensor::f32("a", vec![2, 2], vec![1.0])];
    let err = save_checkpoint(&path, &bad, &meta).unwrap_err();
    assert!(err.to_string().contains("`a`"), "{err}");
    assert_eq!(load_checkpoint(&path).unwrap().0, second);
    assert_eq!(
        entries(dir.path()),
        vec!["blocked.safetensors", "ckpt.safetensors"]
    );

    // A missing directory is an error, not a panic.
    assert!(save_checkpoint(&dir.path().join("no/such/dir/c.safetensors"), &first, &meta).is_err());
}

#[test]
fn the_same_checkpoint_is_the_same_bytes() {
    // safetensors keeps metadata in a HashMap, whose order differs from map to map.
    let dir = tempfile::tempdir().unwrap();
    let tensors = vec![
        NamedTensor::f32("b", vec![2], vec![1.0, 2.0]),
        NamedTensor::f32("a", vec![3], vec![3.0, 4.0, 5.0]),
    ];
    let meta: BTreeMap<String, String> = (0..16)
        .map(|i| (format!("ltrain.key{i}"), format!("value {i}")))
        .collect();
    let written: Vec<Vec<u8>> = (0..4)
        .map(|i| {
            let path = dir.path().join(format!("c{i}.safetensors"));
            save_checkpoint(&path, &tensors, &meta).unwrap();
            std::fs::read(&path).unwrap()
        })
        .collect();
    assert!(written.windows(2).all(|w| w[0] == w[1]));
    // Still a file safetensors (and ltrain) reads.
    let (read, read_meta) = load_checkpoint(&dir.path().join("c0.safetensors")).unwrap();
    assert_eq!(read.len(), 2);
    assert_eq!(read_meta, meta);
}
