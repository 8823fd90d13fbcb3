package main

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/netip"
	"net/url"
	"os"
	"os/signal"
	"path/filepath"
	"runtime/debug"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/redis/go-redis/v9"

	"github.com/egressgw/egressgw/budget"
	"github.com/egressgw/egressgw/configs"
	"github.com/egressgw/egressgw/hooks"
	"github.com/egressgw/egressgw/policy"
	"github.com/egressgw/egressgw/proxy"
	"github.com/egressgw/egressgw/quota"
	"github.com/egressgw/egressgw/state"
)

func serve(args []string, stdout, stderr io.Writer) int {
	fs := newFlags("serve", stderr)
	configPath := fs.String("config", "", "config directory, or its gateway.yaml (default: the embedded quickstart)")
	listen := fs.String("listen", "", "proxy listen address (overrides gateway.yaml)")
	adminListen := fs.String("admin-listen", "", "admin listen address (overrides gateway.yaml)")
	logFormat := fs.String("log-format", "json", "log format: json or text")
	watch := fs.Bool("watch", true, "reload when the config directory changes (SIGHUP reloads either way)")
	if err := fs.Parse(args); err != nil || fs.NArg() > 0 {
		return exitUsage
	}
	logger, err := newLogger(stderr, *logFormat)
	if err != nil {
		fmt.Fprintln(stderr, "egressgw:", err)
		return exitUsage
	}
	_, gogcSet := os.LookupEnv("GOGC")
	gcTarget := newGCTarget(gogcSet) // gctarget.go
	gcCtx, stopGCTarget := context.WithCancel(context.Background())
	defer stopGCTarget()
	go gcTarget.run(gcCtx)
	source, err := openConfig(*configPath)
	if err != nil {
		logger.Error("cannot open config", "error", err)
		return exitFail
	}
	snap, err := source.load()
	if err != nil {
		fmt.Fprintf(stderr, "egressgw: config %s is not valid:\n", source.name)
		printLoadError(stderr, err)
		return exitFail
	}
	settings := snap.Gateway
	// The hook runtime is built now, hooks or not, since a reload may add
	// them: a system that cannot start a worker fails here with the
	// reason, not on the first hooked request (docs/design.md).
	hookRuntime, err := hooks.NewRuntime(hooks.RuntimeConfig{MaxConcurrent: settings.Hooks.MaxConcurrent, Defaults: settings.Hooks.Defaults})
	if err != nil {
		logger.Error("cannot start the hook runtime", "error", err)
		return exitFail
	}
	defer hookRuntime.Close() // after the gateway's Shutdown: runs in flight finish first
	if *listen != "" {
		settings.Listen = *listen
	}
	if *adminListen != "" {
		settings.AdminListen = *adminListen
	}

	proxyLn, err := net.Listen("tcp", settings.Listen)
	if err != nil {
		logger.Error("cannot listen", "listen", settings.Listen, "error", err)
		return exitFail
	}
	adminLn, err := net.Listen("tcp", settings.AdminListen)
	if err != nil {
		proxyLn.Close()
		logger.Error("cannot listen", "admin_listen", settings.AdminListen, "error", err)
		return exitFail
	}
	audit := &auditOutput{stdout: stdout, configPath: *configPath}
	if err := audit.open(settings.AuditOutput); err != nil {
		proxyLn.Close()
		adminLn.Close()
		logger.Error("cannot open audit output", "output", settings.AuditOutput, "error", err)
		return exitFail
	}
	defer audit.close(logger)
	auditPath := audit.path()

	limiter, err := newLimiter(settings.Quota, logger)
	if err != nil {
		proxyLn.Close()
		adminLn.Close()
		logger.Error("cannot set up the quota backend", "error", err)
		return exitFail
	}
	defer limiter.Close()

	store, err := openState(settings)
	if err != nil {
		proxyLn.Close()
		adminLn.Close()
		logger.Error("cannot open the state store (access requests and grants)", "backend", settings.State.Backend, "error", err)
		return exitFail
	}
	defer closeState(store, logger) // after the gateway's Shutdown: its last writes go in
	if settings.State.Backend == "file" {
		logger.Info("state store opened", "backend", "file", "dir", settings.State.Dir)
	} else {
		logger.Info("state store opened", "backend", "redis", "addr", redactedAddr(settings.Quota.RedisAddr))
	}

	ledger, closeLedgerBackend, err := openLedger(settings, limiter, logger)
	if err != nil {
		proxyLn.Close()
		adminLn.Close()
		logger.Error("cannot open the budget counters", "error", err)
		return exitFail
	}
	defer closeLedger(ledger, closeLedgerBackend, logger) // after the gateway's Shutdown: its last counts go in

	registry := prometheus.NewRegistry()
	registry.MustRegister(collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
	gw, err := proxy.New(proxy.Options{
		Logger:    logger,
		Audit:     audit.writer(),
		Registry:  registry,
		Listeners: []netip.AddrPort{addrPort(proxyLn), addrPort(adminLn)},
		Settings:  settings,
		Quota:     limiter,
		Bandwidth: quota.NewBandwidth(quota.BandwidthOptions{Replicas: settings.Quota.Replicas}),
		Hooks:     hookRuntime,
		Profiling: profilingHandler(),
		State:     store,
		Ledger:    ledger,
	})
	if err != nil {
		logger.Error("cannot start", "error", err)
		return exitFail
	}
	rl := &reloader{gw: gw, source: source, loaded: snap.Gateway, log: logger, audit: audit, gc: gcTarget}
	gw.RecordReload(true)
	live := gw.Apply(snap)
	logger.Info("policy loaded", "source", source.name, "generation", live.Generation,
		"tenants", len(live.TenantIDs()), "connectors", live.Connectors(), "hash", live.Hash)
	for _, w := range snap.Warnings {
		logger.Warn("config warning", "problem", w.Error())
	}

	admin := &http.Server{
		Handler:           gw.AdminHandler(&proxy.ConfigStatus{LastError: rl.lastError, Source: source.name}),
		ReadHeaderTimeout: 10 * time.Second,
	}
	// Loading the config (YAML, certificates, scripts) leaves megabytes of
	// garbage that, at GOGC=200, would sit in the resident set until a
	// collection and the scavenger got round to it under load. Hand it back
	// before serving, once.
	debug.FreeOSMemory()
	// Signals are caught from here on: a SIGHUP sent as soon as the
	// gateway reports ready must reload, not kill it.
	signals := make(chan os.Signal, 1)
	signal.Notify(signals, syscall.SIGTERM, syscall.SIGINT, syscall.SIGHUP)
	defer signal.Stop(signals)
	serveErr := make(chan error, 2)
	go func() { serveErr <- gw.Serve(proxyLn) }()
	watchCtx, stopWatching := context.WithCancel(context.Background())
	defer stopWatching()
	if source.dir != "" && *watch {
		watching := make(chan struct{})
		go func() {
			opts := policy.WatchOptions{Logger: logger, Started: func() { close(watching) }, Files: func() []string {
				if live := gw.Live(); live != nil {
					return live.Referenced()
				}
				return nil
			}}
			if auditPath != "" {
				opts.Ignore = []string{auditPath} // its own writes are no edit
			}
			err := policy.Watch(watchCtx, source.dir, opts, rl.reload)
			if err != nil {
				logger.Error("config watching stopped; SIGHUP still reloads", "error", err)
			}
		}()
		// Ready means edits are seen: wait for the watches (an error ends
		// the wait too, logged above), then catch an edit made between
		// the first load and the watches.
		select {
		case <-watching:
			rl.reload("watch started")
		case <-time.After(5 * time.Second):
			logger.Warn("config watching did not start within 5s; SIGHUP still reloads")
		}
	}
	go func() {
		if err := admin.Serve(adminLn); !errors.Is(err, http.ErrServerClosed) {
			serveErr <- err
		}
	}()
	logger.Info("egressgw serving", "listen", proxyLn.Addr().String(), "admin_listen", adminLn.Addr().String(), "version", version)
	if *configPath == "" {
		printQuickstart(stderr, proxyLn.Addr().String())
		printQuickstartAdmin(stderr, adminLn.Addr().String())
	}

	for {
		select {
		case err := <-serveErr:
			logger.Error("listener failed", "error", err)
			return exitFail
		case sig := <-signals:
			if sig == syscall.SIGHUP {
				audit.reopen(logger)
				rl.reload("SIGHUP")
				continue
			}
			logger.Info("shutting down", "signal", sig.String(), "grace", settings.ShutdownGrace.String())
			ctx, cancel := context.WithTimeout(context.Background(), settings.ShutdownGrace)
			err := gw.Shutdown(ctx)
			cancel()
			_ = admin.Close()
			if err != nil {
				logger.Warn("shutdown grace ran out; remaining connections closed", "error", err)
			}
			logger.Info("stopped")
			return exitOK
		}
	}
}

// newLimiter builds the quota backend once per process: its state (token
// buckets, concurrency slots) must outlive policy reloads.
func newLimiter(q policy.QuotaBackend, logger *slog.Logger) (quota.Limiter, error) {
	if q.Backend != "redis" {
		return quota.NewMemory(quota.MemoryOptions{}), nil
	}
	onError := quota.FailClosed
	if q.FailOpen {
		onError = quota.FailOpen
	}
	redis.SetLogger(redisLog{logger})
	return quota.NewRedis(quota.RedisOptions{Addr: q.RedisAddr, Prefix: q.RedisPrefix, OnError: onError, Logger: logger})
}

// openState opens the store of access requests and grants once per
// process, as the quota backend is: state.* and access.* need a restart
// (docs/admins.md). The file backend reads what an earlier run wrote and
// locks its directory, so a directory that cannot be used fails start-up;
// the Redis backend connects on first use, and while Redis is unreachable
// no grant applies and the admin API answers 503.
func openState(gw policy.Gateway) (state.Store, error) {
	opts := state.Options{MaxPending: gw.Access.MaxPending, MaxGrantDuration: gw.Access.MaxGrantDuration}
	if gw.State.Backend == "redis" {
		return state.NewRedis(state.RedisOptions{Options: opts, Addr: gw.Quota.RedisAddr, Prefix: gw.Quota.RedisPrefix})
	}
	return state.NewFile(state.FileOptions{Options: opts, Dir: gw.State.Dir})
}

// openLedger builds the budget ledger once per process, beside the state
// store (docs/reference.md, "Budgets and cost"): on the quota backend's
// Redis client with quota.backend: redis, on Redis with state.backend:
// redis, otherwise in budgets.json in state.dir. Counters that cannot be
// read fail start-up rather than start from zero.
func openLedger(gw policy.Gateway, limiter quota.Limiter, logger *slog.Logger) (*budget.Ledger, func() error, error) {
	opts := budget.Options{Currency: gw.Budgets.Currency}
	closeBackend := func() error { return nil }
	switch q, isRedis := limiter.(*quota.Redis); {
	case isRedis:
		opts.Backend = budget.NewRedis(q.Client(), gw.Quota.RedisPrefix)
	case gw.State.Backend == "redis":
		clientOpts, err := redisOptions(gw.Quota.RedisAddr)
		if err != nil {
			return nil, nil, err
		}
		client := redis.NewClient(clientOpts)
		opts.Backend = budget.NewRedis(client, gw.Quota.RedisPrefix)
		closeBackend = client.Close
	default:
		f, err := budget.NewFile(cmp.Or(gw.State.Dir, state.DefaultDir), nil)
		if err != nil {
			return nil, nil, err
		}
		opts.Backend = f
	}
	opts.OnFlushError = func(err error) {
		logger.Debug("budget flush failed", "error", err)
	}
	return budget.New(opts), closeBackend, nil
}

func closeLedger(l *budget.Ledger, closeBackend func() error, logger *slog.Logger) {
	if err := l.Close(); err != nil {
		logger.Error("the last budget counts could not be saved", "error", err)
	}
	if err := closeBackend(); err != nil {
		logger.Error("closing the budget counters' Redis client failed", "error", err)
	}
}

// redisOptions are the client options of a Redis address or redis:// URL,
// as the quota backend reads it.
func redisOptions(addr string) (*redis.Options, error) {
	if strings.HasPrefix(addr, "redis://") || strings.HasPrefix(addr, "rediss://") {
		opts, err := redis.ParseURL(addr)
		if err != nil {
			return nil, errors.New("quota.redis.addr: not a valid redis:// URL")
		}
		return opts, nil
	}
	return &redis.Options{Addr: addr}, nil
}

func closeState(store state.Store, logger *slog.Logger) {
	if err := store.Close(); err != nil {
		logger.Error("closing the state store failed; the latest access-request counts may be lost", "error", err)
	}
}

// redactedAddr is a Redis address fit for a log line: a redis:// URL may
// hold a password.
func redactedAddr(addr string) string {
	if u, err := url.Parse(addr); err == nil && u.User != nil {
		u.User = nil
		return u.String()
	}
	return addr
}

// redisLog sends the Redis client's own messages (reconnect attempts while
// Redis is down) to the gateway's log instead of stderr.
type redisLog struct{ log *slog.Logger }

func (l redisLog) Printf(_ context.Context, format string, v ...any) {
	l.log.Debug("redis client", "message", fmt.Sprintf(format, v...))
}

func newLogger(w io.Writer, format string) (*slog.Logger, error) {
	opts := &slog.HandlerOptions{Level: slog.LevelInfo}
	switch format {
	case "json":
		return slog.New(slog.NewJSONHandler(w, opts)), nil
	case "text":
		return slog.New(slog.NewTextHandler(w, opts)), nil
	default:
		return nil, fmt.Errorf("--log-format: want json or text, got %q", format)
	}
}

func addrPort(ln net.Listener) netip.AddrPort {
	if tcp, ok := ln.Addr().(*net.TCPAddr); ok {
		return tcp.AddrPort()
	}
	return netip.AddrPort{}
}

// auditFile is the file audit.output names, relative to the config
// directory like every path in the config; "" for stdout.
func auditFile(output, configPath string) string {
	if output == "stdout" {
		return ""
	}
	if filepath.IsAbs(output) {
		return output
	}
	dir := configPath
	if info, err := os.Stat(configPath); err == nil && !info.IsDir() {
		dir = filepath.Dir(configPath)
	}
	return filepath.Join(dir, output)
}

// auditOutput is where the audit log goes: stdout, or a file that is
// reopened on SIGHUP and when renamed or removed (proxy.AuditFile), and
// switched when a reload changes audit.output.
type auditOutput struct {
	stdout     io.Writer
	configPath string

	mu     sync.Mutex
	output string           // audit.output now in use
	file   *proxy.AuditFile // nil for stdout
}

// open opens output as the first destination.
func (o *auditOutput) open(output string) error {
	file, err := o.openFile(output)
	if err != nil {
		return err
	}
	o.output, o.file = output, file
	return nil
}

func (o *auditOutput) openFile(output string) (*proxy.AuditFile, error) {
	path := auditFile(output, o.configPath)
	if path == "" {
		return nil, nil
	}
	return proxy.OpenAuditFile(path)
}

// path is the audit file's path; "" for stdout.
func (o *auditOutput) path() string {
	o.mu.Lock()
	defer o.mu.Unlock()
	if o.file == nil {
		return ""
	}
	return o.file.Path()
}

func (o *auditOutput) writer() io.Writer {
	o.mu.Lock()
	defer o.mu.Unlock()
	if o.file == nil {
		return o.stdout
	}
	return o.file
}

// reopen reopens the audit file at its path (SIGHUP: logrotate's
// postrotate); if the path cannot be opened, the open file stays in use.
func (o *auditOutput) reopen(log *slog.Logger) {
	o.mu.Lock()
	defer o.mu.Unlock()
	if o.file == nil {
		return
	}
	if err := o.file.Reopen(); err != nil {
		log.Error("cannot reopen the audit file; writing on to the open one", "path", o.file.Path(), "error", err)
		return
	}
	log.Info("audit file reopened", "path", o.file.Path())
}

// apply switches the gateway's audit log to output if it changed: lines
// not yet written go to the new destination, none is lost or written
// twice. If output cannot be opened, the current destination stays.
func (o *auditOutput) apply(gw *proxy.Gateway, output string, log *slog.Logger) {
	o.mu.Lock()
	defer o.mu.Unlock()
	if output == o.output {
		return
	}
	file, err := o.openFile(output)
	if err != nil {
		log.Error("cannot open the new audit output; the audit log stays where it was", "output", output, "error", err)
		return
	}
	var w io.Writer = o.stdout
	if file != nil {
		w = file
	}
	gw.SetAuditOutput(w)
	if o.file != nil {
		if err := o.file.Close(); err != nil {
			log.Error("closing the previous audit file failed", "path", o.file.Path(), "error", err)
		}
	}
	log.Info("audit output switched", "from", o.output, "to", output)
	o.output, o.file = output, file
}

// close closes the audit file, once the gateway has written its last line.
func (o *auditOutput) close(log *slog.Logger) {
	o.mu.Lock()
	defer o.mu.Unlock()
	if o.file == nil {
		return
	}
	if err := o.file.Close(); err != nil {
		log.Error("closing the audit file failed", "path", o.file.Path(), "error", err)
	}
}

func printQuickstart(w io.Writer, listen string) {
	host, port, _ := net.SplitHostPort(listen)
	if ip, err := netip.ParseAddr(host); err == nil && ip.IsUnspecified() {
		host = "127.0.0.1"
	}
	proxyURL := fmt.Sprintf("http://%s:%s@%s", configs.QuickstartTenant, configs.QuickstartToken, net.JoinHostPort(host, port))
	fmt.Fprintf(w, `
egressgw is running the embedded quickstart policy (loopback only).
  tenant: %s
  token:  %s   (public demo token: never use it beyond your own machine)
Try it:
  curl -x %s %s
A host outside the policy is refused, and the refusal says why: over http:// in the JSON body,
  curl -x %s http://not-allowed.example.net/
over https:// in the status line of the refused CONNECT (curl prints its code, curl -v all of it):
  curl -x %s https://not-allowed.example.net/
See why, from a checkout of the repository (this policy is configs/quickstart; copy it to edit it):
  egressgw explain --config configs/quickstart --tenant %s https://not-allowed.example.net/
No egressgw on your PATH? go install github.com/egressgw/egressgw/cmd/egressgw@latest

`, configs.QuickstartTenant, configs.QuickstartToken, proxyURL, configs.QuickstartURL, proxyURL, proxyURL, configs.QuickstartTenant)
}

// printQuickstartAdmin shows the quickstart's admin token with a command
// that uses it against this gateway's admin listener.
func printQuickstartAdmin(w io.Writer, adminListen string) {
	host, port, _ := net.SplitHostPort(adminListen)
	if ip, err := netip.ParseAddr(host); err == nil && ip.IsUnspecified() {
		host = "127.0.0.1"
	}
	command := "egressgw access list"
	if adminURL := "http://" + net.JoinHostPort(host, port); adminURL != defaultAdminURL {
		command += " --admin-url " + adminURL
	}
	fmt.Fprintf(w, `Refused hosts become access requests; decide them with the demo admin token (public too):
  EGRESSGW_ADMIN_TOKEN=%s %s

`, configs.QuickstartAdminToken, command)
}

// reloader loads the config again on request and publishes it only if it
// validates; otherwise the last good policy keeps serving.
type reloader struct {
	gw     *proxy.Gateway
	source configSource
	loaded policy.Gateway // as first loaded, before flags override it
	log    *slog.Logger
	audit  *auditOutput
	gc     *gcTarget // nil when GOGC is set

	mu sync.Mutex // one reload at a time

	// The last failed load's message and time, under errMu alone: /v1/config
	// reads them while a reload, which can take seconds, holds mu.
	errMu     sync.Mutex
	lastErr   string
	lastErrAt time.Time
}

// setLastError records the outcome of a load: a failure's message, or ""
// once the files load again.
func (r *reloader) setLastError(msg string, at time.Time) {
	r.errMu.Lock()
	r.lastErr, r.lastErrAt = msg, at
	r.errMu.Unlock()
}

func (r *reloader) reload(trigger string) {
	r.mu.Lock() // the watcher and SIGHUP may ask at once
	defer r.mu.Unlock()
	var prev *policy.Snapshot
	if live := r.gw.Live(); live != nil {
		if live.Unchanged(r.source.fsys) {
			// Nothing changed: keep the generation, and the quota state
			// with it. The files are the live policy's again (a broken
			// edit reverted), so an earlier error no longer describes them.
			r.setLastError("", time.Time{})
			// An audit output that could not be opened last time is
			// tried again (after its directory was fixed, say).
			r.audit.apply(r.gw, live.Gateway.AuditOutput, r.log)
			// Said, so that an operator who sent SIGHUP sees it was read.
			r.log.Info("config unchanged", "trigger", trigger, "generation", live.Generation, "hash", live.Hash)
			return
		}
		prev = live.Snapshot
	}
	defer r.gc.boundReload()()
	snap, err := r.source.reload(prev)
	if err != nil {
		r.gw.RecordReload(false)
		r.setLastError(err.Error(), time.Now())
		r.log.Error("config reload refused; the last good policy keeps serving", "trigger", trigger, "error", err.Error())
		return
	}
	r.warnRestartOnly(snap.Gateway)
	r.gw.RecordReload(true)
	live := r.gw.Apply(snap)
	r.audit.apply(r.gw, snap.Gateway.AuditOutput, r.log)
	r.setLastError("", time.Time{})
	r.log.Info("policy reloaded", "trigger", trigger, "generation", live.Generation, "hash", live.Hash,
		"tenants", len(live.TenantIDs()), "connectors", live.Connectors())
}

// warnRestartOnly says which changed settings wait for a restart, instead
// of ignoring them silently.
func (r *reloader) warnRestartOnly(next policy.Gateway) {
	prev := r.loaded
	changed := map[string]bool{
		"listen":                        next.Listen != prev.Listen,
		"admin_listen":                  next.AdminListen != prev.AdminListen,
		"limits.max_header_bytes":       next.MaxHeaderBytes != prev.MaxHeaderBytes,
		"limits.max_connections":        next.MaxConnections != prev.MaxConnections,
		"limits.shutdown_grace":         next.ShutdownGrace != prev.ShutdownGrace,
		"limits.request_body_timeout":   next.RequestBodyTimeout != prev.RequestBodyTimeout,
		"limits.response_write_timeout": next.ResponseWriteTimeout != prev.ResponseWriteTimeout,
		"limits.max_unauthenticated":    next.MaxUnauthenticated != prev.MaxUnauthenticated,
		"metrics.max_tenant_labels":     next.MaxTenantLabels != prev.MaxTenantLabels,
		"quota (backend)":               next.Quota != prev.Quota,
		"hooks.max_concurrent":          next.Hooks.MaxConcurrent != prev.Hooks.MaxConcurrent,
		"state":                         next.State != prev.State,
		"access":                        next.Access != prev.Access,
	}
	for key, differs := range changed {
		if differs {
			r.log.Warn("setting changed in gateway.yaml; it takes effect after a restart", "setting", key)
		}
	}
}

func (r *reloader) lastError() (string, time.Time) {
	r.errMu.Lock()
	defer r.errMu.Unlock()
	return r.lastErr, r.lastErrAt
}
