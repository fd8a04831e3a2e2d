//! The terminal view of a training run: a progress bar per epoch (loss, throughput, ETA) on a
//! terminal, one line per evaluated epoch otherwise, nothing with --quiet.

use indicatif::{ProgressBar, ProgressStyle};
use ltrain::train::Progress;
use std::io::IsTerminal;

pub struct ProgressView {
    quiet: bool,
    bar: Option<ProgressBar>,
    samples: u64,
}

impl ProgressView {
    pub fn new(quiet: bool) -> Self {
        Self {
            quiet,
            bar: None,
            samples: 0,
        }
    }

    fn interactive(&self) -> bool {
        !self.quiet && std::io::stderr().is_terminal()
    }

    fn new_bar(&self, len: usize, prefix: String) -> Option<ProgressBar> {
        if !self.interactive() {
            return None;
        }
        let bar = ProgressBar::new(len as u64);
        bar.set_style(
            ProgressStyle::with_template(
                "{prefix} [{bar:30.cyan/blue}] {pos}/{len} {msg} {per_sec} eta {eta}",
            )
            .expect("static template")
            .progress_chars("=> "),
        );
        bar.set_prefix(prefix);
        Some(bar)
    }

    pub fn update(&mut self, event: Progress<'_>) {
        match event {
            Progress::EpochStart {
                epoch,
                epochs,
                steps,
                plan,
                lr,
            } => {
                if let Some(bar) = self.bar.take() {
                    bar.finish_and_clear();
                }
                let prefix = format!(
                    "epoch {}/{} stage {} lr {lr:.4}",
                    epoch + 1,
                    epochs,
                    plan.stage
                );
                self.bar = self.new_bar(steps, prefix);
            }
            Progress::Step { loss, samples, .. } => {
                self.samples += samples as u64;
                if let Some(bar) = &self.bar {
                    bar.inc(1);
                    if let Some(l) = loss {
                        bar.set_message(format!("loss {l:.4}"));
                    }
                }
            }
            Progress::SlaTableFill { done, total } => {
                if done == total && !self.quiet && !self.interactive() {
                    eprintln!("SLA: cos-max table filled from {total} training images");
                }
            }
            Progress::Evaluated(r) => {
                if self.quiet {
                    return;
                }
                let line = format!(
                    "epoch {:>4} stage {} lr {:.5} loss {:.4} top-1 {} many {} medium {} few {} ECE {} ({:.0} s, data wait {:.0} s)",
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
                    r.data_wait_seconds
                );
                match &self.bar {
                    Some(bar) => bar.println(line),
                    None => eprintln!("{line}"),
                }
            }
        }
    }

    pub fn finish(&mut self) {
        if let Some(bar) = self.bar.take() {
            bar.finish_and_clear();
        }
    }
}

fn pct(v: Option<f64>) -> String {
    v.map_or("-".to_string(), |v| format!("{v:.2}%"))
}
