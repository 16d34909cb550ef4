//! No panic on any input: degenerate sets, huge settings, arbitrary argument text, and every
//! file the index reads truncated, flipped or swapped. Each gives an error (naming the file
//! where there is one) and leaves the file as it was.

use std::io::Write;
use std::path::{Path, PathBuf};

use memtrain_index::data::{Points, clustered, read_fashion_mnist, read_npy, write_npy};
use memtrain_index::kernel::TopK;
use memtrain_index::ood;
use memtrain_index::{
    Error, FitConfig, TtCloud, TtIndex, TtSearch, assign, check_memory, fit, ground_truth, io,
    parse,
};
use proptest::prelude::*;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

fn scratch(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!(
        "memtrain-index-hardening-{}-{name}",
        std::process::id()
    ));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// An index over 64 points of dimension 3 without training: the exact full-rank cloud.
fn small_index() -> (Points, TtIndex) {
    let points = clustered(64, 3, 4, 0);
    let cloud = TtCloud::from_points_exact(&points, &[4, 4, 4]).unwrap();
    let index = TtIndex::build(cloud, &points, 2).unwrap();
    (points, index)
}

/// The error of `r`, without printing a success (a cloud of a million modes is long).
fn err<T>(r: Result<T, Error>) -> Error {
    match r {
        Ok(_) => panic!("expected an error, got a success"),
        Err(e) => e,
    }
}

fn too_large(e: &Error) -> bool {
    let msg = e.to_string();
    matches!(e, Error::TooLarge { .. })
        && msg.contains("needs an estimated")
        && msg.contains("more than the limit of")
}

#[test]
fn should_answer_no_queries_with_an_empty_ground_truth() {
    // Before: `queries.row(0)` panicked, "range end index 8 out of range for slice of
    // length 0" (what `memtrain index bench --limit 0` reached).
    let base = clustered(20, 8, 2, 0);
    assert!(ground_truth(&base, &base.head(0), 10).unwrap().is_empty());
    let wide = clustered(3, 9, 1, 0);
    let msg = ground_truth(&base, &wide.head(0), 10)
        .unwrap_err()
        .to_string();
    assert!(
        msg.contains("query dimension") && msg.contains("9"),
        "{msg}"
    );
    let msg = ground_truth(&base.head(0), &base, 10)
        .unwrap_err()
        .to_string();
    assert!(msg.contains("0 points"), "{msg}");
    // k beyond the points: every point, nearest first.
    let all = ground_truth(&base, &base.head(1), 1000).unwrap();
    assert_eq!(all[0].len(), 20);
}

#[test]
fn should_refuse_to_assign_to_no_centres() {
    // Before: `v[0]` on an empty candidate list panicked.
    let points = clustered(10, 4, 2, 0);
    let msg = assign(&points, &points.head(0)).unwrap_err().to_string();
    assert!(msg.contains("centres") && msg.contains("0 points"), "{msg}");
    assert_eq!(assign(&points.head(0), &points).unwrap(), Vec::<u32>::new());
}

#[test]
fn should_search_with_a_huge_k_beam_or_probe_without_reserving_it() {
    // Before: `Vec::with_capacity(k + 1)` panicked ("capacity overflow") for k = usize::MAX.
    let mut top = TopK::new(usize::MAX);
    top.push(1.0, 0);
    assert_eq!(top.into_sorted(), vec![(1.0, 0)]);
    let (points, index) = small_index();
    let found = index
        .search(
            points.row(0),
            usize::MAX,
            &TtSearch::new(usize::MAX, usize::MAX),
        )
        .unwrap();
    assert_eq!(found.len(), 64);
    assert_eq!(found[0].1, 0);
    // k = 0 is the empty answer.
    assert!(
        index
            .search(points.row(0), 0, &TtSearch::new(2, 2))
            .unwrap()
            .is_empty()
    );
}

