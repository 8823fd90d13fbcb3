package main

import (
	"bytes"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"os"
	"strconv"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/egressgw/egressgw/state"
)

// The access and grant commands talk to a running gateway's admin API
// (docs/reference.md, "Admin API"); docs/admins.md walks through them.

// adminTokenEnv holds the admin token the commands send; a flag would
// leave it in shell history and process listings.
const adminTokenEnv = "EGRESSGW_ADMIN_TOKEN"

const defaultAdminURL = "http://127.0.0.1:9128"

const accessUsage = "usage: egressgw access list|approve|deny [flags] [ID]\n"
const grantUsage = "usage: egressgw grant list|add|revoke|rule [flags] [ID]\n"

func accessCommand(args []string, stdout, stderr io.Writer) int {
	if len(args) == 0 {
		fmt.Fprint(stderr, accessUsage)
		return exitUsage
	}
	switch args[0] {
	case "list":
		return accessList(args[1:], stdout, stderr)
	case "approve":
		return accessApprove(args[1:], stdout, stderr)
	case "deny":
		return accessDeny(args[1:], stdout, stderr)
	}
	fmt.Fprint(stderr, accessUsage)
	return exitUsage
}

func grantCommand(args []string, stdout, stderr io.Writer) int {
	if len(args) == 0 {
		fmt.Fprint(stderr, grantUsage)
		return exitUsage
	}
	switch args[0] {
	case "list":
		return grantList(args[1:], stdout, stderr)
	case "add":
		return grantAdd(args[1:], stdout, stderr)
	case "revoke":
		return grantRevoke(args[1:], stdout, stderr)
	case "rule":
		return grantRule(args[1:], stdout, stderr)
	}
	fmt.Fprint(stderr, grantUsage)
	return exitUsage
}

// adminClient is one command's connection to the admin API.
type adminClient struct {
	base    string
	token   string
	jsonOut *bool
}

// adminFlags adds the flags every access and grant command has.
func adminFlags(fs *flag.FlagSet) *adminClient {
	c := &adminClient{}
	fs.StringVar(&c.base, "admin-url", defaultAdminURL, "the gateway's admin listener")
	c.jsonOut = fs.Bool("json", false, "print the API's JSON instead of a table")
	return c
}

// parseAdmin parses args and returns the positional arguments, which must
// number want; false after a usage error, reported.
func parseAdmin(fs *flag.FlagSet, c *adminClient, args []string, want int, stderr io.Writer) ([]string, bool) {
	rest, err := parseInterspersed(fs, args)
	if err != nil {
		return nil, false
	}
	if len(rest) != want {
		if want == 1 {
			fmt.Fprintf(stderr, "%s: want one ID\n", fs.Name())
		} else {
			fmt.Fprintf(stderr, "%s: unexpected argument %q\n", fs.Name(), rest[0])
		}
		return nil, false
	}
	if err := c.ready(); err != nil {
		fmt.Fprintf(stderr, "%s: %v\n", fs.Name(), err)
		return nil, false
	}
	return rest, true
}

// ready checks --admin-url and reads the token from the environment; the
// error is a usage error.
func (c *adminClient) ready() error {
	u, err := url.Parse(c.base)
	if err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" {
		return fmt.Errorf("--admin-url: want http://HOST:PORT, got %q", c.base)
	}
	c.base = strings.TrimRight(c.base, "/")
	c.token = os.Getenv(adminTokenEnv)
	return nil
}

// adminHTTP never uses HTTP_PROXY: the admin listener is reached
// directly, and a sandbox's proxy settings must not carry the token.
var adminHTTP = &http.Client{Transport: &http.Transport{Proxy: nil}, Timeout: 30 * time.Second}

// apiError is an error reply of the admin API.
type apiError struct {
	Status  int
	Code    string `json:"error"`
	Message string `json:"message"`
}

func (e *apiError) Error() string {
	switch {
	case e.Code == "":
		return fmt.Sprintf("the gateway answered %d", e.Status)
	case e.Message == "":
		// Some replies (explain's unknown tenant or bad URL) carry their
		// message in "error" alone.
		return fmt.Sprintf("%s (%d)", e.Code, e.Status)
	}
	return fmt.Sprintf("%s (%d %s)", e.Message, e.Status, e.Code)
}

