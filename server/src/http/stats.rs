//! `GET /api/usage/stats` and `GET /api/usage/export.csv`.

use std::collections::HashMap;

use app::service::Services;
use axum::Json;
use axum::body::Body;
use axum::extract::{Query, State};
use axum::http::header;
use axum::response::{IntoResponse, Response};
use domain::stats::{EVENTS_CSV_HEADER, StatsParams, StatsView, csv_record};

use super::ApiError;
use super::auth::Authenticated;

/// The query string's fields (unknown ones are ignored, as browsers add their own).
fn params(query: &HashMap<String, String>) -> StatsParams {
    let get = |key: &str| query.get(key).cloned();
    StatsParams {
        user_id: get("userId"),
        from: get("from"),
        to: get("to"),
        days: get("days"),
        period: get("period"),
        model: get("model"),
        group_by: get("groupBy"),
        sort: get("sort"),
        direction: get("direction"),
        page: get("page"),
        page_size: get("pageSize"),
    }
}

/// `GET /api/usage/aggregator`: how far the rollups are behind the ledger (admins), for
/// monitoring and the lag benchmark.
pub(super) async fn aggregator_status(
    State(services): State<Services>,
    Authenticated(caller): Authenticated,
) -> Result<Json<app::ports::AggregatorStatus>, ApiError> {
    Ok(Json(services.aggregator_status(&caller).await?))
}

pub(super) async fn usage_stats(
    State(services): State<Services>,
    Authenticated(caller): Authenticated,
    Query(query): Query<HashMap<String, String>>,
) -> Result<Json<StatsView>, ApiError> {
    Ok(Json(services.usage_stats(&caller, &params(&query)).await?))
}

/// The CSV is sent as it is written, in chunks of lines, so a long export starts at once and is
/// never held whole in a response buffer.
pub(super) async fn export_csv(
    State(services): State<Services>,
    Authenticated(caller): Authenticated,
    Query(query): Query<HashMap<String, String>>,
) -> Result<Response, ApiError> {
    let (view, lines) = services.usage_csv(&caller, &params(&query)).await?;
    let who = view.user_id.as_deref().unwrap_or("all-users");
    let filename = format!(
        "usage-{who}-{}-{}-by-{}.csv",
        view.from,
        view.to,
        view.group_by.as_str()
    );
    let chunks = lines
        .chunks(2_000)
        .map(|chunk| Ok::<_, std::convert::Infallible>(chunk.concat()))
        .collect::<Vec<_>>();
    let body = Body::from_stream(futures::stream::iter(chunks));
    Ok((
        [
            (header::CONTENT_TYPE, "text/csv; charset=utf-8".to_owned()),
            (
                header::CONTENT_DISPOSITION,
                format!("attachment; filename=\"{filename}\""),
            ),
        ],
        body,
    )
        .into_response())
}

/// `GET /api/usage/events.csv`: every ledger event of the range (same filters as the stats),
/// streamed from the database as it is read.
pub(super) async fn export_events_csv(
    State(services): State<Services>,
    Authenticated(caller): Authenticated,
    Query(query): Query<HashMap<String, String>>,
) -> Result<Response, ApiError> {
    let (filename, events) = services.usage_events(&caller, &params(&query)).await?;
    let header =
        futures::stream::once(async { Ok::<_, std::io::Error>(csv_record(&EVENTS_CSV_HEADER)) });
    let body = futures::stream::unfold(events, |mut events| async move {
        let next = events.recv().await?;
        let chunk = match next {
            Ok(rows) => Ok(rows.iter().map(|r| r.csv()).collect::<String>()),
            Err(e) => {
                tracing::error!(%e, "events export failed part-way");
                Err(std::io::Error::other(
                    "the export stopped: the database failed",
                ))
            }
        };
        Some((chunk, events))
    });
    Ok((
        [
            (header::CONTENT_TYPE, "text/csv; charset=utf-8".to_owned()),
            (
                header::CONTENT_DISPOSITION,
                format!("attachment; filename=\"{filename}\""),
            ),
        ],
        Body::from_stream(futures::StreamExt::chain(header, body)),
    )
        .into_response())
}
