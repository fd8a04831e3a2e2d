//! The SLA benchmark table S (paper Eqs. 10-12, Algorithm 1 lines 7-12), one per expert.
//!
//! For each class y, S holds cos theta_{y*}: the cosine between the classifier row W_y and the feature of
//! the training sample of class y with the largest true-class logit f_y. The paper leaves open when S
//! is refreshed. ltrain's rule (`sla_table_rule = "epoch"`, the default): at the stage switch one
//! no-gradient pass over the training set fills S; during every later epoch the weights use the S of the
//! previous epoch while the next S is accumulated batch by batch (per class, the batch's sample with the
//! largest true-class logit, merged into the epoch's running winner), and it replaces S when the epoch
//! ends. The alternative (`"running"`) merges each batch into S in place before the batch's weights are
//! formed, so S only ever moves to a larger logit.

use crate::backend::{Backend, CosineDims, RowDims};
use crate::config::SlaTableRule;
use crate::dist::Dist;
use crate::model::MultiExpertNet;
use anyhow::Result;

/// Its buffers stay where they were allocated for the table's life (the epoch's swap and a restore
/// copy into them), so a captured training step that reads or updates them stays valid.
pub struct SlaTable<B: Backend> {
    classes: usize,
    rule: SlaTableRule,
    /// `[c]` winning true-class logit and its cosine, used for the weights.
    current_logit: B::Buf,
    current_cos: B::Buf,
    /// `[c]` the table being accumulated this epoch (epoch rule only).
    next_logit: B::Buf,
    next_cos: B::Buf,
}

impl<B: Backend> SlaTable<B> {
    /// An empty table: every class's logit is -inf (any sample beats it), its cosine 0.
    pub fn new(be: &B, classes: usize, rule: SlaTableRule) -> Result<Self> {
        Ok(Self {
            classes,
            rule,
            current_logit: empty_logits(be, classes)?,
            current_cos: be.zeros(classes)?,
            next_logit: empty_logits(be, classes)?,
            next_cos: be.zeros(classes)?,
        })
    }

    /// `[c]` cos theta_{y*} per class, as the weights of this batch must see it.
    pub fn cos_star(&self) -> &B::Buf {
        &self.current_cos
    }

    /// Merges one batch (`logits [n, c]`, `cos [n]` = cos theta_{y_i}, labels) into the table the rule
    /// says is being accumulated.
    pub fn observe(
        &mut self,
        be: &B,
        logits: &B::Buf,
        cos: &B::Buf,
        labels: &B::Index,
        n: usize,
    ) -> Result<()> {
        let (table_logit, table_cos) = match self.rule {
            SlaTableRule::Epoch => (&mut self.next_logit, &mut self.next_cos),
            SlaTableRule::Running => (&mut self.current_logit, &mut self.current_cos),
        };
        let d = RowDims { n, c: self.classes };
        be.cosmax_update(logits, cos, labels, d, table_logit, table_cos)
    }

    /// Merges the table being accumulated across the ranks of a data-parallel run, each of which
    /// saw its shard of the samples: per class the winner by logit (the lower rank on a tie), the
    /// table a single process would have accumulated. Every rank gets the same table.
    pub fn merge_ranks(&mut self, be: &B, dist: &Dist<B>) -> Result<()> {
        if dist.peers().is_none() {
            return Ok(());
        }
        let (table_logit, table_cos) = match self.rule {
            SlaTableRule::Epoch => (&mut self.next_logit, &mut self.next_cos),
            SlaTableRule::Running => (&mut self.current_logit, &mut self.current_cos),
        };
        let c = self.classes;
        let mut mine = be.download(table_logit)?;
        mine.extend(be.download(table_cos)?);
        let all = dist.gather_host(be, &mine)?;
        let (mut logit, mut cos) = (all[0][..c].to_vec(), all[0][c..].to_vec());
        for other in &all[1..] {
            for y in 0..c {
                if other[y] > logit[y] {
                    logit[y] = other[y];
                    cos[y] = other[c + y];
                }
            }
        }
        be.write(table_logit, &logit)?;
        be.write(table_cos, &cos)
    }

