//! Model providers (one module each), the tokenizer, the default price table, and the models
//! configured from the environment.
//!
//! Provider keys are read from the environment here and kept inside the provider: they are
//! never sent to the browser and never logged (`Debug` of a provider shows no key).

pub mod anthropic;
pub mod bedrock;
pub mod demo;
pub mod eventstream;
pub mod openai;
pub mod prices;
pub mod sigv4;

use std::sync::{Arc, OnceLock};
use std::time::Duration;

use app::ports::{ProviderError, ProviderEvent, Tokenizer};
use app::service::Models;
use domain::{ModelName, PriceConfig, PriceTable};

/// Events decoded from a provider's stream, waiting to be handed out.
pub(crate) type Events = std::collections::VecDeque<Result<ProviderEvent, ProviderError>>;

/// A provider's stream format (server-sent events, AWS event-stream frames…).
pub(crate) trait StreamDecoder: Send + 'static {
    /// What a stream that ends before it is complete lacked, for the error.
    const CUT: &'static str;
    /// Adds the events found in `chunk` to `out`; true once the answer is complete (or has
    /// failed: the error is then the last event).
    fn decode(&mut self, chunk: &[u8], out: &mut Events) -> bool;
}

/// A provider's answer as events: chunks go through `decoder` until it says the answer is
/// complete. A body that ends sooner, or breaks, ends in an error after what arrived.
pub(crate) fn decode_stream<S, B, D>(
    bytes: S,
    decoder: D,
) -> impl futures::Stream<Item = Result<ProviderEvent, ProviderError>> + Send + 'static
where
    S: futures::Stream<Item = Result<B, ProviderError>> + Send + Unpin + 'static,
    B: AsRef<[u8]>,
    D: StreamDecoder,
{
    use futures::StreamExt;
    let state = (bytes, decoder, Events::new(), false);
    futures::stream::unfold(
        state,
        |(mut bytes, mut decoder, mut queue, mut done)| async move {
            loop {
                if let Some(event) = queue.pop_front() {
                    return Some((event, (bytes, decoder, queue, done)));
                }
                if done {
                    return None;
                }
                match bytes.next().await {
                    None => {
                        done = true;
                        queue.push_back(Err(ProviderError::BadResponse(format!(
                            "the stream ended before {}",
                            D::CUT
                        ))));
                    }
                    Some(Err(e)) => {
                        done = true;
                        queue.push_back(Err(e));
                    }
                    Some(Ok(chunk)) => done = decoder.decode(chunk.as_ref(), &mut queue),
                }
            }
        },
    )
}

/// A provider's base URL without its trailing slash, refused unless it is http(s).
pub(crate) fn base_url(what: &str, raw: &str) -> Result<String, String> {
    let url = raw.trim_end_matches('/').to_owned();
    if url.starts_with("http://") || url.starts_with("https://") {
        Ok(url)
    } else {
        Err(format!(
            "{what} must start with http:// or https://, got {url:?}"
        ))
    }
}

/// The HTTP client providers share the settings of: 10 s to connect, and `idle_timeout` as the
/// longest silence (before the answer, or between two pieces of a stream).
pub(crate) fn http_client(idle_timeout: Duration) -> Result<reqwest::Client, String> {
    reqwest::Client::builder()
        .connect_timeout(Duration::from_secs(10))
        .read_timeout(idle_timeout)
        .build()
        .map_err(|e| format!("HTTP client: {e}"))
}

/// OpenAI's o200k_base byte-pair encoding (GPT-4o and later), bundled in the binary.
pub struct BpeTokenizer {
    bpe: &'static tiktoken_rs::CoreBPE,
}

impl BpeTokenizer {
    /// The encoding is parsed once per process (about a tenth of a second) and shared.
    pub fn shared() -> Arc<Self> {
        static BPE: OnceLock<tiktoken_rs::CoreBPE> = OnceLock::new();
        let bpe = BPE
            .get_or_init(|| tiktoken_rs::o200k_base().expect("the bundled o200k encoding loads"));
        Arc::new(Self { bpe })
    }

