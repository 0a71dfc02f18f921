package redislock

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"math/rand/v2"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/quotastack/quotastack-go/autobuy"
)

// ChargeLog is an autobuy.ChargeLog on Redis: the record of charged events
// and of leases that replicas share (usually on the Redis of the Journal).
// Safe for concurrent use.
//
// Keys (P is the prefix, {c} the escaped customer id as a Redis Cluster hash
// tag, ids escaped as in the Journal so keys are injective):
//
//	P qs:charge:{c}:<event>   hash {rev, data, wid}: the charge as JSON, its
//	                          revision and its last write's id; expires the
//	                          retention after its last write
//	P qs:lease:{c}:<metric>   hash {rev, used, held, committing, last, data, wid}: a lease;
//	                          used, held and committing are what TakeLease
//	                          tests, last is LastUsed (RFC 3339, ns), data the
//	                          rest as JSON, wid the id of its last write (a
//	                          resent write is answered as done); no TTL: a
//	                          lease is money in flight, kept until DeleteLease
//	                          (evicted by no volatile-* policy)
//	P qs:lease:{c}:<metric>:takes
//	                          sorted set of the ids of the customer's takes on
//	                          metric of the last minute, scored by Redis's
//	                          clock (ms): a take resent after its reply was lost
//	                          (go-redis resends by default, the gate after an
//	                          error) is not counted again
//	P qs:leases               sorted set of "<c>:<metric>" (escaped) of every
//	                          lease (a hint for Leases; scored by the wall clock, ms)
//
// Every write is one Lua script over one key (a take: over the lease and its
// takes, one hash slot): compare-and-set on the revision
// and TakeLease's bounds check are atomic, on a single node and on a cluster.
// The only cross-customer key, qs:leases, is written outside the scripts,
// before every PutLease (so no lease is ever missing from it), and pruned by
// Leases of entries whose lease is gone once the entry is a minute old.
// Leases reads the whole index (one pipelined read per 1,000 leases): it is
// meant for a background sweep, not the gate's path. A Redis that evicts
// (charges carry a TTL, so any volatile-* policy may take them) or restarts
// without persistence forgets records: run it with maxmemory-policy
// noeviction and AOF so that every replay finds its record.
type ChargeLog struct {
	rdb       redis.UniversalClient
	prefix    string
	retention time.Duration
	timeout   time.Duration
	// j runs every Redis call (Journal.call: the same deadline discipline).
	j *Journal
}

// ChargeLogOption configures a ChargeLog.
type ChargeLogOption func(*ChargeLog)

// WithChargeLogPrefix prefixes every key of the log (default ""). It must not
// contain '{' or '}' (the hash tag of a customer's keys is theirs).
func WithChargeLogPrefix(p string) ChargeLogOption { return func(l *ChargeLog) { l.prefix = p } }

// WithChargeLogRetention sets how long a charge is kept after its last write
// (default 48 h), on Redis's clock. NewChargeLog refuses less than 24 h, the
// server's idempotency window: a replay inside it must find the record.
// Leases are kept until DeleteLease, whatever their age.
func WithChargeLogRetention(d time.Duration) ChargeLogOption {
	return func(l *ChargeLog) { l.retention = d }
}

// WithChargeLogTimeout bounds every Redis call of the log (default 2 s),
// whether or not the caller's context has a deadline.
func WithChargeLogTimeout(d time.Duration) ChargeLogOption {
	return func(l *ChargeLog) { l.timeout = d }
}

// MinChargeRetention is the shortest retention NewChargeLog accepts: the
// server keeps an idempotency key 24 h.
const MinChargeRetention = 24 * time.Hour

// maxLeaseUnits bounds Held, Used and a take's units: Redis's Lua compares
// them as doubles, exact below 2^53.
const maxLeaseUnits = 1<<53 - 1

