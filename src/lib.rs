//! ltrain: a trainer for long-tailed image classification implementing "Improving imbalance
//! classification via ensemble learning based on two-stage learning" (Frontiers in Computational
//! Neuroscience, 2023): a multi-expert ResNet with per-expert augmentation and mixup (stage 1),
//! logit-adjusted loss, sample logit-aware reweighting (SLA, stage 2) and softmax averaging at test.
//!
//! The model, the method and the training loop are written once over the op interface in
//! [`backend`]; the CPU backend is the reference, the CUDA backend runs the same code on a GPU.

pub mod augment;
pub mod backend;
pub mod config;
pub mod data;
pub mod dist;
pub mod method;
pub mod metrics;
pub mod model;
pub mod nn;
pub mod presets;
pub mod report;
pub mod train;
