//! Encoding a text piece by piece through a cache of each piece's ids.
//!
//! Notes:
//! - A text is cut at ASCII spaces into pieces that the tokenizer provably encodes
//!   independently, so the text's ids are the concatenation of its pieces' ids. Natural text
//!   repeats its words (Zipf), so after a few thousand texts nearly every piece is a cache hit:
//!   one hash lookup instead of normalizing, pre-tokenizing and building an `Encoding`.
//! - Whether a tokenizer allows this is read from its configuration, not guessed: `PieceRule`
//!   names the three layouts where it holds and why; any other layout (Precompiled or Replace
//!   normalizers, unknown split patterns, BPE dropout, added tokens containing a space or
//!   eating the space after them) gets `None` and is encoded whole, as before.
//! - The cache is shared by every thread (a read lock per text, a write lock only to add
//!   misses) and bounded: at most `MAX_ENTRIES` pieces of at most `MAX_PIECE_BYTES` bytes
//!   (about 10 MB); past that, misses are encoded and not kept.
//! - It never waits for its lock: a text that cannot take the read lock at once is encoded
//!   without the cache, and misses that cannot take the write lock at once are not kept (as
//!   the tokenizers crate's BPE cache does). Waiting would hang a process forked while another
//!   thread held the lock, since the holder does not exist in the child and never releases it;
//!   a cache is only ever a shortcut, so skipping it changes no id.

use std::sync::{RwLock, TryLockError};

use rustc_hash::FxHashMap;
use serde_json::Value;

/// Longest piece (bytes, leading space included) that is cached; longer ones are encoded.
const MAX_PIECE_BYTES: usize = 48;
/// Most pieces kept.
const MAX_ENTRIES: usize = 1 << 17;

/// The regular expressions of byte-level BPE tokenizers that split before ByteLevel: Llama 3's
/// and Qwen2's (also Qwen3's). No alternative can match across a single space between two
/// non-space characters: a space only starts a match or sits in a whitespace run.
const BYTE_LEVEL_PATTERNS: [&str; 2] = [
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+",
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+",
];

/// Where a text may be cut so that its pieces encode independently.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PieceRule {
    /// Cut at every space and drop it: the pre-tokenizer splits on whitespace and removes it
    /// (BERT, Whitespace, WhitespaceSplit) and the normalizer works on each character alone
    /// (BertNormalizer, Lowercase, Unicode forms, StripAccents), keeping spaces as spaces.
    Drop,
    /// Cut before a single space between two non-space characters, the space starting the next
    /// piece: byte-level BPE (GPT-2's regex or `BYTE_LEVEL_PATTERNS`) and Metaspace with
    /// `split`, where every pre-token ends before such a space and the next starts with it.
    Attach,
    /// As `Attach` but the piece is encoded without its space: Llama 2's legacy layout
    /// (normalizer Prepend "▁" + Replace " " -> "▁", no pre-tokenizer), whose Prepend gives each
    /// piece back its "▁"; BPE cannot merge across the cut because no vocabulary token has a
    /// "▁" after another character.
    AttachStripped,
}

impl PieceRule {
    pub fn name(self) -> &'static str {
        match self {
            Self::Drop => "drop",
            Self::Attach => "attach",
            Self::AttachStripped => "attach-stripped",
        }
    }

    /// The pieces of `text`, in order; their encodings concatenate to the text's.
    fn cut(self, text: &str) -> Vec<&str> {
        let bytes = text.as_bytes();
        let mut out = Vec::new();
        let mut start = 0;
        for (i, &b) in bytes.iter().enumerate() {
            if b != b' ' {
                continue;
            }
            if self == Self::Drop {
                if i > start {
                    out.push(&text[start..i]);
                }
                start = i + 1;
            } else if i > start
                && text[..i]
                    .chars()
                    .next_back()
                    .is_some_and(|c| !c.is_whitespace())
                && text[i + 1..]
                    .chars()
                    .next()
                    .is_some_and(|c| !c.is_whitespace())
            {
                out.push(&text[start..i]);
                start = if self == Self::Attach { i } else { i + 1 };
            }
        }
        if start < bytes.len() {
            out.push(&text[start..]);
        }
        out
    }
}

/// A tokenizer's `PieceRule` with the texts it must not cut.
#[derive(Clone, Debug)]
pub struct Splitter {
    rule: PieceRule,
    /// Texts containing one of these are encoded whole: under `AttachStripped` an added token
    /// starts a new normalizer section, where a stripped space would have been kept.
    whole_if_contains: Vec<String>,
}

