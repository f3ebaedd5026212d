use crate::protocol::buf::{ByteBuf, ByteBufMut};
use anyhow::{Context, Result};
use bytes::{Buf, BufMut, Bytes, BytesMut};
use std::io;

use super::{BoundedOutput, Compressor, Decompressor};

/// Gzip compression algorithm. See [Kafka's broker configuration](https://kafka.apache.org/documentation/#brokerconfigs_compression.type)
/// for more information.
pub struct Zstd;

const COMPRESSION_LEVEL: i32 = 3;

impl<B: ByteBufMut> Compressor<B> for Zstd {
    type BufMut = BytesMut;
    fn compress<R, F>(buf: &mut B, f: F) -> Result<R>
    where
        F: FnOnce(&mut Self::BufMut) -> Result<R>,
    {
        // Write uncompressed bytes into a temporary buffer
        let mut tmp = BytesMut::new();
        let res = f(&mut tmp)?;

        // Compress directly into the target buffer
        zstd::stream::copy_encode(tmp.reader(), buf.writer(), COMPRESSION_LEVEL)
            .context("Failed to compress zstd")?;
        Ok(res)
    }
}

/// The largest window (as a power of two) to decode for output bounded by
/// `max_bytes`: the smallest power of two at least `max_bytes`, but at least
/// 2^23 (the largest window of zstd's levels 1-19, so that what a producer
/// compressed at any ordinary level decodes under a small limit) and at most
/// 2^27 (zstd's own default limit).
fn window_log_max(max_bytes: usize) -> u32 {
    let log = usize::BITS - max_bytes.saturating_sub(1).leading_zeros();
    log.clamp(23, 27)
}

impl<B: ByteBuf> Decompressor<B> for Zstd {
    type Buf = Bytes;

    fn decompress_bounded<R, F>(buf: &mut B, max_bytes: usize, f: F) -> Result<R>
    where
        F: FnOnce(&mut Self::Buf) -> Result<R>,
    {
        // Stream into an output that fails once it would pass `max_bytes`
        // (Ferry: this grew without a bound; run-length blocks make 128 KiB
        // of four bytes). The frame content size is never used to size a
        // buffer; the window a frame asks for (which the decoder does
        // allocate) is capped by `window_log_max`.
        let mut tmp = BoundedOutput::new(max_bytes);
        let buf = buf.copy_to_bytes(buf.remaining());
        let mut decoder =
            zstd::stream::read::Decoder::new(buf.reader()).context("Failed to decompress zstd")?;
        decoder
            .window_log_max(window_log_max(max_bytes))
            .context("Failed to decompress zstd")?;
        io::copy(&mut decoder, &mut tmp).context("Failed to decompress zstd")?;

        f(&mut tmp.into_bytes())
    }
}

#[cfg(test)]
mod test {
    use crate::compression::Zstd;
    use crate::compression::{Compressor, Decompressor};
    use anyhow::Result;
    use bytes::BytesMut;
    use std::fmt::Write;
    use std::str;
    use zstd::zstd_safe::WriteBuf;

    #[test]
    fn test_zstd() {
        let mut compressed = BytesMut::new();
        Zstd::compress(&mut compressed, |buf| -> Result<()> {
            buf.write_str("hello zstd")?;
            Ok(())
        })
        .unwrap();

        Zstd::decompress(&mut compressed, |buf| -> Result<()> {
            let decompressed_str = str::from_utf8(buf.as_slice())?;
            assert_eq!(decompressed_str, "hello zstd");
            Ok(())
        })
        .unwrap();
    }
}
