//! A file of repacked weights in a cache folder, so that loading a quantized model a second
//! time maps its packed matrices instead of repacking them.
//!
//! Repacking (see `kernels::packed`) rewrites every quantized matrix into fresh anonymous memory:
//! 0.35–1.3 s per model on the reference VM, against llama.cpp's 0.06–0.6 s. The first load
//! writes what it packed to one file; later loads of the same files (same paths, sizes and
//! modification times) map it and decode straight from the mapping. It is written in whole
//! 2 MiB chunks (`HugeChunks`) so that the page cache holds it in huge folios, mapped 2 MiB
//! at a time, which decode reads faster than small folios.
//!
//! The file: the magic `BKPACK02`, the index length (u64 little-endian), the index (JSON, with
//! each matrix's CRC-32), then each matrix at a 4 KiB-aligned offset. A file that is missing,
//! unreadable, from another layout version or shorter than its index says is ignored, and the
//! load packs as before; a matrix whose bytes no longer match their CRC-32 (a bad disk, a file
//! edited in place) is packed again from the model and the whole entry is deleted, to be
//! rewritten by the next load. A cache that cannot be written costs nothing but the time.
//!
//! The checksums are read once, not at every load: hashing every matrix took half of a warm
//! load (docs/benchmarks.md, "Warm load"). A load that finds every matrix intact writes a
//! *stamp* beside the entry (`<key>.verified`: the file's device, inode, size, modification
//! and status-change times); a later load whose entry still has that identity trusts it without
//! hashing. Writing to the file in place, truncating it or replacing it changes one of them
//! (the status-change time cannot be set back by a user), so such an entry is checked in full
//! again; what a stamp does not catch is a disk that flips bits under an unchanged file, as no
//! engine checks its model files at each load either.
//!
//! Entries are written to a `.bkpack-tmp-*` file renamed into place; a load killed mid-write
//! leaves that temporary behind, and the next load deletes temporaries older than
//! [`STALE_TEMP`], so the folder never keeps a model-sized orphan.
//!
//! Each entry is as large as its model, so the folder is bounded ([`WeightCache::max_bytes`]) and
//! never fills the disk ([`WeightCache::free_reserve`]): a new entry first deletes the least recently used
//! ones (a hit marks an entry used), and is not written when that is not enough.

use std::collections::BTreeMap;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use crate::WeightType;
use memmap2::Mmap;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use super::dtype_name;
use super::store::Blob;

const MAGIC: &[u8; 8] = b"BKPACK02";
const TEMP_PREFIX: &str = ".bkpack-tmp-";
/// Older than any write of a live load (a few seconds per GB), so a concurrent load's temporary
/// is never taken for an orphan.
pub const STALE_TEMP: std::time::Duration = std::time::Duration::from_secs(600);
const ALIGN: u64 = 4096;
/// What the cache leaves free on its disk: the packed copy saves a second or so per load, never
/// worth the room a user's own files need.
pub const FREE_RESERVE: u64 = 2 << 30;
/// [`WeightCache::max_bytes`] unless `$BAKEOFF_WEIGHT_CACHE_MAX` says otherwise: about a dozen
/// 1.5B-parameter Q4_K_M models.
pub const DEFAULT_MAX_BYTES: u64 = 16 << 30;

/// Where packed weights are kept and how much room they may take.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct WeightCache {
    pub dir: PathBuf,
    /// The entries' total size: a new entry deletes the least recently used ones to stay under it.
    pub max_bytes: u64,
    /// What a new entry leaves free on the disk ([`FREE_RESERVE`]).
    pub free_reserve: u64,
}

impl WeightCache {
    /// `dir` with the default size bound.
    pub fn new(dir: impl Into<PathBuf>) -> WeightCache {
        WeightCache {
            dir: dir.into(),
            max_bytes: DEFAULT_MAX_BYTES,
            free_reserve: FREE_RESERVE,
        }
    }
}

/// A size as users write it: bytes, or a number with K, M, G or T (powers of 1024, an optional
/// trailing `B` or `iB`), such as `16G`, `512MiB`, `1.5G`.
pub fn parse_size(text: &str) -> Result<u64, String> {
    let t = text.trim();
    let t = t
        .strip_suffix("iB")
        .or_else(|| t.strip_suffix('B'))
        .unwrap_or(t);
    let (num, shift) = match t.char_indices().last() {
        Some((i, c)) if c.is_ascii_alphabetic() => {
            let shift = match c.to_ascii_uppercase() {
                'K' => 10,
                'M' => 20,
                'G' => 30,
                'T' => 40,
                _ => return Err(format!("`{text}`: unknown size unit `{c}` (K, M, G or T)")),
            };
            (&t[..i], shift)
        }
        _ => (t, 0),
    };
    let v: f64 = num
        .trim()
        .parse()
        .map_err(|_| format!("`{text}` is not a size (bytes, or a number with K, M, G or T)"))?;
    let bytes = v * (1u64 << shift) as f64;
    if !bytes.is_finite() || bytes < 0.0 || bytes > u64::MAX as f64 {
        return Err(format!("`{text}` is not a size in range"));
    }
    Ok(bytes as u64)
}

