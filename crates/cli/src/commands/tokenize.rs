use anyhow::{Context, Result};
use clap::Args;

use crate::args::{ModelArgs, read_stdin};

#[derive(Args, Debug)]
pub struct TokenizeArgs {
    #[command(flatten)]
    pub model: ModelArgs,
    /// Text to tokenize (stdin when absent). With --decode: a JSON array of ids.
    #[arg(long)]
    pub text: Option<String>,
    /// Add the BOS/EOS tokens the tokenizer would add.
    #[arg(long)]
    pub add_special: bool,
    /// Decode a JSON array of ids back to text.
    #[arg(long)]
    pub decode: bool,
}

pub fn run(a: TokenizeArgs) -> Result<()> {
    let input = match &a.text {
        Some(t) => t.clone(),
        None => read_stdin()?,
    };
    // The tokenizer alone: the weights are neither read nor mapped in.
    let tokenizer =
        bakeoff_engine::loader::load_tokenizer(&a.model.model, a.model.gguf_file.as_deref())
            .with_context(|| format!("cannot load the tokenizer of `{}`", a.model.model))?;
    if a.decode {
        let ids: Vec<u32> = serde_json::from_str(input.trim())
            .context("--decode expects a JSON array of token ids")?;
        let vocab = tokenizer.vocab_size() as u32;
        if let Some(bad) = ids.iter().find(|&&i| i >= vocab) {
            anyhow::bail!("token id {bad} is outside the vocabulary of {vocab} tokens");
        }
        print!("{}", tokenizer.decode(&ids, false)?);
        return Ok(());
    }
    let ids = tokenizer.encode(&input, a.add_special)?;
    println!("{}", serde_json::to_string(&ids)?);
    Ok(())
}
