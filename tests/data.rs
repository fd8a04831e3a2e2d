//! Data layer: the LDAM long-tail counts against the shared README's lists, the embedded index
//! lists, CIFAR loaders on files written here (good, truncated, corrupt, archived), the real
//! CIFAR-10 files when `../shared/data` is present, the synthetic set, info and cut.

use std::path::{Path, PathBuf};

use ltrain::data::cifar::{self, CifarVariant};
use ltrain::data::info::{self, DatasetInfo, Shot};
use ltrain::data::longtail::{self, LtMethod};
use ltrain::data::synthetic::{self, SyntheticConfig};
use ltrain::data::ImageSet;

/// The per-class counts printed in /work/shared/data/README.md (LDAM-DRW protocol).
const README_COUNTS: &str = "\
CIFAR-10 rho=10: total 20431; per class 0..9: 5000 3871 2997 2320 1796 1391 1077 834 645 500
CIFAR-10 rho=50: total 13996; per class 0..9: 5000 3237 2096 1357 878 568 368 238 154 100
CIFAR-10 rho=100: total 12406; per class 0..9: 5000 2997 1796 1077 645 387 232 139 83 50
CIFAR-10 rho=200: total 11203; per class 0..9: 5000 2775 1540 854 474 263 146 81 45 25
CIFAR-100 rho=10: total 19573; per class 0..99: 500 488 477 466 455 445 434 424 415 405 396 387 378 369 361 352 344 336 328 321 314 306 299 292 286 279 273 266 260 254 248 243 237 232 226 221 216 211 206 201 197 192 188 183 179 175 171 167 163 159 156 152 149 145 142 139 135 132 129 126 123 121 118 115 112 110 107 105 102 100 98 95 93 91 89 87 85 83 81 79 77 75 74 72 70 69 67 66 64 63 61 60 58 57 56 54 53 52 51 50
CIFAR-100 rho=50: total 12608; per class 0..99: 500 480 462 444 426 410 394 379 364 350 336 323 311 299 287 276 265 255 245 235 226 218 209 201 193 186 178 172 165 158 152 146 141 135 130 125 120 115 111 107 102 98 95 91 87 84 81 78 75 72 69 66 64 61 59 56 54 52 50 48 46 44 43 41 39 38 36 35 34 32 31 30 29 27 26 25 24 23 22 22 21 20 19 18 18 17 16 16 15 14 14 13 13 12 12 11 11 10 10 10
CIFAR-100 rho=100: total 10847; per class 0..99: 500 477 455 434 415 396 378 361 344 328 314 299 286 273 260 248 237 226 216 206 197 188 179 171 163 156 149 142 135 129 123 118 112 107 102 98 93 89 85 81 77 74 70 67 64 61 58 56 53 51 48 46 44 42 40 38 36 35 33 32 30 29 27 26 25 24 23 22 21 20 19 18 17 16 15 15 14 13 13 12 12 11 11 10 10 9 9 8 8 7 7 7 6 6 6 6 5 5 5 5
CIFAR-100 rho=200: total 9502; per class 0..99: 500 473 449 425 403 382 362 343 325 308 292 277 263 249 236 224 212 201 190 180 171 162 154 146 138 131 124 117 111 105 100 95 90 85 81 76 72 69 65 62 58 55 52 50 47 44 42 40 38 36 34 32 30 29 27 26 24 23 22 21 20 19 18 17 16 15 14 13 13 12 11 11 10 10 9 9 8 8 7 7 6 6 6 5 5 5 5 4 4 4 4 3 3 3 3 3 2 2 2 2";

#[test]
fn lt_counts_match_the_readme_lists() {
    for line in README_COUNTS.lines() {
        let (head, rest) = line.split_once(": total ").unwrap();
        let classes = if head.starts_with("CIFAR-100") {
            100
        } else {
            10
        };
        let rho: f64 = head.split("rho=").nth(1).unwrap().parse().unwrap();
        let (total, list) = rest.split_once("; ").unwrap();
        let expect: Vec<usize> = list
            .split(": ")
            .nth(1)
            .unwrap()
            .split(' ')
            .map(|v| v.parse().unwrap())
            .collect();
        let counts = longtail::lt_counts(50_000 / classes, rho, classes);
        assert_eq!(counts, expect, "{head}");
        assert_eq!(
            counts.iter().sum::<usize>(),
            total.parse::<usize>().unwrap(),
            "{head}"
        );
    }
}

#[test]
fn shot_groups_follow_the_thresholds() {
    assert_eq!(info::shot_of(101), Shot::Many);
    assert_eq!(info::shot_of(100), Shot::Medium);
    assert_eq!(info::shot_of(20), Shot::Medium);
    assert_eq!(info::shot_of(19), Shot::Few);
    // CIFAR-100-LT rho=100: 35 / 35 / 30; CIFAR-10-LT rho=100: 8 / 2 / 0
    let (many, medium, few) = info::shot_groups(&longtail::lt_counts(500, 100.0, 100));
    assert_eq!((many.len(), medium.len(), few.len()), (35, 35, 30));
    let (many, medium, few) = info::shot_groups(&longtail::lt_counts(5000, 100.0, 10));
    assert_eq!((many.len(), medium.len(), few.len()), (8, 2, 0));
    assert_eq!(medium, vec![8, 9]);
}

