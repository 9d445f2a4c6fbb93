//! `dbksvd._native`: the Python extension, a thin layer over the `dbksvd` library. The package
//! `dbksvd` (python/dbksvd/__init__.py) builds the user API on it: it converts inputs to
//! C-contiguous float32 arrays or file paths, and turns `NativeError` into the library's
//! exception classes. Nothing here computes; every call goes to the library.

use std::ops::ControlFlow;
use std::path::PathBuf;
use std::sync::Mutex;
use std::time::Duration;

use dbksvd::data::{self, ActivationSource, InMemory};
use dbksvd::encode::{Coder, CodingOptions, EncodeOptions, Groups};
use dbksvd::export::{self, SaeLensNames};
use dbksvd::gpu::{list_adapters, Gpu, GpuOptions};
use dbksvd::train::{TrainConfig, Trainer, CHECKPOINT_FILE};
use dbksvd::{Dictionary, Error};
use numpy::{PyArray1, PyArray2, PyArrayMethods, PyReadonlyArray2, PyUntypedArrayMethods};
use pyo3::exceptions::PyException;
use pyo3::prelude::*;
use pyo3::types::PyDict;

pyo3::create_exception!(
    _native,
    NativeError,
    PyException,
    "An error of the dbksvd library: args (kind, message), kind one of input, device, io."
);

/// The library's error as a `NativeError(kind, message)`.
fn raise(e: Error) -> PyErr {
    let kind = match &e {
        Error::NoAdapter(_)
        | Error::DeviceRequest { .. }
        | Error::BufferMap(_)
        | Error::GpuValidation(_)
        | Error::GpuOutOfMemory(_)
        | Error::DeviceLost(_)
        | Error::ExceedsLimit { .. }
        | Error::Internal(_) => "device",
        Error::Io { .. } => "io",
        _ => "input",
    };
    NativeError::new_err((kind, e.to_string()))
}

/// The device `adapter` and `backend` name (over `WGPU_ADAPTER_NAME` and `WGPU_BACKEND`),
/// opened once per process and kept: opening one costs far more than most calls.
fn gpu(py: Python<'_>, adapter: Option<String>, backend: Option<String>) -> PyResult<&'static Gpu> {
    /// (adapter, backend) as asked for.
    type Key = (Option<String>, Option<String>);
    static OPEN: Mutex<Vec<(Key, &'static Gpu)>> = Mutex::new(Vec::new());
    let key = (adapter, backend);
    let mut open = OPEN.lock().unwrap_or_else(|e| e.into_inner());
    if let Some((_, gpu)) = open.iter().find(|(k, _)| *k == key) {
        return Ok(gpu);
    }
    let mut options = GpuOptions::from_env().map_err(raise)?;
    if key.0.is_some() {
        options.adapter_name = key.0.clone();
    }
    if key.1.is_some() {
        options.backends = key.1.clone();
    }
    let gpu = py.detach(|| Gpu::with_options(&options)).map_err(raise)?;
    let gpu: &'static Gpu = Box::leak(Box::new(gpu));
    open.push((key, gpu));
    Ok(gpu)
}

/// Activations: a C-contiguous float32 array [N, d] (borrowed), or files streamed from disk.
enum Data<'py> {
    Array(PyReadonlyArray2<'py, f32>),
    Files(Vec<PathBuf>),
}

impl<'py> Data<'py> {
    fn extract(data: &Bound<'py, PyAny>) -> PyResult<Self> {
        if let Ok(array) = data.extract::<PyReadonlyArray2<'py, f32>>() {
            return Ok(Data::Array(array));
        }
        Ok(Data::Files(data.extract::<Vec<PathBuf>>()?))
    }

    /// The source over this data (`name` for messages about an array).
    fn source(&self, name: &str) -> Result<Box<dyn ActivationSource + '_>, Error> {
        match self {
            Data::Array(array) => {
                let d = array.shape()[1];
                let rows = array.as_slice().map_err(|_| {
                    Error::InvalidArgument(format!("{name}: the array is not C-contiguous"))
                })?;
                if rows.is_empty() {
                    return Err(Error::InvalidArgument(format!("{name}: no rows")));
                }
                Ok(Box::new(InMemory::new(rows, d)?.with_name(name)))
            }
            Data::Files(paths) => data::open(paths),
        }
    }
}

/// A trained dictionary: atoms [K, d], the mean subtracted before coding, and its metadata.
#[pyclass(name = "NativeDictionary", module = "dbksvd._native", frozen)]
struct PyDictionary {
    inner: Dictionary,
}