// call sends one request and returns the reply's body when it is a 2xx.
func (c *adminClient) call(method, path string, body any) ([]byte, error) {
	var reader io.Reader
	if body != nil {
		data, err := json.Marshal(body)
		if err != nil {
			return nil, err
		}
		reader = bytes.NewReader(data)
	}
	req, err := http.NewRequest(method, c.base+path, reader)
	if err != nil {
		return nil, err
	}
	if body != nil {
		req.Header.Set("Content-Type", "application/json")
	}
	if c.token != "" {
		req.Header.Set("Authorization", "Bearer "+c.token)
	}
	resp, err := adminHTTP.Do(req)
	if err != nil {
		return nil, fmt.Errorf("cannot reach the gateway's admin API at %s: %w", c.base, errors.Unwrap(err))
	}
	defer resp.Body.Close()
	data, err := io.ReadAll(io.LimitReader(resp.Body, 64<<20))
	if err != nil {
		return nil, fmt.Errorf("reading the reply: %w", err)
	}
	if resp.StatusCode/100 != 2 {
		e := &apiError{Status: resp.StatusCode}
		_ = json.Unmarshal(data, e) // a reply that is not ours keeps the status alone
		if resp.StatusCode == http.StatusUnauthorized && c.token == "" {
			e.Message += "; set " + adminTokenEnv
		}
		return nil, e
	}
	return data, nil
}

// finish prints a command's failure, or its reply: as JSON with --json,
// else through human.
func (c *adminClient) finish(name string, data []byte, err error, stdout, stderr io.Writer, human func([]byte) error) int {
	if err == nil && *c.jsonOut {
		_, err = stdout.Write(data)
	} else if err == nil {
		err = human(data)
	}
	if err != nil {
		fmt.Fprintf(stderr, "egressgw %s: %v\n", name, err)
		return exitFail
	}
	return exitOK
}

// listFlag collects a comma-separated list, given once or repeated.
type listFlag []string

func (l *listFlag) String() string { return strings.Join(*l, ",") }

func (l *listFlag) Set(v string) error {
	for _, s := range strings.Split(v, ",") {
		if s = strings.TrimSpace(s); s != "" {
			*l = append(*l, s)
		}
	}
	return nil
}

// grantChoice is what approve and add share: the grant's shape.
type grantChoice struct {
	forText, host, note   string
	ports, methods, paths listFlag
}

func grantChoiceFlags(fs *flag.FlagSet) *grantChoice {
	g := &grantChoice{}
	fs.StringVar(&g.forText, "for", "", "how long the grant lasts, e.g. 2h (required; at most access.max_grant_duration)")
	fs.StringVar(&g.host, "host", "", "host pattern, e.g. *.pypi.org")
	fs.Var(&g.ports, "ports", "ports, comma-separated, e.g. 443,8443")
	fs.Var(&g.methods, "methods", "methods, comma-separated (default: all)")
	fs.Var(&g.paths, "paths", "path prefixes, comma-separated (default: all)")
	fs.StringVar(&g.note, "note", "", "why, for the record")
	return g
}

// body is the JSON the API takes; ports that do not parse are a usage
// error.
func (g *grantChoice) body() (map[string]any, error) {
	b := map[string]any{"for": g.forText}
	if g.host != "" {
		b["host"] = g.host
	}
	if len(g.ports) > 0 {
		ports := make([]int, len(g.ports))
		for i, p := range g.ports {
			n, err := strconv.Atoi(p)
			if err != nil {
				return nil, fmt.Errorf("--ports: %q is not a port number", p)
			}
			ports[i] = n
		}
		b["ports"] = ports
	}
	if len(g.methods) > 0 {
		b["methods"] = []string(g.methods)
	}
	if len(g.paths) > 0 {
		b["paths"] = []string(g.paths)
	}
	if g.note != "" {
		b["note"] = g.note
	}
	return b, nil
}

