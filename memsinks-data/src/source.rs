//! Streaming document sources: TinyStories text files, JSON/JSONL with a text field, and
//! SlimPajama directories of `.jsonl` / `.jsonl.zst` shards. Nothing is loaded whole: each source
//! yields one document at a time.

use std::fs::File;
use std::io::{BufRead, BufReader, Read};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::data_config::SourceKey;
use crate::DataError;

/// The separator line of the TinyStories text format.
pub const END_OF_TEXT: &str = "<|endoftext|>";

/// The largest document accepted, in bytes. Tokenizing (and training a tokenizer on) one text
/// costs memory many times its size (a 50 MB document took 8.5 GB); the longest documents of the
/// corpora used here (SlimPajama's books) stay far below this.
pub const MAX_DOCUMENT_BYTES: usize = 8 << 20;

fn too_large(path: &Path, offset: u64, what: &str) -> DataError {
    DataError::Format {
        path: path.to_path_buf(),
        message: format!(
            "the document at byte {offset} is larger than {} MiB{what}: split it, or check the file's format",
            MAX_DOCUMENT_BYTES >> 20
        ),
    }
}

/// What to do with bytes that are not UTF-8.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, Default)]
pub enum InvalidUtf8 {
    /// Stop with an error naming the file and byte offset.
    #[default]
    Fail,
    /// Skip the offending document (TinyStories) or line (JSONL) and go on.
    Skip,
}

/// A document read from a source.
#[derive(Clone, Debug, PartialEq)]
pub struct Document {
    /// The text, trimmed of surrounding blank lines.
    pub text: String,
    /// Where it came from (`file:byte_offset`).
    pub origin: String,
    /// Its source key (author, website, file), when the source was asked for one
    /// (`data.source_key`).
    pub source: Option<String>,
}

impl Document {
    /// A document without a source key.
    pub fn new(text: String, origin: String) -> Self {
        Self { text, origin, source: None }
    }
}

/// Why a record has no source key.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SourceKeyError {
    /// The dotted path names no string field.
    #[error("no string field `{path}`")]
    NoField {
        /// The dotted path.
        path: String,
    },
    /// The field holds no URL with a host.
    #[error("field `{path}` holds no URL with a host: {url:?}")]
    NoHost {
        /// The dotted path.
        path: String,
        /// What the field holds.
        url: String,
    },
}

/// The source key `key` reads from a JSON `record` (`Field`: a dotted path to a string;
/// `UrlHost`: the host of the URL such a field holds; `FileName`: `file`'s name).
pub fn source_key_of(record: &serde_json::Value, key: &SourceKey, file: &Path) -> Result<String, SourceKeyError> {
    let field = |path: &str| {
        let pointer = format!("/{}", path.replace('.', "/"));
        record
            .pointer(&pointer)
            .and_then(|v| v.as_str())
            .map(str::to_string)
            .ok_or_else(|| SourceKeyError::NoField { path: path.to_string() })
    };
    match key {
        SourceKey::Field(path) => field(path),
        SourceKey::UrlHost(path) => {
            let url = field(path)?;
            url_host(&url).ok_or_else(|| SourceKeyError::NoHost { path: path.clone(), url })
        }
        SourceKey::FileName => Ok(file_key(file)),
    }
}

/// A file's name, the source key of [`SourceKey::FileName`].
pub fn file_key(file: &Path) -> String {
    file.file_name().map_or_else(|| file.display().to_string(), |n| n.to_string_lossy().into_owned())
}

/// The host of `url` (`scheme://[user@]host[:port]/...`), lower-cased; `None` without one.
pub fn url_host(url: &str) -> Option<String> {
    let rest = url.split_once("://").map_or(url, |(_, r)| r);
    let authority = rest.split(['/', '?', '#']).next()?;
    let host = authority.rsplit_once('@').map_or(authority, |(_, h)| h);
    let host = if host.starts_with('[') { host.split_inclusive(']').next()? } else { host.split(':').next()? };
    let valid = |c: char| c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | '_');
    let bracketed = host.starts_with('[') && host.ends_with(']');
    (!host.is_empty() && (bracketed || host.chars().all(valid))).then(|| host.to_ascii_lowercase())
}

