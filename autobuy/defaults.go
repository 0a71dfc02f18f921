package autobuy

import (
	"context"
	"log/slog"
	"sync"
)

// The process-wide defaults: every Gatekeeper of the process that is not
// given its own store shares these, created once (sync.OnceValue), so two
// Gatekeepers of one process never buy twice for one exhaustion. To add a
// default, add one OnceValue here and use it in New.
var (
	// defaultJournal is the purchase journal of Gatekeepers without WithJournal.
	defaultJournal = sync.OnceValue(func() *MemoryJournal {
		j := NewMemoryJournal(0)
		j.shared = true
		return j
	})
	// defaultLocker is the purchase lock of Gatekeepers without WithLocker.
	defaultLocker = sync.OnceValue(func() *LocalLocker { return NewLocalLocker() })
	// warnedLocal makes the "no shared store" warning once per process.
	warnedLocal sync.Once
)

// warnLocalStores logs once per process, through the first Gatekeeper built
// on an in-process journal or locker with a logger (WithLogger), what that
// covers and what it doesn't.
func warnLocalStores(log *slog.Logger) {
	warnedLocal.Do(func() {
		log.LogAttrs(context.Background(), slog.LevelWarn,
			"autobuy: purchases are journalled and locked in this process only (no WithJournal/WithLocker): "+
				"one plan per exhaustion holds within the process. Replicas don't see each other's purchases: they rely on "+
				"the server's idempotency keys (one order per exhaustion) and a re-check, which don't cover a topup or a "+
				"different plan between two replicas' purchases, nor a replica that dies after its debit (its purchase stays "+
				"half done when the wallet can't pay another plan). Replicas should share a Journal and a Locker "+
				"(autobuy/redislock, or your own on SQL)")
	})
}
