package main

import (
	"net/http"
	"net/http/pprof"
)

// profilingHandler serves Go's profiles under /debug/pprof/ for the admin
// listener (docs/operators.md, "The admin listener"). It lives in main
// because importing net/http/pprof also registers these paths on
// http.DefaultServeMux, a process-wide side effect that is the program's
// to take, not a library's; nothing serves DefaultServeMux here.
func profilingHandler() http.Handler {
	mux := http.NewServeMux()
	mux.HandleFunc("GET /debug/pprof/", pprof.Index)
	mux.HandleFunc("GET /debug/pprof/cmdline", pprof.Cmdline)
	mux.HandleFunc("GET /debug/pprof/profile", pprof.Profile)
	mux.HandleFunc("GET /debug/pprof/symbol", pprof.Symbol)
	mux.HandleFunc("GET /debug/pprof/trace", pprof.Trace)
	return mux
}
