//! `decode_batch` of compressed batches whose data claims, or really
//! decompresses to, more than the decoder allows.
//!
//! Regression tests for the `record_batch` fuzzing finding (docs/reliability.md):
//! a 471-byte batch made the vendored `kafka-protocol` decompression allocate
//! 2.18 GB, because it sized a buffer from the length the compressed data
//! claimed, and every codec decompressed without a bound.
//!
//! An allocation that large can succeed (untouched pages of a zeroed
//! allocation cost nothing until written), so an `is_err()` alone would not
//! catch the bug: this test binary counts, per thread, the bytes Rust code
//! holds allocated, and each test checks the peak during the decode. (Buffers
//! that liblz4 and libzstd allocate themselves are not counted; what bounds
//! them is the block size, at most 4 MiB, and zstd's window limit.)

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;

use bytes::{Bytes, BytesMut};
use ferry_log::records::{
    DECOMPRESSED_BATCH_BYTES_MAX, RecordError, StoredRecord, decode_batch, decode_batch_with_limit,
};
use kafka_protocol::compression::{Compressor, Gzip, Lz4, Snappy, Zstd};
use kafka_protocol::records::{
    Compression, Record, RecordBatchEncoder, RecordEncodeOptions, TimestampType,
};

struct Counting;

thread_local! {
    static LIVE: Cell<isize> = const { Cell::new(0) };
    static PEAK: Cell<isize> = const { Cell::new(0) };
}

fn count(delta: isize) {
    let _ = LIVE.try_with(|live| {
        let now = live.get() + delta;
        live.set(now);
        let _ = PEAK.try_with(|peak| peak.set(peak.get().max(now)));
    });
}

// SAFETY: every call is passed on to `System` unchanged; the counting only
// touches const-initialized thread-locals, which never allocate. (The
// workspace denies unsafe code; a global allocator cannot be written
// without it, and this one exists only in this test binary.)
#[allow(unsafe_code)]
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        let p = unsafe { System.alloc(layout) };
        if !p.is_null() {
            count(layout.size() as isize);
        }
        p
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        let p = unsafe { System.alloc_zeroed(layout) };
        if !p.is_null() {
            count(layout.size() as isize);
        }
        p
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        unsafe { System.dealloc(ptr, layout) };
        count(-(layout.size() as isize));
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        let p = unsafe { System.realloc(ptr, layout, new_size) };
        if !p.is_null() {
            count(new_size as isize - layout.size() as isize);
        }
        p
    }
}

#[global_allocator]
static ALLOCATOR: Counting = Counting;

/// What the decoder may hold beyond its output limit: its codecs' fixed
/// buffers (32 KiB for gzip and lz4, about 128 KiB for zstd's input), the
/// records, the error.
const SLACK: usize = 1 << 20;

/// A small limit for the bombs that really expand (so that building them
/// stays cheap), and what they expand to.
const SMALL_LIMIT: usize = 1 << 20;
const BOMB_BYTES: usize = 8 << 20;

/// Runs `decode` and returns its result with the most bytes this thread
/// held allocated during it, beyond what it held before.
fn peak_during<T>(decode: impl FnOnce() -> T) -> (T, usize) {
    let start = LIVE.with(Cell::get);
    PEAK.with(|p| p.set(start));
    let out = decode();
    let peak = PEAK.with(Cell::get) - start;
    (out, peak.max(0) as usize)
}

/// Decodes `batch` with `limit` and checks it is refused without holding
/// more than `limit` plus the slack.
fn assert_refused_within(batch: Bytes, limit: usize) {
    let (result, peak) = peak_during(|| decode_batch_with_limit(batch, limit));
    assert!(
        matches!(result, Err(RecordError::Malformed(_))),
        "expected a malformed batch, got {result:?}"
    );
    assert!(
        peak <= limit + SLACK,
        "decoding held {peak} bytes, more than the limit {limit} and {SLACK} bytes of slack"
    );
}

/// A RecordBatch v2 with `codec` in its attributes, `count` records claimed,
/// `records` as its records section, and a correct CRC.
fn batch(codec: u8, count: i32, records: &[u8]) -> Bytes {
    let mut b = vec![0u8; 61];
    b[8..12].copy_from_slice(&((49 + records.len()) as i32).to_be_bytes());
    b[16] = 2; // magic
    b[22] = codec;
    b[23..27].copy_from_slice(&(count - 1).to_be_bytes());
    b[43..51].copy_from_slice(&(-1i64).to_be_bytes()); // producer id
    b[51..53].copy_from_slice(&(-1i16).to_be_bytes()); // producer epoch
    b[53..57].copy_from_slice(&(-1i32).to_be_bytes()); // base sequence
    b[57..61].copy_from_slice(&count.to_be_bytes());
    b.extend_from_slice(records);
    let crc = crc32c::crc32c(&b[21..]);
    b[17..21].copy_from_slice(&crc.to_be_bytes());
    Bytes::from(b)
}

