package redislock

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"net"
	"runtime"
	"sync"
	"time"
	"weak"

	"github.com/redis/go-redis/v9"
)

// Limits of one Redis reply, enforced on the connection before go-redis reads
// (and allocates for) it: go-redis allocates a bulk string or an array at the
// length the server announces, so a lying server could make it allocate
// gigabytes or panic (makeslice) with one header line.
const (
	// MaxReplyBytes caps the bulk strings of one reply, together.
	MaxReplyBytes = 16 << 20
	// MaxReplyElements caps the array, set, map and push elements of one
	// reply, nested ones included (a map entry counts two).
	MaxReplyElements = 1 << 20
	// maxLineBytes caps a simple string, error, number or length line.
	maxLineBytes = 64 << 10
)

// ErrBadReply is a Redis reply refused before it was read: a length over the
// limits above, or bytes that are not RESP. The connection is dropped.
var ErrBadReply = errors.New("redislock: redis reply refused")

// Protect makes rdb safe against a lying or broken Redis server, for every
// store of this package and everything else that uses rdb: replies over
// MaxReplyBytes or MaxReplyElements (or not RESP) fail with ErrBadReply
// before go-redis allocates for them, and a panic inside go-redis becomes an
// error of the call. Every constructor of this package calls it (once per
// client), so call it yourself only to protect rdb before its first command:
// connections opened before Protect are not checked. A *redis.ClusterClient
// or *redis.Ring protects the node clients it creates from then on. Give the
// stores a client of their own if the same client must read larger replies.
func Protect(rdb any) {
	switch c := rdb.(type) {
	case *redis.Client:
		if firstTime(c) {
			c.AddHook(guardHook{})
		}
	case *redis.ClusterClient:
		if firstTime(c) {
			c.AddHook(guardHook{})
			c.OnNewNode(func(n *redis.Client) { Protect(n) })
		}
	case *redis.Ring:
		if firstTime(c) {
			c.AddHook(guardHook{})
			c.OnNewNode(func(n *redis.Client) { Protect(n) })
		}
	case interface{ AddHook(redis.Hook) }:
		c.AddHook(guardHook{}) // no identity to remember: the hook is idempotent
	}
}

var protected sync.Map // weak.Pointer of a client -> struct{}

// firstTime reports whether p is seen for the first time; the entry goes
// when p is collected.
func firstTime[T any](p *T) bool {
	wp := weak.Make(p)
	if _, seen := protected.LoadOrStore(wp, struct{}{}); seen {
		return false
	}
	runtime.AddCleanup(p, func(wp weak.Pointer[T]) { protected.Delete(wp) }, wp)
	return true
}

// guardHook checks every reply on the connection and turns panics of
// go-redis into errors.
type guardHook struct{}

func (guardHook) DialHook(next redis.DialHook) redis.DialHook {
	return func(ctx context.Context, network, addr string) (net.Conn, error) {
		conn, err := next(ctx, network, addr)
		if err != nil {
			return nil, err
		}
		if _, ok := conn.(*guardedConn); ok {
			return conn, nil
		}
		return &guardedConn{Conn: conn}, nil
	}
}

func (guardHook) ProcessHook(next redis.ProcessHook) redis.ProcessHook {
	return func(ctx context.Context, cmd redis.Cmder) (err error) {
		defer recoverInto(&err)
		return next(ctx, cmd)
	}
}

func (guardHook) ProcessPipelineHook(next redis.ProcessPipelineHook) redis.ProcessPipelineHook {
	return func(ctx context.Context, cmds []redis.Cmder) (err error) {
		defer recoverInto(&err)
		return next(ctx, cmds)
	}
}

// recoverInto turns a panic into *err.
func recoverInto(err *error) {
	if r := recover(); r != nil {
		*err = fmt.Errorf("%w: redis client panicked: %v", ErrBadReply, r)
	}
}

// guardedConn checks the RESP stream it reads before go-redis sees a byte.
type guardedConn struct {
	net.Conn
	mu sync.Mutex // go-redis reads a connection from one goroutine at a time; this is for -race's sake
	g  respGuard
}

func (c *guardedConn) Read(p []byte) (int, error) {
	n, err := c.Conn.Read(p)
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.g.err != nil {
		return 0, c.g.err
	}
	if n > 0 {
		if ferr := c.g.feed(p[:n]); ferr != nil {
			_ = c.Close()
			return 0, ferr
		}
	}
	return n, err
}

// respGuard follows a RESP2/RESP3 stream byte by byte and refuses a reply
// whose announced lengths pass the limits.
type respGuard struct {
	state   int // stType, stLine, stLength, stBulk
	agg     bool
	attr    bool  // the aggregate being announced is an attribute (not an element of its parent)
	mapLike bool  // map or attribute: two elements per entry
	neg     bool  // a negative length: a null
	digits  int   // digits of the length read so far
	num     int64 // the length read so far
	line    int   // bytes of the current line
	skip    int64 // bulk bytes (and CRLF) left
	open    []openAgg
	bytes   int64 // bulk bytes announced in the current reply
	elems   int64 // elements announced in the current reply
	err     error
}

