//! SQLite's bulk path: backfills, verifications and CSV exports read millions of rows, and a
//! backfill writes millions.
//! Through sqlx each row crosses from SQLite's worker thread to the async task over a channel
//! and is converted twice (to an `AnyRow`, then to Rust values); that capped reads at
//! 80–215k rows/s. Here a blocking thread reads with rusqlite (the same SQLite library) and
//! folds or formats the rows where it reads them; a rebuild writes its rows there too, with one
//! prepared statement per table.
//!
//! The SQL and the row decoding are shared with the sqlx path (Postgres, and every other read)
//! through [`Columns`]: only how a statement is run differs.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use app::ports::LedgerError;
use rusqlite::{Connection, OpenFlags};
use sqlx::Row;
use sqlx::any::AnyRow;

/// Named columns of a result row, whichever driver read it.
pub(super) trait Columns {
    fn int(&self, name: &str) -> Result<i64, sqlx::Error>;
    fn opt_int(&self, name: &str) -> Result<Option<i64>, sqlx::Error>;
    fn text(&self, name: &str) -> Result<String, sqlx::Error>;
    fn opt_text(&self, name: &str) -> Result<Option<String>, sqlx::Error>;
}

impl Columns for AnyRow {
    fn int(&self, name: &str) -> Result<i64, sqlx::Error> {
        self.try_get(name)
    }
    fn opt_int(&self, name: &str) -> Result<Option<i64>, sqlx::Error> {
        self.try_get(name)
    }
    fn text(&self, name: &str) -> Result<String, sqlx::Error> {
        self.try_get(name)
    }
    fn opt_text(&self, name: &str) -> Result<Option<String>, sqlx::Error> {
        self.try_get(name)
    }
}

/// A rusqlite row with its statement's column names (rusqlite would look each name up through
/// SQLite for every value: a seventh of a backfill's time).
pub(super) struct NamedRow<'a> {
    row: &'a rusqlite::Row<'a>,
    names: &'a [String],
}

impl NamedRow<'_> {
    fn get<T: rusqlite::types::FromSql>(&self, name: &str) -> Result<T, sqlx::Error> {
        let index = self
            .names
            .iter()
            .position(|n| n == name)
            .ok_or_else(|| sqlx::Error::ColumnNotFound(name.to_owned()))?;
        self.row.get(index).map_err(decode_error)
    }
}

impl Columns for NamedRow<'_> {
    fn int(&self, name: &str) -> Result<i64, sqlx::Error> {
        self.get(name)
    }
    fn opt_int(&self, name: &str) -> Result<Option<i64>, sqlx::Error> {
        self.get(name)
    }
    fn text(&self, name: &str) -> Result<String, sqlx::Error> {
        self.get(name)
    }
    fn opt_text(&self, name: &str) -> Result<Option<String>, sqlx::Error> {
        self.get(name)
    }
}

fn decode_error(e: rusqlite::Error) -> sqlx::Error {
    sqlx::Error::Decode(Box::new(e))
}

/// A rusqlite error as sqlx's, so both paths report through the same mapping: a busy or
/// locked database is "unavailable", the rest internal.
pub(super) fn read_error(e: rusqlite::Error) -> sqlx::Error {
    match e.sqlite_error_code() {
        Some(rusqlite::ErrorCode::DatabaseBusy | rusqlite::ErrorCode::DatabaseLocked) => {
            sqlx::Error::Io(std::io::Error::new(
                std::io::ErrorKind::WouldBlock,
                format!("the SQLite database is busy: {e}"),
            ))
        }
        _ => sqlx::Error::Protocol(format!("sqlite read failed: {e}")),
    }
}

/// Where a SQLite database's file is, to open connections of its own next to sqlx's pool.
#[derive(Clone)]
pub(crate) struct SqliteFile {
    path: PathBuf,
    /// The connection [`SqliteFile::write`] used last, kept with its warm page cache: the
    /// aggregator writes through it twice a second. Only the holder of the write turn uses it.
    kept_writer: Arc<Mutex<Option<Connection>>>,
}

impl std::fmt::Debug for SqliteFile {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_tuple("SqliteFile").field(&self.path).finish()
    }
}