#[test]
fn should_refuse_a_shape_too_large_for_memory_before_allocating() {
    // Before: `TtIndex::build` allocated the centres of 2^40 leaves and the process aborted.
    let m = 1usize << 20;
    let cloud = TtCloud::new(
        vec![m, m, m],
        vec![1, 1, 1, 1],
        vec![vec![0.5; m]; 3],
        vec![1.0, 0.0, 0.0],
        vec![0.0; 3],
    )
    .unwrap();
    let points = clustered(10, 3, 1, 0);
    let err = err(TtIndex::build(cloud, &points, 2));
    assert!(too_large(&err), "{err}");
    assert!(err.to_string().contains("building the index"), "{err}");

    // Training refuses a huge shape or batch up front too.
    let config = FitConfig {
        rank: 4,
        steps: 1,
        batch: 16,
        ..FitConfig::default()
    };
    let err = self::err(fit(&points, &[1 << 40, m], &config, &mut |_| {}));
    assert!(too_large(&err), "{err}");
    assert!(
        err.to_string().contains("shape [1099511627776, 1048576]"),
        "{err}"
    );
    let huge_batch = FitConfig {
        batch: 1 << 50,
        ..config.clone()
    };
    let err = self::err(fit(&points, &[2, 5], &huge_batch, &mut |_| {}));
    assert!(too_large(&err), "{err}");
    // A product beyond usize, and the combined check the CLI runs before training.
    let err = check_memory(&[usize::MAX, 2], 3, 10, 1, &config).unwrap_err();
    assert!(err.to_string().contains("overflow"), "{err}");
    let err = check_memory(&[m, m, m], 3, 10, 2, &config).unwrap_err();
    assert!(err.to_string().contains("building the index"), "{err}");
    assert!(too_large(&err), "{err}");
    check_memory(&[4, 4, 4], 3, 10, 2, &config).unwrap();
}

#[test]
fn should_refuse_bad_training_settings_by_name() {
    let points = clustered(20, 3, 2, 0);
    let base = FitConfig {
        rank: 2,
        steps: 1,
        batch: 8,
        ..FitConfig::default()
    };
    for (config, word) in [
        (
            FitConfig {
                lr: f64::NAN,
                ..base.clone()
            },
            "invalid lr",
        ),
        (
            FitConfig {
                nn_weight: f64::NAN,
                ..base.clone()
            },
            "invalid nn_weight: got NaN",
        ),
        (
            FitConfig {
                level_weight: -1.0,
                ..base.clone()
            },
            "invalid level_weight: got -1",
        ),
        (
            FitConfig {
                projections: 0,
                ..base.clone()
            },
            "invalid projections",
        ),
    ] {
        let msg = fit(&points, &[4, 5], &config, &mut |_| {})
            .unwrap_err()
            .to_string();
        assert!(msg.contains(word), "{msg} should contain {word}");
    }
}

#[test]
fn should_refuse_an_ood_split_without_both_kinds_of_test_point() {
    // Before: `auroc` asserted "AUROC needs both classes".
    let labels = |n: usize| (0..n).map(|i| (i % 10) as u8).collect::<Vec<u8>>();
    let mut data = memtrain_index::data::FashionMnist {
        train: clustered(40, 4, 10, 0),
        train_labels: labels(40),
        test: clustered(10, 4, 10, 1),
        test_labels: vec![3; 10],
    };
    let msg = ood::split(&data, &[3]).unwrap_err().to_string();
    assert!(msg.contains("both in and out"), "{msg}");
    // Labels that do not match the images: before, an index out of bounds.
    data.test_labels = labels(10);
    data.train_labels.truncate(5);
    let msg = ood::split(&data, &[0, 1]).unwrap_err().to_string();
    assert!(msg.contains("training labels"), "{msg}");
}

fn config_cases() -> ProptestConfig {
    ProptestConfig::with_cases(64)
}

