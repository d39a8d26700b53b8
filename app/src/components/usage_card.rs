use domain::api::UserView;
use domain::{UsageLevel, format_usd};
use leptos::prelude::*;

use crate::format::{percent, thousands, utc};

/// One user's usage: the numbers, and a bar coloured by level with the percentage in text.
#[component]
pub fn UsageCard(user: UserView) -> impl IntoView {
    let level = user.level;
    let bar_width = format!("{}%", user.used_basis_points.min(10_000) as f64 / 100.0);
    let notice = match level {
        UsageLevel::Normal => None,
        UsageLevel::Warning => Some("You have used 75 % or more of your tokens."),
        UsageLevel::Critical => {
            Some("You have used 90 % or more of your tokens. Model calls will soon be refused.")
        }
        UsageLevel::Exhausted => Some(
            "You have used all your tokens. Model calls are blocked until your limit is raised.",
        ),
    };
    view! {
        <article class="usage-card" data-testid="usage-card" data-level=level.as_str()>
            <header>
                <h2>{user.display_name.clone()}</h2>
                <p class="muted">"User id: " <code data-testid="user-id">{user.user_id.clone()}</code></p>
            </header>
            {notice.map(|text| view! { <p class=format!("banner banner-{}", level.as_str()) role="status">{text}</p> })}
            <div
                class=format!("meter meter-{}", level.as_str())
                role="progressbar"
                aria-label="Share of token limit used"
                aria-valuemin="0"
                aria-valuemax="100"
                aria-valuenow=(user.used_basis_points / 100).min(100).to_string()
                aria-valuetext=percent(user.used_basis_points)
            >
                <div class="meter-fill" style:width=bar_width></div>
            </div>
            <dl class="stats">
                <div>
                    <dt>"Used"</dt>
                    <dd data-testid="tokens-used">{thousands(user.token_usage)}</dd>
                </div>
                <div>
                    <dt>"Limit"</dt>
                    <dd data-testid="token-limit">{thousands(user.token_limit)}</dd>
                </div>
                <div>
                    <dt>"Reserved by calls running"</dt>
                    <dd data-testid="tokens-reserved">{thousands(user.tokens_reserved)}</dd>
                </div>
                <div>
                    <dt>"Remaining"</dt>
                    <dd data-testid="tokens-remaining">{thousands(user.remaining_tokens)}</dd>
                </div>
                <div>
                    <dt>"Used of limit"</dt>
                    <dd data-testid="percentage-used">{percent(user.used_basis_points)}</dd>
                </div>
                <div>
                    <dt>"Spent"</dt>
                    <dd data-testid="cost-spent">{format_usd(user.lifetime_cost_picos)}</dd>
                </div>
                <div>
                    <dt>"Last updated"</dt>
                    <dd data-testid="last-updated">{utc(user.last_updated)}</dd>
                </div>
            </dl>
        </article>
    }
}
