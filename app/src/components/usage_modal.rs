//! The usage dialog (TokenUsageModal): one user's tokens over the last 7, 30 or 90 days by day,
//! week or month — four stat cards, a chart of input and output tokens (ECharts through
//! `charming`, drawn by the WASM), a sortable and paged table, and the same range as CSV.

use domain::listing::page_bounds;
use domain::rollup::Period;
use domain::stats::{StatsParams, StatsRow, StatsSortKey, StatsView, sort_rows};
use domain::{SortDirection, format_usd};
use leptos::prelude::*;

use crate::api::usage_stats;
use crate::components::{ErrorNotice, Modal};
use crate::format::thousands;

/// The range presets, in days.
const PRESETS: [u32; 3] = [7, 30, 90];
/// Table rows per page.
const TABLE_PAGE: u32 = 10;

/// How the chart draws the series.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ChartKind {
    Line,
    Bar,
}

impl ChartKind {
    fn as_str(self) -> &'static str {
        match self {
            Self::Line => "line",
            Self::Bar => "bar",
        }
    }
}

/// The table's columns: label, sort key, numeric.
const COLUMNS: [(&str, StatsSortKey); 7] = [
    ("Date", StatsSortKey::Key),
    ("Total", StatsSortKey::Total),
    ("Input", StatsSortKey::Input),
    ("Output", StatsSortKey::Output),
    ("Messages", StatsSortKey::Messages),
    ("Conversations", StatsSortKey::Conversations),
    ("Models", StatsSortKey::Models),
];

/// `user_id`'s usage in a dialog; `display_name` names them in the heading.
#[component]
pub fn TokenUsageModal(
    user_id: String,
    display_name: String,
    #[prop(into)] on_close: Callback<()>,
) -> impl IntoView {
    let days = RwSignal::new(30u32);
    let period = RwSignal::new(Period::Day);
    let kind = RwSignal::new(ChartKind::Line);
    let sort = RwSignal::new((StatsSortKey::Key, SortDirection::Asc));
    let page = RwSignal::new(1u32);
    let refresh = RwSignal::new(0u32);
    let user = StoredValue::new(user_id);

    // Every row of the range at once (at most 90 days): the chart needs them all, and the table
    // sorts and pages them here without another round trip.
    let stats = LocalResource::new(move || {
        refresh.track();
        let params = StatsParams {
            user_id: Some(user.get_value()),
            days: Some(days.get().to_string()),
            period: Some(period.get().as_str().to_owned()),
            page_size: Some("1000".to_owned()),
            ..StatsParams::default()
        };
        async move { usage_stats(params).await }
    });
    let csv_href = move || {
        format!(
            "/api/usage/export.csv?userId={}&days={}&period={}",
            user.get_value(),
            days.get(),
            period.get().as_str()
        )
    };

    view! {
        <Modal title=format!("Usage of {display_name}") on_close>
            <div class="usage-controls">
                <div class="segmented" role="group" aria-label="Date range">
                    {PRESETS.into_iter().map(|n| view! {
                        <button type="button" aria-pressed=move || (days.get() == n).to_string()
                            on:click=move |_| { days.set(n); page.set(1); }>
                            {format!("{n} days")}
                        </button>
                    }).collect_view()}
                </div>
                <label class="inline">
                    "Period "
                    <select aria-label="Period" on:change=move |ev| {
                        if let Ok(p) = Period::parse(&event_target_value(&ev)) {
                            period.set(p);
                            page.set(1);
                        }
                    }>
                        <option value="day" selected=move || period.get() == Period::Day>"Daily"</option>
                        <option value="week" selected=move || period.get() == Period::Week>"Weekly"</option>
                        <option value="month" selected=move || period.get() == Period::Month>"Monthly"</option>
                    </select>
                </label>
                <div class="segmented" role="group" aria-label="Chart type">
                    {[ChartKind::Line, ChartKind::Bar].into_iter().map(|k| view! {
                        <button type="button" aria-pressed=move || (kind.get() == k).to_string()
                            on:click=move |_| kind.set(k)>
                            {if k == ChartKind::Line { "Line" } else { "Bar" }}
                        </button>
                    }).collect_view()}
                </div>
            </div>
            <Transition fallback=|| view! { <p class="loading" role="status">"Loading usage…"</p> }>
                {move || Suspend::new(async move {
                    match stats.await {
                        Ok(view) => view! { <UsageBody view kind sort page /> }.into_any(),
                        Err(error) => view! { <ErrorNotice error /> }.into_any(),
                    }
                })}
            </Transition>
            <div class="modal-actions">
                <a class="button secondary" href=csv_href download="">"Export CSV"</a>
                <button type="button" class="secondary" on:click=move |_| refresh.update(|n| *n += 1)>"Refresh"</button>
                <button type="button" on:click=move |_| on_close.run(())>"Close"</button>
            </div>
        </Modal>
    }
}

