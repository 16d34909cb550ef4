//! Saving and loading a [`TtIndex`]: one file, a versioned header and a CRC-32 checksum.
//!
//! Layout (little-endian): the magic `MTTTIDX\0`, the format version (`u32`), the payload
//! length (`u64`), the payload's CRC-32 (`u32`), then the payload: mode count, modes, ranks,
//! dimension, leaf level, cores, basis, offset, the search tables of every level down to the
//! leaves (prefix vectors and centre norms: they differ from the cloud's after
//! [`TtIndex::refine`]), list offsets, ids, the storage (`0` f32, `1` sq8) and the vectors
//! (f32: `N D` floats; sq8: the grid's `D` minima and `D` steps, then `N D` code bytes).
//!
//! Version 1 files (no tables, f32 vectors only) still load: their tables are derived from
//! the cloud.
//!
//! A [`CompressedIndex`] has a file of its own, [`save_compressed`] and [`load_compressed`]:
//! the same header with the magic `MTTTPQ\0\0` and its own version, and a payload that nests
//! the plain payload of its coarse index (which holds no points) before the codes (the layout
//! is at `encode_compressed`). Each reader names the other kind of file when given one;
//! [`load_any`] reads either.

use std::io::Write;
use std::path::Path;

use crate::cloud::TtCloud;
use crate::codes::{CodeLayout, CompressedIndex};
use crate::index::{TtIndex, TtSearch};
use crate::lists::{Lists, Vectors};
use crate::{Error, Result};

/// The first eight bytes of every index file.
pub const MAGIC: &[u8; 8] = b"MTTTIDX\0";
/// The format version this build writes and reads.
pub const VERSION: u32 = 2;
/// The first eight bytes of every compressed index file ([`save_compressed`]).
pub const COMPRESSED_MAGIC: &[u8; 8] = b"MTTTPQ\0\0";
/// The compressed format version this build writes and reads.
pub const COMPRESSED_VERSION: u32 = 1;
const HEADER: usize = 8 + 4 + 8 + 4;

/// Writes `index` to `path` through a temporary file and a rename, so a crash never leaves
/// a half-written index under that name.
///
/// # Errors
///
/// [`Error::Io`] when the file cannot be written.
pub fn save(index: &TtIndex, path: &Path) -> Result<()> {
    write_framed(path, MAGIC, VERSION, &encode(index))
}

/// Reads an index written by [`save`].
///
/// # Errors
///
/// [`Error::Io`] when the file cannot be read; [`Error::File`] for a foreign file (wrong
/// magic), a compressed index (written by [`save_compressed`]), another format version, a
/// truncated file, or a checksum mismatch.
pub fn load(path: &Path) -> Result<TtIndex> {
    let bytes = std::fs::read(path).map_err(|e| Error::io(path, e))?;
    load_plain(path, &bytes)
}

/// Writes the compressed index `index` to `path` (magic [`COMPRESSED_MAGIC`]), through a
/// temporary file and a rename like [`save`].
///
/// # Errors
///
/// [`Error::Io`] when the file cannot be written.
///
/// # Example
///
/// ```
/// use memtrain_index::codes::CompressedIndex;
/// use memtrain_index::{FitConfig, TtIndex, TtSearch, data, fit, io};
///
/// let points = data::clustered(256, 8, 4, 0);
/// let config = FitConfig { rank: 4, steps: 10, batch: 128, ..FitConfig::default() };
/// let cloud = fit(&points, &[4, 4, 16], &config, &mut |_| {}).unwrap();
/// let index = TtIndex::build(cloud, &points, 2).unwrap();
/// let bank = CompressedIndex::build(index, &points, 4, 0).unwrap();
/// let path = std::env::temp_dir().join(format!("doc-{}.mtpq", std::process::id()));
/// io::save_compressed(&bank, &path).unwrap();
/// let loaded = io::load_compressed(&path).unwrap();
/// let search = TtSearch::new(4, 4);
/// assert_eq!(
///     loaded.search(points.row(3), 5, &search).unwrap(),
///     bank.search(points.row(3), 5, &search).unwrap()
/// );
/// // A plain-index reader names what the file is.
/// let err = io::load(&path).unwrap_err().to_string();
/// assert!(err.contains("compressed index"), "{err}");
/// std::fs::remove_file(&path).unwrap();
/// ```
pub fn save_compressed(index: &CompressedIndex, path: &Path) -> Result<()> {
    write_framed(
        path,
        COMPRESSED_MAGIC,
        COMPRESSED_VERSION,
        &encode_compressed(index),
    )
}

