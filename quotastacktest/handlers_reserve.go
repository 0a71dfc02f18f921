package quotastacktest

import (
	"bytes"
	"time"
)

// Reservation TTLs in seconds (contract §5).
const (
	defaultTTLSeconds = 300
	maxTTLSeconds     = 3600
)

type reservationJSON struct {
	ID                 string    `json:"id"`
	Status             string    `json:"status"`
	CustomerID         string    `json:"customer_id"`
	ExternalCustomerID string    `json:"external_customer_id"`
	BillableMetricKey  string    `json:"billable_metric_key"`
	EstimatedUnits     int64     `json:"estimated_units"`
	ReservedAmount     int64     `json:"reserved_amount"`
	ExpiresAt          time.Time `json:"expires_at"`
	ActualUnits        *int64    `json:"actual_units,omitempty"`
	CommittedAmount    *int64    `json:"committed_amount,omitempty"`
	EventID            string    `json:"event_id,omitempty"`
}

func reservationView(rs *reservation) reservationJSON {
	return reservationJSON{
		ID: rs.id, Status: rs.status, CustomerID: rs.cust.id, ExternalCustomerID: rs.cust.externalID,
		BillableMetricKey: rs.metricKey, EstimatedUnits: rs.estimatedUnits, ReservedAmount: rs.reservedAmount,
		ExpiresAt: rs.expiresAt, ActualUnits: rs.actualUnits, CommittedAmount: rs.committed, EventID: rs.eventID,
	}
}

// POST /v1/reserve: holds the priced amount on eligible blocks; nothing is debited.
func handleReserve(rq *request) (int, any, *problem) {
	var body struct {
		CustomerID         string            `json:"customer_id"`
		ExternalCustomerID string            `json:"external_customer_id"`
		BillableMetricKey  string            `json:"billable_metric_key"`
		EstimatedUnits     *int64            `json:"estimated_units"`
		TTLSeconds         int64             `json:"ttl_seconds"`
		Metadata           map[string]string `json:"metadata"`
	}
	if p := decodeBody(rq.body, &body); p != nil {
		return 0, nil, p
	}
	var errs []fieldError
	if (body.CustomerID == "") == (body.ExternalCustomerID == "") {
		msg := "exactly one of customer_id or external_customer_id is required"
		errs = append(errs, fieldError{"customer_id", msg}, fieldError{"external_customer_id", msg})
	}
	if body.BillableMetricKey == "" {
		errs = append(errs, fieldError{"billable_metric_key", "required"})
	}
	if body.EstimatedUnits == nil || *body.EstimatedUnits <= 0 {
		errs = append(errs, fieldError{"estimated_units", "must be greater than 0"})
	}
	ttl := body.TTLSeconds
	if ttl == 0 {
		ttl = defaultTTLSeconds
	}
	if ttl < 0 || ttl > maxTTLSeconds {
		errs = append(errs, fieldError{"ttl_seconds", "must be between 1 and 3600"})
	}
	if len(errs) > 0 {
		return 0, nil, validation(errs...)
	}
	st := rq.s.st
	st.mu.Lock()
	defer st.mu.Unlock()
	c, p := st.customerRef(body.CustomerID, body.ExternalCustomerID, false, rq.now)
	if p != nil {
		return 0, nil, p
	}
	rl, p := st.activeRule(body.BillableMetricKey)
	if p != nil {
		return 0, nil, p
	}
	cost, p := price(rl, *body.EstimatedUnits)
	if p != nil {
		return 0, nil, p
	}
	holds, p := st.placeHolds(c, rl, cost)
	if p != nil {
		return 0, nil, p
	}
	rs := &reservation{
		id: newID("rsv_"), status: statusActive, cust: c, metricKey: rl.metricKey, rule: rl,
		estimatedUnits: *body.EstimatedUnits, reservedAmount: cost, holds: holds, createdAt: rq.now,
		expiresAt: rq.now.Add(time.Duration(ttl) * time.Second), metadata: body.Metadata,
	}
	st.resv[rs.id] = rs
	c.reservations = append(c.reservations, rs)
	st.record(c, ledgerRec{LedgerEntry: LedgerEntry{
		Kind: "reserve", Held: cost, ReservationID: rs.id, MetricKey: rl.metricKey,
		IdempotencyKey: rq.idemKey, Metadata: copyMeta(body.Metadata), Time: rq.now,
	}})
	return 201, reservationView(rs), nil
}

