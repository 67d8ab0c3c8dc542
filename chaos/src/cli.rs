//! The command line: where the system under test is and how hard to drive it, and the two
//! run profiles. Everything but the seed and the profile comes from the environment
//! `scripts/chaos` sets up.

use clap::Parser;

#[derive(Parser, Debug, Clone)]
#[command(
    name = "chaos",
    about = "Fault-injection suite for the payment pipeline (run via scripts/chaos)"
)]
pub(crate) struct Args {
    /// Seed of the load mix and the fault schedule (random when omitted; always printed).
    #[arg(long)]
    pub(crate) seed: Option<u64>,
    /// `short` (about 2 minutes, one fault of each kind) or `long` (a soak: 10 minutes, 5 rounds).
    #[arg(long, default_value = "short")]
    pub(crate) profile: String,
    /// Payments offered per second.
    #[arg(long)]
    pub(crate) rate: Option<f64>,
    /// Wallets the load spreads over.
    #[arg(long, default_value_t = 40)]
    pub(crate) wallets: usize,
    #[arg(long, env = "WALLET_URL")]
    pub(crate) wallet_url: String,
    #[arg(long, env = "GATEWAY_URL")]
    pub(crate) gateway_url: String,
    #[arg(long, env = "DATABASE_URL")]
    pub(crate) database_url: String,
    #[arg(long, env = "AMQP_URL")]
    pub(crate) amqp_url: String,
    #[arg(long, env = "KAFKA_BROKERS")]
    pub(crate) kafka_brokers: String,
    /// The local identity provider that mints the tokens (the default stack's sign-in).
    #[arg(long, env = "IDP_URL")]
    pub(crate) idp_url: Option<String>,
    /// HS256 secret, when the stack runs the development sign-in instead.
    #[arg(long, env = "AUTH_JWT_SECRET", hide_env_values = true)]
    pub(crate) jwt_secret: Option<String>,
    #[arg(long, env = "AUTH_ISSUER", hide = true)]
    pub(crate) auth_issuer: Option<String>,
    #[arg(long, env = "AUTH_AUDIENCE", hide = true)]
    pub(crate) auth_audience: Option<String>,
    /// RabbitMQ management API (for the dead-letter queue depth).
    #[arg(long, default_value = "http://guest:guest@127.0.0.1:15672")]
    pub(crate) rabbit_api: String,
    /// The gateway's durable record of charges (one JSON line per charge or voided key).
    #[arg(long, env = "GATEWAY_DATA_FILE")]
    pub(crate) gateway_data_file: String,
    /// Where scripts/chaos-ctl lives.
    #[arg(long, default_value = "scripts/chaos-ctl")]
    pub(crate) ctl: String,
    /// The wallet-service reconciler deadline the system runs with (scripts/chaos lowers it
    /// to 8 s); the gateway outage must outlast it.
    #[arg(long, env = "RECONCILE_AFTER_SECS", default_value_t = 60.0)]
    pub(crate) reconcile_after_secs: f64,
}

/// How long and how hard a run drives the system, and how many rounds of faults it injects.
pub(crate) struct Profile {
    pub(crate) load_secs: f64,
    pub(crate) rate: f64,
    pub(crate) rounds: usize,
}

impl Profile {
    /// The profile `--profile` names: `short` or `long`.
    pub(crate) fn named(name: &str) -> anyhow::Result<Self> {
        Ok(match name {
            "short" => Profile {
                load_secs: 75.0,
                rate: 20.0,
                rounds: 1,
            },
            "long" => Profile {
                load_secs: 600.0,
                rate: 30.0,
                rounds: 5,
            },
            other => anyhow::bail!("unknown profile {other:?} (short or long)"),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    #[test]
    fn the_command_line_is_well_formed() {
        Args::command().debug_assert();
    }

    #[test]
    fn profiles_are_short_and_long() {
        assert_eq!(Profile::named("short").unwrap().rounds, 1);
        assert_eq!(Profile::named("long").unwrap().rounds, 5);
        let err = Profile::named("medium").err().unwrap().to_string();
        assert_eq!(err, "unknown profile \"medium\" (short or long)");
    }
}