// NewChargeLog returns a ChargeLog on rdb (a *redis.Client, *redis.ClusterClient, ...).
func NewChargeLog(rdb redis.UniversalClient, opts ...ChargeLogOption) (*ChargeLog, error) {
	l := &ChargeLog{rdb: rdb, retention: 48 * time.Hour, timeout: 2 * time.Second}
	for _, o := range opts {
		o(l)
	}
	switch {
	case rdb == nil:
		return nil, errors.New("redislock: nil Redis client")
	case strings.ContainsAny(l.prefix, "{}"):
		return nil, errors.New("redislock: the charge log prefix must not contain '{' or '}'")
	case l.retention < MinChargeRetention:
		return nil, fmt.Errorf("redislock: the charge log retention %v is shorter than the server's 24 h idempotency window", l.retention)
	case l.timeout <= 0:
		return nil, errors.New("redislock: the charge log timeout must be positive")
	}
	j, err := NewJournal(rdb, WithJournalPrefix(l.prefix), WithJournalTimeout(l.timeout))
	if err != nil {
		return nil, err
	}
	l.j = j
	return l, nil
}

var _ autobuy.ChargeLog = (*ChargeLog)(nil)

func (l *ChargeLog) call(ctx context.Context, fn func(ctx context.Context) error) error {
	return l.j.call(ctx, fn)
}

func (l *ChargeLog) chargeKey(customerID, eventID string) string {
	return l.prefix + "qs:charge:{" + esc(customerID) + "}:" + esc(eventID)
}

// leaseMember is the lease's entry in the index; escaped ids hold no ':'.
func leaseMember(customerID, metric string) string { return esc(customerID) + ":" + esc(metric) }

// leaseKeyOf is the key of the lease whose index entry is member.
func (l *ChargeLog) leaseKeyOf(member string) (string, bool) {
	c, m, ok := strings.Cut(member, ":")
	if !ok || c == "" || m == "" || strings.ContainsAny(member, "{}") || strings.Contains(m, ":") {
		return "", false
	}
	return l.prefix + "qs:lease:{" + c + "}:" + m, true
}

func (l *ChargeLog) leaseKey(customerID, metric string) string {
	k, _ := l.leaseKeyOf(leaseMember(customerID, metric))
	return k
}

func (l *ChargeLog) indexKey() string { return l.prefix + "qs:leases" }

func checkCharge(c *autobuy.Charge) error {
	if c == nil || c.CustomerID == "" || c.EventID == "" {
		return errors.New("redislock: a charge needs a customer id and an event id")
	}
	return nil
}

func checkLease(customerID, metric string) error {
	if customerID == "" || metric == "" {
		return errors.New("redislock: a lease needs a customer id and a metric")
	}
	return nil
}

// claimScript: KEYS charge; ARGV data, retention ms, the write's id.
// Returns {1, rev, data} when it created the charge (or had: go-redis resent
// the claim after its reply was lost, and nothing wrote it since), {0, rev,
// data} of the stored one otherwise.
var claimScript = redis.NewScript(`
if redis.call('EXISTS', KEYS[1]) == 1 then
  local cur = redis.call('HMGET', KEYS[1], 'rev', 'data', 'wid')
  if cur[3] == ARGV[3] then return {1, cur[1], cur[2]} end
  return {0, cur[1], cur[2]}
end
redis.call('HSET', KEYS[1], 'rev', '1', 'data', ARGV[1], 'wid', ARGV[3])
redis.call('PEXPIRE', KEYS[1], ARGV[2])
return {1, '1', ARGV[1]}
`)

