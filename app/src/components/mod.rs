mod error_notice;
mod modal;
mod toast;
mod usage_card;
mod usage_modal;

pub use error_notice::ErrorNotice;
pub use modal::Modal;
pub use toast::{ToastRegion, Toasts, use_toasts};
pub use usage_card::UsageCard;
pub use usage_modal::TokenUsageModal;
