//! ONNX Runtime, loaded at run time from the library the model cache holds.
//!
//! `ort` is built with `load-dynamic`: nothing is downloaded at build time and
//! the CPU or CUDA build of the runtime is chosen by a path. ort hangs forever
//! when that library is missing or too old (its error path re-enters the
//! loader), so we open the library ourselves first, ask it for its version,
//! and refuse with a clear message before ort ever sees it.

use std::ffi::{c_char, c_void, CStr};
use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use ort::environment::Environment;
use ort::session::builder::{GraphOptimizationLevel, SessionBuilder};
use ort::session::Session;
use ort::AsPointer;

use crate::engines::device::Device;
use crate::error::{Error, Result};

/// ort is compiled against API level 24, i.e. ONNX Runtime 1.24 or newer.
pub(crate) const MIN_VERSION: (u32, u32) = (1, 24);

#[repr(C)]
struct OrtApiBase {
    get_api: unsafe extern "C" fn(u32) -> *const c_void,
    get_version_string: unsafe extern "C" fn() -> *const c_char,
}

static ENV: OnceLock<std::result::Result<(PathBuf, Environment), String>> = OnceLock::new();

/// Reads the version of the ONNX Runtime library at `path` without
/// initialising ort. Also the check behind `callbox models check`.
pub(crate) fn library_version(path: &Path) -> Result<String> {
    if !path.is_file() {
        return Err(Error::missing("ONNX Runtime library", path));
    }
    // SAFETY: loading a shared library runs its constructors; this is the
    // ONNX Runtime build named by the manifest, the same one ort would load.
    let lib = unsafe { libloading::Library::new(path) }
        .map_err(|e| Error::corrupt("ONNX Runtime library", path, e))?;
    let version = unsafe {
        let get_base: libloading::Symbol<unsafe extern "C" fn() -> *const OrtApiBase> = lib
            .get(b"OrtGetApiBase\0")
            .map_err(|e| Error::corrupt("ONNX Runtime library", path, e))?;
        let base = get_base();
        if base.is_null() {
            return Err(Error::corrupt(
                "ONNX Runtime library",
                path,
                "OrtGetApiBase returned null",
            ));
        }
        let v = ((*base).get_version_string)();
        if v.is_null() {
            return Err(Error::corrupt(
                "ONNX Runtime library",
                path,
                "no version string",
            ));
        }
        CStr::from_ptr(v).to_string_lossy().into_owned()
    };
    // The library stays loaded for the life of the process; ort loads it again
    // by path and gets the same handle.
    std::mem::forget(lib);
    Ok(version)
}

fn parse_version(v: &str) -> Option<(u32, u32)> {
    let mut it = v.split('.');
    Some((it.next()?.parse().ok()?, it.next()?.parse().ok()?))
}

/// Initialises ort once per process from `path`; later calls with another
/// path are refused rather than silently ignored.
pub(crate) fn environment(path: &Path) -> Result<&'static Environment> {
    let init = ENV.get_or_init(|| {
        let version = library_version(path).map_err(|e| e.to_string())?;
        match parse_version(&version) {
            Some(v) if v >= MIN_VERSION => {}
            _ => {
                return Err(Error::corrupt(
                    "ONNX Runtime library",
                    path,
                    format!(
                        "version {version} is older than {}.{} which callbox needs",
                        MIN_VERSION.0, MIN_VERSION.1
                    ),
                )
                .to_string())
            }
        }
        let env = ort::init_from(path)
            .map_err(|e| format!("loading ONNX Runtime from {}: {e}", path.display()))?
            .with_name("callbox")
            .build()
            .map_err(|e| format!("creating the ONNX Runtime environment: {e}"))?;
        tracing::info!(library = %path.display(), %version, "ONNX Runtime loaded");
        Ok((path.to_path_buf(), env))
    });
    match init {
        Ok((p, env)) if p == path => Ok(env),
        Ok((p, _)) => Err(Error::Config(format!(
            "ONNX Runtime is already loaded from {}; cannot switch to {}",
            p.display(),
            path.display()
        ))),
        Err(e) => Err(Error::engine("onnxruntime", e)),
    }
}

/// How the shapes of a model's tensors change from one run to the next.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Shapes {
    /// The same every run (a VAD window, a fixed-length audio clip): ONNX
    /// Runtime's memory arena and memory patterns pay off.
    Fixed,
    /// They follow the input (a sentence to speak). The arena keeps the
    /// largest run's memory for the life of the process and fragments
    /// across sizes: Piper alone went from 190 MiB to over 1 GiB in ten
    /// sentences of one to eight clauses. Without it every run's buffers
    /// are freed when it ends, and what the allocator keeps of them goes
    /// back to the system once no call is in progress.
    Varying,
}

