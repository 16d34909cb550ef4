//! Saving and loading a [`TtIndex`]: one file, a versioned header and a CRC-32 checksum.
//!
//! Layout (little-endian): the magic `MTTTIDX\0`, the format version (`u32`), the payload
//! length (`u64`), the payload's CRC-32 (`u32`), then the payload: mode count, modes, ranks,
//! dimension, leaf level, cores, basis, offset, list offsets, ids and vectors.

use std::io::Write;
use std::path::Path;

use crate::cloud::TtCloud;
use crate::index::TtIndex;
use crate::lists::Lists;
use crate::{Error, Result};

/// The first eight bytes of every index file.
pub const MAGIC: &[u8; 8] = b"MTTTIDX\0";
/// The format version this build writes and reads.
pub const VERSION: u32 = 1;
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
    if version != VERSION {
        return Err(Error::file(
            path,
            format!("index format version {version}; this build reads version {VERSION}"),
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
    decode(payload).map_err(|reason| Error::file(path, reason))
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
    u32s(&mut out, &[lists.offsets.len() as u32]);
    u32s(&mut out, &lists.offsets);
    u32s(&mut out, &[lists.ids.len() as u32]);
    u32s(&mut out, &lists.ids);
    f32s(&mut out, &lists.vectors);
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

fn decode(payload: &[u8]) -> Result<TtIndex, String> {
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
    let n_offsets = r.usize()?;
    let offsets = r.u32s(n_offsets)?;
    let n = r.usize()?;
    let ids = r.u32s(n)?;
    let vectors = r.f32s(n.checked_mul(d).ok_or("vector size overflow")?)?;
    if r.at != payload.len() {
        return Err(format!(
            "{} unexpected trailing bytes",
            payload.len() - r.at
        ));
    }
    let leaves: usize = cloud.shape()[..leaf_level.min(k)].iter().product();
    let consistent = (1..=k).contains(&leaf_level)
        && offsets.len() == leaves + 1
        && offsets.first() == Some(&0)
        && offsets.last().map(|&x| x as usize) == Some(n)
        && offsets.windows(2).all(|w| w[0] <= w[1]);
    if !consistent {
        return Err("inconsistent lists (offsets do not match the leaves)".into());
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
    let lists = Lists {
        offsets,
        ids,
        vectors,
        dim: d,
    };
    Ok(TtIndex::from_parts(cloud, leaf_level, lists))
}
