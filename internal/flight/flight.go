// Package flight coalesces concurrent calls with the same key into one
// execution whose result every caller shares (like x/sync/singleflight, but
// each caller waits under its own context).
package flight

import (
	"context"
	"fmt"
	"sync"
)

// Group runs at most one function per key at a time. The zero value is ready.
type Group[T any] struct {
	mu    sync.Mutex
	calls map[string]*call[T]
}

type call[T any] struct {
	done chan struct{}
	val  T
	err  error
}

// Do runs fn once for all callers that arrive while it runs under key, and
// returns its result to each; shared is true for callers that joined a run
// started by another. fn gets a context that is not cancelled when the
// caller who started it gives up; a caller whose ctx ends stops waiting
// (fn keeps running for the others).
func (g *Group[T]) Do(ctx context.Context, key string, fn func(context.Context) (T, error)) (v T, shared bool, err error) {
	g.mu.Lock()
	if g.calls == nil {
		g.calls = map[string]*call[T]{}
	}
	c, ok := g.calls[key]
	if !ok {
		c = &call[T]{done: make(chan struct{})}
		g.calls[key] = c
		go g.run(context.WithoutCancel(ctx), key, c, fn)
	}
	g.mu.Unlock()
	select {
	case <-c.done:
		return c.val, ok, c.err
	case <-ctx.Done():
		var zero T
		return zero, ok, ctx.Err()
	}
}

func (g *Group[T]) run(ctx context.Context, key string, c *call[T], fn func(context.Context) (T, error)) {
	defer func() {
		g.mu.Lock()
		delete(g.calls, key)
		g.mu.Unlock()
		close(c.done)
	}()
	defer func() {
		if r := recover(); r != nil {
			c.err = fmt.Errorf("flight: panic: %v", r)
		}
	}()
	c.val, c.err = fn(ctx)
}
