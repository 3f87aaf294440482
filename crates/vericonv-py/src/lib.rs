//! The native half of the `vericonv` Python package: a model loaded through tract with every
//! convolution private, run on in-process or remote clouds, with NumPy arrays in and out. The
//! Python half (`python/vericonv/__init__.py`) checks and converts arguments and holds the
//! documented API; everything that computes runs here, with the GIL released.

use std::path::PathBuf;
use std::sync::Arc;

use numpy::{PyArrayDyn, PyArrayMethods, PyReadonlyArrayDyn, PyUntypedArrayMethods};
use pyo3::create_exception;
use pyo3::exceptions::PyException;
use pyo3::prelude::*;
use pyo3::types::PyDict;
use vericonv::Cheater;
use vericonv::Mode;
use vericonv::Privacy;
use vericonv::{CloudBackend, CpuBackend};
use vericonv::{os_rng, seeded_rng};
use vericonv_model::QuantConfig;
use vericonv_model::{ConvExecutor, Plan, PrivateConvs, Reference, TractModel};
use vericonv_model::{InputSpec, PrivateConfig};

create_exception!(_vericonv, Error, PyException, "The base class of every vericonv error.");
create_exception!(
    _vericonv,
    VerificationError,
    Error,
    "A cloud's answer failed verification (it is never decrypted); `cheater` names the cloud."
);
create_exception!(_vericonv, ModelError, Error, "The model cannot be loaded or run.");
create_exception!(_vericonv, RemoteError, Error, "A remote cloud could not be reached or refused the call.");
create_exception!(_vericonv, ConfigError, Error, "Settings that do not fit together (mode, clouds, backend).");

/// The Python exception for an error of the model crate: the scheme's errors as
/// [`scheme_err`] maps them, the rest a `ModelError` (an internal error the base class).
fn py_err(e: vericonv_model::ModelError) -> PyErr {
    use vericonv_model::ModelError as M;
    match e {
        M::Scheme(e) => scheme_err(e),
        M::Internal(_) => Error::new_err(e.to_string()),
        _ => ModelError::new_err(e.to_string()),
    }
}

/// The Python exception for an error of the scheme.
fn scheme_err(e: vericonv::Error) -> PyErr {
    use vericonv::Error as E;
    let message = e.to_string();
    match e {
        E::VerificationFailed { cheater, .. } => Python::attach(|py| {
            let err = VerificationError::new_err(message);
            let name = match cheater {
                Cheater::TheCloud => "the cloud",
                Cheater::CloudA => "cloud A",
                Cheater::CloudB => "cloud B",
                Cheater::BothClouds => "both clouds",
                Cheater::Unidentified => "unidentified",
            };
            // Setting an attribute on a fresh exception object cannot fail in practice; if it
            // did, the message still names the cheater.
            let _ = err.value(py).setattr("cheater", name);
            err
        }),
        E::MalformedAnswer { .. } | E::CheatingCloud { .. } => VerificationError::new_err(message),
        E::Backend { .. } if e.backend_error::<vericonv_remote::RemoteError>().is_some() => {
            RemoteError::new_err(message)
        }
        E::Backend { .. } if is_setup_error(&e) => ConfigError::new_err(message),
        E::ExactnessBound { .. } => ModelError::new_err(message),
        E::CloudCount { .. }
        | E::SameCloudTwice(_)
        | E::InvalidRank
        | E::InvalidRounds
        | E::WrongPrivacyMode { .. } => ConfigError::new_err(message),
        _ => Error::new_err(message),
    }
}

/// A GPU that is missing or lacks a feature: the settings ask for what this machine has not.
#[cfg(feature = "gpu")]
fn is_setup_error(e: &vericonv::Error) -> bool {
    use vericonv_gpu::GpuError;
    matches!(e.backend_error::<GpuError>(), Some(GpuError::NoAdapter(_) | GpuError::UnsupportedFeature(_)))
}

#[cfg(not(feature = "gpu"))]
fn is_setup_error(_: &vericonv::Error) -> bool {
    false
}

