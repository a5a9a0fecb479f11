//! Batch tokenization with the `tokenizers` crate.
//!
//! Notes:
//! - Texts are encoded in parallel on rayon's pool; callers release the GIL around `encode`.
//! - The tokenizer.json's own truncation and padding are switched off: truncation here leaves room
//!   for the special tokens of the post-processor *and* for the ids the manifest inserts around
//!   the text (SGPT's brackets, an appended EOS), and padding happens per batch in `Encoded::pad`
//!   after the caller has sorted texts by length.
//! - A text longer than its token budget could need is cut before it is tokenized, so its
//!   cost follows the tokens kept, not its length (a 20 MB text on a 256-token model would
//!   otherwise hold about 90 bytes of tokenizer state per input byte). The head is the first
//!   `CUT_BYTES_PER_TOKEN` bytes per token kept, cut before its last ASCII space: every
//!   layout splits words there (WordPiece's whitespace, byte-level BPE's regex, Metaspace;
//!   other Unicode spaces are not word breaks for Metaspace), and normalizers and models act
//!   within words, so the head's complete words get the tokens the whole text gives them.
//!   Only what spans the cut (an added token holding a space, a whitespace run) can differ,
//!   and it lies at the head's end: the head must yield `CUT_MARGIN` tokens past the budget.
//!   A head that falls short (long tokens, stripped whitespace) or holds no space is doubled
//!   and tokenized again, so the work stays within about twice what the kept tokens need. A
//!   text is never cut inside a word: a long run without spaces is tokenized whole.
//! - The result stays ragged (`Vec<Vec<u32>>`) inside Rust so a long chunk of texts never needs
//!   one (chunk, longest) padded array.

use std::path::Path;
use std::str::FromStr;

use ndarray::{Array1, Array2};
use rayon::prelude::*;
use serde_json::{json, Value};
use tokenizers::{Encoding, Model, ModelWrapper, PostProcessor, Token, TruncationDirection};

use crate::error::{Error, Result};
use crate::pieces::{PieceCache, PieceRule, Splitter};

/// Largest tokenizer.json loaded (the largest published ones are tens of MB).
const MAX_TOKENIZER_BYTES: u64 = 512 << 20;

/// Bytes of text tokenized first per token kept (English runs about 4 to 5 per token).
const CUT_BYTES_PER_TOKEN: usize = 8;
/// Shortest head that is cut off a long text.
const CUT_MIN_BYTES: usize = 4096;
/// Tokens a cut head must give past the budget before its first tokens are taken as the text's.
const CUT_MARGIN: usize = 64;

/// The text's first `room` bytes cut before the last ASCII space in them; `None` when they
/// hold none.
fn head(text: &str, room: usize) -> Option<&str> {
    let mut end = room.min(text.len());
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    text[..end].rfind(' ').map(|at| &text[..at])
}

/// Which end of a row the pad tokens go to.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PaddingSide {
    Left,
    Right,
}

impl Default for EncodeOptions {
    fn default() -> Self {
        Self {
            add_special_tokens: true,
            max_length: None,
            prefix_ids: Vec::new(),
            suffix_ids: Vec::new(),
            parallel: true,
        }
    }
}

impl FromStr for PaddingSide {
    type Err = Error;

    fn from_str(name: &str) -> Result<Self> {
        match name {
            "left" => Ok(Self::Left),
            "right" => Ok(Self::Right),
            other => Err(Error::InvalidArgument(format!(
                "padding side must be \"left\" or \"right\", got {other:?}"
            ))),
        }
    }
}

/// How texts become rows of token ids.
#[derive(Clone, Debug)]
pub struct EncodeOptions {
    /// Apply the tokenizer's post-processor (BOS/EOS, `[CLS]`/`[SEP]`).
    pub add_special_tokens: bool,
    /// Longest row, special and inserted tokens included; `None` keeps every token.
    pub max_length: Option<usize>,
    /// Ids inserted right before the text's tokens (inside any special tokens).
    pub prefix_ids: Vec<u32>,
    /// Ids inserted right after the text's tokens (inside any special tokens).
    pub suffix_ids: Vec<u32>,
    /// Encode texts on rayon's pool (off in a forked child whose pool threads are gone).
    pub parallel: bool,
}

