mod error_notice;
mod modal;
mod toast;
mod usage_card;

pub use error_notice::ErrorNotice;
pub use modal::Modal;
pub use toast::{ToastRegion, Toasts, use_toasts};
pub use usage_card::UsageCard;