func accessList(args []string, stdout, stderr io.Writer) int {
	fs := newFlags("access list", stderr)
	c := adminFlags(fs)
	tenant := fs.String("tenant", "", "only this tenant's requests")
	status := fs.String("status", "", "only requests with this status: pending, approved or denied")
	if _, ok := parseAdmin(fs, c, args, 0, stderr); !ok {
		return exitUsage
	}
	q := url.Values{}
	if *tenant != "" {
		q.Set("tenant", *tenant)
	}
	if *status != "" {
		q.Set("status", *status)
	}
	path := "/v1/access-requests"
	if len(q) > 0 {
		path += "?" + q.Encode()
	}
	data, err := c.call(http.MethodGet, path, nil)
	return c.finish("access list", data, err, stdout, stderr, func(data []byte) error {
		var reply struct{ Requests []state.AccessRequest }
		if err := json.Unmarshal(data, &reply); err != nil {
			return err
		}
		tw := tabwriter.NewWriter(stdout, 0, 4, 2, ' ', 0)
		fmt.Fprintln(tw, "ID\tTENANT\tHOST\tPORT\tSTATUS\tCOUNT\tLAST SEEN\tLAST REQUEST\tREASON")
		for _, r := range reply.Requests {
			fmt.Fprintf(tw, "%s\t%s\t%s\t%d\t%s\t%d\t%s\t%s\t%s\n", r.ID, r.Tenant, r.Host, r.Port, r.Status, r.Count,
				r.LastSeen.UTC().Format(time.RFC3339), cell(strings.TrimSpace(r.Method+" "+r.Path), 60), cell(r.Reason, 60))
		}
		return tw.Flush()
	})
}

func accessApprove(args []string, stdout, stderr io.Writer) int {
	fs := newFlags("access approve", stderr)
	c := adminFlags(fs)
	choice := grantChoiceFlags(fs)
	rest, ok := parseAdmin(fs, c, args, 1, stderr)
	if !ok {
		return exitUsage
	}
	body, err := choice.body()
	if err != nil {
		fmt.Fprintln(stderr, "egressgw access approve:", err)
		return exitUsage
	}
	data, err := c.call(http.MethodPost, "/v1/access-requests/"+url.PathEscape(rest[0])+"/approve", body)
	return c.finish("access approve", data, err, stdout, stderr, func(data []byte) error {
		var reply struct{ Grant state.Grant }
		if err := json.Unmarshal(data, &reply); err != nil {
			return err
		}
		_, err := fmt.Fprintf(stdout, "approved %s: %s\n", rest[0], describeGrant(reply.Grant))
		return err
	})
}

func accessDeny(args []string, stdout, stderr io.Writer) int {
	fs := newFlags("access deny", stderr)
	c := adminFlags(fs)
	rest, ok := parseAdmin(fs, c, args, 1, stderr)
	if !ok {
		return exitUsage
	}
	data, err := c.call(http.MethodPost, "/v1/access-requests/"+url.PathEscape(rest[0])+"/deny", nil)
	return c.finish("access deny", data, err, stdout, stderr, func(data []byte) error {
		var reply struct{ Request state.AccessRequest }
		if err := json.Unmarshal(data, &reply); err != nil {
			return err
		}
		r := reply.Request
		_, err := fmt.Fprintf(stdout, "denied %s: tenant %s, %s:%d\n", r.ID, r.Tenant, r.Host, r.Port)
		return err
	})
}

func grantList(args []string, stdout, stderr io.Writer) int {
	fs := newFlags("grant list", stderr)
	c := adminFlags(fs)
	tenant := fs.String("tenant", "", "only this tenant's grants")
	if _, ok := parseAdmin(fs, c, args, 0, stderr); !ok {
		return exitUsage
	}
	path := "/v1/grants"
	if *tenant != "" {
		path += "?tenant=" + url.QueryEscape(*tenant)
	}
	data, err := c.call(http.MethodGet, path, nil)
	return c.finish("grant list", data, err, stdout, stderr, func(data []byte) error {
		var reply struct{ Grants []state.Grant }
		if err := json.Unmarshal(data, &reply); err != nil {
			return err
		}
		tw := tabwriter.NewWriter(stdout, 0, 4, 2, ' ', 0)
		fmt.Fprintln(tw, "ID\tTENANT\tHOST\tPORTS\tMETHODS\tPATHS\tEXPIRES\tAPPROVED BY\tNOTE")
		for _, g := range reply.Grants {
			fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\n", g.ID, g.Tenant, g.Host, joinInts(g.Ports),
				orAll(g.Methods), orAll(g.Paths), g.ExpiresAt.UTC().Format(time.RFC3339), g.ApprovedBy, cell(g.Note, 60))
		}
		return tw.Flush()
	})
}