/// A tokenizer loaded from tokenizer.json; shareable across threads.
///
/// Ids without special tokens go through a piece cache (`pieces`) when the tokenizer's layout
/// allows it: the same ids as the whole text's encoding, several times faster on natural text.
pub struct TextTokenizer {
    inner: tokenizers::Tokenizer,
    splitter: Option<Splitter>,
    cache: PieceCache,
}

impl TextTokenizer {
    pub fn from_file(path: &Path) -> Result<Self> {
        let size = match std::fs::metadata(path) {
            Ok(meta) if meta.is_file() => meta.len(),
            _ => {
                return Err(Error::FileNotFound {
                    path: path.to_path_buf(),
                })
            }
        };
        // Checked before reading: the file is parsed whole, at several times its size.
        if size > MAX_TOKENIZER_BYTES {
            return Err(Error::CorruptFile {
                path: path.to_path_buf(),
                reason: format!(
                    "{size} bytes; a tokenizer.json is at most {MAX_TOKENIZER_BYTES} bytes"
                ),
            });
        }
        let inner = tokenizers::Tokenizer::from_file(path).map_err(|e| Error::CorruptFile {
            path: path.to_path_buf(),
            reason: e.to_string(),
        })?;
        Ok(Self::new(inner))
    }

    pub fn from_json(json: &str) -> Result<Self> {
        let inner = tokenizers::Tokenizer::from_str(json).map_err(|e| Error::CorruptFile {
            path: "<tokenizer json>".into(),
            reason: e.to_string(),
        })?;
        Ok(Self::new(inner))
    }

    fn new(mut inner: tokenizers::Tokenizer) -> Self {
        inner.with_padding(None);
        // Only fails for a stride larger than max length, which None cannot have.
        let _ = inner.with_truncation(None);
        let splitter = Splitter::for_config(&piece_config(&inner));
        Self {
            inner,
            splitter,
            cache: PieceCache::default(),
        }
    }

    /// Stop using the piece cache: every text is encoded whole by the `tokenizers` crate.
    #[must_use]
    pub fn without_cache(mut self) -> Self {
        self.splitter = None;
        self
    }

    /// How texts are cut for the piece cache, if they are.
    pub fn piece_rule(&self) -> Option<PieceRule> {
        self.splitter.as_ref().map(Splitter::rule)
    }

    pub fn token_to_id(&self, token: &str) -> Option<u32> {
        self.inner.token_to_id(token)
    }

    pub fn vocab_size(&self) -> usize {
        self.inner.get_vocab_size(true)
    }

    /// Number of special tokens the post-processor adds to one text.
    fn special_count(&self, opts: &EncodeOptions) -> usize {
        if !opts.add_special_tokens {
            return 0;
        }
        self.inner
            .get_post_processor()
            .map_or(0, |p| p.added_tokens(false))
    }

    /// Encode `texts`; with an `instruction`, each row encodes `instruction + text` and records
    /// how many leading tokens (special, prefix ids and instruction) to skip in pooling.
    pub fn encode(
        &self,
        texts: &[String],
        instruction: Option<&str>,
        opts: &EncodeOptions,
    ) -> Result<Encoded> {
        let overhead = self.special_count(opts) + opts.prefix_ids.len() + opts.suffix_ids.len();
        let budget = match opts.max_length {
            Some(max) if max <= overhead => {
                return Err(Error::InvalidArgument(format!(
                    "max_length {max} leaves no room for text: {overhead} tokens are added to every row"
                )))
            }
            Some(max) => Some(max - overhead),
            None => None,
        };
        let prefix = self.id_tokens(&opts.prefix_ids)?;
        let suffix = self.id_tokens(&opts.suffix_ids)?;
        // The instruction's length (the pooling skip) is the same for every text: count it once.
        let instruction = instruction
            .map(|ins| -> Result<(&str, usize)> {
                let enc = self.inner.encode_fast(ins, false).map_err(|e| {
                    Error::InvalidArgument(format!("the instruction cannot be tokenized: {e}"))
                })?;
                Ok((ins, enc.len()))
            })
            .transpose()?;
        let plan = RowPlan {
            instruction,
            budget,
            prefix: &prefix,
            suffix: &suffix,
            add_special_tokens: opts.add_special_tokens,
        };
        let one = |(i, text): (usize, &String)| self.encode_one(i, text, &plan);
        let rows: Vec<(Vec<u32>, usize)> = if opts.parallel {
            texts
                .par_iter()
                .enumerate()
                .map(one)
                .collect::<Result<_>>()?
        } else {
            texts.iter().enumerate().map(one).collect::<Result<_>>()?
        };
        let (ids, skip) = rows.into_iter().unzip();
        Ok(Encoded { ids, skip })
    }

