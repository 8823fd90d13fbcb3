package state

import (
	"context"
	"crypto/rand"
	"crypto/sha256"
	"encoding/binary"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"strconv"
	"strings"
	"time"

	"github.com/redis/go-redis/v9"
)

// DefaultRedisTimeout bounds one Redis round trip of the state backend.
const DefaultRedisTimeout = 2 * time.Second

// RedisOptions configures a Redis backend.
type RedisOptions struct {
	Options
	// Addr is "host:port", or a redis:// or rediss:// URL when a password,
	// database or TLS is needed.
	Addr string
	// Prefix starts every key, e.g. "egressgw:"; this backend adds
	// "access:" to it, so other kinds of state can live beside it.
	Prefix string
	// Timeout bounds one round trip; 0 means DefaultRedisTimeout.
	Timeout time.Duration
}

// Redis is the Store shared by replicas through one Redis server.
//
// Keys, all under Prefix+"access:":
//
//	version        counter, INCRed by every change but a count update; it
//	               starts at a random value (see bumpVersion)
//	req:H          hash, one access request (H: SHA-256 of tenant, host, port)
//	ids            hash, request id -> H
//	seen           sorted set of H by last seen (ms): the bound on requests
//	grant:ID       string, the grant's JSON; expires with the grant (PXAT)
//	grants         sorted set of grant ids by expiry (ms)
//
// Folding a refusal into its request, creating it and evicting the least
// recently seen is one Lua script, so concurrent refusals on many replicas
// count exactly. A decision and its grant are written by one script too,
// which first checks that the request is still pending. Keys of evicted
// requests are named inside the first script, so the backend needs a
// single Redis (not Cluster).
type Redis struct {
	opts         Options
	client       *redis.Client
	prefix       string
	sightScript  *redis.Script // see sightLua
	decideScript *redis.Script // see decideLua
}

var _ Store = (*Redis)(nil)

// NewRedis returns a Redis backend. It does not contact Redis: every call
// that cannot reach it returns an error.
func NewRedis(opts RedisOptions) (*Redis, error) {
	o, err := opts.Options.withDefaults()
	if err != nil {
		return nil, err
	}
	var co *redis.Options
	switch {
	case strings.HasPrefix(opts.Addr, "redis://"), strings.HasPrefix(opts.Addr, "rediss://"):
		if co, err = redis.ParseURL(opts.Addr); err != nil {
			// The URL may hold a password: name only the problem.
			return nil, errors.New("state: redis addr: not a valid redis:// URL")
		}
	case opts.Addr == "":
		return nil, errors.New("state: redis addr is empty")
	default:
		co = &redis.Options{Addr: opts.Addr}
	}
	timeout := opts.Timeout
	if timeout <= 0 {
		timeout = DefaultRedisTimeout
	}
	co.DialTimeout, co.ReadTimeout, co.WriteTimeout, co.PoolTimeout = timeout, timeout, timeout, timeout
	// No retries: a script whose reply was lost may have run, and running
	// it again would count a refusal twice or report a decision that was
	// made as already decided. The caller sees the error instead.
	co.MaxRetries = -1
	co.DisableIdentity = true
	return &Redis{
		opts:         o,
		client:       redis.NewClient(co),
		prefix:       opts.Prefix + "access:",
		sightScript:  redis.NewScript(sightLua),
		decideScript: redis.NewScript(decideLua),
	}, nil
}

// Close closes the connections.
func (r *Redis) Close() error {
	if err := r.client.Close(); err != nil {
		return fmt.Errorf("state: closing redis client: %w", err)
	}
	return nil
}

func (r *Redis) key(parts ...string) string { return r.prefix + strings.Join(parts, "") }

// member is the short, fixed-length name of a request's dedup key.
func member(tenant, host string, port int) string {
	sum := sha256.Sum256([]byte(dedupKey(tenant, host, port)))
	return hex.EncodeToString(sum[:16])
}

