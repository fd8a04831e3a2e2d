//! Training: the epoch loop, SGD and learning-rate schedules, evaluation, checkpoints and resume.

pub mod schedule;
pub mod source;

pub use source::ImageSource;
