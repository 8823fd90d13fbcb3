package quota

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"log/slog"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/go-redis/redis_rate/v10"
	"github.com/redis/go-redis/v9"
)

// Defaults of RedisOptions.
const (
	// DefaultRedisTimeout bounds one Redis round trip (dial, write, read).
	// It is on the request path, so it is short: a Redis that does not
	// answer in this time is treated as unreachable (see OnError).
	DefaultRedisTimeout = 500 * time.Millisecond
	// DefaultLeaseTTL is how long a concurrency slot outlives the replica
	// that held it if that replica dies without releasing it.
	DefaultLeaseTTL = 30 * time.Second
)

// leaseRefreshBatch bounds the leases renewed by one script call, so that a
// replica with many open tunnels never blocks Redis for long.
const leaseRefreshBatch = 256

// RedisOptions configures a Redis backend (gateway.yaml quota.redis).
type RedisOptions struct {
	// Addr is "host:port", or a redis:// or rediss:// URL when a password,
	// database or TLS is needed.
	Addr string
	// Prefix starts every key the backend writes, e.g. "egressgw:".
	Prefix string
	// OnError says what happens while Redis cannot be reached; the zero
	// value is FailClosed.
	OnError OnError
	// Timeout bounds one Redis round trip; 0 means DefaultRedisTimeout.
	Timeout time.Duration
	// LeaseTTL is how long a concurrency slot survives without being
	// refreshed; held slots are refreshed every LeaseTTL/3. 0 means
	// DefaultLeaseTTL.
	LeaseTTL time.Duration
	// Logger receives the failures no caller is waiting for: refreshing
	// and releasing leases. Nil discards them.
	Logger *slog.Logger
}

// Redis is the [Limiter] shared by every replica through one Redis server.
//
// Request rates use the GCRA of github.com/go-redis/redis_rate, whose state
// is one timestamp per key, so replicas that share a key share the limit
// exactly. The limit is part of the key: a reload that keeps a limit keeps
// its state, and one that changes it starts the key afresh (full) on every
// replica at once, rather than reinterpreting the old timestamp under the
// new rate.
//
// Concurrency slots are leases: a sorted set per key whose members are lease
// ids scored by their expiry (Redis server time, so replicas' clocks do not
// matter). Taking a slot is one small Lua script (drop expired leases, count,
// add if under the maximum) because no maintained library covers leases and
// a script decides in one round trip, where MULTI/WATCH would retry under
// contention. A background goroutine renews the leases this replica holds;
// a replica that dies stops renewing and its slots come free after LeaseTTL.
type Redis struct {
	client   *redis.Client
	rates    *redis_rate.Limiter
	prefix   string
	onError  OnError
	timeout  time.Duration
	leaseTTL time.Duration
	logger   *slog.Logger

	acquireScript *redis.Script
	inUseScript   *redis.Script
	refreshScript *redis.Script

	// owner starts every lease id of this backend; with leaseSeq it makes
	// ids unique across replicas without asking Redis.
	owner    string
	leaseSeq atomic.Uint64

	// mu guards leases: the slots this backend holds now, to refresh them.
	// A lease leaves the set when released, so its size is bounded by the
	// open requests and tunnels.
	mu     sync.Mutex
	leases map[*redisLease]struct{}

	stop      chan struct{}
	stopped   chan struct{}
	closeOnce sync.Once
	closeErr  error
}

var _ Limiter = (*Redis)(nil)

