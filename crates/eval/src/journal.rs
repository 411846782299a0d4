//! `items.jsonl`: every model response of an evaluation, appended and flushed as it arrives, so
//! an interrupted `bakeoff eval` loses at most the item in flight and `--resume` continues.
//!
//! The journal sits below the suite: [`Journaled`] wraps a [`Candidate`] and answers a request
//! it has already seen (same model file, same request) from the journal instead of the model.
//! The suite itself runs unchanged on resume, so scoring, audit records and results are
//! rebuilt from the same responses an uninterrupted run would have used.
//!
//! Layout: the first line is `{"kind": "bakeoff-eval-items", "config_sha256": …}`; every other
//! line is `{"model_sha256", "key", "op", "response", "t"}`, `key` being the SHA-256 of the
//! request and `t` the Unix time it was recorded, or a `{"session_start": t}` line where a run
//! (the first or a resumed one) began. The timestamps let a resumed run report the time the
//! whole evaluation took, not only its own: a replayed response costs nothing, so without them
//! a run resumed near its end would report a few seconds for hours of work.

use std::collections::HashMap;
use std::fs::File;
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};

use bakeoff_engine::template::Message;
use bakeoff_record::hash::sha256_hex;
use serde::Serialize;
use serde::de::DeserializeOwned;
use serde_json::{Value, json};

use crate::candidate::{Candidate, ChatRequest, GenOut, LogLik, NllOut};
use crate::{Error, Result};

const KIND: &str = "bakeoff-eval-items";

pub struct Journal {
    path: PathBuf,
    w: BufWriter<File>,
    /// (model hash, request key) -> recorded response.
    done: HashMap<(String, String), Value>,
    /// Model label -> the hash of its files when the run started it.
    models: HashMap<String, String>,
    /// Seconds the earlier runs of this journal spent, per model hash (each recorded line's
    /// time since the line before it in the same run, charged to the line's model).
    earlier: HashMap<String, f64>,
    /// The earlier runs wrote lines without timestamps (journals of older builds).
    earlier_untimed: bool,
}

fn now_unix() -> f64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs_f64())
        .unwrap_or(0.0)
}

/// The time each model took in the runs recorded by `lines` (a journal without its header),
/// and whether some lines carried no timestamp.
fn earlier_seconds(lines: &[Value]) -> (HashMap<String, f64>, bool) {
    let (mut by_model, mut untimed, mut prev) = (HashMap::new(), false, None::<f64>);
    for v in lines {
        if let Some(t) = v.get("session_start").and_then(Value::as_f64) {
            prev = Some(t);
            continue;
        }
        let model = v.get("model_sha256").and_then(Value::as_str);
        match (v.get("t").and_then(Value::as_f64), model) {
            (Some(t), Some(m)) => {
                if let Some(p) = prev {
                    *by_model.entry(m.to_string()).or_insert(0.0) += (t - p).max(0.0);
                }
                prev = Some(t);
            }
            (None, Some(_)) => untimed = true,
            _ => {}
        }
    }
    (by_model, untimed)
}

impl Journal {
    /// Starts a new journal at `path`, replacing any earlier one.
    pub fn create(path: &Path, config_sha256: &str) -> Result<Self> {
        let f = File::create(path).map_err(|e| Error::io(path, e))?;
        let mut j = Self {
            path: path.to_path_buf(),
            w: BufWriter::new(f),
            done: HashMap::new(),
            models: HashMap::new(),
            earlier: HashMap::new(),
            earlier_untimed: false,
        };
        j.append(&json!({"kind": KIND, "config_sha256": config_sha256}))?;
        j.append(&json!({"session_start": now_unix()}))?;
        Ok(j)
    }

    /// Opens the journal of an interrupted run to continue it. Refuses a journal written for
    /// another configuration; a last line cut short by the interruption is dropped.
    pub fn resume(path: &Path, config_sha256: &str) -> Result<Self> {
        let (parsed, file) = bakeoff_record::fsio::reopen_jsonl(path).map_err(|e| {
            if e.kind() == std::io::ErrorKind::InvalidData {
                Error::format(path, e.to_string())
            } else {
                Error::io(
                    path,
                    std::io::Error::new(e.kind(), format!("cannot resume: {e}")),
                )
            }
        })?;
        let head = parsed
            .first()
            .ok_or_else(|| Error::format(path, "empty; nothing to resume"))?;
        if head.get("kind").and_then(Value::as_str) != Some(KIND) {
            return Err(Error::format(path, "not an eval items journal"));
        }
        let recorded = head
            .get("config_sha256")
            .and_then(Value::as_str)
            .unwrap_or("");
        if recorded != config_sha256 {
            return Err(Error::InvalidArgument(format!(
                "--resume: {} was written by a run with another configuration (config hash {recorded}, this run {config_sha256}); use the same models and flags, or drop --resume to start over",
                path.display()
            )));
        }
        let (mut done, mut models) = (HashMap::new(), HashMap::new());
        for v in &parsed[1..] {
            let field = |k: &str| v.get(k).and_then(Value::as_str).map(str::to_string);
            if let (Some(m), Some(k), Some(r)) =
                (field("model_sha256"), field("key"), v.get("response"))
            {
                done.insert((m, k), r.clone());
            } else if let (Some(label), Some(m)) = (field("model"), field("model_sha256")) {
                models.insert(label, m);
            }
        }
        let (earlier, earlier_untimed) = earlier_seconds(&parsed[1..]);
        let mut j = Self {
            path: path.to_path_buf(),
            w: BufWriter::new(file),
            done,
            models,
            earlier,
            earlier_untimed,
        };
        j.append(&json!({"session_start": now_unix()}))?;
        Ok(j)
    }

