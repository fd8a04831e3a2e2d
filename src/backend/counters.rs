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

/// Declares [`DeviceCounters`] with its plain counts listed once, so that the arithmetic over them
/// (`since`, `add`, `per_step`) cannot miss one.
macro_rules! device_counters {
    ($($(#[$doc:meta])* $field:ident),* $(,)?) => {
        /// Device work counted since the backend was made (subtract two snapshots with
        /// [`DeviceCounters::since`] for the work in between). Work a graph replay runs counts as if
        /// issued, and also in `replayed_operations`: the host issued only the graph launch.
        #[derive(Clone, Debug, Default, PartialEq, Eq)]
        pub struct DeviceCounters {
            $($(#[$doc])* pub $field: u64,)*
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
                    $($field: self.$field - earlier.$field,)*
                    kernels,
                }
            }

            /// Adds the work in `other` (a graph's, at each replay).
            pub fn add(&mut self, other: &DeviceCounters) {
                $(self.$field += other.$field;)*
                for (name, k) in &other.kernels {
                    let mine = self.kernels.entry(name.clone()).or_default();
                    mine.launches += k.launches;
                    mine.bytes += k.bytes;
                }
            }

            /// The counts divided by `steps` (rounded down): per step, when every step does the
            /// same work.
            pub fn per_step(&self, steps: u64) -> DeviceCounters {
                let d = |v: u64| v / steps.max(1);
                DeviceCounters {
                    $($field: d(self.$field),)*
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
        }
    };
}

device_counters! {
    kernel_launches,
    /// cuBLAS calls (the emulator counts the calls it stands in for).
    blas_calls,
    memsets,
    memset_bytes,
    /// Device allocations the caching allocator could not serve from memory freed earlier.
    allocations,
    allocation_bytes,
    /// Device memory handed back to the driver.
    frees,
    h2d_copies,
    h2d_bytes,
    d2h_copies,
    d2h_bytes,
    d2d_copies,
    d2d_bytes,
    /// Host waits for the device (stream synchronisations, including those of device-to-host copies).
    synchronizations,
    /// FLOPs of cuBLAS GEMMs (`2 m n k` per product; TF32 tensor cores when TF32 is on).
    blas_flops,
    /// FLOPs of the backend's own matrix-product kernels (implicit-GEMM convolution; fp32 SIMT).
    kernel_flops,
    /// Estimated device-memory traffic (rule in the module docs).
    bytes_moved,
    /// CUDA graphs launched (one host operation each).
    graph_launches,
    /// Of the stream operations, those a graph replay ran (the host did not issue them).
    replayed_operations,
}

impl DeviceCounters {
    /// Operations on the stream: launches, library calls, memsets, allocations, frees and copies,
    /// issued by the host or replayed from a graph.
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

    /// Operations the host issued: the stream operations outside graphs, plus the graph launches.
    pub fn host_operations(&self) -> u64 {
        self.stream_operations() - self.replayed_operations + self.graph_launches
    }

    /// A table of the counts.
    pub fn table(&self) -> String {
        let mb = |v: u64| v as f64 / 1e6;
        let rows: [(&str, String); 14] = [
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
            ("graph launches", self.graph_launches.to_string()),
            ("host operations", self.host_operations().to_string()),
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
/// - host = (host operations: stream operations outside graphs, graph launches) x
///   `host_seconds_per_op` + synchronisations x `sync_seconds`;
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
        let host = c.host_operations() as f64 * self.host_seconds_per_op
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
