//! Corrupted checkpoints (issue 21): every file of a checkpoint directory truncated at random
//! offsets, with random bytes flipped, or swapped with another run's; resuming gives an error
//! that names the file, never panics, and never modifies the file.

use std::path::{Path, PathBuf};

use burn::tensor::Device;
use memtrain::data::{DataSource, Dataset, Tokenizer, synthetic_corpus};
use memtrain::model::Preset;
use memtrain::train::{LATEST, TrainConfig, Trainer};

/// A run of `seed` trained one step and checkpointed into a fresh directory.
fn run(name: &str, seed: u64) -> PathBuf {
    let out = std::env::temp_dir().join(format!("memtrain-corrupt-{}-{name}", std::process::id()));
    let _ = std::fs::remove_dir_all(&out);
    let mut config = TrainConfig::new(Preset::Tiny);
    config.batch = 2;
    config.seq = 16;
    config.seed = seed;
    let data = Dataset::new(&synthetic_corpus(2000, 1), Tokenizer::Byte, 16).unwrap();
    let mut trainer = Trainer::new(config, &Device::flex().autodiff()).unwrap();
    let batch = trainer.next_batch(&data);
    trainer.step(&batch);
    trainer
        .save_checkpoint(&out, &DataSource::Builtin, 2)
        .unwrap();
    out
}

/// A small deterministic generator (SplitMix64), so that a failure names a reproducible case.
struct Rng(u64);
impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }
    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }
}

/// Resumes `out` with `file` holding `bytes`, and checks: an error naming `file`, no panic,
/// the file unchanged by the attempt.
fn expect_error(out: &Path, file: &Path, bytes: &[u8], case: &str) {
    std::fs::write(file, bytes).unwrap();
    let result = std::panic::catch_unwind(|| Trainer::resume(out, &Device::flex().autodiff()));
    let name = file.file_name().unwrap().to_string_lossy().into_owned();
    match result {
        Err(_) => panic!("{case}: resume panicked"),
        Ok(Ok(_)) => panic!("{case}: a corrupted {name} resumed"),
        Ok(Err(e)) => assert!(e.to_string().contains(&name), "{case}: {e}"),
    }
    assert_eq!(
        std::fs::read(file).unwrap(),
        bytes,
        "{case}: {name} changed"
    );
}

#[test]
fn should_refuse_every_truncated_flipped_or_swapped_checkpoint_file() {
    let out = run("a", 1);
    let other = run("b", 2);
    let name = std::fs::read_to_string(out.join(LATEST)).unwrap();
    let dir = out.join(name.trim());
    let mut rng = Rng(21);
    for file in [
        "state.json",
        "model.safetensors",
        "optimizer.bpk",
        "checksums.json",
    ] {
        let path = dir.join(file);
        let good = std::fs::read(&path).unwrap();
        for i in 0..12 {
            let cut = rng.below(good.len());
            expect_error(&out, &path, &good[..cut], &format!("{file} cut at {cut}"));
            let mut flipped = good.clone();
            let at = rng.below(good.len());
            flipped[at] ^= 1 << rng.below(8);
            if i % 3 == 0 {
                // A second flip elsewhere.
                let at2 = rng.below(good.len());
                flipped[at2] ^= 0x80;
            }
            if flipped != good {
                expect_error(&out, &path, &flipped, &format!("{file} flipped at {at}"));
            }
        }
        // The same file of another run (same geometry, other seed).
        let theirs = std::fs::read(other.join(name.trim()).join(file)).unwrap();
        if theirs != good {
            expect_error(&out, &path, &theirs, &format!("{file} from another run"));
        }
        std::fs::write(&path, &good).unwrap();
    }
    // `latest` naming nothing, a path outside the run, or garbage.
    let latest = out.join(LATEST);
    for bad in ["step-000009", "../../etc", "", "\u{0}\u{1}"] {
        expect_error(&out, &latest, bad.as_bytes(), &format!("latest = {bad:?}"));
    }
    std::fs::write(&latest, &name).unwrap();
    // Restored, it resumes.
    Trainer::resume(&out, &Device::flex().autodiff()).unwrap();
    for d in [out, other] {
        std::fs::remove_dir_all(d).unwrap();
    }
}
