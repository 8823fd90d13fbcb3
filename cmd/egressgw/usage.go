package main

import (
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"strconv"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/egressgw/egressgw/budget"
)

// The usage command prints a tenant's statement and where its budgets
// stand, from a running gateway's admin API (docs/reference.md, "Admin
// API"; docs/admins.md, "Budgets").

// usageBudgets is the part of GET /v1/tenants/ID/usage the command shows.
type usageBudgets struct {
	Budgets            []budget.Status `json:"budgets"`
	BudgetsUnavailable string          `json:"budgets_unavailable"`
}

func usageCommand(args []string, stdout, stderr io.Writer) int {
	fs := newFlags("usage", stderr)
	c := adminFlags(fs)
	tenant := fs.String("tenant", "", "the tenant whose statement to print (required)")
	period := fs.String("period", "day", "the calendar period (UTC): hour, day or month")
	at := fs.String("at", "", "a date such as 2026-12-06, or an RFC 3339 time, inside the period (default: now)")
	if _, ok := parseAdmin(fs, c, args, 0, stderr); !ok {
		return exitUsage
	}
	if *tenant == "" {
		fmt.Fprintln(stderr, "egressgw usage: --tenant is required")
		return exitUsage
	}
	q := url.Values{"period": {*period}}
	if *at != "" {
		q.Set("at", *at)
	}
	tenantPath := "/v1/tenants/" + url.PathEscape(*tenant)
	data, err := c.call(http.MethodGet, tenantPath+"/statement?"+q.Encode(), nil)
	return c.finish("usage", data, err, stdout, stderr, func(data []byte) error {
		var st budget.Statement
		if err := json.Unmarshal(data, &st); err != nil {
			return fmt.Errorf("the reply of %s is not a statement: %w", c.base, err)
		}
		if st.Tenant != *tenant {
			return fmt.Errorf("the reply of %s is not a statement of tenant %q: it names %q", c.base, *tenant, st.Tenant)
		}
		// Budgets stand where they stand now, whatever period was asked.
		data, err := c.call(http.MethodGet, tenantPath+"/usage", nil)
		if err != nil {
			return err
		}
		var u usageBudgets
		if err := json.Unmarshal(data, &u); err != nil {
			return fmt.Errorf("the reply of %s is not a tenant's usage: %w", c.base, err)
		}
		if u.BudgetsUnavailable != "" {
			return fmt.Errorf("the statement was read but not the budgets: %s", u.BudgetsUnavailable)
		}
		return printStatement(stdout, st, u.Budgets, time.Now())
	})
}

// printStatement writes the statement as a table per connector with a
// total line, then the tenant's budgets.
func printStatement(w io.Writer, st budget.Statement, budgets []budget.Status, now time.Time) error {
	fmt.Fprintf(w, "tenant %s, %s from %s to %s (UTC)\n\n", st.Tenant, st.Period,
		st.Start.UTC().Format(time.RFC3339), st.End.UTC().Format(time.RFC3339))
	tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "CONNECTOR\tREQUESTS\tBYTES UP\tBYTES DOWN\tCOST")
	row := func(name string, u budget.Usage) {
		fmt.Fprintf(tw, "%s\t%d\t%s\t%s\t%s\n", name, u.Requests, formatBytes(u.Egress), formatBytes(u.Ingress), formatCost(u.Cost, st.Currency))
	}
	for _, l := range st.Lines {
		name := "(rules and grants)"
		if l.Connector != "" {
			name = cell(l.Connector, 40)
			if l.Version > 0 {
				name += "@" + strconv.Itoa(l.Version)
			}
		}
		row(name, l.Usage)
	}
	row("TOTAL", st.Total)
	if err := tw.Flush(); err != nil {
		return err
	}
	if len(budgets) == 0 {
		_, err := fmt.Fprintln(w, "\nno budgets")
		return err
	}
	fmt.Fprintln(w)
	tw = tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "BUDGET\tPERIOD\tREQUESTS\tEGRESS\tINGRESS\tCOST\tSTATE\tRESET")
	for _, b := range budgets {
		state := "ok"
		if b.Exhausted {
			state = "exhausted"
		}
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s (in %s)\n", cell(b.Name, 40), b.Period,
			usedOf(b.Limit.Requests > 0, strconv.FormatInt(b.Used.Requests, 10), strconv.FormatInt(b.Limit.Requests, 10)),
			usedOf(b.Limit.Egress > 0, formatBytes(b.Used.Egress), formatBytes(b.Limit.Egress)),
			usedOf(b.Limit.Ingress > 0, formatBytes(b.Used.Ingress), formatBytes(b.Limit.Ingress)),
			usedOf(b.Limit.Cost > 0, formatCost(b.Used.Cost, ""), formatCost(b.Limit.Cost, st.Currency)),
			state, b.Reset.UTC().Format(time.RFC3339), untilReset(b.Reset, now))
	}
	return tw.Flush()
}

// usedOf is "used/limit" for a limited dimension, "-" for one without a
// limit.
func usedOf(limited bool, used, limit string) string {
	if !limited {
		return "-"
	}
	return used + "/" + limit
}

// formatBytes is n in IEC units, exact below 1 KiB.
func formatBytes(n int64) string {
	const unit = 1024
	if n < unit {
		return strconv.FormatInt(n, 10) + " B"
	}
	value, prefix := float64(n)/unit, 0
	for value >= unit && prefix < 5 {
		value /= unit
		prefix++
	}
	return strconv.FormatFloat(value, 'f', 1, 64) + " " + "KMGTPE"[prefix:prefix+1] + "iB"
}

// formatCost keeps four decimals: prices per request are fractions of a
// cent.
func formatCost(c float64, currency string) string {
	return strings.TrimSpace(strconv.FormatFloat(c, 'f', 4, 64) + " " + currency)
}

// untilReset is how long until reset, to the minute.
func untilReset(reset, now time.Time) string {
	d := reset.Sub(now).Round(time.Minute)
	if d <= 0 {
		return "0m"
	}
	return strings.TrimSuffix(d.String(), "0s")
}
