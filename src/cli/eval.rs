//! `ltrain eval`: metrics of a checkpoint on a test set, optionally one CSV row per test image.

use super::args::DataArgs;
use super::device::{dispatch, OnBackend};
use anyhow::{Context, Result};
use clap::Args;
use ltrain::backend::Backend;
use ltrain::config::{CudaGraphs, DeviceKind, TrainConfig};
use ltrain::model::MultiExpertNet;
use ltrain::report::write_atomic;
use ltrain::train::checkpoint::load_checkpoint;
use ltrain::train::datasets;
use ltrain::train::run_state::checkpoint_class_counts;
use ltrain::train::{checkpoint_config, evaluate, test_loader, Evaluation};
use std::fmt::Write as _;
use std::path::PathBuf;

#[derive(Args, Debug)]
pub struct EvalCmd {
    /// A checkpoint written by `ltrain train` (its configuration names the model and the data).
    #[arg(long, value_name = "FILE")]
    pub checkpoint: PathBuf,
    /// Write one row per test image: index,label,prediction,confidence,expert0,expert1,...
    #[arg(long, value_name = "FILE.csv")]
    pub predictions: Option<PathBuf>,
    /// Print the metrics as JSON.
    #[arg(long)]
    pub json: bool,
    #[arg(long, value_enum)]
    pub device: Option<DeviceKind>,
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

pub fn run(cmd: EvalCmd) -> Result<()> {
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
        let mut csv = String::from("index,label,prediction,confidence");
        let experts = eval
            .predictions
            .first()
            .map_or(0, |p| p.expert_predictions.len());
        for k in 0..experts {
            write!(csv, ",expert{k}")?;
        }
        csv.push('\n');
        for (i, p) in eval.predictions.iter().enumerate() {
            write!(csv, "{i},{},{},{:.6}", p.label, p.prediction, p.confidence)?;
            for e in &p.expert_predictions {
                write!(csv, ",{e}")?;
            }
            csv.push('\n');
        }
        write_atomic(path, csv.as_bytes())?;
        eprintln!("predictions written to {}", path.display());
    }
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
        evaluate(be, &model, &mut loader, &counts, cuda_graphs)
    }
}
