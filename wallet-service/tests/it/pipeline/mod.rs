//! The pipeline across processes' worth of components, in one test process, against the
//! real PostgreSQL, RabbitMQ and Kafka broker: each test gets a fresh database and its own
//! prefixed exchanges, queues and topics. `flow`: payments from the API to final balances,
//! through the queue, the processor, the gateway and the result consumer; `refunds`: refunds
//! the same way back; `events`: the downstream events relayed to Kafka.

use std::time::Duration;

mod events;
mod flow;
mod refunds;

const DEADLINE: Duration = Duration::from_secs(60);
