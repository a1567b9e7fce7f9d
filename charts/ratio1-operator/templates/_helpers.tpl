{{- define "ratio1.fullname" -}}
{{- if contains .Chart.Name .Release.Name -}}
{{- .Release.Name | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .Release.Name .Chart.Name | trunc 63 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}

{{- define "ratio1.labels" -}}
app.kubernetes.io/name: {{ .Chart.Name }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/part-of: ratio1
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version }}
{{- end -}}

{{- define "ratio1.selectorLabels" -}}
app.kubernetes.io/name: {{ .Chart.Name }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end -}}

{{- define "ratio1.serviceAccountName" -}}
{{- if .Values.serviceAccount.create -}}
{{- default (include "ratio1.fullname" .) .Values.serviceAccount.name -}}
{{- else -}}
{{- default "default" .Values.serviceAccount.name -}}
{{- end -}}
{{- end -}}

{{- /* CSTORE's etcd (etcd.enabled): its own name, labels and selector, apart
from the operator's (the operator's Deployment, Services and tests select
app.kubernetes.io/name=ratio1-operator, which etcd's pods must not carry). */ -}}
{{- define "ratio1.etcd.fullname" -}}
{{- printf "%s-etcd" (include "ratio1.fullname" .) | trunc 52 | trimSuffix "-" -}}
{{- end -}}

{{- define "ratio1.etcd.selectorLabels" -}}
app.kubernetes.io/name: etcd
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/component: cstore
{{- end -}}

{{- define "ratio1.etcd.labels" -}}
{{ include "ratio1.etcd.selectorLabels" . }}
app.kubernetes.io/version: {{ .Values.etcd.image.tag | quote }}
app.kubernetes.io/part-of: ratio1
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version }}
{{- end -}}

{{- /* The etcd client URL the operator is given when the chart runs etcd. */ -}}
{{- define "ratio1.etcd.clientURL" -}}
{{- printf "http://%s.%s.svc:2379" (include "ratio1.etcd.fullname" .) .Release.Namespace -}}
{{- end -}}