/// How much ONNX Runtime rewrites a model's graph before running it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Optimisation {
    /// Every rewrite (level 3): the fastest, and what calls run. An int8
    /// model's quantize/dequantize pairs are fused into integer kernels that
    /// ONNX Runtime picks by the CPU's instruction set (AVX2, AVX-512,
    /// VNNI, AMX), so the scores move a little from one CPU to another.
    Full,
    /// None: every node runs as the graph has it, as the reference
    /// implementations ran it when the golden values were taken. Slower;
    /// for checks, not for calls.
    Off,
}

/// Opens an ONNX model with `threads` intra-op threads, on `device`: a GPU
/// through ONNX Runtime's CUDA provider, which needs the runtime's GPU build
/// (the `gpu` model set's `onnxruntime-gpu`). A provider that cannot start
/// is an error rather than a quiet fallback to the CPU.
pub(crate) fn session(
    ort_lib: &Path,
    model: &Path,
    what: &str,
    threads: usize,
    shapes: Shapes,
    device: Device,
) -> Result<Session> {
    session_with(
        ort_lib,
        model,
        what,
        threads,
        shapes,
        device,
        Optimisation::Full,
    )
}

/// [`session`] with the graph optimisation chosen.
pub(crate) fn session_with(
    ort_lib: &Path,
    model: &Path,
    what: &str,
    threads: usize,
    shapes: Shapes,
    device: Device,
    optimisation: Optimisation,
) -> Result<Session> {
    if !model.is_file() {
        return Err(Error::missing(what, model));
    }
    let env = environment(ort_lib)?;
    let corrupt = |e: &dyn std::fmt::Display| Error::corrupt(what, model, e.to_string());
    let mut builder = Session::builder(env).map_err(|e| corrupt(&e))?;
    builder = on_device(builder, device).map_err(|e| {
        Error::engine(
            "onnxruntime",
            format!(
                "{what} on {device}: {e} (is {} ONNX Runtime's GPU build?)",
                ort_lib.display()
            ),
        )
    })?;
    if shapes == Shapes::Varying {
        // ort has no wrapper for this option; the C API call is the same
        // one every language binding makes.
        // SAFETY: the builder's pointer is a live OrtSessionOptions, and the
        // status returned is consumed by `result_from_status`.
        unsafe {
            ort::Error::result_from_status((ort::api().DisableCpuMemArena)(builder.ptr_mut()))
        }
        .map_err(|e| corrupt(&e))?;
        builder = builder
            .with_memory_pattern(false)
            .map_err(|e| corrupt(&e))?;
    }
    let level = match optimisation {
        Optimisation::Full => GraphOptimizationLevel::Level3,
        Optimisation::Off => GraphOptimizationLevel::Disable,
    };
    builder
        .with_optimization_level(level)
        .map_err(|e| corrupt(&e))?
        .with_intra_threads(threads)
        .map_err(|e| corrupt(&e))?
        // Spinning workers would take the cores from the LLM and the other
        // calls' engines between inferences.
        .with_intra_op_spinning(false)
        .map_err(|e| corrupt(&e))?
        .commit_from_file(model)
        .map_err(|e| corrupt(&e))
}

/// Registers the execution provider for `device`. Asking a CPU-only build
/// for a GPU is refused with the reason.
fn on_device(
    builder: SessionBuilder,
    device: Device,
) -> std::result::Result<SessionBuilder, String> {
    let Device::Cuda(i) = device else {
        return Ok(builder);
    };
    #[cfg(feature = "cuda")]
    {
        builder
            .with_execution_providers([ort::ep::CUDA::default()
                .with_device_id(i as i32)
                .build()
                .error_on_failure()])
            .map_err(|e| e.to_string())
    }
    #[cfg(not(feature = "cuda"))]
    {
        let _ = (builder, i);
        Err("this callbox was built without the cuda feature".into())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn versions_parse() {
        assert_eq!(parse_version("1.28.0"), Some((1, 28)));
        assert!(parse_version("1.28.0").unwrap() >= MIN_VERSION);
        assert!(parse_version("1.17.3").unwrap() < MIN_VERSION);
        assert_eq!(parse_version("garbage"), None);
    }

    #[test]
    fn a_missing_library_is_reported_not_hung() {
        let e = library_version(Path::new("/nonexistent/libonnxruntime.so")).unwrap_err();
        let msg = e.to_string();
        assert!(
            msg.contains("/nonexistent/libonnxruntime.so") && msg.contains("callbox models fetch"),
            "{msg}"
        );
    }

    #[test]
    fn a_file_that_is_not_a_library_is_refused() {
        let dir = std::env::temp_dir().join(format!("callbox-ort-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let fake = dir.join("libonnxruntime.so");
        std::fs::write(&fake, b"not an ELF file").unwrap();
        let msg = library_version(&fake).unwrap_err().to_string();
        assert!(msg.contains("unusable") && msg.contains("--force"), "{msg}");
    }
}
