{{/*
Prometheus Operator ServiceMonitor scraping /metrics on the `http` port. The Operator adds the
`service` label the Grafana dashboards group by. Its CRD (monitoring.coreos.com/v1) is not in
kubernetes-validate's schemas: scripts/helm-lint.sh checks its shape itself and says so.
*/}}
{{- define "liquid-common.servicemonitor" -}}
{{- if .Values.serviceMonitor.enabled -}}
apiVersion: monitoring.coreos.com/v1
kind: ServiceMonitor
metadata:
  name: {{ include "liquid-common.fullname" . }}
  labels:
    {{- include "liquid-common.labels" . | nindent 4 }}
    {{- with .Values.serviceMonitor.labels }}
    {{- toYaml . | nindent 4 }}
    {{- end }}
spec:
  selector:
    matchLabels:
      {{- include "liquid-common.selectorLabels" . | nindent 6 }}
  endpoints:
    - port: http
      path: /metrics
      interval: {{ .Values.serviceMonitor.interval }}
      scrapeTimeout: {{ .Values.serviceMonitor.scrapeTimeout }}
{{- end -}}
{{- end -}}
