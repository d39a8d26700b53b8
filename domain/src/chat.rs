//! Model calls: the conversation sent to a model, the rules for a call request, and how a call's
//! tokens are planned so that it fits in what a user has left.

use serde::{Deserialize, Serialize};

use crate::{ModelName, UsageContext, UserId, ValidationError};

/// Who wrote a message of a conversation.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ChatRole {
    System,
    User,
    Assistant,
}

impl ChatRole {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::System => "system",
            Self::User => "user",
            Self::Assistant => "assistant",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ChatMessage {
    pub role: ChatRole,
    pub content: String,
}

/// Most messages in one call.
pub const MAX_MESSAGES: usize = 200;
/// Most characters in all messages of one call together.
pub const MAX_PROMPT_CHARS: usize = 200_000;
/// Most output tokens one call may ask for.
pub const MAX_OUTPUT_TOKENS: u64 = 100_000;

/// A validated conversation: 1–200 messages, at least one user message with text, at most
/// 200,000 characters in all.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Conversation(Vec<ChatMessage>);

impl Conversation {
    pub fn new(messages: Vec<ChatMessage>) -> Result<Self, ValidationError> {
        if messages.is_empty() {
            return Err(ValidationError::new(
                "messages",
                "empty_prompt",
                "Write a prompt: the conversation has no messages.",
            ));
        }
        if messages.len() > MAX_MESSAGES {
            return Err(ValidationError::new(
                "messages",
                "too_many_messages",
                format!(
                    "A call may carry at most {MAX_MESSAGES} messages; got {}.",
                    messages.len()
                ),
            ));
        }
        let chars: usize = messages.iter().map(|m| m.content.chars().count()).sum();
        if chars > MAX_PROMPT_CHARS {
            return Err(ValidationError::new(
                "messages",
                "prompt_too_long",
                format!(
                    "The prompt is too long: {chars} characters, at most {MAX_PROMPT_CHARS} are allowed."
                ),
            ));
        }
        let asks_something = messages
            .iter()
            .any(|m| m.role == ChatRole::User && !m.content.trim().is_empty());
        if !asks_something {
            return Err(ValidationError::new(
                "prompt",
                "empty_prompt",
                "Write a prompt: there is no user message with text.",
            ));
        }
        Ok(Self(messages))
    }

    /// One user message.
    pub fn from_prompt(prompt: &str) -> Result<Self, ValidationError> {
        Self::new(vec![ChatMessage {
            role: ChatRole::User,
            content: prompt.to_owned(),
        }])
        .map_err(|mut e| {
            e.field = "prompt".to_owned();
            e
        })
    }

    pub fn messages(&self) -> &[ChatMessage] {
        &self.0
    }

    /// The last user message: what the conversation asks now.
    pub fn last_question(&self) -> &str {
        self.0
            .iter()
            .rev()
            .find(|m| m.role == ChatRole::User && !m.content.trim().is_empty())
            .map(|m| m.content.as_str())
            .unwrap_or_default()
    }
}

/// `POST /api/invoke`: `prompt` or `messages` (not both).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct InvokeBody {
    /// Whose budget pays; the caller's own when absent (admins may name anyone).
    #[serde(default)]
    pub user_id: Option<String>,
    #[serde(default)]
    pub prompt: Option<String>,
    #[serde(default)]
    pub messages: Option<Vec<ChatMessage>>,
    #[serde(default)]
    pub model: Option<String>,
    #[serde(default)]
    pub max_tokens: Option<i64>,
    #[serde(default)]
    pub stream: Option<bool>,
    /// Group the call's usage under a conversation, an agent and a prompt of the caller's.
    #[serde(default)]
    pub conversation_id: Option<String>,
    #[serde(default)]
    pub agent_id: Option<String>,
    #[serde(default)]
    pub prompt_id: Option<String>,
}

/// A model call as validated: who pays, what is asked, of which model, how long the answer may be.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InvokeRequest {
    pub user_id: Option<UserId>,
    pub conversation: Conversation,
    pub model: Option<ModelName>,
    pub max_tokens: Option<u64>,
    pub stream: bool,
    pub context: UsageContext,
}