    /// Append the token ids of one text, untruncated, with nothing inserted, to `out`;
    /// `index` names the text in errors.
    pub fn ids_into(
        &self,
        index: usize,
        text: &str,
        add_special_tokens: bool,
        out: &mut Vec<u32>,
    ) -> Result<()> {
        if self.piece_ids(index, text, add_special_tokens, out)? {
            return Ok(());
        }
        let plan = RowPlan {
            instruction: None,
            budget: None,
            prefix: &[],
            suffix: &[],
            add_special_tokens,
        };
        let (ids, _, _) = self.encode_whole(index, text, &plan)?;
        out.extend_from_slice(&ids);
        Ok(())
    }

    /// Append the text's ids from the piece cache; `false` (nothing appended) when this text or
    /// this tokenizer must be encoded whole.
    fn piece_ids(
        &self,
        index: usize,
        text: &str,
        add_special_tokens: bool,
        out: &mut Vec<u32>,
    ) -> Result<bool> {
        let Some(splitter) = self.splitter.as_ref().filter(|_| !add_special_tokens) else {
            return Ok(false);
        };
        let Some(pieces) = splitter.pieces(text) else {
            return Ok(false);
        };
        let fail = |e: tokenizers::Error| Error::Tokenize {
            index,
            reason: e.to_string(),
        };
        self.cache.extend(&pieces, out, |piece| {
            if let Some(word) = splitter.model_word(piece) {
                let tokens = self.inner.get_model().tokenize(&word).map_err(fail)?;
                return Ok(tokens.iter().map(|t| t.id).collect());
            }
            let enc = self.inner.encode_fast(piece, false).map_err(fail)?;
            Ok(enc.get_ids().to_vec())
        })?;
        Ok(true)
    }

    fn id_tokens(&self, ids: &[u32]) -> Result<Vec<Token>> {
        ids.iter()
            .map(|&id| {
                let value = self.inner.id_to_token(id).ok_or_else(|| {
                    Error::InvalidArgument(format!(
                        "token id {id} is not in the tokenizer's vocabulary of {}",
                        self.vocab_size()
                    ))
                })?;
                Ok(Token::new(id, value, (0, 0)))
            })
            .collect()
    }

    /// One row: the ids of `text` (cut to the plan's budget) and its pooling skip.
    fn encode_one(&self, index: usize, text: &str, plan: &RowPlan) -> Result<(Vec<u32>, usize)> {
        let Some(budget) = plan.budget else {
            let (ids, skip, _) = self.encode_text(index, text, plan)?;
            return Ok((ids, skip));
        };
        let mut room = budget
            .saturating_mul(CUT_BYTES_PER_TOKEN)
            .max(CUT_MIN_BYTES);
        while text.len() > room {
            if let Some(part) = head(text, room) {
                let (ids, skip, tokens) = self.encode_text(index, part, plan)?;
                if tokens >= budget.saturating_add(CUT_MARGIN) {
                    return Ok((ids, skip));
                }
            }
            room = room.saturating_mul(2);
        }
        let (ids, skip, _) = self.encode_text(index, text, plan)?;
        Ok((ids, skip))
    }

    /// `encode_one` of the whole `text`, with the number of tokens it had before the cut to
    /// the budget (instruction included).
    fn encode_text(
        &self,
        index: usize,
        text: &str,
        plan: &RowPlan,
    ) -> Result<(Vec<u32>, usize, usize)> {
        if plan.instruction.is_none() && plan.prefix.is_empty() && plan.suffix.is_empty() {
            let mut ids = Vec::new();
            if self.piece_ids(index, text, plan.add_special_tokens, &mut ids)? {
                let tokens = ids.len();
                ids.truncate(plan.budget.unwrap_or(usize::MAX));
                return Ok((ids, 0, tokens));
            }
        }
        self.encode_whole(index, text, plan)
    }

