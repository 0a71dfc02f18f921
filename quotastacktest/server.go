package quotastacktest

import (
	"context"
	"crypto/sha256"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"strconv"
	"sync"
	"sync/atomic"
	"testing"
	"time"
)

// maxBodyBytes caps a request body.
const maxBodyBytes = 1 << 20

// Server is an in-memory QuotaStack serving the HTTP contract on loopback. All its methods
// are safe for concurrent use, with each other and with the requests it serves.
type Server struct {
	// URL is the base URL, e.g. "http://127.0.0.1:41234", without a trailing slash or /v1.
	URL string
	// APIKey is the only key the server accepts in X-API-Key.
	APIKey string

	ts     *httptest.Server
	clock  Clock
	st     *state
	idem   *idemStore
	faults faultState
	limit  rateLimiter

	actions actionNotes // allowed actions the SDK under test reported (NoteAllowed)

	sparse   atomic.Bool  // answers without the optional members (SetSparseAnswers)
	execThen atomic.Int64 // status answered after every first execution of a POST (SetExecuteThenStatus)

	reqSeq   atomic.Int64
	conns    atomic.Int64
	closed   chan struct{}
	closeOne sync.Once

	logMu      sync.Mutex
	log        []RequestRecord // a ring of at most logLimit records; log[logStart] is the oldest
	logStart   int
	logLimit   int
	logDropped int64
}

type config struct {
	apiKey    string
	clock     Clock
	burnOrder BurnOrder
	rateN     int
	ratePer   time.Duration
	addr      string
	async     *AsyncUsage
	sparse    bool
	execThen  int
	logLimit  int
	idemLimit int
	histLimit int
}

// The default bounds of what the server remembers (see WithRequestLogLimit and
// WithIdempotencyLimit).
const (
	DefaultRequestLogLimit  = 100_000
	DefaultIdempotencyLimit = 50_000
)

// WithRequestLogLimit keeps the last n requests in the log that Requests returns (default
// DefaultRequestLogLimit; n <= 0 keeps the default): older records are forgotten, counted by
// RequestsForgotten. The log costs O(1) per request and at most n records of memory.
func WithRequestLogLimit(n int) Option { return func(c *config) { c.logLimit = n } }

// WithIdempotencyLimit keeps the responses of at most n Idempotency-Keys (default
// DefaultIdempotencyLimit; n <= 0 keeps the default). Expired keys (24 h) are forgotten
// first; past n, the oldest finished key is forgotten early, and a retry with it executes
// again, as on a server that lost it (CheckInvariants then reports a usage key executed twice
// within 24 h). Size n above the keys a test replays. Keys in flight are never forgotten.
func WithIdempotencyLimit(n int) Option { return func(c *config) { c.idemLimit = n } }

// Option configures a Server.
type Option func(*config)

// WithAPIKey sets the API key the server accepts (default "qs_test_fake_" plus random hex).
func WithAPIKey(key string) Option { return func(c *config) { c.apiKey = key } }

// WithClock sets the clock behind expiry, TTLs, idempotency retention and rate limiting
// (default the wall clock in UTC): pass a ManualClock's Now, as with the SDK's
// own WithClock options (plan, autobuy, webhook), which take the same func.
func WithClock(now func() time.Time) Option { return func(c *config) { c.clock = clockFunc(now) } }

// WithBurnOrder sets the initial burn order (default BurnOrderPriorityDesc).
func WithBurnOrder(o BurnOrder) Option { return func(c *config) { c.burnOrder = o } }

// WithRateLimit admits at most n requests in any window of length per, for the one API key
// (all endpoints share it; a 429 is not counted). Over it the server answers 429 rate-limited
// with Retry-After: the whole seconds until the oldest admitted request leaves the window, so
// a request sent after waiting that long is admitted unless another took the slot first.
// n <= 0 leaves it off. WithDocumentedRateLimit is the docs' 100 per 60 s.
func WithRateLimit(n int, per time.Duration) Option {
	return func(c *config) { c.rateN, c.ratePer = n, per }
}

// WithAddr makes the server listen on addr (e.g. "127.0.0.1:8787") instead of a random
// loopback port. NewServer panics if it cannot listen there.
func WithAddr(addr string) Option { return func(c *config) { c.addr = addr } }

