//go:build tools

// Package tools pins CoreDNS, the cluster DNS the node tests run, so go.mod and go.sum hold its
// whole dependency graph.
package tools

import (
	_ "github.com/coredns/coredns"
)