/// Reads a compressed index written by [`save_compressed`], checking every length, the
/// layout, the offsets, the ids and the codes, so that a corrupt file is an error.
///
/// # Errors
///
/// [`Error::Io`] when the file cannot be read; [`Error::File`] for a foreign file, a plain
/// index (written by [`save`]), another format version, a truncated file, a checksum
/// mismatch, or an inconsistent payload.
pub fn load_compressed(path: &Path) -> Result<CompressedIndex> {
    let bytes = std::fs::read(path).map_err(|e| Error::io(path, e))?;
    load_compressed_bytes(path, &bytes)
}

/// An index file of either kind, as [`load_any`] reads it.
#[derive(Debug, Clone)]
pub enum Loaded {
    /// A plain index ([`save`]): the lists hold the vectors.
    Plain(TtIndex),
    /// A compressed index ([`save_compressed`]): codes, no raw vectors.
    Compressed(CompressedIndex),
}

impl Loaded {
    /// The dimension of the indexed vectors.
    pub fn dim(&self) -> usize {
        self.coarse().cloud().dim()
    }

    /// The TT index: the index itself, or the compressed index's coarse quantizer.
    pub fn coarse(&self) -> &TtIndex {
        match self {
            Loaded::Plain(index) => index,
            Loaded::Compressed(bank) => bank.coarse(),
        }
    }

    /// Points in the index.
    pub fn len(&self) -> usize {
        match self {
            Loaded::Plain(index) => index.len(),
            Loaded::Compressed(bank) => bank.len(),
        }
    }

    /// Whether the index holds no points.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// [`TtIndex::search`] or [`CompressedIndex::search`]: the `k` nearest as `(squared
    /// distance, id)`, the distances exact from f32 vectors and estimates from sq8 vectors
    /// or codes.
    ///
    /// # Errors
    ///
    /// As the index's own `search`.
    pub fn search(&self, query: &[f32], k: usize, params: &TtSearch) -> Result<Vec<(f32, u32)>> {
        match self {
            Loaded::Plain(index) => index.search(query, k, params),
            Loaded::Compressed(bank) => bank.search(query, k, params),
        }
    }
}

/// Reads an index file of either kind, told apart by its magic.
///
/// # Errors
///
/// As [`load`] or [`load_compressed`]; a file of neither kind is a foreign file.
pub fn load_any(path: &Path) -> Result<Loaded> {
    let bytes = std::fs::read(path).map_err(|e| Error::io(path, e))?;
    if bytes.starts_with(COMPRESSED_MAGIC) {
        load_compressed_bytes(path, &bytes).map(Loaded::Compressed)
    } else {
        load_plain(path, &bytes).map(Loaded::Plain)
    }
}

fn load_plain(path: &Path, bytes: &[u8]) -> Result<TtIndex> {
    if bytes.starts_with(COMPRESSED_MAGIC) {
        return Err(Error::file(
            path,
            "a compressed index (memtrain index build --codes), not a plain index with its \
             vectors: read it with io::load_compressed or io::load_any",
        ));
    }
    let (payload, version) = framed(path, bytes, MAGIC, VERSION)?;
    decode(payload, version).map_err(|reason| Error::file(path, reason))
}

fn load_compressed_bytes(path: &Path, bytes: &[u8]) -> Result<CompressedIndex> {
    if bytes.starts_with(MAGIC) {
        return Err(Error::file(
            path,
            "a plain index (memtrain index build without --codes), not a compressed index: \
             read it with io::load or io::load_any",
        ));
    }
    let (payload, version) = framed(path, bytes, COMPRESSED_MAGIC, COMPRESSED_VERSION)?;
    decode_compressed(payload, version).map_err(|reason| Error::file(path, reason))
}

