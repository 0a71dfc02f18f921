package redislock

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/quotastack/quotastack-go/autobuy"
)

// Journal is an autobuy.Journal on Redis, for replicas that share it (with a
// Locker on the same Redis). Safe for concurrent use.
//
// Keys (P is the prefix, {c} the escaped customer id as a Redis Cluster hash
// tag, so that one customer's keys live in one slot; ids are escaped so keys
// are injective: '%' ':' '{' '}' become %25 %3A %7B %7D):
//
//	P qs:intent:{c}:<order>   hash {rev, data}: the intent as JSON and its revision
//	P qs:cust:{c}:touched     sorted set of the customer's order ids, scored by
//	                          max(CreatedAt, UpdatedAt) in µs (for Since)
//	P qs:cust:{c}:open        sorted set of the customer's open order ids, by CreatedAt µs
//	P qs:cust:{c}:rev         the customer's revision (Journal.Rev): INCR by every
//	                          successful Put, in the same script; no TTL
//	P qs:pending              sorted set of customers that may have open intents
//	                          (a hint for Pending; scored by the wall clock, ms)
//	P qs:susp:{c}:<metric>    hash {until, data}: a suspension, expiring at its Until
//
// Put is one Lua script over the intent and its customer's two indexes:
// compare-and-set on the revision and index maintenance are atomic, on a
// single node and on a cluster. Closed intents expire after the retention
// (Redis's clock); open ones never expire.
type Journal struct {
	store
	prefix    string
	retention time.Duration
	check     serverCheck // check.go
}

// JournalOption configures a Journal.
type JournalOption func(*Journal)

// WithJournalPrefix prefixes every key of the journal (default ""). It must
// not contain '{' or '}' (the hash tag of a customer's keys is theirs).
func WithJournalPrefix(p string) JournalOption { return func(j *Journal) { j.prefix = p } }

// WithRetention sets how long closed intents are kept after their last
// update (default 48 h). Keep it longer than any purchase-limit period.
func WithRetention(d time.Duration) JournalOption { return func(j *Journal) { j.retention = d } }

// WithJournalTimeout bounds every Redis call of the journal (default 2 s), whether
// or not the caller's context has a deadline.
func WithJournalTimeout(d time.Duration) JournalOption { return func(j *Journal) { j.timeout = d } }

// NewJournal returns a Journal on rdb (a *redis.Client, *redis.ClusterClient, ...).
// It reads the server's INFO once (check.go): ErrEvictionRisk if the
// maxmemory-policy may evict the journal's keys (WithEvictionRiskAccepted
// overrides it), a logged warning if AOF persistence is off.
func NewJournal(rdb redis.UniversalClient, opts ...JournalOption) (*Journal, error) {
	j := &Journal{store: newStore(rdb, DefaultCallTimeout), retention: 48 * time.Hour}
	for _, o := range opts {
		o(j)
	}
	switch {
	case rdb == nil:
		return nil, errors.New("redislock: nil Redis client")
	case strings.ContainsAny(j.prefix, "{}"):
		return nil, errors.New("redislock: the journal prefix must not contain '{' or '}'")
	case j.retention < time.Millisecond:
		return nil, errors.New("redislock: the journal retention must be at least a millisecond")
	case j.timeout <= 0:
		return nil, errors.New("redislock: the journal timeout must be positive")
	}
	if err := j.checkServer(); err != nil { // check.go: maxmemory-policy and persistence
		return nil, err
	}
	return j, nil
}

var _ autobuy.Journal = (*Journal)(nil)

var escaper = strings.NewReplacer("%", "%25", ":", "%3A", "{", "%7B", "}", "%7D")

func esc(s string) string { return escaper.Replace(s) }

// tag is the hash tag of the customer's keys.
func (j *Journal) tag(customerID string) string { return "{" + esc(customerID) + "}" }

func (j *Journal) intentKey(customerID, orderID string) string {
	return j.prefix + "qs:intent:" + j.tag(customerID) + ":" + esc(orderID)
}
func (j *Journal) touchedKey(customerID string) string {
	return j.prefix + "qs:cust:" + j.tag(customerID) + ":touched"
}
func (j *Journal) openKey(customerID string) string {
	return j.prefix + "qs:cust:" + j.tag(customerID) + ":open"
}
func (j *Journal) revKey(customerID string) string {
	return j.prefix + "qs:cust:" + j.tag(customerID) + ":rev"
}
func (j *Journal) pendingKey() string { return j.prefix + "qs:pending" }
func (j *Journal) suspKey(customerID, metric string) string {
	return j.prefix + "qs:susp:" + j.tag(customerID) + ":" + esc(metric)
}

func micros(t time.Time) string { return strconv.FormatInt(t.UnixMicro(), 10) }

