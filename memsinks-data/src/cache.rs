//! Token caches: documents' token IDs in shards on disk (little-endian `u16` when the vocabulary
//! fits, `u32` otherwise), an index of document offsets, and `cache.json` (written last, so its
//! presence marks a complete cache). Shards are memory-mapped for reading.

use std::fs::File;
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use memmap2::Mmap;
use serde::{Deserialize, Serialize};

use memsinks_core::files::write_atomic;

use crate::DataError;

/// Tokens per shard before a new one is started.
const SHARD_TOKENS: u64 = 1 << 28;

/// What a cache was built from; a cache is reused only when all three match.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct CacheKey {
    /// Fingerprint of the source files (or generator parameters).
    pub source_hash: String,
    /// Fingerprint of the tokenizer.
    pub tokenizer_hash: String,
    /// Hash of the data configuration.
    pub config_hash: String,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
struct ShardMeta {
    file: String,
    first_doc: u64,
    docs: u64,
    tokens: u64,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
struct CacheMeta {
    version: u32,
    bytes_per_token: u8,
    vocab_size: usize,
    docs: u64,
    tokens: u64,
    shards: Vec<ShardMeta>,
    key: CacheKey,
}

const META_FILE: &str = "cache.json";
const INDEX_FILE: &str = "index.bin";

/// Writes a cache; nothing is visible under the final names until [`CacheWriter::finish`].
pub struct CacheWriter {
    dir: PathBuf,
    tmp: PathBuf,
    bytes_per_token: u8,
    vocab_size: usize,
    key: CacheKey,
    shards: Vec<ShardMeta>,
    current: Option<(BufWriter<File>, ShardMeta)>,
    offsets: Vec<u64>,
    total: u64,
}

impl CacheWriter {
    fn open_shard(&mut self) -> Result<(), DataError> {
        let name = format!("tokens-{:05}.bin", self.shards.len() + usize::from(self.current.is_some()));
        let path = self.tmp.join(&name);
        let file = memsinks_core::files::create_new_file(&path).map_err(|e| DataError::io(&path, e))?;
        let meta = ShardMeta { file: name, first_doc: self.offsets.len() as u64, docs: 0, tokens: 0 };
        if let Some((mut w, m)) = self.current.replace((BufWriter::with_capacity(1 << 20, file), meta)) {
            w.flush().map_err(|e| DataError::io(&self.tmp.join(&m.file), e))?;
            self.shards.push(m);
        }
        Ok(())
    }

    /// Appends one document.
    pub fn push(&mut self, tokens: &[u32]) -> Result<(), DataError> {
        let full =
            self.current.as_ref().is_none_or(|(_, m)| m.tokens > 0 && m.tokens + tokens.len() as u64 > SHARD_TOKENS);
        if full {
            self.open_shard()?;
        }
        let (w, meta) = self.current.as_mut().expect("a shard is open");
        let path = self.tmp.join(&meta.file);
        for &t in tokens {
            if t as usize >= self.vocab_size {
                return Err(DataError::Invalid(format!("token {t} is outside the vocabulary ({})", self.vocab_size)));
            }
            let res = if self.bytes_per_token == 2 {
                w.write_all(&(t as u16).to_le_bytes())
            } else {
                w.write_all(&t.to_le_bytes())
            };
            res.map_err(|e| DataError::io(&path, e))?;
        }
        self.offsets.push(meta.tokens);
        meta.docs += 1;
        meta.tokens += tokens.len() as u64;
        self.total += tokens.len() as u64;
        Ok(())
    }