    /// `encode_text` through the tokenizers crate's full pipeline, the text encoded whole.
    fn encode_whole(
        &self,
        index: usize,
        text: &str,
        plan: &RowPlan,
    ) -> Result<(Vec<u32>, usize, usize)> {
        let RowPlan {
            instruction,
            budget,
            prefix,
            suffix,
            add_special_tokens,
        } = *plan;
        let fail = |e: tokenizers::Error| Error::Tokenize {
            index,
            reason: e.to_string(),
        };
        let (mut enc, instruction_len) = match instruction {
            None => (self.inner.encode_fast(text, false).map_err(fail)?, 0),
            Some((ins, n)) => {
                let full = format!("{ins}{text}");
                (
                    self.inner.encode_fast(full.as_str(), false).map_err(fail)?,
                    n,
                )
            }
        };
        let tokens = enc.len();
        if let Some(budget) = budget {
            if tokens > budget {
                enc.truncate(budget, 0, TruncationDirection::Right);
                // Overflowing pieces would be post-processed too; nobody reads them.
                drop(enc.take_overflowing());
            }
        }
        if !prefix.is_empty() || !suffix.is_empty() {
            enc = Encoding::merge(
                [
                    Encoding::from_tokens(prefix.to_vec(), 0),
                    enc,
                    Encoding::from_tokens(suffix.to_vec(), 0),
                ],
                false,
            );
        }
        let mut leading = 0;
        if add_special_tokens {
            enc = self.inner.post_process(enc, None, true).map_err(fail)?;
            leading = enc
                .get_sequence_ids()
                .iter()
                .position(Option::is_some)
                .unwrap_or(0);
        }
        let skip = if instruction.is_some() {
            (leading + prefix.len() + instruction_len).min(enc.len())
        } else {
            0
        };
        Ok((enc.get_ids().to_vec(), skip, tokens))
    }
}

/// How every row of one `encode` call is built: the instruction before the text (with its
/// token count, the pooling skip), the text's token budget, the ids inserted around it, and
/// whether the post-processor's special tokens are added.
#[derive(Clone, Copy)]
struct RowPlan<'a> {
    instruction: Option<(&'a str, usize)>,
    budget: Option<usize>,
    prefix: &'a [Token],
    suffix: &'a [Token],
    add_special_tokens: bool,
}

/// What `PieceRule::for_config` reads: normalizer, pre-tokenizer, added tokens, and the model's
/// type and dropout (its vocabulary only where the rule needs it, Llama 2's legacy layout).
fn piece_config(tokenizer: &tokenizers::Tokenizer) -> Value {
    let to_value = |v: Option<Value>| v.unwrap_or(Value::Null);
    let pre = to_value(
        tokenizer
            .get_pre_tokenizer()
            .and_then(|p| serde_json::to_value(p).ok()),
    );
    let model = match tokenizer.get_model() {
        ModelWrapper::BPE(bpe) if pre.is_null() => {
            json!({"type": "BPE", "dropout": bpe.dropout, "vocab": bpe.get_vocab()})
        }
        ModelWrapper::BPE(bpe) => json!({"type": "BPE", "dropout": bpe.dropout}),
        ModelWrapper::WordPiece(_) => json!({"type": "WordPiece"}),
        ModelWrapper::WordLevel(_) => json!({"type": "WordLevel"}),
        ModelWrapper::Unigram(_) => json!({"type": "Unigram"}),
    };
    let added: Vec<Value> = tokenizer
        .get_added_tokens_decoder()
        .values()
        .filter_map(|t| serde_json::to_value(t).ok())
        .collect();
    json!({
        "normalizer": to_value(tokenizer.get_normalizer().and_then(|n| serde_json::to_value(n).ok())),
        "pre_tokenizer": pre,
        "model": model,
        "added_tokens": added,
    })
}

/// Token ids of a batch of texts, unpadded, with per-row pooling skips.
#[derive(Clone, Debug)]
pub struct Encoded {
    ids: Vec<Vec<u32>>,
    skip: Vec<usize>,
}

/// One padded batch: int64 `(batch, seq)` ids and mask, `(batch,)` skip, optional positions.
pub struct Padded {
    pub ids: Array2<i64>,
    pub mask: Array2<i64>,
    pub skip: Array1<i64>,
    pub positions: Option<Array2<i64>>,
}