#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
struct Entry {
    dtype: String,
    rows: usize,
    cols: usize,
    offset: u64,
    len: u64,
    crc32: u32,
}

#[derive(Serialize, Deserialize)]
struct Index {
    layout: u32,
    sources: Vec<String>,
    tensors: BTreeMap<String, Entry>,
}

struct Pending {
    name: String,
    dtype: WeightType,
    rows: usize,
    cols: usize,
    blob: Blob,
}

/// The packed-weights file of one model: read from when it exists and matches, filled by the
/// first load otherwise.
pub struct PackCache {
    path: PathBuf,
    max_bytes: u64,
    free_reserve: u64,
    sources: Vec<String>,
    existing: Option<(Arc<Mmap>, BTreeMap<String, Entry>)>,
    pending: Mutex<Vec<Pending>>,
    /// A matrix failed its checksum: the entry is deleted at [`PackCache::persist`].
    corrupt: std::sync::atomic::AtomicBool,
    /// The entry's stamp matched: its matrices are served without their checksums.
    trusted: bool,
    /// Matrices served after their checksum matched (every one of the index's: the entry is
    /// stamped at [`PackCache::persist`]).
    verified: std::sync::atomic::AtomicUsize,
    /// The entry's identity after this load's own touch, which the stamp records.
    identity: Option<String>,
}

