//! What a person sees of a training run, and the TensorBoard scalars of it.
//!
//! On a terminal: a progress bar per epoch with the running loss, samples/s and the time the whole
//! run still needs (ETA). Not on a terminal (a log file, a pipe): a plain line now and then within
//! an epoch with the same fields ([`LOG_EVERY_SECONDS`]). Either way one line per epoch, with its
//! loss, samples/s and the run's ETA, and the test metrics on evaluated epochs. Nothing with
//! --quiet. The running loss is the one the trainer reads back every few steps (no extra device
//! synchronisation).
//!
//! TensorBoard: `DIR/tensorboard/events.out.tfevents.*` (written with --quiet too) holds
//! `train/loss` and `train/lr` at each loss read-back, by the number of steps trained, and per
//! epoch (by its 1-based number) `epoch/train_loss`, `epoch/samples_per_second` and, on evaluated
//! epochs, `epoch/top1`, `epoch/many`, `epoch/medium`, `epoch/few`, `epoch/ece` (percent, as in
//! metrics.jsonl).

use indicatif::{ProgressBar, ProgressStyle};
use ltrain::report::tensorboard::EventWriter;
use ltrain::report::EpochRecord;
use ltrain::train::Progress;
use std::collections::HashSet;
use std::io::IsTerminal;
use std::path::Path;
use std::time::{Duration, Instant};

/// The folder of the run directory that holds the TensorBoard event files.
pub const TENSORBOARD_DIR: &str = "tensorboard";

/// Not on a terminal, a progress line within an epoch is printed at most this often (and at most
/// every tenth of the epoch): the environment variable `LTRAIN_PROGRESS_SECONDS` overrides it.
pub const LOG_EVERY_SECONDS: f64 = 60.0;

/// A first step of a shape this many times slower per sample than the rest is left out of the
/// measured rate (CUDA graph capture, allocations, warm-up).
const SLOW_FIRST_STEP: f64 = 2.0;

pub struct ProgressView {
    quiet: bool,
    interactive: bool,
    log_every: Duration,
    bar: Option<ProgressBar>,
    meter: Meter,
    epoch: Option<Epoch>,
    /// When the previous step (or epoch start) was seen.
    last_event: Option<Instant>,
    /// Since the last step of the previous epoch (evaluation, checkpoint): the time between epochs.
    gap_from: Option<Instant>,
    board: Option<EventWriter>,
}

/// The epoch in progress, as its events told.
struct Epoch {
    /// 0-based.
    epoch: usize,
    epochs: usize,
    steps: usize,
    stage: u8,
    lr: f32,
    evaluated: bool,
    /// The plan as a key of the steps' shapes.
    plan: String,
    started: Instant,
    /// Trained by this process: samples, and the time from the epoch's start to its last step.
    samples: u64,
    seconds: f64,
    /// The mean loss of the epoch so far at the last read-back.
    loss: Option<f32>,
    /// The last plain progress line: when, and after how many steps.
    last_line: (Instant, usize),
    /// Its last step was seen.
    trained: bool,
    /// Its line was printed.
    reported: bool,
}

impl Epoch {
    fn samples_per_second(&self) -> Option<f64> {
        (self.trained && self.seconds > 0.0).then(|| self.samples as f64 / self.seconds)
    }
}

impl ProgressView {
    pub fn new(quiet: bool) -> Self {
        let log_every = std::env::var("LTRAIN_PROGRESS_SECONDS")
            .ok()
            .and_then(|s| s.trim().parse::<f64>().ok())
            .filter(|s| s.is_finite() && *s >= 0.0)
            .unwrap_or(LOG_EVERY_SECONDS);
        Self {
            quiet,
            interactive: !quiet && std::io::stderr().is_terminal(),
            log_every: Duration::from_secs_f64(log_every),
            bar: None,
            meter: Meter::default(),
            epoch: None,
            last_event: None,
            gap_from: None,
            board: None,
        }
    }

    /// Also writes the TensorBoard scalars into `run_dir/tensorboard/` (a new event file).
    pub fn tensorboard(mut self, run_dir: Option<&Path>) -> Self {
        self.board = run_dir.map(|d| EventWriter::new(&d.join(TENSORBOARD_DIR)));
        self
    }

    fn new_bar(&self, len: usize, prefix: String) -> Option<ProgressBar> {
        if !self.interactive {
            return None;
        }
        let bar = ProgressBar::new(len as u64);
        bar.set_style(
            ProgressStyle::with_template("{prefix} [{bar:30.cyan/blue}] {pos}/{len} {msg}")
                .expect("static template")
                .progress_chars("=> "),
        );
        bar.set_prefix(prefix);
        Some(bar)
    }

