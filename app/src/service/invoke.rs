//! Model calls that cannot overspend.
//!
//! 1. Authorize (one's own budget, or anyone's for an admin) and pick the model.
//! 2. Estimate the prompt's tokens; plan the call so prompt + longest answer fit in what the
//!    user has left; **reserve** that atomically (the store refuses when it does not fit, so two
//!    concurrent calls can never both take the last tokens). No room: 429, and the model is not
//!    called.
//! 3. Call the provider. A refusal before it starts consumed nothing: the hold is released.
//! 4. A task of its own drives the answer to the caller, so that whatever happens to the caller
//!    (it cancels, it disconnects) or to the provider (it fails half-way), the call ends with one
//!    **settle**: what was consumed is recorded as one ledger event (idempotent, keyed by the
//!    reservation) and the rest of the hold is released, in one transaction. A server that dies
//!    mid-call leaves only a hold with an expiry, which the expiry job releases.

use std::sync::Arc;
use std::time::{Duration, Instant};

use chrono::Utc;
use domain::api::{
    CallUsageView, EstimateBody, EstimateView, InvokeStartView, InvokeView, ModelView,
};
use domain::pricing::usd_per_million_text;
use domain::{
    Action, CallUsage, Caller, Conversation, FinishReason, IdempotencyKey, InvokeRequest,
    ModelName, PriceTable, RecordUsage, UserId, input_allowance, plan_call,
};
use futures::StreamExt;
use tokio::sync::mpsc;

use super::{Services, allow, not_found_as};
use crate::error::{AppError, ErrorKind};
use crate::ports::{
    LedgerError, ModelProvider, ProviderError, ProviderEvent, ProviderRequest, Tokenizer,
};

/// A model callers may choose.
#[derive(Clone)]
pub struct ModelEntry {
    pub model: ModelName,
    /// Shown to people.
    pub label: String,
    pub provider: Arc<dyn ModelProvider>,
    /// Output tokens asked for when the caller names no maximum.
    pub default_output: u64,
    /// The most output tokens the model can write.
    pub max_output: u64,
}

/// The configured models, their prices and the tokenizer used for estimates.
pub struct Models {
    entries: Vec<ModelEntry>,
    default_model: ModelName,
    prices: PriceTable,
    tokenizer: Arc<dyn Tokenizer>,
    /// How long a hold outlives a call that never ends (a server that died mid-call).
    pub reservation_ttl: Duration,
    /// The longest a call may run before it is cut (and what it consumed recorded).
    pub call_timeout: Duration,
}

impl Models {
    /// `entries` must not be empty; the default is `default_model` when configured, or the first.
    pub fn new(
        entries: Vec<ModelEntry>,
        default_model: Option<ModelName>,
        prices: PriceTable,
        tokenizer: Arc<dyn Tokenizer>,
    ) -> Self {
        assert!(!entries.is_empty(), "at least one model is configured");
        let default_model = default_model
            .filter(|m| entries.iter().any(|e| &e.model == m))
            .unwrap_or_else(|| entries[0].model.clone());
        Self {
            entries,
            default_model,
            prices,
            tokenizer,
            reservation_ttl: Duration::from_secs(15 * 60),
            call_timeout: Duration::from_secs(10 * 60),
        }
    }

    pub fn with_timeouts(mut self, reservation_ttl: Duration, call_timeout: Duration) -> Self {
        self.reservation_ttl = reservation_ttl;
        self.call_timeout = call_timeout;
        self
    }

    pub fn prices(&self) -> &PriceTable {
        &self.prices
    }

    pub fn tokenizer(&self) -> &dyn Tokenizer {
        self.tokenizer.as_ref()
    }

    /// The named model, or the default.
    pub fn pick(&self, model: Option<&ModelName>) -> Result<&ModelEntry, AppError> {
        let wanted = model.unwrap_or(&self.default_model);
        self.entries
            .iter()
            .find(|e| &e.model == wanted)
            .ok_or_else(|| {
                let known: Vec<&str> = self.entries.iter().map(|e| e.model.as_str()).collect();
                AppError::new(
                    ErrorKind::Invalid,
                    "unknown_model",
                    format!(
                        "The model '{}' is not configured here. Choose one of: {}.",
                        wanted.as_str(),
                        known.join(", ")
                    ),
                )
                .with_field("model")
            })
    }

