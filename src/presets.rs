//! The paper's settings as named presets. Each `presets/NAME.toml` (embedded in the binary) holds the
//! [`TrainConfig`] keys that differ from the defaults plus a `[paper]` table with the numbers the paper
//! reports for that setting, so a run's report can show them beside its own.

use crate::config::TrainConfig;
use crate::report::setting_line;
use anyhow::{anyhow, Context, Result};
use serde::{Deserialize, Serialize};

/// Numbers the paper reports for one setting, in percent.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PaperReference {
    pub top1: f64,
    pub ece: Option<f64>,
    pub many: Option<f64>,
    pub medium: Option<f64>,
    pub few: Option<f64>,
    /// Where in the paper the numbers come from, e.g. "Table 3".
    pub source: String,
}

/// A preset as listed by `ltrain presets`.
#[derive(Clone, Debug)]
pub struct PresetInfo {
    pub name: &'static str,
    pub description: String,
    pub paper: Option<PaperReference>,
}

const PRESETS: &[(&str, &str)] = &[
    (
        "cifar10-lt-r200",
        include_str!("../presets/cifar10-lt-r200.toml"),
    ),
    (
        "cifar10-lt-r100",
        include_str!("../presets/cifar10-lt-r100.toml"),
    ),
    (
        "cifar10-lt-r50",
        include_str!("../presets/cifar10-lt-r50.toml"),
    ),
    (
        "cifar10-lt-r10",
        include_str!("../presets/cifar10-lt-r10.toml"),
    ),
    (
        "cifar100-lt-r200",
        include_str!("../presets/cifar100-lt-r200.toml"),
    ),
    (
        "cifar100-lt-r100",
        include_str!("../presets/cifar100-lt-r100.toml"),
    ),
    (
        "cifar100-lt-r50",
        include_str!("../presets/cifar100-lt-r50.toml"),
    ),
    (
        "cifar100-lt-r10",
        include_str!("../presets/cifar100-lt-r10.toml"),
    ),
    (
        "cifar100-lt-r100-400ep",
        include_str!("../presets/cifar100-lt-r100-400ep.toml"),
    ),
    (
        "imagenet-lt-resnet50",
        include_str!("../presets/imagenet-lt-resnet50.toml"),
    ),
    (
        "imagenet-lt-resnext50",
        include_str!("../presets/imagenet-lt-resnext50.toml"),
    ),
];

/// Splits a preset file into its configuration (over [`TrainConfig::default`]) and its `[paper]` table.
fn parse_preset(name: &str, text: &str) -> Result<(TrainConfig, Option<PaperReference>)> {
    let mut table: toml::Table =
        toml::from_str(text).with_context(|| format!("preset {name}: not valid TOML"))?;
    let paper = table
        .remove("paper")
        .map(|value| value.try_into::<PaperReference>())
        .transpose()
        .with_context(|| format!("preset {name}: invalid [paper] table"))?;
    let mut config: TrainConfig = toml::Value::Table(table)
        .try_into()
        .with_context(|| format!("preset {name}: not a valid ltrain configuration"))?;
    config.preset = Some(name.to_string());
    Ok((config, paper))
}

pub fn preset_names() -> Vec<&'static str> {
    PRESETS.iter().map(|(name, _)| *name).collect()
}

/// Resolves a preset by name; the error lists the valid names.
pub fn load_preset(name: &str) -> Result<(TrainConfig, Option<PaperReference>)> {
    let (name, text) = PRESETS
        .iter()
        .find(|(known, _)| *known == name)
        .ok_or_else(|| {
            anyhow!(
                "unknown preset `{name}`; valid presets: {}",
                preset_names().join(", ")
            )
        })?;
    parse_preset(name, text)
}

pub fn list_presets() -> Vec<PresetInfo> {
    PRESETS
        .iter()
        .map(|(name, text)| {
            // The embedded files are fixed at build time and every one is parsed by tests/presets.rs.
            let (config, paper) = parse_preset(name, text)
                .unwrap_or_else(|e| panic!("embedded preset {name} is invalid: {e:#}"));
            PresetInfo {
                name,
                description: setting_line(&config),
                paper,
            }
        })
        .collect()
}
