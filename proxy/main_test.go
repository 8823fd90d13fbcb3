package proxy

import (
	"testing"

	"go.uber.org/goleak"

	"github.com/egressgw/egressgw/hooks"
)

// TestMain fails the package's tests when they leave goroutines behind: a
// tunnel relay, hook worker or timer that outlives its gateway is a leak
// in production too, where gateways are rebuilt on every reload test.
func TestMain(m *testing.M) {
	hooks.WorkerMain() // tests that run hooks start this binary as their workers
	goleak.VerifyTestMain(m)
}
