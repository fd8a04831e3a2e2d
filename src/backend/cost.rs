//! A cost model of the counted device work ([`DeviceCounters`]) on an H100 SXM and an H200, read from
//! the kernels' compiled code: a model, not a measurement.
//!
//! Per kernel, `cost/sm90_kernels.tsv` (written by `scripts/sass-costs.py --write` from the sm_90
//! SASS and ptxas's report) gives registers, shared memory, the unit its hot loop multiplies on, and
//! the instructions that loop issues per useful FMA. Per launch (a kernel's launches taken at their
//! mean grid), the time is the largest of
//! - memory: bytes moved / HBM bandwidth;
//! - issue: warp instructions (FLOPs / 2 x instructions per FMA / 32) / the issue rate of the SMs
//!   the grid fills: the busiest SM runs `ceil(blocks / SMs)` of the blocks, and issues from as many
//!   of its 4 schedulers as it has resident warps (residency from the occupancy limits below);
//! - math: FLOPs / the peak of the unit (FFMA, or the tensor cores' TF32 / BF16), on the same SMs;
//!
//! plus a launch cost. A kernel whose FLOPs are not counted (everything but the convolutions) or
//! whose hot loop does no FMA is bound by its bytes (and the launch). cuBLAS calls: the launch cost,
//! and their FLOPs at half the TF32 peak; bytes outside kernels (GEMM operands, memsets, copies) at
//! the HBM bandwidth. The step is `max(host, device)`: the host issues asynchronously.
//!
//! Not modelled: latency (a dependent chain in a few warps issues less than 4 per clock), bank
//! conflicts, caches, overlap between kernels, clocks below boost. The issue and math terms are
//! therefore lower bounds on a kernel's time, and the memory term assumes every byte crosses HBM once.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::sync::OnceLock;

use super::counters::{DeviceCounters, KernelCount};

/// Where the table comes from, for messages.
pub const TABLE_FILE: &str = "src/backend/cost/sm90_kernels.tsv";
const TABLE: &str = include_str!("cost/sm90_kernels.tsv");

/// What a kernel's hot loop multiplies on.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Unit {
    /// fp32 FFMA on the CUDA cores.
    Ffma,
    /// `mma.sync` (HMMA) with TF32 operands.
    Tf32,
    /// `mma.sync` (HMMA) with BF16 or FP16 operands (the same tensor-core rate on Hopper).
    Bf16,
}

/// A kernel as compiled (one row of the table).
#[derive(Clone, Debug, PartialEq)]
pub struct KernelCode {
    pub regs: u32,
    /// Static shared memory per block, bytes.
    pub smem: u32,
    /// The block size it is compiled for (`__launch_bounds__`, else 256).
    pub threads: u32,
    /// Resident blocks per SM at `threads` (as the script computed it; checked against
    /// [`blocks_per_sm`] by the tests).
    pub blocks_per_sm: u32,
    /// `None` when the hot loop does no FMA.
    pub unit: Option<Unit>,
    /// Issued instructions per useful FMA in the hot loop.
    pub instr_per_fma: Option<f64>,
}

/// The table's rows by kernel name.
pub fn kernel_code() -> &'static BTreeMap<String, KernelCode> {
    static CODE: OnceLock<BTreeMap<String, KernelCode>> = OnceLock::new();
    CODE.get_or_init(|| parse_table(TABLE).unwrap_or_else(|e| panic!("{TABLE_FILE}: {e}")))
}

