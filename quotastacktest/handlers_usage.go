package quotastacktest

import (
	"encoding/json"
	"time"
)

// maxBatch is the most events one POST /v1/usage/batch takes.
const maxBatch = 100

type usageBody struct {
	CustomerID         string            `json:"customer_id"`
	ExternalCustomerID string            `json:"external_customer_id"`
	BillableMetricKey  string            `json:"billable_metric_key"`
	Units              *int64            `json:"units"`
	Metadata           map[string]string `json:"metadata"`
}

func (b *usageBody) validate() *problem {
	var errs []fieldError
	if (b.CustomerID == "") == (b.ExternalCustomerID == "") {
		msg := "exactly one of customer_id or external_customer_id is required"
		errs = append(errs, fieldError{"customer_id", msg}, fieldError{"external_customer_id", msg})
	}
	if b.BillableMetricKey == "" {
		errs = append(errs, fieldError{"billable_metric_key", "required"})
	}
	switch {
	case b.Units == nil:
		errs = append(errs, fieldError{"units", "required"})
	case *b.Units <= 0:
		errs = append(errs, fieldError{"units", "must be greater than 0"})
	}
	if len(errs) > 0 {
		return validation(errs...)
	}
	return nil
}

type usageJSON struct {
	ID                 string    `json:"id"`
	CustomerID         string    `json:"customer_id"`
	ExternalCustomerID string    `json:"external_customer_id"`
	BillableMetricKey  string    `json:"billable_metric_key"`
	Units              int64     `json:"units"`
	Cost               int64     `json:"cost"`
	BalanceAfter       int64     `json:"balance_after"`
	CreatedAt          time.Time `json:"created_at"`
}

// executeUsage prices and debits one validated event; the caller holds the state lock.
// balance_after is the account balance after the debit.
func (s *state) executeUsage(b *usageBody, idemKey string, batchIndex int, now time.Time) (usageJSON, *problem) {
	c, p := s.customerRef(b.CustomerID, b.ExternalCustomerID, false, now)
	if p != nil {
		return usageJSON{}, p
	}
	rl, p := s.activeRule(b.BillableMetricKey)
	if p != nil {
		return usageJSON{}, p
	}
	cost, p := price(rl, *b.Units)
	if p != nil {
		return usageJSON{}, p
	}
	parts, p := s.debit(c, rl, cost, now)
	if p != nil {
		return usageJSON{}, p
	}
	evt := newID("evt_")
	s.recordDebit(c, rl, "debit", evt, "", cost, 0, parts, idemKey, b.Metadata, now)
	s.recordUsage(c, usageRec{UsageRecord: UsageRecord{
		EventID: evt, MetricKey: rl.metricKey, IdempotencyKey: idemKey,
		Units: *b.Units, Cost: cost, Metadata: copyMeta(b.Metadata), Time: now,
	}, batchIndex: batchIndex}, now)
	return usageJSON{evt, c.id, c.externalID, rl.metricKey, *b.Units, cost, c.balance, now}, nil
}

// recordDebit appends the one ledger entry of a debit (kind "debit" or "commit").
func (s *state) recordDebit(c *customer, rl *rule, kind, evt, rsv string, cost, held int64, parts []LedgerPart, key string, meta map[string]string, now time.Time) {
	e := LedgerEntry{
		Kind: kind, Amount: -cost, Held: held, EventID: evt, ReservationID: rsv, MetricKey: rl.metricKey,
		IdempotencyKey: key, Metadata: copyMeta(meta), Time: now, Parts: parts,
	}
	if len(parts) > 0 {
		e.BlockID = parts[0].BlockID
	}
	s.record(c, ledgerRec{LedgerEntry: e, policy: rl.policy})
}

// recordUsage appends an executed usage event and files it under its plan order, if any.
func (s *state) recordUsage(c *customer, u usageRec, now time.Time) {
	u.CustomerID, u.ExternalCustomerID = c.id, c.externalID
	u.entry = s.lastEntry() // its debit entry, recorded just before
	c.notePlanDebit(u.UsageRecord, u.entry, now)
	c.usage = append(c.usage, s.usageBase+len(s.usage))
	s.usage = append(s.usage, u)
}

// POST /v1/usage
func handleUsage(rq *request) (int, any, *problem) {
	var body usageBody
	if p := decodeBody(rq.body, &body); p != nil {
		return 0, nil, p
	}
	if p := body.validate(); p != nil {
		return 0, nil, p
	}
	st := rq.s.st
	st.mu.Lock()
	defer st.mu.Unlock()
	if st.async != nil {
		st.acceptUsage(&body, rq.idemKey, -1, rq.now)
		return 202, nil, nil
	}
	out, p := st.executeUsage(&body, rq.idemKey, -1, rq.now)
	if p != nil {
		return 0, nil, p
	}
	return 200, out, nil
}

type batchResultJSON struct {
	Index  int        `json:"index"`
	Status int        `json:"status"`
	Event  *usageJSON `json:"event,omitempty"`
	Error  *problem   `json:"error,omitempty"`
}

// POST /v1/usage/batch: each event succeeds or fails on its own; the batch answers 200 (202
// with no body in the asynchronous mode).
func handleUsageBatch(rq *request) (int, any, *problem) {
	var body struct {
		Events []json.RawMessage `json:"events"`
	}
	if p := decodeBody(rq.body, &body); p != nil {
		return 0, nil, p
	}
	switch {
	case len(body.Events) == 0:
		return 0, nil, invalid("events", "at least one event is required")
	case len(body.Events) > maxBatch:
		return 0, nil, invalid("events", "at most 100 events per batch")
	}
	st := rq.s.st
	st.mu.Lock()
	defer st.mu.Unlock()
	if st.async != nil {
		rq.acceptBatch(body.Events)
		return 202, nil, nil
	}
	results := make([]batchResultJSON, len(body.Events))
	for i, raw := range body.Events {
		results[i].Index = i
		var ev usageBody
		p := decodeBody(raw, &ev)
		if p == nil {
			p = ev.validate()
		}
		var out usageJSON
		if p == nil {
			out, p = st.executeUsage(&ev, rq.idemKey, i, rq.now)
		}
		if p != nil {
			p.Instance = rq.path
			results[i].Status, results[i].Error = p.Status, p
			continue
		}
		results[i].Status, results[i].Event = 200, &out
	}
	return 200, struct {
		Results []batchResultJSON `json:"results"`
	}{results}, nil
}

// acceptBatch takes each event of a batch in the 202 mode: a malformed one is rejected with
// its 400 at once, the others are accepted one by one; the caller holds the state lock.
func (rq *request) acceptBatch(events []json.RawMessage) {
	st := rq.s.st
	for i, raw := range events {
		var ev usageBody
		p := decodeBody(raw, &ev)
		if p == nil {
			p = ev.validate()
		}
		if p != nil {
			st.reject(pendingUsage{body: ev, key: rq.idemKey, batchIndex: i, acceptedAt: rq.now}, p, rq.now)
			continue
		}
		st.acceptUsage(&ev, rq.idemKey, i, rq.now)
	}
}
