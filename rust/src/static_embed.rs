//! Static embedding models: tokenize, look up one row per token, average. No transformer.
//!
//! Notes:
//! - The table is `embeddings` (rows, dim) in f32, f16 or i8 with per-row f32 `scales`; an
//!   optional `mapping` (vocab,) sends token ids to rows (model2vec's vocabulary quantization)
//!   and optional `weights` (vocab,) scale each token's row, both indexed by token id.
//! - A text's vector is the mean over its tokens of `weight[id] * row(mapping[id])`, as
//!   model2vec computes it; sentence-transformers' StaticEmbedding is the case with no mapping
//!   or weights. A text with no tokens gets the zero vector.
//! - Tokenizing and averaging are fused per text and spread over rayon's pool, so a batch is one
//!   pass with no intermediate id arrays.

use std::path::Path;

use half::f16;
use ndarray::{Array2, ArrayViewMut1};
use rayon::prelude::*;
use safetensors::{Dtype, SafeTensors};

use crate::error::{Error, Result};
use crate::pooling::l2_normalize;
use crate::tokenize::TextTokenizer;

enum Values {
    F32(Vec<f32>),
    F16(Vec<f16>),
    I8 { values: Vec<i8>, scales: Vec<f32> },
}

/// An embedding table with its optional token-to-row mapping and per-token weights.
pub struct StaticTable {
    rows: usize,
    dim: usize,
    values: Values,
    mapping: Option<Vec<u32>>,
    weights: Option<Vec<f32>>,
}

impl StaticTable {
    pub fn from_file(path: &Path) -> Result<Self> {
        if !path.is_file() {
            return Err(Error::FileNotFound {
                path: path.to_path_buf(),
            });
        }
        let bytes = std::fs::read(path).map_err(|e| Error::CorruptFile {
            path: path.to_path_buf(),
            reason: e.to_string(),
        })?;
        Self::from_bytes(&bytes).map_err(|reason| Error::CorruptFile {
            path: path.to_path_buf(),
            reason,
        })
    }

    /// Parse a safetensors file; the error is a reason, the caller names the file.
    pub fn from_bytes(bytes: &[u8]) -> std::result::Result<Self, String> {
        let tensors = SafeTensors::deserialize(bytes).map_err(|e| e.to_string())?;
        let table = tensors
            .tensor("embeddings")
            .map_err(|_| "no tensor named \"embeddings\"".to_string())?;
        let [rows, dim] = *table.shape() else {
            return Err(format!(
                "embeddings must be 2-D, got shape {:?}",
                table.shape()
            ));
        };
        if rows == 0 || dim == 0 {
            return Err(format!("embeddings has an empty shape ({rows}, {dim})"));
        }
        let values = match table.dtype() {
            Dtype::F32 => Values::F32(le_values(table.data(), f32::from_le_bytes)),
            Dtype::F16 => Values::F16(le_values(table.data(), f16::from_le_bytes)),
            Dtype::I8 => {
                let scales = optional(&tensors, "scales", Dtype::F32, rows)?
                    .ok_or("int8 embeddings need a \"scales\" tensor (one f32 per row)")?;
                let values = table
                    .data()
                    .iter()
                    .map(|&b| i8::from_le_bytes([b]))
                    .collect();
                Values::I8 {
                    values,
                    scales: le_values(&scales, f32::from_le_bytes),
                }
            }
            other => return Err(format!("embeddings dtype {other:?} is not f32, f16 or i8")),
        };
        let mapping = match tensors.tensor("mapping") {
            Ok(view) => {
                let ids: Vec<i64> = match view.dtype() {
                    Dtype::I64 => le_values(view.data(), i64::from_le_bytes),
                    Dtype::I32 => le_values(view.data(), i32::from_le_bytes)
                        .into_iter()
                        .map(i64::from)
                        .collect(),
                    other => return Err(format!("mapping dtype {other:?} is not an integer")),
                };
                let bad = ids.iter().find(|&&r| r < 0 || r as usize >= rows);
                if let Some(bad) = bad {
                    return Err(format!(
                        "mapping sends a token to row {bad}, outside 0..{rows}"
                    ));
                }
                Some(ids.into_iter().map(|r| r as u32).collect::<Vec<_>>())
            }
            Err(_) => None,
        };
        let vocab = mapping.as_ref().map_or(rows, Vec::len);
        let weights = optional(&tensors, "weights", Dtype::F32, vocab)?
            .map(|w| le_values(&w, f32::from_le_bytes));
        // Non-finite values would come back as NaN vectors: refuse them at load.
        let finite = match &values {
            Values::F32(v) => v.iter().all(|x| x.is_finite()),
            Values::F16(v) => v.iter().all(|x| x.is_finite()),
            // A row's values are at most 127 times its scale.
            Values::I8 { scales, .. } => scales.iter().all(|s| (s * 127.0).is_finite()),
        };
        if !finite {
            return Err("embeddings (or their int8 scales) hold NaN or infinite values".into());
        }
        if weights
            .as_ref()
            .is_some_and(|w| !w.iter().all(|x| x.is_finite()))
        {
            return Err("weights hold NaN or infinite values".into());
        }
        Ok(Self {
            rows,
            dim,
            values,
            mapping,
            weights,
        })
    }