// Claim implements autobuy.ChargeLog: one script creates the charge unless
// the customer's event has one, and returns the stored one.
func (l *ChargeLog) Claim(ctx context.Context, c *autobuy.Charge) (autobuy.Charge, bool, error) {
	if err := checkCharge(c); err != nil {
		return autobuy.Charge{}, false, err
	}
	data, err := json.Marshal(c)
	if err != nil {
		return autobuy.Charge{}, false, fmt.Errorf("redislock: encoding charge %s: %w", c.EventID, err)
	}
	var reply []any
	wid := writeID()
	err = l.call(ctx, func(ctx context.Context) (err error) {
		reply, err = claimScript.Run(ctx, l.rdb, []string{l.chargeKey(c.CustomerID, c.EventID)},
			data, l.retention.Milliseconds(), wid).Slice()
		return err
	})
	if err != nil {
		return autobuy.Charge{}, false, fmt.Errorf("redislock: charge log claim %s: %w", c.EventID, err)
	}
	if len(reply) != 3 {
		return autobuy.Charge{}, false, fmt.Errorf("redislock: charge log claim %s: a reply of %d values", c.EventID, len(reply))
	}
	created, ok := reply[0].(int64)
	if !ok {
		return autobuy.Charge{}, false, fmt.Errorf("redislock: charge log claim %s: reply %T", c.EventID, reply[0])
	}
	stored, err := decodeCharge(reply[1], reply[2])
	if err != nil {
		return autobuy.Charge{}, false, fmt.Errorf("redislock: charge log claim %s: %w", c.EventID, err)
	}
	if created == 1 {
		c.Rev = stored.Rev
	}
	return stored, created == 1, nil
}

func decodeCharge(revV, dataV any) (autobuy.Charge, error) {
	revS, ok1 := revV.(string)
	data, ok2 := dataV.(string)
	if !ok1 || !ok2 {
		return autobuy.Charge{}, errors.New("stored charge without revision or data")
	}
	var c autobuy.Charge
	if err := json.Unmarshal([]byte(data), &c); err != nil {
		return autobuy.Charge{}, fmt.Errorf("stored charge: %w", err)
	}
	rev, err := strconv.ParseInt(revS, 10, 64)
	if err != nil || rev <= 0 {
		return autobuy.Charge{}, fmt.Errorf("stored charge: revision %.20q", revS)
	}
	c.Rev = rev
	return c, nil
}

// putChargeScript: KEYS charge; ARGV expected rev, data, retention ms, the
// write's id. Returns the new revision, or 0 on a conflict (absent or
// moved); a write found already done (go-redis resent it) answers the
// revision it made.
var putChargeScript = redis.NewScript(`
local cur = redis.call('HMGET', KEYS[1], 'rev', 'wid')
if cur[2] == ARGV[4] then return tonumber(ARGV[1]) + 1 end
if cur[1] ~= ARGV[1] then return 0 end
local rev = redis.call('HINCRBY', KEYS[1], 'rev', 1)
redis.call('HSET', KEYS[1], 'data', ARGV[2], 'wid', ARGV[4])
redis.call('PEXPIRE', KEYS[1], ARGV[3])
return rev
`)

// PutCharge implements autobuy.ChargeLog: a compare-and-set on c.Rev that
// also restarts the charge's retention.
func (l *ChargeLog) PutCharge(ctx context.Context, c *autobuy.Charge) error {
	if err := checkCharge(c); err != nil {
		return err
	}
	if c.Rev <= 0 {
		return autobuy.ErrChargeConflict // never stored with this revision
	}
	data, err := json.Marshal(c)
	if err != nil {
		return fmt.Errorf("redislock: encoding charge %s: %w", c.EventID, err)
	}
	var rev int64
	wid := writeID()
	err = l.call(ctx, func(ctx context.Context) (err error) {
		rev, err = putChargeScript.Run(ctx, l.rdb, []string{l.chargeKey(c.CustomerID, c.EventID)},
			c.Rev, data, l.retention.Milliseconds(), wid).Int64()
		return err
	})
	if err != nil {
		return fmt.Errorf("redislock: charge log put %s: %w", c.EventID, err)
	}
	if rev == 0 {
		return autobuy.ErrChargeConflict
	}
	if rev != c.Rev+1 {
		return fmt.Errorf("redislock: charge log put %s: revision %d after %d", c.EventID, rev, c.Rev)
	}
	c.Rev = rev
	return nil
}

