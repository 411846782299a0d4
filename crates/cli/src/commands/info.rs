use anyhow::Result;
use bakeoff_engine::models::RopeScaling;
use clap::Args;

use crate::args::{ModelArgs, gib};

#[derive(Args, Debug)]
pub struct InfoArgs {
    #[command(flatten)]
    pub model: ModelArgs,
    /// Print JSON instead of text.
    #[arg(long)]
    pub json: bool,
}

pub fn run(a: InfoArgs) -> Result<()> {
    let lm = a.model.load(false)?;
    let i = &lm.info;
    let t = &lm.prompter.tokenizer();
    if a.json {
        let mut v = serde_json::to_value(i)?;
        v["tokenizer"] = serde_json::json!({
            "kind": t.kind(),
            "description": t.kind().map(|k| k.describe()),
            "vocab_size": t.vocab_size(),
            "add_bos": t.adds_bos(),
            "add_eos": t.adds_eos(),
            "bos_id": t.bos_id(),
            "eos_ids": t.eos_ids(),
        });
        println!("{}", serde_json::to_string_pretty(&v)?);
        return Ok(());
    }
    let c = &i.config;
    println!("model         {}", i.source);
    println!("path          {}", i.path.display());
    println!("format        {:?}", i.format);
    println!(
        "architecture  {} ({} layers, hidden {}, {} heads / {} kv heads, head dim {}, ffn {})",
        i.arch.name(),
        c.n_layers,
        c.hidden_size,
        c.n_heads,
        c.n_kv_heads,
        c.head_dim,
        c.intermediate_size
    );
    println!(
        "parameters    {} ({:.3} B, counted from the tensors)",
        i.parameters,
        i.parameters as f64 / 1e9
    );
    println!("weights       {}", i.weight_dtype);
    for w in &i.weight_types {
        println!(
            "  {:<11} {:>4} tensors  {:>12} bytes ({})",
            w.dtype,
            w.tensors,
            w.bytes,
            gib(w.bytes)
        );
    }
    println!(
        "file size     {} ({} bytes)",
        gib(i.file_bytes),
        i.file_bytes
    );
    println!("context       {}", c.max_context);
    println!(
        "vocabulary    {} (tokenizer: {})",
        c.vocab_size,
        lm.prompter.tokenizer().vocab_size()
    );
    let scaling = match &c.rope_scaling {
        RopeScaling::None => "no scaling".to_string(),
        RopeScaling::Linear { factor } => format!("linear scaling ×{factor}"),
        RopeScaling::Llama3 {
            factor,
            original_max_position_embeddings,
            ..
        } => format!("llama3 scaling ×{factor} from {original_max_position_embeddings}"),
        RopeScaling::Factors { factors } => {
            format!("{} per-frequency factors (rope_freqs)", factors.len())
        }
    };
    println!(
        "tokenizer     {}; BOS {}, EOS {}",
        t.kind()
            .map(|k| k.describe())
            .unwrap_or_else(|| "not a SentencePiece or byte-level BPE tokenizer".into()),
        if t.adds_bos() { "added" } else { "not added" },
        if t.adds_eos() { "added" } else { "not added" },
    );
    println!(
        "rope          theta {} ({:?}, {scaling}), rms eps {}",
        c.rope_theta, c.rope_style, c.rms_eps
    );
    println!(
        "bias / tied   qkv bias {}, tied embeddings {}",
        c.qkv_bias, c.tied_embeddings
    );
    let eos: Vec<String> = i
        .eos_token_ids
        .iter()
        .map(|&id| {
            format!(
                "{id} {}",
                lm.prompter.tokenizer().id_to_token(id).unwrap_or_default()
            )
        })
        .collect();
    println!("eos ids       {}", eos.join(", "));
    println!("device        {}", i.device);
    println!("load time     {:.3} s", i.load_s);
    match &i.chat_template {
        Some(t) => println!("chat template\n{t}"),
        None => println!("chat template none"),
    }
    Ok(())
}
