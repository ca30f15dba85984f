//go:build tools

// Package tools pins the Kubernetes node commands this module builds (the kubelet and the
// scheduler), so go.mod and go.sum hold their whole dependency graph.
package tools

import (
	_ "k8s.io/kubernetes/cmd/kube-scheduler"
	_ "k8s.io/kubernetes/cmd/kubelet"
)
