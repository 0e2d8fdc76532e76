//! Streaming zstd compression and capped, verifying decompression. These functions block:
//! run them on the blocking pool. Memory stays bounded: fixed read buffers, chunks handed
//! over a bounded channel.

use std::fs::File;
use std::io::{self, Read, Write};
use std::path::Path;

use bytes::Bytes;
use sha2::{Digest, Sha256};
use tokio::sync::mpsc;

use super::SnapshotError;
use super::manifest::format_digest;

/// Read buffer size and the size of the compressed chunks handed to the uploader.
pub(crate) const CHUNK: usize = 1 << 20;

/// Sizes and digests of one file and of its compressed form.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Digests {
    pub size: u64,
    pub sha256: String,
    pub compressed_size: u64,
    pub compressed_sha256: String,
}

/// Collects compressed output into [`CHUNK`]-sized buffers, hashes it, and sends each full
/// buffer to the uploader (blocking while the channel is full: back pressure).
struct ChunkSink {
    buf: Vec<u8>,
    tx: mpsc::Sender<Bytes>,
    hasher: Sha256,
    count: u64,
}

impl ChunkSink {
    fn send(&mut self) -> io::Result<()> {
        if self.buf.is_empty() {
            return Ok(());
        }
        let chunk = std::mem::replace(&mut self.buf, Vec::with_capacity(CHUNK));
        self.tx
            .blocking_send(Bytes::from(chunk))
            .map_err(|_| io::Error::new(io::ErrorKind::BrokenPipe, "uploader stopped"))
    }
}