    /// Flushes every file, writes the index and `cache.json`, then moves the cache into place.
    pub fn finish(mut self) -> Result<TokenCache, DataError> {
        if let Some((mut w, m)) = self.current.take() {
            let path = self.tmp.join(&m.file);
            w.flush().map_err(|e| DataError::io(&path, e))?;
            w.get_ref().sync_all().map_err(|e| DataError::io(&path, e))?;
            self.shards.push(m);
        }
        let index: Vec<u8> = self.offsets.iter().flat_map(|o| o.to_le_bytes()).collect();
        write_atomic(&self.tmp.join(INDEX_FILE), &index)?;
        let meta = CacheMeta {
            version: 1,
            bytes_per_token: self.bytes_per_token,
            vocab_size: self.vocab_size,
            docs: self.offsets.len() as u64,
            tokens: self.total,
            shards: std::mem::take(&mut self.shards),
            key: self.key.clone(),
        };
        write_atomic(&self.tmp.join(META_FILE), &serde_json::to_vec_pretty(&meta).expect("serialises"))?;
        if self.dir.exists() {
            std::fs::remove_dir_all(&self.dir).map_err(|e| DataError::io(&self.dir, e))?;
        }
        std::fs::rename(&self.tmp, &self.dir).map_err(|e| DataError::io(&self.dir, e))?;
        TokenCache::open(&self.dir)
    }
}

impl Drop for CacheWriter {
    fn drop(&mut self) {
        // An unfinished cache leaves nothing behind.
        if self.tmp.exists() {
            let _ = std::fs::remove_dir_all(&self.tmp);
        }
    }
}

/// A memory-mapped token cache. Cloning shares the maps.
#[derive(Clone)]
pub struct TokenCache {
    meta: Arc<CacheMeta>,
    /// One read-only map per shard (`None` for an empty shard, which cannot be mapped).
    maps: Arc<Vec<Option<Mmap>>>,
    /// Per document: (shard, token offset within shard, length).
    docs: Arc<Vec<(u32, u64, u32)>>,
}

impl TokenCache {
    /// Starts a new cache at `dir` (built in a sibling temporary directory).
    pub fn writer(dir: &Path, vocab_size: usize, key: CacheKey) -> Result<CacheWriter, DataError> {
        let tmp = memsinks_core::files::temporary_sibling(dir, "");
        if tmp.exists() {
            std::fs::remove_dir_all(&tmp).map_err(|e| DataError::io(&tmp, e))?;
        }
        std::fs::create_dir_all(&tmp).map_err(|e| DataError::io(&tmp, e))?;
        Ok(CacheWriter {
            dir: dir.to_path_buf(),
            tmp,
            bytes_per_token: if vocab_size <= 1 << 16 { 2 } else { 4 },
            vocab_size,
            key,
            shards: Vec::new(),
            current: None,
            offsets: Vec::new(),
            total: 0,
        })
    }

    /// Opens and validates a cache: every shard must have exactly the size `cache.json` records.
    pub fn open(dir: &Path) -> Result<Self, DataError> {
        let meta_path = dir.join(META_FILE);
        let text = std::fs::read_to_string(&meta_path).map_err(|e| DataError::io(&meta_path, e))?;
        let meta: CacheMeta = serde_json::from_str(&text).map_err(|e| DataError::Format {
            path: meta_path.clone(),
            message: format!(
                "corrupt cache metadata ({e}); delete {} and rerun `memsinks data prepare`",
                dir.display()
            ),
        })?;
        let index_path = dir.join(INDEX_FILE);
        let index = std::fs::read(&index_path).map_err(|e| DataError::io(&index_path, e))?;
        if index.len() as u64 != meta.docs * 8 {
            return Err(truncated(&index_path, meta.docs * 8, index.len() as u64, dir));
        }
        let offsets: Vec<u64> = index.chunks_exact(8).map(|c| u64::from_le_bytes(c.try_into().expect("8"))).collect();
        let corrupt = |path: &Path, what: String| DataError::Format {
            path: path.to_path_buf(),
            message: format!("corrupt cache: {what}; delete {} and rerun `memsinks data prepare`", dir.display()),
        };
        if !matches!(meta.bytes_per_token, 2 | 4) {
            return Err(corrupt(&meta_path, format!("{} bytes per token (2 or 4)", meta.bytes_per_token)));
        }
        let mut maps = Vec::with_capacity(meta.shards.len());
        let mut docs = Vec::with_capacity(meta.docs as usize);
        for (s, shard) in meta.shards.iter().enumerate() {
            let path = dir.join(&shard.file);
            let file = File::open(&path).map_err(|e| DataError::io(&path, e))?;
            let expected = shard.tokens * meta.bytes_per_token as u64;
            let found = file.metadata().map_err(|e| DataError::io(&path, e))?.len();
            if found != expected {
                return Err(truncated(&path, expected, found, dir));
            }
            // SAFETY: the cache is written once and only replaced by renaming a new directory over
            // it; the mapping is read-only.
            let map = if expected == 0 {
                None
            } else {
                Some(unsafe { Mmap::map(&file) }.map_err(|e| DataError::io(&path, e))?)
            };
            // Every range is checked against the data before anything is sliced by it.
            if shard.first_doc != docs.len() as u64 || shard.first_doc.saturating_add(shard.docs) > meta.docs {
                return Err(corrupt(
                    &meta_path,
                    format!("shard {} lists documents {}+{} of {}", shard.file, shard.first_doc, shard.docs, meta.docs),
                ));
            }
            for d in 0..shard.docs {
                let i = (shard.first_doc + d) as usize;
                let start = offsets[i];
                let end = if d + 1 < shard.docs { offsets[i + 1] } else { shard.tokens };
                if start > end || end > shard.tokens || end - start > u64::from(u32::MAX) {
                    return Err(corrupt(
                        &index_path,
                        format!("document {i} spans tokens {start}..{end} of a shard of {}", shard.tokens),
                    ));
                }
                docs.push((s as u32, start, (end - start) as u32));
            }
            maps.push(map);
        }
        if docs.len() as u64 != meta.docs {
            return Err(corrupt(&meta_path, format!("its shards list {} of {} documents", docs.len(), meta.docs)));
        }
        Ok(Self { meta: Arc::new(meta), maps: Arc::new(maps), docs: Arc::new(docs) })
    }

