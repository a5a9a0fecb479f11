//! Pooling kernels: (batch, seq, dim) float32 hidden states plus an int64 (batch, seq) mask in,
//! (batch, dim) float32 vectors out.
//!
//! Notes:
//! - Every mode finds real tokens from the mask, never from token ids, so the same code is right
//!   for left and right padding.
//! - `skip[b]` removes the first `skip[b]` real tokens of row `b` from pooling (an instruction
//!   prefix); every mode then works on what is left.
//! - A row with no real token left pools to a zero vector (and stays zero after normalization),
//!   as sentence-transformers' clamped mean does, instead of NaN.
//! - Sums accumulate in f64: long decoder sequences add thousands of terms.
//! - A pooled row holding NaN or infinity is an error naming the row, never a vector: an inf
//!   or NaN hidden state would otherwise normalize to NaN or to huge finite values.

use std::str::FromStr;

use ndarray::{Array2, ArrayView1, ArrayView2, ArrayView3, ArrayViewMut1, Axis};

use crate::error::{Error, Result};

/// The ways a sequence of hidden states becomes one vector.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Pooling {
    /// The first real token (BERT's `[CLS]`).
    Cls,
    /// The average of the real tokens.
    Mean,
    /// SGPT: real tokens weighted 1, 2, ..., n by their position in the text.
    WeightedMean,
    /// The last real token (decoder embedders).
    LastToken,
}

impl Pooling {
    pub const NAMES: [&'static str; 4] = ["cls", "mean", "weighted_mean", "last_token"];
}

impl FromStr for Pooling {
    type Err = Error;

    fn from_str(name: &str) -> Result<Self> {
        match name {
            "cls" => Ok(Self::Cls),
            "mean" => Ok(Self::Mean),
            "weighted_mean" => Ok(Self::WeightedMean),
            "last_token" => Ok(Self::LastToken),
            other => Err(Error::InvalidArgument(format!(
                "unknown pooling {other:?}; expected one of {:?}",
                Self::NAMES
            ))),
        }
    }
}

/// Pool `hidden` (batch, seq, dim) under `mask` (batch, seq).
///
/// `skip` (batch,) drops leading real tokens per row; `dim` keeps the first `dim` components
/// (Matryoshka) before the optional L2 normalization.
pub fn pool(
    hidden: ArrayView3<f32>,
    mask: ArrayView2<i64>,
    mode: Pooling,
    skip: Option<ArrayView1<i64>>,
    normalize: bool,
    dim: Option<usize>,
) -> Result<Array2<f32>> {
    let (batch, seq, full_dim) = hidden.dim();
    if mask.dim() != (batch, seq) {
        return Err(Error::InvalidArgument(format!(
            "mask has shape {:?} but hidden states have (batch, seq) = ({batch}, {seq})",
            mask.dim()
        )));
    }
    if let Some(skip) = skip {
        if skip.len() != batch {
            return Err(Error::InvalidArgument(format!(
                "skip has {} rows but batch is {batch}",
                skip.len()
            )));
        }
        if let Some(bad) = skip.iter().find(|&&s| s < 0) {
            return Err(Error::InvalidArgument(format!(
                "skip must be >= 0, got {bad}"
            )));
        }
    }
    let out_dim = match dim {
        None => full_dim,
        Some(d) if (1..=full_dim).contains(&d) => d,
        Some(d) => {
            return Err(Error::InvalidArgument(format!(
                "dim must be between 1 and {full_dim}, got {d}"
            )))
        }
    };

    let mut out = Array2::<f32>::zeros((batch, out_dim));
    let mut acc = vec![0f64; out_dim];
    for (b, mut row) in out.axis_iter_mut(Axis(0)).enumerate() {
        let states = hidden.index_axis(Axis(0), b);
        let row_mask = mask.index_axis(Axis(0), b);
        let skipped = skip.map_or(0, |s| s[b] as u64);
        acc.fill(0.0);
        let mut total_weight = 0f64;
        let mut chosen: Option<usize> = None;
        let mut rank = 0u64;
        for (t, &m) in row_mask.iter().enumerate() {
            if m == 0 {
                continue;
            }
            rank += 1;
            if rank <= skipped {
                continue;
            }
            match mode {
                Pooling::Cls => {
                    chosen = Some(t);
                    break;
                }
                Pooling::LastToken => chosen = Some(t),
                Pooling::Mean | Pooling::WeightedMean => {
                    let w = if mode == Pooling::Mean {
                        1.0
                    } else {
                        rank as f64
                    };
                    total_weight += w;
                    for (a, &h) in acc.iter_mut().zip(states.row(t).iter()) {
                        *a += w * f64::from(h);
                    }
                }
            }
        }
        match mode {
            Pooling::Cls | Pooling::LastToken => {
                if let Some(t) = chosen {
                    row.assign(&states.row(t).slice(ndarray::s![..out_dim]));
                }
            }
            Pooling::Mean | Pooling::WeightedMean => {
                if total_weight > 0.0 {
                    for (o, a) in row.iter_mut().zip(&acc) {
                        *o = (a / total_weight) as f32;
                    }
                }
            }
        }
        if !row.iter().all(|x| x.is_finite()) {
            return Err(Error::NonFinite { row: b });
        }
        if normalize {
            l2_normalize(row);
        }
    }
    Ok(out)
}

/// Scale `v` to unit length; a zero vector stays zero (`torch.nn.functional.normalize`'s eps).
pub fn l2_normalize(mut v: ArrayViewMut1<f32>) {
    let norm = v
        .iter()
        .map(|&x| f64::from(x) * f64::from(x))
        .sum::<f64>()
        .sqrt();
    let scale = 1.0 / norm.max(1e-12);
    v.mapv_inplace(|x| (f64::from(x) * scale) as f32);
}

#[cfg(test)]
mod tests {
    use super::*;
    use ndarray::{array, Array3};