/// Text made of what list arguments are made of, so that most cases come near the grammar.
fn list_text() -> impl Strategy<Value = String> {
    prop_oneof![".*", "[0-9, +-]{0,12}", "([0-9]{1,22},){0,4}[0-9]{0,22}",]
}

/// The error of a parser quotes the whole text.
fn names_the_text(err: &Error, text: &str) -> bool {
    let quoted = format!("{text:?}");
    matches!(err, Error::Invalid { .. }) && err.to_string().contains(&quoted)
}

proptest! {
    #![proptest_config(config_cases())]

    #[test]
    fn should_parse_any_shape_text_or_name_it(text in list_text()) {
        match parse::shape(&text) {
            Ok(modes) => {
                prop_assert!(!modes.is_empty() && modes.iter().all(|&m| m >= 1));
                prop_assert!(modes.iter().try_fold(1usize, |a, &b| a.checked_mul(b)).is_some());
            }
            Err(e) => prop_assert!(names_the_text(&e, &text), "{e}"),
        }
    }

    #[test]
    fn should_parse_any_beam_text_or_name_it(text in list_text()) {
        match parse::beam(&text) {
            Ok(beam) => prop_assert!(!beam.is_empty() && !beam.contains(&0)),
            Err(e) => prop_assert!(names_the_text(&e, &text), "{e}"),
        }
    }

    #[test]
    fn should_parse_any_classes_text_or_name_it(text in list_text()) {
        match parse::classes(&text) {
            Ok(c) => prop_assert!((1..10).contains(&c.len()) && c.iter().all(|&x| x <= 9)),
            Err(e) => prop_assert!(names_the_text(&e, &text), "{e}"),
        }
    }

    /// What parses is what was written: the modes joined by commas parse back to themselves.
    #[test]
    fn should_round_trip_a_written_shape(modes in proptest::collection::vec(1usize..1000, 1..5)) {
        let text = modes.iter().map(usize::to_string).collect::<Vec<_>>().join(",");
        prop_assert_eq!(parse::shape(&text).unwrap(), modes);
    }
}

#[test]
fn should_parse_the_documented_forms() {
    assert_eq!(parse::shape("16,16,16").unwrap(), [16, 16, 16]);
    assert_eq!(parse::beam("8").unwrap(), [8]);
    assert_eq!(parse::beam(" 8 , 16 ").unwrap(), [8, 16]);
    assert_eq!(parse::classes("4,0,0,2").unwrap(), [0, 2, 4]);
    let msg = parse::classes("0,1,2,3,4,5,6,7,8,9")
        .unwrap_err()
        .to_string();
    assert!(msg.contains("all ten"), "{msg}");
    let msg = parse::shape("18446744073709551615,2")
        .unwrap_err()
        .to_string();
    assert!(msg.contains("overflow"), "{msg}");
    for bad in ["", "0", "4,,4", "4,-1", "x", "99999999999999999999999"] {
        assert!(parse::shape(bad).is_err(), "{bad:?}");
        assert!(parse::beam(bad).is_err(), "{bad:?}");
    }
}

/// The corruptions of `bytes` the tests try, seeded: truncations at random offsets (and at
/// every header byte), single and multiple random byte flips.
fn corruptions(bytes: &[u8], seed: u64, cases: usize) -> Vec<(String, Vec<u8>, bool)> {
    let mut rng = StdRng::seed_from_u64(seed);
    let mut out = Vec::new();
    let header = bytes.len().min(32);
    for cut in (0..header).chain((0..cases).map(|_| rng.random_range(0..bytes.len()))) {
        out.push((format!("truncated at {cut}"), bytes[..cut].to_vec(), true));
    }
    for _ in 0..cases {
        let mut b = bytes.to_vec();
        let flips = rng.random_range(1..4);
        let mut at = Vec::new();
        for _ in 0..flips {
            let i = rng.random_range(0..b.len());
            b[i] ^= rng.random_range(1..=255u8);
            at.push(i);
        }
        out.push((format!("bytes flipped at {at:?}"), b, false));
    }
    out
}

