package budget

import (
	"context"
	"errors"
	"math"
	"slices"
	"strconv"
	"sync"
	"sync/atomic"
	"time"
)

// ErrUnavailable is returned when the counters cannot be read or written
// (Redis down, the counters file unwritable): callers fail closed.
var ErrUnavailable = errors.New("budget counters unavailable")

// DefaultFlushEvery is how often a Ledger adds its counts to its Backend:
// what a crash may lose, and how long replicas may admit against a
// budget before they see each other's counts.
const DefaultFlushEvery = time.Second

// Options configures a Ledger.
type Options struct {
	Backend    Backend          // where counters are kept; nil: in memory
	Currency   string           // the currency of prices and cost limits
	Now        func() time.Time // nil: time.Now
	FlushEvery time.Duration    // 0: DefaultFlushEvery; negative: only on Flush and Close
	// OnWarn is called, outside any lock, when a budget's use crosses its
	// WarnAt of a limit: once per budget, limited kind and period in this
	// process.
	OnWarn func(Warning)
	// OnFlushError is called when a flush fails; the Ledger sends the same
	// counts again on the next one.
	OnFlushError func(error)
}

// Warning is a budget's use crossing its warn_at.
type Warning struct {
	Tenant string
	Budget string
	Kind   string // requests | egress | ingress | cost
	Used   float64
	Limit  float64
	Reset  time.Time
}

// KindNames names the dimensions a budget limits, as metrics and
// warnings do.
var KindNames = [dimensions]string{"requests", "egress", "ingress", "cost"}

// Ledger counts every tenant's traffic per connector version and period
// (hour, day and month always, budgets or not, so every tenant has a
// statement) and bounds it by the tenants' budgets.
//
// With one process a request budget is exact: Admit reserves, and rolls
// back on refusal. Replicas sharing a Backend see each other's counts
// once a flush: together they may admit, beyond a limit, what they admit
// between two flushes (each replica's own share up to the limit, less
// what it has seen the others spend), and byte budgets cut tunnels as
// late by the same bound.
type Ledger struct {
	backend    Backend
	currency   atomic.Pointer[string]
	now        func() time.Time
	onWarn     func(Warning)
	onFlushErr func(error)
	notify     atomic.Pointer[notifiers]

	mu      sync.Mutex
	lines   map[lineID]*line
	budgets map[budgetID]*budgetCounter
	live    map[string][]*budgetCounter // the live policy's budgets per tenant, in file order

	// flushMu orders flushes and first reads of a budget's period: both
	// set what a period has sent and seen of the backend.
	flushMu sync.Mutex
	// failing is set while the last flush failed: tenants with budgets are
	// refused until one succeeds, since their counts cannot be shared or
	// kept.
	failing atomic.Bool

	stop      chan struct{}
	stopped   chan struct{}
	closeOnce sync.Once
	closeErr  error
}

type lineID struct {
	tenant, connector string
	version           int
}

// line counts one Source, an hour at a time: the hour's counts give the
// day's and the month's, as hours nest in both.
type line struct {
	id      lineID
	price   atomic.Pointer[Price]
	slot    atomic.Pointer[lineSlot]
	retired []*lineSlot // ended hours with counts not yet flushed; under Ledger.mu
}

type lineSlot struct {
	start   time.Time
	endNano int64
	counts  [3]atomic.Int64
	sent    [3]int64 // under flushMu
}

type budgetID struct {
	tenant, name string
	period       Period
}

// budgetCounter is one budget's count, kept across reloads while the
// policy keeps a budget of that name and period.
type budgetCounter struct {
	id      budgetID
	def     atomic.Pointer[Budget]
	cur     atomic.Pointer[budgetPeriod]
	retired []*budgetPeriod // under Ledger.mu
}

// budgetPeriod is a budget's count in one period: local is what this
// process counted, remote what the backend held beyond what this process
// sent it, so that used = remote + local.
type budgetPeriod struct {
	start, end time.Time
	endNano    int64
	local      [dimensions]atomic.Int64
	remote     [dimensions]atomic.Int64
	sent       [dimensions]int64 // under flushMu
	loaded     atomic.Bool       // remote was read once
	warned     [dimensions]atomic.Bool
}

