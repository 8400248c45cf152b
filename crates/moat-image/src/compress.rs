//! Transparent decompression of layer and archive streams.

use std::io::{self, BufRead, BufReader, Read};

/// A compression format recognised by its magic bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Compression {
    /// Uncompressed tar.
    None,
    /// gzip.
    Gzip,
    /// zstd.
    Zstd,
}

/// Formats we recognise but do not accept.
#[derive(Debug, thiserror::Error)]
pub enum CompressError {
    /// bzip2 or xz.
    #[error("unsupported compression {0} (use gzip, zstd or plain tar)")]
    Unsupported(&'static str),
    /// Reading failed.
    #[error("cannot read archive: {0}")]
    Io(#[from] io::Error),
}

/// Detects the compression of `r` without consuming it.
pub fn detect<R: BufRead>(r: &mut R) -> Result<Compression, CompressError> {
    let head = r.fill_buf()?;
    Ok(match head {
        [0x1f, 0x8b, ..] => Compression::Gzip,
        [0x28, 0xb5, 0x2f, 0xfd, ..] => Compression::Zstd,
        [b'B', b'Z', b'h', ..] => return Err(CompressError::Unsupported("bzip2")),
        [0xfd, b'7', b'z', b'X', b'Z', 0, ..] => return Err(CompressError::Unsupported("xz")),
        _ => Compression::None,
    })
}

/// Whether `head` (the first 262 bytes, or all there are) starts an
/// archive: a tar, or a compressed stream (also one `decompress` refuses,
/// so that it can say why).
pub fn looks_like_archive(head: &[u8]) -> bool {
    matches!(
        head,
        [0x1f, 0x8b, ..]
            | [0x28, 0xb5, 0x2f, 0xfd, ..]
            | [b'B', b'Z', b'h', ..]
            | [0xfd, b'7', b'z', b'X', b'Z', 0, ..]
    ) || head.get(257..262) == Some(b"ustar".as_slice())
}

/// Wraps `r` in the decompressor its first bytes call for.
pub fn decompress<'a, R: Read + 'a>(r: R) -> Result<Box<dyn Read + 'a>, CompressError> {
    let mut b = BufReader::with_capacity(256 << 10, r);
    Ok(match detect(&mut b)? {
        Compression::None => Box::new(b),
        Compression::Gzip => Box::new(flate2::bufread::MultiGzDecoder::new(b)),
        Compression::Zstd => Box::new(zstd::stream::read::Decoder::with_buffer(b)?),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    #[test]
    fn roundtrips() -> Result<(), CompressError> {
        let data = b"hello layer".repeat(100);
        let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        gz.write_all(&data)?;
        let gz = gz.finish()?;
        let zs = zstd::encode_all(&data[..], 1)?;
        for input in [data.clone(), gz, zs] {
            let mut out = Vec::new();
            decompress(&input[..])?.read_to_end(&mut out)?;
            assert_eq!(out, data);
        }
        assert!(decompress(&b"BZh91AY"[..]).is_err());
        Ok(())
    }
}
