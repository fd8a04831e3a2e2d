//! Sweeps: one base configuration, a grid over configuration keys (`--set KEY=V1,V2`) and a list of
//! seeds; every grid point x seed is one ordinary run directory, `DIR/<label>/seed-<s>/`. This module
//! holds the plan (`DIR/sweep.toml`: what a re-run must match to continue the sweep), the grid's
//! expansion into run configurations, and the sweep's report: mean ± sample std over the seeds of
//! each configuration (`summary.json`, `summary.md`, `summary.png`), read from the runs'
//! `report.json`.

use super::{plots, setting_line, write_atomic};
use crate::config::TrainConfig;
use crate::presets::PaperReference;
use anyhow::{bail, Context, Result};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};

/// File names inside a sweep directory.
pub const PLAN_FILE: &str = "sweep.toml";
pub const SUMMARY_JSON: &str = "summary.json";
pub const SUMMARY_MD: &str = "summary.md";
pub const SUMMARY_PNG: &str = "summary.png";
/// A run directory's final report; its presence marks the run finished.
pub const REPORT_FILE: &str = "report.json";

/// Configuration keys that say how, not what, a run trains: a sweep may be continued with other
/// values of them (another device, more threads) and still be the same plan.
pub const EXECUTION_KEYS: &[&str] = &["device", "threads"];

/// The label of the one configuration of a sweep without a grid.
pub const BASE_LABEL: &str = "base";

/// One `--set KEY=V1,V2,...`: a configuration key and the values the grid gives it (each as the
/// configuration holds it, so `tau=1` and `tau=1.0` are the same value).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct GridAxis {
    pub key: String,
    pub values: Vec<toml::Value>,
}

impl GridAxis {
    /// Parses `KEY=V1,V2,...`. Each value is TOML (`0.5`, `true`, `[160, 180]`, `"la"`; a bare word
    /// such as `la-sla` is taken as a string) and is checked by overlaying `KEY = V` onto `base`, so
    /// any [`TrainConfig`] key works with its own type; an unknown key or a value of the wrong type
    /// is an error naming it. Commas inside brackets or quotes do not separate values.
    pub fn parse(spec: &str, base: &TrainConfig) -> Result<Self> {
        let Some((key, list)) = spec.split_once('=') else {
            bail!("--set {spec}: expected KEY=V1,V2,... (e.g. --set tau=1,0.5)");
        };
        let key = key.trim();
        if key.is_empty()
            || !key
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-')
        {
            bail!("--set {spec}: `{key}` is not a configuration key (keys as in config.toml, e.g. tau, lr, loss)");
        }
        match key {
            "seed" => bail!("--set {spec}: the seeds of a sweep are given by --seeds, not --set"),
            "preset" => bail!("--set {spec}: one sweep has one --preset; run one sweep per preset"),
            _ => {}
        }
        let mut values: Vec<toml::Value> = Vec::new();
        for text in split_top_level(list) {
            let text = text.trim();
            if text.is_empty() {
                bail!("--set {spec}: an empty value (expected KEY=V1,V2,...)");
            }
            let value = checked_value(key, text, base)?;
            if values.contains(&value) {
                bail!("--set {spec}: the value {text} is given twice");
            }
            values.push(value);
        }
        Ok(Self {
            key: key.to_string(),
            values,
        })
    }
}

/// Splits `a,b,[c,d],"e,f"` at the commas outside brackets, braces and quotes.
fn split_top_level(list: &str) -> Vec<&str> {
    let (mut depth, mut quote, mut escaped, mut start) = (0i32, None::<char>, false, 0);
    let mut parts = Vec::new();
    for (i, c) in list.char_indices() {
        match quote {
            Some('"') if escaped => escaped = false,
            Some('"') if c == '\\' => escaped = true,
            Some(q) if c == q => quote = None,
            Some(_) => {}
            None => match c {
                '"' | '\'' => quote = Some(c),
                '[' | '{' => depth += 1,
                ']' | '}' => depth -= 1,
                ',' if depth == 0 => {
                    parts.push(&list[start..i]);
                    start = i + 1;
                }
                _ => {}
            },
        }
    }
    parts.push(&list[start..]);
    parts
}

