//! Data-parallel training with threads as ranks on the CPU backend: the collectives, K ranks at
//! batch b against one process at batch K*b (synchronised batch norm), the SLA table merged across
//! ranks, the sharded evaluation, and a killed multi-rank run resumed.

use ltrain::augment::Level;
use ltrain::backend::cpu::CpuBackend;
use ltrain::backend::Backend;
use ltrain::config::{ExpertWidth, Imbalance, LossKind, SlaTableRule, TrainConfig};
use ltrain::dist::{run_ranks, Collective, Dist};
use ltrain::method::{SlaTable, SlaTableFill};
use ltrain::model::MultiExpertNet;
use ltrain::nn::TensorData;
use ltrain::report::read_epoch_records;
use ltrain::train::checkpoint::load_checkpoint;
use ltrain::train::datasets::{self, Datasets};
use ltrain::train::evaluate::{evaluate, evaluate_sharded, test_loader};
use ltrain::train::{train, train_rank, RunOptions, RunResult, Start};
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

const TIMEOUT: Duration = Duration::from_secs(120);

fn backend() -> CpuBackend {
    CpuBackend::new(Some(1)).unwrap()
}

fn tiny_config() -> TrainConfig {
    TrainConfig {
        synthetic_classes: 4,
        synthetic_max_per_class: 24,
        synthetic_test_per_class: 6,
        imbalance: Imbalance::Ratio(4.0),
        expert_width: ExpertWidth::Reduced,
        epochs: 3,
        batch_size: 16,
        warmup_epochs: 1,
        milestones: vec![2],
        stage2_epoch: Some(2),
        lr: 0.05,
        threads: 1,
        ..TrainConfig::default()
    }
}

/// `cfg` on `ranks` thread ranks (rank 0 writing into `out`); every rank's result.
fn train_on_ranks(
    cfg: &TrainConfig,
    data: &Datasets,
    ranks: usize,
    out: &Path,
    start: fn() -> Start,
) -> anyhow::Result<Vec<RunResult>> {
    run_ranks(ranks, TIMEOUT, |comm| {
        let be = backend();
        train_rank(
            &be,
            cfg,
            data.train.as_ref(),
            data.test.as_ref(),
            out,
            start().into(),
            Dist::new(Arc::new(comm)),
            &mut |_| {},
        )
    })
}

fn f32_tensors(path: &Path) -> Vec<(String, Vec<f32>)> {
    let (tensors, _) = load_checkpoint(path).unwrap();
    let mut out: Vec<(String, Vec<f32>)> = tensors
        .into_iter()
        .filter_map(|t| match t.data {
            TensorData::F32(v) => Some((t.name, v)),
            TensorData::I64(_) => None,
        })
        .collect();
    out.sort_by(|a, b| a.0.cmp(&b.0));
    out
}

/// Sum, gather and broadcast (into a view) on three thread ranks of backend `make`.
fn collectives_in_rank_order<B: Backend>(make: fn() -> B) {
    let out = run_ranks(3, TIMEOUT, |comm| {
        let be = make();
        let rank = Collective::<B>::world(&comm).rank;
        let mine = [rank as f32, 10.0 * rank as f32 + 1.0];
        let mut sum = be.upload(&mine)?;
        comm.all_reduce_sum(&be, &mut sum)?;
        let gathered = comm.all_gather(&be, &be.upload(&mine)?)?;
        // Through a view: the broadcast writes into the parent's elements 1..3 only.
        let parent = be.upload(&[-1.0, mine[0], mine[1], -1.0])?;
        let mut view = be.view(&parent, 1, 2)?;
        comm.broadcast(&be, &mut view, 2)?;
        Ok((
            be.download(&sum)?,
            be.download(&gathered)?,
            be.download(&parent)?,
        ))
    })
    .unwrap();
    for (sum, gathered, parent) in out {
        assert_eq!(sum, [3.0, 33.0]);
        assert_eq!(gathered, [0.0, 1.0, 1.0, 11.0, 2.0, 21.0]);
        assert_eq!(parent, [-1.0, 2.0, 21.0, -1.0]);
    }
}

