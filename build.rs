//! Build script: the CUDA kernels in `kernels/*.cu`.
//!
//! 1. With nvcc (found via `NVCC`, then `$CUDA_HOME/bin`, `$CUDA_PATH/bin`, then `PATH`, then the
//!    `.venv-nvcc` that `scripts/install-nvcc.sh` makes), every kernel file is compiled to a fatbin
//!    holding the machine code for `$CUDA_ARCH` (default `sm_90`) and its PTX (`compute_90`, for
//!    newer GPUs; `LTRAIN_CUDA_PTX=0` leaves the PTX out, as the GPU pack does to fit its size
//!    limit), `-lineinfo`, and embedded: the driver loads the machine code directly, so no PTX
//!    JIT runs (and none can fail on a driver older than the compiler). A kernel that fails to
//!    compile fails the build. Without nvcc the crate still builds (CPU and emulator only) with a
//!    warning; with `LTRAIN_REQUIRE_CUDA=1` a missing nvcc, or one other than the pinned
//!    `PINNED_NVCC` release, fails the build.
//! 2. Always, the same sources are compiled by the host C++ compiler through `kernels/emu/cuda_emu.h`
//!    into a static library: the CUDA emulator that runs the kernels on the CPU.
//! 3. The constants kernels and host share are written once in `src/backend/abi.rs`, which this
//!    script compiles too; it writes them as `$OUT_DIR/ltrain_abi.cuh` (included by
//!    kernels/common.cuh) before either compiler runs.
//! 4. Every `KERNEL void name(...)` signature is parsed (after the C preprocessor, so a macro may
//!    instantiate a kernel per tile shape), and `$OUT_DIR/kernels.rs` gets one typed Rust
//!    launcher per kernel that drives either runtime, so a signature is written once, in the `.cu`.

use std::env;
use std::fmt::Write as _;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::thread;

#[path = "src/backend/abi.rs"]
#[allow(dead_code)]
mod abi;

const KERNEL_DIR: &str = "kernels";
/// The header of the constants kernels and host share, generated into `OUT_DIR` from
/// src/backend/abi.rs.
const ABI_HEADER: &str = "ltrain_abi.cuh";
const DEFAULT_ARCH: &str = "sm_90";
/// The nvcc release scripts/install-nvcc.sh installs: the GPU machine's driver is CUDA 13.0.
const PINNED_NVCC: &str = "13.0";

fn main() {
    println!("cargo:rerun-if-changed={KERNEL_DIR}");
    println!("cargo:rerun-if-changed=src/backend/abi.rs");
    for var in [
        "NVCC",
        "CUDA_HOME",
        "CUDA_PATH",
        "CUDA_ARCH",
        "LTRAIN_REQUIRE_CUDA",
        "LTRAIN_CUDA_PTX",
        "PATH",
    ] {
        println!("cargo:rerun-if-env-changed={var}");
    }
    let out_dir = PathBuf::from(env::var_os("OUT_DIR").expect("cargo sets OUT_DIR"));
    let root = PathBuf::from(env::var_os("CARGO_MANIFEST_DIR").expect("cargo sets it"));
    let kernel_dir = root.join(KERNEL_DIR);

    write_if_changed(&out_dir.join(ABI_HEADER), &abi::cuda_header());
    let sources = kernel_sources(&kernel_dir);
    let modules: Vec<Module> = sources
        .iter()
        .map(|p| parse_module(p, &preprocess(p, &kernel_dir, &out_dir)))
        .collect();

    let fatbins = build_fatbins(&root, &sources, &out_dir);
    build_emulator(&kernel_dir, &modules, &out_dir);
    let bindings = generate_bindings(&modules, &fatbins);
    fs::write(out_dir.join("kernels.rs"), bindings).expect("write kernels.rs");
}

/// `kernels/*.cu`, sorted.
fn kernel_sources(dir: &Path) -> Vec<PathBuf> {
    let mut files: Vec<PathBuf> = fs::read_dir(dir)
        .unwrap_or_else(|e| panic!("cannot read {}: {e}", dir.display()))
        .filter_map(|entry| entry.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|e| e == "cu"))
        .collect();
    files.sort();
    files
}

// ---- signatures ----------------------------------------------------------------------------------

struct Module {
    name: String,
    path: PathBuf,
    kernels: Vec<Kernel>,
}

struct Kernel {
    name: String,
    params: Vec<Param>,
    /// `__launch_bounds__(N)` of its declaration, else `abi::DEFAULT_MAX_THREADS`.
    max_threads: u32,
}