// sightLua folds one sighting into its request.
//
// KEYS[1] req:H, KEYS[2] ids, KEYS[3] seen, KEYS[4] version, KEYS[5] grants.
// ARGV: 1 H, 2 new id, 3 tenant, 4 host, 5 port, 6 now (RFC 3339),
// 7 now (ms), 8 method, 9 path, 10 reason, 11 report mode (0|1),
// 12 filing (0|1), 13 max requests, 14 key prefix of req:, 15 a random
// start for the version (see bumpVersion).
// Returns {id, status}.
const sightLua = `
local id = redis.call('HGET', KEYS[1], 'id')
local changed = false
if not id then
  id = ARGV[2]
  redis.call('HSET', KEYS[1], 'id', id, 'tenant', ARGV[3], 'host', ARGV[4], 'port', ARGV[5],
    'count', 1, 'first_seen', ARGV[6], 'last_seen', ARGV[6], 'method', ARGV[8], 'path', ARGV[9],
    'reason', ARGV[10], 'status', 'pending', 'report_mode', ARGV[11])
  redis.call('HSET', KEYS[2], id, ARGV[1])
  changed = true
else
  redis.call('HINCRBY', KEYS[1], 'count', 1)
  redis.call('HSET', KEYS[1], 'last_seen', ARGV[6], 'method', ARGV[8], 'path', ARGV[9], 'report_mode', ARGV[11])
  if ARGV[10] ~= '' then
    redis.call('HSET', KEYS[1], 'reason', ARGV[10])
  end
  -- A filing reopens a decided request; a refusal only an approved one
  -- whose grant has ended (expired by the caller's clock, or revoked).
  local st = redis.call('HGET', KEYS[1], 'status')
  local reopen = ARGV[12] == '1' and st ~= 'pending'
  if st == 'approved' and not reopen then
    local exp = redis.call('ZSCORE', KEYS[5], redis.call('HGET', KEYS[1], 'grant_id') or '')
    reopen = not exp or tonumber(exp) <= tonumber(ARGV[7])
  end
  if reopen then
    redis.call('HSET', KEYS[1], 'status', 'pending')
    redis.call('HDEL', KEYS[1], 'decided_by', 'decided_at', 'grant_id')
    changed = true
  end
end
redis.call('ZADD', KEYS[3], ARGV[7], ARGV[1])
-- Bound the requests: drop the least recently seen.
local over = redis.call('ZCARD', KEYS[3]) - tonumber(ARGV[13])
if over > 0 then
  local popped = redis.call('ZPOPMIN', KEYS[3], over)
  for i = 1, #popped, 2 do
    local k = ARGV[14] .. popped[i]
    local old = redis.call('HGET', k, 'id')
    if old then
      redis.call('HDEL', KEYS[2], old)
    end
    redis.call('DEL', k)
  end
  changed = true
end
if changed then
  redis.call('SET', KEYS[4], ARGV[15], 'NX')
  redis.call('INCR', KEYS[4])
end
return {id, redis.call('HGET', KEYS[1], 'status') or 'evicted'}
`

// RecordRefusal implements Store.
func (r *Redis) RecordRefusal(ctx context.Context, s Sighting) (RequestRef, error) {
	return r.sighting(ctx, s, false)
}

// FileRequest implements Store.
func (r *Redis) FileRequest(ctx context.Context, s Sighting) (RequestRef, error) {
	return r.sighting(ctx, s, true)
}

func (r *Redis) sighting(ctx context.Context, s Sighting, filing bool) (RequestRef, error) {
	s, err := cleanSighting(s)
	if err != nil {
		return RequestRef{}, err
	}
	now := r.opts.Now().UTC()
	h := member(s.Tenant, s.Host, s.Port)
	res, err := r.sightScript.Run(ctx, r.client,
		[]string{r.key("req:", h), r.key("ids"), r.key("seen"), r.key("version"), r.key("grants")},
		h, newID("req_"), s.Tenant, s.Host, s.Port, now.Format(time.RFC3339Nano), now.UnixMilli(),
		s.Method, s.Path, s.Reason, boolArg(s.ReportMode), boolArg(filing), r.opts.MaxPending, r.key("req:"),
		versionStart(),
	).StringSlice()
	if err != nil {
		return RequestRef{}, fmt.Errorf("state: redis: recording access request: %w", err)
	}
	if len(res) != 2 || !Status(res[1]).valid() {
		return RequestRef{}, fmt.Errorf("state: redis: recording access request: unexpected reply %q", res)
	}
	return RequestRef{ID: res[0], Status: Status(res[1])}, nil
}

func boolArg(b bool) string {
	if b {
		return "1"
	}
	return "0"
}