/// Parses the table's text (the columns the model reads, by header name).
pub fn parse_table(text: &str) -> Result<BTreeMap<String, KernelCode>, String> {
    let mut lines = text
        .lines()
        .enumerate()
        .filter(|(_, l)| !l.is_empty() && !l.starts_with('#'));
    let (_, header) = lines.next().ok_or("no header row")?;
    let columns: Vec<&str> = header.split('\t').collect();
    let col = |name: &str| {
        columns
            .iter()
            .position(|c| *c == name)
            .ok_or_else(|| format!("no `{name}` column"))
    };
    let [kernel, regs, smem, threads, blocks, unit, per_fma] = [
        "kernel",
        "regs",
        "smem",
        "threads",
        "blocks_per_sm",
        "unit",
        "instr_per_fma",
    ]
    .map(col);
    let (kernel, regs, smem, threads, blocks, unit, per_fma) =
        (kernel?, regs?, smem?, threads?, blocks?, unit?, per_fma?);
    let mut rows = BTreeMap::new();
    for (i, line) in lines {
        let f: Vec<&str> = line.split('\t').collect();
        let at = |c: usize| {
            f.get(c)
                .copied()
                .ok_or(format!("line {}: too few columns", i + 1))
        };
        let int = |c: usize| -> Result<u32, String> {
            at(c)?
                .parse()
                .map_err(|_| format!("line {}: `{}` is not a count", i + 1, f[c]))
        };
        let unit = match at(unit)? {
            "-" => None,
            "ffma" => Some(Unit::Ffma),
            "tf32" => Some(Unit::Tf32),
            "bf16" | "f16" => Some(Unit::Bf16),
            other => return Err(format!("line {}: unknown unit `{other}`", i + 1)),
        };
        let instr_per_fma = match at(per_fma)? {
            "-" => None,
            v => Some(
                v.parse::<f64>()
                    .map_err(|_| format!("line {}: `{v}` is not a number", i + 1))?,
            ),
        };
        let code = KernelCode {
            regs: int(regs)?,
            smem: int(smem)?,
            threads: int(threads)?,
            blocks_per_sm: int(blocks)?,
            unit,
            instr_per_fma,
        };
        rows.insert(at(kernel)?.to_string(), code);
    }
    Ok(rows)
}

// sm_90 occupancy limits: CUDA C++ Programming Guide, "Compute Capabilities", table of technical
// specifications, compute capability 9.0 (the script's blocks_per_sm column uses the same).
/// 32-bit registers per SM.
pub const REGS_PER_SM: u32 = 65536;
/// Registers are allocated per warp in units of 256.
pub const REG_ALLOC_UNIT: u32 = 256;
/// Shared memory per SM (228 KB; a block may use up to 227 KB).
pub const SMEM_PER_SM: u32 = 228 * 1024;
/// Shared memory the system reserves per resident block.
pub const SMEM_RESERVED_PER_BLOCK: u32 = 1024;
pub const WARPS_PER_SM: u32 = 64;
pub const BLOCKS_PER_SM: u32 = 32;

/// Resident blocks per SM of a kernel with `regs` registers and `smem` bytes of shared memory at
/// `threads` threads per block.
pub fn blocks_per_sm(regs: u32, smem: u32, threads: u32) -> u32 {
    let warps = threads.div_ceil(32).max(1);
    let regs_per_warp = (regs.max(1) * 32).div_ceil(REG_ALLOC_UNIT) * REG_ALLOC_UNIT;
    let by_regs = (REGS_PER_SM / regs_per_warp) / warps;
    let by_smem = SMEM_PER_SM / (smem + SMEM_RESERVED_PER_BLOCK);
    by_regs
        .min(by_smem)
        .min(WARPS_PER_SM / warps)
        .min(BLOCKS_PER_SM)
}

/// A GPU's figures for the model.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Gpu {
    pub name: &'static str,
    pub sms: u32,
    /// The boost clock the peak rates assume.
    pub clock_hz: f64,
    pub hbm_bytes_per_second: f64,
    /// Dense peaks, FLOP/s (an FMA is 2 FLOPs).
    pub ffma_flops: f64,
    pub tf32_flops: f64,
    pub bf16_flops: f64,
    /// Warp instructions each SM issues per clock.
    pub issue_per_sm_per_clock: f64,
    /// Device time a launch costs beyond its work (a kernel, a cuBLAS call).
    pub launch_seconds: f64,
    /// Host time per stream operation the host issues, and per synchronisation.
    pub host_seconds_per_op: f64,
    pub sync_seconds: f64,
    /// cuBLAS GEMMs (TF32 tensor cores when TF32 is on).
    pub blas_flops: f64,
}