// NewServer starts a fake QuotaStack on 127.0.0.1 and returns it; call Close when done.
func NewServer(opts ...Option) *Server {
	cfg := config{clock: wallClock{}}
	for _, o := range opts {
		o(&cfg)
	}
	if cfg.apiKey == "" {
		cfg.apiKey = "qs_test_fake_" + randomHex(12)
	}
	s := &Server{
		APIKey: cfg.apiKey,
		clock:  cfg.clock,
		st:     newState(cfg.burnOrder),
		idem:   newIdemStore(cfg.idemLimit),
		closed: make(chan struct{}),
	}
	s.logLimit = cfg.logLimit
	if s.logLimit <= 0 {
		s.logLimit = DefaultRequestLogLimit
	}
	s.st.async = cfg.async
	s.st.histLimit = cfg.histLimit
	if s.st.histLimit <= 0 {
		s.st.histLimit = DefaultHistoryLimit
	}
	s.sparse.Store(cfg.sparse)
	s.execThen.Store(int64(cfg.execThen))
	s.limit.set(cfg.rateN, cfg.ratePer)
	s.ts = httptest.NewUnstartedServer(s)
	if cfg.addr != "" {
		l, err := (&net.ListenConfig{}).Listen(context.Background(), "tcp", cfg.addr)
		if err != nil {
			panic("quotastacktest: listen on " + cfg.addr + ": " + err.Error())
		}
		_ = s.ts.Listener.Close()
		s.ts.Listener = l
	}
	s.ts.Config.ConnState = func(_ net.Conn, st http.ConnState) {
		if st == http.StateNew {
			s.conns.Add(1)
		}
	}
	s.ts.Start()
	s.URL = s.ts.URL
	return s
}

// Start is NewServer for tests: it registers Close with t.Cleanup.
func Start(t testing.TB, opts ...Option) *Server {
	t.Helper()
	s := NewServer(opts...)
	t.Cleanup(s.Close)
	return s
}

// Close stops the server, cutting short injected latency and idempotency waits, and blocks
// until the requests in flight have finished. It is safe to call more than once.
func (s *Server) Close() {
	s.closeOne.Do(func() {
		close(s.closed)
		s.ts.Close()
	})
}

// Now returns the server clock's current time.
func (s *Server) Now() time.Time { return s.clock.Now().UTC() }

// SetBurnOrder switches the burn order for the debits and holds that follow.
func (s *Server) SetBurnOrder(o BurnOrder) {
	s.st.mu.Lock()
	s.st.burnOrder = o
	s.st.mu.Unlock()
}

// SetRateLimit sets the rate limit to n requests in any window of length per (see
// WithRateLimit), forgetting the requests admitted so far; n <= 0 turns it off.
func (s *Server) SetRateLimit(n int, per time.Duration) { s.limit.set(n, per) }

// RateLimit returns the limit's requests and window; n is 0 when rate limiting is off.
func (s *Server) RateLimit() (n int, per time.Duration) {
	s.limit.mu.Lock()
	defer s.limit.mu.Unlock()
	return s.limit.n, s.limit.per
}

// ConnectionsOpened returns how many TCP connections the server has accepted.
func (s *Server) ConnectionsOpened() int64 { return s.conns.Load() }

// ServeHTTP runs one request through the pipeline: due asynchronous usage events, request id,
// injected faults and latency, auth, rate limit, routing, idempotency, execution, then the
// response (or a 5xx in its place) or a dropped connection.
func (s *Server) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	now := s.Now()
	s.st.drainIfPending(now)
	path := r.URL.EscapedPath()
	w.Header().Set("X-Request-Id", "req_"+strconv.FormatInt(s.reqSeq.Add(1), 10))
	rec := RequestRecord{
		Method: r.Method, Path: path, IdempotencyKey: r.Header.Get("Idempotency-Key"), Time: now,
	}

	f := s.faults.pick(r.Method, path)
	if f.latency > 0 && !s.sleep(r, f.latency) {
		return
	}
	var out outcome
	if f.status != 0 {
		rec.Fault = "status"
		out.resp = faultResponse(f, path)
	} else {
		out = s.handle(r, path)
		s.st.foldIfFull()
		if out.rateLimited {
			rec.Fault = "ratelimit"
		}
		if !f.drop && out.resp.status != 0 {
			if st := s.executeThen(f, out); st != 0 {
				rec.Fault = "execute-then-status"
				out = outcome{resp: faultResponse(faultPlan{status: st}, path)}
			}
		}
	}
	rec.Status, rec.Replayed = out.resp.status, out.replayed
	if f.drop && out.resp.status != 0 {
		rec.Fault = "drop"
		s.appendLog(rec)
		dropConnection(w)
		return
	}
	if out.resp.status == 0 { // the client went away while we waited
		return
	}
	s.appendLog(rec)
	h := w.Header()
	if out.resp.contentType != "" {
		h.Set("Content-Type", out.resp.contentType)
	}
	if out.resp.retryAfter != "" {
		h.Set("Retry-After", out.resp.retryAfter)
	}
	if out.replayed {
		h.Set("X-Idempotent-Replayed", "true")
	}
	h.Set("Content-Length", strconv.Itoa(len(out.resp.body)))
	w.WriteHeader(out.resp.status)
	_, _ = w.Write(out.resp.body)
}

