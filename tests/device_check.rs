//! scripts/device-check.sh, the check run on a borrowed GPU machine, tested here without a GPU: its
//! `--dry-run` plan (one tab-separated line a step: tier, step, limit_s, worst_s, command), read as
//! data and held to what a device session needs (a smoke tier first and within 240 s, the runtime
//! self-tests before anything else, a worst case within the 300 s default budget, compute-sanitizer
//! bounded by kernel filter, launch count and one named test, every #[ignore]d GPU test planned, one
//! kernel of every family sanitized), and its real path on stub executables (the header names the GPU
//! and the date; a failed runtime self-test stops the GPU tests; a test the binary lacks is no pass).

use std::collections::{BTreeMap, BTreeSet};
use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

const ROOT: &str = env!("CARGO_MANIFEST_DIR");
const SCRIPT: &str = "scripts/device-check.sh";
const SELF_TESTS: [&str; 5] = [
    "the_gpu_backend_starts_and_describes_itself",
    "barrier_dependent_tree_reduction_is_exact",
    "warp_shuffle_reduction_matches_naive_sums",
    "ballot_collects_every_lane",
    "atomic_histogram_from_many_blocks",
];
const FAKE_GPU: &str = "NVIDIA H100 80GB HBM3";

#[derive(Debug, Clone)]
struct Step {
    tier: String,
    name: String,
    limit: u64,
    worst: u64,
    command: Vec<String>,
}

impl Step {
    fn arg_after(&self, flag: &str) -> Option<&str> {
        let i = self.command.iter().position(|a| a == flag)?;
        self.command.get(i + 1).map(String::as_str)
    }
    fn has(&self, arg: &str) -> bool {
        self.command.iter().any(|a| a == arg)
    }
    fn is_sanitizer(&self) -> bool {
        self.command
            .iter()
            .any(|a| a.ends_with("compute-sanitizer"))
    }
    /// The test binary a GPU test step runs (the file name of the executable under exe/tests/).
    fn test_binary(&self) -> Option<&str> {
        self.command
            .iter()
            .find(|a| a.contains("/exe/tests/"))
            .and_then(|a| a.rsplit('/').next())
    }
    fn is_gpu_test(&self) -> bool {
        !self.is_sanitizer() && self.test_binary().is_some()
    }
}

#[derive(Debug, Default)]
struct Plan {
    steps: Vec<Step>,
    /// key -> fields after the key: "header gpu ..." is headers["gpu"], "total smoke 1 2" is
    /// totals["smoke"] = [1, 2], "reserve setup 25" is reserves["setup"].
    headers: BTreeMap<String, String>,
    totals: BTreeMap<String, Vec<u64>>,
    reserves: BTreeMap<String, u64>,
    caps: BTreeMap<String, u64>,
    budget: Option<u64>,
}

impl Plan {
    fn tier(&self, tier: &str) -> Vec<&Step> {
        self.steps.iter().filter(|s| s.tier == tier).collect()
    }
    fn sum(&self, tier: &str, worst: bool) -> u64 {
        self.tier(tier)
            .iter()
            .map(|s| if worst { s.worst } else { s.limit })
            .sum()
    }
}

fn num(s: &str, line: &str) -> u64 {
    s.parse()
        .unwrap_or_else(|_| panic!("not a number of seconds: {s:?} in {line:?}"))
}

fn parse(stdout: &str) -> Plan {
    let mut plan = Plan::default();
    for line in stdout.lines() {
        if line.starts_with('#') || line.trim().is_empty() {
            continue;
        }
        let f: Vec<&str> = line.split('\t').collect();
        match f[0] {
            "smoke" | "full" => {
                assert_eq!(
                    f.len(),
                    5,
                    "a step line has 5 tab-separated fields: {line:?}"
                );
                plan.steps.push(Step {
                    tier: f[0].to_string(),
                    name: f[1].to_string(),
                    limit: num(f[2], line),
                    worst: num(f[3], line),
                    command: f[4].split(' ').map(str::to_string).collect(),
                });
            }
            "header" => {
                plan.headers.insert(f[1].to_string(), f[2..].join("\t"));
            }
            "total" => {
                let v = f[2..].iter().map(|x| num(x, line)).collect();
                plan.totals.insert(f[1].to_string(), v);
            }
            "reserve" => {
                plan.reserves.insert(f[1].to_string(), num(f[2], line));
            }
            "cap" => {
                plan.caps.insert(f[1].to_string(), num(f[2], line));
            }
            "budget" => {
                assert!(plan.budget.is_none(), "one budget line: {stdout}");
                plan.budget = Some(num(f[1], line));
            }
            _ => panic!("a dry-run line of no known kind: {line:?}"),
        }
    }
    plan
}

