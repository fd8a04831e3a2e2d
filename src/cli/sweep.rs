//! `ltrain sweep`: one base configuration (built as `ltrain train` builds it), a grid over
//! configuration keys (`--set KEY=V1,V2`) and seeds; every grid point x seed is one run directory
//! `DIR/<label>/seed-<s>/` trained by `train`'s own code (`--jobs K` at a time), then `DIR/summary.md`,
//! `summary.json` and `summary.png` with mean ± std over the seeds. A re-run of the same command
//! (or `--resume DIR`) skips finished runs, resumes a killed one from its checkpoint and starts the
//! missing ones; a re-run with more `--seeds` adds their runs (the stored plan's runs kept).

use super::args::{DataArgs, RunArgs};
use super::train::{resolve_config, train_single, RunLock, TrainCmd};
use anyhow::{bail, Context, Result};
use clap::Args;
use ltrain::config::CudaGraphs;
use ltrain::presets::load_preset;
use ltrain::report::read_epoch_records;
use ltrain::report::sweep::{
    check_run_config, GridAxis, RunOutcome, RunStatus, SweepPlan, SweepSummary, PLAN_FILE,
    SUMMARY_MD,
};
use ltrain::report::write_atomic;
use ltrain::train::datasets;
use ltrain::train::run_state::METRICS_FILE;
use ltrain::train::Start;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Mutex;
use std::time::Instant;

#[derive(Args, Debug)]
pub struct SweepCmd {
    /// Start from a preset of the paper's settings (see `ltrain presets`); the summary shows the
    /// paper's numbers beside the sweep's.
    #[arg(long, value_name = "NAME")]
    pub preset: Option<String>,
    /// TOML configuration (keys as in config.toml of a run); applied over the preset.
    #[arg(long, value_name = "FILE.toml")]
    pub config: Option<PathBuf>,
    /// Seeds, comma separated: every configuration is trained once per seed. Re-running an existing
    /// sweep with more seeds (the stored ones and new ones) adds the new seeds' runs; the finished
    /// runs are kept as they are, and the summary covers all the seeds.
    #[arg(
        long,
        value_delimiter = ',',
        value_name = "S,S,...",
        required_unless_present = "resume"
    )]
    pub seeds: Vec<u64>,
    /// A grid axis: the configuration key KEY (as in config.toml) takes each value in turn
    /// (TOML values: 0.5, true, [160,180], la-sla). Repeat for a grid over several keys.
    #[arg(long = "set", value_name = "KEY=V1,V2,...")]
    pub set: Vec<String>,
    /// Sweep directory: sweep.toml (the plan), one run directory per configuration and seed, and
    /// the summary.
    #[arg(long, value_name = "DIR", required_unless_present = "resume")]
    pub out: Option<PathBuf>,
    /// Continue the sweep in DIR with its stored plan (--device and --threads may change).
    #[arg(
        long,
        value_name = "DIR",
        conflicts_with_all = ["preset", "config", "seeds", "set", "out"]
    )]
    pub resume: Option<PathBuf>,
    /// No progress: no per-run lines, progress bars or per-epoch lines.
    #[arg(long, short)]
    pub quiet: bool,
    /// Runs trained at once, each on its own thread: on a GPU they share the device (as its memory
    /// allows), on the CPU its cores (give each run fewer with --threads). With more than one, the
    /// per-run progress bars are off; the start and end lines stay.
    #[arg(long, value_name = "K", default_value_t = 1)]
    pub jobs: usize,
    /// Run each training step as one captured CUDA graph (auto: on a GPU). Same results either way.
    #[arg(long, value_enum, default_value = "auto")]
    pub cuda_graphs: CudaGraphs,
    #[command(flatten)]
    pub data: DataArgs,
    #[command(flatten)]
    pub run: RunArgs,
}

