{{/*
Names, labels and the facts every Liquid service shares. The chart's name is the service's name
(gateway, a2a, cowork, container-pool, healer, registry, media).
*/}}

{{/* The platform's services and their usual ports (ARCHITECTURE.md), for the peer addresses. */}}
{{- define "liquid-common.platform" -}}
gateway: {http: 8080, grpc: 0}
a2a: {http: 8081, grpc: 9081}
cowork: {http: 8082, grpc: 9082}
container-pool: {http: 8083, grpc: 9083}
healer: {http: 8084, grpc: 9084}
registry: {http: 8085, grpc: 9085}
media: {http: 8086, grpc: 9086}
{{- end -}}

{{- define "liquid-common.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{/* <release>-<service>, or the release name alone when it already contains the service name. */}}
{{- define "liquid-common.fullname" -}}
{{- if .Values.fullnameOverride -}}
{{- .Values.fullnameOverride | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- $name := default .Chart.Name .Values.nameOverride -}}
{{- if contains $name .Release.Name -}}
{{- .Release.Name | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .Release.Name $name | trunc 63 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}
{{- end -}}

{{/* LIQUID_<SVC>__: the prefix the service's config loader reads (container-pool → CONTAINER_POOL). */}}
{{- define "liquid-common.envPrefix" -}}
{{- printf "LIQUID_%s__" (.Chart.Name | upper | replace "-" "_") -}}
{{- end -}}

{{- define "liquid-common.selectorLabels" -}}
app.kubernetes.io/name: {{ include "liquid-common.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end -}}

{{- define "liquid-common.labels" -}}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{ include "liquid-common.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/component: {{ .Chart.Name }}
app.kubernetes.io/part-of: liquid
app.kubernetes.io/managed-by: {{ .Release.Service }}
{{- end -}}

{{- define "liquid-common.image" -}}
{{- printf "%s:%s" .Values.image.repository (.Values.image.tag | default .Chart.AppVersion | toString) -}}
{{- end -}}

{{- define "liquid-common.serviceAccountName" -}}
{{- if .Values.serviceAccount.create -}}
{{- default (include "liquid-common.fullname" .) .Values.serviceAccount.name -}}
{{- else -}}
{{- default "default" .Values.serviceAccount.name -}}
{{- end -}}
{{- end -}}

{{/* The Secret holding backend URLs: the chart's own setting, then the umbrella's global. */}}
{{- define "liquid-common.backendsSecret" -}}
{{- .Values.backends.existingSecret | default (dig "backendsSecret" "" (.Values.global | default dict)) | default "liquid-backends" -}}
{{- end -}}

{{/* The Secret holding the JWT verification keys. */}}
{{- define "liquid-common.authSecret" -}}
{{- .Values.auth.existingSecret | default (dig "authSecret" "" (.Values.global | default dict)) | default "liquid-auth" -}}
{{- end -}}

{{- define "liquid-common.otlpEndpoint" -}}
{{- .Values.config.otlpEndpoint | default (dig "otlpEndpoint" "" (.Values.global | default dict)) -}}
{{- end -}}

{{/* Where the peers are: <peerPrefix>-<peer> (the umbrella's Service names), unless `peers` says. */}}
{{- define "liquid-common.peerPrefix" -}}
{{- dig "peerPrefix" "" (.Values.global | default dict) | default .Release.Name -}}
{{- end -}}