impl InvokeBody {
    pub fn validate(&self) -> Result<InvokeRequest, ValidationError> {
        let user_id = self.user_id.as_deref().map(UserId::parse).transpose()?;
        let conversation = match (&self.prompt, &self.messages) {
            (Some(_), Some(_)) => {
                return Err(ValidationError::new(
                    "prompt",
                    "prompt_and_messages",
                    "Send either prompt or messages, not both.",
                ));
            }
            (Some(prompt), None) => Conversation::from_prompt(prompt)?,
            (None, Some(messages)) => Conversation::new(messages.clone())?,
            (None, None) => {
                return Err(ValidationError::new(
                    "prompt",
                    "empty_prompt",
                    "Write a prompt: send prompt (text) or messages (a conversation).",
                ));
            }
        };
        let model = self.model.as_deref().map(ModelName::parse).transpose()?;
        let max_tokens = self.max_tokens.map(validate_max_tokens).transpose()?;
        let context = UsageContext::parse(
            self.conversation_id.as_deref(),
            self.agent_id.as_deref(),
            self.prompt_id.as_deref(),
        )?;
        Ok(InvokeRequest {
            user_id,
            conversation,
            model,
            max_tokens,
            stream: self.stream.unwrap_or(false),
            context,
        })
    }
}

/// `maxTokens`: 1 to 100,000.
pub fn validate_max_tokens(raw: i64) -> Result<u64, ValidationError> {
    if raw < 1 || raw as u64 > MAX_OUTPUT_TOKENS {
        return Err(ValidationError::new(
            "maxTokens",
            "invalid_max_tokens",
            format!("maxTokens must be a whole number from 1 to {MAX_OUTPUT_TOKENS}; got {raw}."),
        ));
    }
    Ok(raw as u64)
}

/// How many tokens a call holds before it starts, and how long its answer may be.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CallPlan {
    /// The prompt's tokens as estimated, with the allowance for a tokenizer that may count more.
    pub input_allowance: u64,
    /// The most output tokens the model is asked for.
    pub max_output: u64,
}

impl CallPlan {
    /// What the call reserves: everything it may consume.
    pub fn reserve(&self) -> u64 {
        self.input_allowance + self.max_output
    }
}

/// Why a call cannot start: its prompt alone (plus one output token) does not fit.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct NoRoom {
    pub remaining: u64,
    pub needed: u64,
}

/// The input tokens to hold for a prompt estimated at `estimate` tokens. With the provider's own
/// tokenizer (`exact`) the estimate is the count; otherwise a tenth more plus 16 covers the
/// difference between tokenizers and the provider's message framing.
pub fn input_allowance(estimate: u64, exact: bool) -> u64 {
    if exact {
        estimate
    } else {
        estimate.saturating_add(estimate / 10).saturating_add(16)
    }
}

/// Plans a call that fits in `remaining` tokens: the output is capped at the smallest of what
/// was asked (or the model's default), the model's maximum and what is left after the prompt.
/// A call that cannot produce even one output token does not start.
pub fn plan_call(
    input_allowance: u64,
    requested_output: Option<u64>,
    model_default_output: u64,
    model_max_output: u64,
    remaining: u64,
) -> Result<CallPlan, NoRoom> {
    let wanted = requested_output
        .unwrap_or(model_default_output)
        .min(model_max_output);
    let room = remaining.saturating_sub(input_allowance);
    let max_output = wanted.min(room);
    if max_output == 0 {
        return Err(NoRoom {
            remaining,
            needed: input_allowance.saturating_add(1),
        });
    }
    Ok(CallPlan {
        input_allowance,
        max_output,
    })
}

/// Why a model stopped writing.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum FinishReason {
    /// The answer is complete.
    Stop,
    /// The answer reached its maximum length.
    Length,
    /// The caller stopped it, or went away.
    Cancelled,
    /// The provider failed part-way.
    Error,
}
