{{/* Names are cut to 63 characters, the limit of a label value and of most object names. */}}
{{- define "naat.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{- define "naat.fullname" -}}
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

{{/* Labels of every object; uninstall checks and `kubectl get -l` find the release by them. */}}
{{- define "naat.labels" -}}
{{ include "naat.componentLabels" (dict "context" . "component" "operator") }}
{{- end -}}

{{/* The labels of an object of another component: (dict "context" . "component" "dataplane"). */}}
{{- define "naat.componentLabels" -}}
{{ include "naat.releaseLabels" .context }}
app.kubernetes.io/component: {{ .component }}
{{- end -}}

{{/* The labels of every object but its component. */}}
{{- define "naat.releaseLabels" -}}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" }}
app.kubernetes.io/name: {{ include "naat.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: naat
{{- end -}}

{{/*
The pods of a component: the operator's, or the gateway agents', which every gateway's DaemonSet
labels so (operator/desired.ts, labelsOf) in the release namespace.
*/}}
{{- define "naat.podSelectorLabels" -}}
{{- if eq .component "operator" -}}
{{ include "naat.selectorLabels" .context }}
{{- else -}}
app.kubernetes.io/name: naat-dataplane
app.kubernetes.io/managed-by: naat-operator
{{- end -}}
{{- end -}}

{{/* Selector labels never change after install: a Deployment's selector is immutable. */}}
{{- define "naat.selectorLabels" -}}
app.kubernetes.io/name: {{ include "naat.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/component: operator
{{- end -}}

{{/* repository[:tag][@digest]; the tag defaults to appVersion, a digest pins the exact image. */}}
{{- define "naat.image" -}}
{{- $tag := default .context.Chart.AppVersion .image.tag -}}
{{- if .image.digest -}}
{{- printf "%s:%s@%s" .image.repository $tag .image.digest -}}
{{- else -}}
{{- printf "%s:%s" .image.repository $tag -}}
{{- end -}}
{{- end -}}

{{- define "naat.webhookName" -}}{{ include "naat.fullname" . }}-sidecar-injector{{- end -}}
{{- define "naat.webhookSecretName" -}}{{ include "naat.fullname" . }}-webhook-tls{{- end -}}
{{- define "naat.caSecretName" -}}{{ include "naat.fullname" . }}-ca{{- end -}}
{{- define "naat.webhookCertificateName" -}}{{ include "naat.fullname" . }}-webhook{{- end -}}
{{- define "naat.caConfigMapName" -}}{{ include "naat.fullname" . }}-ca{{- end -}}
{{- define "naat.leaseName" -}}{{ include "naat.fullname" . }}-operator{{- end -}}
{{- define "naat.dataplaneRoleName" -}}{{ include "naat.fullname" . }}-dataplane{{- end -}}
{{- define "naat.nodeRoleName" -}}{{ include "naat.fullname" . }}-node{{- end -}}
{{- /* The node agents' DaemonSet, ServiceAccount, Role and RoleBinding: the operator's fixed name (operator/desired.ts, nodeAgentName). */ -}}
{{- define "naat.nodeAgentName" -}}naat-node{{- end -}}
{{- /* naat's CRDs, which the operator makes or replaces (operator/custom-resource-definitions.ts). */ -}}
{{- define "naat.crdNames" -}}["uplinks.naat.dev", "egressgateways.naat.dev", "egresspolicies.naat.dev"]{{- end -}}
{{- define "naat.flowReaderRoleName" -}}{{ include "naat.fullname" . }}-flow-reader{{- end -}}

{{/* Rules the schema cannot express because they relate two values. */}}
{{- define "naat.checks" -}}
{{- $le := .Values.operator.leaderElection -}}
{{- if and (gt (int .Values.operator.replicas) 1) (not $le.enabled) -}}
{{- fail "operator.replicas: more than one replica needs operator.leaderElection.enabled=true, or replicas would reconcile at the same time" -}}
{{- end -}}
{{- if ge (int $le.renewDeadlineSeconds) (int $le.leaseDurationSeconds) -}}
{{- fail "operator.leaderElection.renewDeadlineSeconds: must be less than leaseDurationSeconds" -}}
{{- end -}}
{{- if ge (int $le.retryPeriodSeconds) (int $le.renewDeadlineSeconds) -}}
{{- fail "operator.leaderElection.retryPeriodSeconds: must be less than renewDeadlineSeconds" -}}
{{- end -}}
{{- $ports := list .Values.operator.ports.webhook .Values.operator.ports.metrics .Values.operator.ports.health -}}
{{- if ne (len (uniq $ports)) 3 -}}
{{- fail "operator.ports: webhook, metrics and health must be different ports" -}}
{{- end -}}
{{- if eq (int .Values.dataplane.metricsPort) (int .Values.dataplane.healthPort) -}}
{{- fail "dataplane.healthPort: must differ from dataplane.metricsPort" -}}
{{- end -}}
{{- if and .Values.metrics.serviceMonitor.enabled .Values.metrics.podMonitor.enabled -}}
{{- fail "metrics: enable serviceMonitor or podMonitor, not both, or Prometheus scrapes every target twice" -}}
{{- end -}}
{{- if has (int .Values.dataplane.flowPort) (list (int .Values.dataplane.metricsPort) (int .Values.dataplane.healthPort)) -}}
{{- fail "dataplane.flowPort: must differ from dataplane.metricsPort and dataplane.healthPort" -}}
{{- end -}}
{{- end -}}

{{/* OTEL_RESOURCE_ATTRIBUTES: key=value pairs separated by commas, in key order. */}}
{{- define "naat.otelResourceAttributes" -}}
{{- $pairs := list -}}
{{- range $key, $value := . -}}
{{- $pairs = append $pairs (printf "%s=%s" $key $value) -}}
{{- end -}}
{{- join "," $pairs -}}
{{- end -}}