// putScript: KEYS intent, touched, open, customer rev; ARGV expected rev, data, order id,
// open score, touched score, "1" if open, retention ms. Returns the new
// revision, or 0 on a conflict (a stale revision, or a new intent while the
// customer has an open one).
var putScript = redis.NewScript(`
local cur = redis.call('HGET', KEYS[1], 'rev')
if (cur == false and ARGV[1] ~= '0') or (cur ~= false and cur ~= ARGV[1]) then
  return 0
end
if cur == false and redis.call('ZCARD', KEYS[3]) > 0 then
  return 0 -- one open intent per customer
end
local rev = tonumber(ARGV[1]) + 1
redis.call('HSET', KEYS[1], 'rev', tostring(rev), 'data', ARGV[2])
if ARGV[6] == '1' then
  redis.call('PERSIST', KEYS[1])
  redis.call('ZADD', KEYS[3], ARGV[4], ARGV[3])
else
  redis.call('PEXPIRE', KEYS[1], ARGV[7])
  redis.call('ZREM', KEYS[3], ARGV[3])
end
redis.call('ZADD', KEYS[2], ARGV[5], ARGV[3])
if redis.call('ZCARD', KEYS[3]) == 0 then
  redis.call('PEXPIRE', KEYS[2], ARGV[7])
else
  redis.call('PERSIST', KEYS[2])
end
redis.call('INCR', KEYS[4])
return rev
`)

// Put implements autobuy.Journal: an atomic compare-and-set on in.Rev.
func (j *Journal) Put(ctx context.Context, in *autobuy.Intent) error {
	stored := *in
	stored.Rev = in.Rev + 1
	data, err := json.Marshal(&stored)
	if err != nil {
		return fmt.Errorf("redislock: encoding intent %s: %w", in.OrderID, err)
	}
	open := "0"
	if in.State.Open() {
		open = "1"
		// The hint goes first: an intent is never open without it.
		if err := j.hint(ctx, in.CustomerID); err != nil {
			return err
		}
	}
	touched := in.CreatedAt
	if in.UpdatedAt.After(touched) {
		touched = in.UpdatedAt
	}
	var rev int64
	err = j.call(ctx, func(ctx context.Context) (err error) {
		rev, err = putScript.Run(ctx, j.rdb,
			[]string{j.intentKey(in.CustomerID, in.OrderID), j.touchedKey(in.CustomerID), j.openKey(in.CustomerID), j.revKey(in.CustomerID)},
			in.Rev, data, in.OrderID, micros(in.CreatedAt), micros(touched), open, j.retention.Milliseconds()).Int64()
		return err
	})
	if err != nil {
		return fmt.Errorf("redislock: journal put %s: %w", in.OrderID, err)
	}
	if rev == 0 {
		return autobuy.ErrJournalConflict
	}
	in.Rev = rev
	return nil
}

// Rev implements autobuy.Journal: the customer's counter, bumped by every
// successful Put in the same script as the write (0 when never written).
// It carries no TTL, so it outlives the retention of the intents.
func (j *Journal) Rev(ctx context.Context, customerID string) (int64, error) {
	var rev int64
	err := j.call(ctx, func(ctx context.Context) (err error) {
		rev, err = j.rdb.Get(ctx, j.revKey(customerID)).Int64()
		if errors.Is(err, redis.Nil) {
			rev, err = 0, nil
		}
		return err
	})
	if err != nil {
		return 0, fmt.Errorf("redislock: journal rev: %w", err)
	}
	return rev, nil
}

// hint marks the customer as maybe having open intents, for Pending.
func (j *Journal) hint(ctx context.Context, customerID string) error {
	err := j.call(ctx, func(ctx context.Context) error {
		return j.rdb.ZAdd(ctx, j.pendingKey(), redis.Z{Score: float64(time.Now().UnixMilli()), Member: customerID}).Err()
	})
	if err != nil {
		return fmt.Errorf("redislock: journal pending hint: %w", err)
	}
	return nil
}

// load reads the intents of customerID named by ids, in that order, skipping
// those that expired since the index was read.
func (j *Journal) load(ctx context.Context, customerID string, ids []string) ([]autobuy.Intent, error) {
	if len(ids) == 0 {
		return nil, nil
	}
	cmds := make([]*redis.SliceCmd, len(ids))
	err := j.call(ctx, func(ctx context.Context) error {
		_, err := j.rdb.Pipelined(ctx, func(p redis.Pipeliner) error {
			for i, id := range ids {
				cmds[i] = p.HMGet(ctx, j.intentKey(customerID, id), "rev", "data")
			}
			return nil
		})
		return err
	})
	if err != nil {
		return nil, fmt.Errorf("redislock: journal read: %w", err)
	}
	out := make([]autobuy.Intent, 0, len(ids))
	for i, c := range cmds {
		v := c.Val()
		revS, ok1 := v[0].(string)
		data, ok2 := v[1].(string)
		if !ok1 || !ok2 {
			continue // expired (closed past the retention) or being created
		}
		var in autobuy.Intent
		if err := json.Unmarshal([]byte(data), &in); err != nil {
			return nil, fmt.Errorf("redislock: journal intent %s: %w", ids[i], err)
		}
		if in.Rev, err = strconv.ParseInt(revS, 10, 64); err != nil {
			return nil, fmt.Errorf("redislock: journal intent %s: revision %q", ids[i], revS)
		}
		out = append(out, in)
	}
	return out, nil
}