#[pymethods]
impl PyDictionary {
    /// Atoms [K, d] (a copy).
    #[getter]
    fn atoms<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyArray2<f32>>> {
        let (k, d) = (self.inner.n_atoms(), self.inner.dim());
        PyArray1::from_slice(py, self.inner.atoms()).reshape([k, d])
    }

    /// The mean [d] subtracted from every row before coding (zeros without centring).
    #[getter]
    fn mean<'py>(&self, py: Python<'py>) -> Bound<'py, PyArray1<f32>> {
        PyArray1::from_slice(py, self.inner.mean())
    }

    /// The k it was trained with, if recorded.
    #[getter]
    fn k(&self) -> Option<usize> {
        self.inner.k()
    }

    /// The Matryoshka groups' ends, if trained by groups.
    #[getter]
    fn groups(&self) -> PyResult<Option<Vec<usize>>> {
        let groups = self.inner.groups().map_err(raise)?;
        Ok(groups.map(|g| g.ends().to_vec()))
    }

    /// The file's metadata (string pairs; the training configuration under `config`).
    #[getter]
    fn metadata(&self) -> std::collections::HashMap<String, String> {
        self.inner.metadata().clone()
    }

    /// Writes the dictionary as safetensors (atomically).
    fn save(&self, py: Python<'_>, path: PathBuf) -> PyResult<()> {
        py.detach(|| self.inner.save(&path)).map_err(raise)
    }

    /// Codes `x` [N, d] (C-contiguous float32): (indices int32 [N, k], values float32 [N, k]),
    /// −1 and 0 in empty slots.
    #[pyo3(signature = (x, k, coder, groups=None, adapter=None, backend=None))]
    #[allow(clippy::too_many_arguments, clippy::type_complexity)]
    fn encode<'py>(
        &self,
        py: Python<'py>,
        x: PyReadonlyArray2<'py, f32>,
        k: usize,
        coder: &str,
        groups: Option<usize>,
        adapter: Option<String>,
        backend: Option<String>,
    ) -> PyResult<(Bound<'py, PyArray2<i32>>, Bound<'py, PyArray2<f32>>)> {
        let coding = coding(coder, k)?;
        let d = x.shape()[1];
        if d != self.inner.dim() {
            return Err(raise(Error::ShapeMismatch {
                op: "encode (rows vs the dictionary)".into(),
                left: format!("d = {d}"),
                right: format!("d = {}", self.inner.dim()),
            }));
        }
        let rows = x.as_slice().map_err(|_| {
            raise(Error::InvalidArgument(
                "encode: x is not C-contiguous".into(),
            ))
        })?;
        let gpu = gpu(py, adapter, backend)?;
        let source = InMemory::new(rows, d)
            .map_err(raise)?
            .with_name("encode input");
        let codes = py
            .detach(|| {
                let encoder = self.inner.encoder(gpu, coding)?;
                match groups {
                    Some(prefix) => {
                        let options = EncodeOptions::default().with_prefix(prefix);
                        let source: &dyn ActivationSource = &source;
                        Ok(encoder.encode_with(source, options)?.codes)
                    }
                    None => encoder.encode(&source as &dyn ActivationSource),
                }
            })
            .map_err(raise)?;
        let shape = [codes.n, codes.k];
        Ok((
            PyArray1::from_vec(py, codes.indices).reshape(shape)?,
            PyArray1::from_vec(py, codes.values).reshape(shape)?,
        ))
    }

    /// Writes `folder` for SAELens' `SAE.load_from_disk` (architecture `matching_pursuit`, at
    /// most `k` iterations) with the metadata SAEBench reads.
    #[pyo3(signature = (folder, k, model_name=None, hook_name=None, context_size=None, prepend_bos=None))]
    #[allow(clippy::too_many_arguments)]
    fn to_saelens(
        &self,
        py: Python<'_>,
        folder: PathBuf,
        k: usize,
        model_name: Option<String>,
        hook_name: Option<String>,
        context_size: Option<u64>,
        prepend_bos: Option<bool>,
    ) -> PyResult<()> {
        let names = SaeLensNames {
            model_name,
            hook_name,
            context_size,
            prepend_bos,
        };
        py.detach(|| export::write_saelens(&folder, &self.inner, k, 0.0, &names))
            .map_err(raise)
    }
}

