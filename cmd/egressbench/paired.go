package main

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"sync/atomic"
	"time"
)

// pairedSlice is how long one side of the paired small-request comparison
// runs before the other takes its turn: long enough for thousands of
// requests, short enough that load from elsewhere on the machine changes
// little between the two halves of a pair.
const pairedSlice = 500 * time.Millisecond

// runSmallPaired measures egressgw's small-request throughput against the
// bare goproxy's in alternating slices of the same window, the two sides
// taking turns to go first, and reports the median over slice pairs of the
// ratio. Run one after the other, the two small-request figures each carry
// whatever else the machine did during their own window; here a burst of
// outside load falls on one pair, which the median sets aside.
func runSmallPaired(ctx context.Context, s *session, t *runningTarget) (outcome, error) {
	bare := s.targets[targetBareGoproxy]
	if bare == nil {
		return outcome{without: map[string]string{figSmallPairedRatio: "needs the bare-goproxy target in the same run"}, values: map[string]float64{}}, nil
	}
	env, c := s.env, s.env.opts.concurrency
	type side struct {
		clients *clientGroup
		op      operation
		rates   []float64
		failed  int64
		first   string
	}
	newSide := func(target *runningTarget) *side {
		clients, op := smallLoad(env, target, c)
		return &side{clients: clients, op: op}
	}
	sides := [2]*side{newSide(t), newSide(bare)}
	defer func() {
		for _, sd := range sides {
			sd.clients.close()
		}
	}()
	for _, sd := range sides { // connections open and pools warm before anything counts
		runSlice(ctx, c, s.window().warmup, sd.op)
	}
	pairs := max(2, int(s.window().measure/pairedSlice))
	slice := s.window().measure / time.Duration(pairs)
	for i := range pairs {
		for k := range 2 {
			sd := sides[(i+k)%2]
			r := runSlice(ctx, c, slice, sd.op)
			if err := ctx.Err(); err != nil {
				return outcome{}, err
			}
			sd.rates = append(sd.rates, float64(r.ops)/r.elapsed.Seconds())
			if r.errors > 0 && sd.failed == 0 {
				sd.first = r.firstErr
			}
			sd.failed += r.errors
		}
	}
	ratios := make([]float64, pairs)
	for i := range ratios {
		if sides[1].rates[i] <= 0 {
			return outcome{}, fmt.Errorf("bare goproxy completed no request in slice %d of %v", i+1, slice)
		}
		ratios[i] = sides[0].rates[i] / sides[1].rates[i]
	}
	out := outcome{values: map[string]float64{figSmallPairedRatio: median(ratios)}}
	for _, sd := range []struct {
		name string
		*side
	}{{t.name, sides[0]}, {bare.name, sides[1]}} {
		if sd.failed > 0 {
			out.problems = append(out.problems, fmt.Sprintf("%s: %d failed (first: %s)", sd.name, sd.failed, sd.first))
		}
	}
	return out, nil
}

// runSlice runs workers in a closed loop for d and counts the operations
// that ended within it. Unlike runClosedLoop it does not cancel the
// operations in flight when d is up but lets them finish uncounted: a
// cancelled request closes its keep-alive connection, and the next slice
// would then pay for a new one.
func runSlice(ctx context.Context, workers int, d time.Duration, op operation) loadResult {
	start := time.Now()
	end := start.Add(d)
	m := &meter{}
	var counted atomic.Int64
	var wg sync.WaitGroup
	for i := range workers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for ctx.Err() == nil && time.Now().Before(end) {
				if err := op(ctx, i, m); err != nil {
					if ctx.Err() == nil && !errors.Is(err, context.Canceled) {
						m.fail(err)
						sleepCtx(ctx, errorBackoff)
					}
					continue
				}
				if !time.Now().After(end) {
					counted.Add(1)
				}
			}
		}()
	}
	wg.Wait()
	return loadResult{ops: counted.Load(), errors: m.errors.Load(), firstErr: m.firstErr, elapsed: d}
}
