{{/*
The service's configuration as LIQUID_<SVC>__SECTION__KEY variables (the service reads defaults →
optional TOML → these). Only keys the service knows may appear: its config rejects unknown fields.
Secrets never go here: backend URLs with credentials come from `secretKeyRef`s (deployment).
*/}}
{{- define "liquid-common.configmap.data" -}}
{{- $p := include "liquid-common.envPrefix" . -}}
{{- $c := .Values.config -}}
{{ $p }}SERVER__HTTP_ADDR: {{ printf "0.0.0.0:%v" .Values.ports.http | quote }}
{{- if .Values.ports.grpc }}
{{ $p }}SERVER__GRPC_ADDR: {{ printf "0.0.0.0:%v" .Values.ports.grpc | quote }}
{{- end }}
{{ $p }}SERVER__SHUTDOWN_GRACE_SECS: {{ $c.shutdownGraceSecs | quote }}
{{ $p }}TELEMETRY__LOG_FORMAT: {{ $c.logFormat | quote }}
{{ $p }}TELEMETRY__LOG_FILTER: {{ $c.logFilter | quote }}
{{- with include "liquid-common.otlpEndpoint" . }}
OTEL_EXPORTER_OTLP_ENDPOINT: {{ . | quote }}
{{- end }}
OTEL_SERVICE_NAME: {{ .Chart.Name | quote }}
{{ $p }}AUTH__ISSUER: {{ $c.auth.issuer | quote }}
{{ $p }}AUTH__AUDIENCE: {{ $c.auth.audience | quote }}
{{- if .Values.auth.jwks.enabled }}
{{ $p }}AUTH__JWKS_FILE: {{ printf "/etc/liquid/auth/%s" .Values.auth.jwks.key | quote }}
{{- end }}
{{- if .Values.auth.hs256.enabled }}
{{ $p }}AUTH__ALLOW_HS256_DEV: "true"
{{- end }}
{{- range $name, $backend := .Values.backends }}
{{- if and (kindIs "map" $backend) $backend.url }}
{{ $p }}{{ $name | upper }}__URL: {{ $backend.url | quote }}
{{- end }}
{{- end }}
{{- $prefix := include "liquid-common.peerPrefix" . }}
{{- $overrides := .Values.peers | default dict }}
{{- range $peer, $ports := include "liquid-common.platform" . | fromYaml }}
{{- $key := $peer | upper | replace "-" "_" }}
{{- $o := get $overrides $peer | default dict }}
{{ $p }}PEERS__{{ $key }}__HTTP: {{ $o.http | default (printf "http://%s-%s:%v" $prefix $peer $ports.http) | quote }}
{{- if $ports.grpc }}
{{ $p }}PEERS__{{ $key }}__GRPC: {{ $o.grpc | default (printf "http://%s-%s:%v" $prefix $peer $ports.grpc) | quote }}
{{- end }}
{{- end }}
{{- range $k, $v := $c.extraEnv }}
{{ $k }}: {{ $v | toString | quote }}
{{- end }}
{{- end -}}

{{- define "liquid-common.configmap" -}}
apiVersion: v1
kind: ConfigMap
metadata:
  name: {{ include "liquid-common.fullname" . }}
  labels:
    {{- include "liquid-common.labels" . | nindent 4 }}
data:
  {{- include "liquid-common.configmap.data" . | nindent 2 }}
{{- end -}}
