//! The built-in offline model: no network, no key. It says plainly that it is a demo, answers
//! deterministically from the prompt, streams token by token, and counts tokens with a real
//! BPE tokenizer (o200k), so its numbers behave like a real model's.

use std::sync::Arc;
use std::time::Duration;

use app::ports::{
    ModelProvider, ProviderError, ProviderEvent, ProviderRequest, ProviderStream, Tokenizer,
};
use app::service::ModelEntry;
use async_trait::async_trait;
use domain::{CallUsage, ChatMessage, FinishReason, ModelName};

use super::BpeTokenizer;

pub const MODEL: &str = "tokenmeter-demo";

pub fn entry(tokenizer: Arc<BpeTokenizer>, token_delay: Duration) -> ModelEntry {
    ModelEntry {
        model: ModelName::parse(MODEL).expect("a valid model name"),
        label: "Demo model (offline, not a real LLM)".to_owned(),
        provider: Arc::new(DemoProvider {
            tokenizer,
            token_delay,
        }),
        default_output: 256,
        max_output: 4_096,
    }
}

pub struct DemoProvider {
    tokenizer: Arc<BpeTokenizer>,
    /// Pause before each piece of a streamed reply, so streaming can be seen (and stopped).
    token_delay: Duration,
}

const SENTENCES: &[&str] = &[
    "Every token of this reply is counted by the same byte-pair tokenizer that GPT-4o uses.",
    "Before the call started, tokenmeter reserved enough tokens for your prompt and the longest possible answer.",
    "When the answer ends, the tokens actually used are recorded once and the rest of the reservation is released.",
    "If you stop the answer half-way, only what was generated is charged.",
    "The cost is computed in whole pico-dollars at the price in effect today, never with floating point.",
    "Your usage bar counts tokens already used; tokens held by calls in flight are subtracted from what remains.",
    "An administrator can raise your limit from the Limits page.",
    "Configure a real provider with OPENAI_API_KEY to talk to an actual model.",
    "Short prompts cost less: the prompt is charged as input tokens, the reply as output tokens.",
    "A call that would not fit in your remaining tokens is refused before any model is called.",
    "Streaming replies arrive piece by piece; the usage is settled when the stream ends.",
    "The same conversation sent twice costs the same: this model always answers the same way.",
];

impl DemoProvider {
    /// The whole reply the demo would give, before it is cut to the allowed length.
    fn full_reply(&self, messages: &[ChatMessage]) -> String {
        let question = messages
            .iter()
            .rev()
            .find(|m| m.role == domain::ChatRole::User)
            .map(|m| m.content.trim())
            .unwrap_or_default();
        let words = question.split_whitespace().count();
        let tokens = self.tokenizer.count(question);
        let opening: String = question.chars().take(80).collect();
        let ellipsis = if question.chars().count() > 80 {
            "…"
        } else {
            ""
        };
        let mut reply = format!(
            "[Demo model — offline, not a real LLM] You wrote {words} words ({tokens} tokens), beginning “{opening}{ellipsis}”. "
        );
        // A stable choice of sentences from the prompt, so the same prompt gets the same reply.
        let seed = question.bytes().fold(0xcbf2_9ce4_8422_2325_u64, |h, b| {
            (h ^ b as u64).wrapping_mul(0x100_0000_01b3)
        });
        for i in 0..6 {
            reply.push_str(SENTENCES[(seed as usize).wrapping_add(i * 5) % SENTENCES.len()]);
            reply.push(' ');
        }
        reply.trim_end().to_owned()
    }

    /// The reply cut to `max_output` tokens, in pieces that each decode to whole characters,
    /// with the number of tokens in each.
    fn pieces(&self, text: &str, max_output: u64) -> (Vec<(String, u64)>, bool) {
        let tokens = self.tokenizer.encode(text);
        let cut = tokens.len() as u64 > max_output;
        let tokens = &tokens[..tokens.len().min(max_output as usize)];
        let mut pieces = Vec::new();
        let mut start = 0;
        for end in 1..=tokens.len() {
            if let Some(piece) = self.tokenizer.decode(&tokens[start..end]) {
                pieces.push((piece, (end - start) as u64));
                start = end;
            }
        }
        (pieces, cut)
    }
}