#[test]
fn info_serialises_the_required_fields() {
    let counts = longtail::lt_counts(5000, 100.0, 10);
    let info = DatasetInfo::new("cifar10-lt", &counts, Some(&[1000; 10]));
    let json: serde_json::Value = serde_json::to_value(&info).unwrap();
    assert_eq!(json["total"], 12406);
    assert_eq!(json["class_counts"][9], 50);
    assert_eq!(json["imbalance"], 100.0);
    assert_eq!(json["many"].as_array().unwrap().len(), 8);
    assert_eq!(json["medium"], serde_json::json!([8, 9]));
    assert_eq!(json["few"], serde_json::json!([]));
    assert_eq!(json["test_total"], 10000);
    let table = info.to_table();
    assert!(
        table.contains("12406") && table.contains("100.00"),
        "{table}"
    );
    assert_eq!(DatasetInfo::new("x", &[3, 0], None).imbalance, None);
}

/// A tiny image set: image i has every byte equal to `(i * 7 + offset) % 256`.
fn fake_set(labels: &[u32], classes: usize, h: usize, w: usize) -> ImageSet {
    let mut set = ImageSet::empty(h, w, classes);
    for (i, &y) in labels.iter().enumerate() {
        set.push(&vec![(i * 7 % 256) as u8; 3 * h * w], y);
    }
    set
}

#[test]
fn the_official_full_set_gives_the_embedded_ldam_subset() {
    for variant in [CifarVariant::Cifar10, CifarVariant::Cifar100] {
        let classes = variant.classes();
        let n_max = 50_000 / classes;
        // a stand-in for the official train order: every index of the embedded lists carries
        // its class, the remaining indices fill each class to n_max — 1x1 images keep it small
        let superset = longtail::ldam_superset(variant);
        let expect_total = if classes == 10 { 20431 } else { 19573 };
        assert_eq!(superset.iter().map(Vec::len).sum::<usize>(), expect_total);
        let mut labels = vec![u32::MAX; 50_000];
        for (c, idx) in superset.iter().enumerate() {
            for &i in idx {
                assert_eq!(labels[i], u32::MAX, "index {i} listed twice");
                labels[i] = c as u32;
            }
        }
        let mut fill =
            (0..classes).flat_map(|c| std::iter::repeat_n(c as u32, n_max - superset[c].len()));
        for y in labels.iter_mut().filter(|y| **y == u32::MAX) {
            *y = fill.next().unwrap();
        }
        let set = fake_set(&labels, classes, 1, 1);
        for rho in [10.0, 50.0, 100.0, 200.0] {
            let lt = longtail::long_tail(&set, Some(variant), rho, 0).unwrap();
            assert_eq!(lt.method, LtMethod::LdamIndex);
            let counts = longtail::lt_counts(n_max, rho, classes);
            assert_eq!(lt.set.class_counts(), counts);
            let expect: Vec<usize> = superset
                .iter()
                .zip(&counts)
                .flat_map(|(idx, &k)| idx[..k].to_vec())
                .collect();
            assert_eq!(lt.source_indices, expect);
            assert_eq!(lt.set.n, expect.len());
        }
        // rho below 10 cannot use the lists: seeded shuffle, still the right counts
        let lt = longtail::long_tail(&set, Some(variant), 5.0, 1).unwrap();
        assert_eq!(lt.method, LtMethod::SeededShuffle { seed: 1 });
        assert_eq!(
            lt.set.class_counts(),
            longtail::lt_counts(n_max, 5.0, classes)
        );
        // without the variant (or with labels out of the official order) no index lists are used
        let lt = longtail::long_tail(&set, None, 100.0, 1).unwrap();
        assert_eq!(lt.method, LtMethod::SeededShuffle { seed: 1 });
    }
    assert_eq!(
        longtail::lt_counts(5000, 100.0, 10).iter().sum::<usize>(),
        12406
    );
    assert_eq!(
        longtail::lt_counts(500, 100.0, 100).iter().sum::<usize>(),
        10847
    );
}

#[test]
fn embedded_lists_match_the_shared_json() {
    for (variant, dir) in [
        (CifarVariant::Cifar10, "cifar-10"),
        (CifarVariant::Cifar100, "cifar-100"),
    ] {
        let path = shared_data().join(dir).join("train_lt_r10.idx");
        let Ok(text) = std::fs::read_to_string(&path) else {
            println!("skip: {} not present", path.display());
            continue;
        };
        let json: serde_json::Value = serde_json::from_str(&text).unwrap();
        let superset = longtail::ldam_superset(variant);
        for (c, idx) in superset.iter().enumerate() {
            let listed: Vec<usize> = json["per_class"][c.to_string()]
                .as_array()
                .unwrap()
                .iter()
                .map(|v| v.as_u64().unwrap() as usize)
                .collect();
            assert_eq!(idx, &listed, "{dir} class {c}");
        }
    }
}