/// A model on tract: its graph, its private layers and its input normalisation.
#[pyclass(frozen, module = "vericonv._vericonv")]
struct NativeModel {
    model: Arc<TractModel>,
    /// The input's shape and normalisation.
    input: InputSpec,
    /// The float graph, planned on first use.
    float: std::sync::OnceLock<Plan>,
}

#[pymethods]
impl NativeModel {
    /// Opens an ONNX file, or a native model (`.json` with its `.safetensors`; its recorded
    /// normalisation is the default), quantized to `weight_bits` and `act_bits` (2 to 16).
    /// `input_shape` fixes dynamic dimensions; the batch stays free. `outsource_linear` makes
    /// the linear layers private too.
    #[new]
    #[pyo3(signature = (path, input_shape=None, mean=None, std=None, weight_bits=8, act_bits=8, outsource_linear=false))]
    #[allow(clippy::too_many_arguments)]
    fn new(
        py: Python<'_>,
        path: PathBuf,
        input_shape: Option<Vec<usize>>,
        mean: Option<Vec<f32>>,
        std: Option<Vec<f32>>,
        weight_bits: u32,
        act_bits: u32,
        outsource_linear: bool,
    ) -> PyResult<Self> {
        for (what, bits) in [("weight_bits", weight_bits), ("act_bits", act_bits)] {
            if !(2..=16).contains(&bits) {
                return Err(ConfigError::new_err(format!("{what} must be 2 to 16, got {bits}")));
            }
        }
        let quant = QuantConfig { weight_bits, act_bits };
        let native = path.extension().is_some_and(|e| e.eq_ignore_ascii_case("json"));
        let opened = py.detach(|| -> vericonv_model::Result<(TractModel, Option<Normalisation>)> {
            if !native {
                return Ok((TractModel::open(&path, input_shape.as_deref(), &quant)?, None));
            }
            // tract runs the native model's ONNX export, written to a private temporary file.
            let model = vericonv_model::Model::load(&path)?;
            let dir = std::env::temp_dir().join(format!("vericonv-py-{}-{}", std::process::id(), model.name()));
            std::fs::create_dir_all(&dir).map_err(|e| vericonv_model::ModelError::io(&dir, e))?;
            let onnx = dir.join(format!("{}.onnx", model.name()));
            let opened = vericonv_model::onnx::import::write_model(&model, &onnx)
                .and_then(|()| TractModel::open(&onnx, input_shape.as_deref(), &quant));
            // Best effort: a leftover temporary file holds only the model the caller gave.
            let _ = std::fs::remove_dir_all(&dir);
            Ok((opened?, Some((model.input().mean.clone(), model.input().std.clone()))))
        });
        let (mut model, recorded) = opened.map_err(py_err)?;
        model.outsource_linear(outsource_linear);
        let (rec_mean, rec_std) = recorded.unwrap_or_default();
        let (mean, std) = (mean.unwrap_or(rec_mean), std.unwrap_or(rec_std));
        let input = InputSpec::of_shape(model.image_shape(), &mean, &std)
            .map_err(|e| ConfigError::new_err(format!("mean and std: {e}")))?;
        Ok(Self { model: Arc::new(model), input, float: std::sync::OnceLock::new() })
    }

    /// The float model's outputs of a batch, on the client (no cloud, no quantization).
    fn float<'py>(&self, py: Python<'py>, x: PyReadonlyArrayDyn<'py, f32>) -> PyResult<Bound<'py, PyArrayDyn<f32>>> {
        let plan = match self.float.get() {
            Some(plan) => plan,
            None => {
                let plan = py.detach(|| self.model.plan(None)).map_err(py_err)?;
                self.float.get_or_init(|| plan)
            }
        };
        run_plan(py, &self.model, plan, &self.input, x)
    }

    /// The model's name (its file stem).
    #[getter]
    fn name(&self) -> String {
        self.model.name().to_string()
    }