    pub fn encode(&self, text: &str) -> Vec<u32> {
        self.bpe.encode_ordinary(text)
    }

    /// The text of some tokens; `None` when they end inside a character.
    pub fn decode(&self, tokens: &[u32]) -> Option<String> {
        self.bpe.decode(tokens).ok()
    }
}

impl Tokenizer for BpeTokenizer {
    fn count(&self, text: &str) -> u64 {
        self.bpe.encode_ordinary(text).len() as u64
    }
}

/// Which models to offer, from the environment:
///
/// - the demo model, always (`tokenmeter-demo`; `TOKENMETER_DEMO_TOKEN_DELAY_MS`, default 15,
///   paces its stream);
/// - OpenAI-compatible models when `OPENAI_API_KEY` or `TOKENMETER_OPENAI_BASE_URL` is set:
///   `TOKENMETER_OPENAI_MODELS` (comma-separated, default `gpt-4o-mini`), base URL default
///   `https://api.openai.com/v1`;
/// - Anthropic models when `ANTHROPIC_API_KEY` is set: `TOKENMETER_ANTHROPIC_MODELS` (default
///   `claude-sonnet-4-5`), base URL `TOKENMETER_ANTHROPIC_BASE_URL` (default
///   `https://api.anthropic.com`);
/// - AWS Bedrock models when `TOKENMETER_BEDROCK_MODELS` is set (e.g.
///   `us.anthropic.claude-sonnet-4-5-20250929-v1:0`), signed with `AWS_ACCESS_KEY_ID`,
///   `AWS_SECRET_ACCESS_KEY` (and `AWS_SESSION_TOKEN`) in `AWS_REGION` (default `us-east-1`);
///   `TOKENMETER_BEDROCK_ENDPOINT` overrides the endpoint;
/// - `TOKENMETER_DEFAULT_MODEL` picks the default (otherwise the demo);
/// - `TOKENMETER_PRICES_FILE`: a JSON array of prices that override or extend the defaults
///   (`[{"model": "gpt-4o", "effectiveFrom": "2025-01-01T00:00:00Z", "input": "2.5",
///   "output": "10", "cacheRead": "1.25"}]`, dollars per million tokens as text);
/// - `TOKENMETER_PROVIDER_TIMEOUT_SECS` (default 120): the longest a provider may stay silent.
pub fn models_from_env() -> Result<Models, String> {
    let env = |name: &str| std::env::var(name).ok().filter(|v| !v.trim().is_empty());
    let tokenizer = BpeTokenizer::shared();
    let delay = env("TOKENMETER_DEMO_TOKEN_DELAY_MS")
        .map(|v| v.parse::<u64>().map_err(|_| format!("TOKENMETER_DEMO_TOKEN_DELAY_MS must be a whole number of milliseconds, got {v:?}")))
        .transpose()?
        .unwrap_or(15);
    let mut entries = vec![demo::entry(tokenizer.clone(), Duration::from_millis(delay))];

    let timeout = env("TOKENMETER_PROVIDER_TIMEOUT_SECS")
        .map(|v| {
            v.parse::<u64>().map_err(|_| {
                format!(
                    "TOKENMETER_PROVIDER_TIMEOUT_SECS must be a whole number of seconds, got {v:?}"
                )
            })
        })
        .transpose()?
        .unwrap_or(120);
    let openai_key = env("OPENAI_API_KEY");
    let openai_url = env("TOKENMETER_OPENAI_BASE_URL");
    if openai_key.is_some() || openai_url.is_some() {
        let provider = Arc::new(openai::OpenAiProvider::new(
            openai_url.unwrap_or_else(|| "https://api.openai.com/v1".to_owned()),
            openai_key,
            Duration::from_secs(timeout),
        )?);
        let names = env("TOKENMETER_OPENAI_MODELS").unwrap_or_else(|| "gpt-4o-mini".to_owned());
        for name in names.split(',').map(str::trim).filter(|n| !n.is_empty()) {
            let model = ModelName::parse(name)
                .map_err(|e| format!("TOKENMETER_OPENAI_MODELS: {}", e.message))?;
            entries.push(openai::entry(model, provider.clone()));
        }
    }

    if let Some(key) = env("ANTHROPIC_API_KEY") {
        let provider = Arc::new(anthropic::AnthropicProvider::new(
            env("TOKENMETER_ANTHROPIC_BASE_URL")
                .unwrap_or_else(|| "https://api.anthropic.com".to_owned()),
            key,
            Duration::from_secs(timeout),
        )?);
        let names =
            env("TOKENMETER_ANTHROPIC_MODELS").unwrap_or_else(|| "claude-sonnet-4-5".to_owned());
        for name in names.split(',').map(str::trim).filter(|n| !n.is_empty()) {
            let model = ModelName::parse(name)
                .map_err(|e| format!("TOKENMETER_ANTHROPIC_MODELS: {}", e.message))?;
            entries.push(anthropic::entry(model, provider.clone()));
        }
    }

    if let Some(names) = env("TOKENMETER_BEDROCK_MODELS") {
        let credentials = sigv4::Credentials {
            access_key_id: env("AWS_ACCESS_KEY_ID")
                .ok_or("TOKENMETER_BEDROCK_MODELS is set but AWS_ACCESS_KEY_ID is not")?,
            secret_access_key: env("AWS_SECRET_ACCESS_KEY")
                .ok_or("TOKENMETER_BEDROCK_MODELS is set but AWS_SECRET_ACCESS_KEY is not")?,
            session_token: env("AWS_SESSION_TOKEN"),
        };
        let region = env("AWS_REGION")
            .or_else(|| env("AWS_DEFAULT_REGION"))
            .unwrap_or_else(|| "us-east-1".to_owned());
        let provider = Arc::new(bedrock::BedrockProvider::new(
            region,
            env("TOKENMETER_BEDROCK_ENDPOINT"),
            credentials,
            Duration::from_secs(timeout),
        )?);
        for name in names.split(',').map(str::trim).filter(|n| !n.is_empty()) {
            let model = ModelName::parse(name)
                .map_err(|e| format!("TOKENMETER_BEDROCK_MODELS: {}", e.message))?;
            entries.push(bedrock::entry(model, provider.clone()));
        }
    }

    let default_model = env("TOKENMETER_DEFAULT_MODEL")
        .map(|m| {
            ModelName::parse(&m).map_err(|e| format!("TOKENMETER_DEFAULT_MODEL: {}", e.message))
        })
        .transpose()?;
    let mut prices = prices::defaults();
    if let Some(path) = env("TOKENMETER_PRICES_FILE") {
        prices = prices.overridden_by(read_prices(&path)?);
    }
    Ok(Models::new(entries, default_model, prices, tokenizer))
}

/// Only the demo model, with the default prices: what tests and the CLI use.
pub fn demo_models(token_delay: Duration) -> Models {
    let tokenizer = BpeTokenizer::shared();
    Models::new(
        vec![demo::entry(tokenizer.clone(), token_delay)],
        None,
        prices::defaults(),
        tokenizer,
    )
}

fn read_prices(path: &str) -> Result<Vec<domain::ModelPrice>, String> {
    let text =
        std::fs::read_to_string(path).map_err(|e| format!("TOKENMETER_PRICES_FILE {path}: {e}"))?;
    let configs: Vec<PriceConfig> =
        serde_json::from_str(&text).map_err(|e| format!("TOKENMETER_PRICES_FILE {path}: {e}"))?;
    configs
        .iter()
        .map(|c| {
            c.validate().map_err(|e| {
                format!(
                    "TOKENMETER_PRICES_FILE {path}, model {}: {}",
                    c.model, e.message
                )
            })
        })
        .collect()
}

/// The price table alone (for `GET /api/prices` and tests).
pub fn default_prices() -> PriceTable {
    prices::defaults()
}
