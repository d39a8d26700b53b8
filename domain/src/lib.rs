//! tokenmeter's domain: the types every layer shares, their validation, and the usage math.
//!
//! Pure and I/O-free: no framework, no database, no clock reads. Every function with an
//! invariant is property-tested (see `tests/properties.rs`).

pub mod access;
pub mod api;
pub mod chat;
pub mod error;
pub mod listing;
pub mod math;
pub mod pricing;
pub mod rollup;
pub mod sort;
pub mod sse;
pub mod stats;
pub mod usage;
pub mod user;

pub use access::{Action, Caller, Credential, Denied, Role, Scope, authorize};
pub use chat::{
    CallPlan, ChatMessage, ChatRole, Conversation, FinishReason, InvokeBody, InvokeRequest, NoRoom,
    input_allowance, plan_call,
};
pub use error::ValidationError;
pub use listing::{PageInfo, UserQuery, matches_filter, page_bounds, query_users};
pub use math::{UsageLevel, remaining_tokens, used_basis_points};
pub use pricing::{CallUsage, ModelPrice, PriceConfig, PriceTable, format_usd, picos_to_micros};
pub use sort::{SortDirection, UserSortKey, sort_users};
pub use usage::{
    ContextId, IdempotencyKey, ModelName, RecordUsage, TokenAmount, UsageContext, UsageSource,
};
pub use user::{DisplayName, NewUser, TokenLimit, UserId, UserUsage};
