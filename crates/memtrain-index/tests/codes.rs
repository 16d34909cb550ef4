//! The compressed memory bank: recall against the exact neighbours, the byte formula, bad
//! input, and the spread of its seeded quantizer.

use memtrain_index::codes::{CodeLayout, CompressedIndex};
use memtrain_index::data::{Points, clustered};
use memtrain_index::kernel::l2sq;
use memtrain_index::metrics::recall_at_k;
use memtrain_index::{Error, TtSearch, ground_truth, io};

mod common;
use common::trained_index;

const N: usize = 512;
const D: usize = 16;

fn points() -> Points {
    clustered(N, D, 8, 3)
}

/// Every leaf probed.
fn all_leaves() -> TtSearch {
    TtSearch::new(16, 16)
}

/// Mean recall@10 of `bank` on the first 64 points as queries (each its own neighbour too).
fn recall(bank: &CompressedIndex, points: &Points) -> f64 {
    let queries = points.head(64);
    let truth = ground_truth(points, &queries, 10).unwrap();
    let mut total = 0.0;
    for (i, t) in truth.iter().enumerate() {
        let q = queries.row(i);
        let found: Vec<(f32, u32)> = bank
            .search(q, 10, &all_leaves())
            .unwrap()
            .into_iter()
            .map(|(_, id)| (l2sq(q, points.row(id as usize)), id))
            .collect();
        total += recall_at_k(&found, t, 10);
    }
    total / queries.len() as f64
}

/// `N (c + 4) + 4 (L + 1) + S + (m D + 4 m + 4 r m) [m < D] + 4 · 2^b · m + 4 [norm]`.
fn formula(bank: &CompressedIndex) -> usize {
    let l = bank.layout();
    let m = l.projected;
    let c = bank.coarse();
    let r = c.cloud().ranks()[c.leaf_level()];
    let projection = if m < D { m * D + 4 * m + 4 * r * m } else { 0 };
    bank.len() * (l.code_bytes() + 4)
        + 4 * (bank.coarse().leaves() + 1)
        + bank.coarse().structure_bytes()
        + projection
        + 4 * (1 << l.bits) * m
        + if l.norm { 4 } else { 0 }
}

#[test]
fn should_find_near_exact_neighbours_at_the_largest_code() {
    let p = points();
    let bank = CompressedIndex::build(trained_index(&p), &p, 4 * D, 0).unwrap();
    assert_eq!(bank.layout().subspaces, D);
    assert_eq!(bank.layout().bits, 8);
    let r = recall(&bank, &p);
    assert!(r >= 0.97, "recall {r}");
}

#[test]
fn should_not_lose_recall_as_codes_grow() {
    let p = points();
    let idx = trained_index(&p);
    let recalls: Vec<f64> = [1, 2, 4, 8, 16]
        .iter()
        .map(|&c| recall(&CompressedIndex::build(idx.clone(), &p, c, 0).unwrap(), &p))
        .collect();
    for w in recalls.windows(2) {
        assert!(w[1] >= w[0] - 0.01, "recalls {recalls:?}");
    }
    assert!(recalls[4] > recalls[0] + 0.2, "recalls {recalls:?}");
}

#[test]
fn should_count_bytes_by_the_formula() {
    let p = points();
    let idx = trained_index(&p);
    let projected = CodeLayout {
        projected: 8,
        subspaces: 5,
        bits: 4,
        norm: true,
    };
    let banks = [
        CompressedIndex::build(idx.clone(), &p, 3, 0).unwrap(),
        CompressedIndex::build(idx.clone(), &p, 4 * D, 0).unwrap(),
        CompressedIndex::build_with(idx.clone(), &p, projected, 0).unwrap(),
    ];
    assert_eq!(projected.code_bytes(), 4);
    for bank in &banks {
        assert_eq!(bank.len(), N);
        assert!(!bank.is_empty());
        assert_eq!(bank.bytes(), formula(bank), "{:?}", bank.layout());
        let per = bank.bytes_per_vector();
        assert!((per - bank.bytes() as f64 / N as f64).abs() < 1e-9);
    }
}