// New builds a Ledger and starts its flusher; Close stops it.
func New(opts Options) *Ledger {
	if opts.Now == nil {
		opts.Now = time.Now
	}
	if opts.Backend == nil {
		opts.Backend = NewMemory(opts.Now)
	}
	if opts.FlushEvery == 0 {
		opts.FlushEvery = DefaultFlushEvery
	}
	l := &Ledger{
		backend: opts.Backend, now: opts.Now,
		onWarn: opts.OnWarn, onFlushErr: opts.OnFlushError,
		lines: map[lineID]*line{}, budgets: map[budgetID]*budgetCounter{}, live: map[string][]*budgetCounter{},
		stop: make(chan struct{}), stopped: make(chan struct{}),
	}
	l.currency.Store(&opts.Currency)
	if opts.FlushEvery > 0 {
		go l.flushLoop(opts.FlushEvery)
	} else {
		close(l.stopped)
	}
	return l
}

// Currency is the currency of prices, cost limits and statements.
func (l *Ledger) Currency() string { return *l.currency.Load() }

// SetCurrency renames the currency, as a reload of budgets.currency does.
func (l *Ledger) SetCurrency(c string) { l.currency.Store(&c) }

type notifiers struct {
	onWarn     func(Warning)
	onFlushErr func(error)
}

// Notify sends warnings and flush errors to the given functions as well
// as to Options.OnWarn and Options.OnFlushError: the gateway that uses a
// Ledger built before it hears of them.
func (l *Ledger) Notify(onWarn func(Warning), onFlushError func(error)) {
	l.notify.Store(&notifiers{onWarn: onWarn, onFlushErr: onFlushError})
}

func (l *Ledger) warn(w Warning) {
	if l.onWarn != nil {
		l.onWarn(w)
	}
	if n := l.notify.Load(); n != nil && n.onWarn != nil {
		n.onWarn(w)
	}
}

func (l *Ledger) flushFailed(err error) {
	if l.onFlushErr != nil {
		l.onFlushErr(err)
	}
	if n := l.notify.Load(); n != nil && n.onFlushErr != nil {
		n.onFlushErr(err)
	}
}

func (l *Ledger) flushLoop(every time.Duration) {
	defer close(l.stopped)
	tick := time.NewTicker(every)
	defer tick.Stop()
	for {
		select {
		case <-l.stop:
			return
		case <-tick.C:
		}
		ctx, cancel := context.WithTimeout(context.Background(), every*5)
		if err := l.Flush(ctx); err != nil {
			l.flushFailed(err)
		}
		cancel()
	}
}

// Close flushes the last counts and stops the flusher. It does not close
// the Backend, which its builder owns.
func (l *Ledger) Close() error {
	l.closeOnce.Do(func() {
		close(l.stop)
		<-l.stopped
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		l.closeErr = l.Flush(ctx)
	})
	return l.closeErr
}

// SetBudgets replaces the live policy's budgets: tenant ID to its budgets
// in file order. A budget keeps its count while its tenant, name and
// period stay: a reload changes its limits, not what it has used.
func (l *Ledger) SetBudgets(budgets map[string][]Budget) {
	l.mu.Lock()
	defer l.mu.Unlock()
	live := make(map[string][]*budgetCounter, len(budgets))
	for tenant, list := range budgets {
		for _, b := range list {
			live[tenant] = append(live[tenant], l.budgetLocked(tenant, b))
		}
	}
	l.live = live
}

func (l *Ledger) budgetLocked(tenant string, b Budget) *budgetCounter {
	id := budgetID{tenant: tenant, name: b.Name, period: b.Period}
	c := l.budgets[id]
	if c == nil {
		c = &budgetCounter{id: id}
		l.budgets[id] = c
	}
	def := b
	def.Connectors = slices.Clone(b.Connectors)
	c.def.Store(&def)
	return c
}

// Meter is the hot-path handle of one Source and the budgets that apply
// to its traffic. It is built once per policy generation (Ledger.Meter)
// and used by any number of goroutines.
type Meter struct {
	l       *Ledger
	line    *line
	tenant  string
	budgets []*budgetCounter
	// Prices in picoUnits: per request, and per byte each way.
	requestCost                     int64
	egressByteCost, ingressByteCost float64
}

