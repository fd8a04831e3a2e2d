//! `ltrain train`: resolve the configuration, open the data, train on the chosen device, write the
//! run directory (config, metrics, checkpoint, reports).

use super::args::{DataArgs, RunArgs};
use super::device::{dispatch, OnBackend};
use super::parallel::{run_parallel, Launch, ParallelArgs, RankJob};
use super::progress::ProgressView;
use anyhow::{bail, Context, Result};
use clap::Args;
use ltrain::backend::Backend;
use ltrain::config::{CudaGraphs, LengthChange, ModelKind, TrainConfig, MIN_SAMPLES_PER_RANK};
use ltrain::dist::{Dist, World};
use ltrain::presets::{load_preset, PaperReference};
use ltrain::report::run_record::{self, Session};
use ltrain::report::{data_label, model_label, write_atomic, write_report, RunSummary};
use ltrain::train::bench_step::{BenchInput, BenchStep, BenchStepConfig};
use ltrain::train::datasets::{self, Datasets};
use ltrain::train::run_state::{checkpoint_epochs_done, CHECKPOINT_FILE, CONFIG_FILE};
use ltrain::train::trainer::images_left_out;
use ltrain::train::{check_parallel, train_rank, RunOptions, Start};
use signal_hook::consts::{SIGINT, SIGTERM};
use signal_hook::iterator::Signals;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, OnceLock};

#[derive(Args, Debug, Default)]
pub struct TrainCmd {
    /// Start from a preset of the paper's settings (see `ltrain presets`).
    #[arg(long, value_name = "NAME")]
    pub preset: Option<String>,
    /// TOML configuration (keys as in config.toml of a run); applied over the preset.
    #[arg(long, value_name = "FILE.toml")]
    pub config: Option<PathBuf>,
    /// Run directory for config.toml, metrics.jsonl, checkpoint.safetensors and the reports
    /// [default: runs/<date>-<time>].
    #[arg(long, value_name = "DIR")]
    pub out: Option<PathBuf>,
    /// Continue the run in DIR from its last checkpoint (its config.toml is used; --epochs may extend it).
    #[arg(long, value_name = "DIR", conflicts_with_all = ["preset", "config", "out", "init"])]
    pub resume: Option<PathBuf>,
    /// Start from the weights of a checkpoint (fresh optimizer and schedule).
    #[arg(long, value_name = "FILE")]
    pub init: Option<PathBuf>,
    /// No progress bar or per-epoch lines.
    #[arg(long, short)]
    pub quiet: bool,
    /// Print the resolved configuration (preset < config < flags) and the run's size (steps,
    /// samples, and a duration estimated from a few timed steps on the device), then exit: nothing
    /// is written.
    #[arg(long, alias = "print-config")]
    pub dry_run: bool,
    /// Run each training step as one captured CUDA graph (auto: on a GPU). Same results either way.
    #[arg(long, value_enum, default_value = "auto")]
    pub cuda_graphs: CudaGraphs,
    #[command(flatten)]
    pub parallel: ParallelArgs,
    #[command(flatten)]
    pub data: DataArgs,
    #[command(flatten)]
    pub run: RunArgs,
}

