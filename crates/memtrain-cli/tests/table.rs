//! `memtrain table` end to end.

mod common;

use common::*;

#[test]
fn should_print_the_few_bit_table_as_json() {
    let out = run_ok(&["table", "--act", "relu", "--bits", "1", "--json"]);
    let table: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let borders: Vec<f64> = serde_json::from_value(table["borders"].clone()).unwrap();
    let levels: Vec<f64> = serde_json::from_value(table["levels"].clone()).unwrap();
    assert_eq!(borders.len(), 3);
    assert_eq!((borders[0], borders[2]), (-10.0, 10.0));
    assert!(borders[1].abs() < 1e-9 && levels[0].abs() < 1e-12 && (levels[1] - 1.0).abs() < 1e-12);
}