    /// The shape of one input, without the batch dimension.
    #[getter]
    fn input_shape(&self) -> Vec<usize> {
        self.model.image_shape().to_vec()
    }

    /// The convolutions that run privately.
    #[getter]
    fn private_layers(&self) -> usize {
        self.model.private_layers().count()
    }

    /// Convolutions that stay on the client, with the reason.
    #[getter]
    fn client_layers(&self) -> Vec<(String, String)> {
        self.model.skipped().to_vec()
    }

    /// The private model: its clouds, mode and verification settings.
    #[pyo3(signature = (privacy, clouds, backend, mode, rounds, seed, token_file, tls_ca, insecure_plaintext, rank))]
    #[allow(clippy::too_many_arguments)]
    fn private(
        &self,
        py: Python<'_>,
        privacy: &str,
        clouds: Vec<String>,
        backend: &str,
        mode: &str,
        rounds: usize,
        seed: Option<u64>,
        token_file: Option<PathBuf>,
        tls_ca: Option<PathBuf>,
        insecure_plaintext: bool,
        rank: usize,
    ) -> PyResult<NativePrivate> {
        let privacy = match privacy {
            "pad" => Privacy::Pad,
            "two-server" => Privacy::TwoServer,
            "split-model" => Privacy::SplitModel,
            "lowrank" if rank >= 1 => Privacy::LowRank { rank },
            "lowrank" => return Err(scheme_err(vericonv::Error::InvalidRank)),
            other => {
                return Err(ConfigError::new_err(format!(
                    "unknown privacy mode {other:?}: pad, two-server, split-model or lowrank"
                )));
            }
        };
        let mode = match mode {
            "fast" => Mode::Fast,
            "strict" => Mode::Strict,
            other => return Err(ConfigError::new_err(format!("unknown verification mode {other:?}: fast or strict"))),
        };
        if rounds == 0 {
            return Err(scheme_err(vericonv::Error::InvalidRounds));
        }
        if matches!(privacy, Privacy::LowRank { .. }) {
            let warnings = py.import("warnings")?;
            warnings.call_method1("warn", (vericonv::LOWRANK_WARNING,))?;
        }
        let gpu = match backend {
            "cpu" => false,
            "gpu" if cfg!(feature = "gpu") => true,
            "gpu" => return Err(ConfigError::new_err("this build has no GPU backend")),
            other => return Err(ConfigError::new_err(format!("unknown backend {other:?}: cpu or gpu"))),
        };
        let built = py.detach(|| -> vericonv::Result<Remote> {
            if clouds.is_empty() {
                let one = || local_backend(gpu);
                let b = if privacy.clouds() == 2 { Some(one()?) } else { None };
                Ok(Remote { clouds: (one()?, b), name: format!("in-process {backend}"), plaintext: Vec::new() })
            } else {
                remote_clouds(&clouds, privacy, token_file.as_deref(), tls_ca.as_deref(), insecure_plaintext)
            }
        });
        let Remote { clouds: owned, name: where_, plaintext } = built.map_err(scheme_err)?;
        for url in plaintext {
            py.import("warnings")?.call_method1(
                "warn",
                (format!(
                    "insecure_plaintext: {url} is not loopback; masked tensors, shares and the token cross the network unencrypted"
                ),),
            )?;
        }
        let rng = match seed {
            Some(s) => seeded_rng(s),
            None => os_rng(),
        };
        let cfg = PrivateConfig { privacy, mode, rounds, ..PrivateConfig::default() };
        let exec = Arc::new(PrivateConvs::new(owned, cfg, rng).map_err(py_err)?);
        let plans = py.detach(|| -> vericonv_model::Result<(Plan, Plan)> {
            Ok((
                self.model.plan(Some(exec.clone() as Arc<dyn ConvExecutor>))?,
                self.model.plan(Some(Arc::new(Reference) as Arc<dyn ConvExecutor>))?,
            ))
        });
        let (plan, reference) = plans.map_err(py_err)?;
        Ok(NativePrivate {
            model: self.model.clone(),
            input: self.input.clone(),
            plan,
            reference,
            exec,
            description: format!("{} on {where_}", privacy.label()),
        })
    }
}