/// Streams TinyStories-format documents: stories separated by lines holding only `<|endoftext|>`.
pub struct TinyStoriesReader<R: BufRead> {
    reader: R,
    path: PathBuf,
    offset: u64,
    invalid: InvalidUtf8,
    done: bool,
    /// The file name as every document's source key ([`SourceKey::FileName`]).
    source: Option<String>,
}

impl TinyStoriesReader<BufReader<File>> {
    /// Opens a TinyStories text file.
    pub fn open(path: &Path, invalid: InvalidUtf8) -> Result<Self, DataError> {
        let file = File::open(path).map_err(|e| DataError::io(path, e))?;
        Ok(Self::new(BufReader::with_capacity(1 << 20, file), path, invalid))
    }
}

impl<R: BufRead> TinyStoriesReader<R> {
    /// Streams from any buffered reader; `path` is used in messages.
    pub fn new(reader: R, path: &Path, invalid: InvalidUtf8) -> Self {
        Self { reader, path: path.to_path_buf(), offset: 0, invalid, done: false, source: None }
    }

    /// Gives every document the file's name as its source key.
    pub fn with_file_key(mut self) -> Self {
        self.source = Some(file_key(&self.path));
        self
    }

    fn next_raw(&mut self) -> Result<Option<(Vec<u8>, u64)>, DataError> {
        let start = self.offset;
        let mut doc = Vec::new();
        let mut line = Vec::new();
        loop {
            line.clear();
            let n = self.reader.read_until(b'\n', &mut line).map_err(|e| DataError::io(&self.path, e))?;
            if n == 0 {
                self.done = true;
                return Ok((!doc.iter().all(u8::is_ascii_whitespace)).then_some((doc, start)));
            }
            self.offset += n as u64;
            if line.trim_ascii() == END_OF_TEXT.as_bytes() {
                if doc.iter().all(u8::is_ascii_whitespace) {
                    doc.clear();
                    continue;
                }
                return Ok(Some((doc, start)));
            }
            doc.extend_from_slice(&line);
            if doc.len() > MAX_DOCUMENT_BYTES {
                self.done = true;
                return Err(too_large(&self.path, start, &format!(" (no `{END_OF_TEXT}` separator within it)")));
            }
        }
    }
}

impl<R: BufRead> Iterator for TinyStoriesReader<R> {
    type Item = Result<Document, DataError>;

    fn next(&mut self) -> Option<Self::Item> {
        while !self.done {
            let (bytes, start) = match self.next_raw() {
                Ok(Some(raw)) => raw,
                Ok(None) => return None,
                Err(e) => return Some(Err(e)),
            };
            match String::from_utf8(bytes) {
                // Only Unicode whitespace (which the byte-level check above lets through).
                Ok(text) if text.trim().is_empty() => continue,
                Ok(text) => {
                    let origin = format!("{}:{start}", self.path.display());
                    let source = self.source.clone();
                    return Some(Ok(Document { text: text.trim().to_string(), origin, source }));
                }
                Err(e) if self.invalid == InvalidUtf8::Fail => {
                    let at = start + e.utf8_error().valid_up_to() as u64;
                    return Some(Err(DataError::InvalidUtf8 { path: self.path.clone(), offset: at }));
                }
                Err(_) => continue,
            }
        }
        None
    }
}

/// Streams documents from JSON Lines (`.jsonl`, optionally `.zst`-compressed) or a JSON array
/// file, taking the string field `field`; with `set_name`, only records whose
/// `meta.redpajama_set_name` equals it (SlimPajama).
pub struct JsonlReader {
    lines: Box<dyn BufRead + Send>,
    path: PathBuf,
    field: String,
    set_name: Option<String>,
    offset: u64,
    invalid: InvalidUtf8,
    key: Option<SourceKey>,
}