impl PackCache {
    /// The cache entry in `dir` for the model made of `files`, opened if it is there and valid.
    /// `None` when the files cannot be described (a missing file: the load fails on it later).
    pub fn open(cache: &WeightCache, files: &[PathBuf]) -> Option<PackCache> {
        let dir = cache.dir.as_path();
        let sources = files
            .iter()
            .map(|f| describe(f))
            .collect::<Option<Vec<String>>>()?;
        let mut h = Sha256::new();
        h.update(crate::kernels::packed::LAYOUT_VERSION.to_le_bytes());
        for s in &sources {
            h.update(s.as_bytes());
            h.update([0]);
        }
        let key: String = h.finalize()[..16]
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect();
        let path = dir.join(format!("{key}.bkpack"));
        remove_stale_temporaries(dir, STALE_TEMP);
        let existing = read_index(&path, &sources);
        let (mut trusted, mut identity) = (false, None);
        if let Some((_, _, mapped)) = &existing {
            let stamp = std::fs::read_to_string(stamp_path(&path)).ok();
            trusted = mapped.is_some() && stamp == *mapped;
            // The eviction order: modification time is the last use. Touching the file moves
            // its status-change time, so the identity a stamp records is read after the touch,
            // through the same handle, and only if it is still the mapped file.
            identity = std::fs::File::options()
                .write(true)
                .open(&path)
                .and_then(|f| {
                    f.set_modified(std::time::SystemTime::now())?;
                    f.metadata()
                })
                .ok()
                .and_then(|m| {
                    let after = identity_of(&m)?;
                    (Some(file_of(&after)) == mapped.as_deref().map(file_of)).then_some(after)
                });
        }
        Some(PackCache {
            max_bytes: cache.max_bytes,
            free_reserve: cache.free_reserve,
            path,
            sources,
            existing: existing.map(|(map, tensors, _)| (map, tensors)),
            pending: Mutex::new(Vec::new()),
            corrupt: std::sync::atomic::AtomicBool::new(false),
            trusted,
            verified: std::sync::atomic::AtomicUsize::new(0),
            identity,
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Whether the file existed and matched when opened.
    pub fn hit(&self) -> bool {
        self.existing.is_some()
    }

    /// The packed bytes of `name` from the file, if it holds that matrix with this type, shape
    /// and size, and `crc32` of them matches the one recorded when it was written (not asked
    /// when the entry's stamp matched). The caller computes the CRC-32 (`crc32fast`), so it can
    /// spread the pass over its threads.
    pub fn get(
        &self,
        name: &str,
        dtype: WeightType,
        rows: usize,
        cols: usize,
        len: usize,
        crc32: impl FnOnce(&Blob) -> u32,
    ) -> Option<Blob> {
        let (map, tensors) = self.existing.as_ref()?;
        let e = tensors.get(name)?;
        if !(e.dtype == dtype_name(dtype)
            && e.rows == rows
            && e.cols == cols
            && e.len == len as u64)
        {
            return None;
        }
        let blob = Blob::Mapped {
            map: map.clone(),
            start: e.offset as usize,
            len: e.len as usize,
        };
        if !self.trusted {
            if crc32(&blob) != e.crc32 {
                self.corrupt
                    .store(true, std::sync::atomic::Ordering::Relaxed);
                return None;
            }
            self.verified
                .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        }
        Some(blob)
    }

    /// Whether the entry's matrices are served without reading their checksums (its stamp
    /// matched).
    pub fn trusted(&self) -> bool {
        self.trusted
    }

    /// Whether a matrix read from the file failed its checksum (it was packed again instead).
    pub fn corrupt(&self) -> bool {
        self.corrupt.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// Remembers a matrix packed in memory, to be written by [`PackCache::persist`] when the
    /// file did not exist.
    pub fn offer(&self, name: &str, dtype: WeightType, rows: usize, cols: usize, blob: &Blob) {
        if self.existing.is_some() {
            return;
        }
        if let Ok(mut p) = self.pending.lock() {
            p.push(Pending {
                name: name.to_string(),
                dtype,
                rows,
                cols,
                blob: blob.clone(),
            });
        }
    }

    /// Writes the offered matrices to the file (through a temporary file renamed into place, so
    /// a reader never sees half of one). Does nothing when nothing was offered.
    /// A hit whose matrices were all intact (or trusted) is stamped instead.
    pub fn persist(&self) -> std::io::Result<()> {
        if self.corrupt() {
            let _ = remove_if_present(&stamp_path(&self.path));
            return remove_if_present(&self.path);
        }
        if let Some((_, tensors)) = &self.existing {
            let all = self.trusted
                || self.verified.load(std::sync::atomic::Ordering::Relaxed) == tensors.len();
            let stamp = stamp_path(&self.path);
            return match &self.identity {
                Some(id) if all => std::fs::write(stamp, id),
                // Not every matrix was checked, or the file could not be touched and
                // described: the next load checks them all.
                _ => remove_if_present(&stamp),
            };
        }
        let pending = match self.pending.lock() {
            Ok(mut p) => std::mem::take(&mut *p),
            Err(_) => return Ok(()),
        };
        if pending.is_empty() {
            return Ok(());
        }
        let mut tensors = BTreeMap::new();
        // Offsets are relative to the data start until the index length is known; the index
        // is then serialised with absolute offsets, and its own length fixed by padding.
        let mut rel = 0u64;
        for p in &pending {
            let len = p.blob.bytes().len() as u64;
            tensors.insert(
                p.name.clone(),
                Entry {
                    dtype: dtype_name(p.dtype).to_string(),
                    rows: p.rows,
                    cols: p.cols,
                    offset: rel,
                    len,
                    crc32: crc32fast::hash(p.blob.bytes()),
                },
            );
            rel = (rel + len).next_multiple_of(ALIGN);
        }
        let mut index = Index {
            layout: crate::kernels::packed::LAYOUT_VERSION,
            sources: self.sources.clone(),
            tensors,
        };
        // Absolute offsets only grow the JSON, so two passes settle the data start.
        let mut data_start = 0u64;
        for _ in 0..3 {
            let json = serde_json::to_vec(&index).map_err(std::io::Error::other)?;
            let start = (16 + json.len() as u64).next_multiple_of(ALIGN);
            if start == data_start {
                break;
            }
            for e in index.tensors.values_mut() {
                e.offset = e.offset - data_start + start;
            }
            data_start = start;
        }
        let json = serde_json::to_vec(&index).map_err(std::io::Error::other)?;
        if 16 + json.len() as u64 > data_start {
            return Err(std::io::Error::other("pack cache index did not settle"));
        }
        let size = index
            .tensors
            .values()
            .map(|e| e.offset + e.len)
            .max()
            .unwrap_or(data_start);
        let dir = self.path.parent().unwrap_or(Path::new("."));
        std::fs::create_dir_all(dir)?;
        prune(dir);
        let others = entries(dir, &self.path);
        let evict = evictions(
            &others,
            size,
            self.max_bytes,
            free_bytes(dir),
            self.free_reserve,
        )
        .ok_or_else(|| {
            let mib = |b: u64| b as f64 / (1u64 << 20) as f64;
            std::io::Error::new(
                std::io::ErrorKind::StorageFull,
                format!(
                    "the entry takes {:.0} MiB, the cache may hold {:.0} MiB \
                         ($BAKEOFF_WEIGHT_CACHE_MAX) and leaves {:.0} MiB free on its disk",
                    mib(size),
                    mib(self.max_bytes),
                    mib(self.free_reserve)
                ),
            )
        })?;
        for p in evict {
            remove_entry(&p);
        }
        let tmp = tempfile::Builder::new()
            .prefix(TEMP_PREFIX)
            .tempfile_in(dir)?;
        {
            let mut w = HugeChunks::new(tmp.as_file());
            w.write_all(MAGIC)?;
            w.write_all(&(json.len() as u64).to_le_bytes())?;
            w.write_all(&json)?;
            let mut at = 16 + json.len() as u64;
            for p in &pending {
                let e = &index.tensors[&p.name];
                w.write_all(&vec![0u8; (e.offset - at) as usize])?;
                w.write_all(p.blob.bytes())?;
                at = e.offset + e.len;
            }
            w.flush()?;
        }
        tmp.persist(&self.path).map_err(|e| e.error)?;
        Ok(())
    }
}

/// A source file as the cache key sees it: canonical path, size and modification time.
fn describe(f: &Path) -> Option<String> {
    let meta = std::fs::metadata(f).ok()?;
    let path = std::fs::canonicalize(f).ok()?;
    let mtime = meta
        .modified()
        .ok()
        .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
        .map_or(0, |d| d.as_nanos());
    Some(format!("{} {} {mtime}", path.display(), meta.len()))
}

/// Deletes the packed-weights files in `dir` that no load can use again: a source file gone or
/// changed (a model deleted or rewritten, a test's temporary model), another layout version (a
/// file written by an older build, whose key this build never asks for), or an index that does
/// not parse. Without this the folder would grow by a model's size for every file ever loaded,
/// and by one more copy of every model at each layout change (19.8 GB on a development machine).
fn prune(dir: &Path) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for e in entries.flatten() {
        let p = e.path();
        if p.extension().is_some_and(|x| x == "verified") {
            if !p.with_extension("bkpack").exists() {
                let _ = std::fs::remove_file(&p);
            }
            continue;
        }
        if p.extension().is_none_or(|x| x != "bkpack") {
            continue;
        }
        let current = read_head(&p).is_some_and(|index| {
            index.layout == crate::kernels::packed::LAYOUT_VERSION
                && index.sources.iter().all(|s| {
                    let path = s.rsplitn(3, ' ').nth(2).unwrap_or("");
                    describe(Path::new(path)).as_ref() == Some(s)
                })
        });
        if !current {
            remove_entry(&p);
        }
    }
}

/// Where the stamp of the entry at `pack` is kept.
fn stamp_path(pack: &Path) -> PathBuf {
    pack.with_extension("verified")
}

/// Deletes a file; one that is not there is no error.
fn remove_if_present(path: &Path) -> std::io::Result<()> {
    match std::fs::remove_file(path) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(e),
        _ => Ok(()),
    }
}

/// Deletes an entry and its stamp.
fn remove_entry(pack: &Path) {
    let _ = std::fs::remove_file(pack);
    let _ = std::fs::remove_file(stamp_path(pack));
}

/// A file's identity for its stamp: device, inode and size, then (after a `|`, so the rest can
/// be compared across a touch) modification and status-change times. Both times: the kernel
/// stamps a write with a clock that may advance only once per tick, so a write right after the
/// touch can leave the status-change time as it was, but not the modification time, which the
/// touch set to the nanosecond.
#[cfg(unix)]
fn identity_of(m: &std::fs::Metadata) -> Option<String> {
    use std::os::unix::fs::MetadataExt;
    Some(format!(
        "{} {} {}|{}.{:09} {}.{:09}",
        m.dev(),
        m.ino(),
        m.len(),
        m.mtime(),
        m.mtime_nsec(),
        m.ctime(),
        m.ctime_nsec()
    ))
}

#[cfg(not(unix))]
fn identity_of(_m: &std::fs::Metadata) -> Option<String> {
    None
}

/// The part of an identity a touch leaves alone.
fn file_of(identity: &str) -> &str {
    identity.split_once('|').map_or(identity, |i| i.0)
}

/// The entries in `dir` other than `except`: path, last use, size.
fn entries(dir: &Path, except: &Path) -> Vec<(PathBuf, std::time::SystemTime, u64)> {
    let Ok(read) = std::fs::read_dir(dir) else {
        return Vec::new();
    };
    read.flatten()
        .filter_map(|e| {
            let p = e.path();
            if p.extension().is_none_or(|x| x != "bkpack") || p == except {
                return None;
            }
            let m = e.metadata().ok()?;
            Some((p, m.modified().ok()?, m.len()))
        })
        .collect()
}

/// The entries to delete, least recently used first, so that `need` more bytes keep the folder
/// within `max_bytes` and leave `reserve` free on a disk with `free` bytes available (unknown:
/// only the bound counts). `None` when deleting them all would not be enough.
fn evictions(
    entries: &[(PathBuf, std::time::SystemTime, u64)],
    need: u64,
    max_bytes: u64,
    free: Option<u64>,
    reserve: u64,
) -> Option<Vec<PathBuf>> {
    let mut by_age: Vec<_> = entries.iter().collect();
    by_age.sort_by_key(|e| e.1);
    let mut held: u64 = entries.iter().map(|e| e.2).sum();
    let mut free = free.map(u128::from);
    let fits = |held: u64, free: Option<u128>| {
        held.saturating_add(need) <= max_bytes
            && free.is_none_or(|f| f >= u128::from(need) + u128::from(reserve))
    };
    let mut out = Vec::new();
    for (p, _, len) in by_age {
        if fits(held, free) {
            break;
        }
        held -= len;
        free = free.map(|f| f + u128::from(*len));
        out.push(p.clone());
    }
    fits(held, free).then_some(out)
}

/// Bytes an unprivileged write may still take on the disk holding `dir`.
#[cfg(unix)]
fn free_bytes(dir: &Path) -> Option<u64> {
    use std::os::unix::ffi::OsStrExt;
    let c = std::ffi::CString::new(dir.as_os_str().as_bytes()).ok()?;
    let mut s = std::mem::MaybeUninit::<libc::statvfs>::uninit();
    // SAFETY: `c` is a NUL-terminated path and `s` is written in full when the call succeeds.
    let s = unsafe {
        if libc::statvfs(c.as_ptr(), s.as_mut_ptr()) != 0 {
            return None;
        }
        s.assume_init()
    };
    Some((s.f_bavail as u64).saturating_mul(s.f_frsize as u64))
}

#[cfg(not(unix))]
fn free_bytes(_dir: &Path) -> Option<u64> {
    None
}

/// Deletes the temporaries of writes that never finished (a load killed mid-write) once they are
/// older than `age`.
fn remove_stale_temporaries(dir: &Path, age: std::time::Duration) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for e in entries.flatten() {
        if !e.file_name().to_string_lossy().starts_with(TEMP_PREFIX) {
            continue;
        }
        let old = e
            .metadata()
            .and_then(|m| m.modified())
            .ok()
            .and_then(|t| t.elapsed().ok())
            .is_some_and(|d| d >= age);
        if old {
            let _ = std::fs::remove_file(e.path());
        }
    }
}

/// A file's index (layout version, sources, matrices), read without mapping the file.
fn read_head(path: &Path) -> Option<Index> {
    use std::io::Read;
    let mut f = std::fs::File::open(path).ok()?;
    let mut head = [0u8; 16];
    f.read_exact(&mut head).ok()?;
    if &head[..8] != MAGIC {
        return None;
    }
    let n = u64::from_le_bytes(head[8..16].try_into().ok()?);
    let mut json = Vec::new();
    f.take(n).read_to_end(&mut json).ok()?;
    serde_json::from_slice(&json).ok()
}

/// The mapped file, its index, and the identity ([`identity_of`]) of the file mapped.
type Opened = (Arc<Mmap>, BTreeMap<String, Entry>, Option<String>);

fn read_index(path: &Path, sources: &[String]) -> Option<Opened> {
    if !path.is_file() {
        return None;
    }
    let (map, identity) = map_huge(path)?;
    if map.len() < 16 || &map[..8] != MAGIC {
        return None;
    }
    let n = u64::from_le_bytes(map[8..16].try_into().ok()?) as usize;
    let json = map.get(16..16usize.checked_add(n)?)?;
    let index: Index = serde_json::from_slice(json).ok()?;
    let fits = index.tensors.values().all(|e| {
        e.offset
            .checked_add(e.len)
            .is_some_and(|end| end <= map.len() as u64)
    });
    (index.layout == crate::kernels::packed::LAYOUT_VERSION && index.sources == sources && fits)
        .then_some((map, index.tensors, identity))
}

/// The page cache's huge folio, and the size of every write of a new entry but its last.
const HUGE_CHUNK: usize = 2 << 20;

/// A writer that hands its sink only whole [`HUGE_CHUNK`]s at multiples of [`HUGE_CHUNK`] (and
/// the rest at the end). The page cache keeps a written file in folios the size of the writes
/// that made them: written a matrix at a time, from offsets 4 KiB-aligned, every 2 MiB block
/// holding a matrix boundary was left in small folios, and those blocks are mapped 4 KiB at a
/// time, with a TLB miss per page and no hardware prefetch across pages: a matrix there streamed
/// markedly slower than on huge pages (docs/benchmarks.md, "Huge folios").
struct HugeChunks<W: Write> {
    sink: W,
    buf: Vec<u8>,
}

impl<W: Write> HugeChunks<W> {
    fn new(sink: W) -> Self {
        HugeChunks {
            sink,
            buf: Vec::with_capacity(HUGE_CHUNK),
        }
    }
}

impl<W: Write> Write for HugeChunks<W> {
    fn write(&mut self, mut data: &[u8]) -> std::io::Result<usize> {
        let n = data.len();
        while !data.is_empty() {
            let take = (HUGE_CHUNK - self.buf.len()).min(data.len());
            self.buf.extend_from_slice(&data[..take]);
            data = &data[take..];
            if self.buf.len() == HUGE_CHUNK {
                self.sink.write_all(&self.buf)?;
                self.buf.clear();
            }
        }
        Ok(n)
    }