func (j *Journal) zrange(ctx context.Context, key string, by redis.ZRangeBy) ([]string, error) {
	var ids []string
	err := j.call(ctx, func(ctx context.Context) (err error) {
		ids, err = j.rdb.ZRangeByScore(ctx, key, &by).Result()
		return err
	})
	if err != nil {
		return nil, fmt.Errorf("redislock: journal index: %w", err)
	}
	return ids, nil
}

func byCreated(ins []autobuy.Intent) {
	slices.SortStableFunc(ins, func(a, b autobuy.Intent) int { return a.CreatedAt.Compare(b.CreatedAt) })
}

// Open implements autobuy.Journal.
func (j *Journal) Open(ctx context.Context, customerID string) ([]autobuy.Intent, error) {
	ids, err := j.zrange(ctx, j.openKey(customerID), redis.ZRangeBy{Min: "-inf", Max: "+inf"})
	if err != nil {
		return nil, err
	}
	ins, err := j.load(ctx, customerID, ids)
	if err != nil {
		return nil, err
	}
	// Closed between the index read and the load: not open any more.
	ins = slices.DeleteFunc(ins, func(in autobuy.Intent) bool { return !in.State.Open() })
	byCreated(ins)
	return ins, nil
}

// Since implements autobuy.Journal. Closed intents past the retention are
// forgotten.
func (j *Journal) Since(ctx context.Context, customerID string, t time.Time) ([]autobuy.Intent, error) {
	ids, err := j.zrange(ctx, j.touchedKey(customerID), redis.ZRangeBy{Min: micros(t), Max: "+inf"})
	if err != nil {
		return nil, err
	}
	ins, err := j.load(ctx, customerID, ids)
	if err != nil {
		return nil, err
	}
	if len(ins) < len(ids) {
		j.forget(ctx, customerID, ids, ins)
	}
	ins = slices.DeleteFunc(ins, func(in autobuy.Intent) bool { return in.CreatedAt.Before(t) && in.UpdatedAt.Before(t) })
	byCreated(ins)
	return ins, nil
}

// forget drops from the customer's index the ids whose intents expired (best
// effort: the index itself expires with the last of them).
func (j *Journal) forget(ctx context.Context, customerID string, ids []string, found []autobuy.Intent) {
	live := map[string]bool{}
	for _, in := range found {
		live[in.OrderID] = true
	}
	var gone []any
	for _, id := range ids {
		if !live[id] {
			gone = append(gone, id)
		}
	}
	_ = j.call(ctx, func(ctx context.Context) error { return j.rdb.ZRem(ctx, j.touchedKey(customerID), gone...).Err() })
}

// hintGrace is how long a customer stays in the pending hint after its last
// open write even with no open intent: longer than any Put's gap between its
// hint and its script.
const hintGrace = time.Minute

// unhintScript removes a customer from the hint only if its score is still
// the one read (no Put touched it since). KEYS pending; ARGV customer, score.
var unhintScript = redis.NewScript(`
local s = redis.call('ZSCORE', KEYS[1], ARGV[1])
if s and tonumber(s) == tonumber(ARGV[2]) then return redis.call('ZREM', KEYS[1], ARGV[1]) end
return 0
`)