fn run_script(args: &[&str], path_prefix: Option<&Path>, envs: &[(&str, &str)]) -> Output {
    let mut cmd = Command::new("bash");
    cmd.current_dir(ROOT).arg(SCRIPT).args(args);
    if let Some(dir) = path_prefix {
        cmd.env(
            "PATH",
            format!("{}:/usr/local/bin:/usr/bin:/bin", dir.display()),
        );
    }
    cmd.env_remove("OUT");
    for (k, v) in envs {
        cmd.env(k, v);
    }
    cmd.output().expect("bash runs")
}

/// The dry run with an empty pack folder and a log folder that must stay uncreated.
fn dry_run(extra: &[&str]) -> Plan {
    let tmp = tempfile::tempdir().unwrap();
    let pack = tmp.path().join("pack");
    fs::create_dir(&pack).unwrap();
    let logs = tmp.path().join("logs");
    let mut args = vec![
        "--dry-run".to_string(),
        pack.display().to_string(),
        logs.display().to_string(),
    ];
    args.extend(extra.iter().map(|s| s.to_string()));
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let out = run_script(&args, None, &[]);
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "the dry run exits 0 without a GPU or a pack: {:?}\n{stdout}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        !logs.exists(),
        "the dry run writes nothing (it made {})",
        logs.display()
    );
    let plan = parse(&stdout);
    assert!(plan.steps.len() > 20, "a plan of steps: {stdout}");
    plan
}

fn default_plan() -> Plan {
    dry_run(&[])
}

#[test]
fn the_script_is_valid_bash_and_shellcheck_clean_where_shellcheck_exists() {
    let out = Command::new("bash")
        .current_dir(ROOT)
        .args(["-n", SCRIPT])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    if let Ok(out) = Command::new("shellcheck")
        .current_dir(ROOT)
        .arg(SCRIPT)
        .output()
    {
        assert!(
            out.status.success(),
            "shellcheck {SCRIPT}:\n{}",
            String::from_utf8_lossy(&out.stdout)
        );
    }
}

#[test]
fn the_default_budget_is_300_s_and_the_argument_overrides_it() {
    assert_eq!(default_plan().budget, Some(300));
    let plan = dry_run(&["480"]);
    assert_eq!(
        plan.budget,
        Some(480),
        "BUDGET_SECONDS, the third positional argument"
    );
    // With more budget, the full tier gets more of its steps in the worst case.
    assert!(plan.sum("full", true) > default_plan().sum("full", true));
}

#[test]
fn the_gpu_header_is_planned() {
    let plan = default_plan();
    let gpu = plan.headers.get("gpu").expect("a header gpu line");
    assert!(
        gpu.contains("nvidia-smi"),
        "the GPU's name comes from nvidia-smi: {gpu:?}"
    );
    assert!(plan.headers.contains_key("date"), "a header date line");
}