    fn flush(&mut self) -> std::io::Result<()> {
        self.sink.write_all(&self.buf)?;
        self.buf.clear();
        self.sink.flush()
    }
}

/// Maps the file asking for huge pages, so copying a matrix out of it faults once per 2 MiB
/// where the page cache holds large folios. Not populated: each matrix's pages come in as it is
/// copied and are dropped after, so the file never adds its size to the resident memory.
fn map_huge(path: &Path) -> Option<(Arc<Mmap>, Option<String>)> {
    let file = std::fs::File::open(path).ok()?;
    // SAFETY: read-only map of a file bakeoff never writes in place (it is replaced by rename).
    let map = unsafe { memmap2::MmapOptions::new().map(&file) }.ok()?;
    #[cfg(target_os = "linux")]
    let _ = map.advise(memmap2::Advice::HugePage);
    let identity = file.metadata().ok().as_ref().and_then(identity_of);
    Some((Arc::new(map), identity))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn crc(b: &Blob) -> u32 {
        crc32fast::hash(b.bytes())
    }

    /// A cache with no size bound and no free-space reserve: these tests are not about either.
    fn wc(dir: PathBuf) -> WeightCache {
        WeightCache {
            dir,
            max_bytes: u64::MAX,
            free_reserve: 0,
        }
    }

    fn blob(bytes: &[u8]) -> Blob {
        Blob::Owned(Arc::new(bytes.to_vec()))
    }

    #[test]
    fn a_written_cache_is_read_back_and_a_changed_source_misses() {
        let dir = tempfile::tempdir().unwrap();
        let model = dir.path().join("m.gguf");
        std::fs::write(&model, b"weights").unwrap();
        let files = vec![model.clone()];
        let c = PackCache::open(&wc(dir.path().join("cache")), &files).unwrap();
        assert!(!c.hit());
        let a: Vec<u8> = (0..5000u32).map(|i| (i % 251) as u8).collect();
        c.offer("a", WeightType::Q4_0, 2, 64, &blob(&a));
        c.offer("b", WeightType::Q8_0, 1, 32, &blob(&[7u8; 40]));
        c.persist().unwrap();
        let c = PackCache::open(&wc(dir.path().join("cache")), &files).unwrap();
        assert!(c.hit());
        assert_eq!(
            c.get("a", WeightType::Q4_0, 2, 64, a.len(), crc)
                .unwrap()
                .bytes(),
            &a[..]
        );
        assert_eq!(
            c.get("b", WeightType::Q8_0, 1, 32, 40, crc)
                .unwrap()
                .bytes(),
            &[7u8; 40]
        );
        // Another type, shape or size is not served from the file.
        assert!(c.get("a", WeightType::Q8_0, 2, 64, a.len(), crc).is_none());
        assert!(c.get("a", WeightType::Q4_0, 3, 64, a.len(), crc).is_none());
        assert!(c.get("c", WeightType::Q4_0, 2, 64, a.len(), crc).is_none());
        // A rewritten model file is a different cache entry.
        std::thread::sleep(std::time::Duration::from_millis(20));
        std::fs::write(&model, b"other weights").unwrap();
        assert!(
            !PackCache::open(&wc(dir.path().join("cache")), &files)
                .unwrap()
                .hit()
        );
    }

    /// Writing an entry deletes the entries of models that are gone, and keeps the others.
    #[test]
    fn entries_of_deleted_models_are_pruned() {
        let dir = tempfile::tempdir().unwrap();
        let cache = wc(dir.path().join("cache"));
        let write = |name: &str| {
            let model = dir.path().join(name);
            std::fs::write(&model, name.as_bytes()).unwrap();
            let c = PackCache::open(&cache, std::slice::from_ref(&model)).unwrap();
            c.offer("a", WeightType::Q4_0, 1, 32, &blob(&[3u8; 100]));
            c.persist().unwrap();
            (model, c.path().to_path_buf())
        };
        let (gone, gone_entry) = write("gone.gguf");
        let (_kept, kept_entry) = write("kept.gguf");
        std::fs::remove_file(&gone).unwrap();
        let (_new, new_entry) = write("new.gguf");
        assert!(!gone_entry.exists(), "stale entry left behind");
        assert!(kept_entry.exists() && new_entry.exists());

        // An entry of the same, unchanged model written by a build with another layout version
        // is never read again: the next write deletes it.
        let model = dir.path().join("kept.gguf");
        let index = Index {
            layout: crate::kernels::packed::LAYOUT_VERSION - 1,
            sources: vec![describe(&model).unwrap()],
            tensors: BTreeMap::new(),
        };
        let json = serde_json::to_vec(&index).unwrap();
        let old_entry = cache.dir.join("0123456789abcdef0123456789abcdef.bkpack");
        let mut bytes = MAGIC.to_vec();
        bytes.extend_from_slice(&(json.len() as u64).to_le_bytes());
        bytes.extend_from_slice(&json);
        std::fs::write(&old_entry, bytes).unwrap();
        write("newer.gguf");
        assert!(!old_entry.exists(), "entry of an older layout left behind");
        assert!(
            kept_entry.exists(),
            "the current entry of the same model was deleted"
        );
    }

    /// A model file in `dir` and its cache entry of two matrices, `a` (9000 bytes of 1) and `b`
    /// (100 bytes of 2): the cache, the model's files and the entry's path.
    fn two_matrix_entry(dir: &Path) -> (WeightCache, Vec<PathBuf>, PathBuf) {
        let model = dir.join("m.gguf");
        std::fs::write(&model, b"weights").unwrap();
        let files = vec![model];
        let cache = wc(dir.join("cache"));
        let c = PackCache::open(&cache, &files).unwrap();
        c.offer("a", WeightType::Q4_0, 2, 64, &blob(&[1u8; 9000]));
        c.offer("b", WeightType::Q4_0, 1, 64, &blob(&[2u8; 100]));
        c.persist().unwrap();
        let path = c.path().to_path_buf();
        (cache, files, path)
    }

    /// Flips one bit of the last byte of matrix `a`, rewriting the file in place (same length).
    fn flip_in_place(path: &Path) {
        let mut bytes = std::fs::read(path).unwrap();
        let at = bytes.iter().rposition(|&b| b == 1).unwrap();
        bytes[at] ^= 0x10;
        std::fs::write(path, &bytes).unwrap();
    }

    /// A flipped byte in a cached matrix is caught: that matrix is not served, and the entry is
    /// deleted so the next load writes it again.
    #[test]
    fn a_corrupted_matrix_is_not_served_and_its_entry_is_rewritten() {
        let dir = tempfile::tempdir().unwrap();
        let (cache, files, path) = two_matrix_entry(dir.path());
        flip_in_place(&path);

        let c = PackCache::open(&cache, &files).unwrap();
        assert!(c.hit());
        assert!(c.get("b", WeightType::Q4_0, 1, 64, 100, crc).is_some());
        assert!(c.get("a", WeightType::Q4_0, 2, 64, 9000, crc).is_none());
        assert!(c.corrupt());
        c.persist().unwrap();
        assert!(!path.exists(), "the corrupt entry is deleted");
        assert!(!PackCache::open(&cache, &files).unwrap().hit());
    }

    /// A load that finds every matrix intact stamps the entry, and the next load serves it
    /// without reading the checksums; a file written in place loses the stamp's trust, so its
    /// flipped byte is still caught. A load that checked only some matrices does not stamp.
    #[cfg(unix)]
    #[test]
    fn a_verified_entry_is_trusted_until_the_file_changes() {
        let dir = tempfile::tempdir().unwrap();
        let (cache, files, path) = two_matrix_entry(dir.path());
        let stamp = stamp_path(&path);
        assert!(
            !stamp.exists(),
            "a fresh write is stamped only once read back"
        );

        // Only one matrix asked for: no stamp.
        let c = PackCache::open(&cache, &files).unwrap();
        assert!(c.hit() && !c.trusted());
        assert!(c.get("a", WeightType::Q4_0, 2, 64, 9000, crc).is_some());
        c.persist().unwrap();
        assert!(!stamp.exists(), "stamped after checking one matrix of two");

        let hashed = std::sync::atomic::AtomicUsize::new(0);
        let counting = |b: &Blob| {
            hashed.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            crc(b)
        };
        let load = |expect_trusted: bool| {
            let c = PackCache::open(&cache, &files).unwrap();
            assert!(c.hit());
            assert_eq!(c.trusted(), expect_trusted);
            let a = c.get("a", WeightType::Q4_0, 2, 64, 9000, counting);
            let b = c.get("b", WeightType::Q4_0, 1, 64, 100, counting);
            c.persist().unwrap();
            (a.map(|x| x.bytes().to_vec()), b.is_some())
        };
        assert_eq!(load(false), (Some(vec![1u8; 9000]), true));
        assert_eq!(hashed.swap(0, std::sync::atomic::Ordering::Relaxed), 2);
        assert!(stamp.exists(), "a fully checked entry is stamped");
        for _ in 0..2 {
            assert_eq!(load(true), (Some(vec![1u8; 9000]), true));
            assert_eq!(hashed.load(std::sync::atomic::Ordering::Relaxed), 0);
        }

        flip_in_place(&path);
        let c = PackCache::open(&cache, &files).unwrap();
        assert!(
            c.hit() && !c.trusted(),
            "an edited file kept its stamp's trust"
        );
        assert!(c.get("a", WeightType::Q4_0, 2, 64, 9000, crc).is_none());
        c.persist().unwrap();
        assert!(
            !path.exists() && !stamp.exists(),
            "corrupt entry or its stamp left"
        );

        // A stamp whose entry is gone is pruned by the next write.
        std::fs::write(&stamp, b"1 2 3|4.5 6.7").unwrap();
        let other = dir.path().join("o.gguf");
        std::fs::write(&other, b"o").unwrap();
        let c = PackCache::open(&cache, std::slice::from_ref(&other)).unwrap();
        c.offer("a", WeightType::Q4_0, 1, 32, &blob(&[3u8; 100]));
        c.persist().unwrap();
        assert!(!stamp.exists(), "orphan stamp left");
    }

    /// A write killed before its rename leaves a temporary; it is deleted once stale, and a
    /// fresh one (a load writing right now) is left alone.
    #[test]
    fn stale_temporaries_are_removed() {
        let dir = tempfile::tempdir().unwrap();
        let stale = dir.path().join(format!("{TEMP_PREFIX}killed"));
        let fresh = dir.path().join(format!("{TEMP_PREFIX}writing"));
        let other = dir.path().join("notes.txt");
        for p in [&stale, &fresh, &other] {
            std::fs::write(p, b"x").unwrap();
        }
        let old = std::time::SystemTime::now() - STALE_TEMP - std::time::Duration::from_secs(5);
        std::fs::File::options()
            .write(true)
            .open(&stale)
            .unwrap()
            .set_modified(old)
            .unwrap();
        remove_stale_temporaries(dir.path(), STALE_TEMP);
        assert!(!stale.exists());
        assert!(fresh.exists() && other.exists());
    }

    /// A new entry deletes the least recently used ones (a hit counts as a use) to stay within
    /// the bound, and is not written when it could not be.
    #[test]
    fn the_cache_stays_within_its_bound_least_recently_used_first() {
        let dir = tempfile::tempdir().unwrap();
        let mut cache = wc(dir.path().join("cache"));
        let write = |cache: &WeightCache, name: &str| {
            let model = dir.path().join(name);
            std::fs::write(&model, name.as_bytes()).unwrap();
            let c = PackCache::open(cache, std::slice::from_ref(&model)).unwrap();
            c.offer("a", WeightType::Q4_0, 1, 32, &blob(&[3u8; 10_000]));
            (c.persist(), c.path().to_path_buf(), model)
        };
        let (r, a, a_model) = write(&cache, "a.gguf");
        r.unwrap();
        let one = std::fs::metadata(&a).unwrap().len();
        cache.max_bytes = 2 * one;
        std::thread::sleep(std::time::Duration::from_millis(20));
        let (r, b, _) = write(&cache, "b.gguf");
        r.unwrap();
        std::thread::sleep(std::time::Duration::from_millis(20));
        // Loading `a` again makes `b` the least recently used.
        assert!(
            PackCache::open(&cache, std::slice::from_ref(&a_model))
                .unwrap()
                .hit()
        );
        let (r, c, _) = write(&cache, "c.gguf");
        r.unwrap();
        assert!(
            a.exists() && c.exists(),
            "a used entry or the new one was deleted"
        );
        assert!(
            !b.exists(),
            "the least recently used entry was kept past the bound"
        );

        cache.max_bytes = one - 1;
        let (r, d, _) = write(&cache, "d.gguf");
        let e = r.unwrap_err();
        assert_eq!(e.kind(), std::io::ErrorKind::StorageFull);
        assert!(e.to_string().contains("BAKEOFF_WEIGHT_CACHE_MAX"), "{e}");
        assert!(!d.exists());
        assert!(
            a.exists() && c.exists(),
            "entries deleted for a write that did not happen"
        );
    }

    #[test]
    fn evictions_leave_the_reserve_free_on_the_disk() {
        let t = |s: u64| std::time::UNIX_EPOCH + std::time::Duration::from_secs(s);
        let e = vec![
            (PathBuf::from("new"), t(30), 100),
            (PathBuf::from("old"), t(10), 100),
            (PathBuf::from("mid"), t(20), 100),
        ];
        let names = |v: Option<Vec<PathBuf>>| {
            v.map(|v| {
                v.iter()
                    .map(|p| p.display().to_string())
                    .collect::<Vec<_>>()
            })
        };
        // Room on the disk and under the bound: nothing to delete.
        assert_eq!(
            names(evictions(&e, 50, 1000, Some(1000), 100)),
            Some(vec![])
        );
        // The bound: the oldest go first.
        assert_eq!(
            names(evictions(&e, 150, 400, None, 0)),
            Some(vec!["old".into()])
        );
        // The disk: 100 free, 50 to write, 200 to leave free.
        assert_eq!(
            names(evictions(&e, 50, u64::MAX, Some(100), 200)),
            Some(vec!["old".into(), "mid".into()])
        );
        // Not enough even with every entry deleted.
        assert_eq!(names(evictions(&e, 50, u64::MAX, Some(100), 500)), None);
        assert_eq!(names(evictions(&e, 401, 400, None, 0)), None);
    }

    #[test]
    fn entries_are_written_in_whole_aligned_huge_chunks() {
        // Records each write the sink receives.
        struct Sizes(Vec<usize>);
        impl Write for Sizes {
            fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
                self.0.push(b.len());
                Ok(b.len())
            }
            fn flush(&mut self) -> std::io::Result<()> {
                Ok(())
            }
        }
        let mut w = HugeChunks::new(Sizes(Vec::new()));
        // A header, then matrices of sizes that straddle chunk boundaries.
        let parts = [16, 4080, 3 * HUGE_CHUNK + 12_288, 4096, HUGE_CHUNK - 1, 7];
        for &n in &parts {
            w.write_all(&vec![1u8; n]).unwrap();
        }
        w.flush().unwrap();
        let total: usize = parts.iter().sum();
        let sizes = &w.sink.0;
        assert_eq!(sizes.iter().sum::<usize>(), total);
        let (last, whole) = sizes.split_last().unwrap();
        assert!(whole.iter().all(|&s| s == HUGE_CHUNK), "{sizes:?}");
        assert_eq!(*last, total % HUGE_CHUNK);
    }

