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
    check_npy_size(path)?;
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
    let d = usize::try_from(shape[1])
        .map_err(|_| Error::file(path, format!("dimension {} is too large", shape[1])))?;
    Points::new(data, d).map_err(|e| Error::file(path, e.to_string()))
}

/// Before the `.npy` parser sees it, an error for a header whose shape announces more data
/// than the file holds: the parser multiplies the dimensions unchecked (an overflow panics in
/// a debug build) and would read a huge announced array element by element. Headers this
/// cannot read are left to the parser and its errors.
fn check_npy_size(path: &Path) -> Result<()> {
    let mut file = std::fs::File::open(path).map_err(|e| Error::io(path, e))?;
    let file_len = file.metadata().map_err(|e| Error::io(path, e))?.len();
    let mut head = Vec::new();
    (&mut file)
        .take(1 << 16)
        .read_to_end(&mut head)
        .map_err(|e| Error::io(path, e))?;
    if head.len() < 10 || &head[..6] != b"\x93NUMPY" {
        return Ok(());
    }
    let (len_bytes, at) = if head[6] == 1 { (2, 8) } else { (4, 8) };
    let Some(raw) = head.get(at..at + len_bytes) else {
        return Ok(());
    };
    let header_len = raw
        .iter()
        .rev()
        .fold(0usize, |acc, &b| (acc << 8) | usize::from(b));
    let start = at + len_bytes;
    let Some(text) = head.get(start..start.saturating_add(header_len)) else {
        return Ok(());
    };
    let text = String::from_utf8_lossy(text);
    let Some(tuple) = text
        .split_once("'shape'")
        .and_then(|(_, rest)| rest.split_once('('))
        .and_then(|(_, rest)| rest.split_once(')'))
        .map(|(inside, _)| inside)
    else {
        return Ok(());
    };
    let dims: Option<Vec<u64>> = tuple
        .split(',')
        .map(str::trim)
        .filter(|t| !t.is_empty())
        .map(|t| t.trim_end_matches('L').parse().ok())
        .collect();
    let Some(dims) = dims else {
        return Ok(());
    };
    let body = file_len.saturating_sub((start + header_len) as u64);
    // At least one byte per value, whatever the dtype (the dtype is checked after parsing).
    let values = dims.iter().try_fold(1u64, |a, &b| a.checked_mul(b));
    if values.is_none_or(|v| v > body) {
        return Err(Error::file(
            path,
            format!(
                "truncated: the header announces an array of shape {dims:?} ({} values), the \
                 file holds {body} bytes of data",
                values.map_or("more than u64::MAX".into(), |v| v.to_string())
            ),
        ));
    }
    Ok(())
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
        // idx_body checked that the product of the dimensions fits.
        let d = dims[1] * dims[2];
        Points::new(body.iter().map(|&b| f32::from(b)).collect(), d)
            .map_err(|e| Error::file(&path, format!("images of shape {dims:?}: {e}")))
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
    for (images, labels, n_images, n_labels) in [
        (
            "train-images-idx3-ubyte.gz",
            "train-labels-idx1-ubyte.gz",
            data.train.len(),
            data.train_labels.len(),
        ),
        (
            "t10k-images-idx3-ubyte.gz",
            "t10k-labels-idx1-ubyte.gz",
            data.test.len(),
            data.test_labels.len(),
        ),
    ] {
        if n_images != n_labels {
            return Err(Error::file(
                dir,
                format!(
                    "image and label counts differ: {images} holds {n_images} images, {labels} \
                     {n_labels} labels"
                ),
            ));
        }
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
    let len = dims.iter().try_fold(1usize, |a, &b| a.checked_mul(b));
    let body = len
        .and_then(|len| bytes.get(start..start.checked_add(len)?))
        .ok_or_else(|| {
            Error::file(
                path,
                format!(
                    "truncated: dimensions {dims:?} announce {} values, the file holds {}",
                    len.map_or("more than usize::MAX".into(), |l| l.to_string()),
                    bytes.len().saturating_sub(start)
                ),
            )
        })?;
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