impl SqliteFile {
    pub(super) fn new(path: &Path) -> Self {
        Self {
            path: path.to_owned(),
            kept_writer: Default::default(),
        }
    }

    fn kept_writer(&self) -> std::sync::MutexGuard<'_, Option<Connection>> {
        self.kept_writer
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// A read-only connection (WAL: it never blocks the writer, nor the writer it).
    pub(super) fn open(&self) -> Result<Connection, sqlx::Error> {
        self.connect(false)
    }

    /// A connection; a writable one is set up as sqlx's pool sets up its own (full synchronous
    /// commits: a committed write survives power loss).
    pub(super) fn connect(&self, writable: bool) -> Result<Connection, sqlx::Error> {
        let (mode, pragmas) = if writable {
            (
                OpenFlags::SQLITE_OPEN_READ_WRITE,
                "PRAGMA synchronous = FULL; PRAGMA foreign_keys = ON;",
            )
        } else {
            (OpenFlags::SQLITE_OPEN_READ_ONLY, "")
        };
        let conn = Connection::open_with_flags(&self.path, mode | OpenFlags::SQLITE_OPEN_NO_MUTEX)
            .map_err(read_error)?;
        conn.execute_batch(&format!(
            "{pragmas} PRAGMA busy_timeout = 10000; PRAGMA cache_size = -65536;"
        ))
        .map_err(read_error)?;
        Ok(conn)
    }

    /// Runs `read` on a new read-only connection on a blocking thread.
    pub(super) async fn read<T: Send + 'static>(
        &self,
        read: impl FnOnce(&mut Connection) -> Result<T, sqlx::Error> + Send + 'static,
    ) -> Result<T, LedgerError> {
        self.on_blocking_thread(false, read).await
    }

    /// Runs `write` on a read-write connection (the one kept from the last write, or a new one)
    /// on a blocking thread. The caller holds the process's write turn (`Db::write_turn`) until
    /// this answers.
    pub(super) async fn write<T: Send + 'static>(
        &self,
        write: impl FnOnce(&mut Connection) -> Result<T, sqlx::Error> + Send + 'static,
    ) -> Result<T, LedgerError> {
        self.on_blocking_thread(true, write).await
    }

    async fn on_blocking_thread<T: Send + 'static>(
        &self,
        writable: bool,
        work: impl FnOnce(&mut Connection) -> Result<T, sqlx::Error> + Send + 'static,
    ) -> Result<T, LedgerError> {
        let file = self.clone();
        tokio::task::spawn_blocking(move || {
            if !writable {
                return work(&mut file.connect(false)?);
            }
            let kept = file.kept_writer().take();
            let mut conn = match kept {
                Some(conn) => conn,
                None => file.connect(true)?,
            };
            let done = work(&mut conn);
            // After an error the connection may be broken or mid-transaction: not kept.
            if done.is_ok() {
                *file.kept_writer() = Some(conn);
            }
            done
        })
        .await
        .map_err(|e| LedgerError::Internal(format!("database task failed: {e}")))?
        .map_err(super::ledger_error)
    }
}

/// Runs a query and hands each row to `each`.
pub(super) fn for_each_row(
    conn: &Connection,
    sql: &str,
    params: &[&dyn rusqlite::ToSql],
    each: impl FnMut(&NamedRow<'_>) -> Result<(), sqlx::Error>,
) -> Result<(), sqlx::Error> {
    let mut statement = conn.prepare(sql).map_err(read_error)?;
    for_each_row_of(&mut statement, params, each)
}

/// Runs a prepared statement and hands each row to `each`.
pub(super) fn for_each_row_of(
    statement: &mut rusqlite::Statement<'_>,
    params: &[&dyn rusqlite::ToSql],
    mut each: impl FnMut(&NamedRow<'_>) -> Result<(), sqlx::Error>,
) -> Result<(), sqlx::Error> {
    let names: Vec<String> = statement
        .column_names()
        .into_iter()
        .map(str::to_owned)
        .collect();
    let mut rows = statement.query(params).map_err(read_error)?;
    while let Some(row) = rows.next().map_err(read_error)? {
        each(&NamedRow { row, names: &names })?;
    }
    Ok(())
}