/// An input normalisation: per-channel means and standard deviations.
type Normalisation = (Vec<f32>, Vec<f32>);

/// One or two clouds, owned.
type OwnedPair = (Arc<dyn CloudBackend>, Option<Arc<dyn CloudBackend>>);

/// A cloud in this process: the GPU backend, or else the CPU one.
fn local_backend(gpu: bool) -> vericonv::Result<Arc<dyn CloudBackend>> {
    #[cfg(feature = "gpu")]
    if gpu {
        return Ok(Arc::new(vericonv_gpu::GpuBackend::new(&vericonv_gpu::GpuOptions::default())?));
    }
    #[cfg(not(feature = "gpu"))]
    let _ = gpu;
    Ok(Arc::new(CpuBackend::new()))
}

/// Remote clouds: one URL per cloud (`grpcs://` to any host but loopback).
fn remote_clouds(
    urls: &[String],
    privacy: Privacy,
    token_file: Option<&std::path::Path>,
    tls_ca: Option<&std::path::Path>,
    insecure_plaintext: bool,
) -> vericonv::Result<Remote> {
    if urls.len() != privacy.clouds() {
        return Err(vericonv::Error::CloudCount { mode: privacy.name(), needed: privacy.clouds(), got: urls.len() });
    }
    if let [a, b] = urls
        && let Some(url) = vericonv_remote::same_cloud(std::slice::from_ref(a), std::slice::from_ref(b))?
    {
        return Err(vericonv::Error::SameCloudTwice(url));
    }
    let opts = vericonv_remote::RemoteOptions::from_files(token_file, tls_ca, insecure_plaintext)?;
    let mut plaintext = Vec::new();
    let mut connect = |url: &String| -> vericonv::Result<Arc<dyn CloudBackend>> {
        let remote = vericonv_remote::RemoteBackend::connect(std::slice::from_ref(url), opts.clone())?;
        plaintext.extend(remote.plaintext_remote_endpoints().map(str::to_string));
        Ok(Arc::new(remote))
    };
    let a = connect(&urls[0])?;
    let b = urls.get(1).map(&mut connect).transpose()?;
    Ok(Remote { clouds: (a, b), name: urls.join(" + "), plaintext })
}

/// Remote clouds, their names, and the endpoints reached in plaintext although not loopback
/// (only with `insecure_plaintext`; every run warns of them).
struct Remote {
    clouds: OwnedPair,
    name: String,
    plaintext: Vec<String>,
}

/// The most memory [`NativePrivate::prepare`] fills with pads at once.
const MAX_PREPARED_BYTES: usize = 8 << 30;

/// A private model: its plan on the clouds and the quantized plaintext twin.
#[pyclass(frozen, module = "vericonv._vericonv")]
struct NativePrivate {
    model: Arc<TractModel>,
    input: InputSpec,
    plan: Plan,
    reference: Plan,
    exec: Arc<PrivateConvs>,
    description: String,
}

/// Runs `x` (a C-contiguous float32 array of `N × input_shape`, checked by the Python side
/// too) through `plan` after normalising it, with the GIL released; the input is copied first.
fn run_plan<'py>(
    py: Python<'py>,
    model: &TractModel,
    plan: &Plan,
    input: &InputSpec,
    x: PyReadonlyArrayDyn<'py, f32>,
) -> PyResult<Bound<'py, PyArrayDyn<f32>>> {
    let shape = model.image_shape();
    let dims = x.shape().to_vec();
    if dims.len() != shape.len() + 1 || dims[1..] != *shape || dims[0] == 0 {
        return Err(ConfigError::new_err(format!("an array of shape {dims:?}; the model takes N × {shape:?}")));
    }
    let mut images = x.as_slice().map_err(|_| ConfigError::new_err("the array must be C-contiguous"))?.to_vec();
    let (logits, out_shape) = py
        .detach(|| {
            input.normalize(&mut images);
            // A panic inside the graph engine becomes an error, never a Python panic.
            std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| plan.run(&images)))
                .unwrap_or_else(|_| Err(vericonv_model::ModelError::Internal("the graph engine panicked".into())))
        })
        .map_err(py_err)?;
    numpy::PyArray1::from_vec(py, logits).reshape(out_shape)
}