fn varint_u32(mut v: u32, out: &mut Vec<u8>) {
    while v >= 0x80 {
        out.push(v as u8 | 0x80);
        v >>= 7;
    }
    out.push(v as u8);
}

const SNAPPY: u8 = 2;
const XERIAL_MAGIC: &[u8] = b"\x82SNAPPY\x00\x00\x00\x00\x01\x00\x00\x00\x01";
/// The size the fuzzer's 471-byte batch made the decoder allocate.
const FUZZ_FINDING_BYTES: u32 = 2_183_966_460;

/// Raw snappy data: a preamble claiming `claimed` bytes, then one literal byte.
fn snappy_claiming(claimed: u32) -> Vec<u8> {
    let mut s = Vec::new();
    varint_u32(claimed, &mut s);
    s.extend_from_slice(&[0x00, b'x']); // a literal of one byte
    s
}

/// Raw snappy data that really decompresses to `1 + 64 * copies` zero
/// bytes: one literal zero, then copies of 64 bytes at offset 1 (3 bytes
/// each, the densest element snappy has).
fn snappy_expanding(copies: u32) -> Vec<u8> {
    let mut s = Vec::new();
    varint_u32(1 + 64 * copies, &mut s);
    s.extend_from_slice(&[0x00, 0x00]);
    for _ in 0..copies {
        s.extend_from_slice(&[(63 << 2) | 2, 1, 0]);
    }
    s
}

#[test]
fn raw_snappy_claiming_gigabytes_is_refused_without_allocating_them() {
    for claimed in [
        FUZZ_FINDING_BYTES,
        u32::MAX,
        (DECOMPRESSED_BATCH_BYTES_MAX + 1) as u32,
    ] {
        let b = batch(SNAPPY, 1, &snappy_claiming(claimed));
        let (result, peak) = peak_during(|| decode_batch(b));
        assert!(result.is_err(), "claim of {claimed}: {result:?}");
        assert!(
            peak < SLACK,
            "a claim of {claimed} bytes made decoding hold {peak}"
        );
    }
}

#[test]
fn raw_snappy_claiming_more_than_its_data_can_expand_to_is_refused_before_allocating() {
    // 100 bytes of snappy data can decompress to at most about 2,100 bytes;
    // a claim of 1 MiB, within the limit, is still refused before the
    // buffer it asks for is allocated.
    let mut s = snappy_claiming(1 << 20);
    s.resize(100, 0);
    let (result, peak) = peak_during(|| decode_batch(batch(SNAPPY, 1, &s)));
    assert!(result.is_err(), "{result:?}");
    assert!(peak < 64 << 10, "decoding held {peak} bytes");
}

#[test]
fn raw_snappy_that_expands_past_the_limit_is_refused() {
    // 4 MiB from 196 KB, within what snappy can expand to, past the limit.
    let copies = (4 * SMALL_LIMIT / 64) as u32;
    assert_refused_within(batch(SNAPPY, 1, &snappy_expanding(copies)), SMALL_LIMIT);
}

#[test]
fn xerial_snappy_blocks_claiming_gigabytes_are_refused_without_allocating_them() {
    let block = snappy_claiming(FUZZ_FINDING_BYTES);
    let mut s = XERIAL_MAGIC.to_vec();
    s.extend_from_slice(&(block.len() as u32).to_be_bytes());
    s.extend_from_slice(&block);
    let (result, peak) = peak_during(|| decode_batch(batch(SNAPPY, 1, &s)));
    assert!(result.is_err(), "{result:?}");
    assert!(peak < SLACK, "decoding held {peak} bytes");
}

#[test]
fn xerial_snappy_blocks_adding_up_past_the_limit_are_refused() {
    // Each block within the limit and honest about its size; together more.
    let block = snappy_expanding(4095); // 262,081 bytes
    let mut s = XERIAL_MAGIC.to_vec();
    for _ in 0..(SMALL_LIMIT / 262_081 + 1) {
        s.extend_from_slice(&(block.len() as u32).to_be_bytes());
        s.extend_from_slice(&block);
    }
    assert_refused_within(batch(SNAPPY, 1, &s), SMALL_LIMIT);
}