/// The value `text` gives `key`, as the configuration holds it once overlaid onto `base`.
fn checked_value(key: &str, text: &str, base: &TrainConfig) -> Result<toml::Value> {
    let origin = format!("--set {key}={text}");
    let parsed = toml::from_str::<toml::Table>(&format!("{key} = {text}"))
        .ok()
        .and_then(|mut t| t.remove(key));
    let attempt = |value: &toml::Value| -> Result<TrainConfig> {
        let mut table = toml::Table::new();
        table.insert(key.to_string(), value.clone());
        overlay(base, &table, &origin)
    };
    let as_string = toml::Value::String(text.to_string());
    let cfg = match &parsed {
        Some(value) => match attempt(value) {
            Ok(cfg) => cfg,
            // A bare word that TOML reads as something else (`inf`, `nan`) may be a string value.
            // (For such a word the string's error is the telling one, e.g. the enum's variants.)
            Err(_) if !value.is_str() && text.starts_with(|c: char| c.is_ascii_alphabetic()) => {
                attempt(&as_string)?
            }
            Err(e) => return Err(e),
        },
        None => attempt(&as_string)?,
    };
    Ok(config_table(&cfg)?
        .remove(key)
        .or(parsed)
        .unwrap_or(as_string))
}

/// `base` with the keys of `table` laid over it as a config file's, type-checked.
fn overlay(base: &TrainConfig, table: &toml::Table, origin: &str) -> Result<TrainConfig> {
    let doc = toml::to_string(table).context("serialising the keys to set")?;
    base.overlay_toml(&doc, origin)
}

/// A configuration as the TOML table of its `config.toml` (keys whose value is unset are absent).
fn config_table(cfg: &TrainConfig) -> Result<toml::Table> {
    toml::from_str(&cfg.to_toml()?).context("re-reading the serialised configuration")
}

/// Where two configurations differ, one `key: A (a_name) vs B (b_name)` entry per key (values as
/// in `config.toml`, `unset` for a key without a value), keys of `ignore` left out.
pub fn config_differences(
    a: &TrainConfig,
    a_name: &str,
    b: &TrainConfig,
    b_name: &str,
    ignore: &[&str],
) -> Result<Vec<String>> {
    let (a, b) = (config_table(a)?, config_table(b)?);
    let show = |v: Option<&toml::Value>| v.map_or("unset".to_string(), |v| v.to_string());
    Ok(a.keys()
        .chain(b.keys().filter(|k| !a.contains_key(*k)))
        .filter(|k| !ignore.contains(&k.as_str()) && a.get(*k) != b.get(*k))
        .map(|k| {
            format!(
                "{k}: {} ({a_name}) vs {} ({b_name})",
                show(a.get(k)),
                show(b.get(k))
            )
        })
        .collect())
}

/// What a sweep runs: every combination of the grid's values over `base`, each with every seed.
#[derive(Clone, Debug, PartialEq)]
pub struct SweepPlan {
    pub base: TrainConfig,
    pub seeds: Vec<u64>,
    pub grid: Vec<GridAxis>,
}

/// `sweep.toml` as written: the seeds, the grid and the base configuration as its `config.toml`
/// table.
#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct PlanFile {
    seeds: Vec<u64>,
    #[serde(default)]
    grid: Vec<GridAxis>,
    base: toml::Table,
}

/// One grid point: its label (its directory's name), the values it sets and its configuration (the
/// seed still the base's).
#[derive(Clone, Debug, PartialEq)]
pub struct Combination {
    pub label: String,
    pub settings: Vec<(String, toml::Value)>,
    pub config: TrainConfig,
}

/// One run of a sweep.
#[derive(Clone, Debug, PartialEq)]
pub struct PlannedRun {
    /// Index into [`SweepPlan::combinations`].
    pub combination: usize,
    pub label: String,
    pub seed: u64,
    /// `<label>/seed-<seed>`, relative to the sweep directory.
    pub dir: PathBuf,
    pub config: TrainConfig,
}