#[test]
fn the_smoke_tier_comes_first_whole_and_within_240_s() {
    let plan = default_plan();
    let first_full = plan
        .steps
        .iter()
        .position(|s| s.tier == "full")
        .expect("a full tier");
    assert!(
        first_full > 0 && plan.steps[0].tier == "smoke",
        "the smoke tier first"
    );
    assert!(
        plan.steps[first_full..].iter().all(|s| s.tier == "full"),
        "no smoke step after the full tier began"
    );
    let smoke = plan.sum("smoke", false);
    assert!(
        smoke <= 240,
        "the smoke tier's limits sum to {smoke} s, over 240 s"
    );
    assert_eq!(plan.caps.get("smoke"), Some(&240));
    assert_eq!(
        plan.totals["smoke"][0], smoke,
        "the total line is the sum of the steps"
    );
    assert_eq!(plan.totals["full"][0], plan.sum("full", false));
    for s in plan.tier("smoke") {
        assert!(s.limit > 0, "{s:?}");
        assert_eq!(
            s.worst, s.limit,
            "no smoke step is cut, even in the worst case: {s:?}"
        );
    }
}

#[test]
fn the_runtime_self_tests_come_before_anything_else_then_ops_then_the_bench_and_its_peer() {
    let plan = default_plan();
    let s = &plan.steps;
    for (i, name) in SELF_TESTS.iter().enumerate() {
        assert!(s[i].is_gpu_test(), "step {i} is a GPU test: {:?}", s[i]);
        assert_eq!(s[i].test_binary(), Some("cuda_gpu"));
        assert_eq!(
            s[i].arg_after("--exact"),
            Some(*name),
            "step {i}: {:?}",
            s[i]
        );
    }
    for (i, name) in [
        "convolutions_match_the_cpu",
        "tensor_core_convolutions_match_the_cpu",
        "batch_norm_matches_the_cpu",
        "training_steps_match_the_cpu",
    ]
    .iter()
    .enumerate()
    {
        assert_eq!(s[5 + i].arg_after("--exact"), Some(*name), "{:?}", s[5 + i]);
    }
    let smoke = plan.tier("smoke");
    let rest: Vec<&&Step> = smoke.iter().skip(9).collect();
    assert_eq!(
        rest.len(),
        4,
        "then two bench steps and two PyTorch steps: {rest:?}"
    );
    for (step, graphs) in rest[..2].iter().zip(["on", "off"]) {
        assert!(step.has("bench"), "{step:?}");
        assert_eq!(step.arg_after("--cuda-graphs"), Some(graphs));
        assert_eq!(step.arg_after("--input"), Some("pre-augmented"));
        assert_eq!(step.arg_after("--batch-size"), Some("128"));
        assert!(!step.has("--no-tf32"), "TF32 on: {step:?}");
    }
    for (step, amp) in rest[2..].iter().zip([false, true]) {
        assert!(
            step.command
                .iter()
                .any(|a| a.ends_with("torch_resnet32_3e.py")),
            "{step:?}"
        );
        assert_eq!(step.arg_after("--device"), Some("cuda"));
        assert_eq!(step.has("--amp"), amp, "{step:?}");
    }
}

#[test]
fn the_worst_case_fits_the_budget() {
    // The default, and budgets that cut a step's limit at various places (290: the first full step).
    for budget in [None, Some(290), Some(120), Some(163), Some(480), Some(777)] {
        let extra: Vec<String> = budget.iter().map(u64::to_string).collect();
        let extra: Vec<&str> = extra.iter().map(String::as_str).collect();
        let plan = dry_run(&extra);
        let budget = plan.budget.unwrap();
        let reserves: u64 = plan.reserves.values().sum();
        assert!(plan.reserves.contains_key("setup") && plan.reserves.contains_key("summary"));
        for s in &plan.steps {
            assert!(
                s.worst <= s.limit,
                "a step never gets more than its limit: {s:?}"
            );
        }
        let worst = reserves + plan.sum("smoke", true) + plan.sum("full", true);
        assert!(
            worst <= budget,
            "every step at its limit comes to {worst} s, over the {budget} s budget"
        );
        assert_eq!(plan.totals["worst_case"], vec![worst]);
        if budget >= 300 {
            assert!(
                plan.tier("full").iter().any(|s| s.worst > 0),
                "the full tier gets some time"
            );
        }
    }
}

