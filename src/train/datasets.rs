//! Opens the training and test sets a configuration names, as [`ImageSource`]s.

use super::source::ImageSource;
use crate::augment::Level;
use crate::config::{DatasetKind, TrainConfig};
use crate::data::cifar::{self, CifarVariant};
use crate::data::imagenet::{self, BadImagePolicy, ImageNetSet};
use crate::data::longtail::long_tail;
use crate::data::synthetic::{self, SyntheticConfig};
use crate::data::ImageSet;
use anyhow::{bail, Context, Result};

/// The opened data of a run.
pub struct Datasets {
    pub train: Box<dyn ImageSource + Send>,
    pub test: Box<dyn ImageSource + Send>,
    /// How the long-tailed training set was cut, for the report.
    pub long_tail: String,
}

impl ImageSource for ImageSet {
    fn len(&self) -> usize {
        self.n
    }
    fn labels(&self) -> &[u32] {
        &self.labels
    }
    fn num_classes(&self) -> usize {
        self.classes
    }
    fn image_hw(&self) -> (usize, usize) {
        (self.h, self.w)
    }
    fn load(&self, indices: &[usize], level: Level, seed: u64, epoch: usize) -> Result<Vec<f32>> {
        Ok(self.batch(indices, level, seed, epoch))
    }
    fn as_image_set(&self) -> Option<&ImageSet> {
        Some(self)
    }
}

/// The synthetic set a configuration describes.
pub fn synthetic_config(cfg: &TrainConfig) -> SyntheticConfig {
    SyntheticConfig {
        classes: cfg.synthetic_classes,
        n_max: cfg.synthetic_max_per_class,
        rho: cfg.imbalance.ratio().unwrap_or(1.0),
        test_per_class: cfg.synthetic_test_per_class,
        seed: cfg.seed,
        ..SyntheticConfig::default()
    }
}

/// Loads the CIFAR training (full, before the long-tail cut) and test sets named by the config.
pub fn load_cifar(cfg: &TrainConfig, variant: CifarVariant) -> Result<(ImageSet, ImageSet)> {
    let official = match &cfg.data_dir {
        Some(dir) => Some(cifar::load_official(variant, dir)?),
        None => None,
    };
    let train = match (&cfg.train_file, &official) {
        (Some(file), _) => cifar::load_record_file(variant, file)?,
        (None, Some(data)) => data.train.clone(),
        (None, None) => bail!(
            "--dataset {}-lt needs --data-dir (the official binary directory or .tar.gz) or --train-file",
            variant.name()
        ),
    };
    let test = match (&cfg.test_file, official) {
        (Some(file), _) => cifar::load_record_file(variant, file)?,
        (None, Some(data)) => data.test,
        (None, None) => bail!(
            "--dataset {}-lt needs --data-dir or --test-file for the test set",
            variant.name()
        ),
    };
    Ok((train, test))
}

/// Opens the data of a run: the long-tailed training set (cut with the protocol of the
/// `data::longtail` module) and the balanced test set.
pub fn open(cfg: &TrainConfig) -> Result<Datasets> {
    if cfg.dataset == DatasetKind::ImagenetLt {
        return open_imagenet(cfg);
    }
    let (train, test, long_tail) = open_in_memory(cfg)?;
    Ok(Datasets {
        train: Box::new(train),
        test: Box::new(test),
        long_tail,
    })
}

/// The long-tailed training images alone (synthetic and CIFAR), e.g. to cut or preview them.
pub fn open_lt_images(cfg: &TrainConfig) -> Result<ImageSet> {
    if cfg.dataset == DatasetKind::ImagenetLt {
        bail!(
            "imagenet-lt images are read from their list files; this needs synthetic or CIFAR data"
        );
    }
    Ok(open_lt_train(cfg)?.0)
}

/// `(long-tailed train, test, how the cut was made)` of an in-memory dataset.
fn open_in_memory(cfg: &TrainConfig) -> Result<(ImageSet, ImageSet, String)> {
    let variant = match cfg.dataset {
        DatasetKind::Cifar10Lt => CifarVariant::Cifar10,
        DatasetKind::Cifar100Lt => CifarVariant::Cifar100,
        _ => {
            let data = synthetic::generate(&synthetic_config(cfg));
            let how = format!("synthetic, exponential profile rho={}", cfg.imbalance);
            return Ok((data.train, data.test, how));
        }
    };
    let (train, test) = load_cifar(cfg, variant)?;
    let (train, how) = cut(cfg, variant, train)?;
    Ok((train, test, how))
}