/// The answer: range, cards, chart and table; or a word that there is nothing to show.
#[component]
fn UsageBody(
    view: StatsView,
    kind: RwSignal<ChartKind>,
    sort: RwSignal<(StatsSortKey, SortDirection)>,
    page: RwSignal<u32>,
) -> impl IntoView {
    let s = view.summary.clone();
    let range = format!("{} to {} · {} days (UTC)", view.from, view.to, s.days);
    if s.messages == 0 {
        return view! {
            <p class="muted" data-testid="usage-range">{range}</p>
            <p class="empty" data-testid="usage-empty">"No usage in this range."</p>
        }
        .into_any();
    }
    let rows = view.rows.clone();
    view! {
        <p class="muted" data-testid="usage-range">{range}</p>
        <div class="stat-cards">
            <div class="stat-card" data-testid="card-total">
                <span class="stat-label">"Total tokens"</span>
                <strong class="stat-value">{thousands(s.total_tokens)}</strong>
                <span class="stat-detail">
                    <span title="input">{format!("↓ {} in", thousands(s.input_tokens))}</span>
                    " · "
                    <span title="output">{format!("↑ {} out", thousands(s.output_tokens))}</span>
                </span>
                <span class="stat-detail">{format!("{} spent", format_usd(s.cost_picos))}</span>
            </div>
            <div class="stat-card" data-testid="card-average">
                <span class="stat-label">"Average per day"</span>
                <strong class="stat-value">{thousands(s.average_tokens_per_day)}</strong>
                <span class="stat-detail">"tokens"</span>
            </div>
            <div class="stat-card" data-testid="card-messages">
                <span class="stat-label">"Messages"</span>
                <strong class="stat-value">{thousands(s.messages)}</strong>
                <span class="stat-detail">{format!("in {} conversations", thousands(s.conversations))}</span>
            </div>
            <div class="stat-card" data-testid="card-models">
                <span class="stat-label">"Agents / models"</span>
                <strong class="stat-value">{format!("{} / {}", s.agents, s.models)}</strong>
                <span class="stat-detail">"used"</span>
            </div>
        </div>
        <UsageChart rows=rows.clone() kind />
        <UsageTable rows sort page />
    }
    .into_any()
}

/// Input and output tokens per period. The browser draws it (ECharts, served by this app);
/// the server renders the empty frame with a text alternative.
#[component]
fn UsageChart(rows: Vec<StatsRow>, kind: RwSignal<ChartKind>) -> impl IntoView {
    let mut rows = rows;
    rows.sort_by(|a, b| a.key.cmp(&b.key));
    let total: u64 = rows.iter().map(|r| r.total_tokens).sum();
    let label = format!(
        "Chart of input and output tokens over {} periods, {} tokens in all",
        rows.len(),
        thousands(total)
    );
    // Drawn on the next frame: the effect runs before the dialog's content is in the document.
    #[cfg(feature = "hydrate")]
    {
        let rows = StoredValue::new(rows);
        Effect::new(move |_| {
            let kind = kind.get();
            request_animation_frame(move || rows.with_value(|rows| draw(rows, kind)));
        });
        // ECharts keeps the size it was drawn at: follow the window's.
        let resizing = window_event_listener(leptos::ev::resize, |_| fit_chart_to_its_box());
        on_cleanup(move || resizing.remove());
    }
    view! {
        <div id="usage-chart" class="usage-chart" role="img" aria-label=label data-kind=move || kind.get().as_str()></div>
    }
}

/// Asks the chart's ECharts instance (if drawn) to fit its element again.
#[cfg(feature = "hydrate")]
fn fit_chart_to_its_box() {
    use wasm_bindgen::JsCast;
    let Some(element) = document().get_element_by_id("usage-chart") else {
        return;
    };
    let get = |target: &wasm_bindgen::JsValue, name: &str| {
        js_sys::Reflect::get(target, &name.into()).ok()
    };
    let Some(echarts) = get(&js_sys::global(), "echarts") else {
        return;
    };
    let Some(by_dom) =
        get(&echarts, "getInstanceByDom").and_then(|f| f.dyn_into::<js_sys::Function>().ok())
    else {
        return;
    };
    let Ok(instance) = by_dom.call1(&echarts, &element) else {
        return;
    };
    if let Some(resize) =
        get(&instance, "resize").and_then(|f| f.dyn_into::<js_sys::Function>().ok())
    {
        let _ = resize.call0(&instance);
    }
}

