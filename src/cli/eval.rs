//! `ltrain eval`: metrics of a checkpoint on a test set, optionally one CSV row per test image.

use super::args::DataArgs;
use super::device::{dispatch, OnBackend};
use anyhow::{bail, ensure, Context, Result};
use clap::Args;
use ltrain::backend::Backend;
use ltrain::config::{CudaGraphs, DatasetKind, DeviceKind, TrainConfig};
use ltrain::model::MultiExpertNet;
use ltrain::report::write_atomic;
use ltrain::train::checkpoint::load_checkpoint;
use ltrain::train::datasets;
use ltrain::train::evaluate::evaluate_with_probabilities;
use ltrain::train::run_state::checkpoint_class_counts;
use ltrain::train::{checkpoint_config, evaluate, test_loader, Evaluation, Prediction};
use std::fmt::Write as _;
use std::path::{Path, PathBuf};

#[derive(Args, Debug)]
pub struct EvalCmd {
    /// A checkpoint written by `ltrain train` (its configuration names the model and the data).
    #[arg(long, value_name = "FILE")]
    pub checkpoint: PathBuf,
    /// Write one row per test image: index,label,prediction,confidence,expert0,expert1,... (label and
    /// predictions as class numbers; confidence: the max of the experts' averaged softmax; expertK:
    /// expert K's own prediction). Its directory must exist: it is checked before evaluating.
    #[arg(long, value_name = "FILE.csv")]
    pub predictions: Option<PathBuf>,
    /// With --predictions: after the expert columns, one column per class holding the averaged
    /// softmax probability of that class (the probabilities top-1, ECE and confidence come from; a
    /// row sums to 1), headed by the class's name (CIFAR-10: airplane,automobile,...,truck;
    /// CIFAR-100: its fine labels apple,...,worm; otherwise class_0,class_1,...), then
    /// label_name,predicted_name (the label's and the prediction's class names).
    #[arg(long, requires = "predictions")]
    pub probabilities: bool,
    /// Print the metrics as JSON.
    #[arg(long)]
    pub json: bool,
    #[arg(long, value_enum)]
    pub device: Option<DeviceKind>,
    #[arg(long, value_name = "N", help = super::device::GPU_HELP)]
    pub gpu: Option<usize>,
    /// CPU threads (0 = all cores).
    #[arg(long, value_name = "N")]
    pub threads: Option<usize>,
    #[arg(long, value_name = "N")]
    pub batch_size: Option<usize>,
    /// Run each batch size's forward as one captured CUDA graph (auto: on a GPU).
    #[arg(long, value_enum, default_value = "auto")]
    pub cuda_graphs: CudaGraphs,
    #[command(flatten)]
    pub data: DataArgs,
}

pub fn run(mut cmd: EvalCmd) -> Result<()> {
    // Flags and the output's place are checked before the (possibly long) evaluation.
    super::device::choose_gpu(cmd.gpu, &mut cmd.device, None)?;
    if let Some(path) = &cmd.predictions {
        check_writable(path)?;
    }
    let mut cfg = checkpoint_config(&cmd.checkpoint)?;
    cmd.data.apply(&mut cfg);
    super::data::apply_download(cmd.data.download, &mut cfg, false, false)?;
    if let Some(d) = cmd.device {
        cfg.device = d;
    }
    if let Some(t) = cmd.threads {
        cfg.threads = t;
    }
    if let Some(b) = cmd.batch_size {
        cfg.batch_size = b;
    }
    cfg.validate()?;
    let job = EvalJob {
        cfg: &cfg,
        cmd: &cmd,
    };
    let eval = dispatch(cfg.device, cfg.threads, cfg.tf32, job)?;
    if cmd.json {
        println!("{}", serde_json::to_string_pretty(&eval.metrics)?);
    } else {
        println!("{}", eval.metrics.summary_line());
        let per_class: Vec<String> = eval
            .metrics
            .per_class_top1
            .iter()
            .enumerate()
            .map(|(c, a)| format!("{c}:{}", a.map_or("-".to_string(), |a| format!("{a:.1}"))))
            .collect();
        println!("per-class top-1 (%): {}", per_class.join(" "));
    }
    if let Some(path) = &cmd.predictions {
        let csv = predictions_csv(&eval.predictions, cfg.dataset, cmd.probabilities)?;
        write_atomic(path, csv.as_bytes())?;
        eprintln!("predictions written to {}", path.display());
    }
    Ok(())
}

/// The predictions CSV (see `--predictions` and `--probabilities`).
fn predictions_csv(
    predictions: &[Prediction],
    dataset: DatasetKind,
    probabilities: bool,
) -> Result<String> {
    let mut csv = String::from("index,label,prediction,confidence");
    let experts = predictions
        .first()
        .map_or(0, |p| p.expert_predictions.len());
    for k in 0..experts {
        write!(csv, ",expert{k}")?;
    }
    let classes = predictions.first().map_or(0, |p| p.probabilities.len());
    let names = class_names(dataset, classes);
    if probabilities {
        for name in &names {
            write!(csv, ",{}", csv_field(name))?;
        }
        csv.push_str(",label_name,predicted_name");
    }
    csv.push('\n');
    let name = |c: u32| names.get(c as usize).map_or("", String::as_str);
    for (i, p) in predictions.iter().enumerate() {
        write!(csv, "{i},{},{},{:.6}", p.label, p.prediction, p.confidence)?;
        for e in &p.expert_predictions {
            write!(csv, ",{e}")?;
        }
        if probabilities {
            ensure!(
                p.probabilities.len() == classes,
                "image {i}: {} probabilities for {classes} classes",
                p.probabilities.len()
            );
            // The shortest text that reads back as the same f32 (so the row's argmax is the
            // prediction), in exponent form when tiny.
            for &q in &p.probabilities {
                if q == 0.0 || q >= 1e-4 {
                    write!(csv, ",{q}")?;
                } else {
                    write!(csv, ",{q:e}")?;
                }
            }
            write!(
                csv,
                ",{},{}",
                csv_field(name(p.label)),
                csv_field(name(p.prediction))
            )?;
        }
        csv.push('\n');
    }
    Ok(csv)
}