impl Encoded {
    /// Rows a caller tokenized already (token ids as the model reads them), each cut to
    /// `max_length` ids when given; every id must be below `vocab_size`.
    pub fn from_ids(
        rows: Vec<Vec<u32>>,
        vocab_size: usize,
        max_length: Option<usize>,
    ) -> Result<Encoded> {
        let mut ids = rows;
        for (i, row) in ids.iter_mut().enumerate() {
            if let Some(&bad) = row.iter().find(|&&id| id as usize >= vocab_size) {
                return Err(Error::InvalidArgument(format!(
                    "input {i} holds token id {bad}, outside the vocabulary of {vocab_size}"
                )));
            }
            row.truncate(max_length.unwrap_or(usize::MAX));
        }
        let skip = vec![0; ids.len()];
        Ok(Encoded { ids, skip })
    }

    /// The token ids of every row.
    pub fn rows(&self) -> &[Vec<u32>] {
        &self.ids
    }

    pub fn len(&self) -> usize {
        self.ids.len()
    }

    pub fn is_empty(&self) -> bool {
        self.ids.is_empty()
    }

    /// Tokens per row, special and inserted tokens included.
    pub fn lengths(&self) -> Vec<usize> {
        self.ids.iter().map(Vec::len).collect()
    }

    pub fn row(&self, i: usize) -> Option<&[u32]> {
        self.ids.get(i).map(Vec::as_slice)
    }

    /// SGPT's rerank rows (crossencoder/beir/sgptce.py): row `i` is this encoding's row `i`
    /// (a prompt holding a document) whose first `keep` ids (the prompt's head) are kept,
    /// then the rest followed by `queries`' row `i`, cut from the left to `room` ids when
    /// given, and the last id dropped (the query's tokens are predicted, not read, at the end).
    ///
    /// A query must have tokens and, when `room` is given, fewer than `room` of them (queries
    /// are never cut); the first pair that breaks this is named in the error, counted from
    /// `first` (the chunk's offset in the caller's input).
    pub fn rerank_rows(
        &self,
        queries: &Encoded,
        keep: usize,
        room: Option<usize>,
        first: usize,
    ) -> Result<Encoded> {
        if queries.len() != self.len() {
            return Err(Error::InvalidArgument(format!(
                "got {} queries for {} contexts",
                queries.len(),
                self.len()
            )));
        }
        let ids = self
            .ids
            .iter()
            .zip(&queries.ids)
            .enumerate()
            .map(|(i, (context, query))| {
                let pair = first + i;
                if query.is_empty() {
                    return Err(Error::InvalidArgument(format!(
                        "query of pair {pair} has no tokens to score"
                    )));
                }
                if let Some(r) = room.filter(|&r| query.len() >= r) {
                    return Err(Error::QueryTooLong {
                        pair,
                        tokens: query.len(),
                        max_length: r + keep - 1,
                    });
                }
                let head = keep.min(context.len());
                let tail_len = context.len() - head + query.len();
                let cut = room.map_or(0, |r| tail_len.saturating_sub(r));
                let mut row = Vec::with_capacity(head + tail_len - cut);
                row.extend_from_slice(&context[..head]);
                row.extend(
                    context[head..]
                        .iter()
                        .chain(query.iter())
                        .skip(cut)
                        .copied(),
                );
                row.pop();
                Ok(row)
            })
            .collect::<Result<Vec<_>>>()?;
        let skip = vec![0; ids.len()];
        Ok(Encoded { ids, skip })
    }

