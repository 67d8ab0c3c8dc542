# shellcheck shell=bash
# The highly available topology's parts (scripts/up --ha), sourced after scripts/lib.sh:
# PostgreSQL under pg_auto_failover, the RabbitMQ cluster, HAProxy in front of the API.
# shellcheck source=scripts/lib/ha-postgres.sh
source "$SCRIPTS_DIR/lib/ha-postgres.sh"
# shellcheck source=scripts/lib/ha-rabbitmq.sh
source "$SCRIPTS_DIR/lib/ha-rabbitmq.sh"
# shellcheck source=scripts/lib/ha-haproxy.sh
source "$SCRIPTS_DIR/lib/ha-haproxy.sh"
