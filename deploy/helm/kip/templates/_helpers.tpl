{{/* kip.namespace fails unless the release is in kube-system, where kip keeps its CA and Lease. */}}
{{- define "kip.namespace" -}}
{{- if ne .Release.Namespace "kube-system" -}}
{{- fail (printf "install kip into kube-system (helm install -n kube-system), not %q: kip keeps its CA Secret and its Lease there" .Release.Namespace) -}}
{{- end -}}
{{- .Release.Namespace -}}
{{- end -}}

{{- define "kip.labels" -}}
app.kubernetes.io/name: kip
{{- end -}}
