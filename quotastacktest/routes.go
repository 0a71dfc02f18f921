package quotastacktest

import (
	"net/http"
	"net/url"
	"strings"
	"time"
)

// request is one request on its way through a handler.
type request struct {
	s       *Server
	r       *http.Request
	path    string   // escaped, as received
	segs    []string // unescaped path segments
	body    []byte
	idemKey string
	now     time.Time
}

// handlerFunc executes a request: a status and a JSON value (nil: no body), or a problem.
type handlerFunc func(rq *request) (int, any, *problem)

func (rq *request) run(h handlerFunc) response {
	rq.now = rq.s.Now()
	status, v, p := h(rq)
	if p != nil {
		return problemResponse(p, rq.path)
	}
	if v == nil { // an answer without a body (202 of the asynchronous usage mode)
		return response{status: status}
	}
	return jsonResponse(status, v)
}

const (
	famByID       = "customers"
	famByExternal = "customer-by-external-id"
)

// route maps a method and escaped path to a handler. Segments are split on the escaped
// path and unescaped one by one, so an external id holding "/" or "%" stays one segment.
// An unknown path, or a known path with another method, has no handler (404 not-found).
func route(method, escapedPath string) (handlerFunc, []string) {
	raw := strings.Split(strings.TrimPrefix(escapedPath, "/"), "/")
	if len(raw) < 2 || raw[0] != "v1" {
		return nil, nil
	}
	segs := make([]string, len(raw))
	for i, r := range raw {
		u, err := url.PathUnescape(r)
		if err != nil || u == "" {
			return nil, nil
		}
		segs[i] = u
	}
	get, post := method == http.MethodGet, method == http.MethodPost
	n := len(segs)
	var h handlerFunc
	switch segs[1] {
	case "usage":
		switch {
		case n == 2 && post:
			h = handleUsage
		case n == 3 && post && segs[2] == "batch":
			h = handleUsageBatch
		}
	case "topup":
		if n == 3 && post && segs[2] == "grant" {
			h = handleTopup
		}
	case "reserve":
		switch {
		case n == 2 && post:
			h = handleReserve
		case n == 3 && get:
			h = handleGetReservation
		case n == 4 && post && segs[3] == "commit":
			h = handleCommit
		case n == 4 && post && segs[3] == "release":
			h = handleRelease
		}
	case "billable-metrics":
		switch {
		case n == 2 && post:
			h = handleCreateMetric
		case n == 2 && get:
			h = handleListMetrics
		case n == 3 && get:
			h = handleGetMetric
		}
	case "metering-rules":
		switch {
		case n == 2 && post:
			h = handleCreateRule
		case n == 2 && get:
			h = handleListRules
		case n == 3 && get:
			h = handleGetRule
		}
	case famByID, famByExternal:
		h = routeCustomer(segs, get, post)
	}
	return h, segs
}

func routeCustomer(segs []string, get, post bool) handlerFunc {
	switch n := len(segs); {
	case n == 2 && post && segs[1] == famByID:
		return handleCreateCustomer
	case n == 3 && get:
		return handleGetCustomer
	case n == 5 && get && segs[3] == "entitlements":
		return handleEntitlement
	case n == 4 && get && segs[3] == "credits":
		return handleCredits
	case n == 5 && post && segs[3] == "credits" && segs[4] == "grant":
		return handleCreditGrant
	}
	return nil
}

// pathCustomer resolves the {c} of a customer-scoped path; the caller holds the state lock.
func (rq *request) pathCustomer() (*customer, *problem) {
	st := rq.s.st
	var c *customer
	if rq.segs[1] == famByID {
		c = st.customers[rq.segs[2]]
		if c == nil {
			return nil, customerNotFound(rq.segs[2], "")
		}
	} else {
		c = st.byExternal[rq.segs[2]]
		if c == nil {
			return nil, customerNotFound("", rq.segs[2])
		}
	}
	st.refresh(c, rq.now)
	return c, nil
}
