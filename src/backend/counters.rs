//! Counted device work: what a backend asked a device to do (kernel launches, library calls, memsets,
//! allocations, copies, synchronisations), with the bytes and FLOPs involved, and a small model of an
//! H200 that turns the counts into a step time. The CUDA backend counts every operation in one place
//! (`cuda/device.rs`), identically on a GPU and on the emulator; counts are exact, the model is a
//! model.
//!
//! Bytes moved (an estimate of device-memory traffic, documented rule):
//! - a kernel launch: the size of every buffer argument, once per launch (read or written; a kernel
//!   that touches part of a buffer counts all of it, so this errs high);
//! - a GEMM: `4 * batch * (m k + k n + m n)` bytes, plus `4 * batch * m n` when `beta != 0` (C read);
//! - a memset: its bytes; a device-to-device copy: twice its bytes (read and write); a host-to-device
//!   or device-to-host copy: its bytes (written or read on the device).

use std::collections::BTreeMap;
use std::fmt::Write as _;

/// Launches of one kernel and the bytes they moved.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct KernelCount {
    pub launches: u64,
    pub bytes: u64,
}

/// Device work counted since the backend was made (subtract two snapshots with
/// [`DeviceCounters::since`] for the work in between).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct DeviceCounters {
    pub kernel_launches: u64,
    /// cuBLAS calls (the emulator counts the calls it stands in for).
    pub blas_calls: u64,
    pub memsets: u64,
    pub memset_bytes: u64,
    /// Device allocations the caching allocator could not serve from memory freed earlier.
    pub allocations: u64,
    pub allocation_bytes: u64,
    /// Device memory handed back to the driver.
    pub frees: u64,
    pub h2d_copies: u64,
    pub h2d_bytes: u64,
    pub d2h_copies: u64,
    pub d2h_bytes: u64,
    pub d2d_copies: u64,
    pub d2d_bytes: u64,
    /// Host waits for the device (stream synchronisations, including those of device-to-host copies).
    pub synchronizations: u64,
    /// FLOPs of cuBLAS GEMMs (`2 m n k` per product; TF32 tensor cores when TF32 is on).
    pub blas_flops: u64,
    /// FLOPs of the backend's own matrix-product kernels (implicit-GEMM convolution; fp32 SIMT).
    pub kernel_flops: u64,
    /// Estimated device-memory traffic (rule in the module docs).
    pub bytes_moved: u64,
    /// Per kernel name.
    pub kernels: BTreeMap<String, KernelCount>,
}

impl DeviceCounters {
    /// The work counted after `earlier` (a snapshot of the same counters).
    pub fn since(&self, earlier: &DeviceCounters) -> DeviceCounters {
        let mut kernels = BTreeMap::new();
        for (name, now) in &self.kernels {
            let before = earlier.kernels.get(name).copied().unwrap_or_default();
            if now.launches > before.launches {
                kernels.insert(
                    name.clone(),
                    KernelCount {
                        launches: now.launches - before.launches,
                        bytes: now.bytes - before.bytes,
                    },
                );
            }
        }
        DeviceCounters {
            kernel_launches: self.kernel_launches - earlier.kernel_launches,
            blas_calls: self.blas_calls - earlier.blas_calls,
            memsets: self.memsets - earlier.memsets,
            memset_bytes: self.memset_bytes - earlier.memset_bytes,
            allocations: self.allocations - earlier.allocations,
            allocation_bytes: self.allocation_bytes - earlier.allocation_bytes,
            frees: self.frees - earlier.frees,
            h2d_copies: self.h2d_copies - earlier.h2d_copies,
            h2d_bytes: self.h2d_bytes - earlier.h2d_bytes,
            d2h_copies: self.d2h_copies - earlier.d2h_copies,
            d2h_bytes: self.d2h_bytes - earlier.d2h_bytes,
            d2d_copies: self.d2d_copies - earlier.d2d_copies,
            d2d_bytes: self.d2d_bytes - earlier.d2d_bytes,
            synchronizations: self.synchronizations - earlier.synchronizations,
            blas_flops: self.blas_flops - earlier.blas_flops,
            kernel_flops: self.kernel_flops - earlier.kernel_flops,
            bytes_moved: self.bytes_moved - earlier.bytes_moved,
            kernels,
        }
    }