#[test]
fn step_names_are_unique() {
    // Each step's output is kept as $work/NAME.out and read back for its row.
    let plan = default_plan();
    let mut seen = BTreeSet::new();
    for s in &plan.steps {
        assert!(seen.insert(s.name.as_str()), "two steps named {}", s.name);
        assert!(
            !s.name.is_empty() && !s.name.contains('/') && !s.name.contains(' '),
            "a file name: {:?}",
            s.name
        );
    }
}

/// The #[ignore]d tests of a test source, `module::name` inside a top-level `mod`.
fn ignored_tests(file: &str) -> BTreeSet<String> {
    let src = fs::read_to_string(Path::new(ROOT).join(file)).unwrap();
    let (mut module, mut ignored, mut tests) = (None::<String>, false, BTreeSet::new());
    for line in src.lines() {
        let t = line.trim();
        if line.starts_with("mod ") && t.ends_with('{') {
            module = Some(t[4..t.len() - 1].trim().to_string());
        } else if line == "}" {
            module = None;
        } else if t.starts_with("#[ignore") {
            ignored = true;
        } else if ignored && t.starts_with("fn ") {
            let name = t[3..].split('(').next().unwrap().trim();
            tests.insert(match &module {
                Some(m) => format!("{m}::{name}"),
                None => name.to_string(),
            });
            ignored = false;
        }
    }
    tests
}

#[test]
fn every_ignored_gpu_test_is_planned_once() {
    let plan = default_plan();
    let mut planned = BTreeMap::<(String, String), usize>::new();
    for s in plan.steps.iter().filter(|s| s.is_gpu_test()) {
        let key = (
            s.test_binary().unwrap().to_string(),
            s.arg_after("--exact").expect("one named test").to_string(),
        );
        assert!(s.has("--test-threads=1"), "one test thread: {s:?}");
        assert!(s.has("--ignored"), "{s:?}");
        *planned.entry(key).or_default() += 1;
    }
    let mut expected = BTreeSet::new();
    for bin in ["cuda_gpu", "device_augment"] {
        let tests = ignored_tests(&format!("tests/{bin}.rs"));
        assert!(!tests.is_empty(), "tests/{bin}.rs has #[ignore]d tests");
        expected.extend(tests.into_iter().map(|t| (bin.to_string(), t)));
    }
    let got: BTreeSet<_> = planned.keys().cloned().collect();
    assert_eq!(
        got, expected,
        "the plan's GPU tests are exactly the #[ignore]d ones"
    );
    assert!(planned.values().all(|&n| n == 1), "each once: {planned:?}");
}

/// A kernel declared in kernels/*.cu: its name, or the stem a macro pastes a suffix onto.
#[derive(Debug)]
enum Kernel {
    Exact(String),
    Stem(String),
}

/// The kernels of each family (kernels/FAMILY.cu): `KERNEL void [__launch_bounds__(N)] name(`.
fn kernel_families() -> BTreeMap<String, Vec<Kernel>> {
    let mut families = BTreeMap::new();
    for entry in fs::read_dir(Path::new(ROOT).join("kernels")).unwrap() {
        let path = entry.unwrap().path();
        if path.extension().and_then(|e| e.to_str()) != Some("cu") {
            continue;
        }
        let src = fs::read_to_string(&path).unwrap().replace("\\\n", " ");
        let mut kernels = Vec::new();
        let mut rest = src.as_str();
        while let Some(i) = rest.find("KERNEL") {
            let before = rest[..i].chars().next_back();
            let after = &rest[i + "KERNEL".len()..];
            rest = after;
            let word = |c: Option<char>| c.is_some_and(|c| c.is_alphanumeric() || c == '_');
            if word(before) || word(after.chars().next()) {
                continue;
            }
            let Some(decl) = after.trim_start().strip_prefix("void") else {
                continue;
            };
            let mut decl = decl.trim_start();
            if let Some(bounds) = decl.strip_prefix("__launch_bounds__(") {
                decl = bounds.split_once(')').unwrap().1.trim_start();
            }
            let name: String = decl
                .chars()
                .take_while(|c| c.is_alphanumeric() || *c == '_' || *c == '#')
                .collect();
            kernels.push(match name.split_once("##") {
                Some((stem, _)) => Kernel::Stem(stem.to_string()),
                None => Kernel::Exact(name),
            });
        }
        let family = path.file_stem().unwrap().to_string_lossy().into_owned();
        families.insert(family, kernels);
    }
    families
}