    /// The models as callers see them, the default first.
    pub fn views(&self) -> Vec<ModelView> {
        let now = Utc::now();
        let mut views: Vec<ModelView> = self
            .entries
            .iter()
            .map(|e| {
                let price = self.prices.price_at(&e.model, now);
                ModelView {
                    model: e.model.as_str().to_owned(),
                    provider: e.provider.name().to_owned(),
                    label: e.label.clone(),
                    default: e.model == self.default_model,
                    max_output_tokens: e.max_output,
                    input_usd_per_million: price.map(|p| usd_per_million_text(p.input)),
                    output_usd_per_million: price.map(|p| usd_per_million_text(p.output)),
                }
            })
            .collect();
        views.sort_by_key(|v| !v.default);
        views
    }

    fn cost_picos(&self, model: &ModelName, usage: &CallUsage) -> u64 {
        self.prices
            .price_at(model, Utc::now())
            .map(|p| p.cost_picos(usage))
            .unwrap_or(0)
    }
}

/// What a running call sends to whoever waits for it.
#[derive(Debug, Clone)]
pub enum CallEvent {
    /// More of the reply.
    Delta(String),
    /// The call ended and was settled (also when cancelled or cut: the reason says which).
    Done(Box<InvokeView>),
    /// The call failed. When it had consumed tokens they were recorded, and the view says how
    /// many.
    Failed(AppError, Option<Box<InvokeView>>),
}

/// A call that has started: what it holds, and its events until it ends.
pub struct RunningCall {
    pub start: InvokeStartView,
    pub events: mpsc::Receiver<CallEvent>,
}

impl RunningCall {
    /// Waits for the end of the call: the whole reply, or the error.
    pub async fn finish(mut self) -> Result<InvokeView, AppError> {
        while let Some(event) = self.events.recv().await {
            match event {
                CallEvent::Delta(_) => {}
                CallEvent::Done(view) => return Ok(*view),
                CallEvent::Failed(error, _) => return Err(error),
            }
        }
        Err(AppError::internal())
    }
}

/// A provider's failure, in words for the person who called.
pub fn provider_error(e: &ProviderError) -> AppError {
    match e {
        ProviderError::Unauthorized(_) => AppError::new(
            ErrorKind::BadGateway,
            "provider_auth_failed",
            "The model provider refused this server's credentials. Ask an administrator to check the provider key.",
        ),
        ProviderError::RateLimited(_) => AppError::new(
            ErrorKind::Unavailable,
            "provider_rate_limited",
            "The model provider is busy (rate limited). Nothing was charged; try again in a moment.",
        ),
        ProviderError::Refused(detail) => AppError::new(
            ErrorKind::Invalid,
            "provider_refused",
            format!("The model provider refused this request: {detail}"),
        ),
        ProviderError::Unavailable(_) => AppError::new(
            ErrorKind::BadGateway,
            "provider_unavailable",
            "The model provider failed or could not be reached. Try again in a moment.",
        ),
        ProviderError::Timeout => AppError::new(
            ErrorKind::GatewayTimeout,
            "provider_timeout",
            "The model provider did not answer in time. Try again, perhaps with a shorter prompt.",
        ),
        ProviderError::BadResponse(_) => AppError::new(
            ErrorKind::BadGateway,
            "provider_bad_response",
            "The model provider answered something this server cannot read.",
        ),
    }
}

fn no_room(remaining: u64, needed: u64) -> AppError {
    let mut e = AppError::from(LedgerError::LimitReached { remaining });
    if remaining > 0 {
        e.message = format!(
            "Not enough tokens left for this call: {remaining} remaining, and this prompt needs at least {needed}. Shorten the prompt or ask an administrator to raise the limit."
        );
    }
    e
}

impl Services {
    /// The models a caller may choose.
    pub fn list_models(&self) -> Vec<ModelView> {
        self.models.views()
    }

    /// A prompt's tokens and the most its call could cost (TokenPreview), without calling.
    pub fn estimate(&self, body: &EstimateBody) -> Result<EstimateView, AppError> {
        let conversation = match (&body.prompt, &body.messages) {
            (_, Some(messages)) => Conversation::new(messages.clone())?,
            (Some(prompt), None) => Conversation::from_prompt(prompt)?,
            (None, None) => Conversation::from_prompt("")?,
        };
        let model = body.model.as_deref().map(ModelName::parse).transpose()?;
        let entry = self.models.pick(model.as_ref())?;
        let max_tokens = body
            .max_tokens
            .map(domain::chat::validate_max_tokens)
            .transpose()?;
        let input = self
            .models
            .tokenizer()
            .count_conversation(conversation.messages());
        let max_output = max_tokens
            .unwrap_or(entry.default_output)
            .min(entry.max_output);
        let worst = CallUsage {
            input_tokens: input_allowance(input, entry.provider.counts_exactly()),
            output_tokens: max_output,
            ..CallUsage::default()
        };
        let picos = self.models.cost_picos(&entry.model, &worst);
        Ok(EstimateView {
            model: entry.model.as_str().to_owned(),
            input_tokens: input,
            max_output_tokens: max_output,
            max_cost_picos: picos,
            max_cost_micros: domain::picos_to_micros(picos),
        })
    }

