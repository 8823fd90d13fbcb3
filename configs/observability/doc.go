// Package observability holds egressgw's monitoring pack: a Grafana
// dashboard (grafana-dashboard.json), Prometheus alerting rules
// (prometheus-alerts.yaml) and a Prometheus Operator ServiceMonitor. It has
// no Go code; its tests keep the dashboard and the rules to the metric
// names and labels of docs/operators.md, "Metrics", so that they cannot silently drift
// from what the gateway exports.
package observability