/// Whether a compute-sanitizer --kernel-name filter (key=value) selects a kernel of these.
fn selects(filter: &str, kernels: &[Kernel]) -> bool {
    let (key, value) = filter.split_once('=').expect("key=value");
    kernels.iter().any(|k| match (key, k) {
        ("kne" | "kernel_name", Kernel::Exact(n)) => n == value,
        ("kne" | "kernel_name", Kernel::Stem(s)) => value.starts_with(s.as_str()),
        ("kns" | "kernel_substring", Kernel::Exact(n)) => n.contains(value),
        ("kns" | "kernel_substring", Kernel::Stem(s)) => {
            value.starts_with(s.as_str()) || s.contains(value)
        }
        _ => false,
    })
}

#[test]
fn compute_sanitizer_runs_are_bounded_and_each_around_one_named_test() {
    let plan = default_plan();
    let runs: Vec<&Step> = plan.steps.iter().filter(|s| s.is_sanitizer()).collect();
    assert!(!runs.is_empty(), "compute-sanitizer is planned");
    let mut tools = BTreeSet::new();
    for s in &runs {
        let filter = s
            .arg_after("--kernel-name")
            .unwrap_or_else(|| panic!("--kernel-name: {s:?}"));
        let key = filter.split_once('=').map(|(k, _)| k);
        assert!(
            matches!(
                key,
                Some("kne" | "kns" | "regex" | "kernel_name" | "kernel_substring")
            ),
            "the documented key=value filter form (not Nsight Compute's regex:), got {filter:?}"
        );
        let count: u64 = s
            .arg_after("--launch-count")
            .unwrap_or_else(|| panic!("--launch-count: {s:?}"))
            .parse()
            .unwrap();
        assert!(count >= 1, "0 would mean unlimited: {s:?}");
        let test = s
            .arg_after("--exact")
            .unwrap_or_else(|| panic!("one named test: {s:?}"));
        assert!(!test.starts_with('-') && !test.is_empty(), "{s:?}");
        assert!(s.test_binary().is_some(), "around a test binary: {s:?}");
        // The test name is the binary's last filter: exactly one test runs.
        let exact = s.command.iter().position(|a| a == "--exact").unwrap();
        let filters = s.command[exact + 1..]
            .iter()
            .filter(|a| !a.starts_with("--"));
        assert_eq!(filters.count(), 1, "one test, never a whole binary: {s:?}");
        let tool = s.arg_after("--tool").expect("--tool");
        assert!(
            ["memcheck", "racecheck", "synccheck"].contains(&tool),
            "{s:?}"
        );
        tools.insert(tool);
    }
    assert_eq!(
        tools.len(),
        3,
        "memcheck, racecheck and synccheck: {tools:?}"
    );
}

#[test]
fn compute_sanitizer_covers_the_self_tests_and_one_kernel_of_every_family() {
    let plan = default_plan();
    let families = kernel_families();
    assert!(families.len() >= 10, "{families:?}");
    let ignored: BTreeSet<String> = ignored_tests("tests/cuda_gpu.rs")
        .into_iter()
        .chain(ignored_tests("tests/device_augment.rs"))
        .collect();
    let mut covered = BTreeMap::<String, BTreeSet<String>>::new(); // family -> tools
    let mut self_tests = BTreeSet::new();
    for s in plan.steps.iter().filter(|s| s.is_sanitizer()) {
        let filter = s.arg_after("--kernel-name").unwrap();
        let tool = s.arg_after("--tool").unwrap().to_string();
        let test = s.arg_after("--exact").unwrap();
        assert!(
            ignored.contains(test),
            "{test} is a GPU test of the sources: {s:?}"
        );
        let hits: Vec<&String> = families
            .iter()
            .filter(|(_, k)| selects(filter, k))
            .map(|(f, _)| f)
            .collect();
        assert_eq!(
            hits.len(),
            1,
            "{filter} names a kernel of one family: {hits:?}"
        );
        covered
            .entry(hits[0].clone())
            .or_default()
            .insert(tool.clone());
        if SELF_TESTS.contains(&test) && tool == "memcheck" {
            self_tests.insert(test.to_string());
        }
    }
    for family in families.keys() {
        let tools = covered.get(family);
        assert!(
            tools.is_some_and(|t| t.contains("memcheck")),
            "kernels/{family}.cu has a kernel under memcheck: {covered:?}"
        );
    }
    // Every runtime self-test that launches a kernel of its own (all but the first) is sanitized.
    let expected: BTreeSet<String> = SELF_TESTS[1..].iter().map(|s| s.to_string()).collect();
    assert_eq!(self_tests, expected);
}

