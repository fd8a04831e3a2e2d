//! Named state tensors: enumeration of a module's parameters and buffers in PyTorch's state-dict
//! order, and the host-side [`NamedTensor`] used by checkpoints.

use super::{BatchNorm2d, Param};
use crate::backend::Backend;

/// A non-trainable `f32` buffer saved with the model (batch norm's running mean and variance).
pub struct RunningStat<B: Backend> {
    /// PyTorch state-dict name, e.g. `shared.bn1.running_var`.
    pub name: String,
    pub shape: Vec<usize>,
    pub value: B::Buf,
}

/// An integer counter saved with the model (batch norm's `num_batches_tracked`, an `I64`
/// scalar of shape `[]` in PyTorch). Kept on the host: it never enters a computation.
pub struct Counter {
    pub name: String,
    pub value: u64,
}

/// One state tensor of a module, borrowed.
pub enum StateRef<'a, B: Backend> {
    Param(&'a Param<B>),
    Running(&'a RunningStat<B>),
    Counter(&'a Counter),
}

impl<B: Backend> StateRef<'_, B> {
    pub fn name(&self) -> &str {
        match self {
            StateRef::Param(p) => &p.name,
            StateRef::Running(r) => &r.name,
            StateRef::Counter(c) => &c.name,
        }
    }
}

/// One state tensor of a module, mutably borrowed.
pub enum StateMut<'a, B: Backend> {
    Param(&'a mut Param<B>),
    Running(&'a mut RunningStat<B>),
    Counter(&'a mut Counter),
}

/// A holder of state tensors. `visit` yields them in PyTorch's `state_dict()` order (each
/// module's parameters, then its buffers, submodules in registration order), so
/// parameters come out in `model.parameters()` order.
pub trait Module<B: Backend> {
    fn visit<'a>(&'a self, f: &mut dyn FnMut(StateRef<'a, B>));
    fn visit_mut<'a>(&'a mut self, f: &mut dyn FnMut(StateMut<'a, B>));
    /// Every batch norm inside, in visiting order (to synchronise their statistics across ranks).
    fn batch_norms_mut(&mut self, _f: &mut dyn FnMut(&mut BatchNorm2d<B>)) {}
}

/// Values of a host-side tensor, in the two dtypes a ResNet state dict uses.
#[derive(Clone, Debug, PartialEq)]
pub enum TensorData {
    F32(Vec<f32>),
    I64(Vec<i64>),
}

impl TensorData {
    pub fn len(&self) -> usize {
        match self {
            TensorData::F32(v) => v.len(),
            TensorData::I64(v) => v.len(),
        }
    }
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
    pub fn dtype_name(&self) -> &'static str {
        match self {
            TensorData::F32(_) => "F32",
            TensorData::I64(_) => "I64",
        }
    }
}

/// A named host-side tensor in PyTorch layout (row-major, `shape` as PyTorch reports it; a
/// scalar has shape `[]` and one value).
#[derive(Clone, Debug, PartialEq)]
pub struct NamedTensor {
    pub name: String,
    pub shape: Vec<usize>,
    pub data: TensorData,
}

impl NamedTensor {
    pub fn f32(name: impl Into<String>, shape: Vec<usize>, values: Vec<f32>) -> Self {
        Self {
            name: name.into(),
            shape,
            data: TensorData::F32(values),
        }
    }
    pub fn i64(name: impl Into<String>, shape: Vec<usize>, values: Vec<i64>) -> Self {
        Self {
            name: name.into(),
            shape,
            data: TensorData::I64(values),
        }
    }
    pub fn numel(&self) -> usize {
        self.shape.iter().product()
    }
}