#[test]
fn thread_collectives_sum_gather_and_broadcast_in_rank_order() {
    collectives_in_rank_order(backend);
    // The CUDA backend's buffers (on its emulator) go through the same seam.
    collectives_in_rank_order(|| ltrain::backend::cuda::CudaBackend::new_emulated().unwrap());
}

#[test]
fn a_failing_rank_stops_its_peers_with_its_error() {
    let err = run_ranks(3, TIMEOUT, |comm| {
        let be = backend();
        if Collective::<CpuBackend>::world(&comm).rank == 1 {
            anyhow::bail!("bad input on rank 1");
        }
        let mut x = be.upload(&[1.0])?;
        comm.all_reduce_sum(&be, &mut x)?;
        Ok(())
    })
    .unwrap_err();
    let text = format!("{err:#}");
    assert!(text.contains("bad input on rank 1"), "{text}");
    assert!(text.contains("rank 1 of 3"), "{text}");
}

#[test]
fn a_missing_peer_is_a_timeout_naming_the_collective() {
    let err = run_ranks(2, Duration::from_millis(300), |comm| {
        let be = backend();
        if Collective::<CpuBackend>::world(&comm).rank == 0 {
            let mut x = be.upload(&[1.0])?;
            comm.all_reduce_sum(&be, &mut x)?;
        } else {
            std::thread::sleep(Duration::from_millis(900));
        }
        Ok(())
    })
    .unwrap_err();
    let text = format!("{err:#}");
    assert!(text.contains("waited 0 s for its peers"), "{text}");
    assert!(text.contains("1 of 2 arrived"), "{text}");
}

/// `cfg` in one process at `2 * batch` and on two ranks at `batch`: how far the two-rank weights
/// are from the single-process ones, relative to how far training moved those (L2 over every
/// parameter).
fn two_ranks_against_one(cfg: &TrainConfig) -> f64 {
    let data = datasets::open(cfg).unwrap();
    let (one, two) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let be = backend();
    train(
        &be,
        cfg,
        data.train.as_ref(),
        data.test.as_ref(),
        one.path(),
        Start::Fresh.into(),
        &mut |_| {},
    )
    .unwrap();
    let half = TrainConfig {
        batch_size: cfg.batch_size / 2,
        ..cfg.clone()
    };
    let ranks = train_on_ranks(&half, &data, 2, two.path(), || Start::Fresh).unwrap();
    // Every rank reports the same (merged) evaluation.
    assert_eq!(ranks[0].last.predictions, ranks[1].last.predictions);
    let init = MultiExpertNet::from_config(&be, cfg, data.train.num_classes())
        .unwrap()
        .state_dict(&be)
        .unwrap();
    let a = f32_tensors(&one.path().join("checkpoint.safetensors"));
    let b = f32_tensors(&two.path().join("checkpoint.safetensors"));
    let (mut moved, mut apart) = (0f64, 0f64);
    for t in init {
        let (TensorData::F32(w0), false) = (&t.data, t.name.contains("running")) else {
            continue;
        };
        let find =
            |set: &[(String, Vec<f32>)]| set.iter().find(|(n, _)| *n == t.name).unwrap().1.clone();
        let (wa, wb) = (find(&a), find(&b));
        for ((x, y), z) in wa.iter().zip(&wb).zip(w0) {
            moved += ((x - z) as f64).powi(2);
            apart += ((x - y) as f64).powi(2);
        }
    }
    (apart / moved).sqrt()
}

#[test]
fn two_ranks_with_sync_bn_train_the_weights_of_one_process_at_twice_the_batch() {
    // Stage 1 with the experts' augmentation, then LA-SLA (the merged tables and SLA weights are
    // part of the comparison). No mixup: a shard's partners would differ from the whole batch's.
    // The exact check of the synchronised statistics and gradients is the batch-norm test below;
    // over a run, float rounding grows in this small batch-norm network: running the synchronised
    // formulation on ONE rank already lands about 0.02 from the plain one (measured), hence the
    // bound. Per-rank batch norm lands about 0.4 away: the comparison tells them apart.
    let cfg = TrainConfig {
        loss: LossKind::LaSla,
        mixup_alpha: 0.0,
        lr: 0.0005,
        epochs: 2,
        stage2_epoch: Some(1),
        milestones: vec![],
        warmup_epochs: 0,
        ..tiny_config()
    };
    let synced = two_ranks_against_one(&TrainConfig {
        sync_bn: true,
        ..cfg.clone()
    });
    let per_rank = two_ranks_against_one(&cfg);
    assert!(synced < 0.05, "two synchronised ranks: {synced}");
    assert!(per_rank > 0.2, "two ranks, batch norm per rank: {per_rank}");
}

