{{/*
One role's Deployment: the three roles differ only in what is passed here (see
orchestrator-deployment.yaml, scanner-deployment.yaml, wallet-deployment.yaml).
  ctx      the root context
  role     orchestrator | scanner | wallet (its values: .Values.<role>)
  secrets  list of (list ENV_NAME secret-key) in env order, (list ENV_NAME secret-key "optional") for
           a key that may be absent; the pod's checksum/secret covers exactly these keys, so a
           Secret change restarts the roles that read it and only those
  env      list of (dict "name" "value") set after the secrets
  preStop  true for a role behind a Service: sleep lifecycle.preStopSleepSeconds before SIGTERM
  image    (optional) whose image the role runs (.Values.image.<image>; default: its own). The
           auditor runs the orchestrator's image (every image holds the whole package), as the
           reconciler does, so there is no fourth image to build, scan and pin
*/}}
{{- define "chancepay.roleDeployment" -}}
{{- $root := .ctx }}
{{- $role := .role }}
{{- $c := index $root.Values $role }}
{{- $keys := list }}
{{- range .secrets }}{{ $keys = append $keys (index . 1) }}{{ end }}
apiVersion: apps/v1
kind: Deployment
metadata:
  name: {{ include "chancepay.componentName" (dict "ctx" $root "component" $role) }}
  namespace: {{ $root.Release.Namespace }}
  labels:
    {{- include "chancepay.labels" (dict "ctx" $root "component" $role) | nindent 4 }}
spec:
  replicas: {{ $c.replicas }}
  revisionHistoryLimit: 5
  selector:
    matchLabels:
      {{- include "chancepay.selectorLabels" (dict "ctx" $root "component" $role) | nindent 6 }}
  strategy:
    type: RollingUpdate
    rollingUpdate:
      maxUnavailable: 0
      maxSurge: 1
  template:
    metadata:
      labels:
        {{- include "chancepay.selectorLabels" (dict "ctx" $root "component" $role) | nindent 8 }}
      annotations:
        {{- include "chancepay.secretChecksum" (dict "ctx" $root "keys" $keys) | nindent 8 }}
        {{- include "chancepay.scrapeAnnotations" (dict "ctx" $root "port" $c.port) | nindent 8 }}
        {{- with $c.podAnnotations }}
        {{- toYaml . | nindent 8 }}
        {{- end }}
    spec:
      serviceAccountName: {{ include "chancepay.serviceAccountName" $root }}
      automountServiceAccountToken: false
      {{- with $root.Values.image.pullSecrets }}
      imagePullSecrets:
        {{- toYaml . | nindent 8 }}
      {{- end }}
      securityContext:
        {{- include "chancepay.podSecurityContext" $root | nindent 8 }}
      {{- if .preStop }}
      # preStop sleep, then the contract: on SIGTERM a role finishes in-flight work within 25 s.
      terminationGracePeriodSeconds: {{ add $root.Values.lifecycle.preStopSleepSeconds 25 }}
      {{- else }}
      # The contract: on SIGTERM a role finishes in-flight work and exits within 25 s. (No preStop
      # delay: no Service routes traffic that matters to the scanner.)
      terminationGracePeriodSeconds: 30
      {{- end }}
      containers:
        - name: {{ $role }}
          image: {{ include "chancepay.image" (dict "ctx" $root "role" (.image | default $role)) }}
          imagePullPolicy: {{ $root.Values.image.pullPolicy }}
          command: ["chancepay", {{ $role | quote }}]
          {{- if .preStop }}
          {{- include "chancepay.lifecycle" $root | nindent 10 }}
          {{- end }}
          ports:
            - name: http
              containerPort: {{ $c.port }}
              protocol: TCP
          env:
            {{- include "chancepay.commonEnv" $root | nindent 12 }}
            - name: CHANCEPAY_PORT
              value: {{ $c.port | quote }}
            {{- range .secrets }}
            {{- if eq (len .) 2 }}
            {{- include "chancepay.secretEnv" (dict "ctx" $root "name" (index . 0) "key" (index . 1)) | nindent 12 }}
            {{- else }}
            - name: {{ index . 0 }}
              valueFrom:
                secretKeyRef:
                  name: {{ include "chancepay.secretName" $root }}
                  key: {{ index . 1 }}
                  optional: true
            {{- end }}
            {{- end }}
            {{- range .env }}
            - name: {{ .name }}
              value: {{ .value | quote }}
            {{- end }}
            {{- include "chancepay.extraEnv" $c.extraEnv | nindent 12 }}
          startupProbe:
            httpGet: {path: /healthz, port: http}
            periodSeconds: 2
            failureThreshold: 30
          livenessProbe:
            httpGet: {path: /healthz, port: http}
            periodSeconds: 10
            timeoutSeconds: 3
            failureThreshold: 3
          readinessProbe:
            httpGet: {path: /readyz, port: http}
            periodSeconds: 5
            timeoutSeconds: 3
            failureThreshold: 2
          resources:
            {{- toYaml $c.resources | nindent 12 }}
          securityContext:
            {{- include "chancepay.containerSecurityContext" $root | nindent 12 }}
          volumeMounts:
            - name: tmp
              mountPath: /tmp
            {{- include "chancepay.tlsCAMount" $root | nindent 12 }}
      volumes:
        # The root filesystem is read-only; Python and uvicorn may still want a scratch /tmp.
        - name: tmp
          emptyDir:
            sizeLimit: 64Mi
        {{- include "chancepay.tlsCAVolume" $root | nindent 8 }}
      {{- with $c.nodeSelector }}
      nodeSelector:
        {{- toYaml . | nindent 8 }}
      {{- end }}
      {{- with $c.tolerations }}
      tolerations:
        {{- toYaml . | nindent 8 }}
      {{- end }}
      {{- with $c.affinity }}
      affinity:
        {{- toYaml . | nindent 8 }}
      {{- end }}
{{- end }}