/// Reads `path` with `read` and checks the outcome: an error naming the file (or, where
/// `must_fail` is false, possibly a success: a flipped data byte can be another valid file),
/// and the file's bytes unchanged.
fn check_read<T>(
    path: &Path,
    what: &str,
    must_fail: bool,
    read: impl Fn(&Path) -> Result<T, Error>,
) {
    let before = std::fs::read(path).unwrap();
    let outcome = read(path);
    assert_eq!(
        std::fs::read(path).unwrap(),
        before,
        "{what}: the file changed"
    );
    match outcome {
        Ok(_) => assert!(!must_fail, "{what}: read without an error"),
        Err(e) => {
            let msg = e.to_string();
            let name = path.file_name().unwrap().to_str().unwrap();
            assert!(msg.contains(name), "{what}: {msg:?} does not name {name}");
        }
    }
}

#[test]
fn should_refuse_every_corrupt_index_file_by_name() {
    let dir = scratch("index");
    let (_, index) = small_index();
    let good = dir.join("good.idx");
    io::save(&index, &good).unwrap();
    let bytes = std::fs::read(&good).unwrap();
    let bad = dir.join("bad.idx");
    for (what, b, _) in corruptions(&bytes, 1, 96) {
        std::fs::write(&bad, &b).unwrap();
        // A flip can only pass where the checksum matches: never for these.
        check_read(&bad, &what, true, io::load);
    }
    // Past the checksum: payload flips with the CRC recomputed reach the decoder, which must
    // refuse or accept a structurally valid index, never panic.
    let mut rng = StdRng::seed_from_u64(2);
    for case in 0..256 {
        let mut b = bytes.clone();
        let at = rng.random_range(24..b.len());
        // Mostly the structural words at the front of the payload.
        let at = if case % 2 == 0 {
            24 + (at - 24) % 64
        } else {
            at
        };
        b[at] ^= rng.random_range(1..=255u8);
        let crc = crc32fast::hash(&b[24..]);
        b[20..24].copy_from_slice(&crc.to_le_bytes());
        std::fs::write(&bad, &b).unwrap();
        check_read(
            &bad,
            &format!("payload byte {at} flipped, CRC fixed"),
            false,
            io::load,
        );
    }
    // A payload length announcing more than the file, or near u64::MAX.
    for len in [u64::MAX, u64::MAX / 4, (bytes.len() as u64) * 2] {
        let mut b = bytes.clone();
        b[12..20].copy_from_slice(&len.to_le_bytes());
        std::fs::write(&bad, &b).unwrap();
        check_read(&bad, &format!("payload length {len}"), true, io::load);
    }
    std::fs::remove_dir_all(&dir).unwrap();
}

/// A float32 `.npy` file with the given header dictionary's shape text and body, by hand.
fn npy_bytes(shape: &str, body: &[u8]) -> Vec<u8> {
    let mut header = format!("{{'descr': '<f4', 'fortran_order': False, 'shape': {shape}, }}");
    while (10 + header.len() + 1) % 64 != 0 {
        header.push(' ');
    }
    header.push('\n');
    let mut bytes = b"\x93NUMPY\x01\x00".to_vec();
    bytes.extend_from_slice(&(header.len() as u16).to_le_bytes());
    bytes.extend_from_slice(header.as_bytes());
    bytes.extend_from_slice(body);
    bytes
}

