//! `ltrain device` finds the CUDA libraries where system packages and the PyTorch wheels install
//! them, under their versioned names, and says which file it loaded with its version. Checked with
//! stand-in libraries built here (a C compiler, `cc`, is needed; the test says so if it is missing):
//! a `libcublas.so.13` and a `libnccl.so.2` in a virtual environment's `site-packages/nvidia/*/lib`
//! (where cudarc would not look), each answering its version query.

mod binary;

use std::path::Path;
use std::process::Command;

/// Builds a shared library named `soname` from `source` into `dir`.
fn stand_in(dir: &Path, soname: &str, source: &str) {
    std::fs::create_dir_all(dir).unwrap();
    let c = dir.join(format!("{soname}.c"));
    std::fs::write(&c, source).unwrap();
    let out = Command::new("cc")
        .args(["-shared", "-fPIC", &format!("-Wl,-soname,{soname}"), "-o"])
        .arg(dir.join(soname))
        .arg(&c)
        .output()
        .expect("a C compiler (`cc`) is needed to build the stand-in libraries");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

const FAKE_CUBLAS: &str = r#"
int cublasGetProperty(int type, int* value) {
    static const int parts[3] = {13, 0, 2};
    if (type < 0 || type > 2) return 7;
    *value = parts[type];
    return 0;
}
"#;

const FAKE_NCCL: &str = r#"
#include <stddef.h>
int ncclGetVersion(int* v) { *v = 22703; return 0; }
int ncclGetUniqueId(void* id) { return 1; }
int ncclCommInitRank(void* comm, int n, char id[128], int rank) { return 1; }
int ncclCommDestroy(void* comm) { return 0; }
int ncclAllReduce(const void* s, void* r, size_t n, int t, int op, void* c, void* st) { return 1; }
int ncclAllGather(const void* s, void* r, size_t n, int t, void* c, void* st) { return 1; }
int ncclBroadcast(const void* s, void* r, size_t n, int t, int root, void* c, void* st) { return 1; }
const char* ncclGetErrorString(int r) { return "stand-in"; }
const char* ncclGetLastError(void* c) { return ""; }
"#;

#[test]
fn device_reports_the_versioned_libraries_of_the_active_venv() {
    let root = tempfile::tempdir().unwrap();
    let venv = root.path().join("venv");
    let site = venv.join("lib/python3.11/site-packages/nvidia");
    let (cublas_dir, nccl_dir) = (site.join("cu13/lib"), site.join("nccl/lib"));
    stand_in(&cublas_dir, "libcublas.so.13", FAKE_CUBLAS);
    stand_in(&nccl_dir, "libnccl.so.2", FAKE_NCCL);

    let out = Command::new(env!("CARGO_BIN_EXE_ltrain"))
        .arg("device")
        .env_remove("LD_LIBRARY_PATH")
        .env("VIRTUAL_ENV", &venv)
        .env_remove("CONDA_PREFIX")
        .output()
        .unwrap();
    let text = binary::stdout(&out);
    assert!(out.status.success(), "{}", binary::stderr(&out));
    let line = |name: &str| {
        text.lines()
            .find(|l| l.split_whitespace().next() == Some(name))
            .unwrap_or_else(|| panic!("no {name} line in:\n{text}"))
            .to_string()
    };
    // Found by its full path, and then visible to cudarc's open by bare name.
    assert!(
        line("cuBLAS").contains(&format!(
            "13.0.2 ({})",
            cublas_dir.join("libcublas.so.13").display()
        )),
        "{text}"
    );
    assert!(
        line("NCCL").contains(&format!(
            "2.27.3 ({})",
            nccl_dir.join("libnccl.so.2").display()
        )),
        "{text}"
    );
}

#[test]
fn device_says_what_is_missing_and_where_it_looked() {
    let empty = tempfile::tempdir().unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_ltrain"))
        .arg("device")
        .env("LD_LIBRARY_PATH", empty.path())
        .env("VIRTUAL_ENV", empty.path())
        .env_remove("CONDA_PREFIX")
        // No python3 to ask for site-packages either.
        .env("PATH", empty.path())
        .output()
        .unwrap();
    let text = binary::stdout(&out);
    assert!(out.status.success(), "{}", binary::stderr(&out));
    let nccl = text.lines().find(|l| l.starts_with("NCCL")).unwrap();
    assert!(nccl.contains("missing: no libnccl.so.2"), "{text}");
    assert!(nccl.contains(&empty.path().display().to_string()), "{text}");
    assert!(nccl.contains("pip install nvidia-nccl-cu13"), "{text}");
}
