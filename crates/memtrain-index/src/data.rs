//! Point sets: `.npy` files, the Fashion-MNIST IDX files, and generated clustered data.

use std::io::Read;
use std::path::Path;

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

use crate::{Error, Result};

/// `n` points of dimension `d`, row-major `[n, d]` float32.
#[derive(Debug, Clone, PartialEq)]
pub struct Points {
    n: usize,
    d: usize,
    data: Vec<f32>,
}

impl Points {
    /// Wraps `data` `[n, d]`.
    ///
    /// # Errors
    ///
    /// [`Error::Invalid`] when there are no points, `d` is 0, the length is not `n * d`, or an
    /// entry is NaN or infinite (the message names the first such point).
    pub fn new(data: Vec<f32>, d: usize) -> Result<Self> {
        if d == 0 {
            return Err(Error::invalid("dimension", 0, "at least 1"));
        }
        if data.is_empty() {
            return Err(Error::invalid("data", "0 points", "at least 1 point"));
        }
        if !data.len().is_multiple_of(d) {
            return Err(Error::invalid(
                "data length",
                data.len(),
                format!("a multiple of the dimension {d}"),
            ));
        }
        if let Some(i) = data.iter().position(|x| !x.is_finite()) {
            return Err(Error::invalid(
                "data",
                format!("{} in point {}, coordinate {}", data[i], i / d, i % d),
                "finite values (no NaN or infinity)",
            ));
        }
        Ok(Self {
            n: data.len() / d,
            d,
            data,
        })
    }

    /// Number of points.
    pub fn len(&self) -> usize {
        self.n
    }

    /// Always false: a point set holds at least one point.
    pub fn is_empty(&self) -> bool {
        self.n == 0
    }

    /// Dimension of every point.
    pub fn dim(&self) -> usize {
        self.d
    }

    /// Point `i` `[d]`.
    pub fn row(&self, i: usize) -> &[f32] {
        &self.data[i * self.d..(i + 1) * self.d]
    }

    /// All coordinates, row-major `[n, d]`.
    pub fn as_slice(&self) -> &[f32] {
        &self.data
    }

    /// The points at `rows`, in that order.
    pub fn select(&self, rows: &[usize]) -> Points {
        let mut data = Vec::with_capacity(rows.len() * self.d);
        for &r in rows {
            data.extend_from_slice(self.row(r));
        }
        Points {
            n: rows.len(),
            d: self.d,
            data,
        }
    }

    /// The first `m` points (all of them when `m >= len`).
    pub fn head(&self, m: usize) -> Points {
        let m = m.min(self.n);
        Points {
            n: m,
            d: self.d,
            data: self.data[..m * self.d].to_vec(),
        }
    }

    /// `m` distinct points drawn uniformly with `seed` (all of them, shuffled, when `m >= len`).
    pub fn sample(&self, m: usize, seed: u64) -> Points {
        let mut rows: Vec<usize> = (0..self.n).collect();
        let mut rng = StdRng::seed_from_u64(seed);
        let m = m.min(self.n);
        for i in 0..m {
            let j = rng.random_range(i..self.n);
            rows.swap(i, j);
        }
        rows.truncate(m);
        self.select(&rows)
    }
}

/// Reads a float32 `.npy` file of shape `[n, d]` (C order).
///
/// # Errors
///
/// [`Error::Io`] when the file cannot be opened; [`Error::File`] for another dtype, another
/// rank, Fortran order or a truncated file; [`Error::Invalid`] for an empty array or NaN.
pub fn read_npy(path: &Path) -> Result<Points> {
    let file = std::fs::File::open(path).map_err(|e| Error::io(path, e))?;
    let npy = npyz::NpyFile::new(std::io::BufReader::new(file))
        .map_err(|e| Error::file(path, format!("not a .npy file: {e}")))?;
    let shape = npy.shape().to_vec();
    if shape.len() != 2 {
        return Err(Error::file(
            path,
            format!("array of shape {shape:?}; expected a 2-D [n, d] array"),
        ));
    }
    if npy.order() != npyz::Order::C {
        return Err(Error::file(path, "Fortran-ordered array; expected C order"));
    }
    let dtype = npy.dtype();
    if dtype != npyz::DType::Plain("<f4".parse().expect("a valid type string")) {
        return Err(Error::file(
            path,
            format!("dtype {}; expected float32 ('<f4')", dtype.descr()),
        ));
    }
    let data = npy
        .into_vec::<f32>()
        .map_err(|e| Error::file(path, format!("truncated or unreadable data: {e}")))?;
    Points::new(data, shape[1] as usize)
}

/// Writes `points` as a float32 `[n, d]` `.npy` file.
///
/// # Errors
///
/// [`Error::Io`] when the file cannot be written.
pub fn write_npy(path: &Path, points: &Points) -> Result<()> {
    use npyz::WriterBuilder;
    let file = std::fs::File::create(path).map_err(|e| Error::io(path, e))?;
    let mut writer = npyz::WriteOptions::new()
        .default_dtype()
        .shape(&[points.len() as u64, points.dim() as u64])
        .writer(std::io::BufWriter::new(file))
        .begin_nd()
        .map_err(|e| Error::io(path, e))?;
    writer
        .extend(points.as_slice().iter().copied())
        .map_err(|e| Error::io(path, e))?;
    writer.finish().map_err(|e| Error::io(path, e))
}