    /// Starts a model call on a user's budget; see the module documentation.
    pub async fn invoke(
        &self,
        caller: &Caller,
        request: InvokeRequest,
    ) -> Result<RunningCall, AppError> {
        let user_id = request
            .user_id
            .clone()
            .unwrap_or_else(|| caller.user_id.clone());
        allow(caller, Action::InvokeModel(&user_id))?;
        let entry = self.models.pick(request.model.as_ref())?.clone();
        let messages = request.conversation.messages().to_vec();
        let estimate = self.models.tokenizer().count_conversation(&messages);
        let allowance = input_allowance(estimate, entry.provider.counts_exactly());

        let user = self
            .ledger
            .get_user(&user_id)
            .await?
            .ok_or_else(|| AppError::user_not_found(user_id.as_str()))?;
        let plan = plan_call(
            allowance,
            request.max_tokens,
            entry.default_output,
            entry.max_output,
            user.remaining(),
        )
        .map_err(|n| no_room(n.remaining, n.needed))?;

        let reservation_id = format!("call-{}", uuid::Uuid::new_v4());
        let now = Utc::now();
        let ttl = chrono::Duration::from_std(self.models.reservation_ttl)
            .unwrap_or(chrono::Duration::minutes(15));
        let reserved = self
            .ledger
            .reserve(&user_id, plan.reserve(), &reservation_id, now, now + ttl)
            .await
            .map_err(|e| match e {
                // Someone else's call took the room between the read and the hold.
                LedgerError::LimitReached { remaining } => no_room(remaining, allowance + 1),
                other => not_found_as(&user_id)(other),
            })?;

        let started = Instant::now();
        let provider_request = ProviderRequest {
            model: entry.model.clone(),
            messages,
            max_output: plan.max_output,
            stream: request.stream,
        };
        let stream = match tokio::time::timeout(
            self.models.call_timeout,
            entry.provider.start(provider_request),
        )
        .await
        .unwrap_or(Err(ProviderError::Timeout))
        {
            Ok(stream) => stream,
            Err(e) => {
                // The provider refused before answering: nothing was consumed.
                tracing::warn!(provider = entry.provider.name(), error = %e, "model call refused");
                if let Err(release) = self.ledger.release(&reservation_id).await {
                    tracing::warn!(error = %release, "release failed; the expiry job will");
                }
                return Err(provider_error(&e));
            }
        };

        let start = InvokeStartView {
            model: entry.model.as_str().to_owned(),
            provider: entry.provider.name().to_owned(),
            reserved_tokens: reserved.tokens,
            max_output_tokens: plan.max_output,
        };
        let (sender, events) = mpsc::channel(64);
        let call = Call {
            services: self.clone(),
            user_id,
            entry,
            reservation_id,
            context: request.context,
            estimate,
            started,
            deadline: tokio::time::Instant::now() + self.models.call_timeout,
        };
        tokio::spawn(call.drive(stream, sender));
        Ok(RunningCall { start, events })
    }
}

/// A call in flight, owned by its own task.
struct Call {
    services: Services,
    user_id: UserId,
    entry: ModelEntry,
    reservation_id: String,
    /// The conversation, agent and prompt the caller named, recorded with the usage.
    context: domain::UsageContext,
    /// The prompt's tokens as counted here: what is recorded when the provider reports nothing.
    estimate: u64,
    started: Instant,
    deadline: tokio::time::Instant,
}

