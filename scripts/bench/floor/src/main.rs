//! A minimal axum server for `floor.sh`: `GET /livez`, and `POST /api/users/{id}/usage` that
//! parses the JSON body and answers a small JSON object. With `WRITER_US=N` each report also
//! goes through a writer thread, as tokenmeter's do (a bounded queue, batches, one answer
//! channel per report), which spins N µs per report in place of the database's work.

use axum::extract::{Path, State};
use axum::routing::{get, post};
use axum::{Json, Router};
use tokio::sync::{mpsc, oneshot};

type Job = oneshot::Sender<u64>;

#[tokio::main]
async fn main() {
    let writer_us: Option<u64> = std::env::var("WRITER_US").ok().map(|v| {
        v.parse()
            .expect("WRITER_US is a number of microseconds")
    });
    let queue = writer_us.map(|spin| {
        let (queue, mut jobs) = mpsc::channel::<Job>(8192);
        std::thread::spawn(move || {
            let mut total = 0u64;
            let mut batch = Vec::new();
            while let Some(first) = jobs.blocking_recv() {
                batch.push(first);
                while batch.len() < 512 {
                    match jobs.try_recv() {
                        Ok(job) => batch.push(job),
                        Err(_) => break,
                    }
                }
                let started = std::time::Instant::now();
                let work = std::time::Duration::from_micros(spin * batch.len() as u64);
                while started.elapsed() < work {}
                for reply in batch.drain(..) {
                    total += 7;
                    let _ = reply.send(total);
                }
            }
        });
        queue
    });
    let app = Router::new()
        .route("/livez", get(|| async { "ok" }))
        .route("/api/users/{id}/usage", post(record))
        .with_state(queue);
    let addr = std::env::var("ADDR").unwrap_or_else(|_| "127.0.0.1:3999".into());
    let listener = tokio::net::TcpListener::bind(addr).await.expect("the address is free");
    axum::serve(listener, app).await.expect("the server runs");
}

async fn record(
    State(queue): State<Option<mpsc::Sender<Job>>>,
    Path(user): Path<String>,
    Json(body): Json<serde_json::Value>,
) -> Json<serde_json::Value> {
    let total = match queue {
        Some(queue) => {
            let (reply, answer) = oneshot::channel();
            queue.send(reply).await.expect("the writer runs");
            answer.await.expect("the writer answers")
        }
        None => 0,
    };
    Json(serde_json::json!({
        "userId": user,
        "tokensRecorded": body["tokensConsumed"],
        "lifetimeTokens": total,
    }))
}