// Sources. NVIDIA H100 Tensor Core GPU datasheet and H200 datasheet (SXM columns): FP32 67 TFLOP/s,
// TF32 tensor core 989 TFLOP/s and BF16 1,979 TFLOP/s *with sparsity* (dense: half), HBM3 3.35 TB/s
// (H100 SXM), HBM3e 4.8 TB/s (H200). NVIDIA H100 Tensor Core GPU Architecture whitepaper: 132 SMs on
// H100 SXM5 (H200 is the same GH100 die), 128 FP32 lanes and 4 warp schedulers per SM, each
// scheduler dispatching one warp instruction per clock. The clock follows from the FP32 figure:
// 67e12 / (132 SMs x 128 lanes x 2) = 1.98 GHz, the boost clock nvidia-smi reports for both.
// The datasheet tensor peaks are wgmma's; `mma.sync` (HMMA) is said to reach less on Hopper, so the
// math term of an HMMA kernel is optimistic. Assumptions, not datasheet figures: 2 µs per launch
// (kernels back to back in a stream or graph), 4 µs of host time per stream operation and 10 µs per
// synchronisation (typical driver overheads), cuBLAS at half the TF32 dense peak.
const SMS: u32 = 132;
const CLOCK_HZ: f64 = 1.98e9;
const FFMA_FLOPS: f64 = 2.0 * 128.0 * SMS as f64 * CLOCK_HZ;

/// NVIDIA H100 SXM5 80 GB.
pub const H100_SXM: Gpu = Gpu {
    name: "H100 SXM",
    sms: SMS,
    clock_hz: CLOCK_HZ,
    hbm_bytes_per_second: 3.35e12,
    ffma_flops: FFMA_FLOPS,
    tf32_flops: 989e12 / 2.0,
    bf16_flops: 1979e12 / 2.0,
    issue_per_sm_per_clock: 4.0,
    launch_seconds: 2e-6,
    host_seconds_per_op: 4e-6,
    sync_seconds: 10e-6,
    blas_flops: 989e12 / 4.0,
};

/// NVIDIA H200 SXM 141 GB: the H100 SXM's compute with HBM3e.
pub const H200: Gpu = Gpu {
    name: "H200",
    hbm_bytes_per_second: 4.8e12,
    ..H100_SXM
};

/// The GPUs `ltrain bench --counters` models.
pub const GPUS: [&Gpu; 2] = [&H100_SXM, &H200];

/// What sets a launch's modelled time.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Bound {
    Memory,
    Issue,
    Math,
    Launch,
}

impl Bound {
    pub fn name(self) -> &'static str {
        match self {
            Bound::Memory => "memory",
            Bound::Issue => "issue",
            Bound::Math => "math",
            Bound::Launch => "launch",
        }
    }
}

/// One launch at a kernel's mean grid, bytes and FLOPs.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Launch {
    pub blocks: f64,
    pub threads: f64,
    pub bytes: f64,
    pub flops: f64,
}

impl Launch {
    /// The mean launch of `k`'s launches.
    pub fn mean(k: &KernelCount) -> Self {
        let n = k.launches.max(1) as f64;
        Launch {
            blocks: k.blocks as f64 / n,
            threads: k.threads as f64 / n,
            bytes: k.bytes as f64 / n,
            flops: k.flops as f64 / n,
        }
    }
}

/// A kernel's launches in a step, modelled.
#[derive(Clone, Debug, PartialEq)]
pub struct KernelTime {
    pub name: String,
    pub count: KernelCount,
    pub bound: Bound,
    /// All its launches, seconds.
    pub seconds: f64,
}