// ---- the real path, on stub executables ----

fn write_exe(path: &Path, body: &str) {
    fs::create_dir_all(path.parent().unwrap()).unwrap();
    fs::write(path, format!("#!/bin/bash\n{body}")).unwrap();
    fs::set_permissions(path, fs::Permissions::from_mode(0o755)).unwrap();
}

/// A fake nvidia-smi, and a pack whose test binary is a libtest stand-in: it lists KNOWN, records
/// each test it is asked for in $CALLS, fails those in $FAIL_TESTS and runs none it does not know.
fn stub_pack(dir: &Path, known: &[&str]) -> (PathBuf, PathBuf) {
    let bin = dir.join("bin");
    write_exe(
        &bin.join("nvidia-smi"),
        &format!(
            "case \"$*\" in *--query-gpu*) echo '{FAKE_GPU}, 550.54.15, 81559 MiB';; *) echo banner;; esac\n"
        ),
    );
    let stage = dir.join("stage");
    let test = format!(
        r#"known=" {} "
if [[ " $* " == *" --list "* ]]; then for n in $known; do echo "$n: test"; done; exit 0; fi
t=""; prev=""; for a in "$@"; do [ "$prev" = --exact ] && t=$a; prev=$a; done
echo "$t" >> "$CALLS"
if [[ "$known" != *" $t "* ]]; then echo "running 0 tests"; echo "test result: ok. 0 passed; 0 failed"; exit 0; fi
echo "running 1 test"
if [[ " ${{FAIL_TESTS:-}} " == *" $t "* ]]; then echo "thread '$t' panicked at x.rs:1:1:"; echo "stub failure"; exit 101; fi
echo "test result: ok. 1 passed; 0 failed"
"#,
        known.join(" ")
    );
    write_exe(&stage.join("tests/cuda_gpu"), &test);
    write_exe(
        &stage.join("bin/ltrain"),
        "case $1 in device) echo 'cuBLAS: stub 13.0';; bench) echo 'x: 1000.0 samples/s (12.80 ms/step over 50 steps)';; esac\n",
    );
    let pack = dir.join("pack");
    fs::create_dir_all(&pack).unwrap();
    let status = Command::new("tar")
        .arg("-C")
        .arg(&stage)
        .arg("-cJf")
        .arg(pack.join("executables.tar.xz"))
        .args(["bin", "tests"])
        .status()
        .expect("tar");
    assert!(status.success());
    (bin, pack)
}