// NewRedis returns a Redis backend and starts renewing its leases. It does
// not contact Redis: a Redis that is down at start is handled like one that
// goes down later, by OnError. Close stops it.
func NewRedis(opts RedisOptions) (*Redis, error) {
	switch opts.OnError {
	case "", FailClosed, FailOpen:
	default:
		return nil, fmt.Errorf("quota: redis on_error %q: want %q or %q", opts.OnError, FailClosed, FailOpen)
	}
	timeout := opts.Timeout
	if timeout <= 0 {
		timeout = DefaultRedisTimeout
	}
	leaseTTL := opts.LeaseTTL
	if leaseTTL <= 0 {
		leaseTTL = DefaultLeaseTTL
	}
	if leaseTTL < 3*time.Millisecond {
		return nil, fmt.Errorf("quota: redis lease TTL %v: want at least 3ms", leaseTTL)
	}
	clientOpts, err := redisClientOptions(opts.Addr)
	if err != nil {
		return nil, err
	}
	clientOpts.DialTimeout = timeout
	clientOpts.ReadTimeout = timeout
	clientOpts.WriteTimeout = timeout
	clientOpts.PoolTimeout = timeout
	// One retry covers a pooled connection that died with a Redis restart;
	// more would hold a request for seconds while Redis is down.
	clientOpts.MaxRetries = 1
	clientOpts.DialerRetries = 1
	// CLIENT SETINFO costs a round trip per connection and older servers
	// reject it.
	clientOpts.DisableIdentity = true

	owner := make([]byte, 8)
	if _, err := rand.Read(owner); err != nil {
		return nil, fmt.Errorf("quota: lease owner id: %w", err)
	}
	logger := opts.Logger
	if logger == nil {
		logger = slog.New(slog.DiscardHandler)
	}
	client := redis.NewClient(clientOpts)
	r := &Redis{
		client:        client,
		rates:         redis_rate.NewLimiter(prefixedScripter{client: client, prefix: opts.Prefix}),
		prefix:        opts.Prefix,
		onError:       opts.OnError,
		timeout:       timeout,
		leaseTTL:      leaseTTL,
		logger:        logger,
		acquireScript: redis.NewScript(acquireLua),
		inUseScript:   redis.NewScript(inUseLua),
		refreshScript: redis.NewScript(refreshLua),
		owner:         hex.EncodeToString(owner),
		leases:        make(map[*redisLease]struct{}),
		stop:          make(chan struct{}),
		stopped:       make(chan struct{}),
	}
	go r.refreshLeases()
	return r, nil
}

func redisClientOptions(addr string) (*redis.Options, error) {
	if strings.HasPrefix(addr, "redis://") || strings.HasPrefix(addr, "rediss://") {
		opts, err := redis.ParseURL(addr)
		if err != nil {
			// The URL may hold a password: name only the problem.
			return nil, errors.New("quota: redis addr: not a valid redis:// URL")
		}
		return opts, nil
	}
	if addr == "" {
		return nil, errors.New("quota: redis addr is empty")
	}
	return &redis.Options{Addr: addr}, nil
}

// Close stops renewing leases and closes the connections. It does not
// release the leases still held: slots of requests that are still running
// come free after LeaseTTL, as if the replica had died. A graceful shutdown
// lets requests finish (and release) first.
func (r *Redis) Close() error {
	r.closeOnce.Do(func() {
		close(r.stop)
		<-r.stopped
		if err := r.client.Close(); err != nil {
			r.closeErr = fmt.Errorf("quota: closing redis client: %w", err)
		}
	})
	return r.closeErr
}

// Allow takes one token from key's bucket if it has one.
func (r *Redis) Allow(ctx context.Context, key string, l Limit) (Result, error) {
	if l.Unlimited() {
		return Result{Allowed: true}, nil
	}
	res, err := r.rates.Allow(ctx, rateKey(key, l), redisRateLimit(l))
	if err != nil {
		return r.rateFailure(ctx, "allow", key, err)
	}
	return rateResult(key, l, res), nil
}

// AllowBoth takes one token from each bucket, or none when second has none
// left: it first looks at second without taking, then takes from first and
// second. Redis cannot decide two keys at once through redis_rate, so when
// other replicas empty second between the look and the take, the request is
// refused with first's token spent; that errs towards refusing, never
// towards exceeding a limit. It costs three round trips.
func (r *Redis) AllowBoth(ctx context.Context, first, second Bucket) (Result, error) {
	switch {
	case first.Limit.Unlimited():
		return r.Allow(ctx, second.Key, second.Limit)
	case second.Limit.Unlimited():
		return r.Allow(ctx, first.Key, first.Limit)
	}
	peek, err := r.peek(ctx, second.Key, second.Limit)
	if err != nil {
		return r.rateFailure(ctx, "peek", second.Key, err)
	}
	if !peek.Allowed {
		return peek, nil
	}
	ra, err := r.Allow(ctx, first.Key, first.Limit)
	if err != nil || !ra.Allowed || ra.FailedOpen {
		return ra, err
	}
	rb, err := r.Allow(ctx, second.Key, second.Limit)
	if err != nil || !rb.Allowed || rb.FailedOpen {
		return rb, err
	}
	return tighter(ra, rb), nil
}

