//! Training: the epoch loop, SGD and learning-rate schedules, evaluation, checkpoints and resume.

pub mod checkpoint;
pub mod schedule;
pub mod source;

pub use source::ImageSource;
