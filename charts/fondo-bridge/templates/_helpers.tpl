{{/*
Names and labels.
*/}}
{{- define "fondo-bridge.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{- define "fondo-bridge.fullname" -}}
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

{{- define "fondo-bridge.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{- end }}

{{- define "fondo-bridge.selectorLabels" -}}
app.kubernetes.io/name: {{ include "fondo-bridge.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end }}

{{- define "fondo-bridge.labels" -}}
helm.sh/chart: {{ include "fondo-bridge.chart" . }}
{{ include "fondo-bridge.selectorLabels" . }}
app.kubernetes.io/version: {{ (.Values.image.tag | default .Chart.AppVersion) | trunc 63 | trimSuffix "-" | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: fondo-bridge
{{- end }}

{{- define "fondo-bridge.serviceAccountName" -}}
{{- if .Values.serviceAccount.create }}
{{- default (include "fondo-bridge.fullname" .) .Values.serviceAccount.name }}
{{- else }}
{{- default "default" .Values.serviceAccount.name }}
{{- end }}
{{- end }}

{{- define "fondo-bridge.image" -}}
{{- if .Values.image.digest }}
{{- printf "%s@%s" .Values.image.repository .Values.image.digest }}
{{- else }}
{{- printf "%s:%s" .Values.image.repository (.Values.image.tag | default .Chart.AppVersion) }}
{{- end }}
{{- end }}

{{- define "fondo-bridge.secretName" -}}
{{- default (include "fondo-bridge.fullname" .) .Values.secrets.existingSecret }}
{{- end }}

{{/*
Fixed paths shared by the chart and the config it renders.
*/}}
{{- define "fondo-bridge.dataDir" -}}/var/lib/fondo-bridge{{- end }}
{{- define "fondo-bridge.configDir" -}}/etc/fondo-bridge{{- end }}
{{- define "fondo-bridge.secretDir" -}}/var/run/secrets/fondo{{- end }}
{{- define "fondo-bridge.tokenFile" -}}/var/run/secrets/fondo/token{{- end }}
{{- define "fondo-bridge.webhookSecretsFile" -}}/var/run/secrets/fondo/webhook-secrets{{- end }}

{{/*
The effective bridge config, as YAML: `config`, or `defaultConfig` when `config` is empty, with the
secret file paths added where the config names no secret of its own. Templates read it back with
`include "fondo-bridge.config" . | fromYaml`.
*/}}
{{- define "fondo-bridge.config" -}}
{{- $src := .Values.config | default dict }}
{{- if empty $src }}
{{- $src = .Values.defaultConfig | default dict }}
{{- end }}
{{- $cfg := deepCopy $src }}
{{- $sources := $cfg.sources | default dict }}
{{- with $sources.websocket }}
{{- if not (or .token .token_file) }}
{{- $_ := set . "token_file" (include "fondo-bridge.tokenFile" $) }}
{{- end }}
{{- end }}
{{- if $sources.webhook }}
{{- $dedupe := $cfg.dedupe | default dict }}
{{- if not (hasKey $dedupe "snapshot_file") }}
{{- $_ := set $dedupe "snapshot_file" "/var/lib/fondo-bridge/identity.jsonl" }}
{{- $_ := set $cfg "dedupe" $dedupe }}
{{- end }}
{{- end }}
{{- with $sources.webhook }}
{{- with .signature }}
{{- if and (has (toString .scheme) (list "standard-webhooks" "hmac")) (not (or .secrets .secrets_file)) }}
{{- $_ := set . "secrets_file" (include "fondo-bridge.webhookSecretsFile" $) }}
{{- end }}
{{- end }}
{{- end }}
{{- toYaml $cfg }}
{{- end }}

{{/*
"true" when the pods need the Fondo token file from the Secret, else "".
*/}}
{{- define "fondo-bridge.needsToken" -}}
{{- $cfg := include "fondo-bridge.config" . | fromYaml }}
{{- $ws := ($cfg.sources | default dict).websocket }}
{{- if and $ws (eq (toString $ws.token_file) (include "fondo-bridge.tokenFile" .)) }}true{{ end }}
{{- end }}

{{/*
"true" when the pods need the webhook secrets file from the Secret, else "".
*/}}
{{- define "fondo-bridge.needsWebhookSecrets" -}}
{{- $cfg := include "fondo-bridge.config" . | fromYaml }}
{{- $wh := ($cfg.sources | default dict).webhook }}
{{- if and $wh $wh.signature (eq (toString $wh.signature.secrets_file) (include "fondo-bridge.webhookSecretsFile" .)) }}true{{ end }}
{{- end }}

{{/*
"StatefulSet" with a WebSocket source (a spool that outlives the pod, one consumer per stream) or
with persistence on (webhooks only: a claim per pod for the dead-letter fallback, file-sink output
and identity snapshot, which hold events already answered 2xx); "Deployment" otherwise (webhooks
only on an emptyDir).
*/}}
{{- define "fondo-bridge.kind" -}}
{{- $cfg := include "fondo-bridge.config" . | fromYaml }}
{{- if or ($cfg.sources | default dict).websocket .Values.persistence.enabled }}StatefulSet{{ else }}Deployment{{ end }}
{{- end }}

{{/*
"true" when the data volume is a PersistentVolumeClaim per pod, else "" (an emptyDir).
*/}}
{{- define "fondo-bridge.persistent" -}}
{{- if and (eq (include "fondo-bridge.kind" .) "StatefulSet") .Values.persistence.enabled }}true{{ end }}
{{- end }}

{{/*
The identity store the config selects: "redis" or "memory" (dedupe.store unset means memory).
*/}}
{{- define "fondo-bridge.dedupeStore" -}}
{{- $cfg := include "fondo-bridge.config" . | fromYaml }}
{{- (($cfg.dedupe | default dict).store | default "memory") | toString }}
{{- end }}

{{/*
The Secret holding the Redis password, injected as FONDO_BRIDGE__DEDUPE__REDIS__PASSWORD; "" when
no password is injected (store memory, or a Redis without a password).
*/}}
{{- define "fondo-bridge.redisPasswordSecret" -}}
{{- if eq (include "fondo-bridge.dedupeStore" .) "redis" }}
{{- if .Values.secrets.redisExistingSecret }}
{{- .Values.secrets.redisExistingSecret }}
{{- else if and .Values.secrets.redisPassword (not .Values.secrets.existingSecret) }}
{{- include "fondo-bridge.fullname" . }}
{{- end }}
{{- end }}
{{- end }}

{{/*
The TCP ports of a list of addresses: comma-separated entries, each `host:port`, `scheme://host:port`,
`scheme://user@host:port/path` or `[v6]:port`; an entry without a port gets its scheme's default
port, or the given default. Args: (list addresses defaultPort). Returns the ports joined by ",".
*/}}
{{- define "fondo-bridge.addressPorts" -}}
{{- $schemes := dict "ws" 80 "http" 80 "wss" 443 "https" 443 "amqp" 5672 "amqps" 5671 "nats" 4222 "tls" 4222 "redis" 6379 "rediss" 6379 "redis+sentinel" 26379 "rediss+sentinel" 26379 "grpc" 4317 }}
{{- $ports := list }}
{{- range (splitList "," (toString (index . 0))) }}
{{- $entry := trim . }}
{{- if $entry }}
{{- $scheme := regexFind "^[a-zA-Z][-_a-zA-Z0-9+.]*://" $entry | trimSuffix "://" | lower }}
{{- $rest := regexReplaceAll "^[a-zA-Z][-_a-zA-Z0-9+.]*://" $entry "" }}
{{- $rest = regexReplaceAll "[/?#].*$" $rest "" }}
{{- $rest = regexReplaceAll "^.*@" $rest "" }}
{{- $port := regexFind "[0-9]{1,5}$" (regexFind "(^|[^:]):[0-9]{1,5}$" (regexReplaceAll "^\\[[^\\]]*\\]" $rest "[]")) }}
{{- if not $port }}
{{- $port = toString (get $schemes $scheme | default (index $ 1)) }}
{{- end }}
{{- $ports = append $ports (int $port) }}
{{- end }}
{{- end }}
{{- $ports | uniq | sortAlpha | join "," }}
{{- end }}

{{/*
The port of a `host:port` listen address ("0.0.0.0:8080", "[::]:8080"). Args: (list $ address what).
*/}}
{{- define "fondo-bridge.listenPort" -}}
{{- $addr := toString (index . 1) }}
{{- $port := splitList ":" $addr | last }}
{{- if not (regexMatch "^[0-9]{1,5}$" $port) }}
{{- fail (printf "fondo-bridge: %s %q is not host:port" (index . 2) $addr) }}
{{- end }}
{{- $port }}
{{- end }}

{{- define "fondo-bridge.webhookPort" -}}
{{- $cfg := include "fondo-bridge.config" . | fromYaml }}
{{- $wh := ($cfg.sources | default dict).webhook }}
{{- if $wh }}
{{- include "fondo-bridge.listenPort" (list . ($wh.listen | default "0.0.0.0:8080") "config.sources.webhook.listen") }}
{{- end }}
{{- end }}

{{- define "fondo-bridge.webhookPath" -}}
{{- $cfg := include "fondo-bridge.config" . | fromYaml }}
{{- $wh := ($cfg.sources | default dict).webhook | default dict }}
{{- $wh.path | default "/fondo/webhooks/callback" }}
{{- end }}

{{- define "fondo-bridge.adminPort" -}}
{{- $cfg := include "fondo-bridge.config" . | fromYaml }}
{{- $admin := $cfg.admin | default dict }}
{{- if and (hasKey $admin "listen") (not $admin.listen) }}
{{- fail "fondo-bridge: config.admin.listen is null, but the probes, the Service and the ServiceMonitor need the admin server: set it (e.g. 0.0.0.0:9090)" }}
{{- end }}
{{- include "fondo-bridge.listenPort" (list . ($admin.listen | default "0.0.0.0:9090") "config.admin.listen") }}
{{- end }}

{{/*
A path the bridge writes must be on the data volume (the root filesystem is read-only). Relative
paths resolve against the working directory, which is the data volume. Args: (list $ path what).
*/}}
{{- define "fondo-bridge.checkWritable" -}}
{{- $path := toString (index . 1) }}
{{- $dir := include "fondo-bridge.dataDir" (index . 0) }}
{{- if and (hasPrefix "/" $path) (ne $path $dir) (not (hasPrefix (printf "%s/" $dir) $path)) }}
{{- fail (printf "fondo-bridge: %s is %q, but the only writable volume is %s (the root filesystem is read-only): put it under %s/" (index . 2) $path $dir $dir) }}
{{- end }}
{{- end }}

{{/*
Every check that makes the chart refuse to render. Included by the workload template.
*/}}
{{- define "fondo-bridge.validate" -}}
{{- $cfg := include "fondo-bridge.config" . | fromYaml }}
{{- $sources := $cfg.sources | default dict }}
{{- if not (or $sources.websocket $sources.webhook) }}
{{- fail "fondo-bridge: the config has no source: set config.sources.websocket and/or config.sources.webhook" }}
{{- end }}
{{- /* Grace period: SIGKILL comes at its end, so the drain must be over before. */}}
{{- $drainMs := 20000 }}
{{- $delivery := $cfg.delivery | default dict }}
{{- if hasKey $delivery "drain_timeout_ms" }}
{{- $drainMs = int64 $delivery.drain_timeout_ms }}
{{- end }}
{{- $graceMs := mul (int64 .Values.terminationGracePeriodSeconds) 1000 }}
{{- $neededMs := add $drainMs (mul (int64 .Values.preStopSleepSeconds) 1000) }}
{{- if le $graceMs $neededMs }}
{{- fail (printf "fondo-bridge: terminationGracePeriodSeconds (%d s) must be above preStopSleepSeconds (%d s) + config.delivery.drain_timeout_ms (%d ms): Kubernetes sends SIGKILL when the grace period ends, which would cut the drain short. Raise terminationGracePeriodSeconds above %d or lower drain_timeout_ms." (int64 .Values.terminationGracePeriodSeconds) (int64 .Values.preStopSleepSeconds) $drainMs (div $neededMs 1000)) }}
{{- end }}
{{- /* Writable paths. */}}
{{- $spool := $cfg.spool | default dict }}
{{- if and $sources.websocket (ne (toString $spool.enabled) "false") }}
{{- include "fondo-bridge.checkWritable" (list . ($spool.dir | default "/var/lib/fondo-bridge/spool") "config.spool.dir") }}
{{- end }}
{{- with ($cfg.dead_letter | default dict).fallback_file }}
{{- include "fondo-bridge.checkWritable" (list $ . "config.dead_letter.fallback_file") }}
{{- end }}
{{- range $name, $sink := ($cfg.sinks | default dict) }}
{{- if and (kindIs "map" $sink) (eq (toString $sink.type) "file") }}
{{- include "fondo-bridge.checkWritable" (list $ $sink.dir (printf "config.sinks.%s.dir" $name)) }}
{{- end }}
{{- end }}
{{- /* Ports must parse. */}}
{{- $_ := include "fondo-bridge.adminPort" . }}
{{- $_ = include "fondo-bridge.webhookPort" . }}
{{- if and .Values.ingress.enabled (not $sources.webhook) }}
{{- fail "fondo-bridge: ingress.enabled needs config.sources.webhook: without it there is nothing to route to" }}
{{- end }}
{{- /* Identity store and replicas (docs/replicas.md). */}}
{{- $store := include "fondo-bridge.dedupeStore" . }}
{{- $redis := (($cfg.dedupe | default dict).redis | default dict) }}
{{- if and (eq $store "redis") (not $redis.url) }}
{{- fail "fondo-bridge: config.dedupe.store is redis but config.dedupe.redis.url is not set: set it (redis://host:6379/0 or rediss://host:6379/0); the password goes in secrets.redisPassword or secrets.redisExistingSecret, never in the URL" }}
{{- end }}
{{- $replicas := int .Values.replicaCount }}
{{- if and (gt $replicas 1) (ne $store "redis") }}
{{- if and $sources.websocket $sources.webhook }}
{{- fail (printf "fondo-bridge: replicaCount is %d with both sources (config.sources.websocket and config.sources.webhook) and config.dedupe.store %s: every pod keeps its own identity tables, so a change whose stream copy reaches one pod and whose webhook reaches another is published twice, every time. Fix: set config.dedupe.store: redis and config.dedupe.redis.url (one Redis shared by all pods; its password in secrets.redisPassword or secrets.redisExistingSecret), or run one replica (replicaCount: 1)." $replicas $store) }}
{{- else if and $sources.webhook (not .Values.dedupe.allowDuplicatesAcrossReplicas) }}
{{- fail (printf "fondo-bridge: replicaCount is %d with the webhook source and config.dedupe.store %s: every pod remembers only the deliveries it received, so a Fondo retry that the Service sends to another pod is published again. Fix: set config.dedupe.store: redis and config.dedupe.redis.url (one Redis shared by all pods), or run one replica (replicaCount: 1), or accept those duplicates with dedupe.allowDuplicatesAcrossReplicas: true (a retry keeps the webhook's delivery id as its fondo-event-id, so consumers can drop it)." $replicas $store) }}
{{- end }}
{{- end }}
{{- if and (eq $store "redis") .Values.secrets.redisPassword .Values.secrets.existingSecret (not .Values.secrets.redisExistingSecret) }}
{{- fail "fondo-bridge: secrets.redisPassword is set, but so is secrets.existingSecret, and then the chart makes no Secret: put the password into a Secret of yours and name it in secrets.redisExistingSecret (it may be secrets.existingSecret itself, under the key secrets.redisPasswordKey)" }}
{{- end }}
{{- if include "fondo-bridge.redisPasswordSecret" . }}
{{- range .Values.env }}
{{- if eq (toString .name) "FONDO_BRIDGE__DEDUPE__REDIS__PASSWORD" }}
{{- fail "fondo-bridge: env sets FONDO_BRIDGE__DEDUPE__REDIS__PASSWORD, and the chart sets it too from secrets.redisPassword / secrets.redisExistingSecret: keep one of them" }}
{{- end }}
{{- end }}
{{- end }}
{{- end }}
