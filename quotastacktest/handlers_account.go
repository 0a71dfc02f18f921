package quotastacktest

import (
	"strconv"
	"time"
)

type customerJSON struct {
	CustomerID         string    `json:"customer_id"`
	ExternalCustomerID string    `json:"external_customer_id"`
	DisplayName        string    `json:"display_name"`
	CreatedAt          time.Time `json:"created_at"`
}

func customerView(c *customer) customerJSON {
	return customerJSON{c.id, c.externalID, c.displayName, c.createdAt}
}

type blockJSON struct {
	ID              string            `json:"id"`
	OriginalAmount  int64             `json:"original_amount"`
	RemainingAmount int64             `json:"remaining_amount"`
	Priority        int               `json:"priority"`
	ExpiresAt       *time.Time        `json:"expires_at"`
	Source          string            `json:"source"`
	Metadata        map[string]string `json:"metadata"`
	CreatedAt       *time.Time        `json:"created_at,omitempty"` // nil in sparse answers
}

func blockView(b *block, sparse bool) blockJSON {
	v := blockJSON{b.id, b.original, b.remaining, b.priority, b.expiresAt, b.source, copyMeta(b.metadata), nil}
	if !sparse {
		t := b.createdAt
		v.CreatedAt = &t
	}
	return v
}

// POST /v1/customers
func handleCreateCustomer(rq *request) (int, any, *problem) {
	var body struct {
		ExternalID  string `json:"external_id"`
		DisplayName string `json:"display_name"`
	}
	if p := decodeBody(rq.body, &body); p != nil {
		return 0, nil, p
	}
	st := rq.s.st
	st.mu.Lock()
	defer st.mu.Unlock()
	c, p := st.createCustomer(body.ExternalID, body.DisplayName, rq.now)
	if p != nil {
		return 0, nil, p
	}
	return 201, customerView(c), nil
}

// GET /v1/customers/{id} and /v1/customer-by-external-id/{id}
func handleGetCustomer(rq *request) (int, any, *problem) {
	st := rq.s.st
	st.mu.Lock()
	defer st.mu.Unlock()
	c, p := rq.pathCustomer()
	if p != nil {
		return 0, nil, p
	}
	return 200, customerView(c), nil
}

type entitlementJSON struct {
	Allowed            bool   `json:"allowed"`
	CustomerID         string `json:"customer_id"`
	ExternalCustomerID string `json:"external_customer_id"`
	BillableMetricKey  string `json:"billable_metric_key"`
	Units              int64  `json:"units"`
	Balance            int64  `json:"balance"`
	ReservedBalance    int64  `json:"reserved_balance"`
	EffectiveBalance   int64  `json:"effective_balance"`
	EstimatedCost      int64  `json:"estimated_cost"`
	BalanceAfter       int64  `json:"balance_after"`
	SubscriptionStatus string `json:"subscription_status,omitempty"` // "" in sparse answers
	OveragePolicy      string `json:"overage_policy"`
}

// GET {c}/entitlements/{metric}?units=N: balance_after is the eligible effective balance
// minus the estimated cost; nothing is held or debited.
func handleEntitlement(rq *request) (int, any, *problem) {
	units := int64(1)
	if q := rq.r.URL.Query(); q.Has("units") {
		n, err := strconv.ParseInt(q.Get("units"), 10, 64)
		if err != nil || n <= 0 {
			return 0, nil, invalid("units", "must be an integer greater than 0")
		}
		units = n
	}
	st := rq.s.st
	st.mu.Lock()
	defer st.mu.Unlock()
	c, p := rq.pathCustomer()
	if p != nil {
		return 0, nil, p
	}
	rl, p := st.activeRule(rq.segs[4])
	if p != nil {
		return 0, nil, p
	}
	cost, p := price(rl, units)
	if p != nil {
		return 0, nil, p
	}
	_, eff := st.eligibleBalances(c, rl)
	after := eff - cost
	out := entitlementJSON{
		Allowed: after >= 0 || rl.policy != policyBlock, CustomerID: c.id, ExternalCustomerID: c.externalID,
		BillableMetricKey: rl.metricKey, Units: units, Balance: c.balance, ReservedBalance: c.reserved,
		EffectiveBalance: c.balance - c.reserved, EstimatedCost: cost, BalanceAfter: after, OveragePolicy: rl.policy,
	}
	if !rq.s.sparse.Load() {
		out.SubscriptionStatus = "active" // as in the docs' sample
	}
	return 200, out, nil
}

type creditsJSON struct {
	CustomerID         string       `json:"customer_id"`
	ExternalCustomerID string       `json:"external_customer_id"`
	Balance            int64        `json:"balance"`
	ReservedBalance    int64        `json:"reserved_balance"`
	EffectiveBalance   int64        `json:"effective_balance"`
	LifetimeEarned     *int64       `json:"lifetime_earned,omitempty"` // nil in sparse answers
	Version            *int64       `json:"version,omitempty"`         // nil in sparse answers
	Blocks             *[]blockJSON `json:"blocks,omitempty"`          // nil: not asked for
}

