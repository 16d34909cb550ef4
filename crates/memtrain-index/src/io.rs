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

use std::io::Write;
use std::path::Path;

use crate::cloud::TtCloud;
use crate::index::TtIndex;
use crate::lists::{Lists, Vectors};
use crate::{Error, Result};

/// The first eight bytes of every index file.
pub const MAGIC: &[u8; 8] = b"MTTTIDX\0";
/// The format version this build writes and reads.
pub const VERSION: u32 = 2;
const HEADER: usize = 8 + 4 + 8 + 4;

/// Writes `index` to `path` through a temporary file and a rename, so a crash never leaves
/// a half-written index under that name.
///
/// # Errors
///
/// [`Error::Io`] when the file cannot be written.
pub fn save(index: &TtIndex, path: &Path) -> Result<()> {
    let payload = encode(index);
    let mut bytes = Vec::with_capacity(HEADER + payload.len());
    bytes.extend_from_slice(MAGIC);
    bytes.extend_from_slice(&VERSION.to_le_bytes());
    bytes.extend_from_slice(&(payload.len() as u64).to_le_bytes());
    bytes.extend_from_slice(&crc32fast::hash(&payload).to_le_bytes());
    bytes.extend_from_slice(&payload);
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

/// Reads an index written by [`save`].
///
/// # Errors
///
/// [`Error::Io`] when the file cannot be read; [`Error::File`] for a foreign file (wrong
/// magic), another format version, a truncated file, or a checksum mismatch.
pub fn load(path: &Path) -> Result<TtIndex> {
    let bytes = std::fs::read(path).map_err(|e| Error::io(path, e))?;
    if bytes.len() < 8 || &bytes[..8] != MAGIC {
        return Err(Error::file(path, "not a memtrain index file (bad magic)"));
    }
    if bytes.len() < HEADER {
        return Err(Error::file(path, "truncated header"));
    }
    let version = u32::from_le_bytes(bytes[8..12].try_into().expect("4 bytes"));
    if !(1..=VERSION).contains(&version) {
        return Err(Error::file(
            path,
            format!("index format version {version}; this build reads versions 1 to {VERSION}"),
        ));
    }
    let len = u64::from_le_bytes(bytes[12..20].try_into().expect("8 bytes")) as usize;
    let crc = u32::from_le_bytes(bytes[20..24].try_into().expect("4 bytes"));
    let payload = &bytes[HEADER..];
    if payload.len() != len {
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
    decode(payload, version).map_err(|reason| Error::file(path, reason))
}

fn encode(index: &TtIndex) -> Vec<u8> {
    let cloud = index.cloud();
    let lists = index.lists();
    let mut out = Vec::new();
    let u32s = |out: &mut Vec<u8>, v: &[u32]| {
        v.iter()
            .for_each(|x| out.extend_from_slice(&x.to_le_bytes()))
    };
    let f32s = |out: &mut Vec<u8>, v: &[f32]| {
        v.iter()
            .for_each(|x| out.extend_from_slice(&x.to_le_bytes()))
    };
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