// Meter returns the handle counting src under those of the tenant's live
// budgets (SetBudgets) that count its traffic: all traffic for a budget
// without connectors, its listed connectors' otherwise.
func (l *Ledger) Meter(src Source) *Meter {
	l.mu.Lock()
	defer l.mu.Unlock()
	id := lineID{tenant: src.Tenant, connector: src.Connector, version: src.Version}
	ln := l.lines[id]
	if ln == nil {
		ln = &line{id: id}
		l.lines[id] = ln
	}
	price := src.Price
	ln.price.Store(&price)
	m := &Meter{
		l: l, line: ln, tenant: src.Tenant,
		requestCost:     int64(math.Round(price.PerRequest * picoUnits)),
		egressByteCost:  price.PerGiBEgress * picoUnits / (1 << 30),
		ingressByteCost: price.PerGiBIngress * picoUnits / (1 << 30),
	}
	for _, c := range l.live[src.Tenant] {
		if def := c.def.Load(); len(def.Connectors) == 0 || slices.Contains(def.Connectors, src.Connector) {
			m.budgets = append(m.budgets, c)
		}
	}
	return m
}

// Budgets is how many budgets apply to the Meter's traffic.
func (m *Meter) Budgets() int { return len(m.budgets) }

// Refusal says which budget refused a request and when its period ends;
// the zero Refusal refuses nothing.
type Refusal struct {
	Budget string
	Period Period
	Reset  time.Time
}

// Refused reports whether r refuses.
func (r Refusal) Refused() bool { return r.Budget != "" }

// Admit counts one request, reserving it under every budget of m, or
// refuses it, counting nothing, when a budget has no room left: its
// request or cost limit would be passed, or its egress, ingress or cost
// is spent. An error means the counters cannot be read; the caller fails
// closed. A request that Admit let through is counted even if it then
// fails: it was admitted against the budget.
func (m *Meter) Admit(ctx context.Context, now time.Time) (Refusal, error) {
	if len(m.budgets) > 0 && m.l.failing.Load() {
		return Refusal{}, ErrUnavailable
	}
	nowNano := now.UnixNano()
	var held [8]*budgetPeriod // on the stack for up to 8 budgets
	reserved := held[:0]
	for _, c := range m.budgets {
		p, err := m.l.period(ctx, c, now, nowNano, true)
		if err != nil {
			m.rollback(reserved)
			return Refusal{}, err
		}
		def := c.def.Load()
		if !p.reserve(&def.Limit, m.requestCost) {
			m.rollback(reserved)
			return Refusal{Budget: def.Name, Period: def.Period, Reset: p.end}, nil
		}
		reserved = append(reserved, p)
	}
	m.line.slotAt(m.l, now, nowNano).counts[requests].Add(1)
	for i, c := range m.budgets {
		m.l.checkWarn(c, reserved[i])
	}
	return Refusal{}, nil
}

// Count counts one request under every budget of m without checking
// them: a request let through while the counters cannot be kept
// (quota.redis.on_error: allow) still spends its budgets, sent with the
// next flush that succeeds.
func (m *Meter) Count(now time.Time) {
	nowNano := now.UnixNano()
	for _, c := range m.budgets {
		p := c.cur.Load()
		if p == nil || nowNano >= p.endNano || nowNano < p.start.UnixNano() {
			p = m.l.rotate(c, now, nowNano)
		}
		p.local[requests].Add(1)
		if m.requestCost != 0 {
			p.local[cost].Add(m.requestCost)
		}
	}
	m.line.slotAt(m.l, now, nowNano).counts[requests].Add(1)
}

func allSent(p *budgetPeriod) bool {
	for i := range p.sent {
		if p.local[i].Load() != p.sent[i] {
			return false
		}
	}
	return true
}

// rollback gives back the reservations Admit made.
func (m *Meter) rollback(reserved []*budgetPeriod) {
	for _, p := range reserved {
		p.local[requests].Add(-1)
		if m.requestCost != 0 {
			p.local[cost].Add(-m.requestCost)
		}
	}
}