// Pending implements autobuy.Journal: the open intents of the customers in
// the pending hint, oldest first. Customers without open intents leave the
// hint here, once it is a minute old.
func (j *Journal) Pending(ctx context.Context, limit int) ([]autobuy.Intent, error) {
	var hints []redis.Z
	err := j.call(ctx, func(ctx context.Context) (err error) {
		hints, err = j.rdb.ZRangeWithScores(ctx, j.pendingKey(), 0, -1).Result()
		return err
	})
	if err != nil {
		return nil, fmt.Errorf("redislock: journal pending: %w", err)
	}
	type entry struct {
		customer, order string
		score           float64
	}
	var all []entry
	for _, h := range hints {
		c, _ := h.Member.(string)
		var zs []redis.Z
		err := j.call(ctx, func(ctx context.Context) (err error) {
			zs, err = j.rdb.ZRangeWithScores(ctx, j.openKey(c), 0, int64(limit)-1).Result()
			return err
		})
		if err != nil {
			return nil, fmt.Errorf("redislock: journal pending: %w", err)
		}
		if len(zs) == 0 && time.Since(time.UnixMilli(int64(h.Score))) > hintGrace {
			score := strconv.FormatFloat(h.Score, 'f', -1, 64)
			_ = j.call(ctx, func(ctx context.Context) error {
				return unhintScript.Run(ctx, j.rdb, []string{j.pendingKey()}, c, score).Err()
			})
		}
		for _, z := range zs {
			o, _ := z.Member.(string)
			all = append(all, entry{c, o, z.Score})
		}
	}
	slices.SortStableFunc(all, func(a, b entry) int {
		switch {
		case a.score < b.score:
			return -1
		case a.score > b.score:
			return 1
		}
		return 0
	})
	if limit > 0 && len(all) > limit {
		all = all[:limit]
	}
	// One pipelined read per customer; an intent closed since the index was
	// read is left out (Pending returns up to limit).
	var customers []string
	orders := map[string][]string{}
	for _, e := range all {
		if orders[e.customer] == nil {
			customers = append(customers, e.customer)
		}
		orders[e.customer] = append(orders[e.customer], e.order)
	}
	var out []autobuy.Intent
	for _, c := range customers {
		ins, err := j.load(ctx, c, orders[c])
		if err != nil {
			return nil, err
		}
		for _, in := range ins {
			if in.State.Open() {
				out = append(out, in)
			}
		}
	}
	byCreated(out)
	return out, nil
}

// suspendScript: KEYS susp; ARGV now seconds, now nanos, until seconds,
// until nanos ("0" "0" for none), data, ttl ms (0: none). 1 if stored.
var suspendScript = redis.NewScript(`
local u = redis.call('HMGET', KEYS[1], 'until_s', 'until_ns')
if u[1] then
  local us, uns = tonumber(u[1]), tonumber(u[2])
  local ns, nns = tonumber(ARGV[1]), tonumber(ARGV[2])
  if (us == 0 and uns == 0) or ns < us or (ns == us and nns < uns) then return 0 end
end
redis.call('DEL', KEYS[1])
redis.call('HSET', KEYS[1], 'until_s', ARGV[3], 'until_ns', ARGV[4], 'data', ARGV[5])
if tonumber(ARGV[6]) > 0 then redis.call('PEXPIRE', KEYS[1], ARGV[6]) end
return 1
`)

// Suspend implements autobuy.Journal; the key expires at s.Until (measured
// from now, on Redis's clock), never when Until is zero.
func (j *Journal) Suspend(ctx context.Context, s autobuy.Suspension, now time.Time) (bool, error) {
	data, err := json.Marshal(&s)
	if err != nil {
		return false, fmt.Errorf("redislock: encoding suspension: %w", err)
	}
	us, uns, ttl := "0", "0", int64(0)
	if !s.Until.IsZero() {
		us, uns = strconv.FormatInt(s.Until.Unix(), 10), strconv.Itoa(s.Until.Nanosecond())
		ttl = max(1, (s.Until.Sub(now) + time.Millisecond - 1).Milliseconds())
	}
	var n int
	err = j.call(ctx, func(ctx context.Context) (err error) {
		n, err = suspendScript.Run(ctx, j.rdb, []string{j.suspKey(s.CustomerID, s.Metric)},
			now.Unix(), now.Nanosecond(), us, uns, data, ttl).Int()
		return err
	})
	if err != nil {
		return false, fmt.Errorf("redislock: journal suspend: %w", err)
	}
	return n == 1, nil
}

// Suspension implements autobuy.Journal.
func (j *Journal) Suspension(ctx context.Context, customerID, metric string) (autobuy.Suspension, bool, error) {
	var data string
	err := j.call(ctx, func(ctx context.Context) (err error) {
		data, err = j.rdb.HGet(ctx, j.suspKey(customerID, metric), "data").Result()
		return err
	})
	if errors.Is(err, redis.Nil) {
		return autobuy.Suspension{}, false, nil
	}
	if err != nil {
		return autobuy.Suspension{}, false, fmt.Errorf("redislock: journal suspension: %w", err)
	}
	var s autobuy.Suspension
	if err := json.Unmarshal([]byte(data), &s); err != nil {
		return autobuy.Suspension{}, false, fmt.Errorf("redislock: journal suspension: %w", err)
	}
	return s, true, nil
}

// Lift implements autobuy.Journal.
func (j *Journal) Lift(ctx context.Context, customerID, metric string) error {
	err := j.call(ctx, func(ctx context.Context) error { return j.rdb.Del(ctx, j.suspKey(customerID, metric)).Err() })
	if err != nil {
		return fmt.Errorf("redislock: journal lift: %w", err)
	}
	return nil
}
