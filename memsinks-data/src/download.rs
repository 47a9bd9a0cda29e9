//! Downloads of the public corpora over HTTP(S), resumable: bytes go to `NAME.part`, an
//! interrupted transfer continues with an HTTP range request, and the file takes its final name
//! only once its size matches what the server announced.

use std::fs::OpenOptions;
use std::io::{Read, Write};
use std::path::{Path, PathBuf};

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

/// Downloads `url` to `dest`, resuming from `dest.part` and retrying up to `retries` times after a
/// dropped connection. Returns the final path. An existing complete `dest` is kept.
pub fn download_file(url: &str, dest: &Path, retries: usize, show_progress: bool) -> Result<PathBuf, DataError> {
    if dest.exists() {
        return Ok(dest.to_path_buf());
    }
    let err = |message: String| DataError::Download { url: url.to_string(), message };
    let part = dest.with_extension(format!(
        "{}part",
        dest.extension().map(|e| format!("{}.", e.to_string_lossy())).unwrap_or_default()
    ));
    if let Some(dir) = dest.parent() {
        std::fs::create_dir_all(dir).map_err(|e| DataError::io(dir, e))?;
    }
    let bar = crate::corpus::progress_bar(show_progress, 0, &format!("downloading {}", file_name(dest)));
    let mut last_error = String::new();
    for _attempt in 0..=retries {
        let have = std::fs::metadata(&part).map(|m| m.len()).unwrap_or(0);
        let mut request = ureq::get(url);
        if have > 0 {
            request = request.header("Range", &format!("bytes={have}-"));
        }
        let mut response = match request.call() {
            Ok(r) => r,
            Err(e) => {
                last_error = e.to_string();
                continue;
            }
        };
        let status = response.status().as_u16();
        let header = |name: &str| response.headers().get(name).and_then(|v| v.to_str().ok()).map(str::to_string);
        // The full size: from Content-Range on a partial answer, Content-Length otherwise.
        let (start, total) = match status {
            206 => {
                let range = header("content-range").ok_or_else(|| err("206 without Content-Range".into()))?;
                let total = range.rsplit('/').next().and_then(|t| t.parse::<u64>().ok());
                (have, total)
            }
            200 => (0, header("content-length").and_then(|l| l.parse::<u64>().ok())),
            other => return Err(err(format!("unexpected HTTP status {other}"))),
        };
        if let Some(total) = total {
            bar.set_length(total);
        }
        bar.set_position(start);
        let mut file = OpenOptions::new()
            .create(true)
            .write(true)
            .append(start > 0)
            .truncate(start == 0)
            .open(&part)
            .map_err(|e| DataError::io(&part, e))?;
        let mut reader = response.body_mut().as_reader();
        let mut buf = vec![0u8; 1 << 16];
        let mut written = start;
        let outcome = loop {
            match reader.read(&mut buf) {
                Ok(0) => break Ok(()),
                Ok(n) => {
                    file.write_all(&buf[..n]).map_err(|e| DataError::io(&part, e))?;
                    written += n as u64;
                    bar.set_position(written);
                }
                Err(e) => break Err(e.to_string()),
            }
        };
        file.sync_all().map_err(|e| DataError::io(&part, e))?;
        match (outcome, total) {
            (Ok(()), Some(total)) if written == total => {
                std::fs::rename(&part, dest).map_err(|e| DataError::io(dest, e))?;
                bar.finish_and_clear();
                return Ok(dest.to_path_buf());
            }
            (Ok(()), None) => {
                std::fs::rename(&part, dest).map_err(|e| DataError::io(dest, e))?;
                bar.finish_and_clear();
                return Ok(dest.to_path_buf());
            }
            (Ok(()), Some(total)) => last_error = format!("connection closed after {written} of {total} bytes"),
            (Err(e), _) => last_error = e,
        }
    }
    bar.abandon();
    Err(err(format!("{last_error} (partial data kept in {}; rerun to resume)", part.display())))
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
        let path = download_file(&url, &dest, 3, false).unwrap();
        assert_eq!(std::fs::read(path).unwrap(), body);
        assert_eq!(requests.load(Ordering::SeqCst), 2, "one dropped transfer, one resumed");
        assert!(!dir.path().join("data.txt.part").exists());
    }

    #[test]
    fn gives_up_cleanly_and_keeps_the_partial_file() {
        let dir = tempfile::tempdir().unwrap();
        let err = download_file("http://127.0.0.1:9/none", &dir.path().join("x.bin"), 1, false).unwrap_err();
        assert!(err.to_string().contains("127.0.0.1:9"), "{err}");
        assert!(!dir.path().join("x.bin").exists());
    }
}