#[test]
fn grouped_files_give_prefixes_and_others_a_seeded_shuffle() {
    // grouped 3-class set with 8 / 6 / 5 images
    let labels: Vec<u32> = [0u32; 8]
        .iter()
        .chain(&[1; 6])
        .chain(&[2; 5])
        .copied()
        .collect();
    let set = fake_set(&labels, 3, 2, 2);
    let lt = longtail::long_tail(&set, None, 4.0, 0).unwrap();
    // n_c = int(8 * 0.25^(c/2)) = 8, 4, 2
    assert_eq!(lt.method, LtMethod::GroupedPrefix);
    assert_eq!(
        lt.source_indices,
        vec![0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 14, 15]
    );
    assert_eq!(lt.set.pixels(8), set.pixels(8));
    // interleaved labels: seeded per-class shuffle, deterministic per seed
    let labels: Vec<u32> = (0..30).map(|i| i % 3).collect();
    let set = fake_set(&labels, 3, 1, 1);
    let a = longtail::long_tail(&set, None, 4.0, 7).unwrap();
    let b = longtail::long_tail(&set, None, 4.0, 7).unwrap();
    let c = longtail::long_tail(&set, None, 4.0, 8).unwrap();
    assert_eq!(a.method, LtMethod::SeededShuffle { seed: 7 });
    assert_eq!(a.source_indices, b.source_indices);
    assert_ne!(a.source_indices, c.source_indices);
    assert_eq!(a.set.class_counts(), vec![10, 5, 2]);
    assert!(a
        .source_indices
        .iter()
        .all(|&i| set.labels[i]
            == a.set.labels[a.source_indices.iter().position(|&j| j == i).unwrap()]));
    // asking for more than a class has is an error, not a panic
    let err = longtail::long_tail(&lt.set, None, 2.0, 0).unwrap_err();
    assert!(err.to_string().contains("class 1"), "{err}");
    assert!(longtail::long_tail(&set, None, 0.5, 0).is_err());
}

fn record(variant: CifarVariant, label: u8, fill: u8) -> Vec<u8> {
    let mut r = Vec::new();
    if variant == CifarVariant::Cifar100 {
        r.push(cifar::CIFAR100_COARSE_OF_FINE[label as usize]);
    }
    r.push(label);
    r.extend(std::iter::repeat_n(fill, 3072));
    r
}

fn records(variant: CifarVariant, labels: &[u8], fill_base: u8) -> Vec<u8> {
    labels
        .iter()
        .enumerate()
        .flat_map(|(i, &y)| record(variant, y, fill_base.wrapping_add(i as u8)))
        .collect()
}

#[test]
fn record_files_load_and_bad_ones_are_named_errors() {
    let dir = tempfile::tempdir().unwrap();
    let good = dir.path().join("train.bin");
    std::fs::write(&good, records(CifarVariant::Cifar10, &[3, 1, 4], 10)).unwrap();
    let set = cifar::load_record_file(CifarVariant::Cifar10, &good).unwrap();
    assert_eq!((set.n, set.h, set.w, set.classes), (3, 32, 32, 10));
    assert_eq!(set.labels, vec![3, 1, 4]);
    assert!(set.pixels(2).iter().all(|&v| v == 12));

    let mut bytes = records(CifarVariant::Cifar10, &[3, 1], 0);
    bytes.truncate(bytes.len() - 5);
    let truncated = dir.path().join("truncated.bin");
    std::fs::write(&truncated, &bytes).unwrap();
    let err = cifar::load_record_file(CifarVariant::Cifar10, &truncated).unwrap_err();
    let msg = format!("{err:#}");
    assert!(
        msg.contains("truncated.bin") && msg.contains("3073"),
        "{msg}"
    );

    let mut bytes = records(CifarVariant::Cifar10, &[3, 1, 2], 0);
    bytes[2 * 3073] = 10;
    let corrupt = dir.path().join("corrupt.bin");
    std::fs::write(&corrupt, &bytes).unwrap();
    let msg = format!(
        "{:#}",
        cifar::load_record_file(CifarVariant::Cifar10, &corrupt).unwrap_err()
    );
    assert!(
        msg.contains("corrupt.bin") && msg.contains("record 2") && msg.contains("label 10"),
        "{msg}"
    );

    let msg = format!(
        "{:#}",
        cifar::load_record_file(CifarVariant::Cifar10, &dir.path().join("missing.bin"))
            .unwrap_err()
    );
    assert!(msg.contains("missing.bin"), "{msg}");

    // CIFAR-100: fine label is the class; a fine label of 100 is out of range
    let c100 = dir.path().join("c100.bin");
    std::fs::write(&c100, records(CifarVariant::Cifar100, &[99, 0, 42], 0)).unwrap();
    assert_eq!(
        cifar::load_record_file(CifarVariant::Cifar100, &c100)
            .unwrap()
            .labels,
        vec![99, 0, 42]
    );
    let mut bytes = records(CifarVariant::Cifar100, &[5], 0);
    bytes[1] = 100;
    std::fs::write(&c100, &bytes).unwrap();
    let msg = format!(
        "{:#}",
        cifar::load_record_file(CifarVariant::Cifar100, &c100).unwrap_err()
    );
    assert!(
        msg.contains("record 0") && msg.contains("label 100"),
        "{msg}"
    );
    // a CIFAR-10 file read as CIFAR-100 is not a whole number of records
    assert!(cifar::load_record_file(CifarVariant::Cifar100, &good).is_err());
}

