//! Training: the epoch loop, the training step, SGD and learning-rate schedules, evaluation,
//! checkpoints and resume.

pub mod bench_step;
pub mod checkpoint;
pub mod datasets;
pub mod evaluate;
pub mod graphs;
pub mod loader;
pub mod optimizer;
pub mod run_state;
pub mod schedule;
pub mod source;
pub mod step;
pub mod trainer;

pub use evaluate::{evaluate, test_loader, Evaluation, Prediction};
pub use run_state::checkpoint_config;
pub use source::ImageSource;
pub use trainer::{
    check_parallel, train, train_rank, Interrupted, Progress, RunOptions, RunResult, Start,
};
