//! Generated input for every parser a user reaches (issue 21): arbitrary strings never panic,
//! and either parse into a value whose canonical text parses back to it, or give an
//! [`Error::Config`] whose `got` is the offending part of the input.

use memtrain::Error;
use memtrain::activation::ActFn;
use memtrain::bert::CompressMethod;
use memtrain::data::Tokenizer;
use memtrain::model::Preset;
use memtrain::policy::{Budget, MemoryPolicy, parse_size};
use proptest::prelude::*;

/// Fragments of the real grammar, so that generated strings reach the value parsers and not
/// only the key check.
const FRAGMENTS: &[&str] = &[
    "act",
    "norm",
    "linear",
    "attn",
    "remat",
    "weights",
    "optim",
    "adapt",
    "=",
    ":",
    ",",
    ".",
    "exact",
    "inverted",
    "fewbit",
    "output",
    "sketch",
    "gemm",
    "memeff",
    "every",
    "budget",
    "none",
    "ttm",
    "all",
    "mlp",
    "adamw",
    "naggs",
    "galore",
    "lora",
    "lotr",
    "dense",
    "0",
    "1",
    "2",
    "8",
    "9",
    "64",
    "0.5",
    "1.5",
    "-1",
    "1e9",
    "99999999999999999999",
    "NaN",
    "inf",
    "MiB",
    "GiB",
    "KiB",
    "B",
    "/",
    "1/8",
    " ",
    "%",
    "é",
    "\u{0}",
];

fn grammar() -> impl Strategy<Value = String> {
    prop_oneof![
        prop::collection::vec(prop::sample::select(FRAGMENTS), 0..12).prop_map(|v| v.concat()),
        "\\PC{0,24}",
    ]
}

/// An error names the value: `got` (trimmed of the quotes `{:?}` adds) is in the input.
fn names_the_value(input: &str, e: &Error) -> bool {
    match e {
        Error::Config { got, .. } => {
            let got = got.trim();
            got.is_empty() || input.contains(got) || input.contains(got.trim_matches('"'))
        }
        _ => false,
    }
}

fn cases() -> ProptestConfig {
    // Bounded so that CI stays fast; the parsers are pure string code.
    ProptestConfig::with_cases(512)
}

proptest! {
    #![proptest_config(cases())]

    #[test]
    fn policy_specs_parse_or_name_the_value(spec in grammar()) {
        match spec.parse::<MemoryPolicy>() {
            Ok(p) => {
                let again: MemoryPolicy = p.to_string().parse().unwrap();
                prop_assert_eq!(&again, &p);
                prop_assert!(p.validate().is_ok());
            }
            Err(e) => prop_assert!(names_the_value(&spec, &e), "{spec:?}: {e}"),
        }
    }

    #[test]
    fn sizes_and_budgets_parse_or_name_the_value(text in grammar()) {
        match parse_size(&text) {
            Ok(bytes) => prop_assert_eq!(parse_size(&format!("{bytes}B")).unwrap(), bytes),
            Err(e) => prop_assert!(names_the_value(&text, &e), "{text:?}: {e}"),
        }
        match text.parse::<Budget>() {
            Ok(b) => prop_assert_eq!(b.to_string().parse::<Budget>().unwrap(), b),
            Err(e) => prop_assert!(names_the_value(&text, &e), "{text:?}: {e}"),
        }
    }

    #[test]
    fn names_parse_or_name_the_value(text in grammar()) {
        if let Err(e) = text.parse::<Preset>() {
            prop_assert!(names_the_value(&text, &e), "{text:?}: {e}");
        }
        if let Err(e) = text.parse::<Tokenizer>() {
            prop_assert!(names_the_value(&text, &e), "{text:?}: {e}");
        }
        if let Err(e) = text.parse::<ActFn>() {
            prop_assert!(names_the_value(&text, &e), "{text:?}: {e}");
        }
        if let Err(e) = text.parse::<CompressMethod>() {
            prop_assert!(names_the_value(&text, &e), "{text:?}: {e}");
        }
        // Devices: this build has the CPU only, so every name but cpu is an error.
        if let Err(e) = memtrain::device::parse_device(&text) {
            prop_assert!(!e.to_string().is_empty());
        }
    }
}

#[test]
fn should_round_trip_every_documented_policy_value() {
    for spec in [
        "act=fewbit:1",
        "act=fewbit:8,norm=output,linear=sketch:0.0001:mlp,attn=memeff",
        "remat=every:3,weights=ttm:1:all,optim=galore:1:1:0.0001",
        "remat=budget:1B,optim=naggs:0.0001:100,adapt=lotr:1:0.0001",
        "adapt=lora:65535:1000",
    ] {
        let p: MemoryPolicy = spec.parse().unwrap_or_else(|e| panic!("{spec}: {e}"));
        assert_eq!(p.to_string().parse::<MemoryPolicy>().unwrap(), p, "{spec}");
        p.validate().unwrap();
    }
}

#[test]
fn should_parse_precision_only_with_the_gemm_linear() {
    use memtrain::policy::{MemoryPolicy, PrecisionPolicy};
    let p: MemoryPolicy = "linear=gemm,precision=bf16".parse().unwrap();
    assert_eq!(p.precision, PrecisionPolicy::Bf16);
    assert!(p.to_string().ends_with(",precision=bf16"), "{p}");
    assert_eq!(p.short(), "linear=gemm,precision=bf16");
    assert_eq!(p.to_string().parse::<MemoryPolicy>().unwrap(), p);
    let fp32: MemoryPolicy = "precision=fp32".parse().unwrap();
    assert_eq!(fp32, MemoryPolicy::default());
    let e = "precision=bf16"
        .parse::<MemoryPolicy>()
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("bf16 with linear=exact") && e.contains("linear=gemm"),
        "{e}"
    );
    let e = "linear=gemm,precision=fp16"
        .parse::<MemoryPolicy>()
        .unwrap_err()
        .to_string();
    assert!(e.contains("fp16") && e.contains("fp32, bf16"), "{e}");
    // A hand-edited state.json: an override without the gemm linear.
    let mut q = p.clone();
    q.overrides
        .insert(1, memtrain::policy::BlockPolicy::default());
    let e = q.validate().unwrap_err().to_string();
    assert!(e.contains("in block 1"), "{e}");
}