/// Write the official CIFAR-10 layout (5 train batches of 2 records + test of 3) into `dir`.
fn write_official_cifar10(dir: &Path) -> Vec<(String, Vec<u8>)> {
    let mut files = Vec::new();
    for k in 1..=5u8 {
        files.push((
            format!("data_batch_{k}.bin"),
            records(CifarVariant::Cifar10, &[k, k + 1], 10 * k),
        ));
    }
    files.push((
        "test_batch.bin".to_string(),
        records(CifarVariant::Cifar10, &[0, 9, 5], 200),
    ));
    std::fs::create_dir_all(dir).unwrap();
    for (name, bytes) in &files {
        std::fs::write(dir.join(name), bytes).unwrap();
    }
    files
}

#[test]
fn official_directory_and_archive_load_the_same() {
    let tmp = tempfile::tempdir().unwrap();
    let batches = tmp.path().join("cifar-10-batches-bin");
    let files = write_official_cifar10(&batches);
    let from_parent = cifar::load_official(CifarVariant::Cifar10, tmp.path()).unwrap();
    let from_dir = cifar::load_official(CifarVariant::Cifar10, &batches).unwrap();
    assert!(from_parent.train == from_dir.train);
    assert_eq!(from_dir.train.labels, vec![1, 2, 2, 3, 3, 4, 4, 5, 5, 6]);
    assert_eq!(from_dir.test.labels, vec![0, 9, 5]);
    // the train set is data_batch_1..5 in order
    assert!(from_dir.train.pixels(2).iter().all(|&v| v == 20));

    // the archive, with the official member names (plus an unrelated member)
    let archive = tmp.path().join("cifar-10-binary.tar.gz");
    {
        let gz = flate2::write::GzEncoder::new(
            std::fs::File::create(&archive).unwrap(),
            flate2::Compression::fast(),
        );
        let mut tar = tar::Builder::new(gz);
        let mut add = |name: &str, bytes: &[u8]| {
            let mut header = tar::Header::new_gnu();
            header.set_size(bytes.len() as u64);
            header.set_mode(0o644);
            header.set_cksum();
            tar.append_data(&mut header, name, bytes).unwrap();
        };
        add("cifar-10-batches-bin/batches.meta.txt", b"airplane\n");
        for (name, bytes) in files.iter().rev() {
            add(&format!("cifar-10-batches-bin/{name}"), bytes);
        }
        tar.into_inner().unwrap().finish().unwrap();
    }
    let from_archive = cifar::load_official(CifarVariant::Cifar10, &archive).unwrap();
    assert!(from_archive.train == from_dir.train);
    assert!(from_archive.test == from_dir.test);
    // a folder holding only the archive
    std::fs::remove_dir_all(&batches).unwrap();
    let from_folder = cifar::load_official(CifarVariant::Cifar10, tmp.path()).unwrap();
    assert!(from_folder.test == from_dir.test);
}

#[test]
fn broken_official_inputs_are_named_errors() {
    let tmp = tempfile::tempdir().unwrap();
    let batches = tmp.path().join("cifar-10-batches-bin");
    write_official_cifar10(&batches);
    std::fs::remove_file(batches.join("data_batch_3.bin")).unwrap();
    let msg = format!(
        "{:#}",
        cifar::load_official(CifarVariant::Cifar10, &batches).unwrap_err()
    );
    assert!(msg.contains("data_batch_3.bin"), "{msg}");

    // an archive missing a member
    let archive = tmp.path().join("partial.tar.gz");
    {
        let gz = flate2::write::GzEncoder::new(
            std::fs::File::create(&archive).unwrap(),
            flate2::Compression::fast(),
        );
        let mut tar = tar::Builder::new(gz);
        let bytes = records(CifarVariant::Cifar10, &[1], 0);
        let mut header = tar::Header::new_gnu();
        header.set_size(bytes.len() as u64);
        header.set_cksum();
        tar.append_data(
            &mut header,
            "cifar-10-batches-bin/test_batch.bin",
            &bytes[..],
        )
        .unwrap();
        tar.into_inner().unwrap().finish().unwrap();
    }
    let msg = format!(
        "{:#}",
        cifar::load_official(CifarVariant::Cifar10, &archive).unwrap_err()
    );
    assert!(
        msg.contains("partial.tar.gz") && msg.contains("data_batch_1.bin"),
        "{msg}"
    );

    // not gzip at all, and a truncated gzip stream
    let garbage = tmp.path().join("garbage.tar.gz");
    std::fs::write(&garbage, b"this is not an archive").unwrap();
    let msg = format!(
        "{:#}",
        cifar::load_official(CifarVariant::Cifar10, &garbage).unwrap_err()
    );
    assert!(msg.contains("garbage.tar.gz"), "{msg}");
    let good = std::fs::read(&archive).unwrap();
    let cut = tmp.path().join("cut.tar.gz");
    std::fs::write(&cut, &good[..good.len() / 2]).unwrap();
    let msg = format!(
        "{:#}",
        cifar::load_official(CifarVariant::Cifar10, &cut).unwrap_err()
    );
    assert!(msg.contains("cut.tar.gz"), "{msg}");

    let msg = format!(
        "{:#}",
        cifar::load_official(CifarVariant::Cifar100, &tmp.path().join("nowhere")).unwrap_err()
    );
    assert!(msg.contains("nowhere"), "{msg}");
}