/// The long-tailed training set of `train` and how it was made: cut to the configured ratio, or
/// as it is (`--imbalance none`: the file's own profile, described).
fn cut(cfg: &TrainConfig, variant: CifarVariant, train: ImageSet) -> Result<(ImageSet, String)> {
    let Some(rho) = cfg.imbalance.ratio() else {
        let counts = train.class_counts();
        let (max, min) = (
            counts.iter().copied().max().unwrap_or(0),
            counts.iter().copied().min().unwrap_or(0),
        );
        let own = if min > 0 {
            format!("rho = {:.1}", max as f64 / min as f64)
        } else {
            "a class without images".to_string()
        };
        let how = format!(
            "as is (--imbalance none): {} images, {own}, per class {counts:?}",
            train.n
        );
        return Ok((train, how));
    };
    let lt = long_tail(&train, Some(variant), rho, cfg.seed)
        .with_context(|| format!("cutting the rho={rho} long-tailed training set"))?;
    Ok((lt.set, lt.method.to_string()))
}

/// The long-tailed training set and how it was made, without the test set (`ltrain data info` on a
/// training file alone).
pub fn open_lt_train(cfg: &TrainConfig) -> Result<(ImageSet, String)> {
    let variant = match cfg.dataset {
        DatasetKind::Cifar10Lt => CifarVariant::Cifar10,
        DatasetKind::Cifar100Lt => CifarVariant::Cifar100,
        DatasetKind::ImagenetLt => bail!(
            "imagenet-lt images are read from their list files; this needs synthetic or CIFAR data"
        ),
        DatasetKind::Synthetic => {
            let (train, _, how) = open_in_memory(cfg)?;
            return Ok((train, how));
        }
    };
    let train = match (&cfg.train_file, &cfg.data_dir) {
        (Some(file), _) => cifar::load_record_file(variant, file)?,
        (None, Some(dir)) => cifar::load_official(variant, dir)?.train,
        (None, None) => bail!(
            "--dataset {}-lt needs --data-dir (the official binary directory or .tar.gz) or --train-file",
            variant.name()
        ),
    };
    cut(cfg, variant, train)
}

/// Whether the configuration names a test set (the synthetic set always has one).
pub fn has_test_set(cfg: &TrainConfig) -> bool {
    match cfg.dataset {
        DatasetKind::Synthetic => true,
        DatasetKind::ImagenetLt => cfg.test_list.is_some() && cfg.data_dir.is_some(),
        _ => cfg.test_file.is_some() || cfg.data_dir.is_some(),
    }
}

/// Opens only the test set (what `ltrain eval` needs).
pub fn open_test(cfg: &TrainConfig) -> Result<Box<dyn ImageSource + Send>> {
    match cfg.dataset {
        DatasetKind::Cifar10Lt | DatasetKind::Cifar100Lt => {
            let variant = if cfg.dataset == DatasetKind::Cifar10Lt {
                CifarVariant::Cifar10
            } else {
                CifarVariant::Cifar100
            };
            let test = match (&cfg.test_file, &cfg.data_dir) {
                (Some(file), _) => cifar::load_record_file(variant, file)?,
                (None, Some(dir)) => cifar::load_official(variant, dir)?.test,
                (None, None) => bail!(
                    "--dataset {}-lt needs --test-file or --data-dir for the test set",
                    variant.name()
                ),
            };
            Ok(Box::new(test))
        }
        _ => Ok(open(cfg)?.test),
    }
}

fn open_imagenet(cfg: &TrainConfig) -> Result<Datasets> {
    let (Some(root), Some(train_list), Some(test_list)) =
        (&cfg.data_dir, &cfg.train_list, &cfg.test_list)
    else {
        bail!("--dataset imagenet-lt needs --data-dir, --train-list and --test-list");
    };
    let (train, test) = imagenet::load_lists(root, train_list, test_list)?;
    let policy = if cfg.skip_bad_images {
        BadImagePolicy::Substitute
    } else {
        BadImagePolicy::Fail
    };
    Ok(Datasets {
        train: Box::new(ImageNetSet::new(train, cfg.image_size, policy)),
        test: Box::new(ImageNetSet::new(test, cfg.image_size, policy)),
        long_tail: format!("ImageNet-LT list {}", train_list.display()),
    })
}

impl ImageSource for ImageNetSet {
    fn len(&self) -> usize {
        self.list.len()
    }
    fn labels(&self) -> &[u32] {
        &self.list.labels
    }
    fn num_classes(&self) -> usize {
        self.list.classes
    }
    fn image_hw(&self) -> (usize, usize) {
        (self.recipe.out_h, self.recipe.out_w)
    }
    fn load(&self, indices: &[usize], level: Level, seed: u64, epoch: usize) -> Result<Vec<f32>> {
        self.batch(indices, level, seed, epoch)
    }
    fn load_views_into(
        &self,
        indices: &[usize],
        levels: &[Level],
        seed: u64,
        epoch: usize,
        out: &mut [&mut [f32]],
    ) -> Result<()> {
        self.batch_views_into(indices, levels, seed, epoch, out)
    }
}