impl Call {
    async fn drive(
        self,
        mut stream: crate::ports::ProviderStream,
        sender: mpsc::Sender<CallEvent>,
    ) {
        let mut reply = String::new();
        let mut reported: Option<CallUsage> = None;
        let mut finish = FinishReason::Stop;
        let mut failure: Option<ProviderError> = None;
        loop {
            let next = match tokio::time::timeout_at(self.deadline, stream.next()).await {
                Ok(next) => next,
                Err(_) => {
                    failure = Some(ProviderError::Timeout);
                    finish = FinishReason::Error;
                    break;
                }
            };
            match next {
                None => break,
                Some(Ok(ProviderEvent::Text(text))) => {
                    reply.push_str(&text);
                    if sender.send(CallEvent::Delta(text)).await.is_err() {
                        // The caller stopped the call or went away: stop the provider too.
                        finish = FinishReason::Cancelled;
                        break;
                    }
                }
                Some(Ok(ProviderEvent::Usage(step))) => {
                    reported = Some(reported.unwrap_or_default().plus(step));
                }
                Some(Ok(ProviderEvent::Finished(reason))) => finish = reason,
                Some(Err(e)) => {
                    failure = Some(e);
                    finish = FinishReason::Error;
                    break;
                }
            }
        }
        // Dropping the stream closes the provider's connection: it stops generating.
        drop(stream);
        let latency_ms = self.started.elapsed().as_millis() as u64;

        // What was consumed: the provider's own count when it gave one; otherwise (cut short,
        // cancelled before the usage arrived) the prompt as counted here and the reply so far.
        let cut_short = matches!(finish, FinishReason::Cancelled | FinishReason::Error);
        let usage = match reported {
            // Cut before the provider gave the output count (it had given the input): the
            // reply so far, as counted here.
            Some(usage) if cut_short && usage.output_tokens == 0 && !reply.is_empty() => {
                CallUsage {
                    output_tokens: self.services.models.tokenizer().count(&reply),
                    ..usage
                }
                .normalized()
            }
            Some(usage) => usage.normalized(),
            None if reply.is_empty() && failure.is_some() => CallUsage::default(),
            None => CallUsage {
                input_tokens: self.estimate,
                output_tokens: self.services.models.tokenizer().count(&reply),
                ..CallUsage::default()
            },
        };
        let outcome = self.settle(&usage).await;
        let view = outcome.map(|(event_id, user, cost)| {
            Box::new(InvokeView {
                reply,
                model: self.entry.model.as_str().to_owned(),
                provider: self.entry.provider.name().to_owned(),
                finish_reason: finish,
                usage: CallUsageView::new(&usage, cost),
                latency_ms,
                remaining_tokens: user.remaining(),
                user: user.into(),
                event_id,
            })
        });
        let last = match (failure, view) {
            (None, Ok(view)) => CallEvent::Done(view),
            (Some(e), Ok(view)) => {
                tracing::warn!(provider = self.entry.provider.name(), error = %e, "model call failed part-way");
                let mut error = provider_error(&e);
                if view.usage.total_tokens > 0 {
                    error.message = format!(
                        "{} The part already generated was charged: {} tokens.",
                        error.message, view.usage.total_tokens
                    );
                }
                CallEvent::Failed(error, Some(view))
            }
            (_, Err(e)) => CallEvent::Failed(e, None),
        };
        let _ = sender.send(last).await;
    }

    /// Records the consumption and gives back the rest of the hold, retrying a failing database
    /// a few times (settling is idempotent, so a retry after an unseen commit records nothing
    /// twice). Nothing consumed: the hold is simply released.
    async fn settle(
        &self,
        usage: &CallUsage,
    ) -> Result<(Option<i64>, domain::UserUsage, u64), AppError> {
        let ledger = &self.services.ledger;
        if usage.total() == 0 {
            ledger.release(&self.reservation_id).await?;
            let user = ledger
                .get_user(&self.user_id)
                .await?
                .ok_or_else(|| AppError::user_not_found(self.user_id.as_str()))?;
            return Ok((None, user, 0));
        }
        let cost = self.services.models.cost_picos(&self.entry.model, usage);
        let key = IdempotencyKey::parse(&self.reservation_id)?;
        let record = RecordUsage::from_call(
            self.user_id.clone(),
            usage,
            self.entry.model.clone(),
            cost,
            key,
        )?
        .with_context(self.context.clone());
        let mut attempt = 0;
        loop {
            match ledger
                .settle(&self.reservation_id, record.clone(), Utc::now())
                .await
            {
                Ok(recorded) => return Ok((Some(recorded.event_id), recorded.user, cost)),
                Err(LedgerError::Unavailable(cause)) if attempt < 5 => {
                    attempt += 1;
                    tracing::warn!(%cause, attempt, "settle failed; retrying");
                    tokio::time::sleep(Duration::from_millis(100 << attempt)).await;
                }
                Err(e) => {
                    tracing::error!(error = %e, reservation = %self.reservation_id, "settle failed");
                    return Err(e.into());
                }
            }
        }
    }
}