    pub fn dim(&self) -> usize {
        self.dim
    }

    /// The stored precision: "fp32", "fp16" or "int8".
    pub fn precision(&self) -> &'static str {
        match self.values {
            Values::F32(_) => "fp32",
            Values::F16(_) => "fp16",
            Values::I8 { .. } => "int8",
        }
    }

    /// Number of token ids the table can embed.
    pub fn vocab_size(&self) -> usize {
        self.mapping.as_ref().map_or(self.rows, Vec::len)
    }

    /// Mean of the tokens' weighted rows into `out` (its length may be below `dim`: Matryoshka).
    fn mean_into(&self, ids: &[u32], mut out: ArrayViewMut1<f32>) -> Result<()> {
        out.fill(0.0);
        if ids.is_empty() {
            return Ok(());
        }
        let width = out.len();
        let out = out
            .as_slice_mut()
            .ok_or_else(|| Error::InvalidArgument("output row is not contiguous".into()))?;
        for &id in ids {
            let token = id as usize;
            let row = match &self.mapping {
                Some(map) => map.get(token).map(|&r| r as usize),
                None => (token < self.rows).then_some(token),
            }
            .ok_or_else(|| {
                Error::InvalidArgument(format!(
                    "token id {id} has no row in the static table (vocabulary {})",
                    self.vocab_size()
                ))
            })?;
            let weight = self.weights.as_ref().map_or(1.0, |w| w[token]);
            let start = row * self.dim;
            match &self.values {
                Values::F32(v) => axpy(out, weight, &v[start..start + width], |x| x),
                Values::F16(v) => axpy(out, weight, &v[start..start + width], f16::to_f32),
                Values::I8 { values, scales } => {
                    let scale = weight * scales[row];
                    axpy(out, scale, &values[start..start + width], f32::from);
                }
            }
        }
        let inv = 1.0 / ids.len() as f32;
        for x in out.iter_mut() {
            *x *= inv;
        }
        Ok(())
    }
}

#[inline]
fn axpy<T: Copy>(out: &mut [f32], a: f32, row: &[T], to_f32: impl Fn(T) -> f32) {
    for (o, &x) in out.iter_mut().zip(row) {
        *o += a * to_f32(x);
    }
}

fn le_values<T, const N: usize>(data: &[u8], from: fn([u8; N]) -> T) -> Vec<T> {
    data.chunks_exact(N)
        .map(|c| {
            let mut b = [0u8; N];
            b.copy_from_slice(c);
            from(b)
        })
        .collect()
}

fn optional(
    tensors: &SafeTensors<'_>,
    name: &str,
    dtype: Dtype,
    len: usize,
) -> std::result::Result<Option<Vec<u8>>, String> {
    let Ok(view) = tensors.tensor(name) else {
        return Ok(None);
    };
    if view.dtype() != dtype || view.shape() != [len] {
        return Err(format!(
            "{name} must be {dtype:?} of shape [{len}], got {:?} {:?}",
            view.dtype(),
            view.shape()
        ));
    }
    Ok(Some(view.data().to_vec()))
}

/// How a static model turns texts into ids before the lookup.
#[derive(Clone, Debug, Default)]
pub struct StaticOptions {
    pub add_special_tokens: bool,
    /// Tokens dropped before averaging (model2vec drops the unknown token).
    pub skip_id: Option<u32>,
    /// Tokens kept per text, counted after dropping `skip_id`; `None` keeps all.
    pub max_length: Option<usize>,
    pub normalize: bool,
    /// Keep the first `dim` components (Matryoshka), then normalize.
    pub dim: Option<usize>,
    pub parallel: bool,
}