    pub fn update(&mut self, event: Progress<'_>) {
        let now = Instant::now();
        match event {
            Progress::EpochStart {
                epoch,
                epochs,
                steps,
                plan,
                lr,
                evaluated,
            } => {
                self.close_epoch();
                if let Some(bar) = self.bar.take() {
                    bar.finish_and_clear();
                }
                if let Some(from) = self.gap_from.take() {
                    self.meter.gap(now.duration_since(from).as_secs_f64());
                }
                let prefix = format!(
                    "epoch {}/{} stage {} lr {lr:.4}",
                    epoch + 1,
                    epochs,
                    plan.stage
                );
                self.bar = self.new_bar(steps, prefix);
                self.epoch = Some(Epoch {
                    epoch,
                    epochs,
                    steps,
                    stage: plan.stage,
                    lr,
                    evaluated,
                    plan: format!("{plan:?}"),
                    started: now,
                    samples: 0,
                    seconds: 0.0,
                    loss: None,
                    last_line: (now, 0),
                    trained: false,
                    reported: false,
                });
                self.last_event = Some(now);
            }
            Progress::Step {
                step,
                loss,
                samples,
            } => self.step(now, step, loss, samples),
            Progress::SlaTableFill { done, total } => {
                // The pass is once a run: not part of the time between two epochs.
                self.gap_from = None;
                if done == total && !self.quiet && !self.interactive {
                    eprintln!("SLA: cos-max table filled from {total} training images");
                }
            }
            Progress::Evaluated(r) => self.evaluated(r),
        }
    }

    fn step(&mut self, now: Instant, step: usize, loss: Option<f32>, samples: usize) {
        let Some(e) = self.epoch.as_mut() else {
            return;
        };
        let seconds = self
            .last_event
            .map_or(0.0, |t| now.duration_since(t).as_secs_f64());
        self.last_event = Some(now);
        self.meter.step(&e.plan, samples, seconds);
        e.samples += samples as u64;
        if loss.is_some() {
            e.loss = loss;
        }
        let last = step + 1 == e.steps;
        if last {
            e.trained = true;
            e.seconds = now.duration_since(e.started).as_secs_f64();
            self.gap_from = Some(now);
        }
        let (epoch, steps, lr) = (e.epoch, e.steps, e.lr);
        let (epochs_left, steps_left) = (e.epochs - epoch - 1, steps - step - 1);
        let eta = self
            .meter
            .eta(steps_left + epochs_left * steps, epochs_left + 1);
        let rate = self.meter.samples_per_second();
        let fields = fields(e.loss, rate, eta);
        if let Some(bar) = &self.bar {
            bar.inc(1);
            bar.set_message(fields.clone());
        } else if !self.quiet && !last {
            let every = steps.div_ceil(10).max(1);
            let (at, at_step) = e.last_line;
            if step + 1 >= at_step + every && now.duration_since(at) >= self.log_every {
                eprintln!(
                    "epoch {}/{} step {}/{steps}: {fields}",
                    epoch + 1,
                    e.epochs,
                    step + 1
                );
                e.last_line = (now, step + 1);
            }
        }
        if let Some(l) = loss {
            let trained = (epoch * steps + step + 1) as i64;
            self.board_write(trained, &[("train/loss", l), ("train/lr", lr)], false);
        }
        if last {
            let e = self.epoch.as_ref().expect("an epoch in progress");
            let mut values = Vec::new();
            if let Some(l) = e.loss {
                values.push(("epoch/train_loss", l));
            }
            if let Some(r) = e.samples_per_second() {
                values.push(("epoch/samples_per_second", r as f32));
            }
            let (number, evaluated) = ((e.epoch + 1) as i64, e.evaluated);
            self.board_write(number, &values, true);
            if !evaluated {
                self.close_epoch();
            }
        }
    }

    fn evaluated(&mut self, r: &EpochRecord) {
        let values: Vec<(&str, f32)> = [
            ("epoch/top1", r.top1),
            ("epoch/many", r.many),
            ("epoch/medium", r.medium),
            ("epoch/few", r.few),
            ("epoch/ece", r.ece),
        ]
        .into_iter()
        .filter_map(|(tag, v)| Some((tag, v? as f32)))
        .collect();
        self.board_write(r.epoch as i64, &values, true);
        let e = self.epoch.as_mut().filter(|e| e.epoch + 1 == r.epoch);
        let (rate, epochs_left) = match e {
            Some(e) => {
                e.reported = true;
                (e.samples_per_second(), e.epochs - e.epoch - 1)
            }
            None => (None, 0),
        };
        let steps = self.epoch.as_ref().map_or(0, |e| e.steps);
        let eta = self.meter.eta(epochs_left * steps, epochs_left);
        if self.quiet {
            return;
        }
        let line = format!(
            "epoch {:>4} stage {} lr {:.5} loss {:.4} top-1 {} many {} medium {} few {} ECE {} ({:.0} s, data wait {:.0} s, {})",
            r.epoch,
            r.stage,
            r.lr,
            r.train_loss,
            pct(r.top1),
            pct(r.many),
            pct(r.medium),
            pct(r.few),
            pct(r.ece),
            r.seconds,
            r.data_wait_seconds,
            rate_eta(rate, eta),
        );
        self.print(line);
    }

