//! Connecting to PostgreSQL: one server, or a primary and its standbys (pg_auto_failover).
//!
//! `DATABASE_URL` may name several hosts, as libpq accepts
//! (`postgres://user@h1:5432,h2:5433/db?target_session_attrs=read-write`). sqlx connects to
//! one host, so the pool is pointed at whichever host is the primary, and a watcher points it
//! at the new one after a failover. A connection that lands on a standby anyway is refused
//! when it is opened, as a transient error: the request is answered 503 with `Retry-After`
//! and the client's retry under the same `Idempotency-Key` is safe.

use sqlx::postgres::{PgConnectOptions, PgPool, PgPoolOptions};
use sqlx::{ConnectOptions, Connection, PgConnection};
use std::time::Duration;

/// How often the watcher asks the host the pool uses whether it is still the primary.
const WATCH_EVERY: Duration = Duration::from_millis(500);
/// How long one probe (connect and ask) may take before that host counts as down.
const PROBE_TIMEOUT: Duration = Duration::from_secs(1);

/// A `DATABASE_URL` taken apart: the options of its first host, and every host it names.
#[derive(Debug, Clone)]
pub struct DbTarget {
    options: PgConnectOptions,
    hosts: Vec<(String, u16)>,
}

#[derive(Debug, thiserror::Error)]
pub enum TargetError {
    #[error("DATABASE_URL is not a postgres:// URL")]
    NotAUrl,
    #[error("DATABASE_URL has a bad port in {0:?}")]
    BadPort(String),
    #[error("DATABASE_URL: {0}")]
    Invalid(#[from] sqlx::Error),
}

impl DbTarget {
    pub fn parse(url: &str) -> Result<Self, TargetError> {
        let (scheme, rest) = url.split_once("://").ok_or(TargetError::NotAUrl)?;
        let end = rest.find(['/', '?']).unwrap_or(rest.len());
        let (authority, tail) = rest.split_at(end);
        let (userinfo, hostlist) = match authority.rsplit_once('@') {
            Some((u, h)) => (Some(u), h),
            None => (None, authority),
        };
        let hosts = hostlist
            .split(',')
            .filter(|h| !h.is_empty())
            .map(host_port)
            .collect::<Result<Vec<_>, _>>()?;
        let Some((first_host, first_port)) = hosts.first() else {
            // No host in the authority (a Unix socket, or `?host=`): sqlx reads it as is.
            let options: PgConnectOptions = url.parse()?;
            let host = (options.get_host().to_string(), options.get_port());
            return Ok(Self {
                options,
                hosts: vec![host],
            });
        };
        let first_host = if first_host.contains(':') {
            format!("[{first_host}]")
        } else {
            first_host.clone()
        };
        // sqlx would warn about the libpq-only parameter; choosing the primary is done here.
        let tail = drop_param(tail, "target_session_attrs");
        let user = userinfo.map(|u| format!("{u}@")).unwrap_or_default();
        let single = format!("{scheme}://{user}{first_host}:{first_port}{tail}");
        Ok(Self {
            options: single.parse()?,
            hosts,
        })
    }

    /// The options of the first host.
    pub fn options(&self) -> PgConnectOptions {
        self.options.clone()
    }

    pub fn hosts(&self) -> &[(String, u16)] {
        &self.hosts
    }

    /// More than one host: the pool must find the primary and follow failovers.
    pub fn is_replicated(&self) -> bool {
        self.hosts.len() > 1
    }