/// `magic`, `version`, the payload's length and CRC-32, the payload; through a temporary
/// file and a rename.
fn write_framed(path: &Path, magic: &[u8; 8], version: u32, payload: &[u8]) -> Result<()> {
    let mut bytes = Vec::with_capacity(HEADER + payload.len());
    bytes.extend_from_slice(magic);
    bytes.extend_from_slice(&version.to_le_bytes());
    bytes.extend_from_slice(&(payload.len() as u64).to_le_bytes());
    bytes.extend_from_slice(&crc32fast::hash(payload).to_le_bytes());
    bytes.extend_from_slice(payload);
    let tmp = path.with_extension("tmp");
    let write = || -> std::io::Result<()> {
        let mut f = std::fs::File::create(&tmp)?;
        f.write_all(&bytes)?;
        f.sync_all()?;
        std::fs::rename(&tmp, path)
    };
    write().map_err(|e| {
        let _ = std::fs::remove_file(&tmp);
        Error::io(path, e)
    })
}

/// The checked payload of a file written by [`write_framed`] with `magic`, and its version
/// (`1..=latest`).
fn framed<'a>(
    path: &Path,
    bytes: &'a [u8],
    magic: &[u8; 8],
    latest: u32,
) -> Result<(&'a [u8], u32)> {
    if bytes.len() < 8 || &bytes[..8] != magic {
        return Err(Error::file(path, "not a memtrain index file (bad magic)"));
    }
    if bytes.len() < HEADER {
        return Err(Error::file(path, "truncated header"));
    }
    let version = u32::from_le_bytes(bytes[8..12].try_into().expect("4 bytes"));
    if !(1..=latest).contains(&version) {
        return Err(Error::file(
            path,
            format!("index format version {version}; this build reads versions 1 to {latest}"),
        ));
    }
    let len = u64::from_le_bytes(bytes[12..20].try_into().expect("8 bytes"));
    let crc = u32::from_le_bytes(bytes[20..24].try_into().expect("4 bytes"));
    let payload = &bytes[HEADER..];
    if payload.len() as u64 != len {
        return Err(Error::file(
            path,
            format!(
                "truncated: payload of {} bytes, header announces {len}",
                payload.len()
            ),
        ));
    }
    if crc32fast::hash(payload) != crc {
        return Err(Error::file(path, "checksum mismatch: the file is corrupt"));
    }
    Ok((payload, version))
}

/// Appends `v` little-endian.
fn u32s(out: &mut Vec<u8>, v: &[u32]) {
    v.iter()
        .for_each(|x| out.extend_from_slice(&x.to_le_bytes()));
}

/// Appends `v` little-endian.
fn f32s(out: &mut Vec<u8>, v: &[f32]) {
    v.iter()
        .for_each(|x| out.extend_from_slice(&x.to_le_bytes()));
}

fn encode(index: &TtIndex) -> Vec<u8> {
    let cloud = index.cloud();
    let lists = index.lists();
    let mut out = Vec::new();
    let as_u32 = |v: &[usize]| v.iter().map(|&x| x as u32).collect::<Vec<_>>();
    u32s(&mut out, &[cloud.shape().len() as u32]);
    u32s(&mut out, &as_u32(cloud.shape()));
    u32s(&mut out, &as_u32(cloud.ranks()));
    u32s(&mut out, &[cloud.dim() as u32, index.leaf_level() as u32]);
    for j in 0..cloud.shape().len() {
        f32s(&mut out, cloud.core(j));
    }
    f32s(&mut out, cloud.basis());
    f32s(&mut out, cloud.offset());
    for (prefix, norms) in index.prefix.iter().zip(&index.norms) {
        f32s(&mut out, prefix);
        f32s(&mut out, norms);
    }
    u32s(&mut out, &[lists.offsets.len() as u32]);
    u32s(&mut out, &lists.offsets);
    u32s(&mut out, &[lists.ids.len() as u32]);
    u32s(&mut out, &lists.ids);
    match &lists.vectors {
        Vectors::F32(v) => {
            u32s(&mut out, &[0]);
            f32s(&mut out, v);
        }
        Vectors::Sq8 { codes, min, step } => {
            u32s(&mut out, &[1]);
            f32s(&mut out, min);
            f32s(&mut out, step);
            out.extend_from_slice(codes);
        }
    }
    out
}

