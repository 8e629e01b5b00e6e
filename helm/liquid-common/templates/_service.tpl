{{/* ClusterIP Service: `http` (REST, /healthz, /readyz, /metrics) and, where the service has one, `grpc`. */}}
{{- define "liquid-common.service" -}}
apiVersion: v1
kind: Service
metadata:
  name: {{ include "liquid-common.fullname" . }}
  labels:
    {{- include "liquid-common.labels" . | nindent 4 }}
  {{- with .Values.service.annotations }}
  annotations:
    {{- toYaml . | nindent 4 }}
  {{- end }}
spec:
  type: {{ .Values.service.type }}
  selector:
    {{- include "liquid-common.selectorLabels" . | nindent 4 }}
  ports:
    - name: http
      port: {{ .Values.ports.http }}
      targetPort: http
      protocol: TCP
      appProtocol: http
    {{- if .Values.ports.grpc }}
    - name: grpc
      port: {{ .Values.ports.grpc }}
      targetPort: grpc
      protocol: TCP
      appProtocol: kubernetes.io/h2c
    {{- end }}
{{- end -}}
