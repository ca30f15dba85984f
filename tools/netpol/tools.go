//go:build tools

// Package tools pins kube-network-policies, the NetworkPolicy agent the node tests run, so go.mod
// and go.sum hold its whole dependency graph.
package tools

import (
	_ "sigs.k8s.io/kube-network-policies/cmd"
)