    #[test]
    fn sizes_parse_as_users_write_them() {
        assert_eq!(parse_size("16G"), Ok(16 << 30));
        assert_eq!(parse_size("512MiB"), Ok(512 << 20));
        assert_eq!(parse_size("1.5g"), Ok(3 << 29));
        assert_eq!(parse_size("4096"), Ok(4096));
        assert_eq!(parse_size(" 2 KB "), Ok(2048));
        assert_eq!(parse_size("0"), Ok(0));
        for bad in ["", "G", "12X", "-1G", "lots", "1e30T"] {
            assert!(parse_size(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn a_truncated_or_foreign_file_is_ignored() {
        let dir = tempfile::tempdir().unwrap();
        let model = dir.path().join("m.gguf");
        std::fs::write(&model, b"weights").unwrap();
        let files = vec![model];
        let cache = wc(dir.path().join("cache"));
        let c = PackCache::open(&cache, &files).unwrap();
        c.offer("a", WeightType::Q4_0, 2, 64, &blob(&[1u8; 9000]));
        c.persist().unwrap();
        let path = c.path().to_path_buf();
        let full = std::fs::read(&path).unwrap();
        std::fs::write(&path, &full[..full.len() - 100]).unwrap();
        assert!(!PackCache::open(&cache, &files).unwrap().hit());
        std::fs::write(&path, b"not a pack file at all").unwrap();
        assert!(!PackCache::open(&cache, &files).unwrap().hit());
    }
}
