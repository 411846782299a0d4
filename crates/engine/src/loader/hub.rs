//! Hugging Face hub ids (`owner/name[@revision]`): looked up in the standard cache and downloaded
//! into it when missing. Honours `HF_HOME`, `HF_HUB_CACHE`, `HF_TOKEN`, `HF_ENDPOINT` and
//! `HF_HUB_OFFLINE`.

use std::path::PathBuf;

use hf_hub::{Cache, Repo, RepoType};

use crate::{Error, Result};

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HubId {
    pub repo: String,
    pub revision: String,
}

impl HubId {
    /// `owner/name` with an optional `@revision`; anything else is not a hub id.
    pub fn parse(s: &str) -> Option<Self> {
        let (repo, revision) = match s.split_once('@') {
            Some((r, rev)) if !rev.is_empty() => (r, rev.to_string()),
            Some(_) => return None,
            None => (s, "main".to_string()),
        };
        let mut parts = repo.split('/');
        let (Some(owner), Some(name), None) = (parts.next(), parts.next(), parts.next()) else {
            return None;
        };
        let ok = |p: &str| {
            !p.is_empty()
                && p.chars()
                    .all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c))
        };
        (ok(owner) && ok(name)).then(|| HubId {
            repo: repo.to_string(),
            revision,
        })
    }
}

/// A shard name from a `model.safetensors.index.json` must be a plain file name in the model's
/// folder (`model-00001-of-00002.safetensors`): the index comes from a remote repository, and a
/// name such as `../../x` or `/etc/passwd` would otherwise be joined onto a local path.
pub fn check_shard_name(name: &str) -> std::result::Result<(), String> {
    let bad = if name.is_empty() {
        Some("is empty")
    } else if name == "." || name == ".." {
        Some("is not a file name")
    } else if name.contains(['/', '\\']) {
        Some("contains a path separator")
    } else if name.contains(':') {
        Some("contains `:` (a drive or stream name)")
    } else if name.chars().any(char::is_control) {
        Some("contains a control character")
    } else {
        None
    };
    match bad {
        Some(why) => Err(format!(
            "shard name {name:?} {why}; shards must be plain file names in the model's folder"
        )),
        None => Ok(()),
    }
}

pub fn cache_dir() -> PathBuf {
    if let Some(p) = std::env::var_os("HF_HUB_CACHE") {
        return PathBuf::from(p);
    }
    if let Some(p) = std::env::var_os("HF_HOME") {
        return PathBuf::from(p).join("hub");
    }
    let home = std::env::var_os("HOME")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("."));
    home.join(".cache").join("huggingface").join("hub")
}

fn offline() -> bool {
    matches!(
        std::env::var("HF_HUB_OFFLINE").as_deref(),
        Ok("1") | Ok("true") | Ok("TRUE") | Ok("yes")
    )
}

/// Fetches `files` (required) and `optional` files of a repository; returns the local folder.
pub fn fetch(id: &HubId, files: &[String], optional: &[&str]) -> Result<PathBuf> {
    let cache = Cache::new(cache_dir());
    let repo = Repo::with_revision(id.repo.clone(), RepoType::Model, id.revision.clone());
    let cached = cache.repo(repo.clone());
    let missing: Vec<&String> = files.iter().filter(|f| cached.get(f).is_none()).collect();
    let mut folder = None;
    for f in files {
        if let Some(p) = cached.get(f) {
            folder = p.parent().map(|p| p.to_path_buf());
        }
    }
    if missing.is_empty()
        && let Some(dir) = folder
    {
        return Ok(dir);
    }
    let not_cached = || {
        format!(
            "{}@{} is not in the Hugging Face cache at {} (missing: {}). Connect to the network and \
             run again to download it, download it with `huggingface-cli download {}`, or pass a \
             local folder or .gguf file to --model",
            id.repo,
            id.revision,
            cache_dir().display(),
            missing
                .iter()
                .map(|s| s.as_str())
                .collect::<Vec<_>>()
                .join(", "),
            id.repo
        )
    };
    if offline() {
        return Err(Error::NotFound(format!(
            "{} (HF_HUB_OFFLINE is set)",
            not_cached()
        )));
    }
    let mut builder = hf_hub::api::sync::ApiBuilder::from_cache(cache).with_progress(true);
    if let Ok(token) = std::env::var("HF_TOKEN") {
        builder = builder.with_token(Some(token));
    }
    if let Ok(endpoint) = std::env::var("HF_ENDPOINT") {
        builder = builder.with_endpoint(endpoint);
    }
    let api = builder.build().map_err(|e| Error::Hub(e.to_string()))?;
    let handle = api.repo(repo);
    let mut dir = None;
    for f in files {
        let p = handle
            .get(f)
            .map_err(|e| Error::Hub(format!("{}: {e}. {}", f, not_cached())))?;
        dir = p.parent().map(|p| p.to_path_buf());
    }
    for f in optional {
        let _ = handle.get(f);
    }
    dir.ok_or_else(|| Error::Hub(not_cached()))
}

/// The files of a Hugging Face model repository bakeoff needs, learnt from the index if sharded.
pub fn fetch_hf_model(id: &HubId) -> Result<PathBuf> {
    let base: Vec<String> = ["config.json", "tokenizer.json"]
        .iter()
        .map(|s| s.to_string())
        .collect();
    let optional = ["tokenizer_config.json", "generation_config.json"];
    // Try the single-file layout first, then the sharded one.
    let mut files = base.clone();
    files.push("model.safetensors".into());
    match fetch(id, &files, &optional) {
        Ok(dir) => Ok(dir),
        Err(first) => {
            let mut files = base;
            files.push("model.safetensors.index.json".into());
            let dir = fetch(id, &files, &optional).map_err(|_| first)?;
            let index = dir.join("model.safetensors.index.json");
            let text = std::fs::read_to_string(&index).map_err(|e| Error::io(&index, e))?;
            let json: serde_json::Value =
                serde_json::from_str(&text).map_err(|e| Error::format(&index, e.to_string()))?;
            let mut shards: Vec<String> = json["weight_map"]
                .as_object()
                .map(|m| {
                    m.values()
                        .filter_map(|v| v.as_str().map(String::from))
                        .collect()
                })
                .unwrap_or_default();
            shards.sort();
            shards.dedup();
            for s in &shards {
                check_shard_name(s).map_err(|e| Error::format(&index, e))?;
            }
            fetch(id, &shards, &[])
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shard_names_must_be_plain_file_names() {
        assert!(check_shard_name("model-00001-of-00002.safetensors").is_ok());
        for (bad, why) in [
            ("", "empty"),
            ("..", "not a file name"),
            ("../model.safetensors", "separator"),
            ("/etc/passwd", "separator"),
            ("sub/model.safetensors", "separator"),
            ("..\\x.safetensors", "separator"),
            ("C:x.safetensors", "`:`"),
            ("a\nb", "control"),
        ] {
            let e = check_shard_name(bad).err().unwrap_or_default();
            assert!(e.contains(why), "{bad:?}: {e}");
        }
    }
}
