package policy

import (
	"errors"
	"fmt"
	"time"

	"github.com/egressgw/egressgw/hooks"
)

// Hooks is gateway.yaml's hooks section with defaults applied.
type Hooks struct {
	MaxConcurrent int          // 0: 2 x GOMAXPROCS
	Defaults      hooks.Limits // complete: every field set
}

// ConnectorHooks are a connector's compiled transform scripts and the
// limits their runs get (the connector's own over the gateway's defaults).
type ConnectorHooks struct {
	Request  *hooks.Script // nil: none
	Response *hooks.Script // nil: none
	// ResponsePerEvent: the response script runs once per event of a
	// streamed body (server-sent events, NDJSON) instead of on the whole
	// body; Response is then compiled with the event variable
	// (docs/connector-authors.md, "Hooks on streamed responses").
	ResponsePerEvent bool
	Limits           hooks.Limits
}

func hookLimits(f hookLimitsFile) hooks.Limits {
	l := hooks.Limits{}
	if f.MaxAllocs != nil {
		l.MaxAllocs = *f.MaxAllocs
	}
	if f.MaxMemory != nil {
		l.MaxMemory = int64(*f.MaxMemory)
	}
	if f.Timeout != nil {
		l.Timeout = time.Duration(*f.Timeout)
	}
	if f.MaxBodyBytes != nil {
		l.MaxBodyBytes = int64(*f.MaxBodyBytes)
	}
	return l
}

func (b *builder) hooksSettings(doc *yamlDoc, f hooksFile) Hooks {
	h := Hooks{MaxConcurrent: intOr(f.MaxConcurrent, 0), Defaults: hookLimits(f.Defaults).Or(hooks.DefaultLimits())}
	if h.MaxConcurrent < 0 {
		b.errorf(doc, doc.line("hooks", "max_concurrent"), "max_concurrent: must be 0 (2 x CPUs) or more")
	}
	if err := h.Defaults.Validate(); err != nil {
		b.errorf(doc, doc.line("hooks", "defaults"), "hooks.defaults: %v", err)
	}
	return h
}

// connectorHooks compiles a connector's scripts: a script that does not
// compile rejects the config with the script's own file and line.
func (b *builder) connectorHooks(doc *yamlDoc, f *connectorHooksFile) *ConnectorHooks {
	if f == nil {
		return nil
	}
	ch := &ConnectorHooks{Limits: hookLimits(f.hookLimitsFile).Or(b.snap.Gateway.Hooks.Defaults)}
	if err := ch.Limits.Validate(); err != nil {
		b.errorf(doc, doc.line("hooks"), "hooks: %v", err)
	}
	if f.Request == "" && f.Response == "" {
		b.errorf(doc, doc.line("hooks"), "hooks: name a request or a response script")
	}
	if f.ResponsePerEvent && f.Response == "" {
		b.errorf(doc, doc.line("hooks", "response_per_event"), "hooks.response_per_event: runs the response script per event, but no hooks.response script is named")
	}
	ch.ResponsePerEvent = f.ResponsePerEvent
	ch.Request = b.compileHook(doc, f.Request, "request", hooks.Compile)
	compileResponse := hooks.Compile
	if f.ResponsePerEvent {
		compileResponse = hooks.CompileEventHook
	}
	ch.Response = b.compileHook(doc, f.Response, "response", compileResponse)
	return ch
}

func (b *builder) compileHook(doc *yamlDoc, path, key string, compile func(string, []byte) (*hooks.Script, error)) *hooks.Script {
	if path == "" {
		return nil
	}
	src, loc, err := b.readFileAt(path)
	if err != nil {
		b.errorf(doc, doc.line("hooks", key), "hooks.%s: %v", key, err)
		return nil
	}
	if b.secretFiles[loc] {
		b.errorf(doc, doc.line("hooks", key), "hooks.%s: %s is a secret's or the CA key's file (see %s), not a script", key, path, GatewayFileName)
		return nil
	}
	script, err := compile(path, src)
	var ce *hooks.CompileError
	switch {
	case errors.As(err, &ce) && loc.allowed:
		// A file in config.allow_paths lies beside secrets the config
		// does not name; the compiler's message would quote its text.
		b.errs = append(b.errs, ConfigError{File: ce.File, Line: ce.Line, Msg: "does not compile (the compiler's message is withheld: the file is outside the config directory)"})
		return nil
	case errors.As(err, &ce):
		b.errs = append(b.errs, ConfigError{File: ce.File, Line: ce.Line, Msg: ce.Message})
		return nil
	case err != nil:
		b.errorf(doc, doc.line("hooks", key), "hooks.%s: %v", key, fmt.Sprint(err))
		return nil
	}
	return script
}