    /// Seconds the interrupted runs before this one spent on all models, or `None` when their
    /// lines carry no timestamps (a journal of an older build) and the time is unknown.
    pub fn earlier_seconds(&self) -> Option<f64> {
        (!self.earlier_untimed).then(|| self.earlier.values().sum())
    }

    /// Seconds the interrupted runs before this one spent on the model hashing to `model_sha256`.
    pub fn earlier_seconds_of(&self, model_sha256: &str) -> f64 {
        self.earlier.get(model_sha256).copied().unwrap_or(0.0)
    }

    /// Declares that `label` is evaluated with files hashing to `model_sha256`. A resumed run
    /// whose model files changed since the interrupted one is refused: its recorded responses
    /// would silently describe another model.
    pub fn begin_model(&mut self, label: &str, model_sha256: &str) -> Result<()> {
        match self.models.get(label) {
            Some(m) if m == model_sha256 => Ok(()),
            Some(m) => Err(Error::InvalidArgument(format!(
                "--resume: the files of model `{label}` changed since the interrupted run (hash {m}, now {model_sha256}); drop --resume to start over"
            ))),
            None => {
                self.append(
                    &json!({"model": label, "model_sha256": model_sha256, "t": now_unix()}),
                )?;
                self.models.insert(label.into(), model_sha256.into());
                Ok(())
            }
        }
    }

    /// Responses recorded so far (all models).
    pub fn len(&self) -> usize {
        self.done.len()
    }

    pub fn is_empty(&self) -> bool {
        self.done.is_empty()
    }

    fn append(&mut self, v: &Value) -> Result<()> {
        serde_json::to_writer(&mut self.w, v)?;
        self.w
            .write_all(b"\n")
            .and_then(|()| self.w.flush())
            .map_err(|e| Error::io(&self.path, e))
    }

    fn get<T: DeserializeOwned>(&self, model: &str, key: &str) -> Option<T> {
        self.done
            .get(&(model.to_string(), key.to_string()))
            .and_then(|v| serde_json::from_value(v.clone()).ok())
    }

    fn put<T: Serialize>(&mut self, model: &str, key: &str, op: &str, response: &T) -> Result<()> {
        let response = serde_json::to_value(response)?;
        self.append(&json!({
            "model_sha256": model, "key": key, "op": op, "response": response, "t": now_unix()
        }))?;
        self.done
            .insert((model.to_string(), key.to_string()), response);
        Ok(())
    }
}

/// A candidate whose responses go through a [`Journal`]. `model_sha256` names the model's
/// files, so a journal entry never answers for a different model under the same label.
pub struct Journaled<'a> {
    pub inner: &'a mut dyn Candidate,
    pub journal: &'a mut Journal,
    pub model_sha256: String,
    /// Responses answered from the journal (reported to the user).
    pub replayed: usize,
}

fn key(v: &Value) -> String {
    sha256_hex(v.to_string().as_bytes())
}

fn chat_key(messages: &[Message], prefix: &str, max_tokens: usize, stop: &[String]) -> String {
    key(&json!(["chat", messages, prefix, max_tokens, stop]))
}

impl Journaled<'_> {
    fn recorded<T: DeserializeOwned>(&mut self, key: &str) -> Option<T> {
        let r = self.journal.get(&self.model_sha256, key);
        if r.is_some() {
            self.replayed += 1;
        }
        r
    }
}