// Peek reports key's bucket without taking a token. It is not an admission,
// so it never fails open: an unreachable Redis is an ErrUnavailable error
// whatever OnError says.
func (r *Redis) Peek(ctx context.Context, key string, l Limit) (Result, error) {
	if l.Unlimited() {
		return Result{Allowed: true}, nil
	}
	res, err := r.peek(ctx, key, l)
	if err != nil {
		if ctxErr := ctx.Err(); ctxErr != nil {
			return Result{}, fmt.Errorf("quota: redis peek %q: %w", key, ctxErr)
		}
		return Result{}, fmt.Errorf("quota: redis peek %q: %w: %w", key, ErrUnavailable, err)
	}
	return res, nil
}

// peek asks Redis for key's bucket without taking a token; errors are
// returned as they came.
func (r *Redis) peek(ctx context.Context, key string, l Limit) (Result, error) {
	// Asking for at most zero tokens takes nothing and reports the tokens
	// available, or the wait for the next one.
	res, err := r.rates.AllowAtMost(ctx, rateKey(key, l), redisRateLimit(l), 0)
	if err != nil {
		return Result{}, err
	}
	out := rateResult(key, l, res)
	out.Allowed = res.Remaining >= 1
	if out.Allowed {
		out.RetryAfter = 0
	}
	return out, nil
}

// rateKey returns the key redis_rate stores key's bucket under (redis_rate
// adds "rate:", prefixedScripter adds the prefix). The limit is part of it:
// see the Redis doc comment.
func rateKey(key string, l Limit) string {
	return key + "#" + strconv.FormatInt(int64(l.interval()), 10) + "x" + strconv.Itoa(l.burst())
}

// redisRateLimit expresses l for redis_rate, whose GCRA uses only
// Period/Rate (the time per token) and Burst: one token per interval is
// exactly l, whatever fractional rate l has.
func redisRateLimit(l Limit) redis_rate.Limit {
	return redis_rate.Limit{Rate: 1, Period: l.interval(), Burst: l.burst()}
}

func rateResult(key string, l Limit, res *redis_rate.Result) Result {
	out := Result{
		Allowed:    res.Allowed > 0,
		Key:        key,
		Limit:      l.burst(),
		Remaining:  max(res.Remaining, 0),
		ResetAfter: max(res.ResetAfter, 0),
	}
	if !out.Allowed {
		out.RetryAfter = max(res.RetryAfter, 0)
	}
	return out
}

// rateFailure turns a failed Redis call into what OnError asks for. A
// request whose own context ended is not a Redis outage: it gets that error
// and is never failed open.
func (r *Redis) rateFailure(ctx context.Context, op, key string, err error) (Result, error) {
	if ctxErr := ctx.Err(); ctxErr != nil {
		return Result{}, fmt.Errorf("quota: redis %s %q: %w", op, key, ctxErr)
	}
	if r.onError == FailOpen {
		return Result{Allowed: true, FailedOpen: true}, nil
	}
	return Result{}, fmt.Errorf("quota: redis %s %q: %w: %w", op, key, ErrUnavailable, err)
}