#[test]
fn two_ranks_learn_the_synthetic_set() {
    // Balanced and large enough that learning does not hang on float rounding: seeds 0-2 reach
    // 59-72% here (the tiny set's 4-epoch runs scattered between 25% and 50%).
    let cfg = TrainConfig {
        sync_bn: true,
        synthetic_max_per_class: 64,
        synthetic_test_per_class: 16,
        imbalance: Imbalance::Ratio(1.0),
        epochs: 8,
        milestones: vec![7],
        stage2_epoch: Some(6),
        ..tiny_config()
    };
    let data = datasets::open(&cfg).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let ranks = train_on_ranks(&cfg, &data, 2, dir.path(), || Start::Fresh).unwrap();
    // 4 classes: chance is 25%.
    let top1 = ranks[0].last.metrics.top1;
    assert!(top1 > 45.0, "top-1 {top1}");
}

#[test]
fn the_merged_sla_table_is_the_single_process_table() {
    let cfg = tiny_config();
    let data = datasets::open(&cfg).unwrap();
    let train_set = data.train.as_ref();
    let (h, w) = train_set.image_hw();
    let classes = train_set.num_classes();
    let fill = |dist: Dist<CpuBackend>, be: &CpuBackend| -> anyhow::Result<Vec<Vec<f32>>> {
        let model = MultiExpertNet::from_config(be, &cfg, classes)?;
        let world = dist.world();
        let all: Vec<usize> = (0..train_set.len()).collect();
        let mut pass = SlaTableFill::new(be, cfg.experts, classes)?;
        // Batches of 5, rank r taking every size-th one.
        for batch in all.chunks(5).skip(world.rank).step_by(world.size) {
            let x = train_set.load(batch, Level::Plain, cfg.seed, 0)?;
            let labels: Vec<u32> = batch.iter().map(|&i| train_set.labels()[i]).collect();
            let (x, labels) = (be.upload(&x)?, be.upload_index(&labels)?);
            pass.observe(be, &model, &x, &labels, (batch.len(), h, w))?;
        }
        pass.merge_ranks(be, &dist)?;
        let mut tables: Vec<SlaTable<CpuBackend>> = (0..cfg.experts)
            .map(|_| SlaTable::new(be, classes, SlaTableRule::Epoch))
            .collect::<anyhow::Result<_>>()?;
        pass.finish(be, &mut tables)?;
        let mut out = Vec::new();
        for t in &tables {
            let (l, c) = t.current(be)?;
            out.push(l);
            out.push(c);
        }
        Ok(out)
    };
    let be = backend();
    let single = fill(Dist::single(), &be).unwrap();
    assert!(single[0].iter().all(|l| l.is_finite()));
    for ranks in [2, 3] {
        let merged = run_ranks(ranks, TIMEOUT, |comm| {
            fill(Dist::new(Arc::new(comm)), &backend())
        })
        .unwrap();
        for m in merged {
            assert_eq!(m, single, "{ranks} ranks");
        }
    }
}

#[test]
fn the_sharded_evaluation_is_the_whole_evaluation() {
    let cfg = tiny_config();
    let data = datasets::open(&cfg).unwrap();
    let classes = data.train.num_classes();
    let counts = data.train.class_counts();
    let test_set = data.test.as_ref();
    let be = backend();
    let model = MultiExpertNet::from_config(&be, &cfg, classes).unwrap();
    // 24 test images in batches of 5: ranks get 3 + 2 (two ranks) or 2 + 2 + 1 batches.
    let whole = evaluate(
        &be,
        &model,
        &mut test_loader(&be, test_set, 5).unwrap(),
        &counts,
        false,
    )
    .unwrap();
    assert_eq!(whole.predictions.len(), 24);
    for ranks in [2, 3] {
        let parts = run_ranks(ranks, TIMEOUT, |comm| {
            let be = backend();
            let model = MultiExpertNet::from_config(&be, &cfg, classes)?;
            evaluate_sharded(
                &be,
                &model,
                &mut test_loader(&be, test_set, 5)?,
                &counts,
                false,
                &Dist::new(Arc::new(comm)),
            )
        })
        .unwrap();
        for p in parts {
            assert_eq!(p.predictions, whole.predictions, "{ranks} ranks");
            assert_eq!(
                format!("{:?}", p.metrics),
                format!("{:?}", whole.metrics),
                "{ranks} ranks"
            );
        }
    }
}