fn read(path: &Path) -> String {
    fs::read_to_string(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// "YYYY-MM-DD HH:MM UTC" somewhere in the line.
fn has_date(line: &str) -> bool {
    line.as_bytes().windows(20).any(|w| {
        let d = |i: usize| w[i].is_ascii_digit();
        (0..4).all(d)
            && w[4] == b'-'
            && d(5)
            && d(6)
            && w[7] == b'-'
            && d(8)
            && d(9)
            && w[10] == b' '
            && d(11)
            && d(12)
            && w[13] == b':'
            && d(14)
            && d(15)
            && &w[16..20] == b" UTC"
    })
}

#[test]
fn the_log_and_the_summary_name_the_gpu_and_the_date_even_when_the_pack_is_broken() {
    let tmp = tempfile::tempdir().unwrap();
    let (bin, _) = stub_pack(tmp.path(), &[]);
    let empty = tmp.path().join("empty-pack");
    fs::create_dir(&empty).unwrap();
    let logs = tmp.path().join("logs");
    let out = run_script(
        &[empty.to_str().unwrap(), logs.to_str().unwrap()],
        Some(&bin),
        &[],
    );
    assert_eq!(out.status.code(), Some(1), "no executables.tar.xz: {out:?}");
    let summary = read(&logs.join("summary.md"));
    let head = summary.lines().next().unwrap();
    assert!(
        head.starts_with("## ") && head.contains(FAKE_GPU) && has_date(head),
        "{head:?}"
    );
    assert!(
        summary.contains("| env | unpack executables.tar.xz | FAILED |"),
        "{summary}"
    );
    let log = read(&logs.join("device-check.log"));
    let first = log.lines().next().unwrap();
    assert!(first.contains(FAKE_GPU) && has_date(first), "{first:?}");
    assert!(log.contains("glibc: "), "glibc is named: {log}");
}

#[test]
fn a_failed_runtime_self_test_stops_the_gpu_tests_and_the_summary_still_comes() {
    let tmp = tempfile::tempdir().unwrap();
    let (bin, pack) = stub_pack(tmp.path(), &SELF_TESTS);
    let logs = tmp.path().join("logs");
    let calls = tmp.path().join("calls");
    let out = run_script(
        &[pack.to_str().unwrap(), logs.to_str().unwrap()],
        Some(&bin),
        &[
            ("CALLS", calls.to_str().unwrap()),
            ("FAIL_TESTS", SELF_TESTS[2]),
        ],
    );
    assert!(out.status.success(), "{out:?}");
    let ran: Vec<String> = read(&calls).lines().map(str::to_string).collect();
    assert_eq!(
        ran,
        SELF_TESTS[..3],
        "no GPU test after the failed self-test"
    );
    let summary = read(&logs.join("summary.md"));
    assert!(
        summary.contains(&format!(
            "GPU tests stopped: runtime self-test {} failed",
            SELF_TESTS[2]
        )),
        "{summary}"
    );
    assert!(
        summary.contains(&format!(
            "| smoke | GPU test cuda_gpu {} | skipped (runtime self-test",
            SELF_TESTS[3]
        )),
        "{summary}"
    );
    assert!(
        summary.contains("| smoke | ltrain bench, ResNet-32 x3, batch 128, pre-augmented, tf32, graphs on | ok |"),
        "the bench steps still run: {summary}"
    );
}

#[test]
fn a_planned_test_the_binary_lacks_is_not_a_pass_and_unplanned_ones_run() {
    let tmp = tempfile::tempdir().unwrap();
    let mut known = SELF_TESTS.to_vec();
    known.extend([
        "convolutions_match_the_cpu",
        "batch_norm_matches_the_cpu",
        "training_steps_match_the_cpu",
        "a_test_beyond_the_plan",
    ]);
    let (bin, pack) = stub_pack(tmp.path(), &known);
    let logs = tmp.path().join("logs");
    let calls = tmp.path().join("calls");
    let out = run_script(
        &[pack.to_str().unwrap(), logs.to_str().unwrap()],
        Some(&bin),
        &[("CALLS", calls.to_str().unwrap())],
    );
    assert!(out.status.success(), "{out:?}");
    let ran = read(&calls);
    assert!(ran.lines().any(|l| l == "a_test_beyond_the_plan"), "{ran}");
    let summary = read(&logs.join("summary.md"));
    let row = summary
        .lines()
        .find(|l| l.starts_with("| full | GPU tests cuda_gpu"))
        .unwrap_or_else(|| panic!("a cuda_gpu row: {summary}"));
    assert!(row.contains("| FAILED "), "{row}");
    assert!(
        row.contains("gpu_backend_passes_the_conformance_suite (NOT RUN (no test"),
        "{row}"
    );
    assert!(
        row.contains("| 1 passed;"),
        "only the unplanned test passed: {row}"
    );
}
