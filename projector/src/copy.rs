//! Rows sent with `COPY ... FROM STDIN (FORMAT binary)`: how a replay inserts into its fresh
//! tables. Postgres takes such rows without the `UNNEST` arrays, the executor's projection
//! and `ON CONFLICT`'s speculative insertion, and writes them to the heap several per page
//! and per log record (docs/performance.md, "Rebuild").
//!
//! Each field is encoded by sqlx's own `Encode` for its type, the same bytes the bound
//! parameters of an `INSERT` carry, so a copied row is the row an `INSERT` would have stored.

use anyhow::Context;
use sqlx::encode::IsNull;
use sqlx::postgres::PgArgumentBuffer;
use sqlx::{Encode, Postgres};

/// The binary format's signature, then its flags and header extension (both empty).
const HEADER: &[u8] = b"PGCOPY\n\xff\r\n\0\0\0\0\0\0\0\0\0";

/// Rows in `COPY`'s binary format, built field by field.
pub struct CopyRows {
    buf: PgArgumentBuffer,
    rows: usize,
}

impl Default for CopyRows {
    fn default() -> Self {
        let mut buf = PgArgumentBuffer::default();
        buf.extend_from_slice(HEADER);
        Self { buf, rows: 0 }
    }
}

impl CopyRows {
    /// Starts a row of `fields` fields; exactly that many [`Self::field`] calls follow.
    pub fn row(&mut self, fields: i16) -> &mut Self {
        self.buf.extend_from_slice(&fields.to_be_bytes());
        self.rows += 1;
        self
    }

    /// The row's next field (`None` is SQL `NULL`).
    pub fn field<'q, T: Encode<'q, Postgres>>(&mut self, value: &T) -> &mut Self {
        let at = self.buf.len();
        self.buf.extend_from_slice(&[0; 4]);
        let encoded = value
            .encode_by_ref(&mut self.buf)
            .expect("the replay's column types always encode");
        let len = match encoded {
            IsNull::Yes => {
                self.buf.truncate(at + 4);
                -1
            }
            IsNull::No => i32::try_from(self.buf.len() - at - 4).expect("a field under 2 GiB"),
        };
        self.buf[at..at + 4].copy_from_slice(&len.to_be_bytes());
        self
    }

    /// Rows so far.
    pub fn len(&self) -> usize {
        self.rows
    }

    pub fn is_empty(&self) -> bool {
        self.rows == 0
    }

    /// Sends the rows with `statement` (a `COPY ... FROM STDIN (FORMAT binary)`); returns how
    /// many Postgres stored. Sends nothing when there are no rows.
    pub async fn send(
        mut self,
        conn: &mut sqlx::PgConnection,
        statement: &str,
    ) -> anyhow::Result<u64> {
        if self.rows == 0 {
            return Ok(0);
        }
        self.buf.extend_from_slice(&(-1i16).to_be_bytes());
        let mut copy = conn
            .copy_in_raw(statement)
            .await
            .with_context(|| format!("starting {statement}"))?;
        if let Err(e) = copy.send(self.buf.as_slice()).await {
            // Ends the copy so the connection is usable (or closed) rather than left mid-copy.
            let _ = copy.abort(e.to_string()).await;
            return Err(e).with_context(|| format!("sending rows for {statement}"));
        }
        copy.finish()
            .await
            .with_context(|| format!("finishing {statement}"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rows_are_in_copys_binary_format() {
        let mut rows = CopyRows::default();
        assert!(rows.is_empty());
        rows.row(3)
            .field(&7i64)
            .field(&Option::<String>::None)
            .field(&"ab".to_string());
        assert_eq!(rows.len(), 1);
        let mut want = b"PGCOPY\n\xff\r\n\0".to_vec();
        want.extend_from_slice(&0i32.to_be_bytes()); // flags
        want.extend_from_slice(&0i32.to_be_bytes()); // header extension
        want.extend_from_slice(&3i16.to_be_bytes());
        want.extend_from_slice(&8i32.to_be_bytes());
        want.extend_from_slice(&7i64.to_be_bytes());
        want.extend_from_slice(&(-1i32).to_be_bytes()); // NULL: no bytes follow
        want.extend_from_slice(&2i32.to_be_bytes());
        want.extend_from_slice(b"ab");
        assert_eq!(rows.buf.as_slice(), want.as_slice());
    }
}
