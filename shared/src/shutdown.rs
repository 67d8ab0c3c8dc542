//! The shutdown signal every long-running task listens to.

use tokio::sync::watch;

/// A cloneable handle that resolves once shutdown was requested.
#[derive(Clone, Debug)]
pub struct Shutdown(watch::Receiver<bool>);

/// The sending half: call [`Trigger::fire`] to start a graceful shutdown.
#[derive(Debug)]
pub struct Trigger(watch::Sender<bool>);

pub fn channel() -> (Trigger, Shutdown) {
    let (tx, rx) = watch::channel(false);
    (Trigger(tx), Shutdown(rx))
}

impl Trigger {
    pub fn fire(&self) {
        let _ = self.0.send(true);
    }
}

impl Shutdown {
    pub fn is_triggered(&self) -> bool {
        *self.0.borrow()
    }

    /// Resolves when shutdown was requested (immediately if it already was).
    pub async fn wait(&mut self) {
        let _ = self.0.wait_for(|v| *v).await;
    }

    /// Sleeps for `duration`, the pause of every retry loop: false when shutdown came
    /// first (or had been requested already), so the loop stops instead of waiting on.
    pub async fn sleep(&mut self, duration: std::time::Duration) -> bool {
        tokio::select! {
            _ = tokio::time::sleep(duration) => true,
            _ = self.wait() => false,
        }
    }
}

/// Resolves on SIGTERM or Ctrl-C.
pub async fn signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        _ = ctrl_c => {},
        _ = term => {},
    }
    tracing::info!("shutdown requested, draining in-flight work");
}

/// Spawns a task that fires the trigger on SIGTERM/Ctrl-C and returns the listening handle.
pub fn on_signal() -> Shutdown {
    let (trigger, shutdown) = channel();
    tokio::spawn(async move {
        signal().await;
        trigger.fire();
    });
    shutdown
}

/// A started service: the address it listens on and its tasks, which finish once shutdown
/// was triggered and their in-flight work drained.
pub struct Running {
    pub addr: std::net::SocketAddr,
    /// Where `GET /metrics` is served (its own listener), if this service serves it.
    pub metrics_addr: Option<std::net::SocketAddr>,
    tasks: tokio::task::JoinSet<()>,
}

impl Running {
    pub fn new(addr: std::net::SocketAddr, tasks: tokio::task::JoinSet<()>) -> Self {
        Self {
            addr,
            metrics_addr: None,
            tasks,
        }
    }

    /// Records the metrics listener's address.
    pub fn with_metrics_addr(mut self, addr: std::net::SocketAddr) -> Self {
        self.metrics_addr = Some(addr);
        self
    }

    /// Waits for every task to drain (call after triggering shutdown).
    pub async fn wait(mut self) {
        while self.tasks.join_next().await.is_some() {}
    }
}
