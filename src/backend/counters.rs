//! Counted device work: what a backend asked a device to do (kernel launches, library calls, memsets,
//! allocations, copies, synchronisations), with the bytes and FLOPs involved. The CUDA backend counts
//! every operation in one place (`cuda/device.rs`), identically on a GPU and on the emulator; counts
//! are exact. `super::cost` turns them into a modelled step time.
//!
//! Bytes moved (an estimate of device-memory traffic, documented rule):
//! - a kernel launch: the size of every buffer argument, once per launch (read or written; a kernel
//!   that touches part of a buffer counts all of it, so this errs high);
//! - a GEMM: `4 * batch * (m k + k n + m n)` bytes, plus `4 * batch * m n` when `beta != 0` (C read);
//! - a memset: its bytes; a device-to-device copy: twice its bytes (read and write); a host-to-device
//!   or device-to-host copy: its bytes (written or read on the device).

use std::collections::BTreeMap;
use std::fmt::Write as _;

/// Launches of one kernel, the bytes they moved and the FLOPs of its matrix products, and their grids
/// summed over the launches (the cost model works with the mean grid of a kernel's launches).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct KernelCount {
    pub launches: u64,
    pub bytes: u64,
    pub flops: u64,
    /// Blocks, summed over the launches.
    pub blocks: u64,
    /// Threads per block, summed over the launches.
    pub threads: u64,
}

/// Applies `f` to each count of a [`KernelCount`] pair, so that the arithmetic over them cannot miss
/// one.
fn each_count(a: KernelCount, b: KernelCount, f: impl Fn(u64, u64) -> u64) -> KernelCount {
    KernelCount {
        launches: f(a.launches, b.launches),
        bytes: f(a.bytes, b.bytes),
        flops: f(a.flops, b.flops),
        blocks: f(a.blocks, b.blocks),
        threads: f(a.threads, b.threads),
    }
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
                        kernels.insert(name.clone(), each_count(*now, before, |a, b| a - b));
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
                    *mine = each_count(*mine, *k, |a, b| a + b);
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
                        .map(|(name, k)| (name.clone(), each_count(*k, *k, |a, _| d(a))))
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
    /// FLOPs of the backend's own matrix-product kernels (implicit-GEMM convolution), also per
    /// kernel in `kernels`.
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
                ..Default::default()
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
                ..Default::default()
            },
        );
        let d = after.since(&before);
        assert_eq!((d.kernel_launches, d.bytes_moved), (2, 80));
        assert_eq!(d.kernels.len(), 1);
        assert_eq!(d.kernels["b"].launches, 2);
    }
}