struct Reader<'a> {
    bytes: &'a [u8],
    at: usize,
}

impl Reader<'_> {
    fn take(&mut self, n: usize) -> Result<&[u8], String> {
        let end = self.at.checked_add(n).filter(|&e| e <= self.bytes.len());
        let end = end.ok_or_else(|| "truncated payload".to_string())?;
        let s = &self.bytes[self.at..end];
        self.at = end;
        Ok(s)
    }
    fn u32s(&mut self, n: usize) -> Result<Vec<u32>, String> {
        let b = self.take(n.checked_mul(4).ok_or("size overflow")?)?;
        Ok(b.chunks_exact(4)
            .map(|c| u32::from_le_bytes(c.try_into().expect("4")))
            .collect())
    }
    fn f32s(&mut self, n: usize) -> Result<Vec<f32>, String> {
        let b = self.take(n.checked_mul(4).ok_or("size overflow")?)?;
        Ok(b.chunks_exact(4)
            .map(|c| f32::from_le_bytes(c.try_into().expect("4")))
            .collect())
    }
    fn usize(&mut self) -> Result<usize, String> {
        Ok(self.u32s(1)?[0] as usize)
    }
}

fn decode(payload: &[u8], version: u32) -> Result<TtIndex, String> {
    let mut r = Reader {
        bytes: payload,
        at: 0,
    };
    let k = r.usize()?;
    let shape: Vec<usize> = r.u32s(k)?.into_iter().map(|x| x as usize).collect();
    let ranks: Vec<usize> = r.u32s(k + 1)?.into_iter().map(|x| x as usize).collect();
    let d = r.usize()?;
    let leaf_level = r.usize()?;
    let mut cores = Vec::with_capacity(k);
    for j in 0..k {
        let len = ranks[j]
            .checked_mul(shape[j])
            .and_then(|x| x.checked_mul(ranks[j + 1]))
            .ok_or("core size overflow")?;
        cores.push(r.f32s(len)?);
    }
    let basis = r.f32s(ranks[k].checked_mul(d).ok_or("basis size overflow")?)?;
    let offset = r.f32s(d)?;
    let cloud = TtCloud::new(shape, ranks, cores, basis, offset).map_err(|e| e.to_string())?;
    if !(1..=k).contains(&leaf_level) {
        return Err(format!("leaf level {leaf_level} outside 1..={k}"));
    }
    let tables = crate::index::table_bytes(cloud.shape(), cloud.ranks(), leaf_level);
    crate::budget::check_bytes(
        "loading the index",
        &format!(
            "shape {:?}, ranks {:?}, leaves at level {leaf_level}",
            cloud.shape(),
            cloud.ranks()
        ),
        tables,
    )
    .map_err(|e| e.to_string())?;
    let mut stored = Vec::new();
    if version >= 2 {
        let mut clusters = 1usize;
        for j in 1..=leaf_level {
            clusters *= cloud.shape()[j - 1];
            let prefix = r.f32s(clusters * cloud.ranks()[j])?;
            let norms = r.f32s(clusters)?;
            stored.push((prefix, norms));
        }
    }
    let n_offsets = r.usize()?;
    let offsets = r.u32s(n_offsets)?;
    let n = r.usize()?;
    let ids = r.u32s(n)?;
    let size = n.checked_mul(d).ok_or("vector size overflow")?;
    let tag = if version >= 2 { r.usize()? } else { 0 };
    let vectors = match tag {
        0 => Vectors::F32(r.f32s(size)?),
        1 => {
            let min = r.f32s(d)?;
            let step = r.f32s(d)?;
            let codes = r.take(size)?.to_vec();
            Vectors::Sq8 { codes, min, step }
        }
        other => return Err(format!("unknown vector storage {other} (0 f32, 1 sq8)")),
    };
    if r.at != payload.len() {
        return Err(format!(
            "{} unexpected trailing bytes",
            payload.len() - r.at
        ));
    }
    let leaves: usize = cloud.shape()[..leaf_level].iter().product();
    let consistent = offsets.len() == leaves + 1
        && offsets.first() == Some(&0)
        && offsets.last().map(|&x| x as usize) == Some(n)
        && offsets.windows(2).all(|w| w[0] <= w[1])
        && ids.iter().all(|&i| (i as usize) < n);
    if !consistent {
        return Err("inconsistent lists (offsets or ids do not match the leaves)".into());
    }
    let lists = Lists {
        offsets,
        ids,
        vectors,
        dim: d,
    };
    let mut index = TtIndex::from_parts(cloud, leaf_level, lists);
    if !stored.is_empty() {
        (index.prefix, index.norms) = stored.into_iter().unzip();
    }
    Ok(index)
}