// decodeRequest reads a request hash; an empty one is ErrNotFound.
func decodeRequest(m map[string]string) (AccessRequest, error) {
	if len(m) == 0 {
		return AccessRequest{}, ErrNotFound
	}
	var (
		r   AccessRequest
		err error
	)
	parseTime := func(k string) time.Time {
		v := m[k]
		if v == "" || err != nil {
			return time.Time{}
		}
		t, perr := time.Parse(time.RFC3339Nano, v)
		if perr != nil {
			err = fmt.Errorf("%s: %w", k, perr)
		}
		return t
	}
	r.ID, r.Tenant, r.Host = m["id"], m["tenant"], m["host"]
	r.Method, r.Path, r.Reason = m["method"], m["path"], m["reason"]
	r.Status, r.DecidedBy, r.GrantID = Status(m["status"]), m["decided_by"], m["grant_id"]
	r.ReportMode = m["report_mode"] == "1"
	r.FirstSeen, r.LastSeen, r.DecidedAt = parseTime("first_seen"), parseTime("last_seen"), parseTime("decided_at")
	if err == nil {
		r.Port, err = strconv.Atoi(m["port"])
	}
	if err == nil {
		r.Count, err = strconv.ParseInt(m["count"], 10, 64)
	}
	if err == nil {
		err = r.validate()
	}
	if err != nil {
		return AccessRequest{}, fmt.Errorf("%w: access request: %w", ErrCorrupt, err)
	}
	return r, nil
}

// ListRequests implements Store.
func (r *Redis) ListRequests(ctx context.Context, f Filter) ([]AccessRequest, error) {
	hs, err := r.client.ZRange(ctx, r.key("seen"), 0, -1).Result()
	if err != nil {
		return nil, fmt.Errorf("state: redis: listing access requests: %w", err)
	}
	cmds, err := r.client.Pipelined(ctx, func(p redis.Pipeliner) error {
		for _, h := range hs {
			p.HGetAll(ctx, r.key("req:", h))
		}
		return nil
	})
	if err != nil {
		return nil, fmt.Errorf("state: redis: listing access requests: %w", err)
	}
	out := []AccessRequest{}
	for _, c := range cmds {
		req, err := decodeRequest(c.(*redis.MapStringStringCmd).Val())
		if errors.Is(err, ErrNotFound) {
			continue // evicted between the two reads
		}
		if err != nil {
			return nil, fmt.Errorf("state: redis: %w", err)
		}
		if f.match(req) {
			out = append(out, req)
		}
	}
	sortRequests(out)
	return out, nil
}

// decideLua records a decision on a pending request and, for an approval,
// stores its grant, in one step: a refusal folded into the request meanwhile
// neither makes the decision retry nor is lost.
//
// KEYS[1] req:H, KEYS[2] grant:ID (unused when denying), KEYS[3] grants,
// KEYS[4] version. ARGV: 1 request id, 2 new status, 3 decided by,
// 4 decided at (RFC 3339), 5 grant id (” when denying), 6 grant JSON,
// 7 grant expiry (ms), 8 now (ms), 9 a random start for the version.
// Returns 'ok', 'gone' (no such request) or the status it already has.
const decideLua = `
if redis.call('HGET', KEYS[1], 'id') ~= ARGV[1] then
  return 'gone'
end
local st = redis.call('HGET', KEYS[1], 'status')
if st ~= 'pending' then
  return st
end
if ARGV[5] ~= '' then
  redis.call('SET', KEYS[2], ARGV[6], 'PXAT', ARGV[7])
  redis.call('ZADD', KEYS[3], ARGV[7], ARGV[5])
  redis.call('ZREMRANGEBYSCORE', KEYS[3], '-inf', ARGV[8])
  redis.call('HSET', KEYS[1], 'grant_id', ARGV[5])
end
redis.call('HSET', KEYS[1], 'status', ARGV[2], 'decided_by', ARGV[3], 'decided_at', ARGV[4])
redis.call('SET', KEYS[4], ARGV[9], 'NX')
redis.call('INCR', KEYS[4])
return 'ok'
`

// pendingRequest reads request id and its key, for a decision; the
// decision itself checks again that it is still pending.
func (r *Redis) pendingRequest(ctx context.Context, id string) (AccessRequest, string, error) {
	h, err := r.client.HGet(ctx, r.key("ids"), id).Result()
	if errors.Is(err, redis.Nil) {
		return AccessRequest{}, "", fmt.Errorf("access request %q: %w", id, ErrNotFound)
	}
	if err != nil {
		return AccessRequest{}, "", fmt.Errorf("state: redis: reading access request: %w", err)
	}
	key := r.key("req:", h)
	m, err := r.client.HGetAll(ctx, key).Result()
	if err != nil {
		return AccessRequest{}, "", fmt.Errorf("state: redis: reading access request: %w", err)
	}
	req, err := decodeRequest(m)
	if errors.Is(err, ErrNotFound) || (err == nil && req.ID != id) {
		return AccessRequest{}, "", fmt.Errorf("access request %q: %w", id, ErrNotFound)
	}
	if err != nil {
		return AccessRequest{}, "", fmt.Errorf("state: redis: %w", err)
	}
	if req.Status != StatusPending {
		return AccessRequest{}, "", fmt.Errorf("access request %q is %s: %w", id, req.Status, ErrNotPending)
	}
	return req, key, nil
}

