//! Which model a record is about: one [`ModelIdentity`] for bench, eval and the report.

use std::path::PathBuf;

use serde::{Deserialize, Deserializer, Serialize};

/// What ran the model.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum EngineKind {
    /// bakeoff's own engine.
    #[default]
    Local,
    /// An OpenAI-compatible server, measured from its stream.
    Openai,
}

/// One model file: where, how big, and its SHA-256 where the writer computed it.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct FileDigest {
    pub path: PathBuf,
    /// Absent in files that listed only the path (eval results before schema version 2).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub bytes: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub sha256: Option<String>,
}

impl<'de> Deserialize<'de> for FileDigest {
    /// Reads `{path, bytes, sha256}` or, as older eval results wrote it, a bare path.
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        struct Full {
            path: PathBuf,
            #[serde(default)]
            bytes: Option<u64>,
            #[serde(default)]
            sha256: Option<String>,
        }
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Either {
            Path(PathBuf),
            Full(Full),
        }
        Ok(match Either::deserialize(d)? {
            Either::Path(path) => FileDigest {
                path,
                bytes: None,
                sha256: None,
            },
            Either::Full(f) => FileDigest {
                path: f.path,
                bytes: f.bytes,
                sha256: f.sha256,
            },
        })
    }
}

/// A model's identity, as every results file records it. Bench writes it as `model`, eval as
/// `info` (which, before eval's schema version 2, was the engine's whole `ModelInfo`: the fields
/// below read from it, the rest is ignored).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ModelIdentity {
    /// The `--model` argument as given (a path, a hub id, or `openai:URL#NAME`).
    pub source: String,
    #[serde(default)]
    pub engine: EngineKind,
    /// The file or folder the source resolved to.
    #[serde(default)]
    pub path: Option<PathBuf>,
    /// Hub revision, when the model came from the hub.
    #[serde(default)]
    pub revision: Option<String>,
    /// `gguf`, `safetensors`, or `remote`.
    pub format: String,
    /// Architecture, e.g. `llama`, `qwen2`.
    #[serde(default)]
    pub arch: Option<String>,
    /// Storage type of the weight matrices, e.g. `q4_0` or `mixed(q4_k,q6_k)`.
    #[serde(default, alias = "weight_dtype")]
    pub dtype: Option<String>,
    /// Parameters counted from the tensors in the files.
    #[serde(default)]
    pub parameters: Option<u64>,
    #[serde(default)]
    pub file_bytes: Option<u64>,
    #[serde(default)]
    pub files: Vec<FileDigest>,
    #[serde(default)]
    pub max_context: Option<usize>,
    /// Random weights written by `bakeoff synth` (read from the file's own metadata); `None`
    /// where the writer did not look.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub synthetic: Option<bool>,
    /// Whether the model files carry a chat template (older eval results held the template
    /// itself, or null); `None` where the writer did not say.
    #[serde(
        default,
        deserialize_with = "template_present",
        skip_serializing_if = "Option::is_none"
    )]
    pub chat_template: Option<bool>,
}

fn template_present<'de, D: Deserializer<'de>>(d: D) -> Result<Option<bool>, D::Error> {
    Ok(match serde_json::Value::deserialize(d)? {
        serde_json::Value::Bool(b) => Some(b),
        serde_json::Value::Null => Some(false),
        _ => Some(true),
    })
}

impl ModelIdentity {
    /// An identity that knows only its source (a remote server before it answered).
    pub fn from_source(source: &str, engine: EngineKind, format: &str) -> Self {
        ModelIdentity {
            source: source.to_string(),
            engine,
            path: None,
            revision: None,
            format: format.to_string(),
            arch: None,
            dtype: None,
            parameters: None,
            file_bytes: None,
            files: Vec::new(),
            max_context: None,
            synthetic: None,
            chat_template: None,
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn reads_bench_identities_and_old_eval_model_infos() {
        let bench = serde_json::json!({
            "source": "m.gguf", "engine": "local", "path": "/m/m.gguf", "revision": null,
            "format": "gguf", "arch": "llama", "dtype": "q4_0", "parameters": 10,
            "file_bytes": 20, "files": [{"path": "/m/m.gguf", "bytes": 20, "sha256": "ab"}],
            "max_context": 2048
        });
        let id: ModelIdentity = serde_json::from_value(bench.clone()).unwrap();
        assert_eq!(id.files[0].sha256.as_deref(), Some("ab"));
        assert_eq!(serde_json::to_value(&id).unwrap(), bench);
        let eval = serde_json::json!({
            "source": "m.gguf", "path": "/m/m.gguf", "revision": null, "format": "gguf",
            "arch": "llama", "weight_dtype": "q4_0", "parameters": 10, "file_bytes": 20,
            "files": ["/m/m.gguf"], "config": {"max_context": 2048}, "load_s": 0.5
        });
        let old: ModelIdentity = serde_json::from_value(eval).unwrap();
        assert_eq!(old.dtype.as_deref(), Some("q4_0"));
        assert_eq!(old.files[0].path, PathBuf::from("/m/m.gguf"));
        assert_eq!(old.files[0].sha256, None);
        assert_eq!(old.engine, EngineKind::Local);
        assert_eq!(old.chat_template, None);
        let with: ModelIdentity = serde_json::from_value(
            serde_json::json!({"source": "s", "format": "gguf", "chat_template": "{{ x }}"}),
        )
        .unwrap();
        assert_eq!(with.chat_template, Some(true));
        let without: ModelIdentity = serde_json::from_value(
            serde_json::json!({"source": "s", "format": "gguf", "chat_template": null}),
        )
        .unwrap();
        assert_eq!(without.chat_template, Some(false));
    }
}
