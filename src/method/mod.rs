//! The paper's method over the op interface: logit adjustment (Eq. 7), the reweighting policies
//! (RW, CB, focal, SLA of Eqs. 9-12/17), the SLA cos-max table S, and the two-stage plan (Algorithm 1).
//! Nothing here knows which backend runs it.

pub mod class_weights;
pub mod loss;
pub mod loss_kinds;
pub mod plan;
pub mod sla;

pub use class_weights::{class_balanced_weights, inverse_frequency_weights, log_prior};
pub use loss::{expert_loss, unfused_loss, ExpertLossInputs};
pub use loss_kinds::{policy, LossPolicy, LossSetup, Reweighting, LOSS_POLICIES};
pub use plan::{expert_level, EpochPlan};
pub use sla::{SlaTable, SlaTableFill};