#[test]
fn should_code_a_projection_to_the_leading_directions() {
    // The clusters' spread is isotropic, so most of it is dropped: the norm byte keeps the
    // ranking sensible, and the codes still find most neighbours.
    let p = points();
    let layout = CodeLayout {
        projected: 12,
        subspaces: 6,
        bits: 4,
        norm: true,
    };
    let bank = CompressedIndex::build_with(trained_index(&p), &p, layout, 0).unwrap();
    let r = recall(&bank, &p);
    assert!(r >= 0.4, "recall {r}");
}

#[test]
fn should_follow_the_layout_rule() {
    let small = CodeLayout::for_bytes(14, 784);
    assert_eq!(
        small,
        CodeLayout {
            projected: 116,
            subspaces: 26,
            bits: 4,
            norm: true
        }
    );
    assert_eq!(small.code_bytes(), 14);
    for c in 1..=4 * D {
        let l = CodeLayout::for_bytes(c, D);
        assert!(l.code_bytes() <= c, "{c} bytes: {l:?}");
    }
    for c in 1..=3136 {
        assert!(CodeLayout::for_bytes(c, 784).code_bytes() <= c);
    }
}

fn invalid(e: Error, needle: &str) {
    let text = e.to_string();
    assert!(matches!(e, Error::Invalid { .. }), "{text}");
    assert!(text.contains(needle), "{text} should name {needle}");
}

#[test]
fn should_reject_bad_input() {
    let p = points();
    let idx = trained_index(&p);
    invalid(
        CompressedIndex::build(idx.clone(), &p, 0, 0).unwrap_err(),
        "1..=64",
    );
    invalid(
        CompressedIndex::build(idx.clone(), &p, 4 * D + 1, 0).unwrap_err(),
        "65",
    );
    let other = clustered(N, D + 1, 8, 3);
    invalid(
        CompressedIndex::build(idx.clone(), &other, 8, 0).unwrap_err(),
        "17",
    );
    invalid(
        CompressedIndex::build(idx.clone(), &p.head(N - 1), 8, 0).unwrap_err(),
        "511",
    );
    let bad = CodeLayout {
        projected: D,
        subspaces: 4,
        bits: 4,
        norm: true,
    };
    invalid(
        CompressedIndex::build_with(idx.clone(), &p, bad, 0).unwrap_err(),
        "code layout",
    );
    let bank = CompressedIndex::build(idx, &p, 8, 0).unwrap();
    invalid(
        bank.search(&[0.0; D + 1], 10, &all_leaves()).unwrap_err(),
        "17",
    );
    assert!(bank.search(p.row(0), 10, &TtSearch::new(4, 0)).is_err());
}

#[test]
fn should_be_reproducible_and_stable_across_seeds() {
    // The quantizer is seeded (training sample, k-means starts, principal directions): one
    // seed gives one index, and over seeds the distance estimates are unbiased within
    // k·σ/√n and the recall varies little.
    let p = points();
    let idx = trained_index(&p);
    let layout = CodeLayout {
        projected: 12,
        subspaces: 12,
        bits: 4,
        norm: true,
    };
    let once = CompressedIndex::build_with(idx.clone(), &p, layout, 7).unwrap();
    let again = CompressedIndex::build_with(idx.clone(), &p, layout, 7).unwrap();
    assert_eq!(
        once.search(p.row(3), 10, &all_leaves()).unwrap(),
        again.search(p.row(3), 10, &all_leaves()).unwrap()
    );
    let seeds = 8;
    let mut recalls = Vec::new();
    let mut errors = Vec::new();
    for seed in 0..seeds {
        let bank = CompressedIndex::build_with(idx.clone(), &p, layout, seed).unwrap();
        recalls.push(recall(&bank, &p));
        let q = p.row(100 + seed as usize);
        for (approx, id) in bank.search(q, N, &all_leaves()).unwrap() {
            let exact = l2sq(q, p.row(id as usize));
            errors.push(f64::from(approx - exact) / f64::from(exact.max(1e-6) + approx));
        }
    }
    let n = errors.len() as f64;
    let mean = errors.iter().sum::<f64>() / n;
    let sd = (errors.iter().map(|e| (e - mean).powi(2)).sum::<f64>() / (n - 1.0)).sqrt();
    // A relative bias of a few percent is the quantizer's shrinkage towards the centroids.
    assert!(
        mean.abs() < 0.05 + 4.0 * sd / n.sqrt(),
        "bias {mean}, sd {sd}"
    );
    let rm = recalls.iter().sum::<f64>() / seeds as f64;
    let rsd = (recalls.iter().map(|r| (r - rm).powi(2)).sum::<f64>() / (seeds as f64 - 1.0)).sqrt();
    assert!(rm > 0.5 && rsd < 0.08, "recalls {recalls:?}");
}