#[async_trait]
impl ModelProvider for DemoProvider {
    fn name(&self) -> &str {
        "demo"
    }

    fn counts_exactly(&self) -> bool {
        true
    }

    async fn start(&self, request: ProviderRequest) -> Result<ProviderStream, ProviderError> {
        let input = self.tokenizer.count_conversation(&request.messages);
        let (pieces, cut) = self.pieces(&self.full_reply(&request.messages), request.max_output);
        let output: u64 = pieces.iter().map(|(_, n)| n).sum();
        let mut events: Vec<ProviderEvent> = if request.stream {
            pieces
                .into_iter()
                .map(|(text, _)| ProviderEvent::Text(text))
                .collect()
        } else {
            vec![ProviderEvent::Text(
                pieces.into_iter().map(|(t, _)| t).collect(),
            )]
        };
        events.push(ProviderEvent::Usage(CallUsage {
            input_tokens: input,
            output_tokens: output,
            ..CallUsage::default()
        }));
        events.push(ProviderEvent::Finished(if cut {
            FinishReason::Length
        } else {
            FinishReason::Stop
        }));
        let delay = self.token_delay;
        let stream = futures::stream::unfold(events.into_iter(), move |mut rest| async move {
            let event = rest.next()?;
            if matches!(event, ProviderEvent::Text(_)) && !delay.is_zero() {
                tokio::time::sleep(delay).await;
            }
            Some((Ok(event), rest))
        });
        Ok(Box::pin(stream))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use futures::StreamExt;

    fn demo() -> DemoProvider {
        DemoProvider {
            tokenizer: BpeTokenizer::shared(),
            token_delay: Duration::ZERO,
        }
    }

    fn ask(prompt: &str, max_output: u64, stream: bool) -> ProviderRequest {
        ProviderRequest {
            model: ModelName::parse(MODEL).unwrap(),
            messages: vec![ChatMessage {
                role: domain::ChatRole::User,
                content: prompt.to_owned(),
            }],
            max_output,
            stream,
        }
    }

    async fn run(request: ProviderRequest) -> (String, CallUsage, FinishReason) {
        let events: Vec<_> = demo().start(request).await.unwrap().collect().await;
        let mut text = String::new();
        let mut usage = None;
        let mut finish = None;
        for event in events {
            match event.unwrap() {
                ProviderEvent::Text(t) => text.push_str(&t),
                ProviderEvent::Usage(u) => usage = Some(u),
                ProviderEvent::Finished(f) => finish = Some(f),
            }
        }
        (text, usage.unwrap(), finish.unwrap())
    }

    #[tokio::test]
    async fn the_demo_counts_what_it_writes_and_stops_at_the_maximum() {
        let tokenizer = BpeTokenizer::shared();
        let (text, usage, finish) = run(ask("Hello there, how much is left?", 4_096, true)).await;
        assert!(text.starts_with("[Demo model"));
        assert_eq!(finish, FinishReason::Stop);
        assert_eq!(usage.output_tokens, tokenizer.count(&text));
        assert_eq!(
            usage.input_tokens,
            tokenizer.count_conversation(&ask("Hello there, how much is left?", 1, true).messages)
        );

        let (short, usage, finish) = run(ask("Hello there, how much is left?", 7, false)).await;
        assert_eq!(finish, FinishReason::Length);
        assert_eq!(usage.output_tokens, 7);
        assert!(text.starts_with(&short));
    }

    #[tokio::test]
    async fn the_same_prompt_gets_the_same_reply_and_others_differ() {
        let a = run(ask("What is a token?", 500, true)).await.0;
        let b = run(ask("What is a token?", 500, false)).await.0;
        let c = run(ask("Explain budgets", 500, true)).await.0;
        assert_eq!(a, b);
        assert_ne!(a, c);
    }

    #[tokio::test]
    async fn multi_byte_text_is_never_split_inside_a_character() {
        let (text, usage, _) = run(ask("日本語のテキスト 🎉 émoji", 4_096, true)).await;
        assert!(text.contains("日本語"));
        assert!(usage.output_tokens > 0);
    }
}