// leaseFields are the fields of a lease hash, in the order decodeLease reads them.
var leaseFields = []string{"rev", "used", "held", "committing", "last", "data"}

func decodeLease(v []any) (autobuy.Lease, error) {
	if len(v) != len(leaseFields) {
		return autobuy.Lease{}, fmt.Errorf("a lease of %d fields", len(v))
	}
	s := make([]string, len(v))
	for i, x := range v {
		str, ok := x.(string)
		if !ok {
			return autobuy.Lease{}, fmt.Errorf("stored lease without %s", leaseFields[i])
		}
		s[i] = str
	}
	var l autobuy.Lease
	if err := json.Unmarshal([]byte(s[5]), &l); err != nil {
		return autobuy.Lease{}, fmt.Errorf("stored lease: %w", err)
	}
	var errs [3]error
	l.Rev, errs[0] = strconv.ParseInt(s[0], 10, 64)
	l.Used, errs[1] = strconv.ParseInt(s[1], 10, 64)
	l.Held, errs[2] = strconv.ParseInt(s[2], 10, 64)
	if err := errors.Join(errs[:]...); err != nil || l.Rev <= 0 || (s[3] != "0" && s[3] != "1") {
		return autobuy.Lease{}, fmt.Errorf("stored lease: rev %.20q, used %.20q, held %.20q, committing %.5q", s[0], s[1], s[2], s[3])
	}
	l.Committing = s[3] == "1"
	last, err := time.Parse(time.RFC3339Nano, s[4])
	if err != nil {
		return autobuy.Lease{}, fmt.Errorf("stored lease: last used %.40q", s[4])
	}
	l.LastUsed = last
	return l, nil
}

func formatTime(t time.Time) string { return t.Format(time.RFC3339Nano) }

// Lease implements autobuy.ChargeLog.
func (l *ChargeLog) Lease(ctx context.Context, customerID, metric string) (autobuy.Lease, bool, error) {
	if err := checkLease(customerID, metric); err != nil {
		return autobuy.Lease{}, false, err
	}
	var v []any
	err := l.call(ctx, func(ctx context.Context) (err error) {
		v, err = l.rdb.HMGet(ctx, l.leaseKey(customerID, metric), leaseFields...).Result()
		return err
	})
	if err != nil {
		return autobuy.Lease{}, false, fmt.Errorf("redislock: charge log lease: %w", err)
	}
	if len(v) > 0 && v[0] == nil {
		return autobuy.Lease{}, false, nil
	}
	ls, err := decodeLease(v)
	if err != nil {
		return autobuy.Lease{}, false, fmt.Errorf("redislock: charge log lease: %w", err)
	}
	return ls, true, nil
}

// writeID returns the id of one write: go-redis resends a command whose
// reply was lost, and a script that finds its own id stored answers the
// write as done instead of as a conflict with itself.
func writeID() string {
	return strconv.FormatUint(rand.Uint64(), 36) + strconv.FormatUint(rand.Uint64(), 36)
}

// putLeaseScript: KEYS lease; ARGV expected rev ('0': create), used, held,
// committing, last, data, the write's id. Returns the new revision, or 0 on
// a conflict. A write found already done (its id is the lease's last
// write's: go-redis resent it after its reply was lost, and only takes came
// since) answers the revision it made, not a conflict.
var putLeaseScript = redis.NewScript(`
local cur = redis.call('HMGET', KEYS[1], 'rev', 'wid')
if cur[2] == ARGV[7] then return tonumber(ARGV[1]) + 1 end
if ARGV[1] == '0' then
  if cur[1] then return 0 end
elseif cur[1] ~= ARGV[1] then
  return 0
end
local rev = redis.call('HINCRBY', KEYS[1], 'rev', 1)
redis.call('HSET', KEYS[1], 'used', ARGV[2], 'held', ARGV[3], 'committing', ARGV[4], 'last', ARGV[5], 'data', ARGV[6],
  'wid', ARGV[7])
redis.call('PERSIST', KEYS[1])
return rev
`)