impl Write for ChunkSink {
    fn write(&mut self, data: &[u8]) -> io::Result<usize> {
        self.hasher.update(data);
        self.count += data.len() as u64;
        let mut rest = data;
        while !rest.is_empty() {
            let n = rest.len().min(CHUNK - self.buf.len());
            self.buf.extend_from_slice(&rest[..n]);
            rest = &rest[n..];
            if self.buf.len() == CHUNK {
                self.send()?;
            }
        }
        Ok(data.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

/// Compresses `src` (expected to be `len` bytes) at `level`, sending the compressed stream in
/// chunks on `tx`. Fails if the file is not exactly `len` bytes (it changed under us).
pub(crate) fn compress_file(
    src: &Path,
    len: u64,
    level: i32,
    tx: mpsc::Sender<Bytes>,
) -> Result<Digests, SnapshotError> {
    let io_err = |op, e| SnapshotError::io(op, src, e);
    let mut file = File::open(src).map_err(|e| io_err("open", e))?;
    let sink = ChunkSink {
        buf: Vec::with_capacity(CHUNK),
        tx,
        hasher: Sha256::new(),
        count: 0,
    };
    let mut enc = zstd::stream::write::Encoder::new(sink, level)
        .map_err(|e| io_err("start zstd compression of", e))?;
    enc.include_checksum(true)
        .and_then(|()| enc.include_contentsize(true))
        .and_then(|()| enc.set_pledged_src_size(Some(len)))
        .map_err(|e| io_err("configure zstd compression of", e))?;
    let mut hasher = Sha256::new();
    let mut size = 0u64;
    let mut buf = vec![0u8; CHUNK];
    loop {
        let n = match file.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(io_err("read", e)),
        };
        size += n as u64;
        if size > len {
            break;
        }
        hasher.update(&buf[..n]);
        enc.write_all(&buf[..n])
            .map_err(|e| io_err("compress", e))?;
    }
    if size != len {
        return Err(SnapshotError::InvalidCheckpointDir {
            dir: src.to_path_buf(),
            reason: format!("file changed while being uploaded ({len} bytes became {size})"),
        });
    }
    let mut sink = enc.finish().map_err(|e| io_err("finish compressing", e))?;
    sink.send().map_err(|e| io_err("compress", e))?;
    Ok(Digests {
        size,
        sha256: format_digest(hasher.finalize().into()),
        compressed_size: sink.count,
        compressed_sha256: format_digest(sink.hasher.finalize().into()),
    })
}

/// What a stored object must turn out to be.
#[derive(Debug, Clone)]
pub(crate) struct Expected {
    /// For messages: the object's URI.
    pub object: String,
    pub size: u64,
    pub sha256: String,
    pub compressed_size: u64,
    pub compressed_sha256: String,
    /// Hard cap on decompressed bytes (≤ size, and ≤ max_file_bytes).
    pub cap: u64,
}

/// Where compressed bytes come from.
pub(crate) enum Source {
    /// Chunks from an async download.
    Channel(mpsc::Receiver<Bytes>),
    /// A local file (the `file://` store hands out the object's file).
    File(File),
}

/// Writes decompressed data to a file, hashing it, refusing anything past `cap`.
struct CappedWriter {
    file: File,
    hasher: Sha256,
    written: u64,
    cap: u64,
}

/// Marker error: the cap of a [`CappedWriter`] was hit.
#[derive(Debug)]
struct CapExceeded;

impl std::fmt::Display for CapExceeded {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("decompressed size cap exceeded")
    }
}

impl std::error::Error for CapExceeded {}

impl Write for CappedWriter {
    fn write(&mut self, data: &[u8]) -> io::Result<usize> {
        if self.written + data.len() as u64 > self.cap {
            return Err(io::Error::other(CapExceeded));
        }
        self.file.write_all(data)?;
        self.hasher.update(data);
        self.written += data.len() as u64;
        Ok(data.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        self.file.flush()
    }
}

fn is_cap(e: &io::Error) -> bool {
    e.get_ref().is_some_and(|inner| inner.is::<CapExceeded>())
}

/// Decompresses the object from `source` into a new file `out`, enforcing the cap, and checks
/// compressed size and digest, then uncompressed size and digest. `out` is left behind on
/// error: the caller writes into a temporary directory it removes.
pub(crate) fn decompress_to_file(
    source: Source,
    out: &Path,
    exp: &Expected,
) -> Result<(), SnapshotError> {
    let file = File::create_new(out).map_err(|e| SnapshotError::io("create", out, e))?;
    let writer = CappedWriter {
        file,
        hasher: Sha256::new(),
        written: 0,
        cap: exp.cap,
    };
    let decomp_err = |e: io::Error| {
        if is_cap(&e) {
            SnapshotError::DecompressedTooLarge {
                object: exp.object.clone(),
                limit: exp.cap,
            }
        } else if e.kind() == io::ErrorKind::Other || e.kind() == io::ErrorKind::InvalidData {
            SnapshotError::Decompress {
                object: exp.object.clone(),
                source: e,
            }
        } else {
            SnapshotError::io("write", out, e)
        }
    };
    let mut dec = zstd::stream::write::Decoder::new(writer).map_err(decomp_err)?;
    let mut hasher = Sha256::new();
    let mut compressed = 0u64;
    let mut feed = |data: &[u8], dec: &mut zstd::stream::write::Decoder<'_, CappedWriter>| {
        compressed += data.len() as u64;
        if compressed > exp.compressed_size {
            return Err(SnapshotError::Corrupt {
                object: exp.object.clone(),
                what: "compressed size",
                expected: exp.compressed_size.to_string(),
                actual: format!("more than {}", exp.compressed_size),
            });
        }
        hasher.update(data);
        dec.write_all(data).map_err(decomp_err)
    };
    match source {
        Source::Channel(mut rx) => {
            while let Some(chunk) = rx.blocking_recv() {
                feed(&chunk, &mut dec)?;
            }
        }
        Source::File(mut f) => {
            let mut buf = vec![0u8; CHUNK];
            loop {
                let n = match f.read(&mut buf) {
                    Ok(0) => break,
                    Ok(n) => n,
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                    Err(e) => {
                        return Err(SnapshotError::io("read", exp.object.clone(), e));
                    }
                };
                feed(&buf[..n], &mut dec)?;
            }
        }
    }
    dec.flush().map_err(decomp_err)?;
    let writer = dec.into_inner();
    let mismatch = |what, expected: String, actual: String| SnapshotError::Corrupt {
        object: exp.object.clone(),
        what,
        expected,
        actual,
    };
    if compressed != exp.compressed_size {
        return Err(mismatch(
            "compressed size",
            exp.compressed_size.to_string(),
            compressed.to_string(),
        ));
    }
    let compressed_sha = format_digest(hasher.finalize().into());
    if compressed_sha != exp.compressed_sha256 {
        return Err(mismatch(
            "compressed sha256",
            exp.compressed_sha256.clone(),
            compressed_sha,
        ));
    }
    if writer.written != exp.size {
        return Err(mismatch(
            "size",
            exp.size.to_string(),
            writer.written.to_string(),
        ));
    }
    let sha = format_digest(writer.hasher.finalize().into());
    if sha != exp.sha256 {
        return Err(mismatch("sha256", exp.sha256.clone(), sha));
    }
    Ok(())
}

/// `sha256:<hex>` and size of a local file (cache verification).
pub(crate) fn hash_file(path: &Path) -> io::Result<(u64, String)> {
    let mut f = File::open(path)?;
    let mut hasher = Sha256::new();
    let mut buf = vec![0u8; CHUNK];
    let mut size = 0u64;
    loop {
        let n = match f.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        };
        size += n as u64;
        hasher.update(&buf[..n]);
    }
    Ok((size, format_digest(hasher.finalize().into())))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::snapshots::manifest::sha256_digest;

