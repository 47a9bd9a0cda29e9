//! Downloads of the public corpora over HTTP(S), resumable: bytes go to `NAME.part`, an
//! interrupted transfer continues with an HTTP range request, and the file takes its final name
//! only once its size matches what the server announced and its SHA-256 matches the pinned
//! digest, when one is given. Without a pin, the digest of the completed file is written beside it
//! (`NAME.sha256`), so a later run detects a file damaged since (trust on first use); an existing
//! target is accepted only when it matches its pin or its recorded digest.

use std::io::{Read, Write};
use std::path::{Path, PathBuf};

use memsinks_core::files::{check_checksum, file_sha256, write_checksum, ChecksumCheck};

use crate::DataError;

/// The public TinyStories files (Eldan & Li 2023), TinyStoriesV2 text format.
pub const TINYSTORIES_FILES: [&str; 2] = [
    "https://huggingface.co/datasets/roneneldan/TinyStories/resolve/main/TinyStoriesV2-GPT4-valid.txt",
    "https://huggingface.co/datasets/roneneldan/TinyStories/resolve/main/TinyStoriesV2-GPT4-train.txt",
];

/// URL of SlimPajama-627B training shard `index` of chunk 1 (`.jsonl.zst`).
pub fn slimpajama_url(index: usize) -> String {
    format!("https://huggingface.co/datasets/cerebras/SlimPajama-627B/resolve/main/train/chunk1/example_train_{index}.jsonl.zst")
}

/// Checks `path` against the pinned digest, or else against the one recorded when it was
/// downloaded; `Ok(false)` when neither exists.
fn verify(path: &Path, pinned: Option<&str>) -> Result<bool, DataError> {
    match check_checksum(path, pinned)? {
        ChecksumCheck::NoChecksum => Ok(false),
        ChecksumCheck::Matches => Ok(true),
        ChecksumCheck::Differs { found, expected } => Err(DataError::Format {
            path: path.to_path_buf(),
            message: format!(
                "SHA-256 {found} differs from the expected {expected}: the file is damaged or not the one published; \
                 move it away and download again"
            ),
        }),
    }
}

/// Downloads `url` to `dest`, resuming from `dest.part` and retrying up to `retries` times after a
/// dropped connection, and checks the result against `sha256` when given. Returns the final path.
/// An existing `dest` is kept only when it matches its pinned or recorded digest.
pub fn download_file(
    url: &str,
    dest: &Path,
    sha256: Option<&str>,
    retries: usize,
    show_progress: bool,
) -> Result<PathBuf, DataError> {
    if dest.exists() {
        if verify(dest, sha256)? {
            return Ok(dest.to_path_buf());
        }
        return Err(DataError::Format {
            path: dest.to_path_buf(),
            message: "exists, with no digest to check it against (not downloaded by memsinks, or before digests \
                      were recorded): move it away to download again, or pass the file's SHA-256"
                .into(),
        });
    }
    let mut part_name = dest.as_os_str().to_owned();
    part_name.push(".part");
    let part = PathBuf::from(part_name);
    if let Some(dir) = dest.parent() {
        std::fs::create_dir_all(dir).map_err(|e| DataError::io(dir, e))?;
    }
    let bar = crate::corpus::progress_bar(show_progress, 0, &format!("downloading {}", file_name(dest)));
    let mut last_error = String::new();
    for _attempt in 0..=retries {
        match transfer(url, &part, &bar)? {
            Ok(()) => {
                keep_if_pinned(url, &part, dest, sha256)?;
                bar.finish_and_clear();
                return Ok(dest.to_path_buf());
            }
            Err(why) => last_error = why,
        }
    }
    bar.abandon();
    let kept = match std::fs::metadata(&part) {
        Ok(m) if m.len() > 0 => format!(" ({} bytes kept in {}; rerun to resume)", m.len(), part.display()),
        _ => String::new(),
    };
    Err(download_error(url, format!("{last_error}{kept}")))
}

