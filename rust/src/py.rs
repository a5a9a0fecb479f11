//! All PyO3 code: extract arguments, release the GIL around the kernel, build numpy arrays.

use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};

use numpy::{
    IntoPyArray, PyArray1, PyArray2, PyReadonlyArray1, PyReadonlyArray2, PyReadonlyArray3,
};
use pyo3::exceptions::{PyFileNotFoundError, PyRuntimeError, PyValueError};
use pyo3::prelude::*;

use crate::error::Error;
use crate::pieces::PieceRule;
use crate::pooling::{self, Pooling};
use crate::static_embed::{self, StaticOptions, StaticTable};
use crate::tokenize::{EncodeOptions, Encoded, PaddingSide, TextTokenizer};

pyo3::create_exception!(
    _core,
    NonFiniteRow,
    PyValueError,
    "A pooled row is NaN or infinite; args: (message, row in the batch)."
);

pyo3::create_exception!(
    _core,
    QueryTooLong,
    PyValueError,
    "A rerank query is past the model's max length (queries are never cut); args: (message, \
     pair index counted from `first`)."
);

impl From<Error> for PyErr {
    fn from(err: Error) -> Self {
        let msg = err.to_string();
        match err {
            Error::FileNotFound { .. } => PyFileNotFoundError::new_err(msg),
            Error::NonFinite { row } => NonFiniteRow::new_err((msg, row)),
            Error::QueryTooLong { pair, .. } => QueryTooLong::new_err((msg, pair)),
            Error::CorruptFile { .. } | Error::InvalidArgument(_) => PyValueError::new_err(msg),
            Error::Tokenize { .. } => PyRuntimeError::new_err(msg),
        }
    }
}

/// Set once a rayon pool exists in this process: rayon's global pool once it has run work (it is
/// built on first use), a model's own pool as soon as it is built (its threads start at once).
static POOL_MADE: AtomicBool = AtomicBool::new(false);
/// Set in a child forked after a pool was made: its worker threads did not survive the fork,
/// so parallel work would wait forever; the child works sequentially instead.
static POOL_LOST: AtomicBool = AtomicBool::new(false);

#[cfg(unix)]
extern "C" fn after_fork_in_child() {
    if POOL_MADE.load(Ordering::SeqCst) {
        POOL_LOST.store(true, Ordering::SeqCst);
    }
}

fn use_pool() -> bool {
    let parallel = !POOL_LOST.load(Ordering::SeqCst);
    if parallel {
        POOL_MADE.store(true, Ordering::SeqCst);
    }
    parallel
}

/// A tokenizer.json loaded once; `encode` tokenizes a whole batch in parallel without the GIL.
#[pyclass(frozen, module = "slimembed._core", name = "Tokenizer")]
struct PyTokenizer {
    inner: TextTokenizer,
}

#[pymethods]
impl PyTokenizer {
    /// `piece_cache=False` encodes every text whole with the `tokenizers` crate (same ids).
    #[new]
    #[pyo3(signature = (path, *, piece_cache=true))]
    fn new(path: PathBuf, piece_cache: bool) -> PyResult<Self> {
        Ok(Self::with_cache(
            TextTokenizer::from_file(&path)?,
            piece_cache,
        ))
    }

    #[staticmethod]
    #[pyo3(signature = (json, *, piece_cache=true))]
    fn from_json(json: &str, piece_cache: bool) -> PyResult<Self> {
        Ok(Self::with_cache(
            TextTokenizer::from_json(json)?,
            piece_cache,
        ))
    }