    /// The counts divided by `steps` (rounded down): per step, when every step does the same work.
    pub fn per_step(&self, steps: u64) -> DeviceCounters {
        let d = |v: u64| v / steps.max(1);
        DeviceCounters {
            kernel_launches: d(self.kernel_launches),
            blas_calls: d(self.blas_calls),
            memsets: d(self.memsets),
            memset_bytes: d(self.memset_bytes),
            allocations: d(self.allocations),
            allocation_bytes: d(self.allocation_bytes),
            frees: d(self.frees),
            h2d_copies: d(self.h2d_copies),
            h2d_bytes: d(self.h2d_bytes),
            d2h_copies: d(self.d2h_copies),
            d2h_bytes: d(self.d2h_bytes),
            d2d_copies: d(self.d2d_copies),
            d2d_bytes: d(self.d2d_bytes),
            synchronizations: d(self.synchronizations),
            blas_flops: d(self.blas_flops),
            kernel_flops: d(self.kernel_flops),
            bytes_moved: d(self.bytes_moved),
            kernels: self
                .kernels
                .iter()
                .map(|(name, k)| {
                    let k = KernelCount {
                        launches: d(k.launches),
                        bytes: d(k.bytes),
                    };
                    (name.clone(), k)
                })
                .collect(),
        }
    }

    /// Operations the host puts on the stream: launches, library calls, memsets, allocations, frees
    /// and copies.
    pub fn stream_operations(&self) -> u64 {
        self.kernel_launches
            + self.blas_calls
            + self.memsets
            + self.allocations
            + self.frees
            + self.h2d_copies
            + self.d2h_copies
            + self.d2d_copies
    }

    /// A table of the counts.
    pub fn table(&self) -> String {
        let mb = |v: u64| v as f64 / 1e6;
        let rows: [(&str, String); 12] = [
            ("kernel launches", self.kernel_launches.to_string()),
            ("cuBLAS calls", self.blas_calls.to_string()),
            (
                "memsets",
                format!("{} ({:.3} MB)", self.memsets, mb(self.memset_bytes)),
            ),
            (
                "device allocations",
                format!("{} ({:.2} MB)", self.allocations, mb(self.allocation_bytes)),
            ),
            ("device frees", self.frees.to_string()),
            (
                "host-to-device copies",
                format!("{} ({:.3} MB)", self.h2d_copies, mb(self.h2d_bytes)),
            ),
            (
                "device-to-host copies",
                format!("{} ({:.6} MB)", self.d2h_copies, mb(self.d2h_bytes)),
            ),
            (
                "device-to-device copies",
                format!("{} ({:.2} MB)", self.d2d_copies, mb(self.d2d_bytes)),
            ),
            ("host synchronisations", self.synchronizations.to_string()),
            (
                "GEMM GFLOP (cuBLAS / own kernels)",
                format!(
                    "{:.2} / {:.2}",
                    self.blas_flops as f64 / 1e9,
                    self.kernel_flops as f64 / 1e9
                ),
            ),
            (
                "bytes moved (estimate)",
                format!("{:.3} GB", self.bytes_moved as f64 / 1e9),
            ),
            ("stream operations", self.stream_operations().to_string()),
        ];
        let mut s = String::new();
        for (name, value) in rows {
            writeln!(s, "  {name:<36} {value}").unwrap();
        }
        s
    }

    /// The kernels by launches, most first.
    pub fn kernel_table(&self) -> String {
        let mut rows: Vec<(&String, &KernelCount)> = self.kernels.iter().collect();
        rows.sort_by(|a, b| b.1.launches.cmp(&a.1.launches).then(a.0.cmp(b.0)));
        let mut s = String::new();
        for (name, k) in rows {
            writeln!(
                s,
                "  {name:<36} {:>7} launches {:>10.1} MB",
                k.launches,
                k.bytes as f64 / 1e6
            )
            .unwrap();
        }
        s
    }
}

