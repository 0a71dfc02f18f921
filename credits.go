package quotastack

import (
	"bytes"
	"context"
	"encoding/json"
	"net/http"
	"time"
)

// WalletPriority is the priority of wallet blocks; PlanPriority the default
// priority of plan credit blocks.
const (
	WalletPriority = 0
	PlanPriority   = 10
)

// Block is one immutable credit grant and what remains of it, in millicredits.
type Block struct {
	ID              string     `json:"id"`
	OriginalAmount  int64      `json:"original_amount"`
	RemainingAmount int64      `json:"remaining_amount"`
	Priority        int        `json:"priority"`
	ExpiresAt       *time.Time `json:"expires_at"` // nil: never expires
	Source          string     `json:"source"`
	Metadata        Metadata   `json:"metadata,omitempty"`
	CreatedAt       time.Time  `json:"created_at"`
}

// Metadata is a block's free-form metadata: any JSON value by key. Numbers
// decode as json.Number (never float64), objects as map[string]any, arrays as
// []any. The SDK's own lookups (order_id, plan_type, source) use Get, which
// reads string values only.
type Metadata map[string]any

// Get returns the value of key when it is a JSON string, and "" otherwise.
func (m Metadata) Get(key string) string {
	s, _ := m[key].(string)
	return s
}

// UnmarshalJSON decodes any JSON object, keeping numbers as json.Number.
func (m *Metadata) UnmarshalJSON(b []byte) error {
	if bytes.Equal(bytes.TrimSpace(b), []byte("null")) {
		*m = nil
		return nil
	}
	d := json.NewDecoder(bytes.NewReader(b))
	d.UseNumber()
	var out map[string]any
	if err := d.Decode(&out); err != nil {
		return err
	}
	*m = out
	return nil
}

// IsWallet reports whether b is wallet credit: priority 0 and no expiry.
func (b Block) IsWallet() bool { return b.Priority == WalletPriority && b.ExpiresAt == nil }

// IsPlan reports whether b looks like plan credit: a positive priority and an expiry.
func (b Block) IsPlan() bool { return b.Priority > WalletPriority && b.ExpiresAt != nil }

// Credits is a customer's credit account (GET /v1/{c}/credits), in
// millicredits: its balances and, from BalanceWithBlocks, its live blocks.
type Credits struct {
	CustomerID         string `json:"customer_id"`
	ExternalCustomerID string `json:"external_customer_id"`
	Balance            int64  `json:"balance"`
	ReservedBalance    int64  `json:"reserved_balance"`
	EffectiveBalance   int64  `json:"effective_balance"` // Balance − ReservedBalance
	LifetimeEarned     int64  `json:"lifetime_earned"`
	// Version is bumped on every balance change; 0 if the server doesn't send it.
	Version int64 `json:"version"`
	// Blocks is set only by BalanceWithBlocks.
	Blocks []Block `json:"blocks,omitempty"`

	Meta ResponseMeta `json:"-"`
}

// WalletBlocks returns the wallet blocks (priority 0, no expiry).
func (b *Credits) WalletBlocks() []Block { return b.filter(Block.IsWallet) }

// PlanBlocks returns the plan blocks (positive priority with an expiry).
func (b *Credits) PlanBlocks() []Block { return b.filter(Block.IsPlan) }

// WalletMC sums the remaining millicredits of the wallet blocks.
func (b *Credits) WalletMC() int64 { return SumRemaining(b.WalletBlocks()) }

// PlanMC sums the remaining millicredits of the plan blocks.
func (b *Credits) PlanMC() int64 { return SumRemaining(b.PlanBlocks()) }

func (b *Credits) filter(keep func(Block) bool) []Block {
	var out []Block
	for _, blk := range b.Blocks {
		if keep(blk) {
			out = append(out, blk)
		}
	}
	return out
}

// SumRemaining adds up the remaining millicredits of blocks.
func SumRemaining(blocks []Block) int64 {
	var sum int64
	for _, b := range blocks {
		sum += b.RemainingAmount
	}
	return sum
}

// Balance returns the customer's balances without the blocks.
func (c *Client) Balance(ctx context.Context, customer Customer, opts ...CallOption) (*Credits, error) {
	return c.balance(ctx, customer, false, opts)
}

// BalanceWithBlocks returns the customer's balances and live credit blocks,
// for WalletMC, PlanMC and the block filters.
func (c *Client) BalanceWithBlocks(ctx context.Context, customer Customer, opts ...CallOption) (*Credits, error) {
	return c.balance(ctx, customer, true, opts)
}

// DefaultMaxBlocksBodyBytes caps the body of a balance with its blocks: a
// block is about 200 bytes of JSON, so 16 MiB is some 80,000 blocks, where
// the general cap (1 MiB) would stop at about 5,300.
const DefaultMaxBlocksBodyBytes = 16 << 20

// WithMaxBlocksBodyBytes caps how much of a balance-with-blocks response is
// read (default DefaultMaxBlocksBodyBytes, never below WithMaxBodyBytes's
// cap); the decoded blocks are bounded by it too.
func WithMaxBlocksBodyBytes(n int64) Option { return func(c *config) { c.maxBlocksBody = n } }

// bodyCap is the body cap of a call: the general one, or the larger one of
// the block list.
func (c *Client) bodyCap(largeBody bool) int64 {
	if largeBody {
		limit := c.cfg.maxBlocksBody
		if limit == 0 {
			limit = DefaultMaxBlocksBodyBytes
		}
		return max(limit, c.cfg.maxBodyBytes)
	}
	return c.cfg.maxBodyBytes
}

func withLargeBody() CallOption { return func(cc *callConfig) { cc.largeBody = true } }

func (c *Client) balance(ctx context.Context, customer Customer, blocks bool, opts []CallOption) (*Credits, error) {
	if err := customer.validate(); err != nil {
		return nil, err
	}
	q := ""
	if blocks {
		q = "include_blocks=true"
		opts = append(opts[:len(opts):len(opts)], withLargeBody())
	}
	var out Credits
	meta, err := c.do(ctx, http.MethodGet, customer.path()+"/credits", q, nil, &out, opts)
	if err != nil {
		return nil, err
	}
	out.Meta = *meta
	return &out, nil
}
