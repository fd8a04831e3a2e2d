//! State dict of a [`MultiExpertNet`]: host copies of every state tensor under its PyTorch
//! name, and the strict inverse.

use super::MultiExpertNet;
use crate::backend::Backend;
use crate::nn::{Module, NamedTensor, StateMut, StateRef, TensorData};
use anyhow::{bail, Context, Result};
use std::collections::{HashMap, HashSet};

/// Top-level names the model owns; other tensors in a checkpoint (e.g. `optimizer.*`) are
/// somebody else's and ignored by [`MultiExpertNet::load_state_dict`].
const MODEL_PREFIXES: [&str; 2] = ["shared.", "experts."];

/// Whether a state-dict name lies in a model's namespaces (`shared.*`, `experts.*`).
pub fn is_model_tensor(name: &str) -> bool {
    MODEL_PREFIXES.iter().any(|p| name.starts_with(p))
}

/// How many names an error message lists before summarising.
const LIST_LIMIT: usize = 8;

fn list(names: &[String]) -> String {
    let shown: Vec<&str> = names.iter().take(LIST_LIMIT).map(String::as_str).collect();
    let more = names.len().saturating_sub(LIST_LIMIT);
    if more > 0 {
        format!("{} and {more} more", shown.join(", "))
    } else {
        shown.join(", ")
    }
}

impl<B: Backend> MultiExpertNet<B> {
    /// Host copies of every state tensor (parameters, BN running statistics and
    /// `num_batches_tracked` as an `I64` scalar of shape `[]`) in `state_dict()` order.
    pub fn state_dict(&self, be: &B) -> Result<Vec<NamedTensor>> {
        let mut entries = Vec::new();
        self.visit(&mut |s| entries.push(s));
        entries
            .into_iter()
            .map(|s| {
                Ok(match s {
                    StateRef::Param(p) => {
                        NamedTensor::f32(p.name.clone(), p.shape.clone(), be.download(&p.value)?)
                    }
                    StateRef::Running(r) => {
                        NamedTensor::f32(r.name.clone(), r.shape.clone(), be.download(&r.value)?)
                    }
                    StateRef::Counter(c) => {
                        let v = i64::try_from(c.value)
                            .with_context(|| format!("{}: counter overflows i64", c.name))?;
                        NamedTensor::i64(c.name.clone(), vec![], vec![v])
                    }
                })
            })
            .collect()
    }

    /// Loads every state tensor of the model from `tensors`, strictly: each must be present,
    /// with the model's shape and dtype, and no tensor under the model's own namespaces
    /// (`shared.`, `experts.`) may be left over. Tensors under other prefixes (`optimizer.`)
    /// are ignored. Nothing is modified unless everything checks out.
    pub fn load_state_dict(&mut self, be: &B, tensors: &[NamedTensor]) -> Result<()> {
        let mut by_name: HashMap<&str, &NamedTensor> = HashMap::with_capacity(tensors.len());
        for t in tensors {
            if by_name.insert(t.name.as_str(), t).is_some() {
                bail!("tensor `{}` appears twice", t.name);
            }
        }

        let arch = format!(
            "{} with {} experts and {} classes",
            self.arch.name(),
            self.experts(),
            self.num_classes
        );
        let mut entries = Vec::new();
        self.visit_mut(&mut |s| entries.push(s));

        let mut own: HashSet<String> = HashSet::with_capacity(entries.len());
        let mut missing = Vec::new();
        let mut mismatched = Vec::new();
        for entry in &entries {
            let (name, shape, want_f32): (&str, &[usize], bool) = match entry {
                StateMut::Param(p) => (&p.name, &p.shape, true),
                StateMut::Running(r) => (&r.name, &r.shape, true),
                StateMut::Counter(c) => (&c.name, &[], false),
            };
            own.insert(name.to_string());
            let Some(t) = by_name.get(name) else {
                missing.push(name.to_string());
                continue;
            };
            let dtype_ok = matches!(
                (&t.data, want_f32),
                (TensorData::F32(_), true) | (TensorData::I64(_), false)
            );
            if t.shape != shape || !dtype_ok || t.data.len() != t.numel() {
                mismatched.push(format!(
                    "`{name}` is {} {:?} in the checkpoint, the model needs {} {:?}",
                    t.data.dtype_name(),
                    t.shape,
                    if want_f32 { "F32" } else { "I64" },
                    shape
                ));
            }
        }
        let unexpected: Vec<String> = tensors
            .iter()
            .filter(|t| is_model_tensor(&t.name))
            .filter(|t| !own.contains(&t.name))
            .map(|t| t.name.clone())
            .collect();

        if !mismatched.is_empty() {
            bail!(
                "{} tensor(s) have the wrong shape or dtype for a {arch}: {}",
                mismatched.len(),
                mismatched
                    .iter()
                    .take(LIST_LIMIT)
                    .cloned()
                    .collect::<Vec<_>>()
                    .join("; ")
            );
        }
        if !missing.is_empty() {
            bail!(
                "{} tensor(s) of a {arch} are missing: {} (was it saved from another architecture \
                 or expert count?)",
                missing.len(),
                list(&missing)
            );
        }
        if !unexpected.is_empty() {
            bail!(
                "{} unexpected tensor(s) for a {arch}: {} (was it saved from another architecture \
                 or expert count?)",
                unexpected.len(),
                list(&unexpected)
            );
        }

        for entry in entries {
            match entry {
                StateMut::Param(p) => {
                    // Written into place: the value is a view of the flat parameter store.
                    if let TensorData::F32(v) = &by_name[p.name.as_str()].data {
                        be.write(&mut p.value, v)?;
                    }
                }
                StateMut::Running(r) => {
                    if let TensorData::F32(v) = &by_name[r.name.as_str()].data {
                        r.value = be.upload(v)?;
                    }
                }
                StateMut::Counter(c) => {
                    if let TensorData::I64(v) = &by_name[c.name.as_str()].data {
                        c.value = u64::try_from(v[0])
                            .with_context(|| format!("`{}` is negative ({})", c.name, v[0]))?;
                    }
                }
            }
        }
        Ok(())
    }
}