// GET {c}/credits[?include_blocks=true]: blocks are listed in burn order, the overdraft last.
func handleCredits(rq *request) (int, any, *problem) {
	include := false
	if v := rq.r.URL.Query().Get("include_blocks"); v != "" {
		b, err := strconv.ParseBool(v)
		if err != nil {
			return 0, nil, invalid("include_blocks", "must be true or false")
		}
		include = b
	}
	st := rq.s.st
	st.mu.Lock()
	defer st.mu.Unlock()
	c, p := rq.pathCustomer()
	if p != nil {
		return 0, nil, p
	}
	sparse := rq.s.sparse.Load()
	out := creditsJSON{
		CustomerID: c.id, ExternalCustomerID: c.externalID, Balance: c.balance, ReservedBalance: c.reserved,
		EffectiveBalance: c.balance - c.reserved,
	}
	if !sparse {
		earned, version := c.lifetimeEarned, c.version
		out.LifetimeEarned, out.Version = &earned, &version
	}
	if include {
		blocks := []blockJSON{} // "blocks": [] rather than absent when there are none
		for _, b := range st.listedBlocks(c) {
			blocks = append(blocks, blockView(b, sparse))
		}
		out.Blocks = &blocks
	}
	return 200, out, nil
}

type grantJSON struct {
	CustomerID         string    `json:"customer_id"`
	ExternalCustomerID string    `json:"external_customer_id"`
	Block              blockJSON `json:"block"`
	Balance            int64     `json:"balance"`
	EffectiveBalance   int64     `json:"effective_balance"`
}

// grantFields are the members shared by the two grant bodies.
type grantFields struct {
	Credits   *int64            `json:"credits"`
	Priority  int               `json:"priority"`
	ExpiresAt *string           `json:"expires_at"`
	Metadata  map[string]string `json:"metadata"`
}

func (g grantFields) toGrant(source string) (BlockSpec, []fieldError) {
	var errs []fieldError
	out := BlockSpec{Priority: g.Priority, Source: source, Metadata: g.Metadata}
	switch {
	case g.Credits == nil:
		errs = append(errs, fieldError{"credits", "required"})
	case *g.Credits <= 0:
		errs = append(errs, fieldError{"credits", "must be greater than 0"})
	default:
		out.Credits = *g.Credits
	}
	if g.ExpiresAt != nil {
		t, err := time.Parse(time.RFC3339, *g.ExpiresAt)
		if err != nil {
			errs = append(errs, fieldError{"expires_at", "must be an RFC 3339 time or null"})
		} else {
			t = t.UTC()
			out.ExpiresAt = &t
		}
	}
	return out, errs
}

func (rq *request) grant(c *customer, g BlockSpec) grantJSON {
	b := rq.s.st.addBlock(c, g, rq.now, rq.idemKey)
	return grantJSON{c.id, c.externalID, blockView(b, rq.s.sparse.Load()), c.balance, c.balance - c.reserved}
}

// POST /v1/topup/grant: an unknown external_customer_id creates the customer.
func handleTopup(rq *request) (int, any, *problem) {
	var body struct {
		CustomerID         string `json:"customer_id"`
		ExternalCustomerID string `json:"external_customer_id"`
		grantFields
		PricePaid         *int64 `json:"price_paid"`
		Currency          string `json:"currency"`
		PackageID         string `json:"package_id"`
		ExternalPaymentID string `json:"external_payment_id"`
	}
	if p := decodeBody(rq.body, &body); p != nil {
		return 0, nil, p
	}
	g, errs := body.toGrant("topup")
	if body.PricePaid != nil && *body.PricePaid < 0 {
		errs = append(errs, fieldError{"price_paid", "must not be negative"})
	}
	if (body.CustomerID == "") == (body.ExternalCustomerID == "") {
		msg := "exactly one of customer_id or external_customer_id is required"
		errs = append(errs, fieldError{"customer_id", msg}, fieldError{"external_customer_id", msg})
	}
	if len(errs) > 0 {
		return 0, nil, validation(errs...)
	}
	st := rq.s.st
	st.mu.Lock()
	defer st.mu.Unlock()
	c, p := st.customerRef(body.CustomerID, body.ExternalCustomerID, true, rq.now)
	if p != nil {
		return 0, nil, p
	}
	return 201, rq.grant(c, g), nil
}

// POST {c}/credits/grant: source defaults to "promotional".
func handleCreditGrant(rq *request) (int, any, *problem) {
	var body struct {
		grantFields
		Source string `json:"source"`
		Reason string `json:"reason"` // accepted, audit only
	}
	if p := decodeBody(rq.body, &body); p != nil {
		return 0, nil, p
	}
	if body.Source == "" {
		body.Source = "promotional"
	}
	g, errs := body.toGrant(body.Source)
	if len(errs) > 0 {
		return 0, nil, validation(errs...)
	}
	st := rq.s.st
	st.mu.Lock()
	defer st.mu.Unlock()
	c, p := rq.pathCustomer()
	if p != nil {
		return 0, nil, p
	}
	return 201, rq.grant(c, g), nil
}