#[cfg(feature = "hydrate")]
fn draw(rows: &[StatsRow], kind: ChartKind) {
    use charming::component::{Axis, Legend};
    use charming::element::{AxisType, Tooltip, Trigger};
    use charming::series::{Bar, Line};
    use charming::{Chart, WasmRenderer};

    let dates: Vec<String> = rows
        .iter()
        .map(|r| r.key.clone().unwrap_or_default())
        .collect();
    let input: Vec<i64> = rows.iter().map(|r| r.input_tokens as i64).collect();
    let output: Vec<i64> = rows.iter().map(|r| r.output_tokens as i64).collect();
    let chart = Chart::new()
        .animation(false)
        .tooltip(Tooltip::new().trigger(Trigger::Axis))
        .legend(Legend::new().data(vec!["Input tokens", "Output tokens"]))
        .x_axis(Axis::new().type_(AxisType::Category).data(dates))
        .y_axis(Axis::new().type_(AxisType::Value));
    let chart = match kind {
        ChartKind::Line => chart
            .series(Line::new().name("Input tokens").data(input))
            .series(Line::new().name("Output tokens").data(output)),
        ChartKind::Bar => chart
            .series(Bar::new().name("Input tokens").stack("tokens").data(input))
            .series(
                Bar::new()
                    .name("Output tokens")
                    .stack("tokens")
                    .data(output),
            ),
    };
    if let Err(e) = WasmRenderer::new_opt(None, Some(280)).render("usage-chart", &chart) {
        leptos::logging::warn!("the usage chart could not be drawn: {e:?}");
    }
}

/// The rows, sorted by any column (both ways) and paged.
#[component]
fn UsageTable(
    rows: Vec<StatsRow>,
    sort: RwSignal<(StatsSortKey, SortDirection)>,
    page: RwSignal<u32>,
) -> impl IntoView {
    let rows = StoredValue::new(rows);
    let shown = Memo::new(move |_| {
        let (key, direction) = sort.get();
        let mut all = rows.get_value();
        sort_rows(&mut all, key, direction);
        let (range, info) = page_bounds(all.len(), page.get(), TABLE_PAGE);
        (all[range].to_vec(), info)
    });
    let header = COLUMNS
        .into_iter()
        .map(|(label, key)| {
            let aria_sort = move || match sort.get() {
                (k, SortDirection::Asc) if k == key => "ascending",
                (k, SortDirection::Desc) if k == key => "descending",
                _ => "none",
            };
            let arrow = move || match aria_sort() {
                "ascending" => "▲",
                "descending" => "▼",
                _ => "↕",
            };
            view! {
                <th scope="col" aria-sort=aria_sort class:numeric=key != StatsSortKey::Key>
                    <button type="button" class="sort" on:click=move |_| {
                        sort.update(|(k, d)| {
                            *d = if *k == key && *d == SortDirection::Asc { SortDirection::Desc } else { SortDirection::Asc };
                            *k = key;
                        });
                        page.set(1);
                    }>
                        {label} <span aria-hidden="true" class="arrow">{arrow}</span>
                    </button>
                </th>
            }
        })
        .collect_view();
    let count = |v: Option<u64>| v.map(thousands).unwrap_or_else(|| "–".to_owned());
    view! {
        <div class="table-scroll">
            <table class="usage-table" aria-label="Usage per period">
                <thead><tr>{header}</tr></thead>
                <tbody>
                    {move || shown.get().0.into_iter().map(|r| view! {
                        <tr>
                            <td>{r.key.clone().unwrap_or_default()}</td>
                            <td class="numeric">{thousands(r.total_tokens)}</td>
                            <td class="numeric">{thousands(r.input_tokens)}</td>
                            <td class="numeric">{thousands(r.output_tokens)}</td>
                            <td class="numeric">{thousands(r.messages)}</td>
                            <td class="numeric">{count(r.conversations)}</td>
                            <td class="numeric">{count(r.models)}</td>
                        </tr>
                    }).collect_view()}
                </tbody>
            </table>
        </div>
        <nav class="pager" aria-label="Table pages">
            <button type="button" class="secondary" disabled=move || shown.get().1.page <= 1
                on:click=move |_| page.update(|p| *p = p.saturating_sub(1).max(1))>"← Previous"</button>
            <span data-testid="usage-page-info">{move || {
                let info = shown.get().1;
                format!("Page {} of {} · {} rows", info.page, info.pages, info.total)
            }}</span>
            <button type="button" class="secondary" disabled=move || { let i = shown.get().1; i.page >= i.pages }
                on:click=move |_| page.update(|p| *p += 1)>"Next →"</button>
        </nav>
    }
}
