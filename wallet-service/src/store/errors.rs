//! What a database error means for the caller: try again later, or never.
//!
//! A consumer that retries a refusal forever blocks everything behind it, and one that gives
//! up on a transient error loses work; so the two are told apart by SQLSTATE, in one place.

/// SQLSTATEs that say "try again later": connection loss, shutdown, lock and statement
/// timeouts, serialization failures and deadlocks, resource exhaustion, and a write sent to
/// a server that has just become a standby (25006, during a failover).
pub fn is_transient_code(code: &str) -> bool {
    code.starts_with("08")
        || code.starts_with("53")
        || code.starts_with("57P")
        || matches!(code, "55P03" | "57014" | "40001" | "40P01" | "25006")
}

/// The error is about reaching the database, or a SQLSTATE that says "later".
pub fn is_transient(e: &sqlx::Error) -> bool {
    match e {
        sqlx::Error::PoolTimedOut
        | sqlx::Error::Io(_)
        | sqlx::Error::PoolClosed
        | sqlx::Error::WorkerCrashed
        | sqlx::Error::Tls(_) => true,
        sqlx::Error::Database(db) => db.code().as_deref().is_some_and(is_transient_code),
        _ => false,
    }
}

/// The database refused the data itself, for a reason no retry can fix: a data exception
/// (class 22: invalid text such as U+0000, a value out of range) or an integrity constraint
/// (class 23). Returns the SQLSTATE and message, for the dead letter.
pub fn refusal(e: &sqlx::Error) -> Option<String> {
    let sqlx::Error::Database(db) = e else {
        return None;
    };
    let code = db.code()?;
    (code.starts_with("22") || code.starts_with("23"))
        .then(|| format!("SQLSTATE {code}: {}", db.message()))
}

/// The value is too large for a `bigint` column (SQLSTATE 22003).
pub fn is_out_of_range(e: &sqlx::Error) -> bool {
    matches!(e, sqlx::Error::Database(db) if db.code().as_deref() == Some("22003"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn transient_codes() {
        for code in [
            "08006", "53300", "57P01", "55P03", "57014", "40001", "40P01", "25006",
        ] {
            assert!(is_transient_code(code), "{code}");
        }
        for code in ["22021", "23505", "23514", "22003", "42P01"] {
            assert!(!is_transient_code(code), "{code}");
        }
        assert!(is_transient(&sqlx::Error::PoolTimedOut));
        // A connection that landed on a standby during a failover: 503, try again.
        assert!(is_transient(&shared::db::standby_refused()));
        assert!(refusal(&sqlx::Error::PoolTimedOut).is_none());
    }
}
