package quotastack

import (
	"context"
	"sync/atomic"
	"time"
)

// BeginOperation groups the client calls made with the returned context (and
// contexts derived from it) into one operation, such as a gate's check and
// usage record. The operation has one deadline: ctx's, or, when ctx has none,
// the client's default timeout (WithTimeout) counted once from this call
// instead of once per call. And it has one place in the client's rate budget
// (LocalPacer): once it has sent a request, its remaining calls go ahead of
// the first calls of operations that have not, so what was started finishes,
// and a new operation the budget can't serve in time is refused at once with
// ErrRateLimited before it sends anything. Calls made without an operation
// are each an operation of one call. A ctx that already carries an operation
// is returned as it is (the calls join the outer operation; OperationStarted
// still marks it started). Nothing to cancel; safe for concurrent use.
func BeginOperation(ctx context.Context, opts ...OperationOption) context.Context {
	if op, ok := ctx.Value(operationKey{}).(*operation); ok {
		var oc operationConfig
		for _, o := range opts {
			o(&oc)
		}
		if oc.started {
			op.started.Store(true)
		}
		return ctx
	}
	op := &operation{begun: time.Now(), seq: nextSeq()}
	var oc operationConfig
	for _, o := range opts {
		o(&oc)
	}
	op.timeout = oc.timeout
	op.started.Store(oc.started)
	return context.WithValue(ctx, operationKey{}, op)
}

// OperationOption configures BeginOperation.
type OperationOption func(*operationConfig)

type operationConfig struct {
	timeout time.Duration
	started bool
}

// OperationStarted marks the operation as the continuation of work already
// begun, e.g. committing the usage of actions a lease has allowed, or
// settling a held action: its first call already goes ahead of new
// operations' first calls. Use it from a background goroutine with
// context.Background() for work that must not be starved by new requests.
func OperationStarted() OperationOption {
	return func(c *operationConfig) { c.started = true }
}

// OperationTimeout sets the operation's deadline, counted from
// BeginOperation, when ctx has none (instead of the client's WithTimeout).
// d <= 0 keeps the client's.
func OperationTimeout(d time.Duration) OperationOption {
	return func(c *operationConfig) { c.timeout = d }
}

type operationKey struct{}

// operation is the state shared by the calls of one BeginOperation.
type operation struct {
	begun   time.Time
	timeout time.Duration // 0: the client's
	seq     uint64        // its place among operations of the same deadline
	started atomic.Bool   // one of its calls has been sent (or OperationStarted)
}

var opSeq atomic.Uint64

func nextSeq() uint64 { return opSeq.Add(1) }

func operationOf(ctx context.Context) *operation {
	op, _ := ctx.Value(operationKey{}).(*operation)
	return op
}

// deadline is the operation's deadline when ctx has none.
func (op *operation) deadline(clientTimeout time.Duration) time.Time {
	d := op.timeout
	if d <= 0 {
		d = clientTimeout
	}
	return op.begun.Add(d)
}