/// A modelled step time and its parts, in seconds, with the kernels most time first.
#[derive(Clone, Debug, PartialEq)]
pub struct ModelledStep {
    pub host: f64,
    pub device: f64,
    pub step: f64,
    pub kernels: Vec<KernelTime>,
}

impl Gpu {
    fn unit_flops(&self, unit: Unit) -> f64 {
        match unit {
            Unit::Ffma => self.ffma_flops,
            Unit::Tf32 => self.tf32_flops,
            Unit::Bf16 => self.bf16_flops,
        }
    }

    /// The modelled time of one launch of a kernel compiled as `code` (`None`: no row; bound by its
    /// bytes), and what bounds it.
    pub fn launch(&self, code: Option<&KernelCode>, l: &Launch) -> (f64, Bound) {
        let memory = l.bytes / self.hbm_bytes_per_second;
        let (mut issue, mut math) = (0.0, 0.0);
        if let Some((code, unit, per_fma)) = code.and_then(|c| Some((c, c.unit?, c.instr_per_fma?)))
        {
            if l.flops > 0.0 {
                let blocks = l.blocks.max(1.0);
                let sms = f64::from(self.sms);
                // The busiest SM's blocks, and its share of the launch's work.
                let on_busiest = (blocks / sms).ceil();
                let share = on_busiest / blocks;
                let threads = l.threads.round().max(1.0) as u32;
                let resident = on_busiest.min(f64::from(
                    blocks_per_sm(code.regs, code.smem, threads).max(1),
                ));
                let warps = resident * f64::from(threads.div_ceil(32));
                let issue_rate = warps.min(self.issue_per_sm_per_clock) * self.clock_hz;
                let warp_instructions = l.flops / 2.0 * per_fma / 32.0;
                issue = warp_instructions * share / issue_rate;
                math = l.flops * share / (self.unit_flops(unit) / sms);
            }
        }
        let (work, bound) = [
            (memory, Bound::Memory),
            (issue, Bound::Issue),
            (math, Bound::Math),
        ]
        .into_iter()
        .fold((0.0, Bound::Memory), |a, b| if b.0 > a.0 { b } else { a });
        let bound = if self.launch_seconds > work {
            Bound::Launch
        } else {
            bound
        };
        (work + self.launch_seconds, bound)
    }

    /// The modelled time of the work in `c`.
    pub fn step(&self, c: &DeviceCounters) -> ModelledStep {
        let code = kernel_code();
        let mut kernels: Vec<KernelTime> = c
            .kernels
            .iter()
            .map(|(name, k)| {
                let (seconds, bound) = self.launch(code.get(name), &Launch::mean(k));
                KernelTime {
                    name: name.clone(),
                    count: *k,
                    bound,
                    seconds: seconds * k.launches as f64,
                }
            })
            .collect();
        kernels.sort_by(|a, b| b.seconds.total_cmp(&a.seconds).then(a.name.cmp(&b.name)));
        let kernel_bytes: u64 = c.kernels.values().map(|k| k.bytes).sum();
        let device = kernels.iter().map(|k| k.seconds).sum::<f64>()
            + c.blas_calls as f64 * self.launch_seconds
            + c.blas_flops as f64 / self.blas_flops
            + c.bytes_moved.saturating_sub(kernel_bytes) as f64 / self.hbm_bytes_per_second;
        let host = c.host_operations() as f64 * self.host_seconds_per_op
            + c.synchronizations as f64 * self.sync_seconds;
        ModelledStep {
            host,
            device,
            step: host.max(device),
            kernels,
        }
    }
}