type openAgg struct {
	left int64
	attr bool
}

const (
	stType = iota
	stLine
	stLength
	stBulk
)

func (g *respGuard) fail(format string, args ...any) error {
	g.err = fmt.Errorf("%w: "+format, append([]any{ErrBadReply}, args...)...)
	return g.err
}

func (g *respGuard) feed(p []byte) error {
	for i := 0; i < len(p); {
		switch g.state {
		case stBulk:
			n := min(int64(len(p)-i), g.skip)
			i += int(n)
			g.skip -= n
			if g.skip == 0 {
				g.state = stType
				g.done()
			}
		case stLine:
			nl := bytes.IndexByte(p[i:], '\n')
			if nl < 0 {
				g.line += len(p) - i
				i = len(p)
			} else {
				g.line += nl + 1
				i += nl + 1
				g.state = stType
				g.done()
			}
			if g.line > maxLineBytes {
				return g.fail("a line of more than %d bytes", maxLineBytes)
			}
		case stType:
			c := p[i]
			i++
			g.line, g.num, g.digits, g.neg = 0, 0, 0, false
			switch c {
			case '+', '-', ':', ',', '#', '_', '(':
				g.state = stLine
			case '$', '!', '=':
				g.state, g.agg = stLength, false
			case '*', '~', '>':
				g.state, g.agg, g.mapLike, g.attr = stLength, true, false, false
			case '%':
				g.state, g.agg, g.mapLike, g.attr = stLength, true, true, false
			case '|':
				g.state, g.agg, g.mapLike, g.attr = stLength, true, true, true
			default:
				return g.fail("type byte 0x%02x", c)
			}
		case stLength:
			c := p[i]
			i++
			switch {
			case c == '-' && g.digits == 0 && !g.neg:
				g.neg = true
			case c >= '0' && c <= '9':
				g.digits++
				if g.digits > 12 { // 10^12: far past any limit, far from overflowing
					return g.fail("a length of more than 12 digits")
				}
				g.num = g.num*10 + int64(c-'0')
			case c == '\r':
			case c == '\n':
				if err := g.length(); err != nil {
					return err
				}
			default:
				return g.fail("a length holding 0x%02x", c)
			}
		}
	}
	return nil
}

// length acts on a complete length line.
func (g *respGuard) length() error {
	g.state = stType
	switch {
	case g.neg && g.num != 1:
		return g.fail("a length of -%d", g.num) // go-redis would allocate at it
	case g.neg || g.num == 0 && g.agg:
		g.done() // a null, or an empty aggregate: a complete value
		return nil
	case !g.agg:
		if g.bytes+g.num > MaxReplyBytes {
			return g.fail("bulk strings of %d bytes in one reply (limit %d)", g.bytes+g.num, MaxReplyBytes)
		}
		g.bytes += g.num
		g.skip, g.state = g.num+2, stBulk
		return nil
	}
	n := g.num
	if g.mapLike {
		n *= 2
	}
	if g.elems+n > MaxReplyElements {
		return g.fail("%d elements in one reply (limit %d)", g.elems+n, MaxReplyElements)
	}
	g.elems += n
	g.open = append(g.open, openAgg{left: n, attr: g.attr})
	return nil
}

// done counts a complete value as an element of the aggregate it is in,
// closing the aggregates it completes; a complete top-level reply resets the
// reply's budget.
func (g *respGuard) done() {
	for len(g.open) > 0 {
		top := &g.open[len(g.open)-1]
		top.left--
		if top.left > 0 {
			return
		}
		attr := top.attr
		g.open = g.open[:len(g.open)-1]
		if attr {
			return // an attribute precedes a value; it is not one itself
		}
	}
	g.bytes, g.elems = 0, 0
}

// store is what every Redis store of this package is built on: a protected
// client and a bound per call. A new store embeds one made by newStore and
// makes each Redis call through call, so it gets the reply limits, the panic
// guard and the bound by construction.
type store struct {
	rdb     redis.UniversalClient
	timeout time.Duration // bound of one call; options may change it before use
}

// newStore protects rdb (see Protect) and returns a store bounding each call
// by timeout.
func newStore(rdb redis.UniversalClient, timeout time.Duration) store {
	if rdb != nil {
		Protect(rdb)
	}
	return store{rdb: rdb, timeout: timeout}
}

// call runs fn under the store's bound (see bounded): it returns by then
// whatever go-redis does with contexts, and a panic in fn is an error.
func (s *store) call(ctx context.Context, fn func(ctx context.Context) error) error {
	return bounded(ctx, s.timeout, fn, nil)
}