// AppendHeader appends the X-Egressgw-Budget value of m's i-th budget
// (docs/reference.md, "Budgets and cost"): its name, what remains of each
// limit it sets, and the seconds until its period ends.
func (m *Meter) AppendHeader(dst []byte, i int, now time.Time) []byte {
	c := m.budgets[i]
	def := c.def.Load()
	p := c.cur.Load()
	if p == nil || now.UnixNano() >= p.endNano {
		p = m.l.rotate(c, now, now.UnixNano())
	}
	dst = append(dst, def.Name...)
	limits := [dimensions]int64{def.Limit.Requests, def.Limit.Egress, def.Limit.Ingress, costUnits(def.Limit.Cost)}
	for d, limit := range limits {
		if limit <= 0 {
			continue
		}
		dst = append(dst, "; remaining-"...)
		dst = append(dst, KindNames[d]...)
		dst = append(dst, '=')
		left := max(limit-p.used(d), 0)
		if d == cost {
			dst = strconv.AppendFloat(dst, float64(left)/picoUnits, 'f', 6, 64)
		} else {
			dst = strconv.AppendInt(dst, left, 10)
		}
	}
	dst = append(dst, "; reset="...)
	reset := (p.endNano - now.UnixNano() + int64(time.Second) - 1) / int64(time.Second)
	return strconv.AppendInt(dst, reset, 10)
}

// reserve adds one request to p unless lim has no room for it.
func (p *budgetPeriod) reserve(lim *Usage, requestCost int64) bool {
	n := p.local[requests].Add(1)
	var c int64
	if requestCost != 0 {
		c = p.local[cost].Add(requestCost)
	} else {
		c = p.local[cost].Load()
	}
	full := (lim.Requests > 0 && p.remote[requests].Load()+n > lim.Requests) ||
		(lim.Egress > 0 && p.used(egress) >= lim.Egress) ||
		(lim.Ingress > 0 && p.used(ingress) >= lim.Ingress)
	if lim.Cost > 0 {
		limit, used := costUnits(lim.Cost), p.remote[cost].Load()+c
		full = full || used > limit || (requestCost == 0 && used >= limit)
	}
	if full {
		p.local[requests].Add(-1)
		if requestCost != 0 {
			p.local[cost].Add(-requestCost)
		}
	}
	return !full
}

func (p *budgetPeriod) used(d int) int64 { return p.remote[d].Load() + p.local[d].Load() }

func costUnits(c float64) int64 { return int64(math.Round(c * picoUnits)) }

// Charge counts bytes relayed each way (egress: sandbox to upstream) and
// reports whether a budget of m is now spent on bytes or cost: a tunnel
// or stream is then closed. It takes no lock and makes no call.
func (m *Meter) Charge(egressBytes, ingressBytes int64) (spent bool) {
	now := m.l.now()
	nowNano := now.UnixNano()
	s := m.line.slotAt(m.l, now, nowNano)
	if egressBytes != 0 {
		s.counts[egress].Add(egressBytes)
	}
	if ingressBytes != 0 {
		s.counts[ingress].Add(ingressBytes)
	}
	if len(m.budgets) == 0 {
		return false
	}
	c := int64(float64(egressBytes)*m.egressByteCost + float64(ingressBytes)*m.ingressByteCost + 0.5)
	for _, bc := range m.budgets {
		p := bc.cur.Load()
		if p == nil || nowNano >= p.endNano {
			p = m.l.rotate(bc, now, nowNano)
		}
		if egressBytes != 0 {
			p.local[egress].Add(egressBytes)
		}
		if ingressBytes != 0 {
			p.local[ingress].Add(ingressBytes)
		}
		if c != 0 {
			p.local[cost].Add(c)
		}
		lim := &bc.def.Load().Limit
		if (lim.Egress > 0 && p.used(egress) >= lim.Egress) ||
			(lim.Ingress > 0 && p.used(ingress) >= lim.Ingress) ||
			(lim.Cost > 0 && p.used(cost) >= costUnits(lim.Cost)) {
			spent = true
		}
		m.l.checkWarn(bc, p)
	}
	return spent
}

// Spent names a budget of m that is spent on bytes or cost now, or "".
func (m *Meter) Spent(now time.Time) string {
	for _, c := range m.budgets {
		p := c.cur.Load()
		if p == nil || now.UnixNano() >= p.endNano {
			continue
		}
		def := c.def.Load()
		lim := &def.Limit
		if (lim.Egress > 0 && p.used(egress) >= lim.Egress) ||
			(lim.Ingress > 0 && p.used(ingress) >= lim.Ingress) ||
			(lim.Cost > 0 && p.used(cost) >= costUnits(lim.Cost)) {
			return def.Name
		}
	}
	return ""
}

