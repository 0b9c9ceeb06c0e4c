//go:build tools

// The patched cmd/main.go of kube-network-policies (host.patch) reads a kubeconfig with
// clientcmd; this keeps that package's modules in go.mod and go.sum.
package tools

import _ "k8s.io/client-go/tools/clientcmd"