/// The compressed payload: the coarse index's format version (`u32`) and payload length
/// (`u64`), its plain payload (no points), the layout (`projected`, `subspaces`, `bits`,
/// `norm` as `u32`s), offset and id counts each before its `u32`s, the 8-bit projection
/// (`m D` bytes) and its `m` scales when `m < D`, the codebooks (`2^b m` floats), the norm's
/// step (a float), then the `N c` code bytes.
fn encode_compressed(bank: &CompressedIndex) -> Vec<u8> {
    let coarse = encode(&bank.coarse);
    let mut out = Vec::with_capacity(coarse.len() + bank.bytes());
    u32s(&mut out, &[VERSION]);
    out.extend_from_slice(&(coarse.len() as u64).to_le_bytes());
    out.extend_from_slice(&coarse);
    let l = bank.layout;
    u32s(
        &mut out,
        &[
            l.projected as u32,
            l.subspaces as u32,
            l.bits,
            u32::from(l.norm),
        ],
    );
    u32s(&mut out, &[bank.offsets.len() as u32]);
    u32s(&mut out, &bank.offsets);
    u32s(&mut out, &[bank.ids.len() as u32]);
    u32s(&mut out, &bank.ids);
    out.extend(bank.projection.iter().map(|&x| x as u8));
    f32s(&mut out, &bank.scales);
    f32s(&mut out, &bank.codebooks);
    f32s(&mut out, &[bank.norm_step]);
    out.extend_from_slice(&bank.codes);
    out
}

fn decode_compressed(payload: &[u8], _version: u32) -> Result<CompressedIndex, String> {
    let mut r = Reader {
        bytes: payload,
        at: 0,
    };
    let coarse_version = r.u32s(1)?[0];
    if !(1..=VERSION).contains(&coarse_version) {
        return Err(format!(
            "coarse index format version {coarse_version}; this build reads versions 1 to \
             {VERSION}"
        ));
    }
    let len = u64::from_le_bytes(r.take(8)?.try_into().expect("8 bytes"));
    let len = usize::try_from(len).map_err(|_| "coarse index size overflow")?;
    let coarse = decode(r.take(len)?, coarse_version).map_err(|e| format!("coarse index: {e}"))?;
    let d = coarse.cloud().dim();
    let words = r.u32s(4)?;
    let norm = match words[3] {
        0 => false,
        1 => true,
        other => return Err(format!("norm flag {other}, expected 0 or 1")),
    };
    let layout = CodeLayout {
        projected: words[0] as usize,
        subspaces: words[1] as usize,
        bits: words[2],
        norm,
    };
    layout.check(d).map_err(|e| e.to_string())?;
    let m = layout.projected;
    let n_offsets = r.usize()?;
    let offsets = r.u32s(n_offsets)?;
    let n = r.usize()?;
    let ids = r.u32s(n)?;
    let (projection, scales) = if m < d {
        let projection = r.take(m * d)?.iter().map(|&x| x as i8).collect();
        (projection, r.f32s(m)?)
    } else {
        (Vec::new(), Vec::new())
    };
    let codebooks = r.f32s(m << layout.bits)?;
    let norm_step = r.f32s(1)?[0];
    let size = n
        .checked_mul(layout.code_bytes())
        .ok_or("code size overflow")?;
    let codes = r.take(size)?.to_vec();
    if r.at != payload.len() {
        return Err(format!(
            "{} unexpected trailing bytes",
            payload.len() - r.at
        ));
    }
    CompressedIndex {
        coarse,
        offsets,
        ids,
        layout,
        projection,
        scales,
        basis: Vec::new(),
        codebooks,
        norm_step,
        codes,
    }
    .validated()
}