impl Splitter {
    /// The splitter for a tokenizer's configuration (its tokenizer.json), or `None`.
    pub fn for_config(config: &Value) -> Option<Self> {
        let model = &config["model"];
        if !(model["dropout"].is_null() || model["dropout"].as_f64() == Some(0.0)) {
            return None;
        }
        let added = items(config, "added_tokens");
        let contents: Vec<&str> = added.iter().filter_map(|t| t["content"].as_str()).collect();
        if contents.len() < added.len() || contents.iter().any(|c| c.is_empty() || c.contains(' '))
        {
            return None;
        }
        let rstrip = added.iter().any(|t| t["rstrip"].as_bool() == Some(true));
        let lstrip = added.iter().any(|t| t["lstrip"].as_bool() == Some(true));
        let normalizer = &config["normalizer"];
        let pre = &config["pre_tokenizer"];
        let rule = if drops_spaces(pre) && char_local(normalizer) {
            PieceRule::Drop
        } else if rstrip {
            return None;
        } else if (normalizer.is_null() || kind(normalizer) == "NFC")
            && (byte_level(pre) || metaspace(pre))
        {
            PieceRule::Attach
        } else if pre.is_null()
            && !lstrip
            && !contents.iter().any(|c| c.contains('\u{2581}'))
            && legacy_llama(normalizer)
            && no_inner_space(model)
        {
            PieceRule::AttachStripped
        } else {
            return None;
        };
        let whole_if_contains = if rule == PieceRule::AttachStripped {
            contents.iter().map(|c| (*c).to_string()).collect()
        } else {
            Vec::new()
        };
        Some(Self {
            rule,
            whole_if_contains,
        })
    }

    pub fn rule(&self) -> PieceRule {
        self.rule
    }

    /// The pieces of `text`, whose encodings concatenate to the text's, or `None` when the
    /// text must be encoded whole.
    pub fn pieces<'a>(&self, text: &'a str) -> Option<Vec<&'a str>> {
        if self
            .whole_if_contains
            .iter()
            .any(|c| text.contains(c.as_str()))
        {
            return None;
        }
        Some(self.rule.cut(text))
    }

    /// The word the tokenizer's model sees for `piece`, where the layout lets a miss skip the
    /// tokenizer's pipeline: under `AttachStripped` (no pre-tokenizer, and `pieces` already
    /// refused texts holding an added token) it is the piece after Prepend "▁" and Replace
    /// " " -> "▁". `None`: encode the piece with the whole pipeline.
    pub fn model_word(&self, piece: &str) -> Option<String> {
        (self.rule == PieceRule::AttachStripped)
            .then(|| format!("\u{2581}{}", piece.replace(' ', "\u{2581}")))
    }
}

fn kind(node: &Value) -> &str {
    node["type"].as_str().unwrap_or("")
}

fn items<'a>(node: &'a Value, key: &str) -> &'a [Value] {
    node[key].as_array().map_or(&[][..], Vec::as_slice)
}

fn drops_spaces(pre: &Value) -> bool {
    const SPLITTERS: [&str; 3] = ["BertPreTokenizer", "Whitespace", "WhitespaceSplit"];
    match kind(pre) {
        k if SPLITTERS.contains(&k) => true,
        // Later steps only split the pieces further.
        "Sequence" => {
            let steps = items(pre, "pretokenizers");
            steps.iter().any(|s| SPLITTERS.contains(&kind(s)))
                && steps.iter().all(|s| {
                    SPLITTERS.contains(&kind(s)) || ["Punctuation", "Digits"].contains(&kind(s))
                })
        }
        _ => false,
    }
}

fn char_local(normalizer: &Value) -> bool {
    const LOCAL: [&str; 7] = [
        "BertNormalizer",
        "Lowercase",
        "NFC",
        "NFD",
        "NFKC",
        "NFKD",
        "StripAccents",
    ];
    match kind(normalizer) {
        _ if normalizer.is_null() => true,
        "Sequence" => items(normalizer, "normalizers").iter().all(char_local),
        k => LOCAL.contains(&k),
    }
}