pub fn run(cmd: TrainCmd) -> Result<()> {
    let (mut cfg, out, start, paper) = resolve(&cmd)?;
    super::data::apply_download(cmd.data.download, &mut cfg, true, cmd.quiet)?;
    let launch = cmd.parallel.launch(&mut cfg)?;
    let world = match &launch {
        Launch::Single => World::SINGLE,
        Launch::Threads(n) => World { rank: 0, size: *n },
        Launch::Process(env) => env.world,
    };
    if matches!(launch, Launch::Process(_)) && cmd.out.is_none() && cmd.resume.is_none() {
        bail!(
            "rank {} of {}: give every rank the same --out DIR (on a file system they share; \
             only rank 0 writes, every rank reads it to --resume)",
            world.rank,
            world.size
        );
    }
    check_parallel(&cfg, world, cmd.cuda_graphs == CudaGraphs::On)?;
    let data = datasets::open(&cfg)?;
    let quiet = cmd.quiet || !world.is_lead();
    let n = data.train.len();
    let left_out = images_left_out(n, cfg.batch_size, world.size);
    if left_out == n {
        bail!(
            "the training set has {n} images: too few for one batch of {MIN_SAMPLES_PER_RANK} per \
             rank ({} ranks); batch norm cannot train on less",
            world.size
        );
    }
    if left_out > 0 && !quiet {
        eprintln!(
            "ltrain: each epoch leaves its last {left_out} image{} out ({n} images in batches of {}: \
             the last batch would have fewer than the {MIN_SAMPLES_PER_RANK} per rank batch norm needs)",
            if left_out == 1 { "" } else { "s" },
            cfg.batch_size * world.size
        );
    }
    if !quiet {
        eprintln!(
            "ltrain: {} on {} ({} train / {} test images, {}), {} epoch{} -> {}",
            model_label(&cfg),
            data_label(&cfg),
            data.train.len(),
            data.test.len(),
            data.long_tail,
            cfg.epochs,
            if cfg.epochs == 1 { "" } else { "s" },
            out.display()
        );
        if world.size > 1 {
            eprintln!(
                "ltrain: {} ranks x batch {} = global batch {} (the learning rate is used as \
                 given: scale it for the global batch yourself, as with DistributedDataParallel); \
                 batch norm {}",
                world.size,
                cfg.batch_size,
                world.size * cfg.batch_size,
                if cfg.sync_bn {
                    "synchronised across the ranks"
                } else {
                    "per rank"
                }
            );
        }
    }
    if cmd.dry_run {
        return dry_run(&cfg, &data, world, n - left_out);
    }
    let job = TrainJob {
        cfg: &cfg,
        data: &data,
        out: &out,
        start,
        cuda_graphs: cmd.cuda_graphs,
        paper: paper.as_ref(),
        quiet,
        print_result: true,
    };
    match launch {
        Launch::Single => dispatch(cfg.device, cfg.threads, cfg.tf32, job),
        spread => run_parallel(spread, &cfg, cmd.parallel.timeout(), &job),
    }
}

/// Builds the run's configuration: defaults < preset < --config file < flags, or the saved
/// configuration of a resumed run.
fn resolve(cmd: &TrainCmd) -> Result<(TrainConfig, PathBuf, Start, Option<PaperReference>)> {
    if let Some(dir) = &cmd.resume {
        let path = dir.join(CONFIG_FILE);
        if !dir.join(CHECKPOINT_FILE).exists() {
            bail!(
                "--resume {}: no {CHECKPOINT_FILE} there; it is not a run directory, or the run was \
                 killed before its first epoch finished (start it again without --resume)",
                dir.display()
            );
        }
        let mut cfg = TrainConfig::load(&path)?;
        let done = checkpoint_epochs_done(&dir.join(CHECKPOINT_FILE))?;
        refuse_flags_a_resume_cannot_honour(cmd, &cfg, dir)?;
        // A resumed run keeps its method; only how and how long it runs may change.
        let r = &cmd.run;
        if let Some(d) = r.device {
            cfg.device = d;
        }
        if let Some(t) = r.threads {
            cfg.threads = t;
        }
        if let Some(k) = r.eval_every {
            cfg.eval_every = k;
        }
        if let Some(epochs) = r.epochs {
            let was = cfg.epochs;
            let line = match cfg.change_length(epochs, done)? {
                LengthChange::Same => None,
                LengthChange::Kept => Some(format!(
                    "--epochs {epochs} (the run had {was}, {done} trained): its schedule is kept \
                     (it holds as it is), so the added epochs go on at the last learning rate and \
                     stage; for a schedule rescaled to {epochs} epochs, start a new run with \
                     --init {} --epochs {epochs}",
                    dir.join(CHECKPOINT_FILE).display()
                )),
                LengthChange::Rederived { moved, why } => Some(format!(
                    "--epochs {epochs} (the run had {was}, {done} trained): its schedule cannot be \
                     kept ({why}), so the events still ahead are rescaled to {epochs} epochs: {}",
                    moved.join(", ")
                )),
            };
            if let (Some(line), false) = (line, cmd.quiet) {
                eprintln!("ltrain: {line}");
            }
        }
        let paper = match &cfg.preset {
            Some(name) => load_preset(name)?.1,
            None => None,
        };
        return Ok((cfg, dir.clone(), Start::Resume, paper));
    }
    let (cfg, paper) = resolve_config(cmd)?;
    let out = cmd.out.clone().unwrap_or_else(default_run_dir);
    if out.join(CHECKPOINT_FILE).exists() {
        bail!(
            "{} already holds a run ({CHECKPOINT_FILE}); continue it with --resume {} or choose another --out",
            out.display(),
            out.display()
        );
    }
    let start = match &cmd.init {
        Some(file) => Start::Init(file.clone()),
        None => Start::Fresh,
    };
    Ok((cfg, out, start, paper))
}