    /// Number of documents.
    pub fn num_docs(&self) -> usize {
        self.docs.len()
    }

    /// Total tokens.
    pub fn num_tokens(&self) -> u64 {
        self.meta.tokens
    }

    /// What the cache was built from.
    pub fn key(&self) -> &CacheKey {
        &self.meta.key
    }

    /// Length of document `i` in tokens.
    pub fn doc_len(&self, i: usize) -> usize {
        self.docs[i].2 as usize
    }

    /// Tokens of document `i`.
    pub fn doc(&self, i: usize) -> Vec<u32> {
        let (shard, start, len) = self.docs[i];
        let Some(map) = &self.maps[shard as usize] else { return Vec::new() };
        let bpt = self.meta.bytes_per_token as usize;
        let bytes = &map[start as usize * bpt..(start as usize + len as usize) * bpt];
        if bpt == 2 {
            bytes.chunks_exact(2).map(|c| u16::from_le_bytes([c[0], c[1]]) as u32).collect()
        } else {
            bytes.chunks_exact(4).map(|c| u32::from_le_bytes([c[0], c[1], c[2], c[3]])).collect()
        }
    }
}

fn truncated(path: &Path, expected: u64, found: u64, dir: &Path) -> DataError {
    DataError::Format {
        path: path.to_path_buf(),
        message: format!(
            "truncated or corrupt cache file: expected {expected} bytes, found {found}; delete {} and rerun `memsinks data prepare`",
            dir.display()
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key() -> CacheKey {
        CacheKey { source_hash: "s".into(), tokenizer_hash: "t".into(), config_hash: "c".into() }
    }

    #[test]
    fn round_trips_u16_and_u32_and_detects_truncation() {
        for vocab in [300usize, 100_000] {
            let dir = tempfile::tempdir().unwrap();
            let path = dir.path().join("cache");
            let docs: Vec<Vec<u32>> = vec![vec![1, 2, 3], vec![], vec![(vocab - 1) as u32; 5], vec![7]];
            let mut w = TokenCache::writer(&path, vocab, key()).unwrap();
            for d in &docs {
                w.push(d).unwrap();
            }
            let cache = w.finish().unwrap();
            assert_eq!(cache.num_docs(), 4);
            assert_eq!(cache.num_tokens(), 9);
            for (i, d) in docs.iter().enumerate() {
                assert_eq!(&cache.doc(i), d);
            }
            let reopened = TokenCache::open(&path).unwrap();
            assert_eq!(reopened.doc(2), docs[2]);
            assert_eq!(reopened.key(), &key());
            let shard = path.join("tokens-00000.bin");
            let bytes = std::fs::read(&shard).unwrap();
            std::fs::write(&shard, &bytes[..bytes.len() - 1]).unwrap();
            let err = TokenCache::open(&path).err().unwrap().to_string();
            assert!(err.contains("tokens-00000.bin") && err.contains("truncated"), "{err}");
        }
    }

    /// Index entries that point outside their shard (one byte set to 0xff, as a damaged disk or
    /// an edit would) are refused when the cache opens, never sliced by.
    #[test]
    fn an_index_entry_out_of_range_is_refused_on_open() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("cache");
        let mut w = TokenCache::writer(&path, 300, key()).unwrap();
        for d in [vec![1u32, 2, 3], vec![4, 5], vec![6], vec![7, 8]] {
            w.push(&d).unwrap();
        }
        w.finish().unwrap();
        let index = path.join(INDEX_FILE);
        let clean = std::fs::read(&index).unwrap();
        for offset in [9usize, 17, 23] {
            let mut bytes = clean.clone();
            bytes[offset] = 0xff;
            std::fs::write(&index, &bytes).unwrap();
            let err = TokenCache::open(&path).err().expect("a damaged index opened").to_string();
            assert!(err.contains(INDEX_FILE) && err.contains("corrupt cache"), "{err}");
        }
        std::fs::write(&index, &clean).unwrap();
        TokenCache::open(&path).unwrap();
    }

    #[test]
    fn unfinished_writer_leaves_nothing_and_bad_tokens_fail() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("cache");
        {
            let mut w = TokenCache::writer(&path, 10, key()).unwrap();
            w.push(&[1, 2]).unwrap();
            assert!(w.push(&[10]).is_err());
        }
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 0);
    }
}