type outcome struct {
	resp        response
	replayed    bool
	rateLimited bool
	executed    bool // a POST or PATCH ran its handler (not a replay, not a conflict)
}

// executeThen returns the status to answer in place of an executed request's own answer:
// the scripted or random fault's, else the mode's for a first execution, else 0.
func (s *Server) executeThen(f faultPlan, out outcome) int {
	if f.executeThen != 0 {
		return f.executeThen
	}
	if st := int(s.execThen.Load()); st != 0 && out.executed {
		s.faults.countExecuteThen()
		return st
	}
	return 0
}

// handle authenticates, rate-limits, routes and executes one request (idempotently for POST).
func (s *Server) handle(r *http.Request, path string) outcome {
	if r.Header.Get("X-API-Key") != s.APIKey {
		p := newProblem(401, slugUnauthorized, "missing or unknown X-API-Key")
		return outcome{resp: problemResponse(p, path)}
	}
	if wait, ok := s.limit.take(s.Now()); !ok {
		p := newProblem(429, slugRateLimited, "over the rate limit")
		resp := problemResponse(p, path)
		resp.retryAfter = strconv.FormatInt(wait, 10)
		return outcome{resp: resp, rateLimited: true}
	}
	h, segs := route(r.Method, path)
	if h == nil {
		return outcome{resp: problemResponse(problemf(404, slugNotFound, "no route for %s %s", r.Method, path), path)}
	}
	body, err := io.ReadAll(http.MaxBytesReader(nil, r.Body, maxBodyBytes))
	if err != nil {
		return outcome{resp: problemResponse(invalid("body", "unreadable or larger than 1 MiB"), path)}
	}
	rq := &request{s: s, r: r, path: path, segs: segs, body: body}
	if r.Method != http.MethodPost && r.Method != http.MethodPatch {
		return outcome{resp: rq.run(h)}
	}
	key := r.Header.Get("Idempotency-Key")
	if key == "" {
		p := newProblem(400, slugIdemRequired, "POST and PATCH require an Idempotency-Key header")
		return outcome{resp: problemResponse(p, path)}
	}
	rq.idemKey = key
	// A digest, not the body itself: the store keeps one per key.
	sum := sha256.Sum256([]byte(r.Method + " " + path + "?" + r.URL.RawQuery + "\n" + string(body)))
	fingerprint := string(sum[:])
	executed := false
	resp, replayed, ok := s.idem.do(s, r, s.APIKey+"\x00"+key, fingerprint, func() response {
		executed = true
		return rq.run(h)
	})
	if !ok {
		return outcome{}
	}
	return outcome{resp: resp, replayed: replayed, executed: executed}
}

// sleep waits d unless the client goes away or the server closes; it reports whether to go on.
func (s *Server) sleep(r *http.Request, d time.Duration) bool {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-t.C:
		return true
	case <-r.Context().Done():
		return false
	case <-s.closed:
		return false
	}
}

func (s *Server) appendLog(rec RequestRecord) {
	s.logMu.Lock()
	if len(s.log) < s.logLimit {
		s.log = append(s.log, rec)
	} else {
		s.log[s.logStart] = rec
		s.logStart = (s.logStart + 1) % len(s.log)
		s.logDropped++
	}
	s.logMu.Unlock()
}

// dropConnection closes the client's connection without writing a byte.
func dropConnection(w http.ResponseWriter) {
	hj, ok := w.(http.Hijacker)
	if !ok {
		panic(http.ErrAbortHandler) // HTTP/2: abort the stream instead
	}
	conn, _, err := hj.Hijack()
	if err != nil {
		panic(http.ErrAbortHandler)
	}
	_ = conn.Close()
}