    /// How texts are cut for the piece cache ("drop", "attach", "attach-stripped"), or None
    /// when this tokenizer's layout encodes every text whole.
    #[getter]
    fn piece_rule(&self) -> Option<&'static str> {
        self.inner.piece_rule().map(PieceRule::name)
    }

    #[getter]
    fn vocab_size(&self) -> usize {
        self.inner.vocab_size()
    }

    fn token_to_id(&self, token: &str) -> Option<u32> {
        self.inner.token_to_id(token)
    }

    /// `instruction`: text before every text, tokenized apart and counted in the pooling skip.
    #[pyo3(signature = (texts, *, instruction=None, add_special_tokens=true, max_length=None, prefix_ids=Vec::new(), suffix_ids=Vec::new()))]
    #[allow(clippy::too_many_arguments)]
    fn encode(
        &self,
        py: Python<'_>,
        texts: Vec<String>,
        instruction: Option<String>,
        add_special_tokens: bool,
        max_length: Option<usize>,
        prefix_ids: Vec<u32>,
        suffix_ids: Vec<u32>,
    ) -> PyResult<PyEncoded> {
        let opts = EncodeOptions {
            add_special_tokens,
            max_length,
            prefix_ids,
            suffix_ids,
            parallel: use_pool(),
        };
        let inner = py.detach(|| self.inner.encode(&texts, instruction.as_deref(), &opts))?;
        Ok(PyEncoded { inner })
    }
}

impl PyTokenizer {
    fn with_cache(inner: TextTokenizer, piece_cache: bool) -> Self {
        let inner = if piece_cache {
            inner
        } else {
            inner.without_cache()
        };
        Self { inner }
    }
}

/// Token ids of a batch of texts, kept unpadded in Rust until `pad` picks rows.
#[pyclass(frozen, module = "slimembed._core", name = "Encoded")]
struct PyEncoded {
    inner: Encoded,
}

type PaddedArrays<'py> = (
    Bound<'py, PyArray2<i64>>,
    Bound<'py, PyArray2<i64>>,
    Bound<'py, PyArray1<i64>>,
    Option<Bound<'py, PyArray2<i64>>>,
);

#[pymethods]
impl PyEncoded {
    fn __len__(&self) -> usize {
        self.inner.len()
    }

    /// Rows a caller tokenized already; see `Encoded::from_ids`.
    #[staticmethod]
    #[pyo3(signature = (rows, *, vocab_size, max_length=None))]
    fn from_ids(
        rows: Vec<Vec<i64>>,
        vocab_size: usize,
        max_length: Option<usize>,
    ) -> PyResult<PyEncoded> {
        let rows = rows
            .into_iter()
            .enumerate()
            .map(|(i, row)| {
                row.into_iter()
                    .map(|id| {
                        u32::try_from(id).map_err(|_| {
                            PyValueError::new_err(format!("input {i} holds token id {id}"))
                        })
                    })
                    .collect::<PyResult<Vec<u32>>>()
            })
            .collect::<PyResult<Vec<_>>>()?;
        let inner = Encoded::from_ids(rows, vocab_size, max_length)?;
        Ok(PyEncoded { inner })
    }