#[test]
fn cut_round_trips_through_record_files() {
    let tmp = tempfile::tempdir().unwrap();
    let labels: Vec<u32> = [0u32; 6]
        .iter()
        .chain(&[1; 4])
        .chain(&[2; 3])
        .copied()
        .collect();
    let set = fake_set(&labels, 3, 32, 32);
    let lt = longtail::long_tail(&set, None, 2.0, 0).unwrap();
    let path = tmp.path().join("cut.bin");
    cifar::write_record_file(CifarVariant::Cifar10, &lt.set, &path).unwrap();
    assert_eq!(
        std::fs::metadata(&path).unwrap().len() as usize,
        lt.set.n * 3073
    );
    let back = cifar::load_record_file(CifarVariant::Cifar10, &path).unwrap();
    assert!(back.images == lt.set.images && back.labels == lt.set.labels);
    assert_eq!(back.classes, 10);
    // CIFAR-100 records carry the coarse label of the fine class
    let set100 = fake_set(&[19, 29, 0], 100, 32, 32);
    let bytes = cifar::encode_records(CifarVariant::Cifar100, &set100).unwrap();
    assert_eq!((bytes[0], bytes[1]), (11, 19));
    assert_eq!((bytes[3074], bytes[3075]), (15, 29));
    assert!(cifar::encode_records(CifarVariant::Cifar10, &fake_set(&[0], 10, 8, 8)).is_err());
}

#[test]
fn coarse_map_agrees_with_the_readme_label_prefix() {
    // README: fine labels begin [19,29,0,11,1,86,90,28,23,31], coarse [11,15,4,14,1,5,18,3,10,11]
    let fine = [19, 29, 0, 11, 1, 86, 90, 28, 23, 31];
    let coarse = [11, 15, 4, 14, 1, 5, 18, 3, 10, 11];
    for (f, c) in fine.iter().zip(coarse) {
        assert_eq!(cifar::CIFAR100_COARSE_OF_FINE[*f], c);
    }
    let mut per_coarse = [0; 20];
    for &c in &cifar::CIFAR100_COARSE_OF_FINE {
        per_coarse[c as usize] += 1;
    }
    assert_eq!(per_coarse, [5; 20]);
}

fn shared_data() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../shared/data")
}

/// Decompress `name.xz` from the shared CIFAR-10 folder into `dir`, or None (with a printed
/// reason) when the file or the `xz` command is missing.
fn shared_cifar10(name: &str, dir: &Path) -> Option<PathBuf> {
    let source = shared_data().join("cifar-10").join(format!("{name}.xz"));
    if !source.is_file() {
        println!("skip: {} not present", source.display());
        return None;
    }
    let out = dir.join(name);
    let status = std::process::Command::new("xz")
        .arg("-dc")
        .arg(&source)
        .stdout(std::fs::File::create(&out).unwrap())
        .status();
    match status {
        Ok(s) if s.success() => Some(out),
        _ => {
            println!("skip: cannot run `xz -dc {}`", source.display());
            None
        }
    }
}

#[test]
fn real_cifar10_test_file_has_1000_images_per_class() {
    let tmp = tempfile::tempdir().unwrap();
    let Some(path) = shared_cifar10("test.bin", tmp.path()) else {
        return;
    };
    let set = cifar::load_record_file(CifarVariant::Cifar10, &path).unwrap();
    assert_eq!(set.class_counts(), vec![1000; 10]);
    assert_eq!(&set.labels[..10], &[3, 8, 8, 0, 6, 6, 1, 6, 3, 1]);
    // README: test image 0 starts 158 159 165 and ends 124 129 110
    assert_eq!(&set.pixels(0)[..3], &[158, 159, 165]);
    assert_eq!(&set.pixels(0)[3069..], &[124, 129, 110]);
}

