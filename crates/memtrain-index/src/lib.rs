//! A tensor-train point-cloud index: approximate nearest-neighbour search and a compact
//! memory bank, after Novikov, Gneushev, Kadeishvili and Oseledets, "Tensor-Train Point Cloud
//! Compression and Efficient Approximate Nearest-Neighbor Search"
//! (<https://arxiv.org/abs/2410.04462>).
//!
//! | item | what it is |
//! |---|---|
//! | [`TtCloud`] | `Π N_j` points of dimension `D` as a tensor train over `[N_1, ..., N_k, D]` |
//! | [`fit`] | trains a cloud on data: sliced Wasserstein plus a nearest-neighbour loss |
//! | [`TtIndex`] | beam descent through the cloud's cluster hierarchy, then a scan of the leaves' lists |
//! | [`TtIndex::refine`] | Lloyd's k-means on the cluster tables, inside the cloud's subspaces |
//! | [`Lists`], [`Storage`] | the inverted lists, raw f32 or 8-bit codes (sq8) |
//! | [`kernel`] | the distance kernels every method shares (AVX-512, AVX2, portable) |
//! | [`codes`] | the compressed mode: a leaf and a residual code per vector, no raw vectors |
//! | [`IvfIndex`], [`ExactIndex`] | the k-means IVF-Flat and brute-force baselines |
//! | [`io`] | one-file save and load with a versioned header and a checksum |
//! | [`data`] | `.npy`, Fashion-MNIST IDX, generated clustered data |
//! | [`metrics`] | recall@k (ann-benchmarks), sliced Wasserstein distance, AUROC |
//! | [`bench`](mod@bench) | the recall/QPS benchmark against IVF, HNSW and brute force |
//! | [`ood`] | out-of-distribution detection with the cloud as the memory bank |
//! | [`parse`] | the text forms of the shape, beam and classes settings |
//!
//! # Example
//!
//! ```
//! use memtrain_index::{FitConfig, TtIndex, TtSearch, data, fit};
//!
//! let points = data::clustered(512, 8, 4, 0);
//! let config = FitConfig { rank: 4, steps: 20, batch: 256, ..FitConfig::default() };
//! let cloud = fit(&points, &[4, 4, 32], &config, &mut |_| {}).unwrap();
//! let index = TtIndex::build(cloud, &points, 2).unwrap();
//! let found = index.search(points.row(7), 10, &TtSearch::new(4, 4)).unwrap();
//! assert_eq!(found.len(), 10);
//! ```

pub mod bench;
mod budget;
mod cloud;
pub mod codes;
pub mod data;
mod error;
mod exact;
mod fit;
mod index;
pub mod io;
mod ivf;
pub mod kernel;
mod lists;
pub mod metrics;
pub mod ood;
pub mod parse;
mod refine;

pub use budget::{DEFAULT_MEMORY_LIMIT, memory_limit};
pub use cloud::TtCloud;
pub use error::{Error, Result};
pub use exact::{ExactIndex, assign, ground_truth};
pub use fit::{
    FitConfig, FitProgress, MAX_LEVEL_CENTRES, capped_ranks, check_capacity, check_memory, fit,
    fit_bytes,
};
pub use index::{TtIndex, TtSearch};
pub use ivf::IvfIndex;
pub use lists::{Lists, Storage};