    fn compress(data: &[u8]) -> (Vec<u8>, Digests) {
        let dir = tempfile::tempdir().unwrap();
        let src = dir.path().join("f");
        std::fs::write(&src, data).unwrap();
        let (tx, mut rx) = mpsc::channel(4);
        let src2 = src.clone();
        let len = data.len() as u64;
        let h = std::thread::spawn(move || compress_file(&src2, len, 3, tx));
        let mut out = Vec::new();
        while let Some(c) = rx.blocking_recv() {
            assert!(c.len() <= CHUNK);
            out.extend_from_slice(&c);
        }
        (out, h.join().unwrap().unwrap())
    }

    fn expected(d: &Digests) -> Expected {
        Expected {
            object: "obj".into(),
            size: d.size,
            sha256: d.sha256.clone(),
            compressed_size: d.compressed_size,
            compressed_sha256: d.compressed_sha256.clone(),
            cap: d.size,
        }
    }

    fn decompress(z: &[u8], exp: &Expected) -> Result<Vec<u8>, SnapshotError> {
        let dir = tempfile::tempdir().unwrap();
        let zpath = dir.path().join("z");
        std::fs::write(&zpath, z).unwrap();
        let out = dir.path().join("out");
        decompress_to_file(Source::File(File::open(&zpath).unwrap()), &out, exp)?;
        Ok(std::fs::read(out).unwrap())
    }

    #[test]
    fn round_trip_with_digests() {
        let data: Vec<u8> = (0..3 * CHUNK + 17).map(|i| (i % 251) as u8).collect();
        let (z, d) = compress(&data);
        assert_eq!(d.size, data.len() as u64);
        assert_eq!(d.sha256, sha256_digest(&data));
        assert_eq!(d.compressed_size, z.len() as u64);
        assert_eq!(d.compressed_sha256, sha256_digest(&z));
        assert!(z.len() < data.len() / 10);
        assert_eq!(decompress(&z, &expected(&d)).unwrap(), data);

        let (z, d) = compress(b"");
        assert_eq!(decompress(&z, &expected(&d)).unwrap(), b"");
    }

    #[test]
    fn bomb_is_stopped_at_the_cap() {
        // 64 MiB of zeros compress to a few KiB; the manifest claims 1000 bytes.
        let zeros = vec![0u8; 64 << 20];
        let z = zstd::encode_all(&zeros[..], 3).unwrap();
        assert!(z.len() < 64 << 10);
        let exp = Expected {
            object: "bomb".into(),
            size: 1000,
            sha256: sha256_digest(&zeros[..1000]),
            compressed_size: z.len() as u64,
            compressed_sha256: sha256_digest(&z),
            cap: 1000,
        };
        let err = decompress(&z, &exp).unwrap_err();
        assert!(
            matches!(err, SnapshotError::DecompressedTooLarge { limit: 1000, .. }),
            "{err}"
        );
    }

    #[test]
    fn corruption_is_detected() {
        let data: Vec<u8> = (0..100_000u32).flat_map(|i| i.to_le_bytes()).collect();
        let (z, d) = compress(&data);
        let exp = expected(&d);
        // Flip one byte in the middle: decoder error or digest mismatch, never success.
        let mut bad = z.clone();
        let mid = bad.len() / 2;
        bad[mid] ^= 0x55;
        let err = decompress(&bad, &exp).unwrap_err();
        assert!(err.is_integrity(), "{err}");
        // Truncated stream.
        let err = decompress(&z[..z.len() - 10], &exp).unwrap_err();
        assert!(err.is_integrity(), "{err}");
        // Longer than declared.
        let mut long = z.clone();
        long.extend_from_slice(&z);
        let err = decompress(&long, &exp).unwrap_err();
        assert!(
            matches!(
                err,
                SnapshotError::Corrupt {
                    what: "compressed size",
                    ..
                }
            ),
            "{err}"
        );
        // Right bytes, wrong declared digest.
        let err = decompress(
            &z,
            &Expected {
                sha256: sha256_digest(b"other"),
                ..exp.clone()
            },
        )
        .unwrap_err();
        assert!(
            matches!(err, SnapshotError::Corrupt { what: "sha256", .. }),
            "{err}"
        );
    }

    #[test]
    fn file_that_changes_size_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let src = dir.path().join("f");
        std::fs::write(&src, vec![7u8; 5000]).unwrap();
        let (tx, mut rx) = mpsc::channel(4);
        let h = std::thread::spawn(move || compress_file(&src, 4000, 3, tx));
        while rx.blocking_recv().is_some() {}
        let err = h.join().unwrap().unwrap_err();
        assert!(err.to_string().contains("changed"), "{err}");
    }
}