#[test]
fn real_cifar10_r10_superset_cuts_to_the_shared_r100_file() {
    let tmp = tempfile::tempdir().unwrap();
    let (Some(r10), Some(r100)) = (
        shared_cifar10("train_lt_r10.bin", tmp.path()),
        shared_cifar10("train_lt_r100.bin", tmp.path()),
    ) else {
        return;
    };
    let superset = cifar::load_record_file(CifarVariant::Cifar10, &r10).unwrap();
    assert_eq!(superset.class_counts(), longtail::lt_counts(5000, 10.0, 10));
    let lt = longtail::long_tail(&superset, Some(CifarVariant::Cifar10), 100.0, 0).unwrap();
    assert_eq!(lt.method, LtMethod::GroupedPrefix);
    assert_eq!(lt.set.n, 12406);
    assert_eq!(
        lt.set.class_counts(),
        vec![5000, 2997, 1796, 1077, 645, 387, 232, 139, 83, 50]
    );
    let cut = tmp.path().join("cut_r100.bin");
    cifar::write_record_file(CifarVariant::Cifar10, &lt.set, &cut).unwrap();
    assert!(
        std::fs::read(&cut).unwrap() == std::fs::read(&r100).unwrap(),
        "cut differs from train_lt_r100.bin"
    );
}

#[test]
fn synthetic_set_is_long_tailed_balanced_at_test_and_deterministic() {
    let cfg = SyntheticConfig::default();
    let data = synthetic::generate(&cfg);
    let counts = data.train.class_counts();
    assert_eq!(counts, longtail::lt_counts(500, 100.0, 10));
    assert_eq!(counts[0], 500);
    assert_eq!(counts[9], 5);
    assert!((1200..=1300).contains(&data.train.n));
    assert_eq!(data.test.class_counts(), vec![100; 10]);
    assert_eq!((data.train.h, data.train.w), (32, 32));
    let again = synthetic::generate(&cfg);
    assert!(again.train == data.train);
    let other = synthetic::generate(&SyntheticConfig {
        seed: 1,
        ..cfg.clone()
    });
    assert_ne!(other.train.images, data.train.images);
    // images of one class differ from each other, and pixels use the range
    assert_ne!(data.train.pixels(0), data.train.pixels(1));
    let (lo, hi) = data
        .train
        .images
        .iter()
        .fold((255u8, 0u8), |(l, h), &v| (l.min(v), h.max(v)));
    assert!(lo < 20 && hi > 235);
    let small = synthetic::generate(&SyntheticConfig {
        classes: 4,
        n_max: 20,
        rho: 10.0,
        test_per_class: 3,
        ..cfg
    });
    assert_eq!(small.train.class_counts(), vec![20, 9, 4, 2]);
    assert_eq!(small.test.n, 12);
}

/// Nearest-class-mean on raw pixels must beat chance but stay far from perfect: the classes
/// carry signal that is not a trivial template.
#[test]
fn synthetic_classes_are_learnable_but_not_trivial() {
    let cfg = SyntheticConfig {
        n_max: 60,
        rho: 1.0,
        test_per_class: 30,
        ..SyntheticConfig::default()
    };
    let data = synthetic::generate(&cfg);
    let len = data.train.image_len();
    let mut means = vec![vec![0f64; len]; 10];
    for i in 0..data.train.n {
        let c = data.train.labels[i] as usize;
        for (m, &v) in means[c].iter_mut().zip(data.train.pixels(i)) {
            *m += v as f64 / 60.0;
        }
    }
    let correct = (0..data.test.n)
        .filter(|&i| {
            let px = data.test.pixels(i);
            let best = (0..10)
                .min_by(|&a, &b| {
                    let d = |c: usize| {
                        means[c]
                            .iter()
                            .zip(px)
                            .map(|(m, &v)| (m - v as f64).powi(2))
                            .sum::<f64>()
                    };
                    d(a).partial_cmp(&d(b)).unwrap()
                })
                .unwrap();
            best == data.test.labels[i] as usize
        })
        .count();
    let accuracy = correct as f64 / data.test.n as f64;
    println!("nearest-class-mean accuracy {accuracy:.3}");
    assert!(accuracy > 0.15 && accuracy < 0.7, "accuracy {accuracy}");
}

#[test]
fn batch_builder_normalises_and_keeps_labels() {
    let data = synthetic::generate(&SyntheticConfig {
        n_max: 10,
        rho: 2.0,
        test_per_class: 2,
        ..Default::default()
    });
    let indices = [3usize, 0, 7];
    let x = data.train.batch(&indices, Level::Plain, 0, 0);
    assert_eq!(x.len(), 3 * 3 * 32 * 32);
    let v = data.train.pixels(0)[5] as f32;
    assert!((x[3072 + 5] - (v / 255.0 - 0.4914) / 0.2023).abs() < 1e-5);
    assert_eq!(data.train.labels_of(&indices), vec![0, 0, 0]);
    let weak = data
        .train
        .batch(&indices, ltrain::augment::Level::Weak, 0, 0);
    assert_ne!(weak, x);
}

// ------------------------------------------------------------------------------ ImageNet-LT

use ltrain::augment::Level;
use ltrain::data::imagenet::{self, BadImagePolicy, ImageNetSet};

