#!/usr/bin/env bash
# `make reset`: remove what `make run` made on this machine — the two databases (every payment in
# them), their two users, and on RabbitMQ's default vhost the two queues and the dead-lettering
# policy. The servers keep running; the next `make run` provisions everything again. Local only:
# it talks to the MariaDB socket as root and to the local RabbitMQ node with rabbitmqctl.
set -euo pipefail
socket="${MARIADB_SOCKET:-/run/mysqld/mysqld.sock}"
mariadb --protocol=socket --socket="$socket" -uroot <<'SQL'
DROP DATABASE IF EXISTS chancepay_orchestrator;
DROP DATABASE IF EXISTS chancepay_wallet;
DROP USER IF EXISTS 'chancepay_orchestrator'@'%';
DROP USER IF EXISTS 'chancepay_wallet'@'%';
SQL
echo "reset: databases chancepay_orchestrator, chancepay_wallet and their users dropped"
for queue in chancepay.payments chancepay.payments.dlq; do
  if rabbitmqctl -q list_queues name 2>/dev/null | grep -qx "$queue"; then
    rabbitmqctl -q delete_queue "$queue" >/dev/null
    echo "reset: queue $queue deleted"
  fi
done
if rabbitmqctl -q list_policies 2>/dev/null | grep -q chancepay-payments-dead-lettering; then
  rabbitmqctl -q clear_policy chancepay-payments-dead-lettering >/dev/null
  echo "reset: policy chancepay-payments-dead-lettering cleared"
fi
