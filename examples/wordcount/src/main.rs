//! A WASI command module in plain Rust: reads `{"text": "..."}` (the chunk's input) from
//! standard input and prints `{"top": [[word, count], ...], "words": n}` on standard output:
//! the ten most frequent words (lowercased, ties by word) and the number of words.
//!
//! Nothing grid-specific: it is the program one would write for a terminal. Build:
//! `rustup target add wasm32-wasip1`, then
//! `cargo build --release --target wasm32-wasip1 -p example-wordcount`
//! (the module is `target/wasm32-wasip1/release/example-wordcount.wasm`). A bad input is an
//! error message on standard error and exit code 2, which fails the chunk with that message.

use std::collections::HashMap;
use std::io::Read;
use std::process::ExitCode;

fn main() -> ExitCode {
    let mut input = String::new();
    if let Err(error) = std::io::stdin().read_to_string(&mut input) {
        eprintln!("cannot read standard input: {error}");
        return ExitCode::from(2);
    }
    let text = match serde_json::from_str::<serde_json::Value>(&input) {
        Ok(serde_json::Value::Object(fields)) => match fields.get("text") {
            Some(serde_json::Value::String(text)) => text.clone(),
            _ => {
                eprintln!("expected {{\"text\": \"...\"}}");
                return ExitCode::from(2);
            }
        },
        _ => {
            eprintln!("expected a JSON object {{\"text\": \"...\"}}");
            return ExitCode::from(2);
        }
    };
    // A std HashMap: its RandomState seeds itself with `random_get`, which the grid makes
    // deterministic per chunk; the output does not depend on its order anyway (sorted below).
    let mut counts: HashMap<String, u64> = HashMap::new();
    let mut words = 0_u64;
    for word in text
        .split(|c: char| !c.is_alphanumeric() && c != '\'')
        .filter(|word| !word.is_empty())
    {
        *counts.entry(word.to_lowercase()).or_default() += 1;
        words += 1;
    }
    let mut top: Vec<(String, u64)> = counts.into_iter().collect();
    top.sort_by(|a, b| b.1.cmp(&a.1).then_with(|| a.0.cmp(&b.0)));
    top.truncate(10);
    println!("{}", serde_json::json!({"top": top, "words": words}));
    ExitCode::SUCCESS
}