struct Param {
    name: String,
    ty: ParamType,
    optional: bool,
}

#[derive(Clone, Copy)]
enum ParamType {
    ConstPtr(&'static str),
    MutPtr(&'static str),
    Scalar(&'static str),
}

/// A kernel file after the C preprocessor (`LTRAIN_SIGNATURES` keeps `KERNEL` as written), so a
/// signature a macro instantiates for several shapes is parsed once per instance.
fn preprocess(path: &Path, kernel_dir: &Path, out_dir: &Path) -> String {
    let mut cmd = host_build(kernel_dir, out_dir).get_compiler().to_command();
    cmd.args(["-E", "-P", "-x", "c++", "-DLTRAIN_SIGNATURES"])
        .arg(path);
    let output = cmd
        .output()
        .unwrap_or_else(|e| panic!("cannot run the C++ preprocessor: {e}"));
    if !output.status.success() {
        panic!(
            "the C++ preprocessor failed on {}:\n{}",
            path.display(),
            String::from_utf8_lossy(&output.stderr)
        );
    }
    String::from_utf8(output.stdout)
        .unwrap_or_else(|_| panic!("{}: preprocessed source is not UTF-8", path.display()))
}

/// The host C++ compiler as the emulator build and the signature reader both use it.
fn host_build(kernel_dir: &Path, out_dir: &Path) -> cc::Build {
    let mut build = cc::Build::new();
    build
        .cpp(true)
        .std("c++20")
        .include(kernel_dir.join("emu"))
        .include(out_dir);
    build
}

fn parse_module(path: &Path, code: &str) -> Module {
    let name = path.file_stem().unwrap().to_string_lossy().into_owned();
    let mut kernels = Vec::new();
    let bytes = code.as_bytes();
    let mut from = 0;
    while let Some(found) = code[from..].find("KERNEL") {
        let at = from + found;
        from = at + "KERNEL".len();
        let boundary_before = at == 0 || !is_ident(bytes[at - 1]);
        let boundary_after = from < bytes.len() && !is_ident(bytes[from]);
        if !boundary_before || !boundary_after {
            continue;
        }
        let rest = code[from..].trim_start();
        let rest = rest
            .strip_prefix("void")
            .unwrap_or_else(|| panic!("{}: a KERNEL must return void", path.display()))
            .trim_start();
        let (max_threads, rest) = match rest.strip_prefix("__launch_bounds__(") {
            Some(bound) => {
                let close = bound
                    .find(')')
                    .unwrap_or_else(|| panic!("{}: unclosed __launch_bounds__", path.display()));
                let n = bound[..close].trim().parse().unwrap_or_else(|_| {
                    panic!(
                        "{}: __launch_bounds__ takes one literal thread count here",
                        path.display()
                    )
                });
                (n, &bound[close + 1..])
            }
            None => (abi::DEFAULT_MAX_THREADS, rest),
        };
        let open = rest
            .find('(')
            .unwrap_or_else(|| panic!("{}: KERNEL without a parameter list", path.display()));
        let kernel_name = rest[..open].trim().to_string();
        let close = rest[open..].find(')').unwrap_or_else(|| {
            panic!(
                "{}: unclosed parameter list of {kernel_name}",
                path.display()
            )
        }) + open;
        let params = rest[open + 1..close]
            .split(',')
            .map(str::trim)
            .filter(|p| !p.is_empty())
            .map(|p| parse_param(path, &kernel_name, p))
            .collect();
        kernels.push(Kernel {
            name: kernel_name,
            params,
            max_threads,
        });
    }
    Module {
        name,
        path: path.to_path_buf(),
        kernels,
    }
}

fn is_ident(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b == b'_'
}

fn parse_param(path: &Path, kernel: &str, text: &str) -> Param {
    let spaced = text.replace('*', " * ");
    let mut tokens: Vec<&str> = spaced
        .split_whitespace()
        .filter(|t| *t != "__restrict__" && *t != "__restrict")
        .collect();
    let name = tokens
        .pop()
        .unwrap_or_else(|| panic!("{}: {kernel}: empty parameter", path.display()))
        .to_string();
    let ty = tokens.join(" ").replace(" *", "*");
    let ty = match ty.as_str() {
        "const float*" => ParamType::ConstPtr("f32"),
        "float*" => ParamType::MutPtr("f32"),
        "const unsigned*" | "const unsigned int*" => ParamType::ConstPtr("u32"),
        "unsigned*" | "unsigned int*" => ParamType::MutPtr("u32"),
        "const unsigned long long*" => ParamType::ConstPtr("u64"),
        "unsigned long long*" => ParamType::MutPtr("u64"),
        "const double*" => ParamType::ConstPtr("f64"),
        "double*" => ParamType::MutPtr("f64"),
        "float" => ParamType::Scalar("f32"),
        "int" => ParamType::Scalar("i32"),
        "unsigned" | "unsigned int" => ParamType::Scalar("u32"),
        "unsigned long long" => ParamType::Scalar("u64"),
        other => panic!(
            "{}: kernel `{kernel}`, parameter `{name}`: unsupported type `{other}` (see the list in \
             kernels/common.cuh)",
            path.display()
        ),
    };
    let optional = name.ends_with("_opt");
    if optional && matches!(ty, ParamType::Scalar(_)) {
        panic!(
            "{}: kernel `{kernel}`: only pointers may be optional (`{name}`)",
            path.display()
        );
    }
    Param { name, ty, optional }
}

// ---- nvcc ----------------------------------------------------------------------------------------

/// Fatbin file per module (same order as `sources`), or why there is none.
type Fatbins = Result<Vec<PathBuf>, String>;

fn find_nvcc(root: &Path) -> Option<PathBuf> {
    if let Some(nvcc) = env::var_os("NVCC") {
        return Some(PathBuf::from(nvcc));
    }
    for var in ["CUDA_HOME", "CUDA_PATH"] {
        if let Some(home) = env::var_os(var) {
            let candidate = Path::new(&home).join("bin").join("nvcc");
            if candidate.is_file() {
                return Some(candidate);
            }
        }
    }
    if let Some(path) = env::var_os("PATH") {
        for dir in env::split_paths(&path) {
            let candidate = dir.join("nvcc");
            if candidate.is_file() {
                return Some(candidate);
            }
        }
    }
    // Where scripts/install-nvcc.sh puts it.
    let lib = root.join(".venv-nvcc").join("lib");
    let entries = fs::read_dir(lib).ok()?;
    entries
        .filter_map(|e| e.ok())
        .map(|e| e.path().join("site-packages/nvidia/cu13/bin/nvcc"))
        .find(|p| p.is_file())
}

fn build_fatbins(root: &Path, sources: &[PathBuf], out_dir: &Path) -> Fatbins {
    let required = env::var("LTRAIN_REQUIRE_CUDA").is_ok_and(|v| v == "1");
    let Some(nvcc) = find_nvcc(root) else {
        let reason = "nvcc not found (looked at $NVCC, $CUDA_HOME/bin, $CUDA_PATH/bin, PATH and \
                      .venv-nvcc); run scripts/install-nvcc.sh and put the printed directory on PATH"
            .to_string();
        if required {
            panic!("LTRAIN_REQUIRE_CUDA=1 but {reason}");
        }
        println!(
            "cargo:warning=building without CUDA kernels for the GPU: {reason}. The CPU backend and \
             the CUDA emulator work; `--device cuda` will report that the build has no kernels."
        );
        return Err(reason);
    };
    // `90`, `sm_90` or `compute_90`: machine code for sm_90 plus compute_90 PTX.
    let arch = env::var("CUDA_ARCH").unwrap_or_else(|_| DEFAULT_ARCH.to_string());
    let number = arch
        .trim_start_matches("sm_")
        .trim_start_matches("compute_");
    if number.is_empty() || !number.bytes().all(|b| b.is_ascii_alphanumeric()) {
        panic!("CUDA_ARCH={arch}: give a compute capability such as 90, sm_90 or compute_90");
    }
    let version = Command::new(&nvcc).arg("--version").output();
    let release = match version {
        Ok(v) if v.status.success() => String::from_utf8_lossy(&v.stdout)
            .split("release ")
            .nth(1)
            .and_then(|r| r.split(',').next())
            .unwrap_or("unknown")
            .to_string(),
        _ => panic!("{} does not run (`--version` failed)", nvcc.display()),
    };
    if release != PINNED_NVCC {
        let why = format!(
            "nvcc {release} at {}, not the pinned {PINNED_NVCC}: its PTX needs a driver of CUDA \
             {release} or newer (the H200 machine's is 13.0); scripts/install-nvcc.sh installs \
             {PINNED_NVCC}",
            nvcc.display()
        );
        if required {
            panic!("LTRAIN_REQUIRE_CUDA=1 but {why}");
        }
        println!("cargo:warning={why}");
    }
    let with_ptx = env::var("LTRAIN_CUDA_PTX").map_or(true, |v| v != "0");
    let jobs: Vec<_> = sources
        .iter()
        .map(|src| {
            let stem = src.file_stem().unwrap().to_string_lossy().into_owned();
            let fatbin = out_dir.join(format!("{stem}.fatbin"));
            let mut cmd = Command::new(&nvcc);
            cmd.args(["-fatbin", "-lineinfo", "-O3", "-std=c++17"])
                .arg(format!("-gencode=arch=compute_{number},code=sm_{number}"));
            if with_ptx {
                cmd.arg(format!(
                    "-gencode=arch=compute_{number},code=compute_{number}"
                ));
            }
            cmd.arg("-I").arg(out_dir).arg("-o").arg(&fatbin).arg(src);
            (src.clone(), fatbin, cmd)
        })
        .collect();
    let results: Vec<_> = thread::scope(|s| {
        let handles: Vec<_> = jobs
            .into_iter()
            .map(|(src, fatbin, mut cmd)| {
                s.spawn(move || {
                    let output = cmd.output();
                    (src, fatbin, output)
                })
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    let mut files = Vec::new();
    for (src, fatbin, output) in results {
        let output = output.unwrap_or_else(|e| panic!("cannot run {}: {e}", nvcc.display()));
        if !output.status.success() {
            panic!(
                "nvcc failed on {}:\n{}{}",
                src.display(),
                String::from_utf8_lossy(&output.stdout),
                String::from_utf8_lossy(&output.stderr)
            );
        }
        for line in String::from_utf8_lossy(&output.stderr).lines() {
            if !line.trim().is_empty() {
                println!("cargo:warning=nvcc {}: {line}", src.display());
            }
        }
        files.push(fatbin);
    }
    Ok(files)
}

// ---- emulator ------------------------------------------------------------------------------------

fn build_emulator(kernel_dir: &Path, modules: &[Module], out_dir: &Path) {
    let emu_dir = kernel_dir.join("emu");
    let mut units = vec![emu_dir.join("cuda_emu.cpp")];
    for m in modules {
        // Each kernel file plus the host entry points of its kernels, one translation unit per file.
        let mut unit = format!(
            "// @generated by build.rs\n#include \"cuda_emu.h\"\n#include \"{}\"\n",
            m.path.display()
        );
        for k in &m.kernels {
            writeln!(unit, "LTRAIN_EMU_EXPORT({})", k.name).unwrap();
        }
        let path = out_dir.join(format!("emu_{}.cpp", m.name));
        write_if_changed(&path, &unit);
        units.push(path);
    }

    let mut build = host_build(kernel_dir, out_dir);
    build
        .opt_level(2) // the emulator is slow enough; keep it optimised in every profile
        .flag("-pthread")
        // Linked into executables only, so the fast TLS model is safe (threadIdx etc. are TLS).
        .flag("-ftls-model=initial-exec")
        .warnings(true)
        .extra_warnings(true);
    let compiler = build.get_compiler();
    let results: Vec<_> = thread::scope(|s| {
        let handles: Vec<_> = units
            .iter()
            .map(|unit| {
                let object =
                    out_dir.join(format!("{}.o", unit.file_stem().unwrap().to_string_lossy()));
                let mut cmd = compiler.to_command();
                cmd.arg("-c").arg(unit).arg("-o").arg(&object);
                s.spawn(move || (unit.clone(), object, cmd.output()))
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    let mut archive = cc::Build::new();
    archive.cpp(true).cargo_warnings(false);
    for (unit, object, output) in results {
        let output = output.unwrap_or_else(|e| panic!("cannot run the C++ compiler: {e}"));
        let stderr = String::from_utf8_lossy(&output.stderr);
        if !output.status.success() {
            panic!(
                "the C++ compiler failed on {} (emulator build):\n{stderr}",
                unit.display()
            );
        }
        for line in stderr.lines().filter(|l| l.contains("warning")) {
            println!("cargo:warning=emulator build: {line}");
        }
        archive.object(object);
    }
    archive.compile("ltrain_cuda_emu");
    println!("cargo:rustc-link-lib=pthread");
}

fn write_if_changed(path: &Path, text: &str) {
    if fs::read_to_string(path).ok().as_deref() != Some(text) {
        fs::write(path, text).unwrap_or_else(|e| panic!("write {}: {e}", path.display()));
    }
}

// ---- Rust bindings -------------------------------------------------------------------------------

const RUST_KEYWORDS: &[&str] = &[
    "as", "break", "const", "continue", "crate", "else", "enum", "extern", "false", "fn", "for",
    "if", "impl", "in", "let", "loop", "match", "mod", "move", "mut", "pub", "ref", "return",
    "self", "static", "struct", "super", "trait", "true", "type", "unsafe", "use", "where",
    "while", "async", "await", "dyn", "box", "gen",
];

fn rust_ident(name: &str) -> String {
    if RUST_KEYWORDS.contains(&name) {
        format!("r#{name}")
    } else {
        name.to_string()
    }
}

fn generate_bindings(modules: &[Module], fatbins: &Fatbins) -> String {
    let mut s = String::new();
    s.push_str(
        "// @generated by build.rs from kernels/*.cu: one launcher per `KERNEL`. Do not edit.\n\n",
    );
    match fatbins {
        Ok(files) => {
            s.push_str(
                "/// The fatbin (machine code and PTX) of each kernel file (the build had nvcc).\n",
            );
            s.push_str("pub(crate) const FATBINS: Result<&[(&str, &[u8])], &str> = Ok(&[\n");
            for (m, file) in modules.iter().zip(files) {
                writeln!(
                    s,
                    "    ({:?}, include_bytes!({:?})),",
                    m.name,
                    file.display().to_string()
                )
                .unwrap();
            }
            s.push_str("]);\n\n");
        }
        Err(reason) => {
            s.push_str("/// Why the build embedded no GPU code.\n");
            writeln!(
                s,
                "pub(crate) const FATBINS: Result<&[(&str, &[u8])], &str> = Err({reason:?});\n"
            )
            .unwrap();
        }
    }
    s.push_str("/// (kernel file, kernel) for every kernel.\npub(crate) const KERNELS: &[(&str, &str)] = &[\n");
    for m in modules {
        for k in &m.kernels {
            writeln!(s, "    ({:?}, {:?}),", m.name, k.name).unwrap();
        }
    }
    s.push_str("];\n\n");

    s.push_str("mod emulated {\n    extern \"C\" {\n");
    for m in modules {
        for k in &m.kernels {
            writeln!(
                s,
                "        pub(super) fn ltrain_emu_{}(launch: *const super::EmuLaunch, args: *mut *mut \
                 std::ffi::c_void, err: *mut std::ffi::c_char, err_len: usize) -> std::ffi::c_int;",
                k.name
            )
            .unwrap();
        }
    }
    s.push_str("    }\n}\n");

    for m in modules {
        for k in &m.kernels {
            let mut params = String::new();
            let mut args = String::new();
            for p in &k.params {
                let ident = rust_ident(&p.name);
                let (ty, arg) = match (p.ty, p.optional) {
                    (ParamType::ConstPtr(t), false) => {
                        (format!("&DeviceBuffer<{t}>"), format!("{ident}.arg()"))
                    }
                    (ParamType::MutPtr(t), false) => (
                        format!("&mut DeviceBuffer<{t}>"),
                        format!("{ident}.arg_mut()"),
                    ),
                    (ParamType::ConstPtr(t), true) => (
                        format!("Option<&DeviceBuffer<{t}>>"),
                        format!("{ident}.map_or(KernelArg::Null, |b| b.arg())"),
                    ),
                    (ParamType::MutPtr(t), true) => (
                        format!("Option<&mut DeviceBuffer<{t}>>"),
                        format!("{ident}.map_or(KernelArg::Null, |b| b.arg_mut())"),
                    ),
                    (ParamType::Scalar(t), _) => {
                        (t.to_string(), format!("KernelArg::from({ident})"))
                    }
                };
                write!(params, ", {ident}: {ty}").unwrap();
                write!(args, "{arg}, ").unwrap();
            }
            writeln!(
                s,
                "\n/// Launches `{name}` (kernels/{module}.cu).\n#[allow(clippy::too_many_arguments, \
                 dead_code)]\npub(crate) fn {name}(dev: &Device, cfg: LaunchConfig{params}) \
                 -> anyhow::Result<()> {{\n    const KERNEL: KernelRef = KernelRef {{ module: {module:?}, \
                 name: {name:?}, max_threads: {max_threads}, emulated: emulated::ltrain_emu_{name} \
                 }};\n    dev.launch(&KERNEL, &cfg, &[{args}])\n}}",
                name = k.name,
                module = m.name,
                max_threads = k.max_threads,
            )
            .unwrap();
        }
    }
    s
}