/// Embed `texts` with `table`: one float32 row per text.
pub fn embed(
    tokenizer: &TextTokenizer,
    table: &StaticTable,
    texts: &[String],
    opts: &StaticOptions,
) -> Result<Array2<f32>> {
    embed_with(table, texts.len(), opts, |i, ids| {
        tokenizer.ids_into(i, &texts[i], opts.add_special_tokens, ids)
    })
}

/// Embed rows of token ids a caller tokenized already (the same skip and truncation as text).
pub fn embed_ids(
    table: &StaticTable,
    rows: &[Vec<u32>],
    opts: &StaticOptions,
) -> Result<Array2<f32>> {
    embed_with(table, rows.len(), opts, |i, ids| {
        ids.extend_from_slice(&rows[i]);
        Ok(())
    })
}

/// `n` rows, row `i`'s ids appended to an empty buffer by `fill(i, ids)`, then skipped,
/// truncated, averaged and normalized.
fn embed_with<F>(
    table: &StaticTable,
    n: usize,
    opts: &StaticOptions,
    fill: F,
) -> Result<Array2<f32>>
where
    F: Fn(usize, &mut Vec<u32>) -> Result<()> + Sync,
{
    let width = match opts.dim {
        None => table.dim,
        Some(d) if (1..=table.dim).contains(&d) => d,
        Some(d) => {
            return Err(Error::InvalidArgument(format!(
                "dim must be between 1 and {}, got {d}",
                table.dim
            )))
        }
    };
    let mut out = Array2::<f32>::zeros((n, width));
    let one = |ids: &mut Vec<u32>, (i, row): (usize, ArrayViewMut1<f32>)| -> Result<()> {
        ids.clear();
        fill(i, ids)?;
        if let Some(skip) = opts.skip_id {
            ids.retain(|&id| id != skip);
        }
        if let Some(max) = opts.max_length {
            ids.truncate(max);
        }
        let mut row = row;
        table.mean_into(ids, row.view_mut())?;
        if opts.normalize {
            l2_normalize(row);
        }
        Ok(())
    };
    let rows: Vec<ArrayViewMut1<f32>> = out.rows_mut().into_iter().collect();
    if opts.parallel {
        rows.into_par_iter()
            .enumerate()
            .try_for_each_init(Vec::new, one)?;
    } else {
        let mut ids = Vec::new();
        rows.into_iter()
            .enumerate()
            .try_for_each(|item| one(&mut ids, item))?;
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    use safetensors::tensor::{serialize, TensorView};

    fn table(
        tensors: &[(&str, Dtype, Vec<usize>, Vec<u8>)],
    ) -> std::result::Result<StaticTable, String> {
        let views: HashMap<String, TensorView<'_>> = tensors
            .iter()
            .map(|(n, d, s, b)| ((*n).to_string(), TensorView::new(*d, s.clone(), b).unwrap()))
            .collect();
        StaticTable::from_bytes(&serialize(views, None).unwrap())
    }

    fn f32s(v: &[f32]) -> Vec<u8> {
        v.iter().flat_map(|x| x.to_le_bytes()).collect()
    }

    /// Word-level tokenizer: "a" -> 0, "b" -> 1, "c" -> 2, anything else -> [UNK] 3.
    fn tokenizer() -> TextTokenizer {
        TextTokenizer::from_json(
            r#"{"version": "1.0", "truncation": null, "padding": null, "added_tokens": [],
                "normalizer": null, "pre_tokenizer": {"type": "WhitespaceSplit"},
                "post_processor": null, "decoder": null,
                "model": {"type": "WordLevel", "unk_token": "[UNK]",
                          "vocab": {"a": 0, "b": 1, "c": 2, "[UNK]": 3}}}"#,
        )
        .unwrap()
    }

    fn texts(items: &[&str]) -> Vec<String> {
        items.iter().map(|s| (*s).to_string()).collect()
    }

    #[test]
    fn mean_with_mapping_weights_and_skip() {
        // rows: r0 = (1, 0), r1 = (0, 2); tokens a, b, c, [UNK] -> rows 0, 1, 1, 0
        let t = table(&[
            (
                "embeddings",
                Dtype::F32,
                vec![2, 2],
                f32s(&[1.0, 0.0, 0.0, 2.0]),
            ),
            (
                "mapping",
                Dtype::I64,
                vec![4],
                [0_i64, 1, 1, 0]
                    .iter()
                    .flat_map(|x| x.to_le_bytes())
                    .collect(),
            ),
            ("weights", Dtype::F32, vec![4], f32s(&[1.0, 1.0, 0.5, 9.0])),
        ])
        .unwrap();
        let opts = StaticOptions {
            skip_id: Some(3),
            ..StaticOptions::default()
        };
        let out = embed(&tokenizer(), &t, &texts(&["a c zzz", "", "zzz"]), &opts).unwrap();
        assert_eq!(out, ndarray::array![[0.5, 0.5], [0.0, 0.0], [0.0, 0.0]]);
        let opts = StaticOptions {
            max_length: Some(1),
            normalize: true,
            parallel: true,
            ..StaticOptions::default()
        };
        let out = embed(&tokenizer(), &t, &texts(&["b a"]), &opts).unwrap();
        assert_eq!(out, ndarray::array![[0.0, 1.0]]);
    }

    #[test]
    fn int8_and_f16_rows_dequantize() {
        let t = table(&[
            (
                "embeddings",
                Dtype::I8,
                vec![4, 2],
                vec![2, 254, 0, 1, 0, 0, 0, 0],
            ),
            ("scales", Dtype::F32, vec![4], f32s(&[0.5, 2.0, 1.0, 1.0])),
        ])
        .unwrap();
        let out = embed(
            &tokenizer(),
            &t,
            &texts(&["a b"]),
            &StaticOptions::default(),
        )
        .unwrap();
        // a = (1, -1), b = (0, 2): mean (0.5, 0.5)
        assert_eq!(out, ndarray::array![[0.5, 0.5]]);
        let halves: Vec<u8> = [1.0_f32, 2.0, 3.0, 4.0, 0.0, 0.0, 0.0, 0.0]
            .iter()
            .flat_map(|&x| f16::from_f32(x).to_le_bytes())
            .collect();
        let t = table(&[("embeddings", Dtype::F16, vec![4, 2], halves)]).unwrap();
        let opts = StaticOptions {
            dim: Some(1),
            ..StaticOptions::default()
        };
        assert_eq!(
            embed(&tokenizer(), &t, &texts(&["b"]), &opts).unwrap(),
            ndarray::array![[3.0]]
        );
    }

    #[test]
    fn matryoshka_cut_is_renormalized_only_when_asked() {
        // a = (3, 4, 12): cut to 2 components, (3, 4); normalized, (0.6, 0.8).
        let t = table(&[(
            "embeddings",
            Dtype::F32,
            vec![4, 3],
            f32s(&[3.0, 4.0, 12.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0]),
        )])
        .unwrap();
        let mut opts = StaticOptions {
            dim: Some(2),
            ..StaticOptions::default()
        };
        let a = texts(&["a"]);
        assert_eq!(
            embed(&tokenizer(), &t, &a, &opts).unwrap(),
            ndarray::array![[3.0, 4.0]]
        );
        opts.normalize = true;
        let unit = embed(&tokenizer(), &t, &a, &opts).unwrap();
        assert!((unit[[0, 0]] - 0.6).abs() < 1e-6 && (unit[[0, 1]] - 0.8).abs() < 1e-6);
    }

    #[test]
    fn bad_tables_and_ids_are_errors() {
        assert!(table(&[("other", Dtype::F32, vec![1], f32s(&[1.0]))]).is_err());
        assert!(table(&[("embeddings", Dtype::I8, vec![1, 1], vec![1])]).is_err());
        assert!(table(&[
            ("embeddings", Dtype::F32, vec![1, 1], f32s(&[1.0])),
            ("mapping", Dtype::I64, vec![1], 5_i64.to_le_bytes().to_vec()),
        ])
        .is_err());
        let small = table(&[("embeddings", Dtype::F32, vec![2, 1], f32s(&[1.0, 2.0]))]).unwrap();
        assert!(embed(
            &tokenizer(),
            &small,
            &texts(&["c"]),
            &StaticOptions::default()
        )
        .is_err());
        let opts = StaticOptions {
            dim: Some(2),
            ..StaticOptions::default()
        };
        assert!(embed(&tokenizer(), &small, &texts(&["a"]), &opts).is_err());
        assert!(StaticTable::from_bytes(b"garbage").is_err());
    }
}
