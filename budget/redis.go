package budget

import (
	"context"
	"fmt"
	"strconv"
	"strings"
	"time"

	"github.com/redis/go-redis/v9"
)

// Redis is a Backend in Redis, shared by replicas: each flush is one
// pipeline of HINCRBY (and EXPIREAT), each read one of HMGET or HGETALL.
// Counters live in one hash per tenant and period start, for lines and
// for budgets apart, and expire the period's retention after it ends.
type Redis struct {
	client redis.UniversalClient
	prefix string
}

// NewRedis keeps counters through client, which it does not own: Close
// leaves it open for its owner (the quota backend) to close.
func NewRedis(client redis.UniversalClient, prefix string) *Redis {
	return &Redis{client: client, prefix: prefix}
}

var dimensionField = [dimensions]string{"r", "e", "i", "c"}

func (r *Redis) hashKey(k Key) string {
	kind := "lines"
	if k.Budget != "" {
		kind = "budgets"
	}
	return fmt.Sprintf("%sbudget:%s:%s:%s:%d", r.prefix, kind, k.Tenant, k.Period, k.Start.Unix())
}

// field names a counter inside its hash: "name:r" for a budget,
// "connector@version:r" for a line. Tenant, budget and connector names
// hold no ':' or '@' (docs/reference.md).
func field(k Key) string {
	if k.Budget != "" {
		return k.Budget
	}
	return k.Connector + "@" + strconv.Itoa(k.Version)
}

func expiry(k Key) time.Time {
	_, end := k.Period.Bounds(k.Start)
	return end.Add(retention(k.Period))
}

// Add adds deltas in one pipeline.
func (r *Redis) Add(ctx context.Context, deltas []Delta) error {
	if len(deltas) == 0 {
		return nil
	}
	pipe := r.client.Pipeline()
	expiring := map[string]time.Time{}
	for _, d := range deltas {
		key, f := r.hashKey(d.Key), field(d.Key)
		for i, n := range d.Counts {
			if n != 0 {
				pipe.HIncrBy(ctx, key, f+":"+dimensionField[i], n)
			}
		}
		if d.Key.Budget == "" {
			pipe.HSet(ctx, key, f+":price", formatPrice(d.Price))
		}
		expiring[key] = expiry(d.Key)
	}
	for key, at := range expiring {
		pipe.ExpireAt(ctx, key, at)
	}
	if _, err := pipe.Exec(ctx); err != nil {
		return fmt.Errorf("%w: %v", ErrUnavailable, err)
	}
	return nil
}

// Counts reads counters in one pipeline.
func (r *Redis) Counts(ctx context.Context, keys []Key) ([]Counts, error) {
	if len(keys) == 0 {
		return nil, nil
	}
	pipe := r.client.Pipeline()
	cmds := make([]*redis.SliceCmd, len(keys))
	for i, k := range keys {
		f := field(k)
		cmds[i] = pipe.HMGet(ctx, r.hashKey(k), f+":r", f+":e", f+":i", f+":c")
	}
	if _, err := pipe.Exec(ctx); err != nil && err != redis.Nil {
		return nil, fmt.Errorf("%w: %v", ErrUnavailable, err)
	}
	out := make([]Counts, len(keys))
	for i, cmd := range cmds {
		for d, v := range cmd.Val() {
			if s, ok := v.(string); ok {
				n, err := strconv.ParseInt(s, 10, 64)
				if err != nil {
					return nil, fmt.Errorf("%w: counter %s: %v", ErrUnavailable, keys[i].Budget, err)
				}
				out[i][d] = n
			}
		}
	}
	return out, nil
}

// Lines reads a tenant's lines of one period.
func (r *Redis) Lines(ctx context.Context, tenant string, p Period, start time.Time) ([]StoredLine, error) {
	all, err := r.client.HGetAll(ctx, r.hashKey(Key{Tenant: tenant, Period: p, Start: start})).Result()
	if err != nil {
		return nil, fmt.Errorf("%w: %v", ErrUnavailable, err)
	}
	lines := map[string]*StoredLine{}
	for f, v := range all {
		name, dim, ok := strings.Cut(f, ":")
		connector, version, ok2 := strings.Cut(name, "@")
		ver, err := strconv.Atoi(version)
		if !ok || !ok2 || err != nil {
			continue // not a field this package writes
		}
		l := lines[name]
		if l == nil {
			l = &StoredLine{Connector: connector, Version: ver}
			lines[name] = l
		}
		if dim == "price" {
			l.Price = parsePrice(v)
			continue
		}
		for d, df := range dimensionField {
			if df == dim {
				n, err := strconv.ParseInt(v, 10, 64)
				if err != nil {
					return nil, fmt.Errorf("%w: counter %s: %v", ErrUnavailable, f, err)
				}
				l.Counts[d] = n
			}
		}
	}
	out := make([]StoredLine, 0, len(lines))
	for _, l := range lines {
		out = append(out, *l)
	}
	return out, nil
}

func formatPrice(p Price) string {
	return strconv.FormatFloat(p.PerRequest, 'g', -1, 64) + "," +
		strconv.FormatFloat(p.PerGiBEgress, 'g', -1, 64) + "," +
		strconv.FormatFloat(p.PerGiBIngress, 'g', -1, 64)
}

func parsePrice(s string) Price {
	parts := strings.Split(s, ",")
	var v [3]float64
	for i := 0; i < len(parts) && i < 3; i++ {
		v[i], _ = strconv.ParseFloat(parts[i], 64)
	}
	return Price{PerRequest: v[0], PerGiBEgress: v[1], PerGiBIngress: v[2]}
}

// Close does nothing: the client is its owner's.
func (r *Redis) Close() error { return nil }
