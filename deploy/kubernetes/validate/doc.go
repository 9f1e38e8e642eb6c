// Package validate checks the Kubernetes manifests under deploy/kubernetes.
package validate