// decide runs decideLua; g is the zero Grant when denying.
func (r *Redis) decide(ctx context.Context, key, id string, status Status, by string, at time.Time, g Grant) error {
	grantKey, data := r.key("grant:"), []byte(nil)
	if g.ID != "" {
		var err error
		if data, err = json.Marshal(g); err != nil {
			return fmt.Errorf("state: encoding grant: %w", err)
		}
		grantKey = r.key("grant:", g.ID)
	}
	res, err := r.decideScript.Run(ctx, r.client,
		[]string{key, grantKey, r.key("grants"), r.key("version")},
		id, string(status), by, at.UTC().Format(time.RFC3339Nano), g.ID, data,
		g.ExpiresAt.UnixMilli(), at.UnixMilli(), versionStart(),
	).Text()
	switch {
	case err != nil:
		return fmt.Errorf("state: redis: deciding access request: %w", err)
	case res == "ok":
		return nil
	case res == "gone":
		return fmt.Errorf("access request %q: %w", id, ErrNotFound)
	default:
		return fmt.Errorf("access request %q is %s: %w", id, res, ErrNotPending)
	}
}

// putGrant queues g's writes: its key expires with it.
func (r *Redis) putGrant(ctx context.Context, p redis.Pipeliner, g Grant, now time.Time) error {
	data, err := json.Marshal(g)
	if err != nil {
		return fmt.Errorf("state: encoding grant: %w", err)
	}
	p.SetArgs(ctx, r.key("grant:", g.ID), data, redis.SetArgs{ExpireAt: g.ExpiresAt})
	p.ZAdd(ctx, r.key("grants"), redis.Z{Score: float64(g.ExpiresAt.UnixMilli()), Member: g.ID})
	p.ZRemRangeByScore(ctx, r.key("grants"), "-inf", strconv.FormatInt(now.UnixMilli(), 10))
	return nil
}

// Approve implements Store.
func (r *Redis) Approve(ctx context.Context, id string, spec GrantSpec) (Grant, error) {
	req, key, err := r.pendingRequest(ctx, id)
	if err != nil {
		return Grant{}, err
	}
	now := r.opts.Now()
	g, err := newGrant(approveSpec(req, spec), now, r.opts.MaxGrantDuration, req.ID)
	if err != nil {
		return Grant{}, err
	}
	if err := r.decide(ctx, key, id, StatusApproved, g.ApprovedBy, now, g); err != nil {
		return Grant{}, err
	}
	return g, nil
}

// Deny implements Store.
func (r *Redis) Deny(ctx context.Context, id, by string) (AccessRequest, error) {
	if by == "" || len(by) > maxNameLen {
		return AccessRequest{}, fmt.Errorf("%w: deciding needs who decides, 1 to %d bytes", ErrInvalid, maxNameLen)
	}
	req, key, err := r.pendingRequest(ctx, id)
	if err != nil {
		return AccessRequest{}, err
	}
	now := r.opts.Now()
	if err := r.decide(ctx, key, id, StatusDenied, by, now, Grant{}); err != nil {
		return AccessRequest{}, err
	}
	req.Status, req.DecidedBy, req.DecidedAt = StatusDenied, by, now.UTC()
	return req, nil
}

// AddGrant implements Store.
func (r *Redis) AddGrant(ctx context.Context, spec GrantSpec) (Grant, error) {
	now := r.opts.Now()
	g, err := newGrant(spec, now, r.opts.MaxGrantDuration, "")
	if err != nil {
		return Grant{}, err
	}
	_, err = r.client.TxPipelined(ctx, func(p redis.Pipeliner) error {
		if err := r.putGrant(ctx, p, g, now); err != nil {
			return err
		}
		r.bumpVersion(ctx, p)
		return nil
	})
	if err != nil {
		return Grant{}, fmt.Errorf("state: redis: adding grant: %w", err)
	}
	return g, nil
}