impl Candidate for Journaled<'_> {
    fn label(&self) -> &str {
        self.inner.label()
    }

    fn loglikelihoods(&mut self, context: &str, continuations: &[String]) -> Result<Vec<LogLik>> {
        let k = key(&json!(["loglik", context, continuations]));
        if let Some(r) = self.recorded(&k) {
            return Ok(r);
        }
        let r = self.inner.loglikelihoods(context, continuations)?;
        self.journal.put(&self.model_sha256, &k, "loglik", &r)?;
        Ok(r)
    }

    fn chat(
        &mut self,
        messages: &[Message],
        assistant_prefix: &str,
        max_tokens: usize,
        stop: &[String],
    ) -> Result<GenOut> {
        let k = chat_key(messages, assistant_prefix, max_tokens, stop);
        if let Some(r) = self.recorded(&k) {
            return Ok(r);
        }
        let r = self
            .inner
            .chat(messages, assistant_prefix, max_tokens, stop)?;
        self.journal.put(&self.model_sha256, &k, "chat", &r)?;
        Ok(r)
    }

    /// Recorded requests are answered from the journal; the rest still go to the model as one
    /// batch.
    fn chat_batch(&mut self, requests: &[ChatRequest]) -> Result<Vec<GenOut>> {
        let keys: Vec<String> = requests
            .iter()
            .map(|r| chat_key(&r.messages, &r.assistant_prefix, r.max_tokens, &r.stop))
            .collect();
        let mut outs: Vec<Option<GenOut>> = keys.iter().map(|k| self.recorded(k)).collect();
        let missing: Vec<usize> = (0..requests.len()).filter(|&i| outs[i].is_none()).collect();
        if !missing.is_empty() {
            let todo: Vec<ChatRequest> = missing.iter().map(|&i| requests[i].clone()).collect();
            let got = self.inner.chat_batch(&todo)?;
            if got.len() != todo.len() {
                return Err(Error::InvalidArgument(format!(
                    "{}: a batch of {} requests returned {} outputs",
                    self.inner.label(),
                    todo.len(),
                    got.len()
                )));
            }
            for (&i, g) in missing.iter().zip(got) {
                self.journal.put(&self.model_sha256, &keys[i], "chat", &g)?;
                outs[i] = Some(g);
            }
        }
        Ok(outs.into_iter().flatten().collect())
    }

    fn rolling_nll(&mut self, text: &str, context: usize, max_chunks: usize) -> Result<NllOut> {
        let k = key(&json!([
            "nll",
            sha256_hex(text.as_bytes()),
            context,
            max_chunks
        ]));
        if let Some(r) = self.recorded(&k) {
            return Ok(r);
        }
        let r = self.inner.rolling_nll(text, context, max_chunks)?;
        self.journal.put(&self.model_sha256, &k, "nll", &r)?;
        Ok(r)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Two runs, the second resumed: each line's time since the line before it in its run is
    /// charged to its model; the gap between the runs is not.
    #[test]
    fn a_resumed_journal_knows_the_time_of_the_runs_before_it() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("items.jsonl");
        let lines = [
            json!({"kind": KIND, "config_sha256": "cfg"}),
            json!({"session_start": 1000.0}),
            json!({"model": "a", "model_sha256": "A", "t": 1010.0}),
            json!({"model_sha256": "A", "key": "k1", "op": "nll", "response": 1, "t": 1030.0}),
            json!({"model": "b", "model_sha256": "B", "t": 1040.0}),
            json!({"model_sha256": "B", "key": "k2", "op": "nll", "response": 2, "t": 1100.0}),
            json!({"session_start": 5000.0}),
            json!({"model_sha256": "B", "key": "k3", "op": "nll", "response": 3, "t": 5007.0}),
        ];
        let text: String = lines.iter().map(|l| format!("{l}\n")).collect();
        std::fs::write(&p, text).unwrap();
        let j = Journal::resume(&p, "cfg").unwrap();
        assert_eq!(j.earlier_seconds_of("A"), 30.0);
        assert_eq!(j.earlier_seconds_of("B"), 77.0);
        assert_eq!(j.earlier_seconds(), Some(107.0));
        drop(j);
        // The resumed run marked its own start, so a third run charges it nothing twice.
        let last = std::fs::read_to_string(&p).unwrap();
        assert!(last.lines().last().unwrap().contains("session_start"));
        // A journal of an older build, without timestamps: the earlier time is unknown.
        let old = [
            json!({"kind": KIND, "config_sha256": "cfg"}),
            json!({"model": "a", "model_sha256": "A"}),
            json!({"model_sha256": "A", "key": "k1", "op": "nll", "response": 1}),
        ];
        let text: String = old.iter().map(|l| format!("{l}\n")).collect();
        std::fs::write(&p, text).unwrap();
        assert_eq!(Journal::resume(&p, "cfg").unwrap().earlier_seconds(), None);
    }

    /// Counts the calls that reach the model.
    struct Counting {
        calls: usize,
    }

    impl Candidate for Counting {
        fn label(&self) -> &str {
            "counting"
        }
        fn loglikelihoods(&mut self, context: &str, conts: &[String]) -> Result<Vec<LogLik>> {
            self.calls += 1;
            Ok(conts
                .iter()
                .map(|c| LogLik {
                    logprob: -((context.len() + c.len()) as f64),
                    tokens: c.len(),
                    greedy: false,
                })
                .collect())
        }
        fn chat(&mut self, m: &[Message], p: &str, n: usize, _: &[String]) -> Result<GenOut> {
            self.calls += 1;
            Ok(GenOut {
                prompt: format!("{}{p}", m[0].content),
                text: format!("answer to {}", m[0].content),
                tokens: n.min(3),
                ids: vec![7; n.min(3)],
                finish: "stop".into(),
                seconds: 0.5,
            })
        }
        fn rolling_nll(&mut self, text: &str, context: usize, _: usize) -> Result<NllOut> {
            self.calls += 1;
            Ok(NllOut {
                nll_nats: text.len() as f64,
                tokens: text.len(),
                bytes: text.len(),
                chunks: 1,
                context,
            })
        }
    }

    fn req(q: &str) -> ChatRequest {
        ChatRequest {
            messages: vec![Message::user(q.to_string())],
            assistant_prefix: String::new(),
            max_tokens: 8,
            stop: vec![],
        }
    }

    fn session(j: &mut Journal, model: &str) -> (Vec<LogLik>, Vec<GenOut>, NllOut, usize, usize) {
        let mut c = Counting { calls: 0 };
        let mut w = Journaled {
            inner: &mut c,
            journal: j,
            model_sha256: model.into(),
            replayed: 0,
        };
        let ll = w
            .loglikelihoods("ctx", &[" A".into(), " B".into()])
            .unwrap();
        let g = w
            .chat_batch(&[req("one"), req("two"), req("three")])
            .unwrap();
        let n = w.rolling_nll("some text", 16, 4).unwrap();
        let replayed = w.replayed;
        (ll, g, n, replayed, c.calls)
    }

    #[test]
    fn a_resumed_journal_answers_recorded_requests_without_the_model() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("items.jsonl");
        let mut j = Journal::create(&p, "cfg").unwrap();
        let first = session(&mut j, "m1");
        // One log-likelihood call, three chats (the default batch answers one by one), one NLL.
        assert_eq!((first.3, first.4), (0, 5));
        drop(j);

        let mut j = Journal::resume(&p, "cfg").unwrap();
        assert_eq!(j.len(), 5);
        let again = session(&mut j, "m1");
        assert_eq!((again.3, again.4), (5, 0));
        assert_eq!(
            (&first.0, &first.1, &first.2),
            (&again.0, &again.1, &again.2)
        );

        // Another model's file never reuses these responses.
        let other = session(&mut j, "m2");
        assert_eq!((other.3, other.4), (0, 5));
    }

    #[test]
    fn an_interrupted_journal_keeps_its_complete_lines() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("items.jsonl");
        let mut j = Journal::create(&p, "cfg").unwrap();
        session(&mut j, "m1");
        drop(j);
        // Cut the last record in half, as a kill mid-write would.
        let text = std::fs::read_to_string(&p).unwrap();
        let cut = text.trim_end().rfind('\n').unwrap() + 20;
        std::fs::write(&p, &text[..cut]).unwrap();

        let mut j = Journal::resume(&p, "cfg").unwrap();
        assert_eq!(j.len(), 4);
        let (_, _, _, replayed, calls) = session(&mut j, "m1");
        assert_eq!((replayed, calls), (4, 1));
        drop(j);
        // The rewritten journal reads back whole.
        assert_eq!(Journal::resume(&p, "cfg").unwrap().len(), 5);
    }

    #[test]
    fn a_model_whose_files_changed_is_refused_on_resume() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("items.jsonl");
        let mut j = Journal::create(&p, "cfg").unwrap();
        j.begin_model("tiny", "hash-1").unwrap();
        session(&mut j, "hash-1");
        drop(j);
        let mut j = Journal::resume(&p, "cfg").unwrap();
        j.begin_model("tiny", "hash-1").unwrap();
        let err = j.begin_model("tiny", "hash-2").unwrap_err().to_string();
        assert!(err.contains("files of model `tiny` changed"), "{err}");
        j.begin_model("other", "hash-2").unwrap();
    }

    #[test]
    fn a_journal_of_another_configuration_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("items.jsonl");
        drop(Journal::create(&p, "cfg-a").unwrap());
        let err = Journal::resume(&p, "cfg-b").err().unwrap().to_string();
        assert!(err.contains("another configuration"), "{err}");
        let err = Journal::resume(&dir.path().join("absent.jsonl"), "cfg-a")
            .err()
            .unwrap()
            .to_string();
        assert!(err.contains("cannot resume"), "{err}");
    }
}