/// How far a run of a sweep got, from its directory's files.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RunStatus {
    /// `report.json` is there.
    Finished,
    /// A checkpoint but no report: killed after at least one epoch; continue it.
    Resumable,
    /// Nothing to continue from: start it.
    Missing,
}

impl RunStatus {
    pub fn of(run_dir: &Path) -> Self {
        if run_dir.join(REPORT_FILE).is_file() {
            RunStatus::Finished
        } else if run_dir
            .join(crate::train::run_state::CHECKPOINT_FILE)
            .is_file()
        {
            RunStatus::Resumable
        } else {
            RunStatus::Missing
        }
    }
}

impl SweepPlan {
    /// Checks the seeds (some, none twice) and the grid (each key once); the combinations are
    /// checked by [`SweepPlan::combinations`].
    pub fn new(base: TrainConfig, seeds: Vec<u64>, grid: Vec<GridAxis>) -> Result<Self> {
        if seeds.is_empty() {
            bail!("--seeds: give at least one seed (e.g. --seeds 0,1,2)");
        }
        for (i, s) in seeds.iter().enumerate() {
            if seeds[..i].contains(s) {
                bail!("--seeds: seed {s} is given twice");
            }
        }
        for (i, axis) in grid.iter().enumerate() {
            if grid[..i].iter().any(|a| a.key == axis.key) {
                bail!(
                    "--set {}: the key is given twice (give all its values in one --set {}=V1,V2)",
                    axis.key,
                    axis.key
                );
            }
        }
        Ok(Self { base, seeds, grid })
    }

    pub fn to_toml(&self) -> Result<String> {
        let file = PlanFile {
            seeds: self.seeds.clone(),
            grid: self.grid.clone(),
            base: config_table(&self.base)?,
        };
        let body = toml::to_string_pretty(&file).context("serialising the sweep plan")?;
        Ok(format!(
            "# The plan of an `ltrain sweep`: the base configuration, the grid (--set) and the seeds.\n\
             # Continue the sweep with the same command or `ltrain sweep --resume DIR`.\n{body}"
        ))
    }

    pub fn from_toml_str(text: &str, origin: &str) -> Result<Self> {
        let file: PlanFile =
            toml::from_str(text).with_context(|| format!("{origin}: not an ltrain sweep plan"))?;
        let base: TrainConfig =
            toml::Value::Table(file.base)
                .try_into()
                .map_err(|e: toml::de::Error| {
                    anyhow::anyhow!(
                        "{origin}: [base] is not a valid ltrain configuration: {}",
                        e.message().trim_end()
                    )
                })?;
        Self::new(base, file.seeds, file.grid).with_context(|| origin.to_string())
    }

    /// The plan stored in a sweep directory, if there is one.
    pub fn load(dir: &Path) -> Result<Option<Self>> {
        let path = dir.join(PLAN_FILE);
        match std::fs::read_to_string(&path) {
            Ok(text) => Self::from_toml_str(&text, &path.display().to_string()).map(Some),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(e).with_context(|| format!("cannot read {}", path.display())),
        }
    }