fn byte_level(pre: &Value) -> bool {
    match kind(pre) {
        "ByteLevel" => pre["use_regex"].as_bool() != Some(false),
        "Sequence" => match items(pre, "pretokenizers") {
            [split, level] => {
                kind(split) == "Split"
                    && split["behavior"].as_str() == Some("Isolated")
                    && split["invert"].as_bool() != Some(true)
                    && split["pattern"]["Regex"]
                        .as_str()
                        .is_some_and(|p| BYTE_LEVEL_PATTERNS.contains(&p))
                    && kind(level) == "ByteLevel"
                    && level["use_regex"].as_bool() == Some(false)
            }
            _ => false,
        },
        _ => false,
    }
}

fn metaspace(pre: &Value) -> bool {
    kind(pre) == "Metaspace"
        && pre["split"].as_bool() != Some(false)
        && pre["replacement"].as_str() == Some("\u{2581}")
}

fn legacy_llama(normalizer: &Value) -> bool {
    match items(normalizer, "normalizers") {
        [prepend, replace] => {
            kind(normalizer) == "Sequence"
                && kind(prepend) == "Prepend"
                && prepend["prepend"].as_str() == Some("\u{2581}")
                && kind(replace) == "Replace"
                && replace["pattern"]["String"].as_str() == Some(" ")
                && replace["content"].as_str() == Some("\u{2581}")
        }
        _ => false,
    }
}

/// A BPE vocabulary where "▁" only ever follows "▁" or starts a token.
fn no_inner_space(model: &Value) -> bool {
    kind(model) == "BPE"
        && model["vocab"].as_object().is_some_and(|vocab| {
            vocab.keys().all(|token| {
                let mut prev = None;
                token.chars().all(|c| {
                    let ok = c != '\u{2581}' || prev.is_none_or(|p| p == '\u{2581}');
                    prev = Some(c);
                    ok
                })
            })
        })
}

/// Piece -> ids, shared by all threads.
#[derive(Default)]
pub struct PieceCache {
    map: RwLock<FxHashMap<Box<str>, Box<[u32]>>>,
}

impl PieceCache {
    /// Append the ids of `pieces` to `out`, encoding (and remembering) the ones not seen yet.
    pub fn extend<E>(
        &self,
        pieces: &[&str],
        out: &mut Vec<u32>,
        mut encode: impl FnMut(&str) -> Result<Vec<u32>, E>,
    ) -> Result<(), E> {
        let mut missed: Vec<(&str, Vec<u32>)> = Vec::new();
        {
            let map = at_once(self.map.try_read());
            let known = map.as_ref().map_or(0, |m| m.len());
            for &piece in pieces {
                if let Some(ids) = map.as_ref().and_then(|m| m.get(piece)) {
                    out.extend_from_slice(ids);
                } else {
                    let ids = encode(piece)?;
                    out.extend_from_slice(&ids);
                    if map.is_some()
                        && piece.len() <= MAX_PIECE_BYTES
                        && known + missed.len() < MAX_ENTRIES
                    {
                        missed.push((piece, ids));
                    }
                }
            }
        }
        if !missed.is_empty() {
            let map = at_once(self.map.try_write());
            if let Some(mut map) = map {
                for (piece, ids) in missed {
                    if map.len() < MAX_ENTRIES {
                        map.insert(piece.into(), ids.into());
                    }
                }
            }
        }
        Ok(())
    }

