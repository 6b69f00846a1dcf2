{{/* The chart's name. */}}
{{- define "backstop.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* The release's full name: objects are named after it. */}}
{{- define "backstop.fullname" -}}
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

{{- define "backstop.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{- end }}

{{- define "backstop.selectorLabels" -}}
app.kubernetes.io/name: {{ include "backstop.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end }}

{{- define "backstop.labels" -}}
helm.sh/chart: {{ include "backstop.chart" . }}
{{ include "backstop.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
{{- end }}

{{- define "backstop.serviceAccountName" -}}
{{- if .Values.serviceAccount.create }}
{{- default (include "backstop.fullname" .) .Values.serviceAccount.name }}
{{- else }}
{{- default "default" .Values.serviceAccount.name }}
{{- end }}
{{- end }}

{{/* Where things are in the container. */}}
{{- define "backstop.configDir" -}}/etc/backstop/config{{- end }}
{{- define "backstop.rulesDir" -}}/etc/backstop/rules{{- end }}
{{- define "backstop.dataDir" -}}/var/lib/backstop{{- end }}
{{- define "backstop.secretsDir" -}}/etc/backstop/secrets{{- end }}

{{/*
backstop.yaml: the user's `config` with the keys the chart owns (listen, data_dir, rules and
the paths of mounted secrets).
*/}}
{{- define "backstop.config" -}}
{{- $c := deepCopy .Values.config }}
{{- $t := $c.target | default (dict) }}
{{- if eq (len (compact (list $t.kubernetes $t.manifests))) 1 | not }}
{{- fail "config.target: set exactly one of kubernetes or manifests (set the other to null)" }}
{{- end }}
{{- $secrets := include "backstop.secretsDir" . }}
{{- $_ := set $c "listen" (printf "0.0.0.0:%d" (int .Values.service.port)) }}
{{- $_ := set $c "data_dir" (include "backstop.dataDir" .) }}
{{- $_ := set $c "rules" (list (include "backstop.rulesDir" .)) }}
{{- with .Values.secrets.httpToken.name }}
{{- $http := default (dict) $c.http }}
{{- $_ := set $http "auth" (dict "bearer_token_file" (printf "%s/http-token/%s" $secrets $.Values.secrets.httpToken.key)) }}
{{- $_ := set $c "http" $http }}
{{- end }}
{{- if $c.prometheus }}
{{- with .Values.secrets.prometheusToken.name }}
{{- $_ := set $c.prometheus "bearer_token_file" (printf "%s/prometheus-token/%s" $secrets $.Values.secrets.prometheusToken.key) }}
{{- end }}
{{- with .Values.secrets.prometheusCA.name }}
{{- $_ := set $c.prometheus "ca_file" (printf "%s/prometheus-ca/%s" $secrets $.Values.secrets.prometheusCA.key) }}
{{- end }}
{{- end }}
{{- if .Values.cluster.enabled }}
{{- $k := .Values.cluster }}
{{- $_ := set $c "cluster" (dict "lease" (default (printf "%s-leader" (include "backstop.fullname" .)) $k.lease) "lease_duration" $k.leaseDuration "renew_every" $k.renewEvery "margin" $k.margin "log_topic" $k.logTopic "snapshot_every" $k.snapshotEvery) }}
{{- end }}
{{- toYaml $c }}
{{- end }}

{{/* What cluster mode needs, refused with a message at render time. */}}
{{- define "backstop.clusterChecks" -}}
{{- if not .Values.config.kafka }}
{{- fail "cluster.enabled needs config.kafka: the audit log is replicated through Kafka" }}
{{- end }}
{{- if not .Values.persistence.enabled }}
{{- fail "cluster.enabled needs persistence.enabled: each replica keeps its copy of the audit log on its own volume" }}
{{- end }}
{{- if .Values.persistence.existingClaim }}
{{- fail "cluster.enabled makes a claim per replica: persistence.existingClaim cannot be shared" }}
{{- end }}
{{- if ge (int .Values.cluster.podDisruptionBudget.minAvailable) (int .Values.cluster.replicas) }}
{{- fail "cluster.podDisruptionBudget.minAvailable must be below cluster.replicas, or no drain could ever evict a replica" }}
{{- end }}
{{- end }}

{{/* The rules files as a YAML map: the values' `rules`, else the shipped files/rules/*.yaml. */}}
{{- define "backstop.rules" -}}
{{- $files := dict }}
{{- if .Values.rules }}
{{- $files = .Values.rules }}
{{- else }}
{{- range $path, $_ := .Files.Glob "files/rules/*.yaml" }}
{{- $_ := set $files (base $path) ($.Files.Get $path) }}
{{- end }}
{{- end }}
{{- toYaml $files }}
{{- end }}