#[test]
fn should_refuse_every_corrupt_npy_file_by_name() {
    let dir = scratch("npy");
    let good = dir.join("good.npy");
    write_npy(&good, &clustered(12, 5, 2, 0)).unwrap();
    let bytes = std::fs::read(&good).unwrap();
    let bad = dir.join("bad.npy");
    for (what, b, must_fail) in corruptions(&bytes, 3, 96) {
        std::fs::write(&bad, &b).unwrap();
        check_read(&bad, &what, must_fail, read_npy);
    }
    // Headers that announce impossible arrays: huge, overflowing, empty, of another rank.
    for (shape, body) in [
        ("(4294967296, 4294967296)", &[0u8; 16][..]),
        (
            "(18446744073709551615, 18446744073709551615)",
            &[0u8; 16][..],
        ),
        ("(1000000000, 1000)", &[0u8; 16][..]),
        ("(0, 4)", &[][..]),
        ("(4, 0)", &[][..]),
        ("(2,)", &[0u8; 8][..]),
        ("(1, 1, 2)", &[0u8; 8][..]),
        ("(2, 1)", &[0x00, 0x00, 0xc0, 0x7f, 0, 0, 0, 0][..]),
    ] {
        std::fs::write(&bad, npy_bytes(shape, body)).unwrap();
        check_read(&bad, &format!("shape {shape}"), true, read_npy);
    }
    std::fs::remove_dir_all(&dir).unwrap();
}

fn gz(bytes: &[u8]) -> Vec<u8> {
    let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    e.write_all(bytes).unwrap();
    e.finish().unwrap()
}

fn idx(magic: u32, dims: &[u32], body: &[u8]) -> Vec<u8> {
    let mut b = magic.to_be_bytes().to_vec();
    for d in dims {
        b.extend_from_slice(&d.to_be_bytes());
    }
    b.extend_from_slice(body);
    b
}

const IMAGES: [&str; 2] = ["train-images-idx3-ubyte.gz", "t10k-images-idx3-ubyte.gz"];
const LABELS: [&str; 2] = ["train-labels-idx1-ubyte.gz", "t10k-labels-idx1-ubyte.gz"];

/// A Fashion-MNIST directory in miniature: 30 training and 20 test images of 4x4 pixels.
fn fake_fashion_mnist(dir: &Path) {
    for (images, labels, n) in [(IMAGES[0], LABELS[0], 30u32), (IMAGES[1], LABELS[1], 20)] {
        let pixels: Vec<u8> = (0..n * 16).map(|i| (i * 37 % 256) as u8).collect();
        let classes: Vec<u8> = (0..n).map(|i| (i % 10) as u8).collect();
        std::fs::write(dir.join(images), gz(&idx(0x0803, &[n, 4, 4], &pixels))).unwrap();
        std::fs::write(dir.join(labels), gz(&idx(0x0801, &[n], &classes))).unwrap();
    }
}

