{{/*
Names
*/}}
{{- define "hljs.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{/*
The release's full name: the release name alone when it already contains the chart name.
Kubernetes names that must be DNS labels get at most 63 characters.
*/}}
{{- define "hljs.fullname" -}}
{{- if .Values.fullnameOverride -}}
{{- .Values.fullnameOverride | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- $name := include "hljs.name" . -}}
{{- if contains $name .Release.Name -}}
{{- .Release.Name | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .Release.Name $name | trunc 63 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}
{{- end -}}

{{/* The full name with a suffix, kept within a 63-character DNS label. */}}
{{- define "hljs.suffixed" -}}
{{- $base := include "hljs.fullname" .root -}}
{{- $room := sub 62 (len .suffix) | int -}}
{{- printf "%s-%s" ($base | trunc $room | trimSuffix "-") .suffix -}}
{{- end -}}

{{- define "hljs.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{/*
Labels
*/}}
{{- define "hljs.selectorLabels" -}}
app.kubernetes.io/name: {{ include "hljs.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end -}}

{{- define "hljs.labels" -}}
helm.sh/chart: {{ include "hljs.chart" . }}
{{ include "hljs.selectorLabels" . }}
app.kubernetes.io/version: {{ include "hljs.imageTag" . | trunc 63 | trimSuffix "-" | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: hyperlight-js
{{- end -}}

{{/*
Image
*/}}
{{- define "hljs.imageTag" -}}
{{- .Values.image.tag | default .Chart.AppVersion -}}
{{- end -}}

{{- define "hljs.image" -}}
{{- if .Values.image.digest -}}
{{- printf "%s@%s" .Values.image.repository .Values.image.digest -}}
{{- else -}}
{{- printf "%s:%s" .Values.image.repository (include "hljs.imageTag" .) -}}
{{- end -}}
{{- end -}}

{{/*
Object names
*/}}
{{- define "hljs.serviceAccountName" -}}
{{- if .Values.serviceAccount.create -}}
{{- .Values.serviceAccount.name | default (include "hljs.fullname" .) -}}
{{- else -}}
{{- .Values.serviceAccount.name | default "default" -}}
{{- end -}}
{{- end -}}

{{- define "hljs.configMapName" -}}
{{- .Values.existingConfigMap | default (include "hljs.suffixed" (dict "root" . "suffix" "config")) -}}
{{- end -}}

{{- define "hljs.amqpSecretName" -}}
{{- .Values.amqp.existingSecret | default (include "hljs.suffixed" (dict "root" . "suffix" "amqp")) -}}
{{- end -}}

{{- define "hljs.amqpSecretKey" -}}
{{- if .Values.amqp.existingSecret -}}
{{- .Values.amqp.existingSecretKey -}}
{{- else -}}
AMQP_URL
{{- end -}}
{{- end -}}

{{/* The KEDA management-API Secret (protocol http) and its key. */}}
{{- define "hljs.managementSecretName" -}}
{{- .Values.keda.management.existingSecret | default (include "hljs.suffixed" (dict "root" . "suffix" "rabbitmq-management")) -}}
{{- end -}}

{{- define "hljs.managementSecretKey" -}}
{{- if .Values.keda.management.existingSecret -}}
{{- .Values.keda.management.existingSecretKey -}}
{{- else -}}
host
{{- end -}}
{{- end -}}

{{- define "hljs.metricsServiceName" -}}
{{- include "hljs.suffixed" (dict "root" . "suffix" "metrics") -}}
{{- end -}}

{{/* Where the worker finds its configuration inside the container. */}}
{{- define "hljs.configDir" -}}
/etc/hyperlight-js-worker
{{- end -}}

{{- define "hljs.httpListen" -}}
{{- printf "0.0.0.0:%d" (int .Values.http.port) -}}
{{- end -}}

{{/* The queues KEDA watches: keda.queues, or one per handler key. */}}
{{- define "hljs.kedaQueues" -}}
{{- $queues := list -}}
{{- if .Values.keda.queues -}}
{{- $queues = .Values.keda.queues -}}
{{- else if not .Values.existingConfigMap -}}
{{- range .Values.handlers -}}
{{- $queues = append $queues .key -}}
{{- end -}}
{{- end -}}
{{- toJson $queues -}}
{{- end -}}

{{/*
TOML rendering of the worker configuration.

Every scalar and list of scalars is written as its JSON text: JSON strings, numbers, booleans
and arrays are valid TOML values with the same meaning (JSON escapes are a subset of TOML's).
*/}}
{{- define "hljs.toml.key" -}}
{{- if regexMatch "^[A-Za-z0-9_-]+$" . -}}
{{- . -}}
{{- else -}}
{{- toJson . -}}
{{- end -}}
{{- end -}}

{{/* dict "path" "a.b" "table" $map: the table's scalars, then its sub-tables. */}}
{{- define "hljs.toml.table" -}}
{{- $path := .path -}}
{{- $table := .table -}}
{{- $lines := list -}}
{{- if $path -}}
{{- $lines = append $lines (printf "[%s]" $path) -}}
{{- end -}}
{{- range $k, $v := $table -}}
{{- if kindIs "invalid" $v -}}
{{- else if kindIs "map" $v -}}
{{- else if and (kindIs "slice" $v) (gt (len $v) 0) (kindIs "map" (first $v)) -}}
{{- fail (printf "config: %s.%s is a list of tables, which the chart cannot render; use existingConfigMap" $path $k) -}}
{{- else -}}
{{- $lines = append $lines (printf "%s = %s" (include "hljs.toml.key" $k) (toJson $v)) -}}
{{- end -}}
{{- end -}}
{{- range $k, $v := $table -}}
{{- if kindIs "map" $v -}}
{{- $sub := include "hljs.toml.key" $k -}}
{{- if $path -}}
{{- $sub = printf "%s.%s" $path $sub -}}
{{- end -}}
{{- if $lines -}}
{{- $lines = append $lines "" -}}
{{- end -}}
{{- $lines = append $lines (include "hljs.toml.table" (dict "path" $sub "table" $v)) -}}
{{- end -}}
{{- end -}}
{{- join "\n" $lines -}}
{{- end -}}

{{/* The handler file name: `file`, or "<key>.js". */}}
{{- define "hljs.handlerFile" -}}
{{- .file | default (printf "%s.js" .key) -}}
{{- end -}}

{{- define "hljs.workerToml" -}}
{{- $cfg := deepCopy .Values.config -}}
{{- $http := get $cfg "http" | default dict -}}
{{- $_ := set $http "listen" (include "hljs.httpListen" .) -}}
{{- $_ := set $cfg "http" $http -}}
{{- if .Values.snapshotCache.enabled -}}
{{- $snap := get $cfg "snapshots" | default dict -}}
{{- if not (get $snap "dir") -}}
{{- $_ := set $snap "dir" .Values.snapshotCache.mountPath -}}
{{- end -}}
{{- $_ := set $cfg "snapshots" $snap -}}
{{- end -}}
# Rendered by the hyperlight-js-worker Helm chart from the release's values.
# The AMQP URL comes from the AMQP_URL environment variable (a Secret), never from this file.

{{ include "hljs.toml.table" (dict "path" "" "table" $cfg) }}
{{- range .Values.handlers }}

[[handlers]]
key = {{ toJson .key }}
file = {{ include "hljs.handlerFile" . | toJson }}
{{- range $k, $v := omit . "key" "file" "source" }}
{{- if kindIs "invalid" $v }}
{{- else if kindIs "map" $v }}
{{- fail (printf "handlers: %s.%s is a table, which the chart cannot render; use existingConfigMap" $.key $k) }}
{{- else }}
{{ include "hljs.toml.key" $k }} = {{ toJson $v }}
{{- end }}
{{- end }}
{{- end }}
{{- end -}}

{{/*
Checks that values.schema.json cannot express. Renders nothing; fails the render with a message
that names the value to change.
*/}}
{{- define "hljs.validate" -}}
{{- $drain := .Values.config.shutdown.drain_timeout_secs | int -}}
{{- $grace := .Values.terminationGracePeriodSeconds | int -}}
{{- if le $grace $drain -}}
{{- fail (printf "terminationGracePeriodSeconds (%d) must be greater than config.shutdown.drain_timeout_secs (%d): the kubelet would kill the worker while it drains" $grace $drain) -}}
{{- end -}}
{{- if and .Values.amqp.url .Values.amqp.existingSecret -}}
{{- fail "set amqp.url or amqp.existingSecret, not both" -}}
{{- end -}}
{{- if and .Values.metrics.serviceMonitor.enabled (not .Values.metrics.service.enabled) -}}
{{- fail "metrics.serviceMonitor.enabled needs metrics.service.enabled" -}}
{{- end -}}
{{- if and .Values.kvm.hostPath.privileged (ne .Values.kvm.mode "hostPath") -}}
{{- fail "kvm.hostPath.privileged applies only with kvm.mode=hostPath" -}}
{{- end -}}
{{- if not .Values.existingConfigMap -}}
{{- if not .Values.handlers -}}
{{- fail "handlers: at least one handler is needed (or set existingConfigMap)" -}}
{{- end -}}
{{- $keys := dict -}}
{{- $files := dict "worker.toml" "the worker configuration" -}}
{{- range $name, $_ := .Values.extraFiles -}}
{{- if hasKey $files $name -}}
{{- fail (printf "extraFiles: %q is a reserved or duplicate file name" $name) -}}
{{- end -}}
{{- $_ := set $files $name "extraFiles" -}}
{{- end -}}
{{- range .Values.handlers -}}
{{- if hasKey $keys .key -}}
{{- fail (printf "handlers: key %q appears twice" .key) -}}
{{- end -}}
{{- $_ := set $keys .key true -}}
{{- $file := include "hljs.handlerFile" . -}}
{{- if .source -}}
{{- if hasKey $files $file -}}
{{- fail (printf "handlers: file %q of handler %q is already used by %s" $file .key (get $files $file)) -}}
{{- end -}}
{{- $_ := set $files $file (printf "handler %q" .key) -}}
{{- else if not (hasKey $.Values.extraFiles $file) -}}
{{- fail (printf "handlers: handler %q has no source and extraFiles has no %q" .key $file) -}}
{{- end -}}
{{- end -}}
{{- end -}}
{{- if and .Values.keda.enabled (eq .Values.keda.protocol "http") -}}
{{- if and .Values.keda.management.url .Values.keda.management.existingSecret -}}
{{- fail "set keda.management.url or keda.management.existingSecret, not both" -}}
{{- end -}}
{{- if not (or .Values.keda.management.url .Values.keda.management.existingSecret) -}}
{{- fail "keda.protocol=http reads the RabbitMQ management API: set keda.management.url or keda.management.existingSecret" -}}
{{- end -}}
{{- end -}}
{{- if and .Values.keda.enabled (eq (include "hljs.kedaQueues" .) "[]") -}}
{{- fail "keda.queues must name the queues to watch when existingConfigMap is used" -}}
{{- end -}}
{{- end -}}