    fn hidden() -> Array3<f32> {
        // batch 2, seq 3, dim 2
        array![
            [[1.0, 0.0], [3.0, 2.0], [5.0, 4.0]],
            [[7.0, 6.0], [9.0, 8.0], [11.0, 10.0]]
        ]
    }

    #[test]
    fn modes_right_padding() {
        let h = hidden();
        let m = array![[1_i64, 1, 0], [1, 1, 1]];
        let cls = pool(h.view(), m.view(), Pooling::Cls, None, false, None).unwrap();
        assert_eq!(cls, array![[1.0, 0.0], [7.0, 6.0]]);
        let mean = pool(h.view(), m.view(), Pooling::Mean, None, false, None).unwrap();
        assert_eq!(mean, array![[2.0, 1.0], [9.0, 8.0]]);
        let last = pool(h.view(), m.view(), Pooling::LastToken, None, false, None).unwrap();
        assert_eq!(last, array![[3.0, 2.0], [11.0, 10.0]]);
        let wm = pool(h.view(), m.view(), Pooling::WeightedMean, None, false, None).unwrap();
        // row 0: (1*1 + 2*3) / 3 = 7/3
        assert!((wm[[0, 0]] - 7.0 / 3.0).abs() < 1e-6);
    }

    #[test]
    fn non_finite_pooled_rows_are_errors_naming_the_row() {
        let mut h = hidden();
        h[[1, 2, 0]] = f32::NAN;
        let m = array![[1_i64, 1, 1], [1, 1, 1]];
        for mode in [Pooling::Mean, Pooling::LastToken] {
            let err = pool(h.view(), m.view(), mode, None, true, None).unwrap_err();
            assert!(matches!(err, Error::NonFinite { row: 1 }), "{err}");
        }
        // A NaN in a padded position or a pooled-away token is never read.
        let padded = array![[1_i64, 1, 1], [1, 1, 0]];
        assert!(pool(h.view(), padded.view(), Pooling::Mean, None, true, None).is_ok());
        h[[0, 1, 1]] = f32::INFINITY;
        let err = pool(h.view(), m.view(), Pooling::Mean, None, true, None).unwrap_err();
        assert!(matches!(err, Error::NonFinite { row: 0 }), "{err}");
    }