// Acquire takes one of key's max concurrency slots if one is free. A max of
// 0 or less means no limit: the slot is granted and nothing is stored.
func (r *Redis) Acquire(ctx context.Context, key string, max int) (Slot, error) {
	if max <= 0 {
		return Slot{Acquired: true}, nil
	}
	setKey := r.slotsKey(key)
	id := r.owner + ":" + strconv.FormatUint(r.leaseSeq.Add(1), 36)
	granted, err := r.acquireScript.Run(ctx, r.client, []string{setKey}, max, id, r.leaseTTL.Milliseconds()).Int()
	if err != nil {
		// The script may still run after this call gave up on it (a slow
		// server, a cancelled request), leaving a lease nobody releases or
		// refreshes that holds a slot until it expires: take it back.
		go r.withdraw(setKey, id)
		if ctxErr := ctx.Err(); ctxErr != nil {
			return Slot{}, fmt.Errorf("quota: redis acquire %q: %w", key, ctxErr)
		}
		if r.onError == FailOpen {
			return Slot{Acquired: true, FailedOpen: true}, nil
		}
		return Slot{}, fmt.Errorf("quota: redis acquire %q: %w: %w", key, ErrUnavailable, err)
	}
	if granted == 0 {
		return Slot{}, nil
	}
	l := &redisLease{backend: r, setKey: setKey, id: id}
	r.mu.Lock()
	r.leases[l] = struct{}{}
	r.mu.Unlock()
	return Slot{Acquired: true, lease: l}, nil
}

// withdraw removes a lease that Acquire gave up on. Redis runs commands in
// the order they arrive, so a removal sent after the acquire undoes it;
// while Redis stays unreachable it tries again a few times, and failing
// that the lease expires after LeaseTTL.
func (r *Redis) withdraw(setKey, id string) {
	wait := r.timeout
	for range 4 {
		ctx, cancel := context.WithTimeout(context.Background(), r.timeout)
		err := r.client.ZRem(ctx, setKey, id).Err()
		cancel()
		if err == nil {
			return
		}
		select {
		case <-r.stop:
			return
		case <-time.After(wait):
			wait *= 2
		}
	}
}

// InUse returns the number of key's slots held now by all replicas.
func (r *Redis) InUse(ctx context.Context, key string) (int, error) {
	n, err := r.inUseScript.Run(ctx, r.client, []string{r.slotsKey(key)}).Int()
	if err != nil {
		if ctxErr := ctx.Err(); ctxErr != nil {
			return 0, fmt.Errorf("quota: redis in-use %q: %w", key, ctxErr)
		}
		return 0, fmt.Errorf("quota: redis in-use %q: %w: %w", key, ErrUnavailable, err)
	}
	return n, nil
}

func (r *Redis) slotsKey(key string) string {
	return r.prefix + "slots:" + key
}

// redisLease is one slot held in Redis.
type redisLease struct {
	backend  *Redis
	setKey   string
	id       string
	released atomic.Bool
}

// release removes the lease. It runs when a request ends, often because its
// context was cancelled, so it has a context of its own. If Redis cannot be
// reached the lease is only dropped from refreshing and expires by itself.
func (l *redisLease) release(uint64) {
	if l.released.Swap(true) {
		return
	}
	r := l.backend
	r.mu.Lock()
	delete(r.leases, l)
	r.mu.Unlock()
	ctx, cancel := context.WithTimeout(context.Background(), r.timeout)
	defer cancel()
	if err := r.client.ZRem(ctx, l.setKey, l.id).Err(); err != nil {
		r.logger.Warn("quota: releasing a concurrency slot failed; it expires by itself",
			"key", l.setKey, "lease_ttl", r.leaseTTL, "err", err)
	}
}

// refreshLeases renews the held leases every LeaseTTL/3 until Close, so a
// lease misses two renewals before it can expire.
func (r *Redis) refreshLeases() {
	defer close(r.stopped)
	ticker := time.NewTicker(r.leaseTTL / 3)
	defer ticker.Stop()
	for {
		select {
		case <-r.stop:
			return
		case <-ticker.C:
			r.refreshOnce()
		}
	}
}

func (r *Redis) refreshOnce() {
	r.mu.Lock()
	keys := make([]string, 0, len(r.leases))
	args := make([]any, 1, len(r.leases)+1)
	args[0] = r.leaseTTL.Milliseconds()
	for l := range r.leases {
		keys = append(keys, l.setKey)
		args = append(args, l.id)
	}
	r.mu.Unlock()
	for start := 0; start < len(keys); start += leaseRefreshBatch {
		end := min(start+leaseRefreshBatch, len(keys))
		batchArgs := append([]any{args[0]}, args[1+start:1+end]...)
		ctx, cancel := context.WithTimeout(context.Background(), r.timeout)
		err := r.refreshScript.Run(ctx, r.client, keys[start:end], batchArgs...).Err()
		cancel()
		if err != nil {
			r.logger.Warn("quota: renewing concurrency slots failed; they expire unless a later renewal succeeds",
				"leases", end-start, "lease_ttl", r.leaseTTL, "err", err)
			return
		}
	}
}

