{{/*
The service's Deployment. Non-root (uid 10001, the user the image creates), read-only root
filesystem with emptyDirs for /tmp and the home directory, every capability dropped. Settings come
from the ConfigMap; backend URLs that carry credentials and the JWT keys come from existing
Secrets the operator provides (this chart never holds secret values).
*/}}
{{- define "liquid-common.deployment" -}}
{{- $p := include "liquid-common.envPrefix" . -}}
{{- $backendsSecret := include "liquid-common.backendsSecret" . -}}
{{- $authSecret := include "liquid-common.authSecret" . -}}
apiVersion: apps/v1
kind: Deployment
metadata:
  name: {{ include "liquid-common.fullname" . }}
  labels:
    {{- include "liquid-common.labels" . | nindent 4 }}
spec:
  {{- if not .Values.autoscaling.enabled }}
  replicas: {{ .Values.replicaCount }}
  {{- end }}
  revisionHistoryLimit: 5
  strategy:
    {{- toYaml .Values.strategy | nindent 4 }}
  selector:
    matchLabels:
      {{- include "liquid-common.selectorLabels" . | nindent 6 }}
  template:
    metadata:
      annotations:
        # Roll the pods when their configuration changes.
        checksum/config: {{ include "liquid-common.configmap.data" . | sha256sum }}
        {{- with .Values.podAnnotations }}
        {{- toYaml . | nindent 8 }}
        {{- end }}
      labels:
        {{- include "liquid-common.labels" . | nindent 8 }}
        {{- with .Values.podLabels }}
        {{- toYaml . | nindent 8 }}
        {{- end }}
    spec:
      serviceAccountName: {{ include "liquid-common.serviceAccountName" . }}
      automountServiceAccountToken: false
      enableServiceLinks: false
      terminationGracePeriodSeconds: {{ add .Values.config.shutdownGraceSecs 5 }}
      securityContext:
        {{- $psc := deepCopy .Values.podSecurityContext }}
        {{- with .Values.dockerSocket }}
        {{- if and .enabled .groupId }}
        {{- $_ := set $psc "supplementalGroups" (list (int .groupId)) }}
        {{- end }}
        {{- end }}
        {{- toYaml $psc | nindent 8 }}
      containers:
        - name: {{ .Chart.Name }}
          image: {{ include "liquid-common.image" . | quote }}
          imagePullPolicy: {{ .Values.image.pullPolicy }}
          {{- with .Values.args }}
          args:
            {{- toYaml . | nindent 12 }}
          {{- end }}
          securityContext:
            {{- toYaml .Values.securityContext | nindent 12 }}
          ports:
            - name: http
              containerPort: {{ .Values.ports.http }}
              protocol: TCP
            {{- if .Values.ports.grpc }}
            - name: grpc
              containerPort: {{ .Values.ports.grpc }}
              protocol: TCP
            {{- end }}
          envFrom:
            - configMapRef:
                name: {{ include "liquid-common.fullname" . }}
          env:
            {{- range $name, $backend := .Values.backends }}
            {{- if and (kindIs "map" $backend) (not $backend.url) }}
            - name: {{ printf "%s%s__URL" $p ($name | upper) }}
              valueFrom:
                secretKeyRef:
                  name: {{ $backend.existingSecret | default $backendsSecret }}
                  key: {{ $backend.secretKey }}
            {{- end }}
            {{- end }}
            {{- if .Values.auth.hs256.enabled }}
            # Development only: a shared HS256 secret instead of the JWKS.
            - name: {{ printf "%sAUTH__HS256_SECRET" $p }}
              valueFrom:
                secretKeyRef:
                  name: {{ $authSecret }}
                  key: {{ .Values.auth.hs256.key }}
            {{- end }}
            {{- with .Values.dockerSocket }}
            {{- if .enabled }}
            - name: DOCKER_HOST
              value: {{ printf "unix://%s" .path | quote }}
            {{- end }}
            {{- end }}
            {{- with .Values.extraEnv }}
            {{- toYaml . | nindent 12 }}
            {{- end }}
          startupProbe:
            httpGet:
              path: /healthz
              port: http
            periodSeconds: 2
            failureThreshold: {{ .Values.probes.startupFailureThreshold }}
          livenessProbe:
            httpGet:
              path: /healthz
              port: http
            periodSeconds: {{ .Values.probes.periodSeconds }}
            timeoutSeconds: {{ .Values.probes.timeoutSeconds }}
            failureThreshold: 3
          readinessProbe:
            httpGet:
              path: /readyz
              port: http
            periodSeconds: {{ .Values.probes.periodSeconds }}
            timeoutSeconds: {{ .Values.probes.timeoutSeconds }}
            failureThreshold: 2
          resources:
            {{- toYaml .Values.resources | nindent 12 }}
          volumeMounts:
            - name: tmp
              mountPath: /tmp
            - name: home
              mountPath: /home/liquid
            {{- if .Values.auth.jwks.enabled }}
            - name: auth
              mountPath: /etc/liquid/auth
              readOnly: true
            {{- end }}
            {{- with .Values.dockerSocket }}
            {{- if .enabled }}
            - name: docker-socket
              mountPath: {{ .path }}
            {{- end }}
            {{- end }}
            {{- with .Values.extraVolumeMounts }}
            {{- toYaml . | nindent 12 }}
            {{- end }}
      volumes:
        - name: tmp
          emptyDir:
            sizeLimit: {{ .Values.scratch.tmpSizeLimit }}
        - name: home
          emptyDir:
            sizeLimit: {{ .Values.scratch.homeSizeLimit }}
        {{- if .Values.auth.jwks.enabled }}
        - name: auth
          secret:
            secretName: {{ $authSecret }}
            items:
              - key: {{ .Values.auth.jwks.key }}
                path: {{ .Values.auth.jwks.key }}
        {{- end }}
        {{- with .Values.dockerSocket }}
        {{- if .enabled }}
        - name: docker-socket
          hostPath:
            path: {{ .path }}
            type: Socket
        {{- end }}
        {{- end }}
        {{- with .Values.extraVolumes }}
        {{- toYaml . | nindent 8 }}
        {{- end }}
      {{- with .Values.nodeSelector }}
      nodeSelector:
        {{- toYaml . | nindent 8 }}
      {{- end }}
      {{- with .Values.affinity }}
      affinity:
        {{- toYaml . | nindent 8 }}
      {{- end }}
      {{- with .Values.tolerations }}
      tolerations:
        {{- toYaml . | nindent 8 }}
      {{- end }}
      {{- with .Values.topologySpreadConstraints }}
      topologySpreadConstraints:
        {{- toYaml . | nindent 8 }}
      {{- end }}
{{- end -}}
