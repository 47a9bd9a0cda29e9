//! Tokenizers in the Hugging Face `tokenizer.json` format: train a byte-level BPE on a corpus, or
//! load any existing one (GPT-2, SmolLM2, …).

use std::path::Path;

use sha2::{Digest, Sha256};
use tokenizers::decoders::byte_level::ByteLevel as ByteLevelDecoder;
use tokenizers::models::bpe::{BpeTrainerBuilder, BPE};
use tokenizers::models::TrainerWrapper;
use tokenizers::pre_tokenizers::byte_level::ByteLevel;
use tokenizers::{AddedToken, Tokenizer};

use crate::source::END_OF_TEXT;
use crate::DataError;

/// A tokenizer with the end-of-text token every document is terminated by.
#[derive(Clone)]
pub struct TextTokenizer {
    inner: Tokenizer,
    end_of_text: u32,
    fingerprint: String,
}

impl std::fmt::Debug for TextTokenizer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TextTokenizer")
            .field("vocab_size", &self.vocab_size())
            .field("end_of_text", &self.end_of_text)
            .field("fingerprint", &self.fingerprint)
            .finish()
    }
}

impl TextTokenizer {
    /// Trains a byte-level BPE with `vocab_size` entries (including `<|endoftext|>`) on `texts`.
    /// The byte-level alphabet is always included and no prefix space is added, so
    /// `decode(encode(text)) == text` for every text.
    pub fn train<S: AsRef<str> + Send>(
        texts: impl Iterator<Item = S> + Send,
        vocab_size: usize,
        show_progress: bool,
    ) -> Result<Self, DataError> {
        let min_vocab = ByteLevel::alphabet().len() + 1;
        if vocab_size < min_vocab {
            return Err(DataError::Invalid(format!(
                "tokenizer vocab_size {vocab_size} is below the byte-level alphabet plus <|endoftext|> ({min_vocab})"
            )));
        }
        let mut tokenizer = Tokenizer::new(BPE::default());
        tokenizer.with_pre_tokenizer(Some(ByteLevel::default().add_prefix_space(false)));
        tokenizer.with_decoder(Some(ByteLevelDecoder::default()));
        let mut trainer: TrainerWrapper = BpeTrainerBuilder::new()
            .show_progress(show_progress)
            .vocab_size(vocab_size)
            .min_frequency(2)
            .initial_alphabet(ByteLevel::alphabet().into_iter().collect())
            .special_tokens(vec![AddedToken::from(END_OF_TEXT, true)])
            .build()
            .into();
        tokenizer.train(&mut trainer, texts).map_err(|e| DataError::Tokenizer(format!("training failed: {e}")))?;
        Self::from_tokenizer(tokenizer, Path::new("<trained>"))
    }

    /// Loads a `tokenizer.json`. It must contain an `<|endoftext|>` token.
    pub fn load(path: &Path) -> Result<Self, DataError> {
        if !path.exists() {
            return Err(DataError::io(path, std::io::Error::new(std::io::ErrorKind::NotFound, "no such file")));
        }
        // tokenizers 0.23.2 panics on some malformed files instead of failing (found by fuzzing:
        // `decoders/mod.rs:90`, `expect("Helper")` on a decoder it cannot deserialize).
        let loaded =
            memsinks_core::catch_library_panic(|| Tokenizer::from_file(path)).ok_or_else(|| DataError::Format {
                path: path.to_path_buf(),
                message: "not a Hugging Face tokenizer.json (the tokenizers library cannot read it)".into(),
            })?;
        let inner = loaded.map_err(|e| DataError::Format {
            path: path.to_path_buf(),
            message: format!("not a Hugging Face tokenizer.json: {e}"),
        })?;
        Self::from_tokenizer(inner, path)
    }

    fn from_tokenizer(inner: Tokenizer, path: &Path) -> Result<Self, DataError> {
        let end_of_text = inner.token_to_id(END_OF_TEXT).ok_or_else(|| DataError::Format {
            path: path.to_path_buf(),
            message: format!("the tokenizer has no `{END_OF_TEXT}` token; add it as a special token"),
        })?;
        // The model's embedding has one row per vocabulary entry: every ID must index it.
        let size = inner.get_vocab_size(true);
        if let Some((token, id)) = inner.get_vocab(true).into_iter().max_by_key(|&(_, id)| id) {
            if id as usize >= size {
                return Err(DataError::Format {
                    path: path.to_path_buf(),
                    message: format!(
                        "token `{token}` has ID {id}, but the vocabulary has {size} entries: IDs must run from 0 to {}",
                        size.saturating_sub(1)
                    ),
                });
            }
        }
        let json = inner.to_string(false).map_err(|e| DataError::Tokenizer(e.to_string()))?;
        let fingerprint = format!("{:x}", Sha256::digest(json.as_bytes()));
        Ok(Self { inner, end_of_text, fingerprint })
    }