pub fn run(mut cmd: SweepCmd) -> Result<()> {
    if cmd.run.seed.is_some() {
        bail!("--seed: a sweep sets each run's seed from --seeds (e.g. --seeds 0,1,2)");
    }
    super::device::choose_gpu(cmd.run.gpu, &mut cmd.run.device, None)?;
    let (dir, plan) = plan_of(&cmd)?;
    // Every configuration is checked before anything is written.
    plan.runs()?;
    let quiet = cmd.quiet;

    if dir.exists() && !dir.join(PLAN_FILE).exists() && !is_empty_dir(&dir)? {
        bail!(
            "{} exists and is not a sweep directory (no {PLAN_FILE}); choose another --out",
            dir.display()
        );
    }
    std::fs::create_dir_all(&dir)
        .with_context(|| format!("cannot create the sweep directory {}", dir.display()))?;
    let _lock = RunLock::acquire(&dir)?;
    let plan = match SweepPlan::load(&dir)? {
        Some(stored) => {
            let diffs = stored.differences(&plan)?;
            if !diffs.is_empty() {
                bail!(
                    "{} holds a sweep of another plan ({}):\n  {}\ncontinue it with the same \
                     command (more --seeds may be added) or `ltrain sweep --resume {}`, or choose \
                     another --out",
                    dir.display(),
                    PLAN_FILE,
                    diffs.join("\n  "),
                    dir.display()
                );
            }
            // The stored seeds keep their order (and their runs); added ones follow.
            let added = stored.added_seeds(&plan);
            let grown = stored.with_added_seeds(&added)?;
            if !added.is_empty() {
                let stored_runs = stored.runs()?;
                let kept = stored_runs
                    .iter()
                    .filter(|r| RunStatus::of(&dir.join(&r.dir)) == RunStatus::Finished)
                    .count();
                write_atomic(&dir.join(PLAN_FILE), grown.to_toml()?.as_bytes())?;
                let shown: Vec<String> = added.iter().map(u64::to_string).collect();
                let unfinished = stored_runs.len() - kept;
                eprintln!(
                    "ltrain sweep: {} seed{} added: {}; {kept} run{} kept{}",
                    added.len(),
                    plural(added.len()),
                    shown.join(", "),
                    plural(kept),
                    if unfinished > 0 {
                        format!(" ({unfinished} unfinished, continued)")
                    } else {
                        String::new()
                    }
                );
            }
            SweepPlan {
                seeds: grown.seeds,
                ..plan
            }
        }
        None => {
            write_atomic(&dir.join(PLAN_FILE), plan.to_toml()?.as_bytes())?;
            plan
        }
    };
    let runs = plan.runs()?;
    let paper = match &plan.base.preset {
        Some(name) => load_preset(name)?.1,
        None => None,
    };

    let total = runs.len();
    if !quiet {
        eprintln!(
            "ltrain sweep: {} configuration{} x {} seed{} = {total} run{} -> {}",
            total / plan.seeds.len(),
            plural(total / plan.seeds.len()),
            plan.seeds.len(),
            plural(plan.seeds.len()),
            plural(total),
            dir.display()
        );
    }
    if cmd.jobs == 0 {
        bail!("--jobs 0: a sweep trains at least one run at a time");
    }
    // The summary so far is rewritten after every run, one writer at a time.
    let summary_lock = Mutex::new(());
    let run_one = |i: usize| -> Result<()> {
        let r = &runs[i];
        let run_quiet = quiet || cmd.jobs > 1;
        let run_dir = dir.join(&r.dir);
        let tag = format!("[{}/{total}] {} seed {}", i + 1, r.label, r.seed);
        check_run_config(&run_dir, &r.config)?;
        let start = match RunStatus::of(&run_dir) {
            RunStatus::Finished => {
                if !quiet {
                    let outcome = RunOutcome::read(&run_dir)?;
                    eprintln!("{tag}: finished earlier, {}", outcome.line());
                }
                return Ok(());
            }
            RunStatus::Resumable => {
                if !quiet {
                    let done = read_epoch_records(&run_dir.join(METRICS_FILE))
                        .ok()
                        .and_then(|h| h.last().map(|r| r.epoch))
                        .unwrap_or(0);
                    eprintln!(
                        "{tag}: resuming from its checkpoint (epoch {done} of {})",
                        r.config.epochs
                    );
                }
                Start::Resume
            }
            RunStatus::Missing => {
                if !quiet {
                    eprintln!("{tag}: started ({})", run_dir.display());
                }
                Start::Fresh
            }
        };
        let clock = Instant::now();
        let data = datasets::open(&r.config).with_context(|| format!("{tag}: opening the data"))?;
        train_single(
            &r.config,
            &data,
            &run_dir,
            start,
            cmd.cuda_graphs,
            paper.as_ref(),
            run_quiet,
        )
        .with_context(|| {
            format!(
                "{tag} failed (the sweep stops; run it again to continue from {})",
                run_dir.display()
            )
        })?;
        let outcome = RunOutcome::read(&run_dir)?;
        if !quiet {
            eprintln!(
                "{tag}: {} ({:.0} s)",
                outcome.line(),
                clock.elapsed().as_secs_f64()
            );
        }
        // The summary so far, so that a long sweep can be looked at while it runs.
        let _one = summary_lock.lock().unwrap_or_else(|e| e.into_inner());
        SweepSummary::collect(&dir, &plan, paper.as_ref())?.write(&dir)
    };
    // K workers take the runs in order; after a failure no new run starts.
    let next = AtomicUsize::new(0);
    let failed = AtomicBool::new(false);
    let results: Vec<Result<()>> = std::thread::scope(|scope| {
        let workers: Vec<_> = (0..cmd.jobs.min(total).max(1))
            .map(|_| {
                scope.spawn(|| -> Result<()> {
                    loop {
                        let i = next.fetch_add(1, Ordering::SeqCst);
                        if i >= total || failed.load(Ordering::SeqCst) {
                            return Ok(());
                        }
                        if let Err(e) = run_one(i) {
                            failed.store(true, Ordering::SeqCst);
                            return Err(e);
                        }
                    }
                })
            })
            .collect();
        workers
            .into_iter()
            .map(|w| {
                w.join()
                    .unwrap_or_else(|_| bail!("a sweep worker panicked"))
            })
            .collect()
    });
    results.into_iter().collect::<Result<Vec<()>>>()?;

    let summary = SweepSummary::collect(&dir, &plan, paper.as_ref())?;
    summary.write(&dir)?;
    if !quiet {
        for c in &summary.configurations {
            let stat = |s: &Option<ltrain::report::sweep::Stat>| {
                s.as_ref().map_or("-".to_string(), |s| s.text())
            };
            println!(
                "{}: top-1 {} many {} medium {} few {} ECE {} ({} seed{})",
                c.label,
                stat(&c.top1),
                stat(&c.many),
                stat(&c.medium),
                stat(&c.few),
                stat(&c.ece),
                c.seeds,
                plural(c.seeds)
            );
        }
        println!("summary written to {}", dir.join(SUMMARY_MD).display());
    }
    Ok(())
}