// reservation finds the path's reservation after applying expiry; the caller holds
// the state lock.
func (rq *request) reservation(wantActive bool) (*reservation, *problem) {
	st := rq.s.st
	rs := st.resv[rq.segs[2]]
	if rs == nil {
		return nil, problemf(404, slugReservationNF, "no reservation %q", rq.segs[2])
	}
	st.refresh(rs.cust, rq.now)
	if wantActive && rs.status != statusActive {
		return nil, problemf(409, slugReservationActive, "reservation %s is %s", rs.id, rs.status)
	}
	return rs, nil
}

// GET /v1/reserve/{id}
func handleGetReservation(rq *request) (int, any, *problem) {
	st := rq.s.st
	st.mu.Lock()
	defer st.mu.Unlock()
	rs, p := rq.reservation(false)
	if p != nil {
		return 0, nil, p
	}
	return 200, reservationView(rs), nil
}

// POST /v1/reserve/{id}/commit: debits the actual cost (which may exceed the hold) from the
// eligible blocks and frees the hold. A 402 leaves the reservation active and unchanged.
func handleCommit(rq *request) (int, any, *problem) {
	var body struct {
		ActualUnits *int64 `json:"actual_units"`
	}
	if p := decodeBody(rq.body, &body); p != nil {
		return 0, nil, p
	}
	if body.ActualUnits == nil || *body.ActualUnits < 0 {
		return 0, nil, invalid("actual_units", "required, and not negative")
	}
	st := rq.s.st
	st.mu.Lock()
	defer st.mu.Unlock()
	rs, p := rq.reservation(true)
	if p != nil {
		return 0, nil, p
	}
	c := rs.cust
	cost, p := price(rs.rule, *body.ActualUnits)
	if p != nil {
		return 0, nil, p
	}
	saved := append([]hold(nil), rs.holds...)
	version := c.version
	freed := freeHolds(rs)
	parts, p := st.debit(c, rs.rule, cost, rq.now)
	if p != nil { // put the hold back as it was
		for _, h := range saved {
			if h.blk != nil {
				h.blk.held += h.amount
			}
		}
		rs.holds, c.reserved, c.version = saved, c.reserved+freed, version
		return 0, nil, p
	}
	evt := newID("evt_")
	rs.status, rs.actualUnits, rs.committed, rs.eventID = statusCommitted, body.ActualUnits, &cost, evt
	removeReservation(c, rs)
	st.recordDebit(c, rs.rule, "commit", evt, rs.id, cost, -freed, parts, rq.idemKey, rs.metadata, rq.now)
	st.recordUsage(c, usageRec{UsageRecord: UsageRecord{
		EventID: evt, MetricKey: rs.metricKey, IdempotencyKey: rq.idemKey, ReservationID: rs.id,
		Units: *body.ActualUnits, Cost: cost, Metadata: copyMeta(rs.metadata), Time: rq.now,
	}, batchIndex: -1}, rq.now)
	return 200, reservationView(rs), nil
}

// POST /v1/reserve/{id}/release: frees the whole hold. The body may be empty or {}.
func handleRelease(rq *request) (int, any, *problem) {
	if len(bytes.TrimSpace(rq.body)) > 0 {
		if p := decodeBody(rq.body, &struct{}{}); p != nil {
			return 0, nil, p
		}
	}
	st := rq.s.st
	st.mu.Lock()
	defer st.mu.Unlock()
	rs, p := rq.reservation(true)
	if p != nil {
		return 0, nil, p
	}
	freed := freeHolds(rs)
	rs.status = statusReleased
	removeReservation(rs.cust, rs)
	st.record(rs.cust, ledgerRec{LedgerEntry: LedgerEntry{
		Kind: "release", Held: -freed, ReservationID: rs.id, MetricKey: rs.metricKey,
		IdempotencyKey: rq.idemKey, Time: rq.now,
	}})
	return 200, reservationView(rs), nil
}

func removeReservation(c *customer, rs *reservation) {
	for i, r := range c.reservations {
		if r == rs {
			c.reservations = append(c.reservations[:i], c.reservations[i+1:]...)
			return
		}
	}
}
