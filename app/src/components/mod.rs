mod error_notice;
mod usage_card;

pub use error_notice::ErrorNotice;
pub use usage_card::UsageCard;