// PutLease implements autobuy.ChargeLog: the lease's index entry first, then
// one script (create if Rev is 0, else compare-and-set on Rev). Each write
// carries an id, so go-redis's resend of a write that landed is answered as
// done, never as a conflict.
func (l *ChargeLog) PutLease(ctx context.Context, ls *autobuy.Lease) error {
	if ls == nil {
		return errors.New("redislock: nil lease")
	}
	if err := checkLease(ls.CustomerID, ls.Metric); err != nil {
		return err
	}
	if ls.Held < 0 || ls.Used < 0 || ls.Held > maxLeaseUnits || ls.Used > maxLeaseUnits || ls.Rev < 0 {
		return fmt.Errorf("redislock: lease held %d, used %d, rev %d out of range", ls.Held, ls.Used, ls.Rev)
	}
	data, err := json.Marshal(ls)
	if err != nil {
		return fmt.Errorf("redislock: encoding lease: %w", err)
	}
	committing := "0"
	if ls.Committing {
		committing = "1"
	}
	// The index entry goes first: a lease is never stored without it.
	err = l.call(ctx, func(ctx context.Context) error {
		return l.rdb.ZAdd(ctx, l.indexKey(), redis.Z{Score: float64(time.Now().UnixMilli()),
			Member: leaseMember(ls.CustomerID, ls.Metric)}).Err()
	})
	if err != nil {
		return fmt.Errorf("redislock: charge log lease index: %w", err)
	}
	var rev int64
	wid := writeID()
	err = l.call(ctx, func(ctx context.Context) (err error) {
		rev, err = putLeaseScript.Run(ctx, l.rdb, []string{l.leaseKey(ls.CustomerID, ls.Metric)},
			ls.Rev, ls.Used, ls.Held, committing, formatTime(ls.LastUsed), data, wid).Int64()
		return err
	})
	if err != nil {
		return fmt.Errorf("redislock: charge log put lease: %w", err)
	}
	if rev == 0 {
		return autobuy.ErrChargeConflict
	}
	if rev != ls.Rev+1 {
		return fmt.Errorf("redislock: charge log put lease: revision %d after %d", rev, ls.Rev)
	}
	ls.Rev = rev
	return nil
}

// takeLeaseScript: KEYS lease, the recent takes; ARGV units, last, the
// take's id. Returns the lease's fields (leaseFields) after the take, or nil
// if it was refused. A take whose id is among the recent ones (its reply was
// lost, and go-redis or the gate sent it again) is not counted again: it
// returns the lease as it is, or {"gone"} if it was deleted since. Recent is
// the last minute by Redis's clock; older ids are dropped on every take, so
// the set holds a minute of takes however busy the customer.
var takeLeaseScript = redis.NewScript(`
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
if redis.call('ZSCORE', KEYS[2], ARGV[3]) then
  if redis.call('EXISTS', KEYS[1]) == 0 then return {'gone'} end
  return redis.call('HMGET', KEYS[1], 'rev', 'used', 'held', 'committing', 'last', 'data')
end
local v = redis.call('HMGET', KEYS[1], 'used', 'held', 'committing')
if not v[1] or not v[2] or v[3] ~= '0' then return false end
local used, held, units = tonumber(v[1]), tonumber(v[2]), tonumber(ARGV[1])
if not used or not held or not units or units <= 0 or used + units > held then return false end
redis.call('HINCRBY', KEYS[1], 'used', ARGV[1])
redis.call('HINCRBY', KEYS[1], 'rev', 1)
redis.call('HSET', KEYS[1], 'last', ARGV[2])
redis.call('ZREMRANGEBYSCORE', KEYS[2], '-inf', now - 60000)
redis.call('ZADD', KEYS[2], now, ARGV[3])
redis.call('PEXPIRE', KEYS[2], 60000)
return redis.call('HMGET', KEYS[1], 'rev', 'used', 'held', 'committing', 'last', 'data')
`)