    /// Where `other` differs from this plan, ignoring [`EXECUTION_KEYS`] of the base and seeds that
    /// `other` adds (see [`SweepPlan::added_seeds`]); empty when `other` continues this plan. Leaving
    /// out a stored seed is a difference: its runs would silently drop out of the summary.
    pub fn differences(&self, other: &SweepPlan) -> Result<Vec<String>> {
        let mut diffs = Vec::new();
        let left_out: Vec<u64> = self
            .seeds
            .iter()
            .filter(|s| !other.seeds.contains(s))
            .copied()
            .collect();
        if !left_out.is_empty() {
            let all: Vec<u64> = self
                .seeds
                .iter()
                .copied()
                .chain(self.added_seeds(other))
                .collect();
            diffs.push(format!(
                "seeds: {} (stored) vs {} (now) leaves out {} {}; seeds can be added to a sweep, \
                 not taken away (give the stored ones too: --seeds {})",
                seed_list(&self.seeds),
                seed_list(&other.seeds),
                if left_out.len() == 1 { "seed" } else { "seeds" },
                seed_list(&left_out),
                seed_list(&all)
            ));
        }
        if self.grid != other.grid {
            let show = |grid: &[GridAxis]| {
                let axes: Vec<String> = grid
                    .iter()
                    .map(|a| {
                        let values: Vec<String> = a.values.iter().map(value_text).collect();
                        format!("{}={}", a.key, values.join(","))
                    })
                    .collect();
                if axes.is_empty() {
                    "no --set".to_string()
                } else {
                    format!("--set {}", axes.join(" --set "))
                }
            };
            diffs.push(format!(
                "grid: {} (stored) vs {} (now)",
                show(&self.grid),
                show(&other.grid)
            ));
        }
        diffs.extend(config_differences(
            &self.base,
            "stored",
            &other.base,
            "now",
            EXECUTION_KEYS,
        )?);
        Ok(diffs)
    }

    /// The seeds of `other` that this plan lacks, in `other`'s order: a re-run with them adds their
    /// runs to the sweep.
    pub fn added_seeds(&self, other: &SweepPlan) -> Vec<u64> {
        other
            .seeds
            .iter()
            .filter(|s| !self.seeds.contains(s))
            .copied()
            .collect()
    }

    /// This plan with `seeds` appended to its own (the stored seeds keep their order and runs).
    pub fn with_added_seeds(&self, seeds: &[u64]) -> Result<SweepPlan> {
        let all = self.seeds.iter().chain(seeds).copied().collect();
        SweepPlan::new(self.base.clone(), all, self.grid.clone())
    }

    /// Every grid point, the first `--set` varying slowest; each configuration validated.
    pub fn combinations(&self) -> Result<Vec<Combination>> {
        let mut points: Vec<Vec<(String, toml::Value)>> = vec![Vec::new()];
        for axis in &self.grid {
            points = points
                .into_iter()
                .flat_map(|point| {
                    axis.values.iter().map(move |v| {
                        let mut p = point.clone();
                        p.push((axis.key.clone(), v.clone()));
                        p
                    })
                })
                .collect();
        }
        let mut seen: BTreeMap<String, usize> = BTreeMap::new();
        points
            .into_iter()
            .map(|settings| {
                let mut label = if settings.is_empty() {
                    BASE_LABEL.to_string()
                } else {
                    let parts: Vec<String> = settings
                        .iter()
                        .map(|(k, v)| format!("{k}={}", value_text(v)))
                        .collect();
                    path_safe(&parts.join(","))
                };
                // Distinct values may sanitise alike (e.g. paths): keep the directories apart.
                let count = seen.entry(label.clone()).or_insert(0);
                *count += 1;
                if *count > 1 {
                    label = format!("{label}~{count}");
                }
                let config = self.configure(&settings).with_context(|| {
                    format!("configuration {label} of the sweep (--set) is not valid")
                })?;
                Ok(Combination {
                    label,
                    settings,
                    config,
                })
            })
            .collect()
    }

    fn configure(&self, settings: &[(String, toml::Value)]) -> Result<TrainConfig> {
        let mut cfg = self.base.clone();
        if !settings.is_empty() {
            let table: toml::Table = settings.iter().cloned().collect();
            cfg = overlay(&cfg, &table, "--set")?;
        }
        cfg.validate()?;
        Ok(cfg)
    }

    /// Every run: combinations in order, each with its seeds in order.
    pub fn runs(&self) -> Result<Vec<PlannedRun>> {
        let combinations = self.combinations()?;
        let mut runs = Vec::with_capacity(combinations.len() * self.seeds.len());
        for (i, c) in combinations.iter().enumerate() {
            for &seed in &self.seeds {
                runs.push(PlannedRun {
                    combination: i,
                    label: c.label.clone(),
                    seed,
                    dir: Path::new(&c.label).join(format!("seed-{seed}")),
                    config: TrainConfig {
                        seed,
                        ..c.config.clone()
                    },
                });
            }
        }
        Ok(runs)
    }
}

