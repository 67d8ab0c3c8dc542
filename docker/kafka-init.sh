#!/usr/bin/env bash
# One-shot job of docker-compose.yml (service kafka-init): creates the topics of the result
# hop on the Kafka broker. The services create them too (TopicAlreadyExists is fine); this
# makes the partition counts explicit and the broker ready before they start.
set -euo pipefail
BOOTSTRAP=${KAFKA_BOOTSTRAP:-kafka:9092}
TOPICS=/opt/kafka/bin/kafka-topics.sh
deadline=$((SECONDS + 60))
until "$TOPICS" --bootstrap-server "$BOOTSTRAP" --list >/dev/null 2>&1; do
    if ((SECONDS >= deadline)); then
        echo "kafka-init: broker $BOOTSTRAP not answering after 60 s" >&2
        exit 1
    fi
    sleep 1
done
"$TOPICS" --bootstrap-server "$BOOTSTRAP" --create --if-not-exists \
    --topic payment.results --partitions 3 --replication-factor 1
"$TOPICS" --bootstrap-server "$BOOTSTRAP" --create --if-not-exists \
    --topic payment.results.dlq --partitions 1 --replication-factor 1
"$TOPICS" --bootstrap-server "$BOOTSTRAP" --describe --topic 'payment\.results.*'
echo "kafka-init: topics ready"
