//! Finding the CUDA libraries loaded at run time (cuBLAS, NCCL) under the names and in the folders
//! where they are installed: system packages (`libcublas.so.13`, `libnccl.so.2` on the loader's
//! path), `LD_LIBRARY_PATH`, and the PyTorch wheels' `site-packages/nvidia/*/lib` folders of the active
//! Python environment (`VIRTUAL_ENV`, `CONDA_PREFIX`, else the `python3` on `PATH`).
//!
//! cudarc opens libraries by bare names (`libcublas.so`, `.so.13`, `.so.12`, …), so a library in a
//! wheel's folder is invisible to it, and it never tries `libnccl.so.2`. cuBLAS is therefore opened
//! here by its full path first: the dynamic loader then answers cudarc's `libcublas.so.13` with that
//! same library (a loaded library matches its soname). NCCL is called through [`super::nccl`]'s own
//! bindings of the library found here.

use std::ffi::{c_int, OsStr};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;

use libloading::Library;

/// A library opened by its full path and kept for the life of the process.
pub(crate) struct Loaded {
    pub path: PathBuf,
    pub library: Library,
}

/// Where the libraries are looked for, in order (the environment as read once per process).
#[derive(Clone, Debug, Default)]
pub struct SearchPath {
    pub dirs: Vec<PathBuf>,
}

impl SearchPath {
    /// `LD_LIBRARY_PATH`'s folders, then the `nvidia/*/lib` folders of the Python environments'
    /// site-packages: `VIRTUAL_ENV`, `CONDA_PREFIX`, then those `python3` reports. Read once a
    /// process (asking `python3` starts a process).
    pub fn from_env() -> &'static Self {
        static SEARCH: OnceLock<SearchPath> = OnceLock::new();
        SEARCH.get_or_init(Self::read_env)
    }

    fn read_env() -> Self {
        let var = |name: &str| std::env::var_os(name).filter(|v| !v.is_empty());
        let mut site_packages = Vec::new();
        for prefix in [var("VIRTUAL_ENV"), var("CONDA_PREFIX")]
            .into_iter()
            .flatten()
        {
            site_packages.extend(prefix_site_packages(Path::new(&prefix)));
        }
        site_packages.extend(python_site_packages());
        Self::new(var("LD_LIBRARY_PATH").as_deref(), &site_packages)
    }

    /// The search path for `ld_library_path` (colon-separated) and these site-packages folders.
    pub fn new(ld_library_path: Option<&OsStr>, site_packages: &[PathBuf]) -> Self {
        let mut dirs: Vec<PathBuf> = ld_library_path
            .map(|p| {
                std::env::split_paths(p)
                    .filter(|d| !d.as_os_str().is_empty())
                    .collect()
            })
            .unwrap_or_default();
        for sp in site_packages {
            // The wheels' layout: nvidia/cu13/lib (CUDA 13), nvidia/cublas/lib, nvidia/nccl/lib (12).
            let mut libs: Vec<PathBuf> = std::fs::read_dir(sp.join("nvidia"))
                .into_iter()
                .flatten()
                .flatten()
                .map(|e| e.path().join("lib"))
                .filter(|d| d.is_dir())
                .collect();
            libs.sort();
            dirs.extend(libs);
        }
        dirs.dedup();
        Self { dirs }
    }

    /// The first of `names` in the first folder that has one, else None.
    pub fn find(&self, names: &[&str]) -> Option<PathBuf> {
        self.dirs
            .iter()
            .flat_map(|d| names.iter().map(move |n| d.join(n)))
            .find(|p| p.is_file())
    }
}

/// `PREFIX/lib/python3.*/site-packages` (a venv's or conda environment's).
fn prefix_site_packages(prefix: &Path) -> Vec<PathBuf> {
    let mut found: Vec<PathBuf> = std::fs::read_dir(prefix.join("lib"))
        .into_iter()
        .flatten()
        .flatten()
        .filter(|e| e.file_name().to_string_lossy().starts_with("python3"))
        .map(|e| e.path().join("site-packages"))
        .filter(|d| d.is_dir())
        .collect();
    found.sort();
    found
}

/// The site-packages folders of the `python3` on `PATH` (none without one).
fn python_site_packages() -> Vec<PathBuf> {
    let script =
        "import site\nfor p in site.getsitepackages() + [site.getusersitepackages()]: print(p)";
    Command::new("python3")
        .args(["-c", script])
        .output()
        .ok()
        .filter(|o| o.status.success())
        .map(|o| {
            String::from_utf8_lossy(&o.stdout)
                .lines()
                .map(PathBuf::from)
                .collect()
        })
        .unwrap_or_default()
}

/// The names each library is installed under, most wanted first: CUDA 13's, then 12's.
pub const CUBLAS_NAMES: &[&str] = &["libcublas.so.13", "libcublas.so.12", "libcublas.so"];
pub const NCCL_NAMES: &[&str] = &["libnccl.so.2", "libnccl.so"];