/// The Fashion-MNIST set as Debian's `dataset-fashion-mnist` installs it: 60,000 training and
/// 10,000 test images of 784 pixels (values 0-255 as float32), with their class labels 0-9.
#[derive(Debug, Clone)]
pub struct FashionMnist {
    /// Training images `[60000, 784]` (the ANN base set).
    pub train: Points,
    /// Labels of `train`.
    pub train_labels: Vec<u8>,
    /// Test images `[10000, 784]` (the ANN queries).
    pub test: Points,
    /// Labels of `test`.
    pub test_labels: Vec<u8>,
}

/// Where Debian's `dataset-fashion-mnist` puts the files.
pub const FASHION_MNIST_DIR: &str = "/usr/share/datasets/fashion-mnist";

/// Reads the four gzipped IDX files of Fashion-MNIST from `dir`.
///
/// # Errors
///
/// [`Error::Io`] for a missing file; [`Error::File`] for a file that is not gzip, not IDX, or
/// truncated.
pub fn read_fashion_mnist(dir: &Path) -> Result<FashionMnist> {
    let images = |name: &str| -> Result<Points> {
        let path = dir.join(name);
        let bytes = read_gz(&path)?;
        let (dims, body) = idx_body(&path, &bytes, 0x0803, 3)?;
        let d = dims[1] * dims[2];
        Points::new(body.iter().map(|&b| f32::from(b)).collect(), d)
    };
    let labels = |name: &str| -> Result<Vec<u8>> {
        let path = dir.join(name);
        let bytes = read_gz(&path)?;
        Ok(idx_body(&path, &bytes, 0x0801, 1)?.1.to_vec())
    };
    let data = FashionMnist {
        train: images("train-images-idx3-ubyte.gz")?,
        train_labels: labels("train-labels-idx1-ubyte.gz")?,
        test: images("t10k-images-idx3-ubyte.gz")?,
        test_labels: labels("t10k-labels-idx1-ubyte.gz")?,
    };
    if data.train.len() != data.train_labels.len() || data.test.len() != data.test_labels.len() {
        return Err(Error::file(dir, "image and label counts differ"));
    }
    Ok(data)
}

fn read_gz(path: &Path) -> Result<Vec<u8>> {
    let file = std::fs::File::open(path).map_err(|e| Error::io(path, e))?;
    let mut bytes = Vec::new();
    flate2::read::GzDecoder::new(std::io::BufReader::new(file))
        .read_to_end(&mut bytes)
        .map_err(|e| Error::file(path, format!("not a readable gzip file: {e}")))?;
    Ok(bytes)
}

/// The dimensions and the body of an IDX file with the given magic and rank.
fn idx_body<'a>(
    path: &Path,
    bytes: &'a [u8],
    magic: u32,
    rank: usize,
) -> Result<(Vec<usize>, &'a [u8])> {
    let word = |i: usize| -> Option<usize> {
        let b = bytes.get(4 * i..4 * i + 4)?;
        Some(u32::from_be_bytes([b[0], b[1], b[2], b[3]]) as usize)
    };
    if word(0) != Some(magic as usize) {
        return Err(Error::file(
            path,
            format!("not an IDX file of rank {rank} (magic {magic:#010x})"),
        ));
    }
    let dims: Vec<usize> = (1..=rank)
        .map(word)
        .collect::<Option<_>>()
        .ok_or_else(|| Error::file(path, "truncated IDX header"))?;
    let start = 4 * (rank + 1);
    let len: usize = dims.iter().product();
    let body = bytes
        .get(start..start + len)
        .ok_or_else(|| Error::file(path, format!("truncated: {len} values announced")))?;
    Ok((dims, body))
}

/// `n` points of dimension `d` around `clusters` Gaussian centres (centres N(0, 10²), points
/// N(centre, 1)), seeded: the test data that needs no download.
pub fn clustered(n: usize, d: usize, clusters: usize, seed: u64) -> Points {
    let mut rng = StdRng::seed_from_u64(seed);
    let mut normal = move || -> f32 {
        // Box-Muller: two uniforms give one standard normal.
        let u: f32 = rng.random_range(f32::EPSILON..1.0);
        let v: f32 = rng.random();
        (-2.0 * u.ln()).sqrt() * (std::f32::consts::TAU * v).cos()
    };
    let centres: Vec<f32> = (0..clusters.max(1) * d).map(|_| 10.0 * normal()).collect();
    let mut data = Vec::with_capacity(n * d);
    for i in 0..n {
        let c = i % clusters.max(1);
        for j in 0..d {
            data.push(centres[c * d + j] + normal());
        }
    }
    Points { n, d, data }
}