    /// Number of cached pieces (0 while another thread writes).
    pub fn len(&self) -> usize {
        at_once(self.map.try_read()).map_or(0, |m| m.len())
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// The guard if the lock was free (a poisoned map is still whole: inserts are single calls).
fn at_once<G>(attempt: Result<G, TryLockError<G>>) -> Option<G> {
    match attempt {
        Ok(guard) => Some(guard),
        Err(TryLockError::Poisoned(guard)) => Some(guard.into_inner()),
        Err(TryLockError::WouldBlock) => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn pieces_follow_the_rule() {
        let text = " a b  c\td\u{3000} e ";
        assert_eq!(
            PieceRule::Drop.cut(text),
            vec!["a", "b", "c\td\u{3000}", "e"]
        );
        // Only single spaces between non-space characters cut.
        assert_eq!(
            PieceRule::Attach.cut(text),
            vec![" a", " b  c\td\u{3000} e "]
        );
        assert_eq!(
            PieceRule::AttachStripped.cut("x y.  z é"),
            vec!["x", "y.  z", "é"]
        );
        assert!(PieceRule::Attach.cut("").is_empty());
    }

    fn config(normalizer: Value, pre: Value, model: Value, added: Value) -> Value {
        json!({"normalizer": normalizer, "pre_tokenizer": pre, "model": model, "added_tokens": added})
    }

    #[test]
    fn rules_come_from_the_configuration() {
        let wp = json!({"type": "WordPiece", "vocab": {}});
        let bert = json!({"type": "BertNormalizer", "lowercase": true});
        let none = json!([]);
        let rule = |n, p, m, a| Splitter::for_config(&config(n, p, m, a)).map(|s| s.rule());
        assert_eq!(
            rule(
                bert.clone(),
                json!({"type": "BertPreTokenizer"}),
                wp.clone(),
                none.clone()
            ),
            Some(PieceRule::Drop)
        );
        // A normalizer that rewrites across characters: encode whole.
        let replace = json!({"type": "Replace", "pattern": {"String": "  "}, "content": " "});
        assert_eq!(
            rule(
                replace,
                json!({"type": "WhitespaceSplit"}),
                wp.clone(),
                none.clone()
            ),
            None
        );
        // An added token containing a space, or one eating the space after it.
        let spaced = json!([{"content": "<a b>", "lstrip": false, "rstrip": false}]);
        assert_eq!(
            rule(
                bert.clone(),
                json!({"type": "BertPreTokenizer"}),
                wp.clone(),
                spaced
            ),
            None
        );
        let bpe = json!({"type": "BPE", "dropout": null, "vocab": {"\u{2581}a": 0, "\u{2581}\u{2581}": 1}});
        let gpt2 = json!({"type": "ByteLevel", "use_regex": true});
        assert_eq!(
            rule(Value::Null, gpt2.clone(), bpe.clone(), none.clone()),
            Some(PieceRule::Attach)
        );
        let eats = json!([{"content": "<m>", "lstrip": false, "rstrip": true}]);
        assert_eq!(rule(Value::Null, gpt2.clone(), bpe.clone(), eats), None);
        let dropout = json!({"type": "BPE", "dropout": 0.1, "vocab": {}});
        assert_eq!(rule(Value::Null, gpt2, dropout, none.clone()), None);
        let unknown_split = json!({"type": "Sequence", "pretokenizers": [
            {"type": "Split", "pattern": {"Regex": "\\s+"}, "behavior": "Isolated", "invert": false},
            {"type": "ByteLevel", "use_regex": false}]});
        assert_eq!(
            rule(Value::Null, unknown_split, bpe.clone(), none.clone()),
            None
        );
        let llama = json!({"type": "Sequence", "normalizers": [
            {"type": "Prepend", "prepend": "\u{2581}"},
            {"type": "Replace", "pattern": {"String": " "}, "content": "\u{2581}"}]});
        assert_eq!(
            rule(llama.clone(), Value::Null, bpe.clone(), none.clone()),
            Some(PieceRule::AttachStripped)
        );
        let inner = json!({"type": "BPE", "dropout": null, "vocab": {"a\u{2581}b": 0}});
        assert_eq!(rule(llama.clone(), Value::Null, inner, none), None);
        // An added token restarts Prepend's section: texts holding one are encoded whole.
        let s = json!([{"content": "<s>", "lstrip": false, "rstrip": false}]);
        let splitter = Splitter::for_config(&config(llama, Value::Null, bpe, s)).unwrap();
        assert_eq!(splitter.pieces("a <s> b"), None);
        assert_eq!(splitter.pieces("a b"), Some(vec!["a", "b"]));
        assert_eq!(
            splitter.model_word("y.  z").as_deref(),
            Some("\u{2581}y.\u{2581}\u{2581}z")
        );
    }

    #[test]
    fn cache_concatenates_and_remembers() {
        let cache = PieceCache::default();
        let calls = std::cell::Cell::new(0);
        let encode = |p: &str| -> Result<Vec<u32>, ()> {
            calls.set(calls.get() + 1);
            Ok(p.bytes().map(u32::from).collect())
        };
        let mut out = Vec::new();
        cache.extend(&["ab", "c", "ab"], &mut out, encode).unwrap();
        cache.extend(&["c"], &mut out, encode).unwrap();
        assert_eq!(out, vec![97, 98, 99, 97, 98, 99]);
        // "ab" is encoded twice within the first call (not yet shared), then never again.
        assert_eq!(calls.get(), 3);
        assert_eq!(cache.len(), 2);
        let long = "x".repeat(MAX_PIECE_BYTES + 1);
        cache.extend(&[long.as_str()], &mut out, encode).unwrap();
        assert_eq!(cache.len(), 2);
    }
}