/// `0,1,2`: seeds as `--seeds` takes them.
pub fn seed_list(seeds: &[u64]) -> String {
    seeds
        .iter()
        .map(u64::to_string)
        .collect::<Vec<_>>()
        .join(",")
}

/// A value as written in a label or a message: strings bare, everything else as TOML.
fn value_text(v: &toml::Value) -> String {
    match v {
        toml::Value::String(s) => s.clone(),
        other => other.to_string().replace(' ', ""),
    }
}

/// A directory name: characters other than letters, digits and `.,=+-_[]` become `_`.
fn path_safe(label: &str) -> String {
    let safe: String = label
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || ".,=+-_[]".contains(c) {
                c
            } else {
                '_'
            }
        })
        .collect();
    if safe.starts_with('.') {
        format!("_{safe}")
    } else {
        safe
    }
}

/// Checks that a run directory's `config.toml`, if any, is the run the plan asks for (ignoring
/// [`EXECUTION_KEYS`]), so that a sweep never continues or counts someone else's run.
pub fn check_run_config(run_dir: &Path, planned: &TrainConfig) -> Result<()> {
    let path = run_dir.join(crate::train::run_state::CONFIG_FILE);
    let Ok(text) = std::fs::read_to_string(&path) else {
        return Ok(());
    };
    let found: toml::Table = toml::from_str(&text)
        .with_context(|| format!("{}: not a configuration file", path.display()))?;
    let want = config_table(planned)?;
    let differs: Vec<&str> = want
        .keys()
        .chain(found.keys().filter(|k| !want.contains_key(*k)))
        .filter(|k| !EXECUTION_KEYS.contains(&k.as_str()) && want.get(*k) != found.get(*k))
        .map(|k| k.as_str())
        .collect();
    if !differs.is_empty() {
        bail!(
            "{} holds a run of another configuration than the sweep plans (keys {}); move it away \
             or use another sweep directory",
            run_dir.display(),
            differs.join(", ")
        );
    }
    Ok(())
}

/// The numbers of a finished run, from its `report.json`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct RunOutcome {
    pub top1: f64,
    pub many: Option<f64>,
    pub medium: Option<f64>,
    pub few: Option<f64>,
    pub ece: f64,
    pub epochs: usize,
    pub train_seconds: f64,
}

impl RunOutcome {
    pub fn read(run_dir: &Path) -> Result<Self> {
        let path = run_dir.join(REPORT_FILE);
        let text = std::fs::read_to_string(&path)
            .with_context(|| format!("cannot read {}", path.display()))?;
        serde_json::from_str(&text)
            .with_context(|| format!("{}: not a run report of ltrain", path.display()))
    }

    /// `top-1 45.00% many - medium 50.00% few 25.00% ECE 12.30%`.
    pub fn line(&self) -> String {
        let pct = |v: Option<f64>| v.map_or("-".to_string(), |v| format!("{v:.2}%"));
        format!(
            "top-1 {:.2}% many {} medium {} few {} ECE {:.2}%",
            self.top1,
            pct(self.many),
            pct(self.medium),
            pct(self.few),
            self.ece
        )
    }
}

/// Mean and sample standard deviation (n - 1) of some values; `std` is `None` for one value.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Stat {
    pub mean: f64,
    pub std: Option<f64>,
    /// How many values (seeds) it is over.
    pub n: usize,
}

impl Stat {
    /// `None` for no values.
    pub fn of(values: &[f64]) -> Option<Self> {
        let n = values.len();
        if n == 0 {
            return None;
        }
        let mean = values.iter().sum::<f64>() / n as f64;
        let std = (n > 1).then(|| {
            let ss: f64 = values.iter().map(|v| (v - mean) * (v - mean)).sum();
            (ss / (n - 1) as f64).sqrt()
        });
        Some(Self { mean, std, n })
    }