fn download_error(url: &str, message: String) -> DataError {
    DataError::Download { url: url.to_string(), message }
}

/// One try: fetches `url` from where `part` ends (a Range request when it holds bytes) and
/// appends to it. `Ok(Ok(()))` when the transfer is complete, `Ok(Err(why))` when the connection
/// failed or dropped (another try resumes it), `Err` for what another try cannot fix.
fn transfer(url: &str, part: &Path, bar: &indicatif::ProgressBar) -> Result<Result<(), String>, DataError> {
    let have = std::fs::metadata(part).map(|m| m.len()).unwrap_or(0);
    let mut request = ureq::get(url);
    if have > 0 {
        request = request.header("Range", &format!("bytes={have}-"));
    }
    let mut response = match request.call() {
        Ok(r) => r,
        Err(e) => return Ok(Err(e.to_string())),
    };
    let status = response.status().as_u16();
    let header = |name: &str| response.headers().get(name).and_then(|v| v.to_str().ok()).map(str::to_string);
    // The full size: from Content-Range on a partial answer, Content-Length otherwise.
    let (start, total) = match status {
        206 => {
            let range =
                header("content-range").ok_or_else(|| download_error(url, "206 without Content-Range".into()))?;
            let total = range.rsplit('/').next().and_then(|t| t.parse::<u64>().ok());
            (have, total)
        }
        200 => (0, header("content-length").and_then(|l| l.parse::<u64>().ok())),
        other => return Err(download_error(url, format!("unexpected HTTP status {other}"))),
    };
    if let Some(total) = total {
        bar.set_length(total);
    }
    bar.set_position(start);
    // Never through a link planted under the partial file's name.
    let file = if start > 0 {
        memsinks_core::files::open_in_place(part, true)
    } else {
        memsinks_core::files::create_new_file(part)
    };
    let mut file = file.map_err(|e| DataError::io(part, e))?;
    let mut reader = response.body_mut().as_reader();
    let mut buf = vec![0u8; 1 << 16];
    let mut written = start;
    let outcome = loop {
        match reader.read(&mut buf) {
            Ok(0) => break Ok(()),
            Ok(n) => {
                file.write_all(&buf[..n]).map_err(|e| DataError::io(part, e))?;
                written += n as u64;
                bar.set_position(written);
            }
            Err(e) => break Err(e.to_string()),
        }
    };
    file.sync_all().map_err(|e| DataError::io(part, e))?;
    Ok(match (outcome, total) {
        (Ok(()), total) if total.is_none_or(|t| written == t) => Ok(()),
        (Ok(()), total) => Err(format!("connection closed after {written} of {} bytes", total.unwrap_or(written))),
        (Err(e), _) => Err(e),
    })
}

/// Moves a complete `part` to `dest` with its recorded digest, unless its digest differs from the
/// pinned one: then nothing is kept (resuming a complete transfer with the wrong content cannot
/// help).
fn keep_if_pinned(url: &str, part: &Path, dest: &Path, sha256: Option<&str>) -> Result<(), DataError> {
    let digest = file_sha256(part)?;
    if let Some(pinned) = sha256.filter(|p| p.trim().to_ascii_lowercase() != digest) {
        let _ = std::fs::remove_file(part);
        return Err(download_error(
            url,
            format!("SHA-256 {digest} differs from the pinned {pinned}; nothing was kept"),
        ));
    }
    write_checksum(dest, &digest)?;
    std::fs::rename(part, dest).map_err(|e| DataError::io(dest, e))
}