/// A scratch directory of this test process.
fn scratch(name: &str) -> std::path::PathBuf {
    let dir = std::env::temp_dir().join(format!("memtrain-codes-{}-{name}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// `(distance bits, id)` of every point found for the first 16 points as queries.
fn answers(bank: &CompressedIndex, p: &Points) -> Vec<Vec<(u32, u32)>> {
    (0..16)
        .map(|i| {
            bank.search(p.row(i), 10, &all_leaves())
                .unwrap()
                .into_iter()
                .map(|(d, id)| (d.to_bits(), id))
                .collect()
        })
        .collect()
}

/// Layouts covering every path of the format: a projection with the norm byte, 8-bit codes
/// of every coordinate, and an odd number of 4-bit codes (a padding nibble).
fn layouts() -> [CodeLayout; 3] {
    [
        CodeLayout::for_bytes(3, D),
        CodeLayout::for_bytes(4 * D, D),
        CodeLayout {
            projected: D,
            subspaces: 5,
            bits: 4,
            norm: false,
        },
    ]
}

#[test]
fn should_round_trip_a_compressed_file_bit_for_bit() {
    let p = points();
    let idx = trained_index(&p).refine(&p, 2).unwrap();
    let dir = scratch("round-trip");
    let (a, b) = (dir.join("a.mtpq"), dir.join("b.mtpq"));
    for layout in layouts() {
        let bank = CompressedIndex::build_with(idx.clone(), &p, layout, 1).unwrap();
        io::save_compressed(&bank, &a).unwrap();
        let loaded = io::load_compressed(&a).unwrap();
        assert_eq!(loaded.layout(), layout);
        assert_eq!(loaded.coarse(), bank.coarse());
        assert_eq!(loaded.len(), N);
        assert_eq!(loaded.bytes(), bank.bytes());
        assert_eq!(answers(&loaded, &p), answers(&bank, &p), "{layout:?}");
        io::save_compressed(&loaded, &b).unwrap();
        assert_eq!(std::fs::read(&a).unwrap(), std::fs::read(&b).unwrap());
        // load_any tells the two kinds apart and searches alike.
        let any = io::load_any(&a).unwrap();
        assert!(matches!(any, io::Loaded::Compressed(_)));
        assert_eq!((any.dim(), any.len()), (D, N));
        let q = p.row(5);
        assert_eq!(
            any.search(q, 10, &all_leaves()).unwrap(),
            bank.search(q, 10, &all_leaves()).unwrap()
        );
    }
    io::save(&idx, &b).unwrap();
    let any = io::load_any(&b).unwrap();
    assert!(matches!(any, io::Loaded::Plain(_)));
    assert_eq!(any.coarse(), &idx);
    std::fs::remove_dir_all(&dir).unwrap();
}

fn file_error(e: Error, needle: &str) {
    let text = e.to_string();
    assert!(matches!(e, Error::File { .. }), "{text}");
    assert!(text.contains(needle), "{text} should say {needle}");
}

#[test]
fn should_refuse_truncated_corrupt_foreign_and_cross_kind_files() {
    let p = points();
    let idx = trained_index(&p);
    let bank = CompressedIndex::build(idx.clone(), &p, 6, 0).unwrap();
    let dir = scratch("refuse");
    let (good, plain, bad) = (dir.join("good"), dir.join("plain"), dir.join("bad"));
    io::save_compressed(&bank, &good).unwrap();
    io::save(&idx, &plain).unwrap();
    let bytes = std::fs::read(&good).unwrap();
    let write = |b: &[u8]| std::fs::write(&bad, b).unwrap();
    write(&bytes[..bytes.len() - 5]);
    file_error(io::load_compressed(&bad).unwrap_err(), "truncated");
    write(&bytes[..12]);
    file_error(io::load_compressed(&bad).unwrap_err(), "truncated header");
    let mut flipped = bytes.clone();
    flipped[40] ^= 0x10;
    write(&flipped);
    file_error(io::load_compressed(&bad).unwrap_err(), "checksum");
    let mut version = bytes.clone();
    version[8] = 9;
    write(&version);
    file_error(io::load_compressed(&bad).unwrap_err(), "version 9");
    write(b"PK\x03\x04 a zip header, not an index");
    file_error(
        io::load_compressed(&bad).unwrap_err(),
        "not a memtrain index",
    );
    file_error(io::load_any(&bad).unwrap_err(), "not a memtrain index");
    // Each reader names the other kind of file.
    file_error(io::load(&good).unwrap_err(), "a compressed index");
    file_error(io::load(&good).unwrap_err(), "--codes");
    file_error(io::load_compressed(&plain).unwrap_err(), "a plain index");
    // Every error names the file.
    let msg = io::load_compressed(&plain).unwrap_err().to_string();
    assert!(msg.contains("plain"), "{msg}");
    std::fs::remove_dir_all(&dir).unwrap();
}

/// `bytes` with its header's CRC-32 recomputed over the payload.
fn with_crc(mut bytes: Vec<u8>) -> Vec<u8> {
    let crc = crc32fast::hash(&bytes[24..]);
    bytes[20..24].copy_from_slice(&crc.to_le_bytes());
    bytes
}

#[test]
fn should_refuse_checksummed_corruption_without_panicking() {
    use rand::rngs::StdRng;
    use rand::{Rng, SeedableRng};

    let p = points();
    let idx = trained_index(&p);
    let dir = scratch("flips");
    let (good, bad) = (dir.join("good"), dir.join("bad"));
    let odd = layouts()[2];
    let bank = CompressedIndex::build_with(idx.clone(), &p, odd, 0).unwrap();
    io::save_compressed(&bank, &good).unwrap();
    let bytes = std::fs::read(&good).unwrap();
    // The last byte is the last point's third code byte: its high nibble pads 5 subspaces.
    let mut nibble = bytes.clone();
    *nibble.last_mut().unwrap() |= 0x30;
    std::fs::write(&bad, with_crc(nibble)).unwrap();
    file_error(io::load_compressed(&bad).unwrap_err(), "nibble");
    // The layout word `bits` (after the coarse payload's version and length, and itself).
    let coarse_len = u64::from_le_bytes(bytes[28..36].try_into().unwrap()) as usize;
    let bits_at = 36 + coarse_len + 8;
    assert_eq!(bytes[bits_at], 4);
    let mut bits = bytes.clone();
    bits[bits_at] = 40;
    std::fs::write(&bad, with_crc(bits)).unwrap();
    file_error(io::load_compressed(&bad).unwrap_err(), "code layout");
    // Random flips past the checksum: an error, or an index that searches.
    let mut rng = StdRng::seed_from_u64(5);
    let after = bits_at - 8;
    for case in 0..200 {
        let mut b = bytes.clone();
        let at = if case % 2 == 0 {
            // The structural words after the coarse payload: layout, counts, offsets.
            after + rng.random_range(0..96)
        } else {
            rng.random_range(24..b.len())
        };
        b[at] ^= rng.random_range(1..=255u8);
        std::fs::write(&bad, with_crc(b)).unwrap();
        if let Ok(loaded) = io::load_compressed(&bad) {
            loaded.search(p.row(0), 10, &all_leaves()).unwrap();
        }
    }
    std::fs::remove_dir_all(&dir).unwrap();
}
