#!/usr/bin/env bash
# `make reset`: remove what `make run` made on this machine — the two databases (every payment in
# them), their two users, and on RabbitMQ's default vhost the two queues and the dead-lettering
# policy. The servers keep running; the next `make run` provisions everything again. Local only:
# it talks to the MariaDB socket as root and to the local RabbitMQ node with rabbitmqctl.
set -euo pipefail
socket="${MARIADB_SOCKET:-/run/mysqld/mysqld.sock}"
as_root() { if [ "$(id -u)" -eq 0 ]; then "$@"; else sudo "$@"; fi; }
as_root mariadb --protocol=socket --socket="$socket" -uroot <<'SQL'
DROP DATABASE IF EXISTS chancepay_orchestrator;
DROP DATABASE IF EXISTS chancepay_wallet;
DROP USER IF EXISTS 'chancepay_orchestrator'@'%';
DROP USER IF EXISTS 'chancepay_wallet'@'%';
SQL
echo "reset: databases chancepay_orchestrator, chancepay_wallet and their users dropped"
# One look at the broker, its errors shown: a node rabbitmqctl cannot reach fails the reset.
queues="$(as_root rabbitmqctl -q list_queues name)"
policies="$(as_root rabbitmqctl -q list_policies)"
for queue in chancepay.payments chancepay.payments.dlq; do
  if grep -qx "$queue" <<<"$queues"; then
    as_root rabbitmqctl -q delete_queue "$queue" >/dev/null
    echo "reset: queue $queue deleted"
  fi
done
if grep -q chancepay-payments-dead-lettering <<<"$policies"; then
  as_root rabbitmqctl -q clear_policy chancepay-payments-dead-lettering >/dev/null
  echo "reset: policy chancepay-payments-dead-lettering cleared"
fi