/// Opens the first of `names` found on `search`, else the first the dynamic loader finds by itself
/// (its cache and default folders). The error lists where it looked.
pub(crate) fn open(names: &[&str], search: &SearchPath) -> Result<Loaded, String> {
    if let Some(path) = search.find(names) {
        // SAFETY: a CUDA library; its initialisers only set up its own state.
        return match unsafe { Library::new(&path) } {
            Ok(library) => Ok(Loaded { path, library }),
            Err(e) => Err(format!("{} could not be loaded: {e}", path.display())),
        };
    }
    for name in names {
        // SAFETY: as above.
        if let Ok(library) = unsafe { Library::new(*name) } {
            let path = loaded_path(name).unwrap_or_else(|| PathBuf::from(name));
            return Ok(Loaded { path, library });
        }
    }
    let looked: Vec<String> = search
        .dirs
        .iter()
        .map(|d| d.display().to_string())
        .collect();
    Err(format!(
        "no {} in LD_LIBRARY_PATH, the Python environment's site-packages/nvidia/*/lib ({}) or \
         the dynamic loader's folders",
        names.join(", "),
        if looked.is_empty() {
            "none".to_string()
        } else {
            looked.join(", ")
        }
    ))
}

/// Where the dynamic loader found a library this process has mapped, by its file name's start.
pub(crate) fn loaded_path(name: &str) -> Option<PathBuf> {
    std::fs::read_to_string("/proc/self/maps")
        .ok()?
        .lines()
        .filter_map(|l| l.split_whitespace().nth(5))
        .find(|p| {
            Path::new(p)
                .file_name()
                .is_some_and(|f| f.to_string_lossy().starts_with(name))
        })
        .map(PathBuf::from)
}

/// cuBLAS, opened once per process ([`open`] on [`SearchPath::from_env`]); the error says where it
/// was looked for and how to get it.
pub(crate) fn cublas() -> Result<&'static Loaded, String> {
    static CUBLAS: OnceLock<Result<Loaded, String>> = OnceLock::new();
    CUBLAS
        .get_or_init(|| open(CUBLAS_NAMES, SearchPath::from_env()))
        .as_ref()
        .map_err(|e| {
            format!(
                "{e}; install CUDA 13's cuBLAS (e.g. `pip install nvidia-cublas` in the active \
                 environment) or add its lib folder to LD_LIBRARY_PATH"
            )
        })
}

/// cuBLAS's version as `major.minor.patch`, asked without a handle (`cublasGetProperty`).
pub(crate) fn cublas_version(lib: &Loaded) -> String {
    type GetProperty = unsafe extern "C" fn(c_int, *mut c_int) -> c_int;
    // SAFETY: the symbol has this signature in every cuBLAS since 9.0.
    let Ok(get) = (unsafe { lib.library.get::<GetProperty>(b"cublasGetProperty\0") }) else {
        return "unknown".into();
    };
    // libraryPropertyType: MAJOR_VERSION, MINOR_VERSION, PATCH_LEVEL.
    let mut parts = [0; 3];
    for (kind, part) in parts.iter_mut().enumerate() {
        // SAFETY: writes one int.
        if unsafe { get(kind as c_int, part) } != 0 {
            return "unknown".into();
        }
    }
    format!("{}.{}.{}", parts[0], parts[1], parts[2])
}

/// NCCL's `ncclGetVersion` code (e.g. 22703) as `2.27.3`.
pub fn nccl_version_text(code: c_int) -> String {
    // Since NCCL 2.9: major * 10000 + minor * 100 + patch; before: major * 1000 + minor * 100 + patch.
    let (major, rest) = if code >= 10000 {
        (code / 10000, code % 10000)
    } else {
        (code / 1000, code % 1000)
    };
    format!("{major}.{}.{}", rest / 100, rest % 100)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nccl_version_codes_of_both_schemes() {
        assert_eq!(nccl_version_text(22703), "2.27.3");
        assert_eq!(nccl_version_text(2804), "2.8.4");
    }

    #[test]
    fn ld_library_path_comes_before_the_wheels_and_versioned_names_first() {
        let root = tempfile::tempdir().unwrap();
        let ld = root.path().join("ld");
        let sp = root.path().join("site-packages");
        let wheel = sp.join("nvidia/cu13/lib");
        for d in [&ld, &wheel] {
            std::fs::create_dir_all(d).unwrap();
        }
        std::fs::write(wheel.join("libnccl.so.2"), b"").unwrap();
        std::fs::write(wheel.join("libcublas.so.13"), b"").unwrap();
        std::fs::write(ld.join("libcublas.so.12"), b"").unwrap();
        let search = SearchPath::new(Some(ld.as_os_str()), std::slice::from_ref(&sp));
        assert_eq!(search.dirs, vec![ld.clone(), wheel.clone()]);
        assert_eq!(search.find(NCCL_NAMES), Some(wheel.join("libnccl.so.2")));
        // A folder's order wins over a name's: LD_LIBRARY_PATH is the user's explicit choice.
        assert_eq!(search.find(CUBLAS_NAMES), Some(ld.join("libcublas.so.12")));
        assert_eq!(
            SearchPath::new(None, &[sp]).find(CUBLAS_NAMES),
            Some(wheel.join("libcublas.so.13"))
        );
    }

    #[test]
    fn a_library_found_nowhere_is_an_error_naming_the_names_and_folders() {
        let root = tempfile::tempdir().unwrap();
        let search = SearchPath::new(Some(root.path().as_os_str()), &[]);
        let err = open(&["libltrain-no-such-lib.so.2"], &search)
            .err()
            .unwrap();
        assert!(err.contains("libltrain-no-such-lib.so.2"), "{err}");
        assert!(err.contains(&root.path().display().to_string()), "{err}");
    }
}