    /// Saves as `tokenizer.json` (atomically).
    pub fn save(&self, path: &Path) -> Result<(), DataError> {
        let json = self.inner.to_string(true).map_err(|e| DataError::Tokenizer(e.to_string()))?;
        Ok(memsinks_core::files::write_atomic(path, json.as_bytes())?)
    }

    /// Vocabulary size including added tokens.
    pub fn vocab_size(&self) -> usize {
        self.inner.get_vocab_size(true)
    }

    /// The `<|endoftext|>` token ID.
    pub fn end_of_text(&self) -> u32 {
        self.end_of_text
    }

    /// SHA-256 of the serialised tokenizer: caches are keyed by it.
    pub fn fingerprint(&self) -> &str {
        &self.fingerprint
    }

    /// Token IDs of one text (no special tokens added).
    pub fn encode(&self, text: &str) -> Result<Vec<u32>, DataError> {
        let enc = self.inner.encode(text, false).map_err(|e| DataError::Tokenizer(e.to_string()))?;
        Ok(enc.get_ids().to_vec())
    }

    /// Token IDs of many texts, on all cores.
    pub fn encode_many(&self, texts: &[&str]) -> Result<Vec<Vec<u32>>, DataError> {
        let encs = self.inner.encode_batch(texts.to_vec(), false).map_err(|e| DataError::Tokenizer(e.to_string()))?;
        Ok(encs.into_iter().map(|e| e.get_ids().to_vec()).collect())
    }

    /// Text of token IDs (special tokens kept).
    pub fn decode(&self, ids: &[u32]) -> Result<String, DataError> {
        self.inner.decode(ids, false).map_err(|e| DataError::Tokenizer(e.to_string()))
    }

    /// Fails unless the tokenizer's vocabulary size equals the model's.
    pub fn check_model_vocab(&self, model_vocab: usize) -> Result<(), DataError> {
        if self.vocab_size() != model_vocab {
            return Err(DataError::Invalid(format!(
                "tokenizer vocabulary ({}) differs from the model's vocab_size ({model_vocab}): set model.vocab_size to {} or use a matching tokenizer",
                self.vocab_size(),
                self.vocab_size()
            )));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::synthetic::generate_stories;

    /// Found by fuzzing (`fuzz/fuzz_targets/tokenizer.rs`): a file on which tokenizers 0.23.2
    /// panics while deserializing its decoder. It must be an error naming the file.
    #[test]
    fn a_file_the_library_panics_on_is_an_error() {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../fuzz/seeds/tokenizer/decoder-panic.json");
        let err = TextTokenizer::load(&path).err().unwrap().to_string();
        assert!(err.contains("decoder-panic.json") && err.contains("cannot read it"), "{err}");
    }

    #[test]
    fn trains_round_trips_and_reloads() {
        let stories = generate_stories(300, 9);
        let tok = TextTokenizer::train(stories.iter(), 400, false).unwrap();
        assert_eq!(tok.vocab_size(), 400);
        let odd = "Ünïcödé — \"quotes\"\n\n  double  spaces\ttab 🙂 <|endoftext|>";
        for text in stories.iter().take(20).map(String::as_str).chain([odd]) {
            let ids = tok.encode(text).unwrap();
            assert_eq!(tok.decode(&ids).unwrap(), text);
        }
        // Merges make common story text much shorter than its bytes.
        let ids = tok.encode(&stories[0]).unwrap();
        assert!(ids.len() * 2 < stories[0].len(), "{} tokens for {} bytes", ids.len(), stories[0].len());
        assert_eq!(tok.encode(END_OF_TEXT).unwrap(), vec![tok.end_of_text()]);
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("tokenizer.json");
        tok.save(&path).unwrap();
        let back = TextTokenizer::load(&path).unwrap();
        assert_eq!(back.fingerprint(), tok.fingerprint());
        assert_eq!(back.encode_many(&[&stories[1], &stories[2]]).unwrap()[1], tok.encode(&stories[2]).unwrap());
        assert!(tok.check_model_vocab(400).is_ok());
        assert!(tok.check_model_vocab(512).unwrap_err().to_string().contains("vocab_size"));
    }

    #[test]
    fn bad_files_and_sizes_fail_clearly() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("tokenizer.json");
        assert!(TextTokenizer::load(&path).unwrap_err().to_string().contains("tokenizer.json"));
        std::fs::write(&path, "{not json").unwrap();
        assert!(TextTokenizer::load(&path).unwrap_err().to_string().contains("tokenizer.json"));
        assert!(TextTokenizer::train(["a b"].iter(), 10, false).is_err());
    }
}