#[test]
fn a_killed_two_rank_run_resumes_to_the_uninterrupted_result() {
    // Per-rank batch norm: rank 0's running statistics are what every rank evaluates with and what
    // the checkpoint holds.
    let cfg = TrainConfig {
        loss: LossKind::LaSla,
        ..tiny_config()
    };
    let data = datasets::open(&cfg).unwrap();
    let (straight, split) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    train_on_ranks(&cfg, &data, 2, straight.path(), || Start::Fresh).unwrap();
    let first_part = TrainConfig {
        epochs: 2,
        ..cfg.clone()
    };
    train_on_ranks(&first_part, &data, 2, split.path(), || Start::Fresh).unwrap();
    // Another world size is refused, naming the one the run needs.
    let err = train_on_ranks(&cfg, &data, 3, split.path(), || Start::Resume)
        .err()
        .expect("three ranks cannot resume a two-rank run");
    let text = format!("{err:#}");
    assert!(text.contains("trained on 2 ranks"), "{text}");
    let be = backend();
    let err = train(
        &be,
        &cfg,
        data.train.as_ref(),
        data.test.as_ref(),
        split.path(),
        RunOptions::from(Start::Resume),
        &mut |_| {},
    )
    .err()
    .expect("one rank cannot resume a two-rank run");
    assert!(format!("{err:#}").contains("cannot resume on 1"), "{err:#}");
    train_on_ranks(&cfg, &data, 2, split.path(), || Start::Resume).unwrap();
    let a = f32_tensors(&straight.path().join("checkpoint.safetensors"));
    let b = f32_tensors(&split.path().join("checkpoint.safetensors"));
    assert_eq!(a.len(), b.len());
    for ((na, va), (nb, vb)) in a.iter().zip(&b) {
        assert_eq!(na, nb);
        assert_eq!(va, vb, "{na} differs after resume");
    }
    let ra = read_epoch_records(&straight.path().join("metrics.jsonl")).unwrap();
    let rb = read_epoch_records(&split.path().join("metrics.jsonl")).unwrap();
    // Only rank 0 wrote: one line per epoch.
    assert_eq!(ra.iter().map(|r| r.epoch).collect::<Vec<_>>(), [1, 2, 3]);
    for (x, y) in ra.iter().zip(&rb) {
        assert_eq!(
            (x.epoch, x.top1, x.ece, x.train_loss),
            (y.epoch, y.top1, y.ece, y.train_loss)
        );
    }
}

#[test]
fn settings_several_ranks_cannot_share_are_refused_by_name() {
    let data = datasets::open(&tiny_config()).unwrap();
    let dir = tempfile::tempdir().unwrap();
    for (cfg, what) in [
        (
            TrainConfig {
                sla_table_rule: SlaTableRule::Running,
                ..tiny_config()
            },
            "sla_table_rule",
        ),
        (
            TrainConfig {
                normalize_weights: true,
                loss: LossKind::LaSla,
                ..tiny_config()
            },
            "--normalize-weights",
        ),
    ] {
        let err = train_on_ranks(&cfg, &data, 2, dir.path(), || Start::Fresh)
            .err()
            .expect("refused");
        assert!(format!("{err:#}").contains(what), "{err:#}");
    }
}

/// Deterministic values in [-1, 1).
fn values(n: usize, seed: u32) -> Vec<f32> {
    (0..n)
        .map(|i| {
            let h = (i as u32 ^ seed.wrapping_mul(0x9e37_79b9)).wrapping_mul(0x85eb_ca6b);
            let h = (h ^ (h >> 13)).wrapping_mul(0xc2b2_ae35);
            (h >> 8) as f32 / (1u32 << 23) as f32 - 1.0
        })
        .collect()
}