// slotAt is the line's slot for the hour holding now, starting a new one
// when the hour has turned.
func (ln *line) slotAt(l *Ledger, now time.Time, nowNano int64) *lineSlot {
	if s := ln.slot.Load(); s != nil && nowNano < s.endNano && nowNano >= s.start.UnixNano() {
		return s
	}
	l.mu.Lock()
	defer l.mu.Unlock()
	s := ln.slot.Load()
	if s != nil && nowNano < s.endNano && nowNano >= s.start.UnixNano() {
		return s
	}
	if l.lines[ln.id] == nil {
		l.lines[ln.id] = ln // pruned while idle (Flush), in use again
	}
	start, end := Hour.Bounds(now)
	fresh := &lineSlot{start: start, endNano: end.UnixNano()}
	if s != nil {
		ln.retired = append(ln.retired, s)
	}
	ln.slot.Store(fresh)
	return fresh
}

// rotate starts c's period holding now, keeping the ended one until its
// counts are flushed.
func (l *Ledger) rotate(c *budgetCounter, now time.Time, nowNano int64) *budgetPeriod {
	l.mu.Lock()
	defer l.mu.Unlock()
	p := c.cur.Load()
	if p != nil && nowNano < p.endNano && nowNano >= p.start.UnixNano() {
		return p
	}
	if l.budgets[c.id] == nil {
		l.budgets[c.id] = c // pruned while idle (Flush), in use again
	}
	start, end := c.id.period.Bounds(now)
	fresh := &budgetPeriod{start: start, end: end, endNano: end.UnixNano()}
	if p != nil {
		c.retired = append(c.retired, p)
	}
	c.cur.Store(fresh)
	return fresh
}

// period is c's current period, read from the backend the first time
// (load), so that a restart or a second replica starts from the shared
// count.
func (l *Ledger) period(ctx context.Context, c *budgetCounter, now time.Time, nowNano int64, load bool) (*budgetPeriod, error) {
	p := c.cur.Load()
	if p == nil || nowNano >= p.endNano || nowNano < p.start.UnixNano() {
		p = l.rotate(c, now, nowNano)
	}
	if !load || p.loaded.Load() {
		return p, nil
	}
	l.flushMu.Lock()
	defer l.flushMu.Unlock()
	if p.loaded.Load() {
		return p, nil
	}
	counts, err := l.backend.Counts(ctx, []Key{c.key(p)})
	if err != nil {
		return nil, errors.Join(ErrUnavailable, err)
	}
	for d := range p.remote {
		p.remote[d].Store(counts[0][d] - p.sent[d])
	}
	p.loaded.Store(true)
	return p, nil
}

func (c *budgetCounter) key(p *budgetPeriod) Key {
	return Key{Tenant: c.id.tenant, Budget: c.id.name, Period: c.id.period, Start: p.start}
}

// checkWarn calls OnWarn for each limit of c whose warn_at p's use has
// just crossed.
func (l *Ledger) checkWarn(c *budgetCounter, p *budgetPeriod) {
	def := c.def.Load()
	if def.WarnAt <= 0 || p == nil {
		return
	}
	limits := [dimensions]int64{def.Limit.Requests, def.Limit.Egress, def.Limit.Ingress, costUnits(def.Limit.Cost)}
	for d, limit := range limits {
		if limit <= 0 || p.warned[d].Load() || float64(p.used(d)) < def.WarnAt*float64(limit) {
			continue
		}
		if p.warned[d].Swap(true) {
			continue
		}
		used, lim := float64(p.used(d)), float64(limit)
		if d == cost {
			used, lim = used/picoUnits, def.Limit.Cost
		}
		l.warn(Warning{Tenant: c.id.tenant, Budget: def.Name, Kind: KindNames[d], Used: used, Limit: lim, Reset: p.end})
	}
}

