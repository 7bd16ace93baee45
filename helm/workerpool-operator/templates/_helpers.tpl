{{/* Chart name, overridable. */}}
{{- define "workerpool-operator.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* Full name: release name plus chart name, unless the release name already holds it. */}}
{{- define "workerpool-operator.fullname" -}}
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

{{/* Labels on every object. */}}
{{- define "workerpool-operator.labels" -}}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{ include "workerpool-operator.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/component: operator
{{- end }}

{{/* Labels that select the operator pod. */}}
{{- define "workerpool-operator.selectorLabels" -}}
app.kubernetes.io/name: {{ include "workerpool-operator.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end }}

{{/* The operator's ServiceAccount name. */}}
{{- define "workerpool-operator.serviceAccountName" -}}
{{- if .Values.serviceAccount.create }}
{{- default (include "workerpool-operator.fullname" .) .Values.serviceAccount.name }}
{{- else }}
{{- required "serviceAccount.name is required when serviceAccount.create is false" .Values.serviceAccount.name }}
{{- end }}
{{- end }}

{{/* The leader-election Lease's name (in the release namespace). */}}
{{- define "workerpool-operator.leaseName" -}}
{{- default (include "workerpool-operator.fullname" .) .Values.leaderElection.leaseName }}
{{- end }}

{{/* The operator image reference. */}}
{{- define "workerpool-operator.image" -}}
{{- printf "%s:%s" .Values.image.repository (default .Chart.AppVersion .Values.image.tag) }}
{{- end }}

{{/*
RBAC rules for the namespaced resources the operator works on; used by the ClusterRole (all namespaces)
or by one Role per watched namespace. Each rule lists exactly the verbs the operator calls.
*/}}
{{- define "workerpool-operator.namespacedRules" -}}
# WorkerPools: kopf watches them and patches its progress annotations and finalizer.
- apiGroups: ["workerpool.dev"]
  resources: ["workerpools"]
  verbs: ["get", "list", "watch", "patch"]
# WorkerPool status (conditions, per-queue figures).
- apiGroups: ["workerpool.dev"]
  resources: ["workerpools/status"]
  verbs: ["patch"]
# The per-queue Deployments the operator renders and owns; beat's and Flower's. Written with Server-Side Apply: a
# patch, which is also a create when the object is new (the API server then checks both verbs).
- apiGroups: ["apps"]
  resources: ["deployments"]
  verbs: ["get", "list", "watch", "create", "patch", "delete"]
# Their replica counts: the scaler applies spec.replicas alone, through the scale subresource.
- apiGroups: ["apps"]
  resources: ["deployments/scale"]
  verbs: ["patch"]
# Flower's Service (spec.flower): rendered, owned and watched (put back when edited or deleted by hand) like the
# Deployments.
- apiGroups: [""]
  resources: ["services"]
  verbs: ["get", "list", "watch", "create", "patch", "delete"]
# Worker pods: annotated by name (from the worker reports) with pod-deletion-cost before a scale-down.
- apiGroups: [""]
  resources: ["pods"]
  verbs: ["patch"]
# Broker URL Secrets, read by name only: never list or watch.
- apiGroups: [""]
  resources: ["secrets"]
  verbs: ["get"]
# Events on WorkerPools (scale decisions, errors to act on).
- apiGroups: [""]
  resources: ["events"]
  verbs: ["create"]
{{- end }}

{{/* Labels of the `helm test` pod: the release's, but not the operator pods' selector. */}}
{{- define "workerpool-operator.testLabels" -}}
app.kubernetes.io/name: {{ include "workerpool-operator.name" . }}-test
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/component: test
{{- end }}