// TakeLease implements autobuy.ChargeLog: one script checks and counts the
// units, and keeps the take's id a minute. It doesn't touch the index
// (Leases reads LastUsed from the lease).
func (l *ChargeLog) TakeLease(ctx context.Context, customerID, metric string, units int64, now time.Time, take string) (autobuy.Lease, bool, error) {
	if err := checkLease(customerID, metric); err != nil {
		return autobuy.Lease{}, false, err
	}
	if take == "" {
		return autobuy.Lease{}, false, errors.New("redislock: charge log take lease: a take needs an id")
	}
	if units <= 0 || units > maxLeaseUnits {
		return autobuy.Lease{}, false, nil // no lease can cover it
	}
	key := l.leaseKey(customerID, metric)
	var v []any
	err := l.call(ctx, func(ctx context.Context) (err error) {
		v, err = takeLeaseScript.Run(ctx, l.rdb, []string{key, key + ":takes"}, units, formatTime(now), take).Slice()
		return err
	})
	if errors.Is(err, redis.Nil) {
		return autobuy.Lease{}, false, nil
	}
	if err != nil {
		return autobuy.Lease{}, false, fmt.Errorf("redislock: charge log take lease: %w", err)
	}
	if len(v) == 1 && v[0] == "gone" {
		// Counted, then committed and deleted before the resend's reply.
		return autobuy.Lease{CustomerID: customerID, Metric: metric, Committing: true}, true, nil
	}
	ls, err := decodeLease(v)
	if err != nil {
		return autobuy.Lease{}, false, fmt.Errorf("redislock: charge log take lease: %w", err)
	}
	return ls, true, nil
}

// deleteLeaseScript: KEYS lease; ARGV expected rev. 1 if deleted.
var deleteLeaseScript = redis.NewScript(`
if redis.call('HGET', KEYS[1], 'rev') ~= ARGV[1] then return 0 end
return redis.call('DEL', KEYS[1])
`)

// DeleteLease implements autobuy.ChargeLog: a compare-and-set on ls.Rev. The
// index entry stays until Leases prunes it.
func (l *ChargeLog) DeleteLease(ctx context.Context, ls autobuy.Lease) error {
	if err := checkLease(ls.CustomerID, ls.Metric); err != nil {
		return err
	}
	if err := l.deleteKey(ctx, l.leaseKey(ls.CustomerID, ls.Metric), ls.Rev); err != nil {
		return fmt.Errorf("redislock: charge log delete lease: %w", err)
	}
	return nil
}

func (l *ChargeLog) deleteKey(ctx context.Context, key string, rev int64) error {
	if rev <= 0 {
		return autobuy.ErrChargeConflict
	}
	var n int64
	err := l.call(ctx, func(ctx context.Context) (err error) {
		n, err = deleteLeaseScript.Run(ctx, l.rdb, []string{key}, rev).Int64()
		return err
	})
	if err != nil {
		return err
	}
	if n != 1 {
		return autobuy.ErrChargeConflict
	}
	return nil
}

// leaseScanPage is how many index entries one ZSCAN asks for and one
// pipeline reads; maxLeaseScanPages bounds a scan (a hostile server's
// endless cursor).
const (
	leaseScanPage     = 1000
	maxLeaseScanPages = 1 << 16
)

