{{/*
Names, labels and shared fragments. Every resource name comes from chancepay.fullname so two
releases can share a namespace.
*/}}

{{- define "chancepay.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{- define "chancepay.fullname" -}}
{{- if .Values.fullnameOverride }}
{{- .Values.fullnameOverride | trunc 63 | trimSuffix "-" }}
{{- else }}
{{- $name := default .Chart.Name .Values.nameOverride }}
{{- if contains $name .Release.Name }}
{{- .Release.Name | trunc 63 | trimSuffix "-" }}
{{- else }}
{{- printf "%s-%s" .Release.Name $name | trunc 63 | trimSuffix "-" }}
{{- end }}
{{- end }}
{{- end }}

{{- define "chancepay.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* Name of one component's resources: chancepay.componentName (dict "ctx" $ "component" "wallet")
and optionally "max" (default 63). The release part is cut, never the component: two components
of a long release name stay distinct. */}}
{{- define "chancepay.componentName" -}}
{{- $max := int (.max | default 63) }}
{{- $base := include "chancepay.fullname" .ctx | trunc (int (sub $max (add1 (len .component)))) | trimSuffix "-" }}
{{- printf "%s-%s" $base .component }}
{{- end }}

{{- define "chancepay.selectorLabels" -}}
app.kubernetes.io/name: {{ include "chancepay.name" .ctx }}
app.kubernetes.io/instance: {{ .ctx.Release.Name }}
app.kubernetes.io/component: {{ .component }}
{{- end }}

{{- define "chancepay.labels" -}}
helm.sh/chart: {{ include "chancepay.chart" .ctx }}
{{ include "chancepay.selectorLabels" . }}
app.kubernetes.io/version: {{ .ctx.Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .ctx.Release.Service }}
app.kubernetes.io/part-of: chancepay
{{- with .ctx.Values.commonLabels }}
{{ toYaml . }}
{{- end }}
{{- end }}

{{- define "chancepay.serviceAccountName" -}}
{{- if .Values.serviceAccount.create }}
{{- default (include "chancepay.fullname" .) .Values.serviceAccount.name }}
{{- else }}
{{- default "default" .Values.serviceAccount.name }}
{{- end }}
{{- end }}

{{/*
Registry prefix of an image ("" or "registry.example/"): the chart's own setting for that image
if set, else global.imageRegistry (what a parent chart or `--set global.imageRegistry=` sets for
every image), else none. chancepay.registryPrefix (dict "ctx" $ "registry" .Values.image.registry)
*/}}
{{- define "chancepay.registryPrefix" -}}
{{- $global := .ctx.Values.global | default dict }}
{{- $registry := .registry | default $global.imageRegistry | default "" }}
{{- if $registry }}{{ trimSuffix "/" $registry }}/{{ end }}
{{- end }}

{{/* Image reference of a role: chancepay.image (dict "ctx" $ "role" "scanner") */}}
{{- define "chancepay.image" -}}
{{- $img := index .ctx.Values.image .role }}
{{- $prefix := include "chancepay.registryPrefix" (dict "ctx" .ctx "registry" .ctx.Values.image.registry) }}
{{- printf "%s%s:%s" $prefix $img.repository (default .ctx.Chart.AppVersion $img.tag) }}
{{- with $img.digest }}@{{ . }}{{ end }}
{{- end }}

{{/* Image of an in-chart server: chancepay.serverImage (dict "ctx" $ "image" .Values.mariadb.image) */}}
{{- define "chancepay.serverImage" -}}
{{- include "chancepay.registryPrefix" (dict "ctx" .ctx "registry" .image.registry) }}{{ .image.repository }}:{{ .image.tag }}
{{- end }}

{{/*
Bytes of a Kubernetes memory quantity, printed as an integer: 512Mi, 1Gi, 1.5Gi, 1024Ki, 500M,
2G, 64k, 536870912 (a YAML number too). Other forms Kubernetes accepts (exponents such as 5e8,
milli-bytes such as 500m) and typos fail the render, naming the value.
chancepay.memoryBytes (dict "value" "512Mi" "what" "rabbitmq.resources.limits.memory")
*/}}
{{- define "chancepay.memoryBytes" -}}
{{- $v := .value }}
{{- if not (kindIs "string" $v) }}
{{- $v = printf "%d" (int64 $v) }}
{{- end }}
{{- if not (regexMatch "^[0-9]+(\\.[0-9]+)?(Ki|Mi|Gi|Ti|Pi|Ei|k|M|G|T|P|E)?$" $v) }}
{{- fail (printf "%s: cannot read %q as a memory quantity; write it as a whole or decimal number with one of the suffixes Ki, Mi, Gi, Ti, k, M, G, T (or plain bytes), e.g. 512Mi" .what $v) }}
{{- end }}
{{- $num := regexReplaceAll "^([0-9.]+).*$" $v "${1}" }}
{{- $unit := regexReplaceAll "^[0-9.]+" $v "" }}
{{- $mult := dict "" 1 "k" 1000 "M" 1000000 "G" 1000000000 "T" 1000000000000 "P" 1000000000000000 "E" 1000000000000000000
    "Ki" 1024 "Mi" 1048576 "Gi" 1073741824 "Ti" 1099511627776 "Pi" 1125899906842624 "Ei" 1152921504606846976 }}
{{- if contains "." $num }}
{{- /* A decimal: rounded up to a whole byte, as Kubernetes does. */}}
{{- printf "%d" (int64 (ceil (mulf (float64 $num) (index $mult $unit)))) }}
{{- else }}
{{- printf "%d" (mul (int64 $num) (index $mult $unit)) }}
{{- end }}
{{- end }}

{{- define "chancepay.secretName" -}}
{{- default (printf "%s-secrets" (include "chancepay.fullname" .)) .Values.secrets.existingSecret }}
{{- end }}

{{/* The in-chart servers' StatefulSet (and Service) names: at most 52 characters, since each pod
gets the label controller-revision-hash=<name>-<10 characters>, and a label value is at most 63. */}}
{{- define "chancepay.mariadbHost" -}}
{{- include "chancepay.componentName" (dict "ctx" . "component" "mariadb" "max" 52) }}
{{- end }}

{{- define "chancepay.rabbitmqHost" -}}
{{- include "chancepay.componentName" (dict "ctx" . "component" "rabbitmq" "max" 52) }}
{{- end }}

{{/* The in-chart broker's node names and their stable DNS names (StatefulSet pod + headless
Service), one per replica: rabbit@<release>-rabbitmq-<i>.<release>-rabbitmq.<ns>.svc.cluster.local */}}
{{- define "chancepay.rabbitmqPodHost" -}}
{{- printf "%s-%d.%s.%s.svc.%s" (include "chancepay.rabbitmqHost" .ctx) (int .i) (include "chancepay.rabbitmqHost" .ctx) .ctx.Release.Namespace .ctx.Values.clusterDomain }}
{{- end }}

{{- define "chancepay.orchestratorURL" -}}
{{- printf "http://%s:%v" (include "chancepay.componentName" (dict "ctx" . "component" "orchestrator")) .Values.orchestrator.service.port }}
{{- end }}

{{- define "chancepay.scannerURL" -}}
{{- printf "http://%s:%v" (include "chancepay.componentName" (dict "ctx" . "component" "scanner")) .Values.scanner.service.port }}
{{- end }}

{{- define "chancepay.walletURL" -}}
{{- printf "http://%s:%v" (include "chancepay.componentName" (dict "ctx" . "component" "wallet")) .Values.wallet.service.port }}
{{- end }}

{{/*
A generated secret value that survives upgrades: the value from values.yaml if set, else the one
already stored in the release's Secret (lookup), else a fresh random one.
chancepay.secretValue (dict "ctx" $ "key" "internal-token" "value" .Values.secrets.internalToken "length" 40)
*/}}
{{- define "chancepay.secretValue" -}}
{{- if .value }}
{{- .value }}
{{- else }}
{{- $existing := lookup "v1" "Secret" .ctx.Release.Namespace (include "chancepay.secretName" .ctx) }}
{{- if and $existing (hasKey ($existing.data | default dict) .key) }}
{{- index $existing.data .key | b64dec }}
{{- else }}
{{- randAlphaNum (int .length) }}
{{- end }}
{{- end }}
{{- end }}

{{/*
Every value of the chart's Secret, as JSON, computed ONCE per render and remembered in
.Values._chancepayGenerated: the Secret and every checksum annotation then see the same passwords
(a second randAlphaNum would make a checksum of values nobody uses, and restart every pod on the
first upgrade). Empty ("{}") with secrets.existingSecret.
*/}}
{{- define "chancepay.secretData" -}}
{{- if not (hasKey .Values "_chancepayGenerated") }}
{{- $data := dict }}
{{- if not .Values.secrets.existingSecret }}
{{- $s := .Values.secrets }}
{{- $token := include "chancepay.secretValue" (dict "ctx" . "key" "internal-token" "value" $s.internalToken "length" 40) }}
{{- $_ := set $data "internal-token" $token }}
{{- $_ := set $data "message-key" (include "chancepay.secretValue" (dict "ctx" . "key" "message-key" "value" $s.messageKey "length" 48)) }}
{{- with $s.messageKeyPrevious }}
{{- $_ := set $data "message-key-previous" . }}
{{- end }}
{{- /* The first API client's key (services/chancepay/core/clients.py: cpk_<12 hex>_<43 characters>),
       kept like the passwords; the migrate Job registers it, the helm test pays with it. */}}
{{- $apiKey := include "chancepay.secretValue" (dict "ctx" . "key" "api-key" "value" $s.apiKey "length" 0) }}
{{- if not $apiKey }}
{{- $apiKey = printf "cpk_%s_%s" (randAlphaNum 32 | sha256sum | trunc 12) (randAlphaNum 43) }}
{{- end }}
{{- $_ := set $data "api-key" $apiKey }}
{{- $dbTls := ternary (printf "?ssl-ca=%s" (include "chancepay.tlsCA" .)) "" .Values.tls.enabled }}
{{- $mqScheme := ternary "amqps" "amqp" .Values.tls.enabled }}
{{- $mqTls := ternary (printf "?cafile=%s" (include "chancepay.tlsCA" .)) "" .Values.tls.enabled }}
{{- if .Values.mariadb.enabled }}
{{- $host := printf "%s:%v" (include "chancepay.mariadbHost" .) .Values.mariadb.service.port }}
{{- $rootPw := include "chancepay.secretValue" (dict "ctx" . "key" "mariadb-root-password" "value" $s.mariadbRootPassword "length" 24) }}
{{- $orchPw := include "chancepay.secretValue" (dict "ctx" . "key" "orchestrator-db-password" "value" $s.orchestratorDbPassword "length" 24) }}
{{- $walletPw := include "chancepay.secretValue" (dict "ctx" . "key" "wallet-db-password" "value" $s.walletDbPassword "length" 24) }}
{{- $_ := set $data "mariadb-root-password" $rootPw }}
{{- $_ := set $data "orchestrator-db-password" $orchPw }}
{{- $_ := set $data "wallet-db-password" $walletPw }}
{{- $_ := set $data "admin-db-url" (printf "mysql://root:%s@%s/%s" $rootPw $host $dbTls) }}
{{- $_ := set $data "orchestrator-db-url" (printf "mysql://chancepay_orchestrator:%s@%s/chancepay_orchestrator%s" $orchPw $host $dbTls) }}
{{- $_ := set $data "wallet-db-url" (printf "mysql://chancepay_wallet:%s@%s/chancepay_wallet%s" $walletPw $host $dbTls) }}
{{- /* Read by mariadbd --init-file at every start: re-applies the root password from this Secret,
       and makes the probe user: 'mysql'@'localhost', unix-socket only (so only the server's own
       uid inside the container), no privileges. One statement per line (how --init-file reads). */}}
{{- $_ := set $data "mariadb-init.sql" (printf "CREATE USER IF NOT EXISTS 'root'@'%%' IDENTIFIED BY '%s';\nALTER USER 'root'@'%%' IDENTIFIED BY '%s';\nGRANT ALL PRIVILEGES ON *.* TO 'root'@'%%' WITH GRANT OPTION;\nCREATE USER IF NOT EXISTS 'mysql'@'localhost' IDENTIFIED VIA unix_socket;\n" $rootPw $rootPw) }}
{{- else }}
{{- $_ := set $data "orchestrator-db-url" (required "external.orchestratorDbUrl is required when mariadb.enabled=false" .Values.external.orchestratorDbUrl) }}
{{- $_ := set $data "wallet-db-url" (required "external.walletDbUrl is required when mariadb.enabled=false" .Values.external.walletDbUrl) }}
{{- with .Values.external.adminDbUrl }}
{{- $_ := set $data "admin-db-url" . }}
{{- end }}
{{- end }}
{{- if .Values.rabbitmq.enabled }}
{{- $mqPw := include "chancepay.secretValue" (dict "ctx" . "key" "rabbitmq-password" "value" $s.rabbitmqPassword "length" 24) }}
{{- $_ := set $data "rabbitmq-password" $mqPw }}
{{- if gt (int .Values.rabbitmq.replicas) 1 }}
{{- /* A cluster: every node's URL, comma-separated; the roles try them in turn. */}}
{{- $urls := list }}
{{- range $i := until (int .Values.rabbitmq.replicas) }}
{{- $urls = append $urls (printf "%s://chancepay:%s@%s:%v/%%2F%s" $mqScheme $mqPw (include "chancepay.rabbitmqPodHost" (dict "ctx" $ "i" $i)) $.Values.rabbitmq.service.port $mqTls) }}
{{- end }}
{{- $_ := set $data "amqp-url" (join "," $urls) }}
{{- else }}
{{- $_ := set $data "amqp-url" (printf "%s://chancepay:%s@%s:%v/%%2F%s" $mqScheme $mqPw (include "chancepay.rabbitmqHost" .) .Values.rabbitmq.service.port $mqTls) }}
{{- end }}
{{- $_ := set $data "rabbitmq-erlang-cookie" (include "chancepay.secretValue" (dict "ctx" . "key" "rabbitmq-erlang-cookie" "value" "" "length" 32)) }}
{{- /* Imported by RabbitMQ at every boot: creates (or re-passwords) the chancepay user, and applies
       the at-least-once dead-lettering policy of chancepay.payments (services/chancepay/core/topology.py
       POLICY_*; tests/deploy/test_chart_helm.py holds the two equal). A policy, not a queue argument,
       so a queue an earlier release declared gets it at the next broker boot. */}}
{{- $policy := dict "vhost" "/" "name" "chancepay-payments-dead-lettering" "pattern" "^chancepay\\.payments$" "apply-to" "queues" "priority" 10 "definition" (dict "dead-letter-strategy" "at-least-once" "overflow" "reject-publish") }}
{{- $defs := dict "users" (list (dict "name" "chancepay" "password" $mqPw "tags" (list))) "vhosts" (list (dict "name" "/")) "permissions" (list (dict "user" "chancepay" "vhost" "/" "configure" ".*" "write" ".*" "read" ".*")) "policies" (list $policy) }}
{{- $_ := set $data "rabbitmq-definitions.json" (toJson $defs) }}
{{- else }}
{{- $_ := set $data "amqp-url" (required "external.amqpUrl is required when rabbitmq.enabled=false" .Values.external.amqpUrl) }}
{{- end }}
{{- end }}
{{- $_ := set .Values "_chancepayGenerated" $data }}
{{- end }}
{{- toJson (index .Values "_chancepayGenerated") }}
{{- end }}

{{/*
The keys a secrets.existingSecret must hold with these values, as a JSON list: every key a
template reads with a secretKeyRef or a secret volume, except the optional ones
(message-key-previous; admin-db-url with an external database). admin-db-url is required with the
in-chart MariaDB: nothing but migrate creates the role users there.
*/}}
{{- define "chancepay.existingSecretKeys" -}}
{{- $keys := list "orchestrator-db-url" "wallet-db-url" "amqp-url" "internal-token" "message-key" }}
{{- if .Values.mariadb.enabled }}
{{- $keys = append $keys "mariadb-init.sql" }}
{{- if .Values.migrate.enabled }}
{{- $keys = append $keys "admin-db-url" }}
{{- end }}
{{- end }}
{{- if .Values.rabbitmq.enabled }}
{{- $keys = concat $keys (list "rabbitmq-definitions.json" "rabbitmq-erlang-cookie") }}
{{- end }}
{{- toJson $keys }}
{{- end }}

{{/*
With secrets.existingSecret: read the Secret (lookup) and fail the render naming every key it
lacks (or holds empty), rather than let pods wait in CreateContainerConfigError for a key.
`lookup` answers {} both when the Secret does not exist and when there is no cluster to ask
(`helm template`, client-side --dry-run, Argo CD): those cannot be told apart from the Secret
alone. So an absent Secret fails only when the cluster demonstrably answers: the ConfigMap
kube-root-ca.crt, which Kubernetes publishes in every namespace, is found. Offline renders check
nothing (the pods then report the missing Secret); an install into a namespace created by
--create-namespace finds no such ConfigMap either, but then the Secret cannot exist yet and
Kubernetes names it in the pods' events.
*/}}
{{- define "chancepay.checkExistingSecret" -}}
{{- $name := .Values.secrets.existingSecret }}
{{- $secret := lookup "v1" "Secret" .Release.Namespace $name }}
{{- $required := include "chancepay.existingSecretKeys" . | fromJsonArray }}
{{- if $secret }}
{{- $data := $secret.data | default dict }}
{{- $missing := list }}
{{- range $required }}
{{- if not (index $data .) }}
{{- $missing = append $missing . }}
{{- end }}
{{- end }}
{{- if $missing }}
{{- fail (printf "secrets.existingSecret %q lacks key(s): %s (needed with these values; see secrets.existingSecret in values.yaml, or scripts/plain-secret.sh for every key in the chart's formats)" $name (join ", " $missing)) }}
{{- end }}
{{- else if lookup "v1" "ConfigMap" .Release.Namespace "kube-root-ca.crt" }}
{{- fail (printf "secrets.existingSecret %q: no such Secret in namespace %q; create it first, with the keys %s" $name .Release.Namespace (join ", " $required)) }}
{{- end }}
{{- end }}

{{/*
checksum/secret of a pod template: the same on every render of the same Secret (no fresh random
values), so `helm upgrade` restarts pods only when a password or URL really changed. With
secrets.existingSecret the chart cannot see the values: no annotation (`kubectl rollout restart`).
chancepay.secretChecksum (dict "ctx" $ "keys" (list "internal-token" "amqp-url"))
*/}}
{{- define "chancepay.secretChecksum" -}}
{{- $data := include "chancepay.secretData" .ctx | fromJson }}
{{- if $data }}
{{- $picked := list }}
{{- range .keys }}
{{- $picked = append $picked (printf "%s=%s" . (index $data . | default "")) }}
{{- end }}
checksum/secret: {{ join "\n" $picked | sha256sum | quote }}
{{- end }}
{{- end }}

{{/* Environment shared by every chancepay container. */}}
{{- define "chancepay.commonEnv" -}}
- name: CHANCEPAY_ENV
  value: {{ .Values.config.env | quote }}
- name: CHANCEPAY_LOG_LEVEL
  value: {{ .Values.config.logLevel | quote }}
{{- include "chancepay.extraEnv" .Values.config.extraEnv }}
{{- end }}

{{/* One env var from the chart's Secret: chancepay.secretEnv (dict "ctx" $ "name" "CHANCEPAY_X" "key" "x") */}}
{{- define "chancepay.secretEnv" -}}
- name: {{ .name }}
  valueFrom:
    secretKeyRef:
      name: {{ include "chancepay.secretName" .ctx }}
      key: {{ .key }}
{{- end }}

{{/* Extra CHANCEPAY_* variables from a map, sorted for stable output. */}}
{{- define "chancepay.extraEnv" -}}
{{- range $k, $v := . }}
- name: {{ $k }}
  value: {{ $v | toString | quote }}
{{- end }}
{{- end }}

{{- define "chancepay.podSecurityContext" -}}
{{- toYaml .Values.podSecurityContext }}
{{- end }}

{{- define "chancepay.containerSecurityContext" -}}
{{- toYaml .Values.containerSecurityContext }}
{{- end }}

{{/* Scrape annotations for a role's pods (when metrics.podAnnotations is on). */}}
{{- define "chancepay.scrapeAnnotations" -}}
{{- if .ctx.Values.metrics.podAnnotations }}
prometheus.io/scrape: "true"
prometheus.io/port: {{ .port | quote }}
prometheus.io/path: "/metrics"
{{- end }}
{{- end }}

{{/* TLS (tls.enabled): where every pod finds the Secret's files. */}}
{{- define "chancepay.tlsDir" -}}/etc/chancepay/tls{{- end }}
{{- define "chancepay.tlsCA" -}}{{ include "chancepay.tlsDir" . }}/ca.crt{{- end }}

{{/* The volume a ChancePay pod mounts for TLS: only the CA (the roles verify, they hold no key). */}}
{{- define "chancepay.tlsCAVolume" -}}
{{- if .Values.tls.enabled }}
- name: tls-ca
  secret:
    secretName: {{ required "tls.secretName is required when tls.enabled" .Values.tls.secretName }}
    items:
      - key: ca.crt
        path: ca.crt
    defaultMode: 0444
{{- end }}
{{- end }}

{{- define "chancepay.tlsCAMount" -}}
{{- if .Values.tls.enabled }}
- name: tls-ca
  mountPath: {{ include "chancepay.tlsDir" . }}
  readOnly: true
{{- end }}
{{- end }}

{{/* preStop: keep serving while the endpoint is being removed from Services and Ingresses
(kube-proxy and ingress controllers learn about a terminating pod a moment later); then SIGTERM. */}}
{{- define "chancepay.lifecycle" -}}
{{- if .Values.lifecycle.preStopSleepSeconds }}
lifecycle:
  preStop:
    exec:
      command: ["sleep", {{ .Values.lifecycle.preStopSleepSeconds | quote }}]
{{- end }}
{{- end }}

{{/* A NetworkPolicy peer selecting one component of this release. */}}
{{- define "chancepay.peer" -}}
- podSelector:
    matchLabels:
      {{- include "chancepay.selectorLabels" . | nindent 6 }}
{{- end }}