// RevokeGrant implements Store.
func (r *Redis) RevokeGrant(ctx context.Context, id string) error {
	data, err := r.client.Get(ctx, r.key("grant:", id)).Bytes()
	if errors.Is(err, redis.Nil) {
		return fmt.Errorf("grant %q: %w", id, ErrNotFound)
	}
	if err != nil {
		return fmt.Errorf("state: redis: revoking grant: %w", err)
	}
	g, err := decodeGrant(data, id)
	if err != nil {
		return fmt.Errorf("state: redis: %w", err)
	}
	if !g.Active(r.opts.Now()) {
		return fmt.Errorf("grant %q: %w", id, ErrNotFound)
	}
	var del *redis.IntCmd
	_, err = r.client.TxPipelined(ctx, func(p redis.Pipeliner) error {
		del = p.Del(ctx, r.key("grant:", id))
		p.ZRem(ctx, r.key("grants"), id)
		r.bumpVersion(ctx, p)
		return nil
	})
	if err != nil {
		return fmt.Errorf("state: redis: revoking grant: %w", err)
	}
	if del.Val() == 0 {
		return fmt.Errorf("grant %q: %w", id, ErrNotFound)
	}
	return nil
}

// decodeGrant reads one stored grant strictly.
func decodeGrant(data []byte, id string) (Grant, error) {
	var g Grant
	if err := strictJSON(data, &g); err != nil {
		return Grant{}, fmt.Errorf("%w: grant %q: %w", ErrCorrupt, id, err)
	}
	if err := g.validate(); err != nil {
		return Grant{}, fmt.Errorf("%w: grant %q: %w", ErrCorrupt, id, err)
	}
	if g.ID != id {
		return Grant{}, fmt.Errorf("%w: grant %q stored under %q", ErrCorrupt, g.ID, id)
	}
	return g, nil
}

// Grants implements Store. One grant that cannot be decoded fails the
// whole call: the caller then applies none.
func (r *Redis) Grants(ctx context.Context, now time.Time) ([]Grant, error) {
	ids, err := r.client.ZRangeByScore(ctx, r.key("grants"), &redis.ZRangeBy{
		Min: "(" + strconv.FormatInt(now.UnixMilli(), 10), Max: "+inf",
	}).Result()
	if err != nil {
		return nil, fmt.Errorf("state: redis: reading grants: %w", err)
	}
	out := []Grant{}
	if len(ids) == 0 {
		return out, nil
	}
	keys := make([]string, len(ids))
	for i, id := range ids {
		keys[i] = r.key("grant:", id)
	}
	vals, err := r.client.MGet(ctx, keys...).Result()
	if err != nil {
		return nil, fmt.Errorf("state: redis: reading grants: %w", err)
	}
	for i, v := range vals {
		if v == nil {
			continue // expired or revoked since the index was read
		}
		s, ok := v.(string)
		if !ok {
			return nil, fmt.Errorf("state: redis: %w: grant %q is not a string", ErrCorrupt, ids[i])
		}
		g, err := decodeGrant([]byte(s), ids[i])
		if err != nil {
			return nil, fmt.Errorf("state: redis: %w", err)
		}
		if g.Active(now) {
			out = append(out, g)
		}
	}
	sortGrants(out)
	return out, nil
}

// bumpVersion queues the change of the version. A version key that is
// missing (a new store, or a Redis that restarted without persistence and
// lost everything) starts at a random value rather than at 0: counting up
// from 0 again could bring it back to a value a replica saw before the
// loss, and that replica would keep grants Redis no longer has.
func (r *Redis) bumpVersion(ctx context.Context, p redis.Pipeliner) {
	p.SetNX(ctx, r.key("version"), versionStart(), 0)
	p.Incr(ctx, r.key("version"))
}

// versionStart is a random start in [2^40, 2^52): far from 0 and from any
// other start, and far from overflowing.
func versionStart() uint64 {
	var b [8]byte
	// crypto/rand.Read does not fail on supported platforms.
	_, _ = rand.Read(b[:])
	return 1<<40 + binary.BigEndian.Uint64(b[:])%(1<<52-1<<40)
}

// Version implements Store.
func (r *Redis) Version(ctx context.Context) (uint64, error) {
	v, err := r.client.Get(ctx, r.key("version")).Uint64()
	if errors.Is(err, redis.Nil) {
		return 0, nil
	}
	if err != nil {
		return 0, fmt.Errorf("state: redis: reading version: %w", err)
	}
	return v, nil
}