/// The coder `name` asks for: `"omp"`, or `"mp"` (matching pursuit with refit).
fn coder(name: &str) -> Result<Coder, Error> {
    match name {
        "omp" => Ok(Coder::Omp),
        "mp" => Ok(Coder::Mp { refit: true }),
        other => Err(Error::InvalidArgument(format!(
            "coder {other:?}: expected \"omp\" or \"mp\""
        ))),
    }
}

fn coding(name: &str, k: usize) -> PyResult<CodingOptions> {
    let coding = match coder(name).map_err(raise)? {
        Coder::Omp => CodingOptions::omp(k),
        Coder::Mp { refit } => CodingOptions::mp(k, refit),
    };
    coding.validate().map_err(raise)?;
    Ok(coding)
}

/// Loads a dictionary written by `save` or `dbksvd train`.
#[pyfunction]
fn load(py: Python<'_>, path: PathBuf) -> PyResult<PyDictionary> {
    let inner = py.detach(|| Dictionary::load(&path)).map_err(raise)?;
    Ok(PyDictionary { inner })
}

/// What `train` is asked for, beside the data: a dict with every key below.
#[derive(FromPyObject)]
#[pyo3(from_item_all)]
struct TrainOptions {
    atoms: usize,
    k: usize,
    epochs: usize,
    batch: Option<usize>,
    coder: String,
    matryoshka: Option<Vec<usize>>,
    memory: f32,
    center: bool,
    seed: u64,
    time_limit: Option<f64>,
    out: Option<PathBuf>,
    force: bool,
    resume: bool,
    model_name: Option<String>,
    hook_name: Option<String>,
    context_size: Option<u64>,
    prepend_bos: Option<bool>,
    adapter: Option<String>,
    backend: Option<String>,
}

impl TrainOptions {
    fn config(&self) -> Result<TrainConfig, Error> {
        let mut config = TrainConfig::new(self.atoms, self.k)
            .with_epochs(self.epochs)
            .with_atom_memory(self.memory)
            .with_center(self.center)
            .with_seed(self.seed)
            .with_coder(coder(&self.coder)?);
        config.batch_size = self.batch;
        config.time_limit = self
            .time_limit
            .map(|s| {
                Duration::try_from_secs_f64(s).map_err(|_| {
                    Error::InvalidArgument(format!("time_limit {s}: not a duration in seconds"))
                })
            })
            .transpose()?;
        config.groups = self
            .matryoshka
            .as_deref()
            .map(|numbers| Groups::from_spec(numbers, self.atoms))
            .transpose()?;
        Ok(config)
    }

    fn names(&self) -> SaeLensNames {
        SaeLensNames {
            model_name: self.model_name.clone(),
            hook_name: self.hook_name.clone(),
            context_size: self.context_size,
            prepend_bos: self.prepend_bos,
        }
    }
}

/// Trains a dictionary on `data` (array or files), held-out `eval` scored after each epoch;
/// `callback(progress: dict)` after every batch (an exception from it, or Ctrl-C, stops the
/// run at that batch and is raised once the checkpoint is written). Returns (dictionary,
/// JSON of {"config", "epochs", "batches", "stop", "seconds"}).
#[pyfunction]
#[pyo3(signature = (data, options, eval=None, callback=None))]
fn train<'py>(
    py: Python<'py>,
    data: &Bound<'py, PyAny>,
    options: TrainOptions,
    eval: Option<&Bound<'py, PyAny>>,
    callback: Option<Py<PyAny>>,
) -> PyResult<(PyDictionary, String)> {
    let data = Data::extract(data)?;
    let eval = eval.map(Data::extract).transpose()?;
    let source = data.source("training array").map_err(raise)?;
    let eval = match &eval {
        Some(eval) => Some(eval.source("eval array").map_err(raise)?),
        None => None,
    };
    let config = options.config().map_err(raise)?;
    config
        .validate_for(source.rows(), source.dim(), &source.name())
        .map_err(raise)?;
    if let Some(out) = &options.out {
        export::prepare_output_folder(out, options.force || options.resume).map_err(raise)?;
    }
    let gpu = gpu(py, options.adapter.clone(), options.backend.clone())?;
    // Set by the batch callback when Python asks to stop (an exception, or Ctrl-C).
    let stopped: Mutex<Option<PyErr>> = Mutex::new(None);
    let result = py.detach(|| {
        let mut trainer = Trainer::new(gpu, config).on_batch(|p| {
            Python::attach(|py| match report(py, callback.as_ref(), p) {
                Ok(()) => ControlFlow::Continue(()),
                Err(e) => {
                    *stopped.lock().unwrap_or_else(|e| e.into_inner()) = Some(e);
                    ControlFlow::Break(())
                }
            })
        });
        if let Some(out) = &options.out {
            trainer = trainer.checkpoint_to(out);
            if options.resume {
                trainer = trainer.resume_from(out.join(CHECKPOINT_FILE));
            }
        }
        if let Some(eval) = &eval {
            trainer = trainer.evaluate_on(eval.as_ref());
        }
        trainer.fit(source.as_ref())
    });
    if let Some(e) = stopped.into_inner().unwrap_or_else(|e| e.into_inner()) {
        return Err(e);
    }
    let result = result.map_err(raise)?;
    if let Some(out) = &options.out {
        py.detach(|| export::write_outputs(&result, out, &options.names()))
            .map_err(raise)?;
    }
    let summary = serde_json::json!({
        "config": result.config,
        "epochs": result.epochs,
        "batches": result.batches,
        "stop": format!("{:?}", result.stop),
        "seconds": result.seconds,
    });
    Ok((
        PyDictionary {
            inner: result.dictionary,
        },
        summary.to_string(),
    ))
}

