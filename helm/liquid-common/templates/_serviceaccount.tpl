{{/* The pod's identity; no API token is mounted (the services never call the Kubernetes API). */}}
{{- define "liquid-common.serviceaccount" -}}
{{- if .Values.serviceAccount.create -}}
apiVersion: v1
kind: ServiceAccount
metadata:
  name: {{ include "liquid-common.serviceAccountName" . }}
  labels:
    {{- include "liquid-common.labels" . | nindent 4 }}
  {{- with .Values.serviceAccount.annotations }}
  annotations:
    {{- toYaml . | nindent 4 }}
  {{- end }}
automountServiceAccountToken: false
{{- end -}}
{{- end -}}