/// Encode an RGB (interleaved) or gray image as a baseline JPEG.
fn jpeg(data: &[u8], w: u16, h: u16, gray: bool) -> Vec<u8> {
    let mut out = Vec::new();
    let color = if gray {
        jpeg_encoder::ColorType::Luma
    } else {
        jpeg_encoder::ColorType::Rgb
    };
    jpeg_encoder::Encoder::new(&mut out, 95)
        .encode(data, w, h, color)
        .unwrap();
    out
}

/// A tiny ImageNet-LT-format dataset: 3 classes of 48x40 JPEGs (class c is mostly colour c)
/// with counts 4 / 2 / 1, a balanced 2-per-class test list, under `root`.
fn write_tiny_imagenet(root: &Path) -> (PathBuf, PathBuf) {
    let colours = [[200u8, 30, 30], [30, 200, 30], [30, 30, 200]];
    let mut train = String::new();
    let mut test = String::new();
    for (c, colour) in colours.iter().enumerate() {
        let dir = root.join("train").join(format!("n{c:04}"));
        std::fs::create_dir_all(&dir).unwrap();
        for k in 0..[4, 2, 1][c] + 2 {
            let (w, h) = (48u16, 40u16);
            let mut px = Vec::new();
            for y in 0..h {
                for x in 0..w {
                    let stripe = if (x / 6 + y / 6) % 2 == 0 { 0 } else { 40 };
                    px.extend(colour.iter().map(|&v| v.saturating_add(stripe + k as u8)));
                }
            }
            let name = format!("n{c:04}_{k}.JPEG");
            std::fs::write(dir.join(&name), jpeg(&px, w, h, false)).unwrap();
            let line = format!("train/n{c:04}/{name} {c}\n");
            if k < [4, 2, 1][c] {
                train.push_str(&line);
            } else {
                test.push_str(&line);
            }
        }
    }
    let train_list = root.join("ImageNet_LT_train.txt");
    let test_list = root.join("ImageNet_LT_test.txt");
    std::fs::write(&train_list, train).unwrap();
    std::fs::write(&test_list, test).unwrap();
    (train_list, test_list)
}

#[test]
fn jpeg_decoding_recovers_colours_and_expands_gray() {
    let px: Vec<u8> = std::iter::repeat_n([120u8, 60, 200], 16 * 8)
        .flatten()
        .collect();
    let img = imagenet::decode_jpeg_bytes(&jpeg(&px, 16, 8, false)).unwrap();
    assert_eq!((img.c, img.h, img.w), (3, 8, 16));
    for (k, want) in [120i32, 60, 200].iter().enumerate() {
        assert!(
            img.plane(k).iter().all(|&v| (v as i32 - want).abs() <= 4),
            "channel {k}"
        );
    }
    let gray = imagenet::decode_jpeg_bytes(&jpeg(&[90u8; 64], 8, 8, true)).unwrap();
    assert_eq!(gray.c, 3);
    assert!(gray.data.iter().all(|&v| (v as i32 - 90).abs() <= 2));
    assert!(imagenet::decode_jpeg_bytes(b"\xff\xd8\xff\xe0 not a jpeg").is_err());
}

#[test]
fn tiny_imagenet_lt_loads_and_augments_end_to_end() {
    let tmp = tempfile::tempdir().unwrap();
    let (train_list, test_list) = write_tiny_imagenet(tmp.path());
    let (train, test) = imagenet::load_lists(tmp.path(), &train_list, &test_list).unwrap();
    assert_eq!(train.class_counts(), vec![4, 2, 1]);
    assert_eq!(test.class_counts(), vec![2, 2, 2]);
    let train = ImageNetSet::new(train, 32, BadImagePolicy::Fail);
    let indices: Vec<usize> = (0..train.len()).collect();
    for level in [Level::Plain, Level::Weak, Level::Medium, Level::Strong] {
        let x = train.batch(&indices, level, 1, 0).unwrap();
        assert_eq!(x.len(), 7 * 3 * 32 * 32);
        assert!(
            x.iter().all(|v| v.is_finite() && (-2.2..=2.7).contains(v)),
            "{level:?}"
        );
        assert_eq!(
            x,
            train.batch(&indices, level, 1, 0).unwrap(),
            "{level:?} not deterministic"
        );
    }
    // The experts' views decoded once per sample equal the per-level batches.
    let levels = [Level::Weak, Level::Medium, Level::Strong, Level::Plain];
    let views = train.batch_views(&indices, &levels, 3, 2).unwrap();
    for (view, &level) in views.iter().zip(&levels) {
        assert_eq!(
            view,
            &train.batch(&indices, level, 3, 2).unwrap(),
            "{level:?}"
        );
    }
    // evaluation: Resize(256/224 * 32 ≈ 37) + CenterCrop(32) of a red-dominated image stays red
    let eval = train.augmented(0, Level::Plain, 0, 0).unwrap();
    assert_eq!((eval.h, eval.w), (32, 32));
    let mean = |k: usize| eval.plane(k).iter().map(|&v| v as f64).sum::<f64>() / 1024.0;
    assert!(mean(0) > 150.0 && mean(1) < 100.0 && mean(2) < 100.0);
    // training levels differ across epochs
    assert_ne!(
        train.batch(&[0], Level::Weak, 1, 0).unwrap(),
        train.batch(&[0], Level::Weak, 1, 1).unwrap()
    );
    // a 64 px reduced resolution works as well
    let test = ImageNetSet::new(test, 64, BadImagePolicy::Fail);
    assert_eq!(
        test.batch(&[0, 5], Level::Plain, 0, 0).unwrap().len(),
        2 * 3 * 64 * 64
    );
}

