//! `ltrain data`: per-class counts and many/medium/few membership, LT subsets as record files, and
//! a PNG grid of what each expert's augmentation level does.

use super::args::DataArgs;
use anyhow::{bail, Result};
use clap::{Args, Subcommand};
use ltrain::config::{DatasetKind, TrainConfig};
use ltrain::data::cifar::{self, CifarVariant};
use ltrain::data::info::DatasetInfo;
use ltrain::data::preview::preview_set;
use ltrain::data::ImageSet;
use ltrain::train::datasets;
use std::path::PathBuf;

#[derive(Subcommand, Debug)]
pub enum DataCmd {
    /// Per-class training counts, imbalance and the many/medium/few split.
    Info(InfoCmd),
    /// Write the long-tailed training subset as a CIFAR record file (e.g. to carry a small copy to a
    /// GPU machine).
    Cut(CutCmd),
    /// A PNG grid: a few training images under each augmentation level (what each expert sees).
    Preview(PreviewCmd),
}

#[derive(Args, Debug)]
pub struct InfoCmd {
    /// JSON instead of a table.
    #[arg(long)]
    pub json: bool,
    #[command(flatten)]
    pub data: DataArgs,
}

#[derive(Args, Debug)]
pub struct CutCmd {
    /// Output record file.
    #[arg(long, value_name = "FILE")]
    pub output: PathBuf,
    #[command(flatten)]
    pub data: DataArgs,
}

#[derive(Args, Debug)]
pub struct PreviewCmd {
    /// Output PNG.
    #[arg(long, value_name = "FILE.png", default_value = "preview.png")]
    pub output: PathBuf,
    /// Training images shown (one per class, head to tail).
    #[arg(long, value_name = "N", default_value_t = 8)]
    pub samples: usize,
    /// Random draws shown per augmentation level.
    #[arg(long, value_name = "N", default_value_t = 2)]
    pub draws: usize,
    /// Seed of the augmentation draws.
    #[arg(long, value_name = "N", default_value_t = 0)]
    pub seed: u64,
    #[command(flatten)]
    pub data: DataArgs,
}

fn config_of(data: &DataArgs) -> Result<TrainConfig> {
    let mut cfg = TrainConfig::default();
    data.apply(&mut cfg);
    cfg.validate()?;
    Ok(cfg)
}

fn dataset_name(cfg: &TrainConfig) -> String {
    match cfg.dataset {
        DatasetKind::Synthetic => "synthetic".into(),
        DatasetKind::Cifar10Lt => format!("cifar10-lt rho={}", cfg.imbalance),
        DatasetKind::Cifar100Lt => format!("cifar100-lt rho={}", cfg.imbalance),
        DatasetKind::ImagenetLt => "imagenet-lt".into(),
    }
}

pub fn run(cmd: DataCmd) -> Result<()> {
    match cmd {
        DataCmd::Info(c) => {
            let cfg = config_of(&c.data)?;
            let data = datasets::open(&cfg)?;
            let info = DatasetInfo::new(
                &dataset_name(&cfg),
                &data.train.class_counts(),
                Some(&data.test.class_counts()),
            );
            if c.json {
                println!("{}", serde_json::to_string_pretty(&info)?);
            } else {
                println!("{}", info.to_table());
                println!("long-tail cut: {}", data.long_tail);
            }
        }
        DataCmd::Cut(c) => {
            let cfg = config_of(&c.data)?;
            let variant = match cfg.dataset {
                DatasetKind::Cifar10Lt | DatasetKind::Synthetic => CifarVariant::Cifar10,
                DatasetKind::Cifar100Lt => CifarVariant::Cifar100,
                DatasetKind::ImagenetLt => {
                    bail!("data cut writes CIFAR record files; use the list files for imagenet-lt")
                }
            };
            let set = training_images(&cfg)?;
            if cfg.dataset == DatasetKind::Synthetic && set.classes > 10 {
                bail!("data cut: a synthetic set with more than 10 classes does not fit CIFAR-10 records");
            }
            cifar::write_record_file(variant, &set, &c.output)?;
            println!(
                "wrote {} images ({}) to {}",
                set.n,
                dataset_name(&cfg),
                c.output.display()
            );
        }
        DataCmd::Preview(c) => {
            let cfg = config_of(&c.data)?;
            let set = training_images(&cfg)?;
            preview_set(
                &set,
                &preview_indices(&set, c.samples),
                c.draws,
                c.seed,
                &c.output,
            )?;
            println!("wrote {}", c.output.display());
        }
    }
    Ok(())
}

/// The long-tailed training set as raw images (CIFAR and synthetic only).
fn training_images(cfg: &TrainConfig) -> Result<ImageSet> {
    datasets::open_lt_images(cfg)
}

/// One training image per class for `samples` classes spread from head to tail.
fn preview_indices(set: &ImageSet, samples: usize) -> Vec<usize> {
    let shown = samples.clamp(1, set.classes);
    (0..shown)
        .filter_map(|k| {
            let class = (k * set.classes / shown) as u32;
            set.labels.iter().position(|&y| y == class)
        })
        .collect()
}