/// The kernels of `c` modelled on each of `gpus`, most time (on the first) first: launches, bytes,
/// FLOPs, and per GPU the bound and the time of all launches.
pub fn kernel_table(c: &DeviceCounters, gpus: &[&Gpu]) -> String {
    let steps: Vec<ModelledStep> = gpus.iter().map(|g| g.step(c)).collect();
    let mut s = String::new();
    write!(
        s,
        "  {:<36} {:>8} {:>9} {:>7}",
        "kernel", "launches", "MB", "GFLOP"
    )
    .unwrap();
    for g in gpus {
        write!(s, "  {:>10} {:<7}", format!("{} µs", g.name), "bound").unwrap();
    }
    let mut s = s.trim_end().to_string();
    s.push('\n');
    let Some(first) = steps.first() else {
        return s;
    };
    for k in &first.kernels {
        let c = k.count;
        write!(
            s,
            "  {:<36} {:>8} {:>9.1} {:>7.2}",
            k.name,
            c.launches,
            c.bytes as f64 / 1e6,
            c.flops as f64 / 1e9
        )
        .unwrap();
        for step in &steps {
            let t = step
                .kernels
                .iter()
                .find(|t| t.name == k.name)
                .expect("same kernels");
            write!(s, "  {:>10.1} {:<7}", t.seconds * 1e6, t.bound.name()).unwrap();
        }
        s.truncate(s.trim_end().len());
        s.push('\n');
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn occupancy_follows_the_sm90_limits() {
        // 64 regs: 2048 per warp, 32 warps, 4 blocks of 8 warps; 10 KB of shared memory: 22 blocks.
        assert_eq!(blocks_per_sm(64, 9216, 256), 4);
        // 122 regs round up to 128 per thread: 4096 per warp, 16 warps, 2 blocks.
        assert_eq!(blocks_per_sm(122, 12292, 256), 2);
        // Shared memory: 233472 / (45060 + 1024) = 5 blocks; registers (94 -> 96): 2.
        assert_eq!(blocks_per_sm(94, 45060, 256), 2);
        assert_eq!(blocks_per_sm(16, 100_000, 256), 2);
        // Warps: 1024 threads are 32 warps, 2 per SM; small blocks stop at 32 per SM.
        assert_eq!(blocks_per_sm(8, 0, 1024), 2);
        assert_eq!(blocks_per_sm(8, 0, 32), 32);
    }

    #[test]
    fn the_table_parses_and_its_occupancy_column_is_the_models() {
        let code = kernel_code();
        assert!(code.len() > 40, "{TABLE_FILE}: {} rows", code.len());
        for (name, k) in code {
            assert_eq!(
                k.blocks_per_sm,
                blocks_per_sm(k.regs, k.smem, k.threads),
                "{TABLE_FILE}: {name}: the script's occupancy differs from the model's"
            );
        }
        let conv = &code["conv2d_forward_m16"];
        assert_eq!(conv.unit, Some(Unit::Ffma));
        assert!(conv.instr_per_fma.unwrap() > 1.0);
    }

    #[test]
    fn table_errors_name_the_line() {
        let e = parse_table("kernel\tregs\n").unwrap_err();
        assert!(e.contains("no `smem` column"), "{e}");
        let header = "kernel\tregs\tsmem\tthreads\tblocks_per_sm\tunit\tinstr_per_fma\n";
        let e = parse_table(&format!("{header}k\t1\t0\t256\t8\tfp64\t-\n")).unwrap_err();
        assert!(e.contains("line 2: unknown unit `fp64`"), "{e}");
    }

    fn ffma_kernel(instr_per_fma: f64) -> KernelCode {
        KernelCode {
            regs: 32,
            smem: 0,
            threads: 256,
            blocks_per_sm: 8,
            unit: Some(Unit::Ffma),
            instr_per_fma: Some(instr_per_fma),
        }
    }

    #[test]
    fn a_launch_takes_the_largest_term_plus_the_launch() {
        let g = H100_SXM;
        // 1e9 FMAs at 4 instructions each on 264 blocks: 2 blocks on the busiest SM, 16 warps, all 4
        // schedulers issuing; 1.25e8 warp instructions, 2/264 of them on that SM at 4 x 1.98e9 a
        // second.
        let l = Launch {
            blocks: 264.0,
            threads: 256.0,
            bytes: 0.0,
            flops: 2e9,
        };
        let (t, bound) = g.launch(Some(&ffma_kernel(4.0)), &l);
        let issue = 1.25e8 * 2.0 / 264.0 / (4.0 * 1.98e9);
        assert!((t - (issue + 2e-6)).abs() < 1e-12, "{t}");
        assert_eq!(bound, Bound::Issue);
        // At 1 instruction per FMA issue equals math: 2e9 FLOPs x 2/264 at 67e12 / 132 per SM.
        let (t, _) = g.launch(Some(&ffma_kernel(1.0)), &l);
        let math = 2e9 * 2.0 / 264.0 / (2.0 * 128.0 * 1.98e9);
        assert!((t - (math + 2e-6)).abs() < 1e-12, "{t} {math}");
        // 128 blocks leave 4 SMs idle: 1 block per SM, 8 warps, still 4 schedulers.
        let (t, _) = g.launch(Some(&ffma_kernel(4.0)), &Launch { blocks: 128.0, ..l });
        assert!((t - (1.25e8 / 128.0 / (4.0 * 1.98e9) + 2e-6)).abs() < 1e-12);
        // One warp per block, 1 block on each SM: 1 scheduler of 4 issues.
        let (t, _) = g.launch(
            Some(&ffma_kernel(4.0)),
            &Launch {
                blocks: 132.0,
                threads: 32.0,
                ..l
            },
        );
        assert!((t - (1.25e8 / 132.0 / 1.98e9 + 2e-6)).abs() < 1e-12);
    }

    #[test]
    fn kernels_without_counted_flops_are_bound_by_bytes_or_the_launch() {
        let l = Launch {
            blocks: 1056.0,
            threads: 256.0,
            bytes: 3.35e9,
            flops: 0.0,
        };
        // 3.35 GB at 3.35 TB/s (H100 SXM) and at 4.8 TB/s (H200).
        let (t, bound) = H100_SXM.launch(Some(&ffma_kernel(4.0)), &l);
        assert!((t - (1e-3 + 2e-6)).abs() < 1e-12);
        assert_eq!(bound, Bound::Memory);
        let (t, _) = H200.launch(None, &l);
        assert!((t - (3.35e9 / 4.8e12 + 2e-6)).abs() < 1e-12);
        let (t, bound) = H200.launch(None, &Launch { bytes: 4.8e6, ..l });
        assert!((t - 3e-6).abs() < 1e-12);
        assert_eq!(bound, Bound::Launch);
    }

    #[test]
    fn the_step_adds_kernels_blas_and_other_bytes_and_takes_the_slower_of_host_and_device() {
        let mut c = DeviceCounters {
            kernel_launches: 10,
            blas_calls: 2,
            blas_flops: (989e12 / 4.0 * 1e-3) as u64, // 1 ms at half the TF32 peak
            bytes_moved: 3.35e9 as u64 * 2,           // half of it outside the kernels
            ..Default::default()
        };
        c.kernels.insert(
            "scale".into(),
            KernelCount {
                launches: 10,
                bytes: 3.35e9 as u64,
                flops: 0,
                blocks: 10 * 1056,
                threads: 10 * 256,
            },
        );
        let m = H100_SXM.step(&c);
        let kernels = 1e-3 + 10.0 * 2e-6;
        assert!((m.kernels[0].seconds - kernels).abs() < 1e-12);
        assert!(
            (m.device - (kernels + 2.0 * 2e-6 + 1e-3 + 1e-3)).abs() < 1e-9,
            "{m:?}"
        );
        assert!((m.host - 12.0 * 4e-6).abs() < 1e-12, "{m:?}");
        assert_eq!(m.step, m.device);
    }
}
