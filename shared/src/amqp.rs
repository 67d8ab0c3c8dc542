//! Connecting to RabbitMQ: one node, or any node of a cluster.
//!
//! `AMQP_URL` may list several nodes, comma-separated
//! (`amqp://u:p@10.0.0.1:5672/%2f,amqp://u:p@10.0.0.2:5672/%2f`). A connection is made to the
//! node that worked last; when that one is gone the others are tried in turn, so a client
//! rides out the loss of a node as long as one is left (the quorum queue keeps its messages
//! on a majority of them).

use lapin::{Connection, ConnectionProperties};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

/// How long one node may take to accept a connection before the next is tried: a hung node
/// must not hold the client longer than the failover itself.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// The nodes of `AMQP_URL`, and which one to try first.
#[derive(Debug)]
pub struct AmqpNodes {
    urls: Vec<String>,
    next: AtomicUsize,
}

impl AmqpNodes {
    pub fn parse(list: &str) -> Self {
        let urls = list
            .split(',')
            .map(str::trim)
            .filter(|u| !u.is_empty())
            .map(str::to_string)
            .collect();
        Self {
            urls,
            next: AtomicUsize::new(0),
        }
    }

    pub fn len(&self) -> usize {
        self.urls.len()
    }

    pub fn is_empty(&self) -> bool {
        self.urls.is_empty()
    }

    /// A connection to the first node that accepts one, starting with the one that worked
    /// last; the last node's error if none does.
    pub async fn connect(&self) -> lapin::Result<Connection> {
        let start = self.next.load(Ordering::Relaxed);
        let mut last: lapin::Error = std::io::Error::other("AMQP_URL lists no node").into();
        for i in 0..self.urls.len() {
            let index = (start + i) % self.urls.len();
            let url = &self.urls[index];
            let attempt = Connection::connect(url, ConnectionProperties::default());
            match tokio::time::timeout(CONNECT_TIMEOUT, attempt).await {
                Ok(Ok(conn)) => {
                    if index != start {
                        tracing::warn!(node = %redact(url), "connected to another RabbitMQ node");
                    }
                    self.next.store(index, Ordering::Relaxed);
                    return Ok(conn);
                }
                Ok(Err(e)) => {
                    tracing::debug!(node = %redact(url), error = %e, "RabbitMQ node refused");
                    last = e;
                }
                Err(_) => {
                    tracing::debug!(node = %redact(url), "RabbitMQ node did not answer in time");
                    last = std::io::Error::from(std::io::ErrorKind::TimedOut).into();
                }
            }
        }
        Err(last)
    }
}

/// The URL without its password, for logs.
fn redact(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else {
        return url.to_string();
    };
    match rest.rsplit_once('@') {
        Some((credentials, node)) => {
            let user = credentials.split(':').next().unwrap_or("");
            format!("{scheme}://{user}@{node}")
        }
        None => url.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lists_nodes_and_hides_passwords() {
        let n = AmqpNodes::parse(
            "amqp://g:secret@127.0.0.1:5681/%2f, amqp://g:secret@127.0.0.1:5682/%2f,",
        );
        assert_eq!(n.len(), 2);
        assert_eq!(redact(&n.urls[1]), "amqp://g@127.0.0.1:5682/%2f");
        assert_eq!(redact("amqp://127.0.0.1:5672"), "amqp://127.0.0.1:5672");
    }

    #[tokio::test]
    async fn tries_every_node_then_fails() {
        // Two ports nothing listens on: both refused, the error comes back, no hang.
        let n = AmqpNodes::parse("amqp://127.0.0.1:1/%2f,amqp://127.0.0.1:2/%2f");
        assert!(n.connect().await.is_err());
    }
}