    /// Pad the chosen `rows` (in that order) to the longest of them.
    ///
    /// Position ids, when asked for, count real tokens from 0 and are 1 on padding, as
    /// transformers computes them from an attention mask.
    pub fn pad(
        &self,
        rows: &[usize],
        side: PaddingSide,
        pad_id: i64,
        positions: bool,
    ) -> Result<Padded> {
        if let Some(&bad) = rows.iter().find(|&&r| r >= self.ids.len()) {
            return Err(Error::InvalidArgument(format!(
                "row {bad} out of range for {} encoded texts",
                self.ids.len()
            )));
        }
        let seq = rows.iter().map(|&r| self.ids[r].len()).max().unwrap_or(0);
        let mut ids = Array2::<i64>::from_elem((rows.len(), seq), pad_id);
        let mut mask = Array2::<i64>::zeros((rows.len(), seq));
        let mut pos = positions.then(|| Array2::<i64>::ones((rows.len(), seq)));
        for (b, &r) in rows.iter().enumerate() {
            let row = &self.ids[r];
            let start = match side {
                PaddingSide::Right => 0,
                PaddingSide::Left => seq - row.len(),
            };
            for (k, &id) in row.iter().enumerate() {
                ids[[b, start + k]] = i64::from(id);
                mask[[b, start + k]] = 1;
                if let Some(p) = pos.as_mut() {
                    p[[b, start + k]] = k as i64;
                }
            }
        }
        let skip = rows.iter().map(|&r| self.skip[r] as i64).collect();
        Ok(Padded {
            ids,
            mask,
            skip,
            positions: pos,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A word-level tokenizer with BERT-style `[CLS] ... [SEP]` post-processing.
    fn tokenizer(with_specials: bool) -> TextTokenizer {
        let post = if with_specials {
            r#"{"type": "BertProcessing", "sep": ["[SEP]", 3], "cls": ["[CLS]", 2]}"#
        } else {
            "null"
        };
        let json = format!(
            r#"{{
              "version": "1.0", "truncation": {{"max_length": 2, "strategy": "LongestFirst", "stride": 0, "direction": "Right"}},
              "padding": null, "added_tokens": [],
              "normalizer": {{"type": "Lowercase"}},
              "pre_tokenizer": {{"type": "Whitespace"}},
              "post_processor": {post}, "decoder": null,
              "model": {{"type": "WordLevel", "unk_token": "[UNK]",
                "vocab": {{"[PAD]": 0, "[UNK]": 1, "[CLS]": 2, "[SEP]": 3, "a": 4, "b": 5, "c": 6, "d": 7, "[": 8, "]": 9}}}}
            }}"#
        );
        TextTokenizer::from_json(&json).unwrap()
    }

    fn texts(items: &[&str]) -> Vec<String> {
        items.iter().map(|s| (*s).to_string()).collect()
    }

    #[test]
    fn specials_prefix_suffix_and_truncation() {
        let tok = tokenizer(true);
        let opts = EncodeOptions {
            add_special_tokens: true,
            max_length: Some(6),
            prefix_ids: vec![8],
            suffix_ids: vec![9],
            ..EncodeOptions::default()
        };
        let enc = tok.encode(&texts(&["a b c d", "A"]), None, &opts).unwrap();
        // The file's own truncation (2) is ignored; room is left for [CLS] [ [SEP] ].
        assert_eq!(enc.row(0).unwrap(), &[2, 8, 4, 5, 9, 3]);
        assert_eq!(enc.row(1).unwrap(), &[2, 8, 4, 9, 3]);
        assert_eq!(enc.lengths(), vec![6, 5]);
    }

    #[test]
    fn max_length_without_room_is_an_error() {
        let tok = tokenizer(true);
        let opts = EncodeOptions {
            add_special_tokens: true,
            max_length: Some(2),
            ..EncodeOptions::default()
        };
        assert!(tok.encode(&texts(&["a"]), None, &opts).is_err());
    }

    #[test]
    fn instruction_length_counts_leading_specials() {
        let tok = tokenizer(true);
        let opts = EncodeOptions {
            add_special_tokens: true,
            ..EncodeOptions::default()
        };
        let enc = tok
            .encode(&texts(&["c d", ""]), Some("a b "), &opts)
            .unwrap();
        assert_eq!(enc.row(0).unwrap(), &[2, 4, 5, 6, 7, 3]);
        let padded = enc.pad(&[0, 1], PaddingSide::Right, 0, false).unwrap();
        assert_eq!(padded.skip.to_vec(), vec![3, 3]);
        // Cut by max_length: the skip never passes the row's end.
        let short = EncodeOptions {
            max_length: Some(3),
            ..opts
        };
        let cut = tok.encode(&texts(&["c d"]), Some("a b "), &short).unwrap();
        assert_eq!(cut.row(0).unwrap(), &[2, 4, 3]);
        assert_eq!(
            cut.pad(&[0], PaddingSide::Right, 0, false)
                .unwrap()
                .skip
                .to_vec(),
            vec![3]
        );
    }

    #[test]
    fn pad_both_sides_with_positions() {
        let tok = tokenizer(false);
        let enc = tok
            .encode(&texts(&["a b c", "d"]), None, &EncodeOptions::default())
            .unwrap();
        let right = enc.pad(&[1, 0], PaddingSide::Right, 0, true).unwrap();
        assert_eq!(right.ids, ndarray::array![[7, 0, 0], [4, 5, 6]]);
        assert_eq!(right.mask, ndarray::array![[1, 0, 0], [1, 1, 1]]);
        assert_eq!(
            right.positions.unwrap(),
            ndarray::array![[0, 1, 1], [0, 1, 2]]
        );
        let left = enc.pad(&[1, 0], PaddingSide::Left, -1, true).unwrap();
        assert_eq!(left.ids, ndarray::array![[-1, -1, 7], [4, 5, 6]]);
        assert_eq!(left.mask, ndarray::array![[0, 0, 1], [1, 1, 1]]);
        assert_eq!(
            left.positions.unwrap(),
            ndarray::array![[1, 1, 0], [0, 1, 2]]
        );
        assert!(enc.pad(&[2], PaddingSide::Left, 0, false).is_err());
        assert_eq!(
            enc.pad(&[], PaddingSide::Left, 0, false).unwrap().ids.dim(),
            (0, 0)
        );
    }

    #[test]
    fn rerank_rows_keep_the_head_and_cut_the_document() {
        let tok = tokenizer(false);
        let opts = EncodeOptions::default();
        let contexts = tok.encode(&texts(&["a b c d", "a"]), None, &opts).unwrap();
        let queries = tok.encode(&texts(&["b c", "d"]), None, &opts).unwrap();
        let rows = contexts.rerank_rows(&queries, 1, None, 0).unwrap();
        assert_eq!(rows.row(0).unwrap(), &[4, 5, 6, 7, 5]);
        assert_eq!(rows.row(1).unwrap(), &[4]);
        // Room for 3 ids after the head: the document loses its start, the query stays whole.
        let cut = contexts.rerank_rows(&queries, 1, Some(3), 0).unwrap();
        assert_eq!(cut.row(0).unwrap(), &[4, 7, 5]);
        assert_eq!(cut.row(1).unwrap(), &[4]);
        // Pair 0's query has 2 ids, too many for a room of 2; counted from the chunk's offset 7.
        let long = contexts.rerank_rows(&queries, 1, Some(2), 7).unwrap_err();
        assert!(
            matches!(
                long,
                Error::QueryTooLong {
                    pair: 7,
                    tokens: 2,
                    max_length: 2
                }
            ),
            "{long}"
        );
        assert!(long.to_string().contains("pair 7 has 2 tokens"), "{long}");
        let empty = tok.encode(&texts(&["b", ""]), None, &opts).unwrap();
        let none = contexts.rerank_rows(&empty, 1, None, 0).unwrap_err();
        assert!(none.to_string().contains("pair 1 has no tokens"), "{none}");
        assert!(contexts
            .rerank_rows(&tok.encode(&[], None, &opts).unwrap(), 1, None, 0)
            .is_err());
    }

    #[test]
    fn rows_from_ids_are_checked_and_cut() {
        let rows = Encoded::from_ids(vec![vec![1, 2, 3], vec![4]], 10, Some(2)).unwrap();
        assert_eq!(rows.row(0).unwrap(), &[1, 2]);
        assert_eq!(rows.row(1).unwrap(), &[4]);
        let err = Encoded::from_ids(vec![vec![1], vec![10]], 10, None).unwrap_err();
        assert!(
            err.to_string().contains("input 1 holds token id 10"),
            "{err}"
        );
    }

    #[test]
    fn unknown_ids_and_files_are_errors() {
        let tok = tokenizer(false);
        let opts = EncodeOptions {
            prefix_ids: vec![1000],
            ..EncodeOptions::default()
        };
        assert!(tok.encode(&texts(&["a"]), None, &opts).is_err());
        assert!(matches!(
            TextTokenizer::from_file(Path::new("/nonexistent/tokenizer.json")),
            Err(Error::FileNotFound { .. })
        ));
        assert!(TextTokenizer::from_json("{not json").is_err());
    }
}