    /// `45.00 ± 1.23`, or `45.00 ± –` for one seed.
    pub fn text(&self) -> String {
        match self.std {
            Some(s) => format!("{:.2} ± {s:.2}", self.mean),
            None => format!("{:.2} ± –", self.mean),
        }
    }
}

/// One run in the summary; the numbers are absent until it has finished.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct RunEntry {
    pub seed: u64,
    /// Relative to the sweep directory.
    pub dir: PathBuf,
    pub finished: bool,
    pub outcome: Option<RunOutcome>,
}

/// One configuration of the sweep over its seeds.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ConfigSummary {
    pub label: String,
    /// The keys the grid sets for it (empty without a grid).
    pub settings: BTreeMap<String, toml::Value>,
    /// Finished seeds, of `seeds_planned`.
    pub seeds: usize,
    pub seeds_planned: usize,
    /// Over the finished seeds; a group is over the seeds whose data have classes in it, and
    /// `null` when none has.
    pub top1: Option<Stat>,
    pub many: Option<Stat>,
    pub medium: Option<Stat>,
    pub few: Option<Stat>,
    pub ece: Option<Stat>,
    pub runs: Vec<RunEntry>,
}

/// `summary.json` of a sweep.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct SweepSummary {
    pub preset: Option<String>,
    /// The base configuration in one line.
    pub setting: String,
    pub seeds: Vec<u64>,
    pub grid: Vec<GridAxis>,
    pub runs_planned: usize,
    pub runs_finished: usize,
    /// How the numbers are aggregated.
    pub statistic: String,
    /// The paper's numbers for the preset's own setting (percent).
    pub paper: Option<PaperReference>,
    pub configurations: Vec<ConfigSummary>,
}

impl SweepSummary {
    /// Reads the report of every finished run of the plan in `dir`.
    pub fn collect(dir: &Path, plan: &SweepPlan, paper: Option<&PaperReference>) -> Result<Self> {
        let combinations = plan.combinations()?;
        let runs = plan.runs()?;
        let mut configurations = Vec::with_capacity(combinations.len());
        for (i, c) in combinations.iter().enumerate() {
            let mut entries = Vec::new();
            for r in runs.iter().filter(|r| r.combination == i) {
                let run_dir = dir.join(&r.dir);
                let outcome = match RunStatus::of(&run_dir) {
                    RunStatus::Finished => Some(RunOutcome::read(&run_dir)?),
                    _ => None,
                };
                entries.push(RunEntry {
                    seed: r.seed,
                    dir: r.dir.clone(),
                    finished: outcome.is_some(),
                    outcome,
                });
            }
            let done: Vec<&RunOutcome> =
                entries.iter().filter_map(|e| e.outcome.as_ref()).collect();
            let stat = |f: &dyn Fn(&RunOutcome) -> Option<f64>| {
                Stat::of(&done.iter().filter_map(|o| f(o)).collect::<Vec<_>>())
            };
            configurations.push(ConfigSummary {
                label: c.label.clone(),
                settings: c.settings.iter().cloned().collect(),
                seeds: done.len(),
                seeds_planned: plan.seeds.len(),
                top1: stat(&|o| Some(o.top1)),
                many: stat(&|o| o.many),
                medium: stat(&|o| o.medium),
                few: stat(&|o| o.few),
                ece: stat(&|o| Some(o.ece)),
                runs: entries,
            });
        }
        Ok(Self {
            preset: plan.base.preset.clone(),
            setting: setting_line(&plan.base),
            seeds: plan.seeds.clone(),
            grid: plan.grid.clone(),
            runs_planned: runs.len(),
            runs_finished: configurations.iter().map(|c| c.seeds).sum(),
            statistic: "mean and sample standard deviation (n - 1) over the finished seeds of the \
                        last epoch's test metrics (percent); std is null for one seed; a \
                        many/medium/few group is over the seeds whose training set has classes in \
                        it, null when none has"
                .to_string(),
            paper: paper.cloned(),
            configurations,
        })
    }