impl JsonlReader {
    /// Reads every record's source key as `key` says.
    pub fn with_key(mut self, key: Option<SourceKey>) -> Self {
        self.key = key;
        self
    }

    /// Opens a `.jsonl` or `.jsonl.zst` file.
    pub fn open(path: &Path, field: &str, set_name: Option<&str>, invalid: InvalidUtf8) -> Result<Self, DataError> {
        let file = File::open(path).map_err(|e| DataError::io(path, e))?;
        let lines: Box<dyn BufRead + Send> = if path.extension().is_some_and(|e| e == "zst") {
            let decoder = zstd::stream::read::Decoder::new(file).map_err(|e| DataError::io(path, e))?;
            Box::new(BufReader::with_capacity(1 << 20, decoder))
        } else {
            Box::new(BufReader::with_capacity(1 << 20, file))
        };
        Ok(Self {
            lines,
            path: path.to_path_buf(),
            field: field.to_string(),
            set_name: set_name.map(str::to_string),
            offset: 0,
            invalid,
            key: None,
        })
    }
}

impl Iterator for JsonlReader {
    type Item = Result<Document, DataError>;

    fn next(&mut self) -> Option<Self::Item> {
        let mut line = Vec::new();
        loop {
            line.clear();
            let start = self.offset;
            match self.lines.read_until(b'\n', &mut line) {
                Ok(0) => return None,
                Ok(n) => self.offset += n as u64,
                Err(e) => return Some(Err(DataError::io(&self.path, e))),
            }
            if line.trim_ascii().is_empty() {
                continue;
            }
            if let Err(e) = std::str::from_utf8(&line) {
                if self.invalid == InvalidUtf8::Skip {
                    continue;
                }
                let offset = start + e.valid_up_to() as u64;
                return Some(Err(DataError::InvalidUtf8 { path: self.path.clone(), offset }));
            }
            let record: serde_json::Value = match serde_json::from_slice(&line) {
                Ok(v) => v,
                Err(e) => {
                    return Some(Err(DataError::Format {
                        path: self.path.clone(),
                        message: format!("line at byte {start} is not JSON: {e}"),
                    }))
                }
            };
            if let Some(want) = &self.set_name {
                if record.pointer("/meta/redpajama_set_name").and_then(|v| v.as_str()) != Some(want) {
                    continue;
                }
            }
            let Some(text) = record.get(&self.field).and_then(|v| v.as_str()) else {
                return Some(Err(DataError::Format {
                    path: self.path.clone(),
                    message: format!("record at byte {start} has no string field `{}`", self.field),
                }));
            };
            if text.len() > MAX_DOCUMENT_BYTES {
                return Some(Err(too_large(&self.path, start, "")));
            }
            let source = match &self.key {
                None => None,
                Some(key) => match source_key_of(&record, key, &self.path) {
                    Ok(k) => Some(k),
                    Err(why) => {
                        return Some(Err(DataError::Format {
                            path: self.path.clone(),
                            message: format!("record at byte {start}: {why} (data.source_key)"),
                        }))
                    }
                },
            };
            let origin = format!("{}:{start}", self.path.display());
            return Some(Ok(Document { text: text.to_string(), origin, source }));
        }
    }
}

