//! A half-open time window `[from, to)` for filtering and summarising by `created_at`.

use chrono::{DateTime, Utc};
use sqlx::{Postgres, QueryBuilder};

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Window {
    /// Inclusive lower bound; `None` is unbounded.
    pub from: Option<DateTime<Utc>>,
    /// Exclusive upper bound; `None` is unbounded.
    pub to: Option<DateTime<Utc>>,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum WindowError {
    #[error("`{0}` must be an RFC 3339 timestamp, e.g. 2026-11-23T10:00:00Z")]
    NotATimestamp(&'static str),
    #[error("`from` must be earlier than `to`")]
    Empty,
}

impl Window {
    /// Parses the `from`/`to` query parameters.
    pub fn parse(from: Option<&str>, to: Option<&str>) -> Result<Self, WindowError> {
        let parse = |s: Option<&str>, name| {
            s.map(|s| {
                DateTime::parse_from_rfc3339(s)
                    .map(|t| t.with_timezone(&Utc))
                    .map_err(|_| WindowError::NotATimestamp(name))
            })
            .transpose()
        };
        let w = Self {
            from: parse(from, "from")?,
            to: parse(to, "to")?,
        };
        match (w.from, w.to) {
            (Some(f), Some(t)) if f >= t => Err(WindowError::Empty),
            _ => Ok(w),
        }
    }

    /// Appends ` AND column >= from AND column < to` for the bounds that are set.
    pub fn push_predicates(&self, q: &mut QueryBuilder<'_, Postgres>, column: &str) {
        if let Some(from) = self.from {
            q.push(format_args!(" AND {column} >= ")).push_bind(from);
        }
        if let Some(to) = self.to {
            q.push(format_args!(" AND {column} < ")).push_bind(to);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_bounds_and_refuses_empty_or_garbage_windows() {
        let w = Window::parse(
            Some("2026-11-23T10:00:00Z"),
            Some("2026-11-23T11:00:00+01:00"),
        );
        assert_eq!(w, Err(WindowError::Empty));
        let w = Window::parse(Some("2026-11-23T10:00:00Z"), None).unwrap();
        assert_eq!(w.from.unwrap().to_rfc3339(), "2026-11-23T10:00:00+00:00");
        assert_eq!(w.to, None);
        assert_eq!(
            Window::parse(Some("yesterday"), None),
            Err(WindowError::NotATimestamp("from"))
        );
        assert_eq!(
            Window::parse(None, Some("2026-13-01T00:00:00Z")),
            Err(WindowError::NotATimestamp("to"))
        );
        assert_eq!(Window::parse(None, None), Ok(Window::default()));
    }
}