#[test]
fn synchronised_batch_norm_matches_one_batch_norm_over_the_whole_batch() {
    use ltrain::backend::BatchNormBackwardAct;
    use ltrain::nn::{BatchNorm2d, Conv2d, Nchw};
    use rand::SeedableRng;
    // A batch of 6 split 4 + 2 (unequal shards: the counts weigh the statistics), conv 3x3 then
    // batch norm with a residual and a ReLU, the gradient of a fixed dy.
    let (n, c_in, c, hw) = (6, 3, 5, 4);
    let x = values(n * c_in * hw * hw, 1);
    let residual = values(n * c * hw * hw, 2);
    let dy = values(n * c * hw * hw, 3);
    let per = |len: usize| len / n;
    let run = |be: &CpuBackend, rows: std::ops::Range<usize>, sync: Option<Dist<CpuBackend>>| {
        let mut rng = rand::rngs::StdRng::seed_from_u64(7);
        let conv = Conv2d::new(be, &mut rng, "conv", c_in, c, 3, 1, 1, 1)?;
        let mut bn = BatchNorm2d::new(be, "bn", c)?;
        bn.sync = sync.and_then(|d| d.peers().cloned());
        let take = |v: &[f32]| -> Vec<f32> {
            let k = per(v.len());
            v[rows.start * k..rows.end * k].to_vec()
        };
        let s = Nchw::new(rows.len(), c_in, hw, hw);
        let (xb, rb, dyb) = (
            be.upload(&take(&x))?,
            be.upload(&take(&residual))?,
            be.upload(&take(&dy))?,
        );
        let (z, y, out) = bn.forward_train_after(be, &conv, &xb, s, Some(&rb), true)?;
        let mut masked = be.empty(be.len(&y))?;
        let act = BatchNormBackwardAct {
            relu_output: Some(&y),
            masked_dy: Some(&mut masked),
        };
        let dz = bn.backward_act(be, &dyb, &z, out, act)?;
        let grads = |p: &ltrain::nn::Param<CpuBackend>| be.download(p.grad.as_ref().unwrap());
        Ok::<_, anyhow::Error>([
            be.download(&y)?,
            be.download(&dz)?,
            grads(&bn.weight)?,
            grads(&bn.bias)?,
            be.download(&bn.running_mean.value)?,
            be.download(&bn.running_var.value)?,
        ])
    };
    let whole = run(&backend(), 0..n, None).unwrap();
    let shards = run_ranks(2, TIMEOUT, |comm| {
        let rank = Collective::<CpuBackend>::world(&comm).rank;
        let rows = if rank == 0 { 0..4 } else { 4..n };
        run(&backend(), rows, Some(Dist::new(Arc::new(comm))))
    })
    .unwrap();
    let close = |a: &[f32], b: &[f32], what: &str| {
        assert_eq!(a.len(), b.len(), "{what}");
        for (i, (x, y)) in a.iter().zip(b).enumerate() {
            assert!(
                (x - y).abs() <= 1e-5 * (1.0 + x.abs()),
                "{what}[{i}]: {x} vs {y}"
            );
        }
    };
    // Outputs and input gradients: the ranks' rows are the whole batch's rows.
    for (k, what) in [(0, "y"), (1, "dz")] {
        let joined: Vec<f32> = shards.iter().flat_map(|s| s[k].iter().copied()).collect();
        close(&whole[k], &joined, what);
    }
    // Parameter gradients: the ranks' parts sum to the whole batch's (what the all-reduce adds).
    for (k, what) in [(2, "dgamma"), (3, "dbeta")] {
        let summed: Vec<f32> = (0..c)
            .map(|ch| shards[0][k][ch] + shards[1][k][ch])
            .collect();
        close(&whole[k], &summed, what);
    }
    // Running statistics: every rank has the whole batch's.
    for s in &shards {
        close(&whole[4], &s[4], "running_mean");
        close(&whole[5], &s[5], "running_var");
    }
    // Per-rank batch norm is not the same: the comparison can tell.
    let own = run(&backend(), 0..4, None).unwrap();
    assert!(own[0]
        .iter()
        .zip(&whole[0])
        .any(|(a, b)| (a - b).abs() > 1e-3));
}