func grantAdd(args []string, stdout, stderr io.Writer) int {
	fs := newFlags("grant add", stderr)
	c := adminFlags(fs)
	tenant := fs.String("tenant", "", "the tenant the grant is for (required)")
	choice := grantChoiceFlags(fs)
	if _, ok := parseAdmin(fs, c, args, 0, stderr); !ok {
		return exitUsage
	}
	body, err := choice.body()
	if err != nil {
		fmt.Fprintln(stderr, "egressgw grant add:", err)
		return exitUsage
	}
	body["tenant"] = *tenant
	data, err := c.call(http.MethodPost, "/v1/grants", body)
	return c.finish("grant add", data, err, stdout, stderr, func(data []byte) error {
		var reply struct{ Grant state.Grant }
		if err := json.Unmarshal(data, &reply); err != nil {
			return err
		}
		_, err := fmt.Fprintf(stdout, "granted %s\n", describeGrant(reply.Grant))
		return err
	})
}

func grantRevoke(args []string, stdout, stderr io.Writer) int {
	fs := newFlags("grant revoke", stderr)
	c := adminFlags(fs)
	rest, ok := parseAdmin(fs, c, args, 1, stderr)
	if !ok {
		return exitUsage
	}
	data, err := c.call(http.MethodDelete, "/v1/grants/"+url.PathEscape(rest[0]), nil)
	return c.finish("grant revoke", data, err, stdout, stderr, func([]byte) error {
		_, err := fmt.Fprintf(stdout, "revoked %s\n", rest[0])
		return err
	})
}

func grantRule(args []string, stdout, stderr io.Writer) int {
	fs := newFlags("grant rule", stderr)
	c := adminFlags(fs)
	rest, ok := parseAdmin(fs, c, args, 1, stderr)
	if !ok {
		return exitUsage
	}
	data, err := c.call(http.MethodGet, "/v1/grants/"+url.PathEscape(rest[0])+"/rule", nil)
	if err == nil && *c.jsonOut {
		// The API answers YAML; --json wraps it for scripts.
		data, err = json.Marshal(map[string]string{"rule": string(data)})
		data = append(data, '\n')
	}
	return c.finish("grant rule", data, err, stdout, stderr, func(data []byte) error {
		_, err := stdout.Write(data)
		return err
	})
}

// describeGrant says in one line what a grant allows and until when.
func describeGrant(g state.Grant) string {
	s := fmt.Sprintf("%s for tenant %s: %s ports %s", g.ID, g.Tenant, g.Host, joinInts(g.Ports))
	if len(g.Methods) > 0 {
		s += " methods " + strings.Join(g.Methods, ",")
	}
	if len(g.Paths) > 0 {
		s += " paths " + strings.Join(g.Paths, ",")
	}
	return s + ", expires " + g.ExpiresAt.UTC().Format(time.RFC3339)
}

func joinInts(ns []int) string {
	s := make([]string, len(ns))
	for i, n := range ns {
		s[i] = strconv.Itoa(n)
	}
	return strings.Join(s, ",")
}

func orAll(list []string) string {
	if len(list) == 0 {
		return "all"
	}
	return strings.Join(list, ",")
}

// cell makes s fit one table cell: one line without control characters
// (a sandbox chose the path and reason), at most n runes, "-" when empty.
func cell(s string, n int) string {
	s = strings.Join(strings.Fields(strings.Map(func(r rune) rune {
		if r < 0x20 || (r >= 0x7f && r < 0xa0) {
			return ' '
		}
		return r
	}, s)), " ")
	if s == "" {
		return "-"
	}
	if r := []rune(s); len(r) > n {
		return string(r[:n-1]) + "…"
	}
	return s
}