/// The CIFAR-10 classes, in label order (the dataset's `batches.meta.txt`).
const CIFAR10_CLASSES: [&str; 10] = [
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

/// The CIFAR-100 fine labels, in label order (the dataset's `fine_label_names.txt`).
const CIFAR100_CLASSES: [&str; 100] = [
    "apple",
    "aquarium_fish",
    "baby",
    "bear",
    "beaver",
    "bed",
    "bee",
    "beetle",
    "bicycle",
    "bottle",
    "bowl",
    "boy",
    "bridge",
    "bus",
    "butterfly",
    "camel",
    "can",
    "castle",
    "caterpillar",
    "cattle",
    "chair",
    "chimpanzee",
    "clock",
    "cloud",
    "cockroach",
    "couch",
    "crab",
    "crocodile",
    "cup",
    "dinosaur",
    "dolphin",
    "elephant",
    "flatfish",
    "forest",
    "fox",
    "girl",
    "hamster",
    "house",
    "kangaroo",
    "keyboard",
    "lamp",
    "lawn_mower",
    "leopard",
    "lion",
    "lizard",
    "lobster",
    "man",
    "maple_tree",
    "motorcycle",
    "mountain",
    "mouse",
    "mushroom",
    "oak_tree",
    "orange",
    "orchid",
    "otter",
    "palm_tree",
    "pear",
    "pickup_truck",
    "pine_tree",
    "plain",
    "plate",
    "poppy",
    "porcupine",
    "possum",
    "rabbit",
    "raccoon",
    "ray",
    "road",
    "rocket",
    "rose",
    "sea",
    "seal",
    "shark",
    "shrew",
    "skunk",
    "skyscraper",
    "snail",
    "snake",
    "spider",
    "squirrel",
    "streetcar",
    "sunflower",
    "sweet_pepper",
    "table",
    "tank",
    "telephone",
    "television",
    "tiger",
    "tractor",
    "train",
    "trout",
    "tulip",
    "turtle",
    "wardrobe",
    "whale",
    "willow_tree",
    "wolf",
    "woman",
    "worm",
];

/// The names of a dataset's `classes` classes: CIFAR's own, else `class_0`, `class_1`, ...
fn class_names(dataset: DatasetKind, classes: usize) -> Vec<String> {
    let known: &[&str] = match dataset {
        DatasetKind::Cifar10Lt => &CIFAR10_CLASSES,
        DatasetKind::Cifar100Lt => &CIFAR100_CLASSES,
        DatasetKind::Synthetic | DatasetKind::ImagenetLt => &[],
    };
    if known.len() == classes {
        known.iter().map(|s| s.to_string()).collect()
    } else {
        (0..classes).map(|c| format!("class_{c}")).collect()
    }
}

/// A CSV field: quoted (quotes doubled) when it holds a comma, a quote or a line break.
fn csv_field(text: &str) -> String {
    if text.contains([',', '"', '\n', '\r']) {
        format!("\"{}\"", text.replace('"', "\"\""))
    } else {
        text.to_string()
    }
}

/// Fails unless `path` can be written as a file: its directory exists and takes a new file (tried
/// with a file created and removed there, as the CSV is written later).
fn check_writable(path: &Path) -> Result<()> {
    let shown = path.display();
    if path.is_dir() {
        bail!(
            "--predictions {shown} is a directory; give a file in it, e.g. {shown}/predictions.csv"
        );
    }
    let Some(file_name) = path.file_name() else {
        bail!("--predictions {shown} is not a file path");
    };
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d,
        _ => Path::new("."),
    };
    if !dir.is_dir() {
        bail!(
            "--predictions {shown}: the directory {} does not exist (create it first); nothing was \
             evaluated",
            dir.display()
        );
    }
    let probe = dir.join(format!(
        ".{}.probe{}",
        file_name.to_string_lossy(),
        std::process::id()
    ));
    std::fs::File::create(&probe).with_context(|| {
        format!(
            "--predictions {shown}: cannot write in the directory {}; nothing was evaluated",
            dir.display()
        )
    })?;
    let _ = std::fs::remove_file(&probe);
    Ok(())
}

struct EvalJob<'a> {
    cfg: &'a TrainConfig,
    cmd: &'a EvalCmd,
}

impl OnBackend for EvalJob<'_> {
    type Output = Evaluation;
    fn run<B: Backend>(self, be: &B) -> Result<Evaluation> {
        let cuda_graphs = self.cmd.cuda_graphs.enabled(be)?;
        let test = datasets::open_test(self.cfg)?;
        let (tensors, _) = load_checkpoint(&self.cmd.checkpoint)?;
        let mut model = MultiExpertNet::from_config(be, self.cfg, test.num_classes())?;
        model
            .load_state_dict(be, &tensors)
            .with_context(|| format!("loading {}", self.cmd.checkpoint.display()))?;
        let counts = checkpoint_class_counts(&self.cmd.checkpoint)?;
        let mut loader = test_loader(be, test.as_ref(), self.cfg.batch_size)?;
        // Held only when asked for: test images x classes floats.
        if self.cmd.probabilities {
            evaluate_with_probabilities(be, &model, &mut loader, &counts, cuda_graphs)
        } else {
            evaluate(be, &model, &mut loader, &counts, cuda_graphs)
        }
    }
}
