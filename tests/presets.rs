//! Every preset resolves to a valid configuration with the paper's settings and reported numbers.

use ltrain::config::{DatasetKind, ModelKind, Schedule, TrainConfig};
use ltrain::presets::{list_presets, load_preset, preset_names};

/// (name, dataset, rho, top-1, ECE) from paper Table 2 (top-1) and Table 7 (ECE at 1/tau = 1).
const CIFAR_200_EPOCHS: [(&str, DatasetKind, f64, f64, f64); 8] = [
    ("cifar10-lt-r200", DatasetKind::Cifar10Lt, 200.0, 83.3, 1.4),
    ("cifar10-lt-r100", DatasetKind::Cifar10Lt, 100.0, 86.7, 1.9),
    ("cifar10-lt-r50", DatasetKind::Cifar10Lt, 50.0, 88.9, 2.4),
    ("cifar10-lt-r10", DatasetKind::Cifar10Lt, 10.0, 91.9, 2.0),
    (
        "cifar100-lt-r200",
        DatasetKind::Cifar100Lt,
        200.0,
        50.1,
        1.8,
    ),
    (
        "cifar100-lt-r100",
        DatasetKind::Cifar100Lt,
        100.0,
        54.6,
        1.8,
    ),
    ("cifar100-lt-r50", DatasetKind::Cifar100Lt, 50.0, 58.4, 1.7),
    ("cifar100-lt-r10", DatasetKind::Cifar100Lt, 10.0, 67.9, 2.4),
];

/// Settings shared by every preset (paper section 5.3).
fn assert_method(cfg: &TrainConfig) {
    assert_eq!(cfg.experts, 3);
    assert_eq!(cfg.weight_decay, 5e-4);
    assert_eq!(cfg.loss, ltrain::config::LossKind::LaSla);
    assert_eq!((cfg.tau, cfg.la_tau), (1.0, 1.0));
    assert!(cfg.augment);
}

fn assert_cifar(cfg: &TrainConfig, epochs: usize, milestones: [usize; 2]) {
    assert_method(cfg);
    assert_eq!(cfg.model, ModelKind::Resnet32);
    assert_eq!((cfg.epochs, cfg.batch_size, cfg.lr), (epochs, 128, 0.1));
    assert_eq!((cfg.schedule, cfg.lr_decay), (Schedule::Multistep, 0.1));
    assert_eq!(cfg.milestones, milestones);
    assert_eq!(cfg.stage2_epoch, Some(milestones[0]));
    assert_eq!(cfg.warmup_epochs, 5);
    assert_eq!(cfg.mixup_alpha, 0.2);
    cfg.validate().unwrap();
}

#[test]
fn cifar_200_epoch_presets() {
    for (name, dataset, rho, top1, ece) in CIFAR_200_EPOCHS {
        let (cfg, paper) = load_preset(name).unwrap();
        assert_eq!(cfg.preset.as_deref(), Some(name));
        assert_eq!(
            (cfg.dataset, cfg.imbalance.ratio()),
            (dataset, Some(rho)),
            "{name}"
        );
        assert_cifar(&cfg, 200, [160, 180]);
        let paper = paper.unwrap();
        assert_eq!((paper.top1, paper.ece), (top1, Some(ece)), "{name}");
        assert_eq!((paper.many, paper.medium, paper.few), (None, None, None));
        assert!(paper.source.contains("Table 2") && paper.source.contains("Table 7"));
    }
}

#[test]
fn cifar100_400_epoch_preset() {
    let (cfg, paper) = load_preset("cifar100-lt-r100-400ep").unwrap();
    assert_eq!(
        (cfg.dataset, cfg.imbalance.ratio()),
        (DatasetKind::Cifar100Lt, Some(100.0))
    );
    assert_cifar(&cfg, 400, [320, 360]);
    let p = paper.unwrap();
    assert_eq!(
        (p.top1, p.ece, p.many, p.medium, p.few),
        (55.4, Some(1.4), Some(69.3), Some(55.5), Some(39.3))
    );
    assert_eq!(p.source, "Table 3");
}

#[test]
fn imagenet_presets() {
    let expected = [
        (
            "imagenet-lt-resnet50",
            ModelKind::Resnet50,
            128,
            57.8,
            Some(3.3),
            [65.4, 52.2, 54.8],
        ),
        (
            "imagenet-lt-resnext50",
            ModelKind::Resnext50_32x4d,
            64,
            59.9,
            None,
            [67.1, 54.7, 56.5],
        ),
    ];
    for (name, model, batch, top1, ece, [many, medium, few]) in expected {
        let (mut cfg, paper) = load_preset(name).unwrap();
        assert_method(&cfg);
        assert_eq!(
            (cfg.dataset, cfg.model, cfg.batch_size),
            (DatasetKind::ImagenetLt, model, batch)
        );
        assert_eq!(
            (cfg.epochs, cfg.lr, cfg.schedule),
            (180, 0.025, Schedule::Cosine)
        );
        assert_eq!(
            (cfg.stage2_epoch, cfg.mixup_alpha, cfg.image_size),
            (Some(160), 0.1, 224)
        );
        // Data paths are left to flags: without them the configuration is rejected, with them valid.
        assert!(cfg
            .validate()
            .unwrap_err()
            .to_string()
            .contains("--data-dir"));
        cfg.data_dir = Some("imagenet".into());
        cfg.train_list = Some("ImageNet_LT_train.txt".into());
        cfg.test_list = Some("ImageNet_LT_test.txt".into());
        cfg.validate().unwrap();
        let p = paper.unwrap();
        assert_eq!((p.top1, p.ece), (top1, ece), "{name}");
        assert_eq!(
            (p.many, p.medium, p.few),
            (Some(many), Some(medium), Some(few)),
            "{name}"
        );
    }
}

#[test]
fn keys_a_preset_does_not_set_keep_their_defaults() {
    let (cfg, _) = load_preset("cifar10-lt-r100").unwrap();
    let default = TrainConfig::default();
    assert_eq!(cfg.seed, default.seed);
    assert_eq!(cfg.sla_table_rule, default.sla_table_rule);
    assert_eq!(cfg.data_dir, None);
    // The resolved configuration survives the TOML round trip the run directory uses.
    let again = TrainConfig::from_toml_str(&cfg.to_toml().unwrap(), "round trip").unwrap();
    assert_eq!(again, cfg);
}

#[test]
fn list_matches_names() {
    let listed = list_presets();
    let names = preset_names();
    assert_eq!(listed.len(), 11);
    assert_eq!(listed.iter().map(|p| p.name).collect::<Vec<_>>(), names);
    for p in &listed {
        assert!(p.paper.is_some(), "{} has no paper reference", p.name);
        assert!(!p.description.is_empty());
    }
    let r10 = listed.iter().find(|p| p.name == "cifar100-lt-r10").unwrap();
    assert!(
        r10.description.starts_with("CIFAR-100-LT (rho = 10)"),
        "{}",
        r10.description
    );
}

#[test]
fn unknown_preset_lists_the_valid_names() {
    let err = load_preset("cifar10-lt-r1000").unwrap_err().to_string();
    assert!(err.contains("unknown preset `cifar10-lt-r1000`"), "{err}");
    for name in preset_names() {
        assert!(err.contains(name), "{err} does not list {name}");
    }
}