// Flush adds what was counted since the last flush to the backend and
// reads back the budgets' shared counts. On failure nothing is marked
// sent: the next flush sends it again, and until one succeeds tenants
// with budgets are refused (Admit returns ErrUnavailable).
func (l *Ledger) Flush(ctx context.Context) error {
	l.flushMu.Lock()
	defer l.flushMu.Unlock()
	type pendingLine struct {
		slot  *lineSlot
		delta [3]int64
	}
	type pendingBudget struct {
		c     *budgetCounter
		p     *budgetPeriod
		delta Counts
	}
	var lines []pendingLine
	var budgets []pendingBudget
	var deltas []Delta
	l.mu.Lock()
	for _, ln := range l.lines {
		slots := ln.retired[:len(ln.retired):len(ln.retired)]
		if s := ln.slot.Load(); s != nil {
			slots = append(slots, s)
		}
		price := *ln.price.Load()
		for _, s := range slots {
			var d [3]int64
			for i := range d {
				d[i] = s.counts[i].Load() - s.sent[i]
			}
			if s != ln.slot.Load() && d == [3]int64{} {
				continue // an ended hour, all sent
			}
			lines = append(lines, pendingLine{s, d})
			if d == [3]int64{} {
				continue
			}
			for _, p := range []Period{Hour, Day, Month} {
				start, _ := p.Bounds(s.start)
				deltas = append(deltas, Delta{
					Key:    Key{Tenant: ln.id.tenant, Connector: ln.id.connector, Version: ln.id.version, Period: p, Start: start},
					Price:  price,
					Counts: Counts{d[0], d[1], d[2]},
				})
			}
		}
	}
	for _, c := range l.budgets {
		periods := c.retired[:len(c.retired):len(c.retired)]
		cur := c.cur.Load()
		if cur != nil {
			periods = append(periods, cur)
		}
		for _, p := range periods {
			var d Counts
			for i := range d {
				d[i] = p.local[i].Load() - p.sent[i]
			}
			if p != cur && d == (Counts{}) {
				continue
			}
			budgets = append(budgets, pendingBudget{c, p, d})
			if d != (Counts{}) {
				deltas = append(deltas, Delta{Key: c.key(p), Counts: d})
			}
		}
	}
	l.mu.Unlock()

	err := l.backend.Add(ctx, deltas)
	if err == nil {
		for _, pl := range lines {
			for i := range pl.delta {
				pl.slot.sent[i] += pl.delta[i]
			}
		}
		for _, pb := range budgets {
			for i := range pb.delta {
				pb.p.sent[i] += pb.delta[i]
			}
		}
		// Read back what every replica counted, for the current periods.
		var keys []Key
		var reading []*budgetPeriod
		for _, pb := range budgets {
			if pb.c.cur.Load() == pb.p {
				keys = append(keys, pb.c.key(pb.p))
				reading = append(reading, pb.p)
			}
		}
		var counts []Counts
		if counts, err = l.backend.Counts(ctx, keys); err == nil {
			for i, p := range reading {
				for d := range p.remote {
					p.remote[d].Store(counts[i][d] - p.sent[d])
				}
				p.loaded.Store(true)
			}
		}
	}
	if err != nil {
		l.failing.Store(true)
		return errors.Join(ErrUnavailable, err)
	}
	l.failing.Store(false)
	l.mu.Lock()
	defer l.mu.Unlock()
	// Ended periods are dropped once all they counted is sent; a charge
	// that raced with the turn of the period goes with the next flush.
	for _, ln := range l.lines {
		ln.retired = slices.DeleteFunc(ln.retired, func(s *lineSlot) bool {
			for i := range s.sent {
				if s.counts[i].Load() != s.sent[i] {
					return false
				}
			}
			return true
		})
	}
	for _, c := range l.budgets {
		c.retired = slices.DeleteFunc(c.retired, func(p *budgetPeriod) bool {
			for i := range p.sent {
				if p.local[i].Load() != p.sent[i] {
					return false
				}
			}
			return true
		})
	}
	l.pruneLocked()
	return nil
}

// pruneLocked forgets lines and budgets idle for a whole period since
// their last one ended, all sent, so that tenants, connector versions
// and budgets removed from the policy do not stay in memory for ever. One
// still in use comes back on its next count (slotAt, rotate).
func (l *Ledger) pruneLocked() {
	nowNano := l.now().UnixNano()
	for id, ln := range l.lines {
		s := ln.slot.Load()
		if len(ln.retired) == 0 && (s == nil || nowNano-s.endNano > int64(time.Hour)) && (s == nil || s.counts[requests].Load() == s.sent[requests] && s.counts[egress].Load() == s.sent[egress] && s.counts[ingress].Load() == s.sent[ingress]) {
			delete(l.lines, id)
		}
	}
	live := map[*budgetCounter]bool{}
	for _, list := range l.live {
		for _, c := range list {
			live[c] = true
		}
	}
	for id, c := range l.budgets {
		p := c.cur.Load()
		if !live[c] && len(c.retired) == 0 && (p == nil || nowNano > p.endNano && allSent(p)) {
			delete(l.budgets, id)
		}
	}
}