#[test]
fn should_refuse_every_corrupt_idx_file_by_name() {
    let dir = scratch("idx");
    fake_fashion_mnist(&dir);
    let f = read_fashion_mnist(&dir).unwrap();
    assert_eq!((f.train.len(), f.train.dim(), f.test.len()), (30, 16, 20));
    for name in IMAGES.iter().chain(&LABELS) {
        let path = dir.join(name);
        let good = std::fs::read(&path).unwrap();
        // The compressed file: truncated or flipped.
        for (what, b, must_fail) in corruptions(&good, 4, 24) {
            std::fs::write(&path, &b).unwrap();
            check_read(&path, &format!("{name} {what}"), must_fail, |_| {
                read_fashion_mnist(&dir)
            });
        }
        // The IDX content, recompressed: truncated or flipped where gzip cannot notice.
        let mut raw = Vec::new();
        std::io::Read::read_to_end(&mut flate2::read::GzDecoder::new(good.as_slice()), &mut raw)
            .unwrap();
        for (what, b, must_fail) in corruptions(&raw, 5, 24) {
            std::fs::write(&path, gz(&b)).unwrap();
            // A truncation of the labels past their count, or a flip in the pixels, can leave
            // a valid set; a truncation of the header cannot.
            let must_fail = must_fail && b.len() < raw.len();
            check_read(&path, &format!("{name} content {what}"), must_fail, |_| {
                read_fashion_mnist(&dir)
            });
        }
        std::fs::write(&path, &good).unwrap();
    }
    // Dimensions whose product overflows, and dimensions of zero.
    let path = dir.join(IMAGES[0]);
    for dims in [[u32::MAX, u32::MAX, u32::MAX], [30, 0, 4], [0, 4, 4]] {
        std::fs::write(&path, gz(&idx(0x0803, &dims, &[0u8; 64]))).unwrap();
        check_read(&path, &format!("dimensions {dims:?}"), true, |_| {
            read_fashion_mnist(&dir)
        });
    }
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn should_refuse_files_swapped_for_one_another_by_name() {
    let dir = scratch("swap");
    let (points, index) = small_index();
    let (idx_path, npy_path) = (dir.join("a.idx"), dir.join("a.npy"));
    io::save(&index, &idx_path).unwrap();
    write_npy(&npy_path, &points).unwrap();
    fake_fashion_mnist(&dir);
    let gz_path = dir.join(IMAGES[0]);
    // Each file where another is expected.
    let as_index = dir.join("npy-as.idx");
    std::fs::copy(&npy_path, &as_index).unwrap();
    check_read(&as_index, "an .npy as an index", true, io::load);
    let as_index = dir.join("gz-as.idx");
    std::fs::copy(&gz_path, &as_index).unwrap();
    check_read(&as_index, "an IDX file as an index", true, io::load);
    let as_npy = dir.join("idx-as.npy");
    std::fs::copy(&idx_path, &as_npy).unwrap();
    check_read(&as_npy, "an index as an .npy", true, read_npy);
    let as_npy = dir.join("gz-as.npy");
    std::fs::copy(&gz_path, &as_npy).unwrap();
    check_read(&as_npy, "an IDX file as an .npy", true, read_npy);
    // Images and labels swapped, the training and test files swapped.
    let swap = |a: &str, b: &str| {
        let (pa, pb) = (dir.join(a), dir.join(b));
        let (ba, bb) = (std::fs::read(&pa).unwrap(), std::fs::read(&pb).unwrap());
        std::fs::write(&pa, &bb).unwrap();
        std::fs::write(&pb, &ba).unwrap();
    };
    swap(IMAGES[0], LABELS[0]);
    check_read(&dir.join(IMAGES[0]), "labels as images", true, |_| {
        read_fashion_mnist(&dir)
    });
    swap(IMAGES[0], LABELS[0]);
    swap(LABELS[0], LABELS[1]);
    let msg = read_fashion_mnist(&dir).unwrap_err().to_string();
    assert!(msg.contains("counts differ"), "{msg}");
    swap(LABELS[0], LABELS[1]);
    // An index of another dimension than the queries: an error, not a panic.
    let msg = index
        .search(&[0.0; 4], 3, &TtSearch::new(2, 2))
        .unwrap_err()
        .to_string();
    assert!(msg.contains("query dimension"), "{msg}");
    std::fs::remove_dir_all(&dir).unwrap();
}

/// The real files, where installed: truncated copies are refused by name.
#[test]
fn should_refuse_truncated_copies_of_the_real_fashion_mnist() {
    let src = Path::new(memtrain_index::data::FASHION_MNIST_DIR);
    if !src.join(LABELS[1]).exists() {
        eprintln!("skipped: {} is absent", src.display());
        return;
    }
    let dir = scratch("real");
    for name in IMAGES.iter().chain(&LABELS) {
        std::fs::copy(src.join(name), dir.join(name)).unwrap();
    }
    let path = dir.join(LABELS[1]);
    let bytes = std::fs::read(&path).unwrap();
    let mut rng = StdRng::seed_from_u64(6);
    for _ in 0..8 {
        let cut = rng.random_range(0..bytes.len());
        std::fs::write(&path, &bytes[..cut]).unwrap();
        check_read(&path, &format!("truncated at {cut}"), true, |_| {
            read_fashion_mnist(&dir)
        });
    }
    std::fs::remove_dir_all(&dir).unwrap();
}
