//! Training: the epoch loop, SGD and learning-rate schedules, evaluation, checkpoints and resume.

pub mod bench_step;
pub mod checkpoint;
pub mod datasets;
pub mod evaluate;
pub mod loader;
pub mod optimizer;
pub mod schedule;
pub mod source;
pub mod trainer;

pub use evaluate::{evaluate, test_loader, Evaluation, Prediction};
pub use source::ImageSource;
pub use trainer::{checkpoint_config, train, Progress, RunResult, Start};
