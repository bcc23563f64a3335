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

{{/* Name of one component's resources: chancepay.componentName (dict "ctx" $ "component" "wallet") */}}
{{- define "chancepay.componentName" -}}
{{- printf "%s-%s" (include "chancepay.fullname" .ctx) .component | trunc 63 | trimSuffix "-" }}
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

{{/* Image reference of a role: chancepay.image (dict "ctx" $ "role" "scanner") */}}
{{- define "chancepay.image" -}}
{{- $img := index .ctx.Values.image .role }}
{{- $prefix := ternary "" (printf "%s/" .ctx.Values.image.registry) (empty .ctx.Values.image.registry) }}
{{- printf "%s%s:%s" $prefix $img.repository (default .ctx.Chart.AppVersion $img.tag) }}
{{- end }}

{{- define "chancepay.secretName" -}}
{{- default (printf "%s-secrets" (include "chancepay.fullname" .)) .Values.secrets.existingSecret }}
{{- end }}

{{- define "chancepay.mysqlHost" -}}
{{- include "chancepay.componentName" (dict "ctx" . "component" "mysql") }}
{{- end }}

{{- define "chancepay.rabbitmqHost" -}}
{{- include "chancepay.componentName" (dict "ctx" . "component" "rabbitmq") }}
{{- end }}

{{- define "chancepay.orchestratorURL" -}}
{{- printf "http://%s:%v" (include "chancepay.componentName" (dict "ctx" . "component" "orchestrator")) .Values.orchestrator.service.port }}
{{- end }}

{{- define "chancepay.walletURL" -}}
{{- printf "http://%s:%v" (include "chancepay.componentName" (dict "ctx" . "component" "wallet")) .Values.wallet.service.port }}
{{- end }}

{{/*
A generated secret value that survives upgrades: the value from values.yaml if set, else the one
already stored in the release's Secret, else a fresh random one.
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

{{/* Init container (the role's own image) that waits until the in-chart MySQL accepts TCP connections:
chancepay.waitForMysql (dict "ctx" $ "role" "scanner") */}}
{{- define "chancepay.waitForMysql" -}}
{{- $ctx := .ctx }}
{{- if $ctx.Values.mysql.enabled }}
- name: wait-for-mysql
  image: {{ include "chancepay.image" (dict "ctx" $ctx "role" .role) }}
  imagePullPolicy: {{ $ctx.Values.image.pullPolicy }}
  command:
    - python
    - -c
    - |
      import socket, sys, time
      deadline = time.monotonic() + {{ $ctx.Values.mysql.waitTimeoutSeconds }}
      while True:
          try:
              socket.create_connection(("{{ include "chancepay.mysqlHost" $ctx }}", {{ $ctx.Values.mysql.service.port }}), timeout=3).close()
              sys.exit(0)
          except OSError as exc:
              if time.monotonic() > deadline:
                  sys.exit(f"MySQL not reachable: {exc}")
              time.sleep(2)
  securityContext:
    {{- include "chancepay.containerSecurityContext" $ctx | nindent 4 }}
  resources:
    {{- toYaml $ctx.Values.initResources | nindent 4 }}
{{- end }}
{{- end }}

{{/* A NetworkPolicy peer selecting one component of this release. */}}
{{- define "chancepay.peer" -}}
- podSelector:
    matchLabels:
      {{- include "chancepay.selectorLabels" . | nindent 6 }}
{{- end }}