fn file_name(p: &Path) -> String {
    p.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{BufRead, BufReader};
    use std::net::TcpListener;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::Arc;

    /// A one-file HTTP/1.1 server on loopback that honours `Range: bytes=N-` and drops the first
    /// connection halfway through the body.
    fn serve(body: Vec<u8>, requests: Arc<AtomicUsize>) -> String {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        std::thread::spawn(move || {
            for stream in listener.incoming().take(4) {
                let mut stream = stream.unwrap();
                let mut reader = BufReader::new(stream.try_clone().unwrap());
                let mut start = 0usize;
                loop {
                    let mut line = String::new();
                    if reader.read_line(&mut line).unwrap() == 0 || line == "\r\n" {
                        break;
                    }
                    if let Some(v) = line.to_ascii_lowercase().strip_prefix("range: bytes=") {
                        start = v.trim().trim_end_matches('-').parse().unwrap();
                    }
                }
                let n = requests.fetch_add(1, Ordering::SeqCst);
                let head = if start > 0 {
                    format!(
                        "HTTP/1.1 206 Partial Content\r\nContent-Length: {}\r\nContent-Range: bytes {start}-{}/{}\r\nConnection: close\r\n\r\n",
                        body.len() - start,
                        body.len() - 1,
                        body.len()
                    )
                } else {
                    format!("HTTP/1.1 200 OK\r\nContent-Length: {}\r\nConnection: close\r\n\r\n", body.len())
                };
                stream.write_all(head.as_bytes()).unwrap();
                let end = if n == 0 { body.len() / 2 } else { body.len() };
                stream.write_all(&body[start..end]).unwrap();
                // Dropping the stream closes the connection (early on the first request).
            }
        });
        format!("http://{addr}/file.txt")
    }

    #[test]
    fn resumes_after_a_dropped_connection() {
        let body: Vec<u8> = (0..200_000u32).map(|i| (i % 251) as u8).collect();
        let requests = Arc::new(AtomicUsize::new(0));
        let url = serve(body.clone(), requests.clone());
        let dir = tempfile::tempdir().unwrap();
        let dest = dir.path().join("data.txt");
        let path = download_file(&url, &dest, None, 3, false).unwrap();
        assert_eq!(std::fs::read(&path).unwrap(), body);
        assert_eq!(requests.load(Ordering::SeqCst), 2, "one dropped transfer, one resumed");
        assert!(!dir.path().join("data.txt.part").exists());
        // The recorded digest accepts the file again, and refuses it once damaged.
        assert!(download_file(&url, &dest, None, 0, false).is_ok());
        std::fs::write(&dest, &body[..body.len() / 2]).unwrap();
        let err = download_file(&url, &dest, None, 0, false).unwrap_err().to_string();
        assert!(err.contains("SHA-256") && err.contains("data.txt"), "{err}");
        // A file that memsinks did not download is not taken on trust.
        let foreign = dir.path().join("foreign.txt");
        std::fs::write(&foreign, b"x").unwrap();
        assert!(download_file(&url, &foreign, None, 0, false).unwrap_err().to_string().contains("no digest"));
    }

    #[test]
    fn a_wrong_pin_keeps_nothing() {
        let body: Vec<u8> = (0..50_000u32).map(|i| (i % 13) as u8).collect();
        let url = serve(body, Arc::new(AtomicUsize::new(0)));
        let dir = tempfile::tempdir().unwrap();
        let dest = dir.path().join("d.bin");
        let err = download_file(&url, &dest, Some(&"0".repeat(64)), 3, false).unwrap_err().to_string();
        assert!(err.contains("pinned"), "{err}");
        assert!(!dest.exists() && !dir.path().join("d.bin.part").exists());
    }

    #[test]
    fn gives_up_cleanly_and_keeps_the_partial_file() {
        let dir = tempfile::tempdir().unwrap();
        let err = download_file("http://127.0.0.1:9/none", &dir.path().join("x.bin"), None, 1, false).unwrap_err();
        assert!(err.to_string().contains("127.0.0.1:9"), "{err}");
        // Nothing was received, so no partial file is named.
        assert!(!err.to_string().contains(".part"), "{err}");
        assert!(!dir.path().join("x.bin").exists());
    }
}
