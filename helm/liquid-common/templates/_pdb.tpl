{{/*
PodDisruptionBudget. maxUnavailable (default 1) rather than minAvailable, so a single-replica
service (cowork, container-pool by default) never blocks a node drain.
*/}}
{{- define "liquid-common.pdb" -}}
{{- if .Values.pdb.enabled -}}
apiVersion: policy/v1
kind: PodDisruptionBudget
metadata:
  name: {{ include "liquid-common.fullname" . }}
  labels:
    {{- include "liquid-common.labels" . | nindent 4 }}
spec:
  {{- if .Values.pdb.minAvailable }}
  minAvailable: {{ .Values.pdb.minAvailable }}
  {{- else }}
  maxUnavailable: {{ .Values.pdb.maxUnavailable | default 1 }}
  {{- end }}
  selector:
    matchLabels:
      {{- include "liquid-common.selectorLabels" . | nindent 6 }}
{{- end -}}
{{- end -}}