    /// Writes `summary.json`, `summary.md` and `summary.png` into `dir`, each atomically.
    pub fn write(&self, dir: &Path) -> Result<()> {
        let json = serde_json::to_string_pretty(self).context("serialising summary.json")?;
        write_atomic(&dir.join(SUMMARY_JSON), json.as_bytes())?;
        write_atomic(&dir.join(SUMMARY_MD), self.markdown().as_bytes())?;
        let bars: Vec<plots::sweep::ConfigBars> = self
            .configurations
            .iter()
            .map(|c| plots::sweep::ConfigBars {
                label: c.label.clone(),
                seeds: c.seeds,
                values: [&c.top1, &c.many, &c.medium, &c.few]
                    .map(|s| s.as_ref().map(|s| (s.mean, s.std.unwrap_or(0.0)))),
            })
            .collect();
        let paper_top1 = self.paper.as_ref().map(|p| p.top1);
        write_atomic(
            &dir.join(SUMMARY_PNG),
            &plots::sweep::summary_png(&bars, paper_top1)?,
        )
    }

    pub fn markdown(&self) -> String {
        let title = self.preset.as_deref().unwrap_or("custom configuration");
        let mut md = format!(
            "# ltrain sweep: {title}\n\n**Base setting:** {}.\n\n",
            self.setting
        );
        if !self.grid.is_empty() {
            let axes: Vec<String> = self
                .grid
                .iter()
                .map(|a| {
                    let values: Vec<String> = a.values.iter().map(value_text).collect();
                    format!("`{}` in {{{}}}", a.key, values.join(", "))
                })
                .collect();
            let _ = writeln!(md, "**Grid:** {}.\n", axes.join("; "));
        }
        let seeds: Vec<String> = self.seeds.iter().map(u64::to_string).collect();
        let _ = writeln!(
            md,
            "**Seeds:** {} ({} of {} runs finished).\n",
            seeds.join(", "),
            self.runs_finished,
            self.runs_planned
        );
        md.push_str(
            "| Configuration | Seeds | Top-1 (%) | Many (%) | Medium (%) | Few (%) | ECE (%) |\n\
             |---|---:|---:|---:|---:|---:|---:|\n",
        );
        for c in &self.configurations {
            let cell = |s: &Option<Stat>| match s {
                None => "–".to_string(),
                Some(s) if s.n < c.seeds => format!("{} (n = {})", s.text(), s.n),
                Some(s) => s.text(),
            };
            let _ = writeln!(
                md,
                "| {} | {}{} | {} | {} | {} | {} | {} |",
                c.label,
                c.seeds,
                if c.seeds < c.seeds_planned {
                    format!(" of {}", c.seeds_planned)
                } else {
                    String::new()
                },
                cell(&c.top1),
                cell(&c.many),
                cell(&c.medium),
                cell(&c.few),
                cell(&c.ece)
            );
        }
        if let Some(p) = &self.paper {
            let theirs = |v: Option<f64>| v.map_or("–".to_string(), |v| format!("{v:.1}"));
            let _ = writeln!(
                md,
                "| Paper ({}) | | {} | {} | {} | {} | {} |",
                p.source,
                theirs(Some(p.top1)),
                theirs(p.many),
                theirs(p.medium),
                theirs(p.few),
                theirs(p.ece)
            );
        }
        md.push('\n');
        md.push_str(
            "Mean ± sample standard deviation (n − 1) over the finished seeds of the last epoch's \
             test metrics (\"± –\": one seed). A many/medium/few group is averaged over the seeds \
             whose training set has classes in it (\"–\": none has).\n",
        );
        if let Some(p) = &self.paper {
            let _ = writeln!(
                md,
                "Paper values: {}, for the preset's own setting{}.",
                p.source,
                if self.grid.is_empty() {
                    ""
                } else {
                    " (the grid's configurations change the keys it sets)"
                }
            );
        }
        md.push_str(
            "\n## Runs\n\n| Configuration | Seed | Top-1 (%) | Many (%) | Medium (%) | Few (%) | \
             ECE (%) | Directory |\n|---|---:|---:|---:|---:|---:|---:|---|\n",
        );
        for c in &self.configurations {
            for r in &c.runs {
                let num = |v: Option<f64>| v.map_or("–".to_string(), |v| format!("{v:.2}"));
                let cells = match &r.outcome {
                    Some(o) => [
                        num(Some(o.top1)),
                        num(o.many),
                        num(o.medium),
                        num(o.few),
                        num(Some(o.ece)),
                    ]
                    .join(" | "),
                    None => "not finished | | | | ".to_string(),
                };
                let _ = writeln!(
                    md,
                    "| {} | {} | {cells} | `{}` |",
                    c.label,
                    r.seed,
                    r.dir.display()
                );
            }
        }
        md
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn values_split_at_top_level_commas() {
        assert_eq!(split_top_level("1,0.5"), ["1", "0.5"]);
        assert_eq!(
            split_top_level("[160,180],[8,9],\"a,b\""),
            ["[160,180]", "[8,9]", "\"a,b\""]
        );
    }

    #[test]
    fn sample_std_and_one_seed() {
        let s = Stat::of(&[1.0, 2.0, 3.0]).unwrap();
        assert_eq!((s.mean, s.std, s.n), (2.0, Some(1.0), 3));
        assert_eq!(Stat::of(&[4.0]).unwrap().std, None);
        assert!(Stat::of(&[]).is_none());
    }

    #[test]
    fn plan_round_trips_with_unset_keys_and_labels_the_grid() {
        let base = TrainConfig {
            stage2_epoch: None,
            mixup_alpha: 0.0,
            epochs: 4,
            milestones: vec![2, 3],
            ..TrainConfig::default()
        };
        let grid = vec![
            GridAxis::parse("tau=1,0.8", &base).unwrap(),
            GridAxis::parse("loss=la,la-sla", &base).unwrap(),
        ];
        let plan = SweepPlan::new(base, vec![0, 1], grid).unwrap();
        let back = SweepPlan::from_toml_str(&plan.to_toml().unwrap(), "t").unwrap();
        assert_eq!(back, plan);
        assert!(back.differences(&plan).unwrap().is_empty());
        let labels: Vec<String> = plan
            .combinations()
            .unwrap()
            .into_iter()
            .map(|c| c.label)
            .collect();
        assert_eq!(
            labels,
            [
                "tau=1.0,loss=la",
                "tau=1.0,loss=la-sla",
                "tau=0.8,loss=la",
                "tau=0.8,loss=la-sla"
            ]
        );
        let runs = plan.runs().unwrap();
        assert_eq!(runs.len(), 8);
        assert_eq!(runs[1].seed, 1);
        assert_eq!(runs[1].config.seed, 1);
        assert_eq!(runs[1].config.stage2_epoch, None);
        let other = SweepPlan {
            base: TrainConfig {
                threads: 7,
                lr: 0.2,
                ..plan.base.clone()
            },
            ..plan.clone()
        };
        let diffs = plan.differences(&other).unwrap();
        assert_eq!(diffs.len(), 1, "{diffs:?}");
        assert!(diffs[0].starts_with("lr: 0.05"), "{diffs:?}");
        // More seeds continue the plan; fewer are a difference.
        let more = SweepPlan::new(plan.base.clone(), vec![1, 0, 4, 2], plan.grid.clone()).unwrap();
        assert!(plan.differences(&more).unwrap().is_empty());
        assert_eq!(plan.added_seeds(&more), [4, 2]);
        assert_eq!(plan.with_added_seeds(&[4, 2]).unwrap().seeds, [0, 1, 4, 2]);
        let fewer = SweepPlan::new(plan.base.clone(), vec![1, 2], plan.grid.clone()).unwrap();
        let diffs = plan.differences(&fewer).unwrap();
        assert_eq!(diffs.len(), 1, "{diffs:?}");
        assert!(
            diffs[0].contains("leaves out seed 0") && diffs[0].contains("--seeds 0,1,2"),
            "{diffs:?}"
        );
    }
}