/// Reads a JSON array of objects (or of strings) whole: meant for small files only. With `key`,
/// each item's source key is read as it says.
pub fn read_json_array(path: &Path, field: &str, key: Option<&SourceKey>) -> Result<Vec<Document>, DataError> {
    let mut text = String::new();
    File::open(path).and_then(|mut f| f.read_to_string(&mut text)).map_err(|e| DataError::io(path, e))?;
    let value: serde_json::Value = serde_json::from_str(&text)
        .map_err(|e| DataError::Format { path: path.to_path_buf(), message: format!("not JSON: {e}") })?;
    let items = value
        .as_array()
        .ok_or_else(|| DataError::Format { path: path.to_path_buf(), message: "expected a JSON array".into() })?;
    items
        .iter()
        .enumerate()
        .map(|(i, item)| {
            let text = item.as_str().or_else(|| item.get(field).and_then(|v| v.as_str())).ok_or_else(|| {
                DataError::Format {
                    path: path.to_path_buf(),
                    message: format!("item {i} has no string field `{field}`"),
                }
            })?;
            let source = key.map(|k| source_key_of(item, k, path)).transpose().map_err(|why| DataError::Format {
                path: path.to_path_buf(),
                message: format!("item {i}: {why} (data.source_key)"),
            })?;
            Ok(Document { text: text.to_string(), origin: format!("{}#{i}", path.display()), source })
        })
        .collect()
}

