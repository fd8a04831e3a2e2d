//! `ltrain data`: per-class counts and many/medium/few membership, LT subsets as record files, and
//! a PNG grid of what each expert's augmentation level does.

use super::args::DataArgs;
use anyhow::{bail, Result};
use clap::{Args, Subcommand, ValueEnum};
use ltrain::config::{DatasetKind, TrainConfig};
use ltrain::data::cifar::{self, CifarVariant};
use ltrain::data::download::{self, Source};
use ltrain::data::info::DatasetInfo;
use ltrain::data::preview::preview_set;
use ltrain::data::ImageSet;
use ltrain::train::datasets;
use std::path::{Path, PathBuf};

#[derive(Subcommand, Debug)]
pub enum DataCmd {
    /// Per-class training counts, imbalance and the many/medium/few split.
    Info(InfoCmd),
    /// Write the long-tailed training subset as a CIFAR record file (e.g. to carry a small copy to a
    /// GPU machine).
    Cut(CutCmd),
    /// A PNG grid: a few training images under each augmentation level (what each expert sees).
    Preview(PreviewCmd),
    /// Download the official CIFAR binary archive (checked by size and md5) into the cache
    /// directory, or --to DIR; prints its path. Nothing is fetched if it is already there.
    Download(DownloadCmd),
}

#[derive(Args, Debug)]
pub struct DownloadCmd {
    /// Which archive: cifar10 (cifar-10-binary.tar.gz) or cifar100 (cifar-100-binary.tar.gz).
    #[arg(value_enum)]
    pub dataset: DownloadSet,
    /// Directory for the archive [default: $XDG_CACHE_HOME/ltrain, else ~/.cache/ltrain].
    #[arg(long, value_name = "DIR")]
    pub to: Option<PathBuf>,
    /// No progress or messages on stderr (the archive's path is still printed on stdout).
    #[arg(long, short)]
    pub quiet: bool,
}

#[derive(Clone, Copy, Debug, ValueEnum)]
pub enum DownloadSet {
    #[value(alias = "cifar10-lt")]
    Cifar10,
    #[value(alias = "cifar100-lt")]
    Cifar100,
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
    apply_download(data.download, &mut cfg, true, false)?;
    cfg.validate()?;
    Ok(cfg)
}

/// `--download` (train, eval, data): for CIFAR, makes sure the official archive is where the run
/// reads it and points `data_dir` at it. Where: the given `--data-dir FILE.tar.gz` itself; inside
/// a given `--data-dir DIR` (created if missing; nothing is fetched if DIR already holds the
/// unpacked official folder); with no `--data-dir`, the download cache. Nothing is fetched when
/// record files already give every set needed (`needs_train`: the training set too).
pub fn apply_download(
    download: bool,
    cfg: &mut TrainConfig,
    needs_train: bool,
    quiet: bool,
) -> Result<()> {
    if !download {
        return Ok(());
    }
    let variant = match cfg.dataset {
        DatasetKind::Cifar10Lt => CifarVariant::Cifar10,
        DatasetKind::Cifar100Lt => CifarVariant::Cifar100,
        _ => bail!(
            "--download fetches the CIFAR-10/100 binary archives; the dataset here is {} (use \
             --dataset cifar10-lt or cifar100-lt)",
            dataset_name(cfg)
        ),
    };
    if cfg.test_file.is_some() && (!needs_train || cfg.train_file.is_some()) {
        if !quiet {
            eprintln!("ltrain: --download: nothing to fetch, the record files given hold the data");
        }
        return Ok(());
    }
    let opts = download::Options { quiet };
    let archive = match cfg.data_dir.clone() {
        None => download::ensure_cifar(variant, &download::cache_dir()?, &opts)?,
        Some(file) if is_archive_name(&file) => {
            let source = Source::cifar(variant);
            let outcome = download::fetch(&source, &file, &opts)?;
            download::report(outcome, &source, &file, &opts);
            file
        }
        Some(file) if file.is_file() => bail!(
            "--download with --data-dir {}: that is a file but not a .tar.gz / .tgz archive; give \
             a directory to download into or the archive's path",
            file.display()
        ),
        Some(dir) => {
            let unpacked = [dir.clone(), dir.join(variant.official_dir())]
                .into_iter()
                .find(|d| d.join(variant.test_file()).is_file());
            if let Some(found) = unpacked {
                if !quiet {
                    eprintln!(
                        "ltrain: --download: {} already holds the unpacked {} files, not downloading",
                        found.display(),
                        variant.name()
                    );
                }
                return Ok(());
            }
            download::ensure_cifar(variant, &dir, &opts)?
        }
    };
    cfg.data_dir = Some(archive);
    Ok(())
}

fn is_archive_name(path: &Path) -> bool {
    let name = path.to_string_lossy();
    name.ends_with(".tar.gz") || name.ends_with(".tgz")
}

fn imbalance_label(cfg: &TrainConfig) -> String {
    match cfg.imbalance.ratio() {
        Some(rho) => format!("rho={rho}"),
        None => "(the training file as is)".into(),
    }
}

fn dataset_name(cfg: &TrainConfig) -> String {
    match cfg.dataset {
        DatasetKind::Synthetic => "synthetic".into(),
        DatasetKind::Cifar10Lt => format!("cifar10-lt {}", imbalance_label(cfg)),
        DatasetKind::Cifar100Lt => format!("cifar100-lt {}", imbalance_label(cfg)),
        DatasetKind::ImagenetLt => "imagenet-lt".into(),
    }
}

pub fn run(cmd: DataCmd) -> Result<()> {
    match cmd {
        DataCmd::Download(c) => {
            let variant = match c.dataset {
                DownloadSet::Cifar10 => CifarVariant::Cifar10,
                DownloadSet::Cifar100 => CifarVariant::Cifar100,
            };
            let dir = match c.to {
                Some(dir) => dir,
                None => download::cache_dir()?,
            };
            let opts = download::Options { quiet: c.quiet };
            let archive = download::ensure_cifar(variant, &dir, &opts)?;
            println!("{}", archive.display());
        }
        DataCmd::Info(c) => {
            let cfg = config_of(&c.data)?;
            // A training file alone is described too; a test set given is read and counted.
            let (train_counts, test_counts, how) = if cfg.dataset == DatasetKind::ImagenetLt {
                let data = datasets::open(&cfg)?;
                (
                    data.train.class_counts(),
                    Some(data.test.class_counts()),
                    data.long_tail,
                )
            } else {
                let (train, how) = datasets::open_lt_train(&cfg)?;
                let test = if datasets::has_test_set(&cfg) {
                    Some(datasets::open_test(&cfg)?.class_counts())
                } else {
                    None
                };
                (train.class_counts(), test, how)
            };
            let info = DatasetInfo::new(&dataset_name(&cfg), &train_counts, test_counts.as_deref());
            if c.json {
                println!("{}", serde_json::to_string_pretty(&info)?);
            } else {
                println!("{}", info.to_table());
                println!("long-tail cut: {how}");
                if test_counts.is_none() {
                    println!("(no test set given: --test-file or --data-dir adds its counts)");
                }
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