#[pymethods]
impl NativePrivate {
    /// Private, verified logits of a batch.
    fn run<'py>(&self, py: Python<'py>, x: PyReadonlyArrayDyn<'py, f32>) -> PyResult<Bound<'py, PyArrayDyn<f32>>> {
        run_plan(py, &self.model, &self.plan, &self.input, x)
    }

    /// The quantized plaintext model's logits of a batch, on the client.
    fn quantized<'py>(
        &self,
        py: Python<'py>,
        x: PyReadonlyArrayDyn<'py, f32>,
    ) -> PyResult<Bound<'py, PyArrayDyn<f32>>> {
        run_plan(py, &self.model, &self.reference, &self.input, x)
    }

    /// Draws ahead, on the client's own CPU, the pads of the next `images` images (modes pad and
    /// split-model; the other modes only make their sessions), with the GIL released, so that
    /// the calls that use them do only online work. Returns the seconds it took. Refused beyond
    /// [`MAX_PREPARED_BYTES`] of pads.
    fn prepare(&self, py: Python<'_>, images: usize) -> PyResult<f64> {
        // R and U of every private layer, 4 bytes an element.
        let per_image = self.model.private_layers().try_fold(0usize, |n, l| {
            let g = &l.quant.geom;
            g.image_len()
                .checked_add(g.output_image_len())
                .and_then(|e| e.checked_mul(4))
                .and_then(|b| n.checked_add(b))
        });
        match per_image.and_then(|b| b.checked_mul(images)) {
            Some(bytes) if bytes <= MAX_PREPARED_BYTES => {}
            _ => {
                return Err(ConfigError::new_err(format!(
                    "pads for {images} images exceed {} GiB: prepare fewer at a time",
                    MAX_PREPARED_BYTES >> 30
                )));
            }
        }
        let took = py.detach(|| self.exec.prepare(&self.model, images, &CpuBackend::new())).map_err(py_err)?;
        Ok(took.as_secs_f64())
    }

    /// Per private layer so far: calls, verified, rejected, and the client's, the cloud's and
    /// the offline time in seconds.
    fn stats<'py>(&self, py: Python<'py>) -> PyResult<Vec<Bound<'py, PyDict>>> {
        self.exec
            .stats()
            .into_iter()
            .map(|s| {
                let d = PyDict::new(py);
                d.set_item("layer", s.name)?;
                d.set_item("calls", s.calls)?;
                d.set_item("verified", s.verified)?;
                d.set_item("rejected", s.rejected)?;
                d.set_item("client_s", s.timings.client().as_secs_f64())?;
                d.set_item("cloud_s", s.timings.cloud.as_secs_f64())?;
                d.set_item("offline_s", s.offline.as_secs_f64())?;
                Ok(d)
            })
            .collect()
    }

    /// The mode and the clouds.
    #[getter]
    fn description(&self) -> String {
        self.description.clone()
    }
}

/// The `vericonv._vericonv` extension module.
#[pymodule]
fn _vericonv(m: &Bound<'_, PyModule>) -> PyResult<()> {
    let py = m.py();
    m.add_class::<NativeModel>()?;
    m.add_class::<NativePrivate>()?;
    m.add("Error", py.get_type::<Error>())?;
    m.add("VerificationError", py.get_type::<VerificationError>())?;
    m.add("ModelError", py.get_type::<ModelError>())?;
    m.add("RemoteError", py.get_type::<RemoteError>())?;
    m.add("ConfigError", py.get_type::<ConfigError>())?;
    m.add("__version__", env!("CARGO_PKG_VERSION"))?;
    Ok(())
}