// Leases implements autobuy.ChargeLog. It reads every lease in the index and
// drops the entries whose lease is gone once they are a minute old. It
// deletes no lease, however old: its units are owed until the lease mode
// settles it (Lease.ExpiresAt is the server's clock, not ours).
func (l *ChargeLog) Leases(ctx context.Context, idleSince time.Time, limit int) ([]autobuy.Lease, error) {
	found := map[string]autobuy.Lease{}
	var cursor uint64
	for range maxLeaseScanPages {
		var page []string
		err := l.call(ctx, func(ctx context.Context) (err error) {
			page, cursor, err = l.rdb.ZScan(ctx, l.indexKey(), cursor, "", leaseScanPage).Result()
			return err
		})
		if err != nil {
			return nil, fmt.Errorf("redislock: charge log leases: %w", err)
		}
		if len(page)%2 != 0 {
			return nil, fmt.Errorf("redislock: charge log leases: an index page of %d values", len(page))
		}
		if err := l.readLeases(ctx, page, idleSince, found); err != nil {
			return nil, err
		}
		if cursor == 0 {
			out := make([]autobuy.Lease, 0, len(found))
			for _, ls := range found {
				out = append(out, ls)
			}
			slices.SortFunc(out, func(a, b autobuy.Lease) int {
				if c := a.LastUsed.Compare(b.LastUsed); c != 0 {
					return c
				}
				return strings.Compare(leaseMember(a.CustomerID, a.Metric), leaseMember(b.CustomerID, b.Metric))
			})
			if limit > 0 && len(out) > limit {
				out = out[:limit]
			}
			return out, nil
		}
	}
	return nil, fmt.Errorf("redislock: charge log leases: the index scan did not end after %d pages", maxLeaseScanPages)
}

// readLeases loads the leases of one index page (member, score pairs) into
// found, keyed by member, keeping those idle since idleSince.
func (l *ChargeLog) readLeases(ctx context.Context, page []string, idleSince time.Time, found map[string]autobuy.Lease) error {
	type entry struct{ member, score, key string }
	var entries []entry
	for i := 0; i < len(page); i += 2 {
		key, ok := l.leaseKeyOf(page[i])
		if !ok {
			continue // not an entry this log wrote
		}
		entries = append(entries, entry{page[i], page[i+1], key})
	}
	if len(entries) == 0 {
		return nil
	}
	cmds := make([]*redis.SliceCmd, len(entries))
	err := l.call(ctx, func(ctx context.Context) error {
		_, err := l.rdb.Pipelined(ctx, func(p redis.Pipeliner) error {
			for i, e := range entries {
				cmds[i] = p.HMGet(ctx, e.key, leaseFields...)
			}
			return nil
		})
		return err
	})
	if err != nil {
		return fmt.Errorf("redislock: charge log leases: %w", err)
	}
	now := time.Now()
	for i, e := range entries {
		v := cmds[i].Val()
		if len(v) > 0 && v[0] == nil {
			l.unindex(ctx, e.member, e.score, now)
			continue
		}
		ls, err := decodeLease(v)
		if err != nil {
			return fmt.Errorf("redislock: charge log leases: %w", err)
		}
		if leaseMember(ls.CustomerID, ls.Metric) != e.member {
			return fmt.Errorf("redislock: charge log leases: the lease at %s names %.60q/%.60q", e.key, ls.CustomerID, ls.Metric)
		}
		if idleSince.IsZero() || ls.LastUsed.Before(idleSince) {
			found[e.member] = ls
		}
	}
	return nil
}

// unindex drops the index entry of a lease that is gone, if the entry is
// older than hintGrace (a PutLease may be between its entry and its script)
// and no PutLease wrote it since it was read.
func (l *ChargeLog) unindex(ctx context.Context, member, score string, now time.Time) {
	ms, err := strconv.ParseFloat(score, 64)
	if err != nil || now.Sub(time.UnixMilli(int64(ms))) <= hintGrace {
		return
	}
	_ = l.call(ctx, func(ctx context.Context) error {
		return unhintScript.Run(ctx, l.rdb, []string{l.indexKey()}, member, score).Err()
	})
}