    fn lengths<'py>(&self, py: Python<'py>) -> Bound<'py, PyArray1<i64>> {
        let lengths: Vec<i64> = self.inner.lengths().iter().map(|&n| n as i64).collect();
        lengths.into_pyarray(py)
    }

    fn row<'py>(&self, py: Python<'py>, index: usize) -> PyResult<Bound<'py, PyArray1<i64>>> {
        let row = self.inner.row(index).ok_or_else(|| {
            PyValueError::new_err(format!(
                "row {index} out of range for {} encoded texts",
                self.inner.len()
            ))
        })?;
        let ids: Vec<i64> = row.iter().map(|&id| i64::from(id)).collect();
        Ok(ids.into_pyarray(py))
    }

    /// SGPT's rerank rows: see `Encoded::rerank_rows`.
    #[pyo3(signature = (queries, *, keep, room=None, first=0))]
    fn rerank_rows(
        &self,
        py: Python<'_>,
        queries: &Bound<'_, PyEncoded>,
        keep: usize,
        room: Option<usize>,
        first: usize,
    ) -> PyResult<PyEncoded> {
        let queries = &queries.get().inner;
        let inner = py.detach(|| self.inner.rerank_rows(queries, keep, room, first))?;
        Ok(PyEncoded { inner })
    }

    #[pyo3(signature = (rows, *, padding_side="right", pad_id=0, positions=false))]
    fn pad<'py>(
        &self,
        py: Python<'py>,
        rows: PyReadonlyArray1<'py, i64>,
        padding_side: &str,
        pad_id: i64,
        positions: bool,
    ) -> PyResult<PaddedArrays<'py>> {
        let side: PaddingSide = padding_side.parse()?;
        let rows: Vec<usize> = rows
            .as_array()
            .iter()
            .map(|&r| {
                usize::try_from(r)
                    .map_err(|_| PyValueError::new_err(format!("row {r} is negative")))
            })
            .collect::<PyResult<_>>()?;
        let padded = py.detach(|| self.inner.pad(&rows, side, pad_id, positions))?;
        Ok((
            padded.ids.into_pyarray(py),
            padded.mask.into_pyarray(py),
            padded.skip.into_pyarray(py),
            padded.positions.map(|p| p.into_pyarray(py)),
        ))
    }
}

/// A static embedding model: tokenizer plus table, run end to end in Rust without the GIL.
#[pyclass(frozen, module = "slimembed._core", name = "StaticModel")]
struct PyStaticModel {
    tokenizer: Py<PyTokenizer>,
    table: StaticTable,
    add_special_tokens: bool,
    skip_id: Option<u32>,
    /// The default of `embed`'s and `embed_ids`' `normalize`.
    normalize: bool,
    /// `threads=n`: a pool of its own with n workers (1: no pool at all); None: rayon's global pool.
    threads: Option<usize>,
    pool: Option<rayon::ThreadPool>,
}

#[pymethods]
impl PyStaticModel {
    #[new]
    #[pyo3(signature = (tokenizer, table_path, *, add_special_tokens=false, skip_id=None, normalize=false, threads=None))]
    fn new(
        tokenizer: Py<PyTokenizer>,
        table_path: PathBuf,
        add_special_tokens: bool,
        skip_id: Option<u32>,
        normalize: bool,
        threads: Option<usize>,
    ) -> PyResult<Self> {
        let pool = match threads {
            Some(0) => return Err(PyValueError::new_err("threads must be >= 1")),
            Some(n) if n > 1 => {
                POOL_MADE.store(true, Ordering::SeqCst);
                Some(
                    rayon::ThreadPoolBuilder::new()
                        .num_threads(n)
                        .build()
                        .map_err(|e| PyRuntimeError::new_err(e.to_string()))?,
                )
            }
            _ => None,
        };
        Ok(Self {
            tokenizer,
            table: StaticTable::from_file(&table_path)?,
            add_special_tokens,
            skip_id,
            normalize,
            threads,
            pool,
        })
    }

    #[getter]
    fn dim(&self) -> usize {
        self.table.dim()
    }

    #[getter]
    fn vocab_size(&self) -> usize {
        self.table.vocab_size()
    }

    #[getter]
    fn precision(&self) -> &'static str {
        self.table.precision()
    }

    /// `normalize`: L2-normalize each vector (after the `dim` cut); None: as the model was
    /// built (`normalize=` of the constructor).
    #[pyo3(signature = (texts, *, max_length=None, dim=None, normalize=None))]
    fn embed<'py>(
        &self,
        py: Python<'py>,
        texts: Vec<String>,
        max_length: Option<usize>,
        dim: Option<usize>,
        normalize: Option<bool>,
    ) -> PyResult<Bound<'py, PyArray2<f32>>> {
        let opts = self.options(max_length, dim, normalize);
        let tokenizer = &self.tokenizer.get().inner;
        self.run(py, &opts, || {
            static_embed::embed(tokenizer, &self.table, &texts, &opts)
        })
    }

    /// Rows of token ids (`Encoded.from_ids`) instead of texts.
    #[pyo3(signature = (encoded, *, max_length=None, dim=None, normalize=None))]
    fn embed_ids<'py>(
        &self,
        py: Python<'py>,
        encoded: &Bound<'py, PyEncoded>,
        max_length: Option<usize>,
        dim: Option<usize>,
        normalize: Option<bool>,
    ) -> PyResult<Bound<'py, PyArray2<f32>>> {
        let opts = self.options(max_length, dim, normalize);
        let rows = encoded.get().inner.rows();
        self.run(py, &opts, || {
            static_embed::embed_ids(&self.table, rows, &opts)
        })
    }
}