    /// The line of an epoch without evaluation, once (at its last step, or after it when it had
    /// none: a run resumed after its last step).
    fn close_epoch(&mut self) {
        let Some(e) = self.epoch.as_mut() else {
            return;
        };
        if e.reported || e.evaluated {
            return;
        }
        e.reported = true;
        let epochs_left = e.epochs - e.epoch - 1;
        let eta = self.meter.eta(epochs_left * e.steps, epochs_left + 1);
        let line = format!(
            "epoch {:>4} stage {} lr {:.5} loss {} not evaluated ({:.0} s this epoch, {})",
            e.epoch + 1,
            e.stage,
            e.lr,
            e.loss.map_or("-".to_string(), |l| format!("{l:.4}")),
            e.seconds,
            rate_eta(e.samples_per_second(), eta),
        );
        if !self.quiet {
            self.print(line);
        }
    }

    fn print(&self, line: String) {
        match &self.bar {
            Some(bar) => bar.println(line),
            None => eprintln!("{line}"),
        }
    }

    /// Scalars at `step` into the event file (then flushed, with `flush`); a failed write is said
    /// once and ends the event file, not the run.
    fn board_write(&mut self, step: i64, values: &[(&str, f32)], flush: bool) {
        let Some(board) = self.board.as_mut() else {
            return;
        };
        let mut written = if values.is_empty() {
            Ok(())
        } else {
            board.scalars(step, values)
        };
        if flush && written.is_ok() {
            written = board.flush();
        }
        if let Err(e) = written {
            eprintln!("warning: TensorBoard events are not written any more: {e:#}");
            self.board = None;
        }
    }

    pub fn finish(&mut self) {
        self.close_epoch();
        if let Some(bar) = self.bar.take() {
            bar.finish_and_clear();
        }
        self.board_write(0, &[], true);
    }
}

/// The steps this process trained, timed from one progress event to the next: the rate and the
/// time the run still needs.
#[derive(Default)]
struct Meter {
    /// Steps after the first of their shape: seconds, steps, samples.
    seconds: f64,
    steps: u64,
    samples: u64,
    /// The first step of each shape (plan and batch size): seconds and samples.
    first: Vec<(f64, u64)>,
    shapes: HashSet<(String, usize)>,
    /// Between the last step of an epoch and the next one's start: seconds summed, and how many.
    gaps: (f64, u64),
}

impl Meter {
    fn step(&mut self, plan: &str, samples: usize, seconds: f64) {
        if self.shapes.insert((plan.to_string(), samples)) {
            self.first.push((seconds, samples as u64));
        } else {
            self.seconds += seconds;
            self.steps += 1;
            self.samples += samples as u64;
        }
    }

    fn gap(&mut self, seconds: f64) {
        self.gaps.0 += seconds;
        self.gaps.1 += 1;
    }

    /// Seconds, steps and samples measured, first steps of a shape included unless they were
    /// markedly slower per sample than the rest.
    fn totals(&self) -> (f64, u64, u64) {
        let per_sample = (self.samples > 0).then(|| self.seconds / self.samples as f64);
        let mut t = (self.seconds, self.steps, self.samples);
        for &(s, n) in &self.first {
            if per_sample.is_none_or(|p| s <= SLOW_FIRST_STEP * p * n as f64) {
                t = (t.0 + s, t.1 + 1, t.2 + n);
            }
        }
        t
    }

    fn samples_per_second(&self) -> Option<f64> {
        let (seconds, _, samples) = self.totals();
        (seconds > 0.0 && samples > 0).then(|| samples as f64 / seconds)
    }

    /// The time `steps` more steps and `gaps` more times between epochs take, at the rates so far.
    fn eta(&self, steps: usize, gaps: usize) -> Option<f64> {
        let (seconds, done, _) = self.totals();
        if done == 0 {
            return None;
        }
        let gap = match self.gaps {
            (_, 0) => 0.0,
            (s, n) => s / n as f64,
        };
        Some(seconds / done as f64 * steps as f64 + gap * gaps as f64)
    }
}

/// `loss 1.2345, 123 samples/s, ETA 1 h 02 min` (`-` for what is not known yet).
fn fields(loss: Option<f32>, rate: Option<f64>, eta: Option<f64>) -> String {
    let loss = loss.map_or("-".to_string(), |l| format!("{l:.4}"));
    format!("loss {loss}, {}", rate_eta(rate, eta))
}

fn rate_eta(rate: Option<f64>, eta: Option<f64>) -> String {
    let rate = match rate {
        Some(r) if r >= 100.0 => format!("{r:.0}"),
        Some(r) => format!("{r:.1}"),
        None => "-".to_string(),
    };
    let eta = eta.map_or("-".to_string(), duration);
    format!("{rate} samples/s, ETA {eta}")
}

/// `42 s`, `12 min 05 s`, `3 h 07 min`.
fn duration(seconds: f64) -> String {
    let s = seconds.max(0.0).round() as u64;
    match s {
        0..60 => format!("{s} s"),
        60..3600 => format!("{} min {:02} s", s / 60, s % 60),
        _ => format!("{} h {:02} min", s / 3600, s % 3600 / 60),
    }
}

fn pct(v: Option<f64>) -> String {
    v.map_or("-".to_string(), |v| format!("{v:.2}%"))
}