/// The `.jsonl` and `.jsonl.zst` files of a SlimPajama-style directory, sorted (recursively).
pub fn shard_files(dir: &Path) -> Result<Vec<PathBuf>, DataError> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for entry in std::fs::read_dir(&d).map_err(|e| DataError::io(&d, e))? {
            let path = entry.map_err(|e| DataError::io(&d, e))?.path();
            let name = path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
            if path.is_dir() {
                stack.push(path);
            } else if name.ends_with(".jsonl") || name.ends_with(".jsonl.zst") {
                out.push(path);
            }
        }
    }
    out.sort();
    if out.is_empty() {
        return Err(DataError::Empty { path: dir.to_path_buf(), what: "no .jsonl or .jsonl.zst shards".into() });
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn stories(text: &[u8], invalid: InvalidUtf8) -> Vec<Result<Document, DataError>> {
        TinyStoriesReader::new(text, Path::new("mem.txt"), invalid).collect()
    }

    #[test]
    fn splits_on_end_of_text_lines() {
        let docs =
            stories(b"One.\nTwo lines.\n<|endoftext|>\n\n<|endoftext|>\nThird\n<|endoftext|>\n", InvalidUtf8::Fail);
        let texts: Vec<String> = docs.into_iter().map(|d| d.unwrap().text).collect();
        assert_eq!(texts, vec!["One.\nTwo lines.", "Third"]);
        let last = stories(b"A\n<|endoftext|>\nB without separator", InvalidUtf8::Fail);
        assert_eq!(last.len(), 2);
    }

    #[test]
    fn a_document_over_the_size_guard_is_an_error_not_an_allocation() {
        let line = vec![b'a'; 1 << 20];
        let mut text = b"Small.\n<|endoftext|>\n".to_vec();
        for _ in 0..(MAX_DOCUMENT_BYTES >> 20) + 1 {
            text.extend_from_slice(&line);
            text.push(b'\n');
        }
        let docs = stories(&text, InvalidUtf8::Fail);
        assert_eq!(docs.len(), 2, "one document, then the error, then nothing");
        let err = docs[1].as_ref().unwrap_err().to_string();
        assert!(err.contains("byte 21") && err.contains("MiB") && err.contains("separator"), "{err}");
    }

    #[test]
    fn invalid_utf8_names_the_offset_or_is_skipped() {
        let bytes = b"Good.\n<|endoftext|>\nBad \xff here\n<|endoftext|>\nFine\n";
        let docs = stories(bytes, InvalidUtf8::Fail);
        match &docs[1] {
            Err(DataError::InvalidUtf8 { offset, .. }) => assert_eq!(*offset, 24),
            other => panic!("expected an UTF-8 error, got {other:?}"),
        }
        let skipped: Vec<String> = stories(bytes, InvalidUtf8::Skip).into_iter().map(|d| d.unwrap().text).collect();
        assert_eq!(skipped, vec!["Good.", "Fine"]);
    }

    #[test]
    fn jsonl_plain_and_zstd_with_set_filter() {
        let dir = tempfile::tempdir().unwrap();
        let lines = concat!(
            r#"{"text": "alpha", "meta": {"redpajama_set_name": "RedPajamaC4"}}"#,
            "\n",
            r#"{"text": "beta", "meta": {"redpajama_set_name": "RedPajamaBook"}}"#,
            "\n"
        );
        let plain = dir.path().join("a.jsonl");
        std::fs::write(&plain, lines).unwrap();
        let zst = dir.path().join("sub").join("b.jsonl.zst");
        std::fs::create_dir_all(zst.parent().unwrap()).unwrap();
        std::fs::write(&zst, zstd::encode_all(lines.as_bytes(), 3).unwrap()).unwrap();
        let files = shard_files(dir.path()).unwrap();
        assert_eq!(files, vec![plain.clone(), zst.clone()]);
        for f in &files {
            let all: Vec<String> =
                JsonlReader::open(f, "text", None, InvalidUtf8::Fail).unwrap().map(|d| d.unwrap().text).collect();
            assert_eq!(all, vec!["alpha", "beta"]);
            let c4: Vec<String> = JsonlReader::open(f, "text", Some("RedPajamaC4"), InvalidUtf8::Fail)
                .unwrap()
                .map(|d| d.unwrap().text)
                .collect();
            assert_eq!(c4, vec!["alpha"]);
        }
        let err = JsonlReader::open(&plain, "body", None, InvalidUtf8::Fail).unwrap().next().unwrap().unwrap_err();
        assert!(err.to_string().contains("body"), "{err}");
        assert!(shard_files(&dir.path().join("sub/none")).is_err());
    }

    #[test]
    fn source_keys_from_fields_url_hosts_and_file_names() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("web.jsonl");
        let lines = concat!(
            r#"{"text": "a", "meta": {"url": "https://User@Example.org:8080/x?y", "author": "Ann"}}"#,
            "\n",
            r#"{"text": "b", "meta": {"url": "http://[::1]/p", "author": "Bo"}}"#,
            "\n",
            r#"{"text": "c", "meta": {"url": "no host here"}}"#,
            "\n"
        );
        std::fs::write(&p, lines).unwrap();
        let read = |key: SourceKey| -> Vec<Result<Option<String>, String>> {
            JsonlReader::open(&p, "text", None, InvalidUtf8::Fail)
                .unwrap()
                .with_key(Some(key))
                .map(|d| d.map(|d| d.source).map_err(|e| e.to_string()))
                .collect()
        };
        let hosts = read(SourceKey::UrlHost("meta.url".into()));
        assert_eq!(hosts[0], Ok(Some("example.org".into())));
        assert_eq!(hosts[1], Ok(Some("[::1]".into())));
        assert!(hosts[2].as_ref().unwrap_err().contains("no URL with a host"), "{:?}", hosts[2]);
        let authors = read(SourceKey::Field("meta.author".into()));
        assert_eq!(authors[1], Ok(Some("Bo".into())));
        let err = authors[2].as_ref().unwrap_err();
        assert!(err.contains("byte") && err.contains("meta.author"), "{err}");
        assert_eq!(read(SourceKey::FileName)[2], Ok(Some("web.jsonl".into())));
        assert_eq!(url_host("example.com"), Some("example.com".into()));
        let text = b"One.\n<|endoftext|>\nTwo.\n";
        let keyed: Vec<Option<String>> =
            TinyStoriesReader::new(&text[..], Path::new("/d/tales.txt"), InvalidUtf8::Fail)
                .with_file_key()
                .map(|d| d.unwrap().source)
                .collect();
        assert_eq!(keyed, vec![Some("tales.txt".to_string()); 2]);
    }

    #[test]
    fn json_arrays_of_objects_or_strings() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("x.json");
        std::fs::write(&p, r#"[{"story": "s1"}, "s2"]"#).unwrap();
        let docs = read_json_array(&p, "story", None).unwrap();
        assert_eq!(docs.iter().map(|d| d.text.as_str()).collect::<Vec<_>>(), vec!["s1", "s2"]);
    }
}
