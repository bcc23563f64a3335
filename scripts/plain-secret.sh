#!/usr/bin/env bash
# Print the Secret the plain manifests in k8s/manifests/ read (chancepay-secrets), with fresh
# random passwords, as YAML on stdout. The same keys and formats the Helm chart generates
# (charts/chancepay/templates/_helpers.tpl, chancepay.secretData); tests/deploy runs this script
# and checks that, and tests/chart starts the servers with its output.
#
#   scripts/plain-secret.sh [NAMESPACE] > chancepay-secrets.yaml
#   kubectl apply -f chancepay-secrets.yaml    # keep this file: the data volumes need these passwords
set -euo pipefail

namespace="${1:-chancepay}"
gen() { LC_ALL=C tr -dc 'A-Za-z0-9' </dev/urandom | head -c "${1:-24}" || true; }

token=$(gen 40)
message_key=$(gen 48)
root=$(gen)
orch=$(gen)
wallet=$(gen)
mq=$(gen)
cookie=$(gen 32)
db="chancepay-mariadb:3306"

init_sql="CREATE USER IF NOT EXISTS 'root'@'%' IDENTIFIED BY '${root}';
ALTER USER 'root'@'%' IDENTIFIED BY '${root}';
GRANT ALL PRIVILEGES ON *.* TO 'root'@'%' WITH GRANT OPTION;
CREATE USER IF NOT EXISTS 'mysql'@'localhost' IDENTIFIED VIA unix_socket;"
definitions="{\"permissions\":[{\"configure\":\".*\",\"read\":\".*\",\"user\":\"chancepay\",\"vhost\":\"/\",\"write\":\".*\"}],\"policies\":[{\"apply-to\":\"queues\",\"definition\":{\"dead-letter-strategy\":\"at-least-once\",\"overflow\":\"reject-publish\"},\"name\":\"chancepay-payments-dead-lettering\",\"pattern\":\"^chancepay\\\\.payments\$\",\"priority\":10,\"vhost\":\"/\"}],\"users\":[{\"name\":\"chancepay\",\"password\":\"${mq}\",\"tags\":[]}],\"vhosts\":[{\"name\":\"/\"}]}"

indent() { sed 's/^/    /'; }

cat <<YAML
apiVersion: v1
kind: Secret
metadata:
  name: chancepay-secrets
  namespace: ${namespace}
type: Opaque
stringData:
  internal-token: "${token}"
  message-key: "${message_key}"
  mariadb-root-password: "${root}"
  orchestrator-db-password: "${orch}"
  wallet-db-password: "${wallet}"
  admin-db-url: "mysql://root:${root}@${db}/"
  orchestrator-db-url: "mysql://chancepay_orchestrator:${orch}@${db}/chancepay_orchestrator"
  wallet-db-url: "mysql://chancepay_wallet:${wallet}@${db}/chancepay_wallet"
  mariadb-init.sql: |
$(printf '%s\n' "$init_sql" | indent)
  rabbitmq-password: "${mq}"
  rabbitmq-erlang-cookie: "${cookie}"
  amqp-url: "amqp://chancepay:${mq}@chancepay-rabbitmq:5672/%2F"
  rabbitmq-definitions.json: |
$(printf '%s\n' "$definitions" | indent)
YAML