/// `--dry-run`: the resolved configuration, the run's size, and its duration estimated from a few
/// timed steps of the stage-1 step on random data (evaluation and data loading not counted).
fn dry_run(cfg: &TrainConfig, data: &Datasets, world: World, trained: usize) -> Result<()> {
    print!("{}", cfg.to_toml()?);
    let steps = trained.div_ceil(cfg.batch_size * world.size);
    println!(
        "# run: {} epochs x {steps} steps of {} images = {} steps, {} training samples ({} training \
         images, {} test images evaluated every {} epoch{})",
        cfg.epochs,
        cfg.batch_size * world.size,
        steps * cfg.epochs,
        trained * cfg.epochs,
        data.train.len(),
        data.test.len(),
        cfg.eval_every,
        if cfg.eval_every == 1 { "" } else { "s" }
    );
    let per_step = dispatch(cfg.device, cfg.threads, cfg.tf32, StepTimer { cfg })?;
    let total = per_step * (steps * cfg.epochs) as f64;
    let duration = match total {
        t if t < 120.0 => format!("{t:.0} s"),
        t if t < 7200.0 => format!("{:.0} min", t / 60.0),
        t => format!("{:.1} h", t / 3600.0),
    };
    println!(
        "# estimate: about {duration} of training ({:.3} s a step over {} timed steps of random data \
         on this device; evaluation and data loading not counted)",
        per_step,
        StepTimer::TIMED
    );
    Ok(())
}

/// Times a few stage-1 steps of the run's model (the bench step) for `--dry-run`.
struct StepTimer<'a> {
    cfg: &'a TrainConfig,
}

impl StepTimer<'_> {
    const TIMED: usize = 3;
}

impl OnBackend for StepTimer<'_> {
    type Output = f64;
    fn run<B: Backend>(self, be: &B) -> Result<f64> {
        let cfg = self.cfg;
        let mut step = BenchStep::new(
            be,
            BenchStepConfig {
                model: cfg.model,
                expert_width: cfg.expert_width,
                experts: cfg.experts,
                batch_size: cfg.batch_size,
                classes: 10,
                image_size: if cfg.model == ModelKind::Resnet32 {
                    32
                } else {
                    cfg.image_size
                },
                stage2: false,
                mixup: cfg.mixup_alpha > 0.0,
                input: BenchInput::PreAugmented,
                cuda_graphs: false,
            },
        )?;
        step.run(be)?;
        be.synchronize()?;
        let start = std::time::Instant::now();
        for _ in 0..Self::TIMED {
            step.run(be)?;
        }
        be.synchronize()?;
        Ok(start.elapsed().as_secs_f64() / Self::TIMED as f64)
    }
}

/// Refuses every flag that would change what a resumed run trains (anything but `--epochs`,
/// `--device`, `--threads`, `--eval-every`), naming each with the run's value and the flag's; a flag
/// that repeats the run's own value is harmless.
fn refuse_flags_a_resume_cannot_honour(
    cmd: &TrainCmd,
    cfg: &TrainConfig,
    dir: &Path,
) -> Result<()> {
    let mut flagged = cfg.clone();
    cmd.data.apply(&mut flagged);
    let run = RunArgs {
        epochs: None,
        device: None,
        threads: None,
        eval_every: None,
        ..cmd.run.clone()
    };
    run.apply(&mut flagged);
    let table = |c: &TrainConfig| -> Result<toml::Table> { Ok(toml::from_str(&c.to_toml()?)?) };
    let (was, now) = (table(cfg)?, table(&flagged)?);
    let show = |v: Option<&toml::Value>| v.map_or("(unset)".to_string(), |v| v.to_string());
    let refused: Vec<String> = now
        .keys()
        .chain(was.keys().filter(|k| !now.contains_key(*k)))
        .filter(|k| was.get(*k) != now.get(*k))
        .map(|key| {
            let flag = match key.as_str() {
                "mixup_alpha" => "--mixup-alpha / --no-mixup".to_string(),
                "augment" => "--no-augment".to_string(),
                "stage2_epoch" => "--stage2-epoch / --single-stage".to_string(),
                "tf32" => "--no-tf32".to_string(),
                k => format!("--{}", k.replace('_', "-")),
            };
            format!(
                "{flag} asks for {key} = {} but the run was trained with {}",
                show(now.get(key)),
                show(was.get(key))
            )
        })
        .collect();
    if refused.is_empty() {
        return Ok(());
    }
    bail!(
        "--resume {}: {}. A resumed run keeps its own settings (only --epochs, --device, --threads \
         and --eval-every apply): drop {}, or start a new run from its weights with \
         --init {} and the new settings",
        dir.display(),
        refused.join("; "),
        if refused.len() == 1 { "that flag" } else { "those flags" },
        dir.join(CHECKPOINT_FILE).display()
    )
}

