//go:build tools

// Package tools pins the Kubernetes control-plane commands this module builds, so go.mod and
// go.sum hold their whole dependency graph.
package tools

import (
	_ "k8s.io/kubernetes/cmd/kube-apiserver"
	_ "k8s.io/kubernetes/cmd/kube-controller-manager"
)