/// The records section of a batch of `codec` whose records decompress to
/// `BOMB_BYTES` zero bytes.
fn bomb<C: Compressor<BytesMut, BufMut = BytesMut>>() -> Vec<u8> {
    let mut out = BytesMut::new();
    C::compress(&mut out, |buf| {
        buf.resize(BOMB_BYTES, 0);
        Ok(())
    })
    .expect("compress");
    out.to_vec()
}

/// A bomb of codec `C` (attribute `codec`) is small on the wire and
/// refused once it decompresses past the limit.
fn assert_bomb_refused<C: Compressor<BytesMut, BufMut = BytesMut>>(codec: u8) {
    let data = bomb::<C>();
    assert!(data.len() < BOMB_BYTES / 100);
    assert_refused_within(batch(codec, 1, &data), SMALL_LIMIT);
}

#[test]
fn gzip_that_expands_past_the_limit_is_refused() {
    assert_bomb_refused::<Gzip>(1);
}

#[test]
fn snappy_from_the_encoder_that_expands_past_the_limit_is_refused() {
    assert_refused_within(batch(SNAPPY, 1, &bomb::<Snappy>()), SMALL_LIMIT);
}

#[test]
fn lz4_that_expands_past_the_limit_is_refused() {
    assert_bomb_refused::<Lz4>(3);
}

#[test]
fn zstd_that_expands_past_the_limit_is_refused() {
    assert_bomb_refused::<Zstd>(4);
}

/// A zstd frame (window 128 KiB) of `blocks` run-length blocks of 128 KiB
/// each: 4 bytes of data for every 128 KiB of output.
fn zstd_rle_blocks(blocks: usize) -> Vec<u8> {
    let mut z = vec![0x28, 0xb5, 0x2f, 0xfd, 0x00, 7 << 3];
    for i in 0..blocks {
        let last = u32::from(i + 1 == blocks);
        let header = (128 << 10 << 3) | (1 << 1) | last;
        z.extend_from_slice(&header.to_le_bytes()[..3]);
        z.push(0);
    }
    z
}

#[test]
fn a_zstd_bomb_past_the_default_limit_is_refused_within_it() {
    // 4.4 KB of data for 137.5 MiB of output, with the limit decode_batch uses.
    let blocks = DECOMPRESSED_BATCH_BYTES_MAX / (128 << 10) + 4;
    let b = batch(4, 1, &zstd_rle_blocks(blocks));
    assert!(b.len() < 5000);
    let (result, peak) = peak_during(|| decode_batch(b));
    assert!(result.is_err(), "{result:?}");
    assert!(
        peak <= DECOMPRESSED_BATCH_BYTES_MAX + SLACK,
        "decoding held {peak} bytes"
    );
}

#[test]
fn a_zstd_frame_claiming_a_huge_content_size_is_refused_without_allocating_it() {
    let mut frames = Vec::new();
    // Single segment: the window is the content size, 1 TiB, past the
    // window limit.
    let mut single = vec![0x28, 0xb5, 0x2f, 0xfd, 0b1110_0000];
    single.extend_from_slice(&(1u64 << 40).to_le_bytes());
    frames.push(single);
    // A 1 KiB window and a claimed content size of 1 TiB, then one raw
    // block of one byte.
    let mut windowed = vec![0x28, 0xb5, 0x2f, 0xfd, 0b1100_0000, 0x00];
    windowed.extend_from_slice(&(1u64 << 40).to_le_bytes());
    frames.push(windowed);
    for mut frame in frames {
        frame.extend_from_slice(&[(1 << 3) | 1, 0, 0, b'x']);
        let (result, peak) = peak_during(|| decode_batch(batch(4, 1, &frame)));
        assert!(result.is_err(), "{result:?}");
        assert!(peak < SLACK, "decoding held {peak} bytes");
    }
}

/// XXH32 with seed 0 of fewer than 16 bytes (the LZ4 frame header checksum).
fn xxh32_short(data: &[u8]) -> u32 {
    const P1: u32 = 2_654_435_761;
    const P2: u32 = 2_246_822_519;
    const P3: u32 = 3_266_489_917;
    const P4: u32 = 668_265_263;
    const P5: u32 = 374_761_393;
    assert!(data.len() < 16);
    let mut h = P5.wrapping_add(data.len() as u32);
    let mut chunks = data.chunks_exact(4);
    for c in &mut chunks {
        let v = u32::from_le_bytes([c[0], c[1], c[2], c[3]]);
        h = h
            .wrapping_add(v.wrapping_mul(P3))
            .rotate_left(17)
            .wrapping_mul(P4);
    }
    for &b in chunks.remainder() {
        h = h
            .wrapping_add(u32::from(b).wrapping_mul(P5))
            .rotate_left(11)
            .wrapping_mul(P1);
    }
    h ^= h >> 15;
    h = h.wrapping_mul(P2);
    h ^= h >> 13;
    h = h.wrapping_mul(P3);
    h ^ (h >> 16)
}

