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

// leaseRefreshBatch bounds the leases renewed (or voided) by one script
// call, so that a replica with many open tunnels never blocks Redis for long.
const leaseRefreshBatch = 256

// maxOrphans bounds the leases waiting to be voided while Redis does not
// answer (see Redis.orphans); past it, a lease is left to expire by itself.
const maxOrphans = 1 << 16

// leaseHeartbeat is how often a replica that holds leases checks its
// connection to Redis: a Redis that restarted is reconnected to, which
// re-creates the leases (OnConnect), within this time even while the
// replica has no other traffic.
const leaseHeartbeat = time.Second

// orphansPerAcquire bounds the orphans of its key an Acquire voids in its
// own script call.
const orphansPerAcquire = 32

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
//
// Renewal re-creates a held lease that Redis lost (a restart without
// persistence): within one renewal, or at once on reconnecting, the open
// slots count again. A lease that must go but whose removal may not have
// reached Redis (a release or a given-up acquire while Redis hung or was
// down) is an orphan, voided again until Redis confirms: see orphans.
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
	voidScript    *redis.Script

	// owner starts every lease id of this backend; with leaseSeq it makes
	// ids unique across replicas without asking Redis.
	owner    string
	leaseSeq atomic.Uint64

	// mu guards leases: the slots this backend holds now, to refresh them.
	// A lease leaves the set when released, so its size is bounded by the
	// open requests and tunnels.
	mu     sync.Mutex
	leases map[*redisLease]struct{}
	// orphans are leases to void, by set key and lease id, with when they
	// became orphans. A command that timed out on our side may still run
	// when Redis wakes from a hang: go-redis gives up on the connection,
	// not the command, and even retries it once. So a release or an
	// acquire that failed leaves a lease that can count against the cap
	// for LeaseTTL after the hang (this is what refused requests right
	// after a hang ended, although fewer slots were in use than the cap).
	// Voiding removes the lease and leaves a tombstone for LeaseTTL that
	// makes a late run of its acquire or renewal add nothing. Guarded by mu.
	orphans   map[string]map[string]time.Time
	nOrphans  int
	lostNoted bool // an orphan was dropped since the last successful sweep

	// wake asks the background goroutine to renew and sweep now: on a new
	// connection (Redis may have restarted) and on a new orphan.
	wake      chan struct{}
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
	var r *Redis
	// A new connection may follow a Redis restart that lost every lease:
	// re-create them on it before it carries anything else, so that no
	// Acquire of this replica is decided on a count without them.
	clientOpts.OnConnect = func(_ context.Context, cn *redis.Conn) error {
		return r.refreshOnce(cn)
	}
	client := redis.NewClient(clientOpts)
	r = &Redis{
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
		voidScript:    redis.NewScript(voidLua),
		owner:         hex.EncodeToString(owner),
		leases:        make(map[*redisLease]struct{}),
		orphans:       make(map[string]map[string]time.Time),
		wake:          make(chan struct{}, 1),
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

// Client is the Redis client the backend uses, for other counters kept
// beside the quota's (budgets); it stays the backend's to close.
func (r *Redis) Client() *redis.Client { return r.client }

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
	// This replica's orphans of the key go first, in the same script: a
	// slot that a hang kept from being released never refuses a request
	// once Redis answers again.
	keys := []string{setKey, r.voidKey(id)}
	args := []any{max, id, r.leaseTTL.Milliseconds()}
	orphans := r.orphansOf(setKey, orphansPerAcquire)
	for _, o := range orphans {
		keys = append(keys, r.voidKey(o))
		args = append(args, o)
	}
	granted, err := r.acquireScript.Run(ctx, r.client, keys, args...).Int()
	if err != nil {
		// The script may still run after this call gave up on it (a slow
		// server, a cancelled request), leaving a lease nobody releases or
		// refreshes that holds a slot until it expires: void it.
		r.addOrphan(setKey, id)
		if ctxErr := ctx.Err(); ctxErr != nil {
			return Slot{}, fmt.Errorf("quota: redis acquire %q: %w", key, ctxErr)
		}
		if r.onError == FailOpen {
			return Slot{Acquired: true, FailedOpen: true}, nil
		}
		return Slot{}, fmt.Errorf("quota: redis acquire %q: %w: %w", key, ErrUnavailable, err)
	}
	r.dropOrphans(setKey, orphans)
	if granted == 0 {
		return Slot{}, nil
	}
	l := &redisLease{backend: r, setKey: setKey, id: id}
	r.mu.Lock()
	r.leases[l] = struct{}{}
	r.mu.Unlock()
	return Slot{Acquired: true, lease: l}, nil
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

// voidKey is the tombstone of a voided lease id.
func (r *Redis) voidKey(id string) string {
	return r.prefix + "void:" + id
}

// poke wakes the background goroutine, without waiting.
func (r *Redis) poke() {
	select {
	case r.wake <- struct{}{}:
	default:
	}
}

// addOrphan records a lease to void, and wakes the sweeper.
func (r *Redis) addOrphan(setKey, id string) {
	r.mu.Lock()
	ids := r.orphans[setKey]
	switch {
	case ids[id] != (time.Time{}):
	case r.nOrphans >= maxOrphans:
		if !r.lostNoted {
			r.lostNoted = true
			r.logger.Warn("quota: too many concurrency slots waiting to be released; the rest expire by themselves",
				"max", maxOrphans, "lease_ttl", r.leaseTTL)
		}
	default:
		if ids == nil {
			ids = make(map[string]time.Time)
			r.orphans[setKey] = ids
		}
		ids[id] = time.Now()
		r.nOrphans++
	}
	r.mu.Unlock()
	r.poke()
}

// orphansOf returns up to n orphan ids of setKey.
func (r *Redis) orphansOf(setKey string, n int) []string {
	r.mu.Lock()
	defer r.mu.Unlock()
	var out []string
	for id := range r.orphans[setKey] {
		if len(out) == n {
			break
		}
		out = append(out, id)
	}
	return out
}

// dropOrphans forgets orphans of setKey that Redis has voided.
func (r *Redis) dropOrphans(setKey string, ids []string) {
	if len(ids) == 0 {
		return
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	set := r.orphans[setKey]
	for _, id := range ids {
		if _, ok := set[id]; ok {
			delete(set, id)
			r.nOrphans--
		}
	}
	if len(set) == 0 {
		delete(r.orphans, setKey)
	}
}

// void removes leases and leaves their tombstones, in one script call per
// leaseRefreshBatch leases.
func (r *Redis) void(setKeys, ids []string) error {
	for start := 0; start < len(ids); start += leaseRefreshBatch {
		end := min(start+leaseRefreshBatch, len(ids))
		keys := make([]string, 0, 2*(end-start))
		args := make([]any, 0, 1+end-start)
		args = append(args, r.leaseTTL.Milliseconds())
		for i := start; i < end; i++ {
			keys = append(keys, setKeys[i], r.voidKey(ids[i]))
			args = append(args, ids[i])
		}
		ctx, cancel := context.WithTimeout(context.Background(), r.timeout)
		err := r.voidScript.Run(ctx, r.client, keys, args...).Err()
		cancel()
		if err != nil {
			return err
		}
	}
	return nil
}

// sweepOrphans voids the orphans. An orphan
// older than twice LeaseTTL is dropped unvoided: its lease has expired,
// unless a hang kept its command waiting in Redis for that long.
func (r *Redis) sweepOrphans() error {
	r.mu.Lock()
	var setKeys, ids []string
	old := time.Now().Add(-2 * r.leaseTTL)
	for setKey, set := range r.orphans {
		for id, since := range set {
			if since.Before(old) {
				delete(set, id)
				r.nOrphans--
				continue
			}
			setKeys, ids = append(setKeys, setKey), append(ids, id)
		}
		if len(set) == 0 {
			delete(r.orphans, setKey)
		}
	}
	r.mu.Unlock()
	if len(ids) == 0 {
		return nil
	}
	if err := r.void(setKeys, ids); err != nil {
		return fmt.Errorf("quota: releasing %d concurrency slots: %w", len(ids), err)
	}
	r.mu.Lock()
	for i, id := range ids {
		if set := r.orphans[setKeys[i]]; set != nil {
			if _, ok := set[id]; ok {
				delete(set, id)
				r.nOrphans--
			}
			if len(set) == 0 {
				delete(r.orphans, setKeys[i])
			}
		}
	}
	r.lostNoted = false
	r.mu.Unlock()
	return nil
}

// redisLease is one slot held in Redis.
type redisLease struct {
	backend  *Redis
	setKey   string
	id       string
	released atomic.Bool
	// inDoubt: a renewal of it failed on our side and may still run in
	// Redis, re-creating it after a plain removal; it is voided instead.
	inDoubt atomic.Bool
}

// release removes the lease. It runs when a request ends, often because its
// context was cancelled, so it has a context of its own. If Redis does not
// answer, the lease becomes an orphan, voided in the background as soon as
// Redis answers again (and first thing by an Acquire of the same key).
func (l *redisLease) release(uint64) {
	if l.released.Swap(true) {
		return
	}
	r := l.backend
	r.mu.Lock()
	delete(r.leases, l)
	r.mu.Unlock()
	var err error
	if l.inDoubt.Load() {
		err = r.void([]string{l.setKey}, []string{l.id})
	} else {
		ctx, cancel := context.WithTimeout(context.Background(), r.timeout)
		err = r.client.ZRem(ctx, l.setKey, l.id).Err()
		cancel()
	}
	if err != nil {
		// Retried in the background, which logs a run of failures once.
		r.logger.Debug("quota: releasing a concurrency slot failed; retrying until Redis answers",
			"key", l.setKey, "err", err)
		r.addOrphan(l.setKey, l.id)
	}
}

// refreshLeases renews the held leases every LeaseTTL/3 until Close, so a
// lease misses two renewals before it can expire, and voids orphans. When
// woken (a new connection, a new orphan) it does both at once; while Redis
// does not answer it tries again every Timeout, so that leases are counted
// again and orphans voided right after Redis comes back.
func (r *Redis) refreshLeases() {
	defer close(r.stopped)
	ticker := time.NewTicker(r.leaseTTL / 3)
	defer ticker.Stop()
	heartbeat := time.NewTicker(min(leaseHeartbeat, r.leaseTTL/3))
	defer heartbeat.Stop()
	retry := time.NewTimer(time.Hour)
	retry.Stop()
	failing := false
	for {
		select {
		case <-r.stop:
			return
		case <-ticker.C:
		case <-r.wake:
			if failing {
				continue // the retry is due within Timeout anyway
			}
		case <-retry.C:
		case <-heartbeat.C:
			r.heartbeat()
			continue
		}
		err := r.refreshOnce(r.client)
		if serr := r.sweepOrphans(); err == nil {
			err = serr
		}
		switch {
		case err != nil && !failing:
			r.logger.Warn("quota: renewing or releasing concurrency slots failed; retrying until Redis answers",
				"lease_ttl", r.leaseTTL, "retry_every", r.timeout, "err", err)
		case err == nil && failing:
			r.logger.Info("quota: concurrency slots renewed and released again")
		}
		failing = err != nil
		if failing {
			retry.Reset(r.timeout)
		} else {
			retry.Stop()
		}
	}
}

// heartbeat pings Redis while this replica holds leases: a restarted
// Redis is then reconnected to, and OnConnect re-creates the leases. A
// failure is left to the renewals and their retries to report.
func (r *Redis) heartbeat() {
	r.mu.Lock()
	held := len(r.leases)
	r.mu.Unlock()
	if held == 0 {
		return
	}
	ctx, cancel := context.WithTimeout(context.Background(), r.timeout)
	defer cancel()
	if err := r.client.Ping(ctx).Err(); err != nil {
		r.logger.Debug("quota: redis heartbeat failed", "err", err)
	}
}

// refreshOnce renews every held lease through s, re-creating those Redis
// lost.
func (r *Redis) refreshOnce(s redis.Scripter) error {
	r.mu.Lock()
	held := make([]*redisLease, 0, len(r.leases))
	for l := range r.leases {
		held = append(held, l)
	}
	r.mu.Unlock()
	for start := 0; start < len(held); start += leaseRefreshBatch {
		batch := held[start:min(start+leaseRefreshBatch, len(held))]
		keys := make([]string, 0, 2*len(batch))
		args := make([]any, 0, 1+len(batch))
		args = append(args, r.leaseTTL.Milliseconds())
		for _, l := range batch {
			keys = append(keys, l.setKey, r.voidKey(l.id))
			args = append(args, l.id)
		}
		ctx, cancel := context.WithTimeout(context.Background(), r.timeout)
		err := r.refreshScript.Run(ctx, s, keys, args...).Err()
		cancel()
		for _, l := range batch {
			if err != nil {
				// The renewal may still run in Redis later, after a
				// plain release: only a tombstone stops it.
				l.inDoubt.Store(true)
			}
			if l.released.Load() {
				// Released while being renewed: the renewal may have
				// re-created it after the release removed it.
				r.addOrphan(l.setKey, l.id)
			}
		}
		if err != nil {
			return fmt.Errorf("quota: renewing %d concurrency slots: %w", len(batch), err)
		}
	}
	return nil
}

// The lease scripts read Redis's own clock (TIME, in milliseconds), so that
// every replica measures expiry on the same clock. A lease is a member of
// the key's sorted set, scored by its expiry; the set itself expires
// LeaseTTL after its last change, so a key whose holders all died leaves no
// trace.
const (
	// KEYS[1] lease set, KEYS[2] tombstone of ARGV[2]; ARGV[1] max,
	// ARGV[2] lease id, ARGV[3] TTL in ms; ARGV[3+i] (tombstone KEYS[2+i])
	// orphans to void first. Returns 1 if the lease is held, 0 if max
	// leases are live or the lease was voided (a late run of an acquire
	// given up on). An earlier try of the same call (go-redis retries a
	// timed-out one) may have added the lease already: it is kept, not
	// counted twice.
	acquireLua = `
local t = redis.call('TIME')
local now = t[1] * 1000 + math.floor(t[2] / 1000)
local ttl = tonumber(ARGV[3])
for i = 4, #ARGV do
  redis.call('ZREM', KEYS[1], ARGV[i])
  redis.call('SET', KEYS[i - 1], '1', 'PX', ttl)
end
if redis.call('EXISTS', KEYS[2]) == 1 then
  return 0
end
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now)
if not redis.call('ZSCORE', KEYS[1], ARGV[2]) and redis.call('ZCARD', KEYS[1]) >= tonumber(ARGV[1]) then
  return 0
end
redis.call('ZADD', KEYS[1], now + ttl, ARGV[2])
redis.call('PEXPIRE', KEYS[1], ttl)
return 1
`
	// KEYS[1] lease set. Returns the number of live leases.
	inUseLua = `
local t = redis.call('TIME')
local now = t[1] * 1000 + math.floor(t[2] / 1000)
return redis.call('ZCOUNT', KEYS[1], '(' .. now, '+inf')
`
	// KEYS[2i-1] lease set of ARGV[i+1], KEYS[2i] its tombstone; ARGV[1]
	// TTL in ms. Extends the leases, re-creating those Redis lost (a
	// restart), unless voided: a lease released meanwhile is voided by
	// the caller (see refreshOnce).
	refreshLua = `
local t = redis.call('TIME')
local now = t[1] * 1000 + math.floor(t[2] / 1000)
local ttl = tonumber(ARGV[1])
for i = 1, #KEYS, 2 do
  if redis.call('EXISTS', KEYS[i + 1]) == 0 then
    redis.call('ZADD', KEYS[i], now + ttl, ARGV[(i + 1) / 2 + 1])
    redis.call('PEXPIRE', KEYS[i], ttl)
  end
end
return 0
`
	// KEYS[2i-1] lease set of ARGV[i+1], KEYS[2i] its tombstone; ARGV[1]
	// TTL in ms. Removes the leases and keeps their tombstones for the
	// TTL, so that a late acquire or renewal of them adds nothing.
	voidLua = `
local ttl = tonumber(ARGV[1])
for i = 1, #KEYS, 2 do
  redis.call('ZREM', KEYS[i], ARGV[(i + 1) / 2 + 1])
  redis.call('SET', KEYS[i + 1], '1', 'PX', ttl)
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
