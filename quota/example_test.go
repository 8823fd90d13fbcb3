package quota_test

import (
	"context"
	"errors"
	"fmt"
	"io"
	"strings"

	"github.com/egressgw/egressgw/quota"
)

// The admit step of one request, as the proxy runs it after the allowlist
// decided: rate (tenant and tenant×connector together), then a concurrency
// slot held until the request ends, then shaped bodies.
func Example() {
	limiter := quota.NewMemory(quota.MemoryOptions{}) // or quota.NewRedis
	defer limiter.Close()
	bandwidth := quota.NewBandwidth(quota.BandwidthOptions{Replicas: 1})
	ctx := context.Background()

	admit := func(tenant, connector string) string {
		rate, err := limiter.AllowBoth(ctx,
			quota.Bucket{Key: tenant, Limit: quota.Limit{Rate: 50, Burst: 2}},
			quota.Bucket{Key: tenant + "|" + connector, Limit: quota.Limit{Rate: 10, Burst: 20}})
		switch {
		case errors.Is(err, quota.ErrUnavailable):
			return "503 quota_unavailable"
		case err != nil:
			return "client gone"
		case !rate.Allowed:
			return fmt.Sprintf("429 rate_limited, Retry-After: %d", rate.RetryAfterSeconds())
		}
		slot, err := limiter.Acquire(ctx, tenant, 64)
		if err != nil {
			return "503 quota_unavailable"
		}
		defer slot.Release() // on every path: done, client gone, upstream error
		if !slot.Acquired {
			return "429 concurrency_limited"
		}

		// Egress: what the client sends upstream; ingress: what comes back.
		egress := bandwidth.Shaper(tenant+"/egress", 1<<20)
		ingress := bandwidth.Shaper(tenant+"/ingress", 0) // no limit: nil, nothing on the path
		n, _ := io.Copy(io.Discard, egress.Reader(ctx, strings.NewReader("request body")))
		m, _ := io.Copy(io.Discard, ingress.Reader(ctx, strings.NewReader("response")))
		return fmt.Sprintf("200, RateLimit-Limit: %d, RateLimit-Remaining: %d, RateLimit-Reset: %d; %d bytes up, %d down",
			rate.Limit, rate.Remaining, rate.ResetSeconds(), n, m)
	}
	for range 3 {
		fmt.Println(admit("acme", "github"))
	}
	// Output:
	// 200, RateLimit-Limit: 2, RateLimit-Remaining: 1, RateLimit-Reset: 1; 12 bytes up, 8 down
	// 200, RateLimit-Limit: 2, RateLimit-Remaining: 0, RateLimit-Reset: 1; 12 bytes up, 8 down
	// 429 rate_limited, Retry-After: 1
}
