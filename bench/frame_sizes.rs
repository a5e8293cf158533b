//! Measures what the zstd frame size does to a full backup's size and compression speed:
//! every table's COPY text cut by crmvault's chunker, a dictionary trained per table as a
//! backup does, then compressed one frame per chunk or in frames of consecutive chunks.
//! Single-threaded, no database, no encryption: only the compression choice varies.
//!
//! ```sh
//! for t in $(psql -At -d crmvault_bench -c "SELECT relname FROM pg_class WHERE relnamespace = 'crm'::regnamespace AND relkind = 'r'"); do
//!     psql -d crmvault_bench -c "\copy (SELECT * FROM crm.$t ORDER BY 1) TO '/tmp/copy/$t.copy'"
//! done
//! cargo run --release --example frame_sizes -- /tmp/copy/*.copy   # FRAMES=0,65536 LEVEL=3 NODICT=1 EXTDICT=1
//! cat /tmp/copy/*.copy | zstd -3 | wc -c                          # the stream compressed whole
//! ```

#![allow(clippy::cast_precision_loss)] // sizes shown in MiB and MB/s

use std::time::Instant;

use crmvault::chunk::{ChunkParams, chunk_all};
use crmvault::compress::{
    ChunkCompressor, CompressionDictionary, DecompressionDictionary, DictionarySize, FrameCoding, FrameDictionary,
    bytea, train,
};

fn main() {
    let setting = |name: &str, default: &str| std::env::var(name).unwrap_or_else(|_| default.to_string());
    let frame_sizes: Vec<usize> =
        setting("FRAMES", "0,65536,131072,262144").split(',').map(|s| s.parse().expect("FRAMES: sizes")).collect();
    let level: i32 = setting("LEVEL", "3").parse().expect("LEVEL: a zstd level");
    let with_dictionary = std::env::var_os("NODICT").is_none();
    // As a backup does: each frame laid out right behind the dictionary (EXTDICT=1: zstd's
    // external-dictionary mode instead, as format 4's first builds did).
    let laid_out = std::env::var_os("EXTDICT").is_none();
    let streams: Vec<Vec<Vec<u8>>> = std::env::args()
        .skip(1)
        .map(|path| chunk_all(&[7; 32], ChunkParams::default(), &std::fs::read(&path).expect("a readable file")))
        .collect();
    for frame_size in frame_sizes {
        let (mut stored, mut raw, mut frames) = (0, 0, 0);
        let (mut compressing, mut decompressing, mut training) = (0.0, 0.0, 0.0);
        let mut zstd = ChunkCompressor::default();
        for chunks in &streams {
            // As a backup does: a dictionary trained on the table's first 8 MiB of chunks.
            let mut samples: Vec<&[u8]> = Vec::new();
            for chunk in chunks {
                if samples.iter().map(|s| s.len()).sum::<usize>() >= 8 << 20 {
                    break;
                }
                samples.push(chunk);
            }
            let started = Instant::now();
            let dictionary = if with_dictionary { train(&samples, level, DictionarySize::Full) } else { None };
            if let Some(bytes) = &dictionary {
                stored += crmvault::compress::store_dictionary(bytes).len();
            }
            training += started.elapsed().as_secs_f64();
            let for_compression = dictionary.as_ref().and_then(|d| CompressionDictionary::new(d, level));
            let largest = chunks.iter().map(Vec::len).max().unwrap_or(0);
            let mut laid_out = dictionary
                .as_ref()
                .filter(|_| laid_out)
                .and_then(|d| FrameDictionary::new(d, level, frame_size.max(largest)));
            let for_decompression = dictionary.as_ref().and_then(|d| DecompressionDictionary::new(d));
            // Frames of consecutive chunks up to frame_size (0: one per chunk), as a backup cuts them.
            let mut groups: Vec<Vec<u8>> = Vec::new();
            for chunk in chunks {
                raw += chunk.len();
                match groups.last_mut() {
                    Some(last) if last.len() + chunk.len() <= frame_size => last.extend_from_slice(chunk),
                    _ => groups.push(chunk.clone()),
                }
            }
            let started = Instant::now();
            let mut text = Vec::new();
            let compressed: Vec<Vec<u8>> = groups
                .iter()
                .map(|g| {
                    // As a backup does since format 6: bytea's hex text packed into bytes.
                    text.clear();
                    bytea::pack(g, &mut text);
                    match laid_out.as_mut() {
                        Some(laid_out) => laid_out.compress(&mut zstd, &text),
                        None => zstd.compress(&text, level, for_compression.as_ref()),
                    }
                })
                .collect();
            compressing += started.elapsed().as_secs_f64();
            let started = Instant::now();
            for (frame, group) in compressed.iter().zip(&groups) {
                let mut plaintext = Vec::new();
                FrameCoding { dictionary: for_decompression.as_ref(), packed: true }
                    .decode_onto(frame, group.len(), &mut plaintext)
                    .expect("a frame just made");
                assert_eq!(&plaintext, group);
            }
            decompressing += started.elapsed().as_secs_f64();
            stored += compressed.iter().map(Vec::len).sum::<usize>();
            frames += groups.len();
        }
        println!(
            "frames of {frame_size:>7} B, dictionary {with_dictionary}, level {level}: {stored} bytes ({:.1} MiB) in {frames} frames; \
             train and store dictionaries {training:.2} s, compress {compressing:.2} s ({:.0} MB/s of text), decompress {decompressing:.2} s",
            stored as f64 / 1_048_576.0,
            raw as f64 / compressing / 1e6
        );
    }
}