// The lease scripts read Redis's own clock (TIME, in milliseconds), so that
// every replica measures expiry on the same clock. A lease is a member of
// the key's sorted set, scored by its expiry; the set itself expires
// LeaseTTL after its last change, so a key whose holders all died leaves no
// trace.
const (
	// KEYS[1] lease set; ARGV[1] max, ARGV[2] lease id, ARGV[3] TTL in ms.
	// Returns 1 if the lease was added, 0 if max leases are live.
	acquireLua = `
local t = redis.call('TIME')
local now = t[1] * 1000 + math.floor(t[2] / 1000)
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now)
if redis.call('ZCARD', KEYS[1]) >= tonumber(ARGV[1]) then
  return 0
end
redis.call('ZADD', KEYS[1], now + tonumber(ARGV[3]), ARGV[2])
redis.call('PEXPIRE', KEYS[1], ARGV[3])
return 1
`
	// KEYS[1] lease set. Returns the number of live leases.
	inUseLua = `
local t = redis.call('TIME')
local now = t[1] * 1000 + math.floor(t[2] / 1000)
return redis.call('ZCOUNT', KEYS[1], '(' .. now, '+inf')
`
	// KEYS[i] lease set of ARGV[i+1]; ARGV[1] TTL in ms. Extends leases
	// that still exist; XX never brings back one released meanwhile.
	refreshLua = `
local t = redis.call('TIME')
local now = t[1] * 1000 + math.floor(t[2] / 1000)
local ttl = tonumber(ARGV[1])
for i, key in ipairs(KEYS) do
  if redis.call('ZADD', key, 'XX', 'CH', now + ttl, ARGV[i + 1]) == 1 then
    redis.call('PEXPIRE', key, ttl)
  end
end
return 0
`
)

// prefixedScripter lets redis_rate run its scripts with keys that start with
// the configured prefix (redis_rate itself only adds "rate:"), so that all of
// the gateway's keys share one namespace, e.g. for a Redis ACL key pattern.
type prefixedScripter struct {
	client *redis.Client
	prefix string
}

func (p prefixedScripter) keys(keys []string) []string {
	if p.prefix == "" {
		return keys
	}
	out := make([]string, len(keys))
	for i, k := range keys {
		out[i] = p.prefix + k
	}
	return out
}

func (p prefixedScripter) Eval(ctx context.Context, script string, keys []string, args ...any) *redis.Cmd {
	return p.client.Eval(ctx, script, p.keys(keys), args...)
}

func (p prefixedScripter) EvalSha(ctx context.Context, sha1 string, keys []string, args ...any) *redis.Cmd {
	return p.client.EvalSha(ctx, sha1, p.keys(keys), args...)
}

func (p prefixedScripter) EvalRO(ctx context.Context, script string, keys []string, args ...any) *redis.Cmd {
	return p.client.EvalRO(ctx, script, p.keys(keys), args...)
}

func (p prefixedScripter) EvalShaRO(ctx context.Context, sha1 string, keys []string, args ...any) *redis.Cmd {
	return p.client.EvalShaRO(ctx, sha1, p.keys(keys), args...)
}

func (p prefixedScripter) ScriptExists(ctx context.Context, hashes ...string) *redis.BoolSliceCmd {
	return p.client.ScriptExists(ctx, hashes...)
}

func (p prefixedScripter) ScriptLoad(ctx context.Context, script string) *redis.StringCmd {
	return p.client.ScriptLoad(ctx, script)
}

func (p prefixedScripter) Del(ctx context.Context, keys ...string) *redis.IntCmd {
	return p.client.Del(ctx, p.keys(keys)...)
}