/// Checks for Ctrl-C, then hands the batch's progress to `callback` as a dict.
fn report(
    py: Python<'_>,
    callback: Option<&Py<PyAny>>,
    p: &dbksvd::train::Progress,
) -> PyResult<()> {
    py.check_signals()?;
    let Some(callback) = callback else {
        return Ok(());
    };
    let metrics = serde_json::to_string(p.batch)
        .map_err(|e| raise(Error::Internal(format!("batch metrics as JSON: {e}"))))?;
    let progress = PyDict::new(py);
    progress.set_item("done", p.done)?;
    progress.set_item("total", p.total)?;
    progress.set_item("metrics", metrics)?;
    callback.call1(py, (progress,))?;
    Ok(())
}

/// The adapters wgpu finds (`backend` limits the search), each as a dict of strings and ids.
#[pyfunction]
#[pyo3(signature = (backend=None))]
fn adapters(py: Python<'_>, backend: Option<String>) -> PyResult<Vec<Bound<'_, PyDict>>> {
    let mut options = GpuOptions::from_env().map_err(raise)?;
    if backend.is_some() {
        options.backends = backend;
    }
    let found = py.detach(|| list_adapters(&options));
    found
        .into_iter()
        .map(|a| {
            let dict = PyDict::new(py);
            dict.set_item("name", a.name)?;
            dict.set_item("backend", a.backend)?;
            dict.set_item("device_type", a.device_type)?;
            dict.set_item("driver", a.driver)?;
            dict.set_item("vendor", a.vendor)?;
            dict.set_item("device", a.device)?;
            Ok(dict)
        })
        .collect()
}

/// The adapter a call with `adapter` and `backend` opens, and the limits dbksvd plans with.
#[pyfunction]
#[pyo3(signature = (adapter=None, backend=None))]
fn open_device(
    py: Python<'_>,
    adapter: Option<String>,
    backend: Option<String>,
) -> PyResult<Bound<'_, PyDict>> {
    let gpu = gpu(py, adapter, backend)?;
    let (a, l) = (gpu.adapter(), gpu.limits());
    let dict = PyDict::new(py);
    dict.set_item("name", &a.name)?;
    dict.set_item("backend", &a.backend)?;
    dict.set_item("device_type", &a.device_type)?;
    dict.set_item(
        "max_storage_buffer_binding_size",
        l.max_storage_buffer_binding_size,
    )?;
    dict.set_item("max_buffer_size", l.max_buffer_size)?;
    dict.set_item(
        "max_compute_workgroup_storage_size",
        l.max_compute_workgroup_storage_size,
    )?;
    dict.set_item("max_loop_iterations", l.max_loop_iterations)?;
    Ok(dict)
}

#[pymodule]
fn _native(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add("NativeError", m.py().get_type::<NativeError>())?;
    m.add("__version__", env!("CARGO_PKG_VERSION"))?;
    m.add_class::<PyDictionary>()?;
    m.add_function(wrap_pyfunction!(load, m)?)?;
    m.add_function(wrap_pyfunction!(train, m)?)?;
    m.add_function(wrap_pyfunction!(adapters, m)?)?;
    m.add_function(wrap_pyfunction!(open_device, m)?)?;
    Ok(())
}
