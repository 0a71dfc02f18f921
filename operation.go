package quotastack

import (
	"context"
	"sync/atomic"
	"time"
)

// BeginOperation groups the client calls made with the returned context into
// one operation (a gate's check and record, say) with one deadline (ctx's, or
// the client's WithTimeout counted once from now) and one place in the rate
// budget: once it has sent a request, its other calls go ahead of new
// operations' first calls, and a new operation the budget can't serve in time
// is refused at once with ErrRateLimited. A ctx already in an operation is
// returned as is (its calls join it); there is nothing to cancel.
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

// OperationStarted marks the operation as continuing work already allowed
// (committing a lease's units, settling a held action), so that even its
// first call goes ahead of new operations'; use it with context.Background()
// in a background goroutine.
func OperationStarted() OperationOption {
	return func(c *operationConfig) { c.started = true }
}

// OperationTimeout sets the operation's deadline, counted from
// BeginOperation, when ctx has none; d <= 0 keeps the client's WithTimeout.
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