/// The sweep directory and the plan this invocation asks for: a new plan from the flags, or the
/// stored one of `--resume DIR` with the flags given over its base (only device and threads may
/// change; anything else makes a different plan, refused).
fn plan_of(cmd: &SweepCmd) -> Result<(PathBuf, SweepPlan)> {
    if let Some(dir) = &cmd.resume {
        let Some(stored) = SweepPlan::load(dir)? else {
            bail!(
                "--resume {}: no {PLAN_FILE} there; it is not a sweep directory",
                dir.display()
            );
        };
        let mut base = stored.base.clone();
        cmd.data.apply(&mut base);
        let _ = cmd.run.apply(&mut base);
        let plan = SweepPlan {
            base,
            ..stored.clone()
        };
        return Ok((dir.clone(), plan));
    }
    let train = TrainCmd {
        preset: cmd.preset.clone(),
        config: cmd.config.clone(),
        quiet: cmd.quiet,
        cuda_graphs: cmd.cuda_graphs,
        data: cmd.data.clone(),
        run: cmd.run.clone(),
        ..TrainCmd::default()
    };
    let (mut base, _paper) = resolve_config(&train)?;
    super::data::apply_download(cmd.data.download, &mut base, true, cmd.quiet)?;
    let grid = cmd
        .set
        .iter()
        .map(|spec| GridAxis::parse(spec, &base))
        .collect::<Result<Vec<_>>>()?;
    let out = cmd
        .out
        .clone()
        .expect("clap requires --out without --resume");
    Ok((out, SweepPlan::new(base, cmd.seeds.clone(), grid)?))
}

fn is_empty_dir(dir: &Path) -> Result<bool> {
    Ok(std::fs::read_dir(dir)
        .with_context(|| format!("cannot read {}", dir.display()))?
        .next()
        .is_none())
}

fn plural(n: usize) -> &'static str {
    if n == 1 {
        ""
    } else {
        "s"
    }
}