/// The configuration of a fresh run: defaults < preset < --config file < flags, validated, with
/// the preset's paper reference (`ltrain sweep` builds its base configuration with it).
pub(super) fn resolve_config(cmd: &TrainCmd) -> Result<(TrainConfig, Option<PaperReference>)> {
    let (mut cfg, paper) = match &cmd.preset {
        Some(name) => load_preset(name)?,
        None => (TrainConfig::default(), None),
    };
    if let Some(file) = &cmd.config {
        cfg = cfg.overlay_file(file)?;
    }
    cmd.data.apply(&mut cfg);
    if let Some(line) = cmd.run.apply(&mut cfg) {
        if !cmd.quiet {
            eprintln!("ltrain: {line}");
        }
    }
    cfg.validate()?;
    Ok((cfg, paper))
}

struct TrainJob<'a> {
    cfg: &'a TrainConfig,
    data: &'a Datasets,
    out: &'a Path,
    start: Start,
    cuda_graphs: CudaGraphs,
    paper: Option<&'a PaperReference>,
    quiet: bool,
    /// The final metrics line and where the reports went, on stdout (unless quiet).
    print_result: bool,
}

/// Trains one run in this process (no ranks) into `out` and writes its run directory and reports,
/// as `ltrain train` does; `ltrain sweep` runs each of its runs with it. The progress is shown as
/// `train` shows it (unless `quiet`), the final metrics line is left to the caller.
pub(super) fn train_single(
    cfg: &TrainConfig,
    data: &Datasets,
    out: &Path,
    start: Start,
    cuda_graphs: CudaGraphs,
    paper: Option<&PaperReference>,
    quiet: bool,
) -> Result<()> {
    check_parallel(cfg, World::SINGLE, cuda_graphs == CudaGraphs::On)?;
    let job = TrainJob {
        cfg,
        data,
        out,
        start,
        cuda_graphs,
        paper,
        quiet,
        print_result: false,
    };
    dispatch(cfg.device, cfg.threads, cfg.tf32, job)
}

impl OnBackend for TrainJob<'_> {
    type Output = ();
    fn run<B: Backend>(self, be: &B) -> Result<()> {
        RankJob::run(&self, be, Dist::single())
    }
}

impl RankJob for TrainJob<'_> {
    fn run<B: Backend>(&self, be: &B, dist: Dist<B>) -> Result<()> {
        let world = dist.world();
        // Several ranks' steps are not captured (their collectives run between the ops).
        let cuda_graphs = match self.cuda_graphs {
            CudaGraphs::Auto if world.size > 1 => false,
            g => g.enabled(be)?,
        };
        // Written only once the data and the device are known to work, so that a run which cannot
        // start leaves no half-made run directory behind; by rank 0 alone.
        let device = match world.size {
            1 => be.name(),
            n => format!("{} x {n} ranks", be.name()),
        };
        // Ranks would have to agree on the step: several stop as any process is stopped. Installed
        // before the run directory exists, so that no Ctrl-C finds the lock taken and no handler.
        let interrupt = (world.size == 1).then(stop_signal).transpose()?;
        let _lock = if world.is_lead() {
            std::fs::create_dir_all(self.out).with_context(|| {
                format!("cannot create the run directory {}", self.out.display())
            })?;
            let lock = RunLock::acquire(self.out)?;
            write_atomic(&self.out.join(CONFIG_FILE), self.cfg.to_toml()?.as_bytes())?;
            run_record::record(self.out, Session::now(&device))?;
            Some(lock)
        } else {
            None
        };
        let mut view = ProgressView::new(self.quiet || !world.is_lead())
            .tensorboard(world.is_lead().then_some(self.out));
        let result = train_rank(
            be,
            self.cfg,
            self.data.train.as_ref(),
            self.data.test.as_ref(),
            self.out,
            RunOptions {
                start: self.start.clone(),
                cuda_graphs,
                interrupt,
            },
            dist,
            &mut |p| view.update(p),
        )?;
        view.finish();
        if !world.is_lead() {
            return Ok(());
        }
        write_report(
            self.out,
            &RunSummary {
                metrics: &result.last.metrics,
                history: &result.history,
                class_counts: &result.class_counts,
                config: self.cfg,
                paper: self.paper,
                device: &device,
                train_seconds: result.train_seconds,
                data_wait_seconds: result.data_wait_seconds,
                samples_per_second: result.samples_per_second,
            },
        )?;
        if !self.quiet && self.print_result {
            println!("{}", result.last.metrics.summary_line());
            println!("reports written to {}", self.out.display());
        }
        Ok(())
    }
}