    /// Fills the table from a complete pass (call `observe` for every batch first, then this): with the
    /// epoch rule the accumulated table becomes current.
    pub fn end_epoch(&mut self, be: &B) -> Result<()> {
        if self.rule == SlaTableRule::Epoch {
            let c = self.classes;
            be.copy_range(&self.next_logit, 0, &mut self.current_logit, 0, c)?;
            be.copy_range(&self.next_cos, 0, &mut self.current_cos, 0, c)?;
            be.write(&mut self.next_logit, &vec![f32::NEG_INFINITY; c])?;
            be.write(&mut self.next_cos, &vec![0.0; c])?;
        }
        Ok(())
    }

    /// Host copies `(logit, cos)` of the current table, for checkpoints and reports.
    pub fn current(&self, be: &B) -> Result<(Vec<f32>, Vec<f32>)> {
        Ok((
            be.download(&self.current_logit)?,
            be.download(&self.current_cos)?,
        ))
    }

    /// Host copies `(logit, cos)` of the table being accumulated.
    pub fn pending(&self, be: &B) -> Result<(Vec<f32>, Vec<f32>)> {
        Ok((be.download(&self.next_logit)?, be.download(&self.next_cos)?))
    }

    /// Restores a table saved with [`current`](Self::current) / [`pending`](Self::pending).
    pub fn restore(
        &mut self,
        be: &B,
        current: (&[f32], &[f32]),
        pending: (&[f32], &[f32]),
    ) -> Result<()> {
        for part in [current.0, current.1, pending.0, pending.1] {
            anyhow::ensure!(
                part.len() == self.classes,
                "SLA table has {} entries, expected {} classes",
                part.len(),
                self.classes
            );
        }
        be.write(&mut self.current_logit, current.0)?;
        be.write(&mut self.current_cos, current.1)?;
        be.write(&mut self.next_logit, pending.0)?;
        be.write(&mut self.next_cos, pending.1)?;
        Ok(())
    }
}

fn empty_logits<B: Backend>(be: &B, classes: usize) -> Result<B::Buf> {
    be.upload(&vec![f32::NEG_INFINITY; classes])
}

/// The no-gradient pass at the first SLA epoch that fills every expert's table S from the whole
/// training set (Algorithm 1, the table of Eqs. 10-11): evaluation-mode forward on plain images, each
/// batch merged with [`observe`](Self::observe), then [`finish`](Self::finish).
pub struct SlaTableFill<B: Backend> {
    fresh: Vec<SlaTable<B>>,
    classes: usize,
}

impl<B: Backend> SlaTableFill<B> {
    /// A pass for `experts` tables of `classes` classes.
    pub fn new(be: &B, experts: usize, classes: usize) -> Result<Self> {
        let fresh = (0..experts)
            .map(|_| SlaTable::new(be, classes, SlaTableRule::Epoch))
            .collect::<Result<_>>()?;
        Ok(Self { fresh, classes })
    }

    /// Merges one batch: `view [n, 3, h, w]` plain images, `labels [n]`.
    pub fn observe(
        &mut self,
        be: &B,
        model: &MultiExpertNet<B>,
        view: &B::Buf,
        labels: &B::Index,
        (n, h, w): (usize, usize, usize),
    ) -> Result<()> {
        let out = model.forward_eval(be, view, n, h, w)?;
        let dims = CosineDims {
            n,
            d: model.feature_dim(),
            c: self.classes,
        };
        for (k, table) in self.fresh.iter_mut().enumerate() {
            let cos = be.row_cosine(&out.features[k], model.classifier_weight(k), labels, dims)?;
            table.observe(be, &out.logits[k], &cos, labels, n)?;
        }
        Ok(())
    }

    /// Merges the ranks' passes over their shards ([`SlaTable::merge_ranks`]); call before
    /// [`finish`](Self::finish).
    pub fn merge_ranks(&mut self, be: &B, dist: &Dist<B>) -> Result<()> {
        self.fresh
            .iter_mut()
            .try_for_each(|t| t.merge_ranks(be, dist))
    }

    /// Makes the filled tables the current ones of `tables` (under any rule), with nothing pending.
    pub fn finish(self, be: &B, tables: &mut [SlaTable<B>]) -> Result<()> {
        let empty = (
            vec![f32::NEG_INFINITY; self.classes],
            vec![0.0; self.classes],
        );
        for (table, mut filled) in tables.iter_mut().zip(self.fresh) {
            filled.end_epoch(be)?;
            let current = filled.current(be)?;
            table.restore(be, (&current.0, &current.1), (&empty.0, &empty.1))?;
        }
        Ok(())
    }
}
