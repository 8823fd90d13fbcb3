// Package kubernetes holds the example deployment of egressgw on
// Kubernetes: the YAML manifests beside this file, applied with
// `kubectl apply -k configs/kubernetes`. It has no Go code; its tests parse
// every manifest and check that the references between them agree (names,
// labels, ports, keys, mounted paths, the binary's flags) and that the
// ConfigMap is a config directory `egressgw check` accepts and
// `egressgw serve` serves, with its admin API behind the example's admin
// tokens and its probes and metrics open.
package kubernetes