/// Keeps two processes from training into the same run directory: `DIR/.ltrain.lock` holds the pid
/// of the run using it. A lock left by a killed run (its pid no longer alive) is taken over, so
/// `--resume` after a crash just works; a second Ctrl-C removes it before quitting ([`stop_signal`]).
pub(super) struct RunLock(PathBuf);

/// The lock this process holds, for a quit from the signal thread.
static HELD_LOCK: Mutex<Option<PathBuf>> = Mutex::new(None);

impl RunLock {
    pub(super) fn acquire(dir: &Path) -> Result<Self> {
        use std::io::Write;
        let path = dir.join(".ltrain.lock");
        let pid = std::process::id().to_string();
        match std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(&path)
        {
            Ok(mut f) => f.write_all(pid.as_bytes())?,
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
                let holder = std::fs::read_to_string(&path).unwrap_or_default();
                let alive = holder
                    .trim()
                    .parse::<u32>()
                    .is_ok_and(|p| Path::new(&format!("/proc/{p}")).exists());
                if alive {
                    bail!(
                        "{} is in use by another ltrain run (pid {}); wait for it, or delete {} if no run is active",
                        dir.display(),
                        holder.trim(),
                        path.display()
                    );
                }
                std::fs::write(&path, pid)?;
            }
            Err(e) => {
                return Err(e).with_context(|| format!("cannot create {}", path.display()));
            }
        }
        *HELD_LOCK.lock().unwrap_or_else(|e| e.into_inner()) = Some(path.clone());
        Ok(Self(path))
    }
}

impl Drop for RunLock {
    fn drop(&mut self) {
        HELD_LOCK.lock().unwrap_or_else(|e| e.into_inner()).take();
        let _ = std::fs::remove_file(&self.0);
    }
}

/// The flag SIGINT (Ctrl-C) and SIGTERM set to stop a run at its next step boundary with a
/// checkpoint, said at once (a CPU step can take seconds). A second one quits at once (exit status
/// 130), leaving the directory as its last atomic write left it, without the lock. Registered once a
/// process, on a thread of its own.
fn stop_signal() -> Result<Arc<AtomicBool>> {
    static FLAG: OnceLock<Arc<AtomicBool>> = OnceLock::new();
    if let Some(flag) = FLAG.get() {
        return Ok(flag.clone());
    }
    let flag = Arc::new(AtomicBool::new(false));
    let mut signals =
        Signals::new([SIGINT, SIGTERM]).context("cannot install the Ctrl-C handler")?;
    let raised = flag.clone();
    std::thread::Builder::new()
        .name("ltrain-signals".into())
        .spawn(move || {
            for _ in signals.forever() {
                if !raised.swap(true, Ordering::SeqCst) {
                    eprintln!(
                        "\nltrain: stopping after this step, with a checkpoint to resume from; \
                         Ctrl-C again to quit now"
                    );
                    continue;
                }
                let lock = HELD_LOCK.lock().unwrap_or_else(|e| e.into_inner()).take();
                if let Some(lock) = lock {
                    let _ = std::fs::remove_file(&lock);
                    let dir = lock.parent().unwrap_or(Path::new("."));
                    eprintln!(
                        "ltrain: quit; {} holds the run as of its last saved checkpoint (the steps \
                         since are lost): continue it with ltrain train --resume {}",
                        dir.display(),
                        dir.display()
                    );
                }
                std::process::exit(130);
            }
        })
        .context("cannot start the signal thread")?;
    Ok(FLAG.get_or_init(|| flag).clone())
}

/// `runs/YYYYMMDD-HHMMSS` (UTC).
fn default_run_dir() -> PathBuf {
    let (y, m, d, h, mi, sec) = run_record::utc_now();
    PathBuf::from(format!("runs/{y:04}{m:02}{d:02}-{h:02}{mi:02}{sec:02}"))
}