/// A device's throughput figures for [`DeviceModel::step`]: the model is `max(host, device)` (the host
/// issues asynchronously while the device works), with
/// - host = (stream operations) x `host_seconds_per_op` + synchronisations x `sync_seconds`;
/// - device = launches and library calls x `device_seconds_per_launch` (the floor of a small kernel),
///   plus bytes moved / `bytes_per_second`, cuBLAS FLOPs / `blas_flops_per_second` and own-kernel
///   FLOPs / `kernel_flops_per_second`.
///
/// It ignores overlap of memory and compute, caches and occupancy: a planning figure, not a
/// measurement.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct DeviceModel {
    pub name: &'static str,
    pub host_seconds_per_op: f64,
    pub sync_seconds: f64,
    pub device_seconds_per_launch: f64,
    pub bytes_per_second: f64,
    pub blas_flops_per_second: f64,
    pub kernel_flops_per_second: f64,
}

/// NVIDIA H200 SXM: ~4.3 TB/s measured copy bandwidth, ~67 TFLOP/s fp32 SIMT (the GPU machine's
/// documentation), TF32 tensor-core GEMMs at half of the 495 TFLOP/s dense peak, 4 µs of host time per
/// stream operation and 10 µs per synchronisation (typical driver overheads), 2 µs per launch on the
/// device.
pub const H200_MODEL: DeviceModel = DeviceModel {
    name: "H200 model",
    host_seconds_per_op: 4e-6,
    sync_seconds: 10e-6,
    device_seconds_per_launch: 2e-6,
    bytes_per_second: 4.3e12,
    blas_flops_per_second: 247e12,
    kernel_flops_per_second: 67e12 * 0.5,
};

/// A modelled step time and its parts, in seconds.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct ModelledStep {
    pub host: f64,
    pub device: f64,
    pub step: f64,
}

impl DeviceModel {
    /// The modelled time of the work in `c`.
    pub fn step(&self, c: &DeviceCounters) -> ModelledStep {
        let host = c.stream_operations() as f64 * self.host_seconds_per_op
            + c.synchronizations as f64 * self.sync_seconds;
        let device = (c.kernel_launches + c.blas_calls) as f64 * self.device_seconds_per_launch
            + c.bytes_moved as f64 / self.bytes_per_second
            + c.blas_flops as f64 / self.blas_flops_per_second
            + c.kernel_flops as f64 / self.kernel_flops_per_second;
        ModelledStep {
            host,
            device,
            step: host.max(device),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn since_subtracts_and_keeps_the_kernels_that_ran() {
        let mut before = DeviceCounters {
            kernel_launches: 3,
            bytes_moved: 100,
            ..Default::default()
        };
        before.kernels.insert(
            "a".into(),
            KernelCount {
                launches: 3,
                bytes: 100,
            },
        );
        let mut after = before.clone();
        after.kernel_launches = 5;
        after.bytes_moved = 180;
        after.kernels.insert(
            "b".into(),
            KernelCount {
                launches: 2,
                bytes: 80,
            },
        );
        let d = after.since(&before);
        assert_eq!((d.kernel_launches, d.bytes_moved), (2, 80));
        assert_eq!(d.kernels.len(), 1);
        assert_eq!(d.kernels["b"].launches, 2);
    }

    #[test]
    fn the_model_takes_the_slower_of_host_and_device() {
        let c = DeviceCounters {
            kernel_launches: 1000,
            bytes_moved: 43_000_000_000, // 10 ms at 4.3 TB/s
            ..Default::default()
        };
        let m = H200_MODEL.step(&c);
        assert!((m.host - 4e-3).abs() < 1e-12, "{m:?}");
        assert!((m.device - (2e-3 + 10e-3)).abs() < 1e-9, "{m:?}");
        assert_eq!(m.step, m.device);
    }
}
