//! Provides compression utilities for encoding records.
//!
//! This module has implementations of gzip, Snappy, as well as a noop compression format that
//! allows encoding and decoding records into a [`Record`](crate::records::Record).

use crate::protocol::buf::{ByteBuf, ByteBufMut};
use anyhow::Result;

#[cfg(feature = "gzip")]
mod gzip;
#[cfg(feature = "lz4")]
mod lz4;
mod none;
#[cfg(feature = "snappy")]
mod snappy;
#[cfg(feature = "zstd")]
mod zstd;

#[cfg(feature = "gzip")]
pub use gzip::Gzip;
#[cfg(feature = "lz4")]
pub use lz4::Lz4;
pub use none::None;
#[cfg(feature = "snappy")]
pub use snappy::Snappy;
#[cfg(feature = "zstd")]
pub use zstd::Zstd;

/// A trait for record compression algorithms.
pub trait Compressor<B: ByteBufMut> {
    /// Target buffer type for compression.
    type BufMut: ByteBufMut;
    /// Compresses into provided [`ByteBufMut`], with records encoded by `F` into `R`.
    fn compress<R, F>(buf: &mut B, f: F) -> Result<R>
    where
        F: FnOnce(&mut Self::BufMut) -> Result<R>;
}

/// The most bytes a batch's records may decompress to when the caller sets no
/// limit of its own ([`Decompressor::decompress`],
/// [`RecordBatchDecoder::decode`](crate::records::RecordBatchDecoder::decode)):
/// 128 MiB, which is also the largest window zstd decodes by default.
///
/// Added by Ferry. Every codec's compressed data can claim, or really
/// produce, far more bytes than it holds (a raw snappy preamble claiming
/// 4 GiB, a zstd or lz4 stream of run-length blocks); a decoder that
/// trusted the claim, or decompressed without a bound, let a batch of a few
/// hundred bytes make its reader allocate gigabytes.
pub const DEFAULT_MAX_DECOMPRESSED_BYTES: usize = 128 * 1024 * 1024;

/// A trait for record decompression algorithms.
pub trait Decompressor<B: ByteBuf> {
    /// Target buffer type for decompression.
    type Buf: ByteBuf;
    /// Decompress records from `B` mapped using `F` into `R`, refusing data
    /// that decompresses to more than [`DEFAULT_MAX_DECOMPRESSED_BYTES`].
    fn decompress<R, F>(buf: &mut B, f: F) -> Result<R>
    where
        F: FnOnce(&mut Self::Buf) -> Result<R>,
    {
        Self::decompress_bounded(buf, DEFAULT_MAX_DECOMPRESSED_BYTES, f)
    }

    /// Decompress records from `B` mapped using `F` into `R`. Data that
    /// decompresses, or claims to decompress, to more than `max_bytes` is an
    /// error, returned before more than about `max_bytes` is allocated.
    fn decompress_bounded<R, F>(buf: &mut B, max_bytes: usize, f: F) -> Result<R>
    where
        F: FnOnce(&mut Self::Buf) -> Result<R>;
}

/// An output buffer for streaming decompressors that refuses to grow past
/// `max_bytes` (added by Ferry). Its capacity never exceeds `max_bytes`
/// either: it grows by doubling, clamped to the limit, with exact reservations.
#[cfg(any(
    feature = "gzip",
    feature = "lz4",
    feature = "zstd",
    feature = "snappy"
))]
pub(crate) struct BoundedOutput {
    buf: Vec<u8>,
    max_bytes: usize,
}

#[cfg(any(
    feature = "gzip",
    feature = "lz4",
    feature = "zstd",
    feature = "snappy"
))]
impl BoundedOutput {
    pub(crate) fn new(max_bytes: usize) -> Self {
        Self {
            buf: Vec::new(),
            max_bytes,
        }
    }

    /// Makes room for `additional` more bytes, or fails if that would take
    /// the output past the limit.
    pub(crate) fn reserve(&mut self, additional: usize) -> std::io::Result<()> {
        let needed = self
            .buf
            .len()
            .checked_add(additional)
            .filter(|n| *n <= self.max_bytes)
            .ok_or_else(|| too_large(self.max_bytes))?;
        if needed > self.buf.capacity() {
            let target = needed
                .max(self.buf.capacity().saturating_mul(2))
                .max(8 * 1024)
                .min(self.max_bytes);
            self.buf.reserve_exact(target - self.buf.len());
        }
        Ok(())
    }

    /// Appends `additional` zero bytes and returns them, for decoders that
    /// write into a slice.
    pub(crate) fn zeroed_tail(&mut self, additional: usize) -> std::io::Result<&mut [u8]> {
        self.reserve(additional)?;
        let start = self.buf.len();
        self.buf.resize(start + additional, 0);
        Ok(&mut self.buf[start..])
    }

    pub(crate) fn into_bytes(self) -> bytes::Bytes {
        self.buf.into()
    }
}

#[cfg(any(
    feature = "gzip",
    feature = "lz4",
    feature = "zstd",
    feature = "snappy"
))]
impl std::io::Write for BoundedOutput {
    fn write(&mut self, data: &[u8]) -> std::io::Result<usize> {
        self.reserve(data.len())?;
        self.buf.extend_from_slice(data);
        Ok(data.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// The error for records that decompress to more than `max_bytes`.
#[cfg(any(
    feature = "gzip",
    feature = "lz4",
    feature = "zstd",
    feature = "snappy"
))]
pub(crate) fn too_large(max_bytes: usize) -> std::io::Error {
    std::io::Error::new(
        std::io::ErrorKind::InvalidData,
        format!("records decompress to more than {max_bytes} bytes"),
    )
}

#[cfg(all(
    test,
    feature = "gzip",
    feature = "lz4",
    feature = "zstd",
    feature = "snappy"
))]
mod tests {
    use std::io::Write;

    use bytes::{Bytes, BytesMut};

    use super::*;

    #[test]
    fn bounded_output_stops_at_its_limit_and_never_reserves_past_it() {
        let mut out = BoundedOutput::new(100_000);
        for _ in 0..100 {
            out.write_all(&[7; 1000]).unwrap();
            assert!(out.buf.capacity() <= 100_000);
        }
        assert!(out.write_all(&[7]).is_err());
        assert!(out.zeroed_tail(1).is_err());
        assert_eq!(out.into_bytes().len(), 100_000);
    }

    fn roundtrip<C>(len: usize, limit: usize) -> Result<usize>
    where
        C: Compressor<BytesMut, BufMut = BytesMut> + Decompressor<Bytes, Buf = Bytes>,
    {
        let mut compressed = BytesMut::new();
        C::compress(&mut compressed, |buf| {
            buf.resize(len, 1);
            Ok(())
        })?;
        C::decompress_bounded(&mut compressed.freeze(), limit, |buf| Ok(buf.len()))
    }

    #[test]
    fn every_codec_decompresses_up_to_its_limit_and_refuses_one_byte_more() {
        for (name, check) in [
            (
                "gzip",
                roundtrip::<Gzip> as fn(usize, usize) -> Result<usize>,
            ),
            ("snappy", roundtrip::<Snappy>),
            ("lz4", roundtrip::<Lz4>),
            ("zstd", roundtrip::<Zstd>),
        ] {
            assert_eq!(check(300_000, 300_000).unwrap(), 300_000, "{name}");
            assert!(check(300_001, 300_000).is_err(), "{name}");
        }
    }
}