impl PyStaticModel {
    fn options(
        &self,
        max_length: Option<usize>,
        dim: Option<usize>,
        normalize: Option<bool>,
    ) -> StaticOptions {
        StaticOptions {
            add_special_tokens: self.add_special_tokens,
            skip_id: self.skip_id,
            max_length,
            normalize: normalize.unwrap_or(self.normalize),
            dim,
            parallel: self.threads != Some(1) && use_pool(),
        }
    }

    /// `work` with the GIL released, on the model's own pool when it has one.
    fn run<'py, F>(
        &self,
        py: Python<'py>,
        opts: &StaticOptions,
        work: F,
    ) -> PyResult<Bound<'py, PyArray2<f32>>>
    where
        F: FnOnce() -> crate::error::Result<ndarray::Array2<f32>> + Send,
    {
        let out = py.detach(|| match &self.pool {
            Some(pool) if opts.parallel => pool.install(work),
            _ => work(),
        })?;
        Ok(out.into_pyarray(py))
    }
}

/// Pool float32 `(batch, seq, dim)` hidden states under an int64 `(batch, seq)` mask.
#[pyfunction]
#[pyo3(signature = (hidden, mask, mode, *, skip=None, normalize=false, dim=None))]
fn pool<'py>(
    py: Python<'py>,
    hidden: PyReadonlyArray3<'py, f32>,
    mask: PyReadonlyArray2<'py, i64>,
    mode: &str,
    skip: Option<PyReadonlyArray1<'py, i64>>,
    normalize: bool,
    dim: Option<usize>,
) -> PyResult<Bound<'py, PyArray2<f32>>> {
    let mode: Pooling = mode.parse()?;
    let (hidden, mask) = (hidden.as_array(), mask.as_array());
    let skip = skip.as_ref().map(PyReadonlyArray1::as_array);
    let out = py.detach(|| pooling::pool(hidden, mask, mode, skip, normalize, dim))?;
    Ok(out.into_pyarray(py))
}

/// Whether ONNX Runtime's default u8×s8 integer GEMM can saturate on this CPU (x86 without
/// VNNI): INT8 sessions then ask for its exact u8×u8 kernels.
#[pyfunction]
fn int8_gemm_saturates() -> bool {
    crate::cpu::int8_gemm_saturates()
}

#[pymodule]
fn _core(m: &Bound<'_, PyModule>) -> PyResult<()> {
    #[cfg(unix)]
    // SAFETY: registers a handler that only stores to an atomic, which is async-signal-safe.
    unsafe {
        libc::pthread_atfork(None, None, Some(after_fork_in_child));
    }
    m.add_class::<PyTokenizer>()?;
    m.add_class::<PyEncoded>()?;
    m.add_class::<PyStaticModel>()?;
    m.add_function(wrap_pyfunction!(pool, m)?)?;
    m.add_function(wrap_pyfunction!(int8_gemm_saturates, m)?)?;
    m.add("POOLING_MODES", Pooling::NAMES.to_vec())?;
    m.add("NonFiniteRow", m.py().get_type::<NonFiniteRow>())?;
    m.add("QueryTooLong", m.py().get_type::<QueryTooLong>())?;
    Ok(())
}