    #[test]
    fn last_and_first_token_follow_left_padding() {
        let h = hidden();
        let m = array![[0_i64, 1, 1], [0, 0, 1]];
        let last = pool(h.view(), m.view(), Pooling::LastToken, None, false, None).unwrap();
        assert_eq!(last, array![[5.0, 4.0], [11.0, 10.0]]);
        let cls = pool(h.view(), m.view(), Pooling::Cls, None, false, None).unwrap();
        assert_eq!(cls, array![[3.0, 2.0], [11.0, 10.0]]);
    }

    #[test]
    fn skip_drops_leading_real_tokens() {
        let h = hidden();
        let m = array![[0_i64, 1, 1], [1, 1, 1]];
        let skip = array![1_i64, 3];
        let mean = pool(
            h.view(),
            m.view(),
            Pooling::Mean,
            Some(skip.view()),
            false,
            None,
        )
        .unwrap();
        assert_eq!(mean, array![[5.0, 4.0], [0.0, 0.0]]);
    }

    #[test]
    fn empty_rows_are_zero_even_normalized() {
        let h = hidden();
        let m = array![[0_i64, 0, 0], [1, 0, 0]];
        for mode in [
            Pooling::Cls,
            Pooling::Mean,
            Pooling::WeightedMean,
            Pooling::LastToken,
        ] {
            let out = pool(h.view(), m.view(), mode, None, true, None).unwrap();
            assert_eq!(out.row(0), array![0.0_f32, 0.0]);
            assert!(out.row(1).iter().all(|x| x.is_finite()));
        }
    }

    #[test]
    fn matryoshka_truncates_then_normalizes() {
        let h = hidden();
        let m = array![[1_i64, 1, 1], [1, 1, 1]];
        let out = pool(h.view(), m.view(), Pooling::LastToken, None, true, Some(1)).unwrap();
        assert_eq!(out, array![[1.0], [1.0]]);
    }

    #[test]
    fn matryoshka_without_normalize_only_truncates() {
        let h = hidden();
        let m = array![[1_i64, 1, 1], [1, 1, 1]];
        let out = pool(h.view(), m.view(), Pooling::LastToken, None, false, Some(1)).unwrap();
        assert_eq!(out, array![[5.0], [11.0]]);
    }

    #[test]
    fn contract_violations_are_errors() {
        let h = hidden();
        let bad_mask = array![[1_i64, 1], [1, 1]];
        assert!(pool(h.view(), bad_mask.view(), Pooling::Mean, None, false, None).is_err());
        let m = array![[1_i64, 1, 1], [1, 1, 1]];
        assert!(pool(h.view(), m.view(), Pooling::Mean, None, false, Some(0)).is_err());
        assert!(pool(h.view(), m.view(), Pooling::Mean, None, false, Some(3)).is_err());
        let neg = array![-1_i64, 0];
        assert!(pool(
            h.view(),
            m.view(),
            Pooling::Mean,
            Some(neg.view()),
            false,
            None
        )
        .is_err());
        let short = array![0_i64];
        assert!(pool(
            h.view(),
            m.view(),
            Pooling::Mean,
            Some(short.view()),
            false,
            None
        )
        .is_err());
        assert!("max".parse::<Pooling>().is_err());
    }

    #[test]
    fn batch_zero_and_seq_one() {
        let h = Array3::<f32>::zeros((0, 4, 3));
        let m = Array2::<i64>::zeros((0, 4));
        assert_eq!(
            pool(h.view(), m.view(), Pooling::Mean, None, true, None)
                .unwrap()
                .dim(),
            (0, 3)
        );
        let h = Array3::<f32>::ones((2, 1, 3));
        let m = array![[1_i64], [0]];
        let out = pool(h.view(), m.view(), Pooling::LastToken, None, false, None).unwrap();
        assert_eq!(out, array![[1.0_f32, 1.0, 1.0], [0.0, 0.0, 0.0]]);
    }
}
