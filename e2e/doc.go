// Package e2e holds the end-to-end tests of egressgw. They build the real
// binary, run it as a process against a config directory written per test,
// and drive it with the clients sandboxes use (Go, curl, Python, Node, git),
// asserting only what a user of the gateway would notice: statuses, error
// bodies, audit lines, metrics and CLI output. The package has no code of
// its own.
//
// Running:
//
//	go test ./e2e                 # builds cmd/egressgw first
//	go test -race ./e2e           # the gateway is built with -race too
//	EGRESSGW_E2E_BINARY=/path/to/egressgw go test ./e2e   # test a prebuilt binary
//
// Every gateway resolves names through a DNS server the tests run (the test
// zone is in dns_test.go) and may reach 127.0.0.1 through
// network.allow_cidrs; 127.0.0.2 plays a denied internal address, so the
// tests need Linux's whole-127/8 loopback. Client tests skip, saying why,
// when curl, python3, git or node is missing; the Node test also needs
// `npm install` in e2e/testdata/node.
package e2e