#[test]
fn corrupt_jpegs_are_reported_by_path_or_substituted() {
    let tmp = tempfile::tempdir().unwrap();
    let (train_list, test_list) = write_tiny_imagenet(tmp.path());
    let bad = tmp.path().join("train/n0000/n0000_1.JPEG");
    let bytes = std::fs::read(&bad).unwrap();
    std::fs::write(&bad, &bytes[..bytes.len() / 3]).unwrap();
    let (train, _) = imagenet::load_lists(tmp.path(), &train_list, &test_list).unwrap();
    let failing = ImageNetSet::new(train.clone(), 32, BadImagePolicy::Fail);
    let err = failing.batch(&[0, 1, 2], Level::Weak, 0, 0).unwrap_err();
    let msg = format!("{err:#}");
    assert!(msg.contains("n0000_1.JPEG"), "{msg}");
    // substitution: the next readable image of class 0 (index 2) stands in for index 1
    let lenient = ImageNetSet::new(train, 32, BadImagePolicy::Substitute);
    let x = lenient.batch(&[1], Level::Plain, 0, 0).unwrap();
    assert_eq!(x, lenient.batch(&[2], Level::Plain, 0, 0).unwrap());
    // a missing file is reported by path too
    std::fs::remove_file(tmp.path().join("train/n0002/n0002_0.JPEG")).unwrap();
    let msg = format!("{:#}", failing.batch(&[6], Level::Plain, 0, 0).unwrap_err());
    assert!(msg.contains("n0002_0.JPEG"), "{msg}");
    // class 2 has no other training image to substitute
    assert!(lenient.batch(&[6], Level::Plain, 0, 0).is_err());
}

#[test]
fn list_file_errors_name_the_line() {
    let tmp = tempfile::tempdir().unwrap();
    let list = tmp.path().join("list.txt");
    std::fs::write(&list, "a/b.JPEG 0\n\na/c.JPEG x\n").unwrap();
    let msg = format!("{:#}", imagenet::read_list(tmp.path(), &list).unwrap_err());
    assert!(msg.contains("list.txt:3") && msg.contains("`x`"), "{msg}");
    std::fs::write(&list, "a/b.JPEG 0\nnolabel\n").unwrap();
    let msg = format!("{:#}", imagenet::read_list(tmp.path(), &list).unwrap_err());
    assert!(msg.contains("list.txt:2"), "{msg}");
    let msg = format!(
        "{:#}",
        imagenet::read_list(tmp.path(), &tmp.path().join("none.txt")).unwrap_err()
    );
    assert!(msg.contains("none.txt"), "{msg}");
    // a test label beyond the training classes
    let train = tmp.path().join("train.txt");
    std::fs::write(&train, "a.JPEG 0\nb.JPEG 1\n").unwrap();
    std::fs::write(&list, "a.JPEG 1\nb.JPEG 5\n").unwrap();
    let msg = format!(
        "{:#}",
        imagenet::load_lists(tmp.path(), &train, &list).unwrap_err()
    );
    assert!(msg.contains("entry 2") && msg.contains("label 5"), "{msg}");
}

#[test]
fn preview_writes_a_png_grid() {
    let tmp = tempfile::tempdir().unwrap();
    let data = synthetic::generate(&SyntheticConfig {
        n_max: 4,
        rho: 2.0,
        test_per_class: 1,
        ..Default::default()
    });
    let path = tmp.path().join("preview.png");
    ltrain::data::preview::preview_set(&data.train, &[0, 4], 2, 0, &path).unwrap();
    let decoder = png::Decoder::new(std::io::BufReader::new(std::fs::File::open(&path).unwrap()));
    let mut reader = decoder.read_info().unwrap();
    let (width, height) = (reader.info().width, reader.info().height);
    // 2 rows of 96 px cells; 1 + 3 x 2 columns, gaps 2 px (6 px between level groups)
    assert_eq!(height, 2 + 2 * (96 + 2));
    assert_eq!(width, 2 + 7 * (96 + 2) + 3 * 4);
    // the first cell is the plain image upscaled 3x
    let mut buf = vec![0; reader.output_buffer_size().unwrap()];
    reader.next_frame(&mut buf).unwrap();
    let stride = width as usize * 3;
    let image = data.train.image(0);
    for (y, x) in [(0usize, 0usize), (5, 7), (31, 31)] {
        for k in 0..3 {
            assert_eq!(
                buf[(2 + 3 * y) * stride + (2 + 3 * x) * 3 + k],
                image.at(k, y, x)
            );
        }
    }
}