#[test]
fn an_lz4_frame_claiming_a_huge_content_size_is_refused_without_allocating_it() {
    // Version 1, independent blocks, content size present; 64 KiB blocks.
    let mut descriptor = vec![0b0110_1000, 0x40];
    descriptor.extend_from_slice(&(1u64 << 40).to_le_bytes());
    let mut frame = vec![0x04, 0x22, 0x4d, 0x18];
    frame.extend_from_slice(&descriptor);
    frame.push((xxh32_short(&descriptor) >> 8) as u8);
    frame.extend_from_slice(&0x8000_0001u32.to_le_bytes()); // an uncompressed block of 1 byte
    frame.push(b'x');
    frame.extend_from_slice(&[0, 0, 0, 0]); // end mark
    let (result, peak) = peak_during(|| decode_batch(batch(3, 1, &frame)));
    assert!(result.is_err(), "{result:?}");
    assert!(peak < SLACK, "decoding held {peak} bytes");
}

#[test]
fn a_batch_claiming_billions_of_records_does_not_reserve_room_for_them() {
    // A valid gzip batch of one record whose header claims i32::MAX records:
    // the decoder reserved a slot (176 bytes) per claimed record up front.
    let record = Record {
        transactional: false,
        control: false,
        delete_horizon: false,
        partition_leader_epoch: 0,
        producer_id: -1,
        producer_epoch: -1,
        timestamp_type: TimestampType::Creation,
        offset: 0,
        sequence: -1,
        timestamp: 0,
        key: None,
        value: Some(Bytes::from_static(b"v")),
        headers: Default::default(),
    };
    let mut encoded = BytesMut::new();
    RecordBatchEncoder::encode(
        &mut encoded,
        [&record],
        &RecordEncodeOptions {
            version: 2,
            compression: Compression::Gzip,
        },
    )
    .expect("encode");
    let (result, peak) = peak_during(|| decode_batch(batch(1, i32::MAX, &encoded[61..])));
    assert!(result.is_err(), "{result:?}");
    assert!(peak < SLACK, "decoding held {peak} bytes");
}

/// Records whose uncompressed records section is `n` bytes or so.
fn records(n: usize) -> Vec<Record> {
    (0..(n / 1000).max(1))
        .map(|i| Record {
            transactional: false,
            control: false,
            delete_horizon: false,
            partition_leader_epoch: 0,
            producer_id: -1,
            producer_epoch: -1,
            timestamp_type: TimestampType::Creation,
            offset: i as i64,
            sequence: i as i32,
            timestamp: 1_700_000_000_000,
            key: Some(Bytes::from(format!("key-{i}"))),
            value: Some(Bytes::from(vec![b'a' + (i % 26) as u8; 990])),
            headers: Default::default(),
        })
        .collect()
}

fn encode(records: &[Record], compression: Compression) -> Bytes {
    let mut b = BytesMut::new();
    RecordBatchEncoder::encode(
        &mut b,
        records,
        &RecordEncodeOptions {
            version: 2,
            compression,
        },
    )
    .expect("encode");
    b.freeze()
}

fn values(decoded: &[StoredRecord]) -> Vec<Option<Bytes>> {
    decoded.iter().map(|r| r.value.clone()).collect()
}

#[test]
fn batches_that_decompress_to_exactly_the_limit_decode_and_one_byte_more_do_not() {
    let recs = records(200_000);
    let expanded = encode(&recs, Compression::None).len() - 61;
    let want: Vec<Option<Bytes>> = recs.iter().map(|r| r.value.clone()).collect();
    for compression in [
        Compression::Gzip,
        Compression::Snappy,
        Compression::Lz4,
        Compression::Zstd,
    ] {
        let b = encode(&recs, compression);
        assert!(
            b.len() < expanded / 4,
            "{compression:?}: {} of {expanded}",
            b.len()
        );
        let decoded = decode_batch_with_limit(b.clone(), expanded)
            .unwrap_or_else(|e| panic!("{compression:?} at its exact size: {e}"));
        assert_eq!(values(&decoded), want, "{compression:?}");
        assert_eq!(values(&decode_batch(b.clone()).unwrap()), want);
        assert!(
            decode_batch_with_limit(b, expanded - 1).is_err(),
            "{compression:?} one byte over its limit"
        );
    }
}