    /// The first host that answers as a primary, with `options` pointed at it.
    pub async fn find_primary(&self, options: &PgConnectOptions) -> Option<PgConnectOptions> {
        for host in &self.hosts {
            let candidate = on_host(options, host);
            if probe(&candidate).await == Some(Role::Primary) {
                return Some(candidate);
            }
        }
        None
    }
}

/// `options` (user, database, session settings) pointed at another host.
fn on_host(options: &PgConnectOptions, (host, port): &(String, u16)) -> PgConnectOptions {
    options.clone().host(host).port(*port)
}

/// `host`, `host:port`, `[v6]` or `[v6]:port`; libpq's default port when none is given.
fn host_port(h: &str) -> Result<(String, u16), TargetError> {
    let (host, port) = match h.strip_prefix('[') {
        Some(v6) => match v6.split_once(']') {
            Some((addr, "")) => (addr, None),
            Some((addr, port)) => (addr, port.strip_prefix(':')),
            None => return Err(TargetError::BadPort(h.to_string())),
        },
        None => match h.rsplit_once(':') {
            Some((host, port)) => (host, Some(port)),
            None => (h, None),
        },
    };
    let port = match port {
        Some(p) => p.parse().map_err(|_| TargetError::BadPort(h.to_string()))?,
        None => 5432,
    };
    Ok((host.to_string(), port))
}

/// `tail` (`/db?a=1&b=2`) without the query parameter `name`.
fn drop_param(tail: &str, name: &str) -> String {
    let Some((path, query)) = tail.split_once('?') else {
        return tail.to_string();
    };
    let kept: Vec<&str> = query
        .split('&')
        .filter(|kv| kv.split('=').next() != Some(name))
        .collect();
    if kept.is_empty() {
        path.to_string()
    } else {
        format!("{path}?{}", kept.join("&"))
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    Primary,
    Standby,
}

/// Connects to the host of `options` and asks whether it is in recovery; None if it did not
/// answer within [`PROBE_TIMEOUT`].
async fn probe(options: &PgConnectOptions) -> Option<Role> {
    let mut conn = None;
    let role = ask(&mut conn, options).await;
    if let Some(c) = conn {
        let _ = c.close().await;
    }
    role
}

/// Asks the host of `options` for its role over `conn`, connecting first if there is none;
/// None (and `conn` dropped) if it did not answer within [`PROBE_TIMEOUT`].
async fn ask(conn: &mut Option<PgConnection>, options: &PgConnectOptions) -> Option<Role> {
    let asked = tokio::time::timeout(PROBE_TIMEOUT, async {
        let c = match conn {
            Some(c) => c,
            None => conn.insert(options.connect().await?),
        };
        role_of(c).await
    })
    .await;
    match asked {
        Ok(Ok(role)) => Some(role),
        _ => {
            *conn = None;
            None
        }
    }
}

/// A standby, or a primary not yet taking writes (just promoted, or being demoted): what
/// libpq's `target_session_attrs=read-write` refuses.
pub async fn role_of(conn: &mut PgConnection) -> Result<Role, sqlx::Error> {
    let sql = "select pg_is_in_recovery() or current_setting('transaction_read_only')::bool";
    let standby: bool = sqlx::query_scalar(sql).fetch_one(conn).await?;
    Ok(if standby {
        Role::Standby
    } else {
        Role::Primary
    })
}

/// The error a connection to a standby is refused with: an I/O error, which callers treat as
/// transient (the wallet-service answers 503 and retries).
pub fn standby_refused() -> sqlx::Error {
    sqlx::Error::Io(std::io::Error::other(
        "connected to a PostgreSQL standby; waiting for the primary",
    ))
}

/// A pool (sized and timed by `pool`, every host's options passed through `session`) on the
/// one host of `target`, or on the primary of several, followed through failovers by a task
/// that lives as long as the pool. Lazy: nothing is connected until first use.
pub async fn primary_pool(
    target: DbTarget,
    pool: PgPoolOptions,
    session: impl Fn(PgConnectOptions) -> PgConnectOptions,
) -> PgPool {
    if !target.is_replicated() {
        return pool.connect_lazy_with(session(target.options()));
    }
    let found = target.find_primary(&target.options()).await;
    metrics::gauge!("db_primary_available").set(if found.is_some() { 1.0 } else { 0.0 });
    let options = found.unwrap_or_else(|| {
        tracing::warn!("no PostgreSQL host answers as the primary yet; waiting for one");
        target.options()
    });
    tracing::info!(
        hosts = target.hosts().len(),
        primary = %format!("{}:{}", options.get_host(), options.get_port()),
        "PostgreSQL with standbys: following the primary",
    );
    let pool = pool
        // A failover can leave a new connection on a demoted primary: refuse it (transient).
        .after_connect(|conn, _| {
            Box::pin(async move {
                match role_of(conn).await? {
                    Role::Primary => Ok(()),
                    Role::Standby => Err(standby_refused()),
                }
            })
        })
        .connect_lazy_with(session(options));
    tokio::spawn(follow_primary(pool.clone(), target));
    pool
}

/// Keeps `pool` pointed at the primary until the pool is closed: every [`WATCH_EVERY`] the
/// host in use is asked whether it is still the primary, over one connection kept for it (a
/// new one only after a failure, not a backend started twice a second); if it is not, or does
/// not answer, every host is asked, and the pool's new connections go to the one that is.
pub async fn follow_primary(pool: PgPool, target: DbTarget) {
    let mut ticker = tokio::time::interval(WATCH_EVERY);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut lost_since: Option<std::time::Instant> = None;
    let mut watch: Option<PgConnection> = None;
    while !pool.is_closed() {
        ticker.tick().await;
        let current = (*pool.connect_options()).clone();
        if ask(&mut watch, &current).await == Some(Role::Primary) {
            continue;
        }
        // Not the primary any more, or gone: the next ask connects to wherever the pool goes.
        watch = None;
        let started = *lost_since.get_or_insert_with(std::time::Instant::now);
        metrics::gauge!("db_primary_available").set(0.0);
        match target.find_primary(&current).await {
            Some(next) => {
                let (host, port) = (next.get_host().to_string(), next.get_port());
                pool.set_connect_options(next);
                lost_since = None;
                metrics::gauge!("db_primary_available").set(1.0);
                metrics::counter!("db_primary_changes_total").increment(1);
                tracing::warn!(
                    %host,
                    port,
                    after_ms = started.elapsed().as_millis() as u64,
                    "PostgreSQL primary is now {host}:{port}; new connections go there",
                );
            }
            // Asked every WATCH_EVERY for as long as the failover takes.
            None => crate::warn_throttled!(
                for_ms = started.elapsed().as_millis() as u64,
                "no PostgreSQL host answers as the primary yet (failover in progress?)",
            ),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_host() {
        let t = DbTarget::parse("postgres://postgres@127.0.0.1:54320/wallet").unwrap();
        assert_eq!(t.hosts(), &[("127.0.0.1".to_string(), 54320)]);
        assert!(!t.is_replicated());
        assert_eq!(t.options().get_port(), 54320);
        assert_eq!(t.options().get_database(), Some("wallet"));
    }

    #[test]
    fn several_hosts_as_libpq_writes_them() {
        let t = DbTarget::parse(
            "postgres://app:pw@10.0.0.1:5432,10.0.0.2,db3:6000/wallet?target_session_attrs=read-write&sslmode=disable",
        )
        .unwrap();
        assert_eq!(
            t.hosts(),
            &[
                ("10.0.0.1".to_string(), 5432),
                ("10.0.0.2".to_string(), 5432),
                ("db3".to_string(), 6000)
            ]
        );
        assert!(t.is_replicated());
        let o = t.options();
        assert_eq!((o.get_host(), o.get_port()), ("10.0.0.1", 5432));
        assert_eq!(o.get_username(), "app");
        assert_eq!(o.get_database(), Some("wallet"));
        let other = on_host(&o, &t.hosts()[2]);
        assert_eq!((other.get_host(), other.get_port()), ("db3", 6000));
        assert_eq!(other.get_username(), "app");
    }

    #[test]
    fn refuses_what_is_not_a_target() {
        assert!(matches!(
            DbTarget::parse("127.0.0.1:5432"),
            Err(TargetError::NotAUrl)
        ));
        assert!(matches!(
            DbTarget::parse("postgres://[::1/wallet"),
            Err(TargetError::BadPort(_))
        ));
        assert!(matches!(
            DbTarget::parse("postgres://h:port/wallet"),
            Err(TargetError::BadPort(_))
        ));
    }

    #[test]
    fn ipv6_and_socket_hosts() {
        let t = DbTarget::parse("postgres://u@[::1]:6000,[fe80::2]/db").unwrap();
        assert_eq!(
            t.hosts(),
            &[("::1".to_string(), 6000), ("fe80::2".to_string(), 5432)]
        );
        let t = DbTarget::parse("postgres:///wallet?host=/run/pg&port=5433").unwrap();
        assert_eq!(t.hosts().len(), 1);
        let socket = t.options().get_socket().map(|p| p.to_path_buf());
        assert_eq!(socket, Some(std::path::PathBuf::from("/run/pg")));
        assert_eq!(t.options().get_port(), 5433);
        assert!(!t.is_replicated());
    }

    #[test]
    fn drops_only_the_named_parameter() {
        assert_eq!(
            drop_param(
                "/db?target_session_attrs=read-write",
                "target_session_attrs"
            ),
            "/db"
        );
        assert_eq!(
            drop_param("/db?a=1&target_session_attrs=x&b=2", "target_session_attrs"),
            "/db?a=1&b=2"
        );
        assert_eq!(drop_param("/db", "target_session_attrs"), "/db");
    }
}
